//! Stopping: the stop signal and its deadline, the supervisor's own stop, process groups a worker
//! left behind, signals forwarded to the workers.

use super::*;

impl Pool {
    pub(super) fn terminate(&mut self, pid: i32, timeout: Duration) {
        let now = Instant::now();
        if let Some(w) = self.workers.get_mut(&pid) {
            w.stop_requested = true;
            w.stop_since.get_or_insert(now);
            w.term_at = None;
            if w.state != WorkerState::Hung {
                w.state = WorkerState::Stopping;
                let _ = send_stop_signal(pid, w.config.stop_signal);
                let at = now + timeout;
                w.kill_at = Some(w.kill_at.map_or(at, |k| k.min(at)));
            }
        }
    }

    pub(super) fn begin_stop(&mut self, why: &str) {
        if self.stopping {
            tracing::warn!("{why} again: killing all workers now");
            for pid in self.workers.keys() {
                let _ = signal_worker(*pid, Signal::SIGKILL);
            }
            for l in self.leftovers.drain(..) {
                signal_session(l.sid, Signal::SIGKILL);
            }
            for d in &self.daemons {
                let _ = kill(Pid::from_raw(*d), Signal::SIGKILL);
            }
            self.forced = true;
            return;
        }
        tracing::info!("{why}: stopping {} worker(s)", self.workers.len());
        self.stopping = true;
        self.systemd.stopping();
        for s in &mut self.slots {
            s.pending = None;
        }
        self.reload = None;
        // A configuration still being read is dropped when it arrives.
        self.preparing = None;
        self.reload_pending = false;
        let timeout = self.config.stop_timeout;
        let pids: Vec<i32> = self.workers.keys().copied().collect();
        for pid in pids {
            self.terminate(pid, timeout);
        }
        let deadline = Instant::now() + timeout;
        for l in &mut self.leftovers {
            l.kill_at = l.kill_at.min(deadline);
        }
        // Our children (adopted), so their pids cannot be reused before we reap them.
        for d in &self.daemons {
            let _ = kill(Pid::from_raw(*d), self.config.stop_signal);
            // As for the workers: a stopped process could not act on it.
            let _ = kill(Pid::from_raw(*d), Signal::SIGCONT);
        }
        self.stop_deadline = Some(deadline);
    }

    /// After worker `pid` (the leader of its session and process group) exited: processes of
    /// its session still running, in its group or in groups of their own (a shell's background
    /// job), get the stop signal now and SIGKILL after `--stop-timeout` (at the stop deadline
    /// when the supervisor is stopping), as systemd does with a unit's processes. They would
    /// otherwise hold the listening sockets (accepting with the exited worker's code and state,
    /// keeping the port bound after the supervisor stops) and their memory. The signal and the
    /// timeout are the worker's own (`config`, the settings it was started with).
    ///
    /// `output` (the exited worker's [`output::OutputCutoff`]) is kept with them while they
    /// run, as they may still write to the worker's pipes; dropped here otherwise.
    pub(super) fn end_group(
        &mut self,
        id: &str,
        pid: i32,
        config: &Config,
        output: Option<output::OutputCutoff>,
    ) {
        // Nothing left (the common case) costs a look at the supervisor's children; only a
        // session that may still have members costs a look at every process.
        if !session_may_live(pid) {
            return;
        }
        let stop_signal = config.stop_signal;
        let members = signal_session_with(pid, &[stop_signal, Signal::SIGCONT]);
        if members.is_empty() {
            return;
        }
        let now = Instant::now();
        let kill_at = match self.stop_deadline {
            Some(d) => d.min(now + config.stop_timeout),
            // The stop's deadline has passed: no more time for anyone.
            None if self.stopping => now,
            None => now + config.stop_timeout,
        };
        tracing::warn!(
            "{id} pid {pid} exited and left {} process(es) of its session running (pid {}); \
             sending them {}, SIGKILL in {}",
            members.len(),
            list_pids(&members),
            stop_signal.as_str(),
            fmt_dur(kill_at - now)
        );
        self.counters.leftover_processes += members.len() as u64;
        self.emit(Event::LeftoverProcesses {
            worker: id.to_owned(),
            pid,
            pids: members,
        });
        self.leftovers.push(Leftover {
            worker: id.to_owned(),
            sid: pid,
            kill_at,
            signal: stop_signal,
            _output: output,
        });
    }

