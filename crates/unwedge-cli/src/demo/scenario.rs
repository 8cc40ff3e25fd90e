//! The traffic and the faults: the load client's mix, a writer and an invariant sampler of
//! our own, and the injected faults at planned times.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use unwedge_load::{LoadConfig, LoadReport, Progress, RequestSpec};
use unwedge_supervisor::{Control, Event, Handle, WorkerState};

use super::client::{request, Reply};
use super::table::n;
use super::EventLog;

/// The body of the `burn` PUT: the seed's cache bumps `curr_size` by its length before it
/// panics; two of them fill 900 of the default 1024 bytes with phantom entries.
const BURN_BODY: [u8; 450] = [b'b'; 450];

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Action {
    /// `POST /comments`: the seed's AddComment panics holding an `unwedge::Mutex` (poisons).
    Comments,
    /// `POST /poison`: a panic holding an `unwedge::Mutex` (poisons).
    Poison,
    /// `POST /tx-panic`: a panic inside a `Tx` update (rolled back).
    TxPanic,
    /// `PUT /bytecache/cache/burn`: the seed's ByteCache panic mid-update (rolled back).
    Burn,
    /// `GET /deadlock`: two `Mutex`es locked in opposite orders.
    Deadlock,
    /// `kill -9` of a ready worker.
    Kill9,
    /// `SIGSTOP` of a ready worker (frozen: only the heartbeat deadline can find it).
    Stop,
    /// SIGHUP-equivalent reload of the whole pool.
    Reload,
}

impl Action {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Action::Comments => {
                "POST /comments/comments (AddComment panics holding a Mutex: poisons)"
            }
            Action::Poison => "POST /poison (panic holding a Mutex: poisons)",
            Action::TxPanic => "POST /tx-panic (panic inside a Tx update)",
            Action::Burn => "PUT /bytecache/cache/burn (panic mid-update)",
            Action::Deadlock => "GET /deadlock (two Mutexes, opposite order)",
            Action::Kill9 => "kill -9 of a worker",
            Action::Stop => "SIGSTOP of a worker",
            Action::Reload => "reload (SIGHUP)",
        }
    }

    pub(crate) fn short(self) -> &'static str {
        match self {
            Action::Comments => "comments-poison",
            Action::Poison => "poison",
            Action::TxPanic => "tx-panic",
            Action::Burn => "burn",
            Action::Deadlock => "deadlock",
            Action::Kill9 => "kill -9",
            Action::Stop => "SIGSTOP",
            Action::Reload => "reload",
        }
    }

    /// Whether the injected request panics in the worker (500 and a report expected).
    pub(crate) fn panics(self) -> bool {
        matches!(
            self,
            Action::Comments | Action::Poison | Action::TxPanic | Action::Burn
        )
    }
}

/// A fault at an offset from the start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Planned {
    pub(crate) at: Duration,
    pub(crate) action: Action,
}

/// The demo's faults, spread over the run: panics that roll back (the seed's `burn` key and a
/// `Tx` panic, alternating, one per 2.5 s and at least three: under the default policy's
/// panic budget of 5 per 10 s per worker, so they do not crash the worker), the seed's
/// AddComment (poisons: graceful crash), a deadlock, and a `kill -9`.
pub(crate) fn demo_plan(d: Duration) -> Vec<Planned> {
    let mut plan = vec![
        Planned {
            at: d.mul_f64(0.2),
            action: Action::Comments,
        },
        Planned {
            at: d.mul_f64(0.4),
            action: Action::Deadlock,
        },
        Planned {
            at: d.mul_f64(0.6),
            action: Action::Kill9,
        },
    ];
    let k = ((d.as_secs_f64() / 2.5) as usize).max(3);
    for i in 0..k {
        plan.push(Planned {
            at: d.mul_f64((i as f64 + 0.3) / k as f64 * 0.9),
            action: if i % 2 == 0 {
                Action::Burn
            } else {
                Action::TxPanic
            },
        });
    }
    plan.sort_by_key(|p| p.at);
    plan
}

