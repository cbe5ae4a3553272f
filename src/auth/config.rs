//! The raw `[auth]` table and its validation into an [`Authenticator`](super::Authenticator).
//!
//! ```toml
//! [auth]
//! header = "authorization"        # default
//! scheme = "Bearer"               # default
//! max_token_bytes = 8192          # default; 256..=65536
//! leeway_secs = 60                # default; at most 600
//! require_exp = true              # default
//! issuer = "https://idp.example.com/"   # optional
//! audience = ["shardgate"]        # optional; any one must appear in `aud`
//! subject_claim = "sub"           # default; required in tokens
//! tenant_claim = "tid"            # optional
//! label_claim = "canary"          # optional
//! revocation_file = "revoked.txt" # optional; control thread only
//!
//! [[auth.claim_headers]]           # see "Claim headers" below
//! claim = "sub"
//! header = "x-user-id"
//! separator = " "                 # default; joins an array of strings
//!
//! [[auth.keys]]                   # HMAC: secret = { env | file | value }
//! kid = "hs-2026"
//! alg = "HS256"
//! secret = { env = "JWT_HS256_SECRET" }
//! not_after = 1798761600          # unix seconds; optional
//!
//! [[auth.keys]]                   # public key: inline JWK or a JWKS file (matched by kid)
//! kid = "es-2027"
//! alg = "ES256"
//! jwks_file = "keys/jwks.json"
//! not_before = 1767225600         # optional
//!
//! [[auth.jwks]]                   # remote key set (see `auth::remote`)
//! issuer = "https://idp.example.com/"
//!
//! [auth.api_keys]                 # API keys (see `auth::apikey` and `control::keys`)
//! file = "keys.json"              # digests only; watched, and written by the admin API
//! audit_file = "keys.audit.jsonl" # default: the keys file's name + `.audit.jsonl`
//! header = "x-api-key"            # optional: a second header a key may come in
//! ```
//!
//! At least one verifier is required: `[[auth.keys]]`, `[[auth.jwks]]` or `[auth.api_keys]`.
//!
//! # Routes
//!
//! A route's `auth` ([`RouteAuth`]) says which of them it accepts: absent or `true`, every
//! one configured (`true` without `[auth]` is a problem); `"jwt"` signed tokens (needs
//! `[[auth.keys]]` or `[[auth.jwks]]`); `"key"` API keys (needs `[auth.api_keys]`); `"any"`
//! both (needs both); `false` none (an open route).
//!
//! # Claim headers
//!
//! `header` may not be a framing, hop-by-hop, credential, `content-*`, method-override or
//! gateway-written header ([`crate::http::fields`]); `[auth] header` may not be a framing,
//! hop-by-hop or gateway-written one. A mapped claim is rendered as described in
//! [`super::claims`]: strings as they are, integers, floats and booleans as JSON text, an
//! array of strings joined with `separator` (1 to 8 bytes of visible ASCII or space), `null`
//! and an absent claim as no header. A token whose mapped claim cannot be rendered faithfully
//! (an object, a nested array or an array holding a non-string, an empty string or entry, a
//! control character or a line separator, surrounding whitespace, an element containing the separator, a value over
//! [`super::claims::MAX_CLAIM_HEADER_BYTES`]) is refused with 401 `claim_not_forwardable`:
//! the upstream never sees a header that says less, or something else, than the token.
//!
//! # Keys
//!
//! A JWK (inline or from `jwks_file`) must be a verification key: `use`, when present, is
//! `sig`, and `key_ops`, when present, contains `verify`, nothing for encryption and no
//! duplicates (RFC 7517 §4.2–4.3); otherwise the key is a config problem naming it. In a JWKS
//! file, keys with the configured `kid` that are not verification keys are passed over, so an
//! `enc` key may share a `kid` with the `sig` key configured.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::key::{jwk_from_file, Alg, Jwk, KeyMaterial};
use super::token::MAX_KID_BYTES;
use crate::config_types::RouteAuth;
use crate::config_types::{ConfigProblem, Secret};
use crate::http::fields::{is_token, HeaderRole};
use crate::http_config::config_header;

