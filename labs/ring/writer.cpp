/// @file labs/ring/writer.cpp
/// @brief Lab ring, the producer: streams its input through a lock-free single-producer
///        single-consumer ring in a `/dev/shm` object, as Aeron's log buffers and Agrona's
///        `OneToOneRingBuffer` do.
///
/// Usage: `writer [--name /NAME] [--capacity BYTES] [--record BYTES] [--one-line] [--timeout S]
///         [--quiet] [MESSAGE...]`, with `reader [--name /NAME]` in another terminal.
///
///     terminal 1:  build/labs/ring/writer "hello, ring"
///     terminal 2:  build/labs/ring/reader
///
/// The calls it teaches, in order: `shm_open(3)` with `O_CREAT|O_EXCL`, `ftruncate(2)`,
/// `mmap(2)` as in chapter 02; the ring's descriptor published with its magic stored last; then
/// for every block Ring::write() (payload first, length last with a release store, a padding
/// record at the wrap) and, when the reader said it sleeps, `futex(2)` `FUTEX_WAKE`. When the
/// ring is full the writer does not block silently: it says so, counts it, and waits at most
/// `--timeout` seconds for the reader to make room.
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.hpp"
#include "liveness.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "ring.hpp"
#include "stream.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: writer [OPTIONS] [MESSAGE...]

Lab ring, the producer. Creates a single-producer single-consumer ring in a POSIX
shared-memory object and sends each MESSAGE, followed by a newline, through it; with no
MESSAGE, sends standard input until end of file. Start build/labs/ring/reader to receive.

Options:
  --name /NAME       the shared-memory object (default /shm-lab-ring)
  --capacity BYTES   size of the ring's data area, a power of two from 1024 to
                     1073741824 (default 65536)
  --record BYTES     largest payload of one record (default 4096; at most an eighth of
                     the capacity minus 8)
  --one-line         put tail, head cache and head on one cache line (false sharing),
                     to compare with the default layout
  --timeout SECONDS  how long to wait for a reader, for room in a full ring, and for the
                     reader's confirmation (default 60)
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage error.
)";

/// The writer's own options.
struct RingOptions {
    std::uint64_t capacity = 65536;
    std::uint32_t record = 4096;
    ring::Layout layout = ring::Layout::kSeparateLines;
};

/// What the writer counts while streaming, for the last narration line.
struct Counts {
    std::uint64_t bytes = 0, records = 0, wakes = 0, full = 0;
};

std::uint64_t parse_bytes(const std::string& option, const std::string& text) {
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(text.c_str(), &end, 10);
    if (text.empty() || text[0] == '-' || *end != '\0' || errno != 0)
        throw UsageError(option + ": expected a number of bytes, not \"" + text + "\"");
    return value;
}

/// Removes the name on error paths, until the lesson removes it on purpose.
struct NameGuard {
    std::string name;
    ~NameGuard() {
        if (!name.empty())
            ::shm_unlink(name.c_str());
    }
};

/// The ring's object: created exclusively (chapter 02), sized, mapped, locked (liveness), and
/// published with its magic stored last.
struct CreatedRing {
    UniqueFd fd;
    Mapping mapping;
};

