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
//! real size; the header's writer pid is the pid the kernel named; each block's length at most
//! the validated capacity. The wire protocol is in 04-fd-passing/README.md: 16-byte messages,
//! little-endian: magic `SHM4`, version 2 (u16), type (u16), length (u64).

use std::io::{self, Write};
use std::mem::{size_of, zeroed};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"SHM4";
const PROTOCOL_VERSION: u16 = 2;
const HELLO: u16 = 1;
const MEMORY: u16 = 2;
const BLOCK: u16 = 3;
const END: u16 = 4;
const CONSUMED: u16 = 5;
const BUSY: u16 = 6;

const HEADER_MAGIC: u32 = 0x544d_4853; // "SHMT"
const LAYOUT_VERSION: u32 = 1;
const HEADER_SIZE: u64 = 256;
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

/// A failure: one line on stderr, exit 1. A usage error: exit 2.
enum Error {
    Failure(String),
    Usage(String),
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Failure(error.to_string())
    }
}

fn fail<T>(text: impl Into<String>) -> Result<T, Error> {
    Err(Error::Failure(text.into()))
}

/// The last OS error, named by the call that failed.
fn os_error(call: &str) -> Error {
    Error::Failure(format!("{}: {}", call, io::Error::last_os_error()))
}

struct Options {
    name: String,
    timeout: Duration,
    quiet: bool,
}

fn say(options: &Options, text: String) {
    if !options.quiet {
        eprintln!("reader: {}", text);
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, Error> {
    let mut options = Options { name: DEFAULT_NAME.to_string(), timeout: Duration::from_secs(60), quiet: false };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" => {
                print!("{}", USAGE);
                return Ok(None);
            }
            "--quiet" => options.quiet = true,
            "--name" | "--timeout" => {
                let value = args.next().ok_or_else(|| Error::Usage(format!("{} needs a value", arg)))?;
                if arg == "--name" {
                    options.name = value;
                } else {
                    let seconds: f64 = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s > 0.0 && s.is_finite())
                        .ok_or_else(|| Error::Usage(format!("--timeout wants seconds above 0, not '{}'", value)))?;
                    options.timeout = Duration::from_secs_f64(seconds);
                }
            }
            _ => return Err(Error::Usage(format!("unknown argument {}", arg))),
        }
    }
    Ok(Some(options))
}

/// The socket address of a path, or of `@NAME` in the abstract namespace (a first byte of 0, no
/// terminating zero counted in the length).
fn socket_address(name: &str) -> Result<(libc::sockaddr_un, libc::socklen_t), Error> {
    let mut address: libc::sockaddr_un = unsafe { zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, abstract_name) = match name.strip_prefix('@') {
        Some(rest) => (rest.as_bytes(), true),
        None => (name.as_bytes(), false),
    };
    let start = usize::from(abstract_name);
    if bytes.is_empty() || start + bytes.len() + 1 > address.sun_path.len() {
        return Err(Error::Usage(format!("--name '{}' does not fit a Unix socket address", name)));
    }
    for (i, byte) in bytes.iter().enumerate() {
        address.sun_path[start + i] = *byte as libc::c_char;
    }
    let base = size_of::<libc::sa_family_t>();
    let length = base + start + bytes.len() + usize::from(!abstract_name);
    Ok((address, length as libc::socklen_t))
}

