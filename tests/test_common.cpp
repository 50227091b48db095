/// @file tests/test_common.cpp
/// @brief Tests of the common/ helpers: the header's validation, the owners, option parsing,
///        narration, the stop flag and pidfd liveness.
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catch.hpp"
#include "error.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "support.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

/// A header published the way a writer does it, in ordinary memory.
struct PublishedHeader {
    alignas(64) unsigned char bytes[kHeaderSize] = {};
    SharedHeader* header = construct_header(bytes);
    PublishedHeader() { publish_header(*header, 4096, 1234, 0); }
    HeaderSnapshot snapshot() const { return take_snapshot(*header); }
};

bool fd_is_open(int fd) {
    return ::fcntl(fd, F_GETFD) != -1;
}

bool address_is_mapped(void* address) {
    unsigned char residency;
    return ::mincore(address, 1, &residency) == 0; // ENOMEM: not mapped
}

/// argv from words, for parse_options.
struct Argv {
    std::vector<std::string> words;
    std::vector<char*> pointers;
    explicit Argv(std::vector<std::string> w) : words(std::move(w)) {
        for (std::string& word : words)
            pointers.push_back(word.data());
        pointers.push_back(nullptr);
    }
    int argc() const { return static_cast<int>(words.size()); }
    char** argv() { return pointers.data(); }
};

Options parse(std::vector<std::string> words, const OptionSpec& spec) {
    Argv args(std::move(words));
    return parse_options(args.argc(), args.argv(), spec);
}

OptionSpec writer_like_spec() {
    OptionSpec spec;
    spec.usage = "usage text\n";
    spec.default_name = "/default";
    spec.keep_and_force = true;
    spec.operands = true;
    return spec;
}

} // namespace

TEST_CASE("a header is not ready until published, then validates against the object's size", "[common][layout]") {
    alignas(64) unsigned char bytes[kHeaderSize] = {};
    SharedHeader* header = construct_header(bytes);
    CHECK_FALSE(header_ready(*header));
    publish_header(*header, 4096, 1234, 1);
    REQUIRE(header_ready(*header));
    HeaderSnapshot copy = take_snapshot(*header);
    CHECK(copy.magic == kHeaderMagic);
    CHECK(copy.version == kLayoutVersion);
    CHECK(copy.data_capacity == 4096);
    CHECK(copy.writer_pid == 1234);
    CHECK(copy.flags == 1);
    CHECK_NOTHROW(validate_header(copy, kHeaderSize + 4096));
    // The magic is "SHMT" as bytes in memory: what xxd shows and another language checks.
    CHECK(std::memcmp(bytes, "SHMT", 4) == 0);
}

TEST_CASE("validation refuses a wrong magic, a wrong version and a capacity that does not fit", "[common][layout]") {
    PublishedHeader published;
    HeaderSnapshot copy = published.snapshot();
    const std::uint64_t object_size = kHeaderSize + 4096;

    SECTION("wrong magic") {
        copy.magic = 0xdeadbeef;
        CHECK_THROWS_WITH(validate_header(copy, object_size), contains("magic"));
    }
    SECTION("wrong version") {
        copy.version = kLayoutVersion + 1;
        CHECK_THROWS_WITH(validate_header(copy, object_size), contains("version"));
    }
    SECTION("capacity one byte larger than the object") {
        copy.data_capacity = 4097;
        CHECK_THROWS_AS(validate_header(copy, object_size), LayoutError);
    }
    SECTION("capacity so large that header + capacity would overflow") {
        copy.data_capacity = std::numeric_limits<std::uint64_t>::max() - kHeaderSize + 1;
        CHECK_THROWS_AS(validate_header(copy, object_size), LayoutError);
    }
    SECTION("capacity 0") {
        copy.data_capacity = 0;
        CHECK_THROWS_AS(validate_header(copy, object_size), LayoutError);
    }
    SECTION("an object smaller than the header") {
        CHECK_THROWS_WITH(validate_header(copy, kHeaderSize - 1), contains("header"));
    }
}

