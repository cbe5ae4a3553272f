//! The local backend (coordination thread): this process owns every key's window and grants
//! leases from it. Also the fail-open fallback of the Redis backend.
//!
//! Each [`LeaseRequest`] is answered with one [`FromCoordinator`] to the asking worker: a
//! [`Grant`] counted in its slot at once, or a [`Deny`] saying when a retry will succeed.
//! Releases take never-used quota back; charges count token overruns. No locks: the
//! [`QuotaCoordinator`](super::QuotaCoordinator) calls [`LocalCoordinator::handle`] for each message.

use super::calendar::{CalWindow, Calendar, Window};
use super::window::Ring;
use super::{
    slot_of, Deny, FromCoordinator, Grant, KeyMap, LeaseRequest, LimitKind, QuotaKey,
    ToCoordinator, WorkerId, SLOT_MS, UNLIMITED_REQUESTS, WINDOW_SLOTS,
};

/// A lease is this fraction of what is left, split over the workers: large while plenty is
/// left (few round trips), one at a time near the limit (nothing stranded on an idle core).
pub(crate) const LEASE_SHARE: u32 = 2;
/// How often [`LocalCoordinator::tick`] looks for keys to forget.
const SWEEP_INTERVAL_MS: u64 = 1_000;
/// How often it drops seeds of calendar periods that have ended.
const SEED_SWEEP_INTERVAL_MS: u64 = 60_000;

/// Slots after its latest grant that a key's open grants are trusted for: a core returns a
/// lease within one quota tick of its slot's end, so only a lost return (a core that stopped)
/// is still open by then; forgetting it keeps a stuck count from holding the key forever.
const HOLDERS_STALE_SLOTS: u64 = super::WINDOW_SLOTS;

/// One core's leases of one key, as the coordinator knows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    /// Grants made to the core that it has not ended yet (see [`ToCoordinator::Release`]).
    open: u32,
    /// Recalled since its last grant: its leases are on their way back.
    recalled: bool,
}

/// The cores holding leases of one token-limited key: so that a charge that takes the key
/// over its token limit can recall them ([`FromCoordinator::Recall`]), and so that a budget
/// refusal tells "leases hold what is left" (wait for them) from "the period is used up"
/// (see the module docs of `quota`, "Budgets").
///
/// Grants are counted per core until the core reports their lease ended, so a lease whose
/// slot is over but that its core has not returned yet, and a recalled one on its way back,
/// still count as held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Holders {
    /// Index: worker. Empty while no grant is open (no allocation for idle keys).
    cores: Vec<Held>,
    /// Slot of the latest grant recorded (see [`HOLDERS_STALE_SLOTS`]).
    until_slot: u64,
    /// The token limit of the latest lease request (0: no token limit, nothing to recall).
    tok_limit: u64,
}

impl Holders {
    /// `worker` was granted a lease of `slot` under `tok_limit` (nothing is tracked for a key
    /// without a token limit: it is never recalled).
    pub(crate) fn granted(&mut self, worker: WorkerId, slot: u64, tok_limit: Option<u64>) {
        let Some(limit) = tok_limit else {
            self.tok_limit = 0;
            return;
        };
        self.tok_limit = limit;
        self.until_slot = self.until_slot.max(slot);
        let w = usize::from(worker);
        if self.cores.len() <= w {
            self.cores.resize(w + 1, Held::default());
        }
        let held = &mut self.cores[w];
        held.open = held.open.saturating_add(1);
        held.recalled = false;
    }

    /// `worker` ended `grants` of its grants (their lease is gone from the core).
    pub(crate) fn returned(&mut self, worker: WorkerId, grants: u32) {
        if grants == 0 {
            return;
        }
        if let Some(held) = self.cores.get_mut(usize::from(worker)) {
            held.open = held.open.saturating_sub(grants);
        }
        if self.cores.iter().all(|h| h.open == 0) {
            self.cores = Vec::new();
        }
    }

    /// Forgets grants too old to be open still (see [`HOLDERS_STALE_SLOTS`]).
    fn expire(&mut self, cur: u64) {
        if !self.cores.is_empty() && self.until_slot + HOLDERS_STALE_SLOTS < cur {
            self.cores = Vec::new();
        }
    }

