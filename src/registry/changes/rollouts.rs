//! The rollout changes: starting a progressive canary on a route (its first step's split
//! and the rollout row) and moving it (pause, resume, abort, the control thread's advance
//! and roll-back), each inside the registry transaction like the other changes.

use rusqlite::{params, Transaction};
use serde_json::Value;

use super::{canonical_version, find_version, object, refuse_if_rollout, route_key, text, Ctx};
use crate::config::Snapshot;
use crate::registry::rollout::{self, Plan};
use crate::registry::store::{put_split, ChangeError, Changed};
use crate::registry::view;
use crate::registry::{RegistryState, Rollout, RolloutState, RouteKey, SplitTarget, Status};
use crate::route::RouteTarget;

/// The targets of the route `key` names in the config in force, as exact versions: the
/// registry's split if it has one, else what the file's targets resolve to.
fn current_targets(
    state: &RegistryState,
    snap: &Snapshot,
    key: &RouteKey,
) -> Option<Vec<SplitTarget>> {
    if let Some(s) = state.split(key) {
        return Some(s.targets.clone());
    }
    let route = snap
        .router
        .routes()
        .iter()
        .find(|r| key.names(r.pattern(), r.models()))?;
    let RouteTarget::Split(split) = route.target() else {
        return None;
    };
    let g = split
        .targets()
        .iter()
        .fold(0u64, |g, t| gcd(g, t.weight.get()))
        .max(1);
    Some(
        split
            .targets()
            .iter()
            .map(|t| {
                let d = snap.router.deployment(t.deployment);
                SplitTarget {
                    model: d.model().into(),
                    version: d.version_str().into(),
                    weight: u32::try_from(t.weight.get() / g).unwrap_or(u32::MAX),
                }
            })
            .collect(),
    )
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The split routes of the config in force that send traffic to `model`.
fn routes_of(snap: &Snapshot, model: &str) -> Vec<RouteKey> {
    snap.router
        .routes()
        .iter()
        .filter(|r| match r.target() {
            RouteTarget::Split(s) => s
                .targets()
                .iter()
                .any(|t| snap.router.deployment(t.deployment).model() == model),
            RouteTarget::Upstream(_) => false,
        })
        .map(|r| {
            let models: Vec<String> = r.models().iter().map(|m| m.to_string()).collect();
            RouteKey::new(r.pattern(), &models)
        })
        .collect()
}

/// `POST /models/{m}/versions/{v}/rollout`: checks the request against the registry and the
/// config in force, writes the first step's split and the rollout.
pub fn start_rollout(
    tx: &Transaction<'_>,
    state: &RegistryState,
    snap: &Snapshot,
    model: &str,
    version: &str,
    body: &Value,
    ctx: Ctx<'_>,
) -> Result<Changed<Rollout>, ChangeError> {
    let o = object(body)?;
    if let Some(k) = o.keys().find(|k| {
        !matches!(
            k.as_str(),
            "route" | "stable" | "steps" | "hold_ms" | "guards"
        )
    }) {
        return Err(ChangeError::bad(k, "unknown field"));
    }
    let plan: Plan = rollout::parse_plan(o).map_err(ChangeError::Invalid)?;
    let canary = find_version(state, model, version)?;
    if canary.status != Status::Canary {
        return Err(ChangeError::Conflict(format!(
            "only a canary version can be rolled out; {} is {}",
            canary.label(),
            canary.status.as_str()
        )));
    }
    if !snap.metrics.per_route {
        return Err(ChangeError::Conflict(
            "the guards need per-deployment metrics: set [metrics] per_route = true".into(),
        ));
    }
    let route = match o.get("route") {
        Some(Value::Object(r)) => route_key(r, "route.")?,
        Some(_) => return Err(ChangeError::bad("route", "must be {\"path\", \"models\"}")),
        None => match &routes_of(snap, model)[..] {
            [one] => one.clone(),
            [] => {
                return Err(ChangeError::Conflict(format!(
                    "no route sends traffic to model `{model}`"
                )))
            }
            many => {
                let names: Vec<String> = many.iter().map(RouteKey::name).collect();
                return Err(ChangeError::Conflict(format!(
                    "several routes send traffic to `{model}` ({}); name one with `route`",
                    names.join(", ")
                )));
            }
        },
    };
    let original = current_targets(state, snap, &route).ok_or_else(|| {
        ChangeError::NotFound(format!("no route with `targets` is {}", route.name()))
    })?;
    refuse_if_rollout(state, &route)?;
    let serving: Vec<&SplitTarget> = original
        .iter()
        .filter(|t| t.model == model && t.version != canary.version && t.weight > 0)
        .collect();
    let stable = match o.get("stable") {
        Some(Value::String(s)) => {
            let s = canonical_version(s, "stable")?;
            if !serving.iter().any(|t| t.version == s) {
                return Err(ChangeError::Conflict(format!(
                    "{model}@{s} has no traffic on {}",
                    route.name()
                )));
            }
            s
        }
        Some(_) => return Err(ChangeError::bad("stable", "must be a version")),
        None => match &serving[..] {
            [one] => one.version.clone(),
            _ => {
                return Err(ChangeError::Conflict(format!(
                    "{} versions of `{model}` have traffic on {}; name the one to replace with `stable`",
                    serving.len(),
                    route.name()
                )))
            }
        },
    };
    let first = rollout::weights_at(&original, model, &stable, &canary.version, plan.steps[0])
        .map_err(ChangeError::Conflict)?;
    put_split(tx, &route, &first, ctx.who, ctx.now)?;
    tx.execute(
        "INSERT INTO rollouts (model, version, stable, path, models, plan, original, step, state, \
         created_at, created_by, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 'running', ?8, ?9, ?8)",
        params![
            model,
            canary.version,
            stable,
            route.path,
            text(&route.models),
            text(&plan),
            text(&original),
            ctx.now,
            ctx.who
        ],
    )?;
    tx.execute(
        "UPDATE versions SET mark = NULL WHERE model = ?1 AND version = ?2",
        params![model, canary.version],
    )?;
    let r = Rollout {
        id: tx.last_insert_rowid(),
        model: model.into(),
        version: canary.version.clone(),
        stable,
        route,
        plan,
        original,
        step: 0,
        state: RolloutState::Running,
        reason: None,
        guard: None,
        created_at: ctx.now,
        created_by: ctx.who.into(),
        updated_at: ctx.now,
    };
    Ok(Changed {
        subject: r.canary_label(),
        before: None,
        after: Some(view::rollout(&r, None)),
        value: r,
    })
}

/// What happens to a live rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutMove {
    Pause,
    Resume,
    Abort,
    /// The guards passed the step's hold: the next step, or completion after the last.
    Advance,
    /// A guard broke.
    RollBack {
        guard: String,
        reason: String,
    },
}

