// EXERCISE 03-memfd/4: seal the memfd before any reader sees it: F_ADD_SEALS (robustness)
// This is 03-memfd/writer.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-03 (it builds this file and runs the chapter's tests).
// The solution is 03-memfd/writer.cpp: read it only once your version passes.

/// @file 03-memfd/writer.cpp
/// @brief Chapter 03 writer: shares an anonymous memory file (memfd) with no name anywhere,
///        sealed so that the reader can trust its size (and, in snapshot mode, its content).
///
/// Usage: `writer [--spawn] [--snapshot] [--timeout SECONDS] [--quiet] [MESSAGE...]`
///
/// A memfd has no name, so the reader must be handed the descriptor. Two ways are shown:
///
///     one terminal:  build/03-memfd/writer --spawn "hello"      (starts the reader itself)
///     two terminals: build/03-memfd/writer "hello"              (prints the reader command)
///                    build/03-memfd/reader --pid PID --fd N     (opens /proc/PID/fd/N)
///
/// The calls it teaches, in order: `memfd_create(2)` with `MFD_CLOEXEC|MFD_ALLOW_SEALING|
/// MFD_NOEXEC_SEAL`; `ftruncate(2)` and `mmap(2)` as in chapter 02; `fcntl(2)` `F_ADD_SEALS`
/// (shrink, grow, then no more seals) before any reader can see it; `posix_spawn(3)` with
/// `posix_spawn_file_actions_adddup2(fd, fd)`, which hands the descriptor to the reader only;
/// `futex(2)` `FUTEX_WAIT`/`FUTEX_WAKE` on words in the mapping for the hand-off; `fcntl(2)`
/// `F_OFD_GETLK` to see that the reader still holds its claim lock (the kernel drops it when the
/// reader dies: no pid from the mapping is trusted). With `--snapshot`: the whole input in one
/// sealed block, `munmap` of the writable mapping, then `F_SEAL_WRITE`.
#include <cerrno>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "protocol.hpp"
#include "stream.hpp"
#include "wait.hpp"

/// The environment, passed on unchanged to the spawned reader (declared by no header).
extern char** environ;

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: writer [OPTIONS] [MESSAGE...]

Chapter 03, memfd and seals. Creates an anonymous memory file with memfd_create(),
seals its size, and sends each MESSAGE, followed by a newline, to one reader; with no
MESSAGE, sends standard input until end of file. A memfd has no name: the reader gets the
descriptor itself, in one of two ways.

Options:
  --spawn            start the reader as a child that inherits the descriptor (one
                     terminal); its output is this command's output
  --snapshot         read all input first, seal the memory against writes too
                     (F_SEAL_WRITE), then hand it over; implies --spawn
  --timeout SECONDS  how long to wait for a reader to claim the memory, and for its
                     confirmation at the end (default 60)
  --quiet            no narration on standard error
  --help             show this help

Without --spawn the writer prints the command to run in a second terminal:
    build/03-memfd/reader --pid WRITER_PID --fd N

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage error.
)";

/// How this writer hands the memory over: the writer's own options.
struct HandoverMode {
    bool spawn = false;    ///< --spawn: start the reader as a child that inherits the descriptor
    bool snapshot = false; ///< --snapshot: everything in one block, sealed against writes
};

