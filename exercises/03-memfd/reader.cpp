// EXERCISE 03-memfd/3: refuse a descriptor that is not a sealed memfd: F_GET_SEALS first (robustness)
// This is 03-memfd/reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-03 (it builds this file and runs the chapter's tests).
// The solution is 03-memfd/reader.cpp: read it only once your version passes.

/// @file 03-memfd/reader.cpp
/// @brief Chapter 03 reader: gets the writer's memfd (inherited, or through /proc/PID/fd/N),
///        checks that it is what it must be before mapping it, and copies the stream to stdout.
///
/// Usage: `reader --fd N [--pid PID] [--snapshot] [--timeout SECONDS] [--quiet]`
///
/// Started by `writer --spawn`, it inherits the descriptor N. Started by hand in a second
/// terminal with the command the writer prints, it opens `/proc/PID/fd/N`, which gives it a new
/// open file description of the same memory (it needs ptrace read access to the writer).
///
/// The calls it teaches, in order: `pidfd_open(2)` on the writer before taking its descriptor;
/// the receiver's checks, in the order that makes each answer hold: `fcntl(2)` `F_GET_SEALS`
/// (shrink and grow, plus write in snapshot mode), then `fstat(2)` (a regular file, at least a
/// header long: the seals have frozen that size), then `readlink(2)` of `/proc/self/fd/N` (a
/// memfd's link starts with `/memfd:`); `mmap(2)`; the claim, an `F_OFD_SETLK` lock the kernel
/// releases when the reader dies; `futex(2)` `FUTEX_WAIT`/`FUTEX_WAKE` on words in the mapping.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

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
#include "seals.hpp"
#include "stream.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: reader --fd N [--pid PID] [OPTIONS]

Chapter 03, memfd and seals. Reads the stream from the writer's memfd and writes every
byte to standard output. A memfd has no name, so the reader is given the descriptor:
  --fd N             the descriptor number: inherited (the writer started this reader
                     with --spawn), or, with --pid, the writer's own number
  --pid PID          open the writer's descriptor N through /proc/PID/fd/N (the command
                     the writer prints when started without --spawn)
  --snapshot         expect a snapshot: the memory must be sealed against writes too
  --timeout SECONDS  how long to wait for the header to be published (default 60);
                     once the stream runs, the reader waits as long as the writer lives
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the whole stream arrived; 1 a runtime failure (a descriptor that is not a
sealed memfd, a refused header, the writer died); 2 a usage error.
)";

/// Where the descriptor comes from and what it must carry: the reader's own options.
struct DescriptorSource {
    int fd = -1;          ///< --fd: the descriptor number, ours (inherited) or the writer's
    pid_t writer_pid = 0; ///< --pid: open /proc/PID/fd/N; 0: the descriptor was inherited
    bool snapshot = false; ///< --snapshot: the memory must be sealed against writes too
};

/// What the reader holds once it has the descriptor: the memfd, and a handle on the process it
/// came from, opened before the descriptor (see get_descriptor()).
struct WriterMemory {
    UniqueFd memfd;
    UniqueFd writer;      ///< pidfd (or its /proc fallback) of the writer
    pid_t writer_pid = 0; ///< the writer's pid, as the kernel or the user named it
};

int parse_number(const std::string& option, const std::string& text, long max) {
    char* end = nullptr;
    errno = 0;
    long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno != 0 || value < 0 || value > max)
        throw UsageError(option + " wants a number from 0 to " + std::to_string(max) + ", not '" + text + "'");
    return static_cast<int>(value);
}

[[noreturn]] void writer_died_early(pid_t writer_pid) {
    throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died before the stream started");
}

