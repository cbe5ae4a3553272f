//! A worker-local "drain has started" signal that any number of tasks can await.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Set once when the worker starts draining; wakes every task waiting on it.
#[derive(Default)]
pub struct Drain {
    draining: Cell<bool>,
    /// Wakers of pending waits; a slot is freed when its wait completes or is dropped, so the
    /// table stays as small as the number of idle connections.
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn start(&self) {
        self.draining.set(true);
        for w in self.slots.borrow_mut().iter_mut().filter_map(Option::take) {
            w.wake();
        }
    }

    /// Resolves once draining has started.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            slot: None,
        }
    }
}

pub struct DrainWait<'a> {
    drain: &'a Drain,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_draining() {
            return Poll::Ready(());
        }
        let mut slots = self.drain.slots.borrow_mut();
        match self.slot {
            Some(i) => slots[i] = Some(cx.waker().clone()),
            None => {
                let i = match self.drain.free.borrow_mut().pop() {
                    Some(i) => i,
                    None => {
                        slots.push(None);
                        slots.len() - 1
                    }
                };
                slots[i] = Some(cx.waker().clone());
                drop(slots);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.drain.slots.borrow_mut()[i] = None;
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
}
