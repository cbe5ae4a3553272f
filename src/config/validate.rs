//! Validation: a [`RawConfig`] becomes a [`Snapshot`], or every problem is reported at once,
//! each naming its key path.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::raw::{
    DriverChoice, RawAccessLog, RawAdmin, RawConfig, RawServer, RawUpstream, RawWorkers,
};
use super::snapshot::{
    AccessLogSettings, AccessLogTarget, AdminSettings, MetricsSettings, NamedToken,
    RegistrySettings, ServerSettings, Snapshot, ADMIN_TOKEN_NAME,
};
use crate::balance::config::{RawBalance, Table as BalanceTable};
use crate::breaker::table::{RawPolicies, Resilience};
use crate::config_types::{
    AnthropicSettings, ConfigProblem, Endpoint, Provider, RawProvider, Upstream,
    DEFAULT_ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS,
};
use crate::tls::client::{host_of, server_name, split_endpoint};
use crate::tls::UpstreamTls;

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
        let server = self.server.build(base_dir, &mut problems);
        let limits = self.limits.build(&mut problems);
        let mut upstreams = Vec::new();
        let mut upstream_tls = Vec::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = format!("upstreams[{i}]");
            if self.upstreams[..i].iter().any(|o| o.name == u.name) {
                problems.push(ConfigProblem::new(
                    format!("{key}.name"),
                    format!("duplicate upstream name `{}`", u.name),
                ));
            }
            let (u, tls) = u.build(&key, base_dir, &mut problems);
            upstreams.push(u);
            upstream_tls.push(tls);
        }
        let names: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        let router = crate::route::Router::build(&self.routes, &self.deployments, &names)
            .map_err(|p| problems.extend(p))
            .ok();
        // Each deployment is proxied like an upstream, with its own timeouts, credential,
        // breaker and health-check settings.
        let mut deployment_upstreams = Vec::new();
        let mut raw_upstreams = self.upstreams.clone();
        let mut upstream_keys: Vec<String> = (0..upstreams.len())
            .map(|i| format!("upstreams[{i}]"))
            .collect();
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
                tls: rd.tls.clone(),
                balance: rd.balance,
                affinity: rd.affinity.clone(),
                load_metric: rd.load_metric.clone(),
                provider: rd.provider,
                anthropic_version: rd.anthropic_version.clone(),
                default_max_tokens: rd.default_max_tokens,
                ..RawUpstream::default()
            };
            let key = format!("deployments[{}]", d.id().index());
            deployment_upstreams.push(upstreams.len());
            let (u, tls) = raw.build(&key, base_dir, &mut problems);
            upstreams.push(u);
            upstream_tls.push(tls);
            raw_upstreams.push(raw);
            upstream_keys.push(key);
        }
        let admin = self
            .admin
            .as_ref()
            .and_then(|a| a.build(base_dir, &mut problems));
        let quota = self
            .quota
            .as_ref()
            .and_then(|q| q.validate().map_err(|p| problems.extend(p)).ok());
        let registry = self.registry.as_ref().and_then(|r| {
            if r.path.trim().is_empty() {
                problems.push(ConfigProblem::new("registry.path", "must not be empty"));
                return None;
            }
            Some(RegistrySettings {
                path: base_dir.join(&r.path),
            })
        });
        let auth = self.auth.as_ref().and_then(|a| {
            let db = registry.as_ref().map(|r| r.path.as_path());
            crate::auth::Authenticator::from_config_with(a, base_dir, db)
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
        let tracing = self.tracing.as_ref().and_then(|t| t.build(&mut problems));
        let (spend, budgets) = self.spend_and_budgets(base_dir, router.as_ref(), &mut problems);
        if registry.is_some() && spend.as_ref().is_some_and(|s| s.file.is_some()) {
            problems.push(ConfigProblem::new(
                "spend.file",
                "[registry] is configured, so spend and budget use are kept in its database: \
                 remove spend.file (one place, so a restart never reads an older copy)",
            ));
        }
        let balancing: Vec<RawBalance> = raw_upstreams
            .iter()
            .zip(&upstream_keys)
            .map(|(u, key)| RawBalance {
                key,
                balance: u.balance,
                affinity: u.affinity.as_ref(),
                load_metric: u.load_metric.as_ref(),
                endpoints: &u.endpoints,
            })
            .collect();
        let balance =
            BalanceTable::build(&balancing, &resilience, self.auth.is_some(), &mut problems);
        if let Some(r) = &router {
            balance.check_routes(&balancing, r, &mut problems);
        }
        let transforms = crate::adapt::Transforms::build(
            &self.transforms,
            self.routes.iter().map(|r| r.transform.as_deref()),
            base_dir,
            &mut problems,
        );
        if let Some(r) = &router {
            transform_conflicts(
                r,
                &upstreams,
                &deployment_upstreams,
                &transforms,
                &mut problems,
            );
        }
        match server {
            Some(server) if problems.is_empty() && router.is_some() => Ok(Snapshot {
                generation,
                server,
                limits,
                upstreams,
                upstream_tls,
                router: router.expect("checked above"),
                deployment_upstreams,
                admin,
                quota,
                auth,
                metrics,
                access_log,
                resilience,
                tracing,
                spend,
                budgets,
                registry,
                balance,
                transforms,
            }),
            _ => Err(problems),
        }
    }
}

