//! Configuration: raw TOML → validated → immutable snapshot.
//!
//! This file currently holds the pieces every stage's config shares (problems, secrets,
//! durations); the full `RawConfig`/`Snapshot` is built on top of them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One thing wrong with a config: the file, the key path (`routes[2].targets[0].weight`) and
/// what is wrong. Validation collects every problem instead of stopping at the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A secret (HMAC key, upstream API key, admin token): from an environment variable, a file,
/// or inline (inline is for demos and tests only).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Secret {
    /// Read from this environment variable at load time.
    Env(String),
    /// Read from this file (relative paths are relative to the config file); one trailing
    /// newline is stripped.
    File(PathBuf),
    /// Written in the config itself.
    Value(String),
}

impl Secret {
    /// Resolves the secret's bytes. `key` names the config key for the error message.
    pub fn resolve(&self, base_dir: &Path, key: &str) -> Result<Vec<u8>, ConfigProblem> {
        match self {
            Secret::Env(var) => std::env::var(var).map(String::into_bytes).map_err(|_| {
                ConfigProblem::new(key, format!("environment variable `{var}` is not set"))
            }),
            Secret::File(path) => {
                let full = base_dir.join(path);
                let mut bytes = std::fs::read(&full).map_err(|e| {
                    ConfigProblem::new(key, format!("cannot read `{}`: {e}", full.display()))
                })?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                Ok(bytes)
            }
            Secret::Value(v) => Ok(v.clone().into_bytes()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The config file
// ---------------------------------------------------------------------------------------

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::http::limits::Limits;
use crate::http_config::RawLimits;

/// Default grace period for in-flight requests on shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time from request sent to the first response byte. Model servers can queue a
/// request for a long time before the first token, so this is generous.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default longest silence between two response reads (stream chunks).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default idle connections kept per upstream endpoint per worker.
pub const DEFAULT_POOL_MAX_IDLE: usize = 128;
/// Default age after which an idle pooled connection is dropped. Below uvicorn's (vLLM's)
/// 5 s keep-alive default, so the gateway normally closes first and never races a server
/// that is closing the same connection.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Default requests per upstream connection before it is retired.
pub const DEFAULT_POOL_MAX_REQUESTS: u32 = 10_000;

/// The whole config file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub deployments: Vec<crate::route::RawDeployment>,
    #[serde(default)]
    pub routes: Vec<crate::route::RawRoute>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub quota: Option<crate::quota::RawQuota>,
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub access_log: Option<RawAccessLog>,
    /// `[defaults]`: breaker, health-check and retry policies every upstream starts from.
    #[serde(default)]
    pub defaults: Option<crate::breaker::engine::RawDefaults>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `host:port` every worker listens on (SO_REUSEPORT).
    pub listen: String,
    /// `"auto"` (one per available core), a count, or explicit core ids.
    #[serde(default)]
    pub workers: RawWorkers,
    /// Pin each worker thread to its core.
    #[serde(default = "yes")]
    pub pin: bool,
    /// `"auto"` (io_uring, falling back to the legacy epoll driver), `"io_uring"`, `"legacy"`.
    #[serde(default)]
    pub driver: DriverChoice,
    pub drain_timeout_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(untagged)]
pub enum RawWorkers {
    #[default]
    #[serde(skip)]
    Default,
    Word(String),
    Count(usize),
    Cores(Vec<usize>),
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    #[default]
    Auto,
    IoUring,
    Legacy,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub endpoints: Vec<String>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub pool_max_idle: Option<usize>,
    pub pool_idle_timeout_ms: Option<u64>,
    pub pool_max_requests: Option<u32>,
    /// Credential injected toward the upstream as `Authorization: Bearer <key>`.
    pub api_key: Option<Secret>,
    /// `Host` sent upstream; default: the endpoint's `host:port` as written.
    pub host_header: Option<String>,
    /// Per-endpoint circuit breaker, over `[defaults.breaker]`.
    pub breaker: Option<crate::breaker::config::RawBreaker>,
    /// Active health checks of every endpoint, over `[defaults.health_check]`.
    pub health_check: Option<crate::breaker::config::RawHealthCheck>,
    /// Retry budget, over `[defaults.retry]`.
    pub retry: Option<crate::breaker::config::RawRetry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    pub token: Option<Secret>,
    #[serde(default)]
    pub allow_non_loopback_without_token: bool,
}

/// `[metrics]`: what the data path records beyond the per-worker totals.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Per-route histograms and status counters (default true).
    #[serde(default = "yes")]
    pub per_route: bool,
    /// Most label sets kept per counter family (e.g. token usage by subject × model): the
    /// largest by count stay, the rest add up under "other" (default 64).
    #[serde(default = "default_label_series")]
    pub label_series: usize,
}

fn default_label_series() -> usize {
    crate::metrics::counters::MAX_SERIES_PER_FAMILY
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            per_route: true,
            label_series: default_label_series(),
        }
    }
}

