/// @file tests/test_06_zero_copy.cpp
/// @brief Chapter 06 end to end: the pool pair carries the stream, waits when every slot is on
///        loan, notices a dead peer while it waits for a slot, and each side refuses every index
///        and length the other cannot give (the test plays the hostile peer over the socket).
///        The contract every chapter keeps (reader first, dead peers, a second reader, a stale
///        socket, usage, --help) is tests/test_contract.cpp's row for chapter 06; the bare step-1
///        pair and the benchmark's smoke test are here too.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <csignal>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../06-zero-copy/pool.hpp"
#include "catch.hpp"
#include "layout.hpp"
#include "owners.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

/// One test's private socket path and the command lines that use it.
struct Chapter06 {
    TempDir dir;
    std::string name = dir.file("sock");
    std::vector<std::string> writer(const std::string& timeout, std::vector<std::string> extra = {}) const {
        return command("06-zero-copy/writer", {"--name", name}, timeout, extra);
    }
    std::vector<std::string> reader(const std::string& timeout, std::vector<std::string> extra = {}) const {
        return command("06-zero-copy/reader", {"--name", name}, timeout, extra);
    }
};

sockaddr_un address_of(const std::string& path, socklen_t& length) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    REQUIRE(path.size() < sizeof address.sun_path);
    std::memcpy(address.sun_path, path.data(), path.size());
    length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return address;
}

