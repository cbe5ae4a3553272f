//! JWT authentication through the running gateway, with tokens minted by an independent
//! implementation (PyJWT + cryptography, via tests/jwt/mint.py) for every algorithm.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::*;
use shardgate::auth::{Revoked, RevokedKind};

const ALGS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

struct Minted {
    dir: PathBuf,
    tokens: Vec<(String, String)>,
}

/// Runs mint.py (it installs PyJWT if missing). Each call gets its own key directory.
fn mint(tag: &str, claims: &str, ttl: i64) -> Minted {
    let dir = std::env::temp_dir().join(format!("sg-auth-{}-{tag}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jwt/mint.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .args([
            "--sub",
            "alice",
            "--ttl",
            &ttl.to_string(),
            "--claims",
            claims,
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "mint.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let tokens = ALGS
        .iter()
        .map(|alg| {
            let key = format!("\"{alg}\": \"");
            let start = text
                .find(&key)
                .unwrap_or_else(|| panic!("{alg} missing in {text}"))
                + key.len();
            let end = start + text[start..].find('"').unwrap();
            (alg.to_string(), text[start..end].to_string())
        })
        .collect();
    Minted { dir, tokens }
}

/// The default claim headers of [`auth_gateway`].
const MAPPINGS: &str = "[[auth.claim_headers]]\nclaim = \"sub\"\nheader = \"x-user-id\"\n[[auth.claim_headers]]\nclaim = \"tid\"\nheader = \"x-tenant-id\"\n";

fn auth_gateway(
    m: &Minted,
    up: std::net::SocketAddr,
    extra_auth: &str,
    route_extra: &str,
) -> shardgate::runtime::Engine {
    auth_gateway_mapping(m, up, extra_auth, route_extra, MAPPINGS)
}

/// Like [`auth_gateway`] with `mappings` (`[[auth.claim_headers]]` tables) instead.
fn auth_gateway_mapping(
    m: &Minted,
    up: std::net::SocketAddr,
    extra_auth: &str,
    route_extra: &str,
    mappings: &str,
) -> shardgate::runtime::Engine {
    let auth = std::fs::read_to_string(m.dir.join("auth.toml")).unwrap();
    let auth = auth.replacen("[auth]\n", &format!("[auth]\n{extra_auth}\n"), 1);
    let rest = format!(
        "{}{}{}{auth}\n{mappings}",
        upstream("up", &[up], ""),
        route("/v1/*rest", "up", route_extra),
        route("/open", "up", "auth = false"),
    );
    gateway_in(
        &m.dir,
        "listen = \"127.0.0.1:0\"\nworkers = 2\npin = false",
        &rest,
    )
}

/// `GET path` with `token` and the `extra` headers.
fn with_token(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> Response {
    let (name, value) = bearer(token);
    let mut headers = vec![(name, value.as_str())];
    headers.extend_from_slice(extra);
    get_with(addr, path, &headers)
}

#[test]
fn tokens_for_every_algorithm_are_accepted_and_identity_reaches_the_upstream() {
    let m = mint(
        "every",
        r#"{"tid":"acme","scope":"ai:inference chat"}"#,
        600,
    );
    let up = Upstream::echo();
    let gw = auth_gateway(&m, up.addr, "", "scope = \"ai:inference\"");
    for (alg, token) in &m.tokens {
        let r = with_token(
            gw.local_addr(),
            "/v1/chat",
            token,
            &[("X-User-Id", "mallory"), ("X-Tenant-Id", "evil")],
        );
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        let t = r.text();
        assert!(t.contains("x-user-id: alice"), "{alg}: {t}");
        assert!(t.contains("x-tenant-id: acme"));
        assert!(
            !t.contains("mallory") && !t.contains("evil"),
            "forged identity headers leaked: {t}"
        );
        assert!(
            !t.contains("authorization"),
            "the client's token must not reach the upstream"
        );
    }
    // Open routes pass without a token, but forged identity headers are still removed.
    let r = get_with(gw.local_addr(), "/open", &[("X-User-Id", "mallory")]);
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("mallory"));
}

#[test]
fn bad_tokens_are_rejected_with_the_right_status() {
    let m = mint("bad", r#"{"scope":"chat"}"#, 600);
    // Same key directory: mint.py reuses the keys it finds there.
    let expired = mint("bad", r#"{"exp":1000}"#, 600);
    let future = mint("bad", &format!(r#"{{"nbf":{}}}"#, unix_now() + 3600), 600);
    let up = Upstream::echo();
    let gw = auth_gateway(&m, up.addr, "", "");
    let addr = gw.local_addr();
    let hs_secret = std::fs::read(m.dir.join("hs256.key")).unwrap();
    let hs_secret = hs_secret.strip_suffix(b"\n").unwrap_or(&hs_secret).to_vec();
    let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, unix_now() + 600);
    let jwks = std::fs::read(m.dir.join("jwks.json")).unwrap();
    let (_, rs) = &m.tokens[3];
    let mut tampered = rs.clone();
    tampered.pop();
    tampered.push(if rs.ends_with('A') { 'B' } else { 'A' });
    let good_hs = sign_hs256(r#"{"alg":"HS256","kid":"hs256"}"#, &claims, &hs_secret);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("expired", expired.tokens[0].1.clone(), 401, "expired"),
        ("not yet valid", future.tokens[0].1.clone(), 401, ""),
        (
            "alg none",
            format!(
                "{}.{}.",
                B64.encode(r#"{"alg":"none","kid":"hs256"}"#),
                B64.encode(&claims)
            ),
            401,
            "",
        ),
        (
            "alg confusion: RSA public key as HMAC secret",
            sign_hs256(r#"{"alg":"HS256","kid":"rs256"}"#, &claims, &jwks),
            401,
            "",
        ),
        (
            "unknown kid",
            sign_hs256(r#"{"alg":"HS256","kid":"nope"}"#, &claims, &hs_secret),
            401,
            "",
        ),
        (
            "duplicate claim key",
            sign_hs256(
                r#"{"alg":"HS256","kid":"hs256"}"#,
                &format!(
                    r#"{{"sub":"alice","sub":"root","exp":{}}}"#,
                    unix_now() + 600
                ),
                &hs_secret,
            ),
            401,
            "",
        ),
        ("bad base64", good_hs.replacen('.', ".=", 1), 401, ""),
        ("tampered signature", tampered, 401, ""),
        (
            "oversized",
            format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c"),
            401,
            "",
        ),
    ];
    for (what, token, status, needle) in cases {
        let r = with_token(addr, "/v1/x", &token, &[]);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        assert!(
            r.text().contains("authentication_error"),
            "{what}: {}",
            r.text()
        );
        assert!(r.text().contains(needle), "{what}: {}", r.text());
        assert!(
            !r.text().contains(&token[..20.min(token.len())]) || token.len() < 20,
            "{what}: token echoed"
        );
    }
    assert_eq!(
        with_token(addr, "/v1/x", &good_hs, &[]).status,
        200,
        "the hand-signed control token is valid"
    );
    let r = get(addr, "/v1/x");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn issuer_audience_and_scope() {
    let m = mint(
        "iss",
        r#"{"iss":"https://idp.example","aud":["other"],"scope":"chat"}"#,
        600,
    );
    let up = Upstream::echo();
    let gw = auth_gateway(
        &m,
        up.addr,
        "issuer = \"https://idp.example\"\naudience = [\"gateway\"]",
        "",
    );
    let r = with_token(gw.local_addr(), "/v1/x", &m.tokens[0].1, &[]);
    assert_eq!(r.status, 401, "wrong audience: {}", r.text());

    let m = mint("scope", r#"{"scope":"chat"}"#, 600);
    let gw = auth_gateway(&m, up.addr, "", "scope = \"ai:inference\"");
    let r = with_token(gw.local_addr(), "/v1/x", &m.tokens[0].1, &[]);
    assert_eq!(r.status, 403);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
}

#[test]
fn revocation_applies_on_every_worker_within_100ms() {
    let m = mint("revoke", r#"{"jti":"token-to-revoke"}"#, 600);
    let up = Upstream::echo();
    let gw = auth_gateway(&m, up.addr, "", "");
    let token = &m.tokens[0].1;
    let send_to = |c: &mut Client| {
        c.send(
            format!("GET /v1/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response().unwrap();
        // The worker that answered is the middle field of the request id.
        let worker = r
            .header("x-request-id")
            .and_then(|id| id.split('-').nth(1))
            .unwrap_or("?")
            .to_string();
        (r.status, worker)
    };
    let send = |c: &mut Client| send_to(c).0;
    // Connections on both workers (SO_REUSEPORT spreads them by hash: keep opening until each
    // worker holds four).
    let mut conns: Vec<Client> = Vec::new();
    let mut per_worker = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let mut c = Client::connect(gw.local_addr());
        let (status, worker) = send_to(&mut c);
        assert_eq!(status, 200);
        let n = per_worker.entry(worker).or_default();
        if *n < 4 {
            *n += 1;
            conns.push(c);
        }
        if per_worker.len() == 2 && per_worker.values().all(|&n| n == 4) {
            break;
        }
    }
    assert_eq!(conns.len(), 8, "connections did not spread: {per_worker:?}");
    let revoked = Revoked::new(RevokedKind::Jti, "token-to-revoke", unix_now() + 600).unwrap();
    // Returns once every worker has applied it.
    gw.revoke(&revoked)
        .expect("every worker confirms the revocation");
    for c in &mut conns {
        assert_eq!(
            send(c),
            401,
            "revoked token still accepted after revoke returned"
        );
    }
    let m = gw.collect();
    assert!(
        m.iter().all(|w| w.requests() >= 2),
        "both workers served the token before and after"
    );
}

/// The headers the echo upstream received, in order.
fn received_headers(r: &Response) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let (n, v) = h.as_str().unwrap().split_once(": ").unwrap();
            (n.to_string(), v.to_string())
        })
        .collect()
}

/// Claim shapes through the real gateway: arrays of strings are joined with each mapping's
/// separator, numbers and booleans arrive as JSON text, and every other shape refuses the
/// token (401) without the upstream seeing the request. Tokens are minted by PyJWT for every
/// algorithm.
#[test]
fn array_and_scalar_claims_reach_the_upstream_as_headers() {
    let mappings = format!(
        "{MAPPINGS}{}",
        [
            ("scp", "x-scopes", ""),
            ("grp", "x-groups", "separator = \",\"\n"),
            ("lvl", "x-level", ""),
            ("ratio", "x-ratio", ""),
            ("admin", "x-admin", ""),
            ("none", "x-none", ""),
            ("empty", "x-empty", ""),
            ("absent", "x-absent", ""),
        ]
        .iter()
        .map(|(c, h, extra)| format!(
            "[[auth.claim_headers]]\nclaim = \"{c}\"\nheader = \"{h}\"\n{extra}"
        ))
        .collect::<String>()
    );
    let m = mint(
        "shapes",
        r#"{"tid":"acme","scp":["chat","models:read"],"grp":["team a","ops"],"lvl":3,"ratio":0.5,"admin":false,"none":null,"empty":[]}"#,
        600,
    );
    let up = Upstream::echo();
    let gw = auth_gateway_mapping(&m, up.addr, "", "scope = \"chat\"", &mappings);
    let forged = [
        ("X-Scopes", "admin"),
        ("x-groups", "root"),
        ("X-Level", "99"),
        ("x-absent", "forged"),
        ("x-none", "forged"),
    ];
    for (alg, token) in &m.tokens {
        let r = with_token(gw.local_addr(), "/v1/chat", token, &forged);
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        let got: Vec<(String, String)> = received_headers(&r)
            .into_iter()
            .filter(|(n, _)| {
                n.starts_with("x-") && !n.starts_with("x-forwarded") && n != "x-request-id"
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("x-user-id", "alice"),
            ("x-tenant-id", "acme"),
            ("x-scopes", "chat models:read"),
            ("x-groups", "team a,ops"),
            ("x-level", "3"),
            ("x-ratio", "0.5"),
            ("x-admin", "false"),
            ("x-empty", ""),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            got, want,
            "{alg}: each mapped header once, client copies removed"
        );
    }

    // Shapes no header can carry faithfully: the token is refused and nothing is forwarded.
    let refused = [
        r#"{"grp":[1,2]}"#,
        r#"{"grp":["a",true]}"#,
        r#"{"grp":[["a"]]}"#,
        r#"{"grp":{"a":"b"}}"#,
        r#"{"grp":["a,b"]}"#,
        r#"{"scp":["chat","two words"]}"#,
        r#"{"grp":["a",""]}"#,
    ];
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = seen.clone();
    let counting = Upstream::start(move |mut c| {
        while c.read_request().is_some() {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let gw = auth_gateway_mapping(&m, counting.addr, "", "", &mappings);
    for claims in refused {
        // Same key directory: mint.py reuses the keys it made above.
        let bad = mint("shapes", claims, 600);
        for (alg, token) in &bad.tokens {
            let r = with_token(gw.local_addr(), "/v1/chat", token, &[]);
            assert_eq!(r.status, 401, "{claims} {alg}: {}", r.text());
            let challenge = r.header("www-authenticate").unwrap_or_default();
            let want = if claims.contains("two words") {
                "invalid claim value" // refused by the scope rules first
            } else {
                "cannot be forwarded upstream"
            };
            assert!(challenge.contains(want), "{claims}: {challenge}");
        }
    }
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no refused token reached the upstream"
    );
    let r = with_token(gw.local_addr(), "/v1/chat", &m.tokens[0].1, &[]);
    assert_eq!(r.status, 200, "control: {}", r.text());
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// Claim values that would inject header lines never reach the upstream: the token is
/// refused with 401 and the upstream sees no request. Signed here (ring), since the point is
/// the bytes, not the signer.
#[test]
fn claim_values_cannot_inject_upstream_header_lines() {
    let m = mint("inject", "{}", 600);
    let up = Upstream::echo();
    let mappings = format!(
        "{MAPPINGS}[[auth.claim_headers]]\nclaim = \"grp\"\nheader = \"x-groups\"\nseparator = \",\"\n"
    );
    let gw = auth_gateway_mapping(&m, up.addr, "", "", &mappings);
    let secret = std::fs::read(m.dir.join("hs256.key")).unwrap();
    let secret = secret.strip_suffix(b"\n").unwrap_or(&secret).to_vec();
    let token = |claims: &str| sign_hs256(r#"{"alg":"HS256","kid":"hs256"}"#, claims, &secret);
    let exp = unix_now() + 600;
    let values = [
        r#""a\r\nx-evil: 1""#,
        r#""a\r\ncontent-length: 0\r\n\r\nGET /admin HTTP/1.1""#,
        r#""a\nx-evil: 1""#,
        r#""a\rx-evil: 1""#,
        r#""a\u0000x-evil""#,
        r#""a\tb""#,
        r#""a\u2028x-evil: 1""#,
        r#""a\u2029b""#,
        r#""a\u0085b""#,
        r#"" padded""#,
        r#"["ok","a\r\nx-evil: 1"]"#,
        r#"["ok","\n"]"#,
    ];
    let long = format!("\"{}\"", "v".repeat(5000));
    let addr = gw.local_addr();
    for v in values.iter().copied().chain([long.as_str()]) {
        for claim in ["sub", "tid", "grp"] {
            let claims = if claim == "sub" {
                format!(r#"{{"sub":{v},"exp":{exp}}}"#)
            } else {
                format!(r#"{{"sub":"alice","{claim}":{v},"exp":{exp}}}"#)
            };
            let r = with_token(addr, "/v1/x", &token(&claims), &[]);
            assert_eq!(r.status, 401, "{claim} = {v}: {}", r.text());
            assert!(!r.text().contains("x-evil"), "{claim} = {v}");
        }
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the upstream"
    );
    // The control: a clean token passes, and its headers arrive exactly.
    let r = with_token(
        addr,
        "/v1/x",
        &token(&format!(
            r#"{{"sub":"alice","grp":["a","b c"],"exp":{exp}}}"#
        )),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = received_headers(&r);
    assert!(
        got.contains(&("x-groups".into(), "a,b c".into())),
        "{got:?}"
    );
    assert!(!got.iter().any(|(n, _)| n == "x-evil"));
}

/// Every worker caches a token that verified; a reload that changes the key or the claim
/// rules must refuse it on every worker at once, as the first request after the reload.
#[test]
fn a_reload_refuses_cached_tokens_the_new_config_would_refuse() {
    let up = Upstream::echo();
    let stack = Stack::start(
        &test_dir("auth-cache-reload"),
        &format!("{}{}", route_all(up.addr, ""), auth_hs256("")),
    );
    let t = token("cached-user");
    let status = |t: &str| {
        let (name, value) = bearer(t);
        get_with(stack.gw(), "/v1/x", &[(name, value.as_str())]).status
    };
    // New connections each time: SO_REUSEPORT spreads them over both workers.
    for _ in 0..16 {
        assert_eq!(status(&t), 200);
    }
    let cache = |result: &str| {
        stack.metric(&format!(
            "shardgate_auth_token_cache_total{{result=\"{result}\"}}"
        ))
    };
    // Each worker verified it in full once at most, then answered from its cache.
    assert!(
        cache("miss") <= 2.0 && cache("hit") >= 14.0,
        "{} {}",
        cache("hit"),
        cache("miss")
    );
    let original = std::fs::read_to_string(&stack.config).unwrap();
    let reload = |text: &str| {
        std::fs::write(&stack.config, text).unwrap();
        let (code, body) = stack.admin_call("POST", "/reload", "");
        assert_eq!(code, 200, "{body}");
    };
    // Workers take the new snapshot from their inboxes: wait until sixteen answers in a row
    // (spread over both workers) say `want`. A stale cache would keep answering 200.
    let settles_to = |want: u16, what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut run = 0;
        while run < 16 {
            assert!(std::time::Instant::now() < deadline, "{what}");
            run = if status(&t) == want { run + 1 } else { 0 };
        }
    };
    // The claim rules tighten: the token has no `iss`.
    reload(&original.replace("[auth]\n", "[auth]\nissuer = \"https://idp\"\n"));
    settles_to(401, "a cached token outlived a stricter issuer rule");
    reload(&original);
    settles_to(200, "the token is accepted again");
    // The key `hs` gets another secret: the old token's signature no longer verifies.
    reload(&original.replace(HS_SECRET, "another-hs256-secret-of-at-least-32-bytes"));
    settles_to(401, "a cached token outlived its key");
}
