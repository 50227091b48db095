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
    int fd = shm_open("/hello-02", O_RDWR, 0); // no O_CREAT: find, never create
    if (fd == -1) die("shm_open"); // ENOENT if the writer has not started: step 2 waits for it
    // Trusts the object to be as large as Shared: smaller (shrunk, or half made) is a SIGBUS below.
    void* base = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) die("mmap");
    if (close(fd) == -1) die("close"); // the mapping keeps the object open
    auto* shared = static_cast<Shared*>(base);
    if (sem_wait(&shared->ready) == -1) die("sem_wait"); // for ever if the writer never posts
    std::printf("%.*s\n", static_cast<int>(sizeof shared->message), shared->message); // bounded
    if (sem_post(&shared->done) == -1) die("sem_post"); // the writer may now unlink and exit
    if (munmap(base, sizeof(Shared)) == -1) die("munmap");
    return 0;
}
