/// @file 01-sysv/writer.cpp
/// @brief Chapter 01 writer: creates a System V shared-memory segment and a semaphore set, and
///        streams its input to one reader through the segment, block by block.
///
/// Usage: `writer [--name PATH] [--timeout SECONDS] [--quiet] [--keep] [--force] [MESSAGE...]`
///
/// Run it with its companion, `reader`, in a second terminal:
///
///     terminal 1: build/01-sysv/writer "hello, shared memory"
///     terminal 2: build/01-sysv/reader
///
/// The calls it teaches, in order: `ftok(3)` turns a path into a key; `semget(2)` and
/// `semctl(2)` (`SETALL`) create and initialise the semaphores *before* the segment exists, so a
/// reader that finds the segment always finds initialised semaphores; `semop(2)` with `SEM_UNDO`
/// takes the "writer alive" token; `shmget(2)` with `IPC_CREAT|IPC_EXCL|0600` creates the
/// segment and `shmat(2)` maps it; `semtimedop(2)` waits, bounded, for a reader to claim it;
/// `shmctl(2)` (`IPC_STAT`, then `IPC_RMID`) shows the segment and marks it for removal as soon
/// as the reader is attached; each block is handed over with `semop`; at the end `shmdt(2)`
/// detaches and `semctl(IPC_RMID)` removes the semaphores.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
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

Chapter 01, System V shared memory. Creates a segment and a semaphore set under the
key ftok(PATH) and sends each MESSAGE, followed by a newline, to one reader; with no
MESSAGE, sends standard input until end of file. Start the reader in another terminal:
    build/01-sysv/reader

Options:
  --name PATH        key file for ftok(); created if missing (default /tmp/shm-tutorial-01.key)
  --timeout SECONDS  how long to wait for a reader to claim the segment, and for its
                     confirmation at the end (default 60)
  --keep             leave the segment, the semaphore set and the key file in place at
                     the end, to look at them with ipcs; remove them with the ipcrm
                     command printed then
  --force            replace a segment or semaphore set left under the same key by an
                     earlier run
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage error.
)";

/// Everything this writer created, so that it is removed on every path. The story below
/// removes each object at the moment the lesson needs and clears its field; the destructor is
/// the safety net on error paths (a failure, Ctrl-C) and removes whatever is still recorded.
struct Created {
    explicit Created(const Narrator& narrator) : say(narrator) {}
    Created(const Created&) = delete;
    Created& operator=(const Created&) = delete;

    const Narrator& say;
    bool keep = false;
    std::string key_file; ///< non-empty if this writer created the key file
    int semid = -1;       ///< the semaphore set, until removed
    int shmid = -1;       ///< the segment, until marked for removal

    ~Created() {
        if (keep)
            return;
        if (shmid != -1 && ::shmctl(shmid, IPC_RMID, nullptr) == 0)
            say.say("shmctl(shmid=%d, IPC_RMID) = 0 (cleaning up)", shmid);
        if (semid != -1 && ::semctl(semid, 0, IPC_RMID) == 0)
            say.say("semctl(semid=%d, 0, IPC_RMID) = 0 (cleaning up)", semid);
        if (!key_file.empty() && ::unlink(key_file.c_str()) == 0)
            say.say("unlink(\"%s\") = 0 (cleaning up)", key_file.c_str());
    }
};

/// ftok(3) needs an existing file: it builds the key from the file's inode and device numbers
/// and the project id, so every process naming the same file gets the same key. A key file this
/// writer creates is removed at the end (see also adopt_stale_key_file()).
key_t make_key(const Options& options, Created& created, const Narrator& say) {
    const std::string& path = options.name;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd != -1) {
        created.key_file = path;
        ssize_t written = ::write(fd, sysv::kKeyFileMarker.data(), sysv::kKeyFileMarker.size());
        int saved_errno = errno;
        ::close(fd);
        if (written == -1)
            throw_error(saved_errno, "write(\"" + path + "\")");
        if (written != static_cast<ssize_t>(sysv::kKeyFileMarker.size()))
            throw Failure("write(\"" + path + "\"): short write to the key file");
        say.say("open(\"%s\", O_CREAT|O_EXCL, 0600) = created the key file", path.c_str());
    } else if (errno != EEXIST) {
        throw_errno("open(\"" + path + "\", O_CREAT|O_EXCL)", "--name must be a path this user can create or read");
    }
    key_t key = ::ftok(path.c_str(), sysv::kProjectId);
    if (key == -1)
        throw_errno("ftok(\"" + path + "\")");
    say.say("ftok(\"%s\", '%c') = %s", path.c_str(), sysv::kProjectId, sysv::key_text(key).c_str());
    return key;
}

