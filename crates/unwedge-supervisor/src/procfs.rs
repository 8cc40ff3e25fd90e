//! What `/proc` says about processes: a process's state, parent, process group and session;
//! the live members of a process group; a process's children and descendants; its command
//! line.
//!
//! A worker is started as the leader of its own session and process group, and the processes
//! it forks stay in that session unless they start one of their own (`setsid`: a daemon),
//! also when they move to another group (`setpgid`, a shell's job control): the supervisor
//! signals a worker's group, attributes notify messages by group and session, and looks for
//! the processes of its session a worker left running when it exited.

/// The fields of `/proc/PID/stat` the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter: `R` running, `S` sleeping, `D` in uninterruptible sleep, `T`
    /// stopped, `Z` zombie (exited, not yet reaped), …
    pub state: char,
    /// The parent's pid.
    pub ppid: i32,
    /// The process group id.
    pub pgid: i32,
    /// The session id (a daemon has one of its own: `setsid`).
    pub sid: i32,
}

impl Stat {
    /// Whether it still runs: neither a zombie nor dead.
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Process `pid`'s [`Stat`]; `None` when it does not exist (or `/proc` cannot be read).
///
/// ```
/// let me = unwedge_supervisor::procfs::stat(std::process::id() as i32).unwrap();
/// assert!(me.alive());
/// assert_eq!(unwedge_supervisor::procfs::stat(i32::MAX), None);
/// ```
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&read_lossy(&format!("/proc/{pid}/stat"))?)
}

/// A `/proc` file that holds a process's name (`stat`, `status`), as text: the name is
/// whatever bytes the process chose (`prctl(PR_SET_NAME)`, `/proc/PID/comm`), or its
/// executable's name cut by the kernel at 15 bytes, also inside a UTF-8 character. Bytes that
/// are not UTF-8 become U+FFFD; the numbers around them are read as written.
pub(crate) fn read_lossy(path: &str) -> Option<String> {
    let raw = std::fs::read(path).ok()?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// `pid (comm) state ppid pgrp session …`: `comm` may hold spaces and parentheses, so the fields
/// start after the *last* `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    let sid = fields.next()?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgid,
        sid,
    })
}

/// Every pid in `/proc`.
fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

/// The live processes (zombies left out) of session `sid`, in pid order, each with its
/// [`Stat`] (its process group, to signal them group by group): a worker's session (the exec
/// shim makes each worker a session leader) holds every process it started, in whichever
/// process group, unless one started a session of its own (a daemon). Reads the `stat` of
/// every process on the machine: for rare events (a worker's exit), not for a periodic check.
///
/// ```
/// use unwedge_supervisor::procfs::{session_members, stat};
/// let me = std::process::id() as i32;
/// let sid = stat(me).unwrap().sid;
/// assert!(session_members(sid).iter().any(|(pid, s)| *pid == me && s.sid == sid));
/// assert!(session_members(i32::MAX).is_empty());
/// ```
pub fn session_members(sid: i32) -> Vec<(i32, Stat)> {
    let mut members: Vec<(i32, Stat)> = all_pids()
        .filter_map(|p| Some((p, stat(p)?)))
        .filter(|(_, s)| s.sid == sid && s.alive())
        .collect();
    members.sort_unstable_by_key(|(p, _)| *p);
    members
}

/// `pid` followed by its live descendants (children, their children, …), at most `limit`
/// pids in all; empty when `pid` is gone. Children are read from the kernel's
/// `/proc/PID/task/TID/children` lists (one small read per thread: no scan of the machine's
/// processes); on a kernel without them (`CONFIG_PROC_CHILDREN`), from the parent pid of
/// every process. A descendant that was reparented (a daemon that double-forked) is no
/// longer one.
///
/// ```
/// let me = std::process::id() as i32;
/// let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
/// let tree = unwedge_supervisor::procfs::descendants(me, 1000);
/// assert_eq!(tree[0], me);
/// assert!(tree.contains(&(child.id() as i32)));
/// child.kill().unwrap();
/// child.wait().unwrap();
/// ```
pub fn descendants(pid: i32, limit: usize) -> Vec<i32> {
    if !stat(pid).is_some_and(|s| s.alive()) || limit == 0 {
        return Vec::new();
    }
    let mut tree = vec![pid];
    let by_parent = if children_lists_exist(pid) {
        None
    } else {
        // Built once, on kernels without the children lists.
        let mut map: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
        for p in all_pids() {
            if let Some(s) = stat(p).filter(Stat::alive) {
                map.entry(s.ppid).or_default().push(p);
            }
        }
        Some(map)
    };
    let mut next = 0;
    while next < tree.len() && tree.len() < limit {
        let parent = tree[next];
        next += 1;
        let children = match &by_parent {
            Some(map) => map.get(&parent).cloned().unwrap_or_default(),
            None => children_of(parent)
                .into_iter()
                .filter(|&c| stat(c).is_some_and(|s| s.alive()))
                .collect(),
        };
        for c in children {
            // A pid reused while we walk could close a cycle: never list one twice.
            if tree.len() < limit && !tree.contains(&c) {
                tree.push(c);
            }
        }
    }
    tree
}

