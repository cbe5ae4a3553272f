//! One worker's side of tracing: ids, the sampling decision, and the batch of finished spans
//! handed to the exporter thread.
//!
//! # Contract
//!
//! [`WorkerTracer::begin`] turns a caller's `traceparent` (or its absence) into the request's
//! [`TraceCtx`]: a valid parent is continued and its sampled flag followed (parent-based);
//! otherwise a new trace starts, sampled when its id falls under the configured ratio (the
//! OpenTelemetry `TraceIdRatioBased` rule, so every gateway decides alike). Finished spans of
//! sampled requests are copied into the worker's [`SpanBatch`]; a full batch, and any batch on
//! the worker's inbox tick after [`FLUSH_INTERVAL`], goes to the exporter over a bounded
//! channel with `try_send`: when the exporter is behind, the batch is dropped and its spans
//! counted in [`WorkerTracer::dropped`]. The worker never waits and takes no lock.
//!
//! # Performance
//!
//! An unsampled request costs a header lookup, two random draws and a comparison. A sampled
//! one copies its span into the batch; batches come back from the exporter emptied
//! ([`WorkerTracer::new`]'s `spare` channel), so a warm worker allocates nothing per span.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::context::{Parent, SpanId, TraceId};
use super::export::{ExportStats, TraceCounters};
use super::record::{Events, Ids, ServerSpan, SpanBatch, SpanRecord, Text};

/// A worker sends its batch once it holds this many spans.
pub const BATCH_SPANS: usize = 256;
/// A partial batch goes out on the first inbox tick this long after the last send.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// The request's trace: its ids (trace id all zero: the request is not traced), the sampling
/// decision, and the server span's events.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceCtx {
    pub ids: Ids,
    pub sampled: bool,
    /// The caller sent a valid `traceparent` (its `tracestate` may be forwarded).
    pub continued: bool,
    /// `http.request.method` (see [`super::method_name`]).
    pub method: &'static str,
    /// The request's HTTP minor version.
    pub minor_version: u8,
    /// Events of the server span (kept only when sampled).
    pub events: Events,
}

impl TraceCtx {
    /// Whether the request takes part in tracing (its ids are set).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.ids.trace_id.is_valid()
    }

    /// Adds an event to the server span (a no-op unless sampled).
    #[inline]
    pub fn event(&mut self, name: &'static str, attr: Option<(&'static str, &'static str)>) {
        if self.sampled {
            self.events.push(super::record::Event {
                name,
                at: Instant::now(),
                attr,
            });
        }
    }
}

/// What the connection loop knows about a finished request, for its server span.
#[derive(Debug, Clone, Copy)]
pub struct ServerFacts<'a> {
    pub start: Instant,
    /// 0: no response was sent.
    pub status: u16,
    /// The gateway's own error kind, when it answered one.
    pub error: Option<&'static str>,
    /// The route's pattern (`None`: no route matched).
    pub route: Option<&'a str>,
    pub path: &'a [u8],
    pub request_model: &'a str,
    /// `model@version` of the deployment a split chose.
    pub deployment: Option<&'a str>,
    pub subject: &'a str,
    pub client: Option<std::net::IpAddr>,
    pub usage: Option<(u32, u32)>,
}

/// Sampling threshold: a new trace is sampled when its [`TraceId::sampling_value`] is below.
fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio.max(0.0) * u64::MAX as f64) as u64
    }
}

/// One worker's tracer (see the module docs).
pub struct WorkerTracer {
    tx: Sender<SpanBatch>,
    spare: Receiver<SpanBatch>,
    batch: SpanBatch,
    threshold: u64,
    /// splitmix64 state: ids need uniqueness, not secrecy; seeded from the OS per worker.
    rng: u64,
    last_flush: Instant,
    /// Spans dropped because the exporter's queue was full.
    pub dropped: u64,
    /// The exporter's counters (read when metrics are collected, never per request).
    stats: Arc<ExportStats>,
}

