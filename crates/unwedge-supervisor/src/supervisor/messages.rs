//! The notify socket's messages (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=`, reports),
//! attributed to a worker by the sender's pid.

use super::*;

impl Pool {
    pub(super) fn worker_for_sender(&self, pid: i32) -> Option<i32> {
        if self.workers.contains_key(&pid) {
            return Some(pid);
        }
        // A worker's own children share its process group, or at least its session, also in
        // a group of their own (both ids are the worker pid).
        let s = crate::procfs::stat(pid)?;
        [s.pgid, s.sid]
            .into_iter()
            .find(|id| self.workers.contains_key(id))
    }

    /// How often the notify socket's file is checked: every [`NOTIFY_CHECK_INTERVAL`], or a
    /// quarter of the shortest heartbeat limit (`--watchdog`, or a worker's `WATCHDOG_USEC=`)
    /// if sooner (no less than 10 ms; one `lstat` each),
    /// so that a socket removed and bound again costs a worker less than its watchdog's
    /// worth of heartbeats.
    pub(super) fn notify_check_interval(&self) -> Duration {
        self.workers
            .values()
            .filter_map(|w| w.watchdog)
            .chain(self.config.watchdog)
            .map(|limit| limit / 4)
            .min()
            .map_or(NOTIFY_CHECK_INTERVAL, |q| {
                q.clamp(Duration::from_millis(10), NOTIFY_CHECK_INTERVAL)
            })
    }

    /// The notify socket was bound again: the heartbeats sent while it was gone went nowhere,
    /// so every watched worker's `--watchdog` starts again from `now`.
    pub(super) fn heartbeats_from_now(&mut self, now: Instant) {
        for w in self.workers.values_mut() {
            if w.last_watchdog.is_some() {
                w.last_watchdog = Some(now);
            }
        }
    }

    pub(super) fn on_datagram(&mut self, d: notify::Datagram) {
        let Some(bytes) = d.bytes else {
            self.counters.malformed_notify += 1;
            tracing::debug!("notify datagram too large; ignored");
            return;
        };
        let Some(pid) = d.pid.and_then(|p| self.worker_for_sender(p)) else {
            self.counters.forged_notify += 1;
            // At most once a minute: a process that floods the socket must not flood the log.
            if self.forged_told.due(Instant::now(), TELL_EVERY) {
                let from = d
                    .pid
                    .map_or_else(|| "an unknown pid".to_owned(), |p| format!("pid {p}"));
                tracing::warn!(
                    "a notify message from {from}, which is not a worker, was ignored (a \
                     worker's child that daemonized, or that exited before its message was \
                     read? only a worker's own pid, or a process of its process group or \
                     session still running when the message is read, counts; send it from \
                     the worker itself); such messages are counted in \
                     unwedge_notify_forged_total and told here at most once a minute"
                );
            } else {
                tracing::debug!("notify message from pid {:?}, not a worker; ignored", d.pid);
            }
            return;
        };
        // As systemd: the assignments are taken, the lines that are not are left out (one bad
        // line used to cost the whole datagram, its READY=1 too).
        let (msgs, bad) = notify::parse_lines(&bytes);
        if msgs.is_empty() && bad.is_empty() {
            self.counters.malformed_notify += 1;
            tracing::debug!("from pid {pid}: an empty notify message; ignored");
        }
        if let Some(first) = bad.first() {
            self.counters.malformed_notify += bad.len() as u64;
            let Some(w) = self.workers.get_mut(&pid) else {
                return;
            };
            if w.malformed_told {
                tracing::debug!("from pid {pid}: {first}; that line ignored");
            } else {
                w.malformed_told = true;
                tracing::warn!(
                    "{} pid {pid} sent a notify line that is not a KEY=value assignment \
                     ({first}); the line is ignored, the message's other lines are read \
                     (said once for this worker)",
                    slot_id(w.slot)
                );
            }
        }
        for m in msgs {
            self.on_message(pid, m);
        }
    }

