// EXERCISE 04-fd-passing/1: send the memfd over the Unix socket: SCM_RIGHTS in a control message (the bare writer)
// This is 04-fd-passing/hello_writer.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-04 (it builds this file and runs the chapter's tests).
// The solution is 04-fd-passing/hello_writer.cpp: read it only once your version passes.

// hello_writer.cpp: chapter 04, step 1. Puts a message in a memfd, then hands the descriptor
// itself to the first process that connects to a Unix socket (SCM_RIGHTS). Run hello_reader.
// Not robust (step 2, writer.cpp, adds each): a socket file left by a crash makes bind fail;
// anyone who connects gets the memory (no SO_PEERCRED, no request); the memfd is not sealed, so
// a reader cannot trust its size; accept waits for ever; one message, no stream.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char* call) { perror(call); exit(1); }

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/shm-tutorial-04-hello.sock";
    int memfd = memfd_create("hello-04", MFD_CLOEXEC);
    if (memfd == -1) die("memfd_create");
    if (ftruncate(memfd, 4096) == -1) die("ftruncate");
    void* memory = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (memory == MAP_FAILED) die("mmap");
    strcpy(static_cast<char*>(memory), "hello, descriptor\n"); // written before anyone can connect

    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener == -1) die("socket");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) == -1) die("bind");
    if (listen(listener, 1) == -1) die("listen");
    fprintf(stderr, "hello_writer: listening on %s\n", path);
    int connection = accept(listener, nullptr, nullptr);
    if (connection == -1) die("accept");
    if (unlink(path) == -1) die("unlink"); // connected: nobody else needs the name

    char byte = 'M';                       // at least one byte of data must carry the descriptor
    iovec data{&byte, 1};
    union { char buffer[CMSG_SPACE(sizeof(int))]; cmsghdr align; } control{}; // aligned for cmsghdr
    msghdr message{};
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof control.buffer;
    // TODO(exercise 1): put the memfd in the control message and send it (man 3 cmsg, man 7 unix
    // "SCM_RIGHTS", man 2 sendmsg):
    //   1. cmsghdr* cmsg = CMSG_FIRSTHDR(&message); level SOL_SOCKET, type SCM_RIGHTS, length
    //      CMSG_LEN(sizeof(int)); copy memfd into CMSG_DATA(cmsg) with memcpy (it may be unaligned).
    //   2. sendmsg(connection, &message, 0) must return 1 (the one data byte); else die("sendmsg").
    // Then delete the placeholder line below.
    die("TODO: CMSG_FIRSTHDR, SCM_RIGHTS, sendmsg"); // placeholder
    return 0; // the descriptor in flight keeps the memfd alive until the reader takes it
}