impl RawConfig {
    /// `[spend]` and `[budgets]`: prices resolved for every deployment; a currency budget
    /// needs prices to count.
    fn spend_and_budgets(
        &self,
        base_dir: &Path,
        router: Option<&crate::route::Router>,
        problems: &mut Vec<ConfigProblem>,
    ) -> (
        Option<crate::spend::SpendSettings>,
        Option<crate::quota::budget::BudgetSettings>,
    ) {
        let deployments = router
            .into_iter()
            .flat_map(|r| r.deployments())
            .map(|d| (d.model(), d.version_str()));
        let spend = self
            .spend
            .as_ref()
            .map(|s| s.validate(base_dir, deployments, problems));
        let budgets = self.budgets.as_ref().map(|b| b.validate(problems));
        let priced = spend.as_ref().is_some_and(|s| !s.prices.entries.is_empty());
        if let (Some(raw), false) = (&self.budgets, priced) {
            for (i, r) in raw.rules.iter().enumerate() {
                if r.spend.is_some() {
                    problems.push(ConfigProblem::new(
                        format!("budgets.rules[{i}].spend"),
                        "a currency budget needs prices ([[spend.prices]])",
                    ));
                }
            }
        }
        (spend, budgets)
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
    fn build(&self, base_dir: &Path, problems: &mut Vec<ConfigProblem>) -> Option<ServerSettings> {
        let listen = resolve(&self.listen, "server.listen", problems);
        let tls = self.tls.as_ref().and_then(|t| {
            let listen = resolve(&t.listen, "server.tls.listen", problems);
            t.build(listen, base_dir, problems)
        });
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
        let io_uring = self.io_uring.as_ref().map_or_else(Default::default, |r| {
            if self.driver == DriverChoice::Legacy {
                problems.push(ConfigProblem::new(
                    "server.io_uring",
                    "has no effect with server.driver = \"legacy\"",
                ));
            }
            r.build(problems)
        });
        let busy_poll = crate::ring_config::busy_poll(self.busy_poll_us, problems);
        Some(ServerSettings {
            listen: listen?,
            cores,
            driver: self.driver,
            drain_timeout,
            tls,
            io_uring,
            busy_poll,
        })
    }
}

impl RawUpstream {
    /// The validated upstream and, when any endpoint speaks TLS, its TLS settings.
    fn build(
        &self,
        key: &str,
        base_dir: &Path,
        problems: &mut Vec<ConfigProblem>,
    ) -> (Upstream, Option<UpstreamTls>) {
        if self.endpoints.is_empty() {
            problems.push(ConfigProblem::new(
                format!("{key}.endpoints"),
                "at least one endpoint is required",
            ));
        }
        let split: Vec<_> = self
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                split_endpoint(e)
                    .map_err(|m| {
                        problems.push(ConfigProblem::new(format!("{key}.endpoints[{i}]"), m))
                    })
                    .ok()
                    .map(|(tls, authority)| (i, tls || self.tls.is_some(), authority))
            })
            .collect();
        // `https://` endpoints without a `tls` table verify against the Mozilla roots.
        let tls = match split.iter().any(|(_, tls, _)| *tls) {
            true => self.tls.clone().unwrap_or_default().build(
                &format!("{key}.tls"),
                base_dir,
                problems,
            ),
            false => None,
        };
        let endpoints = split
            .into_iter()
            .filter_map(|(i, is_tls, authority)| {
                let ep_key = format!("{key}.endpoints[{i}]");
                let addr = resolve(&authority, &ep_key, problems)?;
                let tls = match (is_tls, &tls) {
                    (false, _) => None,
                    (true, Some(t)) if t.server_name.is_some() => t.server_name.clone(),
                    (true, _) => Some(
                        server_name(host_of(&authority))
                            .map_err(|m| problems.push(ConfigProblem::new(&ep_key, m)))
                            .ok()?,
                    ),
                };
                Some(Endpoint {
                    addr,
                    host: self.host_header.clone().unwrap_or_else(|| {
                        // The authority as written (`https://h` is `h`, not `h:443`).
                        let written = self.endpoints[i].trim();
                        let bare = written.split_once("://").map_or(written, |(_, r)| r);
                        bare.trim_end_matches('/').to_string()
                    }),
                    tls,
                    name: host_of(&authority)
                        .parse::<std::net::IpAddr>()
                        .is_err()
                        .then(|| authority.clone()),
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
        let provider = self.provider(key, problems);
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
            let mut line = match provider {
                Provider::Anthropic(_) => b"x-api-key: ".to_vec(),
                Provider::OpenAi => b"authorization: Bearer ".to_vec(),
            };
            line.extend_from_slice(&k);
            line.extend_from_slice(b"\r\n");
            Some(line)
        });
        let upstream = Upstream {
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
            provider,
        };
        (upstream, tls)
    }

    /// `provider` and its settings (`anthropic_version`, `default_max_tokens` apply to
    /// Anthropic only).
    fn provider(&self, key: &str, problems: &mut Vec<ConfigProblem>) -> Provider {
        if self.provider == RawProvider::OpenAi {
            for (set, name) in [
                (self.anthropic_version.is_some(), "anthropic_version"),
                (self.default_max_tokens.is_some(), "default_max_tokens"),
            ] {
                if set {
                    problems.push(ConfigProblem::new(
                        format!("{key}.{name}"),
                        "applies only with provider = \"anthropic\"",
                    ));
                }
            }
            return Provider::OpenAi;
        }
        let version = self
            .anthropic_version
            .clone()
            .unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string());
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push(ConfigProblem::new(
                format!("{key}.anthropic_version"),
                format!(
                    "`{}` is not a header value (visible ASCII, no spaces)",
                    version.escape_debug()
                ),
            ));
        }
        if self.default_max_tokens == Some(0) {
            problems.push(ConfigProblem::new(
                format!("{key}.default_max_tokens"),
                "must be greater than 0",
            ));
        }
        Provider::Anthropic(AnthropicSettings {
            version,
            default_max_tokens: self.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        })
    }
}