/// connect(2), retried every 50 ms while nobody listens yet, bounded by the timeout.
fn connect_to_writer(options: &Options) -> Result<OwnedFd, Error> {
    let (address, length) = socket_address(&options.name)?;
    let deadline = Instant::now() + options.timeout;
    loop {
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if fd == -1 {
            return Err(os_error("socket(AF_UNIX, SOCK_STREAM)"));
        }
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let pointer = &address as *const libc::sockaddr_un as *const libc::sockaddr;
        if unsafe { libc::connect(socket.as_raw_fd(), pointer, length) } == 0 {
            say(options, format!("socket(AF_UNIX, SOCK_STREAM) = {}; connect(\"{}\") = 0", fd, options.name));
            return Ok(socket);
        }
        let error = io::Error::last_os_error();
        let retry = matches!(error.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::EAGAIN));
        if !retry || Instant::now() >= deadline {
            return fail(format!("connect(\"{}\"): {}: is the writer running? start it first", options.name, error));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SO_PEERCRED: who listens there, as the kernel recorded it. Same user, or refused.
fn check_writer(socket: RawFd, options: &Options) -> Result<libc::pid_t, Error> {
    let mut peer: libc::ucred = unsafe { zeroed() };
    let mut size = size_of::<libc::ucred>() as libc::socklen_t;
    let pointer = &mut peer as *mut libc::ucred as *mut libc::c_void;
    if unsafe { libc::getsockopt(socket, libc::SOL_SOCKET, libc::SO_PEERCRED, pointer, &mut size) } == -1 {
        return Err(os_error("getsockopt(SO_PEERCRED)"));
    }
    if peer.uid != unsafe { libc::geteuid() } {
        return fail(format!("the process listening there (pid {}) belongs to uid {}, not to this user: refusing it",
                            peer.pid, peer.uid));
    }
    say(options, format!("getsockopt(SO_PEERCRED): pid={} uid={}, the same user", peer.pid, peer.uid));
    Ok(peer.pid)
}

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

/// send(2) of one message; MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
fn send_message(socket: RawFd, kind: u16) -> Result<(), Error> {
    let bytes = encode(kind, 0);
    let pointer = bytes.as_ptr() as *const libc::c_void;
    let sent = unsafe { libc::send(socket, pointer, bytes.len(), libc::MSG_NOSIGNAL) };
    if sent != bytes.len() as isize {
        return Err(os_error(&format!("send({})", type_name(kind))));
    }
    Ok(())
}

/// What one recvmsg loop delivered: the message's fields and every descriptor that came with it.
struct Received {
    kind: u16,
    length: u64,
    descriptors: Vec<OwnedFd>,
}

/// Receives one whole 16-byte message with recvmsg(2) and the SCM_RIGHTS control message that
/// may come with it. The control buffer is what the C++ reader declares as
/// `union { char buffer[CMSG_SPACE(sizeof(int))]; cmsghdr align; }`: room for one descriptor,
/// aligned for a cmsghdr. In Rust the libc crate's CMSG_SPACE is not a const fn, so the buffer is
/// a Vec of u64 (8-byte aligned, enough for cmsghdr on 32- and 64-bit machines) of that size.
/// `deadline`: None waits as long as the writer lives (a dead writer closes the connection).
fn receive_message(socket: RawFd, deadline: Option<Instant>, what: &str) -> Result<Received, Error> {
    let mut bytes = [0u8; 16];
    let mut have = 0usize;
    let mut descriptors: Vec<OwnedFd> = Vec::new();
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as libc::c_uint) } as usize;
    let mut control = vec![0u64; (space + 7) / 8];
    while have < bytes.len() {
        let mut entry = libc::pollfd { fd: socket, events: libc::POLLIN, revents: 0 };
        let ready = unsafe { libc::poll(&mut entry, 1, 1000) };
        if ready == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_error("poll"));
        }
        if ready != 1 {
            if deadline.map_or(false, |d| Instant::now() >= d) {
                return fail(format!("nothing came within the timeout (waiting for {}): is it a writer?", what));
            }
            continue;
        }
        let mut data = libc::iovec {
            iov_base: bytes[have..].as_mut_ptr() as *mut libc::c_void,
            iov_len: bytes.len() - have,
        };
        let mut header: libc::msghdr = unsafe { zeroed() };
        header.msg_iov = &mut data;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        header.msg_controllen = space as _;
        let n = unsafe { libc::recvmsg(socket, &mut header, libc::MSG_CMSG_CLOEXEC) };
        if n == -1 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                Some(libc::ECONNRESET) => return fail(format!("the writer closed the connection before {}", what)),
                _ => return Err(os_error("recvmsg(MSG_CMSG_CLOEXEC)")),
            }
        }
        if n == 0 {
            return fail(format!("the writer closed the connection before {}", what));
        }
        // Own every descriptor first, whatever else is wrong, counted from cmsg_len.
        let before = descriptors.len();
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&header) };
        while !cmsg.is_null() {
            let (level, kind, length) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len as usize) };
            if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                let payload = length - unsafe { libc::CMSG_LEN(0) } as usize;
                let first = unsafe { libc::CMSG_DATA(cmsg) } as *const libc::c_int;
                for i in 0..payload / size_of::<libc::c_int>() {
                    // CMSG_DATA need not be aligned for an int: read it unaligned.
                    let fd = unsafe { std::ptr::read_unaligned(first.add(i)) };
                    descriptors.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            cmsg = unsafe { libc::CMSG_NXTHDR(&header, cmsg) };
        }
        if header.msg_flags & libc::MSG_CTRUNC != 0 {
            return fail(format!("refused {}: descriptors were dropped (MSG_CTRUNC: more than fit, or this process \
                                 is at its RLIMIT_NOFILE); closed the {} that arrived", what, descriptors.len()));
        }
        if have > 0 && descriptors.len() != before {
            return fail(format!("refused {}: a descriptor came with a later piece of it; closed it", what));
        }
        have += n as usize;
    }
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

