/// @file 06-zero-copy/bench.cpp
/// @brief `make bench`: every technique side by side, in one run, on this machine.
///
/// Usage: `bench [--quick | --tiny] [--out DIR] [--build DIR] [--no-plots] [--filter RE]`, or
/// `bench --replot [--out DIR]` to draw the plots again from the CSV files of a run.
///
/// Three questions, each measured between two processes (a peer forked once per run):
/// - **Latency**: a 64-byte round trip over cache-line ping-pong (the floor), a spinning
///   mailbox, a futex, a POSIX semaphore in shared memory, a System V semaphore, an eventfd, a
///   pipe and a socketpair.
/// - **Throughput**: 1 GiB (64 MiB with --quick) at 4 KiB, 64 KiB and 1 MiB blocks through an
///   SPSC ring in shared memory (spin, then spin-then-futex), a pipe, an AF_UNIX stream,
///   `vmsplice`+`splice`, and `memcpy` (the ceiling); and every chapter's pair as shipped (the
///   real binaries, at their 64 KiB block) against `cat | cat`.
/// - **By handle against by copy**, 4 KiB to 64 MiB per message: copying through a socket, a
///   fresh memfd per message (create, fill, send, map, read, unmap), and the pool mapped once
///   (only an index travels; once more with the reader reading every byte). Page faults per
///   message (`getrusage`, both processes) and TLB shootdowns (the TLB line of
///   `/proc/interrupts`, machine-wide) beside the times.
///
/// Google Benchmark runs the cases: fixed iteration counts (one run forks its peer once: the
/// library calls Setup-like code again for every iteration-count probe, see ANCHORS.md),
/// `--benchmark_enable_random_interleaving` so that what is compared runs interleaved,
/// repetitions (5 at least), manual time. Each run warms up before it measures. A reporter of
/// ours collects every run, and this program takes the medians, prints the table on standard
/// output, writes CSV files and draws PNG plots with gnuplot. Progress goes to standard error.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/futex.h>
#include <semaphore.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

/// The environment the chapter programs are started with (posix_spawn).
extern char** environ;

namespace {

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    std::string mode = "full";          ///< full, quick or tiny
    std::string out_dir = "build/bench"; ///< where the CSV and PNG files go
    std::string build_dir = "build";     ///< where the chapters' binaries are
    bool plots = true;
    std::string filter;                  ///< only the cases whose name matches (a regex)
    int repetitions = 5;
    long latency_round_trips = 20000;
    std::uint64_t throughput_bytes = 1ull << 30;
    std::uint64_t pair_bytes = 1ull << 30;
    std::uint64_t handle_budget = 256ull << 20; ///< bytes per run for the by-handle cases
    std::vector<std::uint64_t> blocks = {4096, 65536, 1 << 20};
    std::vector<std::uint64_t> message_sizes;
};
Settings g_settings;

/// Progress on stderr, one line as each run starts: what it measures, n of m. (The library's
/// reporter hears of an interleaved case only when all its repetitions are done.)
int g_runs_started = 0, g_runs_total = 0;
void announce(const std::string& what) {
    std::fprintf(stderr, "bench: [%d/%d] %s\n", ++g_runs_started, g_runs_total, what.c_str());
}

[[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error(what + ": " + std::strerror(errno));
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t value) {
    // FUTEX_WAIT/FUTEX_WAKE without FUTEX_PRIVATE_FLAG: the word is shared between processes.
    return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, value, nullptr, nullptr, 0);
}
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t value) {
    futex(word, FUTEX_WAIT, value);
}
void futex_wake(std::atomic<std::uint32_t>* word) {
    futex(word, FUTEX_WAKE, 1);
}

/// Shared memory inherited by the forked peer: MAP_SHARED|MAP_ANONYMOUS (chapter 00).
struct SharedMemory {
    void* base = nullptr;
    std::size_t size = 0;
    explicit SharedMemory(std::size_t bytes) : size(bytes) {
        base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED)
            fail("mmap(MAP_SHARED|MAP_ANONYMOUS)");
        std::memset(base, 0, bytes); // fault every page in now, not while measuring
    }
    ~SharedMemory() { ::munmap(base, size); }
    SharedMemory(const SharedMemory&) = delete;
    SharedMemory& operator=(const SharedMemory&) = delete;
    template <class T> T* as(std::size_t offset = 0) { return reinterpret_cast<T*>(static_cast<char*>(base) + offset); }
};

/// Forks the peer, which runs `body` and exits; join() reaps it and checks it succeeded.
class Peer {
public:
    explicit Peer(const std::function<void()>& body) {
        pid_ = ::fork();
        if (pid_ == -1)
            fail("fork");
        if (pid_ == 0) {
            int status = 0;
            try {
                body();
            } catch (const std::exception& e) {
                std::fprintf(stderr, "bench: peer: %s\n", e.what());
                status = 1;
            }
            ::_exit(status);
        }
    }
    ~Peer() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    Peer(const Peer&) = delete;
    Peer& operator=(const Peer&) = delete;
    void join() {
        int status = 0;
        while (::waitpid(pid_, &status, 0) == -1 && errno == EINTR) {
        }
        pid_ = -1;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            throw std::runtime_error("the peer process failed");
    }

private:
    pid_t pid_ = -1;
};

void write_exact(int fd, const void* data, std::size_t length) {
    const char* bytes = static_cast<const char*>(data);
    while (length > 0) {
        ssize_t n = ::write(fd, bytes, length);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("write");
        bytes += n;
        length -= static_cast<std::size_t>(n);
    }
}
void read_exact(int fd, void* data, std::size_t length) {
    char* bytes = static_cast<char*>(data);
    while (length > 0) {
        ssize_t n = ::read(fd, bytes, length);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("read");
        bytes += n;
        length -= static_cast<std::size_t>(n);
    }
}

struct FdPair {
    int fd[2] = {-1, -1};
    ~FdPair() {
        for (int f : fd)
            if (f != -1)
                ::close(f);
    }
};

// ---------------------------------------------------------------------------------------------
// Latency: a 64-byte round trip. Each mechanism is a pair of one-way channels (to the peer and
// back) set up before the fork; send() publishes 64 bytes, receive() waits for them and copies
// them out.

constexpr std::size_t kMessage = 64;

/// A 64-byte message in one cache line: a 4-byte sequence word, then 60 bytes of payload. The
/// payload is written first, the sequence last with release ordering (as Agrona writes a
/// record's length last); the reader waits for the sequence with acquire ordering.
struct alignas(64) Mailbox {
    std::atomic<std::uint32_t> sequence;
    char payload[60];
};
static_assert(sizeof(Mailbox) == kMessage);

struct Channel {
    virtual ~Channel() = default;
    /// Direction 0 goes to the peer, 1 comes back.
    virtual void send(int direction, const char* message) = 0;
    virtual void receive(int direction, char* message) = 0;
};

/// Cache-line ping-pong: one shared counter, no payload. The floor: one cache line crossing
/// between the cores each way.
struct PingPong : Channel {
    SharedMemory memory{4096};
    std::atomic<std::uint64_t>& counter = *memory.as<std::atomic<std::uint64_t>>();
    std::uint64_t expected[2] = {0, 0};
    void send(int, const char*) override { counter.fetch_add(1, std::memory_order_release); }
    void receive(int direction, char*) override {
        // Direction 0 waits for odd values, direction 1 for even ones.
        std::uint64_t& next = expected[direction];
        next = next == 0 ? static_cast<std::uint64_t>(direction == 0 ? 1 : 2) : next + 2;
        while (counter.load(std::memory_order_acquire) < next)
            cpu_relax();
    }
};

/// A mailbox per direction, waited for by spinning (Spin), by a futex (Futex), or with the
/// signal carried by a POSIX semaphore, a System V semaphore, or an eventfd.
struct MailboxChannel : Channel {
    enum Wait { kSpin, kFutex, kPosixSem, kSysvSem, kEventfd };
    SharedMemory memory{4096};
    Mailbox* box = memory.as<Mailbox>(0);          // box[0], box[1]: one line each
    sem_t* sems = memory.as<sem_t>(256);           // two POSIX semaphores, pshared
    Wait wait;
    std::uint32_t sent[2] = {0, 0}, seen[2] = {0, 0};
    int sysv = -1;
    int events[2] = {-1, -1};

