/// @file labs/robust-mutex/dead_holder.cpp
/// @brief Lab robust-mutex: a process dies holding a `pthread_mutex_t` that lives in shared
///        memory, and what the next process to lock it gets.
///
/// Usage: `dead_holder [--mode plain|robust|no-repair] [--timeout SECONDS] [--quiet]`
///
/// One shared mapping holds a mutex and two counters that must stay equal (a debit and a credit,
/// as in a transfer). The program forks a *holder* that locks the mutex, adds to the debit and is
/// killed (SIGKILL) before it adds to the credit: the data is half-updated and the lock is held by
/// a dead process. The parent, the *locker*, then locks the mutex:
///
///     build/labs/robust-mutex/dead_holder --mode plain       ETIMEDOUT: it would wait for ever
///     build/labs/robust-mutex/dead_holder --mode robust      EOWNERDEAD, repair, consistent
///     build/labs/robust-mutex/dead_holder --mode no-repair   EOWNERDEAD, unlock: ENOTRECOVERABLE
///
/// The calls it teaches, in order: `pthread_mutexattr_setpshared(3)` (PTHREAD_PROCESS_SHARED),
/// `pthread_mutexattr_setrobust(3)` (PTHREAD_MUTEX_ROBUST), `pthread_mutex_init(3)` in the mapping,
/// `pthread_mutex_lock(3)` in the holder, `pthread_mutex_clocklock(3)` (the CLOCK_MONOTONIC form
/// of `pthread_mutex_timedlock`) in the locker, `pthread_mutex_consistent(3)`,
/// `pthread_mutex_unlock(3)` and `pthread_mutex_destroy(3)`.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>
#include <string>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: dead_holder [OPTIONS]

Lab robust-mutex. A forked holder locks a process-shared pthread mutex in shared
memory, half-updates the data it guards, and is killed. The parent then locks the
mutex and prints on standard output what it got.

Options:
  --mode MODE        plain:     a process-shared mutex: the lock waits for ever
                                (bounded here by --timeout): ETIMEDOUT
                     robust:    PTHREAD_MUTEX_ROBUST: EOWNERDEAD, the locker repairs
                                the data and calls pthread_mutex_consistent (default)
                     no-repair: robust, but the locker unlocks without
                                pthread_mutex_consistent: the next lock gets
                                ENOTRECOVERABLE
  --timeout SECONDS  bound of the locker's wait (default 2)
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the lock behaved as the mode teaches; 1 it did not, or a call failed;
2 a usage error.
)";

enum class Mode { kPlain, kRobust, kNoRepair };

/// What the processes share: the mutex and the data it guards. The invariant, true whenever the
/// mutex is unlocked: debit == credit.
struct SharedAccount {
    pthread_mutex_t lock;
    std::uint64_t debit;
    std::uint64_t credit;
};

/// "EOWNERDEAD", "ETIMEDOUT", "0": the name a learner looks up in the man page.
std::string result_name(int result) {
    if (result == 0)
        return "0";
    const char* name = strerrorname_np(result); // glibc 2.32
    return name != nullptr ? name : std::to_string(result);
}

/// The mutex, made in memory both processes map. PTHREAD_PROCESS_SHARED tells glibc that other
/// processes use it, so its futex is a shared one (keyed by the page, not by this process's
/// address space); PTHREAD_MUTEX_ROBUST makes glibc register it, while locked, on the thread's
/// robust list, which the kernel walks when the thread dies (set_robust_list(2)).
void init_mutex(SharedAccount& account, Mode mode, const Narrator& say) {
    pthread_mutexattr_t attributes;
    int result = ::pthread_mutexattr_init(&attributes);
    if (result != 0)
        throw_error(result, "pthread_mutexattr_init");
    result = ::pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
    if (result != 0)
        throw_error(result, "pthread_mutexattr_setpshared(PTHREAD_PROCESS_SHARED)");
    const bool robust = mode != Mode::kPlain;
    if (robust) {
        result = ::pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
        if (result != 0)
            throw_error(result, "pthread_mutexattr_setrobust(PTHREAD_MUTEX_ROBUST)");
    }
    result = ::pthread_mutex_init(&account.lock, &attributes);
    ::pthread_mutexattr_destroy(&attributes);
    if (result != 0)
        throw_error(result, "pthread_mutex_init");
    say.say("pthread_mutex_init(PTHREAD_PROCESS_SHARED%s) = 0, in the shared mapping",
            robust ? ", PTHREAD_MUTEX_ROBUST" : "");
}

