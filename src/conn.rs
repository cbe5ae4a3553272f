//! A client connection: the socket, its read buffer and its reusable write buffer.
//!
//! Buffers are passed by ownership through monoio's `(result, buf)` calls and put back. If an
//! operation is cancelled (a timeout) its buffer is lost with it; every such path closes the
//! connection.
//!
//! # Memory
//!
//! A keep-alive connection waiting for its next request holds only a small read buffer
//! ([`IDLE_READ_BUF`]) for the read that waits: its write buffers and a grown read buffer are
//! parked in the worker's spare list and taken back (no allocation) when the request arrives.
//!
//! After [`HIBERNATE_AFTER`] without a request the wait ends with [`Wait::Idle`]: the read is
//! cancelled (whatever it received by then is kept) and the connection loop hands the
//! connection to a small task that waits for readability with no buffer at all
//! ([`ClientConn::hibernate`], [`ClientConn::wait_woken`]). The large per-connection task —
//! sized by the deepest request path, ~4.5 KB — and the read buffer are freed meanwhile, so an
//! idle connection holds ~1.1 KB (a ~0.6 KB task, the socket, a drain slot) instead of ~6 KB
//! (measured in the README).
//!
//! # TLS
//!
//! The stream is plain or TLS ([`Stream`]); the connection reads and writes through it the
//! same way. A TLS connection does not wait with a cancellable read (a cancelled read would
//! lose ciphertext and break the session): it waits for the socket's readiness, which
//! consumes nothing, and reads once something arrived. Bytes already inside the TLS layer are
//! read without waiting.

pub mod stream;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::error::GatewayError;
use crate::http::limits::INIT_READ_BUF;
use crate::http::write::{error_response, ErrorResponse};
use crate::worker::Drain;

pub use stream::{Stream, TlsStream};

/// Why a read did not deliver bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    Timeout,
    Io,
}

/// How a wait for the next request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Bytes of a request are buffered.
    Ready,
    /// Close the connection: the client closed, it broke, the idle timeout passed, or the
    /// worker is draining.
    Closed,
    /// Nothing arrived for [`HIBERNATE_AFTER`]; nothing was lost. Hibernate until this
    /// instant (the keep-alive deadline).
    Idle(Instant),
}

/// `ECANCELED` (Linux): a read ended by [`Canceller::cancel`].
const ECANCELED: i32 = 125;

