//! Chapter 06's reader in Rust: receives the writer's pool of slots once (one sealed memfd as
//! SCM_RIGHTS, the control message built by hand in common.rs), maps it once, then takes each
//! slot by its index, writes its bytes to standard output straight from the slot and gives it
//! back.
//!
//!     build/06-zero-copy/writer --name /tmp/pool.sock < big.file              # the C++ writer
//!     build/interop/rust/release/pool_reader --name /tmp/pool.sock > copy    # this reader
//!
//! The wire protocol (06-zero-copy/README.md): 16-byte messages in the machine's byte order,
//! magic `SHM6` (u32), type (u32: 1 HELLO, 2 FILLED, 3 RETURNED, 4 END, 5 DONE, 6 BUSY, 7 ASK),
//! slot (u32), length (u32). The reader sends ASK; the writer answers HELLO with the pool; then
//! FILLED(slot, length) / RETURNED(slot), and END / DONE. The pool: the shared header at offset 0,
//! its chapter area holding the slot count (u32 at 64) and the slot size (u64 at 72); slot i at
//! 4096 + i x slot size. The checks, as the C++ reader's and in its order: the writer's user
//! (SO_PEERCRED), exactly one descriptor, no MSG_CTRUNC, seals before size, the header copied
//! once and validated, the geometry validated once (bounded before it is multiplied, whole
//! pages, count x size equal to the capacity and inside the real size); then, taking every
//! message that has arrived before using any slot, as the C++ reader does: every FILLED a slot of
//! this pool that the reader does not already hold, with a length from 1 to the slot size, and
//! nothing at all after END. The header's writer pid is not compared with SO_PEERCRED's: the
//! connection is the proof of who sent the pool, and a writer in another pid namespace writes its
//! own pid there, another number. A writer that closes the connection is reported as gone and
//! its stale socket file removed.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

mod common;
use common::{fail, say, Error, Options};

const MAGIC: u32 = 0x364d_4853; // "SHM6" in memory on a little-endian machine
const HELLO: u32 = 1;
const FILLED: u32 = 2;
const RETURNED: u32 = 3;
const END: u32 = 4;
const DONE: u32 = 5;
const BUSY: u32 = 6;
const ASK: u32 = 7;

const SLOTS_OFFSET: u64 = 4096;
const PAGE_SIZE: u64 = 4096;
const MAX_SLOT_SIZE: u64 = 1 << 30;
const MAX_SLOTS: u32 = 4096;
const DEFAULT_NAME: &str = "/tmp/shm-tutorial-06.sock";

const USAGE: &str = "Usage: pool_reader [--name PATH|@NAME] [--timeout SECONDS] [--quiet]

Chapter 06's reader in Rust. Connects to the writer's socket, receives the pool of slots once
and writes every message to standard output straight from its slot.
  --name PATH|@NAME  the writer's socket (default /tmp/shm-tutorial-06.sock)
  --timeout SECONDS  how long to wait for the writer and its pool (default 60)
  --quiet            no narration on standard error
  --help             show this help
";

/// One message, in the machine's byte order.
#[derive(Clone, Copy)]
struct Message {
    kind: u32,
    slot: u32,
    length: u32,
}

fn type_name(kind: u32) -> String {
    match kind {
        HELLO => "HELLO".into(),
        FILLED => "FILLED".into(),
        RETURNED => "RETURNED".into(),
        END => "END".into(),
        DONE => "DONE".into(),
        BUSY => "BUSY".into(),
        ASK => "ASK".into(),
        other => format!("type {}", other),
    }
}

/// send(2) of one message; MSG_NOSIGNAL: a closed peer is EPIPE (the writer is gone), not SIGPIPE.
fn send_message(socket: RawFd, kind: u32, slot: u32) -> Result<(), Error> {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
    bytes[4..8].copy_from_slice(&kind.to_ne_bytes());
    bytes[8..12].copy_from_slice(&slot.to_ne_bytes());
    common::send_bytes(socket, &bytes, &format!("send({})", type_name(kind)))
}

