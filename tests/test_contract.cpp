/// @file tests/test_contract.cpp
/// @brief The contract every chapter's pair keeps (DESIGN.md, "The programs' contract"), written
///        once and run for every chapter: a table of chapters (how to start the pair, its names,
///        what a corrupted header looks like for it) drives the same cases.
///
/// Each chapter still reports its own cases: CONTRACT_CASES("01", kSysv) defines
/// "01: contract: a message arrives exactly" and the rest, tagged [01][contract], so that
/// `make test TESTS='[01]'` selects them with the chapter's own tests. A new chapter joins by
/// adding its row and one CONTRACT_CASES line (and CONTRACT_NAMED_CASES where the reader finds the
/// writer by a name). What is particular to a technique (seals, MSG_CTRUNC, sem_otime...) stays in
/// the chapter's own test file.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catch.hpp"
#include "layout.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

/// Where one case's pair meets: the `--name` arguments (none for chapter 03, whose memfd has
/// none) in a private place, registered with the case's leak check.
struct Place {
    std::unique_ptr<TempDir> dir;        ///< holds key files and socket files, or null
    std::string name;                    ///< the key path, object name or socket path
    std::vector<std::string> name_args;  ///< {"--name", name}, or empty
};

/// One row of the table: a chapter's pair and what its faults look like.
struct Chapter {
    const char* folder;                                  ///< "01-sysv": the programs are folder/writer, folder/reader
    Place (*make_place)(LeakCheck& leaks);               ///< a private place for one case
    /// The reader's command line. Named chapters ignore `writer`; chapter 03 reads the command
    /// the writer printed (its pid and descriptor number).
    std::vector<std::string> (*reader_for)(const Chapter& chapter, const Place& place, const Process* writer,
                                           const std::string& timeout, std::vector<std::string> extra);
    const char* writer_waits;      ///< what the writer prints once a reader can start
    const char* no_writer;         ///< what a reader alone says in its one error line
    const char* writer_died;       ///< what the reader says when the writer is killed mid-stream
    const char* reader_died;       ///< what the writer says when the reader is killed
    const char* second_reader;     ///< what a second reader of the same writer is told
    const char* stale;             ///< what a writer meeting a crashed writer's objects says (named chapters)
    /// Plays a faulty writer: changes the header of the live `writer`'s shared memory in place.
    /// Null where the test cannot reach the memory (a dma-buf cannot be opened again by path).
    void (*corrupt_header)(const Place& place, const Process& writer, void (*change)(shmtut::SharedHeader&));
    /// Why the chapter cannot run here (empty: it can): a missing device, for example.
    std::string (*unavailable)();
    /// Phrases of the taught calls that the writer and the reader narrate on standard error
    /// while a message travels: the lesson seen happening (checked by message_arrives()).
    std::vector<std::string> writer_narrates = {};
    std::vector<std::string> reader_narrates = {};
};

std::vector<std::string> writer_command(const Chapter& chapter, const Place& place, const std::string& timeout,
                                        std::vector<std::string> extra = {}) {
    return command(std::string(chapter.folder) + "/writer", place.name_args, timeout, extra);
}

std::vector<std::string> named_reader(const Chapter& chapter, const Place& place, const Process*,
                                      const std::string& timeout, std::vector<std::string> extra) {
    return command(std::string(chapter.folder) + "/reader", place.name_args, timeout, extra);
}

