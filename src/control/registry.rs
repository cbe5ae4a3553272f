//! The model registry on the control thread, which owns its database: the admin API's
//! registry requests, and the rollouts' guard checks.
//!
//! # Changes
//!
//! A change ([`RegistryRequest`] that writes) runs in one transaction
//! ([`crate::registry::store::Store::change`]); before it commits, the registry's new state
//! is combined with the config file in force and validated as a whole, so a change the
//! config would refuse writes nothing and is answered with every problem. A committed change
//! is applied like an explicit reload (the generation increases, every worker gets the new
//! snapshot, a lowering of protection would be applied and logged): the reply carries a
//! barrier the admin thread waits on, so it answers once every worker runs the change.
//!
//! # Rollouts
//!
//! While a rollout runs, the control thread looks at the canary's and the stable version's
//! outcomes every quarter of the hold time (between 10 ms and 1 s), asking every worker for
//! the two deployments' counts ([`crate::inbox::ToWorker::CollectDeployments`]). Each step's
//! window starts at the first look after the step was applied (after a restart: the first
//! look after the start, so a step's hold starts again). A breach rolls the rollout back at
//! once; a step that held for its hold time with the guards passing advances. The changes
//! are made by `rollout` in the audit log, with the guards' figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::Transaction;
use serde_json::{json, Value};

use super::{lock_view, protection, State};
use crate::config::{self, Snapshot};
use crate::inbox::{Barrier, COLLECT_TIMEOUT};
use crate::metrics::DeploymentCounts;
use crate::registry::changes::{self, Ctx, RolloutMove};
use crate::registry::rollout::{judge, Reference, Verdict, Window};
use crate::registry::store::{load_state, AuditQuery, ChangeError, Changed, Store};
use crate::registry::{merge, now_ms, view, Opened, RegistryState, Rollout, RolloutState};

/// Who the audit log names for the changes a rollout makes itself.
pub const ROLLOUT_WHO: &str = "rollout";
/// Most audit entries one `GET /audit` returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// What the admin API asks of the registry.
#[derive(Debug, Clone)]
pub enum RegistryRequest {
    Models,
    Model(String),
    Version(String, String),
    Splits,
    Rollouts,
    Rollout(String, String),
    Audit(AuditQuery),
    /// `who` registers a version of `model` described by `body`.
    Register {
        who: String,
        model: String,
        body: Value,
    },
    SetStatus {
        who: String,
        model: String,
        version: String,
        body: Value,
    },
    PutSplit {
        who: String,
        body: Value,
    },
    DeleteSplit {
        who: String,
        body: Value,
    },
    StartRollout {
        who: String,
        model: String,
        version: String,
        body: Value,
    },
    /// Pause, resume or abort.
    MoveRollout {
        who: String,
        model: String,
        version: String,
        step: RolloutMove,
    },
}

/// A registry answer: the JSON body, and for a change that was applied, how to know when
/// every worker runs it.
pub struct RegistryReply {
    pub body: Value,
    pub applied: Option<Applied>,
}

/// A committed change, sent to every worker.
pub struct Applied {
    pub generation: u64,
    /// When the transaction committed.
    pub committed: Instant,
    /// Answered once every worker has swapped in the change's snapshot.
    pub barrier: Barrier,
}

/// The control thread's registry: the database, what it holds, and the rollouts' windows.
pub(super) struct RegistryCtl {
    store: Store,
    state: RegistryState,
    watches: HashMap<i64, Watch>,
    /// When to look at the running rollouts next (`None`: none is running).
    next_look: Option<Instant>,
}

impl RegistryCtl {
    pub(super) fn new(opened: Opened) -> RegistryCtl {
        let mut r = RegistryCtl {
            store: opened.store,
            state: opened.state,
            watches: HashMap::new(),
            next_look: None,
        };
        r.schedule();
        r
    }

    /// The snapshot of the config file's `raw` content combined with the registry.
    pub(super) fn build(
        &self,
        raw: &crate::config::RawConfig,
        base: &std::path::Path,
        generation: u64,
    ) -> Result<Snapshot, Vec<crate::config::ConfigProblem>> {
        merge::build(raw, base, &self.state, self.store.path(), generation)
    }

    /// Whether the registry holds the targets of the route at `path` with `models`.
    pub(super) fn holds_split(&self, path: &str, models: &[String]) -> bool {
        let key = crate::registry::RouteKey::new(path, models);
        self.state.split(&key).is_some()
    }

