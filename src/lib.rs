//! shardgate: a thread-per-core io_uring AI inference gateway.
//!
//! # Layout
//!
//! One request, from accept to the last byte, meets these modules in this order; each depends
//! only on modules below it in this list, and on the leaves listed after it.
//!
//! 1. [`runtime`]: the engine. One pinned monoio worker thread per core, its `SO_REUSEPORT`
//!    listener, its inbox loop (control-plane messages as the worker's bell rings, periodic
//!    rounds), drain on shutdown.
//! 2. [`server`]: the per-connection loop. Reads a head (with [`http`]), hands the request to
//!    the pipeline, then answers its rejection, records metrics and the access log once per
//!    request, and keeps or closes the connection; idle connections hibernate.
//! 3. [`pipeline`]: the stages of one request, in order: route ([`route`]), auth ([`auth`]),
//!    the JSON body ([`model`]), the deployment split, quota ([`quota`]), the upstream head,
//!    forward, charge tokens. It returns a `RequestOutcome`; it never writes an error response
//!    itself.
//! 4. [`proxy`]: the last stage: complete the upstream head, attempts over the endpoints a
//!    circuit breaker admits ([`breaker`]) in the order the upstream's policy chooses
//!    ([`balance`]: round-robin, least requests, P2C, affinity; fed by the worker's load view),
//!    with connections from [`pool`]; stream the request body, relay the response read by read
//!    (SSE-safe) while reading token usage.
//!
//! Leaves any of them may use: [`conn`] (the client connection and its buffers, plain or
//! TLS), [`tls`] (rustls configs per worker and the adapter over monoio I/O), [`slot`]
//! (a request's head and buffers on loan), [`worker`] (everything one core owns), [`http`] (the
//! codec), [`error`] (the gateway error every stage folds into), [`config_types`],
//! [`http_config`] and [`ring_config`] (config types the stages and the runtime share), [`metrics`] and [`access_log`] (recording
//! handles), [`trace`] (W3C trace context, span records; its exporter thread is control
//! plane), [`inbox`] (the messages between the control plane and the workers, and the bell that
//! wakes a worker for them), [`time`].
//!
//! The control plane runs on threads of its own and reaches workers only through their inboxes:
//!
//! - [`config`]: raw TOML → validated → immutable `Snapshot`, and what a reload applies.
//! - [`control`]: the control thread (reload with a settled-file watch and a protection diff,
//!   revocations, weight edits), the coordination thread (quota leases, breaker decisions) and
//!   the remote thread (the quota's Redis I/O).
//! - [`admin`]: the admin HTTP API (/metrics, /stats, /config, /reload, /revoke, /healthz,
//!   /readyz), one thread per connection, capped; with a registry also /models, /splits,
//!   /rollouts, /audit.
//! - [`registry`]: the model registry: the SQLite store the control thread owns (schema,
//!   migrations, changes with their audit entries), its combination with the config file, and
//!   the progressive canary's steps and guards. Workers never touch it.
//! - [`upgrade`]: zero-downtime binary upgrade: the listening sockets handed to a new
//!   process over a unix socket, then a drain.
//! - [`demo`]: `shardgate demo`: mocks for `config/demo.toml`'s deployments, the printed
//!   commands.
//!
//! # Workspace crates
//!
//! - `crates/http` (`shardgate-http`, here [`http`]): the one HTTP/1.1 codec in the tree. The
//!   data path, the admin API and its client, the health probe, the mock, the load generator
//!   and the tests all parse and frame HTTP with it.
//! - `crates/mock` (`shardgate-mock`): the OpenAI-compatible mock model backend; [`demo`] runs
//!   it in-process, `loadtest`'s `mock-upstream` binary as a process, the tests on loopback.
//! - `loadtest/`: the open-loop load generator and the comparison scripts.
#![deny(unsafe_code)]

pub use shardgate_http as http;

pub mod access_log;
pub mod adapt;
pub mod admin;
pub mod auth;
pub mod balance;
pub mod breaker;
pub mod config;
pub mod config_types;
pub mod conn;
pub mod control;
pub mod demo;
pub mod error;
pub mod http_config;
pub mod inbox;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod pool;
pub mod proxy;
pub mod quota;
pub mod registry;
pub mod ring_config;
pub mod route;
pub mod runtime;
pub mod server;
pub mod slot;
pub mod spend;
pub mod time;
pub mod tls;
pub mod trace;
pub mod upgrade;
pub mod worker;
