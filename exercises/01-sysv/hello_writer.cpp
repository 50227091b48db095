// EXERCISE 01-sysv/1: create a semaphore set and a segment, attach it (the bare writer)
// This is 01-sysv/hello_writer.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-01 (it builds this file and runs the chapter's tests).
// The solution is 01-sysv/hello_writer.cpp: read it only once your version passes.

// Chapter 01, step 1: the bare calls, writer side. Creates a semaphore set and a segment under
// the key ftok(PATH, 'h'), writes a fixed message into the segment, posts "ready", waits for the
// reader's "done", then removes both. Run: build/01-sysv/hello_writer & build/01-sysv/hello_reader
// Not robust, on purpose (step 2, writer.cpp, adds each): it waits for ever for a reader that
// never comes or that died; killed or failing half-way, it leaves its objects behind, and the
// next run fails with EEXIST until someone runs ipcrm.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/sem.h>
#include <sys/shm.h>

static void die(const char* call) { std::perror(call); std::exit(1); } // TLPI's errExit

int main(int argc, char** argv) {
    const char* key_path = argc > 1 ? argv[1] : "/tmp"; // any existing file: both sides name it
    key_t key = ftok(key_path, 'h');                      // same file, same id: same key
    if (key == -1) die("ftok");
    // Two semaphores: 0 "message ready", 1 "message read". Linux starts them at 0 (POSIX
    // leaves that open; step 2 sets them with semctl(SETALL) and tells the reader when).
    // TODO(exercise 1): create the two System V objects under `key` and attach the segment,
    // each call checked in one line with die("call"):
    //   1. semget(2): a set of 2 semaphores, IPC_CREAT | IPC_EXCL | 0600 (EXCL: fail if a dead
    //      run left one; 0600: only this user). It returns the set's id, semid.
    //   2. shmget(2): a segment of 4096 bytes, the same flags. It returns shmid.
    //   3. shmat(2): attach shmid anywhere (NULL), flags 0 (read-write). It returns the address,
    //      or (void*)-1 on failure, not NULL.
    // Then delete the three placeholder lines below.
    int semid = -1, shmid = -1;   // placeholder
    char* memory = nullptr;       // placeholder
    die("TODO: semget, shmget, shmat"); // placeholder

    std::strcpy(memory, "hello, shared memory\n");
    sembuf ready = {0, +1, 0}; // the message is in place: the reader may look
    if (semop(semid, &ready, 1) == -1) die("semop(ready +1)");
    if (std::fputs("hello_writer: the message is in place; start hello_reader\n", stderr) == EOF) die("fputs");
    sembuf done = {1, -1, 0};  // blocks until the reader posts "done"
    if (semop(semid, &done, 1) == -1) die("semop(done -1)");

    if (shmdt(memory) == -1) die("shmdt");                      // detaching is not removing:
    if (shmctl(shmid, IPC_RMID, nullptr) == -1) die("shmctl");  // the segment goes now,
    if (semctl(semid, 0, IPC_RMID) == -1) die("semctl");        // and the semaphore set
    return 0;
}
