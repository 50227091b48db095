/// @file layout.hpp
/// @brief The header every chapter puts at the start of its shared memory, and its rules.
///
/// Byte layout (offsets in bytes, integers in the machine's byte order: little-endian on x86-64
/// and arm64):
///
/// | offset | size | field           | written by | meaning |
/// |-------:|-----:|-----------------|------------|---------|
/// | 0      | 4    | magic           | writer     | 0 while not ready; kHeaderMagic ("SHMT") once ready, stored last |
/// | 4      | 4    | version         | writer     | kLayoutVersion |
/// | 8      | 8    | data_capacity   | writer     | bytes in the data area, which starts at kHeaderSize |
/// | 16     | 8    | block_length    | writer     | bytes of the current block, at most data_capacity |
/// | 24     | 8    | sequence        | writer     | number of the current block: 1, 2, 3, ... |
/// | 32     | 4    | end_of_stream   | writer     | 1 in the block that ends the stream, else 0 |
/// | 36     | 4    | writer_pid      | writer     | the writer's process id: a claim the reader checks against what the kernel says (SO_PEERCRED, the parent, the pid it opened), or uses to open a pidfd (chapter 02), never alone trusted for identity |
/// | 40     | 4    | flags           | writer     | chapter-defined bits (see each chapter's notes) |
/// | 44     | 20   | reserved        | -          | zero (plain bytes, written once when constructed) |
/// | 64     | 192  | chapter_area    | both sides | plain bytes in which the chapter places its synchronisation objects (atomics, process-shared semaphores), laid out in its own notes |
/// | 256    | data_capacity | data   | writer     | the block's bytes |
///
/// Rules that make it safe to share between processes that do not trust each other:
/// - Offsets, never pointers: each process maps the memory at its own address.
/// - Every field from `magic` to `flags` is a lock-free `std::atomic` (checked by
///   `static_assert`): lock-free atomics are plain memory operations, so they work between
///   processes; a locked one would use a lock in the process's own memory. Atomics also make a
///   peer's concurrent change a value we read, not undefined behaviour. `reserved` and
///   `chapter_area` are plain bytes: `reserved` is written only when the header is constructed,
///   and a chapter constructs its own objects in `chapter_area` (lock-free atomics, or `sem_t`s
///   initialised with `sem_init(pshared=1)`), which are what both sides then touch.
/// - Who writes where: the first 64-byte line (`magic` to `reserved`) is written by the writer
///   only, so a reader polling it never shares a line with its own writes. In `chapter_area` no
///   line belongs to one side: a chapter keeps words written mostly by different sides on
///   different lines, but a semaphore or futex word is written by both (`sem_post` increments
///   what `sem_wait` decrements; a futex waker and waiter both touch the word).
/// - Publication: publish_header() fills every field, then stores `magic` with release ordering;
///   header_ready() loads it with acquire ordering. publish_block() stores `sequence` last with
///   release ordering; take_snapshot() loads it first with acquire ordering.
/// - No double fetch: the peer can change the memory between a check and a use, so a reader
///   calls take_snapshot() once, validates that local copy with validate_header() and
///   validate_block(), and uses only the copy.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "error.hpp"

namespace shmtut {

/// "SHMT" as bytes in memory on a little-endian machine: `xxd` on the object shows it.
inline constexpr std::uint32_t kHeaderMagic = 0x544d4853;
/// Bumped whenever a field changes meaning or place.
inline constexpr std::uint32_t kLayoutVersion = 1;
/// Size of the header; the data area starts here.
inline constexpr std::size_t kHeaderSize = 256;
/// Data area size the writers use unless told otherwise.
inline constexpr std::size_t kDefaultDataCapacity = 64 * 1024;

/// The shared header. Constructed once by the writer (construct_header()); other processes only
/// look at it through a pointer to the mapped memory.
struct SharedHeader {
    // The first 64-byte line: written by the writer only (readers load, never store).
    std::atomic<std::uint32_t> magic;         ///< 0 until ready, then kHeaderMagic
    std::atomic<std::uint32_t> version;       ///< kLayoutVersion
    std::atomic<std::uint64_t> data_capacity; ///< bytes in the data area
    std::atomic<std::uint64_t> block_length;  ///< bytes in the current block
    std::atomic<std::uint64_t> sequence;      ///< current block number, from 1
    std::atomic<std::uint32_t> end_of_stream; ///< 1 in the last block
    std::atomic<std::uint32_t> writer_pid;    ///< the writer's pid, as the writer claims it
    std::atomic<std::uint32_t> flags;         ///< chapter-defined bits
    std::uint8_t reserved[20];                ///< zero: plain bytes, not an atomic
    /// Lines 1 to 3: plain bytes in which the chapter constructs its synchronisation objects;
    /// both sides write there (see the rules above).
    alignas(64) std::uint8_t chapter_area[192];
};

static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "32-bit atomics must be lock-free to be shared");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "64-bit atomics must be lock-free to be shared");
static_assert(sizeof(std::atomic<std::uint64_t>) == 8 && sizeof(std::atomic<std::uint32_t>) == 4);
static_assert(std::is_standard_layout_v<SharedHeader>, "offsetof and other languages need a plain layout");
static_assert(sizeof(SharedHeader) == kHeaderSize);
static_assert(offsetof(SharedHeader, magic) == 0);
static_assert(offsetof(SharedHeader, version) == 4);
static_assert(offsetof(SharedHeader, data_capacity) == 8);
static_assert(offsetof(SharedHeader, block_length) == 16);
static_assert(offsetof(SharedHeader, sequence) == 24);
static_assert(offsetof(SharedHeader, end_of_stream) == 32);
static_assert(offsetof(SharedHeader, writer_pid) == 36);
static_assert(offsetof(SharedHeader, flags) == 40);
static_assert(offsetof(SharedHeader, chapter_area) == 64);

