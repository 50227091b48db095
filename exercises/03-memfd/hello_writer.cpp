// EXERCISE 03-memfd/1: create a memfd, size it, seal its size, map it (the bare writer)
// This is 03-memfd/hello_writer.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-03 (it builds this file and runs the chapter's tests).
// The solution is 03-memfd/hello_writer.cpp: read it only once your version passes.

/// @file 03-memfd/hello_writer.cpp
/// @brief Step 1 of chapter 03, the bare calls: puts a message in a sealed memfd, prints the
///        command that reads it, and waits until the reader says it is done.
///
/// Run: `build/03-memfd/hello_writer`, then in a second terminal the command it prints
/// (`make hello-03` runs both in one terminal). Not robust, on purpose; step 2 (writer.cpp)
/// adds what is missing: it waits for ever if no reader comes or the reader dies (no timeout,
/// no liveness token), and it trusts any process that writes the "done" word.
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/// Prints the call that failed with the system's error text, and exits 1 (TLPI's errExit).
static void die(const char* call) { std::perror(call); std::exit(1); }

/// Creates, sizes, seals, maps and fills the memfd, prints the reader's command, and waits.
int main() {
    const char message[] = "Hello through a memfd!\n";
    const std::size_t size = 4096; // one page: a 4-byte "done" word, then the message
    // TODO(exercise 1): make the memory, each call checked in one line with die("call"):
    //   1. memfd_create(2): name "hello-03" (shown only in /proc), flags MFD_CLOEXEC and
    //      MFD_ALLOW_SEALING (without it no seal can ever be added). It returns the descriptor.
    //   2. ftruncate(2) it to `size`: a new memfd has 0 bytes.
    //   3. fcntl(2) F_ADD_SEALS with F_SEAL_SHRINK | F_SEAL_GROW: the size is now fixed for
    //      everyone, this process included (man 2 fcntl, "File Sealing").
    //   4. mmap(2) `size` bytes, PROT_READ | PROT_WRITE, MAP_SHARED, at offset 0.
    // Then delete the three placeholder lines below.
    int fd = -1;          // placeholder
    void* base = nullptr; // placeholder
    die("TODO: memfd_create, ftruncate, fcntl(F_ADD_SEALS), mmap"); (void)size; // placeholder
    auto* done = new (base) std::atomic<std::uint32_t>(0); // the reader sets it to 1
    std::memcpy(static_cast<char*>(base) + 4, message, sizeof message);
    std::printf("build/03-memfd/hello_reader %d %d\n", getpid(), fd); // the memfd's only address
    std::fflush(stdout);
    while (done->load() == 0) // FUTEX_WAIT sleeps only while the word is still 0: no lost wake-up
        if (syscall(SYS_futex, done, FUTEX_WAIT, 0, nullptr, nullptr, 0) == -1 && errno != EAGAIN && errno != EINTR)
            die("futex(FUTEX_WAIT)");
    return 0; // exit unmaps and closes; the last holder gone, the memory is freed: nothing to remove
}
