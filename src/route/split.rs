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
use super::hash::{hash_bytes, mix64, unit_open, WorkerRng};

/// Most resolved targets (or fallbacks) one route may have.
pub const MAX_TARGETS: usize = 64;

/// Weights are scaled by this so that `all_matching_versions` can divide a target's weight
/// exactly among up to 16 versions (720720 = lcm(1..=16)).
pub(crate) const WEIGHT_SCALE: u64 = 720_720;

/// A target's relative weight, scaled by [`WEIGHT_SCALE`]; `0` drains the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight(pub(crate) u64);

impl Weight {
    pub fn get(self) -> u64 {
        self.0
    }
}

/// One resolved target: a deployment and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub deployment: DeploymentId,
    pub weight: Weight,
    /// Copied from the deployment so the hot loop does not chase it.
    pub(crate) seed: u64,
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
}

impl Split {
    /// Primary targets, after constraint resolution.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
    pub fn fallbacks(&self) -> &[Target] {
        &self.fallbacks
    }

    /// Builds the label masks from the deployments' labels.
    pub(crate) fn new(targets: Vec<Target>, fallbacks: Vec<Target>, catalog: &Catalog) -> Split {
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
        Split { targets: targets.into(), default_mask, labels: labels.into(), fallbacks: fallbacks.into() }
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
    let mut pick = |targets: &[Target], mask: u64| pick(targets, mask, key, &healthy, rng);
    let primary = labelled.and_then(|mask| pick(&split.targets, mask));
    if let Some(t) = primary.or_else(|| pick(&split.targets, split.default_mask)) {
        return Some(Chosen::new(catalog.get(t.deployment), false));
    }
    let t = pick(&split.fallbacks, all_mask(split.fallbacks.len()))?;
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
    let mut live = 0u64;
    let mut total = 0u64;
    for (i, t) in targets.iter().enumerate() {
        if mask & (1 << i) != 0 && t.weight.0 > 0 && healthy(t.deployment) {
            live |= 1 << i;
            total += t.weight.0;
        }
    }
    if live == 0 {
        return None;
    }
    let live_targets = targets.iter().enumerate().filter(|(i, _)| live & (1 << i) != 0);
    match key {
        Some(key) => {
            let score = |t: &Target| -unit_open(mix64(key ^ t.seed)).ln() / t.weight.0 as f64;
            live_targets.map(|(_, t)| (score(t), t)).min_by(|a, b| a.0.total_cmp(&b.0)).map(|(_, t)| *t)
        }
        None => {
            let mut r = rng.below(total);
            for (_, t) in live_targets {
                if r < t.weight.0 {
                    return Some(*t);
                }
                r -= t.weight.0;
            }
            None
        }
    }
}