/// Chapter 03: the reader command the writer printed ("build/03-memfd/reader --pid P --fd N").
std::vector<std::string> printed_reader(const Chapter& chapter, const Place&, const Process* writer,
                                        const std::string& timeout, std::vector<std::string> extra) {
    REQUIRE(writer != nullptr);
    std::string::size_type at = writer->err.find("reader --pid ");
    REQUIRE(at != std::string::npos);
    int pid = 0, fd = -1;
    REQUIRE(std::sscanf(writer->err.c_str() + at, "reader --pid %d --fd %d", &pid, &fd) == 2);
    std::vector<std::string> argv = {binary(std::string(chapter.folder) + "/reader"), "--pid", std::to_string(pid),
                                     "--fd", std::to_string(fd), "--timeout", timeout};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

Place key_file_place(LeakCheck& leaks) {
    Place place{std::make_unique<TempDir>(), "", {}};
    place.name = place.dir->file("key");
    place.name_args = {"--name", place.name};
    leaks.watch_path(place.name);
    return place;
}

Place shm_name_place(LeakCheck& leaks) {
    Place place{nullptr, "/" + unique_name("shmtut-contract"), {}};
    place.name_args = {"--name", place.name};
    leaks.watch_shm_name(place.name);
    return place;
}

Place socket_place(LeakCheck& leaks) {
    Place place{std::make_unique<TempDir>(), "", {}};
    place.name = place.dir->file("sock");
    place.name_args = {"--name", place.name};
    leaks.watch_path(place.name);
    return place;
}

Place no_place(LeakCheck&) {
    return {};
}

/// Maps `length` bytes of `fd` read-write, applies `change` to the header, unmaps.
void change_header_through(int fd, void (*change)(shmtut::SharedHeader&)) {
    void* base = ::mmap(nullptr, shmtut::kHeaderSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    REQUIRE(base != MAP_FAILED);
    change(*static_cast<shmtut::SharedHeader*>(base));
    REQUIRE(::munmap(base, shmtut::kHeaderSize) == 0);
}

/// Chapter 01: the segment under the key of the key file (project id 'S', as 01-sysv/protocol.hpp
/// says), attached read-write.
void corrupt_sysv(const Place& place, const Process&, void (*change)(shmtut::SharedHeader&)) {
    key_t key = ::ftok(place.name.c_str(), 'S');
    REQUIRE(key != -1);
    int shmid = ::shmget(key, 0, 0);
    REQUIRE(shmid != -1);
    void* base = ::shmat(shmid, nullptr, 0);
    REQUIRE(base != reinterpret_cast<void*>(-1));
    change(*static_cast<shmtut::SharedHeader*>(base));
    REQUIRE(::shmdt(base) == 0);
}

/// Chapter 02: the object by its name.
void corrupt_posix(const Place& place, const Process&, void (*change)(shmtut::SharedHeader&)) {
    int fd = ::shm_open(place.name.c_str(), O_RDWR, 0);
    REQUIRE(fd != -1);
    change_header_through(fd, change);
    ::close(fd);
}

/// Chapters 03 and 04: the writer's memfd, opened again through /proc/PID/fd/N (the test runs
/// as the writer's user, or as root).
void corrupt_memfd(const Place&, const Process& writer, void (*change)(shmtut::SharedHeader&)) {
    const std::string fd_dir = "/proc/" + std::to_string(writer.pid) + "/fd";
    DIR* dir = ::opendir(fd_dir.c_str());
    REQUIRE(dir != nullptr);
    std::string memfd_path;
    while (dirent* entry = ::readdir(dir)) {
        char target[256] = {};
        std::string link = fd_dir + "/" + entry->d_name;
        if (::readlink(link.c_str(), target, sizeof target - 1) > 0 && std::strncmp(target, "/memfd:", 7) == 0)
            memfd_path = link;
    }
    ::closedir(dir);
    REQUIRE_FALSE(memfd_path.empty());
    int fd = ::open(memfd_path.c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(fd != -1);
    change_header_through(fd, change);
    ::close(fd);
}

std::string always_available() {
    return {};
}

std::string dma_buf_unavailable() {
    if (::access("/dev/dma_heap/system", R_OK | W_OK) == 0 || ::access("/dev/udmabuf", R_OK | W_OK) == 0)
        return {};
    return "no usable /dev/dma_heap/system or /dev/udmabuf on this machine; make vm-05 runs chapter 05 in a "
           "virtual machine";
}

// The table. Phrases are the parts of each program's messages that say what happened.
const Chapter kSysv = {
    .folder = "01-sysv", .make_place = key_file_place, .reader_for = named_reader,
    .writer_waits = "waiting up to", .no_writer = "is the writer running? start it first",
    .writer_died = "died before the end of the stream", .reader_died = "the reader died",
    .second_reader = "has already claimed this writer's segment", .stale = "remove them with 'ipcrm -M 0x",
    .corrupt_header = corrupt_sysv, .unavailable = always_available,
    .writer_narrates = {"writer: semget(key=0x", "IPC_CREAT|IPC_EXCL|0600) = ", "writer: shmctl(shmid=",
                        "IPC_RMID) = 0: marked for removal"},
    .reader_narrates = {"reader: shmat(shmid=", "SHM_RDONLY"}};
// Chapter 02's writer removes the name once a reader has claimed the object (open, then unlink),
// so a second reader finds no name at all.
const Chapter kPosix = {
    .folder = "02-posix-mmap", .make_place = shm_name_place, .reader_for = named_reader,
    .writer_waits = "waiting up to", .no_writer = "is the writer running? start it first",
    .writer_died = "died before the end of the stream", .reader_died = "the reader died",
    .second_reader = "No such file or directory", .stale = "remove it with 'rm /dev/shm/",
    .corrupt_header = corrupt_posix, .unavailable = always_available,
    .writer_narrates = {", O_RDWR|O_CREAT|O_EXCL, 0600) = ", "writer: ftruncate(fd=",
                        "PROT_READ|PROT_WRITE, MAP_SHARED", "\") = 0: the name is gone"},
    .reader_narrates = {"reader: fstat(fd=", "claimed"}};
// Chapter 03's memfd has no name: the reader uses the pid and descriptor the writer prints.
const Chapter kMemfd = {
    .folder = "03-memfd", .make_place = no_place, .reader_for = printed_reader,
    .writer_waits = "reader --pid ", .no_writer = "start the writer first",
    .writer_died = "died before the end of the stream", .reader_died = "the reader died",
    .second_reader = "has already claimed this memory", .stale = nullptr,
    .corrupt_header = corrupt_memfd, .unavailable = always_available};
const Chapter kFdPassing = {
    .folder = "04-fd-passing", .make_place = socket_place, .reader_for = named_reader,
    .writer_waits = "waiting up to", .no_writer = "is the writer running?",
    .writer_died = "died before the end of the stream", .reader_died = "the reader closed the connection",
    .second_reader = "already", .stale = "remove it with: rm ",
    .corrupt_header = corrupt_memfd, .unavailable = always_available,
    .writer_narrates = {"SO_PEERCRED): pid=", "HELLO from pid", "MEMORY + SCM_RIGHTS"},
    .reader_narrates = {"send(fd=3, HELLO) = 16", "1 descriptor (SCM_RIGHTS), no MSG_CTRUNC",
                        "-> /memfd:shm-tutorial-04 (deleted)"}};
// Chapter 05's dma-buf cannot be opened again through /proc/PID/fd: no corrupted-header case.
const Chapter kDmaBuf = {
    .folder = "05-dma-buf", .make_place = socket_place, .reader_for = named_reader,
    .writer_waits = "waiting up to", .no_writer = "is the writer running?",
    .writer_died = "died before the end of the stream", .reader_died = "the reader closed the connection",
    .second_reader = "already", .stale = "--force",
    .corrupt_header = nullptr, .unavailable = dma_buf_unavailable};
// Chapter 06's writer keeps its pool's memfd open until a reader connects, so a corrupted header
// is made as for 04, through /proc/PID/fd.
const Chapter kZeroCopy = {
    .folder = "06-zero-copy", .make_place = socket_place, .reader_for = named_reader,
    .writer_waits = "waiting up to", .no_writer = "is the writer running? start it first",
    .writer_died = "died before the end of the stream", .reader_died = "the reader closed the connection",
    .second_reader = "another reader is already being served", .stale = "remove it with: rm ",
    .corrupt_header = corrupt_memfd, .unavailable = always_available,
    .writer_narrates = {"8 slots of 65536 bytes", "HELLO + SCM_RIGHTS", "send(FILLED slot=0 length=",
                        "recv(DONE): the reader returned every slot"},
    .reader_narrates = {"-> /memfd:shm-tutorial-06-pool (deleted)",
                        "write(stdout) from the slot itself; send(RETURNED slot=0)"}};

/// What every case ends with: nothing the case named is left, and its private folder is empty.
void check_place_empty(const LeakCheck& leaks, const Place& place) {
    check_nothing_left(leaks);
    if (place.dir) {
        std::vector<std::string> files = place.dir->entries();
        for (const std::string& file : files)
            UNSCOPED_INFO("left in " << place.dir->path() << ": " << file);
        CHECK(files.empty());
    }
}

/// Starts the writer with `writer_extra` and, once it is ready for one, the reader.
struct Pair {
    Process* writer = nullptr;
    Process* reader = nullptr;
};
Pair start_pair(const Chapter& chapter, const Place& place, ProcessGroup& group, const std::string& timeout,
                std::vector<std::string> writer_extra, std::vector<std::string> reader_extra = {},
                Stdin writer_stdin = Stdin::kNull) {
    Pair pair;
    pair.writer = &group.start("writer", writer_command(chapter, place, timeout, writer_extra), writer_stdin);
    group.wait_for_stderr(*pair.writer, chapter.writer_waits);
    REQUIRE_FALSE(pair.writer->finished());
    pair.reader = &group.start("reader", chapter.reader_for(chapter, place, pair.writer, timeout, reader_extra));
    return pair;
}

// The cases. Each returns early (skipped) where the chapter cannot run on this machine.

void message_arrives(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        Pair pair = start_pair(chapter, place, group, "10", {"hello", "shared memory"});
        group.wait(*pair.reader);
        wait_for_waiter(group, *pair.writer, *pair.reader); // a reader that failed never comes back
        INFO("writer stderr:\n" << pair.writer->err << "reader stderr:\n" << pair.reader->err);
        CHECK(pair.reader->out == "hello\nshared memory\n");
        CHECK(pair.reader->exit_code() == 0);
        CHECK(pair.writer->exit_code() == 0);
        CHECK(pair.writer->out.empty()); // standard output is for data only
        CHECK_THAT(pair.writer->err, contains("writer: "));
        CHECK_THAT(pair.reader->err, contains("reader: "));
        for (const std::string& phrase : chapter.writer_narrates)
            CHECK_THAT(pair.writer->err, contains(phrase));
        for (const std::string& phrase : chapter.reader_narrates)
            CHECK_THAT(pair.reader->err, contains(phrase));
    }
    check_place_empty(leaks, place);
}

void random_mib_round_trip(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    const std::string data = random_bytes(1 << 20, 7);
    {
        ProcessGroup group;
        Pair pair = start_pair(chapter, place, group, "20", {}, {"--quiet"}, Stdin::kPipe);
        group.feed(*pair.writer, data, true);
        group.wait(*pair.writer);
        group.wait(*pair.reader);
        INFO("writer stderr:\n" << pair.writer->err << "reader stderr:\n" << pair.reader->err);
        CHECK(pair.writer->exit_code() == 0);
        CHECK(pair.reader->exit_code() == 0);
        REQUIRE(pair.reader->out.size() == data.size());
        CHECK(pair.reader->out == data);
        CHECK(pair.reader->err.empty()); // --quiet
    }
    check_place_empty(leaks, place);
}

void reader_first(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader_for(chapter, place, nullptr, "20", {}));
        group.wait_for_stderr(reader, "waiting up to 20 s for a writer");
        REQUIRE_FALSE(reader.finished()); // still waiting, not failed
        Process& writer = group.start("writer", writer_command(chapter, place, "20", {"written later"}));
        group.wait(writer);
        group.wait(reader);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "written later\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
    }
    check_place_empty(leaks, place);
}

