//! Usage quotas: per-core lease shards and the coordinator that grants leases.
//!
//! # Contract
//!
//! A request that matched a quota [`QuotaRule`] is checked with
//! [`QuotaShard::check`] on its worker, which answers without blocking:
//!
//! - [`Decision::Admit`]: go on; the [`Admitted`] carries the `X-RateLimit-*` values and a
//!   [`Ticket`] to hand to [`QuotaShard::charge_tokens`] when the response finishes.
//! - [`Decision::Reject`]: answer **429** with the [`QuotaError`]'s `Retry-After`,
//!   `X-RateLimit-Limit`, `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset`. The connection
//!   stays open.
//! - [`Decision::NeedLease`]: this core holds no usable lease for the key; a lease request was
//!   queued (send [`QuotaShard::drain_requests`] to the coordinator). Park the request and call
//!   `check` again once [`QuotaShard::apply`] returned this key. With the low-water prefetch this
//!   happens for the first request of a key on a core, or when the key is close to its limit.
//!
//! # Window semantics (exact)
//!
//! Time is milliseconds since one process-wide epoch (all threads must use the same one). It
//! is cut into slots of [`SLOT_MS`] = 600 ms; slot `s` is `[s·600, (s+1)·600)`. Every admitted
//! request and every consumed token is counted in one slot. A rule's limit `L` (per minute)
//! holds over the last [`SPAN_SLOTS`] = 101 slots: for every slot `e`, the count in slots
//! `e-100 ..= e` never exceeds `L`. Any real 60-second interval `[t, t+60 s)` lies inside 101
//! consecutive slots, so **no 60-second interval, wherever it starts, ever admits more than
//! `L` requests** (a sliding window; no 2× across any boundary). The price is that the window
//! is effectively 60.0–60.6 s long: sustained throughput under overload is `L` per 60.6 s
//! (≥ 99 % of `L` per minute). Quota consumed in slot `s` is free again at the start of slot
//! `s + 101`; that instant is what `Retry-After` and `X-RateLimit-Reset` report (rounded up to
//! whole seconds).
//!
//! `burst`, when set, additionally caps what one 600 ms slot may admit, so a key cannot take
//! its whole minute at once.
//!
//! Tokens use the same window. A request is admitted while this core's lease still holds at
//! least one token; what it really used is charged when its response finishes, so the minute
//! can overrun by at most the tokens of requests in flight when the key ran dry (bounded by
//! concurrency × the largest response). With `reserve_max_tokens` the request's `max_tokens` is
//! taken up front (admitted only if that many are left) and the difference is refunded, so the
//! overrun is only what a response uses beyond its own `max_tokens`.
//!
//! An overrun must not leave quota behind that was counted before it: leases are counted when
//! granted, so a lease sized before a response overran (a prefetched next-slot lease, another
//! core's lease) would otherwise admit more on tokens already used. Two rules keep *outstanding
//! leases + charged usage ≤ L* in every span a lease lives in, except for the requests in
//! flight when the key ran dry:
//!
//! - [`QuotaShard::charge_tokens`] takes an overrun from the lease in hand, then out of this
//!   core's next-slot lease (released, and the whole overrun charged in the current slot, where
//!   it was used);
//! - when a [`ToCoordinator::Charge`] leaves the window over the limit, the coordinator sends
//!   [`FromCoordinator::Recall`] to every core it granted a live lease of the key; each returns
//!   its leases and asks again (and is denied until the window frees). Replies to one core are
//!   ordered, so a lease granted before the charge is always recalled after it arrives. The
//!   engine charges a response once its usage is read, *before* its last bytes go out, and
//!   sends them only when the coordinator has answered the charge
//!   ([`FromCoordinator::Charged`], after the recalls it caused); every core applies its
//!   answers before each quota decision, so a request sent after the client has the response
//!   never meets a lease that charge used up. The charging core itself never admits on it,
//!   since its own next lease request queues behind the charge.
//!
//! Hence, with one request at a time, a key is admitted only while the tokens already charged
//! in its window are below the limit: the window holds at most `L - 1` plus one response.
//!
//! # Budgets: refusing until the period ends
//!
//! A calendar window (a budget) frees only when its period ends, so a refusal "until the
//! period ends" must mean the period's use really reached the limit. The coordinator's count
//! is use *plus* what is still leased, so it tells the two apart by the leases: it counts
//! per core the grants that core has not ended yet (each lease's end is a
//! [`ToCoordinator::Release`] naming how many grants it ends; an expired lease ends at the
//! core's next check or tick, a recalled one when the core applies the recall). When a budget
//! lease request finds no room while **another core** still has a grant open (live, expired
//! but not yet returned, or recalled and on its way back), the refusal says "retry at the
//! next slot" and those leases are recalled; the budget stage waits for them
//! (`budget_check::RECLAIM_WAIT`). Only when no other core holds anything is the refusal
//! until the period ends: what is counted is then use (and reservations of requests in
//! flight), less at most what the asking core's own lease in hand holds, which its request
//! already counted. A core asking because its current lease ran dry first gives back its own
//! next-slot lease (usable only later), so that one never stands in the way either.
//!
//! # Leases
//!
//! The [`QuotaCoordinator`] owns each key's window, on the coordination thread; with
//! `backend = "redis"` it takes leases from a window in Redis that several gateway processes
//! share, on a thread of its own (`remote`, so the coordination thread never waits on Redis;
//! see [`remote`]). A [`Grant`] is a number of requests and tokens a core may admit during
//! one slot; it is counted in that slot *when
//! granted*, and it cannot be used outside its slot, so what cores admit is always a subset of
//! what the window counted: cores together never exceed the limit. Unused grants are returned
//! ([`ToCoordinator::Release`]) when their slot ends, so idle or skewed cores hand back what
//! they did not use. A core asks for the next lease before the current one runs out (at a
//! quarter of its size, or in the last [`PREFETCH_MS`] of its slot, for the next slot).
//! Lease size adapts: a share of what is left, divided by the number of cores.
//!
//! # Performance
//!
//! `check` with a lease in hand is one hash-map probe on a pre-hashed `u64` and a few
//! compares; no allocation. Keys are 64-bit foldhash digests of (rule, caller); a collision
//! (≈ n²/2⁶⁵ for n live keys) makes two callers share one budget, which never admits more
//! than one limit allows.
//!
//! # Memory
//!
//! Shards forget keys idle for [`SHARD_IDLE_MS`]; the coordinator forgets a key once everything
//! it counted has left the window. Both sweep in `tick`.

