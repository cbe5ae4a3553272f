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
//! | `POST /reload`     | re-reads the config file: 200 `{"generation"}`, or 422 `{"problems": [{key, message}]}` |
//! | `POST /revoke`     | `{"jti"\|"sub", "expires_at"}`: persisted, then on every worker; 200 `{"revoked"}`, 400 naming the bad field, 500 if it cannot be persisted |
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
//! One request per connection, served in turn on this thread; each must arrive within
//! [`http::REQUEST_DEADLINE`] with a head under [`http::MAX_HEAD`], so a slow or hostile client
//! delays other admin calls by at most that deadline and never touches the workers. Metrics
//! are collected by asking each worker for a copy over its inbox.
//!
//! The listener address and token are read at start; a reload does not move them.

pub mod breakers;
pub mod http;
pub mod mutate;
pub mod prom;
pub mod stats;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use crate::config::{ConfigProblem, Snapshot};
use crate::control::{self, SharedView, ToControl};
use crate::metrics::merge::Merged;
use crate::metrics::WorkerMetrics;
use crate::runtime::ToWorker;
use http::{Request, Response};

/// The admin address `shardgate demo` uses when its config has no `[admin]`.
pub const DEMO_ADMIN: &str = "127.0.0.1:9901";
/// How long a worker may take to answer a metrics collection.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `POST /reload` (and `/revoke`) waits for the control thread.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Binds `listen` and starts the admin thread.
    pub fn start(listen: SocketAddr, state: AdminState) -> io::Result<Admin> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let mut server = Server::new(state, draining.clone());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shardgate-admin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(s) = conn {
                        server.serve(s);
                    }
                }
            })?;
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
    interval: Option<(Instant, Merged)>,
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
            interval: None,
        }
    }

    fn serve(&mut self, mut s: TcpStream) {
        let mut head_only = false;
        let resp = match http::read_request(&mut s) {
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

    fn handle(&mut self, req: &Request) -> Response {
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

    fn stats(&mut self, query: &str) -> Response {
        let now = Instant::now();
        let merged = Merged::from_workers(collect(&self.state.workers));
        let (since, interval) = match &self.interval {
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
            self.interval = Some((now, merged));
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
/// `{"generation"}`, 422 with the problems, or 503.
fn reload_with(tx: &Sender<ToControl>) -> Response {
    let (reply, rx) = crossbeam_channel::bounded(1);
    if tx.send(ToControl::Reload(Some(reply))).is_err() {
        return Response::error(503, "unavailable", "the control thread has stopped");
    }
    match rx.recv_timeout(RELOAD_TIMEOUT) {
        Ok(Ok(generation)) => Response::json(200, &json!({"generation": generation})),
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
                crate::route::RouteTarget::Split(split) => json!({
                    "targets": split.targets().iter().map(|t| json!({
                        "deployment": s.router.deployment(t.deployment).model(),
                        "version": s.router.deployment(t.deployment).version_str(),
                        "weight": t.weight.get(),
                    })).collect::<Vec<_>>(),
                }),
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
token = { value = "admin-SECRET" }
"#;
        let s = crate::config::from_str(text, Path::new("."), 1).unwrap();
        let shown = redacted_view(&s).to_string();
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("(redacted)"));
        assert!(shown.contains("/v1/*"));
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
