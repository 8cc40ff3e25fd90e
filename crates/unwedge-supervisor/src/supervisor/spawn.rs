//! Starting workers: spawning a worker in a slot, readiness, restarts with backoff, and giving up
//! when a worker failed to start too many times in a row or the restart intensity is exceeded.

use super::*;

impl Pool {
    /// Starts a worker in `slot`; a failure to spawn counts as a failed start.
    pub(super) fn spawn(&mut self, slot: usize, generation: u64, crash_at: Option<Instant>) {
        match self.try_spawn(slot, generation, crash_at) {
            Ok(()) => {}
            // The supervisor's own shortage (its open files, memory, processes), not the
            // worker's fault: retried with the backoff, never counted toward giving up, so a
            // flood of connections to the admin port cannot make it stop the healthy workers.
            // A reload's worker is not retried: the retry would start the serving generation
            // (a second worker of it in the slot), and the reload would wait for ever. The
            // reload fails instead, said with the shortage (a reload that starts a second
            // set of workers is when a limit on processes is reached); the serving
            // generation goes on.
            Err(e) if is_our_shortage(&e) && self.is_candidate(generation) => {
                let (what, hint) = shortage_of(&e);
                self.reload_failed(format!(
                    "cannot start worker {}: the supervisor is short of {what} ({e}): {hint}",
                    slot_id(slot)
                ));
            }
            Err(e) if is_our_shortage(&e) => {
                let s = &mut self.slots[slot];
                let delay = s.backoff.next_delay(Duration::ZERO).max(SHORTAGE_RETRY_MIN);
                let at = Instant::now() + delay;
                if s.pending.as_ref().is_none_or(|p| at < p.at) {
                    s.pending = Some(Pending { at, crash_at });
                }
                tracing::error!(
                    "{}: cannot start worker: the supervisor is short of {} ({e}); retrying in \
                     {} (not counted as a failed start: {})",
                    slot_id(slot),
                    shortage_of(&e).0,
                    fmt_dur(delay),
                    shortage_of(&e).1,
                );
            }
            Err(e) => {
                tracing::error!("{}: cannot start worker: {e}", slot_id(slot));
                if self.is_candidate(generation) {
                    self.reload_failed(format!("cannot start worker: {e}"));
                } else {
                    self.counters
                        .restarts
                        .entry(RestartReason::FailedStart)
                        .and_modify(|c| *c += 1)
                        .or_insert(1);
                    self.slots[slot].failed_starts += 1;
                    self.schedule_restart(
                        slot,
                        RestartReason::FailedStart,
                        Some(Instant::now()),
                        Duration::ZERO,
                        &format!("could not be started: {e}"),
                    );
                }
            }
        }
    }

