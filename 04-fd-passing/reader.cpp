/// @file 04-fd-passing/reader.cpp
/// @brief Chapter 04 reader: connects to the writer's Unix socket, asks for the memory,
///        receives the memfd itself (`SCM_RIGHTS`), checks everything before trusting it, and
///        copies the stream to stdout.
///
/// Usage: `reader [--name PATH|@NAME] [--timeout SECONDS] [--quiet]`
///
/// Run it with its companion, `writer`, in another terminal (either may start first):
///
///     terminal 1: build/04-fd-passing/writer "hello, descriptor"
///     terminal 2: build/04-fd-passing/reader
///
/// The calls it teaches, in order: `socket(AF_UNIX)` and a non-blocking `connect(2)`, retried
/// until the timeout (the socket may not exist yet, or its writer may accept nobody);
/// `getsockopt(SO_PEERCRED)`, because anyone can listen on an abstract name; `send` of HELLO;
/// `recvmsg(2)` with `MSG_CMSG_CLOEXEC` into a control buffer, then the checks: `MSG_CTRUNC`,
/// the number of descriptors counted from `cmsg_len`, exactly one, the data bytes; then
/// chapter 03's checks (`F_GET_SEALS` before `fstat`) and `mmap`.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

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

const char* const kUsage = R"(Usage: reader [OPTIONS]

Chapter 04, passing a descriptor. Connects to the writer's Unix socket, asks for the
writer's memfd and receives it over the socket (SCM_RIGHTS), checks it, and writes every
byte the writer sends through it to standard output. Waits for a writer that has not
started yet, up to the timeout.

Options:
  --name PATH|@NAME  the writer's socket (default /tmp/shm-tutorial-04.sock)
  --timeout SECONDS  how long to wait for the writer to listen, accept and send the
                     memory (default 60); once the stream runs, the reader waits as long
                     as the writer's connection is open
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the whole stream arrived; 1 a runtime failure (no writer, a refused
descriptor, another reader, the writer died); 2 a usage error.
)";

/// The writer closed the connection (or reset it): it died, or it was never a writer.
class WriterGone : public Failure {
public:
    using Failure::Failure;
};

