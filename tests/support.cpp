/// @file tests/support.cpp
/// @brief Implementation of the test support.
#include "support.hpp"

#include <algorithm>
#include <cstdlib>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/ptrace.h>
#include <sys/sem.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// Catch2 v2 shows its reporter interfaces (for the ResultLog listener below) only when asked.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include "catch.hpp"

#ifndef SHMTUT_BUILD_DIR
#error "SHMTUT_BUILD_DIR must name the build folder (the Makefile defines it)"
#endif

namespace testsupport {

namespace {

/// Programs the tests started, in order (note_started()).
std::vector<pid_t> g_started_pids;
/// The LeakChecks alive now: ProcessGroup asks them to record keys while it waits.
std::vector<const LeakCheck*> g_active_leak_checks;

// Writing to the stdin pipe of a program that has exited must give EPIPE, not kill the tests.
const bool g_sigpipe_ignored = [] {
    std::signal(SIGPIPE, SIG_IGN);
    return true;
}();

void close_fd(int& fd) noexcept {
    if (fd != -1)
        ::close(fd);
    fd = -1;
}

[[noreturn]] void fail_errno(const char* call) {
    throw std::runtime_error(std::string(call) + ": " + std::strerror(errno));
}

} // namespace

std::string binary(const std::string& program) {
    if (std::string exercise = exercise_binary(program); !exercise.empty()) return exercise;
    return std::string(SHMTUT_BUILD_DIR) + "/" + program;
}

std::vector<std::string> command(const std::string& program, const std::vector<std::string>& name_args,
                                 const std::string& timeout, const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {binary(program)};
    argv.insert(argv.end(), name_args.begin(), name_args.end());
    argv.insert(argv.end(), {"--timeout", timeout});
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

std::string unique_name(const std::string& prefix) {
    static int counter = 0;
    return prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

int Process::exit_code() const {
    return wait_status && WIFEXITED(*wait_status) ? WEXITSTATUS(*wait_status) : -1;
}

int Process::killed_by() const {
    return wait_status && WIFSIGNALED(*wait_status) ? WTERMSIG(*wait_status) : 0;
}

std::string Process::last_error_line() const {
    std::istringstream lines(err);
    std::string line, last;
    while (std::getline(lines, line))
        if (!line.empty())
            last = line;
    return last;
}

ProcessGroup::ProcessGroup(std::chrono::seconds hard_limit)
    : hard_deadline_(std::chrono::steady_clock::now() + exercise_hard_limit(hard_limit)) {
    (void)g_sigpipe_ignored;
}

ProcessGroup::~ProcessGroup() {
    kill_all();
}

void ProcessGroup::kill_all() noexcept {
    for (Process& p : processes_) {
        if (!p.wait_status) {
            ::kill(p.pid, SIGKILL);
            int status = 0;
            while (::waitpid(p.pid, &status, 0) == -1 && errno == EINTR) {
            }
            p.wait_status = status;
        }
        close_fd(p.stdin_fd);
        close_fd(p.stdout_fd);
        close_fd(p.stderr_fd);
    }
}

std::optional<RunAs> unprivileged_ids() {
    if (::geteuid() != 0)
        return std::nullopt;
    // uid 65534 must be able to reach the programs: a checkout under a 0700 folder (mktemp -d)
    // keeps it out, and the case then cannot run here.
    for (std::filesystem::path dir = SHMTUT_BUILD_DIR; dir.has_relative_path(); dir = dir.parent_path()) {
        struct stat status {};
        if (::stat(dir.c_str(), &status) == -1 || (status.st_mode & S_IXOTH) == 0)
            return std::nullopt;
    }
    return RunAs{65534, 65534};
}

namespace {

/// Appends one line to the result log that scripts/run-tests reads ($SHMTUT_RESULT_LOG), written
/// and flushed at once so that a runner that crashes leaves every line written before.
void log_result(const std::string& line) {
    const char* path = std::getenv("SHMTUT_RESULT_LOG");
    if (path == nullptr || *path == '\0')
        return;
    std::ofstream out(path, std::ios::app);
    out << line << '\n';
}

/// Catch2 counts a case that skipped as passed, since it failed nothing, and says nothing about
/// a case during which the runner crashed. This listener logs each case's start and end
/// ("start<TAB>NAME", "end<TAB>NAME<TAB>FAILED ASSERTIONS"); record_skip() adds "skip<TAB>NAME<TAB>
/// REASON". scripts/run-tests counts from that log: a case is failed if it failed an assertion or
/// started and never ended, skipped if it skipped, and passed only otherwise.
#if __has_include(<catch2/catch_all.hpp>)
class ResultLog : public Catch::EventListenerBase {
public:
    using Catch::EventListenerBase::EventListenerBase;
    void testCaseStarting(Catch::TestCaseInfo const& info) override { log_result("start\t" + info.name); }
    void testCaseEnded(Catch::TestCaseStats const& stats) override {
        log_result("end\t" + stats.testInfo->name + "\t" + std::to_string(stats.totals.assertions.failed));
    }
};
#else
class ResultLog : public Catch::TestEventListenerBase {
public:
    using Catch::TestEventListenerBase::TestEventListenerBase;
    void testCaseStarting(Catch::TestCaseInfo const& info) override {
        Catch::TestEventListenerBase::testCaseStarting(info);
        log_result("start\t" + info.name);
    }
    void testCaseEnded(Catch::TestCaseStats const& stats) override {
        log_result("end\t" + stats.testInfo.name + "\t" + std::to_string(stats.totals.assertions.failed));
        Catch::TestEventListenerBase::testCaseEnded(stats);
    }
};
#endif

} // namespace

CATCH_REGISTER_LISTENER(ResultLog)

void record_skip(const std::string& reason) {
    WARN("skipped: " << reason);
    log_result("skip\t" + Catch::getResultCapture().getCurrentTestName() + "\t" + reason);
}

Process& ProcessGroup::start(const std::string& name, const std::vector<std::string>& argv, Stdin in, RunAs as) {
    int in_pipe[2] = {-1, -1}, out_pipe[2], err_pipe[2];
    if ((in == Stdin::kPipe && ::pipe2(in_pipe, O_CLOEXEC) == -1) || ::pipe2(out_pipe, O_CLOEXEC) == -1 ||
        ::pipe2(err_pipe, O_CLOEXEC) == -1)
        fail_errno("pipe2");
    // A new group when no member of the old one is still running (a group ends with its last member).
    bool group_alive = std::any_of(processes_.begin(), processes_.end(), [](const Process& p) { return !p.wait_status; });
    pid_t group = group_alive ? group_ : 0;

    const std::vector<std::string> full_argv = through_emulator(argv);
    pid_t pid = ::fork();
    if (pid == -1)
        fail_errno("fork");
    if (pid == 0) {
        ::setpgid(0, group);
        std::signal(SIGPIPE, SIG_DFL);
        int null_fd = in == Stdin::kNull ? ::open("/dev/null", O_RDONLY) : in_pipe[0];
        ::dup2(null_fd, STDIN_FILENO);
        ::dup2(out_pipe[1], STDOUT_FILENO);
        ::dup2(err_pipe[1], STDERR_FILENO);
        ::close_range(3, ~0U, 0); // the program inherits 0, 1 and 2 only
        if (as.gid != static_cast<gid_t>(-1) && (::setgroups(0, nullptr) == -1 || ::setgid(as.gid) == -1))
            ::_exit(126);
        if (as.uid != static_cast<uid_t>(-1) && ::setuid(as.uid) == -1)
            ::_exit(126);
        std::vector<char*> args;
        for (const std::string& arg : full_argv)
            args.push_back(const_cast<char*>(arg.c_str()));
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
        ::_exit(127);
    }
    ::setpgid(pid, group == 0 ? pid : group); // also in the parent: no race with the child's exec
    note_started(pid);
    if (group == 0)
        group_ = pid;

    Process& p = processes_.emplace_back();
    p.name = name;
    p.pid = pid;
    if (in == Stdin::kPipe) {
        ::close(in_pipe[0]);
        p.stdin_fd = in_pipe[1];
        ::fcntl(p.stdin_fd, F_SETFL, O_NONBLOCK);
    }
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    p.stdout_fd = out_pipe[0];
    p.stderr_fd = err_pipe[0];
    return p;
}

void ProcessGroup::feed(Process& process, std::string bytes, bool close_after) {
    process.pending_input += bytes;
    process.close_stdin_when_done = close_after;
    if (process.pending_input.empty() && close_after)
        close_fd(process.stdin_fd);
}

void ProcessGroup::close_stdin(Process& process) {
    process.pending_input.clear();
    close_fd(process.stdin_fd);
}

void ProcessGroup::close_stdout(Process& process) {
    close_fd(process.stdout_fd);
}

void ProcessGroup::signal(Process& process, int signal_number) {
    if (!process.wait_status)
        ::kill(process.pid, signal_number);
}

void ProcessGroup::pump_once(int poll_ms) {
    for (const LeakCheck* leaks : g_active_leak_checks)
        leaks->note_keys(); // a key file may exist only while its writer runs
    std::vector<pollfd> fds;
    std::vector<std::pair<Process*, int>> owners; // which process, which stream (0, 1, 2)
    for (Process& p : processes_) {
        if (p.stdin_fd != -1 && !p.pending_input.empty()) {
            fds.push_back({p.stdin_fd, POLLOUT, 0});
            owners.emplace_back(&p, 0);
        }
        if (p.stdout_fd != -1) {
            fds.push_back({p.stdout_fd, POLLIN, 0});
            owners.emplace_back(&p, 1);
        }
        if (p.stderr_fd != -1) {
            fds.push_back({p.stderr_fd, POLLIN, 0});
            owners.emplace_back(&p, 2);
        }
    }
    if (!fds.empty()) {
        if (::poll(fds.data(), fds.size(), poll_ms) == -1 && errno != EINTR)
            fail_errno("poll");
    } else {
        ::usleep(static_cast<useconds_t>(poll_ms) * 1000);
    }
    for (std::size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].revents == 0)
            continue;
        Process& p = *owners[i].first;
        if (owners[i].second == 0) {
            ssize_t n = ::write(p.stdin_fd, p.pending_input.data(), std::min<std::size_t>(p.pending_input.size(), 1 << 16));
            if (n > 0)
                p.pending_input.erase(0, static_cast<std::size_t>(n));
            else if (n == -1 && errno != EAGAIN && errno != EINTR)
                p.pending_input.clear(); // EPIPE: the program has gone
            if (p.pending_input.empty() && p.close_stdin_when_done)
                close_fd(p.stdin_fd);
            continue;
        }
        int& fd = owners[i].second == 1 ? p.stdout_fd : p.stderr_fd;
        std::string& sink = owners[i].second == 1 ? p.out : p.err;
        char buffer[1 << 16];
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n > 0)
            sink.append(buffer, static_cast<std::size_t>(n));
        else if (n == 0 || (errno != EINTR && errno != EAGAIN))
            close_fd(fd);
    }
    // Reap at once: a program that exited is never left a zombie.
    for (Process& p : processes_) {
        if (p.wait_status)
            continue;
        int status = 0;
        if (::waitpid(p.pid, &status, WNOHANG) == p.pid)
            p.wait_status = status;
    }
}

