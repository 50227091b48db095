/// @file tests/support.hpp
/// @brief Test support: start the real chapter programs as processes, talk to them through
///        pipes, and check that nothing was left behind.
///
/// Every test starts its programs in one ProcessGroup: each program gets its own pipes for
/// stdin, stdout and stderr, all of them share one process group, exits are reaped as soon as
/// they happen, and at a hard deadline the whole group is killed and the test case fails, so a
/// hung program can never hang the suite. LeakCheck lists what a case left behind among the
/// objects the test named (its `/dev/shm` names, socket paths and key files, the System V objects
/// of its key files and of the programs it started) and the test's own open descriptors.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

namespace testsupport {

/// Path of a built program: binary("01-sysv/writer"); a learner's build of it when
/// exercise_binary() names one.
std::string binary(const std::string& program);

/// A command line for a chapter program: binary(program), then `name_args` (the test's private
/// `--name` or `--file`), `--timeout TIMEOUT`, then `extra`.
std::vector<std::string> command(const std::string& program, const std::vector<std::string>& name_args,
                                 const std::string& timeout, const std::vector<std::string>& extra = {});

/// A name no other test (or test run) uses: PREFIX-PID-COUNTER.
std::string unique_name(const std::string& prefix);

/// One started program and what it has printed so far.
struct Process {
    std::string name;            ///< for messages: "writer"
    pid_t pid = -1;
    int stdin_fd = -1;           ///< our end of its stdin, or -1
    int stdout_fd = -1;          ///< our end of its stdout, or -1 once at EOF
    int stderr_fd = -1;          ///< our end of its stderr, or -1 once at EOF
    std::string out;             ///< everything it wrote to stdout
    std::string err;             ///< everything it wrote to stderr
    std::string pending_input;   ///< bytes still to write to its stdin
    bool close_stdin_when_done = false;
    std::optional<int> wait_status; ///< set once reaped

    bool finished() const { return wait_status.has_value() && stdout_fd == -1 && stderr_fd == -1; }
    /// Exit code, or -1 if it was killed by a signal (or is still running).
    int exit_code() const;
    /// The signal that killed it, or 0.
    int killed_by() const;
    /// The last non-empty line of its stderr: where a failing program puts its one error line.
    std::string last_error_line() const;
};

/// How a program's stdin is connected.
enum class Stdin { kPipe, kNull };

/// Who a started program runs as: the test's own user, or another uid and gid (the test must be
/// root to switch; see unprivileged_ids()).
struct RunAs {
    uid_t uid = static_cast<uid_t>(-1); ///< -1: the test's own
    gid_t gid = static_cast<gid_t>(-1); ///< -1: the test's own
};

/// The ids of an unprivileged user (65534, "nobody") when the test runs as root and can start
/// programs under them; empty when it cannot (the caller then skips with SKIP_TEST()).
std::optional<RunAs> unprivileged_ids();

/// Records that the current test case could not run on this machine, and why. `make test`
/// counts it as skipped, never as passed, and lists it with its reason. Use SKIP_TEST().
void record_skip(const std::string& reason);

/// A set of programs in one process group, killed at a hard deadline.
class ProcessGroup {
public:
    explicit ProcessGroup(std::chrono::seconds hard_limit = std::chrono::seconds(60));
    ~ProcessGroup();
    ProcessGroup(const ProcessGroup&) = delete;
    ProcessGroup& operator=(const ProcessGroup&) = delete;

    /// Starts argv[0] (a path) with arguments; stdout and stderr are captured. With `as`, the
    /// program runs under that uid and gid (set in the child before exec).
    Process& start(const std::string& name, const std::vector<std::string>& argv, Stdin in = Stdin::kNull,
                   RunAs as = {});
    /// Queues bytes for the program's stdin; `close_after` closes it once they are written.
    void feed(Process& process, std::string bytes, bool close_after);
    /// Closes our end of its stdin (end of file for the program).
    void close_stdin(Process& process);
    /// Closes our end of its stdout: its next write fails with EPIPE.
    void close_stdout(Process& process);
    /// Sends a signal to one program.
    void signal(Process& process, int signal_number);

    /// Moves data and reaps until `done()` holds; at the hard deadline kills the group and
    /// fails the test case.
    void pump_until(const std::function<bool()>& done, const std::string& what);
    /// Until the program has exited and its output is drained.
    void wait(Process& process);
    /// Until its stderr contains `text` (or it finished: the caller then checks).
    void wait_for_stderr(Process& process, const std::string& text);
    /// Until its stdout holds at least `bytes` bytes (or it finished).
    void wait_for_stdout(Process& process, std::size_t bytes);
    /// True while any process of the group, children of the started programs included, lives.
    bool any_member_alive() const;

private:
    void pump_once(int poll_ms);
    void kill_all() noexcept;

    std::deque<Process> processes_;
    pid_t group_ = -1;
    std::chrono::steady_clock::time_point hard_deadline_;
};

/// A private temporary directory, removed with its contents at the end of the test.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }
    /// Names of the entries in the directory.
    std::vector<std::string> entries() const;

private:
    std::string path_;
};

