/// @file 05-dma-buf/writer.cpp
/// @brief Chapter 05 writer: allocates a dma-buf (from the system heap, or with --udmabuf from a
///        memfd), brackets every CPU access with DMA_BUF_IOCTL_SYNC, and passes the dma-buf to the
///        reader over a Unix socket exactly as chapter 04 passed its memfd.
///
/// Usage: `writer [--udmabuf] [--name PATH|@NAME] [--timeout SECONDS] [--quiet] [--force] [MESSAGE...]`
///
///     terminal 1: build/05-dma-buf/writer "hello, dma-buf"
///     terminal 2: build/05-dma-buf/reader
///
/// On a kernel without dma-buf heaps and udmabuf (or where the device nodes are root-only) both
/// programs exit 77 with the reason; `make vm-05` runs the chapter in a small virtual machine.
///
/// The calls it teaches: `open("/dev/dma_heap/system")` and `ioctl(DMA_HEAP_IOCTL_ALLOC)`; or
/// `memfd_create` + `F_SEAL_SHRINK`, `open("/dev/udmabuf")` and `ioctl(UDMABUF_CREATE)`;
/// `ioctl(DMA_BUF_SET_NAME)`; `mmap` of the dma-buf; `ioctl(DMA_BUF_IOCTL_SYNC)` around each CPU
/// write; chapter 04's `sendmsg` with `SCM_RIGHTS`.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../04-fd-passing/protocol.hpp"
#include "dmabuf.hpp"
#include "error.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "seals.hpp"
#include "stream.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: writer [OPTIONS] [MESSAGE...]

Chapter 05, dma-buf. Allocates a dma-buf, the buffer handle that graphics and media
drivers share, passes it to the reader over a Unix socket (as chapter 04 passed a memfd),
and sends each MESSAGE, followed by a newline, through it; with no MESSAGE, standard input
until end of file. Start the reader in another terminal:
    build/05-dma-buf/reader

Options:
  --udmabuf          make the dma-buf from a memfd with /dev/udmabuf, instead of
                     allocating it from /dev/dma_heap/system
  --name PATH|@NAME  the socket (default /tmp/shm-tutorial-05.sock)
  --timeout SECONDS  how long to wait for a reader to connect, and for its confirmation
                     (default 60)
  --force            replace a socket file left by a crashed run
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage
error; 77 this kernel (or this user) cannot make a dma-buf: run make vm-05.
)";

/// The system heap: one ioctl returns a new dma-buf. fd_flags O_RDWR: without it the dma-buf
/// is read-only and a writable mapping fails.
UniqueFd allocate_from_heap(std::size_t size, const Narrator& say) {
    UniqueFd heap(::open(dmabuf::kSystemHeap, O_RDONLY | O_CLOEXEC));
    if (!heap)
        dmabuf::device_unavailable(dmabuf::kSystemHeap, "CONFIG_DMABUF_HEAPS_SYSTEM", errno);
    dma_heap_allocation_data request{};
    request.len = size;
    request.fd_flags = O_RDWR | O_CLOEXEC;
    if (::ioctl(heap.get(), DMA_HEAP_IOCTL_ALLOC, &request) == -1)
        throw_errno("ioctl(DMA_HEAP_IOCTL_ALLOC, len=" + std::to_string(size) + ")");
    say.say("open(\"%s\") = %d; ioctl(DMA_HEAP_IOCTL_ALLOC, len=%zu, fd_flags=O_RDWR|O_CLOEXEC) = 0: dma-buf fd %u",
            dmabuf::kSystemHeap, heap.get(), size, request.fd);
    return UniqueFd(static_cast<int>(request.fd));
}

