// EXERCISE 02-posix-mmap/3: survive an object shrunk under the reader: a SIGBUS handler for the mapping (robustness)
// This is 02-posix-mmap/reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-02 (it builds this file and runs the chapter's tests).
// The solution is 02-posix-mmap/reader.cpp: read it only once your version passes.

/// @file 02-posix-mmap/reader.cpp
/// @brief Chapter 02 reader: opens the writer's POSIX shared-memory object by name, checks its
///        real size before mapping it, claims it, and copies every block to standard output.
///
/// Usage: `reader [--name /NAME | --file PATH] [--timeout SECONDS] [--quiet]`
///
/// Run it with its companion, `writer`, in another terminal (either may start first):
///
///     terminal 1: build/02-posix-mmap/writer "hello, shared memory"
///     terminal 2: build/02-posix-mmap/reader
///
/// The calls it teaches, in order: `shm_open(3)` without `O_CREAT` finds the object (waiting,
/// bounded, for it to appear); `fstat(2)` gives its real size *before* anything is mapped (a
/// new object has size 0 until the writer's `ftruncate`); `mmap(2)` maps exactly that size;
/// `sigaction(2)` with `SA_SIGINFO` installs a SIGBUS handler that recovers from a fault inside
/// that mapping (the object shrunk under it: chapter 02 has no seals); the header is copied once
/// and validated against the size; `fcntl(2)` `F_OFD_GETLK` asks whether the writer holds its
/// lock byte, and `F_OFD_SETLK` takes the reader's own; a compare-and-swap on a word in the
/// mapping claims the object; `sem_clockwait(3)` waits for each block in one-second slices,
/// between which the writer's lock byte tells whether it still lives; `sem_post(3)` frees the
/// data area; and if the writer died, `shm_unlink(3)` removes the name it left.
#include <atomic>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "protocol.hpp"
#include "stream.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: reader [OPTIONS]

Chapter 02, POSIX shared memory. Opens the object NAME that the writer created in
/dev/shm, claims it (one reader per writer) and writes every byte the writer sends to
standard output. Waits for a writer that has not started yet, up to the timeout.

Options:
  --name /NAME       the object's name (default /shm-tutorial-02)
  --file PATH        use the writer's regular file at PATH instead (writer --file)
  --timeout SECONDS  how long to wait for the object to appear and become ready
                     (default 60); once the stream runs, the reader waits as long as
                     the writer lives
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the whole stream arrived; 1 a runtime failure (no writer, a refused
header, another reader, the writer died, the object shrunk under the reader, a stream
kept with --keep and already read); 2 a usage error.
)";

// ---- Surviving a shrunk object (libwayland's wl_shm does the same) -------------------------
//
// Anyone holding a descriptor of the object (the writer, or anyone it gave one to) can
// ftruncate it to a smaller size while the reader has it mapped. The mapping stays, its pages
// beyond the new end do not: the next access there raises SIGBUS, whose default action kills the
// reader. The handler below recognises a fault inside the reader's own mapping, maps private
// zero pages over the whole mapping (MAP_FIXED replaces it in place, so the faulting instruction,
// run again, reads zeros and goes on) and records it; the reader checks the record after each
// stretch of accesses, before it believes anything it read, and exits 1. Any other SIGBUS
// (a fault elsewhere, or one sent with kill) gets the default action: the process dies of it.

std::atomic<std::uintptr_t> g_mapping_start{0}; ///< the mapping the handler may repair, or 0
std::atomic<std::size_t> g_mapping_length{0};   ///< its length
volatile std::sig_atomic_t g_object_shrunk = 0; ///< 1 once the handler replaced the mapping
static_assert(std::atomic<std::uintptr_t>::is_always_lock_free && std::atomic<std::size_t>::is_always_lock_free,
              "the signal handler reads them");

