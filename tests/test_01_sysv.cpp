/// @file tests/test_01_sysv.cpp
/// @brief Chapter 01 end to end: the real writer and reader, run as processes, checked the way a
///        learner would check them, and checked to leave nothing behind.
#include <csignal>
#include <fstream>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../01-sysv/protocol.hpp"
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

/// The whole content of a file ("" if it cannot be read).
std::string file_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

/// Writes `content` to a new file at `path`.
void write_file(const std::string& path, const std::string& content) {
    std::ofstream out(path, std::ios::binary);
    out << content;
    REQUIRE(out.good());
}

/// The test plays the writer, as a faulty or hostile peer would: it makes the key file, the
/// semaphore set (initialised, "writer alive" held by the test process) and the segment with a
/// valid header (the key file's identity in its chapter area), so that a case can then break one rule at a time. Removes everything at the end.
struct PlayedWriter {
    key_t key = -1;
    int semid = -1;
    int shmid = -1;
    shmtut::SharedHeader* header = nullptr;

    explicit PlayedWriter(const std::string& key_path, int mode = 0600) {
        if (::access(key_path.c_str(), F_OK) != 0)
            write_file(key_path, "a key file the test made\n");
        key = ::ftok(key_path.c_str(), sysv::kProjectId);
        REQUIRE(key != -1);
        semid = ::semget(key, sysv::kSemaphoreCount, IPC_CREAT | IPC_EXCL | mode);
        REQUIRE(semid != -1);
        unsigned short initial[sysv::kSemaphoreCount] = {0, 1, 0, 0, 1};
        sysv::semun arg{};
        arg.array = initial;
        REQUIRE(::semctl(semid, 0, SETALL, arg) == 0);
        sembuf alive{sysv::kWriterAlive, +1, SEM_UNDO};
        REQUIRE(::semop(semid, &alive, 1) == 0); // also sets sem_otime: "initialised"
        shmid = ::shmget(key, shmtut::kHeaderSize + shmtut::kDefaultDataCapacity, IPC_CREAT | IPC_EXCL | mode);
        REQUIRE(shmid != -1);
        void* base = ::shmat(shmid, nullptr, 0);
        REQUIRE(base != reinterpret_cast<void*>(-1));
        header = shmtut::construct_header(base);
        sysv::store_key_file_identity(*header, sysv::key_file_identity(key_path)); // as the real writer does
        shmtut::publish_header(*header, shmtut::kDefaultDataCapacity, static_cast<std::uint32_t>(::getpid()), 0);
    }
    ~PlayedWriter() {
        if (header != nullptr)
            ::shmdt(header);
        if (shmid != -1)
            ::shmctl(shmid, IPC_RMID, nullptr);
        if (semid != -1)
            ::semctl(semid, 0, IPC_RMID);
    }
    PlayedWriter(const PlayedWriter&) = delete;
    PlayedWriter& operator=(const PlayedWriter&) = delete;

    /// Publishes block `sequence` of `length` bytes (whatever the data area holds) and posts
    /// "block ready", as the real writer does.
    void post_block(std::uint64_t length, std::uint64_t sequence) {
        shmtut::publish_block(*header, length, sequence, false);
        sembuf ready{sysv::kBlockReady, +1, 0};
        REQUIRE(::semop(semid, &ready, 1) == 0);
    }
};

/// True while a System V segment or semaphore set with this id exists.
bool segment_exists(int shmid) {
    shmid_ds info{};
    return ::shmctl(shmid, IPC_STAT, &info) == 0;
}
bool semaphore_set_exists(int semid) {
    return ::semctl(semid, 0, GETVAL) != -1 || errno != EINVAL;
}

} // namespace

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

// ---------------------------------------------------------------------------------------------
// Step 1: the bare pair.

