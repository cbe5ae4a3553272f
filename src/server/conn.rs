//! A client connection: the socket, its read buffer and its reusable write buffer.
//!
//! Buffers are passed by ownership through monoio's `(result, buf)` calls and put back. If an
//! operation is cancelled (a timeout) its buffer is lost with it; every such path closes the
//! connection.
//!
//! # Memory
//!
//! An idle keep-alive connection holds only a small read buffer ([`IDLE_READ_BUF`]) for the
//! read that waits for its next request: while it waits, its write buffers and a grown read
//! buffer are parked in the worker's spare list and taken back (no allocation) when the next
//! request arrives. 10,000 idle connections therefore cost ~1 KiB of buffers each, not 12 KiB.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::error::GatewayError;
use crate::http::limits::INIT_READ_BUF;
use crate::http::write::{error_response, ErrorResponse};
use crate::runtime::Drain;

/// Why a read did not deliver bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    Timeout,
    Io,
}

pub struct ClientConn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Received bytes; `buf[pos..]` is not yet consumed.
    pub buf: Vec<u8>,
    pub pos: usize,
    /// Outgoing bytes staged for one write.
    pub out: Vec<u8>,
    /// The upstream request being built (kept whole while it may be replayed).
    pub up_out: Vec<u8>,
    /// Id of the request being served.
    pub request_id: String,
    /// What the metrics and access log learn about the request being served.
    pub tally: Tally,
}

/// Per-request facts gathered on the connection for metrics and the access log. Bytes are
/// counted as they cross the socket; each request is charged what crossed since the previous
/// one was accounted ([`Tally::take_bytes`]), so every byte counts exactly once (read-ahead of
/// a pipelined request counts toward the one being served).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Index of the matched route in the snapshot the request runs on.
    pub route: Option<u32>,
    /// Index of the deployment a split chose for the request, if any.
    pub deployment: Option<u32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Tally {
    /// Bytes (in, out) since the last call.
    #[inline]
    pub fn take_bytes(&mut self) -> (u64, u64) {
        let b = (self.bytes_in, self.bytes_out);
        self.bytes_in = 0;
        self.bytes_out = 0;
        b
    }
}

impl ClientConn {
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Self {
        Self {
            stream,
            peer,
            // The first wait for a request installs the small idle buffer; the write buffers
            // come from the spare list when a request arrives.
            buf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            up_out: Vec::new(),
            request_id: String::with_capacity(40),
            tally: Tally::default(),
        }
    }

    /// Starts a new request's [`Tally`] (no route yet; bytes keep counting).
    #[inline]
    pub fn begin_request(&mut self) {
        self.tally.route = None;
    }