    /// The cores with open grants, other than `except`.
    fn open_except(&self, except: Option<WorkerId>) -> impl Iterator<Item = (WorkerId, Held)> + '_ {
        self.cores
            .iter()
            .enumerate()
            .filter(|(_, h)| h.open > 0)
            .map(|(w, &h)| (WorkerId::try_from(w).unwrap_or(WorkerId::MAX), h))
            .filter(move |&(w, _)| Some(w) != except)
    }

    /// Recalls every core of `cores` not yet recalled since its last grant.
    fn recall(
        &mut self,
        key: QuotaKey,
        except: Option<WorkerId>,
        out: &mut Vec<(WorkerId, FromCoordinator)>,
    ) {
        for (w, h) in self.cores.iter_mut().enumerate() {
            let w = WorkerId::try_from(w).unwrap_or(WorkerId::MAX);
            if h.open > 0 && !h.recalled && Some(w) != except {
                h.recalled = true;
                out.push((w, FromCoordinator::Recall(key)));
            }
        }
    }

    /// A calendar window (a budget) refused `requester` tokens. If another core still holds
    /// a lease of it (live, expired but not yet returned, or recalled and on its way back),
    /// what it holds may be all that is left: recalls it (once) and turns `deny` into "retry
    /// at the next slot", by when the tokens are back, instead of "retry when the period
    /// ends". The requester's own lease is left alone: it asked for what its lease in hand
    /// lacks (a low-water top-up, or the rest of a reservation), and it gave back its
    /// next-slot lease before asking. A sliding window frees within the minute anyway and is
    /// left alone.
    pub(crate) fn reclaim_for(
        &mut self,
        deny: &mut Deny,
        window: Window,
        requester: WorkerId,
        cur: u64,
        out: &mut Vec<(WorkerId, FromCoordinator)>,
    ) {
        if !window.is_calendar() || deny.reason != LimitKind::Tokens {
            return;
        }
        self.expire(cur);
        if self.open_except(Some(requester)).next().is_none() {
            // Nobody else holds anything: what is counted is used (or reserved by requests
            // in flight), and it comes back only when the period ends.
            return;
        }
        self.recall(deny.key, Some(requester), out);
        deny.retry_at_ms = deny.retry_at_ms.min((cur + 1) * SLOT_MS);
    }

    /// Whether any core may still hold a lease.
    pub(crate) fn live(&mut self, cur: u64) -> bool {
        self.expire(cur);
        self.open_except(None).next().is_some()
    }

    /// The key's window holds `peak` tokens at `cur`: if that is over the limit, recalls
    /// every core holding a lease of it that was not recalled since its last grant.
    pub(crate) fn recall_if_over(
        &mut self,
        key: QuotaKey,
        peak: u64,
        cur: u64,
        out: &mut Vec<(WorkerId, FromCoordinator)>,
    ) {
        if self.tok_limit == 0 || peak <= self.tok_limit || !self.live(cur) {
            return;
        }
        self.recall(key, None, out);
    }
}

/// A key's token counts: the sliding minute of quota rules, or a calendar period (budgets).
/// Always boxed ([`KeyState::tokens`]), so the size difference costs nothing.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Tokens {
    Sliding(Ring),
    Calendar(CalWindow),
}

impl Tokens {
    fn new(window: Window, cur: u64, cal: &Calendar, seed: Option<Seed>) -> Tokens {
        match window {
            Window::Minute => Tokens::Sliding(Ring::new(cur)),
            w => Tokens::Calendar(CalWindow::new(
                cal,
                w,
                cur,
                seed.map(|s| (s.period_unix_ms, s.count)),
            )),
        }
    }

    fn window(&self) -> Window {
        match self {
            Tokens::Sliding(_) => Window::Minute,
            Tokens::Calendar(c) => c.window(),
        }
    }

    fn advance(&mut self, cur: u64, cal: &Calendar) {
        match self {
            Tokens::Sliding(r) => r.advance(cur),
            Tokens::Calendar(c) => c.advance(cal, cur),
        }
    }

