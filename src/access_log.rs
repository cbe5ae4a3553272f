//! The access log: sampled JSON lines, formatted on the worker, written by one writer thread.
//!
//! # Contract
//!
//! Each worker owns a [`WorkerLog`]: [`WorkerLog::record`] decides by sampling
//! (`access_log.sample_rate`) whether a finished request is logged and, if so, appends one
//! JSON line to the worker's buffer. Full buffers, and any buffer on the worker's inbox tick
//! ([`WorkerLog::flush`]) and at shutdown, go to the [`Writer`] thread as one batch over a
//! bounded channel. The worker never blocks: when the writer falls behind and the channel is
//! full, the batch is dropped and counted (`dropped`), never waited for.
//!
//! A reload can move the log: a new `access_log.path` reaches the writer through its
//! [`Retarget`] handle (the control thread holds it; the file is opened on the writer thread,
//! and a path that cannot be opened is logged and the old target kept), and a new
//! `sample_rate` reaches every worker with the snapshot ([`WorkerLog::set_sample_rate`]).
//!
//! A line carries: `ts` (Unix seconds, millisecond precision), `request_id`, `route`,
//! `status` (0: closed without a response), `latency_us`, `upstream_us`, `bytes_in`,
//! `bytes_out`, and `subject`, `api_key` (the id of the API key presented, never the key),
//! `model`, `tokens` (null until the auth and usage stages fill them), and `tenant`,
//! `prompt_tokens`, `completion_tokens`, `cached_tokens` and `spend` (the response's cost in
//! `spend.currency`, a decimal with 12 places; null without a price), and `trace_id` (32 hex
//! digits; null without `[tracing]`). It never carries headers, tokens or secrets.

use std::fmt::Write as _;
use std::io::Write as _;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::{AccessLogSettings, AccessLogTarget};
use crate::metrics::{Sample, WorkerMetrics};

/// A worker sends its buffer once it holds this many bytes.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Batches waiting for the writer; past this, batches are dropped (the worker never waits).
pub const CHANNEL_BATCHES: usize = 256;
/// A worker's partial batch goes out on the first inbox tick this long after the last send.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Optional per-request fields other stages fill in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    pub subject: Option<&'a str>,
    pub api_key: Option<&'a str>,
    pub model: Option<&'a str>,
    pub tokens: Option<u64>,
    /// The request's trace (see `trace`).
    pub trace_id: Option<crate::trace::TraceId>,
    pub tenant: Option<&'a str>,
    pub usage: Option<crate::quota::usage::Usage>,
    /// The response's cost in pico-units.
    pub cost_pico: Option<u64>,
}

/// The writer thread. Dropping it (after every [`WorkerLog`] is gone) flushes and joins.
pub struct Writer {
    tx: Option<Sender<Vec<u8>>>,
    retarget: Sender<AccessLogTarget>,
    thread: Option<JoinHandle<()>>,
}

type Output = Box<dyn std::io::Write + Send>;

/// Opens `target` (a file is appended to, created if missing).
fn open(target: &AccessLogTarget) -> std::io::Result<Output> {
    Ok(match target {
        AccessLogTarget::Stdout => Box::new(std::io::stdout()),
        AccessLogTarget::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
    })
}

impl Writer {
    /// Opens the target (a file is appended to) and starts the thread.
    pub fn start(settings: &AccessLogSettings) -> std::io::Result<Writer> {
        let out = open(&settings.target)?;
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        let (retarget, targets) = crossbeam_channel::unbounded();
        let target = settings.target.clone();
        let thread = std::thread::Builder::new()
            .name("shardgate-accesslog".into())
            .spawn(move || write_loop(rx, targets, target, out))?;
        Ok(Writer {
            tx: Some(tx),
            retarget,
            thread: Some(thread),
        })
    }

    /// The handle that moves this writer to another target (for the control thread).
    pub fn retarget_handle(&self) -> Retarget {
        Retarget(self.retarget.clone())
    }

