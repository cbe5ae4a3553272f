//! Per-worker upstream keep-alive pools, one per endpoint address, and the count of request
//! bodies streaming to each upstream (see [`crate::proxy::inbound`]).
//!
//! # Contract
//!
//! [`Pools::take`] returns an idle connection that is younger than the idle timeout, has
//! served fewer than the per-connection request limit, and on which nothing arrived while it
//! sat idle: neither EOF (the upstream closed it) nor a byte. A byte after a complete
//! response means the upstream sent more than the response (a second response, a body after
//! a 1xx/204/304 or on a HEAD response, bytes past a `Content-Length` body or after the last
//! chunk); whatever it sends next would be read as the *next* response on the connection —
//! possibly another client's — and every later response would be off by one. Such a
//! connection is retired, never reused. [`Pools::put`] refuses, for the same reason, a
//! connection whose read buffer still holds bytes past the end of the response.
//!
//! # How an idle connection is checked
//!
//! [`Pools::take`] peeks at a connection before handing it out: one non-blocking
//! `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte, on both io drivers. Only `EAGAIN` (nothing to
//! read) lets it go; a byte (the upstream is out of step), EOF (it closed the connection) or
//! a socket error retires it. Nothing is posted on an idle connection, so nothing has to be
//! cancelled when it is reused, and a reuse allocates nothing.
//!
//! Until 2026-12-01 the io_uring driver kept a receive posted on every idle connection and
//! cancelled it on reuse, the cancel queued before the request's write. That cost a receive
//! SQE (with its poll arming), a cancel SQE and their two completions per reuse, plus the
//! `Rc` monoio's `Canceller::cancel` allocates; the peek costs one kernel entry. Measured
//! on the same binary, the peek spends about 1 µs less CPU per proxied request (README,
//! "Allocations per request").
//!
//! # Residual race
//!
//! HTTP/1.1 responses carry no request id. Bytes an upstream sends after the peek — while
//! the request's write waits for the ring's next submission (the same worker loop round,
//! microseconds), or while the request is on its way — cannot be told apart from that
//! request's response: that one response may be wrong. The connection is still retired
//! right after it, since the real response then arrives as bytes left over in the buffer or
//! while the connection is idle. Only an upstream that over-sends can cause this, and no
//! check on the client side can close the part of the window that is on the wire.
//!
//! # TLS
//!
//! A TLS connection ([`UpConn::tls`]) is checked the same way, on its socket: any record that
//! arrived while it was idle — a `close_notify`, a session ticket, a key update, data —
//! retires it, since HTTP/1.1 gives an idle upstream nothing to send. `put` also refuses a
//! connection whose TLS layer holds received bytes. TLS connections are pooled apart from
//! plain ones and per upstream ([`PoolKey`]): the SNI, the verified name and the client
//! certificate belong to the upstream's settings, so a connection made for one upstream never
//! serves another; a reload drops them (the settings may have changed).
//!
//! # Allocation
//!
//! Per connection: the cell the read and write halves share. Nothing per reuse.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use monoio::BufResult;
use nix::sys::socket::{recv, MsgFlags};

use crate::config::Snapshot;
use crate::tls::session::Halves;
use crate::tls::UpSession;

/// The read side of an upstream connection.
type ReadHalf = OwnedReadHalf<TcpStream>;

/// Initial capacity of an upstream connection's read buffer.
pub const UPSTREAM_READ_BUF: usize = 16 * 1024;

/// Which pool a connection belongs to: its endpoint address and, for TLS, the upstream whose
/// settings made it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    /// The snapshot index of the upstream a TLS connection was made for; `None`: plain.
    pub tls_upstream: Option<u32>,
}

impl From<SocketAddr> for PoolKey {
    fn from(addr: SocketAddr) -> Self {
        PoolKey {
            addr,
            tls_upstream: None,
        }
    }
}

/// An upstream connection with its read buffer.
pub struct UpConn {
    rd: ReadHalf,
    wr: OwnedWriteHalf<TcpStream>,
    fd: RawFd,
    pub key: PoolKey,
    /// The TLS session, once its handshake completed ([`UpConn::start_tls`]).
    tls: Option<Box<UpSession>>,
    pub buf: Vec<u8>,
    /// Requests completed on this connection.
    pub served: u32,
    pub idle_since: Instant,
    /// Taken from the pool (as opposed to freshly connected).
    pub reused: bool,
}

