/// @file labs/ring/reader.cpp
/// @brief Lab ring, the consumer: reads records from the writer's ring and copies their
///        payloads to standard output; spins briefly when the ring is empty, then sleeps on a
///        futex.
///
/// Usage: `reader [--name /NAME] [--spin N] [--timeout SECONDS] [--quiet]`, with
/// `build/labs/ring/writer` in another terminal (either may start first).
///
/// The calls it teaches, in order: `shm_open(3)`, `fstat(2)`, `mmap(2)` (chapter 02), the magic
/// loaded with acquire ordering and the descriptor copied once and validated; then Ring::read()
/// (a length of 0 or less is "not written yet"; padding skipped; what was read is zeroed before
/// head moves on, with a release store); when nothing is ready for `--spin` looks, the futex word
/// is set and `futex(2)` `FUTEX_WAIT` sleeps until the writer's `FUTEX_WAKE`.
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

const char* const kUsage = R"(Usage: reader [OPTIONS]

Lab ring, the consumer. Opens the writer's ring (waiting for it to appear), claims it, and
copies every record's payload to standard output until the end record.

Options:
  --name /NAME       the shared-memory object (default /shm-lab-ring)
  --spin N           looks at an empty ring before sleeping on the futex (default 1000;
                     0 sleeps at once)
  --timeout SECONDS  how long to wait for the writer's ring to appear (default 60)
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the whole stream arrived; 1 a runtime failure; 2 a usage error.
)";

/// The writer's ring, opened, mapped and validated.
struct OpenedRing {
    UniqueFd fd; ///< kept open: it holds the reader's lock byte
    Mapping mapping;
    ring::Descriptor descriptor; ///< the validated copy
};

/// Opens the object (waiting, bounded, for it to exist, have a size and a magic), then copies the
/// descriptor once and validates the copy against the real size.
OpenedRing open_ring(const Options& options, const Narrator& say) {
    Deadline deadline(options.timeout_seconds);
    const std::string call = "shm_open(\"" + options.name + "\", O_RDWR)";
    bool said_waiting = false;
    for (;;) {
        throw_if_stopped();
        int fd = ::shm_open(options.name.c_str(), O_RDWR, 0);
        if (fd == -1 && errno != ENOENT)
            throw_errno(call);
        if (fd != -1) {
            OpenedRing opened{UniqueFd(fd), {}, {}};
            struct stat status {};
            if (::fstat(fd, &status) == -1)
                throw_errno("fstat(fd=" + std::to_string(fd) + ")");
            const std::size_t size = static_cast<std::size_t>(status.st_size);
            if (size >= ring::kControlSize + ring::kMinCapacity) {
                void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (base == MAP_FAILED)
                    throw_errno("mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED)");
                opened.mapping = Mapping(base, size);
                auto* shared = static_cast<ring::Descriptor*>(base);
                if (std::atomic_ref<std::uint32_t>(shared->magic).load(std::memory_order_acquire) == ring::kMagic) {
                    opened.descriptor = *shared; // one copy; validate and use only the copy
                    say.say("%s = %d, fstat: size=%zu, mmap = %p", call.c_str(), fd, size, base);
                    const ring::Descriptor& d = opened.descriptor;
                    if (d.version != ring::kVersion || !ring::valid_capacity(d.capacity) ||
                        d.capacity > size - ring::kControlSize || d.max_payload != ring::max_payload_for(d.capacity) ||
                        d.layout > static_cast<std::uint32_t>(ring::Layout::kOneLine))
                        throw Failure("the ring's descriptor does not validate (version " + std::to_string(d.version) +
                                      ", capacity " + std::to_string(d.capacity) + ", object size " +
                                      std::to_string(size) + ")");
                    return opened;
                }
            }
            // Not ready yet (no size, or no magic): close and look again.
        }
        if (deadline.expired())
            throw Failure(call + ": no ready ring within " + seconds_text(deadline.seconds()) +
                          ": is the writer running? start build/labs/ring/writer");
        if (!said_waiting) {
            say.say("waiting up to %s for the writer's ring %s", seconds_text(options.timeout_seconds).c_str(),
                    options.name.c_str());
            said_waiting = true;
        }
        pause_briefly(std::chrono::milliseconds(10));
    }
}