TEST_CASE("a block validates against the capacity checked earlier and the expected sequence", "[common][layout]") {
    PublishedHeader published;
    publish_block(*published.header, 4096, 1, false);
    HeaderSnapshot block = published.snapshot();
    CHECK_NOTHROW(validate_block(block, 4096, 1));
    CHECK_THROWS_WITH(validate_block(block, 4095, 1), contains("length"));
    CHECK_THROWS_WITH(validate_block(block, 4096, 2), contains("sequence"));

    publish_block(*published.header, 0, 2, true);
    block = published.snapshot();
    CHECK(block.end_of_stream == 1);
    CHECK_NOTHROW(validate_block(block, 4096, 2));
    block.end_of_stream = 7;
    CHECK_THROWS_WITH(validate_block(block, 4096, 2), contains("end-of-stream"));
}

TEST_CASE("UniqueFd closes its descriptor exactly once, and a move transfers it", "[common][owners]") {
    int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    REQUIRE(fd != -1);
    {
        UniqueFd owner(fd);
        CHECK(owner.get() == fd);
        UniqueFd moved(std::move(owner));
        CHECK_FALSE(owner);
        CHECK(moved.get() == fd);
        CHECK(fd_is_open(fd));
    }
    CHECK_FALSE(fd_is_open(fd));

    int kept = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    REQUIRE(kept != -1);
    {
        UniqueFd owner(kept);
        CHECK(owner.release() == kept);
    }
    CHECK(fd_is_open(kept)); // released: not the owner's to close
    ::close(kept);

    int first = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    int second = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    {
        UniqueFd owner(first);
        owner.reset(second); // closes the first, adopts the second
        CHECK_FALSE(fd_is_open(first));
        CHECK(fd_is_open(second));
    }
    CHECK_FALSE(fd_is_open(second));
}

TEST_CASE("Mapping unmaps exactly once, and a move transfers it", "[common][owners]") {
    const std::size_t length = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    void* address = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(address != MAP_FAILED);
    {
        Mapping owner(address, length);
        Mapping moved;
        moved = std::move(owner);
        CHECK_FALSE(owner);
        CHECK(moved.get() == address);
        CHECK(moved.size() == length);
        CHECK(address_is_mapped(address));
    }
    CHECK_FALSE(address_is_mapped(address));
}

TEST_CASE("ShmAttachment detaches a System V segment exactly once", "[common][owners]") {
    testsupport::LeakCheck leaks;
    int shmid = ::shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
    REQUIRE(shmid != -1);
    auto attachments = [shmid] {
        shmid_ds info{};
        REQUIRE(::shmctl(shmid, IPC_STAT, &info) == 0);
        return info.shm_nattch;
    };
    void* address = ::shmat(shmid, nullptr, 0);
    REQUIRE(address != reinterpret_cast<void*>(-1));
    {
        ShmAttachment owner(address);
        ShmAttachment moved(std::move(owner));
        CHECK(attachments() == 1);
    }
    CHECK(attachments() == 0);
    REQUIRE(::shmctl(shmid, IPC_RMID, nullptr) == 0);
    CHECK(leaks.left_behind().empty());
}

TEST_CASE("the shared options parse, with defaults, both value forms and operands", "[common][options]") {
    OptionSpec spec = writer_like_spec();
    Options defaults = parse({"writer"}, spec);
    CHECK(defaults.name == "/default");
    CHECK(defaults.timeout_seconds == 60.0);
    CHECK_FALSE(defaults.quiet);
    CHECK(defaults.operands.empty());

    Options given = parse({"writer", "--name", "/x", "--timeout=2.5", "--quiet", "--keep", "hello", "--", "--force"}, spec);
    CHECK(given.name == "/x");
    CHECK(given.timeout_seconds == 2.5);
    CHECK(given.quiet);
    CHECK(given.keep);
    CHECK_FALSE(given.force);
    CHECK(given.operands == std::vector<std::string>{"hello", "--force"}); // after "--", words are operands

    int fd_value = -1;
    spec.extra.push_back({"--fd", true, [&](const std::string& v) { fd_value = std::stoi(v); }});
    CHECK(parse({"reader", "--fd", "3"}, spec).operands.empty());
    CHECK(fd_value == 3);
}

