/// @file error.cpp
/// @brief Implementation of the error types and of run_main().
#include "error.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>

#include <fcntl.h>

namespace shmtut {

void throw_errno(const std::string& call, std::string hint) {
    throw_error(errno, call, std::move(hint));
}

void throw_error(int error_number, const std::string& call, std::string hint) {
    throw SysError(error_number, call, std::move(hint));
}

namespace {
std::string signal_name(int signal_number) {
    const char* abbrev = sigabbrev_np(signal_number); // "INT" for SIGINT; glibc 2.32
    return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(signal_number);
}
} // namespace

Interrupted::Interrupted(int signal_number)
    : std::runtime_error("interrupted by " + signal_name(signal_number)), signal_number_(signal_number) {}

int run_main(const char* role, const std::function<int()>& body) noexcept {
    reserve_standard_descriptors();
    try {
        return body();
    } catch (const UsageError& e) {
        std::fprintf(stderr, "%s: %s (see %s --help)\n", role, e.what(), role);
        return kExitUsage;
    } catch (const Unsupported& e) {
        std::fprintf(stderr, "%s: not supported here: %s\n", role, e.what());
        return kExitUnsupported;
    } catch (const SysError& e) {
        if (e.hint().empty())
            std::fprintf(stderr, "%s: %s\n", role, e.what());
        else
            std::fprintf(stderr, "%s: %s: %s\n", role, e.what(), e.hint().c_str());
        return kExitFailure;
    } catch (const Interrupted& e) {
        std::fprintf(stderr, "%s: %s; cleaned up and stopped\n", role, e.what());
        return kExitFailure;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: %s\n", role, e.what());
        return kExitFailure;
    } catch (...) {
        std::fprintf(stderr, "%s: unknown error\n", role);
        return kExitFailure;
    }
}

void reserve_standard_descriptors() noexcept {
    // open(2) returns the lowest free number, so 0, 1, 2 are filled in order. /dev/null opened
    // for writing only makes read(0) fail with EBADF, and opened for reading only makes write(1)
    // and write(2) fail with EBADF, as they would on the closed descriptor: the program's own
    // error says "read(stdin): Bad file descriptor" instead of using its shared memory as input.
    for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd) {
        if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        int placeholder = ::open("/dev/null", (fd == STDIN_FILENO ? O_WRONLY : O_RDONLY));
        if (placeholder != -1 && placeholder != fd)
            ::close(placeholder); // a lower number was free after all: leave that one
    }
}

} // namespace shmtut