/// A listening socket at `path`: the test plays the writer.
shmtut::UniqueFd listen_at(const std::string& path) {
    socklen_t length = 0;
    sockaddr_un address = address_of(path, length);
    shmtut::UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(listener);
    REQUIRE(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
    REQUIRE(::listen(listener.get(), 1) == 0);
    return listener;
}

/// Accepts the real reader's connection, failing the test after 10 s.
shmtut::UniqueFd accept_within(int listener) {
    pollfd entry{listener, POLLIN, 0};
    REQUIRE(::poll(&entry, 1, 10000) == 1);
    shmtut::UniqueFd connection(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(connection);
    return connection;
}

/// Connects to the real writer's socket without a word.
shmtut::UniqueFd connect_silently(const std::string& path) {
    socklen_t length = 0;
    sockaddr_un address = address_of(path, length);
    shmtut::UniqueFd connection(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(connection);
    REQUIRE(::connect(connection.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0);
    return connection;
}

/// Connects to the real writer's socket and asks for the pool: the test plays the reader.
shmtut::UniqueFd connect_to(const std::string& path) {
    shmtut::UniqueFd connection = connect_silently(path);
    const pool::Message ask{pool::kMagic, pool::kAsk, 0, 0};
    REQUIRE(::send(connection.get(), &ask, sizeof ask, MSG_NOSIGNAL) == sizeof ask);
    return connection;
}

void send_messages(int socket_fd, const std::vector<pool::Message>& messages) {
    const auto bytes = messages.size() * sizeof(pool::Message);
    REQUIRE(::send(socket_fd, messages.data(), bytes, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes));
}

/// Receives one 16-byte message (and the descriptor that may come with it), failing after 10 s.
pool::Message receive_message(int socket_fd, shmtut::UniqueFd* descriptor = nullptr) {
    pool::Message message{};
    std::size_t have = 0;
    while (have < sizeof message) {
        pollfd entry{socket_fd, POLLIN, 0};
        REQUIRE(::poll(&entry, 1, 10000) == 1);
        iovec iov{reinterpret_cast<char*>(&message) + have, sizeof message - have};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
        msghdr header{};
        header.msg_iov = &iov;
        header.msg_iovlen = 1;
        header.msg_control = control;
        header.msg_controllen = sizeof control;
        ssize_t n = ::recvmsg(socket_fd, &header, MSG_CMSG_CLOEXEC);
        REQUIRE(n > 0);
        if (cmsghdr* cmsg = CMSG_FIRSTHDR(&header); cmsg != nullptr && cmsg->cmsg_type == SCM_RIGHTS) {
            int fd = -1;
            std::memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
            shmtut::UniqueFd owned(fd);
            if (descriptor != nullptr)
                *descriptor = std::move(owned);
        }
        have += static_cast<std::size_t>(n);
    }
    REQUIRE(message.magic == pool::kMagic);
    return message;
}

/// A pool as the real writer makes it (4 slots of 4096 bytes, sealed), with a header naming this
/// process, which the reader sees as the writer through SO_PEERCRED.
shmtut::UniqueFd make_pool(std::uint32_t slot_count = 4, std::uint64_t slot_size = 4096,
                           std::uint64_t claimed_capacity = 0) {
    const auto size = static_cast<std::size_t>(pool::kSlotsOffset + slot_count * slot_size);
    shmtut::UniqueFd fd(::memfd_create("shmtut-test-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    REQUIRE(base != MAP_FAILED);
    shmtut::SharedHeader* header = shmtut::construct_header(base);
    pool::geometry_of(*header).slot_count.store(slot_count);
    pool::geometry_of(*header).slot_size.store(slot_size);
    std::memset(static_cast<char*>(base) + pool::kSlotsOffset, 'p', static_cast<std::size_t>(slot_count * slot_size));
    shmtut::publish_header(*header, claimed_capacity != 0 ? claimed_capacity : slot_count * slot_size,
                           static_cast<std::uint32_t>(::getpid()), 0);
    ::munmap(base, size);
    REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
    return fd;
}

/// Sends HELLO with `pool_fd`, as the writer does.
void send_hello(int socket_fd, int pool_fd) {
    pool::Message hello{pool::kMagic, pool::kHello, 0, 0};
    iovec iov{&hello, sizeof hello};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr header{};
    header.msg_iov = &iov;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof control;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&header);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &pool_fd, sizeof pool_fd);
    REQUIRE(::sendmsg(socket_fd, &header, MSG_NOSIGNAL) == sizeof hello);
}

pool::Message filled(std::uint32_t slot, std::uint32_t length) {
    return {pool::kMagic, pool::kFilled, slot, length};
}
pool::Message returned(std::uint32_t slot) {
    return {pool::kMagic, pool::kReturned, slot, 0};
}
const pool::Message kEndMessage{pool::kMagic, pool::kEnd, 0, 0};
const pool::Message kDoneMessage{pool::kMagic, pool::kDone, 0, 0};

/// `count` messages of 4096 bytes each, filled with 'a', 'b', 'c'...: with 4096-byte slots, each
/// slot carries one letter, so a slot's content says which message it holds.
std::vector<std::string> lettered_messages(int count) {
    std::vector<std::string> messages;
    for (int i = 0; i < count; ++i)
        messages.push_back(std::string(4095, static_cast<char>('a' + i)));
    return messages;
}

/// Plays the writer against the real reader (or `reader_program`, another reader of the same
/// protocol: interop's Rust one): hands it a good pool, then `hostile` messages. Returns the
/// reader's last error line; checks it exited 1, printed nothing and left nothing.
std::string reader_refusal(const std::vector<pool::Message>& hostile, shmtut::UniqueFd pool_fd = {},
                           const std::string& reader_program = {}) {
    LeakCheck leaks;
    Chapter06 chapter;
    std::string refusal;
    {
        shmtut::UniqueFd listener = listen_at(chapter.name);
        ProcessGroup group;
        Process& reader = group.start("reader", reader_program.empty()
                                                    ? chapter.reader("10")
                                                    : std::vector<std::string>{reader_program, "--name", chapter.name,
                                                                               "--timeout", "10"});
        shmtut::UniqueFd connection = accept_within(listener.get());
        if (!pool_fd)
            pool_fd = make_pool();
        send_hello(connection.get(), pool_fd.get());
        pool_fd.reset();
        if (!hostile.empty())
            send_messages(connection.get(), hostile);
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.killed_by() == 0);
        CHECK(reader.out.empty());
        refusal = reader.last_error_line();
        ::unlink(chapter.name.c_str());
    }
    check_nothing_left(leaks);
    return refusal;
}

/// Plays the reader against the real writer (4 slots of 4096 bytes, sending "x"): takes the pool
/// and the first FILLED and END, then sends `hostile`. Returns the writer's last error line; checks it
/// exited 1 and removed its socket file.
std::string writer_refusal(const std::vector<pool::Message>& hostile) {
    LeakCheck leaks;
    Chapter06 chapter;
    std::string refusal;
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("10", {"--slots", "4", "--slot-size", "4096", "x"}));
        group.wait_for_stderr(writer, "waiting up to");
        {
            shmtut::UniqueFd connection = connect_to(chapter.name);
            shmtut::UniqueFd pool_fd;
            CHECK(receive_message(connection.get(), &pool_fd).type == pool::kHello);
            CHECK(pool_fd);
            pool::Message first = receive_message(connection.get());
            CHECK(first.type == pool::kFilled);
            CHECK(first.slot == 0);
            // After END the writer is certainly reading replies (before it, it may read them
            // between two messages: the same refusals, but DONE would be refused as early).
            CHECK(receive_message(connection.get()).type == pool::kEnd);
            send_messages(connection.get(), hostile);
            group.wait(writer);
        }
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        refusal = writer.last_error_line();
    }
    CHECK(chapter.dir.entries().empty()); // the socket file is gone
    check_nothing_left(leaks);
    return refusal;
}

} // namespace

