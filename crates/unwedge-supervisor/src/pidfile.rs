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
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read pid file {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{}: not a pid: {:?}", path.display(), text.trim())),
    }
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
    let named = |path: &str| {
        Path::new(path)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("unwedge"))
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
        .unwrap_or_default();
    let ours = args.get(1).is_some_and(|a| a == "run")
        && (args.first().is_some_and(|a| named(a)) || named(&exe));
    if ours {
        return None;
    }
    let shown = crate::procfs::command_line(pid)?;
    Some(if shown.is_empty() {
        "no command line: a kernel thread or a zombie".to_owned()
    } else {
        shown
    })
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
    let name = path
        .file_name()
        .map_or_else(|| "pid".into(), |n| n.to_string_lossy().into_owned());
    let aside = path.with_file_name(format!(".{name}.{me}.tmp"));
    let written =
        std::fs::write(&aside, format!("{me}\n")).and_then(|()| std::fs::rename(&aside, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&aside);
        return Err(StartError::setup(
            format!("write pid file {}", path.display()),
            e,
        ));
    }
    Ok(())
}

/// Removes `path` if it still names this process: a file rewritten since (by a person, or by
/// a supervisor started while this one was thought dead) is left alone.
pub(crate) fn release(path: &Path) {
    if read(path) == Ok(std::process::id() as i32) {
        let _ = std::fs::remove_file(path);
    }
}
