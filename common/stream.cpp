/// @file stream.cpp
/// @brief Implementation of Input and write_all().
#include "stream.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include <poll.h>
#include <unistd.h>

#include "error.hpp"
#include "wait.hpp"

namespace shmtut {

Input::Input(const std::vector<std::string>& messages) : from_stdin_(messages.empty()) {
    for (const std::string& message : messages)
        messages_ += message + '\n';
}

std::size_t Input::next(std::uint8_t* destination, std::size_t capacity, const std::function<bool()>& reader_alive,
                        const std::vector<int>& watched) {
    if (!from_stdin_) {
        std::size_t n = std::min(capacity, messages_.size() - offset_);
        std::memcpy(destination, messages_.data() + offset_, n);
        offset_ += n;
        return n;
    }
    std::vector<pollfd> entries{{STDIN_FILENO, POLLIN, 0}};
    for (int fd : watched)
        entries.push_back({fd, POLLIN, 0});
    for (;;) {
        throw_if_stopped();
        int ready = ::poll(entries.data(), entries.size(),
                           static_cast<int>(std::chrono::milliseconds(kLivenessInterval).count()));
        if (ready == -1 && errno != EINTR)
            throw_errno("poll(stdin)");
        if (ready > 0 && entries[0].revents != 0) {
            ssize_t n = ::read(STDIN_FILENO, destination, capacity);
            if (n >= 0)
                return static_cast<std::size_t>(n);
            if (errno != EINTR && errno != EAGAIN)
                throw_errno("read(stdin)", errno == EBADF ? "standard input is closed (or write-only): give the "
                                                            "message as arguments, or redirect it from a file"
                                                          : "");
        }
        // Every second, and at once when a watched descriptor is ready.
        if (!reader_alive())
            throw Failure("the reader died while the writer waited for input; cleaned up");
    }
}

void write_all(int fd, const std::uint8_t* bytes, std::uint64_t length) {
    while (length > 0) {
        // write(2) takes a size_t: 32 bits on armhf, where a 64-bit length is written in pieces.
        const auto piece = static_cast<std::size_t>(std::min<std::uint64_t>(length, SSIZE_MAX));
        ssize_t n = ::write(fd, bytes, piece);
        if (n == -1) {
            if (errno == EINTR) {
                throw_if_stopped();
                continue;
            }
            throw_errno("write(stdout)", errno == EPIPE   ? "the program reading the output stopped"
                                         : errno == EBADF ? "standard output is closed (or read-only): redirect it "
                                                            "to a file or a program"
                                                          : "");
        }
        bytes += n;
        length -= static_cast<std::uint64_t>(n);
    }
}

std::string reader_hung_up(const std::string& when) {
    return "the reader closed the connection " + when +
           " (it exited, was killed, or gave up on the stream: its own last line says which)";
}

} // namespace shmtut
