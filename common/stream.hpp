/// @file stream.hpp
/// @brief The two ends of every chapter's stream: where a writer's bytes come from, and how a
///        reader writes them out.
///
/// Every writer sends its MESSAGE operands (each followed by a newline) or, without operands,
/// its standard input; every reader copies each block to standard output. Neither is the lesson
/// of any chapter, so both live here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace shmtut {

/// A writer's input: the MESSAGE operands, or standard input until end of file.
class Input {
public:
    /// With no messages the input is standard input.
    explicit Input(const std::vector<std::string>& messages);

    /// True when the bytes come from standard input.
    bool from_stdin() const { return from_stdin_; }

    /// Copies up to `capacity` bytes to `destination` (for example straight into the shared data
    /// area); returns 0 at the end of the input. While standard input has nothing to read (a
    /// person at a keyboard) it calls `reader_alive` every second and throws Failure when it
    /// returns false, so a writer waiting for input still notices a dead reader; SIGINT/SIGTERM
    /// throw Interrupted.
    ///
    /// `watched` are more descriptors to poll(2) together with standard input (a socket to the
    /// reader, a listener): when one of them is ready, `reader_alive` is called at once rather
    /// than at the next second, so a writer that talks to its reader over a socket sees the
    /// reader's death (end of file on the connection) as it happens. `reader_alive` must consume
    /// what made a watched descriptor ready, or throw.
    std::size_t next(std::uint8_t* destination, std::size_t capacity, const std::function<bool()>& reader_alive,
                     const std::vector<int>& watched = {});

private:
    std::string messages_;
    std::size_t offset_ = 0;
    bool from_stdin_;
};

/// Writes all `length` bytes to `fd` (standard output), retrying short writes and EINTR.
/// Throws SysError; EPIPE (SIGPIPE is ignored, see install_stop_handlers()) gets a hint that the
/// program reading the output stopped, so the caller cleans up instead of dying silently.
void write_all(int fd, const std::uint8_t* bytes, std::uint64_t length);

/// What a writer knows when its reader's connection ends early (end of file, EPIPE,
/// ECONNRESET): that the reader closed it, `when` ("before the end of the stream"), and no more.
/// The reader may have been killed, crashed, exited after refusing something or after its own
/// output closed, or closed the socket and gone on; "died" would claim what the writer cannot
/// see. The reader's own last line says which.
std::string reader_hung_up(const std::string& when);

} // namespace shmtut
