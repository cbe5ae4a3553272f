//! Attempts: an endpoint and a connection for the request, the request written, the response
//! head read — again on another endpoint when that is allowed.
//!
//! # Contract
//!
//! [`exchange`] returns the connection whose response head is complete (its bytes at the
//! front of the connection's buffer) with the breaker permit of that attempt, or the
//! [`Failure`] to answer. The endpoint is the one the upstream's policy picks
//! ([`crate::balance`]) among those whose circuit breaker admits the attempt (see
//! [`crate::breaker`]) and that this request has not tried yet; every attempt's outcome is
//! recorded with its permit, and the attempt counts as in flight on its endpoint until it
//! ends. When none admits, the answer is `503 upstream_unavailable` with `Retry-After`.
//! Connect failures move to another endpoint while the retry budget allows. A `retryable`
//! route tries a failed attempt (no response, 502/503/504) again on another endpoint (the
//! same one only when no other is available) while the request is held whole, within the
//! route's total deadline and the retry budget. A reused connection that died before
//! answering an idempotent request held whole is replayed once on another connection. Nothing
//! is retried once a response byte may have reached the client (the relay comes after this).

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::balance::{Attempt, Open, Tried, UpstreamBalance};
use crate::breaker::local::{self, NoEndpoint};
use crate::breaker::{Outcome, Permit};
use crate::config::{Snapshot, Upstream};
use crate::conn::ClientConn;
use crate::error::{GatewayError, UpstreamError};
use crate::trace::AttemptSpan;
use crate::worker::Worker;

use super::relay::{self, ResponseHead};
use super::{inbound, Failure, Outbound, ReqInfo};
use crate::pool::UpConn;

/// Most attempts to reach an endpoint of one upstream when connecting fails.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;
/// Most attempts of one request on a `retryable` route.
pub const MAX_ROUTE_ATTEMPTS: u32 = 3;

/// A connection with a complete response head, the breaker permit of its attempt, and the
/// attempt's client span (sampled requests), ended by the relay, and the attempt itself (in
/// flight on its endpoint until dropped).
pub struct Answered<'w> {
    pub up: UpConn,
    pub head: ResponseHead,
    /// When the head was read (complete).
    pub head_at: Instant,
    pub permit: Option<Permit>,
    pub span: Option<AttemptSpan>,
    pub attempt: Attempt<'w>,
}

/// Client span events: the response head arrived; the first body bytes reached the client.
pub const FIRST_BYTE: &str = "first_byte";
pub const FIRST_CHUNK: &str = "first_chunk";

/// Opens attempt `attempt`'s client span when the request is sampled (and names it as the
/// parent in `up_out`).
fn begin_span(
    worker: &Worker,
    plan: &Plan<'_>,
    attempt: u32,
    up_out: &mut [u8],
) -> Option<AttemptSpan> {
    let p = plan.ob.trace.as_ref()?;
    let mut tracer = worker.tracer.borrow_mut();
    Some(AttemptSpan::begin(tracer.as_mut()?, p, attempt, up_out))
}

/// Ends an attempt's client span: the response status (0: none), or how it failed.
pub fn end_span(
    worker: &Worker,
    span: Option<AttemptSpan>,
    upstream: &Upstream,
    status: u16,
    error: Option<UpstreamError>,
) {
    let mut tracer = worker.tracer.borrow_mut();
    let (Some(span), Some(t)) = (span, tracer.as_mut()) else {
        return;
    };
    let kind = error.map(|e| GatewayError::from(e).kind);
    span.finish(t, &upstream.name, status, kind);
}

/// What the attempts need to know about the request.
pub struct Plan<'a> {
    pub req: ReqInfo,
    pub ob: &'a Outbound<'a>,
    /// The request (head and body) is in `up_out` whole, so it can be sent again.
    pub inline: bool,
    /// The route's total deadline, over every attempt.
    pub deadline: Option<Instant>,
    /// The upstream's index in the snapshot's resilience table.
    pub up_idx: Option<usize>,
    /// The request's affinity key, when the upstream's policy keys on one.
    pub key: Option<u64>,
}

impl Plan<'_> {
    /// `d`, cut to what is left of the route's total deadline.
    pub fn cap(&self, d: Duration) -> Duration {
        match self.deadline {
            Some(dl) => d.min(dl.saturating_duration_since(Instant::now())),
            None => d,
        }
    }
}