void reader_alone(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group(std::chrono::seconds(20));
        std::vector<std::string> argv;
        if (chapter.reader_for == printed_reader) // no writer: the largest pid_max, a pid no process has here
            argv = {binary(std::string(chapter.folder) + "/reader"), "--pid", "4194304", "--fd", "3", "--timeout",
                    "1", "--quiet"};
        else
            argv = chapter.reader_for(chapter, place, nullptr, "1", {"--quiet"});
        Process& reader = group.start("reader", argv);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.out.empty());
        CHECK(std::count(reader.err.begin(), reader.err.end(), '\n') == 1); // one clear line
        CHECK_THAT(reader.err, contains(chapter.no_writer));
    }
    check_place_empty(leaks, place);
}

void killed_writer(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        // A long --timeout: only the writer's death, not a timeout, can end the reader in time.
        Pair pair = start_pair(chapter, place, group, "30", {}, {}, Stdin::kPipe);
        group.feed(*pair.writer, "typed so far\n", false);
        group.wait_for_stdout(*pair.reader, 13);
        REQUIRE(pair.reader->out == "typed so far\n");
        group.signal(*pair.writer, SIGKILL);
        group.wait(*pair.writer);
        group.wait(*pair.reader);
        INFO("reader stderr:\n" << pair.reader->err);
        CHECK(pair.reader->exit_code() == 1);
        CHECK_THAT(pair.reader->last_error_line(), contains(chapter.writer_died));
        CHECK(pair.reader->out == "typed so far\n");
    }
    check_place_empty(leaks, place);
}

