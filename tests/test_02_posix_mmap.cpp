/// @file tests/test_02_posix_mmap.cpp
/// @brief Chapter 02 end to end: the real writer and reader on a POSIX shared-memory object,
///        checked the way a learner would check them, and checked to leave nothing in /dev/shm.
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/futex.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../02-posix-mmap/protocol.hpp"
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

/// Plays a writer by hand, as a broken or hostile writer would: creates the object, holds the
/// writer's lock byte (so a reader takes it for a live writer), and publishes whatever header
/// and blocks the test wants, or shrinks the object.
class FakeWriter {
public:
    /// Creates `name` with `size` bytes, locks the writer's byte and maps it.
    FakeWriter(std::string name, std::size_t size) : name_(std::move(name)), size_(size) {
        fd_ = ::shm_open(name_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
        REQUIRE(fd_ != -1);
        REQUIRE(::ftruncate(fd_, static_cast<off_t>(size_)) == 0);
        struct flock lock = posix::lock_on(posix::kWriterLockByte);
        REQUIRE(::fcntl(fd_, F_OFD_SETLK, &lock) == 0);
        base_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        REQUIRE(base_ != MAP_FAILED);
    }
    FakeWriter(const FakeWriter&) = delete;
    FakeWriter& operator=(const FakeWriter&) = delete;
    ~FakeWriter() {
        ::munmap(base_, size_);
        ::close(fd_);
        ::shm_unlink(name_.c_str()); // ENOENT if a program under test removed it
    }

    shmtut::SharedHeader& header() { return *static_cast<shmtut::SharedHeader*>(base_); }
    posix::HandOff& hand_off() { return posix::hand_off_in(header()); }
    int fd() const { return fd_; }

    /// Initialises the semaphores as the writer does and publishes a header claiming
    /// `capacity`, with `magic` and `version` as given (the magic stored last).
    void publish(std::uint64_t capacity, std::uint32_t magic = shmtut::kHeaderMagic,
                 std::uint32_t version = shmtut::kLayoutVersion) {
        shmtut::SharedHeader* made = shmtut::construct_header(base_);
        auto* words = new (made->chapter_area) posix::HandOff{};
        REQUIRE(::sem_init(&words->block_ready, 1, 0) == 0);
        REQUIRE(::sem_init(&words->block_free, 1, 1) == 0);
        REQUIRE(::sem_init(&words->claimed, 1, 0) == 0);
        made->version.store(version);
        made->data_capacity.store(capacity);
        made->writer_pid.store(static_cast<std::uint32_t>(::getpid()));
        made->magic.store(magic, std::memory_order_release);
    }
    /// Publishes a block of `length` bytes (the data area is not touched) and posts block_ready.
    void post_block(std::uint64_t length, std::uint64_t sequence) {
        shmtut::publish_block(header(), length, sequence, false);
        REQUIRE(::sem_post(&hand_off().block_ready) == 0);
    }
    /// Truncates the object to `size` bytes under every mapping of it.
    void shrink(std::size_t size) { REQUIRE(::ftruncate(fd_, static_cast<off_t>(size)) == 0); }

private:
    std::string name_;
    std::size_t size_;
    int fd_ = -1;
    void* base_ = nullptr;
};

} // namespace

TEST_CASE("02: step 1, the bare pair carries its message and leaves nothing behind", "[02]") {
    LeakCheck leaks;
    leaks.watch_shm_name("/hello-02");
    {
        ProcessGroup group;
        Process& writer = group.start("hello_writer", {binary("02-posix-mmap/hello_writer")});
        group.wait_for_stderr(writer, "hello_writer: waiting for hello_reader");
        REQUIRE_FALSE(writer.wait_status.has_value());
        Process& reader = group.start("hello_reader", {binary("02-posix-mmap/hello_reader")});
        group.wait(reader);
        wait_for_waiter(group, writer, reader); // a failed reader never releases the writer
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "hello, shared memory\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
    }
    struct stat info {};
    CHECK(::stat("/dev/shm/hello-02", &info) == -1);
    check_nothing_left(leaks);
}

