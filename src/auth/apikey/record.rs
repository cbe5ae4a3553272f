//! The stored form of API keys: one [`KeyRecord`] per key, holding the SHA-256 digest of each
//! of its secrets and never a secret. The keys file is a [`KeysFile`] in JSON (a truncated
//! JSON document never parses, so a half-written file is refused rather than read short);
//! the registry will keep the same records in rows.
//!
//! ```json
//! {"version": 1, "keys": [{
//!   "id": "key_3f9a0c1b2d4e5f60", "name": "ci-bot", "owner": "alice", "tenant": "acme",
//!   "models": ["gpt-4o*"], "scopes": ["chat"], "budgets": ["monthly"],
//!   "claims": {"team": "ml"}, "expires_at": 1798761600, "enabled": true,
//!   "created_at": 1767225600,
//!   "secrets": [{"sha256": "<64 hex>", "prefix": "sg-AbCdEfGh", "created_at": 1767225600}]
//! }]}
//! ```
//!
//! A rotated key keeps its old secret with `not_after` (the end of the grace period) next to
//! the new one; a secret past its `not_after` is dropped at the next change.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{KEY_LEN, KEY_PREFIX, SECRET_BYTES};
use crate::auth::claims::{identity_problem, is_clean_text, MAX_CLAIM_HEADER_BYTES};
use crate::auth::token::B64;
use crate::config_types::ConfigProblem;

/// Longest model pattern, scope, budget or claim name, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Most secrets one key holds at once (the current one and those in their grace period).
pub const MAX_SECRETS: usize = 8;
/// Most model patterns, scopes, budgets or claims per key.
pub const MAX_LIST: usize = 64;
/// Characters of a key shown for display (`sg-` and 8 more): 48 of its 256 bits.
pub const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;
/// The keys file format this build writes and reads.
pub const FILE_VERSION: u32 = 1;

/// The keys file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    pub version: u32,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

/// One API key as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Stable id (`key_` and 16 hex digits); survives rotation.
    pub id: String,
    /// What the key is for, for people.
    pub name: String,
    /// The caller's subject: quotas, metrics, the access log and the subject claim see it.
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Routing label (canary), as a JWT's `label_claim` gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Model patterns ([`super::glob`]) the key may use; empty: every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Scopes, as a token's `scope` claim grants them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Names of the budgets the key draws from (the budget stage's; carried here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<String>,
    /// Further claim values for `[[auth.claim_headers]]` (strings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// Unix seconds from which the key is refused (401 `key_expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub created_at: u64,
    pub secrets: Vec<SecretRecord>,
}

/// One secret of a key: its digest and display prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRecord {
    /// Lowercase hex SHA-256 of the whole key string (prefix included).
    pub sha256: String,
    /// The key's first [`DISPLAY_PREFIX_LEN`] characters.
    pub prefix: String,
    pub created_at: u64,
    /// Unix seconds from which this secret is refused (the end of a rotation's grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
}

fn yes() -> bool {
    true
}

/// A freshly generated key: the secret (shown once) and what is stored of it.
pub struct NewSecret {
    pub key: String,
    pub record: SecretRecord,
}

/// Draws a new key from the system RNG: [`KEY_PREFIX`] and [`SECRET_BYTES`] random bytes in
/// base64url.
pub fn generate_secret(
    rng: &dyn ring::rand::SecureRandom,
    now: u64,
) -> Result<NewSecret, ring::error::Unspecified> {
    let mut bytes = [0u8; SECRET_BYTES];
    rng.fill(&mut bytes)?;
    let key = format!("{KEY_PREFIX}{}", B64.encode(bytes));
    debug_assert_eq!(key.len(), KEY_LEN);
    let record = SecretRecord {
        sha256: hex(&super::digest(key.as_bytes())),
        prefix: key[..DISPLAY_PREFIX_LEN].to_owned(),
        created_at: now,
        not_after: None,
    };
    Ok(NewSecret { key, record })
}

/// A new key id: `key_` and 16 random hex digits.
pub fn generate_id(rng: &dyn ring::rand::SecureRandom) -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 8];
    rng.fill(&mut bytes)?;
    Ok(format!("key_{}", hex(&bytes)))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The digest a `sha256` field holds: exactly 64 lowercase hex digits.
pub fn parse_digest(s: &str) -> Option<super::Digest> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