    /// SIGKILL to the leftover sessions whose deadline passed, if anything of them still runs.
    pub(super) fn kill_leftovers(&mut self, now: Instant) {
        self.forget_ended_leftovers();
        let (due, waiting): (Vec<Leftover>, Vec<Leftover>) = std::mem::take(&mut self.leftovers)
            .into_iter()
            .partition(|l| l.kill_at <= now);
        self.leftovers = waiting;
        for l in due {
            // A session id stays taken while a process of the session lives: it cannot name
            // another one yet.
            let members = signal_session(l.sid, Signal::SIGKILL);
            if members.is_empty() {
                self.leftover_ended(&l);
                continue;
            }
            tracing::warn!(
                "{} pid {}: {} leftover process(es) did not stop after {} (pid {}); sent SIGKILL",
                l.worker,
                l.sid,
                members.len(),
                l.signal.as_str(),
                list_pids(&members)
            );
            if self.stopping {
                self.forced = true;
            }
            // Dying now: a rolling reload need not wait for the reap.
            self.roll_after_exit(l.sid);
        }
    }

    /// Drops the leftover sessions whose last process is gone (reaped by us, or by another
    /// process of the session): see `session_may_live`.
    pub(super) fn forget_ended_leftovers(&mut self) {
        if self.leftovers.is_empty() {
            return;
        }
        let (live, ended): (Vec<Leftover>, Vec<Leftover>) = std::mem::take(&mut self.leftovers)
            .into_iter()
            .partition(|l| session_may_live(l.sid));
        self.leftovers = live;
        for l in ended {
            self.leftover_ended(&l);
        }
    }

    pub(super) fn leftover_ended(&mut self, l: &Leftover) {
        tracing::info!(
            "{} pid {}: its leftover processes have exited",
            l.worker,
            l.sid
        );
        // The slot's old worker is only now entirely gone: a rolling reload's next step.
        self.roll_after_exit(l.sid);
    }

    /// Passes `sig` (SIGUSR1, SIGUSR2) on to every worker, and remembers when: a worker that
    /// dies of it right after does not handle it (see [`Pool::died_of_forwarded`]).
    pub(super) fn forward(&mut self, sig: Signal) {
        self.forwarded.retain(|(s, _)| *s != sig);
        self.forwarded.push((sig, Instant::now()));
        for pid in self.workers.keys() {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
    }

    /// The signal a worker that started at `started` and was killed by `signal` at `now` died
    /// of, if the supervisor forwarded it that signal within [`FORWARDED_WINDOW`].
    pub(super) fn died_of_forwarded(
        &self,
        started: Instant,
        signal: Option<i32>,
        now: Instant,
    ) -> Option<Signal> {
        let signal = signal?;
        self.forwarded
            .iter()
            .find(|(s, at)| {
                *s as i32 == signal && started <= *at && now.duration_since(*at) < FORWARDED_WINDOW
            })
            .map(|(s, _)| *s)
    }

    pub(super) fn finished(&self) -> Option<Outcome> {
        if !self.stopping
            || !self.workers.is_empty()
            || !self.leftovers.is_empty()
            || !self.daemons.is_empty()
        {
            return None;
        }
        Some(match &self.gave_up {
            Some(r) => Outcome::GaveUp { reason: r.clone() },
            None => {
                tracing::info!("all workers stopped");
                Outcome::Stopped {
                    clean: !self.forced,
                }
            }
        })
    }
}
