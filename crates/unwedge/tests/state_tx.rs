//! `unwedge::Tx`: the seed's ByteCache invariant under random panics (proptest), no lost
//! updates under concurrency, imbl maps, panicking `Clone`, nested updates, `try_update`.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use proptest::prelude::*;
use unwedge::Tx;

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
