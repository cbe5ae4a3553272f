//! Response heads: what an HTTP/1.1 server answered, and how its body is delimited.
//!
//! # Contract
//!
//! [`parse_response_head`] takes the bytes received so far. `Ok(None)` means the head is not
//! complete yet (read more); `Ok(Some(h))` is a valid head of `h.head_len` bytes; `Err` is a
//! response that cannot be framed safely, and the connection must not be used again. The
//! gateway reads its upstreams with it (`proxy::relay`), and so do the admin client, the
//! health probe, the load generator and the tests.
//!
//! # Error handling
//!
//! Everything below is [`BadResponse`] (the gateway answers its client 502):
//!
//! | response | why it is refused |
//! | --- | --- |
//! | not HTTP/1.x, a malformed status line or field (httparse), over [`MAX_RESPONSE_HEADERS`] fields | unparseable |
//! | a status outside 100..=599 (RFC 9110 §15) | invalid; `020` must not reach a client as 20 |
//! | both `Content-Length` and `Transfer-Encoding` | how response smuggling starts; neither can be picked |
//! | `Content-Length` not `1*DIGIT`, overflowing, or differing values | the end of the body is unknown |
//! | a transfer coding other than a single `chunked` | only `chunked` alone can be decoded and relayed |
//!
//! A 204 or 304 has no body whatever its fields say; a 1xx is interim
//! ([`ResponseHead::is_interim`]) and the final head follows it. A response to HEAD has no
//! body either: the caller knows what it asked ([`ResponseHead::body_framing`]).

use std::mem::MaybeUninit;

use crate::parse::{parse_content_length, tokens, trim};

/// Largest response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most response header fields accepted.
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// A parsed response head (its bytes are the first `head_len` of the buffer parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: ResponseFraming,
    /// The server allows reuse (HTTP/1.1, no `Connection: close`, not close-delimited).
    pub keep_alive: bool,
}

impl ResponseHead {
    /// An interim response (100 Continue, 103 Early Hints): the final head follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// How the body is delimited in answer to a request that was (or was not) a HEAD.
    pub fn body_framing(&self, head_request: bool) -> ResponseFraming {
        if head_request || self.is_interim() {
            ResponseFraming::None
        } else {
            self.framing
        }
    }
}

/// A response that cannot be framed safely (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse;

/// Parses a response head from `buf` (see the module docs).
#[inline]
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, BadResponse> {
    parse_response_head_with(buf, |_, _| {})
}

/// [`parse_response_head`], handing each header field (name, value) to `field` as it is
/// classified. A field seen before an `Err` is not part of a valid head.
pub fn parse_response_head_with(
    buf: &[u8],
    mut field: impl FnMut(&[u8], &[u8]),
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut headers = uninit_headers();
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match parse_fields(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse),
    };
    // httparse takes any three digits; RFC 9110 §15: codes outside 100..=599 are invalid,
    // to be handled as a server error (and `020` must not reach a client as status 20).
    let status = resp
        .code
        .filter(|c| (100..=599).contains(c))
        .ok_or(BadResponse)?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = resp.version != Some(1);
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        field(n, h.value);
        if n.eq_ignore_ascii_case(b"content-length") {
            for part in h.value.split(|&b| b == b',') {
                let v = parse_content_length(trim(part)).map_err(|_| BadResponse)?;
                if length.is_some_and(|l| l != v) {
                    return Err(BadResponse);
                }
                length = Some(v);
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            for t in tokens(h.value) {
                // Only `chunked` alone can be relayed faithfully after dropping the header.
                if chunked || !t.eq_ignore_ascii_case(b"chunked") {
                    return Err(BadResponse);
                }
                chunked = true;
            }
        } else if n.eq_ignore_ascii_case(b"connection") {
            close |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
    }
    let framing = match (length, te) {
        // Both headers is how response smuggling starts; refuse to pick one.
        (Some(_), true) => return Err(BadResponse),
        (None, true) if chunked => ResponseFraming::Chunked,
        (None, true) => return Err(BadResponse),
        (Some(n), false) => ResponseFraming::Length(n),
        (None, false) => ResponseFraming::Close,
    };
    let framing = if status == 204 || status == 304 {
        ResponseFraming::None
    } else {
        framing
    };
    Ok(Some(ResponseHead {
        status,
        head_len,
        framing,
        keep_alive: !close && framing != ResponseFraming::Close,
    }))
}

