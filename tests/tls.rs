//! TLS through the real gateway on loopback: the TLS listener (curl, rustls clients, raw
//! ClientHellos), client certificates, and HTTPS upstreams (verification, SNI, pooling,
//! failures and the breaker). Certificates are made in each test (rcgen, ECDSA P-256).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::tls::*;
use common::*;
use shardgate::metrics::counters::{self, Family};
use shardgate::metrics::merge::Merged;
use shardgate::runtime::Engine;
use shardgate_mock::{self as mock, MockConfig, MockHandle};

fn mock_upstream() -> MockHandle {
    mock::spawn(MockConfig::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

/// The sum over workers of `family` at `values`.
fn counter(gw: &Engine, family: &'static Family, values: &[&str]) -> u64 {
    Merged::from_workers(gw.collect())
        .counters
        .get(family, values)
}

/// A gateway with a TLS listener serving `gw.test` (and the plain one), everything routed to
/// `upstream`; `tls_extra` goes into `[server.tls]`.
fn tls_gateway(dir: &TempDir, ca: &Ca, upstream: SocketAddr, tls_extra: &str) -> Engine {
    let (cert, key) = ca.server(&["gw.test", "localhost"]).write(dir, "gw");
    let server = format!(
        "listen = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{}",
        tls_server_section(&cert, &key, tls_extra)
    );
    gateway_with(&server, &route_all(upstream, ""))
}

fn tls_port(gw: &Engine) -> u16 {
    gw.tls_local_addr().expect("a TLS listener").port()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn curl_gets_plain_and_streamed_completions_through_the_tls_listener() {
    let dir = TempDir::new("curl");
    let ca = Ca::new("test ca");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let up = mock_upstream();
    let gw = tls_gateway(&dir, &ca, up.addr(), "");
    let port = tls_port(&gw);
    let cacert = ca_file.to_str().unwrap();
    let body = chat_body("m");
    let o = curl(
        "gw.test",
        port,
        "/v1/chat/completions",
        &[
            "--cacert",
            cacert,
            "-H",
            "content-type: application/json",
            "-d",
            &body,
        ],
    );
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&o).contains("\"chat.completion\""), "{}", stdout(&o));
    // Streamed: every event arrives, and the terminator.
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let o = curl(
        "gw.test",
        port,
        "/v1/chat/completions",
        &[
            "-N",
            "--cacert",
            cacert,
            "-H",
            "x-mock-chunks: 5",
            "-d",
            body,
        ],
    );
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = stdout(&o);
    assert!(text.matches("data: {").count() >= 5, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // HTTP/1.1 keep-alive over one TLS connection: two URLs, one handshake.
    let url = format!("https://gw.test:{port}/v1/models");
    let o = curl(
        "gw.test",
        port,
        "/v1/models",
        &[
            "--cacert",
            cacert,
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects}\n",
            &url,
        ],
    );
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        ["1", "0"],
        "the second reuses the connection"
    );
    // The upstream learns the client's scheme: https through the TLS listener (a client's own
    // claim is replaced), http through the plain one.
    let o = curl(
        "gw.test",
        port,
        "/echo/scheme",
        &["--cacert", cacert, "-H", "x-forwarded-proto: http"],
    );
    assert!(o.status.success());
    let echoed = stdout(&o).to_ascii_lowercase();
    assert!(
        echoed.contains(r#"["x-forwarded-proto","https"]"#),
        "{echoed}"
    );
    assert_eq!(echoed.matches("x-forwarded-proto").count(), 1, "{echoed}");
    let plain = get(gw.local_addr(), "/echo/scheme")
        .text()
        .to_ascii_lowercase();
    assert!(plain.contains(r#"["x-forwarded-proto","http"]"#), "{plain}");
    // The plain listener still serves.
    assert_eq!(get(gw.local_addr(), "/v1/models").status, 200);
    assert!(counter(&gw, &counters::TLS_HANDSHAKES, &["full"]) >= 4);
}

/// A ClientHello of `version` (record and hello), offering two suites, with the extensions a
/// TLS 1.2 hello needs (`signature_algorithms`, groups, point formats) when `sig_algs`, else
/// none (as pre-1.2 clients send no `signature_algorithms`).
fn client_hello(version: [u8; 2], sig_algs: bool) -> Vec<u8> {
    let mut hello = vec![version[0], version[1]];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0, 4, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE-{ECDSA,RSA}-AES128-GCM
    hello.extend_from_slice(&[1, 0]); // compression: null
    if sig_algs {
        hello.extend_from_slice(&[0, 22]);
        hello.extend_from_slice(&[0x00, 0x0d, 0, 4, 0, 2, 0x04, 0x03]); // ecdsa_secp256r1_sha256
        hello.extend_from_slice(&[0x00, 0x0a, 0, 4, 0, 2, 0x00, 0x17]); // secp256r1
        hello.extend_from_slice(&[0x00, 0x0b, 0, 2, 1, 0]); // uncompressed points
    }
    let mut hs = vec![1, 0, (hello.len() >> 8) as u8, hello.len() as u8];
    hs.extend_from_slice(&hello);
    let mut rec = vec![
        0x16,
        version[0],
        version[1],
        (hs.len() >> 8) as u8,
        hs.len() as u8,
    ];
    rec.extend_from_slice(&hs);
    rec
}

/// SSL 3.0, TLS 1.0 and TLS 1.1 clients get a fatal alert and no ServerHello —
/// `protocol_version` (70), or `handshake_failure` (40) when they lack TLS 1.2's
/// `signature_algorithms` as real ones do — counted as `protocol_version`; curl limited to
/// TLS 1.0 fails.
#[test]
fn clients_offering_only_old_protocol_versions_are_refused() {
    let dir = TempDir::new("versions");
    let ca = Ca::new("test ca");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let up = Upstream::echo();
    let gw = tls_gateway(&dir, &ca, up.addr, "");
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port(&gw)).into();
    let versions = [
        ("SSL 3.0", [3, 0]),
        ("TLS 1.0", [3, 1]),
        ("TLS 1.1", [3, 2]),
    ];
    for ((name, version), sig_algs) in versions.iter().flat_map(|v| [(v, true), (v, false)]) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&client_hello(*version, sig_algs)).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.len() >= 7, "{name}: {got:?}");
        assert_eq!(
            got[0], 0x15,
            "{name}: an alert record, not a ServerHello: {got:?}"
        );
        let want = if sig_algs { 70 } else { 40 };
        assert_eq!(
            got[5..7],
            [2, want],
            "{name} (signature_algorithms: {sig_algs})"
        );
    }
    assert_eq!(
        counter(
            &gw,
            &counters::TLS_HANDSHAKE_FAILURES,
            &["protocol_version"]
        ),
        6
    );
    // The same hello at TLS 1.2 gets a ServerHello (a handshake record).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&client_hello([3, 3], true)).unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    assert_eq!(first[0], 0x16, "TLS 1.2 is answered with a handshake");
    let o = curl(
        "gw.test",
        addr.port(),
        "/x",
        &[
            "--cacert",
            ca_file.to_str().unwrap(),
            "--tlsv1.0",
            "--tls-max",
            "1.0",
        ],
    );
    assert!(!o.status.success(), "TLS 1.0 must not connect");
    // Not TLS at all, and a client that stops mid-handshake, are counted too.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty() || got[0] == 0x15,
        "plaintext gets no HTTP answer: {got:?}"
    );
    assert_eq!(
        counter(&gw, &counters::TLS_HANDSHAKE_FAILURES, &["malformed"]),
        1
    );
}

