//! What a worker's busy poll (`server.busy_poll_us`, issue #13) watches: the requests the
//! worker starts, and the busy poll's waker while it sleeps. The spin loop itself is the
//! runtime's (`runtime::spin`); this leaf only lets the connection loop say "a request
//! started" without knowing whether anyone spins.
//!
//! # Performance
//!
//! With no budget (the default) [`Activity::note`] is one branch on a constant; no task spins
//! and nothing is stored.

use std::cell::Cell;
use std::task::Waker;
use std::time::Duration;

/// The busy poll's view of this worker's activity.
#[derive(Default)]
pub struct Activity {
    /// `server.busy_poll_us`; zero: no busy poll runs.
    budget: Duration,
    /// The busy poll's task while it sleeps for want of requests.
    sleeper: Cell<Option<Waker>>,
}

impl Activity {
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            sleeper: Cell::new(None),
        }
    }

    /// How long a worker with nothing to do spins before it sleeps; zero: never.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// A request started: a sleeping busy poll starts spinning again.
    #[inline]
    pub fn note(&self) {
        if !self.budget.is_zero() {
            if let Some(w) = self.sleeper.take() {
                w.wake();
            }
        }
    }

    /// Registers the busy poll's waker until the next [`note`](Self::note).
    pub fn sleep(&self, waker: &Waker) {
        match self.sleeper.take() {
            Some(w) if w.will_wake(waker) => self.sleeper.set(Some(w)),
            _ => self.sleeper.set(Some(waker.clone())),
        }
    }

    /// Whether the busy poll is asleep (registered and not yet woken).
    pub fn is_asleep(&self) -> bool {
        let w = self.sleeper.take();
        let asleep = w.is_some();
        self.sleeper.set(w);
        asleep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_started_request_wakes_the_sleeping_busy_poll_once() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let a = Activity::new(Duration::from_micros(50));
        a.note();
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        a.sleep(&waker);
        a.sleep(&waker);
        assert!(a.is_asleep());
        a.note();
        a.note();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(!a.is_asleep());
    }

    #[test]
    fn without_a_budget_nothing_is_woken() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let a = Activity::default();
        a.sleep(&Waker::from(count.clone()));
        a.note();
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        assert!(a.budget().is_zero());
    }
}
