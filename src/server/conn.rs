//! A client connection: the socket, its read buffer and its reusable write buffer.
//!
//! Buffers are passed by ownership through monoio's `(result, buf)` calls and put back, so a
//! connection allocates them once. If an operation is cancelled (a timeout) its buffer is lost
//! with it; every such path closes the connection.

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
            buf: Vec::with_capacity(INIT_READ_BUF),
            pos: 0,
            out: Vec::with_capacity(INIT_READ_BUF),
            up_out: Vec::with_capacity(INIT_READ_BUF),
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
    pub async fn wait_readable(&mut self, drain: &Drain, idle: Duration) -> bool {
        let deadline = Instant::now() + idle;
        let r = monoio::select! {
            r = self.read_more_until(deadline, INIT_READ_BUF) => r,
            _ = drain.wait() => return false,
        };
        matches!(r, Ok(n) if n > 0)
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

/// Reads into the spare capacity of `buf` (which must have some). Helper for other sockets.
pub async fn read_into(stream: &mut TcpStream, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    debug_assert!(buf.capacity() > len);
    let (res, slice) = stream.read(buf.slice_mut(len..)).await;
    (res, slice.into_inner())
}
