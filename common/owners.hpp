/// @file owners.hpp
/// @brief Move-only owners of a file descriptor, an `mmap` mapping and a System V attachment.
///
/// They *adopt* what the chapter code already created with the call it teaches
/// (`UniqueFd fd(::memfd_create(...))` after checking the result), so the call stays visible in
/// the chapter, and they release it exactly once on every path, including when an exception
/// unwinds. Destructors never throw and ignore the result of `close`/`munmap`/`shmdt`: after
/// `close` fails with EINTR the descriptor is closed anyway on Linux, and there is nothing
/// useful a destructor could do with an error. No implicit conversions: `get()` says when the raw
/// value is used.
#pragma once

#include <cstddef>
#include <utility>

#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

namespace shmtut {

/// Owns one file descriptor; closes it once. Modelled on AOSP's `android::base::unique_fd`.
class UniqueFd {
public:
    UniqueFd() noexcept = default;
    /// Adopts `fd` (a value below 0 means "owns nothing").
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    /// Takes over what `other` owns; `other` is left empty.
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    /// Releases what this owns, then takes over what `other` owns.
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        reset(other.release());
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }

    /// The descriptor, still owned.
    int get() const noexcept { return fd_; }
    /// True when a descriptor is owned.
    explicit operator bool() const noexcept { return fd_ >= 0; }
    /// Gives up ownership and returns the descriptor.
    int release() noexcept { return std::exchange(fd_, -1); }
    /// Closes the owned descriptor (if any) and adopts `fd`.
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

/// Owns one `mmap` mapping (address and length as passed to `munmap`); unmaps it once.
class Mapping {
public:
    Mapping() noexcept = default;
    /// Adopts a mapping the caller made; `address` must not be `MAP_FAILED`.
    Mapping(void* address, std::size_t length) noexcept : address_(address), length_(length) {}
    /// Takes over what `other` owns; `other` is left empty.
    Mapping(Mapping&& other) noexcept
        : address_(std::exchange(other.address_, nullptr)), length_(std::exchange(other.length_, 0)) {}
    /// Releases what this owns, then takes over what `other` owns.
    Mapping& operator=(Mapping&& other) noexcept {
        if (this != &other) {
            reset();
            address_ = std::exchange(other.address_, nullptr);
            length_ = std::exchange(other.length_, 0);
        }
        return *this;
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { reset(); }

    /// Start of the mapping in this process (each process maps at its own address).
    void* get() const noexcept { return address_; }
    /// Length in bytes, as mapped.
    std::size_t size() const noexcept { return length_; }
    /// True when a mapping is owned.
    explicit operator bool() const noexcept { return address_ != nullptr; }
    /// Gives up ownership (the caller will `munmap` it, and can check the result) and returns
    /// the address.
    void* release() noexcept {
        length_ = 0;
        return std::exchange(address_, nullptr);
    }
    /// Unmaps now (the owner is then empty).
    void reset() noexcept {
        if (address_ != nullptr)
            ::munmap(address_, length_);
        address_ = nullptr;
        length_ = 0;
    }

private:
    void* address_ = nullptr;
    std::size_t length_ = 0;
};

/// Owns one System V shared-memory attachment made by `shmat(2)`; detaches it once with
/// `shmdt(2)`. Detaching is not removing: the segment lives on until `shmctl(IPC_RMID)` and the
/// last detach.
class ShmAttachment {
public:
    ShmAttachment() noexcept = default;
    /// Adopts an address returned by `shmat`; it must not be `(void*)-1`.
    explicit ShmAttachment(void* address) noexcept : address_(address) {}
    /// Takes over what `other` owns; `other` is left empty.
    ShmAttachment(ShmAttachment&& other) noexcept : address_(std::exchange(other.address_, nullptr)) {}
    /// Releases what this owns, then takes over what `other` owns.
    ShmAttachment& operator=(ShmAttachment&& other) noexcept {
        if (this != &other) {
            reset();
            address_ = std::exchange(other.address_, nullptr);
        }
        return *this;
    }
    ShmAttachment(const ShmAttachment&) = delete;
    ShmAttachment& operator=(const ShmAttachment&) = delete;
    ~ShmAttachment() { reset(); }

    /// Where the segment is attached in this process.
    void* get() const noexcept { return address_; }
    /// True when an attachment is owned.
    explicit operator bool() const noexcept { return address_ != nullptr; }
    /// Gives up ownership (the caller will `shmdt` it) and returns the address.
    void* release() noexcept { return std::exchange(address_, nullptr); }
    /// Detaches now (the owner is then empty).
    void reset() noexcept {
        if (address_ != nullptr)
            ::shmdt(address_);
        address_ = nullptr;
    }

private:
    void* address_ = nullptr;
};

} // namespace shmtut
