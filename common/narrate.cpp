/// @file narrate.cpp
/// @brief Implementation of Narrator.
#include "narrate.hpp"

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <string>

#include <unistd.h>

namespace shmtut {

void Narrator::say(const char* format, ...) const {
    if (quiet_)
        return;
    char line[1024];
    int used = std::snprintf(line, sizeof line, "%s: ", role_);
    if (used < 0)
        return;
    std::va_list args;
    va_start(args, format);
    int body = std::vsnprintf(line + used, sizeof line - static_cast<std::size_t>(used), format, args);
    va_end(args);
    if (body < 0)
        return;
    std::size_t length = static_cast<std::size_t>(used) + static_cast<std::size_t>(body);
    if (length > sizeof line - 2)
        length = sizeof line - 2; // truncated: keep the newline
    line[length++] = '\n';
    // A failed narration must not fail the program (stderr may be closed); errno is preserved
    // because callers may narrate between a failed call and throw_errno().
    int saved_errno = errno;
    [[maybe_unused]] ssize_t written = ::write(STDERR_FILENO, line, length);
    errno = saved_errno;
}

std::string sibling_program(const char* program) {
    std::string self = program_invocation_name != nullptr ? program_invocation_name : "";
    if (self.find('/') == std::string::npos) {
        char target[4096];
        ssize_t n = ::readlink("/proc/self/exe", target, sizeof target - 1); // found through PATH
        self = n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "";
    }
    std::string::size_type slash = self.rfind('/');
    return slash == std::string::npos ? std::string(program) : self.substr(0, slash + 1) + program;
}

} // namespace shmtut
