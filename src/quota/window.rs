//! One key's counts per slot over the enforced span, plus the one future slot a prefetched
//! lease may be counted in (coordination thread only).
//!
//! The ring covers slots `cur - WINDOW_SLOTS ..= cur + 1`. The invariant it keeps for the
//! coordinator: for every slot `e`, the sum over `e - WINDOW_SLOTS ..= e` is at most the
//! limit, because every addition is checked against every span that contains it.

use super::{SPAN_SLOTS, WINDOW_SLOTS};

/// Span plus the future slot.
const RING: usize = SPAN_SLOTS as usize + 1;

#[derive(Debug, Clone)]
pub(crate) struct Ring {
    /// Highest slot covered; the ring holds `head - RING + 1 ..= head`.
    head: u64,
    /// Sum of `counts` (the span ending at `head` plus its oldest slot).
    total: u64,
    counts: [u32; RING],
}

impl Ring {
    pub(crate) fn new(cur: u64) -> Self {
        Ring {
            head: cur + 1,
            total: 0,
            counts: [0; RING],
        }
    }

    /// Moves the ring to current slot `cur`, forgetting slots that left the span.
    pub(crate) fn advance(&mut self, cur: u64) {
        let target = cur + 1;
        if target <= self.head {
            return;
        }
        let steps = (target - self.head).min(RING as u64);
        for s in target + 1 - steps..=target {
            let c = &mut self.counts[(s % RING as u64) as usize];
            self.total -= u64::from(*c);
            *c = 0;
        }
        self.head = target;
    }

    fn covers(&self, slot: u64) -> bool {
        slot <= self.head && slot + RING as u64 > self.head
    }

    pub(crate) fn get(&self, slot: u64) -> u32 {
        if self.covers(slot) {
            self.counts[(slot % RING as u64) as usize]
        } else {
            0
        }
    }

    pub(crate) fn add(&mut self, slot: u64, n: u32) {
        if self.covers(slot) {
            let c = &mut self.counts[(slot % RING as u64) as usize];
            let new = c.saturating_add(n);
            self.total += u64::from(new - *c);
            *c = new;
        }
    }

    /// Takes back `n` counted in `slot` that were never used; slots already out of the span
    /// need nothing.
    pub(crate) fn sub(&mut self, slot: u64, n: u32) {
        if self.covers(slot) {
            let c = &mut self.counts[(slot % RING as u64) as usize];
            let new = c.saturating_sub(n);
            self.total -= u64::from(*c - new);
            *c = new;
        }
    }

    /// Sum over the span ending at slot `e`.
    fn span_sum(&self, e: u64) -> u64 {
        // The two spans the coordinator asks about on every lease come from the running total.
        if e == self.head {
            self.total
                - e.checked_sub(SPAN_SLOTS)
                    .map_or(0, |s| u64::from(self.get(s)))
        } else if e + 1 == self.head {
            self.total - u64::from(self.get(self.head))
        } else {
            (e.saturating_sub(WINDOW_SLOTS)..=e)
                .map(|s| u64::from(self.get(s)))
                .sum()
        }
    }

    /// How much may still be counted in slot `c` (`cur` or `cur + 1`) without any span that
    /// contains `c` going over `limit`, nor slot `c` over `burst`.
    pub(crate) fn available(&self, cur: u64, c: u64, limit: u32, burst: Option<u32>) -> u32 {
        let worst = (c..=(cur + 1).max(c))
            .map(|e| self.span_sum(e))
            .max()
            .unwrap_or(0);
        let mut avail = u64::from(limit).saturating_sub(worst);
        if let Some(b) = burst {
            avail = avail.min(u64::from(b.saturating_sub(self.get(c))));
        }
        avail as u32
    }

    /// The larger count of the two spans a lease of slot `cur` or `cur + 1` lives in: what
    /// the window holds against the limit right now.
    pub(crate) fn peak(&self, cur: u64) -> u64 {
        self.span_sum(cur).max(self.span_sum(cur + 1))
    }

