//! Authentication stage: `Authorization: Bearer <compact JWS>` or an API key → [`Identity`].
//!
//! Owns: the validated `[auth]` config ([`Authenticator`], built once on the control thread
//! and cloned to every worker), token parsing ([`token`]), key material and signature checks
//! ([`key`]), remote key sets ([`remote`]), API keys ([`apikey`]), the claim values copied
//! out of a token ([`claims`]: identity values and claim headers), and revocation
//! ([`revocation`]).
//!
//! # Contract
//!
//! [`Authenticator::authenticate`] takes the raw values of the configured credential header
//! and of the API key header (the engine looks them up; credentials are never read from the
//! query string), which kinds of credential the route accepts ([`Accepts`]), the current unix
//! time and the worker's [`Revocations`]. A bearer token that starts with
//! [`apikey::KEY_PREFIX`] is an API key, anything else a JWT; a kind the route does not accept
//! is [`AuthError::CredentialNotAccepted`]. For a JWT ([`Authenticator::verify`]),
//! `Ok(Identity)` means: the signature verified under a configured or fetched key whose `alg`
//! the token matched and whose rotation window contains `now`; `exp`/`nbf`/`iat`, `iss` (the
//! key's source's issuer, else `[auth] issuer`) and `aud` passed; the token is not revoked.
//! For an API key it means what [`apikey::ApiKeyTable::lookup`] says, and the key's owner is
//! not a revoked subject. Route scopes are the engine's check ([`Identity::has_scope`]),
//! failing as [`AuthError::InsufficientScope`]; so is a key's model allow-list
//! ([`apikey::ApiKey::allows_model`], [`AuthError::ModelNotAllowed`]).
//!
//! # Error Handling
//!
//! Every [`AuthError`] becomes a response and keeps the connection: 401 with an RFC 6750
//! `WWW-Authenticate` challenge, or 403 for `InsufficientScope` and `ModelNotAllowed`.
//! Descriptions name the failure class only and never echo the credential.
//! [`AuthError::reason`] is the metric label, [`AuthError::kind`] the error body's `type`
//! (`invalid_api_key` for an API key refused).
//!
//! # Performance
//!
//! No I/O and no locks. JWT decoding reuses the worker's [`Scratch`]; the strings the
//! returned [`Identity`] owns come from this thread's spares ([`claims::identity`]) and go
//! back to them when it drops, so a warm worker allocates none. The signature is checked before any claim is
//! read. An API key is one SHA-256 and one hash-map probe, and its [`Identity`] borrows from
//! the snapshot's key table: no allocation.

pub mod apikey;
pub mod cache;
pub mod claims;
pub mod config;
pub mod key;
pub mod remote;
pub mod revocation;
pub mod token;

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod credential_tests;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

// By name, not the prelude glob (see `disallowed-methods` in clippy.toml).
use simd_json::prelude::{TypedValue, ValueAsScalar};
use simd_json::tape::Value;
use simd_json::ValueType;

pub use apikey::{ApiKey, ApiKeyTable, KeyRecord};
pub use config::{
    ApiKeySettings, ApiKeysConfig, AuthConfig, ClaimHeaderConfig, KeyConfig, KeySource,
};
pub use key::{Alg, Jwk};
pub use remote::{RemoteSource, SourceSettings};
pub use revocation::{RevocationLog, Revocations, Revoked, RevokedKind};
pub use token::Scratch;

use crate::config_types::{ConfigProblem, RouteAuth};
pub use config::Key;

/// Spaces tolerated between the scheme and the token, for the early size bound.
const MAX_SCHEME_SPACES: usize = 8;

/// Latest time claim accepted (9999-12-31T23:59:59Z); larger values are treated as invalid.
pub const MAX_TIME_CLAIM: u64 = 253_402_300_799;

