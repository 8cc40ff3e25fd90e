//! The exec shim: `unwedge exec-shim -- CMD ARGS…`, run by the supervisor as each worker.
//!
//! `LISTEN_PID` must equal the worker's own pid, which exists only after fork, and setting
//! environment variables between fork and exec is not async-signal-safe. So the supervisor
//! spawns its own binary as this shim, with no code between fork and exec but one `fcntl`
//! per listening socket to clear its close-on-exec flag (the supervisor's copies keep it, so
//! that nothing else it starts inherits them): the shim is a fresh single-threaded process
//! that moves the inherited sockets to fds 3, 4, …, sets `LISTEN_FDS`, `LISTEN_FDNAMES`
//! (already set by the supervisor) and `LISTEN_PID` to its own pid, and `exec`s the command,
//! which keeps that pid.
//!
//! It also makes the worker die with the supervisor (`PR_SET_PDEATHSIG`, kept across `exec`):
//! a supervisor killed with SIGKILL, or by the OOM killer, must not leave workers running
//! unsupervised with copies of its sockets; makes it the leader of a session of its own
//! (`setsid`), so that whatever it leaves running when it exits is found and stopped; and
//! passes on no fd but stdio and the sockets.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{signal, SigHandler, Signal};

use crate::run_as::{Credentials, SHIM_CREDENTIALS_ENV};

/// Environment variable with the inherited socket fds, comma-separated, in order.
pub const SHIM_FDS_ENV: &str = "UNWEDGE_SHIM_FDS";

/// Environment variable with the supervisor's pid: the worker is killed when it dies.
pub const SHIM_PARENT_ENV: &str = "UNWEDGE_SHIM_PARENT";

/// Environment variable with the soft open-file limit the supervisor was started with: the
/// supervisor raises its own (it holds two pipes per worker), the worker gets this one back.
pub const SHIM_NOFILE_ENV: &str = "UNWEDGE_SHIM_NOFILE";

/// The supervisor's own binary, run as each worker's shim: held open for the supervisor's
/// life and started through `/proc/self/fd/N`, so that a deploy that moves, deletes or replaces
/// the file at its path while the supervisor runs (`mv`, `rm`, a package upgrade) neither
/// stops workers from starting (the path resolved at start named nothing any more: every
/// restart failed with `No such file or directory` until the supervisor gave up) nor runs
/// another version's shim. The descriptor is close-on-exec: `execve` resolves the path before
/// it closes the descriptors, and the binary is an ELF file, which needs no path after that
/// (a script would: its interpreter opens it by name). Without `/proc` it is started by path.
#[derive(Debug)]
pub(crate) struct ShimBinary {
    /// What is executed: `/proc/self/fd/N` (each child's own copy of the descriptor), or the
    /// path without `/proc`.
    exec: std::path::PathBuf,
    /// The path it was started from: the shim's `argv[0]`, for `ps` and the log.
    path: std::path::PathBuf,
    /// Held open for `exec`.
    _file: Option<std::fs::File>,
}

impl ShimBinary {
    /// This process's binary, opened now.
    pub(crate) fn this_process() -> std::io::Result<ShimBinary> {
        use std::os::fd::AsRawFd;
        let path = std::env::current_exe()?;
        // Opened by std with O_CLOEXEC: no other process the supervisor starts inherits it.
        let (exec, file) = match std::fs::File::open("/proc/self/exe") {
            Ok(f) => (format!("/proc/self/fd/{}", f.as_raw_fd()).into(), Some(f)),
            Err(e) => {
                tracing::debug!(
                    "cannot open /proc/self/exe ({e}): workers are started through {}",
                    path.display()
                );
                (path.clone(), None)
            }
        };
        Ok(ShimBinary {
            exec,
            path,
            _file: file,
        })
    }

    /// A command that runs the shim (its arguments to be added).
    pub(crate) fn command(&self) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&self.exec);
        cmd.arg0(&self.path);
        cmd
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit (at most 2^20), as Go's
/// runtime does; returns the soft limit it had, for [`SHIM_NOFILE_ENV`], when it changed.
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let target = if hard == RLIM_INFINITY {
        1 << 20
    } else {
        hard.min(1 << 20)
    };
    if soft >= target {
        return None;
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).ok()?;
    Some(soft)
}