void ProcessGroup::pump_until(const std::function<bool()>& done, const std::string& what) {
    while (!done()) {
        if (std::chrono::steady_clock::now() >= hard_deadline_) {
            std::string report;
            for (const Process& p : processes_)
                report += "\n--- " + p.name + " stderr:\n" + p.err;
            if (group_ > 0)
                ::killpg(group_, SIGKILL);
            kill_all();
            FAIL("hard deadline passed while waiting for " << what << "; killed the process group" << report);
        }
        pump_once(20);
    }
}

void ProcessGroup::wait(Process& process) {
    pump_until([&] { return process.finished(); }, process.name + " to exit");
}

void ProcessGroup::wait_for_stderr(Process& process, const std::string& text) {
    pump_until([&] { return process.err.find(text) != std::string::npos || process.finished(); },
               process.name + " to print '" + text + "'");
}

void ProcessGroup::wait_for_stdout(Process& process, std::size_t bytes) {
    pump_until([&] { return process.out.size() >= bytes || process.finished(); },
               process.name + " to write " + std::to_string(bytes) + " bytes");
}

bool ProcessGroup::any_member_alive() const {
    return group_ > 0 && ::killpg(group_, 0) == 0;
}

TempDir::TempDir() {
    char pattern[] = "/tmp/shmtut-test.XXXXXX";
    if (::mkdtemp(pattern) == nullptr)
        fail_errno("mkdtemp");
    path_ = pattern;
}