impl RolloutMove {
    pub fn action(&self) -> &'static str {
        match self {
            RolloutMove::Pause => "rollout.pause",
            RolloutMove::Resume => "rollout.resume",
            RolloutMove::Abort => "rollout.abort",
            RolloutMove::Advance => "rollout.advance",
            RolloutMove::RollBack { .. } => "rollout.rollback",
        }
    }
}

/// Applies `m` to the live rollout of `model@version`: its state, its route's split and, on
/// completion or rollback, the versions' statuses and mark.
pub fn move_rollout(
    tx: &Transaction<'_>,
    state: &RegistryState,
    model: &str,
    version: &str,
    m: &RolloutMove,
    ctx: Ctx<'_>,
) -> Result<Changed<Rollout>, ChangeError> {
    let v = find_version(state, model, version)?;
    let old = state
        .rollouts
        .iter()
        .rev()
        .find(|r| r.model == model && r.version == v.version && r.state.is_live())
        .ok_or_else(|| {
            ChangeError::NotFound(format!("no running or paused rollout of {}", v.label()))
        })?;
    let mut r = old.clone();
    r.updated_at = ctx.now;
    let split = match (m, r.state) {
        (RolloutMove::Pause, RolloutState::Running) => {
            r.state = RolloutState::Paused;
            None
        }
        (RolloutMove::Resume, RolloutState::Paused) => {
            r.state = RolloutState::Running;
            None
        }
        (RolloutMove::Pause | RolloutMove::Resume, s) => {
            return Err(ChangeError::Conflict(format!(
                "rollout {} is {}",
                r.id,
                s.as_str()
            )))
        }
        (RolloutMove::Advance | RolloutMove::RollBack { .. }, RolloutState::Paused) => {
            return Err(ChangeError::Conflict(format!("rollout {} is paused", r.id)))
        }
        (RolloutMove::Abort, _) => {
            r.state = RolloutState::Aborted;
            r.reason = Some(format!("aborted by {}", ctx.who));
            Some(rollout::rolled_back(&r.original, model, &r.version))
        }
        (RolloutMove::RollBack { guard, reason }, _) => {
            let why = format!("rolled back at {} %: {reason}", r.percent());
            r.state = RolloutState::RolledBack;
            r.reason = Some(reason.clone());
            r.guard = Some(guard.clone());
            tx.execute(
                "UPDATE versions SET mark = ?3 WHERE model = ?1 AND version = ?2",
                params![model, r.version, why],
            )?;
            Some(rollout::rolled_back(&r.original, model, &r.version))
        }
        (RolloutMove::Advance, _) if r.step + 1 < r.plan.steps.len() => {
            r.step += 1;
            let p = r.plan.steps[r.step];
            Some(
                rollout::weights_at(&r.original, model, &r.stable, &r.version, p)
                    .map_err(ChangeError::Conflict)?,
            )
        }
        (RolloutMove::Advance, _) => {
            r.state = RolloutState::Completed;
            let set = |v: &str, s: Status| {
                tx.execute(
                    "UPDATE versions SET status = ?3 WHERE model = ?1 AND version = ?2",
                    params![model, v, s.as_str()],
                )
            };
            set(&r.version, Status::Active)?;
            // A stable version from the config file has no registry status to change.
            set(&r.stable, Status::Draining)?;
            Some(rollout::promoted(&r.original, model, &r.stable, &r.version))
        }
    };
    if let Some(targets) = &split {
        put_split(tx, &r.route, targets, ctx.who, ctx.now)?;
    }
    tx.execute(
        "UPDATE rollouts SET step = ?2, state = ?3, reason = ?4, guard = ?5, updated_at = ?6 WHERE id = ?1",
        params![r.id, r.step as i64, r.state.as_str(), r.reason, r.guard, r.updated_at],
    )?;
    Ok(Changed {
        subject: r.canary_label(),
        before: Some(view::rollout(old, None)),
        after: Some(view::rollout(&r, None)),
        value: r,
    })
}
