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
        .enumerate()
        .map(|(i, u)| {
            let mut v = json!({
                "name": u.name,
                "endpoints": u.endpoints.iter().map(|e| json!({"addr": e.addr.to_string(), "host": e.host})).collect::<Vec<_>>(),
                "connect_timeout_ms": u.connect_timeout.as_millis() as u64,
                "first_byte_timeout_ms": u.first_byte_timeout.as_millis() as u64,
                "idle_timeout_ms": u.idle_timeout.as_millis() as u64,
                "pool_max_idle": u.pool_max_idle,
                "pool_idle_timeout_ms": u.pool_idle_timeout.as_millis() as u64,
                "pool_max_requests": u.pool_max_requests,
                "api_key": if u.auth_line.is_some() { "(redacted)" } else { "(none)" },
                "provider": provider_view(&u.provider),
            });
            if let Some(b) = s.balance.get(Some(i)) {
                v["balance"] = balance_view(b);
            }
            v
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
                "transform": s.transforms.for_route(r.id().0 as usize).map(|t| t.name.as_str()),
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
            "io_uring": {
                "entries": s.server.io_uring.entries,
                "sqpoll": s.server.io_uring.sqpoll.is_some(),
                "sqpoll_idle_ms": s.server.io_uring.sqpoll.map(|d| d.as_millis() as u64),
                "coop_taskrun": s.server.io_uring.coop_taskrun,
                "single_issuer": s.server.io_uring.single_issuer,
                "defer_taskrun": s.server.io_uring.defer_taskrun,
            },
            "busy_poll_us": s.server.busy_poll.as_micros() as u64,
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
        "transforms": s.transforms.list().iter().map(transform_view).collect::<Vec<_>>(),
        "auth": super::keys::auth_view(s),
        "admin": s.admin.as_ref().map(|a| json!({
            "listen": a.listen.to_string(),
            "token": if a.token.is_some() { "(redacted)" } else { "(none)" },
            "tokens": a.tokens.iter().map(|t| json!({"name": t.name, "token": "(redacted)"})).collect::<Vec<_>>(),
        })),
        "registry": s.registry.as_ref().map(|r| json!({"path": r.path.display().to_string()})),
        "metrics": {"per_route": s.metrics.per_route},
        "access_log": s.access_log.as_ref().map(|a| json!({
            "path": match &a.target {
                AccessLogTarget::Stdout => "stdout".to_string(),
                AccessLogTarget::File(p) => p.display().to_string(),
            },
            "sample_rate": a.sample_rate,
        })),
        "tracing": s.tracing.as_ref().map(|t| json!({
            "endpoint": t.collector.to_string(),
            "sample_ratio": t.sample_ratio,
            "service_name": t.service_name,
            "export_timeout_ms": t.export_timeout.as_millis() as u64,
            "export_interval_ms": t.export_interval.as_millis() as u64,
            "max_queue_spans": t.max_queue_spans,
        })),
        "spend": s.spend.as_ref().map(spend_view),
        "budgets": s.budgets.as_ref().map(|b| budgets_view(b, s.spend.as_ref())),
    })
}

