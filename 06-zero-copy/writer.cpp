/// @file 06-zero-copy/writer.cpp
/// @brief Chapter 06 writer: makes a pool of slots in one sealed memfd, passes the pool to the
///        reader once over a Unix socket, then for each message loans itself a free slot, reads
///        standard input straight into it, and sends only the slot's index and length.
///
/// Usage: `writer [--name PATH|@NAME] [--slots N] [--slot-size BYTES] [--timeout SECONDS]
///        [--force] [--quiet] [MESSAGE...]`
///
/// Run it with its companion, `reader`, in a second terminal:
///
///     terminal 1: build/06-zero-copy/writer "hello, pool"
///     terminal 2: build/06-zero-copy/reader
///
/// What it teaches is ownership: a slot is the writer's to fill only while it is free; once its
/// index has gone to the reader (FILLED) it is the reader's until the reader gives the index back
/// (RETURNED). When every slot is on loan the writer waits (backpressure) rather than overwrite
/// bytes the reader may still be reading. And the writer believes nothing the reader says about
/// slots: an index out of range, a slot that is not on loan, a slot returned twice are refused.
///
/// The calls: `memfd_create(2)`, `ftruncate`, `posix_fallocate`, `mmap`, `F_ADD_SEALS` (chapter
/// 03); the socket and `sendmsg` with `SCM_RIGHTS` (chapter 04, from `common/fdpass.hpp`),
/// once; then `read(2)` from standard input into the slot and `send(2)` of 16 bytes per message.
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
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

const char* const kUsage = R"(Usage: writer [OPTIONS] [MESSAGE...]

Chapter 06, a zero-copy buffer pool. Makes a pool of slots in one sealed memfd, passes it
to the reader once over a Unix socket (SCM_RIGHTS), then for each message fills a free
slot in place (standard input is read straight into the slot) and sends only the slot's
index and length; the reader gives the index back when it is done with the slot. Sends
each MESSAGE followed by a newline; with no MESSAGE, standard input until end of file.
Start the reader in another terminal:
    build/06-zero-copy/reader

Options:
  --name PATH|@NAME  the socket: a file path (default /tmp/shm-tutorial-06.sock), or
                     @NAME for the abstract namespace (no file at all)
  --slots N          slots in the pool, 1 to 4096 (default 8)
  --slot-size BYTES  bytes per slot, a multiple of 4096 up to 1 GiB (default 65536);
                     the whole pool is at most 1 GiB
  --timeout SECONDS  how long to wait for a reader to connect, and for its confirmation
                     at the end (default 60)
  --force            replace a socket file left by a crashed run
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader returned every slot and confirmed the stream; 1 a runtime failure
(no reader, the reader went away, the reader returned a slot it did not hold); 2 a usage error.
)";

/// The pool's shape, as the command line asked.
struct PoolShape {
    std::uint32_t slot_count = pool::kDefaultSlots;
    std::uint64_t slot_size = pool::kDefaultSlotSize;
    std::uint64_t bytes() const { return pool::kSlotsOffset + slot_count * slot_size; }
};

