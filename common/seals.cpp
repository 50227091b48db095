/// @file seals.cpp
/// @brief Implementation of seals_text() and check_sealed_memfd().
#include "seals.hpp"

#include <cerrno>

#include <sys/stat.h>
#include <unistd.h>

#include "error.hpp"

namespace shmtut {

namespace {
/// For the message only, when F_GET_SEALS said EINVAL: was it something other than a file?
bool is_regular_file(int fd) {
    struct stat info {};
    return ::fstat(fd, &info) == 0 && S_ISREG(info.st_mode);
}
} // namespace

std::string seals_text(int seals) {
    std::string text;
    auto add = [&](int bit, const char* name) {
        if ((seals & bit) != 0)
            text += (text.empty() ? "" : "|") + std::string(name);
    };
    add(F_SEAL_SEAL, "F_SEAL_SEAL");
    add(F_SEAL_SHRINK, "F_SEAL_SHRINK");
    add(F_SEAL_GROW, "F_SEAL_GROW");
    add(F_SEAL_WRITE, "F_SEAL_WRITE");
    add(F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE");
    add(F_SEAL_EXEC, "F_SEAL_EXEC");
    return text.empty() ? "none" : text;
}

std::uint64_t check_sealed_memfd(int fd, int required, std::uint64_t min_size, const Narrator& say) {
    const std::string name = "descriptor " + std::to_string(fd);
    // 1. The seals first. Whoever else holds the file can still change its size until
    //    F_SEAL_SHRINK|F_SEAL_GROW are in place; once they are, nobody can. A size read before
    //    the seals may be stale by the time it is used (the sender shrinks, then seals: the
    //    mapping of the old size raises SIGBUS); a size read after them cannot change.
    const std::string get_seals = "fcntl(fd=" + std::to_string(fd) + ", F_GET_SEALS)";
    int seals = ::fcntl(fd, F_GET_SEALS);
    if (seals == -1 && errno == EINVAL && !is_regular_file(fd))
        throw Failure(name + " is not a regular file (a pipe, a socket, a directory?): refusing it");
    if (seals == -1)
        throw_errno(get_seals, "a file that cannot be sealed: refusing it");
    if ((seals & required) != required)
        throw Failure(name + " has seals " + seals_text(seals) + ", needs " + seals_text(required) + ": refusing it");

    // 2. Then the size, which the seals have just frozen.
    const std::string stat_call = "fstat(fd=" + std::to_string(fd) + ")";
    struct stat info {};
    if (::fstat(fd, &info) == -1)
        throw_errno(stat_call);
    if (!S_ISREG(info.st_mode))
        throw Failure(name + " is not a regular file (a pipe, a socket, a directory?): refusing it");
    if (static_cast<std::uint64_t>(info.st_size) < min_size)
        throw Failure(name + " has " + std::to_string(info.st_size) + " bytes, less than the " +
                      std::to_string(min_size) + "-byte header: refusing it");

    // 3. Then what it is: F_GET_SEALS also answers for a /dev/shm object; a memfd's link says so.
    char link[256] = {};
    const std::string self = "/proc/self/fd/" + std::to_string(fd);
    if (::readlink(self.c_str(), link, sizeof link - 1) == -1)
        throw_errno("readlink(\"" + self + "\")");
    if (std::string(link).rfind("/memfd:", 0) != 0)
        throw Failure(name + " is " + link + ", not a memfd: refusing it");
    say.say("%s = %s; %s: regular, size=%lld; %s -> %s", get_seals.c_str(), seals_text(seals).c_str(),
            stat_call.c_str(), static_cast<long long>(info.st_size), self.c_str(), link);
    return static_cast<std::uint64_t>(info.st_size);
}

} // namespace shmtut