/// Random faults, a mean `every` apart, none in the last 3 s (or last fifth) of the run.
pub(crate) fn chaos_plan(d: Duration, every: Duration, seed: u64) -> Vec<Planned> {
    let mut rng = XorShift(seed | 1);
    let quiet = Duration::from_secs(3).min(d / 5);
    let end = d.saturating_sub(quiet);
    let table: &[(Action, u64)] = &[
        (Action::Poison, 2),
        (Action::Comments, 1),
        (Action::TxPanic, 2),
        (Action::Burn, 2),
        (Action::Kill9, 2),
        (Action::Stop, 1),
        (Action::Reload, 1),
        (Action::Deadlock, 1),
    ];
    let total: u64 = table.iter().map(|(_, w)| w).sum();
    let mut plan = Vec::new();
    let mut t = Duration::from_millis(300);
    loop {
        t += every.mul_f64(0.5 + rng.unit());
        if t >= end {
            break;
        }
        let mut pick = rng.next() % total;
        let action = table
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(a, _)| *a)
            .unwrap_or(Action::TxPanic);
        plan.push(Planned { at: t, action });
    }
    plan
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where the traffic goes.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// The supervisor (absent for the comparison service).
    pub(crate) handle: Option<Handle>,
    /// The supervisor's events (empty for the comparison service).
    pub(crate) events: EventLog,
    /// Configured worker count.
    pub(crate) workers: usize,
}

/// Waits (at most `limit`) until the pool is whole again: every poisoning panic sent so far
/// has made its worker leave (tainted, or exit 70), every slot is ready, nobody is draining
/// or hung. A fault aimed at a worker is injected then, so that it does not land on a worker
/// already on its way out (a deadlock on a tainted worker is not reported as a hang: that
/// worker is being replaced anyway).
async fn settled(target: &Target, handle: &Handle, poisons: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let gone: std::collections::HashSet<i32> = target
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Tainted { pid, .. } => Some(*pid),
                Event::WorkerExited {
                    pid,
                    code: Some(70),
                    ..
                } => Some(*pid),
                _ => None,
            })
            .collect();
        let s = handle.snapshot();
        let whole = gone.len() >= poisons
            && s.workers.len() == target.workers
            && s.workers
                .iter()
                .all(|w| w.state == WorkerState::Ready && w.generation == s.generation)
            && !s.reloading;
        if whole {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What an injected fault did.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) at: Instant,
    pub(crate) action: Action,
    /// The worker signalled, if any.
    pub(crate) pid: Option<i32>,
    /// The injected request's answer (`None`: no answer by the end of the run).
    pub(crate) reply: Option<Reply>,
    /// When the answer (or the failure) came.
    pub(crate) done_at: Option<Instant>,
    /// Not done (e.g. fewer than two workers ready, or no supervisor).
    pub(crate) skipped: Option<&'static str>,
}

/// Tallies of our own requests: unique-key writes and invariant samples.
#[derive(Debug, Default, Clone)]
pub(crate) struct Own {
    pub(crate) writes_ok: u64,
    pub(crate) writes_full: u64,
    pub(crate) writes_unexpected: u64,
    pub(crate) samples: u64,
    pub(crate) violations: u64,
    pub(crate) max_phantom: u64,
    pub(crate) first_violation: Option<Duration>,
    pub(crate) sample_unexpected: u64,
    /// Our requests that got no response, with when.
    pub(crate) failures: Vec<(Instant, Reply)>,
}

/// Everything one side saw.
#[derive(Debug, Clone)]
pub(crate) struct SideResult {
    pub(crate) start: Instant,
    pub(crate) load: LoadReport,
    pub(crate) progress: Vec<(Instant, Progress)>,
    pub(crate) own: Own,
    pub(crate) injected: Vec<Record>,
}

