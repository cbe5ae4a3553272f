//! Span records → an OTLP `ExportTraceServiceRequest` (protobuf), on the exporter thread.
//!
//! Attributes follow the OpenTelemetry semantic conventions: HTTP server and client spans
//! (`http.request.method`, `http.route`, `url.path`, `http.response.status_code`,
//! `server.address`, `error.type`, `http.request.resend_count`, ...) and GenAI
//! (`gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`); the gateway's own under `shardgate.*` (deployment, version,
//! upstream, connection reuse). A server span is an error when the response is 5xx or none
//! was sent; a client span when the attempt failed or the upstream answered 4xx/5xx.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

use super::record::{ClientSpan, Events, ServerSpan, SpanBatch, SpanRecord};

/// `flags`: the W3C sampled bit, and "whether the parent is remote" is known (OTLP 1.2+).
const FLAG_SAMPLED: u32 = 0x01;
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// Turns the monotonic instants of records into Unix time, from one reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    unix_ns: u64,
}

impl Clock {
    pub fn now() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            at: Instant::now(),
            unix_ns: unix.as_nanos() as u64,
        }
    }

    pub fn unix_ns(&self, i: Instant) -> u64 {
        if i <= self.at {
            self.unix_ns.saturating_sub((self.at - i).as_nanos() as u64)
        } else {
            self.unix_ns + (i - self.at).as_nanos() as u64
        }
    }
}

/// The process's resource: `service.name`, `service.version`, `process.pid`.
pub fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", s(service_name)),
            kv("service.version", s(env!("CARGO_PKG_VERSION"))),
            kv("process.pid", int(i64::from(std::process::id()))),
        ],
        ..Default::default()
    }
}

/// One export request carrying every span of `batches`.
pub fn request<'a>(
    resource: &Resource,
    batches: impl IntoIterator<Item = &'a SpanBatch>,
    clock: &Clock,
) -> ExportTraceServiceRequest {
    let spans = batches
        .into_iter()
        .flat_map(|b| b.spans.iter().map(move |r| span(b, r, clock)))
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "shardgate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn span(b: &SpanBatch, r: &SpanRecord, clock: &Clock) -> Span {
    match r {
        SpanRecord::Server(sv) => server(b, sv, clock),
        SpanRecord::Client(c) => client(b, c, clock),
    }
}

fn server(b: &SpanBatch, sv: &ServerSpan, clock: &Clock) -> Span {
    let route = b.str(sv.route);
    let mut a = vec![
        kv("http.request.method", s(sv.method)),
        kv("url.scheme", s("http")),
        kv(
            "network.protocol.version",
            s(if sv.minor_version == 0 { "1.0" } else { "1.1" }),
        ),
    ];
    let mut text = |key: &'static str, v: &str| {
        if !v.is_empty() {
            a.push(kv(key, s(v)));
        }
    };
    text("http.route", route);
    text("url.path", b.str(sv.path));
    text("gen_ai.request.model", b.str(sv.request_model));
    text("user.id", b.str(sv.subject));
    let deployment = b.str(sv.deployment);
    if let Some((model, version)) = deployment.rsplit_once('@') {
        text("gen_ai.response.model", model);
        text("shardgate.deployment", deployment);
        text("shardgate.deployment.version", version);
    }
    if sv.status != 0 {
        a.push(kv("http.response.status_code", int(i64::from(sv.status))));
    }
    if let Some(ip) = sv.client {
        a.push(kv("client.address", s(&ip.to_string())));
    }
    if let Some(e) = sv.error {
        a.push(kv("error.type", s(e)));
    }
    if let Some((input, output)) = sv.usage {
        a.push(kv("gen_ai.usage.input_tokens", int(i64::from(input))));
        a.push(kv("gen_ai.usage.output_tokens", int(i64::from(output))));
    }
    let failed = sv.status == 0 || sv.status >= 500;
    let remote = if sv.ids.parent_id.is_valid() {
        IS_REMOTE
    } else {
        0
    };
    Span {
        trace_id: sv.ids.trace_id.0.to_vec(),
        span_id: sv.ids.span_id.0.to_vec(),
        parent_span_id: parent(&sv.ids.parent_id.0),
        flags: FLAG_SAMPLED | HAS_IS_REMOTE | remote,
        name: if route.is_empty() {
            sv.method.to_string()
        } else {
            format!("{} {route}", sv.method)
        },
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: clock.unix_ns(sv.start),
        end_time_unix_nano: clock.unix_ns(sv.end),
        attributes: a,
        events: events(&sv.events, clock),
        dropped_events_count: u32::from(sv.events.dropped),
        status: Some(status_of(
            failed,
            if sv.status == 0 { "no response" } else { "" },
        )),
        ..Default::default()
    }
}

fn client(b: &SpanBatch, c: &ClientSpan, clock: &Clock) -> Span {
    let mut a = vec![kv("http.request.method", s(c.method))];
    if let Some(ep) = c.endpoint {
        a.push(kv("server.address", s(&ep.ip().to_string())));
        a.push(kv("server.port", int(i64::from(ep.port()))));
    }
    if c.status != 0 {
        a.push(kv("http.response.status_code", int(i64::from(c.status))));
    }
    if c.attempt > 1 {
        a.push(kv(
            "http.request.resend_count",
            int(i64::from(c.attempt) - 1),
        ));
    }
    // A failed attempt's kind, or the upstream's error status as text (the convention).
    let error = c.error.map(String::from).or_else(|| {
        (400..=599)
            .contains(&c.status)
            .then(|| c.status.to_string())
    });
    if let Some(e) = &error {
        a.push(kv("error.type", s(e)));
    }
    let upstream = b.str(c.upstream);
    if !upstream.is_empty() {
        a.push(kv("shardgate.upstream", s(upstream)));
    }
    a.push(kv(
        "shardgate.connection.reused",
        AnyValue {
            value: Some(any_value::Value::BoolValue(c.reused)),
        },
    ));
    Span {
        trace_id: c.ids.trace_id.0.to_vec(),
        span_id: c.ids.span_id.0.to_vec(),
        parent_span_id: parent(&c.ids.parent_id.0),
        flags: FLAG_SAMPLED | HAS_IS_REMOTE,
        name: c.method.to_string(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: clock.unix_ns(c.start),
        end_time_unix_nano: clock.unix_ns(c.end),
        attributes: a,
        events: events(&c.events, clock),
        dropped_events_count: u32::from(c.events.dropped),
        status: Some(status_of(error.is_some(), "")),
        ..Default::default()
    }
}

fn parent(id: &[u8; 8]) -> Vec<u8> {
    if *id == [0; 8] {
        Vec::new()
    } else {
        id.to_vec()
    }
}

fn events(ev: &Events, clock: &Clock) -> Vec<span::Event> {
    ev.iter()
        .map(|e| span::Event {
            time_unix_nano: clock.unix_ns(e.at),
            name: e.name.into(),
            attributes: e.attr.iter().map(|(k, v)| kv(k, s(v))).collect(),
            dropped_attributes_count: 0,
        })
        .collect()
}

fn status_of(error: bool, message: &str) -> Status {
    Status {
        message: if error { message.into() } else { String::new() },
        code: if error {
            status::StatusCode::Error as i32
        } else {
            status::StatusCode::Unset as i32
        },
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}

fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    }
}

fn int(v: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(v)),
    }
}
