/// @file 00-same-page/same_page.cpp
/// @brief Chapter 00: one `MAP_SHARED` and one `MAP_PRIVATE` anonymous page in a parent and its
///        child, with the physical frame behind each page in each process, read from
///        `/proc/self/pagemap`, before and after the child writes.
///
/// Usage: `same_page [--pages N] [--pause] [--timeout SECONDS] [--quiet]`
///
/// It is its own companion: it forks the second process itself. Run it alone, as root to see
/// the frame numbers:
///
///     sudo build/00-same-page/same_page
///
/// The calls it teaches, in order: `mmap(2)` with `MAP_SHARED|MAP_ANONYMOUS` and with
/// `MAP_PRIVATE|MAP_ANONYMOUS`; `fork(2)`, after which the child has the same mappings at the
/// same virtual addresses; `open(2)` and `pread(2)` of `/proc/self/pagemap` (`proc(5)`), one
/// 64-bit entry per virtual page: bit 63 "present in RAM", bits 0-54 the physical frame number
/// (PFN), bit 56 "mapped by this process only"; `waitpid(2)` and `munmap(2)` at the end.
/// The parent writes "parent" into both pages and forks; both processes read each page and look
/// up its frame; the child writes "child" into both pages; both look again. The parent prints
/// what each process saw: the shared page is one frame in both processes, before and after the
/// write, and the parent reads the child's text; the private page is one frame after the fork
/// (shared until someone writes: copy on write) and two frames after the child's write, and the
/// parent still reads its own text. Without `CAP_SYS_ADMIN` the kernel hides the frame numbers
/// (they read as 0 since Linux 4.2); the texts and bit 56 still tell the story.
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: same_page [OPTIONS]

Chapter 00, one page in two processes. Maps one page MAP_SHARED|MAP_ANONYMOUS and one
page MAP_PRIVATE|MAP_ANONYMOUS, forks, lets the child write into both, and prints for
each process and each page its virtual address, the physical frame number (PFN) behind
it from /proc/self/pagemap, and the text it reads, before and after the child's write.
PFNs need root (CAP_SYS_ADMIN); without it they show as hidden, and the texts still
show which page is shared and which one was copied.

Options:
  --pages N          map N pages each (default 1, at most 262144) and write every page,
                     to see the sizes in /proc/PID/smaps and /proc/meminfo; the table
                     shows the first page
  --pause            after the child's write, keep both processes until Enter (or the
                     end of standard input), to look at them from another terminal with
                     build/tools/pfn and /proc/PID/smaps
  --timeout SECONDS  how long the parent waits for each report of the child, and for
                     its exit (default 60)
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 both pages behaved as shared and private memory must; 1 a runtime
failure; 2 a usage error; 77 this kernel has no /proc/PID/pagemap.
)";

// The bits of a pagemap entry used here (proc(5), Documentation/admin-guide/mm/pagemap.rst).
constexpr std::uint64_t kPresent = 1ull << 63;       // the page is in RAM
constexpr std::uint64_t kExclusive = 1ull << 56;     // mapped by one process only (Linux 4.2)
constexpr std::uint64_t kPfnMask = (1ull << 55) - 1; // bits 0-54: the physical frame number

constexpr char kParentText[] = "parent";
constexpr char kChildText[] = "child";

/// What one process sees of one page at one moment.
struct PageView {
    std::uint64_t address = 0; ///< the page's virtual address in that process
    std::uint64_t entry = 0;   ///< its 64-bit entry in that process's /proc/self/pagemap
    char text[16] = {};        ///< the text at the start of the page
};

/// What one process sees of both pages at one moment. The child sends its snapshots to the
/// parent through a pipe: both ends are the same program, so the layout is the same, and the
/// struct is smaller than PIPE_BUF, so one write(2) delivers it whole.
struct Snapshot {
    PageView shared;
    PageView private_copy;
};
static_assert(sizeof(Snapshot) < PIPE_BUF);

std::size_t page_size() {
    static const auto size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return size;
}

