//! The admin HTTP listener: its own control-plane thread, never on the data path.
//!
//! - [`http`]: the small blocking HTTP/1.1 reader/writer (and client) it runs on.
//! - [`mutate`]: `/revoke` and `/routes/weights`.
//! - [`prom`]: the Prometheus exposition.
//! - [`stats`]: the `/stats` JSON and the `shardgate stats` table.
//!
//! # Endpoints
//!
//! | request            | answer |
//! |--------------------|--------|
//! | `GET /metrics`     | Prometheus text 0.0.4 of every worker's merged metrics |
//! | `GET /stats`       | JSON percentiles per route, since start and for the interval; `?reset=true` starts a new interval |
//! | `GET /config`      | the config in force, secrets redacted |
//! | `POST /reload`     | re-reads the config file: 200 `{"generation", "lowered_protection"}` (applied, with what it takes away: see `control::protection`), or 422 `{"problems": [{key, message}]}` |
//! | `POST /revoke`     | `{"jti"\|"sub", "expires_at"}`: persisted, then on every worker; 200 `{"revoked"}` once every worker has applied it, 400 naming the bad field, 500 if it cannot be persisted, 503 if a worker did not confirm in time |
//! | `PUT /routes/weights` | `{"path", "models", "targets": [{model, version, weight}]}`: rewrites the config file (comments kept; validated first, atomically) and reloads; answers like `/reload`, or 400 if it names no such route/target or zeroes the route |
//! | `GET /healthz`     | 200 while the process lives |
//! | `GET /readyz`      | 200 when every worker answers and a config is loaded; 503 once draining starts |
//!
//! `/admin/revoke` and `/admin/routes/weights` are aliases. Unknown paths get 404, a known path with another method 405 (with `Allow`), both JSON.
//! With a token configured (`admin.token`), every endpoint but `/healthz` and `/readyz`
//! (probes) needs `Authorization: Bearer <token>`; a missing or wrong one gets 401 JSON. The
//! token is compared in constant time (HMAC tags under a per-process random key).
//!
//! # Performance
//!
//! One request per connection. The listener thread only accepts; each connection is served
//! on its own short-lived thread, so a silent or slow client never delays another (a probe's
//! `/healthz` answers while other connections sit idle). Each request must arrive within
//! [`AdminLimits::request_deadline`] ([`http::REQUEST_DEADLINE`]) with a head under
//! [`http::MAX_HEAD`], and the answer is written under the same timeout. At most
//! [`AdminLimits::max_connections`] ([`MAX_CONNECTIONS`]) are served at once; a connection
//! over the cap is answered `503 {"error": "busy"}` with `Retry-After: 1` and closed (by at
//! most [`MAX_REFUSING`] refusal threads at a time; past that it is closed unanswered). The
//! workers are never touched except through their inboxes (metrics are collected by asking
//! each worker for a copy).
//!
//! The listener address and token are read at start; a reload does not move them.
// Control plane: the `/stats` interval baseline is shared by the connection threads behind a
// Mutex (never touched by a worker).
#![allow(clippy::disallowed_types)]

pub mod breakers;
pub mod http;
pub mod mutate;
pub mod prom;
pub mod stats;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use crate::config::{ConfigProblem, Snapshot};
use crate::control::{self, SharedView, ToControl};
use crate::inbox::ToWorker;
use crate::metrics::merge::Merged;
use crate::metrics::WorkerMetrics;
use http::{Request, Response};

/// The admin address of `config/demo.toml`, and `shardgate stats`' default.
pub const DEMO_ADMIN: &str = "127.0.0.1:9901";
/// How long a worker may take to answer a metrics collection.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `POST /reload` (and `/revoke`) waits for the control thread.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most admin connections served at once (one thread each).
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections over [`MAX_CONNECTIONS`] being answered 503 at once; past this they are
/// closed without an answer.
pub const MAX_REFUSING: usize = 8;
/// How long a connection over the cap may take to send its request before the 503 (reading
/// it first lets the close be a clean FIN, so the client sees the answer).
pub const REFUSE_DEADLINE: Duration = Duration::from_millis(500);
/// Stack of each connection thread (handlers are shallow; the memory is only reserved).
const CONN_STACK_BYTES: usize = 1024 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Per-connection limits of the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time for a whole request to arrive, and for the answer to be written.
    pub request_deadline: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: MAX_CONNECTIONS,
            request_deadline: http::REQUEST_DEADLINE,
        }
    }
}

