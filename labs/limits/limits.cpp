/// @file labs/limits/limits.cpp
/// @brief Lab limits: when the kernel says no. Each case hits one limit, on purpose, inside a
///        namespace or under an rlimit of its own, and prints the errno that the chapters'
///        programs would report.
///
/// Usage: `limits [--quiet] [CASE...]` with CASE one of `sysv`, `devshm`, `nofile`, `cgroup`
/// (default: all four).
///
///     build/labs/limits/limits sysv      shmmax, shmmni, shmall and kernel.sem, in a new IPC namespace
///     build/labs/limits/limits devshm    a 1 MiB /dev/shm in a new mount namespace: ENOSPC, SIGBUS
///     build/labs/limits/limits nofile    RLIMIT_NOFILE: EMFILE, ETOOMANYREFS, MSG_CTRUNC
///     build/labs/limits/limits cgroup    who pays for shared memory in a memory cgroup (root)
///
/// No system-wide setting is changed: the System V limits are per IPC namespace
/// (`ipc_namespaces(7)`), the small tmpfs is mounted in a private mount namespace
/// (`mount_namespaces(7)`), and RLIMIT_NOFILE is per process (`setrlimit(2)`). Without root the
/// namespaces come with a user namespace (`user_namespaces(7)`) where the program is root; where
/// that is not allowed the case exits 77 and says why. Each case runs in a forked child, so its
/// namespaces and limits end with it.
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: limits [OPTIONS] [CASE...]

Lab limits. Hits a kernel limit on purpose and prints, on standard output, the errno
the chapters' programs would report. Cases (default: all):

  sysv     System V shmmax, shmmni, shmall and kernel.sem, lowered in a new IPC
           namespace; chapter 01's writer run there too
  devshm   a 1 MiB tmpfs on /dev/shm in a new mount namespace: ENOSPC from
           posix_fallocate, SIGBUS from a store; chapter 02's writer run there too
  nofile   RLIMIT_NOFILE: EMFILE, descriptors in flight (ETOOMANYREFS), and a
           receiver at its limit (the kernel drops the descriptor: MSG_CTRUNC)
  cgroup   who pays for shared memory under a memory cgroup: the process that
           touches a page first (needs root and a writable memory cgroup)

No system-wide setting is changed: namespaces and rlimits only. Without root, the
namespaces come inside a user namespace.

Options:
  --quiet  no narration on standard error
  --help   show this help

Exit status: 0 every case hit its limit as shown; 1 one did not, or a call failed;
2 a usage error; 77 a case cannot run here (the line says why) and none failed.
)";

/// "ENOSPC", "EINVAL": the name a learner looks up in the man page.
std::string errno_name(int error_number) {
    const char* name = strerrorname_np(error_number); // glibc 2.32
    return name != nullptr ? name : std::to_string(error_number);
}

std::string read_text(const std::string& path) {
    std::ifstream file(path);
    std::stringstream text;
    text << file.rdbuf();
    std::string value = text.str();
    while (!value.empty() && (value.back() == '\n' || value.back() == ' '))
        value.pop_back();
    return value;
}

/// Writes `text` to a /proc or /sys file in one write(2), as `echo TEXT > PATH` does.
void write_text(const std::string& path, const std::string& text) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd)
        throw_errno("open(\"" + path + "\", O_WRONLY)");
    if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        throw_errno("write(\"" + path + "\", \"" + text + "\")");
}

