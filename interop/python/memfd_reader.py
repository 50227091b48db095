#!/usr/bin/env python3
"""Chapter 03's reader in Python: takes the writer's memfd through /proc/PID/fd/N.

    build/03-memfd/writer hello memfd                          # prints "reader --pid P --fd N"
    python3 interop/python/memfd_reader.py --pid P --fd N      # instead of the C++ reader

The same order as 03-memfd/reader.cpp: pidfd_open(PID) first (a pid is only a number), then the
descriptor, then the pidfd must still say alive; seals before the size (F_GET_SEALS, then fstat,
then readlink says /memfd:); the claim is an OFD write lock on the whole memfd, taken on an open
file description of our own (/proc/self/fd/N). Waits are FUTEX_WAIT through ctypes, in one-second
slices with the writer's pidfd checked in between.
"""

import fcntl
import mmap
import os
import stat
import sys
import time

import shmtut

USAGE = """Usage: memfd_reader.py --pid PID --fd N [--timeout SECONDS] [--quiet] [--break nolock]

Chapter 03's reader in Python. Opens the writer's descriptor N through /proc/PID/fd/N and
writes every byte of the stream to standard output.
  --pid PID          the writer's process id (the writer prints the command)
  --fd N             the writer's descriptor number
  --timeout SECONDS  how long to wait for the header to be published (default 60)
  --quiet            no narration on standard error
  --break nolock     break the protocol on purpose: claim with the pid word only, without the
                     lock (the writer must refuse such a claim)
  --help             show this help
"""

ROLE = "memfd_reader.py"
PUBLISHED, CONSUMED, READER_PID = shmtut.CHAPTER_AREA + 0, shmtut.CHAPTER_AREA + 64, shmtut.CHAPTER_AREA + 68
REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def parse(argv):
    options = {"timeout": 60.0, "quiet": False, "pid": None, "fd": None, "break": None}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--help":
            sys.stdout.write(USAGE)
            sys.exit(0)
        elif arg == "--quiet":
            options["quiet"] = True
        elif arg in ("--timeout", "--pid", "--fd", "--break"):
            if not args:
                raise shmtut.UsageError(f"{arg} needs a value")
            value = args.pop(0)
            if arg == "--break":
                if value != "nolock":
                    raise shmtut.UsageError(f"--break wants nolock, not '{value}'")
                options["break"] = value
            elif arg == "--timeout":
                options["timeout"] = shmtut.parse_timeout(value)
            elif not value.isdigit() or (arg == "--pid" and int(value) == 0):
                raise shmtut.UsageError(f"{arg} wants a number, not '{value}'")
            else:
                options[arg[2:]] = int(value)
        else:
            raise shmtut.UsageError(f"unknown argument {arg}")
    if options["pid"] is None or options["fd"] is None:
        raise shmtut.UsageError("--pid and --fd are both needed (the writer prints them)")
    return options


def get_descriptor(pid, number, say):
    """pidfd first, then the descriptor, then the pidfd must still say alive."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise shmtut.Failure(f"no process {pid}: start the writer first; it prints the command to run") from None
    say.say(f"pidfd_open({pid}) = {pidfd}: holding the writer process before taking its descriptor")
    path = f"/proc/{pid}/fd/{number}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except BaseException:
        os.close(pidfd)
        raise
    if shmtut.process_exited(pidfd):
        os.close(fd)
        os.close(pidfd)
        raise shmtut.Failure(f"the writer (pid {pid}) exited while its descriptor was being opened: refusing it")
    say.say(f'open("{path}", O_RDWR) = {fd}; the writer is still alive, so the descriptor is its own')
    return fd, pidfd


def check_descriptor(fd, say):
    """Seals first (once F_SEAL_SHRINK|F_SEAL_GROW are in, the size cannot change), then the size,
    then what it is. Returns the size."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as error:
        raise shmtut.Failure(f"fcntl(fd={fd}, F_GET_SEALS): {error.strerror}: not a memfd: refusing it") from None
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise shmtut.Failure(f"descriptor {fd} has seals {shmtut.seals_text(seals)}, needs "
                             f"{shmtut.seals_text(REQUIRED_SEALS)}: refusing it")
    say.say(f"fcntl(fd={fd}, F_GET_SEALS) = {shmtut.seals_text(seals)}")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size < shmtut.HEADER_SIZE:
        raise shmtut.Failure(f"descriptor {fd} is not a regular file of at least {shmtut.HEADER_SIZE} bytes: "
                             "refusing it")
    say.say(f"fstat(fd={fd}) = 0: a regular file of {info.st_size} bytes")
    link = os.readlink(f"/proc/self/fd/{fd}")
    if not link.startswith("/memfd:"):
        raise shmtut.Failure(f"descriptor {fd} is {link}, not a memfd: refusing it")
    say.say(f'readlink("/proc/self/fd/{fd}") = "{link}": a memfd')
    return info.st_size