void killed_reader(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        Pair pair = start_pair(chapter, place, group, "30", {}, {}, Stdin::kPipe);
        group.feed(*pair.writer, "first\n", false);
        group.wait_for_stdout(*pair.reader, 6);
        INFO("reader stderr:\n" << pair.reader->err);
        REQUIRE(pair.reader->out == "first\n"); // it has the stream: else no death of ours to notice
        group.signal(*pair.reader, SIGKILL);
        group.wait(*pair.reader);
        group.wait(*pair.writer); // its stdin stays open: only noticing the death ends the writer
        INFO("writer stderr:\n" << pair.writer->err);
        CHECK(pair.writer->exit_code() == 1);
        CHECK_THAT(pair.writer->last_error_line(), contains(chapter.reader_died));
    }
    check_place_empty(leaks, place);
}

void second_reader_refused(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        Pair pair = start_pair(chapter, place, group, "30", {}, {}, Stdin::kPipe);
        group.feed(*pair.writer, "one\n", false);
        group.wait_for_stdout(*pair.reader, 4); // the first reader has the stream
        Process& second =
            group.start("second reader", chapter.reader_for(chapter, place, pair.writer, "5", {}));
        group.wait(second);
        INFO("second reader stderr:\n" << second.err);
        CHECK(second.exit_code() == 1);
        CHECK_THAT(second.last_error_line(), contains(chapter.second_reader));
        CHECK(second.out.empty());
        group.feed(*pair.writer, "two\n", true);
        group.wait(*pair.reader);
        wait_for_waiter(group, *pair.writer, *pair.reader); // a reader that failed never comes back
        CHECK(pair.reader->out == "one\ntwo\n");
        CHECK(pair.reader->exit_code() == 0);
        CHECK(pair.writer->exit_code() == 0);
    }
    check_place_empty(leaks, place);
}

