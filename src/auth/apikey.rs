//! API keys: the key format, and the table a presented key is looked up in.
//!
//! # Format
//!
//! A key is [`KEY_PREFIX`] (`sg-`) and 43 base64url characters: 32 bytes (256 bits) from the
//! system RNG. Only the SHA-256 digest of a key is stored ([`record`]), with its first
//! characters for display; the key itself is shown once, when it is created or rotated. A
//! digest is enough for secrets of this entropy: nobody can search 2²⁵⁶ keys for one whose
//! digest a leaked file holds.
//!
//! # Contract
//!
//! [`ApiKeyTable::lookup`] takes the presented credential (the bearer token, or the key
//! header's value) and the current unix time. `Ok(&ApiKey)`: a digest in the table matched,
//! that secret is still in its window (a rotated key's old secret is accepted until its grace
//! period ends), and the key is enabled and not expired. Errors, each a 401 with
//! `invalid_api_key` counted by reason: [`AuthError::KeyUnknown`] (nothing matched, or not a
//! key at all), [`AuthError::KeyDisabled`], [`AuthError::KeyExpired`] (the key, or the old
//! secret after its grace period). The key's model allow-list ([`ApiKey::allows_model`]) is
//! the auth stage's check once the model is known (403 `model_not_allowed`).
//!
//! # Timing
//!
//! The presented key is hashed with SHA-256 into a stack buffer and the digest is the map key:
//! every comparison the lookup makes is between digests, never between the presented key and
//! a stored secret, so how long a lookup takes says nothing about any stored key (learning
//! that a probe's digest shares leading bytes with a stored digest gives no handle on a key
//! with that digest). Inputs of the wrong length or prefix are refused before hashing; that
//! says only what the format already says.
//!
//! # Performance
//!
//! One SHA-256 of 46 bytes (a single compression block), one probe of a hash map keyed by the
//! digest (whose first 8 bytes are the hash: digests are uniform, and nobody who is not an
//! admin chooses the stored ones), no lock and no allocation. `cargo bench --bench apikey`.
//! The table is part of the snapshot each worker holds; the returned [`ApiKey`] borrows from
//! it, so an identity built from it copies nothing.

pub mod glob;
pub mod record;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::claims::{identity_problem, is_clean_text, MAX_CLAIM_HEADER_BYTES};
use super::AuthError;
use crate::config_types::ConfigProblem;
pub use record::{KeyRecord, KeysFile, SecretRecord};

/// What every key starts with: a bearer token with this prefix is an API key, not a JWT (a
/// compact JWS starts with the base64url of `{`, so none starts with `sg-`).
pub const KEY_PREFIX: &str = "sg-";
/// Random bytes in a key.
pub const SECRET_BYTES: usize = 32;
/// Length of a key: the prefix and the unpadded base64url of [`SECRET_BYTES`].
pub const KEY_LEN: usize = KEY_PREFIX.len() + (SECRET_BYTES * 4).div_ceil(3);

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `key`, on the stack (RustCrypto's `sha2`, which takes the CPU's SHA extensions
/// when it has them; the same digest as ring's, checked against FIPS 180-4 vectors below).
#[inline]
pub fn digest(key: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(key).into()
}

/// Whether `token` has the shape of a key (prefix and length), before any hashing.
#[inline]
pub fn looks_like_key(token: &[u8]) -> bool {
    token.len() == KEY_LEN && token.starts_with(KEY_PREFIX.as_bytes())
}

/// One key, as the data path sees it. Borrowed by the [`Identity`](super::Identity) of a
/// request that presented it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    id: Box<str>,
    name: Box<str>,
    pub(super) owner: Box<str>,
    pub(super) tenant: Option<Box<str>>,
    pub(super) label: Option<Box<str>>,
    /// Space-separated, as a token's `scope`.
    pub(super) scopes: Box<str>,
    models: Box<[Box<str>]>,
    budgets: Box<[Box<str>]>,
    expires_at: Option<u64>,
    enabled: bool,
    /// Rendered claim headers (index into the authenticator's mapped headers, value).
    pub(super) upstream_headers: Vec<(usize, String)>,
}

impl ApiKey {
    /// The key's stable id (quota rules keyed by `api_key` count under it).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Budget names the key draws from (enforced by the budget stage).
    pub fn budgets(&self) -> &[Box<str>] {
        &self.budgets
    }

    /// Whether the key has a model allow-list.
    pub fn restricts_models(&self) -> bool {
        !self.models.is_empty()
    }

