//! The busy poll (`server.busy_poll_us`, issue #13): for dedicated hosts where a core per
//! worker is cheap and tail latency is not. A worker whose last request started less than the
//! budget ago keeps its thread on the CPU instead of sleeping in `io_uring_enter`, so the next
//! completion (the upstream's response, the client's next request) is reaped without a
//! scheduler wake-up.
//!
//! # How
//!
//! One task per worker, spawned only when the budget is not zero (no budget: no task, no cost).
//! While spinning it yields: monoio then has a runnable task, so instead of parking it submits
//! what is queued and reaps the completion queue (one non-blocking `io_uring_enter`, none with
//! an awake `sqpoll` thread) and runs what completed, then the spinner again. monoio runs its
//! timers only when it parks, so once per [`TIMER_PASS`] the spinner waits on a timer whose
//! deadline has already passed: the worker parks with a zero timeout, its due timers fire (the
//! inbox tick, read timeouts, quota leases), and the spin goes on. Once no request has started
//! for the budget the task sleeps until the next one starts ([`Activity::note`]).
//!
//! [`Activity::note`]: crate::worker::spin::Activity::note

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
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
    while !worker.drain.is_draining() {
        spin(&worker, budget).await;
        Asleep {
            worker: &worker,
            registered: false,
        }
        .await;
    }
}

/// Spins until no request has started for `budget`.
async fn spin(worker: &Worker, budget: Duration) {
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
            YieldNow(false).await;
        }
    }
}

/// Reschedules the task once, so the runtime reaps completions before running it again.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
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