/// Enters new namespaces (`flags`: CLONE_NEWIPC, CLONE_NEWNS). As root that is one unshare(2).
/// Otherwise a user namespace comes first, in which this process is root (uid_map "0 UID 1"),
/// so that it may change the namespaces it owns, and only those.
void enter_namespaces(int flags, const char* what, const Narrator& say) {
    if (::geteuid() == 0) {
        if (::unshare(flags) == -1)
            throw_errno(std::string("unshare(") + what + ")");
        say.say("unshare(%s) = 0", what);
        return;
    }
    const uid_t uid = ::geteuid();
    const gid_t gid = ::getegid();
    if (::unshare(CLONE_NEWUSER | flags) == -1) {
        if (errno == EPERM || errno == EINVAL || errno == ENOSPC)
            throw Unsupported(std::string("unshare(CLONE_NEWUSER|") + what + "): " + std::strerror(errno) +
                              ": not root, and unprivileged user namespaces are not allowed here");
        throw_errno(std::string("unshare(CLONE_NEWUSER|") + what + ")");
    }
    write_text("/proc/self/setgroups", "deny");
    write_text("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1");
    write_text("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1");
    say.say("unshare(CLONE_NEWUSER|%s) = 0: not root, so in a user namespace where uid %u is root", what,
            static_cast<unsigned>(uid));
}

/// The binary of a chapter program beside this one: build/labs/limits/limits -> build/NN/writer.
std::string chapter_binary(const std::string& program) {
    char self[4096];
    ssize_t length = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0)
        return {};
    std::string path(self, static_cast<std::size_t>(length));
    for (int up = 0; up < 3; ++up)
        path = path.substr(0, path.rfind('/'));
    return path + "/" + program;
}

/// Runs a chapter's program (stdin /dev/null, stdout discarded) and returns the last line of
/// its stderr: where every chapter program puts its one error line.
std::string chapter_says(const std::vector<std::string>& argv) {
    if (::access(argv[0].c_str(), X_OK) != 0)
        return "(not built: run make first)";
    int err[2];
    if (::pipe2(err, O_CLOEXEC) == -1)
        throw_errno("pipe2");
    UniqueFd err_read(err[0]), err_write(err[1]);
    std::fflush(stdout);
    pid_t child = ::fork();
    if (child == -1)
        throw_errno("fork");
    if (child == 0) {
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, STDIN_FILENO);
        ::dup2(null, STDOUT_FILENO);
        ::dup2(err_write.get(), STDERR_FILENO);
        std::vector<char*> args;
        for (const std::string& arg : argv)
            args.push_back(const_cast<char*>(arg.c_str()));
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    err_write.reset();
    std::string text;
    char buffer[4096];
    for (ssize_t got; (got = ::read(err_read.get(), buffer, sizeof buffer)) != 0;) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        text.append(buffer, static_cast<std::size_t>(got));
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    while (!text.empty() && text.back() == '\n')
        text.pop_back();
    std::string::size_type line = text.rfind('\n');
    std::string last = line == std::string::npos ? text : text.substr(line + 1);
    return last + " [exit " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)) + "]";
}

/// A finding: one line on standard output.
void report(const char* case_name, const std::string& text) {
    std::printf("%s: %s\n", case_name, text.c_str());
    std::fflush(stdout);
}

// ----- sysv -----------------------------------------------------------------------------------

/// shmget(IPC_PRIVATE, size), returning the id or -errno.
int try_shmget(std::size_t size) {
    int id = ::shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
    return id == -1 ? -errno : id;
}

