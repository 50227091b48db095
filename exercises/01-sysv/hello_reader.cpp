// EXERCISE 01-sysv/2: find the writer's semaphore set and segment by key, wait for ready, attach (the bare reader)
// This is 01-sysv/hello_reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-01 (it builds this file and runs the chapter's tests).
// The solution is 01-sysv/hello_reader.cpp: read it only once your version passes.

// Chapter 01, step 1: the bare calls, reader side. Finds the writer's semaphore set and segment
// by the key ftok(PATH, 'h'), waits for "ready", prints the message, posts "done".
// Run it after build/01-sysv/hello_writer has started (see hello_writer.cpp).
// Not robust, on purpose (step 2, reader.cpp, adds each): started before the writer it fails
// at once (ENOENT); it waits for ever for a writer that died before "ready"; it trusts what the
// segment holds (a size both sides assume, a message that ends in a zero byte).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/sem.h>
#include <sys/shm.h>

static void die(const char* call) { std::perror(call); std::exit(1); } // TLPI's errExit

int main(int argc, char** argv) {
    const char* key_path = argc > 1 ? argv[1] : "/tmp";
    key_t key = ftok(key_path, 'h');
    if (key == -1) die("ftok");
    // TODO(exercise 2): find the writer's objects under `key`, wait, and attach, each call
    // checked in one line with die("call"):
    //   1. semget(2) with nsems 0 and flags 0: find the set, never create it (no IPC_CREAT).
    //   2. semop(2) on semaphore 0 ("ready"), sem_op -1: blocks until the writer posts it.
    //   3. shmget(2) with size 0 and flags 0: find the segment.
    //   4. shmat(2) it read-only (SHM_RDONLY): the reader only reads. (void*)-1 means failure.
    // Then delete the three placeholder lines below.
    int semid = -1;               // placeholder
    const char* memory = nullptr; // placeholder
    die("TODO: semget, semop(ready -1), shmget, shmat"); // placeholder

    size_t length = strnlen(memory, 4096); // never past the 4096 bytes both sides assume
    if (std::fwrite(memory, 1, length, stdout) != length || std::fflush(stdout) == EOF) die("fwrite");
    if (shmdt(memory) == -1) die("shmdt");
    sembuf done = {1, +1, 0};      // the writer may remove everything now
    if (semop(semid, &done, 1) == -1) die("semop(done +1)");
    return 0;
}