TEST_CASE("02: step 1, the notes quote the bare pair whole, exactly as it is in the files", "[02]") {
    auto text_of = [](const std::string& path) {
        std::ifstream in(path);
        std::stringstream content;
        content << in.rdbuf();
        return content.str();
    };
    const std::string chapter_dir = std::string(SHMTUT_SOURCE_DIR) + "/02-posix-mmap/";
    const std::string notes = text_of(chapter_dir + "README.md");
    REQUIRE_FALSE(notes.empty());
    for (const char* program : {"hello_writer.cpp", "hello_reader.cpp"}) {
        const std::string code = text_of(chapter_dir + program);
        INFO(program << " must appear whole in 02-posix-mmap/README.md, in a ```cpp block");
        REQUIRE_FALSE(code.empty());
        CHECK(notes.find("```cpp\n" + code + "```\n") != std::string::npos);
    }
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

TEST_CASE("02: a published header whose writer holds no lock is a dead writer's, whatever pid it names", "[02]") {
    // The header names this test process, alive, as its writer; but nothing holds the writer's
    // lock byte, as after a writer's death. A pid read from shared memory is a claim, never
    // proof: the reader believes the lock, reports the writer dead and removes its name.
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    plant_object(chapter.name, shmtut::kHeaderSize + 4096, 4096);
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("the writer died before the stream started"));
        CHECK_THAT(reader.err, contains("F_OFD_GETLK, byte 0): unlocked"));
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
        CHECK_THAT(reader.err, contains("its lock on byte 0 of the object is released"));
        CHECK(reader.out == data.substr(0, 65536));
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

TEST_CASE("02: a name planted by someone else makes the writer fail with EEXIST, and --force replaces it", "[02]") {
    // An object at the name that no writer made: a plain file put in /dev/shm.
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        std::ofstream planted(chapter.dev_shm_path());
        planted << "planted\n";
    }
    REQUIRE(chapter.exists());
    {
        ProcessGroup group;
        Process& refused = group.start("writer", chapter.writer("5", {"refused"}));
        group.wait(refused);
        INFO("writer stderr:\n" << refused.err);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.last_error_line(), contains("File exists: an object of this name exists that no running "
                                                       "writer holds"));
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

TEST_CASE("02: a stale object left by a killed writer is reported with the command that removes it, "
          "and --force replaces it", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& killed = group.start("killed writer", chapter.writer("30", {"lost"}));
        group.wait_for_stderr(killed, "waiting up to 30 s for a reader");
        group.signal(killed, SIGKILL);
        group.wait(killed);
        REQUIRE(chapter.exists()); // the stale object

        Process& refused = group.start("writer", chapter.writer("5", {"refused"}));
        group.wait(refused);
        INFO("writer stderr:\n" << refused.err);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.err, contains("F_OFD_GETLK, byte 0): unlocked: no writer holds it"));
        CHECK_THAT(refused.last_error_line(), contains("no running writer holds"));
        CHECK_THAT(refused.last_error_line(), contains("remove it with 'rm " + chapter.dev_shm_path() + "'"));
        REQUIRE(chapter.exists());

        Process& forced = group.start("forced writer", chapter.writer("10", {"--force", "replaced"}));
        group.wait_for_stderr(forced, "waiting up to 10 s for a reader");
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(forced);
        group.wait(reader);
        INFO("forced writer stderr:\n" << forced.err << "reader stderr:\n" << reader.err);
        CHECK(forced.exit_code() == 0);
        CHECK(reader.exit_code() == 0);
        CHECK(reader.out == "replaced\n");
    }
    CHECK_FALSE(chapter.exists());
    check_nothing_left(leaks);
}

