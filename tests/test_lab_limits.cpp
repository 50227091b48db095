/// @file tests/test_lab_limits.cpp
/// @brief Lab limits: each case hits its limit and reports the errno the chapters' programs
///        would; a case that cannot run here (no user namespaces, not root for cgroups) is
///        skipped with its reason.
#include <string>
#include <unistd.h>

#include "catch.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

/// Runs `limits CASE` to the end.
Process run_case(const std::string& name) {
    ProcessGroup group;
    Process& program = group.start("limits", {binary("labs/limits/limits"), name});
    group.wait(program);
    return program;
}

/// The reason a case printed for being skipped ("CASE: skipped: REASON").
std::string skip_reason(const Process& program) {
    std::string::size_type at = program.out.find("skipped: ");
    return at == std::string::npos ? program.last_error_line() : program.out.substr(at + 9);
}

} // namespace

TEST_CASE("lab limits: System V shmmax, shmmni, shmall and kernel.sem, in a new IPC namespace", "[lab][limits]") {
    if (auto why = testsupport::emulator_cannot_exec(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    Process program = run_case("sysv");
    if (program.exit_code() == 77)
        SKIP_TEST(skip_reason(program));
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK_THAT(program.out, contains("sysv: shmmax=65536: shmget(65792 bytes) = -1 EINVAL\n"));
    CHECK_THAT(program.out, contains("shmget(key=0x"));
    CHECK_THAT(program.out, contains("size=65792, IPC_CREAT|IPC_EXCL|0600): Invalid argument [exit 1]"));
    CHECK_THAT(program.out, contains("sysv: shmmni=2: the third shmget = -1 ENOSPC\n"));
    CHECK_THAT(program.out, contains("sysv: shmall=4 pages: 3 pages, then 2 more = -1 ENOSPC\n"));
    CHECK_THAT(program.out, contains("sysv: sem SEMMSL=4: semget(5 semaphores) = -1 EINVAL\n"));
    CHECK_THAT(program.out, contains("sysv: sem SEMMNI=1: a second semget = -1 ENOSPC\n"));
    CHECK_THAT(program.out, contains("nsems=5, IPC_CREAT|IPC_EXCL|0600): Invalid argument [exit 1]"));
    check_nothing_left(leaks);
}

TEST_CASE("lab limits: a 1 MiB /dev/shm gives ENOSPC from posix_fallocate and SIGBUS from a store",
          "[lab][limits]") {
    if (auto why = testsupport::emulator_cannot_exec(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    Process program = run_case("devshm");
    if (program.exit_code() == 77)
        SKIP_TEST(skip_reason(program));
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK_THAT(program.out, contains("devshm: size=1m: ftruncate(2 MiB) = 0 (nothing is reserved)\n"));
    CHECK_THAT(program.out, contains("devshm: size=1m: posix_fallocate(2 MiB) = ENOSPC\n"));
    CHECK_THAT(program.out, contains("devshm: size=1m: stores through a 2 MiB mapping: SIGBUS after about 1 MiB\n"));
    CHECK_THAT(program.out, contains("posix_fallocate(fd=3, 0, 2097408): No space left on device"));
    check_nothing_left(leaks);
}

TEST_CASE("lab limits: RLIMIT_NOFILE gives EMFILE, ETOOMANYREFS in flight, and MSG_CTRUNC at the receiver",
          "[lab][limits]") {
    LeakCheck leaks;
    Process program = run_case("nofile");
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK_THAT(program.out, contains("nofile: RLIMIT_NOFILE=32: memfd_create = -1 EMFILE\n"));
    CHECK_THAT(program.out, contains("in flight: sendmsg = -1 ETOOMANYREFS\n"));
    CHECK_THAT(program.out, contains("nofile: receiver at its limit: recvmsg = 1 byte, MSG_CTRUNC, no descriptor"));
    check_nothing_left(leaks);
}

TEST_CASE("lab limits: shared memory is charged to the cgroup of the process that touches it first",
          "[lab][limits]") {
    LeakCheck leaks;
    Process program = run_case("cgroup");
    if (program.exit_code() == 77)
        SKIP_TEST(skip_reason(program));
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    // Exit 0 says what the lines show: A was charged at least 28 MiB for its 32, B less than 4
    // MiB for reading them, and at least 28 MiB for the 32 it touched first.
    CHECK(program.exit_code() == 0);
    CHECK_THAT(program.out, contains("cgroup: A writes 32 MiB of a 64 MiB memfd first: A +3"));
    CHECK_THAT(program.out, contains("cgroup: B reads those 32 MiB:"));
    CHECK_THAT(program.err, contains("rmdir both cgroups = 0"));
    check_nothing_left(leaks);
}

TEST_CASE("lab limits: usage errors exit 2", "[lab][limits]") {
    const std::string program = binary("labs/limits/limits");
    check_usage_errors({{program, "nosuchcase"}, {program, "--bogus"}});
}
