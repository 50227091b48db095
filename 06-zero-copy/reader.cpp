/// @file 06-zero-copy/reader.cpp
/// @brief Chapter 06 reader: receives the writer's pool once over a Unix socket, then for each
///        index the writer sends writes the slot's bytes to standard output straight from the
///        shared memory, and gives the index back.
///
/// Usage: `reader [--name PATH|@NAME] [--timeout SECONDS] [--quiet]`
///
/// Run it with its companion, `writer`, in another terminal (either may start first):
///
///     terminal 1: build/06-zero-copy/writer "hello, pool"
///     terminal 2: build/06-zero-copy/reader
///
/// Ownership, from the reader's side: a slot is the reader's from the writer's FILLED until the
/// reader's RETURNED, and the reader reads it only then. It believes nothing the writer says
/// about slots: an index out of range, a slot the reader already holds (the writer would be
/// writing into bytes being read), a length past the end of the slot are refused.
///
/// The calls: `connect(2)`, `getsockopt(SO_PEERCRED)`, `recvmsg(2)` with `SCM_RIGHTS` and the
/// checks of chapter 04 (from `common/fdpass.hpp`), `F_GET_SEALS` and `fstat` (chapter 03), one `mmap`; then per message a
/// `recv` of 16 bytes, a `write(2)` to standard output from the slot itself, and a `send`.
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <deque>
#include <string>
#include <vector>

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.hpp"
#include "fdpass.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "pool.hpp"
#include "seals.hpp"
#include "stream.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: reader [OPTIONS]

Chapter 06, a zero-copy buffer pool. Connects to the writer's Unix socket, receives the
writer's pool of slots once (a sealed memfd, SCM_RIGHTS), checks it, then for each slot
index the writer sends writes that slot's bytes to standard output straight from the
shared memory and gives the index back. Waits for a writer that has not started yet, up
to the timeout.

Options:
  --name PATH|@NAME  the writer's socket (default /tmp/shm-tutorial-06.sock)
  --timeout SECONDS  how long to wait for the socket to appear and for the pool to
                     arrive (default 60); once the stream runs, the reader waits as long
                     as the writer's connection is open
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the whole stream arrived; 1 a runtime failure (no writer, a refused pool or
slot, another reader, the writer died); 2 a usage error.
)";

/// The pool's shape, copied once from the header and validated: what every index and length is
/// checked against (never the header again: the writer could change it).
struct PoolShape {
    std::uint32_t slot_count;
    std::uint64_t slot_size;
};

/// Receives HELLO with the pool's descriptor: exactly 16 bytes, no MSG_CTRUNC, exactly one
/// descriptor (chapter 04's checks). A BUSY instead means another reader is being served.
UniqueFd receive_pool(int connection, const Deadline& deadline, const Narrator& say) {
    pool::Message hello{};
    std::vector<UniqueFd> received;
    try {
        received = receive_with_fds(connection, &hello, sizeof hello, 1, "the pool", &deadline);
    } catch (const Failure& e) {
        // A BUSY carries no descriptor: say what it means rather than "0 descriptors".
        if (hello.magic == pool::kMagic && hello.type == pool::kBusy && dynamic_cast<const PeerClosed*>(&e) == nullptr)
            throw Failure("another reader is already being served by this writer: one writer serves one reader");
        throw;
    }
    if (hello.magic != pool::kMagic || hello.type != pool::kHello)
        throw Failure("refused: the first message is not HELLO");
    UniqueFd memory = std::move(received.front());
    say.say("recvmsg(fd=%d, MSG_CMSG_CLOEXEC) = 16: HELLO, 1 descriptor (SCM_RIGHTS), no MSG_CTRUNC: fd %d", connection,
            memory.get());
    return memory;
}

