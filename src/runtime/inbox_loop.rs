//! The worker's inbox loop: what runs between requests. It applies the control plane's
//! messages and quota answers as soon as the worker's bell rings ([`listen_for_bell`];
//! `inbox::bell`) or a request nudges it (`worker::nudge`), sends what requests left for the
//! control plane, and runs the periodic work in rounds ([`Rounds`]) every
//! [`INBOX_TICK`] (every [`INBOX_SHORT_TICK`] while a load-reading balance policy, a lease
//! wait or a drain needs it).

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{unix_now, INBOX_SHORT_TICK, INBOX_TICK};
use crate::worker::Worker;

// The periodic work below runs in the inbox loop's rounds ([`Rounds`]), every
// [`INBOX_TICK`]: an interval shorter than that acts as one round.

/// How often expired revocations are dropped.
pub const REVOCATION_PURGE: Duration = Duration::from_secs(10);

/// How often the quota shard's timer work (returns, prefetch, expiry) runs.
pub const QUOTA_TICK: Duration = Duration::from_millis(100);

/// How long a worker may hold back breaker reports that hold only successes (failures and
/// probes go out at once: the outcome nudges the inbox loop). Successes only fill the
/// decider's window, which lasts seconds; holding them this long saves a wake-up of the
/// coordination thread per worker per request.
pub const BREAKER_SUCCESS_FLUSH: Duration = Duration::from_millis(100);

/// The loop (see the module docs); returns once the worker drains and its last connection
/// has closed.
pub(super) async fn run(worker: Rc<Worker>) {
    let mut rounds = Rounds::new(Instant::now());
    let mut trim = super::trim::Trim::default();
    loop {
        // Every wake-up: the messages that woke it and what requests left to send.
        worker.poll_inbox();
        worker.take_quota_answers();
        // Hibernating connections past their keep-alive deadline close (at most every
        // `EXPIRE_EVERY`, however often this runs).
        let now = Instant::now();
        worker.drain.expire(now);
        worker.drain.escalate(now, crate::worker::HANDOVER_GRACE);
        let due = rounds.due(now);
        if let Some(due) = due {
            if due.quota {
                worker.quota.borrow_mut().tick(worker.now_ms());
            }
            if due.purge {
                // Entries leave once the token they name would have expired anyway.
                worker.revocations.borrow_mut().purge(unix_now());
            }
            if due.spend {
                worker.flush_spend();
            }
            // Once many connections have closed, what they held goes back to the kernel.
            trim.tick(worker.conns.get(), now);
            if let Some(log) = worker.access_log.borrow_mut().as_mut() {
                log.tick(now);
            }
            if let Some(t) = worker.tracer.borrow_mut().as_mut() {
                t.tick(now);
            }
        }
        worker.flush_quota();
        let successes_due = due.is_some_and(|d| d.breaker_successes);
        worker.flush_breakers(successes_due);
        worker.flush_balance();
        if worker.drain.is_draining() && worker.conns.get() == 0 {
            return;
        }
        let short = if worker.lease.has_waiters() {
            Some(crate::worker::lease::LEASE_POLL)
        } else if worker.drain.is_draining() || worker.snapshot.borrow().balance.reads_load() {
            Some(INBOX_SHORT_TICK)
        } else {
            None
        };
        let wake_at = match short {
            Some(d) => rounds.next().min(Instant::now() + d),
            None => rounds.next(),
        };
        monoio::select! {
            _ = monoio::time::sleep_until(wake_at.into()) => {}
            _ = worker.nudge.nudged() => {}
        }
    }
}

/// The inbox loop's periodic rounds, every [`INBOX_TICK`] on a schedule of their own: a
/// wake-up for a message does not move them, so the quota tick, the spend flush and the
/// success-only breaker reports keep their intervals however often the loop is woken.
struct Rounds {
    /// When the next round is due.
    next: Instant,
    last_quota: Instant,
    last_purge: Instant,
    last_spend: Instant,
    last_breaker: Instant,
}

/// What a round runs (see [`Rounds::due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    quota: bool,
    purge: bool,
    spend: bool,
    breaker_successes: bool,
}