impl KeysFile {
    /// Every problem of the file, keyed `keys[i].field` (the caller names the file).
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if self.version != FILE_VERSION {
            out.push(ConfigProblem::new(
                "version",
                format!("must be {FILE_VERSION}, got {}", self.version),
            ));
        }
        let mut digests = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            let at = |field: &str| format!("keys[{i}].{field}");
            k.check(&at, &mut out);
            if self.keys[..i].iter().any(|o| o.id == k.id) {
                out.push(ConfigProblem::new(
                    at("id"),
                    format!("duplicate id `{}`", k.id),
                ));
            }
            for (j, s) in k.secrets.iter().enumerate() {
                if let Some(d) = parse_digest(&s.sha256) {
                    if !digests.insert(d) {
                        out.push(ConfigProblem::new(
                            at(&format!("secrets[{j}].sha256")),
                            "the same secret is listed twice",
                        ));
                    }
                }
            }
        }
        out
    }
}

impl KeyRecord {
    /// Checks one record; `at(field)` names a field for a problem.
    pub fn check(&self, at: &dyn Fn(&str) -> String, out: &mut Vec<ConfigProblem>) {
        let id_ok = self.id.len() <= 64
            && !self.id.is_empty()
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && !self.id.starts_with('-');
        if !id_ok {
            out.push(ConfigProblem::new(
                at("id"),
                "must be 1 to 64 ASCII letters, digits, `_` or `-`, not starting with `-`",
            ));
        }
        let idents = [
            ("name", Some(&self.name)),
            ("owner", Some(&self.owner)),
            ("tenant", self.tenant.as_ref()),
            ("label", self.label.as_ref()),
        ];
        for (field, v) in idents {
            if let Some(why) = v.and_then(|v| identity_problem(v)) {
                out.push(ConfigProblem::new(at(field), why));
            }
        }
        let lists = [
            ("models", &self.models),
            ("scopes", &self.scopes),
            ("budgets", &self.budgets),
        ];
        for (field, list) in lists {
            if list.len() > MAX_LIST {
                out.push(ConfigProblem::new(
                    at(field),
                    format!("at most {MAX_LIST} entries"),
                ));
            }
            for (j, v) in list.iter().enumerate() {
                if v.is_empty() || v.len() > MAX_PATTERN_BYTES || !is_clean_text(v) {
                    out.push(ConfigProblem::new(
                        at(&format!("{field}[{j}]")),
                        format!("must be 1 to {MAX_PATTERN_BYTES} bytes of clean text"),
                    ));
                } else if field == "scopes" && v.contains(' ') {
                    out.push(ConfigProblem::new(
                        at(&format!("{field}[{j}]")),
                        "a scope has no spaces",
                    ));
                }
            }
        }
        if self.claims.len() > MAX_LIST {
            out.push(ConfigProblem::new(
                at("claims"),
                format!("at most {MAX_LIST} entries"),
            ));
        }
        for (name, value) in &self.claims {
            if name.is_empty() || name.len() > MAX_PATTERN_BYTES {
                out.push(ConfigProblem::new(
                    at("claims"),
                    format!("claim names must be 1 to {MAX_PATTERN_BYTES} bytes"),
                ));
            }
            if value.is_empty() || value.len() > MAX_CLAIM_HEADER_BYTES || !is_clean_text(value) {
                out.push(ConfigProblem::new(
                    at(&format!("claims.{name}")),
                    format!("must be 1 to {MAX_CLAIM_HEADER_BYTES} bytes of clean text"),
                ));
            }
        }
        if self.secrets.is_empty() || self.secrets.len() > MAX_SECRETS {
            out.push(ConfigProblem::new(
                at("secrets"),
                format!("must hold 1 to {MAX_SECRETS} secrets"),
            ));
        }
        for (j, s) in self.secrets.iter().enumerate() {
            let at = |field: &str| at(&format!("secrets[{j}].{field}"));
            if parse_digest(&s.sha256).is_none() {
                out.push(ConfigProblem::new(
                    at("sha256"),
                    "must be 64 lowercase hex digits (the SHA-256 of the key)",
                ));
            }
            let prefix_ok = s.prefix.starts_with(KEY_PREFIX)
                && s.prefix.len() <= DISPLAY_PREFIX_LEN
                && s.prefix.bytes().all(|b| b.is_ascii_graphic());
            if !prefix_ok {
                out.push(ConfigProblem::new(
                    at("prefix"),
                    format!(
                        "must start with `{KEY_PREFIX}` and be at most {DISPLAY_PREFIX_LEN} visible characters"
                    ),
                ));
            }
        }
    }

