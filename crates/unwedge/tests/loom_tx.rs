//! Loom model of `Tx`'s writer lock and of the protocol around its publish step (copy, update,
//! publish or roll back, counters): two writers and a reader.
//!
//! What it does not check is the publish itself as it runs in a normal build: there the published
//! pointer is an arc-swap `ArcSwap`, whose lock-free load and store loom cannot see inside;
//! under this model it is a loom `RwLock<Arc<T>>` standing in for it (see the `facade` module
//! in `src/state.rs`). arc-swap's own tests cover arc-swap.
//!
//! Run with (its own target dir, so the shared one is not rebuilt with other flags):
//!
//! ```text
//! RUSTFLAGS="--cfg unwedge_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p unwedge --test loom_tx --release
//! ```
//!
//! Not `--cfg loom`: tokio, a dependency, changes (and fails to build) under that cfg.
//! Under `unwedge_loom`, `Tx` uses loom's mutex, atomics and thread-locals, and the `RwLock`
//! above for its published pointer; without the cfg this file compiles to nothing.
#![cfg(unwedge_loom)]

use loom::sync::Arc;
use loom::thread;
use unwedge::Tx;

/// Two fields that every update changes together: a reader seeing them differ would have
/// seen a half-published state.
#[derive(Clone, Debug, Default)]
struct Pair {
    a: u32,
    b: u32,
}

#[test]
fn two_writers_and_a_reader_see_only_whole_updates_and_lose_none() {
    loom::model(|| {
        let tx = Arc::new(Tx::named("pair", Pair::default()));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let tx = tx.clone();
                thread::spawn(move || {
                    tx.update(|p| {
                        p.a += 1;
                        p.b += 1;
                    })
                })
            })
            .collect();
        let reader = {
            let tx = tx.clone();
            thread::spawn(move || {
                let first = tx.read();
                let second = tx.read();
                for p in [&first, &second] {
                    assert_eq!(p.a, p.b, "reader saw a half-published state: {p:?}");
                    assert!(p.a <= 2);
                }
                // Versions only move forward.
                assert!(second.a >= first.a);
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        reader.join().unwrap();
        let last = tx.read();
        assert_eq!((last.a, last.b), (2, 2), "an update was lost");
        assert_eq!(tx.updates(), 2);
        assert_eq!(tx.rollbacks(), 0);
    });
}

#[test]
fn err_update_racing_a_writer_publishes_nothing() {
    loom::model(|| {
        let tx = Arc::new(Tx::new(Pair::default()));
        let failing = {
            let tx = tx.clone();
            thread::spawn(move || {
                let r: Result<(), ()> = tx.try_update(|p| {
                    p.a += 10;
                    Err(())
                });
                assert!(r.is_err());
            })
        };
        tx.update(|p| {
            p.a += 1;
            p.b += 1;
        });
        failing.join().unwrap();
        let last = tx.read();
        assert_eq!((last.a, last.b), (1, 1));
        assert_eq!(tx.rollbacks(), 1);
    });
}