    /// Unconsumed received bytes.
    #[inline]
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Unconsumed received bytes, writable (the parser normalises the path in place).
    #[inline]
    pub fn buffered_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.pos..]
    }

    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
    }

    /// Moves unconsumed bytes to the front of the buffer.
    pub fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Reads more bytes, appending to the buffer (growing it up to `max_buffered` unconsumed
    /// bytes). `Ok(0)` is end of stream.
    pub async fn read_more(&mut self, max_buffered: usize) -> io::Result<usize> {
        if self.buf.len() == self.buf.capacity() {
            self.compact();
            if self.buf.len() == self.buf.capacity() {
                let want = (self.buf.capacity() * 2).min(max_buffered.max(INIT_READ_BUF));
                self.buf
                    .reserve(want.saturating_sub(self.buf.len()).max(1024));
            }
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self.stream.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        if let Ok(n) = res {
            self.tally.bytes_in += n as u64;
        }
        res
    }

    /// [`read_more`](Self::read_more) with a deadline.
    pub async fn read_more_until(
        &mut self,
        deadline: Instant,
        max: usize,
    ) -> Result<usize, ReadError> {
        match monoio::time::timeout_at(deadline.into(), self.read_more(max)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(_)) => Err(ReadError::Io),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Waits for the first bytes of the next request. False: close the connection (client
    /// closed, idle timeout, or the worker is draining).
    ///
    /// While it waits, the connection holds only a small read buffer (see the module docs).
    pub async fn wait_readable(&mut self, drain: &Drain, idle: Duration) -> bool {
        self.park_buffers();
        let deadline = Instant::now() + idle;
        let r = monoio::select! {
            r = self.read_more_until(deadline, INIT_READ_BUF) => r,
            _ = drain.wait() => return false,
        };
        let ok = matches!(r, Ok(n) if n > 0);
        if ok {
            self.unpark_buffers();
        }
        ok
    }

    /// Before an idle wait: parks the write buffers and swaps a grown read buffer for a small
    /// one. Nothing is buffered at this point (the caller waits only when `buffered()` is
    /// empty).
    fn park_buffers(&mut self) {
        park(&mut self.out);
        park(&mut self.up_out);
        if self.pos == self.buf.len() && self.buf.capacity() != IDLE_READ_BUF {
            park(&mut self.buf);
            self.buf = Vec::with_capacity(IDLE_READ_BUF);
            self.pos = 0;
        }
    }

    /// After the first bytes of a request arrived: takes write buffers back, and a full-size
    /// read buffer when the request may not fit the idle one.
    fn unpark_buffers(&mut self) {
        unpark(&mut self.out);
        unpark(&mut self.up_out);
        if self.buf.len() == self.buf.capacity() {
            let mut big = take_spare();
            big.extend_from_slice(&self.buf[self.pos..]);
            self.buf = big;
            self.pos = 0;
        }
    }

    /// Writes `out` fully and clears it.
    pub async fn flush_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = self.stream.write_all(out).await;
        if let Ok(n) = res {
            self.tally.bytes_out += n as u64;
        }
        out.clear();
        self.out = out;
        res.map(|_| ())
    }

    /// Writes `data` from another owned buffer (e.g. an upstream read buffer) and returns it.
    pub async fn write_owned<T: IoBuf + 'static>(&mut self, data: T) -> (io::Result<()>, T) {
        let (res, data) = self.stream.write_all(data).await;
        if let Ok(n) = res {
            self.tally.bytes_out += n as u64;
        }
        (res.map(|_| ()), data)
    }

    /// Writes an error response for the current request.
    pub async fn send_error(&mut self, e: &GatewayError, extra: &[u8]) -> io::Result<()> {
        let er = ErrorResponse {
            status: e.status,
            kind: e.kind,
            message: e.message,
            close: e.close,
        };
        let mut out = std::mem::take(&mut self.out);
        error_response(&mut out, &er, &self.request_id, extra);
        self.out = out;
        self.flush_out().await
    }
}

/// Read buffer of an idle keep-alive connection: big enough for a typical request head
/// (a larger request is read on into a full-size buffer).
pub const IDLE_READ_BUF: usize = 1024;
/// Spare buffers larger than this are freed rather than kept.
const SPARE_MAX_CAPACITY: usize = 16 * 1024;
/// Most spare buffers one worker keeps (bounds the list at 4 MiB).
const SPARE_MAX_COUNT: usize = 256;

thread_local! {
    /// This worker's spare buffers (one list per worker thread: nothing is shared).
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn park(buf: &mut Vec<u8>) {
    let mut b = std::mem::take(buf);
    if b.capacity() < INIT_READ_BUF || b.capacity() > SPARE_MAX_CAPACITY {
        return;
    }
    b.clear();
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_MAX_COUNT {
            s.push(b);
        }
    });
}

fn take_spare() -> Vec<u8> {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(INIT_READ_BUF))
}

fn unpark(buf: &mut Vec<u8>) {
    if buf.capacity() == 0 {
        *buf = take_spare();
    }
}

/// Reads into the spare capacity of `buf` (which must have some). Helper for other sockets.
pub async fn read_into(stream: &mut TcpStream, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    debug_assert!(buf.capacity() > len);
    let (res, slice) = stream.read(buf.slice_mut(len..)).await;
    (res, slice.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use monoio::net::TcpListener;

    use super::*;

    /// A request larger than the idle buffer arrives whole; write buffers are parked while
    /// idle and back (with capacity) once a request arrives.
    #[test]
    fn idle_buffers_park_and_large_requests_survive() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let big: Vec<u8> = (0..3 * IDLE_READ_BUF)
                .map(|i| b'a' + (i % 26) as u8)
                .collect();
            let sent = big.clone();
            let client = std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(&sent).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                s.write_all(b"next").unwrap();
                std::thread::sleep(Duration::from_millis(200));
            });
            let (stream, peer) = listener.accept().await.unwrap();
            let mut c = ClientConn::new(stream, peer);
            let drain = Drain::default();
            assert!(c.wait_readable(&drain, Duration::from_secs(5)).await);
            assert!(c.out.capacity() >= INIT_READ_BUF && c.up_out.capacity() >= INIT_READ_BUF);
            while c.buffered().len() < big.len() {
                assert!(c.read_more(64 * 1024).await.unwrap() > 0);
            }
            assert_eq!(c.buffered(), &big[..]);
            c.consume(big.len());
            c.compact();
            c.out.extend_from_slice(b"response");
            assert!(c.wait_readable(&drain, Duration::from_secs(5)).await);
            assert!(c.out.is_empty() && c.out.capacity() >= INIT_READ_BUF);
            assert_eq!(c.buf.capacity(), IDLE_READ_BUF);
            assert_eq!(c.buffered(), b"next");
            client.join().unwrap();
        });
    }
}
