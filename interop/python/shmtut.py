"""The shared header of every chapter, a futex, OFD locks and seals, in Python's standard library.

What the C++ programs keep in common/ (layout.hpp) and in chapter 03's protocol.hpp, written again
from the notes: this is what a peer in another language needs, and nothing more.

Byte layout (machine byte order; see common/layout.hpp and the chapters' notes):

    offset size field           offset size field
    0      4    magic           32     4    end_of_stream
    4      4    version         36     4    writer_pid
    8      8    data_capacity   40     4    flags
    16     8    block_length    44     20   reserved
    24     8    sequence        64     192  chapter area
                                256    ...  data

Python has no atomics. Two things stand in for them here:
- every 32- and 64-bit field is read and written through a memoryview cast to that width
  ("I", "Q"), which copies the field with one aligned load or store of its size (struct.pack_into
  would write it byte by byte, and a peer could see half of it);
- ordering: CPython issues no memory barriers. On x86-64, where these peers are tested, stores
  become visible to other CPUs in program order and loads are not reordered with older loads
  (TSO), so "fill everything, store the sequence or the magic last" is a release and "load it
  first" an acquire, as in the C++ programs. On ARM they are not: a Python peer there needs a
  barrier that only C can emit (ctypes cannot), so the interop tests run on x86-64 only.
"""

import ctypes
import errno
import fcntl
import os
import platform
import select
import struct
import sys
import time

HEADER_MAGIC = 0x544D4853  # "SHMT" in memory on a little-endian machine
LAYOUT_VERSION = 1
HEADER_SIZE = 256
DEFAULT_CAPACITY = 64 * 1024

# Field offsets in bytes.
MAGIC, VERSION, DATA_CAPACITY, BLOCK_LENGTH, SEQUENCE = 0, 4, 8, 16, 24
END_OF_STREAM, WRITER_PID, FLAGS, CHAPTER_AREA = 32, 36, 40, 64

EXIT_SUCCESS, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Failure(Exception):
    """A runtime failure: the program prints one line and exits 1."""


class UsageError(Exception):
    """A usage error: one line pointing to --help, exit 2."""


class Narrator:
    """Narration on standard error, "ROLE: call(args) = result", as the C++ programs print it."""

    def __init__(self, role, quiet):
        self.role, self.quiet = role, quiet

    def say(self, text):
        if not self.quiet:
            sys.stderr.write(f"{self.role}: {text}\n")
            sys.stderr.flush()


class Header:
    """The header of a mapping, field by field, each read or written in one access."""

    def __init__(self, mapping):
        view = memoryview(mapping)[:HEADER_SIZE]
        self._view = view
        self._u32 = view.cast("I")
        self._u64 = view.cast("Q")

    def release(self):
        """Drops the views: a mapping cannot be closed while they exist."""
        self._u32.release()
        self._u64.release()
        self._view.release()

    def load32(self, offset):
        return self._u32[offset // 4]

    def store32(self, offset, value):
        self._u32[offset // 4] = value

    def load64(self, offset):
        return self._u64[offset // 8]

    def store64(self, offset, value):
        self._u64[offset // 8] = value

    def snapshot(self):
        """Every field once, sequence first (no double fetch: validate and use only the copy)."""
        sequence = self.load64(SEQUENCE)
        return {
            "sequence": sequence,
            "magic": self.load32(MAGIC),
            "version": self.load32(VERSION),
            "data_capacity": self.load64(DATA_CAPACITY),
            "block_length": self.load64(BLOCK_LENGTH),
            "end_of_stream": self.load32(END_OF_STREAM),
            "writer_pid": self.load32(WRITER_PID),
            "flags": self.load32(FLAGS),
        }

    def publish(self, data_capacity, writer_pid, flags=0, magic=HEADER_MAGIC, version=LAYOUT_VERSION):
        """Fills the header of an empty stream, then stores the magic last."""
        self.store32(VERSION, version)
        self.store64(DATA_CAPACITY, data_capacity)
        self.store64(BLOCK_LENGTH, 0)
        self.store64(SEQUENCE, 0)
        self.store32(END_OF_STREAM, 0)
        self.store32(WRITER_PID, writer_pid)
        self.store32(FLAGS, flags)
        self.store32(MAGIC, magic)

    def publish_block(self, length, sequence, end_of_stream):
        """Length and end flag first, the sequence number last."""
        self.store64(BLOCK_LENGTH, length)
        self.store32(END_OF_STREAM, 1 if end_of_stream else 0)
        self.store64(SEQUENCE, sequence)


def validate_header(snapshot, object_size):
    """The C++ validate_header(): identity, then a capacity that fits the real size."""
    if snapshot["magic"] != HEADER_MAGIC:
        raise Failure(f"header refused: magic 0x{snapshot['magic']:08x}, expected 0x{HEADER_MAGIC:08x}")
    if snapshot["version"] != LAYOUT_VERSION:
        raise Failure(f"header refused: layout version {snapshot['version']}, expected {LAYOUT_VERSION}")
    capacity = snapshot["data_capacity"]
    if object_size < HEADER_SIZE or capacity == 0 or capacity > object_size - HEADER_SIZE:
        raise Failure(f"header refused: data capacity {capacity} does not fit in the object's {object_size} bytes "
                      f"after the {HEADER_SIZE}-byte header")


def validate_block(snapshot, capacity, expected_sequence):
    """The C++ validate_block(), against the capacity validated before (a local value)."""
    if snapshot["sequence"] != expected_sequence:
        raise Failure(f"block refused: sequence {snapshot['sequence']}, expected {expected_sequence}")
    if snapshot["block_length"] > capacity:
        raise Failure(f"block refused: length {snapshot['block_length']} exceeds the data capacity {capacity}")
    if snapshot["end_of_stream"] > 1:
        raise Failure(f"block refused: end-of-stream flag is {snapshot['end_of_stream']}, expected 0 or 1")


# --- futex(2) through ctypes ---------------------------------------------------------------------
# Python has no futex call. ctypes reaches libc's syscall(2), with the number of SYS_futex for this
# machine (the numbers differ between architectures; these are from <asm/unistd.h>).
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "armv7l": 240, "armv8l": 240, "i686": 240}
FUTEX_WAIT, FUTEX_WAKE = 0, 1  # without FUTEX_PRIVATE_FLAG: the word is shared between processes

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class FutexWord:
    """A 32-bit word of a mapping that processes wait on and wake with futex(2)."""

    def __init__(self, mapping, offset):
        if platform.machine() not in _SYS_FUTEX:
            raise Failure(f"no SYS_futex number known for {platform.machine()}")
        self._number = _SYS_FUTEX[platform.machine()]
        self._word = ctypes.c_uint32.from_buffer(mapping, offset)  # the address, not a copy
        self.address = ctypes.addressof(self._word)

    def release(self):
        """Drops the buffer export: a mapping cannot be closed while it exists."""
        del self._word

    def load(self):
        return self._word.value

    def store(self, value):
        self._word.value = value

    def wait(self, expected, seconds):
        """FUTEX_WAIT: sleeps while the word still equals `expected`, at most `seconds`. The
        kernel compares and sleeps atomically, so a wake between our load and this call is not
        lost (it returns EAGAIN at once)."""
        timeout = _Timespec(int(seconds), int((seconds - int(seconds)) * 1e9))
        result = _libc.syscall(ctypes.c_long(self._number), ctypes.c_void_p(self.address), FUTEX_WAIT,
                               ctypes.c_uint32(expected), ctypes.byref(timeout), None, 0)
        if result == -1 and ctypes.get_errno() not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), "futex(FUTEX_WAIT)")

    def wake(self):
        """FUTEX_WAKE: wakes one process sleeping on the word; returns how many it woke."""
        result = _libc.syscall(ctypes.c_long(self._number), ctypes.c_void_p(self.address), FUTEX_WAKE, 1,
                               None, None, 0)
        if result == -1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), "futex(FUTEX_WAKE)")
        return result