impl UpConn {
    pub fn new(stream: TcpStream, key: impl Into<PoolKey>) -> Self {
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let (rd, wr) = stream.into_split();
        Self {
            rd,
            wr,
            fd,
            key: key.into(),
            tls: None,
            buf: Vec::with_capacity(UPSTREAM_READ_BUF),
            served: 0,
            idle_since: Instant::now(),
            reused: false,
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.key.addr
    }

    /// Runs the TLS handshake of `conn` on this (fresh) connection; from then on it reads and
    /// writes through TLS. The caller bounds it with a timeout.
    pub async fn start_tls(
        &mut self,
        conn: rustls::ClientConnection,
    ) -> Result<(), crate::tls::HandshakeError> {
        let mut session = Box::new(UpSession::new(conn));
        let mut wire = Halves {
            rd: &mut self.rd,
            wr: &mut self.wr,
        };
        session.handshake(&mut wire).await?;
        self.tls = Some(session);
        Ok(())
    }

    /// Writes all of `buf` to the upstream.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        match self.tls.as_mut() {
            None => self.wr.write_all(buf).await,
            Some(t) => {
                let mut wire = Halves {
                    rd: &mut self.rd,
                    wr: &mut self.wr,
                };
                let res = t.write_all(&mut wire, &buf).await;
                (res.map(|()| buf.len()), buf)
            }
        }
    }

    /// Reads more bytes onto the end of `buf`, first making room for at least `min_spare`
    /// (growing by `grow`). `Ok(0)` is EOF.
    pub async fn read_more(&mut self, min_spare: usize, grow: usize) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < min_spare {
            self.buf.reserve(grow.max(min_spare));
        }
        if let Some(t) = self.tls.as_mut() {
            let mut wire = Halves {
                rd: &mut self.rd,
                wr: &mut self.wr,
            };
            return t.read(&mut wire, &mut self.buf).await;
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self.rd.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        res
    }

    /// Nothing received waits in the TLS layer (always true for plain connections).
    fn tls_quiet(&mut self) -> bool {
        self.tls.as_mut().is_none_or(|t| t.is_quiet())
    }
}

/// Upstream connections of one worker: idle ones by endpoint, and the streamed uploads in
/// flight by upstream name.
#[derive(Default)]
pub struct Pools {
    /// Keyed by endpoints from the config (no client chooses them): a fixed-seed foldhash,
    /// looked up twice per proxied request.
    idle: HashMap<PoolKey, Vec<UpConn>, foldhash::fast::FixedState>,
    uploads: HashMap<Box<str>, u32>,
}

