//! TLS toward upstreams: an upstream's `tls` table as written ([`RawUpstreamTls`]), validated
//! into [`UpstreamTls`], and the rustls `ClientConfig` each worker builds from it
//! ([`UpstreamTls::worker_config`]).
//!
//! An upstream speaks TLS when its endpoints are written `https://host:port` (port 443 when
//! left out) or it has a `tls` table. The server certificate is verified against the Mozilla
//! roots (`webpki-roots`) or, when `ca_file` is set, only against that bundle, for the name
//! the SNI carries: the endpoint's host, or `server_name` when set. `insecure_skip_verify`
//! turns verification off (the handshake still authenticates nothing); it is logged loudly at
//! start and at every reload.
//!
//! # Per-worker state
//!
//! Each worker builds its own `ClientConfig` per TLS upstream when it applies a snapshot, so
//! the resumption cache (rustls's in-memory store, behind a `Mutex` of its own) is touched by
//! one core only and never contended. Resumed sessions are lost on reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

use super::files;
use crate::config_types::ConfigProblem;

/// An upstream's (or deployment's) `tls` table as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle the upstream's certificate must chain to (instead of the Mozilla roots).
    pub ca_file: Option<PathBuf>,
    /// SNI and verified name (default: each endpoint's host).
    pub server_name: Option<String>,
    /// Client certificate chain for mTLS to the upstream, with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Accept any certificate. Never in production: anyone on the path can read and change
    /// the traffic.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Validated upstream TLS settings, shared by the upstream's endpoints.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// `server_name` when set (else each endpoint's host).
    pub server_name: Option<ServerName<'static>>,
    pub insecure_skip_verify: bool,
    material: Arc<Material>,
}

struct Material {
    /// `None`: the Mozilla roots.
    roots: Option<Vec<CertificateDer<'static>>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    insecure: bool,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("custom_roots", &self.roots.as_ref().map(Vec::len))
            .field("client_cert", &self.client.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Splits an endpoint as written into (TLS, `host:port`): `https://h:p` → (true, `h:p`),
/// `https://h` → (true, `h:443`), `http://h:p` and `h:p` → (false, `h:p`). `Err`: another
/// scheme, or a path after the authority.
pub fn split_endpoint(written: &str) -> Result<(bool, String), String> {
    let w = written.trim();
    let (tls, rest) = if let Some(r) = w.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = w.strip_prefix("http://") {
        (false, r)
    } else if w.contains("://") {
        return Err(format!(
            "`{w}`: only http:// and https:// endpoints are supported"
        ));
    } else {
        (false, w)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!("`{w}`: an endpoint is host:port, without a path"));
    }
    let has_port = match rest.rsplit_once(':') {
        // `[::1]` alone has a colon but no port.
        Some((h, p)) => !h.is_empty() && !p.contains(']') && !rest.ends_with(']'),
        None => false,
    };
    Ok(match (has_port, tls) {
        (false, true) => (true, format!("{rest}:443")),
        _ => (tls, rest.to_string()),
    })
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(authority: &str) -> &str {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The SNI / verified name for `host`. `Err`: not a DNS name or IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("`{host}` is not a valid DNS name or IP address for TLS"))
}

impl RawUpstreamTls {
    /// Validates and reads the files (problems under `key`, e.g. `upstreams[2].tls`).
    pub fn build(
        &self,
        key: &str,
        base_dir: &Path,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<UpstreamTls> {
        let before = problems.len();
        let server_name = self.server_name.as_deref().and_then(|n| {
            server_name(n)
                .map_err(|e| problems.push(ConfigProblem::new(format!("{key}.server_name"), e)))
                .ok()
        });
        let roots = self.ca_file.as_ref().and_then(|f| {
            files::certs(&base_dir.join(f), &format!("{key}.ca_file"))
                .map_err(|p| problems.push(p))
                .ok()
        });
        let client = match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                read_client_pair(key, &base_dir.join(c), &base_dir.join(k), problems)
            }
            (Some(_), None) | (None, Some(_)) => {
                problems.push(ConfigProblem::new(
                    format!("{key}.client_cert_file"),
                    "client_cert_file and client_key_file go together",
                ));
                None
            }
        };
        if self.insecure_skip_verify && self.ca_file.is_some() {
            problems.push(ConfigProblem::new(
                format!("{key}.insecure_skip_verify"),
                "contradicts ca_file: either verify against it or do not verify",
            ));
        }
        if problems.len() > before {
            return None;
        }
        let material = Material {
            roots,
            client,
            insecure: self.insecure_skip_verify,
        };
        if let Err(e) = material.build() {
            problems.push(ConfigProblem::new(key, e));
            return None;
        }
        Some(UpstreamTls {
            server_name,
            insecure_skip_verify: self.insecure_skip_verify,
            material: Arc::new(material),
        })
    }
}