    /// Whether the key may use `model`: no allow-list, or a pattern matches. A request that
    /// names no model is not restricted by the list.
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        match model {
            _ if self.models.is_empty() => true,
            None => true,
            Some(m) => self.models.iter().any(|p| glob::matches(p, m)),
        }
    }
}

/// Where a digest points: a key, and until when this secret is accepted.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u32,
    /// Unix seconds; `u64::MAX`: no end.
    not_after: u64,
}

/// The map key: a digest, hashed by its first 8 bytes (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DigestKey(Digest);

impl Hash for DigestKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Passes the digest's first 8 bytes through as the hash.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in rather than drop it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Every key a worker accepts, by the digest of each of its secrets. Part of the snapshot.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyTable {
    keys: Vec<ApiKey>,
    by_digest: HashMap<DigestKey, Slot, BuildHasherDefault<PassThrough>>,
}

/// The claim names a key's values stand in for, and the claim headers to render
/// (the authenticator's `[auth]` settings).
pub(super) struct ClaimMapping<'a> {
    pub subject: &'a str,
    pub tenant: Option<&'a str>,
    pub label: Option<&'a str>,
    pub mapped: &'a [Box<str>],
    pub separators: &'a [Box<str>],
}

impl ApiKeyTable {
    /// Finds the key `token` is (module docs). No allocation.
    #[inline]
    pub fn lookup(&self, token: &[u8], now: u64) -> Result<&ApiKey, AuthError> {
        if !looks_like_key(token) {
            return Err(AuthError::KeyUnknown);
        }
        self.lookup_digest(&digest(token), now)
    }

