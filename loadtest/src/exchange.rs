//! One HTTP/1.1 request/response exchange on a keep-alive connection, with the timestamps
//! the report needs: first response byte, each complete SSE event, response end.
//!
//! Response bodies are framed by `Content-Length`, `Transfer-Encoding: chunked`, or the
//! connection closing. When the response is `text/event-stream`, the decoded body is scanned
//! for event ends (a blank line, `\n\n` or `\r\n\r\n`).
use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::report::ErrorKind;

/// Most response headers accepted.
const MAX_HEADERS: usize = 64;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Smallest free space handed to a read.
const MIN_READ: usize = 16 * 1024;

/// What one exchange observed.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Response status.
    pub status: u16,
    /// First response byte.
    pub first_byte: Instant,
    /// First complete SSE event (streams only).
    pub first_event: Option<Instant>,
    /// Response complete.
    pub end: Instant,
    /// The response was an event stream.
    pub streamed: bool,
    /// The connection may carry another request.
    pub reusable: bool,
}

/// A client connection and its reused read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

/// Body framing of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Incremental chunked-coding decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

impl Chunk {
    /// Consumes what it can of `input`, handing decoded data to `data`; returns the bytes
    /// consumed.
    fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ErrorKind> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match *self {
                Chunk::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        at += n;
                        *self = Chunk::Trailer;
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        at += n;
                        *self = Chunk::Data(size);
                    }
                    Ok(httparse::Status::Partial) => return Ok(at),
                    Err(_) => return Err(ErrorKind::Parse),
                },
                Chunk::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = (rest.len() as u64).min(left) as usize;
                    data(&rest[..take]);
                    at += take;
                    *self = if left == take as u64 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take as u64)
                    };
                }
                Chunk::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ErrorKind::Parse);
                    }
                    at += 2;
                    *self = Chunk::Size;
                }
                Chunk::Trailer => {
                    let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(rest, &mut trailers) {
                        Ok(httparse::Status::Complete((n, _))) => {
                            at += n;
                            *self = Chunk::Done;
                        }
                        Ok(httparse::Status::Partial) => return Ok(at),
                        Err(_) => return Err(ErrorKind::Parse),
                    }
                }
                Chunk::Done => return Ok(at),
            }
        }
    }
}

/// Finds SSE event ends in a byte stream split arbitrarily.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventScan {
    /// The last significant byte (ignoring `\r`) was `\n`.
    prev_nl: bool,
}

impl EventScan {
    /// Number of event ends in `data`.
    pub fn feed(&mut self, data: &[u8]) -> u32 {
        let mut events = 0;
        for &b in data {
            match b {
                b'\r' => {}
                b'\n' if self.prev_nl => {
                    events += 1;
                    self.prev_nl = false;
                }
                b'\n' => self.prev_nl = true,
                _ => self.prev_nl = false,
            }
        }
        events
    }
}

/// Head facts needed after the head buffer is gone.
struct Head {
    status: u16,
    len: usize,
    framing: Framing,
    streamed: bool,
    close: bool,
}

fn parse_head(bytes: &[u8], is_head_request: bool) -> Result<Option<Head>, ErrorKind> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD => return Err(ErrorKind::Parse),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ErrorKind::Parse),
    };
    let status = resp.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    let mut streamed = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        let v = std::str::from_utf8(h.value)
            .map_err(|_| ErrorKind::Parse)?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            if framing != Framing::Chunked {
                framing = Framing::Length(v.parse().map_err(|_| ErrorKind::Parse)?);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if v.to_ascii_lowercase().ends_with("chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-type") {
            streamed = v.starts_with("text/event-stream");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if v.eq_ignore_ascii_case("close") {
                close = true;
            } else if v.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        }
    }
    if is_head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        status,
        len,
        framing,
        streamed,
        close,
    }))
}