impl Pools {
    /// The most recently used idle connection of pool `key` on which nothing arrived, if any.
    pub fn take(
        &mut self,
        key: impl Into<PoolKey>,
        idle_timeout: Duration,
        max_requests: u32,
    ) -> Option<UpConn> {
        let list = self.idle.get_mut(&key.into())?;
        let now = Instant::now();
        // Oldest connections sit at the front; drop the expired ones.
        let expired = list
            .iter()
            .take_while(|c| now.duration_since(c.idle_since) >= idle_timeout)
            .count();
        list.drain(..expired);
        while let Some(mut c) = list.pop() {
            if c.served < max_requests && nothing_to_read(c.fd) {
                c.reused = true;
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange; false if it was retired instead
    /// (bytes past the end of the response are buffered, here or in its TLS layer).
    pub fn put(&mut self, mut c: UpConn, max_idle: usize) -> bool {
        if !c.buf.is_empty() || !c.tls_quiet() {
            return false;
        }
        c.idle_since = Instant::now();
        let list = self.idle.entry(c.key).or_default();
        if list.len() >= max_idle {
            list.remove(0);
        }
        list.push(c);
        true
    }

    /// Counts a streamed upload to `upstream` unless `cap` are in flight already.
    pub fn begin_upload(&mut self, upstream: &str, cap: u32) -> bool {
        match self.uploads.get_mut(upstream) {
            Some(n) if *n >= cap => false,
            Some(n) => {
                *n += 1;
                true
            }
            None if cap == 0 => false,
            None => {
                self.uploads.insert(upstream.into(), 1);
                true
            }
        }
    }

    /// Ends an upload counted by [`begin_upload`](Self::begin_upload).
    pub fn end_upload(&mut self, upstream: &str) {
        if let Some(n) = self.uploads.get_mut(upstream) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.uploads.remove(upstream);
            }
        }
    }

    /// Streamed uploads to `upstream` in flight on this worker.
    pub fn uploads(&self, upstream: &str) -> u32 {
        self.uploads.get(upstream).copied().unwrap_or(0)
    }

    /// Keeps pools only for plain endpoints the new snapshot still uses (TLS connections
    /// were made with the old snapshot's settings; see the module docs).
    pub fn retain_endpoints(&mut self, snap: &Snapshot) {
        self.idle.retain(|key, _| {
            key.tls_upstream.is_none()
                && snap.upstreams.iter().any(|u| {
                    u.endpoints
                        .iter()
                        .any(|e| e.addr == key.addr && e.tls.is_none())
                })
        });
    }

    pub fn clear(&mut self) {
        self.idle.clear();
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

/// Non-blocking peek: an idle connection must have nothing to read. EOF means the upstream
/// closed it; a byte means it is out of step. Either way it is unusable.
fn nothing_to_read(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    matches!(
        recv(fd, &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Err(nix::errno::Errno::EAGAIN)
    )
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// Runs `scenario(uring)` on the io_uring driver and on the legacy driver, as workers do.
    fn on_both_drivers<F: Future<Output = ()>>(scenario: impl Fn(bool) -> F) {
        if monoio::utils::detect_uring() {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .expect("io_uring runtime")
                .block_on(scenario(true));
        } else {
            eprintln!("io_uring unavailable here: only the legacy driver is exercised");
        }
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("legacy runtime")
            .block_on(scenario(false));
    }

    /// A pooled-to-be connection and the upstream's end of it.
    async fn connected() -> (UpConn, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = TcpStream::connect_addr(addr).await.unwrap();
        let (peer, _) = listener.accept().unwrap();
        (UpConn::new(stream, addr), peer)
    }

    const IDLE: Duration = Duration::from_secs(60);

    /// What a misbehaving upstream may do to a connection after answering on it.
    #[derive(Debug, Clone, Copy)]
    enum After {
        Send(&'static [u8]),
        Eof,
    }

    const MISBEHAVIOURS: [After; 4] = [
        After::Send(b"\n"),
        After::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nother"),
        After::Send(b"late body"),
        After::Eof,
    ];

    impl After {
        fn act(self, peer: &mut std::net::TcpStream) {
            match self {
                After::Send(b) => peer.write_all(b).unwrap(),
                After::Eof => peer.shutdown(std::net::Shutdown::Write).unwrap(),
            }
        }
    }

    #[test]
    fn what_arrives_while_idle_retires_the_connection() {
        for what in MISBEHAVIOURS {
            on_both_drivers(|uring| async move {
                let mut pools = Pools::default();
                let (c, mut peer) = connected().await;
                let addr = c.addr();
                assert!(pools.put(c, 8));
                what.act(&mut peer);
                // The runtime parks meanwhile: nothing of it is needed for the peek.
                monoio::time::sleep(Duration::from_millis(30)).await;
                assert!(
                    pools.take(addr, IDLE, 100).is_none(),
                    "{what:?} (io_uring: {uring})"
                );
                assert_eq!(pools.idle_count(), 0);
            });
        }
    }

    /// Bytes already waiting when the connection is pooled and taken back in the same loop
    /// round (the thread blocked, nothing submitted or reaped in between): the peek needs no
    /// ring round, so the connection is refused outright and its bytes are never read.
    #[test]
    fn bytes_waiting_in_the_same_round_are_caught() {
        for what in MISBEHAVIOURS {
            on_both_drivers(|uring| async move {
                let mut pools = Pools::default();
                let (c, mut peer) = connected().await;
                let addr = c.addr();
                what.act(&mut peer);
                // Blocks the thread without parking the runtime: the bytes arrive, no
                // SQE is submitted.
                std::thread::sleep(Duration::from_millis(30));
                assert!(pools.put(c, 8));
                assert!(
                    pools.take(addr, IDLE, 100).is_none(),
                    "{what:?} (io_uring: {uring}): the peek refuses it"
                );
                assert_eq!(pools.idle_count(), 0);
            });
        }
    }

    /// Of several idle connections to one endpoint, the ones that went out of step are passed
    /// over and dropped; a quiet one is still handed out.
    #[test]
    fn a_stale_connection_is_skipped_for_a_quiet_one() {
        for what in MISBEHAVIOURS {
            on_both_drivers(|uring| async move {
                let mut pools = Pools::default();
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let mut peers = Vec::new();
                for _ in 0..3 {
                    let stream = TcpStream::connect_addr(addr).await.unwrap();
                    let (peer, _) = listener.accept().unwrap();
                    peers.push(peer);
                    assert!(pools.put(UpConn::new(stream, addr), 8));
                }
                // The two most recently pooled (taken first) go out of step.
                what.act(&mut peers[1]);
                what.act(&mut peers[2]);
                std::thread::sleep(Duration::from_millis(30));
                let mut c = pools.take(addr, IDLE, 100).expect("the quiet one");
                assert!(c.reused);
                assert_eq!(pools.idle_count(), 0, "the stale ones are gone");
                // It is the first one: what is written on it reaches that peer.
                let (res, _) = c.write_all(b"ping".to_vec()).await;
                res.unwrap();
                let mut got = [0u8; 4];
                peers[0].read_exact(&mut got).unwrap();
                assert_eq!(&got, b"ping", "{what:?} (io_uring: {uring})");
            });
        }
    }

    #[test]
    fn a_quiet_connection_is_reused_and_reads_its_response() {
        on_both_drivers(|_| async move {
            let mut pools = Pools::default();
            let (mut c, mut peer) = connected().await;
            let addr = c.addr();
            for round in 0..4 {
                assert!(pools.put(c, 8));
                // Odd rounds take it back in the same loop round.
                if round % 2 == 0 {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
                c = pools.take(addr, IDLE, 100).expect("still in step");
                assert!(c.reused);
                let (res, _) = c.write_all(b"ping".to_vec()).await;
                res.unwrap();
                let mut got = [0u8; 4];
                peer.read_exact(&mut got).unwrap();
                assert_eq!(&got, b"ping");
                peer.write_all(b"pong").unwrap();
                while c.buf.len() < 4 {
                    assert!(c.read_more(1024, UPSTREAM_READ_BUF).await.unwrap() > 0);
                }
                assert_eq!(c.buf, b"pong");
                c.buf.clear();
            }
        });
    }

    #[test]
    fn bytes_left_past_the_response_keep_a_connection_out_of_the_pool() {
        on_both_drivers(|_| async move {
            let mut pools = Pools::default();
            let (mut c, _peer) = connected().await;
            let addr = c.addr();
            c.buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            assert!(!pools.put(c, 8));
            assert_eq!(pools.idle_count(), 0);
            assert!(pools.take(addr, IDLE, 100).is_none());
        });
    }

    #[test]
    fn uploads_are_capped_per_upstream() {
        let mut pools = Pools::default();
        assert!(pools.begin_upload("a", 2));
        assert!(pools.begin_upload("a", 2));
        assert!(!pools.begin_upload("a", 2), "the third is over the cap");
        assert!(
            pools.begin_upload("b", 2),
            "another upstream has its own count"
        );
        pools.end_upload("a");
        assert_eq!(pools.uploads("a"), 1);
        assert!(pools.begin_upload("a", 2));
        assert!(!pools.begin_upload("c", 0), "0 streams nothing");
        for _ in 0..2 {
            pools.end_upload("a");
        }
        pools.end_upload("b");
        assert_eq!((pools.uploads("a"), pools.uploads("b")), (0, 0));
        assert!(
            pools.uploads.is_empty(),
            "finished upstreams leave no entry"
        );
    }
}
