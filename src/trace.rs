//! Distributed tracing: W3C Trace Context in, OpenTelemetry spans out (OTLP/HTTP protobuf).
//!
//! - [`context`]: `traceparent` / `tracestate` read, checked and written.
//! - [`tracer`]: each worker's ids, sampling decision and batch of finished spans.
//! - [`record`]: the fixed-size span records the workers hand over.
//! - [`export`]: the exporter thread (bounded queue, batches, drops counted); [`otlp`]: records
//!   to the OTLP protobuf request.
//! - [`config`]: the `[tracing]` section.
//!
//! # Contract
//!
//! With `[tracing]` configured, every request takes part in a trace: a caller's valid
//! `traceparent` is continued (and its sampled flag followed), otherwise a new trace starts,
//! sampled at `sample_ratio`. The upstream receives a `traceparent` of the gateway's own:
//! its parent is the client span of that attempt when the request is sampled (each attempt
//! names its own), and the server span otherwise. The caller's `traceparent` and
//! `tracestate` are never forwarded as received: a `tracestate` goes on only after a valid
//! `traceparent` and only when it is valid itself. Without `[tracing]` the gateway is not a
//! trace participant and both headers pass through untouched.
//!
//! A sampled request yields one SERVER span (recorded by the connection loop from the
//! request's outcome, with the quota and breaker decisions as events) and one CLIENT span per
//! upstream attempt (recorded by the proxy, with the first byte and, for a streamed body, the
//! first chunk as events). The access log carries each request's `trace_id`.
//!
//! # Performance
//!
//! Nothing on a worker locks, blocks or allocates per request: an unsampled request costs a
//! header lookup, two random draws and the `traceparent` line; a sampled one copies its spans
//! into the worker's reused batch (see [`tracer`]).

pub mod config;
pub mod context;
pub mod export;
pub mod otlp;
pub mod record;
pub mod tracer;

pub use config::{RawTracing, TracingSettings};
pub use context::{SpanId, TraceId};
pub use export::{Exporter, TraceCounters};
pub use record::{ClientSpan, Event, Events, Ids, ServerSpan, SpanBatch, SpanRecord};
pub use tracer::{ServerFacts, TraceCtx, WorkerTracer};

use std::net::SocketAddr;
use std::time::Instant;

use crate::http::parse::RequestHead;

/// `http.request.method`: the method's name, or `_OTHER` for an extension method (the
/// convention's choice, which also keeps the value static).
pub fn method_name(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// Whether a request header is one the gateway owns while tracing (never forwarded as
/// received).
pub fn is_trace_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"traceparent") || name.eq_ignore_ascii_case(b"tracestate")
}

/// The caller's parent: its only `traceparent` field, when valid. Two or more fields are
/// ambiguous and start a new trace.
pub fn parent_of(head: &RequestHead, buf: &[u8]) -> Option<context::Parent> {
    let mut fields = head
        .headers(buf)
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"traceparent"));
    let first = fields.next()?;
    if fields.next().is_some() {
        return None;
    }
    context::parse_traceparent(first.1)
}

/// What the proxy needs to name each attempt as the upstream's parent: the request's ids and
/// where the span id sits in the upstream head (`patch_at`). `None` for unsampled requests:
/// their `traceparent` names the server span and is never patched.
#[derive(Debug, Clone, Copy)]
pub struct Propagation {
    pub ids: Ids,
    pub patch_at: usize,
    pub method: &'static str,
}

/// Appends the gateway's `traceparent` (and the caller's `tracestate` when it may go on) to
/// the upstream head prefix `out`.
pub fn write_upstream(
    out: &mut Vec<u8>,
    ctx: &TraceCtx,
    head: &RequestHead,
    buf: &[u8],
) -> Option<Propagation> {
    let at = context::write_traceparent(out, ctx.ids.trace_id, ctx.ids.span_id, ctx.sampled);
    if ctx.continued {
        let mut states = head
            .headers(buf)
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"tracestate"));
        // One field only: joining several would be a copy per request for a rare case.
        if let (Some((_, v)), None) = (states.next(), states.next()) {
            if !v.is_empty() && context::tracestate_is_valid(v) {
                out.extend_from_slice(b"tracestate: ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    ctx.sampled.then_some(Propagation {
        ids: ctx.ids,
        patch_at: at,
        method: ctx.method,
    })
}

/// One upstream attempt of a sampled request, open until [`AttemptSpan::finish`].
#[derive(Debug, Clone, Copy)]
pub struct AttemptSpan {
    ids: Ids,
    method: &'static str,
    start: Instant,
    attempt: u8,
    pub endpoint: Option<SocketAddr>,
    pub reused: bool,
    events: Events,
}

impl AttemptSpan {
    /// Opens attempt number `attempt` (1-based) and names it as the parent in the upstream
    /// head `up_out` (see [`Propagation`]).
    pub fn begin(
        tracer: &mut WorkerTracer,
        p: &Propagation,
        attempt: u32,
        up_out: &mut [u8],
    ) -> AttemptSpan {
        let span_id = tracer.span_id();
        context::patch_span_id(up_out, p.patch_at, span_id);
        AttemptSpan {
            ids: Ids {
                trace_id: p.ids.trace_id,
                span_id,
                parent_id: p.ids.span_id,
            },
            method: p.method,
            start: Instant::now(),
            attempt: attempt.min(u32::from(u8::MAX)) as u8,
            endpoint: None,
            reused: false,
            events: Events::default(),
        }
    }

    /// Marks `name` now (e.g. `first_byte`).
    pub fn event(&mut self, name: &'static str) {
        self.events.push(Event {
            name,
            at: Instant::now(),
            attr: None,
        });
    }

    /// Ends the span: `status` 0 when no response head was read, `error` the failure's kind.
    pub fn finish(
        self,
        tracer: &mut WorkerTracer,
        upstream: &str,
        status: u16,
        error: Option<&'static str>,
    ) {
        tracer.record(|b| {
            SpanRecord::Client(ClientSpan {
                ids: self.ids,
                start: self.start,
                end: Instant::now(),
                method: self.method,
                status,
                error,
                upstream: b.text(upstream),
                endpoint: self.endpoint,
                attempt: self.attempt,
                reused: self.reused,
                events: self.events,
            })
        });
    }
}