    /// A buffer for one worker.
    pub fn worker_log(&self, worker: usize, settings: &AccessLogSettings) -> Option<WorkerLog> {
        Some(WorkerLog::new(
            self.tx.clone()?,
            worker,
            settings.sample_rate,
        ))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves the [`Writer`] to another target: lines written after it arrives go there.
#[derive(Clone)]
pub struct Retarget(Sender<AccessLogTarget>);

impl Retarget {
    /// Asks the writer to write to `target` from now on (it opens it on its own thread).
    pub fn retarget(&self, target: AccessLogTarget) {
        let _ = self.0.send(target);
    }
}

fn write_loop(
    rx: Receiver<Vec<u8>>,
    targets: Receiver<AccessLogTarget>,
    mut target: AccessLogTarget,
    mut out: Output,
) {
    // Ends when every sender (the workers' logs and the Writer) is gone.
    loop {
        crossbeam_channel::select! {
            recv(rx) -> batch => match batch {
                Ok(batch) => {
                    if out.write_all(&batch).is_ok() {
                        let _ = out.flush();
                    }
                }
                Err(_) => break,
            },
            recv(targets) -> new => if let Ok(new) = new {
                if new != target {
                    match open(&new) {
                        Ok(o) => {
                            let _ = out.flush();
                            out = o;
                            target = new;
                        }
                        Err(e) => eprintln!(
                            "shardgate: access log: cannot open {} ({e}); still writing to {}",
                            describe(&new),
                            describe(&target)
                        ),
                    }
                }
            },
        }
    }
    let _ = out.flush();
}

/// `stdout` or the file's path, for a log line.
fn describe(target: &AccessLogTarget) -> String {
    match target {
        AccessLogTarget::Stdout => "stdout".into(),
        AccessLogTarget::File(p) => p.display().to_string(),
    }
}

/// One worker's access log buffer (see the module docs).
pub struct WorkerLog {
    tx: Sender<Vec<u8>>,
    buf: Vec<u8>,
    line: String,
    /// Requests are logged when the next random draw is below this (2^64 × sample_rate).
    threshold: u64,
    rng: u64,
    last_flush: std::time::Instant,
    /// Batches dropped because the writer fell behind.
    pub dropped: u64,
}

/// The draw below which a request is logged at `sample_rate`.
fn threshold(sample_rate: f64) -> u64 {
    if sample_rate >= 1.0 {
        u64::MAX
    } else {
        (sample_rate.max(0.0) * u64::MAX as f64) as u64
    }
}

impl WorkerLog {
    pub fn new(tx: Sender<Vec<u8>>, worker: usize, sample_rate: f64) -> WorkerLog {
        WorkerLog {
            tx,
            buf: Vec::with_capacity(BATCH_BYTES),
            line: String::with_capacity(256),
            threshold: threshold(sample_rate),
            rng: 0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            last_flush: std::time::Instant::now(),
            dropped: 0,
        }
    }

    /// A reloaded `access_log.sample_rate`.
    pub fn set_sample_rate(&mut self, sample_rate: f64) {
        self.threshold = threshold(sample_rate);
    }

    /// Called on the worker's inbox tick: sends a partial batch after [`FLUSH_INTERVAL`].
    pub fn tick(&mut self, now: std::time::Instant) {
        if !self.buf.is_empty() && now.duration_since(self.last_flush) >= FLUSH_INTERVAL {
            self.flush();
        }
    }

    /// xorshift64*: cheap, per worker, no shared state.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Logs `s` if sampled; the route label comes from the worker's metrics slots.
    pub fn record(&mut self, m: &WorkerMetrics, request_id: &str, s: &Sample) {
        self.record_with(m, request_id, s, Fields::default());
    }

    /// [`record`](Self::record) with the optional fields.
    pub fn record_with(&mut self, m: &WorkerMetrics, request_id: &str, s: &Sample, e: Fields) {
        if self.threshold != u64::MAX && self.next() >= self.threshold {
            return;
        }
        format_line(&mut self.line, m.route_label_of(s.route), request_id, s, e);
        self.buf.extend_from_slice(self.line.as_bytes());
        if self.buf.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Sends the buffered lines to the writer (no-op when empty).
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.last_flush = std::time::Instant::now();
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH_BYTES));
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(mut b)) | Err(TrySendError::Disconnected(mut b)) => {
                self.dropped += 1;
                b.clear();
                self.buf = b;
            }
        }
    }
}