pub mod budget;
pub mod calendar;
mod coordinator;
mod local;
pub mod remote;
mod rule;
mod shard;
pub mod usage;
mod window;

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use calendar::{Calendar, Window};
pub use coordinator::{QuotaCoordinator, QuotaCoordinatorStats};
pub use rule::{
    FailMode, KeyKind, Limits, QuotaBackend, QuotaRule, QuotaSettings, RawQuota, RawRule,
    RedisSettings, RuleId, REDIS_IO_TIMEOUT,
};
pub use shard::QuotaShard;

/// Width of one accounting slot.
pub const SLOT_MS: u64 = 600;
/// Slots per minute (the configured window).
pub const WINDOW_SLOTS: u64 = 100;
/// Slots one limit is enforced over: a minute plus the slot a 60 s interval may start inside.
pub const SPAN_SLOTS: u64 = WINDOW_SLOTS + 1;
/// A core asks for its next-slot lease this long before its current lease's slot ends.
pub const PREFETCH_MS: u64 = 200;
/// A shard forgets a key this long after its last request (once its leases are returned).
pub const SHARD_IDLE_MS: u64 = 5_000;
/// A shard's timer keeps prefetching leases for keys used within this long.
pub const KEEP_WARM_MS: u64 = 2_000;
/// A lease request unanswered for this long is sent again.
pub const LEASE_RETRY_MS: u64 = 1_000;
/// Seed of the key digest; fixed so every core and the coordinator agree.
const KEY_SEED: u64 = 0x5ad6_a7e0_9c1f_3b21;
/// Mixed into the seed of keys of named rules, so they never meet positional ones.
const NAMED_SEED: u64 = 0x0b0d_9e75_1ca5_e7f1;
/// `Limits::requests` of a rule that limits no requests (a budget).
pub const UNLIMITED_REQUESTS: u32 = u32::MAX;

/// The slot containing `now_ms`.
#[inline]
pub fn slot_of(now_ms: u64) -> u64 {
    now_ms / SLOT_MS
}

