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
    int semid = semget(key, 0, 0); // find, never create: no IPC_CREAT
    if (semid == -1) die("semget");
    sembuf ready = {0, -1, 0};     // blocks until the writer posts "ready"
    if (semop(semid, &ready, 1) == -1) die("semop(ready -1)");
    int shmid = shmget(key, 0, 0); // it exists: the writer made it before "ready"
    if (shmid == -1) die("shmget");
    const char* memory = static_cast<const char*>(shmat(shmid, nullptr, SHM_RDONLY));
    if (memory == reinterpret_cast<const char*>(-1)) die("shmat");

    size_t length = strnlen(memory, 4096); // never past the 4096 bytes both sides assume
    if (std::fwrite(memory, 1, length, stdout) != length || std::fflush(stdout) == EOF) die("fwrite");
    if (shmdt(memory) == -1) die("shmdt");
    sembuf done = {1, +1, 0};      // the writer may remove everything now
    if (semop(semid, &done, 1) == -1) die("semop(done +1)");
    return 0;
}