/// A client that sends half a ClientHello and stalls is cut at the handshake timeout.
#[test]
fn a_stalled_handshake_is_cut_at_the_timeout() {
    let dir = TempDir::new("slowloris");
    let ca = Ca::new("test ca");
    let up = Upstream::echo();
    let gw = tls_gateway(&dir, &ca, up.addr, "handshake_timeout_ms = 300");
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port(&gw)).into();
    let mut s = TcpStream::connect(addr).unwrap();
    let hello = client_hello([3, 3], true);
    s.write_all(&hello[..20]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "closed without an answer: {got:?}");
    assert_eq!(
        counter(&gw, &counters::TLS_HANDSHAKE_FAILURES, &["timeout"]),
        1
    );
}

/// SNI picks the certificate; a name no certificate covers gets the default one, which a
/// verifying client refuses.
#[test]
fn sni_chooses_the_certificate_and_a_wrong_name_fails_verification() {
    let dir = TempDir::new("sni");
    let ca = Ca::new("test ca");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let (other_cert, other_key) = ca.server(&["*.other.test"]).write(&dir, "other");
    let up = Upstream::echo();
    let sni = format!(
        "[[server.tls.sni]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        other_cert.display(),
        other_key.display()
    );
    let gw = tls_gateway(&dir, &ca, up.addr, &sni);
    let port = tls_port(&gw);
    let cacert = ca_file.to_str().unwrap();
    for (host, ok) in [
        ("gw.test", true),
        ("api.other.test", true),
        ("wrong.test", false),
        ("a.b.other.test", false),
    ] {
        let o = curl(host, port, "/x", &["--cacert", cacert]);
        assert_eq!(
            o.status.success(),
            ok,
            "{host}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if !ok {
            // curl's "SSL: no alternative certificate subject name matches" (exit 60).
            assert_eq!(o.status.code(), Some(60), "{host}");
        }
    }
}