int case_sysv(const Narrator& say) {
    enter_namespaces(CLONE_NEWIPC, "CLONE_NEWIPC", say);
    say.say("this IPC namespace starts with the defaults: shmmax=%s shmmni=%s shmall=%s sem=\"%s\"",
            read_text("/proc/sys/kernel/shmmax").c_str(), read_text("/proc/sys/kernel/shmmni").c_str(),
            read_text("/proc/sys/kernel/shmall").c_str(), read_text("/proc/sys/kernel/sem").c_str());
    const std::string shmmax = read_text("/proc/sys/kernel/shmmax"), shmmni = read_text("/proc/sys/kernel/shmmni"),
                      shmall = read_text("/proc/sys/kernel/shmall");
    bool all_hit = true;
    auto expect = [&](int result, int error_number) { all_hit = all_hit && result == -error_number; };

    // shmmax: the largest segment. Chapter 01 asks for 256 + 65536 bytes.
    try {
        write_text("/proc/sys/kernel/shmmax", "65536");
    } catch (const SysError& e) {
        if (::geteuid() != 0 && (e.code().value() == EACCES || e.code().value() == EPERM))
            throw Unsupported(std::string(e.what()) + ": this kernel lets only the initial namespace's root "
                              "change IPC limits");
        throw;
    }
    int result = try_shmget(65792);
    say.say("echo 65536 > /proc/sys/kernel/shmmax; shmget(IPC_PRIVATE, 65792, IPC_CREAT|0600) = -1 %s",
            errno_name(-result).c_str());
    report("sysv", "shmmax=65536: shmget(65792 bytes) = -1 " + errno_name(-result));
    expect(result, EINVAL);
    char key_dir[] = "/tmp/shmtut-lab-limits-XXXXXX";
    if (::mkdtemp(key_dir) == nullptr)
        throw_errno("mkdtemp");
    const std::string key_file = std::string(key_dir) + "/key";
    const std::string writer = chapter_binary("01-sysv/writer");
    report("sysv", "  chapter 01 writer: " + chapter_says({writer, "--name", key_file, "--timeout", "1", "hi"}));
    write_text("/proc/sys/kernel/shmmax", shmmax); // (this namespace ends with the case anyway)

    // shmmni: how many segments. Two fit, the third does not.
    write_text("/proc/sys/kernel/shmmni", "2");
    int first = try_shmget(4096), second = try_shmget(4096);
    result = try_shmget(4096);
    say.say("echo 2 > /proc/sys/kernel/shmmni; shmget x2 = %d, %d; the third = -1 %s", first, second,
            errno_name(-result).c_str());
    report("sysv", "shmmni=2: the third shmget = -1 " + errno_name(-result));
    expect(result, ENOSPC);
    for (int id : {first, second})
        if (id >= 0)
            ::shmctl(id, IPC_RMID, nullptr);
    write_text("/proc/sys/kernel/shmmni", shmmni);

    // shmall: total pages of all segments together.
    write_text("/proc/sys/kernel/shmall", "4");
    const long page = ::sysconf(_SC_PAGESIZE);
    first = try_shmget(static_cast<std::size_t>(3 * page));
    result = try_shmget(static_cast<std::size_t>(2 * page));
    say.say("echo 4 > /proc/sys/kernel/shmall; shmget(3 pages) = %d; shmget(2 more pages) = -1 %s", first,
            errno_name(-result).c_str());
    report("sysv", "shmall=4 pages: 3 pages, then 2 more = -1 " + errno_name(-result));
    expect(result, ENOSPC);
    if (first >= 0)
        ::shmctl(first, IPC_RMID, nullptr);
    write_text("/proc/sys/kernel/shmall", shmall);

    // kernel.sem = SEMMSL SEMMNS SEMOPM SEMMNI: semaphores per set, in all, per semop, sets.
    write_text("/proc/sys/kernel/sem", "4 8 32 1");
    int too_many = ::semget(IPC_PRIVATE, 5, IPC_CREAT | 0600);
    int too_many_errno = errno;
    int set = ::semget(IPC_PRIVATE, 4, IPC_CREAT | 0600);
    int second_set = ::semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
    int second_errno = errno;
    say.say("echo \"4 8 32 1\" > /proc/sys/kernel/sem; semget(5 semaphores) = -1 %s; semget(4) = %d; "
            "a second set = -1 %s", errno_name(too_many_errno).c_str(), set, errno_name(second_errno).c_str());
    report("sysv", "sem SEMMSL=4: semget(5 semaphores) = -1 " + errno_name(too_many_errno));
    report("sysv", "sem SEMMNI=1: a second semget = -1 " + errno_name(second_errno));
    expect(too_many == -1 ? -too_many_errno : 0, EINVAL);
    expect(second_set == -1 ? -second_errno : 0, ENOSPC);
    if (set >= 0)
        ::semctl(set, 0, IPC_RMID);
    // Chapter 01 needs 5 semaphores in one set.
    report("sysv", "  chapter 01 writer: " + chapter_says({writer, "--name", key_file, "--timeout", "1", "hi"}));
    ::unlink(key_file.c_str());
    ::rmdir(key_dir);
    return all_hit ? kExitSuccess : kExitFailure;
}