TEST_CASE("06: the bare step-1 pair carries its message and leaves nothing", "[06][hello]") {
    LeakCheck leaks;
    TempDir dir;
    const std::string path = dir.file("hello.sock");
    {
        ProcessGroup group;
        Process& writer = group.start("hello_writer", {binary("06-zero-copy/hello_writer"), path});
        group.pump_until([&] { return ::access(path.c_str(), F_OK) == 0 || writer.finished(); }, "the socket file");
        Process& reader = group.start("hello_reader", {binary("06-zero-copy/hello_reader"), path});
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "hello from slot 2 of the pool\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
    }
    CHECK(dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("06: the notes quote the bare pair exactly as it is in the files", "[06][hello]") {
    const std::string folder = std::string(SHMTUT_SOURCE_DIR) + "/06-zero-copy/";
    auto text_of = [](const std::string& path) {
        std::ifstream file(path);
        return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    };
    const std::string notes = text_of(folder + "README.md");
    REQUIRE_FALSE(notes.empty());
    for (const char* program : {"hello_writer.cpp", "hello_reader.cpp"}) {
        const std::string code = text_of(folder + program);
        INFO(program << " must appear whole in 06-zero-copy/README.md, in a ```cpp block");
        REQUIRE_FALSE(code.empty());
        CHECK(notes.find("```cpp\n" + code + "```\n") != std::string::npos);
    }
}

TEST_CASE("06: 4 MiB of random bytes arrive identical through 2 slots, with a reader slower than the writer",
          "[06]") {
    LeakCheck leaks;
    Chapter06 chapter;
    const std::string data = random_bytes(4 << 20, 61);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("30", {"--slots", "2", "--slot-size", "4096"}),
                                      Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("30"));
        group.wait_for_stderr(reader, "header valid");
        // The reader stops, as a slow one would: the writer fills both slots and must then wait
        // for one to come back instead of overwriting it.
        group.signal(reader, SIGSTOP);
        group.feed(writer, data, true);
        group.wait_for_stderr(writer, "all 2 slots are on loan to the reader: waiting");
        group.signal(reader, SIGCONT);
        group.wait(writer);
        group.wait(reader);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(writer.exit_code() == 0);
        CHECK(reader.exit_code() == 0);
        CHECK(reader.out.size() == data.size());
        CHECK(reader.out == data);
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("06: a killed reader is reported dead by a writer waiting for a free slot", "[06]") {
    LeakCheck leaks;
    Chapter06 chapter;
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("60", {"--slots", "1", "--slot-size", "4096"}),
                                      Stdin::kPipe);
        Process& reader = group.start("reader", chapter.reader("60"));
        group.wait_for_stderr(reader, "header valid");
        group.signal(reader, SIGSTOP);
        group.feed(writer, std::string(3 * 4096, 'w'), false);
        group.wait_for_stderr(writer, "all 1 slots are on loan");
        group.signal(reader, SIGKILL);
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader closed the connection before the end of the stream"));
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("06: a connection that says nothing is not taken for the reader, and a second writer leaves the first alone",
          "[06]") {
    LeakCheck leaks;
    Chapter06 chapter;
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("20", {"for the reader that asks"}));
        group.wait_for_stderr(writer, "waiting up to");
        // Someone connects and says nothing (as anyone checking that the writer is alive does).
        shmtut::UniqueFd silent = connect_silently(chapter.name);
        // A second writer on the same name finds the first alive and leaves it alone.
        Process& second = group.start("second writer", chapter.writer("5", {"x"}));
        group.wait(second);
        CHECK(second.exit_code() == 1);
        CHECK_THAT(second.last_error_line(), contains("a writer is running there"));
        Process& reader = group.start("reader", chapter.reader("20"));
        group.wait(reader);
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err << "reader stderr:\n" << reader.err);
        CHECK(reader.out == "for the reader that asks\n");
        CHECK(reader.exit_code() == 0);
        CHECK(writer.exit_code() == 0);
        CHECK_THAT(writer.err, contains("waiting for it to ask")); // the silent one waited, unserved
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("06: a slot the reader holds keeps its content while the writer runs on", "[06]") {
    LeakCheck leaks;
    Chapter06 chapter;
    {
        ProcessGroup group;
        // 10 messages of one letter each, 4096 bytes: one slot each, through 4 slots.
        std::vector<std::string> args = {"--slots", "4", "--slot-size", "4096"};
        for (const std::string& message : lettered_messages(10))
            args.push_back(message);
        Process& writer = group.start("writer", chapter.writer("20", args));
        group.wait_for_stderr(writer, "waiting up to");
        {
            shmtut::UniqueFd connection = connect_to(chapter.name);
            shmtut::UniqueFd pool_fd;
            REQUIRE(receive_message(connection.get(), &pool_fd).type == pool::kHello);
            REQUIRE(pool_fd);
            const std::size_t size = pool::kSlotsOffset + 4 * 4096;
            void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, pool_fd.get(), 0);
            REQUIRE(base != MAP_FAILED);
            shmtut::Mapping mapping(base, size);
            auto slot_text = [&](std::uint32_t slot) {
                return std::string(static_cast<const char*>(base) + pool::kSlotsOffset + slot * 4096, 4096);
            };
            // Hold the first slot; use and return every other one as it comes.
            pool::Message held = receive_message(connection.get());
            REQUIRE(held.type == pool::kFilled);
            const std::string held_content = slot_text(held.slot);
            CHECK(held_content == std::string(4095, 'a') + "\n");
            std::string others;
            for (int i = 1; i < 10; ++i) {
                pool::Message next = receive_message(connection.get());
                REQUIRE(next.type == pool::kFilled);
                CHECK(next.slot != held.slot); // never a slot the reader holds
                others += slot_text(next.slot).substr(0, next.length);
                CHECK(slot_text(held.slot) == held_content); // the writer ran on; our slot did not change
                send_messages(connection.get(), {returned(next.slot)});
            }
            std::string expected;
            for (const std::string& message : lettered_messages(10))
                expected += message + "\n";
            CHECK(others == expected.substr(4096));
            CHECK(receive_message(connection.get()).type == pool::kEnd);
            CHECK(slot_text(held.slot) == held_content);
            send_messages(connection.get(), {returned(held.slot), kDoneMessage});
            group.wait(writer);
        }
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 0);
        CHECK_THAT(writer.err, contains("10 message(s)"));
    }
    CHECK(chapter.dir.entries().empty());
    check_nothing_left(leaks);
}

