//! The Redis backend (on the remote thread, `control::remote`): one limit shared by several
//! gateway processes.
//!
//! Each process's coordinator (never a worker) takes leases from Redis: a lease is one run of
//! `remote_lease.lua`, which reads the key's per-slot counts, grants
//! `min(want, L - used)` under the same rules as the local window and counts it in its slot,
//! all in one atomic step. Every process's grants for a key land in the same hash, so the
//! grants of all processes together never exceed the limit in any span (the local backend's
//! guarantee, across hosts). Unused leases go back to the slot they were counted in.
//!
//! # Shared slots
//!
//! Slots are numbered from the UNIX epoch: this process's slot `s` is Redis slot
//! `s + epoch_unix_ms / SLOT_MS`, so the quota epoch must fall on a slot boundary of UNIX time
//! ([`shared_epoch`](super::shared_epoch) makes one). Hosts whose clocks disagree by `d` ms
//! see each other's slots shifted by `d`; keep them NTP-synced (a few ms). Every process must
//! have the same rules in the same order (a key is a digest of the rule's index).
//!
//! # Outages
//!
//! Connects and commands time out after [`RedisSettings::io_timeout`]
//! ([`REDIS_IO_TIMEOUT`](super::REDIS_IO_TIMEOUT)). A failure marks the backend down; while
//! down, no command is tried before the next reconnect attempt (with exponential backoff up
//! to [`MAX_BACKOFF_MS`], counted from the end of the failed attempt), so a dead or stalled
//! Redis costs the remote thread at most one timeout per attempt, and the coordination
//! thread nothing. Meanwhile leases follow [`FailMode`]:
//!
//! - `fail_open`: granted from this process's own window (a local coordinator): each process
//!   then enforces the limit on its own, so N processes may admit up to N × L.
//! - `fail_closed`: denied with a retry after [`FAIL_CLOSED_RETRY_MS`] (a 429 with
//!   `Retry-After: 1`).
//!
//! Transitions and, at most every [`LOG_INTERVAL_MS`], the degraded counts go to stderr; the
//! counters are in [`QuotaCoordinatorStats`]. Releases that cannot reach Redis are lost: Redis
//! then counts more than was used, which only errs on the strict side.

mod calendar;

use std::fmt;
use std::time::{Duration, Instant};

use redis::{Connection, ErrorKind, RedisError, RedisResult, Script};

use super::calendar::{Calendar, Window};
use super::local::{Holders, LocalCoordinator, LEASE_SHARE};
use super::rule::{FailMode, RedisSettings};
use super::{
    slot_of, Deny, FromCoordinator, Grant, KeyMap, LeaseRequest, LimitKind, QuotaCoordinatorStats,
    QuotaKey, ToCoordinator, WorkerId, SLOT_MS, SPAN_SLOTS,
};

/// First wait before reconnecting; doubles per failed attempt.
pub const MIN_BACKOFF_MS: u64 = 100;
/// Longest wait between reconnect attempts.
pub const MAX_BACKOFF_MS: u64 = 5_000;
/// `fail_closed` denials say to retry this much later.
pub const FAIL_CLOSED_RETRY_MS: u64 = 1_000;
/// An idle connection is checked (PING) this often, so `backend_up` stays true to fact.
pub const HEALTH_INTERVAL_MS: u64 = 1_000;
/// Degraded-mode reports go to stderr at most this often.
pub const LOG_INTERVAL_MS: u64 = 10_000;
/// A key's window kind is remembered this long after its last lease (its releases and
/// charges, which do not carry it, arrive within that).
const WINDOW_MEMORY_MS: u64 = 600_000;
/// Redis keeps a key's counts this long after its last lease: the span, the prefetched slot,
/// and one slot of margin.
const TTL_MS: u64 = (SPAN_SLOTS + 2) * SLOT_MS;

const RELEASE_LUA: &str = r"
for i = 1, 2 do
  local n = tonumber(ARGV[i + 1])
  if n > 0 then
    local c = tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or 0)
    if c <= n then
      redis.call('HDEL', KEYS[i], ARGV[1])
    else
      redis.call('HINCRBY', KEYS[i], ARGV[1], -n)
    end
  end
