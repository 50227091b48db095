/// @file tests/test_04_fd_passing.cpp
/// @brief Chapter 04 end to end; a second writer on the same name; what is planted at the socket
///        path; and a hostile writer played by the test: every way a peer can hand the real
///        reader the wrong thing, each refused with exit status 1, a clear error, and no
///        descriptor left open.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../04-fd-passing/protocol.hpp"
#include "catch.hpp"
#include "layout.hpp"
#include "owners.hpp"
#include "support.hpp"

using namespace testsupport;
using shmtut::UniqueFd;

namespace {

/// One test's private socket path and the command lines that use it.
struct Chapter04 {
    TempDir dir;
    std::string name = dir.file("sock");
    std::vector<std::string> writer(const std::string& timeout, std::vector<std::string> extra = {}) const {
        return command("04-fd-passing/writer", {"--name", name}, timeout, extra);
    }
    std::vector<std::string> reader(const std::string& timeout, std::vector<std::string> extra = {}) const {
        return command("04-fd-passing/reader", {"--name", name}, timeout, extra);
    }
};

/// Sends `length` bytes with `fds` attached (any number), as a hostile or faulty writer might.
void send_with_descriptors(int socket_fd, const void* data, std::size_t length, const std::vector<int>& fds) {
    iovec iov{const_cast<void*>(data), length};
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()) + sizeof(cmsghdr));
    msghdr header{};
    header.msg_iov = &iov;
    header.msg_iovlen = 1;
    if (!fds.empty()) {
        header.msg_control = control.data();
        header.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* cmsg = CMSG_FIRSTHDR(&header);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
    }
    REQUIRE(::sendmsg(socket_fd, &header, MSG_NOSIGNAL) == static_cast<ssize_t>(length));
}

const handoff::Message kMemory = handoff::make_message(handoff::kMemory);

