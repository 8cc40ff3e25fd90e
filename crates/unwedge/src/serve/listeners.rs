//! The sockets `serve()` accepts on: inherited (`LISTEN_FDS`), or bound from an address.

use std::fmt;
use std::io;
use std::path::Path;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::config::{Activation, ListenAddr};
use super::ServeError;

/// One listening socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// With the path to remove on close, for sockets this process bound itself.
    Unix(UnixListener, Option<std::path::PathBuf>),
}

/// An accepted connection.
pub(crate) enum Stream {
    /// With the client's address.
    Tcp(TcpStream, std::net::SocketAddr),
    Unix(UnixStream),
}

/// Sockets bound by the caller ([`Server::listener`](crate::Server::listener)).
pub(crate) fn from_std(given: Vec<std::net::TcpListener>) -> Result<Vec<Listener>, ServeError> {
    given
        .into_iter()
        .map(|l| {
            let addr = l
                .local_addr()
                .map_or_else(|_| "the given listener".to_owned(), |a| a.to_string());
            l.set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(l))
                .map(Listener::Tcp)
                .map_err(|e| {
                    ServeError::Listen(format!("cannot listen on {addr} (Server::listener): {e}"))
                })
        })
        .collect()
}

impl Listener {
    pub(crate) async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Small responses should not wait for Nagle.
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s, peer))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }

    /// The address, for logs and `STATUS=`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp:?".into()),
            Listener::Unix(l, _) => match l.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:(unnamed)".into(),
                },
                Err(_) => "unix:?".into(),
            },
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // A socket file we created would make the next bind fail: remove it with the socket.
        if let Listener::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Takes the inherited sockets (fd 3, 4, …), TCP or Unix stream.
pub(crate) fn inherited(act: &Activation) -> Result<Vec<Listener>, ServeError> {
    // listenfd re-reads the same variables we validated and owns the fd-to-socket step
    // (the only unsafe part), checking each fd really is a listening socket of that kind.
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() != act.count {
        return Err(ServeError::Listen(format!(
            "LISTEN_FDS={} but only {} inherited sockets are usable",
            act.count,
            fds.len()
        )));
    }
    let mut out = Vec::with_capacity(act.count);
    for idx in 0..act.count {
        let fd = 3 + idx;
        let name = act.names.get(idx).map(String::as_str).unwrap_or("");
        let listener =
            match fds.take_tcp_listener(idx) {
                Ok(Some(l)) => Listener::Tcp(tokio_tcp(l)?),
                Ok(None) => continue,
                Err(_) => match fds.take_unix_listener(idx) {
                    Ok(Some(l)) => Listener::Unix(tokio_unix(l)?, None),
                    Ok(None) => continue,
                    Err(_) => {
                        return Err(ServeError::Listen(format!(
                        "inherited fd {fd} (LISTEN_FDS={}{}) is not a TCP or Unix stream socket",
                        act.count,
                        if name.is_empty() { String::new() } else { format!(", name {name}") }
                    )))
                    }
                },
            };
        // listenfd checks the family and the type, not that the socket listens: systemd's
        // `Accept=yes` passes a *connected* socket, on which accept fails forever (EINVAL).
        let listening = match &listener {
            Listener::Tcp(l) => rustix::net::sockopt::socket_acceptconn(l),
            Listener::Unix(l, _) => rustix::net::sockopt::socket_acceptconn(l),
        };
        if !listening.unwrap_or(false) {
            return Err(ServeError::Listen(format!(
                "inherited fd {fd} (LISTEN_FDS={}{}) is a connected socket, not a listening one \
                 (a systemd socket unit with Accept=yes passes one connection per process; \
                 serve() needs Accept=no)",
                act.count,
                if name.is_empty() {
                    String::new()
                } else {
                    format!(", name {name}")
                }
            )));
        }
        tracing::debug!(fd, name, addr = %listener, "using inherited socket");
        out.push(listener);
    }
    Ok(out)
}

