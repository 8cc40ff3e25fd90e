//! The supervisor's pid file (`--pidfile`): written whole, claimed once, removed only by its
//! owner; and how `unwedge reload` tells a supervisor's pid from another program's.

use std::path::Path;

use crate::error::StartError;

/// Reads a pid file: the pid on its first line.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let file = dir.path().join("unwedge.pid");
/// std::fs::write(&file, "4242\n").unwrap();
/// assert_eq!(unwedge_supervisor::pidfile::read(&file), Ok(4242));
/// std::fs::write(&file, "").unwrap();
/// assert!(unwedge_supervisor::pidfile::read(&file).unwrap_err().contains("not a pid"));
/// ```
pub fn read(path: &Path) -> Result<i32, String> {
    let text =
        read_small(path).map_err(|e| format!("cannot read pid file {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{}: not a pid: {:?}", path.display(), text.trim())),
    }
}

/// The first bytes of the regular file at `path`, never through a symbolic link, and never
/// waiting: a pid file is often in a directory others may write to (`/tmp`, a shared
/// `/run/app`), where a FIFO planted at its path would block the supervisor's start (or a
/// reload) for ever, and a link to `/dev/zero` would fill its memory.
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(
            |e| match e.raw_os_error().map(nix::errno::Errno::from_raw) {
                Some(nix::errno::Errno::ELOOP) => {
                    std::io::Error::other("it is a symbolic link (not followed)")
                }
                _ => e,
            },
        )?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    // A pid and a newline; more is not a pid file.
    let mut text = String::new();
    file.take(64).read_to_string(&mut text)?;
    Ok(text)
}

/// Whether process `pid` still runs (a zombie counts as gone).
///
/// ```
/// assert!(unwedge_supervisor::pidfile::running(std::process::id() as i32));
/// assert!(!unwedge_supervisor::pidfile::running(i32::MAX));
/// ```
pub fn running(pid: i32) -> bool {
    crate::procfs::stat(pid).is_some_and(|s| s.alive())
}

/// `None` when process `pid` is an unwedge supervisor (`unwedge run …`: a program whose name
/// or binary contains `unwedge`, with `run` as its first argument) or does not exist; its
/// command line (shortened) when it is another program.
///
/// ```
/// let me = std::process::id() as i32;
/// // This test program is not `unwedge run`.
/// assert!(unwedge_supervisor::pidfile::not_a_supervisor(me).is_some());
/// assert_eq!(unwedge_supervisor::pidfile::not_a_supervisor(i32::MAX), None);
/// ```
pub fn not_a_supervisor(pid: i32) -> Option<String> {
    let args = crate::procfs::arguments(pid)?;
    if runs_unwedge_run(pid, &args) {
        return None;
    }
    let shown = crate::procfs::command_line(pid)?;
    Some(if shown.is_empty() {
        "no command line: a kernel thread or a zombie".to_owned()
    } else {
        shown
    })
}

/// Whether process `pid` is an unwedge supervisor (`unwedge run …`, as for
/// [`not_a_supervisor`]), proven by its command line: false when it runs another program,
/// does not exist, or its command line cannot be read. `unwedge reload` signals pid 1 (the
/// supervisor of a container) only when this holds: pid 1 always exists, and is most often
/// an init system that a signal would make do something else.
///
/// ```
/// let me = std::process::id() as i32;
/// assert!(!unwedge_supervisor::pidfile::is_supervisor(me));
/// assert!(!unwedge_supervisor::pidfile::is_supervisor(i32::MAX));
/// ```
pub fn is_supervisor(pid: i32) -> bool {
    crate::procfs::arguments(pid).is_some_and(|args| runs_unwedge_run(pid, &args))
}

/// Whether `args`, the arguments of process `pid`, are `unwedge run …`: `run` first, after a
/// program whose name (or the binary it runs) contains `unwedge`.
fn runs_unwedge_run(pid: i32, args: &[String]) -> bool {
    let named = |path: &str| {
        Path::new(path)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("unwedge"))
    };
    if args.get(1).map(String::as_str) != Some("run") {
        return false;
    }
    if args.first().is_some_and(|a| named(a)) {
        return true;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
        .unwrap_or_default();
    named(&exe)
}

