//! What the admin API shows of the registry (JSON), and the rollout series of `/metrics`.
//! The registry holds no secret values (an `api_key` is an env or file reference), so
//! nothing here needs redacting.

use std::fmt::Write;

use serde_json::{json, Value};

use super::store::AuditEntry;
use super::{RegistryState, Rollout, RolloutState, RouteKey, Split, SplitTarget, Version};

pub fn version(v: &Version) -> Value {
    json!({
        "model": v.model,
        "version": v.version,
        "status": v.status.as_str(),
        "served_name": v.served_name,
        "endpoints": v.endpoints,
        "labels": v.labels,
        "settings": v.settings,
        "content_hash": v.content_hash,
        "created_at": v.created_at,
        "created_by": v.created_by,
        "mark": v.mark,
    })
}

fn route(r: &RouteKey) -> Value {
    json!({"path": r.path, "models": r.models})
}

pub fn split(s: &Split) -> Value {
    split_parts(&s.route, &s.targets, s.updated_at, &s.updated_by)
}

pub fn split_parts(r: &RouteKey, targets: &[SplitTarget], at: i64, by: &str) -> Value {
    json!({
        "route": route(r),
        "targets": targets,
        "updated_at": at,
        "updated_by": by,
    })
}

/// A rollout; `watch` is what the control thread last saw of its current step.
pub fn rollout(r: &Rollout, watch: Option<&Value>) -> Value {
    json!({
        "id": r.id,
        "model": r.model,
        "version": r.version,
        "stable": r.stable,
        "route": route(&r.route),
        "steps": r.plan.steps,
        "hold_ms": r.plan.hold_ms,
        "guards": r.plan.guards,
        "step": r.step,
        "percent": r.percent(),
        "state": r.state.as_str(),
        "reason": r.reason,
        "guard": r.guard,
        "original": r.original,
        "created_at": r.created_at,
        "created_by": r.created_by,
        "updated_at": r.updated_at,
        "watch": watch,
    })
}

/// `GET /models`: every model with its versions.
pub fn models(st: &RegistryState) -> Value {
    let list: Vec<Value> = st.models.iter().map(|m| model(st, &m.name)).collect();
    json!({"models": list})
}

/// `GET /models/{m}`.
pub fn model(st: &RegistryState, name: &str) -> Value {
    let m = st.models.iter().find(|m| m.name == name);
    let versions: Vec<Value> = st
        .versions
        .iter()
        .filter(|v| v.model == name)
        .map(version)
        .collect();
    json!({
        "name": name,
        "created_at": m.map(|m| m.created_at),
        "created_by": m.map(|m| m.created_by.as_str()),
        "versions": versions,
    })
}

pub fn audit_entry(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "at": e.at_ms,
        "who": e.who,
        "action": e.action,
        "subject": e.subject,
        "before": e.before,
        "after": e.after,
    })
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The rollout series: the latest rollout of each version (its state and percent), and
/// rollbacks by guard over every rollout the registry remembers (so the counter survives
/// restarts).
pub fn prometheus(rollouts: &[Rollout], out: &mut String) {
    if rollouts.is_empty() {
        return;
    }
    let mut latest: Vec<&Rollout> = Vec::new();
    for r in rollouts {
        match latest
            .iter_mut()
            .find(|l| l.model == r.model && l.version == r.version)
        {
            Some(l) if l.id < r.id => *l = r,
            Some(_) => {}
            None => latest.push(r),
        }
    }
    out.push_str("# HELP shardgate_rollout_percent The share of its model's traffic a rollout gives the new version now.\n# TYPE shardgate_rollout_percent gauge\n");
    for r in &latest {
        let _ = writeln!(
            out,
            "shardgate_rollout_percent{{model=\"{}\",version=\"{}\",route=\"{}\"}} {}",
            label(&r.model),
            label(&r.version),
            label(&r.route.path),
            r.percent()
        );
    }
    out.push_str("# HELP shardgate_rollout_state The state of the latest rollout of each version (1 for its state).\n# TYPE shardgate_rollout_state gauge\n");
    for r in &latest {
        for s in RolloutState::ALL {
            let _ = writeln!(
                out,
                "shardgate_rollout_state{{model=\"{}\",version=\"{}\",state=\"{}\"}} {}",
                label(&r.model),
                label(&r.version),
                s.as_str(),
                u8::from(r.state == s)
            );
        }
    }
    out.push_str("# HELP shardgate_rollout_rollbacks_total Rollouts a guard rolled back, by version and guard.\n# TYPE shardgate_rollout_rollbacks_total counter\n");
    let mut rollbacks: Vec<(&str, &str, &str, u64)> = Vec::new();
    for r in rollouts {
        let Some(g) = r
            .guard
            .as_deref()
            .filter(|_| r.state == RolloutState::RolledBack)
        else {
            continue;
        };
        match rollbacks
            .iter_mut()
            .find(|(m, v, guard, _)| *m == r.model && *v == r.version && *guard == g)
        {
            Some(x) => x.3 += 1,
            None => rollbacks.push((&r.model, &r.version, g, 1)),
        }
    }
    for (m, v, g, n) in rollbacks {
        let _ = writeln!(
            out,
            "shardgate_rollout_rollbacks_total{{model=\"{}\",version=\"{}\",guard=\"{}\"}} {n}",
            label(m),
            label(v),
            label(g)
        );
    }
}