/// A price per million tokens (micro-units) as a decimal of the currency.
fn per_million(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// `[spend]`: the currency, the store and the prices as configured (per million tokens).
fn spend_view(sp: &crate::spend::SpendSettings) -> Value {
    let prices: Vec<Value> = sp
        .prices
        .entries
        .iter()
        .map(|(model, p)| {
            json!({
                "model": model,
                "input": per_million(p.input),
                "output": per_million(p.output),
                "cached_input": per_million(p.cached_input),
            })
        })
        .collect();
    json!({
        "currency": sp.currency,
        "file": sp.file.as_ref().map(|f| f.display().to_string()),
        "flush_interval_ms": sp.flush_interval.as_millis() as u64,
        "prices": prices,
    })
}

/// `[budgets]`: the time zone and every budget (one entry per unit of a rule), limits in the
/// budget's unit (tokens, or the currency as a decimal).
fn budgets_view(
    b: &crate::quota::budget::BudgetSettings,
    sp: Option<&crate::spend::SpendSettings>,
) -> Value {
    use crate::quota::budget::BudgetUnit;
    let amount = |unit: BudgetUnit, n: u64| match unit {
        BudgetUnit::Tokens => json!(n),
        BudgetUnit::Spend => json!(per_million(n)),
    };
    let rules: Vec<Value> = b
        .rules
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "key": match r.key {
                    crate::quota::KeyKind::Subject => "subject",
                    crate::quota::KeyKind::Tenant => "tenant",
                    crate::quota::KeyKind::ApiKey => "api_key",
                    crate::quota::KeyKind::ClientIp => "client_ip",
                },
                "model": r.model.as_deref().unwrap_or("*"),
                "period": r.rule.limits.window.as_str(),
                "unit": r.unit.as_str(),
                "limit": amount(r.unit, r.limit()),
                "soft_limit": r.soft.map(|s| amount(r.unit, s)),
                "reserve_max_tokens": r.rule.reserve_max_tokens,
            })
        })
        .collect();
    json!({
        "time_zone": b.time_zone,
        "currency": sp.map_or("USD", |s| s.currency.as_str()),
        "rules": rules,
    })
}

/// An upstream's endpoint choice: `balance` and, where set, `affinity` and `load_metric`.
fn balance_view(b: &crate::balance::UpstreamBalance) -> Value {
    json!({
        "policy": b.policy.name(),
        "affinity": b.affinity().map(|a| json!({
            "key": a.key.describe(),
            "load_factor": a.load_factor,
            "prefix_bytes": a.prefix_bytes,
        })),
        "load_metric": b.load_metric.as_ref().map(|m| json!({
            "path": m.path,
            "gauge": m.gauge,
            "interval_ms": m.interval.as_millis() as u64,
            "timeout_ms": m.timeout.as_millis() as u64,
        })),
    })
}

/// `provider` of an upstream or deployment, with its adapter's settings.
fn provider_view(p: &crate::config_types::Provider) -> Value {
    use crate::config_types::Provider;
    match p {
        Provider::OpenAi => json!({"kind": "openai"}),
        Provider::Anthropic(a) => json!({
            "kind": "anthropic",
            "anthropic_version": a.version,
            "default_max_tokens": a.default_max_tokens,
        }),
    }
}