impl WorkerTracer {
    /// A tracer sending batches on `tx`, taking emptied ones back from `spare`.
    pub fn new(
        tx: Sender<SpanBatch>,
        spare: Receiver<SpanBatch>,
        sample_ratio: f64,
        seed: u64,
        stats: Arc<ExportStats>,
    ) -> WorkerTracer {
        WorkerTracer {
            tx,
            spare,
            batch: SpanBatch::with_capacity(BATCH_SPANS),
            threshold: threshold(sample_ratio),
            rng: seed,
            last_flush: Instant::now(),
            dropped: 0,
            stats,
        }
    }

    /// The exporter's counters (process-wide: every worker reports the same) and this
    /// worker's hand-over drops, for the metrics collection.
    pub fn counters(&self) -> (TraceCounters, u64) {
        (self.stats.counters(), self.dropped)
    }

    /// A reloaded `tracing.sample_ratio`; applies to the next request.
    pub fn set_sample_ratio(&mut self, ratio: f64) {
        self.threshold = threshold(ratio);
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A new, valid span id.
    #[inline]
    pub fn span_id(&mut self) -> SpanId {
        loop {
            let id = SpanId(self.next().to_be_bytes());
            if id.is_valid() {
                return id;
            }
        }
    }

    fn trace_id(&mut self) -> TraceId {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.next().to_be_bytes());
        id[8..].copy_from_slice(&self.next().to_be_bytes());
        // Never all zero: the high half is nonzero but with odds of 2^-64.
        if id[..8] == [0; 8] {
            id[0] = 1;
        }
        TraceId(id)
    }

    /// The trace of a request whose caller sent `parent` (a valid `traceparent`) or none.
    #[inline]
    pub fn begin(&mut self, parent: Option<Parent>) -> TraceCtx {
        let span_id = self.span_id();
        match parent {
            Some(p) => TraceCtx {
                ids: Ids {
                    trace_id: p.trace_id,
                    span_id,
                    parent_id: p.span_id,
                },
                sampled: p.sampled,
                continued: true,
                ..TraceCtx::default()
            },
            None => {
                let trace_id = self.trace_id();
                TraceCtx {
                    ids: Ids {
                        trace_id,
                        span_id,
                        parent_id: SpanId::default(),
                    },
                    sampled: trace_id.sampling_value() < self.threshold
                        || self.threshold == u64::MAX,
                    ..TraceCtx::default()
                }
            }
        }
    }

    /// Records a finished span: `fill` copies its strings into the batch and returns it.
    pub fn record(&mut self, fill: impl FnOnce(&mut SpanBatch) -> SpanRecord) {
        let span = fill(&mut self.batch);
        self.batch.spans.push(span);
        if self.batch.len() >= BATCH_SPANS {
            self.flush();
        }
    }

    /// Records the server span of a sampled request (a no-op for any other).
    pub fn server_span(&mut self, ctx: &TraceCtx, f: &ServerFacts<'_>) {
        if !ctx.sampled || !ctx.is_active() {
            return;
        }
        self.record(|b| {
            SpanRecord::Server(ServerSpan {
                ids: ctx.ids,
                start: f.start,
                end: Instant::now(),
                method: ctx.method,
                minor_version: ctx.minor_version,
                status: f.status,
                error: f.error,
                route: f.route.map_or(Text::default(), |r| b.text(r)),
                path: b.text(std::str::from_utf8(f.path).unwrap_or("")),
                request_model: b.text(f.request_model),
                deployment: f.deployment.map_or(Text::default(), |d| b.text(d)),
                subject: b.text(f.subject),
                client: f.client,
                usage: f.usage,
                events: ctx.events,
            })
        });
    }

    /// Called on the worker's inbox tick: sends a partial batch after [`FLUSH_INTERVAL`].
    pub fn tick(&mut self, now: Instant) {
        if !self.batch.is_empty() && now.duration_since(self.last_flush) >= FLUSH_INTERVAL {
            self.flush();
        }
    }