/// `client_auth = "required"`: no certificate, or one from another CA, fails the handshake;
/// one from `client_ca_file` is served.
#[test]
fn required_client_certificates_are_enforced() {
    let dir = TempDir::new("mtls");
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let strangers = Ca::new("stranger ca");
    let clients_file = dir.write("clients.pem", &clients.pem());
    let up = Upstream::echo();
    let extra = format!(
        "client_ca_file = \"{}\"\nclient_auth = \"required\"\n",
        clients_file.display()
    );
    let gw = tls_gateway(&dir, &ca, up.addr, &extra);
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port(&gw)).into();
    let spec = Spec {
        names: &["batch.internal"],
        client: true,
        ..Spec::default()
    };
    let good = clients.issue(spec);
    let foreign = strangers.issue(spec);
    let none = https_get(&client_config(&ca, None), addr, "gw.test", "/x");
    assert!(none.is_err(), "no certificate: {none:?}");
    let bad = https_get(&client_config(&ca, Some(&foreign)), addr, "gw.test", "/x");
    assert!(bad.is_err(), "a stranger's certificate: {bad:?}");
    let ok = https_get(&client_config(&ca, Some(&good)), addr, "gw.test", "/x").unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(
        counter(
            &gw,
            &counters::TLS_HANDSHAKE_FAILURES,
            &["no_client_certificate"]
        ),
        1
    );
    assert_eq!(
        counter(
            &gw,
            &counters::TLS_HANDSHAKE_FAILURES,
            &["bad_client_certificate"]
        ),
        1
    );
}

