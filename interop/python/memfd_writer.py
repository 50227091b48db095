#!/usr/bin/env python3
"""Chapter 03's writer in Python: a sealed memfd, the shared header, two futex words.

    python3 interop/python/memfd_writer.py hello memfd        # then run the command it prints:
    build/03-memfd/reader --pid PID --fd N                     # the C++ reader (or memfd_reader.py)

The same calls as 03-memfd/writer.cpp, from Python's standard library: os.memfd_create,
os.ftruncate, mmap, fcntl(F_ADD_SEALS); the futex through ctypes and syscall(SYS_futex), because
the C++ reader sleeps in FUTEX_WAIT and only a FUTEX_WAKE wakes it at once (a writer that only
stored the word would leave it asleep until its one-second slice ends, once per block); the
reader's liveness from its OFD lock (F_OFD_GETLK). --break makes it break the protocol on
purpose, to show the C++ reader refusing it.
"""

import fcntl
import mmap
import os
import sys
import time

import shmtut

USAGE = """Usage: memfd_writer.py [--timeout SECONDS] [--quiet] [--break WHAT] [MESSAGE...]

Chapter 03's writer in Python. Sends each MESSAGE followed by a newline, or standard input,
through a sealed memfd; prints the reader command to run in another terminal.
  --timeout SECONDS  how long to wait for a reader to claim the memory (default 60)
  --quiet            no narration on standard error
  --break WHAT       break the protocol on purpose: unsealed (no seals), magic (a wrong magic),
                     capacity (a capacity larger than the memfd), pid (another writer pid)
  --help             show this help
"""

ROLE = "memfd_writer.py"
PUBLISHED, CONSUMED, READER_PID = shmtut.CHAPTER_AREA + 0, shmtut.CHAPTER_AREA + 64, shmtut.CHAPTER_AREA + 68
BREAKS = ("unsealed", "magic", "capacity", "pid")


def parse(argv):
    options = {"timeout": 60.0, "quiet": False, "break": None, "messages": []}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--help":
            sys.stdout.write(USAGE)
            sys.exit(0)
        elif arg == "--quiet":
            options["quiet"] = True
        elif arg in ("--timeout", "--break"):
            if not args:
                raise shmtut.UsageError(f"{arg} needs a value")
            value = args.pop(0)
            if arg == "--timeout":
                options["timeout"] = shmtut.parse_timeout(value)
            elif value not in BREAKS:
                raise shmtut.UsageError(f"--break wants one of {', '.join(BREAKS)}, not '{value}'")
            else:
                options["break"] = value
        elif arg.startswith("--"):
            raise shmtut.UsageError(f"unknown option {arg}")
        else:
            options["messages"].append(arg)
    return options


def blocks_of_input(messages, capacity):
    """The stream in pieces of at most `capacity` bytes: the messages, or standard input."""
    if messages:
        data = b"".join(message.encode() + b"\n" for message in messages)
        for start in range(0, len(data), capacity):
            yield data[start:start + capacity]
        return
    while True:
        piece = os.read(sys.stdin.fileno(), capacity)
        if not piece:
            return
        yield piece


