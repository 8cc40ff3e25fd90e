//! `unwedge::Tx`: the seed's ByteCache invariant under random panics (proptest), no lost
//! updates under concurrency, imbl maps, panicking `Clone`, nested updates, `try_update`,
//! and the borrowed read path `Tx::load` / `Snapshot`.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use unwedge::{Snapshot, Tx};

mod support;

/// The seed's ByteCache (Go original in shared/seed), as plain data behind a `Tx`.
#[derive(Clone, Debug, Default)]
struct ByteCache {
    max_size: usize,
    curr_size: usize,
    entries: HashMap<String, Vec<u8>>,
}

/// Where inside `update` a put panics, if it does.
#[derive(Clone, Copy, Debug)]
enum PanicAt {
    Never,
    BeforeAnything,
    AfterSizeBump,
    AfterInsert,
}

/// The seed's `Put`, with a panic injected at `at`. Returns whether the entry was stored.
fn put(cache: &Tx<ByteCache>, key: &str, data: &[u8], at: PanicAt) -> bool {
    cache.update(|c| {
        if matches!(at, PanicAt::BeforeAnything) {
            panic!("injected before anything");
        }
        if c.entries.contains_key(key) || c.curr_size + data.len() > c.max_size {
            return false;
        }
        c.curr_size += data.len();
        if matches!(at, PanicAt::AfterSizeBump) {
            panic!("some programmers just want to watch the world burn");
        }
        c.entries.insert(key.to_owned(), data.to_vec());
        if matches!(at, PanicAt::AfterInsert) {
            panic!("injected after insert");
        }
        true
    })
}

fn panic_at() -> impl Strategy<Value = PanicAt> {
    prop_oneof![
        4 => Just(PanicAt::Never),
        1 => Just(PanicAt::BeforeAnything),
        1 => Just(PanicAt::AfterSizeBump),
        1 => Just(PanicAt::AfterInsert),
    ]
}

fn silence_panics() {
    // Hundreds of expected panics; keep the output readable.
    std::panic::set_hook(Box::new(|_| {}));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bytecache_invariant_survives_panics_anywhere_in_update(
        max_size in 1usize..64,
        ops in prop::collection::vec(
            ("[a-e]", prop::collection::vec(any::<u8>(), 0..8), panic_at()),
            1..40,
        ),
    ) {
        silence_panics();
        let cache = Tx::named("bytecache", ByteCache { max_size, ..Default::default() });
        // The same puts applied to a plain map, skipping the panicking ones: what the cache
        // must hold if every panicking put was rolled back completely.
        let mut model: HashMap<String, Vec<u8>> = HashMap::new();
        let mut panics = 0;
        for (key, data, at) in &ops {
            let outcome = catch_unwind(AssertUnwindSafe(|| put(&cache, key, data, *at)));
            let model_size: usize = model.values().map(Vec::len).sum();
            let fits = !model.contains_key(key) && model_size + data.len() <= max_size;
            match (outcome, at) {
                (Ok(stored), PanicAt::Never) => {
                    prop_assert_eq!(stored, fits);
                    if fits { model.insert(key.clone(), data.clone()); }
                }
                (Ok(stored), _) => {
                    // The put returned before reaching its panic point.
                    prop_assert!(!stored && !fits);
                }
                (Err(_), _) => panics += 1,
            }
            let snapshot = cache.read();
            let actual: usize = snapshot.entries.values().map(Vec::len).sum();
            prop_assert_eq!(snapshot.curr_size, actual, "curr_size drifted from the entries");
            prop_assert!(snapshot.curr_size <= max_size);
            prop_assert_eq!(&snapshot.entries, &model);
        }
        prop_assert_eq!(cache.rollbacks(), panics);
    }
}