TempDir::~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
}

std::vector<std::string> TempDir::entries() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_))
        names.push_back(entry.path().filename().string());
    return names;
}

namespace {

/// This process's open descriptors, "N -> target", sorted.
std::vector<std::string> descriptor_snapshot() {
    std::vector<std::string> fds;
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr)
        fail_errno("opendir(/proc/self/fd)");
    while (dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] == '.' || std::atoi(entry->d_name) == ::dirfd(dir))
            continue;
        char target[256] = {};
        std::string link = std::string("/proc/self/fd/") + entry->d_name;
        ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
        fds.push_back(std::string(entry->d_name) + " -> " + (n > 0 ? target : "?"));
    }
    ::closedir(dir);
    std::sort(fds.begin(), fds.end());
    return fds;
}

/// One System V segment or semaphore set, from /proc/sysvipc.
struct SysvObject {
    std::string kind; ///< "shm" or "sem"
    long key = 0;
    int id = -1;
    std::vector<pid_t> pids; ///< shm: creator and last user; sem: empty (read with semctl)
    int semaphores = 0;      ///< sem: how many

    std::string identity() const { return kind + " " + std::to_string(key) + " " + std::to_string(id); }
    std::string describe() const {
        char key_text[16];
        std::snprintf(key_text, sizeof key_text, "0x%08lx", static_cast<unsigned long>(key) & 0xffffffffUL);
        return "System V " + kind + " key=" + key_text + " id=" + std::to_string(id);
    }
};

