//! The immutable, validated config every worker runs on, and its settings types. A reload
//! builds a new [`Snapshot`]; nothing in it changes after validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::DriverChoice;
use crate::config_types::Upstream;
use crate::http::limits::Limits;

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
