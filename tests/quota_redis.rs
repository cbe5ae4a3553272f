//! The Redis quota backend against a real `redis-server` on a loopback port: two
//! coordinators, standing for two gateway processes with two worker shards each, share one
//! limit through it; the server is stopped and started again mid-test.
//!
//! Needs `redis-server` (`tests/install-test-deps.sh` installs it). Without it the tests
//! fail when `CI` is set and are skipped with a note otherwise.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    auth_hs256, bearer, chat_body, chat_model, hs256, post_json, quota_rule, route_all, unix_now,
    Client, Upstream,
};
use shardgate::quota::remote::MAX_BACKOFF_MS;
use shardgate::quota::{
    shared_epoch, Decision, FailMode, FromCoordinator, Grant, KeyKind, LeaseRequest, LimitKind,
    Limits, QuotaBackend, QuotaCoordinator, QuotaKey, QuotaRule, QuotaSettings, QuotaShard,
    RedisSettings, RuleId, ToCoordinator, WorkerId,
};

/// A `redis-server` on a free loopback port, with no persistence; killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// `None`: not installed and not on CI (the test is skipped).
    fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed; run tests/install-test-deps.sh"
            );
            // Straight to stderr: the test harness would swallow `eprintln!` of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: redis-server is not installed (tests/install-test-deps.sh)"
            );
            return None;
        }
        // A free port can be taken by someone else before the server binds it: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut server = RedisServer { port, child: None };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts the server on `self.port`; false if it exited before answering PING.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.pong() {
                return true;
            }
            let exited = self.child.as_mut().map(|c| c.try_wait());
            if let Some(Ok(Some(_))) = exited {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    fn pong(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        assert!(
            self.spawn(),
            "redis-server did not start again on {}",
            self.port
        );
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const WORKERS: usize = 2;
const LIMIT: u32 = 50;

fn rule() -> QuotaRule {
    QuotaRule {
        id: RuleId(0),
        name: "shared".into(),
        key: KeyKind::Subject,
        model: None,
        limits: Limits {
            requests: LIMIT,
            tokens: None,
            burst: None,
            window: shardgate::quota::Window::Minute,
        },
        reserve_max_tokens: false,
    }
}

fn settings(url: &str, fail_mode: FailMode) -> QuotaSettings {
    QuotaSettings {
        backend: QuotaBackend::Redis,
        fail_mode,
        redis: Some(RedisSettings {
            url: url.into(),
            key_prefix: "sgtest".into(),
            io_timeout: shardgate::quota::REDIS_IO_TIMEOUT,
        }),
        rules: vec![rule()],
    }
}

/// One gateway process: its coordinator and its workers' shards, with instant channels.
struct Gateway {
    coord: QuotaCoordinator,
    shards: Vec<QuotaShard>,
    rule: QuotaRule,
    msgs: Vec<ToCoordinator>,
    replies: Vec<(WorkerId, FromCoordinator)>,
    admitted: u32,
}

impl Gateway {
    fn new(url: &str, fail_mode: FailMode, epoch_unix_ms: u64) -> Self {
        let s = settings(url, fail_mode);
        Gateway {
            coord: QuotaCoordinator::from_settings(WORKERS, &s, epoch_unix_ms)
                .expect("valid settings"),
            shards: (0..WORKERS)
                .map(|w| QuotaShard::new(w as WorkerId))
                .collect(),
            rule: s.rules[0].clone(),
            msgs: Vec::new(),
            replies: Vec::new(),
            admitted: 0,
        }
    }

    fn pump(&mut self, now: u64) {
        loop {
            for s in &mut self.shards {
                s.drain_requests(&mut self.msgs);
            }
            if self.msgs.is_empty() {
                return;
            }
            for m in self.msgs.drain(..) {
                self.coord.handle(m, now, &mut self.replies);
            }
            for (w, r) in self.replies.drain(..) {
                self.shards[usize::from(w)].apply(r, now);
            }
        }
    }

    /// One request on worker `w`, parked on `NeedLease` the way the engine does.
    fn request(&mut self, w: usize, key: QuotaKey, now: u64) -> bool {
        let mut d = self.shards[w].check(key, &self.rule, 0, now);
        if d == Decision::NeedLease {
            self.pump(now);
            d = self.shards[w].check(key, &self.rule, 0, now);
            assert_ne!(d, Decision::NeedLease, "a reply must settle the key");
        }
        self.pump(now);
        let admit = matches!(d, Decision::Admit(_));
        self.admitted += u32::from(admit);
        admit
    }

    fn tick(&mut self, now: u64) {
        for s in &mut self.shards {
            s.tick(now);
        }
        self.coord.tick(now);
        self.pump(now);
    }
}

/// Every worker of every gateway asks for `key` every 10 ms over `[from, to)`; ticks every
/// 100 ms. Returns how many each gateway admitted.
fn drive(gws: &mut [&mut Gateway], key: QuotaKey, from: u64, to: u64) -> Vec<u32> {
    let before: Vec<u32> = gws.iter().map(|g| g.admitted).collect();
    let mut now = from;
    while now < to {
        for g in gws.iter_mut() {
            for w in 0..WORKERS {
                g.request(w, key, now);
            }
            if now % 100 == 0 {
                g.tick(now);
            }
        }
        now += 10;
    }
    gws.iter()
        .zip(before)
        .map(|(g, b)| g.admitted - b)
        .collect()
}

#[test]
fn two_gateways_share_one_limit_exactly() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let epoch = shared_epoch().1;
    let mut a = Gateway::new(&redis.url(), FailMode::FailOpen, epoch);
    let mut b = Gateway::new(&redis.url(), FailMode::FailOpen, epoch);
    let key = rule().key_for(b"alice");

    // Both gateways over-ask for a minute: together they admit the limit, no more.
    let first = drive(&mut [&mut a, &mut b], key, 0, 60_000);
    assert_eq!(first.iter().sum::<u32>(), LIMIT, "per gateway: {first:?}");
    assert!(first.iter().all(|&n| n > 0), "both got a share: {first:?}");
    // Nothing frees before the span has passed (60.6 s), then the limit is there again.
    let second = drive(&mut [&mut a, &mut b], key, 60_000, 120_000);
    let late = second.iter().sum::<u32>();
    assert!(late > 0 && late <= LIMIT, "second minute: {second:?}");
    for g in [&a, &b] {
        let s = g.coord.stats();
        assert!(s.backend_up);
        assert_eq!((s.redis_errors, s.fail_open_grants), (0, 0));
    }
}

#[test]
fn redis_outage_follows_the_fail_mode_and_recovers() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let epoch = shared_epoch().1;
    let mut open = Gateway::new(&redis.url(), FailMode::FailOpen, epoch);
    let mut closed = Gateway::new(&redis.url(), FailMode::FailClosed, epoch);
    let shared = drive(
        &mut [&mut open, &mut closed],
        rule().key_for(b"a"),
        0,
        3_000,
    );
    assert_eq!(shared.iter().sum::<u32>(), LIMIT, "{shared:?}");

    // Redis gone: fail_open admits from its own window (up to the limit), fail_closed denies.
    redis.stop();
    let down = drive(
        &mut [&mut open, &mut closed],
        rule().key_for(b"b"),
        3_000,
        6_000,
    );
    assert_eq!(down, [LIMIT, 0], "fail_open admits, fail_closed denies");
    let (so, sc) = (open.coord.stats(), closed.coord.stats());
    assert!(!so.backend_up && !sc.backend_up);
    assert!(so.redis_errors > 0 && sc.redis_errors > 0);
    assert!(so.fail_open_grants > 0 && so.fail_closed_denies == 0);
    assert!(sc.fail_closed_denies > 0 && sc.fail_open_grants == 0);

    // Redis back (empty): both reconnect within the longest backoff and share again.
    redis.restart();
    let back = 6_000 + MAX_BACKOFF_MS + 1_000;
    for g in [&mut open, &mut closed] {
        g.tick(back);
        assert!(g.coord.stats().backend_up, "reconnected");
    }
    let grants_before = open.coord.stats().fail_open_grants;
    let shared = drive(
        &mut [&mut open, &mut closed],
        rule().key_for(b"c"),
        back,
        back + 3_000,
    );
    assert_eq!(shared.iter().sum::<u32>(), LIMIT, "{shared:?}");
    assert!(shared[1] > 0, "fail_closed admits again: {shared:?}");
    assert_eq!(open.coord.stats().fail_open_grants, grants_before);
}

