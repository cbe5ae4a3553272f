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
//! Endpoint choice is round-robin over the endpoints whose circuit breaker admits the attempt
//! (see [`crate::breaker`]); every attempt's outcome is recorded with its permit. When none
//! admits, the answer is `503 upstream_unavailable` with `Retry-After`. Connect failures move
//! to the next endpoint while the retry budget allows; nothing is retried once a response byte
//! may have reached the client.
//!
//! Headers are re-serialized toward the upstream: hop-by-hop fields (and every field named in
//! `Connection`) are dropped, `X-Forwarded-For/Proto/Host` and `X-Request-Id` are set, and
//! framing is re-declared by the gateway. Bodies stream in both directions; each upstream
//! read is written to the client immediately (SSE-safe). A request body streams only within
//! the per-upstream cap on streamed uploads; past it, it is read whole before an upstream
//! connection is taken (see [`inbound`]). A pooled connection on which anything arrived
//! while idle is never read for a response (see [`pool`]).

pub mod inbound;
pub mod pool;
pub mod relay;
pub mod tap;

use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::breaker::local::{self, NoEndpoint};
use crate::breaker::{Outcome, Permit};
use crate::config::{Snapshot, Upstream};
use crate::conn::ClientConn;
use crate::error::{GatewayError, UpstreamError};
use crate::http::parse::{BodyFraming, RequestHead};
use crate::time::micros;
use crate::worker::Worker;
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
/// Most attempts of one request on a `retryable` route.
pub const MAX_ROUTE_ATTEMPTS: u32 = 3;
/// Request bodies up to this size that are already buffered go out with the head in one write
/// (and can be replayed on a fresh connection).
pub const INLINE_BODY: usize = 64 * 1024;

/// What a finished exchange tells the connection loop.
pub struct Done {
    pub status: u16,
    pub keep_alive: bool,
    pub upstream_us: Option<u64>,
    /// Tokens the response used, when the pipeline asked for accounting (see [`tap`]).
    pub tokens: Option<u64>,
}

/// How an exchange failed.
pub enum Failure {
    /// Nothing was sent to the client yet: answer with this error.
    Respond(GatewayError),
    /// The response had started (or the client is gone): close. Carries the status for metrics
    /// and the tokens accounted before the cut (an estimate for a stream).
    Close(u16, Option<u64>),
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Respond(e.into())
    }
}

/// The facts about the client request that outlive its head bytes.
#[derive(Debug, Clone, Copy)]
pub struct ReqInfo {
    pub framing: BodyFraming,
    pub minor_version: u8,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub is_head: bool,
    /// Safe to replay on a fresh connection when a reused one died unanswered.
    pub idempotent: bool,
}

impl ReqInfo {
    pub fn of(head: &RequestHead) -> Self {
        use http::Method;
        Self {
            framing: head.framing,
            minor_version: head.minor_version,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            is_head: head.method == Method::HEAD,
            idempotent: matches!(
                head.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            ),
        }
    }
}

/// Where the request body comes from.
#[derive(Debug, Clone, Copy)]
pub enum OutBody<'a> {
    /// Still on the client connection, framed as the request said: streamed as it arrives.
    FromClient,
    /// Already read (and possibly rewritten) by an earlier stage.
    Buffered(&'a [u8]),
}

/// What to send where. `c.up_out` already holds the head prefix written by
/// [`write_head_prefix`]; `forward` completes it.
pub struct Outbound<'a> {
    pub upstream: &'a Upstream,
    pub body: OutBody<'a>,
    /// Extra request header lines (each ending in CRLF), e.g. identity headers.
    pub extra_request: &'a [u8],
    /// Extra response header lines, e.g. `x-shardgate-model`.
    pub extra_response: &'a [u8],
    /// Read token usage from a successful response.
    pub usage: Option<tap::UsageSpec>,
    /// The route's timeout overrides and total deadline.
    pub timeouts: crate::route::RouteTimeouts,
    /// The route allows retrying a failed attempt on another endpoint.
    pub retryable: bool,
}

