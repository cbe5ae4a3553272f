//! Remote key sets (`[[auth.jwks]]`): where an identity provider publishes its verification
//! keys, and how a JWK Set document becomes keys. The control plane fetches the documents
//! (`control::jwks`) and hands every worker the keys in a new snapshot; this module only
//! parses and never does I/O.
//!
//! ```toml
//! [[auth.jwks]]
//! jwks_uri = "https://idp.example.com/.well-known/jwks.json"
//! # or, instead of jwks_uri: OIDC discovery at {issuer}/.well-known/openid-configuration
//! issuer = "https://idp.example.com/"   # tokens these keys verify must carry this `iss`
//! refresh_secs = 300        # default; background refresh when the answer has no max-age
//! min_refresh_secs = 10     # default; at most one fetch per interval (unknown kids, errors)
//! timeout_ms = 5000         # default; one whole fetch
//! rsa_alg = "RS256"         # optional; the alg of RSA keys that name none
//! ```
//!
//! # Which keys are taken
//!
//! Every key of the set that is a public verification key ([`Jwk::check_verification_key`])
//! with a `kid`, whose algorithm is known:
//!
//! - its `alg`, when it has one (an asymmetric one: `HS*` and `oct` keys are never taken from
//!   a document anyone can read);
//! - otherwise from its type, where only one algorithm fits: `OKP`/`Ed25519` → EdDSA,
//!   `EC`/`P-256` → ES256, `EC`/`P-384` → ES384;
//! - an `RSA` key without `alg` could be any of RS256..PS512: it takes `rsa_alg`, else the one
//!   RSA algorithm the provider's discovery document lists, else it is passed over.
//!
//! Keys with private members, duplicate `kid`s (both are passed over) or an unusable key are
//! skipped and named in [`ParsedSet::skipped`]. A document with no usable key at all is
//! refused as a whole (the last good set stays in force): an empty set would lock everyone
//! out, which a provider never means. Each key pins its algorithm, as configured keys do.
//!
//! # Refresh
//!
//! A set is fetched when the gateway starts and again after its `Cache-Control: max-age`
//! (clamped to `min_refresh_secs` ..= [`MAX_REFRESH`]) or, without one, `refresh_secs`. A
//! token naming a `kid` that no key has makes the worker ask for a fetch now; fetches of one
//! source are at least `min_refresh_secs` apart whatever asks for them, so a flood of unknown
//! kids costs at most one fetch per interval. A failed fetch keeps the last good keys and is
//! retried after `min_refresh_secs`.

use std::time::Duration;

use serde::Deserialize;

use super::config::Key;
use super::key::{Alg, Jwk};
use super::token::MAX_KID_BYTES;
use crate::config_types::ConfigProblem;

/// Default `refresh_secs`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Default `min_refresh_secs`.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(10);
/// Longest a fetched set is kept without asking again, whatever its `max-age` says.
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Default `timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `timeout_ms`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest document read (JWK Set or discovery).
pub const MAX_DOCUMENT_BYTES: u64 = 1 << 20;
/// Most keys taken from one set.
pub const MAX_KEYS: usize = 100;
/// Where OIDC discovery lives under an issuer.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// `[[auth.jwks]]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub refresh_secs: Option<u64>,
    #[serde(default)]
    pub min_refresh_secs: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub rsa_alg: Option<String>,
}

/// A validated source. Two sources with equal settings are the same source (a reload keeps
/// the keys fetched for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSettings {
    /// The JWK Set's URL; `None`: found by discovery under `issuer`.
    pub jwks_uri: Option<String>,
    pub issuer: Option<String>,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub timeout: Duration,
    pub rsa_alg: Option<Alg>,
}

impl SourceSettings {
    /// The source's name in logs and metrics: its JWKS URL, or its issuer.
    pub fn label(&self) -> &str {
        self.jwks_uri
            .as_deref()
            .or(self.issuer.as_deref())
            .unwrap_or("-")
    }