fn word(bytes: &[u8; 16], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// One message with no descriptor: a descriptor after HELLO is refused (and closed).
fn receive_message(socket: RawFd) -> Result<Message, Error> {
    let mut bytes = [0u8; 16];
    let descriptors = common::receive_exact(socket, &mut bytes, None, "the next message")?;
    if !descriptors.is_empty() {
        return fail("refused: a descriptor came with a message after HELLO; closed it");
    }
    if word(&bytes, 0) != MAGIC {
        return fail("refused: a message that does not start with SHM6 (garbage on the socket)");
    }
    Ok(Message { kind: word(&bytes, 4), slot: word(&bytes, 8), length: word(&bytes, 12) })
}

/// True when something (a message, or the end of the connection) is waiting on the socket.
fn readable_now(socket: RawFd) -> bool {
    let mut entry = libc::pollfd { fd: socket, events: libc::POLLIN, revents: 0 };
    unsafe { libc::poll(&mut entry, 1, 0) == 1 && (entry.revents & libc::POLLIN) != 0 }
}

/// Asks for the pool and receives it: HELLO with exactly one descriptor.
fn receive_pool(fd: RawFd, options: &Options) -> Result<OwnedFd, Error> {
    // Ask: the writer takes for its reader only a client that asks.
    send_message(fd, ASK, 0)?;
    say(options, format!("send(fd={}, ASK) = 16: asked for the pool", fd));
    let mut bytes = [0u8; 16];
    let mut descriptors =
        common::receive_exact(fd, &mut bytes, Some(Instant::now() + options.timeout), "the pool")?;
    if word(&bytes, 0) != MAGIC {
        return fail("refused: the first message does not start with SHM6");
    }
    match word(&bytes, 4) {
        HELLO => {}
        BUSY => return fail("another reader is already being served by this writer: one writer serves one reader"),
        _ => return fail("refused: the first message is not HELLO"),
    }
    if descriptors.len() != 1 {
        return fail(format!("refused: HELLO came with {} descriptors, expected exactly 1; closed them",
                            descriptors.len()));
    }
    let pool = descriptors.pop().expect("one descriptor");
    say(options, format!("recvmsg(fd={}, MSG_CMSG_CLOEXEC) = 16: HELLO, 1 descriptor (SCM_RIGHTS): fd {}", fd,
                         pool.as_raw_fd()));
    Ok(pool)
}

/// The reader's side of ownership, as the C++ reader's HeldSlots: the slots it holds, in the
/// order the writer filled them, and whether END has come.
struct HeldSlots {
    slot_count: u32,
    slot_size: u64,
    held: Vec<bool>,
    queue: VecDeque<Message>,
    ended: bool,
}

impl HeldSlots {
    /// Takes what the writer says. FILLED makes the slot the reader's, after checking that it
    /// can be: a slot of this pool, not one the reader holds already (the writer would be writing
    /// into bytes being read), a length that fits. END is the last word: anything after it is
    /// refused (a writer repeating it would otherwise grow the queue for as long as it sent).
    fn take(&mut self, message: Message) -> Result<(), Error> {
        if self.ended {
            return fail(format!("refused: the writer sent {} after END", type_name(message.kind)));
        }
        if message.kind == END {
            self.ended = true;
            self.queue.push_back(message);
            return Ok(());
        }
        if message.kind != FILLED {
            return fail(format!("refused: the writer sent {}, expected FILLED or END", type_name(message.kind)));
        }
        let slot = message.slot;
        if slot >= self.slot_count {
            return fail(format!("refused: the writer filled slot {}, but the pool has only {} slots (0 to {})", slot,
                                self.slot_count, self.slot_count - 1));
        }
        if self.held[slot as usize] {
            return fail(format!("refused: the writer filled slot {}, which the reader still holds (it would \
                                 overwrite bytes being read)", slot));
        }
        if message.length == 0 || u64::from(message.length) > self.slot_size {
            return fail(format!("refused: the writer says slot {} holds {} bytes; a slot holds 1 to {}", slot,
                                message.length, self.slot_size));
        }
        self.held[slot as usize] = true;
        self.queue.push_back(message);
        Ok(())
    }
}

/// Takes every message that has arrived (waiting for the first as long as the writer lives),
/// then uses each slot in place, in order, and gives it back; confirms END with DONE.
fn copy_stream(fd: RawFd, mapping: &common::Mapping, mut slots: HeldSlots, options: &Options) -> Result<(), Error> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let (mut messages, mut total) = (0u64, 0u64);
    loop {
        slots.take(receive_message(fd)?)?;
        while readable_now(fd) {
            slots.take(receive_message(fd)?)?;
        }
        while let Some(next) = slots.queue.front().copied() {
            if next.kind == END {
                send_message(fd, DONE, 0)?;
                say(options, format!("recv(END); send(DONE): {} bytes in {} message(s)", total, messages));
                return Ok(());
            }
            // Zero copy: write(2) straight from the slot. The slot is the reader's until RETURNED,
            // so the writer does not touch these bytes while they are read (a writer that broke
            // that rule could only change what we print, never where we read: the bounds are
            // checked).
            let offset = (SLOTS_OFFSET + u64::from(next.slot) * slots.slot_size) as usize; // < the mapped size
            let bytes = unsafe { std::slice::from_raw_parts(mapping.base.add(offset), next.length as usize) };
            out.write_all(bytes)?;
            out.flush()?;
            slots.held[next.slot as usize] = false;
            slots.queue.pop_front();
            send_message(fd, RETURNED, next.slot)?;
            if messages == 0 {
                say(options, format!("recv(FILLED slot={} length={}); write(stdout) from the slot; send(RETURNED) \
                                      (further messages quietly)", next.slot, next.length));
            }
            messages += 1;
            total += u64::from(next.length);
        }
    }
}