/// Tiny deterministic generator for the operation mix below.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The Lua lease script against the local window: the same messages at the same times get
/// the same replies (burst, tokens, prefetch, releases, charges, long idle gaps).
#[test]
fn redis_window_matches_the_local_window() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = settings(&redis.url(), FailMode::FailClosed);
    let mut remote = QuotaCoordinator::from_settings(WORKERS, &s, shared_epoch().1).unwrap();
    let mut local = QuotaCoordinator::new(WORKERS);
    let limits = [
        Limits {
            requests: 20,
            tokens: Some(300),
            burst: Some(6),
            window: shardgate::quota::Window::Minute,
        },
        Limits {
            requests: 7,
            tokens: None,
            burst: None,
            window: shardgate::quota::Window::Minute,
        },
    ];
    let mut rng = Lcg(42);
    let mut grants = Vec::new();
    let (mut now, mut replies, mut denies, mut recalls) = (0u64, 0, [0; 2], 0);
    for _ in 0..3_000 {
        now += match rng.below(100) {
            0 => 30_000 + rng.below(40_000),
            1..=30 => 0,
            _ => rng.below(700),
        };
        let k = rng.below(2) as usize;
        let key = QuotaKey(1 + k as u64);
        let msg = match rng.below(10) {
            0..=5 => ToCoordinator::Lease(LeaseRequest {
                worker: rng.below(WORKERS as u64) as WorkerId,
                key,
                rule: RuleId(0),
                limits: limits[k],
                // Sometimes a prefetch for the next slot.
                at_ms: now + rng.below(2) * 600,
                tokens_needed: 1 + rng.below(60),
            }),
            6..=8 if !grants.is_empty() => {
                let (w, g): (WorkerId, Grant) =
                    grants.swap_remove(rng.below(grants.len() as u64) as usize);
                let tokens = if g.tokens == u64::MAX { 0 } else { g.tokens };
                ToCoordinator::Release {
                    key: g.key,
                    worker: w,
                    slot: g.slot,
                    requests: rng.below(u64::from(g.requests) + 1) as u32,
                    tokens: rng.below(tokens + 1),
                    grants: 1,
                }
            }
            _ => ToCoordinator::Charge {
                key: QuotaKey(1),
                worker: rng.below(WORKERS as u64) as WorkerId,
                tokens: rng.below(40),
            },
        };
        let (mut want, mut got) = (Vec::new(), Vec::new());
        local.handle(msg, now, &mut want);
        remote.handle(msg, now, &mut got);
        assert_eq!(
            got, want,
            "after {replies} replies, at {now} ms, for {msg:?}"
        );
        for (w, r) in want {
            replies += 1;
            match r {
                FromCoordinator::Grant(g) => grants.push((w, g)),
                FromCoordinator::Deny(d) => denies[usize::from(d.reason == LimitKind::Tokens)] += 1,
                FromCoordinator::Recall(_) => recalls += 1,
                FromCoordinator::Charged(_) => {}
            }
        }
        if rng.below(20) == 0 {
            local.tick(now);
            remote.tick(now);
        }
    }
    assert!(replies > 1_000);
    eprintln!("{replies} replies, denies {denies:?}, recalls {recalls}");
    assert!(
        recalls > 10,
        "charges over the limit recall leases: {recalls}"
    );
    assert!(
        denies[0] > 100 && denies[1] > 100,
        "denies (requests, tokens): {denies:?}"
    );
    assert_eq!(remote.stats().redis_errors, 0);
}