    /// The discovery document's URL (when `jwks_uri` is not set).
    pub fn discovery_uri(&self) -> Option<String> {
        match (&self.jwks_uri, &self.issuer) {
            (None, Some(iss)) => Some(format!("{}{DISCOVERY_PATH}", iss.trim_end_matches('/'))),
            _ => None,
        }
    }
}

/// A source and the keys last fetched from it (none until the first fetch succeeds).
#[derive(Debug, Clone)]
pub struct RemoteSource {
    pub settings: SourceSettings,
    pub(super) keys: Vec<Key>,
}

impl RemoteSource {
    pub fn new(settings: SourceSettings) -> RemoteSource {
        RemoteSource {
            settings,
            keys: Vec::new(),
        }
    }

    /// How many keys are in force from this source.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The `kid`s in force.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &*k.kid)
    }
}

/// The keys parsed from one document.
#[derive(Debug, Clone)]
pub struct ParsedSet {
    pub keys: Vec<Key>,
    /// `kid` (or `#index`) and why, for each key passed over.
    pub skipped: Vec<(String, String)>,
}

impl ParsedSet {
    /// A fingerprint of the keys (kid, alg and material), to tell whether a fetch changed
    /// anything.
    pub fn fingerprint(&self) -> Vec<(String, &'static str, Vec<u8>)> {
        let mut v: Vec<_> = self
            .keys
            .iter()
            .map(|k| (k.kid.to_string(), k.alg.name(), k.material.public_bytes()))
            .collect();
        v.sort();
        v
    }
}

/// What discovery tells: where the keys are, and the RSA algorithm if exactly one is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub jwks_uri: String,
    pub rsa_alg: Option<Alg>,
}

/// Validates `[[auth.jwks]]`, collecting every problem.
pub(super) fn build_sources(
    raw: &[JwksConfig],
    problems: &mut Vec<ConfigProblem>,
) -> Vec<RemoteSource> {
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let at = |field: &str| format!("auth.jwks[{i}].{field}");
        let before = problems.len();
        if s.jwks_uri.is_none() && s.issuer.is_none() {
            problems.push(ConfigProblem::new(
                at("jwks_uri"),
                "set jwks_uri, or issuer for OIDC discovery",
            ));
        }
        if let Some(u) = &s.jwks_uri {
            if let Err(why) = check_url(u) {
                problems.push(ConfigProblem::new(at("jwks_uri"), why));
            }
        }
        if let Some(iss) = &s.issuer {
            // Only a discovery issuer must be a URL; a bare issuer is just the required `iss`.
            if iss.is_empty() {
                problems.push(ConfigProblem::new(at("issuer"), "must not be empty"));
            } else if s.jwks_uri.is_none() {
                if let Err(why) = check_url(iss) {
                    problems.push(ConfigProblem::new(at("issuer"), why));
                }
            }
        }
        let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
        let refresh = secs(s.refresh_secs, DEFAULT_REFRESH);
        let min_refresh = secs(s.min_refresh_secs, DEFAULT_MIN_REFRESH);
        if min_refresh.is_zero() {
            problems.push(ConfigProblem::new(
                at("min_refresh_secs"),
                "must be at least 1",
            ));
        }
        if refresh < min_refresh || refresh > MAX_REFRESH {
            problems.push(ConfigProblem::new(
                at("refresh_secs"),
                format!(
                    "must be between min_refresh_secs and {}",
                    MAX_REFRESH.as_secs()
                ),
            ));
        }
        let timeout = s.timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            problems.push(ConfigProblem::new(
                at("timeout_ms"),
                format!("must be 1 to {}", MAX_TIMEOUT.as_millis()),
            ));
        }
        let rsa_alg = match &s.rsa_alg {
            None => None,
            Some(a) => match Alg::from_name(a.as_bytes()).filter(|a| is_rsa(*a)) {
                Some(a) => Some(a),
                None => {
                    problems.push(ConfigProblem::new(
                        at("rsa_alg"),
                        format!("`{a}` is not an RSA algorithm (RS256..RS512, PS256..PS512)"),
                    ));
                    None
                }
            },
        };
        let settings = SourceSettings {
            jwks_uri: s.jwks_uri.clone(),
            issuer: s.issuer.clone(),
            refresh,
            min_refresh,
            timeout,
            rsa_alg,
        };
        if out
            .iter()
            .any(|o: &RemoteSource| o.settings.label() == settings.label())
        {
            problems.push(ConfigProblem::new(at("jwks_uri"), "duplicate source"));
        }
        if problems.len() == before {
            out.push(RemoteSource::new(settings));
        }
    }
    out
}

