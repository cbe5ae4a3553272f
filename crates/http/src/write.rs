//! Response heads and the JSON error responses every stage ends in.
//!
//! Error bodies follow the OpenAI shape `{"error":{"type":"...","message":"..."}}` so SDK
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

/// An error response the gateway produces itself.
#[derive(Debug, Clone, Copy)]
pub struct ErrorResponse<'a> {
    pub status: u16,
    /// OpenAI-style error type, e.g. `invalid_request_error`, `rate_limit_exceeded`.
    pub kind: &'a str,
    pub message: &'a str,
    /// Add `Connection: close` and close after writing.
    pub close: bool,
}

/// Appends a complete error response to `out`. `extra` is a block of already formatted
/// header lines (each ending in CRLF), e.g. `Retry-After` or `WWW-Authenticate`.
pub fn error_response(out: &mut Vec<u8>, e: &ErrorResponse<'_>, request_id: &str, extra: &[u8]) {
    let mut body = Vec::with_capacity(96 + e.message.len());
    body.extend_from_slice(b"{\"error\":{\"type\":\"");
    json_escape_into(&mut body, e.kind);
    body.extend_from_slice(b"\",\"message\":\"");
    json_escape_into(&mut body, e.message);
    body.extend_from_slice(b"\"}}");
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\n",
        e.status,
        reason(e.status),
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

/// Escapes `s` as the inside of a JSON string.
pub fn json_escape_into(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
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
    }
}
