//! Per-worker metrics: counters and latency histograms, owned by one worker (no sharing).
//!
//! Workers record on the data path into their own [`WorkerMetrics`]; the control thread
//! collects copies over the channels and merges histograms (never averaging percentiles).

use hdrhistogram::Histogram;

/// Highest latency recorded, in microseconds (1 hour); larger values are clamped.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant figures kept by the latency histograms.
pub const SIGFIG: u8 = 3;

/// Which io driver a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Legacy,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Legacy => "legacy",
        }
    }
}

/// One worker's counters and histograms.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    pub worker: usize,
    pub driver: Driver,
    /// Responses by status class: index 1..=5 for 1xx..5xx, 0 for connections closed without
    /// a response.
    pub by_class: [u64; 6],
    /// Total request latency (head parsed → last byte written), microseconds.
    pub total_us: Histogram<u64>,
    /// Upstream time (request sent → response complete), microseconds.
    pub upstream_us: Histogram<u64>,
    pub upstream_connects: u64,
    pub upstream_reuses: u64,
    pub connections_open: u64,
    pub config_generation: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG)
        .expect("static histogram bounds are valid")
}

impl WorkerMetrics {
    pub fn new(worker: usize, driver: Driver) -> Self {
        Self {
            worker,
            driver,
            by_class: [0; 6],
            total_us: histogram(),
            upstream_us: histogram(),
            upstream_connects: 0,
            upstream_reuses: 0,
            connections_open: 0,
            config_generation: 0,
        }
    }

    /// Records one finished request. `status` 0 means no response was sent.
    #[inline]
    pub fn record(&mut self, status: u16, total_us: u64, upstream_us: Option<u64>) {
        let class = usize::from(status / 100).min(5);
        self.by_class[class] += 1;
        self.total_us.saturating_record(total_us.max(1));
        if let Some(u) = upstream_us {
            self.upstream_us.saturating_record(u.max(1));
        }
    }

    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_by_class() {
        let mut m = WorkerMetrics::new(0, Driver::Legacy);
        m.record(200, 150, Some(100));
        m.record(503, 10, None);
        m.record(0, 5, None);
        assert_eq!(m.by_class, [1, 0, 1, 0, 0, 1]);
        assert_eq!(m.total_us.len(), 3);
        assert_eq!(m.upstream_us.len(), 1);
    }
}
