//! Endpoint choice through the running gateway: three mock endpoints behind one upstream or
//! deployment, each policy of `balance`, the fleet's merged load (two workers), affinity with
//! bounded loads, the load feed, and breakers and retries under every policy.
//!
//! The shares and rates these tests print are the numbers the README quotes; what they
//! assert is the property (the slow endpoint gets little, conversations stay home), never a
//! time.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use shardgate::breaker::StateKind;
use shardgate::config;
use shardgate_mock::{self as mock, MockConfig, MockHandle};

/// A mock named `name` (its `x-mock-model` header) answering after `latency_ms`.
fn mock_named(name: &str, latency_ms: u64) -> MockHandle {
    mock_jittered(name, latency_ms, 0)
}

/// ... after `latency_ms` plus up to `jitter_ms` more.
fn mock_jittered(name: &str, latency_ms: u64, jitter_ms: u64) -> MockHandle {
    let cfg = MockConfig {
        model: name.into(),
        latency_ms,
        jitter_ms,
        ..MockConfig::default()
    };
    mock::spawn(cfg, "127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

fn addrs(mocks: &[MockHandle]) -> Vec<SocketAddr> {
    mocks.iter().map(MockHandle::addr).collect()
}

/// Requests each mock served since `before`.
fn served(mocks: &[MockHandle], before: &[u64]) -> Vec<u64> {
    mocks
        .iter()
        .zip(before)
        .map(|(m, b)| m.requests() - b)
        .collect()
}

fn counts(mocks: &[MockHandle]) -> Vec<u64> {
    mocks.iter().map(MockHandle::requests).collect()
}

/// Polls `cond` every 20 ms for up to `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// `threads` clients, each on its own keep-alive connection, each sending `each` chat
/// requests one after the other; every answer must be a 200.
fn closed_loop(addr: SocketAddr, threads: usize, each: usize) {
    let body = chat_body("m");
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let body = body.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..each {
                    let r = chat(&mut c, &body, &[]);
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// One chat completion on the raw keep-alive connection `c`, with `headers` (`name: value`
/// lines without CRLF).
fn chat(c: &mut Client, body: &str, headers: &[String]) -> Response {
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.send(req.as_bytes());
    c.read_response().expect("a response")
}

#[test]
fn load_aware_policies_send_the_slow_endpoint_a_small_share() {
    // Two fast endpoints and one 50× slower; eight clients in a closed loop.
    let mocks = [
        mock_named("fast-a", 1),
        mock_named("fast-b", 1),
        mock_named("slow", 50),
    ];
    let mut report = Vec::new();
    for policy in ["round_robin", "least_requests", "p2c_ewma"] {
        let gw = gateway(
            &(upstream("up", &addrs(&mocks), &format!("balance = \"{policy}\""))
                + &route("/*rest", "up", "")),
        );
        let before = counts(&mocks);
        closed_loop(gw.local_addr(), 8, 30);
        let got = served(&mocks, &before);
        let total: u64 = got.iter().sum();
        assert_eq!(total, 240, "{policy}: {got:?}");
        let slow = got[2] as f64 / total as f64;
        report.push(format!(
            "{policy}: slow endpoint {:.1}% ({got:?})",
            slow * 100.0
        ));
        match policy {
            // Each worker takes the endpoints in turn: a third each.
            "round_robin" => assert!((0.25..=0.42).contains(&slow), "{policy}: {got:?}"),
            _ => assert!(slow < 0.2, "{policy}: {got:?}"),
        }
    }
    println!(
        "share of requests to the slow endpoint, 8 clients: {}",
        report.join("; ")
    );
}

/// A conversation's request body at turn `turn` (0-based): the same system prompt and first
/// user message, then the turns so far.
fn conversation(i: usize, turn: usize) -> String {
    let mut messages = vec![
        r#"{"role":"system","content":"You are a concise assistant for the balance test."}"#
            .to_string(),
        format!(r#"{{"role":"user","content":"Conversation {i}: what is consistent hashing?"}}"#),
    ];
    for t in 1..=turn {
        messages.push(format!(r#"{{"role":"assistant","content":"Answer {t}."}}"#));
        messages.push(format!(
            r#"{{"role":"user","content":"Follow-up {t} of {i}."}}"#
        ));
    }
    format!(r#"{{"model":"m","messages":[{}]}}"#, messages.join(","))
}

#[test]
fn affinity_keeps_conversations_home_within_the_load_bound() {
    const CONVERSATIONS: usize = 200;
    const TURNS: usize = 10;
    // Answers take 100 to 300 ms, so the conversations do not march in step and nearly all
    // of them are in flight at any time.
    let mocks = [
        mock_jittered("ep0", 100, 200),
        mock_jittered("ep1", 100, 200),
        mock_jittered("ep2", 100, 200),
    ];
    let gw = gateway(
        &(deployment(
            "m",
            "1.0.0",
            &addrs(&mocks),
            "balance = \"affinity\"\naffinity = { key = \"prompt\", load_factor = 1.25 }",
        ) + &model_route("/v1/chat/completions", "{ model = \"m\", weight = 1 }", "")),
    );
    let addr = gw.local_addr();
    // Every conversation at once, each on its own connection, turn after turn; the first
    // turns arrive within 50 ms.
    let start = Arc::new(Barrier::new(CONVERSATIONS));
    let convs: Vec<_> = (0..CONVERSATIONS)
        .map(|i| {
            let start = start.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                start.wait();
                thread::sleep(Duration::from_micros(250 * i as u64));
                (0..TURNS)
                    .map(|turn| {
                        let r = chat(&mut c, &conversation(i, turn), &[]);
                        assert_eq!(r.status, 200, "{}", r.text());
                        let ep = r.header("x-mock-model").expect("the mock's name");
                        ep.trim_start_matches("ep").parse::<usize>().unwrap()
                    })
                    .collect::<Vec<usize>>()
            })
        })
        .collect();
    let mut served = [0u32; 3];
    let mut kept = 0;
    for t in convs {
        let mut by_endpoint = [0u32; 3];
        for ep in t.join().unwrap() {
            by_endpoint[ep] += 1;
            served[ep] += 1;
        }
        kept += by_endpoint.iter().max().unwrap();
    }
    let turns = (CONVERSATIONS * TURNS) as f64;
    let kept = f64::from(kept) / turns;
    let busiest = f64::from(*served.iter().max().unwrap()) / (turns / 3.0);
    println!(
        "affinity (prompt key, load_factor 1.25), {CONVERSATIONS} conversations x {TURNS} \
         turns at once: {:.1}% of turns on their conversation's endpoint, busiest endpoint \
         {busiest:.2}x the mean ({served:?})",
        kept * 100.0
    );
    assert!(kept >= 0.95, "{kept}: {served:?}");
    assert!(busiest <= 1.25, "{served:?}");
}

/// The endpoint (mock name) each of `sessions` lands on, one request at a time.
fn homes(addr: SocketAddr, sessions: usize) -> Vec<String> {
    let mut c = Client::connect(addr);
    let body = chat_body("m");
    (0..sessions)
        .map(|s| {
            let r = chat(&mut c, &body, &[format!("x-session-id: session-{s}")]);
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("x-mock-model").unwrap().to_string()
        })
        .collect()
}

#[test]
fn removing_an_endpoint_moves_only_its_keys() {
    let mocks = [mock_named("a", 0), mock_named("b", 0), mock_named("c", 0)];
    let keys = "balance = \"affinity\"\naffinity = { key = { header = \"x-session-id\" } }";
    let config =
        |endpoints: &[SocketAddr]| upstream("up", endpoints, keys) + &route("/*rest", "up", "");
    // One worker, one request at a time: every key goes to its own endpoint on the ring.
    let server = "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false";
    let gw = gateway_with(server, &config(&addrs(&mocks)));
    let before = homes(gw.local_addr(), 300);
    assert_eq!(before, homes(gw.local_addr(), 300), "keys are stable");
    let text = format!("[server]\n{server}\n{}", config(&addrs(&mocks)[..2]));
    let fewer = config::from_str(&text, std::path::Path::new("."), 2).unwrap();
    gw.apply(&fewer);
    gw.inboxes().barrier(Duration::from_secs(5)).unwrap();
    let after = homes(gw.local_addr(), 300);
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b == "c" {
            moved += 1;
            assert_ne!(a, "c");
        } else {
            assert_eq!(a, b, "a key of a remaining endpoint moved");
        }
    }
    let share = f64::from(moved) / 300.0;
    println!(
        "removing 1 of 3 endpoints moved {:.1}% of 300 keys",
        share * 100.0
    );
    assert!((0.2..=0.45).contains(&share), "{share}");
}

/// Small breaker windows, breakers that open on three failures in a row, and a retry budget
/// that never runs out.
const FAST_BREAKER: &str = r#"[defaults.breaker]
consecutive_failures = 3
min_calls = 1000
window_ms = 2000
open_base_ms = 60000
open_jitter = 0.0
[defaults.retry]
budget_ratio = 1.0
min_retries_per_sec = 1000
"#;

#[test]
fn every_policy_retries_elsewhere_and_skips_an_open_endpoint() {
    let mocks = [mock_named("a", 0), mock_named("b", 0), mock_named("c", 0)];
    for policy in [
        "balance = \"round_robin\"",
        "balance = \"least_requests\"",
        "balance = \"p2c_ewma\"",
        "balance = \"affinity\"\naffinity = { key = { header = \"x-session-id\" } }",
    ] {
        mocks[0].set_fail_status(Some(503));
        let gw = gateway(&format!(
            "{FAST_BREAKER}{}{}",
            upstream("up", &addrs(&mocks), policy),
            route("/*rest", "up", "retryable = true")
        ));
        let mut c = Client::connect(gw.local_addr());
        let body = chat_body("m");
        let mut session = 0;
        let mut send = |c: &mut Client| {
            session += 1;
            chat(c, &body, &[format!("x-session-id: s-{session}")])
        };
        // Until A's breaker opens every request still succeeds: an attempt A answers with
        // 503 is retried on another endpoint.
        let open = eventually(Duration::from_secs(10), || {
            let r = send(&mut c);
            assert_eq!(r.status, 200, "{policy}: {}", r.text());
            let b = gw.breakers().expect("breaker snapshot");
            b.endpoints[0].state == StateKind::Open
        });
        assert!(open, "{policy}: A's breaker opens");
        // The decision reaches both workers within a few ticks; then A gets nothing.
        thread::sleep(Duration::from_millis(100));
        let before = mocks[0].requests();
        for _ in 0..60 {
            let r = send(&mut c);
            assert_eq!(r.status, 200, "{policy}: {}", r.text());
        }
        assert_eq!(
            mocks[0].requests(),
            before,
            "{policy}: traffic to an open endpoint"
        );
        drop(gw);
        mocks[0].set_fail_status(None);
    }
}

#[test]
fn the_load_feed_steers_traffic_away_from_a_queueing_server() {
    let mocks = [mock_named("a", 0), mock_named("b", 0), mock_named("c", 0)];
    mocks[1].set_waiting(1000);
    let gw = gateway(
        &(upstream(
            "up",
            &addrs(&mocks),
            "balance = \"least_requests\"\nload_metric = { gauge = \"vllm:num_requests_waiting\", interval_ms = 50 }",
        ) + &route("/*rest", "up", "")),
    );
    let addr = gw.local_addr();
    let body = chat_body("m");
    let mut c = Client::connect(addr);
    // A batch of requests that all avoid `avoid` (scrapes and requests both count on the
    // mocks, so the batch is judged by the answering mock's name).
    let mut avoids = |avoid: &str, n: usize| {
        (0..n).all(|_| {
            let r = chat(&mut c, &body, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("x-mock-model") != Some(avoid)
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || avoids("b", 30)),
        "B's queue steers traffic away once scraped"
    );
    assert!(avoids("b", 60));
    mocks[1].set_waiting(0);
    mocks[0].set_waiting(1000);
    assert!(
        eventually(Duration::from_secs(10), || avoids("a", 30)),
        "then A's"
    );
    assert!(avoids("a", 60));
}