    explicit MailboxChannel(Wait how) : wait(how) {
        if (wait == kPosixSem)
            for (int i = 0; i < 2; ++i)
                if (::sem_init(&sems[i], 1, 0) == -1)
                    fail("sem_init");
        if (wait == kSysvSem && (sysv = ::semget(IPC_PRIVATE, 2, IPC_CREAT | 0600)) == -1)
            fail("semget");
        if (wait == kEventfd)
            for (int& fd : events)
                if ((fd = ::eventfd(0, EFD_CLOEXEC)) == -1)
                    fail("eventfd");
    }
    ~MailboxChannel() override {
        if (wait == kPosixSem)
            for (int i = 0; i < 2; ++i)
                ::sem_destroy(&sems[i]);
        if (sysv != -1)
            ::semctl(sysv, 0, IPC_RMID);
        for (int fd : events)
            if (fd != -1)
                ::close(fd);
    }
    void send(int d, const char* message) override {
        std::memcpy(box[d].payload, message, sizeof box[d].payload);
        box[d].sequence.store(++sent[d], std::memory_order_release);
        switch (wait) {
        case kSpin: break;
        case kFutex: futex_wake(&box[d].sequence); break;
        case kPosixSem:
            if (::sem_post(&sems[d]) == -1)
                fail("sem_post");
            break;
        case kSysvSem: {
            sembuf up{static_cast<unsigned short>(d), 1, 0};
            if (::semop(sysv, &up, 1) == -1)
                fail("semop");
            break;
        }
        case kEventfd: {
            std::uint64_t one = 1;
            write_exact(events[d], &one, sizeof one);
            break;
        }
        }
    }
    void receive(int d, char* message) override {
        const std::uint32_t want = ++seen[d];
        switch (wait) {
        case kSpin:
            while (box[d].sequence.load(std::memory_order_acquire) != want)
                cpu_relax();
            break;
        case kFutex:
            for (std::uint32_t now; (now = box[d].sequence.load(std::memory_order_acquire)) != want;)
                futex_wait(&box[d].sequence, now); // sleeps only while the word still holds `now`
            break;
        case kPosixSem:
            while (::sem_wait(&sems[d]) == -1)
                if (errno != EINTR)
                    fail("sem_wait");
            break;
        case kSysvSem: {
            sembuf down{static_cast<unsigned short>(d), -1, 0};
            while (::semop(sysv, &down, 1) == -1)
                if (errno != EINTR)
                    fail("semop");
            break;
        }
        case kEventfd: {
            std::uint64_t count;
            read_exact(events[d], &count, sizeof count);
            break;
        }
        }
        std::memcpy(message, box[d].payload, sizeof box[d].payload);
        (void)box[d].sequence.load(std::memory_order_acquire);
    }
};

/// A pipe each way, or one socketpair: the kernel copies the 64 bytes in and out.
struct StreamChannel : Channel {
    int out[2] = {-1, -1}; // write ends by direction
    int in[2] = {-1, -1};  // read ends by direction
    explicit StreamChannel(bool socket) {
        if (socket) {
            int pair[2];
            if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == -1)
                fail("socketpair");
            out[0] = pair[0], in[0] = pair[1], out[1] = pair[1], in[1] = pair[0];
        } else {
            for (int d = 0; d < 2; ++d) {
                int p[2];
                if (::pipe2(p, O_CLOEXEC) == -1)
                    fail("pipe2");
                in[d] = p[0], out[d] = p[1];
            }
        }
    }
    ~StreamChannel() override {
        std::vector<int> fds = {out[0], out[1], in[0], in[1]};
        std::sort(fds.begin(), fds.end());
        fds.erase(std::unique(fds.begin(), fds.end()), fds.end());
        for (int fd : fds)
            ::close(fd);
    }
    void send(int d, const char* message) override { write_exact(out[d], message, kMessage); }
    void receive(int d, char* message) override { read_exact(in[d], message, kMessage); }
};

std::unique_ptr<Channel> make_channel(const std::string& mechanism) {
    if (mechanism == "ping-pong") return std::make_unique<PingPong>();
    if (mechanism == "spinning mailbox") return std::make_unique<MailboxChannel>(MailboxChannel::kSpin);
    if (mechanism == "futex") return std::make_unique<MailboxChannel>(MailboxChannel::kFutex);
    if (mechanism == "POSIX semaphore") return std::make_unique<MailboxChannel>(MailboxChannel::kPosixSem);
    if (mechanism == "System V semaphore") return std::make_unique<MailboxChannel>(MailboxChannel::kSysvSem);
    if (mechanism == "eventfd") return std::make_unique<MailboxChannel>(MailboxChannel::kEventfd);
    if (mechanism == "pipe") return std::make_unique<StreamChannel>(false);
    return std::make_unique<StreamChannel>(true);
}

const std::vector<std::string> kLatencyMechanisms = {"ping-pong", "spinning mailbox", "futex", "POSIX semaphore",
                                                     "System V semaphore", "eventfd", "pipe", "socketpair"};

/// Median of a run, in the unit the group reports.
void latency_case(benchmark::State& state, const std::string& mechanism) {
    announce("latency: 64-byte round trips, " + mechanism);
    const long measured = g_settings.latency_round_trips;
    const long warm_up = std::max(100L, measured / 10);
    for (auto _ : state) {
        std::unique_ptr<Channel> channel = make_channel(mechanism);
        Peer peer([&] {
            char message[kMessage];
            for (long i = 0; i < warm_up + measured; ++i) {
                channel->receive(0, message);
                channel->send(1, message);
            }
        });
        char message[kMessage];
        std::memset(message, 'm', sizeof message);
        for (long i = 0; i < warm_up; ++i) {
            channel->send(0, message);
            channel->receive(1, message);
        }
        auto start = Clock::now();
        for (long i = 0; i < measured; ++i) {
            channel->send(0, message);
            channel->receive(1, message);
        }
        double elapsed = seconds_since(start);
        peer.join();
        state.SetIterationTime(elapsed);
        state.counters["value"] = elapsed / static_cast<double>(measured) * 1e9; // ns per round trip
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput: the peer produces `total` bytes in blocks, this process consumes them into its
// own buffer. Timed from a start signal to the last byte.

/// A single-producer single-consumer byte ring in shared memory: head (consumer) and tail
/// (producer) on their own cache lines, as Agrona and the Disruptor place them; positions count
/// bytes (mod 2^32, the ring is far smaller), so a futex can wait on either word.
struct Ring {
    alignas(64) std::atomic<std::uint32_t> tail;      // bytes produced
    alignas(64) std::atomic<std::uint32_t> head;      // bytes consumed
    alignas(64) std::atomic<std::uint32_t> consumer_sleeping;
    alignas(64) std::atomic<std::uint32_t> producer_sleeping;
    // The data follow the header's page: `capacity` bytes, 4 MiB (or four blocks where that is
    // more), room for the producer to run ahead while the consumer waits for a CPU: a ring of a
    // few blocks keeps the data in the caches but makes both sides sleep far more often.
};

/// Waits until `ready()` holds: spinning, and with `use_futex`, after a short spin, sleeping on
/// `word` with a flag the other side checks after each publication.
template <class Ready>
void ring_wait(Ready ready, std::atomic<std::uint32_t>& word, std::atomic<std::uint32_t>& sleeping, bool use_futex) {
    for (int spins = 0; !ready(); ++spins) {
        if (!use_futex || spins < 2000) {
            cpu_relax();
            continue;
        }
        std::uint32_t seen = word.load(std::memory_order_seq_cst);
        sleeping.store(1, std::memory_order_seq_cst);
        if (!ready())
            futex_wait(&word, seen);
        sleeping.store(0, std::memory_order_relaxed);
    }
}
void ring_publish(std::atomic<std::uint32_t>& word, std::uint32_t value, std::atomic<std::uint32_t>& sleeping,
                  bool use_futex) {
    word.store(value, std::memory_order_seq_cst);
    if (use_futex && sleeping.load(std::memory_order_seq_cst) != 0)
        futex_wake(&word);
}

/// One throughput run of an in-process method; returns seconds.
double throughput_run(const std::string& method, std::uint64_t block, std::uint64_t total) {
    std::vector<char> buffer(block, 'c');
    const std::uint64_t blocks = total / block;
    if (method == "memcpy") {
        std::vector<char> destination(block);
        for (int warm = 0; warm < 4; ++warm)
            std::memcpy(destination.data(), buffer.data(), block);
        auto start = Clock::now();
        for (std::uint64_t i = 0; i < blocks; ++i) {
            std::memcpy(destination.data(), buffer.data(), block);
            benchmark::DoNotOptimize(destination.data());
            benchmark::ClobberMemory();
        }
        return seconds_since(start);
    }
    FdPair go; // the start signal: setup is not measured
    if (::pipe2(go.fd, O_CLOEXEC) == -1)
        fail("pipe2");
    if (method == "ring spin" || method == "ring futex") {
        const bool use_futex = method == "ring futex";
        const std::uint32_t capacity = static_cast<std::uint32_t>(std::max<std::uint64_t>(4 * block, 4u << 20));
        SharedMemory memory(4096 + capacity);
        Ring& ring = *memory.as<Ring>();
        char* data = memory.as<char>(4096);
        Peer producer([&] {
            char start;
            read_exact(go.fd[0], &start, 1);
            std::uint32_t tail = 0;
            for (std::uint64_t i = 0; i < blocks; ++i) {
                ring_wait([&] { return capacity - (tail - ring.head.load(std::memory_order_acquire)) >= block; },
                          ring.head, ring.producer_sleeping, use_futex);
                std::memcpy(data + (tail % capacity), buffer.data(), block); // blocks divide the ring
                tail += static_cast<std::uint32_t>(block);
                ring_publish(ring.tail, tail, ring.consumer_sleeping, use_futex);
            }
        });
        auto start = Clock::now();
        write_exact(go.fd[1], "g", 1);
        std::uint32_t head = 0;
        for (std::uint64_t i = 0; i < blocks; ++i) {
            ring_wait([&] { return ring.tail.load(std::memory_order_acquire) - head >= block; }, ring.tail,
                      ring.consumer_sleeping, use_futex);
            std::memcpy(buffer.data(), data + (head % capacity), block);
            head += static_cast<std::uint32_t>(block);
            ring_publish(ring.head, head, ring.producer_sleeping, use_futex);
        }
        double elapsed = seconds_since(start);
        producer.join();
        return elapsed;
    }
    FdPair stream;
    if (method == "AF_UNIX stream") {
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, stream.fd) == -1)
            fail("socketpair");
    } else {
        if (::pipe2(stream.fd, O_CLOEXEC) == -1)
            fail("pipe2");
        // The pipe keeps its default size (64 KiB), as `cat | cat` has it.
    }
    const bool splice_case = method == "vmsplice+splice";
    Peer producer([&] {
        char start;
        read_exact(go.fd[0], &start, 1);
        for (std::uint64_t i = 0; i < blocks; ++i) {
            if (!splice_case) {
                write_exact(stream.fd[1], buffer.data(), block);
                continue;
            }
            // vmsplice maps the buffer's pages into the pipe instead of copying them.
            iovec iov{buffer.data(), block};
            while (iov.iov_len > 0) {
                ssize_t n = ::vmsplice(stream.fd[1], &iov, 1, 0);
                if (n <= 0)
                    fail("vmsplice");
                iov.iov_base = static_cast<char*>(iov.iov_base) + n;
                iov.iov_len -= static_cast<std::size_t>(n);
            }
        }
        ::close(stream.fd[1]);
    });
    int null_fd = splice_case ? ::open("/dev/null", O_WRONLY | O_CLOEXEC) : -1;
    auto start = Clock::now();
    write_exact(go.fd[1], "g", 1);
    std::uint64_t received = 0;
    while (received < total) {
        ssize_t n = splice_case ? ::splice(stream.fd[0], nullptr, null_fd, nullptr, block, SPLICE_F_MOVE)
                                : ::read(stream.fd[0], buffer.data(), block);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            fail(splice_case ? "splice" : "read");
        received += static_cast<std::uint64_t>(n);
    }
    double elapsed = seconds_since(start);
    if (null_fd != -1)
        ::close(null_fd);
    producer.join();
    return elapsed;
}