/// Everything after the connection, so that run() sees a closed connection at any step.
fn receive_and_copy(fd: RawFd, options: &Options) -> Result<(), Error> {
    let pool = receive_pool(fd, options)?;
    // Seals first, then the size: once SHRINK and GROW are on, the size cannot change.
    let size = common::check_sealed_memfd(pool.as_raw_fd(), SLOTS_OFFSET, options)?;
    let mapping = common::map_read_only(pool.as_raw_fd(), size, options)?;
    drop(pool); // the mapping keeps the pool

    // The header and the geometry, copied once and validated; only the copies are used.
    let header = common::validate_header(&mapping, size)?;
    let capacity = header.data_capacity;
    let (slot_count, slot_size) = (mapping.load_u32(64), mapping.load_u64(72));
    // Bounded before they are multiplied: no overflow.
    if slot_count == 0 || slot_count > MAX_SLOTS || slot_size == 0 || slot_size > MAX_SLOT_SIZE
        || slot_size % PAGE_SIZE != 0 || u64::from(slot_count) * slot_size != capacity
        || u64::from(slot_count) * slot_size > size - SLOTS_OFFSET
    {
        return fail(format!("header refused: {} slots of {} bytes do not fit a {}-byte pool with data capacity {}",
                            slot_count, slot_size, size, capacity));
    }
    say(options, format!("header valid: {} slots of {} bytes from offset {}", slot_count, slot_size, SLOTS_OFFSET));

    let slots = HeldSlots { slot_count, slot_size, held: vec![false; slot_count as usize], queue: VecDeque::new(),
                            ended: false };
    copy_stream(fd, &mapping, slots, options)
}

fn run(options: &Options) -> Result<(), Error> {
    let socket = common::connect_to_writer(options)?;
    let fd = socket.as_raw_fd();
    // Same user, or refused. The pid is the writer's in this reader's pid namespace: for messages.
    let writer_pid = common::check_writer(fd, options)?;
    match receive_and_copy(fd, options) {
        Err(Error::PeerClosed(why)) => {
            common::remove_if_stale(options);
            fail(format!("the writer (pid {}) died before the end of the stream ({})", writer_pid, why))
        }
        other => other,
    }
}

fn main() {
    common::main_with("pool_reader", USAGE, DEFAULT_NAME, run);
}
