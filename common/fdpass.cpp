/// @file fdpass.cpp
/// @brief Implementation of the descriptor-passing helpers (chapter 04 teaches each call).
#include "fdpass.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include "options.hpp"

namespace shmtut {

namespace {

/// One poll of `fd` for `events`, at most one second (or what is left of `deadline`).
/// Returns the revents, 0 when the slice ended first.
short poll_slice(int fd, short events, const Deadline* deadline) {
    throw_if_stopped();
    auto slice = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline != nullptr ? std::min(deadline->remaining(), std::chrono::nanoseconds(kLivenessInterval))
                            : std::chrono::nanoseconds(kLivenessInterval));
    pollfd entry{fd, events, 0};
    int ready = ::poll(&entry, 1, static_cast<int>(slice.count()));
    if (ready == -1 && errno != EINTR)
        throw_errno("poll");
    return ready == 1 ? entry.revents : 0;
}

UniqueFd new_socket() {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd)
        throw_errno("socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC)");
    return fd;
}

/// The control buffer for up to `count` descriptors, aligned for cmsghdr.
struct ControlBuffer {
    std::vector<cmsghdr> storage; // cmsghdr-sized units: aligned for the header
    explicit ControlBuffer(std::size_t count)
        : storage(CMSG_SPACE(sizeof(int) * count) / sizeof(cmsghdr) + 1) {}
    void* data() { return storage.data(); }
    std::size_t size(std::size_t count) const { return CMSG_SPACE(sizeof(int) * count); }
};

} // namespace

bool is_abstract(const std::string& name) {
    return !name.empty() && name[0] == '@';
}

socklen_t unix_address(const std::string& name, sockaddr_un& address) {
    address = {};
    address.sun_family = AF_UNIX;
    if (name.empty())
        throw UsageError("--name must not be empty");
    if (is_abstract(name) && name.size() < 2)
        throw UsageError("--name @ needs a name after the @");
    if (name.size() >= sizeof address.sun_path)
        throw UsageError("--name is " + std::to_string(name.size()) + " bytes; a socket name has at most " +
                         std::to_string(sizeof address.sun_path - 1));
    std::memcpy(address.sun_path, name.data(), name.size());
    if (is_abstract(name))
        address.sun_path[0] = '\0';
    // An abstract name's length is exact (no terminating zero); a path's includes the zero.
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (is_abstract(name) ? 0 : 1));
}

SocketFile::~SocketFile() {
    if (!path.empty() && ::unlink(path.c_str()) == 0)
        say.say("unlink(\"%s\") = 0 (cleaning up)", path.c_str());
}

namespace {
/// The owner of the file at `name` (never through a symbolic link), or `(uid_t)-1`.
uid_t socket_file_owner(const std::string& name) {
    struct stat info {};
    return ::lstat(name.c_str(), &info) == 0 ? info.st_uid : static_cast<uid_t>(-1);
}
} // namespace

SocketState probe_socket(const std::string& name) {
    if (!is_abstract(name)) {
        struct stat info {};
        if (::lstat(name.c_str(), &info) == -1)
            return errno == ENOENT ? SocketState::kMissing : SocketState::kNotASocket;
        if (!S_ISSOCK(info.st_mode))
            return SocketState::kNotASocket;
        if (info.st_uid != ::geteuid()) // not ours to judge alive or dead, nor to remove
            return SocketState::kOtherUsers;
    }
    sockaddr_un address{};
    socklen_t length = unix_address(name, address);
    UniqueFd probe = new_socket();
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0 || errno == EAGAIN)
        return SocketState::kListening; // EAGAIN: it listens, its queue is full
    if (errno == ECONNREFUSED)
        return SocketState::kStale;
    return errno == ENOENT ? SocketState::kMissing : SocketState::kNotASocket;
}

void remove_if_stale(const std::string& name, const Narrator& say) {
    if (is_abstract(name))
        return; // an abstract name vanished with the server's socket
    for (int attempt = 0; attempt < 20; ++attempt) {
        switch (probe_socket(name)) {
        case SocketState::kStale:
            if (::unlink(name.c_str()) == 0)
                say.say("unlink(\"%s\") = 0: removed the socket file the dead writer left", name.c_str());
            return;
        case SocketState::kListening: // still listening: gone in a moment, or a new server
            pause_briefly(std::chrono::milliseconds(50));
            break;
        default:
            return;
        }
    }
}

