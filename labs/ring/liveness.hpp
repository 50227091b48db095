/// @file labs/ring/liveness.hpp
/// @brief Lab ring: liveness of the peer through OFD locks on the shared object, and the futex
///        calls; the plumbing both programs share, below the lesson.
///
/// Each side takes a write lock on one byte of the `/dev/shm` object with `fcntl(F_OFD_SETLK)`
/// (byte 0 the writer, byte 1 the reader) and keeps its descriptor open. The kernel releases an
/// OFD lock when the last descriptor of its open file description closes, which a process's death
/// does, so `F_OFD_GETLK` on the peer's byte tells whether the peer lives; no pid is involved, so
/// nothing can alias it. Taking the reader's byte is also the claim: a second reader gets EAGAIN.
/// (Chapter 02 teaches this in full.)
#pragma once

#include <cerrno>
#include <ctime>
#include <string>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "error.hpp"

namespace ring {

inline constexpr off_t kWriterByte = 0; ///< the byte the writer holds a lock on
inline constexpr off_t kReaderByte = 1; ///< the byte the reader holds a lock on

/// Takes the write lock on `byte` of `fd`; false if another open file description holds it.
inline bool take_lock_byte(int fd, off_t byte) {
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = byte;
    lock.l_len = 1;
    if (::fcntl(fd, F_OFD_SETLK, &lock) == 0)
        return true;
    if (errno == EAGAIN || errno == EACCES)
        return false;
    shmtut::throw_errno("fcntl(fd=" + std::to_string(fd) + ", F_OFD_SETLK, F_WRLCK byte " + std::to_string(byte) + ")");
}

/// True while some other open file description holds the lock on `byte` (the peer lives).
inline bool lock_byte_held(int fd, off_t byte) {
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = byte;
    lock.l_len = 1;
    if (::fcntl(fd, F_OFD_GETLK, &lock) == -1)
        shmtut::throw_errno("fcntl(fd=" + std::to_string(fd) + ", F_OFD_GETLK, byte " + std::to_string(byte) + ")");
    return lock.l_type != F_UNLCK;
}

/// `futex(2)` FUTEX_WAIT: sleeps while `*word == expected`, at most `timeout`. Not the private
/// form: the two processes share the page, and the kernel keys a shared futex by the page.
/// Returns 0, or -1 with errno (EAGAIN: the word had changed; ETIMEDOUT; EINTR).
inline long futex_wait(std::uint32_t* word, std::uint32_t expected, const timespec& timeout) {
    return ::syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, nullptr, 0);
}

/// `futex(2)` FUTEX_WAKE: wakes up to `count` sleepers on `word`.
inline long futex_wake(std::uint32_t* word, int count) {
    return ::syscall(SYS_futex, word, FUTEX_WAKE, count, nullptr, nullptr, 0);
}

} // namespace ring
