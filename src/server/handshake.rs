//! The TLS listener's handshake: a connection accepted on the TLS listener becomes a
//! [`ClientConn`] over TLS, or is closed.
//!
//! # Contract
//!
//! [`accept_tls`] completes the handshake within `server.tls.handshake_timeout_ms` (a client
//! that stalls mid-handshake — slowloris — is cut at the deadline) with this worker's server
//! config as it is at accept: a certificate reload reaches the next connection, never one
//! that is open. Completed handshakes are counted by kind (`tls_handshakes_total{kind="full"
//! |"resumed"}`), failures by reason (`tls_handshake_failures_total{reason}`: `timeout`,
//! `closed`, `protocol_version`, `no_client_certificate`, `bad_client_certificate`,
//! `client_alert`, `malformed`, ...). A failed handshake gets the TLS alert rustls chose and
//! no HTTP response.

use std::net::SocketAddr;

use monoio::net::TcpStream;
use rustls::HandshakeKind;

use crate::conn::{ClientConn, Stream, TlsStream};
use crate::metrics::counters::{TLS_HANDSHAKES, TLS_HANDSHAKE_FAILURES};
use crate::tls::{DownSession, PeerIdentity};
use crate::worker::Worker;

/// Runs the handshake on `tcp` (see the module docs). `None`: it failed (counted).
pub async fn accept_tls(
    worker: &Worker,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<ClientConn> {
    let fail = |reason: &str| {
        worker
            .metrics
            .borrow_mut()
            .counters
            .add(&TLS_HANDSHAKE_FAILURES, &[reason], 1);
    };
    let (config, timeout) = {
        let snap = worker.current();
        let timeout = snap.server.tls.as_ref().map(|t| t.handshake_timeout);
        (worker.tls.borrow().server.clone(), timeout)
    };
    let (Some(config), Some(timeout)) = (config, timeout) else {
        fail("no_config");
        return None;
    };
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        fail("setup");
        return None;
    };
    let mut session = DownSession::new(conn);
    match monoio::time::timeout(timeout, session.handshake(&mut tcp)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            fail(crate::tls::server::failure_reason(&e));
            return None;
        }
        Err(_) => {
            fail("timeout");
            return None;
        }
    }
    let kind = match session.conn().handshake_kind() {
        Some(HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    worker
        .metrics
        .borrow_mut()
        .counters
        .add(&TLS_HANDSHAKES, &[kind], 1);
    let identity = session
        .conn()
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| PeerIdentity::from_der(leaf));
    let stream = Stream::Tls(Box::new(TlsStream {
        tcp,
        session,
        identity,
    }));
    Some(ClientConn::with_stream(stream, peer))
}
