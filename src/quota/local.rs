//! The local backend (control thread): this process owns every key's window and grants
//! leases from it. Also the fail-open fallback of the Redis backend.
//!
//! Each [`LeaseRequest`] is answered with one [`FromCoordinator`] to the asking worker: a
//! [`Grant`] counted in its slot at once, or a [`Deny`] saying when a retry will succeed.
//! Releases take never-used quota back; charges count token overruns. No locks: the
//! [`Coordinator`](super::Coordinator) calls [`LocalCoordinator::handle`] for each message.

use super::window::Ring;
use super::{
    slot_of, Deny, FromCoordinator, Grant, KeyMap, LeaseRequest, LimitKind, QuotaKey,
    ToCoordinator, WorkerId, SLOT_MS, WINDOW_SLOTS,
};

/// A lease is this fraction of what is left, split over the workers: large while plenty is
/// left (few round trips), one at a time near the limit (nothing stranded on an idle core).
pub(crate) const LEASE_SHARE: u32 = 2;
/// How often [`LocalCoordinator::tick`] looks for keys to forget.
const SWEEP_INTERVAL_MS: u64 = 1_000;

#[derive(Debug)]
struct KeyState {
    /// Highest slot anything was counted in: the key can be forgotten once it left the span.
    last_slot: u64,
    requests: Ring,
    /// Only for keys with a token limit.
    tokens: Option<Box<Ring>>,
}

impl KeyState {
    fn advance(&mut self, cur: u64) {
        self.requests.advance(cur);
        if let Some(t) = &mut self.tokens {
            t.advance(cur);
        }
    }

    fn tokens_mut(&mut self, cur: u64) -> &mut Ring {
        self.tokens.get_or_insert_with(|| Box::new(Ring::new(cur)))
    }

    fn reset_at(&self, cur: u64) -> u64 {
        let t = self.tokens.as_ref().map_or(cur, |t| t.reset_slot(cur));
        self.requests.reset_slot(cur).max(t) * SLOT_MS
    }
}

#[derive(Debug)]
pub(crate) struct LocalCoordinator {
    workers: u32,
    keys: KeyMap<KeyState>,
    last_sweep_ms: u64,
}

impl LocalCoordinator {
    /// A coordinator for `workers` cores (lease sizes are split over them).
    pub fn new(workers: usize) -> Self {
        LocalCoordinator {
            workers: u32::try_from(workers.max(1)).unwrap_or(u32::MAX),
            keys: KeyMap::default(),
            last_sweep_ms: 0,
        }
    }

    /// Keys with quota counted in the window.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Requests and tokens counted for `key` in `slot` (0 once the slot left the span).
    pub fn counted(&self, key: QuotaKey, slot: u64) -> (u32, u32) {
        self.keys.get(&key).map_or((0, 0), |st| {
            let tokens = st.tokens.as_ref().map_or(0, |t| t.get(slot));
            (st.requests.get(slot), tokens)
        })
    }

    /// Applies one worker message at `now_ms`; replies are pushed to `out`.
    pub fn handle(
        &mut self,
        msg: ToCoordinator,
        now_ms: u64,
        out: &mut Vec<(WorkerId, FromCoordinator)>,
    ) {
        let cur = slot_of(now_ms);
        match msg {
            ToCoordinator::Lease(req) => {
                let reply = self.lease(&req, now_ms);
                out.push((req.worker, reply));
            }
            ToCoordinator::Release {
                key,
                slot,
                requests,
                tokens,
            } => {
                if let Some(st) = self.keys.get_mut(&key) {
                    st.advance(cur);
                    st.requests.sub(slot, requests);
                    if let Some(t) = &mut st.tokens {
                        t.sub(slot, tokens);
                    }
                }
            }
            ToCoordinator::Charge { key, tokens } => {
                let st = self.state(key, cur);
                st.last_slot = st.last_slot.max(cur);
                st.tokens_mut(cur).add(cur, tokens);
            }
        }
    }

    /// Forgets keys whose counts have all left the window. Call it every few hundred ms.
    pub fn tick(&mut self, now_ms: u64) {
        if now_ms < self.last_sweep_ms + SWEEP_INTERVAL_MS {
            return;
        }
        self.last_sweep_ms = now_ms;
        let cur = slot_of(now_ms);
        self.keys.retain(|_, st| st.last_slot + WINDOW_SLOTS >= cur);
    }

    fn state(&mut self, key: QuotaKey, cur: u64) -> &mut KeyState {
        let st = self.keys.entry(key).or_insert_with(|| KeyState {
            last_slot: cur,
            requests: Ring::new(cur),
            tokens: None,
        });
        st.advance(cur);
        st
    }

    fn lease(&mut self, req: &LeaseRequest, now_ms: u64) -> FromCoordinator {
        let cur = slot_of(now_ms);
        // A prefetch is for the next slot; anything else (or a late prefetch) for this one.
        let slot = slot_of(req.at_ms).clamp(cur, cur + 1);
        let share = self.workers.saturating_mul(LEASE_SHARE);
        let limits = req.limits;
        let st = self.state(req.key, cur);

        let req_avail = st
            .requests
            .available(cur, slot, limits.requests, limits.burst);
        if req_avail == 0 {
            let free = st.requests.next_free(cur, 1, limits.requests, limits.burst);
            return deny(
                req.key,
                LimitKind::Requests,
                limits.requests,
                free,
                st.reset_at(cur),
            );
        }
        let mut tokens = u32::MAX;
        if let Some(tok_limit) = limits.tokens {
            let need = req.tokens_needed.clamp(1, tok_limit);
            let ring = st.tokens_mut(cur);
            let tok_avail = ring.available(cur, slot, tok_limit, None);
            if tok_avail < need {
                let free = ring.next_free(cur, need, tok_limit, None);
                return deny(
                    req.key,
                    LimitKind::Tokens,
                    tok_limit,
                    free,
                    st.reset_at(cur),
                );
            }
            tokens = (tok_avail / share).max(need).min(tok_avail);
            ring.add(slot, tokens);
        }
        let requests = (req_avail / share).clamp(1, req_avail);
        st.requests.add(slot, requests);
        st.last_slot = st.last_slot.max(slot);
        FromCoordinator::Grant(Grant {
            key: req.key,
            slot,
            // From the slot's start, not `now`: a worker's cached clock may lag ours a little,
            // and admissions are sound anywhere inside the slot they were counted in.
            valid_from_ms: slot * SLOT_MS,
            valid_until_ms: (slot + 1) * SLOT_MS,
            requests,
            tokens,
            remaining: req_avail - requests,
            reset_at_ms: st.reset_at(cur),
        })
    }
}

