//! One worker's quota shard: the leases this core holds, per key (data path; no locks).
//!
//! The engine calls [`QuotaShard::check`] per limited request, [`QuotaShard::charge_tokens`]
//! when a response finishes, [`QuotaShard::apply`] for each coordinator reply, and
//! [`QuotaShard::tick`] on its timer (every ≤ 100 ms); after any of these it sends what
//! [`QuotaShard::drain_requests`] yields to the coordinator.

use super::{
    secs_until, Admitted, Decision, FromCoordinator, Grant, KeyMap, LeaseRequest, Limits,
    QuotaError, QuotaKey, QuotaRule, RuleId, Ticket, ToCoordinator, WorkerId, KEEP_WARM_MS,
    LEASE_RETRY_MS, PREFETCH_MS, SHARD_IDLE_MS,
};

/// Ask for more once a lease is down to this fraction (1/N) of its size.
const LOW_WATER_DIVISOR: u32 = 4;

#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    slot: u64,
    from_ms: u64,
    /// 0: no lease.
    until_ms: u64,
    requests: u32,
    tokens: u64,
    size_requests: u32,
    size_tokens: u64,
    /// Start (UNIX ms) of the calendar period the lease is counted in (0: minute window).
    period_unix_ms: u64,
    /// Coordinator grants merged into this lease (top-ups add to it); its end returns them
    /// all (see [`ToCoordinator::Release`]).
    grants: u32,
}

impl Lease {
    fn of(g: &Grant) -> Self {
        Lease {
            slot: g.slot,
            from_ms: g.valid_from_ms,
            until_ms: g.valid_until_ms,
            requests: g.requests,
            tokens: g.tokens,
            size_requests: g.requests,
            size_tokens: g.tokens,
            period_unix_ms: g.period_unix_ms,
            grants: 1,
        }
    }

    fn is_some(&self) -> bool {
        self.until_ms != 0
    }

    fn live(&self, now_ms: u64) -> bool {
        self.from_ms <= now_ms && now_ms < self.until_ms
    }

    fn top_up(&mut self, g: &Grant) {
        self.requests = self.requests.saturating_add(g.requests);
        self.tokens = self.tokens.saturating_add(g.tokens);
        self.size_requests = self.size_requests.max(self.requests);
        self.size_tokens = self.size_tokens.max(self.tokens);
        self.grants = self.grants.saturating_add(1);
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    rule: RuleId,
    limits: Limits,
    cur: Lease,
    next: Lease,
    pending_since_ms: Option<u64>,
    /// Last denial; rejects locally until its `retry_at_ms`.
    denied: Option<super::Deny>,
    /// Until when `denied` is applied without asking the coordinator again.
    denied_recheck_ms: u64,
    remaining: u32,
    reset_at_ms: u64,
    /// Tokens left in the window, as last granted less what this core used since.
    tokens_left: u64,
    /// Overrun charged while a lease request was pending: the grant that answers it was sized
    /// before the charge, so this much of it goes straight back.
    owed: u64,
    last_used_ms: u64,
}

impl Entry {
    fn new(rule: &QuotaRule, now_ms: u64) -> Self {
        Entry {
            rule: rule.id,
            limits: rule.limits,
            cur: Lease::default(),
            next: Lease::default(),
            pending_since_ms: None,
            denied: None,
            denied_recheck_ms: 0,
            remaining: 0,
            reset_at_ms: now_ms,
            tokens_left: u64::MAX,
            owed: 0,
            last_used_ms: now_ms,
        }
    }

    fn token_limited(&self) -> bool {
        self.limits.tokens.is_some()
    }
}

#[derive(Debug)]
pub struct QuotaShard {
    worker: WorkerId,
    keys: KeyMap<Entry>,
    outbox: Vec<ToCoordinator>,
    /// Charges sent to the coordinator, and those it answered ([`FromCoordinator::Charged`]);
    /// answers come back in order.
    charges_sent: u64,
    charges_counted: u64,
}

impl QuotaShard {
    pub fn new(worker: WorkerId) -> Self {
        QuotaShard {
            worker,
            keys: KeyMap::default(),
            outbox: Vec::new(),
            charges_sent: 0,
            charges_counted: 0,
        }
    }