// ----- devshm ---------------------------------------------------------------------------------

int case_devshm(const Narrator& say) {
    enter_namespaces(CLONE_NEWNS, "CLONE_NEWNS", say);
    // Private propagation first: otherwise the mount below could propagate back to the
    // namespace this process came from (systemd makes / shared).
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == -1)
        throw_errno("mount(NULL, \"/\", NULL, MS_REC|MS_PRIVATE)");
    if (::mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=1777") == -1)
        throw_errno("mount(\"tmpfs\", \"/dev/shm\", \"tmpfs\", MS_NOSUID|MS_NODEV, \"size=1m,mode=1777\")");
    struct statvfs fs {};
    ::statvfs("/dev/shm", &fs);
    say.say("mount(\"tmpfs\", \"/dev/shm\", \"tmpfs\", MS_NOSUID|MS_NODEV, \"size=1m,mode=1777\") = 0: %llu KiB",
            static_cast<unsigned long long>(fs.f_blocks * fs.f_frsize / 1024));
    bool all_hit = true;

    const char* name = "/lab-limits";
    const std::size_t size = 2 << 20;
    UniqueFd fd(::shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600));
    if (!fd)
        throw_errno("shm_open(\"/lab-limits\", O_RDWR|O_CREAT|O_EXCL, 0600)");
    // ftruncate only sets the size: tmpfs allocates a page when it is first touched, so a size
    // larger than the file system succeeds.
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate(2 MiB)");
    say.say("shm_open(\"%s\") = %d; ftruncate(fd, 2 MiB) = 0 on a 1 MiB tmpfs: the size reserves nothing", name,
            fd.get());
    report("devshm", "size=1m: ftruncate(2 MiB) = 0 (nothing is reserved)");
    int error_number = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(size)); // returns the error
    say.say("posix_fallocate(fd, 0, 2 MiB) = %s", error_number == 0 ? "0" : errno_name(error_number).c_str());
    report("devshm", "size=1m: posix_fallocate(2 MiB) = " + (error_number == 0 ? std::string("0") : errno_name(error_number)));
    all_hit = all_hit && error_number == ENOSPC;

    // Without posix_fallocate, the first store to a page tmpfs cannot allocate is a SIGBUS.
    ::ftruncate(fd.get(), 0);
    ::ftruncate(fd.get(), static_cast<off_t>(size));
    void* counter_memory = ::mmap(nullptr, sizeof(std::uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (counter_memory == MAP_FAILED)
        throw_errno("mmap(counter)");
    Mapping counter_mapping(counter_memory, sizeof(std::uint64_t));
    auto* touched = static_cast<volatile std::uint64_t*>(counter_memory);
    std::fflush(stdout);
    pid_t toucher = ::fork();
    if (toucher == -1)
        throw_errno("fork");
    if (toucher == 0) {
        ::signal(SIGBUS, SIG_DFL);
        void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        if (base == MAP_FAILED)
            ::_exit(1);
        for (std::size_t offset = 0; offset < size; offset += 4096) {
            static_cast<volatile char*>(base)[offset] = 1;
            *touched = offset + 4096;
        }
        ::_exit(0);
    }
    int status = 0;
    ::waitpid(toucher, &status, 0);
    const bool bus = WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS;
    say.say("a child maps 2 MiB and stores to each page: %s after %llu KiB",
            bus ? "killed by SIGBUS" : "no signal", static_cast<unsigned long long>(*touched / 1024));
    report("devshm", std::string("size=1m: stores through a 2 MiB mapping: ") + (bus ? "SIGBUS" : "no SIGBUS") +
                         " after about 1 MiB");
    all_hit = all_hit && bus;
    if (::shm_unlink(name) == -1)
        throw_errno("shm_unlink(\"/lab-limits\")");
    fd.reset();

    // Chapter 02's writer sizes its object with ftruncate and posix_fallocate.
    report("devshm", "  chapter 02 writer --capacity 2097152: " +
                         chapter_says({chapter_binary("02-posix-mmap/writer"), "--name", "/lab-limits-02", "--capacity",
                                       "2097152", "--timeout", "1", "hi"}));
    ::shm_unlink("/lab-limits-02");
    return all_hit ? kExitSuccess : kExitFailure;
}

// ----- nofile ---------------------------------------------------------------------------------

/// As root, CAP_SYS_RESOURCE and CAP_SYS_ADMIN lift the in-flight limit; drop every capability
/// from the effective set (capset(2)) to see what a normal user sees.
void drop_capabilities(const Narrator& say) {
    if (::geteuid() != 0)
        return;
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (::syscall(SYS_capget, &header, data) == -1)
        throw_errno("capget");
    data[0].effective = data[1].effective = 0;
    if (::syscall(SYS_capset, &header, data) == -1)
        throw_errno("capset(effective=0)");
    say.say("capset(effective = none): root's CAP_SYS_RESOURCE would lift the in-flight limit");
}

/// Sends one byte and `fd` over `socket` with SCM_RIGHTS; returns 0 or errno.
int send_descriptor(int socket, int fd) {
    char byte = 'F';
    iovec io{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))]{};
    msghdr message{};
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    return ::sendmsg(socket, &message, MSG_DONTWAIT | MSG_NOSIGNAL) == -1 ? errno : 0;
}

