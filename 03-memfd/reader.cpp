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
/// The calls it teaches, in order: `fstat(2)` (a regular file, at least a header long);
/// `fcntl(F_GET_SEALS)` (the seals it requires: shrink and grow, plus write in snapshot mode);
/// `readlink(2)` of `/proc/self/fd/N` (a memfd's link starts with `/memfd:`); `mmap(2)`;
/// `futex(2)` `FUTEX_WAIT`/`FUTEX_WAKE` on words in the mapping; `pidfd_open(2)` to notice the
/// writer's death.
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

struct Settings {
    int fd = -1;
    pid_t pid = 0; ///< 0: the descriptor was inherited
    bool snapshot = false;
};

int parse_number(const std::string& option, const std::string& text, long max) {
    char* end = nullptr;
    errno = 0;
    long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno != 0 || value < 0 || value > max)
        throw UsageError(option + " wants a number from 0 to " + std::to_string(max) + ", not '" + text + "'");
    return static_cast<int>(value);
}

/// The descriptor, by the route the user chose. Through /proc/PID/fd/N the kernel checks ptrace
/// read access to PID (same user; Yama allows it for a plain read) and opens the same file anew.
UniqueFd get_descriptor(const Settings& settings, const Narrator& say) {
    if (settings.pid == 0) {
        if (::fcntl(settings.fd, F_GETFD) == -1)
            throw_errno("fcntl(fd=" + std::to_string(settings.fd) + ", F_GETFD)",
                        "this descriptor is not open here: start the reader with writer --spawn, or use --pid");
        // Close-on-exec again: the writer cleared it for us only; we pass it to nobody.
        ::fcntl(settings.fd, F_SETFD, FD_CLOEXEC);
        say.say("fd %d: inherited; checking it before any use", settings.fd);
        return UniqueFd(settings.fd);
    }
    std::string path = "/proc/" + std::to_string(settings.pid) + "/fd/" + std::to_string(settings.fd);
    int flags = settings.snapshot ? O_RDONLY : O_RDWR;
    int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd == -1) {
        if (errno == ENOENT)
            throw_errno("open(\"" + path + "\")",
                        "no writer process " + std::to_string(settings.pid) + " with descriptor " +
                            std::to_string(settings.fd) + ": start the writer first; it prints the command to run");
        throw_errno("open(\"" + path + "\")",
                    errno == EACCES || errno == EPERM ? "reading another process's descriptors needs ptrace access to it"
                                                      : "");
    }
    say.say("open(\"%s\", %s) = %d", path.c_str(), settings.snapshot ? "O_RDONLY" : "O_RDWR", fd);
    return UniqueFd(fd);
}

/// Checks the descriptor before mapping anything: a regular file, at least a header long,
/// carrying the seals this mode requires, and a memfd (see check_sealed_memfd() in common/,
/// where these checks live so that later chapters reuse them). Returns the real size.
std::uint64_t check_descriptor(int fd, const Settings& settings, const Narrator& say) {
    return check_sealed_memfd(fd, settings.snapshot ? memfd::kSnapshotSeals : memfd::kStreamSeals, kHeaderSize, say);
}

/// The writer's pid: the one we opened the descriptor from, or our parent that spawned us; the
/// header must agree, or the memory is not what we were told it is.
UniqueFd watch_writer(const Settings& settings, const HeaderSnapshot& header, const Narrator& say) {
    pid_t writer_pid = settings.pid != 0 ? settings.pid : ::getppid();
    if (static_cast<pid_t>(header.writer_pid) != writer_pid)
        throw Failure("the header names writer pid " + std::to_string(header.writer_pid) +
                      ", but the descriptor came from pid " + std::to_string(writer_pid) + ": refusing it");
    UniqueFd pidfd;
    try {
        pidfd = open_pidfd(writer_pid);
    } catch (const SysError&) {
        throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died before the stream started");
    }
    if (settings.pid == 0 && ::getppid() != writer_pid) // the parent died between the two looks
        throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died before the stream started");
    say.say("pidfd_open(%d) = %d: watching the writer", writer_pid, pidfd.get());
    return pidfd;
}