    /// How many charges this core has sent so far (see [`Self::counted`]).
    pub fn charges_sent(&self) -> u64 {
        self.charges_sent
    }

    /// Whether the coordinator has counted the first `sent` charges this core sent.
    pub fn counted(&self, sent: u64) -> bool {
        self.charges_counted >= sent
    }

    /// Keys this core currently tracks.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Decides one request for `key` under `rule` at `now_ms`, taking `reserve_tokens`
    /// ([`QuotaRule::reservation`]) up front. Never blocks; see the module docs for what each
    /// [`Decision`] asks of the engine.
    #[inline]
    pub fn check(
        &mut self,
        key: QuotaKey,
        rule: &QuotaRule,
        reserve_tokens: u64,
        now_ms: u64,
    ) -> Decision {
        let worker = self.worker;
        let outbox = &mut self.outbox;
        let e = self
            .keys
            .entry(key)
            .or_insert_with(|| Entry::new(rule, now_ms));
        e.last_used_ms = now_ms;
        e.limits = rule.limits;
        e.rule = rule.id;
        roll(e, worker, key, now_ms, outbox);

        let need_tokens = reserve_tokens.max(1);
        let tokens_ok = !e.token_limited() || e.cur.tokens >= need_tokens;
        if e.cur.live(now_ms) && e.cur.requests > 0 && tokens_ok {
            e.cur.requests -= 1;
            if e.token_limited() {
                e.cur.tokens -= reserve_tokens;
            }
            e.remaining = e.remaining.saturating_sub(1);
            let admitted = Admitted {
                ticket: Ticket {
                    key,
                    slot: e.cur.slot,
                    reserved: reserve_tokens,
                    period_unix_ms: e.cur.period_unix_ms,
                },
                limit: e.limits.requests,
                remaining: e.remaining,
                reset_s: secs_until(e.reset_at_ms, now_ms),
                tokens_left: e.tokens_left,
            };
            prefetch(e, worker, key, now_ms, outbox);
            return Decision::Admit(admitted);
        }
        // A budget's next-slot lease is no use to this request: it goes back, so that the
        // coordinator answers on what is really left (it would otherwise refuse until the
        // period ends on tokens this core holds), and a denial given while it was held no
        // longer stands (see the module docs of `quota`, "Budgets").
        if e.limits.window.is_calendar()
            && e.token_limited()
            && e.next.is_some()
            && e.next.tokens > 0
        {
            outbox.push(release_all(worker, key, &e.next));
            e.next = Lease::default();
            e.denied = None;
        }
        // A denial is trusted locally only until the slot after it was given ends: other cores
        // return unused leases at slot ends, so quota can come back before `retry_at`.
        if let Some(d) = e
            .denied
            .filter(|d| now_ms < d.retry_at_ms && now_ms < e.denied_recheck_ms)
        {
            return Decision::Reject(QuotaError {
                rule: e.rule,
                reason: d.reason,
                retry_after_s: secs_until(d.retry_at_ms, now_ms).max(1),
                retry_at_ms: d.retry_at_ms,
                limit: d.limit,
                reset_s: secs_until(d.reset_at_ms, now_ms),
            });
        }
        // Ask only for what the lease in hand lacks, so a reservation is not refused while
        // part of it sits here.
        let held = if e.cur.live(now_ms) { e.cur.tokens } else { 0 };
        ask(
            e,
            worker,
            key,
            now_ms,
            now_ms,
            need_tokens.saturating_sub(held).max(1),
            outbox,
        );
        Decision::NeedLease
    }