macro_rules! auth_errors {
    ($($(#[$doc:meta])* $v:ident => $status:literal, $reason:literal, $challenge:ident, $desc:literal;)*) => {
        /// Why a request was not authenticated. Small and `Copy` for the hot path.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum AuthError { $($(#[$doc])* $v,)* }

        impl AuthError {
            pub const ALL: &'static [AuthError] = &[$(AuthError::$v,)*];

            /// HTTP status: 403 for `InsufficientScope`, 401 otherwise.
            pub fn status(self) -> u16 { match self { $(AuthError::$v => $status,)* } }

            /// Stable snake_case label for metrics and the JSON error body.
            pub fn reason(self) -> &'static str { match self { $(AuthError::$v => $reason,)* } }

            /// Human-readable failure class (never token content).
            pub fn description(self) -> &'static str { match self { $(AuthError::$v => $desc,)* } }

            /// Full `WWW-Authenticate` value (RFC 6750 §3), empty for a refusal that is not
            /// about the credential (a model an API key may not use). A request with no
            /// bearer credential gets a bare challenge with no error code (§3.1).
            pub fn www_authenticate(self) -> &'static str {
                match self { $(AuthError::$v => $challenge!($desc),)* }
            }
        }
    };
}

macro_rules! bare {
    ($d:literal) => {
        "Bearer"
    };
}
macro_rules! invalid {
    ($d:literal) => {
        concat!(
            "Bearer error=\"invalid_token\", error_description=\"",
            $d,
            "\""
        )
    };
}
macro_rules! none {
    ($d:literal) => {
        ""
    };
}
macro_rules! scope {
    ($d:literal) => {
        concat!(
            "Bearer error=\"insufficient_scope\", error_description=\"",
            $d,
            "\""
        )
    };
}

auth_errors! {
    /// The credential header is absent.
    Missing => 401, "missing", bare, "no bearer token";
    /// The header does not start with the configured scheme.
    BadScheme => 401, "bad_scheme", bare, "unsupported authorization scheme";
    /// Longer than `max_token_bytes` (checked before any decoding).
    TooLarge => 401, "too_large", invalid, "token exceeds the size limit";
    /// Not three strict base64url segments, or a bad JOSE header.
    Malformed => 401, "malformed", invalid, "token is not a well-formed compact JWS";
    /// Signature valid but the claims are not one JSON object without duplicate keys.
    MalformedClaims => 401, "malformed_claims", invalid, "token claims are not a valid JSON object";
    /// `alg` is `none` or not supported.
    UnsupportedAlg => 401, "unsupported_alg", invalid, "token algorithm is not accepted";
    /// The header has `crit`.
    UnsupportedCrit => 401, "unsupported_crit", invalid, "token requires an unsupported extension";
    /// `kid` names no configured key, or no key applies.
    UnknownKey => 401, "unknown_key", invalid, "token key is not recognized";
    /// `kid` names a key outside its rotation window.
    KeyInactive => 401, "key_inactive", invalid, "token key is not currently accepted";
    /// No `kid` and more than one key currently applies.
    AmbiguousKey => 401, "ambiguous_key", invalid, "token has no key id and several keys apply";
    /// The header `alg` differs from the key's configured `alg`.
    AlgMismatch => 401, "alg_mismatch", invalid, "token algorithm does not match its key";
    BadSignature => 401, "bad_signature", invalid, "token signature is invalid";
    Expired => 401, "expired", invalid, "token has expired";
    /// `nbf` is later than now plus leeway.
    NotYetValid => 401, "not_yet_valid", invalid, "token is not valid yet";
    /// `iat` is later than now plus leeway.
    IssuedInFuture => 401, "issued_in_future", invalid, "token issue time is in the future";
    /// `exp` (when required) or the subject claim is absent.
    MissingClaim => 401, "missing_claim", invalid, "token lacks a required claim";
    /// A claim has the wrong type, range or characters.
    InvalidClaim => 401, "invalid_claim", invalid, "token has an invalid claim value";
    /// A claim mapped to an upstream header cannot be rendered faithfully (see [`claims`]).
    ClaimNotForwardable => 401, "claim_not_forwardable", invalid, "token has a claim that cannot be forwarded upstream";
    BadIssuer => 401, "bad_issuer", invalid, "token issuer is not accepted";
    BadAudience => 401, "bad_audience", invalid, "token audience is not accepted";
    Revoked => 401, "revoked", invalid, "token has been revoked";
    /// Valid token without the route's scope (the engine's check).
    InsufficientScope => 403, "insufficient_scope", scope, "token lacks the scope this route requires";
    /// The credential is of a kind the route does not accept (an API key on a `"jwt"` route,
    /// a JWT on a `"key"` route).
    CredentialNotAccepted => 401, "credential_not_accepted", invalid, "this route does not accept this kind of credential";
    /// No API key has this digest (or the value is not shaped like a key).
    KeyUnknown => 401, "key_unknown", invalid, "incorrect API key provided";
    KeyDisabled => 401, "key_disabled", invalid, "API key is disabled";
    /// The key's `expires_at` passed, or a rotated-out secret's grace period ended.
    KeyExpired => 401, "key_expired", invalid, "API key has expired";
    /// The API key's model allow-list does not match the requested model.
    ModelNotAllowed => 403, "model_not_allowed", none, "this API key may not use the requested model";
}

impl AuthError {
    /// The error body's OpenAI-style `type`.
    pub fn kind(self) -> &'static str {
        match self {
            AuthError::KeyUnknown | AuthError::KeyDisabled | AuthError::KeyExpired => {
                "invalid_api_key"
            }
            AuthError::InsufficientScope | AuthError::ModelNotAllowed => "permission_error",
            _ => "authentication_error",
        }
    }
}