int case_nofile(const Narrator& say) {
    bool all_hit = true;
    const rlim_t limit = 32;
    rlimit original{};
    ::getrlimit(RLIMIT_NOFILE, &original);
    rlimit lowered{limit, original.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &lowered) == -1)
        throw_errno("setrlimit(RLIMIT_NOFILE, 32)");
    say.say("setrlimit(RLIMIT_NOFILE, {soft=32}) = 0 (was %llu)", static_cast<unsigned long long>(original.rlim_cur));

    // 1. A process at its limit cannot make another descriptor: EMFILE.
    std::vector<UniqueFd> held;
    int error_number = 0;
    for (;;) {
        int fd = ::memfd_create("lab-limits", MFD_CLOEXEC);
        if (fd == -1) {
            error_number = errno;
            break;
        }
        held.emplace_back(fd);
    }
    say.say("memfd_create x%zu, then = -1 %s", held.size(), errno_name(error_number).c_str());
    report("nofile", "RLIMIT_NOFILE=32: memfd_create = -1 " + errno_name(error_number));
    all_hit = all_hit && error_number == EMFILE;
    held.clear();

    // 2. Descriptors in flight count against the sender's RLIMIT_NOFILE: each one sent and not
    // yet received is held by the kernel in the socket's queue.
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == -1)
        throw_errno("socketpair(AF_UNIX, SOCK_STREAM)");
    UniqueFd sender(pair[0]), receiver(pair[1]);
    UniqueFd memory(::memfd_create("lab-limits", MFD_CLOEXEC));
    if (!memory)
        throw_errno("memfd_create");
    std::fflush(stdout);
    pid_t child = ::fork(); // the capability drop stays in the child
    if (child == -1)
        throw_errno("fork");
    if (child == 0) {
        int code = 1;
        try {
            drop_capabilities(say);
            int sent = 0, failed = 0;
            while ((failed = send_descriptor(sender.get(), memory.get())) == 0 && sent < 10000)
                ++sent;
            say.say("sendmsg(SCM_RIGHTS) x%d unreceived, then = -1 %s", sent, errno_name(failed).c_str());
            report("nofile", "RLIMIT_NOFILE=32: descriptor " + std::to_string(sent + 1) +
                                 " in flight: sendmsg = -1 " + errno_name(failed));
            code = failed == ETOOMANYREFS ? 0 : 1;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "limits: %s\n", e.what());
        }
        std::fflush(stdout);
        ::_exit(code);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    all_hit = all_hit && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    // Empty the queue: closing both ends frees what was in flight.
    sender.reset();
    receiver.reset();

    // 3. A receiver at its limit: recvmsg succeeds, the kernel drops the descriptor it cannot
    // install and sets MSG_CTRUNC. A receiver that does not check the flag just sees no fd.
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == -1)
        throw_errno("socketpair(AF_UNIX, SOCK_STREAM)");
    sender = UniqueFd(pair[0]);
    receiver = UniqueFd(pair[1]);
    if (int failed = send_descriptor(sender.get(), memory.get()); failed != 0)
        throw_error(failed, "sendmsg(SCM_RIGHTS)");
    for (;;) { // fill the table up to the limit
        int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd == -1)
            break;
        held.emplace_back(fd);
    }
    char byte = 0;
    iovec io{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))]{};
    msghdr message{};
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    ssize_t got = ::recvmsg(receiver.get(), &message, MSG_CMSG_CLOEXEC);
    if (got == -1)
        throw_errno("recvmsg");
    int received = -1;
    for (cmsghdr* cmsg = CMSG_FIRSTHDR(&message); cmsg != nullptr; cmsg = CMSG_NXTHDR(&message, cmsg))
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS && cmsg->cmsg_len >= CMSG_LEN(sizeof(int)))
            std::memcpy(&received, CMSG_DATA(cmsg), sizeof received);
    const bool truncated = (message.msg_flags & MSG_CTRUNC) != 0;
    held.clear();
    if (received >= 0)
        ::close(received);
    say.say("with %d of 32 descriptors open: recvmsg = %zd byte, msg_flags %s, %s", 32, got,
            truncated ? "MSG_CTRUNC" : "0", received >= 0 ? "a descriptor" : "no descriptor");
    report("nofile", std::string("receiver at its limit: recvmsg = 1 byte, ") + (truncated ? "MSG_CTRUNC" : "no MSG_CTRUNC") +
                         ", " + (received >= 0 ? "a descriptor" : "no descriptor (the kernel dropped it)") +
                         "; chapter 04's reader refuses the message");
    all_hit = all_hit && truncated && received < 0;
    ::setrlimit(RLIMIT_NOFILE, &original);
    return all_hit ? kExitSuccess : kExitFailure;
}