    fn get(&self, slot: u64) -> u64 {
        match self {
            Tokens::Sliding(r) => u64::from(r.get(slot)),
            Tokens::Calendar(c) => c.get(slot),
        }
    }

    fn add(&mut self, slot: u64, n: u64) {
        match self {
            Tokens::Sliding(r) => r.add(slot, sat32(n)),
            Tokens::Calendar(c) => c.add(slot, n),
        }
    }

    fn sub(&mut self, slot: u64, n: u64) {
        match self {
            Tokens::Sliding(r) => r.sub(slot, sat32(n)),
            Tokens::Calendar(c) => c.sub(slot, n),
        }
    }

    fn available(&self, cur: u64, slot: u64, limit: u64) -> u64 {
        match self {
            Tokens::Sliding(r) => u64::from(r.available(cur, slot, sat32(limit), None)),
            Tokens::Calendar(c) => c.available(slot, limit),
        }
    }

    fn next_free(&self, cur: u64, need: u64, limit: u64) -> u64 {
        match self {
            Tokens::Sliding(r) => r.next_free(cur, sat32(need), sat32(limit), None),
            Tokens::Calendar(c) => c.next_free(cur, need, limit),
        }
    }

    fn peak(&self, cur: u64) -> u64 {
        match self {
            Tokens::Sliding(r) => r.peak(cur),
            Tokens::Calendar(c) => c.peak(cur),
        }
    }

    fn reset_slot(&self, cur: u64) -> u64 {
        match self {
            Tokens::Sliding(r) => r.reset_slot(cur),
            Tokens::Calendar(c) => c.reset_slot(),
        }
    }

    /// The calendar period `slot` is counted in (UNIX ms of its start; 0: a minute window).
    fn period_unix_ms(&self, slot: u64) -> u64 {
        match self {
            Tokens::Sliding(_) => 0,
            Tokens::Calendar(c) => c.period_of(slot).start_unix_ms,
        }
    }
}

/// A count that fits the sliding ring (minute limits are `u32`; an overrun saturates).
fn sat32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What a calendar key had counted in a period when it was last seen: the persisted use at
/// start, or a key forgotten while idle (its count must outlive the minute a key is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seed {
    /// `None`: not known yet (persisted use; the first lease request names it).
    pub window: Option<Window>,
    pub period_unix_ms: u64,
    pub count: u64,
}

#[derive(Debug)]
struct KeyState {
    /// Highest slot anything was counted in: the key can be forgotten once it left the span.
    last_slot: u64,
    requests: Ring,
    /// Only for keys with a token limit.
    tokens: Option<Box<Tokens>>,
    holders: Holders,
}

impl KeyState {
    fn advance(&mut self, cur: u64, cal: &Calendar) {
        self.requests.advance(cur);
        if let Some(t) = &mut self.tokens {
            t.advance(cur, cal);
        }
    }

    fn reset_at(&self, cur: u64) -> u64 {
        let t = self.tokens.as_ref().map_or(cur, |t| t.reset_slot(cur));
        self.requests.reset_slot(cur).max(t).saturating_mul(SLOT_MS)
    }

    /// The calendar count worth keeping when the key is forgotten at `cur`.
    fn seed(&self, cur: u64) -> Option<Seed> {
        let Some(Tokens::Calendar(c)) = self.tokens.as_deref() else {
            return None;
        };
        let (p, count) = c.current();
        (count > 0 && cur < p.end).then_some(Seed {
            window: Some(c.window()),
            period_unix_ms: p.start_unix_ms,
            count,
        })
    }
}

/// The token counts of `st` for `window`, made (from a seed) when missing or when a reload
/// moved the rule to another window.
fn tokens_mut<'a>(
    st: &'a mut KeyState,
    key: QuotaKey,
    window: Window,
    cur: u64,
    cal: &Calendar,
    seeds: &mut KeyMap<Seed>,
) -> &'a mut Tokens {
    if st.tokens.as_ref().is_some_and(|t| t.window() != window) {
        st.tokens = None;
    }
    st.tokens.get_or_insert_with(|| {
        let seed = seeds.remove(&key);
        Box::new(Tokens::new(window, cur, cal, seed))
    })
}

