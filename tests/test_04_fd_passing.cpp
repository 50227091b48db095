/// @file tests/test_04_fd_passing.cpp
/// @brief Chapter 04 end to end, and a hostile server: every way a peer can hand the reader the
///        wrong thing, each refused with a clear error and no descriptor left open.
#include <csignal>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../04-fd-passing/protocol.hpp"
#include "catch.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "owners.hpp"
#include "seals.hpp"
#include "support.hpp"

using namespace testsupport;

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

/// Sends `message` with `fds` attached (any number), as a hostile or faulty writer might.
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

const fdpass::Message kHello{fdpass::kMagic, fdpass::kHello, 0};

/// A memfd with a header naming this process, `size` bytes (the header claims size - 256 of
/// data unless `claimed_capacity` says otherwise), sealed with `seals`.
shmtut::UniqueFd make_memfd(std::size_t size, int seals, std::uint64_t claimed_capacity = 0) {
    shmtut::UniqueFd fd(::memfd_create("shmtut-test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    REQUIRE(base != MAP_FAILED);
    shmtut::publish_header(*shmtut::construct_header(base),
                           claimed_capacity != 0 ? claimed_capacity : size - shmtut::kHeaderSize,
                           static_cast<std::uint32_t>(::getpid()), 0);
    ::munmap(base, size);
    if (seals != 0)
        REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0);
    return fd;
}

/// The reader's receive path, in this process: what it accepts, or the refusal's text.
std::string receive_in_process(int socket_fd) {
    try {
        shmtut::Deadline deadline(5);
        shmtut::UniqueFd fd = fdpass::receive_descriptor(socket_fd, deadline);
        shmtut::Narrator quiet("test", true);
        shmtut::check_sealed_memfd(fd.get(), F_SEAL_SHRINK | F_SEAL_GROW, shmtut::kHeaderSize, quiet);
        return "accepted";
    } catch (const std::exception& e) {
        return e.what();
    }
}

/// A listening socket at `path` that plays the writer's side by hand.
shmtut::UniqueFd listen_at(const std::string& path) {
    sockaddr_un address{};
    socklen_t length = fdpass::make_address(path, address);
    shmtut::UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(listener);
    REQUIRE(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
    REQUIRE(::listen(listener.get(), 1) == 0);
    return listener;
}

} // namespace

TEST_CASE("04: a message arrives exactly, and the descriptor's journey is narrated", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("10", {"hello", "descriptor"}));
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(writer);
        group.wait(reader);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "hello\ndescriptor\n");
        CHECK(writer.exit_code() == 0);
        CHECK(reader.exit_code() == 0);
        CHECK_THAT(writer.err, contains("getsockopt(SO_PEERCRED): pid="));
        CHECK_THAT(writer.err, contains("HELLO + SCM_RIGHTS"));
        CHECK_THAT(reader.err, contains("1 descriptor (SCM_RIGHTS), no MSG_CTRUNC"));
        CHECK_THAT(reader.err, contains("-> /memfd:shm-tutorial-04 (deleted)"));
    }
    CHECK(chapter.dir.entries().empty()); // the socket file is gone
    check_nothing_left(leaks);
}