UniqueFd listen_unix(const std::string& name, bool force, int backlog, SocketFile& file, const Narrator& say) {
    sockaddr_un address{};
    socklen_t length = unix_address(name, address);
    UniqueFd listener = new_socket();
    auto bind_0600 = [&] {
        mode_t saved = ::umask(0177); // bind(2) takes the file's mode from the umask
        int result = ::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), length);
        int saved_errno = errno;
        ::umask(saved);
        errno = saved_errno;
        return result;
    };
    const std::string call = "bind(\"" + name + "\")";
    if (bind_0600() == -1) {
        if (errno != EADDRINUSE)
            throw_errno(call);
        if (is_abstract(name)) // no file to be stale: a live process holds the name
            throw_errno(call, "another process holds this abstract name: a writer is running there");
        switch (probe_socket(name)) {
        case SocketState::kListening:
            throw_error(EADDRINUSE, call, "a writer is running there (a process listens on it); --force does not "
                                          "replace a live writer: wait for it, or use another --name");
        case SocketState::kNotASocket:
            throw_error(EADDRINUSE, call, "the path exists and is not a socket (a file, a directory or a symbolic "
                                          "link): not following it, not removing it; choose another --name");
        case SocketState::kOtherUsers: // not connected to, not removed, --force or not
            throw_error(EADDRINUSE, call,
                        "not connecting to it, not removing it, --force or not: " +
                            another_users_name("the socket file there", name, socket_file_owner(name)));
        case SocketState::kMissing: // gone meanwhile: try once more below
            break;
        case SocketState::kStale:
            if (!force)
                throw_error(EADDRINUSE, call, "a socket file left by a crashed run (nobody listens on it); remove it "
                                              "with: rm " + name + " (or start the writer with --force)");
            if (::unlink(name.c_str()) == -1)
                throw_errno("unlink(\"" + name + "\")");
            say.say("--force: unlink(\"%s\") = 0: removed the stale socket file", name.c_str());
            break;
        }
        if (bind_0600() == -1)
            throw_errno(call);
    }
    if (!is_abstract(name))
        file.path = name;
    if (::listen(listener.get(), backlog) == -1)
        throw_errno("listen(backlog=" + std::to_string(backlog) + ")");
    return listener;
}

UniqueFd accept_waiting(int listener) {
    for (;;) {
        UniqueFd connection(::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (connection)
            return connection;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return UniqueFd();
        if (errno != EINTR && errno != ECONNABORTED)
            throw_errno("accept4");
    }
}

UniqueFd accept_unix(int listener, const Deadline& deadline) {
    for (;;) {
        if (poll_slice(listener, POLLIN, &deadline) != 0) {
            if (UniqueFd connection = accept_waiting(listener))
                return connection;
        }
        if (deadline.expired())
            return UniqueFd();
    }
}

Callers::Callers(const Narrator& say, std::size_t request_size,
                 std::function<std::string(const std::vector<char>& request)> check)
    : say_(say), request_size_(request_size), check_(std::move(check)) {}

void Callers::accept_waiting(int listener) {
    while (UniqueFd client = shmtut::accept_waiting(listener)) {
        ucred peer = peer_credentials(client.get());
        if (peer.uid != ::geteuid()) {
            say_.say("accept4 = %d; SO_PEERCRED: pid=%d uid=%u: another user, closed", client.get(), peer.pid,
                     peer.uid);
            continue;
        }
        say_.say("accept4 = %d; SO_PEERCRED: pid=%d uid=%u gid=%u, the same user; waiting for it to ask", client.get(),
                 peer.pid, peer.uid, peer.gid);
        if (callers_.size() == 16)
            callers_.erase(callers_.begin());
        callers_.push_back(Caller{std::move(client), peer.pid, {}});
    }
}

UniqueFd Callers::take_asking() {
    for (auto caller = callers_.begin(); caller != callers_.end();) {
        std::size_t have = caller->request.size();
        caller->request.resize(request_size_);
        // recv, not recvmsg: a first message carries no descriptor, and the kernel closes any
        // that came with it when there is no control buffer to put them in.
        ssize_t n = ::recv(caller->socket.get(), caller->request.data() + have, request_size_ - have, MSG_DONTWAIT);
        caller->request.resize(have + (n > 0 ? static_cast<std::size_t>(n) : 0));
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            ++caller;
            continue;
        }
        if (n > 0 && caller->request.size() < request_size_) {
            ++caller;
            continue;
        }
        std::string why = n <= 0 ? "hung up without asking" : check_(caller->request);
        if (why.empty()) {
            say_.say("recv(fd=%d) = %zu bytes: pid %d asked", caller->socket.get(), request_size_, caller->pid);
            UniqueFd asking = std::move(caller->socket);
            callers_.erase(caller);
            return asking;
        }
        say_.say("client pid %d %s; closed it", caller->pid, why.c_str());
        caller = callers_.erase(caller);
    }
    return UniqueFd();
}