extern "C" void on_sigbus(int signal_number, siginfo_t* info, void*) {
    auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
    std::uintptr_t start = g_mapping_start.load(std::memory_order_relaxed);
    std::size_t length = g_mapping_length.load(std::memory_order_relaxed);
    // si_code > 0: the kernel raised it for a fault at si_addr (BUS_ADRERR); kill() gives <= 0,
    // and then si_addr is not an address at all.
    if (info->si_code > 0 && start != 0 && address - start < length) {
        // mmap is not on POSIX's list of async-signal-safe functions, but on Linux it is one
        // system call that touches no user-space state; libwayland's handler relies on it too.
        void* zeros = ::mmap(reinterpret_cast<void*>(start), length, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (zeros != MAP_FAILED) {
            g_object_shrunk = 1;
            return; // the faulting access runs again, on a zero page
        }
    }
    // Not ours: the default action, as if no handler had been installed. SIGBUS is blocked while
    // the handler runs, so the raised signal is delivered, and kills, when the handler returns.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    sigemptyset(&default_action.sa_mask);
    ::sigaction(signal_number, &default_action, nullptr);
    ::raise(signal_number);
}

// One shrink the SIGBUS handler cannot see: glibc's sem_clockwait looks at the semaphore, then
// sleeps in futex(2) on its address. If the object shrinks between the two, no access faults in
// the reader: the kernel itself cannot find the page and futex fails with EFAULT, which glibc
// takes for a broken invariant: it prints "The futex facility returned an unexpected error code."
// and calls abort(). So a SIGABRT while the object is smaller than the mapping is that same
// shrink, seen through glibc. abort() must not return, so the handler ends the process itself:
// it writes the reader's one error line and _exit(1)s (both async-signal-safe). Nothing is lost:
// what the reader holds (its descriptor, its lock byte, its mapping) the kernel releases at exit,
// and an object someone shrank under a living writer is that writer's to remove.

std::atomic<int> g_object_fd{-1}; ///< the object's descriptor, for fstat in on_sigabrt, or -1
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler reads it");

extern "C" void on_sigabrt(int signal_number) {
    int fd = g_object_fd.load(std::memory_order_relaxed);
    struct stat status {};
    if (fd >= 0 && ::fstat(fd, &status) == 0 &&
        static_cast<std::uint64_t>(status.st_size) < g_mapping_length.load(std::memory_order_relaxed)) {
        static const char line[] =
            "reader: the object was shrunk under the reader (glibc's futex call on a semaphore in it failed "
            "with EFAULT): someone holding a descriptor truncated it; chapter 03's seals make that impossible\n";
        [[maybe_unused]] ssize_t written = ::write(STDERR_FILENO, line, sizeof line - 1);
        ::_exit(kExitFailure);
    }
    struct sigaction default_action {}; // any other abort: the default action, as before
    default_action.sa_handler = SIG_DFL;
    sigemptyset(&default_action.sa_mask);
    ::sigaction(signal_number, &default_action, nullptr);
    ::raise(signal_number);
}

/// Installs on_sigbus() for the mapping at `base`, `length` bytes long, and on_sigabrt() for the
/// object behind descriptor `fd`.
void guard_mapping(void* base, std::size_t length, int fd, const Narrator& say) {
    g_mapping_start.store(reinterpret_cast<std::uintptr_t>(base), std::memory_order_relaxed);
    g_mapping_length.store(length, std::memory_order_relaxed);
    g_object_fd.store(fd, std::memory_order_relaxed);
    const std::string call = "sigaction(SIGBUS, {on_sigbus, SA_SIGINFO})";
    // TODO(exercise 3): install on_sigbus (above) as the SIGBUS handler with sigaction(2):
    // sa_sigaction = on_sigbus, sa_flags = SA_SIGINFO (the handler gets si_addr, the faulting
    // address, to tell a fault in this mapping from any other), an empty sa_mask. On failure
    // throw_errno(call). Without it, an object shrunk under the reader kills it with SIGBUS at
    // its next access (man 7 signal, man 2 mmap: SIGBUS; man 2 sigaction).
    // Then delete the placeholder line below: until then the program stops here, at once.
    throw Failure("TODO(exercise 3): sigaction(SIGBUS) with on_sigbus"); // placeholder
    say.say("%s = 0: a fault inside the mapping is recovered, not fatal", call.c_str());
    const std::string abort_call = "sigaction(SIGABRT, {on_sigabrt})";
    struct sigaction abort_action {};
    abort_action.sa_handler = on_sigabrt;
    sigemptyset(&abort_action.sa_mask);
    if (::sigaction(SIGABRT, &abort_action, nullptr) == -1)
        throw_errno(abort_call);
    say.say("%s = 0: glibc's abort on a futex call into a shrunk object is recognised too", abort_call.c_str());
}

/// Throws if the handler found the object shrunk: whatever was read since is zeros, not data.
void throw_if_shrunk() {
    if (g_object_shrunk != 0)
        throw Failure("the object was shrunk under the reader (SIGBUS inside its mapping, recovered): someone "
                      "holding a descriptor truncated it; chapter 03's seals make that impossible");
}

// ---- The story --------------------------------------------------------------------------------

/// The object as this reader opened it: the descriptor (kept open: it carries the reader's lock),
/// its identity (to remove the right one later) and its real size.
struct OpenedObject {
    UniqueFd fd;
    dev_t device = 0;
    ino_t inode = 0;
    std::uint64_t size = 0;
};

/// Opens the object, waiting (bounded) for it to appear and to be sized. Size 0 means the writer
/// has created it but not yet called ftruncate: not ready, keep waiting.
OpenedObject open_object(const posix::ObjectLocation& target, const Deadline& deadline, const Narrator& say) {
    bool said_waiting = false;
    auto wait_a_little = [&] {
        if (!said_waiting)
            say.say("waiting up to %s for a writer: start %s",
                    seconds_text(deadline.seconds()).c_str(), sibling_program("writer").c_str());
        said_waiting = true;
        pause_briefly();
        throw_if_stopped();
    };
    const std::string call = std::string(target.open_call()) + "(\"" + target.path + "\", O_RDWR)";
    for (;;) {
        int fd = target.is_file ? ::open(target.path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW)
                                : ::shm_open(target.path.c_str(), O_RDWR, 0);
        if (fd != -1) {
            OpenedObject object;
            object.fd.reset(fd);
            say.say("%s = %d", call.c_str(), fd);
            const std::string stat_call = "fstat(fd=" + std::to_string(fd) + ")";
            for (;;) {
                struct stat info {};
                if (::fstat(fd, &info) == -1)
                    throw_errno(stat_call);
                if (!S_ISREG(info.st_mode))
                    throw Failure(target.path + " is not a regular file: refusing it");
                if (info.st_uid != ::geteuid())
                    throw Failure("refusing " + target.path + ": " + target.another_users(info.st_uid));
                if (static_cast<std::uint64_t>(info.st_size) >= kHeaderSize) {
                    object.device = info.st_dev;
                    object.inode = info.st_ino;
                    object.size = static_cast<std::uint64_t>(info.st_size);
                    say.say("%s = 0: size=%llu mode=0%o", stat_call.c_str(),
                            static_cast<unsigned long long>(object.size), info.st_mode & 0777u);
                    return object;
                }
                if (deadline.expired())
                    throw Failure(target.path + " exists but was not sized within " + seconds_text(deadline.seconds()) +
                                  " (size " + std::to_string(info.st_size) +
                                  "): a writer that died while creating it, or not a writer's object? if no "
                                  "writer is running, remove it with '" + target.removal_command() + "'");
                wait_a_little();
            }
        }
        if (errno == ELOOP)
            throw_errno(call, "a symbolic link stands at the name: never followed; refusing it");
        if (errno == EACCES) { // mode 0600: another user's object
            const uid_t owner = target.owner();
            throw_error(EACCES, call, owner != static_cast<uid_t>(-1) && owner != ::geteuid() ? target.another_users(owner) : "");
        }
        if (errno != ENOENT)
            throw_errno(call);
        if (deadline.expired())
            throw_errno(call, "nothing appeared within " + seconds_text(deadline.seconds()) +
                                  ": is the writer running? start it first");
        wait_a_little();
    }
}

/// The writer died: it cannot remove its name any more, so the reader does, if the name still
/// names the object this reader opened (same device and inode: a new writer may have created a
/// new object under the name since).
[[noreturn]] void writer_died(const posix::ObjectLocation& target, const OpenedObject& object, const char* when,
                              const Narrator& say) {
    say.say("the writer is gone: its lock on byte %lld of the object is released",
            static_cast<long long>(posix::kWriterLockByte));
    int fd = target.is_file ? ::open(target.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                            : ::shm_open(target.path.c_str(), O_RDONLY, 0);
    if (fd != -1) {
        struct stat info {};
        bool same = ::fstat(fd, &info) == 0 && info.st_dev == object.device && info.st_ino == object.inode;
        ::close(fd);
        const std::string call = std::string(target.unlink_call()) + "(\"" + target.path + "\")";
        int removed = same ? (target.is_file ? ::unlink(target.path.c_str()) : ::shm_unlink(target.path.c_str())) : -1;
        if (removed == 0)
            say.say("%s = 0: removed the name it left", call.c_str());
    }
    throw Failure(std::string("the writer died ") + when);
}

/// Maps exactly the size fstat reported, guards the mapping against SIGBUS, waits (bounded) for
/// the magic, then validates one local copy of the header against that size: nothing past the
/// real end is ever trusted.
Mapping map_and_validate(const OpenedObject& object, const Deadline& deadline, HeaderSnapshot& validated,
                         const Narrator& say) {
    // PROT_WRITE: the reader posts semaphores and claims the object in the shared header.
    const std::size_t size = mappable_size(object.size);
    const std::string call = "mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED, fd=" +
                             std::to_string(object.fd.get()) + ", 0)";
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, object.fd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno(call);
    Mapping mapping(base, size);
    say.say("%s = %p", call.c_str(), base);
    guard_mapping(base, size, object.fd.get(), say);

    const auto& header = *static_cast<const SharedHeader*>(base);
    for (;;) { // the writer stores the magic last
        bool ready = header_ready(header);
        throw_if_shrunk();
        if (ready)
            break;
        if (deadline.expired())
            throw Failure("the object exists but its header was not published within " +
                          seconds_text(deadline.seconds()) + ": a writer that died while creating it?");
        pause_briefly();
        throw_if_stopped();
    }
    validated = take_snapshot(header);
    throw_if_shrunk();
    validate_header(validated, object.size);
    say.say("header valid: magic=0x%08x version=%u data_capacity=%llu writer_pid=%u (as the writer says)",
            validated.magic, validated.version, static_cast<unsigned long long>(validated.data_capacity),
            validated.writer_pid);
    return mapping;
}

/// Takes the reader's lock byte, then claims the object: one compare-and-swap from 0 to our pid
/// on a word in the mapping; whoever swaps first is the reader, anyone later sees the claim. The
/// lock comes first, so that a writer woken by the claim finds it held.
void lock_and_claim(posix::HandOff& hand_off, int fd, const Narrator& say) {
    const std::string lock_call = "fcntl(fd=" + std::to_string(fd) + ", F_OFD_SETLK, F_WRLCK byte " +
                                  std::to_string(posix::kReaderLockByte) + ")";
    struct flock lock = posix::lock_on(posix::kReaderLockByte);
    if (::fcntl(fd, F_OFD_SETLK, &lock) == -1) {
        if (errno == EAGAIN || errno == EACCES)
            throw Failure("another reader has already claimed this object (it holds the reader's lock): one writer "
                          "serves one reader");
        throw_errno(lock_call);
    }
    say.say("%s = 0: held while the reader lives", lock_call.c_str());

    std::uint32_t expected = 0;
    auto self = static_cast<std::uint32_t>(::getpid());
    bool claimed = hand_off.reader_pid.compare_exchange_strong(expected, self, std::memory_order_acq_rel);
    throw_if_shrunk();
    if (!claimed)
        throw Failure("another reader (pid " + std::to_string(expected) +
                      ", as it says) has already claimed this object: one writer serves one reader");
    const char* const post_call = "sem_post(claimed)";
    int posted = ::sem_post(&hand_off.claimed);
    throw_if_shrunk();
    if (posted == -1)
        throw_errno(post_call);
    say.say("reader_pid: compare-and-swap 0 -> %u, %s = 0: claimed", self, post_call);
}

/// The hand-off: wait for "block ready", copy the block header once, validate the copy, copy
/// the bytes out of the mapping (a piece at a time, each checked for a shrink before it is
/// written out), post "block free". Posting "block free" after the empty end-of-stream block is
/// the confirmation the writer waits for.
void copy_stream(SharedHeader& header, std::uint64_t capacity, const posix::PeerLock& writer,
                 const posix::ObjectLocation& target, const OpenedObject& object, const Narrator& say) {
    posix::HandOff& hand_off = posix::hand_off_in(header);
    const std::uint8_t* data = data_area(&header);
    std::vector<std::uint8_t> piece(static_cast<std::size_t>(std::min<std::uint64_t>(capacity, 64 * 1024)));
    const char* const post_call = "sem_post(block_free)";
    std::uint64_t total = 0;
    for (std::uint64_t expected = 1;; ++expected) {
        if (posix::wait_post(&hand_off.block_ready, &writer, nullptr, "block_ready", throw_if_shrunk) !=
            posix::Waited::kYes)
            writer_died(target, object, "before the end of the stream", say);
        HeaderSnapshot block = take_snapshot(header);
        throw_if_shrunk();
        validate_block(block, capacity, expected); // against the validated capacity, not the header's
        for (std::uint64_t done = 0; done < block.block_length;) {
            std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), block.block_length - done));
            std::memcpy(piece.data(), data + done, length);
            throw_if_shrunk();
            write_all(STDOUT_FILENO, piece.data(), length);
            done += length;
        }
        total += block.block_length;
        int posted = ::sem_post(&hand_off.block_free);
        throw_if_shrunk();
        if (posted == -1)
            throw_errno(post_call);
        if (expected == 1)
            say.say("sem_clockwait(block_ready) = 0: block 1, %llu bytes (further blocks quietly)",
                    static_cast<unsigned long long>(block.block_length));
        if (block.end_of_stream != 0) {
            say.say("end of stream: %llu bytes in %llu block(s); confirmed with %s = 0",
                    static_cast<unsigned long long>(total), static_cast<unsigned long long>(expected - 1), post_call);
            return;
        }
    }
}

