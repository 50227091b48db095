// EXERCISE 05-dma-buf/1: allocate a dma-buf from the system heap, or exit 77 where there is none (the bare writer)
// This is 05-dma-buf/hello_writer.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-05 (it builds this file and runs the chapter's tests).
// The solution is 05-dma-buf/hello_writer.cpp: read it only once your version passes.

// hello_writer.cpp: chapter 05, step 1. Allocates a dma-buf from the system heap (or, where
// there is none, makes one from a memfd with udmabuf), writes a message into it between the
// two DMA_BUF_IOCTL_SYNC calls, and passes it as chapter 04's bare writer passed its memfd.
// Exits 77 where neither device can be opened. Not robust (step 2, writer.cpp, adds each): as
// in chapter 04 (stale socket file, anyone may connect, accept waits for ever), and no name.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char* call) { perror(call); exit(1); }

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "/tmp/shm-tutorial-05-hello.sock";
    // TODO(exercise 1): allocate the dma-buf from the system heap (kernel documentation:
    // userspace-api/dma-buf-heaps; linux/dma-heap.h):
    //   1. heap = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
    //   2. if it opened: a dma_heap_allocation_data {len 4096, fd 0, fd_flags O_RDWR | O_CLOEXEC,
    //      heap_flags 0}; ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &request) (-1: die); the new dma-buf
    //      is request.fd: store it in buffer;
    //   3. else fall back to udmabuf (the branch below); where neither opens, exit 77 with the
    //      reason, as the last branch does: this machine lacks what the chapter needs.
    // Then replace the placeholder lines below.
    int buffer = -1, heap = -1; // placeholder
    die("TODO: open the system heap, DMA_HEAP_IOCTL_ALLOC"); // placeholder
    if (heap != -1) {
    } else if (int device = open("/dev/udmabuf", O_RDWR | O_CLOEXEC); device != -1) {
        int memfd = memfd_create("hello-05", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (memfd == -1 || ftruncate(memfd, 4096) == -1) die("memfd_create");
        if (fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK) == -1) die("F_ADD_SEALS"); // udmabuf demands it
        udmabuf_create request{static_cast<__u32>(memfd), UDMABUF_FLAGS_CLOEXEC, 0, 4096};
        if ((buffer = ioctl(device, UDMABUF_CREATE, &request)) == -1) die("UDMABUF_CREATE");
    } else {
        fprintf(stderr, "hello_writer: neither /dev/dma_heap/system nor /dev/udmabuf can be opened: %s\n", strerror(errno));
        return 77;
    }
    void* memory = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, buffer, 0);
    if (memory == MAP_FAILED) die("mmap");
    dma_buf_sync sync{DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE};
    if (ioctl(buffer, DMA_BUF_IOCTL_SYNC, &sync) == -1) die("DMA_BUF_IOCTL_SYNC(START)");
    strcpy(static_cast<char*>(memory), "hello, dma-buf\n"); // the CPU writes between START and END
    sync.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE;
    if (ioctl(buffer, DMA_BUF_IOCTL_SYNC, &sync) == -1) die("DMA_BUF_IOCTL_SYNC(END)");

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
    if (unlink(path) == -1) die("unlink");

    char byte = 'M';
    iovec data{&byte, 1};
    union { char buffer[CMSG_SPACE(sizeof(int))]; cmsghdr align; } control{};
    msghdr message{};
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof control.buffer;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &buffer, sizeof buffer);
    if (sendmsg(connection, &message, 0) != 1) die("sendmsg");
    return 0;
}