/// The chapters' pairs, as shipped: `source | writer ... reader > /dev/null`, and `cat | cat`.
struct PairCommand {
    std::string label;
    std::vector<std::vector<std::string>> stages; ///< a pipeline; the last stage's stdout is /dev/null
};

std::string g_scratch; ///< a private folder for the pairs' key files and sockets

std::vector<PairCommand> pair_commands(const std::string& scratch) {
    const std::string b = g_settings.build_dir + "/";
    const std::string tag = std::to_string(::getpid());
    return {
        {"cat piped to cat", {{"/bin/cat"}, {"/bin/cat"}}},
        {"01-sysv", {{b + "01-sysv/writer", "--quiet", "--name", scratch + "/key01"},
                     {"@parallel", b + "01-sysv/reader", "--quiet", "--name", scratch + "/key01"}}},
        {"02-posix-mmap", {{b + "02-posix-mmap/writer", "--quiet", "--name", "/bench-02-" + tag},
                           {"@parallel", b + "02-posix-mmap/reader", "--quiet", "--name", "/bench-02-" + tag}}},
        {"03-memfd", {{b + "03-memfd/writer", "--quiet", "--spawn"}}},
        {"04-fd-passing", {{b + "04-fd-passing/writer", "--quiet", "--name", scratch + "/s04"},
                           {"@parallel", b + "04-fd-passing/reader", "--quiet", "--name", scratch + "/s04"}}},
        {"05-dma-buf", {{b + "05-dma-buf/writer", "--quiet", "--name", scratch + "/s05"},
                        {"@parallel", b + "05-dma-buf/reader", "--quiet", "--name", scratch + "/s05"}}},
        {"labs/ring", {{b + "labs/ring/writer", "--quiet", "--name", "/bench-ring-" + tag, "--capacity", "1048576",
                        "--record", "65536"}, // the lab's ring pair, in 64 KiB records like the chapters' blocks
                       {"@parallel", b + "labs/ring/reader", "--quiet", "--name", "/bench-ring-" + tag}}},
        {"06-zero-copy pool", {{b + "06-zero-copy/writer", "--quiet", "--name", scratch + "/s06"},
                               {"@parallel", b + "06-zero-copy/reader", "--quiet", "--name", scratch + "/s06"}}},
    };
}

pid_t spawn(std::vector<std::string> argv, int in_fd, int out_fd) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in_fd, STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
    std::vector<char*> args;
    for (std::string& arg : argv)
        args.push_back(arg.data());
    args.push_back(nullptr);
    pid_t pid = -1;
    int error = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) {
        errno = error;
        fail("posix_spawn(" + argv[0] + ")");
    }
    return pid;
}

/// Runs one pipeline with `total` bytes of `block`-byte blocks on its input; returns seconds, or -77
/// when a program reports that this machine lacks what it needs.
double pair_run(const PairCommand& pair, std::uint64_t total, std::uint64_t block = 65536) {
    std::vector<char> buffer(block, 'p');
    int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd == -1)
        fail("open(/dev/null)");
    FdPair source;
    if (::pipe2(source.fd, O_CLOEXEC) == -1)
        fail("pipe2");
    std::vector<pid_t> pids;
    auto start = Clock::now();
    if (pair.stages.size() == 2 && pair.stages[1][0] == "@parallel") {
        // A writer and a reader that meet through the chapter's object: stdin -> writer, reader -> null.
        pids.push_back(spawn(pair.stages[0], source.fd[0], null_fd));
        std::vector<std::string> reader(pair.stages[1].begin() + 1, pair.stages[1].end());
        pids.push_back(spawn(reader, null_fd, null_fd));
    } else if (pair.stages.size() == 2) {
        FdPair middle; // cat | cat
        if (::pipe2(middle.fd, O_CLOEXEC) == -1)
            fail("pipe2");
        pids.push_back(spawn(pair.stages[0], source.fd[0], middle.fd[1]));
        pids.push_back(spawn(pair.stages[1], middle.fd[0], null_fd));
    } else {
        pids.push_back(spawn(pair.stages[0], source.fd[0], null_fd));
    }
    ::close(source.fd[0]);
    source.fd[0] = -1;
    for (std::uint64_t sent = 0; sent < total; sent += block) {
        ssize_t n = ::write(source.fd[1], buffer.data(), block);
        if (n != static_cast<ssize_t>(block))
            break; // the pipeline ended early: its status says why
    }
    ::close(source.fd[1]);
    source.fd[1] = -1;
    bool unsupported = false, failed = false;
    for (pid_t pid : pids) {
        int status = 0;
        while (::waitpid(pid, &status, 0) == -1 && errno == EINTR) {
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
            unsupported = true;
        else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed = true;
    }
    double elapsed = seconds_since(start);
    ::close(null_fd);
    if (unsupported)
        return -77;
    if (failed)
        throw std::runtime_error(pair.label + " failed");
    return elapsed;
}