int run(const Options& options, const posix::ObjectLocation& target) {
    Narrator say("reader", options.quiet);
    install_stop_handlers();
    Deadline deadline(options.timeout_seconds);

    // The descriptor stays open for the whole run: it carries the reader's lock, and through it
    // the reader asks about the writer's.
    OpenedObject object = open_object(target, deadline, say);
    HeaderSnapshot validated{};
    Mapping mapping = map_and_validate(object, deadline, validated, say);
    auto& header = *static_cast<SharedHeader*>(mapping.get());

    if ((validated.flags & posix::kKeptFlag) != 0)
        throw Failure(target.path + " holds a stream that is over: its writer finished and kept the object "
                      "(--keep); no writer is running there; remove it with '" + target.removal_command() +
                      "', then start a writer");
    // Is the writer alive? Not its pid (a number it wrote, which a dead writer's successor can
    // hold, and which means nothing in another pid namespace): its lock byte, which the kernel
    // releases when the writer's descriptor closes, at its death at the latest.
    const posix::PeerLock writer{object.fd.get(), posix::kWriterLockByte};
    bool writer_lives = writer.alive();
    say.say("fcntl(fd=%d, F_OFD_GETLK, byte %lld): %s", object.fd.get(),
            static_cast<long long>(posix::kWriterLockByte),
            writer_lives ? "locked: the writer lives" : "unlocked: no writer holds the object");
    if (!writer_lives)
        writer_died(target, object, "before the stream started", say);

    lock_and_claim(posix::hand_off_in(header), object.fd.get(), say);
    copy_stream(header, validated.data_capacity, writer, target, object, say);

    const std::size_t length = mapping.size();
    const std::string unmap_call = "munmap(" + posix::address_text(mapping.get()) + ", " + std::to_string(length) + ")";
    g_mapping_start.store(0, std::memory_order_relaxed); // nothing for the handlers to repair any more
    g_object_fd.store(-1, std::memory_order_relaxed);
    // With the name already unlinked, the last munmap (and close) frees the memory.
    if (::munmap(mapping.release(), length) == -1)
        throw_errno(unmap_call);
    say.say("%s = 0", unmap_call.c_str());
    const std::string close_call = "close(fd=" + std::to_string(object.fd.get()) + ")";
    if (::close(object.fd.release()) == -1) // the descriptor is gone even when close fails
        throw_errno(close_call);
    say.say("%s = 0: the reader's lock is released", close_call.c_str());
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the reader; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("reader", [&] {
        posix::ObjectLocation target;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = posix::kDefaultName;
        spec.extra.push_back(posix::file_option(target));
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        posix::resolve_target(target, options);
        return run(options, target);
    });
}
