//! After the response: its usage and cost go into the worker's spend shard (when `[spend]`
//! is configured) and into the request's facts for the access log.
//!
//! # Contract
//!
//! [`record`] never fails and never answers anything. A response that was served (whole, or
//! cut off after it started) counts as a request of its caller × model with its usage (an
//! estimate for a stream cut short) and its cost (`None` without a price); a request refused
//! by the upstream stage before anything was relayed is not counted as spend.
//!
//! # Performance
//!
//! Copies four short strings into reused buffers and adds to one series of the spend shard
//! (see [`crate::spend::shard`]): no allocation once the caller × model was seen.

use super::quota_check::Caller;
use crate::config::Snapshot;
use crate::quota::usage::Usage;
use crate::slot::Facts;
use crate::worker::Worker;

/// What one finished request used.
pub struct Served<'a> {
    pub caller: &'a Caller<'a>,
    pub model: &'a str,
    pub usage: Option<Usage>,
    /// Pico-units, `None` without a price.
    pub cost: Option<u64>,
    /// A response (or its start) reached the client.
    pub served: bool,
}

/// Records `s` (see the module docs).
#[inline]
pub fn record(worker: &Worker, snap: &Snapshot, s: &Served<'_>, facts: &mut Facts) {
    let subject = s.caller.subject.unwrap_or("");
    let tenant = s.caller.tenant.unwrap_or("");
    if s.served && snap.spend.is_some() {
        worker
            .spend
            .borrow_mut()
            .record(subject, tenant, s.model, s.usage.as_ref(), s.cost);
    }
    facts.subject.push_str(subject);
    facts.api_key.push_str(s.caller.api_key.unwrap_or(""));
    facts.tenant.push_str(tenant);
    facts.model.push_str(s.model);
    facts.tokens = s.usage.map(|u| u64::from(u.total()));
    facts.usage = s.usage.filter(|_| s.served);
    facts.cost_pico = s.cost.filter(|_| s.served);
}
