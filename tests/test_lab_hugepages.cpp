/// @file tests/test_lab_hugepages.cpp
/// @brief Lab hugepages: one fault per 4 KiB page, one per 2 MiB page with hugetlb and THP, and
///        vm.nr_hugepages put back after a reservation, also when a case fails. Small sizes only;
///        no timing is asserted.
#include <fstream>
#include <string>
#include <vector>

#include <sys/syscall.h>
#include <unistd.h>

#include "catch.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

Process run_faults(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {binary("labs/hugepages/faults")};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcessGroup group;
    Process& program = group.start("faults", argv);
    group.wait(program);
    return program;
}

/// The fault count on the line of `name` ("4k  4 KiB pages  2057 faults ..."), or -1.
long faults_of(const std::string& out, const std::string& name) {
    std::string::size_type line = out.find(name + " ");
    if (line == std::string::npos)
        return -1;
    std::string::size_type end = out.find(" faults", line);
    if (end == std::string::npos)
        return -1;
    std::string::size_type start = out.rfind(' ', end - 1);
    return std::stol(out.substr(start + 1, end - start - 1));
}

std::string skip_reason(const Process& program) {
    std::string::size_type at = program.out.find("skipped: ");
    return at == std::string::npos ? program.last_error_line() : program.out.substr(at + 9);
}

long long nr_hugepages() {
    std::ifstream file("/proc/sys/vm/nr_hugepages");
    long long value = -1;
    file >> value;
    return value;
}

} // namespace

TEST_CASE("lab hugepages: 4 KiB pages take one fault per page", "[lab][hugepages]") {
    Process program = run_faults({"--size", "8M", "4k"});
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK_THAT(program.out, contains("4 KiB pages"));
    CHECK(faults_of(program.out, "4k") >= 2048); // 8 MiB / 4 KiB
}

TEST_CASE("lab hugepages: SHM_HUGETLB and MFD_HUGETLB take one fault per 2 MiB page", "[lab][hugepages]") {
    if (auto why = testsupport::emulator_cannot("huge pages: SHM_HUGETLB and MFD_HUGETLB mappings fail with EINVAL"); !why.empty())
        SKIP_TEST(why);
    const long long before = nr_hugepages();
    // As root the program reserves the 4 pages it needs and puts the setting back.
    std::vector<std::string> args = {"--size", "8M", "shm-hugetlb", "mfd-hugetlb"};
    if (::geteuid() == 0)
        args.push_back("--reserve");
    Process program = run_faults(args);
    CHECK(nr_hugepages() == before);
    if (program.exit_code() == 77)
        SKIP_TEST(skip_reason(program));
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    const long shm = faults_of(program.out, "shm-hugetlb"), mfd = faults_of(program.out, "mfd-hugetlb");
    CHECK(shm >= 4);
    // 4 huge pages, plus the program's own faults (with AddressSanitizer, its shadow memory: about
    // 260); 4 KiB pages would take 2048.
    CHECK(shm < 1024);
    CHECK(mfd >= 4);
    CHECK(mfd < 1024);
    CHECK_THAT(program.err, contains("Rsvd=4")); // reserved at shmget and at mmap, before any touch
}

TEST_CASE("lab hugepages: transparent huge pages on tmpfs come as 2 MiB pages", "[lab][hugepages]") {
    // qemu-arm (a 32-bit guest) maps at its own alignment: the kernel sees no 2 MiB-aligned range.
    if (sizeof(void*) == 4)
        if (auto why = testsupport::emulator_cannot("transparent huge pages for a 32-bit program"); !why.empty())
            SKIP_TEST(why);
    Process program = run_faults({"--size", "8M", "thp"});
    if (program.exit_code() == 77)
        SKIP_TEST(skip_reason(program));
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK_THAT(program.out, contains("2 MiB pages (THP"));
    CHECK(faults_of(program.out, "thp") < 1024); // 4 KiB pages would take 2048
    CHECK_THAT(program.err, contains("ShmemPmdMapped=8192 kB"));
}

TEST_CASE("lab hugepages: --reserve puts vm.nr_hugepages back when a case fails", "[lab][hugepages]") {
    if (auto why = testsupport::emulator_cannot("huge pages: SHM_HUGETLB and MFD_HUGETLB mappings fail with EINVAL"); !why.empty())
        SKIP_TEST(why);
    if (::geteuid() != 0)
        SKIP_TEST("not root: vm.nr_hugepages can be changed only by root");
    const long long before = nr_hugepages();
    // shmget fails with EIO (the tests' launcher's seccomp filter): the case fails after the
    // reservation was made.
    std::vector<std::string> argv = with_failing_syscalls(
        {{SYS_shmget, EIO}}, {binary("labs/hugepages/faults"), "--size", "8M", "--reserve", "shm-hugetlb"});
    ProcessGroup group;
    Process& program = group.start("faults", argv);
    group.wait(program);
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 1);
    CHECK_THAT(program.err, contains("Input/output error"));
    CHECK_THAT(program.err, contains("restored"));
    CHECK(nr_hugepages() == before);
}

TEST_CASE("lab hugepages: usage errors exit 2", "[lab][hugepages]") {
    const std::string program = binary("labs/hugepages/faults");
    check_usage_errors({{program, "--size", "3M"}, {program, "--size", "1T"}, {program, "--size", "0"},
                        {program, "huge"}, {program, "--bogus"}});
}
