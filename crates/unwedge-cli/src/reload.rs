//! `unwedge reload`: SIGHUP to a running supervisor, and with `--wait`, its outcome read from
//! the supervisor's admin endpoint (`/status`'s `supervisor.last_reload`), for deploy scripts
//! that must know whether the new version serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::status::status_json;

/// How often `--wait` looks at `/status`.
const POLL: Duration = Duration::from_millis(50);

/// The supervisor's pid, from `--pid` or `--pidfile`; without either, pid 1 when it is an
/// unwedge supervisor (a container's, as in `kubectl exec POD -- unwedge reload`). Err:
/// (message, exit code).
fn target(pid: Option<i32>, pidfile: Option<PathBuf>) -> Result<i32, (String, u8)> {
    use unwedge_supervisor::pidfile::{is_supervisor, not_a_supervisor};
    let from_file = pidfile.is_some();
    let pid =
        match (pid, pidfile) {
            (Some(p), _) => p,
            (None, Some(f)) => unwedge_supervisor::pidfile::read(&f).map_err(|e| (e, 1))?,
            (None, None) if is_supervisor(1) => 1,
            (None, None) => return Err((
                "give --pid PID or --pidfile FILE: the supervisor to reload (without them, pid 1 \
                 when it is an unwedge supervisor, as in a container)"
                    .into(),
                2,
            )),
        };
    if pid <= 0 {
        // kill() would signal a process group (0: ours) or every process it may (-1).
        return Err((format!("refusing to signal pid {pid}: not a process"), 2));
    }
    // SIGHUP ends most programs: a stale pid file (a supervisor killed with SIGKILL, its pid
    // reused) must not make this kill an unrelated process. Pid 1 always exists and is most
    // often an init system: signalled only when proven to be a supervisor.
    let other = match not_a_supervisor(pid) {
        Some(cmdline) => Some(format!("it runs `{cmdline}`")),
        None if pid == 1 && !is_supervisor(1) => Some("its command line cannot be read".into()),
        None => None,
    };
    if let Some(other) = other {
        let hint = if from_file {
            "; is the pid file stale?"
        } else {
            ""
        };
        return Err((
            format!("pid {pid} is not an unwedge supervisor ({other}){hint}"),
            1,
        ));
    }
    Ok(pid)
}

fn sighup(pid: i32) -> Result<(), (String, u8)> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| (format!("cannot signal pid {pid}: {}", e.desc()), 1))
}

/// Sends SIGHUP; with `wait`, waits for the reload's outcome on `admin` (giving up once
/// nothing moved for `timeout`) and exits 0 when the new generation serves, 1 when it failed
/// or was refused.
pub(crate) fn reload(
    pid: Option<i32>,
    pidfile: Option<PathBuf>,
    wait: bool,
    admin: SocketAddr,
    timeout: Duration,
) -> ExitCode {
    let fail = |(msg, code): (String, u8)| {
        crate::out::eprint_line(format_args!("unwedge: error: {msg}"));
        ExitCode::from(code)
    };
    let pid = match target(pid, pidfile) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if !wait {
        return match sighup(pid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail((format!("cannot start a runtime: {e}"), 1)),
    };
    match rt.block_on(reload_and_wait(pid, admin, timeout)) {
        // The reload is done; a closed stdout only loses the line saying so.
        Ok(msg) => match crate::out::print(format_args!("{msg}\n")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail((e, 1)),
        },
        Err(e) => fail(e),
    }
}

async fn reload_and_wait(
    pid: i32,
    admin: SocketAddr,
    timeout: Duration,
) -> Result<String, (String, u8)> {
    let full = status_json(admin).await.map_err(|e| (e, 1))?;
    let before = &full["supervisor"];
    if before["pid"].as_i64() != Some(i64::from(pid)) {
        return Err((
            format!(
                "the admin endpoint at {admin} belongs to pid {}, not {pid}",
                before["pid"]
            ),
            1,
        ));
    }
    // A supervisor that is stopping takes no reload: said now, not after its drain.
    if before["stopping"] == true {
        return Err((
            format!("the supervisor (pid {pid}) is stopping; it takes no reload"),
            1,
        ));
    }
    // The outcome to wait for: that of the first reload that started after this signal. A
    // reload already in progress may run an older command or configuration; the supervisor
    // follows it with another, which answers every request made meanwhile.
    let answers_ours: Box<dyn Fn(&Value) -> bool> = match before["reload_requests"].as_u64() {
        Some(seen) => Box::new(move |r: &Value| r["requests"].as_u64() > Some(seen)),
        // A supervisor of an older version (a newer binary on disk, the old one running):
        // any outcome that was not there before.
        None => {
            let last = before["last_reload"].clone();
            Box::new(move |r: &Value| *r != last)
        }
    };
    sighup(pid)?;
    // The timeout counts from the last sign of progress: a rolling reload of many slots, or
    // one queued behind another, may take longer than any fixed time, while each step is
    // bounded by the supervisor's own timeouts (--ready-timeout, --stop-timeout).
    let mut deadline = Instant::now() + timeout;
    let mut seen = progress(&full);
    loop {
        tokio::time::sleep(POLL).await;
        let now = status_json(admin).await;
        if let Ok(full) = &now {
            let p = progress(full);
            if p != seen {
                seen = p;
                deadline = Instant::now() + timeout;
            }
        }
        match now.map(|full| full["supervisor"].clone()) {
            Ok(now) if !now["last_reload"].is_null() && answers_ours(&now["last_reload"]) => {
                let r = &now["last_reload"];
                let generation = &r["generation"];
                return if r["ok"] == true {
                    Ok(format!("reloaded: generation {generation} serves"))
                } else {
                    let reason = r["reason"].as_str().unwrap_or("unknown");
                    Err((
                        format!(
                            "reload failed: generation {generation}: {reason}; generation {} keeps serving",
                            now["generation"]
                        ),
                        1,
                    ))
                };
            }
            Ok(now) if now["stopping"] == true => {
                return Err((
                    format!("the supervisor (pid {pid}) began to stop before the reload finished"),
                    1,
                ));
            }
            Ok(_) => {}
            // Too busy to answer for now, or gone (checked below).
            Err(e) if Instant::now() >= deadline => return Err((e, 1)),
            Err(_) => {}
        }
        if !unwedge_supervisor::pidfile::running(pid) {
            return Err((
                format!("the supervisor (pid {pid}) exited before the reload finished"),
                1,
            ));
        }
        if Instant::now() >= deadline {
            return Err((
                format!(
                    "no reload outcome, and no progress of it, for {}; the reload may still be in progress",
                    humantime::format_duration(timeout)
                ),
                1,
            ));
        }
    }
}

/// What changes as a reload advances (in `/status`): whether one is in progress, the serving
/// generation, and each worker's pid, generation and state (a rolling reload switches one
/// slot at a time).
fn progress(status: &Value) -> Value {
    let workers: Vec<Value> = status["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| serde_json::json!([w["id"], w["pid"], w["generation"], w["state"]]))
                .collect()
        })
        .unwrap_or_default();
    let sup = &status["supervisor"];
    serde_json::json!([sup["reloading"], sup["generation"], workers])
}
