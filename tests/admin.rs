//! The admin API against a running gateway: exact counts in /metrics (checked by promtool),
//! /stats percentiles and intervals, the token, /readyz during drain, /reload and /config, the
//! access log, `/revoke` and `/routes/weights`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shardgate::admin::{self, Admin, AdminState};
use shardgate::config;
use shardgate::control::{self, Control, Start};
use shardgate::inbox::Workers;
use shardgate::runtime::Engine;

const TOKEN: &str = "s3cret-admin-token";

/// The rig's `[admin]`: the token every endpoint but the probes needs.
fn admin_section() -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {{ value = \"{TOKEN}\" }}\n")
}

/// A gateway with a control thread and an admin listener, on a config file in a temp dir.
struct Rig {
    // Field order is drop order: admin, control, engine, upstream.
    admin: Admin,
    control: Control,
    engine: Engine,
    _up: Upstream,
    dir: PathBuf,
    cfg: PathBuf,
}

fn config_text(up: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{}{}{}{extra}\n",
        upstream("up", &[up], "api_key = { value = \"sk-upstream-key\" }"),
        route("/v1/*rest", "up", ""),
        route("/health", "up", ""),
    )
}

/// The requests of [`Rig::known_traffic`], as exact bytes (the byte counters are checked).
const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: test\r\n\r\n";
const NOWHERE: &str = "GET /nowhere HTTP/1.1\r\nHost: test\r\n\r\n";

