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

int run(const Options& options) {
    Narrator say("writer", options.quiet);
    install_stop_handlers();
    fdpass::SocketFile file(say);

    Mapping mapping;
    UniqueFd memory = create_memory(mapping, say);
    UniqueFd listener = fdpass::listen_on(options.name, options.force, file, say);
    UniqueFd connection = fdpass::accept_reader(listener.get(), options, fdpass::kDefaultName, "build/04-fd-passing/reader", say);

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
            fdpass::refuse_others(listen_fd, say);
            pollfd entry{conn, POLLIN | POLLRDHUP, 0};
            return !(::poll(&entry, 1, 0) == 1 && (entry.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0);
        });
        if (length == 0)
            break;
        fdpass::send_message(conn, fdpass::kBlock, length);
        if (++blocks == 1)
            say.say("send(BLOCK, %zu bytes) (each further block goes the same way, quietly)", length);
        total += length;
        fdpass::wait_consumed(conn, listen_fd, nullptr, say);
    }
    fdpass::send_message(conn, fdpass::kEnd);
    say.say("%llu bytes sent in %llu block(s); send(END); waiting up to %s for the reader to confirm",
            static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks),
            seconds_text(options.timeout_seconds).c_str());
    Deadline deadline(options.timeout_seconds);
    fdpass::wait_consumed(conn, listen_fd, &deadline, say);
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
