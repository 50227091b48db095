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
/// The calls it teaches, in order: `ftok(3)` turns a path into a key (after `lstat(2)`: a
/// symbolic link at the path is refused, since `ftok` would follow it); `semget(2)` and
/// `semctl(2)` (`SETALL`) create and initialise the semaphores *before* the segment exists, so a
/// reader, which looks the set up first, can tell a live writer from a dead one while it waits
/// for the segment; `semop(2)` with `SEM_UNDO` takes the "writer alive" token, which also tells
/// a second writer on the same key that this one is running; `shmget(2)` with
/// `IPC_CREAT|IPC_EXCL|0600` creates the segment and `shmat(2)` maps it; `semtimedop(2)` waits,
/// bounded, for a reader to claim it; `shmctl(2)` (`IPC_STAT`, then `IPC_RMID`) shows the
/// segment and marks it for removal as soon as the reader is attached; each block is handed
/// over with `semop`; at the end `shmdt(2)` detaches and `semctl(IPC_RMID)` removes the
/// semaphores.
///
/// Step 1 of the chapter, hello_writer.cpp, makes the same calls with none of the robustness.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
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
  --force            replace a segment or semaphore set that an earlier run left under
                     the same key (it crashed, or used --keep); never a running writer's
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage error.
)";

/// The objects this writer owns, so that they are removed on every path. The story below
/// removes each object at the moment the lesson needs and clears its field; the destructor is
/// the safety net on error paths (a failure, Ctrl-C) and removes whatever is still recorded.
struct OwnedObjects {
    explicit OwnedObjects(const Narrator& narrator) : say(narrator) {}
    OwnedObjects(const OwnedObjects&) = delete;
    OwnedObjects& operator=(const OwnedObjects&) = delete;

    const Narrator& say;
    bool keep = false;
    std::string key_file; ///< non-empty once the key file is ours to remove
    int semid = -1;       ///< the semaphore set, until removed
    int shmid = -1;       ///< the segment, until marked for removal

    ~OwnedObjects() {
        if (keep)
            return;
        if (shmid != -1)
            sysv::narrate_cleanup(say, "shmctl(shmid=" + std::to_string(shmid) + ", IPC_RMID)",
                                  ::shmctl(shmid, IPC_RMID, nullptr), "cleaning up");
        if (semid != -1)
            sysv::narrate_cleanup(say, "semctl(semid=" + std::to_string(semid) + ", 0, IPC_RMID)",
                                  ::semctl(semid, 0, IPC_RMID), "cleaning up");
        if (!key_file.empty())
            sysv::narrate_cleanup(say, "unlink(\"" + key_file + "\")", ::unlink(key_file.c_str()), "cleaning up");
    }
};

/// ftok(3) needs an existing file: it builds the key from the file's inode and device numbers
/// and the project id, so every process naming the same file gets the same key. A key file this
/// writer creates is removed at the end (see also adopt_stale_key_file()). `O_EXCL` never
/// follows a symbolic link and `O_NOFOLLOW` says so; an existing path is checked with `lstat`
/// before `ftok`, which would follow one. `stat(2)` then records the file's whole identity
/// (`st_dev`, `st_ino`), of which the key keeps only 24 bits: the header carries it, so that a
/// reader whose different key file happens to give the same key can tell (see protocol.hpp).
key_t make_key(const Options& options, OwnedObjects& owned, sysv::KeyFileIdentity& identity, const Narrator& say) {
    const std::string& path = options.name;
    const std::string create = "open(\"" + path + "\", O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW, 0600)";
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd != -1) {
        owned.key_file = path;
        say.say("%s = %d: created the key file", create.c_str(), fd);
        ssize_t written = ::write(fd, sysv::kKeyFileMarker.data(), sysv::kKeyFileMarker.size());
        int write_errno = errno;
        int closed = ::close(fd);
        if (written == -1)
            throw_error(write_errno, "write(\"" + path + "\")");
        if (written != static_cast<ssize_t>(sysv::kKeyFileMarker.size()))
            throw Failure("write(\"" + path + "\"): short write to the key file");
        if (closed == -1)
            throw_errno("close(\"" + path + "\")");
    } else if (errno == EEXIST) {
        sysv::refuse_symbolic_link(path);
    } else {
        throw_errno(create, "--name must be a path this user can create or read");
    }
    const std::string call = "ftok(\"" + path + "\", 'S')";
    key_t key = ::ftok(path.c_str(), sysv::kProjectId);
    if (key == -1)
        throw_errno(call);
    say.say("%s = %s", call.c_str(), sysv::key_text(key).c_str());
    identity = sysv::key_file_identity(path);
    return key;
}

