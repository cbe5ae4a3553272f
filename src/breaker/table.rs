//! The endpoint table of one snapshot ([`Resilience`]): endpoint ids and the breaker,
//! health-check and retry policies of every upstream, validated over `[defaults]`. Workers
//! ([`super::local`]) and the coordination thread ([`super::coordinator`]) both index their
//! state by it.
//!
//! # Endpoint ids
//!
//! Endpoints are numbered densely in snapshot order: upstream 0's endpoints first, then
//! upstream 1's, and so on. A reload keeps an endpoint's breaker state only if its id still
//! names the same endpoint; adding, removing or reordering upstreams or endpoints shifts the
//! ids after the change, and the state that moves with them is not meaningful (it settles
//! within one window). Retry budgets restart on every reload. Upstreams added to the snapshot
//! after validation (e.g. from deployments) must be followed by [`Resilience::build`] again;
//! an upstream the table does not cover runs without breakers or budget.

use serde::Deserialize;

use super::config::{RawBreaker, RawHealthCheck, RawRetry};
use super::{BreakerPolicy, EndpointId, HealthTarget, RetryPolicy};
use crate::config_types::{ConfigProblem, Upstream};

/// `[defaults]`: policies every upstream starts from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub breaker: Option<RawBreaker>,
    pub health_check: Option<RawHealthCheck>,
    pub retry: Option<RawRetry>,
}

/// One upstream's own `breaker`, `health_check` and `retry` tables (each over `[defaults]`'s).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawPolicies<'a> {
    pub breaker: Option<&'a RawBreaker>,
    pub health_check: Option<&'a RawHealthCheck>,
    pub retry: Option<&'a RawRetry>,
}

/// One upstream's slice of the endpoint table.
#[derive(Debug, Clone)]
pub(super) struct UpstreamEntry {
    pub(super) first: u32,
    pub(super) len: u32,
    pub(super) retry: RetryPolicy,
}

/// Endpoint ids and resilience policies of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Resilience {
    pub(super) upstreams: Vec<UpstreamEntry>,
    /// Indexed by [`EndpointId`].
    pub breakers: Vec<BreakerPolicy>,
    /// Endpoints with active health checks.
    pub health: Vec<HealthTarget>,
}

impl Resilience {
    /// Numbers the endpoints of `upstreams` and validates their policies: `raw[i]`'s
    /// `breaker`/`health_check`/`retry` over `defaults`' (upstreams past `raw` take the
    /// defaults). Problems name their key path.
    pub fn build(
        defaults: Option<&RawDefaults>,
        raw: &[RawPolicies<'_>],
        upstreams: &[Upstream],
        problems: &mut Vec<ConfigProblem>,
    ) -> Resilience {
        let none = RawDefaults::default();
        let d = defaults.unwrap_or(&none);
        let (db, dh, dr) = (
            d.breaker.clone().unwrap_or_default(),
            d.health_check.clone(),
            d.retry.clone().unwrap_or_default(),
        );
        let mut out = Resilience::default();
        for (i, up) in upstreams.iter().enumerate() {
            let r = raw.get(i);
            let key = |what: &str| match r {
                Some(_) => format!("upstreams[{i}].{what}"),
                None => format!("defaults.{what}"),
            };
            let breaker = r
                .and_then(|r| r.breaker.as_ref())
                .map_or_else(|| db.clone(), |b| b.overlay(&db))
                .validate(&key("breaker"))
                .map_err(|p| problems.extend(p))
                .unwrap_or_default();
            let retry = r
                .and_then(|r| r.retry.as_ref())
                .map_or_else(|| dr.clone(), |b| b.overlay(&dr))
                .validate(&key("retry"))
                .map_err(|p| problems.extend(p))
                .unwrap_or_default();
            let health = match (r.and_then(|r| r.health_check), &dh) {
                (Some(h), Some(d)) => Some(h.overlay(d)),
                (Some(h), None) => Some(h.clone()),
                (None, d) => d.clone(),
            }
            .and_then(|h| {
                h.validate(&key("health_check"))
                    .map_err(|p| problems.extend(p))
                    .ok()
            });
            let first = out.breakers.len() as u32;
            for ep in &up.endpoints {
                let endpoint = EndpointId(out.breakers.len() as u32);
                out.breakers.push(breaker);
                if let Some(policy) = &health {
                    out.health.push(HealthTarget {
                        endpoint,
                        addr: ep.addr,
                        host: ep.host.clone(),
                        policy: policy.clone(),
                    });
                }
            }
            out.upstreams.push(UpstreamEntry {
                first,
                len: up.endpoints.len() as u32,
                retry,
            });
        }
        out
    }

    /// The id of endpoint `i` of upstream `upstream`, if the table covers it.
    #[inline]
    pub fn endpoint(&self, upstream: usize, i: usize) -> Option<EndpointId> {
        let u = self.upstreams.get(upstream)?;
        (i < u.len as usize).then(|| EndpointId(u.first + i as u32))
    }

    /// The `(upstream index, endpoint index)` an id names, for metrics and the admin API.
    pub fn locate(&self, id: EndpointId) -> Option<(usize, usize)> {
        self.upstreams.iter().enumerate().find_map(|(u, e)| {
            (id.0 >= e.first && id.0 < e.first + e.len).then(|| (u, (id.0 - e.first) as usize))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn ids_are_dense_in_snapshot_order_and_policies_overlay() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[defaults.breaker]
consecutive_failures = 7
[defaults.retry]
budget_ratio = 0.5
[[upstreams]]
name = "a"
endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
[[upstreams]]
name = "b"
endpoints = ["127.0.0.1:3"]
breaker = { consecutive_failures = 2 }
health_check = { path = "/ready" }
"#;
        let s = crate::config::from_str(text, Path::new("."), 1).unwrap();
        let r = &s.resilience;
        assert_eq!(r.endpoint(0, 1), Some(EndpointId(1)));
        assert_eq!(r.endpoint(1, 0), Some(EndpointId(2)));
        assert_eq!(r.endpoint(1, 1), None);
        assert_eq!(r.endpoint(2, 0), None);
        assert_eq!(r.locate(EndpointId(2)), Some((1, 0)));
        assert_eq!(r.breakers[0].consecutive_failures, 7);
        assert_eq!(r.breakers[2].consecutive_failures, 2);
        assert_eq!(r.upstreams[1].retry.budget_ratio, 0.5);
        assert_eq!(r.health.len(), 1);
        assert_eq!(r.health[0].endpoint, EndpointId(2));
        assert_eq!(r.health[0].policy.path, "/ready");
    }

    #[test]
    fn bad_policies_name_their_key() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[defaults.retry]
budget_ratio = 3.0
[[upstreams]]
name = "a"
endpoints = ["127.0.0.1:1"]
breaker = { failure_rate = 2.0 }
health_check = { interval_ms = 0 }
"#;
        let p = crate::config::from_str(text, Path::new("."), 1).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "upstreams[0].breaker.failure_rate",
            "upstreams[0].health_check.interval_ms",
            "upstreams[0].retry.budget_ratio",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }
}
