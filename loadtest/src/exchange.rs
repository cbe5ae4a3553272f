//! One HTTP/1.1 request/response exchange on a keep-alive connection, with the timestamps
//! the report needs: first response byte, each complete SSE event, response end.
//!
//! Responses are read with the gateway's codec (`shardgate-http`): the head by its response
//! parser (interim 1xx heads skipped), the body by its [`BodyDecoder`] (`Content-Length`,
//! `Transfer-Encoding: chunked`, or the connection closing). When the response is
//! `text/event-stream`, the decoded body is scanned for event ends (a blank line, `\n\n` or
//! `\r\n\r\n`).
use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_http::body::BodyDecoder;
use shardgate_http::parse::trim;
use shardgate_http::response::{parse_response_head_with, ResponseHead, MAX_RESPONSE_HEAD};

use crate::report::ErrorKind;

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
    /// Complete SSE events in the body (streams only).
    pub events: u32,
    /// The connection may carry another request.
    pub reusable: bool,
}

/// A client connection and its reused read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
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

/// Parses a response head at the start of `bytes`: the head and whether its body is an
/// event stream; `Ok(None)` while incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(ResponseHead, bool)>, ErrorKind> {
    let mut streamed = false;
    let head = parse_response_head_with(bytes, |name, value| {
        if name.eq_ignore_ascii_case(b"content-type") {
            streamed = trim(value).starts_with(b"text/event-stream");
        }
    });
    match head {
        Ok(Some(h)) => Ok(Some((h, streamed))),
        Ok(None) if bytes.len() >= MAX_RESPONSE_HEAD => Err(ErrorKind::Parse),
        Ok(None) => Ok(None),
        Err(_) => Err(ErrorKind::Parse),
    }
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
        let (head, streamed) = loop {
            if self.pos < self.buf.len() {
                first_byte.get_or_insert_with(Instant::now);
                match parse_head(&self.buf[self.pos..])? {
                    Some((h, _)) if h.is_interim() => {
                        self.pos += h.head_len;
                        continue;
                    }
                    Some(h) => break h,
                    None => {}
                }
            }
            if self.fill().await? == 0 {
                return Err(ErrorKind::Closed);
            }
        };
        let first_byte = first_byte.unwrap_or_else(Instant::now);
        self.pos += head.head_len;
        let mut scan = EventScan::default();
        let mut first_event = None;
        let mut last_event = None;
        let mut events = 0;
        let mut on_data = |data: &[u8], now: Instant| {
            let ended = if streamed { scan.feed(data) } else { 0 };
            events += ended;
            if ended > 0 {
                if let Some(prev) = last_event {
                    gaps.push(now.duration_since(prev).as_micros() as u64);
                }
                first_event.get_or_insert(now);
                last_event = Some(now);
            }
        };
        let mut now = Instant::now();
        let mut body = BodyDecoder::response(head.body_framing(is_head_request), u64::MAX);
        loop {
            let used = body
                .decode_with(&self.buf[self.pos..], |d| on_data(d, now))
                .map_err(|_| ErrorKind::Parse)?;
            self.pos += used;
            if body.is_done() {
                break;
            }
            if self.fill().await? == 0 {
                if body.ends_at_close() {
                    break;
                }
                return Err(ErrorKind::Closed);
            }
            now = Instant::now();
        }
        Ok(Outcome {
            status: head.status,
            first_byte,
            first_event,
            end: now,
            streamed,
            events,
            reusable: head.keep_alive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_http::response::ResponseFraming;

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
        let (h, streamed) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(streamed && h.framing == ResponseFraming::Chunked && h.keep_alive);
        let (h, streamed) = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert!(!streamed && !h.keep_alive && h.framing == ResponseFraming::Length(3));
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body_framing(true), ResponseFraming::None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
    }
}