end
return 0
";

/// Counts an overrun in slot ARGV[1]; returns the larger sum of the spans (ARGV[4] slots)
/// ending at that slot and the next: what the window holds against the limit.
const CHARGE_LUA: &str = r"
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local cur, span = tonumber(ARGV[1]), tonumber(ARGV[4])
local now, next = 0, 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local s, c = tonumber(flat[i]), tonumber(flat[i + 1])
  if s <= cur and s + span > cur then
    now = now + c
  end
  if s <= cur + 1 and s + span > cur + 1 then
    next = next + c
  end
end
return math.max(now, next)
";

struct Scripts {
    lease: Script,
    release: Script,
    charge: Script,
}

/// The connection's state machine.
enum State {
    /// Connected; `last_ok_ms` is when a command last succeeded. `backoff_ms` is the wait
    /// that led here until a command succeeds (then 0), so a Redis that accepts connections
    /// but fails every command is still retried less and less often.
    Up {
        conn: Box<Connection>,
        last_ok_ms: u64,
        backoff_ms: u64,
    },
    /// Not connected since `since_ms`: nothing is tried before `retry_at_ms`.
    Down {
        since_ms: u64,
        retry_at_ms: u64,
        backoff_ms: u64,
    },
}

/// The Redis connection with its reconnect policy.
struct Link {
    client: redis::Client,
    /// Bound on one connect, and on one command's write and read.
    io_timeout: Duration,
    state: State,
    /// Whether it ever connected (a failure to connect at startup is not an outage).
    ever_up: bool,
    /// When a failed command was last logged (0: never).
    last_fail_log_ms: u64,
}

