/// @file 04-fd-passing/writer.cpp
/// @brief Chapter 04 writer: creates a sealed memfd and hands the descriptor itself to any
///        reader that connects to its Unix socket (`SCM_RIGHTS`); the socket then carries the
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
/// chapter 03; `socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`, `bind(2)` (a path, created 0600, or
/// an `@abstract` name), `listen(2)`, `accept4(2)`; `getsockopt(SO_PEERCRED)` to see who
/// connected; one `sendmsg(2)` with 16 bytes of data and an `SCM_RIGHTS` control message that
/// carries the memfd; then one BLOCK message per block and a CONSUMED reply for each.
#include <cerrno>
#include <cstdio>
#include <string>

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

namespace {

const char* const kUsage = R"(Usage: writer [OPTIONS] [MESSAGE...]

Chapter 04, passing a descriptor. Creates a sealed memfd, listens on a Unix socket, and
hands the memfd itself to the reader that connects (SCM_RIGHTS); then sends each MESSAGE,
followed by a newline, through the memory; with no MESSAGE, standard input until end of
file. Start the reader in another terminal:
    build/04-fd-passing/reader

Options:
  --name PATH|@NAME  the socket: a file path (default /tmp/shm-tutorial-04.sock), or
                     @NAME for the abstract namespace (no file at all)
  --timeout SECONDS  how long to wait for a reader to connect, and for its confirmation
                     at the end (default 60)
  --force            replace a socket file left by a crashed run
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the reader confirmed the whole stream; 1 a runtime failure; 2 a usage error.
)";

/// Removes the socket file on every path (a path socket's file outlives the socket otherwise).
struct SocketFile {
    const Narrator& say;
    std::string path; ///< empty: nothing to remove (abstract name, or already removed)
    explicit SocketFile(const Narrator& n) : say(n) {}
    SocketFile(const SocketFile&) = delete;
    SocketFile& operator=(const SocketFile&) = delete;
    ~SocketFile() {
        if (!path.empty() && ::unlink(path.c_str()) == 0)
            say.say("unlink(\"%s\") = 0 (cleaning up)", path.c_str());
    }
};

/// A sealed memfd with a published header, as chapter 03 makes it.
UniqueFd create_memory(Mapping& mapping, const Narrator& say) {
    UniqueFd fd(::memfd_create("shm-tutorial-04", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL));
    if (!fd && errno == EINVAL) // a kernel before 6.3
        fd.reset(::memfd_create("shm-tutorial-04", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd)
        throw_errno("memfd_create(\"shm-tutorial-04\")");
    const std::size_t size = kHeaderSize + kDefaultDataCapacity;
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate");
    if (int error = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(size)); error != 0)
        throw_error(error, "posix_fallocate");
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap");
    mapping = Mapping(base, size);
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == -1)
        throw_errno("fcntl(F_ADD_SEALS)");
    publish_header(*construct_header(base), kDefaultDataCapacity, static_cast<std::uint32_t>(::getpid()), 0);
    say.say("memfd_create(\"shm-tutorial-04\") = %d, %zu bytes, sealed %s, header published", fd.get(), size,
            seals_text(::fcntl(fd.get(), F_GET_SEALS)).c_str());
    return fd;
}

/// True if something listens at the address: connect succeeds. A socket file nobody listens on
/// (ECONNREFUSED) was left by a process that died.
bool someone_listens(const sockaddr_un& address, socklen_t length) {
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    return probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0;
}

