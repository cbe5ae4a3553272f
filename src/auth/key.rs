//! Verification keys: the algorithm set, JWK parsing (control thread) and signature checks
//! (worker). A key carries exactly one algorithm; the token's `alg` only has to agree with it.

use std::fmt;
use std::path::Path;

use ring::{hmac, signature};
use serde::Deserialize;

use super::token::B64;
use base64::Engine as _;

/// Smallest RSA modulus accepted, in bytes (2048 bits; RFC 7518 §3.3).
pub const MIN_RSA_MODULUS_BYTES: usize = 256;
/// Largest RSA modulus accepted, in bytes (8192 bits; ring's limit).
pub const MAX_RSA_MODULUS_BYTES: usize = 1024;

/// A JWS algorithm this gateway verifies. `none` is not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The registered name (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// Exact, case-sensitive match on the registered name; `none` and anything else → `None`.
    pub fn from_name(name: &[u8]) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name().as_bytes() == name)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parsed key material, ready for ring. Cloned to every worker; no parsing per request
/// beyond what ring's API does internally for RSA/EC public keys.
#[derive(Clone)]
pub enum KeyMaterial {
    Hmac(hmac::Key),
    /// Big-endian modulus without leading zeros, and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (`0x04 || x || y`).
    Ec(Vec<u8>),
    Ed25519([u8; 32]),
}

impl fmt::Debug for KeyMaterial {
    /// Never prints secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyMaterial::Hmac(_) => "Hmac(..)",
            KeyMaterial::Rsa { .. } => "Rsa(..)",
            KeyMaterial::Ec(_) => "Ec(..)",
            KeyMaterial::Ed25519(_) => "Ed25519(..)",
        })
    }
}

impl KeyMaterial {
    /// Builds HMAC key material, enforcing the minimum secret size for `alg`.
    pub fn hmac(alg: Alg, secret: &[u8]) -> Result<Self, String> {
        let (min, algo) = match alg {
            Alg::HS256 => (32, hmac::HMAC_SHA256),
            Alg::HS384 => (48, hmac::HMAC_SHA384),
            Alg::HS512 => (64, hmac::HMAC_SHA512),
            other => return Err(format!("a shared secret cannot be used with {other}")),
        };
        if secret.len() < min {
            return Err(format!(
                "{alg} secret must be at least {min} bytes, got {}",
                secret.len()
            ));
        }
        Ok(KeyMaterial::Hmac(hmac::Key::new(algo, secret)))
    }

    /// The public key's bytes, to tell two fetched key sets apart; nothing for a secret.
    pub fn public_bytes(&self) -> Vec<u8> {
        match self {
            KeyMaterial::Hmac(_) => Vec::new(),
            KeyMaterial::Rsa { n, e } => [n.as_slice(), e.as_slice()].concat(),
            KeyMaterial::Ec(point) => point.clone(),
            KeyMaterial::Ed25519(x) => x.to_vec(),
        }
    }

    /// Verifies `sig` over `msg` with `alg`, which the caller has already checked is this
    /// key's algorithm. HMAC comparison is constant time (ring).
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        use signature::VerificationAlgorithm as _;
        match (self, alg) {
            (KeyMaterial::Hmac(k), Alg::HS256 | Alg::HS384 | Alg::HS512) => {
                hmac::verify(k, msg, sig).is_ok()
            }
            (KeyMaterial::Rsa { n, e }, _) => {
                let params: &signature::RsaParameters = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            (KeyMaterial::Ec(point), Alg::ES256) => signature::ECDSA_P256_SHA256_FIXED
                .verify(point.as_slice().into(), msg.into(), sig.into())
                .is_ok(),
            (KeyMaterial::Ec(point), Alg::ES384) => signature::ECDSA_P384_SHA384_FIXED
                .verify(point.as_slice().into(), msg.into(), sig.into())
                .is_ok(),
            (KeyMaterial::Ed25519(x), Alg::EdDSA) => signature::ED25519
                .verify(x.as_slice().into(), msg.into(), sig.into())
                .is_ok(),
            // Family mismatch (e.g. an RSA key asked to check HS256): never verifies.
            _ => false,
        }
    }
}

/// One JSON Web Key (RFC 7517), public members only. Unknown members are ignored as
/// RFC 7517 §4 requires (identity providers add `x5c`, `x5t`, `issuer`, ...); private members
/// are recognised only so they can be refused.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// Permitted operations (RFC 7517 §4.3); when present it must contain `verify`.
    #[serde(default)]
    pub key_ops: Option<Vec<String>>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
    /// Symmetric key (`oct`).
    #[serde(default)]
    pub k: Option<String>,
    /// Private exponent / scalar: a public key set must never contain it.
    #[serde(default)]
    pub d: Option<String>,
}