TEST_CASE("04: 4 MiB of random bytes arrive identical", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    check_pair_carries(chapter.writer("10", {"--quiet"}), chapter.reader("10", {"--quiet"}), random_bytes(4 << 20, 41));
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

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

TEST_CASE("04: a reader started before the writer waits for its socket", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("20"));
        group.wait_for_stderr(reader, "waiting up to 20 s for a writer");
        REQUIRE_FALSE(reader.wait_status.has_value());
        Process& writer = group.start("writer", chapter.writer("20", {"later"}));
        group.wait(writer);
        group.wait(reader);
        CHECK(reader.out == "later\n");
        CHECK(reader.exit_code() == 0);
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: a reader with no writer fails within its timeout with a one-line error", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& reader = group.start("reader", chapter.reader("1", {"--quiet"}));
        group.wait(reader);
        CHECK(reader.exit_code() == 1);
        CHECK(std::count(reader.err.begin(), reader.err.end(), '\n') == 1);
        CHECK_THAT(reader.err, contains("No such file or directory"));
        CHECK_THAT(reader.err, contains("is the writer running? start it first"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: a writer killed with SIGKILL is reported dead, and its socket file removed", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("30"));
        group.feed(writer, "typed so far\n", false);
        group.wait_for_stdout(reader, 13);
        group.signal(writer, SIGKILL);
        group.wait(writer);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.out == "typed so far\n");
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("died before the end of the stream"));
        CHECK_THAT(reader.err, contains("removed the socket file the dead writer left"));
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("04: a second reader is refused while the first is served", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& first = group.start("first reader", chapter.reader("30"));
        group.wait_for_stderr(first, "header valid");
        Process& second = group.start("second reader", chapter.reader("5"));
        group.wait(second);
        INFO("second reader stderr:\n" << second.err);
        CHECK(second.exit_code() == 1);
        CHECK_THAT(second.last_error_line(), contains("another reader is already being served"));
        group.feed(writer, "first only\n", true);
        group.wait(writer);
        group.wait(first);
        CHECK(first.out == "first only\n");
        CHECK(first.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
    }
    check_nothing_left(leaks);
}

TEST_CASE("04: a stale socket file is reported with the rm command, and --force replaces it", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        shmtut::UniqueFd stale = listen_at(chapter.name); // bound, then closed: a file nobody listens on
    }
    {
        ProcessGroup group;
        Process& refused = group.start("writer", chapter.writer("5", {"x"}));
        group.wait(refused);
        CHECK(refused.exit_code() == 1);
        CHECK_THAT(refused.last_error_line(), contains("remove it with 'rm " + chapter.name + "'"));
        Process& forced = group.start("writer", chapter.writer("10", {"--force", "replaced"}));
        group.wait_for_stderr(forced, "waiting up to");
        Process& reader = group.start("reader", chapter.reader("10"));
        group.wait(forced);
        group.wait(reader);
        CHECK(forced.exit_code() == 0);
        CHECK(reader.out == "replaced\n");
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("04: a killed reader makes the writer fail and remove its socket file", "[04]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30"), Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "header valid");
        group.signal(reader, SIGKILL);
        group.wait(reader);
        group.wait(writer); // idle on its stdin: only noticing the closed connection ends it
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader died while the writer waited for input"));
    }
    CHECK(chapter.dir.entries().empty());
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

