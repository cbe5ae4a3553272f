//! The request pipeline: one request through the data-path stages, in order.
//!
//! ```text
//! route (404/405) → auth, early → [body: read, parse] → route by model → auth → split
//!   → budgets (429) → quota (429) → adapt (400, 404) → upstream head → proxy::forward
//!   → charge tokens, budgets and spend → RequestOutcome
//! ```
//!
//! - [`authn`]: the credential, the route's scope, the rejection (401/403).
//! - [`body`]: the JSON body a model route reads whole (`100 Continue`, limits, 400).
//! - [`split`]: the deployment a split chooses (label, sticky key, weights, health; 503).
//! - [`budget_check`]: the caller's budgets on the same leases (429 `budget_exceeded`), and
//!   their charge after the response.
//! - [`affinity`]: the key an `affinity` upstream keeps a conversation on one endpoint by.
//! - [`quota_check`]: the rule, the lease, the `X-RateLimit-*` headers (429, 503).
//! - [`spend_record`]: the response's usage and cost into the worker's spend shard and the
//!   access log facts.
//! - [`adapt`]: the body, path and headers a provider adapter or schema transform sends, and
//!   the response-side plan (400 with the refused field's path, 404).
//!
//! # Contract
//!
//! [`handle`] takes a request whose head is parsed into `head` (its bytes, and any body bytes
//! already received, at the front of the connection buffer) and runs it through the stages.
//! It returns an [`RequestOutcome`]: a response was relayed ([`RequestOutcome::Served`]), nothing was sent
//! and the connection loop must answer an error ([`RequestOutcome::Reject`], its extra header lines
//! in [`RequestBufs::resp_headers`]), or the connection must close ([`RequestOutcome::Close`]). It
//! never writes an error response and never records metrics or the access log: the
//! connection loop (`server`) does both, once per request.
//!
//! A rejection leaves the connection usable only if the body that follows the head is off the
//! connection: a body buffered whole is skipped, any other body makes the rejection close the
//! connection (its unread bytes would be taken for the next request).
//!
//! Every stage before the forward reads its input from `Request` and returns `Err(Stop)` to
//! end the request; the charge after the forward runs whatever the forward's result.

use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

pub mod adapt;
pub mod affinity;
pub mod authn;
pub mod body;
pub mod budget_check;
pub mod quota_check;
pub mod spend_record;
pub mod split;

use crate::auth::Identity;
use crate::config::{Snapshot, Upstream};
use crate::conn::ClientConn;
use crate::error::{self, GatewayError};
use crate::http::parse::{BodyFraming, RequestHead};
use crate::model::JsonBody;
use crate::proxy::{self, tap::UsageSpec, Failure, OutBody, Outbound, ReqInfo};
use crate::quota::usage::Usage;
use crate::route::{Route, RouteError, RouteTarget};
use crate::slot::RequestBufs;
use crate::worker::Worker;

/// How a request ended, for the connection loop to answer, account and keep or close by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A response was relayed to the client.
    Served {
        status: u16,
        /// The connection may serve another request.
        keep_alive: bool,
        /// Time spent on the upstream exchange, microseconds.
        upstream_us: Option<u64>,
    },
    /// Nothing was sent: answer this error, with the header lines in
    /// [`RequestBufs::resp_headers`]; close after it when `close` is set.
    Reject(GatewayError),
    /// The connection cannot continue (a response started and broke, or the client left);
    /// the status is for the metrics (0: nothing was sent).
    Close(u16),
}

/// Why the stages stopped before a response was relayed.
#[derive(Debug)]
enum Stop {
    /// Answer this error (extra header lines are in `resp_headers`).
    Reject(GatewayError),
    /// Close the connection; the status is for the metrics.
    Close(u16),
}

impl From<GatewayError> for Stop {
    fn from(e: GatewayError) -> Self {
        Stop::Reject(e)
    }
}

