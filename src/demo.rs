//! `shardgate demo`: the gateway on `config/demo.toml` in front of in-process mock model
//! deployments, and the commands that show what it does.
//!
//! The config file is the one description of the demo: [`Demo::start`] starts a mock model
//! backend on every endpoint its `[[deployments]]` and `[[upstreams]]` name, answering as that
//! deployment's model (`served_name`, else `model`) and version. The caller then runs the
//! gateway on [`Demo::config`] and prints [`Demo::instructions`].
//!
//! [`PORT_BASE_ENV`] moves every port of the demo (gateway, admin, mocks) to consecutive ports
//! from a base, for tests and for machines where the documented ports are taken. The moved
//! config is written to a private temporary directory, removed when the [`Demo`] is dropped.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Value};

use shardgate_mock::{self as mock, MockConfig, MockHandle};

/// Environment variable: move the demo's ports to `base` (gateway), `base + 1` (admin) and
/// `base + 2 ..` (one per mock endpoint, in the order the config names them).
pub const PORT_BASE_ENV: &str = "SHARDGATE_DEMO_PORT_BASE";
/// The HMAC key `config/demo.toml` declares (kid `demo`), used to sign the printed token.
pub const SECRET: &[u8] = b"shardgate-demo-secret-not-for-production-use-0123456789";
/// Lifetime of the printed token.
const TOKEN_SECS: u64 = 86_400;
/// A mock that answers in tens of milliseconds and streams visibly, like a (fast) model.
const MOCK_LATENCY_MS: u64 = 15;
const MOCK_JITTER_MS: u64 = 25;
const MOCK_STREAM_CHUNKS: u32 = 12;
const MOCK_STREAM_GAP_MS: u64 = 60;

/// The demo's mock backends and the config the gateway runs on. Dropping it stops the mocks
/// and removes a moved config.
#[derive(Debug)]
pub struct Demo {
    config: PathBuf,
    temp_dir: Option<PathBuf>,
    mocks: Vec<(MockHandle, String)>,
}

/// One mock to start: where, and what it answers as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backend {
    addr: String,
    model: String,
    version: String,
}

