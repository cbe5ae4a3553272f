//! TLS on both sides, with rustls on ring: the listener's certificates and client
//! certificates ([`server`]), upstream verification and client certificates ([`client`]),
//! and the adapter that drives a rustls connection over monoio's owned-buffer I/O
//! ([`session`]).
//!
//! A leaf: TLS wraps the connection types — the client connection ([`crate::conn`]) and the
//! pooled upstream connection ([`crate::pool`]) — so no stage of the pipeline or the proxy
//! sees it.
//!
//! # Why an adapter of our own
//!
//! `monoio-rustls` (0.4, the monoio project's crate) was evaluated: it builds on monoio 0.2
//! and rustls 0.23 without forcing a crypto provider, but it allocates two zeroed 16 KiB
//! buffers per connection at creation and keeps them for the connection's life (an idle
//! keep-alive connection here holds ~1 KB), it cannot wait for readiness without a buffer
//! (the connection loop's hibernation, [`crate::conn::ClientConn::wait_woken`]), its read
//! buffer is lost — and the stream then panics on the next read — when a read is dropped by
//! a timeout, and it has not changed since May 2024. [`session`] is ~200 lines over rustls's
//! sans-I/O API, with buffers taken on first use and the plain socket kept reachable for
//! readiness waits and the upstream pool's idle receive.
//!
//! # Per-worker state
//!
//! The snapshot carries validated material (DER bytes and settings); each worker builds its
//! own rustls configs from it when it applies a snapshot (see [`server`] and [`client`]), so
//! nothing a handshake touches is shared between cores. Session tickets are stateless and
//! derived per period from one secret ([`tickets`]), so a ticket issued by one worker resumes
//! on any other without shared memory.
//!
//! # Identity
//!
//! A verified client certificate's subject and alternative names ([`identity`]) are kept on
//! the client connection for the auth stage.

pub mod client;
pub mod files;
pub mod identity;
pub mod server;
pub mod session;
pub mod tickets;

use std::sync::Arc;

pub use client::{RawUpstreamTls, UpstreamTls};
pub use identity::PeerIdentity;
pub use server::{ClientAuth, RawServerTls, ServerTls};
pub use session::{HandshakeError, Session};

/// The client side of an upstream connection.
pub type UpSession = Session<rustls::ClientConnection>;
/// The server side of a client connection.
pub type DownSession = Session<rustls::ServerConnection>;

/// A worker's TLS configs, built from its snapshot (see the module docs).
#[derive(Default)]
pub struct WorkerTls {
    /// The listener's config, when `[server.tls]` is set.
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// Per snapshot upstream index: the config for its TLS endpoints.
    pub upstreams: Vec<Option<Arc<rustls::ClientConfig>>>,
}

impl WorkerTls {
    /// Builds this worker's configs for `server` and each upstream's `tls` (in snapshot
    /// order). A config that fails to build (only possible if the process lacks randomness
    /// or memory; the material was built once at load) is logged and left out: its
    /// connections fail their handshake.
    pub fn build<'a>(
        server: Option<&ServerTls>,
        upstreams: impl Iterator<Item = Option<&'a UpstreamTls>>,
    ) -> WorkerTls {
        let server = server.and_then(|s| {
            s.worker_config()
                .map_err(|e| eprintln!("shardgate: TLS listener config failed to build: {e}"))
                .ok()
        });
        let upstreams = upstreams
            .map(|u| {
                u.and_then(|t| {
                    t.worker_config()
                        .map_err(|e| {
                            eprintln!("shardgate: upstream TLS config failed to build: {e}")
                        })
                        .ok()
                })
            })
            .collect();
        WorkerTls { server, upstreams }
    }
}
