//! A worker-local "drain has started" signal that any number of tasks can await, and the
//! coarse timer of hibernating connections.
//!
//! A drain comes in two strengths. [`Drain::start`] (shutdown) stops the accept loops and
//! closes idle keep-alive connections at once. [`Drain::start_handover`] (a binary upgrade:
//! another process now accepts on the same listening sockets) stops the accept loops and
//! makes every response close its connection, but leaves idle keep-alive connections open for
//! [`HANDOVER_GRACE`]: a client about to reuse one gets its answer (with `Connection: close`)
//! instead of a connection closed under its request. After the grace period,
//! [`Drain::escalate`] turns it into a full drain.
//!
//! [`Drain::wait_until`] also resolves at a deadline, checked by [`Drain::expire`] (the
//! worker's inbox loop calls it every tick; it looks at the waits at most every
//! [`EXPIRE_EVERY`]). A hibernating keep-alive connection waits this way instead of holding a
//! monoio timer: a `Sleep` is 640 bytes, a slot here 32.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often [`Drain::expire`] scans for waits past their deadline: a timed wait resolves at
/// most this long after its deadline.
pub const EXPIRE_EVERY: Duration = Duration::from_millis(100);

/// How long a hand-over drain leaves idle keep-alive connections open (see the module docs).
pub const HANDOVER_GRACE: Duration = Duration::from_secs(2);

/// Set once when the worker starts draining; wakes every task waiting on it.
#[derive(Default)]
pub struct Drain {
    /// Accept loops stop; responses close their connections.
    draining: Cell<bool>,
    /// Idle connections close too (a full drain).
    close_idle: Cell<bool>,
    /// When a hand-over drain started (`None`: none, or a full drain).
    handover_since: Cell<Option<Instant>>,
    /// Pending waits; a slot is freed when its wait completes or is dropped, so the table
    /// stays as small as the number of idle connections.
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    /// Earliest deadline among pending timed waits (an underestimate is fine).
    next_deadline: Cell<Option<Instant>>,
    last_expire: Cell<Option<Instant>>,
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    deadline: Option<Instant>,
}

impl Drain {
    /// Whether the worker drains: no new connections, and responses close theirs.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Whether idle connections close now (a full drain, not a hand-over's grace period).
    pub fn closes_idle(&self) -> bool {
        self.close_idle.get()
    }

    /// A full drain (see the module docs).
    pub fn start(&self) {
        self.draining.set(true);
        self.close_idle.set(true);
        self.handover_since.set(None);
        self.wake_all();
    }

    /// A hand-over drain (see the module docs); a full drain already started stays one.
    pub fn start_handover(&self, now: Instant) {
        if self.draining.get() {
            return;
        }
        self.draining.set(true);
        self.handover_since.set(Some(now));
        // The accept loops end; connection waits look again and wait on.
        self.wake_all();
    }

    /// Turns a hand-over drain into a full one once `grace` has passed since it started.
    pub fn escalate(&self, now: Instant, grace: Duration) {
        if self
            .handover_since
            .get()
            .is_some_and(|t| now.duration_since(t) >= grace)
        {
            self.start();
        }
    }

    fn wake_all(&self) {
        for w in self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(|s| s.waker.take())
        {
            w.wake();
        }
    }

    /// Resolves once idle connections must close ([`Drain::closes_idle`]).
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            slot: None,
            deadline: None,
            accepting: false,
        }
    }

    /// Resolves once idle connections must close or `deadline` has passed (noticed by
    /// [`Drain::expire`], up to [`EXPIRE_EVERY`] late).
    pub fn wait_until(&self, deadline: Instant) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            slot: None,
            deadline: Some(deadline),
            accepting: false,
        }
    }

    /// Resolves once the accept loops must stop ([`Drain::is_draining`]).
    pub fn stop_accepting(&self) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            slot: None,
            deadline: None,
            accepting: true,
        }
    }

    /// Wakes the timed waits whose deadline has passed; cheap unless one is due and
    /// [`EXPIRE_EVERY`] has passed since the last scan.
    pub fn expire(&self, now: Instant) {
        let due = self.next_deadline.get().is_some_and(|d| d <= now);
        let scanned_lately = self
            .last_expire
            .get()
            .is_some_and(|t| now < t + EXPIRE_EVERY);
        if !due || scanned_lately {
            return;
        }
        self.last_expire.set(Some(now));
        let mut next: Option<Instant> = None;
        for s in self.slots.borrow_mut().iter_mut() {
            let Some(d) = s.deadline.filter(|_| s.waker.is_some()) else {
                continue;
            };
            if d <= now {
                s.waker.take().into_iter().for_each(Waker::wake);
            } else {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        self.next_deadline.set(next);
    }

    /// Waits pending now (idle connections, accept loops).
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.slots
            .borrow()
            .iter()
            .filter(|s| s.waker.is_some())
            .count()
    }
}