/// The children of `pid` (zombies not yet reaped included), from the kernel's children lists
/// of its threads (or, on a kernel without them, from the parent pid of every process).
///
/// ```
/// let me = std::process::id() as i32;
/// let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
/// assert!(unwedge_supervisor::procfs::children(me).contains(&(child.id() as i32)));
/// child.kill().unwrap();
/// child.wait().unwrap();
/// ```
pub fn children(pid: i32) -> Vec<i32> {
    if children_lists_exist(pid) {
        children_of(pid)
    } else {
        all_pids()
            .filter(|&p| stat(p).is_some_and(|s| s.ppid == pid))
            .collect()
    }
}

/// The command line of process `pid` on one line (arguments joined by spaces, control
/// characters such as newlines as spaces, shortened to 80 characters); `None` when it is
/// gone, empty for a kernel thread or a zombie.
///
/// ```
/// let me = unwedge_supervisor::procfs::command_line(std::process::id() as i32).unwrap();
/// assert!(!me.is_empty());
/// ```
pub fn command_line(pid: i32) -> Option<String> {
    let mut shown: String = arguments(pid)?
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if shown.chars().count() > 80 {
        shown = shown.chars().take(79).collect::<String>() + "…";
    }
    Some(shown)
}

/// Where the main thread of process `pid` sleeps in the kernel (`/proc/PID/wchan`), e.g.
/// `inet_csk_accept` for a blocking TCP `accept()` or `do_epoll_wait`; `None` when it is gone
/// or running, or when the kernel does not say.
///
/// ```
/// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let mut child = std::process::Command::new("python3")
///     .args(["-c", "import socket; socket.socket(fileno=0).accept()"])
///     .stdin(std::os::fd::OwnedFd::from(l))
///     .spawn()
///     .unwrap();
/// let pid = child.id() as i32;
/// let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
/// while unwedge_supervisor::procfs::wchan(pid).as_deref() != Some("inet_csk_accept") {
///     assert!(std::time::Instant::now() < deadline, "never blocked in accept()");
///     std::thread::sleep(std::time::Duration::from_millis(10));
/// }
/// child.kill().unwrap();
/// child.wait().unwrap();
/// ```
pub fn wchan(pid: i32) -> Option<String> {
    let w = std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok()?;
    let w = w.trim();
    (!w.is_empty() && w != "0").then(|| w.to_owned())
}

/// The arguments of process `pid` (`/proc/PID/cmdline`); `None` when it is gone, empty for
/// a kernel thread or a zombie.
///
/// ```
/// let me = unwedge_supervisor::procfs::arguments(std::process::id() as i32).unwrap();
/// assert!(!me.is_empty());
/// ```
pub fn arguments(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The processes with a TCP socket listening on `port` (any address, IPv4 or IPv6), in pid
/// order: for naming what holds a port a `--listen` could not bind. Reads `/proc/net/tcp{,6}`
/// and the descriptors of every process (a process of another user shows only to root).
///
/// ```
/// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let port = l.local_addr().unwrap().port();
/// let me = std::process::id() as i32;
/// assert_eq!(unwedge_supervisor::procfs::tcp_listeners(port), vec![me]);
/// ```
pub fn tcp_listeners(port: u16) -> Vec<i32> {
    let inodes: Vec<u64> = tcp_listen_table()
        .into_iter()
        .filter(|(_, addr)| addr.port() == port)
        .map(|(inode, _)| inode)
        .collect();
    socket_holders(&inodes)
}

/// The processes with the unix stream socket bound at `path` open, in pid order (see
/// [`tcp_listeners`]).
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.sock");
/// let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
/// let me = std::process::id() as i32;
/// assert_eq!(unwedge_supervisor::procfs::unix_listeners(&path), vec![me]);
/// ```
pub fn unix_listeners(path: &std::path::Path) -> Vec<i32> {
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let wanted = path.to_string_lossy();
    let inodes: Vec<u64> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(7) == Some(&wanted.as_ref())).then(|| f.get(6)?.parse().ok())?
        })
        .collect();
    socket_holders(&inodes)
}