void pair_case(benchmark::State& state, const std::string& label, const std::string& scratch) {
    announce("throughput: the pair " + label + " as shipped");
    static std::vector<std::string> unsupported; // asked once: a chapter that exits 77 is skipped
    if (std::find(unsupported.begin(), unsupported.end(), label) != unsupported.end()) {
        state.SkipWithError("skipped: this machine lacks what the chapter needs (exit 77)");
        for (auto _ : state) {
        }
        return;
    }
    for (auto _ : state) {
        for (const PairCommand& pair : pair_commands(scratch)) {
            if (pair.label != label)
                continue;
            try {
                double elapsed = pair_run(pair, std::min<std::uint64_t>(g_settings.pair_bytes, 8 << 20)); // warm up
                if (elapsed >= 0)
                    elapsed = pair_run(pair, g_settings.pair_bytes);
                if (elapsed < 0) {
                    unsupported.push_back(label);
                    state.SkipWithError("skipped: this machine lacks what the chapter needs (exit 77)");
                    return;
                }
                state.SetIterationTime(elapsed);
                state.counters["value"] = static_cast<double>(g_settings.pair_bytes) / elapsed / 1e9;
            } catch (const std::exception& e) {
                state.SkipWithError(e.what());
                return;
            }
        }
    }
}

const std::vector<std::string> kThroughputMethods = {"ring spin", "ring futex", "pipe", "AF_UNIX stream",
                                                     "vmsplice+splice", "memcpy", "pool pair"};

void throughput_case(benchmark::State& state, const std::string& method, std::uint64_t block) {
    announce("throughput: " + method + ", " + std::to_string(block) + "-byte blocks");
    for (auto _ : state) {
        double elapsed = 0;
        if (method == "pool pair") {
            // Chapter 06's real writer and reader, with slots of the block size.
            PairCommand pool = pair_commands(g_scratch).back();
            pool.stages[0].insert(pool.stages[0].end(), {"--slot-size", std::to_string(block)});
            pair_run(pool, std::min(block * 64, g_settings.throughput_bytes), block); // warm up
            elapsed = pair_run(pool, g_settings.throughput_bytes, block);
        } else {
            throughput_run(method, block, std::min(block * 64, g_settings.throughput_bytes)); // warm up
            elapsed = throughput_run(method, block, g_settings.throughput_bytes);
        }
        state.SetIterationTime(elapsed);
        state.counters["value"] = static_cast<double>(g_settings.throughput_bytes) / elapsed / 1e9; // GB/s
    }
}

// ---------------------------------------------------------------------------------------------
// By handle against by copy: one message of `size` bytes from this process to the peer, which
// acknowledges with one byte once it has what it needs; the time of that round trip per message.

struct FaultCounts {
    std::atomic<long> peer_faults; // minor faults the peer took while measured
};

long minor_faults() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    return usage.ru_minflt;
}

/// The TLB shootdown interrupts so far, summed over every CPU (the "TLB:" line of
/// /proc/interrupts on x86; 0 where the line does not exist).
long tlb_shootdowns() {
    std::ifstream interrupts("/proc/interrupts");
    std::string line;
    while (std::getline(interrupts, line)) {
        std::istringstream words(line);
        std::string label;
        words >> label;
        if (label != "TLB:")
            continue;
        long total = 0, count = 0;
        while (words >> count)
            total += count;
        return total;
    }
    return 0;
}

void send_fd(int socket_fd, int fd) {
    char byte = 'h';
    iovec iov{&byte, 1};
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
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    if (::sendmsg(socket_fd, &header, 0) != 1)
        fail("sendmsg");
}
int receive_fd(int socket_fd) {
    char byte;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr header{};
    header.msg_iov = &iov;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof control;
    if (::recvmsg(socket_fd, &header, MSG_CMSG_CLOEXEC) != 1)
        fail("recvmsg");
    cmsghdr* cmsg = CMSG_FIRSTHDR(&header);
    if (cmsg == nullptr || cmsg->cmsg_type != SCM_RIGHTS)
        throw std::runtime_error("no descriptor came");
    int fd;
    std::memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
    return fd;
}

/// Reads every byte (as 64-bit words), so the compiler cannot skip it.
std::uint64_t read_every_byte(const char* bytes, std::size_t size) {
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i + 8 <= size; i += 8) {
        std::uint64_t word;
        std::memcpy(&word, bytes + i, 8);
        sum += word;
    }
    return sum;
}

struct HandleResult {
    double seconds_per_message;
    double faults_per_message;
    double shootdowns_per_message;
};

HandleResult handle_run(const std::string& method, std::uint64_t size, long messages) {
    const long warm_up = 1;
    FdPair link;
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, link.fd) == -1)
        fail("socketpair");
    SharedMemory counts(4096);
    auto& peer_faults = counts.as<FaultCounts>()->peer_faults;
    const bool pool = method == "pool (index only)" || method == "pool (reader reads every byte)";
    const bool pool_reads = method == "pool (reader reads every byte)";

    // The pool, mapped once by both before anything is measured (the fork inherits the mapping,
    // exactly as if it had been passed once over the socket and mapped), one slot of `size`.
    std::unique_ptr<SharedMemory> pool_memory;
    if (pool)
        pool_memory = std::make_unique<SharedMemory>(size);
    std::vector<char> buffer(method == "copy through a socket" ? size : 0, 'b');

    Peer peer([&] {
        std::vector<char> into(method == "copy through a socket" ? size : 0);
        long faults_before = 0;
        for (long i = 0; i < warm_up + messages; ++i) {
            if (i == warm_up)
                faults_before = minor_faults();
            if (method == "copy through a socket") {
                read_exact(link.fd[1], into.data(), size);
                benchmark::DoNotOptimize(into.data());
            } else if (method == "fresh memfd per message") {
                int fd = receive_fd(link.fd[1]);
                struct stat info {};
                if (::fstat(fd, &info) == -1)
                    fail("fstat");
                void* base = ::mmap(nullptr, static_cast<std::size_t>(info.st_size), PROT_READ, MAP_SHARED, fd, 0);
                if (base == MAP_FAILED)
                    fail("mmap");
                benchmark::DoNotOptimize(read_every_byte(static_cast<const char*>(base), size));
                ::munmap(base, static_cast<std::size_t>(info.st_size));
                ::close(fd);
            } else {
                std::uint64_t index;
                read_exact(link.fd[1], &index, sizeof index);
                if (pool_reads)
                    benchmark::DoNotOptimize(read_every_byte(pool_memory->as<char>(), size));
            }
            write_exact(link.fd[1], "a", 1);
        }
        peer_faults.store(minor_faults() - faults_before);
    });

    auto one_message = [&] {
        if (method == "copy through a socket") {
            write_exact(link.fd[0], buffer.data(), size);
        } else if (method == "fresh memfd per message") {
            int fd = ::memfd_create("bench", MFD_CLOEXEC);
            if (fd == -1)
                fail("memfd_create");
            if (::ftruncate(fd, static_cast<off_t>(size)) == -1)
                fail("ftruncate");
            void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (base == MAP_FAILED)
                fail("mmap");
            std::memset(base, 'f', size); // the producer writes the message into the new memory
            ::munmap(base, size);
            send_fd(link.fd[0], fd);
            ::close(fd);
        } else {
            std::uint64_t index = 0;
            write_exact(link.fd[0], &index, sizeof index);
        }
        char ack;
        read_exact(link.fd[0], &ack, 1);
    };
    for (long i = 0; i < warm_up; ++i)
        one_message();
    long faults_before = minor_faults();
    long shootdowns_before = tlb_shootdowns();
    auto start = Clock::now();
    for (long i = 0; i < messages; ++i)
        one_message();
    double elapsed = seconds_since(start);
    long shootdowns = tlb_shootdowns() - shootdowns_before;
    long faults = minor_faults() - faults_before;
    peer.join();
    faults += peer_faults.load();
    const double n = static_cast<double>(messages);
    return {elapsed / n, static_cast<double>(faults) / n, static_cast<double>(shootdowns) / n};
}

const std::vector<std::string> kHandleMethods = {"copy through a socket", "fresh memfd per message",
                                                 "pool (index only)", "pool (reader reads every byte)"};

long handle_messages(const std::string& method, std::uint64_t size) {
    // Handing over an index costs the same at every size: as many messages as at the smallest.
    if (method == "pool (index only)")
        size = g_settings.message_sizes.front();
    long count = static_cast<long>(g_settings.handle_budget / size);
    return std::clamp(count, g_settings.mode == "full" ? 8L : 3L, 2000L);
}

void handle_case(benchmark::State& state, const std::string& method, std::uint64_t size) {
    announce("by handle or by copy: " + method + ", " + std::to_string(size) + "-byte messages");
    for (auto _ : state) {
        long messages = handle_messages(method, size);
        HandleResult result = handle_run(method, size, messages);
        state.SetIterationTime(result.seconds_per_message * static_cast<double>(messages));
        state.counters["value"] = result.seconds_per_message * 1e6; // us per message
        state.counters["faults"] = result.faults_per_message;
        state.counters["tlb"] = result.shootdowns_per_message;
    }
}