/// `[access_log]`: JSON lines, sampled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `"stdout"` or a file path (relative to the config file), appended to.
    pub path: String,
    /// Fraction of requests logged, 0.0..=1.0 (default 1.0).
    pub sample_rate: Option<f64>,
}

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

/// One upstream endpoint, resolved.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `Host` header value to send.
    pub host: String,
}

/// A validated upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    pub pool_max_requests: u32,
    /// Pre-rendered `authorization: Bearer ...\r\n` line, when a key is configured.
    pub auth_line: Option<Vec<u8>>,
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
    /// Endpoint ids and breaker/health/retry policies (see `breaker::engine`).
    pub resilience: crate::breaker::engine::Resilience,
}

/// A config that failed to load: every problem, each naming the file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.file.display(), p)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates `path`. `generation` is stamped on the snapshot.
pub fn load(path: &Path, generation: u64) -> Result<Snapshot, ConfigError> {
    let fail = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let text = std::fs::read(path).map_err(|e| {
        fail(vec![ConfigProblem::new(
            "(file)",
            format!("cannot read: {e}"),
        )])
    })?;
    load_bytes(path, &text, generation)
}

/// Parses and validates `bytes`, the content of `path` as read by the caller (the control
/// thread reads once, so the bytes it checked for stability are the bytes it loads).
pub fn load_bytes(path: &Path, bytes: &[u8], generation: u64) -> Result<Snapshot, ConfigError> {
    let fail = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        fail(vec![ConfigProblem::new(
            "(file)",
            format!("not UTF-8: {e}"),
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_str(text, base, generation).map_err(fail)
}

/// Parses and validates config text; relative paths resolve against `base_dir`.
pub fn from_str(
    text: &str,
    base_dir: &Path,
    generation: u64,
) -> Result<Snapshot, Vec<ConfigProblem>> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let key = e.span().map_or("(syntax)".to_string(), |s| {
            let line = text[..s.start].matches('\n').count() + 1;
            match key_path_at(text, s.start) {
                Some(path) => format!("{path} (line {line})"),
                None => format!("line {line}"),
            }
        });
        vec![ConfigProblem::new(key, e.message().to_string())]
    })?;
    raw.validate(base_dir, generation)
}

