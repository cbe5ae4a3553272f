//! A deliberately small blocking HTTP/1.1 server side and client for the admin API: one
//! request per connection, bounded head and body, a deadline for the whole request and a
//! timeout for writing the answer.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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
    let deadline = Instant::now() + within;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_len, mut req, content_length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let target = parsed.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let mut req = Request {
                    method: parsed.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    ..Default::default()
                };
                let mut len = 0usize;
                for h in parsed.headers.iter() {
                    if h.name.eq_ignore_ascii_case("authorization") {
                        req.authorization = Some(h.value.to_vec());
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or(ReadError::Malformed)?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(ReadError::Malformed);
                    }
                }
                if len > MAX_BODY {
                    return Err(ReadError::TooLarge);
                }
                break (n, req, len);
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(ReadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => read_some(s, &mut buf, &mut chunk, deadline)?,
            Err(httparse::Error::TooManyHeaders) => return Err(ReadError::TooLarge),
            Err(_) => return Err(ReadError::Malformed),
        }
    };
    while buf.len() < head_len + content_length {
        read_some(s, &mut buf, &mut chunk, deadline)?;
    }
    req.body = buf[head_len..head_len + content_length].to_vec();
    Ok(req)
}

fn read_some(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<(), ReadError> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(ReadError::Gone)?;
    s.set_read_timeout(Some(left))
        .map_err(|_| ReadError::Gone)?;
    match s.read(chunk) {
        Ok(0) | Err(_) => Err(ReadError::Gone),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
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

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes `r` and closes (every admin response carries `Connection: close`). `head_only`:
/// the answer to a HEAD request (same head, no body).
/// Without a write timeout already set on `s`, [`REQUEST_DEADLINE`] applies.
pub fn write_response(s: &mut TcpStream, r: &Response, head_only: bool) -> io::Result<()> {
    if s.write_timeout().ok().flatten().is_none() {
        let _ = s.set_write_timeout(Some(REQUEST_DEADLINE));
    }
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    for (n, v) in &r.extra_headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
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
    let mut buf = Vec::new();
    s.take(MAX_RESPONSE as u64).read_to_end(&mut buf)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed admin response");
    match resp.parse(&buf).map_err(|_| bad())? {
        httparse::Status::Complete(n) => Ok((
            resp.code.unwrap_or(0),
            String::from_utf8_lossy(&buf[n..]).into_owned(),
        )),
        httparse::Status::Partial => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(raw: &'static [u8]) -> Result<Request, ReadError> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(raw).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        });
        let (mut s, _) = l.accept().unwrap();
        let r = read_request(&mut s);
        t.join().unwrap();
        r
    }

    #[test]
    fn reads_a_request_with_query_auth_and_body() {
        let r = serve_once(
            b"POST /reload?x=1 HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\nhi",
        )
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/reload"));
        assert_eq!(r.query, "x=1");
        assert_eq!(r.authorization.as_deref(), Some(&b"Bearer t"[..]));
        assert_eq!(r.body, b"hi");
    }

    #[test]
    fn incomplete_and_oversized_requests_fail() {
        assert_eq!(
            serve_once(b"GET / HTTP/1.1\r\n").unwrap_err(),
            ReadError::Gone
        );
        assert_eq!(
            serve_once(b"GET / HTTP/1.1\r\ncontent-length: 999999\r\n\r\n").unwrap_err(),
            ReadError::TooLarge
        );
        assert_eq!(
            serve_once(b"G\x01T / HTTP/1.1\r\n\r\n").unwrap_err(),
            ReadError::Malformed
        );
    }
}
