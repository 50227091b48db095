#!/usr/bin/env python3
"""Chapter 02's reader in Python: the header and the data of a POSIX shared memory object.

    build/02-posix-mmap/writer --name /demo hello                 # the C++ writer
    python3 interop/python/posix_reader.py --name /demo           # instead of the C++ reader

Everything the layout documents is plain bytes that Python reads with a memoryview: the header,
the data, reader_pid, and the OFD lock bytes (the writer's byte 0, the reader's byte 1). The three
semaphores are not: a glibc sem_t is 32 bytes of glibc's private state (16 on 32-bit ARM), and
what a post must do (increment the count, and FUTEX_WAKE only if its private waiter count says
someone sleeps) is glibc's business. This is what that costs a peer in another language:

- It cannot wait on block_ready: it polls the header's sequence number instead, with a short
  sleep (1 ms growing to 20 ms), so it wakes late and burns a little CPU, and it must still check
  the writer's lock byte once a second to notice a dead writer.
- It cannot post by itself, and the C++ writer sleeps in sem_clockwait, so the one thing left is
  to hand the semaphore's address to glibc's own sem_post through ctypes. That works only because
  this python3 is linked against the same glibc, with the same word size, as the writer: a
  Python on musl, or a 32-bit one next to a 64-bit writer, would corrupt the semaphore. Chapter
  03 replaces the semaphores with futex words whose layout is documented, for that reason.

Python cannot recover from SIGBUS either (chapter 02's reader catches a fault in a shrunk object
with a handler; a Python handler runs too late, after the faulting C code returned): an object
shrunk under this reader kills it. A memfd sealed against shrinking (chapter 03) cannot do that.
"""

import ctypes
import fcntl
import mmap
import os
import stat
import sys
import time

import shmtut

USAGE = """Usage: posix_reader.py --name /NAME [--timeout SECONDS] [--quiet]

Chapter 02's reader in Python. Opens the POSIX shared memory object /NAME (/dev/shm/NAME),
claims it and writes every byte of the stream to standard output.
  --name /NAME       the object's name, as the writer was given it
  --timeout SECONDS  how long to wait for the object and its header (default 60)
  --quiet            no narration on standard error
  --help             show this help
"""

