//! API keys through the running gateway: the lifecycle (create, use, disable, enable, rotate
//! with and without grace, delete, expire) through the admin API, the CLI and the keys file;
//! model allow-lists; which routes accept which credentials; the ways a key can be presented
//! on the wire; the official `openai` Python client configured with a key.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Sends `GET path` on `c` with `headers`: status, the worker that answered (the middle field
/// of `x-request-id`) and the response.
fn ask(c: &mut Client, path: &str, headers: &[(&str, &str)]) -> (u16, String, Response) {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    let r = c.read_response().expect("a response");
    let worker = r
        .header("x-request-id")
        .and_then(|id| id.split('-').nth(1))
        .unwrap_or("?")
        .to_string();
    (r.status, worker, r)
}

/// Keep-alive connections covering both workers (any answer carries the worker's id).
fn on_both_workers(gw: SocketAddr) -> Vec<Client> {
    let mut seen = BTreeSet::new();
    let mut conns = Vec::new();
    for _ in 0..200 {
        let mut c = Client::connect(gw);
        let (_, worker, _) = ask(&mut c, "/v1/x", &[]);
        seen.insert(worker);
        conns.push(c);
        if seen.len() == 2 && conns.len() >= 4 {
            return conns;
        }
    }
    panic!("connections did not spread over both workers: {seen:?}");
}

/// Every connection's status for `path` with `key` as a bearer token.
fn statuses(conns: &mut [Client], key: &str) -> Vec<u16> {
    let auth = format!("Bearer {key}");
    conns
        .iter_mut()
        .map(|c| ask(c, "/v1/x", &[("authorization", &auth)]).0)
        .collect()
}

fn assert_all(conns: &mut [Client], key: &str, want: u16, when: &str) {
    let got = statuses(conns, key);
    assert!(
        got.iter().all(|&s| s == want),
        "{when}: {got:?}, want {want}"
    );
}

/// `[auth]` with a claim header and API keys in `keys.json` (also from `x-api-key`).
const KEYS_AUTH: &str = "[auth]\n[[auth.claim_headers]]\nclaim = \"sub\"\nheader = \"x-user\"\n\
                         [[auth.claim_headers]]\nclaim = \"tid\"\nheader = \"x-tenant\"\n\
                         [auth.api_keys]\nfile = \"keys.json\"\nheader = \"x-api-key\"\n";

fn key_of(v: &Value) -> String {
    v["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no key in {v}"))
        .to_owned()
}