    pub(super) fn try_spawn(
        &mut self,
        slot: usize,
        generation: u64,
        crash_at: Option<Instant>,
    ) -> std::io::Result<()> {
        let id = slot_id(slot);
        let config = match &self.reload {
            Some(Reload {
                generation: g,
                config: Some(c),
                ..
            }) if *g == generation => c.clone(),
            _ => self.config.clone(),
        };
        let port = match &config.port_env {
            Some(_) => Some(self.port_for(slot)?),
            None => None,
        };
        let command = &config.command;
        // Every worker starts through the shim: it places the sockets and ties the worker's
        // life to ours.
        let mut cmd = self.shim.command();
        cmd.arg("exec-shim")
            .arg("--")
            .args(command)
            .env(SHIM_FDS_ENV, socket::shim_fds(&self.listeners))
            .env(SHIM_PARENT_ENV, std::process::id().to_string());
        if let Some(n) = self.nofile {
            cmd.env(SHIM_NOFILE_ENV, n.to_string());
        }
        for v in SYSTEMD_VARS {
            cmd.env_remove(v);
        }
        if !self.listeners.is_empty() {
            cmd.env("LISTEN_FDNAMES", socket::fd_names(&self.listeners));
        }
        cmd.env("NOTIFY_SOCKET", &self.notify_path);
        if let Some(w) = config.watchdog {
            cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
        }
        if let (Some(var), Some(p)) = (&config.port_env, port) {
            cmd.env(var, p.to_string());
        }
        if let Some(r) = config.run_as.as_ref().filter(|r| r.switches()) {
            cmd.env(SHIM_CREDENTIALS_ENV, r.shim_value());
            for (k, v) in r.env() {
                cmd.env(k, v);
            }
        }
        cmd.env("UNWEDGE_WORKER", &id)
            .env("UNWEDGE_GENERATION", generation.to_string());
        // No process group here: the shim calls setsid(), which a group leader may not, and
        // becomes the leader of a new session and group (see `signal_worker` for the moment
        // before).
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        inherit_sockets(&mut cmd, &self.listeners);
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let fmt = self.config.log_format;
        let cutoff = output::OutputCutoff::new();
        let forward = |pipe: Option<OwnedFd>, stream| -> std::io::Result<()> {
            if let Some(pipe) = pipe {
                let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe)?;
                output::forward(rx, id.clone(), pid, stream, fmt, &cutoff);
            }
            Ok(())
        };
        let piped = forward(child.stdout.take().map(OwnedFd::from), Stream::Stdout)
            .and_then(|()| forward(child.stderr.take().map(OwnedFd::from), Stream::Stderr));
        if let Err(e) = piped {
            // Started but not watched (no room to register its pipes): not left running
            // untracked on the shared socket. Killed and reaped here, before `reap` sees it.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        drop(child); // reaped by `reap` (waitpid), not by std
        let now = Instant::now();
        let ready_now = config.ready == ReadyMode::None;
        let retire_at = config.max_lifetime.map(|l| now + jittered(l));
        let watchdog = config.watchdog;
        self.workers.insert(
            pid,
            Worker {
                slot,
                pid,
                config,
                generation,
                started: now,
                started_wall: SystemTime::now(),
                ready_at: None,
                state: WorkerState::Starting,
                stop_requested: false,
                stop_since: None,
                leaving: false,
                last_watchdog: None,
                watchdog,
                probe_failures: 0,
                next_probe: now + READY_POLL,
                probe_inflight: false,
                ready_from: now,
                ready_extended: None,
                heartbeat_extended: None,
                said_stopping: false,
                extension_told: None,
                malformed_told: false,
                watchdog_told: false,
                port,
                status: None,
                last_report: None,
                kill_at: None,
                term_at: None,
                retire_when_replaced: false,
                crash_at,
                next_pss: now,
                last_pss: None,
                retire_at,
                output: Some(cutoff),
            },
        );
        tracing::debug!("{id} pid {pid} started (generation {generation})");
        if generation > 1 && crash_at.is_none() {
            tracing::info!("{id} pid {pid} started (generation {generation})");
        }
        self.emit(Event::WorkerStarted {
            worker: id,
            pid,
            generation,
        });
        if ready_now {
            self.mark_ready(pid);
        }
        Ok(())
    }

