/// @file 02-posix-mmap/writer.cpp
/// @brief Chapter 02 writer: creates a named POSIX shared-memory object on tmpfs, maps it, and
///        streams its input to one reader through it, with semaphores that live in the mapping.
///
/// Usage: `writer [--name /NAME | --file PATH] [--capacity BYTES] [--timeout SECONDS] [--quiet]
///         [--keep] [--force] [MESSAGE...]`
///
/// Run it with its companion, `reader`, in a second terminal:
///
///     terminal 1: build/02-posix-mmap/writer "hello, shared memory"
///     terminal 2: build/02-posix-mmap/reader
///
/// The calls it teaches, in order: `shm_open(3)` with `O_CREAT|O_EXCL` and mode 0600 creates
/// `/dev/shm/NAME` (with `--file`, `open(2)` creates a file on disk instead); `ftruncate(2)`
/// sizes it and `posix_fallocate(3)` reserves its pages, so a full tmpfs is an error now rather
/// than a SIGBUS later; `mmap(2)` with `MAP_SHARED` maps it; `sem_init(3)` with pshared = 1
/// makes process-shared semaphores inside the mapping; the header's magic is stored last;
/// `sem_clockwait(3)` waits, bounded, for a reader; `shm_unlink(3)` removes the name as soon as
/// the reader has it mapped (open-then-unlink); `sem_post(3)` hands over each block; at the end
/// `sem_destroy(3)` and `munmap(2)`.
#include <cerrno>
#include <cstdio>
#include <cstring>
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

const char* const kUsage = R"(Usage: writer [OPTIONS] [MESSAGE...]

Chapter 02, POSIX shared memory. Creates the object NAME in /dev/shm with shm_open(),
maps it with mmap() and sends each MESSAGE, followed by a newline, to one reader; with
no MESSAGE, sends standard input until end of file. Start the reader in another terminal:
    build/02-posix-mmap/reader

Options:
  --name /NAME       the object's name: '/', then up to 255 characters without '/'
                     (default /shm-tutorial-02, the file /dev/shm/shm-tutorial-02)
  --file PATH        use a regular file at PATH instead (a disk file, to compare)
  --capacity BYTES   size of the data area (default 65536; at most 1073741824)
  --timeout SECONDS  how long to wait for a reader to claim the object, and for its
                     confirmation at the end (default 60)
  --keep             do not remove the name: leave the object for ls -l /dev/shm,
                     and with --file write the data back to disk (msync)
  --force            replace an object of the same name left by an earlier run
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage error.
)";

/// Removes the name on every path that does not reach the planned shm_unlink (a failure,
/// Ctrl-C). The story below removes it at the moment the lesson needs and clears `owned`.
struct NameOwner {
    const posix::Target& target;
    const Narrator& say;
    bool owned = false;

    NameOwner(const posix::Target& t, const Narrator& n) : target(t), say(n) {}
    NameOwner(const NameOwner&) = delete;
    NameOwner& operator=(const NameOwner&) = delete;
    ~NameOwner() {
        if (!owned)
            return;
        int result = target.is_file ? ::unlink(target.path.c_str()) : ::shm_unlink(target.path.c_str());
        if (result == 0)
            say.say("%s(\"%s\") = 0 (cleaning up)", target.unlink_call(), target.path.c_str());
    }
};

/// The create call as narrated: shm_open("/NAME", O_RDWR|O_CREAT|O_EXCL, 0600).
std::string create_call(const posix::Target& target) {
    return std::string(target.open_call()) + "(\"" + target.path + "\", O_RDWR|O_CREAT|O_EXCL, 0600)";
}