/// Sends the request and relays the response (see the module docs).
pub async fn forward(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    req: ReqInfo,
    ob: Outbound<'_>,
    snap: &Snapshot,
) -> Result<Done, Failure> {
    let upstream = ob.upstream;
    if matches!(ob.body, OutBody::FromClient) && inbound::send_continue(c, &req).await.is_err() {
        return Err(Failure::Close(0, None));
    }
    // A body not here whole streams to the upstream as it arrives, holding an upstream
    // connection meanwhile — unless `max_streaming_uploads` bodies already stream to this
    // upstream from this worker: then it is read whole first, so slow clients cannot pin
    // more upstream connections than that (see `inbound`).
    let mut upload = None;
    let mut held = Vec::new();
    let body = match ob.body {
        OutBody::FromClient if !body_is_here(c, req.framing) => {
            let cap = snap.limits.max_streaming_uploads;
            match inbound::Upload::begin(worker, &upstream.name, cap) {
                Some(u) => {
                    upload = Some(u);
                    OutBody::FromClient
                }
                None => {
                    inbound::collect_body(c, req.framing, &snap.limits, &mut held)
                        .await
                        .map_err(Failure::Respond)?;
                    OutBody::Buffered(&held)
                }
            }
        }
        b => b,
    };
    let mut up_out = std::mem::take(&mut c.up_out);
    finish_head(&mut up_out, &req, &ob, body);
    // A small body that is already here travels with the head, so the request is replayable.
    let inline = match (body, req.framing) {
        (OutBody::Buffered(b), _) => {
            up_out.extend_from_slice(b);
            true
        }
        (OutBody::FromClient, BodyFraming::None) => true,
        (OutBody::FromClient, BodyFraming::Length(n)) => {
            let n = n as usize;
            let whole = n <= INLINE_BODY && c.buffered().len() >= n;
            if whole {
                up_out.extend_from_slice(&c.buffered()[..n]);
                c.consume(n);
            }
            whole
        }
        (OutBody::FromClient, BodyFraming::Chunked) => false,
    };

    let sent_at = Instant::now();
    // The route's total deadline bounds every wait below, retries included.
    let deadline = ob.timeouts.total.map(|t| sent_at + t);
    let cap = |d: std::time::Duration| match deadline {
        Some(dl) => d.min(dl.saturating_duration_since(Instant::now())),
        None => d,
    };
    let connect_timeout = ob.timeouts.connect.unwrap_or(upstream.connect_timeout);
    let up_idx = snap.upstream_index(upstream);
    worker
        .resilience
        .borrow_mut()
        .record_request(up_idx, sent_at);
    let record = |permit: Option<Permit>, outcome: Outcome| {
        worker.resilience.borrow_mut().record(permit, outcome);
    };
    let mut attempt = 0;
    // Whether the client's body has been read off its connection.
    let mut body_read = inline;
    let (mut up, first, permit) = loop {
        attempt += 1;
        let (mut up, permit) =
            match acquire(worker, snap, up_idx, upstream, cap(connect_timeout)).await {
                Ok(u) => u,
                Err(NoEndpoint::Unavailable(wait)) => {
                    c.up_out = up_out;
                    return unavailable(worker, c, req, inline, ob.extra_response, wait).await;
                }
                Err(NoEndpoint::Failed(e)) => {
                    c.up_out = up_out;
                    // The body is still unread on the connection unless it went inline.
                    let e = GatewayError::from(e);
                    return Err(Failure::Respond(if inline { e } else { e.closing() }));
                }
            };
        let (res, buf) = up.write_all(up_out).await;
        up_out = buf;
        // Bytes that reached a pooled connection before this write are not our response:
        // such a connection fails here like one the upstream closed (see `pool`).
        let sent = res.is_ok() && up.settle().await == pool::Settled::Clean;
        if sent && !inline {
            let streamed = inbound::stream_body(c, &mut up, req.framing, &snap.limits).await;
            drop(upload.take());
            if let Err(f) = streamed {
                c.up_out = up_out;
                // Most likely the client's body failed; nothing is known about the upstream.
                record(permit, Outcome::ClientCancelled);
                return Err(f);
            }
            body_read = true;
        }
        let first = if sent {
            relay::read_response_head(
                &mut up,
                cap(ob
                    .timeouts
                    .first_byte
                    .unwrap_or(upstream.first_byte_timeout)),
            )
            .await
        } else {
            Err(UpstreamError::ClosedBeforeResponse)
        };
        // A retryable route may try again (another endpoint first, by round-robin) while
        // nothing reached the client, the request is held whole, there is time left and the
        // retry budget allows.
        let may_retry = |w: &Worker| {
            ob.retryable
                && inline
                && attempt < MAX_ROUTE_ATTEMPTS
                && deadline.is_none_or(|d| Instant::now() < d)
                && w.resilience.borrow_mut().try_retry(up_idx, Instant::now())
        };
        match first {
            Ok(h) if matches!(h.status, 502..=504) && may_retry(worker) => {
                record(permit, Outcome::Status(h.status));
                continue;
            }
            Ok(h) => break (up, h, permit),
            Err(
                e @ (UpstreamError::ClosedBeforeResponse
                | UpstreamError::FirstByteTimeout
                | UpstreamError::BadResponse),
            ) if !(up.reused && req.idempotent && attempt == 1) && may_retry(worker) => {
                record(permit, local::outcome_of(e));
                continue;
            }
            // A reused connection that died before answering: the upstream closed it while
            // our request was in flight. Replaying is safe only for idempotent requests we
            // still hold whole, and only within the retry budget.
            Err(UpstreamError::ClosedBeforeResponse)
                if up.reused
                    && inline
                    && req.idempotent
                    && attempt == 1
                    && worker
                        .resilience
                        .borrow_mut()
                        .try_retry(up_idx, Instant::now()) =>
            {
                // A stale pooled connection says nothing about the endpoint.
                record(permit, Outcome::ClientCancelled);
                continue;
            }
            Err(e) => {
                record(permit, local::outcome_of(e));
                c.up_out = up_out;
                // An unread body would be taken for the next request.
                let e = GatewayError::from(e);
                return Err(Failure::Respond(if body_read { e } else { e.closing() }));
            }
        }
    };
    c.up_out = up_out;
    worker
        .metrics
        .borrow_mut()
        .ttfb_us
        .saturating_record(micros(sent_at).max(1));
    let keep_client = req.keep_alive && !worker.drain.is_draining();
    let ctx = relay::RelayCtx {
        is_head: req.is_head,
        client_minor: req.minor_version,
        keep_client,
        request_id: &c.request_id,
        extra: ob.extra_response,
    };
    let plan = match relay::write_client_head(&mut c.out, &up.buf, &first, &ctx) {
        Ok(p) => p,
        Err(e) => {
            record(permit, local::outcome_of(e));
            return Err(e.into());
        }
    };
    up.buf.drain(..first.head_len);
    let status = first.status;
    let usage = ob.usage.filter(|_| (200..300).contains(&status));
    let mut tap = tap::Tap::new(usage, matches!(plan.up, relay::UpFraming::Length(_)));
    // Never retried from here on: response bytes may have reached the client.
    let mut gap = |us: u64| {
        worker
            .metrics
            .borrow_mut()
            .stream_gap_us
            .saturating_record(us.max(1));
    };
    if let Err(e) = relay::relay_body(
        c,
        &mut up,
        &plan,
        ob.timeouts.idle.unwrap_or(upstream.idle_timeout),
        deadline,
        &mut tap,
        &mut gap,
    )
    .await
    {
        record(permit, local::outcome_of(e));
        return Err(Failure::Close(status, tap.tokens()));
    }
    record(permit, Outcome::Status(status));
    let upstream_us = Some(micros(sent_at));
    if plan.upstream_reusable {
        up.served += 1;
        if up.served < upstream.pool_max_requests {
            // Refused (and closed) when bytes past the response are buffered.
            worker.pools.borrow_mut().put(up, upstream.pool_max_idle);
        }
    }
    Ok(Done {
        status,
        keep_alive: plan.keep_client,
        upstream_us,
        tokens: tap.tokens(),
    })
}