/// The error body's `type`.
fn error_type(r: &Response) -> String {
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["error"]["type"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn key_lifecycle_through_the_admin_api() {
    let up = Upstream::echo();
    let stack = Stack::start(
        &test_dir("keys-lifecycle"),
        &format!(
            "{}{}",
            route_all(up.addr, ""),
            KEYS_AUTH.replace("\"tid\"", "\"tenant\"")
        ),
    );
    let mut conns = on_both_workers(stack.gw());

    let (status, created) = stack.admin_call(
        "POST",
        "/keys",
        r#"{"name": "ci-bot", "owner": "alice", "tenant": "acme", "claims": {"tenant": "acme"}}"#,
    );
    assert_eq!(status, 201, "{created}");
    let key = key_of(&created);
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sg-") && key.len() == 46, "{key}");
    assert_eq!(created["record"]["owner"], "alice");
    assert!(key.starts_with(created["record"]["secrets"][0]["prefix"].as_str().unwrap()));
    // The store has the digest, never the key.
    let stored = std::fs::read_to_string(stack.dir.join("keys.json")).unwrap();
    assert!(!stored.contains(&key) && stored.contains(&id));

    // In force on every worker as soon as the API answered.
    assert_all(&mut conns, &key, 200, "created");
    let (_, _, r) = ask(
        &mut conns[0],
        "/v1/x",
        &[("authorization", &format!("Bearer {key}"))],
    );
    let echo = r.text();
    assert!(echo.contains("\"x-user: alice\""), "{echo}");
    assert!(echo.contains("\"x-tenant: acme\""), "{echo}");
    assert!(
        !echo.to_lowercase().contains("authorization"),
        "the key went upstream: {echo}"
    );

    let (status, v) = stack.admin_call("POST", &format!("/keys/{id}/disable"), "");
    assert_eq!(
        (status, &v["record"]["enabled"]),
        (200, &json!(false)),
        "{v}"
    );
    assert_all(&mut conns, &key, 401, "disabled");
    let (_, _, r) = ask(
        &mut conns[0],
        "/v1/x",
        &[("authorization", &format!("Bearer {key}"))],
    );
    // OpenAI's shape: the code says what the SDKs look for, the type is the request's fault.
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (
            &v["error"]["type"],
            &v["error"]["code"],
            &v["error"]["param"]
        ),
        (
            &json!("invalid_request_error"),
            &json!("invalid_api_key"),
            &Value::Null
        ),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("disabled"),
        "{v}"
    );
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));

    assert_eq!(
        stack
            .admin_call("POST", &format!("/keys/{id}/enable"), "")
            .0,
        200
    );
    assert_all(&mut conns, &key, 200, "enabled again");

    // Rotation with a grace period: both secrets work.
    let (status, v) = stack.admin_call(
        "POST",
        &format!("/keys/{id}/rotate"),
        r#"{"grace_secs": 600}"#,
    );
    assert_eq!(status, 200, "{v}");
    let second = key_of(&v);
    assert_ne!(second, key);
    assert_all(&mut conns, &key, 200, "old secret in its grace period");
    assert_all(&mut conns, &second, 200, "new secret");
    // Without one: only the newest works.
    let (status, v) = stack.admin_call(
        "POST",
        &format!("/keys/{id}/rotate"),
        r#"{"grace_secs": 0}"#,
    );
    assert_eq!(status, 200, "{v}");
    let third = key_of(&v);
    assert_eq!(v["record"]["secrets"].as_array().unwrap().len(), 1, "{v}");
    assert_all(
        &mut conns,
        &key,
        401,
        "first secret after a rotation without grace",
    );
    assert_all(
        &mut conns,
        &second,
        401,
        "second secret after a rotation without grace",
    );
    assert_all(&mut conns, &third, 200, "third secret");

    let (status, list) = stack.admin_call("GET", "/keys", "");
    assert_eq!(status, 200);
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("sha256"), "{list}");
    let (status, one) = stack.admin_call("GET", &format!("/keys/{id}"), "");
    assert_eq!((status, &one["record"]["name"]), (200, &json!("ci-bot")));

    assert_eq!(
        stack.admin_call("DELETE", &format!("/keys/{id}"), "").0,
        200
    );
    assert_all(&mut conns, &third, 401, "deleted");
    assert_eq!(
        stack.admin_call("DELETE", &format!("/keys/{id}"), "").0,
        404
    );
    assert_eq!(
        stack
            .admin_call("POST", &format!("/keys/{id}/disable"), "")
            .0,
        404
    );

    // Every change is audited, in order, without a secret.
    let audit = std::fs::read_to_string(stack.dir.join("keys.json.audit.jsonl")).unwrap();
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        actions,
        ["create", "disable", "enable", "rotate", "rotate", "delete"]
    );
    for k in [&key, &second, &third] {
        assert!(!audit.contains(k.as_str()));
    }
    // Refusals are counted by reason.
    assert!(stack.metric("shardgate_auth_rejections_total{reason=\"key_disabled\"}") >= 4.0);
    assert!(stack.metric("shardgate_auth_rejections_total{reason=\"key_unknown\"}") >= 12.0);
}