// ---------------------------------------------------------------------------------------------
// Collecting: a reporter that keeps every run and shows progress on stderr.

struct Case {
    std::string group;  ///< latency, throughput, pairs, handle
    std::string method;
    std::uint64_t size; ///< block or message bytes; 0 for latency
};
std::map<std::string, Case> g_cases; // by benchmark name

struct Sample {
    std::vector<double> value, faults, tlb;
    std::string skipped;
};
std::map<std::string, Sample> g_samples;

class Collector : public benchmark::BenchmarkReporter {
public:
    bool ReportContext(const Context&) override { return true; }
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const Run& run : runs) {
            if (run.run_type != Run::RT_Iteration)
                continue;
            Sample& sample = g_samples[run.run_name.function_name];
            if (run.error_occurred) {
                sample.skipped = run.error_message;
                continue;
            }
            auto counter = [&](const char* key) {
                auto found = run.counters.find(key);
                return found == run.counters.end() ? 0.0 : static_cast<double>(found->second);
            };
            sample.value.push_back(counter("value"));
            sample.faults.push_back(counter("faults"));
            sample.tlb.push_back(counter("tlb"));
        }
    }
};

double median(std::vector<double> values) {
    if (values.empty())
        return std::nan("");
    std::sort(values.begin(), values.end());
    std::size_t middle = values.size() / 2;
    return values.size() % 2 != 0 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

std::string size_text(std::uint64_t bytes) {
    char text[32];
    if (bytes >= (1u << 20))
        std::snprintf(text, sizeof text, "%" PRIu64 " MiB", bytes >> 20);
    else
        std::snprintf(text, sizeof text, "%" PRIu64 " KiB", bytes >> 10);
    return text;
}

std::string name_of(const std::string& group, const std::string& method, std::uint64_t size) {
    return group + "/" + method + (size != 0 ? "/" + std::to_string(size) : "");
}

double median_of(const std::string& group, const std::string& method, std::uint64_t size = 0) {
    auto found = g_samples.find(name_of(group, method, size));
    return found == g_samples.end() ? std::nan("") : median(found->second.value);
}

// ---------------------------------------------------------------------------------------------
// Output: CSV, the table, the ratios, the plots.

std::string machine_text() {
    std::string cpu = "unknown CPU";
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);)
        if (line.rfind("model name", 0) == 0) {
            cpu = line.substr(line.find(':') + 2);
            break;
        }
    utsname system{};
    ::uname(&system);
    return cpu + ", " + std::to_string(::sysconf(_SC_NPROCESSORS_ONLN)) + " CPUs, Linux " + system.release;
}

struct Ratio {
    std::string name;
    double value;
    std::string target;
    bool met;
};

std::vector<Ratio> g_ratios;
std::optional<std::uint64_t> g_memfd_wins, g_pool_wins; ///< see crossover()
std::string g_load_before, g_load_after, g_started;

/// The 1, 5 and 15-minute load averages: how busy the machine was around the run.
std::string load_average() {
    std::ifstream file("/proc/loadavg");
    std::string one, five, fifteen;
    file >> one >> five >> fifteen;
    return one + " " + five + " " + fifteen;
}

/// By how much a ratio missed its target, as a person says it: "by 19 %".
std::string miss_text(const Ratio& ratio) {
    if (ratio.met)
        return "met";
    double target = std::strtod(ratio.target.c_str() + 3, nullptr);
    double off = ratio.target[0] == '<' ? ratio.value / target - 1 : 1 - ratio.value / target;
    char text[48];
    std::snprintf(text, sizeof text, "missed by %.0f %%", off * 100);
    return text;
}

/// The runs of a case, or nullptr when it did not run (--filter left it out).
const Sample* ran(const std::string& group, const std::string& method, std::uint64_t size = 0) {
    auto found = g_samples.find(name_of(group, method, size));
    return found == g_samples.end() ? nullptr : &found->second;
}

/// The rows and columns of a table of `methods` by `sizes`: those of which at least one case
/// ran. A full run shows them all; with --filter, what was left out is not a row of nan.
struct Grid {
    std::vector<std::string> methods;
    std::vector<std::uint64_t> sizes;
};
Grid grid_that_ran(const std::string& group, const std::vector<std::string>& methods,
                   const std::vector<std::uint64_t>& sizes) {
    Grid grid;
    for (const std::string& method : methods)
        if (std::any_of(sizes.begin(), sizes.end(), [&](std::uint64_t size) { return ran(group, method, size); }))
            grid.methods.push_back(method);
    for (std::uint64_t size : sizes)
        if (std::any_of(methods.begin(), methods.end(), [&](const std::string& m) { return ran(group, m, size); }))
            grid.sizes.push_back(size);
    return grid;
}

/// The smallest message size at which `challenger` beat copying through a socket; 0 when it beat
/// it at no size; nothing when no size had both cases run (--filter left one out).
std::optional<std::uint64_t> crossover(const std::string& challenger) {
    std::optional<std::uint64_t> wins;
    for (std::uint64_t size : g_settings.message_sizes) {
        if (!ran("handle", challenger, size) || !ran("handle", "copy through a socket", size))
            continue;
        if (median_of("handle", challenger, size) < median_of("handle", "copy through a socket", size))
            return size;
        wins = 0;
    }
    return wins;
}

/// The crossover sentence, for the challengers that were compared ("" when none was).
std::string crossover_text(const std::string& pool_words) {
    std::string text;
    auto clause = [&](const std::optional<std::uint64_t>& wins, const std::string& who) {
        if (!wins)
            return;
        text += (text.empty() ? "" : "; ") + who + " beats copying " +
                (*wins != 0 ? "from " + size_text(*wins) : std::string("at no size measured"));
    };
    clause(g_memfd_wins, "a fresh memfd per message");
    clause(g_pool_wins, pool_words);
    return text;
}

/// The same results as a Markdown page (build/bench/results.md), ready to paste into the notes.
void write_markdown() {
    std::ofstream md(g_settings.out_dir + "/results.md");
    char line[512];
    md << "Measured with `make bench" << (g_settings.mode == "quick" ? " QUICK=1" : "") << "` on " << g_started
       << ": " << machine_text() << ". Load average (1, 5, 15 min) " << g_load_before << " before the run, "
       << g_load_after << " after it. Medians of " << g_settings.repetitions << " interleaved runs.";
    if (!g_settings.filter.empty())
        md << " Only the cases that match `--filter " << g_settings.filter << "`.";
    md << "\n\n";
    const Grid latency = grid_that_ran("latency", kLatencyMechanisms, {0});
    if (!latency.methods.empty()) {
        md << "| 64-byte round trip | median |\n|---|---:|\n";
        for (const std::string& mechanism : latency.methods) {
            std::snprintf(line, sizeof line, "| %s | %.0f ns |\n", mechanism.c_str(), median_of("latency", mechanism));
            md << line;
        }
        md << '\n';
    }
    const Grid throughput = grid_that_ran("throughput", kThroughputMethods, g_settings.blocks);
    if (!throughput.methods.empty()) {
        md << "| throughput, GB/s |";
        for (std::uint64_t block : throughput.sizes)
            md << ' ' << size_text(block) << " blocks |";
        md << "\n|---|";
        for (std::size_t i = 0; i < throughput.sizes.size(); ++i)
            md << "---:|";
        md << '\n';
        for (const std::string& method : throughput.methods) {
            md << "| " << method << " |";
            for (std::uint64_t block : throughput.sizes) {
                if (ran("throughput", method, block))
                    std::snprintf(line, sizeof line, " %.2f |", median_of("throughput", method, block));
                else
                    std::snprintf(line, sizeof line, " not measured |");
                md << line;
            }
            md << '\n';
        }
        md << '\n';
    }
    bool pairs_header = false;
    for (const PairCommand& pair : pair_commands("")) {
        const Sample* sample = ran("pairs", pair.label);
        if (sample == nullptr)
            continue;
        if (!pairs_header)
            md << "| pair as shipped, 64 KiB blocks | GB/s |\n|---|---:|\n";
        pairs_header = true;
        if (sample->value.empty())
            std::snprintf(line, sizeof line, "| %s | skipped: this machine lacks what it needs |\n", pair.label.c_str());
        else
            std::snprintf(line, sizeof line, "| %s | %.2f |\n", pair.label.c_str(), median(sample->value));
        md << line;
    }
    if (pairs_header)
        md << '\n';
    const Grid handle = grid_that_ran("handle", kHandleMethods, g_settings.message_sizes);
    if (!handle.methods.empty()) {
        md << "| message |";
        for (const std::string& method : handle.methods) // "pool, index only": no parentheses in a heading
            md << ' ' << (method.rfind("pool (", 0) == 0 ? "pool, " + method.substr(6, method.size() - 7) : method)
               << " |";
        md << "\n|---|";
        for (std::size_t i = 0; i < handle.methods.size(); ++i)
            md << "---:|";
        md << '\n';
        for (std::uint64_t size : handle.sizes) {
            md << "| " << size_text(size) << " |";
            for (const std::string& method : handle.methods) {
                const Sample* sample = ran("handle", method, size);
                if (sample != nullptr)
                    std::snprintf(line, sizeof line, " %.1f us (%.0f faults, %.1f TLB) |", median(sample->value),
                                  median(sample->faults), median(sample->tlb));
                else
                    std::snprintf(line, sizeof line, " not measured |");
                md << line;
            }
            md << '\n';
        }
        md << '\n';
    }
    const std::string crossing = crossover_text("the pool, reading every byte,");
    if (!crossing.empty())
        md << "Crossover: " << crossing << ".\n\n";
    if (!g_ratios.empty())
        md << "| ratio | measured | target | |\n|---|---:|---|---|\n";
    for (const Ratio& ratio : g_ratios) {
        std::snprintf(line, sizeof line, "| %s | %.2f | %s | %s |\n", ratio.name.c_str(), ratio.value,
                      ratio.target.c_str(), miss_text(ratio).c_str());
        md << line;
    }
}