// ----- cgroup ---------------------------------------------------------------------------------

/// A memory cgroup this process may make children in: cgroup v2 with the memory controller
/// enabled for children, or the v1 memory hierarchy. Throws Unsupported with the reason.
struct MemoryCgroups {
    std::string parent;      ///< the directory children are made in
    std::string usage_file;  ///< "memory.current" (v2) or "memory.usage_in_bytes" (v1)
    const char* version;     ///< "v2" or "v1"
};

MemoryCgroups find_memory_cgroups() {
    if (::geteuid() != 0)
        throw Unsupported("making memory cgroups and moving processes into them needs root");
    std::ifstream cgroups("/proc/self/cgroup");
    std::string line, v2_path, v1_path;
    while (std::getline(cgroups, line)) {
        if (line.rfind("0::", 0) == 0)
            v2_path = line.substr(3);
        else if (line.find(":memory:") != std::string::npos)
            v1_path = line.substr(line.find(":memory:") + 8);
    }
    std::ifstream mounts("/proc/self/mounts");
    std::string device, mount_point, type, options, v2_mount, v1_mount;
    while (mounts >> device >> mount_point >> type >> options) {
        std::getline(mounts, line);
        if (type == "cgroup2" && v2_mount.empty())
            v2_mount = mount_point;
        if (type == "cgroup" && ("," + options + ",").find(",memory,") != std::string::npos)
            v1_mount = mount_point;
    }
    if (!v2_mount.empty() && !v2_path.empty()) {
        const std::string parent = v2_mount + (v2_path == "/" ? "" : v2_path);
        if (read_text(parent + "/cgroup.subtree_control").find("memory") != std::string::npos &&
            ::access(parent.c_str(), W_OK) == 0)
            return {parent, "memory.current", "v2"};
    }
    if (!v1_mount.empty() && !v1_path.empty()) {
        const std::string parent = v1_mount + (v1_path == "/" ? "" : v1_path);
        if (::access((parent + "/memory.usage_in_bytes").c_str(), R_OK) == 0 && ::access(parent.c_str(), W_OK) == 0)
            return {parent, "memory.usage_in_bytes", "v1"};
    }
    throw Unsupported("no writable memory cgroup: cgroup v2 " +
                      (v2_mount.empty() ? std::string("is not mounted") :
                                          "at " + v2_mount + v2_path + " has no memory controller for its children") +
                      (v1_mount.empty() ? ", and no v1 memory hierarchy" : ", and the v1 memory hierarchy is not writable"));
}

