//! The admin HTTP listener: its own control-plane thread, never on the data path.
//!
//! - [`http`]: the small blocking HTTP/1.1 reader/writer (and client) it runs on.
//! - [`config_view`]: `/config`, the snapshot in force without secrets.
//! - [`mutate`]: `/revoke` and `/routes/weights`.
//! - [`models`]: the model registry (`/models`, `/splits`, `/rollouts`, `/audit`), and
//!   [`models_cli`], the `shardgate models` commands over it.
//! - [`keys`]: `/keys` (API keys), and the key sets' part of `/metrics` and `/config`.
//! - [`prom`]: the Prometheus exposition.
//! - [`stats`]: the `/stats` JSON and the `shardgate stats` table.
//! - [`spend_view`]: spend by subject, tenant and model in `/stats` and `/metrics`.
//!
//! # Endpoints
//!
//! | request            | answer |
//! |--------------------|--------|
//! | `GET /metrics`     | Prometheus text 0.0.4 of every worker's merged metrics |
//! | `GET /stats`       | JSON percentiles per route, since start and for the interval; `?reset=true` starts a new interval |
//! | `GET /config`      | the config in force, secrets redacted, and `reload`: which settings a reload applies, which need a restart, and which of those changed since start (`pending_restart`) |
//! | `POST /reload`     | re-reads the config file: 200 `{"generation", "lowered_protection", "needs_restart"}` (applied, with what it takes away, see `control::protection`, and the changed settings it could not apply), or 422 `{"problems": [{key, message}]}` |
//! | `POST /revoke`     | `{"jti"\|"sub", "expires_at"}`: persisted, then on every worker; 200 `{"revoked"}` once every worker has applied it, 400 naming the bad field, 500 if it cannot be persisted, 503 if a worker did not confirm in time |
//! | `PUT /routes/weights` | `{"path", "models", "targets": [{model, version, weight}]}`: rewrites the config file (comments kept; validated first, atomically) and reloads; answers like `/reload`, or 400 if it names no such route/target or zeroes the route |
//! | `/keys...`         | API keys: list, create, disable, enable, rotate, delete (see [`keys`]) |
//! | `GET /healthz`     | 200 while the process lives |
//! | `GET /readyz`      | 200 when every worker answers and a config is loaded; 503 once draining starts |
//!
//! The model registry's endpoints (`/models/...`, `/splits`, `/rollouts`, `/audit`) are listed
//! in [`models`]; the API key endpoints (`/keys...`) in [`keys`].
//!
//! `/admin/revoke`, `/admin/routes/weights` and `/admin/keys...` are aliases (and `/admin/` before any registry path). Unknown paths get 404, a known path with another method 405 (with `Allow`), both JSON.
//! With a token configured (`admin.token`, or named ones in `admin.tokens`), every endpoint
//! but `/healthz` and `/readyz` (probes) needs `Authorization: Bearer <token>`; a missing or
//! wrong one gets 401 JSON. The token's name (`admin` for `admin.token`) is who the
//! registry's audit log records. The tokens are the ones of the config in force (the view's snapshot), read on every request, so
//! a reload that changes it applies at once. It is compared in constant time (HMAC tags
//! under a per-process random key).
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
//! The listener address is bound at start; a reload that moves it needs a restart (see
//! `config::snapshot::RESTART_ONLY`).
// Control plane: the `/stats` interval baseline is shared by the connection threads behind a
// Mutex (never touched by a worker).
#![allow(clippy::disallowed_types)]

pub mod breakers;
pub mod config_view;
pub mod http;
pub mod keys;
pub mod models;
pub mod models_cli;
pub mod mutate;
pub mod prom;
pub mod spend_view;
pub mod stats;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::poll::{poll, PollFd, PollFlags};
use serde_json::{json, Value};

use crate::config::ConfigProblem;
use crate::control::{self, SharedView, ToControl};
use crate::inbox::{ToCoord, Workers, COLLECT_TIMEOUT};
use crate::metrics::merge::Merged;
use config_view::{redacted_view, reload_coverage};
use http::{Request, Response};

