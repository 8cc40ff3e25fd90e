//! `Tx` and `unwedge::Mutex` against the usual alternatives, 1 and 2 threads side by side.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p unwedge --bench state -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! With 2 threads, both run the same operation at once on the same state, the same number of
//! times, each pinned to a CPU of its own, and the time of the slower one is reported (per
//! operation): contention shows up as a slower operation, also for a lock under which one
//! thread runs while the other waits (the faster thread's time alone would leave out what the
//! waiting thread paid).
//!
//! "read while a writer updates": the reader and the writer are pinned to different CPUs; a
//! "busy" writer updates back to back (the worst case: the state's cache lines move between
//! the cores on every update), a "paced" one sleeps 10 µs between updates, a "1 µs" one spins
//! 1 µs between updates. Each such row prints the rate at which the writer actually published
//! during the timed reads.
//!
//! The "floor" rows measure what no reclamation scheme can go below: the reader takes the
//! current version from a pool of versions that are never freed (no arc-swap, no debt, no
//! epoch), either borrowing it or cloning its `Arc` as `Tx::read` must, while the writer runs
//! `Tx::update` back to back and then publishes the next pool version (faster than in the
//! `Tx` rows, where the readers slow it down: the rates are printed). What is left is the
//! cache-line traffic of reading what another core keeps publishing; the time it adds to a
//! read, not its ratio to an idle read, is the floor.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Pins the calling thread to the `nth` CPU this process may use (wrapping around) until
/// dropped, then gives it back the CPUs it had. The threads of a 2-thread run are pinned to
/// different CPUs: left to the scheduler, a thread spawned for a short sample often starts on
/// its spawner's CPU, and the two then take turns instead of running at once (a lock's
/// contention, or a writer's, would go unmeasured). Where the affinity cannot be read or set
/// it pins nothing.
struct Pinned(Option<rustix::thread::CpuSet>);

impl Pinned {
    fn to(nth: usize) -> Pinned {
        use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
        let Ok(before) = sched_getaffinity(None) else {
            return Pinned(None);
        };
        // The process's CPUs as first seen (a thread spawned by a pinned one inherits its pin).
        static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
        let cpus =
            CPUS.get_or_init(|| (0..CpuSet::MAX_CPU).filter(|&c| before.is_set(c)).collect());
        if cpus.is_empty() {
            return Pinned(None);
        }
        let mut one = CpuSet::new();
        one.set(cpus[nth % cpus.len()]);
        match sched_setaffinity(None, &one) {
            Ok(()) => Pinned(Some(before)),
            Err(_) => Pinned(None),
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = rustix::thread::sched_setaffinity(None, before);
        }
    }
}

/// Runs `body(iters, start)` on `threads` threads at once, each on a CPU of its own (each
/// sets itself up, then waits on `start` to begin with the others, e.g. in [`timed`]), and
/// returns the longest time one of them measured for its `iters` operations: with a lock, a
/// thread that got it back to back while the other slept in the queue measures only its own
/// uncontended operations.
fn parallel<F>(threads: usize, iters: u64, body: F) -> Duration
where
    F: Fn(u64, &Barrier) -> Duration + Sync,
{
    let start = Barrier::new(threads);
    let _pinned = (threads > 1).then(|| Pinned::to(0));
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads)
            .map(|n| {
                let (start, body) = (&start, &body);
                s.spawn(move || {
                    let _pinned = Pinned::to(n);
                    body(iters, start)
                })
            })
            .collect();
        let mine = body(iters, &start);
        others
            .into_iter()
            .map(|other| other.join().expect("bench thread panicked"))
            .fold(mine, Duration::max)
    })
}

/// Times a synchronous loop of `iters` calls to `op`, once every thread passed `start`.
fn timed(iters: u64, start: &Barrier, mut op: impl FnMut(u64)) -> Duration {
    start.wait();
    let t = Instant::now();
    for i in 0..iters {
        op(i);
    }
    t.elapsed()
}

