/// @file seals.hpp
/// @brief Checking a memfd handed over by someone else, as chapter 03 teaches it.
///
/// A receiver never trusts a descriptor it was given: before mapping it, it checks that it is
/// sealed at least with `required` seals, then that it is a regular file at least `min_size`
/// bytes long, then that it is a memfd. Chapter 03 teaches these checks in its reader; chapter
/// 04 and later reuse them from here.
#pragma once

#include <cstdint>
#include <string>

#include <fcntl.h>

#include "narrate.hpp"

#ifndef F_SEAL_EXEC
/// Linux 6.3: the file's execute bits can no longer change (what MFD_NOEXEC_SEAL adds).
#define F_SEAL_EXEC 0x0020
#endif

#ifndef MFD_NOEXEC_SEAL
/// Linux 6.3: the memfd is not executable and cannot be made so. Debian 12's headers lack it.
#define MFD_NOEXEC_SEAL 0x0008U
#endif

namespace shmtut {

/// Seals as text, for narration and errors: "F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW".
std::string seals_text(int seals);

/// Checks a received descriptor in the order that makes each answer hold: `fcntl(F_GET_SEALS)`
/// first (every seal in `required`: with `F_SEAL_SHRINK|F_SEAL_GROW` the size can no longer
/// change), then `fstat` (a regular file of at least `min_size` bytes: a size read before the
/// seals could change under the caller, who would then map too much and die of SIGBUS), then
/// `readlink` of `/proc/self/fd/N` (a memfd: F_GET_SEALS alone also answers for a /dev/shm
/// object). Chapter 03's reader makes the same calls in its own code, where they are taught.
/// Throws Failure naming what is wrong; narrates what it found. Returns the real size, to map
/// and to validate the header with.
std::uint64_t check_sealed_memfd(int fd, int required, std::uint64_t min_size, const Narrator& say);

} // namespace shmtut