/// The listening TCP sockets that processes `pids` have open, as (inode, local address), each
/// once, in address order: to tell a worker that listens on an address of its own from one
/// that serves on the socket it was passed.
///
/// ```
/// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let me = std::process::id() as i32;
/// let found = unwedge_supervisor::procfs::tcp_listening(&[me]);
/// assert!(found.iter().any(|(_, a)| *a == l.local_addr().unwrap()));
/// ```
pub fn tcp_listening(pids: &[i32]) -> Vec<(u64, std::net::SocketAddr)> {
    tcp_listening_besides(pids, &[])
}

/// [`tcp_listening`] but for the sockets `passed` (those the supervisor passed them): the
/// tables of the whole network namespace (`/proc/net/tcp{,6}`, one line per socket of the
/// host: tens of milliseconds to read with thousands of connections) are read only when the
/// processes hold a socket of their own; a worker that holds only the sockets it was passed
/// costs a look at its `/proc/PID/fd`.
///
/// ```
/// use std::os::unix::fs::MetadataExt;
/// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
/// let inode = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
/// let me = std::process::id() as i32;
/// let found = unwedge_supervisor::procfs::tcp_listening_besides(&[me], &[inode]);
/// assert!(!found.iter().any(|(i, _)| *i == inode));
/// ```
pub fn tcp_listening_besides(pids: &[i32], passed: &[u64]) -> Vec<(u64, std::net::SocketAddr)> {
    tcp_listening_of_each(&[pids], passed)
        .pop()
        .unwrap_or_default()
}

/// [`tcp_listening_besides`] for each group of processes in `groups` (workers and their
/// descendants), with the tables read once for all of them, if at all.
pub fn tcp_listening_of_each(
    groups: &[&[i32]],
    passed: &[u64],
) -> Vec<Vec<(u64, std::net::SocketAddr)>> {
    listening_among_own(groups, passed, tcp_listen_table)
}

/// The sockets the processes `pids` hold, but `passed`, by inode: a look at each one's
/// `/proc/PID/fd`, cheap, so that it can be taken at once, while they still run, and
/// [`tcp_listening_among`] left for later, off an event loop.
///
/// ```
/// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let me = std::process::id() as i32;
/// let own = unwedge_supervisor::procfs::own_socket_inodes(&[me], &[]);
/// let found = unwedge_supervisor::procfs::tcp_listening_among(vec![own]);
/// assert!(found[0].iter().any(|(_, a)| *a == l.local_addr().unwrap()));
/// // Nothing to look for: the tables are not read.
/// assert_eq!(unwedge_supervisor::procfs::tcp_listening_among(vec![vec![]]), vec![vec![]]);
/// ```
pub fn own_socket_inodes(pids: &[i32], passed: &[u64]) -> Vec<u64> {
    let mut own: Vec<u64> = pids
        .iter()
        .flat_map(|&pid| fd_targets(pid))
        .filter_map(|(_, target)| socket_inode(&target))
        .filter(|inode| !passed.contains(inode))
        .collect();
    own.sort_unstable();
    own.dedup();
    own
}

/// For each list of socket inodes in `groups` (from [`own_socket_inodes`]), those listening
/// on TCP, with their addresses: the host's tables read once for all, and only if a list
/// has any. See [`own_socket_inodes`] for an example.
pub fn tcp_listening_among(groups: Vec<Vec<u64>>) -> Vec<Vec<(u64, std::net::SocketAddr)>> {
    listening_among(groups, tcp_listen_table)
}

/// The sockets of each group of processes in `groups`, but `passed`, found listening in
/// `table` (read once, and only if a group has any).
fn listening_among_own(
    groups: &[&[i32]],
    passed: &[u64],
    table: impl FnOnce() -> std::collections::HashMap<u64, std::net::SocketAddr>,
) -> Vec<Vec<(u64, std::net::SocketAddr)>> {
    let own = groups
        .iter()
        .map(|pids| own_socket_inodes(pids, passed))
        .collect();
    listening_among(own, table)
}

/// Those of each list of inodes in `own` found listening in `table` (read only if a list has
/// any).
fn listening_among(
    own: Vec<Vec<u64>>,
    table: impl FnOnce() -> std::collections::HashMap<u64, std::net::SocketAddr>,
) -> Vec<Vec<(u64, std::net::SocketAddr)>> {
    if own.iter().all(Vec::is_empty) {
        return own.iter().map(|_| Vec::new()).collect();
    }
    let listening = table();
    own.into_iter()
        .map(|inodes| {
            let mut found: Vec<(u64, std::net::SocketAddr)> = inodes
                .into_iter()
                .filter_map(|inode| Some((inode, *listening.get(&inode)?)))
                .collect();
            found.sort_unstable_by_key(|(inode, addr)| (*addr, *inode));
            found
        })
        .collect()
}