TEST_CASE("06 hostile writer: the reader refuses every index and length it cannot be given", "[06][hostile]") {
    SECTION("an index out of range") {
        CHECK_THAT(reader_refusal({filled(4, 10)}),
                   contains("the writer filled slot 4, but the pool has only 4 slots (0 to 3)"));
    }
    SECTION("a huge index") {
        CHECK_THAT(reader_refusal({filled(0xffffffff, 10)}), contains("the pool has only 4 slots"));
    }
    SECTION("a slot the reader still holds") {
        CHECK_THAT(reader_refusal({filled(1, 10), filled(1, 10)}),
                   contains("the writer filled slot 1, which the reader still holds"));
    }
    SECTION("a length past the end of the slot") {
        CHECK_THAT(reader_refusal({filled(3, 4097)}), contains("slot 3 holds 4097 bytes; a slot holds 1 to 4096"));
    }
    SECTION("an empty slot") {
        CHECK_THAT(reader_refusal({filled(0, 0)}), contains("holds 0 bytes"));
    }
    SECTION("a message the writer never sends") {
        CHECK_THAT(reader_refusal({returned(0)}), contains("the writer sent RETURNED, expected FILLED or END"));
    }
    SECTION("garbage on the socket") {
        CHECK_THAT(reader_refusal({pool::Message{0x12345678, pool::kFilled, 0, 1}}), contains("does not start with SHM6"));
    }
    SECTION("a message after END (a writer repeating END without end would grow the reader's queue for ever)") {
        CHECK_THAT(reader_refusal({kEndMessage, kEndMessage}), contains("the writer sent END after END"));
        CHECK_THAT(reader_refusal({kEndMessage, filled(0, 10)}), contains("the writer sent FILLED after END"));
    }
    SECTION("a pool whose slots do not add up to its capacity") {
        CHECK_THAT(reader_refusal({}, make_pool(4, 4096, 4 * 4096 - 1)),
                   contains("4 slots of 4096 bytes do not fit"));
    }
    SECTION("a pool whose slots are not whole pages") {
        CHECK_THAT(reader_refusal({}, make_pool(4, 1000)), contains("4 slots of 1000 bytes do not fit"));
    }
}

