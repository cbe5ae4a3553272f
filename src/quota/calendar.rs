//! Calendar windows: a budget's limit holds per day, per month (in a configured time zone) or
//! in total, instead of per sliding minute (coordination thread only).
//!
//! A [`Calendar`] turns a slot into the calendar period containing it ([`Period`]: its first
//! and one-past-last slot, and its start in UNIX ms). A [`CalWindow`] is one key's count in
//! the current period and in the next one (a lease prefetched for the slot after the current
//! one may fall in it), with the same operations the sliding [`Ring`](super::window::Ring)
//! offers the coordinator, so a calendar window is a drop-in for the token dimension of a
//! rule. What is counted in a period is never available again in it: the limit holds over
//! the whole period, and the count starts from zero (or from the persisted use, see
//! `LocalCoordinator`) when the next one begins.
//!
//! # Boundaries
//!
//! Periods start at local midnight (the first of the month for a month) in the time zone,
//! DST included: a day may be 23 or 25 hours long. Midnight of any zone in use today is a
//! whole minute of UNIX time, so on a slot boundary; an odd historical offset rounds the
//! boundary up to the next slot (the slot that contains midnight belongs to the day before).

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::SLOT_MS;

/// How long a rule's limit holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// The sliding 60 s window of quota rules (see the module docs of `quota`).
    #[default]
    Minute,
    /// A calendar day.
    Day,
    /// A calendar month.
    Month,
    /// Forever: the limit is a total.
    Total,
}

impl Window {
    pub fn is_calendar(self) -> bool {
        self != Window::Minute
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Day => "day",
            Window::Month => "month",
            Window::Total => "total",
        }
    }
}

/// One calendar period in slots of this process (`end` is one past its last slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: u64,
    pub end: u64,
    /// Where the period starts in UNIX ms (the same on every host; 0 for `Total`).
    pub start_unix_ms: u64,
}

impl Period {
    fn contains(&self, slot: u64) -> bool {
        self.start <= slot && slot < self.end
    }
}

/// A time zone and this process's quota epoch: slots to calendar periods.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    /// UNIX ms of slot 0's start.
    epoch_unix_ms: u64,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar::new(TimeZone::UTC, 0)
    }
}

impl Calendar {
    pub fn new(tz: TimeZone, epoch_unix_ms: u64) -> Calendar {
        Calendar { tz, epoch_unix_ms }
    }

    pub fn epoch_unix_ms(&self) -> u64 {
        self.epoch_unix_ms
    }

    /// The period of `window` containing `slot` (`Minute` has none: the whole time line).
    pub fn period(&self, window: Window, slot: u64) -> Period {
        let at_ms = self.epoch_unix_ms + slot * SLOT_MS;
        let bounds = match window {
            Window::Minute | Window::Total => None,
            Window::Day | Window::Month => self.bounds(window, at_ms),
        };
        let Some((start_ms, end_ms)) = bounds else {
            return Period {
                start: 0,
                end: u64::MAX,
                start_unix_ms: 0,
            };
        };
        let to_slot = |unix_ms: u64| unix_ms.saturating_sub(self.epoch_unix_ms).div_ceil(SLOT_MS);
        Period {
            start: to_slot(start_ms),
            end: to_slot(end_ms).max(slot + 1),
            start_unix_ms: start_ms,
        }
    }

    /// The UNIX ms bounds of the day or month containing `at_ms`; `None` only outside the
    /// years a calendar can name.
    fn bounds(&self, window: Window, at_ms: u64) -> Option<(u64, u64)> {
        let ts = Timestamp::from_millisecond(i64::try_from(at_ms).ok()?).ok()?;
        let date = ts.to_zoned_datetime(self.tz.clone()).date();
        let (first, next) = match window {
            Window::Month => (date.first_of_month(), date.last_of_month().tomorrow().ok()?),
            _ => (date, date.tomorrow().ok()?),
        };
        let unix = |d: jiff::civil::Date| -> Option<u64> {
            let ms = d
                .to_zoned_datetime(self.tz.clone())
                .ok()?
                .timestamp()
                .as_millisecond();
            u64::try_from(ms).ok()
        };
        Some((unix(first)?, unix(next)?))
    }
}

/// One key's count in its current calendar period and the next (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct CalWindow {
    window: Window,
    cur: Period,
    cur_count: u64,
    next: Period,
    next_count: u64,
}

impl CalWindow {
    /// The window at current slot `cur`, starting from `seed` (period start UNIX ms, count)
    /// when it is the current period's persisted use.
    pub(crate) fn new(cal: &Calendar, window: Window, cur: u64, seed: Option<(u64, u64)>) -> Self {
        let p = cal.period(window, cur);
        let count = seed
            .filter(|&(start, _)| start == p.start_unix_ms)
            .map_or(0, |(_, n)| n);
        CalWindow {
            window,
            cur: p,
            cur_count: count,
            next: next_period(cal, window, &p),
            next_count: 0,
        }
    }

