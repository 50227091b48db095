//! Chapter 04's reader in Rust: connects to the C++ writer's Unix socket, asks for the memory,
//! receives the sealed memfd as `SCM_RIGHTS` in a control message it builds itself with the libc
//! crate (`CMSG_SPACE`, `CMSG_FIRSTHDR`, `CMSG_NXTHDR`, `CMSG_DATA`), checks it as the C++ reader
//! does, maps it and copies every block to standard output.
//!
//!     build/04-fd-passing/writer --name /tmp/demo.sock hello         # the C++ writer
//!     build/interop/rust/release/fdpass_reader --name /tmp/demo.sock # this reader
//!
//! The receiver's checks, in the C++ reader's order: the writer's credentials (`SO_PEERCRED`,
//! same user); exactly one descriptor, counted from `cmsg_len`, every one owned (closed) whatever
//! else is wrong, and no `MSG_CTRUNC`; the seals before the size (`F_GET_SEALS`, then `fstat`);
//! a memfd (`/proc/self/fd/N` says `/memfd:`); the header copied once and validated against the
//! real size; each block's length at most the validated capacity. Like the C++ reader it does
//! not compare the header's writer pid with the pid `SO_PEERCRED` names: the connection is the
//! proof of who sent the memory, and a writer in another pid namespace (a container) writes its
//! own pid there, another number. A writer that closes the connection is reported as gone and
//! its stale socket file removed. The wire protocol is in 04-fd-passing/README.md: 16-byte messages,
//! little-endian: magic `SHM4`, version 2 (u16), type (u16), length (u64).

use std::io::{self, Write};
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

mod common;
use common::{fail, say, Error, Options, HEADER_SIZE};

const MAGIC: &[u8; 4] = b"SHM4";
const PROTOCOL_VERSION: u16 = 2;
const HELLO: u16 = 1;
const MEMORY: u16 = 2;
const BLOCK: u16 = 3;
const END: u16 = 4;
const CONSUMED: u16 = 5;
const BUSY: u16 = 6;

const DEFAULT_NAME: &str = "/tmp/shm-tutorial-04.sock";

const USAGE: &str = "Usage: fdpass_reader [--name PATH|@NAME] [--timeout SECONDS] [--quiet]

Chapter 04's reader in Rust. Connects to the writer's socket, receives the memfd (SCM_RIGHTS)
and writes every byte of the stream to standard output.
  --name PATH|@NAME  the writer's socket: a path, or @NAME in the abstract namespace
                     (default /tmp/shm-tutorial-04.sock)
  --timeout SECONDS  how long to wait for the writer and its memory (default 60)
  --quiet            no narration on standard error
  --help             show this help
";