def run(options):
    say = shmtut.Narrator("writer", options["quiet"])
    broken = options["break"]
    capacity = shmtut.DEFAULT_CAPACITY
    size = shmtut.HEADER_SIZE + capacity

    # memfd_create(2): an anonymous file; MFD_ALLOW_SEALING, or it could never be sealed.
    fd = os.memfd_create("shm-tutorial-03-py", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    say.say(f'memfd_create("shm-tutorial-03-py", MFD_CLOEXEC|MFD_ALLOW_SEALING) = {fd}')
    os.ftruncate(fd, size)
    mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    say.say(f"ftruncate(fd={fd}, {size}) = 0; mmap(NULL, {size}, PROT_READ|PROT_WRITE, MAP_SHARED) done")
    if broken != "unsealed":
        # Before anyone else can hold it: from now on nobody can change the size.
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        say.say(f"fcntl(fd={fd}, F_ADD_SEALS, {shmtut.seals_text(seals)}) = 0")
    else:
        say.say("--break unsealed: no seals")

    header = shmtut.Header(mapping)
    published = shmtut.FutexWord(mapping, PUBLISHED)
    consumed = shmtut.FutexWord(mapping, CONSUMED)
    reader_pid = shmtut.FutexWord(mapping, READER_PID)
    try:
        header.publish(capacity * 2 if broken == "capacity" else capacity,
                       os.getpid() + 1 if broken == "pid" else os.getpid(),
                       magic=0x21444142 if broken == "magic" else shmtut.HEADER_MAGIC)
        say.say(f"header published: magic=0x{header.load32(shmtut.MAGIC):08x} version={shmtut.LAYOUT_VERSION} "
                f"data_capacity={header.load64(shmtut.DATA_CAPACITY)}")
        say.say(f"waiting up to {options['timeout']:g} s for a reader; in another terminal run:")
        say.say(f"    build/03-memfd/reader --pid {os.getpid()} --fd {fd}")

        deadline = time.monotonic() + options["timeout"]
        if shmtut.wait_until(reader_pid, lambda pid: pid != 0, None, deadline) != "yes":
            raise shmtut.Failure(f"no reader claimed the memory within {options['timeout']:g} s")
        # The pid word only woke us; the proof is the reader's lock on the whole memfd.
        if not shmtut.lock_held(fd, 0, 0):
            raise shmtut.Failure(f"reader_pid says {reader_pid.load()}, but no claim lock is held: refusing the claim")
        say.say(f"futex(reader_pid, FUTEX_WAIT) woke: reader pid {reader_pid.load()} (it says); "
                f"fcntl(fd={fd}, F_OFD_GETLK) = 0, l_type=F_WRLCK: its claim lock is held")

        def reader_alive():
            return shmtut.lock_held(fd, 0, 0)

        data_area = memoryview(mapping)[shmtut.HEADER_SIZE:]
        sequence = 0
        total = 0
        try:
            pieces = blocks_of_input(options["messages"], capacity)
            while True:
                previous = sequence
                if shmtut.wait_until(consumed, lambda c: c == previous, reader_alive, None) != "yes":
                    raise shmtut.Failure("the reader died before the end of the stream (the kernel released its lock)")
                piece = next(pieces, b"")
                data_area[:len(piece)] = piece
                sequence += 1
                header.publish_block(len(piece), sequence, not piece)
                published.store(sequence)  # last: the reader trusts the block once it sees this
                woken = published.wake()
                total += len(piece)
                if sequence == 1 and piece:
                    say.say(f"futex(published, FUTEX_WAKE) = {woken}: block 1, {len(piece)} bytes "
                            "(each further block goes the same way, quietly)")
                if not piece:
                    break
        finally:
            data_area.release()
        say.say(f"{total} bytes sent in {sequence - 1} block(s); end of stream sent (block {sequence}, empty)")
        deadline = time.monotonic() + options["timeout"]
        outcome = shmtut.wait_until(consumed, lambda c: c == sequence, reader_alive, deadline)
        if outcome == "gone":
            raise shmtut.Failure("the reader died before the end of the stream (the kernel released its lock)")
        if outcome == "timeout":
            raise shmtut.Failure("the reader did not confirm the end of the stream within the timeout")
        say.say("the reader confirmed the end of the stream")
    finally:
        for word in (published, consumed, reader_pid):
            word.release()
        header.release()
        mapping.close()
        os.close(fd)
    say.say("munmap, close: nothing to remove, a memfd has no name")
    return shmtut.EXIT_SUCCESS


if __name__ == "__main__":
    sys.exit(shmtut.run_main(ROLE, USAGE, lambda: run(parse(sys.argv[1:]))))