#[test]
fn the_seed_scenario_keeps_curr_size_right() {
    silence_panics();
    let cache = Tx::named(
        "bytecache",
        ByteCache {
            max_size: 5,
            ..Default::default()
        },
    );
    assert!(put(&cache, "watch", &[0], PanicAt::Never));
    assert!(put(&cache, "it", &[0], PanicAt::Never));
    let burned = catch_unwind(AssertUnwindSafe(|| {
        put(&cache, "burn", &[0, 0, 0], PanicAt::AfterSizeBump)
    }));
    assert!(burned.is_err());
    let c = cache.read();
    assert_eq!(c.curr_size, 2, "the Go original ends with 5 here");
    assert_eq!(c.entries.len(), 2);
    // And the cache still accepts writes (the original refuses them forever).
    assert!(put(&cache, "more", &[0, 0, 0], PanicAt::Never));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_from_many_tasks_lose_nothing() {
    const TASKS: u64 = 16;
    const EACH: u64 = 500;
    let counter = Arc::new(Tx::named("counter", (0u64, Vec::<u64>::new())));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let counter = counter.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    counter.update(|(n, log)| {
                        *n += 1;
                        if i % 100 == 0 {
                            log.push(t);
                        }
                    });
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("updates finished");
    let (n, log) = &*counter.read();
    assert_eq!(*n, TASKS * EACH);
    assert_eq!(log.len() as u64, TASKS * EACH / 100);
    assert_eq!(counter.updates(), TASKS * EACH);
    assert_eq!(counter.rollbacks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imbl_map_updates_are_cheap_copies_and_roll_back() {
    silence_panics();
    let sessions: Arc<Tx<imbl::HashMap<u64, String>>> = Arc::new(Tx::named(
        "sessions",
        (0..10_000).map(|i| (i, format!("user{i}"))).collect(),
    ));
    let before = sessions.read();

    let s = sessions.clone();
    let burned = tokio::spawn(async move {
        s.update(|m| {
            m.remove(&1);
            m.insert(99_999, "half".into());
            panic!("mid-update");
        })
    })
    .await;
    assert!(burned.unwrap_err().is_panic());
    assert_eq!(sessions.read().len(), 10_000);
    assert!(sessions.read().contains_key(&1));
    assert!(!sessions.read().contains_key(&99_999));

    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let s = sessions.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    s.update(|m| m.insert(100_000 + t * 1000 + i, format!("t{t}")));
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(sessions.read().len(), 10_000 + 800);
    // The first snapshot is unchanged: readers keep a consistent version.
    assert_eq!(before.len(), 10_000);
    assert_eq!(sessions.rollbacks(), 1);
}

/// A value whose `Clone` panics while `armed`.
#[derive(Debug)]
struct Bomb {
    armed: Arc<AtomicBool>,
    value: u32,
}

impl Clone for Bomb {
    fn clone(&self) -> Self {
        if self.armed.load(Ordering::SeqCst) {
            panic!("Clone exploded");
        }
        Bomb {
            armed: self.armed.clone(),
            value: self.value,
        }
    }
}

#[test]
fn panicking_clone_leaves_state_untouched_and_counts_a_rollback() {
    silence_panics();
    let armed = Arc::new(AtomicBool::new(true));
    let tx = Tx::named(
        "bomb",
        Bomb {
            armed: armed.clone(),
            value: 1,
        },
    );
    let ran = AtomicBool::new(false);
    let r = catch_unwind(AssertUnwindSafe(|| {
        tx.update(|b| {
            ran.store(true, Ordering::SeqCst);
            b.value = 2;
        })
    }));
    let msg = *r.unwrap_err().downcast::<&str>().unwrap();
    assert_eq!(msg, "Clone exploded");
    assert!(
        !ran.load(Ordering::SeqCst),
        "closure must not run on a failed copy"
    );
    assert_eq!(tx.read().value, 1);
    assert_eq!(tx.rollbacks(), 1);
    assert_eq!(tx.updates(), 0);

    // The Tx is not wedged by it.
    armed.store(false, Ordering::SeqCst);
    tx.update(|b| b.value = 3);
    assert_eq!(tx.read().value, 3);
}

/// A value whose `Drop` checks an invariant and panics when it does not hold, as a debug
/// assertion in a destructor does.
#[derive(Clone)]
struct Checked {
    /// Must be even between updates.
    even: u64,
    dropped_odd_ok: Arc<AtomicBool>,
}

impl Drop for Checked {
    fn drop(&mut self) {
        if self.even % 2 == 1 && !self.dropped_odd_ok.load(Ordering::SeqCst) {
            panic!("Checked dropped with an odd value");
        }
    }
}

/// Runs the calling test again in a child process with `CHILD_VAR` set, for what would kill the
/// test's own process if it went wrong; returns the child's exit status and stdout.
fn in_child(test: &str) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("UNWEDGE_TEST_TX_CHILD", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("re-running the test binary");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_copy_whose_drop_panics_after_a_panicking_update_fails_the_update_not_the_process() {
    const TEST: &str =
        "a_copy_whose_drop_panics_after_a_panicking_update_fails_the_update_not_the_process";
    if std::env::var_os("UNWEDGE_TEST_TX_CHILD").is_none() {
        let (status, stdout) = in_child(TEST);
        assert!(
            status.success() && stdout.contains("survived both panics"),
            "the process must survive a panicking Drop of the rolled-back copy: {status}, stdout:\n{stdout}"
        );
        return;
    }
    silence_panics();
    let ok = Arc::new(AtomicBool::new(false));
    let tx = Tx::named(
        "checked",
        Checked {
            even: 0,
            dropped_odd_ok: ok.clone(),
        },
    );
    // The update leaves the copy odd, then panics: the copy's Drop panics as well.
    let r = catch_unwind(AssertUnwindSafe(|| {
        tx.update(|c| {
            c.even += 1;
            panic!("the handler's panic");
        })
    }));
    assert!(r.is_err());
    assert_eq!(tx.read().even, 0, "the state is the one before the update");
    assert_eq!(tx.rollbacks(), 1);
    assert_eq!(tx.updates(), 0);
    tx.update(|c| c.even += 2);
    assert_eq!(tx.read().even, 2);
    println!("survived both panics");
    ok.store(true, Ordering::SeqCst);
}

/// A value whose `Drop` updates its own `Tx` (a cache that records its own evictions, say),
/// once armed.
#[derive(Clone)]
struct SelfUpdating {
    n: i64,
    armed: bool,
}

static SELF_UPDATING: std::sync::OnceLock<Tx<SelfUpdating>> = std::sync::OnceLock::new();

impl Drop for SelfUpdating {
    fn drop(&mut self) {
        if self.armed {
            if let Some(tx) = SELF_UPDATING.get() {
                tx.update(|s| s.n += 100);
            }
        }
    }
}

/// The half-updated copy of a panicking update is dropped while its thread still holds the
/// `Tx`: a `Drop` that updates the same `Tx` panics as a nested update (the update fails, the
/// state is untouched, the next update runs) instead of waiting forever for the update it is
/// part of.
#[test]
fn a_copy_whose_drop_updates_its_own_tx_fails_as_a_nested_update_not_a_hang() {
    silence_panics();
    let tx = SELF_UPDATING
        .get_or_init(|| Tx::named("self-updating", SelfUpdating { n: 0, armed: false }));
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(|| {
            tx.update(|s| {
                s.n += 1;
                s.armed = true;
                panic!("the handler's panic");
            })
        }));
        let message = r.err().and_then(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        });
        done.send(message).unwrap();
    });
    let message = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the update waited for itself: a copy's Drop updating its Tx hung");
    let message = message.expect("the update must fail with a panic");
    assert!(
        message.contains("nested Tx::update on `self-updating`"),
        "{message}"
    );
    assert_eq!(tx.read().n, 0, "the state is the one before the update");
    assert_eq!(tx.rollbacks(), 1);
    tx.update(|s| s.n += 2);
    assert_eq!(tx.read().n, 2);
}

