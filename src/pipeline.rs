//! The request pipeline: one request through the data-path stages, in order.
//!
//! ```text
//! route (404/405) → [auth] → [body: model] → [split] → [quota] → forward → account
//! ```
//!
//! # Contract
//!
//! [`handle`] takes a parsed request head whose bytes (and any body bytes already received)
//! sit at the front of the connection buffer, serves it, and returns whether the connection
//! may serve another request. Every rejection by a stage becomes a JSON error response; a
//! rejection before the body was read skips a body that is already buffered whole and closes
//! the connection otherwise (its unread bytes would be taken for the next request). A body
//! read here (the route depends on it) is preceded by `100 Continue` when the client asked
//! for it and the body has still to arrive.

use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

pub(crate) mod authn;
mod limit;

use crate::auth::Identity;
use crate::config::{Snapshot, Upstream};
use crate::conn::ClientConn;
use crate::error::{self, Fault, GatewayError};
use crate::http::parse::{BodyFraming, RequestHead};
use crate::model::JsonBody;
use crate::proxy::{self, Failure, OutBody, Outbound, ReqInfo};
use crate::route::{Route, RouteError, RouteTarget, SelectCtx, StickyKey};
use crate::worker::Worker;

/// Serves one request (see the module docs).
pub async fn handle(
    worker: &Rc<Worker>,
    snap: &Snapshot,
    c: &mut ClientConn,
    head: &RequestHead,
    head_len: usize,
    started: Instant,
) -> bool {
    let req = ReqInfo::of(head);
    // The normalised path is visible ASCII (see `http::path`), so it is valid UTF-8.
    let path = std::str::from_utf8(head.path.get(c.buffered())).unwrap_or("/");
    let m = match snap.router.lookup(head.method.as_str(), path) {
        Ok(m) => m,
        Err(e) => {
            let mut allow = Vec::new();
            if let RouteError::MethodNotAllowed(ep) = e {
                let _ = write!(allow, "allow: {}\r\n", snap.router.allow(ep));
            }
            return reject(worker, c, head, head_len, route_error(e), &allow, started).await;
        }
    };
    let auth = snap.auth.as_ref();
    // The path's default route, known before any body is read.
    let early = snap.router.select_by_model(&m, None).ok();
    // A credential is checked before the body is read whenever the route may need it, so an
    // unauthenticated caller never gets the gateway to buffer a body.
    let verdict = match auth {
        Some(a) if early.is_none_or(|r| authn::required(auth, r)) => {
            Some(authn::verify(worker, a, head, c.buffered()))
        }
        _ => None,
    };
    if let (Some(r), Some(Err(e))) = (early, &verdict) {
        if authn::required(auth, r) && !m.needs_model() {
            let mut extra = Vec::new();
            let err = authn::rejection(worker, *e, &mut extra);
            return reject(worker, c, head, head_len, err, &extra, started).await;
        }
    }
    let needs_body =
        m.needs_model() || early.is_some_and(|r| matches!(r.target(), RouteTarget::Split(_)));
    if !needs_body {
        let route = early.expect("a route without model keying has a default");
        c.tally.route = crate::metrics::route_index(route);
        let identity = match authn::admit(auth, route, verdict) {
            Ok(id) => id,
            Err(e) => {
                let mut extra = Vec::new();
                let err = authn::rejection(worker, e, &mut extra);
                return reject(worker, c, head, head_len, err, &extra, started).await;
            }
        };
        let RouteTarget::Upstream(i) = route.target() else {
            unreachable!("split routes read the body")
        };
        let upstream = &snap.upstreams[*i];
        let mut resp_headers = Vec::new();
        let ticket = match quota(
            worker,
            snap,
            c,
            identity.as_ref(),
            "",
            None,
            &mut resp_headers,
        )
        .await
        {
            Ok(t) => t,
            Err((e, extra)) => return reject(worker, c, head, head_len, e, &extra, started).await,
        };
        let mut req_headers = Vec::new();
        prepare_head(
            c,
            head,
            None,
            snap,
            identity.as_ref(),
            upstream,
            &mut req_headers,
        );
        c.consume(head_len);
        let ob = Outbound {
            upstream,
            body: OutBody::FromClient,
            extra_request: &req_headers,
            extra_response: &resp_headers,
            usage: None,
            timeouts: route.timeouts(),
            retryable: route.retryable(),
        };
        let result = proxy::forward(worker, c, req, ob, snap).await;
        let account = Account {
            ticket,
            subject: identity.map(|i| i.subject),
            model: String::new(),
        };
        return finish(worker, c, req, result, started, &account).await;
    }
    // The route (or the deployment) depends on the body: read it whole (bounded by the body
    // limit), keeping a copy of the head, whose bytes the body reads may move.
    let head_bytes = c.buffered()[..head_len].to_vec();
    c.consume(head_len);
    if proxy::inbound::send_continue(c, &req).await.is_err() {
        let closed = Err(Failure::Close(0, None));
        return finish(worker, c, req, closed, started, &Account::default()).await;
    }
    let mut raw = Vec::new();
    if let Err(e) = proxy::inbound::collect_body(c, head.framing, &snap.limits, &mut raw).await {
        return finish(
            worker,
            c,
            req,
            Err(Failure::Respond(e)),
            started,
            &Account::default(),
        )
        .await;
    }
    let p = match model_route(worker, snap, c, head, &head_bytes, &m, verdict, &mut raw).await {
        Ok(p) => p,
        Err((e, extra)) => return respond(worker, c, req, e, &extra, started).await,
    };
    let ob = Outbound {
        upstream: p.upstream,
        body: OutBody::Buffered(&p.body),
        extra_request: &p.req_headers,
        extra_response: &p.resp_headers,
        usage: Some(p.usage),
        timeouts: p.timeouts,
        retryable: p.retryable,
    };
    let result = proxy::forward(worker, c, req, ob, snap).await;
    finish(worker, c, req, result, started, &p.account).await
}