/// An `https://` upstream: verified against `ca_file`, SNI from `server_name`, requests on one
/// pooled TLS connection.
#[test]
fn https_upstreams_are_verified_named_and_pooled() {
    let dir = TempDir::new("upstream");
    let ca = Ca::new("upstream ca");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let tls_up = TlsUpstream::start(&ca.server(&["models.internal"]), None);
    let cfg = format!(
        "[[upstreams]]\nname = \"up\"\nendpoints = [\"https://{}\"]\n\
         tls = {{ ca_file = \"{}\", server_name = \"models.internal\" }}\n{}",
        tls_up.addr,
        ca_file.display(),
        route("/*rest", "up", "")
    );
    let gw = gateway_with("listen = \"127.0.0.1:0\"\nworkers = 1\npin = false", &cfg);
    for i in 0..5 {
        let r = get(gw.local_addr(), &format!("/v1/models/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.text(),
            format!("{{\"sni\":\"models.internal\",\"target\":\"/v1/models/{i}\"}}")
        );
    }
    assert_eq!(
        tls_up.handshakes.load(Ordering::Relaxed),
        1,
        "one pooled connection"
    );
    assert_eq!(tls_up.requests.load(Ordering::Relaxed), 5);
}

/// Expired, wrongly named and unknown-issuer certificates: 502 `upstream_tls_error`, counted
/// by reason, and the endpoint's breaker opens.
#[test]
fn bad_upstream_certificates_are_502s_that_trip_the_breaker() {
    let ca = Ca::new("upstream ca");
    let stranger = Ca::new("stranger");
    let cases = [
        (
            "cert_expired",
            ca.issue(Spec {
                names: &["models.internal"],
                expired: true,
                ..Spec::default()
            }),
        ),
        ("cert_name_mismatch", ca.server(&["elsewhere.internal"])),
        ("cert_unknown_issuer", stranger.server(&["models.internal"])),
    ];
    for (reason, cert) in cases {
        let dir = TempDir::new("bad-upstream");
        let ca_file = dir.write("ca.pem", &ca.pem());
        let tls_up = TlsUpstream::start(&cert, None);
        let cfg = format!(
            "[defaults.breaker]\nconsecutive_failures = 2\nmin_calls = 1000\nopen_base_ms = 60000\n\
             [[upstreams]]\nname = \"up\"\nendpoints = [\"https://{}\"]\n\
             tls = {{ ca_file = \"{}\", server_name = \"models.internal\" }}\n{}",
            tls_up.addr,
            ca_file.display(),
            route("/*rest", "up", "")
        );
        let gw = gateway_with("listen = \"127.0.0.1:0\"\nworkers = 1\npin = false", &cfg);
        for _ in 0..2 {
            let r = get(gw.local_addr(), "/v1/models");
            assert_eq!(r.status, 502, "{reason}: {}", r.text());
            assert!(
                r.text().contains("\"upstream_tls_error\""),
                "{reason}: {}",
                r.text()
            );
        }
        assert_eq!(
            counter(&gw, &counters::UPSTREAM_TLS_ERRORS, &["up", reason]),
            2,
            "{reason}"
        );
        // Two failed handshakes in a row opened the breaker: no third attempt is made.
        let mut refused = false;
        for _ in 0..50 {
            let r = get(gw.local_addr(), "/v1/models");
            if r.status == 503 {
                refused = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(refused, "{reason}: the breaker opens");
        assert_eq!(
            tls_up.requests.load(Ordering::Relaxed),
            0,
            "{reason}: nothing was served"
        );
    }
}

/// Engine and control thread on a config file in `dir` (quick file watches), as `shardgate`
/// wires them.
fn watched_gateway(dir: &TempDir, text: &str) -> (shardgate::control::Control, Engine) {
    let path = dir.write("gateway.toml", text);
    let snap = shardgate::config::load(&path, 1).unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::start(snap.clone()).unwrap();
    let start = shardgate::control::Start {
        watch: shardgate::control::WatchSettings {
            interval: Duration::from_millis(20),
            settle: Duration::from_millis(60),
        },
        ..shardgate::control::Start::new(path, snap, engine.inboxes())
    };
    (shardgate::control::Control::spawn(start).unwrap(), engine)
}

fn rotating_config(up: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n\
         [server.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n{}",
        route_all(up, "")
    )
}

/// The certificate files are replaced under steady load (fresh handshakes and a keep-alive
/// connection): no request fails, new connections get the new certificate, the connection
/// opened before keeps serving.
#[test]
fn certificates_rotate_under_load_without_a_failed_request() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let dir = TempDir::new("rotate");
    let ca = Ca::new("test ca");
    let first = ca.server(&["gw.test"]);
    first.write(&dir, "gw");
    let up = Upstream::echo();
    let (_control, gw) = watched_gateway(&dir, &rotating_config(up.addr));
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port(&gw)).into();
    let client = client_config(&ca, None);
    let old_leaf = first.chain()[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut leaves) = (0u32, Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match https_get_cert(&client, addr, "gw.test", "/v1/x") {
                        Ok((text, leaf)) if text.starts_with("HTTP/1.1 200") => {
                            ok += 1;
                            if !leaves.contains(&leaf) {
                                leaves.push(leaf);
                            }
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed, leaves)
            })
        })
        .collect();
    // A keep-alive connection opened before the rotation.
    let name = rustls::pki_types::ServerName::try_from("gw.test").unwrap();
    let conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let mut kept = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    let keep_alive_get = |s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
        s.write_all(b"GET /v1/kept HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(keep_alive_get(&mut kept).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(300));
    let second = ca.server(&["gw.test"]);
    second.write(&dir, "gw");
    let new_leaf = second.chain()[0].clone();
    let mut rotated = false;
    for _ in 0..250 {
        let (_, leaf) = https_get_cert(&client, addr, "gw.test", "/v1/probe").unwrap();
        if leaf == new_leaf {
            rotated = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    assert!(rotated, "new connections get the new certificate");
    let mut total = 0;
    for t in load {
        let (ok, failed, leaves) = t.join().unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(
            leaves.contains(&old_leaf) && leaves.contains(&new_leaf),
            "saw both"
        );
        total += ok;
    }
    assert!(total > 10, "{total} requests under load");
    let again = keep_alive_get(&mut kept);
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "the old connection still serves: {again}"
    );
    assert_eq!(kept.conn.peer_certificates().unwrap()[0], old_leaf);
}

/// A key that does not belong to the certificate, a file that is not PEM, a missing file:
/// each rejects the reload naming the key and the file, and the certificate in force stays.
#[test]
fn a_bad_certificate_pair_is_a_config_problem_and_the_old_one_stays() {
    let dir = TempDir::new("bad-pair");
    let ca = Ca::new("test ca");
    let good = ca.server(&["gw.test"]);
    good.write(&dir, "gw");
    let up = Upstream::echo();
    let (control, gw) = watched_gateway(&dir, &rotating_config(up.addr));
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port(&gw)).into();
    let client = client_config(&ca, None);
    let other_key = ca.server(&["gw.test"]).key_pem;
    let cases: [(&str, &str, &str, &str); 3] = [
        (
            "gw.key",
            &other_key,
            "server.tls.cert_file",
            "does not belong to the private key",
        ),
        (
            "gw.pem",
            "not a certificate\n",
            "server.tls.cert_file",
            "CERTIFICATE",
        ),
        (
            "gw.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "server.tls.key_file",
            "gw.key",
        ),
    ];
    for (file, text, key, says) in cases {
        dir.write(file, text);
        let e = control.reload().expect_err("rejected");
        let p = e
            .problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{e}"));
        assert!(p.message.contains(says) && p.message.contains(file), "{p}");
        let (text, leaf) = https_get_cert(&client, addr, "gw.test", "/v1/x").unwrap();
        assert!(text.starts_with("HTTP/1.1 200"));
        assert_eq!(leaf, good.chain()[0], "the old certificate stays");
        good.write(&dir, "gw");
    }
}