/// What the stages of one request share.
struct Request<'a> {
    snap: &'a Snapshot,
    head: &'a RequestHead,
    /// The head's bytes (a copy: the connection buffer goes on to hold the body).
    head_bytes: &'a [u8],
    info: ReqInfo,
    /// The body is off the connection (read whole, or there is none).
    body_read: bool,
}

/// Serves one request (see the module docs).
pub async fn handle(
    worker: &Rc<Worker>,
    snap: &Snapshot,
    c: &mut ClientConn,
    head: &RequestHead,
    head_len: usize,
    bufs: &mut RequestBufs,
) -> RequestOutcome {
    bufs.reset();
    let RequestBufs {
        head: head_bytes,
        body,
        body_out,
        model,
        parse,
        up_headers,
        resp_headers,
        facts,
        adapt: adapt_bufs,
    } = bufs;
    // The head is copied out so the body can be read into the connection buffer behind it.
    head_bytes.extend_from_slice(&c.buffered()[..head_len]);
    c.consume(head_len);
    facts.trace = worker.begin_trace(Some((head, head_bytes)));
    let mut rq = Request {
        snap,
        head,
        head_bytes,
        info: ReqInfo::of(head),
        body_read: head.framing == BodyFraming::None,
    };
    let bufs = Bufs {
        body,
        body_out,
        model,
        parse,
        up_headers,
        resp_headers,
        facts,
        adapt: adapt_bufs,
    };
    match stages(worker, c, &mut rq, bufs).await {
        Ok(outcome) => outcome,
        Err(Stop::Close(status)) => RequestOutcome::Close(status),
        Err(Stop::Reject(e)) => RequestOutcome::Reject(skip_unread_body(c, &rq, e)),
    }
}

/// The request's buffers, borrowed one by one.
struct Bufs<'b> {
    body: &'b mut Vec<u8>,
    body_out: &'b mut Vec<u8>,
    model: &'b mut String,
    parse: &'b mut crate::model::ParseHome,
    up_headers: &'b mut Vec<u8>,
    resp_headers: &'b mut Vec<u8>,
    facts: &'b mut crate::slot::Facts,
    adapt: &'b mut crate::adapt::Bufs,
}

