//! Request head parser: `parse_request` under small and default `Limits`.
//!
//! The first input byte picks the limits (small ones let short inputs reach the 414/431/413
//! paths); the rest is the connection buffer. Beyond "no panic" it checks:
//! - `Ok(Some(n))`: `n <= len`, the head ends with its blank line, every span lies inside the
//!   head, the (normalised, in place) `path` ends before the `query` and has no empty, dot or
//!   dot-dot segment, at most `max_headers`
//!   fields, and `host`, `framing` and `keep_alive` agree with the header fields themselves
//!   (never both Content-Length and chunked; chunked only on HTTP/1.1; a length within
//!   `max_body_bytes` that every Content-Length element states);
//! - the head does not depend on what follows it (`buf[..n]` parses the same) nor on what a
//!   reused `RequestHead` held before;
//! - fed byte by byte as a socket may deliver it, every prefix before the first verdict is
//!   `Ok(None)`, the first `Ok` is the same head, a prefix error means the whole buffer errs
//!   too, and the two errors are the same unless one of them is a size limit (which is checked
//!   on whatever has arrived, so it may fire before or after a syntax error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::http::limits::{MAX_BODY_BYTES, MAX_HEADERS, MAX_HEADER_BYTES, MAX_REQUEST_LINE};
use shardgate::http::parse::{parse_content_length, parse_request, tokens, trim};
use shardgate::http::{BodyFraming, Limits, ParseError, RequestHead};

fn limits(sel: u8) -> Limits {
    let (line, head) =
        [(64, 256), (128, 512), (MAX_REQUEST_LINE, MAX_HEADER_BYTES)][usize::from(sel & 3) % 3];
    Limits {
        max_request_line: line,
        max_header_bytes: head,
        max_headers: [1, 2, 4, MAX_HEADERS][usize::from(sel >> 2 & 3)],
        max_body_bytes: [0, 10, 1 << 20, MAX_BODY_BYTES][usize::from(sel >> 4 & 3)],
        ..Limits::default()
    }
}

/// Parses a copy of `buf` (the parser normalises the path in place) and returns the copy.
fn parse(buf: &[u8], limits: &Limits) -> (Result<Option<usize>, ParseError>, RequestHead, Vec<u8>) {
    let mut head = RequestHead::default();
    let mut copy = buf.to_vec();
    let r = parse_request(&mut copy, limits, &mut head);
    (r, head, copy)
}

/// What a caller may read from a head (the header array past `header_count` is scratch).
fn view(h: &RequestHead) -> String {
    format!(
        "{:?} {:?} {:?} {} {:?} {:?} {:?} {} {} {:?}",
        h.method,
        h.path,
        h.query,
        h.minor_version,
        &h.headers[..h.header_count],
        h.host,
        h.framing,
        h.keep_alive,
        h.expect_continue,
        &h.connection[..h.connection_count],
    )
}

fn is_size_limit(e: ParseError) -> bool {
    matches!(
        e,
        ParseError::RequestLineTooLong | ParseError::HeadTooLarge | ParseError::TooManyHeaders
    )
}