std::uint64_t pfn_of(std::uint64_t entry) {
    return entry & kPfnMask;
}
bool present(std::uint64_t entry) {
    return (entry & kPresent) != 0;
}
/// Present but frame number 0: the kernel zeroes the PFN for a reader without CAP_SYS_ADMIN.
bool pfn_hidden(std::uint64_t entry) {
    return present(entry) && pfn_of(entry) == 0;
}

/// "PFN 0x1dae31", "PFN hidden (0: no CAP_SYS_ADMIN)" or "not present".
std::string describe(std::uint64_t entry) {
    char text[64];
    if (!present(entry))
        return "not present";
    if (pfn_hidden(entry))
        return "PFN hidden (0: no CAP_SYS_ADMIN)";
    std::snprintf(text, sizeof text, "PFN %#llx", static_cast<unsigned long long>(pfn_of(entry)));
    return text;
}

/// Opens this process's pagemap. "self" is resolved now, to the calling process: a descriptor
/// inherited across fork() still reads the page table of the process that opened it, so the
/// child opens its own. Whether reads show PFNs depends on the credentials of the opener, which
/// the kernel saved at open (CAP_SYS_ADMIN), not on who reads later.
UniqueFd open_pagemap(const Narrator& say) {
    int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        if (errno == ENOENT)
            throw Unsupported("/proc/self/pagemap does not exist: this kernel was built without "
                              "CONFIG_PROC_PAGE_MONITOR");
        throw_errno("open(\"/proc/self/pagemap\", O_RDONLY)");
    }
    say.say("open(\"/proc/self/pagemap\", O_RDONLY) = %d", fd);
    return UniqueFd(fd);
}

/// The pagemap entry of the page that holds `address`. The file is an array of 64-bit entries,
/// one per virtual page, so page number `address / page size` has its entry at 8 times that.
std::uint64_t pagemap_entry(int pagemap, const void* address, const Narrator& say) {
    const std::uint64_t page_number = reinterpret_cast<std::uintptr_t>(address) / page_size();
    const auto offset = static_cast<off_t>(page_number * sizeof(std::uint64_t));
    std::uint64_t entry = 0;
    ssize_t got = ::pread(pagemap, &entry, sizeof entry, offset);
    if (got == -1)
        throw_errno("pread(/proc/self/pagemap, 8, offset=" + std::to_string(offset) + ")");
    if (got != static_cast<ssize_t>(sizeof entry))
        throw Failure("pread(/proc/self/pagemap) returned " + std::to_string(got) + " bytes, not 8");
    say.say("pread(fd=%d, 8, offset=%#llx (page %#llx * 8)) = 8: entry %#018llx: %s", pagemap,
            static_cast<unsigned long long>(offset), static_cast<unsigned long long>(page_number),
            static_cast<unsigned long long>(entry), describe(entry).c_str());
    return entry;
}

/// Reads the text at the start of `page`, then looks up its frame. The read comes first: fork
/// does not copy the page-table entries of a shared mapping (the child's first access faults them
/// in), so a child that looked before touching would find the page "not present".
PageView look_at(const char* page, int pagemap, const Narrator& say) {
    PageView view;
    view.address = reinterpret_cast<std::uintptr_t>(page);
    std::memcpy(view.text, page, sizeof view.text - 1);
    view.entry = pagemap_entry(pagemap, page, say);
    return view;
}

Snapshot look(const Mapping& shared, const Mapping& private_copy, int pagemap, const Narrator& say) {
    return {look_at(static_cast<const char*>(shared.get()), pagemap, say),
            look_at(static_cast<const char*>(private_copy.get()), pagemap, say)};
}

/// Maps `length` bytes of anonymous memory: zero-filled, backed by no file. `sharing` is
/// MAP_SHARED (a child made by fork maps the same pages) or MAP_PRIVATE (each process gets its
/// own copy of a page when it first writes to it).
Mapping map_anonymous(std::size_t length, int sharing, const Narrator& say) {
    const char* flags = sharing == MAP_SHARED ? "MAP_SHARED|MAP_ANONYMOUS" : "MAP_PRIVATE|MAP_ANONYMOUS";
    void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, sharing | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(NULL, " + std::to_string(length) + ", PROT_READ|PROT_WRITE, " + flags + ", -1, 0)");
    say.say("mmap(NULL, %zu, PROT_READ|PROT_WRITE, %s, -1, 0) = %p", length, flags, base);
    return Mapping(base, length);
}