/// An object under our key already exists: left by a crashed run, or in use by a running writer.
/// With --force it is removed; otherwise the user is told how to remove it.
void handle_existing(const std::string& call, key_t key, bool force, const Narrator& say) {
    std::string key_text = sysv::key_text(key);
    if (!force)
        throw_error(EEXIST, call,
                    "objects from an earlier run use this key; if no writer is running, remove them with "
                    "'ipcrm -M " + key_text + " -S " + key_text + "' (it reports any that is already gone), "
                    "or start the writer with --force");
    if (int semid = ::semget(key, 0, 0); semid != -1 && ::semctl(semid, 0, IPC_RMID) == 0)
        say.say("--force: semctl(semid=%d, 0, IPC_RMID) = 0: removed the old semaphore set", semid);
    if (int shmid = ::shmget(key, 0, 0); shmid != -1 && ::shmctl(shmid, IPC_RMID, nullptr) == 0)
        say.say("--force: shmctl(shmid=%d, IPC_RMID) = 0: removed the old segment", shmid);
}

/// The semaphores exist and are initialised before the segment does: a reader looks for the
/// segment first, so whenever it finds one, the set beside it is ready. (SETALL alone would not
/// tell a reader that found only the set whether it is initialised; the semop below also sets
/// the set's sem_otime, which the reader checks.)
int create_semaphores(key_t key, bool force, Created& created, const Narrator& say) {
    int semid = ::semget(key, sysv::kSemaphoreCount, IPC_CREAT | IPC_EXCL | 0600);
    if (semid == -1 && errno == EEXIST) {
        handle_existing("semget(key=" + sysv::key_text(key) + ", nsems=5, IPC_CREAT|IPC_EXCL|0600)", key, force, say);
        semid = ::semget(key, sysv::kSemaphoreCount, IPC_CREAT | IPC_EXCL | 0600);
    }
    if (semid == -1)
        throw_errno("semget(key=" + sysv::key_text(key) + ", nsems=5, IPC_CREAT|IPC_EXCL|0600)");
    created.semid = semid;
    say.say("semget(key=%s, nsems=5, IPC_CREAT|IPC_EXCL|0600) = %d", sysv::key_text(key).c_str(), semid);

    unsigned short initial[sysv::kSemaphoreCount] = {};
    initial[sysv::kReaderSlot] = 1; // one reader may claim the segment
    initial[sysv::kBlockFree] = 1;  // the data area starts empty
    sysv::semun arg{};
    arg.array = initial;
    if (::semctl(semid, 0, SETALL, arg) == -1)
        throw_errno("semctl(semid=" + std::to_string(semid) + ", SETALL)");
    say.say("semctl(semid=%d, SETALL, {alive=0, slot=1, reader=0, ready=0, free=1}) = 0", semid);

    // SEM_UNDO: if this process dies, even by SIGKILL, the kernel takes the token back, and a
    // reader waiting on us sees kWriterAlive drop to 0.
    sembuf alive{sysv::kWriterAlive, +1, SEM_UNDO};
    if (::semop(semid, &alive, 1) == -1)
        throw_errno("semop(semid=" + std::to_string(semid) + ", writer alive +1, SEM_UNDO)");
    say.say("semop(semid=%d, {sem 0 'writer alive' +1, SEM_UNDO}) = 0", semid);
    return semid;
}

/// A key file a crashed writer left (it holds the marker) becomes ours to remove, but only once
/// our objects live under its key: a writer that fails because old objects still use the key
/// must leave the file, or the key of those objects could not be found again.
void adopt_stale_key_file(const Options& options, Created& created) {
    if (created.key_file.empty() && sysv::is_writer_key_file(options.name))
        created.key_file = options.name;
}