/// True while the writer that owns the set `semid` is running: it holds "writer alive", a
/// `SEM_UNDO` token the kernel takes back when that writer exits, however it exits. A set whose
/// `sem_otime` is still 0 belongs to a writer between its `semget` and its first `semop`
/// (microseconds), or to one that died there: give it a moment before calling it dead.
bool owner_alive(int semid) {
    Deadline settle(2.0);
    while (!sysv::set_initialised(semid) && !settle.expired()) {
        pause_briefly();
        throw_if_stopped();
    }
    return sysv::semaphore_value(semid, sysv::kWriterAlive) != 0;
}

/// The key file identity in the header of the segment under `key`, if there is one to look at:
/// a running writer's segment is found by key until a reader claims it (the writer then marks
/// it for removal, which hides the key), and its header is ready once it is published.
std::optional<sysv::KeyFileIdentity> running_writer_key_file(key_t key) {
    int shmid = ::shmget(key, 0, 0);
    shmid_ds info{};
    if (shmid == -1 || ::shmctl(shmid, IPC_STAT, &info) == -1 || info.shm_segsz < kHeaderSize)
        return std::nullopt;
    void* base = ::shmat(shmid, nullptr, SHM_RDONLY);
    if (base == reinterpret_cast<void*>(-1))
        return std::nullopt;
    ShmAttachment attachment(base);
    const auto& header = *static_cast<const SharedHeader*>(base);
    if (!header_ready(header))
        return std::nullopt;
    return sysv::load_key_file_identity(header);
}

/// Our `semget(IPC_CREAT|IPC_EXCL)` found a set under our key. Whose is it? A running writer's
/// is refused, even with --force: --force replaces only what a run that is no longer running
/// left (crashed, or kept with --keep). If the running writer's header names another key file
/// than ours, the two files collide in `ftok`, and the message says so: "give this writer
/// another --name" would be no advice, since it already has another name. Another user's set
/// is named with its owner. Otherwise the user is told the ipcrm command, or, with
/// --force, the old segment and then the old set are removed: the segment first, while the old
/// set still holds the key, so that no new writer can have put a segment there meanwhile.
void replace_stale_objects(const std::string& create_call, key_t key, const sysv::KeyFileIdentity& identity,
                           const Options& options, const Narrator& say) {
    const std::string key_text = sysv::key_text(key);
    const std::string lookup = "semget(key=" + key_text + ", 0, 0)";
    int old_semid = ::semget(key, 0, 0);
    if (old_semid == -1) {
        if (errno == ENOENT)
            return; // removed meanwhile: the caller tries again
        throw_errno(lookup, errno == EACCES ? "another user's semaphore set uses this key: give --name another path" : "");
    }
    // Another user's set is neither ours to judge alive or dead nor to remove, --force or not
    // (and its mode 0600 would refuse us IPC_STAT): say whose it is.
    if (uid_t owner = sysv::set_owner(old_semid); owner != ::geteuid() && owner != static_cast<uid_t>(-1))
        throw_error(EEXIST, create_call,
                    another_users_name("the semaphore set " + std::to_string(old_semid) + " under this key", options.name,
                                       owner));
    const bool force = options.force;
    if (owner_alive(old_semid)) {
        std::string running = "a writer is running there (pid " +
                              std::to_string(sysv::semaphore_pid(old_semid, sysv::kWriterAlive)) +
                              " holds semaphore 0 'writer alive' of set " + std::to_string(old_semid) + ")";
        if (auto other = running_writer_key_file(key); other && *other != identity)
            throw_error(EEXIST, create_call,
                        running + " for another key file (" + sysv::identity_text(*other) + ", this one is " +
                            sysv::identity_text(identity) + "): an ftok collision, since ftok keeps only the low 8 bits "
                            "of the device and the low 16 bits of the inode; give --name a key file whose inode differs "
                            "in its low 16 bits or that is on another file system; --force never replaces a running "
                            "writer's objects");
        throw_error(EEXIST, create_call,
                    running + ": start a reader for it, or give this writer another --name; --force replaces only "
                        "what a writer that is no longer running left (if that writer uses another key file, "
                        "the two collide in ftok: give a key file whose inode differs in its low 16 bits)");
    }
    if (!force)
        throw_error(EEXIST, create_call,
                    "objects that an earlier run left (it crashed, or kept them with --keep) use this key; "
                    "no writer is running there: remove them with 'ipcrm -M " + key_text + " -S " + key_text +
                        "' (it reports any that is already gone), or start the writer with --force");
    if (int old_shmid = ::shmget(key, 0, 0); old_shmid != -1)
        sysv::narrate_cleanup(say, "--force: shmctl(shmid=" + std::to_string(old_shmid) + ", IPC_RMID)",
                              ::shmctl(old_shmid, IPC_RMID, nullptr), "removed the old segment");
    sysv::narrate_cleanup(say, "--force: semctl(semid=" + std::to_string(old_semid) + ", 0, IPC_RMID)",
                          ::semctl(old_semid, 0, IPC_RMID), "removed the old semaphore set");
}

