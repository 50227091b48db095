/// @file wait.hpp
/// @brief Bounded waiting, stopping on SIGINT/SIGTERM, and noticing that a peer process died.
///
/// The contract says no wait hangs: waiting for the peer to appear is bounded by `--timeout`
/// (a Deadline), the peer's death ends a wait within about a second (waits are cut into slices
/// of at most one second, and between slices the program checks a liveness token), and Ctrl-C
/// ends it at once (the handlers are installed without `SA_RESTART`, so a blocking call returns
/// EINTR, and every wait loop calls throw_if_stopped()).
#pragma once

#include <chrono>
#include <ctime>
#include <string>

#include <sys/types.h>

#include "owners.hpp"

namespace shmtut {

/// A point in time a wait must not pass, measured on the monotonic clock (a wall-clock change
/// does not stretch or shrink it).
class Deadline {
public:
    /// A deadline `seconds` from now.
    explicit Deadline(double seconds);
    /// True once the deadline has passed.
    bool expired() const;
    /// Time left, never negative.
    std::chrono::nanoseconds remaining() const;
    /// The time left, capped at `cap`, as a `timespec` for calls such as `semtimedop(2)`.
    timespec slice(std::chrono::nanoseconds cap = std::chrono::seconds(1)) const;
    /// The bound this deadline was made with, for messages ("within 5 s").
    double seconds() const { return seconds_; }

private:
    std::chrono::steady_clock::time_point end_;
    double seconds_;
};

/// The longest a wait sleeps before it looks again at the peer's liveness and at the stop flag.
inline constexpr std::chrono::seconds kLivenessInterval{1};

/// Seconds as a person reads them in a message: "5 s", "0.5 s".
std::string seconds_text(double seconds);

/// Converts a duration to a `timespec`.
timespec to_timespec(std::chrono::nanoseconds duration);

/// Installs the SIGINT and SIGTERM handlers (they only record the signal; no `SA_RESTART`, so
/// blocking calls return EINTR) and ignores SIGPIPE (a closed stdout then fails `write` with
/// EPIPE, an error the program handles and cleans up after, instead of a silent death).
void install_stop_handlers();

/// 0, or the number of the signal that asked the program to stop.
int stop_signal() noexcept;

/// Throws Interrupted if SIGINT or SIGTERM arrived.
void throw_if_stopped();

/// Sleeps a little between two looks at something that cannot be waited for (a name appearing).
/// Returns early when a signal arrives; the caller then calls throw_if_stopped().
void pause_briefly(std::chrono::milliseconds duration = std::chrono::milliseconds(20));

/// Opens a handle on the process `pid` that tells when it has died: a pidfd from `pidfd_open(2)`
/// (Linux 5.3), called through `syscall` because glibc 2.36's wrapper in `<sys/pidfd.h>` does
/// not link from C++. A pidfd refers to one process, not to a number: unlike `kill(pid, 0)` it
/// is not fooled by a zombie or by a pid the kernel has since given to another process.
///
/// Where `pidfd_open` fails with ENOSYS (a kernel before 5.3: the 4.19 of many boards), it falls
/// back to an open `/proc/PID` directory. That descriptor pins the process too: its inode holds
/// the kernel's `struct pid`, so once the process is reaped every lookup under it fails
/// (ESRCH/ENOENT), even if the number has been reused; `/proc/PID/stat` says Z while it is a
/// zombie. Its limits: it cannot be poll()ed (it always polls readable: use process_exited(),
/// see is_pollable_pidfd()), so a death is seen at the next look (waits look once a second); it
/// needs `/proc` mounted and the process visible in it (same pid namespace, no `hidepid`); and a
/// multi-threaded process whose first thread exited looks dead early (the tutorial's programs are
/// single-threaded). Throws SysError (ESRCH: no such process).
UniqueFd open_pidfd(pid_t pid);

/// True for a real pidfd, false for the `/proc/PID` fallback of open_pidfd(): only a real pidfd
/// may be put in a poll() set to wake on the process's death.
bool is_pollable_pidfd(const UniqueFd& handle);

/// How the handle was opened, for narration: `pidfd_open(1234) = 5`, or
/// `open("/proc/1234", O_DIRECTORY) = 5 (pidfd_open: ENOSYS, a kernel before 5.3)`.
std::string process_handle_text(pid_t pid, const UniqueFd& handle);

/// True once the process behind `handle` (from open_pidfd()) has terminated (a pidfd polls
/// readable; the /proc fallback finds it a zombie or gone), waiting at most `wait` for it.
bool process_exited(const UniqueFd& handle, std::chrono::milliseconds wait = std::chrono::milliseconds(0));

} // namespace shmtut