/// Creates the segment the reader looks for, attaches it and publishes an empty header.
ShmAttachment create_segment(key_t key, bool force, Created& created, const Narrator& say) {
    const std::size_t size = kHeaderSize + kDefaultDataCapacity;
    int shmid = ::shmget(key, size, IPC_CREAT | IPC_EXCL | 0600);
    if (shmid == -1 && errno == EEXIST) { // a stale segment without a set
        handle_existing("shmget(key=" + sysv::key_text(key) + ", IPC_CREAT|IPC_EXCL|0600)", key, force, say);
        shmid = ::shmget(key, size, IPC_CREAT | IPC_EXCL | 0600);
    }
    if (shmid == -1)
        throw_errno("shmget(key=" + sysv::key_text(key) + ", size=" + std::to_string(size) + ", IPC_CREAT|IPC_EXCL|0600)");
    created.shmid = shmid;
    say.say("shmget(key=%s, size=%zu, IPC_CREAT|IPC_EXCL|0600) = %d", sysv::key_text(key).c_str(), size, shmid);

    void* base = ::shmat(shmid, nullptr, 0);
    if (base == reinterpret_cast<void*>(-1))
        throw_errno("shmat(shmid=" + std::to_string(shmid) + ")");
    ShmAttachment attachment(base);
    say.say("shmat(shmid=%d, NULL, 0) = %p", shmid, base);

    // A new segment is zero-filled, so the header reads "not ready" until publish_header()
    // stores the magic, last, with release ordering.
    SharedHeader* header = construct_header(base);
    publish_header(*header, kDefaultDataCapacity, static_cast<std::uint32_t>(::getpid()), 0);
    say.say("header published: magic=0x%08x version=%u data_capacity=%zu", kHeaderMagic, kLayoutVersion,
            kDefaultDataCapacity);
    return attachment;
}

/// Waits, bounded by --timeout, until a reader has taken the reader slot: `sem_op = 0` waits
/// for the semaphore to become zero.
void wait_for_reader(int semid, const Options& options, const Narrator& say) {
    say.say("waiting up to %g s for a reader: start build/01-sysv/reader%s%s", options.timeout_seconds,
            options.name == sysv::kDefaultKeyPath ? "" : " --name ",
            options.name == sysv::kDefaultKeyPath ? "" : options.name.c_str());
    Deadline deadline(options.timeout_seconds);
    for (;;) {
        throw_if_stopped();
        timespec slice = deadline.slice();
        sembuf wait_zero{sysv::kReaderSlot, 0, 0};
        if (::semtimedop(semid, &wait_zero, 1, &slice) == 0)
            break;
        if (errno == EAGAIN && deadline.expired())
            throw Failure("no reader claimed the segment within " + seconds_text(options.timeout_seconds) +
                          ": start the reader while the writer waits, or give the writer a longer --timeout");
        if (errno != EAGAIN && errno != EINTR)
            throw_errno("semtimedop(semid=" + std::to_string(semid) + ", {sem 1 'reader slot' wait for 0})");
    }
    int reader_pid = ::semctl(semid, sysv::kReaderAlive, GETPID); // the last process to operate on it
    say.say("semtimedop(semid=%d, {sem 1 'reader slot' wait for 0}) = 0: reader pid %d claimed the segment", semid,
            reader_pid);
}

/// IPC_STAT shows what the kernel knows; IPC_RMID now, while both processes are attached, only
/// *marks* the segment: its key becomes IPC_PRIVATE (no one else can find it), and the kernel frees
/// it when the last process detaches, even if both of us crash from here on.
void mark_segment_for_removal(Created& created, const Narrator& say) {
    shmid_ds info{};
    if (::shmctl(created.shmid, IPC_STAT, &info) == -1)
        throw_errno("shmctl(shmid=" + std::to_string(created.shmid) + ", IPC_STAT)");
    say.say("shmctl(shmid=%d, IPC_STAT) = 0: size=%zu nattch=%lu cpid=%d lpid=%d mode=0%o", created.shmid,
            static_cast<std::size_t>(info.shm_segsz), static_cast<unsigned long>(info.shm_nattch), info.shm_cpid,
            info.shm_lpid, info.shm_perm.mode & 0777u);
    if (::shmctl(created.shmid, IPC_RMID, nullptr) == -1)
        throw_errno("shmctl(shmid=" + std::to_string(created.shmid) + ", IPC_RMID)");
    say.say("shmctl(shmid=%d, IPC_RMID) = 0: marked for removal; freed when both have detached", created.shmid);
    created.shmid = -1;
}

[[noreturn]] void reader_gone() {
    throw Failure("the reader died before the end of the stream (its 'reader alive' token was released by the "
                  "kernel); cleaned up");
}

