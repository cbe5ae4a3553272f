//! The per-connection loop on a worker: accept, read heads, dispatch, keep-alive.
//!
//! # Contract
//!
//! A connection serves requests one after another, in order (pipelined requests wait in the
//! read buffer and are answered in order). Each request either gets a response or, when the
//! stream cannot be trusted any more (framing error, upstream died mid-response), the
//! connection is closed. A connection idle longer than the keep-alive timeout, or idle when
//! the worker starts draining, is closed. A head that takes longer than the header-read
//! timeout gets 408 (slowloris). Over `max_connections_per_worker`, new connections get a 503
//! and are closed.
//!
//! # Memory
//!
//! A connection is served by a task as large as the deepest request path (~4.5 KB). After
//! [`conn::HIBERNATE_AFTER`] without a request that task ends and a ~0.6 KB one holds the
//! connection, with no buffers, until it is readable again (`hibernate`); its keep-alive
//! deadline is then checked with the worker's drain table (±100 ms).
//!
//! # TLS
//!
//! On the TLS listener a connection first completes its handshake on a task of its own
//! ([`handshake`]), then is served like any other: the connection type hides TLS.

pub mod handshake;

use std::rc::Rc;
use std::time::Instant;

use monoio::net::{TcpListener, TcpStream};

use crate::error::{self, GatewayError};
use crate::http::parse::{parse_request, RequestHead};
use crate::http::write::{error_response, ErrorResponse};
use crate::worker::Worker;

use crate::access_log::Fields;
use crate::conn::{self, ClientConn};
use crate::pipeline::RequestOutcome;
use crate::slot::{Facts, RequestBufs, RequestSlot};
use crate::trace::{ServerFacts, TraceId};

