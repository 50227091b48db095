/// @file tests/test_05_dma_buf.cpp
/// @brief Chapter 05 on this machine: where the kernel has no dma-buf devices, both programs must
///        say so and exit 77; where it has them, the pair must work. The full run, on a kernel
///        that has both devices, is `make vm-05` (which CI runs).
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catch.hpp"
#include "fdpass.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

bool exists(const char* path) {
    return ::access(path, F_OK) == 0;
}
bool usable(const char* path) {
    return ::access(path, R_OK | W_OK) == 0;
}

} // namespace

TEST_CASE("05: without a usable dma-buf device both programs exit 77 and say why", "[05]") {
    if (usable("/dev/dma_heap/system") || usable("/dev/udmabuf"))
        SKIP_TEST("this machine has a usable dma-buf device, so the exit-77 path cannot be seen here");
    // Missing (the kernel lacks the option) and present-but-forbidden get different lines.
    auto expected = [](const char* device, const char* option) {
        return exists(device) ? std::string(device) + " exists but this user may not open it"
                              : std::string(device) + " does not exist: this kernel lacks " + option;
    };
    LeakCheck leaks;
    TempDir dir;
    const std::vector<std::string> name = {"--name", dir.file("sock")};
    leaks.watch_path(dir.file("sock"));
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& heap = group.start("writer", command("05-dma-buf/writer", name, "5", {"hi"}));
        Process& udmabuf = group.start("writer --udmabuf", command("05-dma-buf/writer", name, "5", {"--udmabuf", "hi"}));
        Process& reader = group.start("reader", command("05-dma-buf/reader", name, "5"));
        group.wait(heap);
        group.wait(udmabuf);
        group.wait(reader);
        CHECK(heap.exit_code() == 77);
        CHECK_THAT(heap.err, contains(expected("/dev/dma_heap/system", "CONFIG_DMABUF_HEAPS_SYSTEM")));
        CHECK(udmabuf.exit_code() == 77);
        CHECK_THAT(udmabuf.err, contains(expected("/dev/udmabuf", "CONFIG_UDMABUF")));
        CHECK(reader.exit_code() == 77);
        CHECK_THAT(reader.err, contains("make vm-05"));
        for (const Process* p : {&heap, &udmabuf, &reader})
            CHECK(std::count(p->err.begin(), p->err.end(), '\n') == 1);
    }
    CHECK(dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("05: a message and 1 MiB of random bytes arrive intact through a dma-buf", "[05]") {
    const bool heap = usable("/dev/dma_heap/system"), udmabuf = usable("/dev/udmabuf");
    if (!heap && !udmabuf)
        SKIP_TEST("no usable /dev/dma_heap/system or /dev/udmabuf on this machine; make vm-05 runs it in a "
                  "virtual machine");
    LeakCheck leaks;
    TempDir dir;
    const std::vector<std::string> name = {"--name", dir.file("sock")};
    leaks.watch_path(dir.file("sock"));
    const std::string data = random_bytes(1 << 20, 51);
    std::vector<std::vector<std::string>> sources;
    if (heap)
        sources.push_back({});
    if (udmabuf)
        sources.push_back({"--udmabuf"});
    for (const auto& source : sources) {
        ProcessGroup group;
        std::vector<std::string> options = source;
        options.push_back("--quiet");
        Process& writer = group.start("writer", command("05-dma-buf/writer", name, "10", options), Stdin::kPipe);
        Process& reader = group.start("reader", command("05-dma-buf/reader", name, "10", {"--quiet"}));
        group.feed(writer, data, true);
        group.wait(writer);
        group.wait(reader);
        INFO("source " << (source.empty() ? "heap" : "udmabuf") << "; writer: " << writer.err << " reader: " << reader.err);
        CHECK(writer.exit_code() == 0);
        CHECK(reader.exit_code() == 0);
        CHECK(reader.out == data);
    }
    check_nothing_left(leaks);
}

TEST_CASE("05: the reader refuses a memfd by its file system type, before any ioctl on it", "[05]") {
    // Chapter 04's writer speaks the same protocol and hands over a memfd: the reader must see
    // from fstatfs that it is not a dma-buf, and say so, rather than try DMA_BUF_IOCTL_SYNC on it.
    if (!usable("/dev/dma_heap/system") && !usable("/dev/udmabuf"))
        SKIP_TEST("no usable /dev/dma_heap/system or /dev/udmabuf here, so the reader exits 77 before it connects; "
                  "make exercise-05 runs this case in chapter 05's virtual machine");
    LeakCheck leaks;
    TempDir dir;
    const std::vector<std::string> name = {"--name", dir.file("sock")};
    leaks.watch_path(dir.file("sock"));
    {
        ProcessGroup group(std::chrono::seconds(30));
        Process& writer = group.start("04 writer", command("04-fd-passing/writer", name, "10", {"--quiet", "not a dma-buf"}));
        Process& reader = group.start("05 reader", command("05-dma-buf/reader", name, "10"));
        group.wait(reader);
        group.wait(writer); // it sees its reader go and cleans up
        INFO("reader: " << reader.err << "writer: " << writer.err);
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.err, contains("is not a dma-buf (its file system type is 0x1021994, not DMA_BUF_MAGIC"));
        CHECK(reader.err.find("DMA_BUF_IOCTL_SYNC") == std::string::npos);
        CHECK(reader.out.empty());
    }
    CHECK(dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("05: usage errors exit 2 with a pointer to --help", "[05]") {
    const std::string w = binary("05-dma-buf/writer");
    const std::string r = binary("05-dma-buf/reader");
    check_usage_errors({
        {w, "--bogus"}, {w, "--name", "@"}, {w, "--keep"}, {r, "extra"}, {r, "--udmabuf"}, {r, "--timeout", "x"},
    });
}

TEST_CASE("05 step 1: the bare pair carries its message, or its writer exits 77 and says why", "[05]") {
    LeakCheck leaks;
    TempDir dir;
    const std::string socket_path = dir.file("hello.sock");
    leaks.watch_path(socket_path);
    bool skipped = false;
    {
        ProcessGroup group(std::chrono::seconds(30));
        Process& writer = group.start("hello_writer", {binary("05-dma-buf/hello_writer"), socket_path});
        group.wait_for_stderr(writer, "hello_writer:");
        if (writer.err.find("listening on") == std::string::npos) {
            group.wait(writer);
            INFO("writer: " << writer.err);
            CHECK(writer.exit_code() == 77);
            CHECK_THAT(writer.err, contains("neither /dev/dma_heap/system nor /dev/udmabuf can be opened"));
            skipped = writer.exit_code() == 77;
        } else {
            Process& reader = group.start("hello_reader", {binary("05-dma-buf/hello_reader"), socket_path});
            group.wait(writer);
            group.wait(reader);
            INFO("writer: " << writer.err << "reader: " << reader.err);
            CHECK(reader.out == "hello, dma-buf\n");
            CHECK(writer.exit_code() == 0);
            CHECK(reader.exit_code() == 0);
        }
    }
    CHECK(dir.entries().empty());
    check_nothing_left(leaks);
    if (skipped)
        SKIP_TEST("no usable /dev/dma_heap/system or /dev/udmabuf here (the writer exited 77, as it must); make vm-05 "
                  "runs the bare pair in a virtual machine");
}

TEST_CASE("05: the notes quote the bare pair exactly as it is in the files", "[05]") {
    auto read_file = [](const std::string& path) {
        std::ifstream in(path);
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    };
    const std::string source = SHMTUT_SOURCE_DIR;
    const std::string notes = read_file(source + "/05-dma-buf/README.md");
    REQUIRE_FALSE(notes.empty());
    for (const char* program : {"hello_writer.cpp", "hello_reader.cpp"}) {
        const std::string code = read_file(source + "/05-dma-buf/" + program);
        INFO(program << " must appear whole in 05-dma-buf/README.md, in a ```cpp block");
        REQUIRE_FALSE(code.empty());
        CHECK(notes.find("```cpp\n" + code + "```\n") != std::string::npos);
    }
}

// common/fdpass: chapter 04's calls as chapter 05 (and later chapters) take them. They need no
// dma-buf device, so they are tested here on any machine.

namespace {

/// A descriptor to pass around: a small memfd.
shmtut::UniqueFd small_memfd() {
    shmtut::UniqueFd fd(::memfd_create("fdpass-test", MFD_CLOEXEC));
    REQUIRE(fd);
    return fd;
}

/// What receive_with_fds() says about `fds` sent with 16 bytes, when it expects exactly one.
std::string receive_one_of(const std::vector<int>& fds, bool split = false) {
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
    shmtut::UniqueFd sender(pair[0]), receiver(pair[1]);
    const char data[16] = "fifteen bytes..";
    if (split) { // 8 bytes with the descriptors, then 8 more with them again
        shmtut::send_with_fds(sender.get(), data, 8, fds, "first half");
        shmtut::send_with_fds(sender.get(), data + 8, 8, fds, "second half");
    } else {
        shmtut::send_with_fds(sender.get(), data, sizeof data, fds, "message");
    }
    char got[16] = {};
    try {
        shmtut::Deadline deadline(5);
        std::vector<shmtut::UniqueFd> received =
            shmtut::receive_with_fds(receiver.get(), got, sizeof got, 1, "the message", &deadline);
        int flags = ::fcntl(received.front().get(), F_GETFD);
        return (flags & FD_CLOEXEC) != 0 ? "accepted, close-on-exec" : "accepted, NOT close-on-exec";
    } catch (const std::exception& e) {
        return e.what();
    }
}

} // namespace

TEST_CASE("05 fdpass: exactly the expected descriptors, close-on-exec, or a refusal that closes them", "[05][fdpass]") {
    // qemu-user receives into a control buffer of its own: it neither closes the descriptors that
    // do not fit nor sets MSG_CTRUNC.
    if (auto why = testsupport::emulator_cannot("MSG_CTRUNC: descriptors that do not fit are left open"); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    {
        shmtut::UniqueFd memfd = small_memfd();
        const int fd = memfd.get();
        CHECK(receive_one_of({fd}) == "accepted, close-on-exec");
        CHECK_THAT(receive_one_of({}), contains("came with 0 descriptor(s), expected exactly 1"));
        // CMSG_SPACE(sizeof(int)) holds two descriptors on 64-bit machines only (alignment).
        CHECK_THAT(receive_one_of({fd, fd}), contains(sizeof(void*) == 8 ? "came with 2 descriptor(s), expected exactly 1"
                                                                         : "MSG_CTRUNC"));
        CHECK_THAT(receive_one_of({fd, fd, fd, fd}), contains("MSG_CTRUNC"));
        CHECK_THAT(receive_one_of({fd}, true), contains("a descriptor arrived with a later part of the message"));
    }
    check_nothing_left(leaks); // every descriptor received, accepted or refused, was closed
}

TEST_CASE("05 fdpass: connect_unix is bounded when the listener never accepts, and never follows a link",
          "[05][fdpass]") {
    LeakCheck leaks;
    TempDir dir;
    const std::string path = dir.file("sock");
    leaks.watch_path(path);
    {
        sockaddr_un address{};
        socklen_t length = shmtut::unix_address(path, address);
        shmtut::UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
        REQUIRE(::listen(listener.get(), 0) == 0);
        shmtut::UniqueFd queued(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(::connect(queued.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
        std::string refusal;
        try {
            shmtut::connect_unix(path, shmtut::Deadline(0.5), "start it", {});
        } catch (const shmtut::SysError& e) {
            refusal = std::string(e.what()) + ": " + e.hint();
        }
        CHECK_THAT(refusal, contains("accepted nobody within 0.5 s"));

        const std::string link = dir.file("link");
        REQUIRE(::symlink(path.c_str(), link.c_str()) == 0);
        refusal.clear();
        try {
            shmtut::connect_unix(link, shmtut::Deadline(0.5), "start it", {});
        } catch (const shmtut::Failure& e) {
            refusal = e.what();
        }
        CHECK_THAT(refusal, contains("is not a socket (a symbolic link)"));
        ::unlink(link.c_str());
        ::unlink(path.c_str());
    }
    check_nothing_left(leaks);
}

TEST_CASE("05 fdpass: listen_unix never replaces a live listener, and replaces a dead one's file only when forced",
          "[05][fdpass]") {
    LeakCheck leaks;
    TempDir dir;
    const std::string path = dir.file("sock");
    leaks.watch_path(path);
    shmtut::Narrator quiet("test", true);
    auto refusal_of = [&](bool force) {
        try {
            shmtut::SocketFile file(quiet);
            shmtut::UniqueFd listener = shmtut::listen_unix(path, force, 1, file, quiet);
            file.path.clear(); // keep the file: the caller looks at it
            return std::string("listening");
        } catch (const shmtut::SysError& e) {
            return std::string(e.what()) + ": " + e.hint();
        }
    };
    {
        shmtut::SocketFile first_file(quiet);
        shmtut::UniqueFd first = shmtut::listen_unix(path, false, 1, first_file, quiet);
        CHECK_THAT(refusal_of(false), contains("a writer is running there"));
        CHECK_THAT(refusal_of(true), contains("a writer is running there"));
        first_file.path.clear();
    } // closed: the file stays, nobody listens
    CHECK_THAT(refusal_of(false), contains("remove it with: rm " + path));
    CHECK(refusal_of(true) == "listening");
    ::unlink(path.c_str());
    REQUIRE(::symlink("/etc/hostname", path.c_str()) == 0);
    CHECK_THAT(refusal_of(true), contains("not following it, not removing it"));
    struct stat info {};
    CHECK((::lstat(path.c_str(), &info) == 0 && S_ISLNK(info.st_mode)));
    ::unlink(path.c_str());
    {
        // An abstract name has no file to be stale: whoever holds it is alive, --force or not.
        const std::string abstract = "@" + unique_name("shmtut-fdpass");
        sockaddr_un address{};
        socklen_t length = shmtut::unix_address(abstract, address);
        shmtut::UniqueFd holder(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(::bind(holder.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
        shmtut::SocketFile file(quiet);
        std::string refusal;
        try {
            shmtut::listen_unix(abstract, true, 1, file, quiet);
        } catch (const shmtut::SysError& e) {
            refusal = e.hint();
        }
        CHECK_THAT(refusal, contains("another process holds this abstract name"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("05 fdpass: a client that says nothing is never taken for the one that asks", "[05][fdpass]") {
    LeakCheck leaks;
    TempDir dir;
    const std::string path = dir.file("sock");
    leaks.watch_path(path);
    {
        shmtut::Narrator quiet("test", true);
        shmtut::SocketFile file(quiet);
        shmtut::UniqueFd listener = shmtut::listen_unix(path, false, 4, file, quiet);
        shmtut::Callers callers(quiet, 4, [](const std::vector<char>& request) {
            return std::string(request.begin(), request.end()) == "ASK!" ? "" : "did not ask";
        });
        shmtut::UniqueFd silent = shmtut::connect_unix(path, shmtut::Deadline(5), "", {});
        shmtut::UniqueFd asking = shmtut::connect_unix(path, shmtut::Deadline(5), "", {});
        shmtut::send_with_fds(asking.get(), "ASK!", 4, {}, "ask");
        shmtut::UniqueFd chosen = shmtut::wait_for_asking_client(listener.get(), callers, shmtut::Deadline(5));
        REQUIRE(chosen);
        CHECK(shmtut::peer_credentials(chosen.get()).pid == ::getpid());
        // The chosen one is the asking client: what it sends next arrives there.
        shmtut::send_with_fds(asking.get(), "next", 4, {}, "next");
        char got[4] = {};
        shmtut::Deadline deadline(5);
        shmtut::receive_with_fds(chosen.get(), got, sizeof got, 0, "next", &deadline);
        CHECK(std::string(got, 4) == "next");
        // The silent one is still waiting, not served.
        CHECK_FALSE(shmtut::wait_for_asking_client(listener.get(), callers, shmtut::Deadline(0.3)));
    }
    check_nothing_left(leaks);
}

TEST_CASE("05 fdpass: listen_unix leaves another user's socket file alone, --force or not", "[05][fdpass]") {
    std::optional<RunAs> other = unprivileged_ids();
    if (!other)
        SKIP_TEST("not root: this case gives a socket file to another uid");
    LeakCheck leaks;
    TempDir dir;
    const std::string path = dir.file("theirs");
    leaks.watch_path(path);
    shmtut::Narrator quiet("test", true);
    {
        sockaddr_un address{};
        socklen_t length = shmtut::unix_address(path, address);
        shmtut::UniqueFd leftover(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(::bind(leftover.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
    } // closed: a file nobody listens on, as a crashed run of that user leaves it
    REQUIRE(::chown(path.c_str(), other->uid, other->gid) == 0);
    std::string refusal;
    try {
        shmtut::SocketFile file(quiet);
        shmtut::UniqueFd listener = shmtut::listen_unix(path, true, 1, file, quiet);
        file.path.clear();
        refusal = "listening";
    } catch (const shmtut::SysError& e) {
        refusal = std::string(e.what()) + ": " + e.hint();
    }
    CHECK_THAT(refusal, contains("the socket file there belongs to uid " + std::to_string(other->uid)));
    CHECK_THAT(refusal, contains("another user: a default name is the same for every user of a machine"));
    struct stat info {};
    REQUIRE(::lstat(path.c_str(), &info) == 0); // still there, still theirs
    CHECK(info.st_uid == other->uid);
    ::unlink(path.c_str());
    check_nothing_left(leaks);
}
