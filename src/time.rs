//! Clock helpers every stage shares.

use std::time::Instant;

/// Seconds since the Unix epoch (JWT time).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Microseconds since `since`, saturating.
#[inline]
pub fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}

/// Microseconds from `from` to `to` (0 when `to` is earlier), saturating: for a duration
/// whose end the caller has already read the clock for.
#[inline]
pub fn micros_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from)
        .as_micros()
        .min(u128::from(u64::MAX)) as u64
}