/// A quota epoch that gateway processes sharing Redis agree on: an `Instant` on a slot
/// boundary of UNIX time, and that boundary in UNIX ms. Measure every `now_ms` from the
/// `Instant` and give the ms to [`QuotaCoordinator::from_settings`].
pub fn shared_epoch() -> (Instant, u64) {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let now = Instant::now();
    let into_slot = unix_ms % SLOT_MS;
    match now.checked_sub(Duration::from_millis(into_slot)) {
        Some(start) => (start, unix_ms - into_slot),
        // Only within a slot of the monotonic clock's origin: use the next boundary (time
        // before it reads as 0).
        None => (
            now + Duration::from_millis(SLOT_MS - into_slot),
            unix_ms - into_slot + SLOT_MS,
        ),
    }
}

/// Index of a worker (core), as the engine numbers them.
pub type WorkerId = u16;

/// Digest of (rule, caller): the identity of one quota budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuotaKey(pub u64);

impl QuotaKey {
    /// The budget of caller `who` (subject, tenant or client IP bytes) under `rule`.
    #[inline]
    pub fn new(rule: RuleId, who: &[u8]) -> Self {
        let mut h = foldhash::quality::FixedState::with_seed(KEY_SEED).build_hasher();
        h.write_u16(rule.0);
        h.write(who);
        QuotaKey(h.finish())
    }

    /// The key of caller `who` under a rule known by its `name` rather than its position (a
    /// budget: its use must outlive reloads that reorder rules, and restarts), in `unit`.
    #[inline]
    pub fn named(name: &str, unit: u8, who: &[u8]) -> Self {
        let mut h = foldhash::quality::FixedState::with_seed(KEY_SEED ^ NAMED_SEED).build_hasher();
        h.write(name.as_bytes());
        h.write_u8(0xff);
        h.write_u8(unit);
        h.write(who);
        QuotaKey(h.finish())
    }
}

/// Hasher for maps keyed by an already uniform `u64` digest: passes it through.
#[derive(Default, Clone, Copy)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `QuotaKey`'s derived Hash; fold anything else anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type DigestBuild = BuildHasherDefault<DigestHasher>;
pub(crate) type KeyMap<V> = HashMap<QuotaKey, V, DigestBuild>;

/// Which limit a rejection hit (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

/// Why a request got 429; everything the response headers and metrics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: {reason:?} limit {limit} of rule {rule:?}, retry in {retry_after_s} s")]
pub struct QuotaError {
    pub rule: RuleId,
    pub reason: LimitKind,
    /// `Retry-After` seconds: a retry after this long succeeds if nothing else used the quota.
    pub retry_after_s: u32,
    /// `X-RateLimit-Limit` (of the limit that was hit).
    pub limit: u64,
    /// `X-RateLimit-Reset`: seconds until the whole window is free.
    pub reset_s: u32,
    /// When a retry succeeds (quota time, ms): `retry_after_s` rounds it up to whole seconds
    /// from now; a budget's reset header names it exactly.
    pub retry_at_ms: u64,
}

/// Hand this back to [`QuotaShard::charge_tokens`] when the response finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub key: QuotaKey,
    /// Slot of the lease that admitted the request.
    pub slot: u64,
    /// Tokens taken up front (`reserve_max_tokens`), else 0.
    pub reserved: u64,
    /// Start (UNIX ms) of the calendar period the lease was counted in; 0 for a minute
    /// window.
    pub period_unix_ms: u64,
}

/// An admitted request: its ticket and the `X-RateLimit-*` header values (requests limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub ticket: Ticket,
    pub limit: u32,
    /// Requests still admissible now across all cores, as last reported by the coordinator,
    /// less what this core admitted since.
    pub remaining: u32,
    pub reset_s: u32,
    /// Tokens still admissible in the window across all cores (as last reported, less what
    /// this core used since); `u64::MAX` without a token limit.
    pub tokens_left: u64,
}

/// Outcome of [`QuotaShard::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit(Admitted),
    Reject(QuotaError),
    NeedLease,
}

/// A worker asking for a lease of `key` usable from `at_ms` (now, or the start of the next
/// slot when prefetching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    pub worker: WorkerId,
    pub key: QuotaKey,
    pub rule: RuleId,
    pub limits: Limits,
    pub at_ms: u64,
    /// Tokens the next request needs (its reservation, at least 1).
    pub tokens_needed: u64,
}

