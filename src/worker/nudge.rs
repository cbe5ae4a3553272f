//! Wakes the worker's inbox loop from the worker's own thread: when a request leaves
//! something the control plane should hear soon (a lease request, a breaker failure), when a
//! request starts waiting for a lease, or when the bell rang (see `inbox::bell`). The loop
//! otherwise sleeps a long tick. Single-threaded: a flag and a waker, no atomic.
//!
//! A nudge given while the loop is busy is kept, so the loop's next wait returns at once and
//! nothing is missed.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// See the module docs.
#[derive(Default)]
pub struct Nudge {
    pending: Cell<bool>,
    sleeper: RefCell<Option<Waker>>,
}

impl Nudge {
    /// Asks the inbox loop to run now (or as soon as it waits again).
    pub fn nudge(&self) {
        self.pending.set(true);
        if let Some(w) = self.sleeper.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once nudged (at once when a nudge is pending), taking the nudge.
    pub fn nudged(&self) -> Nudged<'_> {
        Nudged { nudge: self }
    }
}

/// See [`Nudge::nudged`].
pub struct Nudged<'a> {
    nudge: &'a Nudge,
}

impl Future for Nudged<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.nudge.pending.replace(false) {
            return Poll::Ready(());
        }
        *self.nudge.sleeper.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Nudged<'_> {
    fn drop(&mut self) {
        self.nudge.sleeper.borrow_mut().take();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waker that counts its wakes, and the count.
    fn counting() -> (Waker, impl Fn() -> usize) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        (waker, move || count.0.load(Ordering::SeqCst))
    }

    #[test]
    fn a_nudge_wakes_the_sleeper_once_and_is_taken() {
        let n = Nudge::default();
        let (waker, wakes) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut f = Box::pin(n.nudged());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        n.nudge();
        n.nudge();
        assert_eq!(wakes(), 1, "one wake for two nudges");
        assert!(f.as_mut().poll(&mut cx).is_ready());
        drop(f);
        let mut again = Box::pin(n.nudged());
        assert!(
            again.as_mut().poll(&mut cx).is_pending(),
            "the nudge was taken"
        );
    }

    #[test]
    fn a_nudge_while_busy_is_kept_for_the_next_wait() {
        let n = Nudge::default();
        n.nudge();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Box::pin(n.nudged()).as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_dropped_wait_leaves_no_waker_behind() {
        let n = Nudge::default();
        let (waker, wakes) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut f = Box::pin(n.nudged());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        drop(f);
        n.nudge();
        assert_eq!(wakes(), 0);
    }
}