    pub(crate) fn window(&self) -> Window {
        self.window
    }

    /// Moves to current slot `cur`: a period that has ended is forgotten.
    pub(crate) fn advance(&mut self, cal: &Calendar, cur: u64) {
        if cur < self.cur.end {
            return;
        }
        if self.next.contains(cur) {
            self.cur = self.next;
            self.cur_count = self.next_count;
        } else {
            self.cur = cal.period(self.window, cur);
            self.cur_count = 0;
        }
        self.next = next_period(cal, self.window, &self.cur);
        self.next_count = 0;
    }

    /// The current period and what it has counted.
    pub(crate) fn current(&self) -> (Period, u64) {
        (self.cur, self.cur_count)
    }

    fn count_mut(&mut self, slot: u64) -> Option<&mut u64> {
        if self.cur.contains(slot) {
            Some(&mut self.cur_count)
        } else if self.next.contains(slot) {
            Some(&mut self.next_count)
        } else {
            None
        }
    }

    pub(crate) fn get(&self, slot: u64) -> u64 {
        if self.cur.contains(slot) {
            self.cur_count
        } else if self.next.contains(slot) {
            self.next_count
        } else {
            0
        }
    }

    /// The period containing `slot` (the current or the next one).
    pub(crate) fn period_of(&self, slot: u64) -> Period {
        if self.next.contains(slot) {
            self.next
        } else {
            self.cur
        }
    }

    pub(crate) fn add(&mut self, slot: u64, n: u64) {
        if let Some(c) = self.count_mut(slot) {
            *c = c.saturating_add(n);
        }
    }

    /// Takes back `n` never used in `slot`; a period already over needs nothing.
    pub(crate) fn sub(&mut self, slot: u64, n: u64) {
        if let Some(c) = self.count_mut(slot) {
            *c = c.saturating_sub(n);
        }
    }

    /// What may still be counted in slot `c` (`cur` or `cur + 1`).
    pub(crate) fn available(&self, c: u64, limit: u64) -> u64 {
        limit.saturating_sub(self.get(c))
    }

    /// The first slot after `cur` in which `need` is available if nothing more is counted:
    /// the start of the next period, or of the one after it when the next one is already too
    /// full (a prefetched lease).
    pub(crate) fn next_free(&self, cur: u64, need: u64, limit: u64) -> u64 {
        if cur + 1 < self.next.start || self.next_count.saturating_add(need) <= limit {
            self.next.start
        } else {
            self.next.end
        }
    }

    /// The larger count of the periods holding slots `cur` and `cur + 1`.
    pub(crate) fn peak(&self, cur: u64) -> u64 {
        self.get(cur).max(self.get(cur + 1))
    }

    /// The slot at whose start everything counted so far no longer counts.
    pub(crate) fn reset_slot(&self) -> u64 {
        if self.next_count > 0 {
            self.next.end
        } else {
            self.cur.end
        }
    }
}

