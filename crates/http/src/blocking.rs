//! Blocking HTTP/1.1 over `std::net::TcpStream`, for the speakers off the data path: the
//! admin API and its client, the health probe, the tests. Heads go through the same parsers
//! as the gateway's ([`crate::parse`], [`crate::response`]) and bodies through the same
//! framing ([`BodyDecoder`]).
//!
//! A [`Conn`] keeps the bytes read past one message for the next (keep-alive, pipelining); it
//! owns its stream or borrows one (`&TcpStream`) that the caller answers on.
//! With a deadline set, every read waits at most what is left of it, so a peer dripping one
//! byte at a time cannot hold a thread past it; without one, the stream's own read timeout
//! applies.

use std::borrow::Borrow;
use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Instant;

use crate::body::BodyDecoder;
use crate::limits::Limits;
use crate::parse::{parse_request_head, ParseError, RequestHead};
use crate::response::{parse_response_head, parse_response_head_with, ResponseHead};

/// Bytes asked of one read.
const READ_CHUNK: usize = 8 * 1024;

/// Why no complete message was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The peer closed (or reset) the connection before the first byte of a message: the
    /// end of a keep-alive connection.
    Closed,
    /// The peer closed (or reset) the connection in the middle of a message.
    Truncated,
    /// The deadline passed, or a read timed out.
    TimedOut,
    /// Another I/O error.
    Io(io::ErrorKind),
    /// A request that breaks the framing rules: answer `e.status()` and close.
    Request(ParseError),
    /// A response that cannot be framed safely, or larger than the reader accepts.
    Response,
}

/// A request read whole. The head is parsed without path normalisation
/// ([`parse_request_head`]): the path is the one sent.
#[derive(Debug, Clone)]
pub struct Request {
    head_bytes: Vec<u8>,
    head: RequestHead,
    pub body: Vec<u8>,
}

impl Request {
    /// The parsed head; its spans point into [`Self::head_bytes`].
    pub fn head(&self) -> &RequestHead {
        &self.head
    }

    /// The head as received.
    pub fn head_bytes(&self) -> &[u8] {
        &self.head_bytes
    }

    pub fn method(&self) -> &str {
        self.head.method.as_str()
    }

    /// The request target as sent (path, query and fragment).
    pub fn target(&self) -> &str {
        ascii(self.head.target(&self.head_bytes))
    }

    /// The path, without query or fragment.
    pub fn path(&self) -> &str {
        ascii(self.head.path.get(&self.head_bytes))
    }

    /// The query without its leading `?` (empty when there is none).
    pub fn query(&self) -> &str {
        let q = ascii(self.head.query.get(&self.head_bytes));
        q.strip_prefix('?').unwrap_or(q)
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(&self.head_bytes, name)
    }

    /// The header fields in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.head.headers(&self.head_bytes)
    }
}

/// httparse admits only visible ASCII in methods and targets.
fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

/// A final response read whole (interim 1xx responses skipped).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The header fields in the order received, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body decoded lossily as UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One blocking HTTP/1.1 connection, either side, over a `TcpStream` it owns or borrows.
#[derive(Debug)]
pub struct Conn<S = TcpStream> {
    pub stream: S,
    /// Read and not yet consumed.
    buf: Vec<u8>,
    deadline: Option<Instant>,
}