TEST_CASE("02: a second writer on the name of a running writer is refused, with or without --force", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& first = group.start("writer A", chapter.writer("60", {"from A"}));
        group.wait_for_stderr(first, "waiting up to 60 s for a reader");
        for (const char* force : {"", "--force"}) {
            std::vector<std::string> extra;
            if (*force != '\0')
                extra.push_back(force);
            extra.push_back("from B");
            Process& second = group.start(std::string("writer B ") + force, chapter.writer("5", extra));
            group.wait(second);
            INFO("writer B " << force << " stderr:\n" << second.err);
            CHECK(second.exit_code() == 1);
            CHECK_THAT(second.last_error_line(), contains("a writer is running there"));
            CHECK(chapter.exists());
            CHECK_FALSE(first.wait_status.has_value()); // A still waits
        }
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(reader);
        group.wait(first);
        INFO("writer A stderr:\n" << first.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "from A\n");
        CHECK(reader.exit_code() == 0);
        CHECK(first.exit_code() == 0);
    }
    CHECK_FALSE(chapter.exists());
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

TEST_CASE("02: a later reader of an object kept with --keep is told the stream is over, not that the writer died",
          "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("10", {"--keep", "kept"}));
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(writer);
        group.wait(reader);
        REQUIRE(writer.exit_code() == 0);
        REQUIRE(reader.out == "kept\n");
        REQUIRE(chapter.exists());

        Process& later = group.start("later reader", chapter.reader("30"));
        group.wait(later);
        INFO("later reader stderr:\n" << later.err);
        CHECK(later.exit_code() == 1);
        CHECK_THAT(later.last_error_line(), contains("its writer finished and kept the object (--keep)"));
        CHECK_THAT(later.last_error_line(), contains("remove it with 'rm " + chapter.dev_shm_path() + "'"));
        CHECK_THAT(later.err, !contains("died"));
        CHECK(later.out.empty());
    }
    REQUIRE(chapter.exists()); // kept on purpose: not the later reader's to remove
    REQUIRE(::shm_unlink(chapter.name.c_str()) == 0);
    check_nothing_left(leaks);
}

TEST_CASE("02: a reader killed while the writer waits for input makes the writer fail and clean up", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        // A long --timeout: only noticing the death ends the writer's wait in time.
        Process& writer = group.start("writer", chapter.writer("600"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("600"));
        group.feed(writer, "first line\n", false); // then the input pauses, its pipe still open
        group.wait_for_stderr(reader, "block 1, 11 bytes"); // said after it freed the data area
        REQUIRE(reader.out == "first line\n");
        group.signal(reader, SIGKILL);
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader died while the writer waited for input"));
    }
    CHECK_FALSE(chapter.exists());
    check_nothing_left(leaks);
}