/// Default `max_token_bytes`.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Accepted range for `max_token_bytes`.
pub const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=64 * 1024;
/// Default clock-skew leeway, seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;
/// Largest leeway accepted, seconds.
pub const MAX_LEEWAY_SECS: u64 = 600;

/// The raw `[auth]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Request header carrying the credential (case-insensitive). Default `authorization`.
    #[serde(default = "default_header")]
    pub header: String,
    /// Auth scheme before the token (case-insensitive). Default `Bearer`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Reject tokens without `exp`. Default true.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Required `iss`, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences; the token's `aud` must contain at least one. Empty: not checked.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Claim naming the caller. Default `sub`; required in every token.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim naming the tenant, if any (optional in tokens).
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Claim carrying a routing label (canary), if any (optional in tokens).
    #[serde(default)]
    pub label_claim: Option<String>,
    /// Verified tokens each worker remembers (`auth::cache`): a token seen again skips the
    /// signature and claims parse until its `exp` (revocation is still checked every time).
    /// 0 turns the cache off; at most 1048576; rounded up to a power of two.
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: usize,
    /// Claims copied to upstream request headers.
    #[serde(default)]
    pub claim_headers: Vec<ClaimHeaderConfig>,
    /// Revocation file the control thread loads and persists (relative to the config file).
    #[serde(default)]
    pub revocation_file: Option<PathBuf>,
    /// Admit a request that carries no credential header on a TLS connection whose client
    /// presented a verified certificate (`[server.tls] client_auth`): the certificate's
    /// subject (URI SAN, DNS SAN, e-mail SAN, else CN) is the caller, with no scopes; claim
    /// mappings of `subject_claim` carry it upstream. A token, when sent, is verified instead.
    #[serde(default)]
    pub client_certificates: bool,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Remote key sets (JWKS URLs or OIDC issuers).
    #[serde(default)]
    pub jwks: Vec<super::remote::JwksConfig>,
    /// API keys.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
}

/// `[auth.api_keys]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// The keys file (JSON, digests only), relative to the config file. Absent: the keys
    /// live in the model registry (`[registry]` required). Both: a config problem.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Append-only audit log of key changes; default: the keys file's name + `.audit.jsonl`.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
    /// A header a key may also come in, as its whole value (`x-api-key`); the configured
    /// credential header (`Authorization: Bearer sg-...`) always works.
    #[serde(default)]
    pub header: Option<String>,
}

/// Validated `[auth.api_keys]` settings (the table itself comes from the key store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySettings {
    pub source: KeySource,
    /// Lowercase.
    pub header: Option<Box<str>>,
}

/// Where the key records live: exactly one place (see [`build_api_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `file` and its audit file; absolute (resolved against the config file's directory).
    File { file: PathBuf, audit_file: PathBuf },
    /// The model registry's database (`[registry] path`, absolute).
    Registry(PathBuf),
}

impl KeySource {
    /// The file the keys are in (the keys file or the registry database), for messages.
    pub fn path(&self) -> &Path {
        match self {
            KeySource::File { file, .. } => file,
            KeySource::Registry(db) => db,
        }
    }
}

/// `[[auth.claim_headers]]`: copy `claim` into upstream header `header` (rendering rules in
/// the module docs).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeaderConfig {
    pub claim: String,
    pub header: String,
    /// Joins the entries of an array-of-strings claim. Default one space.
    #[serde(default = "default_separator")]
    pub separator: String,
}