/// A JWK Set document (RFC 7517 §5).
#[derive(Debug, Clone, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

fn b64_field(name: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let s = v
        .as_deref()
        .ok_or_else(|| format!("JWK member `{name}` is missing"))?;
    B64.decode(s)
        .map_err(|_| format!("JWK member `{name}` is not strict base64url"))
}

impl Jwk {
    /// Whether the key's owner allows it to verify signatures: `use`, when present, is `sig`
    /// (RFC 7517 §4.2); `key_ops`, when present, contains `verify`, no operation of an
    /// encryption key and no duplicate (§4.3: one key, one purpose).
    pub fn check_verification_key(&self) -> Result<(), String> {
        const ENCRYPTION_OPS: [&str; 6] = [
            "encrypt",
            "decrypt",
            "wrapKey",
            "unwrapKey",
            "deriveKey",
            "deriveBits",
        ];
        if let Some(u) = &self.use_ {
            if u != "sig" {
                return Err(format!("JWK `use` is `{u}`, expected `sig`"));
            }
        }
        let Some(ops) = &self.key_ops else {
            return Ok(());
        };
        if let Some(op) = ops.iter().find(|op| ENCRYPTION_OPS.contains(&op.as_str())) {
            return Err(format!(
                "JWK `key_ops` allows `{op}`; a verification key must not be an encryption key"
            ));
        }
        if ops.iter().enumerate().any(|(i, op)| ops[..i].contains(op)) {
            return Err("JWK `key_ops` has a duplicate operation".into());
        }
        if !ops.iter().any(|op| op == "verify") {
            return Err(format!(
                "JWK `key_ops` is {ops:?}, which does not include `verify`"
            ));
        }
        Ok(())
    }