/// Worker → coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToCoordinator {
    Lease(LeaseRequest),
    /// Unused part of a lease for `slot` (or a refunded reservation): never admitted.
    Release {
        key: QuotaKey,
        /// The core giving it back.
        worker: WorkerId,
        slot: u64,
        requests: u32,
        tokens: u64,
        /// How many of the coordinator's grants to `worker` this return ends: the lease they
        /// made (top-ups merge several into one) is gone from the core. 0: a partial return
        /// (the lease stays) or a refund after its lease ended. The coordinator counts the
        /// grants a core has not ended, so it knows which leases may still hold tokens (see
        /// the budget rules in the module docs).
        grants: u32,
    },
    /// Tokens used beyond what leases covered; counted in the current slot. Answered with
    /// [`FromCoordinator::Charged`] to `worker` once counted (and the leases it took over the
    /// limit recalled).
    Charge {
        key: QuotaKey,
        worker: WorkerId,
        tokens: u64,
    },
}

/// A lease: admit up to `requests` requests and consume up to `tokens` tokens while
/// `valid_from_ms <= now < valid_until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub key: QuotaKey,
    pub slot: u64,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
    pub requests: u32,
    /// `u64::MAX` when the rule has no token limit.
    pub tokens: u64,
    /// Requests left in the window after this grant (for `X-RateLimit-Remaining`).
    pub remaining: u32,
    /// When the whole window is free again (for `X-RateLimit-Reset`).
    pub reset_at_ms: u64,
    /// Tokens left in the window after this grant; `u64::MAX` without a token limit.
    pub tokens_left: u64,
    /// Start (UNIX ms) of the calendar period the grant is counted in; 0 for a minute window.
    pub period_unix_ms: u64,
}

/// The key is over its limit until `retry_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deny {
    pub key: QuotaKey,
    pub reason: LimitKind,
    pub limit: u64,
    pub retry_at_ms: u64,
    pub reset_at_ms: u64,
}

/// QuotaCoordinator → worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromCoordinator {
    Grant(Grant),
    Deny(Deny),
    /// A charge took the key's window past its token limit: what is still leased was counted
    /// against quota that responses have used since. Return every lease of `key` (unused
    /// parts go back) and ask again before admitting another request.
    Recall(QuotaKey),
    /// The answer to a [`ToCoordinator::Charge`]: it is counted, and the recalls it caused are
    /// ahead of any later answer in every core's channel. A response whose usage was charged
    /// goes out whole only after this (see `pipeline::settle`), so a client that sends its
    /// next request once it has the response finds no core admitting on leases the charge
    /// used up.
    Charged(QuotaKey),
}

impl FromCoordinator {
    pub fn key(&self) -> QuotaKey {
        match self {
            FromCoordinator::Grant(g) => g.key,
            FromCoordinator::Deny(d) => d.key,
            FromCoordinator::Recall(key) | FromCoordinator::Charged(key) => *key,
        }
    }
}

/// Whole seconds from `now_ms` until `at_ms`, rounded up (a retry then is not too early).
#[inline]
pub fn secs_until(at_ms: u64, now_ms: u64) -> u32 {
    let ms = at_ms.saturating_sub(now_ms);
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod sim_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_until_rounds_up() {
        assert_eq!(secs_until(1_000, 1_000), 0);
        assert_eq!(secs_until(1_001, 1_000), 1);
        assert_eq!(secs_until(3_000, 1_000), 2);
        assert_eq!(secs_until(5, 10), 0);
    }

    #[test]
    fn shared_epoch_is_on_a_slot_boundary_and_in_the_past() {
        let (start, unix_ms) = shared_epoch();
        assert_eq!(unix_ms % SLOT_MS, 0);
        assert!(start.elapsed() < Duration::from_millis(SLOT_MS + 100));
    }

    #[test]
    fn keys_separate_rules_and_callers() {
        let a = QuotaKey::new(RuleId(0), b"alice");
        assert_eq!(a, QuotaKey::new(RuleId(0), b"alice"));
        assert_ne!(a, QuotaKey::new(RuleId(1), b"alice"));
        assert_ne!(a, QuotaKey::new(RuleId(0), b"alicf"));
        let mut seen = std::collections::HashSet::new();
        assert!((0u32..100_000).all(|i| seen.insert(QuotaKey::new(RuleId(0), &i.to_le_bytes()))));
    }
}