/// What to charge when a response finishes.
#[derive(Default)]
struct Account {
    ticket: Option<crate::quota::Ticket>,
    subject: Option<String>,
    model: String,
}

/// A request routed by its body, ready to forward.
struct Prepared<'s> {
    upstream: &'s Upstream,
    req_headers: Vec<u8>,
    body: Vec<u8>,
    resp_headers: Vec<u8>,
    usage: proxy::tap::UsageSpec,
    account: Account,
    timeouts: crate::route::RouteTimeouts,
    retryable: bool,
}

type Rejection = (GatewayError, Vec<u8>);

/// For a route chosen by the body: picks the route and deployment, rewrites the body, checks
/// the quota. Returns the upstream, extra request headers, the body to send and extra
/// response headers. `c.up_out` holds the upstream head prefix afterwards.
#[allow(clippy::too_many_arguments)]
async fn model_route<'s>(
    worker: &Rc<Worker>,
    snap: &'s Snapshot,
    c: &mut ClientConn,
    head: &RequestHead,
    head_bytes: &[u8],
    m: &crate::route::RouteMatch<'_>,
    verdict: Option<Result<Identity, crate::auth::AuthError>>,
    raw: &mut [u8],
) -> Result<Prepared<'s>, Rejection> {
    let plain = |e: GatewayError| (e, Vec::new());
    let mut body = JsonBody::parse(raw).map_err(|e| plain(e.into()))?;
    let route: &Route = snap
        .router
        .select_by_model(m, body.model())
        .map_err(|e| plain(route_error(e)))?;
    c.tally.route = crate::metrics::route_index(route);
    let auth = snap.auth.as_ref();
    let verdict = match (verdict, auth) {
        (None, Some(a)) if authn::required(auth, route) => {
            Some(authn::verify(worker, a, head, head_bytes))
        }
        (v, _) => v,
    };
    let identity = authn::admit(auth, route, verdict).map_err(|e| {
        let mut extra = Vec::new();
        (authn::rejection(worker, e, &mut extra), extra)
    })?;
    let mut resp_headers = Vec::new();
    let (upstream, model) = match route.target() {
        RouteTarget::Upstream(i) => (&snap.upstreams[*i], body.model().unwrap_or("").to_string()),
        RouteTarget::Split(split) => {
            if body.model().is_none() {
                return Err(plain(crate::model::BodyError::ModelMissing.into()));
            }
            let label = route
                .label_header()
                .and_then(|h| head.header(head_bytes, h))
                .or_else(|| {
                    identity
                        .as_ref()
                        .and_then(|i| i.label.as_deref())
                        .map(str::as_bytes)
                });
            let sticky = match route.sticky() {
                Some(StickyKey::Subject) => identity.as_ref().map(|i| i.subject.as_bytes()),
                Some(StickyKey::Header(h)) => head.header(head_bytes, h),
                None => None,
            };
            let ctx = SelectCtx {
                label,
                sticky_key: sticky,
            };
            // A deployment whose every endpoint has an open breaker or fails health checks is
            // skipped, so the split fails over (and reaches `fallbacks`) instead of sending
            // traffic that would only get a 503.
            let now = Instant::now();
            let resilience = worker.resilience.borrow();
            let healthy = |d: crate::route::DeploymentId| {
                let up = snap.deployment_upstreams[d.index()];
                resilience.upstream_available(&snap.resilience, up, now)
            };
            let chosen = snap
                .router
                .choose(split, &ctx, healthy, &mut worker.rng.borrow_mut())
                .ok_or_else(|| (NO_DEPLOYMENT, b"retry-after: 1\r\n".to_vec()))?;
            let _ = write!(
                resp_headers,
                "x-shardgate-model: {}\r\nx-shardgate-version: {}\r\n",
                chosen.model, chosen.version
            );
            body.set_model(chosen.served_name);
            c.tally.deployment = Some(chosen.deployment.0);
            (
                &snap.upstreams[snap.deployment_upstreams[chosen.deployment.index()]],
                chosen.model.to_string(),
            )
        }
    };
    let max_tokens = body.max_tokens();
    let ticket = quota(
        worker,
        snap,
        c,
        identity.as_ref(),
        &model,
        max_tokens,
        &mut resp_headers,
    )
    .await
    .map_err(|(e, mut extra)| {
        extra.extend_from_slice(&resp_headers);
        (e, extra)
    })?;
    // Streams report usage only when asked: ask on the client's behalf, and hide the extra
    // event from a client that did not ask for it.
    let usage = if body.stream() {
        let strip = !body.include_usage();
        if strip {
            body.request_usage();
        }
        proxy::tap::UsageSpec::Sse { strip }
    } else {
        proxy::tap::UsageSpec::Json
    };
    let mut req_headers = Vec::new();
    prepare_head(
        c,
        head,
        Some(head_bytes),
        snap,
        identity.as_ref(),
        upstream,
        &mut req_headers,
    );
    let mut out = Vec::with_capacity(raw.len() + 64);
    body.encode_into(&mut out);
    let account = Account {
        ticket,
        subject: identity.map(|i| i.subject),
        model,
    };
    Ok(Prepared {
        upstream,
        req_headers,
        body: out,
        resp_headers,
        usage,
        account,
        timeouts: route.timeouts(),
        retryable: route.retryable(),
    })
}