fn read_client_pair(
    key: &str,
    cert: &Path,
    priv_key: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_key = format!("{key}.client_cert_file");
    let key_key = format!("{key}.client_key_file");
    let chain = files::certs(cert, &cert_key).map_err(|p| problems.push(p));
    let der = files::private_key(priv_key, &key_key).map_err(|p| problems.push(p));
    let (chain, der) = (chain.ok()?, der.ok()?);
    let signer = files::signing_key(&der, priv_key, &key_key)
        .map_err(|p| problems.push(p))
        .ok()?;
    files::check_pair(&chain, signer, (&cert_key, cert), priv_key)
        .map_err(|p| problems.push(p))
        .ok()?;
    Some((chain, der))
}

impl UpstreamTls {
    /// A worker's own client config (see the module docs).
    pub fn worker_config(&self) -> Result<Arc<ClientConfig>, String> {
        self.material.build().map(Arc::new)
    }
}

impl Material {
    fn build(&self) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let mut roots = RootCertStore::empty();
        match &self.roots {
            Some(certs) => {
                for c in certs {
                    roots.add(c.clone()).map_err(|e| format!("ca_file: {e}"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = builder.with_root_certificates(roots);
        let mut config = match &self.client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("client certificate: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        if self.insecure {
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(AcceptAnything(provider)));
        }
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// `insecure_skip_verify`: any certificate, any name (signatures are still checked, so the
/// handshake itself is sound; who is at the other end is not).
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Logs, loudly, every upstream that does not verify its certificates (at start and on each
/// reload). `upstreams` and `tls` are the snapshot's, index for index.
pub fn warn_insecure(upstreams: &[crate::config_types::Upstream], tls: &[Option<UpstreamTls>]) {
    for (u, t) in upstreams.iter().zip(tls) {
        if t.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            eprintln!(
                "shardgate: WARNING: upstream `{}` has tls.insecure_skip_verify = true: its \
                 certificates are NOT verified; anyone on the network path can impersonate it \
                 and read or change its traffic",
                u.name
            );
        }
    }
}

/// Why an upstream handshake failed, as a `/metrics` label.
pub fn failure_reason(e: &super::session::HandshakeError) -> &'static str {
    use rustls::{CertificateError as C, Error};
    match e.tls() {
        None => "closed",
        Some(Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => "cert_expired",
        Some(Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => {
            "cert_name_mismatch"
        }
        Some(Error::InvalidCertificate(C::UnknownIssuer)) => "cert_unknown_issuer",
        Some(Error::InvalidCertificate(_)) => "cert_invalid",
        Some(Error::AlertReceived(_)) => "upstream_alert",
        Some(Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_into_scheme_and_authority() {
        type Want = Result<(bool, &'static str), ()>;
        let cases: [(&str, Want); 12] = [
            ("127.0.0.1:9000", Ok((false, "127.0.0.1:9000"))),
            ("http://127.0.0.1:9000", Ok((false, "127.0.0.1:9000"))),
            ("https://api.openai.com", Ok((true, "api.openai.com:443"))),
            ("https://api.openai.com/", Ok((true, "api.openai.com:443"))),
            (
                "https://api.openai.com:8443",
                Ok((true, "api.openai.com:8443")),
            ),
            ("https://[::1]:8443", Ok((true, "[::1]:8443"))),
            ("https://[::1]", Ok((true, "[::1]:443"))),
            (" https://h:1 ", Ok((true, "h:1"))),
            ("ftp://h:1", Err(())),
            ("https://h:1/v1", Err(())),
            ("HTTPS://h:1", Err(())),
            ("unix:///tmp/s", Err(())),
        ];
        for (written, want) in cases {
            let got = split_endpoint(written);
            match want {
                Ok((tls, auth)) => assert_eq!(got, Ok((tls, auth.to_string())), "{written}"),
                Err(()) => assert!(got.is_err(), "{written}: {got:?}"),
            }
        }
    }

    #[test]
    fn hosts_and_server_names() {
        assert_eq!(host_of("api.openai.com:443"), "api.openai.com");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert!(matches!(
            server_name("api.openai.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        for bad in ["", "a b", "exa mple.com", "-.com/"] {
            assert!(server_name(bad).is_err(), "{bad:?}");
        }
    }
}