#[test]
fn admin_key_requests_are_checked() {
    let up = Upstream::echo();
    let stack = Stack::start(
        &test_dir("keys-admin-checks"),
        &format!("{}{KEYS_AUTH}", route_all(up.addr, "")),
    );
    let cases: [(&str, &str, &str, u16); 9] = [
        ("POST", "/keys", "{", 400),
        ("POST", "/keys", r#"{"name": "x", "nme": 1}"#, 400),
        ("POST", "/keys", r#"{"name": " x", "models": [""]}"#, 400),
        ("POST", "/keys", r#"{"name": "x", "expires_at": 1}"#, 400),
        ("POST", "/keys/nope/rotate", r#"{"grace_secs": 1}"#, 404),
        ("PUT", "/keys", "", 405),
        ("GET", "/keys/a/disable", "", 405),
        ("POST", "/keys/a/b/c", "", 404),
        ("POST", "/admin/keys", r#"{"name": "via-alias"}"#, 201),
    ];
    for (method, path, body, want) in cases {
        let (status, v) = stack.admin_call(method, path, body);
        assert_eq!(status, want, "{method} {path} {body}: {v}");
    }
    let (_, v) = stack.admin_call("POST", "/keys", r#"{"name": " x", "models": [""]}"#);
    let keys: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["name", "owner", "models[0]"]);
    // Without the admin token: 401, nothing listed.
    let (status, _) = shardgate::admin::http::call(stack.admin(), "GET", "/keys", None).unwrap();
    assert_eq!(status, 401);
    let (status, _) = shardgate::admin::http::call(
        stack.admin(),
        "GET",
        "/keys",
        Some("wrong-token-0123456789"),
    )
    .unwrap();
    assert_eq!(status, 401);
}

/// A keys file written by hand (GitOps): expired and disabled keys are refused from the
/// start; an edit is put in force by the watch; a broken edit changes nothing.
#[test]
fn expiry_and_outside_edits_of_the_keys_file() {
    let up = Upstream::echo();
    let dir = test_dir("keys-file");
    std::fs::create_dir_all(&dir).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let now = unix_now();
    let mut secrets = Vec::new();
    let mut records = Vec::new();
    for (i, (expires_at, enabled)) in [
        (None, true),
        (Some(now - 1), true),
        (None, false),
        (Some(now + 3600), true),
    ]
    .into_iter()
    .enumerate()
    {
        let s = shardgate::auth::apikey::record::generate_secret(&rng, now).unwrap();
        records.push(json!({
            "id": format!("key_{i}"), "name": format!("k{i}"), "owner": format!("o{i}"),
            "expires_at": expires_at, "enabled": enabled, "created_at": now,
            "secrets": [{"sha256": s.record.sha256, "prefix": s.record.prefix, "created_at": now}],
        }));
        secrets.push(s.key);
    }
    let write = |records: &[Value]| {
        let tmp = dir.join("keys.json.tmp");
        std::fs::write(&tmp, json!({"version": 1, "keys": records}).to_string()).unwrap();
        std::fs::rename(&tmp, dir.join("keys.json")).unwrap();
    };
    write(&records[..3]);
    let stack = Stack::start(&dir, &format!("{}{KEYS_AUTH}", route_all(up.addr, "")));
    let status = |key: &str| {
        get_with(
            stack.gw(),
            "/v1/x",
            &[("authorization", &format!("Bearer {key}"))],
        )
        .status
    };
    let reason = |key: &str| {
        let r = get_with(stack.gw(), "/v1/x", &[("x-api-key", key)]);
        (r.status, r.text())
    };
    assert_eq!(status(&secrets[0]), 200);
    let (s, body) = reason(&secrets[1]);
    assert!(s == 401 && body.contains("expired"), "{s} {body}");
    let (s, body) = reason(&secrets[2]);
    assert!(s == 401 && body.contains("disabled"), "{s} {body}");
    assert_eq!(status(&secrets[3]), 401, "not in the file yet");

    // An edit adds key 3 and expires key 0.
    records[0]["expires_at"] = json!(now - 1);
    write(&records);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&secrets[3]) != 200 {
        assert!(
            Instant::now() < deadline,
            "the watch did not apply the edit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, body) = reason(&secrets[0]);
    assert!(s == 401 && body.contains("expired"), "{s} {body}");

    // A broken edit (cut short, or with a bad digest) is refused: the keys in force stay.
    std::fs::write(
        dir.join("keys.json"),
        &json!({"version": 1, "keys": records}).to_string()[..40],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let mut bad = records.clone();
    bad[3]["secrets"][0]["sha256"] = json!("00");
    write(&bad);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(status(&secrets[3]), 200, "a broken keys file was applied");
    let audit = std::fs::read_to_string(dir.join("keys.json.audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 1, "one reload audited: {audit}");
    assert!(audit.contains("\"reload\""), "{audit}");
}

#[test]
fn a_keys_model_allow_list_is_enforced() {
    let mock =
        shardgate_mock::spawn(Default::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let config = format!(
        "{}{}{}",
        chat_model(mock.addr()),
        upstream("plain", &[mock.addr()], "") + &route("/v1/*rest", "plain", ""),
        KEYS_AUTH,
    );
    let stack = Stack::start(&test_dir("keys-models"), &config);
    let (_, v) = stack.admin_call(
        "POST",
        "/keys",
        r#"{"name": "limited", "models": ["gpt-4o*", "m"]}"#,
    );
    let limited = key_of(&v);
    let (_, v) = stack.admin_call("POST", "/keys", r#"{"name": "free"}"#);
    let free = key_of(&v);
    let chat = |key: &str, model: &str| {
        post_json(
            stack.gw(),
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {key}"))],
            &chat_body(model),
        )
    };
    for (key, model, want) in [
        (&limited, "m", 200),
        (&limited, "gpt-4o", 200),
        (&limited, "gpt-4o-mini", 200),
        (&limited, "gpt-4", 403),
        (&limited, "M", 403),
        (&limited, "m2", 403),
        (&free, "gpt-4", 200),
        (&free, "anything", 200),
    ] {
        let r = chat(key, model);
        assert_eq!(r.status, want, "{model}: {}", r.text());
        if want == 403 {
            assert_eq!(error_type(&r), "permission_error");
            assert!(r.header("www-authenticate").is_none());
        }
    }
    // A route that does not read the body cannot tell the model: a restricted key is refused
    // a body there, allowed a request without one; an unrestricted key is not affected.
    let plain = |key: &str, body: &str| {
        let auth = format!("Bearer {key}");
        post_json(
            stack.gw(),
            "/v1/embeddings",
            &[("authorization", &auth)],
            body,
        )
        .status
    };
    let emb = r#"{"model":"gpt-4","input":"x"}"#;
    assert_eq!(plain(&limited, emb), 403);
    let bodiless =
        format!("POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nx-api-key: {limited}\r\n\r\n");
    // (The mock answers 400 to an embedding request without input: it was let through.)
    let r = request(stack.gw(), &bodiless);
    assert!(
        ![401, 403].contains(&r.status),
        "no body names no model: {}",
        r.status
    );
    let empty = format!("POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nx-api-key: {limited}\r\ncontent-length: 0\r\n\r\n");
    let r = request(stack.gw(), &empty);
    assert!(
        ![401, 403].contains(&r.status),
        "an empty body names no model: {}",
        r.status
    );
    // A chunked body may hold anything, even when it turns out empty.
    let chunked = format!("POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nx-api-key: {limited}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(request(stack.gw(), &chunked).status, 403);
    assert_eq!(plain(&free, emb), 200);
    assert_eq!(
        get_with(stack.gw(), "/v1/models", &[("x-api-key", &limited)]).status,
        200
    );
    assert!(stack.metric("shardgate_auth_rejections_total{reason=\"model_not_allowed\"}") >= 4.0);
}

/// Routes accept what their `auth` names, for each way of presenting each kind.
#[test]
fn routes_accept_the_credentials_they_name() {
    let up = Upstream::echo();
    let routes: String = [
        ("/jwt/*r", "\"jwt\""),
        ("/key/*r", "\"key\""),
        ("/any/*r", "\"any\""),
        ("/open/*r", "false"),
    ]
    .iter()
    .map(|(p, a)| route(p, "up", &format!("auth = {a}")))
    .collect::<String>()
        + &route("/default/*r", "up", "");
    let auth = auth_hs256("") + "[auth.api_keys]\nfile = \"keys.json\"\nheader = \"x-api-key\"\n";
    let config = format!("{}{routes}{auth}", upstream("up", &[up.addr], ""));
    let stack = Stack::start(&test_dir("keys-routes"), &config);
    let (_, v) = stack.admin_call("POST", "/keys", r#"{"name": "k"}"#);
    let key = key_of(&v);
    let jwt = format!("Bearer {}", token("jo"));
    let bearer_key = format!("Bearer {key}");
    let creds: [(&str, Vec<(&str, &str)>); 4] = [
        ("none", vec![]),
        ("jwt", vec![("authorization", &jwt)]),
        ("bearer key", vec![("authorization", &bearer_key)]),
        ("x-api-key", vec![("x-api-key", &key)]),
    ];
    // (route, [status for none, jwt, bearer key, x-api-key])
    let table: [(&str, [u16; 4]); 5] = [
        ("/jwt/x", [401, 200, 401, 401]),
        ("/key/x", [401, 401, 200, 200]),
        ("/any/x", [401, 200, 200, 200]),
        ("/default/x", [401, 200, 200, 200]),
        ("/open/x", [200, 200, 200, 200]),
    ];
    for (path, want) in table {
        for ((what, headers), want) in creds.iter().zip(want) {
            let r = get_with(stack.gw(), path, headers);
            assert_eq!(r.status, want, "{path} with {what}: {}", r.text());
        }
    }
    let r = get_with(stack.gw(), "/jwt/x", &[("authorization", &bearer_key)]);
    assert!(r.text().contains("does not accept"), "{}", r.text());
    assert!(
        stack.metric("shardgate_auth_rejections_total{reason=\"credential_not_accepted\"}") >= 4.0
    );
}

/// Every way a key reaches the gateway, including the ones that must fail, over raw bytes;
/// the credential never reaches the upstream.
#[test]
fn keys_on_the_wire() {
    let up = Upstream::echo();
    let stack = Stack::start(
        &test_dir("keys-wire"),
        &format!("{}{KEYS_AUTH}", route_all(up.addr, "")),
    );
    let (_, v) = stack.admin_call("POST", "/keys", r#"{"name": "k", "owner": "wire"}"#);
    let key = key_of(&v);
    let cases: Vec<(String, u16)> = vec![
        (format!("Authorization: Bearer {key}\r\n"), 200),
        (format!("authorization: bearer {key}\r\n"), 200),
        (format!("AUTHORIZATION: BEARER {key}\r\n"), 200),
        (format!("Authorization: Bearer   {key}\r\n"), 200),
        (format!("Authorization:Bearer {key}\r\n"), 200),
        (format!("x-api-key: {key}\r\n"), 200),
        (format!("X-API-KEY: {key}\r\n"), 200),
        (format!("x-api-key:   {key}   \r\n"), 200),
        (
            format!("Authorization: Bearer {key}\r\nx-api-key: {key}\r\n"),
            401,
        ),
        (
            format!("Authorization: Bearer {key}\r\nAuthorization: Bearer {key}\r\n"),
            401,
        ),
        (format!("x-api-key: {key}\r\nx-api-key: {key}\r\n"), 401),
        (format!("x-api-key: Bearer {key}\r\n"), 401),
        (format!("Authorization: {key}\r\n"), 401),
        (format!("Authorization: Basic {key}\r\n"), 401),
        (format!("Authorization: Bearer {}\r\n", &key[..45]), 401),
        (format!("Authorization: Bearer {key}A\r\n"), 401),
        (
            format!("Authorization: Bearer {}\r\n", key.to_uppercase()),
            401,
        ),
        (
            format!("x-api-key: {}\r\n", key.replacen("sg-", "sk-", 1)),
            401,
        ),
        ("x-api-key: \r\n".into(), 401),
    ];
    for (headers, want) in cases {
        let r = request(
            stack.gw(),
            &format!("GET /v1/x HTTP/1.1\r\nHost: gw\r\n{headers}\r\n"),
        );
        assert_eq!(r.status, want, "{headers:?}: {}", r.text());
        if want == 200 {
            let echo = r.text().to_lowercase();
            assert!(echo.contains("\"x-user: wire\""), "{echo}");
            assert!(
                !echo.contains("x-api-key") && !echo.contains("authorization"),
                "{echo}"
            );
            assert!(
                !echo.contains(&key.to_lowercase()),
                "the key went upstream: {echo}"
            );
        }
    }
}

/// `shardgate keys ...`: through the admin API, and on the keys file with the gateway's
/// watch putting the change in force.
#[test]
fn the_cli_manages_keys() {
    let up = Upstream::echo();
    let stack = Stack::start(
        &test_dir("keys-cli"),
        &format!("{}{KEYS_AUTH}", route_all(up.addr, "")),
    );
    let cli = |args: &[&str]| -> Value {
        let admin = stack.admin().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["keys", "--admin", &admin, "--token", STACK_ADMIN_TOKEN])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let status = |key: &str| get_with(stack.gw(), "/v1/x", &[("x-api-key", key)]).status;
    let v = cli(&[
        "create",
        "--name",
        "from-cli",
        "--owner",
        "bob",
        "--model",
        "m*",
        "--expires-in",
        "1d",
    ]);
    let key = key_of(&v);
    let id = v["record"]["id"].as_str().unwrap().to_owned();
    assert!(v["record"]["expires_at"].as_u64().unwrap() > unix_now() + 86_000);
    assert_eq!(status(&key), 200);
    let v = cli(&["list"]);
    assert_eq!(v["keys"][0]["models"], json!(["m*"]));
    cli(&["disable", &id]);
    assert_eq!(status(&key), 401);
    cli(&["enable", &id]);
    let v = cli(&["rotate", &id, "--grace", "10m"]);
    let rotated = key_of(&v);
    assert_eq!((status(&key), status(&rotated)), (200, 200));
    cli(&["rotate", &id, "--grace", "0"]);
    assert_eq!((status(&key), status(&rotated)), (401, 401));
    assert_eq!(cli(&["show", &id])["record"]["owner"], "bob");
    cli(&["delete", &id]);
    assert!(cli(&["list"])["keys"].as_array().unwrap().is_empty());
    // An error is a failure exit with the API's answer.
    let admin = stack.admin().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args([
            "keys",
            "--admin",
            &admin,
            "--token",
            STACK_ADMIN_TOKEN,
            "disable",
            &id,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    // `--file`: no gateway involved; the running one's watch picks the change up.
    let file = stack.dir.join("keys.json");
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["keys", "--file"])
        .arg(&file)
        .args(["create", "--name", "gitops"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = key_of(&serde_json::from_slice(&out.stdout).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&key) != 200 {
        assert!(Instant::now() < deadline, "the file change was not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Installs `openai` with pip when it is missing; fails (never skips) when it cannot.
fn ensure_openai() {
    let has = || {
        Command::new("python3")
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "openai"])
            .status();
    }
    assert!(
        has(),
        "python3 with the openai package is required (pip install openai)"
    );
}

#[test]
fn the_openai_python_client_works_with_a_key() {
    ensure_openai();
    let mock =
        shardgate_mock::spawn(Default::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let config = format!(
        "{}{}{}",
        deployment("mock-gpt", "1.0.0", &[mock.addr()], "")
            + &model_route(
                "/v1/chat/completions",
                "{ model = \"mock-gpt\", weight = 1 }",
                ""
            ),
        upstream("plain", &[mock.addr()], "") + &route("/v1/*rest", "plain", ""),
        KEYS_AUTH,
    );
    let stack = Stack::start(&test_dir("keys-openai"), &config);
    let (_, v) = stack.admin_call("POST", "/keys", r#"{"name": "sdk", "models": ["mock-*"]}"#);
    let key = key_of(&v);
    let out = Command::new("python3")
        .arg("-c")
        .arg(OPENAI_SCRIPT)
        .env("GW_URL", format!("http://{}/v1", stack.gw()))
        .env("GW_KEY", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openai client check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

const OPENAI_SCRIPT: &str = r#"
import os
import openai

url, key = os.environ["GW_URL"], os.environ["GW_KEY"]
client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=10)
messages = [{"role": "user", "content": "hi"}]

r = client.chat.completions.create(model="mock-gpt", messages=messages, max_tokens=5)
assert r.object == "chat.completion", r
assert r.usage.completion_tokens == 5, r.usage

text = ""
for chunk in client.chat.completions.create(model="mock-gpt", messages=messages, stream=True):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
assert text, "empty stream"

assert [m.id for m in client.models.list().data], "no models"

try:
    client.chat.completions.create(model="gpt-4", messages=messages)
    raise AssertionError("a model outside the allow-list was served")
except openai.PermissionDeniedError as e:
    assert e.status_code == 403, e

bad = openai.OpenAI(base_url=url, api_key=key[:-1] + ("A" if key[-1] != "A" else "B"), max_retries=0, timeout=10)
try:
    bad.chat.completions.create(model="mock-gpt", messages=messages)
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401, e
    assert e.code == "invalid_api_key", e.body
    assert e.type == "invalid_request_error", e.body

print("OK")
"#;

/// The access log names the key a request presented (by id, never the key) next to its
/// owner as the subject, however the key was presented; other credentials log no key.
#[test]
fn access_log_lines_name_the_key_by_id() {
    let up = Upstream::echo();
    let dir = test_dir("keys-access-log");
    let log = dir.join("access.jsonl");
    let stack = Stack::start(
        &dir,
        &format!(
            "{}{KEYS_AUTH}[access_log]\npath = \"{}\"\nsample_rate = 1.0\n",
            route_all(up.addr, ""),
            log.display()
        ),
    );
    let (status, created) =
        stack.admin_call("POST", "/keys", r#"{"name": "logged", "owner": "bob"}"#);
    assert_eq!(status, 201, "{created}");
    let (key, id) = (
        key_of(&created),
        created["record"]["id"].as_str().unwrap().to_owned(),
    );
    let bearer = format!("Bearer {key}");
    let presented: [(&str, &[(&str, &str)]); 3] = [
        ("bearer", &[("authorization", &bearer)]),
        ("key header", &[("x-api-key", &key)]),
        ("none", &[]),
    ];
    for (what, headers) in presented {
        let want = if what == "none" { 401 } else { 200 };
        assert_eq!(
            get_with(stack.gw(), "/v1/x", headers).status,
            want,
            "{what}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let written = std::fs::read_to_string(&log).unwrap_or_default();
        if written.lines().count() >= presented.len() {
            assert!(
                !written.contains(&key),
                "the key reached the log: {written}"
            );
            break written
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        assert!(Instant::now() < deadline, "access log lines: {written}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let by_status = |s: u64| lines.iter().filter(move |l| l["status"] == s);
    assert_eq!(by_status(200).count(), 2, "{lines:?}");
    for line in by_status(200) {
        assert_eq!(
            (&line["subject"], &line["api_key"]),
            (&json!("bob"), &json!(id)),
            "{line}"
        );
    }
    let refused = by_status(401)
        .next()
        .expect("the refused request is logged");
    assert!(
        refused["api_key"].is_null() && refused["subject"].is_null(),
        "{refused}"
    );
}
