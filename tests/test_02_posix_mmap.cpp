/// @file tests/test_02_posix_mmap.cpp
/// @brief Chapter 02 end to end: the real writer and reader on a POSIX shared-memory object,
///        checked the way a learner would check them, and checked to leave nothing in /dev/shm.
#include <csignal>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catch.hpp"
#include "layout.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

/// One test's private object name and the command lines that use it.
struct Chapter02 {
    std::string name = "/" + unique_name("shmtut-test");

    std::vector<std::string> writer(const std::string& timeout, std::vector<std::string> extra = {}) const {
        return command("02-posix-mmap/writer", {"--name", name}, timeout, extra);
    }
    std::vector<std::string> reader(const std::string& timeout, std::vector<std::string> extra = {}) const {
        return command("02-posix-mmap/reader", {"--name", name}, timeout, extra);
    }
    std::string dev_shm_path() const { return "/dev/shm" + name; }
    bool exists() const {
        struct stat info {};
        return ::stat(dev_shm_path().c_str(), &info) == 0;
    }
};

/// Plays a writer by hand: creates the object with `size` bytes and, if `capacity` is not 0,
/// publishes a header claiming that capacity, with this test process as the writer.
void plant_object(const std::string& name, std::size_t size, std::uint64_t capacity) {
    int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    REQUIRE(fd != -1);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
    if (capacity != 0) {
        void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        REQUIRE(base != MAP_FAILED);
        shmtut::publish_header(*shmtut::construct_header(base), capacity, static_cast<std::uint32_t>(::getpid()), 0);
        ::munmap(base, size);
    }
    ::close(fd);
}

} // namespace

TEST_CASE("02: a message arrives exactly, and the taught calls are narrated", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("10", {"hello", "shared memory"}));
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(writer);
        group.wait(reader);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "hello\nshared memory\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
        CHECK(writer.out.empty());
        CHECK_THAT(writer.err, contains("writer: shm_open(\"" + chapter.name + "\", O_RDWR|O_CREAT|O_EXCL, 0600) = "));
        CHECK_THAT(writer.err, contains("writer: ftruncate(fd="));
        CHECK_THAT(writer.err, contains("PROT_READ|PROT_WRITE, MAP_SHARED"));
        CHECK_THAT(writer.err, contains("writer: shm_unlink(\"" + chapter.name + "\") = 0: the name is gone"));
        CHECK_THAT(reader.err, contains("reader: fstat(fd="));
        CHECK_THAT(reader.err, contains("claimed"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: 4 MiB of random bytes, zero bytes included, arrive identical", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    check_pair_carries(chapter.writer("10", {"--quiet"}), chapter.reader("10", {"--quiet"}), random_bytes(4 << 20, 21));
    check_nothing_left(leaks);
}

TEST_CASE("02: with --file, a regular file carries the same data and is removed", "[02]") {
    LeakCheck leaks;
    TempDir dir;
    const std::string path = dir.file("shared");
    leaks.watch_path(path);
    const std::string data = random_bytes(1 << 20, 22);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", command("02-posix-mmap/writer", {"--file", path}, "10"), Stdin::kPipe);
        Process& reader = group.start("reader", command("02-posix-mmap/reader", {"--file", path}, "10"));
        group.feed(writer, data, true);
        group.wait(writer);
        group.wait(reader);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
        CHECK(reader.out == data);
        CHECK_THAT(writer.err, contains("writer: open(\"" + path + "\", O_RDWR|O_CREAT|O_EXCL, 0600) = "));
        CHECK_THAT(writer.err, contains("writer: unlink(\"" + path + "\") = 0"));
    }
    CHECK(dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("02: a reader started before the writer waits for it", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("20"));
        group.wait_for_stderr(reader, "waiting up to 20 s for a writer");
        REQUIRE_FALSE(reader.wait_status.has_value());
        Process& writer = group.start("writer", chapter.writer("20", {"written later"}));
        group.wait(writer);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.out == "written later\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: a reader with no writer fails within its timeout with a one-line error", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& reader = group.start("reader", chapter.reader("1", {"--quiet"}));
        group.wait(reader);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.out.empty());
        CHECK(std::count(reader.err.begin(), reader.err.end(), '\n') == 1);
        CHECK_THAT(reader.err, contains("shm_open(\"" + chapter.name + "\", O_RDWR): No such file or directory"));
        CHECK_THAT(reader.err, contains("is the writer running? start it first"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: an object that exists but is not ready is waited for, then refused at the timeout", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    std::string expected;
    SECTION("size 0: created, not yet sized") {
        plant_object(chapter.name, 0, 0);
        expected = "exists but was not sized within 1 s";
    }
    SECTION("sized, but the header's magic never stored") {
        plant_object(chapter.name, shmtut::kHeaderSize + 4096, 0);
        expected = "its header was not published within 1 s";
    }
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& reader = group.start("reader", chapter.reader("1"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains(expected));
        CHECK(reader.out.empty());
    }
    REQUIRE(::shm_unlink(chapter.name.c_str()) == 0); // the planted object is the test's to remove
    check_nothing_left(leaks);
}

TEST_CASE("02: an object smaller than its ready header claims is refused", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    // The header says 64 KiB of data; the object holds 100 bytes after the header. A reader
    // that believed the header would read past the end of the object and die of SIGBUS.
    plant_object(chapter.name, shmtut::kHeaderSize + 100, 65536);
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& reader = group.start("reader", chapter.reader("5"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.killed_by() == 0);
        CHECK_THAT(reader.last_error_line(), contains("header refused: data capacity 65536 does not fit in the object's 356 bytes"));
    }
    REQUIRE(::shm_unlink(chapter.name.c_str()) == 0);
    check_nothing_left(leaks);
}

TEST_CASE("02: a header naming a live process that does not map the object is a dead writer", "[02]") {
    // As if the writer had died and its pid had gone to another process (here: this test, which
    // unmapped the object after publishing it). Without the check the reader would watch this
    // test process and wait for ever.
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    plant_object(chapter.name, shmtut::kHeaderSize + 4096, 4096);
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& reader = group.start("reader", chapter.reader("5"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("its pid now belongs to another process"));
    }
    CHECK_FALSE(chapter.exists()); // the dead writer's name was removed
    check_nothing_left(leaks);
}

TEST_CASE("02: a writer killed with SIGKILL mid-stream is reported dead", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    const std::string data = random_bytes(1 << 20, 23);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("30")); // long: only death ends it in time
        group.wait_for_stderr(reader, "claimed");
        group.signal(reader, SIGSTOP);
        group.feed(writer, data, false);
        group.wait_for_stderr(writer, "block 1, 65536 bytes");
        group.signal(writer, SIGKILL);
        group.wait(writer);
        REQUIRE(writer.killed_by() == SIGKILL);
        group.signal(reader, SIGCONT);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("died before the end of the stream"));
        CHECK_THAT(reader.err, contains("its pidfd is readable"));
        CHECK(reader.out == data.substr(0, 65536));
    }
    CHECK_FALSE(chapter.exists());
    check_nothing_left(leaks);
}