// interop/rust/src/pool_reader.rs trusts what the C++ reader trusts: the same hostile writer,
// the same refusals (make interop runs it).
TEST_CASE("06 hostile writer: the Rust pool reader refuses what the C++ reader refuses",
          "[interop][06][rust][hostile]") {
    const std::string rust = binary("interop/rust/release/pool_reader");
    if (::access(rust.c_str(), X_OK) != 0)
        SKIP_TEST("the Rust readers are not built: make interop builds them (Debian's cargo and librust-libc-dev)");
    const auto [hostile, refusal] = GENERATE(table<std::vector<pool::Message>, std::string>({
        {{filled(4, 10)}, "the writer filled slot 4, but the pool has only 4 slots (0 to 3)"},
        {{filled(1, 10), filled(1, 10)}, "the writer filled slot 1, which the reader still holds"},
        {{filled(3, 4097)}, "slot 3 holds 4097 bytes; a slot holds 1 to 4096"},
        {{filled(0, 0)}, "holds 0 bytes"},
        {{returned(0)}, "the writer sent RETURNED, expected FILLED or END"},
        {{pool::Message{0x12345678, pool::kFilled, 0, 1}}, "does not start with SHM6"},
        {{kEndMessage, kEndMessage}, "the writer sent END after END"},
        {{kEndMessage, filled(0, 10)}, "the writer sent FILLED after END"},
        {std::vector<pool::Message>{}, "4 slots of 4096 bytes do not fit"}, // no message: the pool's capacity is one byte short
    }));
    CHECK_THAT(reader_refusal(hostile, hostile.empty() ? make_pool(4, 4096, 4 * 4096 - 1) : shmtut::UniqueFd(), rust),
               contains(refusal));
}