/// The holder (a forked child): locks, breaks the invariant, tells the parent, and dies before it
/// can finish. It never returns: SIGKILL gives it no chance to unlock or to clean up, as the OOM
/// killer, a crash or `kill -9` would not.
[[noreturn]] void run_holder(SharedAccount& account, int told_fd, const Narrator& say) {
    int result = ::pthread_mutex_lock(&account.lock);
    if (result != 0) {
        say.say("pthread_mutex_lock = %s", result_name(result).c_str());
        ::_exit(1);
    }
    say.say("pthread_mutex_lock = 0: I hold the lock (pid %d)", static_cast<int>(::getpid()));
    account.debit += 100; // the first half of the transfer...
    say.say("debit += 100; killed before credit += 100");
    char byte = 'L';
    (void)!::write(told_fd, &byte, 1);
    // Long enough for the locker to be waiting in pthread_mutex_clocklock when this process
    // dies: the kernel then has a waiter to wake (robust) or not (plain).
    ::usleep(200 * 1000);
    ::raise(SIGKILL);
    ::_exit(1); // not reached
}

/// The locker's bounded lock: pthread_mutex_clocklock is pthread_mutex_timedlock with a clock of
/// our choice (glibc 2.30); CLOCK_MONOTONIC is not moved by a change of the wall clock, which
/// would stretch or shorten a CLOCK_REALTIME deadline.
int lock_within(SharedAccount& account, double seconds, const Narrator& say) {
    timespec deadline{};
    ::clock_gettime(CLOCK_MONOTONIC, &deadline);
    timespec wait = to_timespec(std::chrono::nanoseconds(static_cast<long long>(seconds * 1e9)));
    deadline.tv_sec += wait.tv_sec;
    deadline.tv_nsec += wait.tv_nsec;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    int result = ::pthread_mutex_clocklock(&account.lock, CLOCK_MONOTONIC, &deadline);
    say.say("pthread_mutex_clocklock(CLOCK_MONOTONIC, now + %s) = %s", seconds_text(seconds).c_str(),
            result_name(result).c_str());
    return result;
}

/// Reaps the holder and says how it ended.
void reap_holder(pid_t holder, const Narrator& say) {
    int status = 0;
    if (::waitpid(holder, &status, 0) == -1)
        throw_errno("waitpid(" + std::to_string(holder) + ")");
    if (WIFSIGNALED(status))
        say.say("waitpid(%d) = killed by SIG%s", static_cast<int>(holder), sigabbrev_np(WTERMSIG(status)));
    else
        say.say("waitpid(%d) = exit %d", static_cast<int>(holder), WEXITSTATUS(status));
}