void usage_errors(const Chapter& chapter) {
    const std::string writer = binary(std::string(chapter.folder) + "/writer");
    const std::string reader = binary(std::string(chapter.folder) + "/reader");
    check_usage_errors({
        {writer, "--bogus"},
        {writer, "--timeout"},
        {writer, "--timeout", "soon"},
        {writer, "--timeout", "0"},
        {reader, "--bogus"},
        {reader, "unexpected"},
        {reader, "--timeout", "-3"},
    });
}

void help(const Chapter& chapter) {
    ProcessGroup group;
    for (const char* role : {"writer", "reader"}) {
        Process& program = group.start(role, {binary(std::string(chapter.folder) + "/" + role), "--help"});
        group.wait(program);
        INFO(role << " --help printed:\n" << program.out << program.err);
        CHECK(program.exit_code() == 0);
        CHECK(program.err.empty());
        CHECK_THAT(program.out, contains("Usage: " + std::string(role)));
        CHECK_THAT(program.out, contains("--timeout"));
    }
}

void stale_object(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        Process& crashed = group.start("crashed writer", writer_command(chapter, place, "30", {"lost"}));
        group.wait_for_stderr(crashed, chapter.writer_waits);
        group.signal(crashed, SIGKILL);
        group.wait(crashed);

        Process& refused = group.start("writer", writer_command(chapter, place, "5", {"refused"}));
        group.wait(refused);
        INFO("refused writer stderr:\n" << refused.err);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.last_error_line(), contains(chapter.stale));

        // Start the reader only once the new writer waits: a reader started earlier could find the
        // crashed writer's objects, see it dead and remove them itself (also correct).
        Pair pair = start_pair(chapter, place, group, "10", {"--force", "replaced"});
        group.wait(*pair.writer);
        group.wait(*pair.reader);
        INFO("forced writer stderr:\n" << pair.writer->err);
        CHECK(pair.writer->exit_code() == 0);
        CHECK(pair.reader->out == "replaced\n");
        CHECK(pair.reader->exit_code() == 0);
    }
    check_place_empty(leaks, place);
}