std::vector<SysvObject> sysv_objects() {
    std::vector<SysvObject> objects;
    for (const char* kind : {"shm", "sem"}) {
        std::ifstream table(std::string("/proc/sysvipc/") + kind);
        std::string line;
        std::getline(table, line); // column titles
        while (std::getline(table, line)) {
            std::istringstream fields(line);
            SysvObject object;
            object.kind = kind;
            std::string perms;
            fields >> object.key >> object.id >> perms;
            if (object.kind == "shm") {
                // key shmid perms size cpid lpid ...
                long size = 0;
                pid_t creator = 0, last = 0;
                fields >> size >> creator >> last;
                object.pids = {creator, last};
            } else {
                // key semid perms nsems ...
                fields >> object.semaphores;
            }
            if (fields)
                objects.push_back(object);
        }
    }
    return objects;
}

/// The pids of the semaphores' last operations (semctl GETPID); empty when this user may not
/// read the set (then it is not the test's: the test's programs run as its user, or as another
/// user only when the test is root).
std::vector<pid_t> semaphore_pids(const SysvObject& set) {
    std::vector<pid_t> pids;
    for (int number = 0; number < set.semaphores; ++number) {
        int pid = ::semctl(set.id, number, GETPID);
        if (pid > 0)
            pids.push_back(pid);
    }
    return pids;
}

