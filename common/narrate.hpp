/// @file narrate.hpp
/// @brief The narration printer: what the program does, on standard error, one line per step.
///
/// Narration is how a learner sees the technique happen. Every line is `ROLE: TEXT` (for example
/// `writer: shmget(key=0x5301c2a9, size=65792, IPC_CREAT|IPC_EXCL|0600) = 32769`), so in one
/// terminal it is clear who did what; tests match these lines, so the format is stable. Standard
/// output carries data only. `--quiet` turns narration off; errors are still printed by
/// run_main().
#pragma once

#include <string>

namespace shmtut {

/// Prints narration lines for one program role; silent when quiet.
class Narrator {
public:
    /// `role` must outlive the Narrator (a string literal: "writer", "reader").
    explicit Narrator(const char* role, bool quiet = false) noexcept : role_(role), quiet_(quiet) {}

    /// Prints `ROLE: ` and the formatted text and a newline to stderr, in one `write(2)`, so that
    /// lines of two programs sharing a terminal do not interleave mid-line.
    void say(const char* format, ...) const __attribute__((format(printf, 2, 3)));

    /// The role prefix.
    const char* role() const noexcept { return role_; }
    /// True when narration is off.
    bool quiet() const noexcept { return quiet_; }

private:
    const char* role_;
    bool quiet_;
};

/// The path to start `program`, another program of this chapter, by, as this one was started: the
/// folder of `argv[0]` (glibc keeps it as program_invocation_name, man 3 program_invocation_name)
/// and `program`. Started as build/05-dma-buf/writer it is "build/05-dma-buf/reader"; in chapter
/// 05's VM, started as 05-dma-buf/writer, "05-dma-buf/reader". Started through PATH (no slash in
/// argv[0]) it is the folder of /proc/self/exe, an absolute path. Hints use it so that the
/// command they show exists wherever the programs are.
std::string sibling_program(const char* program);

} // namespace shmtut
