//! The quota stage: pick the rule, wait (boundedly) for a first lease, render the
//! `X-RateLimit-*` headers or the 429; after the response, charge the tokens it used.
//!
//! # Contract
//!
//! [`admit`] returns the ticket to charge (`None`: no rule applies) with the
//! `X-RateLimit-*` lines appended to the response headers, or the error to answer: 429
//! `rate_limit_exceeded` with `Retry-After` (counted by rule), or 503 when the coordinator
//! does not grant a first lease within [`LEASE_WAIT`]. [`charge`] charges what a response
//! used to the ticket and counts tokens by subject × model.

use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::config::Snapshot;
use crate::error::{Fault, GatewayError};
use crate::quota::usage::Usage;
use crate::quota::{
    Admitted, Decision, KeyKind, QuotaError, QuotaKey, QuotaRule, QuotaSettings, Ticket,
};
use crate::worker::Worker;

/// Longest a request waits for its core's first lease of a key before the gateway gives up
/// with 503 (the coordinator is a local thread; this only trips if it is wedged).
pub const LEASE_WAIT: Duration = Duration::from_millis(500);

const COORDINATOR_STUCK: GatewayError = GatewayError {
    status: 503,
    kind: "overloaded_error",
    message: "quota coordinator did not answer in time",
    fault: Fault::Internal,
    retry: false,
    close: false,
};

/// Who is asking, for quota keys.
pub struct Caller<'a> {
    pub subject: Option<&'a str>,
    pub tenant: Option<&'a str>,
    /// The id of the API key presented, if any.
    pub api_key: Option<&'a str>,
    pub ip: std::net::IpAddr,
}

/// The outcome of the quota stage.
pub enum Limited {
    /// No rule applies.
    Unlimited,
    /// Admitted; headers were appended to `headers`.
    Admitted(Ticket),
    /// Over the limit: answer 429 with these header lines.
    Rejected(QuotaError),
    /// The coordinator did not answer.
    Failed(GatewayError),
}

/// Checks the quota for one request. `headers` receives the `X-RateLimit-*` lines.
pub async fn check(
    worker: &Rc<Worker>,
    settings: &QuotaSettings,
    caller: &Caller<'_>,
    model: &str,
    max_tokens: Option<u64>,
    headers: &mut Vec<u8>,
) -> Limited {
    let Some(rule) = settings.select(model) else {
        return Limited::Unlimited;
    };
    // Open routes (no verified caller) are limited per client address, as 16 raw bytes.
    let ip = ip_bytes(caller.ip);
    // A rule keyed by something the caller lacks (no tenant, no API key) counts the caller
    // by address.
    let who: &[u8] = match rule.key {
        KeyKind::Subject => caller.subject.map_or(&ip[..], str::as_bytes),
        KeyKind::Tenant => caller.tenant.map_or(&ip[..], str::as_bytes),
        KeyKind::ApiKey => caller.api_key.map_or(&ip[..], str::as_bytes),
        KeyKind::ClientIp => &ip,
    };
    let key = rule.key_for(who);
    let reserve = rule.reservation(max_tokens.map(|t| t.min(u64::from(u32::MAX)) as u32));
    match decide(worker, key, rule, reserve).await {
        Decided::Admitted(a) => {
            crate::http::write::field_decimal(headers, b"x-ratelimit-limit", u64::from(a.limit));
            crate::http::write::field_decimal(
                headers,
                b"x-ratelimit-remaining",
                u64::from(a.remaining),
            );
            crate::http::write::field_decimal(headers, b"x-ratelimit-reset", u64::from(a.reset_s));
            Limited::Admitted(a.ticket)
        }
        Decided::Rejected(e) => {
            let _ = write!(
                headers,
                "retry-after: {}\r\nx-ratelimit-limit: {}\r\nx-ratelimit-remaining: 0\r\nx-ratelimit-reset: {}\r\n",
                e.retry_after_s, e.limit, e.reset_s
            );
            Limited::Rejected(e)
        }
        Decided::Failed(e) => Limited::Failed(e),
    }
}

/// A client address as quota keys name it: 16 bytes (IPv4 mapped into IPv6).
pub fn ip_bytes(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    }
}

/// What deciding one key came to.
pub enum Decided {
    Admitted(Admitted),
    Rejected(QuotaError),
    /// The coordinator did not answer within [`LEASE_WAIT`].
    Failed(GatewayError),
}

