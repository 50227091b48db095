#!/usr/bin/env python3
"""Chapter 04's writer in Python: a sealed memfd handed over a Unix socket (SCM_RIGHTS).

    python3 interop/python/fdpass_writer.py --name /tmp/demo.sock hello    # this writer
    build/04-fd-passing/reader --name /tmp/demo.sock                        # the C++ reader

Listens, accepts one reader, checks it (SO_PEERCRED, same user), waits for its HELLO, answers
MEMORY with the memfd (socket.send_fds), then BLOCK / CONSUMED per block and END / CONSUMED.
It serves one reader and then ends (the C++ writer also answers a second reader with BUSY).
--break makes it break the protocol on purpose, to show the C++ reader refusing it.
"""

import fcntl
import mmap
import os
import socket
import sys
import time

import fdpass
import shmtut

USAGE = """Usage: fdpass_writer.py [--name PATH|@NAME] [--timeout SECONDS] [--quiet] [--break WHAT] [MESSAGE...]

Chapter 04's writer in Python. Sends each MESSAGE followed by a newline, or standard input.
  --name PATH|@NAME  the socket to listen on (default /tmp/shm-tutorial-04.sock)
  --timeout SECONDS  how long to wait for a reader (default 60)
  --quiet            no narration on standard error
  --break WHAT       break the protocol on purpose: unsealed (a memfd without seals),
                     two-fds (MEMORY with two descriptors), no-fd (MEMORY without one),
                     pipe (a pipe instead of a memfd), long-block (a BLOCK longer than the
                     capacity), version (protocol version 1)
  --help             show this help
"""

ROLE = "fdpass_writer.py"
BREAKS = ("unsealed", "two-fds", "no-fd", "pipe", "long-block", "version")


def parse(argv):
    options = {"timeout": 60.0, "quiet": False, "name": fdpass.DEFAULT_NAME, "break": None, "messages": []}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--help":
            sys.stdout.write(USAGE)
            sys.exit(0)
        elif arg == "--quiet":
            options["quiet"] = True
        elif arg in ("--timeout", "--name", "--break"):
            if not args:
                raise shmtut.UsageError(f"{arg} needs a value")
            value = args.pop(0)
            if arg == "--timeout":
                options["timeout"] = shmtut.parse_timeout(value)
            elif arg == "--name":
                options["name"] = value
            elif value not in BREAKS:
                raise shmtut.UsageError(f"--break wants one of {', '.join(BREAKS)}, not '{value}'")
            else:
                options["break"] = value
        elif arg.startswith("--"):
            raise shmtut.UsageError(f"unknown option {arg}")
        else:
            options["messages"].append(arg)
    return options


def pieces(messages, capacity):
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


def accept_reader(listener, deadline, say):
    """One connection from this user that says HELLO, bounded by the deadline."""
    listener.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        connection, _ = listener.accept()
    except socket.timeout:
        raise shmtut.Failure("no reader connected within the timeout") from None
    pid, uid, _ = fdpass.peer_credentials(connection)
    if uid != os.geteuid():
        connection.close()
        raise shmtut.Failure(f"a process of uid {uid} connected (pid {pid}): not this user, refused")
    say.say(f"accept() = {connection.fileno()}; getsockopt(SO_PEERCRED): pid={pid} uid={uid}, the same user")
    kind, _, fds = fdpass.receive_message(connection, deadline, "HELLO")
    for fd in fds:
        os.close(fd)
    if kind != fdpass.HELLO or fds:
        connection.close()
        raise shmtut.Failure(f"the reader sent {fdpass.type_name(kind)} instead of HELLO: refused")
    return connection


def run(options):
    say = shmtut.Narrator("writer", options["quiet"])
    broken = options["break"]
    capacity = shmtut.DEFAULT_CAPACITY
    size = shmtut.HEADER_SIZE + capacity
    memfd = os.memfd_create("shm-tutorial-04-py", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, size)
    if broken != "unsealed":
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    mapping = mmap.mmap(memfd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    header = shmtut.Header(mapping)
    header.publish(capacity, os.getpid())
    say.say(f"memfd_create = {memfd}, {size} bytes, sealed {'nothing' if broken == 'unsealed' else 'shrink|grow|seal'}, "
            "header published")

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    name = options["name"]
    path = None if name.startswith("@") else name
    try:
        listener.bind(fdpass.address(name))
        if path:
            os.chmod(path, 0o600)
        listener.listen(1)
        say.say(f'bind("{name}"), listen = 0: waiting up to {options["timeout"]:g} s for a reader')
        connection = accept_reader(listener, time.monotonic() + options["timeout"], say)
        with connection:
            if broken == "version":
                connection.sendall(fdpass.MESSAGE.pack(fdpass.MAGIC, 1, fdpass.MEMORY, 0))
            elif broken == "no-fd":
                fdpass.send_message(connection, fdpass.MEMORY)
            elif broken == "two-fds":
                fdpass.send_message(connection, fdpass.MEMORY, fds=[memfd, memfd])
            elif broken == "pipe":
                read_end, write_end = os.pipe()
                fdpass.send_message(connection, fdpass.MEMORY, fds=[read_end])
                os.close(read_end)
                os.close(write_end)
            else:
                fdpass.send_message(connection, fdpass.MEMORY, fds=[memfd])
            say.say(f"sendmsg(MEMORY + SCM_RIGHTS [{memfd}]) = 16: the memfd is on its way")
            data_area = memoryview(mapping)[shmtut.HEADER_SIZE:]
            try:
                total = blocks = 0
                for piece in pieces(options["messages"], capacity):
                    data_area[:len(piece)] = piece
                    length = capacity + 1 if broken == "long-block" else len(piece)
                    fdpass.send_message(connection, fdpass.BLOCK, length)
                    kind, _, fds = fdpass.receive_message(connection, None, "CONSUMED")
                    for fd in fds:
                        os.close(fd)
                    if kind != fdpass.CONSUMED or fds:
                        raise shmtut.Failure(f"the reader sent {fdpass.type_name(kind)} instead of CONSUMED")
                    total += len(piece)
                    blocks += 1
                fdpass.send_message(connection, fdpass.END)
                kind, _, fds = fdpass.receive_message(connection, time.monotonic() + options["timeout"], "CONSUMED")
                for fd in fds:
                    os.close(fd)
                if kind != fdpass.CONSUMED:
                    raise shmtut.Failure(f"the reader sent {fdpass.type_name(kind)} instead of CONSUMED")
                say.say(f"{total} bytes in {blocks} block(s); END; the reader confirmed")
            finally:
                data_area.release()
    finally:
        listener.close()
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        header.release()
        mapping.close()
        os.close(memfd)
    return shmtut.EXIT_SUCCESS


if __name__ == "__main__":
    sys.exit(shmtut.run_main(ROLE, USAGE, lambda: run(parse(sys.argv[1:]))))