pub struct ClientConn {
    pub stream: Stream,
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
    /// Cancels the wait for the next request when it hibernates (made on first use after a
    /// wake, dropped while hibernating).
    canceller: Option<Canceller>,
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
        Self::with_stream(Stream::Plain(stream), peer)
    }

    /// A connection over `stream` (plain or TLS).
    pub fn with_stream(stream: Stream, peer: SocketAddr) -> Self {
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
            canceller: None,
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
        self.make_room(max_buffered);
        let buf = std::mem::take(&mut self.buf);
        let (res, buf) = self.stream.read(buf).await;
        self.buf = buf;
        if let Ok(n) = res {
            self.tally.bytes_in += n as u64;
        }
        res
    }

    /// [`read_more`](Self::read_more) on a plain stream (`Ok(0)` on TLS): the hibernating
    /// task's read, whose future stays small without the TLS path in it.
    async fn read_more_plain(&mut self, max_buffered: usize) -> io::Result<usize> {
        self.make_room(max_buffered);
        let Stream::Plain(s) = &mut self.stream else {
            return Ok(0);
        };
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = s.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        if let Ok(n) = res {
            self.tally.bytes_in += n as u64;
        }
        res
    }

    /// Grows a full buffer (compacting first), up to `max_buffered` unconsumed bytes.
    fn make_room(&mut self, max_buffered: usize) {
        if self.buf.len() == self.buf.capacity() {
            self.compact();
            if self.buf.len() == self.buf.capacity() {
                let want = (self.buf.capacity() * 2).min(max_buffered.max(INIT_READ_BUF));
                self.buf
                    .reserve(want.saturating_sub(self.buf.len()).max(1024));
            }
        }
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

    /// Waits for the first bytes of the next request, at most `idle` (the keep-alive
    /// timeout); after `hibernate_after` without any, ends with [`Wait::Idle`] (see the module
    /// docs).
    ///
    /// While it waits, the connection holds only a small read buffer.
    pub async fn wait_request(
        &mut self,
        drain: &Drain,
        idle: Duration,
        hibernate_after: Duration,
    ) -> Wait {
        self.park_buffers();
        let now = Instant::now();
        let deadline = now + idle;
        if self.stream.is_tls() {
            return self
                .wait_request_tls(drain, deadline, now + hibernate_after)
                .await;
        }
        if idle <= hibernate_after {
            // Closed at the deadline anyway: a plain read, dropped (with its buffer) on expiry.
            let r = monoio::select! {
                r = self.read_more_until(deadline, INIT_READ_BUF) => r,
                _ = drain.wait() => return Wait::Closed,
            };
            return self.after_wait(r.map_err(|_| ()));
        }
        let handle = self.canceller.get_or_insert_with(Canceller::new).handle();
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let Stream::Plain(plain) = &mut self.stream else {
            unreachable!("TLS connections wait above")
        };
        let (res, slice) = {
            let mut read = std::pin::pin!(plain.cancelable_read(buf.slice_mut(len..), handle));
            let waited = monoio::select! {
                r = &mut read => Some(r),
                _ = monoio::time::sleep_until((now + hibernate_after).into()) => None,
                _ = drain.wait() => return Wait::Closed,
            };
            match waited {
                Some(r) => r,
                None => {
                    // Cancelled, the read still completes: with what arrived meanwhile, if
                    // anything, or with ECANCELED. Either way the buffer comes back.
                    drop(self.canceller.take().map(Canceller::cancel));
                    read.await
                }
            }
        };
        self.buf = slice.into_inner();
        match res {
            Err(e) if e.raw_os_error() == Some(ECANCELED) => Wait::Idle(deadline),
            Ok(n) => {
                self.tally.bytes_in += n as u64;
                self.after_wait(Ok(n))
            }
            Err(_) => Wait::Closed,
        }
    }

    /// [`wait_request`](Self::wait_request) on TLS: readiness first (see the module docs),
    /// hibernating at `nap` when nothing arrived.
    async fn wait_request_tls(&mut self, drain: &Drain, deadline: Instant, nap: Instant) -> Wait {
        if !self.stream.pending() {
            let ready = monoio::select! {
                r = self.stream.tcp().readable(false) => r.is_ok(),
                _ = monoio::time::sleep_until(nap.min(deadline).into()) => {
                    return if nap < deadline { Wait::Idle(deadline) } else { Wait::Closed };
                }
                _ = drain.wait() => return Wait::Closed,
            };
            if !ready {
                return Wait::Closed;
            }
        }
        let r = monoio::select! {
            r = self.read_more_until(deadline, INIT_READ_BUF) => r,
            _ = drain.wait() => return Wait::Closed,
        };
        self.after_wait(r.map_err(|_| ()))
    }

    fn after_wait(&mut self, read: Result<usize, ()>) -> Wait {
        if matches!(read, Ok(n) if n > 0) {
            self.unpark_buffers();
            Wait::Ready
        } else {
            Wait::Closed
        }
    }

    /// Before a hibernating wait: frees what an idle connection does not need (its read
    /// buffer, request id and canceller). Nothing is buffered.
    pub fn hibernate(&mut self) {
        debug_assert!(self.buffered().is_empty());
        self.buf = Vec::new();
        self.pos = 0;
        self.request_id = String::new();
        self.canceller = None;
    }

    /// The hibernating wait: until the socket is readable, with no buffer, then reads what
    /// arrived. True: a request's first bytes are buffered (TLS: something arrived, or is
    /// waiting in the session; the serving task reads it). False: close the connection (the
    /// client closed, `deadline` passed, the worker drains).
    ///
    /// The deadline is [`Drain::wait_until`]'s coarse one (up to
    /// [`EXPIRE_EVERY`](crate::worker::EXPIRE_EVERY) late), which costs this future
    /// 32 bytes of the worker's table instead of a 640-byte timer.
    pub async fn wait_woken(&mut self, drain: &Drain, deadline: Instant) -> bool {
        let readable = self.stream.pending()
            || monoio::select! {
                r = self.stream.tcp().readable(false) => r.is_ok(),
                _ = drain.wait_until(deadline) => false,
            };
        // TLS: the serving task reads through the session (`wait_request`), whose future
        // would make every hibernating task large.
        if self.stream.is_tls() {
            return readable;
        }
        // Read here what woke it: a request goes on to a serving task, but a client that
        // closed (the common end of an idle connection) costs no serving task at all.
        readable
            && monoio::select! {
                r = self.read_more_plain(IDLE_READ_BUF) => self.after_wait(r.map_err(|_| ())) == Wait::Ready,
                _ = drain.wait_until(deadline) => false,
            }
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
    pub async fn write_owned(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, data) = self.stream.write_all(data).await;
        if let Ok(n) = res {
            self.tally.bytes_out += n as u64;
        }
        (res.map(|_| ()), data)
    }

    /// Writes an error response for the current request; `param`: the JSON path of the field
    /// it is about, or empty.
    pub async fn send_error(
        &mut self,
        e: &GatewayError,
        extra: &[u8],
        param: &str,
    ) -> io::Result<()> {
        let (kind, code) = e.wire_type_and_code();
        let er = ErrorResponse {
            status: e.status,
            kind,
            message: e.message,
            param,
            code,
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
/// A keep-alive connection without a request for this long hibernates (see the module docs).
/// Waking costs its next request a task spawn and two more ring operations (~a few µs), which
/// a connection that waits this long between requests does not notice; short, so that a burst
/// of new connections (each holds the large task until it hibernates) leaves little behind.
pub const HIBERNATE_AFTER: Duration = Duration::from_millis(100);
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
            let wait = c.wait_request(&drain, Duration::from_secs(5), HIBERNATE_AFTER);
            assert_eq!(wait.await, Wait::Ready);
            assert!(c.out.capacity() >= INIT_READ_BUF && c.up_out.capacity() >= INIT_READ_BUF);
            while c.buffered().len() < big.len() {
                assert!(c.read_more(64 * 1024).await.unwrap() > 0);
            }
            assert_eq!(c.buffered(), &big[..]);
            c.consume(big.len());
            c.compact();
            c.out.extend_from_slice(b"response");
            let wait = c.wait_request(&drain, Duration::from_secs(5), HIBERNATE_AFTER);
            assert_eq!(wait.await, Wait::Ready);
            assert!(c.out.is_empty() && c.out.capacity() >= INIT_READ_BUF);
            assert_eq!(c.buf.capacity(), IDLE_READ_BUF);
            assert_eq!(c.buffered(), b"next");
            client.join().unwrap();
        });
    }

    /// Runs `test` on the legacy (epoll) driver and, where the kernel has it, on io_uring.
    fn on_both_drivers<F: std::future::Future<Output = ()>>(test: impl Fn() -> F) {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(test());
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(test()),
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}): tested on the legacy driver only")
            }
        }
    }

    /// Runs `f` while expiring `drain`'s timed waits, as the worker's inbox loop does.
    async fn expiring<T>(drain: &Drain, f: impl std::future::Future<Output = T>) -> T {
        let ticks = async {
            loop {
                monoio::time::sleep(Duration::from_millis(5)).await;
                drain.expire(Instant::now());
            }
        };
        monoio::select! {
            r = f => r,
            () = ticks => unreachable!(),
        }
    }

    /// Waits for the next request the way the connection loop does, hibernating in between
    /// (`true`: it hibernated); `None`: the connection is to be closed.
    async fn next_request(
        c: &mut ClientConn,
        drain: &Drain,
        idle: Duration,
        nap: Duration,
    ) -> Option<bool> {
        expiring(drain, next_request_inner(c, drain, idle, nap)).await
    }

    async fn next_request_inner(
        c: &mut ClientConn,
        drain: &Drain,
        idle: Duration,
        nap: Duration,
    ) -> Option<bool> {
        match c.wait_request(drain, idle, nap).await {
            Wait::Ready => Some(false),
            Wait::Closed => None,
            Wait::Idle(deadline) => {
                c.hibernate();
                assert_eq!(
                    (c.buf.capacity(), c.out.capacity(), c.up_out.capacity()),
                    (0, 0, 0),
                    "a hibernating connection holds no buffers"
                );
                assert_eq!(c.request_id.capacity(), 0);
                if !c.wait_woken(drain, deadline).await {
                    return None;
                }
                assert!(
                    !c.buffered().is_empty(),
                    "woken with the request's first bytes"
                );
                assert!(c.out.capacity() >= INIT_READ_BUF, "write buffers are back");
                Some(true)
            }
        }
    }

    /// Requests sent just before, at and after the moment the wait hibernates, whole or in
    /// two pieces: every byte arrives in order, whether the read was cancelled or not.
    #[test]
    fn hibernating_waits_lose_no_bytes() {
        on_both_drivers(|| async {
            const NAP: Duration = Duration::from_millis(20);
            let delays_ms = [0u64, 5, 15, 19, 20, 21, 25, 40, 60, 19, 20, 21];
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                for (i, d) in delays_ms.iter().enumerate() {
                    std::thread::sleep(Duration::from_millis(*d));
                    let msg = format!("request {i:02};");
                    if i % 2 == 0 {
                        s.write_all(msg.as_bytes()).unwrap();
                    } else {
                        s.write_all(&msg.as_bytes()[..4]).unwrap();
                        std::thread::sleep(Duration::from_millis(3));
                        s.write_all(&msg.as_bytes()[4..]).unwrap();
                    }
                    // Wait for the echo, so each request is sent into an idle connection.
                    let mut ack = [0u8; 1];
                    std::io::Read::read_exact(&mut s, &mut ack).unwrap();
                }
            });
            let (stream, peer) = listener.accept().await.unwrap();
            let mut c = ClientConn::new(stream, peer);
            let drain = Drain::default();
            let mut napped = 0;
            for i in 0..delays_ms.len() {
                let want = format!("request {i:02};");
                let woke = next_request(&mut c, &drain, Duration::from_secs(5), NAP).await;
                napped += usize::from(woke.expect("the client is still there"));
                while c.buffered().len() < want.len() {
                    assert!(c.read_more(64 * 1024).await.unwrap() > 0);
                }
                assert_eq!(c.buffered(), want.as_bytes(), "round {i}");
                c.consume(want.len());
                c.compact();
                c.out.push(b'k');
                c.flush_out().await.unwrap();
            }
            assert!(napped > 0, "some waits hibernated");
            client.join().unwrap();
        });
    }

    /// A hibernating connection closes when its client does, at its keep-alive deadline, and
    /// when the worker drains.
    #[test]
    fn hibernating_connections_close_on_eof_deadline_and_drain() {
        on_both_drivers(|| async {
            const NAP: Duration = Duration::from_millis(10);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            // The client: closes after 50 ms; stays silent; stays silent.
            let client = std::thread::spawn(move || {
                let a = std::net::TcpStream::connect(addr).unwrap();
                let b = std::net::TcpStream::connect(addr).unwrap();
                let c = std::net::TcpStream::connect(addr).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                drop(a);
                std::thread::sleep(Duration::from_millis(300));
                drop((b, c));
            });
            let mut conns = Vec::new();
            for _ in 0..3 {
                let (stream, peer) = listener.accept().await.unwrap();
                conns.push(ClientConn::new(stream, peer));
            }
            let drain = Drain::default();
            let long = Duration::from_secs(5);
            assert_eq!(next_request(&mut conns[0], &drain, long, NAP).await, None);
            let short = Duration::from_millis(60);
            assert_eq!(next_request(&mut conns[1], &drain, short, NAP).await, None);
            let c = &mut conns[2];
            let Wait::Idle(deadline) = c.wait_request(&drain, long, NAP).await else {
                panic!("a silent client hibernates")
            };
            c.hibernate();
            let (woken, ()) = monoio::join!(c.wait_woken(&drain, deadline), async {
                monoio::time::sleep(Duration::from_millis(20)).await;
                drain.start();
            });
            assert!(!woken, "draining closes hibernating connections");
            client.join().unwrap();
        });
    }
}
