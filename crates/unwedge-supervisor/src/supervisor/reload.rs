//! Reload with zero downtime: a new generation (all at once or one slot at a time), its completion,
//! and its failure (the old generation stays).

use super::*;

impl Pool {
    /// A reload request: a reload now, or, during one, another one right after it.
    pub(super) fn begin_reload(&mut self, why: &str) {
        if self.stopping {
            tracing::warn!("{why}: no reload, the supervisor is stopping");
            return;
        }
        self.reload_requests += 1;
        if self.reload.is_some() || self.preparing.is_some() {
            // Started before this request, it may run an older command or configuration
            // than the one this request is about: one more reload follows it.
            if !self.reload_pending {
                match (&self.reload, &self.preparing) {
                    (Some(r), _) => tracing::info!(
                        "{why}: generation {} is still starting; another reload follows it",
                        r.generation
                    ),
                    (None, Some(p)) => tracing::info!(
                        "{why}: the configuration of the reload before it is still being read \
                         (for {}); another reload follows it",
                        fmt_dur(p.since.elapsed())
                    ),
                    (None, None) => {}
                }
            }
            self.reload_pending = true;
            return;
        }
        self.start_reload(why);
    }

    /// After a reload ended: the reload requested meanwhile, if any.
    pub(super) fn start_pending_reload(&mut self) {
        if std::mem::take(&mut self.reload_pending) && !self.stopping {
            self.start_reload("queued reload");
        }
    }