/// Decides one request for `key` under `rule` on this core's shard, taking `reserve` tokens
/// up front; waits (at most [`LEASE_WAIT`]) when the core must ask for a lease first. The
/// quota stage and the budget stage both decide through it.
pub async fn decide(worker: &Rc<Worker>, key: QuotaKey, rule: &QuotaRule, reserve: u64) -> Decided {
    let deadline = Instant::now() + LEASE_WAIT;
    // A recall from the coordinator (another core's response took this key over its token
    // limit) is applied before deciding, not at the next inbox tick: one `try_recv` on an
    // empty channel (~9 ns, `cargo bench --bench quota`). Request-only rules are never
    // recalled.
    if rule.limits.tokens.is_some() {
        worker.take_quota_answers();
    }
    loop {
        let now = worker.now_ms();
        let decision = worker.quota.borrow_mut().check(key, rule, reserve, now);
        match decision {
            Decision::Admit(a) => {
                // A prefetch this admission asked for goes out on the loop's next round.
                worker.nudge_if_quota_outgoing();
                return Decided::Admitted(a);
            }
            Decision::Reject(e) => return Decided::Rejected(e),
            Decision::NeedLease => {
                // Only the first request of a key on this core (or one near the limit) gets
                // here: ask now instead of at the next inbox tick, then wait until the
                // worker's inbox loop has applied an answer (it wakes every waiter).
                worker.flush_quota();
                if Instant::now() >= deadline {
                    return Decided::Failed(COORDINATOR_STUCK);
                }
                worker.lease.wait(deadline).await;
            }
        }
    }
}

/// Runs the quota stage for a caller (see the module docs).
pub async fn admit(
    worker: &Rc<Worker>,
    snap: &Snapshot,
    ip: std::net::IpAddr,
    identity: Option<&Identity<'_>>,
    model: &str,
    max_tokens: Option<u64>,
    headers: &mut Vec<u8>,
) -> Result<Option<Ticket>, GatewayError> {
    let Some(q) = &snap.quota else {
        return Ok(None);
    };
    let caller = Caller {
        subject: identity.map(|i| &*i.subject),
        tenant: identity.and_then(|i| i.tenant.as_deref()),
        api_key: identity.and_then(|i| i.api_key).map(|k| k.id()),
        ip,
    };
    match check(worker, q, &caller, model, max_tokens, headers).await {
        Limited::Unlimited => Ok(None),
        Limited::Admitted(t) => Ok(Some(t)),
        Limited::Rejected(e) => {
            let rule = q
                .rules
                .get(usize::from(e.rule.0))
                .map_or("-", |r| r.name.as_str());
            worker.metrics.borrow_mut().counters.add(
                &crate::metrics::counters::QUOTA_REJECTIONS,
                &[rule],
                1,
            );
            Err(rejection(&e))
        }
        Limited::Failed(e) => Err(e),
    }
}

/// Charges what a response used (`None`: unknown, nothing) to the caller's ticket and counts
/// it by subject × model in the metrics.
pub fn charge(
    worker: &Worker,
    ticket: Option<Ticket>,
    identity: Option<&Identity<'_>>,
    model: &str,
    usage: Option<&Usage>,
) {
    let used = usage.map_or(0, |u| u64::from(u.total()));
    if let Some(ticket) = ticket {
        let now = worker.now_ms();
        worker.quota.borrow_mut().charge_tokens(ticket, used, now);
        // An overrun goes to the coordinator now, not at the next inbox tick: it may take the
        // key over its limit, and other cores' leases are recalled only once it is counted.
        worker.flush_quota();
    }
    if used > 0 {
        let subject = identity.map_or("anonymous", |i| &*i.subject);
        let model = if model.is_empty() { "-" } else { model };
        worker.metrics.borrow_mut().counters.add(
            &crate::metrics::counters::TOKENS,
            &[subject, model],
            used,
        );
    }
}

/// The 429 for a rejection.
pub fn rejection(e: &QuotaError) -> GatewayError {
    GatewayError {
        status: 429,
        kind: "rate_limit_exceeded",
        message: match e.reason {
            crate::quota::LimitKind::Requests => "request rate limit exceeded",
            crate::quota::LimitKind::Tokens => "token rate limit exceeded",
        },
        fault: Fault::Downstream,
        retry: false,
        close: false,
    }
}