#[test]
fn an_old_version_whose_drop_panics_does_not_undo_or_uncount_the_commit() {
    silence_panics();
    let ok = Arc::new(AtomicBool::new(true));
    let tx = Tx::named(
        "checked",
        Checked {
            even: 1,
            dropped_odd_ok: ok.clone(),
        },
    );
    ok.store(false, Ordering::SeqCst);
    // The old version (odd, not held by any reader) panics when the commit drops it.
    let r = catch_unwind(AssertUnwindSafe(|| tx.update(|c| c.even = 4)));
    assert!(r.is_err(), "the old version's Drop panics");
    assert_eq!(tx.read().even, 4, "the update is committed");
    assert_eq!(tx.updates(), 1, "and counted");
    assert_eq!(tx.rollbacks(), 0, "and not counted as rolled back");
    // Not left marked as inside an update: a later update neither panics as nested nor waits.
    tx.update(|c| c.even = 6);
    assert_eq!(tx.read().even, 6);
    ok.store(true, Ordering::SeqCst);
}

#[test]
fn nested_update_panics_clearly_instead_of_deadlocking() {
    silence_panics();
    let tx = Arc::new(Tx::named("orders", 0u32));
    let (done_tx, done_rx) = mpsc::channel();
    let inner = tx.clone();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(|| {
            inner.update(|n| {
                *n += 1;
                inner.update(|m| *m += 1);
            })
        }));
        let _ = done_tx.send(r.map_err(|p| *p.downcast::<String>().unwrap()));
    });
    let outcome = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("nested update deadlocked instead of panicking");
    let msg = outcome.unwrap_err();
    assert!(msg.contains("nested") && msg.contains("`orders`"), "{msg}");
    assert_eq!(*tx.read(), 0, "the outer update rolled back too");
    tx.update(|n| *n = 5);
    assert_eq!(*tx.read(), 5);
}