/// The descriptor, by the route the user chose, and a handle on the writer process.
///
/// The handle comes first. A pid is only a number: the process behind it can exit and the
/// kernel can give the number to another process at any moment. A pidfd is a handle on one
/// process, so the order is: pidfd_open(PID) (now we hold the process that has PID), then take
/// its descriptor, then check that the pidfd still says alive: the process was alive after the
/// descriptor was taken, so the number still meant it while we took it.
WriterMemory get_descriptor(const DescriptorSource& source, const Narrator& say) {
    WriterMemory memory;
    if (source.writer_pid == 0) {
        // Inherited: the writer is our parent, and the kernel says who that is. If it dies before
        // pidfd_open, we are reparented and getppid() changes: checked after.
        memory.writer_pid = ::getppid();
        try {
            memory.writer = open_pidfd(memory.writer_pid);
        } catch (const SysError&) {
            writer_died_early(memory.writer_pid);
        }
        if (::getppid() != memory.writer_pid)
            writer_died_early(memory.writer_pid);
        say.say("%s: watching the writer, our parent", process_handle_text(memory.writer_pid, memory.writer).c_str());
        const std::string getfd = "fcntl(fd=" + std::to_string(source.fd) + ", F_GETFD)";
        if (::fcntl(source.fd, F_GETFD) == -1)
            throw_errno(getfd, "this descriptor is not open here: start the reader with writer --spawn, or use --pid");
        // Close-on-exec again: the writer cleared it for us only; we pass it to nobody.
        const std::string setfd = "fcntl(fd=" + std::to_string(source.fd) + ", F_SETFD, FD_CLOEXEC)";
        if (::fcntl(source.fd, F_SETFD, FD_CLOEXEC) == -1)
            throw_errno(setfd);
        memory.memfd.reset(source.fd);
        say.say("%s = 0: fd %d is inherited; checking it before any use", setfd.c_str(), source.fd);
        return memory;
    }

    memory.writer_pid = source.writer_pid;
    const std::string pid_text = std::to_string(source.writer_pid);
    try {
        memory.writer = open_pidfd(source.writer_pid);
    } catch (const SysError& error) {
        if (error.code().value() == ESRCH)
            throw Failure("no process " + pid_text + ": start the writer first; it prints the command to run");
        throw;
    }
    say.say("%s: holding the writer process before taking its descriptor",
            process_handle_text(source.writer_pid, memory.writer).c_str());

    // Through /proc/PID/fd/N the kernel checks ptrace read access to PID (same user; Yama allows
    // it for a plain read) and opens the same file anew: a new open file description.
    const std::string path = "/proc/" + pid_text + "/fd/" + std::to_string(source.fd);
    const std::string open_call = "open(\"" + path + "\", " + (source.snapshot ? "O_RDONLY" : "O_RDWR") + ")";
    int fd = ::open(path.c_str(), (source.snapshot ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd == -1 && errno == ENOENT)
        throw_errno(open_call, "process " + pid_text + " has no descriptor " + std::to_string(source.fd) +
                                   ": start the writer first; it prints the command to run");
    if (fd == -1)
        throw_errno(open_call, errno == EACCES || errno == EPERM
                                   ? "reading another process's descriptors needs ptrace access to it"
                                   : "");
    memory.memfd.reset(fd);
    if (process_exited(memory.writer))
        throw Failure("the writer (pid " + pid_text + ") exited while its descriptor was being opened: " +
                      "the number may already name another process; refusing the descriptor");
    say.say("%s = %d; the writer is still alive, so the descriptor is its own", open_call.c_str(), fd);
    return memory;
}

/// The receiver's checks, before mapping anything, in the order that makes each answer hold.
/// Whoever sent the descriptor may still hold it and act between any two of our calls. Returns
/// the real size, to map and to validate the header with.
std::uint64_t check_descriptor(int fd, bool snapshot, const Narrator& say) {
    const std::string name = "descriptor " + std::to_string(fd);

    // 1. The seals first. Until F_SEAL_SHRINK|F_SEAL_GROW are in place the sender can still
    //    change the size; once they are, nobody can, the sender included. A size read before the
    //    seals could be stale when used: the sender shrinks the file to 0, then seals it, and we
    //    would map the old size and die of SIGBUS at the first access. (F_GET_SEALS fails with
    //    EINVAL on a file that cannot carry seals: a pipe, a socket, a directory, a plain file.)
    const int required = snapshot ? memfd::kSnapshotSeals : memfd::kStreamSeals;
    const std::string get_seals = "fcntl(fd=" + std::to_string(fd) + ", F_GET_SEALS)";
    // TODO(exercise 3): ask the kernel which seals the descriptor carries, and refuse it unless
    // they include `required` (man 2 fcntl, "File Sealing"; man 2 memfd_create):
    //   1. int seals = ::fcntl(fd, F_GET_SEALS);
    //   2. -1 with errno EINVAL means a file that cannot carry seals. Say what it is instead when
    //      it is not a regular file (a pipe, a socket, a directory): struct stat kind {}; if
    //      ::fstat(fd, &kind) == 0 and !S_ISREG(kind.st_mode), refuse it with exactly
    //        throw Failure(name + " is not a regular file (a pipe, a socket, a directory?): refusing it");
    //      (fstat(2), man 7 inode: S_ISREG).
    //   3. any other -1 (a regular file that cannot be sealed, or another errno):
    //        throw_errno(get_seals, "a file that cannot be sealed, not a memfd: refusing it");
    //   4. seals without every bit of `required`: refuse with exactly
    //        throw Failure(name + " has seals " + seals_text(seals) + ", needs " + seals_text(required) + ": refusing it");
    // Why first: until F_SEAL_SHRINK|F_SEAL_GROW are in place the sender can still shrink the
    // file, so the size fstat reports below could be stale by the time we map it.
    // Then replace the placeholder lines below.
    int seals = required; // placeholder
    throw Failure("TODO(exercise 3): F_GET_SEALS, and refuse what is not a sealed memfd"); // placeholder
    say.say("%s = %s", get_seals.c_str(), seals_text(seals).c_str());

    // 2. Then the size, which the seals have just frozen: at least a header.
    const std::string stat_call = "fstat(fd=" + std::to_string(fd) + ")";
    struct stat info {};
    if (::fstat(fd, &info) == -1)
        throw_errno(stat_call);
    if (!S_ISREG(info.st_mode))
        throw Failure(name + " is not a regular file: refusing it");
    if (static_cast<std::uint64_t>(info.st_size) < kHeaderSize)
        throw Failure(name + " has " + std::to_string(info.st_size) + " bytes, less than the " +
                      std::to_string(kHeaderSize) + "-byte header: refusing it");
    say.say("%s = 0: a regular file of %lld bytes", stat_call.c_str(), static_cast<long long>(info.st_size));

    // 3. Then what it is. Today only a memfd can carry F_SEAL_SHRINK|F_SEAL_GROW (a /dev/shm
    //    file answers F_GET_SEALS too, but is born with F_SEAL_SEAL and can never get more), yet
    //    that is the kernel's rule of the day, not our contract: the link says "/memfd:NAME
    //    (deleted)", an anonymous file that no one can open again by a path.
    char link[256] = {};
    const std::string self = "/proc/self/fd/" + std::to_string(fd);
    const std::string readlink_call = "readlink(\"" + self + "\")";
    ssize_t length = ::readlink(self.c_str(), link, sizeof link - 1);
    if (length == -1)
        throw_errno(readlink_call);
    if (std::string(link).rfind("/memfd:", 0) != 0)
        throw Failure(name + " is " + link + ", not a memfd: refusing it");
    say.say("%s = \"%s\": a memfd", readlink_call.c_str(), link);
    return static_cast<std::uint64_t>(info.st_size);
}

/// The header's writer pid is a claim; the pid we hold (our parent, or the one the user named
/// and we opened the descriptor from) is a fact. They must agree.
void check_writer_pid(const HeaderSnapshot& header, pid_t writer_pid) {
    if (static_cast<pid_t>(header.writer_pid) != writer_pid)
        throw Failure("the header names writer pid " + std::to_string(header.writer_pid) +
                      ", but the descriptor came from pid " + std::to_string(writer_pid) + ": refusing it");
}

/// Claims the memory for this reader, with a token the kernel releases when the reader dies:
/// an open-file-description lock (`F_OFD_SETLK`, fcntl(2)) on the memfd. The writer probes it
/// with `F_OFD_GETLK` and so learns of the reader's death without trusting any pid from the
/// mapping. An OFD lock belongs to the open file description: the inherited descriptor shares
/// the writer's, where the writer's probe would not see it, so the reader locks a description of
/// its own, opened through /proc/self/fd/N. A second reader's lock fails with EAGAIN. Returns
/// that descriptor: the lock lives as long as it is open.
UniqueFd claim_memory(int memfd, memfd::Sync& sync, const Narrator& say) {
    const std::string self = "/proc/self/fd/" + std::to_string(memfd);
    const std::string open_call = "open(\"" + self + "\", O_RDWR)";
    UniqueFd claim(::open(self.c_str(), O_RDWR | O_CLOEXEC));
    if (!claim)
        throw_errno(open_call);
    struct flock lock = memfd::claim_lock();
    const std::string lock_call = "fcntl(fd=" + std::to_string(claim.get()) + ", F_OFD_SETLK, F_WRLCK whole file)";
    if (::fcntl(claim.get(), F_OFD_SETLK, &lock) == -1) {
        if (errno == EAGAIN || errno == EACCES)
            throw Failure("another reader has already claimed this memory (it holds the claim lock): one writer "
                          "serves one reader");
        throw_errno(lock_call);
    }
    say.say("%s = %d; %s = 0: the claim, released by the kernel when this reader dies", open_call.c_str(),
            claim.get(), lock_call.c_str());

    // The pid word wakes the writer's futex wait; the writer learns nothing from its value that
    // it acts on (the lock is the proof).
    std::uint32_t expected_claim = 0;
    auto self_pid = static_cast<std::uint32_t>(::getpid());
    if (!sync.reader_pid.compare_exchange_strong(expected_claim, self_pid, std::memory_order_acq_rel))
        throw Failure("another reader (pid " + std::to_string(expected_claim) +
                      ") has already claimed this memory: one writer serves one reader");
    long woken = memfd::futex_wake(sync.reader_pid);
    say.say("reader_pid: compare-and-swap 0 -> %u; futex(reader_pid, FUTEX_WAKE) = %ld: claimed", self_pid, woken);
    return claim;
}

int run_snapshot(const DescriptorSource& source, const Narrator& say) {
    WriterMemory memory = get_descriptor(source, say);
    const std::size_t size = mappable_size(check_descriptor(memory.memfd.get(), true, say));
    // Read-only and private: the seals already guarantee that nobody can change the content.
    // (Kernels before 6.7 refuse a read-only MAP_SHARED mapping of a write-sealed memfd when the
    // descriptor was opened read-write, as an inherited one is: mmap(2), F_SEAL_WRITE. A private
    // mapping is accepted everywhere.)
    const std::string map_call = "mmap(NULL, " + std::to_string(size) + ", PROT_READ, MAP_PRIVATE, fd=" +
                                 std::to_string(memory.memfd.get()) + ", 0)";
    void* base = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, memory.memfd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno(map_call);
    Mapping mapping(base, size);
    say.say("%s = %p", map_call.c_str(), base);
    const auto& header = *static_cast<const SharedHeader*>(base);
    HeaderSnapshot snapshot = take_snapshot(header);
    validate_header(snapshot, size);
    check_writer_pid(snapshot, memory.writer_pid);
    validate_block(snapshot, snapshot.data_capacity, 1);
    if (snapshot.end_of_stream != 1)
        throw LayoutError("snapshot refused: block 1 is not marked as the end of the stream");
    write_all(STDOUT_FILENO, data_area(base), snapshot.block_length);
    say.say("snapshot: %llu bytes, sealed against writes: nobody can change them",
            static_cast<unsigned long long>(snapshot.block_length));
    return kExitSuccess;
}

int run_stream(const DescriptorSource& source, const Options& options, const Narrator& say) {
    WriterMemory memory = get_descriptor(source, say);
    const std::size_t size = mappable_size(check_descriptor(memory.memfd.get(), false, say));
    const std::string map_call = "mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED, fd=" +
                                 std::to_string(memory.memfd.get()) + ", 0)";
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memory.memfd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno(map_call);
    Mapping mapping(base, size);
    say.say("%s = %p", map_call.c_str(), base);

    auto& header = *static_cast<SharedHeader*>(base);
    Deadline deadline(options.timeout_seconds);
    while (!header_ready(header)) {
        if (deadline.expired())
            throw Failure("the writer did not publish the header within " + seconds_text(options.timeout_seconds));
        if (process_exited(memory.writer))
            writer_died_early(memory.writer_pid);
        pause_briefly();
        throw_if_stopped();
    }
    // One copy of the header, validated; from here on only the copy is used (no double fetch:
    // the writer can change the shared header at any time).
    HeaderSnapshot first = take_snapshot(header);
    validate_header(first, size);
    check_writer_pid(first, memory.writer_pid);
    const std::uint64_t capacity = first.data_capacity;

    memfd::Sync& sync = memfd::sync_words(header);
    UniqueFd claim = claim_memory(memory.memfd.get(), sync, say);
    memory.memfd.reset(); // the mapping and the claim keep the memory; this descriptor is needed no more

    auto writer_alive = [&memory] { return !process_exited(memory.writer); };
    const std::uint8_t* data = data_area(base);
    std::uint64_t total = 0;
    for (std::uint32_t expected = 1;; ++expected) {
        if (memfd::wait_until(sync.published, [expected](std::uint32_t p) { return p == expected; }, writer_alive,
                              nullptr) != memfd::Waited::kYes)
            throw Failure("the writer (pid " + std::to_string(memory.writer_pid) + ") died before the end of the stream");
        HeaderSnapshot block = take_snapshot(header);
        validate_block(block, capacity, expected);
        write_all(STDOUT_FILENO, data, block.block_length);
        total += block.block_length;
        sync.consumed.store(expected, std::memory_order_release);
        memfd::futex_wake(sync.consumed);
        if (expected == 1 && block.end_of_stream == 0)
            say.say("futex(published, FUTEX_WAIT) woke: block 1, %llu bytes (further blocks quietly)",
                    static_cast<unsigned long long>(block.block_length));
        if (block.end_of_stream != 0) {
            say.say("end of stream: %llu bytes in %u block(s); confirmed with futex(consumed, FUTEX_WAKE)",
                    static_cast<unsigned long long>(total), expected - 1);
            return kExitSuccess;
        }
    }
}

} // namespace

/// Parses the command line and runs the reader; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("reader", [&] {
        DescriptorSource source;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.extra.push_back({"--fd", true, [&](const std::string& v) { source.fd = parse_number("--fd", v, 1 << 20); }});
        spec.extra.push_back({"--pid", true, [&](const std::string& v) {
                                  source.writer_pid = parse_number("--pid", v, 1 << 22);
                                  if (source.writer_pid == 0)
                                      throw UsageError("--pid wants a process id above 0");
                              }});
        spec.extra.push_back({"--snapshot", false, [&](const std::string&) { source.snapshot = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        if (source.fd < 0)
            throw UsageError("the reader needs --fd N: start it with writer --spawn, or run the command the writer prints");
        Narrator say("reader", options.quiet);
        install_stop_handlers();
        return source.snapshot ? run_snapshot(source, say) : run_stream(source, options, say);
    });
}