    /// Counts what a finished response really used (`used` tokens) against its request's
    /// ticket: refunds an unused reservation, charges an overrun.
    ///
    /// An overrun is taken from the lease in hand first; what that lacks is charged to the
    /// coordinator in the current slot, and the same amount is taken out of this core's
    /// next-slot lease (and released there): that lease was sized before these tokens were
    /// used, so leaving it whole would admit on quota already spent.
    pub fn charge_tokens(&mut self, ticket: Ticket, used: u64, now_ms: u64) {
        let key = ticket.key;
        let worker = self.worker;
        let mut e = self.keys.get_mut(&key);
        if e.as_ref().is_some_and(|e| !e.token_limited()) {
            return;
        }
        if let Some(e) = e.as_deref_mut() {
            // Leases that expired since the last check go back before anything is taken.
            roll(e, worker, key, now_ms, &mut self.outbox);
            e.tokens_left = e
                .tokens_left
                .saturating_sub(used.saturating_sub(ticket.reserved));
        }
        if used < ticket.reserved {
            let refund = ticket.reserved - used;
            match e {
                Some(e) if e.cur.slot == ticket.slot && e.cur.live(now_ms) => {
                    e.cur.tokens = e.cur.tokens.saturating_add(refund);
                }
                // The lease is gone (and ended): those tokens were never consumed in its slot.
                _ => self.outbox.push(ToCoordinator::Release {
                    key,
                    worker,
                    slot: ticket.slot,
                    requests: 0,
                    tokens: refund,
                    grants: 0,
                }),
            }
            return;
        }
        let mut over = used - ticket.reserved;
        if over == 0 {
            return;
        }
        if let Some(e) = e {
            if e.cur.live(now_ms) {
                let take = over.min(e.cur.tokens);
                e.cur.tokens -= take;
                over -= take;
            }
            let shrink = over.min(e.next.tokens);
            if shrink > 0 {
                e.next.tokens -= shrink;
                // Released before the charge, so the coordinator judges the window (and
                // recalls other cores' leases) on the final counts.
                self.outbox.push(ToCoordinator::Release {
                    key,
                    worker,
                    slot: e.next.slot,
                    requests: 0,
                    tokens: shrink,
                    grants: 0,
                });
            }
        }
        if over > 0 {
            if let Some(e) = self
                .keys
                .get_mut(&key)
                .filter(|e| e.pending_since_ms.is_some())
            {
                e.owed = e.owed.saturating_add(over);
            }
            self.charges_sent += 1;
            self.outbox.push(ToCoordinator::Charge {
                key,
                worker,
                tokens: over,
            });
        }
    }

    /// Takes a coordinator reply; returns the key whose parked requests should re-`check`.
    pub fn apply(&mut self, msg: FromCoordinator, now_ms: u64) -> QuotaKey {
        let key = msg.key();
        let worker = self.worker;
        if let FromCoordinator::Charged(_) = msg {
            self.charges_counted += 1;
            return key;
        }
        let Some(e) = self.keys.get_mut(&key) else {
            if let FromCoordinator::Grant(g) = msg {
                // Forgotten meanwhile: give the grant straight back.
                self.outbox.push(release_all(worker, key, &Lease::of(&g)));
            }
            return key;
        };
        match msg {
            FromCoordinator::Charged(_) => {}
            FromCoordinator::Recall(_) => {
                // Not an answer to this core's lease request: one may still be pending.
                let token_limited = e.token_limited();
                for lease in [&mut e.cur, &mut e.next] {
                    if lease.is_some() {
                        let tokens = if token_limited { lease.tokens } else { 0 };
                        self.outbox.push(ToCoordinator::Release {
                            key,
                            worker,
                            slot: lease.slot,
                            requests: lease.requests,
                            tokens,
                            grants: lease.grants,
                        });
                        *lease = Lease::default();
                    }
                }
                e.remaining = 0;
            }
            FromCoordinator::Deny(d) => {
                e.pending_since_ms = None;
                e.owed = 0;
                e.denied = Some(d);
                e.denied_recheck_ms = (super::slot_of(now_ms) + 2) * super::SLOT_MS;
            }
            FromCoordinator::Grant(mut g) => {
                e.pending_since_ms = None;
                e.denied = None;
                if e.owed > 0 && g.tokens != u64::MAX {
                    // Sized before this core's overrun was charged: shrink it by as much
                    // (rule 1 of the module docs, for a lease that was still on its way).
                    let take = e.owed.min(g.tokens);
                    g.tokens -= take;
                    self.outbox.push(ToCoordinator::Release {
                        key,
                        worker,
                        slot: g.slot,
                        requests: 0,
                        tokens: take,
                        grants: 0,
                    });
                }
                e.owed = 0;
                roll(e, worker, key, now_ms, &mut self.outbox);
                if now_ms >= g.valid_until_ms {
                    self.outbox.push(release_all(worker, key, &Lease::of(&g)));
                } else if e.cur.is_some() && e.cur.slot == g.slot {
                    e.cur.top_up(&g);
                } else if !e.cur.is_some() && g.valid_from_ms <= now_ms {
                    e.cur = Lease::of(&g);
                } else if e.next.is_some() && e.next.slot == g.slot {
                    e.next.top_up(&g);
                } else if !e.next.is_some() && g.slot > e.cur.slot {
                    e.next = Lease::of(&g);
                } else {
                    self.outbox.push(release_all(worker, key, &Lease::of(&g)));
                }
                e.remaining = g
                    .remaining
                    .saturating_add(e.cur.requests)
                    .saturating_add(e.next.requests);
                e.reset_at_ms = g.reset_at_ms;
                // What is leased here and not yet used is still left, less reservations.
                e.tokens_left = g
                    .tokens_left
                    .saturating_add(e.cur.tokens)
                    .saturating_add(e.next.tokens);
            }
        }
        key
    }

