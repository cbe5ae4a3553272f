//! Where a worker's quota answers arrive and the requests waiting for one wait.
//!
//! The coordination thread answers lease requests (grants, denials, recalls) on a channel of
//! their own, apart from the general inbox, so the quota stage can apply them without
//! applying anything else mid-request. A request whose key has no lease on this core yet
//! parks on [`LeaseDesk::wait`]; the worker's inbox loop, which looks at the channel every
//! [`LEASE_POLL`] while anyone waits (every inbox tick otherwise), applies what arrived and
//! wakes every waiter, which then decides again. Single-threaded: no lock, no atomic, and no
//! request polls.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::quota::{FromCoordinator, QuotaShard};

/// How often the inbox loop looks for quota answers while a request waits for one. The
/// coordinator is a local thread: an answer is usually there within tens of microseconds.
pub const LEASE_POLL: Duration = Duration::from_micros(200);

/// The quota answer channel and its waiters (see the module docs).
pub struct LeaseDesk {
    answers: Receiver<FromCoordinator>,
    /// Bumped whenever answers were applied; a waiter resolves once it changed.
    applied: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
    /// The inbox loop, while it sleeps a whole tick: woken when the first waiter arrives so
    /// it starts looking every [`LEASE_POLL`].
    idle_loop: RefCell<Option<Waker>>,
}

impl LeaseDesk {
    pub fn new(answers: Receiver<FromCoordinator>) -> Self {
        Self {
            answers,
            applied: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
            idle_loop: RefCell::new(None),
        }
    }

    /// Applies every answer waiting on the channel to `shard`; wakes the waiters if any was
    /// applied. Returns how many were.
    pub fn apply(&self, shard: &RefCell<QuotaShard>, now_ms: u64) -> usize {
        let mut n = 0;
        while let Ok(m) = self.answers.try_recv() {
            shard.borrow_mut().apply(m, now_ms);
            n += 1;
        }
        if n > 0 {
            self.applied.set(self.applied.get() + 1);
            for w in self.waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
        n
    }

    /// Whether a request waits for an answer.
    pub fn has_waiters(&self) -> bool {
        !self.waiters.borrow().is_empty()
    }

    /// Resolves once answers were applied after this call, or at `deadline`.
    pub async fn wait(&self, deadline: Instant) {
        let applied = Applied {
            desk: self,
            seen: self.applied.get(),
        };
        let _ = monoio::time::timeout_at(deadline.into(), applied).await;
    }

    /// Resolves as soon as a request waits (for the inbox loop's sleep).
    pub fn waiter_arrived(&self) -> WaiterArrived<'_> {
        WaiterArrived { desk: self }
    }
}

/// See [`LeaseDesk::wait`].
struct Applied<'a> {
    desk: &'a LeaseDesk,
    seen: u64,
}

impl Future for Applied<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.desk.applied.get() != self.seen {
            return Poll::Ready(());
        }
        let mut waiters = self.desk.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        if let Some(l) = self.desk.idle_loop.borrow_mut().take() {
            l.wake();
        }
        Poll::Pending
    }
}

/// See [`LeaseDesk::waiter_arrived`].
pub struct WaiterArrived<'a> {
    desk: &'a LeaseDesk,
}

impl Future for WaiterArrived<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.desk.has_waiters() {
            return Poll::Ready(());
        }
        *self.desk.idle_loop.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for WaiterArrived<'_> {
    fn drop(&mut self) {
        self.desk.idle_loop.borrow_mut().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::QuotaShard;

    #[test]
    fn waiters_wake_when_answers_are_applied_and_not_before() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let desk = LeaseDesk::new(rx);
        let shard = RefCell::new(QuotaShard::new(0));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut wait = Box::pin(Applied {
            desk: &desk,
            seen: desk.applied.get(),
        });
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(desk.has_waiters());
        // Nothing on the channel: nothing applied, the waiter keeps waiting.
        assert_eq!(desk.apply(&shard, 0), 0);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        tx.send(FromCoordinator::Recall(crate::quota::QuotaKey(7)))
            .unwrap();
        assert_eq!(desk.apply(&shard, 0), 1);
        assert!(!desk.has_waiters());
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn the_idle_loop_learns_of_the_first_waiter() {
        let (_tx, rx) = crossbeam_channel::unbounded::<FromCoordinator>();
        let desk = LeaseDesk::new(rx);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut arrived = Box::pin(desk.waiter_arrived());
        assert!(arrived.as_mut().poll(&mut cx).is_pending());
        assert!(desk.idle_loop.borrow().is_some());
        let mut wait = Box::pin(Applied {
            desk: &desk,
            seen: 0,
        });
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(desk.idle_loop.borrow().is_none(), "the loop was woken");
        assert!(arrived.as_mut().poll(&mut cx).is_ready());
    }
}
