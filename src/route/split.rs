//! The model-version split: which deployment of a route's targets serves one request.
//!
//! # Selection order
//!
//! 1. **Label.** A request whose label (from the route's `label_header`) names a label that
//!    some targets carry goes only to those targets; if none of them is healthy, or no target
//!    carries the label, it goes to the default group. The default group is the targets whose
//!    deployments have no labels (or every target, if all are labelled).
//! 2. **Sticky.** With a sticky key, weighted rendezvous hashing picks the target with the
//!    lowest `-ln(u(key, target)) / weight`: a key keeps its target while the targets and
//!    their weights stay the same, and changing one weight moves only the keys the new shares
//!    require. Targets are identified by `model@version`, not by position.
//! 3. **Weighted random** otherwise, from the worker's [`WorkerRng`].
//!
//! Unhealthy and zero-weight targets are skipped; the others keep their relative weights.
//! When no primary target is left, `fallbacks` are tried the same way (labels ignored);
//! nothing left → `None`, which the engine answers with 503.
//!
//! # Performance
//!
//! No allocation: eligibility is a `u64` bitmask over at most [`MAX_TARGETS`] targets.

use super::catalog::{Catalog, Deployment, DeploymentId};
use super::hash::{exp_draw, hash_bytes, mix64};
use super::raw::RawTarget;
use super::rng::WorkerRng;

/// Most resolved targets (or fallbacks) one route may have.
pub const MAX_TARGETS: usize = 64;

/// Weights are scaled by this so that `all_matching_versions` can divide a target's weight
/// exactly among up to 16 versions (720720 = lcm(1..=16)).
pub(crate) const WEIGHT_SCALE: u64 = 720_720;

/// A target's relative weight, scaled by `WEIGHT_SCALE` (720720, so every split of up to 16 targets divides exactly); `0` drains the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight(pub(crate) u64);

impl Weight {
    pub fn get(self) -> u64 {
        self.0
    }
}

/// One resolved target: a deployment and its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub deployment: DeploymentId,
    pub weight: Weight,
    /// Copied from the deployment so the hot loop does not chase it.
    pub(crate) seed: u64,
    /// `1 / weight` (0 for a drained target), set by [`Split::new`]: the sticky score
    /// multiplies instead of dividing.
    pub(crate) inv_weight: f64,
}

impl Target {
    /// A target whose `inv_weight` is filled in by [`Split::new`] once weights are final.
    pub(crate) fn new(deployment: DeploymentId, weight: Weight, seed: u64) -> Target {
        Target {
            deployment,
            weight,
            seed,
            inv_weight: 0.0,
        }
    }
}

fn with_inverse_weights(mut targets: Vec<Target>) -> Box<[Target]> {
    for t in &mut targets {
        t.inv_weight = if t.weight.0 == 0 {
            0.0
        } else {
            1.0 / t.weight.0 as f64
        };
    }
    targets.into()
}

/// A route's resolved split.
#[derive(Debug, Clone)]
pub struct Split {
    pub(crate) targets: Box<[Target]>,
    /// Targets of the default group.
    pub(crate) default_mask: u64,
    /// Each label carried by some target, and the targets carrying it.
    pub(crate) labels: Box<[(Box<str>, u64)]>,
    pub(crate) fallbacks: Box<[Target]>,
    /// The entries as the operator wrote them (the admin API shows these; the resolved
    /// targets carry shares scaled by [`WEIGHT_SCALE`] and merged per deployment).
    configured: Box<Configured>,
}

/// A split's `targets` and `fallbacks` as configured.
#[derive(Debug, Clone, Default)]
pub struct Configured {
    pub targets: Vec<RawTarget>,
    pub fallbacks: Vec<RawTarget>,
}

impl Split {
    /// Primary targets, after constraint resolution.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
    pub fn fallbacks(&self) -> &[Target] {
        &self.fallbacks
    }
    /// The `targets` and `fallbacks` entries as written, with the weights the operator chose.
    pub fn configured(&self) -> &Configured {
        &self.configured
    }