impl Conn {
    /// Connects (with `TCP_NODELAY`).
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Self, ErrorKind> {
        let stream = TcpStream::connect_addr(addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            buf: Vec::with_capacity(MIN_READ * 4),
            pos: 0,
        })
    }

    async fn fill(&mut self) -> Result<usize, ErrorKind> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(MIN_READ);
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self
            .stream
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..))
            .await;
        self.buf = slice.into_inner();
        res.map_err(|_| ErrorKind::Io)
    }

    /// Sends `req` (a complete request) and reads the whole response. Each SSE event gap
    /// (µs since the previous event) is pushed to `gaps`. The request buffer is handed back.
    pub async fn exchange(
        &mut self,
        req: Vec<u8>,
        is_head_request: bool,
        gaps: &mut Vec<u64>,
    ) -> (Result<Outcome, ErrorKind>, Vec<u8>) {
        let (res, req) = self.stream.write_all(req).await;
        if res.is_err() {
            return (Err(ErrorKind::Io), req);
        }
        (self.read_response(is_head_request, gaps).await, req)
    }

    async fn read_response(
        &mut self,
        is_head_request: bool,
        gaps: &mut Vec<u64>,
    ) -> Result<Outcome, ErrorKind> {
        let mut first_byte = None;
        let head = loop {
            if self.pos < self.buf.len() {
                first_byte.get_or_insert_with(Instant::now);
                if let Some(h) = parse_head(&self.buf[self.pos..], is_head_request)? {
                    break h;
                }
            }
            if self.fill().await? == 0 {
                return Err(ErrorKind::Closed);
            }
        };
        let first_byte = first_byte.unwrap_or_else(Instant::now);
        self.pos += head.len;
        let mut scan = EventScan::default();
        let mut first_event = None;
        let mut last_event = None;
        let mut on_data = |data: &[u8], now: Instant| {
            if head.streamed && scan.feed(data) > 0 {
                if let Some(prev) = last_event {
                    gaps.push(now.duration_since(prev).as_micros() as u64);
                }
                first_event.get_or_insert(now);
                last_event = Some(now);
            }
        };
        let mut now = Instant::now();
        match head.framing {
            Framing::Length(mut left) => loop {
                let avail = ((self.buf.len() - self.pos) as u64).min(left) as usize;
                on_data(&self.buf[self.pos..self.pos + avail], now);
                self.pos += avail;
                left -= avail as u64;
                if left == 0 {
                    break;
                }
                if self.fill().await? == 0 {
                    return Err(ErrorKind::Closed);
                }
                now = Instant::now();
            },
            Framing::Chunked => {
                let mut chunk = Chunk::Size;
                loop {
                    let used = chunk.feed(&self.buf[self.pos..], |d| on_data(d, now))?;
                    self.pos += used;
                    if chunk == Chunk::Done {
                        break;
                    }
                    if self.fill().await? == 0 {
                        return Err(ErrorKind::Closed);
                    }
                    now = Instant::now();
                }
            }
            Framing::UntilClose => loop {
                on_data(&self.buf[self.pos..], now);
                self.pos = self.buf.len();
                if self.fill().await? == 0 {
                    break;
                }
                now = Instant::now();
            },
        }
        Ok(Outcome {
            status: head.status,
            first_byte,
            first_event,
            end: now,
            streamed: head.streamed,
            reusable: !head.close && head.framing != Framing::UntilClose,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_decoder_handles_any_split() {
        let wire = b"5\r\nhello\r\n3;x=y\r\n, w\r\n0\r\nT: 1\r\n\r\n";
        for split in 0..wire.len() {
            let mut chunk = Chunk::Size;
            let mut out = Vec::new();
            let used = chunk
                .feed(&wire[..split], |d| out.extend_from_slice(d))
                .unwrap();
            let rest = [&wire[used..split], &wire[split..]].concat();
            let used2 = chunk.feed(&rest, |d| out.extend_from_slice(d)).unwrap();
            assert_eq!(chunk, Chunk::Done, "split {split}");
            assert_eq!(used2, rest.len());
            assert_eq!(out, b"hello, w");
        }
        let mut chunk = Chunk::Size;
        assert_eq!(chunk.feed(b"zz\r\n", |_| {}), Err(ErrorKind::Parse));
    }

    #[test]
    fn event_scan_counts_blank_lines_across_splits() {
        let mut s = EventScan::default();
        assert_eq!(s.feed(b"data: a\n\ndata: b\r\n"), 1);
        assert_eq!(s.feed(b"\r\n"), 1);
        assert_eq!(s.feed(b"data: c\n"), 0);
        assert_eq!(s.feed(b"\n"), 1);
    }

    #[test]
    fn head_framing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(h.streamed && h.framing == Framing::Chunked && !h.close);
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .unwrap()
            .unwrap();
        assert!(h.close && h.framing == Framing::Length(3));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n", false).unwrap().is_none());
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n", false).is_err());
    }
}