/// Which kinds of credential a route accepts ([`accepts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepts {
    pub jwt: bool,
    pub key: bool,
}

impl Accepts {
    /// Whether the route needs a credential at all.
    pub fn any(self) -> bool {
        self.jwt || self.key
    }
}

/// The credential values of a request: the configured credential header's, and the API key
/// header's (`[auth.api_keys] header`), each `None` when absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'r> {
    pub header: Option<&'r [u8]>,
    pub key_header: Option<&'r [u8]>,
}

/// The authenticated caller, handed to later stages. An API key's identity borrows from the
/// snapshot's key table (`'k`); a JWT's owns what it copied out of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity<'k> {
    /// Value of the subject claim (default `sub`); an API key's owner.
    pub subject: Cow<'k, str>,
    /// Value of `tenant_claim`, when configured and present; an API key's tenant.
    pub tenant: Option<Cow<'k, str>>,
    /// Value of `label_claim` (canary routing), when configured and present.
    pub label: Option<Cow<'k, str>>,
    pub jti: Option<String>,
    pub exp: Option<u64>,
    /// Space-separated scopes from `scope` (or `scp` when `scope` is absent).
    scopes: Cow<'k, str>,
    /// `(index into Authenticator::mapped_headers(), value)` for each mapped claim rendered
    /// (absent and `null` claims render nothing; see [`claims`]).
    pub upstream_headers: Cow<'k, [(usize, String)]>,
    /// The API key presented, when the caller used one.
    pub api_key: Option<&'k ApiKey>,
}

/// The identity values a token verification took from this thread's spares go back to them
/// ([`claims::give_back`]); values borrowed from an API key record stay where they are.
impl Drop for Identity<'_> {
    fn drop(&mut self) {
        if let Cow::Owned(s) = std::mem::replace(&mut self.subject, Cow::Borrowed("")) {
            claims::give_back(s);
        }
        for s in [&mut self.tenant, &mut self.label] {
            if let Some(Cow::Owned(s)) = s.take() {
                claims::give_back(s);
            }
        }
        if let Cow::Owned(s) = std::mem::replace(&mut self.scopes, Cow::Borrowed("")) {
            claims::give_back(s);
        }
        if let Some(s) = self.jti.take() {
            claims::give_back(s);
        }
        if let Cow::Owned(h) = std::mem::replace(&mut self.upstream_headers, Cow::Borrowed(&[])) {
            claims::give_back_headers(h);
        }
    }
}

impl Identity<'_> {
    /// Whether the token grants `scope` (exact, case-sensitive match of one entry).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.split(' ').filter(|s| !s.is_empty())
    }
}