/// The semaphores exist and are initialised before the segment does. A reader looks them up
/// first (`semget`, then `sem_otime != 0` says initialised) and only then looks for the
/// segment, so it can tell a dead writer from a slow one while it waits; and a segment found
/// without a set beside it is always stale (see create_segment()).
int create_semaphores(key_t key, const sysv::KeyFileIdentity& identity, const Options& options, OwnedObjects& owned,
                      const Narrator& say) {
    const std::string call = "semget(key=" + sysv::key_text(key) + ", nsems=5, IPC_CREAT|IPC_EXCL|0600)";
    int semid = ::semget(key, sysv::kSemaphoreCount, IPC_CREAT | IPC_EXCL | 0600);
    if (semid == -1 && errno == EEXIST) {
        replace_stale_objects(call, key, identity, options, say);
        semid = ::semget(key, sysv::kSemaphoreCount, IPC_CREAT | IPC_EXCL | 0600);
    }
    if (semid == -1)
        throw_errno(call);
    owned.semid = semid;
    say.say("%s = %d", call.c_str(), semid);

    unsigned short initial[sysv::kSemaphoreCount] = {};
    initial[sysv::kReaderSlot] = 1; // one reader may claim the segment
    initial[sysv::kBlockFree] = 1;  // the data area starts empty
    sysv::semun arg{};
    arg.array = initial;
    const std::string set_all =
        "semctl(semid=" + std::to_string(semid) + ", SETALL, {alive=0, slot=1, reader=0, ready=0, free=1})";
    if (::semctl(semid, 0, SETALL, arg) == -1)
        throw_errno(set_all);
    say.say("%s = 0", set_all.c_str());

    // SEM_UNDO: if this process dies, even by SIGKILL, the kernel takes the token back, and a
    // reader waiting on us sees kWriterAlive drop to 0.
    const std::string take_token = "semop(semid=" + std::to_string(semid) + ", {sem 0 'writer alive' +1, SEM_UNDO})";
    sembuf alive{sysv::kWriterAlive, +1, SEM_UNDO};
    if (::semop(semid, &alive, 1) == -1)
        throw_errno(take_token);
    say.say("%s = 0", take_token.c_str());
    return semid;
}

/// A key file a crashed writer left (it holds the marker) becomes ours to remove, but only once
/// our objects live under its key: a writer that fails because old objects still use the key
/// (or because a writer is running there) must leave the file, or the key of those objects
/// could not be found again.
void adopt_stale_key_file(const Options& options, OwnedObjects& owned) {
    if (owned.key_file.empty() && sysv::is_writer_key_file(options.name))
        owned.key_file = options.name;
}

