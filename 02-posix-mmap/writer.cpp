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
/// `/dev/shm/NAME` (with `--file`, `open(2)` creates a file on disk instead); if the name is
/// taken, `fcntl(2)` `F_OFD_GETLK` asks whether a live writer holds it; `fcntl(F_OFD_SETLK)`
/// takes the writer's lock byte, its liveness token; `ftruncate(2)` sizes the object and
/// `posix_fallocate(3)` reserves its pages, so a full tmpfs is an error now rather than a SIGBUS
/// later; `mmap(2)` with `MAP_SHARED` maps it; `sem_init(3)` with pshared = 1 makes
/// process-shared semaphores inside the mapping; the header's magic is stored last;
/// `sem_clockwait(3)` waits, bounded, for a reader; `shm_unlink(3)` removes the name as soon as
/// the reader has it mapped (open-then-unlink); `sem_post(3)` hands over each block, while
/// `F_OFD_GETLK` on the reader's byte tells whether the reader lives; at the end `sem_destroy(3)`,
/// `munmap(2)` and `close(2)`, which releases the lock.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <semaphore.h>
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
  --force            replace an object of the same name left by an earlier run whose
                     writer is gone (never one a running writer holds)
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage error.
)";

/// Removes the name on every path that does not reach the planned shm_unlink (a failure,
/// Ctrl-C). The story below removes it at the moment the lesson needs and clears `owned`.
struct NameOwner {
    const posix::ObjectLocation& target;
    const Narrator& say;
    bool owned = false;