/// What the locker does with the lock the dead holder left, for each mode. Returns the status.
int after_death(SharedAccount& account, Mode mode, double seconds, const Narrator& say) {
    int result = lock_within(account, seconds, say);
    if (mode == Mode::kPlain) {
        // Nobody will ever unlock it: the owner is gone and the kernel knows nothing about a
        // plain mutex. (Destroying a locked mutex is undefined: the memory is just unmapped.)
        std::printf("plain: next lock = %s; debit=%llu credit=%llu, the lock is lost for ever\n",
                    result_name(result).c_str(), static_cast<unsigned long long>(account.debit),
                    static_cast<unsigned long long>(account.credit));
        return result == ETIMEDOUT ? kExitSuccess : kExitFailure;
    }
    if (result != EOWNERDEAD) {
        std::printf("%s: next lock = %s, expected EOWNERDEAD\n", mode == Mode::kRobust ? "robust" : "no-repair",
                    result_name(result).c_str());
        if (result == 0)
            ::pthread_mutex_unlock(&account.lock);
        return kExitFailure;
    }
    // EOWNERDEAD: we hold the lock now, and the data it guards may be half-updated.
    const unsigned long long debit = account.debit, credit = account.credit;
    if (mode == Mode::kNoRepair) {
        // Unlocking without pthread_mutex_consistent tells glibc the state could not be repaired:
        // the mutex becomes permanently unusable, so no one else trusts the broken data.
        result = ::pthread_mutex_unlock(&account.lock);
        say.say("pthread_mutex_unlock = %s, without pthread_mutex_consistent", result_name(result).c_str());
        int again = lock_within(account, seconds, say);
        std::printf("no-repair: next lock = EOWNERDEAD (debit=%llu credit=%llu), unlocked unrepaired, "
                    "then lock = %s\n", debit, credit, result_name(again).c_str());
        // ENOTRECOVERABLE: the only thing left to do with it is pthread_mutex_destroy.
        ::pthread_mutex_destroy(&account.lock);
        return again == ENOTRECOVERABLE ? kExitSuccess : kExitFailure;
    }
    // Repair first, then declare the mutex consistent, as LMDB does in mdb_mutex_failed: here
    // the transfer is rolled back (the dead holder's half is undone).
    account.debit = account.credit;
    say.say("repair: debit=%llu credit=%llu -> debit=%llu credit=%llu (rolled back)", debit, credit,
            static_cast<unsigned long long>(account.debit), static_cast<unsigned long long>(account.credit));
    result = ::pthread_mutex_consistent(&account.lock);
    if (result != 0)
        throw_error(result, "pthread_mutex_consistent");
    say.say("pthread_mutex_consistent = 0");
    result = ::pthread_mutex_unlock(&account.lock);
    if (result != 0)
        throw_error(result, "pthread_mutex_unlock");
    say.say("pthread_mutex_unlock = 0");
    int again = lock_within(account, seconds, say);
    std::printf("robust: next lock = EOWNERDEAD (debit=%llu credit=%llu), repaired, consistent, "
                "then lock = %s (debit=%llu credit=%llu)\n", debit, credit, result_name(again).c_str(),
                static_cast<unsigned long long>(account.debit), static_cast<unsigned long long>(account.credit));
    if (again == 0)
        ::pthread_mutex_unlock(&account.lock);
    ::pthread_mutex_destroy(&account.lock);
    return again == 0 ? kExitSuccess : kExitFailure;
}

int run(Mode mode, double seconds, bool quiet) {
    Narrator say("locker", quiet);
    Narrator holder_say("holder", quiet);
    // Any shared mapping will do: a /dev/shm object, a System V segment or a memfd mapped by two
    // unrelated processes behave the same. An anonymous shared mapping inherited over fork keeps
    // the lab to the lock itself.
    void* base = ::mmap(nullptr, sizeof(SharedAccount), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(MAP_SHARED|MAP_ANONYMOUS)");
    Mapping mapping(base, sizeof(SharedAccount));
    auto* account = new (base) SharedAccount{};
    init_mutex(*account, mode, say);

    int told[2];
    if (::pipe2(told, O_CLOEXEC) == -1)
        throw_errno("pipe2");
    UniqueFd told_read(told[0]), told_write(told[1]);
    std::fflush(stdout);
    pid_t holder = ::fork();
    if (holder == -1)
        throw_errno("fork");
    if (holder == 0) {
        told_read.reset();
        run_holder(*account, told_write.get(), holder_say);
    }
    told_write.reset();
    char byte = 0;
    if (::read(told_read.get(), &byte, 1) != 1) {
        reap_holder(holder, say);
        throw Failure("the holder ended before it took the lock");
    }
    say.say("the holder (pid %d) holds the lock; locking it too, for at most %s", static_cast<int>(holder),
            seconds_text(seconds).c_str());
    int status = after_death(*account, mode, seconds, say);
    reap_holder(holder, say);
    return status;
}

} // namespace

int main(int argc, char** argv) {
    return run_main("dead_holder", [&] {
        Mode mode = Mode::kRobust;
        double seconds = 2.0;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.extra.push_back({"--mode", true, [&](const std::string& value) {
                                  if (value == "plain")
                                      mode = Mode::kPlain;
                                  else if (value == "robust")
                                      mode = Mode::kRobust;
                                  else if (value == "no-repair")
                                      mode = Mode::kNoRepair;
                                  else
                                      throw UsageError("--mode: expected plain, robust or no-repair, not \"" +
                                                       value + "\"");
                              }});
        // The default bound is short: in plain mode the wait always runs to it.
        bool timeout_given = false;
        for (int i = 1; i < argc; ++i)
            if (std::strncmp(argv[i], "--t", 3) == 0) // --timeout, or a prefix of it
                timeout_given = true;
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        if (timeout_given)
            seconds = options.timeout_seconds;
        return run(mode, seconds, options.quiet);
    });
}