    /// The port for a new worker in `slot` (`--port-env`): the slot's last one when no worker
    /// of ours has it and it can be bound (its worker crashed, and nothing else took it),
    /// another free one otherwise (a replacement that overlaps its predecessor: a reload's, a
    /// hung or tainted worker's).
    fn port_for(&mut self, slot: usize) -> std::io::Result<u16> {
        let ours = |p: u16| self.workers.values().any(|w| w.port == Some(p));
        let last = self.slots[slot]
            .port
            .filter(|p| !ours(*p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
        let port = match last {
            Some(p) => p,
            // Free now, and not one a worker was given that it may not have bound yet.
            None => loop {
                let p = socket::free_port()?;
                if !ours(p) {
                    break p;
                }
            },
        };
        self.slots[slot].port = Some(port);
        Ok(port)
    }

    pub(super) fn mark_ready(&mut self, pid: i32) {
        self.mark_ready_because(pid, "");
    }

    /// [`Self::mark_ready`], saying `why` (`" (…)"`) in its log line.
    pub(super) fn mark_ready_because(&mut self, pid: i32, why: &str) {
        let now = Instant::now();
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if w.ready_at.is_some() || w.stop_requested {
            return;
        }
        w.ready_at = Some(now);
        w.state = WorkerState::Ready;
        self.slots[w.slot].failed_starts = 0;
        w.next_probe = now + w.config.probe_interval;
        w.probe_failures = 0;
        let startup = now - w.started;
        let crash_to_ready = w.crash_at.map(|c| now - c);
        let (slot, generation) = (w.slot, w.generation);
        if let Some(d) = crash_to_ready {
            let v = &mut self.counters.crash_to_ready;
            if v.len() >= 1024 {
                v.remove(0);
            }
            v.push(d);
        }
        let port = w.port.map(|p| format!(", port {p}")).unwrap_or_default();
        match crash_to_ready {
            Some(c) => tracing::info!(
                "{} pid {pid} ready in {} ({} after the crash{port}){why}",
                slot_id(slot),
                fmt_dur(startup),
                fmt_dur(c)
            ),
            None => tracing::info!(
                "{} pid {pid} ready in {}{}{why}",
                slot_id(slot),
                fmt_dur(startup),
                if port.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", &port[2..])
                }
            ),
        }
        self.emit(Event::WorkerReady {
            worker: slot_id(slot),
            pid,
            startup,
            crash_to_ready,
        });
        // Workers of this slot over their memory limit served until now: they go.
        self.stop_replaced(slot, pid, "", |o| o.retire_when_replaced);
        if let Some(r) = self.reload.as_ref().filter(|r| r.generation == generation) {
            let wanted = r.config.as_ref().unwrap_or(&self.config).workers;
            if r.rolling {
                self.roll_on(slot, pid, generation);
            }
            let ready = self
                .workers
                .values()
                .filter(|w| w.generation == generation && w.ready_at.is_some())
                .count();
            if ready == wanted {
                self.complete_reload();
            }
        } else if !self.first_ready && generation == self.active_gen {
            let ready = self
                .workers
                .values()
                .filter(|w| w.generation == generation && w.ready_at.is_some())
                .count();
            if ready == self.config.workers {
                self.first_ready = true;
                tracing::info!("all {} worker(s) ready", self.config.workers);
                self.systemd.ready(&self.status_line());
                self.last_sd_status = self.status_line();
            }
        }
    }

    /// Schedules a replacement for `slot` (backoff, intensity).
    pub(super) fn schedule_restart(
        &mut self,
        slot: usize,
        reason: RestartReason,
        crash_at: Option<Instant>,
        uptime: Duration,
        why: &str,
    ) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        let limit = self.config.max_restarts;
        // Restarts spread out by the backoff may never exceed the intensity (at most 12 a
        // minute once at the default 5 s cap): a command that cannot start must still give up.
        // Looked at first: one whose failed starts come fast exceeds the intensity at the same
        // restart, and the reason must say that it never started.
        let failed = self.slots[slot].failed_starts;
        if failed > limit {
            let id = slot_id(slot);
            let reason = match failed {
                1 => format!("worker {id} failed to start (limit 0): {why}"),
                n => format!(
                    "worker {id} failed to start {n} times in a row (limit {limit}); the last: {why}"
                ),
            };
            let limits = format!("--max-restarts {limit}: a worker that never became ready");
            self.give_up(reason, &limits);
            return;
        }
        if let Err(e) = self.intensity.record(now) {
            let limits = format!(
                "--max-restarts {limit} --within {}",
                fmt_dur(self.config.within)
            );
            self.give_up(format!("{e}; the last: {} {why}", slot_id(slot)), &limits);
            return;
        }
        let s = &mut self.slots[slot];
        let delay = s.backoff.next_delay(uptime);
        s.restarts += 1;
        let at = now + delay;
        // A slot already waiting keeps the earlier start.
        if s.pending.as_ref().is_none_or(|p| at < p.at) {
            s.pending = Some(Pending { at, crash_at });
        }
        tracing::warn!("{} {why}; restarting in {}", slot_id(slot), fmt_dur(delay));
        self.emit(Event::RestartScheduled {
            worker: slot_id(slot),
            reason,
            delay,
        });
    }

    /// Whether the tainted worker `pid` of `slot`, which served (ready for at least
    /// [`SERVED_BEFORE_TAINT`]), is replaced at once ([`Pool::replace_tainted_at_once`]): at
    /// most `--max-restarts` such replacements of a slot within `--within`. More are a loop
    /// that a request does not explain, or not only (a task that poisons a lock seconds after
    /// every start, a probe whose handler spends the panic budget): those taints restart as
    /// crashes, backing off and counting toward giving up, so that systemd or Kubernetes may
    /// take over. Said once.
    pub(super) fn may_replace_at_once(&mut self, slot: usize, pid: i32, now: Instant) -> bool {
        let Err(e) = self.slots[slot].replaced_at_once.record(now) else {
            return true;
        };
        if !std::mem::replace(&mut self.taint_loop_told, true) {
            tracing::warn!(
                "{} pid {pid}: {} workers of this slot were tainted and replaced at once \
                 within {} (--max-restarts {}); from now on a taint restarts as a crash, \
                 with the restart delay, and counts toward giving up (said once)",
                slot_id(slot),
                e.count,
                fmt_dur(e.within),
                e.limit,
            );
        }
        false
    }