TEST_CASE("02: a writer killed while idle on its stdin is reported dead, not timed out", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("30"));
        group.feed(writer, "typed so far\n", false);
        group.wait_for_stdout(reader, 13);
        REQUIRE(reader.out == "typed so far\n");
        group.signal(writer, SIGKILL);
        group.wait(writer);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("died before the end of the stream"));
    }
    CHECK_FALSE(chapter.exists());
    check_nothing_left(leaks);
}

TEST_CASE("02: a writer that died before any reader came is reported, and its name removed", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30", {"never read"}));
        group.wait_for_stderr(writer, "waiting up to 30 s for a reader");
        group.signal(writer, SIGKILL);
        group.wait(writer);
        REQUIRE(chapter.exists()); // a killed writer cannot remove its name
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("died before the stream started"));
        CHECK_THAT(reader.err, contains("shm_unlink(\"" + chapter.name + "\") = 0: removed the name it left"));
    }
    CHECK_FALSE(chapter.exists());
    check_nothing_left(leaks);
}

TEST_CASE("02: a second reader is refused, and the first one still gets everything", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        // --keep leaves the name, so the second reader can open the object and meet the claim.
        Process& writer = group.start("writer", chapter.writer("30", {"--keep"}), Stdin::kPipe);
        Process& first = group.start("first reader", chapter.reader("30"));
        group.wait_for_stderr(first, "claimed");
        Process& second = group.start("second reader", chapter.reader("5"));
        group.wait(second);
        INFO("second reader stderr:\n" << second.err);
        CHECK(second.exit_code() == 1);
        CHECK_THAT(second.last_error_line(), contains("has already claimed this object"));
        CHECK(second.out.empty());

        group.feed(writer, "for the first reader only\n", true);
        group.wait(writer);
        group.wait(first);
        CHECK(first.out == "for the first reader only\n");
        CHECK(first.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
        CHECK_THAT(writer.err, contains("--keep: " + chapter.name + " is left in place"));
    }
    REQUIRE(chapter.exists()); // kept, as asked
    REQUIRE(::shm_unlink(chapter.name.c_str()) == 0);
    check_nothing_left(leaks);
}

