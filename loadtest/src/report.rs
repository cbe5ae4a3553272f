//! Results of a run: counters and latency histograms, the human table and the JSON file.
//!
//! Histograms record microseconds. Per-thread reports are merged by adding histograms
//! (never by averaging percentiles).
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Highest latency a histogram tracks (values above are clamped), in µs: 10 minutes.
const MAX_TRACKED_US: u64 = 600_000_000;
/// Significant decimal digits kept by each histogram.
const SIGFIG: u8 = 3;
/// Percentiles printed and exported.
pub const PERCENTILES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

/// Transport-level failure of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connect failed.
    Connect,
    /// A read or write failed.
    Io,
    /// The server closed the connection before the response was complete.
    Closed,
    /// The response could not be parsed.
    Parse,
    /// No complete response within the timeout.
    Timeout,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 5] = [
        Self::Connect,
        Self::Io,
        Self::Closed,
        Self::Parse,
        Self::Timeout,
    ];

    /// Name used in the table and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Io => "io",
            Self::Closed => "closed",
            Self::Parse => "parse",
            Self::Timeout => "timeout",
        }
    }
}

/// A latency histogram in µs.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, SIGFIG).expect("static bounds are valid")
}

/// Records `d` (in µs, at least 1, clamped to the tracked range).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_TRACKED_US);
    h.record(us).expect("value is clamped into range");
}

/// Everything measured after warmup.
#[derive(Debug, Clone)]
pub struct Report {
    /// Measured wall time (duration after warmup).
    pub elapsed: Duration,
    /// Completed responses (any status).
    pub completed: u64,
    /// Failed requests by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Responses that were event streams.
    pub streamed: u64,
    /// Scheduled (open loop) or actual (closed loop) send → first response byte.
    pub ttfb: Histogram<u64>,
    /// Send → first complete SSE event (streams only).
    pub first_event: Histogram<u64>,
    /// Between consecutive SSE events (streams only).
    pub event_gap: Histogram<u64>,
    /// Send → response complete.
    pub total: Histogram<u64>,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            elapsed: Duration::ZERO,
            completed: 0,
            errors: BTreeMap::new(),
            status: BTreeMap::new(),
            streamed: 0,
            ttfb: histogram(),
            first_event: histogram(),
            event_gap: histogram(),
            total: histogram(),
        }
    }
}

impl Report {
    /// Adds another thread's results (elapsed is kept as the maximum).
    pub fn merge(&mut self, other: &Report) {
        self.elapsed = self.elapsed.max(other.elapsed);
        self.completed += other.completed;
        self.streamed += other.streamed;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        for (k, v) in &other.status {
            *self.status.entry(*k).or_default() += v;
        }
        for (mine, theirs) in [
            (&mut self.ttfb, &other.ttfb),
            (&mut self.first_event, &other.first_event),
            (&mut self.event_gap, &other.event_gap),
            (&mut self.total, &other.total),
        ] {
            mine.add(theirs).expect("same bounds");
        }
    }

    /// Failed requests of all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Completed responses per second of measured time.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }

    fn histograms(&self) -> [(&'static str, &Histogram<u64>); 4] {
        [
            ("ttfb", &self.ttfb),
            ("first_event", &self.first_event),
            ("event_gap", &self.event_gap),
            ("total", &self.total),
        ]
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "completed {} in {:.2} s = {:.1} req/s ({} streamed)",
            self.completed,
            self.elapsed.as_secs_f64(),
            self.rps(),
            self.streamed
        );
        let errors: Vec<String> = ErrorKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), self.errors.get(k).copied().unwrap_or(0)))
            .collect();
        let _ = writeln!(s, "errors: {}", errors.join(", "));
        let status: Vec<String> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "status: {}", status.join(" "));
        let _ = writeln!(
            s,
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (ms)",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, h) in self.histograms() {
            if h.is_empty() {
                continue;
            }
            let _ = write!(s, "{name:<12} {:>9}", h.len());
            for p in PERCENTILES {
                let _ = write!(s, " {:>9.3}", h.value_at_percentile(p) as f64 / 1000.0);
            }
            let _ = writeln!(s, " {:>9.3}", h.max() as f64 / 1000.0);
        }
        s
    }

    /// The JSON document: the table's numbers plus each histogram serialized with the
    /// hdrhistogram V2 serializer and base64-encoded (`"hist"`), latencies in µs.
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"{{"elapsed_s":{:.6},"completed":{},"streamed":{},"rps":{:.3},"errors":{{"#,
            self.elapsed.as_secs_f64(),
            self.completed,
            self.streamed,
            self.rps()
        );
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(
                s,
                r#"{sep}"{}":{}"#,
                k.name(),
                self.errors.get(k).copied().unwrap_or(0)
            );
        }
        s.push_str(r#"},"status":{"#);
        for (i, (k, v)) in self.status.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(s, r#"{sep}"{k}":{v}"#);
        }
        s.push_str(r#"},"latency_us":{"#);
        for (i, (name, h)) in self.histograms().into_iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(s, r#"{sep}"{name}":{{"count":{}"#, h.len());
            for p in PERCENTILES {
                let _ = write!(s, r#","p{p}":{}"#, h.value_at_percentile(p));
            }
            let _ = write!(s, r#","max":{},"hist":"{}"}}"#, h.max(), encode(h));
        }
        s.push_str("}}\n");
        s
    }
}

/// V2-serialized, base64 (standard alphabet) histogram.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing to a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn records_clamped_microseconds() {
        let mut h = histogram();
        record(&mut h, Duration::from_nanos(10)); // below 1 µs → 1
        record(&mut h, Duration::from_millis(5));
        record(&mut h, Duration::from_secs(100_000)); // above range → max tracked
        assert_eq!(h.len(), 3);
        assert_eq!(h.min(), 1);
        assert!(h.equivalent(h.value_at_percentile(50.0), 5000));
        assert!(h.equivalent(h.max(), MAX_TRACKED_US));
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = Report {
            elapsed: Duration::from_secs(2),
            completed: 10,
            ..Report::default()
        };
        a.status.insert(200, 10);
        record(&mut a.total, Duration::from_millis(1));
        let mut b = Report {
            elapsed: Duration::from_secs(2),
            completed: 5,
            ..Report::default()
        };
        b.status.insert(200, 4);
        b.status.insert(503, 1);
        b.errors.insert(ErrorKind::Timeout, 2);
        record(&mut b.total, Duration::from_millis(9));
        a.merge(&b);
        assert_eq!(a.completed, 15);
        assert_eq!(a.status[&200], 14);
        assert_eq!(a.error_count(), 2);
        assert_eq!(a.total.len(), 2);
        assert!((a.rps() - 7.5).abs() < 1e-9);
    }

    #[test]
    fn json_histogram_round_trips() {
        let mut r = Report {
            elapsed: Duration::from_secs(1),
            completed: 3,
            ..Report::default()
        };
        for ms in [1, 2, 30] {
            record(&mut r.total, Duration::from_millis(ms));
        }
        let json = r.to_json();
        let mut bytes = json.clone().into_bytes();
        let v = simd_json::to_owned_value(&mut bytes).expect("valid json");
        use simd_json::prelude::*;
        let total = v
            .get("latency_us")
            .and_then(|l| l.get("total"))
            .expect("total");
        assert_eq!(total.get_u64("count"), Some(3));
        let b64 = total.get_str("hist").expect("hist");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let back: Histogram<u64> = Deserializer::new().deserialize(&mut &raw[..]).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back.max(), r.total.max());
        assert!(r.table().contains("total"));
    }
}