impl Rig {
    fn start(name: &str, extra: &str) -> Rig {
        let up = Upstream::echo();
        let dir = std::env::temp_dir().join(format!("sg-admin-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gw.toml");
        let text = config_text(up.addr, &format!("{}{extra}", admin_section()));
        std::fs::write(&cfg, text).unwrap();
        let snap = config::load(&cfg, 1).unwrap();
        let revocations = control::open_revocations(&snap).unwrap();
        let revoked = revocations.as_ref().map_or(&[][..], |r| r.entries());
        let engine = Engine::start_with_revocations(snap.clone(), revoked).unwrap();
        let control = Control::spawn(Start {
            revocations,
            ..Start::new(cfg.clone(), snap, engine.inboxes())
        })
        .unwrap();
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
        Rig {
            admin,
            control,
            engine,
            _up: up,
            dir,
            cfg,
        }
    }

    fn call(&self, method: &str, path: &str) -> (u16, String) {
        let (name, value) = bearer(TOKEN);
        let r = send(
            self.admin.local_addr(),
            method,
            path,
            &[(name, &value)],
            None,
        );
        (r.status, r.text())
    }

    fn send(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (name, value) = bearer(TOKEN);
        let r = send(
            self.admin.local_addr(),
            method,
            path,
            &[(name, &value), ("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        let text = r.text();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (r.status, v)
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn gw(&self) -> SocketAddr {
        self.engine.local_addr()
    }

    /// 5 × /v1/*, 3 × /health, 2 unrouted (404).
    fn known_traffic(&self) {
        for i in 0..5 {
            assert_eq!(get(self.gw(), &format!("/v1/models/{i}")).status, 200);
        }
        for _ in 0..3 {
            assert_eq!(request(self.gw(), HEALTH).status, 200);
        }
        for _ in 0..2 {
            assert_eq!(request(self.gw(), NOWHERE).status, 404);
        }
    }

    /// The exposition once it shows every line of `want` (a worker records right after its
    /// last write, so a scrape can race the client by a moment).
    fn metrics_with(&self, want: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, text) = self.call("GET", "/metrics");
            assert_eq!(status, 200);
            if want.iter().all(|w| text.lines().any(|l| l == *w)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "missing some of {want:?} in\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn metrics_counts_match_exactly_and_pass_promtool() {
    let rig = Rig::start("metrics", "");
    rig.known_traffic();
    let text = rig.metrics_with(&[
        r#"shardgate_requests_total{route="/v1/*rest",status="200"} 5"#,
        r#"shardgate_requests_total{route="/health",status="200"} 3"#,
        r#"shardgate_requests_total{route="(unmatched)",status="404"} 2"#,
        r#"shardgate_responses_total{class="2xx"} 8"#,
        r#"shardgate_responses_total{class="4xx"} 2"#,
        r#"shardgate_request_duration_seconds_count{route="/v1/*rest"} 5"#,
        r#"shardgate_upstream_duration_seconds_count{route="/health"} 3"#,
        r#"shardgate_gateway_duration_seconds_count{route="(unmatched)"} 2"#,
        r#"shardgate_request_duration_seconds_bucket{route="/v1/*rest",le="+Inf"} 5"#,
        r#"shardgate_config_generation 1"#,
        r#"shardgate_draining 0"#,
        r#"shardgate_workers 2"#,
    ]);
    let infos = text
        .lines()
        .filter(|l| l.starts_with("shardgate_worker_info{"))
        .count();
    assert_eq!(infos, 2, "{text}");
    let sent: u64 = text
        .lines()
        .find(|l| l.starts_with(r#"shardgate_sent_bytes_total{route="/v1/*rest"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(sent > 5 * 100, "{sent}");
    // Every request byte is charged to its route exactly once.
    let health_in = 3 * HEALTH.len();
    let nowhere_in = 2 * NOWHERE.len();
    rig.metrics_with(&[
        &format!(r#"shardgate_received_bytes_total{{route="/health"}} {health_in}"#),
        &format!(r#"shardgate_received_bytes_total{{route="(unmatched)"}} {nowhere_in}"#),
    ]);
    assert!(!text.contains("sk-upstream-key"));
    // Breaker state per upstream endpoint, from the coordination thread.
    assert!(
        text.contains(r#",state="closed"} 1"#)
            && text.contains("shardgate_breaker_transitions_total{"),
        "{text}"
    );
    let breakers = rig.json("/breakers");
    assert_eq!(breakers["breakers"][0]["state"], "closed", "{breakers}");
    promtool_check(&rig.dir, &text);
}

/// Runs `promtool check metrics` on `text`. Without promtool the check is skipped, unless
/// `CI` is set (tests/install-test-deps.sh installs it there), where that is a failure.
fn promtool_check(dir: &std::path::Path, text: &str) {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is required in CI: run tests/install-test-deps.sh"
        );
        eprintln!("promtool not found: skipping `promtool check metrics`");
        return;
    }
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < '{}'", file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stats_percentiles_are_present_ordered_and_reset_starts_an_interval() {
    let rig = Rig::start("stats", "");
    rig.known_traffic();
    rig.metrics_with(&[r#"shardgate_responses_total{class="4xx"} 2"#]);
    let v = rig.json("/stats?reset=true");
    let v1 = &v["since_start"]["routes"]["/v1/*rest"];
    assert_eq!(v1["count"], 5, "{v}");
    let qs: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
        .iter()
        .map(|k| v1[*k].as_u64().unwrap())
        .collect();
    assert!(qs[0] > 0 && qs.windows(2).all(|p| p[0] <= p[1]), "{qs:?}");
    assert_eq!(v["since_start"]["overall"]["count"], 10);
    assert_eq!(v["interval"]["overall"]["count"], 10);
    assert_eq!(v1["statuses"]["200"], 5);

    assert_eq!(get(rig.gw(), "/v1/again").status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = rig.json("/stats");
        if v["since_start"]["overall"]["count"] == 11 {
            assert_eq!(v["interval"]["overall"]["count"], 1, "{v}");
            assert_eq!(v["interval"]["routes"]["/v1/*rest"]["count"], 1, "{v}");
            assert_eq!(v["interval"]["routes"]["/health"]["count"], 0, "{v}");
            let table = admin::stats::table(&v, "interval");
            assert!(table.contains("/v1/*rest"), "{table}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn token_is_enforced_and_errors_are_json() {
    let rig = Rig::start("token", "");
    let addr = rig.admin.local_addr();
    for auth in [
        vec![],
        vec![bearer("wrong")],
        vec![bearer("s3cret-admin-toke")],
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = get_with(addr, "/metrics", &headers);
        assert_eq!(r.status, 401, "{auth:?}");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "unauthorized");
    }
    assert_eq!(rig.call("GET", "/metrics").0, 200);
    // Probes need no token.
    assert_eq!(get(addr, "/healthz").status, 200);
    let (status, body) = rig.call("GET", "/nope");
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&body).is_ok());
    assert_eq!(rig.call("POST", "/metrics").0, 405);
    assert_eq!(rig.call("GET", "/reload").0, 405);
}

#[test]
fn readyz_flips_to_503_when_draining() {
    let rig = Rig::start("ready", "");
    let addr = rig.admin.local_addr();
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    rig.admin.set_draining();
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("\"draining\": true"), "{}", r.text());
    assert_eq!(get(addr, "/healthz").status, 200);
    rig.metrics_with(&["shardgate_draining 1"]);
}

#[test]
fn reload_applies_a_changed_file_and_rejects_a_broken_one() {
    let rig = Rig::start("reload", "");
    let up = rig._up.addr;
    let text = config_text(
        up,
        &format!("{}{}", admin_section(), route("/v2/*rest", "up", "")),
    );
    std::fs::write(&rig.cfg, text).unwrap();
    let (status, body) = rig.call("POST", "/reload");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let generation = v["generation"].as_u64().unwrap();
    assert!(generation >= 2, "{v}");
    // Workers swap snapshots on their next inbox tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(rig.gw(), "/v2/x").status != 200 {
        assert!(
            Instant::now() < deadline,
            "generation {generation} not applied"
        );
        thread::sleep(Duration::from_millis(10));
    }

    let conf = rig.json("/config");
    assert_eq!(conf["generation"], generation);
    let shown = conf.to_string();
    assert!(shown.contains("/v2/*"), "{shown}");
    assert!(!shown.contains("sk-upstream-key"), "{shown}");

    let broken = config_text(
        up,
        &format!("{}{}", admin_section(), route("v3", "missing", "")),
    );
    std::fs::write(&rig.cfg, broken).unwrap();
    let (status, body) = rig.call("POST", "/reload");
    assert_eq!(status, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"routes[2].upstream"), "{v}");
    // Nothing changed.
    assert_eq!(rig.json("/config")["generation"], generation);
    assert_eq!(get(rig.gw(), "/v2/x").status, 200);
    drop(rig.control.sender());
}

#[test]
fn access_log_writes_one_json_line_per_request_without_secrets() {
    let dir = std::env::temp_dir().join(format!("sg-accesslog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.jsonl");
    let _ = std::fs::remove_file(&log);
    let up = Upstream::echo();
    let text = format!(
        "{}[access_log]\npath = \"{}\"\nsample_rate = 1.0\n",
        config_text(up.addr, ""),
        log.display()
    );
    let snap = config::from_str(&text, &dir, 1).unwrap();
    let mut engine = Engine::start(snap).unwrap();
    for i in 0..4 {
        let (name, value) = bearer("user-secret");
        let r = get_with(engine.local_addr(), &format!("/v1/{i}"), &[(name, &value)]);
        assert_eq!(r.status, 200);
    }
    assert_eq!(get(engine.local_addr(), "/nowhere").status, 404);
    engine.shutdown();
    let written = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{written}");
    assert_eq!(
        lines.iter().filter(|l| l["route"] == "/v1/*rest").count(),
        4
    );
    assert!(lines.iter().any(|l| l["status"] == 404));
    assert!(lines.iter().all(|l| l["request_id"].is_string()
        && l["latency_us"].as_u64().is_some()
        && l["bytes_out"].as_u64().unwrap() > 0));
    assert!(!written.contains("user-secret") && !written.contains("sk-upstream-key"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn binary_answers_readyz_503_while_draining_on_sigterm() {
    let up = Upstream::start(|mut c| {
        while let Some(r) = c.read_request() {
            if r.target == "/v1/slow" {
                thread::sleep(Duration::from_millis(800));
            }
            c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let (port, admin_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("sg-admin-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gw.toml");
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let text = config_text(up.addr, &admin_listen(admin_addr, TOKEN))
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("--config")
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let gw: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin::http::call(admin_addr, "GET", "/readyz", None).map_or(0, |r| r.0) != 200 {
        assert!(Instant::now() < deadline, "gateway did not become ready");
        thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = admin::http::call(admin_addr, "GET", "/metrics", Some(TOKEN)).unwrap();
    assert_eq!(status, 200, "{body}");
    let mut c = Client::connect(gw);
    c.send(b"GET /v1/slow HTTP/1.1\r\nHost: a\r\n\r\n");
    thread::sleep(Duration::from_millis(100));
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    // The slow request keeps the drain open; readiness must already be gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match admin::http::call(admin_addr, "GET", "/readyz", None) {
            Ok((503, body)) => {
                assert!(body.contains("\"draining\": true"), "{body}");
                break;
            }
            other => {
                assert!(Instant::now() < deadline, "readyz never flipped: {other:?}")
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.read_response().unwrap().status, 200);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn revoke_applies_on_every_worker_within_100ms_and_persists() {
    let rig = Rig::start("revoke", &auth_hs256("revocation_file = \"revoked.txt\"\n"));
    let exp = unix_now() + 600;
    let alice = hs256(&format!(
        r#"{{"sub":"alice","exp":{exp},"jti":"tok-alice-1"}}"#
    ));
    let bob = hs256(&format!(r#"{{"sub":"bob","exp":{exp},"jti":"tok-bob-1"}}"#));
    // Keep-alive connections land on both workers (the kernel spreads them by a hash of the
    // ports: with 8, all on one worker in ~0.8 % of runs, which failed a CI run on
    // 2026-12-01; with 20, ~2e-6).
    let mut conns: Vec<Client> = (0..20).map(|_| Client::connect(rig.gw())).collect();
    let send = |c: &mut Client, token: &str| {
        c.send(
            format!("GET /v1/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        );
        c.read_response().unwrap().status
    };
    for c in &mut conns {
        assert_eq!(send(c, &alice), 200);
        assert_eq!(send(c, &bob), 200);
    }

    // The admin token is required; bad bodies name their field.
    let body = format!(r#"{{"jti":"tok-alice-1","expires_at":{exp}}}"#);
    let anonymous = post_json(rig.admin.local_addr(), "/revoke", &[], &body);
    assert_eq!(anonymous.status, 401);
    assert_eq!(rig.call("GET", "/revoke").0, 405);
    let far = unix_now() + 2 * 366 * 24 * 3600;
    for (bad, field) in [
        ("not json".to_string(), "(body)"),
        (r#"{"jti":"tok-alice-1"}"#.to_string(), "expires_at"),
        (
            r#"{"jti":"tok-alice-1","expires_at":1000}"#.to_string(),
            "expires_at",
        ),
        (
            format!(r#"{{"jti":"tok-alice-1","expires_at":{far}}}"#),
            "expires_at",
        ),
        (
            format!(r#"{{"jti":"a","sub":"b","expires_at":{exp}}}"#),
            "jti",
        ),
        (format!(r#"{{"jti":"","expires_at":{exp}}}"#), "jti"),
    ] {
        let (status, v) = rig.send("POST", "/revoke", &bad);
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["field"], field, "{bad}: {v}");
    }
    for c in &mut conns {
        assert_eq!(send(c, &alice), 200, "a refused revocation changed nothing");
    }

    let at = Instant::now();
    let (status, v) = rig.send("POST", "/admin/revoke", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revoked"]["kind"], "jti", "{v}");
    assert_eq!(v["revoked"]["id"], "tok-alice-1", "{v}");
    thread::sleep(Duration::from_millis(100).saturating_sub(at.elapsed()));
    for c in &mut conns {
        assert_eq!(
            send(c, &alice),
            401,
            "revoked token still accepted after 100 ms"
        );
        assert_eq!(send(c, &bob), 200, "another token was revoked too");
    }

    let (status, v) = rig.send(
        "POST",
        "/revoke",
        &format!(r#"{{"sub":"bob","expires_at":{exp}}}"#),
    );
    assert_eq!(status, 200, "{v}");
    thread::sleep(Duration::from_millis(100));
    for c in &mut conns {
        assert_eq!(
            send(c, &bob),
            401,
            "revoked subject still accepted after 100 ms"
        );
    }

    let file = std::fs::read_to_string(rig.dir.join("revoked.txt")).unwrap();
    assert!(
        file.lines().any(|l| l == format!("jti {exp} tok-alice-1")),
        "{file}"
    );
    assert!(
        file.lines().any(|l| l == format!("sub {exp} bob")),
        "{file}"
    );
    let m = rig.engine.collect();
    assert!(
        m.iter().all(|w| w.requests() >= 2),
        "both workers served tokens before and after"
    );
}

/// Two mock deployments behind one split; all traffic on `a` to start with.
fn split_extra(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
# Deployments for the chat split.
[[deployments]]
model = "llama3-70b"
version = "3.2.1"
endpoints = ["{a}"]

[[deployments]]
model = "qwen2-72b"
version = "2.1.0"
endpoints = ["{b}"]

[[routes]]
path = "/v1/chat/completions"
methods = ["POST"]
targets = [
  {{ model = "llama3-70b", version = ">=3.2.0, <3.3.0", weight = 100 }}, # primary
  # the challenger starts drained
  {{ model = "qwen2-72b", version = "^2.0.0", weight = 0 }},
]
"#
    )
}

/// Which mock served each of `n` chat requests.
fn served(gw: SocketAddr, n: usize) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        let r = post_json(gw, "/v1/chat/completions", &[], &chat_body("chat"));
        assert_eq!(r.status, 200, "{}", r.text());
        let model = r.header("x-mock-model").unwrap_or("?").to_string();
        *counts.entry(model).or_insert(0) += 1;
    }
    counts
}

#[test]
fn weights_put_rewrites_the_file_keeps_comments_and_reloads() {
    use shardgate_mock::{self as mock, MockConfig};
    let mock_named = |model: &str| {
        let cfg = MockConfig {
            model: model.into(),
            ..Default::default()
        };
        mock::spawn(cfg, "127.0.0.1:0".parse().unwrap(), 1).unwrap()
    };
    let (a, b) = (mock_named("A"), mock_named("B"));
    let rig = Rig::start("weights", &split_extra(a.addr(), b.addr()));
    assert_eq!(served(rig.gw(), 20).get("A"), Some(&20));
    let before = std::fs::read_to_string(&rig.cfg).unwrap();

    let put = r#"{"path": "/v1/chat/completions", "models": [], "targets": [
        {"model": "llama3-70b", "version": ">=3.2.0,<3.3.0", "weight": 0},
        {"model": "qwen2-72b", "version": "^2.0.0", "weight": 100}]}"#;
    let anonymous = send(
        rig.admin.local_addr(),
        "PUT",
        "/routes/weights",
        &[],
        Some(put.as_bytes()),
    );
    assert_eq!(anonymous.status, 401);
    assert_eq!(rig.call("POST", "/routes/weights").0, 405);

    // Refused edits write nothing and reload nothing.
    let zero = put.replace("\"weight\": 100", "\"weight\": 0");
    for bad in [
        zero.as_str(),
        r#"{"path": "/v1/nowhere", "targets": [{"model": "qwen2-72b", "weight": 1}]}"#,
        r#"{"path": "/v1/chat/completions", "targets": [{"model": "qwen2-72b", "weight": -1}]}"#,
        r#"{"path": "/v1/chat/completions", "targets": []}"#,
        "{}",
    ] {
        let (status, v) = rig.send("PUT", "/routes/weights", bad);
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(std::fs::read_to_string(&rig.cfg).unwrap(), before, "{bad}");
    }
    assert_eq!(rig.json("/config")["generation"], 1);

    let (status, v) = rig.send("PUT", "/admin/routes/weights", put);
    assert_eq!(status, 200, "{v}");
    let generation = v["generation"].as_u64().unwrap();
    assert!(generation >= 2, "{v}");
    let after = std::fs::read_to_string(&rig.cfg).unwrap();
    assert_eq!(
        after,
        before
            .replace("weight = 100 }, # primary", "weight = 0 }, # primary")
            .replace(
                "version = \"^2.0.0\", weight = 0 }",
                "version = \"^2.0.0\", weight = 100 }"
            ),
        "only the weights changed; comments kept"
    );
    assert!(after.contains("# the challenger starts drained"));
    // Workers swap snapshots on their next inbox tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    while served(rig.gw(), 1).contains_key("A") {
        assert!(
            Instant::now() < deadline,
            "generation {generation} not applied"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(served(rig.gw(), 20).get("B"), Some(&20));
    let conf = rig.json("/config");
    assert!(conf["generation"].as_u64().unwrap() >= generation, "{conf}");
    // `/config` shows the weights as the operator wrote them, not as scaled internally.
    let split = &conf["snapshot"]["routes"][2]["target"];
    let weights: Vec<u64> = split["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("{conf}"))
        .iter()
        .map(|t| t["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [0, 100], "{split}");
    assert_eq!(split["targets"][1]["version"], "^2.0.0", "{split}");
    assert_eq!(split["resolved"][1]["share_percent"], 100.0, "{split}");

    // And a split set to 80/20 reads back as 80/20.
    let put = r#"{"path": "/v1/chat/completions", "targets": [
        {"model": "llama3-70b", "version": ">=3.2.0,<3.3.0", "weight": 80},
        {"model": "qwen2-72b", "version": "^2.0.0", "weight": 20}]}"#;
    let (status, v) = rig.send("PUT", "/routes/weights", put);
    assert_eq!(status, 200, "{v}");
    let conf = rig.json("/config");
    let split = &conf["snapshot"]["routes"][2]["target"];
    assert_eq!(split["targets"][0]["weight"], 80, "{split}");
    assert_eq!(split["targets"][1]["weight"], 20, "{split}");
    assert!(!conf.to_string().contains("720720"), "{conf}");
}

#[test]
fn mutating_endpoints_need_a_control_thread() {
    let admin = Admin::start(
        "127.0.0.1:0".parse().unwrap(),
        AdminState {
            workers: Workers::default(),
            control: None,
            view: Default::default(),
            breakers: None,
            spend: None,
        },
    )
    .unwrap();
    let exp = unix_now() + 60;
    for (method, path, body) in [
        (
            "POST",
            "/revoke",
            format!(r#"{{"jti":"x","expires_at":{exp}}}"#),
        ),
        (
            "PUT",
            "/routes/weights",
            r#"{"path":"/","targets":[]}"#.into(),
        ),
    ] {
        let r = send(admin.local_addr(), method, path, &[], Some(body.as_bytes()));
        assert_eq!(r.status, 503, "{path}: {}", r.text());
    }
}

/// The invariant behind revocation by subject: a token is accepted only with a subject the
/// admin API can revoke, by the same exact string. Padded subjects are refused at the door
/// (401) and `/revoke` refuses the padded form (400); every accepted subject, revoked as it
/// appears in the token, stops its tokens and no other.
#[test]
fn padded_subjects_are_refused_and_every_accepted_subject_is_revocable() {
    let rig = Rig::start("padded", &auth_hs256("revocation_file = \"revoked.txt\"\n"));
    let exp = unix_now() + 600;
    let status = |token: &str| {
        let (name, value) = bearer(token);
        get_with(rig.gw(), "/v1/x", &[(name, &value)])
    };
    for padded in [
        " alice",
        "alice ",
        "\talice",
        "alice\t",
        "alice\u{a0}",
        "\u{3000}alice",
        "alice\n",
    ] {
        let sub = serde_json::to_string(padded).unwrap();
        let r = status(&hs256(&format!(r#"{{"sub":{sub},"exp":{exp}}}"#)));
        assert_eq!(r.status, 401, "{padded:?}: {}", r.text());
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid claim value"),
            "{padded:?}"
        );
        let (code, v) = rig.send(
            "POST",
            "/revoke",
            &format!(r#"{{"sub":{sub},"expires_at":{exp}}}"#),
        );
        assert_eq!(
            (code, v["field"].as_str()),
            (400, Some("sub")),
            "{padded:?}: {v}"
        );
    }
    // (subject claim as JSON, the id to revoke)
    let accepted = [
        (r#""alice""#, "alice"),
        (r#""user 42""#, "user 42"),
        (r#""Jos\u00e9""#, "Jos\u{e9}"),
        ("42", "42"),
    ];
    let tokens: Vec<String> = accepted
        .iter()
        .map(|(sub, _)| hs256(&format!(r#"{{"sub":{sub},"exp":{exp}}}"#)))
        .collect();
    for t in &tokens {
        assert_eq!(status(t).status, 200);
    }
    for (i, (_, id)) in accepted.iter().enumerate() {
        let body = serde_json::json!({"sub": id, "expires_at": exp}).to_string();
        let (code, v) = rig.send("POST", "/revoke", &body);
        assert_eq!(code, 200, "{id}: {v}");
        // Wait (bounded) until both workers refuse it; this checks the outcome, not the speed.
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = || (0..8).all(|_| status(&tokens[i]).status == 401);
        while !refused() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(refused(), "{id} revoked");
        for t in &tokens[i + 1..] {
            assert_eq!(
                status(t).status,
                200,
                "revoking {id} touched another subject"
            );
        }
    }
}
