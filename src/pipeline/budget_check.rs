//! The budget stage: every `[budgets]` rule that applies to the caller and model is decided
//! on this core's lease shard, like a quota rule; after the response, what it used (tokens,
//! or its cost) is charged to each.
//!
//! # Contract
//!
//! [`admit`] returns the [`BudgetTickets`] to charge, with one
//! `x-shardgate-budget-remaining: <name>; <unit>=<left>` line per budget appended to the
//! response headers (and `x-shardgate-budget-warning: <name>; <unit>` once the soft limit is
//! reached, counted by budget), or the error to answer: **429 `budget_exceeded`** with
//! `Retry-After` (seconds until the period that frees it begins),
//! `x-shardgate-budget: <name>; <unit>` and `x-shardgate-budget-reset` (that instant, RFC
//! 3339 UTC), counted by budget; or 503 when the coordinator does not answer (see
//! [`quota_check::decide`]). A refusal only because other cores hold what is left of the
//! budget waits (at most [`RECLAIM_WAIT`]) for those leases to come back instead. Budgets
//! admitted before a later one refused the request get their
//! reservations back. [`charge`] charges a finished response; [`refund`] gives everything back
//! when a later stage refused the request.
//!
//! # Performance
//!
//! Nothing when no budget applies. Per applicable budget: one key digest, one shard decision,
//! one header line; the tickets are a fixed array (no allocation).

use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::quota_check::{self, Caller, Decided};
use crate::config::Snapshot;
use crate::error::{Fault, GatewayError};
use crate::quota::budget::{Budget, BudgetUnit, MAX_BUDGETS};
use crate::quota::usage::Usage;
use crate::quota::{KeyKind, Ticket};
use crate::spend::price::{Price, PICO_PER_MICRO};
use crate::worker::Worker;

/// Longest a request waits for tokens recalled from other cores' leases.
pub const RECLAIM_WAIT: Duration = Duration::from_millis(1_500);
/// How often it looks while it waits.
const RECLAIM_POLL: Duration = Duration::from_millis(50);

/// The 429 of an exhausted budget.
pub const BUDGET_EXCEEDED: GatewayError = GatewayError {
    status: 429,
    kind: "budget_exceeded",
    message: "budget exceeded; see the x-shardgate-budget-reset header for when it resets",
    fault: Fault::Downstream,
    retry: false,
    close: false,
};

/// The budgets a request was admitted under: (index into `budgets.rules`, ticket).
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetTickets {
    n: usize,
    items: [Option<(u16, Ticket)>; MAX_BUDGETS],
}

