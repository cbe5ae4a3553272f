//! A new upstream connection: TCP connect and, for a TLS endpoint, the handshake, both within
//! the connect timeout.
//!
//! # Contract
//!
//! [`connect`] returns a connection ready for a request, or the [`UpstreamError`] to record:
//! `ConnectFailed`/`ConnectTimeout` as for plaintext (the timeout covers connect and
//! handshake together), `TlsHandshake` when the handshake failed — the certificate did not
//! verify (expired, wrong name, unknown issuer), the upstream refused ours, or the protocol
//! failed. A failed handshake is counted by reason (`upstream_tls_errors_total`) and, like a
//! failed connect, counts toward the endpoint's breaker and moves the attempt to the next
//! endpoint (nothing was sent).

use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::config_types::Endpoint;
use crate::error::UpstreamError;
use crate::metrics::counters::UPSTREAM_TLS_ERRORS;
use crate::pool::{PoolKey, UpConn};
use crate::worker::Worker;

/// The pool a connection to `ep` of upstream `up_idx` belongs to.
pub fn pool_key(ep: &Endpoint, up_idx: Option<usize>) -> PoolKey {
    PoolKey {
        addr: ep.addr,
        // Without an index (never for a snapshot's upstream) nothing may share it.
        tls_upstream: ep
            .tls
            .as_ref()
            .map(|_| up_idx.map_or(u32::MAX, |i| i as u32)),
    }
}

/// Connects to `ep` (see the module docs). `upstream` names it in metrics.
pub async fn connect(
    worker: &Worker,
    upstream: &str,
    up_idx: Option<usize>,
    ep: &Endpoint,
    timeout: Duration,
) -> Result<UpConn, UpstreamError> {
    let deadline = Instant::now() + timeout;
    let stream =
        match monoio::time::timeout_at(deadline.into(), TcpStream::connect_addr(ep.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(UpstreamError::ConnectFailed),
            Err(_) => return Err(UpstreamError::ConnectTimeout),
        };
    let mut up = UpConn::new(stream, pool_key(ep, up_idx));
    let Some(name) = &ep.tls else {
        return Ok(up);
    };
    let config = up_idx.and_then(|i| worker.tls.borrow().upstreams.get(i).cloned().flatten());
    let tls_error = |reason: &str| {
        worker
            .metrics
            .borrow_mut()
            .counters
            .add(&UPSTREAM_TLS_ERRORS, &[upstream, reason], 1);
        UpstreamError::TlsHandshake
    };
    let Some(config) = config else {
        return Err(tls_error("no_config"));
    };
    let conn =
        rustls::ClientConnection::new(config, name.clone()).map_err(|_| tls_error("setup"))?;
    match monoio::time::timeout_at(deadline.into(), up.start_tls(conn)).await {
        Ok(Ok(())) => Ok(up),
        Ok(Err(e)) => Err(tls_error(crate::tls::client::failure_reason(&e))),
        Err(_) => {
            tls_error("timeout");
            Err(UpstreamError::ConnectTimeout)
        }
    }
}
