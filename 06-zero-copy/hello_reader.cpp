// Step 1 of chapter 06, the bare calls: receive the writer's pool once, then use the slot whose
// index arrives in place (write(2) takes the bytes straight from the shared page), and give the
// index back. Run: build/06-zero-copy/hello_writer & build/06-zero-copy/hello_reader
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char* call) { std::perror(call); std::exit(1); }

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/shm-tutorial-06-hello.sock";
    int connection = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connection == -1) die("socket");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    if (connect(connection, reinterpret_cast<sockaddr*>(&address), sizeof address) == -1) die("connect");

    char byte;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr message{};
    message.msg_iov = &iov, message.msg_iovlen = 1, message.msg_control = control, message.msg_controllen = sizeof control;
    if (recvmsg(connection, &message, MSG_CMSG_CLOEXEC) != 1) die("recvmsg");
    cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
    if (cmsg == nullptr || cmsg->cmsg_type != SCM_RIGHTS) { std::fputs("no descriptor came\n", stderr); return 1; }
    int memfd;
    std::memcpy(&memfd, CMSG_DATA(cmsg), sizeof memfd);
    struct stat info;
    if (fstat(memfd, &info) == -1) die("fstat");
    const char* pool = static_cast<const char*>(mmap(nullptr, size_t(info.st_size), PROT_READ, MAP_SHARED, memfd, 0));
    if (pool == MAP_FAILED) die("mmap"); // the whole pool, mapped once

    std::uint32_t handle[2]; // index and length: all that travels per message
    if (read(connection, handle, sizeof handle) != sizeof handle) die("read");
    ssize_t length = handle[1];
    if (write(STDOUT_FILENO, pool + handle[0] * 4096, length) != length) die("write"); // in place
    if (write(connection, &handle[0], sizeof handle[0]) != sizeof handle[0]) die("write"); // give it back
    return 0;
}
