//! The config file as written: serde structs with `deny_unknown_fields`, so a mistyped key
//! fails loudly with its key path. Each stage's own table (`[quota]`, `[auth]`, routes,
//! deployments, breaker policies, limits) is that stage's raw type; this file assembles them.

use serde::Deserialize;

use crate::config_types::Secret;
use crate::http_config::RawLimits;

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
    pub defaults: Option<crate::breaker::table::RawDefaults>,
    /// `[tracing]`: W3C trace context and OTLP span export.
    #[serde(default)]
    pub tracing: Option<crate::trace::RawTracing>,
    /// `[spend]`: prices, currency and where spend is kept.
    #[serde(default)]
    pub spend: Option<crate::spend::RawSpend>,
    /// `[budgets]`: token and currency budgets per caller and calendar period.
    #[serde(default)]
    pub budgets: Option<crate::quota::budget::RawBudgets>,
    /// `[registry]`: the model registry database (absent: deployments come from TOML only).
    #[serde(default)]
    pub registry: Option<RawRegistry>,
    /// `[[transforms]]`: schema-driven field mapping that routes name (see `adapt::transforms`).
    #[serde(default)]
    pub transforms: Vec<crate::adapt::RawTransform>,
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
    /// `[server.tls]`: a TLS listener besides the plain one.
    #[serde(default)]
    pub tls: Option<crate::tls::RawServerTls>,
    /// `[server.io_uring]`: the ring each worker builds (see `crate::ring_config`).
    #[serde(default)]
    pub io_uring: Option<crate::ring_config::RawIoUring>,
    /// A worker with nothing to do spins this long before it sleeps (0: never spins).
    pub busy_poll_us: Option<u64>,
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
    /// `host:port`, `http://host:port` or `https://host[:port]` (TLS).
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
    /// TLS toward every endpoint (`https://` endpoints use TLS with the defaults anyway).
    pub tls: Option<crate::tls::RawUpstreamTls>,
    /// Endpoint choice (default round-robin), its affinity key and load feed: see `balance`.
    pub balance: Option<crate::balance::RawPolicy>,
    pub affinity: Option<crate::balance::RawAffinity>,
    pub load_metric: Option<crate::balance::RawLoadMetric>,
    /// The API the upstream speaks (see `crate::adapt`); `api_key` goes as `x-api-key` to
    /// Anthropic.
    #[serde(default)]
    pub provider: crate::config_types::RawProvider,
    /// `anthropic-version` header (provider `anthropic` only; default 2023-06-01).
    pub anthropic_version: Option<String>,
    /// `max_tokens` for requests without one (provider `anthropic` only; default 4096).
    pub default_max_tokens: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    /// The admin token; its holder is named `admin` in the registry's audit log.
    pub token: Option<Secret>,
    /// Named admin tokens (`tokens = [{ name = "alice", token = { env = "..." } }]`): each
    /// is accepted like `token`, and the name is who the registry's audit log records.
    #[serde(default)]
    pub tokens: Vec<RawAdminToken>,
    #[serde(default)]
    pub allow_non_loopback_without_token: bool,
}

/// One entry of `[admin] tokens`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    pub name: String,
    pub token: Secret,
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

/// `[registry]`: the model registry (see `crate::registry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// The SQLite database file (relative to the config file); created when missing.
    pub path: String,
}
