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
    int fd = memfd_create("hello-03", MFD_CLOEXEC | MFD_ALLOW_SEALING); // no name in any directory
    if (fd == -1) die("memfd_create");
    if (ftruncate(fd, size) == -1) die("ftruncate"); // a new memfd has 0 bytes
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == -1) die("fcntl(F_ADD_SEALS)"); // size fixed for all
    void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) die("mmap");
    auto* done = new (base) std::atomic<std::uint32_t>(0); // the reader sets it to 1
    std::memcpy(static_cast<char*>(base) + 4, message, sizeof message);
    std::printf("build/03-memfd/hello_reader %d %d\n", getpid(), fd); // the memfd's only address
    std::fflush(stdout);
    while (done->load() == 0) // FUTEX_WAIT sleeps only while the word is still 0: no lost wake-up
        if (syscall(SYS_futex, done, FUTEX_WAIT, 0, nullptr, nullptr, 0) == -1 && errno != EAGAIN && errno != EINTR)
            die("futex(FUTEX_WAIT)");
    return 0; // exit unmaps and closes; the last holder gone, the memory is freed: nothing to remove
}