std::vector<std::string> dev_shm_entries() {
    std::vector<std::string> names;
    std::error_code error;
    for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", error))
        names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

/// "device:inode" of what is at `path` (not following a symlink), or empty if nothing is.
std::string file_identity(const std::string& path) {
    struct stat info {};
    if (::lstat(path.c_str(), &info) == -1)
        return {};
    return std::to_string(info.st_dev) + ":" + std::to_string(info.st_ino);
}

/// True while an abstract socket named `name` ("@name") exists in this network namespace.
bool abstract_socket_exists(const std::string& name) {
    std::ifstream table("/proc/net/unix");
    std::string line;
    while (std::getline(table, line))
        if (line.size() > name.size() && line.compare(line.size() - name.size(), name.size(), name) == 0 &&
            line[line.size() - name.size() - 1] == ' ')
            return true;
    return false;
}

bool sorted_contains(const std::vector<std::string>& sorted, const std::string& value) {
    return std::binary_search(sorted.begin(), sorted.end(), value);
}

} // namespace

void note_started(pid_t pid) {
    g_started_pids.push_back(pid);
}

LeakCheck::LeakCheck()
    : before_fds_(descriptor_snapshot()), before_shm_(dev_shm_entries()), first_pid_(g_started_pids.size()) {
    for (const SysvObject& object : sysv_objects())
        before_sysv_.push_back(object.identity());
    std::sort(before_sysv_.begin(), before_sysv_.end());
    g_active_leak_checks.push_back(this);
}

LeakCheck::~LeakCheck() {
    g_active_leak_checks.erase(std::remove(g_active_leak_checks.begin(), g_active_leak_checks.end(), this),
                               g_active_leak_checks.end());
}

LeakCheck& LeakCheck::watch_shm_name(const std::string& name) {
    shm_names_.push_back(name.substr(name.rfind('/') == std::string::npos ? 0 : name.rfind('/') + 1));
    return *this;
}

LeakCheck& LeakCheck::watch_path(const std::string& path) {
    paths_.push_back({path, path.starts_with("@") ? std::string() : file_identity(path)});
    note_keys();
    return *this;
}

void LeakCheck::note_keys() const {
    for (const WatchedPath& watched : paths_) {
        struct stat info {};
        if (watched.path.starts_with("@") || ::stat(watched.path.c_str(), &info) == -1 || !S_ISREG(info.st_mode))
            continue;
        // ftok(3) in glibc: (st_ino & 0xffff) | (st_dev & 0xff) << 16 | (proj_id & 0xff) << 24.
        int bits = static_cast<int>((info.st_ino & 0xffff) | ((info.st_dev & 0xff) << 16));
        if (std::find(key_bits_.begin(), key_bits_.end(), bits) == key_bits_.end())
            key_bits_.push_back(bits);
    }
}

std::vector<std::string> LeakCheck::left_behind() const {
    note_keys();
    std::vector<std::string> left;

    std::vector<std::string> fds_now = descriptor_snapshot();
    for (const std::string& fd : fds_now)
        if (!sorted_contains(before_fds_, fd))
            left.push_back("open descriptor " + fd);

    for (const std::string& entry : dev_shm_entries())
        for (const std::string& name : shm_names_)
            if (entry.starts_with(name) && !sorted_contains(before_shm_, entry)) {
                left.push_back("/dev/shm entry /dev/shm/" + entry);
                break;
            }

    for (const WatchedPath& watched : paths_) {
        if (watched.path.starts_with("@")) {
            if (abstract_socket_exists(watched.path))
                left.push_back("abstract socket " + watched.path);
            continue;
        }
        std::string identity = file_identity(watched.path);
        if (!identity.empty() && identity != watched.identity_before)
            left.push_back("file " + watched.path);
    }

    std::vector<pid_t> test_pids(g_started_pids.begin() + static_cast<std::ptrdiff_t>(first_pid_), g_started_pids.end());
    test_pids.push_back(::getpid());
    auto is_test_pid = [&](pid_t pid) {
        return pid > 0 && std::find(test_pids.begin(), test_pids.end(), pid) != test_pids.end();
    };
    for (const SysvObject& object : sysv_objects()) {
        if (sorted_contains(before_sysv_, object.identity()))
            continue;
        bool keyed_by_watched_file =
            object.key != 0 && std::find(key_bits_.begin(), key_bits_.end(), static_cast<int>(object.key & 0xffffff)) !=
                                   key_bits_.end();
        std::vector<pid_t> pids = object.kind == "shm" ? object.pids : semaphore_pids(object);
        if (keyed_by_watched_file || std::any_of(pids.begin(), pids.end(), is_test_pid))
            left.push_back(object.describe());
    }
    return left;
}