def claim(fd, reader_pid, say):
    """The claim: an OFD write lock on the whole memfd, on an open file description of our own
    (an inherited or dup'ed descriptor would share the writer's, where its probe cannot see the
    lock). Then the pid word, which only wakes the writer. Python has no compare-and-swap: the
    lock is what makes the claim exclusive (a second reader's F_OFD_SETLK fails), so a plain
    store of the pid, after the lock, is enough here."""
    claim_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    try:
        shmtut.ofd_lock(claim_fd, fcntl.F_WRLCK, 0, 0, fcntl.F_OFD_SETLK)
    except OSError as error:
        os.close(claim_fd)
        if error.errno in (11, 13):  # EAGAIN, EACCES
            raise shmtut.Failure("another reader has already claimed this memory (it holds the claim lock)") from None
        raise
    say.say(f'open("/proc/self/fd/{fd}", O_RDWR) = {claim_fd}; fcntl(fd={claim_fd}, F_OFD_SETLK, F_WRLCK whole '
            "file) = 0: the claim")
    if reader_pid.load() != 0:
        os.close(claim_fd)
        raise shmtut.Failure(f"another reader (pid {reader_pid.load()}) has already claimed this memory")
    reader_pid.store(os.getpid())
    woken = reader_pid.wake()
    say.say(f"reader_pid = {os.getpid()}; futex(reader_pid, FUTEX_WAKE) = {woken}: claimed")
    return claim_fd


def run(options):
    say = shmtut.Narrator("reader", options["quiet"])
    pid = options["pid"]
    fd, pidfd = get_descriptor(pid, options["fd"], say)
    try:
        size = check_descriptor(fd, say)
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        os.close(pidfd)
        raise
    say.say(f"mmap(NULL, {size}, PROT_READ|PROT_WRITE, MAP_SHARED, fd={fd}, 0) done")
    header = shmtut.Header(mapping)
    published = shmtut.FutexWord(mapping, PUBLISHED)
    consumed = shmtut.FutexWord(mapping, CONSUMED)
    reader_pid = shmtut.FutexWord(mapping, READER_PID)
    claim_fd = -1
    try:
        deadline = time.monotonic() + options["timeout"]
        while header.load32(shmtut.MAGIC) == 0:
            if time.monotonic() >= deadline:
                raise shmtut.Failure(f"the writer did not publish the header within {options['timeout']:g} s")
            if shmtut.process_exited(pidfd):
                raise shmtut.Failure(f"the writer (pid {pid}) died before the stream started")
            time.sleep(0.01)
        first = header.snapshot()  # one copy, validated; from here on only the copy is used
        shmtut.validate_header(first, size)
        if first["writer_pid"] != pid:
            raise shmtut.Failure(f"the header names writer pid {first['writer_pid']}, but the descriptor came from "
                                 f"pid {pid}: refusing it")
        capacity = first["data_capacity"]
        say.say(f"header valid: magic=0x{first['magic']:08x} version={first['version']} data_capacity={capacity}")
        if options["break"] == "nolock":
            reader_pid.store(os.getpid())
            reader_pid.wake()
            say.say("--break nolock: reader_pid stored and woken, no claim lock taken; waiting for the writer's verdict")
            while not shmtut.process_exited(pidfd):
                time.sleep(0.05)
            raise shmtut.Failure("the writer exited: it refused a claim without a lock")
        claim_fd = claim(fd, reader_pid, say)

        def writer_alive():
            return not shmtut.process_exited(pidfd)

        total = 0
        expected = 1
        while True:
            if shmtut.wait_until(published, lambda p: p == expected, writer_alive, None) != "yes":
                raise shmtut.Failure(f"the writer (pid {pid}) died before the end of the stream")
            block = header.snapshot()
            shmtut.validate_block(block, capacity, expected)
            length = block["block_length"]
            shmtut.write_all(mapping[shmtut.HEADER_SIZE:shmtut.HEADER_SIZE + length])  # a copy, then out
            total += length
            consumed.store(expected)
            consumed.wake()
            if block["end_of_stream"]:
                say.say(f"end of stream: {total} bytes in {expected - 1} block(s); confirmed with "
                        "futex(consumed, FUTEX_WAKE)")
                return shmtut.EXIT_SUCCESS
            expected += 1
    finally:
        for word in (published, consumed, reader_pid):
            word.release()
        header.release()
        mapping.close()
        os.close(fd)
        os.close(pidfd)
        if claim_fd != -1:
            os.close(claim_fd)


if __name__ == "__main__":
    sys.exit(shmtut.run_main(ROLE, USAGE, lambda: run(parse(sys.argv[1:]))))