TEST_CASE("bad command lines are usage errors", "[common][options]") {
    OptionSpec writer = writer_like_spec();
    OptionSpec reader;
    reader.default_name = "/default";
    CHECK_THROWS_AS(parse({"writer", "--bogus"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "--timeout"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "--timeout", "abc"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "--timeout", "0"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "--timeout", "-1"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "--timeout", "1e9"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "--timeout", "nan"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "--quiet=yes"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "--name", ""}, writer), UsageError);
    CHECK_THROWS_AS(parse({"writer", "-x"}, writer), UsageError);
    CHECK_THROWS_AS(parse({"reader", "extra"}, reader), UsageError);
    CHECK_THROWS_AS(parse({"reader", "--keep"}, reader), UsageError);
    CHECK_THROWS_AS(parse({"reader", "--force"}, reader), UsageError);
}

TEST_CASE("a usage error names the option and what is wrong with it", "[common][options]") {
    OptionSpec writer = writer_like_spec();
    bool snapshot = false;
    writer.extra.push_back({"--snapshot", false, [&](const std::string&) { snapshot = true; }});
    writer.extra.push_back({"--fd", true, [](const std::string&) {}});
    OptionSpec reader;
    reader.default_name = "/default";
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"writer", "--bogus"}, "unknown option '--bogus'"},
        {{"writer", "--bogus=1"}, "unknown option '--bogus'"},
        {{"writer", "-x"}, "unknown option '-x'"},
        {{"writer", "--timeout"}, "--timeout needs a value"},
        {{"writer", "--fd"}, "--fd needs a value"},
        {{"writer", "--timeout", "abc"}, "--timeout wants a number of seconds above 0 and at most 86400, not 'abc'"},
        {{"writer", "--timeout=0"}, "--timeout wants a number of seconds above 0 and at most 86400, not '0'"},
        {{"writer", "--quiet=yes"}, "--quiet takes no value"},
        {{"writer", "--snapshot=yes"}, "--snapshot takes no value"},
        {{"writer", "--help=yes"}, "--help takes no value"},
        {{"writer", "--name", ""}, "--name must not be empty"},
        {{"writer", "--name="}, "--name must not be empty"},
        {{"reader", "extra"}, "unexpected argument 'extra'"},
        {{"reader", "extra", "--bogus"}, "unexpected argument 'extra'"}, // the first mistake, in order
        {{"reader", "--keep"}, "unknown option '--keep'"},
        {{"reader", "--", "--keep"}, "unexpected argument '--keep'"},
    };
    for (const auto& [words, message] : cases) {
        INFO("command line: " << words[1] << (words.size() > 2 ? " " + words[2] : std::string()));
        CHECK_THROWS_WITH(parse(words, words[0] == "writer" ? writer : reader), message);
    }
    // Operands and options in any order, "-" is an operand, "--" ends the options; each parse
    // starts afresh (getopt_long keeps its state in globals).
    Options mixed = parse({"writer", "hello", "--snapshot", "-", "--", "--quiet"}, writer);
    CHECK(mixed.operands == std::vector<std::string>{"hello", "-", "--quiet"});
    CHECK_FALSE(mixed.quiet);
    CHECK(snapshot);
}

TEST_CASE("run_main maps each kind of failure to its exit status", "[common][error]") {
    // run_main prints the error line to stderr; send it to /dev/null inside a child.
    auto status_of = [](std::function<int()> body) {
        int status = testsupport::in_child([&] {
            int null_fd = ::open("/dev/null", O_WRONLY);
            ::dup2(null_fd, STDERR_FILENO);
            return run_main("test", body);
        });
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    };
    CHECK(status_of([] { return 0; }) == kExitSuccess);
    CHECK(status_of([]() -> int { throw UsageError("bad"); }) == kExitUsage);
    CHECK(status_of([]() -> int { throw Unsupported("no device"); }) == kExitUnsupported);
    CHECK(status_of([]() -> int { throw Failure("broken"); }) == kExitFailure);
    CHECK(status_of([]() -> int {
              errno = ENOENT;
              throw_errno("shm_open(\"/x\")", "is the writer running?");
          }) == kExitFailure);
}

