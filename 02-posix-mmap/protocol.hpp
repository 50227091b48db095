/// @file 02-posix-mmap/protocol.hpp
/// @brief Chapter 02: what the writer and the reader agree on (the object's name rules, the
///        semaphores inside the mapping, the lock bytes that tell each side the other lives)
///        and the one wait both of them make.
///
/// The synchronisation lives in the shared memory itself, in the header's chapter area
/// (SharedHeader::chapter_area, offset 64), as three process-shared POSIX semaphores and one
/// claim word:
///
/// | offset | size | field        | written by | meaning |
/// |-------:|-----:|--------------|------------|---------|
/// | 64     | 32   | block_ready  | writer posts, reader waits | a block is in the data area |
/// | 128    | 32   | block_free   | reader posts, writer waits | the data area may be refilled; after the end of the stream, the reader's confirmation |
/// | 160    | 4    | reader_pid   | reader, once (compare-and-swap from 0) | the claim: 0 until a reader claims; then that reader's pid, as it says (shown in messages, never acted on) |
/// | 192    | 32   | claimed      | reader posts once, writer waits | a reader has claimed the object |
///
/// A `sem_t` is 32 bytes of glibc-private state: a program in another language can find it but
/// not use it. It works between processes only because it is in memory both of them map and was
/// initialised once, by the writer, with `sem_init(sem, 1, value)` (pshared = 1).
///
/// Liveness is not in the memory at all: each side holds an open file description lock
/// (`fcntl(2)` `F_OFD_SETLK`) on one byte of the object, the writer on byte 0 and the reader on
/// byte 1, and asks about the other's byte with `F_OFD_GETLK`. The kernel drops a lock when the
/// last descriptor of its open file description closes, which a process's death does; no pid
/// is involved, so a reused pid cannot pass for the peer, and peers in different pid namespaces
/// that share `/dev/shm` see each other.
#pragma once

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

#include <fcntl.h>
#include <semaphore.h>
#include <sys/stat.h>
#include <time.h>

#include "error.hpp"
#include "layout.hpp"
#include "options.hpp"
#include "wait.hpp"

namespace posix {

/// An address as narration shows it: "0x7f...".
inline std::string address_text(const void* address) {
    char text[32];
    std::snprintf(text, sizeof text, "%p", address);
    return text;
}

/// The default `--name`: a `shm_open` name, which glibc turns into `/dev/shm/shm-tutorial-02`.
inline constexpr const char* kDefaultName = "/shm-tutorial-02";

/// Chapter 02's words in the header's chapter area: the semaphores of the hand-off and the claim.
/// Each `sem_t` has its own 64-byte line; a `sem_wait` writes to a semaphore too (its waiter
/// count), so a line is not written by one side only.
/// A glibc `sem_t` is 32 bytes on 64-bit machines and 16 on 32-bit ARM: `alignas(32)` keeps
/// `reader_pid` at offset 96 on both, so that only the opaque semaphores differ between them.
struct HandOff {
    alignas(64) sem_t block_ready;                      ///< posted by the writer
    alignas(64) sem_t block_free;                       ///< posted by the reader
    alignas(32) std::atomic<std::uint32_t> reader_pid;  ///< set once by the reader that claims the object
    alignas(64) sem_t claimed;                          ///< posted once by that reader
};
static_assert(sizeof(sem_t) <= 32, "a sem_t fits its 32 bytes (glibc: 32 on 64-bit machines, 16 on 32-bit ARM)");
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(HandOff) <= sizeof(shmtut::SharedHeader::chapter_area));
static_assert(offsetof(HandOff, block_ready) == 0 && offsetof(HandOff, block_free) == 64 &&
              offsetof(HandOff, reader_pid) == 96 && offsetof(HandOff, claimed) == 128);

/// The hand-off words inside a mapped header.
inline HandOff& hand_off_in(shmtut::SharedHeader& header) {
    return *reinterpret_cast<HandOff*>(header.chapter_area);
}

/// Bit of SharedHeader::flags: the writer finished the stream and left the object in place on
/// purpose (`--keep`). A later reader says so, instead of calling the writer dead.
inline constexpr std::uint32_t kKeptFlag = 1;

/// The byte of the object on which the writer holds its OFD lock while it runs.
inline constexpr off_t kWriterLockByte = 0;
/// The byte of the object on which the reader that claimed it holds its OFD lock.
inline constexpr off_t kReaderLockByte = 1;

/// The lock a side takes on its own byte: an exclusive (write) lock on one byte. Needs a
/// descriptor opened for writing.
inline struct flock lock_on(off_t byte) {
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = byte;
    lock.l_len = 1;
    lock.l_pid = 0; // must be 0 for the F_OFD_* commands, or they fail with EINVAL
    return lock;
}

/// True while another open file description holds a lock on `byte` of the object behind `fd`.
/// `F_OFD_GETLK` only asks: it places nothing and disturbs no one. It answers `F_UNLCK` when the
/// lock could be placed, that is when nobody else holds the byte (a lock of our own open file
/// description never conflicts with itself), and it reports `l_pid = -1` for an OFD lock: there
/// is no pid to trust, by design. Throws SysError.
inline bool lock_held(int fd, off_t byte) {
    struct flock probe = lock_on(byte);
    if (::fcntl(fd, F_OFD_GETLK, &probe) == -1)
        shmtut::throw_errno("fcntl(fd=" + std::to_string(fd) + ", F_OFD_GETLK, byte " + std::to_string(byte) + ")");
    return probe.l_type != F_UNLCK;
}