    /// Starts a reload: with a configuration source (`--config`), once the source has been
    /// read and checked on a thread of its own ([`Pool::on_prepared`]); without one, now. The
    /// event loop never waits for it: a config file on a network mount that hangs, a FIFO, or
    /// a user database that does not answer (`--user` names are looked up again) must not stop
    /// restarts, hang detection and the admin endpoint. A plain thread rather than tokio's
    /// blocking pool: one that never returns must not keep the supervisor from exiting.
    pub(super) fn start_reload(&mut self, why: &str) {
        let requests = self.reload_requests;
        self.systemd.reloading();
        let Some(source) = self.reload_source.clone() else {
            self.launch_reload(why, requests, None);
            return;
        };
        let old = self.config.clone();
        let probe = self.shared_probe.clone();
        let sockets = !self.listeners.is_empty();
        let tx = self.prepared_tx.clone();
        let read = move || {
            // A panic must still answer, or every later reload would queue behind this one.
            let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
                (*source)().and_then(|new| reconfig::prepare(&old, new, probe.as_ref(), sockets))
            }))
            .unwrap_or_else(|_| Err("reading the configuration panicked".to_owned()));
            let _ = tx.send(prepared);
        };
        match std::thread::Builder::new()
            .name("unwedge-reload".into())
            .spawn(read)
        {
            Ok(_) => {
                self.preparing = Some(Preparing {
                    why: why.to_owned(),
                    requests,
                    since: Instant::now(),
                });
            }
            Err(e) => self.refuse_reload(
                why,
                requests,
                format!("cannot start a thread to read the configuration: {e}"),
            ),
        }
    }

    /// The configuration a reload's thread read and checked (see [`Pool::start_reload`]).
    pub(super) fn on_prepared(&mut self, prepared: Prepared) {
        // Gone when the supervisor began to stop meanwhile.
        let Some(p) = self.preparing.take() else {
            return;
        };
        match prepared {
            Ok(new) => {
                let new_config = self.adopt_config(new);
                self.launch_reload(&p.why, p.requests, new_config);
            }
            Err(reason) => self.refuse_reload(&p.why, p.requests, reason),
        }
    }

    /// The new configuration, or `None` when nothing a reload applies changed.
    fn adopt_config(&self, prepared: reconfig::Prepared) -> Option<Arc<Config>> {
        let reconfig::Prepared {
            config: new,
            changes,
            kept,
        } = prepared;
        if changes.is_empty() {
            if kept.is_empty() {
                tracing::info!("reload: configuration unchanged");
            } else {
                // After the warnings about what changed but waits for a restart.
                tracing::info!("reload: nothing else changed");
            }
            return None;
        }
        tracing::info!("reload: new configuration: {}", changes.join(", "));
        if let Some(oom) = &self.oom {
            warn_if_over_cgroup_limit(&new, oom.limit());
        }
        Some(Arc::new(new))
    }

    /// The number of the next reload, refused or started: each has its own, so that no two
    /// outcomes are told under one generation (`/status`, alerts, `reload --wait`).
    fn take_generation(&mut self) -> u64 {
        self.next_gen = self.next_gen.max(self.active_gen) + 1;
        self.next_gen
    }

    fn refuse_reload(&mut self, why: &str, requests: u64, reason: String) {
        let generation = self.take_generation();
        tracing::error!(
            "{why}: reload refused: {reason}; generation {} keeps serving",
            self.active_gen
        );
        self.count_failed_reload(generation, format!("refused: {reason}"), requests);
    }

    /// A reload that failed or was refused: counted, told (event, systemd), and the reload
    /// requested meanwhile, if any, follows.
    fn count_failed_reload(&mut self, generation: u64, reason: String, requests: u64) {
        self.counters.reloads_failed += 1;
        self.emit(Event::ReloadFailed {
            generation,
            reason,
            requests,
        });
        self.systemd.ready(&self.status_line());
        self.start_pending_reload();
    }

    /// Starts the new generation (with `new_config`, or the running configuration).
    fn launch_reload(&mut self, why: &str, requests: u64, new_config: Option<Arc<Config>>) {
        let generation = self.take_generation();
        let workers = new_config
            .as_ref()
            .map_or(self.config.workers, |c| c.workers);
        let rolling =
            new_config.as_deref().unwrap_or(&self.config).reload_mode == ReloadMode::Rolling;
        tracing::info!(
            "{why}: reloading: starting generation {generation}{}",
            if rolling {
                " (rolling: one worker at a time)"
            } else {
                ""
            }
        );
        while self.slots.len() < workers {
            let c = new_config.as_deref().unwrap_or(&self.config);
            self.slots.push(Slot::new(c));
        }
        let waiting_for = if rolling { self.stopping() } else { Vec::new() };
        self.reload = Some(Reload {
            generation,
            requests,
            config: new_config,
            rolling,
            next_slot: if rolling { 0 } else { workers },
            waiting_for,
        });
        if rolling {
            // The first slot once the workers already stopping have exited, each next one
            // once the one before is ready and the old worker it replaced has exited.
            self.roll_next();
            if let Some(r) = self.reload.as_ref().filter(|r| !r.waiting_for.is_empty()) {
                tracing::info!(
                    "generation {generation}: {} starts once the {} worker(s) still stopping \
                     have exited (pid {}): at most one worker more than usual runs",
                    slot_id(r.next_slot),
                    r.waiting_for.len(),
                    list_pids(&r.waiting_for)
                );
            }
            return;
        }
        for slot in 0..workers {
            if self.reload.is_none() {
                break;
            }
            self.spawn(slot, generation, None);
        }
    }

    /// A rolling reload's worker in `slot` is ready: the slot's old worker goes, and once it
    /// has exited, the next slot's new worker starts (see [`Pool::roll_next`]).
    pub(super) fn roll_on(&mut self, slot: usize, pid: i32, generation: u64) {
        let replaced =
            self.stop_replaced(slot, pid, &format!(" of generation {generation}"), |o| {
                o.generation != generation && !o.stop_requested
            });
        if let Some(r) = self.reload.as_mut() {
            r.waiting_for.extend(replaced);
        }
        self.roll_next();
    }

    /// The other workers of `slot` that `which` picks are replaced by `pid`, ready now: each
    /// gets the stop signal (and SIGKILL after its `--stop-timeout`). Returns their pids.
    pub(super) fn stop_replaced(
        &mut self,
        slot: usize,
        pid: i32,
        by: &str,
        which: impl Fn(&Worker) -> bool,
    ) -> Vec<i32> {
        let old: Vec<(i32, Duration)> = self
            .workers
            .values()
            .filter(|o| o.slot == slot && o.pid != pid && which(o))
            .map(|o| (o.pid, o.config.stop_timeout))
            .collect();
        for &(old, stop_timeout) in &old {
            tracing::info!(
                "{} pid {old}: replaced by pid {pid}{by}; stopping it",
                slot_id(slot)
            );
            self.terminate(old, stop_timeout);
        }
        old.into_iter().map(|(pid, _)| pid).collect()
    }

    /// The workers asked to stop that still run, and the sessions exited ones left running.
    fn stopping(&self) -> Vec<i32> {
        self.workers
            .values()
            .filter(|w| w.stop_requested)
            .map(|w| w.pid)
            .chain(self.leftovers.iter().map(|l| l.sid))
            .collect()
    }

    /// A rolling reload's next slot: its new worker starts, if slots remain, once the workers
    /// the reload is responsible for have stopped: those already stopping when it began (a
    /// reload just before left them draining) and the old ones it replaced, each with anything
    /// it left running in its session (a shell wrapper without `exec` exits at SIGTERM while
    /// its server still drains). So the reload runs at most one worker more than usual,
    /// draining ones and their servers included. A worker that starts stopping meanwhile for
    /// its own reason (a graceful crash, a hang) is replaced as any time, and does not hold
    /// the reload up: with a crash every second it would never go on. Until then the reload
    /// waits for them ([`Pool::roll_after_exit`]); each is bounded by its SIGKILL deadline.
    pub(super) fn roll_next(&mut self) {
        let stopping = self.stopping();
        let Some(r) = self.reload.as_mut().filter(|r| r.rolling) else {
            return;
        };
        r.waiting_for.retain(|p| stopping.contains(p));
        let generation = r.generation;
        let wanted = r.config.as_ref().unwrap_or(&self.config).workers;
        let next = r.next_slot;
        if next >= wanted {
            return;
        }
        if r.waiting_for.is_empty() {
            r.next_slot += 1;
            self.spawn(next, generation, None);
        }
    }

    /// `pid` (a worker, or the session an exited one left running) is gone: if a rolling
    /// reload waited for it, the next slot's turn, unless other workers are still stopping
    /// (see [`Pool::roll_next`]).
    pub(super) fn roll_after_exit(&mut self, pid: i32) {
        if self
            .reload
            .as_ref()
            .is_some_and(|r| r.waiting_for.contains(&pid))
        {
            self.roll_next();
        }
    }

    pub(super) fn complete_reload(&mut self) {
        let Some(r) = self.reload.take() else { return };
        if let Some(c) = r.config {
            // The new generation's settings become the supervisor's: its restart policy and
            // timeouts, the number of workers replaced on a crash.
            for s in &mut self.slots {
                s.backoff = Backoff::new(c.restart_delay, c.restart_delay_max, c.stable_after);
                s.replaced_at_once = s.replaced_at_once.reconfigured(c.max_restarts, c.within);
            }
            // The restarts already counted stay counted: a crash loop mixed with reloads
            // must still give up.
            self.intensity = self.intensity.reconfigured(c.max_restarts, c.within);
            self.config = c;
        }
        // Each old worker drains under its own settings (its --stop-timeout), not the new
        // generation's.
        let old: Vec<(i32, Duration)> = self
            .workers
            .values()
            .filter(|w| w.generation != r.generation)
            .map(|w| (w.pid, w.config.stop_timeout))
            .collect();
        self.active_gen = r.generation;
        for s in &mut self.slots {
            s.pending = None;
        }
        tracing::info!(
            "generation {} ready; stopping {} old worker(s)",
            r.generation,
            old.len()
        );
        for (pid, timeout) in old {
            self.terminate(pid, timeout);
        }
        self.counters.reloads += 1;
        self.first_ready = true;
        self.emit(Event::Reloaded {
            generation: r.generation,
            requests: r.requests,
        });
        self.systemd.ready(&self.status_line());
        self.start_pending_reload();
    }

    pub(super) fn reload_failed(&mut self, reason: String) {
        let Some(r) = self.reload.take() else { return };
        tracing::error!(
            "reload failed: generation {} {reason}; tearing it down, generation {} keeps serving",
            r.generation,
            self.active_gen
        );
        let new: Vec<(i32, Duration)> = self
            .workers
            .values()
            .filter(|w| w.generation == r.generation)
            .map(|w| (w.pid, w.config.stop_timeout.min(Duration::from_secs(5))))
            .collect();
        for (pid, timeout) in new {
            self.terminate(pid, timeout);
        }
        if r.rolling {
            // The slots already switched lost their old worker: the serving generation again.
            for slot in 0..self.config.workers {
                let serving = self.workers.values().any(|w| {
                    w.slot == slot && w.generation == self.active_gen && !w.stop_requested
                });
                if !serving && self.slots[slot].pending.is_none() {
                    tracing::info!(
                        "{}: starting generation {} again in it",
                        slot_id(slot),
                        self.active_gen
                    );
                    self.spawn(slot, self.active_gen, None);
                }
            }
        }
        self.count_failed_reload(r.generation, reason, r.requests);
    }

    pub(super) fn is_candidate(&self, generation: u64) -> bool {
        self.reload
            .as_ref()
            .is_some_and(|r| r.generation == generation)
    }
}