/// Checks that a test case left nothing behind, looking only at what the test itself named, so
/// that another process on the machine (another test run, a desktop, a database) cannot fail it
/// and a leak of the test's own still does:
///
/// - the descriptors of this test process: a full before/after comparison;
/// - `/dev/shm` entries of the names given to watch_shm_name();
/// - paths given to watch_path() (socket paths, key files): still there afterwards is a leak,
///   and an `@abstract` socket name still listed in `/proc/net/unix` is one too;
/// - System V segments and semaphore sets created during the case whose key is the `ftok(3)` key
///   of a watched file (recorded while the file exists, whatever the project id), or whose
///   creator or last user (`shm_cpid`/`shm_lpid`, a semaphore's `sempid`) is this test process or
///   a program it started after the LeakCheck (ProcessGroup::start, in_child).
///
/// Usage: `LeakCheck leaks; leaks.watch_shm_name(chapter.name);` ... `check_nothing_left(leaks);`
class LeakCheck {
public:
    LeakCheck();
    ~LeakCheck();
    LeakCheck(const LeakCheck&) = delete;
    LeakCheck& operator=(const LeakCheck&) = delete;

    /// A `shm_open` name ("/NAME"): `/dev/shm/NAME`, and any entry whose name begins with NAME.
    LeakCheck& watch_shm_name(const std::string& name);
    /// A path the programs create (a socket, a key file) or an `@abstract` socket name. A path
    /// that already exists when watched is reported only if it is replaced by another file.
    LeakCheck& watch_path(const std::string& path);

    /// One line per object left behind, for example "System V sem key=0x5102abcd id=3".
    std::vector<std::string> left_behind() const;

    /// Records the System V keys of the watched files that exist now. ProcessGroup calls it while
    /// it waits for programs, so the key of a key file the writer created and later removed is
    /// known.
    void note_keys() const;

private:
    struct WatchedPath {
        std::string path;
        std::string identity_before; ///< device and inode when watched, or empty
    };
    std::vector<std::string> before_fds_;   ///< this process's descriptors, "N -> target"
    std::vector<std::string> before_sysv_;  ///< System V objects that existed, "shm key id"
    std::vector<std::string> before_shm_;   ///< /dev/shm entries that existed
    std::size_t first_pid_ = 0;             ///< programs started from here on are the test's
    std::vector<std::string> shm_names_;
    std::vector<WatchedPath> paths_;
    mutable std::vector<int> key_bits_;     ///< ftok keys without the project id byte
};

/// Records a process the test started (ProcessGroup::start and in_child do): System V objects
/// it creates count as the test's in a LeakCheck made before it started.
void note_started(pid_t pid);

/// Runs `writer` with `data` on its standard input and `reader`, both to the end, and checks that
/// both exit 0 and that the reader wrote exactly `data`.
void check_pair_carries(const std::vector<std::string>& writer, const std::vector<std::string>& reader,
                        const std::string& data);

/// Runs each command line and checks a usage error: exit status 2 and one line on stderr that
/// points to --help.
void check_usage_errors(const std::vector<std::vector<std::string>>& command_lines);

/// Checks (a failed CHECK per object) that nothing was created since `leaks` and left.
void check_nothing_left(const LeakCheck& leaks);

/// `size` bytes from a seeded generator, zero bytes included.
std::string random_bytes(std::size_t size, unsigned seed);

/// Runs `body` in a forked child and returns the child's wait status: for cases that end in a
/// signal (Catch2 does not survive SIGBUS in its own process) or that change process-wide state
/// (signal handlers).
int in_child(const std::function<int()>& body);


// Making a fault happen on purpose: a system call that fails as on an older kernel, and a
// program stopped at a chosen system call while the test changes the world under it.

/// A system call that a program started through with_failing_syscalls() sees fail.
struct FailingSyscall {
    long number;          ///< SYS_pidfd_open, SYS_memfd_create...
    int error;            ///< the errno it fails with: ENOSYS as on a kernel that lacks it
    int argument = -1;    ///< >= 0: fail only when this argument (its low 32 bits) ...
    unsigned mask = 0;    ///< ... has a bit of `mask` set (MFD_NOEXEC_SEAL in memfd_create's flags)
};

/// The command line that runs `argv` with each of `failing` failing, through the tests' launcher
/// (build/tests/launch: a seccomp filter, installed with PR_SET_NO_NEW_PRIVS, so it works
/// unprivileged). Start it with ProcessGroup::start() like any program.
std::vector<std::string> with_failing_syscalls(const std::vector<FailingSyscall>& failing,
                                               const std::vector<std::string>& argv);

/// The command line that runs `argv` under this test's ptrace (PTRACE_TRACEME before the exec):
/// start it with ProcessGroup::start(), then call stop_at_syscall() at once. (LeakSanitizer
/// cannot run in a traced program: the launcher turns leak detection off for it.)
std::vector<std::string> traced(const std::vector<std::string>& argv);

