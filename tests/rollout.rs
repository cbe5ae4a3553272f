//! Progressive canary rollouts against two mock deployments under client traffic: a healthy
//! canary ramps to 100 % and is promoted; a canary whose mock starts failing or slows down
//! is rolled back within one step; the rollout itself fails no request; sessions stay on
//! their version; the state survives a restart and can be paused, resumed and aborted.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::registry_rig::*;
use common::*;
use serde_json::{json, Value};
use shardgate_mock::{self as mock, MockConfig, MockHandle};

fn mock_of(version: &str) -> MockHandle {
    let cfg = MockConfig {
        model: "llama".into(),
        version: version.into(),
        ..Default::default()
    };
    mock::spawn(cfg, "127.0.0.1:0".parse().unwrap(), 2).unwrap()
}

/// One client request: when it was sent and answered, which session, the status (0: no
/// response) and the version that answered.
#[derive(Debug, Clone)]
struct Outcome {
    sent: Instant,
    at: Instant,
    session: usize,
    status: u16,
    version: Option<String>,
}

/// Client threads sending chat requests round the sessions until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Each thread returns its own outcomes.
    threads: Vec<JoinHandle<Vec<Outcome>>>,
}

const SESSIONS_PER_THREAD: usize = 25;

impl Traffic {
    fn start(gw: SocketAddr, threads: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut log = Vec::new();
                    let body = chat_body("llama");
                    let mut i = 0;
                    // Bounded: a test that never stops it still ends.
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let session = t * SESSIONS_PER_THREAD + i % SESSIONS_PER_THREAD;
                        i += 1;
                        let s = format!("session-{session}");
                        let sent = Instant::now();
                        let r = try_send(
                            gw,
                            "POST",
                            "/v1/chat/completions",
                            &[("x-session", &s), ("content-type", "application/json")],
                            Some(body.as_bytes()),
                            Duration::from_secs(10),
                        );
                        let (status, version) = match r {
                            Ok(r) => (r.status, r.header("x-shardgate-version").map(str::to_owned)),
                            Err(_) => (0, None),
                        };
                        log.push(Outcome {
                            sent,
                            at: Instant::now(),
                            session,
                            status,
                            version,
                        });
                    }
                    log
                })
            })
            .collect();
        Traffic { stop, threads }
    }

    fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut log: Vec<Outcome> = Vec::new();
        for t in self.threads {
            log.extend(t.join().unwrap());
        }
        log.sort_by_key(|o| o.sent);
        log
    }
}

