"""Chapter 04's wire protocol in Python: 16-byte messages on a Unix stream socket, the memfd as
SCM_RIGHTS (socket.send_fds to send; sock.recvmsg to receive, see receive_message()).

    offset size field    values
    0      4    magic    the bytes S H M 4
    4      2    version  2
    6      2    type     1 HELLO (reader), 2 MEMORY (writer, carries the memfd), 3 BLOCK (writer),
                         4 END (writer), 5 CONSUMED (reader), 6 BUSY (writer, to a second reader)
    8      8    length   BLOCK: bytes at offset 256 of the memory; otherwise 0

Integers little-endian. The conversation: HELLO; MEMORY + exactly one descriptor; (BLOCK,
CONSUMED)*; END, CONSUMED.
"""

import os
import select
import socket
import struct
import time

import shmtut

MAGIC = b"SHM4"
VERSION = 2
HELLO, MEMORY, BLOCK, END, CONSUMED, BUSY = 1, 2, 3, 4, 5, 6
NAMES = {HELLO: "HELLO", MEMORY: "MEMORY", BLOCK: "BLOCK", END: "END", CONSUMED: "CONSUMED", BUSY: "BUSY"}
MESSAGE = struct.Struct("<4sHHQ")
DEFAULT_NAME = "/tmp/shm-tutorial-04.sock"
FD_SIZE = struct.calcsize("i")


def address(name):
    """A socket path, or "@NAME" in the abstract namespace (a leading zero byte, no file)."""
    return "\0" + name[1:] if name.startswith("@") else name


def encode(kind, length=0):
    return MESSAGE.pack(MAGIC, VERSION, kind, length)


def type_name(kind):
    return NAMES.get(kind, f"type {kind}")


def send_message(connection, kind, length=0, fds=()):
    """One message; with fds, they travel as SCM_RIGHTS with it (sendmsg(2))."""
    if fds:
        socket.send_fds(connection, [encode(kind, length)], list(fds))
    else:
        connection.sendall(encode(kind, length))


def receive_message(connection, deadline, what):
    """One whole message and every descriptor that came with it, with the C++ reader's checks:
    the descriptors are owned (closed on any refusal), MSG_CTRUNC is refused, so is a descriptor
    with a later piece of the message (a stream socket may deliver 16 bytes in pieces).
    deadline: monotonic seconds, or None (as long as the peer lives). Returns (type, length, fds)."""
    data = b""
    fds = []
    try:
        while len(data) < MESSAGE.size:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            slice_seconds = 1.0 if remaining is None else min(1.0, remaining)
            if not select.select([connection], [], [], slice_seconds)[0]:
                if deadline is not None and time.monotonic() >= deadline:
                    raise shmtut.Failure(f"nothing came within the timeout (waiting for {what}): is it a peer?")
                continue
            # sock.recvmsg, not socket.recv_fds: recv_fds (Python 3.11) never passes its flags on,
            # so MSG_CMSG_CLOEXEC would be lost, and it sizes the buffer with CMSG_LEN, not
            # CMSG_SPACE. Room for one descriptor, as in the C++ reader (two fit on 64-bit
            # machines, by alignment: then both arrive, are counted and refused).
            piece, ancillary, flags, _ = connection.recvmsg(MESSAGE.size - len(data),
                                                            socket.CMSG_SPACE(FD_SIZE), socket.MSG_CMSG_CLOEXEC)
            received = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    whole = len(payload) - len(payload) % FD_SIZE
                    received.extend(struct.unpack(f"{whole // FD_SIZE}i", payload[:whole]))
            fds.extend(received)
            if not piece:
                raise shmtut.Failure(f"the peer closed the connection before {what}")
            if flags & socket.MSG_CTRUNC:
                raise shmtut.Failure(f"refused {what}: descriptors were dropped (MSG_CTRUNC); closed the "
                                     f"{len(fds)} that arrived")
            if data and received:
                raise shmtut.Failure(f"refused {what}: a descriptor came with a later piece of it; closed it")
            data += piece
        magic, version, kind, length = MESSAGE.unpack(data)
        if magic != MAGIC:
            raise shmtut.Failure(f"refused {what}: magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise shmtut.Failure(f"refused {what}: protocol version {version}, expected {VERSION}")
        return kind, length, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def peer_credentials(connection):
    """SO_PEERCRED: (pid, uid, gid) of the peer, as the kernel recorded them."""
    return struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