/// A local copy of the header: what a reader validates and then uses.
struct HeaderSnapshot {
    std::uint32_t magic;         ///< SharedHeader::magic
    std::uint32_t version;       ///< SharedHeader::version
    std::uint64_t data_capacity; ///< SharedHeader::data_capacity
    std::uint64_t block_length;  ///< SharedHeader::block_length
    std::uint64_t sequence;      ///< SharedHeader::sequence
    std::uint32_t end_of_stream; ///< SharedHeader::end_of_stream
    std::uint32_t writer_pid;    ///< SharedHeader::writer_pid
    std::uint32_t flags;         ///< SharedHeader::flags
};

/// A header or block that does not validate. The message says which field and why.
class LayoutError : public Failure {
public:
    using Failure::Failure;
};

/// Creates a zeroed, not-ready header at `base` (the start of memory the writer just created and
/// sized). Only the writer calls it, once.
SharedHeader* construct_header(void* base);

/// Fills the header of an empty stream and then marks it ready (magic, release) — last, so that a
/// reader that sees the magic sees every other field too.
void publish_header(SharedHeader& header, std::uint64_t data_capacity, std::uint32_t writer_pid,
                    std::uint32_t flags);

/// True once the writer has published the header (any non-zero magic; validate_header() then
/// tells a right magic from a wrong one).
bool header_ready(const SharedHeader& header);

/// Makes the block in the data area current: length and end-of-stream first, then `sequence`
/// with release ordering.
void publish_block(SharedHeader& header, std::uint64_t block_length, std::uint64_t sequence, bool end_of_stream);

/// Loads every field once into a local copy (`sequence` first, with acquire ordering).
HeaderSnapshot take_snapshot(const SharedHeader& header);

/// Checks a snapshot's identity and sizes against the real size of the shared object (from
/// `fstat` or `shmctl(IPC_STAT)`, never from the header): magic, version, a capacity that is not
/// 0 and fits (`kHeaderSize + data_capacity <= object_size`, computed without overflow).
/// Throws LayoutError.
void validate_header(const HeaderSnapshot& snapshot, std::uint64_t object_size);

/// Checks the current block against the capacity validated earlier (a local value, not the
/// header's field, which the peer could have changed since) and the sequence number the reader
/// expects next. Throws LayoutError.
void validate_block(const HeaderSnapshot& snapshot, std::uint64_t validated_capacity, std::uint64_t expected_sequence);

/// The first byte of the data area.
inline std::uint8_t* data_area(void* base) { return static_cast<std::uint8_t*>(base) + kHeaderSize; }
/// The first byte of the data area, read-only.
inline const std::uint8_t* data_area(const void* base) { return static_cast<const std::uint8_t*>(base) + kHeaderSize; }

/// The real size of a shared object (from `fstat` or `shmctl`: 64 bits on every machine) as the
/// `size_t` that `mmap` takes. On a 32-bit machine (armhf) `size_t` has 32 bits: an object of
/// 4 GiB or more cannot be mapped whole there, and a silent truncation would map a few bytes
/// while the checks that follow trust the full size. Throws LayoutError when it does not fit.
std::size_t mappable_size(std::uint64_t object_size);

} // namespace shmtut
