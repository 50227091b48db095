/// @file 01-sysv/protocol.hpp
/// @brief Chapter 01: what the writer and the reader agree on (the key file, the semaphore
///        set's layout) and the one wait both of them make.
///
/// The writer and the reader find the same System V objects through one key, made by
/// `ftok(3)` from the `--name` path and kProjectId. Under that key live two objects in two
/// separate namespaces: the segment (`shmget`) and a set of five semaphores (`semget`):
///
/// | # | semaphore     | starts | who changes it | `SEM_UNDO` | meaning |
/// |---|---------------|--------|----------------|------------|---------|
/// | 0 | kWriterAlive  | 0      | writer +1 once | yes        | 1 while the writer lives: the kernel undoes the +1 when it exits or is killed |
/// | 1 | kReaderSlot   | 1      | reader -1 once | no         | 0 once a reader has claimed the segment: a second reader finds it taken |
/// | 2 | kReaderAlive  | 0      | reader +1 once | yes        | 1 while the claiming reader lives |
/// | 3 | kBlockReady   | 0      | writer +1, reader -1 | no   | a block is in the data area |
/// | 4 | kBlockFree    | 1      | reader +1, writer -1 | no   | the data area may be refilled (after the end of the stream: the reader's confirmation) |
///
/// `SEM_UNDO` only on the lifetime tokens: undo values add up per process (`semadj`, at most
/// 32767, so a writer that posted every block with it would fail with ERANGE after about 2 GiB
/// of 64 KiB blocks), and they are applied at exit, which would take back the writer's last
/// post before the reader had read it.
///
/// The header's chapter area holds one thing in this chapter, the key file's identity
/// (KeyFileRecord, at offset 64): `ftok` keeps only 24 bits of the file's device and inode
/// numbers, so two files can give one key, and only the whole numbers tell the reader whose
/// segment it found.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <string_view>

#include <fcntl.h>
#include <sys/sem.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "wait.hpp"

namespace sysv {

/// The default `--name`: the path `ftok` turns into a key. The writer creates it if needed.
inline constexpr const char* kDefaultKeyPath = "/tmp/shm-tutorial-01.key";
/// `ftok`'s project id: only its low 8 bits count.
inline constexpr int kProjectId = 'S';

/// The semaphores of the set, by number.
enum Semaphore : unsigned short {
    kWriterAlive = 0,
    kReaderSlot = 1,
    kReaderAlive = 2,
    kBlockReady = 3,
    kBlockFree = 4,
    kSemaphoreCount = 5
};

/// What a writer writes into a key file it creates. A key file that holds exactly this, is a
/// regular file and belongs to this user was made by a writer and is removed with the writer's
/// objects (by the writer at the end, or by the reader that finds the writer dead); any other
/// file named by `--name` is the user's and stays.
inline constexpr std::string_view kKeyFileMarker = "shm-tutorial 01-sysv key file: ftok() reads its inode\n";

/// True if `path` is a key file a writer of this user created (it holds kKeyFileMarker).
/// `O_NOFOLLOW`: a symbolic link at `path` is never a key file (open fails with ELOOP).
inline bool is_writer_key_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd == -1)
        return false;
    struct stat file {};
    char content[128];
    ssize_t n = -1;
    if (::fstat(fd, &file) == 0 && S_ISREG(file.st_mode) && file.st_uid == ::geteuid())
        n = ::read(fd, content, sizeof content);
    ::close(fd); // read-only: nothing to lose if close fails
    return n == static_cast<ssize_t>(kKeyFileMarker.size()) &&
           std::string_view(content, kKeyFileMarker.size()) == kKeyFileMarker;
}

/// Refuses a symbolic link at the key path. `ftok(3)` calls `stat`, which follows links: a link
/// planted at `--name` would hand this program the key of whatever it points to. So both
/// programs look at the path itself with `lstat(2)` first and never follow, nor remove through,
/// a link. A missing path is not refused (the reader waits for it; the writer creates it).
inline void refuse_symbolic_link(const std::string& path) {
    const std::string call = "lstat(\"" + path + "\")";
    struct stat file {};
    if (::lstat(path.c_str(), &file) == -1) {
        if (errno == ENOENT)
            return;
        shmtut::throw_errno(call);
    }
    if (S_ISLNK(file.st_mode))
        throw shmtut::Failure(call + ": " + path + " is a symbolic link: refusing to follow it (ftok would take "
                              "the key of whatever it points to); give --name the path of a regular file");
}

