//! Forwarding one request to an upstream and relaying the response: the last stage.
//!
//! [`forward`] is three steps, each in its own module:
//!
//! 1. [`head`]: complete the upstream request head (Host, framing, credential) and put a small
//!    body that is already here behind it;
//! 2. [`attempt`]: take an endpoint and a connection ([`crate::pool`]), send, stream a body that was
//!    not inline ([`inbound`]), read the response head; again on another endpoint when
//!    allowed;
//! 3. [`relay`]: the client-facing response head and the body, read by read, with token usage
//!    read on the way ([`tap`]); the connection back to its pool.
//!
//! # Contract
//!
//! [`forward`] returns what the exchange came to: [`Done`] once a response was relayed whole,
//! or a [`Failure`]. Errors before any response byte reached the client are answered by the
//! connection loop ([`Failure::Respond`], [`Failure::Unavailable`]); once the response has
//! started, an upstream failure closes the client connection ([`Failure::Close`]), so a
//! truncated response never looks complete. Bodies stream in both directions; each upstream
//! read is written to the client immediately (SSE-safe). A request body streams only within
//! the per-upstream cap on streamed uploads; past it, it is read whole before an upstream
//! connection is taken (see [`inbound`]). A pooled connection on which anything arrived
//! while idle is never read for a response (see [`crate::pool`]).

pub mod attempt;
pub mod connect;
pub mod head;
pub mod inbound;
pub mod relay;
pub mod tap;

use std::rc::Rc;
use std::time::Instant;

use crate::breaker::local;
use crate::breaker::Outcome;
use crate::config::{Snapshot, Upstream};
use crate::conn::ClientConn;
use crate::error::{GatewayError, UpstreamError};
use crate::http::parse::{BodyFraming, RequestHead};
use crate::time::micros_between;
use crate::worker::Worker;

pub use head::write_head_prefix;

/// What a finished exchange tells the pipeline.
#[derive(Debug)]
pub struct Done {
    pub status: u16,
    pub keep_alive: bool,
    pub upstream_us: Option<u64>,
    /// What the response used, when the pipeline asked for accounting (see [`tap`]).
    pub usage: Option<crate::quota::usage::Usage>,
}

/// How an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// Nothing was sent to the client yet: answer with this error.
    Respond(GatewayError),
    /// Every endpoint of the upstream has an open breaker or failed health checks: answer
    /// this 503 with `Retry-After: retry_after` (seconds) and the route's response headers.
    Unavailable {
        error: GatewayError,
        retry_after: u64,
    },
    /// The response had started (or the client is gone): close. Carries the status for metrics
    /// and the usage accounted before the cut (an estimate for a stream).
    Close(u16, Option<crate::quota::usage::Usage>),
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
/// [`write_head_prefix`]; [`forward`] completes it.
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
    /// A sampled request's trace: each attempt records a client span and names it as the
    /// upstream's parent (see [`crate::trace`]).
    pub trace: Option<crate::trace::Propagation>,
    /// The request's affinity key, for an upstream whose `balance` is `affinity`.
    pub affinity: Option<u64>,
    /// The response is rewritten on its way (provider adapter, schema transform); see
    /// [`crate::adapt`].
    pub adapt: Option<crate::adapt::Response<'a>>,
    /// The request's adapter buffers (taken by [`forward`] for the response's translator).
    pub adapt_bufs: Option<&'a mut crate::adapt::Bufs>,
    /// A relayed response's last bytes stay staged in `c.out` (an `Ok` of [`forward`] leaves
    /// them there; the caller flushes them): its usage is charged to quotas and budgets
    /// before the client has the whole response.
    pub hold_last: bool,
}

