//! The health registry's published state (`health::subscribe`, which the watchdog follows for
//! heartbeats and `STATUS=`) against the registry itself (`health()`, which `/livez` reads),
//! with changes made on several threads at once.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use unwedge::health;

/// A receiver that reads `health()` while it holds a `borrow()` of the published state, and
/// changes made meanwhile on another thread: neither waits for the other for ever. (Publishing
/// while holding the registry's lock took the two locks in the other order.)
#[test]
fn reading_health_while_holding_a_borrow_does_not_deadlock_a_change() {
    support::own_process!();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let rx = health::subscribe();
        let changer = std::thread::spawn(|| {
            for i in 0..20_000 {
                health::set_ready(i % 2 == 0);
            }
        });
        for _ in 0..20_000 {
            let held = rx.borrow();
            let _ = health::health();
            drop(held);
        }
        changer.join().unwrap();
        let _ = done_tx.send(());
    });
    done.recv_timeout(Duration::from_secs(60))
        .expect("a health change and a reader holding a borrow deadlocked");
}

/// Wedges raised and cleared on two threads at once: once both are done, the state published
/// is the registry's (a change published out of order left a stale one, which the watchdog
/// acts on: heartbeats stopped, `STATUS=wedged` on a healthy process). The race this guards
/// against is a few instructions wide and this run seldom provokes it; what it checks every
/// time is that ordering the publications never withholds the last state.
#[test]
fn the_state_published_last_is_the_registrys() {
    support::own_process!();
    let rx = health::subscribe();
    let churn = |source: &'static str| {
        std::thread::spawn(move || {
            for i in 0..50_000 {
                health::set_wedged(source, format!("{source} {i}"));
                health::clear_wedged(source);
            }
        })
    };
    let (a, b) = (churn("test:a"), churn("test:b"));
    a.join().unwrap();
    b.join().unwrap();
    let published = rx.borrow().clone();
    let h = health::health();
    assert_eq!(published, (h.state, h.reason));
}