/// The stages in order; `Err` ends the request before anything was relayed.
async fn stages(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    rq: &mut Request<'_>,
    b: Bufs<'_>,
) -> Result<RequestOutcome, Stop> {
    let snap = rq.snap;
    let m = lookup(rq, b.resp_headers)?;
    // The path's default route, known before any body is read.
    let early = snap.router.select_by_model(&m, None).ok();
    let routed_path = rq.head.path.get(rq.head_bytes);
    let has_body = rq.head.framing != BodyFraming::None;
    let needs_body = m.needs_model()
        || early.is_some_and(|r| {
            matches!(r.target(), RouteTarget::Split(_))
                || adapt::needs_body(snap, r, routed_path, has_body)
        });
    // A credential is checked before the body is read whenever the route may need it, so an
    // unauthenticated caller never gets the gateway to buffer a body.
    let peer = c.stream.peer_identity();
    let verdict = authn::verify_early(worker, rq.snap, (rq.head, rq.head_bytes), peer, early);
    if let (Some(route), Some(Err(e))) = (early, &verdict) {
        if !m.needs_model() && authn::required(snap.auth.as_ref(), route) {
            return Err(authn::rejection(worker, *e, b.resp_headers).into());
        }
    }
    let mut json = None;
    if needs_body {
        // Whatever happens now, the body is off the connection or the connection closes.
        rq.body_read = true;
        let limits = &snap.limits;
        let into = (b.body, b.model, b.parse);
        let opening = snap.balance.prompt_keyed();
        json = Some(body::read_json(c, &rq.info, rq.head.framing, limits, into, opening).await?);
    }
    let route: &Route = match &json {
        Some(j) => snap
            .router
            .select_by_model(&m, j.model())
            .map_err(route_error)?,
        None => early.expect("a route that is not keyed by model has a default"),
    };
    c.tally.route = crate::metrics::route_index(route);
    // The model as asked for (a split rewrites it), for a sampled trace only.
    if let (true, Some(m)) = (
        b.facts.trace.sampled,
        json.as_ref().and_then(JsonBody::model),
    ) {
        b.facts.request_model.push_str(m);
    }
    let asked = match &json {
        Some(j) => j
            .model()
            .map_or(authn::RequestModel::Unnamed, authn::RequestModel::Named),
        None if matches!(rq.head.framing, BodyFraming::None | BodyFraming::Length(0)) => {
            authn::RequestModel::Unnamed
        }
        None => authn::RequestModel::Unread,
    };
    let identity = authn::admit_for(
        worker,
        snap,
        (rq.head, rq.head_bytes),
        c.stream.peer_identity(),
        authn::early_auth(early),
        route,
        verdict,
        asked,
        b.resp_headers,
    )?;
    let (up_idx, split_model) = match route.target() {
        RouteTarget::Upstream(i) => (*i, None),
        RouteTarget::Split(s) => {
            let json = json.as_mut().expect("split routes read the body");
            let chosen =
                split::choose(worker, rq, route, s, identity.as_ref(), json).inspect_err(|e| {
                    b.resp_headers.extend_from_slice(b"retry-after: 1\r\n");
                    if *e == split::NO_DEPLOYMENT {
                        b.facts.trace.event(BREAKER, Some(BREAKER_NO_DEPLOYMENT));
                    }
                })?;
            crate::http::write::field(
                b.resp_headers,
                b"x-shardgate-model",
                chosen.model.as_bytes(),
            );
            crate::http::write::field(
                b.resp_headers,
                b"x-shardgate-version",
                chosen.version.as_bytes(),
            );
            c.tally.deployment = Some(chosen.deployment.0);
            let up = snap.deployment_upstreams[chosen.deployment.index()];
            (up, Some(chosen.model))
        }
    };
    let upstream = &snap.upstreams[up_idx];
    let usage = json.as_mut().map(usage_spec);
    // The model quotas and token counts go by: the deployment's, or the one the body names
    // ("" on routes that do not read the body).
    let model = split_model
        .or_else(|| json.as_ref().and_then(JsonBody::model))
        .unwrap_or("");
    let max_tokens = json.as_ref().and_then(JsonBody::max_tokens);
    let price = snap
        .spend
        .as_ref()
        .and_then(|s| s.prices.lookup(c.tally.deployment, model));
    let caller = quota_check::Caller {
        subject: identity.as_ref().map(|i| &*i.subject),
        tenant: identity.as_ref().and_then(|i| i.tenant.as_deref()),
        api_key: identity.as_ref().and_then(|i| i.api_key).map(|k| k.id()),
        ip: c.peer.ip(),
    };
    let budgets = budget_check::admit(
        worker,
        snap,
        &caller,
        model,
        max_tokens,
        price,
        b.resp_headers,
    )
    .await?;
    let ticket = quota_check::admit(
        worker,
        snap,
        c.peer.ip(),
        identity.as_ref(),
        model,
        max_tokens,
        b.resp_headers,
    )
    .await
    .inspect(|t| {
        if t.is_some() {
            b.facts.trace.event(QUOTA, Some(QUOTA_ADMITTED));
        }
    })
    .inspect_err(|e| {
        budget_check::refund(worker, &budgets);
        let outcome = if e.status == 429 {
            QUOTA_REJECTED
        } else {
            QUOTA_UNAVAILABLE
        };
        b.facts.trace.event(QUOTA, Some(outcome));
    })?;
    let affinity = affinity::key(rq, up_idx, identity.as_ref(), json.as_ref());
    let adapted = adapt::prepare(
        snap,
        route,
        upstream,
        routed_path,
        json.as_mut(),
        adapt::Out {
            body: b.body_out,
            headers: b.up_headers,
            param: &mut b.facts.error_param,
        },
    )?;
    let trace = upstream_head(
        c,
        rq,
        identity.as_ref(),
        upstream,
        &adapted,
        b.up_headers,
        b.facts,
    );
    let ob = Outbound {
        upstream,
        body: match &json {
            Some(_) => OutBody::Buffered(b.body_out),
            None => OutBody::FromClient,
        },
        extra_request: b.up_headers,
        extra_response: b.resp_headers,
        usage,
        timeouts: route.timeouts(),
        retryable: route.retryable(),
        trace,
        affinity,
        adapt: adapted.response,
        adapt_bufs: Some(b.adapt),
        // Charged before the client has it all (see `settle`).
        hold_last: ticket.is_some() || !budgets.is_empty(),
    };
    let result = proxy::forward(worker, c, rq.info, ob, snap).await;
    let (usage, served) = match &result {
        Ok(done) => (done.usage, true),
        Err(Failure::Close(_, usage)) => (*usage, true),
        // Nothing was served: a token reservation goes back whole.
        Err(_) => (Some(Usage::default()), false),
    };
    let cost = price.zip(usage).map(|(p, u)| p.cost(&u));
    quota_check::charge(worker, ticket, identity.as_ref(), model, usage.as_ref());
    budget_check::charge(worker, snap, &budgets, usage.as_ref(), cost);
    let recorded = spend_record::Served {
        caller: &caller,
        model,
        usage,
        cost,
        served,
    };
    spend_record::record(worker, snap, &recorded, b.facts);
    match result {
        Ok(done) => Ok(RequestOutcome::Served {
            status: done.status,
            keep_alive: settle(worker, c).await && done.keep_alive,
            upstream_us: done.upstream_us,
        }),
        Err(Failure::Respond(e)) => {
            // The upstream's failure is answered without the route's response headers.
            b.resp_headers.clear();
            Ok(RequestOutcome::Reject(e))
        }
        Err(Failure::Unavailable { error, retry_after }) => {
            b.facts.trace.event(BREAKER, Some(BREAKER_ALL_OPEN));
            let _ = write!(b.resp_headers, "retry-after: {retry_after}\r\n");
            Ok(RequestOutcome::Reject(error))
        }
        Err(Failure::Close(status, _)) => Ok(RequestOutcome::Close(status)),
    }
}

