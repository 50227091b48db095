/// @file tests/test_lab_containers.cpp
/// @brief Lab containers: the table of which chapter's technique crosses which namespace, as the
///        script labs/containers/crossings prints it (root only: it creates namespaces).
#include <string>

#include <unistd.h>

#include "catch.hpp"
#include "support.hpp"

using namespace testsupport;

TEST_CASE("lab containers: which technique crosses which namespace", "[lab][containers]") {
    if (::geteuid() != 0)
        SKIP_TEST("not root: the script creates IPC, mount, pid and network namespaces (unshare)");
    // The script starts the chapters' programs itself, through unshare: under qemu-user without a
    // binfmt_misc handler the kernel cannot run a target program started that way.
    if (auto why = emulator_cannot_exec(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    ProcessGroup group;
    Process& script = group.start("crossings", {SHMTUT_SOURCE_DIR "/labs/containers/crossings", SHMTUT_BUILD_DIR});
    group.wait(script);
    if (script.exit_code() == 77)
        SKIP_TEST(script.last_error_line());
    INFO("stdout:\n" << script.out << "stderr:\n" << script.err);
    CHECK(script.exit_code() == 0);
    const std::string table = script.out.substr(0, script.out.find("\n\n") + 1);
    CHECK(table ==
          "reader in a new ... namespace:       same   ipc    mount  pid    net    user  \n"
          "01 System V, key file                yes    no     yes    yes    yes    yes   \n"
          "02 POSIX shm, /dev/shm name          yes    yes    no     yes    yes    yes   \n"
          "03 memfd, /proc/PID/fd/N             yes    yes    yes    no     yes    no    \n"
          "04 memfd over a socket path          yes    yes    yes    yes    yes    yes   \n"
          "04 memfd over an @abstract socket    yes    yes    yes    yes    no     yes   \n");
    CHECK(script.err.empty());
    check_nothing_left(leaks);
}
