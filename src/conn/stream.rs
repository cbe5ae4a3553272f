//! The client connection's byte stream: a plain socket, or TLS over one. Both read into and
//! write from owned buffers, so the connection loop and every stage use one API and never
//! see which it is.

use std::io;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::tls::{DownSession, PeerIdentity};

/// A client connection's stream.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a rustls connection is large, and most connections of a mixed deployment may
    /// be plain.
    Tls(Box<TlsStream>),
}

/// A TLS connection whose handshake is complete.
pub struct TlsStream {
    pub tcp: TcpStream,
    pub session: DownSession,
    /// The verified client certificate's identity (mTLS), if one was presented.
    pub identity: Option<PeerIdentity>,
}

impl Stream {
    /// Reads into the spare capacity of `buf` (which has some). `Ok(0)`: the peer closed.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Plain(s) => {
                let len = buf.len();
                let (res, slice) = s.read(buf.slice_mut(len..)).await;
                (res, slice.into_inner())
            }
            Stream::Tls(t) => {
                let mut buf = buf;
                let res = t.session.read(&mut t.tcp, &mut buf).await;
                (res, buf)
            }
        }
    }

    /// Writes all of `buf`; returns how many bytes of it were written (all, on success).
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(t) => {
                let res = t.session.write_all(&mut t.tcp, &buf).await;
                (res.map(|()| buf.len()), buf)
            }
        }
    }

    /// The socket (for readiness waits).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.tcp,
        }
    }

    /// Received bytes are waiting inside the TLS layer: reading will not wait for the socket.
    pub fn pending(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => !t.session.is_quiet(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The verified client certificate's identity.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => t.identity.as_ref(),
        }
    }
}
