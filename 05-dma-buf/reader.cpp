/// @file 05-dma-buf/reader.cpp
/// @brief Chapter 05 reader: receives a dma-buf over the writer's Unix socket, checks that it
///        is one without probing it with ioctls, maps it, and reads each block between
///        DMA_BUF_IOCTL_SYNC calls.
///
/// Usage: `reader [--name PATH|@NAME] [--timeout SECONDS] [--quiet]`
///
/// The calls it teaches: chapter 04's `connect`, `SO_PEERCRED` and `recvmsg` with all its
/// checks; `fstatfs(2)` and `f_type == DMA_BUF_MAGIC` (ioctl numbers belong to each driver, so
/// asking an unknown file an ioctl proves nothing and may do something); `lseek(SEEK_END)` for its
/// size; `mmap`; `ioctl(DMA_BUF_IOCTL_SYNC, START|READ)` and `END|READ` around each read.
#include <cerrno>
#include <cstdio>
#include <string>

#include <linux/dma-buf.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "../04-fd-passing/protocol.hpp"
#include "dmabuf.hpp"
#include "error.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "stream.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: reader [OPTIONS]

Chapter 05, dma-buf. Connects to the writer's Unix socket, receives the dma-buf, checks
that it is one, and writes every byte the writer sends through it to standard output.

Options:
  --name PATH|@NAME  the writer's socket (default /tmp/shm-tutorial-05.sock)
  --timeout SECONDS  how long to wait for the socket and the buffer (default 60)
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the whole stream arrived; 1 a runtime failure (no writer, a descriptor
that is not a dma-buf, the writer died); 2 a usage error; 77 this kernel cannot make a
dma-buf at all: run make vm-05.
)";

/// A dma-buf lives on the kernel's internal dmabuf file system: fstatfs tells, whatever the
/// exporter. Returns its size, which lseek(SEEK_END) reports for every dma-buf.
std::uint64_t check_dmabuf(int fd, const Narrator& say) {
    struct statfs info {};
    if (::fstatfs(fd, &info) == -1)
        throw_errno("fstatfs(fd=" + std::to_string(fd) + ")");
    if (info.f_type != DMA_BUF_MAGIC) {
        char type[32];
        std::snprintf(type, sizeof type, "0x%lx", static_cast<unsigned long>(info.f_type));
        throw Failure("descriptor " + std::to_string(fd) + " is not a dma-buf (its file system type is " + type +
                      ", not DMA_BUF_MAGIC 0x444d4142): refusing it");
    }
    off_t size = ::lseek(fd, 0, SEEK_END);
    if (size == -1)
        throw_errno("lseek(fd=" + std::to_string(fd) + ", 0, SEEK_END)");
    if (static_cast<std::uint64_t>(size) < kHeaderSize)
        throw Failure("the dma-buf has " + std::to_string(size) + " bytes, less than the header: refusing it");
    say.say("fstatfs(fd=%d): f_type=DMA_BUF_MAGIC, a dma-buf; lseek(SEEK_END) = %lld bytes", fd,
            static_cast<long long>(size));
    return static_cast<std::uint64_t>(size);
}

int run(const Options& options) {
    Narrator say("reader", options.quiet);
    install_stop_handlers();
    dmabuf::require_some_device();
    Deadline deadline(options.timeout_seconds);

    UniqueFd connection = fdpass::connect_to_writer(options.name, deadline, "build/05-dma-buf/writer", say);
    pid_t writer_pid = fdpass::check_writer(connection.get(), say);
    UniqueFd buffer;
    try {
        buffer = fdpass::receive_descriptor(connection.get(), deadline);
    } catch (const fdpass::PeerClosed& e) {
        fdpass::remove_stale_socket(options.name, say);
        throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died before the stream started (" + e.what() +
                      ")");
    }
    say.say("recvmsg(fd=%d, MSG_CMSG_CLOEXEC) = 16: HELLO, 1 descriptor: fd %d", connection.get(), buffer.get());
    std::uint64_t size = check_dmabuf(buffer.get(), say);

    void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, buffer.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(dma-buf, PROT_READ, MAP_SHARED)");
    Mapping mapping(base, size);
    say.say("mmap(NULL, %llu, PROT_READ, MAP_SHARED, fd=%d, 0) = %p", static_cast<unsigned long long>(size),
            buffer.get(), base);

    dmabuf::sync(buffer.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ, "START|READ");
    HeaderSnapshot header = take_snapshot(*static_cast<const SharedHeader*>(base));
    dmabuf::sync(buffer.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ, "END|READ");
    validate_header(header, size);
    if (static_cast<pid_t>(header.writer_pid) != writer_pid)
        throw Failure("the header names writer pid " + std::to_string(header.writer_pid) + ", but pid " +
                      std::to_string(writer_pid) + " sent it: refusing it");
    const std::uint64_t capacity = header.data_capacity;
    say.say("SYNC START|READ, header valid: magic=0x%08x version=%u data_capacity=%llu, SYNC END|READ", header.magic,
            header.version, static_cast<unsigned long long>(capacity));

    std::uint64_t blocks = 0, total = 0;
    try {
        for (;;) {
            fdpass::Message message = fdpass::receive_message(connection.get(), nullptr, "the next message");
            if (message.type == fdpass::kEnd) {
                fdpass::send_message(connection.get(), fdpass::kConsumed);
                say.say("recv(END); send(CONSUMED): %llu bytes in %llu block(s), confirmed",
                        static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks));
                return kExitSuccess;
            }
            if (message.type != fdpass::kBlock)
                throw Failure(std::string("refused: unexpected ") + fdpass::type_name(message.type) + " message");
            if (message.length > capacity)
                throw LayoutError("block refused: length " + std::to_string(message.length) + " exceeds the data capacity " +
                                  std::to_string(capacity));
            dmabuf::sync(buffer.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ, "START|READ");
            write_all(STDOUT_FILENO, data_area(base), message.length);
            dmabuf::sync(buffer.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ, "END|READ");
            fdpass::send_message(connection.get(), fdpass::kConsumed);
            total += message.length;
            if (++blocks == 1)
                say.say("recv(BLOCK, %llu bytes); SYNC START|READ, written out, SYNC END|READ; send(CONSUMED) (further "
                        "blocks quietly)",
                        static_cast<unsigned long long>(message.length));
        }
    } catch (const fdpass::PeerClosed& e) { // a refusal of what arrived is not a death
        fdpass::remove_stale_socket(options.name, say);
        throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died before the end of the stream (" +
                      e.what() + ")");
    }
}

} // namespace

/// Parses the command line and runs the reader; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("reader", [&] {
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = dmabuf::kDefaultName;
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        sockaddr_un check{};
        fdpass::make_address(options.name, check);
        return run(options);
    });
}
