//! Listening sockets: bound once, kept for the supervisor's life, passed to every worker.
//!
//! Each socket is bound with a large backlog, so connections that arrive while no worker
//! accepts (one crashed, its replacement is starting) wait in the kernel queue instead of
//! being refused. The supervisor's copies are close-on-exec, so that no process it starts
//! for itself (an `--alert-exec` hook, and whatever that leaves running) holds the port open
//! behind its back: only a worker's process clears the flag, between fork and exec, and the
//! exec shim ([`crate::shim`]) it runs moves the sockets to fds 3, 4, … and sets
//! `LISTEN_FDS`/`LISTEN_PID`.
//!
//! A worker can break a shared TCP socket for all of them (`shutdown()` on it): the supervisor
//! makes it listen again (`listen_again`).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use crate::config::ListenAddr;
use crate::error::StartError;

/// Backlog asked for each socket (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 4096;

/// One listening socket held by the supervisor.
#[derive(Debug)]
pub struct Listener {
    /// The socket (close-on-exec: only a worker's process clears the flag, after its fork).
    pub fd: OwnedFd,
    /// Its name in `LISTEN_FDNAMES`.
    pub name: String,
    /// Where a probe can reach it, if known.
    pub local: Option<ListenAddr>,
}

/// Who may connect to the `unix:` sockets [`bind_all`] binds: their mode and group.
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
/// use unwedge_supervisor::{socket::{bind_all, UnixAccess}, ListenAddr};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.sock");
/// let group_only = UnixAccess { mode: 0o660, gid: None };
/// let _listeners = bind_all(&[ListenAddr::Unix(path.clone())], group_only).unwrap();
/// let mode = std::fs::metadata(&path).unwrap().permissions().mode();
/// assert_eq!(mode & 0o777, 0o660);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixAccess {
    /// Permission bits (`--socket-mode`; connecting needs write permission).
    pub mode: u32,
    /// Group (`--socket-group`), if not the supervisor's.
    pub gid: Option<u32>,
}

impl Default for UnixAccess {
    /// Anyone may connect, as systemd's `SocketMode=` default.
    fn default() -> Self {
        UnixAccess {
            mode: crate::config::DEFAULT_SOCKET_MODE,
            gid: None,
        }
    }
}

/// Binds every address. A unix socket path that exists and is a socket is replaced; a new
/// one gets `unix`'s mode and group.
pub fn bind_all(addrs: &[ListenAddr], unix: UnixAccess) -> Result<Vec<Listener>, StartError> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let fd = bind(addr, unix).map_err(|e| StartError::Listen {
                addr: addr.to_string(),
                reason: in_use_by(addr, e),
            })?;
            let local = match addr {
                ListenAddr::Tcp(_) => {
                    let sock = Socket::from(fd.try_clone().map_err(|e| StartError::Listen {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })?);
                    sock.local_addr()
                        .ok()
                        .and_then(|a| a.as_socket())
                        .map(ListenAddr::Tcp)
                }
                ListenAddr::Unix(p) => Some(ListenAddr::Unix(p.clone())),
            };
            // Close-on-exec already: socket2 creates every socket with SOCK_CLOEXEC.
            Ok(Listener {
                fd,
                name: format!("listen{i}"),
                local,
            })
        })
        .collect()
}