/// Prints the tables and the ratios and writes the CSV files: only the cases that ran.
int write_outputs() {
    const std::string& dir = g_settings.out_dir;
    std::printf("bench (%s mode): %s\n", g_settings.mode.c_str(), machine_text().c_str());
    std::printf("medians of %d runs each, interleaved; load average %s before, %s after; CSV, plots and "
                "results.md in %s/\n",
                g_settings.repetitions, g_load_before.c_str(), g_load_after.c_str(), dir.c_str());
    if (!g_settings.filter.empty())
        std::printf("only the cases that match --filter %s\n", g_settings.filter.c_str());

    // Latency.
    std::ofstream latency(dir + "/latency.csv");
    latency << "mechanism,round_trip_ns,runs\n";
    const Grid latency_grid = grid_that_ran("latency", kLatencyMechanisms, {0});
    if (!latency_grid.methods.empty()) {
        std::printf("\nLatency: 64-byte round trip between two processes\n");
        std::printf("  %-22s %14s\n", "mechanism", "round trip");
    }
    for (const std::string& mechanism : latency_grid.methods) {
        const Sample& sample = *ran("latency", mechanism);
        double value = median(sample.value);
        std::printf("  %-22s %11.0f ns\n", mechanism.c_str(), value);
        latency << '"' << mechanism << "\"," << value << ',' << sample.value.size() << '\n';
    }

    // Throughput.
    std::ofstream throughput(dir + "/throughput.csv");
    throughput << "method,block_bytes,gb_per_s,runs\n";
    const Grid throughput_grid = grid_that_ran("throughput", kThroughputMethods, g_settings.blocks);
    bool holes = false;
    if (!throughput_grid.methods.empty()) {
        std::printf("\nThroughput: %s through each, GB/s (10^9 bytes per second)\n",
                    size_text(g_settings.throughput_bytes).c_str());
        std::printf("  %-22s", "method");
        for (std::uint64_t block : throughput_grid.sizes)
            std::printf(" %10s", size_text(block).c_str());
        std::printf("\n");
    }
    for (const std::string& method : throughput_grid.methods) {
        std::printf("  %-22s", method.c_str());
        for (std::uint64_t block : throughput_grid.sizes) {
            const Sample* sample = ran("throughput", method, block);
            if (sample == nullptr) {
                std::printf(" %10s", "-");
                holes = true;
                continue;
            }
            double value = median(sample->value);
            std::printf(" %10.2f", value);
            throughput << '"' << method << "\"," << block << ',' << value << ',' << sample->value.size() << '\n';
        }
        std::printf("\n");
    }
    std::ofstream pairs(dir + "/pairs.csv");
    pairs << "pair,block_bytes,gb_per_s,runs\n";
    std::vector<std::string> skipped_pairs;
    bool pairs_header = false;
    for (const PairCommand& pair : pair_commands("")) {
        const Sample* sample = ran("pairs", pair.label);
        if (sample == nullptr)
            continue;
        if (!pairs_header)
            std::printf("\nEach chapter's pair as shipped, %s at 64 KiB blocks (stdin -> pair -> /dev/null), GB/s\n",
                        size_text(g_settings.pair_bytes).c_str());
        pairs_header = true;
        if (!sample->skipped.empty() && sample->value.empty()) {
            std::printf("  %-22s %10s  (%s)\n", pair.label.c_str(), "skipped", sample->skipped.c_str());
            skipped_pairs.push_back(pair.label);
            continue;
        }
        double value = median(sample->value);
        std::printf("  %-22s %10.2f\n", pair.label.c_str(), value);
        pairs << '"' << pair.label << "\",65536," << value << ',' << sample->value.size() << '\n';
    }

    // By handle against by copy.
    std::ofstream handle(dir + "/handle.csv");
    handle << "method,message_bytes,us_per_message,faults_per_message,tlb_shootdowns_per_message,runs\n";
    const Grid handle_grid = grid_that_ran("handle", kHandleMethods, g_settings.message_sizes);
    if (!handle_grid.methods.empty()) {
        std::printf("\nBy handle against by copy: one message and its acknowledgement, microseconds\n");
        std::printf("  (page faults per message, both processes; TLB shootdowns per message, machine-wide)\n");
        std::printf("  %-10s", "size");
        for (const std::string& method : handle_grid.methods)
            std::printf(" %32s", method.c_str());
        std::printf("\n");
    }
    for (std::uint64_t size : handle_grid.sizes) {
        std::printf("  %-10s", size_text(size).c_str());
        for (const std::string& method : handle_grid.methods) {
            const Sample* sample = ran("handle", method, size);
            if (sample == nullptr) {
                std::printf(" %32s", "-");
                holes = true;
                continue;
            }
            char cell[64];
            std::snprintf(cell, sizeof cell, "%.1f (%.0f f, %.1f tlb)", median(sample->value), median(sample->faults),
                          median(sample->tlb));
            std::printf(" %32s", cell);
        }
        std::printf("\n");
    }
    for (const std::string& method : handle_grid.methods) // one method's sizes together: one line in a plot
        for (std::uint64_t size : handle_grid.sizes) {
            const Sample* sample = ran("handle", method, size);
            if (sample == nullptr)
                continue;
            handle << '"' << method << "\"," << size << ',' << median(sample->value) << ',' << median(sample->faults)
                   << ',' << median(sample->tlb) << ',' << sample->value.size() << '\n';
        }
    if (holes)
        std::printf("  (-: not measured, --filter left the case out)\n");

    // Crossover sizes, for each challenger compared with copying at one size at least.
    g_memfd_wins = crossover("fresh memfd per message");
    g_pool_wins = crossover("pool (reader reads every byte)");
    const std::string crossing = crossover_text("the pool (reading every byte)");
    if (!crossing.empty())
        std::printf("\nCrossover: %s\n", crossing.c_str());
    std::ofstream cross(dir + "/crossover.csv");
    cross << "challenger,wins_from_bytes\n";
    if (g_memfd_wins)
        cross << "\"fresh memfd per message\"," << *g_memfd_wins << '\n';
    if (g_pool_wins)
        cross << "\"pool (reader reads every byte)\"," << *g_pool_wins << '\n';

    // Ratios issue 12 asks this machine class to show: each only where both of its cases ran.
    const std::uint64_t largest = g_settings.message_sizes.back();
    std::vector<Ratio>& ratios = g_ratios;
    auto add = [&](const std::string& name, double numerator, double denominator, const std::string& target) {
        if (!std::isfinite(numerator) || !std::isfinite(denominator) || denominator == 0)
            return;
        const double r = numerator / denominator;
        const double bound = std::strtod(target.c_str() + 3, nullptr);
        ratios.push_back({name, r, target, target[0] == '<' ? r <= bound : r >= bound});
    };
    add("spinning mailbox / ping-pong round trip", median_of("latency", "spinning mailbox"),
        median_of("latency", "ping-pong"), "<= 1.5");
    add("futex / pipe round trip", median_of("latency", "futex"), median_of("latency", "pipe"), "<= 0.8");
    add("ring (futex) at 64 KiB / memcpy of 1 MiB", median_of("throughput", "ring futex", 65536),
        median_of("throughput", "memcpy", 1 << 20), ">= 0.6");
    add("ring (futex) / pipe at 64 KiB", median_of("throughput", "ring futex", 65536),
        median_of("throughput", "pipe", 65536), ">= 8");
    add("pool hand-off of " + size_text(largest) + " / of 1 MiB", median_of("handle", "pool (index only)", largest),
        median_of("handle", "pool (index only)", 1 << 20), "<= 1.5");
    add("copy / pool at " + size_text(largest), median_of("handle", "copy through a socket", largest),
        median_of("handle", "pool (index only)", largest), ">= 50");
    add("pool reading every byte / copy at " + size_text(largest),
        median_of("handle", "pool (reader reads every byte)", largest),
        median_of("handle", "copy through a socket", largest), "<= 0.3");
    for (const PairCommand& pair : pair_commands("")) {
        if (pair.label == "cat piped to cat" ||
            std::find(skipped_pairs.begin(), skipped_pairs.end(), pair.label) != skipped_pairs.end())
            continue;
        add(pair.label + " / cat piped to cat", median_of("pairs", pair.label), median_of("pairs", "cat piped to cat"),
            ">= 1");
    }
    std::ofstream ratio_file(dir + "/ratios.csv");
    ratio_file << "ratio,value,target,met\n";
    if (ratios.empty())
        std::printf("\nRatios: not measured (each needs two cases, and --filter left out one of each pair)\n");
    else
        std::printf("\nRatios (issue 12's targets for this machine class)\n");
    for (const Ratio& ratio : ratios) {
        std::printf("  %-50s %8.2f  %-7s %s\n", ratio.name.c_str(), ratio.value, ratio.target.c_str(),
                    miss_text(ratio).c_str());
        ratio_file << '"' << ratio.name << "\"," << ratio.value << ",\"" << ratio.target << "\","
                   << (ratio.met ? "yes" : "no") << '\n';
    }
    return 0;
}

