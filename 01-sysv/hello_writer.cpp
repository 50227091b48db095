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
    int semid = semget(key, 2, IPC_CREAT | IPC_EXCL | 0600);
    if (semid == -1) die("semget");
    int shmid = shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600); // zero-filled
    if (shmid == -1) die("shmget");
    char* memory = static_cast<char*>(shmat(shmid, nullptr, 0));
    if (memory == reinterpret_cast<char*>(-1)) die("shmat"); // (void*)-1, not NULL

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