/// Whether `unwedge run` could bind `addr` now, without binding it for good: for
/// `unwedge check-config`. A TCP address is bound and released at once; for a `unix:` path the
/// directory must exist and the path be free, a socket, or a socket nothing listens on (left
/// as it is: `run` replaces it). `Ok(Some(note))` when it is in use: by a running
/// supervisor, whose config this may be (before a reload), or by another program, which would
/// make `run` fail; `Err` when `run` would fail whatever else runs.
///
/// ```
/// use unwedge_supervisor::{socket::check_bindable, ListenAddr};
///
/// let free = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
/// assert_eq!(check_bindable(&free).unwrap(), None);
/// let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let taken = ListenAddr::Tcp(held.local_addr().unwrap());
/// assert!(check_bindable(&taken).unwrap().unwrap().contains("in use"));
/// // TEST-NET-3: an address of no interface here.
/// let elsewhere = ListenAddr::Tcp("203.0.113.7:8080".parse().unwrap());
/// assert!(check_bindable(&elsewhere).is_err());
/// ```
pub fn check_bindable(addr: &ListenAddr) -> Result<Option<String>, StartError> {
    let fail = |reason: String| StartError::Listen {
        addr: addr.to_string(),
        reason,
    };
    let result = match addr {
        ListenAddr::Tcp(a) => bound_tcp(*a).map(drop),
        ListenAddr::Unix(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                return Err(fail(format!("no directory {}", dir.display())));
            }
            unix_path_state(path).map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(Some(format!(
            "{addr} is in use now ({}): fine if it is the running supervisor's, whose config \
             this is; otherwise `unwedge run` would fail to bind it",
            in_use_by(addr, e)
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(fail(format!(
            "{e} (a port below 1024 needs root or CAP_NET_BIND_SERVICE; a unix: path, write \
             permission on its directory)"
        ))),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// `e`, and for an address in use, what holds it (`Address already in use (os error 98);
/// pid 4242 (`python3 app.py`) listens on it`, or `pids 4242 (…), 4243 (…) listen on it`):
/// often a process a previous run left behind.
fn in_use_by(addr: &ListenAddr, e: std::io::Error) -> String {
    if e.kind() != std::io::ErrorKind::AddrInUse {
        return e.to_string();
    }
    let holders = match addr {
        ListenAddr::Tcp(a) => crate::procfs::tcp_listeners(a.port()),
        ListenAddr::Unix(path) => crate::procfs::unix_listeners(path),
    };
    if holders.is_empty() {
        return e.to_string();
    }
    // Not a process left behind: this one, whose addresses overlap (which the configuration
    // checks refuse; an address in another form, say).
    let me = std::process::id() as i32;
    if holders.contains(&me) {
        return format!(
            "{e}; this supervisor listens on it already (two of its addresses overlap)"
        );
    }
    let verb = if holders.len() == 1 {
        "listens"
    } else {
        "listen"
    };
    format!("{e}; {} {verb} on it", crate::procfs::describe(&holders))
}

fn bind(addr: &ListenAddr, unix: UnixAccess) -> std::io::Result<OwnedFd> {
    let sock = match addr {
        ListenAddr::Tcp(a) => bound_tcp(*a)?,
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            sock.bind(&SockAddr::unix(path)?)?;
            // Bound with the umask's mode (no more open than either): then the one asked for.
            if let Err(e) = set_socket_access(path, unix) {
                let _ = std::fs::remove_file(path);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot set its mode {:04o} or group: {e}", unix.mode),
                ));
            }
            sock
        }
    };
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// What [`listen_again`] found of a TCP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listening {
    /// It listens, as it should.
    Yes,
    /// It had stopped listening (a process holding it called `shutdown()` on it) and listens
    /// again now.
    Restored,
}

/// Makes TCP listener `l` listen again if it stopped. A worker that calls `shutdown()` on the
/// socket it was passed (cpp-httplib's `Server::stop()` does, on SIGTERM) shuts it down for
/// every process that holds it, the supervisor and the other workers included: the kernel
/// takes it out of the listening state, every new connection is refused and no worker can
/// accept again, for good. `listen()` on the same socket makes it listen again, for all of
/// them (they share it). A socket bound to port 0 lost its port at the shutdown (the kernel
/// keeps only a port asked for by number): it is bound to the port it had first. Only TCP:
/// a `unix:` socket reports itself listening after a `shutdown()` (`SO_ACCEPTCONN` stays 1),
/// so it cannot be told from a healthy one; nor a socket that never listened (datagrams).
pub(crate) fn listen_again(l: &Listener) -> std::io::Result<Listening> {
    let Some(ListenAddr::Tcp(addr)) = l.local else {
        return Ok(Listening::Yes);
    };
    let sock = SockRef::from(&l.fd);
    if sock.r#type()? != Type::STREAM || sock.is_listener()? {
        return Ok(Listening::Yes);
    }
    clear_shutdown(l.fd.as_fd())?;
    match sock.bind(&SockAddr::from(addr)) {
        // Still bound to its address (a port asked for by number): listen() keeps it.
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {}
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    sock.listen(BACKLOG)?;
    match sock.local_addr()?.as_socket() {
        Some(now) if now == addr => Ok(Listening::Restored),
        other => Err(std::io::Error::other(format!(
            "listens on {} instead",
            other.map_or_else(|| "another address".to_owned(), |a| a.to_string())
        ))),
    }
}

/// Clears what `shutdown()` left on a TCP socket it took out of the listening state, with
/// `connect()` to an `AF_UNSPEC` address (the kernel's disconnect, which resets the socket as
/// when new). Needed when another worker shut it down too, after the first: on the socket no
/// longer listening, that `shutdown()` fails (`ENOTCONN`) but still marks it shut down both
/// ways, and connections accepted once it listens again would inherit the mark: the kernel
/// resets each as soon as its client sends anything.
fn clear_shutdown(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::libc;
    #[allow(unsafe_code)]
    // SAFETY: `unspec` is a plain value, initialized (zeroed, then the family set), and its
    // size is given; `fd` is open while borrowed.
    let done = unsafe {
        let mut unspec: libc::sockaddr = std::mem::zeroed();
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd.as_raw_fd(),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if done == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The `unix:` socket files [`bind_all`] created, removed when this is dropped (the supervisor
/// ends), each only if the file at its path is still the one bound: a socket file left behind
/// is clutter for the next start to clear, and one another process has bound since (after
/// clearing it as stale) is its, not ours.
#[derive(Debug, Default)]
pub(crate) struct OwnSocketFiles(Vec<(PathBuf, u64, u64)>);

impl OwnSocketFiles {
    /// The socket files of `listeners`, as they are now (call it right after [`bind_all`]).
    pub(crate) fn of(listeners: &[Listener]) -> Self {
        use std::os::unix::fs::MetadataExt;
        OwnSocketFiles(
            listeners
                .iter()
                .filter_map(|l| match &l.local {
                    Some(ListenAddr::Unix(path)) => {
                        let m = std::fs::symlink_metadata(path).ok()?;
                        Some((path.clone(), m.dev(), m.ino()))
                    }
                    _ => None,
                })
                .collect(),
        )
    }
}

impl Drop for OwnSocketFiles {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        for (path, dev, ino) in &self.0 {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.dev() == *dev && m.ino() == *ino => {
                    if let Err(e) = std::fs::remove_file(path) {
                        tracing::debug!("cannot remove the socket file {}: {e}", path.display());
                    }
                }
                _ => {}
            }
        }
    }
}

/// A TCP socket bound to `a`, not listening yet: `SO_REUSEADDR` (a restart is not refused by
/// the last run's TIME_WAIT), dual-stack for an IPv6 address.
fn bound_tcp(a: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(a), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if a.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.bind(&SockAddr::from(a))?;
    Ok(sock)
}

/// Sets the mode and group of the socket file just bound at `path`, through a descriptor of
/// that very file (`O_PATH | O_NOFOLLOW`, then `/proc/self/fd/N`): had someone who may write
/// to its directory swapped it for a symbolic link or another file meanwhile, a `chmod` by
/// path would change that file's mode instead (as root, any file's).
fn set_socket_access(path: &Path, unix: UnixAccess) -> std::io::Result<()> {
    use nix::fcntl::{open, OFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open(path, flags, nix::sys::stat::Mode::empty())?;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if !std::fs::metadata(&by_fd)?.file_type().is_socket() {
        return Err(std::io::Error::other(
            "replaced by something that is not a socket",
        ));
    }
    if let Some(gid) = unix.gid {
        std::os::unix::fs::chown(&by_fd, None, Some(gid))?;
    }
    std::fs::set_permissions(&by_fd, std::fs::Permissions::from_mode(unix.mode))
}

fn in_use() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "a server accepts connections on it",
    )
}

/// Removes a socket file nothing listens on any more (left by a process that ended); one a
/// server still accepts on is in use, not replaced (that would take its new connections).
fn remove_stale_socket(path: &PathBuf) -> std::io::Result<()> {
    match unix_path_state(path)? {
        UnixPath::Stale => std::fs::remove_file(path),
        UnixPath::Free => Ok(()),
    }
}

/// A `unix:` path that can be bound: nothing there, or a socket file nothing listens on.
enum UnixPath {
    Free,
    Stale,
}

/// What is at `path`: an error when a server accepts on it (in use) or it is not a socket.
fn unix_path_state(path: &Path) -> std::io::Result<UnixPath> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // Non-blocking: a server with a full backlog makes a connect wait, not fail.
            let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            probe.set_nonblocking(true)?;
            match probe.connect(&SockAddr::unix(path)?) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(UnixPath::Stale),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UnixPath::Free),
                // Accepted, or its backlog full: a server is there.
                Ok(()) => Err(in_use()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(in_use()),
                Err(e) => Err(e),
            }
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )),
        Err(_) => Ok(UnixPath::Free),
    }
}