/// The pool: one memfd cut into slots. One memfd rather than one per slot: one descriptor to
/// pass, check and map, once; one mapping, so a slot is an offset (an index the reader can check
/// against one bound) rather than a descriptor per buffer that the reader would have to receive,
/// check and map on its own; and the seals cover every slot at once. One memfd per slot pays off
/// only when buffers differ in size or in who may see them.
UniqueFd create_pool(const PoolShape& shape, Mapping& mapping, const Narrator& say) {
    UniqueFd fd(::memfd_create("shm-tutorial-06-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL));
    if (!fd && errno == EINVAL) // a kernel before 6.3 does not know MFD_NOEXEC_SEAL
        fd.reset(::memfd_create("shm-tutorial-06-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd)
        throw_errno("memfd_create(\"shm-tutorial-06-pool\")");
    const std::uint64_t size = shape.bytes();
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate(" + std::to_string(size) + ")");
    // Allocate every page now: a full tmpfs fails here (ENOSPC), not later as SIGBUS in a slot.
    if (int error = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(size)); error != 0)
        throw_error(error, "posix_fallocate(" + std::to_string(size) + ")");
    void* base = ::mmap(nullptr, mappable_size(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap");
    mapping = Mapping(base, static_cast<std::size_t>(size));
    // The reader will use the slots in place: the pool must keep its size (chapter 03).
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == -1)
        throw_errno("fcntl(F_ADD_SEALS)");

    SharedHeader* header = construct_header(base);
    pool::PoolGeometry& geometry = pool::geometry_of(*header);
    geometry.slot_count.store(shape.slot_count, std::memory_order_relaxed);
    geometry.slot_size.store(shape.slot_size, std::memory_order_relaxed);
    publish_header(*header, shape.slot_count * shape.slot_size, static_cast<std::uint32_t>(::getpid()), 0);
    say.say("memfd_create(\"shm-tutorial-06-pool\") = %d, %" PRIu64 " bytes: %" PRIu32 " slots of %" PRIu64
            " bytes from offset %" PRIu64 ", mapped at %p, sealed %s",
            fd.get(), size, shape.slot_count, shape.slot_size, pool::kSlotsOffset, base,
            seals_text(::fcntl(fd.get(), F_GET_SEALS)).c_str());
    return fd;
}

/// The writer's record of who owns each slot. The writer may write a slot only while it is free;
/// a slot is on loan from FILLED until the reader's RETURNED. Anything the reader says that does
/// not fit this record is refused.
class SlotLedger {
public:
    explicit SlotLedger(std::uint32_t slot_count) : state_(slot_count, State::kNeverLoaned) {
        for (std::uint32_t slot = 0; slot < slot_count; ++slot)
            free_.push_back(slot);
    }
    /// A free slot for the next message (the oldest returned first), or none: every slot is on loan.
    std::optional<std::uint32_t> take_free() {
        if (free_.empty())
            return std::nullopt;
        std::uint32_t slot = free_.front();
        free_.pop_front();
        return slot;
    }
    /// A slot taken with take_free() that carried nothing (end of input) goes back unused.
    void put_back(std::uint32_t slot) { free_.push_front(slot); }
    /// The slot's index went to the reader: it is the reader's now.
    void loan(std::uint32_t slot) {
        state_[slot] = State::kLoaned;
        ++on_loan_;
    }
    /// The reader gave `slot` back. Refused (Failure) unless it is a slot of this pool that is on
    /// loan to the reader right now.
    void accept_return(std::uint32_t slot) {
        if (slot >= state_.size())
            throw Failure("refused: the reader returned slot " + std::to_string(slot) + ", but the pool has only " +
                          std::to_string(state_.size()) + " slots (0 to " + std::to_string(state_.size() - 1) + ")");
        if (state_[slot] == State::kReturned)
            throw Failure("refused: the reader returned slot " + std::to_string(slot) +
                          " twice (it is free already, not on loan)");
        if (state_[slot] == State::kNeverLoaned)
            throw Failure("refused: the reader returned slot " + std::to_string(slot) +
                          ", which was never loaned to it");
        state_[slot] = State::kReturned;
        --on_loan_;
        free_.push_back(slot);
    }
    /// How many slots the reader holds now.
    std::uint32_t on_loan() const { return on_loan_; }

private:
    enum class State : std::uint8_t { kNeverLoaned, kLoaned, kReturned };
    std::vector<State> state_;
    std::deque<std::uint32_t> free_;
    std::uint32_t on_loan_ = 0;
};

/// One writer serves one reader: any other client that asks meanwhile gets BUSY and is closed
/// (clients that say nothing wait in `callers`, and are never taken for a reader).
void refuse_asking(int listener, Callers& callers, const Narrator& say) {
    callers.accept_waiting(listener);
    while (UniqueFd other = callers.take_asking()) {
        pool::Message busy{pool::kMagic, pool::kBusy, 0, 0};
        ssize_t sent = ::send(other.get(), &busy, sizeof busy, MSG_NOSIGNAL | MSG_DONTWAIT);
        say.say("send(fd=%d, BUSY) = %zd: one writer serves one reader; closed it", other.get(), sent);
    }
}

/// The connection to the reader, the listener (to turn others away) and the ledger.
struct Session {
    int connection;
    int listener;
    Callers& callers;
    SlotLedger ledger;
    const Narrator& say;
    bool said_returned = false;

    /// Receives one reply from the reader (waiting at most until `deadline`, or for as long as the
    /// reader lives when it is null) and applies it. Returns true for DONE.
    bool take_reply(const Deadline* deadline) {
        for (;;) { // wait in one-second slices, answering other clients meanwhile
            throw_if_stopped();
            std::vector<pollfd> entries{{connection, POLLIN, 0}, {listener, POLLIN, 0}};
            callers.add_to(entries);
            int ready = ::poll(entries.data(), entries.size(),
                               static_cast<int>(std::chrono::milliseconds(kLivenessInterval).count()));
            if (ready == -1 && errno != EINTR)
                throw_errno("poll");
            refuse_asking(listener, callers, say);
            if (ready > 0 && entries[0].revents != 0)
                break;
            if (deadline != nullptr && deadline->expired())
                throw Failure("the reader did not confirm within " + seconds_text(deadline->seconds()));
        }
        return apply_reply(deadline);
    }

    /// Receives one reply that has arrived and applies it. Returns true for DONE.
    bool apply_reply(const Deadline* deadline) {
        pool::Message reply{};
        receive_with_fds(connection, &reply, sizeof reply, 0, "the reader's reply", deadline);
        if (reply.magic != pool::kMagic)
            throw Failure("refused: the reader's reply does not start with SHM6 (garbage on the socket)");
        if (reply.type == pool::kDone)
            return true;
        if (reply.type != pool::kReturned)
            throw Failure(std::string("refused: the reader sent ") + pool::type_name(reply.type) + ", expected RETURNED");
        ledger.accept_return(reply.slot);
        if (!said_returned)
            say.say("recv(RETURNED slot=%" PRIu32 "): slot %" PRIu32 " is the writer's again (further returns quietly)",
                    reply.slot, reply.slot);
        said_returned = true;
        return false;
    }

    /// Applies every reply that has already arrived, without waiting.
    void take_waiting_replies() {
        pollfd entry{connection, POLLIN, 0};
        while (::poll(&entry, 1, 0) == 1) {
            if (apply_reply(nullptr))
                throw Failure("refused: the reader sent DONE before the end of the stream");
        }
    }
};

/// Sends HELLO with the pool's descriptor attached, then closes the writer's own descriptor: the
/// writer keeps its mapping, the reader has its own descriptor (a new number, the same pages).
void pass_pool(int connection, UniqueFd& memory, const Narrator& say) {
    pool::Message hello{pool::kMagic, pool::kHello, 0, 0};
    send_with_fds(connection, &hello, sizeof hello, {memory.get()}, "sendmsg(HELLO)");
    say.say("sendmsg(fd=%d, HELLO + SCM_RIGHTS [%d]) = 16: the pool is passed, once", connection, memory.get());
    memory.reset();
}

int run(const Options& options, const PoolShape& shape) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    SocketFile file(say);

    Mapping mapping;
    UniqueFd memory = create_pool(shape, mapping, say);
    UniqueFd listener = listen_unix(options.name, options.force, 8, file, say);
    say.say("socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC) = %d, bind(\"%s\")%s, listen(%d, 8) = 0",
            listener.get(), options.name.c_str(), is_abstract(options.name) ? " (abstract: no file)" : " (file mode 0600)",
            listener.get());
    // Only a client that asks is a reader: one that connects and says nothing (another writer
    // checking whether this one is alive) is never served.
    Callers callers(say, sizeof(pool::Message), [](const std::vector<char>& request) {
        pool::Message ask;
        std::memcpy(&ask, request.data(), sizeof ask);
        return ask.magic == pool::kMagic && ask.type == pool::kAsk ? std::string() : std::string("did not send ASK");
    });
    const bool default_name = options.name == pool::kDefaultName;
    say.say("waiting up to %s for a reader: start %s%s%s",
            seconds_text(options.timeout_seconds).c_str(), sibling_program("reader").c_str(), default_name ? "" : " --name ",
            default_name ? "" : options.name.c_str());
    UniqueFd connection = wait_for_asking_client(listener.get(), callers, Deadline(options.timeout_seconds));
    if (!connection)
        throw Failure("no reader asked for the pool within " + seconds_text(options.timeout_seconds) +
                      ": start the reader while the writer waits, or give the writer a longer --timeout");
    try {
        pass_pool(connection.get(), memory, say);
    } catch (const PeerClosed& e) {
        throw Failure(reader_hung_up("before the pool reached it"));
    }

    Session session{connection.get(), listener.get(), callers, SlotLedger(shape.slot_count), say};
    auto* slots = static_cast<std::uint8_t*>(mapping.get()) + pool::kSlotsOffset;
    Input input(options.operands);
    std::uint64_t messages = 0, total = 0, backpressure_waits = 0;
    try {
        for (;;) {
            // Loan: take a free slot; when the reader holds them all, wait for one to come back.
            std::optional<std::uint32_t> slot;
            while (!(slot = session.ledger.take_free())) {
                if (backpressure_waits++ == 0)
                    say.say("all %" PRIu32 " slots are on loan to the reader: waiting for one to come back "
                            "(backpressure: never overwrite a loaned slot)",
                            shape.slot_count);
                // Wait for one reply, then take every other that has arrived: returns come in
                // batches while the reader keeps up, so the writer reads them only when it must.
                if (session.take_reply(nullptr))
                    throw Failure("refused: the reader sent DONE before the end of the stream");
                session.take_waiting_replies();
            }
            // Fill in place: standard input is read straight into the slot, no buffer between.
            std::uint8_t* slot_bytes = slots + *slot * shape.slot_size;
            std::size_t length = input.next(slot_bytes, static_cast<std::size_t>(shape.slot_size), [&] {
                refuse_asking(session.listener, callers, say);
                pollfd entry{session.connection, POLLIN | POLLRDHUP, 0};
                if (::poll(&entry, 1, 0) == 1 && (entry.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0)
                    throw Failure(reader_hung_up("while the writer waited for input") + "; cleaned up");
                return true;
            });
            if (length == 0) {
                session.ledger.put_back(*slot);
                break;
            }
            // Hand over: only the index and the length travel; from now on the slot is the reader's.
            pool::Message filled{pool::kMagic, pool::kFilled, *slot, static_cast<std::uint32_t>(length)};
            send_with_fds(session.connection, &filled, sizeof filled, {}, "send(FILLED)");
            session.ledger.loan(*slot);
            if (messages++ == 0)
                say.say("read(stdin) straight into slot %" PRIu32 " = %zu bytes; send(FILLED slot=%" PRIu32
                        " length=%zu): 16 bytes on the socket, the data stays put (further messages quietly)",
                        *slot, length, *slot, length);
            total += length;
        }
        pool::Message end{pool::kMagic, pool::kEnd, 0, 0};
        send_with_fds(session.connection, &end, sizeof end, {}, "send(END)");
        say.say("%" PRIu64 " bytes in %" PRIu64 " message(s), %" PRIu64
                " wait(s) for a free slot; send(END); waiting up to %s for every slot and DONE",
                total, messages, backpressure_waits, seconds_text(options.timeout_seconds).c_str());
        Deadline done_deadline(options.timeout_seconds);
        while (!session.take_reply(&done_deadline)) {
        }
    } catch (const PeerClosed& e) {
        throw Failure(reader_hung_up("before the end of the stream"));
    }
    if (session.ledger.on_loan() != 0)
        throw Failure("refused: the reader sent DONE while still holding " + std::to_string(session.ledger.on_loan()) +
                      " slot(s)");
    say.say("recv(DONE): the reader returned every slot and confirmed the stream");

    if (!file.path.empty()) { // the socket file goes now that its work is done
        if (::unlink(file.path.c_str()) == -1)
            throw_errno("unlink(\"" + file.path + "\")");
        say.say("unlink(\"%s\") = 0: the socket file is gone", file.path.c_str());
        file.path.clear();
    }
    return kExitSuccess;
}

/// Parses a whole number between `low` and `high` for `option`; throws UsageError.
std::uint64_t parse_count(const std::string& option, const std::string& text, std::uint64_t low, std::uint64_t high) {
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(text.c_str(), &end, 10);
    if (text.empty() || text[0] == '-' || end != text.c_str() + text.size() || errno == ERANGE || value < low ||
        value > high)
        throw UsageError(option + " wants a whole number from " + std::to_string(low) + " to " + std::to_string(high) +
                         ", not '" + text + "'");
    return value;
}

} // namespace

/// Parses the command line and runs the writer; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("writer", [&] {
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = pool::kDefaultName;
        spec.operands = true;
        bool force = false;
        PoolShape shape;
        spec.extra.push_back({"--force", false, [&](const std::string&) { force = true; }});
        spec.extra.push_back({"--slots", true, [&](const std::string& value) {
                                  shape.slot_count =
                                      static_cast<std::uint32_t>(parse_count("--slots", value, 1, pool::kMaxSlots));
                              }});
        spec.extra.push_back({"--slot-size", true, [&](const std::string& value) {
                                  shape.slot_size = parse_count("--slot-size", value, pool::kPageSize, pool::kMaxSlotSize);
                                  if (shape.slot_size % pool::kPageSize != 0)
                                      throw UsageError("--slot-size wants a multiple of 4096, not " + value);
                              }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        if (shape.slot_count * shape.slot_size > pool::kMaxSlotSize)
            throw UsageError("--slots x --slot-size is " + std::to_string(shape.slot_count * shape.slot_size) +
                             " bytes; the pool is at most 1 GiB");
        sockaddr_un check{};
        unix_address(options.name, check); // a usage error if it does not fit
        options.force = force;
        return run(options, shape);
    });
}