fn next_period(cal: &Calendar, window: Window, p: &Period) -> Period {
    if p.end == u64::MAX {
        Period {
            start: u64::MAX,
            end: u64::MAX,
            start_unix_ms: u64::MAX,
        }
    } else {
        cal.period(window, p.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// UNIX ms of a civil time in `tz`.
    fn at(tz: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> u64 {
        let tz = TimeZone::get(tz).unwrap();
        let ms = jiff::civil::date(y, mo, d)
            .at(h, mi, 0, 0)
            .to_zoned_datetime(tz)
            .unwrap()
            .timestamp()
            .as_millisecond();
        u64::try_from(ms).unwrap()
    }

    /// A calendar whose slot 0 starts at `epoch` (a slot boundary of UNIX time).
    fn cal(tz: &str, epoch: u64) -> Calendar {
        assert_eq!(epoch % SLOT_MS, 0);
        Calendar::new(TimeZone::get(tz).unwrap(), epoch)
    }

    fn slot(cal: &Calendar, unix_ms: u64) -> u64 {
        (unix_ms - cal.epoch_unix_ms) / SLOT_MS
    }

    #[test]
    fn days_and_months_start_at_local_midnight_dst_included() {
        // (zone, a moment, window, expected start and end as civil times in the zone)
        type Civil = (i16, i8, i8, i8, i8);
        let cases: &[(&str, Civil, Window, Civil, Civil)] = &[
            (
                "UTC",
                (2024, 5, 3, 23, 59),
                Window::Day,
                (2024, 5, 3, 0, 0),
                (2024, 5, 4, 0, 0),
            ),
            // Berlin springs forward on 2024-03-31: a 23 h day.
            (
                "Europe/Berlin",
                (2024, 3, 31, 12, 0),
                Window::Day,
                (2024, 3, 31, 0, 0),
                (2024, 4, 1, 0, 0),
            ),
            // ... and falls back on 2024-10-27: a 25 h day.
            (
                "Europe/Berlin",
                (2024, 10, 27, 23, 30),
                Window::Day,
                (2024, 10, 27, 0, 0),
                (2024, 10, 28, 0, 0),
            ),
            (
                "Asia/Kolkata",
                (2024, 1, 1, 0, 0),
                Window::Day,
                (2024, 1, 1, 0, 0),
                (2024, 1, 2, 0, 0),
            ),
            (
                "America/New_York",
                (2024, 2, 29, 23, 0),
                Window::Month,
                (2024, 2, 1, 0, 0),
                (2024, 3, 1, 0, 0),
            ),
            (
                "Australia/Sydney",
                (2023, 12, 31, 23, 50),
                Window::Month,
                (2023, 12, 1, 0, 0),
                (2024, 1, 1, 0, 0),
            ),
        ];
        for &(tz, (y, mo, d, h, mi), window, s, e) in cases {
            let c = cal(tz, 1_600_000_200_000 - 1_600_000_200_000 % SLOT_MS);
            let p = c.period(window, slot(&c, at(tz, y, mo, d, h, mi)));
            let start = at(tz, s.0, s.1, s.2, s.3, s.4);
            let end = at(tz, e.0, e.1, e.2, e.3, e.4);
            assert_eq!(p.start_unix_ms, start, "{tz} {window:?}");
            assert_eq!(
                (p.start, p.end),
                (slot(&c, start), slot(&c, end)),
                "{tz} {window:?}"
            );
        }
        let c = cal("Europe/Berlin", 0);
        let day = c.period(
            Window::Day,
            slot(&c, at("Europe/Berlin", 2024, 3, 31, 12, 0)),
        );
        assert_eq!((day.end - day.start) * SLOT_MS, 23 * 3_600_000);
        let total = c.period(Window::Total, 12_345);
        assert_eq!(
            (total.start, total.end, total.start_unix_ms),
            (0, u64::MAX, 0)
        );
    }

    #[test]
    fn a_period_that_began_before_the_epoch_starts_at_slot_zero() {
        let c = cal("UTC", at("UTC", 2024, 6, 1, 12, 0));
        let p = c.period(Window::Day, 0);
        assert_eq!((p.start, p.start_unix_ms), (0, at("UTC", 2024, 6, 1, 0, 0)));
        assert_eq!(p.end, 12 * 3_600_000 / SLOT_MS);
    }

    /// A fake clock walks across a time-zone midnight: the count of the day before stays in
    /// it, a prefetched lease for the first slot of the new day counts in the new day.
    #[test]
    fn rollover_at_a_time_zone_midnight() {
        let tz = "America/Los_Angeles";
        let c = cal(tz, at(tz, 2024, 11, 2, 23, 0));
        let midnight = slot(&c, at(tz, 2024, 11, 3, 0, 0));
        let mut w = CalWindow::new(&c, Window::Day, 0, None);
        w.add(0, 90);
        assert_eq!(w.available(0, 100), 10);
        // Just before midnight: a prefetch for the next slot lands in the new day.
        let last = midnight - 1;
        w.advance(&c, last);
        w.add(midnight, 30);
        assert_eq!(w.available(last, 100), 10);
        assert_eq!(w.available(midnight, 100), 70);
        assert_eq!(w.peak(last), 90);
        assert_eq!(w.next_free(last, 20, 100), midnight);
        assert_eq!(w.next_free(last, 71, 100), w.period_of(midnight).end);
        assert_eq!(w.reset_slot(), w.period_of(midnight).end);
        // Midnight: the old day is gone, the new one keeps what was prefetched into it.
        w.advance(&c, midnight);
        assert_eq!(w.get(last), 0);
        assert_eq!(w.current().1, 30);
        // That day is 25 h long (DST ends at 2:00 that morning).
        let (p, _) = w.current();
        assert_eq!((p.end - p.start) * SLOT_MS, 25 * 3_600_000);
        // A releases into the old day changes nothing now.
        w.sub(last, 50);
        assert_eq!(w.current().1, 30);
        // A long jump forgets everything.
        w.advance(&c, midnight + 10 * 144_000);
        assert_eq!(w.current().1, 0);
    }

    #[test]
    fn a_seed_counts_only_for_its_own_period() {
        let c = cal("UTC", at("UTC", 2024, 6, 1, 12, 0));
        let day = at("UTC", 2024, 6, 1, 0, 0);
        assert_eq!(
            CalWindow::new(&c, Window::Day, 0, Some((day, 42)))
                .current()
                .1,
            42
        );
        let yesterday = at("UTC", 2024, 5, 31, 0, 0);
        assert_eq!(
            CalWindow::new(&c, Window::Day, 0, Some((yesterday, 42)))
                .current()
                .1,
            0
        );
        assert_eq!(
            CalWindow::new(&c, Window::Total, 0, Some((0, 7)))
                .current()
                .1,
            7
        );
    }
}