/// A file's identity, whole: what `ftok(3)` reads with `stat(2)` and then cuts down to the low
/// 8 bits of `st_dev` and the low 16 bits of `st_ino`.
struct KeyFileIdentity {
    std::uint64_t device = 0; ///< st_dev
    std::uint64_t inode = 0;  ///< st_ino

    /// The same file: both numbers equal.
    bool operator==(const KeyFileIdentity&) const = default;
};

/// `dev:ino 40:65539`, the numbers `stat -c %d:%i` prints.
inline std::string identity_text(const KeyFileIdentity& identity) {
    return "dev:ino " + std::to_string(identity.device) + ":" + std::to_string(identity.inode);
}

/// The identity of the file at `path`, by `stat(2)`, which follows links as `ftok` does (both
/// programs have refused a link at the path already).
inline KeyFileIdentity key_file_identity(const std::string& path) {
    struct stat file {};
    if (::stat(path.c_str(), &file) == -1)
        shmtut::throw_errno("stat(\"" + path + "\")");
    return {static_cast<std::uint64_t>(file.st_dev), static_cast<std::uint64_t>(file.st_ino)};
}

/// What chapter 01 keeps in the header's chapter area (offset 64, 16 bytes): the identity of the
/// key file the writer gave to `ftok`. The writer constructs it before publishing the header
/// and never changes it; the reader loads it after the magic (acquire), once, and compares it
/// with its own key file's before it claims the segment. Lock-free atomics, as the header's
/// rules ask: a peer's later change is then a value read, not undefined behaviour.
struct KeyFileRecord {
    std::atomic<std::uint64_t> device; ///< st_dev of the writer's key file (offset 64)
    std::atomic<std::uint64_t> inode;  ///< st_ino of the writer's key file (offset 72)
};

static_assert(offsetof(shmtut::SharedHeader, chapter_area) + sizeof(KeyFileRecord) <= shmtut::kHeaderSize);
static_assert(sizeof(KeyFileRecord) == 16 && alignof(KeyFileRecord) <= 64);

/// The writer: constructs the record in a header not yet published (publish_header() then
/// stores the magic with release ordering, after it).
inline void store_key_file_identity(shmtut::SharedHeader& header, const KeyFileIdentity& identity) {
    auto* record = new (header.chapter_area) KeyFileRecord{};
    record->device.store(identity.device, std::memory_order_relaxed);
    record->inode.store(identity.inode, std::memory_order_relaxed);
}

/// The reader: one local copy of the writer's record, taken after header_ready() (acquire).
inline KeyFileIdentity load_key_file_identity(const shmtut::SharedHeader& header) {
    const auto* record = std::launder(reinterpret_cast<const KeyFileRecord*>(header.chapter_area));
    return {record->device.load(std::memory_order_relaxed), record->inode.load(std::memory_order_relaxed)};
}

/// The `semun` argument of `semctl(2)`, which the program must define itself.
union semun {
    int val;               ///< for SETVAL
    semid_ds* buf;         ///< for IPC_STAT and IPC_SET
    unsigned short* array; ///< for GETALL and SETALL
};

/// The value of one semaphore (`semctl(GETVAL)`).
inline int semaphore_value(int semid, unsigned short semaphore) {
    int value = ::semctl(semid, semaphore, GETVAL);
    if (value == -1)
        shmtut::throw_errno("semctl(semid=" + std::to_string(semid) + ", " + std::to_string(semaphore) + ", GETVAL)");
    return value;
}

/// The pid of the last process that operated on one semaphore (`semctl(GETPID)`): for a
/// lifetime token, the process that took it (or whose exit gave it back).
inline int semaphore_pid(int semid, unsigned short semaphore) {
    int pid = ::semctl(semid, semaphore, GETPID);
    if (pid == -1)
        shmtut::throw_errno("semctl(semid=" + std::to_string(semid) + ", " + std::to_string(semaphore) + ", GETPID)");
    return pid;
}

