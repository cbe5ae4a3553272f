//! Provider adapters and schema transforms through the running gateway: an OpenAI-shaped
//! client in front, the Anthropic-shaped mock (or a scripted upstream that records what it
//! got) behind, bytes checked on the wire.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use shardgate_mock::{self as mock, MockConfig, MockHandle};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/adapt/");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}{name}")).unwrap()
}

fn start_mock() -> MockHandle {
    let cfg = MockConfig {
        stream_gap_ms: 0,
        stream_chunks: 3,
        ..MockConfig::default()
    };
    mock::spawn(cfg, "127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

/// One upstream `claude` (Anthropic) with `extra` keys, every path routed to it.
fn anthropic_gateway(addr: SocketAddr, extra: &str) -> shardgate::runtime::Engine {
    let up = upstream(
        "claude",
        &[addr],
        &format!("provider = \"anthropic\"\napi_key = {{ value = \"sk-ant-test\" }}\n{extra}"),
    );
    gateway(&(up + &route("/*rest", "claude", "")))
}

fn chat(addr: SocketAddr, headers: &[(&str, &str)], body: &Value) -> Response {
    post_json(addr, "/v1/chat/completions", headers, &body.to_string())
}

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// The `data:` payloads of an SSE body, JSON (or the string `[DONE]`).
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_string())))
        .collect()
}

fn tokens_counted(gw: &shardgate::runtime::Engine, model: &str) -> u64 {
    gw.collect()
        .iter()
        .map(|w| {
            w.counters
                .get(&shardgate::metrics::counters::TOKENS, &["anonymous", model])
        })
        .sum()
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[test]
fn a_chat_completion_reaches_anthropic_and_comes_back_openai_shaped() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "default_max_tokens = 9");
    let body = json!({
        "model": "claude-x",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "12345678"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    });
    let r = chat(gw.local_addr(), &[("accept-encoding", "gzip")], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = json_of(&r);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude-x");
    assert!(v["id"].as_str().unwrap().starts_with("msg_mock"));
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], mock::reply::REPLY_TEXT);
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "lookup");
    assert_eq!(
        msg["tool_calls"][0]["function"]["arguments"],
        r#"{"q":"mock"}"#
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // "be brief" + "12345678" = 16 bytes → 4 input tokens; max_tokens 9 from the config.
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 9);
    assert_eq!(v["usage"]["total_tokens"], 13);
    assert_eq!(tokens_counted(&gw, "claude-x"), 13);
    // Cache reads count as prompt tokens and are reported as cached.
    let r = chat(
        gw.local_addr(),
        &[("x-mock-cache-read", "6")],
        &json!({"model": "c", "messages": user("abcd"), "max_tokens": 2}),
    );
    let v = json_of(&r);
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 6);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn the_upstream_gets_the_golden_request_and_its_answer_is_reframed() {
    let answer = fixture("message_tools.anthropic.json");
    let (tx, rx) = std::sync::mpsc::channel();
    let up = Upstream::start(move |mut c| {
        while let Some(req) = c.read_request() {
            tx.send(req).unwrap();
            let a = answer.as_bytes();
            c.write(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nrequest-id: req_1\r\n\r\n", a.len()).as_bytes());
            c.write(a);
        }
    });
    let gw = anthropic_gateway(up.addr, "anthropic_version = \"2024-01-01\"");
    let r = post_json(
        gw.local_addr(),
        "/v1/chat/completions?beta=1",
        &[
            ("authorization", "Bearer client-key"),
            ("anthropic-version", "1999"),
            ("x-api-key", "client"),
            ("accept-encoding", "br"),
        ],
        &fixture("chat_full.openai.json"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (got.method.as_str(), got.target.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(got.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(got.header("anthropic-version"), Some("2024-01-01"));
    assert_eq!(
        got.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("anthropic-version"))
            .count(),
        1
    );
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.header("accept-encoding"), None);
    let sent: Value = serde_json::from_slice(&got.body).unwrap();
    let want: Value = serde_json::from_str(&fixture("chat_full.anthropic.json")).unwrap();
    assert_eq!(sent, want, "{sent:#}");
    // The response: translated and held whole, so framed by its new length.
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("request-id"), Some("req_1"));
    let mut v = json_of(&r);
    let mut want: Value = serde_json::from_str(&fixture("message_tools.openai.json")).unwrap();
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    v["created"] = json!(0);
    want["created"] = json!(0);
    assert_eq!(v, want);
}

#[test]
fn streams_are_translated_with_usage_when_asked_and_charged_always() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "");
    let ask = |include: bool| {
        let mut body =
            json!({"model": "c", "stream": true, "max_tokens": 5, "messages": user("abcdefgh")});
        if include {
            body["stream_options"] = json!({"include_usage": true});
        }
        chat(gw.local_addr(), &[], &body)
    };
    let r = ask(true);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let ev = events(&r.text());
    assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 ");
    let n = ev.len();
    assert_eq!(ev[n - 3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        ev[n - 2]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(ev[n - 1], "[DONE]");
    assert!(ev
        .iter()
        .all(|e| e == "[DONE]" || e["object"] == "chat.completion.chunk"));
    // A client that did not ask gets no usage chunk, and is charged all the same.
    let r = ask(false);
    assert!(!r.text().contains("\"usage\""), "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    assert_eq!(tokens_counted(&gw, "c"), 14);
}

#[test]
fn unknown_events_are_ignored_and_tool_calls_stream() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "");
    let body = json!({"model": "c", "stream": true, "max_tokens": 4, "messages": user("hi"),
        "tools": [{"type": "function", "function": {"name": "lookup"}}]});
    let r = chat(gw.local_addr(), &[("x-mock-unknown-event", "1")], &body);
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains("mock_future_event"), "{text}");
    let ev = events(&text);
    let calls: Vec<&Value> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls[0][0]["function"]["name"], "lookup");
    let args: String = calls
        .iter()
        .filter_map(|c| c[0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"q":"mock"}"#);
    assert!(ev
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "tool_calls"));
}

