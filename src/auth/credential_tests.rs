//! Which verifier a credential goes to, what each route accepts, and API key and remote key
//! identities, table-driven over the ways a credential can be presented.

use std::path::Path;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use super::apikey::record::{hex, SecretRecord, DISPLAY_PREFIX_LEN};
use super::apikey::{digest, KEY_PREFIX};
use super::token::B64;
use super::*;

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn key(c: char) -> String {
    format!("{KEY_PREFIX}{}", c.to_string().repeat(43))
}

fn record(id: &str, k: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: format!("{id}-name"),
        owner: format!("{id}-owner"),
        tenant: Some("acme".into()),
        label: Some("canary".into()),
        models: vec!["gpt-*".into()],
        scopes: vec!["chat".into()],
        budgets: vec![],
        claims: [("team".to_string(), "ml".to_string())].into(),
        expires_at: None,
        enabled: true,
        created_at: 1,
        secrets: vec![SecretRecord {
            sha256: hex(&digest(k.as_bytes())),
            prefix: k[..DISPLAY_PREFIX_LEN].into(),
            created_at: 1,
            not_after: None,
        }],
    }
}

/// `[auth]` with an HS256 key, claim headers, and API keys (`x-api-key` too) holding key `A`.
fn both() -> Authenticator {
    let raw: AuthConfig = toml::from_str(&format!(
        r#"
        tenant_claim = "tid"
        label_claim = "canary"
        [[claim_headers]]
        claim = "sub"
        header = "x-user"
        [[claim_headers]]
        claim = "team"
        header = "x-team"
        [[keys]]
        kid = "hs"
        alg = "HS256"
        secret = {{ value = "{SECRET}" }}
        [api_keys]
        file = "keys.json"
        header = "X-Api-Key"
        "#
    ))
    .unwrap();
    let mut a = Authenticator::from_config(&raw, Path::new("/etc/sg")).unwrap();
    a.set_api_keys(&[record("k1", &key('A'))]).unwrap();
    a
}

fn jwt(claims: &str) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"HS256","kid":"hs"}"#),
        B64.encode(claims)
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes()),
        input.as_bytes(),
    );
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

fn run(
    a: &Authenticator,
    header: Option<&str>,
    key_header: Option<&str>,
    accepts: Accepts,
) -> Result<String, AuthError> {
    let cred = Credentials {
        header: header.map(str::as_bytes),
        key_header: key_header.map(str::as_bytes),
    };
    a.authenticate(
        cred,
        accepts,
        NOW,
        &Revocations::new(),
        &mut Scratch::default(),
    )
    .map(|id| id.subject.to_string())
}

const ANY: Accepts = Accepts {
    jwt: true,
    key: true,
};
const JWT: Accepts = Accepts {
    jwt: true,
    key: false,
};
const KEY: Accepts = Accepts {
    jwt: false,
    key: true,
};

#[test]
fn keys_are_found_however_they_are_presented() {
    let a = both();
    let k = key('A');
    let ok = Ok("k1-owner".to_string());
    // (authorization header, key header, the subject or the error)
    type Case = (Option<String>, Option<String>, Result<String, AuthError>);
    let cases: Vec<Case> = vec![
        (Some(format!("Bearer {k}")), None, ok.clone()),
        (Some(format!("bearer {k}")), None, ok.clone()),
        (Some(format!("BEARER {k}")), None, ok.clone()),
        (Some(format!("Bearer    {k}")), None, ok.clone()),
        (None, Some(k.clone()), ok.clone()),
        // Nothing around the key is trimmed: a different credential is unknown.
        (
            Some(format!("Bearer {k} ")),
            None,
            Err(AuthError::KeyUnknown),
        ),
        (
            Some(format!("Bearer {k}x")),
            None,
            Err(AuthError::KeyUnknown),
        ),
        (
            Some(format!("Bearer {}", &k[..k.len() - 1])),
            None,
            Err(AuthError::KeyUnknown),
        ),
        (
            Some(format!("Bearer {}", key('B'))),
            None,
            Err(AuthError::KeyUnknown),
        ),
        (
            None,
            Some(format!("Bearer {k}")),
            Err(AuthError::KeyUnknown),
        ),
        (None, Some(format!(" {k}")), Err(AuthError::KeyUnknown)),
        (None, Some(String::new()), Err(AuthError::KeyUnknown)),
        // The scheme is still required in the credential header.
        (Some(k.clone()), None, Err(AuthError::BadScheme)),
        (Some(format!("Basic {k}")), None, Err(AuthError::BadScheme)),
        (
            Some(format!("Bearer\t{k}")),
            None,
            Err(AuthError::BadScheme),
        ),
        // Two credentials are one too many, whichever is right.
        (
            Some(format!("Bearer {k}")),
            Some(k.clone()),
            Err(AuthError::Malformed),
        ),
        (
            Some("Bearer x".into()),
            Some(k.clone()),
            Err(AuthError::Malformed),
        ),
        (None, None, Err(AuthError::Missing)),
        // A key-shaped token that is not a key is not tried as a JWT either.
        (
            Some(format!("Bearer {KEY_PREFIX}abc")),
            None,
            Err(AuthError::KeyUnknown),
        ),
    ];
    for (header, key_header, want) in cases {
        assert_eq!(
            run(&a, header.as_deref(), key_header.as_deref(), ANY),
            want,
            "{header:?} / {key_header:?}"
        );
    }
}