// A writer sees only that the connection ended: the reader may have been killed, or exited after
// an error of its own, or closed the socket and gone on. Here it lives on (the test plays it):
// "the reader died" would be false.
TEST_CASE("06: a reader that closes the connection early and lives on is not reported dead", "[06]") {
    LeakCheck leaks;
    Chapter06 chapter;
    {
        ProcessGroup group;
        Process& writer = group.start("writer", chapter.writer("10", {"--slots", "4", "--slot-size", "4096", "x"}));
        group.wait_for_stderr(writer, "waiting up to");
        {
            shmtut::UniqueFd connection = connect_to(chapter.name);
            shmtut::UniqueFd pool_fd;
            CHECK(receive_message(connection.get(), &pool_fd).type == pool::kHello);
        } // closed, without a word; this process, the reader, goes on
        group.wait(writer);
        INFO("writer stderr:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader closed the connection before the end of the stream"));
        CHECK_THAT(writer.last_error_line(), !contains("died"));
    }
    CHECK(chapter.dir.entries().empty()); // the socket file is gone
    check_nothing_left(leaks);
}

TEST_CASE("06 hostile reader: the writer refuses every slot it did not lend", "[06][hostile]") {
    SECTION("an index out of range") {
        CHECK_THAT(writer_refusal({returned(4)}),
                   contains("the reader returned slot 4, but the pool has only 4 slots (0 to 3)"));
    }
    SECTION("a slot never loaned") {
        CHECK_THAT(writer_refusal({returned(2)}), contains("the reader returned slot 2, which was never loaned to it"));
    }
    SECTION("a slot returned twice") {
        CHECK_THAT(writer_refusal({returned(0), returned(0)}), contains("the reader returned slot 0 twice"));
    }
    SECTION("DONE while still holding a slot") {
        CHECK_THAT(writer_refusal({kDoneMessage}), contains("DONE while still holding 1 slot(s)"));
    }
    SECTION("a message the reader never sends") {
        CHECK_THAT(writer_refusal({filled(0, 1)}), contains("the reader sent FILLED, expected RETURNED"));
    }
}

TEST_CASE("06: the pool's own options refuse a pool that cannot be made, with exit status 2", "[06]") {
    // The options every chapter shares are checked by the contract test ([06][contract]).
    const std::string w = binary("06-zero-copy/writer");
    const std::string r = binary("06-zero-copy/reader");
    check_usage_errors({
        {w, "--name", "/tmp/" + std::string(120, 'x')}, {w, "--name", "@"}, {w, "--keep"},
        {w, "--slots", "0"}, {w, "--slots", "4097"}, {w, "--slots", "-1"}, {w, "--slot-size", "1000"},
        {w, "--slot-size", "5000"}, {w, "--slots", "1024", "--slot-size", "2097152"},
        {r, "--force"}, {r, "--slots", "4"},
    });
}

namespace {

/// The fields of one CSV line (fields may be quoted; no quotes inside quotes here).
std::vector<std::string> csv_fields(const std::string& line) {
    std::vector<std::string> fields(1);
    bool quoted = false;
    for (char c : line) {
        if (c == '"')
            quoted = !quoted;
        else if (c == ',' && !quoted)
            fields.emplace_back();
        else
            fields.back() += c;
    }
    return fields;
}

/// Reads `path` as CSV: the header's fields, then the rows, each checked to have as many fields.
std::vector<std::vector<std::string>> read_csv(const std::string& path, const std::vector<std::string>& header) {
    std::ifstream file(path);
    REQUIRE(file.good());
    std::string line;
    REQUIRE(std::getline(file, line));
    CHECK(csv_fields(line) == header);
    std::vector<std::vector<std::string>> rows;
    while (std::getline(file, line)) {
        rows.push_back(csv_fields(line));
        CHECK(rows.back().size() == header.size());
    }
    CHECK_FALSE(rows.empty());
    return rows;
}

/// The number in a CSV field; fails the test if the field is not one.
double number(const std::string& field) {
    char* end = nullptr;
    double value = std::strtod(field.c_str(), &end);
    INFO("field: '" << field << "'");
    CHECK((!field.empty() && end == field.c_str() + field.size() && std::isfinite(value)));
    return value;
}

} // namespace

