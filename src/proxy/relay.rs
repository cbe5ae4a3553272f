//! Upstream response: reading its head (parsed by the codec, [`crate::http::response`]), the
//! client-facing head, and the streaming body relay.
//!
//! # Contract
//!
//! [`read_response_head`] waits (up to the first-byte timeout) for a complete, valid response
//! head, skipping interim 1xx responses. [`write_client_head`] re-serializes it for the client
//! without hop-by-hop fields and decides both sides' framing. [`relay_body`] forwards the body
//! read by read — each upstream read is written to the client before the next read, so
//! server-sent events are never held back — and fails if the upstream stops early, in which
//! case the caller closes the client connection so the response cannot look complete. A
//! response to HEAD, a 1xx, 204 or 304 has no body whatever its headers say. Bytes past the end
//! of the body stay in `up.buf`, so the pool refuses the connection (see [`crate::pool`]).
//!
//! A body an adapter rewrites ([`RelayCtx::rewrite`], see [`crate::adapt`]) changes length,
//! and an upstream `Content-Encoding` it could not read is refused (502). A rewritten event
//! stream is chunked toward the client (close-delimited for HTTP/1.0 clients) whatever the
//! upstream sent; any other rewritten body is held whole (the tap
//! [holds](super::tap::Tap::holds) it and the head stays unsent until the body is done), so
//! its `content-length` is written into the head once the body is complete
//! ([`RelayPlan::length_at`]): the client gets a length-framed response, and an HTTP/1.0
//! client can keep its connection.

use std::time::Duration;

use crate::conn::ClientConn;
use crate::error::UpstreamError;
use crate::http::body::ChunkedDecoder;
use crate::http::parse::tokens;
use crate::http::response::{self, parse_fields, uninit_headers};
/// The codec's response head and framing; the framing is named for where it comes from.
pub use crate::http::response::{
    ResponseFraming as UpFraming, ResponseHead, MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS,
};
use crate::http::write::{self, reason};

use super::tap::Tap;
use crate::pool::{UpConn, UPSTREAM_READ_BUF};

/// Largest single read from an upstream while relaying a body.
pub const RELAY_READ: usize = 64 * 1024;

/// Response fields never relayed as received.
const DROP_RESPONSE_HEADERS: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"trailer",
    b"content-length",
    b"x-request-id",
];

/// Reads until a final (non-1xx) response head is buffered in `up.buf`.
pub async fn read_response_head(
    up: &mut UpConn,
    first_byte: Duration,
) -> Result<ResponseHead, UpstreamError> {
    let deadline = std::time::Instant::now() + first_byte;
    loop {
        match parse_head(&up.buf)? {
            Some(h) if (100..200).contains(&h.status) => {
                // Interim responses (100, 103) are not relayed; 101 would need Upgrade.
                if h.status == 101 {
                    return Err(UpstreamError::BadResponse);
                }
                up.buf.drain(..h.head_len);
                continue;
            }
            Some(h) => return Ok(h),
            None if up.buf.len() >= MAX_RESPONSE_HEAD => return Err(UpstreamError::BadResponse),
            None => {}
        }
        // Double the buffer when it runs short (a large head).
        let grow = up.buf.capacity().max(UPSTREAM_READ_BUF);
        match monoio::time::timeout_at(deadline.into(), up.read_more(1024, grow)).await {
            Ok(Ok(0) | Err(_)) => return Err(UpstreamError::ClosedBeforeResponse),
            Ok(Ok(_)) => {}
            Err(_) => return Err(UpstreamError::FirstByteTimeout),
        }
    }
}

/// Parses an upstream response head from `buf` ([`response::parse_response_head`]);
/// `Ok(None)`: incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<ResponseHead>, UpstreamError> {
    response::parse_response_head(buf).map_err(|_| UpstreamError::BadResponse)
}

/// What the client side needs to know about the request.
pub struct RelayCtx<'a> {
    /// Extra header lines (each ending in CRLF) added to the response.
    pub extra: &'a [u8],
    pub is_head: bool,
    pub client_minor: u8,
    /// The client connection may stay open (client asked for it, worker not draining).
    pub keep_client: bool,
    pub request_id: &'a str,
    /// The body is rewritten on the way (its length changes).
    pub rewrite: bool,
    /// The status the client gets (an adapter may map the upstream's).
    pub status: u16,
}

