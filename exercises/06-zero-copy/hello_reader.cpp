// EXERCISE 06-zero-copy/2: use a slot in place and give its index back (the bare reader)
// This is 06-zero-copy/hello_reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-06 (it builds this file and runs the chapter's tests).
// The solution is 06-zero-copy/hello_reader.cpp: read it only once your version passes.

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

    // TODO(exercise 2): read(2) the handle, two std::uint32_t {index, length}, from the
    // connection; write(2) `length` bytes of the slot in place (pool + index * 4096) to
    // STDOUT_FILENO: no copy into a buffer of our own; then give the slot back: write the index
    // on the connection (the writer waits for it). A short read or write: die("read"/"write").
    // Then delete the placeholder line below.
    die("TODO: read the index and length, write the slot out in place, give the index back"); (void)pool; // placeholder
    return 0;
}
