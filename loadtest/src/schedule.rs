//! Open-loop timeline: when each connection must send its k-th request.
//!
//! With a total rate `R` over `C` connections, every connection sends every `C / R` seconds,
//! and connection `c` is offset by `c / R` so that the sends of all connections interleave
//! evenly (one send every `1 / R` seconds overall). The timeline is fixed in advance: a late
//! response does not push later sends back, and each request's latency is measured from its
//! *scheduled* send time (coordinated-omission correction, as wrk2 does).
use std::time::{Duration, Instant};

/// The fixed send timeline of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    first: Instant,
    /// Seconds between sends, kept as f64 so `at(k)` multiplies instead of accumulating the
    /// nanosecond rounding of a `Duration`.
    interval_s: f64,
}

impl Timeline {
    /// Timeline of connection `conn` (0-based) of `conns`, at `rate` requests/s in total,
    /// starting at `start`.
    ///
    /// # Panics
    ///
    /// When `rate` is not a positive finite number or `conns` is 0.
    pub fn new(start: Instant, rate: f64, conns: usize, conn: usize) -> Self {
        assert!(rate.is_finite() && rate > 0.0, "rate must be positive");
        assert!(conns > 0, "at least one connection");
        let offset = Duration::from_secs_f64(conn as f64 / rate);
        Self {
            first: start + offset,
            interval_s: conns as f64 / rate,
        }
    }

    /// Scheduled send time of request `k` (0-based).
    pub fn at(&self, k: u64) -> Instant {
        self.first + Duration::from_secs_f64(self.interval_s * k as f64)
    }

    /// Time between two sends of this connection.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_connections_evenly() {
        let start = Instant::now();
        // 1000 req/s over 4 connections: each sends every 4 ms, offsets 0,1,2,3 ms.
        let tl: Vec<Timeline> = (0..4).map(|c| Timeline::new(start, 1000.0, 4, c)).collect();
        assert_eq!(tl[0].interval(), Duration::from_millis(4));
        let mut sends: Vec<Duration> = tl
            .iter()
            .flat_map(|t| (0..10).map(move |k| t.at(k) - start))
            .collect();
        sends.sort();
        for (i, s) in sends.iter().enumerate() {
            let want = Duration::from_millis(i as u64);
            let diff = s.abs_diff(want);
            assert!(diff < Duration::from_micros(1), "send {i} at {s:?}");
        }
    }

    #[test]
    fn timeline_does_not_drift() {
        let start = Instant::now();
        let t = Timeline::new(start, 3.0, 1, 0);
        // 1/3 s steps: the millionth send lands on the exact multiple, no accumulated error.
        let at = t.at(3_000_000) - start;
        assert!(at.abs_diff(Duration::from_secs(1_000_000)) < Duration::from_millis(1));
    }

    #[test]
    #[should_panic(expected = "rate must be positive")]
    fn zero_rate_is_rejected() {
        let _ = Timeline::new(Instant::now(), 0.0, 1, 0);
    }
}
