/// @file labs/ring/ring.hpp
/// @brief Lab ring: a single-producer single-consumer ring of variable-length records in
///        shared memory, the algorithm of Agrona's `OneToOneRingBuffer` (Aeron's `aeron_spsc_rb`).
///
/// The shared memory is a control block of 1024 bytes followed by the data area of `capacity`
/// bytes (a power of two). A record in the data area is
///
///     offset 0: int32 length   (header + payload, unaligned; 0 or less: not written yet)
///     offset 4: int32 type     (kDataType, kEndType, or kPaddingType at the wrap)
///     offset 8: payload        (length - 8 bytes), then zeros up to the next multiple of 8
///
/// The producer writes the type and the payload first and the length last, with a release store;
/// the consumer loads the length with acquire ordering and treats 0 as "not written yet", so it
/// never sees a half-written record. Positions (`tail`, `head`) count bytes since the start and
/// only grow; `position & (capacity - 1)` is the index in the data area. The consumer zeroes what
/// it has read before it moves `head` on, so every byte the producer may write next is zero: the
/// length the consumer finds there is 0 until the producer publishes.
///
/// Who writes what (the control block, one 64-byte cache line per row in the default layout):
///
/// | offset | field | written by | read by |
/// |---:|---|---|---|
/// | 0 | magic (last), version, capacity, max_payload, layout | producer, once | consumer |
/// | 128 | tail: position after the last record | producer | (observers) |
/// | 256 | head_cache: the producer's last look at head | producer | producer |
/// | 384 | head: position of the next record to read | consumer | producer, when its cache says full |
/// | 512 | consumer_sleeping: the futex word | consumer sets 1, producer 0 | both |
/// | 640 | confirmed: the consumer read the end record | consumer | producer |
///
/// tail, head_cache and head are two cache lines apart (Agrona's layout): a write to one does not
/// take the line holding another away from the other core, and the adjacent-line prefetcher
/// (which fetches lines in pairs) does not couple them either. Layout::kOneLine puts all three on
/// the line at 128 to measure what that costs (false sharing).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "error.hpp"

namespace ring {

inline constexpr std::uint32_t kMagic = 0x474e4952;   ///< the bytes "RING", stored last
inline constexpr std::uint32_t kVersion = 1;          ///< layout version
inline constexpr std::size_t kControlSize = 1024;     ///< the data area starts here
inline constexpr std::int32_t kHeaderLength = 8;      ///< int32 length + int32 type
inline constexpr std::int32_t kAlignment = 8;         ///< records start at multiples of 8
inline constexpr std::int32_t kPaddingType = -1;      ///< fills the end of the data area at the wrap
inline constexpr std::int32_t kDataType = 1;          ///< a block of the stream
inline constexpr std::int32_t kEndType = 2;           ///< end of stream (no payload)
inline constexpr std::uint64_t kMinCapacity = 1024;   ///< smallest data area
inline constexpr std::uint64_t kMaxCapacity = 1ULL << 30; ///< largest data area (1 GiB)

/// Where tail, head_cache and head live.
enum class Layout : std::uint32_t {
    kSeparateLines = 0, ///< two cache lines apart, as Agrona and Aeron do
    kOneLine = 1,       ///< all on one line: the false-sharing variant
};

/// Offsets of the control words for a layout.
struct Offsets {
    std::size_t tail;       ///< producer's position
    std::size_t head_cache; ///< producer's copy of head
    std::size_t head;       ///< consumer's position
};

/// The offsets of `layout`.
constexpr Offsets offsets_of(Layout layout) {
    return layout == Layout::kSeparateLines ? Offsets{128, 256, 384} : Offsets{128, 136, 144};
}
inline constexpr std::size_t kSleepingOffset = 512;  ///< the consumer's futex word
inline constexpr std::size_t kConfirmedOffset = 640; ///< set by the consumer after the end record

inline constexpr std::size_t kCacheLine = 64; ///< x86-64 and most arm64 cores
/// The cache line of a byte of the control block. The mapping starts on a page, so offset / 64
/// is the line in the hardware too.
constexpr std::size_t line_of(std::size_t offset) { return offset / kCacheLine; }
/// True when the 8-byte words at `a` and `b` lie whole on one cache line.
constexpr bool one_line(std::size_t a, std::size_t b) {
    return line_of(a) == line_of(a + 7) && line_of(b) == line_of(b + 7) && line_of(a) == line_of(b);
}
/// True when the 8-byte words at `a` < `b` are at least two lines apart: a store to one does not
/// touch the other's line, nor its 128-byte pair (the adjacent-line prefetcher fetches pairs).
constexpr bool lines_apart(std::size_t a, std::size_t b) { return line_of(b) >= line_of(a + 7) + 2; }
// What the two layouts promise, checked by the compiler: the false-sharing variant really has
// tail, head_cache and head on one 64-byte line, and the default really keeps them apart; both
// keep them off the descriptor (line 0) and the futex and confirmation words.
inline constexpr Offsets kApart = offsets_of(Layout::kSeparateLines);
inline constexpr Offsets kTogether = offsets_of(Layout::kOneLine);
static_assert(lines_apart(0, kApart.tail) && lines_apart(kApart.tail, kApart.head_cache) &&
              lines_apart(kApart.head_cache, kApart.head) && lines_apart(kApart.head, kSleepingOffset));
static_assert(one_line(kTogether.tail, kTogether.head_cache) && one_line(kTogether.tail, kTogether.head));
static_assert(lines_apart(0, kTogether.tail) && lines_apart(kTogether.head, kSleepingOffset));
static_assert(lines_apart(kSleepingOffset, kConfirmedOffset) && kConfirmedOffset + 8 <= kControlSize);

/// Line 0 of the control block, written once by the producer; `magic` last, with release.
struct Descriptor {
    std::uint32_t magic;       ///< kMagic once ready (atomic access)
    std::uint32_t version;     ///< kVersion
    std::uint64_t capacity;    ///< bytes in the data area, a power of two
    std::uint32_t max_payload; ///< largest payload of one record (capacity / 8 - 8)
    std::uint32_t layout;      ///< a Layout
};
static_assert(sizeof(Descriptor) == 24);
static_assert(std::atomic_ref<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::int32_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);

/// `value` rounded up to a multiple of kAlignment.
constexpr std::int64_t align_up(std::int64_t value) { return (value + kAlignment - 1) & ~std::int64_t{kAlignment - 1}; }

/// The largest payload for a data area of `capacity` bytes: an eighth of it, as Agrona allows,
/// so that a record always fits with room to spare.
constexpr std::uint32_t max_payload_for(std::uint64_t capacity) {
    return static_cast<std::uint32_t>(capacity / 8 - kHeaderLength);
}

/// True for a capacity the ring accepts: a power of two in [kMinCapacity, kMaxCapacity].
constexpr bool valid_capacity(std::uint64_t capacity) {
    return capacity >= kMinCapacity && capacity <= kMaxCapacity && (capacity & (capacity - 1)) == 0;
}

/// A view of a ring in a mapping: both sides use one, each calling only its own half. It holds
/// no state of its own that the other process needs: everything shared is in the mapping.
class Ring {
public:
    /// `base` is the start of the mapping (control block), validated by the caller.
    Ring(std::byte* base, std::uint64_t capacity, Layout layout) noexcept
        : base_(base), data_(base + kControlSize), capacity_(capacity), mask_(capacity - 1),
          offsets_(offsets_of(layout)) {}