    /// [`ApiKeyTable::lookup`] of a key whose SHA-256 is `d` (the probe and the state checks
    /// without the hashing: what `benches/apikey.rs` measures apart).
    #[inline]
    pub fn lookup_digest(&self, d: &Digest, now: u64) -> Result<&ApiKey, AuthError> {
        let slot = self
            .by_digest
            .get(&DigestKey(*d))
            .ok_or(AuthError::KeyUnknown)?;
        let key = &self.keys[slot.key as usize];
        if !key.enabled {
            return Err(AuthError::KeyDisabled);
        }
        if now >= slot.not_after || key.expires_at.is_some_and(|t| now >= t) {
            return Err(AuthError::KeyExpired);
        }
        Ok(key)
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Builds the table from stored records, rendering each key's claim headers for
    /// `mapping`. Records are expected to be checked ([`KeysFile::problems`]); what cannot be
    /// rendered under this mapping (a scope containing a claim header's separator) is a
    /// problem naming the key.
    pub(super) fn build(
        records: &[KeyRecord],
        mapping: &ClaimMapping<'_>,
    ) -> Result<ApiKeyTable, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut table = ApiKeyTable::default();
        for (i, r) in records.iter().enumerate() {
            let mut bad = false;
            for v in [Some(&r.owner), r.tenant.as_ref(), r.label.as_ref()]
                .into_iter()
                .flatten()
            {
                bad |= identity_problem(v).is_some();
            }
            let upstream_headers = match render_headers(r, mapping) {
                Ok(h) => h,
                Err(claim) => {
                    problems.push(ConfigProblem::new(
                        format!("keys[{i}]"),
                        format!(
                            "key `{}`: its {claim} cannot be sent as a claim header",
                            r.id
                        ),
                    ));
                    continue;
                }
            };
            if bad {
                problems.push(ConfigProblem::new(
                    format!("keys[{i}]"),
                    format!("key `{}` has an invalid owner, tenant or label", r.id),
                ));
                continue;
            }
            let index = table.keys.len() as u32;
            for s in &r.secrets {
                let Some(d) = record::parse_digest(&s.sha256) else {
                    problems.push(ConfigProblem::new(
                        format!("keys[{i}].secrets"),
                        format!("key `{}` has a malformed digest", r.id),
                    ));
                    continue;
                };
                let slot = Slot {
                    key: index,
                    not_after: s.not_after.unwrap_or(u64::MAX),
                };
                if table.by_digest.insert(DigestKey(d), slot).is_some() {
                    problems.push(ConfigProblem::new(
                        format!("keys[{i}].secrets"),
                        format!("key `{}` repeats another key's secret", r.id),
                    ));
                }
            }
            table.keys.push(ApiKey {
                id: r.id.as_str().into(),
                name: r.name.as_str().into(),
                owner: r.owner.as_str().into(),
                tenant: r.tenant.as_deref().map(Into::into),
                label: r.label.as_deref().map(Into::into),
                scopes: r.scopes.join(" ").into(),
                models: r.models.iter().map(|m| m.as_str().into()).collect(),
                budgets: r.budgets.iter().map(|b| b.as_str().into()).collect(),
                expires_at: r.expires_at,
                enabled: r.enabled,
                upstream_headers,
            });
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }
}

/// The claim header values of key `r`: for each mapped claim, the key's value standing in
/// for it (the subject, tenant and label claims; `scope`; the record's `claims`), rendered as
/// a token's would be. `Err(claim)`: that claim cannot be rendered.
fn render_headers(r: &KeyRecord, m: &ClaimMapping<'_>) -> Result<Vec<(usize, String)>, String> {
    let mut out = Vec::new();
    for (i, claim) in m.mapped.iter().enumerate() {
        let claim: &str = claim;
        let value: Option<String> = if claim == m.subject {
            Some(r.owner.clone())
        } else if Some(claim) == m.tenant {
            r.tenant.clone()
        } else if Some(claim) == m.label {
            r.label.clone()
        } else if claim == "scope" && !r.scopes.is_empty() {
            let sep: &str = &m.separators[i];
            if let Some(s) = r.scopes.iter().find(|s| s.contains(sep)) {
                return Err(format!("scope `{s}`"));
            }
            Some(r.scopes.join(sep))
        } else {
            r.claims.get(claim).cloned()
        };
        let Some(value) = value else { continue };
        if value.is_empty() || value.len() > MAX_CLAIM_HEADER_BYTES || !is_clean_text(&value) {
            return Err(format!("claim `{claim}`"));
        }
        out.push((i, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::record::hex;
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key(c: char) -> String {
        format!("{KEY_PREFIX}{}", c.to_string().repeat(43))
    }

    /// The stored digests were made with ring; the lookup's must be the same function:
    /// FIPS 180-4 / NIST CAVP vectors (empty, "abc", the two-block 448-bit message), and ring
    /// over every length around the block and padding boundaries.
    #[test]
    fn digest_is_sha256() {
        for (msg, want) in [
            (
                &b""[..],
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
        ] {
            assert_eq!(hex(&digest(msg)), want);
        }
        let data: Vec<u8> = (0..200u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in 0..data.len() {
            let r = ring::digest::digest(&ring::digest::SHA256, &data[..len]);
            assert_eq!(&digest(&data[..len])[..], r.as_ref(), "length {len}");
        }
    }

    fn rec(id: &str, secrets: &[(&str, Option<u64>)]) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            name: format!("{id}-name"),
            owner: format!("{id}-owner"),
            tenant: Some("acme".into()),
            label: None,
            models: vec![],
            scopes: vec!["chat".into(), "embed".into()],
            budgets: vec!["monthly".into()],
            claims: [("team".to_string(), "ml".to_string())].into(),
            expires_at: None,
            enabled: true,
            created_at: 1,
            secrets: secrets
                .iter()
                .map(|(k, not_after)| SecretRecord {
                    sha256: hex(&digest(k.as_bytes())),
                    prefix: k[..record::DISPLAY_PREFIX_LEN].into(),
                    created_at: 1,
                    not_after: *not_after,
                })
                .collect(),
        }
    }

    fn no_mapping() -> ClaimMapping<'static> {
        ClaimMapping {
            subject: "sub",
            tenant: None,
            label: None,
            mapped: &[],
            separators: &[],
        }
    }

    #[test]
    fn lookup_answers_by_state_of_key_and_secret() {
        let (a, a_old, b, c, d) = (key('A'), key('a'), key('B'), key('C'), key('D'));
        let mut disabled = rec("k-b", &[(&b, None)]);
        disabled.enabled = false;
        let mut expired = rec("k-c", &[(&c, None)]);
        expired.expires_at = Some(NOW);
        let mut both = rec("k-d", &[(&d, None)]);
        both.enabled = false;
        both.expires_at = Some(NOW - 1);
        let records = [
            rec("k-a", &[(&a_old, Some(NOW + 1)), (&a, None)]),
            disabled,
            expired,
            both,
        ];
        let t = ApiKeyTable::build(&records, &no_mapping()).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t.lookup(a.as_bytes(), NOW).unwrap().id(), "k-a");
        assert_eq!(t.lookup(a_old.as_bytes(), NOW).unwrap().id(), "k-a");
        assert_eq!(
            t.lookup(a_old.as_bytes(), NOW + 1).unwrap_err(),
            AuthError::KeyExpired
        );
        assert_eq!(t.lookup(a.as_bytes(), NOW + 1).unwrap().id(), "k-a");
        assert_eq!(
            t.lookup(b.as_bytes(), NOW).unwrap_err(),
            AuthError::KeyDisabled
        );
        assert_eq!(t.lookup(c.as_bytes(), NOW - 1).unwrap().id(), "k-c");
        assert_eq!(
            t.lookup(c.as_bytes(), NOW).unwrap_err(),
            AuthError::KeyExpired
        );
        // Disabled wins over expired: the more deliberate state is the one reported.
        assert_eq!(
            t.lookup(d.as_bytes(), NOW).unwrap_err(),
            AuthError::KeyDisabled
        );
    }

    /// Every near miss of a stored key is unknown: each position changed, cut short, grown,
    /// in another case, padded, with another prefix.
    #[test]
    fn near_misses_of_a_key_are_unknown() {
        let a = key('A');
        let t = ApiKeyTable::build(&[rec("k", &[(&a, None)])], &no_mapping()).unwrap();
        assert!(t.lookup(a.as_bytes(), NOW).is_ok());
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for i in 0..a.len() {
            let mut v = a.clone().into_bytes();
            v[i] ^= 0x01;
            variants.push(v);
        }
        for v in [
            a[..a.len() - 1].to_string(),
            format!("{a}A"),
            format!("{a}="),
            format!(" {a}"),
            format!("{a} "),
            a.to_uppercase(),
            a.replacen("sg-", "SG-", 1),
            a.replacen("sg-", "sk-", 1),
            a.replacen("sg-", "sg_", 1),
            a[3..].to_string(),
            String::new(),
            "sg-".into(),
        ] {
            variants.push(v.into_bytes());
        }
        for v in variants {
            assert_eq!(
                t.lookup(&v, NOW).unwrap_err(),
                AuthError::KeyUnknown,
                "{:?}",
                String::from_utf8_lossy(&v)
            );
        }
    }

    #[test]
    fn models_are_allowed_by_pattern() {
        let a = key('A');
        let mut r = rec("k", &[(&a, None)]);
        let t = ApiKeyTable::build(std::slice::from_ref(&r), &no_mapping()).unwrap();
        let k = t.lookup(a.as_bytes(), NOW).unwrap();
        assert!(k.allows_model(Some("anything")) && k.allows_model(None));
        r.models = vec!["gpt-4o*".into(), "llama-3".into()];
        let t = ApiKeyTable::build(&[r], &no_mapping()).unwrap();
        let k = t.lookup(a.as_bytes(), NOW).unwrap();
        for (m, want) in [
            (Some("gpt-4o"), true),
            (Some("gpt-4o-mini"), true),
            (Some("llama-3"), true),
            (Some("llama-3.1"), false),
            (Some("gpt-4"), false),
            (Some(""), false),
            (None, true),
        ] {
            assert_eq!(k.allows_model(m), want, "{m:?}");
        }
    }

    #[test]
    fn claim_headers_render_the_keys_values() {
        let a = key('A');
        let mapped: Vec<Box<str>> = ["sub", "tid", "scope", "team", "absent"]
            .into_iter()
            .map(Into::into)
            .collect();
        let seps: Vec<Box<str>> = [" ", " ", ",", " ", " "]
            .into_iter()
            .map(Into::into)
            .collect();
        let m = ClaimMapping {
            subject: "sub",
            tenant: Some("tid"),
            label: None,
            mapped: &mapped,
            separators: &seps,
        };
        let t = ApiKeyTable::build(&[rec("k", &[(&a, None)])], &m).unwrap();
        let k = t.lookup(a.as_bytes(), NOW).unwrap();
        assert_eq!(
            k.upstream_headers,
            [
                (0, "k-owner".to_string()),
                (1, "acme".to_string()),
                (2, "chat,embed".to_string()),
                (3, "ml".to_string()),
            ]
        );
        // A scope holding the separator cannot be rendered faithfully: the key is refused.
        let mut r = rec("k", &[(&a, None)]);
        r.scopes = vec!["a,b".into()];
        let p = ApiKeyTable::build(&[r], &m).unwrap_err();
        assert_eq!(p[0].key, "keys[0]");
        assert!(p[0].message.contains("a,b"), "{p:?}");
    }

    #[test]
    fn a_secret_listed_by_two_keys_is_a_problem() {
        let a = key('A');
        let p = ApiKeyTable::build(
            &[rec("k1", &[(&a, None)]), rec("k2", &[(&a, None)])],
            &no_mapping(),
        )
        .unwrap_err();
        assert_eq!(p[0].key, "keys[1].secrets");
    }
}