#[test]
fn an_upstream_error_mid_stream_reaches_the_client_as_an_error_event() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "");
    let body = json!({"model": "c", "stream": true, "messages": user("hi")});
    let mut c = Client::connect(gw.local_addr());
    let raw = body.to_string();
    let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-mock-error-after-chunks: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{raw}", raw.len());
    c.send(req.as_bytes());
    let r = c.read_response().expect("a complete response");
    assert_eq!(r.status, 200);
    let ev = events(&r.text());
    let texts: Vec<&str> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(texts, ["tok0 "]);
    let last = ev.last().unwrap();
    assert_eq!(last["error"]["type"], "overloaded_error");
    assert_eq!(last["error"]["message"], "Overloaded");
    assert!(!r.text().contains("[DONE]"));
    // The stream ended properly: the connection serves the next request.
    c.send(
        req.replace("x-mock-error-after-chunks: 1\r\n", "")
            .as_bytes(),
    );
    let r = c.read_response().expect("a second response");
    assert!(r.text().ends_with("data: [DONE]\n\n"));
}

#[test]
fn a_stream_cut_mid_event_closes_the_client_connection() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "");
    let raw = json!({"model": "c", "stream": true, "messages": user("hi")}).to_string();
    let mut s = std::net::TcpStream::connect(gw.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-mock-close-after-chunks: 2\r\ncontent-length: {}\r\n\r\n{raw}", raw.len());
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut got = Vec::new();
    // Read until the gateway closes: a truncated response must not look complete.
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("tok0 ") && text.contains("tok1 "), "{text}");
    // Half an event is never relayed, nor the end of the body.
    assert!(!text.contains("tok2"), "{text}");
    assert!(
        !text.contains("[DONE]") && !text.ends_with("0\r\n\r\n"),
        "{text}"
    );
}

#[test]
fn malformed_provider_json_is_a_502_json_error() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "");
    let mut c = Client::connect(gw.local_addr());
    let raw = json!({"model": "c", "messages": user("hi")}).to_string();
    for malformed in ["1", "0"] {
        let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-mock-malformed: {malformed}\r\ncontent-length: {}\r\n\r\n{raw}", raw.len());
        c.send(req.as_bytes());
        let r = c.read_response().expect("a response");
        if malformed == "1" {
            assert_eq!(r.status, 502, "{}", r.text());
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["error"]["type"], "upstream_error");
        } else {
            // The connection is still usable after the 502.
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
}