/// A `[[transforms]]` entry as compiled.
fn transform_view(t: &crate::adapt::Transform) -> Value {
    use crate::adapt::schema::Naming;
    json!({
        "name": t.name,
        "openapi": t.file.display().to_string(),
        "request_schema": t.request_schema,
        "response_schema": t.response_schema,
        "naming": match t.naming {
            Naming::AsIs => "as_is",
            Naming::SnakeCase => "snake_case",
            Naming::CamelCase => "camel_case",
        },
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
                json!({
                    "deployment": d.model(),
                    "version": d.version_str(),
                    "status": d.status().as_str(),
                    "share_percent": share,
                })
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
tokens = [{ name = "alice", token = { value = "alice-SECRET-0123456789" } }]
[registry]
path = "models.db"
"#;
        let s = crate::config::from_str(text, Path::new("/etc/sg"), 1).unwrap();
        let v = redacted_view(&s);
        let shown = v.to_string();
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("(redacted)"));
        assert!(shown.contains("/v1/*"));
        assert_eq!(v["admin"]["tokens"][0]["name"], "alice");
        assert_eq!(v["registry"]["path"], "/etc/sg/models.db");
    }

    #[test]
    fn config_view_shows_each_upstreams_balance() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "plain"
endpoints = ["127.0.0.1:9000"]
[[upstreams]]
name = "fed"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]
balance = "p2c_ewma"
load_metric = { gauge = "vllm:num_requests_waiting", interval_ms = 200 }
[[deployments]]
model = "m"
version = "1.0.0"
endpoints = ["127.0.0.1:9003", "127.0.0.1:9004"]
balance = "affinity"
affinity = { key = "prompt", load_factor = 1.5, prefix_bytes = 256 }
[[routes]]
path = "/v1/chat"
targets = [{ model = "m", weight = 1 }]
"#;
        let s = crate::config::from_str(text, Path::new("."), 1).unwrap();
        let v = redacted_view(&s);
        let ups = &v["upstreams"];
        assert_eq!(
            ups[0]["balance"],
            json!({"policy": "round_robin", "affinity": null, "load_metric": null})
        );
        assert_eq!(
            ups[1]["balance"]["load_metric"],
            json!({"path": "/metrics", "gauge": "vllm:num_requests_waiting", "interval_ms": 200, "timeout_ms": 200})
        );
        assert_eq!(ups[1]["balance"]["policy"], "p2c_ewma");
        assert_eq!(
            ups[2]["balance"]["affinity"],
            json!({"key": "prompt", "load_factor": 1.5, "prefix_bytes": 256})
        );
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
                {"deployment": "a", "version": "1.0.0", "status": "active", "share_percent": 80.0},
                {"deployment": "b", "version": "1.1.0", "status": "active", "share_percent": 20.0},
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

    /// `[server.io_uring]` and `server.busy_poll_us` as configured, defaults when absent.
    #[test]
    fn config_view_shows_the_ring_and_the_busy_poll() {
        let base = "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n";
        let rest = "[[upstreams]]\nname = \"mock\"\nendpoints = [\"127.0.0.1:9000\"]\n\
                    [[routes]]\npath = \"/*rest\"\nupstream = \"mock\"\n";
        let view = |server: &str| {
            let text = format!("{base}{server}\n{rest}");
            let s = crate::config::from_str(&text, Path::new("/etc/sg"), 1).unwrap();
            redacted_view(&s)["server"].clone()
        };
        let v = view("");
        assert_eq!(v["busy_poll_us"], json!(0));
        assert_eq!(
            v["io_uring"],
            json!({"entries": 4096, "sqpoll": false, "sqpoll_idle_ms": null,
                   "coop_taskrun": true, "single_issuer": false, "defer_taskrun": false})
        );
        let v = view(
            "busy_poll_us = 50\n[server.io_uring]\nentries = 1024\nsqpoll = true\n\
             sqpoll_idle_ms = 20\nsingle_issuer = true",
        );
        assert_eq!(v["busy_poll_us"], json!(50));
        assert_eq!(
            v["io_uring"],
            json!({"entries": 1024, "sqpoll": true, "sqpoll_idle_ms": 20,
                   "coop_taskrun": false, "single_issuer": true, "defer_taskrun": false})
        );
    }

    /// `[spend]` and `[budgets]` as configured: prices per million tokens, the store, the
    /// time zone and every budget (a rule with both units shows as two), in their units.
    #[test]
    fn config_view_shows_prices_and_budgets() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:9000"]
