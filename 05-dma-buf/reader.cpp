/// @file 05-dma-buf/reader.cpp
/// @brief Chapter 05 reader: receives a dma-buf over the writer's Unix socket, checks that it
///        is one without probing it with ioctls, maps it, and reads each block between
///        DMA_BUF_IOCTL_SYNC calls.
///
/// Usage: `reader [--name PATH|@NAME] [--timeout SECONDS] [--quiet]`
///
/// The calls it teaches: chapter 04's `connect`, `SO_PEERCRED` and `recvmsg` with all its
/// checks (from `common/fdpass.hpp`, bounded by `--timeout`); `fstatfs(2)` and `f_type == DMA_BUF_MAGIC` (ioctl numbers belong to each driver, so
/// asking an unknown file an ioctl proves nothing and may do something); `lseek(SEEK_END)` for its
/// size; `mmap`; `ioctl(DMA_BUF_IOCTL_SYNC, START|READ)` and `END|READ` around each read.
#include <cerrno>
#include <cstdio>
#include <string>
#include <vector>

#include <linux/dma-buf.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "dmabuf.hpp"
#include "error.hpp"
#include "fdpass.hpp"
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
    const std::string statfs_call = "fstatfs(fd=" + std::to_string(fd) + ")";
    struct statfs info {};
    if (::fstatfs(fd, &info) == -1)
        throw_errno(statfs_call);
    if (info.f_type != DMA_BUF_MAGIC) {
        char type[32];
        std::snprintf(type, sizeof type, "0x%lx", static_cast<unsigned long>(info.f_type));
        throw Failure("descriptor " + std::to_string(fd) + " is not a dma-buf (its file system type is " + type +
                      ", not DMA_BUF_MAGIC 0x444d4142): refusing it");
    }
    const std::string seek_call = "lseek(fd=" + std::to_string(fd) + ", 0, SEEK_END)";
    off_t size = ::lseek(fd, 0, SEEK_END);
    if (size == -1)
        throw_errno(seek_call);
    if (static_cast<std::uint64_t>(size) < kHeaderSize)
        throw Failure("the dma-buf has " + std::to_string(size) + " bytes, less than the header: refusing it");
    say.say("%s: f_type=DMA_BUF_MAGIC, a dma-buf; %s = %lld bytes", statfs_call.c_str(), seek_call.c_str(),
            static_cast<long long>(size));
    return static_cast<std::uint64_t>(size);
}

/// Sends one message; a closed connection is the writer's death.
void send_message(int connection, dmabuf::Type type) {
    dmabuf::Message message = dmabuf::make_message(type);
    send_with_fds(connection, &message, sizeof message, {}, type == dmabuf::kHello ? "send(HELLO)" : "send(CONSUMED)");
}

