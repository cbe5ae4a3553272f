//! Response heads, chunked body framing, and the JSON error responses every gateway stage ends
//! in.
//!
//! A response head is written as [`status_line`], the speaker's own fields, [`framing_fields`]
//! and a blank line; a body of unknown length follows as [`chunk`]s and [`LAST_CHUNK`].
//!
//! Gateway error bodies follow the OpenAI shape `{"error":{"type":"...","message":"..."}}` so SDK
//! clients surface them as they would an upstream error.

use std::io::Write;

/// Reason phrase for the statuses the gateway itself produces.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends `HTTP/1.1 {status} {reason}` and its CRLF.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    status_line_with(out, status, reason(status).as_bytes());
}

/// Appends `HTTP/1.1 {status} {reason_phrase}` and its CRLF.
pub fn status_line_with(out: &mut Vec<u8>, status: u16, reason_phrase: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (no `core::fmt` on the per-request path).
#[inline]
pub fn decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` in lower-case hexadecimal without leading zeros (a chunk size).
#[inline]
pub fn hex(out: &mut Vec<u8>, n: u64) {
    let (digits, start) = hex_digits(n, 1);
    out.extend_from_slice(&digits[start..]);
}

/// `n` in lower-case hexadecimal, zero-padded to at least `width` digits (at most 16): the
/// digits are `buf[start..]` of the returned `(buf, start)`.
#[inline]
pub fn hex_digits(n: u64, width: usize) -> ([u8; 16], usize) {
    let mut digits = [b'0'; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let start = i.min(digits.len() - width.min(digits.len()));
    (digits, start)
}

/// Inserts `content-length: n` and its CRLF at `at` of `out` (a head whose body is
/// already after it: the line goes where the length became known).
pub fn insert_content_length(out: &mut Vec<u8>, at: usize, n: u64) {
    let mut line = [0u8; 40];
    let name = b"content-length: ";
    line[..name.len()].copy_from_slice(name);
    let mut b = itoa::Buffer::new();
    let digits = b.format(n).as_bytes();
    let mut len = name.len();
    line[len..len + digits.len()].copy_from_slice(digits);
    len += digits.len();
    line[len..len + 2].copy_from_slice(b"\r\n");
    len += 2;
    out.splice(at..at, line[..len].iter().copied());
}

/// Appends `name: value` and its CRLF. `name` and `value` must be valid field bytes.
#[inline]
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: n` (decimal) and its CRLF.
#[inline]
pub fn field_decimal(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends the fields that frame a response body and say whether the connection stays open:
/// `content-length` when the length is known, else `transfer-encoding: chunked` to an HTTP/1.1
/// peer (an HTTP/1.0 peer reads to the close); `connection: close` unless `keep`, and
/// `connection: keep-alive` to a kept HTTP/1.0 peer (whose default is to close).
pub fn framing_fields(out: &mut Vec<u8>, len: Option<usize>, keep: bool, peer_minor: u8) {
    match len {
        Some(n) => field_decimal(out, b"content-length", n as u64),
        None if peer_minor == 1 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if peer_minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// Appends `data` as one chunk of the chunked coding; nothing for empty data (an empty chunk
/// would end the body).
#[inline]
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with no trailer section: the end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// An error response the gateway produces itself.
#[derive(Debug, Clone, Copy)]
pub struct ErrorResponse<'a> {
    pub status: u16,
    /// OpenAI-style error type, e.g. `invalid_request_error`, `rate_limit_exceeded`.
    pub kind: &'a str,
    pub message: &'a str,
    /// The request field the error is about (a JSON path), as OpenAI's `param`; empty: none.
    pub param: &'a str,
    /// OpenAI's machine-readable `code` (`invalid_api_key`); empty: none. With a code the body
    /// has OpenAI's four fields: `message`, `type`, `param` (null when empty) and `code`.
    pub code: &'a str,
    /// Add `Connection: close` and close after writing.
    pub close: bool,
}

/// Appends `"name":"value"` (the value JSON-escaped) to a JSON body being written.
fn string_field(body: &mut Vec<u8>, name: &str, value: &str) {
    body.push(b'"');
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(b"\":\"");
    json_escape_into(body, value);
    body.push(b'"');
}

/// Appends a complete error response to `out`. `extra` is a block of already formatted
/// header lines (each ending in CRLF), e.g. `Retry-After` or `WWW-Authenticate`.
pub fn error_response(out: &mut Vec<u8>, e: &ErrorResponse<'_>, request_id: &str, extra: &[u8]) {
    let mut body = Vec::with_capacity(96 + e.message.len());
    body.extend_from_slice(b"{\"error\":{");
    if e.code.is_empty() {
        // The gateway's own shape: type first, `param` only when there is one.
        string_field(&mut body, "type", e.kind);
        body.push(b',');
        string_field(&mut body, "message", e.message);
        if !e.param.is_empty() {
            body.push(b',');
            string_field(&mut body, "param", e.param);
        }
    } else {
        // OpenAI's shape (a machine-readable `code`, `param` always present).
        string_field(&mut body, "message", e.message);
        body.push(b',');
        string_field(&mut body, "type", e.kind);
        if e.param.is_empty() {
            body.extend_from_slice(b",\"param\":null");
        } else {
            body.push(b',');
            string_field(&mut body, "param", e.param);
        }
        body.push(b',');
        string_field(&mut body, "code", e.code);
    }
    body.extend_from_slice(b"}}");
    status_line(out, e.status);
    let _ = write!(
        out,
        "content-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\n",
        body.len(),
        request_id
    );
    out.extend_from_slice(extra);
    if e.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
}

/// Escapes `s` as the inside of a JSON string. Runs of bytes that need no escape are copied
/// whole.
pub fn json_escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(esc);
        }
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_complete_http() {
        let mut out = Vec::new();
        let e = ErrorResponse {
            status: 429,
            kind: "rate_limit_exceeded",
            message: "slow \"down\"",
            param: "",
            code: "",
            close: false,
        };
        error_response(&mut out, &e, "r1", b"retry-after: 3\r\n");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(head.contains("retry-after: 3"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(
            body,
            r#"{"error":{"type":"rate_limit_exceeded","message":"slow \"down\""}}"#
        );
        let mut out = Vec::new();
        let e = ErrorResponse {
            param: "$['a\"b'].c[0]",
            ..e
        };
        error_response(&mut out, &e, "r1", b"");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(r#""message":"slow \"down\"","param":"$['a\"b'].c[0]"}}"#),
            "{text}"
        );
    }

    /// With a code, OpenAI's four fields, `param` null when there is none.
    #[test]
    fn an_error_with_a_code_has_openais_shape() {
        for (param, want) in [
            (
                "",
                r#"{"error":{"message":"bad \"key\"","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            ),
            (
                "$.x",
                r#"{"error":{"message":"bad \"key\"","type":"invalid_request_error","param":"$.x","code":"invalid_api_key"}}"#,
            ),
        ] {
            let mut out = Vec::new();
            let e = ErrorResponse {
                status: 401,
                kind: "invalid_request_error",
                message: "bad \"key\"",
                param,
                code: "invalid_api_key",
                close: false,
            };
            error_response(&mut out, &e, "r1", b"");
            let text = String::from_utf8(out).unwrap();
            let (_, body) = text.split_once("\r\n\r\n").unwrap();
            assert_eq!(body, want);
        }
    }

    #[test]
    fn framing_fields_by_length_keep_alive_and_version() {
        let cases = [
            (Some(3), true, 1, "content-length: 3\r\n"),
            (
                Some(3),
                false,
                1,
                "content-length: 3\r\nconnection: close\r\n",
            ),
            (
                Some(0),
                true,
                0,
                "content-length: 0\r\nconnection: keep-alive\r\n",
            ),
            (None, true, 1, "transfer-encoding: chunked\r\n"),
            (
                None,
                false,
                1,
                "transfer-encoding: chunked\r\nconnection: close\r\n",
            ),
            (None, false, 0, "connection: close\r\n"),
        ];
        for (len, keep, minor, want) in cases {
            let mut out = Vec::new();
            framing_fields(&mut out, len, keep, minor);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                want,
                "{len:?} {keep} {minor}"
            );
        }
    }

    #[test]
    fn chunks_decode_back() {
        let mut out = Vec::new();
        for piece in [&b"hello"[..], b"", &[b'x'; 300]] {
            chunk(&mut out, piece);
        }
        out.extend_from_slice(LAST_CHUNK);
        let mut d = crate::body::ChunkedDecoder::new(1 << 20);
        let (mut at, mut body) = (0, Vec::new());
        while !d.is_done() {
            let step = d.step(&out[at..]).unwrap();
            if let Some((a, b)) = step.data {
                body.extend_from_slice(&out[at + a..at + b]);
            }
            at += step.consumed;
        }
        assert_eq!(
            (at, &body[..5], body.len()),
            (out.len(), &b"hello"[..], 305)
        );
    }

    #[test]
    fn json_escapes_quotes_controls_and_keeps_utf8() {
        let mut out = Vec::new();
        json_escape_into(&mut out, "a\"b\\c\nd\re\tf\u{1}g\u{1f}h\u{7f}é😀");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh\u{7f}é😀"
        );
    }
}

#[cfg(test)]
mod number_tests {
    use super::*;

    #[test]
    fn decimals_and_fields_match_what_fmt_writes() {
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            100,
            65535,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut a = Vec::new();
            field_decimal(&mut a, b"content-length", n);
            assert_eq!(a, format!("content-length: {n}\r\n").into_bytes());
        }
        for status in [100u16, 200, 204, 304, 404, 429, 503, 599] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            status_line(&mut a, status);
            let _ = write!(b, "HTTP/1.1 {status} {}\r\n", reason(status));
            assert_eq!(a, b);
        }
        let mut a = Vec::new();
        field(&mut a, b"x-request-id", b"abc-1-2");
        assert_eq!(a, b"x-request-id: abc-1-2\r\n");
    }

    #[test]
    fn chunk_sizes_and_inserted_lengths_match_what_fmt_writes() {
        let mut ns: Vec<u64> = vec![0, 1, 9, 10, 15, 16, 255, 256, 4095, 65_536, u64::MAX];
        ns.extend((0..64).map(|i| 1u64 << i));
        ns.extend((1..64).map(|i| (1u64 << i) - 1));
        for n in ns {
            let mut a = Vec::new();
            hex(&mut a, n);
            assert_eq!(a, format!("{n:x}").into_bytes());
            let mut a = b"HTTP/1.1 200 OK\r\na: b\r\n\r\nbody".to_vec();
            let at = a.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
            insert_content_length(&mut a, at, n);
            let want = format!("HTTP/1.1 200 OK\r\na: b\r\ncontent-length: {n}\r\n\r\nbody");
            assert_eq!(String::from_utf8(a).unwrap(), want);
        }
        for len in [1usize, 15, 16, 17, 255, 256, 5000] {
            let data = vec![b'x'; len];
            let mut a = Vec::new();
            chunk(&mut a, &data);
            let mut b = format!("{len:x}\r\n").into_bytes();
            b.extend_from_slice(&data);
            b.extend_from_slice(b"\r\n");
            assert_eq!(a, b);
        }
        let mut a = Vec::new();
        chunk(&mut a, b"");
        assert!(a.is_empty(), "an empty chunk would end the body");
    }
}