void Callers::add_to(std::vector<pollfd>& entries) const {
    for (const Caller& caller : callers_)
        entries.push_back({caller.socket.get(), POLLIN, 0});
}

UniqueFd wait_for_asking_client(int listener, Callers& callers, const Deadline& deadline) {
    for (;;) {
        throw_if_stopped();
        std::vector<pollfd> entries{{listener, POLLIN, 0}};
        callers.add_to(entries);
        auto slice = std::min(deadline.remaining(), std::chrono::nanoseconds(kLivenessInterval));
        if (::poll(entries.data(), entries.size(),
                   static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(slice).count())) == -1 &&
            errno != EINTR)
            throw_errno("poll");
        callers.accept_waiting(listener);
        if (UniqueFd client = callers.take_asking())
            return client;
        if (deadline.expired())
            return UniqueFd();
    }
}

UniqueFd connect_unix(const std::string& name, const Deadline& deadline, const std::string& hint,
                      const std::function<void()>& on_first_wait) {
    sockaddr_un address{};
    socklen_t length = unix_address(name, address);
    const std::string call = "connect(\"" + name + "\")";
    bool waited = false;
    for (;;) {
        if (!is_abstract(name)) {
            // connect(2) follows a symbolic link; lstat does not. (In a sticky directory such as
            // /tmp nobody else can replace this user's socket file between the two calls.)
            struct stat info {};
            if (::lstat(name.c_str(), &info) == 0 && !S_ISSOCK(info.st_mode))
                throw Failure(name + " is not a socket (" +
                              (S_ISLNK(info.st_mode) ? "a symbolic link" : "a file or directory") +
                              "): not following it; is --name right?");
        }
        UniqueFd socket_fd = new_socket();
        if (::connect(socket_fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0)
            return socket_fd;
        int error = errno;
        if (error == EACCES && !is_abstract(name)) {
            const uid_t owner = socket_file_owner(name);
            throw_error(error, call, owner != static_cast<uid_t>(-1) && owner != ::geteuid()
                                         ? another_users_name("the socket file", name, owner)
                                         : "the socket file or a directory above it does not let this user connect");
        }
        if (error != ENOENT && error != ECONNREFUSED && error != EAGAIN)
            throw_error(error, call);
        if (deadline.expired())
            throw_error(error, call,
                        error == EAGAIN ? "a process listens there but accepted nobody within " +
                                              seconds_text(deadline.seconds()) + " (its queue is full)"
                                        : "nothing listened within " + seconds_text(deadline.seconds()) + ": " + hint);
        if (!waited && on_first_wait)
            on_first_wait();
        waited = true;
        pause_briefly(std::chrono::milliseconds(50));
        throw_if_stopped();
    }
}

ucred peer_credentials(int socket_fd) {
    ucred peer{};
    socklen_t size = sizeof peer;
    if (::getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &peer, &size) == -1)
        throw_errno("getsockopt(SO_PEERCRED)");
    return peer;
}

