//! `Tx` and `unwedge::Mutex` against the usual alternatives, 1 and 2 threads side by side.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p unwedge --bench state -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! With 2 threads, both run the same operation at once on the same state and the time of one
//! of them is reported (per operation), so contention shows up as a slower operation.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use unwedge::Tx;

#[derive(Clone, Default)]
struct Small {
    hits: u64,
    bytes: u64,
    recent: [u64; 4],
}

fn big_map() -> imbl::HashMap<u64, u64> {
    (0..100_000u64).map(|i| (i, i)).collect()
}

/// Runs `body(iters)` on `threads` threads at once (released together by a barrier) and
/// returns the time thread 0 measured for its `iters` operations.
fn parallel<F>(threads: usize, iters: u64, body: F) -> Duration
where
    F: Fn(u64) -> Duration + Sync,
{
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    body(iters)
                })
            })
            .collect();
        start.wait();
        let mine = body(iters);
        for other in others {
            other.join().expect("bench thread panicked");
        }
        mine
    })
}

/// Times a synchronous loop of `iters` calls to `op`.
fn timed(iters: u64, mut op: impl FnMut(u64)) -> Duration {
    let t = Instant::now();
    for i in 0..iters {
        op(i);
    }
    t.elapsed()
}

/// Times an async loop of `iters` operations on a current-thread runtime of this thread.
macro_rules! timed_async {
    ($iters:expr, |$i:ident| $op:expr) => {{
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let t = Instant::now();
            for $i in 0..$iters {
                $op;
            }
            t.elapsed()
        })
    }};
}

const THREADS: [usize; 2] = [1, 2];

fn reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    let tx = Tx::new(Small::default());
    let rw = RwLock::new(Small::default());
    let tm = tokio::sync::Mutex::new(Small::default());
    let swap = ArcSwap::from_pointee(Small::default());
    for threads in THREADS {
        g.bench_with_input(BenchmarkId::new("Tx::read", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                parallel(n, iters, |k| {
                    timed(k, |_| {
                        black_box(tx.read().hits);
                    })
                })
            })
        });
        g.bench_with_input(
            BenchmarkId::new("ArcSwap::load", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k| {
                        timed(k, |_| {
                            black_box(swap.load().hits);
                        })
                    })
                })
            },
        );
        // The same contract as `Tx::read` (an owned `Arc` snapshot), for a fair comparison.
        g.bench_with_input(
            BenchmarkId::new("ArcSwap::load_full", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k| {
                        timed(k, |_| {
                            black_box(swap.load_full().hits);
                        })
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("std RwLock read", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k| {
                        timed(k, |_| {
                            black_box(rw.read().unwrap().hits);
                        })
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("tokio Mutex lock+read", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k| {
                        timed_async!(k, |_i| black_box(tm.lock().await.hits))
                    })
                })
            },
        );
    }
    g.finish();
}

fn updates(c: &mut Criterion) {
    let mut g = c.benchmark_group("update");
    let tx = Tx::new(Small::default());
    let tm = tokio::sync::Mutex::new(Small::default());
    let tx_map = Tx::new(big_map());
    let tm_map = tokio::sync::Mutex::new(big_map());
    for threads in THREADS {
        g.bench_with_input(
            BenchmarkId::new("Tx::update small", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k| {
                        timed(k, |i| {
                            tx.update(|s| {
                                s.hits += 1;
                                s.bytes += i;
                                s.recent[(i % 4) as usize] = i;
                            })
                        })
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("tokio Mutex write small", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k| {
                        timed_async!(k, |i| {
                            let mut s = tm.lock().await;
                            s.hits += 1;
                            s.bytes += i;
                            s.recent[(i % 4) as usize] = i;
                        })
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("Tx::update imbl 100k", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k| {
                        timed(k, |i| {
                            tx_map.update(|m| {
                                m.insert(i.wrapping_mul(7919) % 100_000, i);
                            })
                        })
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("tokio Mutex write imbl 100k", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k| {
                        timed_async!(k, |i| {
                            tm_map
                                .lock()
                                .await
                                .insert(i.wrapping_mul(7919) % 100_000, i);
                        })
                    })
                })
            },
        );
    }
    g.finish();
}

fn mutex_uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("mutex uncontended lock+unlock");
    let um = unwedge::Mutex::new(0u64);
    let tm = tokio::sync::Mutex::new(0u64);
    g.bench_function("unwedge::Mutex", |b| {
        b.iter_custom(|iters| {
            timed_async!(iters, |_i| {
                *um.lock().await.expect("never poisoned") += 1;
            })
        })
    });
    g.bench_function("tokio::sync::Mutex", |b| {
        b.iter_custom(|iters| {
            timed_async!(iters, |_i| {
                *tm.lock().await += 1;
            })
        })
    });
    g.finish();
}

/// Runs `f` while another thread updates `tx` back to back.
fn with_busy_writer<R>(tx: &Tx<Small>, f: impl FnOnce() -> R) -> R {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                tx.update(|s| s.hits += 1);
            }
        });
        let r = f();
        stop.store(true, Ordering::Relaxed);
        r
    })
}

fn reads_under_writer(c: &mut Criterion) {
    let mut g = c.benchmark_group("read while a writer updates");
    let tx = Tx::new(Small::default());
    g.bench_function("Tx::read, idle", |b| b.iter(|| black_box(tx.read().hits)));
    g.bench_function("Tx::read, busy writer", |b| {
        with_busy_writer(&tx, || b.iter(|| black_box(tx.read().hits)))
    });
    let rw = RwLock::new(Small::default());
    g.bench_function("std RwLock read, busy writer", |b| {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    rw.write().unwrap().hits += 1;
                }
            });
            b.iter(|| black_box(rw.read().unwrap().hits));
            stop.store(true, Ordering::Relaxed);
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    reads,
    updates,
    mutex_uncontended,
    reads_under_writer
);
criterion_main!(benches);
