//! `GET /config`: the snapshot in force as the admin API shows it (no secret), and what a
//! reload applies.

use serde_json::{json, Value};

use crate::config::snapshot::{RELOAD_APPLIES, RESTART_ONLY};
use crate::config::{AccessLogTarget, Snapshot};
use crate::control::ReloadStatus;

/// What a reload applies, what needs a restart, and which restart-only settings of the
/// config in force differ from what the process runs with (`pending_restart`).
pub fn reload_coverage(status: &ReloadStatus) -> Value {
    json!({
        "applies": RELOAD_APPLIES,
        "needs_restart": RESTART_ONLY,
        "pending_restart": status.pending_restart,
    })
}

/// The snapshot as the admin API shows it: everything an operator needs to see, and no
/// secret (upstream keys and the admin token only say whether they are set).
pub fn redacted_view(s: &Snapshot) -> Value {
    let upstreams: Vec<Value> = s
        .upstreams
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "endpoints": u.endpoints.iter().map(|e| json!({"addr": e.addr.to_string(), "host": e.host})).collect::<Vec<_>>(),
                "connect_timeout_ms": u.connect_timeout.as_millis() as u64,
                "first_byte_timeout_ms": u.first_byte_timeout.as_millis() as u64,
                "idle_timeout_ms": u.idle_timeout.as_millis() as u64,
                "pool_max_idle": u.pool_max_idle,
                "pool_idle_timeout_ms": u.pool_idle_timeout.as_millis() as u64,
                "pool_max_requests": u.pool_max_requests,
                "api_key": if u.auth_line.is_some() { "(redacted)" } else { "(none)" },
            })
        })
        .collect();
    let routes: Vec<Value> = s
        .router
        .routes()
        .iter()
        .map(|r| {
            let target = match r.target() {
                crate::route::RouteTarget::Upstream(i) => {
                    json!({"upstream": s.upstreams.get(*i).map(|u| u.name.as_str())})
                }
                crate::route::RouteTarget::Split(split) => split_view(s, split),
            };
            json!({
                "route": crate::metrics::route_label(r),
                "models": r.models().iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                "auth": r.auth(),
                "scope": r.scope(),
                "target": target,
            })
        })
        .collect();
    let l = &s.limits;
    json!({
        "generation": s.generation,
        "server": {
            "listen": s.server.listen.to_string(),
            "workers": s.server.cores.len(),
            "cores": s.server.cores,
            "driver": format!("{:?}", s.server.driver).to_lowercase(),
            "drain_timeout_ms": s.server.drain_timeout.as_millis() as u64,
        },
        "limits": {
            "max_header_bytes": l.max_header_bytes,
            "max_request_line": l.max_request_line,
            "max_headers": l.max_headers,
            "max_body_bytes": l.max_body_bytes,
            "header_read_timeout_ms": l.header_read_timeout.as_millis() as u64,
            "body_idle_timeout_ms": l.body_idle_timeout.as_millis() as u64,
            "body_read_timeout_ms": l.body_read_timeout.as_millis() as u64,
            "min_body_rate_bytes_per_s": l.min_body_rate,
            "body_rate_grace_ms": l.body_rate_grace.as_millis() as u64,
            "max_streaming_uploads": l.max_streaming_uploads,
            "keepalive_idle_timeout_ms": l.keepalive_idle_timeout.as_millis() as u64,
            "max_connections_per_worker": l.max_connections_per_worker,
        },
        "upstreams": upstreams,
        "routes": routes,
        "auth": super::keys::auth_view(s),
        "admin": s.admin.as_ref().map(|a| json!({
            "listen": a.listen.to_string(),
            "token": if a.token.is_some() { "(redacted)" } else { "(none)" },
        })),
        "metrics": {"per_route": s.metrics.per_route},
        "access_log": s.access_log.as_ref().map(|a| json!({
            "path": match &a.target {
                AccessLogTarget::Stdout => "stdout".to_string(),
                AccessLogTarget::File(p) => p.display().to_string(),
            },
            "sample_rate": a.sample_rate,
        })),
    })
}