    pub(super) fn on_message(&mut self, pid: i32, m: NotifyMessage) {
        let now = Instant::now();
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let id = slot_id(w.slot);
        match m {
            NotifyMessage::Ready => {
                self.speaks_notify = true;
                self.mark_ready(pid);
            }
            NotifyMessage::Watchdog => {
                if w.last_watchdog.is_none() {
                    if let Some(limit) = w.watchdog {
                        tracing::info!(
                            "{id} pid {pid} sends heartbeats: hung if silent for {}",
                            fmt_dur(limit)
                        );
                    }
                }
                w.last_watchdog = Some(now);
                // As systemd's: a heartbeat restarts the timer, whatever was asked before.
                w.heartbeat_extended = None;
            }
            NotifyMessage::Status(s) => {
                w.status = Some(s.clone());
                match notify::unhealthy_status(&s) {
                    // Also while it stops: a wedged worker will not finish its drain, and the
                    // wedge (dumped, reported) is worth more than a silent `--stop-timeout`.
                    Some("wedged") => self.hung(pid, HangKind::Wedged, &s),
                    Some(_) if !w.stop_requested => {
                        let (slot, uptime, generation) = (w.slot, now - w.started, w.generation);
                        let served = w.ready_at.is_some_and(|t| {
                            now.saturating_duration_since(t) >= spawn::SERVED_BEFORE_TAINT
                        });
                        // An unwedge worker crashes gracefully by itself, and a signal would
                        // cut its drain short: SIGTERM only if it is still there later.
                        // It is leaving: no longer counted or shown as ready.
                        w.stop_requested = true;
                        w.stop_since.get_or_insert(now);
                        w.state = WorkerState::Stopping;
                        w.term_at = Some(now + w.config.dump_grace);
                        self.count_restart(RestartReason::Tainted);
                        tracing::warn!("{id} pid {pid} is tainted ({s}); replacing it");
                        self.emit(Event::Tainted {
                            worker: id,
                            pid,
                            status: s,
                        });
                        if self.is_candidate(generation) {
                            self.reload_failed("a new worker is tainted".into());
                        } else if generation == self.active_gen
                            && served
                            && self.may_replace_at_once(slot, pid, now)
                        {
                            self.replace_tainted_at_once(slot, "is tainted");
                        } else if generation == self.active_gen {
                            self.schedule_restart(
                                slot,
                                RestartReason::Tainted,
                                Some(now),
                                uptime,
                                "is tainted",
                            );
                        }
                    }
                    _ => {}
                }
            }
            NotifyMessage::Stopping if self.stopping => {}
            NotifyMessage::Stopping if w.stop_requested => {
                w.said_stopping = true;
                // Said tainted, now leaving on its own: its drain gets `--stop-timeout`, not
                // the `--dump-grace` meant for a tainted worker that does not leave (a signal
                // would cut an `unwedge::serve` worker's drain short).
                // A pending SIGTERM is the tainted one: a hung or SIGTERMed worker has a
                // SIGKILL deadline instead (`kill_at`), and keeps it.
                if w.term_at.is_some() {
                    w.term_at = Some(now + w.config.stop_timeout);
                }
            }
            NotifyMessage::Stopping => {
                // Leaving on its own (a graceful crash): start the replacement now,
                // while it drains; the reason is counted when it exits. It has
                // `--stop-timeout` to go, then SIGTERM, then SIGKILL after another.
                let (slot, uptime, generation) = (w.slot, now - w.started, w.generation);
                w.stop_requested = true;
                w.said_stopping = true;
                w.stop_since.get_or_insert(now);
                w.leaving = true;
                w.state = WorkerState::Stopping;
                w.term_at = Some(now + w.config.stop_timeout);
                tracing::info!("{id} pid {pid} is stopping on its own; starting its replacement");
                if self.is_candidate(generation) {
                    self.reload_failed(format!("worker {id} stopped before the reload completed"));
                } else if generation == self.active_gen {
                    self.schedule_restart(
                        slot,
                        RestartReason::Exit,
                        Some(now),
                        uptime,
                        "is stopping",
                    );
                }
            }
            NotifyMessage::Report(json) => {
                w.last_report = Some(json.clone());
                self.counters.reports += 1;
                self.emit(Event::Report {
                    worker: id,
                    pid,
                    json,
                });
            }
            NotifyMessage::ExtendTimeout(more) => self.extend_timeout(pid, more, now),
            NotifyMessage::WatchdogTrigger => self.hung(
                pid,
                HangKind::Watchdog,
                "it asked to be handled as hung: WATCHDOG=trigger",
            ),
            NotifyMessage::WatchdogUsec(limit) => {
                let limit = (!limit.is_zero()).then_some(limit);
                // As systemd's: the timer starts again from now, with the new limit.
                if w.last_watchdog.is_some() {
                    w.last_watchdog = Some(now);
                }
                w.heartbeat_extended = None;
                if w.watchdog == limit {
                    return;
                }
                w.watchdog = limit;
                // Said once at `info`; a worker that keeps changing it must not flood the log.
                if std::mem::replace(&mut w.watchdog_told, true) {
                    tracing::debug!("{id} pid {pid} changed its heartbeat limit: {limit:?}");
                    return;
                }
                match w.watchdog {
                    Some(limit) => tracing::info!(
                        "{id} pid {pid} set its own heartbeat limit (WATCHDOG_USEC): hung if \
                         silent for {} after a WATCHDOG=1",
                        fmt_dur(limit)
                    ),
                    None => tracing::info!(
                        "{id} pid {pid} turned its heartbeat check off (WATCHDOG_USEC=0)"
                    ),
                }
            }
            NotifyMessage::Reloading | NotifyMessage::Other(_) => {}
        }
    }

