//! PEM files: certificate chains, private keys and CA bundles, read at config load on the
//! control thread. Every failure is a [`ConfigProblem`] naming the key and the file.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use std::sync::Arc;

use crate::config_types::ConfigProblem;

/// `path` against the config file's directory.
pub fn full_path(base_dir: &Path, path: &Path) -> PathBuf {
    base_dir.join(path)
}

/// Every certificate in a PEM file (a chain: the leaf first; or a CA bundle).
pub fn certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigProblem> {
    let bytes = read(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(key, path, &format!("is not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(problem(key, path, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn private_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, ConfigProblem> {
    let bytes = read(path, key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no PRIVATE KEY block".into(),
            e => format!("is not a valid PEM private key ({e})"),
        };
        problem(key, path, &why)
    })
}

/// A signing key rustls (ring) can use: RSA, ECDSA P-256/P-384 or Ed25519.
pub fn signing_key(
    der: &PrivateKeyDer<'_>,
    path: &Path,
    key: &str,
) -> Result<Arc<dyn SigningKey>, ConfigProblem> {
    rustls::crypto::ring::sign::any_supported_type(der).map_err(|e| {
        problem(
            key,
            path,
            &format!("is not a usable RSA, ECDSA (P-256, P-384) or Ed25519 key ({e})"),
        )
    })
}

/// Checks that the chain's leaf certificate belongs to the private key.
pub fn check_pair(
    chain: &[CertificateDer<'static>],
    signer: Arc<dyn SigningKey>,
    (cert_key, cert_path): (&str, &Path),
    key_path: &Path,
) -> Result<(), ConfigProblem> {
    let ck = CertifiedKey::new(chain.to_vec(), signer);
    match ck.keys_match() {
        Ok(()) => Ok(()),
        // Keys whose public half rustls cannot derive (none of ring's) are taken on trust.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(_) => Err(problem(
            cert_key,
            cert_path,
            &format!(
                "does not belong to the private key in `{}` (the first certificate must be \
                 the key's)",
                key_path.display()
            ),
        )),
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, ConfigProblem> {
    std::fs::read(path).map_err(|e| problem(key, path, &format!("cannot be read ({e})")))
}

fn problem(key: &str, path: &Path, why: &str) -> ConfigProblem {
    ConfigProblem::new(key, format!("`{}` {why}", path.display()))
}