/// Writes `text` at the start of every page of the mapping: the first write to a page is what
/// gives it a frame (or, in a private page shared since fork, a copy of its own).
void write_pages(const Mapping& mapping, const char* text) {
    auto* base = static_cast<char*>(mapping.get());
    for (std::size_t offset = 0; offset < mapping.size(); offset += page_size())
        std::memcpy(base + offset, text, std::strlen(text) + 1);
}

/// Reads exactly `size` bytes. Returns false at end of file before the first byte (the peer
/// closed its end or died). `deadline` null: wait as long as the peer lives.
bool read_exactly(int fd, void* buffer, std::size_t size, const Deadline* deadline, const char* what) {
    auto* bytes = static_cast<char*>(buffer);
    const std::string source = fd == STDIN_FILENO ? "stdin" : "pipe"; // for the error: which read failed
    std::size_t done = 0;
    while (done < size) {
        throw_if_stopped();
        if (deadline != nullptr && deadline->expired())
            throw Failure(std::string("no ") + what + " within " + seconds_text(deadline->seconds()));
        pollfd ready{fd, POLLIN, 0};
        int waited = ::poll(&ready, 1, 1000); // one-second slices: the stop flag is checked between
        if (waited == -1 && errno != EINTR)
            throw_errno("poll(" + source + ")");
        if (waited <= 0)
            continue;
        ssize_t got = ::read(fd, bytes + done, size - done);
        if (got == -1 && errno != EINTR)
            throw_errno("read(" + source + ")");
        if (got == 0) {
            if (done == 0)
                return false;
            throw Failure(std::string("the pipe ended in the middle of ") + what);
        }
        if (got > 0)
            done += static_cast<std::size_t>(got);
    }
    return true;
}

void write_all(int fd, const void* buffer, std::size_t size, const char* what) {
    ssize_t wrote = ::write(fd, buffer, size); // smaller than PIPE_BUF: all or nothing
    if (wrote != static_cast<ssize_t>(size))
        throw_errno(std::string("write(pipe, ") + what + ")", "the other process has died");
}

/// The two pipes between parent and child: commands go down, snapshots come up.
struct Pipes {
    UniqueFd command_read, command_write;   // parent -> child: 'w' (write now), then end of file (exit)
    UniqueFd snapshot_read, snapshot_write; // child -> parent: its Snapshots

    static Pipes make(const Narrator& say) {
        Pipes pipes;
        int ends[2];
        if (::pipe2(ends, O_CLOEXEC) == -1)
            throw_errno("pipe2(O_CLOEXEC)");
        pipes.command_read.reset(ends[0]);
        pipes.command_write.reset(ends[1]);
        if (::pipe2(ends, O_CLOEXEC) == -1)
            throw_errno("pipe2(O_CLOEXEC)");
        pipes.snapshot_read.reset(ends[0]);
        pipes.snapshot_write.reset(ends[1]);
        say.say("pipe2() = [%d, %d] for commands, pipe2() = [%d, %d] for the child's reports",
                pipes.command_read.get(), pipes.command_write.get(), pipes.snapshot_read.get(),
                pipes.snapshot_write.get());
        return pipes;
    }
};

// ---------------------------------------------------------------------------------------------
// The child.

