/// @file labs/ring/ring_bench.cpp
/// @brief Lab ring, the measurement: messages per second through the ring between two processes,
///        with tail, head cache and head on separate cache lines and on one line (false
///        sharing), next to `memcpy` of the same bytes in one process.
///
/// Usage: `ring_bench [--messages N] [--payload BYTES] [--capacity BYTES] [--runs N] [--quiet]`
///    or: `ring_bench --pairs N [--ping-pong] [--messages N] [--payload BYTES] [--capacity BYTES]`
///
/// The producer (this process) and the consumer (a forked child) share an anonymous
/// `MAP_SHARED` mapping holding a ring of labs/ring/ring.hpp; where the machine has two CPUs or
/// more they are pinned to different ones (`sched_setaffinity(2)`), so the control words really
/// travel between cores. Both sides only spin: the consumer polls the next record's length, the
/// producer retries when the ring is full; neither sleeps on the futex (a benchmark of the ring,
/// not of the scheduler). The consumer checks every byte of every record.
///
/// The table (default): each case runs `--runs` times, a new consumer each time; standard output
/// gives the median and the best run.
///
/// `--pairs N`, the false-sharing measurement: one consumer for 2N short runs that alternate the
/// layouts (AB BA AB BA ...), each run flagged when the scheduler switched either side out
/// (`getrusage(2)`, `ru_nivcsw`), with two counts the clock does not enter: records taken per
/// read, and reads that found nothing new. `--ping-pong` sends one record at a time and waits
/// until the consumer has taken it, so every record pays the trip of the control line.
///
/// No test asserts a figure: the machine's load changes them.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "bench_stats.hpp"
#include "ring.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: ring_bench [OPTIONS]

Lab ring, the measurement. Sends --messages records of --payload bytes from this process
to a forked consumer through the ring, with the control words on separate cache lines and
then on one line (false sharing), and copies the same bytes with memcpy; prints a table
of the median (and the best) of --runs runs on standard output.

With --pairs N: the false-sharing measurement. One consumer, 2N short runs alternating
the two layouts (AB BA AB ...); prints per layout the quartiles of the time per record,
the runs no side was preempted in, records per read and empty polls per record, then the
ratio one line / separate lines pair by pair.

Options:
  --messages N       records per run (default 2000000; with --pairs 10000)
  --payload BYTES    payload of each record (default 64)
  --capacity BYTES   the ring's data area, a power of two (default 65536)
  --runs N           runs per case; the table shows the median (default 5)
  --pairs N          the false-sharing measurement: N pairs of short runs
  --ping-pong        with --pairs: one record in flight; the producer waits after each
                     record until the consumer has taken it
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 done; 1 a run failed (the consumer saw a wrong payload); 2 a usage error.
)";

struct Settings {
    std::uint64_t messages = 2000000;
    std::uint32_t payload = 64;
    std::uint64_t capacity = 65536;
    unsigned runs = 5;
    unsigned pairs = 0;          ///< --pairs: the interleaved false-sharing measurement (0: the table)
    bool ping_pong = false;      ///< --ping-pong: one record in flight at a time
    bool messages_given = false; ///< --messages was given (the two modes have different defaults)
};

/// Records per short run in the --pairs mode, unless --messages says otherwise: well under a
/// millisecond streaming, about one in ping-pong, short enough that many runs finish without the
/// scheduler stepping in.
constexpr std::uint64_t kPairMessages = 10000;

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

/// In the forked consumer: die with the producer. A consumer spinning on a ring nobody writes
/// would otherwise spin for ever after the producer failed (prctl(2), PR_SET_PDEATHSIG).
void die_with_parent(pid_t parent) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) // the producer died before the prctl
        ::_exit(1);
}

/// The payload of record `i`: the low bytes of i (as many as fit, up to 8), then 0x5a. The
/// producer writes it, the consumer compares every byte with it.
void fill_payload(std::uint64_t i, std::vector<std::uint8_t>& payload) {
    std::memcpy(payload.data(), &i, std::min<std::size_t>(sizeof i, payload.size()));
}