CreatedRing create_ring(const Options& options, const RingOptions& settings, NameGuard& guard, const Narrator& say) {
    const std::string& name = options.name;
    int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd == -1)
        throw_errno("shm_open(\"" + name + "\", O_RDWR|O_CREAT|O_EXCL, 0600)",
                    errno == EEXIST ? "a writer is running, or a crashed one left it: rm /dev/shm" + name : "");
    CreatedRing created{UniqueFd(fd), {}};
    guard.name = name;
    say.say("shm_open(\"%s\", O_RDWR|O_CREAT|O_EXCL, 0600) = %d", name.c_str(), fd);
    // (--capacity is bounded, so the size fits a 32-bit size_t too)
    const auto size = static_cast<std::size_t>(ring::kControlSize + settings.capacity);
    // A new object has size 0: size it before mapping (touching past the end is SIGBUS).
    if (::ftruncate(fd, static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate(fd=" + std::to_string(fd) + ", " + std::to_string(size) + ")");
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED)");
    created.mapping = Mapping(base, size);
    say.say("ftruncate(fd=%d, %zu), mmap(%zu, MAP_SHARED) = %p: 1024-byte control block, %llu-byte data area",
            fd, size, size, base, static_cast<unsigned long long>(settings.capacity));
    if (!ring::take_lock_byte(fd, ring::kWriterByte))
        throw Failure("the writer's lock byte is taken: another writer has this object");
    // The descriptor, then the magic last with release: a reader that loads the magic with
    // acquire sees every field. The data area and the control words are zero (ftruncate).
    auto* descriptor = static_cast<ring::Descriptor*>(base);
    descriptor->version = ring::kVersion;
    descriptor->capacity = settings.capacity;
    descriptor->max_payload = ring::max_payload_for(settings.capacity);
    descriptor->layout = static_cast<std::uint32_t>(settings.layout);
    std::atomic_ref<std::uint32_t>(descriptor->magic).store(ring::kMagic, std::memory_order_release);
    const ring::Offsets offsets = ring::offsets_of(settings.layout);
    say.say("ring published: capacity=%llu max_payload=%u tail@%zu head_cache@%zu head@%zu%s",
            static_cast<unsigned long long>(settings.capacity), descriptor->max_payload, offsets.tail,
            offsets.head_cache, offsets.head,
            settings.layout == ring::Layout::kOneLine ? " (one cache line: false sharing)" : " (separate cache lines)");
    return created;
}

/// Waits (bounded) until a reader holds its lock byte, then removes the name: from now on no
/// crash can leave the object behind (open-then-unlink, as in chapter 02).
void wait_for_reader(const CreatedRing& created, const Options& options, NameGuard& guard, const Narrator& say) {
    say.say("waiting up to %s for a reader: start build/labs/ring/reader%s",
            seconds_text(options.timeout_seconds).c_str(),
            options.name == "/shm-lab-ring" ? "" : (" --name " + options.name).c_str());
    Deadline deadline(options.timeout_seconds);
    while (!ring::lock_byte_held(created.fd.get(), ring::kReaderByte)) {
        throw_if_stopped();
        if (deadline.expired())
            throw Failure("no reader came within " + seconds_text(deadline.seconds()) +
                          ": start build/labs/ring/reader, or pass a longer --timeout");
        pause_briefly(std::chrono::milliseconds(10));
    }
    if (::shm_unlink(options.name.c_str()) == -1)
        throw_errno("shm_unlink(\"" + options.name + "\")");
    guard.name.clear();
    say.say("a reader holds its lock byte; shm_unlink(\"%s\") = 0", options.name.c_str());
}

/// Appends one record; when the ring is full, says so (once), then waits for room: at most
/// `--timeout` seconds without progress, checking once a second that the reader lives. Aeron's
/// publication returns BACK_PRESSURED here and lets the application choose; this writer waits.
void append(ring::Ring& ring, int fd, std::int32_t type, const std::uint8_t* payload, std::int32_t length,
            double timeout_seconds, Counts& counts, const Narrator& say) {
    if (!ring.write(type, payload, length)) {
        if (counts.full++ == 0)
            say.say("ring full: the reader is slower; waiting for room (further waits quietly, at most %s each)",
                    seconds_text(timeout_seconds).c_str());
        Deadline no_progress(timeout_seconds);
        auto next_check = std::chrono::steady_clock::now() + kLivenessInterval;
        std::uint64_t head = ring.head();
        const timespec nap{0, 50 * 1000};
        while (!ring.write(type, payload, length)) {
            throw_if_stopped();
            if (ring.head() != head) {
                head = ring.head();
                no_progress = Deadline(timeout_seconds);
            } else if (no_progress.expired()) {
                throw Failure("the ring stayed full for " + seconds_text(timeout_seconds) +
                              ": the reader is stuck");
            }
            if (std::chrono::steady_clock::now() >= next_check) {
                if (!ring::lock_byte_held(fd, ring::kReaderByte))
                    throw Failure("the reader died (its lock byte is free)");
                next_check = std::chrono::steady_clock::now() + kLivenessInterval;
            }
            ::clock_nanosleep(CLOCK_MONOTONIC, 0, &nap, nullptr);
        }
    }
    ++counts.records;
    counts.bytes += static_cast<std::uint64_t>(length);
    if (ring.consumer_needs_wake()) {
        ring::futex_wake(ring.sleeping_word(), 1);
        ++counts.wakes;
    }
}

