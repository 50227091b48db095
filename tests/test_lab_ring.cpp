/// @file tests/test_lab_ring.cpp
/// @brief Lab ring: the ring's rules in one process (records in order, padding at the wrap, a
///        full ring refuses, a read frees room), then the writer and reader as two processes.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "../labs/ring/bench_stats.hpp"
#include "../labs/ring/ring.hpp"
#include "catch.hpp"
#include "support.hpp"

using namespace testsupport;

namespace {

/// A ring in this process's own memory, zeroed as ftruncate leaves a new object.
struct LocalRing {
    explicit LocalRing(std::uint64_t capacity, ring::Layout layout = ring::Layout::kSeparateLines)
        : memory(static_cast<std::size_t>(ring::kControlSize + capacity)), view(memory.data(), capacity, layout) {}
    std::vector<std::byte> memory;
    ring::Ring view;
};

/// Reads what is ready; returns the payloads of the data records, in order.
std::vector<std::string> drain(ring::Ring& ring) {
    std::vector<std::string> got;
    ring.read([&](std::int32_t type, const std::byte* payload, std::int32_t length) {
        REQUIRE(type == ring::kDataType);
        got.emplace_back(reinterpret_cast<const char*>(payload), static_cast<std::size_t>(length));
    });
    return got;
}

std::vector<std::string> writer_argv(const std::string& name, std::vector<std::string> extra = {}) {
    return command("labs/ring/writer", {"--name", name}, "30", extra);
}
std::vector<std::string> reader_argv(const std::string& name, std::vector<std::string> extra = {}, const std::string& timeout = "30") {
    return command("labs/ring/reader", {"--name", name}, timeout, extra);
}

/// The number in "TEXT N" in a program's narration, or -1.
long long count_after(const std::string& text, const std::string& before) {
    std::string::size_type at = text.find(before);
    if (at == std::string::npos)
        return -1;
    return std::stoll(text.substr(at + before.size()));
}

/// True while the process sleeps in futex(2): the first field of /proc/PID/syscall.
bool in_futex(pid_t pid) {
    std::ifstream file("/proc/" + std::to_string(pid) + "/syscall");
    long number = -1;
    file >> number;
    return number == SYS_futex;
}

} // namespace

TEST_CASE("lab ring: records of every size arrive in order through many wraps, with padding", "[lab][ring]") {
    LocalRing local(1024);
    std::mt19937 generator(7);
    std::uniform_int_distribution<int> size_of(0, static_cast<int>(ring::max_payload_for(1024)));
    std::vector<std::string> sent, received;
    std::uint64_t refused = 0;
    for (int i = 0; i < 5000; ++i) {
        std::string payload(static_cast<std::size_t>(size_of(generator)), '\0');
        for (char& c : payload)
            c = static_cast<char>(generator());
        while (!local.view.write(ring::kDataType, payload.data(), static_cast<std::int32_t>(payload.size()))) {
            ++refused; // full: a read must make room
            std::vector<std::string> got = drain(local.view);
            REQUIRE_FALSE(got.empty());
            received.insert(received.end(), got.begin(), got.end());
        }
        sent.push_back(payload);
        if (generator() % 3 == 0) {
            std::vector<std::string> got = drain(local.view);
            received.insert(received.end(), got.begin(), got.end());
        }
    }
    for (std::vector<std::string> got = drain(local.view); !got.empty(); got = drain(local.view))
        received.insert(received.end(), got.begin(), got.end());
    CHECK(received == sent);
    CHECK(refused > 0);
    CHECK(local.view.padding_records() > 0);
    CHECK(local.view.head() == local.view.tail());
}

TEST_CASE("lab ring: a full ring refuses a record, and one read makes room for it", "[lab][ring]") {
    LocalRing local(1024);
    const std::string payload(120, 'x'); // 128 bytes a record: 8 fill 1024
    for (int i = 0; i < 8; ++i)
        REQUIRE(local.view.write(ring::kDataType, payload.data(), 120));
    CHECK_FALSE(local.view.write(ring::kDataType, payload.data(), 120));
    CHECK(drain(local.view).size() == 8);
    CHECK(local.view.write(ring::kDataType, payload.data(), 120));
}

TEST_CASE("lab ring: an unpublished record (length 0) is not read; the consumer zeroes what it read",
          "[lab][ring]") {
    LocalRing local(1024);
    CHECK(drain(local.view).empty());
    REQUIRE(local.view.write(ring::kDataType, "abc", 3));
    std::int32_t length = 0;
    std::memcpy(&length, local.memory.data() + ring::kControlSize, sizeof length);
    CHECK(length == 11); // header + payload, unaligned
    CHECK(drain(local.view) == std::vector<std::string>{"abc"});
    std::vector<std::byte> zeros(16);
    CHECK(std::memcmp(local.memory.data() + ring::kControlSize, zeros.data(), zeros.size()) == 0);
}

