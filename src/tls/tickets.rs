//! Session tickets (resumption) for the TLS listener: stateless, lock-free, and valid on every
//! worker.
//!
//! rustls's own `Ticketer` rotates its key behind an `RwLock` and tracks the longest ticket in
//! an atomic, both shared by every connection of the config: one cache line every core would
//! write on every handshake. And its `ServerSessionMemoryCache` (stateful resumption) is a
//! `Mutex`. Neither belongs on a thread-per-core data path.
//!
//! [`Tickets`] derives its key from a process secret and the current period instead:
//! `key(p) = HKDF-SHA256(secret, info = "shardgate ticket" || p)` with `p = unix time /`
//! [`TICKET_PERIOD`]. Nothing mutable is shared: every worker holds its own copy of the
//! secret (from the snapshot), computes the same key, and so accepts a ticket another worker
//! issued (SO_REUSEPORT sends a returning client to any worker). Keys rotate every period by
//! themselves; a ticket is accepted for the period it was issued in and the next one, so it
//! lives at most two periods (the lifetime the client is told is one period).
//!
//! Ticket: `period (4 bytes, BE) || nonce (12) || ChaCha20-Poly1305(state) || tag (16)`, the
//! period authenticated as associated data. The nonce is random (ring's `SystemRandom`).
//!
//! # Performance
//!
//! Per ticket issued or redeemed: one HKDF (two HMAC-SHA256) and one AEAD key setup, a few
//! microseconds — beside a handshake's ECDHE and signature (~100 µs). Only handshakes pay it.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// How long one ticket key is used to issue tickets.
pub const TICKET_PERIOD_SECS: u64 = 6 * 60 * 60;

/// Most bytes of a ticket accepted for decryption (rustls's session state is a few hundred
/// bytes with a client certificate chain; a larger one is not ours).
const MAX_TICKET: usize = 16 * 1024;

/// The ticket producer of one worker's server config (see the module docs).
pub struct Tickets {
    secret: [u8; 32],
    rng: SystemRandom,
    /// Test hook: a fixed clock (unix seconds); `None` reads the system clock.
    clock: Option<u64>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets { .. }")
    }
}

impl Tickets {
    /// A producer keyed by `secret` (every worker of a process gets the same one).
    pub fn new(secret: [u8; 32]) -> Self {
        Self {
            secret,
            rng: SystemRandom::new(),
            clock: None,
        }
    }

    fn period(&self) -> u32 {
        let now = self.clock.unwrap_or_else(crate::time::unix_now);
        (now / TICKET_PERIOD_SECS) as u32
    }

    fn key(&self, period: u32) -> LessSafeKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"shardgate session tickets");
        let prk = salt.extract(&self.secret);
        let p = period.to_be_bytes();
        let info = [b"shardgate ticket".as_slice(), &p];
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .expect("HKDF output of one AEAD key length is valid");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

/// A fresh random ticket secret for a process (the config load makes one).
pub fn random_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    // Without randomness no TLS handshake could work either; fail loudly.
    SystemRandom::new()
        .fill(&mut s)
        .expect("the system random source works");
    s
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_PERIOD_SECS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let period = self.period();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let p = period.to_be_bytes();
        let mut out = Vec::with_capacity(4 + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&p);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key(period)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(p),
                &mut out[4 + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < 4 + NONCE_LEN + aead::MAX_TAG_LEN || ticket.len() > MAX_TICKET {
            return None;
        }
        let (p, rest) = ticket.split_at(4);
        let period = u32::from_be_bytes(p.try_into().ok()?);
        let now = self.period();
        // The period it was issued in, or the one before the current one.
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key(period)
            .open_in_place(nonce, Aad::from(p), &mut buf)
            .ok()?;
        let n = plain.len();
        buf.truncate(n);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn at(secret: [u8; 32], unix: u64) -> Tickets {
        Tickets {
            clock: Some(unix),
            ..Tickets::new(secret)
        }
    }

    #[test]
    fn a_ticket_from_one_worker_opens_on_another_within_two_periods() {
        let secret = [7u8; 32];
        let t0 = 1_000 * TICKET_PERIOD_SECS + 5;
        let ticket = at(secret, t0).encrypt(b"session state").unwrap();
        // Another worker: its own producer from the same secret.
        for (later, opens) in [
            (0, true),
            (TICKET_PERIOD_SECS - 10, true),
            (TICKET_PERIOD_SECS, true),
            (2 * TICKET_PERIOD_SECS - 10, true),
            (2 * TICKET_PERIOD_SECS, false),
            (10 * TICKET_PERIOD_SECS, false),
        ] {
            let got = at(secret, t0 + later).decrypt(&ticket);
            assert_eq!(got.is_some(), opens, "{later} s later");
            if opens {
                assert_eq!(got.unwrap(), b"session state");
            }
        }
        // Before it was issued (a clock set back): refused.
        assert!(at(secret, t0 - TICKET_PERIOD_SECS)
            .decrypt(&ticket)
            .is_none());
    }

    #[test]
    fn tampered_foreign_and_malformed_tickets_are_refused() {
        let secret = [9u8; 32];
        let t0 = 77 * TICKET_PERIOD_SECS;
        let tickets = at(secret, t0);
        let good = tickets.encrypt(b"state").unwrap();
        assert_ne!(tickets.encrypt(b"state").unwrap(), good, "nonces are fresh");
        // Every single-byte change (period, nonce, ciphertext, tag) is caught.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(tickets.decrypt(&bad).is_none(), "byte {i} flipped");
        }
        // Truncations and extensions.
        for n in 0..good.len() {
            assert!(tickets.decrypt(&good[..n]).is_none(), "first {n} bytes");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(tickets.decrypt(&longer).is_none());
        // Another process's secret.
        assert!(at([1u8; 32], t0).decrypt(&good).is_none());
        assert!(tickets.decrypt(&vec![0u8; MAX_TICKET + 1]).is_none());
        assert!(tickets.decrypt(&[]).is_none());
    }
}
