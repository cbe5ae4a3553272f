//! The span exporter: one control-plane thread that takes the workers' span batches,
//! encodes them as OTLP protobuf and POSTs them to the collector (`[tracing] endpoint`).
//!
//! # Contract
//!
//! Spans wait in a bounded queue (`max_queue_spans`) and go out when [`EXPORT_SPANS`] have
//! gathered or `export_interval` has passed, at most [`EXPORT_SPANS`] per request, each
//! request bounded by `export_timeout` (connect, write and answer). Whatever cannot be
//! queued or exported is dropped and counted, never retried: a slow or absent collector costs
//! the workers nothing (their `try_send` fails and they count the drop, see
//! [`super::WorkerTracer`]). After a failed export the thread waits one interval before the
//! next attempt, so a collector that is down is asked once per interval.
//!
//! Dropping the [`Exporter`] (after every worker's tracer is gone) exports what is queued,
//! within one `export_timeout`, and joins the thread.

use std::io::Write as _;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use prost::Message;

use super::config::TracingSettings;
use super::otlp::{self, Clock};
use super::record::SpanBatch;
use super::tracer::{WorkerTracer, BATCH_SPANS};

/// Most spans in one export request; a full request's worth is sent without waiting for the
/// interval.
pub const EXPORT_SPANS: usize = 1024;
/// Emptied batches kept for the workers to reuse.
const SPARE_BATCHES: usize = 64;
/// Largest collector answer read (its body is not used).
const MAX_ANSWER: u64 = 64 * 1024;

/// What the exporter did, since start.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted (2xx).
    pub exported: AtomicU64,
    /// Spans dropped because the collector failed, timed out or refused them.
    pub failed: AtomicU64,
    /// Spans dropped because the exporter's queue was full.
    pub queue_full: AtomicU64,
}

/// A snapshot of [`ExportStats`] plus the workers' hand-over drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceCounters {
    pub exported: u64,
    pub failed: u64,
    /// Spans dropped on the way to the exporter (its queue or a worker's hand-over).
    pub queue_full: u64,
}

impl ExportStats {
    pub fn counters(&self) -> TraceCounters {
        TraceCounters {
            exported: self.exported.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
        }
    }
}

