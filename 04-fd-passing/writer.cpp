/// @file 04-fd-passing/writer.cpp
/// @brief Chapter 04 writer: creates a sealed memfd and hands the descriptor itself to the
///        reader that asks for it on a Unix socket (`SCM_RIGHTS`); the socket then carries the
///        hand-off of each block.
///
/// Usage: `writer [--name PATH|@NAME] [--timeout SECONDS] [--quiet] [--force] [MESSAGE...]`
///
/// Run it with its companion, `reader`, in a second terminal:
///
///     terminal 1: build/04-fd-passing/writer "hello, descriptor"
///     terminal 2: build/04-fd-passing/reader
///
/// The calls it teaches, in order: `memfd_create(2)`, `ftruncate`, `mmap` and `F_ADD_SEALS` as in
/// chapter 03; `socket(AF_UNIX, SOCK_STREAM)`, `bind(2)` (a path, created 0600, or an
/// `@abstract` name), `listen(2)`, `accept4(2)`; `getsockopt(SO_PEERCRED)` to see who
/// connected; `recv` of the reader's HELLO; one `sendmsg(2)` with 16 bytes of data and an
/// `SCM_RIGHTS` control message that carries the memfd; then one BLOCK message per block and a
/// CONSUMED reply for each. Every socket is non-blocking and every wait a bounded `poll(2)`.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "protocol.hpp"
#include "seals.hpp"
#include "stream.hpp"
#include "wait.hpp"

using namespace shmtut;
using handoff::Message;

