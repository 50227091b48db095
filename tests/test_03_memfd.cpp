/// @file tests/test_03_memfd.cpp
/// @brief Chapter 03 end to end, and the kernel's sealing rules as a specification: for each
///        seal, the call that must fail, with its errno, next to the call that must still work.
#include <csignal>
#include <cstring>
#include <fstream>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catch.hpp"
#include "layout.hpp"
#include "owners.hpp"
#include "support.hpp"

#include "../03-memfd/protocol.hpp"

using namespace testsupport;

namespace {

std::vector<std::string> writer(std::vector<std::string> extra) {
    return command("03-memfd/writer", {}, "30", extra);
}

/// The reader command the writer printed ("build/03-memfd/reader --pid P --fd N"), as argv.
std::vector<std::string> printed_reader_command(const Process& writer_process, std::vector<std::string> extra = {}) {
    // (No <regex>: with GCC 12 and the sanitizers it trips -Wmaybe-uninitialized in libstdc++.)
    std::string::size_type at = writer_process.err.find("reader --pid ");
    REQUIRE(at != std::string::npos);
    int pid = 0, fd = -1;
    REQUIRE(std::sscanf(writer_process.err.c_str() + at, "reader --pid %d --fd %d", &pid, &fd) == 2);
    std::vector<std::string> argv = {binary("03-memfd/reader"), "--pid", std::to_string(pid), "--fd",
                                     std::to_string(fd), "--timeout", "30"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

/// A memfd made by the test itself, playing a writer: `size` bytes, a header naming this process
/// as the writer (when the size allows one), then `seals`.
shmtut::UniqueFd make_memfd(std::size_t size, int seals, unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING) {
    shmtut::UniqueFd fd(::memfd_create("shmtut-test", flags));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
    if (size >= shmtut::kHeaderSize + 1) {
        void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        REQUIRE(base != MAP_FAILED);
        shmtut::publish_header(*shmtut::construct_header(base), size - shmtut::kHeaderSize,
                               static_cast<std::uint32_t>(::getpid()), 0);
        ::munmap(base, size);
    }
    if (seals != 0)
        REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0);
    return fd;
}

/// The reader command for one of this test process's descriptors, through /proc/PID/fd/N.
std::vector<std::string> reader_of_own(int fd, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {binary("03-memfd/reader"), "--pid", std::to_string(::getpid()), "--fd",
                                     std::to_string(fd), "--timeout", "5"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

/// The pid the writer printed for its spawned reader ("reader pid N").
pid_t spawned_reader_pid(const Process& writer_process) {
    std::string::size_type at = writer_process.err.find("reader pid ");
    REQUIRE(at != std::string::npos);
    return static_cast<pid_t>(std::stol(writer_process.err.substr(at + 11)));
}

/// This test's memfd mapped, so the test can play a writer (or a hostile one).
struct MappedMemfd {
    shmtut::UniqueFd fd;
    shmtut::Mapping mapping;
    shmtut::SharedHeader& header() { return *static_cast<shmtut::SharedHeader*>(mapping.get()); }
    memfd::Sync& sync() { return memfd::sync_words(header()); }
};

/// A sealed (shrink, grow) memfd of a header and 4096 bytes, with a header the test can edit
/// before it is published: `edit` runs between publish_header() and the seals.
MappedMemfd make_mapped_memfd(const std::function<void(shmtut::SharedHeader&)>& edit = {}) {
    const std::size_t size = shmtut::kHeaderSize + 4096;
    MappedMemfd memory{make_memfd(size, 0), {}};
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memory.fd.get(), 0);
    REQUIRE(base != MAP_FAILED);
    memory.mapping = shmtut::Mapping(base, size);
    new (memory.header().chapter_area) memfd::Sync{};
    if (edit)
        edit(memory.header());
    REQUIRE(::fcntl(memory.fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
    return memory;
}

/// Runs the reader on one of this test process's descriptors, through /proc/PID/fd/N.
Process& read_own_descriptor(ProcessGroup& group, int fd, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {binary("03-memfd/reader"), "--pid", std::to_string(::getpid()), "--fd",
                                     std::to_string(fd), "--timeout", "5"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Process& reader = group.start("reader", argv);
    group.wait(reader);
    return reader;
}

} // namespace

TEST_CASE("03: one terminal: the writer spawns the reader, and the message arrives exactly", "[03]") {
    if (auto why = emulator_cannot_exec(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& w = group.start("writer", writer({"--spawn", "hello", "memfd"}));
        group.wait(w);
        INFO("stderr:\n" << w.err);
        CHECK(w.exit_code() == 0);
        CHECK(w.out == "hello\nmemfd\n"); // the spawned reader writes to the writer's stdout
        CHECK_THAT(w.err, contains("writer: memfd_create(\"shm-tutorial-03\", MFD_CLOEXEC|MFD_ALLOW_SEALING|MFD_NOEXEC_SEAL) = "));
        CHECK_THAT(w.err, contains("F_ADD_SEALS, F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW) = 0"));
        CHECK_THAT(w.err, contains("reader: readlink(\"/proc/self/fd/3\") = \"/memfd:shm-tutorial-03 (deleted)\": a memfd"));
        CHECK_THAT(w.err, contains("writer: waitpid("));
        CHECK_FALSE(group.any_member_alive()); // the writer reaped its reader
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: 4 MiB of random bytes arrive identical through both routes", "[03]") {
    LeakCheck leaks;
    const std::string data = random_bytes(4 << 20, 31);
    SECTION("one terminal: inherited descriptor") {
        if (auto why = emulator_cannot_exec(); !why.empty())
            SKIP_TEST(why);
        ProcessGroup group;
        Process& w = group.start("writer", writer({"--spawn", "--quiet"}), Stdin::kPipe);
        group.feed(w, data, true);
        group.wait(w);
        INFO("stderr:\n" << w.err);
        CHECK(w.exit_code() == 0);
        REQUIRE(w.out.size() == data.size());
        CHECK(w.out == data);
    }
    SECTION("two terminals: /proc/PID/fd/N") {
        ProcessGroup group;
        Process& w = group.start("writer", writer({}), Stdin::kPipe);
        group.wait_for_stderr(w, "reader --pid");
        Process& r = group.start("reader", printed_reader_command(w, {"--quiet"}));
        group.feed(w, data, true);
        group.wait(w);
        group.wait(r);
        INFO("writer stderr:\n" << w.err << "reader stderr:\n" << r.err);
        CHECK(w.exit_code() == 0);
        CHECK(r.exit_code() == 0);
        REQUIRE(r.out.size() == data.size());
        CHECK(r.out == data);
        CHECK(r.err.empty()); // --quiet: nothing is narrated
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: a snapshot arrives identical, sealed against writes", "[03]") {
    if (auto why = emulator_cannot_exec(); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    const std::string data = random_bytes(1 << 20, 32);
    {
        ProcessGroup group;
        Process& w = group.start("writer", writer({"--snapshot"}), Stdin::kPipe);
        group.feed(w, data, true);
        group.wait(w);
        INFO("stderr:\n" << w.err);
        CHECK(w.exit_code() == 0);
        CHECK(w.out == data);
        CHECK_THAT(w.err, contains("F_SEAL_WRITE) = -1 EBUSY: a writable shared mapping still exists"));
        CHECK_THAT(w.err, contains("F_GET_SEALS) = F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE"));
        CHECK_THAT(w.err, contains("reader: mmap(NULL, 1048832, PROT_READ, MAP_PRIVATE"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: the writer's memfd stays close-on-exec while it waits for a reader", "[03]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& w = group.start("writer", writer({}), Stdin::kPipe);
        group.wait_for_stderr(w, "reader --pid");
        std::vector<std::string> argv = printed_reader_command(w);
        std::ifstream fdinfo("/proc/" + argv[2] + "/fdinfo/" + argv[4]);
        std::string line;
        std::string flags;
        while (std::getline(fdinfo, line))
            if (line.rfind("flags:", 0) == 0)
                flags = line.substr(6);
        REQUIRE_FALSE(flags.empty());
        unsigned long value = std::stoul(flags, nullptr, 8);
        CHECK((value & O_CLOEXEC) != 0);
        group.close_stdin(w);
        group.signal(w, SIGTERM);
        group.wait(w);
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: the reader refuses a descriptor that is not a sealed memfd with a header", "[03]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        SECTION("a pipe") {
            Process& r = group.start("reader", {binary("03-memfd/reader"), "--fd", "0", "--timeout", "5"}, Stdin::kPipe);
            group.wait(r);
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("is not a regular file"));
        }
        SECTION("a directory") {
            shmtut::UniqueFd dir(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
            Process& r = read_own_descriptor(group, dir.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("Is a directory"));
        }
        SECTION("a memfd without seals") {
            shmtut::UniqueFd fd = make_memfd(shmtut::kHeaderSize + 4096, 0);
            Process& r = read_own_descriptor(group, fd.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("has seals none, needs F_SEAL_SHRINK|F_SEAL_GROW"));
        }
        SECTION("a memfd sealed against shrinking only") {
            shmtut::UniqueFd fd = make_memfd(shmtut::kHeaderSize + 4096, F_SEAL_SHRINK);
            Process& r = read_own_descriptor(group, fd.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("has seals F_SEAL_SHRINK, needs"));
        }
        SECTION("a sealed memfd smaller than its header") {
            shmtut::UniqueFd fd = make_memfd(100, F_SEAL_SHRINK | F_SEAL_GROW);
            Process& r = read_own_descriptor(group, fd.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("has 100 bytes, less than the 256-byte header"));
        }
        SECTION("a snapshot that is not sealed against writes") {
            shmtut::UniqueFd fd = make_memfd(shmtut::kHeaderSize + 4096, F_SEAL_SHRINK | F_SEAL_GROW);
            Process& r = read_own_descriptor(group, fd.get(), {"--snapshot"});
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("needs F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE"));
        }
        SECTION("a /dev/shm object: not a memfd") {
            std::string name = "/" + unique_name("shmtut-test");
            shmtut::UniqueFd fd(::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
            REQUIRE(fd);
            ::shm_unlink(name.c_str());
            REQUIRE(::ftruncate(fd.get(), 4096) == 0);
            Process& r = read_own_descriptor(group, fd.get());
            CHECK(r.exit_code() == 1);
            // A tmpfs file that is not a memfd cannot be sealed: it is born with F_SEAL_SEAL only.
            CHECK_THAT(r.last_error_line(), contains("has seals F_SEAL_SEAL, needs F_SEAL_SHRINK|F_SEAL_GROW"));
        }
        SECTION("a header naming another writer") {
            shmtut::UniqueFd fd = make_memfd(shmtut::kHeaderSize + 4096, 0);
            void* base = ::mmap(nullptr, shmtut::kHeaderSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
            REQUIRE(base != MAP_FAILED);
            static_cast<shmtut::SharedHeader*>(base)->writer_pid.store(1);
            ::munmap(base, shmtut::kHeaderSize);
            REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
            Process& r = read_own_descriptor(group, fd.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("the header names writer pid 1"));
        }
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: usage errors exit 2 with a pointer to --help", "[03]") {
    const std::string w = binary("03-memfd/writer");
    const std::string r = binary("03-memfd/reader");
    check_usage_errors({
        {r}, {r, "--fd", "x"}, {r, "--fd", "-1"}, {r, "--fd", "3", "--pid", "0"}, {r, "--fd", "3", "extra"},
        {w, "--name", "/x"}, {w, "--keep"}, {w, "--bogus"},
    });
}

// The kernel's rules, each as the pair: what still works, and what fails with which errno.

TEST_CASE("03 seals: after F_SEAL_SHRINK and F_SEAL_GROW, ftruncate fails with EPERM", "[03][seals]") {
    shmtut::UniqueFd fd = make_memfd(8192, F_SEAL_SHRINK | F_SEAL_GROW);
    // The receiver's own descriptor: a new open of the same memory, as through /proc/PID/fd/N.
    shmtut::UniqueFd received(::open(("/proc/self/fd/" + std::to_string(fd.get())).c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE(received);
    CHECK(::ftruncate(received.get(), 8192) == 0); // the same size is no change
    errno = 0;
    CHECK(::ftruncate(received.get(), 4096) == -1);
    CHECK(errno == EPERM);
    errno = 0;
    CHECK(::ftruncate(received.get(), 16384) == -1);
    CHECK(errno == EPERM);
    errno = 0;
    CHECK(::fallocate(received.get(), 0, 0, 16384) == -1); // growing by allocation counts too
    CHECK(errno == EPERM);
    char byte = 'x';
    CHECK(::pwrite(received.get(), &byte, 1, 0) == 1); // writing inside the size is still allowed
}

TEST_CASE("03 seals: after F_SEAL_WRITE, write and writable shared mappings fail; private ones do not",
          "[03][seals]") {
    const long page = ::sysconf(_SC_PAGESIZE);
    const auto size = static_cast<std::size_t>(page);
    shmtut::UniqueFd fd = make_memfd(size, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE);
    char byte = 'x';
    errno = 0;
    CHECK(::pwrite(fd.get(), &byte, 1, 0) == -1);
    CHECK(errno == EPERM);
    errno = 0;
    CHECK(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0) == MAP_FAILED);
    CHECK(errno == EPERM);
    // A private writable mapping is copy-on-write: the writes stay in this process.
    void* cow = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), 0);
    REQUIRE(cow != MAP_FAILED);
    const off_t offset = 300; // in the data area, which make_memfd left zero
    static_cast<char*>(cow)[offset] = 'y';
    ::munmap(cow, size);
    char seen = 'z';
    CHECK(::pread(fd.get(), &seen, 1, offset) == 1);
    CHECK(seen == '\0'); // the memfd itself did not change
    // A read-only shared mapping: refused before about Linux 6.7, allowed since (the kernel no
    // longer treats a shared mapping that cannot become writable as writable). Both are right.
    void* shared_read = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (shared_read == MAP_FAILED) {
        CHECK(errno == EPERM);
    } else {
        ::munmap(shared_read, size);
    }
}

TEST_CASE("03 seals: F_SEAL_WRITE is refused with EBUSY while a writable shared mapping exists", "[03][seals]") {
    const auto size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    shmtut::UniqueFd fd = make_memfd(size, 0);
    void* writable = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    REQUIRE(writable != MAP_FAILED);
    errno = 0;
    CHECK(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE) == -1);
    CHECK(errno == EBUSY);
    ::munmap(writable, size);
    CHECK(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE) == 0);
}

TEST_CASE("03 seals: after F_SEAL_SEAL no seal can be added; without MFD_ALLOW_SEALING none ever", "[03][seals]") {
    shmtut::UniqueFd sealed = make_memfd(4096, F_SEAL_SHRINK | F_SEAL_SEAL);
    errno = 0;
    CHECK(::fcntl(sealed.get(), F_ADD_SEALS, F_SEAL_GROW) == -1);
    CHECK(errno == EPERM);
    CHECK(::fcntl(sealed.get(), F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_SEAL));

    shmtut::UniqueFd unsealable = make_memfd(4096, 0, MFD_CLOEXEC);
    CHECK(::fcntl(unsealable.get(), F_GET_SEALS) == F_SEAL_SEAL); // born with F_SEAL_SEAL
    errno = 0;
    CHECK(::fcntl(unsealable.get(), F_ADD_SEALS, F_SEAL_SHRINK) == -1);
    CHECK(errno == EPERM);
}

TEST_CASE("03 seals: a sealed memfd cannot be shrunk under a reader, so no SIGBUS", "[03][seals][sigbus]") {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    shmtut::UniqueFd fd = make_memfd(2 * page, F_SEAL_SHRINK | F_SEAL_GROW);
    int status = in_child([&] {
        std::signal(SIGBUS, SIG_DFL);
        auto* bytes = static_cast<volatile char*>(::mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0));
        if (bytes == MAP_FAILED)
            return 2;
        if (::ftruncate(fd.get(), static_cast<off_t>(page)) != -1 || errno != EPERM) // chapter 02's attack
            return 3;
        bytes[page] = 2; // still inside the object: no SIGBUS
        return 0;
    });
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("03: a sender that shrinks the memfd and then seals it while the reader checks it cannot kill the reader",
          "[03][seals][sigbus]") {
    if (auto why = emulator_cannot("ptrace: PTRACE_TRACEME fails with ENOSYS"); !why.empty())
        SKIP_TEST(why);
    // The test plays a hostile sender that keeps its descriptor: it hands over an unsealed memfd
    // of the right size, stops the reader inside its checks (ptrace), shrinks the memfd to 0 and
    // adds F_SEAL_SHRINK|F_SEAL_GROW, then lets the reader go on. A reader that looked at the
    // size before the seals would map the old size and die of SIGBUS at the first access.
    LeakCheck leaks;
    int stop_before_check = GENERATE(1, 2);
    {
        shmtut::UniqueFd fd = make_memfd(shmtut::kHeaderSize + 4096, 0);
        ProcessGroup group;
        Process& r = group.start("reader", traced({binary("03-memfd/reader"), "--pid", std::to_string(::getpid()),
                                                   "--fd", std::to_string(fd.get()), "--timeout", "5"}));
        // Counted: fstat and F_GET_SEALS on the received memfd, in the reader's order (the
        // dynamic loader's fstat calls on its libraries are not the reader's checks).
        int checks = 0;
        bool stopped = stop_at_syscall(r, [&](const SyscallEntry& call) {
            return (is_fstat(call) || is_get_seals(call)) &&
                   descriptor_target(r, static_cast<int>(call.args[0])).rfind("/memfd:", 0) == 0 &&
                   ++checks == stop_before_check;
        });
        if (stopped) {
            REQUIRE(::ftruncate(fd.get(), 0) == 0);
            REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
            resume_stopped(r);
        }
        group.wait(r);
        INFO("stopped before check " << stop_before_check << ": " << stopped << "\nreader stderr:\n" << r.err);
        CHECK(r.killed_by() == 0);
        CHECK(r.exit_code() == 1);
        CHECK_THAT(r.last_error_line(), contains("refusing it"));
    }
    check_nothing_left(leaks);
}


TEST_CASE("03: the reader refuses a header with the wrong magic, version or capacity", "[03]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        SECTION("wrong magic") {
            MappedMemfd memory = make_mapped_memfd([](shmtut::SharedHeader& h) { h.magic.store(0x12345678); });
            Process& r = read_own_descriptor(group, memory.fd.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("header refused: magic is 0x12345678, expected 0x544d4853"));
        }
        SECTION("wrong version") {
            MappedMemfd memory = make_mapped_memfd([](shmtut::SharedHeader& h) { h.version.store(7); });
            Process& r = read_own_descriptor(group, memory.fd.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("header refused: layout version 7, this program reads version 1"));
        }
        SECTION("a capacity larger than the memfd") {
            MappedMemfd memory = make_mapped_memfd([](shmtut::SharedHeader& h) { h.data_capacity.store(1ULL << 40); });
            Process& r = read_own_descriptor(group, memory.fd.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("header refused: data capacity 1099511627776 does not fit"));
        }
        SECTION("a capacity that would wrap around") {
            MappedMemfd memory = make_mapped_memfd([](shmtut::SharedHeader& h) { h.data_capacity.store(~0ULL - 100); });
            Process& r = read_own_descriptor(group, memory.fd.get());
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("does not fit in the object's 4352 bytes"));
        }
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: the reader uses only its validated copy of the header, whatever the writer writes after", "[03]") {
    // The test plays the writer: the reader validates capacity 4096 and claims; then the writer
    // publishes a block of 4097 bytes. With the capacity left alone that is an oversized block;
    // with the capacity rewritten to 1 TiB after validation, a reader that read the header again
    // would accept it and copy past the end of the mapping. Both must be refused.
    LeakCheck leaks;
    bool rewrite_capacity = GENERATE(false, true);
    {
        MappedMemfd memory = make_mapped_memfd();
        ProcessGroup group;
        Process& r = group.start("reader", reader_of_own(memory.fd.get()));
        group.pump_until([&] { return memory.sync().reader_pid.load() != 0 || r.finished(); }, "the reader's claim");
        REQUIRE(memory.sync().reader_pid.load() == static_cast<std::uint32_t>(r.pid));
        if (rewrite_capacity)
            memory.header().data_capacity.store(1ULL << 40);
        shmtut::publish_block(memory.header(), 4097, 1, false);
        memory.sync().published.store(1);
        memfd::futex_wake(memory.sync().published);
        group.wait(r);
        INFO("reader stderr:\n" << r.err);
        CHECK(r.killed_by() == 0);
        CHECK(r.exit_code() == 1);
        CHECK_THAT(r.last_error_line(), contains("block refused: length 4097 exceeds the data capacity 4096"));
        CHECK(r.out.empty());
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: a killed reader is noticed by the writer, which exits and leaves nothing", "[03]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        SECTION("two terminals: the writer waits at its input when the reader dies") {
            Process& w = group.start("writer", writer({}), Stdin::kPipe);
            group.wait_for_stderr(w, "reader --pid");
            Process& r = group.start("reader", printed_reader_command(w));
            group.wait_for_stderr(w, "claim lock is held");
            group.signal(r, SIGKILL);
            group.wait(r);
            group.wait(w); // stdin stays open: only the reader's death can end the wait
            INFO("writer stderr:\n" << w.err);
            CHECK(w.exit_code() == 1);
            CHECK_THAT(w.last_error_line(), contains("the reader died"));
        }
        SECTION("one terminal: the spawned reader dies mid-stream") {
            if (auto why = emulator_cannot_exec(); !why.empty())
                SKIP_TEST(why);
            Process& w = group.start("writer", writer({"--spawn"}), Stdin::kPipe);
            group.feed(w, "first block\n", false);
            group.wait_for_stdout(w, 12);
            ::kill(spawned_reader_pid(w), SIGKILL);
            group.wait(w);
            INFO("writer stderr:\n" << w.err);
            CHECK(w.exit_code() == 1);
            // Dead while the writer waited for input, or for the block to be consumed: either.
            CHECK_THAT(w.last_error_line(), contains("the reader died"));
            CHECK_FALSE(group.any_member_alive()); // the writer reaped its reader
        }
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: the writer does not take a pid written into the mapping for a reader", "[03]") {
    // A process that can open the writer's descriptor writes a pid into reader_pid (here the
    // pid of init, which is alive) and wakes the writer, but holds no claim lock. A writer that
    // believed the pid would wait for that "reader" for ever; it must refuse at once.
    LeakCheck leaks;
    {
        ProcessGroup group(std::chrono::seconds(20));
        Process& w = group.start("writer", writer({}), Stdin::kPipe);
        group.wait_for_stderr(w, "reader --pid");
        std::vector<std::string> argv = printed_reader_command(w);
        shmtut::UniqueFd fd(::open(("/proc/" + argv[2] + "/fd/" + argv[4]).c_str(), O_RDWR | O_CLOEXEC));
        REQUIRE(fd);
        const std::size_t size = shmtut::kHeaderSize + shmtut::kDefaultDataCapacity;
        void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        REQUIRE(base != MAP_FAILED);
        shmtut::Mapping mapping(base, size);
        memfd::Sync& sync = memfd::sync_words(*static_cast<shmtut::SharedHeader*>(base));
        sync.reader_pid.store(1);
        memfd::futex_wake(sync.reader_pid);
        group.feed(w, "for nobody\n", false);
        group.wait(w);
        INFO("writer stderr:\n" << w.err);
        CHECK(w.exit_code() == 1);
        CHECK_THAT(w.last_error_line(), contains("no claim lock is held"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: the reader holds the writer process before it takes the writer's descriptor", "[03]") {
    if (auto why = emulator_cannot("ptrace: PTRACE_TRACEME fails with ENOSYS"); !why.empty())
        SKIP_TEST(why);
    // Opening /proc/PID/fd/N first and pidfd_open(PID) after leaves a window in which the writer
    // can die and its pid be given to another process. The order that closes it: pidfd_open,
    // then the open, then a look at the pidfd. Watched here system call by system call.
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& w = group.start("writer", writer({"hello"}));
        group.wait_for_stderr(w, "reader --pid");
        Process& r = group.start("reader", traced(printed_reader_command(w, {"--quiet"})));
        std::vector<std::string> order;
        stop_at_syscall(r, [&](const SyscallEntry& call) {
            if (call.number == SYS_pidfd_open)
                order.push_back("pidfd_open");
            else if (is_get_seals(call))
                order.push_back("F_GET_SEALS");
            return false; // never stop: run to the end, recording
        });
        group.wait(w);
        group.wait(r);
        CHECK(r.exit_code() == 0);
        CHECK(r.out == "hello\n");
        REQUIRE(order.size() >= 2);
        CHECK(order[0] == "pidfd_open");
        CHECK(order[1] == "F_GET_SEALS");
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: without pidfd_open (a kernel before 5.3) both programs fall back to /proc/PID", "[03][fallback]") {
    if (auto why = emulator_cannot("a seccomp filter: it refuses PR_SET_SECCOMP, and a filter would see the "
                                   "system calls of the emulator, not of the program"); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    const FailingSyscall no_pidfd_open{SYS_pidfd_open, ENOSYS};
    {
        ProcessGroup group;
        SECTION("one terminal") {
            Process& w = group.start("writer", with_failing_syscalls({no_pidfd_open}, writer({"--spawn", "old", "kernel"})));
            group.wait(w);
            INFO("stderr:\n" << w.err);
            CHECK(w.exit_code() == 0);
            CHECK(w.out == "old\nkernel\n");
            CHECK_THAT(w.err, contains("reader: open(\"/proc/"));
            CHECK_THAT(w.err, contains("O_DIRECTORY) = 4 (pidfd_open: ENOSYS, a kernel before 5.3): watching the writer"));
        }
        SECTION("two terminals, and the writer is killed") {
            Process& w = group.start("writer", writer({}), Stdin::kPipe);
            group.wait_for_stderr(w, "reader --pid");
            Process& r = group.start("reader", with_failing_syscalls({no_pidfd_open}, printed_reader_command(w)));
            group.feed(w, "before\n", false);
            group.wait_for_stdout(r, 7);
            group.signal(w, SIGKILL);
            group.wait(w);
            group.wait(r);
            INFO("reader stderr:\n" << r.err);
            CHECK_THAT(r.err, contains("(pidfd_open: ENOSYS, a kernel before 5.3)"));
            CHECK(r.exit_code() == 1);
            CHECK_THAT(r.last_error_line(), contains("died before the end of the stream"));
        }
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: a kernel without memfd_create makes the writer exit 77; one without MFD_NOEXEC_SEAL, retry without",
          "[03][fallback]") {
    if (auto why = emulator_cannot("a seccomp filter: it refuses PR_SET_SECCOMP, and a filter would see the "
                                   "system calls of the emulator, not of the program"); !why.empty())
        SKIP_TEST(why);
    LeakCheck leaks;
    {
        ProcessGroup group;
        SECTION("memfd_create fails with ENOSYS (before Linux 3.17)") {
            Process& w = group.start("writer", with_failing_syscalls({{SYS_memfd_create, ENOSYS}}, writer({"--spawn", "x"})));
            group.wait(w);
            CHECK(w.exit_code() == 77);
            CHECK_THAT(w.last_error_line(), contains("writer: not supported here: memfd_create("));
            CHECK_THAT(w.last_error_line(), contains("needs Linux 3.17"));
            CHECK(w.out.empty());
        }
        SECTION("MFD_NOEXEC_SEAL fails with EINVAL (before Linux 6.3)") {
            FailingSyscall no_noexec_seal{SYS_memfd_create, EINVAL, 1, MFD_NOEXEC_SEAL};
            Process& w = group.start("writer", with_failing_syscalls({no_noexec_seal}, writer({"--spawn", "x"})));
            group.wait(w);
            INFO("stderr:\n" << w.err);
            CHECK(w.exit_code() == 0);
            CHECK(w.out == "x\n");
            CHECK_THAT(w.err, contains("MFD_NOEXEC_SEAL) = -1 EINVAL: a kernel before 6.3; again without MFD_NOEXEC_SEAL"));
            CHECK_THAT(w.err, contains("memfd_create(\"shm-tutorial-03\", MFD_CLOEXEC|MFD_ALLOW_SEALING) = 3"));
        }
    }
    check_nothing_left(leaks);
}

// Step 1: the bare pair.

TEST_CASE("03 step 1: the bare pair carries its message and leaves nothing behind", "[03][hello]") {
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& w = group.start("hello_writer", {binary("03-memfd/hello_writer")});
        group.pump_until([&] { return w.out.find('\n') != std::string::npos || w.finished(); }, "the reader command");
        int pid = 0, fd = -1;
        REQUIRE(std::sscanf(w.out.c_str(), "build/03-memfd/hello_reader %d %d", &pid, &fd) == 2);
        CHECK(pid == w.pid);
        Process& r = group.start("hello_reader", {binary("03-memfd/hello_reader"), std::to_string(pid), std::to_string(fd)});
        group.wait(r);
        wait_for_waiter(group, w, r); // woken by the reader's FUTEX_WAKE, which a failed reader never sends
        INFO("writer stderr:\n" << w.err << "reader stderr:\n" << r.err);
        CHECK(r.exit_code() == 0);
        CHECK(w.exit_code() == 0);
        CHECK(r.out == "Hello through a memfd!\n");
        CHECK(r.err.empty());
        CHECK(w.err.empty());
    }
    check_nothing_left(leaks);
}

TEST_CASE("03 step 1: the bare reader fails in one line without a writer, or with bad arguments", "[03][hello]") {
    ProcessGroup group;
    Process& alone = group.start("hello_reader", {binary("03-memfd/hello_reader"), "4194304", "3"});
    group.wait(alone);
    CHECK(alone.exit_code() == 1);
    CHECK(alone.err == "/proc/4194304/fd/3: No such file or directory\n");
    Process& usage = group.start("hello_reader", {binary("03-memfd/hello_reader")});
    group.wait(usage);
    CHECK(usage.exit_code() == 2);
    CHECK(usage.err == "usage: hello_reader WRITER_PID FD\n");
}

TEST_CASE("03 step 1: what step 2 adds: the bare reader dies of SIGBUS on a shrunk memfd, the full one refuses it",
          "[03][hello][sigbus]") {
    // A sender hands over a memfd of 0 bytes (or shrinks it before the reader maps it). The bare
    // reader maps 4096 bytes without asking: the first read raises SIGBUS. The full reader asks
    // the seals, then the size, and refuses.
    LeakCheck leaks;
    {
        shmtut::UniqueFd fd = make_memfd(0, 0);
        ProcessGroup group;
        Process& bare = group.start("hello_reader", {binary("03-memfd/hello_reader"), std::to_string(::getpid()),
                                                     std::to_string(fd.get())});
        group.wait(bare);
#if defined(__SANITIZE_ADDRESS__)
        CHECK_THAT(bare.err, contains("BUS")); // AddressSanitizer reports the SIGBUS and exits 1
#else
        CHECK(bare.killed_by() == SIGBUS);
#endif
        Process& full = read_own_descriptor(group, fd.get());
        CHECK(full.killed_by() == 0);
        CHECK(full.exit_code() == 1);
        CHECK_THAT(full.last_error_line(), contains("has seals none, needs F_SEAL_SHRINK|F_SEAL_GROW: refusing it"));
    }
    check_nothing_left(leaks);
}

TEST_CASE("03: the atomic::wait experiment takes --help and refuses other arguments", "[03]") {
    ProcessGroup group;
    Process& help = group.start("experiment", {binary("03-memfd/atomic_wait_experiment"), "--help"});
    group.wait(help);
    CHECK(help.exit_code() == 0);
    CHECK_THAT(help.out, contains("Usage: atomic_wait_experiment [--help]"));
    check_usage_errors({{binary("03-memfd/atomic_wait_experiment"), "--bogus"}});
}

TEST_CASE("03 step 1: the notes quote the bare pair whole, as it is in the files", "[03][hello]") {
    auto slurp = [](const std::string& path) {
        std::ifstream in(path);
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    };
    std::string notes = slurp("03-memfd/README.md"); // make test runs from the top of the checkout
    if (notes.empty())
        SKIP_TEST("03-memfd/README.md not found: run the tests from the top of the checkout");
    for (const char* file : {"03-memfd/hello_writer.cpp", "03-memfd/hello_reader.cpp"}) {
        std::string code = slurp(file);
        INFO(file);
        REQUIRE_FALSE(code.empty());
        CHECK(notes.find("```cpp\n" + code + "```\n") != std::string::npos);
    }
}

TEST_CASE("03: a writer that dies while the reader opens its descriptor is not trusted", "[03]") {
    if (auto why = emulator_cannot("ptrace: PTRACE_TRACEME fails with ENOSYS"); !why.empty())
        SKIP_TEST(why);
    // The reader holds a pidfd on PID, opens /proc/PID/fd/N, then asks the pidfd whether the
    // process is still alive: if it died in between, the number may already name another
    // process, whose descriptor the reader may have just opened. Here the writer is killed
    // right after the open (the reader stopped at its next system call), so the look after the
    // open must catch it.
    LeakCheck leaks;
    {
        ProcessGroup group;
        Process& w = group.start("writer", writer({}), Stdin::kPipe);
        group.wait_for_stderr(w, "reader --pid");
        Process& r = group.start("reader", traced(printed_reader_command(w)));
        bool pidfd_opened = false, descriptor_opened = false;
        bool stopped = stop_at_syscall(r, [&](const SyscallEntry& call) {
            if (descriptor_opened)
                return true; // the first call after the open
            if (call.number == SYS_pidfd_open)
                pidfd_opened = true;
            else if (pidfd_opened && call.number == SYS_openat)
                descriptor_opened = true;
            return false;
        });
        REQUIRE(stopped);
        ::kill(w.pid, SIGKILL);
        int status = 0;
        REQUIRE(::waitpid(w.pid, &status, 0) == w.pid);
        w.wait_status = status;
        resume_stopped(r);
        group.wait(r);
        group.wait(w);
        INFO("reader stderr:\n" << r.err);
        CHECK(r.exit_code() == 1);
        CHECK_THAT(r.last_error_line(), contains("exited while its descriptor was being opened"));
    }
    check_nothing_left(leaks);
}
