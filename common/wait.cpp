/// @file wait.cpp
/// @brief Implementation of the waiting, stopping and liveness helpers.
#include "wait.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string>

#include <poll.h>
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
    if (fd == -1 && errno == ENOSYS)
        throw Unsupported("pidfd_open needs Linux 5.3, to notice a peer's death");
    if (fd == -1)
        throw_errno("pidfd_open(pid=" + std::to_string(pid) + ")");
    return UniqueFd(static_cast<int>(fd));
}

bool process_exited(const UniqueFd& pidfd, std::chrono::milliseconds wait) {
    pollfd entry{pidfd.get(), POLLIN, 0};
    int ready = ::poll(&entry, 1, static_cast<int>(wait.count()));
    if (ready == -1) {
        if (errno == EINTR)
            return false; // the caller's loop checks the stop flag and looks again
        throw_errno("poll(pidfd)");
    }
    return ready == 1;
}

} // namespace shmtut
