// hello.cpp: step 1 of chapter 00, the bare calls. A page mapped MAP_SHARED|MAP_ANONYMOUS
// before fork() is one page in both processes: the child writes a message into it, the parent
// waits for the child to exit and prints what the page now holds. Run: build/00-same-page/hello
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

[[noreturn]] static void die(const char* call) { std::perror(call); std::exit(1); }

int main() {
    const size_t size = 4096; // one page on x86-64; mmap rounds up to whole pages anyway
    // MAP_ANONYMOUS: zero-filled memory that belongs to no file; MAP_SHARED: a child made by
    // fork() maps the same pages, where MAP_PRIVATE would give it a copy on its first write.
    void* page = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) die("mmap");

    pid_t child = fork(); // the child starts with the same mappings at the same addresses
    if (child == -1) die("fork");
    if (child == 0) {
        std::strcpy(static_cast<char*>(page), "Hello from the child, through one shared page.");
        _exit(0); // _exit, not exit: the child must not flush the parent's stdio buffers again
    }

    // The simplest correct wait: once waitpid() has seen the child exit, its write is done.
    int status = 0;
    if (waitpid(child, &status, 0) == -1) die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { std::fputs("child failed\n", stderr); return 1; }

    std::printf("%s\n", static_cast<char*>(page));
    if (munmap(page, size) == -1) die("munmap"); // the parent's mapping was the last one
    return 0;
}