fn check_head(buf: &[u8], n: usize, h: &RequestHead, limits: &Limits) {
    assert!(
        n <= buf.len() && n <= limits.max_header_bytes,
        "head length {n}"
    );
    assert!(
        buf[..n].ends_with(b"\n"),
        "head does not end with a line end"
    );
    let inside = |s: shardgate::http::parse::Span| {
        assert!(
            s.start <= s.end && s.end as usize <= n,
            "span {s:?} outside head of {n}"
        )
    };
    inside(h.path);
    inside(h.query);
    let query = h.query.get(buf);
    assert!(query.is_empty() || (h.path.end <= h.query.start && query.starts_with(b"?")));
    assert!(!query.contains(&b'#'), "fragment kept in {query:?}");
    let path = h.path.get(buf);
    if path != b"*" {
        assert!(path.starts_with(b"/"), "path {path:?}");
        let segments = path[1..].split(|&b| b == b'/').collect::<Vec<_>>();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            assert!(*seg != b"." && *seg != b"..", "dot segment in {path:?}");
            assert!(!seg.is_empty() || i == last, "empty segment in {path:?}");
        }
    } else {
        assert_eq!(h.method.as_str(), "OPTIONS");
    }
    assert!(h.minor_version <= 1);
    assert!(h.header_count <= limits.max_headers);
    assert!(h.connection_count <= h.connection.len());
    for (name, value) in &h.headers[..h.header_count] {
        inside(*name);
        inside(*value);
    }
    for c in &h.connection[..h.connection_count] {
        inside(*c);
    }
    let fields: Vec<(&[u8], &[u8])> = h.headers(buf).collect();
    let named = |want: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(want.as_bytes()))
            .map(|(_, v)| *v)
            .collect()
    };
    let hosts = named("host");
    assert!(hosts.len() <= 1);
    assert_eq!(h.host.map(|s| s.get(buf)), hosts.first().copied());
    if h.minor_version == 1 {
        assert!(h.host.is_some(), "HTTP/1.1 head without Host accepted");
    }
    let lengths: Vec<u64> = named("content-length")
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|p| parse_content_length(trim(p)).expect("accepted a bad Content-Length"))
        .collect();
    let te = named("transfer-encoding");
    assert!(
        lengths.is_empty() || te.is_empty(),
        "both Content-Length and Transfer-Encoding"
    );
    match h.framing {
        BodyFraming::Chunked => {
            assert_eq!(h.minor_version, 1, "chunked on HTTP/1.0");
            let codings: Vec<&[u8]> = te.iter().flat_map(|v| tokens(v)).collect();
            assert_eq!(codings.len(), 1);
            assert!(codings[0].eq_ignore_ascii_case(b"chunked"));
        }
        BodyFraming::Length(len) => {
            assert!(te.is_empty() && !lengths.is_empty());
            assert!(len > 0 && len <= limits.max_body_bytes);
            assert!(lengths.iter().all(|&l| l == len));
        }
        BodyFraming::None => {
            assert!(te.is_empty());
            assert!(lengths.iter().all(|&l| l == 0));
        }
    }
    let connection_tokens: Vec<&[u8]> =
        named("connection").iter().flat_map(|v| tokens(v)).collect();
    let has = |t: &[u8]| connection_tokens.iter().any(|c| c.eq_ignore_ascii_case(t));
    let keep_alive = if h.minor_version == 1 {
        !has(b"close")
    } else {
        has(b"keep-alive") && !has(b"close")
    };
    assert_eq!(h.keep_alive, keep_alive);
}

/// A head full of state (many fields, chunked, Connection, Expect) to parse over.
const DIRTY: &[u8] =
    b"POST /dirty/path?q=1 HTTP/1.1\r\nHost: dirty\r\nConnection: x-a, keep-alive\r\n\
Connection: x-b\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\nX-1: 1\r\nX-2: 2\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    for limits in [limits(sel), Limits::default()] {
        let (full, head, normal) = parse(buf, &limits);
        // A reused head (keep-alive connection) gives the same answer as a fresh one.
        let mut reused = RequestHead::default();
        let _ = parse_request(&mut DIRTY.to_vec(), &limits, &mut reused);
        assert_eq!(parse_request(&mut buf.to_vec(), &limits, &mut reused), full);
        if let Ok(Some(n)) = full {
            check_head(&normal, n, &head, &limits);
            assert_eq!(view(&reused), view(&head), "stale state from a reused head");
            let (alone, alone_head, _) = parse(&buf[..n], &limits);
            assert_eq!(alone, full, "head depends on the bytes after it");
            assert_eq!(view(&alone_head), view(&head));
        }
        // Byte by byte: stop at the first verdict, as the connection loop does.
        let first = (0..=buf.len())
            .map(|k| (k, parse(&buf[..k], &limits)))
            .find(|(_, (r, _, _))| !matches!(r, Ok(None)));
        match (first, full) {
            (None, Ok(None)) => {}
            (None, other) => panic!("every prefix incomplete but the whole buffer gives {other:?}"),
            (Some((k, (Ok(Some(n)), h, _))), Ok(Some(full_n))) => {
                assert_eq!(
                    n, full_n,
                    "prefix of {k} bytes parsed a different head length"
                );
                assert_eq!(view(&h), view(&head), "prefix parsed a different head");
            }
            (Some((k, (Ok(Some(_)), _, _))), other) => {
                panic!("prefix of {k} bytes parsed but the whole buffer gives {other:?}")
            }
            (Some((k, (Err(e), _, _))), Err(full_e)) => {
                assert!(
                    e == full_e || is_size_limit(e) || is_size_limit(full_e),
                    "prefix of {k} bytes gives {e:?}, the whole buffer {full_e:?}"
                );
            }
            (Some((k, (Err(e), _, _))), other) => {
                panic!("prefix of {k} bytes gives {e:?} but the whole buffer gives {other:?}")
            }
            (Some((_, (Ok(None), _, _))), _) => unreachable!(),
        }
    }
});
