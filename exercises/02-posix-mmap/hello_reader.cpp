// EXERCISE 02-posix-mmap/2: open the writer's object by name and map it (the bare reader)
// This is 02-posix-mmap/hello_reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-02 (it builds this file and runs the chapter's tests).
// The solution is 02-posix-mmap/hello_reader.cpp: read it only once your version passes.

// hello_reader: chapter 02, step 1. Opens the object /hello-02 that hello_writer created, waits
// on the semaphore inside it, prints the message and tells the writer it is done.
// Start it after hello_writer says it is waiting (or: make hello-02).
// Not robust, on purpose: the comments say where, and step 2 (reader.cpp) what it adds.
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <unistd.h>

namespace { // names for this file only

// What the object holds, copied from hello_writer.cpp: nothing checks that the two agree.
struct Shared {
    sem_t ready;       // posted by the writer: the message is in place
    sem_t done;        // posted by the reader: it has copied the message
    char message[64];  // the text; not trusted to end in a NUL
};

[[noreturn]] void die(const char* call) { std::perror(call); std::exit(1); }

} // namespace

int main() {
    // TODO(exercise 2): open and map the writer's object, each call checked in one line:
    //   1. shm_open(3) "/hello-02" with O_RDWR and no O_CREAT: find, never create (mode 0).
    //   2. mmap(2) sizeof(Shared) bytes, PROT_READ | PROT_WRITE (sem_wait and sem_post write
    //      the semaphores), MAP_SHARED.
    // Then delete the three placeholder lines below.
    int fd = -1;          // placeholder
    void* base = nullptr; // placeholder
    die("TODO: shm_open, mmap"); // placeholder
    if (close(fd) == -1) die("close"); // the mapping keeps the object open
    auto* shared = static_cast<Shared*>(base);
    if (sem_wait(&shared->ready) == -1) die("sem_wait"); // for ever if the writer never posts
    std::printf("%.*s\n", static_cast<int>(sizeof shared->message), shared->message); // bounded
    if (sem_post(&shared->done) == -1) die("sem_post"); // the writer may now unlink and exit
    if (munmap(base, sizeof(Shared)) == -1) die("munmap");
    return 0;
}
