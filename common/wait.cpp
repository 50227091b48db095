/// @file wait.cpp
/// @brief Implementation of the waiting, stopping and liveness helpers.
#include "wait.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "error.hpp"

namespace shmtut {

namespace {
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void record_stop_signal(int signal_number) {
    g_stop_signal = signal_number;
}
} // namespace

Deadline::Deadline(double seconds)
    : end_(std::chrono::steady_clock::now() +
           std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds))),
      seconds_(seconds) {}

bool Deadline::expired() const {
    return std::chrono::steady_clock::now() >= end_;
}

std::chrono::nanoseconds Deadline::remaining() const {
    auto left = end_ - std::chrono::steady_clock::now();
    return std::max(std::chrono::nanoseconds(0), std::chrono::duration_cast<std::chrono::nanoseconds>(left));
}

timespec Deadline::slice(std::chrono::nanoseconds cap) const {
    return to_timespec(std::min(remaining(), cap));
}

std::string seconds_text(double seconds) {
    char text[32];
    std::snprintf(text, sizeof text, "%g s", seconds);
    return text;
}

timespec to_timespec(std::chrono::nanoseconds duration) {
    auto whole = std::chrono::duration_cast<std::chrono::seconds>(duration);
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(whole.count());
    ts.tv_nsec = static_cast<long>((duration - whole).count());
    return ts;
}

void install_stop_handlers() {
    struct sigaction action {};
    action.sa_handler = record_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0; // no SA_RESTART: a blocking wait must return EINTR so the loop can stop
    for (int signal_number : {SIGINT, SIGTERM}) {
        if (::sigaction(signal_number, &action, nullptr) == -1)
            throw_errno("sigaction");
    }
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    if (::sigaction(SIGPIPE, &ignore, nullptr) == -1)
        throw_errno("sigaction(SIGPIPE, SIG_IGN)");
}

int stop_signal() noexcept {
    return g_stop_signal;
}

void throw_if_stopped() {
    if (int signal_number = g_stop_signal; signal_number != 0)
        throw Interrupted(signal_number);
}

void pause_briefly(std::chrono::milliseconds duration) {
    timespec ts = to_timespec(duration);
    ::nanosleep(&ts, nullptr); // EINTR just ends the pause early
}

UniqueFd open_pidfd(pid_t pid) {
    long fd = ::syscall(SYS_pidfd_open, pid, 0);
    if (fd == -1 && errno == ENOSYS) {
        // A kernel before 5.3. /proc/PID pins the process as a pidfd does (see the header).
        std::string path = "/proc/" + std::to_string(pid);
        int dir = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir == -1 && errno == ENOENT)
            errno = ESRCH; // what pidfd_open says for a process that does not exist
        if (dir == -1)
            throw_errno("open(\"" + path + "\", O_DIRECTORY) after pidfd_open(pid=" + std::to_string(pid) +
                        "): ENOSYS");
        return UniqueFd(dir);
    }
    if (fd == -1)
        throw_errno("pidfd_open(pid=" + std::to_string(pid) + ")");
    return UniqueFd(static_cast<int>(fd));
}

bool is_pollable_pidfd(const UniqueFd& handle) {
    struct stat info {};
    if (::fstat(handle.get(), &info) == -1)
        throw_errno("fstat(pidfd=" + std::to_string(handle.get()) + ")");
    return !S_ISDIR(info.st_mode);
}

std::string process_handle_text(pid_t pid, const UniqueFd& handle) {
    if (is_pollable_pidfd(handle))
        return "pidfd_open(" + std::to_string(pid) + ") = " + std::to_string(handle.get());
    return "open(\"/proc/" + std::to_string(pid) + "\", O_DIRECTORY) = " + std::to_string(handle.get()) +
           " (pidfd_open: ENOSYS, a kernel before 5.3)";
}

namespace {

/// The /proc/PID fallback: gone (the pinned pid has no task: ENOENT/ESRCH), or a zombie (state
/// Z, or X while it is being reaped), counts as exited.
bool proc_directory_says_exited(int directory) {
    int stat_fd = ::openat(directory, "stat", O_RDONLY | O_CLOEXEC);
    if (stat_fd == -1) {
        if (errno == ENOENT || errno == ESRCH)
            return true;
        throw_errno("openat(/proc/PID, \"stat\")");
    }
    char text[512];
    ssize_t n = ::read(stat_fd, text, sizeof text - 1);
    int read_error = errno;
    ::close(stat_fd);
    if (n == -1 && (read_error == ESRCH || read_error == ENOENT))
        return true;
    if (n <= 0)
        throw_error(n == 0 ? EIO : read_error, "read(/proc/PID/stat)");
    text[n] = '\0';
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so look after the last ')'.
    const char* close_paren = std::strrchr(text, ')');
    if (close_paren == nullptr || close_paren[1] != ' ')
        throw Failure("/proc/PID/stat has an unexpected format");
    char state = close_paren[2];
    return state == 'Z' || state == 'X' || state == 'x';
}

} // namespace

bool process_exited(const UniqueFd& handle, std::chrono::milliseconds wait) {
    if (!is_pollable_pidfd(handle)) {
        auto end = std::chrono::steady_clock::now() + wait;
        for (;;) {
            if (proc_directory_says_exited(handle.get()))
                return true;
            if (std::chrono::steady_clock::now() >= end || g_stop_signal != 0)
                return false;
            pause_briefly(std::min<std::chrono::milliseconds>(
                std::chrono::milliseconds(10), wait));
        }
    }
    pollfd entry{handle.get(), POLLIN, 0};
    int ready = ::poll(&entry, 1, static_cast<int>(wait.count()));
    if (ready == -1) {
        if (errno == EINTR)
            return false; // the caller's loop checks the stop flag and looks again
        throw_errno("poll(pidfd)");
    }
    return ready == 1;
}

} // namespace shmtut