#[test]
fn each_route_accepts_only_its_kinds() {
    let a = both();
    let token = format!(
        "Bearer {}",
        jwt(&format!(r#"{{"sub":"jo","exp":{}}}"#, NOW + 60))
    );
    let bearer_key = format!("Bearer {}", key('A'));
    let k = key('A');
    let not = Err(AuthError::CredentialNotAccepted);
    // (what the route accepts, what is presented, authorization header, key header, outcome)
    type Case<'a> = (
        Accepts,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Result<&'a str, AuthError>,
    );
    let cases: [Case; 9] = [
        (ANY, "jwt", Some(&token), None, Ok("jo")),
        (ANY, "key", Some(&bearer_key), None, Ok("k1-owner")),
        (ANY, "x-api-key", None, Some(&k), Ok("k1-owner")),
        (JWT, "jwt", Some(&token), None, Ok("jo")),
        (JWT, "key", Some(&bearer_key), None, not),
        (JWT, "x-api-key", None, Some(&k), not),
        (KEY, "jwt", Some(&token), None, not),
        (KEY, "key", Some(&bearer_key), None, Ok("k1-owner")),
        (KEY, "x-api-key", None, Some(&k), Ok("k1-owner")),
    ];
    for (accepts, what, header, key_header, want) in cases {
        assert_eq!(
            run(&a, header, key_header, accepts),
            want.map(str::to_owned),
            "{accepts:?} {what}"
        );
    }
}

#[test]
fn what_a_route_accepts_follows_the_config() {
    let jwt_only = {
        let raw: AuthConfig = toml::from_str(&format!(
            "[[keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n"
        ))
        .unwrap();
        Authenticator::from_config(&raw, Path::new(".")).unwrap()
    };
    let keys_only = {
        let raw: AuthConfig = toml::from_str("[api_keys]\nfile = \"k.json\"\n").unwrap();
        Authenticator::from_config(&raw, Path::new(".")).unwrap()
    };
    let both = both();
    let none = Accepts::default();
    for (auth, route, want) in [
        (None, RouteAuth::Default, none),
        (None, RouteAuth::Off, none),
        (Some(&jwt_only), RouteAuth::Default, JWT),
        (Some(&jwt_only), RouteAuth::Required, JWT),
        (Some(&jwt_only), RouteAuth::Off, none),
        (Some(&keys_only), RouteAuth::Default, KEY),
        (Some(&both), RouteAuth::Default, ANY),
        (Some(&both), RouteAuth::Required, ANY),
        (Some(&both), RouteAuth::Jwt, JWT),
        (Some(&both), RouteAuth::Key, KEY),
        (Some(&both), RouteAuth::Any, ANY),
        (Some(&both), RouteAuth::Off, none),
    ] {
        assert_eq!(accepts(auth, route), want, "{route:?}");
    }
}

#[test]
fn a_key_identity_borrows_the_keys_values() {
    let a = both();
    let k = key('A');
    let cred = Credentials {
        header: None,
        key_header: Some(k.as_bytes()),
    };
    let id = a
        .authenticate(cred, ANY, NOW, &Revocations::new(), &mut Scratch::default())
        .unwrap();
    assert!(matches!(id.subject, Cow::Borrowed("k1-owner")));
    assert_eq!(id.tenant.as_deref(), Some("acme"));
    assert_eq!(id.label.as_deref(), Some("canary"));
    assert!(id.has_scope("chat") && !id.has_scope("admin"));
    assert_eq!(id.api_key.map(ApiKey::id), Some("k1"));
    let headers: Vec<(&str, &str)> = a.upstream_headers(&id).collect();
    assert_eq!(headers, [("x-user", "k1-owner"), ("x-team", "ml")]);
    assert!(matches!(id.upstream_headers, Cow::Borrowed(_)));
    assert!(id.api_key.unwrap().allows_model(Some("gpt-4o")));
    assert!(!id.api_key.unwrap().allows_model(Some("llama")));
}

#[test]
fn a_revoked_owner_is_refused_with_a_key_too() {
    let a = both();
    let rev: Revocations = [Revoked::new(RevokedKind::Sub, "k1-owner", NOW + 60).unwrap()]
        .into_iter()
        .collect();
    let k = key('A');
    let cred = Credentials {
        header: None,
        key_header: Some(k.as_bytes()),
    };
    let got = a.authenticate(cred, ANY, NOW, &rev, &mut Scratch::default());
    assert_eq!(got.unwrap_err(), AuthError::Revoked);
}

/// `[auth]` with one remote source (issuer `https://idp`) and `[auth] issuer` set to another
/// issuer for the configured keys.
pub(super) fn remote(kp: &Ed25519KeyPair, kid: &str) -> Authenticator {
    let raw: AuthConfig = toml::from_str(&format!(
        r#"
        issuer = "https://static-issuer"
        [[keys]]
        kid = "hs"
        alg = "HS256"
        secret = {{ value = "{SECRET}" }}
        [[jwks]]
        jwks_uri = "https://idp/keys"
        issuer = "https://idp"
        "#
    ))
    .unwrap();
    let mut a = Authenticator::from_config(&raw, Path::new(".")).unwrap();
    let doc = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": kid,
        "x": B64.encode(kp.public_key().as_ref()),
    }]});
    let source = a.remote_sources()[0].settings.clone();
    let set =
        remote::parse_jwks(doc.to_string().as_bytes(), None, source.issuer.as_deref()).unwrap();
    assert!(a.set_remote_keys(&source, set.keys));
    a
}