/// `[[auth.keys]]`: one verification key. Exactly one of `secret`, `jwk`, `jwks_file`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub kid: String,
    /// The only algorithm this key verifies.
    pub alg: String,
    /// HMAC secret (HS*), raw bytes.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Inline public JWK (or `oct` JWK for HS*).
    #[serde(default)]
    pub jwk: Option<Jwk>,
    /// JWKS file holding a JWK with this `kid` (relative to the config file).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Unix seconds from which the key is accepted.
    #[serde(default)]
    pub not_before: Option<u64>,
    /// Unix seconds from which the key is no longer accepted.
    #[serde(default)]
    pub not_after: Option<u64>,
}

fn default_header() -> String {
    "authorization".into()
}
fn default_separator() -> String {
    " ".into()
}
fn default_scheme() -> String {
    "Bearer".into()
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECS
}
fn default_true() -> bool {
    true
}
fn default_token_cache_entries() -> usize {
    super::cache::DEFAULT_ENTRIES
}
fn default_subject_claim() -> String {
    "sub".into()
}

/// A validated key.
#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Box<str>,
    pub alg: Alg,
    pub material: KeyMaterial,
    pub not_before: u64,
    pub not_after: u64,
    /// The `iss` tokens this key verifies must carry, over `[auth] issuer` (a remote key
    /// set's issuer); `None`: `[auth] issuer` applies.
    pub issuer: Option<Box<str>>,
}