/// The consumer's check of every record: in order, of the right length, every byte as sent.
class PayloadCheck {
public:
    explicit PayloadCheck(std::uint32_t payload) : expected_(payload, 0x5a) {}
    /// Checks the next data record.
    void next(const std::byte* payload, std::int32_t length) {
        fill_payload(count_, expected_);
        ok_ = ok_ && static_cast<std::size_t>(length) == expected_.size() &&
              std::memcmp(payload, expected_.data(), expected_.size()) == 0;
        ++count_;
    }
    /// Records seen so far.
    std::uint64_t count() const noexcept { return count_; }
    /// True when `messages` records arrived and every one was right.
    bool all_right(std::uint64_t messages) const noexcept { return ok_ && count_ == messages; }

private:
    std::vector<std::uint8_t> expected_;
    std::uint64_t count_ = 0;
    bool ok_ = true;
};

/// The consumer: reads until the end record, checking every byte of every record. Exit
/// status 0 when every record arrived, in order and intact.
[[noreturn]] void consume(ring::Ring& ring, const Settings& settings) {
    PayloadCheck check(settings.payload);
    bool end = false;
    auto handle = [&](std::int32_t type, const std::byte* payload, std::int32_t length) {
        if (type == ring::kEndType)
            end = true;
        else
            check.next(payload, length);
    };
    while (!end)
        ring.read(handle);
    ring.confirmed().store(1, std::memory_order_release);
    ::_exit(check.all_right(settings.messages) ? 0 : 1);
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
    const pid_t producer = ::getpid();
    pid_t consumer = ::fork();
    if (consumer == -1)
        throw_errno("fork");
    if (consumer == 0) {
        die_with_parent(producer);
        if (two_cpus)
            pin_to_cpu(1);
        consume(ring, settings);
    }
    if (two_cpus)
        pin_to_cpu(0);
    std::vector<std::uint8_t> payload(settings.payload, 0x5a);
    std::uint64_t spins = 0;
    const auto start = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < settings.messages; ++i) {
        fill_payload(i, payload);
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
        throw Failure("the consumer saw a record missing, out of order or altered");
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

using ring::quantile;

/// The median of the runs (of an even count: the mean of the two middle ones).
double median(const std::vector<double>& values) { return quantile(values, 0.5); }

void print_row(const char* name, const std::vector<double>& ns_per_message, const Settings& settings) {
    const double typical = median(ns_per_message);
    const double best = *std::min_element(ns_per_message.begin(), ns_per_message.end());
    const double messages_per_second = 1e9 / typical;
    const double mib_per_second = messages_per_second * settings.payload / (1024.0 * 1024.0);
    std::printf("%-44s %10.1f %8.1f %12.2f %9.0f\n", name, typical, best, messages_per_second / 1e6, mib_per_second);
}

// --- the false-sharing measurement (--pairs) ----------------------------------------------
//
// Long runs on a busy machine measure the scheduler: a run of a million records is preempted
// many times, and each time one side is off its CPU the other waits, for milliseconds. So this
// mode makes many short runs with one consumer that stays on its CPU, alternates the layouts
// (AB BA AB BA ...: a change of load hits both alike), and records for each run what does not
// depend on the clock: whether either side was preempted, how many records the consumer took
// per read (each read loads and stores head: in the one-line layout the shared line crosses at
// least twice per read, whatever the number of records), and how often it found nothing new.

constexpr int kLayouts = 2; ///< index 0: separate lines, 1: one line

/// The layout of run `t`: 0 1 1 0 0 1 1 0 ..., so each pair has both, in alternating order.
int layout_of_run(std::uint64_t t) { return static_cast<int>((t ^ (t >> 1)) & 1); }

/// What the consumer reports of one run, in the shared mapping (its own lines).
struct alignas(64) RunReport {
    std::uint64_t empty_polls; ///< reads that found nothing new, after the first record
    std::uint64_t reads;       ///< reads that found one record or more
    std::uint64_t preempted;   ///< the consumer's involuntary context switches since its last report
    std::uint64_t ok;          ///< 1: every record arrived, in order and intact
};
static_assert(sizeof(RunReport) == 64);

/// One run as the producer saw it, with the consumer's report.
struct RunResult {
    double ns_per_message;
    bool preempted; ///< either side was switched out by the scheduler (getrusage(2), ru_nivcsw)
    RunReport report;
};

/// The mapping of the --pairs mode: one ring per layout, each starting on a page, then the run
/// counter and the reports.
struct PairArea {
    ring::Ring* rings[kLayouts];
    std::uint64_t* done;     ///< the consumer stores run + 1 here at the end record (the clock stops)
    std::uint64_t* reported; ///< and here, run + 1, once the run's report is complete
    RunReport* reports;
};

long involuntary_switches() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage); // cannot fail with these arguments
    return usage.ru_nivcsw;
}

