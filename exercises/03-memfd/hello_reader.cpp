// EXERCISE 03-memfd/2: open the writer's memfd through /proc/PID/fd/N and map it (the bare reader)
// This is 03-memfd/hello_reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-03 (it builds this file and runs the chapter's tests).
// The solution is 03-memfd/hello_reader.cpp: read it only once your version passes.

/// @file 03-memfd/hello_reader.cpp
/// @brief Step 1 of chapter 03, the bare calls: opens the writer's memfd through
///        /proc/PID/fd/FD, prints the message in it, and tells the writer it is done.
///
/// Run: `build/03-memfd/hello_reader WRITER_PID FD`, the command hello_writer prints. Not robust,
/// on purpose; step 2 (reader.cpp) adds what is missing: it maps 4096 bytes without asking the
/// seals or the size (a sender that shrank the memfd kills it with SIGBUS), it trusts the bytes
/// to be a message (no header, no magic, no length), and a pid can be reused between the writer
/// printing it and this open.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/// Prints the call that failed with the system's error text, and exits 1 (TLPI's errExit).
static void die(const char* call) { std::perror(call); std::exit(1); }

/// Opens and maps the writer's memfd, prints the message, and wakes the writer.
int main(int argc, char** argv) {
    if (argc != 3) { std::fprintf(stderr, "usage: hello_reader WRITER_PID FD\n"); return 2; }
    std::string path = std::string("/proc/") + argv[1] + "/fd/" + argv[2];
    // TODO(exercise 2): reach the writer's memfd, each call checked in one line:
    //   1. open(2) `path` (/proc/PID/fd/FD) with O_RDWR | O_CLOEXEC: a new open of the writer's
    //      memory (the same user, or root, may). On failure die(path.c_str()), so that the
    //      message names the path (man 5 proc, /proc/pid/fd).
    //   2. mmap(2) 4096 bytes of it, PROT_READ | PROT_WRITE, MAP_SHARED: the reader writes the
    //      "done" word too.
    // Then delete the two placeholder lines below.
    void* base = nullptr; // placeholder
    die("TODO: open /proc/PID/fd/FD, mmap"); // placeholder
    auto* done = static_cast<std::atomic<std::uint32_t>*>(base); // the writer's "done" word
    std::fputs(static_cast<const char*>(base) + 4, stdout); // trusts a terminated message to be there
    if (std::fflush(stdout) == EOF) die("stdout");
    done->store(1);
    if (syscall(SYS_futex, done, FUTEX_WAKE, 1, nullptr, nullptr, 0) == -1) die("futex(FUTEX_WAKE)");
    return 0;
}