    // --- the producer's half -------------------------------------------------------------

    /// Appends one record, or returns false when the consumer has not yet freed enough room
    /// (back-pressure: the caller decides whether to wait, and says so). `length` must be at
    /// most max_payload_for(capacity).
    bool write(std::int32_t type, const void* payload, std::int32_t length) noexcept {
        const std::int64_t record_length = length + kHeaderLength;
        const std::int64_t aligned = align_up(record_length);
        const std::uint64_t tail = word(offsets_.tail).load(std::memory_order_relaxed); // only we write it
        std::uint64_t head = plain(offsets_.head_cache);
        // Free space by the cached head; only when that says "full" do we read the real head,
        // a load of the consumer's cache line (acquire: what it zeroed before moving head on
        // is zero for us too).
        if (static_cast<std::uint64_t>(aligned) > capacity_ - (tail - head)) {
            head = word(offsets_.head).load(std::memory_order_acquire);
            if (static_cast<std::uint64_t>(aligned) > capacity_ - (tail - head))
                return false;
            plain(offsets_.head_cache) = head;
        }
        std::uint64_t index = tail & mask_;
        const std::uint64_t to_end = capacity_ - index;
        std::uint64_t padding = 0;
        if (static_cast<std::uint64_t>(aligned) > to_end) {
            // The record does not fit before the end: it goes to index 0, after a padding record
            // to the end. The free space is then [index, end) and [0, head index), because the
            // check above put head in this lap (tail - head <= index), so index 0 must be free
            // for `aligned` bytes: look at the real head if the cached one says no.
            std::uint64_t head_index = head & mask_;
            if (static_cast<std::uint64_t>(aligned) > head_index) {
                head = word(offsets_.head).load(std::memory_order_acquire);
                plain(offsets_.head_cache) = head;
                head_index = head & mask_;
                if (static_cast<std::uint64_t>(aligned) > head_index)
                    return false;
            }
            // A padding record fills the rest of the data area; the consumer skips it.
            padding = to_end;
            publish(index, kPaddingType, nullptr, static_cast<std::int32_t>(padding));
            ++padding_records_;
            index = 0;
        }
        publish(index, type, payload, static_cast<std::int32_t>(record_length));
        word(offsets_.tail).store(tail + padding + static_cast<std::uint64_t>(aligned), std::memory_order_release);
        return true;
    }