    /// Looks soon when a rollout runs and no look is planned; forgets looks when none runs.
    fn schedule(&mut self) {
        let interval = self
            .state
            .rollouts
            .iter()
            .filter(|r| r.state == RolloutState::Running)
            .map(|r| look_interval(r.plan.hold_ms))
            .min();
        self.next_look = match (interval, self.next_look) {
            (None, _) => None,
            (Some(_), Some(t)) => Some(t),
            (Some(i), None) => Some(Instant::now() + i),
        };
    }
}

/// A quarter of the hold, between 10 ms and 1 s.
fn look_interval(hold_ms: u64) -> Duration {
    Duration::from_millis((hold_ms / 4).clamp(10, 1000))
}

/// One running rollout's current step, as the control thread watches it.
struct Watch {
    step: usize,
    started: Instant,
    /// Both deployments' counts when the step's window started.
    base: Vec<DeploymentCounts>,
    /// The stable version's figures from the last window that had enough of its requests.
    reference: Option<Reference>,
    /// The last look, for the admin API.
    last: Value,
}

fn no_registry() -> ChangeError {
    ChangeError::NotFound("this gateway has no model registry ([registry] path)".into())
}

impl State {
    /// Serves one registry request.
    pub(super) fn registry(&mut self, req: RegistryRequest) -> Result<RegistryReply, ChangeError> {
        let read = |body: Value| {
            Ok(RegistryReply {
                body,
                applied: None,
            })
        };
        let reg = self.registry.as_ref().ok_or_else(no_registry)?;
        let st = &reg.state;
        match req {
            RegistryRequest::Models => read(view::models(st)),
            RegistryRequest::Model(m) => {
                if !st.models.iter().any(|x| x.name == m) {
                    return Err(ChangeError::NotFound(format!(
                        "no model `{m}` in the registry"
                    )));
                }
                read(view::model(st, &m))
            }
            RegistryRequest::Version(m, v) => {
                let v = changes::canonical_version(&v, "version")
                    .ok()
                    .and_then(|v| st.version(&m, &v))
                    .ok_or_else(|| {
                        ChangeError::NotFound(format!("no version `{m}@{v}` in the registry"))
                    })?;
                let rollout = st
                    .latest_rollout(&v.model, &v.version)
                    .map(|r| view::rollout(r, reg.watches.get(&r.id).map(|w| &w.last)));
                read(json!({"version": view::version(v), "rollout": rollout}))
            }
            RegistryRequest::Splits => {
                let splits: Vec<Value> = st.splits.iter().map(view::split).collect();
                read(json!({"splits": splits}))
            }
            RegistryRequest::Rollouts => {
                let list: Vec<Value> = st
                    .rollouts
                    .iter()
                    .map(|r| view::rollout(r, reg.watches.get(&r.id).map(|w| &w.last)))
                    .collect();
                read(json!({"rollouts": list}))
            }
            RegistryRequest::Rollout(m, v) => {
                let r = changes::canonical_version(&v, "version")
                    .ok()
                    .and_then(|v| st.latest_rollout(&m, &v))
                    .ok_or_else(|| ChangeError::NotFound(format!("no rollout of `{m}@{v}`")))?;
                read(json!({"rollout": view::rollout(r, reg.watches.get(&r.id).map(|w| &w.last))}))
            }
            RegistryRequest::Audit(mut q) => {
                q.limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
                let entries = reg
                    .store
                    .audit(&q)
                    .map_err(|e| ChangeError::Store(e.to_string()))?;
                let list: Vec<Value> = entries.iter().map(view::audit_entry).collect();
                read(json!({"entries": list}))
            }
            RegistryRequest::Register { who, model, body } => {
                let ctx = Ctx {
                    who: &who,
                    now: now_ms(),
                };
                let v = changes::parse_version(&model, &body, ctx)?;
                if let Some(old) = st.version(&v.model, &v.version) {
                    if old.content_hash == v.content_hash {
                        return read(json!({"unchanged": true, "version": view::version(old)}));
                    }
                    return Err(ChangeError::Conflict(format!(
                        "{} is registered already with other settings (content hash {}); a version \
                         never changes: register a new one",
                        old.label(),
                        old.content_hash
                    )));
                }
                self.registry_change(&who, "version.register", |tx, _, _, _| {
                    let c = changes::register(tx, &v)?;
                    Ok(with_body(c, json!({"version": view::version(&v)})))
                })
            }
            RegistryRequest::SetStatus {
                who,
                model,
                version,
                body,
            } => self.registry_change(&who, "version.status", |tx, st, _, _| {
                let c = changes::set_status(tx, st, &model, &version, &body)?;
                let after = c.after.clone();
                Ok(with_body(c, json!({"version": after})))
            }),
            RegistryRequest::PutSplit { who, body } => {
                self.registry_change(&who, "split.put", |tx, st, _, ctx| {
                    let c = changes::put(tx, st, &body, ctx)?;
                    let after = c.after.clone();
                    Ok(with_body(c, json!({"split": after})))
                })
            }
            RegistryRequest::DeleteSplit { who, body } => {
                self.registry_change(&who, "split.delete", |tx, st, _, _| {
                    let c = changes::delete(tx, st, &body)?;
                    Ok(with_body(c, json!({"split": null})))
                })
            }
            RegistryRequest::StartRollout {
                who,
                model,
                version,
                body,
            } => self.registry_change(&who, "rollout.start", |tx, st, snap, ctx| {
                let c = changes::start_rollout(tx, st, snap, &model, &version, &body, ctx)?;
                let r = view::rollout(&c.value, None);
                Ok(with_body(c, json!({"rollout": r})))
            }),
            RegistryRequest::MoveRollout {
                who,
                model,
                version,
                step,
            } => {
                let action = step.action();
                self.registry_change(&who, action, |tx, st, _, ctx| {
                    let c = changes::move_rollout(tx, st, &model, &version, &step, ctx)?;
                    let r = view::rollout(&c.value, None);
                    Ok(with_body(c, json!({"rollout": r})))
                })
            }
        }
    }

