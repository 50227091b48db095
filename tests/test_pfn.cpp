/// @file tests/test_pfn.cpp
/// @brief The pfn tool: usage errors, the mapping line of an address, the errors a learner
///        meets (no such process, not mapped, not present, PFN hidden), and, where this test may
///        see frames, one PFN behind two virtual addresses of one shared page.
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catch.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

std::size_t page_size() {
    return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

std::string hex(const void* address) {
    char text[32];
    std::snprintf(text, sizeof text, "%#llx",
                  static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(address)));
    return text;
}

/// The line /proc/self/maps has for `address`, as "start-end perms" (its first two fields).
std::string maps_range_and_perms(const void* address) {
    const auto wanted = reinterpret_cast<std::uintptr_t>(address);
    std::FILE* maps = std::fopen("/proc/self/maps", "re");
    REQUIRE(maps != nullptr);
    char line[4096];
    std::string found;
    while (found.empty() && std::fgets(line, sizeof line, maps) != nullptr) {
        unsigned long long start = 0, end = 0;
        char perms[8] = {};
        if (std::sscanf(line, "%llx-%llx %7s", &start, &end, perms) == 3 && start <= wanted && wanted < end) {
            std::string text(line);
            found = text.substr(0, text.find(' ', text.find(' ') + 1));
        }
    }
    std::fclose(maps);
    return found;
}

/// True when this process can read PFNs from its own pagemap (CAP_SYS_ADMIN).
bool pfns_visible() {
    void* page = ::mmap(nullptr, page_size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(page != MAP_FAILED);
    *static_cast<volatile char*>(page) = 1;
    std::uint64_t entry = 0;
    int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd != -1) {
        auto offset = static_cast<off_t>(reinterpret_cast<std::uintptr_t>(page) / page_size() * sizeof entry);
        if (::pread(fd, &entry, sizeof entry, offset) != static_cast<ssize_t>(sizeof entry))
            entry = 0;
        ::close(fd);
    }
    ::munmap(page, page_size());
    return (entry & ((1ull << 55) - 1)) != 0;
}