/// Both columns of the demo.
pub(crate) struct DemoSides {
    pub(crate) unwedge: SideResult,
    pub(crate) compare: Option<SideResult>,
}

fn load_config(addr: SocketAddr, d: Duration, concurrency: usize) -> Result<LoadConfig, String> {
    Ok(LoadConfig::from_addr(addr)
        .map_err(|e| e.to_string())?
        .request(RequestSpec::get("/").weight(12))
        .request(
            RequestSpec::new(http::Method::PUT, "/bytecache/cache/k")
                .body("v")
                .ok_status(201)
                .ok_status(409)
                .weight(3),
        )
        .request(RequestSpec::get("/bytecache/stats").weight(3))
        .concurrency(concurrency)
        .keep_alive(false)
        .timeout(Duration::from_secs(5))
        .duration(d))
}

/// What `run_demo` and `run_chaos` return when Ctrl-C stopped the run.
pub(crate) const INTERRUPTED: &str = "interrupted (Ctrl-C)";

/// What `run_demo` and `run_chaos` return when SIGTERM stopped the run.
pub(crate) const TERMINATED: &str = "terminated (SIGTERM)";

/// The live display on stdout: a bar over the run's duration and one status line per side
/// (indicatif; drawn only when stdout is a terminal), and the event lines printed above it
/// (always, terminal or not: they are part of the demo's output).
pub(crate) struct Screen {
    start: Instant,
    multi: MultiProgress,
    clock: ProgressBar,
    sides: Vec<ProgressBar>,
    /// Set by [`Screen::finish`]: no more updates (the drawer may still be running).
    finished: Mutex<bool>,
}

impl Screen {
    /// A bar for a run of `d`, and a status line for each of `sides` (their names).
    pub(crate) fn new(start: Instant, d: Duration, sides: &[&str]) -> Arc<Screen> {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let total = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let clock = multi.add(ProgressBar::new(total).with_style(clock_style()));
        clock.enable_steady_tick(Duration::from_millis(100));
        let width = sides.iter().map(|s| s.len()).max().unwrap_or(0);
        let sides = sides
            .iter()
            .map(|name| {
                multi.add(
                    ProgressBar::new(0)
                        .with_style(side_style())
                        .with_prefix(format!("{name:<width$}")),
                )
            })
            .collect();
        Arc::new(Screen {
            start,
            multi,
            clock,
            sides,
            finished: Mutex::new(false),
        })
    }

    /// Prints an event line (above the bar, when there is one).
    pub(crate) fn line(&self, text: &str) {
        let t = self.start.elapsed().as_secs_f64();
        // `suspend` runs the closure whether the bars are drawn or hidden (`println` would
        // print nothing when stdout is not a terminal).
        self.multi.suspend(|| out!("[{t:6.2}s] {text}"));
    }

    /// Moves the bar to the time elapsed and sets each side's status line.
    pub(crate) fn update(&self, statuses: Vec<String>) {
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        if *finished {
            return;
        }
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.clock
            .set_position(elapsed.min(self.clock.length().unwrap_or(0)));
        for (bar, status) in self.sides.iter().zip(statuses) {
            bar.set_message(status);
        }
    }

    /// Takes the bar and the status lines off the screen (the table follows).
    pub(crate) fn finish(&self) {
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::replace(&mut *finished, true) {
            return;
        }
        for bar in self.sides.iter().chain([&self.clock]) {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `⠹ [████████░░░░░░░░] 3.4s / 5s`.
fn clock_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} [{bar:40.cyan/blue}] {time}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("time", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(
                w,
                "{:.1}s / {:.0}s",
                s.pos() as f64 / 1000.0,
                s.len().unwrap_or(0) as f64 / 1000.0
            );
        })
        .progress_chars("█▉▊▋▌▍▎▏ ")
}