const NO_DEPLOYMENT: GatewayError = GatewayError {
    status: 503,
    kind: "upstream_unavailable",
    message: "no healthy deployment can serve this model",
    fault: Fault::Upstream,
    retry: false,
    close: false,
};

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

/// Runs the quota stage (if configured); `Err` carries the 429 (or 503) and its headers.
async fn quota(
    worker: &Rc<Worker>,
    snap: &Snapshot,
    c: &ClientConn,
    identity: Option<&Identity>,
    model: &str,
    max_tokens: Option<u64>,
    headers: &mut Vec<u8>,
) -> Result<Option<crate::quota::Ticket>, Rejection> {
    let Some(q) = &snap.quota else {
        return Ok(None);
    };
    let caller = limit::Caller {
        subject: identity.map(|i| i.subject.as_str()),
        tenant: identity.and_then(|i| i.tenant.as_deref()),
        ip: c.peer.ip(),
    };
    match limit::check(worker, q, &caller, model, max_tokens, headers).await {
        limit::Limited::Unlimited => Ok(None),
        limit::Limited::Admitted(t) => Ok(Some(t)),
        limit::Limited::Rejected(e) => {
            let rule = q
                .rules
                .get(usize::from(e.rule.0))
                .map_or("-", |r| r.name.as_str());
            worker.metrics.borrow_mut().counters.add(
                &crate::metrics::counters::QUOTA_REJECTIONS,
                &[rule],
                1,
            );
            Err((limit::rejection(&e), std::mem::take(headers)))
        }
        limit::Limited::Failed(e) => Err((e, Vec::new())),
    }
}