TEST_CASE("01: the bare pair (step 1) carries its message and leaves nothing behind", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.dir.path());
    {
        ProcessGroup group;
        Process& writer = group.start("hello_writer", {binary("01-sysv/hello_writer"), chapter.dir.path()});
        // The bare reader does not wait for a writer: start it once the writer says so.
        group.wait_for_stderr(writer, "the message is in place");
        Process& reader = group.start("hello_reader", {binary("01-sysv/hello_reader"), chapter.dir.path()});
        group.wait(reader);
        wait_for_waiter(group, writer, reader); // a failed reader never releases the writer
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "hello, shared memory\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
        CHECK(reader.err.empty());
        CHECK(writer.err == "hello_writer: the message is in place; start hello_reader\n");
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: the bare reader started before its writer fails at once (step 2's reader waits)", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.dir.path());
    {
        ProcessGroup group;
        Process& reader = group.start("hello_reader", {binary("01-sysv/hello_reader"), chapter.dir.path()});
        group.wait(reader);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.err == "semget: No such file or directory\n");
        CHECK(reader.out.empty());
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: the notes quote the bare pair exactly as it is in the files", "[01]") {
    const std::string source = SHMTUT_SOURCE_DIR;
    const std::string notes = file_text(source + "/01-sysv/README.md");
    REQUIRE_FALSE(notes.empty());
    for (const char* program : {"hello_writer.cpp", "hello_reader.cpp"}) {
        const std::string code = file_text(source + "/01-sysv/" + program);
        INFO(program << " must appear whole in 01-sysv/README.md, in a ```cpp block");
        REQUIRE_FALSE(code.empty());
        CHECK(contains_text(notes, "```cpp\n" + code + "```\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// Writers that meet each other, and streams kept with --keep.

TEST_CASE("01: a second writer on the name of a running writer is refused, with and without --force", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& first = group.start("writer A", chapter.writer("60", {"from writer A"}));
        group.wait_for_stderr(first, "waiting up to 60 s for a reader");
        for (bool force : {false, true}) {
            Process& second = group.start(force ? "writer B --force" : "writer B",
                                          chapter.writer("5", force ? std::vector<std::string>{"--force", "from B"}
                                                                    : std::vector<std::string>{"from B"}));
            group.wait(second);
            INFO("second writer (" << (force ? "--force" : "no --force") << ") stderr:\n" << second.err);
            CHECK(second.exit_code() == 1);
            CHECK_THAT(second.last_error_line(), contains("a writer is running there (pid " + std::to_string(first.pid)));
            CHECK_THAT(second.last_error_line(), !contains("earlier run"));
            CHECK_THAT(second.err, !contains("IPC_RMID"));
            CHECK(::access(chapter.key.c_str(), F_OK) == 0); // writer A's key file is still there
        }
        REQUIRE_FALSE(first.wait_status.has_value()); // writer A still waits
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(reader);
        group.wait(first);
        INFO("reader stderr:\n" << reader.err << "writer A stderr:\n" << first.err);
        CHECK(reader.out == "from writer A\n");
        CHECK(reader.exit_code() == 0);
        CHECK(first.exit_code() == 0);
    }
    require_nothing_left(leaks, chapter);
}

/// Two files of `dir` that give one ftok key, made by creating empty files until two do: ftok
/// keeps the low 16 bits of the inode and files in one directory share a device, so at most
/// 65537 files are needed (in a new tmpfs, inodes 3 and 65539). The others are removed at once.
/// Empty when the file system gives no collision within that many (the caller skips).
std::vector<std::string> colliding_key_files(const TempDir& dir) {
    std::unordered_map<key_t, std::string> by_key;
    std::vector<std::string> pair;
    for (int i = 0; i <= 65536 && pair.empty(); ++i) {
        std::string path = dir.file("k" + std::to_string(i));
        int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd == -1)
            break;
        ::close(fd);
        key_t key = ::ftok(path.c_str(), sysv::kProjectId);
        if (key == -1)
            break;
        if (auto [first, inserted] = by_key.emplace(key, path); !inserted)
            pair = {first->second, path};
    }
    for (const auto& [key, path] : by_key)
        if (pair.empty() || path != pair[0])
            ::unlink(path.c_str());
    return pair;
}

TEST_CASE("01: two key files that collide in ftok: the reader of the second refuses the first's segment", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    std::vector<std::string> files = colliding_key_files(chapter.dir);
    if (files.empty())
        SKIP_TEST("no two files of " + chapter.dir.path() + " gave one ftok key within 65537 files");
    const std::string first_file = files[0];
    const std::string second_file = files[1];
    leaks.watch_path(first_file);
    leaks.watch_path(second_file);
    struct stat first_stat {};
    REQUIRE(::stat(first_file.c_str(), &first_stat) == 0);
    const std::string first_identity =
        "dev:ino " + std::to_string(first_stat.st_dev) + ":" + std::to_string(first_stat.st_ino);
    INFO(first_file << " and " << second_file << " give the key "
                    << sysv::key_text(::ftok(first_file.c_str(), sysv::kProjectId)));
    {
        ProcessGroup group;
        Process& first = group.start("writer 1",
                                     command("01-sysv/writer", {"--name", first_file}, "60", {"for the first reader"}));
        group.wait_for_stderr(first, "waiting up to 60 s for a reader");

        // The second writer's IPC_EXCL fails; it says why: a collision, not a second run.
        Process& second = group.start("writer 2", command("01-sysv/writer", {"--name", second_file}, "5", {"lost"}));
        group.wait(second);
        INFO("second writer stderr:\n" << second.err);
        CHECK(second.exit_code() == 1);
        CHECK_THAT(second.last_error_line(), contains("for another key file (" + first_identity + ", this one is"));
        CHECK_THAT(second.last_error_line(), contains("an ftok collision"));
        CHECK_THAT(second.last_error_line(), !contains("give this writer another --name"));

        // A reader of the second file finds the first writer's objects by key, and refuses them
        // before it claims anything: nothing reaches its standard output.
        Process& stray = group.start("reader 2", command("01-sysv/reader", {"--name", second_file}, "10"));
        group.wait(stray);
        INFO("reader of the second file stderr:\n" << stray.err);
        CHECK(stray.exit_code() == 1);
        CHECK(stray.out.empty());
        CHECK_THAT(stray.last_error_line(), contains("belongs to another key file (" + first_identity + ")"));
        CHECK_THAT(stray.last_error_line(), contains("an ftok collision"));
        REQUIRE_FALSE(first.wait_status.has_value()); // writer 1 still waits, its segment unclaimed

        Process& reader = group.start("reader 1", command("01-sysv/reader", {"--name", first_file}, "10"));
        group.wait(reader);
        group.wait(first);
        INFO("reader 1 stderr:\n" << reader.err << "writer 1 stderr:\n" << first.err);
        CHECK(reader.out == "for the first reader\n");
        CHECK(reader.exit_code() == 0);
        CHECK(first.exit_code() == 0);
    }
    CHECK(::unlink(first_file.c_str()) == 0); // the test's files: the programs never remove them
    CHECK(::unlink(second_file.c_str()) == 0);
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a reader of a stream kept with --keep says it ended, and the kept objects stay", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        Process& writer = group.start("writer --keep", chapter.writer("10", {"--keep", "kept"}));
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(writer);
        group.wait(reader);
        REQUIRE(writer.exit_code() == 0);
        REQUIRE(reader.out == "kept\n");

        Process& later = group.start("later reader", chapter.reader("10"));
        group.wait(later);
        INFO("later reader stderr:\n" << later.err);
        CHECK(later.exit_code() == 1);
        CHECK_THAT(later.last_error_line(), contains("already ended"));
        CHECK_THAT(later.last_error_line(), contains("kept its objects (--keep)"));
        CHECK_THAT(later.last_error_line(), !contains("died"));
        key_t key = ::ftok(chapter.key.c_str(), sysv::kProjectId);
        int semid = ::semget(key, 0, 0);
        int shmid = ::shmget(key, 0, 0);
        CHECK(semid != -1); // kept: the reader removed nothing
        CHECK(shmid != -1);

        // A writer on the kept objects names them for what they are; --force replaces them.
        Process& refused = group.start("writer", chapter.writer("5", {"refused"}));
        group.wait(refused);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.last_error_line(), contains("kept them with --keep"));
        CHECK_THAT(refused.last_error_line(), contains("no writer is running there"));
        Process& forced = group.start("writer --force", chapter.writer("10", {"--force", "after"}));
        group.wait_for_stderr(forced, "waiting up to 10 s for a reader");
        Process& last = group.start("reader", chapter.reader("10"));
        group.wait(forced);
        group.wait(last);
        CHECK(last.out == "after\n");
        CHECK(forced.exit_code() == 0);
        CHECK_FALSE(semaphore_set_exists(semid));
        CHECK_FALSE(segment_exists(shmid));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a stale segment without a semaphore set is reported, and --force replaces only it", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    write_file(chapter.key, "a key file the test made\n");
    key_t key = ::ftok(chapter.key.c_str(), sysv::kProjectId);
    REQUIRE(key != -1);
    int stale = ::shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600); // a crashed run's segment
    REQUIRE(stale != -1);
    {
        ProcessGroup group;
        Process& refused = group.start("writer", chapter.writer("5", {"refused"}));
        group.wait(refused);
        INFO("writer stderr:\n" << refused.err);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.last_error_line(), contains("File exists"));
        CHECK_THAT(refused.last_error_line(), contains("'ipcrm -M 0x"));
        CHECK(segment_exists(stale));

        Process& forced = group.start("writer --force", chapter.writer("10", {"--force", "replaced"}));
        group.wait_for_stderr(forced, "waiting up to 10 s for a reader");
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(forced);
        group.wait(reader);
        INFO("forced writer stderr:\n" << forced.err << "reader stderr:\n" << reader.err);
        CHECK_THAT(forced.err, contains("--force: shmctl(shmid=" + std::to_string(stale) + ", IPC_RMID) = 0"));
        CHECK(reader.out == "replaced\n");
        CHECK(reader.exit_code() == 0);
        CHECK(forced.exit_code() == 0);
        CHECK_FALSE(segment_exists(stale));
    }
    CHECK(file_text(chapter.key) == "a key file the test made\n"); // not a writer's: it stays
    REQUIRE(::unlink(chapter.key.c_str()) == 0);
    require_nothing_left(leaks, chapter);
}

