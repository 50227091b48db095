/// @file labs/ring/ring_bench.cpp
/// @brief Lab ring, the measurement: messages per second through the ring between two processes,
///        with tail, head cache and head on separate cache lines and on one line (false
///        sharing), next to `memcpy` of the same bytes in one process.
///
/// Usage: `ring_bench [--messages N] [--payload BYTES] [--capacity BYTES] [--runs N] [--quiet]`
///
/// The producer (this process) and the consumer (a forked child) share an anonymous
/// `MAP_SHARED` mapping holding a ring of labs/ring/ring.hpp; where the machine has two CPUs or
/// more they are pinned to different ones (`sched_setaffinity(2)`), so the control words really
/// travel between cores. The consumer spins on an empty ring (`--spin`-style, no futex sleep:
/// a benchmark of the ring, not of the scheduler) and checks every payload. Each case runs
/// `--runs` times; the table on standard output gives the median and the best run. No test asserts a figure: the
/// machine's load changes them.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "ring.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: ring_bench [OPTIONS]

Lab ring, the measurement. Sends --messages records of --payload bytes from this process
to a forked consumer through the ring, with the control words on separate cache lines and
then on one line (false sharing), and copies the same bytes with memcpy; prints a table
of the median (and the best) of --runs runs on standard output.

Options:
  --messages N       records per run (default 2000000)
  --payload BYTES    payload of each record (default 64)
  --capacity BYTES   the ring's data area, a power of two (default 65536)
  --runs N           runs per case; the table shows the median (default 5)
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 done; 1 a run failed (the consumer saw a wrong payload); 2 a usage error.
)";

struct Settings {
    std::uint64_t messages = 2000000;
    std::uint32_t payload = 64;
    std::uint64_t capacity = 65536;
    unsigned runs = 5;
};

std::uint64_t parse_count(const std::string& option, const std::string& text) {
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(text.c_str(), &end, 10);
    if (text.empty() || text[0] == '-' || *end != '\0' || errno != 0 || value == 0)
        throw UsageError(option + ": expected a positive number, not \"" + text + "\"");
    return value;
}

void pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    ::sched_setaffinity(0, sizeof set, &set); // best effort: a restricted cpuset may refuse
}

/// The consumer: reads until the end record, checking that record i carries i in its first
/// 8 bytes. Exit status 0 when every record arrived in order.
[[noreturn]] void consume(ring::Ring& ring, std::uint64_t messages) {
    std::uint64_t expected = 0;
    bool end = false, ok = true;
    auto handle = [&](std::int32_t type, const std::byte* payload, std::int32_t length) {
        if (type == ring::kEndType) {
            end = true;
            return;
        }
        std::uint64_t sequence = 0;
        std::memcpy(&sequence, payload, std::min<std::size_t>(sizeof sequence, static_cast<std::size_t>(length)));
        ok = ok && sequence == expected;
        ++expected;
    };
    while (!end)
        ring.read(handle);
    ring.confirmed().store(1, std::memory_order_release);
    ::_exit(ok && expected == messages ? 0 : 1);
}

/// Between spins of the producer: throws when the consumer has ended early (a crash would
/// otherwise leave the producer spinning for ever on a ring nobody reads).
void check_consumer(pid_t consumer, std::uint64_t& spins) {
    if (++spins % (1u << 20) != 0)
        return;
    int status = 0;
    if (::waitpid(consumer, &status, WNOHANG) == consumer)
        throw Failure("the consumer ended early (wait status " + std::to_string(status) + ")");
}

/// One run through the ring: nanoseconds per message, or a Failure.
double run_ring(const Settings& settings, ring::Layout layout, bool two_cpus) {
    // (--capacity is bounded, so the size fits a 32-bit size_t too)
    const auto size = static_cast<std::size_t>(ring::kControlSize + settings.capacity);
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(MAP_SHARED|MAP_ANONYMOUS)");
    Mapping mapping(base, size);
    ring::Ring ring(static_cast<std::byte*>(base), settings.capacity, layout);
    std::fflush(stdout);
    pid_t consumer = ::fork();
    if (consumer == -1)
        throw_errno("fork");
    if (consumer == 0) {
        if (two_cpus)
            pin_to_cpu(1);
        consume(ring, settings.messages);
    }
    if (two_cpus)
        pin_to_cpu(0);
    std::vector<std::uint8_t> payload(settings.payload, 0x5a);
    std::uint64_t spins = 0;
    const auto start = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < settings.messages; ++i) {
        std::memcpy(payload.data(), &i, std::min<std::size_t>(sizeof i, payload.size()));
        while (!ring.write(ring::kDataType, payload.data(), static_cast<std::int32_t>(payload.size())))
            check_consumer(consumer, spins);
    }
    while (!ring.write(ring::kEndType, nullptr, 0))
        check_consumer(consumer, spins);
    while (ring.confirmed().load(std::memory_order_acquire) == 0)
        check_consumer(consumer, spins);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    int status = 0;
    if (::waitpid(consumer, &status, 0) == -1)
        throw_errno("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw Failure("the consumer saw records out of order or missing");
    return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()) /
           static_cast<double>(settings.messages);
}