    /// Builds the label masks from the deployments' labels.
    pub(crate) fn new(
        targets: Vec<Target>,
        fallbacks: Vec<Target>,
        configured: Configured,
        catalog: &Catalog,
    ) -> Split {
        let mut labels: Vec<(Box<str>, u64)> = Vec::new();
        let mut default_mask = 0u64;
        for (i, t) in targets.iter().enumerate() {
            let d = catalog.get(t.deployment);
            if d.labels().is_empty() {
                default_mask |= 1 << i;
            }
            for l in d.labels() {
                match labels.iter_mut().find(|(n, _)| n == l) {
                    Some((_, mask)) => *mask |= 1 << i,
                    None => labels.push((l.clone(), 1 << i)),
                }
            }
        }
        if default_mask == 0 {
            default_mask = all_mask(targets.len());
        }
        Split {
            targets: with_inverse_weights(targets),
            default_mask,
            labels: labels.into(),
            fallbacks: with_inverse_weights(fallbacks),
            configured: Box::new(configured),
        }
    }
}

fn all_mask(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// What selection needs from the request; both values are raw header bytes (or the JWT
/// subject for `sticky = "subject"`), looked up by the engine per the route's
/// [`super::Route::label_header`] and [`super::Route::sticky`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectCtx<'a> {
    pub label: Option<&'a [u8]>,
    pub sticky_key: Option<&'a [u8]>,
}

/// The deployment chosen for one request.
#[derive(Debug, Clone, Copy)]
pub struct Chosen<'a> {
    pub deployment: DeploymentId,
    /// For `X-Shardgate-Model`.
    pub model: &'a str,
    /// For `X-Shardgate-Version`.
    pub version: &'a str,
    /// The name to put in the forwarded body's `model`.
    pub served_name: &'a str,
    pub endpoints: &'a [Box<str>],
    /// True when every primary target was down and a fallback was used.
    pub fallback: bool,
}

impl<'a> Chosen<'a> {
    fn new(d: &'a Deployment, fallback: bool) -> Self {
        Chosen {
            deployment: d.id(),
            model: d.model(),
            version: d.version_str(),
            served_name: d.served_name(),
            endpoints: d.endpoints(),
            fallback,
        }
    }
}

/// See the module docs for the order of the rules.
pub(crate) fn choose<'a>(
    split: &Split,
    catalog: &'a Catalog,
    ctx: &SelectCtx<'_>,
    healthy: impl Fn(DeploymentId) -> bool,
    rng: &mut WorkerRng,
) -> Option<Chosen<'a>> {
    let key = ctx.sticky_key.map(hash_bytes);
    let labelled = ctx
        .label
        .and_then(|l| split.labels.iter().find(|(name, _)| name.as_bytes() == l))
        .map(|&(_, mask)| mask);
    let mut pick_in = |targets: &[Target], mask: u64| pick(targets, mask, key, &healthy, rng);
    let primary = labelled.and_then(|mask| pick_in(&split.targets, mask));
    if let Some(t) = primary.or_else(|| pick_in(&split.targets, split.default_mask)) {
        return Some(Chosen::new(catalog.get(t.deployment), false));
    }
    let t = pick_in(&split.fallbacks, all_mask(split.fallbacks.len()))?;
    Some(Chosen::new(catalog.get(t.deployment), true))
}