TEST_CASE("02: an object shrunk just before the reader's futex call makes it exit 1, not abort", "[02][sigbus]") {
    if (auto why = testsupport::emulator_cannot("ptrace: PTRACE_TRACEME fails with ENOSYS"); !why.empty())
        SKIP_TEST(why);
    // The gap the SIGBUS handler cannot see: glibc has looked at the semaphore and is about to
    // sleep in futex(2) on its address. The test stops the reader at that call's entry, shrinks
    // the object, and lets the call run: the kernel cannot find the page and answers EFAULT,
    // which glibc turns into abort(). The reader must still exit 1 with its own message.
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        FakeWriter hostile(chapter.name, shmtut::kHeaderSize + 4096);
        hostile.publish(4096);
        ProcessGroup group;
        Process& reader = group.start("reader", traced(chapter.reader("30")));
        // The reader's first futex wait is sem_clockwait on "block ready", after its claim.
        bool stopped = stop_at_syscall(reader, [](const SyscallEntry& call) {
            const unsigned long command = call.args[1] & FUTEX_CMD_MASK;
            return call.number == SYS_futex && (command == FUTEX_WAIT || command == FUTEX_WAIT_BITSET);
        });
        REQUIRE(stopped);
        hostile.shrink(0);
        resume_stopped(reader);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.killed_by() == 0);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("the object was shrunk under the reader"));
        CHECK(reader.out.empty());
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: an object shrunk under the reader makes it exit 1, not die of SIGBUS", "[02][sigbus]") {
    // qemu-arm (a 32-bit guest) kills the program on that SIGBUS instead of running its handler.
    if (sizeof(void*) == 4)
        if (auto why = testsupport::emulator_cannot("the SIGBUS of a shrunk file mapping for a 32-bit program (it "
                                                    "does not reach the handler)");
            !why.empty())
            SKIP_TEST(why);
    // The test plays a hostile writer: it holds the writer's lock, publishes a good header, lets
    // the reader claim the object, then truncates it. The reader's SIGBUS handler recovers.
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        FakeWriter hostile(chapter.name, shmtut::kHeaderSize + 4096);
        hostile.publish(4096);
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "claimed");
        REQUIRE_FALSE(reader.wait_status.has_value());
        SECTION("while the reader waits on a semaphore inside the header") {
            hostile.shrink(0);
        }
        SECTION("while the reader copies a block out of the data area") {
            hostile.shrink(shmtut::kHeaderSize); // the header stays, the data area goes
            hostile.post_block(4096, 1);
        }
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.killed_by() == 0);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("the object was shrunk under the reader"));
        CHECK(reader.out.empty());
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: a SIGBUS that is not a fault in the reader's mapping keeps its default action", "[02][sigbus]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        FakeWriter writer(chapter.name, shmtut::kHeaderSize + 4096);
        writer.publish(4096);
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "claimed");
        group.signal(reader, SIGBUS); // sent, not a fault: no address in the mapping
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.killed_by() == SIGBUS);
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: a header with the wrong magic or version is refused", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        FakeWriter writer(chapter.name, shmtut::kHeaderSize + 4096);
        std::string expected;
        SECTION("wrong magic") {
            writer.publish(4096, 0xdeadbeef);
            expected = "header refused: magic is 0xdeadbeef, expected 0x544d4853";
        }
        SECTION("wrong version") {
            writer.publish(4096, shmtut::kHeaderMagic, 99);
            expected = "header refused: layout version 99, this program reads version 1";
        }
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains(expected));
        CHECK(writer.hand_off().reader_pid.load() == 0); // refused before any claim
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: a block longer than the data area is refused, even when the writer rewrites the header after "
          "the reader validated it", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        FakeWriter hostile(chapter.name, shmtut::kHeaderSize + 4096);
        hostile.publish(4096);
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "claimed");
        std::string expected;
        SECTION("a block length beyond the capacity") {
            hostile.post_block(4097, 1);
            expected = "block refused: length 4097 exceeds the data capacity 4096";
        }
        SECTION("the capacity raised in the header after the reader validated it") {
            // A reader that read data_capacity again would accept the block and copy 64 KiB from
            // a 4 KiB data area. The reader uses its validated copy.
            hostile.header().data_capacity.store(1 << 20);
            hostile.post_block(65536, 1);
            expected = "block refused: length 65536 exceeds the data capacity 4096";
        }
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.killed_by() == 0);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains(expected));
        CHECK(reader.out.empty());
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: a symbolic link planted at the name is never followed and never removed through", "[02]") {
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    TempDir dir;
    const std::string target = dir.file("precious");
    {
        std::ofstream out(target);
        out << "precious\n";
    }
    REQUIRE(::symlink(target.c_str(), chapter.dev_shm_path().c_str()) == 0);
    {
        ProcessGroup group;
        for (const char* force : {"", "--force"}) {
            std::vector<std::string> extra;
            if (*force != '\0')
                extra.push_back(force);
            extra.push_back("hi");
            Process& writer = group.start(std::string("writer ") + force, chapter.writer("5", extra));
            group.wait(writer);
            INFO("writer " << force << " stderr:\n" << writer.err);
            CHECK(writer.exit_code() == 1);
            CHECK_THAT(writer.last_error_line(), contains("Too many levels of symbolic links: a symbolic link stands "
                                                          "at the name: it is never followed, and not removed"));
        }
        Process& reader = group.start("reader", chapter.reader("5"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("a symbolic link stands at the name: never followed"));
    }
    struct stat link_info {};
    CHECK(::lstat(chapter.dev_shm_path().c_str(), &link_info) == 0); // the link is still there
    CHECK(S_ISLNK(link_info.st_mode));
    std::stringstream content;
    {
        std::ifstream in(target);
        content << in.rdbuf();
    }
    CHECK(content.str() == "precious\n"); // what it points to is untouched
    REQUIRE(::unlink(chapter.dev_shm_path().c_str()) == 0);
    check_nothing_left(leaks);
}

