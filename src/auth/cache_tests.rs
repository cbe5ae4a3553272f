//! The verified-token cache ([`super::cache`]) against full verification: for every token,
//! time and key set below, a worker whose cache is warm answers exactly what a cold one does.

use base64::Engine as _;
use ring::hmac;

use super::revocation::{Revoked, RevokedKind};
use super::tests::{auth_from, hs_auth, mint, mint_hmac, NOW, SECRET};
use super::token::Scratch;
use super::*;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `token` at `now` through a worker's warm `scratch` and through a fresh one.
fn both(
    a: &Authenticator,
    token: &str,
    now: u64,
    rev: &Revocations,
    scratch: &mut Scratch,
) -> (
    Result<Identity<'static>, AuthError>,
    Result<Identity<'static>, AuthError>,
) {
    let v = bearer(token);
    let warm = a.verify(Some(v.as_bytes()), now, rev, scratch);
    let cold = a.verify(Some(v.as_bytes()), now, rev, &mut Scratch::default());
    (warm, cold)
}

/// Every time a verdict can change at, for tokens whose time claims and keys use `marks`.
fn times_around(marks: &[u64]) -> Vec<u64> {
    let mut t: Vec<u64> = marks
        .iter()
        .flat_map(|&m| [m.saturating_sub(1), m, m + 1])
        .collect();
    t.sort_unstable();
    t.dedup();
    t
}