fn tokio_tcp(l: std::net::TcpListener) -> Result<TcpListener, ServeError> {
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .map_err(|e| ServeError::Listen(format!("cannot use inherited TCP socket: {e}")))
}

fn tokio_unix(l: std::os::unix::net::UnixListener) -> Result<UnixListener, ServeError> {
    l.set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(l))
        .map_err(|e| ServeError::Listen(format!("cannot use inherited Unix socket: {e}")))
}

/// Binds `addr`; `origin` says where the address came from, for the error message.
pub(crate) async fn bind(addr: &ListenAddr, origin: &str) -> Result<Listener, ServeError> {
    let fail = |e: io::Error| {
        let what = match e.kind() {
            io::ErrorKind::AddrInUse => "address already in use".to_owned(),
            io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        ServeError::Listen(format!("cannot listen on {addr} ({origin}): {what}"))
    };
    match addr {
        ListenAddr::Tcp(a) => {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(a.as_str())
                .await
                .map_err(fail)?
                .collect();
            let std_listener = bind_first(&addrs).map_err(fail)?;
            tokio_tcp(std_listener).map(Listener::Tcp)
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path);
            let l = UnixListener::bind(path).map_err(fail)?;
            // Connecting needs write permission: open to every user, as systemd's
            // `SocketMode=` default (a proxy such as nginx runs as another user); the
            // directory decides who reaches it.
            set_socket_mode(path, UNIX_SOCKET_MODE).map_err(fail)?;
            Ok(Listener::Unix(l, Some(path.clone())))
        }
    }
}

/// A listening socket on the first of `addrs` that can be bound, trying each in turn as std's
/// and tokio's `bind` do (`localhost` may resolve to `::1` first on a host or container
/// without IPv6); the last error when none can.
fn bind_first(addrs: &[std::net::SocketAddr]) -> io::Result<std::net::TcpListener> {
    let mut last = io::Error::other("the host resolved to no address");
    for a in addrs {
        match bind_tcp(*a) {
            Ok(l) => return Ok(l),
            Err(e) => {
                tracing::debug!(addr = %a, error = %e, "cannot bind; trying the next address");
                last = e;
            }
        }
    }
    Err(last)
}

/// One TCP listening socket on `addr`: SO_REUSEADDR (as std does) so a restart is not refused
/// by TIME_WAIT; never SO_REUSEPORT: one socket, one accept queue.
fn bind_tcp(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// The mode of the Unix sockets `serve()` binds itself.
pub(crate) const UNIX_SOCKET_MODE: u32 = 0o666;

/// Sets the mode of the socket file just bound at `path` through a descriptor of that very
/// file (`O_PATH | O_NOFOLLOW`, then `/proc/self/fd/N`): a `chmod` by path would change the
/// mode of whatever someone who may write to the directory put there meanwhile.
fn set_socket_mode(path: &Path, mode: u32) -> io::Result<()> {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = openat(CWD, path, flags, Mode::empty())?;
    let by_fd = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if !std::fs::metadata(&by_fd)?.file_type().is_socket() {
        return Err(io::Error::other(
            "replaced by something that is not a socket",
        ));
    }
    std::fs::set_permissions(&by_fd, std::fs::Permissions::from_mode(mode))
}

/// A socket file left by a dead process would make bind fail: remove it when nobody answers.
fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_socket()
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    {
        tracing::debug!(path = %path.display(), "removing stale socket file");
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_tries_each_resolved_address_in_turn() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free_addr = free.local_addr().unwrap();
        drop(free);
        let l = bind_first(&[taken.local_addr().unwrap(), free_addr]).unwrap();
        assert_eq!(l.local_addr().unwrap(), free_addr);

        let e = bind_first(&[taken.local_addr().unwrap()]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "the last error: {e}");
        assert!(bind_first(&[])
            .unwrap_err()
            .to_string()
            .contains("no address"));
    }
}
