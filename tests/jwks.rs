//! Remote key sets through the running gateway, against a key server started by the test:
//! a key rotated at the provider is accepted within the refresh interval, a flood of unknown
//! kids costs at most one fetch per interval (counted at the server), a failing server keeps
//! the last good keys (and the failures are counted), `Cache-Control: max-age` drives the
//! background refresh, and OIDC discovery finds the set and binds its issuer.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::*;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};

/// How a test key server answers `/jwks.json`.
#[derive(Clone, Debug)]
enum Mode {
    Up,
    Status(u16),
    Body(&'static str),
    /// Close the connection without answering.
    Hang,
}

/// What the key server serves, as the test last set it. The test writes it to a file (write
/// and rename) and every request reads it back: no state shared in memory, no lock.
#[derive(Clone, Debug)]
struct Served {
    /// (kid, Ed25519 public key)
    keys: Vec<(String, Vec<u8>)>,
    mode: Mode,
    cache_control: Option<String>,
}

impl Served {
    fn save(&self, path: &Path) {
        let mode = match &self.mode {
            Mode::Up => json!({"up": true}),
            Mode::Status(s) => json!({"status": s}),
            Mode::Body(b) => json!({"body": b}),
            Mode::Hang => json!({"hang": true}),
        };
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|(kid, x)| json!([kid, B64.encode(x)]))
            .collect();
        let doc = json!({"keys": keys, "mode": mode, "cache_control": self.cache_control});
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, doc.to_string()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// The answer to `/jwks.json`: `None` to hang up; else status, body, extra header lines.
    fn answer(path: &Path) -> Option<(u16, String, String)> {
        let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mode = &doc["mode"];
        if mode["hang"] == json!(true) {
            return None;
        }
        if let Some(s) = mode["status"].as_u64() {
            return Some((s as u16, "{}".into(), String::new()));
        }
        if let Some(b) = mode["body"].as_str() {
            return Some((200, b.into(), String::new()));
        }
        let set: Vec<Value> = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| json!({"kty": "OKP", "crv": "Ed25519", "kid": k[0], "use": "sig", "x": k[1]}))
            .collect();
        let extra = doc["cache_control"]
            .as_str()
            .map_or(String::new(), |v| format!("cache-control: {v}\r\n"));
        Some((200, json!({"keys": set}).to_string(), extra))
    }
}

struct KeyServer {
    server: Upstream,
    /// What the test set last (the file holds the same).
    served: std::cell::RefCell<Served>,
    file: PathBuf,
    fetches: Arc<AtomicUsize>,
}