/// The key path (`routes[0].targets[1].weight`) of the key or value at byte `pos`, so a
/// type error names the key, not just the line.
fn key_path_at(text: &str, pos: usize) -> Option<String> {
    use toml_edit::{Item, Table, Value};
    fn hit(span: Option<std::ops::Range<usize>>, pos: usize) -> bool {
        span.is_some_and(|s| s.contains(&pos))
    }
    fn in_value(v: &Value, path: String, pos: usize) -> Option<String> {
        match v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, e)| in_value(e, format!("{path}[{i}]"), pos))
                .or_else(|| hit(a.span(), pos).then_some(path)),
            Value::InlineTable(t) => t
                .iter()
                .find_map(|(k, e)| {
                    let p = format!("{path}.{k}");
                    if t.key(k).is_some_and(|key| hit(key.span(), pos)) {
                        return Some(p);
                    }
                    in_value(e, p, pos)
                })
                .or_else(|| hit(t.span(), pos).then_some(path)),
            other => hit(other.span(), pos).then_some(path),
        }
    }
    fn in_table(t: &Table, prefix: &str, pos: usize) -> Option<String> {
        t.iter().find_map(|(k, item)| {
            let path = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            if t.key(k).is_some_and(|key| hit(key.span(), pos)) {
                return Some(path);
            }
            match item {
                Item::Value(v) => in_value(v, path, pos),
                Item::Table(sub) => in_table(sub, &path, pos),
                Item::ArrayOfTables(a) => a
                    .iter()
                    .enumerate()
                    .find_map(|(i, sub)| in_table(sub, &format!("{path}[{i}]"), pos)),
                Item::None => None,
            }
        })
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    in_table(doc.as_table(), "", pos)
}

impl RawConfig {
    /// Validates everything, collecting every problem before failing.
    pub fn validate(
        &self,
        base_dir: &Path,
        generation: u64,
    ) -> Result<Snapshot, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let server = self.server.build(&mut problems);
        let limits = self.limits.build(&mut problems);
        let mut upstreams = Vec::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = format!("upstreams[{i}]");
            if self.upstreams[..i].iter().any(|o| o.name == u.name) {
                problems.push(ConfigProblem::new(
                    format!("{key}.name"),
                    format!("duplicate upstream name `{}`", u.name),
                ));
            }
            upstreams.push(u.build(&key, base_dir, &mut problems));
        }
        let names: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        let router = crate::route::Router::build(&self.routes, &self.deployments, &names)
            .map_err(|p| problems.extend(p))
            .ok();
        // Each deployment is proxied like an upstream, with its own timeouts, credential,
        // breaker and health-check settings.
        let mut deployment_upstreams = Vec::new();
        let mut raw_upstreams = self.upstreams.clone();
        for d in router.iter().flat_map(|r| r.deployments()) {
            let rd = &self.deployments[d.id().index()];
            let raw = RawUpstream {
                name: format!("{}@{}", d.model(), d.version_str()),
                endpoints: d.endpoints().iter().map(|e| e.to_string()).collect(),
                connect_timeout_ms: rd.connect_timeout_ms,
                first_byte_timeout_ms: rd.first_byte_timeout_ms,
                idle_timeout_ms: rd.idle_timeout_ms,
                api_key: rd.api_key.clone(),
                breaker: rd.breaker.clone(),
                health_check: rd.health_check.clone(),
                ..RawUpstream::default()
            };
            let key = format!("deployments[{}]", d.id().index());
            deployment_upstreams.push(upstreams.len());
            upstreams.push(raw.build(&key, base_dir, &mut problems));
            raw_upstreams.push(raw);
        }
        let admin = self
            .admin
            .as_ref()
            .and_then(|a| a.build(base_dir, &mut problems));
        let quota = self
            .quota
            .as_ref()
            .and_then(|q| q.validate().map_err(|p| problems.extend(p)).ok());
        let auth = self.auth.as_ref().and_then(|a| {
            crate::auth::Authenticator::from_config(a, base_dir)
                .map_err(|p| problems.extend(p))
                .ok()
        });
        for (i, r) in self.routes.iter().enumerate() {
            if r.auth == Some(true) && self.auth.is_none() {
                problems.push(ConfigProblem::new(
                    format!("routes[{i}].auth"),
                    "requires an [auth] section",
                ));
            }
        }

        if !(1..=10_000).contains(&self.metrics.label_series) {
            problems.push(ConfigProblem::new(
                "metrics.label_series",
                "must be between 1 and 10000",
            ));
        }
        let metrics = MetricsSettings {
            per_route: self.metrics.per_route,
            label_series: self.metrics.label_series,
        };
        let access_log = self
            .access_log
            .as_ref()
            .and_then(|a| a.build(base_dir, &mut problems));
        let resilience = crate::breaker::engine::Resilience::build(
            self.defaults.as_ref(),
            &raw_upstreams,
            &upstreams,
            &mut problems,
        );
        match server {
            Some(server) if problems.is_empty() && router.is_some() => Ok(Snapshot {
                generation,
                server,
                limits,
                upstreams,
                router: router.expect("checked above"),
                deployment_upstreams,
                admin,
                quota,
                auth,
                metrics,
                access_log,
                resilience,
            }),
            _ => Err(problems),
        }
    }
}

