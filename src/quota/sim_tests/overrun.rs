//! Token overrun with sequential traffic (issue 11, item 6): a response that uses more than
//! the lease in hand must never leave quota behind that a later request can be admitted on.
//!
//! Every case drives one key with one request at a time — each sent `gap` ms after the
//! previous one and finished (charged) `latency` ms after it was sent — and checks, at every
//! admission, the bound the quota docs promise with nothing in flight:
//!
//! - without reservation: the tokens of finished requests admitted in the 101 slots up to and
//!   including the admission's slot are **below** the limit (the key still had quota), so a
//!   window's charged total is at most `limit - 1 + used`, one response's overrun;
//! - with `reserve_max_tokens`: finished tokens + this request's reservation are at most the
//!   limit, so the overrun is only what a response uses beyond its reservation.

use super::*;

/// One sequential client of one key and the engine around it.
#[derive(Debug, Clone, Copy)]
struct Plan {
    limit: u64,
    /// Tokens every response uses.
    used: u64,
    /// Tokens reserved per request (`reserve_max_tokens`), else 0.
    reserve: u64,
    /// First send.
    start: u64,
    /// From one send to the next (> `latency`: one request at a time).
    gap: u64,
    /// From send to the response's end, when its tokens are charged.
    latency: u64,
    /// Request `k` goes to worker `k % workers` (two workers alternate).
    workers: usize,
    /// Worker timers fire at `tick_phase + 100·n` ms.
    tick_phase: u64,
    /// Channel latency each way.
    delay_ms: u64,
    sends: usize,
}

impl Plan {
    const fn new(limit: u64, used: u64) -> Self {
        Plan {
            limit,
            used,
            reserve: 0,
            start: 0,
            gap: 100,
            latency: 40,
            workers: 1,
            tick_phase: 0,
            delay_ms: 0,
            sends: 40,
        }
    }
}

/// What happened to one request.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    sent: u64,
    /// When it was admitted and when its tokens were charged; `None`: 429.
    admitted: Option<(u64, u64)>,
}

/// Runs `plan`; returns every request's outcome and how many next-slot prefetches happened.
fn drive(plan: Plan) -> (Vec<Outcome>, usize) {
    let mut r = rule(Limits {
        requests: 100_000,
        tokens: Some(plan.limit),
        burst: None,
        window: crate::quota::Window::Minute,
    });
    r.reserve_max_tokens = plan.reserve > 0;
    let mut sim = Sim::new(plan.workers, r);
    sim.delay_ms = plan.delay_ms;
    let key = sim.rule.key_for(b"subject");
    let mut out: Vec<Outcome> = Vec::new();
    // The request waiting for a lease (parked, polled every ms) and the one whose response is
    // still running: (ticket, worker, charge time).
    let mut next_send = plan.start;
    let mut parked: Option<(usize, u64)> = None;
    let mut running: Option<(Ticket, usize, u64)> = None;
    let mut next_tick = plan.tick_phase;
    let mut now = 0;
    loop {
        if plan.delay_ms > 0 {
            sim.pump(now);
        }
        if now == next_tick {
            sim.tick(now);
            next_tick += 100;
        }
        if let Some((ticket, w, _)) = running.filter(|&(_, _, at)| at == now) {
            sim.shards[w].charge_tokens(ticket, plan.used, now);
            sim.pump(now);
            running = None;
        }
        // One request at a time: the next is sent `gap` after this one, or once this one is
        // done if it waited for a lease that long.
        let idle = parked.is_none() && running.is_none();
        if out.len() < plan.sends && now >= next_send && idle {
            parked = Some((out.len() % plan.workers, now));
            next_send = now + plan.gap;
        }
        if let Some((w, sent)) = parked {
            let mut d = sim.shards[w].check(key, &sim.rule, plan.reserve, now);
            sim.pump(now);
            if d == Decision::NeedLease && plan.delay_ms == 0 {
                d = sim.shards[w].check(key, &sim.rule, plan.reserve, now);
                sim.pump(now);
                assert_ne!(d, Decision::NeedLease, "an instant reply settles the key");
            }
            match d {
                Decision::NeedLease => {}
                Decision::Admit(a) => {
                    let at = now + plan.latency;
                    running = Some((a.ticket, w, at));
                    out.push(Outcome {
                        sent,
                        admitted: Some((now, at)),
                    });
                    parked = None;
                }
                Decision::Reject(e) => {
                    assert_eq!(e.reason, LimitKind::Tokens, "{plan:?}");
                    out.push(Outcome {
                        sent,
                        admitted: None,
                    });
                    parked = None;
                }
            }
        }
        if out.len() == plan.sends && parked.is_none() && running.is_none() {
            return (out, sim.prefetches);
        }
        // The next thing that happens: a send, a parked retry, a charge, a timer, a delivery.
        let mut next = next_tick;
        if parked.is_some() || (plan.delay_ms > 0 && !sim.to_workers.is_empty()) {
            next = now + 1;
        }
        if plan.delay_ms > 0 && !sim.to_coord.is_empty() {
            next = now + 1;
        }
        if out.len() < plan.sends && parked.is_none() && running.is_none() {
            next = next.min(next_send.max(now + 1));
        }
        if let Some((_, _, at)) = running {
            next = next.min(at);
        }
        assert!(next > now, "{plan:?} stuck at {now}");
        now = next;
    }
}

