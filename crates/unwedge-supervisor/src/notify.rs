//! The private `NOTIFY_SOCKET`: an sd_notify datagram socket whose messages are attributed
//! to a worker by the sender pid the kernel puts in `SCM_CREDENTIALS` (`SO_PASSCRED`).
//!
//! The socket lives in a fresh directory with mode 0700 and is itself 0600 (for workers that
//! run as another user, `--user`: the socket is theirs, and the directory, still the
//! supervisor's, 0710 with their group); a message whose
//! pid is not a worker (or in a worker's process group) is ignored and counted as forged.
//! A supervisor that stops removes its directory; one that is killed (SIGKILL, the OOM killer)
//! cannot, and the next supervisor started with the same base directory removes it (see
//! [`NotifySocket::bind`]).
//!
//! ```
//! use unwedge_supervisor::notify::{parse, NotifyMessage};
//! let msgs = parse(b"READY=1\nSTATUS=serving 2 requests\nWATCHDOG=1").unwrap();
//! assert_eq!(msgs, [NotifyMessage::Ready, NotifyMessage::Status("serving 2 requests".into()),
//!                   NotifyMessage::Watchdog]);
//! assert!(parse(b"not a message").is_err());
//! ```

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt::PassCred, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// The name of every notify socket directory begins with it.
const DIR_PREFIX: &str = "unwedge-";

/// The socket's name in its directory.
const SOCKET_NAME: &str = "notify.sock";

/// Removes the notify socket directories in `base` that no supervisor serves any more, and
/// returns how many it removed.
///
/// A directory is removed only when all of these hold: its name begins with `unwedge-`, it is
/// a directory (not a symbolic link) owned by `uid` with mode 0700 (or 0710, for workers of
/// another user), and its `notify.sock` is a
/// socket that refuses a connection (`ECONNREFUSED`: nobody has it bound). The test asks the
/// socket itself, not a pid, so a live supervisor is never swept, also one in another pid
/// namespace sharing the directory; and nothing is sent to it (a datagram `connect` sends
/// nothing). A directory without its socket (a supervisor between creating it and binding)
/// is left alone, as is anything that cannot be read. Errors are ignored: sweeping is
/// housekeeping, never a reason not to start.
fn sweep_stale(base: &Path, uid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_bytes()
            .starts_with(DIR_PREFIX.as_bytes())
        {
            continue;
        }
        let dir = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        let private = matches!(meta.mode() & 0o777, 0o700 | 0o710);
        if !meta.is_dir() || meta.uid() != uid || !private {
            continue;
        }
        let sock = dir.join(SOCKET_NAME);
        let Ok(smeta) = std::fs::symlink_metadata(&sock) else {
            continue;
        };
        if !smeta.file_type().is_socket() {
            continue;
        }
        let refused = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|c| c.connect(&sock))
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
        if refused && std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// One sd_notify assignment the supervisor understands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotifyMessage {
    /// `READY=1`
    Ready,
    /// `WATCHDOG=1`
    Watchdog,
    /// `STATUS=…`
    Status(String),
    /// `STOPPING=1`
    Stopping,
    /// `RELOADING=1`
    Reloading,
    /// `UNWEDGE_REPORT=<json>`: a panic report from an `unwedge::serve` worker (raw JSON).
    Report(String),
    /// `EXTEND_TIMEOUT_USEC=…`: the worker needs more time for what it is doing (starting or
    /// stopping) and will say so again before this much time has passed. As systemd's, it
    /// never shortens a timeout: the deadline becomes the later of the configured one and
    /// now plus this. At most [`MAX_NOTIFY_DURATION`].
    ExtendTimeout(std::time::Duration),
    /// `WATCHDOG=trigger`: the worker found itself broken and asks to be handled as hung
    /// (dump signal, SIGKILL, a replacement) now.
    WatchdogTrigger,
    /// `WATCHDOG_USEC=…`: the worker's own heartbeat limit from now on, in place of
    /// `--watchdog` (`0` turns its heartbeat check off). At most [`MAX_NOTIFY_DURATION`].
    WatchdogUsec(std::time::Duration),
    /// Any other `KEY=value` (ignored).
    Other(String),
}

/// The longest time `EXTEND_TIMEOUT_USEC` and `WATCHDOG_USEC` are taken to mean (30 days); a
/// larger value counts as this much, so that no deadline overflows.
pub const MAX_NOTIFY_DURATION: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 60 * 60);

