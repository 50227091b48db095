/// @file 06-zero-copy/pool.hpp
/// @brief Chapter 06: the pool's layout in the memfd, and the 16-byte messages that travel on
///        the socket once the pool has been passed (a slot's index and length, never its bytes).
///
/// The pool is one sealed memfd, laid out as
///
/// | offset                       | size       | what |
/// |-----------------------------:|-----------:|------|
/// | 0                            | 256        | the shared header of every chapter (common/layout.hpp): magic, version, data_capacity = slot_count x slot_size, writer_pid |
/// | 64 (the header's chapter_area) | 16       | PoolGeometry: slot_count (4 bytes), reserved (4), slot_size (8) |
/// | 4096                         | slot_size  | slot 0 |
/// | 4096 + i x slot_size         | slot_size  | slot i, up to slot_count - 1 |
///
/// Slots start on a page boundary and slot_size is a whole number of pages, so every slot is its
/// own pages: the "look inside" section can show one slot's physical page in both processes.
///
/// Every message on the socket is 16 bytes, integers in the machine's byte order:
///
/// | offset | size | field  | meaning |
/// |-------:|-----:|--------|---------|
/// | 0      | 4    | magic  | the bytes `S` `H` `M` `6` |
/// | 4      | 4    | type   | 1 HELLO, 2 FILLED, 3 RETURNED, 4 END, 5 DONE, 6 BUSY, 7 ASK |
/// | 8      | 4    | slot   | FILLED, RETURNED: the slot's index |
/// | 12     | 4    | length | FILLED: bytes in the slot; otherwise 0 |
///
/// The conversation: reader -> ASK (a connection that says nothing, such as another writer
/// checking whether this one is alive, is never taken for a reader); writer -> HELLO with exactly
/// one descriptor (the pool); then, any number of
/// times and overlapping, writer -> FILLED(slot, length) and reader -> RETURNED(slot); finally
/// writer -> END, reader -> DONE (the confirmation, after every slot came back). A writer that
/// already serves a reader answers any other client with BUSY.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "layout.hpp"

namespace pool {

/// The default `--name`: a socket file. `@NAME` means the abstract namespace instead.
inline constexpr const char* kDefaultName = "/tmp/shm-tutorial-06.sock";

/// Where slot 0 starts: the first page boundary after the header.
inline constexpr std::uint64_t kSlotsOffset = 4096;
/// Slots are whole pages.
inline constexpr std::uint64_t kPageSize = 4096;
/// The largest slot: a length must fit the message's 32-bit field.
inline constexpr std::uint64_t kMaxSlotSize = std::uint64_t{1} << 30;
/// The most slots a pool may have (the reader keeps one flag per slot).
inline constexpr std::uint32_t kMaxSlots = 4096;
/// The pool the writer makes unless told otherwise: 8 slots of 64 KiB.
inline constexpr std::uint32_t kDefaultSlots = 8;
/// See kDefaultSlots.
inline constexpr std::uint64_t kDefaultSlotSize = 64 * 1024;

/// The pool's shape, in the header's chapter_area (offset 64). Written once by the writer before
/// it publishes the header; the reader copies it once and validates the copy.
struct PoolGeometry {
    std::atomic<std::uint32_t> slot_count; ///< number of slots
    std::uint32_t reserved;                ///< zero
    std::atomic<std::uint64_t> slot_size;  ///< bytes per slot, a multiple of kPageSize
};
static_assert(std::is_standard_layout_v<PoolGeometry> && sizeof(PoolGeometry) == 16);
static_assert(sizeof(PoolGeometry) <= sizeof(shmtut::SharedHeader::chapter_area));

/// The geometry inside a mapped header.
inline PoolGeometry& geometry_of(shmtut::SharedHeader& header) {
    return *reinterpret_cast<PoolGeometry*>(header.chapter_area);
}
/// The geometry inside a mapped header, read-only.
inline const PoolGeometry& geometry_of(const shmtut::SharedHeader& header) {
    return *reinterpret_cast<const PoolGeometry*>(header.chapter_area);
}

/// "SHM6" as bytes in memory on a little-endian machine.
inline constexpr std::uint32_t kMagic = 0x364d4853;

/// Message types.
enum Type : std::uint32_t { kHello = 1, kFilled = 2, kReturned = 3, kEnd = 4, kDone = 5, kBusy = 6, kAsk = 7 };

/// One message on the wire.
struct Message {
    std::uint32_t magic;  ///< kMagic
    std::uint32_t type;   ///< a Type
    std::uint32_t slot;   ///< FILLED, RETURNED: the slot's index
    std::uint32_t length; ///< FILLED: bytes in the slot
};
static_assert(sizeof(Message) == 16 && std::is_trivially_copyable_v<Message>);

/// The name of a message type, for narration and errors.
inline const char* type_name(std::uint32_t type) {
    switch (type) {
    case kHello: return "HELLO";
    case kFilled: return "FILLED";
    case kReturned: return "RETURNED";
    case kEnd: return "END";
    case kDone: return "DONE";
    case kBusy: return "BUSY";
    case kAsk: return "ASK";
    default: return "unknown";
    }
}

} // namespace pool