/// Checks the bound at every admission (see the module docs); returns the admissions.
fn assert_bound(plan: Plan, out: &[Outcome]) -> usize {
    let done: Vec<(u64, u64)> = out.iter().filter_map(|o| o.admitted).collect();
    // A parked request waits only for its lease reply (two channel trips).
    assert!(
        out.iter()
            .all(|o| o.admitted.is_none_or(|(at, _)| at >= o.sent)),
        "{plan:?}\n{out:?}"
    );
    for &(at, _) in &done {
        let slot = slot_of(at);
        let known: u64 = done
            .iter()
            .filter(|&&(a, charged)| charged <= at && slot_of(a) + WINDOW_SLOTS >= slot)
            .map(|_| plan.used)
            .sum();
        if plan.reserve == 0 {
            assert!(
                known < plan.limit,
                "admitted at {at} ms with {known} tokens already used in the window: {plan:?}\n{out:?}"
            );
        } else {
            assert!(
                known + plan.reserve <= plan.limit,
                "admitted at {at} ms with {known} used + {} reserved: {plan:?}\n{out:?}",
                plan.reserve
            );
        }
    }
    done.len()
}

/// The report's exact scenario: 100 tokens a minute, 55 per request, one every 100 ms on one
/// connection, from every phase of a slot: exactly two are admitted, then 429s only.
#[test]
fn fifty_five_token_requests_get_two_admissions_and_then_only_429s() {
    for workers in [1, 2] {
        for start in (0..600).step_by(20) {
            for tick_phase in [0, 50] {
                let plan = Plan {
                    start,
                    tick_phase,
                    workers,
                    ..Plan::new(100, 55)
                };
                let (out, _) = drive(plan);
                assert_eq!(assert_bound(plan, &out), 2, "{plan:?}\n{out:?}");
                let first_429 = out.iter().position(|o| o.admitted.is_none()).unwrap();
                assert!(
                    out[first_429..].iter().all(|o| o.admitted.is_none()),
                    "a 200 after a 429 within the window: {plan:?}\n{out:?}"
                );
            }
        }
    }
}

/// The class: token sizes from 1 to the limit, gaps that cross slot boundaries, responses
/// that end in a later slot (streams charged late), with and without next-slot prefetch,
/// with and without reservation, on one core and on two alternating cores, with instant and
/// with delayed channels.
#[test]
fn sequential_traffic_never_overruns_by_more_than_one_response() {
    let mut cases = 0;
    let (mut with_prefetch, mut without_prefetch) = (0, 0);
    for used in [1u64, 2, 13, 34, 50, 55, 67, 99, 100] {
        for (gap, latency) in [(100, 40), (250, 5), (610, 590), (700, 650), (1_300, 1_250)] {
            for start in [0, 170, 420, 590] {
                for workers in [1, 2] {
                    for (reserve, delay_ms) in [
                        (0, 0),
                        (used.saturating_sub(1).max(1), 0),
                        (used, 3),
                        (0, 3),
                    ] {
                        let plan = Plan {
                            reserve,
                            start,
                            gap,
                            latency,
                            workers,
                            tick_phase: start % 100 / 2,
                            delay_ms,
                            sends: 30,
                            ..Plan::new(100, used)
                        };
                        let (out, prefetches) = drive(plan);
                        let admitted = assert_bound(plan, &out);
                        assert!(admitted >= 1, "nothing admitted: {plan:?}");
                        if prefetches > 0 {
                            with_prefetch += 1;
                        } else {
                            without_prefetch += 1;
                        }
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 1_000);
    assert!(
        with_prefetch > 100 && without_prefetch > 100,
        "prefetch {with_prefetch}, none {without_prefetch}"
    );
}

/// Over several minutes the bound holds in every window and the limit comes back: each
/// minute-and-a-slot admits again once the previous window's tokens left it.
#[test]
fn sequential_overrun_is_bounded_in_every_window_over_minutes() {
    for (workers, reserve) in [(1, 0), (2, 0), (1, 54), (2, 54)] {
        let plan = Plan {
            workers,
            reserve,
            start: 333,
            sends: 3 * 620,
            ..Plan::new(100, 55)
        };
        let (out, _) = drive(plan);
        let admitted = assert_bound(plan, &out);
        let per_window = if reserve == 0 { 2 } else { 1 };
        // Three windows of 60.6 s each start fresh; the sends cover a little more than three.
        assert!(
            (3 * per_window..=4 * per_window).contains(&admitted),
            "{admitted} admitted: {plan:?}"
        );
        let times: Vec<u64> = out.iter().filter_map(|o| o.admitted.map(|a| a.0)).collect();
        assert!(max_in_any_window(&times, 60_000) <= per_window, "{times:?}");
    }
}
