//! shardgate's HTTP/1.1 codec, hand-framed on httparse: the one parser, body framing and set
//! of writers that every HTTP speaker in the workspace uses (the gateway's data path, the mock
//! model backend, the admin API and its client, the health probe, the load generator, the
//! tests). The gateway re-exports it as `shardgate::http`.
//!
//! - [`parse`]: request head parsing and the RFC 9112 framing checks (what body follows).
//! - [`path`]: request path normalisation (what is routed is what is forwarded).
//! - [`response`]: response head parsing (what body follows, whether the connection is reusable).
//! - [`sse`]: the line ends of server-sent events (`\r\n`, `\n` or a lone `\r`).
//! - [`body`]: the one chunked transfer-coding decoder, and a body decoder for every framing,
//!   shared by requests and responses.
//! - [`write`](mod@write): response heads, chunks, and the JSON error responses every gateway stage ends in.
//! - [`blocking`]: one request or response read whole from a `std` socket, under a deadline
//!   (admin API and client, health probe, tests).
//! - [`limits`]: every size and time limit, as named constants; the gateway's `[limits]`
//!   table overrides them (`shardgate::http_config`).
//! - [`fields`]: which header names a config may set or read, and which values the gateway
//!   may write.
//!
//! Nothing here allocates per request: heads are parsed into a stack header array and the
//! results are offsets into the connection buffer.
#![deny(unsafe_code)]

pub mod blocking;
pub mod body;
pub mod fields;
pub mod limits;
pub mod parse;
pub mod path;
pub mod response;
pub mod sse;
pub mod write;

pub use limits::Limits;
pub use parse::{BodyFraming, ParseError, RequestHead};