/// An `https` URL, or `http` to a loopback host (a key set is only as trustworthy as the
/// channel it came over).
fn check_url(u: &str) -> Result<(), String> {
    let uri: http::Uri = u.parse().map_err(|_| format!("`{u}` is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("`{u}` has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "`{u}`: plain http is accepted only for loopback hosts; use https"
        )),
        _ => Err(format!("`{u}` must be an https URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_rsa(a: Alg) -> bool {
    matches!(
        a,
        Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
    )
}

/// The algorithm a remote key verifies (module docs), or why it is passed over.
pub fn remote_alg(jwk: &Jwk, rsa_alg: Option<Alg>) -> Result<Alg, String> {
    if jwk.kty == "oct" {
        return Err("symmetric keys are not taken from a remote key set".into());
    }
    if let Some(name) = &jwk.alg {
        return match Alg::from_name(name.as_bytes()) {
            Some(Alg::HS256 | Alg::HS384 | Alg::HS512) => {
                Err("symmetric algorithms are not taken from a remote key set".into())
            }
            Some(a) => Ok(a),
            None => Err(format!("alg `{name}` is not supported")),
        };
    }
    match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("OKP", Some("Ed25519")) => Ok(Alg::EdDSA),
        ("EC", Some("P-256")) => Ok(Alg::ES256),
        ("EC", Some("P-384")) => Ok(Alg::ES384),
        ("RSA", _) => rsa_alg.ok_or_else(|| {
            "an RSA key without `alg` could verify RS256..PS512; set rsa_alg".into()
        }),
        (kty, crv) => Err(format!("no alg, and kty `{kty}` crv {crv:?} names none")),
    }
}

/// Parses a JWK Set document into keys (module docs). `rsa_alg`: the source's `rsa_alg`, or
/// the one discovery found. `issuer`: the `iss` tokens verified with these keys must carry.
pub fn parse_jwks(
    body: &[u8],
    rsa_alg: Option<Alg>,
    issuer: Option<&str>,
) -> Result<ParsedSet, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWK Set (no `keys` array)")?;
    let mut parsed = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(entry.clone()) {
            Ok(j) => j,
            Err(e) => {
                skipped.push((format!("#{i}"), format!("not a JWK: {e}")));
                continue;
            }
        };
        let name = jwk.kid.clone().unwrap_or_else(|| format!("#{i}"));
        match remote_key(&jwk, rsa_alg, issuer) {
            Ok(k) if parsed.len() < MAX_KEYS => parsed.push(k),
            Ok(_) => skipped.push((name, format!("more than {MAX_KEYS} keys"))),
            Err(why) => skipped.push((name, why)),
        }
    }
    // A kid two keys share cannot say which one signed: neither is taken.
    let mut keys = Vec::new();
    for k in &parsed {
        if parsed.iter().filter(|o| o.kid == k.kid).count() > 1 {
            skipped.push((k.kid.to_string(), "duplicate kid".into()));
        } else {
            keys.push(k.clone());
        }
    }
    if keys.is_empty() {
        let why: Vec<String> = skipped.iter().map(|(k, w)| format!("{k}: {w}")).collect();
        return Err(format!("no usable key ({})", why.join("; ")));
    }
    Ok(ParsedSet { keys, skipped })
}

