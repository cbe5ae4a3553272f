//! Distributed tracing through the real gateway: W3C trace context on the wire, and the spans
//! a real OTLP/HTTP receiver (started here, decoding `ExportTraceServiceRequest` with the
//! `opentelemetry-proto` types) gets: parent/child links, attributes, retries, a reload of
//! the ratio, and a collector that is down or stalled while requests keep flowing.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::{Receiver, Sender};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message;
use shardgate::http::blocking;
use shardgate::http::Limits;

/// A caller's sampled `traceparent`.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn caller_traceparent(flags: &str) -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}")
}

/// A real OTLP/HTTP receiver: decodes each POSTed `ExportTraceServiceRequest` and passes its
/// spans (with the resource's `service.name`) to the test.
struct Collector {
    addr: SocketAddr,
    spans: Receiver<(String, Span)>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, spans) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || serve_collector(s, &tx));
            }
        });
        Collector { addr, spans }
    }

    /// Spans received until `done` says enough (or 10 s pass).
    fn until(&self, mut done: impl FnMut(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.spans.recv_timeout(left) {
                Ok((_, s)) => got.push(s),
                Err(_) => panic!("spans so far: {}", describe(&got)),
            }
        }
        got
    }

    /// Spans of trace `trace_id` until `n` have arrived.
    fn trace(&self, trace_id: &[u8], n: usize) -> Vec<Span> {
        let mut mine = Vec::new();
        self.until(|all| {
            mine = all
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            mine.len() >= n
        });
        mine
    }
}

fn serve_collector(s: std::net::TcpStream, tx: &Sender<(String, Span)>) {
    let mut conn = blocking::Conn::new(s.try_clone().unwrap());
    let limits = Limits::bounded(64 * 1024, 64, 64 << 20);
    while let Ok(req) = conn.read_request(&limits) {
        assert_eq!(req.method(), "POST");
        assert_eq!(req.path(), "/v1/traces");
        assert_eq!(
            req.header("content-type"),
            Some(&b"application/x-protobuf"[..])
        );
        let export = ExportTraceServiceRequest::decode(&req.body[..]).expect("OTLP protobuf");
        for rs in export.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| text_of(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let _ = tx.send((service.clone(), span));
                }
            }
        }
        use std::io::Write;
        let _ = (&s).write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        );
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A span's attributes as text.
fn attrs(s: &Span) -> HashMap<String, String> {
    s.attributes
        .iter()
        .filter_map(|a| Some((a.key.clone(), text_of(a.value.as_ref()?.value.as_ref()?)?)))
        .collect()
}