void corrupted_header(const Chapter& chapter) {
    if (chapter.corrupt_header == nullptr)
        SKIP_TEST("the test cannot reach this chapter's memory to change its header");
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_command(chapter, place, "30", {"payload"}));
        group.wait_for_stderr(writer, chapter.writer_waits);
        REQUIRE_FALSE(writer.finished());
        // Play a faulty or hostile writer: a magic number that is not the layout's.
        chapter.corrupt_header(place, writer, [](shmtut::SharedHeader& header) { header.magic.store(0xdeadbeef); });
        Process& reader = group.start("reader", chapter.reader_for(chapter, place, &writer, "5", {}));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.killed_by() == 0);
        CHECK_THAT(reader.last_error_line(), contains("0xdeadbeef"));
        CHECK(reader.out.empty());
        // The writer either noticed its reader go or still waits: SIGTERM makes it clean up.
        group.signal(writer, SIGTERM);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
    }
    check_place_empty(leaks, place);
}

// A pid is a number in one pid namespace: a writer and a reader in different namespaces (two
// containers sharing /dev/shm, an IPC namespace or a socket directory) see different pids for
// the same process. Liveness and trust must come from the kernel's objects, never from a pid.
void across_pid_namespaces(const Chapter& chapter) {
    std::vector<std::string> unshare = unshare_for({"--pid", "--fork"});
    if (unshare.empty())
        SKIP_TEST("unshare --pid is not allowed here (not root, and no unprivileged user namespaces)");
    for (bool writer_inside : {false, true}) {
        DYNAMIC_SECTION((writer_inside ? "the writer" : "the reader") << " in a pid namespace of its own") {
            LeakCheck leaks;
            Place place = chapter.make_place(leaks);
            {
                ProcessGroup group;
                std::vector<std::string> writer_argv = writer_command(chapter, place, "10", {"across pid namespaces"});
                std::vector<std::string> reader_argv = chapter.reader_for(chapter, place, nullptr, "10", {});
                std::vector<std::string>& moved = writer_inside ? writer_argv : reader_argv;
                moved.insert(moved.begin(), unshare.begin(), unshare.end());
                Pair pair;
                pair.writer = &group.start("writer", writer_argv);
                group.wait_for_stderr(*pair.writer, chapter.writer_waits);
                pair.reader = &group.start("reader", reader_argv);
                group.wait(*pair.writer);
                group.wait(*pair.reader);
                INFO("writer stderr:\n" << pair.writer->err << "reader stderr:\n" << pair.reader->err);
                CHECK(pair.reader->out == "across pid namespaces\n");
                CHECK(pair.reader->exit_code() == 0);
                CHECK(pair.writer->exit_code() == 0);
            }
            check_place_empty(leaks, place);
        }
    }
}

// The chapters' default names are the same for every user of a machine: in a workshop room on
// one server, the second person to run a chapter meets the first one's key file, /dev/shm name
// or socket. Both of the second person's programs must say whose the name is and which --name
// to use instead (never "Permission denied" alone), and leave the first person's run alone. The
// case uses a private name (the defaults are shared with whoever else uses this machine); the
// programs treat every name alike.
void another_users_name(const Chapter& chapter) {
    std::optional<RunAs> other = unprivileged_ids();
    if (!other)
        SKIP_TEST("not root: this case starts programs under another uid");
    const passwd* entry = ::getpwuid(other->uid);
    const std::string other_user = entry != nullptr ? entry->pw_name : std::to_string(other->uid);
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    if (place.dir)
        REQUIRE(::chmod(place.dir->path().c_str(), 01777) == 0); // shared and sticky, as /tmp
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_command(chapter, place, "30", {"mine"}));
        group.wait_for_stderr(writer, chapter.writer_waits);
        for (const char* program : {"writer", "reader"}) {
            std::vector<std::string> extra;
            if (std::string(program) == "writer")
                extra.push_back("theirs");
            Process& stranger = group.start(std::string(program) + " as " + other_user,
                                            command(std::string(chapter.folder) + "/" + program, place.name_args, "3",
                                                    extra),
                                            Stdin::kNull, *other);
            group.wait(stranger);
            INFO(program << " as " << other_user << " stderr:\n" << stranger.err);
            CHECK(stranger.exit_code() == 1);
            CHECK(stranger.out.empty());
            CHECK_THAT(stranger.last_error_line(), contains("belongs to uid " + std::to_string(::geteuid())));
            CHECK_THAT(stranger.last_error_line(), contains("another user"));
            CHECK_THAT(stranger.last_error_line(), contains("--name " + place.name + "-" + other_user));
        }
        CHECK_FALSE(writer.finished()); // the first person's run goes on
        Process& reader = group.start("reader", chapter.reader_for(chapter, place, &writer, "30", {}));
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "mine\n");
        CHECK(writer.exit_code() == 0);
    }
    check_place_empty(leaks, place);
}

