/// @file 04-fd-passing/protocol.hpp
/// @brief Chapter 04: the wire protocol on the Unix socket, and the two calls the chapter
///        teaches: sending a descriptor with `sendmsg(2)` + `SCM_RIGHTS`, and receiving one with
///        `recvmsg(2)` without trusting anything about it.
///
/// Every message on the socket is 16 bytes, integers little-endian:
///
/// | offset | size | field  | meaning |
/// |-------:|-----:|--------|---------|
/// | 0      | 4    | magic  | the bytes `S` `H` `M` `4` |
/// | 4      | 4    | type   | 1 HELLO, 2 BLOCK, 3 END, 4 CONSUMED, 5 BUSY |
/// | 8      | 8    | length | BLOCK: bytes in the data area; otherwise 0 |
///
/// The conversation: writer → HELLO, with exactly one descriptor (the sealed memfd) attached;
/// then for each block writer → BLOCK, reader → CONSUMED; finally writer → END, reader →
/// CONSUMED (the confirmation). A writer that already serves a reader answers any other client
/// with BUSY and closes. The shared header's magic, version and capacity are used as in
/// chapter 02; its block_length, sequence and end_of_stream stay 0: the socket carries them.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.hpp"
#include "owners.hpp"
#include "wait.hpp"

namespace fdpass {

/// The default `--name`: a socket file. `@NAME` means the abstract namespace instead.
inline constexpr const char* kDefaultName = "/tmp/shm-tutorial-04.sock";

/// The first four bytes of every message: "SHM4" in memory.
inline constexpr std::uint32_t kMagic = 0x344d4853;

/// Message types.
enum Type : std::uint32_t { kHello = 1, kBlock = 2, kEnd = 3, kConsumed = 4, kBusy = 5 };

/// One message on the wire.
struct Message {
    std::uint32_t magic;  ///< kMagic
    std::uint32_t type;   ///< a Type
    std::uint64_t length; ///< BLOCK: bytes in the data area
};
static_assert(sizeof(Message) == 16);

/// The name of a message type, for narration and errors.
inline const char* type_name(std::uint32_t type) {
    switch (type) {
    case kHello: return "HELLO";
    case kBlock: return "BLOCK";
    case kEnd: return "END";
    case kConsumed: return "CONSUMED";
    case kBusy: return "BUSY";
    default: return "unknown";
    }
}

/// `sockaddr_un` for a path, or for `@name` in the abstract namespace (sun_path[0] == '\0':
/// no file, gone with the last socket, and no file permissions either). Throws UsageError if
/// the name does not fit in sun_path.
inline socklen_t make_address(const std::string& name, sockaddr_un& address) {
    address = {};
    address.sun_family = AF_UNIX;
    bool abstract = !name.empty() && name[0] == '@';
    if (name.size() < 2 && abstract)
        throw shmtut::UsageError("--name '@' needs a name after the '@'");
    if (name.size() >= sizeof address.sun_path)
        throw shmtut::UsageError("--name is " + std::to_string(name.size()) + " bytes; a socket name has at most " +
                                 std::to_string(sizeof address.sun_path - 1));
    std::memcpy(address.sun_path, name.data(), name.size());
    if (abstract)
        address.sun_path[0] = '\0';
    // An abstract name's length is exact (no terminating zero); a path's includes the zero.
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (abstract ? 0 : 1));
}

/// Sends one message (no descriptor). MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
inline void send_message(int socket_fd, std::uint32_t type, std::uint64_t length = 0) {
    Message message{kMagic, type, length};
    const auto* bytes = reinterpret_cast<const char*>(&message);
    std::size_t sent = 0;
    while (sent < sizeof message) {
        ssize_t n = ::send(socket_fd, bytes + sent, sizeof message - sent, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            shmtut::throw_errno(std::string("send(") + type_name(type) + ")",
                                errno == EPIPE || errno == ECONNRESET ? "the peer closed the connection: it died or stopped" : "");
        }
        sent += static_cast<std::size_t>(n);
    }
}

/// Sends `message` with one descriptor attached, in one `sendmsg`. The data bytes are required:
/// on a stream socket, a sendmsg with no data sends nothing, descriptor included. The control
/// buffer is built the portable way: a union aligns it for `cmsghdr`, CMSG_SPACE sizes it,
/// CMSG_FIRSTHDR/CMSG_LEN/CMSG_DATA fill it.
inline void send_descriptor(int socket_fd, const Message& message, int fd) {
    iovec data{const_cast<Message*>(&message), sizeof message};
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        cmsghdr align;
    } control{};
    msghdr header{};
    header.msg_iov = &data;
    header.msg_iovlen = 1;
    header.msg_control = control.buffer;
    header.msg_controllen = sizeof control.buffer;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&header);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    for (;;) {
        ssize_t n = ::sendmsg(socket_fd, &header, MSG_NOSIGNAL);
        if (n == static_cast<ssize_t>(sizeof message))
            return;
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1)
            shmtut::throw_errno("sendmsg(HELLO, SCM_RIGHTS)");
        throw shmtut::Failure("sendmsg(HELLO, SCM_RIGHTS) sent " + std::to_string(n) + " of 16 bytes");
    }
}

