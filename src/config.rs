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

use crate::http::limits::{Limits, RawLimits};

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
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub quota: Option<crate::quota::RawQuota>,
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

#[derive(Debug, Clone, Deserialize)]
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

/// A route as written: a path pattern and the upstream it goes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    #[serde(default)]
    pub methods: Vec<String>,
    pub upstream: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    pub token: Option<Secret>,
    #[serde(default)]
    pub allow_non_loopback_without_token: bool,
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

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix (a pattern's trailing `*rest` wildcard is stripped); exact if no wildcard.
    pub prefix: String,
    pub wildcard: bool,
    pub methods: Vec<http::Method>,
    pub upstream: usize,
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
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    pub admin: Option<AdminSettings>,
    pub quota: Option<crate::quota::QuotaSettings>,
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
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![ConfigProblem::new(
            "(file)",
            format!("cannot read: {e}"),
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_str(&text, base, generation).map_err(fail)
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
            format!("line {line}")
        });
        vec![ConfigProblem::new(key, e.message().to_string())]
    })?;
    raw.validate(base_dir, generation)
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
        let mut routes = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(route) = r.build(&format!("routes[{i}]"), &upstreams, &mut problems) {
                routes.push(route);
            }
        }
        // Longest prefix first, so lookup can take the first match.
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.wildcard.cmp(&b.wildcard))
        });
        let admin = self
            .admin
            .as_ref()
            .and_then(|a| a.build(base_dir, &mut problems));
        let quota = self
            .quota
            .as_ref()
            .and_then(|q| q.validate().map_err(|p| problems.extend(p)).ok());
        let resilience = crate::breaker::engine::Resilience::build(
            self.defaults.as_ref(),
            &self.upstreams,
            &upstreams,
            &mut problems,
        );
        match server {
            Some(server) if problems.is_empty() => Ok(Snapshot {
                generation,
                server,
                limits,
                upstreams,
                routes,
                admin,
                quota,
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

impl RawRoute {
    fn build(
        &self,
        key: &str,
        upstreams: &[Upstream],
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<Route> {
        let upstream = upstreams.iter().position(|u| u.name == self.upstream);
        if upstream.is_none() {
            problems.push(ConfigProblem::new(
                format!("{key}.upstream"),
                format!("no upstream named `{}`", self.upstream),
            ));
        }
        if !self.path.starts_with('/') {
            problems.push(ConfigProblem::new(
                format!("{key}.path"),
                "must start with `/`",
            ));
        }
        let (prefix, wildcard) = match self.path.rfind("/*") {
            Some(i) => (self.path[..=i].to_string(), true),
            None => (self.path.clone(), false),
        };
        let mut methods = Vec::new();
        for (i, m) in self.methods.iter().enumerate() {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => problems.push(ConfigProblem::new(
                    format!("{key}.methods[{i}]"),
                    format!("`{m}` is not an HTTP method"),
                )),
            }
        }
        Some(Route {
            prefix,
            wildcard,
            methods,
            upstream: upstream?,
        })
    }
}

impl RawAdmin {
    fn build(&self, base_dir: &Path, problems: &mut Vec<ConfigProblem>) -> Option<AdminSettings> {
        let listen = resolve(&self.listen, "admin.listen", problems)?;
        let token = self.token.as_ref().and_then(|t| {
            t.resolve(base_dir, "admin.token")
                .map_err(|p| problems.push(p))
                .ok()
        });
        if token.is_none() && !listen.ip().is_loopback() && !self.allow_non_loopback_without_token {
            problems.push(ConfigProblem::new("admin.listen", "a non-loopback admin address requires admin.token (or allow_non_loopback_without_token = true)"));
        }
        Some(AdminSettings { listen, token })
    }
}

impl Snapshot {
    /// The route for `path`: exact routes, then the longest wildcard prefix.
    /// `Err(None)` → 404, `Err(Some(route))` → the path matched but the method did not (405).
    pub fn route(&self, method: &http::Method, path: &[u8]) -> Result<&Route, Option<&Route>> {
        let mut path_match = None;
        for r in &self.routes {
            let hit = if r.wildcard {
                path.starts_with(r.prefix.as_bytes())
            } else {
                path == r.prefix.as_bytes()
            };
            if hit {
                if r.methods.is_empty() || r.methods.contains(method) {
                    return Ok(r);
                }
                path_match.get_or_insert(r);
            }
        }
        Err(path_match)
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
        assert!(s.route(&http::Method::POST, b"/v1/chat").is_ok());
        assert!(matches!(
            s.route(&http::Method::GET, b"/v1/chat"),
            Err(Some(_))
        ));
        assert!(matches!(s.route(&http::Method::POST, b"/v2"), Err(None)));
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
path = "x"
upstream = "missing"
methods = ["G(T"]
"#;
        let problems = from_str(text, Path::new("."), 1).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "server.listen",
            "server.workers",
            "upstreams[0].endpoints",
            "upstreams[0].connect_timeout_ms",
            "routes[0].upstream",
            "routes[0].path",
            "routes[0].methods[0]",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_location() {
        let text = GOOD.replace("workers = 1", "workers = 1\nwokers = 2");
        let problems = from_str(&text, Path::new("."), 1).unwrap_err();
        assert!(problems[0].message.contains("wokers"), "{problems:?}");
        assert_eq!(problems[0].key, "line 5");
    }
}