TEST_CASE("06 bench smoke test: make bench writes well-formed CSV, positive figures and PNG plots",
          "[06][bench]") {
    const std::string bench = binary("06-zero-copy/bench");
    if (::access(bench.c_str(), X_OK) != 0)
        SKIP_TEST("the benchmark is not built: Debian's libbenchmark-dev is missing (make bench installs it)");
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
        SKIP_TEST("gnuplot is not installed (Debian's gnuplot-nox; make bench installs it)");
    LeakCheck leaks;
    TempDir out;
    {
        ProcessGroup group(std::chrono::seconds(300));
        Process& run = group.start("bench", {bench, "--tiny", "--out", out.path(), "--build", binary("")});
        group.wait(run);
        INFO("bench stderr:\n" << run.err);
        REQUIRE(run.exit_code() == 0);
        CHECK_THAT(run.out, contains("Latency: 64-byte round trip"));
        CHECK_THAT(run.out, contains("By handle against by copy"));
        CHECK_THAT(run.out, contains("Ratios"));
        CHECK_THAT(run.err, contains("bench: [1/")); // progress, on stderr
    }
    // Every time and rate is positive; counts (faults, shootdowns, a crossover not found) are
    // at least 0; every case ran 5 times. No figure is compared with a target: timing is the
    // benchmark's business, not a test's.
    for (const auto& row : read_csv(out.file("latency.csv"), {"mechanism", "round_trip_ns", "runs"})) {
        CHECK(number(row[1]) > 0);
        CHECK(number(row[2]) == 5);
    }
    auto throughput = read_csv(out.file("throughput.csv"), {"method", "block_bytes", "gb_per_s", "runs"});
    CHECK(throughput.size() == 7 * 3);
    for (const auto& row : throughput) {
        CHECK(number(row[1]) > 0);
        CHECK(number(row[2]) > 0);
        CHECK(number(row[3]) == 5);
    }
    for (const auto& row : read_csv(out.file("pairs.csv"), {"pair", "block_bytes", "gb_per_s", "runs"})) {
        CHECK(number(row[2]) > 0);
        CHECK(number(row[3]) == 5);
    }
    for (const auto& row : read_csv(out.file("handle.csv"), {"method", "message_bytes", "us_per_message",
                                                             "faults_per_message", "tlb_shootdowns_per_message",
                                                             "runs"})) {
        CHECK(number(row[1]) > 0);
        CHECK(number(row[2]) > 0);
        CHECK(number(row[3]) >= 0);
        CHECK(number(row[4]) >= 0);
        CHECK(number(row[5]) == 5);
    }
    for (const auto& row : read_csv(out.file("crossover.csv"), {"challenger", "wins_from_bytes"}))
        CHECK(number(row[1]) >= 0);
    for (const auto& row : read_csv(out.file("ratios.csv"), {"ratio", "value", "target", "met"})) {
        CHECK(number(row[1]) > 0);
        CHECK((row[3] == "yes" || row[3] == "no"));
    }
    {
        std::ifstream results(out.file("results.md"));
        std::string page((std::istreambuf_iterator<char>(results)), std::istreambuf_iterator<char>());
        CHECK_THAT(page, contains("| ratio | measured | target |"));
        CHECK_THAT(page, contains("Load average"));
        CHECK(page.find("nan") == std::string::npos);
    }
    for (const char* plot : {"latency.png", "throughput.png", "handle.png"}) {
        std::ifstream file(out.file(plot), std::ios::binary);
        char magic[8] = {};
        file.read(magic, sizeof magic);
        INFO(plot);
        CHECK(std::string(magic, sizeof magic) == std::string("\x89PNG\r\n\x1a\n", 8));
    }
    check_nothing_left(leaks);
}