#[derive(Debug)]
pub(crate) struct LocalCoordinator {
    workers: u32,
    keys: KeyMap<KeyState>,
    last_sweep_ms: u64,
    /// Calendar periods of budgets (time zone and epoch).
    calendar: Calendar,
    /// Counts of calendar keys not in `keys` (see [`Seed`]).
    seeds: KeyMap<Seed>,
    last_seed_sweep_ms: u64,
}

impl LocalCoordinator {
    /// A coordinator for `workers` cores (lease sizes are split over them).
    pub fn new(workers: usize) -> Self {
        Self::with_calendar(workers, Calendar::default())
    }

    /// A coordinator whose calendar windows follow `calendar`.
    pub fn with_calendar(workers: usize, calendar: Calendar) -> Self {
        LocalCoordinator {
            workers: u32::try_from(workers.max(1)).unwrap_or(u32::MAX),
            keys: KeyMap::default(),
            last_sweep_ms: 0,
            calendar,
            seeds: KeyMap::default(),
            last_seed_sweep_ms: 0,
        }
    }

    /// Starts calendar keys from their persisted use: (key, period start UNIX ms, count).
    pub fn seed(&mut self, seeds: impl IntoIterator<Item = (QuotaKey, u64, u64)>) {
        for (key, period_unix_ms, count) in seeds {
            self.seeds.insert(
                key,
                Seed {
                    window: None,
                    period_unix_ms,
                    count,
                },
            );
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
    pub fn counted(&self, key: QuotaKey, slot: u64) -> (u32, u64) {
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
                let mut reply = self.lease(&req, now_ms);
                let holders = &mut self.state(req.key, cur).holders;
                match &mut reply {
                    FromCoordinator::Grant(g) => {
                        holders.granted(req.worker, g.slot, req.limits.tokens);
                    }
                    FromCoordinator::Deny(d) => {
                        holders.reclaim_for(d, req.limits.window, req.worker, cur, out);
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
                if let Some(st) = self.keys.get_mut(&key) {
                    st.advance(cur, &self.calendar);
                    st.requests.sub(slot, requests);
                    if let Some(t) = &mut st.tokens {
                        t.sub(slot, tokens);
                    }
                    st.holders.returned(worker, grants);
                }
            }
            ToCoordinator::Charge {
                key,
                worker,
                tokens,
            } => {
                let peak = self.charge(key, tokens, now_ms);
                let st = self.state(key, cur);
                st.holders.recall_if_over(key, peak, cur, out);
                out.push((worker, FromCoordinator::Charged(key)));
            }
        }
    }

    /// Counts `tokens` used beyond leases in the current slot; returns the window's peak
    /// (see [`Ring::peak`]) afterwards.
    pub(crate) fn charge(&mut self, key: QuotaKey, tokens: u64, now_ms: u64) -> u64 {
        let cur = slot_of(now_ms);
        // A key forgotten since its lease was granted keeps its calendar window (from its seed).
        let window = match (self.keys.get(&key), self.seeds.get(&key)) {
            (Some(st), _) => st.tokens.as_ref().map_or(Window::Minute, |t| t.window()),
            (None, Some(seed)) => seed.window.unwrap_or(Window::Minute),
            (None, None) => Window::Minute,
        };
        let LocalCoordinator {
            keys,
            calendar,
            seeds,
            ..
        } = self;
        let st = state(keys, calendar, key, cur);
        st.last_slot = st.last_slot.max(cur);
        let t = tokens_mut(st, key, window, cur, calendar, seeds);
        t.add(cur, tokens);
        t.peak(cur)
    }

    /// Forgets keys whose counts have all left the window. Call it every few hundred ms.
    pub fn tick(&mut self, now_ms: u64) {
        if now_ms < self.last_sweep_ms + SWEEP_INTERVAL_MS {
            return;
        }
        self.last_sweep_ms = now_ms;
        let cur = slot_of(now_ms);
        let seeds = &mut self.seeds;
        self.keys.retain(|&key, st| {
            let keep = st.last_slot + WINDOW_SLOTS >= cur;
            if !keep {
                if let Some(seed) = st.seed(cur) {
                    seeds.insert(key, seed);
                }
            }
            keep
        });
        if now_ms >= self.last_seed_sweep_ms + SEED_SWEEP_INTERVAL_MS {
            self.last_seed_sweep_ms = now_ms;
            let cal = &self.calendar;
            self.seeds.retain(|_, s| match s.window {
                Some(w) => cal.period(w, cur).start_unix_ms == s.period_unix_ms,
                None => true,
            });
        }
    }

    fn state(&mut self, key: QuotaKey, cur: u64) -> &mut KeyState {
        state(&mut self.keys, &self.calendar, key, cur)
    }

    fn lease(&mut self, req: &LeaseRequest, now_ms: u64) -> FromCoordinator {
        let cur = slot_of(now_ms);
        // A prefetch is for the next slot; anything else (or a late prefetch) for this one.
        let slot = slot_of(req.at_ms).clamp(cur, cur + 1);
        let share = self.workers.saturating_mul(LEASE_SHARE);
        let limits = req.limits;
        let LocalCoordinator {
            keys,
            calendar,
            seeds,
            ..
        } = self;
        let st = state(keys, calendar, req.key, cur);

        let unlimited = limits.requests == UNLIMITED_REQUESTS;
        let req_avail = match unlimited {
            true => UNLIMITED_REQUESTS,
            false => st
                .requests
                .available(cur, slot, limits.requests, limits.burst),
        };
        if req_avail == 0 {
            let free = st.requests.next_free(cur, 1, limits.requests, limits.burst);
            return deny(
                req.key,
                LimitKind::Requests,
                u64::from(limits.requests),
                free,
                st.reset_at(cur),
            );
        }
        let (mut tokens, mut tokens_left, mut period_unix_ms) = (u64::MAX, u64::MAX, 0);
        if let Some(tok_limit) = limits.tokens {
            let need = req.tokens_needed.clamp(1, tok_limit);
            let t = tokens_mut(st, req.key, limits.window, cur, calendar, seeds);
            let tok_avail = t.available(cur, slot, tok_limit);
            if tok_avail < need {
                let free = t.next_free(cur, need, tok_limit);
                return deny(
                    req.key,
                    LimitKind::Tokens,
                    tok_limit,
                    free,
                    st.reset_at(cur),
                );
            }
            tokens = (tok_avail / u64::from(share)).max(need).min(tok_avail);
            t.add(slot, tokens);
            tokens_left = tok_avail - tokens;
            period_unix_ms = t.period_unix_ms(slot);
        }
        let requests = match unlimited {
            true => UNLIMITED_REQUESTS,
            false => (req_avail / share).clamp(1, req_avail),
        };
        if !unlimited {
            st.requests.add(slot, requests);
        }
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
            tokens_left,
            period_unix_ms,
        })
    }
}