/// A pooled connection to one of the upstream's endpoints, or a new one, with the breaker's
/// permit for it. Endpoints whose breaker rejects (open, no probe permit, unhealthy) are
/// skipped; connect failures move on to the next endpoint (nothing was sent, so this is always
/// safe) while the retry budget allows.
async fn acquire(
    worker: &Rc<Worker>,
    snap: &Snapshot,
    up_idx: Option<usize>,
    upstream: &Upstream,
    connect_timeout: std::time::Duration,
) -> Result<(UpConn, Option<Permit>), NoEndpoint> {
    let n = upstream.endpoints.len();
    let start = worker.rr.get();
    worker.rr.set(start.wrapping_add(1));
    let mut last = None;
    let mut wait: Option<std::time::Duration> = None;
    let mut connects = 0;
    for i in 0..n {
        let idx = (start + i) % n;
        let ep = &upstream.endpoints[idx];
        let id = up_idx.and_then(|u| snap.resilience.endpoint(u, idx));
        let now = Instant::now();
        let permit = {
            let mut res = worker.resilience.borrow_mut();
            // Budget first, so that a refused retry does not consume a probe permit.
            if connects > 0 && !res.try_retry(up_idx, now) {
                break;
            }
            match res.allow(id, now) {
                Ok(p) => p,
                Err(r) => {
                    wait = Some(wait.map_or(r.retry_after, |w| w.min(r.retry_after)));
                    continue;
                }
            }
        };
        if let Some(c) = worker.pools.borrow_mut().take(
            ep.addr,
            upstream.pool_idle_timeout,
            upstream.pool_max_requests,
        ) {
            worker.metrics.borrow_mut().upstream_reuses += 1;
            return Ok((c, permit));
        }
        connects += 1;
        let e = match monoio::time::timeout(connect_timeout, TcpStream::connect_addr(ep.addr)).await
        {
            Ok(Ok(s)) => {
                worker.metrics.borrow_mut().upstream_connects += 1;
                return Ok((UpConn::new(s, ep.addr), permit));
            }
            Ok(Err(_)) => UpstreamError::ConnectFailed,
            Err(_) => UpstreamError::ConnectTimeout,
        };
        worker
            .resilience
            .borrow_mut()
            .record(permit, local::outcome_of(e));
        last = Some(e);
        if connects >= MAX_CONNECT_ATTEMPTS {
            break;
        }
    }
    Err(match (last, wait) {
        (Some(e), _) => NoEndpoint::Failed(e),
        (None, w) => NoEndpoint::Unavailable(w.unwrap_or(local::RETRY_AFTER_UNKNOWN)),
    })
}

