// EXERCISE 02-posix-mmap/1: create a POSIX shared-memory object, size it, map it (the bare writer)
// This is 02-posix-mmap/hello_writer.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-02 (it builds this file and runs the chapter's tests).
// The solution is 02-posix-mmap/hello_writer.cpp: read it only once your version passes.

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
    // TODO(exercise 1): create, size and map the object, each call checked in one line:
    //   1. shm_open(3): the name "/hello-02", O_RDWR | O_CREAT | O_EXCL, mode 0600 (EXCL: fail
    //      with EEXIST if a dead run left the name). It returns a descriptor, fd.
    //   2. ftruncate(2) it to sizeof(Shared): a new object has 0 bytes.
    //   3. mmap(2) sizeof(Shared) bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset 0
    //      (MAP_FAILED on failure, not NULL).
    // Then delete the three placeholder lines below.
    int fd = -1;          // placeholder
    void* base = nullptr; // placeholder
    die("TODO: shm_open, ftruncate, mmap"); // placeholder
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
