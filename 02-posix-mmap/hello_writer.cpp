// hello_writer: chapter 02, step 1. Creates the POSIX shared-memory object /hello-02, puts a
// message and two process-shared semaphores in it, and waits until hello_reader has read it.
// Start it first, then build/02-posix-mmap/hello_reader in another terminal (or: make hello-02).
// Not robust, on purpose: the comments say where, and step 2 (writer.cpp) what it adds.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <unistd.h>

namespace { // names for this file only

// What the object holds; hello_reader.cpp has a copy. Step 2 adds a magic, a version, sizes.
struct Shared {
    sem_t ready;       // posted by the writer: the message is in place
    sem_t done;        // posted by the reader: it has copied the message
    char message[64];  // the text
};

// Exits without shm_unlink: a failure after shm_open leaves the name (step 2 cleans up on every path).
[[noreturn]] void die(const char* call) { std::perror(call); std::exit(1); }

} // namespace

int main() {
    int fd = shm_open("/hello-02", O_RDWR | O_CREAT | O_EXCL, 0600); // EEXIST if a dead run left it
    if (fd == -1) die("shm_open");
    if (ftruncate(fd, sizeof(Shared)) == -1) die("ftruncate"); // a new object has size 0
    void* base = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) die("mmap");
    if (close(fd) == -1) die("close"); // the mapping keeps the object open
    auto* shared = static_cast<Shared*>(base);
    if (sem_init(&shared->ready, 1, 0) == -1) die("sem_init"); // pshared = 1: between processes
    if (sem_init(&shared->done, 1, 0) == -1) die("sem_init");
    std::strcpy(shared->message, "hello, shared memory");
    if (sem_post(&shared->ready) == -1) die("sem_post"); // a reader started before this line fails
    std::fprintf(stderr, "hello_writer: waiting for hello_reader\n");
    if (sem_wait(&shared->done) == -1) die("sem_wait"); // for ever if no reader comes, or it dies
    if (munmap(base, sizeof(Shared)) == -1) die("munmap");
    if (shm_unlink("/hello-02") == -1) die("shm_unlink"); // else the name outlives every process
    return 0;
}