/// Seals first (once F_SEAL_SHRINK|F_SEAL_GROW are in, nobody can change the size), then the
/// size, then what it is. Returns the size.
fn check_sealed_memfd(fd: RawFd, options: &Options) -> Result<u64, Error> {
    let required = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals == -1 {
        return Err(os_error("fcntl(F_GET_SEALS): not a memfd, refusing it"));
    }
    if seals & required != required {
        return fail(format!("the descriptor has seals 0x{:x}, needs F_SEAL_SHRINK|F_SEAL_GROW: refusing it", seals));
    }
    let mut info: libc::stat = unsafe { zeroed() };
    if unsafe { libc::fstat(fd, &mut info) } == -1 {
        return Err(os_error("fstat"));
    }
    if info.st_mode & libc::S_IFMT != libc::S_IFREG || (info.st_size as u64) < HEADER_SIZE {
        return fail("the descriptor is not a regular file of at least a header: refusing it");
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd))?;
    if !link.to_string_lossy().starts_with("/memfd:") {
        return fail(format!("the descriptor is {}, not a memfd: refusing it", link.display()));
    }
    say(options, format!("fcntl(F_GET_SEALS) = 0x{:x}; fstat: {} bytes; readlink: {}", seals, info.st_size,
                         link.display()));
    Ok(info.st_size as u64)
}

/// A read-only shared mapping, unmapped when dropped.
struct Mapping {
    base: *const u8,
    length: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.length) };
    }
}

impl Mapping {
    /// A field of the header, loaded once (volatile: the writer may change it at any time).
    fn load_u32(&self, offset: usize) -> u32 {
        unsafe { std::ptr::read_volatile(self.base.add(offset) as *const u32) }
    }
    fn load_u64(&self, offset: usize) -> u64 {
        unsafe { std::ptr::read_volatile(self.base.add(offset) as *const u64) }
    }
}

fn run(options: &Options) -> Result<(), Error> {
    let socket = connect_to_writer(options)?;
    let fd = socket.as_raw_fd();
    let writer_pid = check_writer(fd, options)?;
    let deadline = Instant::now() + options.timeout;

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

    let size = check_sealed_memfd(memory.as_raw_fd(), options)?;
    // mmap takes a usize: 32 bits on armhf, where an object of 4 GiB or more cannot be mapped.
    let length = usize::try_from(size)
        .map_err(|_| Error::Failure(format!("object refused: {} bytes do not fit this address space", size)))?;
    let base = unsafe { libc::mmap(std::ptr::null_mut(), length, libc::PROT_READ, libc::MAP_SHARED, memory.as_raw_fd(), 0) };
    if base == libc::MAP_FAILED {
        return Err(os_error("mmap(PROT_READ, MAP_SHARED)"));
    }
    let mapping = Mapping { base: base as *const u8, length };
    say(options, format!("mmap(NULL, {}, PROT_READ, MAP_SHARED, fd={}, 0) = {:p}", length, memory.as_raw_fd(), base));
    drop(memory); // the mapping keeps the memory

    // The header, copied once into locals and validated; only the copies are used.
    let (magic, version) = (mapping.load_u32(0), mapping.load_u32(4));
    let capacity = mapping.load_u64(8);
    let header_pid = mapping.load_u32(36);
    if magic != HEADER_MAGIC || version != LAYOUT_VERSION {
        return fail(format!("header refused: magic 0x{:08x} version {}", magic, version));
    }
    if capacity == 0 || capacity > size - HEADER_SIZE {
        return fail(format!("header refused: data capacity {} does not fit in the object's {} bytes", capacity, size));
    }
    if header_pid as libc::pid_t != writer_pid {
        return fail(format!("the header names writer pid {}, but pid {} sent it: refusing it", header_pid, writer_pid));
    }
    say(options, format!("header valid: magic=0x{:08x} version={} data_capacity={}", magic, version, capacity));

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

fn main() {
    let status = match parse(std::env::args().skip(1)) {
        Ok(None) => 0,
        Ok(Some(options)) => match run(&options) {
            Ok(()) => 0,
            Err(Error::Failure(text)) | Err(Error::Usage(text)) => {
                eprintln!("reader: {}", text);
                1
            }
        },
        Err(Error::Usage(text)) | Err(Error::Failure(text)) => {
            eprintln!("reader: {}\nTry 'fdpass_reader --help'.", text);
            2
        }
    };
    std::process::exit(status);
}