/// Whether one of processes `pids` has one of the sockets `inodes` in an epoll set: an event
/// loop (nginx, Go, Node, asyncio, tokio) waiting for connections on it. Reads the
/// `/proc/PID/fdinfo` of each epoll descriptor, which lists the inode of every file watched.
///
/// ```
/// use std::os::unix::fs::MetadataExt;
/// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let inode = std::fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&l)))
///     .unwrap()
///     .ino();
/// let mut child = std::process::Command::new("python3")
///     .args(["-c", "import selectors, socket, sys\n\
///         s = socket.socket(fileno=0); sel = selectors.EpollSelector()\n\
///         sel.register(s, selectors.EVENT_READ); print(flush=True); sys.stdin.read()"])
///     .stdin(std::os::fd::OwnedFd::from(l))
///     .stdout(std::process::Stdio::piped())
///     .spawn()
///     .unwrap();
/// let pid = child.id() as i32;
/// let mut line = String::new();
/// std::io::BufRead::read_line(
///     &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
///     &mut line,
/// )
/// .unwrap();
/// assert!(unwedge_supervisor::procfs::epoll_watches_any(&[pid], &[inode]));
/// assert!(!unwedge_supervisor::procfs::epoll_watches_any(&[pid], &[inode + 1]));
/// child.kill().unwrap();
/// child.wait().unwrap();
/// ```
pub fn epoll_watches_any(pids: &[i32], inodes: &[u64]) -> bool {
    if inodes.is_empty() {
        return false;
    }
    pids.iter().any(|&pid| {
        fd_targets(pid).any(|(fd, target)| {
            if target.as_os_str() != "anon_inode:[eventpoll]" {
                return false;
            }
            let info = format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy());
            std::fs::read_to_string(info).is_ok_and(|text| {
                text.lines()
                    .filter(|l| l.starts_with("tfd:"))
                    .filter_map(|l| l.split_whitespace().find_map(|t| t.strip_prefix("ino:")))
                    .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
                    .any(|ino| inodes.contains(&ino))
            })
        })
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), as `/proc/net/tcp{,6}` write
/// them: each 32-bit word of the address in the machine's byte order.
fn parse_proc_addr(text: &str) -> Option<std::net::SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// The listening TCP sockets of this network namespace (`/proc/net/tcp{,6}`), by inode.
fn tcp_listen_table() -> std::collections::HashMap<u64, std::net::SocketAddr> {
    let mut listening = std::collections::HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            if let (Some(addr), Ok(inode)) = (parse_proc_addr(local), inode.parse::<u64>()) {
                listening.insert(inode, addr);
            }
        }
    }
    listening
}

/// The open descriptors of process `pid`: (fd number, what `/proc/PID/fd/N` links to).
fn fd_targets(pid: i32) -> impl Iterator<Item = (std::ffi::OsString, std::path::PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| Some((fd.file_name(), std::fs::read_link(fd.path()).ok()?)))
}

