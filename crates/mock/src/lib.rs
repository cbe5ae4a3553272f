//! An OpenAI-compatible mock model backend, shared by `shardgate demo` (in-process), the
//! integration tests and the `loadtest` binaries (one implementation, so every measurement
//! talks to the same upstream). It frames HTTP/1.1 with the gateway's own codec
//! (`shardgate-http`; the connection loop is `conn.rs`), so it refuses what the gateway would
//! refuse.
//!
//! # Endpoints
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions`: OpenAI-shaped JSON, or an SSE stream
//!   when the body has `"stream": true` (see [`reply`] for the exact shapes and the usage
//!   formula).
//! - `POST /v1/messages`: Anthropic's Messages API, plain or streamed with the real event
//!   sequence; requests are checked as the real API checks them (see [`anthropic`]).
//! - `POST /v1/embeddings`: one deterministic vector per input.
//! - `GET /v1/models`: the configured model name.
//! - `GET /health`: `{"status":"ok"}`.
//! - `GET /metrics`: Prometheus text with vLLM's two queue gauges:
//!   `vllm:num_requests_running` (requests being answered now, this one excluded) and
//!   `vllm:num_requests_waiting` (a knob: [`MockConfig::waiting`], [`MockHandle::set_waiting`]),
//!   for the gateway's load feed; and `mock_requests_total`, the requests served so far (this
//!   one included), for load tests that count each endpoint's share.
//! - `ANY /echo/...`: JSON of exactly what was received: method, target, every header in
//!   order (duplicates kept), the body as a string. Gateway tests use it to check header
//!   stripping/injection and body rewriting.
//! - anything else: `404` with an OpenAI-style JSON error.
//!
//! # Per-request overrides (request headers)
//!
//! | header                        | effect                                                        |
//! |-------------------------------|---------------------------------------------------------------|
//! | `x-mock-latency-ms: N`        | wait N ms before the response head (replaces latency+jitter)  |
//! | `x-mock-chunks: N`            | stream N content chunks                                       |
//! | `x-mock-gap-ms: N`            | N ms between stream events                                    |
//! | `x-mock-status: S`            | answer with status S and a JSON error body                    |
//! | `x-mock-close-after-chunks: K`| close the connection after K stream chunks (no terminator)    |
//! | `x-mock-hang: 1`              | read the request, never answer                                |
//! | `x-mock-pause-once-ms: N`     | arm a one-shot server-wide stall (see [`MockHandle::pause_once`]) |
//! | `x-mock-error-after-chunks: K`| `/v1/messages` stream: an `error` event after K deltas, then the end |
//! | `x-mock-malformed: 1`         | `/v1/messages`: 200 with a body that is not JSON               |
//! | `x-mock-unknown-event: 1`     | `/v1/messages` stream: an event of an unknown type after the first delta |
//! | `x-mock-cache-read: N`        | `/v1/messages`: `cache_read_input_tokens` N                    |
//!
//! On `/v1/messages`, `x-mock-close-after-chunks: K` cuts the stream in the middle of the event
//! after K deltas, and forced failures are Anthropic error bodies.
//!
//! # Runtime knobs
//!
//! [`MockHandle`] shares a [`Knobs`] block of atomics with every server thread, so a resilience
//! test can flip the failure mode while traffic flows and count the requests served. Atomics
//! are fine here: this is test tooling, never the gateway data path.
//!
//! # Performance
//!
//! Each server thread owns one monoio runtime (io_uring, legacy driver where io_uring is
//! unavailable) and its own `SO_REUSEPORT` listener. Connections reuse their read buffer, body
//! scratch and response buffer, so the non-streamed path allocates only inside the JSON parser
//! and for the echoed model name.
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use monoio::net::ListenerOpts;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod anthropic;
mod conn;
pub mod reply;

/// How often an idle accept loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// Listen backlog of each server thread's listener.
const LISTEN_BACKLOG: i32 = 4096;

/// Static behaviour of the mock. The `mock-upstream` binary maps its CLI flags onto this.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Model name reported by `/v1/models`, in `x-mock-model`, and when a request names none.
    pub model: String,
    /// Model version reported in the `x-mock-version` header and `/v1/models`.
    pub version: String,
    /// Delay before every response head, in milliseconds.
    pub latency_ms: u64,
    /// Extra uniform random delay in `0..=jitter_ms`, added to `latency_ms`.
    pub jitter_ms: u64,
    /// Content chunks in a streamed response.
    pub stream_chunks: u32,
    /// Delay between stream events, in milliseconds.
    pub stream_gap_ms: u64,
    /// Padding bytes appended to a non-streamed completion's content (response size knob).
    pub pad_bytes: usize,
    /// `completion_tokens` when the request has no `max_tokens`.
    pub default_completion_tokens: u64,
    /// Probability in `0.0..=1.0` that a request fails with `fail_status`.
    pub fail_rate: f64,
    /// Status of the failures drawn by `fail_rate`.
    pub fail_status: u16,
    /// Accept connections and read requests, never answer.
    pub hang: bool,
    /// Close the connection after this many stream chunks (or half the body when not
    /// streaming) without finishing the response.
    pub close_after_chunks: Option<u32>,
    /// Dimensions of each embedding vector.
    pub embedding_dims: usize,
    /// `vllm:num_requests_waiting` reported by `/metrics`.
    pub waiting: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            model: "mock-gpt".to_string(),
            version: "1.0.0".to_string(),
            latency_ms: 0,
            jitter_ms: 0,
            stream_chunks: 8,
            stream_gap_ms: 10,
            pad_bytes: 0,
            default_completion_tokens: 16,
            fail_rate: 0.0,
            fail_status: 503,
            hang: false,
            close_after_chunks: None,
            embedding_dims: 8,
            waiting: 0,
        }
    }
}

/// Runtime-adjustable state shared by the handle and every server thread.
#[derive(Debug)]
pub struct Knobs {
    stop: AtomicBool,
    requests: AtomicU64,
    /// Forced failure status for every request; 0 = none.
    fail_status: AtomicU16,
    /// Failure probability in parts per million (overrides `MockConfig::fail_rate`).
    fail_ppm: AtomicU32,
    hang: AtomicBool,
    latency_ms: AtomicU64,
    /// Armed one-shot stall, in ms; 0 = none.
    pause_once_ms: AtomicU64,
    /// End of the current server-wide stall, µs since `epoch`.
    paused_until_us: AtomicU64,
    epoch: Instant,
    /// Requests read and not yet answered.
    pub(crate) in_flight: AtomicU64,
    /// `vllm:num_requests_waiting`.
    pub(crate) waiting: AtomicU64,
}

impl Knobs {
    fn new(cfg: &MockConfig) -> Self {
        Self {
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            fail_status: AtomicU16::new(0),
            fail_ppm: AtomicU32::new((cfg.fail_rate.clamp(0.0, 1.0) * 1e6) as u32),
            hang: AtomicBool::new(cfg.hang),
            latency_ms: AtomicU64::new(cfg.latency_ms),
            pause_once_ms: AtomicU64::new(0),
            paused_until_us: AtomicU64::new(0),
            epoch: Instant::now(),
            in_flight: AtomicU64::new(0),
            waiting: AtomicU64::new(cfg.waiting),
        }
    }

    /// Arms a one-shot stall of `ms` milliseconds.
    pub(crate) fn arm_pause(&self, ms: u64) {
        self.pause_once_ms.store(ms, Ordering::Relaxed);
    }

    /// How long a request starting now must wait because of a server-wide stall. The first
    /// request to see an armed pause starts the stall; every request that starts before it
    /// ends waits until it ends, as if the whole server froze (a GC pause, a swapped page).
    pub(crate) fn stall(&self) -> Option<Duration> {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let armed = self.pause_once_ms.swap(0, Ordering::Relaxed);
        if armed > 0 {
            let until = now_us + armed * 1000;
            self.paused_until_us.fetch_max(until, Ordering::Relaxed);
        }
        let until = self.paused_until_us.load(Ordering::Relaxed);
        (until > now_us).then(|| Duration::from_micros(until - now_us))
    }
}

/// Shared state of one mock instance: immutable config plus runtime knobs.
#[derive(Debug)]
pub struct Mock {
    /// The static configuration.
    pub cfg: MockConfig,
    /// The runtime knobs.
    pub knobs: Knobs,
}

impl Mock {
    /// Wraps a config with fresh knobs (for [`serve`]).
    pub fn new(cfg: MockConfig) -> Arc<Self> {
        let knobs = Knobs::new(&cfg);
        Arc::new(Self { cfg, knobs })
    }
}

/// A running mock: its address, its knobs, its threads. Dropping it stops the server.
#[derive(Debug)]
pub struct MockHandle {
    addr: SocketAddr,
    mock: Arc<Mock>,
    threads: Vec<JoinHandle<()>>,
}

impl MockHandle {
    /// The bound address (the real port when spawned on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests served so far (every parsed request, whatever its outcome).
    pub fn requests(&self) -> u64 {
        self.mock.knobs.requests.load(Ordering::Relaxed)
    }

    /// Forces every request to fail with `status` (`None` restores normal service).
    pub fn set_fail_status(&self, status: Option<u16>) {
        self.mock
            .knobs
            .fail_status
            .store(status.unwrap_or(0), Ordering::Relaxed);
    }

    /// Sets the random failure probability (`0.0..=1.0`, status `MockConfig::fail_status`).
    pub fn set_fail_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1e6) as u32;
        self.mock.knobs.fail_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Makes new requests hang (read, never answered) or answer normally again.
    pub fn set_hang(&self, hang: bool) {
        self.mock.knobs.hang.store(hang, Ordering::Relaxed);
    }

    /// Sets the base latency before each response head.
    pub fn set_latency_ms(&self, ms: u64) {
        self.mock.knobs.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Sets the `vllm:num_requests_waiting` gauge `/metrics` reports.
    pub fn set_waiting(&self, n: u64) {
        self.mock.knobs.waiting.store(n, Ordering::Relaxed);
    }

    /// Arms a one-shot server-wide stall: the next request to arrive freezes the whole
    /// server for `ms` milliseconds (every request that starts meanwhile waits until it ends).
    pub fn pause_once(&self, ms: u64) {
        self.mock.knobs.arm_pause(ms);
    }

    /// Stops every server thread and waits for them; open connections are closed.
    pub fn stop(&mut self) {
        self.mock.knobs.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the mock on `addr` with `threads` server threads (at least one), each with its own
/// monoio runtime (io_uring, or the legacy driver where io_uring cannot start) and its own
/// `SO_REUSEPORT` listener on the same address.
///
/// # Errors
///
/// A runtime cannot be built, binding fails (address in use, permission) or a thread cannot
/// be spawned. Threads already started are stopped.
pub fn spawn(cfg: MockConfig, addr: SocketAddr, threads: usize) -> io::Result<MockHandle> {
    let mock = Mock::new(cfg);
    let mut handle = MockHandle {
        addr,
        mock: mock.clone(),
        threads: Vec::new(),
    };
    for i in 0..threads.max(1) {
        let (tx, rx) = mpsc::channel();
        let mock = mock.clone();
        let bind_addr = handle.addr;
        let t = std::thread::Builder::new()
            .name(format!("mock-{i}"))
            .spawn(move || run_thread(bind_addr, mock, tx))?;
        handle.threads.push(t);
        let bound = rx
            .recv()
            .map_err(|_| io::Error::other("mock thread died"))??;
        // Port 0 resolves on the first bind; the other threads share that port.
        handle.addr = bound;
    }
    Ok(handle)
}

fn run_thread(addr: SocketAddr, mock: Arc<Mock>, bound: mpsc::Sender<io::Result<SocketAddr>>) {
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let opts = ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(LISTEN_BACKLOG);
        let listener = monoio::net::TcpListener::bind_with_config(addr, &opts);
        match listener.and_then(|l| l.local_addr().map(|a| (l, a))) {
            Ok((l, a)) => {
                let _ = bound.send(Ok(a));
                serve(l, mock).await;
            }
            Err(e) => {
                let _ = bound.send(Err(e));
            }
        }
    });
}

/// Serves connections from `listener` on the current monoio runtime until the mock's stop
/// flag is set (by [`MockHandle::stop`]). Connection tasks are spawned on the same runtime
/// and end with it.
pub async fn serve(listener: monoio::net::TcpListener, mock: Arc<Mock>) {
    loop {
        let stopped = async {
            while !mock.knobs.stop.load(Ordering::Relaxed) {
                monoio::time::sleep(STOP_POLL).await;
            }
        };
        monoio::select! {
            _ = stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(conn::run(stream, mock.clone()));
                }
                // Out of fds or a reset before accept: back off briefly, keep serving.
                Err(_) => monoio::time::sleep(Duration::from_millis(1)).await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn start(cfg: MockConfig) -> MockHandle {
        spawn(cfg, "127.0.0.1:0".parse().unwrap(), 1).expect("mock starts")
    }

    fn client(h: &MockHandle) -> TcpStream {
        let s = TcpStream::connect(h.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Reads until the peer closes.
    fn read_all(mut s: TcpStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn pipelined_requests_answer_in_order() {
        let h = start(MockConfig::default());
        let mut s = client(&h);
        s.write_all(
            b"GET /health HTTP/1.1\r\nHost: m\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: m\r\n\r\nGET /nope HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let text = read_all(s);
        let health = text.find(r#"{"status":"ok"}"#).expect("health");
        let models = text.find(r#""id":"mock-gpt""#).expect("models");
        let missing = text.find("HTTP/1.1 404").expect("404");
        assert!(health < models && models < missing, "{text}");
        assert!(text.contains("x-mock-model: mock-gpt"));
        assert_eq!(h.requests(), 3);
    }

    #[test]
    fn echo_reports_chunked_body_and_duplicate_headers() {
        let h = start(MockConfig::default());
        let mut s = client(&h);
        s.write_all(
            b"POST /echo/a?b=1 HTTP/1.1\r\nHost: m\r\nX-A: 1\r\nX-A: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
        )
        .unwrap();
        let text = read_all(s);
        assert!(text.contains(r#""path":"/echo/a?b=1""#), "{text}");
        assert!(text.contains(r#"["X-A","1"],["X-A","2"]"#), "{text}");
        assert!(text.contains(r#""body":"abcde""#), "{text}");
    }

    #[test]
    fn streams_chunks_usage_and_done() {
        let h = start(MockConfig {
            stream_gap_ms: 1,
            ..MockConfig::default()
        });
        let mut s = client(&h);
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"content":"abcdefgh"}]}"#;
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nx-mock-chunks: 3\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let text = read_all(s);
        assert!(text.contains("content-type: text/event-stream"));
        assert!(text.contains("transfer-encoding: chunked"));
        for piece in ["tok0 ", "tok1 ", "tok2 "] {
            assert!(text.contains(piece), "{text}");
        }
        assert!(!text.contains("tok3"));
        assert!(text.contains(r#""choices":[],"usage":{"prompt_tokens":2,"completion_tokens":16"#));
        assert!(text.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"), "{text}");
    }

    #[test]
    fn pipelined_posts_with_content_length() {
        let h = start(MockConfig::default());
        let mut s = client(&h);
        let body = r#"{"model":"a","max_tokens":5,"messages":[{"content":"12345"}]}"#;
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let last = "POST /v1/embeddings HTTP/1.1\r\nHost: m\r\nConnection: close\r\nContent-Length: 11\r\n\r\n{\"input\":1}";
        s.write_all(format!("{req}{req}{last}").as_bytes()).unwrap();
        let text = read_all(s);
        let first = text.find(r#""id":"chatcmpl-mock1""#).expect("first");
        let second = text.find(r#""id":"chatcmpl-mock2""#).expect("second");
        assert!(
            first < second && text.contains(r#""object":"embedding""#),
            "{text}"
        );
        assert_eq!(
            text.matches(r#""prompt_tokens":2,"completion_tokens":5,"total_tokens":7"#)
                .count(),
            2
        );
    }

    #[test]
    fn http10_stream_ends_by_close() {
        let h = start(MockConfig {
            stream_gap_ms: 0,
            ..MockConfig::default()
        });
        let mut s = client(&h);
        let body = r#"{"stream":true}"#;
        let req = format!(
            "POST /v1/chat/completions HTTP/1.0\r\nx-mock-chunks: 1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let text = read_all(s);
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(text.contains("connection: close"));
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }

    #[test]
    fn status_override_and_bad_json() {
        let h = start(MockConfig::default());
        let mut s = client(&h);
        s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: m\r\nx-mock-status: 429\r\n\r\n")
            .unwrap();
        s.write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: m\r\nConnection: close\r\nContent-Length: 3\r\n\r\nxyz",
        )
        .unwrap();
        let text = read_all(s);
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests"), "{text}");
        assert!(text.contains("HTTP/1.1 400 Bad Request"), "{text}");
    }

    #[test]
    fn large_bodies_span_many_reads() {
        let h = start(MockConfig::default());
        let mut s = client(&h);
        let big = "y".repeat(100_000);
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: m\r\nContent-Length: {}\r\n\r\n",
            big.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        for part in big.as_bytes().chunks(30_000) {
            s.write_all(part).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        for part in big.as_bytes().chunks(40_000) {
            s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .unwrap();
            s.write_all(part).unwrap();
            s.write_all(b"\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        s.write_all(b"0\r\n\r\n").unwrap();
        let text = read_all(s);
        let body = format!(r#""body":"{big}""#);
        assert_eq!(text.matches(&body).count(), 2, "{}", &text[..200]);
    }

    #[test]
    fn close_mid_stream_stops_without_terminator() {
        let h = start(MockConfig {
            stream_gap_ms: 0,
            ..MockConfig::default()
        });
        let mut s = client(&h);
        let body = r#"{"stream":true}"#;
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: m\r\nx-mock-close-after-chunks: 2\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let text = read_all(s);
        assert!(text.contains("tok1 ") && !text.contains("tok2"), "{text}");
        assert!(!text.contains("[DONE]"));
    }

    #[test]
    fn runtime_fail_knob_and_stop() {
        let mut h = start(MockConfig::default());
        h.set_fail_status(Some(503));
        let mut s = client(&h);
        s.write_all(b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 503"));
        h.set_fail_status(None);
        s.write_all(b"GET /health HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert!(read_all(s).starts_with("HTTP/1.1 200"));
        let addr = h.addr();
        h.stop();
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn metrics_report_the_queue_gauges() {
        let h = start(MockConfig {
            waiting: 4,
            ..MockConfig::default()
        });
        let s = client(&h);
        (&s).write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let text = read_all(s);
        assert!(
            text.contains("content-type: text/plain; version=0.0.4"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vllm:num_requests_waiting gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("vllm:num_requests_waiting{model_name=\"mock-gpt\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("vllm:num_requests_running{model_name=\"mock-gpt\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("\nmock_requests_total 1\n"), "{text}");
        h.set_waiting(0);
        let s = client(&h);
        (&s).write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        assert!(read_all(s).contains("vllm:num_requests_waiting{model_name=\"mock-gpt\"} 0\n"));
    }

    #[test]
    fn pause_once_stalls_the_next_request() {
        let h = start(MockConfig::default());
        h.pause_once(150);
        let t = Instant::now();
        let s = client(&h);
        (&s).write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
        assert!(read_all(s).contains("ok"));
        assert!(t.elapsed() >= Duration::from_millis(150));
        let t = Instant::now();
        let s = client(&h);
        (&s).write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
        assert!(read_all(s).contains("ok"));
        assert!(t.elapsed() < Duration::from_millis(150));
    }
}