ROLE = "posix_reader.py"
BLOCK_READY, BLOCK_FREE, READER_PID, CLAIMED = (shmtut.CHAPTER_AREA + offset for offset in (0, 64, 96, 128))
WRITER_LOCK_BYTE, READER_LOCK_BYTE = 0, 1
KEPT_FLAG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def sem_post(mapping, offset, name, say=None):
    """glibc's sem_post(3) on the sem_t at `offset`: the only way to post it (see above)."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(mapping, offset))
    if _libc.sem_post(ctypes.c_void_p(address)) == -1:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), f"sem_post({name})")
    if say:
        say.say(f"sem_post({name}) = 0, through glibc's own sem_post (ctypes): the sem_t is opaque to Python")


def parse(argv):
    options = {"timeout": 60.0, "quiet": False, "name": None}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--help":
            sys.stdout.write(USAGE)
            sys.exit(0)
        elif arg == "--quiet":
            options["quiet"] = True
        elif arg in ("--timeout", "--name"):
            if not args:
                raise shmtut.UsageError(f"{arg} needs a value")
            value = args.pop(0)
            if arg == "--timeout":
                options["timeout"] = shmtut.parse_timeout(value)
            elif not value.startswith("/") or "/" in value[1:] or len(value) < 2:
                raise shmtut.UsageError(f"--name wants /NAME with no other slash, not '{value}'")
            else:
                options["name"] = value
        else:
            raise shmtut.UsageError(f"unknown argument {arg}")
    if options["name"] is None:
        raise shmtut.UsageError("--name /NAME is needed")
    return options


def open_object(name, deadline, say):
    """shm_open(name, O_RDWR) is open("/dev/shm" + name) with O_NOFOLLOW|O_CLOEXEC in glibc; waits
    (bounded) for the object to exist and be sized."""
    path = "/dev/shm" + name
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        if fd != -1:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                os.close(fd)
                raise shmtut.Failure(f"{path} is not a regular file of this user: refusing it")
            if info.st_size >= shmtut.HEADER_SIZE:
                say.say(f'open("{path}", O_RDWR|O_NOFOLLOW) = {fd}; fstat: size={info.st_size}')
                return fd, info.st_size
            os.close(fd)  # not sized yet: the writer is between shm_open and ftruncate
        if time.monotonic() >= deadline:
            raise shmtut.Failure(f"{path}: no object ready within the timeout: is the writer running?")
        time.sleep(0.05)


def run(options):
    say = shmtut.Narrator("reader", options["quiet"])
    deadline = time.monotonic() + options["timeout"]
    fd, size = open_object(options["name"], deadline, say)
    mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    header = shmtut.Header(mapping)
    reader_pid = shmtut.FutexWord(mapping, READER_PID)  # a plain 32-bit word; no futex on it here
    try:
        while header.load32(shmtut.MAGIC) == 0:
            if time.monotonic() >= deadline:
                raise shmtut.Failure("the writer did not publish the header within the timeout")
            time.sleep(0.01)
        first = header.snapshot()
        shmtut.validate_header(first, size)
        capacity = first["data_capacity"]
        say.say(f"header valid: magic=0x{first['magic']:08x} version={first['version']} data_capacity={capacity} "
                f"writer_pid={first['writer_pid']} (as the writer says)")
        if first["flags"] & KEPT_FLAG:
            raise shmtut.Failure(f"{options['name']} holds a stream that is over (--keep): no writer is running there")

        def writer_alive():
            return shmtut.lock_held(fd, WRITER_LOCK_BYTE, 1)

        if not writer_alive():
            raise shmtut.Failure("no writer holds the object (its lock byte is free): the writer died")
        say.say(f"fcntl(fd={fd}, F_OFD_GETLK, byte 0): locked: the writer lives")
        try:
            shmtut.ofd_lock(fd, fcntl.F_WRLCK, READER_LOCK_BYTE, 1, fcntl.F_OFD_SETLK)
        except OSError as error:
            if error.errno in (11, 13):  # EAGAIN, EACCES
                raise shmtut.Failure("another reader has already claimed this object") from None
            raise
        say.say(f"fcntl(fd={fd}, F_OFD_SETLK, F_WRLCK byte 1) = 0: held while the reader lives")
        if reader_pid.load() != 0:  # no compare-and-swap in Python: the lock above is the claim
            raise shmtut.Failure(f"another reader (pid {reader_pid.load()}) has already claimed this object")
        reader_pid.store(os.getpid())
        sem_post(mapping, CLAIMED, "claimed", say)

        total = 0
        expected = 1
        pause = 0.001
        last_check = time.monotonic()
        polls = 0
        while True:
            # Polling instead of sem_wait(block_ready): the sequence number is stored last.
            while header.load64(shmtut.SEQUENCE) != expected:
                if time.monotonic() - last_check >= 1.0:
                    if not writer_alive():
                        raise shmtut.Failure("the writer died before the end of the stream (its lock byte is free)")
                    last_check = time.monotonic()
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
                polls += 1
            pause = 0.001
            block = header.snapshot()
            shmtut.validate_block(block, capacity, expected)
            length = block["block_length"]
            shmtut.write_all(mapping[shmtut.HEADER_SIZE:shmtut.HEADER_SIZE + length])
            total += length
            sem_post(mapping, BLOCK_FREE, "block_free")  # the data area is free again, or: confirmed
            if block["end_of_stream"]:
                say.say(f"end of stream: {total} bytes in {expected - 1} block(s), found by polling the sequence "
                        f"number ({polls} sleeps); confirmed with sem_post(block_free)")
                return shmtut.EXIT_SUCCESS
            expected += 1
    finally:
        reader_pid.release()
        header.release()
        mapping.close()
        os.close(fd)


if __name__ == "__main__":
    sys.exit(shmtut.run_main(ROLE, USAGE, lambda: run(parse(sys.argv[1:]))))
