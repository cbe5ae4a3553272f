//! Budgets (calendar windows) on the lease machinery: many requests in flight on two cores
//! against a tight budget, and the day boundary of a time zone, with a fake clock.
//!
//! The bound the budget docs promise: a request is admitted only while its core's lease holds
//! a token (or its whole reservation), and what responses really use is charged when they
//! finish, so the period's charged total exceeds the budget by at most what the requests in
//! flight when it ran out use (with `reserve_max_tokens`: by what they use beyond their
//! reservation).

use super::*;
use crate::quota::calendar::Calendar;

const DAY_MS: u64 = 86_400_000;

fn budget(limit: u64, reserve: bool) -> QuotaRule {
    QuotaRule {
        id: RuleId(0),
        name: "daily".into(),
        key: KeyKind::Tenant,
        model: None,
        limits: Limits {
            requests: UNLIMITED_REQUESTS,
            tokens: Some(limit),
            burst: None,
            window: Window::Day,
        },
        reserve_max_tokens: reserve,
    }
}

/// One client: idle, waiting for a lease, or in flight until its response ends.
#[derive(Debug, Clone, Copy)]
enum Client {
    Idle { next_send: u64 },
    Parked,
    Running { ticket: Ticket, ends: u64 },
}

#[derive(Debug, Default)]
struct Run {
    admitted: u64,
    rejected: u64,
    /// Tokens charged (used by admitted requests) per day index.
    charged: std::collections::BTreeMap<u64, u64>,
}

/// `clients` concurrent clients, client `i` on worker `i % workers`, each sending its next
/// request `think` ms after the last one ended; a response uses `used` tokens and ends
/// `latency` ms after admission. Runs from `start` to `until` (ms of the quota clock).
#[allow(clippy::too_many_arguments)]
fn drive(
    sim: &mut Sim,
    clients: usize,
    workers: usize,
    used: u64,
    reserve: u64,
    latency: u64,
    think: u64,
    (start, until): (u64, u64),
    day_of: impl Fn(u64) -> u64,
) -> Run {
    let key = QuotaKey::named("daily", 0, b"acme");
    let mut run = Run::default();
    let mut cs = vec![Client::Idle { next_send: start }; clients];
    let mut now = start;
    while now < until {
        if now % 100 == 0 {
            sim.tick(now);
        }
        sim.pump(now);
        for (i, c) in cs.iter_mut().enumerate() {
            let w = i % workers;
            match *c {
                Client::Running { ticket, ends } if ends <= now => {
                    sim.shards[w].charge_tokens(ticket, used, now);
                    *run.charged
                        .entry(day_of(ticket.slot * SLOT_MS))
                        .or_default() += used;
                    *c = Client::Idle {
                        next_send: now + think,
                    };
                }
                Client::Idle { next_send } if next_send <= now => {
                    *c = Client::Parked;
                }
                _ => {}
            }
            if let Client::Parked = *c {
                match sim.shards[w].check(key, &sim.rule, reserve, now) {
                    Decision::Admit(a) => {
                        run.admitted += 1;
                        *c = Client::Running {
                            ticket: a.ticket,
                            ends: now + latency,
                        };
                    }
                    Decision::Reject(_) => {
                        run.rejected += 1;
                        *c = Client::Idle {
                            next_send: now + think.max(50),
                        };
                    }
                    Decision::NeedLease => {}
                }
            }
        }
        sim.pump(now);
        now += 1;
    }
    run
}

/// The check: 50 concurrent clients on 2 workers against a tight budget. The day's
/// charged total exceeds the budget by at most what the 50 requests in flight use, and with
/// `reserve_max_tokens` (each reserving what it will use) it never exceeds it.
#[test]
fn fifty_concurrent_clients_on_two_workers_overrun_by_at_most_the_requests_in_flight() {
    for (delay_ms, latency) in [(0, 40), (1, 40), (3, 250)] {
        for reserve in [false, true] {
            let limit = 5_000;
            let used = 37;
            let mut sim = Sim::new(2, budget(limit, reserve));
            sim.delay_ms = delay_ms;
            let r = if reserve { used } else { 0 };
            let run = drive(&mut sim, 50, 2, used, r, latency, 2, (0, 20_000), |t| {
                t / DAY_MS
            });
            let charged = run.charged.get(&0).copied().unwrap_or(0);
            let overrun = charged.saturating_sub(limit);
            eprintln!(
                "budget {limit}, 50 clients × {used} tokens, 2 workers, channel delay {delay_ms} ms, \
                 latency {latency} ms, reserve {reserve}: admitted {}, rejected {}, charged {charged}, \
                 overrun {overrun} tokens ({} requests)",
                run.admitted,
                run.rejected,
                overrun.div_ceil(used),
            );
            assert!(run.rejected > 0, "the budget must run out");
            if reserve {
                assert!(charged <= limit, "reserved: charged {charged} > {limit}");
            } else {
                assert!(
                    overrun <= 50 * used,
                    "overrun {overrun} beyond 50 requests in flight × {used}"
                );
            }
            // Nearly the whole budget was used: leases stranded on a core come back.
            assert!(
                charged + 50 * used >= limit,
                "charged only {charged} of {limit}"
            );
        }
    }
}