/// Writes this process's pid to `path`, unless a live supervisor's pid is there already (two
/// supervisors sharing a pid file would signal and remove each other's). The file is
/// replaced whole (written aside, then renamed), so a reader never sees it half written.
pub(crate) fn claim(path: &Path) -> Result<(), StartError> {
    let me = std::process::id() as i32;
    if let Ok(pid) = read(path) {
        if pid != me && running(pid) && not_a_supervisor(pid).is_none() {
            return Err(StartError::setup(
                format!("write pid file {}", path.display()),
                format!("supervisor pid {pid} is running with it; stop it first, or give this one another --pidfile"),
            ));
        }
    }
    write_whole(path, &format!("{me}\n"))
        .map_err(|e| StartError::setup(format!("write pid file {}", path.display()), e))
}

/// Writes `text` to a new file with a random name beside `path` (created exclusively: never
/// through a symbolic link someone put there, which a name known in advance would allow in a
/// directory others may write to, such as `/tmp`), readable by all, then renames it over
/// `path`.
fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile's error names the random file it tried: say the OS's error alone (the caller
    // names `path`).
    let mut file = tempfile::Builder::new()
        .prefix(".unwedge-pid.")
        .tempfile_in(dir)
        .map_err(|e| {
            let text = e.to_string();
            match text.split_once(" at path ") {
                Some((os, _)) => std::io::Error::new(e.kind(), os.to_owned()),
                None => e,
            }
        })?;
    file.write_all(text.as_bytes())?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes `path` if it still names this process: a file rewritten since (by a person, or by
/// a supervisor started while this one was thought dead) is left alone.
pub(crate) fn release(path: &Path) {
    if read(path) == Ok(std::process::id() as i32) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_pid_file_in_a_missing_directory_is_an_error_without_a_random_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("unwedge.pid");
        let e = write_whole(&path, "1\n").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        let text = e.to_string();
        assert!(!text.contains(".unwedge-pid."), "{text}");
        assert_eq!(text, "No such file or directory (os error 2)");
    }

    #[test]
    fn the_pid_file_is_written_whole_and_never_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "keep me\n").unwrap();
        let file = dir.path().join("unwedge.pid");
        // Links planted where a writer with names known in advance would write: the pid file
        // itself, and the name the file used to be written aside under.
        std::os::unix::fs::symlink(&secret, &file).unwrap();
        let me = std::process::id();
        let aside = dir.path().join(format!(".unwedge.pid.{me}.tmp"));
        std::os::unix::fs::symlink(&secret, &aside).unwrap();

        claim(&file).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me\n");
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.is_file(), "the link itself was replaced by the file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(read(&file), Ok(me as i32));
        // Nothing else left behind but the planted link.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");

        release(&file);
        assert!(!file.exists());
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me\n");
    }

    /// What someone may plant at a pid file's path in a directory others may write to: a FIFO
    /// (reading it would wait for a writer for ever), a link to an endless file (reading it
    /// whole would fill the memory), a huge file. Each is an error at once, and a start
    /// replaces it with the pid file.
    #[test]
    fn a_fifo_an_endless_link_or_a_huge_file_at_the_pid_file_path_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.pid");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        let err = read(&fifo).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        let zero = dir.path().join("zero.pid");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read(&zero).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        let huge = dir.path().join("huge.pid");
        std::fs::write(&huge, "1".repeat(10 << 20)).unwrap();
        let err = read(&huge).unwrap_err();
        assert!(
            err.contains("not a pid") && err.len() < 200,
            "{}",
            err.len()
        );

        let me = std::process::id() as i32;
        for path in [&fifo, &zero] {
            claim(path).unwrap();
            assert_eq!(read(path), Ok(me));
            release(path);
            assert!(!path.exists());
        }
    }
}