/// udmabuf: a dma-buf whose pages are a memfd's. The memfd must be sealed against shrinking (the
/// pages must stay) and must not be write-sealed (udmabuf refuses F_SEAL_WRITE and
/// F_SEAL_FUTURE_WRITE); offset and size must be page-aligned.
UniqueFd create_udmabuf(std::size_t size, const Narrator& say) {
    UniqueFd device(::open(dmabuf::kUdmabuf, O_RDWR | O_CLOEXEC));
    if (!device)
        dmabuf::device_unavailable(dmabuf::kUdmabuf, "CONFIG_UDMABUF", errno);
    UniqueFd memory(::memfd_create("shm-tutorial-05", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!memory)
        throw_errno("memfd_create");
    if (::ftruncate(memory.get(), static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate");
    if (::fcntl(memory.get(), F_ADD_SEALS, F_SEAL_SHRINK) == -1)
        throw_errno("fcntl(F_ADD_SEALS, F_SEAL_SHRINK)");
    udmabuf_create request{};
    request.memfd = static_cast<std::uint32_t>(memory.get());
    request.flags = UDMABUF_FLAGS_CLOEXEC;
    request.offset = 0;
    request.size = size;
    int fd = ::ioctl(device.get(), UDMABUF_CREATE, &request);
    if (fd == -1)
        throw_errno("ioctl(UDMABUF_CREATE, size=" + std::to_string(size) + ")");
    say.say("open(\"%s\") = %d; memfd_create = %d, ftruncate(%zu), F_ADD_SEALS(F_SEAL_SHRINK); "
            "ioctl(UDMABUF_CREATE, memfd=%d, offset=0, size=%zu) = %d",
            dmabuf::kUdmabuf, device.get(), memory.get(), size, memory.get(), size, fd);
    return UniqueFd(fd); // the dma-buf holds the memfd's pages; our memfd descriptor can go
}

int run(const Options& options, bool use_udmabuf) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    // Whole pages: udmabuf requires it, and every exporter works in pages anyway.
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t size = (kHeaderSize + kDefaultDataCapacity + page - 1) / page * page;
    const std::uint64_t capacity = size - kHeaderSize;

    UniqueFd buffer = use_udmabuf ? create_udmabuf(size, say) : allocate_from_heap(size, say);
    // A name for people: /proc/PID/fdinfo/N shows it (Linux 5.3; older kernels answer ENOTTY, and
    // the name is only a convenience, so any error is ignored).
    if (::ioctl(buffer.get(), DMA_BUF_SET_NAME_B, "shm-tutorial-05") == 0)
        say.say("ioctl(DMA_BUF_SET_NAME, \"shm-tutorial-05\") = 0");

    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, buffer.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(dma-buf, PROT_READ|PROT_WRITE, MAP_SHARED)");
    Mapping mapping(base, size);
    say.say("mmap(NULL, %zu, PROT_READ|PROT_WRITE, MAP_SHARED, fd=%d, 0) = %p", size, buffer.get(), base);

    dmabuf::sync(buffer.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE, "START|WRITE");
    publish_header(*construct_header(base), capacity, static_cast<std::uint32_t>(::getpid()), 0);
    dmabuf::sync(buffer.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE, "END|WRITE");
    say.say("ioctl(DMA_BUF_IOCTL_SYNC, START|WRITE), header written, ioctl(DMA_BUF_IOCTL_SYNC, END|WRITE)");

    fdpass::SocketFile file(say);
    UniqueFd listener = fdpass::listen_on(options.name, options.force, file, say);
    UniqueFd connection =
        fdpass::accept_reader(listener.get(), options, dmabuf::kDefaultName, "build/05-dma-buf/reader", say);
    fdpass::send_descriptor(connection.get(), fdpass::Message{fdpass::kMagic, fdpass::kHello, 0}, buffer.get());
    say.say("sendmsg(fd=%d, HELLO + SCM_RIGHTS [%d]) = 16: the dma-buf is on its way", connection.get(), buffer.get());

    Input input(options.operands);
    std::uint8_t* data = data_area(base);
    std::uint64_t blocks = 0, total = 0;
    const int conn = connection.get(), listen_fd = listener.get();
    for (;;) {
        dmabuf::sync(buffer.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE, "START|WRITE");
        std::size_t length = input.next(data, capacity, [&] {
            fdpass::refuse_others(listen_fd, say);
            pollfd entry{conn, POLLIN | POLLRDHUP, 0};
            return !(::poll(&entry, 1, 0) == 1 && (entry.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0);
        });
        dmabuf::sync(buffer.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE, "END|WRITE");
        if (length == 0)
            break;
        fdpass::send_message(conn, fdpass::kBlock, length);
        if (++blocks == 1)
            say.say("SYNC START|WRITE, block 1 written (%zu bytes), SYNC END|WRITE, send(BLOCK) (further blocks "
                    "quietly)",
                    length);
        total += length;
        fdpass::wait_consumed(conn, listen_fd, nullptr, say);
    }
    fdpass::send_message(conn, fdpass::kEnd);
    say.say("%llu bytes sent in %llu block(s); send(END); waiting up to %s for the reader to confirm",
            static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks),
            seconds_text(options.timeout_seconds).c_str());
    Deadline deadline(options.timeout_seconds);
    fdpass::wait_consumed(conn, listen_fd, &deadline, say);
    say.say("the reader confirmed the end of the stream");
    if (!file.path.empty()) {
        if (::unlink(file.path.c_str()) == -1)
            throw_errno("unlink(\"" + file.path + "\")");
        say.say("unlink(\"%s\") = 0", file.path.c_str());
        file.path.clear();
    }
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the writer; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("writer", [&] {
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = dmabuf::kDefaultName;
        spec.operands = true;
        bool force = false, use_udmabuf = false;
        spec.extra.push_back({"--force", false, [&](const std::string&) { force = true; }});
        spec.extra.push_back({"--udmabuf", false, [&](const std::string&) { use_udmabuf = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        sockaddr_un check{};
        fdpass::make_address(options.name, check);
        options.force = force;
        return run(options, use_udmabuf);
    });
}