impl<'k> Identity<'k> {
    /// The identity of a caller who presented `key`: every value borrowed.
    fn of_key(key: &'k ApiKey) -> Identity<'k> {
        Identity {
            subject: Cow::Borrowed(&key.owner),
            tenant: key.tenant.as_deref().map(Cow::Borrowed),
            label: key.label.as_deref().map(Cow::Borrowed),
            jti: None,
            exp: None,
            scopes: Cow::Borrowed(&key.scopes),
            upstream_headers: Cow::Borrowed(&key.upstream_headers),
            api_key: Some(key),
        }
    }
}

/// The validated `[auth]` config: keys parsed once, immutable, cloned to every worker.
#[derive(Debug, Clone)]
pub struct Authenticator {
    header: Box<str>,
    scheme: Box<str>,
    max_token_bytes: usize,
    leeway: u64,
    require_exp: bool,
    issuer: Option<Box<str>>,
    audience: Vec<Box<str>>,
    subject_claim: Box<str>,
    tenant_claim: Option<Box<str>>,
    label_claim: Option<Box<str>>,
    mapped_claims: Vec<Box<str>>,
    mapped_headers: Vec<Box<str>>,
    mapped_separators: Vec<Box<str>>,
    revocation_file: Option<PathBuf>,
    /// `client_certificates`: a verified client certificate may stand for a token.
    client_certificates: bool,
    keys: Vec<Key>,
    /// Remote key sets, with the keys last fetched (the control thread fills them in).
    remote: Vec<RemoteSource>,
    /// `[auth.api_keys]`, and the table the control thread's key store fills in.
    api_keys: Option<(ApiKeySettings, ApiKeyTable)>,
    /// `token_cache_entries` (0: verified tokens are not cached).
    token_cache: usize,
    /// Names what this authenticator verifies: new for every build and every change of its
    /// keys, so a worker's cached verifications ([`cache`]) never outlive what made them.
    generation: u64,
}

/// The next [`Authenticator::generation`] (0 is an empty cache entry's).
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Which credentials a route with `route_auth` accepts when `auth` is the `[auth]` in force
/// (`None`: not configured, so none; see `auth::config`'s "Routes"). The data path and the
/// control thread's protection diff ask the same question here.
pub fn accepts(auth: Option<&Authenticator>, route_auth: RouteAuth) -> Accepts {
    let Some(a) = auth else {
        return Accepts::default();
    };
    match route_auth {
        RouteAuth::Off => Accepts::default(),
        RouteAuth::Default | RouteAuth::Required => Accepts {
            jwt: a.has_jwt(),
            key: a.api_keys.is_some(),
        },
        RouteAuth::Jwt => Accepts {
            jwt: true,
            key: false,
        },
        RouteAuth::Key => Accepts {
            jwt: false,
            key: true,
        },
        RouteAuth::Any => Accepts {
            jwt: true,
            key: true,
        },
    }
}

/// Whether a route with `route_auth` needs a credential under `auth`.
pub fn credential_required(auth: Option<&Authenticator>, route_auth: RouteAuth) -> bool {
    accepts(auth, route_auth).any()
}

impl Authenticator {
    /// Validates `raw`, resolving secrets and JWKS files relative to `base_dir`. Reports every
    /// problem at once.
    pub fn from_config(raw: &AuthConfig, base_dir: &Path) -> Result<Self, Vec<ConfigProblem>> {
        Self::from_config_with(raw, base_dir, None)
    }

    /// [`Authenticator::from_config`] where the model registry at `registry` is configured
    /// (API keys then live there; see `config::build_api_keys`).
    pub fn from_config_with(
        raw: &AuthConfig,
        base_dir: &Path,
        registry: Option<&Path>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        config::check_settings(raw, &mut problems);
        let keys = config::build_keys(raw, base_dir, &mut problems);
        let remote = remote::build_sources(&raw.jwks, &mut problems);
        let api_keys = config::build_api_keys(raw, base_dir, registry, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            header: raw.header.to_ascii_lowercase().into(),
            scheme: raw.scheme.as_str().into(),
            max_token_bytes: raw.max_token_bytes,
            leeway: raw.leeway_secs,
            require_exp: raw.require_exp,
            issuer: raw.issuer.as_deref().map(Into::into),
            audience: raw.audience.iter().map(|a| a.as_str().into()).collect(),
            subject_claim: raw.subject_claim.as_str().into(),
            tenant_claim: raw.tenant_claim.as_deref().map(Into::into),
            label_claim: raw.label_claim.as_deref().map(Into::into),
            mapped_claims: raw
                .claim_headers
                .iter()
                .map(|m| m.claim.as_str().into())
                .collect(),
            mapped_headers: raw
                .claim_headers
                .iter()
                .map(|m| m.header.to_ascii_lowercase().into())
                .collect(),
            mapped_separators: raw
                .claim_headers
                .iter()
                .map(|m| m.separator.as_str().into())
                .collect(),
            revocation_file: raw.revocation_file.as_ref().map(|p| base_dir.join(p)),
            client_certificates: raw.client_certificates,
            keys,
            remote,
            api_keys: api_keys.map(|s| (s, ApiKeyTable::default())),
            token_cache: raw.token_cache_entries,
            generation: next_generation(),
        })
    }