/// The inode of a descriptor's target `socket:[N]`; `None` for anything but a socket.
fn socket_inode(target: &std::path::Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The processes with a descriptor on one of the sockets `inodes`.
fn socket_holders(inodes: &[u64]) -> Vec<i32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut pids: Vec<i32> = all_pids()
        .filter(|&pid| {
            fd_targets(pid).any(|(_, t)| socket_inode(&t).is_some_and(|i| inodes.contains(&i)))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// `pid 4242 (`python3 app.py`)`, or `pids 4242 (`…`), 4243 (`…`)`: for error messages.
pub(crate) fn describe(pids: &[i32]) -> String {
    let each: Vec<String> = pids
        .iter()
        .take(3)
        .map(|p| format!("{p} (`{}`)", command_line(*p).unwrap_or_default()))
        .collect();
    let more = if pids.len() > 3 { ", …" } else { "" };
    match pids.len() {
        1 => format!("pid {}", each[0]),
        _ => format!("pids {}{more}", each.join(", ")),
    }
}

fn children_lists_exist(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{pid}/children")).exists()
}

/// The children of every thread of `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    children
}

/// For tests: `sh -c SCRIPT` started, and the first line it printed.
#[cfg(test)]
pub(crate) fn sh_until_first_line(script: &str) -> (std::process::Child, String) {
    until_first_line(std::process::Command::new("sh").args(["-c", script]))
}

/// For tests: `sh`, named `srv-r` and the first byte of `é` (as the kernel cuts a name at 15
/// bytes, also inside a character), and the first line it printed.
#[cfg(test)]
pub(crate) fn named_in_cut_utf8() -> (std::process::Child, String) {
    sh_until_first_line(
        r"printf 'srv-r\303' > /proc/$$/comm; echo named; exec >/dev/null 2>&1; while :; do sleep 1; done",
    )
}

/// For tests: `cmd` started, and the first line it printed.
#[cfg(test)]
pub(crate) fn until_first_line(cmd: &mut std::process::Command) -> (std::process::Child, String) {
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_come_after_the_last_parenthesis() {
        let s = parse_stat("42 (we(i)rd ) name) S 7 42 40 0 -1").unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 7,
                pgid: 42,
                sid: 40,
            }
        );
        assert!(s.alive());
        assert!(!parse_stat("43 (x) Z 1 43 43 0").unwrap().alive());
        assert_eq!(parse_stat("44 (x) S 1 44"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_process_whose_name_is_not_utf8_is_seen() {
        let (mut child, line) = named_in_cut_utf8();
        assert_eq!(line.trim(), "named");
        let pid = child.id() as i32;
        let seen = stat(pid);
        let _ = child.kill();
        child.wait().unwrap();
        let me = stat(std::process::id() as i32).unwrap();
        assert_eq!(
            seen.map(|s| (s.ppid, s.sid)),
            Some((std::process::id() as i32, me.sid))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever bytes a process names itself with (parentheses, spaces, line breaks, bytes
        /// that are not UTF-8), its fields are read.
        #[test]
        fn any_process_name_leaves_the_fields_readable(
            name in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
            (ppid, pgid, sid) in (1..i32::MAX, 1..i32::MAX, 0..i32::MAX),
        ) {
            let mut raw = b"42 (".to_vec();
            raw.extend_from_slice(&name);
            raw.extend_from_slice(format!(") S {ppid} {pgid} {sid} 0 -1 4194560\n").as_bytes());
            let text = String::from_utf8_lossy(&raw);
            let s = parse_stat(&text);
            proptest::prop_assert_eq!(s, Some(Stat { state: 'S', ppid, pgid, sid }));
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn proc_net_tcp_addresses() {
        let a = |s| parse_proc_addr(s).map(|a| a.to_string());
        assert_eq!(a("0100007F:1F90").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(a("00000000:0050").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(
            a("00000000000000000000000001000000:0050").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(a("0100007F"), None);
        assert_eq!(a("0100007G:1F90"), None);
        assert_eq!(a("01007F:1F90"), None);
    }

    /// Processes that hold only the socket they were passed: the tables of the whole host are
    /// not read for them. With a listening socket of their own: read once for all, and that
    /// one found for each.
    #[test]
    fn the_tcp_tables_are_read_only_for_a_process_with_a_socket_of_its_own() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino()
        };
        let passed_inode = inode(passed.as_raw_fd());
        // `sleep` with the socket as its stdin and nothing else that could be a socket.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::os::fd::OwnedFd::from(passed.try_clone().unwrap()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let reads = std::cell::Cell::new(0);
        let table = || {
            reads.set(reads.get() + 1);
            tcp_listen_table()
        };
        let found = listening_among_own(&[&[pid], &[pid]], &[passed_inode], table);
        assert_eq!(found, vec![Vec::new(), Vec::new()]);
        assert_eq!(
            reads.get(),
            0,
            "the tables were read for processes without a socket of their own"
        );
        // Not passed: its own, read once for both groups, and found in each.
        let found = listening_among_own(&[&[pid], &[pid]], &[], table);
        assert_eq!(reads.get(), 1);
        let listening = vec![(passed_inode, passed.local_addr().unwrap())];
        assert_eq!(found, vec![listening.clone(), listening]);
        let _ = child.kill();
        child.wait().unwrap();
    }

    #[test]
    fn descendants_follow_grandchildren_and_respect_the_limit() {
        // sh forks sleep (a grandchild of this test): both are found.
        let (mut child, _) = sh_until_first_line("sleep 30 & echo started; wait");
        let sh = child.id() as i32;
        let tree = descendants(sh, 100);
        assert_eq!(tree.len(), 2, "{tree:?}");
        assert_eq!(tree[0], sh);
        assert_eq!(descendants(sh, 1), vec![sh]);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(tree[1]),
            nix::sys::signal::Signal::SIGKILL,
        );
        child.wait().unwrap();
        assert!(descendants(sh, 100).is_empty());
    }
}
