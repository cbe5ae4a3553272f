//! The affinity key's hash, and the ring's point hashes. Both use one fixed seed, so every
//! worker and every gateway process (of one build) places a key and an endpoint at the same
//! point: several gateways in front of one fleet send a conversation to the same endpoint.
//!
//! Not cryptographic: a caller who crafts keys can only choose which endpoint its own requests
//! go to, which it could do anyway by reusing one key, and the load bound caps what any
//! endpoint takes.

use std::hash::{BuildHasher, Hasher};

use foldhash::quality::{FixedState, FoldHasher};

/// The seed of every hash here; changing it moves every key once.
const SEED: u64 = 0x5eed_ba1a_2ce0_0001;

/// A streaming hash of an affinity key (pieces in order; equal pieces give equal hashes).
pub struct KeyHasher(FoldHasher<'static>);

impl KeyHasher {
    #[inline]
    pub fn new() -> Self {
        KeyHasher(FixedState::with_seed(SEED).build_hasher())
    }

    /// Adds one piece, length-prefixed so that `["ab", "c"]` and `["a", "bc"]` differ.
    #[inline]
    pub fn piece(&mut self, bytes: &[u8]) {
        self.0.write_u64(bytes.len() as u64);
        self.0.write(bytes);
    }

    #[inline]
    pub fn finish(&self) -> u64 {
        self.0.finish()
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// The key of one byte string (a header value, a subject).
#[inline]
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h = KeyHasher::new();
    h.piece(bytes);
    h.finish()
}

/// The ring position of point `v` of the endpoint written `name`.
pub fn point(name: &str, v: u32) -> u64 {
    let mut h = KeyHasher::new();
    h.piece(name.as_bytes());
    h.0.write_u32(v);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_delimited_and_stable() {
        let of = |pieces: &[&[u8]]| {
            let mut h = KeyHasher::new();
            for p in pieces {
                h.piece(p);
            }
            h.finish()
        };
        assert_ne!(of(&[b"ab", b"c"]), of(&[b"a", b"bc"]));
        assert_ne!(of(&[b"abc"]), of(&[b"ab", b"c"]));
        assert_eq!(of(&[b"abc"]), hash(b"abc"));
        assert_eq!(hash(b"session-1"), hash(b"session-1"));
        assert_ne!(hash(b"session-1"), hash(b"session-2"));
        assert_ne!(point("a:1", 0), point("a:1", 1));
        assert_ne!(point("a:1", 0), point("a:2", 0));
    }
}