#[test]
fn provider_errors_take_the_openai_shape_and_status() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "");
    let body = json!({"model": "c", "messages": user("hi")});
    for (mock_status, status, kind) in [
        ("529", 503, "overloaded_error"),
        ("429", 429, "rate_limit_error"),
        ("401", 401, "authentication_error"),
        ("500", 500, "api_error"),
    ] {
        for stream in [false, true] {
            let mut b = body.clone();
            b["stream"] = json!(stream);
            let r = chat(gw.local_addr(), &[("x-mock-status", mock_status)], &b);
            assert_eq!(r.status, status, "{mock_status}: {}", r.text());
            let v = json_of(&r);
            assert_eq!(v["error"]["type"], kind, "{v}");
            assert_eq!(v["error"]["message"], "mock failure");
        }
    }
}

#[test]
fn refused_requests_name_the_field_in_param() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "");
    let cases = [
        (
            json!({"model": "c", "messages": [{"role": "robot", "content": "x"}]}),
            "$.messages[0].role",
        ),
        (
            json!({"model": "c", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url", "image_url": {"url": "gopher://x"}}]}]}),
            "$.messages[1].content[1].image_url.url",
        ),
        (json!({"model": "c", "messages": user("a"), "n": 3}), "$.n"),
        (
            json!({"model": "c", "messages": user("a"), "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {}}]}),
            "$.tools[1].function.name",
        ),
        (
            json!({"model": "c", "messages": [{"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "not json"}}]}]}),
            "$.messages[0].tool_calls[0].function.arguments",
        ),
    ];
    let mut c = Client::connect(gw.local_addr());
    for (body, path) in cases {
        let raw = body.to_string();
        c.send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{raw}",
                raw.len()
            )
            .as_bytes(),
        );
        let r = c.read_response().expect("a response");
        assert_eq!(r.status, 400, "{raw}: {}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["param"], path, "{raw}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert_eq!(m.requests(), 0, "nothing refused reached the upstream");
    // Only chat completions can be translated.
    let r = get(gw.local_addr(), "/v1/models");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("/chat/completions"));
}

#[test]
fn http10_clients_get_a_translated_body_length_framed() {
    let m = start_mock();
    let gw = anthropic_gateway(m.addr(), "");
    let raw = json!({"model": "c", "messages": user("hi")}).to_string();
    for keep in [false, true] {
        let mut s = std::net::TcpStream::connect(gw.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let ka = if keep {
            "connection: keep-alive\r\n"
        } else {
            ""
        };
        let req = format!(
            "POST /v1/chat/completions HTTP/1.0\r\n{ka}content-length: {}\r\n\r\n{raw}",
            raw.len()
        );
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        if keep {
            // Kept open: the length frames the body, and a second request is served.
            std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let mut text = String::from_utf8(got).unwrap();
        for i in 0..if keep { 2 } else { 1 } {
            let (head, rest) = text.split_once("\r\n\r\n").unwrap();
            let lower = head.to_ascii_lowercase();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(!lower.contains("transfer-encoding"), "{head}");
            let len: usize = header_of(head, "content-length").unwrap().parse().unwrap();
            if keep && i == 0 {
                assert!(lower.contains("connection: keep-alive"), "{head}");
            }
            if !keep {
                assert!(lower.contains("connection: close"), "{head}");
            }
            let v: Value = serde_json::from_str(&rest[..len]).unwrap();
            assert_eq!(v["object"], "chat.completion");
            text = rest[len..].to_string();
        }
        assert!(text.is_empty(), "nothing after the last body: {text:?}");
    }
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Whatever framing the upstream used (a length, chunks, or its close), a translated body
/// that is not an event stream reaches the client framed by its new length, on a connection
/// that stays usable; a translated event stream stays chunked. Errors translated to the
/// OpenAI shape are length-framed too.
#[test]
fn translated_bodies_are_length_framed_whatever_the_upstream_framing() {
    let answer = fixture("message_tools.anthropic.json");
    let up = Upstream::start(move |mut c| {
        while let Some(req) = c.read_request() {
            let a = answer.as_bytes();
            match req.header("x-frame").unwrap_or("length") {
                "chunked" => {
                    c.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n");
                    // In three chunks, one of them split across writes.
                    let (x, rest) = a.split_at(10);
                    let (y, z) = rest.split_at(rest.len() / 2);
                    for part in [x, y, z] {
                        c.write(format!("{:x}\r\n", part.len()).as_bytes());
                        c.write(part);
                        c.write(b"\r\n");
                    }
                    c.write(b"0\r\n\r\n");
                }
                "close" => {
                    c.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n");
                    c.write(a);
                    return;
                }
                "error" => {
                    let e = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
                    c.write(format!("HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", e.len()).as_bytes());
                    c.write(e);
                }
                "sse" => {
                    let ev = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
                    c.write(format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{ev}", ev.len()).as_bytes());
                }
                _ => {
                    c.write(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", a.len()).as_bytes());
                    c.write(a);
                }
            }
        }
    });
    let gw = anthropic_gateway(up.addr, "");
    let mut want: Value = serde_json::from_str(&fixture("message_tools.openai.json")).unwrap();
    want["created"] = json!(0);
    let mut c = Client::connect(gw.local_addr());
    let raw = json!({"model": "c", "messages": user("hi")}).to_string();
    for frame in [
        "length", "chunked", "close", "error", "sse", "length", "close", "chunked",
    ] {
        let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-frame: {frame}\r\ncontent-length: {}\r\n\r\n{raw}", raw.len());
        c.send(req.as_bytes());
        let r = c
            .read_response()
            .expect("a response on the same connection");
        if frame == "sse" {
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("transfer-encoding"), Some("chunked"));
            assert_eq!(r.header("content-length"), None);
            assert_eq!(events(&r.text()).last(), Some(&json!("[DONE]")));
            continue;
        }
        assert_eq!(r.header("transfer-encoding"), None, "{frame}");
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str()),
            "{frame}"
        );
        assert_eq!(r.header("connection"), None, "{frame}: kept open");
        let mut v = json_of(&r);
        if frame == "error" {
            assert_eq!(r.status, 429);
            assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
        } else {
            assert_eq!(r.status, 200, "{frame}: {}", r.text());
            v["created"] = json!(0);
            assert_eq!(v, want, "{frame}");
        }
    }
}

/// 90 % to an OpenAI-compatible deployment, 10 % to an Anthropic one; every answer is
/// OpenAI-shaped.
#[test]
fn a_split_mixes_providers() {
    let oss = start_mock();
    let claude = start_mock();
    let text = [
        deployment("oss", "1.0.0", &[oss.addr()], ""),
        deployment(
            "claude",
            "1.0.0",
            &[claude.addr()],
            "provider = \"anthropic\"\nserved_name = \"claude-3\"",
        ),
        model_route(
            "/v1/chat/completions",
            r#"{ model = "oss", weight = 90 }, { model = "claude", weight = 10 }"#,
            "",
        ),
    ]
    .concat();
    let gw = gateway(&text);
    let (mut openai, mut anthropic) = (0, 0);
    for _ in 0..300 {
        let r = chat(
            gw.local_addr(),
            &[],
            &json!({"model": "any", "messages": user("hi"), "max_tokens": 3}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = json_of(&r);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        match r.header("x-shardgate-model") {
            Some("claude") => {
                anthropic += 1;
                assert_eq!(v["model"], "claude-3");
                assert!(v["id"].as_str().unwrap().starts_with("msg_mock"));
            }
            Some("oss") => {
                openai += 1;
                assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock"));
            }
            other => panic!("{other:?}"),
        }
    }
    // 10 % of 300 is 30; a binomial draw lands in 10..=60 with overwhelming probability.
    assert!(
        (10..=60).contains(&anthropic),
        "anthropic {anthropic}, openai {openai}"
    );
    assert_eq!(claude.requests(), anthropic as u64);
}

#[test]
fn a_fallback_crosses_providers() {
    let claude = start_mock();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let text = [
        "[defaults.breaker]\nconsecutive_failures = 2\nopen_base_ms = 60000\nopen_max_ms = 60000\n"
            .to_string(),
        deployment("oss", "1.0.0", &[dead_addr], ""),
        deployment(
            "claude",
            "1.0.0",
            &[claude.addr()],
            "provider = \"anthropic\"",
        ),
        model_route(
            "/v1/chat/completions",
            r#"{ model = "oss", weight = 1 }"#,
            r#"fallbacks = [ { model = "claude", weight = 1 } ]"#,
        ),
    ]
    .concat();
    let gw = gateway_with("listen = \"127.0.0.1:0\"\nworkers = 1\npin = false", &text);
    let mut served = Vec::new();
    for _ in 0..12 {
        // The coordination thread decides on reported failures within a few ticks.
        std::thread::sleep(Duration::from_millis(20));
        let body = json!({"model": "m", "stream": true, "messages": user("hi")});
        let r = chat(gw.local_addr(), &[], &body);
        served.push((
            r.status,
            r.header("x-shardgate-model").map(str::to_string),
            r.text(),
        ));
    }
    let failed = served.iter().filter(|(s, _, _)| *s != 200).count();
    assert!(
        failed <= 2,
        "only the requests that trip the breaker fail: {served:?}"
    );
    for (status, model, text) in &served[6..] {
        assert_eq!((*status, model.as_deref()), (200, Some("claude")));
        assert!(
            text.contains("chat.completion.chunk") && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-adapt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const OPENAPI: &str = r##"
openapi: 3.0.3
info: { title: users, version: "1" }
paths: {}
components:
  schemas:
    CreateUser:
      type: object
      required: [userName]
      properties:
        userName: { type: string, x-protocol-field: login }
        homeAddress: { $ref: "#/components/schemas/Address" }
        loginCount: { type: integer }
    Address:
      type: object
      required: [streetName]
      properties:
        streetName: { type: string }
    User:
      type: object
      properties:
        userName: { type: string, x-protocol-field: login }
        homeAddress: { $ref: "#/components/schemas/Address" }
        createdAt: { type: string }
"##;

/// A transform's route: the upstream answers with the body it got (JSON, or as SSE events
/// when the path ends in `/stream`).
fn transform_gateway(tag: &str) -> (shardgate::runtime::Engine, Upstream) {
    let dir = temp_dir(tag);
    std::fs::write(dir.join("users.yaml"), OPENAPI).unwrap();
    let up = Upstream::start(|mut c| {
        while let Some(req) = c.read_request() {
            let body = String::from_utf8(req.body.clone()).unwrap();
            if req.target.ends_with("/stream") {
                let events = format!("event: user\ndata: {body}\n\ndata: [DONE]\n\n");
                c.write(format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{events}\r\n0\r\n\r\n", events.len()).as_bytes());
            } else {
                let body = body.replace('}', ",\"created_at\":\"today\"}");
                c.write(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes());
            }
        }
    });
    let text = upstream("users", &[up.addr], "")
        + "[[transforms]]\nname = \"users\"\nopenapi = \"users.yaml\"\nrequest_schema = \"CreateUser\"\nresponse_schema = \"User\"\nnaming = \"snake_case\"\n"
        + &route("/users/*rest", "users", "transform = \"users\"");
    let gw = gateway_in(
        &dir,
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false",
        &text,
    );
    (gw, up)
}

#[test]
fn a_schema_transform_round_trips_requests_and_responses() {
    let (gw, _up) = transform_gateway("roundtrip");
    let client = json!({"userName": "ada", "homeAddress": {"streetName": "Main"}, "loginCount": 2, "extra": true});
    let r = post_json(gw.local_addr(), "/users/new", &[], &client.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    // Renamed, so its length changed: framed by the new length.
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    // The upstream saw backend names; the client gets its own names back.
    let got = json_of(&r);
    assert_eq!(got["userName"], "ada");
    assert_eq!(got["homeAddress"]["streetName"], "Main");
    assert_eq!(got["createdAt"], "today");
    // `login_count` is not in the response schema: it comes back as the backend spelt it.
    assert_eq!(got["login_count"], 2);
    assert_eq!(got["extra"], true);
    let r = post_json(gw.local_addr(), "/users/stream", &[], &client.to_string());
    let ev = events(&r.text());
    assert_eq!(ev[0]["userName"], "ada");
    assert_eq!(ev[0]["homeAddress"]["streetName"], "Main");
    assert_eq!(ev[1], "[DONE]");
    assert!(r.text().starts_with("event: user\n"));
}

#[test]
fn a_failed_schema_check_is_a_400_with_the_field_path() {
    let (gw, up) = transform_gateway("check");
    for (body, path) in [
        (json!({"userName": 5}), "$.userName"),
        (json!({"homeAddress": {"streetName": "x"}}), "$.userName"),
        (
            json!({"userName": "a", "homeAddress": {"streetName": ["x"]}}),
            "$.homeAddress.streetName",
        ),
        (
            json!({"userName": "a", "loginCount": "two"}),
            "$.loginCount",
        ),
    ] {
        let r = post_json(gw.local_addr(), "/users/new", &[], &body.to_string());
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(json_of(&r)["error"]["param"], path, "{body}");
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn transform_and_provider_problems_are_config_problems() {
    let dir = temp_dir("config");
    std::fs::write(dir.join("users.yaml"), OPENAPI).unwrap();
    std::fs::write(dir.join("broken.yaml"), "components: [\n").unwrap();
    std::fs::write(
        dir.join("cycle.json"),
        r##"{"components":{"schemas":{"A":{"$ref":"#/components/schemas/B"},"B":{"$ref":"#/components/schemas/A"}}}}"##,
    )
    .unwrap();
    let base = "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[[upstreams]]\nname = \"u\"\nendpoints = [\"127.0.0.1:9\"]\n[[upstreams]]\nname = \"claude\"\nendpoints = [\"127.0.0.1:9\"]\nprovider = \"anthropic\"\n";
    let cases: &[(&str, &str, &str)] = &[
        ("[[transforms]]\nname = \"t\"\nopenapi = \"missing.yaml\"\nrequest_schema = \"A\"\n", "transforms[0].openapi", "cannot read"),
        ("[[transforms]]\nname = \"t\"\nopenapi = \"broken.yaml\"\nrequest_schema = \"A\"\n", "transforms[0].openapi", "not valid YAML"),
        ("[[transforms]]\nname = \"t\"\nopenapi = \"users.yaml\"\nrequest_schema = \"Nope\"\n", "transforms[0].request_schema", "no schema `Nope`"),
        ("[[transforms]]\nname = \"t\"\nopenapi = \"cycle.json\"\nresponse_schema = \"A\"\n", "transforms[0].response_schema", "cycle"),
        ("[[transforms]]\nname = \"t\"\nopenapi = \"users.yaml\"\n", "transforms[0]", "neither"),
        ("[[routes]]\npath = \"/x\"\nupstream = \"u\"\ntransform = \"ghost\"\n", "routes[0].transform", "no [[transforms]]"),
        ("[[transforms]]\nname = \"t\"\nopenapi = \"users.yaml\"\nrequest_schema = \"User\"\n[[routes]]\npath = \"/x\"\nupstream = \"claude\"\ntransform = \"t\"\n", "routes[0].transform", "anthropic"),
        ("[[upstreams]]\nname = \"o\"\nendpoints = [\"127.0.0.1:9\"]\ndefault_max_tokens = 5\n", "upstreams[2].default_max_tokens", "only with provider"),
        ("[[upstreams]]\nname = \"o\"\nendpoints = [\"127.0.0.1:9\"]\nprovider = \"anthropic\"\nanthropic_version = \"2023 06\"\ndefault_max_tokens = 0\n", "upstreams[2].anthropic_version", "header value"),
        ("[[upstreams]]\nname = \"o\"\nendpoints = [\"127.0.0.1:9\"]\nprovider = \"anthropic\"\ndefault_max_tokens = 0\n", "upstreams[2].default_max_tokens", "greater than 0"),
    ];
    for (extra, key, why) in cases {
        let problems =
            shardgate::config::from_str(&format!("{base}{extra}"), &dir, 1).expect_err(extra);
        let p = problems
            .iter()
            .find(|p| p.key == *key)
            .unwrap_or_else(|| panic!("{key} not in {problems:?}"));
        assert!(p.message.contains(why), "{key}: {}", p.message);
    }
    let problems = shardgate::config::from_str(&format!("{base}[[upstreams]]\nname = \"o\"\nendpoints = [\"127.0.0.1:9\"]\nprovider = \"antropic\"\n"), &dir, 1).unwrap_err();
    assert!(
        problems[0].key.starts_with("upstreams[2].provider"),
        "{problems:?}"
    );
    // A good one builds.
    let ok = format!("{base}[[transforms]]\nname = \"t\"\nopenapi = \"users.yaml\"\nrequest_schema = \"CreateUser\"\n[[routes]]\npath = \"/x\"\nupstream = \"u\"\ntransform = \"t\"\n");
    let s = shardgate::config::from_str(&ok, &dir, 1).unwrap();
    assert_eq!(s.transforms.list().len(), 1);
}