    /// The first slot after `cur` in which `need` will be available if nothing more is
    /// counted. Slots after `cur + 1` hold nothing yet, so the span ending at such a slot is
    /// the only one that contains it.
    pub(crate) fn next_free(&self, cur: u64, need: u32, limit: u32, burst: Option<u32>) -> u64 {
        let need = u64::from(need);
        for e in cur + 1..=cur + 1 + SPAN_SLOTS {
            let mut avail = u64::from(limit).saturating_sub(self.span_sum(e));
            if let Some(b) = burst {
                avail = avail.min(u64::from(b.saturating_sub(self.get(e))));
            }
            if avail >= need {
                return e;
            }
        }
        // Unreachable for need <= limit (and <= burst): the last span above is empty.
        cur + 1 + SPAN_SLOTS
    }

    /// The slot at whose start everything counted so far has left the span.
    pub(crate) fn reset_slot(&self, cur: u64) -> u64 {
        ((self.head + 1).saturating_sub(RING as u64)..=self.head)
            .rev()
            .find(|&s| self.get(s) > 0)
            .map_or(cur, |s| s + SPAN_SLOTS)
    }

    /// Nothing counted in the span (after [`Ring::advance`]).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_checks_every_span_containing_the_slot() {
        let mut r = Ring::new(10);
        r.add(11, 7); // prefetched into the next slot
        assert_eq!(r.available(10, 10, 10, None), 3);
        assert_eq!(r.available(10, 11, 10, None), 3);
        r.add(10, 3);
        assert_eq!(r.available(10, 10, 10, None), 0);
    }

    #[test]
    fn counts_leave_the_span_after_window_slots() {
        let mut r = Ring::new(0);
        r.add(0, 10);
        r.advance(WINDOW_SLOTS);
        assert_eq!(r.available(WINDOW_SLOTS, WINDOW_SLOTS, 10, None), 0);
        assert_eq!(r.next_free(WINDOW_SLOTS, 1, 10, None), WINDOW_SLOTS + 1);
        assert_eq!(r.reset_slot(WINDOW_SLOTS), SPAN_SLOTS);
        r.advance(WINDOW_SLOTS + 1);
        assert_eq!(
            r.available(WINDOW_SLOTS + 1, WINDOW_SLOTS + 1, 10, None),
            10
        );
        assert!(r.is_empty());
    }

    #[test]
    fn burst_caps_one_slot_and_next_free_honours_it() {
        let mut r = Ring::new(5);
        r.add(5, 4);
        assert_eq!(r.available(5, 5, 100, Some(4)), 0);
        assert_eq!(r.available(5, 6, 100, Some(4)), 4);
        assert_eq!(r.next_free(5, 1, 100, Some(4)), 6);
    }

    #[test]
    fn sub_ignores_slots_out_of_span_and_saturates() {
        let mut r = Ring::new(0);
        r.add(0, 2);
        r.sub(0, 5);
        assert_eq!(r.get(0), 0);
        r.advance(500);
        r.sub(0, 1);
        r.add(3, 1);
        assert!(r.is_empty());
    }

    #[test]
    fn running_total_matches_slot_sums() {
        let mut r = Ring::new(0);
        for cur in 0..400u64 {
            r.advance(cur);
            r.add(cur, (cur % 7) as u32);
            r.add(cur + 1, 1);
            r.sub(cur.saturating_sub(3), 2);
            for e in [cur, cur + 1] {
                let slow: u64 = (e.saturating_sub(WINDOW_SLOTS)..=e)
                    .map(|s| u64::from(r.get(s)))
                    .sum();
                assert_eq!(r.span_sum(e), slow);
            }
        }
    }

    #[test]
    fn long_jump_clears_everything() {
        let mut r = Ring::new(0);
        for s in 0..=1 {
            r.add(s, 1);
        }
        r.advance(10_000);
        assert!(r.is_empty());
        assert_eq!(r.reset_slot(10_000), 10_000);
    }
}
