//! Reaping: a worker's exit, what it says about the worker (a crash, an OOM kill, a daemon left
//! behind, a server binding its own port), and its restart.

use super::*;

impl Pool {
    /// Reaps every exited child: workers are handled, other pids are orphans we adopted.
    ///
    /// A worker's last words come first: each exited child is found without being reaped
    /// (`WNOWAIT`), the notify queue is read, and only then is the child reaped. Everything it
    /// sent before it exited is in the queue by then (a datagram is queued before `sendto`
    /// returns), so none of it is read after the reap, when its pid names no worker. (Reading
    /// the queue before looking for exits would miss a worker that sends and exits in
    /// between.)
    ///
    /// A child this process started other than a worker (an `--alert-exec` command, in the
    /// supervisor's own session) is not reaped here: its `Child` waits for it, and would
    /// otherwise get no status ("No child processes": a delivered alert counted as failed)
    /// while still holding a pid the kernel may give to another process.
    pub(super) fn reap(&mut self, notify: &notify::NotifySocket, buf: &mut [u8]) {
        let exited = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        while let Ok(found) = waitid(Id::All, exited) {
            let Some(pid) = found.pid() else {
                break; // none exited
            };
            if self.started_here(pid.as_raw()) && !self.unclaimed_too_long(pid.as_raw()) {
                // `waitid` would name it again and again: the others, one by one.
                self.reap_each(notify, buf);
                break;
            }
            if !self.reap_one(pid, notify, buf) {
                break;
            }
        }
    }

    /// Reaps the exited children but those [`started_here`](Self::started_here), each by its
    /// pid (from the children lists of `/proc`).
    fn reap_each(&mut self, notify: &notify::NotifySocket, buf: &mut [u8]) {
        let exited = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let children = crate::procfs::children(std::process::id() as i32);
        // Claimed meanwhile (reaped by their `Child`): forgotten.
        self.unclaimed.retain(|pid, _| children.contains(pid));
        for child in children {
            let pid = Pid::from_raw(child);
            if !waitid(Id::Pid(pid), exited).is_ok_and(|f| f.pid().is_some()) {
                continue;
            }
            if self.started_here(child) && !self.unclaimed_too_long(child) {
                continue;
            }
            self.reap_one(pid, notify, buf);
        }
    }

    /// Whether exited child `pid`, [`started_here`](Self::started_here), has waited for its
    /// `Child` longer than [`UNCLAIMED_GRACE`]: then it is nobody's (a process an
    /// `--alert-exec` command left running, adopted when the command exited) and is reaped
    /// here. Starts its clock when first asked.
    fn unclaimed_too_long(&mut self, pid: i32) -> bool {
        let now = Instant::now();
        let since = *self.unclaimed.entry(pid).or_insert(now);
        if now.duration_since(since) < UNCLAIMED_GRACE {
            return false;
        }
        self.unclaimed.remove(&pid);
        true
    }

    /// Whether exited child `pid` is one the supervisor's runtime started itself (not a worker,
    /// in the supervisor's own session: workers lead sessions of their own, and orphans adopted
    /// from them keep theirs).
    fn started_here(&self, pid: i32) -> bool {
        if self.workers.contains_key(&pid) {
            return false;
        }
        let Some(session) = self.own_session else {
            return false;
        };
        crate::procfs::stat(pid).is_some_and(|s| s.sid == session)
    }