/// Answers 503 with `Retry-After` when every endpoint is open or unhealthy. The response is
/// the gateway's own, so the connection stays usable unless the body is still unread.
async fn unavailable(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    req: ReqInfo,
    inline: bool,
    extra_response: &[u8],
    wait: std::time::Duration,
) -> Result<Done, Failure> {
    let mut e = local::UNAVAILABLE;
    if !inline || !req.keep_alive || worker.drain.is_draining() {
        e = e.closing();
    }
    let mut extra = extra_response.to_vec();
    let _ = write!(extra, "retry-after: {}\r\n", local::retry_after_secs(wait));
    let sent = c.send_error(&e, &extra).await.is_ok();
    Ok(Done {
        status: e.status,
        keep_alive: sent && !e.close,
        upstream_us: None,
        tokens: None,
    })
}

/// Writes the first part of the upstream request head into `out`: the request line (with the
/// path the request was routed on and the query as sent; never a fragment), the client's
/// end-to-end headers (minus hop-by-hop fields, the fields the gateway sets, and any
/// for which `drop` says so), and the forwarding headers. [`forward`] completes it with Host,
/// framing and credentials once the upstream is known. `buf` holds the head's bytes (the
/// connection buffer, or a copy taken before the body was read).
pub fn write_head_prefix(
    out: &mut Vec<u8>,
    buf: &[u8],
    c: &ClientConn,
    head: &RequestHead,
    drop: impl Fn(&[u8]) -> bool,
) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    // Exactly the path that was routed (normalised by the parser) and the query as sent.
    out.extend_from_slice(head.path.get(buf));
    out.extend_from_slice(head.query.get(buf));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff: Option<&[u8]> = None;
    for (name, value) in head.headers(buf) {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff = Some(value);
        }
        if DROP_REQUEST_HEADERS
            .iter()
            .any(|d| name.eq_ignore_ascii_case(d))
            || drop(name)
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
}

/// Whether the whole body is in the connection buffer and small enough to go with the head.
fn body_is_here(c: &ClientConn, framing: BodyFraming) -> bool {
    match framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) => n <= INLINE_BODY as u64 && c.buffered().len() as u64 >= n,
        BodyFraming::Chunked => false,
    }
}

/// Completes the head: Host, extra lines, framing, upstream credential, blank line.
fn finish_head(out: &mut Vec<u8>, req: &ReqInfo, ob: &Outbound<'_>, body: OutBody<'_>) {
    out.extend_from_slice(b"host: ");
    // All endpoints of an upstream share its Host value (the first endpoint as written, or
    // `host_header`).
    out.extend_from_slice(ob.upstream.endpoints[0].host.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(ob.extra_request);
    match (body, req.framing) {
        (OutBody::Buffered(b), _) => {
            let _ = write!(out, "content-length: {}\r\n", b.len());
        }
        (OutBody::FromClient, BodyFraming::None) => {
            if !req.idempotent {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        (OutBody::FromClient, BodyFraming::Length(n)) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        (OutBody::FromClient, BodyFraming::Chunked) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
    }
    if let Some(line) = &ob.upstream.auth_line {
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\r\n");
}