impl Rounds {
    fn new(start: Instant) -> Rounds {
        Rounds {
            next: start + INBOX_TICK,
            last_quota: start,
            last_purge: start,
            last_spend: start,
            last_breaker: start,
        }
    }

    /// When the next round is due.
    fn next(&self) -> Instant {
        self.next
    }

    /// The round due at `now`, if one is: what it runs is measured from the rounds' own
    /// schedule, not from `now`, so a round a timer fires a little late still runs
    /// everything whose interval is one round. A worker that slept through rounds (a long
    /// stall) runs one and starts the schedule again from `now`.
    fn due(&mut self, now: Instant) -> Option<Due> {
        if now < self.next {
            return None;
        }
        let at = self.next;
        let every = |last: &mut Instant, interval: Duration| {
            let due = at.duration_since(*last) >= interval;
            if due {
                *last = at;
            }
            due
        };
        let due = Due {
            quota: every(&mut self.last_quota, QUOTA_TICK),
            purge: every(&mut self.last_purge, REVOCATION_PURGE),
            spend: every(&mut self.last_spend, crate::spend::WORKER_FLUSH),
            breaker_successes: every(&mut self.last_breaker, BREAKER_SUCCESS_FLUSH),
        };
        self.next = at + INBOX_TICK;
        if self.next <= now {
            self.next = now + INBOX_TICK;
        }
        Some(due)
    }
}

/// Keeps a read pending on the worker's end of its bell (see `inbox::bell`): each byte heard
/// clears the bell and nudges the inbox loop. Returns when the drain starts (the read is
/// cancelled and reaped first), when the ringing ends are gone or when the socket fails; the
/// inbox tick still finds every message then.
pub(super) async fn listen_for_bell(worker: Rc<Worker>, chime: crate::inbox::Chime) {
    use monoio::io::CancelableAsyncReadRent;

    let (socket, heard) = chime.into_parts();
    let mut socket = match monoio::net::UnixStream::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "shardgate-w{}: cannot listen for the control plane's bell ({e}); \
                 messages wait for the {INBOX_TICK:?} inbox tick",
                worker.id
            );
            return;
        }
    };
    let canceller = monoio::io::Canceller::new();
    let mut buf = vec![0u8; 64];
    loop {
        let mut read = std::pin::pin!(socket.cancelable_read(buf, canceller.handle()));
        let (res, b) = monoio::select! {
            r = &mut read => r,
            _ = worker.drain.stop_accepting() => {
                let _ = canceller.cancel();
                let _ = read.await;
                return;
            }
        };
        buf = b;
        match res {
            Ok(n) if n > 0 => {
                heard.clear();
                worker.nudge.nudge();
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounds keep their schedule: a wake-up between rounds runs none, a round whose timer
    /// fires late still runs everything due every round, the purge comes every 10 s of
    /// rounds, and a stall runs one round and restarts the schedule.
    #[test]
    fn rounds_keep_their_own_schedule() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let every_round = Due {
            quota: true,
            purge: false,
            spend: true,
            breaker_successes: true,
        };
        let mut r = Rounds::new(t0);
        assert_eq!(r.next(), ms(100));
        assert_eq!(r.due(ms(0)), None);
        assert_eq!(r.due(ms(99)), None, "a nudge between rounds");
        assert_eq!(r.due(ms(103)), Some(every_round), "a late timer");
        assert_eq!(r.next(), ms(200), "the schedule did not move");
        assert_eq!(r.due(ms(150)), None);
        assert_eq!(r.due(ms(200)), Some(every_round));
        let mut purges = 0;
        for round in 3..=100u64 {
            let due = r.due(ms(round * 100 + 1)).expect("due");
            assert!(
                due.quota && due.spend && due.breaker_successes,
                "round {round}"
            );
            purges += usize::from(due.purge);
        }
        assert_eq!(purges, 1, "one purge in 10 s");
        // Asleep for 1.05 s: one round now, the next a whole interval later.
        assert_eq!(r.due(ms(11_150)), Some(every_round));
        assert_eq!(r.next(), ms(11_250));
        assert_eq!(r.due(ms(11_200)), None);
        assert_eq!(r.due(ms(11_250)), Some(every_round));
    }
}