impl KeyServer {
    fn start(name: &str) -> KeyServer {
        let dir = test_dir(&format!("{name}-keyserver"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("served.json");
        let served = Served {
            keys: Vec::new(),
            mode: Mode::Up,
            cache_control: None,
        };
        served.save(&file);
        let fetches = Arc::new(AtomicUsize::new(0));
        let (path, f) = (file.clone(), fetches.clone());
        // The issuer is this server's own address, which the handler learns from `Host`.
        let server = Upstream::start(move |mut c| {
            while let Some(req) = c.read_request() {
                let host = req.header("host").unwrap_or_default().to_owned();
                let (status, body, extra) = match req.target.as_str() {
                    "/.well-known/openid-configuration" => {
                        let issuer = format!("http://{host}");
                        let doc = json!({
                            "issuer": issuer,
                            "jwks_uri": format!("{issuer}/jwks.json"),
                            "id_token_signing_alg_values_supported": ["EdDSA", "RS256"],
                        });
                        (200, doc.to_string(), String::new())
                    }
                    "/jwks.json" => {
                        f.fetch_add(1, Ordering::SeqCst);
                        match Served::answer(&path) {
                            Some(answer) => answer,
                            None => return,
                        }
                    }
                    _ => (404, "{}".into(), String::new()),
                };
                c.write(
                    format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        KeyServer {
            server,
            served: std::cell::RefCell::new(served),
            file,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.server.addr)
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    fn set(&self, change: impl FnOnce(&mut Served)) {
        let mut served = self.served.borrow_mut();
        change(&mut served);
        served.save(&self.file);
    }

    fn publish(&self, keys: &[&Signer]) {
        let keys = keys
            .iter()
            .map(|s| (s.kid.clone(), s.pair.public_key().as_ref().to_vec()))
            .collect();
        self.set(|s| s.keys = keys);
    }

    fn set_mode(&self, mode: Mode) {
        self.set(|s| s.mode = mode);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// An Ed25519 signing key with its kid.
struct Signer {
    kid: String,
    pair: Ed25519KeyPair,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Signer {
            kid: kid.into(),
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    /// A token for `sub` (with `iss` when given) under `kid` (default: this key's).
    fn token(&self, kid: Option<&str>, iss: Option<&str>) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid.unwrap_or(&self.kid)});
        let mut claims = json!({"sub": "user-1", "exp": unix_now() + 600});
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.pair.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

fn status(stack: &Stack, token: &str) -> u16 {
    get_with(
        stack.gw(),
        "/v1/x",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .status
}

/// Polls until `token` is answered `want`, for at most `within`.
fn until(stack: &Stack, token: &str, want: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        if status(stack, token) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not {want} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `cond` holds, for at most `within`.
fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gateway verifying tokens against `source` (the lines of one `[[auth.jwks]]`).
fn gateway_for(name: &str, up: &Upstream, source: &str) -> Stack {
    Stack::start(
        &test_dir(name),
        &format!("{}[auth]\n[[auth.jwks]]\n{source}", route_all(up.addr, "")),
    )
}

/// What a change of the provider's keys may take: one interval, plus a fetch and a publish.
const INTERVAL: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_secs(10);

#[test]
fn a_key_rotated_at_the_provider_is_accepted_within_the_interval() {
    let up = Upstream::echo();
    let ks = KeyServer::start("jwks-rotate");
    let (k1, k2) = (Signer::new("k1"), Signer::new("k2"));
    ks.publish(&[&k1]);
    let stack = gateway_for(
        "jwks-rotate",
        &up,
        &format!(
            "jwks_uri = \"{}\"\nmin_refresh_secs = 1\nrefresh_secs = 3600\n",
            ks.url()
        ),
    );
    // One token used again and again, as clients do: every worker's verified-token cache
    // holds it before the rotation.
    let old = k1.token(None, None);
    until(&stack, &old, 200, SLACK, "the first fetch");
    for _ in 0..16 {
        assert_eq!(status(&stack, &old), 200);
    }
    let before = ks.fetches();
    ks.publish(&[&k2]);
    // The first token under the new kid asks for a fetch; within the interval it works.
    let rotated_at = Instant::now();
    until(
        &stack,
        &k2.token(None, None),
        200,
        INTERVAL + SLACK,
        "the new kid",
    );
    let took = rotated_at.elapsed();
    assert!(ks.fetches() > before);
    // The old key left the set with that fetch: on every worker, for the token they had
    // cached too.
    assert_eq!(status(&stack, &k1.token(None, None)), 401);
    for _ in 0..16 {
        assert_eq!(status(&stack, &old), 401, "a cached token outlived its key");
    }
    // A token under the right kid but signed by another key is still refused.
    let forged = Signer::new("k2");
    assert_eq!(status(&stack, &forged.token(None, None)), 401);
    let (_, config) = stack.admin_call("GET", "/config", "");
    assert_eq!(
        config["snapshot"]["auth"]["jwks"][0]["kids"],
        json!(["k2"]),
        "{config}"
    );
    let source = format!("{{source=\"{}\"}}", ks.url());
    assert_eq!(stack.metric(&format!("shardgate_jwks_keys{source}")), 1.0);
    eprintln!("new kid accepted {took:?} after the rotation");
}

#[test]
fn an_unknown_kid_flood_costs_at_most_one_fetch_per_interval() {
    let up = Upstream::echo();
    let ks = KeyServer::start("jwks-flood");
    let k1 = Signer::new("k1");
    ks.publish(&[&k1]);
    let stack = gateway_for(
        "jwks-flood",
        &up,
        &format!(
            "jwks_uri = \"{}\"\nmin_refresh_secs = 1\nrefresh_secs = 3600\n",
            ks.url()
        ),
    );
    until(&stack, &k1.token(None, None), 200, SLACK, "the first fetch");
    let (before, t0) = (ks.fetches(), Instant::now());
    let sent = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (stack, k1, sent) = (&stack, &k1, &sent);
            s.spawn(move || {
                let mut i = 0;
                while t0.elapsed() < Duration::from_millis(2500) {
                    let kid = format!("unknown-{t}-{i}");
                    assert_eq!(status(stack, &k1.token(Some(&kid), None)), 401);
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    });
    // Let a fetch the flood asked for near its end happen.
    std::thread::sleep(INTERVAL + Duration::from_millis(300));
    let (extra, window) = (ks.fetches() - before, t0.elapsed());
    let bound = window.as_secs_f64().floor() as usize + 1;
    let sent = sent.into_inner();
    eprintln!("{sent} unknown-kid requests in {window:?}: {extra} fetches (bound {bound})");
    assert!(
        sent >= 100,
        "the flood was too small to show anything: {sent}"
    );
    assert!(extra >= 1, "unknown kids asked for no fetch");
    assert!(
        extra <= bound,
        "{extra} fetches in {window:?} (at most {bound})"
    );
    assert_eq!(status(&stack, &k1.token(None, None)), 200);
}

#[test]
fn a_failing_key_server_keeps_the_last_good_keys() {
    let up = Upstream::echo();
    let ks = KeyServer::start("jwks-down");
    let k1 = Signer::new("k1");
    ks.publish(&[&k1]);
    let stack = gateway_for(
        "jwks-down",
        &up,
        &format!(
            "jwks_uri = \"{}\"\nmin_refresh_secs = 1\nrefresh_secs = 3600\ntimeout_ms = 500\n",
            ks.url()
        ),
    );
    let good = k1.token(None, None);
    until(&stack, &good, 200, SLACK, "the first fetch");
    let failures = format!(
        "shardgate_jwks_fetch_failures_total{{source=\"{}\"}}",
        ks.url()
    );
    let modes = [
        Mode::Status(503),
        Mode::Status(404),
        Mode::Body("not json"),
        Mode::Body(r#"{"keys": []}"#),
        Mode::Body(r#"{"keys": [{"kty": "oct", "kid": "k1", "k": "AAAA"}]}"#),
        Mode::Hang,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        ks.set_mode(mode.clone());
        // An unknown kid asks for a fetch, which fails.
        assert_eq!(status(&stack, &k1.token(Some("new"), None)), 401);
        wait_for(
            INTERVAL + SLACK,
            &format!("failure {} counted ({mode:?})", i + 1),
            || stack.metric(&failures) >= (i + 1) as f64,
        );
        assert_eq!(
            status(&stack, &good),
            200,
            "{mode:?}: the last good key was dropped"
        );
    }
    // Back up: the set is fetched again and still in force.
    ks.set_mode(Mode::Up);
    let k2 = Signer::new("k2");
    ks.publish(&[&k1, &k2]);
    until(
        &stack,
        &k2.token(None, None),
        200,
        INTERVAL + SLACK,
        "recovery",
    );
    assert_eq!(status(&stack, &good), 200);
}

#[test]
fn cache_control_max_age_drives_the_background_refresh() {
    let up = Upstream::echo();
    let ks = KeyServer::start("jwks-max-age");
    let (k1, k2) = (Signer::new("k1"), Signer::new("k2"));
    ks.publish(&[&k1]);
    ks.set(|s| s.cache_control = Some("public, max-age=1".into()));
    let stack = gateway_for(
        "jwks-max-age",
        &up,
        &format!(
            "jwks_uri = \"{}\"\nmin_refresh_secs = 1\nrefresh_secs = 3600\n",
            ks.url()
        ),
    );
    until(&stack, &k1.token(None, None), 200, SLACK, "the first fetch");
    ks.publish(&[&k1, &k2]);
    // No token asks: the answer's max-age alone brings the next fetches.
    let seen = ks.fetches();
    wait_for(INTERVAL + SLACK, "a background fetch", || {
        ks.fetches() >= seen + 2
    });
    // The fetch after the one that brought k2 is under way or done: k2 is in force.
    until(
        &stack,
        &k2.token(None, None),
        200,
        SLACK,
        "k2 after a background fetch",
    );
}

#[test]
fn discovery_finds_the_key_set_and_binds_the_issuer() {
    let up = Upstream::echo();
    let ks = KeyServer::start("jwks-discovery");
    let k1 = Signer::new("k1");
    ks.publish(&[&k1]);
    let stack = gateway_for(
        "jwks-discovery",
        &up,
        &format!("issuer = \"{}\"\nmin_refresh_secs = 1\n", ks.issuer()),
    );
    let iss = ks.issuer();
    until(
        &stack,
        &k1.token(None, Some(&iss)),
        200,
        SLACK,
        "discovery and the first fetch",
    );
    for (what, token) in [
        ("no iss", k1.token(None, None)),
        ("another iss", k1.token(None, Some("http://evil.example"))),
        ("iss with a slash", k1.token(None, Some(&format!("{iss}/")))),
    ] {
        let r = get_with(
            stack.gw(),
            "/v1/x",
            &[("authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(r.status, 401, "{what}");
        assert!(r.text().contains("issuer"), "{what}: {}", r.text());
    }
    assert!(stack.metric("shardgate_auth_rejections_total{reason=\"bad_issuer\"}") >= 3.0);
}