/// Two real gateway engines (standing for two hosts) share one limit through Redis: hammered
/// over HTTP from many connections, together they admit exactly the limit.
#[test]
fn two_gateway_engines_share_a_limit_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = Upstream::start(|mut c| {
        while c.read_request().is_some() {
            c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{}\n\
         [quota]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/0\"\nkey_prefix = \"e2e\"\n{}",
        route_all(up.addr, ""),
        redis.port,
        quota_rule("ip", "client_ip", "requests_per_minute = 60"),
    );
    let engines: Vec<_> = (0..2)
        .map(|_| {
            let snap = shardgate::config::from_str(&text, std::path::Path::new("."), 1).unwrap();
            shardgate::runtime::Engine::start(snap).unwrap()
        })
        .collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.local_addr()).collect();
    let burst = || -> usize {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let addr = addrs[i % 2];
                std::thread::spawn(move || {
                    let mut ok = 0;
                    // One keep-alive connection each, so the load spreads over both engines
                    // and their workers.
                    let mut c = Client::connect(addr);
                    for _ in 0..25 {
                        c.send(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
                        let status = c.read_response().expect("a response").status;
                        assert!(status == 200 || status == 429, "status {status}");
                        ok += usize::from(status == 200);
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    };
    // Leases a core did not use go back to Redis when their 600 ms slot ends, so bursts a
    // slot apart reach the whole limit; no burst may ever push the total past it.
    let mut admitted = 0;
    for _ in 0..5 {
        admitted += burst();
        assert!(admitted <= 60, "over the limit: {admitted}");
        if admitted == 60 {
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(
        admitted, 60,
        "two gateways together admit exactly the limit"
    );
    drop(engines);
}

/// Two real gateway engines share a tenant's daily token budget through Redis (the calendar
/// window of a budget lives there, counted in the period every host agrees on), and their
/// spend: what one gateway used, the other refuses on, and each host's spend view is the
/// fleet's.
#[test]
fn two_gateway_engines_share_a_budget_and_spend_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Every answer uses 150 tokens (100 prompt, 50 completion).
    let up = Upstream::start(|mut c| {
        while c.read_request().is_some() {
            let body = r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150}}"#;
            c.write(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{}{}\
         [quota]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/0\"\nkey_prefix = \"budget-e2e\"\n\
         [spend]\nflush_interval_ms = 50\n[[spend.prices]]\nmodel = \"*\"\ninput = 1.0\noutput = 2.0\n\
         [budgets]\ntime_zone = \"America/New_York\"\n[[budgets.rules]]\nname = \"team\"\nkey = \"tenant\"\n\
         period = \"day\"\ntokens = 1000\n",
        chat_model(up.addr),
        auth_hs256("tenant_claim = \"org\"\n"),
        redis.port,
    );
    let engines: Vec<_> = (0..2)
        .map(|_| {
            let snap = shardgate::config::from_str(&text, std::path::Path::new("."), 1).unwrap();
            shardgate::runtime::Engine::start(snap).unwrap()
        })
        .collect();
    let token = hs256(&format!(
        r#"{{"sub":"alice","org":"acme","exp":{}}}"#,
        unix_now() + 600
    ));
    let (name, value) = bearer(&token);
    let chat = |e: &shardgate::runtime::Engine| {
        post_json(
            e.local_addr(),
            "/v1/chat/completions",
            &[(name, &value)],
            &chat_body("m"),
        )
        .status
    };
    // Gateway A uses 3 × 150; once it has been idle long enough to hand back its leases,
    // gateway B admits while the day (all hosts) is below 1000: 4 more (1050, one response
    // over), then refuses; and so does A. (A request that reaches B's other core before the
    // recall of that core's lease does may be admitted too: the bound is the requests in
    // flight when the budget ran out, and the recall is one Redis round trip behind.)
    for _ in 0..3 {
        assert_eq!(chat(&engines[0]), 200);
    }
    std::thread::sleep(Duration::from_millis(2_800));
    let mut b = Vec::new();
    for _ in 0..7 {
        b.push(chat(&engines[1]));
    }
    let admitted = b.iter().take_while(|&&s| s == 200).count();
    assert!((4..=5).contains(&admitted), "{b:?}");
    assert!(b[admitted..].iter().all(|&s| s == 429), "{b:?}");
    assert_eq!(chat(&engines[0]), 429, "the other host refuses too");
    let total = 3 + admitted as u64;
    // Spend: B's view of the series after persisting holds both hosts' requests.
    let tx = engines[1].spend_sender().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while Instant::now() < deadline {
        let l = shardgate::control::spend::ledger(&tx, Duration::from_secs(5)).unwrap();
        seen = l.total().requests;
        if seen == total {
            // 100 × 1e6 + 50 × 2e6 pico-units each.
            assert_eq!(l.total().pico, u128::from(total) * 200_000_000);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen, total, "the fleet's requests in one host's view");
    drop(engines);
}