    /// The identity of a verified client certificate whose subject is `subject`, when
    /// `client_certificates` allows it (see [`AuthConfig::client_certificates`]). The subject
    /// obeys the rule for token subjects (1–1024 bytes, no control characters, line
    /// separators or surrounding whitespace), else [`AuthError::InvalidClaim`]; a revoked
    /// subject is refused.
    pub fn certificate_identity(
        &self,
        subject: Option<&str>,
        now: u64,
        revoked: &Revocations,
    ) -> Result<Identity<'static>, AuthError> {
        if !self.client_certificates {
            return Err(AuthError::Missing);
        }
        let subject = subject.ok_or(AuthError::Missing)?;
        let bad = subject.is_empty()
            || subject.len() > 1024
            || subject.trim() != subject
            || subject
                .chars()
                .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}');
        if bad {
            return Err(AuthError::InvalidClaim);
        }
        if revoked.is_revoked(None, subject, now) {
            return Err(AuthError::Revoked);
        }
        let upstream_headers = self
            .mapped_claims
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == self.subject_claim)
            .map(|(i, _)| (i, subject.to_string()))
            .collect();
        Ok(Identity {
            subject: Cow::Owned(subject.to_string()),
            tenant: None,
            label: None,
            jti: None,
            exp: None,
            scopes: Cow::Borrowed(""),
            upstream_headers: Cow::Owned(upstream_headers),
            api_key: None,
        })
    }

    /// Whether signed tokens can be verified: configured keys or remote key sets.
    pub fn has_jwt(&self) -> bool {
        !self.keys.is_empty() || !self.remote.is_empty()
    }

    /// `[auth.api_keys]`, when configured.
    pub fn api_key_settings(&self) -> Option<&ApiKeySettings> {
        self.api_keys.as_ref().map(|(s, _)| s)
    }

    /// The API key table in force, when keys are configured.
    pub fn api_key_table(&self) -> Option<&ApiKeyTable> {
        self.api_keys.as_ref().map(|(_, t)| t)
    }

    /// The header an API key may also come in (`[auth.api_keys] header`), lowercase.
    pub fn key_header_name(&self) -> Option<&str> {
        self.api_keys
            .as_ref()
            .and_then(|(s, _)| s.header.as_deref())
    }

    /// Replaces the API key table with `records` (control thread). Nothing changes on error.
    pub fn set_api_keys(&mut self, records: &[KeyRecord]) -> Result<(), Vec<ConfigProblem>> {
        let mapping = apikey::ClaimMapping {
            subject: &self.subject_claim,
            tenant: self.tenant_claim.as_deref(),
            label: self.label_claim.as_deref(),
            mapped: &self.mapped_claims,
            separators: &self.mapped_separators,
        };
        let table = ApiKeyTable::build(records, &mapping)?;
        match &mut self.api_keys {
            Some((_, t)) => {
                *t = table;
                self.generation = next_generation();
                Ok(())
            }
            None => Err(vec![ConfigProblem::new(
                "auth.api_keys",
                "API keys are not configured",
            )]),
        }
    }

    /// The remote key sources, in config order, with the keys in force from each.
    pub fn remote_sources(&self) -> &[RemoteSource] {
        &self.remote
    }

    /// Puts `keys` in force for the remote source with `settings` (control thread); false if
    /// no source has them.
    pub fn set_remote_keys(&mut self, settings: &SourceSettings, keys: Vec<Key>) -> bool {
        match self.remote.iter_mut().find(|s| &s.settings == settings) {
            Some(s) => {
                s.keys = keys;
                self.generation = next_generation();
                true
            }
            None => false,
        }
    }

    /// Verifies a request's credential for a route accepting `accepts` (module docs).
    pub fn authenticate<'a>(
        &'a self,
        cred: Credentials<'_>,
        accepts: Accepts,
        now: u64,
        revoked: &Revocations,
        scratch: &mut Scratch,
    ) -> Result<Identity<'a>, AuthError> {
        if let (Some(v), Some((_, table))) = (cred.key_header, &self.api_keys) {
            // Two credentials are one too many: which one would the upstream believe?
            if cred.header.is_some() {
                return Err(AuthError::Malformed);
            }
            if !accepts.key {
                return Err(AuthError::CredentialNotAccepted);
            }
            return Self::verify_key(table, v, now, revoked);
        }
        let value = cred.header.ok_or(AuthError::Missing)?;
        if let Some((_, table)) = &self.api_keys {
            let token = self.bearer(value)?;
            if token.starts_with(apikey::KEY_PREFIX.as_bytes()) {
                if !accepts.key {
                    return Err(AuthError::CredentialNotAccepted);
                }
                return Self::verify_key(table, token, now, revoked);
            }
        }
        if !accepts.jwt {
            return Err(AuthError::CredentialNotAccepted);
        }
        self.verify(Some(value), now, revoked, scratch)
    }

    /// An API key's identity: the table's verdict, then the owner's revocation.
    fn verify_key<'a>(
        table: &'a ApiKeyTable,
        token: &[u8],
        now: u64,
        revoked: &Revocations,
    ) -> Result<Identity<'a>, AuthError> {
        let key = table.lookup(token, now)?;
        if revoked.is_revoked(None, &key.owner, now) {
            return Err(AuthError::Revoked);
        }
        Ok(Identity::of_key(key))
    }

    /// The token of a credential header value: the size bound, then the scheme.
    fn bearer<'v>(&self, value: &'v [u8]) -> Result<&'v [u8], AuthError> {
        if value.len() > self.max_token_bytes + self.scheme.len() + MAX_SCHEME_SPACES {
            return Err(AuthError::TooLarge);
        }
        let token = self.strip_scheme(value)?;
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        Ok(token)
    }

    /// The credential header's name, lowercase (default `authorization`).
    pub fn header_name(&self) -> &str {
        &self.header
    }

    /// Lowercase names of the headers claims are copied into. The engine must strip any
    /// client-supplied copies of these before forwarding.
    pub fn mapped_headers(&self) -> &[Box<str>] {
        &self.mapped_headers
    }

    /// `(name, value)` pairs to add to the upstream request for `id`.
    pub fn upstream_headers<'a>(
        &'a self,
        id: &'a Identity<'_>,
    ) -> impl Iterator<Item = (&'a str, &'a str)> {
        id.upstream_headers
            .iter()
            .map(|(i, v)| (&*self.mapped_headers[*i], v.as_str()))
    }

    /// Appends `name: value\r\n` for each of `id`'s claim headers. Values were checked when the
    /// token was verified ([`claims::header_value`]): no control byte, no line separator.
    pub fn write_upstream_headers(&self, id: &Identity<'_>, out: &mut Vec<u8>) {
        for (name, value) in self.upstream_headers(id) {
            debug_assert!(crate::http::fields::is_field_value(value.as_bytes()));
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Resolved revocation file path, for the control thread's [`RevocationLog`].
    pub fn revocation_file(&self) -> Option<&Path> {
        self.revocation_file.as_deref()
    }

    /// The claim checks beyond the signature: required `iss`, accepted `aud` values (empty:
    /// not checked), and whether `exp` is required. The control thread compares them across
    /// reloads.
    pub fn claim_checks(&self) -> (Option<&str>, &[Box<str>], bool) {
        (self.issuer.as_deref(), &self.audience, self.require_exp)
    }

    /// Verifies the credential. See the module docs for what `Ok` guarantees.
    ///
    /// `header_value`: the raw value of [`header_name`](Self::header_name), `None` if absent.
    /// `now`: unix seconds. `scratch`: the worker's reusable decode buffers.
    pub fn verify(
        &self,
        header_value: Option<&[u8]>,
        now: u64,
        revoked: &Revocations,
        scratch: &mut Scratch,
    ) -> Result<Identity<'static>, AuthError> {
        let value = header_value.ok_or(AuthError::Missing)?;
        // Bound the whole value first so nothing below ever scans an unbounded input.
        let token = self.bearer(value)?;
        if let Some(id) = scratch.cache.get(self.generation, token, now) {
            // Revocation is never cached: the list may have changed since.
            if revoked.is_revoked(id.jti.as_deref(), &id.subject, now) {
                return Err(AuthError::Revoked);
            }
            return Ok(id);
        }
        let seg = token::split(token)?;
        let header = scratch.header(seg.header)?;
        let alg = Alg::from_name(header.alg.as_bytes()).ok_or(AuthError::UnsupportedAlg)?;
        let key = self.select_key(header.kid.as_ref().map(|k| k.as_bytes()), now)?;
        let kid_less = header.kid.is_none();
        if key.alg != alg {
            return Err(AuthError::AlgMismatch);
        }
        let mut sig = [0u8; token::MAX_SIGNATURE_BYTES];
        let sig_len = token::decode_signature(seg.signature, &mut sig)?;
        if !key.material.verify(alg, seg.signing_input, &sig[..sig_len]) {
            return Err(AuthError::BadSignature);
        }
        let issuer = key.issuer.as_deref().or(self.issuer.as_deref());
        let (id, claims_window) =
            scratch.with_claims(seg.payload, |claims| self.check_claims(claims, now, issuer))?;
        if revoked.is_revoked(id.jti.as_deref(), &id.subject, now) {
            return Err(AuthError::Revoked);
        }
        let mut window = cache::Window {
            from: claims_window.from.max(key.not_before),
            until: claims_window.until.min(key.not_after),
        };
        if kid_less {
            // Which key a token without `kid` names depends on which keys are active: the
            // verdict holds only until the next key starts or ends.
            window.until = window.until.min(self.next_key_change(now));
        }
        scratch
            .cache
            .insert(self.token_cache, self.generation, token, window, &id);
        Ok(id)
    }

    /// The first time after `now` at which any key's rotation window opens or closes.
    fn next_key_change(&self, now: u64) -> u64 {
        self.all_keys()
            .flat_map(|k| [k.not_before, k.not_after])
            .filter(|&t| t > now)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// `<scheme> 1*SP <token>`, scheme case-insensitive (RFC 9110 §11.1).
    fn strip_scheme<'a>(&self, value: &'a [u8]) -> Result<&'a [u8], AuthError> {
        let n = self.scheme.len();
        if value.len() <= n
            || !value[..n].eq_ignore_ascii_case(self.scheme.as_bytes())
            || value[n] != b' '
        {
            return Err(AuthError::BadScheme);
        }
        let token = &value[n..];
        let start = token
            .iter()
            .position(|&b| b != b' ')
            .ok_or(AuthError::Malformed)?;
        Ok(&token[start..])
    }

    /// Configured keys first, then each remote source's.
    fn all_keys(&self) -> impl Iterator<Item = &Key> {
        self.keys
            .iter()
            .chain(self.remote.iter().flat_map(|s| s.keys.iter()))
    }

    fn select_key(&self, kid: Option<&[u8]>, now: u64) -> Result<&Key, AuthError> {
        match kid {
            Some(kid) => {
                let key = self
                    .all_keys()
                    .find(|k| k.kid.as_bytes() == kid)
                    .ok_or(AuthError::UnknownKey)?;
                if key.active(now) {
                    Ok(key)
                } else {
                    Err(AuthError::KeyInactive)
                }
            }
            None => {
                let mut active = self.all_keys().filter(|k| k.active(now));
                match (active.next(), active.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(AuthError::UnknownKey),
                    (Some(_), Some(_)) => Err(AuthError::AmbiguousKey),
                }
            }
        }
    }

    /// The claim checks; `issuer`: the `iss` required (the key's source's, else `[auth]`'s).
    fn check_claims(
        &self,
        c: Value<'_, '_>,
        now: u64,
        issuer: Option<&str>,
    ) -> Result<(Identity<'static>, cache::Window), AuthError> {
        // One pass over the members; duplicates were already rejected, so each slot is unique.
        let mut f = Found::default();
        let obj = c.as_object().ok_or(AuthError::MalformedClaims)?;
        for (k, v) in obj.iter() {
            match k {
                "exp" => f.exp = Some(v),
                "nbf" => f.nbf = Some(v),
                "iat" => f.iat = Some(v),
                "iss" => f.iss = Some(v),
                "aud" => f.aud = Some(v),
                "jti" => f.jti = Some(v),
                "scope" => f.scope = Some(v),
                "scp" => f.scp = Some(v),
                _ => {}
            }
            if k == &*self.subject_claim {
                f.subject = Some(v);
            }
            if self.tenant_claim.as_deref() == Some(k) {
                f.tenant = Some(v);
            }
            if self.label_claim.as_deref() == Some(k) {
                f.label = Some(v);
            }
        }
        // The time checks, and the window in which they all pass (for the cache): from the
        // latest of `nbf` and `iat` less the leeway, to `exp` plus the leeway.
        let mut window = cache::Window {
            from: 0,
            until: u64::MAX,
        };
        let exp = f.exp.map(time_claim).transpose()?;
        match exp {
            Some(exp) if now >= exp.saturating_add(self.leeway) => return Err(AuthError::Expired),
            Some(exp) => window.until = exp.saturating_add(self.leeway),
            None if self.require_exp => return Err(AuthError::MissingClaim),
            None => {}
        }
        if let Some(nbf) = f.nbf.map(time_claim).transpose()? {
            if nbf > now.saturating_add(self.leeway) {
                return Err(AuthError::NotYetValid);
            }
            window.from = window.from.max(nbf.saturating_sub(self.leeway));
        }
        if let Some(iat) = f.iat.map(time_claim).transpose()? {
            if iat > now.saturating_add(self.leeway) {
                return Err(AuthError::IssuedInFuture);
            }
            window.from = window.from.max(iat.saturating_sub(self.leeway));
        }
        if let Some(want) = issuer {
            let iss = f.iss.ok_or(AuthError::BadIssuer)?;
            if iss.as_str().ok_or(AuthError::InvalidClaim)? != want {
                return Err(AuthError::BadIssuer);
            }
        }
        if !self.audience.is_empty() {
            self.check_audience(f.aud.ok_or(AuthError::BadAudience)?)?;
        }
        let subject = claims::identity(f.subject.ok_or(AuthError::MissingClaim)?)?;
        let tenant = f.tenant.map(claims::identity).transpose()?;
        let label = f.label.map(claims::identity).transpose()?;
        let jti = f.jti.map(claims::identity).transpose()?;
        let scopes = scopes(f.scope, f.scp)?;
        let mut upstream_headers = Vec::new();
        for (i, claim) in self.mapped_claims.iter().enumerate() {
            if let Some(v) = obj.get(&**claim) {
                if let Some(value) = claims::header_value(v, &self.mapped_separators[i])? {
                    upstream_headers.push((i, value));
                }
            }
        }
        let id = Identity {
            subject: Cow::Owned(subject),
            tenant: tenant.map(Cow::Owned),
            label: label.map(Cow::Owned),
            jti,
            exp,
            scopes: Cow::Owned(scopes),
            upstream_headers: Cow::Owned(upstream_headers),
            api_key: None,
        };
        Ok((id, window))
    }

    /// `aud` is a string or an array of strings (RFC 7519 §4.1.3); one match suffices.
    fn check_audience(&self, aud: Value<'_, '_>) -> Result<(), AuthError> {
        let accepted = |a: &str| self.audience.iter().any(|w| &**w == a);
        let ok = if let Some(a) = aud.as_str() {
            accepted(a)
        } else if let Some(arr) = aud.as_array() {
            let mut any = false;
            for v in arr.iter() {
                any |= accepted(v.as_str().ok_or(AuthError::InvalidClaim)?);
            }
            any
        } else {
            return Err(AuthError::InvalidClaim);
        };
        if ok {
            Ok(())
        } else {
            Err(AuthError::BadAudience)
        }
    }
}