/// Creates the object exclusively, mode 0600. O_EXCL matters: without it the writer could open
/// an object someone else planted under this name and write into memory they control.
UniqueFd create_object(const posix::Target& target, bool force, NameOwner& name, const Narrator& say) {
    auto create = [&] {
        return target.is_file ? ::open(target.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)
                              : ::shm_open(target.path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    };
    int fd = create();
    if (fd == -1 && errno == EEXIST && force) {
        int removed = target.is_file ? ::unlink(target.path.c_str()) : ::shm_unlink(target.path.c_str());
        if (removed == 0)
            say.say("--force: %s(\"%s\") = 0: removed the old object", target.unlink_call(),
                    target.path.c_str());
        fd = create();
    }
    if (fd == -1) {
        if (errno == EEXIST)
            throw_errno(create_call(target),
                        "an object of this name exists, left by an earlier run or in use by another writer; "
                        "if no writer is running, remove it with '" + target.removal_command() +
                            "', or start the writer with --force");
        throw_errno(create_call(target));
    }
    name.owned = true;
    say.say("%s = %d", create_call(target).c_str(), fd);
    return UniqueFd(fd);
}

/// A new object has size 0, and touching a mapping past the end of the object raises SIGBUS,
/// so size it first. ftruncate only sets the size: on tmpfs the pages are allocated on first
/// touch, and if the file system is full then, that touch is a SIGBUS. posix_fallocate
/// allocates them now, so a full /dev/shm is a clean ENOSPC here instead.
void size_object(int fd, std::size_t size, const posix::Target& target, const Narrator& say) {
    if (::ftruncate(fd, static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate(fd=" + std::to_string(fd) + ", " + std::to_string(size) + ")");
    say.say("ftruncate(fd=%d, %zu) = 0", fd, size);
    int error = ::posix_fallocate(fd, 0, static_cast<off_t>(size)); // returns the error, not -1
    if (error != 0)
        throw_error(error, "posix_fallocate(fd=" + std::to_string(fd) + ", 0, " + std::to_string(size) + ")",
                    error == ENOSPC ? "the file system holding the object is full: see df -h " + target.directory() : "");
    say.say("posix_fallocate(fd=%d, 0, %zu) = 0: every page reserved", fd, size);

    struct stat info {};
    if (::fstat(fd, &info) == -1)
        throw_errno("fstat(fd=" + std::to_string(fd) + ")");
    say.say("fstat(fd=%d) = 0: size=%lld mode=0%o", fd, static_cast<long long>(info.st_size), info.st_mode & 0777u);
    if ((info.st_mode & 0777u) != 0600) {
        // The mode given to shm_open/open is filtered by the umask: 0600 with umask 0277 becomes
        // 0400, and a reader of the same user could not open the object for writing. Set the
        // mode explicitly; fchmod is not filtered.
        if (::fchmod(fd, 0600) == -1)
            throw_errno("fchmod(fd=" + std::to_string(fd) + ", 0600)");
        say.say("fchmod(fd=%d, 0600) = 0: the umask had removed bits from 0600", fd);
    }
}

/// Maps the object and prepares the header: the semaphores first, the magic last, so that a
/// reader that sees the magic finds initialised semaphores.
Mapping map_and_publish(int fd, std::size_t size, std::uint64_t capacity, const Narrator& say) {
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED)");
    Mapping mapping(base, size);
    say.say("mmap(NULL, %zu, PROT_READ|PROT_WRITE, MAP_SHARED, fd=%d, 0) = %p", size, fd, base);

    SharedHeader* header = construct_header(base);
    posix::Sync* sync = new (header->chapter_area) posix::Sync{};
    // pshared = 1: the semaphore is used by several processes, so glibc makes its futex a
    // shared one. Initialised exactly once, here, before any reader can see the object as ready.
    if (::sem_init(&sync->block_ready, 1, 0) == -1 || ::sem_init(&sync->block_free, 1, 1) == -1 ||
        ::sem_init(&sync->claimed, 1, 0) == -1)
        throw_errno("sem_init(pshared=1)");
    say.say("sem_init(block_ready, pshared=1, 0), sem_init(block_free, pshared=1, 1), "
            "sem_init(claimed, pshared=1, 0) = 0");
    publish_header(*header, capacity, static_cast<std::uint32_t>(::getpid()), 0);
    say.say("header published: magic=0x%08x version=%u data_capacity=%llu", kHeaderMagic, kLayoutVersion,
            static_cast<unsigned long long>(capacity));
    return mapping;
}

/// Waits, bounded by --timeout, for a reader to claim the object; returns a pidfd of that
/// reader, so that its death can be noticed from now on.
UniqueFd wait_for_reader(posix::Sync& sync, const Options& options, const posix::Target& target, const Narrator& say) {
    std::string how = target.is_file ? " --file " + target.path
                                     : (target.path == posix::kDefaultName ? "" : " --name " + target.path);
    say.say("waiting up to %s for a reader: start build/02-posix-mmap/reader%s",
            seconds_text(options.timeout_seconds).c_str(), how.c_str());
    Deadline deadline(options.timeout_seconds);
    if (posix::wait_post(&sync.claimed, nullptr, &deadline, "claimed") != posix::Waited::kYes)
        throw Failure("no reader claimed the object within " + seconds_text(options.timeout_seconds) +
                      ": start the reader while the writer waits, or give the writer a longer --timeout");
    auto reader_pid = static_cast<pid_t>(sync.reader_pid.load(std::memory_order_acquire));
    say.say("sem_clockwait(claimed, CLOCK_MONOTONIC) = 0: reader pid %d claimed the object", reader_pid);
    try {
        return open_pidfd(reader_pid);
    } catch (const SysError&) {
        throw Failure("the reader (pid " + std::to_string(reader_pid) + ") died right after claiming the object");
    }
}

[[noreturn]] void reader_gone() {
    throw Failure("the reader died before the end of the stream (its pidfd became readable); cleaned up");
}

/// The hand-off: wait until the data area is free, fill it, publish the block, post "ready".
/// Returns the last block's number, still holding the "block free" post it took last.
std::uint64_t stream(Input& input, SharedHeader& header, std::uint64_t capacity, const UniqueFd& reader,
                     const Narrator& say) {
    posix::Sync& sync = posix::sync_of(header);
    std::uint8_t* data = data_area(&header);
    std::uint64_t sequence = 0;
    std::uint64_t total = 0;
    for (;;) {
        if (posix::wait_post(&sync.block_free, &reader, nullptr, "block_free") != posix::Waited::kYes)
            reader_gone();
        std::size_t length = input.next(data, capacity, [&reader] { return !process_exited(reader); });
        if (length == 0)
            break;
        publish_block(header, length, ++sequence, false);
        if (::sem_post(&sync.block_ready) == -1)
            throw_errno("sem_post(block_ready)");
        total += length;
        if (sequence == 1)
            say.say("sem_post(block_ready) = 0: block 1, %zu bytes (each further block goes the same way, quietly)",
                    length);
    }
    say.say("%llu bytes sent in %llu block(s)", static_cast<unsigned long long>(total),
            static_cast<unsigned long long>(sequence));
    return sequence;
}

/// Marks the end of the stream with an empty block, then waits (bounded) for the reader's
/// confirmation: its last "block free" post, after it has written every byte.
void finish(SharedHeader& header, std::uint64_t sequence, const UniqueFd& reader, const Options& options,
            const Narrator& say) {
    posix::Sync& sync = posix::sync_of(header);
    publish_block(header, 0, sequence + 1, true);
    if (::sem_post(&sync.block_ready) == -1)
        throw_errno("sem_post(block_ready)");
    say.say("end of stream sent (block %llu, empty); waiting up to %s for the reader to confirm",
            static_cast<unsigned long long>(sequence + 1), seconds_text(options.timeout_seconds).c_str());
    Deadline deadline(options.timeout_seconds);
    switch (posix::wait_post(&sync.block_free, &reader, &deadline, "block_free")) {
    case posix::Waited::kYes:
        say.say("the reader confirmed the end of the stream");
        return;
    case posix::Waited::kPeerGone:
        reader_gone();
    case posix::Waited::kTimedOut:
        throw Failure("the reader did not confirm the end of the stream within the timeout; cleaned up");
    }
}

int run(const Options& options, const posix::Target& target, std::uint64_t capacity) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    NameOwner name(target, say);
    const std::size_t size = kHeaderSize + capacity;

    UniqueFd fd = create_object(target, options.force, name, say);
    size_object(fd.get(), size, target, say);
    Mapping mapping = map_and_publish(fd.get(), size, capacity, say);
    // The mapping holds its own reference to the object: the descriptor is no longer needed.
    say.say("close(fd=%d) = 0: the mapping keeps the object open", fd.get());
    fd.reset();

    auto& header = *static_cast<SharedHeader*>(mapping.get());
    posix::Sync& sync = posix::sync_of(header);
    Input input(options.operands);
    UniqueFd reader = wait_for_reader(sync, options, target, say);

    if (!options.keep) {
        // Open-then-unlink: the reader has the object mapped, so the name has done its job.
        // Removing it now means no crash from here on can leave it behind; the memory lives
        // until the last mapping goes (/proc/PID/maps then says "(deleted)").
        int removed = target.is_file ? ::unlink(target.path.c_str()) : ::shm_unlink(target.path.c_str());
        if (removed == -1)
            throw_errno(std::string(target.unlink_call()) + "(\"" + target.path + "\")");
        name.owned = false;
        say.say("%s(\"%s\") = 0: the name is gone; both mappings keep the memory", target.unlink_call(),
                target.path.c_str());
    }
    if (input.from_stdin() && ::isatty(STDIN_FILENO))
        say.say("type lines to send; Ctrl-D ends the stream");

    std::uint64_t sequence = stream(input, header, capacity, reader, say);
    finish(header, sequence, reader, options, say);

    // The reader has confirmed and will not touch the semaphores again.
    ::sem_destroy(&sync.block_ready);
    ::sem_destroy(&sync.block_free);
    ::sem_destroy(&sync.claimed);
    say.say("sem_destroy(block_ready), sem_destroy(block_free), sem_destroy(claimed) = 0");
    if (options.keep && target.is_file) {
        // msync is about the file on disk, not about the reader: a MAP_SHARED mapping is coherent
        // between processes without it. Here the file stays, so write its pages back now.
        if (::msync(mapping.get(), mapping.size(), MS_SYNC) == -1)
            throw_errno("msync(MS_SYNC)");
        say.say("msync(%p, %zu, MS_SYNC) = 0: the file on disk holds the data", mapping.get(), mapping.size());
    }
    void* base = mapping.get();
    std::size_t length = mapping.size();
    mapping.reset(); // munmap
    say.say("munmap(%p, %zu) = 0", base, length);
    if (options.keep) {
        name.owned = false;
        say.say("--keep: %s is left in place; look with ls -l %s, remove with '%s'", target.path.c_str(),
                target.is_file ? target.path.c_str() : "/dev/shm", target.removal_command().c_str());
    }
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the writer; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("writer", [&] {
        posix::Target target;
        std::uint64_t capacity = kDefaultDataCapacity;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = posix::kDefaultName;
        spec.keep_and_force = true;
        spec.operands = true;
        spec.extra.push_back(posix::file_option(target));
        spec.extra.push_back({"--capacity", true, [&](const std::string& text) {
                                  char* end = nullptr;
                                  errno = 0;
                                  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
                                  if (text.empty() || text[0] == '-' || *end != '\0' || errno != 0 || value == 0 ||
                                      value > (1ull << 30))
                                      throw UsageError("--capacity wants a number of bytes from 1 to 1073741824, not '" +
                                                       text + "'");
                                  capacity = value;
                              }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        posix::resolve_target(target, options);
        return run(options, target, capacity);
    });
}
