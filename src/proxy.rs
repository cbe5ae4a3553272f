//! Forwarding one request to an upstream and relaying the response.
//!
//! - [`pool`]: per-worker keep-alive pools.
//! - [`relay`]: response head parsing, header filtering and the streaming body relay.
//!
//! # Contract
//!
//! [`handle`] serves one parsed request on a client connection and returns whether the
//! connection may serve another. Errors before any response byte reached the client become a
//! JSON error response ([`GatewayError`]); once the response has started, an upstream failure
//! closes the client connection, so a truncated response never looks complete.
//!
//! Headers are re-serialized toward the upstream: hop-by-hop fields (and every field named in
//! `Connection`) are dropped, `X-Forwarded-For/Proto/Host` and `X-Request-Id` are set, and
//! framing is re-declared by the gateway. Bodies stream in both directions; each upstream
//! read is written to the client immediately (SSE-safe).

pub mod pool;
pub mod relay;

use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::config::{Snapshot, Upstream};
use crate::error::{self, GatewayError, UpstreamError};
use crate::http::body::ChunkedDecoder;
use crate::http::parse::{BodyFraming, RequestHead};
use crate::runtime::Worker;
use crate::server::{micros, ClientConn};
use pool::UpConn;

/// Request headers never forwarded as received: hop-by-hop fields, framing (re-declared by
/// the gateway) and the fields the gateway sets itself.
const DROP_REQUEST_HEADERS: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authorization",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"trailer",
    b"content-length",
    b"host",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
];

/// Most attempts to reach an endpoint of one upstream when connecting fails.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;
/// Request bodies up to this size that are already buffered go out with the head in one write
/// (and can be replayed on a fresh connection).
pub const INLINE_BODY: usize = 64 * 1024;

/// What a finished exchange tells the connection loop.
pub struct Done {
    pub status: u16,
    pub keep_alive: bool,
    pub upstream_us: Option<u64>,
}

/// Serves one request (see the module docs). Returns whether to keep the connection.
pub async fn handle(
    worker: &Rc<Worker>,
    snap: &Snapshot,
    c: &mut ClientConn,
    head: &RequestHead,
    head_len: usize,
    started: Instant,
) -> bool {
    let route = match snap.route(&head.method, head.path.get(c.buffered())) {
        Ok(r) => r,
        Err(m) => {
            let mut allow = Vec::new();
            let e = match m {
                None => error::NOT_FOUND,
                Some(r) => {
                    allow.extend_from_slice(b"allow: ");
                    for (i, m) in r.methods.iter().enumerate() {
                        let _ = write!(allow, "{}{}", if i > 0 { ", " } else { "" }, m);
                    }
                    allow.extend_from_slice(b"\r\n");
                    error::METHOD_NOT_ALLOWED
                }
            };
            return respond_error(worker, c, head, head_len, e, &allow, started).await;
        }
    };
    c.tally.route = crate::metrics::route_index(snap, route);
    let upstream = &snap.upstreams[route.upstream];
    match forward(worker, c, head, head_len, upstream, snap).await {
        Ok(done) => {
            crate::server::account(worker, c, done.status, started, done.upstream_us);
            done.keep_alive
        }
        Err(Failure::Respond(e)) => respond_error(worker, c, head, 0, e, b"", started).await,
        Err(Failure::Close(status)) => {
            crate::server::account(worker, c, status, started, None);
            false
        }
    }
}

/// Answers with an error. `head_len` > 0 means the request (head and body) is still unread in
/// the buffer: it is skipped when the whole body is buffered, otherwise the connection closes.
async fn respond_error(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    head: &RequestHead,
    head_len: usize,
    mut e: GatewayError,
    extra: &[u8],
    started: Instant,
) -> bool {
    if head_len > 0 {
        let body = match head.framing {
            BodyFraming::None => Some(0),
            BodyFraming::Length(n) => usize::try_from(n)
                .ok()
                .filter(|n| head_len + n <= c.buffered().len()),
            BodyFraming::Chunked => None,
        };
        match body {
            Some(n) => c.consume(head_len + n),
            None => e = e.closing(),
        }
    }
    if !head.keep_alive || worker.drain.is_draining() {
        e = e.closing();
    }
    let sent = c.send_error(&e, extra).await.is_ok();
    crate::server::account(worker, c, e.status, started, None);
    sent && !e.close
}