TEST_CASE("04 hostile server: every wrong hand-over is refused and leaves no descriptor open", "[04][hostile]") {
    LeakCheck leaks;
    std::string refusal;
    {
        int pair[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
        shmtut::UniqueFd server(pair[0]), client(pair[1]);
        shmtut::UniqueFd good = make_memfd(shmtut::kHeaderSize + 4096, F_SEAL_SHRINK | F_SEAL_GROW);

        SECTION("a well-formed hand-over is accepted (the baseline)") {
            send_with_descriptors(server.get(), &kHello, sizeof kHello, {good.get()});
            refusal = receive_in_process(client.get());
            CHECK(refusal == "accepted");
        }
        SECTION("no descriptor") {
            send_with_descriptors(server.get(), &kHello, sizeof kHello, {});
            refusal = receive_in_process(client.get());
            CHECK_THAT(refusal, contains("HELLO came with 0 descriptors, expected exactly 1"));
        }
        SECTION("two descriptors: they fit (alignment), no MSG_CTRUNC, still refused") {
            send_with_descriptors(server.get(), &kHello, sizeof kHello, {good.get(), good.get()});
            refusal = receive_in_process(client.get());
            CHECK_THAT(refusal, contains("HELLO came with 2 descriptors"));
        }
        SECTION("three descriptors: MSG_CTRUNC, the kernel dropped one") {
            send_with_descriptors(server.get(), &kHello, sizeof kHello, {good.get(), good.get(), good.get()});
            refusal = receive_in_process(client.get());
            CHECK_THAT(refusal, contains("MSG_CTRUNC"));
            CHECK_THAT(refusal, contains("closed the 2 that did fit"));
        }
        SECTION("a pipe instead of a memfd") {
            int pipe_fds[2];
            REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
            shmtut::UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
            send_with_descriptors(server.get(), &kHello, sizeof kHello, {read_end.get()});
            refusal = receive_in_process(client.get());
            CHECK_THAT(refusal, contains("is not a regular file"));
        }
        SECTION("an unsealed memfd") {
            shmtut::UniqueFd unsealed = make_memfd(shmtut::kHeaderSize + 4096, 0);
            send_with_descriptors(server.get(), &kHello, sizeof kHello, {unsealed.get()});
            refusal = receive_in_process(client.get());
            CHECK_THAT(refusal, contains("has seals none, needs F_SEAL_SHRINK|F_SEAL_GROW"));
        }
        SECTION("garbage instead of HELLO") {
            const char garbage[16] = "not a hello....";
            send_with_descriptors(server.get(), garbage, sizeof garbage, {good.get()});
            refusal = receive_in_process(client.get());
            CHECK_THAT(refusal, contains("the first message is not a 16-byte HELLO"));
        }
        SECTION("fewer data bytes than a message") {
            send_with_descriptors(server.get(), &kHello, 5, {good.get()});
            refusal = receive_in_process(client.get());
            CHECK_THAT(refusal, contains("not a 16-byte HELLO (5 bytes)"));
        }
        SECTION("the server closes at once") {
            server.reset();
            refusal = receive_in_process(client.get());
            CHECK_THAT(refusal, contains("closed the connection without sending the memory"));
        }
    }
    INFO("refusal: " << refusal);
    check_nothing_left(leaks); // every received descriptor was closed
}

TEST_CASE("04 hostile server: the real reader refuses a memfd smaller than its header claims", "[04][hostile]") {
    LeakCheck leaks;
    Chapter04 chapter;
    leaks.watch_path(chapter.name);
    {
        shmtut::UniqueFd listener = listen_at(chapter.name);
        ProcessGroup group;
        Process& reader = group.start("reader", chapter.reader("10"));
        shmtut::UniqueFd connection(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
        REQUIRE(connection);
        shmtut::UniqueFd short_memfd = make_memfd(shmtut::kHeaderSize + 100, F_SEAL_SHRINK | F_SEAL_GROW, 65536);
        send_with_descriptors(connection.get(), &kHello, sizeof kHello, {short_memfd.get()});
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.killed_by() == 0);
        CHECK_THAT(reader.last_error_line(), contains("data capacity 65536 does not fit in the object's 356 bytes"));
        ::unlink(chapter.name.c_str());
    }
    check_nothing_left(leaks);
}

TEST_CASE("04 hostile server: a server of another user is refused by SO_PEERCRED", "[04][hostile]") {
    if (::geteuid() != 0)
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
        if (::setgid(65534) != 0 || ::setuid(65534) != 0)
            ::_exit(2);
        sockaddr_un address{};
        socklen_t length = fdpass::make_address(name, address);
        int listener = ::socket(AF_UNIX, SOCK_STREAM, 0);
        if (::bind(listener, reinterpret_cast<const sockaddr*>(&address), length) != 0 || ::listen(listener, 1) != 0)
            ::_exit(3);
        char byte = 1;
        if (::write(ready[1], &byte, 1) != 1)
            ::_exit(4);
        int connection = ::accept(listener, nullptr, nullptr);
        char ignored;
        (void)!::read(connection, &ignored, 1); // hold the connection until the reader hangs up
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
