/// @file 02-posix-mmap/protocol.hpp
/// @brief Chapter 02: what the writer and the reader agree on (the object's name rules, the
///        semaphores inside the mapping) and the one wait both of them make.
///
/// The synchronisation lives in the shared memory itself, in the header's chapter area
/// (SharedHeader::chapter_area, offset 64), as three process-shared POSIX semaphores and one
/// claim word:
///
/// | offset | size | field        | written by | meaning |
/// |-------:|-----:|--------------|------------|---------|
/// | 64     | 32   | block_ready  | writer posts, reader waits | a block is in the data area |
/// | 128    | 32   | block_free   | reader posts, writer waits | the data area may be refilled; after the end of the stream, the reader's confirmation |
/// | 160    | 4    | reader_pid   | reader, once (compare-and-swap from 0) | the pid of the reader that claimed the object |
/// | 192    | 32   | claimed      | reader posts once, writer waits | a reader has claimed the object |
///
/// A `sem_t` is 32 bytes of glibc-private state: a program in another language can find it but
/// not use it. It works between processes only because it is in memory both of them map and was
/// initialised once, by the writer, with `sem_init(sem, 1, value)` (pshared = 1).
#pragma once

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>

#include <semaphore.h>
#include <time.h>

#include "error.hpp"
#include "layout.hpp"
#include "options.hpp"
#include "wait.hpp"

namespace posix {

/// The default `--name`: a `shm_open` name, which glibc turns into `/dev/shm/shm-tutorial-02`.
inline constexpr const char* kDefaultName = "/shm-tutorial-02";

/// Chapter 02's words in the header's chapter area. Each 64-byte line is written by one side.
struct Sync {
    alignas(64) sem_t block_ready;          ///< posted by the writer
    alignas(64) sem_t block_free;           ///< posted by the reader
    std::atomic<std::uint32_t> reader_pid;  ///< set once by the reader that claims the object
    alignas(64) sem_t claimed;              ///< posted once by that reader
};
static_assert(sizeof(sem_t) == 32, "the notes document a 32-byte sem_t (glibc, 64-bit)");
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(Sync) <= sizeof(shmtut::SharedHeader::chapter_area));
static_assert(offsetof(Sync, block_ready) == 0 && offsetof(Sync, block_free) == 64 &&
              offsetof(Sync, reader_pid) == 96 && offsetof(Sync, claimed) == 128);

/// The chapter's words inside a mapped header.
inline Sync& sync_of(shmtut::SharedHeader& header) {
    return *reinterpret_cast<Sync*>(header.chapter_area);
}

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
struct Target {
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
};

/// The `--file PATH` option, which makes `target` a regular file.
inline shmtut::ExtraOption file_option(Target& target) {
    return {"--file", true, [&target](const std::string& path) {
                if (path.empty())
                    throw shmtut::UsageError("--file needs a path");
                target.is_file = true;
                target.path = path;
            }};
}

/// Completes `target` from the parsed options: `--name` unless `--file` was given, checked.
inline void resolve_target(Target& target, const shmtut::Options& options) {
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
/// at most one second. Between slices it asks the peer's pidfd whether the peer still lives (may
/// be null: no peer yet) and checks `deadline` (may be null: no bound while the peer lives).
/// SIGINT/SIGTERM interrupt the wait with EINTR and throw Interrupted.
inline Waited wait_post(sem_t* semaphore, const shmtut::UniqueFd* peer_pidfd, const shmtut::Deadline* deadline,
                        const char* what) {
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
        if (::sem_clockwait(semaphore, CLOCK_MONOTONIC, &until) == 0)
            return Waited::kYes;
        if (errno == EINTR)
            continue;
        if (errno != ETIMEDOUT)
            shmtut::throw_errno(std::string("sem_clockwait(") + what + ")");
        if (peer_pidfd != nullptr && shmtut::process_exited(*peer_pidfd)) {
            // The peer may have posted just before it exited: take that post first.
            return ::sem_trywait(semaphore) == 0 ? Waited::kYes : Waited::kPeerGone;
        }
        if (deadline != nullptr && deadline->expired())
            return Waited::kTimedOut;
    }
}

} // namespace posix