/// Gives the worker the open-file limit the supervisor was started with (see
/// [`SHIM_NOFILE_ENV`]).
fn restore_nofile() -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok(v) = std::env::var(SHIM_NOFILE_ENV) else {
        return Ok(());
    };
    std::env::remove_var(SHIM_NOFILE_ENV);
    let soft: u64 = v
        .parse()
        .map_err(|_| format!("bad {SHIM_NOFILE_ENV}={v}"))?;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.desc().to_string())?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)
        .map_err(|e| format!("cannot restore the open-file limit: {}", e.desc()))
}

/// Places the sockets, sets the variables and execs `command`. Returns only on failure,
/// with a one-line message; the caller prints it and exits 127.
///
/// Must be called before any other thread exists (at the top of `main`).
pub fn exec(command: &[String]) -> String {
    let Some(program) = command.first() else {
        return "exec-shim: no command".into();
    };
    // A session of its own (and a process group: both ids are the worker's pid): every process
    // the worker starts stays in it, also in another group (a shell's background job), unless
    // it starts a session itself (a daemon). The supervisor stops what is left of the session
    // when the worker exits. Run by hand from a shell, the shim may lead its group already and
    // cannot: then it keeps the session it has.
    if let Err(e) = nix::unistd::setsid() {
        if std::env::var_os(SHIM_PARENT_ENV).is_some() {
            return format!("exec-shim: cannot start a session: {}", e.desc());
        }
    }
    let fds: Vec<RawFd> = match std::env::var(SHIM_FDS_ENV) {
        Ok(s) if !s.is_empty() => match s.split(',').map(str::parse).collect() {
            Ok(v) => v,
            Err(_) => return format!("exec-shim: bad {SHIM_FDS_ENV}={s}"),
        },
        _ => Vec::new(),
    };
    std::env::remove_var(SHIM_FDS_ENV);
    if let Err(e) = place_fds(&fds) {
        return format!("exec-shim: cannot place sockets: {e}");
    }
    // Nothing else the supervisor inherited (a shell's `exec 7>file`, fds meant for another
    // process) goes on to the worker. Here, before a change of user may hide /proc/self/fd.
    crate::cloexec::cloexec_from(3 + fds.len() as RawFd);
    if let Err(e) = restore_nofile() {
        return format!("exec-shim: {e}");
    }
    let switched = match switch_user() {
        Ok(s) => s,
        Err(e) => return format!("exec-shim: {e}"),
    };
    // After the switch: a change of user clears the parent-death signal.
    if let Err(e) = die_with_parent() {
        return format!("exec-shim: {e}");
    }
    if !fds.is_empty() {
        std::env::set_var("LISTEN_FDS", fds.len().to_string());
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
    }
    // The Rust runtime ignores SIGPIPE at startup; the worker must get the default back.
    // SAFETY: single-threaded at this point; SIG_DFL installs no handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let args: Result<Vec<CString>, _> =
        command.iter().map(|a| CString::new(a.as_bytes())).collect();
    let Ok(args) = args else {
        return "exec-shim: argument contains a NUL byte".into();
    };
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    if err == nix::errno::Errno::ENOENT {
        if let Some(interpreter) = missing_interpreter(program) {
            return format!(
                "cannot execute `{program}`: its interpreter `{interpreter}` (its `#!` line) \
                 does not exist"
            );
        }
    }
    match switched {
        // The command, or a directory on its way, may be open to root only.
        true => format!(
            "cannot execute `{program}` as uid {} (--user): {}",
            nix::unistd::getuid(),
            err.desc()
        ),
        false => format!("cannot execute `{program}`: {}", err.desc()),
    }
}

/// The interpreter a script's `#!` line names, when the script exists and that interpreter
/// does not: `execvp` says only "No such file or directory" then, which reads as if the
/// script were missing. `program` is found as `execvp` finds it (a name without `/` on
/// `PATH`).
fn missing_interpreter(program: &str) -> Option<String> {
    use std::io::Read;
    let script = match program.contains('/') {
        true => std::path::PathBuf::from(program),
        false => std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())?,
    };
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let interpreter = std::str::from_utf8(line).ok()?.split_whitespace().next()?;
    (!std::path::Path::new(interpreter).exists()).then(|| interpreter.to_owned())
}