/// Accepts until the worker drains; `tls`: the TLS listener (see [`handshake`]).
///
/// The listening socket may be shared with another process (a binary upgrade hands it over,
/// see `upgrade`): when the drain starts, the accept in flight is cancelled and then awaited,
/// so a connection the kernel had already given it (io_uring completes an accept on its own)
/// is served here rather than leaked unanswered; the rest of the accept queue is the other
/// process's.
pub async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, tls: bool) {
    let canceller = monoio::io::Canceller::new();
    loop {
        let mut accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
        let accepted = monoio::select! {
            r = &mut accept => r,
            _ = worker.drain.stop_accepting() => {
                let _ = canceller.cancel();
                if let Ok((stream, peer)) = accept.await {
                    admit(&worker, stream, peer, tls);
                }
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => admit(&worker, stream, peer, tls),
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("shardgate-w{}: accept failed: {e}", worker.id);
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves an accepted connection, or refuses it over `max_connections_per_worker`.
fn admit(worker: &Rc<Worker>, stream: TcpStream, peer: std::net::SocketAddr, tls: bool) {
    let _ = stream.set_nodelay(true);
    let max = worker.current().limits.max_connections_per_worker;
    if worker.conns.get() >= max {
        // A TLS client could not read a plaintext 503: it is just closed.
        if !tls {
            monoio::spawn(reject_overloaded(stream));
        }
        return;
    }
    worker.conns.set(worker.conns.get() + 1);
    if tls {
        let worker = worker.clone();
        monoio::spawn(async move {
            match handshake::accept_tls(&worker, stream, peer).await {
                Some(c) => spawn_serving(worker, c),
                None => worker.conns.set(worker.conns.get() - 1),
            }
        });
    } else {
        spawn_serving(worker.clone(), ClientConn::new(stream, peer));
    }
}

async fn reject_overloaded(stream: TcpStream) {
    let mut c = ClientConn::new(stream, ([0, 0, 0, 0], 0).into());
    let e = error::OVERLOADED;
    let mut out = std::mem::take(&mut c.out);
    error_response(
        &mut out,
        &ErrorResponse {
            status: e.status,
            kind: e.kind,
            message: e.message,
            param: "",
            code: "",
            close: true,
        },
        "-",
        b"",
    );
    c.out = out;
    let _ = c.flush_out().await;
}

/// Serves `c` on a task of its own until it closes or hibernates. The task is as large as the
/// deepest request path (~4.5 KB); a hibernating connection gives it up for a small one.
fn spawn_serving(worker: Rc<Worker>, c: ClientConn) {
    monoio::spawn(async move {
        match serve(&worker, c).await {
            Served::Closed => worker.conns.set(worker.conns.get() - 1),
            Served::Idle(c, deadline) => {
                monoio::spawn(hibernate(worker, c, deadline));
            }
        }
    });
}

/// Holds an idle keep-alive connection with no buffers until its next request arrives (then
/// serves it on a new task), until the client closes, `deadline` passes or the worker drains.
///
/// An `async move` block rather than an `async fn`: an async fn's future keeps its arguments
/// apart from the locals they move into, i.e. the connection twice.
#[allow(clippy::manual_async_fn)]
fn hibernate(
    worker: Rc<Worker>,
    mut c: ClientConn,
    deadline: Instant,
) -> impl std::future::Future<Output = ()> {
    async move {
        c.hibernate();
        if c.wait_woken(&worker.drain, deadline).await {
            spawn_serving(worker, c);
        } else {
            drop(c);
            worker.conns.set(worker.conns.get() - 1);
        }
    }
}

/// How [`serve`] ended.
// Returned once, by value, as a serving task ends: boxing the connection would cost an
// allocation per hibernation for nothing.
#[allow(clippy::large_enum_variant)]
enum Served {
    Closed,
    /// No request for [`conn::HIBERNATE_AFTER`]: hibernate until the keep-alive deadline.
    Idle(ClientConn, Instant),
}

/// Serves one connection until it closes or goes idle.
async fn serve(worker: &Rc<Worker>, mut c: ClientConn) -> Served {
    loop {
        c.compact();
        if c.buffered().is_empty() {
            // (During a hand-over's grace period an idle connection waits for its next
            // request, which is answered with `Connection: close`.)
            if worker.drain.closes_idle() {
                return Served::Closed;
            }
            let idle = worker.current().limits.keepalive_idle_timeout;
            match c
                .wait_request(&worker.drain, idle, conn::HIBERNATE_AFTER)
                .await
            {
                conn::Wait::Ready => {}
                conn::Wait::Closed => return Served::Closed,
                conn::Wait::Idle(deadline) => return Served::Idle(c, deadline),
            }
        }
        let started = Instant::now();
        c.begin_request();
        let snap = worker.current();
        // The head (~2 KB of offsets) and the request's buffers are borrowed from the worker
        // only while a request is in progress, so idle keep-alive connections hold none.
        let mut slot = PooledSlot::take(worker);
        let RequestSlot { head, bufs } = &mut *slot;
        let outcome = match read_head(&mut c, &snap.limits, head, started).await {
            Ok(Some(head_len)) => {
                if !request_id_from(head, &mut c) {
                    worker.next_request_id(&mut c.request_id);
                }
                crate::pipeline::handle(worker, &snap, &mut c, head, head_len, bufs).await
            }
            // The client closed (or the connection broke) before a complete head.
            Ok(None) => return Served::Closed,
            Err(e) => {
                worker.next_request_id(&mut c.request_id);
                RequestOutcome::Reject(e)
            }
        };
        if !conclude(worker, &mut c, head, outcome, bufs, started).await {
            return Served::Closed;
        }
    }
}

/// Acts on a request's outcome: answers a rejection (closing the connection after it when the
/// error, the client or a drain says so), records the request once in the metrics and the
/// access log, and says whether the connection may serve another request.
async fn conclude(
    worker: &Worker,
    c: &mut ClientConn,
    head: &RequestHead,
    outcome: RequestOutcome,
    bufs: &mut RequestBufs,
    started: Instant,
) -> bool {
    let (status, upstream_us, keep, error) = match outcome {
        RequestOutcome::Served {
            status,
            keep_alive,
            upstream_us,
        } => (status, upstream_us, keep_alive, None),
        RequestOutcome::Reject(mut e) => {
            if !head.keep_alive || worker.drain.is_draining() {
                e = e.closing();
            }
            let sent = c
                .send_error(&e, &bufs.resp_headers, &bufs.facts.error_param)
                .await
                .is_ok();
            (e.status, None, sent && !e.close, Some(e.kind))
        }
        RequestOutcome::Close(status) => (status, None, false, None),
    };
    if !bufs.facts.trace.is_active() {
        // Refused before the pipeline read the head: a trace of its own.
        bufs.facts.trace = worker.begin_trace(None);
    }
    let done = Done {
        status,
        error,
        started,
        upstream_us,
        // The head's bytes, when the pipeline copied them (the path is an offset into them).
        path: bufs
            .head
            .get(head.path.start as usize..head.path.end as usize)
            .unwrap_or_default(),
    };
    account(worker, c, &done, &bufs.facts);
    keep
}

/// How a request ended, for [`account`].
struct Done<'a> {
    /// 0: no response was sent.
    status: u16,
    /// The gateway's own error kind, when it answered one.
    error: Option<&'static str>,
    started: Instant,
    /// Time spent on the upstream exchange.
    upstream_us: Option<u64>,
    path: &'a [u8],
}

/// Reads until a complete head is buffered. `Ok(None)`: the client closed (or the connection
/// broke) before sending a complete head; nothing to answer.
async fn read_head(
    c: &mut ClientConn,
    limits: &crate::http::Limits,
    head: &mut RequestHead,
    started: Instant,
) -> Result<Option<usize>, GatewayError> {
    let deadline = started + limits.header_read_timeout;
    loop {
        if let Some(n) = parse_request(c.buffered_mut(), limits, head)? {
            return Ok(Some(n));
        }
        match c
            .read_more_until(deadline, limits.max_header_bytes + 1)
            .await
        {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(conn::ReadError::Timeout) => return Err(error::HEADER_TIMEOUT),
            Err(conn::ReadError::Io) => return Ok(None),
        }
    }
}

/// Records a finished request in the worker's metrics, (sampled) access log and (sampled)
/// trace.
#[inline]
fn account(worker: &Worker, c: &mut ClientConn, done: &Done<'_>, facts: &Facts) {
    let (bytes_in, bytes_out) = c.tally.take_bytes();
    let deployment = c.tally.deployment.take();
    let sample = crate::metrics::Sample {
        deployment,
        route: c.tally.route,
        status: done.status,
        total_us: crate::time::micros(done.started),
        upstream_us: done.upstream_us,
        bytes_in,
        bytes_out,
    };
    worker.metrics.borrow_mut().record_sample(&sample);
    let trace_id = Some(facts.trace.ids.trace_id).filter(TraceId::is_valid);
    if let Some(log) = worker.access_log.borrow_mut().as_mut() {
        let fields = Fields {
            subject: Some(facts.subject.as_str()).filter(|s| !s.is_empty()),
            api_key: Some(facts.api_key.as_str()).filter(|s| !s.is_empty()),
            model: Some(facts.model.as_str()).filter(|s| !s.is_empty()),
            tokens: facts.tokens,
            trace_id,
            tenant: Some(facts.tenant.as_str()).filter(|s| !s.is_empty()),
            usage: facts.usage,
            cost_pico: facts.cost_pico,
        };
        log.record_with(&worker.metrics.borrow(), &c.request_id, &sample, fields);
    }
    if facts.trace.sampled {
        if let Some(t) = worker.tracer.borrow_mut().as_mut() {
            let metrics = worker.metrics.borrow();
            let span = ServerFacts {
                start: done.started,
                status: done.status,
                error: done.error,
                route: sample.route.map(|r| metrics.route_label_of(Some(r))),
                path: done.path,
                request_model: &facts.request_model,
                deployment: metrics.deployment_label_of(deployment),
                subject: &facts.subject,
                client: Some(c.peer.ip()),
                usage: facts.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            };
            t.server_span(&facts.trace, &span);
        }
    }
}

/// Most request slots (head + buffers) a worker keeps for reuse.
pub const SLOT_POOL_MAX: usize = 1024;

/// A request slot on loan from the worker's pool; returned on drop.
struct PooledSlot<'a> {
    worker: &'a Worker,
    slot: Option<Box<RequestSlot>>,
}

impl<'a> PooledSlot<'a> {
    fn take(worker: &'a Worker) -> Self {
        let slot = worker.slots.borrow_mut().pop().unwrap_or_default();
        PooledSlot {
            worker,
            slot: Some(slot),
        }
    }
}

impl std::ops::Deref for PooledSlot<'_> {
    type Target = RequestSlot;
    fn deref(&self) -> &RequestSlot {
        self.slot.as_deref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PooledSlot<'_> {
    fn deref_mut(&mut self) -> &mut RequestSlot {
        self.slot.as_deref_mut().expect("present until drop")
    }
}

impl Drop for PooledSlot<'_> {
    fn drop(&mut self) {
        let mut pool = self.worker.slots.borrow_mut();
        if let Some(mut slot) = self.slot.take().filter(|_| pool.len() < SLOT_POOL_MAX) {
            slot.bufs.reset();
            pool.push(slot);
        }
    }
}

/// Takes the client's `X-Request-Id` when it is short and printable (the head's bytes are at
/// the front of the connection buffer).
fn request_id_from(head: &RequestHead, c: &mut ClientConn) -> bool {
    let ClientConn {
        buf,
        pos,
        request_id,
        ..
    } = c;
    let Some(v) = head.header(&buf[*pos..], "x-request-id") else {
        return false;
    };
    if v.is_empty() || v.len() > 128 || !v.iter().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    // Graphic ASCII: valid UTF-8, copied without an allocation.
    let v = std::str::from_utf8(v).unwrap_or("-");
    request_id.clear();
    request_id.push_str(v);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Size of what `f` returns (an async fn's future), without calling it.
    fn future_size<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// What one connection's task holds: while a request is served, the future of the whole
    /// request path; while it hibernates, only the small one. Printed for the README's
    /// accounting (`cargo test --lib server::tests -- --nocapture`); the hibernating one is
    /// held to a budget, since 10,000 idle connections hold 10,000 of them.
    #[test]
    fn a_hibernating_connection_task_is_small() {
        let serving = std::mem::size_of::<Rc<Worker>>() + future_size(|w, c, _: ()| serve(w, c));
        let idle = future_size(hibernate);
        eprintln!(
            "serve task future: {serving} B (request path {} B, head read {} B); \
             hibernating task future: {idle} B; ClientConn: {} B",
            future_size(|w, s, (c, h, n, t)| crate::pipeline::handle(w, s, c, h, n, t)),
            future_size(|c, (l, h), t| read_head(c, l, h, t)),
            std::mem::size_of::<ClientConn>(),
        );
        assert!(idle <= 640, "hibernating task future: {idle} B");
        assert!(idle * 4 < serving);
    }
}
