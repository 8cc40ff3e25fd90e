//! Health checks of running workers: hangs (heartbeat, probe), `--max-memory`, `--max-lifetime`.

use super::*;
use crate::probe::ProbeError;

impl Pool {
    /// A hung worker: dump signal now, SIGKILL after `--dump-grace`, replacement scheduled.
    ///
    /// A worker already stopping (drained by a reload or a stop, leaving on its own, replaced)
    /// is dumped and killed the same way, sooner than its stop deadline, but is not restarted
    /// (what replaces it is already decided) nor counted as a restart.
    pub(super) fn hung(&mut self, pid: i32, kind: HangKind, detail: &str) {
        let now = Instant::now();
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if w.state == WorkerState::Hung {
            return;
        }
        let (grace, sig) = (w.config.dump_grace, w.config.dump_signal);
        let was_ready = w.ready_at.is_some();
        let retiring = w.stop_requested;
        w.state = WorkerState::Hung;
        w.stop_requested = true;
        w.stop_since.get_or_insert(now);
        // A stop deadline already sooner than the dump's grace stays.
        let kill_at = w.kill_at.map_or(now + grace, |k| k.min(now + grace));
        w.kill_at = Some(kill_at);
        let (slot, uptime, generation) = (w.slot, now - w.started, w.generation);
        let id = slot_id(slot);
        *self.counters.hangs.entry(kind).or_insert(0) += 1;
        if !retiring {
            self.count_restart(if was_ready {
                RestartReason::Hang
            } else {
                RestartReason::FailedStart
            });
            if !was_ready && generation == self.active_gen {
                self.slots[slot].failed_starts += 1;
            }
        }
        tracing::warn!(
            "{id} pid {pid} is hung ({}){}; sending {}, SIGKILL in {}",
            hang_text(kind, detail),
            if retiring { " while stopping" } else { "" },
            sig.as_str(),
            fmt_dur(kill_at.saturating_duration_since(now))
        );
        // To its process group, as the stop signal: a wrapper that does not pass it on (`go
        // run`, `npm start`, a shell without `exec`) would keep it from the server that dumps.
        let _ = signal_worker(pid, sig);
        self.emit(Event::Hung {
            worker: id,
            pid,
            kind,
            detail: detail.to_owned(),
            stopping: retiring,
        });
        if retiring {
            return;
        }
        if self.is_candidate(generation) {
            self.reload_failed(format!("worker {} hung ({})", slot_id(slot), kind.as_str()));
        } else if generation == self.active_gen {
            self.schedule_restart(slot, RestartReason::Hang, Some(now), uptime, "hung");
        }
    }

    /// Replaces a serving worker whose resident memory is above its `--max-memory`, one at a
    /// time. Not during a reload, which replaces them all anyway.
    pub(super) fn check_memory(&mut self, now: Instant) {
        if self.reload.is_some() {
            return;
        }
        self.follow_memory_limit();
        // One replacement at a time, as `auto`'s share budgets for (the workers and one
        // more): when a lower limit (or a common leak) puts every worker over at once,
        // replacing them all together would double the memory in use, in a cgroup that may
        // just have shrunk. The next one goes once the last one replaced has exited.
        if self.workers.values().any(|w| w.retire_when_replaced) {
            return;
        }
        let active_gen = self.active_gen;
        let over: Vec<(i32, u64, u64)> = self
            .workers
            .values_mut()
            .filter(|w| !w.stop_requested && w.ready_at.is_some())
            .filter(|w| w.generation == active_gen)
            .filter_map(|w| {
                let limit = w.config.max_memory?;
                let bytes = worker_memory(w, limit, now)?;
                (bytes > limit).then_some((w.pid, bytes, limit))
            })
            .collect();
        // The one furthest over its limit first.
        if let Some(&(pid, rss, limit)) = over.iter().max_by_key(|(_, rss, limit)| rss - limit) {
            self.over_memory(pid, rss, limit, now);
        }
    }

