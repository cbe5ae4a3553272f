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

use crate::config::Snapshot;
use crate::error::{self, GatewayError};
use crate::http::parse::{BodyFraming, RequestHead};
use crate::proxy::{self, Failure, OutBody, Outbound, ReqInfo};
use crate::runtime::Worker;
use crate::server::ClientConn;

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
    c.tally.route = crate::metrics::route_index(snap, route);
    let upstream = &snap.upstreams[route.upstream];
    let mut up_out = std::mem::take(&mut c.up_out);
    proxy::write_head_prefix(&mut up_out, c, head, |name| {
        upstream.auth_line.is_some() && name.eq_ignore_ascii_case(b"authorization")
    });
    c.up_out = up_out;
    c.consume(head_len);
    let ob = Outbound {
        upstream,
        body: OutBody::FromClient,
        extra_request: b"",
        extra_response: b"",
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
            crate::server::account(worker, c, done.status, started, done.upstream_us);
            done.keep_alive
        }
        Err(Failure::Respond(mut e)) => {
            if !req.keep_alive || worker.drain.is_draining() {
                e = e.closing();
            }
            let sent = c.send_error(&e, b"").await.is_ok();
            crate::server::account(worker, c, e.status, started, None);
            sent && !e.close
        }
        Err(Failure::Close(status)) => {
            crate::server::account(worker, c, status, started, None);
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
    crate::server::account(worker, c, e.status, started, None);
    sent && !e.close
}
