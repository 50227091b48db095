/// @file tests/test_interop.cpp
/// @brief Other CPUs and other languages: what differs on 32-bit ARM (make test-cross), and the
///        Python and Rust peers of interop/ against the C++ programs (make interop).
#include "support.hpp"

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <new>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../03-memfd/protocol.hpp"
#include "catch.hpp"
#include "layout.hpp"
#include "owners.hpp"

using namespace testsupport;

TEST_CASE("03: a sealed memfd larger than 4 GiB is read on 64-bit and refused on 32-bit, never mapped short",
          "[03][cross]") {
    // fstat reports a 64-bit size everywhere (armhf is built with _FILE_OFFSET_BITS=64), but mmap
    // takes a size_t, which has 32 bits on armhf. A reader that passed the size on unchecked would
    // map (4 GiB + 4 KiB) mod 4 GiB = 4 KiB, validate the header against the full size, and read
    // the first block past the end of its mapping: SIGSEGV. The test plays the writer.
    LeakCheck leaks;
    {
        const std::uint64_t capacity = std::uint64_t{1} << 32;
        const std::uint64_t size = capacity + 4096; // the header and the capacity fit
        const std::uint64_t block_length = 64 * 1024;
        shmtut::UniqueFd fd(::memfd_create("shmtut-test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
        REQUIRE(fd);
        REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0); // sparse: no memory is used
        void* base = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        REQUIRE(base != MAP_FAILED);
        shmtut::Mapping first_page(base, 4096);
        shmtut::SharedHeader& header = *shmtut::construct_header(base);
        memfd::Sync& sync = *new (header.chapter_area) memfd::Sync{};
        shmtut::publish_header(header, capacity, static_cast<std::uint32_t>(::getpid()), 0);
        shmtut::publish_block(header, block_length, 1, true);
        sync.published.store(1, std::memory_order_release);
        REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);

        ProcessGroup group;
        Process& reader = group.start("reader", {binary("03-memfd/reader"), "--pid", std::to_string(::getpid()),
                                                 "--fd", std::to_string(fd.get()), "--timeout", "10"});
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.killed_by() == 0);
        if (sizeof(void*) == 4) {
            CHECK(reader.exit_code() == 1);
            CHECK_THAT(reader.last_error_line(), contains("do not fit in this process's address space"));
            CHECK(reader.out.empty());
        } else {
            CHECK(reader.exit_code() == 0);
            CHECK(reader.out == std::string(block_length, '\0'));
        }
    }
    check_nothing_left(leaks);
}

// ---------------------------------------------------------------------------------------------
// The Python peers of interop/python against the C++ programs, both ways (make interop).

namespace {

const char* const kPython = "/usr/bin/python3";

std::string python_peer(const std::string& script) {
    return std::string(SHMTUT_SOURCE_DIR) + "/interop/python/" + script;
}

/// Why a Python case cannot run here, or "".
std::string python_missing() {
    if (::access(kPython, X_OK) != 0)
        return "Debian's python3 is not installed (make interop installs it)";
    return {};
}

/// "--pid P --fd N" as printed by a writer of chapter 03 (C++ or Python): {"P", "N"}.
std::vector<std::string> printed_pid_and_fd(const Process& writer) {
    std::string::size_type at = writer.err.find("reader --pid ");
    REQUIRE(at != std::string::npos);
    int pid = 0, fd = -1;
    REQUIRE(std::sscanf(writer.err.c_str() + at, "reader --pid %d --fd %d", &pid, &fd) == 2);
    return {std::to_string(pid), std::to_string(fd)};
}

} // namespace