    /// Hands the batch to the exporter (never waits); a batch the exporter has no room for
    /// is dropped and counted.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.last_flush = Instant::now();
        let next = match self.spare.try_recv() {
            Ok(b) => b,
            Err(_) => SpanBatch::with_capacity(BATCH_SPANS),
        };
        let batch = std::mem::replace(&mut self.batch, next);
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(mut b)) | Err(TrySendError::Disconnected(mut b)) => {
                self.dropped += b.len() as u64;
                b.clear();
                self.batch = b;
            }
        }
    }
}

impl Drop for WorkerTracer {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::context::parse_traceparent;
    use crate::trace::record::{ClientSpan, Text};

    fn tracer(ratio: f64, capacity: usize) -> (WorkerTracer, Receiver<SpanBatch>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let (_spare_tx, spare) = crossbeam_channel::bounded(1);
        (
            WorkerTracer::new(tx, spare, ratio, 42, Default::default()),
            rx,
        )
    }

    fn client(ctx: &TraceCtx) -> SpanRecord {
        SpanRecord::Client(ClientSpan {
            ids: ctx.ids,
            start: Instant::now(),
            end: Instant::now(),
            method: "GET",
            status: 200,
            error: None,
            upstream: Text::default(),
            endpoint: None,
            attempt: 1,
            reused: false,
            events: Events::default(),
        })
    }

    #[test]
    fn a_parent_is_continued_and_its_flag_followed_whatever_the_ratio() {
        let (mut t, _rx) = tracer(0.0, 4);
        let p =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let ctx = t.begin(Some(p));
        assert_eq!(ctx.ids.trace_id, p.trace_id);
        assert_eq!(ctx.ids.parent_id, p.span_id);
        assert_ne!(ctx.ids.span_id, p.span_id);
        assert!(ctx.sampled && ctx.continued && ctx.is_active());
        t.set_sample_ratio(1.0);
        let ctx = t.begin(Some(Parent {
            sampled: false,
            ..p
        }));
        assert!(!ctx.sampled);
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        let (mut t, _rx) = tracer(0.1, 4);
        let n = 20_000;
        let sampled = (0..n).filter(|_| t.begin(None).sampled).count();
        assert!((1600..2400).contains(&sampled), "{sampled}");
        t.set_sample_ratio(0.0);
        assert!((0..1000).all(|_| !t.begin(None).sampled));
        t.set_sample_ratio(1.0);
        assert!((0..1000).all(|_| t.begin(None).sampled));
        // Ids are valid and (here) distinct.
        let a = t.begin(None);
        let b = t.begin(None);
        assert!(a.ids.trace_id.is_valid() && !a.ids.parent_id.is_valid());
        assert_ne!(a.ids.trace_id, b.ids.trace_id);
    }

    #[test]
    fn events_are_kept_only_for_sampled_requests() {
        let (mut t, _rx) = tracer(0.0, 4);
        let mut ctx = t.begin(None);
        ctx.event("e", None);
        assert_eq!(ctx.events.iter().count(), 0);
        ctx.sampled = true;
        ctx.event("e", Some(("k", "v")));
        assert_eq!(ctx.events.iter().count(), 1);
    }

    #[test]
    fn full_batches_go_out_and_a_full_queue_drops_and_counts() {
        let (mut t, rx) = tracer(1.0, 1);
        let ctx = t.begin(None);
        for _ in 0..BATCH_SPANS {
            t.record(|_| client(&ctx));
        }
        assert_eq!(rx.try_recv().unwrap().len(), BATCH_SPANS);
        for _ in 0..BATCH_SPANS * 2 {
            t.record(|_| client(&ctx));
        }
        // The first went out; the channel (capacity 1) had no room for the second.
        assert_eq!(t.dropped, BATCH_SPANS as u64);
        t.record(|_| client(&ctx));
        t.tick(Instant::now() + FLUSH_INTERVAL);
        assert_eq!(rx.try_recv().unwrap().len(), BATCH_SPANS);
        assert_eq!(t.dropped, BATCH_SPANS as u64 + 1);
    }
}