/// The same bytes copied in one process, `payload` bytes at a time, through a buffer of the
/// ring's size: the floor a ring between two processes cannot beat.
double run_memcpy(const Settings& settings) {
    std::vector<std::uint8_t> source(settings.payload, 0x5a), area(static_cast<std::size_t>(settings.capacity));
    const std::size_t step = static_cast<std::size_t>(ring::align_up(settings.payload + ring::kHeaderLength));
    std::size_t at = 0;
    const auto start = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < settings.messages; ++i) {
        if (at + step > area.size())
            at = 0;
        std::memcpy(area.data() + at, source.data(), source.size());
        at += step;
        asm volatile("" : : "r"(area.data()) : "memory"); // keep the copy
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;
    return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()) /
           static_cast<double>(settings.messages);
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
}

void print_row(const char* name, const std::vector<double>& ns_per_message, const Settings& settings) {
    const double typical = median(ns_per_message);
    const double best = *std::min_element(ns_per_message.begin(), ns_per_message.end());
    const double messages_per_second = 1e9 / typical;
    const double mib_per_second = messages_per_second * settings.payload / (1024.0 * 1024.0);
    std::printf("%-44s %10.1f %8.1f %12.2f %9.0f\n", name, typical, best, messages_per_second / 1e6, mib_per_second);
}

int run(const Settings& settings, const Narrator& say) {
    const bool two_cpus = ::sysconf(_SC_NPROCESSORS_ONLN) >= 2;
    say.say("%llu messages of %u bytes, ring of %llu bytes, median of %u runs; %s",
            static_cast<unsigned long long>(settings.messages), settings.payload,
            static_cast<unsigned long long>(settings.capacity), settings.runs,
            two_cpus ? "producer pinned to CPU 0, consumer to CPU 1" : "one CPU: both on it");
    std::vector<double> separate, one_line, copy;
    for (unsigned r = 0; r < settings.runs; ++r) {
        separate.push_back(run_ring(settings, ring::Layout::kSeparateLines, two_cpus));
        one_line.push_back(run_ring(settings, ring::Layout::kOneLine, two_cpus));
        copy.push_back(run_memcpy(settings));
        say.say("run %u: separate lines %.1f ns, one line %.1f ns, memcpy %.1f ns per message", r + 1,
                separate.back(), one_line.back(), copy.back());
    }
    std::printf("%-44s %10s %8s %12s %9s\n", "case (median of the runs; best)", "ns/message", "best", "M messages/s",
                "MiB/s");
    print_row("ring, tail/head cache/head on separate lines", separate, settings);
    print_row("ring, tail/head cache/head on one line", one_line, settings);
    print_row("memcpy in one process (no ring)", copy, settings);
    return kExitSuccess;
}

} // namespace

int main(int argc, char** argv) {
    return run_main("ring_bench", [&] {
        Settings settings;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.extra.push_back({"--messages", true, [&](const std::string& v) { settings.messages = parse_count("--messages", v); }});
        spec.extra.push_back({"--payload", true, [&](const std::string& v) {
                                  settings.payload = static_cast<std::uint32_t>(std::min<std::uint64_t>(parse_count("--payload", v), 1u << 30));
                              }});
        spec.extra.push_back({"--capacity", true, [&](const std::string& v) {
                                  settings.capacity = parse_count("--capacity", v);
                                  if (!ring::valid_capacity(settings.capacity))
                                      throw UsageError("--capacity: expected a power of two from 1024 to 1073741824");
                              }});
        spec.extra.push_back({"--runs", true, [&](const std::string& v) {
                                  settings.runs = static_cast<unsigned>(std::min<std::uint64_t>(parse_count("--runs", v), 1000));
                              }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        if (settings.payload > ring::max_payload_for(settings.capacity))
            throw UsageError("--payload: at most " + std::to_string(ring::max_payload_for(settings.capacity)) +
                             " bytes for this --capacity");
        Narrator say("ring_bench", options.quiet);
        return run(settings, say);
    });
}
