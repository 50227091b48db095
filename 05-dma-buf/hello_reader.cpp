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

    void* memory = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, buffer, 0);
    if (memory == MAP_FAILED) die("mmap");
    dma_buf_sync sync{DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ};
    if (ioctl(buffer, DMA_BUF_IOCTL_SYNC, &sync) == -1) die("DMA_BUF_IOCTL_SYNC(START)");
    fputs(static_cast<const char*>(memory), stdout); // the CPU reads between START and END
    sync.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ;
    if (ioctl(buffer, DMA_BUF_IOCTL_SYNC, &sync) == -1) die("DMA_BUF_IOCTL_SYNC(END)");
    return 0;
}