fn resolve(addr: &str, key: &str, problems: &mut Vec<ConfigProblem>) -> Option<SocketAddr> {
    match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Some(a),
        Ok(None) => {
            problems.push(ConfigProblem::new(
                key,
                format!("`{addr}` resolves to no address"),
            ));
            None
        }
        Err(e) => {
            problems.push(ConfigProblem::new(
                key,
                format!("`{addr}` is not a valid host:port ({e})"),
            ));
            None
        }
    }
}

impl RawServer {
    fn build(&self, problems: &mut Vec<ConfigProblem>) -> Option<ServerSettings> {
        let listen = resolve(&self.listen, "server.listen", problems);
        let available: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let n_avail = available.len().max(1);
        let ids: Vec<usize> = match &self.workers {
            RawWorkers::Default => available.clone(),
            RawWorkers::Word(w) if w == "auto" => available.clone(),
            RawWorkers::Word(w) => {
                problems.push(ConfigProblem::new(
                    "server.workers",
                    format!("`{w}` is not \"auto\", a count or a list of core ids"),
                ));
                vec![]
            }
            RawWorkers::Count(0) => {
                problems.push(ConfigProblem::new("server.workers", "must be at least 1"));
                vec![]
            }
            RawWorkers::Count(n) => (0..*n)
                .map(|i| available.get(i % n_avail).copied().unwrap_or(i))
                .collect(),
            RawWorkers::Cores(ids) => {
                if ids.is_empty() {
                    problems.push(ConfigProblem::new("server.workers", "core list is empty"));
                }
                for (i, id) in ids.iter().enumerate() {
                    if !available.contains(id) {
                        problems.push(ConfigProblem::new(format!("server.workers[{i}]"), format!("core {id} is not available on this machine (available: {available:?})")));
                    }
                }
                ids.clone()
            }
        };
        let ids = if ids.is_empty() && problems.is_empty() {
            vec![0]
        } else {
            ids
        };
        let cores = ids.into_iter().map(|id| self.pin.then_some(id)).collect();
        let drain_timeout = self
            .drain_timeout_ms
            .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_millis);
        Some(ServerSettings {
            listen: listen?,
            cores,
            driver: self.driver,
            drain_timeout,
        })
    }
}