    /// After write(): true if the consumer said it is going to sleep, in which case the caller
    /// wakes it (futex FUTEX_WAKE). The fence pairs with the one in prepare_to_sleep(): of the
    /// producer's "length published" and the consumer's "I am going to sleep", at least one side
    /// sees the other's store, so a record is never left with its consumer asleep.
    bool consumer_needs_wake() noexcept {
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (sleeping().load(std::memory_order_relaxed) == 0)
            return false;
        return sleeping().exchange(0, std::memory_order_relaxed) == 1;
    }

    /// Padding records written so far by this producer.
    std::uint64_t padding_records() const noexcept { return padding_records_; }

    // --- the consumer's half -------------------------------------------------------------

    /// Reads the records that are ready, from head to the end of the data area at most, calling
    /// `handle(type, payload, length)` for each one that is not padding; then zeroes what it
    /// read and moves head on (release). Returns the number of bytes consumed (0: nothing ready).
    template <class Handler>
    std::uint64_t read(Handler&& handle) {
        const std::uint64_t head = word(offsets_.head).load(std::memory_order_relaxed); // only we write it
        const std::uint64_t head_index = head & mask_;
        const std::uint64_t max_block = capacity_ - head_index;
        std::uint64_t consumed = 0;
        while (consumed < max_block) {
            const std::uint64_t index = head_index + consumed;
            const std::int32_t length = length_at(index).load(std::memory_order_acquire);
            if (length <= 0)
                break; // not written yet
            // Copy the header once; the producer cannot change a published record, but a
            // corrupted one must not send us past the data area.
            if (length < kHeaderLength || static_cast<std::uint64_t>(length) > max_block - consumed)
                throw_corrupt(index, length);
            consumed += static_cast<std::uint64_t>(align_up(length));
            std::int32_t type = 0;
            std::memcpy(&type, data_ + index + 4, sizeof type);
            if (type == kPaddingType)
                continue;
            handle(type, data_ + index + kHeaderLength, length - kHeaderLength);
        }
        if (consumed > 0) {
            std::memset(data_ + head_index, 0, static_cast<std::size_t>(consumed)); // <= the mapped capacity
            word(offsets_.head).store(head + consumed, std::memory_order_release);
        }
        return consumed;
    }

    /// Before sleeping: set the futex word, then look once more (see consumer_needs_wake()).
    /// True when a record is ready after all and the consumer must not sleep.
    bool prepare_to_sleep() noexcept {
        sleeping().store(1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        const std::uint64_t head = word(offsets_.head).load(std::memory_order_relaxed);
        if (length_at(head & mask_).load(std::memory_order_acquire) > 0) {
            sleeping().store(0, std::memory_order_relaxed);
            return true;
        }
        return false;
    }

    /// The futex word (32 bits, as `futex(2)` requires).
    std::uint32_t* sleeping_word() noexcept { return reinterpret_cast<std::uint32_t*>(base_ + kSleepingOffset); }
    /// The word the consumer sets to 1 after the end record.
    std::atomic_ref<std::uint32_t> confirmed() noexcept { return std::atomic_ref<std::uint32_t>(u32(kConfirmedOffset)); }
    /// The consumer's position (for progress checks).
    std::uint64_t head() noexcept { return word(offsets_.head).load(std::memory_order_acquire); }
    /// The producer's position.
    std::uint64_t tail() noexcept { return word(offsets_.tail).load(std::memory_order_acquire); }

private:
    std::atomic_ref<std::uint64_t> word(std::size_t offset) noexcept {
        return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(base_ + offset));
    }
    std::uint64_t& plain(std::size_t offset) noexcept { return *reinterpret_cast<std::uint64_t*>(base_ + offset); }
    std::uint32_t& u32(std::size_t offset) noexcept { return *reinterpret_cast<std::uint32_t*>(base_ + offset); }
    std::atomic_ref<std::uint32_t> sleeping() noexcept { return std::atomic_ref<std::uint32_t>(u32(kSleepingOffset)); }
    std::atomic_ref<std::int32_t> length_at(std::uint64_t index) noexcept {
        return std::atomic_ref<std::int32_t>(*reinterpret_cast<std::int32_t*>(data_ + index));
    }

    /// Type and payload first, then the length with a release store: the consumer that loads a
    /// length > 0 with acquire ordering sees the whole record.
    void publish(std::uint64_t index, std::int32_t type, const void* payload, std::int32_t record_length) noexcept {
        std::memcpy(data_ + index + 4, &type, sizeof type);
        if (payload != nullptr && record_length > kHeaderLength)
            std::memcpy(data_ + index + kHeaderLength, payload, static_cast<std::size_t>(record_length - kHeaderLength));
        length_at(index).store(record_length, std::memory_order_release);
    }

    [[noreturn]] static void throw_corrupt(std::uint64_t index, std::int32_t length) {
        throw shmtut::Failure("corrupt record at index " + std::to_string(index) + ": length " +
                              std::to_string(length) + " does not fit the data area");
    }

    std::byte* base_;
    std::byte* data_;
    std::uint64_t capacity_;
    std::uint64_t mask_;
    Offsets offsets_;
    std::uint64_t padding_records_ = 0;
};

} // namespace ring