/// The official `openai` Python client over HTTPS, trusting the test CA through
/// `SSL_CERT_FILE`: a completion and a stream through the TLS listener.
#[test]
fn the_openai_python_client_works_over_https() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "python3 with the `openai` package is needed (tests/install-test-deps.sh installs it)"
    );
    let dir = TempDir::new("openai");
    let ca = Ca::new("test ca");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let up = mock_upstream();
    let gw = tls_gateway(&dir, &ca, up.addr(), "");
    let script = r#"
import os, openai
c = openai.OpenAI(base_url=os.environ["GW_URL"], api_key="sk-test", max_retries=0, timeout=20)
m = [{"role": "user", "content": "hi"}]
r = c.chat.completions.create(model="m", messages=m)
assert r.object == "chat.completion", r
chunks = list(c.chat.completions.create(model="m", messages=m, stream=True))
assert len(chunks) >= 2, chunks
print("ok", len(chunks))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .env("GW_URL", format!("https://localhost:{}/v1", tls_port(&gw)))
        .env("SSL_CERT_FILE", &ca_file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && stdout(&out).starts_with("ok"),
        "{}\n{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[auth] client_certificates = true` with `client_auth = "optional"`: a verified client
/// certificate stands for a token (its subject mapped upstream like the `sub` claim); without
/// one a token is needed; a token, when sent, is what counts.
#[test]
fn a_client_certificate_is_an_identity_for_routes() {
    let dir = TempDir::new("mtls-auth");
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let clients_file = dir.write("clients.pem", &clients.pem());
    let (cert, key) = ca.server(&["gw.test"]).write(&dir, "gw");
    let up = Upstream::echo();
    let server = format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false\n{}",
        tls_server_section(
            &cert,
            &key,
            &format!(
                "client_ca_file = \"{}\"\nclient_auth = \"optional\"\n",
                clients_file.display()
            )
        )
    );
    let rest = auth_hs256(
        "client_certificates = true\n[[auth.claim_headers]]\nclaim = \"sub\"\nheader = \"x-user-id\"\n",
    ) + &route_all(up.addr, "");
    let gw = gateway_with(&server, &rest);
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port(&gw)).into();
    let batch = clients.issue(Spec {
        names: &["batch.internal"],
        client: true,
        ..Spec::default()
    });
    let spiffe = clients.issue(Spec {
        names: &["svc.internal"],
        uri: Some("spiffe://prod/ns/batch"),
        client: true,
        ..Spec::default()
    });
    for (who, want) in [
        (&batch, "batch.internal"),
        (&spiffe, "spiffe://prod/ns/batch"),
    ] {
        let r = https_get(&client_config(&ca, Some(who)), addr, "gw.test", "/v1/x").unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(&format!("x-user-id: {want}")), "{r}");
    }
    let anonymous = https_get(&client_config(&ca, None), addr, "gw.test", "/v1/x").unwrap();
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    // A token wins over the certificate (and a bad one is not rescued by it).
    let config = client_config(&ca, Some(&batch));
    for (token, status, user) in [
        (token("alice"), "200", Some("alice")),
        ("bad".into(), "401", None),
    ] {
        let name = rustls::pki_types::ServerName::try_from("gw.test").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
        let req = format!(
            "GET /v1/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        if let Some(u) = user {
            assert!(text.contains(&format!("x-user-id: {u}")), "{text}");
        }
    }
}