impl RawUpstream {
    fn build(&self, key: &str, base_dir: &Path, problems: &mut Vec<ConfigProblem>) -> Upstream {
        if self.endpoints.is_empty() {
            problems.push(ConfigProblem::new(
                format!("{key}.endpoints"),
                "at least one endpoint is required",
            ));
        }
        let endpoints = self
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let addr = resolve(e, &format!("{key}.endpoints[{i}]"), problems)?;
                Some(Endpoint {
                    addr,
                    host: self.host_header.clone().unwrap_or_else(|| e.clone()),
                })
            })
            .collect();
        if let Some(h) = self
            .host_header
            .as_deref()
            .filter(|h| !crate::http::fields::is_host_value(h))
        {
            problems.push(ConfigProblem::new(
                format!("{key}.host_header"),
                format!(
                    "`{}` is not a host or host:port (RFC 9110 §7.2)",
                    h.escape_debug()
                ),
            ));
        }
        let ms = |v: Option<u64>, d: Duration, name: &str, problems: &mut Vec<ConfigProblem>| {
            if v == Some(0) {
                problems.push(ConfigProblem::new(
                    format!("{key}.{name}"),
                    "must be greater than 0",
                ));
            }
            v.map_or(d, Duration::from_millis)
        };
        let auth_line = self.api_key.as_ref().and_then(|s| {
            let k = s
                .resolve(base_dir, &format!("{key}.api_key"))
                .map_err(|p| problems.push(p))
                .ok()?;
            if k.iter().any(|b| b.is_ascii_control()) {
                problems.push(ConfigProblem::new(
                    format!("{key}.api_key"),
                    "contains control characters",
                ));
                return None;
            }
            let mut line = b"authorization: Bearer ".to_vec();
            line.extend_from_slice(&k);
            line.extend_from_slice(b"\r\n");
            Some(line)
        });
        Upstream {
            name: self.name.clone(),
            endpoints,
            connect_timeout: ms(
                self.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT,
                "connect_timeout_ms",
                problems,
            ),
            first_byte_timeout: ms(
                self.first_byte_timeout_ms,
                DEFAULT_FIRST_BYTE_TIMEOUT,
                "first_byte_timeout_ms",
                problems,
            ),
            idle_timeout: ms(
                self.idle_timeout_ms,
                DEFAULT_IDLE_TIMEOUT,
                "idle_timeout_ms",
                problems,
            ),
            pool_max_idle: self.pool_max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
            pool_idle_timeout: ms(
                self.pool_idle_timeout_ms,
                DEFAULT_POOL_IDLE_TIMEOUT,
                "pool_idle_timeout_ms",
                problems,
            ),
            pool_max_requests: self
                .pool_max_requests
                .unwrap_or(DEFAULT_POOL_MAX_REQUESTS)
                .max(1),
            auth_line,
        }
    }
}

/// Shortest admin token accepted: anything shorter is guessable, and an empty one would
/// switch admin authentication off.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// Why `token` cannot be an admin bearer token, if it cannot: empty, blank, shorter than
/// [`MIN_ADMIN_TOKEN_BYTES`], holding control characters (it could not be sent in a header),
/// or with whitespace at either end (HTTP strips it from header values, so it would never
/// match).
pub fn admin_token_problem(token: &[u8]) -> Option<String> {
    if token.is_empty() {
        return Some("is empty; an empty token would leave the admin API open".into());
    }
    if token.iter().all(u8::is_ascii_whitespace) {
        return Some("is only whitespace".into());
    }
    if token.iter().any(u8::is_ascii_control) {
        return Some("contains control characters (tab, newline, NUL, DEL ...)".into());
    }
    if token.first() == Some(&b' ') || token.last() == Some(&b' ') {
        return Some("starts or ends with whitespace, which HTTP strips from header values".into());
    }
    if token.len() < MIN_ADMIN_TOKEN_BYTES {
        return Some(format!(
            "is {} bytes; at least {MIN_ADMIN_TOKEN_BYTES} are required",
            token.len()
        ));
    }
    None
}

impl Secret {
    /// Where the secret comes from, for an error message.
    fn source(&self) -> String {
        match self {
            Secret::Env(var) => format!("environment variable `{var}`"),
            Secret::File(path) => format!("file `{}`", path.display()),
            Secret::Value(_) => "inline value".into(),
        }
    }
}

impl RawAdmin {
    fn build(&self, base_dir: &Path, problems: &mut Vec<ConfigProblem>) -> Option<AdminSettings> {
        let listen = resolve(&self.listen, "admin.listen", problems)?;
        let token = self.token.as_ref().and_then(|t| {
            let bytes = t
                .resolve(base_dir, "admin.token")
                .map_err(|p| problems.push(p))
                .ok()?;
            match admin_token_problem(&bytes) {
                None => Some(bytes),
                Some(why) => {
                    let msg = format!("{why} (from {})", t.source());
                    problems.push(ConfigProblem::new("admin.token", msg));
                    None
                }
            }
        });
        // A token that was given but refused is reported above, not as a missing one.
        if self.token.is_none()
            && !listen.ip().is_loopback()
            && !self.allow_non_loopback_without_token
        {
            problems.push(ConfigProblem::new("admin.listen", "a non-loopback admin address requires admin.token (or allow_non_loopback_without_token = true)"));
        }
        Some(AdminSettings { listen, token })
    }
}

