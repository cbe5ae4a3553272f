//! Streams at scale (issue #13), the correctness half: many concurrent SSE streams through
//! the full pipeline (JWT, the body's `model` split 80/20, a per-subject quota, the access
//! log) all arrive whole and in order, each stream's usage is accounted, and no connection is
//! left open afterwards. The timing half (1,000 streams, the largest inter-event gap, RSS) is
//! for the lead's loadtest (README "io_uring settings and busy polling"); no timing is
//! asserted here.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const STREAMS: usize = 64;
const EVENTS: u32 = 16;

fn config(mock: std::net::SocketAddr, log: &std::path::Path) -> String {
    let deployments = deployment("m-a", "1.0.0", &[mock], "served_name = \"mock-a\"")
        + &deployment("m-b", "1.0.0", &[mock], "served_name = \"mock-b\"");
    let split = model_route(
        "/v1/chat/completions",
        r#"{ model = "m-a", weight = 80 }, { model = "m-b", weight = 20 }"#,
        "",
    );
    let quota = "[quota]\n".to_string()
        + &quota_rule(
            "per-subject",
            "subject",
            "requests_per_minute = 100000\ntokens_per_minute = 100000000",
        );
    format!(
        "{}{deployments}{split}{quota}[access_log]\npath = {:?}\nsample_rate = 1.0\n",
        auth_hs256(""),
        log.display().to_string()
    )
}

#[test]
fn many_concurrent_streams_arrive_whole_in_order_and_accounted() {
    let mock = shardgate_mock::spawn(
        shardgate_mock::MockConfig {
            stream_chunks: EVENTS,
            stream_gap_ms: 5,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        1,
    )
    .expect("mock starts");
    let dir = std::env::temp_dir().join(format!("shardgate-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let gw = gateway(&config(mock.addr(), &log));
    let addr = gw.local_addr();
    let start = Arc::new(Barrier::new(STREAMS));
    let handles: Vec<_> = (0..STREAMS)
        .map(|i| {
            let start = start.clone();
            thread::spawn(move || {
                let body = r#"{"model":"chat","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
                let req = format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\
                     content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    token(&format!("user-{}", i % 8)),
                    body.len()
                );
                let mut c = Client::connect(addr);
                start.wait();
                c.send(req.as_bytes());
                let r = c.read_response().expect("a response");
                assert_eq!(r.status, 200, "stream {i}: {}", r.text());
                let text = r.text();
                // Every event, in order, then the end.
                let mut at = 0;
                for k in 0..EVENTS {
                    let piece = format!("tok{k} ");
                    let found = text[at..]
                        .find(&piece)
                        .unwrap_or_else(|| panic!("stream {i}: {piece:?} missing or out of order: {text}"));
                    at += found + piece.len();
                }
                assert!(text[at..].contains("data: [DONE]"), "stream {i}: {text}");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    // Every stream was accounted once, with its usage (the access log line carries tokens).
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= STREAMS || Instant::now() > deadline {
            break lines;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), STREAMS, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["status"], 200, "{l}");
        assert!(
            v["completion_tokens"].as_u64().unwrap_or(0) > 0,
            "usage counted: {l}"
        );
    }
    let merged: u64 = gw.collect().iter().map(|w| w.requests()).sum();
    assert_eq!(merged, STREAMS as u64);
    // No client connection is left open once the clients are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open: u64 = gw.collect().iter().map(|w| w.connections_open).sum();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} connections still open");
        thread::sleep(Duration::from_millis(20));
    }
    drop(gw);
    drop(mock);
    let _ = std::fs::remove_dir_all(&dir);
}
