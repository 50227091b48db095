//! What the Rust readers share: the socket, the writer's credentials, a message received with the
//! descriptors that came with it (SCM_RIGHTS, built by hand with the libc crate), the checks of a
//! sealed memfd, and a read-only mapping.

// Each reader includes this module and uses a part of it.
#![allow(dead_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// The shared header of every chapter (common/layout.hpp).
pub const HEADER_MAGIC: u32 = 0x544d_4853; // "SHMT"
pub const LAYOUT_VERSION: u32 = 1;
pub const HEADER_SIZE: u64 = 256;

/// A failure: one line on stderr, exit 1. A usage error: exit 2. `PeerClosed`: the writer closed
/// (or reset) the connection, which the readers report as its death, as the C++ readers do;
/// a refusal of what did arrive is a plain `Failure`.
pub enum Error {
    Failure(String),
    Usage(String),
    PeerClosed(String),
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Failure(error.to_string())
    }
}

pub fn fail<T>(text: impl Into<String>) -> Result<T, Error> {
    Err(Error::Failure(text.into()))
}

/// The last OS error, named by the call that failed.
pub fn os_error(call: &str) -> Error {
    Error::Failure(format!("{}: {}", call, io::Error::last_os_error()))
}

pub struct Options {
    pub name: String,
    pub timeout: Duration,
    pub quiet: bool,
}

pub fn say(options: &Options, text: String) {
    if !options.quiet {
        eprintln!("reader: {}", text);
    }
}

