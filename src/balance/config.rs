//! Raw TOML for `balance`, `affinity = {..}` and `load_metric = {..}` on an upstream or a
//! deployment, and the validated [`Table`] a snapshot carries: one [`UpstreamBalance`] per
//! upstream, in snapshot order, its [`Policy`] chosen here once (the affinity ring included).
//!
//! ```toml
//! balance = "affinity"             # round_robin (default) | least_requests | p2c_ewma | affinity
//! affinity = { key = "prompt", load_factor = 1.25, prefix_bytes = 1024 }
//! #          key = "subject" | "prompt" | { header = "x-session-id" }
//! load_metric = { path = "/metrics", gauge = "vllm:num_requests_waiting", interval_ms = 500 }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::affinity::Ring;
use crate::breaker::table::Resilience;
use crate::breaker::EndpointId;
use crate::config_types::{ConfigProblem, Upstream};
use crate::route::{RouteTarget, Router};

/// Default `affinity.load_factor`: an endpoint takes at most 1.25 × the mean load.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;
/// Largest `affinity.load_factor` accepted (past it the bound means nothing).
const MAX_LOAD_FACTOR: f64 = 100.0;
/// Default `affinity.prefix_bytes`: bytes of each opening message the prompt key reads.
pub const DEFAULT_PREFIX_BYTES: usize = 1024;
/// Largest `affinity.prefix_bytes` accepted.
const MAX_PREFIX_BYTES: usize = 64 * 1024;
/// Default `load_metric.interval_ms`.
const DEFAULT_SCRAPE_INTERVAL_MS: u64 = 500;
/// Shortest `load_metric.interval_ms`: scraping faster than the fleet view is merged buys
/// nothing.
const MIN_SCRAPE_INTERVAL_MS: u64 = 50;
/// The longest accepted metrics path.
const MAX_METRIC_PATH_LEN: usize = 1024;

/// `balance = ".."`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawPolicy {
    #[default]
    RoundRobin,
    LeastRequests,
    P2cEwma,
    Affinity,
}

/// `affinity = { .. }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    /// What a request's key is.
    pub key: RawAffinityKey,
    /// An endpoint takes at most this × the mean load (default 1.25, at least 1).
    pub load_factor: Option<f64>,
    /// `key = "prompt"`: bytes of each opening message hashed (default 1024).
    pub prefix_bytes: Option<usize>,
}

/// `key = "subject" | "prompt" | { header = ".." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawAffinityKey {
    /// The verified JWT subject.
    Subject,
    /// The conversation's opening, read from the JSON body.
    Prompt,
    /// The value of this request header.
    Header(String),
}

/// `load_metric = { .. }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoadMetric {
    /// Path of the Prometheus text endpoint (default "/metrics").
    pub path: Option<String>,
    /// The gauge read; the values of all its series are added up.
    pub gauge: String,
    /// Time between two scrapes of one endpoint, in ms (default 500).
    pub interval_ms: Option<u64>,
    /// Deadline of one scrape, in ms (default the interval, at most 1000).
    pub timeout_ms: Option<u64>,
}

/// One upstream's raw balance keys, with what validating them needs.
#[derive(Debug, Clone, Copy)]
pub struct RawBalance<'a> {
    /// The upstream's key path: `upstreams[1]`, `deployments[0]`.
    pub key: &'a str,
    pub balance: Option<RawPolicy>,
    pub affinity: Option<&'a RawAffinity>,
    pub load_metric: Option<&'a RawLoadMetric>,
    /// The endpoints as written (`host:port`): the ring's names.
    pub endpoints: &'a [String],
}

/// The validated choice of one upstream: a strategy value.
#[derive(Debug, Clone)]
pub enum Policy {
    RoundRobin,
    LeastRequests,
    P2cEwma,
    Affinity(Box<Affinity>),
}

impl Policy {
    /// The name as configured.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequests => "least_requests",
            Policy::P2cEwma => "p2c_ewma",
            Policy::Affinity(_) => "affinity",
        }
    }

    /// Whether the policy reads load (so its endpoints' load is tracked at all).
    pub fn reads_load(&self) -> bool {
        !matches!(self, Policy::RoundRobin)
    }
}

/// `balance = "affinity"`, validated.
#[derive(Debug, Clone)]
pub struct Affinity {
    pub key: AffinityKey,
    pub load_factor: f64,
    /// `key = "prompt"`: bytes of each opening message hashed.
    pub prefix_bytes: usize,
    pub ring: Ring,
}