/// The data rows of a CSV file the benchmark wrote (its header not counted); 0 when it is missing.
int csv_rows(const std::string& path) {
    std::ifstream file(path);
    int rows = -1;
    for (std::string line; std::getline(file, line);)
        ++rows;
    return std::max(rows, 0);
}

/// The sizes (the second field) in the rows of a CSV file the benchmark wrote, ascending, each
/// once: the x axis then spans what was measured (with --filter or --replot, not every size).
std::vector<std::uint64_t> csv_sizes(const std::string& path) {
    std::ifstream file(path);
    std::vector<std::uint64_t> sizes;
    std::string line;
    std::getline(file, line); // the header
    while (std::getline(file, line)) {
        const std::size_t comma = line.find(',', line.rfind('"') == std::string::npos ? 0 : line.rfind('"'));
        if (comma != std::string::npos)
            sizes.push_back(std::strtoull(line.c_str() + comma + 1, nullptr, 10));
    }
    std::sort(sizes.begin(), sizes.end());
    sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
    return sizes;
}

/// Draws the three plots with gnuplot, if it is installed: each from its CSV file, and only
/// where that file has a row (with --filter a group may not have run: its plot is removed, not
/// left over from an earlier run beside this run's tables). Returns false when gnuplot is missing
/// or failed, so that --replot, which does nothing else, can exit 1 then.
bool draw_plots() {
    const std::string& dir = g_settings.out_dir;
    if (!g_settings.plots)
        return true;
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
        std::fprintf(stderr, "bench: gnuplot is not installed (Debian: gnuplot-nox): no plots\n");
        return false;
    }
    // Sizes on the x axes as people say them.
    auto size_tics = [](const std::vector<std::uint64_t>& sizes) {
        std::string tics = "set xtics (";
        for (std::uint64_t size : sizes)
            tics += (tics.back() == '(' ? "\"" : ", \"") + size_text(size) + "\" " + std::to_string(size);
        return tics + ")\n";
    };
    // The legend goes below the plot, in two columns: beside it, it took a third of the width and
    // squeezed the size labels of the x axis into each other.
    const std::string common = "reset\nset terminal png size 1000,600 noenhanced\nset datafile separator ','\n"
                               "set key below center horizontal maxcols 2 width 2\nset grid\n";
    std::string script;
    std::vector<std::string> drawn;
    auto skip = [&](const std::string& plot) {
        ::unlink((dir + "/" + plot).c_str());
        std::fprintf(stderr, "bench: no %s: none of its cases ran\n", plot.c_str());
    };
    // Latency: bars on a logarithmic scale, so that the spinning waits (tens of nanoseconds)
    // show beside the sleeping ones (microseconds).
    if (csv_rows(dir + "/latency.csv") > 0) {
        script += common + "set output '" + dir + "/latency.png'\n"
                  "set title '64-byte round trip between two processes (median; spinning waits left)'\n"
                  "set ylabel 'nanoseconds, logarithmic'\nset logscale y\nset style fill solid 0.6\n"
                  "set boxwidth 0.6\nset yrange [1:*]\nset xtics rotate by -30\nset rmargin 7\n" // room for the last label
                  "plot '" + dir + "/latency.csv' every ::1 using 0:2:xtic(1) with boxes notitle\n";
        drawn.push_back("latency.png");
    } else {
        skip("latency.png");
    }
    // Throughput: one line per method (the CSV lists each method's blocks together).
    if (csv_rows(dir + "/throughput.csv") > 0) {
        script += common + "set output '" + dir + "/throughput.png'\nset title 'Throughput against block size (median)'\n"
                  "set logscale x 2\nset logscale y\nset offsets graph 0.05, graph 0.05, 0, 0\nset xlabel 'block size'\n"
                  "set ylabel 'GB/s, logarithmic'\n" +
                  size_tics(csv_sizes(dir + "/throughput.csv")) + "plot for [m in '";
        for (const std::string& method : kThroughputMethods)
            script += "\"" + method + "\" ";
        script += "'] '" + dir + "/throughput.csv' using (stringcolumn(1) eq m ? $2 : 1/0):3 with linespoints title m\n";
        drawn.push_back("throughput.png");
    } else {
        skip("throughput.png");
    }
    // By handle against by copy, with each crossover marked where there is one.
    if (csv_rows(dir + "/handle.csv") > 0) {
        const std::vector<std::uint64_t> sizes = csv_sizes(dir + "/handle.csv");
        script += common + "set output '" + dir + "/handle.png'\nset title 'By handle against by copy, per message (median)'\n"
                  "set logscale xy\nset xlabel 'message size'\nset ylabel 'microseconds, logarithmic'\n"
                  "set style textbox opaque noborder\n" +
                  // The sizes and a little room each side (autoscaled, the axis began a decade early).
                  "set xrange [" + std::to_string(sizes.front() * 2 / 3) + ":" + std::to_string(sizes.back() * 3 / 2) +
                  "]\n" + size_tics(sizes);
        // A crossover's label reads away from its line, into the half of the plot with more room,
        // on an opaque box so that neither the grid nor a data line runs through its words.
        auto mark = [&](const std::optional<std::uint64_t>& size, const std::string& text, double height) {
            if (!size || *size == 0)
                return;
            const double along = sizes.size() < 2 ? 0 :
                                 std::log(static_cast<double>(*size) / static_cast<double>(sizes.front())) /
                                     std::log(static_cast<double>(sizes.back()) / static_cast<double>(sizes.front()));
            const std::string at = std::to_string(*size);
            script += "set arrow from " + at + ", graph 0 to " + at + ", graph 1 nohead dashtype 2 linecolor rgb 'gray40'\nset label '" +
                      text + " from " + size_text(*size) + "' at " + at + ", graph " + std::to_string(height) +
                      (along <= 0.5 ? " left offset 1,0" : " right offset -1,0") + " boxed front\n";
        };
        mark(g_memfd_wins, "a fresh memfd beats copying", 0.95);
        mark(g_pool_wins, "the pool, reading every byte, beats copying", 0.88);
        script += "plot for [m in '";
        for (const std::string& method : kHandleMethods)
            script += "\"" + method + "\" ";
        script += "'] '" + dir + "/handle.csv' using (stringcolumn(1) eq m ? $2 : 1/0):3 with linespoints title m\n";
        drawn.push_back("handle.png");
    } else {
        skip("handle.png");
    }
    if (drawn.empty())
        return true;
    FILE* gnuplot = ::popen("gnuplot", "w");
    if (gnuplot == nullptr)
        fail("popen(gnuplot)");
    std::fputs(script.c_str(), gnuplot);
    if (::pclose(gnuplot) != 0) {
        std::fprintf(stderr, "bench: gnuplot failed\n");
        return false;
    }
    std::string names;
    for (const std::string& plot : drawn)
        names += (names.empty() ? "" : ", ") + plot;
    std::fprintf(stderr, "bench: plots: %s/%s\n", dir.c_str(), names.c_str());
    return true;
}