    /// Turns this JWK into key material for `alg`, refusing any family or curve mismatch,
    /// private material, short RSA moduli and a key not meant for verification
    /// ([`check_verification_key`](Self::check_verification_key)).
    pub fn material(&self, alg: Alg) -> Result<KeyMaterial, String> {
        if self.d.is_some() {
            return Err("JWK contains private key material (`d`); configure the public key".into());
        }
        if let Some(a) = &self.alg {
            if a != alg.name() {
                return Err(format!(
                    "JWK says alg `{a}` but the key is configured for {alg}"
                ));
            }
        }
        self.check_verification_key()?;
        match (self.kty.as_str(), alg) {
            ("oct", Alg::HS256 | Alg::HS384 | Alg::HS512) => {
                KeyMaterial::hmac(alg, &b64_field("k", &self.k)?)
            }
            (
                "RSA",
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
            ) => rsa_material(&b64_field("n", &self.n)?, b64_field("e", &self.e)?),
            ("EC", Alg::ES256 | Alg::ES384) => {
                let (crv, len) = if alg == Alg::ES256 {
                    ("P-256", 32)
                } else {
                    ("P-384", 48)
                };
                if self.crv.as_deref() != Some(crv) {
                    return Err(format!("{alg} needs crv `{crv}`, JWK has {:?}", self.crv));
                }
                let x = b64_field("x", &self.x)?;
                let y = b64_field("y", &self.y)?;
                if x.len() != len || y.len() != len {
                    return Err(format!("{crv} coordinates must be {len} bytes each"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(KeyMaterial::Ec(point))
            }
            ("OKP", Alg::EdDSA) => {
                if self.crv.as_deref() != Some("Ed25519") {
                    return Err(format!(
                        "EdDSA supports crv `Ed25519` only, JWK has {:?}",
                        self.crv
                    ));
                }
                let x: [u8; 32] = b64_field("x", &self.x)?
                    .try_into()
                    .map_err(|_| "Ed25519 `x` must be 32 bytes".to_string())?;
                Ok(KeyMaterial::Ed25519(x))
            }
            (kty, _) => Err(format!("JWK kty `{kty}` cannot be used with {alg}")),
        }
    }
}

fn rsa_material(n: &[u8], e: Vec<u8>) -> Result<KeyMaterial, String> {
    let start = n.iter().position(|&b| b != 0).unwrap_or(n.len());
    let n = &n[start..];
    if n.len() < MIN_RSA_MODULUS_BYTES || n.len() > MAX_RSA_MODULUS_BYTES {
        return Err(format!(
            "RSA modulus must be 2048 to 8192 bits, got {} bits",
            n.len() * 8
        ));
    }
    // ring accepts odd exponents from 3 up to 2^33 - 1.
    let e_val = e.iter().skip_while(|&&b| b == 0).try_fold(0u64, |acc, &b| {
        acc.checked_mul(256).map(|v| v + u64::from(b))
    });
    match e_val {
        Some(v) if v >= 3 && v % 2 == 1 && v < (1 << 33) => {}
        _ => return Err("RSA exponent must be odd, at least 3 and below 2^33".into()),
    }
    Ok(KeyMaterial::Rsa { n: n.to_vec(), e })
}

/// Reads a JWKS file with simd-json (control thread only) and returns the verification JWK
/// whose `kid` is `kid`. Keys with that `kid` that are not verification keys (`use` = `enc`,
/// `key_ops` without `verify`) are passed over, as an identity provider may publish an
/// encryption key beside its signing key under one `kid`; when no verification key is left,
/// the error says why the first was refused.
pub fn jwk_from_file(path: &Path, kid: &str) -> Result<Jwk, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let set: Jwks = simd_json::serde::from_slice(&mut bytes)
        .map_err(|e| format!("`{}` is not a JWK Set: {e}", path.display()))?;
    let (usable, refused): (Vec<_>, Vec<_>) = set
        .keys
        .into_iter()
        .filter(|k| k.kid.as_deref() == Some(kid))
        .partition(|k| k.check_verification_key().is_ok());
    let mut usable = usable.into_iter();
    match (usable.next(), usable.next(), refused.first()) {
        (Some(k), None, _) => Ok(k),
        (None, _, Some(r)) => Err(format!(
            "`{}` key `{kid}` is not a verification key: {}",
            path.display(),
            r.check_verification_key().unwrap_err()
        )),
        (None, _, None) => Err(format!("`{}` has no key with kid `{kid}`", path.display())),
        (Some(_), Some(_), _) => Err(format!(
            "`{}` has several keys with kid `{kid}`",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_names_are_exact() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name().as_bytes()), Some(alg));
        }
        for bad in ["none", "None", "hs256", "HS256 ", "ES512", "RS1", ""] {
            assert_eq!(Alg::from_name(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn hmac_secret_minimums() {
        for (alg, min) in [(Alg::HS256, 32), (Alg::HS384, 48), (Alg::HS512, 64)] {
            assert!(KeyMaterial::hmac(alg, &vec![1; min]).is_ok());
            assert!(KeyMaterial::hmac(alg, &vec![1; min - 1]).is_err());
        }
        assert!(KeyMaterial::hmac(Alg::RS256, &[1; 64]).is_err());
    }

    #[test]
    fn rsa_exponent_and_modulus_checks() {
        let n = [0xC5u8; MIN_RSA_MODULUS_BYTES];
        let mut padded = vec![0u8; 1];
        padded.extend_from_slice(&n);
        assert!(
            matches!(rsa_material(&padded, vec![1, 0, 1]), Ok(KeyMaterial::Rsa { n, .. }) if n.len() == MIN_RSA_MODULUS_BYTES)
        );
        assert!(
            rsa_material(&n[1..], vec![1, 0, 1]).is_err(),
            "2040-bit modulus"
        );
        for e in [vec![], vec![1], vec![2], vec![1, 0, 0], vec![2, 0, 0, 0, 1]] {
            assert!(rsa_material(&n, e.clone()).is_err(), "{e:?}");
        }
    }

    #[test]
    fn jwk_rejects_mismatches() {
        let ed = |crv: &str, x: &str| Jwk {
            kty: "OKP".into(),
            crv: Some(crv.into()),
            x: Some(x.into()),
            ..Jwk::default()
        };
        let x = B64.encode([9u8; 32]);
        assert!(ed("Ed25519", &x).material(Alg::EdDSA).is_ok());
        assert!(ed("Ed448", &x).material(Alg::EdDSA).is_err());
        assert!(ed("Ed25519", &B64.encode([9u8; 31]))
            .material(Alg::EdDSA)
            .is_err());
        assert!(
            ed("Ed25519", &format!("{x}="))
                .material(Alg::EdDSA)
                .is_err(),
            "padded base64"
        );
        assert!(Jwk {
            alg: Some("ES256".into()),
            ..ed("Ed25519", &x)
        }
        .material(Alg::EdDSA)
        .is_err());
        assert!(Jwk {
            use_: Some("enc".into()),
            ..ed("Ed25519", &x)
        }
        .material(Alg::EdDSA)
        .is_err());
        assert!(ed("Ed25519", &x).material(Alg::ES256).is_err());
        let oct = Jwk {
            kty: "oct".into(),
            k: Some(B64.encode([1u8; 32])),
            ..Jwk::default()
        };
        assert!(oct.material(Alg::HS256).is_ok());
        assert!(
            oct.material(Alg::HS384).is_err(),
            "32-byte secret too short for HS384"
        );
        assert!(oct.material(Alg::RS256).is_err());
    }
}
