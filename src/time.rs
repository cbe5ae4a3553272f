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
