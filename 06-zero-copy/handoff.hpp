/// @file 06-zero-copy/handoff.hpp
/// @brief The Unix-socket plumbing chapter 04 teaches (socket, bind, listen, accept4, connect,
///        SO_PEERCRED, sendmsg/recvmsg with SCM_RIGHTS), in the small form chapter 06 needs.
///
/// STAND-IN, to be replaced: chapter 04's descriptor passing is moving to `common/fdpass.hpp`;
/// once it is there, chapter 06 uses it and this file goes. Nothing here is chapter 06's lesson:
/// chapter 04 explains every call (the 16 data bytes that must travel with a descriptor,
/// MSG_CTRUNC, MSG_CMSG_CLOEXEC, counting descriptors from cmsg_len, SO_PEERCRED).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.hpp"
#include "narrate.hpp"
#include "owners.hpp"
#include "wait.hpp"

namespace handoff {

using shmtut::Deadline;
using shmtut::Failure;
using shmtut::Narrator;
using shmtut::UniqueFd;

/// `sockaddr_un` for a path, or for `@name` in the abstract namespace. Throws UsageError if the
/// name does not fit.
inline socklen_t make_address(const std::string& name, sockaddr_un& address) {
    address = {};
    address.sun_family = AF_UNIX;
    bool abstract = !name.empty() && name[0] == '@';
    if (name.empty() || (abstract && name.size() < 2))
        throw shmtut::UsageError("--name needs a path, or @ and a name");
    if (name.size() >= sizeof address.sun_path)
        throw shmtut::UsageError("--name is " + std::to_string(name.size()) + " bytes; a socket name has at most " +
                                 std::to_string(sizeof address.sun_path - 1));
    std::memcpy(address.sun_path, name.data(), name.size());
    if (abstract)
        address.sun_path[0] = '\0';
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (abstract ? 0 : 1));
}

/// The peer closed or reset the connection: the peer died (or gave up). Refusals of what did
/// arrive are plain Failures.
class PeerClosed : public Failure {
public:
    using Failure::Failure;
};

/// Removes the socket file on every path (a path socket's file outlives the socket otherwise).
struct SocketFile {
    const Narrator& say; ///< narrates the removal
    std::string path;    ///< empty: nothing to remove
    /// Owns nothing until `path` is set.
    explicit SocketFile(const Narrator& narrator) : say(narrator) {}
    SocketFile(const SocketFile&) = delete;
    SocketFile& operator=(const SocketFile&) = delete;
    ~SocketFile() {
        if (!path.empty() && ::unlink(path.c_str()) == 0)
            say.say("unlink(\"%s\") = 0 (cleaning up)", path.c_str());
    }
};

/// Waits until `fd` is readable, in slices of at most a second that check the stop flag. A
/// deadline (may be null: no bound) limits the wait; returns false when it passes.
inline bool wait_readable(int fd, const Deadline* deadline) {
    for (;;) {
        shmtut::throw_if_stopped();
        auto slice = std::chrono::nanoseconds(shmtut::kLivenessInterval);
        if (deadline != nullptr)
            slice = std::min(deadline->remaining(), slice);
        pollfd entry{fd, POLLIN, 0};
        int ready = ::poll(&entry, 1, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(slice).count()));
        if (ready == -1 && errno != EINTR)
            shmtut::throw_errno("poll(socket)");
        if (ready == 1)
            return true;
        if (deadline != nullptr && deadline->expired())
            return false;
    }
}

/// socket, bind (a path is created 0600: the umask is narrowed around bind), listen. A socket
/// file that nobody listens on was left by a crashed run: refused, or removed with `force`.
inline UniqueFd listen_on(const std::string& name, bool force, SocketFile& file, const Narrator& say) {
    sockaddr_un address{};
    socklen_t length = make_address(name, address);
    bool abstract = name[0] == '@';
    UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener)
        shmtut::throw_errno("socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC)");
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
        UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0)
            shmtut::throw_error(EADDRINUSE, "bind(\"" + name + "\")", "a writer is already listening there");
        if (!force)
            shmtut::throw_error(EADDRINUSE, "bind(\"" + name + "\")",
                                "a socket file left by a crashed run (nobody listens on it); remove it with 'rm " + name +
                                    "', or start the writer with --force");
        if (::unlink(name.c_str()) == 0)
            say.say("--force: unlink(\"%s\") = 0: removed the stale socket file", name.c_str());
        result = bind_it();
    }
    if (result == -1)
        shmtut::throw_errno("bind(\"" + name + "\")");
    if (!abstract)
        file.path = name;
    if (::listen(listener.get(), 4) == -1)
        shmtut::throw_errno("listen");
    say.say("socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC) = %d, bind(\"%s\")%s, listen = 0", listener.get(), name.c_str(),
            abstract ? " (abstract: no file)" : " (file mode 0600)");
    return listener;
}

