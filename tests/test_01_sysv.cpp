/// @file tests/test_01_sysv.cpp
/// @brief Chapter 01 end to end: the real writer and reader, run as processes, checked the way a
///        learner would check them, and checked to leave nothing behind.
#include <csignal>
#include <string>
#include <vector>

#include <sys/ipc.h>
#include <sys/shm.h>

#include "catch.hpp"
#include "layout.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

/// One test's private key path and the command lines that use it.
struct Chapter01 {
    TempDir dir;
    std::string key = dir.file("key");

    std::vector<std::string> writer(const std::string& timeout, std::vector<std::string> extra = {}) const {
        return command("01-sysv/writer", {"--name", key}, timeout, extra);
    }
    std::vector<std::string> reader(const std::string& timeout, std::vector<std::string> extra = {}) const {
        return command("01-sysv/reader", {"--name", key}, timeout, extra);
    }
};

/// After a case: no segment, semaphore set, /dev/shm entry or descriptor is new, and the key
/// file the writer created is gone.
void require_nothing_left(const LeakCheck& leaks, const Chapter01& chapter) {
    check_nothing_left(leaks);
    std::vector<std::string> files = chapter.dir.entries();
    for (const std::string& file : files)
        UNSCOPED_INFO("left in the key directory: " << file);
    CHECK(files.empty());
}

bool contains_text(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

} // namespace

