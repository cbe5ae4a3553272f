//! The TLS listener's side: `[server.tls]` as written ([`RawServerTls`]), validated into
//! [`ServerTls`] (certificates parsed and checked once, on the control thread), and the
//! rustls `ServerConfig` each worker builds from it for itself ([`ServerTls::worker_config`]).
//!
//! # Per-worker state
//!
//! The snapshot carries the validated material (DER bytes, settings). Each worker builds its
//! own `ServerConfig` — its own signing keys, certificate resolver, client verifier and ticket
//! producer — when it applies a snapshot, so the reference counts and caches a handshake
//! touches are that core's alone. Session tickets are stateless and shared by all workers
//! through their key derivation, not through memory (see [`super::tickets`]); the stateful
//! session cache is off.
//!
//! # Certificates
//!
//! `cert_file`/`key_file` is the default pair; each `[[server.tls.sni]]` pair serves the DNS
//! names of its leaf certificate (SAN, else CN; `*.example.com` covers one label). A client
//! whose SNI names none of them, or that sends none, gets the default pair. TLS 1.2 and 1.3
//! only (`min_version = "1.3"` drops 1.2), rustls's default (modern, AEAD-only) suites, ALPN
//! `http/1.1`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use serde::Deserialize;

use super::files;
use super::identity::PeerIdentity;
use super::tickets::{random_secret, Tickets};
use crate::config_types::ConfigProblem;

/// Default limit on the TLS handshake (slowloris during the handshake).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[server.tls]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    /// `host:port` of the TLS listener (every worker, SO_REUSEPORT), besides `server.listen`.
    pub listen: String,
    /// PEM certificate chain, leaf first (relative to the config file).
    pub cert_file: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// More certificates, chosen by SNI.
    #[serde(default)]
    pub sni: Vec<RawCertPair>,
    /// CA bundle that client certificates must chain to (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// `"none"` (default), `"optional"` or `"required"`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Longest a handshake may take (default 10000).
    pub handshake_timeout_ms: Option<u64>,
    /// `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<String>,
}

/// One more certificate and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    None,
    /// Verified when presented; a client without one connects anonymously.
    Optional,
    /// The handshake fails without a certificate that chains to `client_ca_file`.
    Required,
}

/// Validated `[server.tls]`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub listen: SocketAddr,
    pub handshake_timeout: Duration,
    pub client_auth: ClientAuth,
    pub material: Arc<Material>,
}

/// What every worker builds its server config from (immutable).
pub struct Material {
    /// The default pair first.
    pairs: Vec<Pair>,
    client_roots: Vec<CertificateDer<'static>>,
    client_auth: ClientAuth,
    versions: &'static [&'static SupportedProtocolVersion],
    ticket_secret: [u8; 32],
    /// Every file the listener reads (watched for changes by the control thread).
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field(
                "names",
                &self.pairs.iter().map(|p| &p.names).collect::<Vec<_>>(),
            )
            .field("client_auth", &self.client_auth)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

struct Pair {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Lower-case DNS names the leaf covers.
    names: Vec<String>,
}

const TLS12_AND_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

impl RawServerTls {
    /// Validates the listener's settings and reads every file, reporting every problem.
    /// `listen` is `self.listen` resolved by the caller (`None`: reported there).
    pub fn build(
        &self,
        listen: Option<SocketAddr>,
        base_dir: &Path,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<ServerTls> {
        let before = problems.len();
        let mut files = Vec::new();
        let mut pairs = Vec::new();
        let all = std::iter::once(("server.tls".to_string(), &self.cert_file, &self.key_file))
            .chain(
                self.sni
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("server.tls.sni[{i}]"), &p.cert_file, &p.key_file)),
            );
        for (key, cert, priv_key) in all {
            let (cert, priv_key) = (base_dir.join(cert), base_dir.join(priv_key));
            files.push(cert.clone());
            files.push(priv_key.clone());
            if let Some(p) = read_pair(&key, &cert, &priv_key, problems) {
                pairs.push(p);
            }
        }
        let versions = match self.min_version.as_deref() {
            None | Some("1.2") => TLS12_AND_13,
            Some("1.3") => TLS13_ONLY,
            Some(v) => {
                problems.push(ConfigProblem::new(
                    "server.tls.min_version",
                    format!("`{v}` is not \"1.2\" or \"1.3\" (older versions are not offered)"),
                ));
                TLS12_AND_13
            }
        };
        let client_roots = match (&self.client_ca_file, self.client_auth) {
            (None, ClientAuth::None) => Vec::new(),
            (None, _) => {
                problems.push(ConfigProblem::new(
                    "server.tls.client_auth",
                    "client certificates need server.tls.client_ca_file",
                ));
                Vec::new()
            }
            (Some(ca), mode) => {
                let path = base_dir.join(ca);
                files.push(path.clone());
                if mode == ClientAuth::None {
                    problems.push(ConfigProblem::new(
                        "server.tls.client_ca_file",
                        "is set but server.tls.client_auth is \"none\" (say \"optional\" or \"required\")",
                    ));
                }
                files::certs(&path, "server.tls.client_ca_file")
                    .map_err(|p| problems.push(p))
                    .unwrap_or_default()
            }
        };
        if self.handshake_timeout_ms == Some(0) {
            problems.push(ConfigProblem::new(
                "server.tls.handshake_timeout_ms",
                "must be greater than 0",
            ));
        }
        let material = Material {
            pairs,
            client_roots,
            client_auth: self.client_auth,
            versions,
            ticket_secret: random_secret(),
            files,
        };
        if problems.len() > before {
            return None;
        }
        // Build once here, so whatever rustls refuses is a config problem, not a worker's.
        if let Err(e) = material.build() {
            problems.push(ConfigProblem::new("server.tls", e));
            return None;
        }
        Some(ServerTls {
            listen: listen?,
            handshake_timeout: self
                .handshake_timeout_ms
                .map_or(DEFAULT_HANDSHAKE_TIMEOUT, Duration::from_millis),
            client_auth: self.client_auth,
            material: Arc::new(material),
        })
    }
}

