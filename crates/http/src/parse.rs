//! Request head parsing and RFC 9112 framing checks.
//!
//! # Contract
//!
//! [`parse_request`] takes the bytes received so far on a connection. `Ok(None)` means the
//! head is not complete yet (read more); `Ok(Some(n))` means a valid head of `n` bytes was
//! parsed into the caller's [`RequestHead`] (offsets into the same buffer; nothing is
//! copied); `Err(e)` is a violation: answer `e.status()` and close the connection, because
//! after a framing error the next request's start cannot be trusted (a refused method or
//! path closes too: only probes send them).
//!
//! A complete head's path is normalised in place by [`super::path::normalise`], so
//! [`RequestHead::path`] is the normal form the router matches and the upstream receives;
//! the bytes of the request line after it are stale, so a complete head is parsed once. A
//! fragment (`#…`) is dropped: it is never routed or forwarded.
//!
//! # Error handling
//!
//! | violation | status |
//! | --- | --- |
//! | request line over `max_request_line` | 414 |
//! | head over `max_header_bytes`, more than `max_headers` fields | 431 |
//! | malformed request line or header (whitespace before `:`, obs-fold, bare CR, bad token) | 400 |
//! | HTTP/1.1 without `Host`, or more than one `Host` | 400 |
//! | `Content-Length` not `1*DIGIT`, overflowing, or differing duplicates | 400 |
//! | both `Content-Length` and `Transfer-Encoding` | 400 |
//! | `Transfer-Encoding` whose last coding is not `chunked`, or on HTTP/1.0 | 400 |
//! | a transfer coding other than `chunked` | 501 |
//! | declared body over `max_body_bytes` | 413 |
//! | HTTP version other than 1.0/1.1 | 505 |
//! | method not an upper-case token (`get`, `Post`, `GE.T`) | 400 |
//! | `CONNECT`, `TRACE` | 501 |
//! | target not origin-form (absolute-form, authority-form), except `OPTIONS *` | 400 |
//! | a path [`super::path::normalise`] refuses (dot segments, `%2F`, `\`, `;`, ...) | 400 |
//!
//! `CONNECT` (a tunnel the gateway does not implement) and `TRACE` (which would reflect the
//! credentials and identity headers the gateway adds) are refused for every route, before
//! routing, so the answer is 501 ("not supported for any resource", RFC 9110 §15.6.2) rather
//! than a 405, which would have to list the target's methods. A method with lower-case
//! letters is a different method from its upper-case spelling (methods are case-sensitive),
//! which upstreams that fold case would still read as the standard one; it is refused with
//! 400 rather than matched as an extension method.

use std::mem::MaybeUninit;

use http::Method;

use super::limits::{Limits, MAX_HEADERS};
use super::path::{self, PathError};

/// A byte range in the connection buffer.
///
/// Offsets are `u32`: spans lie inside a request head, which is at most
/// `max_header_bytes` (validated ≤ 1 MiB). Half the size of `usize` offsets keeps a
/// connection's [`RequestHead`] at ~1.7 KB instead of ~3.3 KB (10,000 idle connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    fn of(base: &[u8], part: &[u8]) -> Span {
        // Both slices come from the same buffer, so the address difference is the offset.
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        debug_assert!(start + part.len() <= u32::MAX as usize);
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no Content-Length, no Transfer-Encoding, or `Content-Length: 0`).
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head: offsets into the connection buffer plus the framing decisions.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// The path part of the target, normalised ([`super::path`]), or `*` for `OPTIONS *`.
    pub path: Span,
    /// The query, with its leading `?` (empty when there is none); the fragment is dropped.
    pub query: Span,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names and values, in order received; only the first `header_count` are set.
    pub headers: [(Span, Span); MAX_HEADERS],
    pub header_count: usize,
    pub host: Option<Span>,
    pub framing: BodyFraming,
    /// Whether the client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Spans of every `Connection` header value (the names they list are hop-by-hop).
    pub connection: [Span; 4],
    pub connection_count: usize,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self {
            method: Method::GET,
            path: Span::default(),
            query: Span::default(),
            minor_version: 1,
            headers: [(Span::default(), Span::default()); MAX_HEADERS],
            header_count: 0,
            host: None,
            framing: BodyFraming::None,
            keep_alive: true,
            expect_continue: false,
            connection: [Span::default(); 4],
            connection_count: 0,
        }
    }
}