/// memfd_create(2): an anonymous file on an internal tmpfs. MFD_CLOEXEC: no program this writer
/// executes inherits it by accident. MFD_ALLOW_SEALING: without it, F_ADD_SEALS fails with
/// EPERM. MFD_NOEXEC_SEAL (Linux 6.3): the memory can never be made executable.
UniqueFd create_memfd(const Narrator& say) {
    std::string call = std::string("memfd_create(\"") + memfd::kDebugName + "\", MFD_CLOEXEC|MFD_ALLOW_SEALING|MFD_NOEXEC_SEAL)";
    int fd = ::memfd_create(memfd::kDebugName, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
    if (fd == -1 && errno == EINVAL) {
        // EINVAL: a kernel older than 6.3 does not know the flag; the memory is then simply not
        // sealed against exec. (EACCES is different: the sysctl vm.memfd_noexec forbids what was
        // asked, and retrying would be wrong.)
        say.say("%s = -1 EINVAL: a kernel before 6.3; again without MFD_NOEXEC_SEAL", call.c_str());
        call = std::string("memfd_create(\"") + memfd::kDebugName + "\", MFD_CLOEXEC|MFD_ALLOW_SEALING)";
        fd = ::memfd_create(memfd::kDebugName, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    }
    if (fd == -1 && errno == ENOSYS)
        throw Unsupported(call + ": ENOSYS: this kernel has no memfd_create, which needs Linux 3.17");
    if (fd == -1)
        throw_errno(call);
    say.say("%s = %d", call.c_str(), fd);
    return UniqueFd(fd);
}

/// Sizes the memfd, reserving its pages (a full tmpfs is ENOSPC now, not SIGBUS later).
void size_memfd(int fd, std::size_t size, const Narrator& say) {
    const std::string truncate_call = "ftruncate(fd=" + std::to_string(fd) + ", " + std::to_string(size) + ")";
    if (::ftruncate(fd, static_cast<off_t>(size)) == -1)
        throw_errno(truncate_call);
    const std::string allocate_call = "posix_fallocate(fd=" + std::to_string(fd) + ", 0, " + std::to_string(size) + ")";
    if (int error = ::posix_fallocate(fd, 0, static_cast<off_t>(size)); error != 0)
        throw_error(error, allocate_call);
    say.say("%s = 0, %s = 0", truncate_call.c_str(), allocate_call.c_str());
}

/// F_ADD_SEALS: each seal forbids something for every holder of the file, the writer included,
/// forever. F_SEAL_SEAL last: no seal can be added or removed after it.
void add_seals(int fd, int seals, const Narrator& say) {
    const std::string add_call = "fcntl(fd=" + std::to_string(fd) + ", F_ADD_SEALS, " + seals_text(seals) + ")";
    // TODO(exercise 4): add `seals` to the memfd with fcntl(2) F_ADD_SEALS; on failure
    // throw_errno(add_call). Each seal binds every holder, this writer included, for good: the
    // reader checks them (exercise 3) and refuses a memfd without them. (man 2 fcntl, "File Sealing".)
    // Then delete the placeholder line below: until then the program stops here, at once.
    throw Failure("TODO(exercise 4): fcntl(F_ADD_SEALS)"); // placeholder
    const std::string get_call = "fcntl(fd=" + std::to_string(fd) + ", F_GET_SEALS)";
    int now = ::fcntl(fd, F_GET_SEALS);
    if (now == -1)
        throw_errno(get_call);
    say.say("%s = 0; %s = %s", add_call.c_str(), get_call.c_str(), seals_text(now).c_str());
}

Mapping map_shared(int fd, std::size_t size, const Narrator& say) {
    const std::string call = "mmap(NULL, " + std::to_string(size) + ", PROT_READ|PROT_WRITE, MAP_SHARED, fd=" +
                             std::to_string(fd) + ", 0)";
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        throw_errno(call);
    say.say("%s = %p", call.c_str(), base);
    return Mapping(base, size);
}

/// One terminal: start the reader with the descriptor. The memfd keeps MFD_CLOEXEC; the file
/// action dup2(fd, fd) clears close-on-exec in the child only (dup2 onto itself is a special
/// case that posix_spawn documents for this purpose, glibc 2.29), so the reader gets it and no
/// other program ever does.
pid_t spawn_reader(int fd, const Options& options, const HandoverMode& mode, const Narrator& say) {
    char self[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n == -1)
        throw_errno("readlink(\"/proc/self/exe\")");
    std::string path(self, static_cast<std::size_t>(n));
    path = path.substr(0, path.rfind('/') + 1) + "reader";

    char timeout[32];
    std::snprintf(timeout, sizeof timeout, "%g", options.timeout_seconds);
    std::vector<std::string> args = {path, "--fd", std::to_string(fd), "--timeout", timeout};
    if (mode.snapshot)
        args.push_back("--snapshot");
    if (options.quiet)
        args.push_back("--quiet");
    std::vector<char*> argv;
    for (std::string& arg : args)
        argv.push_back(arg.data());
    argv.push_back(nullptr);

    const std::string call = "posix_spawn(\"" + path + " --fd " + std::to_string(fd) +
                             (mode.snapshot ? " --snapshot" : "") + "\", adddup2(" + std::to_string(fd) + ", " +
                             std::to_string(fd) + "))";
    posix_spawn_file_actions_t actions;
    if (int error = ::posix_spawn_file_actions_init(&actions); error != 0)
        throw_error(error, "posix_spawn_file_actions_init");
    int error = ::posix_spawn_file_actions_adddup2(&actions, fd, fd);
    pid_t child = -1;
    if (error == 0)
        error = ::posix_spawn(&child, path.c_str(), &actions, nullptr, argv.data(), environ);
    ::posix_spawn_file_actions_destroy(&actions);
    if (error != 0)
        throw_error(error, call);
    say.say("%s = 0: reader pid %d", call.c_str(), child);
    return child;
}

/// waitpid(2), retried when a signal interrupts it.
pid_t wait_for_child(pid_t child, int* status) {
    pid_t reaped;
    while ((reaped = ::waitpid(child, status, 0)) == -1 && errno == EINTR) {
        // A Ctrl-C reaches the reader too (same process group): keep waiting for it to finish.
    }
    return reaped;
}

/// Reaps the spawned reader and turns its end into ours: its failure is the writer's failure.
void reap_reader(pid_t child, const Narrator& say) {
    int status = 0;
    if (wait_for_child(child, &status) == -1)
        throw_errno("waitpid(" + std::to_string(child) + ")");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        say.say("waitpid(%d) = %d: the reader exited 0", child, child);
        return;
    }
    throw Failure(WIFEXITED(status) ? "the reader exited with status " + std::to_string(WEXITSTATUS(status))
                                    : "the reader was killed by signal " + std::to_string(WTERMSIG(status)));
}

/// Kills and reaps a spawned reader on the error paths, so that no child outlives the writer.
struct ChildGuard {
    pid_t pid = -1;
    ~ChildGuard() {
        if (pid > 0) {
            ::kill(pid, SIGTERM);
            wait_for_child(pid, nullptr);
        }
    }
};

[[noreturn]] void reader_gone() {
    throw Failure("the reader died before the end of the stream (the kernel released its claim lock)");
}

/// Snapshot mode: everything in one block, then frozen. F_SEAL_WRITE is refused with EBUSY while
/// any writable shared mapping exists, so the writer unmaps its own first.
int run_snapshot(const Options& options, const HandoverMode& mode, const Narrator& say) {
    std::string content;
    {
        Input input(options.operands);
        std::vector<std::uint8_t> buffer(kDefaultDataCapacity);
        while (std::size_t n = input.next(buffer.data(), buffer.size(), [] { return true; }))
            content.append(reinterpret_cast<const char*>(buffer.data()), n);
    }
    const std::uint64_t capacity = content.empty() ? 1 : content.size();
    const std::size_t size = mappable_size(kHeaderSize + capacity);

    UniqueFd fd = create_memfd(say);
    size_memfd(fd.get(), size, say);
    {
        Mapping mapping = map_shared(fd.get(), size, say);
        SharedHeader* header = construct_header(mapping.get());
        std::memcpy(data_area(mapping.get()), content.data(), content.size());
        publish_header(*header, capacity, static_cast<std::uint32_t>(::getpid()), 0);
        publish_block(*header, content.size(), 1, true);
        say.say("%zu bytes written as block 1, the end of the stream", content.size());
        // Shown on purpose: the seal that must wait for the unmap.
        const std::string early_call = "fcntl(fd=" + std::to_string(fd.get()) + ", F_ADD_SEALS, F_SEAL_WRITE)";
        if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE) != -1)
            throw Failure(early_call + " succeeded while a writable shared mapping exists: not the kernel's rule");
        if (errno != EBUSY)
            throw_errno(early_call);
        say.say("%s = -1 EBUSY: a writable shared mapping still exists", early_call.c_str());
        void* base = mapping.get();
        const std::string unmap_call = "munmap(" + std::to_string(reinterpret_cast<std::uintptr_t>(base)) + ", " +
                                       std::to_string(size) + ")";
        if (::munmap(mapping.release(), size) == -1)
            throw_errno(unmap_call);
        say.say("munmap(%p, %zu) = 0", base, size);
    }
    add_seals(fd.get(), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL, say);

    ChildGuard child{spawn_reader(fd.get(), options, mode, say)};
    fd.reset(); // the child has its own copy; ours is no longer needed
    pid_t pid = std::exchange(child.pid, -1);
    reap_reader(pid, say);
    return kExitSuccess;
}