/// Sets close-on-exec on a socket systemd passed (passed sockets come without it), so that
/// no process the supervisor starts inherits it but the workers, whose process clears the
/// flag after its fork.
fn close_on_exec(fd: &OwnedFd) -> std::io::Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// The fds 3..3+`count` that `LISTEN_FDS` announced for another process: those open are
/// marked close-on-exec (not closed: they are not ours to close, something else in this
/// process may use them), so that no process the supervisor starts inherits them.
fn not_inherited(count: usize) {
    for fd in 3..3 + count as RawFd {
        #[allow(unsafe_code)]
        // SAFETY: fcntl on a number, no memory involved; an fd that is not open makes it
        // fail with EBADF, which is ignored.
        let _ = unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) };
    }
}

/// Most sockets taken from `LISTEN_FDS` (as `serve()` takes at most).
pub const MAX_INHERITED: usize = 4096;

/// The sockets systemd (or a tool speaking its protocol, e.g. `systemfd`) passed to this
/// process, if any: `LISTEN_FDS` fds from 3, named by `LISTEN_FDNAMES`. A `LISTEN_PID` naming
/// another process means they were meant for it: none are taken. Each fd must be open and a
/// socket, and a stream socket must be listening; otherwise a one-line error (a bad variable
/// is a usage error) and nothing is taken, so no fd this process does not own is ever
/// closed. The variables stay in the environment: [`forget_systemd_env`] removes them.
pub fn from_systemd() -> Result<Vec<Listener>, StartError> {
    let var = |name: &str| match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(StartError::Usage(format!(
            "invalid {name}={v:?}: not UTF-8"
        ))),
    };
    let bad = |name: &str, value: &str, why: String| {
        StartError::Usage(format!("invalid {name}={value:?}: {why}"))
    };
    let Some(fds) = var("LISTEN_FDS")? else {
        return Ok(Vec::new());
    };
    let count: usize = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_INHERITED)
        .ok_or_else(|| {
            bad(
                "LISTEN_FDS",
                &fds,
                format!("not a number of sockets (0 to {MAX_INHERITED})"),
            )
        })?;
    // systemd always sets it; tools such as systemfd may leave it out: accept that too.
    if let Some(pid) = var("LISTEN_PID")? {
        let pid_num: u32 = pid
            .trim()
            .parse()
            .map_err(|_| bad("LISTEN_PID", &pid, "not a process id".into()))?;
        if pid_num != std::process::id() {
            tracing::info!(
                "LISTEN_PID={pid_num} names another process: ignoring LISTEN_FDS (they were meant for it)"
            );
            not_inherited(count);
            return Ok(Vec::new());
        }
    }
    let names: Vec<String> = match var("LISTEN_FDNAMES")? {
        None => (0..count).map(|i| format!("listen{i}")).collect(),
        Some(n) => {
            let names: Vec<String> = n.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(bad(
                    "LISTEN_FDNAMES",
                    &n,
                    format!("names {} sockets but LISTEN_FDS={count}", names.len()),
                ));
            }
            names
        }
    };
    // Every fd is checked before any is taken: an error leaves them all alone.
    for (i, name) in names.iter().enumerate() {
        check_inherited(3 + i as RawFd, count, name)?;
    }
    let listeners = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let raw = 3 + i as RawFd;
            #[allow(unsafe_code)]
            // SAFETY: the socket-activation protocol hands this process fds 3..3+LISTEN_FDS
            // (LISTEN_PID, when set, is our pid); `check_inherited` found each one open and a
            // socket; this runs before the supervisor opens anything of its own, and each fd
            // is wrapped exactly once.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let local = SockRef::from(&fd).local_addr().ok().and_then(|a| {
                a.as_socket()
                    .map(ListenAddr::Tcp)
                    .or_else(|| a.as_pathname().map(|p| ListenAddr::Unix(p.to_owned())))
            });
            close_on_exec(&fd).map_err(|e| StartError::Inherited {
                socket: inherited_name(raw, count, &name),
                reason: e.to_string(),
            })?;
            Ok(Listener { fd, name, local })
        })
        .collect::<Result<Vec<_>, StartError>>()?;
    Ok(listeners)
}