/// What the admin thread works with.
pub struct AdminState {
    /// Every worker's inbox (metrics collection, readiness).
    pub workers: Vec<Sender<ToWorker>>,
    /// The control thread, for `/reload` (`None`: 503).
    pub control: Option<Sender<ToControl>>,
    /// The config in force and the last reload's outcome.
    pub view: SharedView,
    /// Bearer token required on every endpoint but the probes.
    pub token: Option<Vec<u8>>,
    /// The coordination thread, for breaker state (`None`: no breaker view).
    pub breakers: Option<Sender<crate::control::coord::ToCoord>>,
}

/// A running admin listener. Dropping it stops the thread.
pub struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Binds `listen` and starts the admin thread with the default [`AdminLimits`].
    pub fn start(listen: SocketAddr, state: AdminState) -> io::Result<Admin> {
        Self::start_with(listen, state, AdminLimits::default())
    }

    /// Binds `listen` and starts the admin thread.
    pub fn start_with(
        listen: SocketAddr,
        state: AdminState,
        limits: AdminLimits,
    ) -> io::Result<Admin> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let server = Arc::new(Server::new(state, draining.clone()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shardgate-admin".into())
            .spawn(move || accept_loop(&listener, &server, limits, &stop2))?;
        Ok(Admin {
            addr,
            stop,
            draining,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Marks the gateway as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts until `stop`: each connection on its own thread, up to the cap.
fn accept_loop(
    listener: &TcpListener,
    server: &Arc<Server>,
    limits: AdminLimits,
    stop: &AtomicBool,
) {
    let serving = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let s = match conn {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if let Some(slot) = Slot::take(&serving, limits.max_connections) {
            let server = server.clone();
            spawn_conn(move || {
                let _slot = slot;
                server.serve(s, limits.request_deadline);
            });
        } else if let Some(slot) = Slot::take(&refusing, MAX_REFUSING) {
            spawn_conn(move || {
                let _slot = slot;
                refuse_busy(s);
            });
        }
        // Else: dropped here, closed unanswered.
    }
}

/// Runs `f` on a new connection thread; if no thread can be started, `f` is dropped (its
/// connection closed, its slot given back).
fn spawn_conn(f: impl FnOnce() + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name("shardgate-admin-conn".into())
        .stack_size(CONN_STACK_BYTES)
        .spawn(f);
}

/// One of a bounded number of places; given back when dropped (also on panic).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection over the cap: reads its request (briefly, so closing does not reset
/// the connection under the answer), then 503 JSON and close.
fn refuse_busy(mut s: TcpStream) {
    let _ = http::read_request_within(&mut s, REFUSE_DEADLINE);
    let resp = Response::error(503, "busy", "too many admin connections; try again")
        .header("retry-after", "1");
    let _ = http::write_response(&mut s, &resp, false);
    let _ = s.shutdown(Shutdown::Write);
    // Whatever else the client sent is read away before the close, for the same reason.
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut sink = [0u8; 1024];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

/// Asks every worker for a copy of its metrics and waits (bounded) for the answers.
pub fn collect(workers: &[Sender<ToWorker>]) -> Vec<WorkerMetrics> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let asked = workers
        .iter()
        .filter(|w| w.send(ToWorker::Collect(tx.clone())).is_ok())
        .count();
    let deadline = Instant::now() + COLLECT_TIMEOUT;
    (0..asked)
        .map_while(|_| rx.recv_deadline(deadline).ok())
        .collect()
}

/// The admin thread's state: the request handlers.
struct Server {
    state: AdminState,
    draining: Arc<AtomicBool>,
    /// HMAC key and the tag of the configured token, for constant-time comparison.
    token: Option<(ring::hmac::Key, ring::hmac::Tag)>,
    started: Instant,
    /// The merge at the start of the current `/stats` interval (`None`: since start).
    interval: Mutex<Option<(Instant, Merged)>>,
}

impl Server {
    fn new(state: AdminState, draining: Arc<AtomicBool>) -> Server {
        let rng = ring::rand::SystemRandom::new();
        let token = state.token.as_ref().and_then(|t| {
            let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).ok()?;
            let tag = ring::hmac::sign(&key, t);
            Some((key, tag))
        });
        Server {
            token: if state.token.is_some() && token.is_none() {
                // No randomness: refuse everything rather than compare in variable time.
                Some((
                    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"unavailable"),
                    ring::hmac::sign(
                        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"x"),
                        b"never",
                    ),
                ))
            } else {
                token
            },
            state,
            draining,
            started: Instant::now(),
            interval: Mutex::new(None),
        }
    }

    fn serve(&self, mut s: TcpStream, deadline: Duration) {
        let mut head_only = false;
        let resp = match http::read_request_within(&mut s, deadline) {
            Ok(req) => {
                head_only = req.method == "HEAD";
                self.handle(&req)
            }
            Err(http::ReadError::Gone) => return,
            Err(http::ReadError::Malformed) => {
                Response::error(400, "bad_request", "malformed request")
            }
            Err(http::ReadError::TooLarge) => {
                Response::error(431, "too_large", "request head or body too large")
            }
        };
        let _ = s.set_write_timeout(Some(deadline));
        let _ = http::write_response(&mut s, &resp, head_only);
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some((key, tag)) = &self.token else {
            return true;
        };
        let presented = req
            .authorization
            .as_deref()
            .and_then(|v| v.strip_prefix(b"Bearer ".as_slice()))
            .unwrap_or(b"");
        ring::hmac::verify(key, presented, tag.as_ref()).is_ok()
    }

    fn handle(&self, req: &Request) -> Response {
        let path = match req.path.as_str() {
            "/admin/revoke" => "/revoke",
            "/admin/routes/weights" => "/routes/weights",
            p => p,
        };
        let allowed: &str = match path {
            "/metrics" | "/stats" | "/config" | "/breakers" | "/healthz" | "/readyz" => "GET",
            "/reload" | "/revoke" => "POST",
            "/routes/weights" => "PUT",
            _ => return Response::error(404, "not_found", "no such admin endpoint"),
        };
        let method_ok = req.method == allowed || (allowed == "GET" && req.method == "HEAD");
        if !method_ok {
            return Response::error(405, "method_not_allowed", "method not allowed")
                .header("allow", allowed);
        }
        let probe = matches!(path, "/healthz" | "/readyz");
        if !probe && !self.authorized(req) {
            return Response::error(401, "unauthorized", "missing or wrong admin token")
                .header("www-authenticate", "Bearer");
        }
        match path {
            "/metrics" => self.metrics(),
            "/stats" => self.stats(&req.query),
            "/config" => self.config(),
            "/breakers" => self.breakers(),
            "/reload" => self.reload(),
            "/revoke" => mutate::revoke(&self.state, req),
            "/routes/weights" => mutate::set_weights(&self.state, req),
            "/healthz" => Response::json(200, &json!({"status": "ok"})),
            _ => self.readyz(),
        }
    }

    fn breaker_rows(&self) -> Option<Vec<breakers::Row>> {
        let coord = self.state.breakers.as_ref()?;
        let snap = control::lock_view(&self.state.view).snapshot.clone();
        breakers::rows(coord, snap.as_ref())
    }

    fn breakers(&self) -> Response {
        match self.breaker_rows() {
            Some(rows) => Response::json(200, &breakers::json(&rows)),
            None => Response::error(503, "unavailable", "the coordination thread did not answer"),
        }
    }

    fn metrics(&self) -> Response {
        let merged = Merged::from_workers(collect(&self.state.workers));
        let reload = control::lock_view(&self.state.view).status.clone();
        let mut text = prom::render(
            &merged,
            &prom::Extra {
                reload: &reload,
                draining: self.draining.load(Ordering::Relaxed),
                workers_expected: self.state.workers.len(),
            },
        );
        if let Some(rows) = self.breaker_rows() {
            breakers::prometheus(&rows, &mut text);
        }
        Response {
            status: 200,
            content_type: prom::CONTENT_TYPE,
            extra_headers: Vec::new(),
            body: text.into_bytes(),
        }
    }

    fn stats(&self, query: &str) -> Response {
        let now = Instant::now();
        let merged = Merged::from_workers(collect(&self.state.workers));
        // Held across the merge so two concurrent `?reset=true` calls cut clean intervals.
        let mut base = self.interval.lock().unwrap_or_else(|p| p.into_inner());
        let (since, interval) = match &*base {
            Some((at, base)) => (*at, merged.since(base)),
            None => (self.started, merged.clone()),
        };
        let generation = control::lock_view(&self.state.view).status.generation;
        let body = json!({
            "generation": generation,
            "since_start": stats::window(&merged, now.duration_since(self.started).as_secs_f64()),
            "interval": stats::window(&interval, now.duration_since(since).as_secs_f64()),
        });
        if query.split('&').any(|kv| kv == "reset=true") {
            *base = Some((now, merged));
        }
        Response::json(200, &body)
    }

    fn config(&self) -> Response {
        let v = control::lock_view(&self.state.view);
        let snapshot = v.snapshot.as_ref().map_or(Value::Null, redacted_view);
        Response::json(
            200,
            &json!({
                "generation": v.status.generation,
                "reload_failures": v.status.failures,
                "last_reload_error": v.status.last_error,
                "reloads_refused": v.status.refused,
                "last_reload_refused": v.status.last_refused,
                "snapshot": snapshot,
            }),
        )
    }

    fn reload(&self) -> Response {
        match &self.state.control {
            Some(tx) => reload_with(tx),
            None => Response::error(503, "unavailable", "no control thread to reload with"),
        }
    }

    fn readyz(&self) -> Response {
        let draining = self.draining.load(Ordering::Relaxed);
        let loaded = control::lock_view(&self.state.view).snapshot.is_some();
        let running = if draining {
            0
        } else {
            collect(&self.state.workers).len()
        };
        let expected = self.state.workers.len();
        let ready = !draining && loaded && running == expected;
        Response::json(
            if ready { 200 } else { 503 },
            &json!({
                "ready": ready,
                "draining": draining,
                "config_loaded": loaded,
                "workers_running": running,
                "workers": expected,
            }),
        )
    }
}

/// Asks the control thread behind `tx` to reload, waiting at most [`RELOAD_TIMEOUT`]: 200
/// `{"generation", "lowered_protection": [{key, message}]}` (what the applied config takes
/// away, logged as a warning too; usually empty), 422 with the problems, or 503.
fn reload_with(tx: &Sender<ToControl>) -> Response {
    let (reply, rx) = crossbeam_channel::bounded(1);
    if tx.send(ToControl::Reload(Some(reply))).is_err() {
        return Response::error(503, "unavailable", "the control thread has stopped");
    }
    match rx.recv_timeout(RELOAD_TIMEOUT) {
        Ok(Ok(r)) => {
            let lowered: Vec<Value> = r
                .lowered
                .iter()
                .map(|l| json!({"key": l.key(), "message": l.to_string()}))
                .collect();
            Response::json(
                200,
                &json!({"generation": r.generation, "lowered_protection": lowered}),
            )
        }
        Ok(Err(e)) => invalid_config(&e.file, &e.problems),
        Err(_) => Response::error(503, "unavailable", "the control thread did not answer"),
    }
}

/// 422 `{"error": "invalid_config", "file", "problems": [{key, message}]}`.
fn invalid_config(file: &Path, problems: &[ConfigProblem]) -> Response {
    let problems: Vec<Value> = problems
        .iter()
        .map(|p| json!({"key": p.key, "message": p.message}))
        .collect();
    Response::json(
        422,
        &json!({"error": "invalid_config", "file": file.display().to_string(), "problems": problems}),
    )
}

/// The snapshot as the admin API shows it: everything an operator needs to see, and no
/// secret (upstream keys and the admin token only say whether they are set).
pub fn redacted_view(s: &Snapshot) -> Value {
    let upstreams: Vec<Value> = s
        .upstreams
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "endpoints": u.endpoints.iter().map(|e| json!({"addr": e.addr.to_string(), "host": e.host})).collect::<Vec<_>>(),
                "connect_timeout_ms": u.connect_timeout.as_millis() as u64,
                "first_byte_timeout_ms": u.first_byte_timeout.as_millis() as u64,
                "idle_timeout_ms": u.idle_timeout.as_millis() as u64,
                "pool_max_idle": u.pool_max_idle,
                "pool_idle_timeout_ms": u.pool_idle_timeout.as_millis() as u64,
                "pool_max_requests": u.pool_max_requests,
                "api_key": if u.auth_line.is_some() { "(redacted)" } else { "(none)" },
            })
        })
        .collect();
    let routes: Vec<Value> = s
        .router
        .routes()
        .iter()
        .map(|r| {
            let target = match r.target() {
                crate::route::RouteTarget::Upstream(i) => {
                    json!({"upstream": s.upstreams.get(*i).map(|u| u.name.as_str())})
                }
                crate::route::RouteTarget::Split(split) => split_view(s, split),
            };
            json!({
                "route": crate::metrics::route_label(r),
                "models": r.models().iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                "auth": r.auth(),
                "scope": r.scope(),
                "target": target,
            })
        })
        .collect();
    let l = &s.limits;
    json!({
        "generation": s.generation,
        "server": {
            "listen": s.server.listen.to_string(),
            "workers": s.server.cores.len(),
            "cores": s.server.cores,
            "driver": format!("{:?}", s.server.driver).to_lowercase(),
            "drain_timeout_ms": s.server.drain_timeout.as_millis() as u64,
        },
        "limits": {
            "max_header_bytes": l.max_header_bytes,
            "max_request_line": l.max_request_line,
            "max_headers": l.max_headers,
            "max_body_bytes": l.max_body_bytes,
            "header_read_timeout_ms": l.header_read_timeout.as_millis() as u64,
            "body_idle_timeout_ms": l.body_idle_timeout.as_millis() as u64,
            "body_read_timeout_ms": l.body_read_timeout.as_millis() as u64,
            "min_body_rate_bytes_per_s": l.min_body_rate,
            "body_rate_grace_ms": l.body_rate_grace.as_millis() as u64,
            "max_streaming_uploads": l.max_streaming_uploads,
            "keepalive_idle_timeout_ms": l.keepalive_idle_timeout.as_millis() as u64,
            "max_connections_per_worker": l.max_connections_per_worker,
        },
        "upstreams": upstreams,
        "routes": routes,
        "admin": s.admin.as_ref().map(|a| json!({
            "listen": a.listen.to_string(),
            "token": if a.token.is_some() { "(redacted)" } else { "(none)" },
        })),
        "metrics": {"per_route": s.metrics.per_route},
        "access_log": s.access_log.as_ref().map(|a| json!({
            "path": match &a.target {
                crate::config::AccessLogTarget::Stdout => "stdout".to_string(),
                crate::config::AccessLogTarget::File(p) => p.display().to_string(),
            },
            "sample_rate": a.sample_rate,
        })),
    })
}