/// One 16-byte message, little-endian.
fn encode(kind: u16, length: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(MAGIC);
    bytes[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bytes[6..8].copy_from_slice(&kind.to_le_bytes());
    bytes[8..16].copy_from_slice(&length.to_le_bytes());
    bytes
}

fn type_name(kind: u16) -> String {
    match kind {
        HELLO => "HELLO".into(),
        MEMORY => "MEMORY".into(),
        BLOCK => "BLOCK".into(),
        END => "END".into(),
        CONSUMED => "CONSUMED".into(),
        BUSY => "BUSY".into(),
        other => format!("type {}", other),
    }
}

/// send(2) of one message; MSG_NOSIGNAL: a closed peer is EPIPE (the writer is gone), not SIGPIPE.
fn send_message(socket: RawFd, kind: u16) -> Result<(), Error> {
    common::send_bytes(socket, &encode(kind, 0), &format!("send(fd={}, {})", socket, type_name(kind)))
}

/// What one recvmsg loop delivered: the message's fields and every descriptor that came with it.
struct Received {
    kind: u16,
    length: u64,
    descriptors: Vec<OwnedFd>,
}

/// Receives one whole 16-byte message and every descriptor that came with it (common.rs builds
/// the control message), then checks the framing: magic and protocol version.
fn receive_message(socket: RawFd, deadline: Option<Instant>, what: &str) -> Result<Received, Error> {
    let mut bytes = [0u8; 16];
    let descriptors = common::receive_exact(socket, &mut bytes, deadline, what)?;
    if &bytes[0..4] != MAGIC {
        return fail(format!("refused {}: magic {:?}, expected SHM4", what, &bytes[0..4]));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return fail(format!("refused {}: protocol version {}, expected {}", what, version, PROTOCOL_VERSION));
    }
    let kind = u16::from_le_bytes([bytes[6], bytes[7]]);
    let length = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Ok(Received { kind, length, descriptors })
}

/// Asks for the memory and receives it: a MEMORY message with exactly one descriptor.
fn receive_memory(fd: RawFd, deadline: Instant, options: &Options) -> Result<OwnedFd, Error> {
    send_message(fd, HELLO)?;
    say(options, format!("send(fd={}, HELLO) = 16: asked for the memory", fd));
    let mut got = receive_message(fd, Some(deadline), "the memory")?;
    if got.kind == BUSY {
        return fail("another reader is already being served by this writer: one writer serves one reader");
    }
    if got.kind != MEMORY {
        return fail(format!("refused: the writer sent {} instead of MEMORY", type_name(got.kind)));
    }
    if got.descriptors.len() != 1 {
        return fail(format!("refused: MEMORY came with {} descriptors, expected exactly 1; closed them",
                            got.descriptors.len()));
    }
    let memory = got.descriptors.pop().expect("one descriptor");
    say(options, format!("recvmsg(fd={}, MSG_CMSG_CLOEXEC) = 16: MEMORY, 1 descriptor (SCM_RIGHTS), no MSG_CTRUNC: \
                          fd {}", fd, memory.as_raw_fd()));
    Ok(memory)
}

/// Copies every block to standard output, confirms each, and confirms the end.
fn copy_stream(fd: RawFd, mapping: &common::Mapping, capacity: u64, options: &Options) -> Result<(), Error> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut buffer = Vec::new();
    let (mut blocks, mut total) = (0u64, 0u64);
    loop {
        let got = receive_message(fd, None, "the next message")?;
        if !got.descriptors.is_empty() {
            return fail(format!("refused: a descriptor came with {}; closed it", type_name(got.kind)));
        }
        match got.kind {
            END => {
                send_message(fd, CONSUMED)?;
                say(options, format!("recv(END); send(CONSUMED): {} bytes in {} block(s), confirmed", total, blocks));
                return Ok(());
            }
            BLOCK if got.length <= capacity => {
                let length = got.length as usize; // <= capacity < the mapped size: fits a usize
                buffer.resize(length, 0);
                // One copy out of the shared memory, then out to stdout.
                unsafe { std::ptr::copy_nonoverlapping(mapping.base.add(HEADER_SIZE as usize), buffer.as_mut_ptr(), length) };
                out.write_all(&buffer)?;
                out.flush()?;
                send_message(fd, CONSUMED)?;
                total += got.length;
                blocks += 1;
            }
            BLOCK => return fail(format!("block refused: length {} exceeds the data capacity {}", got.length, capacity)),
            other => return fail(format!("refused: unexpected {} message", type_name(other))),
        }
    }
}

fn run(options: &Options) -> Result<(), Error> {
    let socket = common::connect_to_writer(options)?;
    let fd = socket.as_raw_fd();
    // Same user, or refused. The pid is the writer's in this reader's pid namespace: for messages.
    let writer_pid = common::check_writer(fd, options)?;
    let deadline = Instant::now() + options.timeout;

    let memory = match receive_memory(fd, deadline, options) {
        Err(Error::PeerClosed(why)) => {
            common::remove_if_stale(options);
            return fail(format!("the writer (pid {}) closed the connection without sending the memory: it died, or \
                                 it is not a writer ({})", writer_pid, why));
        }
        other => other?,
    };
    // Trust order: seals first, then the size, then what it is; then map.
    let size = common::check_sealed_memfd(memory.as_raw_fd(), HEADER_SIZE, options)?;
    let mapping = common::map_read_only(memory.as_raw_fd(), size, options)?;
    drop(memory); // the mapping keeps the memory

    // The header, copied once and validated; only the copy is used.
    let header = common::validate_header(&mapping, size)?;
    let capacity = header.data_capacity;
    say(options, format!("header valid: magic=0x{:08x} version={} data_capacity={}", header.magic, header.version,
                         capacity));

    match copy_stream(fd, &mapping, capacity, options) {
        Err(Error::PeerClosed(why)) => {
            // A refusal of what arrived is not a death; a closed connection is.
            common::remove_if_stale(options);
            fail(format!("the writer (pid {}) died before the end of the stream ({})", writer_pid, why))
        }
        other => other,
    }
}

fn main() {
    common::main_with("fdpass_reader", USAGE, DEFAULT_NAME, run);
}