/// Waits until `socket_fd` is readable, in one-second slices that check the stop flag; a
/// deadline (may be null) bounds the wait. Returns false at the deadline.
inline bool wait_readable(int socket_fd, const shmtut::Deadline* deadline) {
    for (;;) {
        shmtut::throw_if_stopped();
        auto slice = deadline != nullptr ? std::min(deadline->remaining(), std::chrono::nanoseconds(shmtut::kLivenessInterval))
                                         : std::chrono::nanoseconds(shmtut::kLivenessInterval);
        pollfd entry{socket_fd, POLLIN, 0};
        int ready = ::poll(&entry, 1, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(slice).count()));
        if (ready == -1 && errno != EINTR)
            shmtut::throw_errno("poll(socket)");
        if (ready == 1)
            return true;
        if (deadline != nullptr && deadline->expired())
            return false;
    }
}

/// What a receive got: the message bytes (as many as arrived, at most 16) and every descriptor
/// that came with them, each owned, so that every path closes them.
struct Received {
    Message message{};                        ///< the data bytes (valid up to `bytes`)
    std::size_t bytes = 0;                    ///< how many data bytes arrived; 0 at end of file
    std::vector<shmtut::UniqueFd> descriptors; ///< every descriptor that arrived, owned
    bool truncated = false; ///< MSG_CTRUNC: the kernel dropped descriptors that did not fit
};

/// One `recvmsg` into a 16-byte message and a control buffer sized for one descriptor,
/// `CMSG_SPACE(sizeof(int))`: 24 bytes on 64-bit Linux, which (alignment) holds two. With
/// MSG_CMSG_CLOEXEC every received descriptor is close-on-exec at once. Returns 0 bytes at EOF
/// (and on ECONNRESET: a peer that died with unread data resets the connection).
inline Received receive_once(int socket_fd) {
    Received got;
    iovec data{&got.message, sizeof got.message};
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        cmsghdr align;
    } control{};
    msghdr header{};
    header.msg_iov = &data;
    header.msg_iovlen = 1;
    header.msg_control = control.buffer;
    header.msg_controllen = sizeof control.buffer;
    ssize_t n;
    while ((n = ::recvmsg(socket_fd, &header, MSG_CMSG_CLOEXEC)) == -1 && errno == EINTR)
        shmtut::throw_if_stopped();
    if (n == -1 && errno == ECONNRESET)
        return got; // the peer died with our last message unread: the same as end of file
    if (n == -1)
        shmtut::throw_errno("recvmsg");
    got.bytes = static_cast<std::size_t>(n);
    got.truncated = (header.msg_flags & MSG_CTRUNC) != 0;
    // Take ownership of every descriptor first, whatever else is wrong: counted from cmsg_len,
    // not assumed to be one.
    for (cmsghdr* cmsg = CMSG_FIRSTHDR(&header); cmsg != nullptr; cmsg = CMSG_NXTHDR(&header, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
            got.descriptors.emplace_back(fd);
        }
    }
    return got;
}

/// Receives one complete 16-byte message that must carry no descriptor (a stream socket may
/// deliver it in pieces). Throws Failure on EOF before a whole message, on any descriptor
/// (closed at once), or on a wrong magic. `what` names the wait for errors.
inline Message receive_message(int socket_fd, const shmtut::Deadline* deadline, const char* what) {
    Message message{};
    std::size_t have = 0;
    while (have < sizeof message) {
        if (!wait_readable(socket_fd, deadline))
            throw shmtut::Failure(std::string("no ") + what + " within the timeout");
        Received got = receive_once(socket_fd);
        if (!got.descriptors.empty() || got.truncated)
            throw shmtut::Failure(std::string("unexpected descriptor(s) with ") + what + ": closed them, refusing");
        if (got.bytes == 0)
            throw shmtut::Failure(std::string("the peer closed the connection before ") + what);
        std::memcpy(reinterpret_cast<char*>(&message) + have, &got.message, std::min(got.bytes, sizeof message - have));
        have += got.bytes;
    }
    if (message.magic != kMagic)
        throw shmtut::Failure(std::string("refused: ") + what + " does not start with SHM4 (garbage on the socket)");
    return message;
}

/// Receives the HELLO and its descriptor and checks everything before trusting it: exactly 16
/// data bytes saying HELLO; no MSG_CTRUNC (descriptors were dropped); exactly one descriptor.
/// Any descriptor received is closed on every refusal. The caller then checks what the one
/// descriptor is (check_sealed_memfd()).
inline shmtut::UniqueFd receive_descriptor(int socket_fd, const shmtut::Deadline& deadline) {
    if (!wait_readable(socket_fd, &deadline))
        throw shmtut::Failure("the writer sent nothing within the timeout");
    Received got = receive_once(socket_fd);
    if (got.bytes == 0)
        throw shmtut::Failure("the writer closed the connection without sending the memory");
    if (got.truncated)
        throw shmtut::Failure("refused: more descriptors arrived than fit (MSG_CTRUNC); closed the " +
                              std::to_string(got.descriptors.size()) + " that did fit");
    if (got.bytes != sizeof(Message) || got.message.magic != kMagic || got.message.type == kBusy ||
        got.message.type != kHello) {
        if (got.bytes == sizeof(Message) && got.message.magic == kMagic && got.message.type == kBusy)
            throw shmtut::Failure("another reader is already being served by this writer: one writer serves one reader");
        throw shmtut::Failure("refused: the first message is not a 16-byte HELLO (" + std::to_string(got.bytes) +
                              " bytes)");
    }
    if (got.descriptors.size() != 1)
        throw shmtut::Failure("refused: HELLO came with " + std::to_string(got.descriptors.size()) +
                              " descriptors, expected exactly 1");
    return std::move(got.descriptors.front());
}

} // namespace fdpass