/// The child's side: look, report, wait for the command, write "child" into both pages, look,
/// report, and wait for the parent to close the command pipe (the parent may be pausing).
int child_main(const Mapping& shared, const Mapping& private_copy, Pipes& pipes, bool quiet) {
    Narrator say("child", quiet);
    pipes.command_write.reset(); // only the parent writes commands: our copy would hide its EOF
    pipes.snapshot_read.reset();
    UniqueFd pagemap = open_pagemap(say);

    Snapshot before = look(shared, private_copy, pagemap.get(), say);
    write_all(pipes.snapshot_write.get(), &before, sizeof before, "snapshot");

    char command = 0;
    if (!read_exactly(pipes.command_read.get(), &command, 1, nullptr, "command"))
        throw Failure("the parent closed the pipe before asking for the write: it has failed or died");
    write_pages(shared, kChildText);
    write_pages(private_copy, kChildText);
    say.say("wrote \"%s\" at the start of every page of both mappings", kChildText);

    Snapshot after = look(shared, private_copy, pagemap.get(), say);
    write_all(pipes.snapshot_write.get(), &after, sizeof after, "snapshot");

    // End of file on the command pipe: the parent is done with us (or died). Either way, exit.
    read_exactly(pipes.command_read.get(), &command, 1, nullptr, "end of the commands");
    return kExitSuccess;
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// Owns the child's pid: on a path that does not reach the planned reap (an error, Ctrl-C) it
/// kills the child and reaps it, so no zombie and no orphan is left.
struct ChildOwner {
    pid_t pid = -1;
    ~ChildOwner() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }
};