/// How an exchange failed.
enum Failure {
    /// Nothing was sent to the client yet: answer with this error.
    Respond(GatewayError),
    /// The response had started (or the client is gone): close. Carries the status for metrics.
    Close(u16),
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Respond(e.into())
    }
}

async fn forward(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    head: &RequestHead,
    head_len: usize,
    upstream: &Upstream,
    snap: &Snapshot,
) -> Result<Done, Failure> {
    let mut up_out = std::mem::take(&mut c.up_out);
    up_out.clear();
    write_upstream_head(&mut up_out, c, head, upstream);
    let is_head = head.method == http::Method::HEAD;
    let client_minor = head.minor_version;
    let client_keep = head.keep_alive;
    let framing = head.framing;
    if head.expect_continue && framing != BodyFraming::None {
        c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if c.flush_out().await.is_err() {
            c.up_out = up_out;
            return Err(Failure::Close(0));
        }
    }
    c.consume(head_len);
    // A small body that is already here travels with the head, so the request is replayable.
    let inline = match framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) => {
            let n = n as usize;
            let whole = n <= INLINE_BODY && c.buffered().len() >= n;
            if whole {
                up_out.extend_from_slice(&c.buffered()[..n]);
                c.consume(n);
            }
            whole
        }
        BodyFraming::Chunked => false,
    };
    let idempotent = matches!(
        head.method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
    );

    let sent_at = Instant::now();
    let mut attempt = 0;
    let (mut up, first) = loop {
        attempt += 1;
        let mut up = match acquire(worker, upstream).await {
            Ok(u) => u,
            Err(e) => {
                c.up_out = up_out;
                return Err(e.into());
            }
        };
        let (res, buf) = up.stream.write_all(up_out).await;
        up_out = buf;
        let sent = res.is_ok();
        if sent && !inline {
            if let Err(f) = stream_body(c, &mut up, framing, snap).await {
                c.up_out = up_out;
                return Err(f);
            }
        }
        let first = if sent {
            relay::read_response_head(&mut up, upstream.first_byte_timeout).await
        } else {
            Err(UpstreamError::ClosedBeforeResponse)
        };
        match first {
            Ok(h) => break (up, h),
            // A reused connection that died before answering: the upstream closed it while
            // our request was in flight. Replaying is safe only for idempotent requests we
            // still hold whole.
            Err(UpstreamError::ClosedBeforeResponse)
                if up.reused && inline && idempotent && attempt == 1 =>
            {
                continue
            }
            Err(e) => {
                c.up_out = up_out;
                return Err(e.into());
            }
        }
    };
    c.up_out = up_out;
    let keep_client = client_keep && !worker.drain.is_draining();
    let ctx = relay::RelayCtx {
        is_head,
        client_minor,
        keep_client,
        request_id: &c.request_id,
    };
    let plan =
        relay::write_client_head(&mut c.out, &up.buf, &first, &ctx).map_err(Failure::from)?;
    up.buf.drain(..first.head_len);
    let status = first.status;
    match relay::relay_body(c, &mut up, &plan, upstream.idle_timeout).await {
        Ok(()) => {}
        Err(_) => return Err(Failure::Close(status)),
    }
    let upstream_us = Some(micros(sent_at));
    if plan.upstream_reusable {
        up.served += 1;
        if up.served < upstream.pool_max_requests {
            worker.pools.borrow_mut().put(up, upstream.pool_max_idle);
        }
    }
    Ok(Done {
        status,
        keep_alive: plan.keep_client,
        upstream_us,
    })
}