/// The claims verification looks at, found in one pass.
#[derive(Default)]
struct Found<'t, 'i> {
    exp: Option<Value<'t, 'i>>,
    nbf: Option<Value<'t, 'i>>,
    iat: Option<Value<'t, 'i>>,
    iss: Option<Value<'t, 'i>>,
    aud: Option<Value<'t, 'i>>,
    jti: Option<Value<'t, 'i>>,
    scope: Option<Value<'t, 'i>>,
    scp: Option<Value<'t, 'i>>,
    subject: Option<Value<'t, 'i>>,
    tenant: Option<Value<'t, 'i>>,
    label: Option<Value<'t, 'i>>,
}

/// A NumericDate (RFC 7519 §2): non-negative, finite, at most [`MAX_TIME_CLAIM`]; fractions
/// are truncated.
fn time_claim(v: Value<'_, '_>) -> Result<u64, AuthError> {
    let t = match v.value_type() {
        ValueType::I64 | ValueType::U64 => v.as_u64(),
        ValueType::F64 => v
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f <= MAX_TIME_CLAIM as f64)
            .map(|f| f as u64),
        _ => None,
    };
    t.filter(|&t| t <= MAX_TIME_CLAIM)
        .ok_or(AuthError::InvalidClaim)
}

/// `scope` (space-separated string, RFC 8693 §4.2) wins; otherwise `scp` as an array of
/// strings or a space-separated string.
fn scopes(scope: Option<Value<'_, '_>>, scp: Option<Value<'_, '_>>) -> Result<String, AuthError> {
    let valid = |s: &str| !s.chars().any(char::is_control);
    match scope.or(scp) {
        None => Ok(String::new()),
        Some(v) => {
            if let Some(s) = v.as_str() {
                return if valid(s) {
                    Ok(claims::copy_identity(s))
                } else {
                    Err(AuthError::InvalidClaim)
                };
            }
            let arr = v.as_array().ok_or(AuthError::InvalidClaim)?;
            let mut out = claims::copy_identity("");
            for e in arr.iter() {
                let s = e.as_str().ok_or(AuthError::InvalidClaim)?;
                if s.is_empty() || s.contains(' ') || !valid(s) {
                    return Err(AuthError::InvalidClaim);
                }
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(s);
            }
            Ok(out)
        }
    }
}
