//! The model registry through the admin API, the CLI and the binary: versions, splits and
//! statuses with their audit entries, validation that writes nothing, the combination rules
//! with the config file, a restart, concurrent writers, a gateway killed mid-write, API keys
//! kept across registry changes and reloads, and a database that cannot be used.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::registry_rig::*;
use common::*;
use serde_json::{json, Value};
use shardgate::admin;
use shardgate_mock::{self as mock, MockConfig, MockHandle};

fn mock_of(version: &str) -> MockHandle {
    let cfg = MockConfig {
        model: "llama".into(),
        version: version.into(),
        ..Default::default()
    };
    mock::spawn(cfg, "127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

/// The file: `llama@1.0.0` on `a`, one sticky chat route on `^1`.
fn file_config(a: SocketAddr) -> String {
    base_config()
        + &deployment("llama", "1.0.0", &[a], "")
        + &chat_route(r#"{ model = "llama", version = "^1", weight = 1 }"#)
}

/// Which mock version served each of `n` chat requests (sessions `s0`..).
fn served(gw: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for i in 0..n {
        let session = format!("s{i}");
        let r = post_json(
            gw,
            "/v1/chat/completions",
            &[("x-session", &session)],
            &chat_body("llama"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.header("x-mock-version").unwrap_or("?").to_owned();
        assert_eq!(r.header("x-shardgate-version"), Some(v.as_str()));
        *out.entry(v).or_insert(0) += 1;
    }
    out
}

fn problem_keys(v: &Value) -> Vec<String> {
    v["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {v}"))
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn versions_splits_and_statuses_through_the_admin_api_each_audited() {
    let (a, b) = (mock_of("1.0.0"), mock_of("1.1.0"));
    let dir = temp_dir("crud");
    let rig = RegistryRig::start(&dir, Some(&file_config(a.addr())));
    let anonymous = send(rig.admin_addr(), "GET", "/models", &[], None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(rig.get("/models")["models"], json!([]));
    let g0 = rig.generation();

    // Refused registrations name what is wrong and write nothing.
    let b_addr = b.addr();
    let refused: Vec<(String, u16, &str)> = vec![
        ("not json".into(), 400, "(body)"),
        (
            format!(r#"{{"version": "1.x", "endpoints": ["{b_addr}"]}}"#),
            400,
            "version",
        ),
        (
            format!(r#"{{"version": "1.1.0", "endpoints": ["{b_addr}"], "wieght": 1}}"#),
            400,
            "(body)",
        ),
        (
            format!(
                r#"{{"version": "1.1.0", "endpoints": ["{b_addr}"], "api_key": {{"value": "sk-1"}}}}"#
            ),
            400,
            "api_key",
        ),
        (
            r#"{"version": "1.1.0", "endpoints": ["nohost"]}"#.into(),
            422,
            "registry.versions[\"llama@1.1.0\"].endpoints[0]",
        ),
        (
            format!(r#"{{"version": "1.0.0", "endpoints": ["{b_addr}"]}}"#),
            422,
            "deployments[0].version",
        ),
        (
            format!(
                r#"{{"version": "1.1.0", "endpoints": ["{b_addr}"], "first_byte_timeout_ms": 0}}"#
            ),
            422,
            "registry.versions[\"llama@1.1.0\"].first_byte_timeout_ms",
        ),
    ];
    for (body, status, key) in &refused {
        let (got, v) = rig.call("POST", "/models/llama/versions", Some(body));
        assert_eq!(got, *status, "{body}: {v}");
        if *status == 400 {
            assert_eq!(v["field"], *key, "{body}: {v}");
        } else {
            assert!(problem_keys(&v).contains(&key.to_string()), "{body}: {v}");
        }
    }
    let (_, both) = rig.call(
        "POST",
        "/models/llama/versions",
        Some(&format!(
            r#"{{"version": "1.0.0", "endpoints": ["{b_addr}"]}}"#
        )),
    );
    let msg = both["problems"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("deployments[0]") && msg.contains("models.db"),
        "{msg}"
    );
    assert_eq!(rig.get("/models")["models"], json!([]));
    assert!(rig.audit().is_empty());
    assert_eq!(rig.generation(), g0, "a refused change applies nothing");

    // Registered as a canary: in the config, but the `^1` route does not reach it.
    let (status, v) = rig.call(
        "POST",
        "/models/llama/versions",
        Some(&version_body("1.1.0", b_addr)),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"]["status"], "canary");
    assert_eq!(v["version"]["created_by"], "alice");
    assert_eq!(v["generation"].as_u64(), Some(g0 + 1), "{v}");
    assert!(v["in_force_ms"].as_f64().is_some(), "{v}");
    assert_eq!(served(rig.gw(), 20), HashMap::from([("1.0.0".into(), 20)]));
    // The same registration again changes nothing; other settings are a conflict.
    let (status, v) = rig.call(
        "POST",
        "/models/llama/versions",
        Some(&version_body("1.1.0", b_addr)),
    );
    assert_eq!((status, &v["unchanged"]), (200, &json!(true)), "{v}");
    let (status, _) = rig.call(
        "POST",
        "/models/llama/versions",
        Some(&format!(
            r#"{{"version": "1.1.0", "endpoints": ["{b_addr}"], "idle_timeout_ms": 5}}"#
        )),
    );
    assert_eq!(status, 409);
    let got = rig.get("/models/llama/versions/1.1.0");
    assert_eq!(got["version"]["endpoints"], json!([b_addr.to_string()]));
    assert_eq!(rig.call("GET", "/models/llama/versions/9.9.9", None).0, 404);
    assert_eq!(rig.call("GET", "/models/qwen", None).0, 404);

    // Bob splits the route 3:1; every worker runs it when the answer comes.
    let split = |w0: u32, w1: u32| {
        format!(
            r#"{{"path": "/v1/chat/completions", "targets": [
                {{"model": "llama", "version": "1.0.0", "weight": {w0}}},
                {{"model": "llama", "version": "1.1.0", "weight": {w1}}}]}}"#
        )
    };
    let (status, v) = rig.call_as(BOB_TOKEN, "PUT", "/splits", Some(&split(3, 1)));
    assert_eq!(status, 200, "{v}");
    let counts = served(rig.gw(), 200);
    assert!(
        counts["1.1.0"] > 10 && counts["1.0.0"] > counts["1.1.0"],
        "{counts:?}"
    );
    // Refused splits: nothing written, nothing applied.
    let g = rig.generation();
    for (body, status, key) in [
        (
            split(0, 0),
            422,
            "registry.splits[\"/v1/chat/completions\"].targets",
        ),
        (
            split(1, 1).replace("1.1.0", "1.2.0"),
            422,
            "registry.splits[\"/v1/chat/completions\"].targets[1].version",
        ),
        (
            split(1, 1).replace("/v1/chat/completions", "/v1/nowhere"),
            422,
            "registry.splits[\"/v1/nowhere\"]",
        ),
        (
            split(1, 1).replace("\"weight\": 1", "\"weight\": -1"),
            400,
            "targets",
        ),
        (
            r#"{"path": "/v1/chat/completions", "targets": []}"#.into(),
            400,
            "targets",
        ),
    ] {
        let (got, v) = rig.call("PUT", "/splits", Some(&body));
        assert_eq!(got, status, "{body}: {v}");
        if status == 400 {
            assert_eq!(v["field"], key, "{body}: {v}");
        } else {
            assert!(problem_keys(&v).contains(&key.to_string()), "{body}: {v}");
        }
    }
    assert_eq!(rig.generation(), g);
    // The file's weight edit does not reach a route the registry holds.
    let (name, value) = bearer(ADMIN_TOKEN);
    let r = send(
        rig.admin_addr(),
        "PUT",
        "/routes/weights",
        &[(name, &value)],
        Some(br#"{"path": "/v1/chat/completions", "targets": [{"model": "llama", "version": "^1", "weight": 2}]}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("PUT /splits"), "{}", r.text());

    // Retiring a version a split still uses is a config error; activating it is not.
    let (status, v) = rig.call(
        "PUT",
        "/models/llama/versions/1.1.0/status",
        Some(r#"{"status": "retired"}"#),
    );
    assert_eq!(status, 422, "{v}");
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("retired"),
        "{v}"
    );
    let (status, v) = rig.call_as(
        ADMIN_TOKEN,
        "PUT",
        "/models/llama/versions/1.1.0/status",
        Some(r#"{"status": "active"}"#),
    );
    assert_eq!(status, 200, "{v}");
    // Without the split, the file's `^1` reaches the highest active version: 1.1.0.
    let (status, v) = rig.call(
        "DELETE",
        "/splits",
        Some(r#"{"path": "/v1/chat/completions"}"#),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(served(rig.gw(), 20), HashMap::from([("1.1.0".into(), 20)]));
    assert_eq!(
        rig.call(
            "DELETE",
            "/splits",
            Some(r#"{"path": "/v1/chat/completions"}"#)
        )
        .0,
        404
    );

    // One audit entry per applied change: who, what, before and after.
    let audit = rig.audit();
    let summary: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["subject"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", "version.register", "llama@1.1.0"),
            ("bob", "split.put", "\"/v1/chat/completions\""),
            ("admin", "version.status", "llama@1.1.0"),
            ("alice", "split.delete", "\"/v1/chat/completions\""),
        ]
    );
    assert_eq!(audit[0]["before"], Value::Null);
    assert_eq!(audit[2]["before"]["status"], "canary");
    assert_eq!(audit[2]["after"]["status"], "active");
    assert_eq!(audit[1]["after"]["targets"][1]["weight"], 1);
    assert_eq!(audit[3]["after"], Value::Null);
    let ids: Vec<u64> = audit.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let only = rig.get("/audit?subject=llama%40");
    assert_eq!(only["entries"].as_array().unwrap().len(), 2, "{only}");
    let page = rig.get(&format!("/audit?limit=1&before={}", ids[3]));
    assert_eq!(page["entries"][0]["id"].as_u64(), Some(ids[2]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restart_restores_the_registry_exactly() {
    let (a, b) = (mock_of("1.0.0"), mock_of("1.1.0"));
    let dir = temp_dir("restart");
    let rig = RegistryRig::start(&dir, Some(&file_config(a.addr())));
    for (v, addr) in [("1.1.0", b.addr()), ("1.2.0", b.addr())] {
        assert_eq!(
            rig.call(
                "POST",
                "/models/llama/versions",
                Some(&version_body(v, addr))
            )
            .0,
            200
        );
    }
    let split = r#"{"path": "/v1/chat/completions", "targets": [
        {"model": "llama", "version": "1.0.0", "weight": 1}, {"model": "llama", "version": "1.1.0", "weight": 1}]}"#;
    assert_eq!(rig.call("PUT", "/splits", Some(split)).0, 200);
    assert_eq!(
        rig.call(
            "PUT",
            "/models/llama/versions/1.2.0/status",
            Some(r#"{"status": "draining"}"#)
        )
        .0,
        200
    );
    let before = (
        rig.get("/models"),
        rig.get("/splits"),
        rig.get("/audit?limit=1000"),
    );
    let sessions = |gw| -> Vec<String> {
        (0..40)
            .map(|i| {
                let s = format!("user-{i}");
                let r = post_json(
                    gw,
                    "/v1/chat/completions",
                    &[("x-session", &s)],
                    &chat_body("llama"),
                );
                r.header("x-mock-version").unwrap().to_owned()
            })
            .collect()
    };
    let routed = sessions(rig.gw());
    drop(rig);
    let rig = RegistryRig::start(&dir, None);
    let after = (
        rig.get("/models"),
        rig.get("/splits"),
        rig.get("/audit?limit=1000"),
    );
    assert_eq!(before, after);
    assert_eq!(
        sessions(rig.gw()),
        routed,
        "every session on the version it had"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_admin_writers_are_serialised_and_none_is_lost() {
    let a = mock_of("1.0.0");
    let dir = temp_dir("concurrent");
    let rig = RegistryRig::start(&dir, Some(&file_config(a.addr())));
    let g0 = rig.generation();
    let admin = rig.admin_addr();
    let (threads, each) = (6, 8);
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let up = a.addr();
            thread::spawn(move || {
                let token = if t % 2 == 0 { ALICE_TOKEN } else { BOB_TOKEN };
                let mut generations = Vec::new();
                for i in 0..each {
                    let body = version_body(&format!("2.{t}.{i}"), up);
                    let (name, value) = bearer(token);
                    let r = send(
                        admin,
                        "POST",
                        "/models/llama/versions",
                        &[(name, &value)],
                        Some(body.as_bytes()),
                    );
                    assert_eq!(r.status, 200, "{}", r.text());
                    let v: Value = serde_json::from_str(&r.text()).unwrap();
                    generations.push(v["generation"].as_u64().unwrap());
                }
                generations
            })
        })
        .collect();
    let mut generations: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    generations.sort_unstable();
    let n = threads * each;
    // Each change got its own generation: one after the other, none merged or lost.
    assert_eq!(generations, (g0 + 1..=g0 + n as u64).collect::<Vec<_>>());
    let versions = rig.get("/models/llama")["versions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(versions, n);
    let audit = rig.audit();
    assert_eq!(audit.len(), n);
    assert_eq!(audit.iter().filter(|e| e["who"] == "alice").count(), n / 2);
    let mut subjects: Vec<&str> = audit
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(subjects.len(), n);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_version_in_both_the_file_and_the_registry_is_a_config_error_naming_both() {
    let (a, b) = (mock_of("1.0.0"), mock_of("2.0.0"));
    let dir = temp_dir("both");
    let text = file_config(a.addr());
    let rig = RegistryRig::start(&dir, Some(&text));
    assert_eq!(
        rig.call(
            "POST",
            "/models/llama/versions",
            Some(&version_body("2.0.0", b.addr()))
        )
        .0,
        200
    );
    let g = rig.generation();
    // The file gains the same version: the reload is refused, naming both places.
    std::fs::write(
        &rig.cfg,
        text.clone() + &deployment("llama", "2.0.0", &[b.addr()], ""),
    )
    .unwrap();
    let (status, v) = rig.call("POST", "/reload", None);
    assert_eq!(status, 422, "{v}");
    assert_eq!(problem_keys(&v), ["deployments[1].version"]);
    let msg = v["problems"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("models.db") && msg.contains("registry.versions[\"llama@2.0.0\"]"),
        "{msg}"
    );
    assert_eq!(rig.generation(), g);
    // And a start on that pair stops with the same problem.
    drop(rig);
    let e = RegistryRig::try_start(&dir, None)
        .err()
        .expect("the start is refused");
    assert!(
        e.contains("deployments[1].version") && e.contains("models.db"),
        "{e}"
    );
    // Retired in the registry, the version is the file's alone.
    std::fs::write(dir.join("gw.toml"), &text).unwrap();
    let rig = RegistryRig::start(&dir, None);
    assert_eq!(
        rig.call(
            "PUT",
            "/models/llama/versions/2.0.0/status",
            Some(r#"{"status": "retired"}"#)
        )
        .0,
        200
    );
    std::fs::write(
        &rig.cfg,
        text + &deployment("llama", "2.0.0", &[b.addr()], ""),
    )
    .unwrap();
    assert_eq!(rig.call("POST", "/reload", None).0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `shardgate models ...` against `admin` as alice: exit code, stdout, stderr.
fn cli(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("models")
        .args(["--admin", &admin.to_string(), "--token", ALICE_TOKEN])
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
fn the_models_cli_registers_lists_splits_and_reads_the_audit_log() {
    let (a, b) = (mock_of("1.0.0"), mock_of("1.1.0"));
    let dir = temp_dir("cli");
    let rig = RegistryRig::start(&dir, Some(&file_config(a.addr())));
    let admin = rig.admin_addr();
    let b_addr = b.addr().to_string();
    let (code, out, err) = cli(
        admin,
        &[
            "register",
            "llama",
            "1.1.0",
            "--endpoint",
            &b_addr,
            "--label",
            "blue",
            "--settings",
            r#"{"first_byte_timeout_ms": 900}"#,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"]["settings"]["first_byte_timeout_ms"], 900);
    assert_eq!(v["version"]["labels"], json!(["blue"]));
    let (code, out, _) = cli(admin, &["list"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.contains("1.1.0"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("canary") && line.contains(&b_addr), "{out}");
    let (code, out, err) = cli(
        admin,
        &[
            "split",
            "--path",
            "/v1/chat/completions",
            "llama@1.0.0=1",
            "llama@1.1.0=1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(cli(admin, &["status", "llama", "1.1.0", "draining"]).0, 0);
    let (code, out, _) = cli(admin, &["audit", "--subject", "llama@"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["version.status", "version.register"]);
    // Refusals: exit 1 with what was wrong.
    let (code, _, err) = cli(admin, &["register", "llama", "1.x", "--endpoint", &b_addr]);
    assert_eq!(code, 1);
    assert!(err.contains("400") && err.contains("version"), "{err}");
    let (code, _, err) = cli(
        admin,
        &["split", "--path", "/v1/chat/completions", "llama@1.0.0=0"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("422") && err.contains("total weight is zero"),
        "{err}"
    );
    let (code, _, err) = cli(admin, &["status", "llama", "9.9.9", "active"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = cli(
        admin,
        &["split", "--path", "/v1/chat/completions", "llama=1"],
    );
    assert_eq!(code, 2, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway binary on `dir/gw.toml`; returns it and its admin address once ready.
fn spawn_gateway(dir: &Path, up: SocketAddr) -> (std::process::Child, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = file_config(up).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    std::fs::write(dir.join("gw.toml"), text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("--config")
        .arg(dir.join("gw.toml"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin::http::call(admin, "GET", "/readyz", None).map_or(0, |r| r.0) != 200 {
        assert!(Instant::now() < deadline, "gateway did not become ready");
        thread::sleep(Duration::from_millis(20));
    }
    (child, admin)
}

#[test]
fn a_gateway_killed_mid_write_comes_back_with_each_change_whole() {
    let a = mock_of("1.0.0");
    let dir = temp_dir("sigkill");
    let mut acked: Vec<String> = Vec::new();
    for (round, kill_after) in [3usize, 11, 23].into_iter().enumerate() {
        let (mut child, admin) = spawn_gateway(&dir, a.addr());
        // A writer registers versions (and retires every third) as fast as it can; the
        // gateway is killed while it writes.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let up = a.addr();
        let writer = thread::spawn(move || {
            for i in 0.. {
                let v = format!("3.{round}.{i}");
                let body = version_body(&v, up);
                match admin::http::call_with_body(
                    admin,
                    "POST",
                    "/models/llama/versions",
                    Some(ALICE_TOKEN),
                    body.as_bytes(),
                ) {
                    Ok((200, _)) => {
                        if tx.send(v.clone()).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
                if i % 3 == 2 {
                    let path = format!("/models/llama/versions/{v}/status");
                    let _ = admin::http::call_with_body(
                        admin,
                        "PUT",
                        &path,
                        Some(ALICE_TOKEN),
                        br#"{"status": "retired"}"#,
                    );
                }
            }
        });
        for _ in 0..kill_after {
            acked.push(
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("a write was acknowledged"),
            );
        }
        Command::new("kill")
            .arg("-KILL")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let _ = child.wait();
        // Acknowledged in the meantime: also committed.
        acked.extend(rx.try_iter());
        drop(rx);
        writer.join().unwrap();

        // The database: intact, every acknowledged version there, and each version with
        // exactly its one registration entry (no change without its record, or the reverse).
        let c = rusqlite::Connection::open(dir.join("models.db")).unwrap();
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let fk: i64 = c
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(fk, 0);
        let versions: Vec<String> = c
            .prepare("SELECT version FROM versions ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for v in &acked {
            assert!(
                versions.contains(v),
                "acknowledged {v} lost after round {round}"
            );
        }
        let registered: Vec<String> = c
            .prepare(
                "SELECT substr(subject, 7) FROM audit WHERE action = 'version.register' ORDER BY 1",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(registered, versions, "round {round}");
        let retired: i64 = c
            .query_row(
                "SELECT count(*) FROM versions WHERE status = 'retired'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let retirements: i64 = c
            .query_row(
                "SELECT count(*) FROM audit WHERE action = 'version.status'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(retired, retirements, "round {round}");
        drop(c);
    }
    // And the gateway starts on it and shows every version.
    let (mut child, admin) = spawn_gateway(&dir, a.addr());
    let (status, body) =
        admin::http::call(admin, "GET", "/models/llama", Some(ALICE_TOKEN)).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let listed = v["versions"].as_array().unwrap().len();
    assert!(listed >= acked.len(), "{listed} < {}", acked.len());
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_registry_that_cannot_be_used_stops_the_start() {
    let a = mock_of("1.0.0");
    let dir = temp_dir("unusable");
    std::fs::write(dir.join("gw.toml"), file_config(a.addr())).unwrap();
    let db = dir.join("models.db");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(args)
            .arg("--config")
            .arg(dir.join("gw.toml"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Not a database at all.
    std::fs::write(&db, "x".repeat(4096)).unwrap();
    for args in [&[][..], &["check"][..]] {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&db.display().to_string()) && err.contains("not a usable SQLite database"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        "x".repeat(4096).as_bytes(),
        "left as it was"
    );
    // A directory where the file should be.
    std::fs::remove_file(&db).unwrap();
    std::fs::create_dir(&db).unwrap();
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a regular file"), "{err}");
    // Written by a newer shardgate.
    std::fs::remove_dir(&db).unwrap();
    drop(shardgate::registry::Store::open(&db).unwrap());
    let c = rusqlite::Connection::open(&db).unwrap();
    c.pragma_update(
        None,
        "user_version",
        shardgate::registry::schema::current() + 1,
    )
    .unwrap();
    drop(c);
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("newer shardgate"), "{err}");
    // A fresh path is created, empty, and `check` passes.
    std::fs::remove_file(&db).unwrap();
    let (code, err) = run(&["check"]);
    assert_eq!(code, Some(0), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// API keys live in the registry: a key created through the admin API keeps working
/// after a registry change (applied like an explicit reload, the key table carried into the
/// snapshot it builds) and after a reload of the file (the table laid over the file combined
/// with the registry); an unknown key stays refused throughout.
#[test]
fn api_keys_survive_registry_changes_and_reloads() {
    let (a, b) = (mock_of("1.0.0"), mock_of("1.1.0"));
    let dir = temp_dir("keys");
    let text =
        file_config(a.addr()).replace("[registry]\n", "[auth]\n[auth.api_keys]\n[registry]\n");
    let rig = RegistryRig::start(&dir, Some(&text));
    let (status, created) = rig.call("POST", "/keys", Some(r#"{"name": "bot", "owner": "bot"}"#));
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let unknown = format!("sg-{}", "A".repeat(43));
    let check = |when: &str| {
        for (k, want) in [(&key, 200), (&unknown, 401)] {
            for i in 0..4 {
                let bearer = format!("Bearer {k}");
                let session = format!("s{i}");
                let r = post_json(
                    rig.gw(),
                    "/v1/chat/completions",
                    &[("authorization", &bearer), ("x-session", &session)],
                    &chat_body("llama"),
                );
                assert_eq!(r.status, want, "{when}: {}", r.text());
            }
        }
    };
    check("after the key was created");
    let g = rig.generation();
    let body = format!(r#"{{"version": "1.1.0", "endpoints": ["{}"]}}"#, b.addr());
    let (status, v) = rig.call("POST", "/models/llama/versions", Some(&body));
    assert_eq!(status, 200, "{v}");
    assert!(rig.generation() > g);
    check("after a registry change");
    let (status, v) = rig.call("POST", "/reload", None);
    assert_eq!(status, 200, "{v}");
    check("after a reload");
}