/// The consumer of the --pairs mode: for each run, reads its ring until the end record,
/// checking every byte of every record, and reports.
[[noreturn]] void consume_runs(PairArea& area, std::uint64_t runs, const Settings& settings) {
    // The consumer's count of involuntary switches is read once between runs, after `done` is
    // stored, and the producer does not start the next run before `reported`: each run's window
    // is then the whole stretch from the previous reading to this one, which contains all of the
    // producer's timed interval. A reading taken before the store of `done` would leave a gap in
    // which a preemption delays the producer's clock and is counted in no run.
    long switches = involuntary_switches();
    for (std::uint64_t t = 0; t < runs; ++t) {
        ring::Ring& ring = *area.rings[layout_of_run(t)];
        PayloadCheck check(settings.payload);
        std::uint64_t empty_polls = 0, reads = 0;
        bool end = false;
        auto handle = [&](std::int32_t type, const std::byte* payload, std::int32_t length) {
            if (type == ring::kEndType)
                end = true;
            else
                check.next(payload, length);
        };
        while (!end) {
            if (ring.read(handle) > 0)
                ++reads;
            else if (check.count() > 0) // before the first record we wait for the producer to start
                ++empty_polls;
        }
        std::atomic_ref<std::uint64_t>(*area.done).store(t + 1, std::memory_order_release);
        const long now = involuntary_switches();
        area.reports[t] = RunReport{empty_polls, reads, static_cast<std::uint64_t>(now - switches),
                                    check.all_right(settings.messages) ? 1u : 0u};
        switches = now;
        std::atomic_ref<std::uint64_t>(*area.reported).store(t + 1, std::memory_order_release);
    }
    ::_exit(0);
}

/// The producer's half of run `t`: `messages` records then the end record, timed until the
/// consumer's report. With --ping-pong it waits after each record until the consumer has
/// taken it (head reaches tail), so every record crosses alone.
RunResult produce_run(PairArea& area, std::uint64_t t, const Settings& settings, pid_t consumer,
                      std::vector<std::uint8_t>& payload) {
    ring::Ring& ring = *area.rings[layout_of_run(t)];
    std::uint64_t spins = 0;
    const long switches_before = involuntary_switches();
    const auto start = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < settings.messages; ++i) {
        fill_payload(i, payload);
        while (!ring.write(ring::kDataType, payload.data(), static_cast<std::int32_t>(payload.size())))
            check_consumer(consumer, spins);
        if (settings.ping_pong)
            while (ring.head() != ring.tail())
                check_consumer(consumer, spins);
    }
    while (!ring.write(ring::kEndType, nullptr, 0))
        check_consumer(consumer, spins);
    std::atomic_ref<std::uint64_t> done(*area.done);
    while (done.load(std::memory_order_acquire) != t + 1)
        check_consumer(consumer, spins);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    const bool producer_preempted = involuntary_switches() != switches_before;
    std::atomic_ref<std::uint64_t> reported(*area.reported);
    while (reported.load(std::memory_order_acquire) != t + 1) // the report, outside the clock
        check_consumer(consumer, spins);
    const RunReport report = area.reports[t];
    if (report.ok != 1)
        throw Failure("run " + std::to_string(t + 1) + ": the consumer saw a record missing, out of order or altered");
    return {static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()) /
                static_cast<double>(settings.messages),
            producer_preempted || report.preempted != 0, report};
}

