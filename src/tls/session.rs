//! The adapter: a rustls connection (client or server side) driven over monoio's owned-buffer
//! reads and writes.
//!
//! rustls is sans-I/O: it takes ciphertext with `read_tls`, hands out plaintext from
//! `reader()`, takes plaintext with `writer()` and gives ciphertext back with `write_tls`. A
//! [`Session`] owns the connection state and two ciphertext buffers, and moves bytes between
//! them and a [`Wire`] (the TCP socket, whole or split) with monoio's `(result, buf)` calls.
//!
//! # Contract
//!
//! - [`Session::handshake`] runs the handshake to completion (the caller bounds it with a
//!   timeout). On a TLS error the alert rustls prepared is sent before the error returns.
//! - [`Session::read`] appends plaintext to a `Vec` (at most its spare capacity, which must be
//!   non-zero). `Ok(0)`: the peer sent `close_notify`. A TCP EOF without it reads as
//!   `UnexpectedEof`, so a truncated close-delimited body is never taken for a complete one.
//! - [`Session::write_all`] encrypts and sends all of a plaintext slice.
//! - [`Session::is_quiet`]: nothing received is waiting (neither plaintext in rustls nor
//!   ciphertext in our buffer). A connection that is not quiet must not wait for socket
//!   readiness (the bytes are already here) and an upstream one must not be pooled.
//!
//! # Cancellation
//!
//! A read or write dropped before it finished (a timeout) loses its buffer with the
//! operation, and may leave a record half-sent or half-read: every such path closes the
//! connection, as for plaintext (see [`crate::conn`]). Waiting for readiness
//! ([`crate::conn::ClientConn::wait_woken`]) consumes nothing and is safe to drop.
//!
//! # Memory and allocation
//!
//! The receive buffer is allocated on the first read and reused; the send buffer likewise.
//! rustls keeps its own deframing and plaintext buffers per connection. Nothing is allocated
//! per read or write in steady state.

use std::future::Future;
use std::io::{self, BufRead, Write};
use std::ops::DerefMut;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;
use rustls::{ConnectionCommon, SideData};

/// Capacity of the ciphertext receive buffer: one largest TLS record with its header and
/// expansion (RFC 8446 §5.2: 2^14 + 256, plus the 5-byte header).
pub const TLS_RECV_BUF: usize = 16 * 1024 + 256 + 5;

/// Most plaintext handed to rustls per `writer()` call; its send buffer holds about this.
const WRITE_CHUNK: usize = 64 * 1024;

/// The byte transport under a session: owned-buffer receive and send.
pub trait Wire {
    /// Reads into the spare capacity of `buf` (which has some). `Ok(0)`: EOF.
    fn recv(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)>;
    /// Writes all of `buf`.
    fn send_all(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;
}

impl Wire for TcpStream {
    async fn recv(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let (res, slice) = self.read(buf.slice_mut(len..)).await;
        (res, slice.into_inner())
    }

    async fn send_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, buf) = self.write_all(buf).await;
        (res.map(|_| ()), buf)
    }
}

/// A socket split into halves (the upstream pool's connections, see [`crate::pool`]).
pub struct Halves<'a> {
    pub rd: &'a mut OwnedReadHalf<TcpStream>,
    pub wr: &'a mut OwnedWriteHalf<TcpStream>,
}

impl Wire for Halves<'_> {
    async fn recv(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let (res, slice) = self.rd.read(buf.slice_mut(len..)).await;
        (res, slice.into_inner())
    }

    async fn send_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, buf) = self.wr.write_all(buf).await;
        (res.map(|_| ()), buf)
    }
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer closed or the socket failed.
    Io(io::Error),
    /// The TLS protocol failed (the alert, if any, was sent).
    Tls(rustls::Error),
}

/// A rustls connection with its ciphertext buffers (see the module docs).
pub struct Session<C> {
    conn: C,
    /// Received ciphertext; `rx[rx_pos..]` is not yet handed to rustls.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Ciphertext staged for one send.
    tx: Vec<u8>,
}