/// A datagram that is not an sd_notify message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed notify message: {0}")]
pub struct Malformed(pub String);

/// Parses one datagram: newline-separated `KEY=value` assignments. As systemd does, a line
/// that is not one (no `=`, a key other than `A-Z`, `0-9` and `_`, not UTF-8, an
/// `UNWEDGE_REPORT` that is not JSON) is left out and the others are taken: one bad line never
/// costs a worker its `READY=1`. An error only when no line is an assignment (see
/// [`parse_lines`] for the lines left out).
pub fn parse(datagram: &[u8]) -> Result<Vec<NotifyMessage>, Malformed> {
    let (messages, mut bad) = parse_lines(datagram);
    if messages.is_empty() {
        return Err(bad.drain(..).next().unwrap_or(Malformed("empty".into())));
    }
    Ok(messages)
}

/// Parses one datagram line by line: the assignments, and why each other non-empty line was
/// left out.
///
/// ```
/// use unwedge_supervisor::notify::{parse_lines, NotifyMessage};
/// let (msgs, bad) = parse_lines(b"READY=1\nStatus-Detail=warming done");
/// assert_eq!(msgs, [NotifyMessage::Ready]);
/// assert_eq!(bad.len(), 1);
/// ```
pub fn parse_lines(datagram: &[u8]) -> (Vec<NotifyMessage>, Vec<Malformed>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for line in datagram.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match parse_line(line) {
            Ok(m) => out.push(m),
            Err(e) => bad.push(e),
        }
    }
    (out, bad)
}

fn parse_line(line: &[u8]) -> Result<NotifyMessage, Malformed> {
    let line = std::str::from_utf8(line).map_err(|_| Malformed("not UTF-8".into()))?;
    let (key, value) = line
        .split_once('=')
        .ok_or_else(|| Malformed(format!("no `=` in {line:.40}")))?;
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Malformed(format!("bad key {key:.40}")));
    }
    Ok(match (key, value) {
        ("READY", "1") => NotifyMessage::Ready,
        ("WATCHDOG", "1") => NotifyMessage::Watchdog,
        ("STOPPING", "1") => NotifyMessage::Stopping,
        ("RELOADING", "1") => NotifyMessage::Reloading,
        ("WATCHDOG", "trigger") => NotifyMessage::WatchdogTrigger,
        ("STATUS", s) => NotifyMessage::Status(status_text(s)),
        ("EXTEND_TIMEOUT_USEC", usec) => NotifyMessage::ExtendTimeout(micros(key, usec)?),
        ("WATCHDOG_USEC", usec) => NotifyMessage::WatchdogUsec(micros(key, usec)?),
        ("UNWEDGE_REPORT", json) => {
            serde_json::from_str::<serde_json::Value>(json)
                .map_err(|e| Malformed(format!("UNWEDGE_REPORT is not JSON: {e}")))?;
            NotifyMessage::Report(json.to_owned())
        }
        (k, _) => NotifyMessage::Other(k.to_owned()),
    })
}

/// The longest `STATUS=` text kept, in bytes (`…` included): a worker's status goes into log
/// lines, `/status`, the page and alert summaries, and a datagram may hold 256 KiB of it.
pub const MAX_STATUS_BYTES: usize = 1024;

/// `STATUS=` text cut to [`MAX_STATUS_BYTES`] at a character boundary, `…` marking a cut.
fn status_text(s: &str) -> String {
    // Redacted as a worker's report and stderr are: any worker may send one, not every one
    // redacts, and it goes to the log, `/status`, the status page and alerts. Before the
    // cut, which then can only cut what is redacted already.
    let redacted = unwedge_redact::redact_text(s);
    // Its control characters escaped: the supervisor's own log lines quote it, and a JSON
    // log keeps DEL and the C1 controls (U+009B is CSI) as they are.
    let shown = crate::text::escape_controls(redacted.as_deref().unwrap_or(s));
    crate::text::cut_marked(&shown, MAX_STATUS_BYTES).into_owned()
}

/// A decimal number of microseconds, as systemd reads it (digits only), capped at
/// [`MAX_NOTIFY_DURATION`].
fn micros(key: &str, value: &str) -> Result<std::time::Duration, Malformed> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed(format!(
            "{key} is not a number of microseconds: {value:.40}"
        )));
    }
    // All digits: only too many of them fails, and that is more than the cap anyway.
    let usec = value.parse::<u64>().unwrap_or(u64::MAX);
    Ok(std::time::Duration::from_micros(usec).min(MAX_NOTIFY_DURATION))
}

