/// @file narrate.hpp
/// @brief The narration printer: what the program does, on standard error, one line per step.
///
/// Narration is how a learner sees the technique happen. Every line is `ROLE: TEXT` (for example
/// `writer: shmget(key=0x5301c2a9, size=65792, IPC_CREAT|IPC_EXCL|0600) = 32769`), so in one
/// terminal it is clear who did what; tests match these lines, so the format is stable. Standard
/// output carries data only. `--quiet` turns narration off; errors are still printed by
/// run_main().
#pragma once

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

} // namespace shmtut
