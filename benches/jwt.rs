//! JWT verification cost per request on one worker: HS256, ES256 and RS256 with a warm
//! scratch, through the full `Authenticator::verify` path (parse, signature, claims, Identity),
//! plus `baseline_hmac_sha256_only` (ring's HMAC check of the same input) to quote ratios.
//! The `verify_*` rows verify in full (the worker's verified-token cache off);
//! `verify_hs256_cached` is the same token seen again with the cache on (`auth::cache`), and
//! `verify_hs256_cached_1024_tokens` a hit among 1024 cached tokens in a scattered order.
//!
//! Run: `cargo bench --bench jwt -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use shardgate::auth::{AuthConfig, Authenticator, Revocations, Scratch};

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123456789";

/// A typical access token's claims (~250 bytes).
fn claims() -> String {
    format!(
        r#"{{"iss":"https://idp.example.com/","sub":"user-1234567890","aud":"shardgate","exp":{},"iat":{},"jti":"3f1c2a9e-8b7d-4c61-9e55-0a1b2c3d4e5f","tid":"tenant-42","scope":"chat:write models:read"}}"#,
        NOW + 3600,
        NOW - 10
    )
}

fn authenticator(keys: &str) -> Authenticator {
    authenticator_with("token_cache_entries = 0", keys)
}

fn authenticator_with(settings: &str, keys: &str) -> Authenticator {
    let text = format!(
        "issuer = \"https://idp.example.com/\"\naudience = [\"shardgate\"]\ntenant_claim = \"tid\"\n{settings}\n{keys}"
    );
    let raw: AuthConfig = toml::from_str(&text).expect("config");
    Authenticator::from_config(&raw, Path::new(".")).expect("valid")
}

fn signing_input(alg: &str, kid: &str) -> String {
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims())
    )
}

fn bench(c: &mut Criterion, name: &str, auth: &Authenticator, token: &str, now: u64) {
    let value = format!("Bearer {token}");
    let rev = Revocations::new();
    let mut scratch = Scratch::default();
    auth.verify(Some(value.as_bytes()), now, &rev, &mut scratch)
        .expect("bench token verifies");
    c.bench_function(name, |b| {
        b.iter(|| auth.verify(black_box(Some(value.as_bytes())), now, &rev, &mut scratch))
    });
}

fn hs256(c: &mut Criterion) {
    let auth = authenticator(&format!(
        "[[keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n"
    ));
    let input = signing_input("HS256", "hs");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    bench(c, "verify_hs256", &auth, &token, NOW);
    let cached = authenticator_with(
        "",
        &format!("[[keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n"),
    );
    bench(c, "verify_hs256_cached", &cached, &token, NOW);
    many_cached(c, &key);
    // Baseline: the HMAC check alone over the same signing input, the floor for verify_hs256.
    c.bench_function("baseline_hmac_sha256_only", |b| {
        b.iter(|| ring::hmac::verify(&key, black_box(input.as_bytes()), tag.as_ref()))
    });
}

/// `verify_hs256_cached_1024_tokens`: 1024 distinct tokens, all cached (65536 entries, so no
/// set overflows), looked up in a scattered order: what a hit costs once the cache's entries
/// and the tokens' bytes are no longer in the CPU's nearest caches.
fn many_cached(c: &mut Criterion, key: &ring::hmac::Key) {
    const TOKENS: usize = 1024;
    let auth = authenticator_with(
        "token_cache_entries = 65536",
        &format!("[[keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n"),
    );
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT","kid":"hs"}"#);
    let values: Vec<String> = (0..TOKENS)
        .map(|i| {
            let claims = claims().replace("user-1234567890", &format!("user-{i:010}"));
            let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
            let tag = ring::hmac::sign(key, input.as_bytes());
            format!("Bearer {input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
        })
        .collect();
    let rev = Revocations::new();
    let mut scratch = Scratch::default();
    for v in &values {
        auth.verify(Some(v.as_bytes()), NOW, &rev, &mut scratch)
            .expect("bench token verifies");
    }
    // An odd stride visits every token once per TOKENS lookups, far apart in memory.
    let mut i = 0;
    c.bench_function("verify_hs256_cached_1024_tokens", |b| {
        b.iter(|| {
            i = (i + 389) % TOKENS;
            auth.verify(
                black_box(Some(values[i].as_bytes())),
                NOW,
                &rev,
                &mut scratch,
            )
        })
    });
}

fn es256(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let p = kp.public_key().as_ref();
    let auth = authenticator(&format!(
        "[[keys]]\nkid = \"es\"\nalg = \"ES256\"\njwk = {{ kty = \"EC\", crv = \"P-256\", x = \"{}\", y = \"{}\" }}\n",
        URL_SAFE_NO_PAD.encode(&p[1..33]),
        URL_SAFE_NO_PAD.encode(&p[33..])
    ));
    let input = signing_input("ES256", "es");
    let sig = kp.sign(&rng, input.as_bytes()).unwrap();
    bench(
        c,
        "verify_es256",
        &auth,
        &format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)),
        NOW,
    );
}

// RFC 7515 Appendix A.2: RSA-2048 public key and RS256 JWS (claims: iss, exp=1300819380).
const A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const A2_JWS: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

fn rs256(c: &mut Criterion) {
    let raw: AuthConfig = toml::from_str(&format!(
        "subject_claim = \"iss\"\ntoken_cache_entries = 0\n[[keys]]\nkid = \"rs\"\nalg = \"RS256\"\njwk = {{ kty = \"RSA\", n = \"{A2_N}\", e = \"AQAB\" }}\n"
    ))
    .unwrap();
    let auth = Authenticator::from_config(&raw, Path::new(".")).unwrap();
    bench(c, "verify_rs256", &auth, A2_JWS, 1_300_819_000);
}

criterion_group!(benches, hs256, es256, rs256);
criterion_main!(benches);
