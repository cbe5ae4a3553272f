//! The busy poll (`server.busy_poll_us`, issue #13): for dedicated hosts where a core per
//! worker is cheap and tail latency is not. A worker whose last request started less than the
//! budget ago keeps its thread on the CPU instead of sleeping in `io_uring_enter`, so the next
//! completion (the upstream's response, the client's next request) is reaped without a
//! scheduler wake-up.
//!
//! # How
//!
//! Two tasks per worker, spawned only when the budget is not zero (no budget: no task, no
//! cost): the spinner and a partner it passes the turn to. While spinning, one of them is
//! always runnable, so instead of parking monoio submits what is queued, reaps the completion
//! queue (one non-blocking `io_uring_enter`, none with an awake `sqpoll` thread) and runs what
//! completed, then the spinner again. Two tasks because a task that wakes itself is put at the
//! *front* of monoio's run queue and would run again before anything that just completed; a
//! task woken by another goes to the back. monoio runs its
//! timers only when it parks, so once per [`TIMER_PASS`] the spinner waits on a timer whose
//! deadline has already passed: the worker parks with a zero timeout, its due timers fire (the
//! inbox tick, read timeouts, quota leases), and the spin goes on. Once no request has started
//! for the budget the task sleeps until the next one starts ([`Activity::note`]).
//!
//! [`Activity::note`]: crate::worker::spin::Activity::note

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::worker::Worker;

/// How often a spinning worker lets its timers run (monoio's timer wheel counts milliseconds).
pub const TIMER_PASS: Duration = Duration::from_millis(1);

/// Spins while requests keep starting within the budget; sleeps otherwise. Returns once the
/// worker drains.
pub async fn run(worker: Rc<Worker>) {
    let budget = worker.activity.budget();
    if budget.is_zero() {
        return;
    }
    let baton = Rc::new(Baton::default());
    monoio::spawn(partner(baton.clone()));
    while !worker.drain.is_draining() {
        spin(&worker, &baton, budget).await;
        Asleep {
            worker: &worker,
            registered: false,
        }
        .await;
    }
    baton.done.set(true);
    if let Some(w) = baton.parked.take() {
        w.wake();
    }
}

/// Passes the turn back to the spinner until it is done.
async fn partner(baton: Rc<Baton>) {
    while !baton.done.get() {
        Pass {
            baton: &baton,
            passed: false,
        }
        .await;
    }
}

/// Spins until no request has started for `budget`.
async fn spin(worker: &Worker, baton: &Baton, budget: Duration) {
    let mut seen = worker.requests_started();
    let mut quiet_since = Instant::now();
    let mut timers_ran = quiet_since;
    loop {
        let now = Instant::now();
        let started = worker.requests_started();
        if started != seen {
            seen = started;
            quiet_since = now;
        } else if now.duration_since(quiet_since) >= budget || worker.drain.is_draining() {
            return;
        }
        if now.duration_since(timers_ran) >= 2 * TIMER_PASS {
            // A deadline at least a whole tick in the past: the wheel holds it as due, so the
            // park it causes does not block (see the module docs).
            monoio::time::sleep_until((timers_ran + TIMER_PASS).into()).await;
            timers_ran = Instant::now();
        } else {
            Pass {
                baton,
                passed: false,
            }
            .await;
        }
    }
}

/// The turn the spinner and its partner pass between them.
#[derive(Default)]
struct Baton {
    /// The task waiting for the turn.
    parked: Cell<Option<Waker>>,
    /// The spinner returned (the worker drains): the partner ends too.
    done: Cell<bool>,
}

/// Wakes the task waiting for the turn (it goes to the back of the run queue) and waits to
/// be woken in turn.
struct Pass<'a> {
    baton: &'a Baton,
    passed: bool,
}

impl Future for Pass<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.passed || self.baton.done.get() {
            return Poll::Ready(());
        }
        self.passed = true;
        if let Some(w) = self.baton.parked.replace(Some(cx.waker().clone())) {
            // Never this task's own waker: that would put it at the front of the queue.
            if !w.will_wake(cx.waker()) {
                w.wake();
            }
        }
        Poll::Pending
    }
}

/// Sleeps until a request starts ([`Activity::note`] takes the registered waker and wakes it).
///
/// [`Activity::note`]: crate::worker::spin::Activity::note
struct Asleep<'a> {
    worker: &'a Worker,
    registered: bool,
}

impl Future for Asleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let activity = &self.worker.activity;
        let woken = self.registered && !activity.is_asleep();
        if woken || self.worker.drain.is_draining() {
            return Poll::Ready(());
        }
        activity.sleep(cx.waker());
        self.registered = true;
        Poll::Pending
    }
}
