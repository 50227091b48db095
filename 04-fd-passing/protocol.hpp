/// @file 04-fd-passing/protocol.hpp
/// @brief Chapter 04: what the writer and the reader agree on: where the socket is, and the
///        16-byte messages they exchange on it.
///
/// Every message is 16 bytes, integers little-endian (x86 and arm64 both are):
///
/// | offset | size | field   | meaning |
/// |-------:|-----:|---------|---------|
/// | 0      | 4    | magic   | the bytes `S` `H` `M` `4` |
/// | 4      | 2    | version | 2 (kProtocolVersion) |
/// | 6      | 2    | type    | 1 HELLO, 2 MEMORY, 3 BLOCK, 4 END, 5 CONSUMED, 6 BUSY |
/// | 8      | 8    | length  | BLOCK: bytes in the data area; otherwise 0 |
///
/// The conversation: the reader speaks first (HELLO: "I am a reader, give me the memory"); the
/// writer answers MEMORY with exactly one descriptor attached (the sealed memfd); then for each
/// block writer → BLOCK, reader → CONSUMED; finally writer → END, reader → CONSUMED (the
/// confirmation). A client that says nothing is never taken for a reader, so another process
/// may connect to check that the writer is alive without disturbing it. A writer that already
/// serves a reader answers another HELLO with BUSY and closes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include <sys/socket.h>
#include <sys/un.h>

#include "error.hpp"

namespace handoff {

/// The default `--name`: a socket file. `@NAME` means the abstract namespace instead.
inline constexpr const char* kDefaultName = "/tmp/shm-tutorial-04.sock";

/// True for `@NAME`: an abstract socket, with no file.
inline bool is_abstract(const std::string& name) {
    return !name.empty() && name[0] == '@';
}

/// Fills `address` for a socket path, or for `@NAME` in the abstract namespace: the first byte of
/// `sun_path` is zero, there is no file, the name is gone with the last socket, and there are no file
/// permissions either (anyone may connect: both sides check SO_PEERCRED). Returns the length to
/// pass to `bind` and `connect`: a path's includes its terminating zero, an abstract name's is
/// exact. Throws UsageError when the name does not fit in `sun_path` (107 bytes).
inline socklen_t socket_address(const std::string& name, sockaddr_un& address) {
    address = {};
    address.sun_family = AF_UNIX;
    if (name.empty() || name == "@")
        throw shmtut::UsageError("--name needs a path, or @ and a name");
    if (name.size() >= sizeof address.sun_path)
        throw shmtut::UsageError("--name is " + std::to_string(name.size()) + " bytes; a socket name has at most " +
                                 std::to_string(sizeof address.sun_path - 1));
    std::memcpy(address.sun_path, name.data(), name.size());
    if (is_abstract(name))
        address.sun_path[0] = '\0';
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (is_abstract(name) ? 0 : 1));
}

/// The first four bytes of every message: "SHM4" in memory.
inline constexpr std::uint32_t kMagic = 0x344d4853;

/// This protocol's version. Version 1 (the writer spoke first) is gone: a writer then took any
/// connection for its reader, including another writer's probe.
inline constexpr std::uint16_t kProtocolVersion = 2;

/// Message types, and who sends each.
enum Type : std::uint16_t {
    kHello = 1,    ///< reader: asks for the memory
    kMemory = 2,   ///< writer: carries the memfd (SCM_RIGHTS)
    kBlock = 3,    ///< writer: a block of `length` bytes is in the data area
    kEnd = 4,      ///< writer: end of the stream
    kConsumed = 5, ///< reader: done with the block (or with END: the confirmation)
    kBusy = 6,     ///< writer: another reader is being served; the connection closes
};

/// One message on the wire.
struct Message {
    std::uint32_t magic;   ///< kMagic
    std::uint16_t version; ///< kProtocolVersion
    std::uint16_t type;    ///< a Type
    std::uint64_t length;  ///< BLOCK: bytes in the data area
};
static_assert(sizeof(Message) == 16, "the wire format is 16 bytes");

/// A message of this protocol.
inline Message make_message(Type type, std::uint64_t length = 0) {
    return Message{kMagic, kProtocolVersion, type, length};
}

/// The name of a message type, for narration and errors.
inline const char* type_name(std::uint16_t type) {
    switch (type) {
    case kHello: return "HELLO";
    case kMemory: return "MEMORY";
    case kBlock: return "BLOCK";
    case kEnd: return "END";
    case kConsumed: return "CONSUMED";
    case kBusy: return "BUSY";
    default: return "an unknown type";
    }
}

/// What is wrong with a received message's magic or version, or "" when both are right.
inline std::string framing_problem(const Message& message) {
    if (message.magic != kMagic)
        return "it does not start with SHM4 (not this protocol)";
    if (message.version != kProtocolVersion)
        return "protocol version " + std::to_string(message.version) + ", this program speaks version " +
               std::to_string(kProtocolVersion);
    return "";
}

} // namespace handoff
