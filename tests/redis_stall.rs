//! A Redis that stalls (accepts connections, never answers) against the running gateway:
//! the quota's Redis I/O runs on its own thread, so the coordination thread keeps deciding
//! breakers while a Redis call hangs, and lease requests are answered by `fail_mode` once
//! their Redis call times out.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use shardgate::breaker::StateKind;
use shardgate::config;
use shardgate::runtime::Engine;
use shardgate_mock::{self as mock, MockConfig, MockHandle};

/// A TCP server that takes every connection and every byte sent to it and never answers.
struct StallingRedis {
    addr: SocketAddr,
    /// Bytes received so far (a command the client is waiting on).
    received: Arc<AtomicUsize>,
    /// Connections the client closed (it gave up waiting).
    closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StallingRedis {
    fn start() -> StallingRedis {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (received, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, c, s) = (received.clone(), closed.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    // Closing the held connections ends any Redis call still waiting on
                    // them; the listener closes with this thread, so none is taken after.
                    for c in held {
                        let _ = c.shutdown(std::net::Shutdown::Both);
                    }
                    return;
                }
                let Ok(conn) = conn else { continue };
                held.push(conn.try_clone().unwrap());
                let (r, c) = (r.clone(), c.clone());
                // Read (and count) everything; answer nothing.
                thread::spawn(move || {
                    let mut conn = conn;
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                c.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Ok(n) => {
                                r.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        StallingRedis {
            addr,
            received,
            closed,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for StallingRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mock() -> MockHandle {
    mock::spawn(MockConfig::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

/// Two workers; `/v1/chat/completions` goes to deployment `limited` on `model`, everything
/// else to upstream `up` (endpoint id 0); a Redis quota on `redis` limits model `limited`
/// (requests without a model are not limited).
fn config_text(up: SocketAddr, model: SocketAddr, redis: &str, fail_mode: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
workers = 2
pin = false
[defaults.breaker]
consecutive_failures = 3
min_calls = 1000
window_ms = 2000
open_base_ms = 60000
open_jitter = 0.0
[[upstreams]]
name = "up"
endpoints = ["{up}"]
[[deployments]]
model = "limited"
version = "1.0.0"
endpoints = ["{model}"]
[[routes]]
path = "/v1/chat/completions"
targets = [{{ model = "limited", weight = 1 }}]
[[routes]]
path = "/*rest"
upstream = "up"
[quota]
backend = "redis"
redis_url = "{redis}"
fail_mode = "{fail_mode}"
[[quota.rules]]
name = "limited"
key = "client_ip"
model = "limited"
requests_per_minute = 100
"#
    )
}

/// The engine on `text`, with every Redis call bounded by `io_timeout`.
fn gateway_with_redis_timeout(text: &str, io_timeout: Duration) -> Engine {
    let mut snap = config::from_str(text, std::path::Path::new("."), 1).unwrap();
    let redis = snap.quota.as_mut().and_then(|q| q.redis.as_mut()).unwrap();
    redis.io_timeout = io_timeout;
    Engine::start(snap).unwrap()
}

const LIMITED: &str = r#"{"model":"limited","messages":[{"role":"user","content":"hi"}]}"#;

fn limited_request(gw: SocketAddr) -> Response {
    request(
        gw,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{LIMITED}",
            LIMITED.len()
        ),
    )
}

/// Polls `cond` every 20 ms for up to `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// While a Redis call hangs (its timeout far away), an upstream's failures still open its
/// breaker on every worker: the coordination thread is not the one waiting.
#[test]
fn a_breaker_opens_while_a_redis_call_hangs() {
    let redis = StallingRedis::start();
    let (up, model) = (mock(), mock());
    up.set_fail_status(Some(503));
    let gw = gateway_with_redis_timeout(
        &config_text(up.addr(), model.addr(), &redis.url(), "fail_closed"),
        Duration::from_secs(120),
    );
    let addr = gw.local_addr();
    // The remote thread connects to Redis at once; a limited request sends a lease request.
    let leased = thread::spawn(move || limited_request(addr));
    assert!(
        eventually(Duration::from_secs(10), || redis
            .received
            .load(Ordering::Relaxed)
            > 0),
        "the gateway never talked to Redis"
    );
    // The Redis call now waits (up to 120 s) for an answer that never comes. Meanwhile the
    // upstream's 503s trip its breaker: the coordination thread decides and answers.
    let opened = eventually(Duration::from_secs(10), || {
        let _ = get(addr, "/v1/models");
        gw.breakers()
            .is_some_and(|b| b.endpoints[0].state == StateKind::Open)
    });
    assert!(opened, "the breaker did not open while Redis stalled");
    // Every worker took the decision: the gateway answers for the open endpoint itself.
    let unavailable = eventually(Duration::from_secs(5), || {
        (0..4).all(|_| {
            get(addr, "/v1/models")
                .text()
                .contains("upstream_unavailable")
        })
    });
    assert!(unavailable, "the open breaker did not reach every worker");
    // ... and all of it happened while the Redis call was still waiting.
    assert_eq!(
        redis.closed.load(Ordering::Relaxed),
        0,
        "the Redis call ended before the breaker opened"
    );
    // The lease request itself got an answer (the request's own lease wait ran out), and
    // never reached the model.
    let r = leased.join().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(model.requests(), 0);
    drop(redis);
    drop(gw);
}

/// With Redis stalled, a lease request is answered per `fail_mode` once its Redis call times
/// out: `fail_closed` rejects (429, `Retry-After: 1`), `fail_open` admits from this process's
/// own window.
#[test]
fn a_stalled_redis_answers_lease_requests_by_fail_mode() {
    for (fail_mode, status) in [("fail_closed", 429), ("fail_open", 200)] {
        let redis = StallingRedis::start();
        let (up, model) = (mock(), mock());
        let gw = gateway_with_redis_timeout(
            &config_text(up.addr(), model.addr(), &redis.url(), fail_mode),
            shardgate::quota::REDIS_IO_TIMEOUT,
        );
        for i in 0..3 {
            let r = limited_request(gw.local_addr());
            assert_eq!(r.status, status, "{fail_mode} request {i}: {}", r.text());
            if status == 429 {
                assert_eq!(r.header("retry-after"), Some("1"), "{fail_mode}");
            } else {
                assert_eq!(r.header("x-ratelimit-limit"), Some("100"), "{fail_mode}");
            }
        }
        let admitted = if status == 200 { 3 } else { 0 };
        assert_eq!(model.requests(), admitted, "{fail_mode}");
        assert!(
            redis.received.load(Ordering::Relaxed) > 0,
            "{fail_mode}: the gateway never talked to Redis"
        );
        // Unlimited requests are not held up either.
        assert_eq!(
            get(gw.local_addr(), "/v1/models").status,
            200,
            "{fail_mode}"
        );
        drop(gw);
        drop(redis);
    }
}