    /// `EXTEND_TIMEOUT_USEC=`: as systemd's, it moves the deadline of what the worker is doing
    /// to `more` from now, if that is later, never sooner; the worker must say it again before
    /// then to get more. Its start: `--ready-timeout`. Its stop, once it is stopping (sent the
    /// stop signal, or it said `STOPPING=1`): the stop signal's and SIGKILL's deadlines, and the
    /// supervisor's own stop with them. While it serves: its heartbeat deadline (as systemd's
    /// watchdog), until its next `WATCHDOG=1`. Nothing else: a hung worker's SIGKILL, and the
    /// stop signal due to a worker that still serves (over `--max-memory`, past
    /// `--max-lifetime`, tainted but not leaving), are the supervisor's. systemd, if it waits
    /// on the supervisor (its start, a reload, its stop), is asked for as much more time.
    pub(super) fn extend_timeout(&mut self, pid: i32, more: Duration, now: Instant) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let id = slot_id(w.slot);
        let until = now + more;
        let later = |t: Option<Instant>| t.map(|t| t.max(until));
        let what = if w.state == WorkerState::Hung {
            None
        } else if w.stop_requested {
            let signalled = w.state == WorkerState::Stopping && w.kill_at.is_some();
            let draining = w.said_stopping && w.term_at.is_some();
            if signalled {
                w.kill_at = later(w.kill_at);
            }
            if draining {
                w.term_at = later(w.term_at);
            }
            if (signalled || draining) && self.stopping {
                self.stop_deadline = later(self.stop_deadline);
            }
            (signalled || draining).then_some(Phase::Stop)
        } else if w.ready_at.is_none() {
            w.ready_extended = Extension::renewed(w.ready_extended, now, until);
            Some(Phase::Start)
        } else if w.heartbeat_deadline().is_some() {
            w.heartbeat_extended = Extension::renewed(w.heartbeat_extended, now, until);
            Some(Phase::Heartbeat)
        } else {
            None
        };
        let Some(phase) = what else {
            tracing::debug!(
                "{id} pid {pid} asked for more time (EXTEND_TIMEOUT_USEC) with no deadline of \
                 its own to move; ignored"
            );
            return;
        };
        let what = phase.as_str();
        if w.extension_told == Some(phase) {
            tracing::debug!(
                "{id} pid {pid} asked for more time for {what} again: {}",
                fmt_dur(more)
            );
        } else {
            w.extension_told = Some(phase);
            tracing::info!(
                "{id} pid {pid} asked for more time for {what}: {} from now \
                 (EXTEND_TIMEOUT_USEC; renewals are logged at debug)",
                fmt_dur(more)
            );
        }
        if phase != Phase::Heartbeat
            && (!self.first_ready || self.reload.is_some() || self.stopping)
        {
            self.systemd.extend_timeout(more);
        }
    }
}