/// `  unwedge      19,507 ok · 0 errors · …`, cut to the terminal's width.
fn side_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Stops the task when dropped (the run ended early: an error or Ctrl-C).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on Ctrl-C (SIGINT) with [`INTERRUPTED`], on SIGTERM with [`TERMINATED`] (never
/// for a signal that cannot be watched).
async fn stop_signal() -> &'static str {
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = int => INTERRUPTED,
        () = term => TERMINATED,
    }
}

struct Live {
    progress: Arc<Mutex<Vec<(Instant, Progress)>>>,
    own: Arc<Mutex<Own>>,
}

impl Live {
    fn last(&self) -> (Progress, Own) {
        let p = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        let o = self.own.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (p, o)
    }
}

/// Runs the load, our writer and sampler, and the plan against one target.
async fn run_side(
    target: Target,
    start: Instant,
    d: Duration,
    concurrency: usize,
    plan: Vec<Planned>,
    screen: Option<(Arc<Screen>, &'static str)>,
    live: Live,
) -> Result<SideResult, String> {
    let running = unwedge_load::start(load_config(target.addr, d, concurrency)?)
        .map_err(|e| e.to_string())?;
    let end = start + d;
    let rx = running.progress();
    let recorder = {
        let log = live.progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let p = rx.borrow().clone();
                let done = p.done;
                // Failures only change around faults: a plateau of equal failure counts is
                // kept as its first and its latest sample (the step function the kill-window
                // attribution reads is the same), so a long soak's log stays small.
                let key = |p: &Progress| (p.refused, p.reset, p.timeout, p.other);
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let n = log.len();
                if n >= 2 && key(&log[n - 1].1) == key(&p) && key(&log[n - 2].1) == key(&p) {
                    log[n - 1] = (Instant::now(), p);
                } else {
                    log.push((Instant::now(), p));
                }
                drop(log);
                if done {
                    break;
                }
            }
        })
    };
    let writer = tokio::spawn(writer(target.addr, d, end, live.own.clone()));
    let sampler = tokio::spawn(sampler(target.addr, start, end, live.own.clone()));
    let mut records = Vec::new();
    let mut pending = Vec::new();
    let mut next_victim = 0usize;
    // Poisoning panics sent, and those that ended otherwise than with a 500: each of the
    // others takes its worker out (its 500 and its STATUS=tainted may take a while to come).
    let mut poison_sent = 0usize;
    let poison_excused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for p in plan {
        tokio::time::sleep_until((start + p.at).into()).await;
        if let (Some(h), Action::Deadlock | Action::Kill9 | Action::Stop) =
            (&target.handle, p.action)
        {
            let poisons = poison_sent
                .saturating_sub(poison_excused.load(std::sync::atomic::Ordering::SeqCst));
            settled(&target, h, poisons, Duration::from_secs(3)).await;
        }
        let at = Instant::now();
        let say = |s: &str| {
            if let Some((screen, side)) = &screen {
                screen.line(&format!("{side}: {s}"));
            }
        };
        let mut rec = Record {
            at,
            action: p.action,
            pid: None,
            reply: None,
            done_at: None,
            skipped: None,
        };
        match p.action {
            Action::Comments | Action::Poison | Action::TxPanic | Action::Burn => {
                let (method, path, body): (&str, &str, &[u8]) = match p.action {
                    Action::Comments => ("POST", "/comments/comments", b"Happens to all of us"),
                    Action::Poison => ("POST", "/poison", b""),
                    Action::TxPanic => ("POST", "/tx-panic", b""),
                    _ => ("PUT", "/bytecache/cache/burn", &BURN_BODY),
                };
                say(&format!("inject {}", p.action.label()));
                let addr = target.addr;
                let body = body.to_vec();
                let poisons = matches!(p.action, Action::Comments | Action::Poison)
                    .then(|| poison_excused.clone());
                if poisons.is_some() {
                    poison_sent += 1;
                }
                pending.push((
                    records.len(),
                    tokio::spawn(async move {
                        let r = request(addr, method, path, &body, Duration::from_secs(10)).await;
                        if let Some(n) = poisons.filter(|_| r.status() != Some(500)) {
                            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        (r, Instant::now())
                    }),
                ));
            }
            Action::Deadlock => {
                say(&format!("inject {}", p.action.label()));
                let addr = target.addr;
                let limit = d + Duration::from_secs(5);
                pending.push((
                    records.len(),
                    tokio::spawn(async move {
                        let r = request(addr, "GET", "/deadlock", b"", limit).await;
                        (r, Instant::now())
                    }),
                ));
            }
            Action::Kill9 | Action::Stop => match &target.handle {
                None => rec.skipped = Some("no worker processes to signal (one process)"),
                Some(h) => {
                    let s = h.snapshot();
                    let ready: Vec<_> = s
                        .workers
                        .iter()
                        .filter(|w| w.state == WorkerState::Ready && w.generation == s.generation)
                        .collect();
                    if ready.len() < 2 {
                        rec.skipped = Some("fewer than two workers ready");
                        say(&format!(
                            "skip {}: fewer than two workers ready",
                            p.action.short()
                        ));
                    } else {
                        let w = ready[next_victim % ready.len()];
                        next_victim += 1;
                        let sig = if p.action == Action::Kill9 {
                            Signal::SIGKILL
                        } else {
                            Signal::SIGSTOP
                        };
                        rec.pid = Some(w.pid);
                        let _ = kill(Pid::from_raw(w.pid), sig);
                        say(&format!("{} {} (pid {})", p.action.short(), w.id, w.pid));
                    }
                }
            },
            Action::Reload => match &target.handle {
                None => rec.skipped = Some("no supervisor"),
                Some(h) => {
                    h.send(Control::Reload);
                    say("reload (SIGHUP)");
                }
            },
        }
        records.push(rec);
    }
    let report = running.finish().await;
    let _ = recorder.await;
    let _ = writer.await;
    let _ = sampler.await;
    // Injected requests: the panics are answered (each has its own 10 s timeout); a deadlock
    // still waiting after a moment (the comparison's) never will be.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, mut task) in pending {
        let wait = if records[i].action == Action::Deadlock {
            Duration::ZERO
        } else {
            Duration::from_secs(11)
        };
        match tokio::time::timeout(wait, &mut task).await {
            Ok(Ok((r, t))) => {
                records[i].reply = Some(r);
                records[i].done_at = Some(t);
            }
            Ok(Err(_)) => {}
            Err(_) => task.abort(),
        }
    }
    let progress = std::mem::take(&mut *live.progress.lock().unwrap_or_else(|e| e.into_inner()));
    let own = live.own.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(SideResult {
        start,
        load: report,
        progress,
        own,
        injected: records,
    })
}

