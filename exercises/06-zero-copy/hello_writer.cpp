// EXERCISE 06-zero-copy/1: fill a slot of the pool in place and send only its index and length (the bare writer)
// This is 06-zero-copy/hello_writer.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-06 (it builds this file and runs the chapter's tests).
// The solution is 06-zero-copy/hello_writer.cpp: read it only once your version passes.

// Step 1 of chapter 06, the bare calls: a pool of 4 slots in one memfd, passed to the reader
// once over a Unix socket; then only a slot's index and length travel, never its bytes.
// Run: build/06-zero-copy/hello_writer & build/06-zero-copy/hello_reader
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char* call) { std::perror(call); std::exit(1); }

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/shm-tutorial-06-hello.sock";
    const std::size_t slot_size = 4096, slots = 4;
    int memfd = memfd_create("hello-06-pool", MFD_CLOEXEC);
    if (memfd == -1) die("memfd_create");
    if (ftruncate(memfd, slots * slot_size) == -1) die("ftruncate");
    char* pool = static_cast<char*>(mmap(nullptr, slots * slot_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0));
    if (pool == MAP_FAILED) die("mmap");

    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener == -1) die("socket");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) == -1) die("bind");
    if (listen(listener, 1) == -1) die("listen");
    int connection = accept(listener, nullptr, nullptr);
    if (connection == -1) die("accept");
    unlink(path); // the reader is connected: the name has done its work

    char byte = 'P'; // a descriptor needs at least one byte of data to travel with
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr message{};
    message.msg_iov = &iov, message.msg_iovlen = 1, message.msg_control = control, message.msg_controllen = sizeof control;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
    cmsg->cmsg_level = SOL_SOCKET, cmsg->cmsg_type = SCM_RIGHTS, cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &memfd, sizeof memfd);
    if (sendmsg(connection, &message, 0) != 1) die("sendmsg"); // the pool, passed once

    const char text[] = "hello from slot 2 of the pool\n";
    // TODO(exercise 1): the pool has travelled once; from now on only indices do. Fill slot 2
    // in place (std::memcpy the text, without its NUL, to pool + 2 * slot_size), then write(2) the
    // handle {index 2, length sizeof text - 1}, two std::uint32_t, on the connection (a short
    // write: die("write")). Then delete the placeholder line below.
    die("TODO: fill slot 2 in place, send its index and length"); (void)text; (void)pool; // placeholder
    std::uint32_t returned; // until the index comes back, slot 2 is the reader's: do not touch it
    if (read(connection, &returned, sizeof returned) != sizeof returned) die("read");
    return 0;
}