fn describe(spans: &[Span]) -> String {
    let lines: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {:?} {:?}", s.name, s.kind, attrs(s)))
        .collect();
    lines.join("\n")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// `[tracing]` to `collector` with `extra` keys.
fn tracing(collector: SocketAddr, extra: &str) -> String {
    format!("[tracing]\nendpoint = \"http://{collector}\"\nexport_interval_ms = 50\n{extra}\n")
}

/// An upstream that answers 200 and hands every request it got to the test.
fn recording_upstream() -> (Upstream, Receiver<Received>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Upstream::start(move |mut c| {
        while let Some(req) = c.read_request() {
            let _ = tx.send(req);
            c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    (up, rx)
}

/// The upstream's `traceparent` split into (trace id, parent id, flags).
fn upstream_parent(r: &Received) -> (String, String, String) {
    let v = r
        .header("traceparent")
        .expect("the upstream gets a traceparent");
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn kind(s: &Span) -> SpanKind {
    SpanKind::try_from(s.kind).unwrap()
}

#[test]
fn a_callers_trace_is_continued_with_a_server_span_and_a_client_span_per_attempt() {
    let collector = Collector::start();
    let (up, seen) = recording_upstream();
    let gw = gateway(&(route_all(up.addr, "") + &tracing(collector.addr, "sample_ratio = 0.0")));
    let tp = caller_traceparent("01");
    let r = get_with(
        gw.local_addr(),
        "/v1/models?x=1",
        &[
            ("traceparent", &tp),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ],
    );
    assert_eq!(r.status, 200);
    let got = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    let (trace, parent, flags) = upstream_parent(&got);
    assert_eq!((trace.as_str(), flags.as_str()), (CALLER_TRACE, "01"));
    assert_ne!(
        parent, CALLER_SPAN,
        "the gateway's span is the upstream's parent"
    );
    assert_eq!(got.header("tracestate"), Some("rojo=00f067aa0ba902b7"));

    let spans = collector.trace(&unhex(CALLER_TRACE), 2);
    let server = spans.iter().find(|s| kind(s) == SpanKind::Server).unwrap();
    let client = spans.iter().find(|s| kind(s) == SpanKind::Client).unwrap();
    // caller → server span → client span → upstream.
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(hex(&client.span_id), parent);
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert!(
        server.start_time_unix_nano > 1_600_000_000_000_000_000,
        "Unix time"
    );
    assert_eq!(server.name, "GET /*rest");
    let a = attrs(server);
    for (k, v) in [
        ("http.request.method", "GET"),
        ("http.route", "/*rest"),
        ("url.path", "/v1/models"),
        ("url.scheme", "http"),
        ("http.response.status_code", "200"),
        ("network.protocol.version", "1.1"),
        ("client.address", "127.0.0.1"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k}: {a:?}");
    }
    assert_eq!(
        server.status.as_ref().unwrap().code,
        StatusCode::Unset as i32
    );
    let a = attrs(client);
    for (k, v) in [
        ("http.request.method", "GET"),
        ("server.address", "127.0.0.1"),
        ("server.port", &up.addr.port().to_string()),
        ("http.response.status_code", "200"),
        ("shardgate.upstream", "up"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k}: {a:?}");
    }
    assert!(!a.contains_key("http.request.resend_count"));
    let events: Vec<&str> = client.events.iter().map(|e| e.name.as_str()).collect();
    assert!(events.contains(&"first_byte"), "{events:?}");
}

#[test]
fn a_retried_request_shows_both_attempts_each_the_upstreams_parent() {
    let collector = Collector::start();
    let (tx, seen) = crossbeam_channel::unbounded::<(u16, Received)>();
    let tx2 = tx.clone();
    let bad = Upstream::start(move |mut c| {
        while let Some(req) = c.read_request() {
            let _ = tx.send((503, req));
            c.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let good = Upstream::start(move |mut c| {
        while let Some(req) = c.read_request() {
            let _ = tx2.send((200, req));
            c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    // One worker: its round-robin alternates the first endpoint, so within two requests one
    // starts on the failing endpoint and is retried on the other.
    let gw = gateway_with(
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false",
        &(upstream(
            "up",
            &[bad.addr, good.addr],
            "breaker = { consecutive_failures = 100 }",
        ) + &route("/*rest", "up", "retryable = true")
            + &tracing(collector.addr, "sample_ratio = 1.0")),
    );
    let retried = (0..2)
        .map(|_| {
            let r = post_json(gw.local_addr(), "/v1/x", &[], "{}");
            assert_eq!(r.status, 200, "a 503 is retried on the other endpoint");
            let first = seen.recv_timeout(Duration::from_secs(5)).unwrap();
            (first.0 == 503).then(|| {
                let second = seen.recv_timeout(Duration::from_secs(5)).unwrap();
                assert_eq!(second.0, 200);
                (first.1, second.1)
            })
        })
        .find_map(|x| x)
        .expect("one of two requests started on the failing endpoint");
    let (t1, p1, _) = upstream_parent(&retried.0);
    let (t2, p2, _) = upstream_parent(&retried.1);
    assert_eq!(t1, t2);
    assert_ne!(p1, p2, "each attempt names its own span");
    let spans = collector.trace(&unhex(&t1), 3);
    let server = spans.iter().find(|s| kind(s) == SpanKind::Server).unwrap();
    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| kind(s) == SpanKind::Client)
        .collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(clients.len(), 2, "{}", describe(&spans));
    assert!(clients.iter().all(|c| c.parent_span_id == server.span_id));
    assert_eq!(
        (hex(&clients[0].span_id), hex(&clients[1].span_id)),
        (p1, p2)
    );
    let (a1, a2) = (attrs(clients[0]), attrs(clients[1]));
    assert_eq!(a1["http.response.status_code"], "503");
    assert_eq!(a1["error.type"], "503");
    assert_eq!(a1["server.port"], bad.addr.port().to_string());
    assert!(!a1.contains_key("http.request.resend_count"));
    assert_eq!(
        clients[0].status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(a2["http.response.status_code"], "200");
    assert_eq!(a2["http.request.resend_count"], "1");
    assert_eq!(a2["server.port"], good.addr.port().to_string());
    assert_eq!(attrs(server)["http.response.status_code"], "200");
    assert!(server.parent_span_id.is_empty(), "a new trace's root");
}

/// The model route's spans carry the GenAI attributes, the deployment and version, the
/// subject, the quota decision as an event, and the time to the first chunk of a stream.
#[test]
fn model_requests_carry_genai_attributes_and_quota_events() {
    let collector = Collector::start();
    let mock =
        shardgate_mock::spawn(Default::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let gw = gateway(
        &(chat_model(mock.addr())
            + &auth_hs256("")
            + "[quota]\n"
            + &quota_rule("all", "subject", "requests_per_minute = 1000")
            + &tracing(
                collector.addr,
                "sample_ratio = 1.0\nservice_name = \"gw-test\"",
            )),
    );
    let tok = token("alice");
    let auth = bearer(&tok);
    let tp = caller_traceparent("01");
    let body =
        r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}"#;
    let r = post_json(
        gw.local_addr(),
        "/v1/chat/completions",
        &[(auth.0, &auth.1), ("traceparent", &tp)],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let spans = collector.trace(&unhex(CALLER_TRACE), 2);
    let server = spans.iter().find(|s| kind(s) == SpanKind::Server).unwrap();
    let a = attrs(server);
    for (k, v) in [
        ("gen_ai.request.model", "m"),
        ("gen_ai.response.model", "m"),
        ("shardgate.deployment", "m@1.0.0"),
        ("shardgate.deployment.version", "1.0.0"),
        ("user.id", "alice"),
        ("http.route", "/v1/chat/completions"),
        ("gen_ai.usage.output_tokens", "5"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k}: {a:?}");
    }
    assert!(a["gen_ai.usage.input_tokens"].parse::<u32>().unwrap() > 0);
    let quota = server
        .events
        .iter()
        .find(|e| e.name == "shardgate.quota")
        .expect("the quota decision is an event");
    assert_eq!(
        text_of(
            quota.attributes[0]
                .value
                .as_ref()
                .unwrap()
                .value
                .as_ref()
                .unwrap()
        ),
        Some("admitted".into())
    );
    assert!(quota.time_unix_nano >= server.start_time_unix_nano);

    // A streamed response: the client span marks the first chunk.
    let stream =
        r#"{"model":"m","stream":true,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;
    let tp2 = format!("00-{}-{CALLER_SPAN}-01", "1".repeat(32));
    let r = post_json(
        gw.local_addr(),
        "/v1/chat/completions",
        &[(auth.0, &auth.1), ("traceparent", &tp2)],
        stream,
    );
    assert_eq!(r.status, 200);
    let spans = collector.trace(&unhex(&"1".repeat(32)), 2);
    let client = spans.iter().find(|s| kind(s) == SpanKind::Client).unwrap();
    let names: Vec<&str> = client.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["first_byte", "first_chunk"], "{}", describe(&spans));

    // Over the limit: the rejection is an event, the 429 the span's status code.
    let tight = gateway(
        &(chat_model(mock.addr())
            + "[quota]\n"
            + &quota_rule("one", "client_ip", "requests_per_minute = 1")
            + &tracing(collector.addr, "sample_ratio = 1.0")),
    );
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            let tp = format!("00-{:032x}-{CALLER_SPAN}-01", 0xabc0 + i);
            post_json(
                tight.local_addr(),
                "/v1/chat/completions",
                &[("traceparent", &tp)],
                &chat_body("m"),
            )
            .status
        })
        .collect();
    let rejected = statuses.iter().position(|&s| s == 429).expect("a 429");
    let tid = unhex(&format!("{:032x}", 0xabc0 + rejected));
    let spans = collector.trace(&tid, 1);
    assert_eq!(spans.len(), 1, "a rejected request makes no attempt");
    let a = attrs(&spans[0]);
    assert_eq!(a["http.response.status_code"], "429");
    assert_eq!(a["error.type"], "rate_limit_exceeded");
    let ev = &spans[0].events[0];
    assert_eq!(ev.name, "shardgate.quota");
    assert_eq!(
        text_of(
            ev.attributes[0]
                .value
                .as_ref()
                .unwrap()
                .value
                .as_ref()
                .unwrap()
        ),
        Some("rejected".into())
    );
}

/// Malformed `traceparent`/`tracestate` values, by kind and position, never reach the
/// upstream: the gateway starts a new trace and drops the `tracestate`.
#[test]
fn malformed_trace_headers_are_replaced_never_forwarded() {
    let collector = Collector::start();
    let (up, seen) = recording_upstream();
    let gw = gateway(&(route_all(up.addr, "") + &tracing(collector.addr, "sample_ratio = 0.0")));
    let good = caller_traceparent("01");
    let bad_parents = [
        good.to_uppercase(),
        good.replacen("00", "ff", 1),
        format!("{good}-extra"),
        good[..54].to_string(),
        good.replace(CALLER_TRACE, &"0".repeat(32)),
        good.replace(CALLER_SPAN, &"0".repeat(16)),
        good.replace('-', "_"),
        good.replace("-01", "-1"),
        format!(" {good}x"),
        "garbage".into(),
        good.replace("4bf9", "4bf+"),
    ];
    let check = |headers: &[(&str, &str)], continued: bool| {
        let r = get_with(gw.local_addr(), "/x", headers);
        assert_eq!(r.status, 200, "{headers:?}");
        let got = seen.recv_timeout(Duration::from_secs(5)).unwrap();
        let traceparents: Vec<&str> = got
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(traceparents.len(), 1, "{headers:?}: {traceparents:?}");
        let (trace, _, _) = upstream_parent(&got);
        assert_eq!(trace == CALLER_TRACE, continued, "{headers:?}");
        for (_, v) in headers {
            assert_ne!(traceparents[0], *v, "forwarded as received: {v:?}");
        }
        got.header("tracestate").map(str::to_owned)
    };
    for bad in &bad_parents {
        // The tracestate of an invalid parent is dropped with it.
        assert_eq!(
            check(&[("traceparent", bad), ("tracestate", "rojo=1")], false),
            None
        );
    }
    // Two traceparent fields are ambiguous: a new trace.
    assert_eq!(
        check(&[("traceparent", &good), ("traceparent", &good)], false),
        None
    );
    // A valid parent with an invalid tracestate: the parent is continued, the state dropped.
    for state in [
        "Rojo=1",
        "rojo=1,rojo=2",
        "rojo",
        "rojo=a,b",
        &"k=v,".repeat(40),
    ] {
        assert_eq!(
            check(&[("traceparent", &good), ("tracestate", state)], true),
            None,
            "{state}"
        );
    }
    assert_eq!(
        check(
            &[
                ("traceparent", &good),
                ("tracestate", "congo=t61rcWkgMzE,rojo=1")
            ],
            true
        ),
        Some("congo=t61rcWkgMzE,rojo=1".into())
    );
    // Without a traceparent: a new trace, never sampled at ratio 0, still propagated.
    let r = get(gw.local_addr(), "/x");
    assert_eq!(r.status, 200);
    let got = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    let (_, _, flags) = upstream_parent(&got);
    assert_eq!(flags, "00");

    // Without [tracing] the gateway takes no part: both headers pass through untouched.
    let plain = gateway(&route_all(up.addr, ""));
    let r = get_with(
        plain.local_addr(),
        "/x",
        &[("traceparent", "garbage"), ("tracestate", "x")],
    );
    assert_eq!(r.status, 200);
    let got = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(got.header("traceparent"), Some("garbage"));
    assert_eq!(got.header("tracestate"), Some("x"));
}

#[test]
fn the_ratio_decides_new_traces_the_callers_flag_its_own_and_a_reload_changes_the_ratio() {
    let collector = Collector::start();
    let (up, seen) = recording_upstream();
    let text = |ratio: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n{}{}",
            route_all(up.addr, ""),
            tracing(collector.addr, &format!("sample_ratio = {ratio}"))
        )
    };
    let snap = shardgate::config::from_str(&text("0.0"), std::path::Path::new("."), 1).unwrap();
    let gw = shardgate::runtime::Engine::start(snap).unwrap();
    let send = |traceparent: Option<&str>| {
        let headers: Vec<(&str, &str)> = traceparent
            .map(|t| ("traceparent", t))
            .into_iter()
            .collect();
        assert_eq!(get_with(gw.local_addr(), "/x", &headers).status, 200);
        upstream_parent(&seen.recv_timeout(Duration::from_secs(5)).unwrap())
    };
    let unsampled: Vec<String> = (0..20).map(|_| send(None).0).collect();
    // A caller's unsampled trace is not sampled either; its sampled one is, whatever the ratio.
    send(Some(&caller_traceparent("00")));
    let marker = format!("00-{}-{CALLER_SPAN}-01", "2".repeat(32));
    send(Some(&marker));
    // One worker exports in order: once the marker's spans are in, nothing before was sampled.
    let spans = collector.until(|s| {
        s.iter()
            .filter(|x| x.trace_id == unhex(&"2".repeat(32)))
            .count()
            == 2
    });
    assert_eq!(spans.len(), 2, "{}", describe(&spans));
    assert!(!unsampled
        .iter()
        .any(|t| spans.iter().any(|s| hex(&s.trace_id) == *t)));

    // A reload to 1.0 samples every new trace.
    let snap = shardgate::config::from_str(&text("1.0"), std::path::Path::new("."), 2).unwrap();
    gw.apply(&snap);
    gw.inboxes()
        .barrier(Duration::from_secs(5))
        .expect("the worker applied the snapshot");
    let (trace, parent, flags) = send(None);
    assert_eq!(flags, "01");
    let spans = collector.trace(&unhex(&trace), 2);
    assert!(spans.iter().any(|s| hex(&s.span_id) == parent));
}

/// The access log line of a request carries the trace id the upstream saw.
#[test]
fn the_access_log_carries_the_trace_id() {
    let collector = Collector::start();
    let (up, seen) = recording_upstream();
    let dir = std::env::temp_dir().join(format!("sg-trace-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let gw = gateway_in(
        &dir,
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false",
        &(route_all(up.addr, "")
            + "[access_log]\npath = \"access.jsonl\"\n"
            + &tracing(collector.addr, "sample_ratio = 0.0")),
    );
    assert_eq!(get(gw.local_addr(), "/x").status, 200);
    let (trace, _, _) = upstream_parent(&seen.recv_timeout(Duration::from_secs(5)).unwrap());
    drop(gw);
    let text = std::fs::read_to_string(dir.join("access.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["trace_id"], trace.as_str());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Spans dropped and counted ("queue_full" / "export_failed"), for a gateway's workers.
fn dropped(gw: &shardgate::runtime::Engine) -> (u64, u64) {
    let m = shardgate::metrics::merge::Merged::from_workers(gw.collect());
    let t = m.trace.expect("tracing is on");
    (t.queue_full, t.failed)
}

/// Waits until `f` holds (10 s at most).
fn eventually(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A collector that is down, and one that accepts and never answers: every request is
/// served while the exporter fails, and the spans it could not deliver are counted.
#[test]
fn a_collector_outage_blocks_nothing_and_drops_are_counted() {
    let up = Upstream::echo();
    // Down: a port nothing listens on.
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = gateway(&(route_all(up.addr, "") + &tracing(down, "sample_ratio = 1.0")));
    for _ in 0..50 {
        assert_eq!(get(gw.local_addr(), "/x").status, 200);
    }
    eventually(
        || dropped(&gw).1 > 0,
        "spans the collector never took are counted",
    );

    // Stalled: the export waits for an answer that never comes (60 s timeout), while the
    // workers fill the bounded queue and then drop.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = stalled.local_addr().unwrap();
    let (hold_tx, hold_rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for s in stalled.incoming().flatten() {
            let _ = hold_tx.send(s);
        }
    });
    let gw = gateway(
        &(route_all(up.addr, "")
            + &tracing(
                addr,
                "sample_ratio = 1.0\nmax_queue_spans = 64\nexport_timeout_ms = 60000",
            )),
    );
    // A few requests at a time, so the first spans fit the queue and reach the exporter,
    // whose export then connects to the collector and hangs there.
    let started = Instant::now();
    loop {
        for _ in 0..5 {
            assert_eq!(get(gw.local_addr(), "/x").status, 200);
        }
        if hold_rx.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the exporter never reached the collector"
        );
    }
    // While that export hangs, the bounded queue fills and spans are dropped; every request
    // is still served.
    let mut n = 0;
    while dropped(&gw).0 == 0 {
        for _ in 0..100 {
            assert_eq!(get(gw.local_addr(), "/x").status, 200);
            n += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "no drop counted after {n} requests"
        );
    }
    // Dropping the engine waits for the stalled export's timeout only on the exporter thread;
    // leave it to the test's end.
    std::mem::forget(gw);
}