/// The owner of the semaphore set `semid`, or `(uid_t)-1` if it cannot be found. `IPC_STAT`
/// needs read permission, which a set of another user (mode 0600) does not give; but
/// `/proc/sysvipc/sem` lists every set of this IPC namespace with its owner to everyone
/// (`proc(5)`), so a user told "Permission denied" can be told whose set it is.
inline uid_t set_owner(int semid) {
    semid_ds info{};
    semun arg{};
    arg.buf = &info;
    if (::semctl(semid, 0, IPC_STAT, arg) == 0)
        return info.sem_perm.uid;
    std::FILE* table = std::fopen("/proc/sysvipc/sem", "re");
    if (table == nullptr)
        return static_cast<uid_t>(-1);
    // "key semid perms nsems uid gid cuid cgid otime ctime", a header line first.
    uid_t owner = static_cast<uid_t>(-1);
    char line[512];
    while (std::fgets(line, sizeof line, table) != nullptr) {
        long long key = 0;
        int id = -1;
        unsigned perms = 0, count = 0, uid = 0;
        if (std::sscanf(line, "%lld %d %o %u %u", &key, &id, &perms, &count, &uid) == 5 && id == semid) {
            owner = static_cast<uid_t>(uid);
            break;
        }
    }
    std::fclose(table);
    return owner;
}

/// True once the writer that created the set has initialised it: `semctl(SETALL)` leaves
/// `sem_otime` at 0 and the writer's first `semop` (its "writer alive" token) sets it, the
/// handshake that `semget(2)` describes.
inline bool set_initialised(int semid) {
    semid_ds info{};
    semun arg{};
    arg.buf = &info;
    if (::semctl(semid, 0, IPC_STAT, arg) == -1)
        shmtut::throw_errno("semctl(semid=" + std::to_string(semid) + ", IPC_STAT)");
    return info.sem_otime != 0;
}

/// How take_unit() ended.
enum class Taken { kYes, kPeerGone, kTimedOut };

/// Takes one unit of `semaphore` (`sem_op = -1`), waiting as long as the peer lives.
///
/// `semtimedop(2)` bounds each wait to one second (it then fails with EAGAIN); between slices
/// the peer's lifetime token `peer_alive` is read, so a peer that died, even one that was idle,
/// ends the wait within about a second. A `deadline` (may be null) bounds the whole wait.
/// SIGINT/SIGTERM interrupt `semtimedop` with EINTR and throw Interrupted.
inline Taken take_unit(int semid, unsigned short semaphore, unsigned short peer_alive,
                       const shmtut::Deadline* deadline) {
    for (;;) {
        shmtut::throw_if_stopped();
        timespec slice = deadline != nullptr ? deadline->slice(shmtut::kLivenessInterval)
                                             : shmtut::to_timespec(shmtut::kLivenessInterval);
        sembuf take{semaphore, -1, 0};
        if (::semtimedop(semid, &take, 1, &slice) == 0)
            return Taken::kYes;
        if (errno == EIDRM || errno == EINVAL)
            throw shmtut::Failure("the semaphore set was removed while waiting, so the stream is incomplete: the peer was stopped (Ctrl-C), or someone ran ipcrm");
        if (errno != EAGAIN && errno != EINTR)
            shmtut::throw_errno("semtimedop(semid=" + std::to_string(semid) + ", sem " + std::to_string(semaphore) + ", -1)");
        if (semaphore_value(semid, peer_alive) == 0) {
            // The peer may have posted and then exited between our slice and this look: take
            // what it left before calling it gone.
            sembuf last_look{semaphore, -1, IPC_NOWAIT};
            return ::semop(semid, &last_look, 1) == 0 ? Taken::kYes : Taken::kPeerGone;
        }
        if (deadline != nullptr && deadline->expired())
            return Taken::kTimedOut;
    }
}

/// Narrates a call made to clean up, with what really came back: `CALL = 0 (WHY)`, or
/// `CALL = -1 (the error text)`. Cleanup goes on either way: it is the last thing a failing
/// program does, and one object that could not be removed must not keep the others.
inline void narrate_cleanup(const shmtut::Narrator& say, const std::string& call, int result, const char* why) {
    if (result == 0)
        say.say("%s = 0 (%s)", call.c_str(), why);
    else
        say.say("%s = -1 (%s)", call.c_str(), std::strerror(errno));
}

/// A key as `ipcs` and `ipcrm` show it.
inline std::string key_text(key_t key) {
    char text[16];
    std::snprintf(text, sizeof text, "0x%08x", static_cast<unsigned>(key));
    return text;
}

/// An address as narration prints it (`%p`): `0x7fbe796ab000`.
inline std::string pointer_text(const void* address) {
    char text[32];
    std::snprintf(text, sizeof text, "%p", address);
    return text;
}

} // namespace sysv