/// Server span events (see `trace`): the quota decision and breaker refusals.
const QUOTA: &str = "shardgate.quota";
const QUOTA_ADMITTED: (&str, &str) = ("shardgate.quota.outcome", "admitted");
const QUOTA_REJECTED: (&str, &str) = ("shardgate.quota.outcome", "rejected");
const QUOTA_UNAVAILABLE: (&str, &str) = ("shardgate.quota.outcome", "unavailable");
const BREAKER: &str = "shardgate.breaker";
const BREAKER_ALL_OPEN: (&str, &str) = ("shardgate.breaker.outcome", "all_endpoints_open");
const BREAKER_NO_DEPLOYMENT: (&str, &str) = ("shardgate.breaker.outcome", "no_healthy_deployment");

/// The route match for the request's method and normalised path (404, or 405 with `Allow`).
fn lookup<'s>(
    rq: &Request<'s>,
    resp_headers: &mut Vec<u8>,
) -> Result<crate::route::RouteMatch<'s>, Stop> {
    // The normalised path is visible ASCII (see `http::path`), so it is valid UTF-8.
    let path = std::str::from_utf8(rq.head.path.get(rq.head_bytes)).unwrap_or("/");
    rq.snap
        .router
        .lookup(rq.head.method.as_str(), path)
        .map_err(|e| {
            if let RouteError::MethodNotAllowed(ep) = e {
                let _ = write!(resp_headers, "allow: {}\r\n", rq.snap.router.allow(ep));
            }
            route_error(e).into()
        })
}