// ---------------------------------------------------------------------------------------------
// Planted paths, another user, hostile writers.

TEST_CASE("01: a key file that is not a writer's is used but never removed, by the writer or the reader", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    const std::string mine = "notes of mine\n";
    write_file(chapter.key, mine);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("10", {"through my file"}));
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(writer);
        group.wait(reader);
        CHECK(reader.out == "through my file\n");
        CHECK(writer.exit_code() == 0);
        CHECK(file_text(chapter.key) == mine);

        // The reader cleans up after a killed writer, but leaves the user's file.
        Process& killed = group.start("writer", chapter.writer("30", {"never read"}));
        group.wait_for_stderr(killed, "waiting up to 30 s for a reader");
        group.signal(killed, SIGKILL);
        group.wait(killed);
        Process& cleaner = group.start("reader", chapter.reader("30"));
        group.wait(cleaner);
        INFO("reader stderr:\n" << cleaner.err);
        CHECK(cleaner.exit_code() == 1);
        CHECK_THAT(cleaner.last_error_line(), contains("died before the stream started"));
        CHECK(file_text(chapter.key) == mine);
    }
    REQUIRE(::unlink(chapter.key.c_str()) == 0);
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a symbolic link planted at the key path is refused, never followed, never removed", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    const std::string target = chapter.dir.file("target");
    SECTION("a link to an existing file") {
        write_file(target, "the target's own content\n");
    }
    SECTION("a dangling link") {}
    REQUIRE(::symlink(target.c_str(), chapter.key.c_str()) == 0);
    const bool target_existed = ::access(target.c_str(), F_OK) == 0;
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("3", {"--force", "misdirected"}));
        group.wait(writer);
        Process& reader = group.start("reader", chapter.reader("3"));
        group.wait(reader);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("is a symbolic link: refusing to follow it"));
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("is a symbolic link: refusing to follow it"));
    }
    struct stat link {};
    REQUIRE(::lstat(chapter.key.c_str(), &link) == 0);
    CHECK(S_ISLNK(link.st_mode));
    if (target_existed)
        CHECK(file_text(target) == "the target's own content\n");
    else
        CHECK(::access(target.c_str(), F_OK) != 0); // nothing created through the link
    ::unlink(chapter.key.c_str());
    ::unlink(target.c_str());
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: another user's objects are refused, and that user cannot replace a running writer's", "[01]") {
    std::optional<RunAs> nobody = unprivileged_ids();
    if (!nobody)
        SKIP_TEST("not root: cannot start a program as another user");
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    REQUIRE(::chmod(chapter.dir.path().c_str(), 0755) == 0); // the other user may stat the key file
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("60", {"for root only"}));
        group.wait_for_stderr(writer, "waiting up to 60 s for a reader");

        Process& stranger = group.start("reader as nobody", chapter.reader("5"), Stdin::kNull, *nobody);
        group.wait(stranger);
        INFO("reader as nobody stderr:\n" << stranger.err);
        CHECK(stranger.exit_code() == 1);
        CHECK_THAT(stranger.last_error_line(), contains("Permission denied"));
        CHECK(stranger.out.empty());

        Process& usurper = group.start("writer --force as nobody", chapter.writer("5", {"--force", "mine now"}),
                                       Stdin::kNull, *nobody);
        group.wait(usurper);
        INFO("writer as nobody stderr:\n" << usurper.err);
        CHECK(usurper.exit_code() == 1);
        CHECK_THAT(usurper.last_error_line(), contains("File exists: the semaphore set"));
        CHECK_THAT(usurper.last_error_line(), contains("belongs to uid 0 (root), another user"));

        REQUIRE_FALSE(writer.wait_status.has_value()); // still waiting
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(reader);
        group.wait(writer);
        CHECK(reader.out == "for root only\n");
        CHECK(writer.exit_code() == 0);
    }
    {
        // Objects another user made open to everyone (0666): reachable, but not this user's.
        PlayedWriter stranger(chapter.key, 0666);
        REQUIRE(::chmod(chapter.key.c_str(), 0644) == 0);
        ProcessGroup group;
        Process& reader = group.start("reader as nobody", chapter.reader("5"), Stdin::kNull, *nobody);
        group.wait(reader);
        INFO("reader as nobody stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("was created by uid 0, not by this user: refusing it"));
        CHECK(reader.out.empty());
        CHECK(::semctl(stranger.semid, sysv::kReaderSlot, GETVAL) == 1); // nothing claimed
    }
    ::unlink(chapter.key.c_str());
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a block length larger than the data area is refused", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        PlayedWriter writer(chapter.key);
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "claimed");
        writer.post_block(shmtut::kDefaultDataCapacity + 1, 1);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("block refused: length 65537 exceeds the data capacity 65536"));
        CHECK(reader.out.empty());
    }
    ::unlink(chapter.key.c_str());
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a writer that rewrites the header after the reader validated it cannot widen the data area",
          "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        PlayedWriter writer(chapter.key);
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "claimed"); // validated: data_capacity=65536
        // Now claim a data area of 1 MiB, break the magic, and hand over a block that fits only
        // the new claim. A reader that looked at the header again would read past the segment.
        writer.header->data_capacity.store(1 << 20);
        writer.header->magic.store(0);
        writer.post_block(100000, 1);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1); // not a signal
        CHECK_THAT(reader.last_error_line(), contains("block refused: length 100000 exceeds the data capacity 65536"));
        CHECK(reader.out.empty());
    }
    ::unlink(chapter.key.c_str());
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a reader killed while the writer waits for input is noticed there, and all is removed", "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    {
        ProcessGroup group;
        // --timeout 60 and stdin left open: only noticing the reader's death ends the writer.
        Process& writer = group.start("writer", chapter.writer("60"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("60"));
        group.feed(writer, "first line\n", false);
        // Narrated after the reader posted "block free": the writer, even if not scheduled yet,
        // takes that unit and goes on to wait at its stdin, where the input pauses.
        group.wait_for_stderr(reader, "block 1, 11 bytes");
        REQUIRE(reader.out == "first line\n");
        group.signal(reader, SIGKILL);
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader died while the writer waited for input"));
        CHECK_THAT(writer.err, contains("IPC_RMID) = 0 (cleaning up)"));
    }
    require_nothing_left(leaks, chapter);
}