TEST_CASE("lab ring: a message goes from writer to reader exactly, and nothing is left", "[lab][ring]") {
    const std::string name = "/" + unique_name("shmtut-lab-ring");
    LeakCheck leaks;
    leaks.watch_shm_name(name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_argv(name, {"hello", "ring"}));
        Process& reader = group.start("reader", reader_argv(name));
        group.wait(writer);
        group.wait(reader);
        INFO("writer:\n" << writer.err << "reader:\n" << reader.err);
        CHECK(writer.exit_code() == 0);
        CHECK(reader.exit_code() == 0);
        CHECK(reader.out == "hello\nring\n");
        CHECK_THAT(writer.err, contains("shm_unlink(\"" + name + "\") = 0"));
        CHECK_THAT(writer.err, contains("the reader confirmed the end of the stream"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("lab ring: 4 MiB of random bytes arrive identical, in both layouts, through many wraps", "[lab][ring]") {
    const std::string name = "/" + unique_name("shmtut-lab-ring");
    LeakCheck leaks;
    leaks.watch_shm_name(name);
    const std::string data = random_bytes(4 << 20, 41);
    // A small ring and a record size that does not divide it: the ring fills (the writer must
    // wait for the reader) and wraps with padding records.
    std::vector<std::string> layout = GENERATE(std::vector<std::string>{}, std::vector<std::string>{"--one-line"});
    std::vector<std::string> extra = {"--capacity", "4096", "--record", "300"}; // 312 bytes a record
    extra.insert(extra.end(), layout.begin(), layout.end());
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_argv(name, extra), Stdin::kPipe);
        Process& reader = group.start("reader", reader_argv(name, {"--quiet"}));
        group.feed(writer, data, true);
        group.wait(writer);
        group.wait(reader);
        INFO("writer:\n" << writer.err << "reader:\n" << reader.err);
        CHECK(writer.exit_code() == 0);
        CHECK(reader.exit_code() == 0);
        REQUIRE(reader.out.size() == data.size());
        CHECK(reader.out == data);
        CHECK(count_after(writer.err, "records, ") > 0); // padding records
    }
    check_nothing_left(leaks);
}

TEST_CASE("lab ring: a reader asleep on the futex is woken by the writer", "[lab][ring]") {
    if (auto why = testsupport::emulator_cannot("a program asleep in futex(2) as /proc/PID/syscall shows it (it shows the emulator's host system call)"); !why.empty())
        SKIP_TEST(why);
    const std::string name = "/" + unique_name("shmtut-lab-ring");
    LeakCheck leaks;
    leaks.watch_shm_name(name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_argv(name), Stdin::kPipe);
        Process& reader = group.start("reader", reader_argv(name, {"--spin", "0"}));
        group.wait_for_stderr(writer, "a reader holds its lock byte");
        // Nothing has been written: the reader sets the futex word and sleeps.
        group.pump_until([&] { return in_futex(reader.pid) || reader.wait_status.has_value(); },
                         "the reader to sleep in futex(2)");
        group.feed(writer, "wake up\n", true);
        group.wait(writer);
        group.wait(reader);
        INFO("writer:\n" << writer.err << "reader:\n" << reader.err);
        CHECK(reader.exit_code() == 0);
        CHECK(reader.out == "wake up\n");
        CHECK(count_after(writer.err, "padding records, ") >= 1); // futex wakes
        CHECK(count_after(reader.err, "slept on the futex ") >= 1);
    }
    check_nothing_left(leaks);
}

TEST_CASE("lab ring: a second reader is refused", "[lab][ring]") {
    const std::string name = "/" + unique_name("shmtut-lab-ring");
    LeakCheck leaks;
    leaks.watch_shm_name(name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_argv(name, {"--timeout", "30"}), Stdin::kPipe);
        Process& first = group.start("reader", reader_argv(name));
        group.wait_for_stderr(first, "claimed");
        // The writer unlinks the name once claimed; a second reader started before that sees
        // the lock byte taken, one started after finds no name: both fail.
        Process& second = group.start("second reader", reader_argv(name, {}, "1"));
        group.wait(second);
        INFO("second reader:\n" << second.err);
        CHECK(second.exit_code() == 1);
        const std::string line = second.last_error_line();
        CHECK((line.find("another reader has claimed") != std::string::npos ||
               line.find("is the writer running?") != std::string::npos));
        group.feed(writer, "still fine\n", true);
        group.wait(writer);
        group.wait(first);
        CHECK(first.out == "still fine\n");
        CHECK(writer.exit_code() == 0);
    }
    check_nothing_left(leaks);
}