/// `inherited fd 4 (LISTEN_FDS=2, name web)`, for error messages.
fn inherited_name(fd: RawFd, count: usize, name: &str) -> String {
    format!("inherited fd {fd} (LISTEN_FDS={count}, name {name})")
}

/// Checks, without taking it, that inherited `fd` is open and a socket, and listening when it
/// is a stream socket: `/proc/self/fd` answers for any fd without a system call on it.
fn check_inherited(fd: RawFd, count: usize, name: &str) -> Result<(), StartError> {
    use std::os::unix::fs::FileTypeExt;
    let fail = |reason: String| StartError::Inherited {
        socket: inherited_name(fd, count, name),
        reason,
    };
    let meta = match std::fs::metadata(format!("/proc/self/fd/{fd}")) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail("not open in this process".into()))
        }
        Err(e) => return Err(fail(format!("cannot inspect it: {e}"))),
    };
    if !meta.file_type().is_socket() {
        return Err(fail("not a socket".into()));
    }
    #[allow(unsafe_code)]
    // SAFETY: `fd` is open (just seen in /proc/self/fd) and nothing closes it while it is
    // borrowed: only this function uses it, before any thread of the supervisor exists.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    match sock.r#type() {
        Ok(Type::STREAM) | Ok(Type::SEQPACKET) => match sock.is_listener() {
            Ok(true) => Ok(()),
            Ok(false) => Err(fail(
                "a stream socket that is not listening (systemd passes those only with Accept=yes, which unwedge does not support)".into(),
            )),
            Err(e) => Err(fail(format!("cannot inspect it: {e}"))),
        },
        Ok(_) => Ok(()),
        Err(e) => Err(fail(format!("cannot inspect it: {e}"))),
    }
}