/// Stream mode: blocks handed over with two futex words, as chapter 02 did with semaphores.
int run_stream(const Options& options, const HandoverMode& mode, const Narrator& say) {
    const std::size_t size = kHeaderSize + kDefaultDataCapacity;
    UniqueFd fd = create_memfd(say);
    size_memfd(fd.get(), size, say);
    Mapping mapping = map_shared(fd.get(), size, say);
    // Sealed before anyone else can hold the descriptor: from here on nobody, the writer
    // included, can change the size, so no access to the mapping can raise SIGBUS.
    add_seals(fd.get(), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, say);

    auto& header = *construct_header(mapping.get());
    memfd::Sync& sync = *new (header.chapter_area) memfd::Sync{};
    publish_header(header, kDefaultDataCapacity, static_cast<std::uint32_t>(::getpid()), 0);
    say.say("header published: magic=0x%08x version=%u data_capacity=%zu", kHeaderMagic, kLayoutVersion,
            kDefaultDataCapacity);

    ChildGuard child;
    UniqueFd child_pidfd; // a spawned reader that fails at once is noticed at once
    std::function<bool()> spawned_alive;
    Deadline claim_deadline(options.timeout_seconds);
    if (mode.spawn) {
        child.pid = spawn_reader(fd.get(), options, mode, say);
        // A pid the kernel itself reported (posix_spawn), so a handle on it is proof.
        child_pidfd = open_pidfd(child.pid);
        spawned_alive = [&child_pidfd] { return !process_exited(child_pidfd); };
    } else {
        say.say("waiting up to %s for a reader; in another terminal run:", seconds_text(options.timeout_seconds).c_str());
        say.say("    %s --pid %d --fd %d", sibling_program("reader").c_str(), ::getpid(), fd.get());
    }
    memfd::Waited claimed = memfd::wait_until(sync.reader_pid, [](std::uint32_t pid) { return pid != 0; },
                                              spawned_alive, &claim_deadline);
    if (claimed == memfd::Waited::kPeerGone)
        reap_reader(std::exchange(child.pid, -1), say); // throws with the reader's own status
    if (claimed != memfd::Waited::kYes)
        throw Failure("no reader claimed the memory within " + seconds_text(options.timeout_seconds) +
                      ": run the reader command above while the writer waits");
    // The pid word only woke us: it is whatever the claimant wrote. The proof of a live reader is
    // its claim lock, which the kernel drops when the reader dies, whatever its pid or namespace.
    const std::uint32_t claimed_pid = sync.reader_pid.load(std::memory_order_acquire);
    if (!memfd::claim_held(fd.get()))
        throw Failure("reader_pid says pid " + std::to_string(claimed_pid) +
                      " claimed the memory, but no claim lock is held: a dead or false reader; refusing the claim");
    say.say("futex(reader_pid, FUTEX_WAIT) woke: a reader (pid %u, it says) claimed the memory; "
            "fcntl(fd=%d, F_OFD_GETLK) = 0, l_type=F_WRLCK: its claim lock is held",
            claimed_pid, fd.get());
    const int memfd_number = fd.get();
    auto reader_alive = [memfd_number] { return memfd::claim_held(memfd_number); };

    Input input(options.operands);
    if (input.from_stdin() && ::isatty(STDIN_FILENO))
        say.say("type lines to send; Ctrl-D ends the stream");
    std::uint8_t* data = data_area(mapping.get());
    std::uint32_t sequence = 0;
    std::uint64_t total = 0;
    for (;;) {
        // The data area is free once the reader has consumed the block before.
        std::uint32_t previous = sequence;
        if (memfd::wait_until(sync.consumed, [previous](std::uint32_t c) { return c == previous; }, reader_alive,
                              nullptr) != memfd::Waited::kYes)
            reader_gone();
        std::size_t length = input.next(data, kDefaultDataCapacity, reader_alive);
        bool end = length == 0;
        publish_block(header, length, ++sequence, end);
        sync.published.store(sequence, std::memory_order_release);
        long woken = memfd::futex_wake(sync.published);
        total += length;
        if (sequence == 1 && !end)
            say.say("futex(published, FUTEX_WAKE) = %ld: block 1, %zu bytes (each further block goes the same way, "
                    "quietly)",
                    woken, length);
        if (end)
            break;
    }
    say.say("%llu bytes sent in %u block(s); end of stream sent (block %u, empty); waiting up to %s for the reader "
            "to confirm",
            static_cast<unsigned long long>(total), sequence - 1, sequence, seconds_text(options.timeout_seconds).c_str());
    Deadline confirm_deadline(options.timeout_seconds);
    switch (memfd::wait_until(sync.consumed, [sequence](std::uint32_t c) { return c == sequence; }, reader_alive,
                              &confirm_deadline)) {
    case memfd::Waited::kYes:
        say.say("the reader confirmed the end of the stream");
        break;
    case memfd::Waited::kPeerGone:
        reader_gone();
    case memfd::Waited::kTimedOut:
        throw Failure("the reader did not confirm the end of the stream within the timeout");
    }
    // Nothing to unlink: the memory goes when the last descriptor and mapping go.
    void* base = mapping.get();
    const std::string unmap_call = "munmap(" + std::to_string(reinterpret_cast<std::uintptr_t>(base)) + ", " +
                                   std::to_string(size) + ")";
    if (::munmap(mapping.release(), size) == -1)
        throw_errno(unmap_call);
    const int closed = fd.get();
    if (::close(fd.release()) == -1)
        throw_errno("close(fd=" + std::to_string(closed) + ")");
    say.say("munmap(%p, %zu) = 0; close(fd=%d) = 0: nothing to remove, a memfd has no name", base, size, closed);
    if (child.pid > 0)
        reap_reader(std::exchange(child.pid, -1), say);
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the writer; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("writer", [&] {
        HandoverMode mode;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.operands = true;
        spec.extra.push_back({"--spawn", false, [&](const std::string&) { mode.spawn = true; }});
        spec.extra.push_back({"--snapshot", false, [&](const std::string&) { mode.snapshot = mode.spawn = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        Narrator say("writer", options.quiet);
        install_stop_handlers();
        return mode.snapshot ? run_snapshot(options, mode, say) : run_stream(options, mode, say);
    });
}
