//! The upstream request head: what the client sent, minus what the gateway owns, plus what
//! the gateway sets.
//!
//! # Contract
//!
//! Headers are re-serialized toward the upstream: hop-by-hop fields (and every field named in
//! `Connection`) are dropped, framing is re-declared by the gateway, `X-Forwarded-For/Proto/
//! Host` and `X-Request-Id` are set (the client's `X-Forwarded-For` and RFC 7239 `Forwarded`
//! chains are kept with the gateway's hop appended), and the request line carries exactly the
//! path the request was routed on. [`write_head_prefix`] writes what is known once the route is
//! ([`crate::pipeline`] calls it); [`finish`] completes the head once the body's form is known;
//! [`inline_body`] appends a small body that is already here, so the request goes out in one
//! write and can be replayed.

use crate::conn::ClientConn;
use crate::http::parse::{BodyFraming, RequestHead};

use super::{OutBody, Outbound, ReqInfo};

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

/// Request bodies up to this size that are already buffered go out with the head in one write
/// (and can be replayed on a fresh connection).
pub const INLINE_BODY: usize = 64 * 1024;

/// Writes the first part of the upstream request head into `out`: the request line (with the
/// path the request was routed on and the query as sent; never a fragment), the client's
/// end-to-end headers (minus hop-by-hop fields, the fields the gateway sets, and any
/// for which `drop` says so), and the forwarding headers. [`finish`] completes it with Host,
/// framing and credentials once the upstream is known. `buf` holds the head's bytes (the
/// connection buffer, or a copy taken before the body was read). `target`: a path and query
/// to send instead of the routed ones (a provider adapter's endpoint).
pub fn write_head_prefix(
    out: &mut Vec<u8>,
    buf: &[u8],
    c: &ClientConn,
    head: &RequestHead,
    target: Option<(&[u8], &[u8])>,
    drop: impl Fn(&[u8]) -> bool,
) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    // Exactly the path that was routed (normalised by the parser) and the query as sent.
    let (path, query) = target.unwrap_or((head.path.get(buf), head.query.get(buf)));
    out.extend_from_slice(path);
    out.extend_from_slice(query);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The client's own forwarding chains (every line of them, in order) are kept and the
    // gateway's hop appended; a field the client lists in `Connection` is hop-by-hop and goes.
    let chained = |name: &[u8], value: &[u8], field: &[u8]| {
        name.eq_ignore_ascii_case(field)
            && !crate::http::parse::trim(value).is_empty()
            && !head.listed_in_connection(buf, name)
    };
    let (mut xff_chain, mut forwarded_chain) = (false, false);
    for (name, value) in head.headers(buf) {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff_chain |= chained(name, value, b"x-forwarded-for");
            continue;
        }
        if name.eq_ignore_ascii_case(b"forwarded") {
            forwarded_chain |= chained(name, value, b"forwarded");
            continue;
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
    // A second walk over the headers, only when the client sent such a chain.
    let chain = |out: &mut Vec<u8>, field: &[u8], present: bool| {
        if !present {
            return;
        }
        for (name, value) in head.headers(buf) {
            if chained(name, value, field) {
                out.extend_from_slice(crate::http::parse::trim(value));
                out.extend_from_slice(b", ");
            }
        }
    };
    let https = c.stream.is_tls();
    out.extend_from_slice(b"x-forwarded-for: ");
    chain(out, b"x-forwarded-for", xff_chain);
    push_ip(out, c.peer.ip());
    // The scheme the client used: a TLS listener's requests are `https` to the upstream (an
    // application that builds absolute URLs or insists on HTTPS reads this header).
    out.extend_from_slice(if https {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    let host = head.host.map(|h| h.get(buf));
    if let Some(h) = host {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    // RFC 7239: a client-sent `Forwarded` reaches the upstream only with the gateway's element
    // last (what the client claimed stays visible as earlier elements, as in
    // `x-forwarded-for`), so an upstream that trusts the last element reads the gateway's word.
    // None is added when the client sent none: `x-forwarded-*` carry the same facts.
    if forwarded_chain {
        out.extend_from_slice(b"forwarded: ");
        chain(out, b"forwarded", true);
        out.extend_from_slice(b"for=");
        match c.peer.ip() {
            std::net::IpAddr::V4(v4) => push_ip(out, v4.into()),
            // An IPv6 node is quoted and bracketed (RFC 7239 section 6).
            v6 => {
                out.extend_from_slice(b"\"[");
                push_ip(out, v6);
                out.extend_from_slice(b"]\"");
            }
        }
        out.extend_from_slice(if https {
            b";proto=https"
        } else {
            b";proto=http"
        });
        if let Some(h) = host {
            out.extend_from_slice(b";host=");
            push_quoted(out, h);
        }
        out.extend_from_slice(b"\r\n");
    }
    crate::http::write::field(out, b"x-request-id", c.request_id.as_bytes());
}

/// Appends `v` as an HTTP quoted-string (`"` and `\` escaped).
fn push_quoted(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Appends `ip` as text: an IPv4 address (the common peer) digit by digit, without `core::fmt`
/// on the per-request path; an IPv6 one through its `Display`.
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                crate::http::write::decimal(out, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Whether the whole body is in the connection buffer and small enough to go with the head.
pub fn body_is_here(c: &ClientConn, framing: BodyFraming) -> bool {
    match framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) => n <= INLINE_BODY as u64 && c.buffered().len() as u64 >= n,
        BodyFraming::Chunked => false,
    }
}

/// Completes the head: Host, extra lines, framing, upstream credential, blank line.
pub fn finish(out: &mut Vec<u8>, req: &ReqInfo, ob: &Outbound<'_>, body: OutBody<'_>) {
    out.extend_from_slice(b"host: ");
    // All endpoints of an upstream share its Host value (the first endpoint as written, or
    // `host_header`).
    out.extend_from_slice(ob.upstream.endpoints[0].host.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(ob.extra_request);
    match (body, req.framing) {
        (OutBody::Buffered(b), _) => {
            crate::http::write::field_decimal(out, b"content-length", b.len() as u64)
        }
        (OutBody::FromClient, BodyFraming::None) => {
            if !req.idempotent {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        (OutBody::FromClient, BodyFraming::Length(n)) => {
            crate::http::write::field_decimal(out, b"content-length", n)
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

/// Appends the body to the head when it can travel with it (already read by a stage, or here
/// whole and at most [`INLINE_BODY`]); true when it did (or there is none), so the request is
/// held whole and can be replayed.
pub fn inline_body(
    out: &mut Vec<u8>,
    c: &mut ClientConn,
    body: OutBody<'_>,
    framing: BodyFraming,
) -> bool {
    match (body, framing) {
        (OutBody::Buffered(b), _) => {
            out.extend_from_slice(b);
            true
        }
        (OutBody::FromClient, BodyFraming::None) => true,
        (OutBody::FromClient, BodyFraming::Length(n)) => {
            let n = n as usize;
            let whole = n <= INLINE_BODY && c.buffered().len() >= n;
            if whole {
                out.extend_from_slice(&c.buffered()[..n]);
                c.consume(n);
            }
            whole
        }
        (OutBody::FromClient, BodyFraming::Chunked) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{push_ip, push_quoted};

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes() {
        for (raw, quoted) in [
            (&b"example.com:8080"[..], &br#""example.com:8080""#[..]),
            (b"", br#""""#),
            (br#"a"b\c"#, br#""a\"b\\c""#),
        ] {
            let mut out = Vec::new();
            push_quoted(&mut out, raw);
            assert_eq!(out, quoted, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "1.2.3.4",
            "255.255.255.255",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = b"x".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(&out[1..], ip.to_string().as_bytes(), "{ip}");
        }
    }
}