    NameOwner(const posix::ObjectLocation& t, const Narrator& n) : target(t), say(n) {}
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

/// What stands at a name the writer could not create (EEXIST), as far as the writer may judge.
enum class NameHolder { kLiveWriter, kLeftOver, kNothing };

/// The name exists. Finds out, without disturbing anyone, what holds it: a running writer (it
/// holds its lock byte: refuse, even with --force), or something no writer holds any more (what
/// a dead or finished run left, or a plain file someone put there: --force may replace it).
/// Refuses outright what is not ours to replace: a symbolic link (shm_open adds O_NOFOLLOW, so it
/// is never followed: ELOOP), another user's object, anything that is not a regular file.
NameHolder inspect_existing(const posix::ObjectLocation& target, const Narrator& say) {
    const std::string call = std::string(target.open_call()) + "(\"" + target.path + "\", O_RDONLY)";
    int fd = target.is_file ? ::open(target.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                            : ::shm_open(target.path.c_str(), O_RDONLY, 0);
    if (fd == -1 && errno == ELOOP)
        throw_errno(call, "a symbolic link stands at the name: it is never followed, and not removed, even with "
                          "--force; look at it and remove it yourself ('" + target.removal_command() +
                              "' removes the link, not what it points to), or choose another --name");
    if (fd == -1 && errno == ENOENT)
        return NameHolder::kNothing; // removed since our EEXIST: try to create it again
    if (fd == -1 && errno == EACCES) {
        const uid_t owner = target.owner();
        throw_error(EACCES, call, owner != static_cast<uid_t>(-1) && owner != ::geteuid()
                              ? target.another_users(owner)
                              : "an object of this name exists and this user may not open it: it is someone "
                                "else's; choose another --name");
    }
    if (fd == -1)
        throw_errno(call);
    UniqueFd existing(fd);
    struct stat info {};
    if (::fstat(fd, &info) == -1)
        throw_errno("fstat(fd=" + std::to_string(fd) + ")");
    if (!S_ISREG(info.st_mode))
        throw Failure(target.path + " exists and is not a regular file: refusing it; choose another --name");
    if (info.st_uid != ::geteuid())
        throw Failure(target.path + " exists and is not ours to replace: " + target.another_users(info.st_uid));
    bool writer_lives = posix::lock_held(fd, posix::kWriterLockByte);
    say.say("%s = %d; fcntl(fd=%d, F_OFD_GETLK, byte %lld): %s", call.c_str(), fd, fd,
            static_cast<long long>(posix::kWriterLockByte),
            writer_lives ? "locked: a writer holds it" : "unlocked: no writer holds it");
    return writer_lives ? NameHolder::kLiveWriter : NameHolder::kLeftOver;
}

/// Creates the object exclusively, mode 0600. O_EXCL matters: without it the writer could open
/// an object someone else planted under this name and write into memory they control. If the
/// name is taken, --force replaces only what no running writer holds.
UniqueFd create_object(const posix::ObjectLocation& target, bool force, NameOwner& name, const Narrator& say) {
    const std::string call = std::string(target.open_call()) + "(\"" + target.path + "\", O_RDWR|O_CREAT|O_EXCL, 0600)";
    auto create = [&] {
        return target.is_file ? ::open(target.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)
                              : ::shm_open(target.path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    };
    int fd = create();
    for (int attempt = 0; fd == -1 && errno == EEXIST && attempt < 3; ++attempt) {
        int saved = errno;
        NameHolder holder = inspect_existing(target, say);
        if (holder == NameHolder::kNothing) {
            fd = create();
            continue;
        }
        if (holder == NameHolder::kLiveWriter)
            throw_error(saved, call, "a writer is running there (it holds its lock on the object); --force "
                                     "does not replace a running writer's object: wait for it to finish, or "
                                     "choose another --name");
        if (!force)
            throw_error(saved, call, "an object of this name exists that no running writer holds: left by an "
                                     "earlier run, or put there by someone; remove it with '" +
                                         target.removal_command() + "', or start the writer with --force");
        const std::string unlink_call = std::string(target.unlink_call()) + "(\"" + target.path + "\")";
        int removed = target.is_file ? ::unlink(target.path.c_str()) : ::shm_unlink(target.path.c_str());
        if (removed == -1 && errno != ENOENT) // ENOENT: someone removed it first, which is as good
            throw_errno(unlink_call);
        if (removed == 0)
            say.say("--force: %s = 0: removed the old object", unlink_call.c_str());
        fd = create();
    }
    if (fd == -1)
        throw_errno(call);
    name.owned = true;
    say.say("%s = %d", call.c_str(), fd);
    return UniqueFd(fd);
}

/// Takes the writer's liveness token: an OFD lock on byte 0 of the object, held through the
/// descriptor until the writer closes it or dies. Readers and later writers ask about it with
/// F_OFD_GETLK. An OFD lock belongs to the open file description, not to the process, so a
/// descriptor inherited elsewhere would keep it: the object is opened O_CLOEXEC (shm_open does).
void lock_writer_byte(int fd, const Narrator& say) {
    const std::string call = "fcntl(fd=" + std::to_string(fd) + ", F_OFD_SETLK, F_WRLCK byte " +
                             std::to_string(posix::kWriterLockByte) + ")";
    struct flock lock = posix::lock_on(posix::kWriterLockByte);
    if (::fcntl(fd, F_OFD_SETLK, &lock) == -1)
        throw_errno(call);
    say.say("%s = 0: held while the writer lives", call.c_str());
}

/// A new object has size 0, and touching a mapping past the end of the object raises SIGBUS,
/// so size it first. ftruncate only sets the size: on tmpfs the pages are allocated on first
/// touch, and if the file system is full then, that touch is a SIGBUS. posix_fallocate
/// allocates them now, so a full /dev/shm is a clean ENOSPC here instead.
void size_object(int fd, std::size_t size, const posix::ObjectLocation& target, const Narrator& say) {
    const std::string size_call = "ftruncate(fd=" + std::to_string(fd) + ", " + std::to_string(size) + ")";
    if (::ftruncate(fd, static_cast<off_t>(size)) == -1)
        throw_errno(size_call);
    say.say("%s = 0", size_call.c_str());

    const std::string reserve_call = "posix_fallocate(fd=" + std::to_string(fd) + ", 0, " + std::to_string(size) + ")";
    int error = ::posix_fallocate(fd, 0, static_cast<off_t>(size)); // returns the error, not -1
    if (error != 0)
        throw_error(error, reserve_call,
                    error == ENOSPC ? "the file system holding the object is full: see df -h " + target.directory() : "");
    say.say("%s = 0: every page reserved", reserve_call.c_str());

    const std::string stat_call = "fstat(fd=" + std::to_string(fd) + ")";
    struct stat info {};
    if (::fstat(fd, &info) == -1)
        throw_errno(stat_call);
    say.say("%s = 0: size=%lld mode=0%o", stat_call.c_str(), static_cast<long long>(info.st_size), info.st_mode & 0777u);
    if ((info.st_mode & 0777u) != 0600) {
        // The mode given to shm_open/open is filtered by the umask: 0600 with umask 0277 becomes
        // 0400, and a reader of the same user (unless root, whom permissions do not stop) could
        // not open the object for writing. Set the mode explicitly; fchmod is not filtered.
        const std::string chmod_call = "fchmod(fd=" + std::to_string(fd) + ", 0600)";
        if (::fchmod(fd, 0600) == -1)
            throw_errno(chmod_call);
        say.say("%s = 0: the umask had removed bits from 0600", chmod_call.c_str());
    }
}

/// sem_init with pshared = 1, checked and narrated: the semaphore is used by several processes,
/// so glibc makes its futex a shared one.
void init_semaphore(sem_t* semaphore, const char* name, unsigned value, const Narrator& say) {
    const std::string call = std::string("sem_init(") + name + ", pshared=1, " + std::to_string(value) + ")";
    if (::sem_init(semaphore, 1, value) == -1)
        throw_errno(call);
    say.say("%s = 0", call.c_str());
}

/// Maps the object and prepares the header: the semaphores first, the magic last, so that a
/// reader that sees the magic finds initialised semaphores.
Mapping map_and_publish(int fd, std::size_t size, std::uint64_t capacity, const Narrator& say) {
    const std::string call = "mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED, fd=" +
                             std::to_string(fd) + ", 0)";
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        throw_errno(call);
    Mapping mapping(base, size);
    say.say("%s = %p", call.c_str(), base);

    SharedHeader* header = construct_header(base);
    posix::HandOff* hand_off = new (header->chapter_area) posix::HandOff{};
    // Initialised exactly once, here, before any reader can see the object as ready.
    init_semaphore(&hand_off->block_ready, "block_ready", 0, say);
    init_semaphore(&hand_off->block_free, "block_free", 1, say);
    init_semaphore(&hand_off->claimed, "claimed", 0, say);
    publish_header(*header, capacity, static_cast<std::uint32_t>(::getpid()), 0);
    say.say("header published: magic=0x%08x version=%u data_capacity=%llu", kHeaderMagic, kLayoutVersion,
            static_cast<unsigned long long>(capacity));
    return mapping;
}

/// Waits, bounded by --timeout, for a reader to claim the object, then checks that the reader
/// holds its lock byte: from now on that lock is how the writer knows the reader lives. The pid
/// the reader wrote in the claim word is only shown, never acted on.
void wait_for_reader(posix::HandOff& hand_off, int fd, const Options& options, const posix::ObjectLocation& target,
                     const Narrator& say) {
    std::string how = target.is_file ? " --file " + target.path
                                     : (target.path == posix::kDefaultName ? "" : " --name " + target.path);
    say.say("waiting up to %s for a reader: start %s%s",
            seconds_text(options.timeout_seconds).c_str(), sibling_program("reader").c_str(), how.c_str());
    Deadline deadline(options.timeout_seconds);
    if (posix::wait_post(&hand_off.claimed, nullptr, &deadline, "claimed") != posix::Waited::kYes)
        throw Failure("no reader claimed the object within " + seconds_text(options.timeout_seconds) +
                      ": start the reader while the writer waits, or give the writer a longer --timeout");
    auto claimed_by = hand_off.reader_pid.load(std::memory_order_acquire);
    say.say("sem_clockwait(claimed, CLOCK_MONOTONIC) = 0: a reader claimed the object (it says it is pid %u)",
            claimed_by);
    // The reader locks its byte before it claims, so the lock is held now unless it died since.
    bool reader_lives = posix::lock_held(fd, posix::kReaderLockByte);
    say.say("fcntl(fd=%d, F_OFD_GETLK, byte %lld): %s", fd, static_cast<long long>(posix::kReaderLockByte),
            reader_lives ? "locked: the reader lives" : "unlocked");
    if (!reader_lives)
        throw Failure("the reader died right after claiming the object (its lock is released); cleaned up");
}

[[noreturn]] void reader_gone() {
    throw Failure("the reader died before the end of the stream (its lock on the object is released); cleaned up");
}

/// The hand-off: wait until the data area is free, fill it, publish the block, post "ready".
/// Returns the last block's number, still holding the "block free" post it took last.
std::uint64_t stream(Input& input, SharedHeader& header, std::uint64_t capacity, const posix::PeerLock& reader,
                     const Narrator& say) {
    posix::HandOff& hand_off = posix::hand_off_in(header);
    std::uint8_t* data = data_area(&header);
    const char* const post_call = "sem_post(block_ready)";
    std::uint64_t sequence = 0;
    std::uint64_t total = 0;
    for (;;) {
        if (posix::wait_post(&hand_off.block_free, &reader, nullptr, "block_free") != posix::Waited::kYes)
            reader_gone();
        // While the input has nothing to read (a keyboard, a slow pipe), Input asks every second
        // whether the reader still holds its lock.
        // (capacity fits a size_t: it was mapped, see run())
        std::size_t length = input.next(data, static_cast<std::size_t>(capacity), [&reader] { return reader.alive(); });
        if (length == 0)
            break;
        publish_block(header, length, ++sequence, false);
        if (::sem_post(&hand_off.block_ready) == -1)
            throw_errno(post_call);
        total += length;
        if (sequence == 1)
            say.say("%s = 0: block 1, %zu bytes (each further block goes the same way, quietly)", post_call, length);
    }
    say.say("%llu bytes sent in %llu block(s)", static_cast<unsigned long long>(total),
            static_cast<unsigned long long>(sequence));
    return sequence;
}

/// Marks the end of the stream with an empty block, then waits (bounded) for the reader's
/// confirmation: its last "block free" post, after it has written every byte.
void finish(SharedHeader& header, std::uint64_t sequence, const posix::PeerLock& reader, const Options& options,
            const Narrator& say) {
    posix::HandOff& hand_off = posix::hand_off_in(header);
    publish_block(header, 0, sequence + 1, true);
    const char* const post_call = "sem_post(block_ready)";
    if (::sem_post(&hand_off.block_ready) == -1)
        throw_errno(post_call);
    say.say("%s = 0: end of stream sent (block %llu, empty); waiting up to %s for the reader to confirm", post_call,
            static_cast<unsigned long long>(sequence + 1), seconds_text(options.timeout_seconds).c_str());
    Deadline deadline(options.timeout_seconds);
    switch (posix::wait_post(&hand_off.block_free, &reader, &deadline, "block_free")) {
    case posix::Waited::kYes:
        say.say("the reader confirmed the end of the stream");
        return;
    case posix::Waited::kPeerGone:
        reader_gone();
    case posix::Waited::kTimedOut:
        throw Failure("the reader did not confirm the end of the stream within the timeout; cleaned up");
    }
}

/// sem_destroy, checked and narrated. Only after the reader's confirmation: it will not touch
/// the semaphores again.
void destroy_semaphore(sem_t* semaphore, const char* name, const Narrator& say) {
    const std::string call = std::string("sem_destroy(") + name + ")";
    if (::sem_destroy(semaphore) == -1)
        throw_errno(call);
    say.say("%s = 0", call.c_str());
}

int run(const Options& options, const posix::ObjectLocation& target, std::uint64_t capacity) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    NameOwner name(target, say);
    const std::size_t size = mappable_size(kHeaderSize + capacity);

    // The descriptor stays open for the whole run: it carries the writer's lock.
    UniqueFd object = create_object(target, options.force, name, say);
    lock_writer_byte(object.get(), say);
    size_object(object.get(), size, target, say);
    Mapping mapping = map_and_publish(object.get(), size, capacity, say);

    auto& header = *static_cast<SharedHeader*>(mapping.get());
    posix::HandOff& hand_off = posix::hand_off_in(header);
    Input input(options.operands);
    wait_for_reader(hand_off, object.get(), options, target, say);
    const posix::PeerLock reader{object.get(), posix::kReaderLockByte};

    if (!options.keep) {
        // Open-then-unlink: the reader has the object mapped, so the name has done its job.
        // Removing it now means no crash from here on can leave it behind; the memory lives
        // until the last mapping goes (/proc/PID/maps then says "(deleted)").
        const std::string call = std::string(target.unlink_call()) + "(\"" + target.path + "\")";
        int removed = target.is_file ? ::unlink(target.path.c_str()) : ::shm_unlink(target.path.c_str());
        if (removed == -1)
            throw_errno(call);
        name.owned = false;
        say.say("%s = 0: the name is gone; both mappings keep the memory", call.c_str());
    }
    if (input.from_stdin() && ::isatty(STDIN_FILENO))
        say.say("type lines to send; Ctrl-D ends the stream");

    std::uint64_t sequence = stream(input, header, capacity, reader, say);
    finish(header, sequence, reader, options, say);

    destroy_semaphore(&hand_off.block_ready, "block_ready", say);
    destroy_semaphore(&hand_off.block_free, "block_free", say);
    destroy_semaphore(&hand_off.claimed, "claimed", say);
    if (options.keep) {
        // A later reader finds a finished stream, not a dead writer: say so in the header.
        header.flags.fetch_or(posix::kKeptFlag, std::memory_order_release);
        say.say("header flags |= KEPT: a later reader learns the stream is over, not that the writer died");
        name.owned = false; // kept on purpose, whatever happens from here on
    }
    if (options.keep && target.is_file) {
        // msync is about the file on disk, not about the reader: a MAP_SHARED mapping is coherent
        // between processes without it. Here the file stays, so write its pages back now.
        const std::string call = "msync(" + posix::address_text(mapping.get()) + ", " + std::to_string(mapping.size()) +
                                 ", MS_SYNC)";
        if (::msync(mapping.get(), mapping.size(), MS_SYNC) == -1)
            throw_errno(call);
        say.say("%s = 0: the file on disk holds the data", call.c_str());
    }
    const std::size_t length = mapping.size();
    const std::string unmap_call = "munmap(" + posix::address_text(mapping.get()) + ", " + std::to_string(length) + ")";
    if (::munmap(mapping.release(), length) == -1)
        throw_errno(unmap_call);
    say.say("%s = 0", unmap_call.c_str());
    const std::string close_call = "close(fd=" + std::to_string(object.get()) + ")";
    if (::close(object.release()) == -1) // the descriptor is gone even when close fails
        throw_errno(close_call);
    say.say("%s = 0: the writer's lock is released", close_call.c_str());
    if (options.keep) {
        say.say("--keep: %s is left in place; look with ls -l %s, remove with '%s'", target.path.c_str(),
                target.is_file ? target.path.c_str() : "/dev/shm", target.removal_command().c_str());
    }
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the writer; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("writer", [&] {
        posix::ObjectLocation target;
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