int run(const Options& options) {
    Narrator say("reader", options.quiet);
    install_stop_handlers();
    dmabuf::require_some_device();
    Deadline deadline(options.timeout_seconds);

    UniqueFd connection = connect_unix(options.name, deadline, "is the writer running? start it first", [&] {
        say.say("waiting up to %s for a writer: start %s", seconds_text(deadline.seconds()).c_str(), sibling_program("writer").c_str());
    });
    say.say("socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC) = %d, connect(\"%s\") = 0", connection.get(),
            options.name.c_str());
    ucred writer = peer_credentials(connection.get());
    if (writer.uid != ::geteuid())
        throw Failure("the process listening there (pid " + std::to_string(writer.pid) + ") belongs to uid " +
                      std::to_string(writer.uid) + ", not to this user: refusing it");
    say.say("getsockopt(SO_PEERCRED): pid=%d uid=%u gid=%u, the same user", writer.pid, writer.uid, writer.gid);
    const pid_t writer_pid = writer.pid;

    UniqueFd buffer;
    try {
        send_message(connection.get(), dmabuf::kHello);
        dmabuf::Message answer{};
        std::vector<UniqueFd> received;
        try {
            received = receive_with_fds(connection.get(), &answer, sizeof answer, 1, "the memory", &deadline);
        } catch (const Failure& e) {
            // A BUSY carries no descriptor: say what it means rather than "0 descriptors".
            if (answer.magic == dmabuf::kMagic && answer.type == dmabuf::kBusy && dynamic_cast<const PeerClosed*>(&e) == nullptr)
                throw Failure("another reader is already being served by this writer: one writer serves one reader");
            throw;
        }
        if (std::string problem = dmabuf::message_problem(answer, dmabuf::kMemory); !problem.empty())
            throw Failure("refused the memory: " + problem);
        buffer = std::move(received.front());
    } catch (const PeerClosed& e) {
        remove_if_stale(options.name, say);
        throw Failure("the writer (pid " + std::to_string(writer_pid) + ") closed the connection without sending the "
                      "memory: it died, or it is not a writer (" + e.what() + ")");
    }
    say.say("send(HELLO); recvmsg(fd=%d, MSG_CMSG_CLOEXEC) = 16: MEMORY, 1 descriptor: fd %d", connection.get(),
            buffer.get());
    const std::size_t size = mappable_size(check_dmabuf(buffer.get(), say));

    const std::string mmap_call = "mmap(NULL, " + std::to_string(size) + ", PROT_READ, MAP_SHARED, fd=" +
                                  std::to_string(buffer.get()) + ", 0)";
    void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, buffer.get(), 0);
    if (base == MAP_FAILED)
        throw_errno(mmap_call);
    Mapping mapping(base, size);
    say.say("%s = %p", mmap_call.c_str(), base);

    dmabuf::sync(buffer.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ, "START|READ");
    HeaderSnapshot header = take_snapshot(*static_cast<const SharedHeader*>(base));
    dmabuf::sync(buffer.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ, "END|READ");
    validate_header(header, size);
    // The header's writer_pid is not compared with SO_PEERCRED's: the connection is the proof
    // of who sent the memory, and the header's number is the writer's pid in its own pid
    // namespace, which is another number (or 0, invisible) in a reader started in another
    // namespace (a container, unshare --pid). Comparing them would refuse a genuine writer there.
    const std::uint64_t capacity = header.data_capacity;
    say.say("SYNC START|READ, header valid: magic=0x%08x version=%u data_capacity=%llu, SYNC END|READ", header.magic,
            header.version, static_cast<unsigned long long>(capacity));

    std::uint64_t blocks = 0, total = 0;
    try {
        for (;;) {
            dmabuf::Message message{};
            receive_with_fds(connection.get(), &message, sizeof message, 0, "the next message");
            if (dmabuf::message_problem(message, dmabuf::kEnd).empty()) {
                send_message(connection.get(), dmabuf::kConsumed);
                say.say("recv(END); send(CONSUMED): %llu bytes in %llu block(s), confirmed",
                        static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks));
                return kExitSuccess;
            }
            if (std::string problem = dmabuf::message_problem(message, dmabuf::kBlock); !problem.empty())
                throw Failure("refused the next message: " + problem);
            if (message.length > capacity) // our own copy: checked once, then used
                throw LayoutError("block refused: length " + std::to_string(message.length) +
                                  " exceeds the data capacity " + std::to_string(capacity));
            dmabuf::sync(buffer.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ, "START|READ");
            write_all(STDOUT_FILENO, data_area(base), message.length);
            dmabuf::sync(buffer.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ, "END|READ");
            send_message(connection.get(), dmabuf::kConsumed);
            total += message.length;
            if (++blocks == 1)
                say.say("recv(BLOCK, %llu bytes); SYNC START|READ, written out, SYNC END|READ; send(CONSUMED) (further "
                        "blocks quietly)",
                        static_cast<unsigned long long>(message.length));
        }
    } catch (const PeerClosed& e) { // a refusal of what arrived is not a death
        remove_if_stale(options.name, say);
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
        unix_address(options.name, check);
        return run(options);
    });
}