/// Waits, bounded, for the child to exit, and checks that it succeeded.
void reap(ChildOwner& child, const Options& options, const Narrator& say) {
    Deadline deadline(options.timeout_seconds);
    int status = 0;
    for (;;) {
        pid_t reaped = ::waitpid(child.pid, &status, WNOHANG);
        if (reaped == -1 && errno != EINTR)
            throw_errno("waitpid(" + std::to_string(child.pid) + ")");
        if (reaped == child.pid)
            break;
        throw_if_stopped();
        if (deadline.expired())
            throw Failure("the child did not exit within " + seconds_text(options.timeout_seconds));
        pause_briefly();
    }
    say.say("waitpid(%d) = %d: the child exited with status %d", child.pid, child.pid,
            WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    child.pid = -1;
    if (WIFSIGNALED(status))
        throw Failure("the child was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
                      ::strsignal(WTERMSIG(status)) + ")");
    if (WEXITSTATUS(status) != 0)
        throw Failure("the child failed: see its error line above");
}

Snapshot receive_snapshot(int fd, const Options& options, const char* what) {
    Snapshot snapshot;
    Deadline deadline(options.timeout_seconds);
    if (!read_exactly(fd, &snapshot, sizeof snapshot, &deadline, what))
        throw Failure(std::string("the child ended before sending ") + what + ": see its error line above");
    return snapshot;
}

/// Waits until the user presses Enter (or standard input ends, or Ctrl-C).
void pause_for_user(pid_t child) {
    std::fprintf(stderr, "parent: both processes pause now (parent pid %d, child pid %d): look at them "
                         "from another terminal; press Enter here to end\n", static_cast<int>(::getpid()),
                 static_cast<int>(child));
    char byte = 0;
    while (read_exactly(STDIN_FILENO, &byte, 1, nullptr, "line") && byte != '\n') {
    }
}

/// One row of the table.
void print_row(const char* page, const char* when, const char* process, pid_t pid, const PageView& view) {
    char pfn[24];
    if (!present(view.entry))
        std::snprintf(pfn, sizeof pfn, "absent");
    else if (pfn_hidden(view.entry))
        std::snprintf(pfn, sizeof pfn, "hidden");
    else
        std::snprintf(pfn, sizeof pfn, "%#llx", static_cast<unsigned long long>(pfn_of(view.entry)));
    std::printf("%-8s %-13s %-8s %-7d %#-16llx %-10s %-9s %s\n", page, when, process, static_cast<int>(pid),
                static_cast<unsigned long long>(view.address), pfn, (view.entry & kExclusive) ? "yes" : "no",
                view.text);
}

/// Prints what both processes saw, then what it shows; returns false if the kernel did not do
/// what this chapter says it does (the test of the lesson itself).
bool report(pid_t parent, pid_t child, const Snapshot& parent_before, const Snapshot& child_before,
            const Snapshot& child_after, const Snapshot& parent_after) {
    std::printf("when: before or after the child writes \"%s\" into both pages; PFN: the physical frame;\n"
                "only here: pagemap bit 56, no other process maps this frame; reads: the page's text\n\n",
                kChildText);
    std::printf("%-8s %-13s %-8s %-7s %-16s %-10s %-9s %s\n", "page", "when", "process", "pid",
                "virtual address", "PFN", "only here", "reads");
    print_row("shared", "before write", "parent", parent, parent_before.shared);
    print_row("shared", "before write", "child", child, child_before.shared);
    print_row("shared", "after write", "child", child, child_after.shared);
    print_row("shared", "after write", "parent", parent, parent_after.shared);
    print_row("private", "before write", "parent", parent, parent_before.private_copy);
    print_row("private", "before write", "child", child, child_before.private_copy);
    print_row("private", "after write", "child", child, child_after.private_copy);
    print_row("private", "after write", "parent", parent, parent_after.private_copy);
    std::printf("\n");

    // The frames are visible to CAP_SYS_ADMIN only; the texts to everyone.
    const PageView* views[] = {&parent_before.shared,     &child_before.shared,       &child_after.shared,
                               &parent_after.shared,      &parent_before.private_copy, &child_before.private_copy,
                               &child_after.private_copy, &parent_after.private_copy};
    bool frames_visible = true;
    for (const PageView* view : views)
        frames_visible = frames_visible && present(view->entry) && !pfn_hidden(view->entry);
    auto hex = [](std::uint64_t value) { return static_cast<unsigned long long>(value); };
    bool as_taught = true;

    const std::uint64_t shared_pfn = pfn_of(parent_before.shared.entry);
    const bool one_shared_frame = pfn_of(child_before.shared.entry) == shared_pfn &&
                                  pfn_of(child_after.shared.entry) == shared_pfn &&
                                  pfn_of(parent_after.shared.entry) == shared_pfn;
    if (frames_visible && one_shared_frame)
        std::printf("shared page:  one frame, PFN %#llx, in both processes, before and after the write;\n"
                    "              ", hex(shared_pfn));
    else if (frames_visible) {
        std::printf("shared page:  UNEXPECTED: the PFNs differ;\n              ");
        as_taught = false;
    } else
        std::printf("shared page:  ");
    if (std::strcmp(parent_after.shared.text, kChildText) == 0) {
        std::printf("the parent reads \"%s\": the child's write landed in the parent's page too\n", kChildText);
    } else {
        std::printf("UNEXPECTED: the parent reads \"%s\", not the child's \"%s\"\n", parent_after.shared.text,
                    kChildText);
        as_taught = false;
    }

    const std::uint64_t original = pfn_of(parent_before.private_copy.entry);
    const std::uint64_t copy = pfn_of(child_after.private_copy.entry);
    const bool copied_on_write = pfn_of(child_before.private_copy.entry) == original &&
                                 pfn_of(parent_after.private_copy.entry) == original && copy != original;
    if (frames_visible && copied_on_write)
        std::printf("private page: one frame after fork, PFN %#llx, shared until a write; after the child's\n"
                    "              write two: the child got a copy at PFN %#llx;\n              ", hex(original), hex(copy));
    else if (frames_visible) {
        std::printf("private page: UNEXPECTED: the PFNs do not show one frame, then two;\n              ");
        as_taught = false;
    } else
        std::printf("private page: ");
    if (std::strcmp(parent_after.private_copy.text, kParentText) == 0 &&
        std::strcmp(child_after.private_copy.text, kChildText) == 0) {
        std::printf("the parent still reads \"%s\": the child's write went to its own copy\n", kParentText);
    } else {
        std::printf("UNEXPECTED: the parent reads \"%s\", the child \"%s\"\n", parent_after.private_copy.text,
                    child_after.private_copy.text);
        as_taught = false;
    }

    if (!frames_visible)
        std::printf("\nPFNs hidden: /proc/PID/pagemap gives frame numbers only to a process with CAP_SYS_ADMIN\n"
                    "(since Linux 4.2: knowing where pages sit in physical memory helps Rowhammer-style\n"
                    "attacks), so every PFN reads as 0 here. The texts and \"only here\" still show one\n"
                    "shared page and one copied page. Run as root to see the frames:\n"
                    "sudo build/00-same-page/same_page\n");
    return as_taught;
}

int run(const Options& options, std::size_t pages, bool pause) {
    Narrator say("parent", options.quiet);
    install_stop_handlers();
    const std::size_t length = pages * page_size();

    UniqueFd pagemap = open_pagemap(say);
    Mapping shared = map_anonymous(length, MAP_SHARED, say);
    Mapping private_copy = map_anonymous(length, MAP_PRIVATE, say);
    write_pages(shared, kParentText);
    write_pages(private_copy, kParentText);
    say.say("wrote \"%s\" at the start of every page of both mappings", kParentText);
    Pipes pipes = Pipes::make(say);

    std::fflush(stdout); // nothing buffered may be copied into the child and printed twice
    ChildOwner child;
    child.pid = ::fork();
    if (child.pid == -1)
        throw_errno("fork()");
    if (child.pid == 0) {
        // The child: the same program, the same mappings at the same addresses. _exit, not
        // return: the parent's objects on this stack (owners included) belong to the parent.
        int status = run_main("child", [&] { return child_main(shared, private_copy, pipes, options.quiet); });
        ::_exit(status);
    }
    say.say("fork() = %d: the child has the same mappings at the same addresses", child.pid);
    pipes.command_read.reset(); // the child's ends: with them closed here, a dead child means EOF
    pipes.snapshot_write.reset();

    // The child looks first: until its first access, the shared page is not in its page table,
    // and the parent's look would find the frame mapped by the parent only.
    Snapshot child_before = receive_snapshot(pipes.snapshot_read.get(), options, "its first report");
    Snapshot parent_before = look(shared, private_copy, pagemap.get(), say);
    say.say("asking the child to write \"%s\" into both pages", kChildText);
    const char command = 'w';
    write_all(pipes.command_write.get(), &command, 1, "command");
    Snapshot child_after = receive_snapshot(pipes.snapshot_read.get(), options, "its second report");
    Snapshot parent_after = look(shared, private_copy, pagemap.get(), say);

    bool as_taught = report(::getpid(), child.pid, parent_before, child_before, child_after, parent_after);
    std::fflush(stdout);
    if (pause)
        pause_for_user(child.pid);

    pipes.command_write.reset();
    say.say("close(command pipe): the child reads end of file and exits");
    reap(child, options, say);
    void* shared_base = shared.get();
    void* private_base = private_copy.get();
    shared.reset();
    private_copy.reset();
    say.say("munmap(%p, %zu) = 0, munmap(%p, %zu) = 0: the shared memory is freed with its last mapping",
            shared_base, length, private_base, length);
    if (!as_taught)
        throw Failure("the pages did not behave as shared and private memory must: see UNEXPECTED above");
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the parent; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("same_page", [&] {
        std::size_t pages = 1;
        bool pause = false;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.extra.push_back({"--pages", true, [&](const std::string& text) {
                                  char* end = nullptr;
                                  errno = 0;
                                  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
                                  if (text.empty() || text[0] == '-' || *end != '\0' || errno != 0 || value == 0 ||
                                      value > 262144)
                                      throw UsageError("--pages wants a number from 1 to 262144, not '" + text + "'");
                                  pages = static_cast<std::size_t>(value);
                              }});
        spec.extra.push_back({"--pause", false, [&](const std::string&) { pause = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        // --pause waits for Enter on standard input. Closed (run_main() put a write-only
        // /dev/null in its place) or write-only, nothing can ever arrive there: a contradiction
        // in how the program was started, so refuse it before any work, not after it. An input
        // that ends at once (</dev/null) is fine: end of input ends the pause, as --help says.
        if (int mode = ::fcntl(STDIN_FILENO, F_GETFL); pause && (mode == -1 || (mode & O_ACCMODE) == O_WRONLY))
            throw UsageError("--pause waits for Enter on standard input, which is closed (or write-only): run it "
                             "from a terminal, or leave out --pause");
        return run(options, pages, pause);
    });
}
