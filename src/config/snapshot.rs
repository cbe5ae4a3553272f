//! The immutable, validated config every worker runs on, and its settings types. A reload
//! builds a new [`Snapshot`]; nothing in it changes after validation.
//!
//! # What a reload applies
//!
//! A reload sends every worker the new snapshot, which it swaps in between requests, and the
//! control plane follows it: [`RELOAD_APPLIES`]. What the process set up at start from the
//! first snapshot (its listeners, worker threads, admin listener, access log writer, quota
//! backend, revocation file, spend thread and store, the budgets' time zone) stays as it was
//! until a restart: [`RESTART_ONLY`]. A reload that changes one of those still applies the
//! rest, and [`needs_restart`] names what it did not apply. A binary upgrade
//! (`shardgate upgrade`, see [`crate::upgrade`]) is such a restart without a refused
//! connection: the new process reads the whole file (a changed worker count is served on the
//! same sockets; a changed listen address is bound anew).
//!
//! Key material the control thread owns is not read from the config file and reaches workers
//! as a new snapshot whenever it changes, with or without a reload: the API key table
//! (`[auth.api_keys]`: the keys file and its watch, or the registry database and its change
//! counter; the admin API) and the keys fetched for each remote key set (`[[auth.jwks]]`). A
//! reload that changes `auth.api_keys` (another file, or `file` removed so the keys come from
//! the registry) opens that store; one that changes `auth.jwks` fetches the new sources at
//! once and keeps the keys of sources it still has. Where spend is kept (Redis, the registry,
//! `spend.file`) is chosen at start, like the registry itself.

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
    /// The TLS listener, when `[server.tls]` is set.
    pub tls: Option<crate::tls::ServerTls>,
    /// `[server.io_uring]` (defaults when absent).
    pub io_uring: crate::ring_config::IoUringSettings,
    /// `server.busy_poll_us`: zero turns busy polling off.
    pub busy_poll: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<Vec<u8>>,
    /// `[admin] tokens`: named tokens, each accepted like `token`.
    pub tokens: Vec<NamedToken>,
}

/// The name `[admin] token`'s holder has in the registry's audit log.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// One of `[admin] tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedToken {
    pub name: String,
    pub token: Vec<u8>,
}

impl AdminSettings {
    /// Whether any token is configured (else the admin API needs none).
    pub fn has_token(&self) -> bool {
        self.token.is_some() || !self.tokens.is_empty()
    }

    /// Every accepted token with its holder's name: `token` as [`ADMIN_TOKEN_NAME`], then
    /// `tokens` in config order.
    pub fn named_tokens(&self) -> Vec<(&str, &[u8])> {
        let plain = self.token.as_deref().map(|t| (ADMIN_TOKEN_NAME, t));
        let named = self.tokens.iter().map(|n| (n.name.as_str(), &n.token[..]));
        plain.into_iter().chain(named).collect()
    }
}

/// Validated `[registry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// The database file, resolved against the config file's directory.
    pub path: PathBuf,
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
    /// Per `upstreams` index: the TLS settings of its TLS endpoints (see [`crate::tls`]).
    pub upstream_tls: Vec<Option<crate::tls::UpstreamTls>>,
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
    /// `[tracing]`, when configured.
    pub tracing: Option<crate::trace::TracingSettings>,
    /// Prices and the spend store, when `[spend]` is configured.
    pub spend: Option<crate::spend::SpendSettings>,
    /// Budgets per caller and calendar period, when `[budgets]` is configured.
    pub budgets: Option<crate::quota::budget::BudgetSettings>,
    /// `[registry]`, when deployments also come from the model registry.
    pub registry: Option<RegistrySettings>,
    /// Each upstream's endpoint choice (`balance`, `affinity`, `load_metric`; see `balance`):
    /// a reload applies it, the workers' in-flight counts carrying over by endpoint id and the
    /// load-metric thread restarting when its targets change.
    pub balance: crate::balance::Table,
    /// `[[transforms]]`, compiled, and which route uses which (see `adapt::transforms`).
    pub transforms: crate::adapt::Transforms,
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
    "admin.tokens",
    "access_log.path",
    "access_log.sample_rate",
    // TLS: new connections get the new certificates and settings; open ones keep theirs.
    // The listener's PEM files are also watched (`control::cert_watch`).
    "server.tls.cert_file",
    "server.tls.key_file",
    "server.tls.sni",
    "server.tls.client_ca_file",
    "server.tls.client_auth",
    "server.tls.handshake_timeout_ms",
    "server.tls.min_version",
    "upstreams.tls",
    "tracing.sample_ratio",
    // Spend and budgets (each worker prices and decides on the snapshot it runs).
    "spend.prices",
    "budgets.rules",
    "transforms",
];

