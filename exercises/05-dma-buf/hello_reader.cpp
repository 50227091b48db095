// EXERCISE 05-dma-buf/2: map the writer's dma-buf and read it between DMA_BUF_IOCTL_SYNC START and END (the bare reader)
// This is 05-dma-buf/hello_reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-05 (it builds this file and runs the chapter's tests).
// The solution is 05-dma-buf/hello_reader.cpp: read it only once your version passes.

// hello_reader.cpp: chapter 05, step 1. Receives hello_writer's dma-buf over a Unix socket, maps
// it and prints the message, reading it between DMA_BUF_IOCTL_SYNC START and END.
// Not robust (step 2, reader.cpp, adds each): as chapter 04's bare reader (start it second; it
// trusts the descriptor and the peer), and it does not check that the descriptor is a dma-buf
// (fstatfs): given a memfd, the SYNC ioctl fails (ENOTTY).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <linux/dma-buf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char* call) { perror(call); exit(1); }

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/shm-tutorial-05-hello.sock";
    int connection = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connection == -1) die("socket");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    if (connect(connection, reinterpret_cast<sockaddr*>(&address), sizeof address) == -1) die("connect");

    char byte;
    iovec data{&byte, 1};
    union { char buffer[CMSG_SPACE(sizeof(int))]; cmsghdr align; } control{};
    msghdr message{};
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof control.buffer;
    if (recvmsg(connection, &message, MSG_CMSG_CLOEXEC) != 1) die("recvmsg");
    cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
    if (cmsg == nullptr || cmsg->cmsg_type != SCM_RIGHTS) { fprintf(stderr, "no descriptor came\n"); return 1; }
    int buffer;
    memcpy(&buffer, CMSG_DATA(cmsg), sizeof buffer);

    // TODO(exercise 2): the descriptor in `buffer` is the writer's dma-buf. Map it and read the
    // message, the CPU access bracketed by DMA_BUF_IOCTL_SYNC (kernel documentation:
    // driver-api/dma-buf, "CPU Access to DMA Buffer Objects"; linux/dma-buf.h; man 2 mmap):
    //   1. mmap(2) 4096 bytes of it, PROT_READ, MAP_SHARED, offset 0 (MAP_FAILED: die("mmap")).
    //   2. a dma_buf_sync {DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ}; ioctl(buffer,
    //      DMA_BUF_IOCTL_SYNC, &sync) (-1: die("DMA_BUF_IOCTL_SYNC(START)")): the exporter makes
    //      what a device wrote visible to the CPU before it reads.
    //   3. fputs the memory (a C string) to stdout.
    //   4. the same ioctl with DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ: the CPU access is over.
    // Then delete the placeholder line below.
    die("TODO: mmap the dma-buf, SYNC START, read, SYNC END"); (void)buffer; // placeholder
    return 0;
}