/// The peer's credentials as the kernel recorded them (SO_PEERCRED); another user is refused.
/// Returns the peer's pid.
inline pid_t check_peer(int socket_fd, const char* peer_role, const Narrator& say) {
    ucred peer{};
    socklen_t size = sizeof peer;
    if (::getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &peer, &size) == -1)
        shmtut::throw_errno("getsockopt(SO_PEERCRED)");
    if (peer.uid != ::geteuid())
        throw Failure(std::string("the ") + peer_role + " (pid " + std::to_string(peer.pid) + ") belongs to uid " +
                      std::to_string(peer.uid) + ", not to this user: refusing it");
    say.say("getsockopt(SO_PEERCRED): %s pid=%d uid=%u, the same user", peer_role, peer.pid, peer.uid);
    return peer.pid;
}

/// Waits, at most until `deadline`, for a client of this user that asks: one that sends an
/// `ask_length`-byte first message that `is_ask` accepts. Every client is accepted meanwhile and
/// waits in a list; one that hangs up or says something else is closed, and one that says
/// nothing is never taken for a reader (another writer checking whether this one is alive, for
/// example: it connects and closes without a word). At most 16 clients wait at once.
inline UniqueFd accept_asking(int listener, const Deadline& deadline, std::size_t ask_length,
                              const std::function<bool(const void*)>& is_ask, const std::string& hint,
                              const Narrator& say) {
    std::vector<UniqueFd> waiting;
    for (;;) {
        shmtut::throw_if_stopped();
        std::vector<pollfd> entries{{listener, POLLIN, 0}};
        for (const UniqueFd& client : waiting)
            entries.push_back({client.get(), POLLIN, 0});
        auto slice = std::min(deadline.remaining(), std::chrono::nanoseconds(shmtut::kLivenessInterval));
        int ready = ::poll(entries.data(), entries.size(),
                           static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(slice).count()));
        if (ready == -1 && errno != EINTR)
            shmtut::throw_errno("poll");
        for (std::size_t i = waiting.size(); ready > 0 && i-- > 0;) {
            if (entries[i + 1].revents == 0)
                continue;
            char first[64] = {};
            // The first message comes in one piece (16 bytes, one send); anything else is refused.
            ssize_t n = ::recv(waiting[i].get(), first, std::min(ask_length, sizeof first), MSG_DONTWAIT);
            if (n == static_cast<ssize_t>(ask_length) && is_ask(first)) {
                UniqueFd asked = std::move(waiting[i]);
                say.say("recv(fd=%d) = %zd: the client asks for the pool", asked.get(), n);
                return asked;
            }
            if (n == -1 && (errno == EAGAIN || errno == EINTR))
                continue;
            waiting.erase(waiting.begin() + static_cast<std::ptrdiff_t>(i)); // hung up, or said something else
        }
        if (ready > 0 && entries[0].revents != 0) {
            UniqueFd connection(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
            if (connection) {
                say.say("accept4 = %d", connection.get());
                try {
                    check_peer(connection.get(), "client", say);
                    if (waiting.size() == 16)
                        waiting.erase(waiting.begin());
                    waiting.push_back(std::move(connection));
                } catch (const Failure& refused) {
                    say.say("%s; closed that connection", refused.what());
                }
            } else if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN) {
                shmtut::throw_errno("accept4");
            }
        }
        if (deadline.expired())
            throw Failure("no reader asked for the pool within " + shmtut::seconds_text(deadline.seconds()) + ": " +
                          hint);
    }
}

/// Connects, waiting (bounded) while the socket file does not exist or nobody listens.
inline UniqueFd connect_to(const std::string& name, const Deadline& deadline, const char* writer_program,
                           const Narrator& say) {
    sockaddr_un address{};
    socklen_t length = make_address(name, address);
    bool said_waiting = false;
    for (;;) {
        UniqueFd socket_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!socket_fd)
            shmtut::throw_errno("socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC)");
        if (::connect(socket_fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0) {
            say.say("socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC) = %d, connect(\"%s\") = 0", socket_fd.get(), name.c_str());
            return socket_fd;
        }
        if (errno != ENOENT && errno != ECONNREFUSED)
            shmtut::throw_errno("connect(\"" + name + "\")");
        if (deadline.expired())
            shmtut::throw_errno("connect(\"" + name + "\")", "nothing listened within " +
                                                                 shmtut::seconds_text(deadline.seconds()) +
                                                                 ": is the writer running? start it first");
        if (!said_waiting)
            say.say("waiting up to %s for a writer: start %s", shmtut::seconds_text(deadline.seconds()).c_str(),
                    writer_program);
        said_waiting = true;
        shmtut::pause_briefly(std::chrono::milliseconds(50));
        shmtut::throw_if_stopped();
    }
}

