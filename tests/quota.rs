//! Quotas through the running gateway: two workers share one limit exactly.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;

fn quota_config(up: std::net::SocketAddr, rpm: u32) -> String {
    format!(
        "{}\n[quota]\n{}",
        route_all(up, ""),
        quota_rule(
            "per-ip",
            "client_ip",
            &format!("requests_per_minute = {rpm}")
        )
    )
}

#[test]
fn two_workers_admit_exactly_the_limit() {
    let up = Upstream::echo();
    let gw = gateway(&quota_config(up.addr, 100));
    let addr = gw.local_addr();
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let burst = || {
        // Many connections, spread over both workers by SO_REUSEPORT, hammer one key.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (ok, limited) = (ok.clone(), limited.clone());
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    for _ in 0..40 {
                        c.send(b"GET /q HTTP/1.1\r\nHost: gw\r\n\r\n");
                        let r = c.read_response().unwrap();
                        match r.status {
                            200 => {
                                assert!(r.header("x-ratelimit-limit") == Some("100"));
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            429 => {
                                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                                assert!((1..=61).contains(&retry), "retry-after {retry}");
                                assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
                                assert!(r.text().contains("rate_limit_exceeded"));
                                limited.fetch_add(1, Ordering::Relaxed);
                            }
                            s => panic!("unexpected status {s}: {}", r.text()),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    // A lease a core did not use is returned when its 600 ms slot ends, so bursts a slot apart
    // reach the whole limit; no burst may push the total past it.
    for _ in 0..5 {
        burst();
        let admitted = ok.load(Ordering::Relaxed);
        assert!(admitted <= 100, "over the limit: {admitted}");
        if admitted == 100 {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(700));
    }
    assert_eq!(
        ok.load(Ordering::Relaxed),
        100,
        "exactly the limit is admitted"
    );
    assert!(limited.load(Ordering::Relaxed) >= 220);
    let m = gw.collect();
    assert!(
        m.iter().all(|w| w.requests() > 0),
        "both workers served requests"
    );
}

fn token_config(mock: std::net::SocketAddr, tpm: u32) -> String {
    format!(
        "{}[quota]\n{}",
        chat_model(mock),
        quota_rule(
            "tokens",
            "client_ip",
            &format!("requests_per_minute = 1000\ntokens_per_minute = {tpm}")
        )
    )
}

fn chat(addr: std::net::SocketAddr, body: &str) -> Response {
    post_json(addr, "/v1/chat/completions", &[], body)
}

#[test]
fn token_limit_uses_the_backends_usage() {
    let mock =
        shardgate_mock::spawn(Default::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let gw = gateway_with(
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false",
        &token_config(mock.addr(), 100),
    );
    // The mock reports prompt ⌈bytes/4⌉ + completion `max_tokens` tokens: 1 + 30 here.
    let body = r#"{"model":"m","max_tokens":30,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut admitted = 0;
    let mut last = None;
    for _ in 0..10 {
        let r = chat(gw.local_addr(), body);
        match r.status {
            200 => admitted += 1,
            429 => {
                assert!(r.text().contains("token rate limit"), "{}", r.text());
                last = Some(r);
                break;
            }
            s => panic!("status {s}: {}", r.text()),
        }
    }
    // Admitted while tokens are left: 100 → 69 → 38 → 7 → -24 (the overrun the docs bound).
    // Usage is charged when a response ends and a core holds tokens in lease-sized pieces,
    // so one more request may slip in before the overrun is known: the bounded overrun the
    // quota docs describe.
    assert!((4..=5).contains(&admitted), "admitted {admitted}");
    assert!(last.is_some(), "the token limit was never hit");
    let m = gw.collect();
    let used: u64 = m
        .iter()
        .map(|w| {
            w.counters
                .get(&shardgate::metrics::counters::TOKENS, &["anonymous", "m"])
        })
        .sum();
    assert_eq!(used, admitted as u64 * 31);
}

#[test]
fn streamed_usage_is_counted_and_hidden_from_clients_that_did_not_ask() {
    let mock =
        shardgate_mock::spawn(Default::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let gw = gateway_with(
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false",
        &token_config(mock.addr(), 100_000),
    );
    let r = chat(
        gw.local_addr(),
        r#"{"model":"m","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("[DONE]"), "{text}");
    assert!(
        !text.contains("\"usage\":{"),
        "usage event leaked to a client that did not ask: {text}"
    );
    let r = chat(
        gw.local_addr(),
        r#"{"model":"m","stream":true,"max_tokens":5,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert!(
        r.text().contains("\"usage\":{"),
        "a client that asked gets the usage event"
    );
    let m = gw.collect();
    let used: u64 = m
        .iter()
        .map(|w| {
            w.counters
                .get(&shardgate::metrics::counters::TOKENS, &["anonymous", "m"])
        })
        .sum();
    assert_eq!(used, 2 * 6, "both streams counted from the backend's usage");
}

/// A gateway on `workers` cores limiting each JWT subject to `tpm` tokens a minute.
fn subject_token_gateway(
    workers: usize,
    tpm: u32,
    reserve: bool,
) -> (shardgate_mock::MockHandle, shardgate::runtime::Engine) {
    let mock =
        shardgate_mock::spawn(Default::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let rest = format!(
        "{}{}[quota]\n{}",
        chat_model(mock.addr()),
        auth_hs256(""),
        quota_rule(
            "tokens",
            "subject",
            &format!(
                "requests_per_minute = 1000\ntokens_per_minute = {tpm}\nreserve_max_tokens = {reserve}"
            )
        )
    );
    let gw = gateway_with(
        &format!("listen = \"127.0.0.1:0\"\nworkers = {workers}\npin = false"),
        &rest,
    );
    (mock, gw)
}

/// Issue 11, item 6: 100 tokens a minute, requests that use 55 (prompt "hi" = 1 + `max_tokens`
/// 54) sent one at a time, 100 ms apart, by many subjects at different phases of the 600 ms
/// slots; on one worker (one keep-alive connection per subject) and on two (a new connection
/// per request, so SO_REUSEPORT spreads a subject's requests over both cores); JSON and SSE.
///
/// The bound asserted, per subject and window: a request is admitted only while the tokens
/// already charged are below the limit, so what is charged is at most `limit − 1` plus one
/// response (154 here): exactly two 200s (110 tokens), then only 429s — never a third 200 and
/// never a 200 after a 429. With `reserve_max_tokens` a request is admitted only if its
/// `max_tokens` (54) still fits: exactly one 200 (55 tokens, 1 over what it reserved).
#[test]
fn sequential_55_token_requests_never_overrun_the_limit() {
    const SUBJECTS: usize = 12;
    const SENDS: usize = 6;
    let gap = std::time::Duration::from_millis(100);
    for workers in [1, 2] {
        for stream in [false, true] {
            for reserve in [false, true] {
                let (_mock, gw) = subject_token_gateway(workers, 100, reserve);
                let addr = gw.local_addr();
                let stream_field = if stream { r#""stream":true,"# } else { "" };
                let body = format!(
                    r#"{{"model":"m",{stream_field}"max_tokens":54,"messages":[{{"role":"user","content":"hi"}}]}}"#
                );
                let threads: Vec<_> = (0..SUBJECTS)
                    .map(|i| {
                        let body = body.clone();
                        thread::spawn(move || {
                            // Phases spread over a slot and a half.
                            thread::sleep(std::time::Duration::from_millis(73 * i as u64));
                            let sub = format!("subject-{workers}-{stream}-{reserve}-{i}");
                            let req = format!(
                                "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\
                                 Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
                                token(&sub),
                                body.len()
                            );
                            let mut keep = None;
                            let mut statuses = Vec::new();
                            for _ in 0..SENDS {
                                if workers == 2 || keep.is_none() {
                                    keep = Some(Client::connect(addr));
                                }
                                let c = keep.as_mut().unwrap();
                                c.send(req.as_bytes());
                                let r = c.read_response().unwrap();
                                match r.status {
                                    200 if stream => assert!(r.text().contains("[DONE]")),
                                    200 => assert!(r.text().contains("\"total_tokens\":55")),
                                    429 => {
                                        assert!(
                                            r.text().contains("token rate limit"),
                                            "{}",
                                            r.text()
                                        );
                                        let retry: u64 =
                                            r.header("retry-after").unwrap().parse().unwrap();
                                        assert!((1..=61).contains(&retry), "retry-after {retry}");
                                    }
                                    s => panic!("status {s}: {}", r.text()),
                                }
                                statuses.push(r.status);
                                // 100 ms from one response to the next request: a stream
                                // lasts about as long as that (8 events 10 ms apart).
                                thread::sleep(gap);
                            }
                            (sub, statuses)
                        })
                    })
                    .collect();
                let admitted = if reserve { 1 } else { 2 };
                let mut want = vec![200; admitted];
                want.resize(SENDS, 429);
                for t in threads {
                    let (sub, statuses) = t.join().unwrap();
                    assert_eq!(
                        statuses, want,
                        "{sub}: {workers} worker(s), stream {stream}, reserve {reserve}"
                    );
                }
                let m = gw.collect();
                let charged: u64 = m
                    .iter()
                    .map(|w| {
                        (0..SUBJECTS)
                            .map(|i| {
                                let sub = format!("subject-{workers}-{stream}-{reserve}-{i}");
                                w.counters.get(
                                    &shardgate::metrics::counters::TOKENS,
                                    &[sub.as_str(), "m"],
                                )
                            })
                            .sum::<u64>()
                    })
                    .sum();
                assert_eq!(
                    charged,
                    (SUBJECTS * admitted * 55) as u64,
                    "{workers} worker(s), stream {stream}, reserve {reserve}: tokens charged"
                );
                if workers == 2 {
                    assert!(
                        m.iter().all(|w| w.requests() > 0),
                        "both workers served the subjects"
                    );
                }
            }
        }
    }
}

/// The access log carries what the stages learned: the verified subject, the model quotas and
/// token counts went by, and the tokens the response used (JSON and streamed).
#[test]
fn access_log_lines_carry_subject_model_and_tokens() {
    let mock =
        shardgate_mock::spawn(Default::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let dir = std::env::temp_dir().join(format!("sg-facts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.jsonl");
    let _ = std::fs::remove_file(&log);
    let rest = format!(
        "{}{}[access_log]\npath = \"{}\"\nsample_rate = 1.0\n",
        chat_model(mock.addr()),
        auth_hs256(""),
        log.display()
    );
    let mut gw = gateway_in(
        &dir,
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false",
        &rest,
    );
    let token = token("alice");
    let mut c = Client::connect(gw.local_addr());
    for body in [
        r#"{"model":"m","max_tokens":7,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    ] {
        c.send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(c.read_response().unwrap().status, 200);
    }
    // An unauthenticated request: logged, with no subject.
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(c.read_response().unwrap().status, 401);
    drop(c);
    gw.shutdown();
    let written = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{written}");
    // The mock counts the prompt "hi" as 1 token and answers `max_tokens` completion tokens.
    for (line, tokens) in lines.iter().zip([8, 6]) {
        assert_eq!(line["subject"], "alice", "{line}");
        assert_eq!(line["model"], "m", "{line}");
        assert_eq!(line["tokens"], tokens, "{line}");
    }
    assert_eq!(lines[2]["status"], 401);
    assert!(lines[2]["subject"].is_null(), "{}", lines[2]);
    assert!(!written.contains(&token));
    let _ = std::fs::remove_dir_all(&dir);
}