int run_snapshot(const Settings& settings, const Narrator& say) {
    UniqueFd fd = get_descriptor(settings, say);
    std::uint64_t size = check_descriptor(fd.get(), settings, say);
    // Read-only and private: the seals already guarantee that nobody can change the content.
    // (A read-only MAP_SHARED mapping of a write-sealed memfd is refused by kernels before 6.7.)
    void* base = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(NULL, " + std::to_string(size) + ", PROT_READ, MAP_PRIVATE)");
    Mapping mapping(base, size);
    say.say("mmap(NULL, %llu, PROT_READ, MAP_PRIVATE, fd=%d, 0) = %p", static_cast<unsigned long long>(size), fd.get(),
            base);
    const auto& header = *static_cast<const SharedHeader*>(base);
    HeaderSnapshot snapshot = take_snapshot(header);
    validate_header(snapshot, size);
    validate_block(snapshot, snapshot.data_capacity, 1);
    if (snapshot.end_of_stream != 1)
        throw LayoutError("snapshot refused: block 1 is not marked as the end of the stream");
    write_all(STDOUT_FILENO, data_area(base), snapshot.block_length);
    say.say("snapshot: %llu bytes, sealed against writes: nobody can change them",
            static_cast<unsigned long long>(snapshot.block_length));
    return kExitSuccess;
}

int run_stream(const Settings& settings, const Options& options, const Narrator& say) {
    UniqueFd fd = get_descriptor(settings, say);
    std::uint64_t size = check_descriptor(fd.get(), settings, say);
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED)");
    Mapping mapping(base, size);
    say.say("mmap(NULL, %llu, PROT_READ|PROT_WRITE, MAP_SHARED, fd=%d, 0) = %p", static_cast<unsigned long long>(size),
            fd.get(), base);
    fd.reset(); // the mapping keeps the memory; the memfd itself is needed no more

    auto& header = *static_cast<SharedHeader*>(base);
    Deadline deadline(options.timeout_seconds);
    while (!header_ready(header)) {
        if (deadline.expired())
            throw Failure("the writer did not publish the header within " + seconds_text(options.timeout_seconds));
        pause_briefly();
        throw_if_stopped();
    }
    HeaderSnapshot first = take_snapshot(header);
    validate_header(first, size);
    const std::uint64_t capacity = first.data_capacity;
    UniqueFd writer = watch_writer(settings, first, say);

    memfd::Sync& sync = memfd::sync_of(header);
    std::uint32_t expected_claim = 0;
    auto self = static_cast<std::uint32_t>(::getpid());
    if (!sync.reader_pid.compare_exchange_strong(expected_claim, self, std::memory_order_acq_rel))
        throw Failure("another reader (pid " + std::to_string(expected_claim) +
                      ") has already claimed this memory: one writer serves one reader");
    memfd::futex_wake(sync.reader_pid);
    say.say("reader_pid: compare-and-swap 0 -> %u, futex(FUTEX_WAKE) = claimed", self);

    const std::uint8_t* data = data_area(base);
    std::uint64_t total = 0;
    for (std::uint32_t expected = 1;; ++expected) {
        if (memfd::wait_until(sync.published, [expected](std::uint32_t p) { return p == expected; }, &writer, nullptr) !=
            memfd::Waited::kYes)
            throw Failure("the writer (pid " + std::to_string(first.writer_pid) + ") died before the end of the stream");
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
        Settings settings;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.extra.push_back({"--fd", true, [&](const std::string& v) { settings.fd = parse_number("--fd", v, 1 << 20); }});
        spec.extra.push_back({"--pid", true, [&](const std::string& v) {
                                  settings.pid = parse_number("--pid", v, 1 << 22);
                                  if (settings.pid == 0)
                                      throw UsageError("--pid wants a process id above 0");
                              }});
        spec.extra.push_back({"--snapshot", false, [&](const std::string&) { settings.snapshot = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        if (settings.fd < 0)
            throw UsageError("the reader needs --fd N: start it with writer --spawn, or run the command the writer prints");
        Narrator say("reader", options.quiet);
        install_stop_handlers();
        return settings.snapshot ? run_snapshot(settings, say) : run_stream(settings, options, say);
    });
}