impl RequestHead {
    /// The header fields as `(name, value)` byte slices of `buf`.
    pub fn headers<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.headers[..self.header_count]
            .iter()
            .map(move |(n, v)| (n.get(buf), v.get(buf)))
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.headers[..self.header_count]
            .iter()
            .find(|(n, _)| n.get(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.get(buf))
    }

    /// The request target as received (path, query and fragment), for a head parsed by
    /// [`parse_request_head`] from `buf`: normalising the path in place leaves the bytes
    /// after it stale.
    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let line = &buf[self.path.start as usize..];
        let line = &line[..memchr_nl(line).unwrap_or(line.len())];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // httparse checked the line: the target ends at the space before `HTTP/1.x`.
        &line[..line.len().saturating_sub(b" HTTP/1.1".len())]
    }

    /// Whether `name` is listed in a `Connection` header (and so is hop-by-hop).
    pub fn listed_in_connection(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection[..self.connection_count]
            .iter()
            .any(|s| tokens(s.get(buf)).any(|t| t.eq_ignore_ascii_case(name)))
    }
}

/// A framing violation. Every variant closes the connection after the error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    RequestLineTooLong,
    HeadTooLarge,
    TooManyHeaders,
    BadRequestLine,
    BadHeader,
    BadTarget,
    BadPath(PathError),
    BadMethod,
    MethodNotImplemented,
    MissingHost,
    DuplicateHost,
    BadContentLength,
    ConflictingContentLength,
    LengthAndChunked,
    NotChunkedLast,
    TransferEncodingOnHttp10,
    UnsupportedTransferCoding,
    BodyTooLarge,
    UnsupportedVersion,
    BadChunk,
}

impl ParseError {
    pub fn status(self) -> u16 {
        use ParseError::*;
        match self {
            RequestLineTooLong => 414,
            HeadTooLarge | TooManyHeaders => 431,
            UnsupportedTransferCoding | MethodNotImplemented => 501,
            BodyTooLarge => 413,
            UnsupportedVersion => 505,
            _ => 400,
        }
    }

    pub fn message(self) -> &'static str {
        use ParseError::*;
        match self {
            RequestLineTooLong => "request line too long",
            HeadTooLarge => "request header block too large",
            TooManyHeaders => "too many request header fields",
            BadRequestLine => "malformed request line",
            BadHeader => "malformed header field (whitespace before colon, obs-fold, bare CR or invalid character)",
            BadTarget => "request target must be an absolute path",
            BadPath(e) => e.message(),
            BadMethod => "request method must be an upper-case token (A-Z, 0-9, '-', '_')",
            MethodNotImplemented => "CONNECT and TRACE are not supported by this gateway",
            MissingHost => "HTTP/1.1 request without Host header",
            DuplicateHost => "more than one Host header",
            BadContentLength => "Content-Length is not a valid decimal number",
            ConflictingContentLength => "differing Content-Length values",
            LengthAndChunked => "both Content-Length and Transfer-Encoding present",
            NotChunkedLast => "Transfer-Encoding must end with chunked",
            TransferEncodingOnHttp10 => "Transfer-Encoding is not allowed on HTTP/1.0",
            UnsupportedTransferCoding => "only the chunked transfer coding is supported",
            BodyTooLarge => "request body too large",
            UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported",
            BadChunk => "malformed chunked body",
        }
    }
}

/// Parses a request head from `buf` and normalises its path in place (see the module docs).
pub fn parse_request(
    buf: &mut [u8],
    limits: &Limits,
    out: &mut RequestHead,
) -> Result<Option<usize>, ParseError> {
    let Some(head_len) = parse_request_head(buf, limits, out)? else {
        return Ok(None);
    };
    if out.path.get(buf) != b"*" {
        let p = out.path;
        let n = path::normalise(&mut buf[p.start as usize..p.end as usize])
            .map_err(ParseError::BadPath)?;
        out.path.end = p.start + n as u32;
    }
    Ok(Some(head_len))
}