/// `llama@1.0.0` in the file on `stable`, the sticky chat route on `^1`, and `llama@1.1.0`
/// registered as a canary on `canary`.
fn rig(name: &str, stable: &MockHandle, canary: &MockHandle) -> RegistryRig {
    let dir = temp_dir(name);
    let text = base_config()
        + &deployment("llama", "1.0.0", &[stable.addr()], "")
        + &chat_route(r#"{ model = "llama", version = "^1", weight = 1 }"#);
    let rig = RegistryRig::start(&dir, Some(&text));
    let (status, v) = rig.call(
        "POST",
        "/models/llama/versions",
        Some(&version_body("1.1.0", canary.addr())),
    );
    assert_eq!(status, 200, "{v}");
    rig
}

const ROLLOUT: &str = "/models/llama/versions/1.1.0/rollout";

/// Guards for a busy 2-core test machine: latency judged with a generous slack.
fn start_rollout(rig: &RegistryRig, steps: &[u8], hold_ms: u64) -> Value {
    let body = json!({
        "steps": steps,
        "hold_ms": hold_ms,
        "guards": {"min_requests": 20, "max_p99_ratio": 2.0, "p99_slack_ms": 250},
    });
    let (status, v) = rig.call("POST", ROLLOUT, Some(&body.to_string()));
    assert_eq!(status, 200, "{v}");
    v
}

/// Each session's versions in request order never go from the new version back to the old.
fn assert_sessions_only_move_forward(log: &[Outcome]) {
    let mut on_new = std::collections::HashMap::new();
    for o in log.iter().filter(|o| o.status == 200) {
        let new = o.version.as_deref() == Some("1.1.0");
        let was = on_new.insert(o.session, new);
        assert!(
            new || was != Some(true),
            "session {} went back from 1.1.0 to 1.0.0",
            o.session
        );
    }
}

fn rollout_of(rig: &RegistryRig) -> Value {
    rig.get(ROLLOUT)["rollout"].clone()
}

#[test]
fn a_healthy_canary_ramps_to_all_traffic_and_is_promoted_failing_no_request() {
    let (stable, canary) = (mock_of("1.0.0"), mock_of("1.1.0"));
    let rig = rig("healthy", &stable, &canary);
    let traffic = Traffic::start(rig.gw(), 3);
    let started = start_rollout(&rig, &[10, 50, 100], 300);
    assert_eq!(started["rollout"]["state"], "running");
    assert_eq!(started["rollout"]["percent"], 10);
    let done = rig.wait_for(ROLLOUT, Duration::from_secs(90), |v| {
        v["rollout"]["state"] != "running"
    });
    assert_eq!(done["rollout"]["state"], "completed", "{done:#}");
    thread::sleep(Duration::from_millis(200));
    let log = traffic.stop();

    let failed: Vec<&Outcome> = log.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        log.len(),
        &failed[..failed.len().min(5)]
    );
    assert_sessions_only_move_forward(&log);
    let promoted_at = Instant::now() - Duration::from_millis(150);
    assert!(log
        .iter()
        .filter(|o| o.sent > promoted_at)
        .all(|o| o.version.as_deref() == Some("1.1.0")));
    // Promoted: the new version active, the route's split on it alone.
    assert_eq!(
        rig.get("/models/llama/versions/1.1.0")["version"]["status"],
        "active"
    );
    let splits = rig.get("/splits");
    assert_eq!(
        splits["splits"][0]["targets"],
        json!([{"model": "llama", "version": "1.1.0", "weight": 1}])
    );
    // Every step in the audit log, made by the rollout itself.
    let steps: Vec<(String, String, Value)> = rig
        .audit()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("rollout."))
        .map(|e| {
            (
                e["who"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["after"]["percent"].clone(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("alice".into(), "rollout.start".into(), json!(10)),
            ("rollout".into(), "rollout.advance".into(), json!(50)),
            ("rollout".into(), "rollout.advance".into(), json!(100)),
            ("rollout".into(), "rollout.advance".into(), json!(100)),
        ]
    );
    let (_, metrics) = rig.call("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap().to_owned();
    for line in [
        "shardgate_rollout_percent{model=\"llama\",version=\"1.1.0\",route=\"/v1/chat/completions\"} 100",
        "shardgate_rollout_state{model=\"llama\",version=\"1.1.0\",state=\"completed\"} 1",
        "shardgate_rollout_state{model=\"llama\",version=\"1.1.0\",state=\"running\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing");
    }
    let _ = std::fs::remove_dir_all(&rig.dir);
}

/// Waits until the rollout reaches step `step`; returns when it saw it.
fn wait_step(rig: &RegistryRig, step: u64) {
    let v = rig.wait_for(ROLLOUT, Duration::from_secs(60), |v| {
        v["rollout"]["step"].as_u64() >= Some(step) || v["rollout"]["state"] != "running"
    });
    assert_eq!(v["rollout"]["state"], "running", "{v:#}");
}

/// Runs a rollout, breaks the canary once it is at its second step, and checks it was rolled
/// back by `guard` within that step. Returns the client log.
fn rolled_back_by(name: &str, guard: &str, break_canary: impl FnOnce(&MockHandle)) -> Vec<Outcome> {
    let (stable, canary) = (mock_of("1.0.0"), mock_of("1.1.0"));
    let rig = rig(name, &stable, &canary);
    let traffic = Traffic::start(rig.gw(), 3);
    // The hold is long against the canary's slowdown below: a slow answer is only seen once
    // it arrives, and the step must not pass its hold before that.
    start_rollout(&rig, &[20, 50, 100], 2000);
    wait_step(&rig, 1);
    break_canary(&canary);
    let broke_at = Instant::now();
    let done = rig.wait_for(ROLLOUT, Duration::from_secs(60), |v| {
        v["rollout"]["state"] != "running"
    });
    let r = &done["rollout"];
    assert_eq!(r["state"], "rolled_back", "{done:#}");
    assert_eq!(r["guard"], guard, "{done:#}");
    assert_eq!(
        r["step"], 1,
        "rolled back within the step it broke in: {done:#}"
    );
    let rolled_back_at = Instant::now();
    // Long enough for the clients waiting on the slow canary to send more requests.
    thread::sleep(Duration::from_millis(1200));
    let log = traffic.stop();

    // The route's targets as before, the canary drained to 0 and marked.
    let split = &rig.get("/splits")["splits"][0]["targets"];
    assert_eq!(
        *split,
        json!([{"model": "llama", "version": "1.0.0", "weight": 1}, {"model": "llama", "version": "1.1.0", "weight": 0}])
    );
    let version = rig.get("/models/llama/versions/1.1.0")["version"].clone();
    assert_eq!(version["status"], "canary");
    let mark = version["mark"]
        .as_str()
        .unwrap_or_else(|| panic!("{version}"));
    assert!(mark.contains("rolled back at 50 %"), "{mark}");
    let rollback = rig
        .audit()
        .into_iter()
        .find(|e| e["action"] == "rollout.rollback")
        .expect("audited");
    assert_eq!(rollback["who"], "rollout");
    assert!(rollback["after"]["reason"]
        .as_str()
        .unwrap()
        .contains(if guard == "latency" {
            "p99"
        } else {
            "error rate"
        }));
    let (_, metrics) = rig.call("GET", "/metrics", None);
    let want = format!("shardgate_rollout_rollbacks_total{{model=\"llama\",version=\"1.1.0\",guard=\"{guard}\"}} 1");
    assert!(
        metrics.as_str().unwrap().lines().any(|l| l == want),
        "{want} missing"
    );

    // No request failed but those the broken canary answered itself; every request sent
    // after the rollback went to the stable version.
    for o in &log {
        if o.status != 200 {
            assert!(o.status != 0, "a request got no response: {o:?}");
            assert_eq!(o.version.as_deref(), Some("1.1.0"), "{o:?}");
            assert!(o.at >= broke_at, "{o:?}");
        }
    }
    let settled = rolled_back_at + Duration::from_millis(100);
    let after: Vec<&Outcome> = log.iter().filter(|o| o.sent > settled).collect();
    assert!(!after.is_empty());
    assert!(
        after
            .iter()
            .all(|o| o.status == 200 && o.version.as_deref() == Some("1.0.0")),
        "{after:?}"
    );
    assert_sessions_only_move_forward(
        &log.iter()
            .filter(|o| o.at < broke_at)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let _ = std::fs::remove_dir_all(&rig.dir);
    log
}

#[test]
fn a_canary_that_starts_failing_is_rolled_back_within_its_step() {
    let log = rolled_back_by("failing", "error_rate", |m| m.set_fail_rate(1.0));
    let failed = log.iter().filter(|o| o.status != 200).count();
    assert!(failed > 0, "the canary did fail some requests");
}

#[test]
fn a_canary_that_slows_down_is_rolled_back_within_its_step() {
    let log = rolled_back_by("slow", "latency", |m| m.set_latency_ms(700));
    assert!(log.iter().all(|o| o.status == 200), "slow is not failed");
}

#[test]
fn a_rollout_survives_a_restart_and_can_be_paused_resumed_and_aborted() {
    let (stable, canary) = (mock_of("1.0.0"), mock_of("1.1.0"));
    let rig = rig("lifecycle", &stable, &canary);
    // Only a registry canary can be rolled out.
    assert_eq!(
        rig.call("POST", "/models/llama/versions/1.0.0/rollout", Some("{}"))
            .0,
        404
    );
    let (status, v) = rig.call("POST", ROLLOUT, Some(r#"{"steps": [10, 50]}"#));
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["problems"][0]["key"], "steps");
    let (status, v) = rig.call(
        "POST",
        ROLLOUT,
        Some(r#"{"route": {"path": "/v1/nowhere"}}"#),
    );
    assert_eq!(status, 404, "{v}");
    start_rollout(&rig, &[10, 100], 3_600_000);
    // While it runs, its route and its versions are its own.
    assert_eq!(rig.call("POST", ROLLOUT, Some("{}")).0, 409);
    assert_eq!(
        rig.call(
            "PUT",
            "/models/llama/versions/1.1.0/status",
            Some(r#"{"status": "active"}"#)
        )
        .0,
        409
    );
    let split = r#"{"path": "/v1/chat/completions", "targets": [{"model": "llama", "version": "1.0.0", "weight": 1}]}"#;
    assert_eq!(rig.call("PUT", "/splits", Some(split)).0, 409);
    assert_eq!(rig.call("POST", &format!("{ROLLOUT}/resume"), None).0, 409);
    let (status, v) = rig.call("POST", &format!("{ROLLOUT}/pause"), None);
    assert_eq!(
        (status, &v["rollout"]["state"]),
        (200, &json!("paused")),
        "{v}"
    );
    let at_10 = rig.get("/splits");
    assert_eq!(
        at_10["splits"][0]["targets"],
        json!([{"model": "llama", "version": "1.0.0", "weight": 9}, {"model": "llama", "version": "1.1.0", "weight": 1}])
    );

    // A restart: the same rollout, the same weights.
    let dir = rig.dir.clone();
    let before = rollout_of(&rig);
    drop(rig);
    let rig = RegistryRig::start(&dir, None);
    let after = rollout_of(&rig);
    assert_eq!(before, after);
    assert_eq!(rig.get("/splits"), at_10);
    let (status, v) = rig.call("POST", &format!("{ROLLOUT}/resume"), None);
    assert_eq!(
        (status, &v["rollout"]["state"]),
        (200, &json!("running")),
        "{v}"
    );
    let (status, v) = rig.call_as(BOB_TOKEN, "POST", &format!("{ROLLOUT}/abort"), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rollout"]["state"], "aborted");
    assert_eq!(v["rollout"]["reason"], "aborted by bob");
    assert_eq!(rig.call("POST", &format!("{ROLLOUT}/abort"), None).0, 404);
    // Every request on the stable version again.
    for i in 0..20 {
        let s = format!("s{i}");
        let r = post_json(
            rig.gw(),
            "/v1/chat/completions",
            &[("x-session", &s)],
            &chat_body("llama"),
        );
        assert_eq!(r.header("x-shardgate-version"), Some("1.0.0"));
    }
    let actions: Vec<String> = rig
        .audit()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["who"].as_str().unwrap(),
                e["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "alice version.register",
            "alice rollout.start",
            "alice rollout.pause",
            "alice rollout.resume",
            "bob rollout.abort"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
