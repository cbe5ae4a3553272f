//! Spend accounting and budgets through the real gateway on loopback: a scripted upstream
//! reports usage (JSON and streamed, with cached tokens); the gateway prices it, keeps it
//! per subject × tenant × model across restarts (`spend.file`), shows it in `/stats`,
//! `/metrics` and the access log, and enforces budgets with 429 `budget_exceeded`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use shardgate::admin::{Admin, AdminState};
use shardgate::config;
use shardgate::control::{self, Control, Start};
use shardgate::runtime::Engine;

/// GPT-4o's list prices per million tokens: input, output, cached input.
const PRICES: &str = "[spend]\ncurrency = \"USD\"\nflush_interval_ms = 50\n\
    [[spend.prices]]\nmodel = \"m\"\ninput = 2.5\noutput = 10.0\ncached_input = 1.25\n";

/// The cost in pico-units of (prompt, completion, cached) at [`PRICES`].
fn cost(p: u64, c: u64, k: u64) -> u128 {
    u128::from(p - k) * 2_500_000 + u128::from(k) * 1_250_000 + u128::from(c) * 10_000_000
}

/// An upstream that answers a chat completion with the usage named by the request's
/// `x-test-usage: prompt,completion,cached` header, as JSON or (for `"stream":true`) as an
/// SSE stream whose last event carries it. `served` counts the answers.
fn usage_upstream(served: Arc<AtomicU64>) -> Upstream {
    Upstream::start(move |mut c| {
        while let Some(req) = c.read_request() {
            served.fetch_add(1, Ordering::Relaxed);
            let usage = req.header("x-test-usage").unwrap_or("1,1,0").to_owned();
            let n: Vec<u64> = usage.split(',').map(|v| v.parse().unwrap()).collect();
            let usage = format!(
                r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":{}}}}}"#,
                n[0],
                n[1],
                n[0] + n[1],
                n[2]
            );
            let body = String::from_utf8_lossy(&req.body).into_owned();
            if body.contains("\"stream\":true") {
                let events = [
                    r#"data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hello"}}]}"#
                        .to_owned()
                        + "\n\n",
                    format!("data: {{\"id\":\"c\",\"choices\":[],\"usage\":{usage}}}\n\n"),
                    "data: [DONE]\n\n".to_owned(),
                ];
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                for e in events {
                    out.push_str(&format!("{:x}\r\n{e}\r\n", e.len()));
                }
                out.push_str("0\r\n\r\n");
                c.write(out.as_bytes());
            } else {
                let body = format!(
                    r#"{{"id":"c","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}}}}],"usage":{usage}}}"#
                );
                c.write(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        }
    })
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-spend-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The config: model `m` at `up`, JWT auth with tenant claim `org`, `extra` tables.
fn config_text(up: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{}{}{PRICES}{extra}",
        chat_model(up),
        auth_hs256("tenant_claim = \"org\"\n"),
    )
}

fn start(dir: &Path, text: &str) -> Engine {
    let cfg = dir.join("gw.toml");
    std::fs::write(&cfg, text).unwrap();
    Engine::start(config::load(&cfg, 1).unwrap()).expect("engine starts")
}

/// A token of `sub` in tenant `org`.
fn caller(sub: &str, org: &str) -> String {
    hs256(&format!(
        r#"{{"sub":"{sub}","org":"{org}","exp":{}}}"#,
        unix_now() + 600
    ))
}

/// One chat completion of `sub`/`org` that uses (prompt, completion, cached).
fn chat(addr: SocketAddr, token: &str, stream: bool, usage: (u64, u64, u64)) -> Response {
    let body = if stream {
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#.to_owned()
    } else {
        chat_body("m")
    };
    let (a, b) = bearer(token);
    let u = format!("{},{},{}", usage.0, usage.1, usage.2);
    post_json(
        addr,
        "/v1/chat/completions",
        &[(a, &b), ("x-test-usage", &u)],
        &body,
    )
}

fn ledger(engine: &Engine) -> shardgate::spend::Ledger {
    let tx = engine.spend_sender().expect("a spend thread");
    // Workers send their spend every 100 ms: wait until what was served has arrived.
    control::spend::ledger(&tx, Duration::from_secs(10)).unwrap()
}

/// Waits until the ledger counts `requests` requests.
fn ledger_with(engine: &Engine, requests: u64) -> shardgate::spend::Ledger {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let l = ledger(engine);
        if l.total().requests >= requests || std::time::Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The known mix: JSON and streamed responses, with and without cached tokens, the stream
/// with and without the client asking for usage itself. Spend is the exact sum of usage ×
/// price, per subject, tenant and model, in the ledger, `/stats`, `/metrics` and the access
/// log.
#[test]
fn spend_is_the_sum_of_usage_times_price_for_a_known_mix() {
    let dir = temp_dir("mix");
    let up = usage_upstream(Arc::default());
    let log = dir.join("access.jsonl");
    let admin_token = "an-admin-token-for-spend-tests";
    let text = config_text(
        up.addr,
        &format!(
            "[access_log]\npath = \"{}\"\n{}",
            log.display(),
            admin_listen("127.0.0.1:0".parse().unwrap(), admin_token)
        ),
    );
    let cfg = dir.join("gw.toml");
    std::fs::write(&cfg, &text).unwrap();
    let snap = config::load(&cfg, 1).unwrap();
    let engine = Engine::start(snap.clone()).unwrap();
    let control = Control::spawn(Start::new(cfg.clone(), snap, engine.inboxes())).unwrap();
    let admin = Admin::start(
        "127.0.0.1:0".parse().unwrap(),
        AdminState {
            workers: engine.inboxes(),
            control: Some(control.sender()),
            view: control.view(),
            breakers: engine.coord_sender(),
            spend: engine.spend_sender(),
        },
    )
    .unwrap();
    let addr = engine.local_addr();
    let (alice, bob) = (caller("alice", "acme"), caller("bob", "globex"));
    let mix: [(&str, bool, (u64, u64, u64)); 6] = [
        (&alice, false, (1_000, 200, 0)),
        (&alice, false, (2_006, 300, 1_920)),
        (&alice, true, (500, 50, 256)),
        (&bob, true, (10, 5, 0)),
        (&bob, false, (7, 3, 7)),
        (&bob, true, (123_456, 7_890, 100_000)),
    ];
    for (token, stream, usage) in mix {
        let r = chat(addr, token, stream, usage);
        assert_eq!(r.status, 200, "{}", r.text());
        if stream {
            // The gateway asked for usage on the client's behalf and hid the event.
            assert!(!r.text().contains("usage"), "{}", r.text());
        }
    }
    let want = |who: &str| -> u128 {
        let token = if who == "alice" { &alice } else { &bob };
        mix.iter()
            .filter(|(t, ..)| t == token)
            .map(|&(_, _, (p, c, k))| cost(p, c, k))
            .sum()
    };
    let l = ledger_with(&engine, 6);
    let total: u128 = mix.iter().map(|&(_, _, (p, c, k))| cost(p, c, k)).sum();
    assert_eq!(l.total().pico, total);
    assert_eq!(l.total().requests, 6);
    let sum = |f: fn(&(u64, u64, u64)) -> u64| mix.iter().map(|m| f(&m.2)).sum::<u64>();
    assert_eq!(l.total().prompt_tokens, sum(|u| u.0));
    assert_eq!(l.total().completion_tokens, sum(|u| u.1));
    assert_eq!(l.total().cached_tokens, sum(|u| u.2));
    let by_subject = l.by(|n| &n.subject);
    assert_eq!(by_subject["alice"].pico, want("alice"));
    assert_eq!(by_subject["bob"].pico, want("bob"));
    assert_eq!(l.by(|n| &n.tenant)["acme"].pico, want("alice"));
    assert_eq!(l.by(|n| &n.model)["m"].pico, total);

    // /stats shows the same, as exact decimals of the currency.
    let (a, b) = bearer(admin_token);
    let stats = get_with(admin.local_addr(), "/stats", &[(a, &b)]);
    let v: Value = serde_json::from_slice(&stats.body).unwrap();
    let spend = &v["spend"];
    assert_eq!(spend["currency"], "USD");
    let micros = |p: u128| u64::try_from(p / 1_000_000).unwrap();
    assert_eq!(spend["total"]["spend_micros"], micros(total));
    assert_eq!(
        spend["by_subject"]["alice"]["spend_micros"],
        micros(want("alice"))
    );
    assert_eq!(
        spend["by_tenant"]["globex"]["spend_micros"],
        micros(want("bob"))
    );
    assert_eq!(spend["by_model"]["m"]["cached_tokens"], sum(|u| u.2));
    // /metrics: one counter per series, in currency units.
    let metrics = get_with(admin.local_addr(), "/metrics", &[(a, &b)]).text();
    let mut alice_spend = String::new();
    shardgate::spend::price::write_decimal(&mut alice_spend, want("alice"), 12);
    let row = format!(
        "shardgate_spend_total{{currency=\"USD\",subject=\"alice\",tenant=\"acme\",model=\"m\"}} {alice_spend}\n"
    );
    assert!(metrics.contains(&row), "{row} not in\n{metrics}");
    assert!(metrics.contains(
        "shardgate_usage_tokens_total{subject=\"bob\",tenant=\"globex\",model=\"m\",kind=\"cached\"} 100007\n"
    ));

    // The access log carries each request's parts and cost.
    drop(admin);
    drop(control);
    drop(engine);
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    let mut logged: Vec<(u64, u64, u64, String)> = lines
        .iter()
        .map(|v| {
            assert_eq!(v["model"], "m");
            assert!(v["tenant"] == "acme" || v["tenant"] == "globex", "{v}");
            (
                v["prompt_tokens"].as_u64().unwrap(),
                v["completion_tokens"].as_u64().unwrap(),
                v["cached_tokens"].as_u64().unwrap(),
                v["spend"].to_string(),
            )
        })
        .collect();
    logged.sort();
    let mut expected: Vec<(u64, u64, u64, String)> = mix
        .iter()
        .map(|&(_, _, (p, c, k))| {
            let mut s = String::new();
            shardgate::spend::price::write_decimal(&mut s, cost(p, c, k), 12);
            (p, c, k, s)
        })
        .collect();
    expected.sort();
    // serde_json prints the 12-decimal number back as a float: compare by value.
    for (l, e) in logged.iter().zip(&expected) {
        assert_eq!((l.0, l.1, l.2), (e.0, e.1, e.2));
        let (got, want): (f64, f64) = (l.3.parse().unwrap(), e.3.parse().unwrap());
        assert!((got - want).abs() <= want * 1e-12, "{l:?} vs {e:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Spend is written to `spend.file` and read back by the next process: a restart keeps it,
/// and later spend adds to it.
#[test]
fn a_restart_keeps_spend() {
    let dir = temp_dir("restart");
    let up = usage_upstream(Arc::default());
    let file = dir.join("spend.json");
    let text = config_text(up.addr, "").replace(
        "flush_interval_ms = 50",
        &format!("flush_interval_ms = 50\nfile = \"{}\"", file.display()),
    );
    let alice = caller("alice", "acme");
    let engine = start(&dir, &text);
    for _ in 0..3 {
        assert_eq!(
            chat(engine.local_addr(), &alice, false, (100, 10, 40)).status,
            200
        );
    }
    assert_eq!(ledger_with(&engine, 3).total().requests, 3);
    drop(engine);
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["series"][0]["subject"], "alice");
    assert_eq!(
        saved["series"][0]["pico"],
        (3 * cost(100, 10, 40)).to_string()
    );

    let engine = start(&dir, &text);
    let l = ledger(&engine);
    assert_eq!(l.total().pico, 3 * cost(100, 10, 40), "the restart kept it");
    assert_eq!(
        chat(engine.local_addr(), &alice, true, (100, 10, 40)).status,
        200
    );
    let l = ledger_with(&engine, 4);
    assert_eq!(l.total().pico, 4 * cost(100, 10, 40));
    drop(engine);
    // A file that is not a ledger stops the start instead of being overwritten.
    std::fs::write(&file, b"{ not a ledger").unwrap();
    let cfg = dir.join("gw.toml");
    let err = Engine::start(config::load(&cfg, 1).unwrap())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("spend.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The budget header lines of a response.
fn budget_lines<'a>(r: &'a Response, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A tenant's token and currency budget: remaining shown per unit, the soft limit warns,
/// the hard limit answers 429 `budget_exceeded` with the reset time (the next midnight UTC),
/// other tenants are not touched, and a restart keeps the day's use.
#[test]
fn budgets_warn_then_refuse_and_survive_a_restart() {
    let dir = temp_dir("budget");
    let served = Arc::new(AtomicU64::new(0));
    let up = usage_upstream(served.clone());
    let file = dir.join("spend.json");
    // 1000 tokens a day; $0.01 a day; warn from 50 %.
    let text = config_text(
        up.addr,
        "[budgets]\n[[budgets.rules]]\nname = \"team\"\nkey = \"tenant\"\nperiod = \"day\"\n\
         tokens = 1000\nspend = 0.01\nsoft_limit = 0.5\n",
    )
    .replace(
        "flush_interval_ms = 50",
        &format!("flush_interval_ms = 50\nfile = \"{}\"", file.display()),
    );
    let (alice, carol) = (caller("alice", "acme"), caller("carol", "acme"));
    let engine = start(&dir, &text);
    let addr = engine.local_addr();
    // 300 tokens and $0.001125 a request: the tokens run out first (at the 4th request).
    let usage = (250, 50, 0);
    let r = chat(addr, &alice, false, usage);
    assert_eq!(r.status, 200);
    let remaining = budget_lines(&r, "x-shardgate-budget-remaining");
    assert_eq!(remaining.len(), 2, "{:?}", r.headers);
    assert!(remaining[0].starts_with("team; tokens="), "{remaining:?}");
    assert!(remaining[1].starts_with("team; spend=0.0"), "{remaining:?}");
    assert!(budget_lines(&r, "x-shardgate-budget-warning").is_empty());
    let mut statuses = Vec::new();
    let mut warned = false;
    for token in [&carol, &alice, &carol, &alice, &carol] {
        let r = chat(addr, token, false, usage);
        warned |= budget_lines(&r, "x-shardgate-budget-warning").contains(&"team; tokens");
        statuses.push(r.status);
        if r.status == 429 {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["error"]["type"], "budget_exceeded", "{v}");
            assert_eq!(r.header("x-shardgate-budget"), Some("team; tokens"));
            let reset = r.header("x-shardgate-budget-reset").unwrap();
            let midnight = (unix_now() / 86_400 + 1) * 86_400;
            let want = jiff::Timestamp::from_second(midnight as i64).unwrap();
            assert_eq!(reset, format!("{want:.0}"), "{:?}", r.headers);
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!(retry.abs_diff(midnight - unix_now()) <= 2, "{retry}");
        }
    }
    assert!(warned, "the soft limit warned before the hard one");
    // 300 each: the 4th takes the day to 1200 ≥ 1000 (the overrun of one request in flight),
    // so the 5th and 6th are refused.
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(
        served.load(Ordering::Relaxed),
        4,
        "refused requests never reach the upstream"
    );
    // Another tenant has its own budget.
    assert_eq!(
        chat(addr, &caller("dave", "globex"), false, usage).status,
        200
    );
    // A restart keeps the day's use (persisted with the spend).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ledger(&engine).budgets.values().map(|b| b.1).sum::<u64>() < 1_500
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(engine);
    let engine = start(&dir, &text);
    let r = chat(engine.local_addr(), &alice, false, usage);
    assert_eq!(r.status, 429, "{:?}", r.headers);
    assert_eq!(
        chat(engine.local_addr(), &caller("dave", "globex"), false, usage).status,
        200
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The issue's check over real sockets: 50 concurrent clients on 2 workers against a tight
/// token budget. Every response uses the same number of tokens; what was charged beyond the
/// budget is at most the 50 requests that can be in flight when it runs out.
#[test]
fn fifty_concurrent_clients_overrun_a_tight_budget_by_at_most_the_requests_in_flight() {
    let dir = temp_dir("overrun");
    let served = Arc::new(AtomicU64::new(0));
    let up = usage_upstream(served.clone());
    const LIMIT: u64 = 3_000;
    const USED: u64 = 37;
    let text = config_text(
        up.addr,
        &format!(
            "[budgets]\n[[budgets.rules]]\nname = \"tight\"\nkey = \"tenant\"\nperiod = \"total\"\ntokens = {LIMIT}\n"
        ),
    );
    let engine = start(&dir, &text);
    let addr = engine.local_addr();
    let ok = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let ok = ok.clone();
            let token = caller(&format!("u{i}"), "acme");
            std::thread::spawn(move || {
                // Each client sends until it is refused three times in a row.
                let mut refused = 0;
                let mut sent = 0;
                while refused < 3 && sent < 200 {
                    sent += 1;
                    match chat(addr, &token, i % 2 == 0, (30, USED - 30, 0)).status {
                        200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            refused = 0;
                        }
                        429 => refused += 1,
                        s => panic!("status {s}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let charged = ok.load(Ordering::Relaxed) * USED;
    let overrun = charged.saturating_sub(LIMIT);
    eprintln!(
        "budget {LIMIT} tokens, 50 concurrent clients on 2 workers, {USED} tokens a response: \
         {} admitted, {charged} tokens charged, overrun {overrun} tokens ({} responses)",
        ok.load(Ordering::Relaxed),
        overrun.div_ceil(USED)
    );
    assert!(
        overrun <= 50 * USED,
        "overrun {overrun} > 50 in flight × {USED}"
    );
    assert!(
        charged + 50 * USED >= LIMIT,
        "only {charged} of {LIMIT} used"
    );
    assert_eq!(served.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