/// A memfd with a header naming `writer_pid`, `size` bytes (the header claims size - 256 of
/// data unless `claimed_capacity` says otherwise), sealed with `seals`.
UniqueFd make_memfd(std::size_t size, int seals, std::uint64_t claimed_capacity = 0,
                    pid_t writer_pid = ::getpid()) {
    UniqueFd fd(::memfd_create("shmtut-test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    REQUIRE(base != MAP_FAILED);
    shmtut::publish_header(*shmtut::construct_header(base),
                           claimed_capacity != 0 ? claimed_capacity : size - shmtut::kHeaderSize,
                           static_cast<std::uint32_t>(writer_pid), 0);
    ::munmap(base, size);
    if (seals != 0)
        REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0);
    return fd;
}

/// A listening socket at `path` that plays the writer's side by hand.
UniqueFd listen_at(const std::string& path, int backlog = 1) {
    sockaddr_un address{};
    socklen_t length = handoff::socket_address(path, address);
    UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(listener);
    REQUIRE(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
    REQUIRE(::listen(listener.get(), backlog) == 0);
    return listener;
}

/// A client connection to `path`, as any process could make (blocking).
UniqueFd connect_to(const std::string& path) {
    sockaddr_un address{};
    socklen_t length = handoff::socket_address(path, address);
    UniqueFd client(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(client);
    REQUIRE(::connect(client.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
    return client;
}

/// Accepts the reader on `listener` (waiting at most 20 s) and reads its 16-byte HELLO.
UniqueFd accept_reader(int listener) {
    pollfd entry{listener, POLLIN, 0};
    REQUIRE(::poll(&entry, 1, 20000) == 1);
    UniqueFd connection(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(connection);
    handoff::Message hello{};
    REQUIRE(::recv(connection.get(), &hello, sizeof hello, MSG_WAITALL) == static_cast<ssize_t>(sizeof hello));
    CHECK(hello.magic == handoff::kMagic);
    CHECK(hello.version == handoff::kProtocolVersion);
    CHECK(hello.type == handoff::kHello);
    return connection;
}

/// How the real reader ended against a writer played by the test.
struct Outcome {
    int exit_code = -1;
    int signal = 0;
    std::string out, err, last_line;
};

/// Starts the real reader (stdout, stderr captured), lets `writer_side` play the writer on the
/// accepted, greeted connection, then waits for the reader.
Outcome reader_against(const std::function<void(int connection)>& writer_side, const std::string& timeout = "10") {
    Chapter04 chapter;
    Outcome outcome;
    {
        UniqueFd listener = listen_at(chapter.name);
        ProcessGroup group(std::chrono::seconds(30));
        Process& reader = group.start("reader", chapter.reader(timeout));
        {
            UniqueFd connection = accept_reader(listener.get());
            writer_side(connection.get());
            group.wait(reader);
        }
        outcome = {reader.exit_code(), reader.killed_by(), reader.out, reader.err, reader.last_error_line()};
    }
    ::unlink(chapter.name.c_str());
    return outcome;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

/// True for poll(2) as glibc makes it: ppoll, or poll where the architecture has it (arm64 has
/// only ppoll).
bool is_poll_call(long number) {
#ifdef SYS_poll
    if (number == SYS_poll)
        return true;
#endif
    return number == SYS_ppoll;
}

/// Starts the real reader under ptrace (support's traced()) against a writer played by this
/// test, and stops it before its `check`-th check of the received memfd (F_GET_SEALS or fstat,
/// in the reader's own order). The hand-over happens on the way: when the reader, having sent
/// HELLO, enters poll to wait for the answer, the test accepts it and sends MEMORY with
/// `memory`. Returns true when the reader is stopped there (then resume it with
/// resume_stopped()), false when it exited first.
bool stop_reader_before_check(Process& reader, int listener, int memory, UniqueFd& connection, int check) {
    int checks = 0;
    return stop_at_syscall(reader, [&](const SyscallEntry& call) {
        if (!connection && is_poll_call(call.number)) {
            pollfd entry{listener, POLLIN, 0};
            if (::poll(&entry, 1, 0) == 1) { // the reader has connected and asked
                connection = accept_reader(listener);
                send_with_descriptors(connection.get(), &kMemory, sizeof kMemory, {memory});
            }
            return false;
        }
        return connection && (is_fstat(call) || is_get_seals(call)) &&
               descriptor_target(reader, static_cast<int>(call.args[0])).rfind("/memfd:", 0) == 0 &&
               ++checks == check;
    });
}

} // namespace

TEST_CASE("04: an abstract socket name works and leaves no file", "[04]") {
    LeakCheck leaks;
    const std::string name = "@" + unique_name("shmtut-test");
    leaks.watch_path(name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", command("04-fd-passing/writer", {"--name", name}, "10", {"abstract"}));
        Process& reader = group.start("reader", command("04-fd-passing/reader", {"--name", name}, "10"));
        group.wait(writer);
        group.wait(reader);
        INFO("writer stderr:\n" << writer.err);
        CHECK(reader.out == "abstract\n");
        CHECK(writer.exit_code() == 0);
        CHECK_THAT(writer.err, contains("(abstract: no file)"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: a second writer on the same name exits 1, with or without --force, and the first one serves its reader",
          "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    const bool force = GENERATE(false, true);
    INFO("second writer " << (force ? "with" : "without") << " --force");
    {
        ProcessGroup group;
        Process& first = group.start("writer A", chapter.writer("30", {"from A"}));
        group.wait_for_stderr(first, "waiting up to");
        std::vector<std::string> extra = {"from B"};
        if (force)
            extra.insert(extra.begin(), "--force");
        Process& second = group.start("writer B", chapter.writer("30", extra));
        group.wait(second);
        INFO("writer B stderr:\n" << second.err << "writer A stderr:\n" << first.err);
        CHECK(second.exit_code() == 1);
        CHECK_THAT(second.last_error_line(), contains("a writer is running there"));
        CHECK_FALSE(first.wait_status.has_value()); // A still waits
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait(reader);
        group.wait(first);
        CHECK(reader.out == "from A\n");
        CHECK(reader.exit_code() == 0);
        CHECK(first.exit_code() == 0);
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("04: a connection that says nothing is never taken for the reader", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30", {"for the reader"}));
        group.wait_for_stderr(writer, "waiting up to");
        {
            UniqueFd silent = connect_to(chapter.name); // connects, says nothing, stays connected
            group.wait_for_stderr(writer, "waiting for it to ask");
            Process& reader = group.start("reader", chapter.reader("30"));
            group.wait(reader);
            group.wait(writer);
            INFO("writer stderr:\n" << writer.err);
            CHECK(reader.out == "for the reader\n");
            CHECK(reader.exit_code() == 0);
            CHECK(writer.exit_code() == 0);
        }
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: a killed reader makes the writer, idle at its input, fail at once and clean up", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        // --timeout 600 and a hard limit of 40 s: only noticing the death can end the writer.
        ProcessGroup group(std::chrono::seconds(40));
        Process& writer = group.start("writer", chapter.writer("600"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("600"));
        group.feed(writer, "first line\n", false); // then the input pauses, open
        group.wait_for_stderr(reader, "send(CONSUMED)"); // the writer goes back to its input
        group.signal(reader, SIGKILL);
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader closed the connection while the writer waited for input"));
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("04: a planted file or symbolic link at the socket path is never followed nor removed", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    const std::string target = chapter.dir.file("target");
    {
        std::ofstream(target) << "not yours";
    }
    const bool symlink = GENERATE(false, true);
    if (symlink)
        REQUIRE(::symlink(target.c_str(), chapter.name.c_str()) == 0);
    else
        std::ofstream(chapter.name) << "planted";
    INFO((symlink ? "a symbolic link" : "a regular file") << " at the socket path");
    {
        ProcessGroup group(std::chrono::seconds(30));
        Process& writer = group.start("writer", chapter.writer("5", {"--force", "x"}));
        Process& reader = group.start("reader", chapter.reader("5"));
        group.wait(writer);
        group.wait(reader);
        INFO("writer: " << writer.err << "reader: " << reader.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("is not a socket"));
        CHECK_THAT(writer.last_error_line(), contains("not following it, not removing it"));
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains(chapter.name + " is not a socket (" +
                                                       (symlink ? "a symbolic link" : "a file or directory")));
    }
    struct stat info {};
    REQUIRE(::lstat(chapter.name.c_str(), &info) == 0);
    CHECK((symlink ? S_ISLNK(info.st_mode) : S_ISREG(info.st_mode)));
    CHECK(read_file(target) == "not yours");
    ::unlink(chapter.name.c_str());
    ::unlink(target.c_str());
    check_nothing_left(leaks);
}

TEST_CASE("04: a listener that never accepts, its queue full, fails the reader within its timeout", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        UniqueFd listener = listen_at(chapter.name, 0);
        // Backlog 0 still queues one connection; a second, non-blocking, then finds it full.
        UniqueFd queued = connect_to(chapter.name);
        UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        sockaddr_un address{};
        socklen_t length = handoff::socket_address(chapter.name, address);
        REQUIRE(::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), length) == -1);
        REQUIRE(errno == EAGAIN);
        ProcessGroup group(std::chrono::seconds(30));
        Process& reader = group.start("reader", chapter.reader("2"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("accepted nobody within 2 s"));
        ::unlink(chapter.name.c_str());
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: a listener that accepts and closes at once, or says nothing, fails the reader", "[04]") {
    LeakCheck leaks;
    const bool closes = GENERATE(true, false);
    Outcome outcome = reader_against(
        [&](int connection) {
            if (closes)
                ::shutdown(connection, SHUT_RDWR);
            else
                ::usleep(3'500'000); // says nothing for longer than the reader's timeout
        },
        "2");
    INFO("reader stderr:\n" << outcome.err);
    CHECK(outcome.exit_code == 1);
    CHECK_THAT(outcome.last_line, contains(closes ? "closed the connection without sending the memory"
                                                  : "nothing came within 2 s"));
    check_nothing_left(leaks);
}

TEST_CASE("04 hostile writer: every wrong hand-over is refused, exit 1, no descriptor left open", "[04][hostile]") {
    LeakCheck leaks;
    {
        UniqueFd good = make_memfd(shmtut::kHeaderSize + 4096, F_SEAL_SHRINK | F_SEAL_GROW);
        std::string expected;
        std::function<void(int)> writer_side;
        SECTION("a well-formed hand-over and an empty stream are accepted (the baseline)") {
            writer_side = [&](int c) {
                // The header names this test process, which is the one SO_PEERCRED reports.
                send_with_descriptors(c, &kMemory, sizeof kMemory, {good.get()});
                handoff::Message end = handoff::make_message(handoff::kEnd);
                REQUIRE(::send(c, &end, sizeof end, MSG_NOSIGNAL) == sizeof end);
                handoff::Message reply{};
                CHECK(::recv(c, &reply, sizeof reply, MSG_WAITALL) == sizeof reply);
                CHECK(reply.type == handoff::kConsumed);
            };
        }
        SECTION("no descriptor") {
            writer_side = [&](int c) { send_with_descriptors(c, &kMemory, sizeof kMemory, {}); };
            expected = "MEMORY came with 0 descriptors, expected exactly 1";
        }
        SECTION("two descriptors: they fit (alignment), no MSG_CTRUNC, still refused") {
            // CMSG_SPACE(sizeof(int)) holds two on 64-bit machines; on 32-bit ones it holds one
            // and the kernel sets MSG_CTRUNC (which qemu-user does not emulate).
            if (auto why = emulator_cannot("MSG_CTRUNC: descriptors that do not fit are left open");
                !why.empty() && sizeof(void*) == 4)
                SKIP_TEST(why);
            writer_side = [&](int c) { send_with_descriptors(c, &kMemory, sizeof kMemory, {good.get(), good.get()}); };
            expected = sizeof(void*) == 8 ? "MEMORY came with 2 descriptors" : "MSG_CTRUNC";
        }
        SECTION("three descriptors: MSG_CTRUNC, the kernel dropped one") {
            // qemu-user receives into a control buffer of its own and copies what fits: it neither
            // closes the descriptors that do not fit nor sets MSG_CTRUNC.
            if (auto why = emulator_cannot("MSG_CTRUNC: descriptors that do not fit are left open"); !why.empty())
                SKIP_TEST(why);
            writer_side = [&](int c) {
                send_with_descriptors(c, &kMemory, sizeof kMemory, {good.get(), good.get(), good.get()});
            };
            expected = "MSG_CTRUNC";
        }
        SECTION("a pipe instead of a memfd") {
            writer_side = [&](int c) {
                int pipe_fds[2];
                REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
                UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
                send_with_descriptors(c, &kMemory, sizeof kMemory, {read_end.get()});
            };
            expected = "refusing it"; // a pipe has no seals and is not a regular file
        }
        SECTION("an unsealed memfd") {
            writer_side = [&](int c) {
                UniqueFd unsealed = make_memfd(shmtut::kHeaderSize + 4096, 0);
                send_with_descriptors(c, &kMemory, sizeof kMemory, {unsealed.get()});
            };
            expected = "has seals none, needs F_SEAL_SHRINK|F_SEAL_GROW";
        }
        SECTION("a wrong magic on the wire") {
            writer_side = [&](int c) {
                const char garbage[16] = "not a message..";
                send_with_descriptors(c, garbage, sizeof garbage, {good.get()});
            };
            expected = "refused the memory: it does not start with SHM4";
        }
        SECTION("a wrong protocol version on the wire") {
            writer_side = [&](int c) {
                handoff::Message wrong = kMemory;
                wrong.version = 1;
                send_with_descriptors(c, &wrong, sizeof wrong, {good.get()});
            };
            expected = "protocol version 1, this program speaks version 2";
        }
        SECTION("a wrong magic in the shared header") {
            writer_side = [&](int c) {
                void* base = ::mmap(nullptr, shmtut::kHeaderSize, PROT_READ | PROT_WRITE, MAP_SHARED, good.get(), 0);
                REQUIRE(base != MAP_FAILED);
                static_cast<shmtut::SharedHeader*>(base)->magic.store(0x12345678);
                ::munmap(base, shmtut::kHeaderSize);
                send_with_descriptors(c, &kMemory, sizeof kMemory, {good.get()});
            };
            expected = "header refused: magic is 0x12345678";
        }
        SECTION("a wrong layout version in the shared header") {
            writer_side = [&](int c) {
                void* base = ::mmap(nullptr, shmtut::kHeaderSize, PROT_READ | PROT_WRITE, MAP_SHARED, good.get(), 0);
                REQUIRE(base != MAP_FAILED);
                static_cast<shmtut::SharedHeader*>(base)->version = 99;
                ::munmap(base, shmtut::kHeaderSize);
                send_with_descriptors(c, &kMemory, sizeof kMemory, {good.get()});
            };
            expected = "header refused: layout version 99";
        }
        SECTION("a header that claims more data than the memfd holds") {
            writer_side = [&](int c) {
                UniqueFd short_memfd = make_memfd(shmtut::kHeaderSize + 100, F_SEAL_SHRINK | F_SEAL_GROW, 65536);
                send_with_descriptors(c, &kMemory, sizeof kMemory, {short_memfd.get()});
            };
            expected = "data capacity 65536 does not fit in the object's 356 bytes";
        }
        SECTION("a BLOCK longer than the data area") {
            writer_side = [&](int c) {
                send_with_descriptors(c, &kMemory, sizeof kMemory, {good.get()});
                handoff::Message block = handoff::make_message(handoff::kBlock, 4097);
                REQUIRE(::send(c, &block, sizeof block, MSG_NOSIGNAL) == sizeof block);
            };
            expected = "block refused: length 4097 exceeds the data capacity 4096";
        }
        SECTION("a descriptor arriving with a later message") {
            writer_side = [&](int c) {
                send_with_descriptors(c, &kMemory, sizeof kMemory, {good.get()});
                handoff::Message block = handoff::make_message(handoff::kBlock, 1);
                send_with_descriptors(c, &block, sizeof block, {good.get()});
            };
            expected = "refused: a descriptor came with BLOCK; closed it";
        }
        SECTION("a message cut short, then the writer hangs up") {
            writer_side = [&](int c) {
                send_with_descriptors(c, &kMemory, 5, {good.get()});
                ::shutdown(c, SHUT_WR);
            };
            expected = "closed the connection without sending the memory";
        }
        SECTION("BUSY: another reader is served") {
            writer_side = [&](int c) {
                handoff::Message busy = handoff::make_message(handoff::kBusy);
                REQUIRE(::send(c, &busy, sizeof busy, MSG_NOSIGNAL) == sizeof busy);
            };
            expected = "another reader is already being served by this writer";
        }
        Outcome outcome = reader_against(writer_side);
        INFO("reader stderr:\n" << outcome.err);
        CHECK(outcome.signal == 0);
        if (expected.empty()) {
            CHECK(outcome.exit_code == 0);
        } else {
            CHECK(outcome.exit_code == 1);
            CHECK_THAT(outcome.last_line, contains(expected));
        }
    }
    check_nothing_left(leaks); // every received descriptor was closed
}

TEST_CASE("04 hostile writer: a reader at its RLIMIT_NOFILE refuses the dropped descriptor", "[04][hostile]") {
    if (::access("/usr/bin/prlimit", X_OK) != 0)
        SKIP_TEST("prlimit (util-linux) is not installed");
#if defined(__SANITIZE_ADDRESS__)
    // The sanitizer runtime opens a pipe (two descriptors) to check memory before it reports,
    // and a process at its descriptor limit has one slot free at most: UBSan then reports a
    // false "invalid vptr". make test runs this case.
    SKIP_TEST("under the sanitizers a program at its RLIMIT_NOFILE cannot run the sanitizer runtime; make test runs "
              "this case");
#endif
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        UniqueFd listener = listen_at(chapter.name);
        UniqueFd good = make_memfd(shmtut::kHeaderSize + 4096, F_SEAL_SHRINK | F_SEAL_GROW);
        ProcessGroup group(std::chrono::seconds(30));
        // Descriptors 0, 1, 2 and the socket: with a limit of 4 the memfd has no slot left.
        std::vector<std::string> argv = chapter.reader("10");
        argv.insert(argv.begin(), {"/usr/bin/prlimit", "--nofile=4:4", "--"});
        Process& reader = group.start("reader", argv);
        {
            UniqueFd connection = accept_reader(listener.get());
            send_with_descriptors(connection.get(), &kMemory, sizeof kMemory, {good.get()});
            group.wait(reader);
        }
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.killed_by() == 0);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("MSG_CTRUNC"));
        CHECK_THAT(reader.last_error_line(), contains("RLIMIT_NOFILE"));
        ::unlink(chapter.name.c_str());
    }
    check_nothing_left(leaks);
}

TEST_CASE("04 hostile writer: a memfd shrunk and sealed between the reader's checks is refused, never SIGBUS",
          "[04][hostile][sigbus]") {
    if (auto why = emulator_cannot("ptrace: PTRACE_TRACEME fails with ENOSYS"); !why.empty())
        SKIP_TEST(why);
    // Unsealed when sent; the "writer" keeps it, and with the reader stopped before its first or
    // its second check, shrinks it to 0 and adds the seals. Checking the seals first closes the
    // window: the reader refuses it; checking the size first maps 65792 bytes of nothing: SIGBUS.
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    const int stop_before_check = GENERATE(1, 2);
    {
        UniqueFd memory = make_memfd(shmtut::kHeaderSize + shmtut::kDefaultDataCapacity, 0);
        UniqueFd listener = listen_at(chapter.name);
        UniqueFd connection;
        ProcessGroup group;
        Process& reader = group.start("reader", traced(chapter.reader("10")));
        bool stopped = stop_reader_before_check(reader, listener.get(), memory.get(), connection, stop_before_check);
        if (stopped) {
            REQUIRE(::ftruncate(memory.get(), 0) == 0);
            REQUIRE(::fcntl(memory.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
            resume_stopped(reader);
        }
        group.wait(reader);
        INFO("stopped before check " << stop_before_check << ": " << stopped << "\nreader stderr:\n" << reader.err);
        CHECK(connection);
        CHECK(reader.killed_by() == 0);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("refusing it"));
        ::unlink(chapter.name.c_str());
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: the received descriptor is close-on-exec from the moment it arrives", "[04]") {
    if (auto why = emulator_cannot("ptrace: PTRACE_TRACEME fails with ENOSYS"); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        UniqueFd memory = make_memfd(shmtut::kHeaderSize + 4096, F_SEAL_SHRINK | F_SEAL_GROW);
        UniqueFd listener = listen_at(chapter.name);
        UniqueFd connection;
        ProcessGroup group;
        Process& reader = group.start("reader", traced(chapter.reader("10")));
        REQUIRE(stop_reader_before_check(reader, listener.get(), memory.get(), connection, 1));
        // Stopped before its first check: the descriptor has just arrived.
        std::string flags_line;
        for (int fd = 3; fd < 64 && flags_line.empty(); ++fd) {
            if (descriptor_target(reader, fd).rfind("/memfd:", 0) != 0)
                continue;
            std::istringstream info(read_file("/proc/" + std::to_string(reader.pid) + "/fdinfo/" + std::to_string(fd)));
            for (std::string line; std::getline(info, line);)
                if (line.rfind("flags:", 0) == 0)
                    flags_line = line;
        }
        resume_stopped(reader);
        handoff::Message end = handoff::make_message(handoff::kEnd);
        REQUIRE(::send(connection.get(), &end, sizeof end, MSG_NOSIGNAL) == sizeof end);
        handoff::Message reply{};
        CHECK(::recv(connection.get(), &reply, sizeof reply, MSG_WAITALL) == sizeof reply);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err << "fdinfo " << flags_line);
        REQUIRE(flags_line.size() > 7);
        unsigned long flags = std::stoul(flags_line.substr(6), nullptr, 8);
        CHECK((flags & O_CLOEXEC) != 0);
        CHECK(reader.exit_code() == 0); // then it runs free: after the END it confirms and exits 0
        ::unlink(chapter.name.c_str());
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: usage errors exit 2 with a pointer to --help", "[04]") {
    const std::string w = binary("04-fd-passing/writer");
    const std::string r = binary("04-fd-passing/reader");
    check_usage_errors({
        {w, "--name", "/tmp/" + std::string(120, 'x')}, {w, "--name", "@"}, {w, "--keep"}, {w, "--bogus"},
        {r, "--force"}, {r, "extra"}, {r, "--timeout", "never"},
    });
}

TEST_CASE("04 hostile writer: a server of another user is refused by SO_PEERCRED", "[04][hostile]") {
    std::optional<RunAs> other = unprivileged_ids();
    if (!other)
        SKIP_TEST("not root: this case starts a server under another uid");
    LeakCheck leaks;
    const std::string name = "@" + unique_name("shmtut-other-uid");
    leaks.watch_path(name);
    int ready[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    pid_t server = ::fork();
    REQUIRE(server != -1);
    if (server == 0) {
        // An abstract name: no file permission stands in the way, only the credentials check.
        ::close(ready[0]);
        if (::setgid(other->gid) != 0 || ::setuid(other->uid) != 0)
            ::_exit(2);
        sockaddr_un address{};
        socklen_t length = handoff::socket_address(name, address);
        int listener = ::socket(AF_UNIX, SOCK_STREAM, 0);
        if (::bind(listener, reinterpret_cast<const sockaddr*>(&address), length) != 0 || ::listen(listener, 1) != 0)
            ::_exit(3);
        char byte = 1;
        if (::write(ready[1], &byte, 1) != 1)
            ::_exit(4);
        int connection = ::accept(listener, nullptr, nullptr);
        char ignored[32];
        while (::read(connection, ignored, sizeof ignored) > 0) {
        } // hold the connection until the reader hangs up
        ::_exit(0);
    }
    ::close(ready[1]);
    char byte = 0;
    REQUIRE(::read(ready[0], &byte, 1) == 1);
    ::close(ready[0]);
    {
        ProcessGroup group;
        Process& reader = group.start("reader", command("04-fd-passing/reader", {"--name", name}, "10"));
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("belongs to uid 65534, not to this user: refusing it"));
    }
    int status = 0;
    REQUIRE(::waitpid(server, &status, 0) == server);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    check_nothing_left(leaks);
}

TEST_CASE("04: a client of another user is closed by the writer, which keeps waiting", "[04]") {
    std::optional<RunAs> other = unprivileged_ids();
    if (!other)
        SKIP_TEST("not root: this case starts a reader under another uid");
    LeakCheck leaks;
    const std::string name = "@" + unique_name("shmtut-other-client"); // no file mode in the way
    leaks.watch_path(name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", command("04-fd-passing/writer", {"--name", name}, "30", {"mine"}));
        group.wait_for_stderr(writer, "waiting up to");
        Process& stranger = group.start("reader as 65534", command("04-fd-passing/reader", {"--name", name}, "5"),
                                        Stdin::kNull, *other);
        group.wait(stranger);
        group.wait_for_stderr(writer, "another user, closed");
        CHECK(stranger.exit_code() == 1);
        CHECK_FALSE(writer.wait_status.has_value());
        Process& reader = group.start("reader", command("04-fd-passing/reader", {"--name", name}, "30"));
        group.wait(reader);
        group.wait(writer);
        CHECK(reader.out == "mine\n");
        CHECK(writer.exit_code() == 0);
    }
    check_nothing_left(leaks);
}

TEST_CASE("04 step 1: the bare pair carries its message and leaves nothing behind", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group(std::chrono::seconds(30));
        Process& writer = group.start("hello_writer", {binary("04-fd-passing/hello_writer"), chapter.name});
        group.wait_for_stderr(writer, "listening on");
        Process& reader = group.start("hello_reader", {binary("04-fd-passing/hello_reader"), chapter.name});
        group.wait(writer);
        group.wait(reader);
        INFO("writer: " << writer.err << "reader: " << reader.err);
        CHECK(reader.out == "hello, descriptor\n");
        CHECK(writer.exit_code() == 0);
        CHECK(reader.exit_code() == 0);
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("04 step 1: the bare reader started before its writer fails at once (step 2's reader waits)", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group;
        Process& reader = group.start("hello_reader", {binary("04-fd-passing/hello_reader"), chapter.name});
        group.wait(reader);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.err == "connect: No such file or directory\n");
        CHECK(reader.out.empty());
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: the notes quote the bare pair exactly as it is in the files", "[04]") {
    const std::string source = SHMTUT_SOURCE_DIR;
    const std::string notes = read_file(source + "/04-fd-passing/README.md");
    REQUIRE_FALSE(notes.empty());
    for (const char* program : {"hello_writer.cpp", "hello_reader.cpp"}) {
        const std::string code = read_file(source + "/04-fd-passing/" + program);
        INFO(program << " must appear whole in 04-fd-passing/README.md, in a ```cpp block");
        REQUIRE_FALSE(code.empty());
        CHECK(notes.find("```cpp\n" + code + "```\n") != std::string::npos);
    }
}

TEST_CASE("04: a Python peer written from the notes' protocol table reads from the writer", "[04]") {
    if (::access("/usr/bin/python3", X_OK) != 0)
        SKIP_TEST("/usr/bin/python3 is not installed");
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    // The table in 04-fd-passing/README.md, and nothing else: "<4sHHQ", HELLO=1, MEMORY=2,
    // BLOCK=3, END=4, CONSUMED=5; the data area at offset 256.
    const std::string peer = R"(
import mmap, socket, struct, sys
def message(kind): return struct.pack("<4sHHQ", b"SHM4", 2, kind, 0)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(message(1))
data, fds, flags, _ = socket.recv_fds(s, 16, 1)
assert struct.unpack("<4sHHQ", data)[:3] == (b"SHM4", 2, 2) and len(fds) == 1, "no MEMORY"
memory = mmap.mmap(fds[0], 0, prot=mmap.PROT_READ)
while True:
    magic, version, kind, length = struct.unpack("<4sHHQ", s.recv(16, socket.MSG_WAITALL))
    if kind == 3:
        sys.stdout.buffer.write(memory[256:256 + length])
    s.sendall(message(5))
    if kind == 4:
        break
)";
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("20", {"from C++", "to Python"}));
        group.wait_for_stderr(writer, "waiting up to");
        Process& reader = group.start("python reader", {"/usr/bin/python3", "-c", peer, chapter.name});
        group.wait(reader);
        group.wait(writer);
        INFO("python stderr:\n" << reader.err << "writer stderr:\n" << writer.err);
        CHECK(reader.out == "from C++\nto Python\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: a socket file of another user at the name is reported as such, never probed past nor removed",
          "[04]") {
    std::optional<RunAs> other = unprivileged_ids();
    if (!other)
        SKIP_TEST("not root: this case starts a writer under another uid");
    LeakCheck leaks;
    TempDir dir;
    REQUIRE(::chmod(dir.path().c_str(), 01777) == 0); // shared and sticky, as /tmp
    const std::string live = dir.file("live"), stale = dir.file("stale");
    leaks.watch_path(live);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", command("04-fd-passing/writer", {"--name", live}, "30", {"mine"}));
        group.wait_for_stderr(writer, "waiting up to");
        for (const char* force : {"", "--force"}) {
            std::vector<std::string> extra = {"x"};
            if (*force != '\0')
                extra.insert(extra.begin(), force);
            Process& stranger = group.start("writer as 65534", command("04-fd-passing/writer", {"--name", live}, "5", extra),
                                            Stdin::kNull, *other);
            group.wait(stranger);
            INFO("writer as 65534 " << force << " stderr:\n" << stranger.err);
            CHECK(stranger.exit_code() == 1);
            CHECK_THAT(stranger.last_error_line(), contains("the socket file there belongs to uid 0 (root), another user"));
        }
        CHECK_FALSE(writer.wait_status.has_value()); // still waiting
        Process& reader = group.start("reader", command("04-fd-passing/reader", {"--name", live}, "30"));
        group.wait(reader);
        group.wait(writer);
        CHECK(reader.out == "mine\n");
        CHECK(writer.exit_code() == 0);

        // A socket file nobody listens on, left by another user's run: not this user's to remove.
        int leftover = ::socket(AF_UNIX, SOCK_STREAM, 0);
        REQUIRE(leftover != -1);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::snprintf(address.sun_path, sizeof address.sun_path, "%s", stale.c_str());
        REQUIRE(::bind(leftover, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
        ::close(leftover);
        Process& forced = group.start("writer as 65534", command("04-fd-passing/writer", {"--name", stale}, "5",
                                                                 {"--force", "x"}), Stdin::kNull, *other);
        group.wait(forced);
        INFO("forced writer stderr:\n" << forced.err);
        CHECK(forced.exit_code() == 1);
        CHECK_THAT(forced.last_error_line(), contains("the socket file there belongs to uid 0 (root), another user"));
        CHECK(::access(stale.c_str(), F_OK) == 0); // left alone
        REQUIRE(::unlink(stale.c_str()) == 0);
    }
    check_nothing_left(leaks);
}
