/// @file 04-fd-passing/reader.cpp
/// @brief Chapter 04 reader: connects to the writer's Unix socket, receives the memfd itself
///        (`SCM_RIGHTS`), checks everything before trusting it, and copies the stream to stdout.
///
/// Usage: `reader [--name PATH|@NAME] [--timeout SECONDS] [--quiet]`
///
/// Run it with its companion, `writer`, in another terminal (either may start first):
///
///     terminal 1: build/04-fd-passing/writer "hello, descriptor"
///     terminal 2: build/04-fd-passing/reader
///
/// The calls it teaches, in order: `socket(AF_UNIX)` and `connect(2)` (waiting, bounded, for the
/// socket to appear); `getsockopt(SO_PEERCRED)`, because anyone can listen on an abstract name;
/// `recvmsg(2)` with `MSG_CMSG_CLOEXEC` into a control buffer, then the checks: `MSG_CTRUNC`,
/// the number of descriptors counted from `cmsg_len`, exactly one, the data bytes; then
/// chapter 03's `fstat` + `F_GET_SEALS` checks and `mmap`.
#include <cerrno>
#include <cstdio>
#include <string>

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

const char* const kUsage = R"(Usage: reader [OPTIONS]

Chapter 04, passing a descriptor. Connects to the writer's Unix socket, receives the
writer's memfd over it (SCM_RIGHTS), checks it, and writes every byte the writer sends
through it to standard output. Waits for a writer that has not started yet, up to the
timeout.

Options:
  --name PATH|@NAME  the writer's socket (default /tmp/shm-tutorial-04.sock)
  --timeout SECONDS  how long to wait for the socket to appear and for the memory to
                     arrive (default 60); once the stream runs, the reader waits as long
                     as the writer's connection is open
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the whole stream arrived; 1 a runtime failure (no writer, a refused
descriptor, another reader, the writer died); 2 a usage error.
)";

int run(const Options& options) {
    Narrator say("reader", options.quiet);
    install_stop_handlers();
    Deadline deadline(options.timeout_seconds);

    UniqueFd connection = fdpass::connect_to_writer(options.name, deadline, "build/04-fd-passing/writer", say);
    pid_t writer_pid = fdpass::check_writer(connection.get(), say);

    UniqueFd memory;
    try {
        memory = fdpass::receive_descriptor(connection.get(), deadline);
    } catch (const fdpass::PeerClosed& e) {
        fdpass::remove_stale_socket(options.name, say);
        throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died before the stream started (" + e.what() +
                      ")");
    }
    say.say("recvmsg(fd=%d, MSG_CMSG_CLOEXEC) = 16: HELLO, 1 descriptor (SCM_RIGHTS), no MSG_CTRUNC: fd %d",
            connection.get(), memory.get());
    std::uint64_t size = check_sealed_memfd(memory.get(), F_SEAL_SHRINK | F_SEAL_GROW, kHeaderSize, say);

    // Read-only: in this chapter the reader writes nothing into the memory; the socket carries
    // its replies.
    void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, memory.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(PROT_READ, MAP_SHARED)");
    Mapping mapping(base, size);
    say.say("mmap(NULL, %llu, PROT_READ, MAP_SHARED, fd=%d, 0) = %p", static_cast<unsigned long long>(size),
            memory.get(), base);
    memory.reset();

    HeaderSnapshot header = take_snapshot(*static_cast<const SharedHeader*>(base));
    validate_header(header, size);
    if (static_cast<pid_t>(header.writer_pid) != writer_pid)
        throw Failure("the header names writer pid " + std::to_string(header.writer_pid) + ", but pid " +
                      std::to_string(writer_pid) + " sent it: refusing it");
    const std::uint64_t capacity = header.data_capacity;
    say.say("header valid: magic=0x%08x version=%u data_capacity=%llu", header.magic, header.version,
            static_cast<unsigned long long>(capacity));

    std::uint64_t blocks = 0, total = 0;
    try {
        for (;;) {
            fdpass::Message message = fdpass::receive_message(connection.get(), nullptr, "the next message");
            if (message.type == fdpass::kEnd) {
                fdpass::send_message(connection.get(), fdpass::kConsumed);
                say.say("recv(END); send(CONSUMED): %llu bytes in %llu block(s), confirmed",
                        static_cast<unsigned long long>(total), static_cast<unsigned long long>(blocks));
                return kExitSuccess;
            }
            if (message.type != fdpass::kBlock)
                throw Failure(std::string("refused: unexpected ") + fdpass::type_name(message.type) + " message");
            if (message.length > capacity) // the message is our own copy: checked once, then used
                throw LayoutError("block refused: length " + std::to_string(message.length) + " exceeds the data capacity " +
                                  std::to_string(capacity));
            write_all(STDOUT_FILENO, data_area(base), message.length);
            fdpass::send_message(connection.get(), fdpass::kConsumed);
            total += message.length;
            if (++blocks == 1)
                say.say("recv(BLOCK, %llu bytes); send(CONSUMED) (further blocks quietly)",
                        static_cast<unsigned long long>(message.length));
        }
    } catch (const fdpass::PeerClosed& e) { // a refusal of what arrived is not a death
        fdpass::remove_stale_socket(options.name, say);
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
        spec.default_name = fdpass::kDefaultName;
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        sockaddr_un check{};
        fdpass::make_address(options.name, check);
        return run(options);
    });
}