impl Key {
    /// Whether the key's rotation window contains `now`.
    pub fn active(&self, now: u64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Longest `separator` accepted, in bytes.
pub const MAX_SEPARATOR_BYTES: usize = 8;

/// Builds the validated keys, collecting every problem.
pub(super) fn build_keys(
    raw: &AuthConfig,
    base_dir: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<Key> {
    let mut keys = Vec::new();
    if raw.keys.is_empty() && raw.jwks.is_empty() && raw.api_keys.is_none() {
        problems.push(ConfigProblem::new(
            "auth.keys",
            "at least one verifier is required: [[auth.keys]], [[auth.jwks]] or [auth.api_keys]",
        ));
    }
    for (i, k) in raw.keys.iter().enumerate() {
        let at = |field: &str| format!("auth.keys[{i}].{field}");
        if k.kid.is_empty() || k.kid.len() > MAX_KID_BYTES {
            problems.push(ConfigProblem::new(
                at("kid"),
                format!("must be 1 to {MAX_KID_BYTES} bytes"),
            ));
        }
        if raw.keys[..i].iter().any(|o| o.kid == k.kid) {
            problems.push(ConfigProblem::new(
                at("kid"),
                format!("duplicate kid `{}`", k.kid),
            ));
        }
        let not_before = k.not_before.unwrap_or(0);
        let not_after = k.not_after.unwrap_or(u64::MAX);
        if not_before >= not_after {
            problems.push(ConfigProblem::new(
                at("not_after"),
                "must be later than not_before",
            ));
        }
        let Some(alg) = Alg::from_name(k.alg.as_bytes()) else {
            problems.push(ConfigProblem::new(
                at("alg"),
                format!(
                    "unsupported alg `{}` (HS/RS/PS 256-512, ES256, ES384, EdDSA)",
                    k.alg
                ),
            ));
            continue;
        };
        let material = match (&k.secret, &k.jwk, &k.jwks_file) {
            (Some(secret), None, None) => {
                secret.resolve(base_dir, &at("secret")).and_then(|bytes| {
                    KeyMaterial::hmac(alg, &bytes).map_err(|m| ConfigProblem::new(at("secret"), m))
                })
            }
            (None, Some(jwk), None) => {
                if jwk.kid.as_deref().is_some_and(|kid| kid != k.kid) {
                    Err(ConfigProblem::new(
                        at("jwk.kid"),
                        "differs from the key's kid",
                    ))
                } else {
                    jwk.material(alg)
                        .map_err(|m| ConfigProblem::new(at("jwk"), m))
                }
            }
            (None, None, Some(file)) => jwk_from_file(&base_dir.join(file), &k.kid)
                .and_then(|jwk| jwk.material(alg))
                .map_err(|m| ConfigProblem::new(at("jwks_file"), m)),
            _ => Err(ConfigProblem::new(
                at("secret"),
                "set exactly one of `secret`, `jwk`, `jwks_file`",
            )),
        };
        match material {
            Ok(material) => keys.push(Key {
                kid: k.kid.as_str().into(),
                alg,
                material,
                not_before,
                not_after,
                issuer: None,
            }),
            Err(p) => problems.push(p),
        }
    }
    keys
}

/// Checks the scalar settings, collecting every problem.
pub(super) fn check_settings(raw: &AuthConfig, problems: &mut Vec<ConfigProblem>) {
    config_header(&raw.header, HeaderRole::Read, "auth.header", problems);
    if !is_token(&raw.scheme) {
        problems.push(ConfigProblem::new(
            "auth.scheme",
            "must be a valid auth scheme token",
        ));
    }
    if !TOKEN_BYTES_RANGE.contains(&raw.max_token_bytes) {
        problems.push(ConfigProblem::new(
            "auth.max_token_bytes",
            format!("must be within {TOKEN_BYTES_RANGE:?}"),
        ));
    }
    if raw.token_cache_entries > super::cache::MAX_ENTRIES {
        problems.push(ConfigProblem::new(
            "auth.token_cache_entries",
            format!(
                "must be at most {} (0: no cache)",
                super::cache::MAX_ENTRIES
            ),
        ));
    }
    if raw.leeway_secs > MAX_LEEWAY_SECS {
        problems.push(ConfigProblem::new(
            "auth.leeway_secs",
            format!("must be at most {MAX_LEEWAY_SECS}"),
        ));
    }
    let claims = [
        ("auth.subject_claim", Some(&raw.subject_claim)),
        ("auth.tenant_claim", raw.tenant_claim.as_ref()),
        ("auth.label_claim", raw.label_claim.as_ref()),
    ];
    for (key, claim) in claims {
        if claim.is_some_and(|c| c.is_empty()) {
            problems.push(ConfigProblem::new(key, "must not be empty"));
        }
    }
    if raw.issuer.as_deref() == Some("") {
        problems.push(ConfigProblem::new("auth.issuer", "must not be empty"));
    }
    if raw.audience.iter().any(String::is_empty) {
        problems.push(ConfigProblem::new(
            "auth.audience",
            "entries must not be empty",
        ));
    }
    for (i, m) in raw.claim_headers.iter().enumerate() {
        let at = |field: &str| format!("auth.claim_headers[{i}].{field}");
        if m.claim.is_empty() {
            problems.push(ConfigProblem::new(at("claim"), "must not be empty"));
        }
        if !(1..=MAX_SEPARATOR_BYTES).contains(&m.separator.len())
            || !m.separator.bytes().all(|b| (b' '..=b'~').contains(&b))
        {
            problems.push(ConfigProblem::new(
                at("separator"),
                format!("must be 1 to {MAX_SEPARATOR_BYTES} bytes of visible ASCII or space"),
            ));
        }
        if config_header(&m.header, HeaderRole::Set, &at("header"), problems).is_none() {
            continue;
        }
        if raw.claim_headers[..i]
            .iter()
            .any(|o| o.header.eq_ignore_ascii_case(&m.header))
        {
            problems.push(ConfigProblem::new(at("header"), "duplicate header"));
        } else if m.header.eq_ignore_ascii_case(&raw.header) {
            problems.push(ConfigProblem::new(
                at("header"),
                "must differ from the credential header",
            ));
        }
    }
}

/// Validates `[auth.api_keys]`, resolving its paths against `base_dir`. The keys live in one
/// place: the model registry (`registry`, the resolved `[registry] path`) when it is
/// configured and `file` is not; `file` when the registry is not; both configured is a problem
/// naming `auth.api_keys.file` (one source, so `shardgate keys` and the admin API always
/// change the keys in force).
pub(super) fn build_api_keys(
    raw: &AuthConfig,
    base_dir: &Path,
    registry: Option<&Path>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ApiKeySettings> {
    let k = raw.api_keys.as_ref()?;
    let header = build_key_header(raw, k, problems);
    let file = match (&k.file, registry) {
        (None, Some(db)) => {
            if k.audit_file.is_some() {
                problems.push(ConfigProblem::new(
                    "auth.api_keys.audit_file",
                    "the keys live in the model registry ([registry]), whose audit log records \
                     their changes; remove audit_file",
                ));
            }
            return Some(ApiKeySettings {
                source: KeySource::Registry(db.to_path_buf()),
                header,
            });
        }
        (None, None) => {
            problems.push(ConfigProblem::new(
                "auth.api_keys.file",
                "required without [registry] (with [registry] the keys live in its database)",
            ));
            return None;
        }
        (Some(_), Some(_)) => {
            problems.push(ConfigProblem::new(
                "auth.api_keys.file",
                "[registry] is configured, so the API keys live in its database: remove \
                 auth.api_keys.file (copy its keys over with `shardgate keys --registry DB \
                 import FILE`), or remove [registry]",
            ));
            return None;
        }
        (Some(f), None) => f,
    };
    if file.as_os_str().is_empty() {
        problems.push(ConfigProblem::new(
            "auth.api_keys.file",
            "must not be empty",
        ));
        return None;
    }
    let file = base_dir.join(file);
    let audit_file = match &k.audit_file {
        Some(a) if a.as_os_str().is_empty() => {
            problems.push(ConfigProblem::new(
                "auth.api_keys.audit_file",
                "must not be empty",
            ));
            return None;
        }
        Some(a) => base_dir.join(a),
        None => {
            let mut name = file.file_name().unwrap_or_default().to_os_string();
            name.push(".audit.jsonl");
            file.with_file_name(name)
        }
    };
    if audit_file == file {
        problems.push(ConfigProblem::new(
            "auth.api_keys.audit_file",
            "must differ from the keys file",
        ));
    }
    Some(ApiKeySettings {
        source: KeySource::File { file, audit_file },
        header,
    })
}

/// `[auth.api_keys] header`, lowercase.
fn build_key_header(
    raw: &AuthConfig,
    k: &ApiKeysConfig,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Box<str>> {
    k.header.as_ref().and_then(|h| {
        let ok = config_header(h, HeaderRole::Read, "auth.api_keys.header", problems)?;
        if h.eq_ignore_ascii_case(&raw.header) {
            problems.push(ConfigProblem::new(
                "auth.api_keys.header",
                "must differ from the credential header (keys are read from it anyway)",
            ));
        }
        Some(ok)
    })
}

/// Checks route `i`'s `auth` against what `[auth]` configures (module docs, "Routes").
pub fn check_route_auth(
    auth: Option<&AuthConfig>,
    i: usize,
    route: RouteAuth,
    problems: &mut Vec<ConfigProblem>,
) {
    let jwt = auth.is_some_and(|a| !a.keys.is_empty() || !a.jwks.is_empty());
    let key = auth.is_some_and(|a| a.api_keys.is_some());
    let missing = match route {
        RouteAuth::Default | RouteAuth::Off => None,
        RouteAuth::Required if auth.is_none() => Some("requires an [auth] section"),
        RouteAuth::Required => None,
        RouteAuth::Jwt if !jwt => Some("\"jwt\" requires [[auth.keys]] or [[auth.jwks]]"),
        RouteAuth::Key if !key => Some("\"key\" requires [auth.api_keys]"),
        RouteAuth::Any if !(jwt && key) => {
            Some("\"any\" requires [auth.api_keys] and [[auth.keys]] or [[auth.jwks]]")
        }
        RouteAuth::Jwt | RouteAuth::Key | RouteAuth::Any => None,
    };
    if let Some(m) = missing {
        problems.push(ConfigProblem::new(format!("routes[{i}].auth"), m));
    }
}
