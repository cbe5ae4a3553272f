//! Per-worker upstream keep-alive pools, one per endpoint address.
//!
//! # Contract
//!
//! [`Pools::take`] returns an idle connection that is younger than the idle timeout, has
//! served fewer than the per-connection request limit, and — checked with a non-blocking
//! `MSG_PEEK` once it has been idle a moment ([`PEEK_AFTER_IDLE_UNSAFE`], or
//! [`PEEK_AFTER_IDLE`] for replayable requests) — has not been closed by the upstream while
//! idle. A connection the upstream
//! closed while idle is dropped here, before any request bytes are written to it, so a
//! non-idempotent request is never sent on a connection known to be dead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use nix::sys::socket::{recv, MsgFlags};

use crate::config::Snapshot;

/// Idle time below which a pooled connection is reused without the liveness peek, for a
/// request that can be replayed should the connection be dead after all.
pub const PEEK_AFTER_IDLE: Duration = Duration::from_millis(100);
/// Idle time below which any request reuses a pooled connection without the peek: one syscall
/// per request saved under load, at the risk of one 502 if an upstream closed a connection
/// within this window of answering on it without saying `Connection: close`.
pub const PEEK_AFTER_IDLE_UNSAFE: Duration = Duration::from_millis(1);

/// Initial capacity of an upstream connection's read buffer.
pub const UPSTREAM_READ_BUF: usize = 16 * 1024;

/// An upstream connection with its read buffer.
pub struct UpConn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub buf: Vec<u8>,
    /// Requests completed on this connection.
    pub served: u32,
    pub idle_since: Instant,
    /// Taken from the pool (as opposed to freshly connected).
    pub reused: bool,
}

impl UpConn {
    pub fn new(stream: TcpStream, addr: SocketAddr) -> Self {
        let _ = stream.set_nodelay(true);
        Self {
            stream,
            addr,
            buf: Vec::with_capacity(UPSTREAM_READ_BUF),
            served: 0,
            idle_since: Instant::now(),
            reused: false,
        }
    }
}

#[derive(Default)]
pub struct Pools {
    idle: HashMap<SocketAddr, Vec<UpConn>>,
}

impl Pools {
    /// The most recently used live idle connection to `addr`, if any.
    pub fn take(
        &mut self,
        addr: SocketAddr,
        idle_timeout: Duration,
        max_requests: u32,
        replayable: bool,
    ) -> Option<UpConn> {
        let list = self.idle.get_mut(&addr)?;
        let now = Instant::now();
        // Oldest connections sit at the front; drop the expired ones.
        let expired = list
            .iter()
            .take_while(|c| now.duration_since(c.idle_since) >= idle_timeout)
            .count();
        list.drain(..expired);
        while let Some(mut c) = list.pop() {
            // Upstream keep-alive timers run in seconds, and a server that closes right after a
            // response must say `Connection: close` (which keeps it out of the pool). So a
            // connection idle for a moment is alive unless the upstream misbehaves; the peek
            // is skipped there: under PEEK_AFTER_IDLE for a request the caller can replay on a
            // fresh connection (idempotent, held whole), under PEEK_AFTER_IDLE_UNSAFE for the
            // rest (a connection reused back to back under load).
            let idle = now.duration_since(c.idle_since);
            let fresh = idle < PEEK_AFTER_IDLE_UNSAFE || (replayable && idle < PEEK_AFTER_IDLE);
            if c.served < max_requests && (fresh || is_alive(&c.stream)) {
                c.reused = true;
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange.
    pub fn put(&mut self, mut c: UpConn, max_idle: usize) {
        c.buf.clear();
        c.idle_since = Instant::now();
        let list = self.idle.entry(c.addr).or_default();
        if list.len() >= max_idle {
            list.remove(0);
        }
        list.push(c);
    }

    /// Keeps pools only for endpoints the new snapshot still uses.
    pub fn retain_endpoints(&mut self, snap: &Snapshot) {
        self.idle.retain(|addr, _| {
            snap.upstreams
                .iter()
                .any(|u| u.endpoints.iter().any(|e| e.addr == *addr))
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
/// closed it; unexpected bytes mean it is out of sync. Either way it is unusable.
fn is_alive(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        recv(
            stream.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}