namespace {

const char* const kUsage = R"(Usage: writer [OPTIONS] [MESSAGE...]

Chapter 04, passing a descriptor. Creates a sealed memfd, listens on a Unix socket, and
hands the memfd itself to the reader that asks for it (SCM_RIGHTS); then sends each
MESSAGE, followed by a newline, through the memory; with no MESSAGE, standard input until
end of file. Start the reader in another terminal:
    build/04-fd-passing/reader

Options:
  --name PATH|@NAME  the socket: a file path (default /tmp/shm-tutorial-04.sock), or
                     @NAME for the abstract namespace (no file at all)
  --timeout SECONDS  how long to wait for a reader to ask, and for its confirmation at
                     the end (default 60)
  --force            replace a socket file left by a crashed run (never a live writer's)
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage error.
)";

/// How many connections may wait in the kernel's queue before the writer accepts them.
constexpr int kBacklog = 8;
/// How many connected clients may be waited on at once before they ask; beyond that the
/// oldest is closed, so silent connections cannot pile up.
constexpr std::size_t kMaxCallers = 16;

/// A sealed memfd with a published header, as chapter 03 makes it.
UniqueFd create_memory(Mapping& mapping, const Narrator& say) {
    UniqueFd memory(::memfd_create("shm-tutorial-04", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL));
    if (!memory && errno == EINVAL) // a kernel before 6.3
        memory.reset(::memfd_create("shm-tutorial-04", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!memory)
        throw_errno("memfd_create(\"shm-tutorial-04\")");
    const std::size_t size = kHeaderSize + kDefaultDataCapacity;
    if (::ftruncate(memory.get(), static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate");
    if (int error = ::posix_fallocate(memory.get(), 0, static_cast<off_t>(size)); error != 0)
        throw_error(error, "posix_fallocate");
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memory.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap");
    mapping = Mapping(base, size);
    if (::fcntl(memory.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == -1)
        throw_errno("fcntl(F_ADD_SEALS)");
    int seals = ::fcntl(memory.get(), F_GET_SEALS);
    if (seals == -1)
        throw_errno("fcntl(F_GET_SEALS)");
    publish_header(*construct_header(base), kDefaultDataCapacity, static_cast<std::uint32_t>(::getpid()), 0);
    say.say("memfd_create(\"shm-tutorial-04\") = %d, %zu bytes; fcntl(F_GET_SEALS) = %s; header published",
            memory.get(), size, seals_text(seals).c_str());
    return memory;
}

/// Removes the socket file on every path out of the writer: the file outlives the socket. The
/// lesson's own unlink is in run(), at the end of a good run; this is the safety net for errors.
struct SocketFile {
    const Narrator& say; ///< narrates the removal
    std::string path;    ///< empty: nothing to remove (abstract name, or already removed)
    explicit SocketFile(const Narrator& narrator) : say(narrator) {}
    SocketFile(const SocketFile&) = delete;
    SocketFile& operator=(const SocketFile&) = delete;
    ~SocketFile() {
        if (!path.empty() && ::unlink(path.c_str()) == 0)
            say.say("unlink(\"%s\") = 0 (cleaning up)", path.c_str());
    }
};

/// What is at the socket path, looked at without disturbing anyone: `lstat` (a symbolic link is
/// seen as one, never followed), then a non-blocking `connect`, closed at once without a byte
/// sent. A writer takes only a client that asks (HELLO) for its reader, so this probe cannot
/// steal a live writer's reader. EAGAIN: someone listens, with a full queue. A socket file of
/// another user is not looked into: this user may not connect to it (EACCES) nor remove it from
/// a sticky directory such as /tmp, and whether that user's writer lives is not ours to judge.
enum class AtPath { kNothing, kLiveListener, kStaleSocket, kNotASocket, kOtherUsers };
AtPath look_at(const std::string& name, const sockaddr_un& address, socklen_t length) {
    struct stat info {};
    if (::lstat(name.c_str(), &info) == -1)
        return errno == ENOENT ? AtPath::kNothing : AtPath::kNotASocket;
    if (!S_ISSOCK(info.st_mode))
        return AtPath::kNotASocket;
    if (info.st_uid != ::geteuid())
        return AtPath::kOtherUsers;
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!probe)
        throw_errno("socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC)");
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0 || errno == EAGAIN)
        return AtPath::kLiveListener;
    return errno == ECONNREFUSED ? AtPath::kStaleSocket : AtPath::kNothing;
}

/// bind(2) with the umask narrowed to 0177 around it: bind takes the socket file's mode from
/// the umask, and connecting needs write permission on the file, so only this user can connect.
int bind_0600(int listener, const sockaddr_un& address, socklen_t length) {
    mode_t saved = ::umask(0177);
    int result = ::bind(listener, reinterpret_cast<const sockaddr*>(&address), length);
    int saved_errno = errno;
    ::umask(saved);
    errno = saved_errno;
    return result;
}

/// socket, bind, listen. A name in use is looked at (look_at()): a live writer is never
/// replaced, `--force` or not; a stale file from a dead run is reported, or removed with
/// `--force`; a planted file or symbolic link is left alone.
UniqueFd listen_on(const std::string& name, bool force, SocketFile& file, const Narrator& say) {
    sockaddr_un address{};
    socklen_t length = handoff::socket_address(name, address);
    const std::string socket_call = "socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC)";
    UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listener)
        throw_errno(socket_call);
    say.say("%s = %d", socket_call.c_str(), listener.get());

    const std::string bind_call = "bind(fd=" + std::to_string(listener.get()) + ", \"" + name + "\")";
    int bound = bind_0600(listener.get(), address, length);
    if (bound == -1 && errno == EADDRINUSE && handoff::is_abstract(name))
        throw_errno(bind_call, "another process holds this abstract name: a writer is running there");
    if (bound == -1 && errno == EADDRINUSE) {
        switch (look_at(name, address, length)) {
        case AtPath::kLiveListener:
            throw_error(EADDRINUSE, bind_call, "a writer is running there (it listens); --force replaces only a dead "
                                               "run's socket file: wait for it, or use another --name");
        case AtPath::kNotASocket:
            throw_error(EADDRINUSE, bind_call, "the path exists and is not a socket (a file, a directory or a "
                                               "symbolic link): not following it, not removing it");
        case AtPath::kOtherUsers: {
            struct stat info {};
            const uid_t owner = ::lstat(name.c_str(), &info) == 0 ? info.st_uid : static_cast<uid_t>(-1);
            throw_error(EADDRINUSE, bind_call, "not connecting to it, not removing it, --force or not: " +
                                                   another_users_name("the socket file there", name, owner));
        }
        case AtPath::kStaleSocket:
            if (!force)
                throw_error(EADDRINUSE, bind_call, "a socket file left by a crashed run (nobody listens on it); "
                                                   "remove it with: rm " + name + " (or start the writer with --force)");
            if (::unlink(name.c_str()) == -1)
                throw_errno("unlink(\"" + name + "\")");
            say.say("--force: nobody listens on %s: unlink = 0, the stale socket file is gone", name.c_str());
            break;
        case AtPath::kNothing: // removed meanwhile: bind again
            break;
        }
        bound = bind_0600(listener.get(), address, length);
    }
    if (bound == -1)
        throw_errno(bind_call);
    if (!handoff::is_abstract(name))
        file.path = name;
    say.say("%s = 0%s", bind_call.c_str(), handoff::is_abstract(name) ? " (abstract: no file)" : " (file mode 0600)");

    const std::string listen_call = "listen(fd=" + std::to_string(listener.get()) + ", " + std::to_string(kBacklog) + ")";
    if (::listen(listener.get(), kBacklog) == -1)
        throw_errno(listen_call);
    say.say("%s = 0", listen_call.c_str());
    return listener;
}

/// Clients that have connected but not yet asked. Only a HELLO makes a client a reader: a
/// connection that says nothing (another writer checking that this one is alive, a port
/// scanner) is never taken for one, and one that hangs up is simply forgotten.
class Callers {
public:
    explicit Callers(const Narrator& say) : say_(say) {}

    /// Accepts every connection waiting on `listener` (non-blocking: EAGAIN ends the round) and
    /// checks who it is: SO_PEERCRED gives the pid, uid and gid the kernel recorded at
    /// `connect`. A client of another user is closed at once.
    void accept_waiting(int listener) {
        for (;;) {
            UniqueFd client(::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
            if (!client) {
                if (errno == EINTR || errno == ECONNABORTED)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                throw_errno("accept4(fd=" + std::to_string(listener) + ", SOCK_NONBLOCK|SOCK_CLOEXEC)");
            }
            ucred peer{};
            socklen_t size = sizeof peer;
            const std::string peercred_call = "getsockopt(fd=" + std::to_string(client.get()) + ", SO_PEERCRED)";
            if (::getsockopt(client.get(), SOL_SOCKET, SO_PEERCRED, &peer, &size) == -1)
                throw_errno(peercred_call);
            if (peer.uid != ::geteuid()) {
                say_.say("accept4 = %d; %s: pid=%d uid=%u: another user, closed", client.get(), peercred_call.c_str(),
                         peer.pid, peer.uid);
                continue;
            }
            say_.say("accept4 = %d; %s: pid=%d uid=%u gid=%u, the same user; waiting for it to ask (HELLO)",
                     client.get(), peercred_call.c_str(), peer.pid, peer.uid, peer.gid);
            if (callers_.size() == kMaxCallers)
                callers_.erase(callers_.begin()); // the oldest silent one goes
            callers_.push_back(Caller{std::move(client), peer.pid, {}, 0});
        }
    }

    /// Reads what the clients sent, without waiting; returns the first that completed a valid
    /// HELLO (no longer a caller), or an empty UniqueFd. A client that hangs up, sends anything
    /// else or speaks another protocol version is closed.
    UniqueFd take_asking() {
        for (auto caller = callers_.begin(); caller != callers_.end();) {
            ssize_t n = ::recv(caller->socket.get(), reinterpret_cast<char*>(&caller->hello) + caller->have,
                               sizeof(Message) - caller->have, MSG_DONTWAIT);
            if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                ++caller;
                continue;
            }
            std::string why;
            if (n <= 0)
                why = "hung up without asking: not a reader";
            else if ((caller->have += static_cast<std::size_t>(n)) < sizeof(Message)) {
                ++caller;
                continue;
            } else if (std::string problem = handoff::framing_problem(caller->hello); !problem.empty())
                why = "sent a message that is refused: " + problem;
            else if (caller->hello.type != handoff::kHello)
                why = std::string("sent ") + handoff::type_name(caller->hello.type) + " instead of HELLO";
            else {
                say_.say("recv(fd=%d) = 16: HELLO from pid %d: this client is a reader", caller->socket.get(),
                         caller->pid);
                UniqueFd asking = std::move(caller->socket);
                callers_.erase(caller);
                return asking;
            }
            say_.say("client pid %d %s; closed it", caller->pid, why.c_str());
            caller = callers_.erase(caller);
        }
        return UniqueFd();
    }

    /// One writer serves one reader: answers every other client that asks with BUSY, and closes it.
    void refuse_asking(int listener) {
        accept_waiting(listener);
        while (UniqueFd other = take_asking()) {
            Message busy = handoff::make_message(handoff::kBusy);
            ssize_t sent = ::send(other.get(), &busy, sizeof busy, MSG_NOSIGNAL | MSG_DONTWAIT);
            say_.say("send(fd=%d, BUSY) = %zd: one writer serves one reader; closed it", other.get(), sent);
        }
    }

    /// The descriptors to poll: the clients that have not asked yet.
    void add_to(std::vector<pollfd>& entries) const {
        for (const Caller& caller : callers_)
            entries.push_back({caller.socket.get(), POLLIN, 0});
    }

private:
    struct Caller {
        UniqueFd socket;
        pid_t pid;
        Message hello;     // the bytes received so far
        std::size_t have;  // how many
    };
    const Narrator& say_;
    std::vector<Caller> callers_;
};

/// Waits (bounded by `--timeout`) until a client of this user asks for the memory, accepting
/// and listening to every client meanwhile.
UniqueFd wait_for_reader(int listener, Callers& callers, const Options& options, const Narrator& say) {
    const bool default_name = options.name == handoff::kDefaultName;
    say.say("waiting up to %s for a reader: start %s%s%s",
            seconds_text(options.timeout_seconds).c_str(), sibling_program("reader").c_str(), default_name ? "" : " --name ",
            default_name ? "" : options.name.c_str());
    Deadline deadline(options.timeout_seconds);
    for (;;) {
        throw_if_stopped();
        std::vector<pollfd> entries{{listener, POLLIN, 0}};
        callers.add_to(entries);
        auto slice = std::min(deadline.remaining(), std::chrono::nanoseconds(kLivenessInterval));
        int ready = ::poll(entries.data(), entries.size(),
                           static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(slice).count()));
        if (ready == -1 && errno != EINTR)
            throw_errno("poll");
        callers.accept_waiting(listener);
        if (UniqueFd reader = callers.take_asking())
            return reader;
        if (deadline.expired())
            throw Failure("no reader asked within " + seconds_text(options.timeout_seconds) +
                          ": start the reader while the writer waits, or give the writer a longer --timeout");
    }
}

/// The hand-over: one sendmsg(2) with 16 bytes of data (MEMORY) and one SCM_RIGHTS control
/// message carrying the memfd. The data bytes are required: on a stream socket a sendmsg with no
/// data sends nothing, descriptor included. The control buffer is built the portable way: a
/// union aligns it for `cmsghdr`, CMSG_SPACE sizes it, CMSG_FIRSTHDR, CMSG_LEN and CMSG_DATA
/// fill it. The reader has only just asked and reads nothing else, so the 16 bytes fit in the
/// socket buffer at once (EAGAIN would mean a broken peer: refused).
void send_memory(int reader, int memory, const Narrator& say) {
    Message message = handoff::make_message(handoff::kMemory);
    iovec data{&message, sizeof message};
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
    std::memcpy(CMSG_DATA(cmsg), &memory, sizeof memory);

    const std::string call = "sendmsg(fd=" + std::to_string(reader) + ", MEMORY + SCM_RIGHTS [" +
                             std::to_string(memory) + "])";
    ssize_t sent;
    while ((sent = ::sendmsg(reader, &header, MSG_NOSIGNAL)) == -1 && errno == EINTR)
        throw_if_stopped();
    if (sent == -1)
        throw_errno(call, errno == EPIPE || errno == ECONNRESET ? "the reader hung up" : "");
    if (sent != static_cast<ssize_t>(sizeof message))
        throw Failure(call + " sent " + std::to_string(sent) + " of 16 bytes");
    say.say("%s = 16: the memfd is on its way", call.c_str());
}

/// Sends one message without a descriptor. MSG_NOSIGNAL: a reader that closed the connection is
/// EPIPE, not SIGPIPE.
void send_message(int reader, handoff::Type type, std::uint64_t length = 0) {
    Message message = handoff::make_message(type, length);
    ssize_t sent;
    while ((sent = ::send(reader, &message, sizeof message, MSG_NOSIGNAL)) == -1 && errno == EINTR)
        throw_if_stopped();
    if (sent == -1 && (errno == EPIPE || errno == ECONNRESET))
        throw Failure(std::string("send(") + handoff::type_name(type) + "): " + reader_hung_up("before the end of the stream"));
    if (sent == -1)
        throw_errno(std::string("send(") + handoff::type_name(type) + ")");
    if (sent != static_cast<ssize_t>(sizeof message)) // 16 bytes after a CONSUMED: the buffer is empty
        throw Failure(std::string("send(") + handoff::type_name(type) + ") sent " + std::to_string(sent) + " of 16 bytes");
}

/// Waits for the reader's CONSUMED, answering other clients meanwhile; end of file means the
/// reader closed the connection (reader_hung_up()). `deadline` (may be null: as long as the
/// connection is open) bounds the wait.
void wait_consumed(int reader, int listener, Callers& callers, const Deadline* deadline) {
    Message reply{};
    std::size_t have = 0;
    while (have < sizeof reply) {
        throw_if_stopped();
        std::vector<pollfd> entries{{reader, POLLIN, 0}, {listener, POLLIN, 0}};
        callers.add_to(entries);
        if (::poll(entries.data(), entries.size(), static_cast<int>(std::chrono::milliseconds(kLivenessInterval).count())) == -1 &&
            errno != EINTR)
            throw_errno("poll");
        callers.refuse_asking(listener);
        ssize_t n = ::recv(reader, reinterpret_cast<char*>(&reply) + have, sizeof reply - have, MSG_DONTWAIT);
        if (n == 0 || (n == -1 && errno == ECONNRESET))
            throw Failure(reader_hung_up("before the end of the stream"));
        if (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            throw_errno("recv(CONSUMED)");
        if (n > 0)
            have += static_cast<std::size_t>(n);
        else if (deadline != nullptr && deadline->expired())
            throw Failure("the reader did not confirm within " + seconds_text(deadline->seconds()));
    }
    if (std::string problem = handoff::framing_problem(reply); !problem.empty())
        throw Failure("the reader's reply is refused: " + problem);
    if (reply.type != handoff::kConsumed)
        throw Failure(std::string("the reader sent ") + handoff::type_name(reply.type) + " instead of CONSUMED");
}

int run(const Options& options) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    SocketFile file(say);

    Mapping mapping;
    UniqueFd memory = create_memory(mapping, say);
    UniqueFd listener = listen_on(options.name, options.force, file, say);
    Callers callers(say);
    UniqueFd reader = wait_for_reader(listener.get(), callers, options, say);
    send_memory(reader.get(), memory.get(), say);
    // The reader has its own descriptor now (a new number, the same memory); ours can go.
    memory.reset();

    Input input(options.operands);
    std::uint8_t* data = data_area(mapping.get());
    std::uint64_t blocks = 0, total = 0;
    // While the writer waits for its input (a keyboard, a slow pipe), poll(2) watches the
    // reader's connection and the listener together with standard input: the reader's death
    // (end of file on the connection) is seen at once, and clients that ask meanwhile get BUSY.
    const std::vector<int> watched = {reader.get(), listener.get()};
    auto reader_alive = [&] {
        callers.refuse_asking(listener.get());
        pollfd entry{reader.get(), POLLIN | POLLRDHUP, 0};
        if (::poll(&entry, 1, 0) != 1)
            return true;
        if ((entry.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0)
            throw Failure(reader_hung_up("while the writer waited for input") + "; cleaned up");
        throw Failure("the reader sent something out of turn (while no block was pending): refusing it");
    };
    for (;;) {
        std::size_t length = input.next(data, kDefaultDataCapacity, reader_alive, watched);
        if (length == 0)
            break;
        send_message(reader.get(), handoff::kBlock, length);
        if (++blocks == 1)
            say.say("send(BLOCK, %zu bytes) (each further block goes the same way, quietly)", length);
        total += length;
        wait_consumed(reader.get(), listener.get(), callers, nullptr);
    }
    send_message(reader.get(), handoff::kEnd);
    say.say("%llu bytes sent in %llu block(s); send(END); waiting up to %s for the reader to confirm",
            static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks),
            seconds_text(options.timeout_seconds).c_str());
    Deadline deadline(options.timeout_seconds);
    wait_consumed(reader.get(), listener.get(), callers, &deadline);
    say.say("the reader confirmed the end of the stream");

    // The socket file outlives the socket: remove it now, or the next writer finds it in its way.
    if (!file.path.empty()) {
        const std::string unlink_call = "unlink(\"" + file.path + "\")";
        if (::unlink(file.path.c_str()) == -1)
            throw_errno(unlink_call);
        say.say("%s = 0: the socket file is gone", unlink_call.c_str());
        file.path.clear();
    }
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the writer; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("writer", [&] {
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = handoff::kDefaultName;
        spec.operands = true;
        bool force = false;
        spec.extra.push_back({"--force", false, [&](const std::string&) { force = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        sockaddr_un check{};
        handoff::socket_address(options.name, check); // a usage error if it does not fit
        options.force = force;
        return run(options);
    });
}