    /// Reaps exited child `pid`, its notify messages read first; false if it could not be.
    fn reap_one(&mut self, pid: Pid, notify: &notify::NotifySocket, buf: &mut [u8]) -> bool {
        for d in notify.drain_queued(buf, MAX_DRAINED) {
            self.on_datagram(d);
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid.as_raw(), Some(code), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                self.on_exit(pid.as_raw(), None, Some(sig as i32))
            }
            // Seen exited a moment ago: not expected; do not spin on it.
            _ => return false,
        }
        self.roll_after_exit(pid.as_raw());
        true
    }

    pub(super) fn on_exit(&mut self, pid: i32, code: Option<i32>, signal: Option<i32>) {
        let Some(mut w) = self.workers.remove(&pid) else {
            self.counters.orphans_reaped += 1;
            tracing::debug!("reaped orphan pid {pid}");
            // The last of a leftover group?
            self.forget_ended_leftovers();
            self.daemons.retain(|&d| d != pid);
            return;
        };
        let id = slot_id(w.slot);
        let config = w.config.clone();
        // Read a moment more, then closed (see `output::OUTPUT_GRACE`): a helper in a session
        // of its own that holds the pipes must not keep them, nor their tasks, open.
        let output = w.output.take();
        self.worker_exited(w, pid, code, signal);
        self.end_group(&id, pid, &config, output);
        self.keep_listening(&format!("found after {id} pid {pid} exited"));
        self.find_daemons();
    }

    /// Processes that went into the background out of a worker. A daemon forks, starts a
    /// session of its own (`setsid`) and lets its parent exit: out of the worker's process
    /// group, it is re-parented to the supervisor (the subreaper). Such a command cannot be
    /// supervised (its "worker" exits at once, the server runs on unseen), so say it plainly,
    /// once per process; they are stopped with the supervisor. Looked for at each worker's
    /// exit and every second (a daemon may call `setsid` only after its parent exited):
    /// one read of the supervisor's children lists. (As PID 1 in a container, a background
    /// process left by a `kubectl exec` is adopted too: named the same way, and stopped with
    /// the container as it would be anyway.)
    pub(super) fn find_daemons(&mut self) {
        let me = std::process::id() as i32;
        let Some(session) = self.own_session else {
            return;
        };
        for child in crate::procfs::children(me) {
            if self.workers.contains_key(&child) || self.daemons.contains(&child) {
                continue;
            }
            // A session of its own: not the supervisor's, nor a worker's (each worker leads
            // one), nor that of a worker that exited and left processes running.
            let own_session = |sid: i32| {
                sid != session
                    && !self.workers.contains_key(&sid)
                    && !self.leftovers.iter().any(|l| l.sid == sid)
            };
            if !crate::procfs::stat(child).is_some_and(|s| s.alive() && own_session(s.sid)) {
                continue;
            }
            let command = crate::procfs::command_line(child).unwrap_or_default();
            // Once a minute at most: a worker that keeps starting helpers of their own session
            // must not flood the log.
            if self.daemon_told.due(Instant::now(), TELL_EVERY) {
                tracing::warn!(
                    "pid {child} (`{command}`) went into the background (a session of its own, \
                     adopted by the supervisor): if a worker's command daemonizes, it cannot be \
                     supervised; run it in the foreground (e.g. nginx's `daemon off;`, redis's \
                     `--daemonize no`). It is stopped with the supervisor (said at most once a \
                     minute; the others at debug)"
                );
            } else {
                tracing::debug!("pid {child} (`{command}`) went into the background");
            }
            if self.stopping {
                // Found during the stop (the stop must not wait for it forever): the stop
                // signal until the stop deadline, SIGKILL once it has passed.
                let sig = if self.stop_deadline.is_some() {
                    self.config.stop_signal
                } else {
                    Signal::SIGKILL
                };
                let _ = kill(Pid::from_raw(child), sig);
                let _ = kill(Pid::from_raw(child), Signal::SIGCONT);
            }
            self.daemons.push(child);
        }
    }

    pub(super) fn worker_exited(
        &mut self,
        w: Worker,
        pid: i32,
        code: Option<i32>,
        signal: Option<i32>,
    ) {
        let now = Instant::now();
        // A SIGKILL nobody here sent (not a stop, not a hang): the OOM killer's, most often.
        let oom = (signal == Some(Signal::SIGKILL as i32) && !w.stop_requested)
            .then(|| self.oom.as_mut()?.explain_sigkill(now))
            .flatten();
        // Died of the SIGUSR1/SIGUSR2 the supervisor just passed on: the supervisor's doing
        // (on its operator's request), not a crash.
        let forwarded = (!w.stop_requested && !self.stopping)
            .then(|| self.died_of_forwarded(w.started, signal, now))
            .flatten()
            .filter(|&sig| self.forwarded_death_exempt(w.slot, w.pid, sig, now));
        let info = ExitInfo {
            code,
            signal,
            at: SystemTime::now(),
            requested: w.stop_requested || forwarded.is_some(),
            oom_killed: oom.is_some(),
        };
        let id = slot_id(w.slot);
        let uptime = now - w.started;
        // A new generation's worker that exits before its reload promoted it is no predecessor
        // of the worker serving in the slot (whose row would show its exit: a failed reload's
        // `exit 1` read as the serving worker's); the reload's failure says what happened.
        if w.generation <= self.active_gen {
            self.slots[w.slot].last_exit = Some(info);
        }
        // Held before the event: an observer may take the tail for a crash report.
        let failed_start_tail = (w.ready_at.is_none() && !w.stop_requested && !self.stopping)
            .then(|| output::StderrTail::of(pid))
            .flatten();
        self.emit(Event::WorkerExited {
            worker: id.clone(),
            pid,
            code,
            signal,
            requested: info.requested,
            by_stop_signal: w.stop_requested && signal == Some(w.config.stop_signal as i32),
            oom_killed: oom.is_some(),
        });
        let reason = if w.ready_at.is_none() {
            RestartReason::FailedStart
        } else {
            match (code, signal) {
                (Some(0), _) => RestartReason::Exit,
                (Some(_), _) => RestartReason::Crash,
                _ if oom.is_some() => RestartReason::Oom,
                _ => RestartReason::Signal,
            }
        };
        if let Some(k) = &oom {
            self.explain_oom(&w, pid, k);
        }
        if w.stop_requested || self.stopping {
            if w.leaving && !self.stopping {
                self.count_restart(reason);
                tracing::info!("{id} pid {pid} {info} (already replaced)");
            } else {
                tracing::info!("{id} pid {pid} {info}");
            }
            if self.is_candidate(w.generation) {
                self.reload_failed(format!("worker {id} {info}"));
            }
            return;
        }
        if self.is_candidate(w.generation) {
            tracing::warn!("{id} pid {pid} of the new generation {info} before it was ready");
            self.reload_failed(format!("worker {id} {info}"));
            return;
        }
        if w.generation < self.active_gen {
            return;
        }
        if let Some(sig) = forwarded {
            self.restart_after_forwarded(w.slot, pid, sig, now);
            return;
        }
        self.count_restart(reason);
        if reason == RestartReason::FailedStart {
            self.slots[w.slot].failed_starts += 1;
        }
        let why = if reason == RestartReason::FailedStart {
            if let Some(tail) = failed_start_tail {
                self.hint_if_it_binds_itself(&w, pid, tail);
            }
            format!("pid {pid} {info} before it was ready (failed start)")
        } else {
            format!("pid {pid} {info} after {}", fmt_dur(uptime))
        };
        self.schedule_restart(w.slot, reason, Some(now), uptime, &why);
    }

    /// Whether the death of `slot`'s worker `pid` of `sig`, a signal the supervisor had just
    /// forwarded to it, is still exempt from the restart policy (see
    /// [`Self::restart_after_forwarded`]): at most [`FORWARDED_EXEMPT`] of them in a slot
    /// within `--within`. More are a loop, most likely a worker that signals its parent (the
    /// supervisor) when it starts, as Xorg-style daemons do to say they are ready: every such
    /// signal is forwarded to every worker, which dies of it and is replaced by one that sends
    /// it again. Those restarts back off and count toward giving up like any other (they were
    /// done at once, hundreds a second, forever). Said once.
    fn forwarded_death_exempt(&mut self, slot: usize, pid: i32, sig: Signal, now: Instant) -> bool {
        let within = self.config.within;
        let deaths = &mut self.slots[slot].forwarded_deaths;
        while deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) >= within)
        {
            deaths.pop_front();
        }
        deaths.push_back(now);
        if deaths.len() <= FORWARDED_EXEMPT {
            return true;
        }
        let count = deaths.len();
        if !self.forwarded_loop_told {
            self.forwarded_loop_told = true;
            let name = sig.as_str();
            tracing::warn!(
                "{} pid {pid}: {count} workers of this slot killed by a {name} the supervisor \
                 forwarded within {}: a worker may be sending {name} to the supervisor itself \
                 (`kill -{} $PPID` when it starts, as Xorg-style daemons do to say they are \
                 ready), and the supervisor forwards it to every worker; from now on these \
                 deaths back off and count toward --max-restarts like any other; handle or \
                 ignore {name} in the worker, or have it not signal its parent (--ready notify \
                 says it is ready) (said once)",
                slot_id(slot),
                fmt_dur(within),
                name.trim_start_matches("SIG"),
            );
        }
        false
    }

    /// Restarts `slot` at once after its worker `pid` died of `sig`, which the supervisor had
    /// just forwarded to it: the worker does not handle the signal (its default action ends
    /// it). Counted as a restart by signal, but not as a crash: it does not count toward
    /// `--max-restarts` (an operator's `kill -USR1` must not make the supervisor give up), nor
    /// as a failed start, and it takes no backoff; unless they repeat (see
    /// [`Self::forwarded_death_exempt`]).
    fn restart_after_forwarded(&mut self, slot: usize, pid: i32, sig: Signal, now: Instant) {
        let id = slot_id(slot);
        let name = sig.as_str();
        self.count_restart(RestartReason::Signal);
        self.slots[slot].restart_now(now);
        tracing::warn!(
            "{id} pid {pid} was killed by {name}, which the supervisor forwarded: it does not \
             handle it; restarting it now (not counted as a crash nor toward --max-restarts)"
        );
        if !self.forwarded_fatal.contains(&sig) {
            self.forwarded_fatal.push(sig);
            tracing::warn!(
                "{name} sent to the supervisor is forwarded to every worker, and a worker that \
                 does not handle it dies of it (its default action): handle or ignore {name} \
                 in the worker, or do not send it to the supervisor (said once)"
            );
        }
        self.emit(Event::RestartScheduled {
            worker: id,
            reason: RestartReason::Signal,
            delay: Duration::ZERO,
        });
    }

    /// Samples the OOM kill count; says so when the kernel killed processes that were not
    /// workers (a worker's children: a preforking server's own workers, which it replaces
    /// itself, unseen otherwise).
    pub(super) fn tick_oom(&mut self, now: Instant) {
        let Some(oom) = &mut self.oom else {
            return;
        };
        let count = oom.tick(now);
        if count == 0 {
            return;
        }
        let limit = match oom.limit() {
            Some(l) => format!(
                " (the cgroup's memory limit is {})",
                crate::config::human_size(l)
            ),
            None => String::new(),
        };
        tracing::warn!(
            "the kernel's OOM killer killed {count} process(es) of the supervisor's cgroup that \
             {} not a worker: a worker's own child (a preforking server's process) or another \
             process sharing the cgroup; see the kernel log (`dmesg`) for which{limit}",
            if count == 1 { "was" } else { "were" }
        );
        self.counters.oom_killed_other += count;
        self.emit(Event::OomKilledOther { count });
    }

    /// Says what the OOM killer's count showed, the limit that ran out, and what to do.
    pub(super) fn explain_oom(&self, w: &Worker, pid: i32, k: &crate::oom::OomKill) {
        let id = slot_id(w.slot);
        let limit = match k.limit {
            Some(l) => format!(
                "; the memory limit of the supervisor's cgroup is {}",
                crate::config::human_size(l)
            ),
            None => String::new(),
        };
        let advice = match (w.config.max_memory, k.limit) {
            (None, Some(_)) => {
                "; --max-memory below that limit (leaving room for the other workers) replaces \
                 a growing worker gracefully, before the kernel cuts its requests"
            }
            (None, None) => {
                "; --max-memory replaces a growing worker gracefully, before the kernel cuts \
                 its requests"
            }
            (Some(_), _) => "",
        };
        tracing::warn!(
            "{id} pid {pid} was killed by the kernel's OOM killer: out of memory (oom_kill {} \
             -> {} in {}){limit}{advice}",
            k.count.0,
            k.count.1,
            k.file.display()
        );
    }

    /// A worker that failed to start and said an address is in use most likely binds the
    /// address the supervisor holds for it, instead of taking the socket it was passed: says
    /// so, once, when its stderr shows it (read off the loop, the lines may still come).
    pub(super) fn hint_if_it_binds_itself(&self, w: &Worker, pid: i32, tail: output::StderrTail) {
        let given = &self.bind_hint_given;
        if w.config.port_env.is_some()
            || self.listeners.is_empty()
            || given.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let given = given.clone();
        let id = slot_id(w.slot);
        let held = self.socket_addrs().join(", ");
        tokio::spawn(async move {
            let lines = tail.lines(Duration::from_millis(500)).await;
            let Some(line) = lines.iter().find(|l| output::says_address_in_use(l)) else {
                return;
            };
            if given.swap(true, std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            tracing::warn!(
                "{id} pid {pid} said `{}`: it seems to bind its address itself, while the \
                 supervisor holds {held} and passes it as fd 3 (LISTEN_FDS); make the command \
                 take the passed socket (see \"Taking the socket in your server\" in \
                 docs/supervisor.md), or give each worker a port of its own with --port-env",
                line.trim()
            );
        });
    }

    /// A worker taken as ready without a word (or not ready in time), with sockets of its own
    /// listening, most likely ignores the socket it was passed: nothing accepts the
    /// connections queued on it. Says so for each of `workers`: (pid, the sockets the worker
    /// and its descendants hold besides the passed ones, from [`Pool::own_sockets`], taken
    /// before a hung one was signalled: it may be gone by now). Looked for off the event
    /// loop: only when one holds such a socket, one read of the host's TCP tables for all of
    /// them, which takes tens of milliseconds with thousands of connections (it was read on
    /// the loop for each worker: with many workers late at once, the loop stalled for seconds
    /// and took itself for stopped).
    /// The sockets `tree` (a worker and its descendants) holds besides the passed ones: for
    /// [`Pool::warn_if_they_listen_elsewhere`], a look at their `/proc/PID/fd` (none when
    /// nothing was passed).
    pub(super) fn own_sockets(&self, tree: &[i32]) -> Vec<u64> {
        match self.listeners.is_empty() {
            true => Vec::new(),
            false => crate::procfs::own_socket_inodes(tree, &self.listener_inodes),
        }
    }

    pub(super) fn warn_if_they_listen_elsewhere(&self, workers: Vec<(i32, Vec<u64>)>) {
        if self.listeners.is_empty() || workers.iter().all(|(_, own)| own.is_empty()) {
            return;
        }
        let (named, own): (Vec<(String, i32)>, Vec<Vec<u64>>) = workers
            .into_iter()
            .map(|(pid, own)| {
                let id = self
                    .workers
                    .get(&pid)
                    .map_or_else(String::new, |w| slot_id(w.slot));
                ((id, pid), own)
            })
            .unzip();
        let held = self.socket_addrs().join(", ");
        // A thread whose start may fail, not `spawn_blocking`, which panics (on the event
        // loop: the supervisor, and its workers with it) when the process or thread limit is
        // reached: then this diagnosis is skipped.
        let started = std::thread::Builder::new()
            .name("unwedge-listens".into())
            .spawn(move || {
                let found = crate::procfs::tcp_listening_among(own);
                for ((id, pid), own) in named.iter().zip(found) {
                    if own.is_empty() {
                        continue;
                    }
                    let own: Vec<String> = own.iter().map(|(_, addr)| addr.to_string()).collect();
                    tracing::warn!(
                        "{id} pid {pid} listens on {} itself, not on the socket it was passed: \
                     connections to {held} wait unanswered; make the command take the passed \
                     socket (see \"Taking the socket in your server\" in docs/supervisor.md), or \
                     give each worker a port of its own with --port-env",
                        own.join(", "),
                    );
                }
            });
        if let Err(e) = started {
            tracing::debug!("not checked whether workers listen elsewhere: no thread ({e})");
        }
    }
}