/// Where a request's affinity key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityKey {
    /// This request header (lowercased name).
    Header(Box<str>),
    /// The verified JWT subject.
    Subject,
    /// The conversation's opening in the JSON body.
    Prompt,
}

impl AffinityKey {
    /// As the config writes it.
    pub fn describe(&self) -> String {
        match self {
            AffinityKey::Header(h) => format!("header:{h}"),
            AffinityKey::Subject => "subject".into(),
            AffinityKey::Prompt => "prompt".into(),
        }
    }
}

/// `load_metric`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadMetric {
    pub path: String,
    pub gauge: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The balance of one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamBalance {
    pub policy: Policy,
    /// The endpoint id of endpoint 0 (ids are dense per upstream); `None`: not in the
    /// endpoint table, so no breaker and no load either.
    first: Option<u32>,
    len: u32,
    pub load_metric: Option<LoadMetric>,
}

impl UpstreamBalance {
    /// Round-robin over `len` endpoints outside the endpoint table.
    pub const fn round_robin(len: usize) -> Self {
        UpstreamBalance {
            policy: Policy::RoundRobin,
            first: None,
            len: len as u32,
            load_metric: None,
        }
    }

    /// Endpoints of the upstream.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id of endpoint `i`, for the breaker and the load view.
    #[inline]
    pub fn endpoint(&self, i: usize) -> Option<EndpointId> {
        let first = self.first?;
        (i < self.len as usize).then(|| EndpointId(first + i as u32))
    }

    /// The affinity settings, when that is the policy.
    #[inline]
    pub fn affinity(&self) -> Option<&Affinity> {
        match &self.policy {
            Policy::Affinity(a) => Some(a),
            _ => None,
        }
    }
}

/// One endpoint's load metric to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadTarget {
    pub endpoint: EndpointId,
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    pub metric: LoadMetric,
}

/// What the coordination thread needs of a snapshot's balance: how many endpoints there are,
/// and whose load metric to scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetPlan {
    pub endpoints: usize,
    pub targets: Vec<LoadTarget>,
}

/// The balance of every upstream of a snapshot, in snapshot order.
#[derive(Debug, Clone, Default)]
pub struct Table {
    upstreams: Vec<UpstreamBalance>,
    /// Endpoints in the endpoint table.
    endpoints: usize,
    /// Some upstream is keyed on the prompt: bodies are parsed with their opening located.
    prompt_keyed: bool,
}

