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
/// write; chapter 04's socket calls and `sendmsg` with `SCM_RIGHTS`, from `common/fdpass.hpp`.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dmabuf.hpp"
#include "error.hpp"
#include "fdpass.hpp"
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
  --force            replace a socket file left by a crashed run (never a live writer's)
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
    const std::string alloc_call = "ioctl(fd=" + std::to_string(heap.get()) + ", DMA_HEAP_IOCTL_ALLOC, len=" +
                                   std::to_string(size) + ", fd_flags=O_RDWR|O_CLOEXEC)";
    if (::ioctl(heap.get(), DMA_HEAP_IOCTL_ALLOC, &request) == -1)
        throw_errno(alloc_call);
    say.say("open(\"%s\") = %d; %s = 0: dma-buf fd %u", dmabuf::kSystemHeap, heap.get(), alloc_call.c_str(), request.fd);
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
    const std::string create_call = "ioctl(fd=" + std::to_string(device.get()) + ", UDMABUF_CREATE, memfd=" +
                                    std::to_string(memory.get()) + ", offset=0, size=" + std::to_string(size) + ")";
    int fd = ::ioctl(device.get(), UDMABUF_CREATE, &request);
    if (fd == -1)
        throw_errno(create_call);
    say.say("open(\"%s\") = %d; memfd_create = %d, ftruncate(%zu), F_ADD_SEALS(F_SEAL_SHRINK); %s = %d", dmabuf::kUdmabuf,
            device.get(), memory.get(), size, create_call.c_str(), fd);
    return UniqueFd(fd); // the dma-buf holds the memfd's pages; our memfd descriptor can go
}

/// Answers every client that asks meanwhile with BUSY (one writer serves one reader).
void refuse_asking(int listener, Callers& callers, const Narrator& say) {
    callers.accept_waiting(listener);
    while (UniqueFd other = callers.take_asking()) {
        dmabuf::Message busy = dmabuf::make_message(dmabuf::kBusy);
        ssize_t sent = ::send(other.get(), &busy, sizeof busy, MSG_NOSIGNAL | MSG_DONTWAIT);
        say.say("send(fd=%d, BUSY) = %zd: one writer serves one reader; closed it", other.get(), sent);
    }
}

/// Waits for the reader's CONSUMED (no descriptor with it), answering other clients meanwhile;
/// end of file means the reader closed the connection (reader_hung_up()). `deadline` (may be
/// null) bounds the wait.
void wait_consumed(int reader, int listener, Callers& callers, const Deadline* deadline, const Narrator& say) {
    for (;;) {
        throw_if_stopped();
        std::vector<pollfd> entries{{reader, POLLIN, 0}, {listener, POLLIN, 0}};
        callers.add_to(entries);
        if (::poll(entries.data(), entries.size(), static_cast<int>(std::chrono::milliseconds(kLivenessInterval).count())) == -1 &&
            errno != EINTR)
            throw_errno("poll");
        refuse_asking(listener, callers, say);
        if (entries[0].revents != 0)
            break;
        if (deadline != nullptr && deadline->expired())
            throw Failure("the reader did not confirm within " + seconds_text(deadline->seconds()));
    }
    dmabuf::Message reply{};
    try {
        receive_with_fds(reader, &reply, sizeof reply, 0, "the reader's CONSUMED", deadline);
    } catch (const PeerClosed& e) {
        throw Failure(reader_hung_up("before the end of the stream"));
    }
    if (std::string problem = dmabuf::message_problem(reply, dmabuf::kConsumed); !problem.empty())
        throw Failure("the reader's reply is refused: " + problem);
}

/// Sends one message without a descriptor; a closed connection is reported as reader_hung_up().
void send_message(int reader, dmabuf::Type type, std::uint64_t length = 0) {
    dmabuf::Message message = dmabuf::make_message(type, length);
    try {
        send_with_fds(reader, &message, sizeof message, {}, type == dmabuf::kBlock ? "send(BLOCK)" : "send(END)");
    } catch (const PeerClosed& e) {
        throw Failure(std::string(type == dmabuf::kBlock ? "send(BLOCK)" : "send(END)") + ": " +
                      reader_hung_up("before the end of the stream"));
    }
}