pub(super) fn ed_token(kp: &Ed25519KeyPair, kid: &str, claims: &str) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#)),
        B64.encode(claims)
    );
    let sig = kp.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

#[test]
fn remote_keys_verify_under_their_sources_issuer() {
    let rng = ring::rand::SystemRandom::new();
    let kp =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let a = remote(&kp, "idp-1");
    let exp = NOW + 60;
    let check = |kid: &str, claims: String| {
        let v = format!("Bearer {}", ed_token(&kp, kid, &claims));
        a.verify(
            Some(v.as_bytes()),
            NOW,
            &Revocations::new(),
            &mut Scratch::default(),
        )
        .map(|i| i.subject.to_string())
    };
    assert_eq!(
        check(
            "idp-1",
            format!(r#"{{"sub":"u","iss":"https://idp","exp":{exp}}}"#)
        ),
        Ok("u".into())
    );
    // The source's issuer binds its keys, over `[auth] issuer`.
    for iss in ["https://static-issuer", "https://idp/", "https://evil"] {
        assert_eq!(
            check(
                "idp-1",
                format!(r#"{{"sub":"u","iss":"{iss}","exp":{exp}}}"#)
            ),
            Err(AuthError::BadIssuer),
            "{iss}"
        );
    }
    assert_eq!(
        check("idp-1", format!(r#"{{"sub":"u","exp":{exp}}}"#)),
        Err(AuthError::BadIssuer)
    );
    assert_eq!(
        check(
            "idp-2",
            format!(r#"{{"sub":"u","iss":"https://idp","exp":{exp}}}"#)
        ),
        Err(AuthError::UnknownKey)
    );
    // The remote key pins EdDSA: the same kid under another alg is refused.
    let input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"ES256","kid":"idp-1"}"#),
        B64.encode(format!(r#"{{"sub":"u","iss":"https://idp","exp":{exp}}}"#))
    );
    let v = format!("Bearer {input}.{}", B64.encode([0u8; 64]));
    assert_eq!(
        a.verify(
            Some(v.as_bytes()),
            NOW,
            &Revocations::new(),
            &mut Scratch::default()
        )
        .unwrap_err(),
        AuthError::AlgMismatch
    );
}
