//! The progressive canary: a rollout's plan, the split weights of each step, and the guards
//! that decide whether the canary may take the next step.
//!
//! # Weights
//!
//! A rollout moves the traffic of one model on one route from the stable version to the new
//! one. At step `p` % the new version gets `p` % of what the stable version had and the stable
//! keeps the rest; the route's other targets keep their shares ([`weights_at`]). Completion
//! puts the new version in the stable's place ([`promoted`]); a rollback or an abort restores
//! the route's targets as they were, with the new version at weight 0 ([`rolled_back`]).
//! Sticky routes keep their sessions: weighted rendezvous hashing moves a session to the new
//! version only when its weight grows, and never back while the rollout advances.
//!
//! # Guards
//!
//! Over the same window (since the step started), the canary is compared with the stable
//! version, from the per-deployment outcomes every worker records:
//!
//! - **error rate**: 5xx responses, timeouts (504) and requests closed without a response,
//!   per request. The canary's may exceed the stable's by at most `max_error_rate_increase`.
//! - **latency**: the canary's p99 time to first byte (a stream's first event; a whole
//!   response for non-streamed requests, whose head comes with the body) may be at most
//!   `max_p99_ratio` × the stable's p99 + `p99_slack_ms`.
//!
//! A rate or a p99 needs at least `min_requests` samples; until the canary has them, the
//! samples it lacks count as good ones. So a canary that fails early is rolled back as soon
//! as its failures alone exceed what `min_requests` requests could hold (with the default 100
//! requests and 5 %, its sixth failure), before a breaker can hide it from traffic, while a
//! canary only advances once it has `min_requests` requests in the window and held its step
//! for `hold_ms`. When the stable version has fewer than `min_requests` requests in the
//! window (the 100 % step) the last window in which it had them is the reference.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SplitTarget;
use crate::config::ConfigProblem;
use crate::metrics::DeploymentCounts;

/// Most steps one rollout may have.
pub const MAX_STEPS: usize = 20;
/// Longest hold per step: a week.
pub const MAX_HOLD_MS: u64 = 7 * 24 * 3600 * 1000;

/// What a rollout does: its steps, how long each holds, its guards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The new version's share of the model's traffic at each step, in percent, increasing,
    /// ending at 100.
    pub steps: Vec<u8>,
    /// How long each step must hold with the guards passing before the next one.
    pub hold_ms: u64,
    pub guards: Guards,
}

/// The guards' thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guards {
    /// The canary's error rate may exceed the stable's by at most this (0.05: five points).
    pub max_error_rate_increase: f64,
    /// The canary's p99 time to first byte may be at most this times the stable's ...
    pub max_p99_ratio: f64,
    /// ... plus this many milliseconds.
    pub p99_slack_ms: u64,
    /// Samples a rate or a p99 needs (see the module docs).
    pub min_requests: u64,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_error_rate_increase: 0.05,
            max_p99_ratio: 1.5,
            p99_slack_ms: 50,
            min_requests: 100,
        }
    }
}

/// The steps when the body names none.
pub const DEFAULT_STEPS: [u8; 5] = [1, 5, 25, 50, 100];
/// The hold when the body names none: five minutes.
pub const DEFAULT_HOLD_MS: u64 = 300_000;