    /// `--max-memory auto` follows the cgroup's memory limit when it changes (an in-place pod
    /// resize, `systemctl set-property … MemoryMax=`): the share is computed again from the
    /// limit now, for the serving workers and those started next.
    fn follow_memory_limit(&mut self) {
        if !self.config.max_memory_auto {
            return;
        }
        let Some(limit) = self.oom.as_ref().and_then(|o| o.limit()) else {
            return;
        };
        let Ok(each) = crate::config::auto_memory(
            Some(limit),
            u32::try_from(self.config.workers).unwrap_or(u32::MAX),
        ) else {
            return;
        };
        let Some(before) = self.config.max_memory.filter(|&b| b != each) else {
            return;
        };
        tracing::info!(
            "--max-memory auto: the cgroup's memory limit is now {}: {} per worker (was {})",
            crate::config::human_size(limit),
            crate::config::human_size(each),
            crate::config::human_size(before)
        );
        let old = Arc::clone(&self.config);
        Arc::make_mut(&mut self.config).max_memory = Some(each);
        for w in self.workers.values_mut() {
            if Arc::ptr_eq(&w.config, &old) {
                w.config = Arc::clone(&self.config);
            }
        }
    }

    /// A worker over its memory limit: its replacement starts now; it serves on until the
    /// replacement is ready (SIGTERM then), or until the replacement had time enough to be.
    pub(super) fn over_memory(&mut self, pid: i32, rss: u64, limit: u64, now: Instant) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let (slot, uptime) = (w.slot, now - w.started);
        let id = slot_id(slot);
        w.stop_requested = true;
        w.stop_since.get_or_insert(now);
        w.retire_when_replaced = true;
        w.term_at = Some(now + w.config.restart_delay_max + w.config.ready_timeout);
        tracing::warn!(
            "{id} pid {pid} uses {} of memory, over --max-memory {}; starting its replacement, \
             then stopping it",
            crate::config::human_size(rss),
            crate::config::format_size(limit)
        );
        self.count_restart(RestartReason::Memory);
        self.emit(Event::MemoryLimit {
            worker: id,
            pid,
            rss,
            limit,
        });
        self.schedule_restart(
            slot,
            RestartReason::Memory,
            // Planned, not a crash: no crash-to-ready time.
            None,
            uptime,
            "is over --max-memory",
        );
    }

    /// Whether `w` may be replaced for its age now: a ready worker of the serving generation,
    /// with no reload under way (a reload replaces it anyway) and its slot not starting
    /// another already.
    pub(super) fn may_retire(&self, w: &Worker) -> bool {
        w.ready_at.is_some()
            && w.generation == self.active_gen
            && self.reload.is_none()
            && self.slots[w.slot].pending.is_none()
    }

    /// A worker that ran its `--max-lifetime`: replaced as one over `--max-memory` is (its
    /// replacement starts now; it serves on until the replacement is ready), but planned: not
    /// against the restart intensity, no backoff, no alert.
    pub(super) fn past_lifetime(&mut self, pid: i32, now: Instant) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let (slot, uptime) = (w.slot, now - w.started);
        let limit = w.config.max_lifetime.unwrap_or_default();
        w.stop_requested = true;
        w.stop_since.get_or_insert(now);
        w.retire_when_replaced = true;
        w.retire_at = None;
        w.term_at = Some(now + w.config.restart_delay_max + w.config.ready_timeout);
        let id = slot_id(slot);
        tracing::info!(
            "{id} pid {pid} has run {} (--max-lifetime {}); starting its replacement, then \
             stopping it",
            fmt_dur(uptime),
            humantime::format_duration(limit)
        );
        self.count_restart(RestartReason::Lifetime);
        let s = &mut self.slots[slot];
        s.restarts += 1;
        s.pending = Some(Pending {
            at: now,
            crash_at: None,
        });
        self.emit(Event::RestartScheduled {
            worker: id,
            reason: RestartReason::Lifetime,
            delay: Duration::ZERO,
        });
    }

    pub(super) fn on_probe(&mut self, p: ProbeResult) {
        let shared_many = self.config.port_env.is_none() && self.config.workers > 1;
        // Through a shared socket to several workers a probe is no one worker's.
        let probed = match (&self.shared_probe, shared_many) {
            (Some(target), true) => Some(format!("probe of {target}")),
            _ => None,
        };
        let before_stall = self.stalled_until.is_some_and(|s| p.started < s);
        let Some(w) = self.workers.get_mut(&p.pid) else {
            return;
        };
        let failures = w.config.probe_failures;
        w.probe_inflight = false;
        if w.stop_requested {
            return;
        }
        if before_stall && p.outcome.is_err() {
            // Its timeout may have run out while the supervisor was stopped.
            tracing::debug!(
                "pid {}: a probe started before the stall failed; not counted",
                p.pid
            );
            return;
        }
        if let Err(ProbeError::Unable(why)) = &p.outcome {
            // The supervisor's shortage: neither a failure of the worker's nor a success, and
            // no time of its start (a poll that could not be made moves its ready deadline by
            // as much).
            if w.ready_at.is_none() {
                let lost = p.started.elapsed() + READY_POLL;
                w.ready_from = (w.ready_from + lost).min(Instant::now());
            }
            let id = slot_id(w.slot);
            if self.probe_unable_told.due(Instant::now(), TELL_EVERY) {
                tracing::warn!(
                    "{id} pid {}: cannot probe it: {why}; not counted against it (said again in \
                     a minute if it goes on)",
                    p.pid
                );
            }
            return;
        }
        if p.ready_check {
            if p.outcome.is_ok() {
                self.mark_ready(p.pid);
            }
            return;
        }
        match p.outcome {
            Ok(()) => w.probe_failures = 0,
            Err(e) => {
                w.probe_failures += 1;
                let (n, id) = (w.probe_failures, slot_id(w.slot));
                // Each worker's probe of the shared socket fails alike: said at most once a
                // minute, not once per worker and interval.
                let now = Instant::now();
                let quiet = probed.is_some() && self.shared_probe_told.is_quiet(now, TELL_EVERY);
                match &probed {
                    _ if quiet => tracing::debug!("probe failed ({n}/{failures}): {e}"),
                    Some(probe) => tracing::warn!("{probe} failed ({n}/{failures}): {e}"),
                    None => {
                        tracing::warn!("{id} pid {}: probe failed ({n}/{failures}): {e}", p.pid)
                    }
                }
                if n >= failures {
                    if shared_many {
                        // Through a shared socket the probe cannot tell which worker failed.
                        w.probe_failures = 0;
                        if self.shared_probe_told.due(now, TELL_EVERY) {
                            tracing::error!(
                                "probe through the shared socket failed {n} times in a row; cannot \
                                 tell which worker is hung (use --watchdog, or --port-env for \
                                 per-worker probes); said again in a minute if it goes on"
                            );
                        }
                    } else {
                        self.hung(p.pid, HangKind::Probe, &e.to_string());
                    }
                }
            }
        }
    }

    pub(super) fn probe_target(&self, w: &Worker) -> Option<ListenAddr> {
        match w.port {
            Some(port) => Some(ListenAddr::Tcp(([127, 0, 0, 1], port).into())),
            None => self.shared_probe.clone(),
        }
    }

    pub(super) fn start_probe(&self, w: &Worker, ready_check: bool) {
        let Some(target) = self.probe_target(w) else {
            return;
        };
        let tx = self.probe_tx.clone();
        let pid = w.pid;
        let started = Instant::now();
        let c = &w.config;
        let timeout = c.probe_timeout;
        let use_http = !ready_check || c.ready == ReadyMode::Probe || c.probe.is_some();
        let path = c.probe.clone().unwrap_or_else(|| "/".into());
        let port_only = ready_check && matches!(c.ready, ReadyMode::Port | ReadyMode::Auto);
        tokio::spawn(async move {
            let outcome = if port_only || !use_http {
                probe::connects(&target, timeout).await
            } else {
                probe::probe(&target, &path, timeout).await.map(drop)
            };
            let _ = tx.send(ProbeResult {
                pid,
                started,
                ready_check,
                outcome,
            });
        });
    }
}

/// `kind: detail` for the log, without the kind twice: a wedged worker's `STATUS=` text starts
/// with `wedged` itself (`wedged: deadlock between …`).
fn hang_text(kind: HangKind, detail: &str) -> String {
    let kind = kind.as_str();
    let rest = match detail.strip_prefix(kind) {
        Some(r) if r.is_empty() || r.starts_with([':', ' ']) => r.trim_start_matches(':').trim(),
        _ => detail,
    };
    if rest.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hang_text_names_the_kind_once() {
        let wedged = |d| hang_text(HangKind::Wedged, d);
        assert_eq!(wedged("wedged: deadlock"), "wedged: deadlock");
        assert_eq!(wedged("wedged"), "wedged");
        assert_eq!(wedged("wedgedness"), "wedged: wedgedness");
        assert_eq!(
            hang_text(HangKind::Probe, "connection refused"),
            "probe: connection refused"
        );
    }
}