impl<S: Borrow<TcpStream>> Conn<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            deadline: None,
        }
    }

    /// Every later read must end by `deadline` (`None`: the stream's read timeout applies).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Bytes read past the last message.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads one request within `limits` (head size, header count, body size).
    pub fn read_request(&mut self, limits: &Limits) -> Result<Request, ReadError> {
        let mut head = RequestHead::default();
        let head_len = loop {
            match parse_request_head(&self.buf, limits, &mut head) {
                Ok(Some(n)) => break n,
                Ok(None) => self.fill_or_end()?,
                Err(e) => return Err(ReadError::Request(e)),
            }
        };
        let head_bytes = self.buf[..head_len].to_vec();
        self.buf.drain(..head_len);
        let mut dec = BodyDecoder::request(head.framing, limits.max_body_bytes);
        let body = self
            .read_body(&mut dec)
            .map_err(|e| e.map_or(ReadError::Truncated, ReadError::Request))?;
        Ok(Request {
            head_bytes,
            head,
            body,
        })
    }

    /// Reads one final response (skipping interim 1xx ones): a head of at most `max_head`
    /// bytes and a body of at most `max_body`. `head_request`: it answers a HEAD (no body).
    pub fn read_response(
        &mut self,
        head_request: bool,
        max_head: usize,
        max_body: u64,
    ) -> Result<Response, ReadError> {
        let (head, headers) = loop {
            let mut headers = Vec::new();
            let head = self.read_response_head_with(max_head, |n, v| {
                headers.push((ascii(n).to_owned(), String::from_utf8_lossy(v).into_owned()))
            })?;
            self.buf.drain(..head.head_len);
            if !head.is_interim() {
                break (head, headers);
            }
        };
        let mut dec = BodyDecoder::response(head.body_framing(head_request), max_body);
        let body = self.read_body(&mut dec).map_err(|e| match e {
            None => ReadError::Truncated,
            Some(_) => ReadError::Response,
        })?;
        Ok(Response {
            status: head.status,
            headers,
            body,
        })
    }

    /// Reads until a complete response head of at most `max_head` bytes is buffered, and
    /// returns it (the head stays buffered).
    pub fn read_response_head(&mut self, max_head: usize) -> Result<ResponseHead, ReadError> {
        self.read_response_head_with(max_head, |_, _| {})
    }

    fn read_response_head_with(
        &mut self,
        max_head: usize,
        field: impl FnMut(&[u8], &[u8]),
    ) -> Result<ResponseHead, ReadError> {
        loop {
            match parse_response_head(&self.buf) {
                Ok(Some(h)) if h.head_len <= max_head => {
                    // Once more, handing out the fields of a head now known whole and valid.
                    let _ = parse_response_head_with(&self.buf, field);
                    return Ok(h);
                }
                Ok(None) if self.buf.len() < max_head => self.fill_or_end()?,
                _ => return Err(ReadError::Response),
            }
        }
    }

    /// Reads the body `dec` frames. `Err(None)`: the connection ended first; `Err(Some(e))`:
    /// a framing error.
    fn read_body(&mut self, dec: &mut BodyDecoder) -> Result<Vec<u8>, Option<ParseError>> {
        let mut body = Vec::new();
        loop {
            let used = dec.decode_into(&self.buf, &mut body).map_err(Some)?;
            self.buf.drain(..used);
            if dec.is_done() {
                return Ok(body);
            }
            match self.fill() {
                Ok(0) if dec.ends_at_close() => return Ok(body),
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            }
        }
    }

    /// Whether the peer has closed the connection: nothing buffered and the next read ends
    /// (EOF, or nothing within the read timeout or deadline).
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && !matches!(self.fill(), Ok(n) if n > 0)
    }

    /// [`Self::fill`] while a head is incomplete: EOF ends the connection, or cuts a message
    /// short once some of it has arrived.
    fn fill_or_end(&mut self) -> Result<(), ReadError> {
        match self.fill()? {
            0 if self.buf.is_empty() => Err(ReadError::Closed),
            0 => Err(ReadError::Truncated),
            _ => Ok(()),
        }
    }

    /// One read into the buffer, bounded by the deadline; `Ok(0)` at EOF (a reset is an EOF
    /// too: either way nothing more arrives).
    fn fill(&mut self) -> Result<usize, ReadError> {
        if let Some(deadline) = self.deadline {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(ReadError::TimedOut)?;
            self.stream
                .borrow()
                .set_read_timeout(Some(left))
                .map_err(|e| ReadError::Io(e.kind()))?;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let res = loop {
            match self.stream.borrow().read(&mut self.buf[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                res => break res,
            }
        };
        let n = match res {
            Ok(n) => n,
            Err(e) => match e.kind() {
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => 0,
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    self.buf.truncate(len);
                    return Err(ReadError::TimedOut);
                }
                kind => {
                    self.buf.truncate(len);
                    return Err(ReadError::Io(kind));
                }
            },
        };
        self.buf.truncate(len + n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Duration;

    /// A connected pair: the far end writes `parts` (pausing between them), then closes.
    fn peer(parts: Vec<&'static [u8]>) -> Conn {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            for p in parts {
                c.write_all(p).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Conn::new(s)
    }

    #[test]
    fn pipelined_requests_with_split_bodies() {
        let mut c = peer(vec![
            b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\nContent-Length: 5\r\n\r\nhe",
            b"llo",
            b"PUT //b/../c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET",
        ]);
        let r = c.read_request(&Limits::default()).unwrap();
        assert_eq!((r.method(), r.path(), r.query()), ("POST", "/a", "x=1"));
        assert_eq!(r.header("authorization"), Some(&b"Bearer t"[..]));
        assert_eq!(r.body, b"hello");
        let r = c.read_request(&Limits::default()).unwrap();
        assert_eq!(
            (r.method(), r.target(), &r.body[..]),
            ("PUT", "//b/../c", &b"abc"[..])
        );
        assert_eq!(c.buffered(), b"GET");
        assert_eq!(
            c.read_request(&Limits::default()).unwrap_err(),
            ReadError::Truncated
        );
    }

    #[test]
    fn request_errors_carry_their_status() {
        let limits = Limits {
            max_header_bytes: 256,
            max_request_line: 128,
            max_body_bytes: 4,
            ..Limits::default()
        };
        let cases: [(&'static [u8], u16); 4] = [
            (b"G\x01T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n",
                413,
            ),
            (&[b'a'; 300], 414),
        ];
        for (raw, status) in cases {
            match peer(vec![raw]).read_request(&limits) {
                Err(ReadError::Request(e)) => assert_eq!(e.status(), status, "{raw:?}"),
                other => panic!("{raw:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn deadline_bounds_a_dripping_peer() {
        let mut c = peer(vec![b"GET / HTTP/1.1\r\n", b"Host: h\r\n"]);
        c.set_deadline(Some(Instant::now() + Duration::from_millis(10)));
        let start = Instant::now();
        assert_eq!(
            c.read_request(&Limits::default()).unwrap_err(),
            ReadError::TimedOut
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn responses_by_every_framing() {
        let mut c = peer(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            b"HTTP/1.0 503 Service Unavailable\r\n\r\nuntil close",
        ]);
        let r = c.read_response(false, 1024, 100).unwrap();
        assert_eq!(
            (r.status, r.header("x-a"), r.text()),
            (200, Some("1"), "ok".into())
        );
        assert_eq!(c.read_response(false, 1024, 100).unwrap().body, b"ab");
        assert_eq!(c.read_response(false, 1024, 100).unwrap().status, 204);
        assert_eq!(c.read_response(true, 1024, 100).unwrap().body, b"");
        let r = c.read_response(false, 1024, 100).unwrap();
        assert_eq!((r.status, r.text()), (503, "until close".into()));
    }

    #[test]
    fn bad_short_and_oversized_responses_fail() {
        let bad = |parts: Vec<&'static [u8]>| peer(parts).read_response(false, 64, 4).unwrap_err();
        assert_eq!(bad(vec![b"SSH-2.0-OpenSSH\r\n"]), ReadError::Response);
        assert_eq!(
            bad(vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            ]),
            ReadError::Response
        );
        assert_eq!(
            bad(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na"]),
            ReadError::Truncated
        );
        assert_eq!(
            bad(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"]),
            ReadError::Response
        );
        assert_eq!(bad(vec![b"HTTP/1.1 200 OK\r\nX: 0123456789012345678901234567890123456789012345678901234567890123\r\n\r\n"]), ReadError::Response);
        assert_eq!(bad(vec![b"HTTP/1.1 200"]), ReadError::Truncated);
        assert_eq!(bad(vec![]), ReadError::Closed);
    }
}