    /// The replacement of a worker that served and was then tainted by what it served
    /// (`STATUS=tainted`: a request poisoned a lock or spent the panic budget), ready for at
    /// least [`SERVED_BEFORE_TAINT`]: it starts now, while the tainted worker drains. That
    /// is not a crash loop (the worker ran), so the slot's backoff is neither waited for nor
    /// advanced, and the restart is not counted toward the restart intensity, as a
    /// `--max-memory` or `--max-lifetime` replacement is not: a client that retries a
    /// request which poisons state must not leave a one-worker service with no worker for up
    /// to `--restart-delay-max` per retry, nor make it give up. Bounded by
    /// [`Pool::may_replace_at_once`]. A worker tainted sooner after it became ready is
    /// restarted as a crash ([`Pool::schedule_restart`]), so one that taints itself as it
    /// starts still backs off and gives up.
    pub(super) fn replace_tainted_at_once(&mut self, slot: usize, why: &str) {
        if self.stopping {
            return;
        }
        self.slots[slot].restart_now(Instant::now());
        tracing::warn!("{} {why}; starting its replacement now", slot_id(slot));
        self.emit(Event::RestartScheduled {
            worker: slot_id(slot),
            reason: RestartReason::Tainted,
            delay: Duration::ZERO,
        });
    }

    pub(super) fn count_restart(&mut self, reason: RestartReason) {
        *self.counters.restarts.entry(reason).or_insert(0) += 1;
    }

    /// Stops every worker and ends with [`EXIT_GAVE_UP`]: `reason` says what happened (a
    /// worker that failed to start too many times in a row, or too many restarts), `limits`
    /// the settings that allowed it (logged only).
    pub(super) fn give_up(&mut self, reason: String, limits: &str) {
        if self.stopping {
            return;
        }
        tracing::error!(
            "giving up: {reason} ({limits}); stopping all workers, exit status {EXIT_GAVE_UP}"
        );
        self.emit(Event::GaveUp {
            reason: reason.clone(),
        });
        self.gave_up = Some(reason);
        self.begin_stop("giving up");
    }
}

/// How long a worker must have been ready for its taint to be a request's doing, replaced at
/// once ([`Pool::replace_tainted_at_once`]), rather than its own at start, restarted as a crash.
pub(super) const SERVED_BEFORE_TAINT: Duration = Duration::from_secs(1);

/// Shortest wait before trying again to start a worker the supervisor had no resources for.
const SHORTAGE_RETRY_MIN: Duration = Duration::from_millis(100);

/// Whether starting a worker failed for want of the supervisor's own resources: open files
/// (`EMFILE`, `ENFILE`: the pipes, the pidfd), memory (`ENOMEM`) or processes (`EAGAIN` from
/// `fork`, `RLIMIT_NPROC`), rather than anything about the worker's command.
fn is_our_shortage(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOMEM, Errno::EAGAIN]
            .iter()
            .any(|&errno| errno as i32 == n)
    })
}

/// What the supervisor is short of, for one of [`is_our_shortage`]'s errors, and what to do.
fn shortage_of(e: &std::io::Error) -> (&'static str, &'static str) {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EAGAIN) => (
            "processes",
            "the process or thread limit is reached: raise `TasksMax=` or `LimitNPROC=` \
             (systemd), the pod's or cgroup's pid limit (`pids.max`) or `ulimit -u`, or look \
             for what holds the processes",
        ),
        Some(Errno::ENOMEM) => (
            "memory",
            "the kernel refused to commit more memory (`vm.overcommit_memory=2` and its commit \
             limit, or the machine is out of memory): look for what holds the memory, or raise \
             the limit",
        ),
        _ => (
            "open files",
            "raise `LimitNOFILE=` / `ulimit -n`, or look for what holds the descriptors",
        ),
    }
}

/// Makes `listeners` inherited by the process `cmd` starts (the shim, then the worker) and by
/// no other: the supervisor's copies are close-on-exec, so that nothing else it starts (an
/// `--alert-exec` hook, and whatever that leaves running) holds the port open once the
/// supervisor is gone; the flag is cleared in the child, between fork and exec.
///
/// `cmd` then forks instead of using `posix_spawn` (std runs code between the two only so);
/// with no listeners (`--port-env`) it is left as it is.
fn inherit_sockets(cmd: &mut Command, listeners: &[Listener]) {
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::process::CommandExt;
    if listeners.is_empty() {
        return;
    }
    // Built before the fork: the child only reads it.
    let fds: Vec<RawFd> = listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    let clear_cloexec = move || {
        for &fd in &fds {
            #[allow(unsafe_code)]
            // SAFETY: fcntl on a number, no memory involved.
            let set = unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) };
            if set == -1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: `clear_cloexec` runs in the child between fork and exec, where (the supervisor
    // has other threads) only async-signal-safe calls are allowed: one fcntl(2) per fd, which
    // is async-signal-safe; it reads a Vec allocated before the fork and allocates nothing (an
    // `io::Error` made from errno holds the number only). The fds are the supervisor's
    // listeners, open for its whole life, so they are open in the child, whose copies they
    // are: the parent's stay close-on-exec. An error fails the spawn.
    unsafe {
        cmd.pre_exec(clear_cloexec);
    }
}