/// Sends the request and relays the response (see the module docs).
pub async fn forward(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    req: ReqInfo,
    mut ob: Outbound<'_>,
    snap: &Snapshot,
) -> Result<Done, Failure> {
    let adapt_bufs = ob.adapt_bufs.take();
    if matches!(ob.body, OutBody::FromClient) && inbound::send_continue(c, &req).await.is_err() {
        return Err(Failure::Close(0, None));
    }
    // A body not here whole streams to the upstream as it arrives, holding an upstream
    // connection meanwhile — unless `max_streaming_uploads` bodies already stream to this
    // upstream from this worker: then it is read whole first, so slow clients cannot pin
    // more upstream connections than that (see `inbound`). On a `retryable` route a body of
    // at most `head::INLINE_BODY` is read whole first too, so a failed attempt can be sent
    // again however the client's writes split head and body.
    let mut upload = None;
    let mut held = Vec::new();
    let body = match ob.body {
        OutBody::FromClient if !head::body_is_here(c, req.framing) => {
            let cap = snap.limits.max_streaming_uploads;
            let replayable = ob.retryable
                && matches!(req.framing, BodyFraming::Length(n) if n <= head::INLINE_BODY as u64);
            let slot = match replayable {
                true => None,
                false => inbound::Upload::begin(worker, &ob.upstream.name, cap),
            };
            match slot {
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
    head::finish(&mut up_out, &req, &ob, body);
    let inline = head::inline_body(&mut up_out, c, body, req.framing);
    let sent_at = Instant::now();
    let up_idx = snap.upstream_index(ob.upstream);
    worker
        .resilience
        .borrow_mut()
        .record_request(up_idx, sent_at);
    let plan = attempt::Plan {
        req,
        ob: &ob,
        inline,
        // The route's total deadline bounds every wait, retries included.
        deadline: ob.timeouts.total.map(|t| sent_at + t),
        up_idx,
        key: ob.affinity,
    };
    let answered = attempt::exchange(worker, c, snap, &plan, &mut up_out, upload).await;
    c.up_out = up_out;
    relay_response(worker, c, &plan, answered?, sent_at, adapt_bufs).await
}

/// Relays the response whose head the attempt read, records the attempt's outcome and puts
/// the connection back in its pool when it can serve another request.
async fn relay_response(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    plan: &attempt::Plan<'_>,
    answered: attempt::Answered<'_>,
    sent_at: Instant,
    adapt_bufs: Option<&mut crate::adapt::Bufs>,
) -> Result<Done, Failure> {
    let attempt::Answered {
        mut up,
        head: first,
        head_at,
        permit,
        mut span,
        attempt,
    } = answered;
    let (req, ob) = (plan.req, plan.ob);
    let record = |outcome: Outcome| worker.record_outcome(permit, outcome);
    {
        let ttfb = micros_between(sent_at, head_at).max(1);
        let mut m = worker.metrics.borrow_mut();
        m.ttfb_us.saturating_record(ttfb);
        m.record_deployment_ttfb(c.tally.deployment, ttfb);
    }
    // An adapter rewrites the body, when there is one (and may map the status).
    let has_body = !req.is_head && first.framing != relay::UpFraming::None;
    let rewrite = ob
        .adapt
        .filter(|_| has_body)
        .and_then(|a| Some((a, a.client_status(first.status)?)));
    let ctx = relay::RelayCtx {
        is_head: req.is_head,
        client_minor: req.minor_version,
        keep_client: req.keep_alive && !worker.drain.is_draining(),
        request_id: &c.request_id,
        extra: ob.extra_response,
        rewrite: rewrite.is_some(),
        status: rewrite.map_or(first.status, |(_, s)| s),
    };
    let mut relay_plan = match relay::write_client_head(&mut c.out, &up.buf, &first, &ctx) {
        Ok(p) => p,
        Err(e) => {
            record(local::outcome_of(e));
            attempt::end_span(worker, span, ob.upstream, first.status, Some(e));
            return Err(e.into());
        }
    };
    relay_plan.hold_last = ob.hold_last;
    // Body bytes that came with the head reach the client in the first write.
    if up.buf.len() > first.head_len {
        if let Some(s) = &mut span {
            s.event(attempt::FIRST_CHUNK);
        }
    }
    let mut first_chunk = span.is_some() && up.buf.len() <= first.head_len;
    up.buf.drain(..first.head_len);
    let status = ctx.status;
    let usage = ob.usage.filter(|_| (200..300).contains(&status));
    let length_framed = matches!(relay_plan.up, relay::UpFraming::Length(_));
    let translator = match (rewrite, adapt_bufs) {
        (Some((a, _)), Some(bufs)) => Some(crate::adapt::Translator::new(
            a,
            first.status,
            relay_plan.event_stream,
            bufs,
        )),
        _ => None,
    };
    let mut tap = tap::Tap::new(usage, length_framed, translator);
    // Never retried from here on: response bytes may have reached the client.
    let mut gap = |us: u64| {
        worker
            .metrics
            .borrow_mut()
            .stream_gap_us
            .saturating_record(us.max(1));
        // A streamed body's first read after the head: the first token's time.
        if std::mem::take(&mut first_chunk) {
            if let Some(s) = &mut span {
                s.event(attempt::FIRST_CHUNK);
            }
        }
    };
    let idle = ob.timeouts.idle.unwrap_or(ob.upstream.idle_timeout);
    let relayed = relay::relay_body(
        c,
        &mut up,
        &relay_plan,
        idle,
        plan.deadline,
        &mut tap,
        &mut gap,
    )
    .await;
    if let Err(e) = relayed {
        record(local::outcome_of(e));
        attempt::end_span(worker, span, ob.upstream, status, Some(e));
        if tap.holds() && e != UpstreamError::ClientGone {
            // A held body (one that could not be translated, or never came whole): nothing
            // was sent, so the client gets the gateway's error instead of the staged head.
            c.out.clear();
            return Err(Failure::Respond(e.into()));
        }
        return Err(Failure::Close(status, tap.usage()));
    }
    // One clock read for the end: the breaker's record, the attempt's latency sample and
    // the upstream time.
    let done_at = Instant::now();
    worker.record_outcome_at(permit, Outcome::Status(status), done_at);
    attempt::end_span(worker, span, ob.upstream, status, None);
    attempt.done(done_at);
    if relay_plan.upstream_reusable {
        up.served += 1;
        if up.served < ob.upstream.pool_max_requests {
            // Refused (and closed) when bytes past the response are buffered.
            worker.pools.borrow_mut().put(up, ob.upstream.pool_max_idle);
        }
    }
    Ok(Done {
        status,
        keep_alive: relay_plan.keep_client,
        upstream_us: Some(micros_between(sent_at, done_at)),
        usage: tap.usage(),
    })
}