/// `argv` run through the shell with one of its standard descriptors closed (`redirect` is
/// `<&-` or `>&-`), as a careless script or a service manager may start it.
std::vector<std::string> with_closed(const char* redirect, const std::vector<std::string>& argv) {
    std::vector<std::string> shell = {"/bin/sh", "-c", std::string("exec \"$@\" ") + redirect, "sh"};
    shell.insert(shell.end(), argv.begin(), argv.end());
    return shell;
}

// A closed standard descriptor is a free number: the next open(), shm_open() or memfd_create()
// gets it. A writer whose stdin is closed would then "read standard input" from its own shared
// memory and send the header as data; a reader whose stdout is closed would write the stream
// into whatever descriptor took number 1 and report success.
void writer_stdin_closed(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", with_closed("<&-", writer_command(chapter, place, "10")));
        group.wait_for_stderr(writer, chapter.writer_waits);
        Process& reader = group.start("reader", chapter.reader_for(chapter, place, &writer, "10", {}));
        group.wait(writer);
        group.wait(reader);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out.empty()); // nothing that was not on its standard input
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("read(stdin)"));
        CHECK_THAT(writer.last_error_line(), contains("standard input is closed")); // and what to do
        CHECK(reader.exit_code() == 1);
    }
    check_place_empty(leaks, place);
}

void reader_stdout_closed(const Chapter& chapter) {
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_command(chapter, place, "10", {"lost"}));
        group.wait_for_stderr(writer, chapter.writer_waits);
        Process& reader =
            group.start("reader", with_closed(">&-", chapter.reader_for(chapter, place, &writer, "10", {})));
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1); // the stream did not reach its standard output
        CHECK_THAT(reader.last_error_line(), contains("write(stdout)"));
        CHECK_THAT(reader.last_error_line(), contains("standard output is closed")); // and what to do
        CHECK(writer.exit_code() == 1);
    }
    check_place_empty(leaks, place);
}

/// The waiting hint names the peer program where it really is, as this program was started (the
/// folder of its argv[0]), not where the build puts it: in chapter 05's VM the programs sit at
/// 05-dma-buf/ in the image, and a hint saying build/05-dma-buf/reader names no file there. The
/// pair is started through links in a folder of the test's own.
void hints_name_the_peer_where_it_is(const Chapter& chapter) {
    // ProcessGroup starts a program of the build folder through the emulator under qemu-user
    // (make test-cross); these links sit outside it, so the emulator is named here. qemu-user
    // hands the program the path it was given as argv[0], as the kernel does.
    const auto through_link = [](std::vector<std::string> argv) {
        if (const std::string qemu = emulator(); !qemu.empty())
            argv.insert(argv.begin(), qemu);
        return argv;
    };
    LeakCheck leaks;
    Place place = chapter.make_place(leaks);
    TempDir elsewhere;
    for (const char* program : {"writer", "reader"})
        REQUIRE(::symlink(binary(std::string(chapter.folder) + "/" + program).c_str(),
                          elsewhere.file(program).c_str()) == 0);
    const bool named = chapter.reader_for == named_reader;
    {
        ProcessGroup group;
        std::vector<std::string> argv = writer_command(chapter, place, "1", {"unread"});
        argv[0] = elsewhere.file("writer");
        Process& writer = group.start("writer", through_link(argv));
        group.wait(writer); // no reader comes: it gives up after 1 s
        INFO("writer stderr:\n" << writer.err);
        CHECK_THAT(writer.err, contains(named ? "start " + elsewhere.file("reader") : "    " + elsewhere.file("reader") + " --pid "));
        CHECK_THAT(writer.err, !contains("build/" + std::string(chapter.folder) + "/reader"));
        if (named) {
            std::vector<std::string> reader_argv = chapter.reader_for(chapter, place, nullptr, "1", {});
            reader_argv[0] = elsewhere.file("reader");
            Process& reader = group.start("reader", through_link(reader_argv));
            group.wait(reader); // no writer comes
            INFO("reader stderr:\n" << reader.err);
            CHECK_THAT(reader.err, contains("for a writer: start " + elsewhere.file("writer")));
        }
    }
    ::unlink(elsewhere.file("writer").c_str());
    ::unlink(elsewhere.file("reader").c_str());
    check_place_empty(leaks, place);
}

} // namespace

