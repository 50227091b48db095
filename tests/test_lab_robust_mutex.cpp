/// @file tests/test_lab_robust_mutex.cpp
/// @brief Lab robust-mutex: what the next locker gets after the holder of a process-shared
///        mutex was killed, one case per outcome, running the lab's program.
#include <string>
#include <vector>

#include "catch.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

/// Runs dead_holder with `args` to the end and returns it.
Process run_dead_holder(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {binary("labs/robust-mutex/dead_holder")};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcessGroup group;
    Process& program = group.start("dead_holder", argv);
    group.wait(program);
    return program;
}

} // namespace

TEST_CASE("lab robust-mutex: a plain process-shared mutex held by a dead process times out", "[lab][robust-mutex]") {
    LeakCheck leaks;
    Process program = run_dead_holder({"--mode", "plain", "--timeout", "0.5"});
    INFO("stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK(program.out == "plain: next lock = ETIMEDOUT; debit=100 credit=0, the lock is lost for ever\n");
    CHECK_THAT(program.err, contains("locker: pthread_mutex_init(PTHREAD_PROCESS_SHARED) = 0"));
    CHECK_THAT(program.err, contains("= killed by SIGKILL"));
    check_nothing_left(leaks);
}

TEST_CASE("lab robust-mutex: a robust mutex gives EOWNERDEAD, and after repair and consistent it works",
          "[lab][robust-mutex]") {
    if (auto why = testsupport::emulator_cannot("robust futex lists (set_robust_list): a dead owner is never reported, EOWNERDEAD never comes"); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    // A long bound: the EOWNERDEAD comes when the holder dies, not when a timeout runs out.
    Process program = run_dead_holder({"--mode", "robust", "--timeout", "30"});
    INFO("stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK(program.out == "robust: next lock = EOWNERDEAD (debit=100 credit=0), repaired, consistent, "
                         "then lock = 0 (debit=0 credit=0)\n");
    CHECK_THAT(program.err, contains("PTHREAD_MUTEX_ROBUST) = 0"));
    CHECK_THAT(program.err, contains("locker: pthread_mutex_consistent = 0"));
    check_nothing_left(leaks);
}

TEST_CASE("lab robust-mutex: unlocking after EOWNERDEAD without consistent makes the mutex ENOTRECOVERABLE",
          "[lab][robust-mutex]") {
    if (auto why = testsupport::emulator_cannot("robust futex lists (set_robust_list): a dead owner is never reported, EOWNERDEAD never comes"); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    Process program = run_dead_holder({"--mode", "no-repair", "--timeout", "30"});
    INFO("stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK(program.out == "no-repair: next lock = EOWNERDEAD (debit=100 credit=0), unlocked unrepaired, "
                         "then lock = ENOTRECOVERABLE\n");
    CHECK_THAT(program.err, contains("pthread_mutex_unlock = 0, without pthread_mutex_consistent"));
    check_nothing_left(leaks);
}

TEST_CASE("lab robust-mutex: usage errors exit 2", "[lab][robust-mutex]") {
    const std::string program = binary("labs/robust-mutex/dead_holder");
    check_usage_errors({{program, "--mode", "sometimes"}, {program, "--mode"}, {program, "--bogus"},
                        {program, "--timeout", "-1"}, {program, "operand"}});
}
