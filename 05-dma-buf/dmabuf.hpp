/// @file 05-dma-buf/dmabuf.hpp
/// @brief Chapter 05: what both programs need to know about dma-buf: where the devices are, how
///        to say that this machine lacks them, and the CPU-access bracket `DMA_BUF_IOCTL_SYNC`.
///
/// The socket protocol is chapter 04's, byte for byte (its notes have the table), so that a
/// chapter 04 writer and a chapter 05 reader can talk: the reader asks (HELLO), the writer
/// answers MEMORY with one descriptor, now a dma-buf, then BLOCK / CONSUMED per block and END /
/// CONSUMED. The socket calls themselves come from `common/fdpass.hpp`, which chapter 04 taught.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include <linux/dma-buf.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "error.hpp"
#include "wait.hpp"

namespace dmabuf {

/// Chapter 04's 16-byte message: "SHM4", version 2, a type, a length.
struct Message {
    std::uint32_t magic;   ///< kMagic
    std::uint16_t version; ///< kProtocolVersion
    std::uint16_t type;    ///< a Type
    std::uint64_t length;  ///< BLOCK: bytes in the data area
};
static_assert(sizeof(Message) == 16, "the wire format is 16 bytes");
/// "SHM4" in memory.
inline constexpr std::uint32_t kMagic = 0x344d4853;
/// Chapter 04's protocol version.
inline constexpr std::uint16_t kProtocolVersion = 2;
/// Message types, as in chapter 04.
enum Type : std::uint16_t { kHello = 1, kMemory = 2, kBlock = 3, kEnd = 4, kConsumed = 5, kBusy = 6 };

/// A message of this protocol.
inline Message make_message(Type type, std::uint64_t length = 0) {
    return Message{kMagic, kProtocolVersion, type, length};
}

/// What is wrong with a received message, or "" when its magic and version are right and its
/// type is `expected`.
inline std::string message_problem(const Message& message, Type expected) {
    if (message.magic != kMagic)
        return "it does not start with SHM4 (not this protocol)";
    if (message.version != kProtocolVersion)
        return "protocol version " + std::to_string(message.version) + ", this program speaks version " +
               std::to_string(kProtocolVersion);
    if (message.type != expected)
        return "type " + std::to_string(message.type) + ", expected " + std::to_string(expected);
    return "";
}

/// The system heap's device (CONFIG_DMABUF_HEAPS_SYSTEM, Linux 5.6).
inline constexpr const char* kSystemHeap = "/dev/dma_heap/system";
/// The udmabuf device (CONFIG_UDMABUF, Linux 4.20): a dma-buf made from a memfd.
inline constexpr const char* kUdmabuf = "/dev/udmabuf";
/// The default socket, as in chapter 04.
inline constexpr const char* kDefaultName = "/tmp/shm-tutorial-05.sock";

/// Throws Unsupported (exit status 77) for a device that `open` refused: missing (the kernel
/// lacks the option) or not accessible (the device node's permissions).
[[noreturn]] inline void device_unavailable(const char* device, const char* option, int error) {
    if (error == ENOENT)
        throw shmtut::Unsupported(std::string(device) + " does not exist: this kernel lacks " + option +
                                  "; run the chapter in its virtual machine: make vm-05");
    if (error == EACCES || error == EPERM)
        throw shmtut::Unsupported(std::string(device) + " exists but this user may not open it (" + std::strerror(error) +
                                  "): it is usually root-only; a udev rule or a group (ls -l " + device +
                                  ") grants access, or run the chapter in its virtual machine: make vm-05");
    shmtut::throw_error(error, std::string("open(\"") + device + "\")");
}

/// Is there any way to make a dma-buf here, for this user? The reader needs no device itself, but
/// without a usable one no writer can run, so both programs say so the same way (exit status 77):
/// no device at all, or devices this user may not open.
inline void require_some_device() {
    if (::access(kSystemHeap, R_OK) == 0 || ::access(kUdmabuf, R_OK | W_OK) == 0)
        return;
    if (::access(kSystemHeap, F_OK) == 0)
        device_unavailable(kSystemHeap, "CONFIG_DMABUF_HEAPS_SYSTEM", EACCES);
    if (::access(kUdmabuf, F_OK) == 0)
        device_unavailable(kUdmabuf, "CONFIG_UDMABUF", EACCES);
    throw shmtut::Unsupported(std::string("neither ") + kSystemHeap + " nor " + kUdmabuf +
                              " exists: this kernel lacks CONFIG_DMABUF_HEAPS_SYSTEM and CONFIG_UDMABUF; "
                              "run the chapter in its virtual machine: make vm-05");
}

/// DMA_BUF_IOCTL_SYNC: brackets every CPU access to a mapping. START before the CPU touches the
/// memory (the exporter makes the device's writes visible: cache invalidation on hardware whose
/// devices do not snoop the CPU caches), END after (the CPU's writes are flushed for the
/// device). READ, WRITE or both say which way the data goes.
inline void sync(int dmabuf_fd, std::uint64_t flags, const char* what) {
    dma_buf_sync request{flags};
    while (::ioctl(dmabuf_fd, DMA_BUF_IOCTL_SYNC, &request) == -1) {
        shmtut::throw_if_stopped(); // the exporter may wait for a device's fence: Ctrl-C still works
        if (errno != EINTR && errno != EAGAIN)
            shmtut::throw_errno(std::string("ioctl(DMA_BUF_IOCTL_SYNC, ") + what + ")");
    }
}

} // namespace dmabuf