/// Copies the header and the geometry once, validates the copy against the real size (from
/// fstat, after the seals), and returns the shape every index and length is checked against.
PoolShape validate_pool(const void* base, std::uint64_t size, const Narrator& say) {
    const auto& header = *static_cast<const SharedHeader*>(base);
    HeaderSnapshot snapshot = take_snapshot(header);
    validate_header(snapshot, size);
    // The header's writer_pid is not compared with SO_PEERCRED's: the connection is the proof of
    // who sent the pool, and the header's number is the writer's pid in its own pid namespace,
    // another number (or 0, invisible) for a reader in another one (a container, unshare --pid).
    PoolShape shape{pool::geometry_of(header).slot_count.load(std::memory_order_relaxed),
                    pool::geometry_of(header).slot_size.load(std::memory_order_relaxed)};
    // Overflow-safe: count and size are bounded before they are multiplied.
    if (shape.slot_count == 0 || shape.slot_count > pool::kMaxSlots || shape.slot_size == 0 ||
        shape.slot_size > pool::kMaxSlotSize || shape.slot_size % pool::kPageSize != 0 ||
        shape.slot_count * shape.slot_size != snapshot.data_capacity || size < pool::kSlotsOffset ||
        shape.slot_count * shape.slot_size > size - pool::kSlotsOffset)
        throw LayoutError("header refused: " + std::to_string(shape.slot_count) + " slots of " +
                          std::to_string(shape.slot_size) + " bytes do not fit a " + std::to_string(size) +
                          "-byte pool with data capacity " + std::to_string(snapshot.data_capacity));
    say.say("header valid: magic=0x%08" PRIx32 ", %" PRIu32 " slots of %" PRIu64 " bytes from offset %" PRIu64,
            snapshot.magic, shape.slot_count, shape.slot_size, pool::kSlotsOffset);
    return shape;
}

/// The reader's side of ownership: the slots it holds, in the order the writer filled them.
class HeldSlots {
public:
    explicit HeldSlots(const PoolShape& shape) : shape_(shape), held_(shape.slot_count, false) {}

    /// Takes what the writer says. FILLED makes the slot the reader's, after checking that it
    /// can be: a slot of this pool, not one the reader holds already, a length that fits.
    void take(const pool::Message& message) {
        if (message.magic != pool::kMagic)
            throw Failure("refused: a message that does not start with SHM6 (garbage on the socket)");
        // END is the last word: without this, a writer repeating END (or anything after it)
        // would grow the queue for as long as it kept sending, since the reader takes every
        // message that has arrived before it uses any.
        if (ended_)
            throw Failure(std::string("refused: the writer sent ") + pool::type_name(message.type) + " after END");
        if (message.type == pool::kEnd) {
            ended_ = true;
            queue_.push_back(message);
            return;
        }
        if (message.type != pool::kFilled)
            throw Failure(std::string("refused: the writer sent ") + pool::type_name(message.type) +
                          ", expected FILLED or END");
        if (message.slot >= shape_.slot_count)
            throw Failure("refused: the writer filled slot " + std::to_string(message.slot) + ", but the pool has only " +
                          std::to_string(shape_.slot_count) + " slots (0 to " + std::to_string(shape_.slot_count - 1) +
                          ")");
        if (held_[message.slot])
            throw Failure("refused: the writer filled slot " + std::to_string(message.slot) +
                          ", which the reader still holds (it would overwrite bytes being read)");
        if (message.length == 0 || message.length > shape_.slot_size)
            throw Failure("refused: the writer says slot " + std::to_string(message.slot) + " holds " +
                          std::to_string(message.length) + " bytes; a slot holds 1 to " +
                          std::to_string(shape_.slot_size));
        held_[message.slot] = true;
        queue_.push_back(message);
        if (queue_.size() > most_held_)
            most_held_ = queue_.size();
    }
    /// True when something is waiting to be used.
    bool empty() const { return queue_.empty(); }
    /// The oldest message: a slot to use, or END.
    pool::Message front() const { return queue_.front(); }
    /// The oldest slot has been used and goes back to the writer.
    void give_back() {
        held_[queue_.front().slot] = false;
        queue_.pop_front();
    }
    /// The most slots held at once.
    std::size_t most_held() const { return most_held_; }

private:
    PoolShape shape_;
    std::vector<bool> held_;
    std::deque<pool::Message> queue_;
    std::size_t most_held_ = 0;
    bool ended_ = false; ///< END has arrived: nothing may follow it
};

