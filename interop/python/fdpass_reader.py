#!/usr/bin/env python3
"""Chapter 04's reader in Python: asks the writer for its memfd over a Unix socket.

    build/04-fd-passing/writer --name /tmp/demo.sock hello           # the C++ writer
    python3 interop/python/fdpass_reader.py --name /tmp/demo.sock    # instead of the C++ reader

The C++ reader's checks, in its order: the writer's credentials (SO_PEERCRED, same user); the
memory as exactly one descriptor (socket.recv_fds), no MSG_CTRUNC; seals before size
(F_GET_SEALS, then fstat), a memfd (readlink); the header copied once and validated, its writer
pid the one the kernel named; every BLOCK length at most the validated capacity.
"""

import fcntl
import mmap
import os
import socket
import stat
import sys
import time

import fdpass
import shmtut

USAGE = """Usage: fdpass_reader.py [--name PATH|@NAME] [--timeout SECONDS] [--quiet]

Chapter 04's reader in Python. Connects to the writer's socket, receives the memfd and writes
every byte of the stream to standard output.
  --name PATH|@NAME  the writer's socket (default /tmp/shm-tutorial-04.sock)
  --timeout SECONDS  how long to wait for the writer and its memory (default 60)
  --quiet            no narration on standard error
  --help             show this help
"""

ROLE = "fdpass_reader.py"
REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def parse(argv):
    options = {"timeout": 60.0, "quiet": False, "name": fdpass.DEFAULT_NAME}
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
            else:
                options["name"] = value
        else:
            raise shmtut.UsageError(f"unknown argument {arg}")
    return options


def connect(name, deadline, say):
    """connect(2), retried every 50 ms while nobody listens yet, bounded by the deadline."""
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            connection.connect(fdpass.address(name))
            say.say(f'socket(AF_UNIX, SOCK_STREAM) = {connection.fileno()}; connect("{name}") = 0')
            return connection
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as error:
            connection.close()
            if time.monotonic() >= deadline:
                raise shmtut.Failure(f'connect("{name}"): {error.strerror}: is the writer running? start it first')
            time.sleep(0.05)
        except BaseException:
            connection.close()
            raise


def check_sealed_memfd(fd, say):
    """Seals first, then the size they froze, then what it is. Returns the size."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as error:
        raise shmtut.Failure(f"fcntl(F_GET_SEALS): {error.strerror}: not a memfd: refusing it") from None
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise shmtut.Failure(f"the descriptor has seals {shmtut.seals_text(seals)}, needs "
                             f"{shmtut.seals_text(REQUIRED_SEALS)}: refusing it")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size < shmtut.HEADER_SIZE:
        raise shmtut.Failure("the descriptor is not a regular file of at least a header: refusing it")
    link = os.readlink(f"/proc/self/fd/{fd}")
    if not link.startswith("/memfd:"):
        raise shmtut.Failure(f"the descriptor is {link}, not a memfd: refusing it")
    say.say(f"fcntl(F_GET_SEALS) = {shmtut.seals_text(seals)}; fstat: {info.st_size} bytes; readlink: {link}")
    return info.st_size


def run(options):
    say = shmtut.Narrator("reader", options["quiet"])
    deadline = time.monotonic() + options["timeout"]
    with connect(options["name"], deadline, say) as connection:
        writer_pid, uid, _ = fdpass.peer_credentials(connection)
        if uid != os.geteuid():
            raise shmtut.Failure(f"the process listening there (pid {writer_pid}) belongs to uid {uid}, not to this "
                                 "user: refusing it")
        say.say(f"getsockopt(SO_PEERCRED): pid={writer_pid} uid={uid}, the same user")
        fdpass.send_message(connection, fdpass.HELLO)
        say.say("send(HELLO) = 16: asked for the memory")
        kind, _, fds = fdpass.receive_message(connection, deadline, "the memory")
        if kind != fdpass.MEMORY or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            if kind == fdpass.BUSY:
                raise shmtut.Failure("another reader is already being served by this writer")
            if kind != fdpass.MEMORY:
                raise shmtut.Failure(f"refused: the writer sent {fdpass.type_name(kind)} instead of MEMORY")
            raise shmtut.Failure(f"refused: MEMORY came with {len(fds)} descriptors, expected exactly 1; closed them")
        memfd = fds[0]
        say.say(f"recvmsg: MEMORY, 1 descriptor (SCM_RIGHTS), no MSG_CTRUNC: fd {memfd}")
        try:
            size = check_sealed_memfd(memfd, say)
            mapping = mmap.mmap(memfd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(memfd)  # the mapping keeps the memory
        header = shmtut.Header(mapping)
        try:
            first = header.snapshot()
            shmtut.validate_header(first, size)
            if first["writer_pid"] != writer_pid:
                raise shmtut.Failure(f"the header names writer pid {first['writer_pid']}, but pid {writer_pid} sent it: "
                                     "refusing it")
            capacity = first["data_capacity"]
            say.say(f"header valid: magic=0x{first['magic']:08x} version={first['version']} data_capacity={capacity}")
            total = blocks = 0
            while True:
                kind, length, fds = fdpass.receive_message(connection, None, "the next message")
                if fds:
                    for fd in fds:
                        os.close(fd)
                    raise shmtut.Failure(f"refused: a descriptor came with {fdpass.type_name(kind)}; closed it")
                if kind == fdpass.END:
                    fdpass.send_message(connection, fdpass.CONSUMED)
                    say.say(f"recv(END); send(CONSUMED): {total} bytes in {blocks} block(s), confirmed")
                    return shmtut.EXIT_SUCCESS
                if kind != fdpass.BLOCK:
                    raise shmtut.Failure(f"refused: unexpected {fdpass.type_name(kind)} message")
                if length > capacity:
                    raise shmtut.Failure(f"block refused: length {length} exceeds the data capacity {capacity}")
                shmtut.write_all(mapping[shmtut.HEADER_SIZE:shmtut.HEADER_SIZE + length])
                fdpass.send_message(connection, fdpass.CONSUMED)
                total += length
                blocks += 1
        finally:
            header.release()
            mapping.close()


if __name__ == "__main__":
    sys.exit(shmtut.run_main(ROLE, USAGE, lambda: run(parse(sys.argv[1:]))))