TEST_CASE("interop 03: 1 MiB from the Python writer arrives identical at the C++ reader", "[interop][03]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    const std::string data = random_bytes(1 << 20, 1603);
    {
        ProcessGroup group;
        Process& w = group.start("python writer", {kPython, python_peer("memfd_writer.py"), "--timeout", "30"},
                                 Stdin::kPipe);
        group.wait_for_stderr(w, "reader --pid");
        const auto ids = printed_pid_and_fd(w);
        Process& r = group.start("C++ reader", {binary("03-memfd/reader"), "--pid", ids[0], "--fd", ids[1],
                                                "--timeout", "30"});
        group.feed(w, data, true);
        group.wait(r);
        group.wait(w);
        INFO("writer stderr:\n" << w.err << "\nreader stderr:\n" << r.err);
        CHECK(r.exit_code() == 0);
        CHECK(w.exit_code() == 0);
        CHECK(r.out.size() == data.size());
        CHECK(r.out == data);
        CHECK_THAT(w.err, contains("writer: the reader confirmed the end of the stream"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("interop 03: 1 MiB from the C++ writer arrives identical at the Python reader", "[interop][03]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    const std::string data = random_bytes(1 << 20, 3016);
    {
        ProcessGroup group;
        Process& w = group.start("C++ writer", {binary("03-memfd/writer"), "--timeout", "30"}, Stdin::kPipe);
        group.wait_for_stderr(w, "reader --pid");
        const auto ids = printed_pid_and_fd(w);
        Process& r = group.start("python reader", {kPython, python_peer("memfd_reader.py"), "--pid", ids[0], "--fd",
                                                   ids[1], "--timeout", "30"});
        group.feed(w, data, true);
        group.wait(r);
        group.wait(w);
        INFO("writer stderr:\n" << w.err << "\nreader stderr:\n" << r.err);
        CHECK(r.exit_code() == 0);
        CHECK(w.exit_code() == 0);
        CHECK(r.out.size() == data.size());
        CHECK(r.out == data);
        CHECK_THAT(w.err, contains("writer: the reader confirmed the end of the stream"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("interop 02: 1 MiB from the C++ writer arrives identical at the Python reader, which polls", "[interop][02]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    const std::string name = "/" + unique_name("shmtut-interop");
    leaks.watch_shm_name(name);
    const std::string data = random_bytes(1 << 20, 2002);
    {
        ProcessGroup group;
        Process& w = group.start("C++ writer", {binary("02-posix-mmap/writer"), "--name", name, "--timeout", "30"},
                                 Stdin::kPipe);
        Process& r = group.start("python reader",
                                 {kPython, python_peer("posix_reader.py"), "--name", name, "--timeout", "30"});
        group.feed(w, data, true);
        group.wait(r);
        group.wait(w);
        INFO("writer stderr:\n" << w.err << "\nreader stderr:\n" << r.err);
        CHECK(r.exit_code() == 0);
        CHECK(w.exit_code() == 0);
        CHECK(r.out.size() == data.size());
        CHECK(r.out == data);
        CHECK_THAT(r.err, contains("found by polling the sequence number"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("interop 03: the C++ reader refuses a Python writer that breaks the protocol", "[interop][03]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    const auto [broken, refusal] = GENERATE(table<std::string, std::string>({
        {"unsealed", "has seals none, needs F_SEAL_SHRINK|F_SEAL_GROW: refusing it"},
        {"magic", "header refused: magic"},
        {"capacity", "header refused: data capacity 131072 does not fit"},
        {"pid", "but the descriptor came from pid"},
    }));
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& w = group.start("python writer",
                                 {kPython, python_peer("memfd_writer.py"), "--timeout", "30", "--break", broken, "x"});
        group.wait_for_stderr(w, "reader --pid");
        const auto ids = printed_pid_and_fd(w);
        Process& r = group.start("C++ reader", {binary("03-memfd/reader"), "--pid", ids[0], "--fd", ids[1],
                                                "--timeout", "30"});
        group.wait(r);
        group.signal(w, SIGTERM); // it would wait for a claim until its timeout
        group.wait(w);
        INFO("--break " << broken << "\nreader stderr:\n" << r.err);
        CHECK(r.exit_code() == 1);
        CHECK(r.killed_by() == 0);
        CHECK_THAT(r.last_error_line(), contains(refusal));
        CHECK(r.out.empty());
    }
    check_nothing_left(leaks);
}

TEST_CASE("interop 03: the C++ writer refuses a Python reader that claims without the lock", "[interop][03]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& w = group.start("C++ writer", {binary("03-memfd/writer"), "--timeout", "30", "never read"});
        group.wait_for_stderr(w, "reader --pid");
        const auto ids = printed_pid_and_fd(w);
        Process& r = group.start("python reader", {kPython, python_peer("memfd_reader.py"), "--pid", ids[0], "--fd",
                                                   ids[1], "--timeout", "30", "--break", "nolock"});
        group.wait(w);
        group.wait(r);
        INFO("writer stderr:\n" << w.err << "\nreader stderr:\n" << r.err);
        CHECK(w.exit_code() == 1);
        CHECK_THAT(w.last_error_line(), contains("no claim lock is held: a dead or false reader; refusing the claim"));
        CHECK(r.out.empty());
    }
    check_nothing_left(leaks);
}

// Chapter 04: the memfd over a Unix socket, with the Python peers and the Rust reader.

namespace {

/// The Rust reader, built by make interop into the build folder.
std::string rust_reader() {
    return binary("interop/rust/release/fdpass_reader");
}

/// Runs `writer_argv` (a socket writer of chapter 04 or 06) with `data` on its stdin and `reader_argv`,
/// both to the end; checks both exit 0 and the bytes arrive identical.
void check_socket_pair(const std::vector<std::string>& writer_argv, const std::vector<std::string>& reader_argv,
                   const std::string& data) {
    ProcessGroup group;
    Process& w = group.start("writer", writer_argv, Stdin::kPipe);
    Process& r = group.start("reader", reader_argv);
    group.feed(w, data, true);
    group.wait(r);
    group.wait(w);
    INFO("writer stderr:\n" << w.err << "\nreader stderr:\n" << r.err);
    CHECK(r.exit_code() == 0);
    CHECK(w.exit_code() == 0);
    CHECK(r.out.size() == data.size());
    CHECK(r.out == data);
}

} // namespace

TEST_CASE("interop 04: 1 MiB from the Python writer arrives identical at the C++ reader", "[interop][04]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    TempDir dir;
    const std::string socket_path = dir.file("interop.sock");
    leaks.watch_path(socket_path);
    check_socket_pair({kPython, python_peer("fdpass_writer.py"), "--name", socket_path, "--timeout", "30"},
                  {binary("04-fd-passing/reader"), "--name", socket_path, "--timeout", "30"},
                  random_bytes(1 << 20, 4004));
    check_nothing_left(leaks);
}

TEST_CASE("interop 04: 1 MiB from the C++ writer arrives identical at the Python reader", "[interop][04]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    TempDir dir;
    const std::string socket_path = dir.file("interop.sock");
    leaks.watch_path(socket_path);
    check_socket_pair({binary("04-fd-passing/writer"), "--name", socket_path, "--timeout", "30"},
                  {kPython, python_peer("fdpass_reader.py"), "--name", socket_path, "--timeout", "30"},
                  random_bytes(1 << 20, 4040));
    check_nothing_left(leaks);
}

TEST_CASE("interop 04: 1 MiB from the C++ writer arrives identical at the Rust reader", "[interop][04][rust]") {
    if (::access(rust_reader().c_str(), X_OK) != 0)
        SKIP_TEST("the Rust reader is not built: make interop builds it (Debian's cargo and librust-libc-dev)");
    LeakCheck leaks;
    TempDir dir;
    const std::string socket_path = dir.file("interop.sock");
    leaks.watch_path(socket_path);
    check_socket_pair({binary("04-fd-passing/writer"), "--name", socket_path, "--timeout", "30"},
                  {rust_reader(), "--name", socket_path, "--timeout", "30"}, random_bytes(1 << 20, 4044));
    check_nothing_left(leaks);
}

namespace {

/// Runs `reader_program` against the Python writer of chapter 04 broken on purpose (--break), for
/// each way of breaking it, and checks the refusal: exit 1 with the reason, nothing written.
void check_04_refusals(const std::string& reader_program) {
    // Two descriptors: CMSG_SPACE(sizeof(int)) holds two on 64-bit machines (alignment), so both
    // arrive and are counted; on 32-bit ones only one fits and the kernel sets MSG_CTRUNC.
    const auto [broken, refusal] = GENERATE(table<std::string, std::string>({
        {"two-fds", sizeof(void*) == 8 ? "MEMORY came with 2 descriptors" : "MSG_CTRUNC"},
        {"no-fd", "MEMORY came with 0 descriptors"},
        {"pipe", "refusing it"},
        {"unsealed", "needs F_SEAL_SHRINK|F_SEAL_GROW"},
        {"long-block", "block refused: length 65537 exceeds the data capacity 65536"},
        {"version", "version 1"},
    }));
    // qemu-user neither sets MSG_CTRUNC nor closes what does not fit: on 32-bit, one of the two
    // descriptors arrives, alone.
    if (broken == "two-fds" && sizeof(void*) == 4)
        if (auto why = emulator_cannot("MSG_CTRUNC: descriptors that do not fit are left open"); !why.empty())
            SKIP_TEST(why);
    LeakCheck leaks;
    TempDir dir;
    const std::string socket_path = dir.file("interop.sock");
    leaks.watch_path(socket_path);
    {
        ProcessGroup group;
        Process& w = group.start("python writer", {kPython, python_peer("fdpass_writer.py"), "--name", socket_path,
                                                   "--timeout", "30", "--break", broken, "x"});
        Process& r = group.start("reader", {reader_program, "--name", socket_path, "--timeout", "30"});
        group.wait(r);
        group.wait(w); // the connection closed: it fails too
        INFO(reader_program << ", --break " << broken << "\nreader stderr:\n" << r.err << "\nwriter stderr:\n" << w.err);
        CHECK(r.exit_code() == 1);
        CHECK(r.killed_by() == 0);
        CHECK_THAT(r.last_error_line(), contains(refusal));
        CHECK(r.out.empty());
    }
    check_nothing_left(leaks);
}

} // namespace

TEST_CASE("interop 04: the C++ reader refuses a Python writer that breaks the protocol", "[interop][04]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    check_04_refusals(binary("04-fd-passing/reader"));
}

TEST_CASE("interop 04: the Rust reader refuses a Python writer that breaks the protocol", "[interop][04][rust]") {
    if (auto why = python_missing(); !why.empty())
        SKIP_TEST(why);
    if (::access(rust_reader().c_str(), X_OK) != 0)
        SKIP_TEST("the Rust reader is not built: make interop builds it (Debian's cargo and librust-libc-dev)");
    check_04_refusals(rust_reader());
}

TEST_CASE("interop 06: 3 MiB from the C++ pool writer arrive identical at the Rust pool reader", "[interop][06][rust]") {
    const std::string reader = binary("interop/rust/release/pool_reader");
    if (::access(reader.c_str(), X_OK) != 0)
        SKIP_TEST("the Rust readers are not built: make interop builds them (Debian's cargo and librust-libc-dev)");
    LeakCheck leaks;
    TempDir dir;
    const std::string socket_path = dir.file("pool.sock");
    leaks.watch_path(socket_path);
    // More than the pool holds (8 slots of 64 KiB): slots are loaned, returned and filled again.
    check_socket_pair({binary("06-zero-copy/writer"), "--name", socket_path, "--timeout", "30"},
                  {reader, "--name", socket_path, "--timeout", "30"}, random_bytes(3 << 20, 6006));
    check_nothing_left(leaks);
}

// A pid is a number in one pid namespace: the writer's header names its pid as it sees it (1 in
// a fresh namespace), SO_PEERCRED gives the reader the same process's pid in the reader's
// namespace. The connection is the proof of who sent the memory, as for the C++ readers
// (test_contract.cpp, "across pid namespaces"): a Rust reader that compared the two numbers
// would refuse a genuine writer in a container.
TEST_CASE("interop 04 and 06: a Rust reader takes the stream of a C++ writer in another pid namespace",
          "[interop][04][06][rust]") {
    const auto [chapter, writer, reader] = GENERATE(table<std::string, std::string, std::string>({
        {"04", "04-fd-passing/writer", "interop/rust/release/fdpass_reader"},
        {"06", "06-zero-copy/writer", "interop/rust/release/pool_reader"},
    }));
    if (::access(binary(reader).c_str(), X_OK) != 0)
        SKIP_TEST("the Rust readers are not built: make interop builds them (Debian's cargo and librust-libc-dev)");
    std::vector<std::string> writer_argv = unshare_for({"--pid", "--fork"});
    if (writer_argv.empty())
        SKIP_TEST("unshare --pid is not allowed here (not root, and no unprivileged user namespaces)");
    LeakCheck leaks;
    TempDir dir;
    const std::string socket_path = dir.file("pidns.sock");
    leaks.watch_path(socket_path);
    for (const std::string& word : {binary(writer), std::string("--name"), socket_path, std::string("--timeout"),
                                    std::string("30"), std::string("across pid namespaces")})
        writer_argv.push_back(word);
    {
        ProcessGroup group;
        Process& w = group.start("writer", writer_argv);
        Process& r = group.start("reader", {binary(reader), "--name", socket_path, "--timeout", "30"});
        group.wait(r);
        group.wait(w);
        INFO("chapter " << chapter << "\nwriter stderr:\n" << w.err << "\nreader stderr:\n" << r.err);
        CHECK(r.exit_code() == 0);
        CHECK(w.exit_code() == 0);
        CHECK(r.out == "across pid namespaces\n");
    }
    check_nothing_left(leaks);
}

// A writer that dies mid-stream cannot remove its socket file: the Rust readers, like the C++
// ones, say that the writer is gone and remove the file, since nobody listens on it any more.
TEST_CASE("interop 04 and 06: a Rust reader reports a killed C++ writer and removes its socket file",
          "[interop][04][06][rust]") {
    const auto [writer, reader] = GENERATE(table<std::string, std::string>({
        {"04-fd-passing/writer", "interop/rust/release/fdpass_reader"},
        {"06-zero-copy/writer", "interop/rust/release/pool_reader"},
    }));
    if (::access(binary(reader).c_str(), X_OK) != 0)
        SKIP_TEST("the Rust readers are not built: make interop builds them (Debian's cargo and librust-libc-dev)");
    LeakCheck leaks;
    TempDir dir;
    const std::string socket_path = dir.file("killed.sock");
    leaks.watch_path(socket_path);
    {
        ProcessGroup group;
        Process& w = group.start("writer", {binary(writer), "--name", socket_path, "--timeout", "30"}, Stdin::kPipe);
        Process& r = group.start("reader", {binary(reader), "--name", socket_path, "--timeout", "60"});
        group.feed(w, "first\n", false);
        group.wait_for_stdout(r, 6);
        group.signal(w, SIGKILL);
        group.wait(w);
        group.wait(r);
        INFO("reader stderr:\n" << r.err);
        CHECK(r.exit_code() == 1);
        CHECK(r.out == "first\n");
        CHECK_THAT(r.last_error_line(), contains("died before the end of the stream"));
        CHECK_THAT(r.err, contains("removed the socket file the dead writer left"));
    }
    CHECK(dir.entries().empty());
    check_nothing_left(leaks);
}