TEST_CASE("06 bench --filter: progress counts only the selected runs, and no table, crossover or ratio "
          "shows a case that did not run",
          "[06][bench]") {
    const std::string bench = binary("06-zero-copy/bench");
    if (::access(bench.c_str(), X_OK) != 0)
        SKIP_TEST("the benchmark is not built: Debian's libbenchmark-dev is missing (make bench installs it)");
    LeakCheck leaks;
    TempDir out;
    // Two latency cases (so the ratio spinning mailbox / ping-pong lacks one input) and copying
    // at the three --tiny message sizes (so no crossover has its challenger): 5 cases, 5 runs each.
    ProcessGroup group(std::chrono::seconds(300));
    Process& run = group.start("bench", {bench, "--tiny", "--no-plots", "--filter",
                                         "^latency/(ping-pong|futex)/|^handle/copy", "--out", out.path(), "--build",
                                         binary("")});
    group.wait(run);
    INFO("bench stdout:\n" << run.out << "\nbench stderr:\n" << run.err);
    REQUIRE(run.exit_code() == 0);
    std::vector<std::string> progress; // "[n/m]" of each line "bench: [n/m] what"
    {
        std::istringstream lines(run.err);
        for (std::string line; std::getline(lines, line);)
            if (line.rfind("bench: [", 0) == 0)
                progress.push_back(line.substr(7, line.find(']') - 6));
    }
    std::vector<std::string> expected;
    for (int i = 1; i <= 25; ++i)
        expected.push_back("[" + std::to_string(i) + "/25]");
    CHECK(progress == expected);
    CHECK_THAT(run.err, contains("5 cases x 5 runs"));
    // What ran is shown; what did not is left out, never a nan row.
    CHECK_THAT(run.out, contains("ping-pong"));
    CHECK_THAT(run.out, contains("futex"));
    CHECK_THAT(run.out, contains("copy through a socket"));
    CHECK_THAT(run.out, !contains("spinning mailbox"));
    CHECK_THAT(run.out, !contains("socketpair"));
    CHECK_THAT(run.out, !contains("Throughput"));
    CHECK_THAT(run.out, !contains("pool (index only)"));
    CHECK(run.out.find("nan") == std::string::npos);
    {
        std::ifstream results(out.file("results.md"));
        std::string page((std::istreambuf_iterator<char>(results)), std::istreambuf_iterator<char>());
        CHECK_THAT(page, contains("| ping-pong |"));
        CHECK_THAT(page, !contains("spinning mailbox"));
        CHECK(page.find("nan") == std::string::npos);
    }
    for (const char* csv : {"latency.csv", "throughput.csv", "pairs.csv", "handle.csv", "crossover.csv", "ratios.csv"}) {
        std::ifstream file(out.file(csv));
        std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
        INFO(csv << ":\n" << text);
        CHECK(text.find("nan") == std::string::npos);
    }
    check_nothing_left(leaks);
}

TEST_CASE("06 bench --replot: a folder without a run's CSV files is an error, not a quiet success", "[06][bench]") {
    const std::string bench = binary("06-zero-copy/bench");
    if (::access(bench.c_str(), X_OK) != 0)
        SKIP_TEST("the benchmark is not built: Debian's libbenchmark-dev is missing (make bench installs it)");
    TempDir out; // empty: a mistyped --out, or bench never run there
    {
        ProcessGroup group(std::chrono::seconds(60));
        Process& replot = group.start("bench --replot", {bench, "--replot", "--out", out.path()});
        group.wait(replot);
        INFO("bench stderr:\n" << replot.err);
        CHECK(replot.exit_code() == 1);
        CHECK_THAT(replot.err, contains("no run to replot in " + out.path()));
        CHECK(replot.out.empty());
    }
    {
        ProcessGroup group(std::chrono::seconds(60));
        Process& replot = group.start("bench --replot --no-plots", {bench, "--replot", "--no-plots", "--out", out.path()});
        group.wait(replot);
        INFO("bench stderr:\n" << replot.err);
        CHECK(replot.exit_code() == 2);
    }
    CHECK(out.entries().empty()); // nothing drawn, nothing written
}