/// socket, bind, listen. A path socket is created 0600 (the umask is narrowed around bind, which
/// takes its mode from it): connecting needs write permission on the file. An abstract name has
/// no file and no permissions: anyone may connect, so the credentials check below matters.
UniqueFd listen_on(const std::string& name, bool force, SocketFile& file, const Narrator& say) {
    sockaddr_un address{};
    socklen_t length = fdpass::make_address(name, address);
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
UniqueFd accept_reader(int listener, const Options& options, const Narrator& say) {
    say.say("waiting up to %s for a reader: start build/04-fd-passing/reader%s%s",
            seconds_text(options.timeout_seconds).c_str(), options.name == fdpass::kDefaultName ? "" : " --name ",
            options.name == fdpass::kDefaultName ? "" : options.name.c_str());
    Deadline deadline(options.timeout_seconds);
    for (;;) {
        if (!fdpass::wait_readable(listener, &deadline))
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
void refuse_others(int listener, const Narrator& say) {
    pollfd entry{listener, POLLIN, 0};
    while (::poll(&entry, 1, 0) == 1) {
        UniqueFd other(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
        if (!other)
            return;
        try {
            fdpass::send_message(other.get(), fdpass::kBusy);
        } catch (const SysError&) {
        }
        say.say("another client connected: sent BUSY and closed it");
    }
}

/// Waits for the reader's CONSUMED while answering other clients; a closed socket means the
/// reader died. `deadline` (may be null) bounds the wait.
void wait_consumed(int connection, int listener, const Deadline* deadline, const Narrator& say) {
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
    fdpass::Message reply{};
    try {
        reply = fdpass::receive_message(connection, deadline, "the reader's CONSUMED");
    } catch (const Failure& e) {
        throw Failure(std::string("the reader died or misbehaved before the end of the stream: ") + e.what());
    }
    if (reply.type != fdpass::kConsumed)
        throw Failure(std::string("the reader sent ") + fdpass::type_name(reply.type) + " instead of CONSUMED");
}

int run(const Options& options) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    SocketFile file(say);

    Mapping mapping;
    UniqueFd memory = create_memory(mapping, say);
    UniqueFd listener = listen_on(options.name, options.force, file, say);
    UniqueFd connection = accept_reader(listener.get(), options, say);

    // The hand-over: 16 bytes of data that say what the descriptor is, and the descriptor.
    fdpass::send_descriptor(connection.get(), fdpass::Message{fdpass::kMagic, fdpass::kHello, 0}, memory.get());
    say.say("sendmsg(fd=%d, HELLO + SCM_RIGHTS [%d]) = 16: the memfd is on its way", connection.get(), memory.get());
    // The reader has its own descriptor now (a new number, the same memory); ours can go.
    memory.reset();

    Input input(options.operands);
    std::uint8_t* data = data_area(mapping.get());
    std::uint64_t blocks = 0, total = 0;
    int conn = connection.get(), listen_fd = listener.get();
    for (;;) {
        std::size_t length = input.next(data, kDefaultDataCapacity, [&] {
            refuse_others(listen_fd, say);
            pollfd entry{conn, POLLIN | POLLRDHUP, 0};
            return !(::poll(&entry, 1, 0) == 1 && (entry.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0);
        });
        if (length == 0)
            break;
        fdpass::send_message(conn, fdpass::kBlock, length);
        if (++blocks == 1)
            say.say("send(BLOCK, %zu bytes) (each further block goes the same way, quietly)", length);
        total += length;
        wait_consumed(conn, listen_fd, nullptr, say);
    }
    fdpass::send_message(conn, fdpass::kEnd);
    say.say("%llu bytes sent in %llu block(s); send(END); waiting up to %s for the reader to confirm",
            static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks),
            seconds_text(options.timeout_seconds).c_str());
    Deadline deadline(options.timeout_seconds);
    wait_consumed(conn, listen_fd, &deadline, say);
    say.say("the reader confirmed the end of the stream");

    if (!file.path.empty()) {
        if (::unlink(file.path.c_str()) == -1)
            throw_errno("unlink(\"" + file.path + "\")");
        say.say("unlink(\"%s\") = 0: the socket file is gone", file.path.c_str());
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
        spec.default_name = fdpass::kDefaultName;
        spec.operands = true;
        bool force = false;
        spec.extra.push_back({"--force", false, [&](const std::string&) { force = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        sockaddr_un check{};
        fdpass::make_address(options.name, check); // a usage error if it does not fit
        options.force = force;
        return run(options);
    });
}
