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
//! Fixed size per worker (`[auth] token_cache_entries`, [`WAYS`]-way set associative, indexed
//! by the token's last eight bytes — the signature's); entries reuse their buffers when
//! replaced, so a warm cache allocates nothing. Tokens over [`MAX_CACHED_TOKEN`] bytes are not
//! cached. Each entry has a tag, a bijective hash of those eight bytes, kept apart from the
//! entries so that a set's tags share one cache line: a lookup reads that line, and only an
//! entry whose tag matches is read and compared byte for byte. The tag says only whether all
//! eight bytes are equal at once, so its early exit tells an attacker nothing a blind 64-bit
//! guess would not.
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
/// Entries per set: `n` busy tokens evict each other only when more than this many land in
/// one set. With two ways, 100 tokens in 4096 entries did so in ~3.6 % of populations; with
/// four, ~0.01 % (see the README, "Verified-token cache").
pub const WAYS: usize = 4;

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
    /// Last use, for the choice of which of a set's entries to replace.
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

/// A set's tags, aligned so that they never straddle a cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(32))]
struct SetTags([u64; WAYS]);

/// One worker's verified tokens (module docs). Empty until the first insert.
#[derive(Default)]
pub struct TokenCache {
    /// [`tag_of`] each entry's token, by set: `tags[set / WAYS][way]`.
    tags: Vec<SetTags>,
    entries: Vec<Entry>,
    clock: u64,
    hits: u64,
    misses: u64,
}

impl TokenCache {
    /// The identity `token` verified to, when it is cached for `generation` and `now` is in its
    /// window (module docs). The values are copied into this thread's spare strings.
    pub fn get(&mut self, generation: u64, token: &[u8], now: u64) -> Option<Identity<'static>> {
        let Some((set, tag)) = self.locate(token) else {
            self.misses += 1;
            return None;
        };
        self.clock += 1;
        let tags = self.tags[set / WAYS].0;
        for (way, _) in tags.iter().enumerate().filter(|(_, t)| **t == tag) {
            let e = &mut self.entries[set + way];
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
        let size = entries.clamp(WAYS, MAX_ENTRIES).next_power_of_two();
        if self.entries.len() != size {
            self.entries.clear();
            self.entries.resize_with(size, Entry::default);
            self.tags.clear();
            self.tags.resize(size / WAYS, SetTags::default());
        }
        let Some((set, tag)) = self.locate(token) else {
            return;
        };
        self.clock += 1;
        let ways = &self.entries[set..set + WAYS];
        let tags = &self.tags[set / WAYS].0;
        // The same token (a newer window), else an empty or stale entry, else the least
        // recently used.
        let same = |w: &usize| {
            tags[*w] == tag && ways[*w].generation == generation && ways[*w].token == token
        };
        let way = ((0..WAYS).find(same))
            .or_else(|| ways.iter().position(|e| e.generation != generation))
            .unwrap_or_else(|| {
                (0..WAYS)
                    .min_by_key(|&w| ways[w].used)
                    .expect("a set has ways")
            });
        self.tags[set / WAYS].0[way] = tag;
        let e = &mut self.entries[set + way];
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

    /// The first of the [`WAYS`] entries `token` may be in, and its tag; `None` while the
    /// cache is empty.
    fn locate(&self, token: &[u8]) -> Option<(usize, u64)> {
        if self.entries.is_empty() {
            return None;
        }
        let tag = tag_of(token);
        let mask = self.entries.len() - 1;
        Some(((tag >> 32) as usize & mask & !(WAYS - 1), tag))
    }
}

/// A bijective hash of the token's last eight bytes (fewer: of its length and all its bytes).
/// They are the signature's: for tokens that verified, as good as random.
fn tag_of(token: &[u8]) -> u64 {
    let tail = &token[token.len().saturating_sub(8)..];
    let mut h = token.len() as u64;
    for &b in tail {
        h = (h << 8) | u64::from(b);
    }
    // Odd, so multiplying is a bijection of u64: equal tags, equal bytes.
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
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
    use super::*;

    const GEN: u64 = 7;
    const WINDOW: Window = Window {
        from: 0,
        until: 100,
    };

    fn id(subject: &str) -> Identity<'_> {
        Identity {
            subject: Cow::Borrowed(subject),
            tenant: None,
            label: None,
            jti: None,
            exp: None,
            scopes: Cow::Borrowed(""),
            upstream_headers: Cow::Borrowed(&[]),
            api_key: None,
        }
    }

