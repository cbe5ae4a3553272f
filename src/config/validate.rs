//! Validation: a [`RawConfig`] becomes a [`Snapshot`], or every problem is reported at once,
//! each naming its key path.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::raw::{RawAccessLog, RawAdmin, RawConfig, RawServer, RawUpstream, RawWorkers};
use super::snapshot::{
    AccessLogSettings, AccessLogTarget, AdminSettings, MetricsSettings, ServerSettings, Snapshot,
};
use crate::breaker::table::{RawPolicies, Resilience};
use crate::config_types::{ConfigProblem, Endpoint, Upstream};

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
            crate::auth::config::check_route_auth(self.auth.as_ref(), i, r.auth, &mut problems);
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
        let policies: Vec<RawPolicies> = raw_upstreams
            .iter()
            .map(|u| RawPolicies {
                breaker: u.breaker.as_ref(),
                health_check: u.health_check.as_ref(),
                retry: u.retry.as_ref(),
            })
            .collect();
        let resilience =
            Resilience::build(self.defaults.as_ref(), &policies, &upstreams, &mut problems);
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