/// Creates the segment the reader looks for, attaches it and publishes an empty header.
/// A segment already under our key has no set beside it (we created the set exclusively, and a
/// writer always creates its set first), so no running writer owns it: it is stale.
ShmAttachment create_segment(key_t key, const sysv::KeyFileIdentity& identity, bool force, OwnedObjects& owned,
                             const Narrator& say) {
    const std::size_t size = kHeaderSize + kDefaultDataCapacity;
    const std::string key_text = sysv::key_text(key);
    const std::string call = "shmget(key=" + key_text + ", size=" + std::to_string(size) + ", IPC_CREAT|IPC_EXCL|0600)";
    int shmid = ::shmget(key, size, IPC_CREAT | IPC_EXCL | 0600);
    if (shmid == -1 && errno == EEXIST) {
        if (!force)
            throw_error(EEXIST, call,
                        "a segment that an earlier run left uses this key (no writer is running there); remove it "
                        "with 'ipcrm -M " + key_text + "', or start the writer with --force");
        if (int old_shmid = ::shmget(key, 0, 0); old_shmid != -1)
            sysv::narrate_cleanup(say, "--force: shmctl(shmid=" + std::to_string(old_shmid) + ", IPC_RMID)",
                                  ::shmctl(old_shmid, IPC_RMID, nullptr), "removed the old segment");
        shmid = ::shmget(key, size, IPC_CREAT | IPC_EXCL | 0600);
    }
    if (shmid == -1)
        throw_errno(call);
    owned.shmid = shmid;
    say.say("%s = %d", call.c_str(), shmid);

    const std::string attach = "shmat(shmid=" + std::to_string(shmid) + ", NULL, 0)";
    void* base = ::shmat(shmid, nullptr, 0);
    if (base == reinterpret_cast<void*>(-1))
        throw_errno(attach);
    ShmAttachment attachment(base);
    say.say("%s = %p", attach.c_str(), base);

    // A new segment is zero-filled, so the header reads "not ready" until publish_header()
    // stores the magic, last, with release ordering.
    // The key file's identity goes into the chapter area first, so the magic publishes it too.
    SharedHeader* header = construct_header(base);
    sysv::store_key_file_identity(*header, identity);
    publish_header(*header, kDefaultDataCapacity, static_cast<std::uint32_t>(::getpid()), 0);
    say.say("header published: magic=0x%08x version=%u data_capacity=%zu", kHeaderMagic, kLayoutVersion,
            kDefaultDataCapacity);
    return attachment;
}

/// Waits, bounded by --timeout, until a reader has taken the reader slot: `sem_op = 0` waits
/// for the semaphore to become zero.
void wait_for_reader(int semid, const Options& options, const Narrator& say) {
    say.say("waiting up to %g s for a reader: start %s%s%s", options.timeout_seconds, sibling_program("reader").c_str(),
            options.name == sysv::kDefaultKeyPath ? "" : " --name ",
            options.name == sysv::kDefaultKeyPath ? "" : options.name.c_str());
    const std::string call = "semtimedop(semid=" + std::to_string(semid) + ", {sem 1 'reader slot' wait for 0})";
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
            throw_errno(call);
    }
    // GETPID on "reader alive": the last process to operate on it, the reader that claimed.
    say.say("%s = 0: reader pid %d claimed the segment", call.c_str(), sysv::semaphore_pid(semid, sysv::kReaderAlive));
}

/// IPC_STAT shows what the kernel knows; IPC_RMID now, while both processes are attached, only
/// *marks* the segment: its key becomes IPC_PRIVATE (no one can find it by key any more; Linux
/// still lets a process that knows the id attach it), and the kernel frees it when the last
/// process detaches, even if both of us crash from here on.
void mark_segment_for_removal(OwnedObjects& owned, const Narrator& say) {
    const std::string stat = "shmctl(shmid=" + std::to_string(owned.shmid) + ", IPC_STAT)";
    shmid_ds info{};
    if (::shmctl(owned.shmid, IPC_STAT, &info) == -1)
        throw_errno(stat);
    say.say("%s = 0: size=%zu nattch=%lu cpid=%d lpid=%d mode=0%o", stat.c_str(),
            static_cast<std::size_t>(info.shm_segsz), static_cast<unsigned long>(info.shm_nattch), info.shm_cpid,
            info.shm_lpid, info.shm_perm.mode & 0777u);
    const std::string remove = "shmctl(shmid=" + std::to_string(owned.shmid) + ", IPC_RMID)";
    if (::shmctl(owned.shmid, IPC_RMID, nullptr) == -1)
        throw_errno(remove);
    say.say("%s = 0: marked for removal; freed when both have detached", remove.c_str());
    owned.shmid = -1;
}

