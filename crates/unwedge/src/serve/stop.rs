//! The stop signal of `serve()`'s accept loops and connections: set once, awaited by every
//! connection task for its whole life.
//!
//! A connection task waits on its connection and on this signal together, so the signal's
//! future is polled again each time the task wakes (once or twice per request). A
//! `tokio::sync::watch` receiver, polled again, takes a lock and a cooperative-budget unit
//! each time; [`Stopped`] registers its waker once and afterwards costs a load and a waker
//! comparison.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;

/// The sending side: [`stop`](Self::stop) wakes every [`Stopped`] future.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Tells this stop signal (its `serve()`) from others in the process.
    id: u64,
    stopped: AtomicBool,
    wait: Mutex<Waiting>,
}

impl Default for Inner {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Inner {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            stopped: AtomicBool::default(),
            wait: Mutex::default(),
        }
    }
}

/// How many `serve()`s in this process are stopping (stopped, and not yet dropped), and
/// which: an answer looks at the list only when the count says some are.
static STOPPING: AtomicUsize = AtomicUsize::new(0);
static STOPPING_IDS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn stopping_ids() -> MutexGuard<'static, Vec<u64>> {
    STOPPING_IDS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the `serve()` whose stop signal has `id` ([`StopFlag::id`]) is stopping: its HTTP/1
/// answers then say `Connection: close`. One relaxed load per answer while no `serve()` of the
/// process is stopping, instead of a reference to its own signal kept by every request.
pub(crate) fn is_stopping(id: u64) -> bool {
    STOPPING.load(Ordering::Relaxed) > 0 && stopping_ids().contains(&id)
}

impl Drop for Inner {
    fn drop(&mut self) {
        if *self.stopped.get_mut() {
            let mut ids = stopping_ids();
            ids.retain(|i| *i != self.id);
            STOPPING.store(ids.len(), Ordering::Relaxed);
        }
    }
}

/// The wakers of the futures waiting, with stable keys; and the grace the stop carries.
#[derive(Debug, Default)]
struct Waiting {
    wakers: Slab<Waker>,
    grace: Duration,
}

impl Inner {
    fn wait(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while it is held.
        self.wait.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Stop {
    /// Stops, with `grace` for the connections (see [`Stopped`]'s output); wakes every
    /// waiting future. Later calls change nothing.
    pub(crate) fn stop(&self, grace: Duration) {
        let mut wait = self.inner.wait();
        if self.inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        wait.grace = grace;
        {
            let mut ids = stopping_ids();
            ids.push(self.inner.id);
            STOPPING.store(ids.len(), Ordering::Relaxed);
        }
        self.inner.stopped.store(true, Ordering::SeqCst);
        // No future registers after this (it sees the flag under the lock first).
        for waker in wait.wakers.drain() {
            waker.wake();
        }
    }

    /// A flag set by [`stop`](Self::stop).
    pub(crate) fn flag(&self) -> StopFlag {
        StopFlag {
            inner: self.inner.clone(),
        }
    }

    /// A future ready once [`stop`](Self::stop) was called, with its grace.
    pub(crate) fn stopped(&self) -> Stopped {
        Stopped {
            inner: self.inner.clone(),
            key: None,
            waker: None,
        }
    }
}

/// Tells, without waiting, whether [`Stop::stop`] was called.
#[derive(Debug, Clone)]
pub(crate) struct StopFlag {
    inner: Arc<Inner>,
}

impl StopFlag {
    /// Which stop signal this is (see [`is_stopping`]).
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// Whether [`Stop::stop`] was called (a load).
    pub(crate) fn is_set(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }
}

/// Ready, with the grace given to [`Stop::stop`], once it was called.
#[derive(Debug)]
pub(crate) struct Stopped {
    inner: Arc<Inner>,
    /// Where this future's waker is registered.
    key: Option<usize>,
    /// The waker registered, to tell whether a poll brings another one.
    waker: Option<Waker>,
}

impl Future for Stopped {
    type Output = Duration;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Duration> {
        let this = self.get_mut();
        if this.inner.stopped.load(Ordering::SeqCst) {
            return Poll::Ready(this.inner.wait().grace);
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered with this waker already: `stop` sets the flag before it wakes it.
            return Poll::Pending;
        }
        let mut wait = this.inner.wait();
        // Under the lock: `stop` either already set the flag (seen here) or wakes the waker
        // registered now.
        if this.inner.stopped.load(Ordering::SeqCst) {
            return Poll::Ready(wait.grace);
        }
        let waker = cx.waker().clone();
        match this.key {
            Some(key) => wait.wakers[key] = waker.clone(),
            None => this.key = Some(wait.wakers.insert(waker.clone())),
        }
        drop(wait);
        this.waker = Some(waker);
        Poll::Pending
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Gone already when the stop woke it.
            self.inner.wait().wakers.try_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiting_future_wakes_with_the_grace() {
        let stop = Stop::default();
        let waiting: Vec<_> = (0..3)
            .map(|_| tokio::spawn(stop.stopped()))
            .collect::<Vec<_>>();
        // One more, dropped before the stop.
        let dropped = tokio::spawn(stop.stopped());
        dropped.abort();
        let _ = dropped.await;
        // Wait until the three are registered: the stop must wake them.
        tokio::time::timeout(Duration::from_secs(5), async {
            while stop.inner.wait().wakers.len() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the futures register their wakers");
        stop.stop(Duration::from_millis(7));
        stop.stop(Duration::from_secs(9)); // changes nothing
        for w in waiting {
            let grace = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .unwrap();
            assert_eq!(grace, Duration::from_millis(7));
        }
        // A future made after the stop is ready at once.
        assert_eq!(stop.stopped().await, Duration::from_millis(7));
    }

    #[tokio::test]
    async fn a_pending_future_stays_pending_until_the_stop() {
        let stop = Stop::default();
        let mut fut = Box::pin(stop.stopped());
        for _ in 0..3 {
            assert!(futures_util::poll!(fut.as_mut()).is_pending());
        }
        stop.stop(Duration::ZERO);
        assert_eq!(
            futures_util::poll!(fut.as_mut()),
            Poll::Ready(Duration::ZERO)
        );
    }

    #[test]
    fn keys_of_dropped_futures_are_reused() {
        let stop = Stop::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            let mut fut = stop.stopped();
            assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
            assert_eq!(fut.key, Some(0));
        }
        assert_eq!(stop.inner.wait().wakers.len(), 0);
    }
}