fn route_error(e: RouteError) -> GatewayError {
    match e {
        RouteError::NotFound => error::NOT_FOUND,
        RouteError::MethodNotAllowed(_) => error::METHOD_NOT_ALLOWED,
        RouteError::ModelRequired => {
            GatewayError::downstream(400, "this path requires a `model` in the request body")
        }
        RouteError::UnknownModel => {
            GatewayError::downstream(404, "no route serves the requested model")
        }
    }
}

/// How the relay reads token usage from the response. Streams report usage only when asked:
/// the gateway asks on the client's behalf and hides the extra event from a client that did
/// not ask for it.
fn usage_spec(json: &mut JsonBody<'_>) -> UsageSpec {
    if !json.stream() {
        return UsageSpec::Json;
    }
    let strip = !json.include_usage();
    if strip {
        json.request_usage();
    }
    UsageSpec::Sse { strip }
}

/// Writes the upstream head prefix into `c.up_out` (request line, the client's end-to-end
/// headers minus those the gateway owns, forwarding headers, the trace context) and the
/// identity headers into `up_headers`. `Some`: the request is sampled, and each attempt
/// names its own span in the `traceparent` written here.
fn upstream_head(
    c: &mut ClientConn,
    rq: &Request<'_>,
    identity: Option<&Identity<'_>>,
    upstream: &Upstream,
    adapted: &adapt::Adapted<'_>,
    up_headers: &mut Vec<u8>,
    facts: &crate::slot::Facts,
) -> Option<crate::trace::Propagation> {
    let snap = rq.snap;
    let auth = snap.auth.as_ref();
    if let (Some(a), Some(id)) = (auth, identity) {
        authn::identity_headers(a, id, up_headers);
    }
    let mut up_out = std::mem::take(&mut c.up_out);
    let tracing = facts.trace.is_active();
    let target = adapted.path.map(|p| (p, &b""[..]));
    proxy::write_head_prefix(&mut up_out, rq.head_bytes, c, rq.head, target, |name| {
        authn::is_gateway_header(auth, identity.is_some(), name)
            || (upstream.auth_line.is_some() && name.eq_ignore_ascii_case(b"authorization"))
            || crate::http::limits::underscore_dropped(&snap.limits, name)
            || adapted.drops(name)
            || (tracing && crate::trace::is_trace_header(name))
    });
    let propagation = match tracing {
        true => crate::trace::write_upstream(&mut up_out, &facts.trace, rq.head, rq.head_bytes),
        false => None,
    };
    c.up_out = up_out;
    propagation
}

/// A rejection of a request whose body may still be on the connection: a body buffered whole
/// is skipped; any other unread body makes the rejection close the connection.
fn skip_unread_body(c: &mut ClientConn, rq: &Request<'_>, e: GatewayError) -> GatewayError {
    if rq.body_read {
        return e;
    }
    let whole = match rq.head.framing {
        BodyFraming::None => Some(0),
        BodyFraming::Length(n) => usize::try_from(n).ok().filter(|&n| n <= c.buffered().len()),
        BodyFraming::Chunked => None,
    };
    match whole {
        Some(n) => {
            c.consume(n);
            e
        }
        None => e.closing(),
    }
}

/// Sends what a relayed response left staged (its last bytes, held while its usage was
/// charged) once the coordinator has counted every charge this core sent (waiting at most
/// [`quota_check::LEASE_WAIT`]): a charge that used a budget or quota up has then recalled
/// the other cores' leases, so a client that sends its next request as soon as it has this
/// response is never admitted on them. Nothing waits when no charge is outstanding (a
/// response within its lease, or no token limit). False: the client is gone.
async fn settle(worker: &Rc<Worker>, c: &mut ClientConn) -> bool {
    if c.out.is_empty() {
        return true;
    }
    let sent = worker.quota.borrow().charges_sent();
    let deadline = Instant::now() + quota_check::LEASE_WAIT;
    while !worker.quota.borrow().counted(sent) && Instant::now() < deadline {
        worker.lease.wait(deadline).await;
    }
    c.flush_out().await.is_ok()
}
