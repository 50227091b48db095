/// @file tests/test_00_same_page.cpp
/// @brief Chapter 00 end to end: the bare program and same_page, run as processes; the texts
///        each process reads, and, where this test may see them, the physical frames.
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "catch.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

/// One row of same_page's table: what one process saw of one page at one moment.
struct Row {
    std::string pid;
    std::string address;
    std::string pfn;       ///< "0x1dae31", "hidden" or "absent"
    std::string only_here; ///< "yes" or "no"
    std::string text;
};

/// The table keyed by (page, when, process): ("shared", "before", "parent").
using Table = std::map<std::tuple<std::string, std::string, std::string>, Row>;

/// Parses the rows of same_page's table ("shared   before write  parent   4242 0x7f.. ...").
Table parse_table(const std::string& out) {
    Table table;
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
        std::istringstream words(line);
        std::string page, when, write_word, process;
        Row row;
        if (!(words >> page >> when >> write_word >> process >> row.pid >> row.address >> row.pfn >> row.only_here >>
              row.text))
            continue;
        if ((page == "shared" || page == "private") && write_word == "write")
            table[{page, when, process}] = row;
    }
    return table;
}

/// True when this process can read PFNs from its own pagemap (CAP_SYS_ADMIN): the same check
/// the kernel makes for same_page, which runs with the test's credentials.
bool pfns_visible() {
    const auto page_size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    void* page = ::mmap(nullptr, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(page != MAP_FAILED);
    *static_cast<volatile char*>(page) = 1;
    std::uint64_t entry = 0;
    int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd != -1) {
        auto offset = static_cast<off_t>(reinterpret_cast<std::uintptr_t>(page) / page_size * sizeof entry);
        if (::pread(fd, &entry, sizeof entry, offset) != static_cast<ssize_t>(sizeof entry))
            entry = 0;
        ::close(fd);
    }
    ::munmap(page, page_size);
    return (entry & ((1ull << 55) - 1)) != 0;
}

const char* const kHiddenReason =
    "PFNs are hidden from this test: /proc/PID/pagemap shows them only to CAP_SYS_ADMIN (run the tests as root)";

bool contains_text(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

/// Runs same_page (as `as`) to the end and returns it, finished.
Process& run_same_page(ProcessGroup& group, const std::vector<std::string>& extra = {}, RunAs as = {}) {
    Process& program = group.start("same_page", command("00-same-page/same_page", {}, "10", extra), Stdin::kNull, as);
    group.wait(program);
    return program;
}

} // namespace

TEST_CASE("00: the bare program: the child's message arrives through the shared page, nothing left", "[00]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& hello = group.start("hello", {binary("00-same-page/hello")});
        group.wait(hello);
        INFO("stderr:\n" << hello.err);
        CHECK(hello.exit_code() == 0);
        CHECK(hello.out == "Hello from the child, through one shared page.\n");
        CHECK(hello.err.empty());
        CHECK_FALSE(group.any_member_alive()); // the child was reaped, not left running
    }
    check_nothing_left(leaks);
}

TEST_CASE("00: the notes quote the bare program whole, exactly as it is in the file", "[00]") {
    auto text_of = [](const std::string& path) {
        std::ifstream in(path);
        std::stringstream content;
        content << in.rdbuf();
        return content.str();
    };
    const std::string chapter = std::string(SHMTUT_SOURCE_DIR) + "/00-same-page/";
    const std::string notes = text_of(chapter + "README.md");
    const std::string code = text_of(chapter + "hello.cpp");
    REQUIRE_FALSE(notes.empty());
    REQUIRE_FALSE(code.empty());
    INFO("hello.cpp must appear whole in 00-same-page/README.md, in a ```cpp block");
    CHECK(notes.find("```cpp\n" + code + "```\n") != std::string::npos);
}