void check_pair_carries(const std::vector<std::string>& writer, const std::vector<std::string>& reader,
                        const std::string& data) {
    ProcessGroup group;
    Process& w = group.start("writer", writer, Stdin::kPipe);
    Process& r = group.start("reader", reader);
    group.feed(w, data, true);
    group.wait(w);
    group.wait(r);
    INFO("writer stderr:\n" << w.err << "reader stderr:\n" << r.err);
    CHECK(w.exit_code() == 0);
    CHECK(r.exit_code() == 0);
    REQUIRE(r.out.size() == data.size());
    CHECK(r.out == data);
}

void check_usage_errors(const std::vector<std::vector<std::string>>& command_lines) {
    ProcessGroup group;
    for (const auto& argv : command_lines) {
        Process& program = group.start(argv[0], argv);
        group.wait(program);
        std::string shown;
        for (const std::string& word : argv)
            shown += " " + word;
        INFO("command:" << shown << "\nstderr: " << program.err);
        CHECK(program.exit_code() == 2);
        CHECK(std::count(program.err.begin(), program.err.end(), '\n') == 1);
        CHECK(program.err.find("--help") != std::string::npos);
    }
}

void check_nothing_left(const LeakCheck& leaks) {
    std::vector<std::string> left = leaks.left_behind();
    for (const std::string& object : left)
        UNSCOPED_INFO("left behind: " << object);
    CHECK(left.empty());
}

std::string random_bytes(std::size_t size, unsigned seed) {
    std::mt19937 generator(seed);
    std::string bytes(size, '\0');
    for (std::size_t i = 0; i < size; i += 4) {
        auto word = static_cast<std::uint32_t>(generator());
        std::memcpy(bytes.data() + i, &word, std::min<std::size_t>(4, size - i));
    }
    // Runs of zero bytes, so that a C-string bug would show.
    for (std::size_t i = 0; i + 64 < size; i += size / 7 + 1)
        std::memset(bytes.data() + i, 0, 64);
    return bytes;
}

int in_child(const std::function<int()>& body) {
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid == -1)
        fail_errno("fork");
    if (pid == 0) {
        int code = 1;
        try {
            code = body();
        } catch (...) {
            code = 99;
        }
        ::_exit(code);
    }
    note_started(pid);
    int status = 0;
    while (::waitpid(pid, &status, 0) == -1 && errno == EINTR) {
    }
    return status;
}


std::vector<std::string> with_failing_syscalls(const std::vector<FailingSyscall>& failing,
                                               const std::vector<std::string>& argv) {
    std::vector<std::string> launch = {binary("tests/launch")};
    for (const FailingSyscall& rule : failing) {
        std::string text = std::to_string(rule.number);
        if (rule.argument >= 0)
            text += ":" + std::to_string(rule.argument) + ":" + std::to_string(rule.mask);
        launch.insert(launch.end(), {"--fail", text + "=" + std::to_string(rule.error)});
    }
    launch.push_back("--");
    launch.insert(launch.end(), argv.begin(), argv.end());
    return launch;
}

std::vector<std::string> traced(const std::vector<std::string>& argv) {
    std::vector<std::string> launch = {binary("tests/launch"), "--traced", "--"};
    launch.insert(launch.end(), argv.begin(), argv.end());
    return launch;
}

namespace {

/// waitpid for a traced child, retrying EINTR, polling so that a program that never stops
/// cannot hang the suite.
int wait_traced(Process& process, std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        int status = 0;
        pid_t got = ::waitpid(process.pid, &status, WNOHANG | __WALL);
        if (got == process.pid)
            return status;
        if (got == -1 && errno != EINTR)
            fail_errno("waitpid(traced)");
        if (std::chrono::steady_clock::now() >= deadline) {
            ::kill(process.pid, SIGKILL);
            FAIL(process.name << " did not reach the system call it was to stop at within 30 s");
        }
        ::usleep(1000);
    }
}

} // namespace