/// Unique-key writes of one byte, every 50 ms or slower: at most 500 in a run, so that a
/// healthy cache (1024 bytes per worker) accepts them all, and still has room for a `burn`
/// (450 bytes) to reach its panic.
async fn writer(addr: SocketAddr, d: Duration, end: Instant, own: Arc<Mutex<Own>>) {
    let every = (d / 500).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let path = format!("/bytecache/cache/w{n}");
        let r = request(addr, "PUT", &path, b"x", Duration::from_secs(5)).await;
        let mut o = own.lock().unwrap_or_else(|e| e.into_inner());
        match r.status() {
            Some(201) => o.writes_ok += 1,
            Some(507) => o.writes_full += 1,
            Some(_) => o.writes_unexpected += 1,
            None => o.failures.push((Instant::now(), r)),
        }
    }
}

/// `GET /bytecache/stats` every 50 ms: `curr_size` must equal the entries' sizes.
async fn sampler(addr: SocketAddr, start: Instant, end: Instant, own: Arc<Mutex<Own>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < end {
        tick.tick().await;
        let r = request(addr, "GET", "/bytecache/stats", b"", Duration::from_secs(5)).await;
        let mut o = own.lock().unwrap_or_else(|e| e.into_inner());
        match &r {
            Reply::Status(200, body) => {
                let v: serde_json::Value = match serde_json::from_str(body) {
                    Ok(v) => v,
                    Err(_) => {
                        o.sample_unexpected += 1;
                        continue;
                    }
                };
                let curr = v["curr_size"].as_u64();
                let actual = v["actual_size"].as_u64();
                match (curr, actual) {
                    (Some(c), Some(a)) => {
                        o.samples += 1;
                        if c != a {
                            o.violations += 1;
                            o.max_phantom = o.max_phantom.max(c.abs_diff(a));
                            o.first_violation.get_or_insert(start.elapsed());
                        }
                    }
                    _ => o.sample_unexpected += 1,
                }
            }
            Reply::Status(..) => o.sample_unexpected += 1,
            _ => o.failures.push((Instant::now(), r)),
        }
    }
}