/// The exporter thread (see the module docs).
pub struct Exporter {
    tx: Option<Sender<SpanBatch>>,
    spare: Receiver<SpanBatch>,
    stats: Arc<ExportStats>,
    sample_ratio: f64,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts the thread for `settings` (nothing is sent before the first span).
    pub fn start(settings: &TracingSettings) -> std::io::Result<Exporter> {
        // The workers' hand-over queue holds about as many spans as the export queue.
        let batches = (settings.max_queue_spans / BATCH_SPANS).max(4);
        let (tx, rx) = crossbeam_channel::bounded(batches);
        let (spare_tx, spare) = crossbeam_channel::bounded(SPARE_BATCHES);
        let stats = Arc::new(ExportStats::default());
        let mut state = Export {
            settings: settings.clone(),
            resource: otlp::resource(&settings.service_name),
            stats: stats.clone(),
            spare: spare_tx,
            pending: Vec::new(),
            queued: 0,
            conn: None,
            body: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("shardgate-otlp".into())
            .spawn(move || state.run(rx))?;
        Ok(Exporter {
            tx: Some(tx),
            spare,
            stats,
            sample_ratio: settings.sample_ratio,
            thread: Some(thread),
        })
    }

    /// A tracer for worker `worker`.
    pub fn worker_tracer(&self, worker: usize) -> Option<WorkerTracer> {
        let seed = seed() ^ (worker as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        Some(WorkerTracer::new(
            self.tx.clone()?,
            self.spare.clone(),
            self.sample_ratio,
            seed,
            self.stats.clone(),
        ))
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 64 bits from the OS (ids must not repeat across processes), or the clock.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
}

/// The exporter thread's state.
struct Export {
    settings: TracingSettings,
    resource: opentelemetry_proto::tonic::resource::v1::Resource,
    stats: Arc<ExportStats>,
    spare: Sender<SpanBatch>,
    pending: Vec<SpanBatch>,
    queued: usize,
    /// A kept-alive connection to the collector.
    conn: Option<shardgate_http::blocking::Conn>,
    body: Vec<u8>,
}

impl Export {
    fn run(&mut self, rx: Receiver<SpanBatch>) {
        let interval = self.settings.export_interval;
        let mut next = Instant::now() + interval;
        // After a failure, nothing is sent before this (one interval).
        let mut quiet_until: Option<Instant> = None;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            let due = match rx.recv_timeout(wait) {
                Ok(batch) => {
                    self.enqueue(batch);
                    self.queued >= EXPORT_SPANS
                }
                Err(RecvTimeoutError::Timeout) => {
                    next = Instant::now() + interval;
                    true
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let quiet = quiet_until.is_some_and(|t| Instant::now() < t);
            if due && !quiet && self.queued > 0 {
                quiet_until = None;
                if !self.export_all() {
                    quiet_until = Some(Instant::now() + interval);
                }
            }
        }
        // Shutting down: what is queued gets one try.
        if self.queued > 0 && quiet_until.is_none_or(|t| Instant::now() >= t) {
            self.export_all();
        }
        let dropped = self.queued as u64;
        self.stats.failed.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Queues what fits of `batch`; the spans beyond `max_queue_spans` are dropped and counted
    /// (a worker's batch may hold more spans than a small queue: its head still goes out).
    fn enqueue(&mut self, mut batch: SpanBatch) {
        let room = self.settings.max_queue_spans.saturating_sub(self.queued);
        if batch.len() > room {
            self.stats
                .queue_full
                .fetch_add((batch.len() - room) as u64, Ordering::Relaxed);
            batch.spans.truncate(room);
        }
        if batch.is_empty() {
            self.recycle(batch);
            return;
        }
        self.queued += batch.len();
        self.pending.push(batch);
    }

    fn recycle(&self, mut batch: SpanBatch) {
        batch.clear();
        let _ = self.spare.try_send(batch);
    }

    /// Sends everything queued, [`EXPORT_SPANS`] at a time; false if a request failed (the
    /// rest is dropped and counted with it).
    fn export_all(&mut self) -> bool {
        let pending = std::mem::take(&mut self.pending);
        self.queued = 0;
        let mut ok = true;
        let mut group: Vec<SpanBatch> = Vec::new();
        let mut in_group = 0;
        for batch in pending {
            in_group += batch.len();
            group.push(batch);
            if in_group >= EXPORT_SPANS {
                ok = ok && self.export(&group, in_group);
                self.count_if_dropped(ok, in_group);
                group.drain(..).for_each(|b| self.recycle(b));
                in_group = 0;
            }
        }
        if in_group > 0 {
            ok = ok && self.export(&group, in_group);
            self.count_if_dropped(ok, in_group);
            group.drain(..).for_each(|b| self.recycle(b));
        }
        ok
    }

    fn count_if_dropped(&self, ok: bool, spans: usize) {
        let counter = if ok {
            &self.stats.exported
        } else {
            &self.stats.failed
        };
        counter.fetch_add(spans as u64, Ordering::Relaxed);
    }

    /// One export request; true when the collector answered 2xx.
    fn export(&mut self, batches: &[SpanBatch], spans: usize) -> bool {
        let request = otlp::request(&self.resource, batches, &Clock::now());
        self.body.clear();
        if request.encode(&mut self.body).is_err() {
            return false;
        }
        let deadline = Instant::now() + self.settings.export_timeout;
        match self.post(deadline) {
            Ok(status) if (200..300).contains(&status) => true,
            Ok(status) => {
                eprintln!(
                    "shardgate: tracing: {} answered {status}; {spans} spans dropped",
                    self.settings.collector
                );
                false
            }
            Err(e) => {
                self.conn = None;
                eprintln!(
                    "shardgate: tracing: cannot export to {} ({e}); {spans} spans dropped",
                    self.settings.collector
                );
                false
            }
        }
    }

    /// POSTs `self.body` on the kept-alive connection (or a new one) and reads the answer.
    fn post(&mut self, deadline: Instant) -> std::io::Result<u16> {
        let c = &self.settings.collector;
        if self.conn.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let s = TcpStream::connect_timeout(&c.addr, left.max(Duration::from_millis(1)))?;
            let _ = s.set_nodelay(true);
            self.conn = Some(shardgate_http::blocking::Conn::new(s));
        }
        let conn = self.conn.as_mut().expect("set above");
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        conn.stream.set_write_timeout(Some(left))?;
        conn.stream.set_read_timeout(Some(left))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            c.path,
            c.host,
            self.body.len()
        );
        conn.stream.write_all(head.as_bytes())?;
        conn.stream.write_all(&self.body)?;
        conn.set_deadline(Some(deadline));
        let answer = conn
            .read_response(false, 16 * 1024, MAX_ANSWER)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let close = answer
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if close {
            self.conn = None;
        }
        Ok(answer.status)
    }
}