impl RawAccessLog {
    fn build(
        &self,
        base_dir: &Path,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<AccessLogSettings> {
        let rate = self.sample_rate.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&rate) {
            problems.push(ConfigProblem::new(
                "access_log.sample_rate",
                format!("{rate} is not between 0.0 and 1.0"),
            ));
        }
        let target = match self.path.as_str() {
            "" => {
                problems.push(ConfigProblem::new(
                    "access_log.path",
                    "must be \"stdout\" or a file path",
                ));
                return None;
            }
            "stdout" => AccessLogTarget::Stdout,
            p => AccessLogTarget::File(base_dir.join(p)),
        };
        Some(AccessLogSettings {
            target,
            sample_rate: rate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:9000"]
[[routes]]
path = "/v1/*rest"
methods = ["POST"]
upstream = "mock"
"#;

    #[test]
    fn good_config_builds() {
        let s = from_str(GOOD, Path::new("."), 1).unwrap();
        assert_eq!(s.server.cores.len(), 1);
        assert_eq!(s.upstreams[0].endpoints[0].addr.port(), 9000);
        assert!(s.router.lookup("POST", "/v1/chat").is_ok());
        assert!(matches!(
            s.router.lookup("GET", "/v1/chat"),
            Err(crate::route::RouteError::MethodNotAllowed(_))
        ));
        assert!(s.router.lookup("POST", "/v2").is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[server]
listen = "nope"
workers = 0
[[upstreams]]
name = "a"
endpoints = []
connect_timeout_ms = 0
[[routes]]
path = "/x"
upstream = "missing"
methods = ["G(T"]
[[routes]]
path = "y"
upstream = "a"
"#;
        let problems = from_str(text, Path::new("."), 1).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "server.listen",
            "server.workers",
            "upstreams[0].endpoints",
            "upstreams[0].connect_timeout_ms",
            "routes[0].upstream",
            "routes[1].path",
            "routes[0].methods[0]",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn metrics_and_access_log_settings() {
        let s = from_str(GOOD, Path::new("/etc/sg"), 1).unwrap();
        assert!(s.metrics.per_route);
        assert!(s.access_log.is_none());
        let text = format!(
            "{GOOD}[metrics]\nper_route = false\n[access_log]\npath = \"access.jsonl\"\nsample_rate = 0.01\n"
        );
        let s = from_str(&text, Path::new("/etc/sg"), 1).unwrap();
        assert!(!s.metrics.per_route);
        let a = s.access_log.unwrap();
        assert_eq!(
            a.target,
            AccessLogTarget::File(PathBuf::from("/etc/sg/access.jsonl"))
        );
        assert_eq!(a.sample_rate, 0.01);
        let bad = format!("{GOOD}[access_log]\npath = \"\"\nsample_rate = 1.5\n");
        let keys: Vec<String> = from_str(&bad, Path::new("."), 1)
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["access_log.sample_rate", "access_log.path"]);
    }

    /// `GOOD` with an `[admin]` whose token is `token` (a TOML inline table).
    fn with_admin_token(token: &str) -> String {
        format!("{GOOD}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {token}\n")
    }

    /// `s` as a TOML basic string, every control character escaped.
    fn toml_str(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' | '\\' => out.extend(['\\', c]),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn admin_token_problems(text: &str, base: &Path) -> Vec<ConfigProblem> {
        match from_str(text, base, 1) {
            Ok(s) => panic!("accepted token {:?}", s.admin.and_then(|a| a.token)),
            Err(p) => p,
        }
    }

    #[test]
    fn weak_admin_tokens_are_config_errors_from_every_source() {
        let bad: &[(&str, &str)] = &[
            ("", "is empty"),
            ("short-token", "is 11 bytes; at least 16"),
            ("fifteen-bytes!!", "is 15 bytes"),
            ("                ", "only whitespace"),
            ("\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t", "only whitespace"),
            ("\n", "only whitespace"),
            ("a-long-enough-token\n", "control characters"),
            ("a-long-enough\0token", "control characters"),
            ("a-long-enough\x7ftoken", "control characters"),
            ("a-long-enough\ttoken", "control characters"),
            (" a-long-enough-token", "whitespace"),
            ("a-long-enough-token ", "whitespace"),
        ];
        let dir = std::env::temp_dir().join(format!("sg-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (token, want)) in bad.iter().enumerate() {
            // Inline value.
            let inline = toml_str(token);
            let text = with_admin_token(&format!("{{ value = {inline} }}"));
            let p = admin_token_problems(&text, &dir);
            assert_eq!(p.len(), 1, "{token:?}: {p:?}");
            assert_eq!(p[0].key, "admin.token", "{token:?}");
            assert!(p[0].message.contains(want), "{token:?}: {}", p[0].message);
            assert!(p[0].message.contains("inline value"), "{}", p[0].message);
            // Environment variable (set, but weak; an environment cannot hold NUL).
            if !token.contains('\0') {
                let var = format!("SG_TEST_WEAK_ADMIN_TOKEN_{i}");
                std::env::set_var(&var, token);
                let text = with_admin_token(&format!("{{ env = \"{var}\" }}"));
                let p = admin_token_problems(&text, &dir);
                assert_eq!(p[0].key, "admin.token", "{token:?}");
                assert!(
                    p[0].message.contains(want),
                    "env {token:?}: {}",
                    p[0].message
                );
                assert!(p[0].message.contains(&var), "{}", p[0].message);
            }
            // File: one trailing newline is stripped, so write it with one more.
            let file = format!("token-{i}");
            std::fs::write(dir.join(&file), format!("{token}\n")).unwrap();
            let p =
                admin_token_problems(&with_admin_token(&format!("{{ file = \"{file}\" }}")), &dir);
            assert_eq!(p[0].key, "admin.token", "{token:?}");
            assert!(
                p[0].message.contains(want),
                "file {token:?}: {}",
                p[0].message
            );
            assert!(p[0].message.contains(&file), "{}", p[0].message);
        }
        // A file holding only a newline is an empty token.
        std::fs::write(dir.join("newline"), "\n").unwrap();
        let p = admin_token_problems(&with_admin_token("{ file = \"newline\" }"), &dir);
        assert!(p[0].message.contains("is empty"), "{p:?}");
        // A weak token on a non-loopback address is reported once, as weak.
        let text = with_admin_token("{ value = \"x\" }").replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"0.0.0.0:0\"",
        );
        let p = admin_token_problems(&text, &dir);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "admin.token");

        for good in [
            "0123456789abcdef",
            "a token with inner spaces",
            "ünïcødé-tøken-ok",
        ] {
            let inline = toml_str(good);
            let s = from_str(
                &with_admin_token(&format!("{{ value = {inline} }}")),
                &dir,
                1,
            )
            .unwrap_or_else(|p| panic!("{good:?}: {p:?}"));
            assert_eq!(s.admin.unwrap().token.unwrap(), good.as_bytes());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_are_rejected_with_location() {
        let text = GOOD.replace("workers = 1", "workers = 1\nwokers = 2");
        let problems = from_str(&text, Path::new("."), 1).unwrap_err();
        assert!(problems[0].message.contains("wokers"), "{problems:?}");
        assert_eq!(problems[0].key, "server.wokers (line 5)");
        let text = GOOD.replace(
            "methods = [\"POST\"]",
            "methods = [\"POST\"]\ntargets = [{ model = \"m\", weight = \"ninety\" }]",
        );
        let problems = from_str(&text, Path::new("."), 1).unwrap_err();
        assert!(
            problems[0]
                .key
                .starts_with("routes[0].targets[0].weight (line "),
            "{problems:?}"
        );
    }
}