/// Sends the request (`up_out`, then a streamed body if it is not inline) until an attempt
/// gets a response head (see the module docs). `upload` is the streamed-upload slot the body
/// holds while it streams.
pub async fn exchange<'w>(
    worker: &'w Rc<Worker>,
    c: &mut ClientConn,
    snap: &Snapshot,
    plan: &Plan<'_>,
    up_out: &mut Vec<u8>,
    mut upload: Option<inbound::Upload<'_>>,
) -> Result<Answered<'w>, Failure> {
    let (req, ob) = (plan.req, plan.ob);
    let upstream = ob.upstream;
    let record = |permit: Option<Permit>, outcome: Outcome| {
        worker.record_outcome(permit, outcome);
    };
    let mut attempt = 0;
    // Whether the client's body has been read off its connection.
    let mut body_read = plan.inline;
    let mut tried = Tried::default();
    loop {
        attempt += 1;
        let mut span = begin_span(worker, plan, attempt, up_out);
        let connect_timeout = plan.cap(ob.timeouts.connect.unwrap_or(upstream.connect_timeout));
        let (mut up, permit, counted) =
            match acquire(worker, snap, plan, connect_timeout, &mut tried).await {
                Ok(u) => u,
                Err(NoEndpoint::Unavailable(wait)) => {
                    // No attempt was made: the breakers refused every endpoint (an event on
                    // the server span), so this span is not recorded.
                    // The gateway's own answer: the connection stays usable unless the body
                    // is still unread.
                    let error = local::UNAVAILABLE;
                    return Err(Failure::Unavailable {
                        error: if plan.inline { error } else { error.closing() },
                        retry_after: local::retry_after_secs(wait),
                    });
                }
                Err(NoEndpoint::Failed(e)) => {
                    end_span(worker, span, upstream, 0, Some(e));
                    // The body is still unread on the connection unless it went inline.
                    let e = GatewayError::from(e);
                    return Err(Failure::Respond(if plan.inline { e } else { e.closing() }));
                }
            };
        if let Some(s) = &mut span {
            s.endpoint = Some(up.addr());
            s.reused = up.reused;
        }
        let (res, buf) = up.write_all(std::mem::take(up_out)).await;
        *up_out = buf;
        let sent = res.is_ok();
        if sent && !plan.inline {
            let streamed = inbound::stream_body(c, &mut up, req.framing, &snap.limits).await;
            drop(upload.take());
            if let Err(f) = streamed {
                // Most likely the client's body failed; nothing is known about the upstream.
                record(permit, Outcome::ClientCancelled);
                end_span(worker, span, upstream, 0, Some(UpstreamError::ClientGone));
                return Err(f);
            }
            body_read = true;
        }
        let first = match sent {
            true => {
                let first_byte = ob
                    .timeouts
                    .first_byte
                    .unwrap_or(upstream.first_byte_timeout);
                relay::read_response_head(&mut up, plan.cap(first_byte)).await
            }
            false => Err(UpstreamError::ClosedBeforeResponse),
        };
        // One clock read for the head: the attempt's TTFB sample and the proxy's histogram.
        let head_at = Instant::now();
        if let Ok(h) = &first {
            counted.head(h.status, head_at);
        }
        // A retryable route may try again (on an endpoint it has not tried, while one is
        // available) while nothing reached the client, the request is held whole, there is
        // time left and the retry budget allows.
        let may_retry = |w: &Worker| {
            ob.retryable
                && plan.inline
                && attempt < MAX_ROUTE_ATTEMPTS
                && plan.deadline.is_none_or(|d| Instant::now() < d)
                && w.resilience
                    .borrow_mut()
                    .try_retry(plan.up_idx, Instant::now())
        };
        if let (Some(s), Ok(_)) = (&mut span, &first) {
            s.event(FIRST_BYTE);
        }
        match first {
            Ok(h) if matches!(h.status, 502..=504) && may_retry(worker) => {
                record(permit, Outcome::Status(h.status));
                end_span(worker, span, upstream, h.status, None);
            }
            Ok(head) => {
                return Ok(Answered {
                    up,
                    head,
                    head_at,
                    permit,
                    span,
                    attempt: counted,
                })
            }
            Err(
                e @ (UpstreamError::ClosedBeforeResponse
                | UpstreamError::FirstByteTimeout
                | UpstreamError::BadResponse),
            ) if !(up.reused && req.idempotent && attempt == 1) && may_retry(worker) => {
                record(permit, local::outcome_of(e));
                end_span(worker, span, upstream, 0, Some(e));
            }
            // A reused connection that died before answering: the upstream closed it while
            // our request was in flight. Replaying is safe only for idempotent requests we
            // still hold whole, and only within the retry budget.
            Err(UpstreamError::ClosedBeforeResponse)
                if up.reused
                    && plan.inline
                    && req.idempotent
                    && attempt == 1
                    && worker
                        .resilience
                        .borrow_mut()
                        .try_retry(plan.up_idx, Instant::now()) =>
            {
                // A stale pooled connection says nothing about the endpoint.
                record(permit, Outcome::ClientCancelled);
                end_span(
                    worker,
                    span,
                    upstream,
                    0,
                    Some(UpstreamError::ClosedBeforeResponse),
                );
            }
            Err(e) => {
                record(permit, local::outcome_of(e));
                end_span(worker, span, upstream, 0, Some(e));
                // An unread body would be taken for the next request.
                let e = GatewayError::from(e);
                return Err(Failure::Respond(if body_read { e } else { e.closing() }));
            }
        }
    }
}