/// Settings only a restart applies: the process keeps the values it started with.
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.workers",
    "server.pin",
    "server.driver",
    "server.drain_timeout_ms",
    // Each worker builds its ring and starts its busy poll once (issue #13).
    "server.io_uring",
    "server.busy_poll_us",
    "server.tls",
    "server.tls.listen",
    "admin",
    "admin.listen",
    "access_log",
    "quota.backend",
    "quota.redis_url",
    "quota.key_prefix",
    "quota.fail_mode",
    "auth.revocation_file",
    "tracing",
    "tracing.endpoint",
    "tracing.service_name",
    "tracing.export_timeout_ms",
    "tracing.export_interval_ms",
    "tracing.max_queue_spans",
    // Spend and budgets: the spend thread, its store and the budgets' calendar are set up
    // from the first snapshot. `spend` stands for adding `[spend]` or `[budgets]` to a
    // process that started with neither (nothing keeps spend until a restart).
    "spend",
    "spend.currency",
    "spend.file",
    "spend.flush_interval_ms",
    "budgets.time_zone",
    "registry",
    "registry.path",
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
    check(r.io_uring != n.io_uring, "server.io_uring");
    check(r.busy_poll != n.busy_poll, "server.busy_poll_us");
    match (&r.tls, &n.tls) {
        (Some(r), Some(n)) => check(r.listen != n.listen, "server.tls.listen"),
        (r, n) => check(r.is_some() != n.is_some(), "server.tls"),
    }
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
    // The exporter thread is set up at start; only the sample ratio follows a reload.
    match (&running.tracing, &new.tracing) {
        (Some(r), Some(n)) => {
            check(r.collector != n.collector, "tracing.endpoint");
            check(r.service_name != n.service_name, "tracing.service_name");
            check(
                r.export_timeout != n.export_timeout,
                "tracing.export_timeout_ms",
            );
            check(
                r.export_interval != n.export_interval,
                "tracing.export_interval_ms",
            );
            check(
                r.max_queue_spans != n.max_queue_spans,
                "tracing.max_queue_spans",
            );
        }
        (r, n) => check(r.is_some() != n.is_some(), "tracing"),
    }
    spend_needs_restart(running, new, &mut check);
    match (&running.registry, &new.registry) {
        (Some(r), Some(n)) => check(r.path != n.path, "registry.path"),
        (r, n) => check(r.is_some() != n.is_some(), "registry"),
    }
    out
}