fn remote_key(jwk: &Jwk, rsa_alg: Option<Alg>, issuer: Option<&str>) -> Result<Key, String> {
    let kid = jwk.kid.as_deref().ok_or("no kid")?;
    if kid.is_empty() || kid.len() > MAX_KID_BYTES {
        return Err(format!("kid must be 1 to {MAX_KID_BYTES} bytes"));
    }
    let alg = remote_alg(jwk, rsa_alg)?;
    let material = jwk.material(alg)?;
    Ok(Key {
        kid: kid.into(),
        alg,
        material,
        not_before: 0,
        not_after: u64::MAX,
        issuer: issuer.map(Into::into),
    })
}

/// Reads an OIDC discovery document: its `issuer` must be `issuer` exactly (OIDC Discovery
/// §4.3), its `jwks_uri` a URL as `jwks_uri` must be.
pub fn parse_discovery(body: &[u8], issuer: &str) -> Result<Discovered, String> {
    #[derive(Deserialize)]
    struct Doc {
        issuer: String,
        jwks_uri: String,
        #[serde(default)]
        id_token_signing_alg_values_supported: Vec<String>,
    }
    let doc: Doc =
        serde_json::from_slice(body).map_err(|e| format!("not a discovery document: {e}"))?;
    if doc.issuer != issuer {
        return Err(format!(
            "discovery names issuer `{}`, expected `{issuer}`",
            doc.issuer
        ));
    }
    check_url(&doc.jwks_uri)?;
    let mut rsa = doc
        .id_token_signing_alg_values_supported
        .iter()
        .filter_map(|a| Alg::from_name(a.as_bytes()))
        .filter(|a| is_rsa(*a));
    let rsa_alg = match (rsa.next(), rsa.next()) {
        (Some(a), None) => Some(a),
        _ => None,
    };
    Ok(Discovered {
        jwks_uri: doc.jwks_uri,
        rsa_alg,
    })
}

/// `max-age` of a `Cache-Control` value (`no-cache`/`no-store` count as 0); `None` when it
/// says nothing about freshness.
pub fn max_age(cache_control: &str) -> Option<u64> {
    let mut age = None;
    for d in cache_control.split(',') {
        let d = d.trim();
        let (name, value) = d.split_once('=').unwrap_or((d, ""));
        let name = name.trim();
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(0);
        }
        if name.eq_ignore_ascii_case("max-age") {
            age = value.trim().trim_matches('"').parse::<u64>().ok().or(age);
        }
    }
    age
}

