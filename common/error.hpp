/// @file error.hpp
/// @brief Errors that name the failed call, the program's exit statuses, and the one `catch`
///        every chapter's `main` goes through.
///
/// Chapter code calls the system itself and tests each result by that call's own convention
/// (`-1`, `MAP_FAILED`, `(void*)-1`); on failure it calls throw_errno(), which keeps `errno`
/// and the name of the call. Nothing here calls `exit()`: an exception unwinds the stack, so the
/// destructors of UniqueFd, Mapping and ShmAttachment run and the chapter's cleanup happens on
/// every path.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>

namespace shmtut {

/// Exit statuses shared by every chapter program (see DESIGN.md, "The programs' contract").
enum ExitStatus : int {
    kExitSuccess = 0,     ///< the stream arrived whole and was confirmed
    kExitFailure = 1,     ///< a runtime failure, reported in one line on stderr
    kExitUsage = 2,       ///< bad command line
    kExitUnsupported = 77 ///< this machine lacks what the chapter needs; `make run` skips it
};

/// A failed system call: `std::system_error` whose text names the call and its arguments, plus
/// an optional hint that tells the user what to do about it.
class SysError : public std::system_error {
public:
    /// `call` names the call and its arguments: `shm_open("/name")`.
    SysError(int error_number, const std::string& call, std::string hint)
        : std::system_error(error_number, std::system_category(), call), hint_(std::move(hint)) {}
    /// What the user can do about it ("is the writer running? start it first"), or empty.
    const std::string& hint() const noexcept { return hint_; }

private:
    std::string hint_;
};

/// Throws SysError for the current `errno`, e.g. `throw_errno("shmget(key=0x53...)")`.
/// Call it right after the failing call, before anything else can change `errno`.
[[noreturn]] void throw_errno(const std::string& call, std::string hint = {});

/// Throws SysError for an explicit error number (for calls that return it, or for a saved one).
[[noreturn]] void throw_error(int error_number, const std::string& call, std::string hint = {});

/// A runtime failure that is not a failed call: a header that does not validate, a peer that
/// died, a wait that timed out. The message is the whole line the user sees.
class Failure : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// A bad command line. `main` prints it with a pointer to `--help` and exits with kExitUsage.
class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// This machine lacks a kernel feature or a device the chapter needs: exit kExitUnsupported.
class Unsupported : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// SIGINT or SIGTERM arrived during a wait: the program unwinds, cleans up and exits 1.
class Interrupted : public std::runtime_error {
public:
    /// Names the signal in the message: "interrupted by SIGINT".
    explicit Interrupted(int signal_number);
    /// The signal that arrived.
    int signal_number() const noexcept { return signal_number_; }

private:
    int signal_number_;
};

/// Runs a chapter program's body and turns what it throws into one line on stderr and an exit
/// status: Failure, SysError and Interrupted give 1, UsageError 2, Unsupported 77. `role` is the
/// prefix of that line ("writer", "reader"). The body returns the status on success (0, or 0
/// after printing `--help`).
int run_main(const char* role, const std::function<int()>& body) noexcept;

/// Fills a closed standard descriptor (0, 1 or 2) with /dev/null opened so that using it fails
/// with EBADF, as the closed descriptor would. Without it the next open(), shm_open() or
/// memfd_create() would get the free number: a writer started with `<&-` would stream its own
/// shared memory as "standard input", a reader started with `>&-` would write the stream into
/// its own socket or object and report success, and narration would land in shared memory.
/// run_main() calls it first.
void reserve_standard_descriptors() noexcept;

} // namespace shmtut