fn read_pair(
    key: &str,
    cert: &Path,
    priv_key: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Pair> {
    let cert_key = format!("{key}.cert_file");
    let key_key = format!("{key}.key_file");
    let chain = files::certs(cert, &cert_key).map_err(|p| problems.push(p));
    let der = files::private_key(priv_key, &key_key).map_err(|p| problems.push(p));
    let (chain, der) = (chain.ok()?, der.ok()?);
    let signer = files::signing_key(&der, priv_key, &key_key)
        .map_err(|p| problems.push(p))
        .ok()?;
    files::check_pair(&chain, signer, (&cert_key, cert), priv_key)
        .map_err(|p| problems.push(p))
        .ok()?;
    let Some(id) = PeerIdentity::from_der(&chain[0]) else {
        problems.push(ConfigProblem::new(
            cert_key,
            format!("`{}`: the first certificate is not X.509", cert.display()),
        ));
        return None;
    };
    let names = match id.dns.is_empty() {
        true => id.common_name.into_iter().collect(),
        false => id.dns,
    };
    Some(Pair {
        chain,
        key: der,
        names: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
    })
}

impl ServerTls {
    /// A worker's own server config (see the module docs). The material was built once at
    /// load, so this fails only if the process cannot get randomness or memory.
    pub fn worker_config(&self) -> Result<Arc<ServerConfig>, String> {
        self.material.build().map(Arc::new)
    }
}

impl Material {
    fn build(&self) -> Result<ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.versions)
            .map_err(|e| e.to_string())?;
        let builder = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            mode => {
                let mut roots = RootCertStore::empty();
                for c in &self.client_roots {
                    roots
                        .add(c.clone())
                        .map_err(|e| format!("client_ca_file: {e}"))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = match mode {
                    ClientAuth::Optional => v.allow_unauthenticated(),
                    _ => v,
                };
                builder.with_client_cert_verifier(
                    v.build().map_err(|e| format!("client_ca_file: {e}"))?,
                )
            }
        };
        let mut keys = Vec::with_capacity(self.pairs.len());
        for p in &self.pairs {
            let signer = rustls::crypto::ring::sign::any_supported_type(&p.key)
                .map_err(|e| e.to_string())?;
            keys.push((
                p.names.clone(),
                Arc::new(CertifiedKey::new(p.chain.clone(), signer)),
            ));
        }
        let mut config = builder.with_cert_resolver(Arc::new(SniResolver { keys }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ticketer = Arc::new(Tickets::new(self.ticket_secret));
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        // One ticket per full handshake: a client resumes one connection at a time.
        config.send_tls13_tickets = 1;
        Ok(config)
    }
}

/// Picks the certificate by SNI (see the module docs).
#[derive(Debug)]
struct SniResolver {
    /// (names, key); the first is the default.
    keys: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            self.keys
                .iter()
                .find(|(names, _)| names.iter().any(|n| name_matches(n, sni)))
        });
        chosen.or(self.keys.first()).map(|(_, k)| k.clone())
    }
}

/// Whether certificate name `pattern` (lower case; `*.` covers exactly one label) covers
/// `host`.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Why a client's handshake failed, as a `/metrics` label.
pub fn failure_reason(e: &super::session::HandshakeError) -> &'static str {
    use rustls::{Error, PeerIncompatible as P};
    let Some(e) = e.tls() else {
        return "closed";
    };
    match e {
        // A pre-1.2 client fails on the missing `signature_algorithms` extension (TLS 1.2's)
        // before its version is looked at.
        Error::PeerIncompatible(
            P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::SupportedVersionsExtensionRequired
            | P::SignatureAlgorithmsExtensionRequired
            | P::ServerDoesNotSupportTls12Or13,
        ) => "protocol_version",
        Error::PeerIncompatible(P::NoCipherSuitesInCommon) => "no_cipher_suite",
        Error::PeerIncompatible(_) => "incompatible",
        Error::NoApplicationProtocol => "alpn",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(_) => "bad_client_certificate",
        Error::AlertReceived(_) => "client_alert",
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "malformed",
        Error::InappropriateHandshakeMessage { .. } | Error::PeerMisbehaved(_) => "misbehaved",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names_match_exactly_or_by_one_wildcard_label() {
        let cases = [
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "API.Example.COM", true),
            ("api.example.com", "example.com", false),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", ".example.com", false),
            ("*.example.com", "apiexample.com", false),
            ("*.example.com", "api.example.com.evil", false),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(name_matches(pattern, host), want, "{pattern} vs {host}");
        }
    }
}