/// The hand-off: wait until the data area is free, fill it, publish the block, post "ready".
/// While the reader lives the writer may wait as long as it needs (the reader may be slow).
/// Returns the last block's number, still holding the "block free" unit it took last.
std::uint64_t stream(Input& input, int semid, SharedHeader& header, std::uint8_t* data, const Narrator& say) {
    std::uint64_t sequence = 0;
    std::uint64_t total = 0;
    for (;;) {
        if (sysv::take_unit(semid, sysv::kBlockFree, sysv::kReaderAlive, nullptr) != sysv::Taken::kYes)
            reader_gone();
        std::size_t length = input.next(data, kDefaultDataCapacity, [semid] {
            return sysv::semaphore_value(semid, sysv::kReaderAlive) != 0;
        });
        if (length == 0)
            break; // end of input; the data area is ours, for the end-of-stream block

        publish_block(header, length, ++sequence, false);
        sembuf ready{sysv::kBlockReady, +1, 0};
        if (::semop(semid, &ready, 1) == -1)
            throw_errno("semop(semid=" + std::to_string(semid) + ", {sem 3 'block ready' +1})");
        total += length;
        if (sequence == 1)
            say.say("semop(semid=%d, {sem 3 'block ready' +1}) = 0: block 1, %zu bytes (each further block "
                    "goes the same way, quietly)",
                    semid, length);
    }
    say.say("%llu bytes sent in %llu block(s)", static_cast<unsigned long long>(total),
            static_cast<unsigned long long>(sequence));
    return sequence;
}

/// Marks the end of the stream with an empty block, then waits (bounded) for the reader's
/// confirmation: its last "block free" post, after it has written every byte.
void finish(int semid, SharedHeader& header, std::uint64_t sequence, const Options& options, const Narrator& say) {
    publish_block(header, 0, sequence + 1, true);
    sembuf ready{sysv::kBlockReady, +1, 0};
    if (::semop(semid, &ready, 1) == -1)
        throw_errno("semop(semid=" + std::to_string(semid) + ", {sem 3 'block ready' +1})");
    say.say("end of stream sent (block %llu, empty); waiting up to %g s for the reader to confirm",
            static_cast<unsigned long long>(sequence + 1), options.timeout_seconds);
    Deadline deadline(options.timeout_seconds);
    switch (sysv::take_unit(semid, sysv::kBlockFree, sysv::kReaderAlive, &deadline)) {
    case sysv::Taken::kYes:
        say.say("the reader confirmed the end of the stream");
        return;
    case sysv::Taken::kPeerGone:
        reader_gone();
    case sysv::Taken::kTimedOut:
        throw Failure("the reader did not confirm the end of the stream within the timeout; cleaned up");
    }
}

int run(const Options& options) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    Created created(say);

    key_t key = make_key(options, created, say);
    int semid = create_semaphores(key, options.force, created, say);
    ShmAttachment segment = create_segment(key, options.force, created, say);
    adopt_stale_key_file(options, created);
    auto& header = *static_cast<SharedHeader*>(segment.get());
    Input input(options.operands);

    wait_for_reader(semid, options, say);
    if (!options.keep)
        mark_segment_for_removal(created, say);
    if (input.from_stdin() && ::isatty(STDIN_FILENO))
        say.say("type lines to send; Ctrl-D ends the stream");

    std::uint64_t sequence = stream(input, semid, header, data_area(segment.get()), say);
    finish(semid, header, sequence, options, say);

    // Detaching is not removing: with the segment already marked, this last detach frees it.
    void* base = segment.release();
    if (::shmdt(base) == -1)
        throw_errno("shmdt");
    say.say("shmdt(%p) = 0", base);
    if (options.keep) {
        created.keep = true;
        std::string key_text = sysv::key_text(key);
        std::string remove = "ipcrm -M " + key_text + " -S " + key_text;
        if (!created.key_file.empty())
            remove += "; rm " + created.key_file;
        say.say("--keep: left in place; look with 'ipcs -m -s', remove with '%s'", remove.c_str());
        return kExitSuccess;
    }
    // The semaphores go now: unlike a segment, a semaphore set is removed at once, and a process
    // still waiting on it wakes with EIDRM. The reader has confirmed, so it waits no more.
    if (::semctl(semid, 0, IPC_RMID) == -1)
        throw_errno("semctl(semid=" + std::to_string(semid) + ", IPC_RMID)");
    say.say("semctl(semid=%d, 0, IPC_RMID) = 0", semid);
    created.semid = -1;
    if (!created.key_file.empty()) {
        if (::unlink(created.key_file.c_str()) == -1)
            throw_errno("unlink(\"" + created.key_file + "\")");
        say.say("unlink(\"%s\") = 0", created.key_file.c_str());
        created.key_file.clear();
    }
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the writer; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("writer", [&] {
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = sysv::kDefaultKeyPath;
        spec.keep_and_force = true;
        spec.operands = true;
        Options options = parse_options(argc, argv, spec);
        return options.help ? kExitSuccess : run(options);
    });
}