TEST_CASE("01: a message arrives exactly, and the taught calls are narrated", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
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
        CHECK(writer.out.empty()); // stdout is for data only
        CHECK(contains_text(writer.err, "writer: semget(key=0x"));
        CHECK(contains_text(writer.err, "IPC_CREAT|IPC_EXCL|0600) = "));
        CHECK(contains_text(writer.err, "writer: shmctl(shmid="));
        CHECK(contains_text(writer.err, "IPC_RMID) = 0: marked for removal"));
        CHECK(contains_text(reader.err, "reader: shmat(shmid="));
        CHECK(contains_text(reader.err, "SHM_RDONLY"));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: 4 MiB of random bytes, zero bytes included, arrive identical", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    check_pair_carries(chapter.writer("10", {"--quiet"}), chapter.reader("10", {"--quiet"}), random_bytes(4 << 20, 1));
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a reader started before the writer waits for it", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("20"));
        group.wait_for_stderr(reader, "waiting up to 20 s for a writer");
        REQUIRE_FALSE(reader.wait_status.has_value()); // still waiting, not failed
        Process& writer = group.start("writer", chapter.writer("20", {"written later"}));
        group.wait(writer);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.out == "written later\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a reader with no writer fails within its timeout with a one-line error", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& reader = group.start("reader", chapter.reader("1", {"--quiet"}));
        group.wait(reader);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.out.empty());
        CHECK(std::count(reader.err.begin(), reader.err.end(), '\n') == 1);
        CHECK_THAT(reader.err, contains("No such file or directory"));
        CHECK_THAT(reader.err, contains("is the writer running? start it first"));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a writer killed with SIGKILL mid-stream is reported dead, and the reader cleans up", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    const std::string data = random_bytes(1 << 20, 2);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        // A long --timeout: only the writer's death, not a timeout, can end the reader in time.
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "claimed");
        // Hold the reader still, so the writer fills block 1 and then blocks waiting for the reader.
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
        CHECK_THAT(reader.err, contains("semaphore 0 'writer alive' is 0"));
        CHECK(reader.out == data.substr(0, 65536)); // block 1, which the writer had handed over
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a writer killed while idle on its stdin is reported dead, not timed out", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
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
        CHECK_THAT(reader.err, contains("semctl(semid="));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a writer that died before any reader came is reported, and its objects removed", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30", {"never read"}));
        group.wait_for_stderr(writer, "waiting up to 30 s for a reader");
        group.signal(writer, SIGKILL);
        group.wait(writer);
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("died before the stream started"));
        CHECK(reader.out.empty());
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a segment with a corrupted header is refused", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30", {"payload"}));
        group.wait_for_stderr(writer, "waiting up to 30 s for a reader");

        // Play a faulty (or hostile) writer: change the published header in place.
        key_t key = ::ftok(chapter.key.c_str(), 'S');
        int shmid = ::shmget(key, 0, 0);
        REQUIRE(shmid != -1);
        void* base = ::shmat(shmid, nullptr, 0);
        REQUIRE(base != reinterpret_cast<void*>(-1));
        auto& header = *static_cast<shmtut::SharedHeader*>(base);
        std::string expected;
        SECTION("wrong magic") {
            header.magic.store(0xdeadbeef);
            expected = "magic is 0xdeadbeef";
        }
        SECTION("wrong layout version") {
            header.version.store(99);
            expected = "layout version 99";
        }
        SECTION("a data capacity larger than the segment") {
            header.data_capacity.store(1ull << 40);
            expected = "data capacity 1099511627776 does not fit";
        }
        SECTION("a data capacity that would overflow header + capacity") {
            header.data_capacity.store(~0ull);
            expected = "does not fit";
        }
        REQUIRE(::shmdt(base) == 0);

        Process& reader = group.start("reader", chapter.reader("5"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("header refused"));
        CHECK_THAT(reader.last_error_line(), contains(expected));
        CHECK(reader.out.empty());

        // The writer is still waiting for a reader; SIGTERM makes it clean up and stop.
        group.signal(writer, SIGTERM);
        group.wait(writer);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("interrupted by SIGTERM"));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a second reader is refused, and the first one still gets everything", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& first = group.start("first reader", chapter.reader("30"));
        group.wait_for_stderr(first, "claimed");
        Process& second = group.start("second reader", chapter.reader("5"));
        group.wait(second);
        INFO("second reader stderr:\n" << second.err);
        CHECK(second.exit_code() == 1);
        CHECK_THAT(second.last_error_line(), contains("has already claimed this writer's segment"));
        CHECK(second.out.empty());

        group.feed(writer, "for the first reader only\n", true);
        group.wait(writer);
        group.wait(first);
        CHECK(first.out == "for the first reader only\n");
        CHECK(first.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: objects left by a crashed writer are reported with the ipcrm command, and --force replaces them",
          "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& crashed = group.start("crashed writer", chapter.writer("30", {"lost"}));
        group.wait_for_stderr(crashed, "waiting up to 30 s for a reader");
        group.signal(crashed, SIGKILL);
        group.wait(crashed);

        Process& refused = group.start("writer", chapter.writer("5", {"refused"}));
        group.wait(refused);
        INFO("writer stderr:\n" << refused.err);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.last_error_line(), contains("File exists"));
        CHECK_THAT(refused.last_error_line(), contains("remove them with 'ipcrm -M 0x"));
        CHECK_THAT(refused.last_error_line(), contains("--force"));

        Process& forced = group.start("forced writer", chapter.writer("10", {"--force", "replaced"}));
        // Only now: a reader started earlier could find the old objects, see their writer dead
        // and remove them itself (which is also correct, but not what this case checks).
        group.wait_for_stderr(forced, "waiting up to 10 s for a reader");
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(forced);
        group.wait(reader);
        INFO("forced writer stderr:\n" << forced.err);
        CHECK(forced.exit_code() == 0);
        CHECK_THAT(forced.err, contains("--force: semctl(semid="));
        CHECK(reader.out == "replaced\n");
        CHECK(reader.exit_code() == 0);
        CHECK_THAT(forced.err, contains("unlink(\"" + chapter.key + "\") = 0")); // the crashed writer's key file
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a killed reader makes the writer clean up and fail", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "claimed");
        group.signal(reader, SIGKILL);
        group.wait(reader);
        group.wait(writer); // stdin stays open: only noticing the reader's death ends the writer
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader died"));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a reader whose stdout closes early still cleans up, and so does the writer", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("30"));
        group.close_stdout(reader); // like `reader | head -c 0`
        group.feed(writer, random_bytes(1 << 20, 3), true);
        group.wait(reader);
        group.wait(writer);
        INFO("reader stderr:\n" << reader.err << "writer stderr:\n" << writer.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("write(stdout): Broken pipe"));
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader died"));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: Ctrl-C on a waiting writer removes everything it created", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30", {"never read"}));
        group.wait_for_stderr(writer, "waiting up to 30 s for a reader");
        group.signal(writer, SIGINT);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("interrupted by SIGINT"));
        CHECK_THAT(writer.err, contains("IPC_RMID) = 0 (cleaning up)"));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: usage errors exit 2 with a pointer to --help, and --help exits 0", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    check_usage_errors({
        {binary("01-sysv/writer"), "--bogus"},
        {binary("01-sysv/writer"), "--timeout", "soon"},
        {binary("01-sysv/writer"), "--timeout"},
        {binary("01-sysv/writer"), "--name", ""},
        {binary("01-sysv/reader"), "unexpected"},
        {binary("01-sysv/reader"), "--keep"},
        {binary("01-sysv/reader"), "--timeout", "-3"},
    });
    {
        ProcessGroup group;
        for (const char* program_name : {"01-sysv/writer", "01-sysv/reader"}) {
            Process& help = group.start("help", {binary(program_name), "--help"});
            group.wait(help);
            CHECK(help.exit_code() == 0);
            CHECK_THAT(help.out, contains("Usage:"));
            CHECK(help.err.empty());
        }
    }
    require_nothing_left(leaks, chapter);
}
