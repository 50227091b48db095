/// @file fdpass.hpp
/// @brief Passing descriptors over a Unix stream socket, as chapter 04 teaches it call by call,
///        for chapter 05 and later.
///
/// Chapter 04's writer.cpp and reader.cpp make every call themselves (`socket`, `bind`,
/// `listen`, `accept4`, `connect`, `getsockopt(SO_PEERCRED)`, `sendmsg`/`recvmsg` with the
/// `CMSG_*` macros). Later chapters pass descriptors too, and take the same calls from here:
///
/// - unix_address(): a path, or `@name` in the abstract namespace.
/// - listen_unix(): `socket` + `bind` (file mode 0600) + `listen`; a dead run's socket file is
///   reported (or replaced with `--force`), a live one is never touched, and what is not a
///   socket (a planted file, a symbolic link) is never followed nor removed.
/// - accept_unix() and connect_unix(): bounded by a Deadline, never blocking: a listener that
///   never accepts, or whose backlog is full, cannot hang the caller past its `--timeout`.
/// - send_with_fds() / receive_with_fds(): bytes with descriptors attached (`SCM_RIGHTS`); the
///   receiver demands exactly the number of descriptors it expects, refuses `MSG_CTRUNC`, and
///   gets every descriptor close-on-exec (`MSG_CMSG_CLOEXEC`), owned on every path.
/// - peer_credentials(): who is on the other end (`SO_PEERCRED`).
///
/// Every socket made here is non-blocking and close-on-exec; every wait polls in slices of at
/// most kLivenessInterval and checks the stop flag (Ctrl-C).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "error.hpp"
#include "narrate.hpp"
#include "owners.hpp"
#include "wait.hpp"