    /// Drops secrets whose grace period ended by `now`, always keeping the last one (the
    /// newest: rotation appends).
    pub fn prune_secrets(&mut self, now: u64) {
        let last = self.secrets.len().saturating_sub(1);
        let mut i = 0;
        self.secrets.retain(|s| {
            let keep = i == last || s.not_after.is_none_or(|t| now < t);
            i += 1;
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: &str, key: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            name: "n".into(),
            owner: "alice".into(),
            tenant: None,
            label: None,
            models: vec![],
            scopes: vec![],
            budgets: vec![],
            claims: BTreeMap::new(),
            expires_at: None,
            enabled: true,
            created_at: 1,
            secrets: vec![SecretRecord {
                sha256: hex(&crate::auth::apikey::digest(key.as_bytes())),
                prefix: key[..DISPLAY_PREFIX_LEN].into(),
                created_at: 1,
                not_after: None,
            }],
        }
    }

    #[test]
    fn generated_keys_have_the_format_and_their_digest() {
        let rng = ring::rand::SystemRandom::new();
        let a = generate_secret(&rng, 5).unwrap();
        let b = generate_secret(&rng, 5).unwrap();
        assert_ne!(a.key, b.key);
        for k in [&a, &b] {
            assert_eq!(k.key.len(), KEY_LEN);
            assert!(k.key.starts_with(KEY_PREFIX));
            assert_eq!(
                B64.decode(&k.key[KEY_PREFIX.len()..]).unwrap().len(),
                SECRET_BYTES
            );
            assert_eq!(
                parse_digest(&k.record.sha256),
                Some(crate::auth::apikey::digest(k.key.as_bytes()))
            );
            assert!(k.key.starts_with(&k.record.prefix));
            assert_eq!(k.record.prefix.len(), DISPLAY_PREFIX_LEN);
        }
        let id = generate_id(&rng).unwrap();
        assert!(id.starts_with("key_") && id.len() == 20, "{id}");
    }

    #[test]
    fn digests_parse_only_as_64_lowercase_hex() {
        let good = "0123456789abcdef".repeat(4);
        assert!(parse_digest(&good).is_some());
        for bad in [
            good.to_uppercase(),
            good[1..].to_string(),
            format!("{good}0"),
            format!("{}g", &good[1..]),
            format!(" {}", &good[1..]),
            String::new(),
        ] {
            assert!(parse_digest(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_named_by_its_key_path() {
        let key = format!("{KEY_PREFIX}{}", "A".repeat(43));
        let mut bad = record("bad id!", &key);
        bad.owner = " alice".into();
        bad.models = vec![String::new()];
        bad.scopes = vec!["a b".into()];
        bad.claims.insert("team".into(), "x\ny".into());
        bad.secrets[0].sha256 = "XYZ".into();
        bad.secrets[0].prefix = "sk-1234".into();
        let mut dup = record("k2", &key);
        dup.secrets.push(dup.secrets[0].clone());
        let file = KeysFile {
            version: 2,
            keys: vec![
                record("k1", &key),
                bad,
                dup,
                record("k1", "sg-other-key-xx"),
            ],
        };
        let keys: Vec<String> = file.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "version",
                "keys[1].id",
                "keys[1].owner",
                "keys[1].models[0]",
                "keys[1].scopes[0]",
                "keys[1].claims.team",
                "keys[1].secrets[0].sha256",
                "keys[1].secrets[0].prefix",
                "keys[2].secrets[0].sha256",
                "keys[2].secrets[1].sha256",
                "keys[3].id",
            ]
        );
    }

    #[test]
    fn pruning_keeps_secrets_in_grace_and_the_newest() {
        let mut r = record("k", &format!("{KEY_PREFIX}{}", "A".repeat(43)));
        let mut old = r.secrets[0].clone();
        old.not_after = Some(100);
        old.created_at = 0;
        r.secrets.insert(0, old);
        r.prune_secrets(99);
        assert_eq!(r.secrets.len(), 2);
        r.prune_secrets(100);
        assert_eq!(r.secrets.len(), 1);
        assert_eq!(r.secrets[0].created_at, 1);
        // The only secret is kept even past its end (the key then answers key_expired).
        r.secrets[0].not_after = Some(5);
        r.prune_secrets(1_000);
        assert_eq!(r.secrets.len(), 1);
    }
}