TEST_CASE("02: without --keep a second reader finds no name at all once the first has claimed", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& first = group.start("first reader", chapter.reader("30"));
        group.wait_for_stderr(writer, "the name is gone");
        Process& second = group.start("second reader", chapter.reader("1", {"--quiet"}));
        group.wait(second);
        CHECK(second.exit_code() == 1);
        CHECK_THAT(second.err, contains("No such file or directory"));
        group.close_stdin(writer);
        group.wait(writer);
        group.wait(first);
        CHECK(first.exit_code() == 0);
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: an object of the same name makes the writer fail with EEXIST, and --force replaces it", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    plant_object(chapter.name, 4096, 0);
    {
        ProcessGroup group;
        Process& refused = group.start("writer", chapter.writer("5", {"refused"}));
        group.wait(refused);
        INFO("writer stderr:\n" << refused.err);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.last_error_line(), contains("File exists"));
        CHECK_THAT(refused.last_error_line(), contains("remove it with 'rm " + chapter.dev_shm_path() + "'"));
        CHECK_THAT(refused.last_error_line(), contains("--force"));
        REQUIRE(chapter.exists()); // not the failing writer's to remove

        Process& forced = group.start("forced writer", chapter.writer("10", {"--force", "replaced"}));
        group.wait_for_stderr(forced, "waiting up to 10 s for a reader");
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(forced);
        group.wait(reader);
        INFO("forced writer stderr:\n" << forced.err);
        CHECK(forced.exit_code() == 0);
        CHECK_THAT(forced.err, contains("--force: shm_unlink(\"" + chapter.name + "\") = 0: removed the old object"));
        CHECK(reader.out == "replaced\n");
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: a killed reader makes the writer clean up and fail", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "claimed");
        group.signal(reader, SIGKILL);
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader died"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: Ctrl-C on a waiting writer removes its object", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30", {"never read"}));
        group.wait_for_stderr(writer, "waiting up to 30 s for a reader");
        REQUIRE(chapter.exists());
        group.signal(writer, SIGINT);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("interrupted by SIGINT"));
    }
    CHECK_FALSE(chapter.exists());
    check_nothing_left(leaks);
}

TEST_CASE("02: the object is created 0600 whatever the umask", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        mode_t saved = ::umask(0277); // would turn 0600 into 0400; the child inherits it
        Process& writer = group.start("writer", chapter.writer("30", {"never read"}));
        ::umask(saved);
        group.wait_for_stderr(writer, "waiting up to 30 s for a reader");
        struct stat info {};
        REQUIRE(::stat(chapter.dev_shm_path().c_str(), &info) == 0);
        CHECK((info.st_mode & 0777) == 0600);
        CHECK_THAT(writer.err, contains("fchmod(fd="));
        group.signal(writer, SIGTERM);
        group.wait(writer);
        CHECK(writer.exit_code() == 1);
    }
    CHECK_FALSE(chapter.exists());
    check_nothing_left(leaks);
}

TEST_CASE("02: shrinking an object under a mapping makes the next access raise SIGBUS", "[02][sigbus]") {
    // The hazard chapter 03's seals cure. It must end in a signal, so it runs in a child that
    // restores SIGBUS's default action first (AddressSanitizer would turn it into exit 1).
    LeakCheck leaks;
    const std::string name = "/" + unique_name("shmtut-sigbus");
    leaks.watch_shm_name(name);
    int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    REQUIRE(fd != -1);
    const long page = ::sysconf(_SC_PAGESIZE);
    REQUIRE(::ftruncate(fd, 2 * page) == 0);
    int status = in_child([&] {
        std::signal(SIGBUS, SIG_DFL);
        auto* bytes = static_cast<volatile char*>(
            ::mmap(nullptr, static_cast<std::size_t>(2 * page), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        if (bytes == MAP_FAILED)
            return 2;
        bytes[page] = 1;                  // fine: inside the object
        if (::ftruncate(fd, page) != 0)   // a peer shrinks the object to one page
            return 3;
        bytes[page] = 2;                  // the mapping is still there, the page is not: SIGBUS
        return 0;
    });
    ::close(fd);
    REQUIRE(::shm_unlink(name.c_str()) == 0);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGBUS);
    check_nothing_left(leaks);
}

TEST_CASE("02: usage errors exit 2 with a pointer to --help, and --help exits 0", "[02]") {
    LeakCheck leaks;
    const std::string writer = binary("02-posix-mmap/writer");
    const std::string reader = binary("02-posix-mmap/reader");
    check_usage_errors({
        {writer, "--name", "no-slash"},
        {writer, "--name", "/a/b"},
        {writer, "--name", "/"},
        {writer, "--name", "/" + std::string(256, 'x')},
        {writer, "--name", "/x", "--file", "/tmp/x"},
        {writer, "--capacity", "0"},
        {writer, "--capacity", "lots"},
        {writer, "--bogus"},
        {reader, "--name", "/.."},
        {reader, "--keep"},
        {reader, "unexpected"},
        {reader, "--timeout", "0"},
    });
    {
        ProcessGroup group;
        for (const std::string& program_path : {writer, reader}) {
            Process& help = group.start("help", {program_path, "--help"});
            group.wait(help);
            CHECK(help.exit_code() == 0);
            CHECK_THAT(help.out, contains("Usage:"));
        }
    }
    check_nothing_left(leaks);
}