/// Two threads nest updates of the same two `Tx`s in opposite orders (`A` then `B`, `B` then
/// `A`), each holding its first when it asks for its second: the wait that closes the cycle
/// panics, naming both, its outer update rolls back, and the other thread's goes through.
#[test]
fn opposite_nested_updates_of_two_tx_panic_instead_of_deadlocking() {
    silence_panics();
    let a = Arc::new(Tx::named("accounts", 0u32));
    let b = Arc::new(Tx::named("ledger", 0u32));
    let both_hold = Arc::new(std::sync::Barrier::new(2));
    let (done_tx, done_rx) = mpsc::channel();
    for (name, first, second) in [("a-then-b", &a, &b), ("b-then-a", &b, &a)] {
        let (first, second, both_hold, done) = (
            first.clone(),
            second.clone(),
            both_hold.clone(),
            done_tx.clone(),
        );
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    first.update(|n| {
                        *n += 1;
                        both_hold.wait();
                        second.update(|m| *m += 10);
                    })
                }));
                let _ = done.send((name, r.map_err(|p| *p.downcast::<String>().unwrap())));
            })
            .unwrap();
    }
    let mut outcomes: Vec<_> = (0..2)
        .map(|_| {
            done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the two updates deadlocked")
        })
        .collect();
    outcomes.sort_by_key(|(_, r)| r.is_ok());
    let [(broken, Err(msg)), (went_on, Ok(()))] = &outcomes[..] else {
        panic!("exactly one update must panic: {outcomes:?}");
    };
    assert!(msg.contains("deadlock"), "{msg}");
    assert!(
        msg.contains("`accounts`") && msg.contains("`ledger`"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("`{broken} #")) && msg.contains(&format!("`{went_on} #")),
        "{msg}"
    );
    // The panicking thread's outer update rolled back; the other's published both.
    let (rolled_back, published) = match *broken {
        "a-then-b" => (&a, &b),
        _ => (&b, &a),
    };
    assert_eq!(
        *rolled_back.read(),
        10,
        "only the other thread's inner update"
    );
    assert_eq!(*published.read(), 1, "the other thread's outer update");
    assert_eq!(rolled_back.rollbacks(), 1);
    // Neither is left locked.
    a.update(|n| *n += 100);
    b.update(|n| *n += 100);
}