/// Runs the worker as the user and groups in [`SHIM_CREDENTIALS_ENV`] (`--user`, `--group`),
/// if set: gives it its stdout and stderr pipes first (a pipe belongs to its creator, mode
/// 0600, so the worker could not open `/dev/stdout` again), then switches, then checks that
/// the worker can reach the notify socket. Returns whether it switched.
fn switch_user() -> Result<bool, String> {
    let Ok(value) = std::env::var(SHIM_CREDENTIALS_ENV) else {
        return Ok(false);
    };
    std::env::remove_var(SHIM_CREDENTIALS_ENV);
    let creds =
        Credentials::parse(&value).ok_or_else(|| format!("bad {SHIM_CREDENTIALS_ENV}={value}"))?;
    for fd in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
        let is_pipe = nix::sys::stat::fstat(fd)
            .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFIFO);
        if is_pipe {
            let uid = creds.uid.map(nix::unistd::Uid::from_raw);
            let gid = Some(nix::unistd::Gid::from_raw(creds.gid));
            let _ = nix::unistd::fchown(fd, uid, gid);
        }
    }
    creds.switch()?;
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = std::fs::metadata(&path) {
            return Err(format!(
                "as uid {} the notify socket {} is out of reach ({e}): a directory above it \
                 is private; set RUNTIME_DIRECTORY or TMPDIR for the supervisor to a directory \
                 the worker's user can enter",
                nix::unistd::getuid(),
                std::path::Path::new(&path).display()
            ));
        }
    }
    Ok(true)
}

/// Asks for SIGKILL when the supervisor (the parent, named by [`SHIM_PARENT_ENV`]) dies, and
/// gives up if it already has. SIGKILL rather than SIGTERM: a stopped or hung worker must go
/// too, and an orphan that drains slowly would hold the port a restarted supervisor needs.
fn die_with_parent() -> Result<(), String> {
    let parent = std::env::var(SHIM_PARENT_ENV).ok();
    std::env::remove_var(SHIM_PARENT_ENV);
    let Some(parent) = parent else {
        return Ok(()); // run by hand: no supervisor to follow
    };
    let parent: i32 = parent
        .parse()
        .map_err(|_| format!("bad {SHIM_PARENT_ENV}={parent}"))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot follow the supervisor's death: {}", e.desc()))?;
    // The supervisor may have died before the request above: then nothing will signal us.
    if nix::unistd::getppid().as_raw() != parent {
        return Err(format!(
            "the supervisor (pid {parent}) exited before the worker started"
        ));
    }
    Ok(())
}

/// Moves `fds` to 3, 4, … with close-on-exec cleared, and closes the originals.
fn place_fds(fds: &[RawFd]) -> nix::Result<()> {
    let n = fds.len() as RawFd;
    let top = 3 + n;
    // First lift every source to >= top so that no dup2 below clobbers a later source.
    let mut lifted = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: the supervisor passed these fds to us (they are open and ours); borrowing
        // them for one fcntl call does not take ownership.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        lifted.push(fcntl(b, FcntlArg::F_DUPFD_CLOEXEC(top))?);
    }
    for &fd in fds {
        if fd >= top {
            // SAFETY: fd is one of our inherited sockets, already duplicated above, and no
            // other code in this process refers to it.
            let _ = unsafe { nix::libc::close(fd) };
        }
    }
    for (i, &src) in lifted.iter().enumerate() {
        let dst = 3 + i as RawFd;
        // SAFETY: plain dup2 onto a fixed number in this single-threaded process; the
        // target numbers 3..top are either our own inherited sockets or unused.
        if unsafe { nix::libc::dup2(src, dst) } < 0 {
            return Err(nix::errno::Errno::last());
        }
        // SAFETY: src is our own duplicate made above.
        let _ = unsafe { nix::libc::close(src) };
        // dup2 leaves FD_CLOEXEC clear on dst, so the command inherits it.
    }
    Ok(())
}
