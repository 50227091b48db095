/// @file layout.cpp
/// @brief Publication and validation of the shared header.
#include "layout.hpp"

#include <cinttypes>
#include <limits>
#include <cstdio>
#include <new>
#include <string>

namespace shmtut {

namespace {
std::string format(const char* fmt, auto... args) {
    char text[256];
    std::snprintf(text, sizeof text, fmt, args...);
    return text;
}
} // namespace

SharedHeader* construct_header(void* base) {
    // Value-initialisation zeroes every field, so magic == 0: "not ready".
    return new (base) SharedHeader{};
}

void publish_header(SharedHeader& header, std::uint64_t data_capacity, std::uint32_t writer_pid,
                    std::uint32_t flags) {
    header.version.store(kLayoutVersion, std::memory_order_relaxed);
    header.data_capacity.store(data_capacity, std::memory_order_relaxed);
    header.block_length.store(0, std::memory_order_relaxed);
    header.sequence.store(0, std::memory_order_relaxed);
    header.end_of_stream.store(0, std::memory_order_relaxed);
    header.writer_pid.store(writer_pid, std::memory_order_relaxed);
    header.flags.store(flags, std::memory_order_relaxed);
    header.magic.store(kHeaderMagic, std::memory_order_release);
}

bool header_ready(const SharedHeader& header) {
    return header.magic.load(std::memory_order_acquire) != 0;
}

void publish_block(SharedHeader& header, std::uint64_t block_length, std::uint64_t sequence, bool end_of_stream) {
    header.block_length.store(block_length, std::memory_order_relaxed);
    header.end_of_stream.store(end_of_stream ? 1 : 0, std::memory_order_relaxed);
    header.sequence.store(sequence, std::memory_order_release);
}

HeaderSnapshot take_snapshot(const SharedHeader& header) {
    HeaderSnapshot copy{};
    copy.sequence = header.sequence.load(std::memory_order_acquire);
    copy.magic = header.magic.load(std::memory_order_acquire);
    copy.version = header.version.load(std::memory_order_relaxed);
    copy.data_capacity = header.data_capacity.load(std::memory_order_relaxed);
    copy.block_length = header.block_length.load(std::memory_order_relaxed);
    copy.end_of_stream = header.end_of_stream.load(std::memory_order_relaxed);
    copy.writer_pid = header.writer_pid.load(std::memory_order_relaxed);
    copy.flags = header.flags.load(std::memory_order_relaxed);
    return copy;
}

void validate_header(const HeaderSnapshot& snapshot, std::uint64_t object_size) {
    if (snapshot.magic != kHeaderMagic)
        throw LayoutError(format("header refused: magic is 0x%08" PRIx32 ", expected 0x%08" PRIx32
                                 ": not this tutorial's shared memory",
                                 snapshot.magic, kHeaderMagic));
    if (snapshot.version != kLayoutVersion)
        throw LayoutError(format("header refused: layout version %" PRIu32 ", this program reads version %" PRIu32,
                                 snapshot.version, kLayoutVersion));
    if (object_size < kHeaderSize)
        throw LayoutError(format("header refused: the object has %" PRIu64 " bytes, less than the %zu-byte header",
                                 object_size, kHeaderSize));
    // Compare with a subtraction that cannot wrap: object_size >= kHeaderSize was checked above,
    // whereas kHeaderSize + data_capacity could overflow for a hostile capacity.
    if (snapshot.data_capacity == 0 || snapshot.data_capacity > object_size - kHeaderSize)
        throw LayoutError(format("header refused: data capacity %" PRIu64 " does not fit in the object's %" PRIu64
                                 " bytes after the %zu-byte header",
                                 snapshot.data_capacity, object_size, kHeaderSize));
}

void validate_block(const HeaderSnapshot& snapshot, std::uint64_t validated_capacity, std::uint64_t expected_sequence) {
    if (snapshot.sequence != expected_sequence)
        throw LayoutError(format("block refused: sequence %" PRIu64 ", expected %" PRIu64, snapshot.sequence,
                                 expected_sequence));
    if (snapshot.block_length > validated_capacity)
        throw LayoutError(format("block refused: length %" PRIu64 " exceeds the data capacity %" PRIu64,
                                 snapshot.block_length, validated_capacity));
    if (snapshot.end_of_stream > 1)
        throw LayoutError(format("block refused: end-of-stream flag is %" PRIu32 ", expected 0 or 1",
                                 snapshot.end_of_stream));
}

std::size_t mappable_size(std::uint64_t object_size) {
    if (object_size > std::numeric_limits<std::size_t>::max())
        throw LayoutError(format("object refused: its %" PRIu64 " bytes do not fit in this process's address space "
                                 "(size_t has %zu bits)",
                                 object_size, sizeof(std::size_t) * 8));
    return static_cast<std::size_t>(object_size);
}

} // namespace shmtut