/// Nesting the same two `Tx`s in one order from many threads at once waits, and never reads
/// as a deadlock.
#[test]
fn nested_updates_in_one_order_from_many_threads_never_panic() {
    let a = Arc::new(Tx::named("a", 0u64));
    let b = Arc::new(Tx::named("b", 0u64));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                for _ in 0..2_000 {
                    a.update(|x| {
                        *x += 1;
                        b.update(|y| *y += 1);
                    });
                    // And `b` alone, so that a thread waits for `b` while another holds `a`
                    // and waits for `b` too.
                    b.update(|y| *y += 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no update panics");
    }
    assert_eq!(*a.read(), 8_000);
    assert_eq!(*b.read(), 16_000);
}

#[test]
fn try_update_err_rolls_back() {
    let balance = Tx::named("balance", vec![10i64]);
    let r: Result<(), &str> = balance.try_update(|b| {
        b[0] -= 20;
        b.push(-1);
        Err("insufficient funds")
    });
    assert_eq!(r, Err("insufficient funds"));
    assert_eq!(*balance.read(), [10]);
    assert_eq!(balance.rollbacks(), 1);
    assert_eq!(balance.updates(), 0);
    assert_eq!(
        balance.try_update(|b| Ok::<_, ()>(std::mem::replace(&mut b[0], 5))),
        Ok(10)
    );
    assert_eq!(*balance.read(), [5]);
    assert_eq!(balance.updates(), 1);
}

// ---- `Tx::load` and `Snapshot`: the borrowed read path -------------------------------------

#[test]
fn load_sees_each_published_update_and_no_rolled_back_one() {
    let tx = Tx::named("counter", 0u64);
    assert_eq!(*tx.load(), 0);
    for i in 1..=1_000u64 {
        tx.update(|n| *n = i);
        assert_eq!(*tx.load(), i, "load missed update {i}");
        let r: Result<(), ()> = tx.try_update(|n| {
            *n = u64::MAX;
            Err(())
        });
        assert!(r.is_err());
        assert_eq!(*tx.load(), i, "load saw a rolled-back update");
    }
    assert_eq!(tx.updates(), 1_000);
}

#[test]
fn a_snapshot_taken_before_an_update_keeps_the_old_value() {
    let tx = Tx::named("list", vec![1, 2]);
    let before: Snapshot<Vec<i32>> = tx.load();
    tx.update(|v| v.push(3));
    tx.update(|v| v[0] = 10);
    assert_eq!(*before, [1, 2]);
    assert_eq!(format!("{before:?}"), "[1, 2]");
    assert_eq!(*tx.load(), [10, 2, 3]);
    assert_eq!(*tx.read(), [10, 2, 3]);
}

/// A value that counts its live instances, so that a leaked or early-freed version shows.
#[derive(Debug)]
struct Tracked {
    version: u64,
    live: Arc<AtomicI64>,
}

impl Tracked {
    fn new(live: &Arc<AtomicI64>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Tracked {
            version: 0,
            live: live.clone(),
        }
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        self.live.fetch_add(1, Ordering::SeqCst);
        Tracked {
            version: self.version,
            live: self.live.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn a_hundred_live_snapshots_of_a_hundred_versions_stay_correct() {
    // arc-swap gives each thread a few debt slots (8 today); the other snapshots fall back to
    // a reference count. Every one must keep its own version alive and unchanged.
    const N: u64 = 100;
    let live = Arc::new(AtomicI64::new(0));
    let tx = Tx::named("versions", Tracked::new(&live));
    let mut snapshots = Vec::new();
    for v in 1..=N {
        tx.update(|t| t.version = v);
        snapshots.push(tx.load());
    }
    tx.update(|t| t.version = N + 1); // the writer pays the debts of the last versions
    assert_eq!(
        live.load(Ordering::SeqCst),
        N as i64 + 1,
        "a version was freed early or leaked"
    );
    for (i, s) in snapshots.iter().enumerate() {
        assert_eq!(s.version, i as u64 + 1, "snapshot {i} changed");
    }
    // Drop every other one, then check the rest again (slots reused, fallbacks released).
    let mut kept = Vec::new();
    for (i, s) in snapshots.into_iter().enumerate() {
        if i % 2 == 1 {
            kept.push((i as u64 + 1, s));
        }
    }
    for _ in 0..20 {
        assert_eq!(tx.load().version, N + 1);
    }
    for (v, s) in &kept {
        assert_eq!(s.version, *v);
    }
    assert_eq!(live.load(Ordering::SeqCst), kept.len() as i64 + 1);
    drop(kept);
    assert_eq!(
        live.load(Ordering::SeqCst),
        1,
        "a dropped snapshot leaked its version"
    );
    drop(tx);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn into_arc_outlives_later_updates() {
    let tx = Tx::named("name", String::from("v1"));
    let kept = tx.load().into_arc();
    assert_eq!(Arc::strong_count(&kept), 2, "the Tx and the kept Arc");
    for i in 2..=50 {
        tx.update(|s| *s = format!("v{i}"));
    }
    assert_eq!(*kept, "v1");
    assert_eq!(
        Arc::strong_count(&kept),
        1,
        "only the kept Arc holds v1 now"
    );
    // Many at once, beyond the debt slots, each an independent owner.
    let guards: Vec<_> = (0..20).map(|_| tx.load()).collect();
    let owned: Vec<Arc<String>> = guards.into_iter().map(Snapshot::into_arc).collect();
    tx.update(|s| *s = "last".into());
    assert!(owned.iter().all(|s| **s == "v50"));
    assert_eq!(Arc::strong_count(&owned[0]), owned.len());
}

/// Every update changes all fields together; a snapshot in which they disagree is torn.
#[derive(Clone, Debug, Default)]
struct Ledger {
    version: u64,
    total: u64,
    entries: Vec<u64>,
}

impl Ledger {
    fn check(&self) {
        assert_eq!(self.entries.len() as u64, self.version, "torn: {self:?}");
        assert_eq!(
            self.entries.iter().sum::<u64>(),
            self.total,
            "torn: {self:?}"
        );
    }
}

#[test]
fn load_is_consistent_under_a_concurrent_writer() {
    const UPDATES: u64 = 20_000;
    let tx = Arc::new(Tx::named("ledger", Ledger::default()));
    let writer = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for i in 1..=UPDATES {
                tx.update(|l| {
                    l.version += 1;
                    l.entries.push(i);
                    l.total += i;
                    if l.entries.len() > 64 {
                        // Keep the clone cheap: fold the oldest entry into the next one.
                        let first = l.entries.remove(0);
                        l.entries[0] += first;
                        l.version -= 1;
                    }
                });
            }
        })
    };
    let (done_tx, done_rx) = mpsc::channel();
    let reader = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            // Hold the last 12 snapshots (more than the debt slots) and re-check them: a
            // version must not change while held, whichever path the load took.
            let mut held: VecDeque<(Snapshot<Ledger>, u64, u64)> = VecDeque::new();
            let mut loads = 0u64;
            let mut last_total = 0;
            loop {
                let s = tx.load();
                s.check();
                assert!(s.total >= last_total, "went back in time");
                last_total = s.total;
                loads += 1;
                let done = s.total == UPDATES * (UPDATES + 1) / 2;
                let (v, t) = (s.version, s.total);
                held.push_back((s, v, t));
                if held.len() > 12 {
                    held.pop_front();
                }
                for (s, v, t) in &held {
                    assert_eq!((s.version, s.total), (*v, *t), "a held snapshot changed");
                }
                if done {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the writer did not finish in 60 s"
                );
            }
            let _ = done_tx.send(loads);
        })
    };
    let loads = done_rx
        .recv_timeout(Duration::from_secs(90))
        .expect("reader finished (a failed assertion shows in its panic)");
    reader.join().unwrap();
    writer.join().unwrap();
    assert!(loads > 1);
    tx.load().check();
    assert_eq!(tx.updates(), UPDATES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_held_across_await_stays_valid_on_any_worker() {
    fn send_and_sync<T: Send + Sync>(_: &T) {}
    let tx = Arc::new(Tx::named("config", 1u64));
    let s = tx.load();
    send_and_sync(&s);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let tx = tx.clone();
            // tokio::spawn requires a Send future: this one holds a Snapshot across `.await`.
            tokio::spawn(async move {
                let s = tx.load();
                let seen = *s;
                for _ in 0..50 {
                    tokio::task::yield_now().await;
                    assert_eq!(*s, seen, "a held snapshot changed");
                }
                drop(s);
                *tx.load()
            })
        })
        .collect();
    for i in 2..=100 {
        tx.update(|n| *n = i);
        tokio::task::yield_now().await;
    }
    for t in tasks {
        let last = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("task finished")
            .unwrap();
        assert!((1..=100).contains(&last));
    }
    assert_eq!(*s, 1);
    assert_eq!(*tx.load(), 100);
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Without unwedge's panic hook (an app's own hook replaced it), caught panics in updates on
/// a thread no request or task of unwedge's runs on: what each rollback records stays bounded,
/// however many there are.
#[test]
fn rollbacks_recorded_without_the_hook_stay_bounded() {
    support::own_process!();
    std::panic::set_hook(Box::new(|_| {}));
    let txs: Vec<Tx<u32>> = (0..200_000)
        .map(|i| Tx::named(format!("tx-{i}"), 0))
        .collect();
    let roll_back_all = || {
        for tx in &txs {
            let caught = catch_unwind(AssertUnwindSafe(|| tx.update(|_| panic!("rolled back"))));
            assert!(caught.is_err());
        }
    };
    // Once to reach the allocator's steady state, then twice more: each rollback recorded
    // kept 16 bytes (a handle on its `Tx`'s name), 6.4 MB over the two.
    roll_back_all();
    let before = rss();
    roll_back_all();
    roll_back_all();
    let grown = rss().saturating_sub(before);
    let _ = std::panic::take_hook();
    assert!(
        grown < 1 << 20,
        "memory grew by {grown} bytes over 400 000 rollbacks"
    );
    assert_eq!(txs[7].rollbacks(), 3);
}