/// A day in a time zone with a fake clock: the budget runs out before midnight, every
/// request is refused until midnight (the `Retry-After` names it), and the next day admits
/// again from zero.
#[test]
fn a_budget_rolls_over_at_midnight_of_its_time_zone() {
    // Slot 0 is 2024-03-30 23:30 in Berlin; midnight (the start of a 23 h day) is 30 min on.
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let epoch = jiff::civil::date(2024, 3, 30)
        .at(23, 30, 0, 0)
        .to_zoned_datetime(tz.clone())
        .unwrap()
        .timestamp()
        .as_millisecond() as u64;
    let midnight = 30 * 60_000;
    let mut sim = Sim::new(2, budget(1_000, false));
    sim.coord = QuotaCoordinator::with_calendar(2, None, Calendar::new(tz, epoch)).unwrap();
    let day_of = |t: u64| u64::from(t >= midnight);
    let run = drive(
        &mut sim,
        4,
        2,
        100,
        0,
        30,
        20,
        (midnight - 20_000, midnight + 20_000),
        day_of,
    );
    assert!(
        run.charged[&0] >= 1_000 && run.charged[&0] <= 1_000 + 4 * 100,
        "{run:?}"
    );
    assert!(
        run.charged[&1] >= 1_000,
        "the new day admits again: {run:?}"
    );
    // A refusal just before midnight says to come back at midnight.
    let key = QuotaKey::named("daily", 0, b"acme");
    let mut sim = Sim::new(1, budget(1_000, false));
    sim.coord = QuotaCoordinator::with_calendar(
        1,
        None,
        Calendar::new(jiff::tz::TimeZone::get("Europe/Berlin").unwrap(), epoch),
    )
    .unwrap();
    let t = midnight - 5_000;
    let Decision::Admit(a) = sim.request(0, key, 0, t) else {
        panic!("admitted")
    };
    sim.shards[0].charge_tokens(a.ticket, 5_000, t);
    sim.pump(t);
    let Decision::Reject(e) = sim.request(0, key, 0, t + 10) else {
        panic!("refused once over")
    };
    assert_eq!(e.reason, LimitKind::Tokens);
    assert_eq!(e.retry_after_s, 5, "until midnight");
    assert_eq!(e.reset_s, 5);
    assert!(matches!(
        sim.request(0, key, 0, midnight),
        Decision::Admit(_)
    ));
}

/// Use persisted in an earlier run of the process counts in its period, not in another.
#[test]
fn persisted_use_seeds_the_current_period_only() {
    let key = QuotaKey::named("daily", 0, b"acme");
    let mut sim = Sim::new(1, budget(1_000, false));
    // Epoch 0 is midnight UTC: day 0 started at UNIX 0, day 1 at DAY_MS.
    sim.coord.seed([(key, 0, 990)]);
    let mut admitted = 0;
    // All in one slot, early enough that no lease is prefetched for the next one.
    while let Decision::Admit(a) = sim.request(0, key, 0, 700) {
        sim.shards[0].charge_tokens(a.ticket, 5, 700);
        sim.pump(700);
        admitted += 1;
    }
    assert_eq!(admitted, 2, "10 tokens left: two requests of 5");
    let mut sim = Sim::new(1, budget(1_000, false));
    sim.coord.seed([(key, DAY_MS, 990)]);
    let mut admitted = 0;
    // All in one slot, early enough that no lease is prefetched for the next one.
    while let Decision::Admit(a) = sim.request(0, key, 0, 700) {
        sim.shards[0].charge_tokens(a.ticket, 5, 700);
        sim.pump(700);
        admitted += 1;
    }
    assert_eq!(admitted, 200, "a seed of another day counts nothing today");
}