/// A split as configured (`targets`/`fallbacks` with the operator's weights), and what it
/// resolved to: each deployment's share of its group's traffic, in percent.
fn split_view(s: &Snapshot, split: &crate::route::Split) -> Value {
    let written = |ts: &[crate::route::RawTarget]| -> Vec<Value> {
        ts.iter()
            .map(|t| json!({"model": t.model, "version": t.version, "weight": t.weight}))
            .collect()
    };
    let resolved = |ts: &[crate::route::Target]| -> Vec<Value> {
        let total: u64 = ts.iter().map(|t| t.weight.get()).sum();
        ts.iter()
            .map(|t| {
                let d = s.router.deployment(t.deployment);
                let share = if total == 0 {
                    0.0
                } else {
                    (t.weight.get() as f64 * 10_000.0 / total as f64).round() / 100.0
                };
                json!({"deployment": d.model(), "version": d.version_str(), "share_percent": share})
            })
            .collect()
    };
    let c = split.configured();
    json!({
        "targets": written(&c.targets),
        "fallbacks": written(&c.fallbacks),
        "resolved": resolved(split.targets()),
        "resolved_fallbacks": resolved(split.fallbacks()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn config_view_never_shows_secrets() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:9000"]
api_key = { value = "sk-upstream-SECRET" }
[[routes]]
path = "/v1/*rest"
upstream = "mock"
[admin]
listen = "127.0.0.1:0"
token = { value = "admin-SECRET-0123456789" }
"#;
        let s = crate::config::from_str(text, Path::new("."), 1).unwrap();
        let shown = redacted_view(&s).to_string();
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("(redacted)"));
        assert!(shown.contains("/v1/*"));
    }

    #[test]
    fn config_view_shows_split_weights_as_configured() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[deployments]]
model = "a"
version = "1.0.0"
endpoints = ["127.0.0.1:9001"]
[[deployments]]
model = "b"
version = "1.0.0"
endpoints = ["127.0.0.1:9002"]
[[deployments]]
model = "b"
version = "1.1.0"
endpoints = ["127.0.0.1:9003"]
[[routes]]
path = "/one"
targets = [{ model = "a", weight = 80 }, { model = "b", version = "^1", weight = 20 }]
fallbacks = [{ model = "b", version = "=1.0.0", weight = 3 }]
[[routes]]
path = "/all"
all_matching_versions = true
targets = [{ model = "a", weight = 1 }, { model = "b", weight = 1 }]
"#;
        let s = crate::config::from_str(text, Path::new("."), 1).unwrap();
        let v = redacted_view(&s);
        let one = &v["routes"][0]["target"];
        assert_eq!(
            one["targets"],
            json!([
                {"model": "a", "version": "*", "weight": 80},
                {"model": "b", "version": "^1", "weight": 20},
            ]),
            "{v}"
        );
        assert_eq!(
            one["fallbacks"],
            json!([{"model": "b", "version": "=1.0.0", "weight": 3}])
        );
        assert_eq!(
            one["resolved"],
            json!([
                {"deployment": "a", "version": "1.0.0", "share_percent": 80.0},
                {"deployment": "b", "version": "1.1.0", "share_percent": 20.0},
            ])
        );
        // Every matching version shares its entry's weight.
        let all = &v["routes"][1]["target"];
        assert_eq!(all["targets"][1]["weight"], 1);
        let shares: Vec<f64> = all["resolved"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["share_percent"].as_f64().unwrap())
            .collect();
        assert_eq!(shares, [50.0, 25.0, 25.0], "{all}");
        assert!(!v.to_string().contains("720720"), "{v}");
    }

    #[test]
    fn reload_coverage_names_both_lists_and_what_is_pending() {
        let status = ReloadStatus {
            pending_restart: vec!["server.listen"],
            ..ReloadStatus::default()
        };
        let v = reload_coverage(&status);
        assert_eq!(v["pending_restart"], json!(["server.listen"]));
        for key in ["routes", "admin.token", "access_log.sample_rate"] {
            assert!(
                v["applies"].as_array().unwrap().contains(&json!(key)),
                "{v}"
            );
        }
        for key in ["server.listen", "server.workers", "server.driver"] {
            assert!(
                v["needs_restart"].as_array().unwrap().contains(&json!(key)),
                "{v}"
            );
        }
    }
}
