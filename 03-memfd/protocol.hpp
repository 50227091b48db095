/// @file 03-memfd/protocol.hpp
/// @brief Chapter 03: what the writer and the reader agree on (the seals, the futex words in
///        the mapping) and the futex wait both of them make.
///
/// In stream mode the synchronisation is two 32-bit words in the header's chapter area, used
/// as futexes, plus a claim word:
///
/// | offset | size | field      | written by | meaning |
/// |-------:|-----:|------------|------------|---------|
/// | 64     | 4    | published  | writer | number of the last block published (the reader waits on it) |
/// | 128    | 4    | consumed   | reader | number of the last block written out (the writer waits on it); after the end-of-stream block, the confirmation |
/// | 132    | 4    | reader_pid | reader, once (compare-and-swap from 0) | the claiming reader; the writer waits on it for the claim |
///
/// Unlike chapter 02's `sem_t`, these are plain little-endian integers: any language that can
/// make the `futex(2)` system call can take part.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "error.hpp"
#include "layout.hpp"
#include "seals.hpp"
#include "wait.hpp"

namespace memfd {

/// The name given to memfd_create: only for people, in /proc/PID/fd and /proc/PID/maps.
inline constexpr const char* kDebugName = "shm-tutorial-03";

/// The seals a stream-mode receiver requires: the size can neither shrink nor grow, so no peer
/// can make an access to the mapping raise SIGBUS.
inline constexpr int kStreamSeals = F_SEAL_SHRINK | F_SEAL_GROW;
/// A snapshot receiver also requires the content to be frozen.
inline constexpr int kSnapshotSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

/// Chapter 03's words in the header's chapter area. `published` is written by the writer only,
/// `consumed` and `reader_pid` by the reader only, on another 64-byte line (a FUTEX_WAIT only
/// reads the word it sleeps on).
struct Sync {
    alignas(64) std::atomic<std::uint32_t> published;  ///< written by the writer
    alignas(64) std::atomic<std::uint32_t> consumed;   ///< written by the reader
    std::atomic<std::uint32_t> reader_pid;             ///< set once by the reader that claims: wakes the
                                                       ///< writer; a claim, never proof (see claim_lock())
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free && sizeof(std::atomic<std::uint32_t>) == 4,
              "a futex word is a plain 32-bit integer");
static_assert(sizeof(Sync) <= sizeof(shmtut::SharedHeader::chapter_area));
static_assert(offsetof(Sync, published) == 0 && offsetof(Sync, consumed) == 64 && offsetof(Sync, reader_pid) == 68);

/// The chapter's words inside a mapped header.
inline Sync& sync_words(shmtut::SharedHeader& header) {
    return *reinterpret_cast<Sync*>(header.chapter_area);
}

/// `futex(FUTEX_WAIT)`: sleeps while `*word == expected`, at most `timeout`. Not
/// FUTEX_WAIT_PRIVATE: a private futex is keyed by the process's own address space, so a wake
/// from another process would never find it. Returns 0 when woken, -1 with EAGAIN (the word had
/// already changed), ETIMEDOUT or EINTR.
inline long futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const timespec& timeout) {
    return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, expected, &timeout, nullptr, 0);
}

/// `futex(FUTEX_WAKE)`: wakes the processes sleeping on `word` (one reader or one writer here).
/// Returns how many it woke (0 when nobody slept there, which is no error).
inline long futex_wake(std::atomic<std::uint32_t>& word) {
    long woken = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, 1, nullptr, nullptr, 0);
    if (woken == -1)
        shmtut::throw_errno("futex(FUTEX_WAKE)");
    return woken;
}

/// The reader's claim, as the lock the reader holds and the probe the writer makes: a write lock
/// on the whole memfd (`l_start` 0, `l_len` 0), taken with `F_OFD_SETLK` and looked for with
/// `F_OFD_GETLK` (fcntl(2), Linux 3.15). An open file description lock belongs to the open file,
/// not to a process: the kernel drops it when the last descriptor of that open file closes,
/// which a dying process does for every descriptor it holds. No pid is involved, so no pid can
/// alias it, and it works across pid namespaces.
inline struct flock claim_lock() {
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = 0;
    lock.l_len = 0; // to the end of the file, whatever its size
    lock.l_pid = 0; // must be 0 for the F_OFD_* commands
    return lock;
}

/// The writer's probe: true while some other open file description of `memfd` holds the claim
/// lock (F_OFD_GETLK answers F_UNLCK when our own lock request would succeed, that is, when
/// nobody holds it). The writer never locks, so a lock it finds is the reader's.
inline bool claim_held(int memfd) {
    struct flock probe = claim_lock();
    if (::fcntl(memfd, F_OFD_GETLK, &probe) == -1)
        shmtut::throw_errno("fcntl(fd=" + std::to_string(memfd) + ", F_OFD_GETLK)");
    return probe.l_type != F_UNLCK;
}

/// How wait_until() ended.
enum class Waited { kYes, kPeerGone, kTimedOut };

/// Waits until `done(word)` holds: load the word, and if not done, FUTEX_WAIT on the value just
/// seen (the kernel re-checks it, so a change between the load and the wait is never missed),
/// for at most one second at a time. Between slices: `peer_alive` (may be empty) and the
/// deadline (may be null). SIGINT/SIGTERM throw Interrupted.
template <typename Done>
Waited wait_until(std::atomic<std::uint32_t>& word, Done done, const std::function<bool()>& peer_alive,
                  const shmtut::Deadline* deadline) {
    for (;;) {
        shmtut::throw_if_stopped();
        std::uint32_t seen = word.load(std::memory_order_acquire);
        if (done(seen))
            return Waited::kYes;
        timespec slice = deadline != nullptr ? deadline->slice(shmtut::kLivenessInterval)
                                             : shmtut::to_timespec(shmtut::kLivenessInterval);
        if (futex_wait(word, seen, slice) == -1 && errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR)
            shmtut::throw_errno("futex(FUTEX_WAIT)");
        if (done(word.load(std::memory_order_acquire)))
            return Waited::kYes;
        if (peer_alive && !peer_alive())
            return done(word.load(std::memory_order_acquire)) ? Waited::kYes : Waited::kPeerGone;
        if (deadline != nullptr && deadline->expired())
            return Waited::kTimedOut;
    }
}

} // namespace memfd
