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
/// the header is copied once and validated against it; a compare-and-swap on a word in the
/// mapping claims the object; `sem_clockwait(3)` waits for each block in one-second slices,
/// between which a pidfd (`pidfd_open(2)`) tells whether the writer still lives; `sem_post(3)`
/// frees the data area; and if the writer died, `shm_unlink(3)` removes the name it left.
#include <cerrno>
#include <cstdio>
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
header, another reader, the writer died); 2 a usage error.
)";

/// The object as this reader found it: identity (to remove the right one later) and real size.
struct Found {
    UniqueFd fd;
    dev_t device = 0;
    ino_t inode = 0;
    std::uint64_t size = 0;
};

/// Opens the object, waiting (bounded) for it to appear and to be sized. Size 0 means the writer
/// has created it but not yet called ftruncate: not ready, keep waiting.
Found open_object(const posix::Target& target, const Deadline& deadline, const Narrator& say) {
    bool said_waiting = false;
    auto wait_a_little = [&] {
        if (!said_waiting)
            say.say("waiting up to %s for a writer: start build/02-posix-mmap/writer",
                    seconds_text(deadline.seconds()).c_str());
        said_waiting = true;
        pause_briefly();
        throw_if_stopped();
    };
    std::string call = std::string(target.open_call()) + "(\"" + target.path + "\", O_RDWR)";
    for (;;) {
        int fd = target.is_file ? ::open(target.path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW)
                                : ::shm_open(target.path.c_str(), O_RDWR, 0);
        if (fd != -1) {
            Found found;
            found.fd.reset(fd);
            say.say("%s = %d", call.c_str(), fd);
            for (;;) {
                struct stat info {};
                if (::fstat(fd, &info) == -1)
                    throw_errno("fstat(fd=" + std::to_string(fd) + ")");
                if (!S_ISREG(info.st_mode))
                    throw Failure(target.path + " is not a regular file: refusing it");
                if (info.st_uid != ::geteuid())
                    throw Failure(target.path + " belongs to uid " + std::to_string(info.st_uid) +
                                  ", not to this user: refusing it");
                if (static_cast<std::uint64_t>(info.st_size) >= kHeaderSize) {
                    found.device = info.st_dev;
                    found.inode = info.st_ino;
                    found.size = static_cast<std::uint64_t>(info.st_size);
                    say.say("fstat(fd=%d) = 0: size=%llu mode=0%o", fd, static_cast<unsigned long long>(found.size),
                            info.st_mode & 0777u);
                    return found;
                }
                if (deadline.expired())
                    throw Failure(target.path + " exists but was not sized within " + seconds_text(deadline.seconds()) +
                                  " (size " + std::to_string(info.st_size) +
                                  "): a writer that died while creating it? if no writer is running, remove it");
                wait_a_little();
            }
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
/// names the object this reader opened (a new writer may have created a new one since).
[[noreturn]] void writer_died(const posix::Target& target, const Found& found, pid_t writer_pid, const char* when,
                              const Narrator& say) {
    say.say("the writer (pid %d) is gone: its pidfd is readable", writer_pid);
    int fd = target.is_file ? ::open(target.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                            : ::shm_open(target.path.c_str(), O_RDONLY, 0);
    if (fd != -1) {
        struct stat info {};
        bool same = ::fstat(fd, &info) == 0 && info.st_dev == found.device && info.st_ino == found.inode;
        ::close(fd);
        int removed = same ? (target.is_file ? ::unlink(target.path.c_str()) : ::shm_unlink(target.path.c_str())) : -1;
        if (removed == 0)
            say.say("%s(\"%s\") = 0: removed the name it left", target.unlink_call(), target.path.c_str());
    }
    throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died " + when);
}

/// True if process `pid` has this object mapped: a line of /proc/PID/maps names its inode
/// (the name may read "(deleted)" once unlinked; the inode stays).
bool maps_object(pid_t pid, const Found& found) {
    std::FILE* maps = std::fopen(("/proc/" + std::to_string(pid) + "/maps").c_str(), "re");
    if (maps == nullptr)
        return false;
    char line[4096];
    bool found_it = false;
    while (!found_it && std::fgets(line, sizeof line, maps) != nullptr) {
        unsigned long inode = 0;
        // start-end perms offset major:minor inode [path]
        if (std::sscanf(line, "%*s %*s %*s %*s %lu", &inode) == 1 && inode == found.inode)
            found_it = true;
    }
    std::fclose(maps);
    return found_it;
}

/// Maps exactly the size fstat reported, waits (bounded) for the magic, then validates one local
/// copy of the header against that size: nothing past the real end is ever touched.
Mapping map_and_validate(Found& found, const Deadline& deadline, std::uint64_t& capacity, pid_t& writer_pid,
                         const Narrator& say) {
    // PROT_WRITE: the reader posts semaphores and claims the object in the shared header.
    void* base = ::mmap(nullptr, found.size, PROT_READ | PROT_WRITE, MAP_SHARED, found.fd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(NULL, " + std::to_string(found.size) + ", PROT_READ|PROT_WRITE, MAP_SHARED)");
    Mapping mapping(base, found.size);
    say.say("mmap(NULL, %llu, PROT_READ|PROT_WRITE, MAP_SHARED, fd=%d, 0) = %p",
            static_cast<unsigned long long>(found.size), found.fd.get(), base);
    say.say("close(fd=%d) = 0: the mapping keeps the object open", found.fd.get());
    found.fd.reset();

    const auto& header = *static_cast<const SharedHeader*>(base);
    while (!header_ready(header)) { // the writer stores the magic last
        if (deadline.expired())
            throw Failure("the object exists but its header was not published within " +
                          seconds_text(deadline.seconds()) + ": a writer that died while creating it?");
        pause_briefly();
        throw_if_stopped();
    }
    HeaderSnapshot snapshot = take_snapshot(header);
    validate_header(snapshot, found.size);
    capacity = snapshot.data_capacity;
    writer_pid = static_cast<pid_t>(snapshot.writer_pid);
    say.say("header valid: magic=0x%08x version=%u data_capacity=%llu writer_pid=%u", snapshot.magic, snapshot.version,
            static_cast<unsigned long long>(capacity), snapshot.writer_pid);
    return mapping;
}

/// Claims the object: one compare-and-swap from 0 to our pid on a word in the mapping; whoever
/// swaps first is the reader, anyone later sees the winner's pid.
void claim(posix::Sync& sync, const Narrator& say) {
    std::uint32_t expected = 0;
    auto self = static_cast<std::uint32_t>(::getpid());
    if (!sync.reader_pid.compare_exchange_strong(expected, self, std::memory_order_acq_rel))
        throw Failure("another reader (pid " + std::to_string(expected) +
                      ") has already claimed this object: one writer serves one reader");
    if (::sem_post(&sync.claimed) == -1)
        throw_errno("sem_post(claimed)");
    say.say("reader_pid: compare-and-swap 0 -> %u, sem_post(claimed) = 0: claimed", self);
}

/// The hand-off: wait for "block ready", copy the block header once, validate the copy, write
/// the bytes out, post "block free". Posting "block free" after the empty end-of-stream block
/// is the confirmation the writer waits for.
void copy_stream(SharedHeader& header, std::uint64_t capacity, const UniqueFd& writer, const posix::Target& target,
                 const Found& found, pid_t writer_pid, const Narrator& say) {
    posix::Sync& sync = posix::sync_of(header);
    const std::uint8_t* data = data_area(&header);
    std::uint64_t total = 0;
    for (std::uint64_t expected = 1;; ++expected) {
        if (posix::wait_post(&sync.block_ready, &writer, nullptr, "block_ready") != posix::Waited::kYes)
            writer_died(target, found, writer_pid, "before the end of the stream", say);
        HeaderSnapshot block = take_snapshot(header);
        validate_block(block, capacity, expected);
        write_all(STDOUT_FILENO, data, block.block_length);
        total += block.block_length;
        if (::sem_post(&sync.block_free) == -1)
            throw_errno("sem_post(block_free)");
        if (expected == 1)
            say.say("sem_clockwait(block_ready) = 0: block 1, %llu bytes (further blocks quietly)",
                    static_cast<unsigned long long>(block.block_length));
        if (block.end_of_stream != 0) {
            say.say("end of stream: %llu bytes in %llu block(s); confirmed with sem_post(block_free)",
                    static_cast<unsigned long long>(total), static_cast<unsigned long long>(expected - 1));
            return;
        }
    }
}

int run(const Options& options, const posix::Target& target) {
    Narrator say("reader", options.quiet);
    install_stop_handlers();
    Deadline deadline(options.timeout_seconds);

    Found found = open_object(target, deadline, say);
    std::uint64_t capacity = 0;
    pid_t writer_pid = 0;
    Mapping mapping = map_and_validate(found, deadline, capacity, writer_pid, say);
    auto& header = *static_cast<SharedHeader*>(mapping.get());

    // A pidfd refers to the writer process itself: if it has exited, it is readable at once.
    UniqueFd writer;
    try {
        writer = open_pidfd(writer_pid);
    } catch (const SysError& e) {
        if (e.code().value() != ESRCH)
            throw;
        writer_died(target, found, writer_pid, "before the stream started", say);
    }
    if (process_exited(writer))
        writer_died(target, found, writer_pid, "before the stream started", say);
    // The pid came from the header, written by the writer: make sure the process the pidfd now
    // pins really maps this object. A pid reused by another process since would not.
    if (!maps_object(writer_pid, found))
        writer_died(target, found, writer_pid, "before the stream started (its pid now belongs to another process)",
                    say);
    say.say("pidfd_open(%d) = %d: watching the writer (it maps inode %lu)", writer_pid, writer.get(),
            static_cast<unsigned long>(found.inode));

    claim(posix::sync_of(header), say);
    copy_stream(header, capacity, writer, target, found, writer_pid, say);

    void* base = mapping.get();
    std::size_t length = mapping.size();
    mapping.reset(); // munmap: with the name already unlinked, the last munmap frees the memory
    say.say("munmap(%p, %zu) = 0", base, length);
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the reader; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("reader", [&] {
        posix::Target target;
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