TEST_CASE("a SysError names the call, the system's error text and the hint", "[common][error]") {
    try {
        throw_error(ENOENT, "shm_open(\"/x\")", "start the writer");
    } catch (const SysError& e) {
        CHECK(std::string(e.what()) == "shm_open(\"/x\"): No such file or directory");
        CHECK(e.code().value() == ENOENT);
        CHECK(e.hint() == "start the writer");
    }
}

TEST_CASE("narration is one 'role: text' line on stderr, and nothing when quiet", "[common][narrate]") {
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    int saved_stderr = ::dup(STDERR_FILENO);
    ::dup2(pipe_fds[1], STDERR_FILENO);
    Narrator("writer").say("shmget(key=0x%08x) = %d", 0x5301u, 7);
    Narrator("reader", true).say("not shown");
    ::dup2(saved_stderr, STDERR_FILENO);
    ::close(saved_stderr);
    ::close(pipe_fds[1]);
    char text[256] = {};
    ssize_t n = ::read(pipe_fds[0], text, sizeof text - 1);
    ::close(pipe_fds[0]);
    CHECK(std::string(text, n > 0 ? static_cast<std::size_t>(n) : 0) == "writer: shmget(key=0x00005301) = 7\n");
}

TEST_CASE("SIGTERM sets the stop flag and interrupts a blocking call instead of restarting it", "[common][wait]") {
    int status = testsupport::in_child([] {
        install_stop_handlers();
        struct sigaction installed {};
        ::sigaction(SIGTERM, nullptr, &installed);
        if ((installed.sa_flags & SA_RESTART) != 0)
            return 10;
        // A blocking read on an empty pipe; SIGTERM after a moment must end it with EINTR.
        int fds[2];
        if (::pipe(fds) != 0)
            return 11;
        // A helper process sends SIGTERM every 50 ms until this child is gone: the first one may
        // arrive before read() blocks; a later one then interrupts it. Through a pidfd, so that a
        // pid reused after this child's end is never signalled.
        UniqueFd self = open_pidfd(::getpid());
        if (::fork() == 0) {
            while (::syscall(SYS_pidfd_send_signal, self.get(), SIGTERM, nullptr, 0) == 0)
                ::usleep(50000);
            ::_exit(0);
        }
        char byte;
        ssize_t n = ::read(fds[0], &byte, 1);
        if (n != -1 || errno != EINTR)
            return 12;
        if (stop_signal() != SIGTERM)
            return 13;
        try {
            throw_if_stopped();
        } catch (const Interrupted& e) {
            return std::string(e.what()) == "interrupted by SIGTERM" ? 0 : 14;
        }
        return 15;
    });
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a pidfd tells a dead process from a live one, where kill(pid, 0) cannot", "[common][wait]") {
    pid_t child = ::fork();
    REQUIRE(child != -1);
    if (child == 0) {
        ::pause();
        ::_exit(0);
    }
    UniqueFd pidfd = open_pidfd(child);
    CHECK_FALSE(process_exited(pidfd));
    REQUIRE(::kill(child, SIGKILL) == 0);
    CHECK(process_exited(pidfd, std::chrono::milliseconds(10000)));
    // Not reaped yet: a zombie. kill(pid, 0) still "succeeds", which is why it is no liveness test.
    CHECK(::kill(child, 0) == 0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
}

TEST_CASE("a deadline expires, and its slices never exceed the time left or the cap", "[common][wait]") {
    Deadline soon(0.001);
    pause_briefly(std::chrono::milliseconds(20));
    CHECK(soon.expired());
    CHECK(soon.remaining() == std::chrono::nanoseconds(0));
    timespec none = soon.slice();
    CHECK((none.tv_sec == 0 && none.tv_nsec == 0));

    Deadline later(3600);
    CHECK_FALSE(later.expired());
    timespec capped = later.slice(std::chrono::seconds(1));
    CHECK((capped.tv_sec == 1 && capped.tv_nsec == 0));
    CHECK(seconds_text(0.5) == "0.5 s");
}

namespace {

/// What a process outside the test leaves while a case runs: a segment, a semaphore set it has
/// used, and a /dev/shm entry, made by a child that the test support does not know of.
struct ForeignObjects {
    int segment = -1;
    int semaphores = -1;
    std::string shm_name = "/" + testsupport::unique_name("shmtut-foreign");

    ForeignObjects() {
        pid_t child = ::fork(); // deliberately not in_child(): a process the test did not start
        REQUIRE(child != -1);
        if (child == 0) {
            int segment_id = ::shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
            int set_id = ::semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
            sembuf up{0, 1, 0};
            int fd = ::shm_open(shm_name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
            bool made = segment_id != -1 && set_id != -1 && ::semop(set_id, &up, 1) == 0 && fd != -1;
            int ids[2] = {segment_id, set_id};
            // The ids go back to the parent in the /dev/shm object itself.
            ::_exit(made && ::write(fd, ids, sizeof ids) == static_cast<ssize_t>(sizeof ids) ? 0 : 1);
        }
        int status = 0;
        REQUIRE(::waitpid(child, &status, 0) == child);
        REQUIRE(WIFEXITED(status));
        REQUIRE(WEXITSTATUS(status) == 0);
        int ids[2] = {-1, -1};
        int in = ::shm_open(shm_name.c_str(), O_RDONLY, 0);
        REQUIRE(in != -1);
        REQUIRE(::read(in, ids, sizeof ids) == static_cast<ssize_t>(sizeof ids));
        ::close(in);
        segment = ids[0];
        semaphores = ids[1];
    }
    ~ForeignObjects() {
        ::shmctl(segment, IPC_RMID, nullptr);
        ::semctl(semaphores, 0, IPC_RMID);
        ::shm_unlink(shm_name.c_str());
    }
};

} // namespace

TEST_CASE("a leak check ignores what another process creates meanwhile", "[common][support]") {
    testsupport::LeakCheck leaks;
    testsupport::TempDir dir;
    leaks.watch_shm_name("/" + testsupport::unique_name("shmtut-mine")).watch_path(dir.file("sock"));
    ForeignObjects foreign;
    std::vector<std::string> left = leaks.left_behind();
    for (const std::string& object : left)
        UNSCOPED_INFO("reported: " << object);
    CHECK(left.empty());
}

TEST_CASE("a leak check reports the test's own objects, descriptors and files", "[common][support]") {
    testsupport::LeakCheck leaks;
    testsupport::TempDir dir;
    const std::string shm_name = "/" + testsupport::unique_name("shmtut-mine");
    const std::string key_file = dir.file("key");
    leaks.watch_shm_name(shm_name).watch_path(key_file).watch_path(dir.file("sock"));
    // A key file made by a program and removed again: a set created under its key by a process
    // the test does not know is still the test's.
    int key_fd = ::open(key_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    REQUIRE(key_fd != -1);
    ::close(key_fd);
    key_t key = ::ftok(key_file.c_str(), 'Z');
    REQUIRE(key != -1);
    ForeignObjects foreign; // present throughout: must not be reported
    int keyed_set = ::semget(key, 1, IPC_CREAT | IPC_EXCL | 0600);
    REQUIRE(keyed_set != -1);
    leaks.note_keys(); // what ProcessGroup does while it waits
    REQUIRE(::unlink(key_file.c_str()) == 0);
    // A segment made by a child the test started, with in_child().
    int segment = -1;
    int pipe_fds[2];
    REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0); // also a descriptor left open
    int status = testsupport::in_child([&] {
        int id = ::shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
        return ::write(pipe_fds[1], &id, sizeof id) == static_cast<ssize_t>(sizeof id) ? 0 : 1;
    });
    REQUIRE(WIFEXITED(status));
    REQUIRE(::read(pipe_fds[0], &segment, sizeof segment) == static_cast<ssize_t>(sizeof segment));
    int shm_fd = ::shm_open((shm_name + "-extra").c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    REQUIRE(shm_fd != -1);
    ::close(shm_fd);
    int socket_file = ::open(dir.file("sock").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    REQUIRE(socket_file != -1);
    ::close(socket_file);

    std::vector<std::string> left = leaks.left_behind();
    std::string all;
    for (const std::string& object : left)
        all += object + "\n";
    INFO(all);
    CHECK_THAT(all, contains("System V sem key=") && contains(" id=" + std::to_string(keyed_set) + "\n"));
    CHECK_THAT(all, contains("System V shm key=0x00000000 id=" + std::to_string(segment) + "\n"));
    CHECK_THAT(all, contains("/dev/shm entry /dev/shm" + shm_name + "-extra\n"));
    CHECK_THAT(all, contains("file " + dir.file("sock") + "\n"));
    CHECK_THAT(all, contains("open descriptor " + std::to_string(pipe_fds[0]) + " -> pipe:"));
    CHECK(left.size() == 6); // and nothing of the foreign process
    ::semctl(keyed_set, 0, IPC_RMID);
    ::shmctl(segment, IPC_RMID, nullptr);
    ::shm_unlink((shm_name + "-extra").c_str());
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    CHECK(leaks.left_behind() == std::vector<std::string>{"file " + dir.file("sock")});
}

namespace {

/// Runs scripts/run-tests on a stand-in for the Catch2 runner: a shell script that lists
/// `names` when asked, writes `result_log` lines to $SHMTUT_RESULT_LOG as the real runner's
/// listener does, prints `catch_summary` as Catch2 would, and exits with `exit_status`.
/// Returns the summary's last line.
std::string summary_of(const std::string& names, const std::string& result_log, const std::string& catch_summary,
                       int exit_status) {
    testsupport::TempDir dir;
    const std::string runner = dir.file("runner");
    {
        std::ofstream script(runner);
        script << "#!/bin/bash\n"
               << "if [ \"$1\" = --list-test-names-only ]; then printf '%s' '" << names << "'; exit 0; fi\n"
               << "printf '" << result_log << "' >> \"$SHMTUT_RESULT_LOG\"\n"
               << "printf '%s\\n' '" << catch_summary << "'\n"
               << (exit_status > 128 ? "kill -" + std::to_string(exit_status - 128) + " $$\n"
                                     : "exit " + std::to_string(exit_status) + "\n");
    }
    REQUIRE(::chmod(runner.c_str(), 0700) == 0);
    testsupport::ProcessGroup group;
    testsupport::Process& run =
        group.start("run-tests", {"/usr/bin/env", "-u", "SHMTUT_CASE_RESULTS", "/bin/bash",
                                 std::string(SHMTUT_SOURCE_DIR) + "/scripts/run-tests", runner});
    group.wait(run);
    INFO("run-tests printed:\n" << run.out << run.err);
    std::string last = run.out.substr(run.out.rfind('\n', run.out.size() - 2) + 1);
    return last.substr(0, last.size() - 1);
}

} // namespace

TEST_CASE("make test counts a skipped case as skipped and a crash as a failure", "[common][support]") {
    const std::string names = "a\nb\nc\n";
    SECTION("a skip is not a pass, and a case that skipped after failing is failed") {
        CHECK(summary_of(names, "start\\ta\\nend\\ta\\t0\\nstart\\tb\\nskip\\tb\\tno device\\nend\\tb\\t0\\n"
                                "start\\tc\\nskip\\tc\\tno root\\nend\\tc\\t1\\n",
                         "test cases: 3 | 2 passed | 1 failed", 1) == "1 passed, 1 failed, 1 skipped");
    }
    SECTION("the case the runner died in, and the cases it never reached, are failed") {
        CHECK(summary_of(names, "start\\ta\\nend\\ta\\t0\\nstart\\tb\\n", "", 128 + SIGKILL) ==
              "1 passed, 2 failed, 0 skipped");
    }
    SECTION("a runner that fails after every case passed is one failure") {
        CHECK(summary_of(names, "start\\ta\\nend\\ta\\t0\\nstart\\tb\\nend\\tb\\t0\\nstart\\tc\\nend\\tc\\t0\\n",
                         "All tests passed (3 assertions in 3 test cases)", 1) == "3 passed, 1 failed, 0 skipped");
    }
    SECTION("a filter that matches nothing fails") {
        CHECK(summary_of("", "", "No test cases matched", 2) == "0 passed, 1 failed, 0 skipped");
    }
}