/// Sends all `length` bytes. MSG_NOSIGNAL: a closed peer is EPIPE (PeerClosed), not SIGPIPE.
inline void send_bytes(int socket_fd, const void* data, std::size_t length) {
    const auto* bytes = static_cast<const char*>(data);
    while (length > 0) {
        ssize_t n = ::send(socket_fd, bytes, length, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE || errno == ECONNRESET)
                throw PeerClosed("send: the peer closed the connection");
            shmtut::throw_errno("send");
        }
        bytes += n;
        length -= static_cast<std::size_t>(n);
    }
}

/// Sends `length` bytes (at least one: on a stream socket a sendmsg without data sends nothing,
/// descriptor included) with `fd` attached, in one sendmsg.
inline void send_with_descriptor(int socket_fd, const void* data, std::size_t length, int fd) {
    iovec iov{const_cast<void*>(data), length};
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        cmsghdr align;
    } control{};
    msghdr header{};
    header.msg_iov = &iov;
    header.msg_iovlen = 1;
    header.msg_control = control.buffer;
    header.msg_controllen = sizeof control.buffer;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&header);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    ssize_t n;
    while ((n = ::sendmsg(socket_fd, &header, MSG_NOSIGNAL)) == -1 && errno == EINTR) {
    }
    if (n == -1)
        shmtut::throw_errno("sendmsg(SCM_RIGHTS)");
    if (static_cast<std::size_t>(n) != length)
        throw Failure("sendmsg(SCM_RIGHTS) sent " + std::to_string(n) + " of " + std::to_string(length) + " bytes");
}

/// What a receive got: every descriptor that arrived, owned, so that every path closes them.
struct Received {
    std::vector<UniqueFd> descriptors; ///< every descriptor that came with the bytes
    bool truncated = false;            ///< MSG_CTRUNC: the kernel dropped descriptors that did not fit
};

/// Receives exactly `length` bytes into `data` (a stream may deliver them in pieces; never reads
/// past them), collecting any descriptors with MSG_CMSG_CLOEXEC. Throws PeerClosed at end of
/// file (or ECONNRESET: a peer that died with unread data) before the last byte. `deadline` (may
/// be null) bounds the wait for each piece.
inline Received receive_exact(int socket_fd, void* data, std::size_t length, const Deadline* deadline, const char* what) {
    Received got;
    auto* bytes = static_cast<char*>(data);
    std::size_t have = 0;
    while (have < length) {
        iovec iov{bytes + have, length - have};
        union {
            char buffer[CMSG_SPACE(sizeof(int))];
            cmsghdr align;
        } control{};
        msghdr header{};
        header.msg_iov = &iov;
        header.msg_iovlen = 1;
        header.msg_control = control.buffer;
        header.msg_controllen = sizeof control.buffer;
        // Try first, wait only when nothing is there: a message that has arrived costs one call.
        ssize_t n = ::recvmsg(socket_fd, &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_readable(socket_fd, deadline))
                throw Failure(std::string("no ") + what + " within the timeout");
            continue;
        }
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && errno != ECONNRESET)
            shmtut::throw_errno("recvmsg");
        if ((header.msg_flags & MSG_CTRUNC) != 0)
            got.truncated = true;
        for (cmsghdr* cmsg = CMSG_FIRSTHDR(&header); n > 0 && cmsg != nullptr; cmsg = CMSG_NXTHDR(&header, cmsg)) {
            if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                continue;
            std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
                got.descriptors.emplace_back(fd);
            }
        }
        if (n <= 0)
            throw PeerClosed(std::string("the peer closed the connection before ") + what);
        have += static_cast<std::size_t>(n);
    }
    return got;
}

/// Receives exactly `length` bytes that must come without any descriptor: one that arrives is
/// closed and refused.
inline void receive_plain(int socket_fd, void* data, std::size_t length, const Deadline* deadline, const char* what) {
    Received got = receive_exact(socket_fd, data, length, deadline, what);
    if (!got.descriptors.empty() || got.truncated)
        throw Failure(std::string("refused: a descriptor came with ") + what + " (closed it)");
}

/// The one descriptor that must have come: refused (all closed) on MSG_CTRUNC or any other count.
inline UniqueFd only_descriptor(Received&& got) {
    if (got.truncated)
        throw Failure("refused: more descriptors arrived than fit (MSG_CTRUNC); closed the " +
                      std::to_string(got.descriptors.size()) + " that did fit");
    if (got.descriptors.size() != 1)
        throw Failure("refused: " + std::to_string(got.descriptors.size()) + " descriptors arrived, expected exactly 1");
    return std::move(got.descriptors.front());
}

/// If the writer died with its socket file in place, the file is stale: remove it, if it is still
/// a socket and nobody listens on it (looking for up to a second: a dying process's descriptors
/// are released one after another).
inline void remove_stale_socket(const std::string& name, const Narrator& say) {
    if (name.empty() || name[0] == '@')
        return;
    sockaddr_un address{};
    socklen_t length = make_address(name, address);
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
        shmtut::pause_briefly(std::chrono::milliseconds(50));
    }
}

} // namespace handoff
