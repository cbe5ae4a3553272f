//! The worker's cache of verified tokens: a token that verified under an [`Authenticator`]
//! (signature, key, claims) is remembered with what its verification found, so the next
//! request carrying the same bytes skips the signature, the base64 and the claims parse.
//! Clients send one token for minutes or hours; verifying it again on every request is most
//! of what authentication costs.
//!
//! # Contract
//!
//! [`TokenCache::get`] answers only for a token byte-for-byte equal to one that verified
//! (compared in time independent of where they differ), under the same [`Authenticator`] generation (every config
//! build, remote key set or API key change makes a new one, so rotated-out keys and changed
//! claim rules never answer from the cache), and only while `now` lies inside the window
//! verification allowed: `nbf`/`iat` (less the leeway) and the key's rotation window from
//! below, `exp` (plus the leeway) and the key's window from above. Anything else is a miss and
//! the caller verifies in full, so a refusal is always the full verification's own error.
//! Revocation is not cached: the caller checks it on every request, hit or miss. Only
//! tokens that verified are stored; a forged token can cost a lookup, never an entry.
//!
//! # Performance
//!
//! Fixed size per worker (`[auth] token_cache_entries`, two-way set associative, indexed by
//! the token's last bytes — the signature); entries reuse their buffers when replaced, so a
//! warm cache allocates nothing. Tokens over [`MAX_CACHED_TOKEN`] bytes are not cached.
//!
//! [`Authenticator`]: super::Authenticator

use std::borrow::Cow;

use super::{claims, Identity};

/// Longest token kept (bytes): bounds the cache's memory at entries × this.
pub const MAX_CACHED_TOKEN: usize = 2048;
/// Largest `token_cache_entries`.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Default `token_cache_entries`.
pub const DEFAULT_ENTRIES: usize = 4096;

/// When a cached verification holds: `from <= now < until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub from: u64,
    pub until: u64,
}

#[derive(Default)]
struct Entry {
    /// The [`Authenticator`](super::Authenticator) generation it verified under; 0: empty.
    generation: u64,
    /// Last use, for the choice of which of a set's two entries to replace.
    used: u64,
    window: Window,
    token: Vec<u8>,
    subject: String,
    tenant: Option<String>,
    label: Option<String>,
    jti: Option<String>,
    exp: Option<u64>,
    scopes: String,
    headers: Vec<(usize, String)>,
}

/// One worker's verified tokens (module docs). Empty until the first insert.
#[derive(Default)]
pub struct TokenCache {
    entries: Vec<Entry>,
    clock: u64,
    hits: u64,
    misses: u64,
}

impl TokenCache {
    /// The identity `token` verified to, when it is cached for `generation` and `now` is in its
    /// window (module docs). The values are copied into this thread's spare strings.
    pub fn get(&mut self, generation: u64, token: &[u8], now: u64) -> Option<Identity<'static>> {
        let Some(set) = self.set_of(token) else {
            self.misses += 1;
            return None;
        };
        self.clock += 1;
        for e in &mut self.entries[set..set + 2] {
            if e.generation == generation
                && e.token.len() == token.len()
                && same_bytes(&e.token, token)
            {
                if now < e.window.from || now >= e.window.until {
                    break;
                }
                e.used = self.clock;
                self.hits += 1;
                return Some(Identity {
                    subject: Cow::Owned(claims::copy_identity(&e.subject)),
                    tenant: e
                        .tenant
                        .as_deref()
                        .map(|s| Cow::Owned(claims::copy_identity(s))),
                    label: e
                        .label
                        .as_deref()
                        .map(|s| Cow::Owned(claims::copy_identity(s))),
                    jti: e.jti.as_deref().map(claims::copy_identity),
                    exp: e.exp,
                    scopes: Cow::Owned(claims::copy_identity(&e.scopes)),
                    upstream_headers: if e.headers.is_empty() {
                        Cow::Borrowed(&[])
                    } else {
                        Cow::Owned(claims::copy_headers(&e.headers))
                    },
                    api_key: None,
                });
            }
        }
        self.misses += 1;
        None
    }

    /// Remembers that `token` verified to `id` under `generation`, valid in `window`.
    /// `entries`: the configured size (0: nothing is cached; a new size empties the cache).
    pub fn insert(
        &mut self,
        entries: usize,
        generation: u64,
        token: &[u8],
        window: Window,
        id: &Identity<'_>,
    ) {
        if entries == 0 || token.len() > MAX_CACHED_TOKEN || window.from >= window.until {
            return;
        }
        let size = entries.clamp(2, MAX_ENTRIES).next_power_of_two();
        if self.entries.len() != size {
            self.entries.clear();
            self.entries.resize_with(size, Entry::default);
        }
        let Some(set) = self.set_of(token) else {
            return;
        };
        self.clock += 1;
        let (a, b) = (&self.entries[set], &self.entries[set + 1]);
        // The same token (a newer window), else an empty or stale entry, else the older one.
        let same = |e: &Entry| e.generation == generation && e.token == token;
        let pick = if same(a) {
            set
        } else if same(b) {
            set + 1
        } else if a.generation != generation {
            set
        } else if b.generation != generation || b.used < a.used {
            set + 1
        } else {
            set
        };
        let e = &mut self.entries[pick];
        e.generation = generation;
        e.used = self.clock;
        e.window = window;
        e.token.clear();
        e.token.extend_from_slice(token);
        copy_into(&mut e.subject, &id.subject);
        copy_opt(&mut e.tenant, id.tenant.as_deref());
        copy_opt(&mut e.label, id.label.as_deref());
        copy_opt(&mut e.jti, id.jti.as_deref());
        e.exp = id.exp;
        copy_into(&mut e.scopes, &id.scopes);
        e.headers.clear();
        e.headers.extend(id.upstream_headers.iter().cloned());
    }

    /// Entries allocated (0 until the first insert).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(hits, misses)` since the worker started.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// The first of the two entries `token` may be in; `None` while the cache is empty.
    fn set_of(&self, token: &[u8]) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        // The last bytes are the signature's: for tokens that verified, as good as random.
        let tail = &token[token.len().saturating_sub(8)..];
        let mut h = token.len() as u64;
        for &b in tail {
            h = (h << 8) | u64::from(b);
        }
        let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mask = self.entries.len() - 1;
        Some((h >> 32) as usize & mask & !1)
    }
}

/// Whether `a == b` (equal lengths), in time that depends on the length only: no early exit
/// at the first difference, so the time taken tells nothing of where a guess went wrong.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    let mut diff = a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .fold(0u64, |d, (x, y)| d | (word(x) ^ word(y)));
    let tail = a.len() - a.len() % 8;
    for (x, y) in a[tail..].iter().zip(&b[tail..]) {
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

fn copy_into(dst: &mut String, src: &str) {
    dst.clear();
    dst.push_str(src);
}

fn copy_opt(dst: &mut Option<String>, src: Option<&str>) {
    match src {
        Some(s) => copy_into(dst.get_or_insert_with(String::new), s),
        None => *dst = None,
    }
}

#[cfg(test)]
mod tests {
    use super::same_bytes;

    #[test]
    fn same_bytes_finds_a_difference_at_every_position_and_length() {
        for len in 0..40 {
            let a: Vec<u8> = (0..len as u8).collect();
            assert!(same_bytes(&a, &a.clone()));
            for i in 0..len {
                for bit in 0..8 {
                    let mut b = a.clone();
                    b[i] ^= 1 << bit;
                    assert!(!same_bytes(&a, &b), "len {len}, byte {i}, bit {bit}");
                }
            }
        }
    }
}