/// A writer waiting for an update that does not end (here the update waits for a channel; in
/// the wild, for another thread updating the same `Tx`) turns the process wedged after the
/// wait limit, naming the `Tx`, as a `Mutex` wait does; the wedge clears when the wait ends.
/// It hung with the health `Healthy` before (review).
#[test]
fn a_tx_writer_waiting_past_the_limit_is_wedged_then_clears() {
    support::own_process!();
    unwedge::sync::set_default_wait_limit(Duration::from_millis(300));
    let tx = Arc::new(Tx::named("ledger", 0u64));
    let (release, released) = mpsc::channel::<()>();
    let (inside, is_inside) = mpsc::channel::<()>();
    let holder = {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("holder".into())
            .spawn(move || {
                tx.update(|n| {
                    inside.send(()).unwrap();
                    released.recv().unwrap();
                    *n += 1;
                })
            })
            .unwrap()
    };
    is_inside.recv().unwrap();
    let waiter = {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("waiter".into())
            .spawn(move || tx.update(|n| *n += 10))
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let h = unwedge::health();
        if h.state == unwedge::HealthState::Wedged {
            break h.reason.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "never wedged: {h:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(reason.contains("Tx `ledger`"), "{reason}");
    assert!(reason.contains("thread `waiter #"), "{reason}");
    assert!(reason.contains("in thread `holder #"), "{reason}");
    release.send(()).unwrap();
    holder.join().unwrap();
    waiter.join().unwrap();
    assert_eq!(*tx.read(), 11);
    assert_eq!(unwedge::health().state, unwedge::HealthState::Healthy);
}
