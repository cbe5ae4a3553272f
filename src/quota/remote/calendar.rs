//! Calendar windows (budgets) in Redis: one hash per key whose fields are period starts (UNIX
//! ms, the same on every host) and whose values are what every process counted in that
//! period. A lease is one atomic script run, like the sliding window's; releases and charges
//! add to the period the slot falls in. Only the token dimension has a calendar window (a
//! budget limits no requests), so these keys have no request hash.

use redis::Script;

use super::{RemoteCoordinator, SLOT_MS};
use crate::quota::calendar::Window;
use crate::quota::{
    slot_of, Deny, FromCoordinator, Grant, LeaseRequest, LimitKind, QuotaKey, UNLIMITED_REQUESTS,
};

/// Redis keeps a period's count this long after the period ended (a late release or charge
/// still finds it; a `total` budget never expires).
const PERIOD_GRACE_MS: u64 = 3_600_000;

/// Grants `min(max(avail / share, need), avail)` from field ARGV[1] of KEYS[1] under limit
/// ARGV[2]; deletes fields of periods before ARGV[6]. Returns {1, granted, left} or {0, used}.
const LEASE_LUA: &str = r"
local field, limit = ARGV[1], tonumber(ARGV[2])
local need, share, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local stale = tonumber(ARGV[6])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if tonumber(f) < stale then
    redis.call('HDEL', KEYS[1], f)
  end
end
local used = tonumber(redis.call('HGET', KEYS[1], field) or 0)
local avail = math.max(limit - used, 0)
if avail < need then
  return {0, used}
end
local tokens = math.min(math.max(math.floor(avail / share), need), avail)
redis.call('HINCRBY', KEYS[1], field, tokens)
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {1, tokens, avail - tokens}
";

/// Takes back ARGV[2] counted in field ARGV[1], never below zero.
const RELEASE_LUA: &str = r"
local c = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or 0)
local n = tonumber(ARGV[2])
if c <= n then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HINCRBY', KEYS[1], ARGV[1], -n)
end
return 0
";

/// Counts ARGV[2] in field ARGV[1]; returns the larger count of fields ARGV[1] and ARGV[3]
/// (the periods of the current and the next slot).
const CHARGE_LUA: &str = r"
local now = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local next = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or 0)
return math.max(now, next)
";

pub(super) struct Scripts {
    lease: Script,
    release: Script,
    charge: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            lease: Script::new(LEASE_LUA),
            release: Script::new(RELEASE_LUA),
            charge: Script::new(CHARGE_LUA),
        }
    }
}

impl RemoteCoordinator {
    /// How long Redis keeps a key whose period ends at local slot `end` (0: forever).
    fn period_ttl(&self, end: u64, now_ms: u64) -> u64 {
        if end == u64::MAX {
            return 0;
        }
        (end.saturating_mul(SLOT_MS))
            .saturating_sub(now_ms)
            .saturating_add(PERIOD_GRACE_MS)
    }

    /// A lease of a calendar-window key from Redis; `None` when Redis is down.
    pub(super) fn calendar_lease(
        &mut self,
        req: &LeaseRequest,
        now_ms: u64,
    ) -> Option<FromCoordinator> {
        let cur = slot_of(now_ms);
        let slot = slot_of(req.at_ms).clamp(cur, cur + 1);
        let window = req.limits.window;
        let limit = req.limits.tokens.unwrap_or(0);
        let p = self.calendar.period(window, slot);
        let stale = self.calendar.period(window, cur).start_unix_ms;
        let need = req.tokens_needed.clamp(1, limit.max(1));
        let ttl = self.period_ttl(p.end, now_ms);
        let (_, tok_key) = self.keys(req.key);
        let (share, script) = (u64::from(self.share), &self.calendar_scripts.lease);
        let reply: Vec<i64> = self.link.call(now_ms, &mut self.stats, |c| {
            script
                .key(&tok_key)
                .arg(p.start_unix_ms)
                .arg(limit)
                .arg(need)
                .arg(share)
                .arg(ttl)
                .arg(stale)
                .invoke(c)
        })?;
        let n = |i: usize| u64::try_from(reply.get(i).copied().unwrap_or(0)).unwrap_or(0);
        let end_ms = p.end.saturating_mul(SLOT_MS);
        Some(match reply.first() {
            Some(1) => FromCoordinator::Grant(Grant {
                key: req.key,
                slot,
                valid_from_ms: slot * SLOT_MS,
                valid_until_ms: (slot + 1) * SLOT_MS,
                requests: UNLIMITED_REQUESTS,
                tokens: n(1),
                remaining: 0,
                reset_at_ms: end_ms,
                tokens_left: n(2),
                period_unix_ms: p.start_unix_ms,
            }),
            _ => FromCoordinator::Deny(Deny {
                key: req.key,
                reason: LimitKind::Tokens,
                limit,
                retry_at_ms: end_ms,
                reset_at_ms: end_ms,
            }),
        })
    }

    /// Takes back `tokens` a lease of `slot` did not use.
    pub(super) fn calendar_release(
        &mut self,
        key: QuotaKey,
        window: Window,
        slot: u64,
        tokens: u64,
        now_ms: u64,
    ) {
        if tokens == 0 {
            return;
        }
        let field = self.calendar.period(window, slot).start_unix_ms;
        let (_, tok_key) = self.keys(key);
        let script = &self.calendar_scripts.release;
        let _ = self.link.call(now_ms, &mut self.stats, |c| {
            script.key(&tok_key).arg(field).arg(tokens).invoke::<()>(c)
        });
    }

    /// Counts an overrun in the current period; the peak count the recall check compares
    /// with the limit (`None`: Redis is down).
    pub(super) fn calendar_charge(
        &mut self,
        key: QuotaKey,
        window: Window,
        tokens: u64,
        now_ms: u64,
    ) -> Option<u64> {
        let cur = slot_of(now_ms);
        let p = self.calendar.period(window, cur);
        let next = self.calendar.period(window, cur + 1).start_unix_ms;
        let ttl = self.period_ttl(p.end, now_ms);
        let (_, tok_key) = self.keys(key);
        let script = &self.calendar_scripts.charge;
        let peak: i64 = self.link.call(now_ms, &mut self.stats, |c| {
            script
                .key(&tok_key)
                .arg(p.start_unix_ms)
                .arg(tokens)
                .arg(next)
                .arg(ttl)
                .invoke(c)
        })?;
        Some(u64::try_from(peak).unwrap_or(0))
    }
}