/// Every check of [`parse_request`] but the path normalisation, on a shared borrow
/// (httparse's results borrow it): [`RequestHead::path`] is the path as received. For the
/// servers that must see exactly what was sent (the mock backend, the tests' upstreams) or
/// that match exact paths (the admin API); the gateway routes on normal forms only.
pub fn parse_request_head(
    buf: &[u8],
    limits: &Limits,
    out: &mut RequestHead,
) -> Result<Option<usize>, ParseError> {
    // The request line limit is checked on raw bytes first, so a huge line is answered with
    // 414 rather than the generic 431 the head limit would give.
    match memchr_nl(buf) {
        Some(i) if i > limits.max_request_line => return Err(ParseError::RequestLineTooLong),
        None if buf.len() > limits.max_request_line => return Err(ParseError::RequestLineTooLong),
        _ => {}
    }
    // Uninitialized: filling 100 empty headers on every request costs more than parsing.
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut raw[..limits.max_headers]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_header_bytes {
                return Err(ParseError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(ParseError::UnsupportedVersion),
        Err(httparse::Error::Token | httparse::Error::Status) => {
            return Err(if req.method.is_some() && req.path.is_some() {
                ParseError::BadHeader
            } else {
                ParseError::BadRequestLine
            })
        }
        Err(_) => return Err(ParseError::BadHeader),
    };
    if head_len > limits.max_header_bytes {
        return Err(ParseError::HeadTooLarge);
    }
    let method = req.method.ok_or(ParseError::BadRequestLine)?;
    check_method(method.as_bytes())?;
    out.method = Method::from_bytes(method.as_bytes()).map_err(|_| ParseError::BadRequestLine)?;
    let target = req.path.ok_or(ParseError::BadRequestLine)?.as_bytes();
    out.minor_version = req.version.ok_or(ParseError::BadRequestLine)?;
    // The path ends at the query or the fragment; the query runs to the fragment.
    let path_end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let query = match target.get(path_end) {
        Some(b'?') => {
            let rest = &target[path_end..];
            &rest[..rest.iter().position(|&b| b == b'#').unwrap_or(rest.len())]
        }
        _ => &target[path_end..path_end],
    };
    out.path = Span::of(buf, &target[..path_end]);
    out.query = Span::of(buf, query);
    if target == b"*" {
        if out.method != Method::OPTIONS {
            return Err(ParseError::BadTarget);
        }
    } else if !target.starts_with(b"/") {
        return Err(ParseError::BadTarget);
    }
    classify_headers(buf, req.headers, limits, out)?;
    Ok(Some(head_len))
}

/// Methods are upper-case tokens, and the gateway never forwards `CONNECT` or `TRACE`.
fn check_method(m: &[u8]) -> Result<(), ParseError> {
    if !m
        .iter()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
    {
        return Err(ParseError::BadMethod);
    }
    if m == b"CONNECT" || m == b"TRACE" {
        return Err(ParseError::MethodNotImplemented);
    }
    Ok(())
}

fn classify_headers(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
    limits: &Limits,
    out: &mut RequestHead,
) -> Result<(), ParseError> {
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut saw_te = false;
    let mut close = false;
    let mut keep_alive_token = false;
    out.host = None;
    out.expect_continue = false;
    out.connection_count = 0;
    out.header_count = headers.len();
    for (i, h) in headers.iter().enumerate() {
        let name = Span::of(buf, h.name.as_bytes());
        let value = Span::of(buf, h.value);
        out.headers[i] = (name, value);
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            if out.host.is_some() {
                return Err(ParseError::DuplicateHost);
            }
            out.host = Some(value);
        } else if n.eq_ignore_ascii_case(b"content-length") {
            for part in h.value.split(|&b| b == b',') {
                let v = parse_content_length(trim(part))?;
                if content_length.is_some_and(|cl| cl != v) {
                    return Err(ParseError::ConflictingContentLength);
                }
                content_length = Some(v);
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            saw_te = true;
            for coding in tokens(h.value) {
                // `chunked` must be the final coding and appear once (RFC 9112 §6.1).
                if chunked {
                    return Err(ParseError::NotChunkedLast);
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    return Err(ParseError::UnsupportedTransferCoding);
                }
            }
        } else if n.eq_ignore_ascii_case(b"connection") {
            if out.connection_count == out.connection.len() {
                return Err(ParseError::BadHeader);
            }
            out.connection[out.connection_count] = value;
            out.connection_count += 1;
            for t in tokens(h.value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if n.eq_ignore_ascii_case(b"expect") {
            out.expect_continue = trim(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    if out.minor_version == 1 && out.host.is_none() {
        return Err(ParseError::MissingHost);
    }
    out.keep_alive = if out.minor_version == 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    out.framing = match (content_length, saw_te) {
        (Some(_), true) => return Err(ParseError::LengthAndChunked),
        (None, true) if out.minor_version == 0 => return Err(ParseError::TransferEncodingOnHttp10),
        (None, true) if !chunked => return Err(ParseError::NotChunkedLast),
        (None, true) => BodyFraming::Chunked,
        (Some(n), false) if n > limits.max_body_bytes => return Err(ParseError::BodyTooLarge),
        (Some(0), false) | (None, false) => BodyFraming::None,
        (Some(n), false) => BodyFraming::Length(n),
    };
    Ok(())
}

/// Parses `1*DIGIT` with overflow checking; signs, hex, underscores and spaces are rejected.
pub fn parse_content_length(v: &[u8]) -> Result<u64, ParseError> {
    if v.is_empty() {
        return Err(ParseError::BadContentLength);
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(ParseError::BadContentLength);
        }
        acc.checked_mul(10)
            .and_then(|a| a.checked_add(u64::from(b - b'0')))
            .ok_or(ParseError::BadContentLength)
    })
}

/// Comma-separated list elements with optional whitespace trimmed; empty elements skipped.
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn memchr_nl(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<(usize, RequestHead)>, ParseError> {
        let mut head = RequestHead::default();
        let limits = Limits {
            max_request_line: 100,
            max_header_bytes: 300,
            ..Limits::default()
        };
        parse_request(&mut raw.as_bytes().to_vec(), &limits, &mut head)
            .map(|o| o.map(|n| (n, head)))
    }

    /// Parses `raw` and returns the (normalised) path and the query as they end up.
    fn path_query(raw: &str) -> Result<(String, String), ParseError> {
        let mut head = RequestHead::default();
        let mut buf = raw.as_bytes().to_vec();
        parse_request(&mut buf, &Limits::default(), &mut head)?.expect("complete");
        let s = |sp: Span| String::from_utf8(sp.get(&buf).to_vec()).unwrap();
        Ok((s(head.path), s(head.query)))
    }

    #[test]
    fn valid_requests_and_framing() {
        let cases: &[(&str, BodyFraming, bool)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", BodyFraming::None, true),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                BodyFraming::None,
                false,
            ),
            ("GET / HTTP/1.0\r\n\r\n", BodyFraming::None, false),
            (
                "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                BodyFraming::None,
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                BodyFraming::Length(5),
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                BodyFraming::Length(5),
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                BodyFraming::None,
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                BodyFraming::Chunked,
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
                BodyFraming::Chunked,
                true,
            ),
        ];
        for (raw, framing, keep_alive) in cases {
            let (n, head) = parse(raw).unwrap().unwrap();
            assert_eq!(n, raw.len(), "{raw:?}");
            assert_eq!(head.framing, *framing, "{raw:?}");
            assert_eq!(head.keep_alive, *keep_alive, "{raw:?}");
        }
    }

    #[test]
    fn offsets_point_into_the_buffer() {
        let raw = "POST /v1/chat?x=1 HTTP/1.1\r\nHost: gw\r\nX-A: b c\r\n\r\n";
        let (_, head) = parse(raw).unwrap().unwrap();
        let buf = raw.as_bytes();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.path.get(buf), b"/v1/chat");
        assert_eq!(head.query.get(buf), b"?x=1");
        assert_eq!(head.header(buf, "x-a"), Some(&b"b c"[..]));
        assert_eq!(head.host.unwrap().get(buf), b"gw");
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(parse("GET / HT").unwrap().is_none());
    }

    /// RFC 9112 violations, each with the status it must produce.
    #[test]
    fn framing_violations() {
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200));
        let big_head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            "X-Pad: 0123456789\r\n".repeat(16)
        );
        let cases: Vec<(&str, ParseError)> = vec![
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", ParseError::LengthAndChunked),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", ParseError::NotChunkedLast),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", ParseError::UnsupportedTransferCoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", ParseError::NotChunkedLast),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", ParseError::TransferEncodingOnHttp10),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", ParseError::ConflictingContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n", ParseError::ConflictingContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", ParseError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", ParseError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", ParseError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\n", ParseError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", ParseError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", ParseError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\n", ParseError::BodyTooLarge),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n", ParseError::BadHeader),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-Space : a\r\n\r\n", ParseError::BadHeader),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-CR: a\rb\r\n\r\n", ParseError::BadHeader),
            ("GET / HTTP/1.1\r\n\r\n", ParseError::MissingHost),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ParseError::DuplicateHost),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", ParseError::UnsupportedVersion),
            ("GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadPath(PathError::DotSegment)),
            ("GET /a/%2e%2E/b?x HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadPath(PathError::DotSegment)),
            ("GET /a/..;/b HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadPath(PathError::PathParameter)),
            ("GET /a%2fb HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadPath(PathError::EncodedSlash)),
            ("GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadPath(PathError::Backslash)),
            ("GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadTarget),
            ("GET x:443 HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadTarget),
            ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadTarget),
            ("GET ?a HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadTarget),
            ("GET #a HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadTarget),
            ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadRequestLine),
            (&long_line, ParseError::RequestLineTooLong),
            (&big_head, ParseError::HeadTooLarge),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw).map(|_| ()), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut head = RequestHead::default();
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let err = parse_request(&mut raw.as_bytes().to_vec(), &limits, &mut head).unwrap_err();
        assert_eq!((err, err.status()), (ParseError::TooManyHeaders, 431));
    }

    #[test]
    fn connection_lists_hop_by_hop_names() {
        let raw =
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\n\r\n";
        let (_, head) = parse(raw).unwrap().unwrap();
        assert!(head.listed_in_connection(raw.as_bytes(), b"X-SECRET"));
        assert!(!head.listed_in_connection(raw.as_bytes(), b"host"));
    }

    /// The path is normalised in place; the query is kept as sent; the fragment is dropped.
    #[test]
    fn path_is_normalised_and_fragment_dropped() {
        let cases = [
            ("/v1/models", "/v1/models", ""),
            ("/v1/models?a=1", "/v1/models", "?a=1"),
            ("/v1/models?a=%2e%2e/..", "/v1/models", "?a=%2e%2e/.."),
            ("/v1/models#frag", "/v1/models", ""),
            ("/v1/models?a=1#frag", "/v1/models", "?a=1"),
            ("/v1/models#frag?a=1", "/v1/models", ""),
            ("/v1/models#../../x", "/v1/models", ""),
            ("/v1/%6dodels?q", "/v1/models", "?q"),
            ("//v1//models//?q#f", "/v1/models/", "?q"),
            ("/x%3a?q", "/x%3A", "?q"),
        ];
        for (target, path, query) in cases {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            let got = path_query(&raw).unwrap();
            assert_eq!((got.0.as_str(), got.1.as_str()), (path, query), "{target}");
        }
        assert_eq!(
            path_query("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").unwrap(),
            ("*".to_string(), String::new())
        );
    }

    /// The unnormalised parse keeps the target as sent, fragment included.
    #[test]
    fn unnormalised_head_keeps_the_target() {
        for target in ["/a/../b?x=%2e#f", "//v1//models", "/x%3a", "*"] {
            let raw = format!("OPTIONS {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            let mut head = RequestHead::default();
            let n = parse_request_head(raw.as_bytes(), &Limits::default(), &mut head);
            assert_eq!(n, Ok(Some(raw.len())), "{target}");
            assert_eq!(head.target(raw.as_bytes()), target.as_bytes());
        }
        let raw = b"GET /a?b#c HTTP/1.0\n\n";
        let mut head = RequestHead::default();
        parse_request_head(raw, &Limits::default(), &mut head).unwrap();
        assert_eq!(head.target(raw), b"/a?b#c");
        assert_eq!(head.path.get(raw), b"/a");
    }

    /// Methods: upper-case tokens pass; other spellings are 400; CONNECT and TRACE are 501.
    #[test]
    fn methods() {
        for m in ["GET", "POST", "PATCH", "PROPFIND", "M-SEARCH", "X_1"] {
            let raw = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(parse(&raw).unwrap().is_some(), "{m}");
        }
        for m in [
            "get", "Get", "gEt", "post", "Post", "connect", "trace", "GE.T", "GET!", "G~T",
        ] {
            let raw = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            let e = parse(&raw).map(|_| ()).unwrap_err();
            assert_eq!((e, e.status()), (ParseError::BadMethod, 400), "{m}");
        }
        for raw in [
            "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT /v1/models HTTP/1.0\r\n\r\n",
            "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n",
            "TRACE /v1/models?x HTTP/1.1\r\nHost: a\r\n\r\n",
            "TRACE * HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let e = parse(raw).map(|_| ()).unwrap_err();
            assert_eq!(
                (e, e.status()),
                (ParseError::MethodNotImplemented, 501),
                "{raw}"
            );
        }
    }
}