impl Link {
    fn up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// Runs `op` on the connection, reconnecting first if an attempt is due. `None`: the
    /// backend is down (or just went down); the caller degrades.
    ///
    /// A failed attempt may itself have taken up to `io_timeout` (a Redis that accepts and
    /// never answers); the wait before the next one counts from when it ended, so a stalled
    /// Redis is not retried back to back and messages queued behind it are answered per
    /// `fail_mode` instead of each waiting for another attempt.
    fn call<T>(
        &mut self,
        now_ms: u64,
        stats: &mut QuotaCoordinatorStats,
        op: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Option<T> {
        let started = Instant::now();
        let ended = || now_ms + started.elapsed().as_millis() as u64;
        if let State::Down { retry_at_ms, .. } = self.state {
            if now_ms < retry_at_ms {
                return None;
            }
            self.reconnect(now_ms, ended, stats);
        }
        let State::Up {
            conn,
            last_ok_ms,
            backoff_ms,
        } = &mut self.state
        else {
            return None;
        };
        match op(conn) {
            Ok(v) => {
                *last_ok_ms = now_ms;
                *backoff_ms = 0;
                Some(v)
            }
            Err(e) => {
                self.fail(ended(), stats, &e);
                None
            }
        }
    }

    /// One connect attempt at `now_ms`; `ended` reads the clock after it.
    fn reconnect(
        &mut self,
        now_ms: u64,
        ended: impl Fn() -> u64,
        stats: &mut QuotaCoordinatorStats,
    ) {
        let State::Down {
            since_ms,
            backoff_ms,
            ..
        } = self.state
        else {
            return;
        };
        match self.open() {
            Ok(conn) => {
                let down_s = now_ms.saturating_sub(since_ms) / 1000;
                if self.ever_up {
                    eprintln!("shardgate: quota: redis reachable again after {down_s} s");
                }
                self.ever_up = true;
                self.state = State::Up {
                    conn: Box::new(conn),
                    last_ok_ms: now_ms,
                    backoff_ms,
                };
            }
            Err(e) => {
                stats.redis_errors += 1;
                let backoff_ms = next_backoff(backoff_ms);
                if backoff_ms == MIN_BACKOFF_MS && !self.ever_up {
                    eprintln!("shardgate: quota: cannot connect to redis: {e}");
                }
                self.state = State::Down {
                    since_ms,
                    retry_at_ms: ended() + backoff_ms,
                    backoff_ms,
                };
            }
        }
    }

    fn open(&self) -> RedisResult<Connection> {
        let conn = self.client.get_connection_with_timeout(self.io_timeout)?;
        conn.set_read_timeout(Some(self.io_timeout))?;
        conn.set_write_timeout(Some(self.io_timeout))?;
        Ok(conn)
    }

    /// A command failed: the connection may be out of step (a reply that timed out can
    /// still arrive), so it is dropped and a reconnect scheduled.
    fn fail(&mut self, now_ms: u64, stats: &mut QuotaCoordinatorStats, e: &RedisError) {
        stats.redis_errors += 1;
        let State::Up { backoff_ms, .. } = self.state else {
            return;
        };
        if now_ms >= self.last_fail_log_ms + LOG_INTERVAL_MS || self.last_fail_log_ms == 0 {
            self.last_fail_log_ms = now_ms.max(1);
            eprintln!("shardgate: quota: redis failed ({e}); reconnecting");
        }
        let backoff_ms = next_backoff(backoff_ms);
        self.state = State::Down {
            since_ms: now_ms,
            retry_at_ms: now_ms + backoff_ms,
            backoff_ms,
        };
    }
}

/// The wait after one more failed attempt: doubling from the first to the longest.
fn next_backoff(backoff_ms: u64) -> u64 {
    (backoff_ms * 2).clamp(MIN_BACKOFF_MS, MAX_BACKOFF_MS)
}

/// The coordinator of the Redis backend; see the module docs.
pub(crate) struct RemoteCoordinator {
    link: Link,
    scripts: Scripts,
    prefix: String,
    fail_mode: FailMode,
    /// Redis slot of this process's slot 0.
    base_slot: u64,
    share: u32,
    /// Who holds live leases of each key (from Redis or the fallback), for recalls.
    holders: KeyMap<Holders>,
    /// Grants under `fail_open`, and where releases of those grants go back to.
    fallback: LocalCoordinator,
    stats: QuotaCoordinatorStats,
    last_log_ms: u64,
    /// Periods of calendar windows (budgets).
    calendar: Calendar,
    calendar_scripts: calendar::Scripts,
    /// The calendar window of each key that has one, and when it was last leased.
    windows: KeyMap<(Window, u64)>,
}

impl fmt::Debug for RemoteCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may hold a password.
        f.debug_struct("RemoteCoordinator")
            .field("prefix", &self.prefix)
            .field("fail_mode", &self.fail_mode)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RemoteCoordinator {
    /// Does not connect yet: the first message or `tick` does.
    #[cfg(test)]
    pub(crate) fn new(
        workers: usize,
        settings: &RedisSettings,
        fail_mode: FailMode,
        epoch_unix_ms: u64,
    ) -> RedisResult<Self> {
        Self::with_calendar(
            workers,
            settings,
            fail_mode,
            Calendar::new(jiff::tz::TimeZone::UTC, epoch_unix_ms),
        )
    }

    /// [`RemoteCoordinator::new`] whose calendar windows follow `calendar` (its epoch is the
    /// quota epoch).
    pub(crate) fn with_calendar(
        workers: usize,
        settings: &RedisSettings,
        fail_mode: FailMode,
        calendar: Calendar,
    ) -> RedisResult<Self> {
        let epoch_unix_ms = calendar.epoch_unix_ms();
        let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
        Ok(RemoteCoordinator {
            link: Link {
                client: redis::Client::open(settings.url.as_str())?,
                io_timeout: settings.io_timeout,
                state: State::Down {
                    since_ms: 0,
                    retry_at_ms: 0,
                    backoff_ms: 0,
                },
                ever_up: false,
                last_fail_log_ms: 0,
            },
            scripts: Scripts {
                lease: Script::new(include_str!("remote_lease.lua")),
                release: Script::new(RELEASE_LUA),
                charge: Script::new(CHARGE_LUA),
            },
            prefix: settings.key_prefix.clone(),
            fail_mode,
            base_slot: epoch_unix_ms / SLOT_MS,
            share: workers.saturating_mul(LEASE_SHARE),
            holders: KeyMap::default(),
            fallback: LocalCoordinator::with_calendar(workers as usize, calendar.clone()),
            stats: QuotaCoordinatorStats::default(),
            last_log_ms: 0,
            calendar,
            calendar_scripts: calendar::Scripts::default(),
            windows: KeyMap::default(),
        })
    }

    pub(crate) fn stats(&self) -> QuotaCoordinatorStats {
        QuotaCoordinatorStats {
            backend_up: self.link.up(),
            ..self.stats
        }
    }

    /// Keys the fail-open fallback holds.
    pub(crate) fn len(&self) -> usize {
        self.fallback.len()
    }

    pub(crate) fn handle(
        &mut self,
        msg: ToCoordinator,
        now_ms: u64,
        out: &mut Vec<(WorkerId, FromCoordinator)>,
    ) {
        match msg {
            ToCoordinator::Lease(req) => {
                let window = req.limits.window;
                let remote = match window.is_calendar() {
                    true => {
                        self.windows.insert(req.key, (window, now_ms));
                        self.calendar_lease(&req, now_ms)
                    }
                    false => self.lease(&req, now_ms),
                };
                let mut reply = match remote {
                    Some(reply) => reply,
                    None => self.degraded_lease(&req, now_ms),
                };
                let cur = slot_of(now_ms);
                let holders = self.holders.entry(req.key).or_default();
                match &mut reply {
                    FromCoordinator::Grant(g) => {
                        holders.granted(req.worker, g.slot, req.limits.tokens);
                    }
                    // Only this process's cores can be recalled (see `Charge`).
                    FromCoordinator::Deny(d) => {
                        holders.reclaim_for(d, window, req.worker, cur, out)
                    }
                    FromCoordinator::Recall(_) | FromCoordinator::Charged(_) => {}
                }
                out.push((req.worker, reply));
            }
            ToCoordinator::Release {
                key,
                worker,
                slot,
                requests,
                tokens,
                grants,
            } => {
                if let Some(h) = self.holders.get_mut(&key) {
                    h.returned(worker, grants);
                }
                self.release(key, (worker, grants), slot, requests, tokens, now_ms)
            }
            ToCoordinator::Charge {
                key,
                worker,
                tokens,
            } => {
                let cur = slot_of(now_ms);
                let peak = match self.windows.get(&key) {
                    Some(&(window, _)) => self.calendar_charge(key, window, tokens, now_ms),
                    None => {
                        let (_, tok_key) = self.keys(key);
                        let (slot, charge) = (cur + self.base_slot, &self.scripts.charge);
                        self.link
                            .call(now_ms, &mut self.stats, |c| {
                                charge
                                    .key(&tok_key)
                                    .arg(slot)
                                    .arg(tokens)
                                    .arg(TTL_MS)
                                    .arg(SPAN_SLOTS)
                                    .invoke::<i64>(c)
                            })
                            .map(|p| u64::try_from(p).unwrap_or(0))
                    }
                };
                let peak = match peak {
                    Some(p) => p,
                    None => self.fallback.charge(key, tokens, now_ms),
                };
                // Only this process's cores can be recalled: leases other gateway processes
                // took from the same Redis window run until their slot ends.
                if let Some(h) = self.holders.get_mut(&key) {
                    h.recall_if_over(key, peak, cur, out);
                }
                out.push((worker, FromCoordinator::Charged(key)));
            }
        }
    }

    /// Reconnects when due, checks an idle connection, reports a lasting outage.
    pub(crate) fn tick(&mut self, now_ms: u64) {
        self.fallback.tick(now_ms);
        let cur = slot_of(now_ms);
        self.holders.retain(|_, h| h.live(cur));
        self.windows
            .retain(|_, &mut (_, at)| now_ms < at + WINDOW_MEMORY_MS);
        let idle = match self.link.state {
            State::Up { last_ok_ms, .. } => now_ms >= last_ok_ms + HEALTH_INTERVAL_MS,
            State::Down { retry_at_ms, .. } => now_ms >= retry_at_ms,
        };
        if idle {
            let _ = self.link.call(now_ms, &mut self.stats, |c| {
                redis::cmd("PING").query::<()>(c)
            });
        }
        if let State::Down { since_ms, .. } = self.link.state {
            self.log_degraded(now_ms, since_ms);
        }
    }

    /// The lease from Redis; `None` when Redis is down.
    fn lease(&mut self, req: &LeaseRequest, now_ms: u64) -> Option<FromCoordinator> {
        let cur = slot_of(now_ms);
        // A prefetch is for the next slot; anything else (or a late prefetch) for this one.
        let slot = slot_of(req.at_ms).clamp(cur, cur + 1);
        let (req_key, tok_key) = self.keys(req.key);
        let lim = req.limits;
        let (base, share, script) = (self.base_slot, self.share, &self.scripts.lease);
        self.link.call(now_ms, &mut self.stats, |c| {
            let reply: Vec<i64> = script
                .key(&req_key)
                .key(&tok_key)
                .arg(cur + base)
                .arg(slot + base)
                .arg(SPAN_SLOTS)
                .arg(lim.requests)
                .arg(lim.burst.unwrap_or(0))
                .arg(lim.tokens.unwrap_or(0))
                .arg(req.tokens_needed)
                .arg(share)
                .arg(TTL_MS)
                .invoke(c)?;
            decode_lease(&reply, req, slot, base)
        })
    }

    fn degraded_lease(&mut self, req: &LeaseRequest, now_ms: u64) -> FromCoordinator {
        if let State::Down { since_ms, .. } = self.link.state {
            self.log_degraded(now_ms, since_ms);
        }
        match self.fail_mode {
            FailMode::FailOpen => {
                let mut out = Vec::with_capacity(1);
                self.fallback
                    .handle(ToCoordinator::Lease(*req), now_ms, &mut out);
                let reply = out.pop().map(|(_, r)| r);
                if let Some(FromCoordinator::Grant(_)) = reply {
                    self.stats.fail_open_grants += 1;
                }
                reply.unwrap_or_else(|| fail_closed_deny(req, now_ms))
            }
            FailMode::FailClosed => {
                self.stats.fail_closed_denies += 1;
                fail_closed_deny(req, now_ms)
            }
        }
    }

    /// What the fail-open fallback granted for this slot goes back there first; the rest was
    /// counted in Redis.
    /// `(worker, grants)`: who returns it and how many grants it ends.
    fn release(
        &mut self,
        key: QuotaKey,
        (worker, grants): (WorkerId, u32),
        slot: u64,
        requests: u32,
        tokens: u64,
        now_ms: u64,
    ) {
        let (local_req, local_tok) = self.fallback.counted(key, slot);
        let (local_req, local_tok) = (requests.min(local_req), tokens.min(local_tok));
        // Lease ends go to the fallback too: while Redis is down it names a budget refusal's
        // retry time from its own count of open grants, which would otherwise never close.
        // (The end of a Redis lease may close a fallback grant of the same core early: that
        // only makes a refusal name the period end sooner; it never admits anything.)
        if local_req > 0 || local_tok > 0 || grants > 0 {
            let local = ToCoordinator::Release {
                key,
                worker,
                slot,
                requests: local_req,
                tokens: local_tok,
                grants,
            };
            self.fallback.handle(local, now_ms, &mut Vec::new());
        }
        let (requests, tokens) = (requests - local_req, tokens - local_tok);
        if let Some(&(window, _)) = self.windows.get(&key) {
            // A calendar key has no request window.
            return self.calendar_release(key, window, slot, tokens, now_ms);
        }
        if requests == 0 && tokens == 0 {
            return;
        }
        let (req_key, tok_key) = self.keys(key);
        let (slot, script) = (slot + self.base_slot, &self.scripts.release);
        let _ = self.link.call(now_ms, &mut self.stats, |c| {
            script
                .key(&req_key)
                .key(&tok_key)
                .arg(slot)
                .arg(requests)
                .arg(tokens)
                .invoke::<()>(c)
        });
    }

    /// The request and token hashes of `key`; the hash tag keeps both in one cluster slot.
    fn keys(&self, key: QuotaKey) -> (String, String) {
        let base = format!("{}:{{{:016x}}}", self.prefix, key.0);
        (format!("{base}:r"), format!("{base}:t"))
    }

    fn log_degraded(&mut self, now_ms: u64, since_ms: u64) {
        if self.link.ever_up && now_ms >= self.last_log_ms + LOG_INTERVAL_MS {
            self.last_log_ms = now_ms;
            let s = self.stats;
            let mode = match self.fail_mode {
                FailMode::FailOpen => "fail_open: leases come from this process's own window",
                FailMode::FailClosed => "fail_closed: limited requests are rejected",
            };
            eprintln!(
                "shardgate: quota: redis down for {} s; {mode} (errors {}, fail-open grants {}, \
                 fail-closed denies {})",
                now_ms.saturating_sub(since_ms) / 1000,
                s.redis_errors,
                s.fail_open_grants,
                s.fail_closed_denies,
            );
        }
    }
}

fn fail_closed_deny(req: &LeaseRequest, now_ms: u64) -> FromCoordinator {
    let retry = now_ms + FAIL_CLOSED_RETRY_MS;
    FromCoordinator::Deny(Deny {
        key: req.key,
        reason: LimitKind::Requests,
        limit: u64::from(req.limits.requests),
        retry_at_ms: retry,
        reset_at_ms: retry,
    })
}

/// Turns the lease script's reply (see `remote_lease.lua`) into this process's terms.
fn decode_lease(
    reply: &[i64],
    req: &LeaseRequest,
    slot: u64,
    base_slot: u64,
) -> RedisResult<FromCoordinator> {
    let local_ms = |redis_slot: i64| {
        u64::try_from(redis_slot)
            .unwrap_or(0)
            .saturating_sub(base_slot)
            * SLOT_MS
    };
    let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    let wide = |n: i64| u64::try_from(n).unwrap_or(0);
    match *reply {
        [1, requests, tokens, remaining, reset, left] => Ok(FromCoordinator::Grant(Grant {
            key: req.key,
            slot,
            valid_from_ms: slot * SLOT_MS,
            valid_until_ms: (slot + 1) * SLOT_MS,
            requests: count(requests),
            tokens: if tokens < 0 { u64::MAX } else { wide(tokens) },
            remaining: count(remaining),
            reset_at_ms: local_ms(reset),
            tokens_left: if left < 0 { u64::MAX } else { wide(left) },
            period_unix_ms: 0,
        })),
        [0, reason, free, reset] => {
            let (reason, limit) = if reason == 2 {
                (LimitKind::Tokens, req.limits.tokens.unwrap_or(0))
            } else {
                (LimitKind::Requests, u64::from(req.limits.requests))
            };
            Ok(FromCoordinator::Deny(Deny {
                key: req.key,
                reason,
                limit,
                retry_at_ms: local_ms(free),
                reset_at_ms: local_ms(reset),
            }))
        }
        _ => Err(RedisError::from((
            ErrorKind::TypeError,
            "unexpected reply from the quota lease script",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Limits, RuleId};

    const REQ: LeaseRequest = LeaseRequest {
        worker: 1,
        key: QuotaKey(0xab),
        rule: RuleId(0),
        limits: Limits {
            requests: 10,
            tokens: Some(500),
            burst: None,
            window: crate::quota::Window::Minute,
        },
        at_ms: 0,
        tokens_needed: 1,
    };

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            key_prefix: "sg".into(),
            io_timeout: crate::quota::REDIS_IO_TIMEOUT,
        }
    }

    /// A port nothing listens on: bound, then closed.
    fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("redis://{}/0", l.local_addr().unwrap())
    }

    #[test]
    fn grant_reply_maps_redis_slots_to_local_time() {
        let base = 1_000;
        let g = decode_lease(&[1, 3, -1, 7, base as i64 + 106, -1], &REQ, 5, base).unwrap();
        let FromCoordinator::Grant(g) = g else {
            panic!("expected grant")
        };
        assert_eq!(
            (g.slot, g.valid_from_ms, g.valid_until_ms),
            (5, 3_000, 3_600)
        );
        assert_eq!((g.requests, g.tokens, g.remaining), (3, u64::MAX, 7));
        assert_eq!(g.reset_at_ms, 106 * SLOT_MS);
    }

    #[test]
    fn deny_reply_names_the_limit_hit() {
        let d = decode_lease(&[0, 2, 1_050, 1_101], &REQ, 5, 1_000).unwrap();
        let FromCoordinator::Deny(d) = d else {
            panic!("expected deny")
        };
        assert_eq!((d.reason, d.limit), (LimitKind::Tokens, 500));
        assert_eq!(
            (d.retry_at_ms, d.reset_at_ms),
            (50 * SLOT_MS, 101 * SLOT_MS)
        );
        assert!(decode_lease(&[1, 2], &REQ, 5, 0).is_err());
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let c = RemoteCoordinator::new(1, &settings("redis://127.0.0.1/0"), FailMode::FailOpen, 0)
            .unwrap();
        let (r, t) = c.keys(QuotaKey(0xab));
        assert_eq!(r, "sg:{00000000000000ab}:r");
        assert_eq!(t, "sg:{00000000000000ab}:t");
    }

    fn lease(c: &mut RemoteCoordinator, now: u64) -> FromCoordinator {
        let mut out = Vec::new();
        let req = LeaseRequest { at_ms: now, ..REQ };
        c.handle(ToCoordinator::Lease(req), now, &mut out);
        out.pop().unwrap().1
    }

    #[test]
    fn unreachable_redis_fails_open_from_the_local_window_and_backs_off() {
        let mut c =
            RemoteCoordinator::new(1, &settings(&dead_url()), FailMode::FailOpen, 0).unwrap();
        let mut granted = 0;
        let mut take = |c: &mut RemoteCoordinator, now| match lease(c, now) {
            FromCoordinator::Grant(g) => granted += g.requests,
            other => panic!("fail_open must grant: {other:?}"),
        };
        take(&mut c, 0);
        let s = c.stats();
        assert!(!s.backend_up);
        assert_eq!((s.redis_errors, s.fail_open_grants), (1, 1));
        // Within the backoff nothing is tried again.
        take(&mut c, 50);
        assert_eq!(c.stats().redis_errors, 1);
        // After it (counted from the end of the refused connect), once more.
        take(&mut c, 150);
        assert_eq!(c.stats().redis_errors, 2);
        // The fallback's own window holds the limit.
        while let FromCoordinator::Grant(g) = lease(&mut c, 150) {
            granted += g.requests;
        }
        assert_eq!(granted, REQ.limits.requests);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn unreachable_redis_fails_closed_with_a_short_retry() {
        let mut c =
            RemoteCoordinator::new(1, &settings(&dead_url()), FailMode::FailClosed, 0).unwrap();
        let FromCoordinator::Deny(d) = lease(&mut c, 1_000) else {
            panic!("fail_closed must deny")
        };
        assert_eq!(d.retry_at_ms, 1_000 + FAIL_CLOSED_RETRY_MS);
        assert_eq!(c.stats().fail_closed_denies, 1);
        assert_eq!(c.stats().fail_open_grants, 0);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut c =
            RemoteCoordinator::new(1, &settings(&dead_url()), FailMode::FailClosed, 0).unwrap();
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            c.tick(now);
            let State::Down {
                retry_at_ms,
                backoff_ms,
                ..
            } = c.link.state
            else {
                panic!("dead port connected")
            };
            // The wait counts from the end of the failed attempt.
            assert!(retry_at_ms >= now + backoff_ms);
            waits.push(backoff_ms);
            now = retry_at_ms;
        }
        assert_eq!(waits, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
    }

    #[test]
    fn releases_of_fallback_grants_go_back_to_the_fallback() {
        let mut c =
            RemoteCoordinator::new(1, &settings(&dead_url()), FailMode::FailOpen, 0).unwrap();
        let FromCoordinator::Grant(g) = lease(&mut c, 0) else {
            panic!("fail_open must grant")
        };
        assert_eq!(c.fallback.counted(REQ.key, g.slot).0, g.requests);
        let rel = ToCoordinator::Release {
            key: REQ.key,
            worker: REQ.worker,
            slot: g.slot,
            requests: g.requests,
            tokens: g.tokens,
            grants: 1,
        };
        c.handle(rel, 10, &mut Vec::new());
        assert_eq!(c.fallback.counted(REQ.key, g.slot), (0, 0));
    }
}