impl BudgetTickets {
    fn push(&mut self, budget: usize, t: Ticket) {
        if let Some(slot) = self.items.get_mut(self.n) {
            *slot = Some((budget as u16, t));
            self.n += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, Ticket)> + '_ {
        self.items[..self.n]
            .iter()
            .flatten()
            .map(|&(b, t)| (usize::from(b), t))
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Decides every applicable budget (see the module docs). `price`: the response's price,
/// for a currency budget's reservation.
pub async fn admit(
    worker: &Rc<Worker>,
    snap: &Snapshot,
    caller: &Caller<'_>,
    model: &str,
    max_tokens: Option<u64>,
    price: Option<Price>,
    headers: &mut Vec<u8>,
) -> Result<BudgetTickets, GatewayError> {
    let mut tickets = BudgetTickets::default();
    let Some(budgets) = &snap.budgets else {
        return Ok(tickets);
    };
    let ip = quota_check::ip_bytes(caller.ip);
    for (i, b) in budgets.rules.iter().enumerate() {
        if !b.applies_to(model) {
            continue;
        }
        let who: &[u8] = match b.key {
            KeyKind::Subject => match caller.subject {
                Some(s) => s.as_bytes(),
                None => continue,
            },
            KeyKind::Tenant => match caller.tenant {
                Some(t) => t.as_bytes(),
                None => continue,
            },
            KeyKind::ApiKey => match caller.api_key {
                Some(k) => k.as_bytes(),
                None => continue,
            },
            KeyKind::ClientIp => &ip,
        };
        let reserve = reservation(b, max_tokens, price);
        match decide(worker, b, who, reserve).await {
            Decided::Admitted(a) => {
                tickets.push(i, a.ticket);
                let left = a.tokens_left.min(b.limit());
                let _ = write!(
                    headers,
                    "x-shardgate-budget-remaining: {}; {}=",
                    b.name,
                    b.unit.as_str()
                );
                write_amount(headers, b.unit, left);
                headers.extend_from_slice(b"\r\n");
                if b.soft.is_some_and(|soft| b.limit() - left >= soft) {
                    let _ = write!(
                        headers,
                        "x-shardgate-budget-warning: {}; {}\r\n",
                        b.name,
                        b.unit.as_str()
                    );
                    count(worker, &crate::metrics::counters::BUDGET_WARNINGS, b);
                }
            }
            Decided::Rejected(e) => {
                refund(worker, &tickets);
                headers.clear();
                let reset_unix_ms = worker.unix_ms_of(e.retry_at_ms);
                rejection_headers(headers, b, e.retry_after_s, reset_unix_ms);
                count(worker, &crate::metrics::counters::BUDGET_REJECTIONS, b);
                return Err(BUDGET_EXCEEDED);
            }
            Decided::Failed(e) => {
                refund(worker, &tickets);
                return Err(e);
            }
        }
    }
    Ok(tickets)
}

/// Decides budget `b` for `who`. A refusal that says "retry within a second" means other
/// cores' leases held what is left and are being recalled (see the coordinator's
/// `Holders::reclaim_for`): the request waits for them (at most [`RECLAIM_WAIT`]) instead of
/// being refused while the budget still has room.
async fn decide(worker: &Rc<Worker>, b: &Budget, who: &[u8], reserve: u64) -> Decided {
    let key = b.key_for(who);
    let until = Instant::now() + RECLAIM_WAIT;
    loop {
        match quota_check::decide(worker, key, &b.rule, reserve).await {
            Decided::Rejected(e) if e.retry_after_s <= 1 && Instant::now() < until => {
                monoio::time::sleep(RECLAIM_POLL).await;
            }
            d => return d,
        }
    }
}

/// The headers of a 429: which budget, and when it frees (a `total` budget never does, so
/// it gets no `Retry-After`). `reset_unix_ms`: that instant, from the quota clock's epoch
/// (not now + the rounded `Retry-After`, which is a second late whenever the wall clock and
/// the quota clock straddle a second).
fn rejection_headers(headers: &mut Vec<u8>, b: &Budget, retry_after_s: u32, reset_unix_ms: u64) {
    let _ = write!(
        headers,
        "x-shardgate-budget: {}; {}\r\n",
        b.name,
        b.unit.as_str()
    );
    if b.rule.limits.window == crate::quota::Window::Total {
        headers.extend_from_slice(b"x-shardgate-budget-reset: never\r\n");
        return;
    }
    let reset =
        jiff::Timestamp::from_second(i64::try_from(reset_unix_ms.div_ceil(1000)).unwrap_or(0))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let _ = write!(
        headers,
        "retry-after: {retry_after_s}\r\nx-shardgate-budget-reset: {reset:.0}\r\n"
    );
}

/// What `b` takes up front: with `reserve_max_tokens`, the request's `max_tokens` (a token
/// budget) or what that many output tokens cost (a currency budget), never more than the
/// budget.
fn reservation(b: &Budget, max_tokens: Option<u64>, price: Option<Price>) -> u64 {
    let tokens = b
        .rule
        .reservation(max_tokens.map(|t| t.min(u64::from(u32::MAX)) as u32));
    match b.unit {
        BudgetUnit::Tokens => tokens,
        BudgetUnit::Spend => {
            let pico = tokens.saturating_mul(price.map_or(0, |p| p.output));
            pico.div_ceil(PICO_PER_MICRO).min(b.limit())
        }
    }
}

/// An amount in `unit`: tokens, or micro-units as a decimal of the currency.
fn write_amount(out: &mut Vec<u8>, unit: BudgetUnit, n: u64) {
    match unit {
        BudgetUnit::Tokens => {
            let _ = write!(out, "{n}");
        }
        BudgetUnit::Spend => {
            let _ = write!(out, "{}.{:06}", n / 1_000_000, n % 1_000_000);
        }
    }
}

fn count(worker: &Worker, family: &'static crate::metrics::Family, b: &Budget) {
    worker
        .metrics
        .borrow_mut()
        .counters
        .add(family, &[&b.name, b.unit.as_str()], 1);
}

/// Gives every reservation back: the request was refused after the budgets admitted it.
pub fn refund(worker: &Worker, tickets: &BudgetTickets) {
    if tickets.is_empty() {
        return;
    }
    let now = worker.now_ms();
    let mut shard = worker.quota.borrow_mut();
    for (_, t) in tickets.iter() {
        shard.charge_tokens(t, 0, now);
    }
    drop(shard);
    worker.flush_quota();
}

/// Charges what a finished response used to every budget that admitted it: its tokens, or
/// its cost in micro-units (rounded up); `None`s count as nothing. The use is also recorded
/// for the spend store, so a restart keeps each budget's period.
pub fn charge(
    worker: &Worker,
    snap: &Snapshot,
    tickets: &BudgetTickets,
    usage: Option<&Usage>,
    cost_pico: Option<u64>,
) {
    let Some(budgets) = &snap.budgets else {
        return;
    };
    if tickets.is_empty() {
        return;
    }
    let now = worker.now_ms();
    let tokens = usage.map_or(0, |u| u64::from(u.total()));
    let micros = cost_pico.map_or(0, |c| c.div_ceil(PICO_PER_MICRO));
    let mut shard = worker.quota.borrow_mut();
    let mut spend = worker.spend.borrow_mut();
    for (i, t) in tickets.iter() {
        let used = match budgets.rules.get(i).map(|b| b.unit) {
            Some(BudgetUnit::Tokens) => tokens,
            Some(BudgetUnit::Spend) => micros,
            // A reload removed the budget: give the reservation back.
            None => 0,
        };
        shard.charge_tokens(t, used, now);
        spend.record_budget(t.key, t.period_unix_ms, used);
    }
    drop((shard, spend));
    // An overrun goes to the coordinator now (see `quota_check::charge`).
    worker.flush_quota();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::budget::RawBudgets;

    fn budgets(text: &str) -> Vec<Budget> {
        let raw: RawBudgets = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let s = raw.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        s.rules
    }

    #[test]
    fn reservations_per_unit_never_exceed_the_budget() {
        let b = budgets(
            "[[rules]]\nname='a'\nkey='subject'\nperiod='day'\ntokens=1000\nspend=1.0\nreserve_max_tokens=true\n\
             [[rules]]\nname='b'\nkey='subject'\nperiod='day'\ntokens=1000\n",
        );
        let price = Some(Price {
            input: 1,
            // 2 per million tokens: 2e6 pico-units per token.
            output: 2_000_000,
            cached_input: 1,
        });
        assert_eq!(reservation(&b[0], Some(100), price), 100);
        assert_eq!(reservation(&b[0], Some(5_000), price), 1_000);
        // 100 output tokens at 2e6 pico each = 2e8 pico = 200 micro-units.
        assert_eq!(reservation(&b[1], Some(100), price), 200);
        assert_eq!(reservation(&b[1], Some(100), None), 0);
        assert_eq!(
            reservation(&b[1], Some(u64::MAX), price),
            1_000_000,
            "capped at the budget"
        );
        assert_eq!(
            reservation(&b[2], Some(100), price),
            0,
            "no reserve_max_tokens"
        );
    }

    /// The reset header names the instant the period frees, whatever the rounded
    /// `Retry-After` says (it is counted from now, on another clock); a `total` budget never
    /// resets.
    #[test]
    fn the_reset_header_is_the_period_start_to_the_second() {
        let b = budgets(
            "[[rules]]\nname='d'\nkey='tenant'\nperiod='day'\ntokens=10\n\
             [[rules]]\nname='t'\nkey='tenant'\nperiod='total'\ntokens=10\n",
        );
        let midnight_ms = 1_764_633_600_000; // 2025-12-02T00:00:00Z
        for (retry_after_s, reset_unix_ms) in [
            (3_600, midnight_ms),
            (3_601, midnight_ms),
            (1, midnight_ms - 400),
        ] {
            let mut h = Vec::new();
            rejection_headers(&mut h, &b[0], retry_after_s, reset_unix_ms);
            let h = String::from_utf8(h).unwrap();
            assert!(
                h.contains(&format!("retry-after: {retry_after_s}\r\n")),
                "{h}"
            );
            assert!(
                h.contains("x-shardgate-budget-reset: 2025-12-02T00:00:00Z\r\n"),
                "{h}"
            );
        }
        let mut h = Vec::new();
        rejection_headers(&mut h, &b[1], 5, midnight_ms);
        let h = String::from_utf8(h).unwrap();
        assert_eq!(
            h,
            "x-shardgate-budget: t; tokens\r\nx-shardgate-budget-reset: never\r\n"
        );
    }

    #[test]
    fn amounts_are_written_in_their_unit() {
        let mut out = Vec::new();
        write_amount(&mut out, BudgetUnit::Spend, 12_500_001);
        out.push(b' ');
        write_amount(&mut out, BudgetUnit::Tokens, 42);
        assert_eq!(out, b"12.500001 42");
    }

    #[test]
    fn tickets_hold_up_to_the_most_budgets() {
        let mut t = BudgetTickets::default();
        let ticket = Ticket {
            key: crate::quota::QuotaKey(1),
            slot: 0,
            reserved: 0,
            period_unix_ms: 0,
        };
        for i in 0..MAX_BUDGETS + 3 {
            t.push(i, ticket);
        }
        assert_eq!(t.iter().count(), MAX_BUDGETS);
        assert_eq!(t.iter().last().map(|(b, _)| b), Some(MAX_BUDGETS - 1));
    }
}