    /// Runs `op` in a registry transaction, validates the resulting state with the config
    /// file in force, commits, and applies the new snapshot on every worker.
    fn registry_change(
        &mut self,
        who: &str,
        action: &str,
        op: impl FnOnce(
            &Transaction<'_>,
            &RegistryState,
            &Snapshot,
            Ctx<'_>,
        ) -> Result<Changed<Value>, ChangeError>,
    ) -> Result<RegistryReply, ChangeError> {
        let in_force = lock_view(&self.view)
            .snapshot
            .clone()
            .ok_or_else(|| ChangeError::Store("no config is in force".into()))?;
        let (Some(reg), Some(raw)) = (self.registry.as_mut(), self.raw.as_ref()) else {
            return Err(no_registry());
        };
        let generation = self.generation + 1;
        let base = config::base_dir(&self.path);
        let db = reg.store.path().to_path_buf();
        let ctx = Ctx { who, now: now_ms() };
        let current = &reg.state;
        let (held_keys, held_remote) = (self.keys.as_ref(), &self.remote);
        let ((body, state, snap), audit_id) = reg.store.change(who, action, |tx| {
            let c = op(tx, current, &in_force, ctx)?;
            let state = load_state(tx)?;
            let mut snap =
                merge::build(raw, base, &state, &db, generation).map_err(ChangeError::Invalid)?;
            // The API key table and the fetched key sets stay in force (not in the file).
            super::carry_key_material(held_keys, held_remote, &mut snap)
                .map_err(ChangeError::Invalid)?;
            Ok(Changed {
                subject: c.subject,
                before: c.before,
                after: c.after,
                value: (c.value, state, snap),
            })
        })?;
        let committed = Instant::now();
        reg.state = state;
        reg.schedule();
        let lowered = protection::lowered(&in_force, &snap);
        let source = format!("the registry ({action} by {who})");
        self.install(snap, lowered, &source);
        let barrier = self.workers.start_barrier();
        self.publish_rollouts();
        let mut body = body;
        if let Value::Object(o) = &mut body {
            o.insert("generation".into(), self.generation.into());
            o.insert("audit_id".into(), audit_id.into());
        }
        Ok(RegistryReply {
            body,
            applied: Some(Applied {
                generation: self.generation,
                committed,
                barrier,
            }),
        })
    }

    /// Shows the admin thread's `/metrics` every rollout.
    pub(super) fn publish_rollouts(&self) {
        if let Some(reg) = &self.registry {
            lock_view(&self.view).rollouts = reg.state.rollouts.clone();
        }
    }

    /// When the running rollouts want their next look.
    pub(super) fn next_rollout_look(&self) -> Option<Instant> {
        self.registry.as_ref().and_then(|r| r.next_look)
    }

