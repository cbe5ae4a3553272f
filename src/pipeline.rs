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
//! the connection otherwise (its unread bytes would be taken for the next request).

use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

mod authn;
mod limit;

use crate::config::Snapshot;
use crate::error::{self, GatewayError};
use crate::http::parse::{BodyFraming, RequestHead};
use crate::proxy::{self, Failure, OutBody, Outbound, ReqInfo};
use crate::runtime::Worker;
use crate::server::{micros, ClientConn};

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
    let route = match snap.route(&head.method, head.path.get(c.buffered())) {
        Ok(r) => r,
        Err(None) => {
            return reject(worker, c, head, head_len, error::NOT_FOUND, b"", started).await
        }
        Err(Some(r)) => {
            let mut allow = b"allow: ".to_vec();
            for (i, m) in r.methods.iter().enumerate() {
                let _ = write!(allow, "{}{}", if i > 0 { ", " } else { "" }, m);
            }
            allow.extend_from_slice(b"\r\n");
            return reject(
                worker,
                c,
                head,
                head_len,
                error::METHOD_NOT_ALLOWED,
                &allow,
                started,
            )
            .await;
        }
    };
    let upstream = &snap.upstreams[route.upstream];
    let auth = snap.auth.as_ref();
    let identity = match authn::authenticate(worker, auth, route, head, c.buffered()) {
        Ok(id) => id,
        Err(e) => {
            let mut extra = Vec::new();
            let err = authn::rejection(e, &mut extra);
            return reject(worker, c, head, head_len, err, &extra, started).await;
        }
    };
    let mut resp_headers = Vec::new();
    let _ticket = match &snap.quota {
        None => None,
        Some(q) => {
            let caller = limit::Caller {
                subject: identity.as_ref().map(|i| i.subject.as_str()),
                tenant: identity.as_ref().and_then(|i| i.tenant.as_deref()),
                ip: c.peer.ip(),
            };
            match limit::check(worker, q, &caller, "", None, &mut resp_headers).await {
                limit::Limited::Unlimited => None,
                limit::Limited::Admitted(t) => Some(t),
                limit::Limited::Rejected(e) => {
                    let err = limit::rejection(&e);
                    return reject(worker, c, head, head_len, err, &resp_headers, started).await;
                }
                limit::Limited::Failed(e) => {
                    return reject(worker, c, head, head_len, e, b"", started).await
                }
            }
        }
    };
    let mut req_headers = Vec::new();
    if let (Some(a), Some(id)) = (auth, &identity) {
        authn::identity_headers(a, id, &mut req_headers);
    }
    let mut up_out = std::mem::take(&mut c.up_out);
    proxy::write_head_prefix(&mut up_out, c, head, |name| {
        authn::is_gateway_header(auth, route, name)
            || (upstream.auth_line.is_some() && name.eq_ignore_ascii_case(b"authorization"))
    });
    c.up_out = up_out;
    c.consume(head_len);
    let ob = Outbound {
        upstream,
        body: OutBody::FromClient,
        extra_request: &req_headers,
        extra_response: &resp_headers,
    };
    let result = proxy::forward(worker, c, req, ob, snap).await;
    finish(worker, c, req, result, started).await
}

/// Records the outcome of a forward and answers its error, if any.
async fn finish(
    worker: &Rc<Worker>,
    c: &mut ClientConn,
    req: ReqInfo,
    result: Result<proxy::Done, Failure>,
    started: Instant,
) -> bool {
    match result {
        Ok(done) => {
            worker
                .metrics
                .borrow_mut()
                .record(done.status, micros(started), done.upstream_us);
            done.keep_alive
        }
        Err(Failure::Respond(mut e)) => {
            if !req.keep_alive || worker.drain.is_draining() {
                e = e.closing();
            }
            let sent = c.send_error(&e, b"").await.is_ok();
            worker
                .metrics
                .borrow_mut()
                .record(e.status, micros(started), None);
            sent && !e.close
        }
        Err(Failure::Close(status)) => {
            worker
                .metrics
                .borrow_mut()
                .record(status, micros(started), None);
            false
        }
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
    worker
        .metrics
        .borrow_mut()
        .record(e.status, micros(started), None);
    sent && !e.close
}