/// One system call entry, as stop_at_syscall() shows it to its predicate.
struct SyscallEntry {
    long number;             ///< SYS_newfstatat, SYS_fcntl...
    unsigned long args[6];   ///< the arguments
};

/// Runs a program started with traced() until it enters a system call for which `is_target`
/// returns true, and leaves it stopped there, before the kernel executes that call: returns true.
/// The test can then change what the call will see (shrink a file, seal it) and let the program
/// go with resume_stopped(). Returns false when the program exited first (its status is then
/// recorded in `process`, and it is no longer traced). Fails the test case after 30 s.
bool stop_at_syscall(Process& process, const std::function<bool(const SyscallEntry&)>& is_target);

/// Lets a program stopped by stop_at_syscall() go on, no longer traced (PTRACE_DETACH): the
/// call it was stopped at runs now.
void resume_stopped(Process& process);

/// True for the calls that `fstat(fd)` becomes (glibc makes `newfstatat(fd, "", AT_EMPTY_PATH)`
/// or `fstat`), on descriptor `fd`, or on any descriptor from 3 up when `fd` is -1.
bool is_fstat(const SyscallEntry& call, int fd = -1);

/// True for `fcntl(fd, F_GET_SEALS)`, on descriptor `fd`, or on any from 3 up when `fd` is -1.
bool is_get_seals(const SyscallEntry& call, int fd = -1);

/// What descriptor `fd` of a running (or stopped) program refers to: the target of
/// /proc/PID/fd/FD ("/memfd:name (deleted)", "pipe:[123]"), or "" if it is not open. Lets a
/// stop_at_syscall() predicate tell the program's own calls from the dynamic loader's.
std::string descriptor_target(const Process& process, int fd);

/// The `unshare` command line (to put before a program's own) that gives it the namespaces in
/// `wanted` ("--mount", "--pid --fork"...) here: as root, just those; otherwise inside a user
/// namespace of its own, where the user is root and may mount a tmpfs or start a pid namespace.
/// Empty when this machine allows neither (unprivileged user namespaces switched off).
std::vector<std::string> unshare_for(const std::vector<std::string>& wanted);
/// The learner's build of `program` under $SHMTUT_EXERCISE_DIR (make exercise-NN sets it:
/// build/exercises/NN-name/N/01-sysv/hello_writer), or "" when that variable is unset or holds
/// no such program. binary() prefers it, so the chapter's own tests run against the exercise.
std::string exercise_binary(const std::string& program);

/// A ProcessGroup's hard limit, shortened to $SHMTUT_HARD_LIMIT seconds when that is set: a
/// learner's unfinished program (make exercise-NN) that hangs fails in seconds, not a minute.
std::chrono::seconds exercise_hard_limit(std::chrono::seconds hard_limit);

// Running the suite on another architecture under qemu-user (make test-cross, scripts/test-cross).

/// The user-mode emulator that runs this suite's programs ($SHMTUT_EMULATOR, for example
/// "qemu-arm-static"), or "" when they run natively.
std::string emulator();

/// `argv` as ProcessGroup::start() executes it: under an emulator, a program of the build folder
/// (an ELF file) is started through it, since no binfmt_misc handler may be registered.
std::vector<std::string> through_emulator(const std::vector<std::string>& argv);

/// "" when the programs run natively; under an emulator, the reason a case that needs `what`
/// cannot run there, for SKIP_TEST(): `if (auto why = emulator_cannot("ptrace"); !why.empty())`.
std::string emulator_cannot(const std::string& what);

/// "" when a program of the build can execute another one (natively, or under qemu-user with a
/// binfmt_misc handler registered for it); else the reason, for SKIP_TEST().
std::string emulator_cannot_exec();

/// "" natively and for a 64-bit target; under qemu-user running a 32-bit target (armhf), the
/// reason a case that reads /proc/PID/maps or /proc/PID/pagemap at the program's addresses cannot
/// run, for SKIP_TEST().
std::string emulator_cannot_show_addresses();

} // namespace testsupport

/// Ends the current test case as skipped: `SKIP_TEST("not root: ...")`. It records the reason
/// (see testsupport::record_skip()) and returns from the test case, so use it in the test case's
/// own body, before any check.
#define SKIP_TEST(reason)                      \
    do {                                       \
        ::testsupport::record_skip(reason);    \
        return;                                \
    } while (0)

namespace testsupport {
/// Waits for `waiter`, a program that waits for `peer` (a writer waiting for its reader's "done"):
/// when `peer` has already failed (exited non-zero or was killed), nothing will ever wake
/// `waiter`, which would hold the test until the group's hard limit; it is sent SIGTERM instead,
/// and the test goes on at once to report both. Never makes a failing run pass: a waiter stopped
/// this way was killed, and the peer's failure is still there to check.
void wait_for_waiter(ProcessGroup& group, Process& waiter, const Process& peer);
} // namespace testsupport