    /// Looks at every running rollout: rolls back a breach, advances a step that held.
    pub(super) fn look_at_rollouts(&mut self) {
        let Some(reg) = self.registry.as_mut() else {
            return;
        };
        let running: Vec<Rollout> = reg
            .state
            .rollouts
            .iter()
            .filter(|r| r.state == RolloutState::Running)
            .cloned()
            .collect();
        reg.watches
            .retain(|id, _| running.iter().any(|r| r.id == *id));
        reg.next_look = None;
        reg.schedule();
        if running.is_empty() {
            return;
        }
        let labels: Vec<Box<str>> = running
            .iter()
            .flat_map(|r| [r.canary_label().into(), r.stable_label().into()])
            .collect();
        let Some(counts) = self.workers.collect_deployments(&labels, COLLECT_TIMEOUT) else {
            eprintln!("shardgate: rollouts: a worker did not report its counts in time; looking again later");
            return;
        };
        let now = Instant::now();
        let mut moves = Vec::new();
        for r in &running {
            if let Some(m) = watch(reg.watches.entry(r.id), r, &counts, now) {
                moves.push((r, m));
            }
        }
        for (r, m) in moves {
            let step = match &m {
                RolloutMove::Advance if r.step + 1 < r.plan.steps.len() => {
                    format!("advances to {} %", r.plan.steps[r.step + 1])
                }
                RolloutMove::Advance => "completes".to_owned(),
                RolloutMove::RollBack { reason, .. } => format!("ROLLED BACK: {reason}"),
                _ => String::new(),
            };
            let (model, version) = (r.model.clone(), r.version.clone());
            let done = self.registry_change(ROLLOUT_WHO, m.action(), |tx, st, _, ctx| {
                let c = changes::move_rollout(tx, st, &model, &version, &m, ctx)?;
                Ok(with_body(c, json!({})))
            });
            match done {
                Ok(_) => eprintln!(
                    "shardgate: rollout {} of {} on {}: {step}",
                    r.id,
                    r.canary_label(),
                    r.route.name()
                ),
                Err(e) => eprintln!(
                    "shardgate: rollout {} of {}: cannot apply its next move ({step}): {e}",
                    r.id,
                    r.canary_label()
                ),
            }
        }
    }
}

/// Updates the watch of `r` with `counts`; the move its guards call for, if any.
fn watch(
    entry: std::collections::hash_map::Entry<'_, i64, Watch>,
    r: &Rollout,
    counts: &[DeploymentCounts],
    now: Instant,
) -> Option<RolloutMove> {
    let w = entry.or_insert_with(|| Watch {
        step: r.step,
        started: now,
        base: counts.to_vec(),
        reference: None,
        last: Value::Null,
    });
    if w.step != r.step {
        // A new step: a new window; the stable reference carries over.
        w.step = r.step;
        w.started = now;
        w.base = counts.to_vec();
    }
    fn find<'a>(cs: &'a [DeploymentCounts], label: &str) -> Option<&'a DeploymentCounts> {
        cs.iter().find(|c| &*c.label == label)
    }
    let (cl, sl) = (r.canary_label(), r.stable_label());
    let canary = Window::between(find(counts, &cl), find(&w.base, &cl));
    let stable = Window::between(find(counts, &sl), find(&w.base, &sl));
    if let Some(reference) = Reference::of(&stable, r.plan.guards.min_requests) {
        w.reference = Some(reference);
    }
    let verdict = judge(&canary, w.reference.as_ref(), &r.plan.guards);
    let held = now.duration_since(w.started) >= Duration::from_millis(r.plan.hold_ms);
    let p99 = |win: &Window| (!win.ttfb_us.is_empty()).then(|| win.ttfb_us.value_at_quantile(0.99));
    w.last = json!({
        "step_ms": now.duration_since(w.started).as_millis() as u64,
        "canary": {"requests": canary.requests, "errors": canary.errors, "p99_ttfb_us": p99(&canary)},
        "stable": {"requests": stable.requests, "errors": stable.errors, "p99_ttfb_us": p99(&stable)},
        "reference": w.reference.map(|r| json!({"error_rate": r.error_rate, "p99_ttfb_us": r.p99_us})),
        "verdict": match &verdict {
            Verdict::Breach { guard, reason } => json!({"breach": guard, "reason": reason}),
            Verdict::Watching { why } => json!({"watching": why}),
            Verdict::Pass => json!("pass"),
        },
    });
    match verdict {
        Verdict::Breach { guard, reason } => Some(RolloutMove::RollBack {
            guard: guard.into(),
            reason,
        }),
        Verdict::Pass if held => Some(RolloutMove::Advance),
        _ => None,
    }
}

/// A change's audit description with `body` as its answer.
fn with_body<T>(c: Changed<T>, body: Value) -> Changed<Value> {
    Changed {
        subject: c.subject,
        before: c.before,
        after: c.after,
        value: body,
    }
}