/// Parses a rollout body's `steps`, `hold_ms` and `guards` (other keys are the caller's),
/// reporting every problem with its key.
pub fn parse_plan(body: &serde_json::Map<String, Value>) -> Result<Plan, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, msg: &str| problems.push(ConfigProblem::new(key, msg));
    let steps: Vec<u8> = match body.get("steps") {
        None => DEFAULT_STEPS.to_vec(),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v.as_u64() {
                    Some(p @ 1..=100) => out.push(p as u8),
                    _ => bad(
                        &format!("steps[{i}]"),
                        "must be a whole percent from 1 to 100",
                    ),
                }
            }
            if a.is_empty() || a.len() > MAX_STEPS {
                bad("steps", &format!("needs 1 to {MAX_STEPS} steps"));
            } else if out.windows(2).any(|w| w[0] >= w[1]) {
                bad("steps", "must increase");
            } else if out.len() == a.len() && out.last() != Some(&100) {
                bad("steps", "must end at 100");
            }
            out
        }
        Some(_) => {
            bad("steps", "must be an array of percents");
            Vec::new()
        }
    };
    let hold_ms = match body.get("hold_ms") {
        None => DEFAULT_HOLD_MS,
        Some(v) => match v.as_u64() {
            Some(ms @ 1..=MAX_HOLD_MS) => ms,
            _ => {
                bad(
                    "hold_ms",
                    &format!("must be 1 to {MAX_HOLD_MS} milliseconds"),
                );
                0
            }
        },
    };
    let mut guards = Guards::default();
    match body.get("guards") {
        None => {}
        Some(Value::Object(g)) => {
            for (k, v) in g {
                let key = format!("guards.{k}");
                match k.as_str() {
                    "max_error_rate_increase" => match v.as_f64() {
                        Some(x) if (0.0..=1.0).contains(&x) => guards.max_error_rate_increase = x,
                        _ => bad(&key, "must be a fraction from 0.0 to 1.0"),
                    },
                    "max_p99_ratio" => match v.as_f64() {
                        Some(x) if (1.0..=1000.0).contains(&x) => guards.max_p99_ratio = x,
                        _ => bad(&key, "must be a number from 1.0 to 1000.0"),
                    },
                    "p99_slack_ms" => match v.as_u64() {
                        Some(x) if x <= 3_600_000 => guards.p99_slack_ms = x,
                        _ => bad(&key, "must be 0 to 3600000 milliseconds"),
                    },
                    "min_requests" => match v.as_u64() {
                        Some(x @ 1..=1_000_000) => guards.min_requests = x,
                        _ => bad(&key, "must be 1 to 1000000"),
                    },
                    _ => bad(&key, "unknown guard"),
                }
            }
        }
        Some(_) => bad("guards", "must be an object"),
    }
    if problems.is_empty() {
        Ok(Plan {
            steps,
            hold_ms,
            guards,
        })
    } else {
        Err(problems)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Divides every weight by their greatest common divisor (zeros stay zero).
fn reduced(mut targets: Vec<(SplitTarget, u64)>) -> Result<Vec<SplitTarget>, String> {
    let g = targets.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
    for (t, w) in &mut targets {
        t.weight = u32::try_from(*w / g)
            .map_err(|_| "the route's weights are too large to split by percent".to_owned())?;
    }
    Ok(targets.into_iter().map(|(t, _)| t).collect())
}

/// The targets at step `percent`: `original` with the stable version's weight shared
/// between it (100 − `percent` %) and the new version (`percent` %); see the module docs.
/// The new version takes its existing entry (a weight-0 one from an earlier rollback) or is
/// added last.
pub fn weights_at(
    original: &[SplitTarget],
    model: &str,
    stable: &str,
    canary: &str,
    percent: u8,
) -> Result<Vec<SplitTarget>, String> {
    let is = |t: &SplitTarget, v: &str| t.model == model && t.version == v;
    let stable_weight = original
        .iter()
        .find(|t| is(t, stable))
        .map(|t| u64::from(t.weight))
        .ok_or_else(|| format!("the route has no target `{model}@{stable}`"))?;
    let p = u64::from(percent.min(100));
    let mut out: Vec<(SplitTarget, u64)> = original
        .iter()
        .map(|t| {
            let w = if is(t, stable) {
                stable_weight * (100 - p)
            } else if is(t, canary) {
                stable_weight * p
            } else {
                u64::from(t.weight) * 100
            };
            (t.clone(), w)
        })
        .collect();
    if !original.iter().any(|t| is(t, canary)) {
        let t = SplitTarget {
            model: model.into(),
            version: canary.into(),
            weight: 0,
        };
        out.push((t, stable_weight * p));
    }
    reduced(out)
}

/// The targets once the rollout completes: the new version in the stable's place, with its
/// weight; any other entry of the new version dropped.
pub fn promoted(
    original: &[SplitTarget],
    model: &str,
    stable: &str,
    canary: &str,
) -> Vec<SplitTarget> {
    original
        .iter()
        .filter(|t| !(t.model == model && t.version == canary))
        .map(|t| {
            let mut t = t.clone();
            if t.model == model && t.version == stable {
                t.version = canary.into();
            }
            t
        })
        .collect()
}

/// The targets after a rollback or an abort: `original`, with the new version at weight 0.
pub fn rolled_back(original: &[SplitTarget], model: &str, canary: &str) -> Vec<SplitTarget> {
    let mut out: Vec<SplitTarget> = original.to_vec();
    match out
        .iter_mut()
        .find(|t| t.model == model && t.version == canary)
    {
        Some(t) => t.weight = 0,
        None => out.push(SplitTarget {
            model: model.into(),
            version: canary.into(),
            weight: 0,
        }),
    }
    out
}

/// One deployment's outcomes over a window.
#[derive(Debug, Clone)]
pub struct Window {
    pub requests: u64,
    /// 5xx, and requests closed without a response.
    pub errors: u64,
    pub ttfb_us: Histogram<u64>,
}

impl Window {
    /// What happened between `base` (the counts at the window's start; `None`: nothing) and
    /// `now`.
    pub fn between(now: Option<&DeploymentCounts>, base: Option<&DeploymentCounts>) -> Window {
        let count = |c: Option<&DeploymentCounts>, error: bool| -> u64 {
            c.map_or(0, |c| {
                c.statuses
                    .iter()
                    .filter(|(st, _)| !error || *st == 0 || *st >= 500)
                    .map(|(_, n)| n)
                    .sum()
            })
        };
        let mut ttfb_us = now.map_or_else(empty_histogram, |c| c.ttfb_us.clone());
        if let Some(b) = base {
            let keep = ttfb_us.clone();
            if ttfb_us.subtract(&b.ttfb_us).is_err() {
                ttfb_us = keep;
            }
        }
        Window {
            requests: count(now, false).saturating_sub(count(base, false)),
            errors: count(now, true).saturating_sub(count(base, true)),
            ttfb_us,
        }
    }

    fn p99_us(&self) -> u64 {
        if self.ttfb_us.is_empty() {
            0
        } else {
            self.ttfb_us.value_at_quantile(0.99)
        }
    }
}

fn empty_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, crate::metrics::MAX_LATENCY_US, crate::metrics::SIGFIG)
        .expect("static histogram bounds are valid")
}