long long usage_of(const MemoryCgroups& groups, const std::string& group) {
    return std::stoll(read_text(groups.parent + "/" + group + "/" + groups.usage_file));
}

/// Runs `body` in a child moved into cgroup `group` first; waits for it.
void run_in_group(const MemoryCgroups& groups, const std::string& group, const std::function<void()>& body) {
    std::fflush(stdout);
    pid_t child = ::fork();
    if (child == -1)
        throw_errno("fork");
    if (child == 0) {
        try {
            write_text(groups.parent + "/" + group + "/cgroup.procs", "0"); // "0": the writing process
            body();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "limits: %s\n", e.what());
            ::_exit(1);
        }
        ::_exit(0);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw Failure("the child in cgroup " + group + " failed");
}

int case_cgroup(const Narrator& say) {
    MemoryCgroups groups = find_memory_cgroups();
    const std::string a = "shmtut-lab-limits-" + std::to_string(::getpid()) + "-a";
    const std::string b = "shmtut-lab-limits-" + std::to_string(::getpid()) + "-b";
    for (const std::string& group : {a, b})
        if (::mkdir((groups.parent + "/" + group).c_str(), 0755) == -1)
            throw_errno("mkdir(\"" + groups.parent + "/" + group + "\")");
    say.say("mkdir %s/{%s,%s}: two memory cgroups (%s)", groups.parent.c_str(), a.c_str(), b.c_str(), groups.version);
    bool all_hit = false;
    std::string failure;
    {
        const std::size_t size = 64 << 20;
        UniqueFd fd(::memfd_create("lab-limits-cgroup", MFD_CLOEXEC));
        if (!fd)
            throw_errno("memfd_create");
        if (::ftruncate(fd.get(), static_cast<off_t>(size)) == -1)
            throw_errno("ftruncate(128 MiB)");
        void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        if (base == MAP_FAILED)
            throw_errno("mmap(64 MiB, MAP_SHARED)");
        Mapping mapping(base, size);
        auto* bytes = static_cast<volatile unsigned char*>(base);
        const long long a0 = usage_of(groups, a), b0 = usage_of(groups, b);
        // A touches the first half first: tmpfs allocates those pages and charges them to A.
        run_in_group(groups, a, [&] {
            for (std::size_t offset = 0; offset < size / 2; offset += 4096)
                bytes[offset] = 1;
        });
        const long long a1 = usage_of(groups, a), b1 = usage_of(groups, b);
        // B reads the whole first half: the pages exist, nothing is charged to B.
        run_in_group(groups, b, [&] {
            unsigned sum = 0;
            for (std::size_t offset = 0; offset < size / 2; offset += 4096)
                sum += bytes[offset];
            if (sum != size / 2 / 4096)
                throw Failure("B did not see A's bytes");
        });
        const long long a2 = usage_of(groups, a), b2 = usage_of(groups, b);
        // B touches the second half first: B pays for it.
        run_in_group(groups, b, [&] {
            for (std::size_t offset = size / 2; offset < size; offset += 4096)
                bytes[offset] = 2;
        });
        const long long a3 = usage_of(groups, a), b3 = usage_of(groups, b);
        auto mib = [](long long delta) { return std::to_string((delta + (1 << 19)) >> 20); };
        say.say("%s: A +%s MiB after A wrote 32 MiB; B +%s MiB after B read them; B +%s MiB after B wrote 32 new MiB",
                groups.usage_file.c_str(), mib(a1 - a0).c_str(), mib(b2 - b1).c_str(), mib(b3 - b2).c_str());
        report("cgroup", "A writes 32 MiB of a 64 MiB memfd first: A +" + mib(a1 - a0) + " MiB, B +" + mib(b1 - b0) + " MiB");
        report("cgroup", "B reads those 32 MiB:                  A +" + mib(a2 - a1) + " MiB, B +" + mib(b2 - b1) + " MiB");
        report("cgroup", "B writes the other 32 MiB first:       A +" + mib(a3 - a2) + " MiB, B +" + mib(b3 - b2) + " MiB");
        report("cgroup", "A has exited; its cgroup still pays for its 32 MiB: A = " +
                             mib(usage_of(groups, a)) + " MiB while the memfd lives");
        all_hit = a1 - a0 >= (28 << 20) && b2 - b1 < (4 << 20) && b3 - b2 >= (28 << 20);
        // munmap and close free the pages (the memfd's last reference) and the charges with them.
    }
    for (const std::string& group : {a, b})
        if (::rmdir((groups.parent + "/" + group).c_str()) == -1)
            failure = "rmdir " + group + ": " + std::strerror(errno);
    if (!failure.empty())
        throw Failure(failure);
    say.say("rmdir both cgroups = 0");
    return all_hit ? kExitSuccess : kExitFailure;
}

