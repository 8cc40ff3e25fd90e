//! Listening sockets: bound once, kept for the supervisor's life, passed to every worker.
//!
//! Each socket is bound with a large backlog, so connections that arrive while no worker
//! accepts (one crashed, its replacement is starting) wait in the kernel queue instead of
//! being refused. The supervisor's copies are kept *without* close-on-exec; the exec shim
//! ([`crate::shim`]) moves them to fds 3, 4, … and sets `LISTEN_FDS`/`LISTEN_PID`.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use crate::config::ListenAddr;
use crate::error::StartError;

/// Backlog asked for each socket (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 4096;

/// One listening socket held by the supervisor.
#[derive(Debug)]
pub struct Listener {
    /// The socket (inheritable: close-on-exec is cleared).
    pub fd: OwnedFd,
    /// Its name in `LISTEN_FDNAMES`.
    pub name: String,
    /// Where a probe can reach it, if known.
    pub local: Option<ListenAddr>,
}

/// Binds every address. A unix socket path that exists and is a socket is replaced.
pub fn bind_all(addrs: &[ListenAddr]) -> Result<Vec<Listener>, StartError> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let fd = bind(addr).map_err(|e| StartError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
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
            inheritable(&fd).map_err(|e| StartError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
            Ok(Listener {
                fd,
                name: format!("listen{i}"),
                local,
            })
        })
        .collect()
}

fn bind(addr: &ListenAddr) -> std::io::Result<OwnedFd> {
    let sock = match addr {
        ListenAddr::Tcp(a) => {
            let sock = Socket::new(Domain::for_address(*a), Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            if a.is_ipv6() {
                sock.set_only_v6(false).ok();
            }
            sock.bind(&SockAddr::from(*a))?;
            sock
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            sock.bind(&SockAddr::unix(path)?)?;
            sock
        }
    };
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

fn remove_stale_socket(path: &PathBuf) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )),
        Err(_) => Ok(()),
    }
}

/// Clears close-on-exec so that workers inherit the socket.
fn inheritable(fd: &OwnedFd) -> std::io::Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

/// The sockets systemd passed to this process (`LISTEN_PID` = our pid), if any. The
/// variables are removed from the environment either way, so workers never see them.
#[allow(unsafe_code)]
pub fn from_systemd() -> Vec<Listener> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    if !pid_ok || n <= 0 {
        return Vec::new();
    }
    (0..n)
        .map(|i| {
            let raw = 3 + i;
            // SAFETY: systemd's socket-activation protocol hands this process ownership of
            // fds 3..3+LISTEN_FDS (checked above: LISTEN_PID is our pid); nothing else in
            // this process has opened or taken them, and each is wrapped exactly once.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let local = SockRef::from(&fd).local_addr().ok().and_then(|a| {
                a.as_socket()
                    .map(ListenAddr::Tcp)
                    .or_else(|| a.as_pathname().map(|p| ListenAddr::Unix(p.to_owned())))
            });
            let _ = inheritable(&fd);
            let name = names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| format!("listen{i}"));
            Listener { fd, name, local }
        })
        .collect()
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