impl Demo {
    /// Reads `config`, moves its ports when `port_base` is given, and starts one mock per
    /// backend endpoint. Errors name the file or the address that failed.
    pub fn start(config: &Path, port_base: Option<u16>) -> Result<Demo, String> {
        let text = std::fs::read_to_string(config)
            .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
        let mut doc: DocumentMut = text
            .parse()
            .map_err(|e| format!("{}: {e}", config.display()))?;
        let mut demo = Demo {
            config: config.to_path_buf(),
            temp_dir: None,
            mocks: Vec::new(),
        };
        if let Some(base) = port_base {
            move_ports(&mut doc, base).map_err(|e| format!("{}: {e}", config.display()))?;
            let dir = std::env::temp_dir().join(format!("shardgate-demo-{}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            demo.temp_dir = Some(dir.clone());
            demo.config = dir.join("demo.toml");
            std::fs::write(&demo.config, doc.to_string())
                .map_err(|e| format!("cannot write {}: {e}", demo.config.display()))?;
        }
        for b in backends(&doc) {
            let addr: SocketAddr = b
                .addr
                .parse()
                .map_err(|e| format!("mock endpoint `{}`: {e}", b.addr))?;
            let cfg = MockConfig {
                model: b.model.clone(),
                version: b.version.clone(),
                latency_ms: MOCK_LATENCY_MS,
                jitter_ms: MOCK_JITTER_MS,
                stream_chunks: MOCK_STREAM_CHUNKS,
                stream_gap_ms: MOCK_STREAM_GAP_MS,
                ..MockConfig::default()
            };
            let handle = mock::spawn(cfg, addr, 1).map_err(|e| {
                format!(
                    "cannot start the mock backend on {addr}: {e} \
                     (set {PORT_BASE_ENV}=N to move the demo to ports N, N+1, ...)"
                )
            })?;
            demo.mocks
                .push((handle, format!("{} {}", b.model, b.version)));
        }
        Ok(demo)
    }

    /// The config file the gateway should run on (the moved copy when ports were moved).
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// One line per mock: what it answers as and where.
    pub fn describe_mocks(&self) -> impl Iterator<Item = String> + '_ {
        self.mocks
            .iter()
            .map(|(m, what)| format!("mock {what} on http://{}", m.addr()))
    }

    /// What to try, with commands that work as printed: `gateway` and `admin` are the bound
    /// addresses, `exe` how a shell runs this binary (see [`invocation`]).
    pub fn instructions(
        &self,
        gateway: SocketAddr,
        admin: Option<SocketAddr>,
        exe: &str,
    ) -> String {
        let token = token(crate::time::unix_now());
        let url = format!("http://{gateway}/v1/chat/completions");
        // `flag` after `curl`, then one `-H` per line, then the body.
        let chat = |flag: &str, label: Option<&str>, body: &str| {
            let mut c = format!("  curl {flag} {url} \\\n");
            if let Some(label) = label {
                let _ = writeln!(c, "    -H 'x-canary: {label}' \\");
            }
            let _ = write!(
                c,
                "    -H 'authorization: Bearer {token}' \\\n    -H 'content-type: application/json' \\\n    -d '{body}'\n"
            );
            c
        };
        const HELLO: &str = r#""messages":[{"role":"user","content":"hello"}]"#;
        let plain = format!(r#"{{"model":"llama3-70b",{HELLO}}}"#);
        let stream = format!(r#"{{"model":"llama3-70b","stream":true,{HELLO}}}"#);
        let mut out = String::new();
        out.push_str(
            "\nPOST /v1/chat/completions splits model llama3-70b over two mock deployments:\n\
             version 3.1.0 (weight 80) and 3.2.0 (weight 20); requests labelled\n\
             `x-canary: canary` go to the canary, 3.3.0-rc.1. Each caller may send 100\n\
             requests a minute. The token below is valid for 24 h.\n\n\
             A chat completion; run it a few times: X-Shardgate-Version names the deployment\n\
             that answered, X-RateLimit-Remaining counts down:\n\n",
        );
        out.push_str(&chat("-i", None, &plain));
        out.push_str(
            "\nThe same request, streamed (server-sent events, relayed as they arrive):\n\n",
        );
        out.push_str(&chat("-N", None, &stream));
        out.push_str("\nThe canary, chosen by the label header:\n\n");
        out.push_str(&chat("-i", Some("canary"), &plain));
        if let Some(admin) = admin {
            let _ = write!(
                out,
                "\nLatency percentiles per route and deployment, refreshed every second \
                 (another terminal):\n\n  {exe} stats --admin {admin} --watch\n\n\
                 Prometheus metrics, e.g. requests per deployment and status:\n\n  \
                 curl -s http://{admin}/metrics | grep ^shardgate_deployment_requests_total\n"
            );
        }
        out.push_str("\nStop the demo with Ctrl-C.\n");
        out
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.mocks.clear();
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Every distinct endpoint of `[[deployments]]` (answering as that deployment), then of
/// `[[upstreams]]` (as the mock's default model), in the order the file names them.
fn backends(doc: &DocumentMut) -> Vec<Backend> {
    let mut out: Vec<Backend> = Vec::new();
    for (section, is_deployment) in [("deployments", true), ("upstreams", false)] {
        let Some(tables) = doc.get(section).and_then(|i| i.as_array_of_tables()) else {
            continue;
        };
        for t in tables {
            let text = |key: &str| t.get(key).and_then(|v| v.as_str()).map(str::to_owned);
            let (model, version) = if is_deployment {
                let model = text("served_name").or_else(|| text("model"));
                (
                    model.unwrap_or_default(),
                    text("version").unwrap_or_default(),
                )
            } else {
                let d = MockConfig::default();
                (d.model, d.version)
            };
            let endpoints = t.get("endpoints").and_then(|e| e.as_array());
            for addr in endpoints.into_iter().flatten().filter_map(|v| v.as_str()) {
                if !out.iter().any(|b| b.addr == addr) {
                    out.push(Backend {
                        addr: addr.to_owned(),
                        model: model.clone(),
                        version: version.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Rewrites `server.listen` to port `base`, `admin.listen` to `base + 1` and each distinct
/// endpoint to the next port, keeping each address's IP.
fn move_ports(doc: &mut DocumentMut, base: u16) -> Result<(), String> {
    let mut ports = PortMap {
        base,
        next: u32::from(base),
        seen: Vec::new(),
    };
    for section in ["server", "admin"] {
        let listen = doc.get_mut(section).and_then(|t| t.get_mut("listen"));
        if let Some(v) = listen.and_then(|i| i.as_value_mut()) {
            let old = v
                .as_str()
                .ok_or(format!("{section}.listen is not a string"))?;
            *v = Value::from(ports.moved(old)?);
        } else if section == "admin" {
            // Admin stays at base + 1 even when the file has none, so the mocks keep theirs.
            ports.next += 1;
        }
    }
    for section in ["deployments", "upstreams"] {
        let Some(tables) = doc
            .get_mut(section)
            .and_then(|i| i.as_array_of_tables_mut())
        else {
            continue;
        };
        for t in tables.iter_mut() {
            let Some(endpoints) = t.get_mut("endpoints").and_then(|e| e.as_array_mut()) else {
                continue;
            };
            for v in endpoints.iter_mut() {
                let old = v
                    .as_str()
                    .ok_or(format!("{section}.endpoints holds a non-string"))?;
                *v = Value::from(ports.moved(old)?);
            }
        }
    }
    Ok(())
}

/// Old address → new address, handing out consecutive ports.
struct PortMap {
    base: u16,
    next: u32,
    seen: Vec<(String, String)>,
}

impl PortMap {
    fn moved(&mut self, old: &str) -> Result<String, String> {
        if let Some((_, new)) = self.seen.iter().find(|(o, _)| o == old) {
            return Ok(new.clone());
        }
        let addr: SocketAddr = old
            .parse()
            .map_err(|e| format!("`{old}` is not an ip:port address: {e}"))?;
        let base = self.base;
        let port = u16::try_from(self.next)
            .map_err(|_| format!("{PORT_BASE_ENV}={base} runs past port 65535"))?;
        self.next += 1;
        let new = SocketAddr::new(addr.ip(), port).to_string();
        self.seen.push((old.to_owned(), new.clone()));
        Ok(new)
    }
}

/// An HS256 JWT for `demo-user` with scope `ai:inference`, signed with [`SECRET`], issued at
/// `now` (unix seconds).
pub fn token(now: u64) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let header = B64.encode(r#"{"alg":"HS256","typ":"JWT","kid":"demo"}"#);
    let claims = B64.encode(format!(
        r#"{{"sub":"demo-user","scope":"ai:inference","iat":{now},"exp":{}}}"#,
        now + TOKEN_SECS
    ));
    let msg = format!("{header}.{claims}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let sig = B64.encode(ring::hmac::sign(&key, msg.as_bytes()).as_ref());
    format!("{msg}.{sig}")
}

/// How a shell runs `exe` again: `shardgate` when that name on `PATH` is this very file, else
/// its path, quoted for `sh` when it holds anything but `[A-Za-z0-9/._+-]`.
pub fn invocation(exe: &Path) -> String {
    let me = std::fs::canonicalize(exe).ok();
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|dir| {
            let found = std::fs::canonicalize(dir.join("shardgate")).ok();
            found.is_some() && found == me
        })
    });
    if on_path {
        return "shardgate".into();
    }
    shell_quote(&exe.to_string_lossy())
}

fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._+-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The port base from [`PORT_BASE_ENV`], if set.
///
/// # Errors
///
/// The variable is set but is not a port number.
pub fn port_base_from_env() -> io::Result<Option<u16>> {
    match std::env::var(PORT_BASE_ENV) {
        Ok(v) => v.trim().parse().map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{PORT_BASE_ENV}=`{v}` is not a port number: {e}"),
            )
        }),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{PORT_BASE_ENV}: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[[deployments]]
model = "m"
version = "1.0.0"
endpoints = ["127.0.0.1:18081"]

[[deployments]]
model = "m"
version = "2.0.0"
served_name = "org/m-2"
endpoints = ["127.0.0.1:18082", "[::1]:18083"]

[[upstreams]]
name = "u"
endpoints = ["127.0.0.1:18081", "127.0.0.1:18084"]
"#;

    fn doc() -> DocumentMut {
        CONFIG.parse().unwrap()
    }

    #[test]
    fn backends_are_every_distinct_endpoint_as_their_deployment() {
        let b = backends(&doc());
        let got: Vec<(&str, &str, &str)> = b
            .iter()
            .map(|b| (b.addr.as_str(), b.model.as_str(), b.version.as_str()))
            .collect();
        let d = MockConfig::default();
        assert_eq!(
            got,
            [
                ("127.0.0.1:18081", "m", "1.0.0"),
                ("127.0.0.1:18082", "org/m-2", "2.0.0"),
                ("[::1]:18083", "org/m-2", "2.0.0"),
                ("127.0.0.1:18084", d.model.as_str(), d.version.as_str()),
            ]
        );
    }

    #[test]
    fn moved_ports_are_consecutive_from_the_base_and_shared_endpoints_stay_shared() {
        let mut d = doc();
        move_ports(&mut d, 30000).unwrap();
        let s = |v: &toml_edit::Item| v.as_str().unwrap().to_owned();
        assert_eq!(s(&d["server"]["listen"]), "127.0.0.1:30000");
        assert_eq!(s(&d["admin"]["listen"]), "127.0.0.1:30001");
        let addrs: Vec<String> = backends(&d).into_iter().map(|b| b.addr).collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:30002",
                "127.0.0.1:30003",
                "[::1]:30004",
                "127.0.0.1:30005"
            ]
        );
        // The upstream's first endpoint is the first deployment's: one mock serves both.
        assert_eq!(s(&d["upstreams"][0]["endpoints"][0]), "127.0.0.1:30002");
    }

    #[test]
    fn moving_ports_refuses_what_it_cannot_move() {
        let mut d = doc();
        assert!(move_ports(&mut d, 65533).unwrap_err().contains("65535"));
        let mut d: DocumentMut = "[server]\nlisten = \"localhost:80\"\n".parse().unwrap();
        assert!(move_ports(&mut d, 30000)
            .unwrap_err()
            .contains("localhost:80"));
        let mut d: DocumentMut = "[server]\nlisten = 8080\n".parse().unwrap();
        assert!(move_ports(&mut d, 30000)
            .unwrap_err()
            .contains("server.listen"));
    }

    #[test]
    fn the_token_verifies_with_the_demo_key_and_carries_the_demo_claims() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        let t = token(1_000);
        let (msg, sig) = t.rsplit_once('.').unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        ring::hmac::verify(&key, msg.as_bytes(), &B64.decode(sig).unwrap()).unwrap();
        let claims = B64.decode(msg.split('.').nth(1).unwrap()).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["sub"], "demo-user");
        assert_eq!(claims["scope"], "ai:inference");
        assert_eq!(claims["exp"], 1_000 + TOKEN_SECS);
    }

    #[test]
    fn the_demo_config_declares_the_signing_key() {
        let config = include_str!("../config/demo.toml");
        let secret = std::str::from_utf8(SECRET).unwrap();
        assert!(config.contains(&format!(
            "kid = \"demo\"\nalg = \"HS256\"\nsecret = {{ value = \"{secret}\" }}"
        )));
    }

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        for (path, quoted) in [
            (
                "/repo/target/release/shardgate",
                "/repo/target/release/shardgate",
            ),
            ("/a b/shardgate", "'/a b/shardgate'"),
            ("/it's/shardgate", r"'/it'\''s/shardgate'"),
            ("/x/$HOME/shardgate", "'/x/$HOME/shardgate'"),
            ("/x/a;b/shardgate", "'/x/a;b/shardgate'"),
            ("", "''"),
        ] {
            assert_eq!(shell_quote(path), quoted, "{path}");
        }
    }
}