pub struct DrainWait<'a> {
    drain: &'a Drain,
    slot: Option<usize>,
    deadline: Option<Instant>,
    /// An accept loop's wait (any drain), not a connection's (a full drain).
    accepting: bool,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let done = match self.accepting {
            true => self.drain.is_draining(),
            false => self.drain.closes_idle(),
        };
        if done {
            return Poll::Ready(());
        }
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                return Poll::Ready(());
            }
            let next = &self.drain.next_deadline;
            next.set(Some(next.get().map_or(d, |n| n.min(d))));
        }
        let mut slots = self.drain.slots.borrow_mut();
        let i = match self.slot {
            Some(i) => i,
            None => {
                let i = match self.drain.free.borrow_mut().pop() {
                    Some(i) => i,
                    None => {
                        slots.push(Slot::default());
                        slots.len() - 1
                    }
                };
                drop(slots);
                self.slot = Some(i);
                slots = self.drain.slots.borrow_mut();
                i
            }
        };
        slots[i] = Slot {
            waker: Some(cx.waker().clone()),
            deadline: self.deadline,
        };
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.drain.slots.borrow_mut()[i] = Slot::default();
            self.drain.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_waits_complete() {
        let drain = Drain::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..100 {
            let mut w = Box::pin(drain.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(drain.slots.borrow().len(), 1);
        let mut w = Box::pin(drain.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        drain.start();
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_handover_stops_accepting_but_keeps_idle_connections_until_the_grace_ends() {
        let drain = Drain::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut accept = Box::pin(drain.stop_accepting());
        let mut idle = Box::pin(drain.wait());
        assert!(accept.as_mut().poll(&mut cx).is_pending());
        assert!(idle.as_mut().poll(&mut cx).is_pending());
        let t0 = Instant::now();
        drain.start_handover(t0);
        assert!(drain.is_draining() && !drain.closes_idle());
        assert!(accept.as_mut().poll(&mut cx).is_ready());
        assert!(idle.as_mut().poll(&mut cx).is_pending());
        drain.escalate(t0 + HANDOVER_GRACE / 2, HANDOVER_GRACE);
        assert!(idle.as_mut().poll(&mut cx).is_pending());
        drain.escalate(t0 + HANDOVER_GRACE, HANDOVER_GRACE);
        assert!(drain.closes_idle());
        assert!(idle.as_mut().poll(&mut cx).is_ready());
        // A full drain is never weakened into a hand-over.
        let full = Drain::default();
        full.start();
        full.start_handover(t0);
        assert!(full.closes_idle());
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn timed_waits_resolve_after_their_deadline_and_untimed_ones_do_not() {
        let drain = Drain::default();
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        let mut plain = Box::pin(drain.wait());
        let mut soon = Box::pin(drain.wait_until(later(50)));
        let mut far = Box::pin(drain.wait_until(later(60_000)));
        for w in [&mut plain, &mut soon, &mut far] {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(drain.waiting(), 3);
        // Nothing is due yet: no scan, no wake.
        drain.expire(later(49));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 0);
        drain.expire(later(50));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(drain.waiting(), 2);
        // The woken wait sees its deadline passed once polled after it.
        let mut past = Box::pin(drain.wait_until(t0));
        assert!(past.as_mut().poll(&mut cx).is_ready());
        drop(soon);
        // Scans are at most EXPIRE_EVERY apart (the last was at 50 ms).
        let mut mid = Box::pin(drain.wait_until(later(120)));
        assert!(mid.as_mut().poll(&mut cx).is_pending());
        drain.expire(later(130));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        drain.expire(later(50) + EXPIRE_EVERY);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 2);
        drop(mid);
        drain.start();
        assert!(plain.as_mut().poll(&mut cx).is_ready());
        assert!(far.as_mut().poll(&mut cx).is_ready());
        drop((plain, far));
        assert_eq!(drain.waiting(), 0);
        assert_eq!(drain.free.borrow().len(), drain.slots.borrow().len());
    }
}