/// Runs `body` for `chapter`, or records the case as skipped where the chapter cannot run here.
#define CONTRACT_CASE(tag, chapter, title, body)                            \
    TEST_CASE(tag ": contract: " title, "[" tag "][contract]") {            \
        if (std::string why = (chapter).unavailable(); !why.empty())        \
            SKIP_TEST(why);                                                 \
        body(chapter);                                                      \
    }

/// Runs `body` for `chapter` on any machine: options and `--help` are handled before a program
/// looks for what its chapter needs (a dma-buf device), so they are tested even where that is missing.
#define CONTRACT_CASE_ANY_MACHINE(tag, chapter, title, body)                \
    TEST_CASE(tag ": contract: " title, "[" tag "][contract]") {            \
        body(chapter);                                                      \
    }

/// The cases every chapter's pair passes.
#define CONTRACT_CASES(tag, chapter)                                                                               \
    CONTRACT_CASE(tag, chapter, "a message arrives exactly, data on stdout and narration on stderr", message_arrives) \
    CONTRACT_CASE(tag, chapter, "1 MiB of random bytes, zero bytes included, arrives identical", random_mib_round_trip) \
    CONTRACT_CASE(tag, chapter, "a reader with no writer fails with one clear line", reader_alone)                  \
    CONTRACT_CASE(tag, chapter, "a writer killed mid-stream is reported dead, not timed out", killed_writer)        \
    CONTRACT_CASE(tag, chapter, "a killed reader makes the writer clean up and fail", killed_reader)               \
    CONTRACT_CASE(tag, chapter, "a second reader is refused, and the first gets everything", second_reader_refused) \
    CONTRACT_CASE_ANY_MACHINE(tag, chapter, "usage errors exit 2 with one line pointing to --help", usage_errors)              \
    CONTRACT_CASE_ANY_MACHINE(tag, chapter, "--help prints the usage on stdout and exits 0", help)                              \
    CONTRACT_CASE(tag, chapter, "a header with a wrong magic number is refused", corrupted_header)                 \
    CONTRACT_CASE(tag, chapter, "a writer whose stdin is closed sends nothing and fails", writer_stdin_closed)    \
    CONTRACT_CASE(tag, chapter, "a reader whose stdout is closed fails, not reports success", reader_stdout_closed) \
    CONTRACT_CASE(tag, chapter, "the waiting hints name the peer program where it is", hints_name_the_peer_where_it_is)

/// The cases of a pair whose reader finds the writer by a name: it may start first, and a
/// crashed writer leaves a named object behind.
#define CONTRACT_NAMED_CASES(tag, chapter)                                                                         \
    CONTRACT_CASE(tag, chapter, "a reader started first waits for the writer", reader_first)                        \
    CONTRACT_CASE(tag, chapter, "what a crashed writer left is reported, and --force replaces it", stale_object) \
    CONTRACT_CASE(tag, chapter, "a writer and a reader in different pid namespaces work together", across_pid_namespaces) \
    CONTRACT_CASE(tag, chapter, "another user at the same name is told whose it is and which --name to use",       \
                  another_users_name)

CONTRACT_CASES("01", kSysv)
CONTRACT_NAMED_CASES("01", kSysv)
CONTRACT_CASES("02", kPosix)
CONTRACT_NAMED_CASES("02", kPosix)
CONTRACT_CASES("03", kMemfd)
CONTRACT_CASES("04", kFdPassing)
CONTRACT_NAMED_CASES("04", kFdPassing)
CONTRACT_CASES("05", kDmaBuf)
CONTRACT_NAMED_CASES("05", kDmaBuf)
CONTRACT_CASES("06", kZeroCopy)
CONTRACT_NAMED_CASES("06", kZeroCopy)