void print_layout_row(const char* name, const std::vector<RunResult>& results, std::uint64_t messages) {
    std::vector<double> all, clean, per_read, empty;
    for (const RunResult& r : results) {
        all.push_back(r.ns_per_message);
        if (!r.preempted)
            clean.push_back(r.ns_per_message);
        per_read.push_back(static_cast<double>(messages) / static_cast<double>(std::max<std::uint64_t>(r.report.reads, 1)));
        empty.push_back(static_cast<double>(r.report.empty_polls) / static_cast<double>(messages));
    }
    char clean_median[32] = "-"; // no unpreempted run: nothing to show
    if (!clean.empty())
        std::snprintf(clean_median, sizeof clean_median, "%.1f", quantile(clean, 0.5));
    std::printf("%-27s %8.1f %7.1f %7.1f %6zu/%-4zu %8s %11.1f %12.2f\n", name, quantile(all, 0.5), quantile(all, 0.25),
                quantile(all, 0.75), clean.size(), all.size(), clean_median, quantile(per_read, 0.5), quantile(empty, 0.5));
}

/// The time of one line over the time of separate lines, pair by pair: median, quartiles, and
/// in how many pairs the one-line run was the slower.
void print_ratio_row(const char* which, const std::vector<double>& ratios) {
    if (ratios.empty()) {
        std::printf("one line / separate lines, %-21s     0 pairs\n", which);
        return;
    }
    const auto slower = std::count_if(ratios.begin(), ratios.end(), [](double r) { return r > 1; });
    std::printf("one line / separate lines, %-21s %5zu pairs: median %.2f (p25 %.2f, p75 %.2f); one line slower in %td\n",
                which, ratios.size(), quantile(ratios, 0.5), quantile(ratios, 0.25), quantile(ratios, 0.75), slower);
}