TEST_CASE("00: the parent reads the child's write in the shared page and keeps its own in the private page",
          "[00]") {
    if (auto why = testsupport::emulator_cannot_show_addresses(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& program = run_same_page(group);
        INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
        CHECK(program.exit_code() == 0);
        Table table = parse_table(program.out);
        REQUIRE(table.size() == 8);
        // Before the write both read the parent's text in both pages.
        for (const char* page : {"shared", "private"})
            for (const char* process : {"parent", "child"})
                CHECK(table[{page, "before", process}].text == "parent");
        CHECK(table[{"shared", "after", "child"}].text == "child");
        CHECK(table[{"shared", "after", "parent"}].text == "child");
        CHECK(table[{"private", "after", "child"}].text == "child");
        CHECK(table[{"private", "after", "parent"}].text == "parent");
        // fork copies the address space: the same virtual addresses in both processes.
        CHECK(table[{"shared", "after", "child"}].address == table[{"shared", "after", "parent"}].address);
        CHECK(table[{"shared", "before", "child"}].pid != table[{"shared", "before", "parent"}].pid);
        // Bit 56 needs no privilege: after the child's write each private copy is mapped once.
        CHECK(table[{"private", "after", "child"}].only_here == "yes");
        CHECK(table[{"private", "after", "parent"}].only_here == "yes");
        CHECK(table[{"shared", "after", "parent"}].only_here == "no");
        // The taught calls are narrated, on stderr, by the process that makes them.
        CHECK(contains_text(program.err, "parent: mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS"));
        CHECK(contains_text(program.err, "parent: mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS"));
        CHECK(contains_text(program.err, "parent: fork() = "));
        CHECK(contains_text(program.err, "child: open(\"/proc/self/pagemap\", O_RDONLY) = "));
        CHECK(contains_text(program.err, "child: pread(fd="));
        CHECK(contains_text(program.err, "parent: waitpid("));
        CHECK_FALSE(contains_text(program.out, "UNEXPECTED"));
        CHECK_FALSE(group.any_member_alive());
    }
    check_nothing_left(leaks);
}

TEST_CASE("00: as root, the shared page is one frame in both processes, the private page two after the write",
          "[00]") {
    if (auto why = testsupport::emulator_cannot_show_addresses(); !why.empty())
        SKIP_TEST(why);
    if (!pfns_visible())
        SKIP_TEST(kHiddenReason);
    ProcessGroup group;
    Process& program = run_same_page(group, {"--quiet"});
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    CHECK(program.err.empty());
    Table table = parse_table(program.out);
    REQUIRE(table.size() == 8);
    for (const auto& [key, row] : table)
        REQUIRE(row.pfn.rfind("0x", 0) == 0); // a number in every cell: nothing hidden or absent
    const std::string shared = table[{"shared", "before", "parent"}].pfn;
    CHECK(table[{"shared", "before", "child"}].pfn == shared);
    CHECK(table[{"shared", "after", "child"}].pfn == shared);
    CHECK(table[{"shared", "after", "parent"}].pfn == shared);
    const std::string original = table[{"private", "before", "parent"}].pfn;
    CHECK(table[{"private", "before", "child"}].pfn == original); // one frame until a write
    CHECK(table[{"private", "after", "parent"}].pfn == original);  // the parent keeps it
    CHECK(table[{"private", "after", "child"}].pfn != original);   // the child got a copy
    CHECK(table[{"private", "after", "child"}].pfn != shared);
    CHECK(contains_text(program.out, "shared page:  one frame, PFN " + shared));
    CHECK(contains_text(program.out, "the child got a copy at PFN " + table[{"private", "after", "child"}].pfn));
}

TEST_CASE("00: without CAP_SYS_ADMIN the PFNs are hidden, the program says why, and the texts still show", "[00]") {
    if (auto why = testsupport::emulator_cannot_show_addresses(); !why.empty())
        SKIP_TEST(why);
    RunAs as;
    if (pfns_visible()) {
        std::optional<RunAs> nobody = unprivileged_ids();
        if (!nobody)
            SKIP_TEST("PFNs are visible to this test and it cannot switch to an unprivileged user");
        as = *nobody;
    }
    ProcessGroup group;
    Process& program = run_same_page(group, {"--quiet"}, as);
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    Table table = parse_table(program.out);
    REQUIRE(table.size() == 8);
    for (const auto& [key, row] : table)
        CHECK(row.pfn == "hidden");
    CHECK(table[{"shared", "after", "parent"}].text == "child");
    CHECK(table[{"private", "after", "parent"}].text == "parent");
    CHECK(contains_text(program.out, "PFNs hidden"));
    CHECK(contains_text(program.out, "CAP_SYS_ADMIN"));
    CHECK(contains_text(program.out, "Linux 4.2"));
    CHECK(contains_text(program.out, "Rowhammer"));
}

TEST_CASE("00: --pages writes every page, and the table shows the first", "[00]") {
    ProcessGroup group;
    Process& program = run_same_page(group, {"--quiet", "--pages", "64"});
    INFO("stdout:\n" << program.out << "stderr:\n" << program.err);
    CHECK(program.exit_code() == 0);
    Table table = parse_table(program.out);
    REQUIRE(table.size() == 8);
    CHECK(table[{"shared", "after", "parent"}].text == "child");
    CHECK(table[{"private", "after", "parent"}].text == "parent");
}

TEST_CASE("00: --help prints the usage, and usage errors exit 2 with a pointer to --help", "[00]") {
    {
        ProcessGroup group;
        Process& help = group.start("same_page", {binary("00-same-page/same_page"), "--help"});
        group.wait(help);
        CHECK(help.exit_code() == 0);
        CHECK(help.out.rfind("Usage: same_page", 0) == 0);
        CHECK(help.err.empty());
    }
    const std::string same_page = binary("00-same-page/same_page");
    check_usage_errors({{same_page, "--pages", "0"},
                        {same_page, "--pages", "many"},
                        {same_page, "--pages", "262145"},
                        {same_page, "--pages"},
                        {same_page, "--bogus"},
                        {same_page, "extra"},
                        {same_page, "--timeout", "-1"}});
}

namespace {

/// Starts same_page --pause and waits until both processes pause; returns the child's pid.
pid_t start_paused(ProcessGroup& group, Process*& program) {
    program = &group.start("same_page", command("00-same-page/same_page", {}, "10", {"--pause", "--quiet"}),
                           Stdin::kPipe);
    group.wait_for_stderr(*program, "press Enter");
    int parent = 0, child = 0;
    auto at = program->err.find("(parent pid ");
    REQUIRE(at != std::string::npos);
    REQUIRE(std::sscanf(program->err.c_str() + at, "(parent pid %d, child pid %d)", &parent, &child) == 2);
    REQUIRE(parent == program->pid);
    return child;
}

} // namespace

TEST_CASE("00: a child killed while both pause is reported as killed, and reaped", "[00]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process* program = nullptr;
        pid_t child = start_paused(group, program);
        REQUIRE(::kill(child, SIGKILL) == 0);
        group.close_stdin(*program); // end of the pause
        group.wait(*program);
        INFO("stderr:\n" << program->err);
        CHECK(program->exit_code() == 1);
        CHECK(program->last_error_line() == "same_page: the child was killed by signal 9 (Killed)");
        CHECK_FALSE(group.any_member_alive());
    }
    check_nothing_left(leaks);
}