impl Table {
    /// Validates `raw[i]` for upstream `i` (endpoint ids from `resilience`). `auth`: whether
    /// `[auth]` is configured (a subject key needs it). Problems name their key path.
    pub fn build(
        raw: &[RawBalance<'_>],
        resilience: &Resilience,
        auth: bool,
        problems: &mut Vec<ConfigProblem>,
    ) -> Table {
        let upstreams: Vec<UpstreamBalance> = raw
            .iter()
            .enumerate()
            .map(|(u, r)| {
                let policy = policy(r, auth, problems);
                let load_metric = r.load_metric.and_then(|m| {
                    let key = format!("{}.load_metric", r.key);
                    if !policy.reads_load() {
                        problems.push(ConfigProblem::new(
                            &key,
                            "needs a load-aware balance (least_requests, p2c_ewma or affinity); \
                             round_robin ignores load",
                        ));
                    }
                    m.validate(&key, problems)
                });
                UpstreamBalance {
                    policy,
                    first: resilience.endpoint(u, 0).map(|id| id.0),
                    len: r.endpoints.len() as u32,
                    load_metric,
                }
            })
            .collect();
        Table {
            prompt_keyed: upstreams
                .iter()
                .any(|u| u.affinity().is_some_and(|a| a.key == AffinityKey::Prompt)),
            upstreams,
            endpoints: resilience.breakers.len(),
        }
    }

    /// A prompt key needs the JSON body, which only split routes and the routes of a path
    /// with `models` read: an upstream keyed on the prompt behind any other route is a
    /// problem.
    pub fn check_routes(
        &self,
        raw: &[RawBalance<'_>],
        router: &Router,
        problems: &mut Vec<ConfigProblem>,
    ) {
        let routes = router.routes();
        for (j, route) in routes.iter().enumerate() {
            let RouteTarget::Upstream(u) = route.target() else {
                continue;
            };
            let prompt = self.upstreams.get(*u).and_then(UpstreamBalance::affinity);
            if prompt.is_none_or(|a| a.key != AffinityKey::Prompt) {
                continue;
            }
            let reads_body = routes
                .iter()
                .any(|o| o.pattern() == route.pattern() && !o.models().is_empty());
            if !reads_body {
                problems.push(ConfigProblem::new(
                    format!("{}.affinity.key", raw[*u].key),
                    format!(
                        "\"prompt\" needs the request body, but routes[{j}] (\"{}\") does not \
                         read it (split routes and routes of a path with `models` do); key on \
                         a header or the subject instead",
                        route.pattern()
                    ),
                ));
            }
        }
    }

    /// Upstream `up`'s balance (`None`: not in the table).
    #[inline]
    pub fn get(&self, up: Option<usize>) -> Option<&UpstreamBalance> {
        self.upstreams.get(up?)
    }

    pub fn upstreams(&self) -> &[UpstreamBalance] {
        &self.upstreams
    }

    /// Endpoints in the endpoint table.
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// Whether any upstream's affinity key is the prompt (a body read then also locates the
    /// conversation's opening, see `JsonBody::parse_keyed`).
    #[inline]
    pub fn prompt_keyed(&self) -> bool {
        self.prompt_keyed
    }

    /// Whether any upstream reads load (otherwise nothing is tracked or reported).
    pub fn reads_load(&self) -> bool {
        self.upstreams.iter().any(|u| u.policy.reads_load())
    }

    /// The coordination thread's part; `upstreams` are the snapshot's, in the same order.
    pub fn fleet_plan(&self, upstreams: &[Upstream]) -> FleetPlan {
        let targets = self
            .upstreams
            .iter()
            .zip(upstreams)
            .filter_map(|(b, up)| Some((b, up, b.load_metric.as_ref()?)))
            .flat_map(|(b, up, metric)| {
                up.endpoints.iter().enumerate().filter_map(move |(i, ep)| {
                    Some(LoadTarget {
                        endpoint: b.endpoint(i)?,
                        addr: ep.addr,
                        host: ep.host.clone(),
                        metric: metric.clone(),
                    })
                })
            })
            .collect();
        FleetPlan {
            endpoints: self.endpoints,
            targets,
        }
    }
}

/// The policy `r` asks for, with its problems reported.
fn policy(r: &RawBalance<'_>, auth: bool, problems: &mut Vec<ConfigProblem>) -> Policy {
    let key = |field: &str| format!("{}.{field}", r.key);
    match (r.balance.unwrap_or_default(), r.affinity) {
        (RawPolicy::Affinity, Some(a)) => {
            match a.validate(&key("affinity"), r.endpoints, auth, problems) {
                Some(a) => Policy::Affinity(Box::new(a)),
                None => Policy::RoundRobin,
            }
        }
        (RawPolicy::Affinity, None) => {
            problems.push(ConfigProblem::new(
                key("affinity"),
                "balance = \"affinity\" needs `affinity = { key = .. }`: \"subject\", \"prompt\" \
                 or { header = \"..\" }",
            ));
            Policy::RoundRobin
        }
        (other, Some(_)) => {
            problems.push(ConfigProblem::new(
                key("affinity"),
                "applies only with balance = \"affinity\"",
            ));
            simple(other)
        }
        (other, None) => simple(other),
    }
}

fn simple(p: RawPolicy) -> Policy {
    match p {
        RawPolicy::RoundRobin | RawPolicy::Affinity => Policy::RoundRobin,
        RawPolicy::LeastRequests => Policy::LeastRequests,
        RawPolicy::P2cEwma => Policy::P2cEwma,
    }
}

impl RawAffinity {
    fn validate(
        &self,
        key: &str,
        endpoints: &[String],
        auth: bool,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<Affinity> {
        let before = problems.len();
        let load_factor = self.load_factor.unwrap_or(DEFAULT_LOAD_FACTOR);
        if !(1.0..=MAX_LOAD_FACTOR).contains(&load_factor) {
            problems.push(ConfigProblem::new(
                format!("{key}.load_factor"),
                format!("must be between 1.0 and {MAX_LOAD_FACTOR}, got {load_factor}"),
            ));
        }
        let prefix_bytes = self.prefix_bytes.unwrap_or(DEFAULT_PREFIX_BYTES);
        if !(1..=MAX_PREFIX_BYTES).contains(&prefix_bytes) {
            problems.push(ConfigProblem::new(
                format!("{key}.prefix_bytes"),
                format!("must be between 1 and {MAX_PREFIX_BYTES}, got {prefix_bytes}"),
            ));
        }
        if self.prefix_bytes.is_some() && self.key != RawAffinityKey::Prompt {
            problems.push(ConfigProblem::new(
                format!("{key}.prefix_bytes"),
                "applies only with key = \"prompt\"",
            ));
        }
        let akey = match &self.key {
            RawAffinityKey::Subject => {
                if !auth {
                    problems.push(ConfigProblem::new(
                        format!("{key}.key"),
                        "\"subject\" needs an [auth] section (the subject is the verified token's)",
                    ));
                }
                AffinityKey::Subject
            }
            RawAffinityKey::Prompt => AffinityKey::Prompt,
            RawAffinityKey::Header(h) => {
                let name = crate::http_config::config_header(
                    h,
                    crate::http::fields::HeaderRole::Read,
                    &format!("{key}.key.header"),
                    problems,
                );
                AffinityKey::Header(name.unwrap_or_default())
            }
        };
        let names: Vec<&str> = endpoints.iter().map(|e| e.trim()).collect();
        (problems.len() == before).then(|| Affinity {
            key: akey,
            load_factor,
            prefix_bytes,
            ring: Ring::new(&names),
        })
    }
}

impl RawLoadMetric {
    fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) -> Option<LoadMetric> {
        let before = problems.len();
        let path = self.path.clone().unwrap_or_else(|| "/metrics".to_owned());
        // The path goes verbatim into a request line: anything that could split it is refused.
        if !path.starts_with('/')
            || path.len() > MAX_METRIC_PATH_LEN
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            problems.push(ConfigProblem::new(
                format!("{key}.path"),
                format!(
                    "must start with '/' and have no spaces or controls, at most \
                     {MAX_METRIC_PATH_LEN} bytes"
                ),
            ));
        }
        if !is_metric_name(&self.gauge) {
            problems.push(ConfigProblem::new(
                format!("{key}.gauge"),
                format!(
                    "`{}` is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
                    self.gauge.escape_debug()
                ),
            ));
        }
        let interval_ms = self.interval_ms.unwrap_or(DEFAULT_SCRAPE_INTERVAL_MS);
        if interval_ms < MIN_SCRAPE_INTERVAL_MS {
            problems.push(ConfigProblem::new(
                format!("{key}.interval_ms"),
                format!("must be at least {MIN_SCRAPE_INTERVAL_MS}, got {interval_ms}"),
            ));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(interval_ms.min(1000));
        if timeout_ms == 0 || timeout_ms > interval_ms {
            problems.push(ConfigProblem::new(
                format!("{key}.timeout_ms"),
                format!("must be in 1..=interval_ms ({interval_ms})"),
            ));
        }
        (problems.len() == before).then(|| LoadMetric {
            path,
            gauge: self.gauge.clone(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "up"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
"#;

    fn build(upstream_keys: &str, rest: &str) -> Result<crate::config::Snapshot, Vec<String>> {
        let text = format!("{BASE}{upstream_keys}\n{rest}");
        crate::config::from_str(&text, Path::new("."), 1)
            .map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    const ROUTE: &str = "[[routes]]\npath = \"/v1/*rest\"\nupstream = \"up\"\n";

    #[test]
    fn every_policy_parses_and_round_robin_is_the_default() {
        let s = build("", ROUTE).unwrap();
        assert_eq!(s.balance.upstreams()[0].policy.name(), "round_robin");
        assert!(!s.balance.reads_load());
        for name in ["round_robin", "least_requests", "p2c_ewma"] {
            let s = build(&format!("balance = \"{name}\""), ROUTE).unwrap();
            assert_eq!(s.balance.upstreams()[0].policy.name(), name);
        }
        let s = build(
            "balance = \"affinity\"\naffinity = { key = { header = \"X-Session-Id\" } }",
            ROUTE,
        )
        .unwrap();
        let a = s.balance.upstreams()[0].affinity().unwrap();
        assert_eq!(a.key, AffinityKey::Header("x-session-id".into()));
        assert_eq!(a.load_factor, DEFAULT_LOAD_FACTOR);
        let b = &s.balance.upstreams()[0];
        assert_eq!(b.endpoint(2), Some(EndpointId(2)));
        assert_eq!(b.endpoint(3), None);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("balance = \"fastest\"", ROUTE, "upstreams[0].balance"),
            ("balance = \"affinity\"", ROUTE, "upstreams[0].affinity"),
            (
                "affinity = { key = \"subject\" }",
                ROUTE,
                "upstreams[0].affinity",
            ),
            (
                "balance = \"affinity\"\naffinity = { key = \"subject\" }",
                ROUTE,
                "upstreams[0].affinity.key",
            ),
            (
                "balance = \"affinity\"\naffinity = { key = \"prompt\" }",
                ROUTE,
                "upstreams[0].affinity.key",
            ),
            (
                "balance = \"affinity\"\naffinity = { key = { header = \"bad header\" } }",
                ROUTE,
                "upstreams[0].affinity.key.header",
            ),
            (
                "balance = \"affinity\"\naffinity = { key = { header = \"content-length\" } }",
                ROUTE,
                "upstreams[0].affinity.key.header",
            ),
            (
                "balance = \"affinity\"\naffinity = { key = { header = \"x-s\" }, load_factor = 0.9 }",
                ROUTE,
                "upstreams[0].affinity.load_factor",
            ),
            (
                "balance = \"affinity\"\naffinity = { key = { header = \"x-s\" }, prefix_bytes = 10 }",
                ROUTE,
                "upstreams[0].affinity.prefix_bytes",
            ),
            (
                "balance = \"affinity\"\naffinity = { key = { cookie = \"s\" } }",
                ROUTE,
                "upstreams[0].affinity.key",
            ),
            (
                "load_metric = { gauge = \"q\" }",
                ROUTE,
                "upstreams[0].load_metric",
            ),
            (
                "balance = \"least_requests\"\nload_metric = { gauge = \"vllm:num requests\" }",
                ROUTE,
                "upstreams[0].load_metric.gauge",
            ),
            (
                "balance = \"least_requests\"\nload_metric = { gauge = \"q\", path = \"metrics\" }",
                ROUTE,
                "upstreams[0].load_metric.path",
            ),
            (
                "balance = \"least_requests\"\nload_metric = { gauge = \"q\", interval_ms = 5 }",
                ROUTE,
                "upstreams[0].load_metric.interval_ms",
            ),
            (
                "balance = \"least_requests\"\nload_metric = { gauge = \"q\", interval_ms = 100, timeout_ms = 200 }",
                ROUTE,
                "upstreams[0].load_metric.timeout_ms",
            ),
            (
                "balance = \"least_requests\"\nload_metric = { gauge = \"q\", scrape = true }",
                ROUTE,
                "upstreams[0].load_metric.scrape",
            ),
        ];
        for (keys, routes, want) in cases {
            let problems = build(keys, routes).unwrap_err();
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{keys}: want {want} in {problems:?}"
            );
        }
    }

    #[test]
    fn a_prompt_key_needs_routes_that_read_the_body() {
        let keys = "balance = \"affinity\"\naffinity = { key = \"prompt\", prefix_bytes = 64 }";
        let problems = build(keys, ROUTE).unwrap_err();
        assert!(
            problems[0].contains("routes[0]") && problems[0].contains("does not read it"),
            "{problems:?}"
        );
        // A path with model-keyed routes reads the body, its default route included.
        let keyed = "[[routes]]\npath = \"/v1/*rest\"\nmodels = [\"m\"]\nupstream = \"up\"\n";
        let s = build(keys, &format!("{ROUTE}{keyed}")).unwrap();
        assert_eq!(
            s.balance.upstreams()[0].affinity().unwrap().prefix_bytes,
            64
        );
        // A deployment is reached by split routes only: always fine.
        let deployment = r#"
[[deployments]]
model = "m"
version = "1.0.0"
endpoints = ["127.0.0.1:9004", "127.0.0.1:9005"]
balance = "affinity"
affinity = { key = "prompt" }
[[routes]]
path = "/v2/chat"
targets = [{ model = "m", weight = 1 }]
"#;
        let s = build("", &format!("{ROUTE}{deployment}")).unwrap();
        let d = &s.balance.upstreams()[1];
        assert_eq!(d.affinity().unwrap().key, AffinityKey::Prompt);
        assert_eq!(d.endpoint(0), Some(EndpointId(3)));
    }

    #[test]
    fn load_targets_cover_every_endpoint_of_the_upstream() {
        let s = build(
            "balance = \"p2c_ewma\"\nload_metric = { gauge = \"vllm:num_requests_waiting\" }",
            ROUTE,
        )
        .unwrap();
        let plan = s.balance.fleet_plan(&s.upstreams);
        assert_eq!(plan.endpoints, 3);
        assert_eq!(plan.targets.len(), 3);
        assert_eq!(plan.targets[1].endpoint, EndpointId(1));
        assert_eq!(plan.targets[1].addr.port(), 9002);
        let m = &plan.targets[0].metric;
        assert_eq!(m.path, "/metrics");
        assert_eq!(m.interval, Duration::from_millis(500));
        assert_eq!(m.timeout, Duration::from_millis(500));
    }
}
