//! The split stage: which deployment of a split route serves the request.
//!
//! # Contract
//!
//! [`choose`] picks the deployment (a request carrying a label — the route's `label_header`,
//! or the token's label claim — goes only to targets with it; then the sticky key, then the
//! weights; see `route::split`) and rewrites the body's `model` to the deployment's served
//! name. A deployment whose every endpoint has an open breaker or fails health checks is
//! skipped, so the split fails over (and reaches `fallbacks`) instead of sending traffic that
//! would only get a 503. `Err`: the body names no model (400), or nothing healthy is left
//! (503, with `Retry-After: 1` added by the caller).

use std::time::Instant;

use crate::auth::Identity;
use crate::error::{Fault, GatewayError};
use crate::model::{BodyError, JsonBody};
use crate::route::{Chosen, DeploymentId, Route, SelectCtx, Split, StickyKey};
use crate::worker::Worker;

use super::Request;

/// Every deployment the split could use is down.
pub const NO_DEPLOYMENT: GatewayError = GatewayError {
    status: 503,
    kind: "upstream_unavailable",
    message: "no healthy deployment can serve this model",
    fault: Fault::Upstream,
    retry: false,
    close: false,
};

/// Chooses the deployment and rewrites the body's `model` (see the module docs).
pub(super) fn choose<'s>(
    worker: &Worker,
    rq: &Request<'s>,
    route: &'s Route,
    split: &'s Split,
    identity: Option<&Identity<'_>>,
    json: &mut JsonBody<'s>,
) -> Result<Chosen<'s>, GatewayError> {
    if json.model().is_none() {
        return Err(BodyError::ModelMissing.into());
    }
    let label = route
        .label_header()
        .and_then(|h| rq.head.header(rq.head_bytes, h))
        .or_else(|| identity.and_then(|i| i.label.as_deref()).map(str::as_bytes));
    let sticky_key = match route.sticky() {
        Some(StickyKey::Subject) => identity.map(|i| i.subject.as_bytes()),
        Some(StickyKey::Header(h)) => rq.head.header(rq.head_bytes, h),
        None => None,
    };
    let ctx = SelectCtx { label, sticky_key };
    let snap = rq.snap;
    let now = Instant::now();
    let resilience = worker.resilience.borrow();
    let healthy = |d: DeploymentId| {
        let up = snap.deployment_upstreams[d.index()];
        resilience.upstream_available(&snap.resilience, up, now)
    };
    let chosen = snap
        .router
        .choose(split, &ctx, healthy, &mut worker.rng.borrow_mut())
        .ok_or(NO_DEPLOYMENT)?;
    json.set_model(chosen.served_name);
    Ok(chosen)
}