/// Picks among the targets in `mask` that are healthy and have a weight: by rendezvous
/// hashing with a key, by weighted random without.
#[inline]
fn pick(
    targets: &[Target],
    mask: u64,
    key: Option<u64>,
    healthy: &impl Fn(DeploymentId) -> bool,
    rng: &mut WorkerRng,
) -> Option<Target> {
    let eligible = |i: usize, t: &Target| mask & (1 << i) != 0 && t.weight.0 > 0;
    if let Some(key) = key {
        // Lowest `-ln(u) / weight` wins; one pass, no second look at health.
        let mut best: Option<(f64, &Target)> = None;
        for (i, t) in targets.iter().enumerate() {
            if eligible(i, t) && healthy(t.deployment) {
                let score = exp_draw(mix64(key ^ t.seed)) * t.inv_weight;
                if best.is_none_or(|(s, _)| score < s) {
                    best = Some((score, t));
                }
            }
        }
        return best.map(|(_, t)| *t);
    }
    let mut live = 0u64;
    let mut total = 0u64;
    for (i, t) in targets.iter().enumerate() {
        if eligible(i, t) && healthy(t.deployment) {
            live |= 1 << i;
            total += t.weight.0;
        }
    }
    if live == 0 {
        return None;
    }
    let mut r = rng.below(total);
    for (i, t) in targets.iter().enumerate() {
        if live & (1 << i) != 0 {
            if r < t.weight.0 {
                return Some(*t);
            }
            r -= t.weight.0;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{router_from_toml, RouteTarget, Router};

    const PICKS: usize = 10_000;

    /// Deployments `m@1.0.0` … and one route `/r` whose targets are `targets` (TOML array
    /// body) plus `extra` route keys.
    fn router(deployments: &[(&str, &str, &[&str])], targets: &str, extra: &str) -> Router {
        let mut text = String::new();
        for (model, version, labels) in deployments {
            text += &format!(
                "[[deployments]]\nmodel = \"{model}\"\nversion = \"{version}\"\nendpoints = [\"10.0.0.1:80\"]\nlabels = {labels:?}\n"
            );
        }
        text += &format!("[[routes]]\npath = \"/r\"\ntargets = [{targets}]\n{extra}\n");
        router_from_toml(&text).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn split(r: &Router) -> &Split {
        match r.route(crate::route::RouteId(0)).target() {
            RouteTarget::Split(s) => s,
            RouteTarget::Upstream(_) => panic!("not a split"),
        }
    }

    /// Picks `PICKS` times and returns the share (in percent) per `model@version`.
    fn shares(
        r: &Router,
        ctx: impl Fn(usize) -> (Option<String>, Option<String>),
        healthy: impl Fn(&str) -> bool,
    ) -> std::collections::BTreeMap<String, f64> {
        let mut rng = WorkerRng::new(42);
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..PICKS {
            let (label, key) = ctx(i);
            let ctx = SelectCtx {
                label: label.as_deref().map(str::as_bytes),
                sticky_key: key.as_deref().map(str::as_bytes),
            };
            let healthy = |id: DeploymentId| {
                let d = r.deployment(id);
                healthy(&format!("{}@{}", d.model(), d.version_str()))
            };
            let name = match r.choose(split(r), &ctx, healthy, &mut rng) {
                Some(c) => format!(
                    "{}@{}{}",
                    c.model,
                    c.version,
                    if c.fallback { " fb" } else { "" }
                ),
                None => "none".to_owned(),
            };
            *counts.entry(name).or_insert(0.0) += 100.0 / PICKS as f64;
        }
        counts
    }

    fn assert_shares(got: &std::collections::BTreeMap<String, f64>, want: &[(&str, f64)]) {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (name, pct) in want {
            let g = got.get(*name).copied().unwrap_or(0.0);
            assert!(
                (g - pct).abs() <= 2.0,
                "{name}: {g:.2}% vs {pct}% in {got:?}"
            );
        }
    }

    const ALL: fn(&str) -> bool = |_| true;
    const NO_CTX: fn(usize) -> (Option<String>, Option<String>) = |_| (None, None);

    #[test]
    fn weighted_random_follows_weights_and_skips_unhealthy() {
        let deps: &[(&str, &str, &[&str])] = &[
            ("a", "1.0.0", &[]),
            ("b", "1.0.0", &[]),
            ("c", "1.0.0", &[]),
        ];
        let r = router(
            deps,
            r#"{ model = "a", weight = 70 }, { model = "b", weight = 20 }, { model = "c", weight = 10 }"#,
            "",
        );
        assert_shares(
            &shares(&r, NO_CTX, ALL),
            &[("a@1.0.0", 70.0), ("b@1.0.0", 20.0), ("c@1.0.0", 10.0)],
        );
        // Without `a`, b and c keep their 2:1 ratio.
        let without_a = shares(&r, NO_CTX, |n| n != "a@1.0.0");
        assert_shares(&without_a, &[("b@1.0.0", 66.67), ("c@1.0.0", 33.33)]);
        let none = shares(&r, NO_CTX, |_| false);
        assert_shares(&none, &[("none", 100.0)]);
    }

    #[test]
    fn all_matching_versions_share_the_weight() {
        let deps: &[(&str, &str, &[&str])] = &[
            ("a", "1.0.0", &[]),
            ("a", "1.1.0", &[]),
            ("a", "1.2.0", &[]),
            ("b", "1.0.0", &[]),
        ];
        let targets =
            r#"{ model = "a", version = "^1", weight = 60 }, { model = "b", weight = 40 }"#;
        let r = router(deps, targets, "all_matching_versions = true");
        assert_shares(
            &shares(&r, NO_CTX, ALL),
            &[
                ("a@1.0.0", 20.0),
                ("a@1.1.0", 20.0),
                ("a@1.2.0", 20.0),
                ("b@1.0.0", 40.0),
            ],
        );
        let r = router(deps, targets, "");
        assert_shares(
            &shares(&r, NO_CTX, ALL),
            &[("a@1.2.0", 60.0), ("b@1.0.0", 40.0)],
        );
    }

    #[test]
    fn labelled_requests_go_to_labelled_targets_then_fall_back_to_default() {
        let deps: &[(&str, &str, &[&str])] = &[
            ("a", "1.0.0", &[]),
            ("a", "2.0.0", &["canary"]),
            ("b", "1.0.0", &[]),
        ];
        let targets = r#"{ model = "a", version = "^1", weight = 50 }, { model = "a", version = "^2", weight = 10 }, { model = "b", weight = 50 }"#;
        let r = router(deps, targets, "label_header = \"x-canary\"");
        let canary = |_| (Some("canary".to_owned()), None);
        assert_shares(&shares(&r, canary, ALL), &[("a@2.0.0", 100.0)]);
        // Unlabelled and unknown-label requests never reach the canary.
        let default = [("a@1.0.0", 50.0), ("b@1.0.0", 50.0)];
        assert_shares(&shares(&r, NO_CTX, ALL), &default);
        assert_shares(
            &shares(&r, |_| (Some("blue".to_owned()), None), ALL),
            &default,
        );
        // Canary down: its requests go to the default group.
        assert_shares(&shares(&r, canary, |n| n != "a@2.0.0"), &default);
    }

    #[test]
    fn fallbacks_serve_only_when_every_primary_is_down() {
        let deps: &[(&str, &str, &[&str])] = &[
            ("a", "1.0.0", &[]),
            ("b", "1.0.0", &[]),
            ("c", "1.0.0", &[]),
        ];
        let r = router(
            deps,
            r#"{ model = "a", weight = 1 }, { model = "b", weight = 1 }"#,
            "fallbacks = [{ model = \"c\", weight = 1 }]",
        );
        assert_shares(
            &shares(&r, NO_CTX, |n| n != "a@1.0.0"),
            &[("b@1.0.0", 100.0)],
        );
        let primaries_down = |n: &str| n == "c@1.0.0";
        assert_shares(
            &shares(&r, NO_CTX, primaries_down),
            &[("c@1.0.0 fb", 100.0)],
        );
        assert_shares(&shares(&r, NO_CTX, |_| false), &[("none", 100.0)]);
    }

    #[test]
    fn zero_weight_drains_a_target() {
        let deps: &[(&str, &str, &[&str])] = &[("a", "1.0.0", &[]), ("b", "1.0.0", &[])];
        let r = router(
            deps,
            r#"{ model = "a", weight = 0 }, { model = "b", weight = 3 }"#,
            "",
        );
        assert_shares(&shares(&r, NO_CTX, ALL), &[("b@1.0.0", 100.0)]);
        let keyed = |i: usize| (None, Some(format!("user-{i}")));
        assert_shares(&shares(&r, keyed, ALL), &[("b@1.0.0", 100.0)]);
    }

    /// Which target each of `PICKS` sticky keys goes to.
    fn assignment(r: &Router, healthy: impl Fn(&str) -> bool + Copy) -> Vec<String> {
        let mut rng = WorkerRng::new(1);
        (0..PICKS)
            .map(|i| {
                let key = format!("session-{i}");
                let ctx = SelectCtx {
                    label: None,
                    sticky_key: Some(key.as_bytes()),
                };
                let ok = |id: DeploymentId| {
                    let d = r.deployment(id);
                    healthy(&format!("{}@{}", d.model(), d.version_str()))
                };
                let c = r.choose(split(r), &ctx, ok, &mut rng).unwrap();
                format!("{}@{}", c.model, c.version)
            })
            .collect()
    }

    fn moved_pct(a: &[String], b: &[String]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 * 100.0 / a.len() as f64
    }

    #[test]
    fn sticky_keys_follow_weights_and_move_minimally() {
        let deps: &[(&str, &str, &[&str])] = &[
            ("a", "1.0.0", &[]),
            ("b", "1.0.0", &[]),
            ("c", "1.0.0", &[]),
            ("d", "1.0.0", &[]),
        ];
        let with = |wa: u32| {
            router(
                deps,
                &format!(
                    r#"{{ model = "a", weight = {wa} }}, {{ model = "b", weight = 30 }}, {{ model = "c", weight = 20 }}, {{ model = "d", weight = 10 }}"#
                ),
                "sticky = \"subject\"",
            )
        };
        let base = with(40);
        let before = assignment(&base, |_| true);
        // Deterministic: the same keys, a fresh router and another RNG state, same targets.
        assert_eq!(before, assignment(&with(40), |_| true));
        let keyed = |i: usize| (None, Some(format!("session-{i}")));
        assert_shares(
            &shares(&base, keyed, ALL),
            &[
                ("a@1.0.0", 40.0),
                ("b@1.0.0", 30.0),
                ("c@1.0.0", 20.0),
                ("d@1.0.0", 10.0),
            ],
        );
        // Changing a's weight: the minimum movement is the total variation distance
        // between the old and new shares.
        for new_a in [10u32, 80] {
            let old: [f64; 4] = [40.0, 30.0, 20.0, 10.0].map(|w| w / 100.0);
            let total = f64::from(new_a) + 60.0;
            let new: [f64; 4] = [f64::from(new_a), 30.0, 20.0, 10.0].map(|w| w / total);
            let min_pct: f64 = old
                .iter()
                .zip(&new)
                .map(|(o, n)| (o - n).max(0.0))
                .sum::<f64>()
                * 100.0;
            let moved = moved_pct(&before, &assignment(&with(new_a), |_| true));
            assert!(
                moved <= min_pct + 1.0,
                "a={new_a}: moved {moved:.2}% > min {min_pct:.2}% + 1"
            );
            assert!(
                moved >= min_pct - 2.0,
                "a={new_a}: moved only {moved:.2}% of {min_pct:.2}%"
            );
        }
        // An unhealthy target's keys spread over the others; everyone else stays put.
        let after = assignment(&base, |n| n != "b@1.0.0");
        for (x, y) in before.iter().zip(&after) {
            assert!(x == "b@1.0.0" && y != "b@1.0.0" || x == y, "{x} -> {y}");
        }
    }
}
