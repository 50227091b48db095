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
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.hpp"
#include "narrate.hpp"
#include "options.hpp"
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

/// The peer closed (or reset) the connection: for a reader waiting on its writer, the writer's
/// death. Refusals of what did arrive are plain Failures.
class PeerClosed : public shmtut::Failure {
public:
    using shmtut::Failure::Failure;
};

/// Sends one message (no descriptor). MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE, and
/// is reported as PeerClosed.
inline void send_message(int socket_fd, std::uint32_t type, std::uint64_t length = 0) {
    Message message{kMagic, type, length};
    const auto* bytes = reinterpret_cast<const char*>(&message);
    std::size_t sent = 0;
    while (sent < sizeof message) {
        ssize_t n = ::send(socket_fd, bytes + sent, sizeof message - sent, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE || errno == ECONNRESET)
                throw PeerClosed(std::string("send(") + type_name(type) + "): the peer closed the connection");
            shmtut::throw_errno(std::string("send(") + type_name(type) + ")");
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
/// MSG_CMSG_CLOEXEC every received descriptor is close-on-exec at once. Asks for `wanted` bytes
/// at most (the rest of a message that arrived in pieces). Returns 0 bytes at EOF
/// (and on ECONNRESET: a peer that died with unread data resets the connection).
inline Received receive_once(int socket_fd, std::size_t wanted = sizeof(Message)) {
    Received got;
    iovec data{&got.message, std::min(wanted, sizeof got.message)};
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
/// deliver it in pieces). Throws PeerClosed on EOF before a whole message, and Failure on any
/// descriptor (closed at once) or on a wrong magic. `what` names the wait for errors.
inline Message receive_message(int socket_fd, const shmtut::Deadline* deadline, const char* what) {
    Message message{};
    std::size_t have = 0;
    while (have < sizeof message) {
        if (!wait_readable(socket_fd, deadline))
            throw shmtut::Failure(std::string("no ") + what + " within the timeout");
        Received got = receive_once(socket_fd, sizeof message - have); // never past this message
        if (!got.descriptors.empty() || got.truncated)
            throw shmtut::Failure(std::string("unexpected descriptor(s) with ") + what + ": closed them, refusing");
        if (got.bytes == 0)
            throw PeerClosed(std::string("the peer closed the connection before ") + what);
        std::memcpy(reinterpret_cast<char*>(&message) + have, &got.message, got.bytes);
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
        throw PeerClosed("the writer closed the connection without sending the memory");
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

// The socket's two ends, as both chapter 04 programs (and chapter 05's, which reuse them) make
// them. Each function makes the calls it is named for, narrated.

using shmtut::Deadline;
using shmtut::Failure;
using shmtut::Narrator;
using shmtut::Options;
using shmtut::SysError;
using shmtut::UniqueFd;
using shmtut::kLivenessInterval;
using shmtut::seconds_text;
using shmtut::throw_errno;
using shmtut::throw_error;
using shmtut::throw_if_stopped;
using shmtut::pause_briefly;

/// Removes the socket file on every path (a path socket's file outlives the socket otherwise).
struct SocketFile {
    const Narrator& say; ///< narrates the removal
    std::string path;    ///< empty: nothing to remove (abstract name, or already removed)
    /// Owns nothing until `path` is set.
    explicit SocketFile(const Narrator& n) : say(n) {}
    SocketFile(const SocketFile&) = delete;
    SocketFile& operator=(const SocketFile&) = delete;
    ~SocketFile() {
        if (!path.empty() && ::unlink(path.c_str()) == 0)
            say.say("unlink(\"%s\") = 0 (cleaning up)", path.c_str());
    }
};

/// True if something listens at the address: connect succeeds. A socket file nobody listens on
/// (ECONNREFUSED) was left by a process that died.
inline bool someone_listens(const sockaddr_un& address, socklen_t length) {
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    return probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0;
}

/// socket, bind, listen. A path socket is created 0600 (the umask is narrowed around bind, which
/// takes its mode from it): connecting needs write permission on the file. An abstract name has
/// no file and no permissions: anyone may connect, so the credentials check below matters.
inline UniqueFd listen_on(const std::string& name, bool force, SocketFile& file, const Narrator& say) {
    sockaddr_un address{};
    socklen_t length = make_address(name, address);
    bool abstract = name[0] == '@';
    UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener)
        throw_errno("socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC)");
    auto bind_it = [&] {
        mode_t saved = ::umask(0177);
        int result = ::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), length);
        int saved_errno = errno;
        ::umask(saved);
        errno = saved_errno;
        return result;
    };
    int result = bind_it();
    if (result == -1 && errno == EADDRINUSE && !abstract) {
        if (someone_listens(address, length))
            throw_error(EADDRINUSE, "bind(\"" + name + "\")", "a writer is already listening there");
        if (!force)
            throw_error(EADDRINUSE, "bind(\"" + name + "\")",
                        "a socket file left by a crashed run (nobody listens on it); remove it with 'rm " + name +
                            "', or start the writer with --force");
        if (::unlink(name.c_str()) == 0)
            say.say("--force: unlink(\"%s\") = 0: removed the stale socket file", name.c_str());
        result = bind_it();
    }
    if (result == -1)
        throw_errno("bind(\"" + name + "\")", errno == EADDRINUSE ? "the name is in use" : "");
    if (!abstract)
        file.path = name;
    if (::listen(listener.get(), 4) == -1)
        throw_errno("listen");
    say.say("socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC) = %d, bind(\"%s\")%s, listen = 0", listener.get(), name.c_str(),
            abstract ? " (abstract: no file)" : " (file mode 0600)");
    return listener;
}

/// Accepts one connection, waiting (bounded) for it. SO_PEERCRED gives the peer's pid, uid and
/// gid as the kernel recorded them at connect: a peer of another user is refused.
inline UniqueFd accept_reader(int listener, const Options& options, const char* default_name, const char* reader_program,
                       const Narrator& say) {
    say.say("waiting up to %s for a reader: start %s%s%s", seconds_text(options.timeout_seconds).c_str(),
            reader_program, options.name == default_name ? "" : " --name ",
            options.name == default_name ? "" : options.name.c_str());
    Deadline deadline(options.timeout_seconds);
    for (;;) {
        if (!wait_readable(listener, &deadline))
            throw Failure("no reader connected within " + seconds_text(options.timeout_seconds) +
                          ": start the reader while the writer waits, or give the writer a longer --timeout");
        UniqueFd connection(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
        if (!connection) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            throw_errno("accept4");
        }
        ucred peer{};
        socklen_t size = sizeof peer;
        if (::getsockopt(connection.get(), SOL_SOCKET, SO_PEERCRED, &peer, &size) == -1)
            throw_errno("getsockopt(SO_PEERCRED)");
        if (peer.uid != ::geteuid()) {
            say.say("accept4 = %d: SO_PEERCRED pid=%d uid=%u: another user, refused and closed", connection.get(),
                    peer.pid, peer.uid);
            continue;
        }
        say.say("accept4 = %d; getsockopt(SO_PEERCRED): pid=%d uid=%u gid=%u, the same user", connection.get(), peer.pid,
                peer.uid, peer.gid);
        return connection;
    }
}

/// One writer serves one reader: anyone else who connects meanwhile gets BUSY and is closed.
inline void refuse_others(int listener, const Narrator& say) {
    pollfd entry{listener, POLLIN, 0};
    while (::poll(&entry, 1, 0) == 1) {
        UniqueFd other(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
        if (!other)
            return;
        try {
            send_message(other.get(), kBusy);
        } catch (const SysError&) {
        }
        say.say("another client connected: sent BUSY and closed it");
    }
}

/// Waits for the reader's CONSUMED while answering other clients; a closed socket means the
/// reader died. `deadline` (may be null) bounds the wait.
inline void wait_consumed(int connection, int listener, const Deadline* deadline, const Narrator& say) {
    for (;;) {
        throw_if_stopped();
        pollfd entries[2] = {{connection, POLLIN, 0}, {listener, POLLIN, 0}};
        int ready = ::poll(entries, 2, static_cast<int>(std::chrono::milliseconds(kLivenessInterval).count()));
        if (ready == -1 && errno != EINTR)
            throw_errno("poll");
        if (entries[1].revents != 0)
            refuse_others(listener, say);
        if (entries[0].revents != 0)
            break;
        if (deadline != nullptr && deadline->expired())
            throw Failure("the reader did not confirm within the timeout");
    }
    Message reply{};
    try {
        reply = receive_message(connection, deadline, "the reader's CONSUMED");
    } catch (const Failure& e) {
        throw Failure(std::string("the reader died or misbehaved before the end of the stream: ") + e.what());
    }
    if (reply.type != kConsumed)
        throw Failure(std::string("the reader sent ") + type_name(reply.type) + " instead of CONSUMED");
}

/// Connects, waiting (bounded) while the socket file does not exist (ENOENT) or nobody listens
/// (ECONNREFUSED).
inline UniqueFd connect_to_writer(const std::string& name, const Deadline& deadline, const char* writer_program,
                                  const Narrator& say) {
    sockaddr_un address{};
    socklen_t length = make_address(name, address);
    bool said_waiting = false;
    for (;;) {
        UniqueFd socket_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!socket_fd)
            throw_errno("socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC)");
        if (::connect(socket_fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0) {
            say.say("socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC) = %d, connect(\"%s\") = 0", socket_fd.get(), name.c_str());
            return socket_fd;
        }
        if (errno != ENOENT && errno != ECONNREFUSED)
            throw_errno("connect(\"" + name + "\")",
                        errno == EACCES ? "the socket file or its directory does not let this user connect" : "");
        if (deadline.expired())
            throw_errno("connect(\"" + name + "\")", "nothing listened within " + seconds_text(deadline.seconds()) +
                                                         ": is the writer running? start it first");
        if (!said_waiting)
            say.say("waiting up to %s for a writer: start %s", seconds_text(deadline.seconds()).c_str(), writer_program);
        said_waiting = true;
        pause_briefly(std::chrono::milliseconds(50));
        throw_if_stopped();
    }
}

/// The server's credentials, as the kernel recorded them when it called listen: anyone can bind
/// an abstract name first, so the reader checks who it is talking to. Returns the writer's pid.
inline pid_t check_writer(int socket_fd, const Narrator& say) {
    ucred peer{};
    socklen_t size = sizeof peer;
    if (::getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &peer, &size) == -1)
        throw_errno("getsockopt(SO_PEERCRED)");
    if (peer.uid != ::geteuid())
        throw Failure("the process listening there (pid " + std::to_string(peer.pid) + ") belongs to uid " +
                      std::to_string(peer.uid) + ", not to this user: refusing it");
    say.say("getsockopt(SO_PEERCRED): pid=%d uid=%u gid=%u, the same user", peer.pid, peer.uid, peer.gid);
    return peer.pid;
}

/// If the writer died with its socket file in place, the file is stale: remove it, if it is still
/// a socket and nobody listens on it.
inline void remove_stale_socket(const std::string& name, const Narrator& say) {
    if (name.empty() || name[0] == '@')
        return; // an abstract name vanished with the writer's socket
    sockaddr_un address{};
    socklen_t length = make_address(name, address);
    // A dying process's descriptors are released one after another: our connection may end a
    // moment before its listening socket does. Look for up to a second before calling it stale.
    for (int attempt = 0; attempt < 20; ++attempt) {
        struct stat info {};
        if (::lstat(name.c_str(), &info) == -1 || !S_ISSOCK(info.st_mode))
            return;
        UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!probe)
            return;
        if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), length) == -1) {
            if (errno == ECONNREFUSED && ::unlink(name.c_str()) == 0)
                say.say("unlink(\"%s\") = 0: removed the socket file the dead writer left", name.c_str());
            return;
        }
        pause_briefly(std::chrono::milliseconds(50)); // still listening: gone in a moment, or a new writer
    }
}

} // namespace fdpass