/// When to fetch a source again after a successful fetch whose answer said `max_age`.
pub fn next_refresh(s: &SourceSettings, max_age: Option<u64>) -> Duration {
    match max_age {
        Some(a) => Duration::from_secs(a).clamp(s.min_refresh, MAX_REFRESH),
        None => s.refresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::B64;
    use base64::Engine as _;
    use serde_json::json;

    fn ed(kid: &str) -> serde_json::Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": B64.encode([7u8; 32])})
    }

    fn ec256(kid: &str) -> serde_json::Value {
        // RFC 7515 A.3's P-256 public key.
        json!({"kty": "EC", "crv": "P-256", "kid": kid,
               "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
    }

    fn rsa(kid: &str) -> serde_json::Value {
        json!({"kty": "RSA", "kid": kid, "e": "AQAB", "n": B64.encode([0xC5u8; 256])})
    }

    fn with(mut v: serde_json::Value, k: &str, val: serde_json::Value) -> serde_json::Value {
        v[k] = val;
        v
    }

    fn parse(keys: Vec<serde_json::Value>, rsa_alg: Option<Alg>) -> Result<ParsedSet, String> {
        let doc = json!({ "keys": keys });
        parse_jwks(doc.to_string().as_bytes(), rsa_alg, Some("https://idp"))
    }

    #[test]
    fn algorithms_come_from_alg_or_only_where_one_fits() {
        let cases: Vec<(serde_json::Value, Option<Alg>, Result<Alg, &str>)> = vec![
            (ed("a"), None, Ok(Alg::EdDSA)),
            (ec256("a"), None, Ok(Alg::ES256)),
            (
                with(ec256("a"), "crv", json!("P-384")),
                None,
                Ok(Alg::ES384),
            ),
            (
                with(ec256("a"), "crv", json!("P-521")),
                None,
                Err("names none"),
            ),
            (
                with(ec256("a"), "alg", json!("ES256")),
                None,
                Ok(Alg::ES256),
            ),
            (rsa("a"), None, Err("set rsa_alg")),
            (rsa("a"), Some(Alg::PS256), Ok(Alg::PS256)),
            (
                with(rsa("a"), "alg", json!("RS384")),
                Some(Alg::PS256),
                Ok(Alg::RS384),
            ),
            (
                with(rsa("a"), "alg", json!("none")),
                None,
                Err("not supported"),
            ),
            (
                with(rsa("a"), "alg", json!("HS256")),
                None,
                Err("symmetric"),
            ),
            (
                json!({"kty": "oct", "k": "AAAA", "alg": "HS256"}),
                None,
                Err("symmetric"),
            ),
            (json!({"kty": "oct", "k": "AAAA"}), None, Err("symmetric")),
            (
                json!({"kty": "OKP", "crv": "X25519"}),
                None,
                Err("names none"),
            ),
        ];
        for (jwk, rsa_alg, want) in cases {
            let j: Jwk = serde_json::from_value(jwk.clone()).unwrap();
            match (remote_alg(&j, rsa_alg), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{jwk}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{jwk}: {got}"),
                (got, w) => panic!("{jwk}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn unusable_keys_are_passed_over_and_named() {
        let set = parse(
            vec![
                ed("good"),
                ec256("ec"),
                with(ed("enc"), "use", json!("enc")),
                with(ed("ops"), "key_ops", json!(["encrypt"])),
                with(ed("private"), "d", json!(B64.encode([1u8; 32]))),
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode([7u8; 32])}),
                with(ed("short"), "x", json!(B64.encode([7u8; 31]))),
                with(ed("dup"), "x", json!(B64.encode([8u8; 32]))),
                ed("dup"),
                rsa("rsa-no-alg"),
                json!("not an object"),
                json!({"kid": "no-kty"}),
                with(ed(""), "kid", json!("")),
            ],
            None,
        )
        .unwrap();
        let kids: Vec<&str> = set.keys.iter().map(|k| &*k.kid).collect();
        assert_eq!(kids, ["good", "ec"]);
        assert!(set
            .keys
            .iter()
            .all(|k| k.issuer.as_deref() == Some("https://idp")));
        let skipped: Vec<&str> = set.skipped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            skipped,
            [
                "enc",
                "ops",
                "private",
                "#5",
                "short",
                "rsa-no-alg",
                "#10",
                "#11",
                "",
                "dup",
                "dup"
            ]
        );
    }

    #[test]
    fn documents_without_a_usable_key_are_refused() {
        for body in [
            "".to_string(),
            "{".to_string(),
            "[]".to_string(),
            json!({"keys": {}}).to_string(),
            json!({"keys": []}).to_string(),
            json!({"keys": [rsa("r")]}).to_string(),
            json!({"keys": [ed("a"), ed("a")]}).to_string(),
        ] {
            assert!(parse_jwks(body.as_bytes(), None, None).is_err(), "{body}");
        }
        let many: Vec<_> = (0..MAX_KEYS + 5).map(|i| ed(&format!("k{i}"))).collect();
        let set = parse(many, None).unwrap();
        assert_eq!(set.keys.len(), MAX_KEYS);
        assert_eq!(set.skipped.len(), 5);
    }

    #[test]
    fn cache_control_max_age() {
        for (v, want) in [
            ("max-age=300", Some(300)),
            ("public, max-age=60, must-revalidate", Some(60)),
            ("Max-Age = 7", Some(7)),
            ("max-age=\"9\"", Some(9)),
            ("no-cache", Some(0)),
            ("private, no-store", Some(0)),
            ("max-age=abc", None),
            ("max-age=-1", None),
            ("public", None),
            ("", None),
        ] {
            assert_eq!(max_age(v), want, "{v:?}");
        }
        let s = SourceSettings {
            jwks_uri: None,
            issuer: None,
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(10),
            timeout: DEFAULT_TIMEOUT,
            rsa_alg: None,
        };
        assert_eq!(next_refresh(&s, None), Duration::from_secs(300));
        assert_eq!(next_refresh(&s, Some(0)), Duration::from_secs(10));
        assert_eq!(next_refresh(&s, Some(60)), Duration::from_secs(60));
        assert_eq!(next_refresh(&s, Some(u64::MAX)), MAX_REFRESH);
    }

    #[test]
    fn discovery_must_name_the_issuer_and_a_usable_jwks_uri() {
        let doc = |iss: &str, uri: &str, algs: &[&str]| {
            json!({"issuer": iss, "jwks_uri": uri, "id_token_signing_alg_values_supported": algs})
                .to_string()
        };
        let iss = "https://idp.example.com";
        let d = parse_discovery(
            doc(iss, "https://idp.example.com/keys", &["RS256", "ES256"]).as_bytes(),
            iss,
        )
        .unwrap();
        assert_eq!(d.jwks_uri, "https://idp.example.com/keys");
        assert_eq!(d.rsa_alg, Some(Alg::RS256));
        let d =
            parse_discovery(doc(iss, "https://x/k", &["RS256", "PS256"]).as_bytes(), iss).unwrap();
        assert_eq!(d.rsa_alg, None, "two RSA algs: ambiguous");
        for (body, why) in [
            (doc("https://evil", "https://x/k", &[]), "expected"),
            (doc(&format!("{iss}/"), "https://x/k", &[]), "expected"),
            (doc(iss, "http://x/k", &[]), "loopback"),
            (doc(iss, "not a url", &[]), "URL"),
            ("{}".to_string(), "discovery"),
        ] {
            let e = parse_discovery(body.as_bytes(), iss).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn source_problems_name_their_keys() {
        let raw = |s: &str| -> Vec<JwksConfig> {
            #[derive(Deserialize)]
            struct Doc {
                jwks: Vec<JwksConfig>,
            }
            toml::from_str::<Doc>(s).unwrap().jwks
        };
        let mut problems = Vec::new();
        let sources = build_sources(
            &raw(r#"
                [[jwks]]
                jwks_uri = "https://idp/keys"
                [[jwks]]
                issuer = "http://127.0.0.1:8080"
                min_refresh_secs = 1
                refresh_secs = 1
                rsa_alg = "PS384"
                [[jwks]]
                [[jwks]]
                jwks_uri = "http://idp.example.com/keys"
                [[jwks]]
                issuer = "not a url"
                min_refresh_secs = 0
                timeout_ms = 0
                rsa_alg = "ES256"
                [[jwks]]
                jwks_uri = "https://a/k"
                refresh_secs = 5
                [[jwks]]
                jwks_uri = "https://idp/keys"
                "#),
            &mut problems,
        );
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[1].settings.rsa_alg, Some(Alg::PS384));
        assert_eq!(
            sources[1].settings.discovery_uri().as_deref(),
            Some("http://127.0.0.1:8080/.well-known/openid-configuration")
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.jwks[2].jwks_uri",
                "auth.jwks[3].jwks_uri",
                "auth.jwks[4].issuer",
                "auth.jwks[4].min_refresh_secs",
                "auth.jwks[4].timeout_ms",
                "auth.jwks[4].rsa_alg",
                "auth.jwks[5].refresh_secs",
                "auth.jwks[6].jwks_uri",
            ]
        );
    }
}