/// Connects, bounded by the deadline. The socket is non-blocking, so `connect` never blocks:
/// ENOENT (no file yet) and ECONNREFUSED (nobody listens) mean "not started yet", EAGAIN means
/// a process listens but its queue is full (it accepts nobody): all three are retried every
/// 50 ms until the deadline. `connect` follows a symbolic link and `lstat` does not, so a path
/// that is not a socket is refused before connecting (in a sticky directory such as /tmp
/// nobody else can swap this user's socket file between the two calls).
UniqueFd connect_to_writer(const std::string& name, const Deadline& deadline, const Narrator& say) {
    sockaddr_un address{};
    socklen_t length = handoff::socket_address(name, address);
    const std::string socket_call = "socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC)";
    const std::string connect_call = "connect(\"" + name + "\")";
    bool said_waiting = false;
    for (;;) {
        struct stat info {};
        if (!handoff::is_abstract(name) && ::lstat(name.c_str(), &info) == 0 && !S_ISSOCK(info.st_mode))
            throw Failure(name + " is not a socket (" + (S_ISLNK(info.st_mode) ? "a symbolic link" : "a file or directory") +
                          "): not following it; is --name right?");
        UniqueFd connection(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!connection)
            throw_errno(socket_call);
        if (::connect(connection.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0) {
            say.say("%s = %d; %s = 0", socket_call.c_str(), connection.get(), connect_call.c_str());
            return connection;
        }
        const int error = errno;
        if (error == EACCES && !handoff::is_abstract(name)) { // mode 0600: another user's socket?
            struct stat owner {};
            throw_error(error, connect_call,
                        ::lstat(name.c_str(), &owner) == 0 && owner.st_uid != ::geteuid()
                            ? another_users_name("the socket file", name, owner.st_uid)
                            : "the socket file or a directory above it does not let this user connect");
        }
        if (error != ENOENT && error != ECONNREFUSED && error != EAGAIN)
            throw_error(error, connect_call);
        if (deadline.expired())
            throw_error(error, connect_call,
                        error == EAGAIN ? "a process listens there but accepted nobody within " +
                                              seconds_text(deadline.seconds()) + " (its queue stayed full)"
                                        : "nothing listened within " + seconds_text(deadline.seconds()) +
                                              ": is the writer running? start it first");
        if (!said_waiting)
            say.say("waiting up to %s for a writer: start %s", seconds_text(deadline.seconds()).c_str(), sibling_program("writer").c_str());
        said_waiting = true;
        pause_briefly(std::chrono::milliseconds(50));
        throw_if_stopped();
    }
}

/// The writer's credentials, as the kernel recorded them when it called `listen`: anyone can
/// bind an abstract name first, so the reader checks who it talks to. Returns the writer's pid.
pid_t check_writer(int connection, const Narrator& say) {
    ucred peer{};
    socklen_t size = sizeof peer;
    const std::string call = "getsockopt(fd=" + std::to_string(connection) + ", SO_PEERCRED)";
    if (::getsockopt(connection, SOL_SOCKET, SO_PEERCRED, &peer, &size) == -1)
        throw_errno(call);
    if (peer.uid != ::geteuid())
        throw Failure("the process listening there (pid " + std::to_string(peer.pid) + ") belongs to uid " +
                      std::to_string(peer.uid) + ", not to this user: refusing it");
    say.say("%s: pid=%d uid=%u gid=%u, the same user", call.c_str(), peer.pid, peer.uid, peer.gid);
    return peer.pid;
}

/// Sends one message (no descriptor). MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE. The
/// reader sends only after the writer spoke or at the start, so the 16 bytes always fit in the
/// socket buffer of the non-blocking socket.
void send_message(int connection, handoff::Type type) {
    Message message = handoff::make_message(type);
    const std::string call = "send(fd=" + std::to_string(connection) + ", " + handoff::type_name(type) + ")";
    ssize_t sent;
    while ((sent = ::send(connection, &message, sizeof message, MSG_NOSIGNAL)) == -1 && errno == EINTR)
        throw_if_stopped();
    if (sent == -1 && (errno == EPIPE || errno == ECONNRESET))
        throw WriterGone(call + ": the writer closed the connection");
    if (sent == -1)
        throw_errno(call);
    if (sent != static_cast<ssize_t>(sizeof message))
        throw Failure(call + " sent " + std::to_string(sent) + " of 16 bytes");
}

/// One message and whatever descriptors came with it, each owned at once so that every path
/// closes them.
struct Received {
    Message message{};
    std::vector<UniqueFd> descriptors;
};

/// Receives one whole 16-byte message with `recvmsg(2)`, the other half of the writer's
/// `sendmsg(2)`: what the writer attached as SCM_RIGHTS arrives in the control buffer, as new
/// descriptors of this process. The control buffer has room for one
/// descriptor: `CMSG_SPACE(sizeof(int))`, 24 bytes on 64-bit Linux, which (alignment) holds two.
/// With MSG_CMSG_CLOEXEC every received descriptor is close-on-exec from the start, with no
/// window. Refused: MSG_CTRUNC (the kernel dropped descriptors: more than fit, or this process
/// is at its RLIMIT_NOFILE), a descriptor with a later piece of the message, a wrong magic or
/// version. A stream socket may deliver the 16 bytes in pieces: each recvmsg asks for the rest
/// of this message only. `deadline` (may be null: as long as the writer lives) bounds the wait.
Received receive_message(int connection, const Deadline* deadline, const char* what) {
    const std::string recvmsg_call = "recvmsg(fd=" + std::to_string(connection) + ", MSG_CMSG_CLOEXEC)";
    Received got;
    std::size_t have = 0;
    while (have < sizeof got.message) {
        throw_if_stopped();
        auto slice = deadline != nullptr ? std::min(deadline->remaining(), std::chrono::nanoseconds(kLivenessInterval))
                                         : std::chrono::nanoseconds(kLivenessInterval);
        pollfd entry{connection, POLLIN, 0};
        int ready = ::poll(&entry, 1, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(slice).count()));
        if (ready == -1 && errno != EINTR)
            throw_errno("poll");
        if (ready != 1) {
            if (deadline != nullptr && deadline->expired())
                throw Failure("nothing came within " + seconds_text(deadline->seconds()) + " (waiting for " + what +
                              "): the process listening there accepted but sent nothing (is it a writer?)");
            continue;
        }
        iovec data{reinterpret_cast<char*>(&got.message) + have, sizeof got.message - have};
        union {
            char buffer[CMSG_SPACE(sizeof(int))];
            cmsghdr align;
        } control{};
        msghdr header{};
        header.msg_iov = &data;
        header.msg_iovlen = 1;
        header.msg_control = control.buffer;
        header.msg_controllen = sizeof control.buffer;
        ssize_t n = ::recvmsg(connection, &header, MSG_CMSG_CLOEXEC);
        if (n == -1 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n == 0 || (n == -1 && errno == ECONNRESET)) // a peer that died with unread data resets
            throw WriterGone(std::string("the writer closed the connection before ") + what);
        if (n == -1)
            throw_errno(recvmsg_call);
        // Own every descriptor first, whatever else is wrong: counted from cmsg_len, not
        // assumed to be one.
        const std::size_t before = got.descriptors.size();
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
        if ((header.msg_flags & MSG_CTRUNC) != 0)
            throw Failure(std::string("refused ") + what + ": descriptors were dropped (MSG_CTRUNC: more than fit, or "
                          "this process is at its RLIMIT_NOFILE, ulimit -n); closed the " +
                          std::to_string(got.descriptors.size()) + " that arrived");
        if (have > 0 && got.descriptors.size() != before)
            throw Failure(std::string("refused ") + what + ": a descriptor came with a later piece of it; closed it");
        have += static_cast<std::size_t>(n);
    }
    if (std::string problem = handoff::framing_problem(got.message); !problem.empty())
        throw Failure(std::string("refused ") + what + ": " + problem);
    return got;
}