#[test]
fn a_warm_cache_answers_what_full_verification_does_at_every_time() {
    let leeway = 60;
    let a = hs_auth(&format!(
        "leeway_secs = {leeway}\ntenant_claim = \"tid\"\nlabel_claim = \"canary\"\n\
         [[claim_headers]]\nclaim = \"sub\"\nheader = \"X-User\"\n"
    ));
    let claims = [
        format!(r#""exp":{}"#, NOW + 100),
        format!(r#""exp":{},"nbf":{}"#, NOW + 100, NOW + 20),
        format!(r#""exp":{},"iat":{}"#, NOW + 100, NOW + 30),
        format!(
            r#""exp":{},"nbf":{},"iat":{}"#,
            NOW + 100,
            NOW + 40,
            NOW + 10
        ),
        format!(r#""exp":{}.7"#, NOW + 5),
        format!(
            r#""exp":{},"jti":"j","tid":"acme","canary":"v2","scope":"a b""#,
            NOW + 50
        ),
        format!(r#""exp":{},"scp":["x","y"],"tid":7"#, NOW + 50),
    ];
    let marks: Vec<u64> = [
        NOW,
        NOW + 5,
        NOW + 20,
        NOW + 30,
        NOW + 40,
        NOW + 50,
        NOW + 100,
    ]
    .iter()
    .flat_map(|&m| [m, m.saturating_sub(leeway), m + leeway])
    .collect();
    let times = times_around(&marks);
    let rev = Revocations::new();
    for c in &claims {
        let t = mint(&format!(r#"{{"sub":"u",{c}}}"#));
        // Each time once as the first use (whatever it caches) and then every other time.
        for &first in &times {
            let mut s = Scratch::default();
            let _ = both(&a, &t, first, &rev, &mut s);
            for &now in &times {
                let (warm, cold) = both(&a, &t, now, &rev, &mut s);
                assert_eq!(warm, cold, "{c}: first {first}, now {now}");
            }
        }
    }
}

#[test]
fn a_token_without_kid_is_not_answered_from_the_cache_across_a_key_change() {
    // Two keys whose windows overlap in [NOW - 100, NOW): a token without `kid` is
    // ambiguous there, and names whichever key is active alone elsewhere.
    let a = auth_from(&format!(
        "[[keys]]\nkid = \"old\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\nnot_after = {NOW}\n\
         [[keys]]\nkid = \"new\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\nnot_before = {}\nnot_after = {}\n",
        NOW - 100,
        NOW + 500
    ));
    let claims = format!(r#"{{"sub":"u","exp":{}}}"#, NOW + 1000);
    let tokens = [
        r#"{"alg":"HS256"}"#,
        r#"{"alg":"HS256","kid":"old"}"#,
        r#"{"alg":"HS256","kid":"new"}"#,
    ]
    .map(|h| mint_hmac(SECRET.as_bytes(), hmac::HMAC_SHA256, h, &claims));
    let times = times_around(&[NOW - 100, NOW, NOW + 500, NOW + 1000]);
    let rev = Revocations::new();
    for t in &tokens {
        for &first in &times {
            let mut s = Scratch::default();
            let _ = both(&a, t, first, &rev, &mut s);
            for &now in &times {
                let (warm, cold) = both(&a, t, now, &rev, &mut s);
                assert_eq!(warm, cold, "{t}: first {first}, now {now}");
            }
        }
    }
}

#[test]
fn a_second_use_is_a_hit_and_revocation_is_checked_on_every_hit() {
    let a = hs_auth("");
    let t = mint(&format!(r#"{{"sub":"u","jti":"j1","exp":{}}}"#, NOW + 10));
    let mut s = Scratch::default();
    let mut rev = Revocations::new();
    assert_eq!(both(&a, &t, NOW, &rev, &mut s).0.unwrap().subject, "u");
    assert_eq!(s.cache.counts(), (0, 1));
    assert_eq!(
        both(&a, &t, NOW, &rev, &mut s).0.unwrap().jti.as_deref(),
        Some("j1")
    );
    assert_eq!(s.cache.counts(), (1, 1));
    rev.insert(Revoked::new(RevokedKind::Jti, "j1", NOW + 10).unwrap());
    assert_eq!(both(&a, &t, NOW, &rev, &mut s).0, Err(AuthError::Revoked));
    let mut by_sub = Revocations::new();
    by_sub.insert(Revoked::new(RevokedKind::Sub, "u", NOW + 5).unwrap());
    assert_eq!(
        both(&a, &t, NOW, &by_sub, &mut s).0,
        Err(AuthError::Revoked)
    );
    // The revocation lapses: the cached verdict serves again.
    assert!(both(&a, &t, NOW + 5, &by_sub, &mut s).0.is_ok());
    assert_eq!(s.cache.counts().0, 4);
}

#[test]
fn a_token_that_differs_in_any_byte_is_never_a_hit() {
    let a = hs_auth("");
    let t = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, NOW + 10));
    let mut s = Scratch::default();
    let rev = Revocations::new();
    assert!(both(&a, &t, NOW, &rev, &mut s).0.is_ok());
    let bytes = t.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'.' {
            continue;
        }
        let mut forged = bytes.to_vec();
        forged[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let (warm, cold) = both(&a, &forged, NOW, &rev, &mut s);
        assert!(warm.is_err(), "byte {i}: a forged token passed");
        assert_eq!(warm, cold, "byte {i}");
    }
    // Longer and shorter by one byte, and the cached token's prefix.
    for forged in [format!("{t}A"), t[..t.len() - 1].to_string()] {
        let (warm, cold) = both(&a, &forged, NOW, &rev, &mut s);
        assert!(warm.is_err());
        assert_eq!(warm, cold);
    }
    assert_eq!(
        s.cache.counts().0,
        0,
        "no forged token was answered from the cache"
    );
}

#[test]
fn another_authenticator_or_a_key_change_never_answers_from_the_cache() {
    let t = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, NOW + 10));
    let rev = Revocations::new();
    let mut s = Scratch::default();
    let a = hs_auth("");
    assert!(both(&a, &t, NOW, &rev, &mut s).0.is_ok());
    // A reload that changes the claim rules, or drops the key.
    let strict = hs_auth("issuer = \"https://idp\"");
    assert_eq!(
        both(&strict, &t, NOW, &rev, &mut s).0,
        Err(AuthError::BadIssuer)
    );
    let rotated = auth_from(&format!(
        "[[keys]]\nkid = \"other\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n"
    ));
    assert_eq!(
        both(&rotated, &t, NOW, &rev, &mut s).0,
        Err(AuthError::UnknownKey)
    );
    // The same config built again is a new authenticator: verified afresh, then cached.
    let again = hs_auth("");
    assert!(both(&again, &t, NOW, &rev, &mut s).0.is_ok());
    assert_eq!(s.cache.counts().0, 0);
    assert!(both(&again, &t, NOW, &rev, &mut s).0.is_ok());
    assert_eq!(s.cache.counts().0, 1);
    // A clone is the same authenticator (each worker has one): its cache answers.
    let clone = again.clone();
    assert!(both(&clone, &t, NOW, &rev, &mut s).0.is_ok());
    assert_eq!(s.cache.counts().0, 2);
}

#[test]
fn a_remote_key_set_replaced_in_place_stops_the_cached_tokens_of_its_old_keys() {
    let rng = ring::rand::SystemRandom::new();
    let kp = |_| {
        ring::signature::Ed25519KeyPair::from_pkcs8(
            ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .unwrap()
                .as_ref(),
        )
        .unwrap()
    };
    let (old, new) = (kp(0), kp(1));
    let mut a = super::credential_tests::remote(&old, "idp-1");
    let claims = format!(r#"{{"sub":"u","iss":"https://idp","exp":{}}}"#, NOW + 60);
    let t = super::credential_tests::ed_token(&old, "idp-1", &claims);
    let rev = Revocations::new();
    let mut s = Scratch::default();
    assert!(both(&a, &t, NOW, &rev, &mut s).0.is_ok());
    assert!(both(&a, &t, NOW, &rev, &mut s).0.is_ok());
    assert_eq!(s.cache.counts().0, 1);
    // The issuer rotates: the set now holds only a new key.
    let doc = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": "idp-2",
        "x": super::token::B64.encode(ring::signature::KeyPair::public_key(&new).as_ref()),
    }]});
    let source = a.remote_sources()[0].settings.clone();
    let set =
        remote::parse_jwks(doc.to_string().as_bytes(), None, source.issuer.as_deref()).unwrap();
    let before = a.generation;
    assert!(a.set_remote_keys(&source, set.keys));
    assert_ne!(a.generation, before);
    assert_eq!(
        both(&a, &t, NOW, &rev, &mut s).0,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(s.cache.counts().0, 1);
}

#[test]
fn changing_api_keys_makes_a_new_generation() {
    let mut keyed = auth_from(&format!(
        "[api_keys]\nfile = \"k.json\"\n[[keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n"
    ));
    let g = keyed.generation;
    keyed.set_api_keys(&[]).unwrap();
    assert_ne!(keyed.generation, g);
    let mut plain = hs_auth("");
    let g = plain.generation;
    assert!(plain.set_api_keys(&[]).is_err());
    assert_eq!(plain.generation, g);
}

#[test]
fn the_cache_stays_its_size_and_skips_what_it_must_not_keep() {
    let a = hs_auth("token_cache_entries = 8");
    let rev = Revocations::new();
    let mut s = Scratch::default();
    for i in 0..1000 {
        let t = mint(&format!(r#"{{"sub":"u{i}","exp":{}}}"#, NOW + 10));
        let id = both(&a, &t, NOW, &rev, &mut s).0.unwrap();
        assert_eq!(id.subject, format!("u{i}"));
    }
    assert_eq!(s.cache.len(), 8);
    // Recently used tokens are hits; a token over the cached size never is.
    let t = mint(&format!(r#"{{"sub":"last","exp":{}}}"#, NOW + 10));
    let _ = both(&a, &t, NOW, &rev, &mut s);
    let hits = s.cache.counts().0;
    let _ = both(&a, &t, NOW, &rev, &mut s);
    assert_eq!(s.cache.counts().0, hits + 1);
    let long = mint(&format!(
        r#"{{"sub":"long","exp":{},"pad":"{}"}}"#,
        NOW + 10,
        "p".repeat(cache::MAX_CACHED_TOKEN)
    ));
    for _ in 0..3 {
        assert_eq!(
            both(&a, &long, NOW, &rev, &mut s).0.unwrap().subject,
            "long"
        );
    }
    assert_eq!(s.cache.counts().0, hits + 1);
    // Off: nothing is cached.
    let off = hs_auth("token_cache_entries = 0");
    let mut s = Scratch::default();
    for _ in 0..3 {
        assert!(both(&off, &t, NOW, &rev, &mut s).0.is_ok());
    }
    assert_eq!((s.cache.counts().0, s.cache.len()), (0, 0));
}

#[test]
fn an_oversized_cache_is_a_config_problem_naming_the_key() {
    let raw: AuthConfig = toml::from_str(&format!(
        "token_cache_entries = {}\n[[keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n",
        cache::MAX_ENTRIES + 1
    ))
    .unwrap();
    let problems = Authenticator::from_config(&raw, std::path::Path::new(".")).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("auth.token_cache_entries")),
        "{problems:?}"
    );
}