/// Header slots for one [`parse_fields`].
pub type Headers<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_RESPONSE_HEADERS];

/// Header slots for one parse. Uninitialized: filling 128 empty headers costs more than
/// parsing a typical response head.
pub fn uninit_headers<'b>() -> Headers<'b> {
    [const { MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS]
}

/// httparse over `buf` into `resp`, for a caller that needs the status line's reason or the
/// fields themselves (the relay re-serializing a head [`parse_response_head`] accepted).
pub fn parse_fields<'h, 'b>(
    resp: &mut httparse::Response<'h, 'b>,
    buf: &'b [u8],
    headers: &'h mut Headers<'b>,
) -> httparse::Result<usize> {
    httparse::ParserConfig::default().parse_response_with_uninit_headers(resp, buf, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<ResponseHead>, BadResponse> {
        parse_response_head(raw.as_bytes())
    }

    #[test]
    fn refuses_ambiguous_framing() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 2x0 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n",
        ] {
            assert_eq!(head(raw).unwrap_err(), BadResponse, "{raw:?}");
        }
    }

    /// Found by the `response_head` fuzz target: `020` parsed as status 20.
    #[test]
    fn status_outside_100_to_599_is_refused() {
        for code in ["000", "001", "020", "099", "600", "999"] {
            let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(head(&raw).unwrap_err(), BadResponse, "{raw:?}");
        }
        for (code, want) in [("100", 100), ("199", 199), ("200", 200), ("599", 599)] {
            let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(head(&raw).unwrap().unwrap().status, want);
        }
    }

    #[test]
    fn framing_and_reuse() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                ResponseFraming::Length(3),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                ResponseFraming::Length(3),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
                ResponseFraming::Chunked,
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", ResponseFraming::Close, false),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                ResponseFraming::None,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                ResponseFraming::None,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                ResponseFraming::Length(0),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                ResponseFraming::Length(1),
                false,
            ),
            ("HTTP/1.1 204\r\n\r\n", ResponseFraming::None, true),
        ];
        for (raw, framing, keep_alive) in cases {
            let h = head(raw).unwrap().unwrap();
            assert_eq!((h.framing, h.keep_alive), (framing, keep_alive), "{raw:?}");
            assert_eq!(h.head_len, raw.len());
        }
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        for raw in [
            "",
            "HTTP/1.1 20",
            "HTTP/1.1 200 OK\r\n",
            "HTTP/1.1 200 OK\r\nA: b\r\n",
        ] {
            assert_eq!(head(raw), Ok(None), "{raw:?}");
        }
    }

    #[test]
    fn interim_heads_and_head_requests_have_no_body() {
        let h = head("HTTP/1.1 100 Continue\r\n\r\n").unwrap().unwrap();
        assert!(h.is_interim());
        assert_eq!(h.body_framing(false), ResponseFraming::None);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body_framing(true), ResponseFraming::None);
        assert_eq!(h.body_framing(false), ResponseFraming::Length(5));
    }

    #[test]
    fn fields_are_handed_out_in_order() {
        let mut seen = Vec::new();
        parse_response_head_with(
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: text/event-stream\r\nX-A: 2\r\n\r\n",
            |n, v| seen.push((n.to_vec(), v.to_vec())),
        )
        .unwrap()
        .unwrap();
        let seen: Vec<(&[u8], &[u8])> = seen
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            seen,
            [
                (&b"X-A"[..], &b"1"[..]),
                (b"Content-Type", b"text/event-stream"),
                (b"X-A", b"2")
            ]
        );
    }
}