TEST_CASE("01: a half-made semaphore set (its writer died before its first semop) is stale, not running",
          "[01]") {
    LeakCheck leaks;
    Chapter01 chapter;
    leaks.watch_path(chapter.key);
    write_file(chapter.key, "a key file the test made\n");
    key_t key = ::ftok(chapter.key.c_str(), sysv::kProjectId);
    REQUIRE(key != -1);
    // semget without SETALL or semop: sem_otime stays 0, as a writer killed between the two leaves it.
    int half_made = ::semget(key, sysv::kSemaphoreCount, IPC_CREAT | IPC_EXCL | 0600);
    REQUIRE(half_made != -1);
    {
        ProcessGroup group;
        Process& refused = group.start("writer", chapter.writer("5", {"refused"}));
        group.wait(refused);
        INFO("writer stderr:\n" << refused.err);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.last_error_line(), contains("no writer is running there"));
        CHECK(semaphore_set_exists(half_made));

        Process& forced = group.start("writer --force", chapter.writer("10", {"--force", "replaced"}));
        group.wait_for_stderr(forced, "waiting up to 10 s for a reader");
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(forced);
        group.wait(reader);
        INFO("forced writer stderr:\n" << forced.err);
        CHECK(reader.out == "replaced\n");
        CHECK(forced.exit_code() == 0);
        CHECK_FALSE(semaphore_set_exists(half_made));
    }
    REQUIRE(::unlink(chapter.key.c_str()) == 0);
    require_nothing_left(leaks, chapter);
}