/// A route with a transform maps OpenAI-shaped or custom JSON by its schema; an upstream that
/// needs a provider translation cannot take that body too.
fn transform_conflicts(
    router: &crate::route::Router,
    upstreams: &[Upstream],
    deployment_upstreams: &[usize],
    transforms: &crate::adapt::Transforms,
    problems: &mut Vec<ConfigProblem>,
) {
    use crate::route::RouteTarget;
    for route in router.routes() {
        let id = route.id().0 as usize;
        if transforms.for_route(id).is_none() {
            continue;
        }
        let adapted = |u: usize| {
            upstreams
                .get(u)
                .is_some_and(|u| u.provider != Provider::OpenAi)
        };
        let conflict = match route.target() {
            RouteTarget::Upstream(i) => adapted(*i),
            RouteTarget::Split(s) => s
                .targets()
                .iter()
                .chain(s.fallbacks())
                .any(|t| adapted(deployment_upstreams[t.deployment.index()])),
        };
        if conflict {
            problems.push(ConfigProblem::new(
                format!("routes[{id}].transform"),
                "a route with a transform cannot send to a provider = \"anthropic\" upstream or deployment",
            ));
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
        let token = self
            .token
            .as_ref()
            .and_then(|t| admin_token(t, base_dir, "admin.token", problems));
        let tokens = self.named_tokens(base_dir, token.as_deref(), problems);
        // A token that was given but refused is reported above, not as a missing one.
        if self.token.is_none()
            && self.tokens.is_empty()
            && !listen.ip().is_loopback()
            && !self.allow_non_loopback_without_token
        {
            problems.push(ConfigProblem::new("admin.listen", "a non-loopback admin address requires admin.token (or allow_non_loopback_without_token = true)"));
        }
        Some(AdminSettings {
            listen,
            token,
            tokens,
        })
    }

    /// `tokens`: each name non-empty, printable and unique (and not `admin`, the name of
    /// `token`), each token as strong as `token` must be and different from every other.
    fn named_tokens(
        &self,
        base_dir: &Path,
        plain: Option<&[u8]>,
        problems: &mut Vec<ConfigProblem>,
    ) -> Vec<NamedToken> {
        let mut out: Vec<NamedToken> = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("admin.tokens[{i}]");
            let name = t.name.as_str();
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            if !name_ok {
                problems.push(ConfigProblem::new(
                    format!("{key}.name"),
                    "must be 1 to 64 of A-Z a-z 0-9 - _ . @",
                ));
            } else if name == ADMIN_TOKEN_NAME || self.tokens[..i].iter().any(|o| o.name == name) {
                problems.push(ConfigProblem::new(
                    format!("{key}.name"),
                    format!("`{name}` is taken (`{ADMIN_TOKEN_NAME}` is the name of admin.token)"),
                ));
            }
            let Some(token) = admin_token(&t.token, base_dir, &format!("{key}.token"), problems)
            else {
                continue;
            };
            if plain == Some(&token[..]) || out.iter().any(|o| o.token == token) {
                problems.push(ConfigProblem::new(
                    format!("{key}.token"),
                    "is the same as another admin token; each holder needs their own",
                ));
                continue;
            }
            out.push(NamedToken {
                name: name.to_owned(),
                token,
            });
        }
        out
    }
}

/// An admin token's bytes, if they resolve and are strong enough (else a problem at `key`).
fn admin_token(
    t: &crate::config_types::Secret,
    base_dir: &Path,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Vec<u8>> {
    let bytes = t
        .resolve(base_dir, key)
        .map_err(|p| problems.push(p))
        .ok()?;
    match admin_token_problem(&bytes) {
        None => Some(bytes),
        Some(why) => {
            let msg = format!("{why} (from {})", t.source());
            problems.push(ConfigProblem::new(key, msg));
            None
        }
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