/// The admin address of `config/demo.toml`, and `shardgate stats`' default.
pub const DEMO_ADMIN: &str = "127.0.0.1:9901";
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
/// How often the accept loop looks at its stop flag while no connection arrives.
const STOP_POLL: Duration = Duration::from_millis(100);
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
    pub workers: Workers,
    /// The control thread, for `/reload` (`None`: 503).
    pub control: Option<Sender<ToControl>>,
    /// The config in force (its `admin.token` is the bearer token every endpoint but the
    /// probes requires) and the last reload's outcome.
    pub view: SharedView,
    /// The coordination thread, for breaker state (`None`: no breaker view).
    pub breakers: Option<Sender<ToCoord>>,
    /// The spend thread, for spend in `/stats` and `/metrics` (`None`: not configured).
    pub spend: Option<Sender<crate::inbox::ToSpend>>,
}

/// A running admin listener. Dropping it stops the thread.
pub struct Admin {
    addr: SocketAddr,
    /// A duplicate of the listening socket, for a binary upgrade (see [`Admin::socket`]).
    socket: TcpListener,
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
        Self::start_on(TcpListener::bind(listen)?, state, limits)
    }

    /// Starts the admin thread on a bound listener (one a binary upgrade handed over).
    pub fn start_on(
        listener: TcpListener,
        state: AdminState,
        limits: AdminLimits,
    ) -> io::Result<Admin> {
        let addr = listener.local_addr()?;
        // Polled, so the loop stops without a wake-up connection (which, on a socket shared
        // with a newer process, that process could take instead).
        listener.set_nonblocking(true)?;
        let socket = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let server = Arc::new(Server::new(state, draining.clone()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shardgate-admin".into())
            .spawn(move || accept_loop(&listener, &server, limits, &stop2))?;
        Ok(Admin {
            addr,
            socket,
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

    /// A duplicate of the listening socket (the same kernel socket), to hand over.
    pub fn socket(&self) -> io::Result<TcpListener> {
        self.socket.try_clone()
    }

    /// Stops accepting (within [`STOP_POLL`]); connections already accepted are answered.
    /// The listening socket stays open while `self` lives, so a newer process that shares it
    /// takes every connection from now on.
    pub fn stop_accepting(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
    use std::os::fd::AsRawFd;
    let serving = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let timeout = STOP_POLL.as_millis() as i32;
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_raw_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            continue;
        }
        let s = match listener.accept() {
            // Accepted sockets do not inherit O_NONBLOCK on Linux; say so anyway.
            Ok((s, _)) if s.set_nonblocking(false).is_ok() => s,
            Ok(_) => continue,
            // Another process sharing the socket took it first.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
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

/// The admin thread's state: the request handlers.
struct Server {
    state: AdminState,
    draining: Arc<AtomicBool>,
    /// Per-process random HMAC key: a presented token and the configured one are compared
    /// as tags under it, in constant time. `None`: no randomness was available.
    hmac: Option<ring::hmac::Key>,
    started: Instant,
    /// The merge at the start of the current `/stats` interval (`None`: since start).
    interval: Mutex<Option<(Instant, Merged)>>,
}

impl Server {
    fn new(state: AdminState, draining: Arc<AtomicBool>) -> Server {
        let rng = ring::rand::SystemRandom::new();
        Server {
            hmac: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).ok(),
            state,
            draining,
            started: Instant::now(),
            interval: Mutex::new(None),
        }
    }

    /// The bearer tokens of the config in force, with their holders' names (empty: none).
    fn tokens(&self) -> Vec<(String, Vec<u8>)> {
        let v = control::lock_view(&self.state.view);
        let Some(admin) = v.snapshot.as_ref().and_then(|s| s.admin.as_ref()) else {
            return Vec::new();
        };
        admin
            .named_tokens()
            .into_iter()
            .map(|(n, t)| (n.to_owned(), t.to_vec()))
            .collect()
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
        self.caller(req).is_some()
    }

    /// Who sent `req`: the name of the token it presents (`anonymous` when the config sets
    /// none); `None` when it presents no configured token.
    fn caller(&self, req: &Request) -> Option<String> {
        let tokens = self.tokens();
        if tokens.is_empty() {
            return Some(ANONYMOUS.to_owned());
        }
        // No randomness: refuse everything rather than compare in variable time.
        let key = self.hmac.as_ref()?;
        let presented = req
            .authorization
            .as_deref()
            .and_then(|v| v.strip_prefix(b"Bearer ".as_slice()))
            .unwrap_or(b"");
        // Every token is compared, so the time taken does not say which one matched.
        let mut who = None;
        for (name, token) in tokens {
            let tag = ring::hmac::sign(key, &token);
            if ring::hmac::verify(key, presented, tag.as_ref()).is_ok() {
                who = Some(name);
            }
        }
        who
    }

    fn handle(&self, req: &Request) -> Response {
        let path = match req.path.as_str() {
            "/admin/revoke" => "/revoke",
            "/admin/routes/weights" => "/routes/weights",
            p => p
                .strip_prefix("/admin")
                .filter(|r| models::is_registry_path(r) || keys::owns(r))
                .unwrap_or(p),
        };
        if models::is_registry_path(path) {
            return match self.caller(req) {
                Some(who) => models::handle(&self.state, req, path, &who),
                None => unauthorized(),
            };
        }
        if keys::owns(path) {
            return match self.caller(req) {
                Some(who) => keys::handle(&self.state, req, path, &who),
                None => unauthorized(),
            };
        }
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
            return unauthorized();
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
        let merged = Merged::from_workers(self.state.workers.collect(COLLECT_TIMEOUT));
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
        if let Some((ledger, currency, cap)) = self.spend_ledger() {
            spend_view::prometheus(&ledger, &currency, cap, &mut text);
        }
        let rollouts = control::lock_view(&self.state.view).rollouts.clone();
        crate::registry::view::prometheus(&rollouts, &mut text);
        let jwks = control::lock_view(&self.state.view).jwks.clone();
        keys::prometheus(&jwks, &mut text);
        Response {
            status: 200,
            content_type: prom::CONTENT_TYPE,
            extra_headers: Vec::new(),
            body: text.into_bytes(),
        }
    }

    fn stats(&self, query: &str) -> Response {
        let now = Instant::now();
        let merged = Merged::from_workers(self.state.workers.collect(COLLECT_TIMEOUT));
        // Held across the merge so two concurrent `?reset=true` calls cut clean intervals.
        let mut base = self.interval.lock().unwrap_or_else(|p| p.into_inner());
        let (since, interval) = match &*base {
            Some((at, base)) => (*at, merged.since(base)),
            None => (self.started, merged.clone()),
        };
        let generation = control::lock_view(&self.state.view).status.generation;
        let spend = self
            .spend_ledger()
            .map_or(Value::Null, |(l, currency, cap)| {
                spend_view::json(&l, &currency, cap)
            });
        let body = json!({
            "generation": generation,
            "since_start": stats::window(&merged, now.duration_since(self.started).as_secs_f64()),
            "interval": stats::window(&interval, now.duration_since(since).as_secs_f64()),
            "spend": spend,
        });
        if query.split('&').any(|kv| kv == "reset=true") {
            *base = Some((now, merged));
        }
        Response::json(200, &body)
    }

    /// The spend thread's ledger and currency (the one the process started with), and the
    /// series cap of the config in force.
    fn spend_ledger(&self) -> Option<(crate::spend::Ledger, std::sync::Arc<str>, usize)> {
        let tx = self.state.spend.as_ref()?;
        let cap = {
            let v = control::lock_view(&self.state.view);
            let snap = v.snapshot.as_ref();
            snap.map_or(crate::metrics::counters::MAX_SERIES_PER_FAMILY, |s| {
                s.metrics.label_series
            })
        };
        let (ledger, currency) = control::spend::ledger_and_currency(tx, COLLECT_TIMEOUT)?;
        Some((ledger, currency, cap))
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
                "reload": reload_coverage(&v.status),
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
            self.state.workers.collect(COLLECT_TIMEOUT).len()
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

/// Who the audit log names when the config sets no admin token.
pub const ANONYMOUS: &str = "anonymous";

/// 401 JSON with `WWW-Authenticate: Bearer`.
fn unauthorized() -> Response {
    Response::error(401, "unauthorized", "missing or wrong admin token")
        .header("www-authenticate", "Bearer")
}

/// Asks the control thread behind `tx` to reload, waiting at most [`RELOAD_TIMEOUT`]: 200
/// [`reloaded`], 422 with the problems, or 503.
fn reload_with(tx: &Sender<ToControl>) -> Response {
    let (reply, rx) = crossbeam_channel::bounded(1);
    if tx.send(ToControl::Reload(Some(reply))).is_err() {
        return Response::error(503, "unavailable", "the control thread has stopped");
    }
    match rx.recv_timeout(RELOAD_TIMEOUT) {
        Ok(Ok(r)) => reloaded(&r),
        Ok(Err(e)) => invalid_config(&e.file, &e.problems),
        Err(_) => Response::error(503, "unavailable", "the control thread did not answer"),
    }
}

/// 200 `{"generation", "lowered_protection": [{key, message}], "needs_restart": [key]}`:
/// what the applied config takes away (logged as a warning too; usually empty), and the
/// settings it changes that only a restart applies (logged too).
fn reloaded(r: &control::Reloaded) -> Response {
    let lowered: Vec<Value> = r
        .lowered
        .iter()
        .map(|l| json!({"key": l.key(), "message": l.to_string()}))
        .collect();
    Response::json(
        200,
        &json!({
            "generation": r.generation,
            "lowered_protection": lowered,
            "needs_restart": r.needs_restart,
        }),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot whose `[admin]` has `token` (none: no token).
    fn snapshot(token: Option<&str>) -> crate::config::Snapshot {
        let token = token.map_or(String::new(), |t| {
            format!("token = {{ value = \"{t}\" }}\n")
        });
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n{token}"
        );
        crate::config::from_str(&text, std::path::Path::new("."), 1).unwrap()
    }

    #[test]
    fn the_token_is_the_one_of_the_config_in_force() {
        let view = SharedView::default();
        let s = Server::new(
            AdminState {
                workers: Workers::default(),
                control: None,
                view: view.clone(),
                breakers: None,
                spend: None,
            },
            Arc::default(),
        );
        let req = |auth: Option<&str>| Request {
            method: "GET".into(),
            path: "/metrics".into(),
            authorization: auth.map(|a| a.as_bytes().to_vec()),
            ..Default::default()
        };
        let set = |token: Option<&str>| {
            control::lock_view(&view).snapshot = Some(snapshot(token));
        };
        set(Some("t0ken-0123456789"));
        assert!(s.authorized(&req(Some("Bearer t0ken-0123456789"))));
        for wrong in [
            Some("Bearer t0ken-012345678"),
            Some("Bearer t0ken-01234567890"),
            Some("Bearer T0KEN-0123456789"),
            Some("t0ken-0123456789"),
            Some("bearer t0ken-0123456789"),
            Some("Bearer "),
            None,
        ] {
            assert!(!s.authorized(&req(wrong)), "{wrong:?}");
        }
        // A reload changes the token: the old one stops working at once.
        set(Some("another-token-abcdef"));
        assert!(!s.authorized(&req(Some("Bearer t0ken-0123456789"))));
        assert!(s.authorized(&req(Some("Bearer another-token-abcdef"))));
        // A config without a token (a loopback admin) needs none.
        set(None);
        assert!(s.authorized(&req(None)));
        assert_eq!(s.caller(&req(None)).as_deref(), Some(ANONYMOUS));
        // Named tokens: each caller is known by its token's name.
        let text =
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                    token = { value = \"t0ken-0123456789\" }\n\
                    tokens = [{ name = \"alice\", token = { value = \"alice-token-0123456\" } }]\n";
        control::lock_view(&view).snapshot =
            Some(crate::config::from_str(text, std::path::Path::new("."), 1).unwrap());
        let who = |auth: Option<&str>| s.caller(&req(auth));
        assert_eq!(
            who(Some("Bearer t0ken-0123456789")).as_deref(),
            Some("admin")
        );
        assert_eq!(
            who(Some("Bearer alice-token-0123456")).as_deref(),
            Some("alice")
        );
        for wrong in [None, Some("Bearer alice-token-012345"), Some("Bearer ")] {
            assert_eq!(who(wrong), None, "{wrong:?}");
        }
    }
}