/// --pairs: the false-sharing measurement. One mapping, one consumer for all the runs.
int run_pairs(const Settings& settings, const Narrator& say, bool two_cpus) {
    // A first pair warms up (the consumer starts, the pages fault in); it is not reported.
    const std::uint64_t runs = 2ull * (settings.pairs + 1);
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const auto ring_size = (static_cast<std::size_t>(ring::kControlSize + settings.capacity) + page - 1) / page * page;
    // --pairs is at most 100000, so this fits in 64 bits; on a 32-bit system it may not fit a size_t.
    const std::uint64_t wanted = kLayouts * std::uint64_t{ring_size} + sizeof(RunReport) * (1 + runs);
    if (wanted > SIZE_MAX)
        throw_error(ENOMEM, "mmap", "--pairs " + std::to_string(settings.pairs) + " needs " + std::to_string(wanted) +
                                        " bytes, more than this system can map");
    const auto size = static_cast<std::size_t>(wanted);
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(MAP_SHARED|MAP_ANONYMOUS)");
    Mapping mapping(base, size);
    auto* bytes = static_cast<std::byte*>(base);
    ring::Ring separate(bytes, settings.capacity, ring::Layout::kSeparateLines);
    ring::Ring one_line(bytes + ring_size, settings.capacity, ring::Layout::kOneLine);
    PairArea area{{&separate, &one_line},
                  reinterpret_cast<std::uint64_t*>(bytes + kLayouts * ring_size),
                  reinterpret_cast<std::uint64_t*>(bytes + kLayouts * ring_size + sizeof(std::uint64_t)),
                  reinterpret_cast<RunReport*>(bytes + kLayouts * ring_size + sizeof(RunReport))};
    say.say("%u pairs of runs of %llu messages of %u bytes (%s), ring of %llu bytes, the layouts alternating AB BA AB ... after a warm-up pair; %s",
            settings.pairs, static_cast<unsigned long long>(settings.messages), settings.payload,
            settings.ping_pong ? "ping-pong: one record in flight" : "streaming",
            static_cast<unsigned long long>(settings.capacity),
            two_cpus ? "producer pinned to CPU 0, consumer to CPU 1" : "one CPU: both on it");
    std::fflush(stdout);
    const pid_t producer = ::getpid();
    pid_t consumer = ::fork();
    if (consumer == -1)
        throw_errno("fork");
    if (consumer == 0) {
        die_with_parent(producer);
        if (two_cpus)
            pin_to_cpu(1);
        consume_runs(area, runs, settings);
    }
    if (two_cpus)
        pin_to_cpu(0);
    std::vector<std::uint8_t> payload(settings.payload, 0x5a);
    std::vector<RunResult> results[kLayouts];
    for (std::uint64_t t = 0; t < runs; ++t) {
        RunResult result = produce_run(area, t, settings, consumer, payload);
        if (t >= 2)
            results[layout_of_run(t)].push_back(result);
    }
    int status = 0;
    if (::waitpid(consumer, &status, 0) == -1)
        throw_errno("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw Failure("the consumer failed (wait status " + std::to_string(status) + ")");

    std::printf("%-27s %8s %7s %7s %11s %8s %11s %12s\n", "layout (ns per message)", "median", "p25", "p75", "unpreempted",
                "median", "records per", "empty polls");
    std::printf("%-27s %8s %7s %7s %11s %8s %11s %12s\n", "", "", "", "", "runs", "of those", "read", "per record");
    print_layout_row("tail/head on separate lines", results[0], settings.messages);
    print_layout_row("tail/head on one line", results[1], settings.messages);
    // Pair p is the p-th run of each layout: runs 2p + 2 and 2p + 3 (after the warm-up pair), back to back.
    std::vector<double> ratios, clean_ratios;
    for (unsigned p = 0; p < settings.pairs; ++p) {
        const RunResult& a = results[0][p];
        const RunResult& b = results[1][p];
        ratios.push_back(b.ns_per_message / a.ns_per_message);
        if (!a.preempted && !b.preempted)
            clean_ratios.push_back(ratios.back());
    }
    print_ratio_row("both runs unpreempted", clean_ratios);
    print_ratio_row("all pairs", ratios);
    return kExitSuccess;
}

int run(const Settings& settings, const Narrator& say) {
    const bool two_cpus = ::sysconf(_SC_NPROCESSORS_ONLN) >= 2;
    if (settings.pairs > 0)
        return run_pairs(settings, say, two_cpus);
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
        spec.extra.push_back({"--messages", true, [&](const std::string& v) {
                                  settings.messages = parse_count("--messages", v);
                                  settings.messages_given = true;
                              }});
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
        spec.extra.push_back({"--pairs", true, [&](const std::string& v) {
                                  settings.pairs = static_cast<unsigned>(std::min<std::uint64_t>(parse_count("--pairs", v), 100000));
                              }});
        spec.extra.push_back({"--ping-pong", false, [&](const std::string&) { settings.ping_pong = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        if (settings.payload > ring::max_payload_for(settings.capacity))
            throw UsageError("--payload: at most " + std::to_string(ring::max_payload_for(settings.capacity)) +
                             " bytes for this --capacity");
        if (settings.ping_pong && settings.pairs == 0)
            throw UsageError("--ping-pong: only with --pairs");
        if (settings.pairs > 0 && !settings.messages_given)
            settings.messages = kPairMessages;
        Narrator say("ring_bench", options.quiet);
        return run(settings, say);
    });
}