TEST_CASE("00: SIGTERM during the pause ends both processes cleanly", "[00]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process* program = nullptr;
        start_paused(group, program);
        group.signal(*program, SIGTERM);
        group.wait(*program);
        INFO("stderr:\n" << program->err);
        CHECK(program->exit_code() == 1);
        CHECK(contains_text(program->last_error_line(), "interrupted by SIGTERM"));
        CHECK_FALSE(group.any_member_alive()); // the child did not outlive its parent
    }
    check_nothing_left(leaks);
}

// --pause waits for Enter on standard input: closed, nothing can ever arrive, which is how the
// program was started, not something that went wrong while it ran (exit 2, before any work);
// an input that ends (</dev/null, a finished pipe) ends the pause, as --help says.
TEST_CASE("00: --pause with standard input closed is a usage error before any work; an ended input ends the pause",
          "[00]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& closed = group.start(
            "same_page", {"/bin/sh", "-c", "exec \"$@\" <&-", "sh", binary("00-same-page/same_page"), "--pause", "--quiet"});
        group.wait(closed);
        INFO("stderr:\n" << closed.err);
        CHECK(closed.exit_code() == 2);
        CHECK(contains_text(closed.err, "--pause waits for Enter on standard input, which is closed"));
        CHECK(closed.out.empty()); // refused before the fork: no table
        CHECK_FALSE(group.any_member_alive());

        Process& ended = group.start("same_page", command("00-same-page/same_page", {}, "10", {"--pause", "--quiet"}),
                                     Stdin::kNull);
        group.wait(ended);
        INFO("stderr:\n" << ended.err);
        CHECK(ended.exit_code() == 0);
        CHECK(contains_text(ended.out, "page     when")); // the table: the run went on to the end
        CHECK_FALSE(group.any_member_alive());
    }
    check_nothing_left(leaks);
}