def wait_until(word, done, peer_alive, deadline):
    """Waits until done(word.load()), in one-second futex slices; between them, peer_alive() (a
    liveness probe) and the deadline (monotonic seconds, or None). Returns "yes", "gone" or
    "timeout", like the C++ memfd::wait_until()."""
    while True:
        value = word.load()
        if done(value):
            return "yes"
        if peer_alive is not None and not peer_alive():
            return "gone"
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        word.wait(value, 1.0)


# --- OFD locks: fcntl(2) F_OFD_SETLK / F_OFD_GETLK with a packed struct flock ---------------------
# struct flock { short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid; }: in
# native alignment ("@") the two off_t start at offset 8, and the struct is padded to 32 bytes
# (x86-64, arm64; 32-bit ARM passes struct flock64, of the same layout, for the F_OFD_* commands).
_FLOCK = "@hhqqi4x"


def ofd_lock(fd, lock_type, start, length, command):
    """Returns the l_type the kernel answered (F_OFD_GETLK) or raises OSError (F_OFD_SETLK)."""
    request = struct.pack(_FLOCK, lock_type, os.SEEK_SET, start, length, 0)  # l_pid must be 0
    answer = fcntl.fcntl(fd, command, request)
    return struct.unpack(_FLOCK, answer)[0]


def lock_held(fd, start, length):
    """True while another open file description holds a lock on [start, start + length)."""
    return ofd_lock(fd, fcntl.F_WRLCK, start, length, fcntl.F_OFD_GETLK) != fcntl.F_UNLCK


def seals_text(seals):
    names = [(fcntl.F_SEAL_SEAL, "F_SEAL_SEAL"), (fcntl.F_SEAL_SHRINK, "F_SEAL_SHRINK"),
             (fcntl.F_SEAL_GROW, "F_SEAL_GROW"), (fcntl.F_SEAL_WRITE, "F_SEAL_WRITE"),
             (0x0010, "F_SEAL_FUTURE_WRITE"), (0x0020, "F_SEAL_EXEC")]
    parts = [name for bit, name in names if seals & bit]
    return "|".join(parts) if parts else "0"


def process_exited(pidfd):
    """A pidfd becomes readable when its process exits (pidfd_open(2))."""
    return bool(select.select([pidfd], [], [], 0)[0])


def write_all(data):
    """Writes bytes to standard output, the data channel, whole."""
    view = memoryview(data)
    while view:
        written = os.write(sys.stdout.fileno(), view)
        view = view[written:]


def parse_timeout(text):
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout wants a number of seconds, not '{text}'") from None
    if value <= 0:
        raise UsageError("--timeout wants a number of seconds above 0")
    return value


def run_main(role, usage, body):
    """main(): turns failures into one line and an exit status, as the C++ run_main() does."""
    try:
        return body()
    except UsageError as error:
        sys.stderr.write(f"{role}: {error}\nTry '{role} --help'.\n")
        return EXIT_USAGE
    except (Failure, OSError) as error:
        sys.stderr.write(f"{role}: {error}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        sys.stderr.write(f"{role}: interrupted\n")
        return EXIT_FAILURE