bool contains_text(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

/// Runs pfn (as `as`) to the end.
Process& run_pfn(ProcessGroup& group, const std::vector<std::string>& arguments, RunAs as = {}) {
    std::vector<std::string> argv = {binary("tools/pfn")};
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    Process& pfn = group.start("pfn", argv, Stdin::kNull, as);
    group.wait(pfn);
    return pfn;
}

/// The "PFN 0x..." of pfn's one output line, or "".
std::string pfn_in(const std::string& out) {
    auto at = out.find(": PFN 0x");
    if (at == std::string::npos)
        return {};
    auto start = at + 6;
    return out.substr(start, out.find(',', start) - start);
}

/// A page of anonymous shared memory, touched, owned by the test.
struct SharedPage {
    void* address = ::mmap(nullptr, page_size(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    SharedPage() {
        REQUIRE(address != MAP_FAILED);
        *static_cast<volatile char*>(address) = 'x'; // the first write gives the page its frame
    }
    ~SharedPage() { ::munmap(address, page_size()); }
    SharedPage(const SharedPage&) = delete;
    SharedPage& operator=(const SharedPage&) = delete;
};

const char* const kHiddenReason =
    "PFNs are hidden from this test: /proc/PID/pagemap shows them only to CAP_SYS_ADMIN (run the tests as root)";

} // namespace

TEST_CASE("pfn: usage errors exit 2 with a pointer to --help", "[pfn]") {
    const std::string pfn = binary("tools/pfn");
    const std::string self = std::to_string(::getpid());
    check_usage_errors({{pfn},
                        {pfn, self},
                        {pfn, "abc", "0x1000"},
                        {pfn, "0", "0x1000"},
                        {pfn, "-5", "0x1000"},
                        {pfn, self, "0xnot-hex"},
                        {pfn, self, ""},
                        {pfn, "--bogus", self, "0x1000"}});
    ProcessGroup group;
    Process& help = run_pfn(group, {"--help"});
    CHECK(help.exit_code() == 0);
    CHECK(help.out.rfind("Usage: pfn PID ADDRESS...", 0) == 0);
}

TEST_CASE("pfn: an address of the test process gives the line of /proc/PID/maps it belongs to", "[pfn]") {
    if (auto why = testsupport::emulator_cannot_show_addresses(); !why.empty())
        SKIP_TEST(why);
    SharedPage page;
    // An address inside the page, not at its start: pfn finds the page that holds it.
    const void* inside = static_cast<char*>(page.address) + 100;
    const std::string range = maps_range_and_perms(page.address);
    REQUIRE_FALSE(range.empty());
    ProcessGroup group;
    Process& pfn = run_pfn(group, {std::to_string(::getpid()), hex(inside)});
    INFO("stdout: " << pfn.out << "stderr: " << pfn.err);
    CHECK(pfn.out.rfind("pid " + std::to_string(::getpid()) + " " + hex(inside) + ": ", 0) == 0);
    CHECK(contains_text(pfn.out, ", in " + range + " ")); // "7f..-7f.. rw-s", then the rest of the line
    CHECK(contains_text(range, " rw-s"));                  // shared, as mapped
    if (pfns_visible()) {
        CHECK(pfn.exit_code() == 0);
        CHECK_FALSE(pfn_in(pfn.out).empty());
        CHECK(pfn.err.empty());
    } else {
        CHECK(pfn.exit_code() == 1);
        CHECK(contains_text(pfn.out, ": PFN hidden, in "));
        CHECK(contains_text(pfn.err, "CAP_SYS_ADMIN"));
    }
}

TEST_CASE("pfn: no such process, an unmapped address and an untouched page each get a clear error", "[pfn]") {
    if (auto why = testsupport::emulator_cannot_show_addresses(); !why.empty())
        SKIP_TEST(why);
    // A pid that existed a moment ago and has been reaped.
    pid_t gone = ::fork();
    REQUIRE(gone != -1);
    if (gone == 0)
        ::_exit(0);
    REQUIRE(::waitpid(gone, nullptr, 0) == gone);

    void* untouched = ::mmap(nullptr, 2 * page_size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(untouched != MAP_FAILED);
    void* unmapped = static_cast<char*>(untouched) + page_size();
    REQUIRE(::munmap(unmapped, page_size()) == 0); // a hole: mapped a moment ago, not now
    const std::string self = std::to_string(::getpid());
    {
        ProcessGroup group;
        Process& no_process = run_pfn(group, {std::to_string(gone), "0x1000"});
        INFO("stderr: " << no_process.err);
        CHECK(no_process.exit_code() == 1);
        CHECK(contains_text(no_process.err, "no process has pid " + std::to_string(gone)));

        Process& not_mapped = run_pfn(group, {self, hex(unmapped)});
        INFO("stderr: " << not_mapped.err);
        CHECK(not_mapped.exit_code() == 1);
        CHECK(not_mapped.out.empty());
        CHECK(contains_text(not_mapped.err, hex(unmapped) + " is not mapped in process " + self));

        Process& not_present = run_pfn(group, {self, hex(untouched)});
        INFO("stdout: " << not_present.out << "stderr: " << not_present.err);
        CHECK(not_present.exit_code() == 1);
        CHECK(contains_text(not_present.out, ": not present, in "));
        CHECK(contains_text(not_present.err, "touches it"));
    }
    ::munmap(untouched, page_size());
}

namespace {

/// The start of a mapping of this process that /proc/self/smaps flags VM_PFNMAP (VmFlags "pf":
/// the vDSO's [vvar] on x86-64 kernels since 5.x), or 0 when there is none.
std::uintptr_t a_pfnmap_mapping() {
    std::FILE* smaps = std::fopen("/proc/self/smaps", "re");
    REQUIRE(smaps != nullptr);
    char line[4096];
    unsigned long long start = 0, found = 0;
    while (found == 0 && std::fgets(line, sizeof line, smaps) != nullptr) {
        unsigned long long range_start = 0, range_end = 0;
        if (std::sscanf(line, "%llx-%llx ", &range_start, &range_end) == 2)
            start = range_start;
        else if (std::string(line).rfind("VmFlags:", 0) == 0 && (std::string(line) + " ").find(" pf ") != std::string::npos)
            found = start;
    }
    std::fclose(smaps);
    return static_cast<std::uintptr_t>(found);
}

} // namespace

// The kernel does not walk a VM_PFNMAP mapping for pagemap (mm/pagewalk.c, walk_page_test()):
// every page of it reads as "not present", touched or not. "Touch it and run pfn again" would
// send a learner round in circles.
TEST_CASE("pfn: a VM_PFNMAP mapping is reported as such, not as a page that is not present", "[pfn]") {
    if (auto why = testsupport::emulator_cannot_show_addresses(); !why.empty())
        SKIP_TEST(why);
    const std::uintptr_t pfnmap = a_pfnmap_mapping();
    if (pfnmap == 0)
        SKIP_TEST("no mapping of this process has VmFlags pf (VM_PFNMAP) in /proc/self/smaps on this kernel");
    ProcessGroup group;
    Process& pfn = run_pfn(group, {std::to_string(::getpid()), hex(reinterpret_cast<const void*>(pfnmap))});
    INFO("stdout: " << pfn.out << "stderr: " << pfn.err);
    CHECK(pfn.exit_code() == 1);
    CHECK(contains_text(pfn.out, ": frame not shown (VM_PFNMAP), in "));
    CHECK(!contains_text(pfn.out, "not present"));
    CHECK(contains_text(pfn.err, "a VM_PFNMAP mapping (VmFlags pf in /proc/"));
    CHECK(!contains_text(pfn.err, "touches it"));
}

TEST_CASE("pfn: as root, two virtual addresses of one shared page show one PFN", "[pfn]") {
    if (auto why = testsupport::emulator_cannot("mremap(2) with old_size 0, which maps a shared page a second time"); !why.empty())
        SKIP_TEST(why);
    if (!pfns_visible())
        SKIP_TEST(kHiddenReason);
    SharedPage page;
    // mremap(2) with old_size 0 maps the same pages of a shared mapping a second time, at a
    // new address: two virtual addresses, one frame.
    void* second = ::mremap(page.address, 0, page_size(), MREMAP_MAYMOVE);
    REQUIRE(second != MAP_FAILED);
    REQUIRE(second != page.address);
    *static_cast<volatile char*>(second) = 'y'; // map it in this page table too
    ProcessGroup group;
    Process& pfn = run_pfn(group, {std::to_string(::getpid()), hex(page.address), hex(second)});
    ::munmap(second, page_size());
    INFO("stdout: " << pfn.out << "stderr: " << pfn.err);
    CHECK(pfn.exit_code() == 0);
    std::istringstream lines(pfn.out);
    std::string first_line, second_line;
    std::getline(lines, first_line);
    std::getline(lines, second_line);
    REQUIRE_FALSE(pfn_in(first_line).empty());
    CHECK(pfn_in(first_line) == pfn_in(second_line));
}

TEST_CASE("pfn: as root, a parent and a child sharing a page show one PFN; their private page two", "[pfn]") {
    if (auto why = testsupport::emulator_cannot_show_addresses(); !why.empty())
        SKIP_TEST(why);
    if (!pfns_visible())
        SKIP_TEST(kHiddenReason);
    ProcessGroup group;
    Process& pair = group.start("same_page", command("00-same-page/same_page", {}, "10", {"--pause"}), Stdin::kPipe);
    group.wait_for_stderr(pair, "press Enter");
    REQUIRE_FALSE(pair.finished());
    // "parent: both processes pause now (parent pid 4242, child pid 4243): ..."
    int parent = 0, child = 0;
    auto at = pair.err.find("(parent pid ");
    REQUIRE(at != std::string::npos);
    REQUIRE(std::sscanf(pair.err.c_str() + at, "(parent pid %d, child pid %d)", &parent, &child) == 2);
    // The table's first shared and private rows give the addresses (the same in both processes).
    std::string shared, private_copy;
    std::istringstream lines(pair.out);
    std::string line;
    while (std::getline(lines, line)) {
        std::istringstream words(line);
        std::string page, when, write_word, process, pid, address;
        if (words >> page >> when >> write_word >> process >> pid >> address) {
            if (page == "shared" && shared.empty())
                shared = address;
            if (page == "private" && private_copy.empty())
                private_copy = address;
        }
    }
    REQUIRE_FALSE(shared.empty());
    REQUIRE_FALSE(private_copy.empty());
    Process& in_parent = run_pfn(group, {std::to_string(parent), shared, private_copy});
    Process& in_child = run_pfn(group, {std::to_string(child), shared, private_copy});
    group.close_stdin(pair); // end of input ends the pause
    group.wait(pair);
    INFO("parent: " << in_parent.out << in_parent.err << "child: " << in_child.out << in_child.err);
    CHECK(in_parent.exit_code() == 0);
    CHECK(in_child.exit_code() == 0);
    CHECK(pair.exit_code() == 0);
    std::istringstream parent_lines(in_parent.out), child_lines(in_child.out);
    std::string parent_shared, parent_private, child_shared, child_private;
    std::getline(parent_lines, parent_shared);
    std::getline(parent_lines, parent_private);
    std::getline(child_lines, child_shared);
    std::getline(child_lines, child_private);
    REQUIRE_FALSE(pfn_in(parent_shared).empty());
    CHECK(pfn_in(parent_shared) == pfn_in(child_shared));
    CHECK(pfn_in(parent_private) != pfn_in(child_private));
    CHECK(contains_text(parent_shared, " rw-s ")); // MAP_SHARED
    CHECK(contains_text(parent_private, " rw-p ")); // MAP_PRIVATE
}

TEST_CASE("pfn: without CAP_SYS_ADMIN the PFN is hidden, and pfn says why", "[pfn]") {
    if (auto why = testsupport::emulator_cannot_show_addresses(); !why.empty())
        SKIP_TEST(why);
    RunAs as;
    if (pfns_visible()) {
        std::optional<RunAs> nobody = unprivileged_ids();
        if (!nobody)
            SKIP_TEST("PFNs are visible to this test and it cannot switch to an unprivileged user");
        as = *nobody;
    }
    // A process of the same user to look at: same_page, paused.
    ProcessGroup group;
    Process& pair = group.start("same_page", command("00-same-page/same_page", {}, "10", {"--pause", "--quiet"}),
                                Stdin::kPipe, as);
    group.wait_for_stderr(pair, "press Enter");
    int parent = 0, child = 0;
    auto at = pair.err.find("(parent pid ");
    REQUIRE(at != std::string::npos);
    REQUIRE(std::sscanf(pair.err.c_str() + at, "(parent pid %d, child pid %d)", &parent, &child) == 2);
    std::string shared;
    std::istringstream lines(pair.out);
    std::string line;
    while (shared.empty() && std::getline(lines, line))
        if (line.rfind("shared ", 0) == 0) {
            std::istringstream words(line);
            std::string skip;
            words >> skip >> skip >> skip >> skip >> skip >> shared;
        }
    REQUIRE_FALSE(shared.empty());
    Process& pfn = run_pfn(group, {std::to_string(child), shared}, as);
    group.close_stdin(pair);
    group.wait(pair);
    INFO("stdout: " << pfn.out << "stderr: " << pfn.err);
    CHECK(pfn.exit_code() == 1);
    CHECK(contains_text(pfn.out, ": PFN hidden, in "));
    CHECK(contains_text(pfn.err, "PFNs are hidden"));
    CHECK(contains_text(pfn.err, "CAP_SYS_ADMIN"));
    CHECK(contains_text(pfn.err, "run pfn as root"));
    CHECK(pair.exit_code() == 0);
}