/// Asks for the memory and receives it: a MEMORY message with exactly one descriptor.
UniqueFd receive_memory(int connection, const Deadline& deadline, const Narrator& say) {
    send_message(connection, handoff::kHello);
    say.say("send(fd=%d, HELLO) = 16: asked for the memory", connection);
    Received got = receive_message(connection, &deadline, "the memory");
    if (got.message.type == handoff::kBusy)
        throw Failure("another reader is already being served by this writer: one writer serves one reader");
    if (got.message.type != handoff::kMemory)
        throw Failure(std::string("refused: the writer sent ") + handoff::type_name(got.message.type) +
                      " instead of MEMORY");
    if (got.descriptors.size() != 1)
        throw Failure("refused: MEMORY came with " + std::to_string(got.descriptors.size()) +
                      " descriptors, expected exactly 1; closed them");
    say.say("recvmsg(fd=%d, MSG_CMSG_CLOEXEC) = 16: MEMORY, 1 descriptor (SCM_RIGHTS), no MSG_CTRUNC: fd %d",
            connection, got.descriptors.front().get());
    return std::move(got.descriptors.front());
}

/// If the writer died with its socket file in place, the file is stale: remove it, if it is
/// still a socket (`lstat`: never through a symbolic link) and nobody listens on it. A dying
/// process's descriptors are closed one after another: the connection may end a moment before
/// the listener, so look for up to a second. Each probe is a non-blocking connect, closed at
/// once without a byte: a new writer there would not take it for a reader.
void remove_stale_socket(const std::string& name, const Narrator& say) {
    if (handoff::is_abstract(name))
        return; // an abstract name vanished with the writer's socket
    sockaddr_un address{};
    socklen_t length = handoff::socket_address(name, address);
    for (int attempt = 0; attempt < 20; ++attempt) {
        struct stat info {};
        if (::lstat(name.c_str(), &info) == -1 || !S_ISSOCK(info.st_mode))
            return;
        UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!probe)
            return;
        if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), length) == -1 && errno == ECONNREFUSED) {
            if (::unlink(name.c_str()) == 0)
                say.say("unlink(\"%s\") = 0: removed the socket file the dead writer left", name.c_str());
            return;
        }
        pause_briefly(std::chrono::milliseconds(50)); // still listening: gone in a moment, or a new writer
    }
}

