//! Where a worker's quota answers arrive and the requests waiting for one wait.
//!
//! The coordination thread answers lease requests (grants, denials, recalls) on a channel of
//! their own, apart from the general inbox, so the quota stage can apply them without
//! applying anything else mid-request. A request whose key has no lease on this core yet
//! parks on [`LeaseDesk::wait`], which nudges the worker's inbox loop (see [`super::nudge`]).
//! The coordination thread rings the worker's bell after it sends answers (see
//! `inbox::bell`), so the loop runs as soon as one arrives; it applies what arrived and wakes
//! every waiter, which then decides again. While anyone waits the loop also looks every
//! [`LEASE_POLL`], in case a ring is lost. Single-threaded: no lock, no atomic, and no request
//! polls.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::quota::{FromCoordinator, QuotaShard};

/// How often the inbox loop looks for quota answers while a request waits for one, besides
/// when the bell rings: a lost ring costs at most this.
pub const LEASE_POLL: Duration = Duration::from_millis(5);

/// The quota answer channel and its waiters (see the module docs).
pub struct LeaseDesk {
    answers: Receiver<FromCoordinator>,
    /// Bumped whenever answers were applied; a waiter resolves once it changed.
    applied: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
    /// The inbox loop's nudge: given when the first waiter arrives, so the loop sends the
    /// lease request now and looks for the answer from then on.
    nudge: Rc<super::Nudge>,
}

impl LeaseDesk {
    pub fn new(answers: Receiver<FromCoordinator>, nudge: Rc<super::Nudge>) -> Self {
        Self {
            answers,
            applied: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
            nudge,
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
        if waiters.is_empty() {
            self.desk.nudge.nudge();
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::QuotaShard;

    #[test]
    fn waiters_wake_when_answers_are_applied_and_not_before() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let desk = LeaseDesk::new(rx, Rc::default());
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
    fn the_inbox_loop_is_nudged_by_the_first_waiter_only() {
        let (_tx, rx) = crossbeam_channel::unbounded::<FromCoordinator>();
        let nudge = Rc::new(crate::worker::Nudge::default());
        let desk = LeaseDesk::new(rx, nudge.clone());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut nudged = Box::pin(nudge.nudged());
        assert!(nudged.as_mut().poll(&mut cx).is_pending());
        let mut first = Box::pin(Applied {
            desk: &desk,
            seen: 0,
        });
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(
            nudged.as_mut().poll(&mut cx).is_ready(),
            "the loop was nudged"
        );
        drop(nudged);
        let mut second = Box::pin(Applied {
            desk: &desk,
            seen: 0,
        });
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert!(
            Box::pin(nudge.nudged()).as_mut().poll(&mut cx).is_pending(),
            "a second waiter adds nothing the loop does not know"
        );
    }
}