/// The peer, as this side sees it: its lock byte on the object this side holds open.
struct PeerLock {
    int fd;    ///< this side's descriptor of the object (kept open while the stream runs)
    off_t byte; ///< kWriterLockByte or kReaderLockByte
    /// True while the peer lives (and holds its byte).
    bool alive() const { return lock_held(fd, byte); }
};

/// Checks a `shm_open` name the way the notes explain it: one leading '/', no other '/', at
/// least one character after it, at most NAME_MAX (255) after it, and not "." or "..".
/// Throws UsageError (exit status 2).
inline void check_shm_name(const std::string& name) {
    if (name.size() < 2 || name[0] != '/')
        throw shmtut::UsageError("--name '" + name + "' must be '/' followed by a name, like /shm-tutorial-02");
    if (name.find('/', 1) != std::string::npos)
        throw shmtut::UsageError("--name '" + name + "' may hold no '/' after the first one");
    if (name.size() - 1 > NAME_MAX)
        throw shmtut::UsageError("--name is " + std::to_string(name.size() - 1) + " characters after the '/', more than NAME_MAX (" +
                                 std::to_string(NAME_MAX) + ")");
    if (name == "/." || name == "/..")
        throw shmtut::UsageError("--name '" + name + "' is not a valid object name");
}

/// What the pair shares: a tmpfs object by `shm_open` name, or (with `--file`) a regular file
/// by path, to compare the two. The programs make the calls themselves; this only names them.
struct ObjectLocation {
    bool is_file = false; ///< true with --file
    std::string path; ///< the shm_open name ("/NAME") or the file's path

    const char* open_call() const { return is_file ? "open" : "shm_open"; }     ///< for narration
    const char* unlink_call() const { return is_file ? "unlink" : "shm_unlink"; } ///< for narration
    /// The directory whose file system holds it, for `df -h`.
    std::string directory() const {
        if (!is_file)
            return "/dev/shm";
        std::string::size_type slash = path.rfind('/');
        return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    }
    /// How a person removes it by hand.
    std::string removal_command() const { return "rm " + (is_file ? path : "/dev/shm" + path); }
    /// Its owner, from `lstat` of its file (glibc keeps `shm_open` names in /dev/shm), which
    /// needs no permission on the object itself; `(uid_t)-1` when there is nothing there.
    uid_t owner() const {
        struct stat info {};
        return ::lstat((is_file ? path : "/dev/shm" + path).c_str(), &info) == 0 ? info.st_uid : static_cast<uid_t>(-1);
    }
    /// The end of an error line when another user's object stands at the name: whose it is and
    /// which name to use instead (see another_users_name()).
    std::string another_users(uid_t owner_uid) const {
        if (is_file)
            return path + " belongs to " + shmtut::user_text(owner_uid) + ", another user: give --file a path of your own";
        return shmtut::another_users_name("/dev/shm" + path, path, owner_uid);
    }
};

/// The `--file PATH` option, which makes `target` a regular file.
inline shmtut::ExtraOption file_option(ObjectLocation& target) {
    return {"--file", true, [&target](const std::string& path) {
                if (path.empty())
                    throw shmtut::UsageError("--file needs a path");
                target.is_file = true;
                target.path = path;
            }};
}

/// Completes `target` from the parsed options: `--name` unless `--file` was given, checked.
inline void resolve_target(ObjectLocation& target, const shmtut::Options& options) {
    if (target.is_file && options.name != kDefaultName)
        throw shmtut::UsageError("--name and --file do not go together: one names a tmpfs object, the other a file");
    if (!target.is_file) {
        check_shm_name(options.name);
        target.path = options.name;
    }
}

/// How wait_post() ended.
enum class Waited { kYes, kPeerGone, kTimedOut };

/// Waits for one post of `semaphore` (`sem_clockwait` on CLOCK_MONOTONIC, so a change of the
/// wall clock cannot stretch or cut the wait, as it would with `sem_timedwait`), in slices of
/// at most one second. Between slices it asks whether the peer still holds its lock (`peer` may
/// be null: no peer yet) and checks `deadline` (may be null: no bound while the peer lives).
/// `after_each_slice`, if set, runs after every return of `sem_clockwait`, before its result is
/// believed (the reader checks there that its mapping was not shrunk under it).
/// SIGINT/SIGTERM interrupt the wait with EINTR and throw Interrupted.
inline Waited wait_post(sem_t* semaphore, const PeerLock* peer, const shmtut::Deadline* deadline, const char* what,
                        const std::function<void()>& after_each_slice = {}) {
    const std::string call = std::string("sem_clockwait(") + what + ", CLOCK_MONOTONIC)";
    for (;;) {
        shmtut::throw_if_stopped();
        timespec until{};
        ::clock_gettime(CLOCK_MONOTONIC, &until);
        timespec slice = deadline != nullptr ? deadline->slice(shmtut::kLivenessInterval)
                                             : shmtut::to_timespec(shmtut::kLivenessInterval);
        until.tv_sec += slice.tv_sec;
        until.tv_nsec += slice.tv_nsec;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec += 1;
            until.tv_nsec -= 1000000000L;
        }
        int result = ::sem_clockwait(semaphore, CLOCK_MONOTONIC, &until);
        int error = errno;
        if (after_each_slice)
            after_each_slice();
        if (result == 0)
            return Waited::kYes;
        if (error == EINTR)
            continue;
        if (error != ETIMEDOUT)
            shmtut::throw_error(error, call);
        if (peer != nullptr && !peer->alive()) {
            // The peer may have posted just before it exited: take that post first.
            int taken = ::sem_trywait(semaphore);
            if (after_each_slice)
                after_each_slice();
            return taken == 0 ? Waited::kYes : Waited::kPeerGone;
        }
        if (deadline != nullptr && deadline->expired())
            return Waited::kTimedOut;
    }
}

} // namespace posix