    fn subject(c: &mut TokenCache, token: &[u8]) -> Option<String> {
        c.get(GEN, token, 50).map(|i| i.subject.to_string())
    }

    /// `n` distinct tokens that all fall in the first set of a cache of `entries`.
    fn colliding(n: usize, entries: usize) -> Vec<Vec<u8>> {
        (0u32..)
            .map(|i| format!("eyJhbGciOi.eyJzdWIiOi.sig-{i:08}").into_bytes())
            .filter(|t| (tag_of(t) >> 32) as usize & (entries - 1) & !(WAYS - 1) == 0)
            .take(n)
            .collect()
    }

    /// A set holds as many busy tokens as it has ways, all hits; one more evicts the least
    /// recently used, and only it.
    #[test]
    fn a_set_keeps_a_token_per_way_and_evicts_the_least_recently_used() {
        const ENTRIES: usize = 16;
        let tokens = colliding(WAYS + 1, ENTRIES);
        let mut c = TokenCache::default();
        for (i, t) in tokens[..WAYS].iter().enumerate() {
            c.insert(ENTRIES, GEN, t, WINDOW, &id(&format!("u{i}")));
        }
        for _ in 0..3 {
            for (i, t) in tokens[..WAYS].iter().enumerate() {
                assert_eq!(subject(&mut c, t), Some(format!("u{i}")), "way {i}");
            }
        }
        // Token 1 is now the least recently used: touch every other one again.
        for t in [&tokens[0], &tokens[2], &tokens[3]] {
            assert!(subject(&mut c, t).is_some());
        }
        c.insert(ENTRIES, GEN, &tokens[WAYS], WINDOW, &id("new"));
        assert_eq!(subject(&mut c, &tokens[WAYS]).as_deref(), Some("new"));
        assert_eq!(
            subject(&mut c, &tokens[1]),
            None,
            "the least recently used left"
        );
        for i in [0, 2, 3] {
            assert_eq!(subject(&mut c, &tokens[i]), Some(format!("u{i}")));
        }
        // Re-inserting a cached token refreshes its entry instead of taking another way.
        c.insert(
            ENTRIES,
            GEN,
            &tokens[0],
            Window { from: 0, until: 60 },
            &id("again"),
        );
        assert_eq!(subject(&mut c, &tokens[0]).as_deref(), Some("again"));
        for i in [2, 3] {
            assert_eq!(subject(&mut c, &tokens[i]), Some(format!("u{i}")));
        }
        assert_eq!(c.len(), ENTRIES);
    }

    /// Tokens whose last eight bytes are equal share a tag; they are told apart by their
    /// other bytes, and entries of an older generation are taken before a live one is evicted.
    #[test]
    fn equal_tags_are_compared_in_full_and_stale_entries_go_first() {
        let mut c = TokenCache::default();
        let a = b"header.payload-A.signature".to_vec();
        let b = b"header.payload-B.signature".to_vec();
        assert_eq!(tag_of(&a), tag_of(&b));
        c.insert(WAYS, GEN, &a, WINDOW, &id("a"));
        assert_eq!(subject(&mut c, &b), None, "same tag, other bytes: a miss");
        c.insert(WAYS, GEN, &b, WINDOW, &id("b"));
        assert_eq!(subject(&mut c, &a).as_deref(), Some("a"));
        assert_eq!(subject(&mut c, &b).as_deref(), Some("b"));
        // A cache of WAYS entries is one set: fill it under an older generation, then one
        // token of the current generation takes a stale entry and leaves the others.
        let mut c = TokenCache::default();
        let tokens = colliding(WAYS, WAYS);
        for t in &tokens {
            c.insert(WAYS, GEN - 1, t, WINDOW, &id("old"));
        }
        c.insert(WAYS, GEN, &tokens[0], WINDOW, &id("current"));
        assert_eq!(subject(&mut c, &tokens[0]).as_deref(), Some("current"));
        for t in &tokens[1..] {
            assert!(
                c.get(GEN - 1, t, 50).is_some(),
                "an old-generation entry survives"
            );
            assert_eq!(subject(&mut c, t), None);
        }
    }

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
