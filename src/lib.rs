//! shardgate: a thread-per-core io_uring AI inference gateway.
//!
//! # Layout
//!
//! Modules in the order a request meets them:
//!
//! - [`config`]: raw TOML → validated → immutable `config::Snapshot` (control thread), and
//!   what a reload applies.
//! - [`runtime`]: one pinned monoio worker per core, its listener, its inbox, drain on shutdown.
//! - [`server`]: the per-connection loop on a worker: keep-alive, pipelining, limits, timeouts.
//! - [`http`]: the HTTP/1.1 codec (the `shardgate-http` crate, re-exported): head parsing,
//!   RFC 9112 framing checks, path normalisation, bodies, writers.
//! - [`pipeline`]: one request through the stages below, in order.
//! - [`route`]: path trie → route; model catalog and version split.
//! - [`model`]: the JSON body's `model`/`stream` fields, read and rewritten.
//! - [`auth`]: JWT verification (ring), keys by `kid`, revocation.
//! - [`quota`]: per-core lease shards and the coordinator that grants leases.
//! - [`breaker`]: per-endpoint circuit breakers, retry budget and active health checks.
//! - [`proxy`]: upstream keep-alive pools, request forwarding, response relay (SSE-safe).
//! - [`metrics`]: per-worker counters and latency histograms; their merge.
//! - [`access_log`]: sampled JSON lines, buffered per worker, written by one thread.
//! - [`control`]: the control-plane threads: control (reload with settled-file watch and
//!   protection diff, revocations, weight edits), coordination (quota leases, breaker
//!   decisions) and remote (the quota's Redis I/O).
//! - [`inbox`]: the messages a worker's inbox carries and the fan-out handle to every worker.
//! - [`admin`]: the admin HTTP listener (/metrics, /stats, /config, /reload, /healthz,
//!   /readyz) on control-plane threads (one per connection, capped).
//! - [`demo`]: `shardgate demo`: mocks for `config/demo.toml`'s deployments, the printed commands.
//! - [`error`]: the gateway error that every stage folds into.
//! - [`http_config`]: the `[limits]` table and the header names config keys give, checked for
//!   the codec.
//!
//! # Workspace crates
//!
//! - `crates/http` (`shardgate-http`, here [`http`]): the one HTTP/1.1 codec in the tree. The
//!   data path, the admin API and its client, the health probe, the mock, the load generator
//!   and the tests all parse and frame HTTP with it.
//! - `crates/mock` (`shardgate-mock`): the OpenAI-compatible mock model backend; [`demo`] runs
//!   it in-process, `loadtest`'s `mock-upstream` binary as a process, the tests on loopback.
//! - `loadtest/`: the open-loop load generator and the comparison scripts.
//! - [`config_types`]: the config types every stage shares (problems, secrets, upstreams).
#![deny(unsafe_code)]

pub use shardgate_http as http;

pub mod access_log;
pub mod admin;
pub mod auth;
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
pub mod proxy;
pub mod quota;
pub mod route;
pub mod runtime;
pub mod server;
pub mod time;
pub mod worker;
