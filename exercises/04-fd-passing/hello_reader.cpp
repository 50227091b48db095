// EXERCISE 04-fd-passing/2: receive the writer's memfd: recvmsg and the CMSG macros (the bare reader)
// This is 04-fd-passing/hello_reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-04 (it builds this file and runs the chapter's tests).
// The solution is 04-fd-passing/hello_reader.cpp: read it only once your version passes.

// hello_reader.cpp: chapter 04, step 1. Connects to hello_writer's Unix socket, receives the
// writer's memfd (SCM_RIGHTS), maps it and prints the message in it.
// Not robust (step 2, reader.cpp, adds each): started before the writer, connect fails at once
// (ENOENT); it trusts the descriptor (no MSG_CTRUNC check, no count, no seals: the writer could
// shrink the memfd and this reader would die of SIGBUS); it does not check who listens
// (SO_PEERCRED); a writer that accepts and says nothing makes recvmsg wait for ever.
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
    int connection = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connection == -1) die("socket");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    if (connect(connection, reinterpret_cast<sockaddr*>(&address), sizeof address) == -1) die("connect");

    char byte;
    iovec data{&byte, 1};
    union { char buffer[CMSG_SPACE(sizeof(int))]; cmsghdr align; } control{}; // room for one descriptor
    msghdr message{};
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof control.buffer;
    // TODO(exercise 2): receive the writer's memfd (man 2 recvmsg, man 3 cmsg, man 7 unix):
    //   1. recvmsg(connection, &message, MSG_CMSG_CLOEXEC) must return 1; else die("recvmsg").
    //   2. cmsghdr* cmsg = CMSG_FIRSTHDR(&message); if it is nullptr or its cmsg_type is not
    //      SCM_RIGHTS, print "no descriptor came" on stderr and return 1.
    //   3. memcpy the int at CMSG_DATA(cmsg) into memfd: a new number in this process, the
    //      same memfd.
    // Then delete the placeholder lines below.
    int memfd = -1; // placeholder
    die("TODO: recvmsg, CMSG_FIRSTHDR, CMSG_DATA"); // placeholder

    void* memory = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, memfd, 0);
    if (memory == MAP_FAILED) die("mmap");
    fputs(static_cast<const char*>(memory), stdout);
    return 0;
}