bool stop_at_syscall(Process& process, const std::function<bool(const SyscallEntry&)>& is_target) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    int status = wait_traced(process, deadline); // the stop at its exec (PTRACE_TRACEME)
    bool options_set = false;
    for (;;) {
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            process.wait_status = status;
            return false;
        }
        int deliver = 0;
        if (!options_set) {
            // TRACESYSGOOD: a system call stop reports SIGTRAP|0x80, told apart from a real
            // SIGTRAP. EXITKILL: if the test dies, the program dies too, never left stopped.
            if (::ptrace(PTRACE_SETOPTIONS, process.pid, nullptr, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL) == -1)
                fail_errno("ptrace(PTRACE_SETOPTIONS)");
            options_set = true;
        } else if (WSTOPSIG(status) == (SIGTRAP | 0x80)) {
            __ptrace_syscall_info info{};
            if (::ptrace(PTRACE_GET_SYSCALL_INFO, process.pid, sizeof info, &info) == -1)
                fail_errno("ptrace(PTRACE_GET_SYSCALL_INFO)");
            if (info.op == PTRACE_SYSCALL_INFO_ENTRY) {
                SyscallEntry call{static_cast<long>(info.entry.nr), {}};
                for (int i = 0; i < 6; ++i)
                    call.args[i] = static_cast<unsigned long>(info.entry.args[i]);
                if (is_target(call))
                    return true;
            }
        } else {
            deliver = WSTOPSIG(status); // a real signal: pass it on
        }
        if (::ptrace(PTRACE_SYSCALL, process.pid, nullptr, deliver) == -1)
            fail_errno("ptrace(PTRACE_SYSCALL)");
        status = wait_traced(process, deadline);
    }
}

void resume_stopped(Process& process) {
    if (::ptrace(PTRACE_DETACH, process.pid, nullptr, 0) == -1)
        fail_errno("ptrace(PTRACE_DETACH)");
}

bool is_fstat(const SyscallEntry& call, int fd) {
    bool fd_matches = fd == -1 ? static_cast<int>(call.args[0]) >= 3 : static_cast<int>(call.args[0]) == fd;
#ifdef SYS_newfstatat
    if (call.number == SYS_newfstatat && fd_matches)
        return true;
#endif
#ifdef SYS_fstat
    if (call.number == SYS_fstat && fd_matches)
        return true;
#endif
#ifdef SYS_fstat64
    if (call.number == SYS_fstat64 && fd_matches)
        return true;
#endif
#ifdef SYS_statx
    if (call.number == SYS_statx && fd_matches)
        return true;
#endif
    return false;
}

bool is_get_seals(const SyscallEntry& call, int fd) {
    bool fd_matches = fd == -1 ? static_cast<int>(call.args[0]) >= 3 : static_cast<int>(call.args[0]) == fd;
#ifdef SYS_fcntl64
    if (call.number == SYS_fcntl64 && fd_matches && call.args[1] == F_GET_SEALS)
        return true;
#endif
    return call.number == SYS_fcntl && fd_matches && call.args[1] == F_GET_SEALS;
}

std::string descriptor_target(const Process& process, int fd) {
    char target[512] = {};
    std::string link = "/proc/" + std::to_string(process.pid) + "/fd/" + std::to_string(fd);
    ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    return n > 0 ? std::string(target, static_cast<std::size_t>(n)) : std::string();
}

std::vector<std::string> unshare_for(const std::vector<std::string>& wanted) {
    std::vector<std::string> argv = {"/usr/bin/unshare"};
    if (::geteuid() != 0) {
        argv.push_back("--user");
        argv.push_back("--map-root-user");
    }
    argv.insert(argv.end(), wanted.begin(), wanted.end());
    std::string probe;
    for (const std::string& word : argv)
        probe += word + " ";
    if (std::system((probe + "/bin/true >/dev/null 2>&1").c_str()) != 0)
        return {};
    return argv;
}