    /// Returns expired leases' unused quota and forgets idle keys. Call every ≤ 100 ms.
    pub fn tick(&mut self, now_ms: u64) {
        let outbox = &mut self.outbox;
        let worker = self.worker;
        self.keys.retain(|&key, e| {
            roll(e, worker, key, now_ms, outbox);
            let idle = now_ms >= e.last_used_ms + SHARD_IDLE_MS;
            if idle {
                // Nothing will use what is left; hand it back now.
                for lease in [&mut e.cur, &mut e.next] {
                    if lease.is_some() {
                        outbox.push(release_all(worker, key, lease));
                        *lease = Lease::default();
                    }
                }
                return false;
            }
            // Keep recently active keys' leases warm so their next request does not wait.
            if e.cur.live(now_ms) && now_ms < e.last_used_ms + KEEP_WARM_MS {
                prefetch(e, worker, key, now_ms, outbox);
            }
            true
        });
    }

    /// Whether messages for the coordinator wait to be sent.
    #[inline]
    pub fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Moves the messages for the coordinator into `out`.
    pub fn drain_requests(&mut self, out: &mut Vec<ToCoordinator>) {
        out.append(&mut self.outbox);
    }
}

/// Retires an expired current lease (returning what it did not use) and promotes the next.
/// A token-limited lease always reports its end, used up or not: the coordinator counts it
/// as held until then (see [`ToCoordinator::Release`]).
fn roll(
    e: &mut Entry,
    worker: WorkerId,
    key: QuotaKey,
    now_ms: u64,
    outbox: &mut Vec<ToCoordinator>,
) {
    if e.cur.is_some() && now_ms >= e.cur.until_ms {
        if e.cur.requests > 0 || e.token_limited() {
            outbox.push(release_for(e, worker, key, &e.cur));
        }
        // What goes back stays in `remaining`: it is free again at the coordinator.
        e.cur = Lease::default();
    }
    if e.next.is_some() && now_ms >= e.next.until_ms {
        outbox.push(release_for(e, worker, key, &e.next));
        e.next = Lease::default();
    }
    if !e.cur.is_some() && e.next.is_some() && e.next.from_ms <= now_ms {
        e.cur = e.next;
        e.next = Lease::default();
    }
}

/// The end of lease `l`: what it did not use goes back, with its grants.
fn release_for(e: &Entry, worker: WorkerId, key: QuotaKey, l: &Lease) -> ToCoordinator {
    ToCoordinator::Release {
        key,
        worker,
        slot: l.slot,
        requests: l.requests,
        tokens: if e.token_limited() { l.tokens } else { 0 },
        grants: l.grants,
    }
}

/// The end of lease `l`, all of it going back.
fn release_all(worker: WorkerId, key: QuotaKey, l: &Lease) -> ToCoordinator {
    // Unlimited-token grants carry u64::MAX: nothing was counted for them.
    let tokens = if l.tokens == u64::MAX { 0 } else { l.tokens };
    ToCoordinator::Release {
        key,
        worker,
        slot: l.slot,
        requests: l.requests,
        tokens,
        grants: l.grants,
    }
}

/// Asks early: at low water for this slot, or near the slot's end for the next one.
fn prefetch(
    e: &mut Entry,
    worker: WorkerId,
    key: QuotaKey,
    now_ms: u64,
    out: &mut Vec<ToCoordinator>,
) {
    let low = |left: u64, size: u64| left <= size / u64::from(LOW_WATER_DIVISOR);
    let low_tokens = e.token_limited() && low(e.cur.tokens, e.cur.size_tokens);
    let low_requests = low(e.cur.requests.into(), e.cur.size_requests.into());
    if low_requests || low_tokens {
        ask(e, worker, key, now_ms, now_ms, 1, out);
    } else if !e.next.is_some() && now_ms + PREFETCH_MS >= e.cur.until_ms {
        ask(e, worker, key, e.cur.until_ms, now_ms, 1, out);
    }
}

fn ask(
    e: &mut Entry,
    worker: WorkerId,
    key: QuotaKey,
    at_ms: u64,
    now_ms: u64,
    tokens_needed: u64,
    out: &mut Vec<ToCoordinator>,
) {
    if e.pending_since_ms
        .is_some_and(|t| now_ms < t + LEASE_RETRY_MS)
    {
        return;
    }
    e.pending_since_ms = Some(now_ms);
    out.push(ToCoordinator::Lease(LeaseRequest {
        worker,
        key,
        rule: e.rule,
        limits: e.limits,
        at_ms,
        tokens_needed,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Deny, KeyKind, LimitKind};

    fn rule() -> QuotaRule {
        QuotaRule {
            id: RuleId(1),
            name: "t".into(),
            key: KeyKind::Tenant,
            model: None,
            limits: Limits {
                requests: 100,
                tokens: None,
                burst: None,
                window: crate::quota::Window::Minute,
            },
            reserve_max_tokens: false,
        }
    }

    fn grant(key: QuotaKey, slot: u64, from: u64, requests: u32) -> FromCoordinator {
        FromCoordinator::Grant(Grant {
            key,
            slot,
            valid_from_ms: from,
            valid_until_ms: (slot + 1) * 600,
            requests,
            tokens: u64::MAX,
            tokens_left: u64::MAX,
            period_unix_ms: 0,
            remaining: 50,
            reset_at_ms: 61_200,
        })
    }

    fn drain(s: &mut QuotaShard) -> Vec<ToCoordinator> {
        let mut v = Vec::new();
        s.drain_requests(&mut v);
        v
    }

    #[test]
    fn asks_once_then_admits_from_the_lease_and_releases_the_rest() {
        let (r, key) = (rule(), QuotaKey(9));
        let mut s = QuotaShard::new(2);
        assert_eq!(s.check(key, &r, 0, 10), Decision::NeedLease);
        assert_eq!(s.check(key, &r, 0, 11), Decision::NeedLease);
        let sent = drain(&mut s);
        assert!(matches!(
            sent[..],
            [ToCoordinator::Lease(LeaseRequest {
                worker: 2,
                at_ms: 10,
                ..
            })]
        ));
        assert_eq!(s.apply(grant(key, 0, 12, 8), 12), key);
        for _ in 0..5 {
            assert!(matches!(s.check(key, &r, 0, 20), Decision::Admit(_)));
        }
        assert!(drain(&mut s).is_empty(), "3 of 8 left: above low water");
        assert!(matches!(s.check(key, &r, 0, 20), Decision::Admit(_)));
        assert!(
            matches!(drain(&mut s)[..], [ToCoordinator::Lease(_)]),
            "low water: ask early"
        );
        s.tick(600);
        assert_eq!(
            drain(&mut s),
            [ToCoordinator::Release {
                key,
                worker: 2,
                slot: 0,
                requests: 2,
                tokens: 0,
                grants: 1
            }]
        );
    }

    #[test]
    fn next_slot_grant_is_held_until_its_slot() {
        let (r, key) = (rule(), QuotaKey(3));
        let mut s = QuotaShard::new(0);
        s.check(key, &r, 0, 0);
        s.apply(grant(key, 0, 0, 40), 0);
        s.apply(grant(key, 1, 600, 40), 450);
        let Decision::Admit(a) = s.check(key, &r, 0, 599) else {
            panic!()
        };
        assert_eq!(a.ticket.slot, 0);
        let Decision::Admit(b) = s.check(key, &r, 0, 600) else {
            panic!()
        };
        assert_eq!(b.ticket.slot, 1);
        let released = ToCoordinator::Release {
            key,
            worker: 0,
            slot: 0,
            requests: 39,
            tokens: 0,
            grants: 1,
        };
        assert!(drain(&mut s).contains(&released));
    }

    #[test]
    fn late_or_orphan_grants_are_given_back() {
        let (r, key) = (rule(), QuotaKey(4));
        let mut s = QuotaShard::new(0);
        s.apply(grant(key, 0, 0, 5), 0);
        assert_eq!(
            drain(&mut s),
            [ToCoordinator::Release {
                key,
                worker: 0,
                slot: 0,
                requests: 5,
                tokens: 0,
                grants: 1
            }]
        );
        s.check(key, &r, 0, 0);
        drain(&mut s);
        s.apply(grant(key, 0, 0, 5), 700);
        assert_eq!(
            drain(&mut s),
            [ToCoordinator::Release {
                key,
                worker: 0,
                slot: 0,
                requests: 5,
                tokens: 0,
                grants: 1
            }]
        );
    }

    #[test]
    fn idle_keys_are_forgotten_and_their_leases_returned() {
        let (r, key) = (rule(), QuotaKey(5));
        let mut s = QuotaShard::new(0);
        s.check(key, &r, 0, 0);
        drain(&mut s);
        s.apply(grant(key, 0, 0, 5), 0);
        s.tick(SHARD_IDLE_MS - 1);
        assert_eq!(s.len(), 1);
        drain(&mut s);
        s.tick(SHARD_IDLE_MS);
        assert!(s.is_empty());
    }

    #[test]
    fn denial_rejects_locally_until_retry_time() {
        let (r, key) = (rule(), QuotaKey(6));
        let mut s = QuotaShard::new(0);
        s.check(key, &r, 0, 0);
        drain(&mut s);
        let deny = Deny {
            key,
            reason: LimitKind::Requests,
            limit: 100,
            retry_at_ms: 2_500,
            reset_at_ms: 9_000,
        };
        s.apply(FromCoordinator::Deny(deny), 1);
        let Decision::Reject(e) = s.check(key, &r, 0, 1_000) else {
            panic!()
        };
        assert_eq!((e.retry_after_s, e.reset_s, e.rule), (2, 8, RuleId(1)));
        assert!(
            drain(&mut s).is_empty(),
            "no coordinator traffic while denied"
        );
        assert_eq!(s.check(key, &r, 0, 2_500), Decision::NeedLease);
    }

    fn token_rule() -> QuotaRule {
        QuotaRule {
            limits: Limits {
                requests: 1_000,
                tokens: Some(100),
                burst: None,
                window: crate::quota::Window::Minute,
            },
            ..rule()
        }
    }

    fn token_grant(key: QuotaKey, slot: u64, tokens: u64) -> FromCoordinator {
        let FromCoordinator::Grant(g) = grant(key, slot, slot * 600, 10) else {
            unreachable!()
        };
        FromCoordinator::Grant(Grant { tokens, ..g })
    }

    /// A shard holding a slot-0 lease of 50 tokens and a next-slot lease of 25, with one
    /// admitted request's ticket.
    fn two_leases(key: QuotaKey) -> (QuotaShard, Ticket) {
        two_leases_of(key, &token_rule(), 50)
    }

    /// A shard under rule `r` holding a slot-0 lease of `first` tokens and a next-slot lease
    /// of 25, with one admitted request's ticket.
    fn two_leases_of(key: QuotaKey, r: &QuotaRule, first: u64) -> (QuotaShard, Ticket) {
        let mut s = QuotaShard::new(0);
        assert_eq!(s.check(key, r, 0, 450), Decision::NeedLease);
        s.apply(token_grant(key, 0, first), 450);
        let Decision::Admit(a) = s.check(key, r, 0, 450) else {
            panic!("admitted from the lease")
        };
        s.apply(token_grant(key, 1, 25), 460);
        drain(&mut s);
        (s, a.ticket)
    }

    #[test]
    fn overrun_empties_the_lease_then_shrinks_the_next_one_and_charges_the_rest_now() {
        // (tokens used, messages, tokens left in this slot's and the next slot's lease)
        let cases: [(u64, &[ToCoordinator], u64, u64); 5] = [
            (30, &[], 20, 25),
            (50, &[], 0, 25),
            (
                55,
                &[
                    ToCoordinator::Release {
                        key: QuotaKey(8),
                        worker: 0,
                        slot: 1,
                        requests: 0,
                        tokens: 5,
                        grants: 0,
                    },
                    ToCoordinator::Charge {
                        key: QuotaKey(8),
                        worker: 0,
                        tokens: 5,
                    },
                ],
                0,
                20,
            ),
            (
                75,
                &[
                    ToCoordinator::Release {
                        key: QuotaKey(8),
                        worker: 0,
                        slot: 1,
                        requests: 0,
                        tokens: 25,
                        grants: 0,
                    },
                    ToCoordinator::Charge {
                        key: QuotaKey(8),
                        worker: 0,
                        tokens: 25,
                    },
                ],
                0,
                0,
            ),
            (
                500,
                &[
                    ToCoordinator::Release {
                        key: QuotaKey(8),
                        worker: 0,
                        slot: 1,
                        requests: 0,
                        tokens: 25,
                        grants: 0,
                    },
                    ToCoordinator::Charge {
                        key: QuotaKey(8),
                        worker: 0,
                        tokens: 450,
                    },
                ],
                0,
                0,
            ),
        ];
        for (used, want, cur_left, next_left) in cases {
            let key = QuotaKey(8);
            let (mut s, ticket) = two_leases(key);
            s.charge_tokens(ticket, used, 500);
            assert_eq!(drain(&mut s), want, "used {used}");
            let e = s.keys[&key];
            assert_eq!(
                (e.cur.tokens, e.next.tokens),
                (cur_left, next_left),
                "used {used}"
            );
        }
    }

    #[test]
    fn overrun_charged_after_the_slot_rolled_takes_the_promoted_lease_first() {
        let key = QuotaKey(8);
        let (mut s, ticket) = two_leases(key);
        // The response ends in slot 1: slot 0's 49 unused tokens go back, the slot-1 lease is in
        // hand and pays for the overrun, and nothing is charged beyond it.
        s.charge_tokens(ticket, 20, 650);
        assert_eq!(
            drain(&mut s),
            [ToCoordinator::Release {
                key,
                worker: 0,
                slot: 0,
                requests: 9,
                tokens: 50,
                grants: 1
            }]
        );
        assert_eq!(s.keys[&key].cur.tokens, 5);
        s.charge_tokens(ticket, 30, 700);
        assert_eq!(
            drain(&mut s),
            [ToCoordinator::Charge {
                key,
                worker: 0,
                tokens: 25
            }]
        );
    }

    #[test]
    fn recall_returns_every_lease_and_the_next_request_asks_again() {
        let key = QuotaKey(8);
        let r = token_rule();
        let (mut s, _) = two_leases(key);
        assert_eq!(s.apply(FromCoordinator::Recall(key), 470), key);
        assert_eq!(
            drain(&mut s),
            [
                ToCoordinator::Release {
                    key,
                    worker: 0,
                    slot: 0,
                    requests: 9,
                    tokens: 50,
                    grants: 1
                },
                ToCoordinator::Release {
                    key,
                    worker: 0,
                    slot: 1,
                    requests: 10,
                    tokens: 25,
                    grants: 1
                },
            ]
        );
        assert_eq!(s.check(key, &r, 0, 480), Decision::NeedLease);
        assert!(matches!(drain(&mut s)[..], [ToCoordinator::Lease(_)]));
        // Still asking: a second recall neither releases nor forgets the pending request.
        s.apply(FromCoordinator::Recall(key), 490);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.check(key, &r, 0, 495), Decision::NeedLease);
        assert!(
            drain(&mut s).is_empty(),
            "the pending request is not sent twice"
        );
        // A recall of a key this core never saw changes nothing.
        s.apply(FromCoordinator::Recall(QuotaKey(99)), 500);
        assert!(drain(&mut s).is_empty());
    }

    /// An overrun charged while this core's lease request was on its way: the grant that
    /// answers it was sized before the charge, so as much of it goes straight back and no
    /// request is admitted on it.
    #[test]
    fn a_grant_sized_before_an_overrun_is_shrunk_by_it() {
        let key = QuotaKey(8);
        let r = token_rule();
        let (mut s, ticket) = two_leases(key);
        // Use up both leases; the next check asks for more.
        s.charge_tokens(ticket, 75, 470);
        drain(&mut s);
        assert_eq!(s.check(key, &r, 0, 480), Decision::NeedLease);
        assert!(matches!(drain(&mut s)[..], [ToCoordinator::Lease(_)]));
        // A request admitted earlier finishes 30 over while the lease request is pending.
        s.charge_tokens(ticket, 30, 485);
        assert_eq!(
            drain(&mut s),
            [ToCoordinator::Charge {
                key,
                worker: 0,
                tokens: 30
            }]
        );
        // The grant (20) is all owed: released whole, nothing admitted on it.
        s.apply(token_grant(key, 0, 20), 490);
        assert_eq!(
            drain(&mut s),
            [ToCoordinator::Release {
                key,
                worker: 0,
                slot: 0,
                requests: 0,
                tokens: 20,
                grants: 0
            }]
        );
        assert_eq!(s.check(key, &r, 0, 495), Decision::NeedLease);
        // The debt does not outlive the answer: the next grant is whole.
        drain(&mut s);
        s.apply(token_grant(key, 0, 20), 500);
        assert!(matches!(s.check(key, &r, 0, 505), Decision::Admit(_)));
    }

    /// A budget's core whose current lease ran dry gives its next-slot lease back before it
    /// asks: it cannot use it now, and kept, the coordinator would count those tokens as
    /// gone and refuse until the period ends. A denial given meanwhile no longer stands. A
    /// minute window keeps its next lease (it frees within the minute anyway).
    #[test]
    fn a_budget_gives_back_its_next_slot_lease_before_asking() {
        for window in [crate::quota::Window::Day, crate::quota::Window::Minute] {
            let key = QuotaKey(8);
            let mut r = token_rule();
            r.limits.window = window;
            let (mut s, ticket) = two_leases_of(key, &r, 10);
            s.charge_tokens(ticket, 10, 465);
            drain(&mut s);
            let deny = Deny {
                key,
                reason: LimitKind::Tokens,
                limit: 100,
                retry_at_ms: 86_400_000,
                reset_at_ms: 86_400_000,
            };
            s.apply(FromCoordinator::Deny(deny), 470);
            let d = s.check(key, &r, 0, 480);
            let sent = drain(&mut s);
            if window.is_calendar() {
                assert_eq!(d, Decision::NeedLease);
                assert_eq!(
                    sent[0],
                    ToCoordinator::Release {
                        key,
                        worker: 0,
                        slot: 1,
                        requests: 10,
                        tokens: 25,
                        grants: 1
                    }
                );
                assert!(matches!(sent[1..], [ToCoordinator::Lease(_)]), "{sent:?}");
            } else {
                assert!(matches!(d, Decision::Reject(_)), "{d:?}");
                assert!(sent.is_empty(), "{sent:?}");
                assert_eq!(s.keys[&key].next.tokens, 25);
            }
        }
    }
}