/// What the reader counts, for the last narration line.
struct Counts {
    std::uint64_t bytes = 0, records = 0, sleeps = 0;
};

int run(const Options& options, std::uint64_t spins, const Narrator& say) {
    OpenedRing opened = open_ring(options, say);
    const int fd = opened.fd.get();
    if (!ring::take_lock_byte(fd, ring::kReaderByte))
        throw Failure("another reader has claimed " + options.name + " (it holds the reader's lock byte)");
    if (!ring::lock_byte_held(fd, ring::kWriterByte)) {
        // A writer that died before a reader came left its name: whoever notices removes it.
        ::shm_unlink(options.name.c_str());
        throw Failure("the writer of " + options.name + " is dead (its lock byte is free); removed the name");
    }
    const ring::Layout layout = static_cast<ring::Layout>(opened.descriptor.layout);
    say.say("ring valid: capacity=%llu max_payload=%u%s; claimed (F_OFD_SETLK on byte 1)",
            static_cast<unsigned long long>(opened.descriptor.capacity), opened.descriptor.max_payload,
            layout == ring::Layout::kOneLine ? " one-line layout" : "");
    ring::Ring ring(static_cast<std::byte*>(opened.mapping.get()), opened.descriptor.capacity, layout);

    // Payloads are gathered and written in large pieces: one write(2) per record would cost
    // more than the ring itself.
    std::string out;
    out.reserve(1 << 17);
    bool end = false;
    Counts counts;
    auto handle = [&](std::int32_t type, const std::byte* payload, std::int32_t length) {
        if (type == ring::kEndType) {
            end = true;
            return;
        }
        if (type != ring::kDataType)
            throw Failure("unexpected record type " + std::to_string(type));
        out.append(reinterpret_cast<const char*>(payload), static_cast<std::size_t>(length));
        counts.bytes += static_cast<std::uint64_t>(length);
        ++counts.records;
    };
    auto flush = [&] {
        write_all(STDOUT_FILENO, reinterpret_cast<const std::uint8_t*>(out.data()), out.size());
        out.clear();
    };
    std::uint64_t idle = 0;
    while (!end) {
        if (ring.read(handle) > 0) {
            idle = 0;
            if (out.size() >= (1 << 16))
                flush();
            continue;
        }
        if (!out.empty())
            flush();
        if (idle++ < spins)
            continue; // spin: the next record is likely microseconds away
        idle = 0;
        if (ring.prepare_to_sleep())
            continue; // a record arrived between the last look and the futex word
        ++counts.sleeps;
        const timespec slice = to_timespec(kLivenessInterval);
        long result = ring::futex_wait(ring.sleeping_word(), 1, slice);
        if (result == -1 && errno == ETIMEDOUT && !ring::lock_byte_held(fd, ring::kWriterByte))
            throw Failure("the writer died (its lock byte is free) before the end of the stream");
        throw_if_stopped();
    }
    flush();
    ring.confirmed().store(1, std::memory_order_release);
    say.say("end of stream: %llu bytes in %llu records; slept on the futex %llu times; confirmed",
            static_cast<unsigned long long>(counts.bytes), static_cast<unsigned long long>(counts.records),
            static_cast<unsigned long long>(counts.sleeps));
    return kExitSuccess;
}

} // namespace

int main(int argc, char** argv) {
    return run_main("reader", [&] {
        std::uint64_t spins = 1000;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = "/shm-lab-ring";
        spec.extra.push_back({"--spin", true, [&](const std::string& value) {
                                  char* end = nullptr;
                                  errno = 0;
                                  spins = std::strtoull(value.c_str(), &end, 10);
                                  if (value.empty() || value[0] == '-' || *end != '\0' || errno != 0)
                                      throw UsageError("--spin: expected a number of looks, not \"" + value + "\"");
                              }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        if (options.name.size() < 2 || options.name[0] != '/' || options.name.find('/', 1) != std::string::npos)
            throw UsageError("--name: expected /NAME with no other slash");
        Narrator say("reader", options.quiet);
        install_stop_handlers();
        return run(options, spins, say);
    });
}