pub fn parse(mut args: impl Iterator<Item = String>, usage: &str, default_name: &str) -> Result<Option<Options>, Error> {
    let mut options = Options { name: default_name.to_string(), timeout: Duration::from_secs(60), quiet: false };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" => {
                print!("{}", usage);
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
pub fn socket_address(name: &str) -> Result<(libc::sockaddr_un, libc::socklen_t), Error> {
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

/// connect(2), retried every 50 ms while nobody listens yet, bounded by the timeout. connect
/// follows a symbolic link and lstat does not, so a path that is not a socket is refused before
/// connecting, as the C++ readers do (in a sticky directory such as /tmp nobody else can swap
/// this user's socket file between the two calls).
pub fn connect_to_writer(options: &Options) -> Result<OwnedFd, Error> {
    let (address, length) = socket_address(&options.name)?;
    let deadline = Instant::now() + options.timeout;
    loop {
        if !options.name.starts_with('@') {
            if let Ok(info) = std::fs::symlink_metadata(&options.name) {
                let kind = info.file_type();
                if !kind.is_socket() {
                    let what = if kind.is_symlink() { "a symbolic link" } else { "a file or directory" };
                    return fail(format!("{} is not a socket ({}): not following it; is --name right?",
                                        options.name, what));
                }
            }
        }
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
        if !retry {
            let hint = if error.raw_os_error() == Some(libc::EACCES) {
                ": the socket file or a directory above it does not let this user connect"
            } else {
                ""
            };
            return fail(format!("connect(\"{}\"): {}{}", options.name, error, hint));
        }
        if Instant::now() >= deadline {
            return fail(format!("connect(\"{}\"): {}: is the writer running? start it first", options.name, error));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After the writer closed the connection: removes its socket file if it is still a socket
/// (lstat: never through a symbolic link) and nobody listens on it, so that a dead writer leaves
/// nothing behind, as the C++ readers do. A dying process closes its descriptors one after
/// another (the connection may end a moment before the listener), so it looks for up to a
/// second. Each probe is a non-blocking connect closed at once without a byte: a new writer
/// there does not take it for a reader.
pub fn remove_if_stale(options: &Options) {
    if options.name.starts_with('@') {
        return; // an abstract name vanished with the writer's socket
    }
    let (address, length) = match socket_address(&options.name) {
        Ok(found) => found,
        Err(_) => return,
    };
    for _ in 0..20 {
        match std::fs::symlink_metadata(&options.name) {
            Ok(info) if info.file_type().is_socket() => {}
            _ => return,
        }
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if fd == -1 {
            return;
        }
        let probe = unsafe { OwnedFd::from_raw_fd(fd) };
        let pointer = &address as *const libc::sockaddr_un as *const libc::sockaddr;
        if unsafe { libc::connect(probe.as_raw_fd(), pointer, length) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ECONNREFUSED)
        {
            if std::fs::remove_file(&options.name).is_ok() {
                say(options, format!("unlink(\"{}\") = 0: removed the socket file the dead writer left", options.name));
            }
            return;
        }
        drop(probe);
        std::thread::sleep(Duration::from_millis(50)); // still listening: gone in a moment, or a new writer
    }
}

/// send(2) of one whole message; MSG_NOSIGNAL: a closed peer is EPIPE (PeerClosed), not SIGPIPE.
/// The readers send only after the writer spoke, or first: 16 bytes always fit in the buffer.
pub fn send_bytes(socket: RawFd, bytes: &[u8], call: &str) -> Result<(), Error> {
    loop {
        let sent = unsafe { libc::send(socket, bytes.as_ptr() as *const libc::c_void, bytes.len(), libc::MSG_NOSIGNAL) };
        if sent == bytes.len() as isize {
            return Ok(());
        }
        if sent >= 0 {
            return fail(format!("{} sent {} of {} bytes", call, sent, bytes.len()));
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EPIPE) | Some(libc::ECONNRESET) => {
                return Err(Error::PeerClosed(format!("{}: the writer closed the connection", call)))
            }
            _ => return Err(os_error(call)),
        }
    }
}

/// SO_PEERCRED: who listens there, as the kernel recorded it. Same user, or refused.
pub fn check_writer(socket: RawFd, options: &Options) -> Result<libc::pid_t, Error> {
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


/// Seals first (once F_SEAL_SHRINK|F_SEAL_GROW are in, nobody can change the size), then the
/// size, then what it is. Returns the size.
pub fn check_sealed_memfd(fd: RawFd, minimum: u64, options: &Options) -> Result<u64, Error> {
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
    if info.st_mode & libc::S_IFMT != libc::S_IFREG || (info.st_size as u64) < minimum {
        return fail(format!("the descriptor is not a regular file of at least {} bytes: refusing it", minimum));
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
pub struct Mapping {
    pub base: *const u8,
    pub length: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.length) };
    }
}

impl Mapping {
    /// A field of the header, loaded once (volatile: the writer may change it at any time).
    pub fn load_u32(&self, offset: usize) -> u32 {
        unsafe { std::ptr::read_volatile(self.base.add(offset) as *const u32) }
    }
    pub fn load_u64(&self, offset: usize) -> u64 {
        unsafe { std::ptr::read_volatile(self.base.add(offset) as *const u64) }
    }
}

/// The shared header's fields a reader trusts, each loaded once from the mapping and validated
/// as a local copy (the writer can change the memory between a check and a use).
pub struct HeaderCopy {
    pub magic: u32,
    pub version: u32,
    pub data_capacity: u64,
}

/// Copies the header once and validates the copy against the real size (from fstat, after the
/// seals), as common/layout.cpp's validate_header() does: the magic, the layout version, a data
/// capacity that is not 0 and fits after the header (a subtraction that cannot wrap). The
/// header's writer_pid is not compared with SO_PEERCRED's pid: the connection is the proof of
/// who sent the memory, and the header's number is the writer's pid in its own pid namespace,
/// another number (or 0, invisible) for a reader in another one (a container, unshare --pid).
pub fn validate_header(mapping: &Mapping, size: u64) -> Result<HeaderCopy, Error> {
    let copy = HeaderCopy { magic: mapping.load_u32(0), version: mapping.load_u32(4), data_capacity: mapping.load_u64(8) };
    if copy.magic != HEADER_MAGIC {
        return fail(format!("header refused: magic is 0x{:08x}, expected 0x{:08x}: not this tutorial's shared memory",
                            copy.magic, HEADER_MAGIC));
    }
    if copy.version != LAYOUT_VERSION {
        return fail(format!("header refused: layout version {}, this program reads version {}", copy.version,
                            LAYOUT_VERSION));
    }
    if size < HEADER_SIZE {
        return fail(format!("header refused: the object has {} bytes, less than the {}-byte header", size,
                            HEADER_SIZE));
    }
    if copy.data_capacity == 0 || copy.data_capacity > size - HEADER_SIZE {
        return fail(format!("header refused: data capacity {} does not fit in the object's {} bytes after the \
                             {}-byte header", copy.data_capacity, size, HEADER_SIZE));
    }
    Ok(copy)
}

/// Receives exactly `bytes.len()` bytes with recvmsg(2), and every descriptor that comes with
/// them as SCM_RIGHTS. The control buffer is what the C++ readers declare as
/// `union { char buffer[CMSG_SPACE(sizeof(int))]; cmsghdr align; }`: room for one descriptor,
/// aligned for a cmsghdr. In Rust the libc crate's CMSG_SPACE is not a const fn, so the buffer is
/// a Vec of u64 (8-byte aligned, enough for cmsghdr on 32- and 64-bit machines) of that size.
/// Every descriptor is owned (closed on any refusal) as soon as it is seen; refused: MSG_CTRUNC
/// (descriptors were dropped) and a descriptor with a later piece of the bytes (a stream socket
/// may deliver them in pieces). `deadline`: None waits as long as the writer lives (a dead writer
/// closes the connection).
pub fn receive_exact(socket: RawFd, bytes: &mut [u8], deadline: Option<Instant>, what: &str)
                     -> Result<Vec<OwnedFd>, Error> {
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
                Some(libc::ECONNRESET) => {
                    return Err(Error::PeerClosed(format!("the writer closed the connection before {}", what)))
                }
                _ => return Err(os_error("recvmsg(MSG_CMSG_CLOEXEC)")),
            }
        }
        if n == 0 {
            return Err(Error::PeerClosed(format!("the writer closed the connection before {}", what)));
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
    Ok(descriptors)
}

/// Maps `size` bytes of `fd` read-only and shared. mmap takes a usize: 32 bits on armhf, where
/// an object of 4 GiB or more is refused, not mapped short.
pub fn map_read_only(fd: RawFd, size: u64, options: &Options) -> Result<Mapping, Error> {
    let length = usize::try_from(size)
        .map_err(|_| Error::Failure(format!("object refused: {} bytes do not fit this address space", size)))?;
    let base = unsafe { libc::mmap(std::ptr::null_mut(), length, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
    if base == libc::MAP_FAILED {
        return Err(os_error("mmap(PROT_READ, MAP_SHARED)"));
    }
    say(options, format!("mmap(NULL, {}, PROT_READ, MAP_SHARED, fd={}, 0) = {:p}", length, fd, base));
    Ok(Mapping { base: base as *const u8, length })
}

/// Runs a reader's main: exit 0, 1 with one line for a failure, 2 for a usage error.
pub fn main_with(role: &str, usage: &str, default_name: &str, run: fn(&Options) -> Result<(), Error>) -> ! {
    let status = match parse(std::env::args().skip(1), usage, default_name) {
        Ok(None) => 0,
        Ok(Some(options)) => match run(&options) {
            Ok(()) => 0,
            Err(Error::Failure(text)) | Err(Error::Usage(text)) | Err(Error::PeerClosed(text)) => {
                eprintln!("reader: {}", text);
                1
            }
        },
        Err(Error::Usage(text)) | Err(Error::Failure(text)) | Err(Error::PeerClosed(text)) => {
            eprintln!("reader: {}\nTry '{} --help'.", text, role);
            2
        }
    };
    std::process::exit(status);
}