/// How the body will be relayed.
#[derive(Debug, Clone, Copy)]
pub struct RelayPlan {
    pub up: UpFraming,
    /// Re-encode the body as chunked toward the client.
    pub chunk_to_client: bool,
    pub keep_client: bool,
    /// The upstream connection can go back to the pool after a complete body.
    pub upstream_reusable: bool,
    /// The response's content type is `text/event-stream`.
    pub event_stream: bool,
    /// A rewritten body held whole: where in the output its `content-length` line goes once
    /// the body is complete (just before the head's closing CRLF).
    pub length_at: Option<usize>,
    /// Leave the body's last bytes staged in `c.out` for the caller to flush (see
    /// [`Outbound::hold_last`](super::Outbound::hold_last)).
    pub hold_last: bool,
}

/// Writes the client-facing response head into `out` and returns the relay plan.
pub fn write_client_head(
    out: &mut Vec<u8>,
    up_buf: &[u8],
    h: &ResponseHead,
    ctx: &RelayCtx<'_>,
) -> Result<RelayPlan, UpstreamError> {
    let mut headers = uninit_headers();
    let mut resp = httparse::Response::new(&mut []);
    parse_fields(&mut resp, &up_buf[..h.head_len], &mut headers)
        .map_err(|_| UpstreamError::BadResponse)?;
    let up = if ctx.is_head {
        UpFraming::None
    } else {
        h.framing
    };
    let reason_phrase = match resp.reason.filter(|r| !r.is_empty()) {
        Some(r) if ctx.status == h.status => r,
        _ => reason(ctx.status),
    };
    crate::http::write::status_line_with(out, ctx.status, reason_phrase.as_bytes());
    let mut event_stream = false;
    // Most responses have no `Connection` field; only then is the per-field scan needed.
    let has_connection = resp
        .headers
        .iter()
        .any(|x| x.name.eq_ignore_ascii_case("connection"));
    for f in resp.headers.iter() {
        let n = f.name.as_bytes();
        if n.eq_ignore_ascii_case(b"content-type") {
            event_stream =
                f.value.len() >= 17 && f.value[..17].eq_ignore_ascii_case(b"text/event-stream");
        }
        if ctx.rewrite
            && n.eq_ignore_ascii_case(b"content-encoding")
            && !f.value.eq_ignore_ascii_case(b"identity")
        {
            // The adapter reads the body: an encoding it cannot undo is a response it cannot use.
            return Err(UpstreamError::BadResponse);
        }
        let listed = has_connection
            && resp
                .headers
                .iter()
                .filter(|x| x.name.eq_ignore_ascii_case("connection"))
                .any(|x| tokens(x.value).any(|t| t.eq_ignore_ascii_case(n)));
        if listed
            || DROP_RESPONSE_HEADERS
                .iter()
                .any(|d| n.eq_ignore_ascii_case(d))
        {
            // HEAD and 304 responses carry the representation's length as metadata.
            let meta_length =
                n.eq_ignore_ascii_case(b"content-length") && (ctx.is_head || h.status == 304);
            if !meta_length {
                continue;
            }
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    crate::http::write::field(out, b"x-request-id", ctx.request_id.as_bytes());
    out.extend_from_slice(ctx.extra);
    // A rewritten body that is not an event stream is held whole (see the module docs): its
    // length is known at its end, before anything is sent.
    let held = ctx.rewrite && up != UpFraming::None && !event_stream;
    let unknown_length = !held
        && (matches!(up, UpFraming::Chunked | UpFraming::Close)
            || (ctx.rewrite && up != UpFraming::None));
    // HTTP/1.0 clients cannot take chunked: close-delimit instead.
    let chunk_to_client = unknown_length && ctx.client_minor == 1;
    let keep_client = ctx.keep_client && (chunk_to_client || !unknown_length);
    match up {
        UpFraming::Length(n) if !ctx.rewrite => {
            crate::http::write::field_decimal(out, b"content-length", n)
        }
        UpFraming::Length(_) if chunk_to_client => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        UpFraming::Chunked | UpFraming::Close if chunk_to_client => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        _ => {}
    }
    if !keep_client {
        out.extend_from_slice(b"connection: close\r\n");
    } else if ctx.client_minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(RelayPlan {
        up,
        chunk_to_client,
        keep_client,
        upstream_reusable: h.keep_alive,
        event_stream,
        length_at: held.then(|| out.len() - 2),
        hold_last: false,
    })
}

/// Relays the body (the head is already staged in `c.out`). Err: the upstream failed or
/// the client went away; the caller closes both connections. With `plan.hold_last`, what is
/// staged once the body is complete stays in `c.out` for the caller to flush.
pub async fn relay_body(
    c: &mut ClientConn,
    up: &mut UpConn,
    plan: &RelayPlan,
    idle: Duration,
    deadline: Option<std::time::Instant>,
    tap: &mut Tap<'_>,
    gap: &mut dyn FnMut(u64),
) -> Result<(), UpstreamError> {
    // A body framed by its length at the end must be held whole until then.
    if plan.length_at.is_some() && !tap.holds() {
        return Err(UpstreamError::BadResponse);
    }
    let streamed = matches!(plan.up, UpFraming::Chunked | UpFraming::Close);
    let mut last_read = std::time::Instant::now();
    let mut remaining = match plan.up {
        UpFraming::Length(n) => n,
        _ => 0,
    };
    let mut dec = ChunkedDecoder::new(u64::MAX);
    loop {
        // Stage everything buffered from the upstream.
        let done = match plan.up {
            UpFraming::None => true,
            UpFraming::Length(_) => {
                let n = (up.buf.len() as u64).min(remaining) as usize;
                if n > 0 && n == up.buf.len() && c.out.is_empty() && tap.is_none() {
                    // Nothing staged ahead of these bytes (a later read of a long body):
                    // write the upstream buffer itself instead of copying it.
                    let (res, mut buf) = c.write_owned(std::mem::take(&mut up.buf)).await;
                    buf.clear();
                    up.buf = buf;
                    if res.is_err() {
                        return Err(UpstreamError::ClientGone);
                    }
                } else {
                    let (out, chunked) = (&mut c.out, plan.chunk_to_client);
                    tap.pass(&up.buf[..n], &mut |d| stage_chunk(out, d, chunked));
                    up.buf.drain(..n);
                }
                remaining -= n as u64;
                remaining == 0
            }
            UpFraming::Close => {
                let (out, chunked) = (&mut c.out, plan.chunk_to_client);
                tap.pass(&up.buf, &mut |d| stage_chunk(out, d, chunked));
                up.buf.clear();
                false
            }
            UpFraming::Chunked => {
                let mut consumed = 0;
                loop {
                    let step = dec
                        .step(&up.buf[consumed..])
                        .map_err(|_| UpstreamError::BadResponse)?;
                    if let Some((a, b)) = step.data {
                        let (out, chunked) = (&mut c.out, plan.chunk_to_client);
                        let data = &up.buf[consumed + a..consumed + b];
                        tap.pass(data, &mut |d| stage_chunk(out, d, chunked));
                    }
                    consumed += step.consumed;
                    if dec.is_done() || step.consumed == 0 {
                        break;
                    }
                }
                up.buf.drain(..consumed);
                dec.is_done()
            }
        };
        if done {
            finish_body(&mut c.out, plan, tap)?;
        }
        // A holding tap sends the head and the body together, at the end.
        if done && plan.hold_last {
            return Ok(());
        }
        if (done || !tap.holds()) && c.flush_out().await.is_err() {
            return Err(UpstreamError::ClientGone);
        }
        if done {
            return Ok(());
        }
        // Each read waits at most the idle gap, and never past the route's total deadline.
        let wait = deadline.map_or(idle, |dl| {
            idle.min(dl.saturating_duration_since(std::time::Instant::now()))
        });
        match monoio::time::timeout(wait, up.read_more(4096, RELAY_READ)).await {
            Ok(Ok(0)) => {
                if plan.up == UpFraming::Close {
                    finish_body(&mut c.out, plan, tap)?;
                    if plan.hold_last {
                        return Ok(());
                    }
                    return c.flush_out().await.map_err(|_| UpstreamError::ClientGone);
                }
                return Err(UpstreamError::ClosedMidBody);
            }
            Ok(Ok(_)) => {
                if streamed {
                    gap(last_read.elapsed().as_micros() as u64);
                    last_read = std::time::Instant::now();
                }
            }
            Ok(Err(_)) => return Err(UpstreamError::ClosedMidBody),
            Err(_) => return Err(UpstreamError::IdleTimeout),
        }
    }
}

/// Stages what the tap still holds and the end of the client framing: the last chunk, or the
/// `content-length` of a body held whole (the head and the whole body are in `out`).
fn finish_body(
    out: &mut Vec<u8>,
    plan: &RelayPlan,
    tap: &mut Tap<'_>,
) -> Result<(), UpstreamError> {
    let chunked = plan.chunk_to_client;
    tap.finish(&mut |d| stage_chunk(out, d, chunked))?;
    if chunked {
        out.extend_from_slice(write::LAST_CHUNK);
    }
    if let Some(at) = plan.length_at {
        // `at` is just before the head's closing CRLF; the body starts after that CRLF.
        let body = out.len() - (at + 2);
        write::insert_content_length(out, at, body as u64);
    }
    Ok(())
}

fn stage_chunk(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if chunked {
        write::chunk(out, data);
    } else {
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(raw: &str, is_head: bool, minor: u8) -> (String, RelayPlan) {
        let h = parse_head(raw.as_bytes()).unwrap().unwrap();
        let mut out = Vec::new();
        let ctx = RelayCtx {
            is_head,
            client_minor: minor,
            keep_client: true,
            request_id: "r",
            extra: b"x-extra: 1\r\n",
            rewrite: false,
            status: h.status,
        };
        let p = write_client_head(&mut out, raw.as_bytes(), &h, &ctx).unwrap();
        (String::from_utf8(out).unwrap(), p)
    }

    #[test]
    fn strips_hop_by_hop_and_reframes() {
        let (head, p) = plan("HTTP/1.1 200 OK\r\nConnection: x-internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-Keep: yes\r\n\r\n", false, 1);
        assert!(!head.to_ascii_lowercase().contains("x-internal"));
        assert!(!head.to_ascii_lowercase().contains("keep-alive: timeout"));
        assert!(head.contains("X-Keep: yes\r\n"));
        assert!(head.contains("x-extra: 1\r\n"));
        assert!(head.contains("transfer-encoding: chunked\r\n"));
        assert!(p.chunk_to_client && p.keep_client && p.upstream_reusable);
    }

    #[test]
    fn http10_client_gets_close_delimited() {
        let (head, p) = plan(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            0,
        );
        assert!(!p.chunk_to_client && !p.keep_client);
        assert!(head.contains("connection: close"));
    }

    /// A rewritten body: held whole and length-framed unless it is an event stream; nothing
    /// to frame for HEAD, 204 and 304.
    #[test]
    fn rewritten_bodies_get_their_length_at_the_end() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Some(false),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Some(false),
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
                false,
                Some(false),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 5\r\n\r\n",
                false,
                Some(true),
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, None),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, None),
        ];
        for (raw, is_head, body) in cases {
            for minor in [0u8, 1] {
                let h = parse_head(raw.as_bytes()).unwrap().unwrap();
                let mut out = b"earlier bytes".to_vec();
                let ctx = RelayCtx {
                    is_head,
                    client_minor: minor,
                    keep_client: true,
                    request_id: "r",
                    extra: b"",
                    rewrite: true,
                    status: h.status,
                };
                let p = write_client_head(&mut out, raw.as_bytes(), &h, &ctx).unwrap();
                let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
                match body {
                    Some(false) => {
                        assert_eq!(p.length_at, Some(out.len() - 2), "{raw:?}");
                        assert!(!p.chunk_to_client && p.keep_client, "{raw:?}");
                        assert!(!head.contains("transfer-encoding"), "{raw:?}");
                        assert!(!head.contains("content-length"), "{raw:?}");
                    }
                    Some(true) => {
                        assert_eq!(p.length_at, None);
                        assert_eq!(p.chunk_to_client, minor == 1, "{raw:?}");
                        assert_eq!(p.keep_client, minor == 1, "{raw:?}");
                    }
                    None => {
                        assert_eq!(p.length_at, None);
                        assert!(!p.chunk_to_client && p.keep_client, "{raw:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_ambiguous_framing() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 2x0 OK\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(raw.as_bytes()).unwrap_err(),
                UpstreamError::BadResponse,
                "{raw:?}"
            );
        }
    }

    /// Found by the `response_head` fuzz target: `020` parsed as status 20.
    #[test]
    fn status_outside_100_to_599_is_refused() {
        for code in ["000", "001", "020", "099", "600", "999"] {
            let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            let got = parse_head(raw.as_bytes());
            assert_eq!(got.unwrap_err(), UpstreamError::BadResponse, "{raw:?}");
        }
        for (code, want) in [("100", 100), ("199", 199), ("200", 200), ("599", 599)] {
            let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(parse_head(raw.as_bytes()).unwrap().unwrap().status, want);
        }
    }

    #[test]
    fn close_delimited_is_not_reusable() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, UpFraming::Close);
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, UpFraming::None);
        assert!(h.keep_alive);
    }
}
