/// @file tests/test_interop.cpp
/// @brief Other CPUs and other languages: what differs on 32-bit ARM (make test-cross), and the
///        Python and Rust peers of interop/ against the C++ programs (make interop).
#include "support.hpp"

#include <cstdint>
#include <new>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../03-memfd/protocol.hpp"
#include "catch.hpp"
#include "layout.hpp"
#include "owners.hpp"

using namespace testsupport;

TEST_CASE("03: a sealed memfd larger than 4 GiB is read on 64-bit and refused on 32-bit, never mapped short",
          "[03][cross]") {
    // fstat reports a 64-bit size everywhere (armhf is built with _FILE_OFFSET_BITS=64), but mmap
    // takes a size_t, which has 32 bits on armhf. A reader that passed the size on unchecked would
    // map (4 GiB + 4 KiB) mod 4 GiB = 4 KiB, validate the header against the full size, and read
    // the first block past the end of its mapping: SIGSEGV. The test plays the writer.
    LeakCheck leaks;
    {
        const std::uint64_t capacity = std::uint64_t{1} << 32;
        const std::uint64_t size = capacity + 4096; // the header and the capacity fit
        const std::uint64_t block_length = 64 * 1024;
        shmtut::UniqueFd fd(::memfd_create("shmtut-test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
        REQUIRE(fd);
        REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0); // sparse: no memory is used
        void* base = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        REQUIRE(base != MAP_FAILED);
        shmtut::Mapping first_page(base, 4096);
        shmtut::SharedHeader& header = *shmtut::construct_header(base);
        memfd::Sync& sync = *new (header.chapter_area) memfd::Sync{};
        shmtut::publish_header(header, capacity, static_cast<std::uint32_t>(::getpid()), 0);
        shmtut::publish_block(header, block_length, 1, true);
        sync.published.store(1, std::memory_order_release);
        REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);

        ProcessGroup group;
        Process& reader = group.start("reader", {binary("03-memfd/reader"), "--pid", std::to_string(::getpid()),
                                                 "--fd", std::to_string(fd.get()), "--timeout", "10"});
        group.wait(reader);
        INFO("reader stderr:\n" << reader.err);
        CHECK(reader.killed_by() == 0);
        if (sizeof(void*) == 4) {
            CHECK(reader.exit_code() == 1);
            CHECK_THAT(reader.last_error_line(), contains("do not fit in this process's address space"));
            CHECK(reader.out.empty());
        } else {
            CHECK(reader.exit_code() == 0);
            CHECK(reader.out == std::string(block_length, '\0'));
        }
    }
    check_nothing_left(leaks);
}