/// --replot: the crossovers of an earlier run, from its crossover.csv, for draw_plots.
void read_crossovers() {
    std::ifstream file(g_settings.out_dir + "/crossover.csv");
    std::string line;
    std::getline(file, line); // the header
    while (std::getline(file, line)) {
        const std::size_t comma = line.rfind(',');
        if (comma == std::string::npos)
            continue;
        const std::uint64_t wins = std::strtoull(line.c_str() + comma + 1, nullptr, 10);
        if (line.rfind("\"fresh memfd per message\"", 0) == 0)
            g_memfd_wins = wins;
        else if (line.rfind("\"pool (reader reads every byte)\"", 0) == 0)
            g_pool_wins = wins;
    }
}

const char* const kUsage = R"(Usage: bench [--quick | --tiny] [--out DIR] [--build DIR] [--no-plots] [--filter RE]
       bench --replot [--out DIR]

Measures every technique side by side between two processes: 64-byte round-trip latency,
throughput at 4 KiB, 64 KiB and 1 MiB blocks (and each chapter's pair as shipped), and by
handle against by copy from 4 KiB to 64 MiB. Prints a table on standard output, writes CSV
files and PNG plots (gnuplot) into DIR (default build/bench), and shows progress on
standard error.

  --quick      64 MiB instead of 1 GiB per throughput run, fewer round trips: under a minute
  --tiny       tiny sizes, for the smoke test (the numbers mean nothing)
  --out DIR    where the CSV and PNG files go (default build/bench)
  --build DIR  where the chapters' programs are (default build)
  --no-plots   do not run gnuplot
  --filter RE  only the cases whose name matches the regular expression RE, for example
               'latency/' or 'throughput/ring' (the table then shows only those)
  --replot     measure nothing: draw the plots again from the CSV files in DIR
)";

/// Hands the library its flags (benchmark::Initialize parses them into its own settings), with
/// --benchmark_list_tests on or off.
void initialize_library(std::vector<std::string> arguments, bool list) {
    arguments.push_back(list ? "--benchmark_list_tests=true" : "--benchmark_list_tests=false");
    std::vector<char*> bench_argv;
    for (std::string& argument : arguments)
        bench_argv.push_back(argument.data());
    bench_argv.push_back(nullptr);
    int bench_argc = static_cast<int>(arguments.size());
    benchmark::Initialize(&bench_argc, bench_argv.data());
}

int run(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN); // a pipeline that ends early is an EPIPE, then its exit status
    bool replot = false;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--quick" || arg == "--tiny")
            g_settings.mode = arg.substr(2);
        else if (arg == "--out" && i + 1 < argc)
            g_settings.out_dir = argv[++i];
        else if (arg == "--build" && i + 1 < argc)
            g_settings.build_dir = argv[++i];
        else if (arg == "--no-plots")
            g_settings.plots = false;
        else if (arg == "--replot")
            replot = true;
        else if (arg == "--filter" && i + 1 < argc)
            g_settings.filter = argv[++i];
        else if (arg == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        } else {
            std::fprintf(stderr, "bench: unknown argument '%s' (see bench --help)\n", arg.c_str());
            return 2;
        }
    }
    Settings& s = g_settings;
    for (std::uint64_t size = 4096; size <= (64u << 20); size *= 4)
        s.message_sizes.push_back(size);
    if (s.mode == "quick") {
        s.latency_round_trips = 5000;
        s.throughput_bytes = s.pair_bytes = 64ull << 20;
        s.handle_budget = 16ull << 20;
    } else if (s.mode == "tiny") {
        s.latency_round_trips = 200;
        s.throughput_bytes = 4ull << 20;
        s.pair_bytes = 1ull << 20;
        s.handle_budget = 1ull << 20;
        s.message_sizes = {4096, 65536, 1 << 20};
    }
    if (replot) {
        // Nothing to draw from is an error, not a quiet success: a mistyped --out would otherwise
        // exit 0 having drawn nothing (and --no-plots would leave --replot nothing to do).
        const std::string& dir = s.out_dir;
        if (!s.plots) {
            std::fprintf(stderr, "bench: --replot draws plots only; --no-plots leaves it nothing to do\n");
            return 2;
        }
        if (csv_rows(dir + "/latency.csv") + csv_rows(dir + "/throughput.csv") + csv_rows(dir + "/handle.csv") == 0) {
            std::fprintf(stderr, "bench: no run to replot in %s: latency.csv, throughput.csv and handle.csv are "
                                 "missing or empty (run bench --out %s first)\n",
                         dir.c_str(), dir.c_str());
            return 1;
        }
        read_crossovers();
        return draw_plots() ? 0 : 1;
    }
    if (::mkdir(s.out_dir.c_str(), 0755) == -1 && errno != EEXIST)
        fail("mkdir(" + s.out_dir + ")");
    char scratch_template[] = "/tmp/shmtut-bench-XXXXXX";
    if (::mkdtemp(scratch_template) == nullptr)
        fail("mkdtemp");
    const std::string scratch = g_scratch = scratch_template;

    for (const std::string& mechanism : kLatencyMechanisms) {
        std::string name = name_of("latency", mechanism, 0);
        g_cases[name] = {"latency", mechanism, 0};
        benchmark::RegisterBenchmark(name.c_str(), latency_case, mechanism)->UseManualTime()->Iterations(1);
    }
    for (const std::string& method : kThroughputMethods)
        for (std::uint64_t block : s.blocks) {
            std::string name = name_of("throughput", method, block);
            g_cases[name] = {"throughput", method, block};
            benchmark::RegisterBenchmark(name.c_str(), throughput_case, method, block)->UseManualTime()->Iterations(1);
        }
    for (const PairCommand& pair : pair_commands(scratch)) {
        std::string name = name_of("pairs", pair.label, 0);
        g_cases[name] = {"pairs", pair.label, 0};
        benchmark::RegisterBenchmark(name.c_str(), pair_case, pair.label, scratch)->UseManualTime()->Iterations(1);
    }
    for (const std::string& method : kHandleMethods)
        for (std::uint64_t size : s.message_sizes) {
            std::string name = name_of("handle", method, size);
            g_cases[name] = {"handle", method, size};
            benchmark::RegisterBenchmark(name.c_str(), handle_case, method, size)->UseManualTime()->Iterations(1);
        }

    // Every case above: one iteration per run (its peer is forked once per run), manual time;
    // here: five repetitions, interleaved at random.
    std::vector<std::string> arguments = {argv[0], "--benchmark_enable_random_interleaving=true",
                                          "--benchmark_repetitions=" + std::to_string(s.repetitions)};
    if (!s.filter.empty())
        arguments.push_back("--benchmark_filter=" + s.filter);
    // How many cases --filter selects, asked of the library itself (its regular expressions, its
    // full names): in --benchmark_list_tests mode RunSpecifiedBenchmarks runs nothing, prints the
    // names (here into a string) and returns how many there are.
    initialize_library(arguments, true);
    std::ostringstream listed;
    Collector lister;
    lister.SetOutputStream(&listed);
    lister.SetErrorStream(&listed);
    const std::size_t selected = benchmark::RunSpecifiedBenchmarks(&lister);
    if (selected == 0) {
        std::fprintf(stderr, "bench: no case matches --filter '%s' (see bench --help)\n%s", s.filter.c_str(),
                     listed.str().c_str());
        ::rmdir(scratch.c_str());
        return 2;
    }
    initialize_library(arguments, false);

    std::fprintf(stderr, "bench: %zu cases x %d runs on %s; this takes %s\n", selected, s.repetitions,
                 machine_text().c_str(),
                 s.mode == "full" ? "several minutes" : s.mode == "quick" ? "under a minute" : "seconds");
    g_runs_total = static_cast<int>(selected) * s.repetitions;
    g_load_before = load_average();
    {
        std::time_t now = std::time(nullptr);
        char date[64];
        std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
        g_started = date;
    }
    Collector collector;
    benchmark::RunSpecifiedBenchmarks(&collector);
    benchmark::Shutdown();
    ::rmdir(scratch.c_str());

    g_load_after = load_average();
    int status = write_outputs();
    write_markdown();
    draw_plots();
    return status;
}

} // namespace

/// Runs the benchmark; a failure that is not a single case's prints one line and exits 1.
int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench: %s\n", e.what());
        return 1;
    }
}
