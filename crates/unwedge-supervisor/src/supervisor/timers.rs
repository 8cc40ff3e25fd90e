//! The event loop's deadlines, and what it publishes: the snapshot, the status line, systemd's
//! `STATUS=`.

use super::*;

impl Pool {
    pub(super) fn on_timers(&mut self, now: Instant) {
        // Workers that ran their --max-lifetime.
        let due: Vec<i32> = self
            .workers
            .values()
            .filter(|w| !w.stop_requested && !self.stopping && self.may_retire(w))
            .filter(|w| w.retire_at.is_some_and(|t| t <= now))
            .map(|w| w.pid)
            .collect();
        for pid in due {
            self.past_lifetime(pid, now);
        }
        // Pending starts.
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .pending
                .as_ref()
                .is_some_and(|p| p.at <= now)
            {
                let p = self.slots[slot].pending.take().expect("checked");
                let gen = self.active_gen;
                self.spawn(slot, gen, p.crash_at);
            }
        }
        // Kill deadlines.
        let stop_over = self.stop_deadline.is_some_and(|d| d <= now);
        let mut timed_out = Vec::new();
        for w in self.workers.values_mut() {
            if w.kill_at.is_some_and(|k| k <= now) || (stop_over && w.kill_at.is_some()) {
                w.kill_at = None;
                let id = slot_id(w.slot);
                if w.state == WorkerState::Hung {
                    tracing::warn!("{id} pid {}: sending SIGKILL", w.pid);
                } else {
                    if self.stopping {
                        self.forced = true;
                    }
                    let waited = now - w.stop_since.unwrap_or(now);
                    tracing::warn!(
                        "{id} pid {}: did not stop within {} (--stop-timeout); sending SIGKILL{}",
                        w.pid,
                        fmt_dur(waited),
                        stuck_hint(w.pid)
                    );
                    timed_out.push((id, w.pid, waited));
                }
                let _ = signal_worker(w.pid, Signal::SIGKILL);
            }
        }
        for (worker, pid, waited) in timed_out {
            self.counters.stop_timeouts += 1;
            self.emit(Event::StopTimedOut {
                worker,
                pid,
                waited,
            });
        }
        if stop_over {
            self.stop_deadline = None;
            for d in &self.daemons {
                tracing::warn!("pid {d} (went into the background): did not stop within --stop-timeout; sending SIGKILL");
                let _ = kill(Pid::from_raw(*d), Signal::SIGKILL);
                self.forced = true;
            }
        }
        self.kill_leftovers(now);
        for w in self.workers.values_mut() {
            if w.term_at.is_some_and(|t| t <= now) {
                w.term_at = None;
                if w.state != WorkerState::Hung && w.kill_at.is_none() {
                    tracing::warn!(
                        "{} pid {}: still running; sending {}",
                        slot_id(w.slot),
                        w.pid,
                        w.config.stop_signal.as_str()
                    );
                    w.state = WorkerState::Stopping;
                    let _ = send_stop_signal(w.pid, w.config.stop_signal);
                    w.kill_at = Some(now + w.config.stop_timeout);
                }
            }
        }
        // Stopping: no health checks, no heartbeat to systemd (its watchdog is off once we
        // said STOPPING=1). Their deadlines are left out of `next_deadline` too, or the loop
        // would wake at a deadline in the past again and again until the stop ends.
        if self.stopping {
            return;
        }
        if now >= self.next_memory_check {
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL;
            self.check_memory(now);
        }
        // Readiness timeouts, heartbeats, probes.
        let mut hung: Vec<(i32, HangKind, String)> = Vec::new();
        let mut assume_ready = Vec::new();
        let mut accepting = Vec::new();
        let mut probes = Vec::new();
        let inodes = &self.listener_inodes;
        let candidates = self.reload.as_ref().map(|r| r.generation);
        let speaks_notify = self.speaks_notify;
        for w in self.workers.values_mut() {
            if w.stop_requested {
                continue;
            }
            let c = &w.config;
            if w.ready_at.is_none() {
                if now >= w.ready_deadline() {
                    let msg = match w.ready_extended {
                        Some(_) => format!(
                            "not ready after {}, past the time it asked for \
                             (EXTEND_TIMEOUT_USEC)",
                            fmt_dur(now - w.started)
                        ),
                        None => format!("not ready after {}", fmt_dur(c.ready_timeout)),
                    };
                    if c.ready == ReadyMode::Auto && c.port_env.is_none() && speaks_notify {
                        // Its command speaks sd_notify: silence is a start that hangs (a
                        // database it waits for), not a server that knows nothing of READY=1.
                        hung.push((
                            w.pid,
                            HangKind::ReadyTimeout,
                            format!(
                                "{msg}: no READY=1, while workers of this service said it \
                                 before (--ready auto takes silence for readiness only from \
                                 a service that never said READY=1)"
                            ),
                        ));
                    } else if c.ready == ReadyMode::Auto && c.port_env.is_none() {
                        let candidate = candidates == Some(w.generation);
                        assume_ready.push((w.pid, c.ready_timeout, candidate, msg));
                    } else {
                        hung.push((w.pid, HangKind::ReadyTimeout, msg));
                    }
                } else if needs_poll(c) && !w.probe_inflight && w.next_probe <= now {
                    w.probe_inflight = true;
                    w.next_probe = now + READY_POLL;
                    probes.push((w.pid, true));
                } else if watches_for_accept(c, inodes) && w.next_probe <= now {
                    w.next_probe = now + ACCEPT_POLL;
                    let tree = crate::procfs::descendants(w.pid, 64);
                    if crate::procfs::epoll_watches_any(&tree, inodes) {
                        accepting.push(w.pid);
                    }
                }
                continue;
            }
            if let (Some(deadline), Some(last)) = (w.heartbeat_deadline(), w.last_watchdog) {
                if now >= deadline {
                    let asked = if w.heartbeat_extended.is_some() {
                        ", past the time it asked for (EXTEND_TIMEOUT_USEC)"
                    } else {
                        ""
                    };
                    hung.push((
                        w.pid,
                        HangKind::Watchdog,
                        format!("no WATCHDOG=1 for {}{asked}", fmt_dur(now - last)),
                    ));
                    continue;
                }
            }
            if c.probe.is_some() && !w.probe_inflight && w.next_probe <= now {
                w.probe_inflight = true;
                w.next_probe = now + c.probe_interval;
                probes.push((w.pid, false));
            }
        }
        // Workers taken as ready without a word, or not ready in time: looked at together.
        let mut listen_checks = Vec::new();
        for pid in accepting {
            self.mark_ready_because(pid, " (it waits for connections on the passed socket)");
        }
        // Silent under --ready auto: taken as ready, but a reload's worker only if it has the
        // passed socket in an epoll set (the old generation serves meanwhile: no evidence, no
        // swap; `sh -c "sleep 100"` holds the socket too, but watches nothing).
        let mut assumed = Vec::new();
        for (pid, limit, candidate, msg) in assume_ready {
            let tree = crate::procfs::descendants(pid, 64);
            let watching = crate::procfs::epoll_watches_any(&tree, &self.listener_inodes);
            if candidate && !watching {
                hung.push((
                    pid,
                    HangKind::ReadyTimeout,
                    format!(
                        "{msg}: no READY=1, and the passed socket is in no epoll set of its \
                         processes (a reload's worker is taken as ready under --ready auto \
                         only with one or the other)"
                    ),
                ));
            } else {
                assumed.push((pid, limit, watching, tree));
            }
        }
        for (pid, kind, msg) in hung {
            // Its stop was decided meanwhile, by an earlier one of this list: a reload's
            // candidates all reach their readiness deadline in one tick, and the first one
            // found hung fails the reload and tears down the others. Not one more hang each.
            let stopping = self.workers.get(&pid).is_some_and(|w| w.stop_requested);
            if kind == HangKind::ReadyTimeout && stopping {
                continue;
            }
            if kind == HangKind::ReadyTimeout {
                // Now: hung() signals it, and it may be gone by the time they are looked at.
                let tree = crate::procfs::descendants(pid, 64);
                listen_checks.push((pid, self.own_sockets(&tree)));
            }
            self.hung(pid, kind, &msg);
        }
        for (pid, limit, watching, tree) in assumed {
            // Torn down meanwhile with a failed reload.
            if self.workers.get(&pid).is_none_or(|w| w.stop_requested) {
                continue;
            }
            if watching {
                tracing::warn!(
                    "pid {pid} sent no READY=1 within {}; taking it as ready: the passed \
                     socket is in an epoll set of its processes, so --ready accept would have \
                     found it ready then, without this wait",
                    fmt_dur(limit)
                );
            } else {
                tracing::warn!(
                    "pid {pid} sent no READY=1 within {}; taking it as ready: the passed \
                     socket is in no epoll set of its processes (it may wait in a blocking \
                     accept(), or not use the socket at all; use --ready to choose)",
                    fmt_dur(limit)
                );
            }
            listen_checks.push((pid, self.own_sockets(&tree)));
            self.mark_ready(pid);
        }
        self.warn_if_they_listen_elsewhere(listen_checks);
        for (pid, ready_check) in probes {
            if let Some(w) = self.workers.get(&pid) {
                self.start_probe(w, ready_check);
            }
        }
        // systemd watchdog and status.
        if let Some(at) = self.next_sd_watchdog {
            if at <= now {
                if self.workers.values().any(|w| w.state == WorkerState::Ready) {
                    self.systemd.watchdog();
                }
                self.next_sd_watchdog = self.systemd.watchdog_interval().map(|i| now + i);
            }
        }
        if self.systemd.enabled() && self.first_ready {
            let s = self.status_line();
            if s != self.last_sd_status {
                self.systemd.status(&s);
                self.last_sd_status = s;
            }
        }
    }

    /// The event loop did not run for `gap` (the supervisor was stopped or starved): every
    /// worker's heartbeat and readiness deadline moves `gap` later, and probes already running
    /// then cannot fail it. What the workers sent meanwhile was read already; what they could
    /// not send (a full queue) or what timed out while nobody read it is the supervisor's
    /// stall, not their hang. Moved, not restarted: the silence outside the stalls still adds
    /// up, so a worker that really hangs is found even while the supervisor stalls again and
    /// again (a swapping host).
    pub(super) fn after_stall(&mut self, gap: Duration, now: Instant) {
        self.stalled_until = Some(now);
        let later = |t: Instant| (t + gap).min(now);
        // What a worker asked for during the stall was read after it: not moved again.
        let began = now.checked_sub(gap);
        for w in self.workers.values_mut() {
            if let Some(last) = w.last_watchdog {
                w.last_watchdog = Some(later(last));
            }
            if w.ready_at.is_none() {
                w.ready_from = later(w.ready_from);
                w.ready_extended = Extension::after_stall(w.ready_extended, gap, began);
            }
            w.heartbeat_extended = Extension::after_stall(w.heartbeat_extended, gap, began);
            w.next_probe = w.next_probe.max(now);
        }
        tracing::warn!(
            "the supervisor's own loop did not run for {} (the process was stopped or starved: \
             SIGSTOP, a debugger, a paused VM, a frozen cgroup, swapping); the workers' \
             heartbeat and readiness deadlines move that much later",
            fmt_dur(gap)
        );
    }

    pub(super) fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let inodes = &self.listener_inodes;
        let mut d = now + Duration::from_secs(3600);
        let mut at = |t: Instant| d = d.min(t);
        for s in &self.slots {
            if let Some(p) = &s.pending {
                at(p.at);
            }
        }
        if let Some(s) = self.stop_deadline {
            at(s);
        }
        for l in &self.leftovers {
            at(l.kill_at);
        }
        // Not while stopping: `on_timers` neither checks memory nor heartbeats then, so these
        // deadlines do not move on.
        if !self.stopping {
            if let Some(s) = self.next_sd_watchdog {
                at(s);
            }
            if self.workers.values().any(|w| w.config.max_memory.is_some()) {
                at(self.next_memory_check);
            }
        }
        for w in self.workers.values() {
            if let Some(k) = w.kill_at {
                at(k);
            }
            if let Some(t) = w.term_at {
                at(t);
            }
            if w.stop_requested || self.stopping {
                continue;
            }
            if let Some(t) = w.retire_at.filter(|_| self.may_retire(w)) {
                at(t);
            }
            let c = &w.config;
            if w.ready_at.is_none() {
                at(w.ready_deadline());
                if (needs_poll(c) && !w.probe_inflight) || watches_for_accept(c, inodes) {
                    at(w.next_probe);
                }
                continue;
            }
            if let Some(deadline) = w.heartbeat_deadline() {
                at(deadline);
            }
            if c.probe.is_some() && !w.probe_inflight {
                at(w.next_probe);
            }
        }
        d.max(now)
    }

    /// systemd's `STATUS=`: the serving generation's ready workers of how many it runs, and
    /// during a reload the new one's (each counted apart: old and new both ready for a moment
    /// would read `3/2`).
    pub(super) fn status_line(&self) -> String {
        let ready = |generation: u64| {
            self.workers
                .values()
                .filter(|w| w.state == WorkerState::Ready && w.generation == generation)
                .count()
        };
        let restarts: u64 = self.counters.restarts.values().sum();
        let mut line = format!(
            "{}/{} workers ready, generation {}, {restarts} restarts",
            ready(self.active_gen),
            self.config.workers,
            self.active_gen
        );
        if let Some(r) = &self.reload {
            let workers = r.config.as_ref().map_or(self.config.workers, |c| c.workers);
            line.push_str(&format!(
                "; reloading: generation {} {}/{workers} ready",
                r.generation,
                ready(r.generation)
            ));
        }
        line
    }

    pub(super) fn publish(&self) {
        let mut workers: Vec<WorkerInfo> = self
            .workers
            .values()
            .map(|w| WorkerInfo {
                id: slot_id(w.slot),
                pid: w.pid,
                generation: w.generation,
                state: w.state,
                started_at: w.started_wall,
                restarts: self.slots[w.slot].restarts,
                last_exit: self.slots[w.slot].last_exit,
                status: w.status.clone(),
                last_report: w.last_report.clone(),
                port: w.port,
            })
            .collect();
        workers.sort_by(|a, b| (a.generation, &a.id, a.pid).cmp(&(b.generation, &b.id, b.pid)));
        let snap = Snapshot {
            generation: self.active_gen,
            ready: self.first_ready,
            reloading: self.reload.is_some() || self.preparing.is_some(),
            reload_requests: self.reload_requests,
            stopping: self.stopping,
            workers,
            counters: self.counters.clone(),
            started_at: self
                .handle
                .snapshot
                .lock()
                .map(|s| s.started_at)
                .unwrap_or_else(|_| SystemTime::now()),
            published: Instant::now(),
        };
        *self
            .handle
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = snap;
    }
}