/// A pooled connection to one of the upstream's endpoints, or a new one. Connect failures
/// move on to the next endpoint (nothing was sent, so this is always safe).
async fn acquire(worker: &Rc<Worker>, upstream: &Upstream) -> Result<UpConn, UpstreamError> {
    let n = upstream.endpoints.len();
    let start = worker.rr.get();
    worker.rr.set(start.wrapping_add(1));
    let mut last = UpstreamError::ConnectFailed;
    for i in 0..n.min(MAX_CONNECT_ATTEMPTS) {
        let ep = &upstream.endpoints[(start + i) % n];
        if let Some(c) = worker.pools.borrow_mut().take(
            ep.addr,
            upstream.pool_idle_timeout,
            upstream.pool_max_requests,
        ) {
            worker.metrics.borrow_mut().upstream_reuses += 1;
            return Ok(c);
        }
        match monoio::time::timeout(upstream.connect_timeout, TcpStream::connect_addr(ep.addr))
            .await
        {
            Ok(Ok(s)) => {
                worker.metrics.borrow_mut().upstream_connects += 1;
                return Ok(UpConn::new(s, ep.addr));
            }
            Ok(Err(_)) => last = UpstreamError::ConnectFailed,
            Err(_) => last = UpstreamError::ConnectTimeout,
        }
    }
    Err(last)
}

/// Serializes the request head toward the upstream.
fn write_upstream_head(out: &mut Vec<u8>, c: &ClientConn, head: &RequestHead, upstream: &Upstream) {
    let buf = c.buffered();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.get(buf));
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    // Round-robin picks the endpoint later; all endpoints of an upstream share the Host value
    // unless configured per endpoint, so the first is used for the head.
    out.extend_from_slice(upstream.endpoints[0].host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut xff: Option<&[u8]> = None;
    for (name, value) in head.headers(buf) {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff = Some(value);
        }
        if DROP_REQUEST_HEADERS
            .iter()
            .any(|d| name.eq_ignore_ascii_case(d))
            || (upstream.auth_line.is_some() && name.eq_ignore_ascii_case(b"authorization"))
            || head.listed_in_connection(buf, name)
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = xff {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}\r\nx-forwarded-proto: http\r\n", c.peer.ip());
    if let Some(h) = head.host {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(h.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "x-request-id: {}\r\n", c.request_id);
    match head.framing {
        BodyFraming::None => {
            if matches!(
                head.method,
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            ) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        BodyFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if let Some(line) = &upstream.auth_line {
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\r\n");
}

/// Streams the request body from the client to the upstream as it arrives.
async fn stream_body(
    c: &mut ClientConn,
    up: &mut UpConn,
    framing: BodyFraming,
    snap: &Snapshot,
) -> Result<(), Failure> {
    let limits = &snap.limits;
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    let mut remaining = match framing {
        BodyFraming::Length(n) => n,
        _ => 0,
    };
    let mut dec = ChunkedDecoder::new(limits.max_body_bytes);
    let result = loop {
        // Move what is buffered into `out`, re-encoding chunks.
        let done = match framing {
            BodyFraming::None => true,
            BodyFraming::Length(_) => {
                let n = (c.buffered().len() as u64).min(remaining) as usize;
                out.extend_from_slice(&c.buffered()[..n]);
                c.consume(n);
                remaining -= n as u64;
                remaining == 0
            }
            BodyFraming::Chunked => loop {
                let step = match dec.step(c.buffered()) {
                    Ok(s) => s,
                    Err(e) => break Err(GatewayError::from(e)),
                };
                if let Some((a, b)) = step.data {
                    let _ = write!(out, "{:x}\r\n", b - a);
                    out.extend_from_slice(&c.buffered()[a..b]);
                    out.extend_from_slice(b"\r\n");
                }
                c.consume(step.consumed);
                if dec.is_done() {
                    out.extend_from_slice(b"0\r\n\r\n");
                    break Ok(true);
                }
                if step.consumed == 0 {
                    break Ok(false);
                }
            }
            .map_err(Failure::Respond)?,
        };
        if !out.is_empty() {
            let (res, buf) = up.stream.write_all(out).await;
            out = buf;
            out.clear();
            if res.is_err() {
                break Err(Failure::Respond(UpstreamError::ClosedBeforeResponse.into()));
            }
        }
        if done {
            break Ok(());
        }
        let deadline = Instant::now() + limits.body_idle_timeout;
        match c.read_more_until(deadline, 64 * 1024).await {
            Ok(0) | Err(crate::server::ReadError::Io) => {
                break Err(Failure::Respond(error::CLIENT_BODY_ERROR))
            }
            Err(crate::server::ReadError::Timeout) => {
                break Err(Failure::Respond(error::BODY_TIMEOUT))
            }
            Ok(_) => {}
        }
    };
    c.out = out;
    result
}