/// Removes systemd's socket-activation and notify variables from our environment after
/// they were read, so that no worker ever inherits them.
pub fn forget_systemd_env() {
    for v in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
}

/// Where a probe reaches a listener: loopback for wildcard TCP addresses.
pub fn probe_target(local: &ListenAddr) -> ListenAddr {
    match local {
        ListenAddr::Tcp(a) if a.ip().is_unspecified() => {
            let ip: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            ListenAddr::Tcp(SocketAddr::new(ip, a.port()))
        }
        other => other.clone(),
    }
}

/// A free loopback port for `--port-env` (bound and released at once: another process could
/// take it before the worker does; the worker then fails to start and is restarted).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The fds to hand to the shim, comma-separated, for `UNWEDGE_SHIM_FDS`.
pub(crate) fn shim_fds(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| l.fd.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `LISTEN_FDNAMES` for the listeners.
pub(crate) fn fd_names(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| l.name.replace(':', "_"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks that `command` names an executable file (searching `PATH` like `execvp`).
pub fn check_command(command: &str) -> Result<PathBuf, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |reason: &str| StartError::Command {
        command: command.to_owned(),
        reason: reason.to_owned(),
    };
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let p = PathBuf::from(command);
        return match std::fs::metadata(&p) {
            Err(e) => Err(err(&e.to_string())),
            Ok(m) if !m.is_file() => Err(err("not a regular file")),
            Ok(_) if !executable(&p) => Err(err("not executable (chmod +x?)")),
            Ok(_) => Ok(p),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(command))
        .find(|p| executable(p))
        .ok_or_else(|| err("not found in PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_socket_swapped_for_a_link_to_another_file_leaves_that_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("app.sock");
        let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        let open = UnixAccess {
            mode: 0o666,
            gid: None,
        };
        set_socket_access(&sock_path, open).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sock_path), 0o666);

        // What a chmod by path would have opened up: a private file behind a symbolic link.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(set_socket_access(&link, open).is_err());
        assert_eq!(
            mode(&secret),
            0o600,
            "the file behind the link is untouched"
        );
        // Nor a plain file in the socket's place.
        assert!(set_socket_access(&secret, open).is_err());
        assert_eq!(mode(&secret), 0o600);
    }
}