/// A verified client certificate stands for a credential only on routes that accept every
/// configured kind (`auth` absent, `true`, `"any"`); a route narrowed to `"jwt"` or `"key"`
/// accepts that kind only, and an open route needs nothing. Over every route kind, with and
/// without a certificate; a token on the narrowed JWT route still works.
#[test]
fn a_client_certificate_counts_only_where_every_credential_kind_does() {
    let dir = TempDir::new("mtls-kinds");
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let clients_file = dir.write("clients.pem", &clients.pem());
    let (cert, key) = ca.server(&["gw.test"]).write(&dir, "gw");
    let up = Upstream::echo();
    let server = format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false\n{}",
        tls_server_section(
            &cert,
            &key,
            &format!(
                "client_ca_file = \"{}\"\nclient_auth = \"optional\"\n",
                clients_file.display()
            )
        )
    );
    let kinds = [
        ("default", "", "200", "401"),
        ("true", "auth = true", "200", "401"),
        ("any", "auth = \"any\"", "200", "401"),
        ("jwt", "auth = \"jwt\"", "401", "401"),
        ("key", "auth = \"key\"", "401", "401"),
        ("open", "auth = false", "200", "200"),
    ];
    let mut rest = auth_hs256(
        "client_certificates = true\n[[auth.claim_headers]]\nclaim = \"sub\"\nheader = \"x-user-id\"\n",
    ) + "[auth.api_keys]\nfile = \"keys.json\"\n"
        + &upstream("up", &[up.addr], "");
    for (name, extra, _, _) in kinds {
        rest += &route(&format!("/{name}/*rest"), "up", extra);
    }
    let gw = gateway_with(&server, &rest);
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port(&gw)).into();
    let batch = clients.issue(Spec {
        names: &["batch.internal"],
        client: true,
        ..Spec::default()
    });
    for (name, _, with_cert, without) in kinds {
        let path = format!("/{name}/x");
        let r = https_get(&client_config(&ca, Some(&batch)), addr, "gw.test", &path).unwrap();
        assert!(
            r.starts_with(&format!("HTTP/1.1 {with_cert}")),
            "{name}: {r}"
        );
        let mapped = r.contains("x-user-id: batch.internal");
        assert_eq!(mapped, with_cert == "200" && name != "open", "{name}: {r}");
        let r = https_get(&client_config(&ca, None), addr, "gw.test", &path).unwrap();
        assert!(r.starts_with(&format!("HTTP/1.1 {without}")), "{name}: {r}");
    }
    // The narrowed JWT route takes a token on the same certificate-bearing connection.
    let name = rustls::pki_types::ServerName::try_from("gw.test").unwrap();
    let conn = rustls::ClientConnection::new(client_config(&ca, Some(&batch)), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    let req = format!(
        "GET /jwt/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token("alice")
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-user-id: alice"), "{text}");
}
