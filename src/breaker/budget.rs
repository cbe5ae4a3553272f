//! The retry budget (one per worker, data path): retries may add at most `budget_ratio` of
//! the worker's recent requests, plus a small reserve so that a quiet worker can still retry.
//! A failing upstream therefore sees at most `(1 + ratio)` times the offered load plus the
//! reserve, never a retry storm.
//!
//! # When the engine may retry
//!
//! Only if [`RetryBudget::try_retry`] says yes, on another endpoint where one is available,
//! and only when one of these holds:
//!
//! - the request provably did not reach the upstream: [`Outcome::ConnectError`], or a pooled
//!   connection found closed before any request byte was written (any method);
//! - the route marks the request retryable (inference requests are not idempotent: a retried
//!   completion is billed twice) **and** no response byte has reached the client yet.
//!
//! Never after a response byte went to the client, never for [`Outcome::ClientCancelled`], and
//! never for a 4xx: the request itself was refused.
//!
//! [`Outcome::ConnectError`]: super::Outcome::ConnectError
//! [`Outcome::ClientCancelled`]: super::Outcome::ClientCancelled

use std::time::{Duration, Instant};

use super::window::SlidingWindow;
use super::RetryPolicy;

/// How far back requests earn retries, and how long the per-second reserve accumulates.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// One worker's retry budget over [`BUDGET_WINDOW`].
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Retries earned per request, in parts per million (integer: 0.29 × 100 must be 29).
    ratio_ppm: u64,
    /// Retries allowed per window regardless of traffic, this worker's share.
    reserve: u64,
    /// (requests, retries) over the window.
    window: SlidingWindow,
}

impl RetryBudget {
    /// The budget of one of `workers` workers: the ratio applies per worker as is, the
    /// `min_retries_per_sec` reserve is split across workers (rounded up).
    pub fn new(policy: &RetryPolicy, workers: u32, now: Instant) -> Self {
        let per_worker_per_sec =
            u64::from(policy.min_retries_per_sec).div_ceil(u64::from(workers.max(1)));
        RetryBudget {
            ratio_ppm: (policy.budget_ratio * 1_000_000.0).round() as u64,
            reserve: per_worker_per_sec * BUDGET_WINDOW.as_secs(),
            window: SlidingWindow::new(BUDGET_WINDOW, now),
        }
    }

    /// Counts one original request (not a retry). O(1).
    pub fn record_request(&mut self, now: Instant) {
        self.window.add(now, 1, 0);
    }

    /// Takes one retry from the budget if there is one left. O(buckets), no allocation.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.window.sum(now);
        let allowed = requests * self.ratio_ppm / 1_000_000 + self.reserve;
        if retries < allowed {
            self.window.add(now, 0, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries_granted(budget: &mut RetryBudget, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| budget.try_retry(now)).count()
    }

    #[test]
    fn retries_are_a_ratio_of_requests_plus_reserve() {
        // (ratio, min_retries_per_sec, workers, requests, retries granted out of 1000 tries)
        let table = [
            (0.2, 0, 1, 100, 20),
            (0.2, 0, 1, 4, 0),
            (0.29, 0, 1, 100, 29),
            (0.0, 1, 1, 1000, 10),
            (0.2, 10, 1, 100, 120),
            (0.2, 10, 4, 100, 50), // reserve 3/s on each of 4 workers
            (1.0, 0, 1, 7, 7),
        ];
        for (budget_ratio, min_retries_per_sec, workers, requests, want) in table {
            let t0 = Instant::now();
            let policy = RetryPolicy {
                budget_ratio,
                min_retries_per_sec,
            };
            let mut b = RetryBudget::new(&policy, workers, t0);
            for _ in 0..requests {
                b.record_request(t0);
            }
            assert_eq!(
                retries_granted(&mut b, t0, 1000),
                want,
                "{budget_ratio} {min_retries_per_sec} {workers}"
            );
        }
    }

    #[test]
    fn budget_refills_as_old_retries_leave_the_window() {
        let t0 = Instant::now();
        let policy = RetryPolicy {
            budget_ratio: 0.5,
            min_retries_per_sec: 0,
        };
        let mut b = RetryBudget::new(&policy, 1, t0);
        for _ in 0..10 {
            b.record_request(t0);
        }
        assert_eq!(retries_granted(&mut b, t0, 100), 5);
        // Later requests earn new retries; the old ones still count against the budget.
        let t1 = t0 + Duration::from_secs(5);
        for _ in 0..4 {
            b.record_request(t1);
        }
        assert_eq!(retries_granted(&mut b, t1, 100), 2);
        // Once the first second leaves the window, its requests and retries are both gone.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(
            retries_granted(&mut b, t2, 100),
            0,
            "4 requests left, 2 retries used"
        );
        for _ in 0..4 {
            b.record_request(t2);
        }
        assert_eq!(retries_granted(&mut b, t2, 100), 2);
    }
}