/// The first of `candidates` (variable names with their values: `$RUNTIME_DIRECTORY`,
/// `$XDG_RUNTIME_DIR`) that is a directory, else the temporary directory (`TMPDIR`), with the
/// name of the variable it came from. systemd's `RUNTIME_DIRECTORY` may list several
/// directories separated by colons: the first is taken.
fn base_dir(candidates: &[(&'static str, Option<std::ffi::OsString>)]) -> (PathBuf, &'static str) {
    candidates
        .iter()
        .filter_map(|(name, v)| {
            v.as_ref()?
                .to_str()
                .and_then(|v| v.split(':').next())
                .map(|p| (PathBuf::from(p), *name))
        })
        .find(|(p, _)| !p.as_os_str().is_empty() && p.is_dir())
        .unwrap_or_else(|| (std::env::temp_dir(), "TMPDIR"))
}

/// The longest path a unix socket may be bound at, in bytes (`sun_path` holds 108, the
/// terminating NUL included).
const MAX_SOCKET_PATH: usize = 107;

/// Refuses a socket `path` longer than a unix socket allows, saying which path it is and what
/// to do (the directory came from the variable `from`), where `bind` would only say "path
/// must be shorter than SUN_LEN".
fn check_socket_path(path: &Path, from: &str) -> io::Result<()> {
    let len = path.as_os_str().len();
    if len <= MAX_SOCKET_PATH {
        return Ok(());
    }
    let what = match from {
        "TMPDIR" => "set TMPDIR (or RUNTIME_DIRECTORY) to a shorter directory",
        "RUNTIME_DIRECTORY" => "set RUNTIME_DIRECTORY to a shorter directory",
        _ => "set RUNTIME_DIRECTORY to a shorter directory (it is used first)",
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "its path {} ({len} bytes, in ${from}) is longer than a unix socket path may be \
             ({MAX_SOCKET_PATH} bytes): {what}",
            path.display()
        ),
    ))
}

/// Binds a datagram socket at `path`, readable and writable by this user only, with
/// `SO_PASSCRED` on; returns it with its file's inode.
fn bind_private(path: &Path) -> io::Result<(UnixDatagram, u64)> {
    let sock = UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    setsockopt(&sock, PassCred, &true)?;
    let inode = std::fs::symlink_metadata(path)?.ino();
    Ok((sock, inode))
}

/// The supervisor's private notify socket.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
    /// The socket file's inode, to notice it was removed or replaced.
    inode: u64,
    /// Who the socket was given to, and whose group may enter the directory (`--user`), if
    /// not this process's user.
    owner: Option<(u32, u32)>,
}

