//! A deliberately small blocking HTTP/1.1 server side and client for the admin API, on the
//! codec's blocking helpers ([`crate::http::blocking`]): one request per connection, bounded
//! head and body, a deadline for the whole request and a timeout for writing the answer.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::http::blocking;
use crate::http::response::MAX_RESPONSE_HEAD;
use crate::http::{write, Limits};

/// Largest request head the admin listener reads.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body the admin listener reads (no endpoint needs more).
pub const MAX_BODY: usize = 64 * 1024;
/// Headers parsed per admin request.
pub const MAX_HEADERS: usize = 32;
/// The whole request must arrive within this; a slow client cannot hold the listener longer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Largest response the admin client accepts.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// A parsed admin request.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub authorization: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

/// Why a request could not be read; each maps to a status (or to closing silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Closed, reset or timed out before a full request: close without answering.
    Gone,
    /// 400.
    Malformed,
    /// 431 / 413.
    TooLarge,
}

/// Reads one request from `s` within [`REQUEST_DEADLINE`].
pub fn read_request(s: &mut TcpStream) -> Result<Request, ReadError> {
    read_request_within(s, REQUEST_DEADLINE)
}

/// Reads one request from `s`; the whole request must arrive within `within`.
pub fn read_request_within(s: &mut TcpStream, within: Duration) -> Result<Request, ReadError> {
    let mut conn = blocking::Conn::new(&*s);
    conn.set_deadline(Some(Instant::now() + within));
    match conn.read_request(&Limits::bounded(MAX_HEAD, MAX_HEADERS, MAX_BODY as u64)) {
        Ok(r) => Ok(Request {
            method: r.method().to_owned(),
            path: r.path().to_owned(),
            query: r.query().to_owned(),
            authorization: r.header("authorization").map(<[u8]>::to_vec),
            body: r.body,
        }),
        Err(blocking::ReadError::Request(e)) if matches!(e.status(), 413 | 414 | 431) => {
            Err(ReadError::TooLarge)
        }
        Err(blocking::ReadError::Request(_) | blocking::ReadError::Response) => {
            Err(ReadError::Malformed)
        }
        Err(_) => Err(ReadError::Gone),
    }
}

/// A response to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub extra_headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            extra_headers: Vec::new(),
            body,
        }
    }

    /// `{"error": kind, "message": message}`.
    pub fn error(status: u16, kind: &str, message: &str) -> Response {
        Response::json(
            status,
            &serde_json::json!({"error": kind, "message": message}),
        )
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.extra_headers.push((name, value.into()));
        self
    }
}

/// Writes `r` and closes (every admin response carries `Connection: close`). `head_only`:
/// the answer to a HEAD request (same head, no body).
/// Without a write timeout already set on `s`, [`REQUEST_DEADLINE`] applies.
pub fn write_response(s: &mut TcpStream, r: &Response, head_only: bool) -> io::Result<()> {
    if s.write_timeout().ok().flatten().is_none() {
        let _ = s.set_write_timeout(Some(REQUEST_DEADLINE));
    }
    let mut out = Vec::with_capacity(256 + r.body.len());
    write::status_line(&mut out, r.status);
    let _ = write!(
        out,
        "content-type: {}\r\ncache-control: no-store\r\n",
        r.content_type
    );
    write::framing_fields(&mut out, Some(r.body.len()), false, 1);
    for (n, v) in &r.extra_headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    s.write_all(&out)?;
    s.flush()
}

/// A blocking admin client call: `method path` with an optional bearer token. Returns the
/// status and body (used by `shardgate stats` and the tests).
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> io::Result<(u16, String)> {
    call_with_body(addr, method, path, token, b"")
}

/// [`call`] with a request body (sent as `application/json`).
pub fn call_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut conn = blocking::Conn::new(s);
    match conn.read_response(method == "HEAD", MAX_RESPONSE_HEAD, MAX_RESPONSE as u64) {
        Ok(r) => Ok((r.status, r.text())),
        Err(e) => Err(io::Error::new(
            match e {
                blocking::ReadError::TimedOut => io::ErrorKind::TimedOut,
                blocking::ReadError::Closed | blocking::ReadError::Truncated => {
                    io::ErrorKind::UnexpectedEof
                }
                blocking::ReadError::Io(kind) => kind,
                _ => io::ErrorKind::InvalidData,
            },
            format!("malformed or incomplete admin response ({e:?})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(raw: &[u8]) -> Result<Request, ReadError> {
        let raw = raw.to_vec();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&raw).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        });
        let (mut s, _) = l.accept().unwrap();
        let r = read_request(&mut s);
        t.join().unwrap();
        r
    }

    #[test]
    fn reads_a_request_with_query_auth_and_body() {
        for raw in [
            &b"POST /reload?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"POST /reload?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nh\r\n1\r\ni\r\n0\r\n\r\n",
        ] {
            let r = serve_once(raw).unwrap();
            assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/reload"));
            assert_eq!(r.query, "x=1");
            assert_eq!(r.authorization.as_deref(), Some(&b"Bearer t"[..]));
            assert_eq!(r.body, b"hi");
        }
    }

    #[test]
    fn incomplete_oversized_and_malformed_requests_fail() {
        let big_head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let many = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS)
        );
        let cases: [(&[u8], ReadError); 7] = [
            (b"GET / HTTP/1.1\r\n", ReadError::Gone),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab", ReadError::Gone),
            (b"GET / HTTP/1.1\r\nHost: a\r\ncontent-length: 999999\r\n\r\n", ReadError::TooLarge),
            (big_head.as_bytes(), ReadError::TooLarge),
            (many.as_bytes(), ReadError::TooLarge),
            (b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", ReadError::Malformed),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", ReadError::Malformed),
        ];
        for (raw, want) in cases {
            assert_eq!(
                serve_once(raw).unwrap_err(),
                want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