/// Times an async loop of `iters` operations on a current-thread runtime of this thread,
/// built before waiting on `start` (the other threads' loops begin only once it is built).
macro_rules! timed_async {
    ($iters:expr, $start:expr, |$i:ident| $op:expr) => {{
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        $start.wait();
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
                parallel(n, iters, |k, start| {
                    timed(k, start, |_| {
                        black_box(tx.read().hits);
                    })
                })
            })
        });
        // The borrowing read: a `Snapshot` (arc-swap's guard), no reference count touched.
        g.bench_with_input(BenchmarkId::new("Tx::load", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                parallel(n, iters, |k, start| {
                    timed(k, start, |_| {
                        black_box(tx.load().hits);
                    })
                })
            })
        });
        g.bench_with_input(
            BenchmarkId::new("ArcSwap::load", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    parallel(n, iters, |k, start| {
                        timed(k, start, |_| {
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
                    parallel(n, iters, |k, start| {
                        timed(k, start, |_| {
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
                    parallel(n, iters, |k, start| {
                        timed(k, start, |_| {
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
                    parallel(n, iters, |k, start| {
                        timed_async!(k, start, |_i| black_box(tm.lock().await.hits))
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
                    parallel(n, iters, |k, start| {
                        timed(k, start, |i| {
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
                    parallel(n, iters, |k, start| {
                        timed_async!(k, start, |i| {
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
                    parallel(n, iters, |k, start| {
                        timed(k, start, |i| {
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
                    parallel(n, iters, |k, start| {
                        timed_async!(k, start, |i| {
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
    // The floor of the 100k-entry update: the persistent map's own copy-on-write (an O(1)
    // clone, the insert copying the path to the key, the old version's unshared nodes freed),
    // with no `Tx` around it (no arc-swap, no writer lock, no rollback bookkeeping). No
    // `Tx::update` of the map can cost less on this machine.
    let mut floor_map = Arc::new(big_map());
    g.bench_function(
        BenchmarkId::new("floor imbl copy-on-write, no Tx", 1),
        |b| {
            b.iter_custom(|iters| {
                timed(iters, &Barrier::new(1), |i| {
                    let mut next = (*floor_map).clone();
                    next.insert(i.wrapping_mul(7919) % 100_000, i);
                    floor_map = Arc::new(next);
                })
            })
        },
    );
    g.finish();
}

fn mutex_uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("mutex uncontended lock+unlock");
    let um = unwedge::Mutex::new(0u64);
    let tm = tokio::sync::Mutex::new(0u64);
    g.bench_function("unwedge::Mutex", |b| {
        b.iter_custom(|iters| {
            timed_async!(iters, &Barrier::new(1), |_i| {
                *um.lock().await.expect("never poisoned") += 1;
            })
        })
    });
    g.bench_function("tokio::sync::Mutex", |b| {
        b.iter_custom(|iters| {
            timed_async!(iters, &Barrier::new(1), |_i| {
                *tm.lock().await += 1;
            })
        })
    });
    g.finish();
}

/// How the writer thread of `reads_under_writer` publishes.
#[derive(Clone, Copy)]
enum Writer {
    /// Updates back to back on its own core: the state's cache lines move between the cores
    /// on every update (the worst case, not a typical service).
    BackToBack,
    /// Sleeps this long between updates (the OS makes it longer: tens of µs), leaving the
    /// CPU to the reader: a busy but realistic writer.
    Paced(Duration),
    /// Spins this long between updates: a precise rate (about 1 M updates/s for 1 µs) from a
    /// writer that keeps its core busy.
    Spaced(Duration),
}

/// Times `iters` calls of `read` while another thread calls `write` as `writer` says. The
/// clock starts only once the writer has published (so it is measured running), and the
/// writer's publishes during the timed reads are added to `published`.
fn timed_under_writer(
    iters: u64,
    writer: Writer,
    write: impl Fn() + Sync,
    read: impl Fn(),
    published: &Cell<(u64, Duration)>,
) -> Duration {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    // The reader on one CPU, the writer on another: a writer on the same CPU would take
    // turns with the reader instead of publishing while it reads.
    let _pinned = Pinned::to(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let _pinned = Pinned::to(1);
            while !stop.load(Ordering::Relaxed) {
                write();
                count.fetch_add(1, Ordering::Relaxed);
                match writer {
                    Writer::BackToBack => {}
                    Writer::Paced(pause) => std::thread::sleep(pause),
                    Writer::Spaced(gap) => {
                        let until = Instant::now() + gap;
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
        });
        while count.load(Ordering::Relaxed) == 0 {
            std::hint::spin_loop();
        }
        let before = count.load(Ordering::Relaxed);
        let elapsed = timed(iters, &Barrier::new(1), |_| read());
        let during = count.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        let (n, t) = published.get();
        published.set((n + during, t + elapsed));
        elapsed
    })
}

/// Benchmarks `read` under a writer, then prints how fast the writer actually published
/// during the timed reads (on a loaded 2-core machine a back-to-back writer may get little
/// CPU, or take the reader's: the rate tells which).
fn bench_under_writer(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    writer: Writer,
    write: impl Fn() + Sync,
    read: impl Fn(),
) {
    let published = Cell::new((0u64, Duration::ZERO));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| timed_under_writer(iters, writer, &write, &read, &published))
    });
    let (n, t) = published.get();
    if !t.is_zero() {
        eprintln!(
            "{name}: the writer published {:.0} updates/ms during the reads",
            n as f64 / t.as_secs_f64() / 1e3
        );
    }
}

fn reads_under_writer(c: &mut Criterion) {
    let mut g = c.benchmark_group("read while a writer updates");
    let tx = Tx::new(Small::default());
    let update = || tx.update(|s| s.hits += 1);
    let paced = Writer::Paced(Duration::from_micros(10));
    let spaced = Writer::Spaced(Duration::from_micros(1));
    g.bench_function("Tx::read, idle", |b| b.iter(|| black_box(tx.read().hits)));
    let read = || {
        black_box(tx.read().hits);
    };
    bench_under_writer(
        &mut g,
        "Tx::read, busy writer",
        Writer::BackToBack,
        update,
        read,
    );
    bench_under_writer(&mut g, "Tx::read, paced writer", paced, update, read);
    bench_under_writer(&mut g, "Tx::read, writer every 1us", spaced, update, read);
    g.bench_function("Tx::load, idle", |b| b.iter(|| black_box(tx.load().hits)));
    let load = || {
        black_box(tx.load().hits);
    };
    bench_under_writer(
        &mut g,
        "Tx::load, busy writer",
        Writer::BackToBack,
        update,
        load,
    );
    bench_under_writer(&mut g, "Tx::load, paced writer", paced, update, load);
    bench_under_writer(&mut g, "Tx::load, writer every 1us", spaced, update, load);
    floor_under_writer(&mut g, &tx);
    let rw = RwLock::new(Small::default());
    bench_under_writer(
        &mut g,
        "std RwLock read, busy writer",
        Writer::BackToBack,
        || rw.write().unwrap().hits += 1,
        || {
            black_box(rw.read().unwrap().hits);
        },
    );
    g.finish();
}

/// The floor under any `Tx` read while `Tx`'s busy writer publishes (see the module docs):
/// versions in a pool that is never freed, the current one named by an index.
fn floor_under_writer(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tx: &Tx<Small>,
) {
    /// A version: its first field on the `Arc`'s cache line, as `Small`'s is.
    #[derive(Default)]
    struct Version {
        hits: AtomicU64,
    }
    const VERSIONS: usize = 64;
    let pool: Vec<Arc<Version>> = (0..VERSIONS).map(|_| Arc::default()).collect();
    let current = AtomicUsize::new(0);
    let next = AtomicUsize::new(1);
    // The writer: `Tx`'s update (its rate), then a copy of the current version into the next
    // one and the index published, as a publish of a new version.
    let write = || {
        tx.update(|s| s.hits += 1);
        let from = current.load(Ordering::Relaxed);
        let to = next.fetch_add(1, Ordering::Relaxed) % VERSIONS;
        let hits = pool[from].hits.load(Ordering::Relaxed);
        pool[to].hits.store(hits + 1, Ordering::Relaxed);
        current.store(to, Ordering::Release);
    };
    let borrowed = || {
        black_box(
            pool[current.load(Ordering::Acquire)]
                .hits
                .load(Ordering::Relaxed),
        );
    };
    let owned = || {
        let v = Arc::clone(&pool[current.load(Ordering::Acquire)]);
        black_box(v.hits.load(Ordering::Relaxed));
    };
    g.bench_function("floor borrowed, idle", |b| b.iter(borrowed));
    bench_under_writer(
        g,
        "floor borrowed, busy writer",
        Writer::BackToBack,
        write,
        borrowed,
    );
    g.bench_function("floor owned Arc, idle", |b| b.iter(owned));
    bench_under_writer(
        g,
        "floor owned Arc, busy writer",
        Writer::BackToBack,
        write,
        owned,
    );
}

criterion_group!(
    benches,
    reads,
    updates,
    mutex_uncontended,
    reads_under_writer
);
criterion_main!(benches);
