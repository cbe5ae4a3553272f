//! The immutable, validated config every worker runs on, and its settings types. A reload
//! builds a new [`Snapshot`]; nothing in it changes after validation.
//!
//! # What a reload applies
//!
//! A reload sends every worker the new snapshot, which it swaps in between requests, and the
//! control plane follows it: [`RELOAD_APPLIES`]. What the process set up at start from the
//! first snapshot (its listeners, worker threads, admin listener, access log writer, quota
//! backend, revocation file) stays as it was until a restart: [`RESTART_ONLY`]. A reload
//! that changes one of those still applies the rest, and [`needs_restart`] names what it did
//! not apply.
//!
//! Key material the control thread owns is not read from the config file and reaches workers
//! as a new snapshot whenever it changes, with or without a reload: the API key table
//! (`[auth.api_keys]`: the keys file, its watch, the admin API) and the keys fetched for each
//! remote key set (`[[auth.jwks]]`). A reload that changes `auth.api_keys` (another file)
//! opens that store; one that changes `auth.jwks` fetches the new sources at once and keeps
//! the keys of sources it still has.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::DriverChoice;
use crate::config_types::Upstream;
use crate::http::limits::Limits;
use crate::quota::{FailMode, QuotaBackend, RedisSettings};

/// Validated `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub per_route: bool,
    pub label_series: usize,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

/// Validated `[access_log]`.
#[derive(Debug, Clone)]
pub struct AccessLogSettings {
    pub target: AccessLogTarget,
    pub sample_rate: f64,
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Core id per worker (`None`: do not pin).
    pub cores: Vec<Option<usize>>,
    pub driver: DriverChoice,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<Vec<u8>>,
}

/// The immutable, validated config every worker runs on. A reload builds a new one.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases by one with every applied config.
    pub generation: u64,
    pub server: ServerSettings,
    pub limits: Limits,
    /// Named upstreams, then one per model deployment (see `deployment_upstreams`).
    pub upstreams: Vec<Upstream>,
    /// The route trie, model catalog and splits.
    pub router: crate::route::Router,
    /// `upstreams` index of each deployment, by `DeploymentId`.
    pub deployment_upstreams: Vec<usize>,
    pub admin: Option<AdminSettings>,
    pub quota: Option<crate::quota::QuotaSettings>,
    /// JWT verification, when `[auth]` is configured.
    pub auth: Option<crate::auth::Authenticator>,
    pub metrics: MetricsSettings,
    pub access_log: Option<AccessLogSettings>,
    /// Endpoint ids and breaker/health/retry policies (see `breaker::table`).
    pub resilience: crate::breaker::table::Resilience,
}

impl Snapshot {
    /// The index of `upstream` in [`Snapshot::upstreams`] (the forward path holds a
    /// reference).
    #[inline]
    pub fn upstream_index(&self, upstream: &Upstream) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|u| std::ptr::eq(u, upstream))
    }
}

/// Settings a reload applies (the config keys, as the admin API and README list them).
pub const RELOAD_APPLIES: &[&str] = &[
    "routes",
    "deployments",
    "upstreams",
    "defaults",
    "limits",
    "auth",
    "auth.jwks",
    "auth.api_keys",
    "quota.rules",
    "metrics",
    "admin.token",
    "access_log.path",
    "access_log.sample_rate",
];

/// Settings only a restart applies: the process keeps the values it started with.
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.workers",
    "server.pin",
    "server.driver",
    "server.drain_timeout_ms",
    "admin",
    "admin.listen",
    "access_log",
    "quota.backend",
    "quota.redis_url",
    "quota.key_prefix",
    "quota.fail_mode",
    "auth.revocation_file",
];

/// The [`RESTART_ONLY`] settings in which `new` differs from `running`, the snapshot the
/// process started with. `admin` and `access_log` stand for adding or removing the table.
pub fn needs_restart(running: &Snapshot, new: &Snapshot) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            out.push(key);
        }
    };
    let (r, n) = (&running.server, &new.server);
    check(r.listen != n.listen, "server.listen");
    let pinned = |s: &ServerSettings| s.cores.iter().map(Option::is_some).collect::<Vec<_>>();
    let pin_changed = r.cores.len() == n.cores.len() && pinned(r) != pinned(n);
    check(r.cores != n.cores && !pin_changed, "server.workers");
    check(pin_changed, "server.pin");
    check(r.driver != n.driver, "server.driver");
    check(
        r.drain_timeout != n.drain_timeout,
        "server.drain_timeout_ms",
    );
    match (&running.admin, &new.admin) {
        (Some(r), Some(n)) => check(r.listen != n.listen, "admin.listen"),
        (r, n) => check(r.is_some() != n.is_some(), "admin"),
    }
    check(
        running.access_log.is_some() != new.access_log.is_some(),
        "access_log",
    );
    match (quota_backend(running), quota_backend(new)) {
        (Some((r_redis, r_mode)), Some((n_redis, n_mode))) => {
            check(r_redis.url != n_redis.url, "quota.redis_url");
            check(r_redis.key_prefix != n_redis.key_prefix, "quota.key_prefix");
            check(r_mode != n_mode, "quota.fail_mode");
        }
        (r, n) => check(r.is_some() != n.is_some(), "quota.backend"),
    }
    let revocation_file = |s: &Snapshot| {
        s.auth
            .as_ref()
            .and_then(|a| a.revocation_file())
            .map(PathBuf::from)
    };
    check(
        revocation_file(running) != revocation_file(new),
        "auth.revocation_file",
    );
    out
}