[[noreturn]] void reader_gone() {
    throw Failure("the reader died before the end of the stream (its 'reader alive' token was released by the "
                  "kernel); cleaned up");
}

/// Posts "block ready" (`semop`, no SEM_UNDO: see protocol.hpp).
void post_block_ready(int semid, const std::string& call) {
    sembuf ready{sysv::kBlockReady, +1, 0};
    if (::semop(semid, &ready, 1) == -1)
        throw_errno(call);
}

/// The hand-off: wait until the data area is free, fill it, publish the block, post "ready".
/// While the reader lives the writer may wait as long as it needs (the reader may be slow, the
/// input may pause: Input::next() looks at "reader alive" every second while it waits).
/// Returns the last block's number, still holding the "block free" unit it took last.
std::uint64_t stream(Input& input, int semid, SharedHeader& header, std::uint8_t* data, const Narrator& say) {
    const std::string post_ready = "semop(semid=" + std::to_string(semid) + ", {sem 3 'block ready' +1})";
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
        post_block_ready(semid, post_ready);
        total += length;
        if (sequence == 1)
            say.say("%s = 0: block 1, %zu bytes (each further block goes the same way, quietly)", post_ready.c_str(),
                    length);
    }
    say.say("%llu bytes sent in %llu block(s)", static_cast<unsigned long long>(total),
            static_cast<unsigned long long>(sequence));
    return sequence;
}

/// Marks the end of the stream with an empty block, then waits (bounded) for the reader's
/// confirmation: its last "block free" post, after it has written every byte.
void finish(int semid, SharedHeader& header, std::uint64_t sequence, const Options& options, const Narrator& say) {
    publish_block(header, 0, sequence + 1, true);
    post_block_ready(semid, "semop(semid=" + std::to_string(semid) + ", {sem 3 'block ready' +1})");
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
    OwnedObjects owned(say);

    sysv::KeyFileIdentity identity;
    key_t key = make_key(options, owned, identity, say);
    int semid = create_semaphores(key, identity, options, owned, say);
    ShmAttachment segment = create_segment(key, identity, options.force, owned, say);
    adopt_stale_key_file(options, owned);
    auto& header = *static_cast<SharedHeader*>(segment.get());
    Input input(options.operands);

    wait_for_reader(semid, options, say);
    if (!options.keep)
        mark_segment_for_removal(owned, say);
    if (input.from_stdin() && ::isatty(STDIN_FILENO))
        say.say("type lines to send; Ctrl-D ends the stream");

    std::uint64_t sequence = stream(input, semid, header, data_area(segment.get()), say);
    finish(semid, header, sequence, options, say);

    // Detaching is not removing: with the segment already marked, this last detach frees it.
    void* base = segment.release();
    const std::string detach = "shmdt(" + sysv::pointer_text(base) + ")";
    if (::shmdt(base) == -1)
        throw_errno(detach);
    say.say("%s = 0", detach.c_str());
    if (options.keep) {
        owned.keep = true;
        std::string key_text = sysv::key_text(key);
        std::string remove = "ipcrm -M " + key_text + " -S " + key_text;
        if (!owned.key_file.empty())
            remove += "; rm " + owned.key_file;
        say.say("--keep: left in place; look with 'ipcs -m -s', remove with '%s'", remove.c_str());
        return kExitSuccess;
    }
    // The semaphores go now: unlike a segment, a semaphore set is removed at once, and a process
    // still waiting on it wakes with EIDRM. The reader has confirmed, so it waits no more.
    const std::string remove_set = "semctl(semid=" + std::to_string(semid) + ", 0, IPC_RMID)";
    if (::semctl(semid, 0, IPC_RMID) == -1)
        throw_errno(remove_set);
    say.say("%s = 0", remove_set.c_str());
    owned.semid = -1;
    if (!owned.key_file.empty()) {
        const std::string unlink_key = "unlink(\"" + owned.key_file + "\")";
        if (::unlink(owned.key_file.c_str()) == -1)
            throw_errno(unlink_key);
        say.say("%s = 0", unlink_key.c_str());
        owned.key_file.clear();
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