impl Drop for WorkerLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Formats one JSON line (with its newline) into `out`.
pub fn format_line(out: &mut String, route: &str, request_id: &str, s: &Sample, e: Fields) {
    out.clear();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let _ = write!(
        out,
        "{{\"ts\":{}.{:03},\"request_id\":",
        now.as_secs(),
        now.subsec_millis()
    );
    json_str(out, request_id);
    out.push_str(",\"route\":");
    json_str(out, route);
    let _ = write!(
        out,
        ",\"status\":{},\"latency_us\":{},\"upstream_us\":",
        s.status, s.total_us
    );
    match s.upstream_us {
        Some(u) => {
            let _ = write!(out, "{u}");
        }
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{},\"subject\":",
        s.bytes_in, s.bytes_out
    );
    opt_str(out, e.subject);
    out.push_str(",\"api_key\":");
    opt_str(out, e.api_key);
    out.push_str(",\"model\":");
    opt_str(out, e.model);
    out.push_str(",\"tokens\":");
    opt_num(out, e.tokens);
    out.push_str(",\"tenant\":");
    opt_str(out, e.tenant);
    let u = e.usage;
    out.push_str(",\"prompt_tokens\":");
    opt_num(out, u.map(|u| u64::from(u.prompt_tokens)));
    out.push_str(",\"completion_tokens\":");
    opt_num(out, u.map(|u| u64::from(u.completion_tokens)));
    out.push_str(",\"cached_tokens\":");
    opt_num(out, u.map(|u| u64::from(u.cached_tokens)));
    out.push_str(",\"spend\":");
    match e.cost_pico {
        Some(c) => crate::spend::price::write_decimal(out, u128::from(c), 12),
        None => out.push_str("null"),
    }
    out.push_str(",\"trace_id\":");
    match e.trace_id {
        Some(t) => {
            out.push('"');
            // Hex digits: ASCII.
            out.push_str(std::str::from_utf8(&t.hex()).unwrap_or(""));
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str("}\n");
}

fn opt_num(out: &mut String, v: Option<u64>) {
    match v {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

fn opt_str(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

/// Writes `v` as a JSON string literal.
pub fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for ch in v.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Driver;

    fn sample() -> Sample {
        Sample {
            route: None,
            status: 200,
            total_us: 1500,
            upstream_us: Some(1200),
            deployment: None,
            bytes_in: 10,
            bytes_out: 20,
        }
    }

    #[test]
    fn line_is_valid_json_with_every_field() {
        let mut line = String::new();
        let e = Fields {
            subject: Some("alice"),
            api_key: Some("key_0123"),
            model: Some("llama3"),
            tokens: Some(42),
            trace_id: Some(crate::trace::TraceId([0xab; 16])),
            tenant: Some("acme"),
            usage: Some(crate::quota::usage::Usage::from_parts(30, 12, 20)),
            cost_pico: Some(5_615_000_000),
        };
        format_line(&mut line, "/v1/*", "ab\"c", &sample(), e);
        assert!(line.contains("\"spend\":0.005615000000,"), "{line}");
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["request_id"], "ab\"c");
        assert_eq!(v["route"], "/v1/*");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_us"], 1200);
        assert_eq!(v["tokens"], 42);
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["api_key"], "key_0123");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(
            (
                &v["prompt_tokens"],
                &v["completion_tokens"],
                &v["cached_tokens"]
            ),
            (&30.into(), &12.into(), &20.into())
        );
        format_line(&mut line, "/", "x", &sample(), Fields::default());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for field in [
            "subject",
            "api_key",
            "tenant",
            "prompt_tokens",
            "cached_tokens",
            "spend",
            "trace_id",
        ] {
            assert!(v[field].is_null(), "{field}");
        }
    }

    #[test]
    fn sampling_keeps_about_the_rate_and_batches_reach_the_writer() {
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        let m = WorkerMetrics::new(0, Driver::Legacy);
        let mut log = WorkerLog::new(tx, 0, 0.1);
        for _ in 0..10_000 {
            log.record(&m, "id", &sample());
        }
        log.flush();
        let lines: usize = rx
            .try_iter()
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .sum();
        assert!((800..1200).contains(&lines), "{lines}");
    }

    #[test]
    fn a_new_sample_rate_applies_to_the_next_request() {
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        let m = WorkerMetrics::new(0, Driver::Legacy);
        let mut log = WorkerLog::new(tx, 0, 1.0);
        let lines = |log: &mut WorkerLog| {
            for _ in 0..100 {
                log.record(&m, "id", &sample());
            }
            log.flush();
            rx.try_iter()
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .sum::<usize>()
        };
        assert_eq!(lines(&mut log), 100);
        log.set_sample_rate(0.0);
        assert_eq!(lines(&mut log), 0);
        log.set_sample_rate(1.0);
        assert_eq!(lines(&mut log), 100);
    }

    #[test]
    fn the_writer_moves_to_a_new_file_and_keeps_the_old_one_when_it_cannot() {
        let dir = std::env::temp_dir().join(format!("sg-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
        let settings = AccessLogSettings {
            target: AccessLogTarget::File(a.clone()),
            sample_rate: 1.0,
        };
        let writer = Writer::start(&settings).unwrap();
        let m = WorkerMetrics::new(0, Driver::Legacy);
        let mut log = writer.worker_log(0, &settings).unwrap();
        let lines = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        // Each batch is written before the next message is taken: wait until it is there.
        let wait = |p: &std::path::Path, n: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while lines(p) < n && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(lines(p), n, "{}", p.display());
        };
        log.record(&m, "one", &sample());
        log.flush();
        wait(&a, 1);
        let handle = writer.retarget_handle();
        handle.retarget(AccessLogTarget::File(b.clone()));
        // A directory that does not exist: logged, and the writer stays on b.
        handle.retarget(AccessLogTarget::File(dir.join("missing/c.jsonl")));
        let mut n = 0;
        while lines(&b) == 0 && n < 2000 {
            log.record(&m, "two", &sample());
            log.flush();
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(lines(&b) > 0, "the writer never moved to b");
        let on_b = lines(&b);
        log.record(&m, "three", &sample());
        log.flush();
        wait(&b, on_b + 1);
        drop(log);
        drop(writer);
        assert!(!dir.join("missing").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_channel_drops_instead_of_blocking() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let m = WorkerMetrics::new(0, Driver::Legacy);
        let mut log = WorkerLog::new(tx, 0, 1.0);
        for _ in 0..3 {
            log.record(&m, "id", &sample());
            log.flush();
        }
        assert_eq!(log.dropped, 2);
    }
}