/// A split as configured (`targets`/`fallbacks` with the operator's weights), and what it
/// resolved to: each deployment's share of its group's traffic, in percent.
fn split_view(s: &Snapshot, split: &crate::route::Split) -> Value {
    let written = |ts: &[crate::route::RawTarget]| -> Vec<Value> {
        ts.iter()
            .map(|t| json!({"model": t.model, "version": t.version, "weight": t.weight}))
            .collect()
    };
    let resolved = |ts: &[crate::route::Target]| -> Vec<Value> {
        let total: u64 = ts.iter().map(|t| t.weight.get()).sum();
        ts.iter()
            .map(|t| {
                let d = s.router.deployment(t.deployment);
                let share = if total == 0 {
                    0.0
                } else {
                    (t.weight.get() as f64 * 10_000.0 / total as f64).round() / 100.0
                };
                json!({"deployment": d.model(), "version": d.version_str(), "share_percent": share})
            })
            .collect()
    };
    let c = split.configured();
    json!({
        "targets": written(&c.targets),
        "fallbacks": written(&c.fallbacks),
        "resolved": resolved(split.targets()),
        "resolved_fallbacks": resolved(split.fallbacks()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn config_view_never_shows_secrets() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:9000"]
api_key = { value = "sk-upstream-SECRET" }
[[routes]]
path = "/v1/*rest"
upstream = "mock"
[admin]
listen = "127.0.0.1:0"
token = { value = "admin-SECRET-0123456789" }
"#;
        let s = crate::config::from_str(text, Path::new("."), 1).unwrap();
        let shown = redacted_view(&s).to_string();
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("(redacted)"));
        assert!(shown.contains("/v1/*"));
    }

    #[test]
    fn config_view_shows_split_weights_as_configured() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[deployments]]
model = "a"
version = "1.0.0"
endpoints = ["127.0.0.1:9001"]
[[deployments]]
model = "b"
version = "1.0.0"
endpoints = ["127.0.0.1:9002"]
[[deployments]]
model = "b"
version = "1.1.0"
endpoints = ["127.0.0.1:9003"]
[[routes]]
path = "/one"
targets = [{ model = "a", weight = 80 }, { model = "b", version = "^1", weight = 20 }]
fallbacks = [{ model = "b", version = "=1.0.0", weight = 3 }]
[[routes]]
path = "/all"
all_matching_versions = true
targets = [{ model = "a", weight = 1 }, { model = "b", weight = 1 }]
"#;
        let s = crate::config::from_str(text, Path::new("."), 1).unwrap();
        let v = redacted_view(&s);
        let one = &v["routes"][0]["target"];
        assert_eq!(
            one["targets"],
            json!([
                {"model": "a", "version": "*", "weight": 80},
                {"model": "b", "version": "^1", "weight": 20},
            ]),
            "{v}"
        );
        assert_eq!(
            one["fallbacks"],
            json!([{"model": "b", "version": "=1.0.0", "weight": 3}])
        );
        assert_eq!(
            one["resolved"],
            json!([
                {"deployment": "a", "version": "1.0.0", "share_percent": 80.0},
                {"deployment": "b", "version": "1.1.0", "share_percent": 20.0},
            ])
        );
        // Every matching version shares its entry's weight.
        let all = &v["routes"][1]["target"];
        assert_eq!(all["targets"][1]["weight"], 1);
        let shares: Vec<f64> = all["resolved"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["share_percent"].as_f64().unwrap())
            .collect();
        assert_eq!(shares, [50.0, 25.0, 25.0], "{all}");
        assert!(!v.to_string().contains("720720"), "{v}");
    }

    #[test]
    fn token_comparison() {
        let state = |token: Option<&str>| AdminState {
            workers: vec![],
            control: None,
            view: SharedView::default(),
            token: token.map(|t| t.as_bytes().to_vec()),
            breakers: None,
        };
        let req = |auth: Option<&str>| Request {
            method: "GET".into(),
            path: "/metrics".into(),
            authorization: auth.map(|a| a.as_bytes().to_vec()),
            ..Default::default()
        };
        let s = Server::new(state(Some("t0ken")), Arc::default());
        assert!(s.authorized(&req(Some("Bearer t0ken"))));
        assert!(!s.authorized(&req(Some("Bearer t0ke"))));
        assert!(!s.authorized(&req(Some("t0ken"))));
        assert!(!s.authorized(&req(None)));
        let open = Server::new(state(None), Arc::default());
        assert!(open.authorized(&req(None)));
    }
}