int run(const Options& options, bool use_udmabuf) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    // Whole pages: udmabuf requires it, and every exporter works in pages anyway.
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t size = (kHeaderSize + kDefaultDataCapacity + page - 1) / page * page;
    const std::size_t capacity = size - kHeaderSize;

    UniqueFd buffer = use_udmabuf ? create_udmabuf(size, say) : allocate_from_heap(size, say);
    // A name for people: /proc/PID/fdinfo/N shows it (Linux 5.3; older kernels answer ENOTTY, and
    // the name is only a convenience, so any error is ignored).
    if (::ioctl(buffer.get(), DMA_BUF_SET_NAME_B, "shm-tutorial-05") == 0)
        say.say("ioctl(DMA_BUF_SET_NAME, \"shm-tutorial-05\") = 0");

    const std::string mmap_call = "mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED, fd=" +
                                  std::to_string(buffer.get()) + ", 0)";
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, buffer.get(), 0);
    if (base == MAP_FAILED)
        throw_errno(mmap_call);
    Mapping mapping(base, size);
    say.say("%s = %p", mmap_call.c_str(), base);

    dmabuf::sync(buffer.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE, "START|WRITE");
    publish_header(*construct_header(base), capacity, static_cast<std::uint32_t>(::getpid()), 0);
    dmabuf::sync(buffer.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE, "END|WRITE");
    say.say("ioctl(DMA_BUF_IOCTL_SYNC, START|WRITE), header written, ioctl(DMA_BUF_IOCTL_SYNC, END|WRITE)");

    SocketFile file(say);
    UniqueFd listener = listen_unix(options.name, options.force, 8, file, say);
    say.say("socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC) = %d, bind(\"%s\")%s, listen(%d, 8) = 0",
            listener.get(), options.name.c_str(), is_abstract(options.name) ? " (abstract: no file)" : " (file mode 0600)",
            listener.get());
    Callers callers(say, sizeof(dmabuf::Message), [](const std::vector<char>& request) {
        dmabuf::Message hello;
        std::memcpy(&hello, request.data(), sizeof hello);
        std::string problem = dmabuf::message_problem(hello, dmabuf::kHello);
        return problem.empty() ? problem : "sent a first message that is not HELLO: " + problem;
    });
    const bool default_name = options.name == dmabuf::kDefaultName;
    say.say("waiting up to %s for a reader: start %s%s%s", seconds_text(options.timeout_seconds).c_str(), sibling_program("reader").c_str(),
            default_name ? "" : " --name ", default_name ? "" : options.name.c_str());
    UniqueFd reader = wait_for_asking_client(listener.get(), callers, Deadline(options.timeout_seconds));
    if (!reader)
        throw Failure("no reader asked within " + seconds_text(options.timeout_seconds) +
                      ": start the reader while the writer waits, or give the writer a longer --timeout");
    dmabuf::Message memory_message = dmabuf::make_message(dmabuf::kMemory);
    try {
        send_with_fds(reader.get(), &memory_message, sizeof memory_message, {buffer.get()}, "sendmsg(MEMORY)");
    } catch (const PeerClosed& e) {
        throw Failure(reader_hung_up("before the dma-buf reached it"));
    }
    say.say("sendmsg(fd=%d, MEMORY + SCM_RIGHTS [%d]) = 16: the dma-buf is on its way", reader.get(), buffer.get());

    Input input(options.operands);
    std::uint8_t* data = data_area(base);
    std::uint64_t blocks = 0, total = 0;
    const std::vector<int> watched = {reader.get(), listener.get()};
    auto reader_alive = [&] {
        refuse_asking(listener.get(), callers, say);
        pollfd entry{reader.get(), POLLIN | POLLRDHUP, 0};
        if (::poll(&entry, 1, 0) != 1)
            return true;
        if ((entry.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0)
            throw Failure(reader_hung_up("while the writer waited for input") + "; cleaned up");
        throw Failure("the reader sent something out of turn (while no block was pending): refusing it");
    };
    for (;;) {
        dmabuf::sync(buffer.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE, "START|WRITE");
        std::size_t length = input.next(data, capacity, reader_alive, watched);
        dmabuf::sync(buffer.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE, "END|WRITE");
        if (length == 0)
            break;
        send_message(reader.get(), dmabuf::kBlock, length);
        if (++blocks == 1)
            say.say("SYNC START|WRITE, block 1 written (%zu bytes), SYNC END|WRITE, send(BLOCK) (further blocks "
                    "quietly)",
                    length);
        total += length;
        wait_consumed(reader.get(), listener.get(), callers, nullptr, say);
    }
    send_message(reader.get(), dmabuf::kEnd);
    say.say("%llu bytes sent in %llu block(s); send(END); waiting up to %s for the reader to confirm",
            static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks),
            seconds_text(options.timeout_seconds).c_str());
    Deadline deadline(options.timeout_seconds);
    wait_consumed(reader.get(), listener.get(), callers, &deadline, say);
    say.say("the reader confirmed the end of the stream");
    if (!file.path.empty()) {
        const std::string unlink_call = "unlink(\"" + file.path + "\")";
        if (::unlink(file.path.c_str()) == -1)
            throw_errno(unlink_call);
        say.say("%s = 0", unlink_call.c_str());
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
        unix_address(options.name, check); // a usage error if it does not fit
        options.force = force;
        return run(options, use_udmabuf);
    });
}