bool wait_readable(int socket_fd, const Deadline* deadline) {
    for (;;) {
        if (poll_slice(socket_fd, POLLIN, deadline) != 0)
            return true;
        if (deadline != nullptr && deadline->expired())
            return false;
    }
}

void send_with_fds(int socket_fd, const void* data, std::size_t length, const std::vector<int>& fds,
                   const std::string& what, const Deadline* deadline) {
    if (length == 0)
        throw Failure(what + ": no data byte to carry the descriptors (a stream socket would send nothing)");
    const auto* bytes = static_cast<const char*>(data);
    std::size_t sent = 0;
    ControlBuffer control(fds.size());
    while (sent < length) {
        iovec part{const_cast<char*>(bytes + sent), length - sent};
        msghdr header{};
        header.msg_iov = &part;
        header.msg_iovlen = 1;
        if (sent == 0 && !fds.empty()) { // the descriptors travel with the first byte
            header.msg_control = control.data();
            header.msg_controllen = control.size(fds.size());
            cmsghdr* cmsg = CMSG_FIRSTHDR(&header);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
            std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
        }
        ssize_t n = ::sendmsg(socket_fd, &header, MSG_NOSIGNAL);
        if (n >= 0) {
            sent += static_cast<std::size_t>(n);
            continue;
        }
        if (errno == EPIPE || errno == ECONNRESET)
            throw PeerClosed(what + ": the peer closed the connection");
        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
            throw_errno(what);
        if (errno != EINTR && poll_slice(socket_fd, POLLOUT, deadline) == 0 && deadline != nullptr &&
            deadline->expired())
            throw Failure(what + ": the peer read nothing within " + seconds_text(deadline->seconds()));
    }
}

std::vector<UniqueFd> receive_with_fds(int socket_fd, void* data, std::size_t length, std::size_t expected_fds,
                                       const std::string& what, const Deadline* deadline) {
    std::vector<UniqueFd> received;
    auto* bytes = static_cast<char*>(data);
    std::size_t have = 0;
    // Room for one descriptor more than expected: a peer that sends too many is then seen
    // (counted and refused) rather than only truncated.
    ControlBuffer control(expected_fds + 1);
    while (have < length) {
        if (!wait_readable(socket_fd, deadline))
            throw Failure("no " + what + " within " + seconds_text(deadline->seconds()));
        iovec part{bytes + have, length - have}; // never past this message
        msghdr header{};
        header.msg_iov = &part;
        header.msg_iovlen = 1;
        header.msg_control = control.data();
        header.msg_controllen = control.size(expected_fds + 1);
        ssize_t n = ::recvmsg(socket_fd, &header, MSG_CMSG_CLOEXEC);
        if (n == -1 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n == -1 && errno != ECONNRESET) // a peer that died with unread data resets: end of file
            throw_errno("recvmsg(" + what + ")");
        std::size_t before = received.size();
        // Own every descriptor first, whatever else is wrong: counted from cmsg_len.
        if (n > 0) {
            for (cmsghdr* cmsg = CMSG_FIRSTHDR(&header); cmsg != nullptr; cmsg = CMSG_NXTHDR(&header, cmsg)) {
                if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                    continue;
                std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (std::size_t i = 0; i < count; ++i) {
                    int fd;
                    std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
                    received.emplace_back(fd);
                }
            }
        }
        if (n <= 0)
            throw PeerClosed("the peer closed the connection before " + what);
        if ((header.msg_flags & MSG_CTRUNC) != 0)
            throw Failure("refused " + what + ": descriptors were dropped (MSG_CTRUNC: more than expected, or this "
                          "process is at its RLIMIT_NOFILE); closed the " + std::to_string(received.size()) +
                          " that arrived");
        if (have > 0 && received.size() != before)
            throw Failure("refused " + what + ": a descriptor arrived with a later part of the message; closed it");
        have += static_cast<std::size_t>(n);
    }
    if (received.size() != expected_fds)
        throw Failure("refused " + what + ": it came with " + std::to_string(received.size()) + " descriptor(s), "
                      "expected exactly " + std::to_string(expected_fds) + "; closed them");
    return received;
}

} // namespace shmtut