/// One side's status line: the load client's answers so far, the restarts (supervised
/// side) and whether the invariant held.
fn fmt_progress(p: &Progress, o: &Own, restarts: Option<u64>) -> String {
    let mut s = format!(
        "{} ok · {} errors · {} no reply",
        n(p.ok),
        n(p.unexpected_statuses),
        n(p.refused + p.reset + p.timeout + p.other),
    );
    if let Some(r) = restarts {
        let _ = write!(s, " · {} restart{}", n(r), if r == 1 { "" } else { "s" });
    }
    if o.violations > 0 {
        let _ = write!(s, " · cache CORRUPT (+{} B)", n(o.max_phantom));
    } else {
        s.push_str(" · cache consistent");
    }
    s
}

/// Restarts so far, every reason.
fn restarts(handle: &Handle) -> u64 {
    handle.snapshot().counters.restarts.values().sum()
}

/// Prints the supervisor's notable events as they happen.
fn event_printer(handle: &Handle, screen: Arc<Screen>) -> tokio::task::JoinHandle<()> {
    let mut rx = handle.subscribe();
    tokio::spawn(async move {
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            };
            let text = match e {
                Event::Hung {
                    worker,
                    pid,
                    kind,
                    detail,
                    stopping,
                } => {
                    // The worker's own STATUS= line says why (a deadlock names both tasks).
                    let why = if kind == unwedge_supervisor::HangKind::Wedged {
                        format!(": {}", crate::observe::hang_reason(&detail, 160))
                    } else {
                        String::new()
                    };
                    let what = if stopping {
                        "while stopping; killing it"
                    } else {
                        "replacing it"
                    };
                    format!(
                        "supervisor: {worker} (pid {pid}) hung ({}){why}; {what} (SIGQUIT, SIGKILL after the grace)",
                        kind.as_str()
                    )
                }
                Event::Tainted { worker, pid, .. } => {
                    format!("supervisor: {worker} (pid {pid}) tainted: replacement started, old one drains")
                }
                Event::WorkerExited {
                    worker,
                    pid,
                    code,
                    signal,
                    requested,
                    ..
                } => {
                    let how = match (code, signal) {
                        (Some(c), _) => format!("exit status {c}"),
                        (_, Some(s)) => format!("signal {s}"),
                        _ => "ended".into(),
                    };
                    format!(
                        "supervisor: {worker} (pid {pid}) exited: {how}{}",
                        if requested { " (asked to)" } else { "" }
                    )
                }
                Event::WorkerReady {
                    worker,
                    pid,
                    crash_to_ready: Some(c),
                    ..
                } => format!(
                    "supervisor: {worker} (pid {pid}) replacement ready, {:.1} ms after the crash",
                    c.as_secs_f64() * 1000.0
                ),
                Event::Reloaded { generation, .. } => {
                    format!("supervisor: reloaded, generation {generation} serves")
                }
                Event::GaveUp { reason } => format!("supervisor: GAVE UP: {reason}"),
                _ => continue,
            };
            screen.line(&text);
        }
    })
}