TEST_CASE("02: another user's object is refused by the reader and by the writer, even with --force", "[02]") {
    std::optional<RunAs> other = unprivileged_ids();
    if (!other)
        SKIP_TEST("not root: cannot run a program as another user");
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        // This test (root) owns the object, a live writer's, readable and writable by all: only
        // the owner check stands between another user's programs and it.
        FakeWriter owner(chapter.name, shmtut::kHeaderSize + 4096);
        owner.publish(4096);
        REQUIRE(::fchmod(owner.fd(), 0666) == 0);
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("5"), Stdin::kNull, *other);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("refusing " + chapter.name + ": /dev/shm" + chapter.name +
                                                      " belongs to uid 0 (root), another user"));
        CHECK(owner.hand_off().reader_pid.load() == 0);
    }
    {
        // A stale object of root's (no writer holds it): --force must not touch it either.
        plant_object(chapter.name, shmtut::kHeaderSize + 4096, 4096);
        REQUIRE(::chmod(chapter.dev_shm_path().c_str(), 0666) == 0);
        ProcessGroup group;
        for (const char* force : {"", "--force"}) {
            std::vector<std::string> extra;
            if (*force != '\0')
                extra.push_back(force);
            extra.push_back("hi");
            Process& writer = group.start(std::string("writer ") + force, chapter.writer("5", extra), Stdin::kNull,
                                          *other);
            group.wait(writer);
            INFO("writer " << force << " stderr:\n" << writer.err);
            CHECK(writer.exit_code() == 1);
            CHECK_THAT(writer.last_error_line(), contains("is not ours to replace: /dev/shm" + chapter.name +
                                                          " belongs to uid 0 (root), another user"));
            CHECK(chapter.exists());
        }
        REQUIRE(::shm_unlink(chapter.name.c_str()) == 0);
    }
    check_nothing_left(leaks);
}

TEST_CASE("02: a full /dev/shm fails the writer at creation with ENOSPC, not with SIGBUS later", "[02]") {
    std::vector<std::string> argv = unshare_for({"--mount", "--propagation", "private"});
    if (argv.empty())
        SKIP_TEST("unshare --mount is not allowed here (not root, and no unprivileged user namespaces)");
    LeakCheck leaks;
    Chapter02 chapter;
    leaks.watch_shm_name(chapter.name);
    {
        ProcessGroup group;
        // In a private mount namespace, /dev/shm is a 64 KiB tmpfs; the object wants 1 MiB.
        for (const char* word : {"/bin/sh", "-c", "mount -t tmpfs -o size=64k tmpfs /dev/shm && exec \"$0\" \"$@\""})
            argv.push_back(word);
        for (const std::string& word : chapter.writer("5", {"--capacity", "1048576", "hello"}))
            argv.push_back(word);
        Process& writer = group.start("writer", argv);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.killed_by() == 0);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("posix_fallocate(fd="));
        CHECK_THAT(writer.last_error_line(), contains("No space left on device: the file system holding the object "
                                                      "is full: see df -h /dev/shm"));
        CHECK_THAT(writer.err, contains("(cleaning up)"));
    }
    check_nothing_left(leaks);
}