/// Runs one case in a forked child (its namespaces and rlimits end with it); returns its status.
int run_case(const std::string& name, const Narrator& say) {
    const std::function<int(const Narrator&)> body =
        name == "sysv" ? case_sysv : name == "devshm" ? case_devshm : name == "nofile" ? case_nofile : case_cgroup;
    std::fflush(stdout);
    pid_t child = ::fork();
    if (child == -1)
        throw_errno("fork");
    if (child == 0) {
        int status = run_main("limits", [&] {
            try {
                return body(say);
            } catch (const Unsupported& e) {
                report(name.c_str(), std::string("skipped: ") + e.what());
                throw;
            }
        });
        std::fflush(stdout);
        ::_exit(status);
    }
    int status = 0;
    if (::waitpid(child, &status, 0) == -1)
        throw_errno("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : kExitFailure;
}

} // namespace

int main(int argc, char** argv) {
    return run_main("limits", [&] {
        OptionSpec spec;
        spec.usage = kUsage;
        spec.operands = true;
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        std::vector<std::string> cases = options.operands;
        if (cases.empty())
            cases = {"sysv", "devshm", "nofile", "cgroup"};
        for (const std::string& name : cases)
            if (name != "sysv" && name != "devshm" && name != "nofile" && name != "cgroup")
                throw UsageError("unknown case \"" + name + "\": expected sysv, devshm, nofile or cgroup");
        Narrator say("limits", options.quiet);
        bool failed = false, skipped = false;
        for (const std::string& name : cases) {
            int status = run_case(name, say);
            failed = failed || (status != kExitSuccess && status != kExitUnsupported);
            skipped = skipped || status == kExitUnsupported;
        }
        return static_cast<int>(failed ? kExitFailure : skipped ? kExitUnsupported : kExitSuccess);
    });
}