int run(const Options& options) {
    Narrator say("reader", options.quiet);
    install_stop_handlers();
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
    say.say("getsockopt(SO_PEERCRED): writer pid=%d uid=%u, the same user", writer.pid, writer.uid);
    const pid_t writer_pid = writer.pid;
    try {
        // Ask: the writer takes for its reader only a client that asks (a silent connection may
        // be anyone checking that the writer is alive).
        pool::Message ask{pool::kMagic, pool::kAsk, 0, 0};
        send_with_fds(connection.get(), &ask, sizeof ask, {}, "send(ASK)");
        say.say("send(ASK): 16 bytes that ask for the pool");
        UniqueFd memory = receive_pool(connection.get(), deadline, say);
        // Seals first, then the size: once SHRINK and GROW are on, the size cannot change.
        std::uint64_t size = check_sealed_memfd(memory.get(), F_SEAL_SHRINK | F_SEAL_GROW, pool::kSlotsOffset, say);
        // Read-only: the reader never writes a slot; what it says goes back over the socket.
        void* base = ::mmap(nullptr, mappable_size(size), PROT_READ, MAP_SHARED, memory.get(), 0);
        if (base == MAP_FAILED)
            throw_errno("mmap(PROT_READ, MAP_SHARED)");
        Mapping mapping(base, static_cast<std::size_t>(size));
        say.say("mmap(NULL, %" PRIu64 ", PROT_READ, MAP_SHARED, fd=%d, 0) = %p: the whole pool, mapped once", size,
                memory.get(), base);
        memory.reset();
        const PoolShape shape = validate_pool(base, size, say);
        const std::uint8_t* slots = static_cast<const std::uint8_t*>(base) + pool::kSlotsOffset;

        HeldSlots held(shape);
        std::uint64_t messages = 0, total = 0;
        for (;;) {
            // Take every message that has arrived (waiting for the first as long as the writer
            // lives): the slots named are the reader's until it gives them back.
            pool::Message message{};
            receive_with_fds(connection.get(), &message, sizeof message, 0, "the next message");
            held.take(message);
            pollfd more{connection.get(), POLLIN, 0};
            while (::poll(&more, 1, 0) == 1 && (more.revents & POLLIN) != 0) {
                receive_with_fds(connection.get(), &message, sizeof message, 0, "the next message");
                held.take(message);
            }
            // Use each slot in place, in order, and give it back.
            while (!held.empty()) {
                pool::Message next = held.front();
                if (next.type == pool::kEnd) {
                    pool::Message done{pool::kMagic, pool::kDone, 0, 0};
                    send_with_fds(connection.get(), &done, sizeof done, {}, "send(DONE)");
                    say.say("recv(END); send(DONE): %" PRIu64 " bytes in %" PRIu64
                            " message(s), at most %zu slot(s) held at once, every one returned",
                            total, messages, held.most_held());
                    return kExitSuccess;
                }
                // Zero copy: the bytes go to stdout from the very page the writer filled.
                write_all(STDOUT_FILENO, slots + next.slot * shape.slot_size, next.length);
                held.give_back();
                pool::Message returned{pool::kMagic, pool::kReturned, next.slot, 0};
                send_with_fds(connection.get(), &returned, sizeof returned, {}, "send(RETURNED)");
                if (messages++ == 0)
                    say.say("recv(FILLED slot=%" PRIu32 " length=%" PRIu32 "); write(stdout) from the slot itself; "
                            "send(RETURNED slot=%" PRIu32 ") (further messages quietly)",
                            next.slot, next.length, next.slot);
                total += next.length;
            }
        }
    } catch (const PeerClosed& e) {
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
        spec.default_name = pool::kDefaultName;
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        sockaddr_un check{};
        unix_address(options.name, check);
        return run(options);
    });
}