/// A pooled connection to the endpoint the upstream's policy picks, or a new one, with the
/// breaker's permit for it and the attempt counted in flight. Endpoints whose breaker rejects
/// (open, no probe permit, unhealthy) are skipped, and so are those this request has tried
/// (`tried`) unless no other is available; connect failures move on to another endpoint
/// (nothing was sent, so this is always safe) while the retry budget allows.
async fn acquire<'w>(
    worker: &'w Rc<Worker>,
    snap: &Snapshot,
    plan: &Plan<'_>,
    connect_timeout: Duration,
    tried: &mut Tried,
) -> Result<(UpConn, Option<Permit>, Attempt<'w>), NoEndpoint> {
    let upstream = plan.ob.upstream;
    let up_idx = plan.up_idx;
    let n = upstream.endpoints.len();
    let outside = UpstreamBalance::round_robin(n);
    let lb = snap.balance.get(up_idx).unwrap_or(&outside);
    // Endpoints tried by this call: never again here, even when every other is unavailable.
    let mut here = Tried::default();
    let mut last = None;
    let mut connects = 0;
    for _ in 0..n {
        let now = Instant::now();
        let Some(idx) = choose(worker, lb, plan, (tried, &here), now) else {
            break;
        };
        tried.insert(idx);
        here.insert(idx);
        let ep = &upstream.endpoints[idx];
        let id = lb.endpoint(idx);
        let permit = {
            let mut res = worker.resilience.borrow_mut();
            // Budget first, so that a refused retry does not consume a probe permit.
            if connects > 0 && !res.try_retry(up_idx, now) {
                break;
            }
            match res.allow(id, now) {
                Ok(p) => p,
                Err(_) => continue,
            }
        };
        let counted = Attempt::begin(&worker.balance, id, now);
        if let Some(c) = worker.pools.borrow_mut().take(
            super::connect::pool_key(ep, up_idx),
            upstream.pool_idle_timeout,
            upstream.pool_max_requests,
        ) {
            worker.metrics.borrow_mut().upstream_reuses += 1;
            return Ok((c, permit, counted));
        }
        connects += 1;
        let e = match super::connect::connect(worker, &upstream.name, up_idx, ep, connect_timeout)
            .await
        {
            Ok(c) => {
                worker.metrics.borrow_mut().upstream_connects += 1;
                return Ok((c, permit, counted));
            }
            Err(e) => e,
        };
        worker.record_outcome(permit, local::outcome_of(e));
        last = Some(e);
        if connects >= MAX_CONNECT_ATTEMPTS {
            break;
        }
    }
    Err(match last {
        Some(e) => NoEndpoint::Failed(e),
        None => {
            // Every endpoint is open or unhealthy: come back when the first may reopen.
            let res = worker.resilience.borrow();
            let now = Instant::now();
            let wait = (0..n)
                .filter_map(|i| res.retry_after(lb.endpoint(i), now))
                .min();
            NoEndpoint::Unavailable(wait.unwrap_or(local::RETRY_AFTER_UNKNOWN))
        }
    })
}

/// The endpoint `lb`'s policy picks among the available ones this request has not tried
/// (`tried.0`); when none is left, among those not tried by this acquire (`tried.1`).
fn choose(
    worker: &Worker,
    lb: &UpstreamBalance,
    plan: &Plan<'_>,
    (tried, here): (&Tried, &Tried),
    now: Instant,
) -> Option<usize> {
    // Breaker and health, asked once for the whole upstream: a bit per endpoint.
    let res = worker.resilience.borrow();
    let admitted = res.admitted(lb.endpoint(0), lb.len(), now);
    let up = plan.up_idx.unwrap_or(usize::MAX);
    let mut view = worker.balance.borrow_mut();
    let rng = &mut worker.rng.borrow_mut();
    let open = |tried| Open { admitted, tried };
    view.pick(lb, up, plan.key, rng, open(tried)).or_else(|| {
        (tried != here)
            .then(|| view.pick(lb, up, plan.key, rng, open(here)))
            .flatten()
    })
}