/// `key`'s state at current slot `cur` (made when missing).
fn state<'a>(
    keys: &'a mut KeyMap<KeyState>,
    cal: &Calendar,
    key: QuotaKey,
    cur: u64,
) -> &'a mut KeyState {
    let st = keys.entry(key).or_insert_with(|| KeyState {
        last_slot: cur,
        requests: Ring::new(cur),
        tokens: None,
        holders: Holders::default(),
    });
    st.advance(cur, cal);
    st
}

fn deny(key: QuotaKey, reason: LimitKind, limit: u64, free: u64, reset: u64) -> FromCoordinator {
    FromCoordinator::Deny(Deny {
        key,
        reason,
        limit,
        retry_at_ms: free.saturating_mul(SLOT_MS),
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
            other => panic!("not a grant: {other:?}"),
        }
    }

    const L10: Limits = Limits {
        requests: 10,
        tokens: None,
        burst: None,
        window: crate::quota::Window::Minute,
    };

    #[test]
    fn leases_shrink_and_never_exceed_the_limit() {
        let mut c = LocalCoordinator::new(1);
        let sizes: Vec<u32> = (0..6)
            .map_while(|_| match lease(&mut c, L10, 100, 100) {
                FromCoordinator::Grant(g) => Some(g.requests),
                _ => None,
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
                worker: 3,
                slot: g.slot,
                requests: g.requests,
                tokens: 0,
                grants: 1,
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
            window: crate::quota::Window::Minute,
        };
        let g = grant(lease(&mut c, lim, 0, 0));
        assert_eq!(g.tokens, 500);
        let mut out = Vec::new();
        c.handle(
            ToCoordinator::Charge {
                key: KEY,
                worker: 3,
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

    const T100: Limits = Limits {
        requests: 1_000,
        tokens: Some(100),
        burst: None,
        window: crate::quota::Window::Minute,
    };

    fn lease_for(c: &mut LocalCoordinator, worker: WorkerId, at: u64, now: u64) -> Grant {
        let mut out = Vec::new();
        let req = LeaseRequest {
            worker,
            key: KEY,
            rule: RuleId(0),
            limits: T100,
            at_ms: at,
            tokens_needed: 1,
        };
        c.handle(ToCoordinator::Lease(req), now, &mut out);
        grant(out[0].1)
    }

    fn charge(c: &mut LocalCoordinator, tokens: u64, now: u64) -> Vec<(WorkerId, FromCoordinator)> {
        let mut out = Vec::new();
        let charge = ToCoordinator::Charge {
            key: KEY,
            worker: 0,
            tokens,
        };
        c.handle(charge, now, &mut out);
        // Answered last, after the recalls it caused.
        assert_eq!(out.pop(), Some((0, FromCoordinator::Charged(KEY))));
        out
    }

    #[test]
    fn a_charge_over_the_limit_recalls_every_core_holding_a_lease_once() {
        let mut c = LocalCoordinator::new(3);
        // Cores 0 and 2 hold leases (2 also one for the next slot); core 1 none.
        let a = lease_for(&mut c, 0, 100, 100);
        let b = lease_for(&mut c, 2, 100, 100);
        let n = lease_for(&mut c, 2, 600, 450);
        assert_eq!((a.tokens, b.tokens, n.tokens), (16, 14, 11));
        // 41 leased: up to 59 more fit without recalling anything.
        assert!(charge(&mut c, 59, 460).is_empty());
        assert_eq!(
            charge(&mut c, 1, 470),
            [
                (0, FromCoordinator::Recall(KEY)),
                (2, FromCoordinator::Recall(KEY))
            ]
        );
        // Recalled once: later charges have nobody left to recall.
        assert!(charge(&mut c, 30, 480).is_empty());
        // A core that asks again is denied, and is not a holder.
        let mut out = Vec::new();
        let req = LeaseRequest {
            worker: 1,
            key: KEY,
            rule: RuleId(0),
            limits: T100,
            at_ms: 490,
            tokens_needed: 1,
        };
        c.handle(ToCoordinator::Lease(req), 490, &mut out);
        assert!(matches!(out[..], [(1, FromCoordinator::Deny(_))]));
        assert!(charge(&mut c, 1, 495).is_empty());
    }

    #[test]
    fn a_charge_counts_against_the_next_slot_spans_too() {
        let mut c = LocalCoordinator::new(1);
        // A next-slot lease of 50 and a charge of 51 in this slot: the span ending at the next
        // slot holds 101.
        let n = lease_for(&mut c, 0, 600, 500);
        assert_eq!((n.slot, n.tokens), (1, 50));
        assert!(charge(&mut c, 50, 510).is_empty());
        assert_eq!(charge(&mut c, 1, 520), [(0, FromCoordinator::Recall(KEY))]);
    }

    fn release(c: &mut LocalCoordinator, worker: WorkerId, slot: u64, grants: u32, now: u64) {
        let mut out = Vec::new();
        let msg = ToCoordinator::Release {
            key: KEY,
            worker,
            slot,
            requests: 0,
            tokens: 0,
            grants,
        };
        c.handle(msg, now, &mut out);
        assert!(out.is_empty());
    }

    /// A lease counts as held from its grant until its core reports it ended, whatever the
    /// clock says: one whose slot is over but that its core has not returned yet still holds
    /// what it was counted with, so a charge over the limit recalls it. Top-ups merge grants
    /// into one lease, whose end returns them all; a recalled core is recalled once.
    #[test]
    fn holders_count_grants_until_their_leases_end() {
        let mut c = LocalCoordinator::new(2);
        lease_for(&mut c, 1, 0, 0);
        assert_eq!(
            charge(&mut c, 200, 700),
            [(1, FromCoordinator::Recall(KEY))]
        );
        assert!(charge(&mut c, 1, 710).is_empty(), "recalled once");
        release(&mut c, 1, 0, 1, 720);
        assert!(!c.keys[&KEY].holders.clone().live(1));
        // Two grants of one slot on core 0 (a top-up): ending one leaves the lease held.
        let mut c = LocalCoordinator::new(2);
        lease_for(&mut c, 0, 0, 0);
        lease_for(&mut c, 0, 0, 0);
        release(&mut c, 0, 0, 1, 10);
        // A partial return (0 grants) ends nothing either.
        release(&mut c, 0, 0, 0, 15);
        assert_eq!(charge(&mut c, 200, 20), [(0, FromCoordinator::Recall(KEY))]);
        release(&mut c, 0, 0, 1, 30);
        assert!(!c.keys[&KEY].holders.clone().live(0));
        // Grants never returned (a core that stopped) are forgotten a minute on.
        let mut h = Holders::default();
        h.granted(65, 4, Some(10));
        assert!(h.live(4 + HOLDERS_STALE_SLOTS));
        assert!(!h.live(5 + HOLDERS_STALE_SLOTS));
        let mut out = Vec::new();
        let mut h = Holders::default();
        h.granted(65, 4, Some(10));
        h.recall_if_over(KEY, 11, 4, &mut out);
        assert_eq!(out, [(65, FromCoordinator::Recall(KEY))]);
        let mut none = Holders::default();
        none.granted(0, 4, None);
        none.recall_if_over(KEY, u64::MAX, 4, &mut out);
        assert_eq!(out.len(), 1, "no token limit: nothing to recall");
    }

    const DAY100: Limits = Limits {
        requests: UNLIMITED_REQUESTS,
        tokens: Some(100),
        burst: None,
        window: crate::quota::Window::Day,
    };

    fn ask_day(
        c: &mut LocalCoordinator,
        worker: WorkerId,
        now: u64,
    ) -> Vec<(WorkerId, FromCoordinator)> {
        let mut out = Vec::new();
        let req = LeaseRequest {
            worker,
            key: KEY,
            rule: RuleId(0),
            limits: DAY100,
            at_ms: now,
            tokens_needed: 1,
        };
        c.handle(ToCoordinator::Lease(req), now, &mut out);
        out
    }

    fn give_back(
        c: &mut LocalCoordinator,
        worker: WorkerId,
        slot: u64,
        tokens: u64,
        grants: u32,
        now: u64,
    ) {
        let msg = ToCoordinator::Release {
            key: KEY,
            worker,
            slot,
            requests: 0,
            tokens,
            grants,
        };
        c.handle(msg, now, &mut Vec::new());
    }

    /// A budget refusal while another core may still hold what is left waits for it ("retry
    /// at the next slot"), whatever state that core's lease is in: recalled and on its way
    /// back, or expired but not yet returned. The end of the period is named only once every
    /// other core has returned its leases and what is counted is use.
    #[test]
    fn a_budget_refusal_names_the_period_end_only_once_other_leases_are_back() {
        let day_end = 86_400_000;
        let deny = |out: &[(WorkerId, FromCoordinator)]| match out.last() {
            Some(&(_, FromCoordinator::Deny(d))) => d.retry_at_ms,
            other => panic!("not a denial: {other:?}"),
        };
        // Recalled, on its way back: core 1's charge takes the count over (its own and core
        // 0's leases held 43 of it) and it asks again before core 0 has returned its lease.
        let mut c = LocalCoordinator::new(2);
        let now = SLOT_MS + 10;
        assert!(matches!(
            ask_day(&mut c, 0, now)[..],
            [(0, FromCoordinator::Grant(Grant { tokens: 25, .. }))]
        ));
        assert!(matches!(
            ask_day(&mut c, 1, now)[..],
            [(1, FromCoordinator::Grant(Grant { tokens: 18, .. }))]
        ));
        let mut out = Vec::new();
        c.handle(
            ToCoordinator::Charge {
                key: KEY,
                worker: 1,
                tokens: 75,
            },
            now,
            &mut out,
        );
        assert_eq!(
            out,
            [
                (0, FromCoordinator::Recall(KEY)),
                (1, FromCoordinator::Recall(KEY)),
                (1, FromCoordinator::Charged(KEY)),
            ]
        );
        give_back(&mut c, 1, 1, 18, 1, now);
        let out = ask_day(&mut c, 1, now);
        assert_eq!(
            deny(&out),
            2 * SLOT_MS,
            "core 0's 25 are on their way: {out:?}"
        );
        assert_eq!(out.len(), 1, "recalled once");
        give_back(&mut c, 0, 1, 25, 1, now + 5);
        // 75 used of 100: granted now that nothing else is out.
        assert!(matches!(
            ask_day(&mut c, 1, now + 6)[..],
            [(1, FromCoordinator::Grant(_))]
        ));
        // Once the charges use the day up and every lease is back, the period end it is.
        give_back(&mut c, 1, 1, 0, 1, now + 7);
        c.handle(
            ToCoordinator::Charge {
                key: KEY,
                worker: 1,
                tokens: 40,
            },
            now + 8,
            &mut Vec::new(),
        );
        assert_eq!(deny(&ask_day(&mut c, 0, now + 9)), day_end);
        // Expired but not yet returned: core 0's leases of slot 1 hold the rest when core 1
        // asks in slot 2 (core 0 returns them at its next tick).
        let mut c = LocalCoordinator::new(2);
        let mut grants = 0;
        while let [(0, FromCoordinator::Grant(_))] = ask_day(&mut c, 0, now)[..] {
            grants += 1;
        }
        let later = 2 * SLOT_MS + 10;
        let out = ask_day(&mut c, 1, later);
        assert_eq!(out[0], (0, FromCoordinator::Recall(KEY)));
        assert_eq!(deny(&out), 3 * SLOT_MS);
        give_back(&mut c, 0, 1, 100, grants, later + 50);
        assert!(matches!(
            ask_day(&mut c, 1, later + 60)[..],
            [(1, FromCoordinator::Grant(_))]
        ));
    }

    /// A budget (calendar window) refusing a core recalls the other cores' leases and says
    /// "retry at the next slot"; the asking core's own lease is never recalled (it asked for
    /// what that lease lacks), and when it is the only holder the refusal stands as it is.
    #[test]
    fn a_budget_refusal_recalls_the_other_holders_only() {
        let ask = ask_day;
        let day_end = 86_400_000;
        // (holders before the refusal, the core refused, recalled, retry at)
        let cases: [(&[WorkerId], WorkerId, &[WorkerId], u64); 6] = [
            (&[0], 0, &[], day_end),
            (&[1], 1, &[], day_end),
            (&[0, 1], 0, &[1], 2 * SLOT_MS),
            (&[0, 1], 1, &[0], 2 * SLOT_MS),
            (&[0, 2], 1, &[0, 2], 2 * SLOT_MS),
            (&[2, 0, 1], 2, &[0, 1], 2 * SLOT_MS),
        ];
        for (holders, refused, recalled, retry_at) in cases {
            let mut c = LocalCoordinator::new(3);
            // Each holder takes a lease until nothing is left (one core: 50, 25, ...).
            let now = SLOT_MS + 100;
            let mut granted = 0;
            while granted < 100 {
                for &w in holders {
                    if let [(_, FromCoordinator::Grant(g))] = ask(&mut c, w, now)[..] {
                        granted += g.tokens;
                    }
                }
            }
            let out = ask(&mut c, refused, now);
            let (recalls, reply) = out.split_at(out.len() - 1);
            let FromCoordinator::Deny(d) = reply[0].1 else {
                panic!("refused: {out:?}");
            };
            let got: Vec<WorkerId> = recalls.iter().map(|&(w, _)| w).collect();
            assert_eq!(got, recalled, "{holders:?} refusing {refused}");
            assert!(recalls.iter().all(|r| r.1 == FromCoordinator::Recall(KEY)));
            assert_eq!(d.retry_at_ms, retry_at, "{holders:?} refusing {refused}");
        }
    }
}