int run(const Options& options) {
    Narrator say("reader", options.quiet);
    install_stop_handlers();
    Deadline deadline(options.timeout_seconds);

    UniqueFd connection = connect_to_writer(options.name, deadline, say);
    pid_t writer_pid = check_writer(connection.get(), say);

    UniqueFd memory;
    try {
        memory = receive_memory(connection.get(), deadline, say);
    } catch (const WriterGone& e) {
        remove_stale_socket(options.name, say);
        throw Failure("the writer (pid " + std::to_string(writer_pid) + ") closed the connection without sending the "
                      "memory: it died, or it is not a writer (" + e.what() + ")");
    }
    // Trust order: seals first, then the size (once F_SEAL_SHRINK|F_SEAL_GROW are in place the
    // size cannot change), then what it is; see common/seals.hpp.
    const std::size_t size = mappable_size(check_sealed_memfd(memory.get(), F_SEAL_SHRINK | F_SEAL_GROW, kHeaderSize, say));

    // Read-only: in this chapter the reader writes nothing into the memory; the socket carries
    // its replies.
    const std::string mmap_call = "mmap(NULL, " + std::to_string(size) + ", PROT_READ, MAP_SHARED, fd=" +
                                  std::to_string(memory.get()) + ", 0)";
    void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, memory.get(), 0);
    if (base == MAP_FAILED)
        throw_errno(mmap_call);
    Mapping mapping(base, size);
    say.say("%s = %p", mmap_call.c_str(), base);
    memory.reset(); // the mapping keeps the memory alive

    HeaderSnapshot header = take_snapshot(*static_cast<const SharedHeader*>(base));
    validate_header(header, size);
    // The header's writer_pid is not compared with SO_PEERCRED's: the connection is the proof
    // of who sent the memory, and the header's number is the writer's pid in its own pid
    // namespace, which is another number (or 0, invisible) in a reader started in another
    // namespace (a container, unshare --pid). Comparing them would refuse a genuine writer there.
    const std::uint64_t capacity = header.data_capacity; // our copy: checked once, then used
    say.say("header valid: magic=0x%08x version=%u data_capacity=%llu", header.magic, header.version,
            static_cast<unsigned long long>(capacity));

    std::uint64_t blocks = 0, total = 0;
    try {
        for (;;) {
            Received got = receive_message(connection.get(), nullptr, "the next message");
            if (!got.descriptors.empty())
                throw Failure(std::string("refused: a descriptor came with ") + handoff::type_name(got.message.type) +
                              "; closed it");
            const Message& message = got.message; // our own copy: the writer cannot change it
            if (message.type == handoff::kEnd) {
                send_message(connection.get(), handoff::kConsumed);
                say.say("recv(END); send(CONSUMED): %llu bytes in %llu block(s), confirmed",
                        static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks));
                return kExitSuccess;
            }
            if (message.type != handoff::kBlock)
                throw Failure(std::string("refused: unexpected ") + handoff::type_name(message.type) + " message");
            if (message.length > capacity)
                throw LayoutError("block refused: length " + std::to_string(message.length) +
                                  " exceeds the data capacity " + std::to_string(capacity));
            write_all(STDOUT_FILENO, data_area(base), message.length);
            send_message(connection.get(), handoff::kConsumed);
            total += message.length;
            if (++blocks == 1)
                say.say("recv(BLOCK, %llu bytes); send(CONSUMED) (further blocks quietly)",
                        static_cast<unsigned long long>(message.length));
        }
    } catch (const WriterGone& e) { // a refusal of what arrived is not a death
        remove_stale_socket(options.name, say);
        throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died before the end of the stream (" +
                      e.what() + ")");
    }
}

} // namespace

/// Parses the command line and runs the reader; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("reader", [&] {
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = handoff::kDefaultName;
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        sockaddr_un check{};
        handoff::socket_address(options.name, check);
        return run(options);
    });
}