TEST_CASE("lab ring: a killed writer is reported dead, not as a timeout", "[lab][ring]") {
    const std::string name = "/" + unique_name("shmtut-lab-ring");
    LeakCheck leaks;
    leaks.watch_shm_name(name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_argv(name), Stdin::kPipe);
        Process& reader = group.start("reader", reader_argv(name, {}, "300"));
        group.wait_for_stderr(writer, "a reader holds its lock byte");
        group.feed(writer, "before\n", false);
        group.wait_for_stdout(reader, 7);
        group.signal(writer, SIGKILL);
        group.wait(writer);
        group.wait(reader);
        INFO("reader:\n" << reader.err);
        CHECK(reader.exit_code() == 1);
        CHECK(reader.out == "before\n");
        CHECK_THAT(reader.last_error_line(), contains("the writer died (its lock byte is free)"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("lab ring: a killed reader is reported dead by a writer waiting for room", "[lab][ring]") {
    const std::string name = "/" + unique_name("shmtut-lab-ring");
    LeakCheck leaks;
    leaks.watch_shm_name(name);
    {
        ProcessGroup group;
        Process& writer = group.start("writer", writer_argv(name, {"--capacity", "4096", "--record", "500", "--timeout", "300"}),
                                      Stdin::kPipe);
        Process& reader = group.start("reader", reader_argv(name));
        group.wait_for_stderr(writer, "a reader holds its lock byte");
        group.signal(reader, SIGSTOP); // the ring fills: the writer waits for room
        group.feed(writer, random_bytes(1 << 20, 43), true);
        group.wait_for_stderr(writer, "ring full");
        group.signal(reader, SIGKILL);
        group.wait(reader);
        group.wait(writer);
        INFO("writer:\n" << writer.err);
        CHECK(writer.exit_code() == 1);
        CHECK_THAT(writer.last_error_line(), contains("the reader died (its lock byte is free)"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("lab ring: a descriptor that does not validate is refused", "[lab][ring]") {
    const std::string name = "/" + unique_name("shmtut-lab-ring");
    LeakCheck leaks;
    leaks.watch_shm_name(name);
    {
        // A ring whose descriptor claims a data area larger than the object.
        int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
        REQUIRE(fd != -1);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(ring::kControlSize + 4096)) == 0);
        ring::Descriptor descriptor{ring::kMagic, ring::kVersion, 1 << 20, ring::max_payload_for(1 << 20), 0};
        REQUIRE(::pwrite(fd, &descriptor, sizeof descriptor, 0) == static_cast<ssize_t>(sizeof descriptor));
        ::close(fd);
        ProcessGroup group;
        Process& reader = group.start("reader", reader_argv(name, {}, "2"));
        group.wait(reader);
        ::shm_unlink(name.c_str());
        CHECK(reader.exit_code() == 1);
        CHECK_THAT(reader.last_error_line(), contains("the ring's descriptor does not validate"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("lab ring: a reader with no writer fails within its timeout", "[lab][ring]") {
    const std::string name = "/" + unique_name("shmtut-lab-ring");
    LeakCheck leaks;
    ProcessGroup group;
    Process& reader = group.start("reader", reader_argv(name, {}, "0.5"));
    group.wait(reader);
    CHECK(reader.exit_code() == 1);
    CHECK_THAT(reader.last_error_line(), contains("is the writer running?"));
    check_nothing_left(leaks);
}

TEST_CASE("lab ring: ring_bench runs both layouts and memcpy (figures not asserted)", "[lab][ring]") {
    ProcessGroup group;
    Process& bench = group.start("ring_bench", {binary("labs/ring/ring_bench"), "--messages", "20000", "--runs", "1"});
    group.wait(bench);
    INFO("stderr:\n" << bench.err);
    CHECK(bench.exit_code() == 0);
    CHECK_THAT(bench.out, contains("ring, tail/head cache/head on separate lines"));
    CHECK_THAT(bench.out, contains("ring, tail/head cache/head on one line"));
    CHECK_THAT(bench.out, contains("memcpy in one process"));
}

TEST_CASE("lab ring: ring_bench --pairs moves every record intact through both layouts (figures not asserted)",
          "[lab][ring]") {
    // The consumer compares every byte of every record and exits 1 on the first difference, so
    // exit status 0 says the bytes arrived; the table only has to name both layouts and the ratio.
    // Streaming with the default records, then one record at a time through the smallest ring
    // with 1-byte payloads (record i carries i mod 256).
    std::vector<std::string> extra = GENERATE(std::vector<std::string>{"--messages", "5000"},
                                              std::vector<std::string>{"--ping-pong", "--messages", "2000", "--payload", "1",
                                                                       "--capacity", "1024"});
    std::vector<std::string> argv = {binary("labs/ring/ring_bench"), "--pairs", "3"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    ProcessGroup group;
    Process& bench = group.start("ring_bench", argv);
    group.wait(bench);
    INFO("stdout:\n" << bench.out << "stderr:\n" << bench.err);
    CHECK(bench.exit_code() == 0);
    CHECK_THAT(bench.err, contains("3 pairs of runs of"));
    CHECK_THAT(bench.out, contains("tail/head on separate lines"));
    CHECK_THAT(bench.out, contains("tail/head on one line"));
    CHECK_THAT(bench.out, contains("one line / separate lines, all pairs                 3 pairs: median"));
}

TEST_CASE("lab ring: ring_bench --pairs prints its layout rows under their headings", "[lab][ring]") {
    // The name column ends where the first heading, right-aligned in 8 characters after a space,
    // begins: every layout's name must fit in it, or the rest of its row stands right of its
    // headings. (The figures are not checked: a run preempted for long can widen one.)
    ProcessGroup group;
    Process& bench = group.start("ring_bench", {binary("labs/ring/ring_bench"), "--pairs", "2", "--messages", "500", "--quiet"});
    group.wait(bench);
    INFO("stdout:\n" << bench.out << "stderr:\n" << bench.err);
    REQUIRE(bench.exit_code() == 0);
    std::vector<std::string> lines;
    std::istringstream in(bench.out);
    for (std::string line; std::getline(in, line);)
        lines.push_back(line);
    REQUIRE(lines.size() >= 4);
    const std::string& heading = lines[0];
    REQUIRE(heading.rfind("layout (ns per message)", 0) == 0);
    const std::size_t median_end = heading.find("median") + std::strlen("median");
    REQUIRE(median_end > 9);
    const std::size_t name_width = median_end - 9;
    for (const char* name : {"tail/head on separate lines", "tail/head on one line"}) {
        const auto row = std::find_if(lines.begin(), lines.end(), [&](const std::string& l) { return l.rfind(name, 0) == 0; });
        REQUIRE(row != lines.end());
        INFO("row: " << *row << "\nname column: " << name_width << " characters");
        CHECK(std::strlen(name) <= name_width);
        REQUIRE(row->size() > name_width);
        CHECK((*row)[name_width] == ' ');
    }
}

TEST_CASE("lab ring: ring_bench's median and quartiles interpolate between ranks", "[lab][ring]") {
    // An even count has no middle value: the median is the mean of the two middle ones (with the
    // upper one the median of two runs would be the slower run, and equal to p75).
    CHECK(ring::quantile({4, 1, 3, 2}, 0.5) == Approx(2.5));
    CHECK(ring::quantile({1.0, 1.5}, 0.5) == Approx(1.25));
    CHECK(ring::quantile({1, 2, 3, 4, 5}, 0.5) == Approx(3));
    CHECK(ring::quantile({1, 2, 3, 4, 5}, 0.25) == Approx(2));
    CHECK(ring::quantile({1, 2, 3, 4}, 0.25) == Approx(1.75));
    CHECK(ring::quantile({1, 2, 3, 4}, 0.75) == Approx(3.25));
    CHECK(ring::quantile({7}, 0.75) == Approx(7));
    CHECK(ring::quantile({}, 0.5) == 0);
}

TEST_CASE("lab ring: ring_bench checks payloads shorter than a sequence number", "[lab][ring]") {
    // Record i carries the low bytes of i: with a 1-byte payload, records 256 and on carry
    // i mod 256, and the consumer must expect that, not i.
    ProcessGroup group;
    Process& bench = group.start("ring_bench", {binary("labs/ring/ring_bench"), "--payload", "1", "--messages", "1000",
                                                "--runs", "1", "--quiet"});
    group.wait(bench);
    INFO("stderr:\n" << bench.err);
    CHECK(bench.exit_code() == 0);
    CHECK_THAT(bench.out, contains("ring, tail/head cache/head on one line"));
}

TEST_CASE("lab ring: usage errors exit 2", "[lab][ring]") {
    const std::string writer = binary("labs/ring/writer");
    const std::string reader = binary("labs/ring/reader");
    check_usage_errors({{writer, "--capacity", "1000"},
                        {writer, "--capacity", "65536", "--record", "9000"},
                        {writer, "--name", "no-slash"},
                        {reader, "--spin", "-1"},
                        {reader, "extra-operand"},
                        {binary("labs/ring/ring_bench"), "--payload", "0"},
                        {binary("labs/ring/ring_bench"), "--ping-pong"},
                        {binary("labs/ring/ring_bench"), "--pairs", "0"}});
}
