//! A sliding window of two counters in fixed time buckets, for the breaker's failure rate and
//! the retry budget. O(1) add, O(buckets) sum, no allocation.

use std::time::{Duration, Instant};

/// Buckets per window: the window forgets in steps of a tenth of its length.
pub(crate) const WINDOW_BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Absolute bucket number (ms since the window's epoch / bucket length).
    index: u64,
    first: u64,
    second: u64,
}

/// Counts of two things over roughly the last `window`: the current, partial bucket plus the
/// nine before it, so between 90% and 100% of the window.
#[derive(Debug, Clone)]
pub(crate) struct SlidingWindow {
    epoch: Instant,
    bucket_ms: u64,
    buckets: [Bucket; WINDOW_BUCKETS],
}

impl SlidingWindow {
    pub(crate) fn new(window: Duration, now: Instant) -> Self {
        let bucket_ms = (window.as_millis() as u64 / WINDOW_BUCKETS as u64).max(1);
        SlidingWindow {
            epoch: now,
            bucket_ms,
            buckets: [Bucket::default(); WINDOW_BUCKETS],
        }
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64 / self.bucket_ms
    }

    /// Adds to the bucket of `now`, first clearing it if it last held an older period.
    pub(crate) fn add(&mut self, now: Instant, first: u64, second: u64) {
        let index = self.bucket_index(now);
        let bucket = &mut self.buckets[(index % WINDOW_BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                first: 0,
                second: 0,
            };
        }
        bucket.first += first;
        bucket.second += second;
    }

    /// Totals of both counters over the window ending at `now`.
    pub(crate) fn sum(&self, now: Instant) -> (u64, u64) {
        let current = self.bucket_index(now);
        self.buckets
            .iter()
            .filter(|b| b.index <= current && current - b.index < WINDOW_BUCKETS as u64)
            .fold((0, 0), |(a, b), bucket| {
                (a + bucket.first, b + bucket.second)
            })
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.buckets = [Bucket::default(); WINDOW_BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_counts_older_than_the_window() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut w = SlidingWindow::new(Duration::from_secs(10), t0);
        w.add(ms(0), 5, 1);
        w.add(ms(4_500), 3, 3);
        assert_eq!(w.sum(ms(9_999)), (8, 4));
        // The first bucket (0..1000 ms) leaves the window once the 11th bucket starts.
        assert_eq!(w.sum(ms(10_000)), (3, 3));
        assert_eq!(w.sum(ms(13_999)), (3, 3));
        assert_eq!(w.sum(ms(14_000)), (0, 0));
        // A reused slot is cleared, not added to.
        w.add(ms(20_000), 1, 0);
        assert_eq!(w.sum(ms(20_000)), (1, 0));
        w.clear();
        assert_eq!(w.sum(ms(20_000)), (0, 0));
    }
}