fn live_parts() -> Live {
    Live {
        progress: Arc::new(Mutex::new(Vec::new())),
        own: Arc::new(Mutex::new(Own::default())),
    }
}

fn clone_live(l: &Live) -> Live {
    Live {
        progress: l.progress.clone(),
        own: l.own.clone(),
    }
}

/// The demo: both sides at once, the same plan (`kill -9` only where there are workers).
/// Ctrl-C or SIGTERM ends it early with [`INTERRUPTED`] or [`TERMINATED`].
pub(crate) async fn run_demo(
    target: Target,
    compare: Option<SocketAddr>,
    d: Duration,
    concurrency: usize,
    plan: Vec<Planned>,
) -> Result<DemoSides, String> {
    let start = Instant::now();
    let names: &[&str] = if compare.is_some() {
        &["unwedge", "catch-panic"]
    } else {
        &["unwedge"]
    };
    let screen = Screen::new(start, d, names);
    let _printer = target
        .handle
        .as_ref()
        .map(|h| AbortOnDrop(event_printer(h, screen.clone())));
    let (lu, lc) = (live_parts(), live_parts());
    let _drawer = {
        let (lu, lc) = (clone_live(&lu), clone_live(&lc));
        let screen = screen.clone();
        let handle = target.handle.clone();
        let has_cmp = compare.is_some();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let (pu, ou) = lu.last();
                let mut lines = vec![fmt_progress(&pu, &ou, handle.as_ref().map(restarts))];
                if has_cmp {
                    let (pc, oc) = lc.last();
                    lines.push(fmt_progress(&pc, &oc, None));
                }
                screen.update(lines);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    };
    let cmp_plan: Vec<Planned> = plan.clone();
    let u = run_side(
        target.clone(),
        start,
        d,
        concurrency,
        plan,
        Some((screen.clone(), "unwedge")),
        lu,
    );
    let c = async {
        match compare {
            None => Ok(None),
            Some(addr) => run_side(
                Target {
                    addr,
                    handle: None,
                    events: Arc::new(Mutex::new(Vec::new())),
                    workers: 1,
                },
                start,
                d,
                concurrency,
                cmp_plan,
                Some((screen.clone(), "catch-panic")),
                lc,
            )
            .await
            .map(Some),
        }
    };
    let both = async { tokio::join!(u, c) };
    let (u, c) = tokio::select! {
        r = both => r,
        why = stop_signal() => {
            screen.finish();
            return Err(why.into());
        }
    };
    screen.finish();
    Ok(DemoSides {
        unwedge: u?,
        compare: c?,
    })
}

/// The soak: one side, the random plan, the bar on terminals. Ctrl-C or SIGTERM ends it early
/// with [`INTERRUPTED`] or [`TERMINATED`].
pub(crate) async fn run_chaos(
    target: Target,
    d: Duration,
    concurrency: usize,
    plan: Vec<Planned>,
) -> Result<SideResult, String> {
    let start = Instant::now();
    let screen = Screen::new(start, d, &["chaos"]);
    let _printer = target
        .handle
        .as_ref()
        .map(|h| AbortOnDrop(event_printer(h, screen.clone())));
    let lu = live_parts();
    let _drawer = {
        let lu = clone_live(&lu);
        let screen = screen.clone();
        let handle = target.handle.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let (pu, ou) = lu.last();
                screen.update(vec![fmt_progress(&pu, &ou, handle.as_ref().map(restarts))]);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    };
    let side = run_side(
        target,
        start,
        d,
        concurrency,
        plan,
        Some((screen.clone(), "chaos")),
        lu,
    );
    let r = tokio::select! {
        r = side => r,
        why = stop_signal() => Err(why.into()),
    };
    screen.finish();
    r
}
