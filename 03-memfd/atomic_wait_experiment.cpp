/// @file 03-memfd/atomic_wait_experiment.cpp
/// @brief Chapter 03 experiment: C++20 `std::atomic<T>::wait` / `notify_one` between two
///        processes, next to a raw futex on the same word.
///
/// Usage: `atomic_wait_experiment [--help]`
///
/// A parent and a forked child share one page (`MAP_SHARED|MAP_ANONYMOUS`). The child waits with
/// `std::atomic::wait`; the parent changes the value and calls `notify_one`. Each case reports
/// whether the child woke within two seconds. The point: libstdc++'s notify makes a futex system
/// call only when the *notifying process* has counted a waiter in its own, process-local table,
/// and waits on a type other than 4 bytes sleep on a proxy word in that table; so between
/// processes a notify can be lost, and the waiter sleeps forever (there is no timed wait either).
/// It seems to work when the value changed before the waiter went to sleep: by accident.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <new>
#include <string>

#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.hpp"
#include "owners.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"usage(Usage: atomic_wait_experiment [--help]

Chapter 03 experiment: does C++20 std::atomic<T>::wait / notify_one work between two
processes? A parent and a forked child share one page; the child waits, the parent stores
and notifies. Five cases, one line each: "woke", or "STILL ASLEEP after 2 s (killed)".
Compare notify_one() with a raw futex(FUTEX_WAKE), and a 4-byte word with an 8-byte one.
Takes about 10 seconds.

Exit status: 0 the cases ran (whatever they showed); 1 a call failed; 2 a usage error.
)usage";

/// The shared page: a 4-byte word (the size libstdc++ waits on directly) and an 8-byte one.
struct Shared {
    std::atomic<std::int32_t> word;
    std::atomic<std::int64_t> wide;
};

enum class Notify { kStdNotifyOne, kRawFutexWake };

/// Forks a child that waits with std::atomic::wait(0); the parent sleeps `head_start_ms` (so the
/// child is asleep, or, if negative, changes the value first), stores 1 and notifies. Returns
/// true if the child finished within two seconds.
template <typename Atomic>
bool child_wakes(Atomic& target, int head_start_ms, Notify notify) {
    target.store(0);
    if (head_start_ms < 0)
        target.store(1); // the value has changed before the child waits
    pid_t child = ::fork();
    if (child == -1)
        throw_errno("fork");
    if (child == 0) {
        target.wait(0); // returns when the value is no longer 0 and a wake (or a spin) sees it
        ::_exit(0);
    }
    UniqueFd pidfd;
    try {
        pidfd = open_pidfd(child);
    } catch (...) {
        ::kill(child, SIGKILL); // it may wait forever: atomic::wait has no timeout
        ::waitpid(child, nullptr, 0);
        throw;
    }
    if (head_start_ms > 0) {
        pause_briefly(std::chrono::milliseconds(head_start_ms));
        target.store(1);
        if (notify == Notify::kStdNotifyOne)
            target.notify_one();
        else
            ::syscall(SYS_futex, reinterpret_cast<void*>(&target), FUTEX_WAKE, 1, nullptr, nullptr, 0);
    }
    bool woke = process_exited(pidfd, std::chrono::milliseconds(2000));
    if (!woke)
        ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    return woke;
}

void report(const char* what, bool woke) {
    std::printf("%-75s %s\n", what, woke ? "woke" : "STILL ASLEEP after 2 s (killed)");
}

} // namespace

/// Runs the cases and prints one line each.
int main(int argc, char** argv) {
    return run_main("atomic_wait_experiment", [&] {
        if (argc == 2 && std::string(argv[1]) == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (argc > 1)
            throw UsageError(std::string("unexpected argument '") + argv[1] + "': it takes none");
        void* page = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            throw_errno("mmap(MAP_SHARED|MAP_ANONYMOUS)");
        Mapping mapping(page, sizeof(Shared));
        Shared& shared = *new (page) Shared{};

        report("1. int, value changed before the child waits:", child_wakes(shared.word, -1, Notify::kStdNotifyOne));
        report("2. int, child asleep, parent stores 1 and calls notify_one():",
               child_wakes(shared.word, 300, Notify::kStdNotifyOne));
        report("3. int, child asleep, parent stores 1 and calls futex(FUTEX_WAKE):",
               child_wakes(shared.word, 300, Notify::kRawFutexWake));
        report("4. int64_t, child asleep, parent stores 1 and calls notify_one():",
               child_wakes(shared.wide, 300, Notify::kStdNotifyOne));
        report("5. int64_t, child asleep, parent stores 1 and calls futex(FUTEX_WAKE):",
               child_wakes(shared.wide, 300, Notify::kRawFutexWake));
        return 0;
    });
}