std::string exercise_binary(const std::string& program) {
    const char* dir = std::getenv("SHMTUT_EXERCISE_DIR");
    if (dir == nullptr || *dir == '\0') return {};
    std::string path = std::string(dir) + "/" + program;
    return ::access(path.c_str(), X_OK) == 0 ? path : std::string();
}

std::chrono::seconds exercise_hard_limit(std::chrono::seconds hard_limit) {
    const char* text = std::getenv("SHMTUT_HARD_LIMIT");
    if (text == nullptr || *text == '\0') return hard_limit;
    char* end = nullptr;
    long seconds = std::strtol(text, &end, 10);
    if (*end != '\0' || seconds <= 0) return hard_limit;
    return std::min(hard_limit, std::chrono::seconds(seconds));
}

// Running the suite on another architecture under qemu-user (make test-cross).

std::string emulator() {
    const char* name = std::getenv("SHMTUT_EMULATOR");
    return name == nullptr ? std::string() : std::string(name);
}

std::vector<std::string> through_emulator(const std::vector<std::string>& argv) {
    const std::string qemu = emulator();
    if (qemu.empty())
        return argv;
    // The first program of the build folder (an ELF file for the target) on the command line:
    // argv[0], or a later argument when a tool of this machine starts it (unshare ... reader).
    // A script, or a tool such as python3, runs as it is.
    const std::string build_dir = std::string(SHMTUT_BUILD_DIR) + "/";
    for (std::size_t i = 0; i < argv.size(); ++i) {
        if (argv[i].compare(0, build_dir.size(), build_dir) != 0)
            continue;
        char magic[4] = {};
        std::ifstream file(argv[i], std::ios::binary);
        if (!file.read(magic, sizeof magic) || std::memcmp(magic, "\177ELF", 4) != 0)
            continue;
        std::vector<std::string> full(argv.begin(), argv.begin() + static_cast<std::ptrdiff_t>(i));
        full.push_back(qemu);
        full.insert(full.end(), argv.begin() + static_cast<std::ptrdiff_t>(i), argv.end());
        return full;
    }
    return argv;
}

std::string emulator_cannot(const std::string& what) {
    const std::string qemu = emulator();
    if (qemu.empty())
        return {};
    return qemu + " (qemu-user) cannot emulate " + what;
}

std::string emulator_cannot_exec() {
    const std::string qemu = emulator();
    if (qemu.empty())
        return {};
    // With a binfmt_misc handler for the target (qemu-user-static registers "qemu-ARCH" on a
    // machine where binfmt_misc is mounted), the kernel itself starts qemu for a target program.
    std::string handler = qemu.substr(qemu.rfind('/') + 1);
    if (const auto suffix = handler.rfind("-static"); suffix != std::string::npos)
        handler.erase(suffix);
    std::ifstream entry("/proc/sys/fs/binfmt_misc/" + handler);
    std::string state;
    if (std::getline(entry, state) && state == "enabled")
        return {};
    return qemu + " (qemu-user) cannot let a target program execute another one (posix_spawn): "
                  "no binfmt_misc handler " + handler + " is registered on this machine";
}

std::string emulator_cannot_show_addresses() {
    const std::string qemu = emulator();
    if (qemu.empty() || sizeof(void*) == 8)
        return {};
    return qemu + " (qemu-user) runs a 32-bit program at an offset inside its own address space: "
                  "/proc/PID/maps and /proc/PID/pagemap show the emulator's addresses, not the program's";
}

} // namespace testsupport

namespace testsupport {
void wait_for_waiter(ProcessGroup& group, Process& waiter, const Process& peer) {
    if (peer.wait_status && (peer.exit_code() != 0 || peer.killed_by() != 0))
        group.signal(waiter, SIGTERM);
    group.wait(waiter);
}
} // namespace testsupport