impl<C, S> Session<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    pub fn new(conn: C) -> Self {
        Self {
            conn,
            rx: Vec::new(),
            rx_pos: 0,
            tx: Vec::new(),
        }
    }

    /// The rustls connection (negotiated parameters, peer certificates).
    pub fn conn(&self) -> &C {
        &self.conn
    }

    /// Runs the handshake to completion (see the module docs).
    pub async fn handshake<W: Wire>(&mut self, wire: &mut W) -> Result<(), HandshakeError> {
        loop {
            self.flush(wire).await.map_err(HandshakeError::Io)?;
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            if self.rx_pos == self.rx.len()
                && self.recv(wire).await.map_err(HandshakeError::Io)? == 0
            {
                return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            if let Err(e) = self.feed() {
                // rustls queued the matching alert: send it, best effort.
                let _ = self.flush(wire).await;
                return Err(match e {
                    Fed::Tls(e) => HandshakeError::Tls(e),
                    Fed::Io(e) => HandshakeError::Io(e),
                });
            }
        }
    }

    /// Appends plaintext to `dst` (see the module docs).
    pub async fn read<W: Wire>(&mut self, wire: &mut W, dst: &mut Vec<u8>) -> io::Result<usize> {
        debug_assert!(dst.capacity() > dst.len());
        loop {
            match self.conn.reader().fill_buf() {
                Ok(chunk) => {
                    let n = chunk.len().min(dst.capacity() - dst.len());
                    dst.extend_from_slice(&chunk[..n]);
                    self.conn.reader().consume(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.rx_pos == self.rx.len() && self.recv(wire).await? == 0 {
                // Tell rustls about the EOF; the reader then says how the peer closed.
                let _ = self.conn.read_tls(&mut &[][..]);
                continue;
            }
            let fed = self.feed();
            // Key updates and alerts rustls answers on its own.
            self.flush(wire).await?;
            match fed {
                Ok(()) => {}
                Err(Fed::Tls(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                Err(Fed::Io(e)) => return Err(e),
            }
        }
    }

    /// Encrypts and sends all of `data`.
    pub async fn write_all<W: Wire>(&mut self, wire: &mut W, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(WRITE_CHUNK) {
            self.conn.writer().write_all(chunk)?;
            self.flush(wire).await?;
        }
        Ok(())
    }

    /// Sends `close_notify` (best effort; the caller closes the socket next).
    pub async fn close<W: Wire>(&mut self, wire: &mut W) {
        self.conn.send_close_notify();
        let _ = self.flush(wire).await;
    }

    /// Nothing received is waiting to be read (see the module docs).
    pub fn is_quiet(&mut self) -> bool {
        self.rx_pos == self.rx.len()
            && matches!(self.conn.reader().fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends everything rustls has queued.
    async fn flush<W: Wire>(&mut self, wire: &mut W) -> io::Result<()> {
        while self.conn.wants_write() {
            self.tx.clear();
            self.conn.write_tls(&mut self.tx)?;
            let (res, buf) = wire.send_all(std::mem::take(&mut self.tx)).await;
            self.tx = buf;
            res?;
        }
        Ok(())
    }

    /// Receives ciphertext into the (empty) receive buffer. `Ok(0)`: EOF.
    async fn recv<W: Wire>(&mut self, wire: &mut W) -> io::Result<usize> {
        let mut rx = std::mem::take(&mut self.rx);
        rx.clear();
        if rx.capacity() < TLS_RECV_BUF {
            rx.reserve(TLS_RECV_BUF);
        }
        self.rx_pos = 0;
        let (res, rx) = wire.recv(rx).await;
        self.rx = rx;
        res
    }

    /// Hands buffered ciphertext to rustls while it takes it, processing each piece.
    fn feed(&mut self) -> Result<(), Fed> {
        while self.rx_pos < self.rx.len() && self.conn.wants_read() {
            let n = self
                .conn
                .read_tls(&mut &self.rx[self.rx_pos..])
                .map_err(Fed::Io)?;
            self.rx_pos += n;
            self.conn.process_new_packets().map_err(Fed::Tls)?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// How feeding ciphertext failed.
enum Fed {
    Io(io::Error),
    Tls(rustls::Error),
}

impl HandshakeError {
    /// The rustls error, if the protocol failed.
    pub fn tls(&self) -> Option<&rustls::Error> {
        match self {
            HandshakeError::Tls(e) => Some(e),
            HandshakeError::Io(_) => None,
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
        }
    }
}