/// The stable version's error rate and p99, from a window with enough of its requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reference {
    pub error_rate: f64,
    pub p99_us: u64,
}

impl Reference {
    /// The stable's figures over `w`, if it has `min_requests` samples there.
    pub fn of(w: &Window, min_requests: u64) -> Option<Reference> {
        (w.requests >= min_requests && w.ttfb_us.len() >= min_requests).then(|| Reference {
            error_rate: w.errors as f64 / w.requests as f64,
            p99_us: w.p99_us(),
        })
    }
}

/// What the guards say about the canary's window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A guard is broken: roll back. `guard` is `error_rate` or `latency`.
    Breach { guard: &'static str, reason: String },
    /// Nothing broken yet, but not enough evidence to advance.
    Watching { why: String },
    /// The guards hold on enough samples.
    Pass,
}

/// Judges the canary's window against the stable reference (see the module docs).
pub fn judge(canary: &Window, reference: Option<&Reference>, g: &Guards) -> Verdict {
    let stable_rate = reference.map_or(0.0, |r| r.error_rate);
    let allowed = stable_rate + g.max_error_rate_increase;
    let n = canary.requests.max(g.min_requests);
    if canary.errors as f64 > allowed * n as f64 {
        return Verdict::Breach {
            guard: "error_rate",
            reason: format!(
                "error rate {:.2}% ({} of {} requests) exceeds the stable version's {:.2}% by more than {:.2} points",
                100.0 * canary.errors as f64 / canary.requests.max(1) as f64,
                canary.errors,
                canary.requests,
                100.0 * stable_rate,
                100.0 * g.max_error_rate_increase
            ),
        };
    }
    if let Some(r) = reference {
        let limit_us = (r.p99_us as f64 * g.max_p99_ratio) as u64 + g.p99_slack_ms * 1000;
        let samples = canary.ttfb_us.len();
        let within = if samples == 0 {
            0
        } else {
            canary.ttfb_us.count_between(0, limit_us)
        };
        let above = samples.saturating_sub(within);
        // p99 is above the limit exactly when more than 1 % of the samples are.
        if above * 100 > samples.max(g.min_requests) {
            return Verdict::Breach {
                guard: "latency",
                reason: format!(
                    "p99 time to first byte {} ms ({above} of {samples} responses slower than {} ms) exceeds {}× the stable version's {} ms + {} ms",
                    canary.p99_us() / 1000,
                    limit_us / 1000,
                    g.max_p99_ratio,
                    r.p99_us / 1000,
                    g.p99_slack_ms
                ),
            };
        }
    }
    if canary.requests < g.min_requests {
        return Verdict::Watching {
            why: format!(
                "{} of {} canary requests in this step",
                canary.requests, g.min_requests
            ),
        };
    }
    if reference.is_none() {
        return Verdict::Watching {
            why: format!(
                "the stable version has not yet had {} requests in one window",
                g.min_requests
            ),
        };
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(model: &str, version: &str, weight: u32) -> SplitTarget {
        SplitTarget {
            model: model.into(),
            version: version.into(),
            weight,
        }
    }

    #[test]
    fn plans_are_parsed_with_every_problem_named() {
        let parse = |v: Value| parse_plan(v.as_object().unwrap());
        let p = parse(json!({})).unwrap();
        assert_eq!(p.steps, DEFAULT_STEPS);
        assert_eq!(
            (p.hold_ms, p.guards.clone()),
            (DEFAULT_HOLD_MS, Guards::default())
        );
        let p = parse(json!({"steps": [10, 100], "hold_ms": 5, "guards": {"min_requests": 3, "max_p99_ratio": 2}})).unwrap();
        assert_eq!(
            (p.steps, p.hold_ms, p.guards.min_requests),
            (vec![10, 100], 5, 3)
        );
        assert_eq!(p.guards.max_p99_ratio, 2.0);
        let keys = |v: Value| -> Vec<String> {
            parse(v).unwrap_err().into_iter().map(|p| p.key).collect()
        };
        assert_eq!(keys(json!({"steps": []})), ["steps"]);
        assert_eq!(
            keys(json!({"steps": [0, 101, "x"]})),
            ["steps[0]", "steps[1]", "steps[2]"]
        );
        assert_eq!(keys(json!({"steps": [50, 10, 100]})), ["steps"]);
        assert_eq!(keys(json!({"steps": [5, 50]})), ["steps"]);
        assert_eq!(keys(json!({"steps": 5})), ["steps"]);
        assert_eq!(keys(json!({"hold_ms": 0})), ["hold_ms"]);
        assert_eq!(keys(json!({"hold_ms": -1})), ["hold_ms"]);
        assert_eq!(
            keys(
                json!({"guards": {"max_error_rate_increase": 2, "max_p99_ratio": 0.5, "p99_slack_ms": -1, "min_requests": 0, "typo": 1}})
            ),
            [
                "guards.max_error_rate_increase",
                "guards.max_p99_ratio",
                "guards.min_requests",
                "guards.p99_slack_ms",
                "guards.typo"
            ]
        );
    }

    #[test]
    fn step_weights_move_the_stable_share_only() {
        let original = [t("llama", "1.0.0", 80), t("qwen", "2.0.0", 20)];
        let at = |p| weights_at(&original, "llama", "1.0.0", "1.1.0", p).unwrap();
        let share = |ts: &[SplitTarget], v: &str| -> f64 {
            let total: u32 = ts.iter().map(|t| t.weight).sum();
            let w = ts.iter().find(|t| t.version == v).map_or(0, |t| t.weight);
            f64::from(w) * 100.0 / f64::from(total)
        };
        for p in [1u8, 5, 25, 50, 100] {
            let ts = at(p);
            assert_eq!(ts.len(), 3);
            assert!(
                (share(&ts, "1.1.0") - 0.8 * f64::from(p)).abs() < 1e-9,
                "{p}: {ts:?}"
            );
            assert!((share(&ts, "2.0.0") - 20.0).abs() < 1e-9, "{p}: {ts:?}");
        }
        // Reduced to the smallest integers.
        assert_eq!(
            at(25),
            [
                t("llama", "1.0.0", 3),
                t("qwen", "2.0.0", 1),
                t("llama", "1.1.0", 1)
            ]
        );
        // An earlier rollback's weight-0 entry is reused in place.
        let again = [t("llama", "1.1.0", 0), t("llama", "1.0.0", 1)];
        assert_eq!(
            weights_at(&again, "llama", "1.0.0", "1.1.0", 50).unwrap(),
            [t("llama", "1.1.0", 1), t("llama", "1.0.0", 1)]
        );
        assert!(weights_at(&original, "llama", "0.9.0", "1.1.0", 5).is_err());
        let huge = [t("llama", "1.0.0", u32::MAX), t("qwen", "2.0.0", 1)];
        assert!(weights_at(&huge, "llama", "1.0.0", "1.1.0", 1).is_err());
        assert_eq!(
            promoted(&original, "llama", "1.0.0", "1.1.0"),
            [t("llama", "1.1.0", 80), t("qwen", "2.0.0", 20)]
        );
        assert_eq!(
            rolled_back(&original, "llama", "1.1.0"),
            [
                t("llama", "1.0.0", 80),
                t("qwen", "2.0.0", 20),
                t("llama", "1.1.0", 0)
            ]
        );
    }

    /// The version each of `keys` sticky sessions goes to under `targets`.
    fn sessions(targets: &[SplitTarget], keys: usize) -> Vec<String> {
        use crate::route::{router_from_toml, RouteTarget, SelectCtx, WorkerRng};
        let mut text = String::new();
        for v in ["1.0.0", "1.1.0"] {
            text += &format!("[[deployments]]\nmodel = \"llama\"\nversion = \"{v}\"\nendpoints = [\"10.0.0.1:80\"]\n");
        }
        let items: Vec<String> = targets
            .iter()
            .map(|t| {
                format!(
                    "{{ model = \"{}\", version = \"={}\", weight = {} }}",
                    t.model, t.version, t.weight
                )
            })
            .collect();
        text += &format!(
            "[[routes]]\npath = \"/r\"\nsticky = \"subject\"\ntargets = [{}]\n",
            items.join(", ")
        );
        let router = router_from_toml(&text).unwrap();
        let RouteTarget::Split(split) = router.routes()[0].target() else {
            panic!("not a split")
        };
        let mut rng = WorkerRng::new(7);
        (0..keys)
            .map(|i| {
                let key = format!("session-{i}");
                let ctx = SelectCtx {
                    label: None,
                    sticky_key: Some(key.as_bytes()),
                };
                let c = router.choose(split, &ctx, |_| true, &mut rng).unwrap();
                c.version.to_owned()
            })
            .collect()
    }

    #[test]
    fn sessions_only_move_to_the_new_version_as_the_steps_advance() {
        let original = [t("llama", "1.0.0", 1)];
        let mut before = sessions(&original, 5000);
        assert!(before.iter().all(|v| v == "1.0.0"));
        for p in [1u8, 5, 25, 50, 100] {
            let now = sessions(
                &weights_at(&original, "llama", "1.0.0", "1.1.0", p).unwrap(),
                5000,
            );
            let on_new = now.iter().filter(|v| *v == "1.1.0").count() as f64 / 50.0;
            assert!(
                (on_new - f64::from(p)).abs() < 2.5,
                "{p} %: {on_new} % on the new version"
            );
            for (b, n) in before.iter().zip(&now) {
                assert!(
                    !(b == "1.1.0" && n == "1.0.0"),
                    "a session went back at {p} %"
                );
            }
            before = now;
        }
        let promoted = sessions(&promoted(&original, "llama", "1.0.0", "1.1.0"), 5000);
        assert_eq!(promoted, before);
    }

    fn window(requests: u64, errors: u64, ttfb_ms: &[(u64, u64)]) -> Window {
        let mut h = empty_histogram();
        for &(ms, n) in ttfb_ms {
            h.record_n(ms * 1000, n).unwrap();
        }
        Window {
            requests,
            errors,
            ttfb_us: h,
        }
    }

    #[test]
    fn guards_breach_early_on_failures_and_pass_only_with_evidence() {
        let g = Guards {
            min_requests: 20,
            ..Guards::default()
        };
        let stable = Reference {
            error_rate: 0.0,
            p99_us: 10_000,
        };
        let judge_ok = |w: &Window| judge(w, Some(&stable), &g);
        // Few requests, no failures: watching. One failure in 3: within what 20 could hold.
        assert!(matches!(
            judge_ok(&window(3, 0, &[(5, 3)])),
            Verdict::Watching { .. }
        ));
        assert!(matches!(
            judge_ok(&window(3, 1, &[(5, 3)])),
            Verdict::Watching { .. }
        ));
        // A second failure already exceeds 5 % of 20.
        match judge_ok(&window(3, 2, &[(5, 3)])) {
            Verdict::Breach { guard, reason } => {
                assert_eq!(guard, "error_rate");
                assert!(reason.contains("2 of 3"), "{reason}");
            }
            v => panic!("{v:?}"),
        }
        // Enough requests, 5 % errors exactly: passes; more: breach.
        assert_eq!(judge_ok(&window(100, 5, &[(5, 100)])), Verdict::Pass);
        assert!(matches!(
            judge_ok(&window(100, 6, &[(5, 100)])),
            Verdict::Breach { .. }
        ));
        // A stable that fails too raises the bar.
        let flaky = Reference {
            error_rate: 0.10,
            ..stable
        };
        assert_eq!(
            judge(&window(100, 14, &[(5, 100)]), Some(&flaky), &g),
            Verdict::Pass
        );
        // Latency: limit 10 × 1.5 + 50 = 65 ms. One slow of 100 is 1 %: passes; two breach.
        assert_eq!(
            judge_ok(&window(100, 0, &[(5, 99), (500, 1)])),
            Verdict::Pass
        );
        match judge_ok(&window(100, 0, &[(5, 98), (500, 2)])) {
            Verdict::Breach { guard, .. } => assert_eq!(guard, "latency"),
            v => panic!("{v:?}"),
        }
        // Early: one slow response among the first few already exceeds 1 % of 20.
        assert!(matches!(
            judge_ok(&window(2, 0, &[(500, 1), (5, 1)])),
            Verdict::Breach {
                guard: "latency",
                ..
            }
        ));
        // Without a stable reference: errors still judged (against 0 %), latency waits.
        assert!(matches!(
            judge(&window(100, 0, &[(500, 100)]), None, &g),
            Verdict::Watching { .. }
        ));
        assert!(matches!(
            judge(&window(100, 9, &[(5, 100)]), None, &g),
            Verdict::Breach { .. }
        ));
    }

    #[test]
    fn windows_subtract_the_base_and_count_5xx_and_closed_as_errors() {
        let counts = |statuses: Vec<(u16, u64)>, ttfb: u64| {
            let mut c = DeploymentCounts::new("m@1.0.0");
            c.statuses = statuses;
            for _ in 0..ttfb {
                c.ttfb_us.record(1000).unwrap();
            }
            c
        };
        let base = counts(vec![(200, 10), (503, 1)], 11);
        let now = counts(vec![(200, 15), (503, 3), (0, 1), (504, 1), (429, 2)], 20);
        let w = Window::between(Some(&now), Some(&base));
        assert_eq!((w.requests, w.errors, w.ttfb_us.len()), (11, 4, 9));
        let w = Window::between(Some(&now), None);
        assert_eq!((w.requests, w.errors), (22, 5));
        let w = Window::between(None, Some(&base));
        assert_eq!((w.requests, w.errors, w.ttfb_us.len()), (0, 0, 0));
        assert_eq!(Reference::of(&Window::between(Some(&now), None), 30), None);
        let r = Reference::of(&Window::between(Some(&now), None), 20).unwrap();
        assert!((r.error_rate - 5.0 / 22.0).abs() < 1e-9);
    }
}