/// The restart-only `[spend]`/`[budgets]` settings (see [`RESTART_ONLY`]) `new` changes. A
/// process that started with neither table runs no spend thread: adding one is `spend`, and
/// its other settings are not compared.
fn spend_needs_restart(
    running: &Snapshot,
    new: &Snapshot,
    check: &mut impl FnMut(bool, &'static str),
) {
    let keeps = |s: &Snapshot| s.spend.is_some() || s.budgets.is_some();
    if !keeps(running) {
        check(keeps(new), "spend");
        return;
    }
    fn currency(s: &Snapshot) -> &str {
        s.spend.as_ref().map_or("USD", |p| p.currency.as_str())
    }
    fn tz(s: &Snapshot) -> &str {
        s.budgets.as_ref().map_or("UTC", |b| b.time_zone.as_str())
    }
    let file = |s: &Snapshot| s.spend.as_ref().and_then(|p| p.file.clone());
    let flush = |s: &Snapshot| s.spend.as_ref().map(|p| p.flush_interval);
    check(currency(running) != currency(new), "spend.currency");
    check(file(running) != file(new), "spend.file");
    let default = Some(crate::spend::DEFAULT_FLUSH_INTERVAL);
    check(
        flush(running).or(default) != flush(new).or(default),
        "spend.flush_interval_ms",
    );
    check(tz(running) != tz(new), "budgets.time_zone");
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
        let tracing =
            |extra: &str| format!("[tracing]\nendpoint = \"http://127.0.0.1:4318\"\n{extra}");
        let reg = |path: &str| format!("[registry]\npath = \"{path}\"\n");
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
            (String::new(), reg("a.db"), &["registry"]),
            (reg("a.db"), String::new(), &["registry"]),
            (reg("a.db"), reg("a.db"), &[]),
            (reg("a.db"), reg("b.db"), &["registry.path"]),
            (auth("r1.txt"), auth("r2.txt"), &["auth.revocation_file"]),
            (String::new(), auth("r1.txt"), &["auth.revocation_file"]),
            (String::new(), tracing(""), &["tracing"]),
            (tracing(""), String::new(), &["tracing"]),
            (tracing(""), tracing("sample_ratio = 0.5\n"), &[]),
            (
                tracing(""),
                tracing("").replace("4318", "4319"),
                &["tracing.endpoint"],
            ),
            (
                tracing(""),
                tracing("service_name = \"gw\"\n"),
                &["tracing.service_name"],
            ),
            (
                tracing(""),
                tracing("export_timeout_ms = 5\n"),
                &["tracing.export_timeout_ms"],
            ),
            (
                tracing(""),
                tracing("export_interval_ms = 5\n"),
                &["tracing.export_interval_ms"],
            ),
            (
                tracing(""),
                tracing("max_queue_spans = 100\n"),
                &["tracing.max_queue_spans"],
            ),
        ];
        for (before, after, want) in cases {
            let got = needs_restart(&snap(&before), &snap(&after));
            assert_eq!(got, want, "{before:?} -> {after:?}");
            for key in got {
                assert!(RESTART_ONLY.contains(&key), "{key} is not listed");
            }
        }
    }

    /// Every restart-only `[spend]`/`[budgets]` setting is named when it changes, and what a
    /// reload applies (prices, budget rules) is not.
    #[test]
    fn spend_and_budget_restart_settings_are_named_when_they_change() {
        let spend = |currency: &str, file: &str, flush: &str, price: &str| {
            format!(
                "[spend]\ncurrency = \"{currency}\"\n{file}{flush}[[spend.prices]]\nmodel = \"*\"\ninput = {price}\noutput = 1.0\n"
            )
        };
        let budgets = |tz: &str, tokens: u64| {
            format!(
                "[budgets]\ntime_zone = \"{tz}\"\n[[budgets.rules]]\nname = \"b\"\nkey = \"subject\"\nperiod = \"day\"\ntokens = {tokens}\n"
            )
        };
        let s1 = spend("USD", "", "", "1.0");
        let b1 = budgets("UTC", 100);
        let both = format!("{s1}{b1}");
        let cases: Vec<(String, String, &[&str])> = vec![
            (String::new(), String::new(), &[]),
            (String::new(), s1.clone(), &["spend"]),
            (String::new(), b1.clone(), &["spend"]),
            // Removing them: the spend thread keeps running (and keeps what it counted).
            (s1.clone(), String::new(), &[]),
            (s1.clone(), spend("USD", "", "", "2.5"), &[]),
            (both.clone(), format!("{s1}{}", budgets("UTC", 7)), &[]),
            (s1.clone(), spend("EUR", "", "", "1.0"), &["spend.currency"]),
            (
                s1.clone(),
                spend("USD", "file = \"s.json\"\n", "", "1.0"),
                &["spend.file"],
            ),
            (
                spend("USD", "file = \"s.json\"\n", "", "1.0"),
                spend("USD", "file = \"t.json\"\n", "", "1.0"),
                &["spend.file"],
            ),
            (
                s1.clone(),
                spend("USD", "", "flush_interval_ms = 50\n", "1.0"),
                &["spend.flush_interval_ms"],
            ),
            // Written out as the default it already ran with: nothing changes.
            (
                s1.clone(),
                spend("USD", "", "flush_interval_ms = 1000\n", "1.0"),
                &[],
            ),
            (
                both.clone(),
                format!("{s1}{}", budgets("Europe/Berlin", 100)),
                &["budgets.time_zone"],
            ),
            // Budgets alone run the spend thread too; adding prices is a reload's business.
            (b1.clone(), both.clone(), &[]),
            (
                b1.clone(),
                format!("{}{b1}", spend("EUR", "", "", "1.0")),
                &["spend.currency"],
            ),
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
        assert_eq!(
            server("workers = 1", "workers = 1\nbusy_poll_us = 50"),
            ["server.busy_poll_us"]
        );
        for ring in [
            "entries = 1024",
            "sqpoll = true",
            "sqpoll = true\nsqpoll_idle_ms = 5",
            "coop_taskrun = false",
            "coop_taskrun = true",
            "single_issuer = true",
            "single_issuer = true\ndefer_taskrun = true",
        ] {
            assert_eq!(
                server(
                    "workers = 1",
                    &format!("workers = 1\n[server.io_uring]\n{ring}")
                ),
                ["server.io_uring"],
                "{ring}"
            );
        }
        // An empty table is the default ring.
        assert!(server("workers = 1", "workers = 1\n[server.io_uring]").is_empty());
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