/// Gives the socket file `path` to `owner` (uid, gid), if any. The directory it is in is ours
/// and closed to writes, so the file cannot have been replaced meanwhile.
fn give(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// Makes `dir` (ours) private: 0700, or 0710 with `owner`'s group, so that workers running
/// as `owner` may enter it (to reach the socket) but not list or change it.
fn open_dir_to(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mode = match owner {
        Some((_, gid)) => {
            std::os::unix::fs::lchown(dir, None, Some(gid))?;
            0o710
        }
        None => 0o700,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// What one received datagram was.
#[derive(Debug)]
pub struct Datagram {
    /// Sender pid from `SCM_CREDENTIALS` (`None`: no credentials, treated as forged).
    pub pid: Option<i32>,
    /// The bytes (`None` if truncated: larger than the receive buffer).
    pub bytes: Option<Vec<u8>>,
    /// The fd a `BARRIER=1` message carries (`sd_notify_barrier`, which `systemd-notify`
    /// sends after its message and then waits on): kept until this datagram is dropped, that
    /// is after every message received before it was handled, as systemd does. The sender
    /// then sees its end hang up. Closing it on receipt answered the barrier before an
    /// earlier `READY=1` read in the same batch was handled, and the helper could exit first
    /// and leave that `READY=1` to no worker.
    barrier: Option<OwnedFd>,
}

impl Datagram {
    /// Whether this datagram is a barrier (`BARRIER=1` with one fd), answered when dropped.
    pub fn is_barrier(&self) -> bool {
        self.barrier.is_some()
    }
}

impl NotifySocket {
    /// Creates the directory (0700) and the socket (0600) with `SO_PASSCRED` on, in
    /// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`) when set, else `$XDG_RUNTIME_DIR`,
    /// else the temporary directory. Must be called inside a tokio runtime.
    ///
    /// It also removes the directories that killed supervisors left there: those named
    /// `unwedge-*`, owned by this user with mode 0700, whose `notify.sock` refuses a
    /// connection (nobody has it bound; a live supervisor's socket is never touched).
    pub fn bind() -> io::Result<Self> {
        Self::bind_for(None)
    }

    /// As [`bind`](Self::bind), for workers that run as another user (`--user`): the socket
    /// is given to `owner` (uid, gid), still 0600, and the directory, still this user's, lets
    /// `owner`'s group in (0710: enter, not list or change), so that only that user (and root)
    /// can reach the socket and nobody else can replace it. `$XDG_RUNTIME_DIR` is then passed
    /// over: it is the supervisor's user's own directory, which no other user can enter.
    pub fn bind_for(owner: Option<(u32, u32)>) -> io::Result<Self> {
        let (base, from) = base_dir(&[
            ("RUNTIME_DIRECTORY", std::env::var_os("RUNTIME_DIRECTORY")),
            (
                "XDG_RUNTIME_DIR",
                owner
                    .is_none()
                    .then(|| std::env::var_os("XDG_RUNTIME_DIR"))
                    .flatten(),
            ),
        ]);
        Self::bind_from(&base, from, owner)
    }

    #[cfg(test)]
    fn bind_in(base: &Path, owner: Option<(u32, u32)>) -> io::Result<Self> {
        Self::bind_from(base, "TMPDIR", owner)
    }

    /// Binds in `base`, which came from the variable `from` (named when the path is too long).
    fn bind_from(base: &Path, from: &str, owner: Option<(u32, u32)>) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(base)?;
        check_socket_path(&dir.path().join(SOCKET_NAME), from)?;
        open_dir_to(dir.path(), owner)?;
        let uid = std::fs::metadata(dir.path())?.uid();
        let removed = sweep_stale(base, uid);
        if removed > 0 {
            tracing::info!(
                "removed {removed} notify socket director{} left by killed supervisors in {}",
                if removed == 1 { "y" } else { "ies" },
                base.display()
            );
        }
        let path = dir.path().join(SOCKET_NAME);
        let (sock, inode) = bind_private(&path)?;
        give(&path, owner)?;
        Ok(NotifySocket {
            sock,
            path,
            _dir: dir,
            inode,
            owner,
        })
    }

    /// Binds the socket again if its file is gone or is not ours any more: a temporary
    /// directory cleaner (`tmpwatch`, `tmpreaper`, a hand-run `rm`) that removed it would
    /// otherwise cut every worker off (no heartbeat arrives: all of them hung, and no
    /// replacement could ever say it is ready). Returns the datagrams still queued on the old
    /// socket (read into `buf`, as [`drain_queued`](Self::drain_queued) does), to be handled
    /// before anything the new one receives; `Ok(None)` when the file is fine. Cheap: one
    /// `lstat`.
    pub fn heal(&mut self, buf: &mut [u8]) -> io::Result<Option<Vec<Datagram>>> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.ino() == self.inode && m.file_type().is_socket() => return Ok(None),
            Ok(_) => std::fs::remove_file(&self.path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        if let Err(e) = std::fs::create_dir(dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        // Ours and private again, whoever recreated it.
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(io::Error::other(format!(
                "{} is no longer this user's directory",
                dir.display()
            )));
        }
        open_dir_to(dir, self.owner)?;
        let (sock, inode) = bind_private(&self.path)?;
        give(&self.path, self.owner)?;
        let queued = self.drain_queued(buf, usize::MAX);
        self.sock = sock;
        self.inode = inode;
        Ok(Some(queued))
    }

    /// The socket path (the workers' `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives, without waiting, the datagrams already queued (at most `max`), in order.
    /// The supervisor calls it before it reaps exited workers: what a worker said just before
    /// it exited (`STATUS=tainted`, `STOPPING=1`, its last report) is then read while its pid
    /// still names a worker, not after, when it would be dropped as coming from no worker.
    ///
    /// Only an empty queue ends it early: an error on one datagram (an interrupted call, a
    /// momentary lack of kernel memory) goes on to the next, so that a worker's last words
    /// behind it are still read before its exit is handled. (At most a few such errors in a
    /// row: one that repeats is the async `recv`'s to report.)
    pub fn drain_queued(&self, buf: &mut [u8], max: usize) -> Vec<Datagram> {
        let mut out = Vec::new();
        let mut errors = 0;
        while out.len() < max {
            // MSG_DONTWAIT: an empty queue is `WouldBlock`.
            match recv_with_pid(self.sock.as_raw_fd(), buf) {
                Ok(d) => {
                    out.push(d);
                    errors = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    errors += 1;
                    if errors > MAX_DRAIN_ERRORS {
                        break;
                    }
                    tracing::debug!("notify socket: {e}; reading on");
                }
            }
        }
        out
    }

    /// Receives one datagram with its sender's pid.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Datagram> {
        loop {
            self.sock.readable().await?;
            match self.sock.try_io(Interest::READABLE, || {
                recv_with_pid(self.sock.as_raw_fd(), buf)
            }) {
                Ok(d) => return Ok(d),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Errors in a row after which [`NotifySocket::drain_queued`] stops.
const MAX_DRAIN_ERRORS: u32 = 8;

/// The most fds one datagram can carry (the kernel's `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Whether the log said already that fds sent with a message are closed.
static FDS_TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn recv_with_pid(fd: i32, buf: &mut [u8]) -> io::Result<Datagram> {
    // Room for the credentials and for as many fds as a datagram can carry
    // (`sd_notify_with_fds`, `FDSTORE=1`): with room for the credentials only, the kernel
    // cut the control data short (MSG_CTRUNC) and the whole message, its READY=1 too, was
    // lost.
    let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut pid = None;
    let mut fds: Vec<OwnedFd> = Vec::new();
    // Cut short all the same (control data of another kind): not safe to read, so no sender
    // pid, and the message is ignored as forged, but the rest of the queue is read.
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                ControlMessageOwned::ScmRights(received) => {
                    for raw in received {
                        #[allow(unsafe_code)]
                        // SAFETY: the kernel just installed this fd for us (SCM_RIGHTS) and
                        // nothing else knows of it: owning it once, to close it, is sound.
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
                _ => {}
            }
        }
    }
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    let len = msg.bytes;
    let bytes = (!truncated).then(|| buf[..len].to_vec());
    let barrier = match (bytes.as_deref(), fds.len()) {
        (Some(b), 1) if is_barrier(b) => fds.pop(),
        _ => None,
    };
    if !fds.is_empty() && !FDS_TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            "pid {} sent {} file descriptor(s) with a notify message (sd_notify_with_fds, \
             FDSTORE=1): unwedge keeps no file descriptor store, so they are closed; the \
             message itself is read as usual (said once)",
            pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
            fds.len()
        );
    }
    drop(fds);
    Ok(Datagram {
        pid,
        bytes,
        barrier,
    })
}

/// Whether a message is `BARRIER=1` alone (a trailing newline allowed), as
/// `sd_notify_barrier` sends it.
fn is_barrier(bytes: &[u8]) -> bool {
    bytes.strip_suffix(b"\n").unwrap_or(bytes) == b"BARRIER=1"
}

/// Whether a `STATUS=` text says the worker is tainted or wedged, and which. `unwedge::serve`
/// workers send `STATUS=<state>[: reason]` with state `healthy`, `draining`, `tainted` or
/// `wedged`; the first word decides (case-insensitive).
pub fn unhealthy_status(status: &str) -> Option<&'static str> {
    let first = status
        .trim_start()
        .split([':', ' ', ',', ';'])
        .next()
        .unwrap_or("");
    match first.to_ascii_lowercase().as_str() {
        "wedged" => Some("wedged"),
        "tainted" => Some("tainted"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_directory_prefers_systemds_runtime_directory() {
        let run = tempfile::tempdir().unwrap();
        let xdg = tempfile::tempdir().unwrap();
        let os = |p: &Path| Some(p.as_os_str().to_owned());
        let base = |a, b| base_dir(&[("RUNTIME_DIRECTORY", a), ("XDG_RUNTIME_DIR", b)]);
        let both = format!("{}:{}", run.path().display(), xdg.path().display());
        let (r, x) = ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR");
        assert_eq!(
            base(os(run.path()), os(xdg.path())),
            (run.path().to_path_buf(), r)
        );
        assert_eq!(base(Some(both.into()), None), (run.path().to_path_buf(), r));
        assert_eq!(base(None, os(xdg.path())), (xdg.path().to_path_buf(), x));
        let gone = run.path().join("gone");
        assert_eq!(
            base(os(&gone), os(xdg.path())),
            (xdg.path().to_path_buf(), x)
        );
        let tmp = (std::env::temp_dir(), "TMPDIR");
        assert_eq!(base(Some("".into()), None), tmp);
        assert_eq!(base(None, None), tmp);
    }

    /// Any worker may send one, and it is shown in the log, `/status`, the page and alerts.
    #[test]
    fn a_status_is_redacted_as_a_report_is() {
        let said = "STATUS=tainted: upstream rejected Authorization: Bearer STATUSAUTH1 via \
                    https://bob:STATUSPW1@db/x?token=STATUSQ1 and password=hunter2";
        let [NotifyMessage::Status(shown)] = &parse(said.as_bytes()).unwrap()[..] else {
            panic!("not one STATUS");
        };
        for secret in ["STATUSAUTH1", "STATUSPW1", "STATUSQ1", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.starts_with("tainted: upstream rejected"), "{shown}");
        assert_eq!(unhealthy_status(shown), Some("tainted"));
        // Nothing to redact: as it was.
        let [NotifyMessage::Status(plain)] = &parse(b"STATUS=warming caches 40%").unwrap()[..]
        else {
            panic!("not one STATUS");
        };
        assert_eq!(plain, "warming caches 40%");
    }

    /// The supervisor's own log lines quote a worker's `STATUS=` text (`w1 pid 7 is tainted
    /// (…)`), also as JSON, which keeps DEL and the C1 controls raw: they are escaped here.
    #[test]
    fn a_status_has_its_control_characters_escaped() {
        let said = "STATUS=tainted: \u{9b}2J\x1b]0;TITLE\x07 gone\u{7f}";
        let [NotifyMessage::Status(shown)] = &parse(said.as_bytes()).unwrap()[..] else {
            panic!("not one STATUS");
        };
        assert_eq!(shown, r"tainted: \u{9b}2J\x1b]0;TITLE\x07 gone\x7f");
        assert_eq!(unhealthy_status(shown), Some("tainted"));
    }

    #[test]
    fn a_long_status_is_cut_between_characters() {
        let long = format!("wedged: {}", "日本".repeat(100_000));
        let m = parse(format!("STATUS={long}").as_bytes()).unwrap();
        let [NotifyMessage::Status(s)] = &m[..] else {
            panic!("{m:?}")
        };
        assert!(s.len() <= MAX_STATUS_BYTES, "{}", s.len());
        assert!(s.ends_with('…') && long.starts_with(s.trim_end_matches('…')));
        // Its meaning is kept: still a wedged worker.
        assert_eq!(unhealthy_status(s), Some("wedged"));
        let short = parse(b"STATUS=serving").unwrap();
        assert_eq!(short, [NotifyMessage::Status("serving".into())]);
    }

    #[test]
    fn parses_timeouts_in_microseconds_and_rejects_what_is_not_one() {
        use std::time::Duration;
        let m = parse(b"EXTEND_TIMEOUT_USEC=2500000\nWATCHDOG_USEC=0\nWATCHDOG=trigger").unwrap();
        assert_eq!(
            m,
            [
                NotifyMessage::ExtendTimeout(Duration::from_millis(2500)),
                NotifyMessage::WatchdogUsec(Duration::ZERO),
                NotifyMessage::WatchdogTrigger,
            ]
        );
        // Absurd values are capped, never an overflow further on.
        for huge in ["18446744073709551615", "99999999999999999999999999"] {
            let line = format!("EXTEND_TIMEOUT_USEC={huge}");
            assert_eq!(
                parse(line.as_bytes()).unwrap(),
                [NotifyMessage::ExtendTimeout(MAX_NOTIFY_DURATION)]
            );
        }
        for bad in ["", "-1", "1.5", " 10", "10s", "0x10", "１２"] {
            let line = format!("WATCHDOG_USEC={bad}");
            let err = parse(line.as_bytes()).unwrap_err();
            assert!(err.0.contains("WATCHDOG_USEC is not a number"), "{err}");
        }
        // Only `trigger` (and `1`) are heartbeats' words.
        assert_eq!(
            parse(b"WATCHDOG=triggered").unwrap(),
            [NotifyMessage::Other("WATCHDOG".into())]
        );
    }

    #[test]
    fn parses_report_and_rejects_bad_json() {
        let m = parse(b"UNWEDGE_REPORT={\"message\":\"boom\"}").unwrap();
        assert_eq!(m, [NotifyMessage::Report("{\"message\":\"boom\"}".into())]);
        assert!(parse(b"UNWEDGE_REPORT={nope").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"lower=1").is_err());
    }

    #[test]
    fn a_bad_line_leaves_the_others_of_its_datagram() {
        let (m, bad) =
            parse_lines(b"READY=1\nStatus-Detail=warming done\nno equals\n\xff=1\nWATCHDOG=1");
        assert_eq!(m, [NotifyMessage::Ready, NotifyMessage::Watchdog]);
        assert_eq!(bad.len(), 3);
        let (m, bad) = parse_lines(b"UNWEDGE_REPORT={nope\nSTATUS=ok");
        assert_eq!(m, [NotifyMessage::Status("ok".into())]);
        assert_eq!(bad.len(), 1);
        assert_eq!(parse(b"READY=1\nlower=1").unwrap(), [NotifyMessage::Ready]);
    }

    use proptest::prelude::*;

    /// A line a worker (or anything that reaches the socket) may send: keys, `=`, JSON,
    /// bytes that are not UTF-8, NUL, CR, multibyte characters; no line break.
    fn notify_line() -> impl Strategy<Value = Vec<u8>> {
        const PIECES: &[&[u8]] = &[
            b"READY",
            b"STATUS",
            b"UNWEDGE_REPORT",
            b"WATCHDOG",
            b"x",
            b"=",
            b"1",
            b"{",
            b"}",
            b"\"",
            b":",
            b" ",
            b"\r",
            b"\0",
            b"\xff",
            b"\xc3",
            b"\xc3\xa9",
            "日本".as_bytes(),
            "🦀".as_bytes(),
            &[b'A'; 300],
        ];
        proptest::collection::vec(prop::sample::select(PIECES), 0..24).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever else a datagram holds, its `READY=1` line is taken; no panic; each line
        /// left out is said why in a bounded reason (it goes to the log).
        #[test]
        fn bad_lines_never_cost_a_ready(
            before in proptest::collection::vec(notify_line(), 0..4),
            after in proptest::collection::vec(notify_line(), 0..4),
        ) {
            let mut datagram = before.join(&b"\n"[..]);
            datagram.extend_from_slice(b"\nREADY=1\n");
            datagram.extend_from_slice(&after.join(&b"\n"[..]));
            let (msgs, bad) = parse_lines(&datagram);
            prop_assert!(msgs.contains(&NotifyMessage::Ready), "{msgs:?}");
            for Malformed(reason) in &bad {
                prop_assert!(reason.chars().count() <= 120, "{reason:?}");
            }
        }
    }

    #[test]
    fn status_words() {
        assert_eq!(unhealthy_status("Tainted: mutex poisoned"), Some("tainted"));
        assert_eq!(unhealthy_status("wedged: runtime stalled"), Some("wedged"));
        assert_eq!(unhealthy_status("serving"), None);
        assert_eq!(
            unhealthy_status("healthy: serving on 127.0.0.1:1 (was wedged)"),
            None
        );
    }

    #[tokio::test]
    async fn attributes_sender_pid_and_permissions() {
        let n = NotifySocket::bind().unwrap();
        let mode = std::fs::metadata(n.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(n.path().parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        c.send_to(b"READY=1", n.path()).unwrap();
        let mut buf = vec![0; 1024];
        let d = n.recv(&mut buf).await.unwrap();
        assert_eq!(d.pid, Some(std::process::id() as i32));
        assert_eq!(d.bytes.as_deref(), Some(&b"READY=1"[..]));
    }

    /// Sends `message` to `n` from `c` with the write end of a fresh pipe attached, as
    /// `sd_notify_with_fds` does; returns the read end, not blocking: it reads end-of-file
    /// once every copy of the write end is closed, `WouldBlock` while one is open.
    fn send_with_fd(
        n: &NotifySocket,
        c: &std::os::unix::net::UnixDatagram,
        message: &[u8],
    ) -> std::io::PipeReader {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        use std::os::fd::AsRawFd;
        let (theirs, ours) = std::io::pipe().unwrap();
        fcntl(&theirs, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let addr = UnixAddr::new(n.path()).unwrap();
        sendmsg(
            c.as_raw_fd(),
            &[std::io::IoSlice::new(message)],
            &[ControlMessage::ScmRights(&[ours.as_raw_fd()])],
            MsgFlags::empty(),
            Some(&addr),
        )
        .unwrap();
        theirs
    }

    /// `sd_notify_barrier` (what `systemd-notify` does after its message): the barrier's fd
    /// hangs up only once the datagram is dropped, that is after the messages read before it
    /// were handled, not when it is read.
    #[tokio::test]
    async fn a_barrier_is_answered_when_handled_not_when_read() {
        use std::io::Read;
        let n = NotifySocket::bind().unwrap();
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        c.send_to(b"READY=1", n.path()).unwrap();
        let mut theirs = send_with_fd(&n, &c, b"BARRIER=1");
        let mut buf = vec![0; 1024];
        let got = n.drain_queued(&mut buf, 8);
        assert_eq!(got.len(), 2);
        assert!(!got[0].is_barrier());
        assert!(got[1].is_barrier());
        // Read, not handled yet: the sender still waits.
        let mut byte = [0u8; 1];
        let e = theirs.read(&mut byte).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "answered when read");
        drop(got);
        // Handled: its end hung up.
        assert_eq!(theirs.read(&mut byte).unwrap(), 0);
    }

    /// Other fds (`FDSTORE=1`, `sd_notify_with_fds`) are closed at once: no fd store here.
    #[tokio::test]
    async fn fds_sent_with_other_messages_are_closed_at_once() {
        use std::io::Read;
        let n = NotifySocket::bind().unwrap();
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let mut theirs = send_with_fd(&n, &c, b"FDSTORE=1");
        let mut buf = vec![0; 1024];
        let got = n.recv(&mut buf).await.unwrap();
        assert!(!got.is_barrier());
        let mut byte = [0u8; 1];
        assert_eq!(theirs.read(&mut byte).unwrap(), 0, "the fd was kept");
        assert_eq!(got.bytes.as_deref(), Some(&b"FDSTORE=1"[..]));
    }

    #[tokio::test]
    async fn sweeps_only_directories_of_sockets_nobody_has_bound() {
        let base = tempfile::tempdir().unwrap();
        // A directory under `base` with `mode`, and in it a socket nobody has bound (as a
        // killed supervisor leaves it), a plain file, or nothing.
        enum Inside {
            ClosedSocket,
            PlainFile,
            Nothing,
        }
        let left = |name: &str, mode: u32, inside: Inside| {
            let dir = base.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let sock = dir.join(SOCKET_NAME);
            match inside {
                Inside::ClosedSocket => {
                    drop(std::os::unix::net::UnixDatagram::bind(&sock).unwrap())
                }
                Inside::PlainFile => std::fs::write(&sock, b"").unwrap(),
                Inside::Nothing => {}
            }
            dir
        };
        let live = NotifySocket::bind_in(base.path(), None).unwrap();
        let stale = left("unwedge-killed", 0o700, Inside::ClosedSocket);
        // Not ours to remove: a plain file named like the socket, a directory with no socket
        // yet, a name without the prefix, a world-readable directory.
        let kept = [
            left("unwedge-file", 0o700, Inside::PlainFile),
            left("unwedge-starting", 0o700, Inside::Nothing),
            left("other-killed", 0o700, Inside::ClosedSocket),
            left("unwedge-open", 0o755, Inside::ClosedSocket),
        ];

        // The next supervisor's bind removes the killed one's directory only.
        let next = NotifySocket::bind_in(base.path(), None).unwrap();
        assert!(!stale.exists());
        for k in &kept {
            assert!(k.exists(), "{} was removed", k.display());
        }
        // Both live sockets are still there and still receive.
        for n in [&live, &next] {
            let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
            c.send_to(b"READY=1", n.path()).unwrap();
            let mut buf = vec![0; 64];
            let d = n.recv(&mut buf).await.unwrap();
            assert_eq!(d.bytes.as_deref(), Some(&b"READY=1"[..]));
        }
        // Another user's killed supervisor: not this one's to remove.
        let stale = left("unwedge-killed-again", 0o700, Inside::ClosedSocket);
        let uid = std::fs::metadata(&stale).unwrap().uid();
        assert_eq!(sweep_stale(base.path(), uid.wrapping_add(1)), 0);
        assert!(stale.exists());
        assert_eq!(sweep_stale(base.path(), uid), 1);
        assert!(!stale.exists());
    }
}