fn deny(key: QuotaKey, reason: LimitKind, limit: u32, free: u64, reset: u64) -> FromCoordinator {
    FromCoordinator::Deny(Deny {
        key,
        reason,
        limit,
        retry_at_ms: free * SLOT_MS,
        reset_at_ms: reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Limits, RuleId, SPAN_SLOTS};

    const KEY: QuotaKey = QuotaKey(7);

    fn lease(c: &mut LocalCoordinator, limits: Limits, at: u64, now: u64) -> FromCoordinator {
        let mut out = Vec::new();
        let req = LeaseRequest {
            worker: 3,
            key: KEY,
            rule: RuleId(0),
            limits,
            at_ms: at,
            tokens_needed: 1,
        };
        c.handle(ToCoordinator::Lease(req), now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 3);
        out[0].1
    }

    fn grant(f: FromCoordinator) -> Grant {
        match f {
            FromCoordinator::Grant(g) => g,
            FromCoordinator::Deny(d) => panic!("denied: {d:?}"),
        }
    }

    const L10: Limits = Limits {
        requests: 10,
        tokens: None,
        burst: None,
    };

    #[test]
    fn leases_shrink_and_never_exceed_the_limit() {
        let mut c = LocalCoordinator::new(1);
        let sizes: Vec<u32> = (0..6)
            .map_while(|_| match lease(&mut c, L10, 100, 100) {
                FromCoordinator::Grant(g) => Some(g.requests),
                FromCoordinator::Deny(_) => None,
            })
            .collect();
        assert_eq!(sizes, [5, 2, 1, 1, 1]);
        assert_eq!(sizes.iter().sum::<u32>(), 10);
    }

    #[test]
    fn deny_names_the_exact_slot_the_quota_frees() {
        let mut c = LocalCoordinator::new(1);
        let g = grant(lease(&mut c, Limits { requests: 1, ..L10 }, 1_000, 1_000));
        assert_eq!((g.slot, g.valid_from_ms, g.valid_until_ms), (1, 600, 1_200));
        let FromCoordinator::Deny(d) = lease(&mut c, Limits { requests: 1, ..L10 }, 5_000, 5_000)
        else {
            panic!("expected deny")
        };
        assert_eq!(d.reason, LimitKind::Requests);
        assert_eq!(d.retry_at_ms, (1 + SPAN_SLOTS) * SLOT_MS);
        assert_eq!(d.reset_at_ms, d.retry_at_ms);
        let late = d.retry_at_ms - 1;
        assert!(matches!(
            lease(&mut c, Limits { requests: 1, ..L10 }, late, late),
            FromCoordinator::Deny(_)
        ));
        let at = d.retry_at_ms;
        grant(lease(&mut c, Limits { requests: 1, ..L10 }, at, at));
    }

    #[test]
    fn release_returns_quota_to_the_window() {
        let mut c = LocalCoordinator::new(1);
        let g = grant(lease(&mut c, L10, 0, 0));
        let mut out = Vec::new();
        c.handle(
            ToCoordinator::Release {
                key: KEY,
                slot: g.slot,
                requests: g.requests,
                tokens: 0,
            },
            700,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(grant(lease(&mut c, L10, 700, 700)).requests, 5);
    }

    #[test]
    fn prefetch_counts_in_the_next_slot_and_blocks_current_spans() {
        let mut c = LocalCoordinator::new(1);
        let g = grant(lease(&mut c, L10, 600, 500));
        assert_eq!((g.slot, g.valid_from_ms, g.valid_until_ms), (1, 600, 1_200));
        // The span ending at slot 1 contains slot 0, so slot 0 sees the prefetched lease.
        assert_eq!(grant(lease(&mut c, L10, 500, 500)).remaining, 3);
    }

    #[test]
    fn tokens_are_leased_denied_and_charged() {
        let mut c = LocalCoordinator::new(1);
        let lim = Limits {
            requests: 100,
            tokens: Some(1_000),
            burst: None,
        };
        let g = grant(lease(&mut c, lim, 0, 0));
        assert_eq!(g.tokens, 500);
        let mut out = Vec::new();
        c.handle(
            ToCoordinator::Charge {
                key: KEY,
                tokens: 600,
            },
            0,
            &mut out,
        );
        let FromCoordinator::Deny(d) = lease(&mut c, lim, 0, 0) else {
            panic!("expected deny")
        };
        assert_eq!((d.reason, d.limit), (LimitKind::Tokens, 1_000));
        assert_eq!(d.retry_at_ms, SPAN_SLOTS * SLOT_MS);
    }

    #[test]
    fn tick_forgets_keys_once_their_window_is_empty() {
        let mut c = LocalCoordinator::new(2);
        grant(lease(&mut c, L10, 0, 0));
        c.tick(60_000);
        assert_eq!(c.len(), 1);
        c.tick(61_000);
        assert!(c.is_empty());
    }
}