/// The Redis backend of `[quota]`, if that is the backend (`None`: the local one).
fn quota_backend(s: &Snapshot) -> Option<(&RedisSettings, FailMode)> {
    let q = s.quota.as_ref()?;
    match (q.backend, &q.redis) {
        (QuotaBackend::Redis, Some(redis)) => Some((redis, q.fail_mode)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:7000"
workers = 1
[[upstreams]]
name = "up"
endpoints = ["127.0.0.1:9000"]
[[routes]]
path = "/v1/*rest"
upstream = "up"
"#;

    fn snap(extra: &str) -> Snapshot {
        let text = format!("{BASE}{extra}");
        crate::config::from_str(&text, Path::new("/etc/sg"), 1).unwrap()
    }

    #[test]
    fn every_restart_only_setting_is_named_when_it_changes() {
        let admin = "[admin]\nlisten = \"127.0.0.1:7001\"\n";
        let log = "[access_log]\npath = \"a.jsonl\"\n";
        let redis = |url: &str, prefix: &str, mode: &str| {
            format!(
                "[quota]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\nfail_mode = \"{mode}\"\n"
            )
        };
        let auth = |file: &str| {
            format!(
                "[auth]\nrevocation_file = \"{file}\"\n[[auth.keys]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = {{ value = \"0123456789abcdef0123456789abcdef\" }}\n"
            )
        };
        let r1 = redis("redis://127.0.0.1:1/0", "a", "fail_open");
        let cases: Vec<(String, String, &[&str])> = vec![
            (String::new(), String::new(), &[]),
            (admin.into(), admin.into(), &[]),
            (String::new(), admin.into(), &["admin"]),
            (admin.into(), String::new(), &["admin"]),
            (
                admin.into(),
                admin.replace("7001", "7002"),
                &["admin.listen"],
            ),
            (String::new(), log.into(), &["access_log"]),
            (log.into(), String::new(), &["access_log"]),
            (log.into(), log.replace("a.jsonl", "b.jsonl"), &[]),
            (String::new(), r1.clone(), &["quota.backend"]),
            (r1.clone(), String::new(), &["quota.backend"]),
            (
                r1.clone(),
                redis("redis://127.0.0.1:2/0", "a", "fail_open"),
                &["quota.redis_url"],
            ),
            (
                r1.clone(),
                redis("redis://127.0.0.1:1/0", "b", "fail_open"),
                &["quota.key_prefix"],
            ),
            (
                r1.clone(),
                redis("redis://127.0.0.1:1/0", "a", "fail_closed"),
                &["quota.fail_mode"],
            ),
            // The local backend has no Redis settings to change.
            (
                "[quota]\nfail_mode = \"fail_open\"\n".into(),
                "[quota]\nfail_mode = \"fail_closed\"\n".into(),
                &[],
            ),
            (auth("r1.txt"), auth("r1.txt"), &[]),
            (auth("r1.txt"), auth("r2.txt"), &["auth.revocation_file"]),
            (String::new(), auth("r1.txt"), &["auth.revocation_file"]),
        ];
        for (before, after, want) in cases {
            let got = needs_restart(&snap(&before), &snap(&after));
            assert_eq!(got, want, "{before:?} -> {after:?}");
            for key in got {
                assert!(RESTART_ONLY.contains(&key), "{key} is not listed");
            }
        }
    }

    #[test]
    fn server_changes_name_their_key() {
        let base = snap("");
        let server = |from: &str, to: &str| {
            let text = BASE.replace(from, to);
            let new = crate::config::from_str(&text, Path::new("/etc/sg"), 1).unwrap();
            needs_restart(&base, &new)
        };
        assert_eq!(server("7000", "7003"), ["server.listen"]);
        assert_eq!(server("workers = 1", "workers = 2"), ["server.workers"]);
        assert_eq!(
            server("workers = 1", "workers = 1\npin = false"),
            ["server.pin"]
        );
        assert_eq!(
            server("workers = 1", "workers = 1\ndriver = \"legacy\""),
            ["server.driver"]
        );
        assert_eq!(
            server("workers = 1", "workers = 1\ndrain_timeout_ms = 5"),
            ["server.drain_timeout_ms"]
        );
        // Route changes are a reload's business.
        assert!(server("/v1/*rest", "/v2/*rest").is_empty());
    }

    #[test]
    fn the_two_lists_do_not_overlap() {
        for key in RELOAD_APPLIES {
            assert!(!RESTART_ONLY.contains(key), "{key}");
        }
    }
}