namespace shmtut {

/// The peer closed (or reset) the connection, or was gone before it spoke: for one side waiting
/// on the other, the other's death. Refusals of what did arrive are plain Failures.
class PeerClosed : public Failure {
public:
    using Failure::Failure;
};

/// Fills `address` for a socket path, or for `@name` in the abstract namespace (the first byte
/// of `sun_path` is zero: no file, gone with the last socket, and no file permissions: check the peer with
/// peer_credentials()). Returns the length to pass to `bind`/`connect`. Throws UsageError when
/// the name does not fit in `sun_path` (107 bytes).
socklen_t unix_address(const std::string& name, sockaddr_un& address);

/// True for `@name`: an abstract socket, with no file.
bool is_abstract(const std::string& name);

/// Removes a path socket's file on every path out of the program (the file outlives the socket
/// otherwise). Set `path` once the file is ours; clear it when the program removed it itself.
struct SocketFile {
    const Narrator& say; ///< narrates a removal on an error path
    std::string path;    ///< empty: nothing to remove (abstract name, or already removed)
    /// Owns nothing until `path` is set.
    explicit SocketFile(const Narrator& narrator) : say(narrator) {}
    SocketFile(const SocketFile&) = delete;
    SocketFile& operator=(const SocketFile&) = delete;
    ~SocketFile();
};

/// What is at a socket name, found without disturbing anyone who listens there.
enum class SocketState {
    kMissing,    ///< nothing at the path (ENOENT), or an abstract name nobody holds
    kListening,  ///< a process listens there (its queue may be full): alive, leave it alone
    kStale,      ///< a socket file nobody listens on (ECONNREFUSED): a dead run's leftover
    kNotASocket, ///< a regular file, a directory, a symbolic link...: never followed nor removed
    kOtherUsers, ///< a socket file of another user: not probed (EACCES), never removed, --force or not
};

/// Looks at `name`: `lstat` (a symbolic link is reported, not followed), then one non-blocking
/// `connect` that is closed at once without a byte sent. A server that serves only clients that
/// ask (chapters 04 and 05) is not disturbed by it: a connection that says nothing is never
/// taken for a reader.
SocketState probe_socket(const std::string& name);

/// After the server died: removes the socket file at `name` if it is still a socket (never
/// through a symbolic link) and nobody listens on it. A dying process's descriptors close one
/// after another, so it looks for up to a second before calling the file stale. Narrates a
/// removal; does nothing for an abstract name.
void remove_if_stale(const std::string& name, const Narrator& say);

/// `socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC)`, `bind` (the umask narrowed to
/// 0177 around it: the file is 0600) and `listen(backlog)`. When the name is taken: a live
/// listener is refused ("a writer is running there", `--force` or not); a stale socket file is
/// reported with the command that removes it, or removed when `force`; anything that is not a
/// socket is refused and left alone. Sets `file.path` for a path socket.
UniqueFd listen_unix(const std::string& name, bool force, int backlog, SocketFile& file, const Narrator& say);

/// Waits (bounded by `deadline`, in one-second slices that check the stop flag) for a
/// connection on `listener` and accepts it with `accept4(SOCK_NONBLOCK|SOCK_CLOEXEC)`. Returns
/// an empty UniqueFd at the deadline. A connection that was aborted before it was accepted is
/// skipped.
UniqueFd accept_unix(int listener, const Deadline& deadline);

/// Accepts one connection if one is waiting, without waiting: an empty UniqueFd otherwise.
UniqueFd accept_waiting(int listener);

/// Clients that connected to a server but have not yet sent their first message: a server that
/// serves only a client that asked never takes a connection that says nothing (another server
/// checking that this one is alive, a port scanner) for a peer. Each client is checked with
/// SO_PEERCRED when accepted: another user's is closed at once. A client that hangs up, or whose
/// first message `check` refuses, is closed. At most 16 wait at once (the oldest goes).
class Callers {
public:
    /// `request_size` bytes make a first message; `check` returns "" for an acceptable one, or
    /// why it is refused.
    Callers(const Narrator& say, std::size_t request_size,
            std::function<std::string(const std::vector<char>& request)> check);
    /// Accepts every connection waiting on `listener`, without waiting.
    void accept_waiting(int listener);
    /// Reads what the clients sent, without waiting; returns the first whose whole first
    /// message `check` accepted (it is no longer a caller), or an empty UniqueFd.
    UniqueFd take_asking();
    /// Adds the callers' descriptors to a poll(2) set.
    void add_to(std::vector<pollfd>& entries) const;

private:
    // Not on the site: Doxygen 1.9.4 would link a "Classes" section for this private struct and
    // not write it.
    /// \cond
    struct Caller {
        UniqueFd socket;
        pid_t pid;
        std::vector<char> request; ///< the bytes received so far
    };
    /// \endcond
    const Narrator& say_;
    std::size_t request_size_;
    std::function<std::string(const std::vector<char>&)> check_;
    std::vector<Caller> callers_;
};

/// Waits, bounded by `deadline`, until a client on `listener` sends an acceptable first message
/// (see Callers), accepting every client meanwhile. Returns an empty UniqueFd at the deadline.
UniqueFd wait_for_asking_client(int listener, Callers& callers, const Deadline& deadline);

/// Connects to `name`, bounded by `deadline`: a non-blocking `connect`, retried every 50 ms
/// while the name does not exist (ENOENT), nobody listens (ECONNREFUSED) or the listener's
/// queue is full (EAGAIN: it listens but does not accept). `on_first_wait` runs once, before the
/// first retry (to narrate "waiting for a writer"). A name that is not a socket (a planted file,
/// a symbolic link: checked with `lstat`, never followed) is refused at once. Throws SysError
/// at the deadline, naming the last error and `hint`.
UniqueFd connect_unix(const std::string& name, const Deadline& deadline, const std::string& hint,
                      const std::function<void()>& on_first_wait);

/// The peer's credentials as the kernel recorded them at `connect` (for the client) or `listen`
/// (for the server): `getsockopt(SOL_SOCKET, SO_PEERCRED)`.
ucred peer_credentials(int socket_fd);

/// Waits until `socket_fd` is readable (data, end of file or an error), bounded by `deadline`
/// if it is not null, else for as long as it takes; one-second slices check the stop flag.
/// Returns false at the deadline.
bool wait_readable(int socket_fd, const Deadline* deadline);

/// Sends all `length` bytes (at least 1: on a stream socket a `sendmsg` without data sends
/// nothing, descriptors included), the descriptors `fds` attached to the first byte
/// (`SCM_RIGHTS`, at most SCM_MAX_FD = 253). MSG_NOSIGNAL: a closed peer throws PeerClosed, not
/// SIGPIPE. Waits for room in the socket buffer while the peer lives (bounded by `deadline` if
/// not null). `what` names the message in errors: "sendmsg(MEMORY)".
void send_with_fds(int socket_fd, const void* data, std::size_t length, const std::vector<int>& fds,
                   const std::string& what, const Deadline* deadline = nullptr);

/// Receives exactly `length` bytes into `data` and, with them, exactly `expected_fds`
/// descriptors, which it returns owned (close-on-exec from the start: `MSG_CMSG_CLOEXEC`).
/// Refuses, with Failure and after closing every descriptor that did arrive: `MSG_CTRUNC` (the
/// kernel dropped descriptors: too many for the control buffer, or the receiver is at its
/// RLIMIT_NOFILE), any other count than `expected_fds`, and descriptors arriving with a later
/// part of the bytes. Throws PeerClosed at end of file (or ECONNRESET) before `length` bytes, and
/// Failure when `deadline` (may be null: wait while the peer lives) passes first.
std::vector<UniqueFd> receive_with_fds(int socket_fd, void* data, std::size_t length, std::size_t expected_fds,
                                       const std::string& what, const Deadline* deadline = nullptr);

} // namespace shmtut