/// Writes the upstream head prefix into `c.up_out` and the identity headers into `extra`.
/// `head_bytes`: a copy of the head when the connection buffer no longer holds it.
fn prepare_head(
    c: &mut ClientConn,
    head: &RequestHead,
    head_bytes: Option<&[u8]>,
    snap: &Snapshot,
    identity: Option<&Identity>,
    upstream: &Upstream,
    extra: &mut Vec<u8>,
) {
    let auth = snap.auth.as_ref();
    if let (Some(a), Some(id)) = (auth, identity) {
        authn::identity_headers(a, id, extra);
    }
    let mut up_out = std::mem::take(&mut c.up_out);
    let buf = head_bytes.unwrap_or(c.buffered());
    proxy::write_head_prefix(&mut up_out, buf, c, head, |name| {
        authn::is_gateway_header(auth, identity.is_some(), name)
            || (upstream.auth_line.is_some() && name.eq_ignore_ascii_case(b"authorization"))
            || crate::http::limits::underscore_dropped(&snap.limits, name)
    });
    c.up_out = up_out;
}

/// Answers an error for a request whose head and body were consumed.
async fn respond(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    req: ReqInfo,
    mut e: GatewayError,
    extra: &[u8],
    started: Instant,
) -> bool {
    if !req.keep_alive || worker.drain.is_draining() {
        e = e.closing();
    }
    let sent = c.send_error(&e, extra).await.is_ok();
    crate::server::account(worker, c, e.status, started, None);
    sent && !e.close
}

/// Records the outcome of a forward, charges its tokens, and answers its error, if any.
async fn finish(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    req: ReqInfo,
    result: Result<proxy::Done, Failure>,
    started: Instant,
    account: &Account,
) -> bool {
    match result {
        Ok(done) => {
            charge(worker, account, done.tokens);
            crate::server::account(worker, c, done.status, started, done.upstream_us);
            done.keep_alive
        }
        Err(Failure::Respond(mut e)) => {
            // Nothing was served: a token reservation goes back whole.
            charge(worker, account, Some(0));
            if !req.keep_alive || worker.drain.is_draining() {
                e = e.closing();
            }
            let sent = c.send_error(&e, b"").await.is_ok();
            crate::server::account(worker, c, e.status, started, None);
            sent && !e.close
        }
        Err(Failure::Close(status, tokens)) => {
            charge(worker, account, tokens);
            crate::server::account(worker, c, status, started, None);
            false
        }
    }
}

/// Charges what a response used against the caller's quota ticket and counts it in metrics.
fn charge(worker: &Worker, account: &Account, tokens: Option<u64>) {
    let used = tokens.unwrap_or(0);
    if let Some(ticket) = account.ticket {
        let now = worker.now_ms();
        worker
            .quota
            .borrow_mut()
            .charge_tokens(ticket, used.min(u64::from(u32::MAX)) as u32, now);
        // An overrun goes to the coordinator now, not at the next inbox tick: it may take the
        // key over its limit, and other cores' leases are recalled only once it is counted.
        worker.flush_quota();
    }
    if used > 0 {
        let subject = account.subject.as_deref().unwrap_or("anonymous");
        let model = if account.model.is_empty() {
            "-"
        } else {
            account.model.as_str()
        };
        worker.metrics.borrow_mut().counters.add(
            &crate::metrics::counters::TOKENS,
            &[subject, model],
            used,
        );
    }
}

/// Answers a request rejected before its head was consumed: skips a body that is buffered
/// whole, otherwise closes after the response.
async fn reject(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    head: &RequestHead,
    head_len: usize,
    mut e: GatewayError,
    extra: &[u8],
    started: Instant,
) -> bool {
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
    if !head.keep_alive || worker.drain.is_draining() {
        e = e.closing();
    }
    let sent = c.send_error(&e, extra).await.is_ok();
    crate::server::account(worker, c, e.status, started, None);
    sent && !e.close
}
