//! API keys and spend in the model registry's database, through the real gateway on loopback:
//! a key's lifecycle through the admin API with every change in the registry's audit log, a
//! restart on the same database (keys, grace periods, spend and budget use kept), a change
//! made by `shardgate keys --registry` while the gateway runs, the refused key's OpenAI error
//! shape for every reason, and the one-source config rule.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
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
    mock::spawn(cfg, "127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

/// `llama@1.0.0` on `a`, a chat route, API keys in the registry, tokens priced, and a
/// 1000-token daily budget per key.
fn config(a: SocketAddr) -> String {
    base_config().replace("[registry]\n", "[auth]\n[auth.api_keys]\n[registry]\n")
        + &deployment("llama", "1.0.0", &[a], "")
        + &chat_route(r#"{ model = "llama", version = "^1", weight = 1 }"#)
        + "[spend]\ncurrency = \"USD\"\nflush_interval_ms = 50\n\
           [[spend.prices]]\nmodel = \"*\"\ninput = 2.5\noutput = 10.0\n\
           [budgets]\n[[budgets.rules]]\nname = \"per-key\"\nkey = \"api_key\"\n\
           period = \"total\"\ntokens = 1000000\n"
}

fn chat(gw: SocketAddr, key: &str) -> Response {
    let bearer = format!("Bearer {key}");
    post_json(
        gw,
        "/v1/chat/completions",
        &[("authorization", &bearer)],
        &chat_body("llama"),
    )
}

/// Asserts `key` is refused with OpenAI's error shape and `why` in the message.
fn assert_refused(gw: SocketAddr, key: &str, why: &str) {
    let r = chat(gw, key);
    assert_eq!(r.status, 401, "{why}: {}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error", "{why}: {v}");
    assert_eq!(e["code"], "invalid_api_key", "{why}: {v}");
    assert_eq!(e["param"], Value::Null, "{why}: {v}");
    assert_eq!(
        e.as_object().unwrap().len(),
        4,
        "message, type, param, code: {v}"
    );
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(why), "{why}: {message}");
}

/// Waits until `key` is refused with `why` in the message.
fn wait_refused_as(gw: SocketAddr, key: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = chat(gw, key);
        if r.status == 401 && r.text().contains(why) {
            return assert_refused(gw, key, why);
        }
        assert!(
            Instant::now() < deadline,
            "never `{why}`: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `key` answers `status` (a change another process made is picked up on the
/// control thread's next tick).
fn wait_status(gw: SocketAddr, key: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = chat(gw, key);
        if r.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {status}: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn key_of(v: &Value) -> String {
    v["key"].as_str().expect("a key").to_owned()
}

/// The registry's audit entries about keys, oldest first: (who, action, subject).
fn key_audit(rig: &RegistryRig) -> Vec<(String, String, String)> {
    rig.audit()
        .iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").starts_with("key:"))
        .map(|e| {
            let s = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
            (s("who"), s("action"), s("subject"))
        })
        .collect()
}

/// Every byte of the database (and its WAL), to look for a key.
fn db_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for name in ["models.db", "models.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            out.extend(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// create → use → rotate with grace (both secrets work) → rotate with none (the old one is
/// refused) → disable → enable → delete, each in force before the API answers and audited in
/// the registry under the admin token's name; a restart on the same database keeps the keys, their grace periods, the
/// audit log, and the spend and budget use of the keys.
#[test]
fn key_lifecycle_in_the_registry_and_a_restart_keeps_keys_and_spend() {
    let a = mock_of("1.0.0");
    let dir = temp_dir("keys-lifecycle");
    let rig = RegistryRig::start(&dir, Some(&config(a.addr())));
    let gw = rig.gw();
    let (status, created) = rig.call(
        "POST",
        "/keys",
        Some(r#"{"name": "bot", "owner": "bot", "tenant": "acme"}"#),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    let first = key_of(&created);
    assert_eq!(chat(gw, &first).status, 200);
    let (status, v) = rig.call(
        "POST",
        &format!("/keys/{id}/rotate"),
        Some(r#"{"grace_secs": 3600}"#),
    );
    assert_eq!(status, 200, "{v}");
    let second = key_of(&v);
    assert_ne!(first, second);
    assert_eq!(
        chat(gw, &first).status,
        200,
        "the old key in its grace period"
    );
    assert_eq!(chat(gw, &second).status, 200);
    // A second key that stays untouched, to see a restart keep it and its spend.
    let (status, other) = rig.call("POST", "/keys", Some(r#"{"name": "other"}"#));
    assert_eq!(status, 201, "{other}");
    let other_id = other["record"]["id"].as_str().unwrap().to_owned();
    let other_key = key_of(&other);
    for _ in 0..3 {
        assert_eq!(chat(gw, &other_key).status, 200);
    }
    // Wait until the spend thread has every request, then stop and look at what it held.
    let before = rig.wait_for("/stats", Duration::from_secs(20), |v| {
        v["spend"]["total"]["requests"].as_u64() == Some(6)
    });
    let ledger_before = {
        let tx = rig.engine.spend_sender().unwrap();
        shardgate::control::spend::ledger(&tx, Duration::from_secs(10)).unwrap()
    };
    assert_eq!(ledger_before.budgets.len(), 2, "one budget window per key");
    // Only digests reach the database; no key is in it.
    let bytes = db_bytes(&dir);
    for k in [&first, &second, &other_key] {
        assert!(!contains(&bytes, k), "a key is stored in the database");
    }
    drop(rig);

    // A new gateway on the same database: keys, grace period, spend and budget use as they were.
    let rig = RegistryRig::start(&dir, None);
    let gw = rig.gw();
    let ledger_after = {
        let tx = rig.engine.spend_sender().unwrap();
        shardgate::control::spend::ledger(&tx, Duration::from_secs(10)).unwrap()
    };
    assert_eq!(ledger_after, ledger_before, "spend and budget use survive");
    assert_eq!(
        rig.get("/stats")["spend"]["total"],
        before["spend"]["total"],
        "/stats shows the same totals"
    );
    assert_eq!(chat(gw, &first).status, 200, "the grace period survives");
    assert_eq!(chat(gw, &second).status, 200);
    assert_eq!(chat(gw, &other_key).status, 200);

    let (status, v) = rig.call(
        "POST",
        &format!("/keys/{id}/rotate"),
        Some(r#"{"grace_secs": 0}"#),
    );
    assert_eq!(status, 200, "{v}");
    let third = key_of(&v);
    // No grace: the old secrets are dropped at once.
    assert_refused(gw, &first, "incorrect API key");
    assert_refused(gw, &second, "incorrect API key");
    assert_eq!(chat(gw, &third).status, 200);
    let (status, v) = rig.call("POST", &format!("/keys/{id}/disable"), None);
    assert_eq!(
        (status, &v["record"]["enabled"]),
        (200, &json!(false)),
        "{v}"
    );
    assert_refused(gw, &third, "disabled");
    let (status, _) = rig.call("POST", &format!("/keys/{id}/enable"), None);
    assert_eq!(status, 200);
    assert_eq!(chat(gw, &third).status, 200);
    let (status, v) = rig.call("DELETE", &format!("/keys/{id}"), None);
    assert_eq!((status, &v["deleted"]), (200, &json!(id)), "{v}");
    assert_refused(gw, &third, "incorrect API key");
    assert_refused(gw, &format!("sg-{}", "A".repeat(43)), "incorrect API key");

    let subject = format!("key:{id}");
    let audit: Vec<(String, String)> = key_audit(&rig)
        .into_iter()
        .filter(|(_, _, s)| *s == subject)
        .map(|(who, action, _)| (who, action))
        .collect();
    let want: Vec<(String, String)> = ["create", "rotate", "rotate", "disable", "enable", "delete"]
        .iter()
        .map(|a| ("alice".to_owned(), (*a).to_owned()))
        .collect();
    assert_eq!(audit, want);
    assert!(key_audit(&rig)
        .iter()
        .any(|(_, a, s)| a == "create" && *s == format!("key:{other_id}")));
    // The audit entries keep no digest either.
    let entries = rig.get(&format!("/audit?subject=key:{id}"));
    assert!(!entries.to_string().contains("sha256"), "{entries}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `shardgate keys --registry` changes the keys of a running gateway's database; the gateway
/// puts each change in force on its own, and the CLI's changes are audited as `cli`. A key
/// that expires is refused as expired.
#[test]
fn the_cli_changes_the_registry_under_a_running_gateway() {
    let a = mock_of("1.0.0");
    let dir = temp_dir("keys-cli");
    let rig = RegistryRig::start(&dir, Some(&config(a.addr())));
    let gw = rig.gw();
    let db = dir.join("models.db");
    let cli = |args: &[&str]| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .arg("keys")
            .arg("--registry")
            .arg(&db)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout).unwrap()
    };
    // A key that expires a second after it is made: once the gateway has read it, it is
    // refused as expired (not as unknown), with OpenAI's shape.
    let created = cli(&["create", "--name", "from-cli", "--expires-in", "1s"]);
    let key = key_of(&created);
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    wait_refused_as(gw, &key, "expired");
    // The admin API sees it too (the gateway read it again).
    assert_eq!(
        rig.get(&format!("/keys/{id}"))["record"]["name"],
        "from-cli"
    );
    let created = cli(&["create", "--name", "second"]);
    let key = key_of(&created);
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    wait_status(gw, &key, 200);
    // A change through the admin API after the CLI's keeps both (never written over).
    let (status, v) = rig.call("POST", "/keys", Some(r#"{"name": "third"}"#));
    assert_eq!(status, 201, "{v}");
    cli(&["disable", &id]);
    wait_status(gw, &key, 401);
    assert_refused(gw, &key, "disabled");
    let listed = cli(&["list"]);
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from-cli", "second", "third"]);
    let audit = key_audit(&rig);
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|(w, a, _)| (w.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("cli", "create"),
            ("cli", "create"),
            ("alice", "create"),
            ("cli", "disable")
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A keys file copied into the registry with `shardgate keys --registry DB import FILE`
/// works there; importing it again is refused whole (the ids are already there).
#[test]
fn a_keys_file_imports_into_the_registry() {
    let dir = temp_dir("keys-import");
    let file = dir.join("keys.json");
    let db = dir.join("models.db");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .arg("keys")
            .args(args)
            .output()
            .unwrap()
    };
    let f = file.to_str().unwrap();
    let out = run(&["--file", f, "create", "--name", "gitops"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = key_of(&created);
    let d = db.to_str().unwrap();
    let out = run(&["--registry", d, "import", f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["imported"], json!([created["record"]["id"]]));
    let out = run(&["--registry", d, "import", f]);
    assert!(!out.status.success(), "a second import is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("duplicate id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The gateway on that database accepts the key.
    let a = mock_of("1.0.0");
    let rig = RegistryRig::start(&dir, Some(&config(a.addr())));
    assert_eq!(chat(rig.gw(), &key).status, 200);
    let audit = key_audit(&rig);
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].0.as_str(), audit[0].1.as_str()),
        ("cli", "import")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One source each: with `[registry]`, a keys file or a spend file is a config problem naming
/// the key; without `[registry]`, `[auth.api_keys]` needs its file.
#[test]
fn keys_and_spend_have_one_source() {
    let a = mock_of("1.0.0");
    let dir = temp_dir("keys-one-source");
    let good = config(a.addr());
    let cases: [(String, &[&str]); 4] = [
        (
            good.replace(
                "[auth.api_keys]\n",
                "[auth.api_keys]\nfile = \"keys.json\"\n",
            ),
            &["auth.api_keys.file"],
        ),
        (
            good.replace(
                "flush_interval_ms = 50\n",
                "flush_interval_ms = 50\nfile = \"s.json\"\n",
            ),
            &["spend.file"],
        ),
        (
            good.replace(
                "[auth.api_keys]\n",
                "[auth.api_keys]\naudit_file = \"a.jsonl\"\n",
            ),
            &["auth.api_keys.audit_file"],
        ),
        (
            good.replace("[registry]\npath = \"models.db\"\n", ""),
            &["auth.api_keys.file"],
        ),
    ];
    for (text, keys) in cases {
        let err = RegistryRig::try_start(&dir, Some(&text))
            .err()
            .expect("refused");
        for k in keys {
            assert!(err.contains(k), "{k}: {err}");
        }
        assert!(err.contains("gw.toml"), "{err}");
    }
    assert!(RegistryRig::try_start(&dir, Some(&good)).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