int run(const Options& options, const RingOptions& settings, const Narrator& say) {
    NameGuard guard;
    CreatedRing created = create_ring(options, settings, guard, say);
    wait_for_reader(created, options, guard, say);
    ring::Ring ring(static_cast<std::byte*>(created.mapping.get()), settings.capacity, settings.layout);
    const int fd = created.fd.get(); // kept open: it holds the writer's lock byte

    Input input(options.operands);
    std::vector<std::uint8_t> block(settings.record);
    Counts counts;
    auto reader_alive = [&] { return ring::lock_byte_held(fd, ring::kReaderByte); };
    for (;;) {
        std::size_t got = input.next(block.data(), block.size(), reader_alive);
        if (got == 0)
            break;
        append(ring, fd, ring::kDataType, block.data(), static_cast<std::int32_t>(got), options.timeout_seconds,
               counts, say);
    }
    Counts end_counts;
    append(ring, fd, ring::kEndType, nullptr, 0, options.timeout_seconds, end_counts, say);
    counts.wakes += end_counts.wakes;
    say.say("%llu bytes in %llu records, %llu padding records, %llu futex wakes, ring full %llu times",
            static_cast<unsigned long long>(counts.bytes), static_cast<unsigned long long>(counts.records),
            static_cast<unsigned long long>(ring.padding_records()), static_cast<unsigned long long>(counts.wakes),
            static_cast<unsigned long long>(counts.full + end_counts.full));

    // The reader sets `confirmed` after the end record; wait for it (bounded), as every chapter
    // does, so that the writer's exit status says the stream arrived.
    Deadline deadline(options.timeout_seconds);
    auto next_check = std::chrono::steady_clock::now() + kLivenessInterval;
    while (ring.confirmed().load(std::memory_order_acquire) == 0) {
        throw_if_stopped();
        if (deadline.expired())
            throw Failure("the reader did not confirm within " + seconds_text(deadline.seconds()));
        if (std::chrono::steady_clock::now() >= next_check) {
            if (!ring::lock_byte_held(fd, ring::kReaderByte))
                throw Failure("the reader died before it confirmed the end of the stream");
            next_check = std::chrono::steady_clock::now() + kLivenessInterval;
        }
        pause_briefly(std::chrono::milliseconds(1));
    }
    say.say("the reader confirmed the end of the stream");
    return kExitSuccess;
}

} // namespace

int main(int argc, char** argv) {
    return run_main("writer", [&] {
        RingOptions settings;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = "/shm-lab-ring";
        spec.operands = true;
        spec.extra.push_back({"--capacity", true, [&](const std::string& value) {
                                  settings.capacity = parse_bytes("--capacity", value);
                                  if (!ring::valid_capacity(settings.capacity))
                                      throw UsageError("--capacity: expected a power of two from 1024 to 1073741824");
                              }});
        spec.extra.push_back({"--record", true, [&](const std::string& value) {
                                  std::uint64_t record = parse_bytes("--record", value);
                                  if (record == 0 || record > 0x7fffffff)
                                      throw UsageError("--record: expected 1 or more bytes");
                                  settings.record = static_cast<std::uint32_t>(record);
                              }});
        spec.extra.push_back({"--one-line", false, [&](const std::string&) { settings.layout = ring::Layout::kOneLine; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        if (options.name.size() < 2 || options.name[0] != '/' || options.name.find('/', 1) != std::string::npos)
            throw UsageError("--name: expected /NAME with no other slash");
        if (settings.record > ring::max_payload_for(settings.capacity))
            throw UsageError("--record: at most " + std::to_string(ring::max_payload_for(settings.capacity)) +
                             " bytes for this --capacity (an eighth of it, minus the 8-byte header)");
        Narrator say("writer", options.quiet);
        install_stop_handlers();
        return run(options, settings, say);
    });
}