[[routes]]
path = "/v1/*rest"
upstream = "mock"
[spend]
currency = "EUR"
file = "spend.json"
flush_interval_ms = 250
[[spend.prices]]
model = "*"
input = 0.6
output = 0.8
[[spend.prices]]
model = "big"
input = 3.0
output = 15.0
cached_input = 0.3
[budgets]
time_zone = "Europe/Berlin"
[[budgets.rules]]
name = "team"
key = "tenant"
period = "month"
tokens = 5000000
spend = 250.5
soft_limit = 0.8
[[budgets.rules]]
name = "ip"
key = "client_ip"
model = "big"
period = "total"
tokens = 10
reserve_max_tokens = true
"#;
        let s = crate::config::from_str(text, Path::new("/etc/sg"), 1).unwrap();
        let v = redacted_view(&s);
        assert_eq!(
            v["spend"],
            json!({
                "currency": "EUR",
                "file": "/etc/sg/spend.json",
                "flush_interval_ms": 250,
                "prices": [
                    {"model": "*", "input": 0.6, "output": 0.8, "cached_input": 0.6},
                    {"model": "big", "input": 3.0, "output": 15.0, "cached_input": 0.3},
                ],
            }),
            "{v}"
        );
        assert_eq!(
            v["budgets"],
            json!({
                "time_zone": "Europe/Berlin",
                "currency": "EUR",
                "rules": [
                    {"name": "team", "key": "tenant", "model": "*", "period": "month",
                     "unit": "tokens", "limit": 5_000_000, "soft_limit": 4_000_000,
                     "reserve_max_tokens": false},
                    {"name": "team", "key": "tenant", "model": "*", "period": "month",
                     "unit": "spend", "limit": 250.5, "soft_limit": 200.4,
                     "reserve_max_tokens": false},
                    {"name": "ip", "key": "client_ip", "model": "big", "period": "total",
                     "unit": "tokens", "limit": 10, "soft_limit": null,
                     "reserve_max_tokens": true},
                ],
            }),
            "{v}"
        );
        // Neither table: both null.
        let bare = crate::config::from_str(
            &text[..text.find("[spend]").unwrap()],
            Path::new("/etc/sg"),
            1,
        )
        .unwrap();
        let v = redacted_view(&bare);
        assert!(v["spend"].is_null() && v["budgets"].is_null(), "{v}");
    }

    #[test]
    fn config_view_shows_providers_and_transforms() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "claude"
endpoints = ["127.0.0.1:9000"]
provider = "anthropic"
default_max_tokens = 512
api_key = { value = "sk-ant-SECRET" }
[[upstreams]]
name = "vllm"
endpoints = ["127.0.0.1:9001"]
[[deployments]]
model = "m"
version = "1.0.0"
endpoints = ["127.0.0.1:9002"]
provider = "anthropic"
anthropic_version = "2024-01-01"
[[transforms]]
name = "users"
openapi = "openapi/users.yaml"
request_schema = "CreateUser"
response_schema = "User"
naming = "snake_case"
[[routes]]
path = "/users"
upstream = "vllm"
transform = "users"
[[routes]]
path = "/v1/*rest"
upstream = "claude"
[[routes]]
path = "/split"
targets = [{ model = "m", weight = 1 }]
"#;
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let s = crate::config::from_str(text, &base, 1).unwrap();
        let v = redacted_view(&s);
        let shown = v.to_string();
        assert!(!shown.contains("SECRET"), "{shown}");
        let ups = v["upstreams"].as_array().unwrap();
        let by_name = |n: &str| {
            ups.iter()
                .find(|u| u["name"] == n)
                .unwrap_or_else(|| panic!("{n}: {v}"))
        };
        assert_eq!(
            by_name("claude")["provider"],
            json!({"kind": "anthropic", "anthropic_version": "2023-06-01", "default_max_tokens": 512})
        );
        assert_eq!(by_name("vllm")["provider"], json!({"kind": "openai"}));
        let deployment = ups
            .iter()
            .find(|u| u["provider"]["anthropic_version"] == "2024-01-01")
            .unwrap_or_else(|| panic!("the deployment's provider is not shown: {v}"));
        assert_eq!(deployment["provider"]["default_max_tokens"], 4096);
        let routes = v["routes"].as_array().unwrap();
        assert_eq!(routes[0]["transform"], "users", "{v}");
        assert_eq!(routes[1]["transform"], Value::Null, "{v}");
        let t = &v["transforms"][0];
        assert_eq!(t["name"], "users");
        assert_eq!(t["request_schema"], "CreateUser");
        assert_eq!(t["response_schema"], "User");
        assert_eq!(t["naming"], "snake_case");
        assert!(
            t["openapi"].as_str().unwrap().ends_with("users.yaml"),
            "{t}"
        );
    }
}
