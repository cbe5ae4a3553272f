//! API key cost per request on one worker, against baselines measured in the same run:
//!
//! - `apikey_lookup`: [`ApiKeyTable::lookup`] of a valid key among 10,000 (SHA-256 of the
//!   46-byte key into a stack buffer, one hash-map probe, the state checks);
//! - `apikey_lookup_unknown`: the same for a well-formed key that is not in the table;
//! - `apikey_lookup_digest_only`: [`ApiKeyTable::lookup_digest`] with the digest computed
//!   beforehand (the probe among 10,000 and the state checks, no SHA-256);
//! - `apikey_lookup_10_keys` / `apikey_lookup_digest_only_10_keys`: the same in a table of 10
//!   (it stays in the L1 cache: the difference is what memory costs the 10,000-key probe);
//! - `apikey_authenticate`: the whole `Authenticator::authenticate` of `Authorization:
//!   Bearer sg-...` (scheme, dispatch, lookup, revocation check, the borrowed `Identity`);
//! - `baseline_sha256_46_bytes`: the SHA-256 the lookup uses (`sha2`) of the key alone (the floor
//!   of a lookup), and `_ring`: ring's, which it replaced (about twice as long here);
//! - `baseline_verify_hs256`: a JWT with HS256 through `Authenticator::verify`, the cheapest
//!   signed-token path (as `benches/jwt.rs` measures it).
//!
//! Run: `cargo bench --bench apikey -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::auth::apikey::record::generate_secret;
use shardgate::auth::{
    Accepts, AuthConfig, Authenticator, Credentials, KeyRecord, Revocations, Scratch,
};

const NOW: u64 = 1_800_000_000;
const KEYS: usize = 10_000;
const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123456789";

fn authenticator() -> (Authenticator, Vec<String>) {
    authenticator_of(KEYS)
}

fn authenticator_of(n: usize) -> (Authenticator, Vec<String>) {
    let raw: AuthConfig = toml::from_str(&format!(
        "issuer = \"https://idp.example.com/\"\naudience = [\"shardgate\"]\ntenant_claim = \"tid\"\n\
         [[claim_headers]]\nclaim = \"sub\"\nheader = \"x-user\"\n\
         [[keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n\
         [api_keys]\nfile = \"keys.json\"\n"
    ))
    .expect("config");
    let mut auth = Authenticator::from_config(&raw, Path::new(".")).expect("valid");
    let rng = ring::rand::SystemRandom::new();
    let mut keys = Vec::new();
    let records: Vec<KeyRecord> = (0..n)
        .map(|i| {
            let s = generate_secret(&rng, NOW).unwrap();
            keys.push(s.key);
            KeyRecord {
                id: format!("key_{i:016x}"),
                name: format!("app-{i}"),
                owner: format!("team-{}", i % 100),
                tenant: Some(format!("tenant-{}", i % 10)),
                label: None,
                models: vec!["gpt-4o*".into(), "llama-3*".into()],
                scopes: vec!["chat".into()],
                budgets: vec![],
                claims: Default::default(),
                expires_at: Some(NOW + 3600),
                enabled: true,
                created_at: NOW,
                secrets: vec![s.record],
            }
        })
        .collect();
    auth.set_api_keys(&records).expect("table");
    (auth, keys)
}

/// The HS256 token `benches/jwt.rs` verifies: a typical access token's claims.
fn hs256_token() -> String {
    let header = r#"{"alg":"HS256","typ":"JWT","kid":"hs"}"#;
    let claims = format!(
        r#"{{"iss":"https://idp.example.com/","sub":"user-1234567890","aud":"shardgate","exp":{},"iat":{},"jti":"3f1c2a9e-8b7d-4c61-9e55-0a1b2c3d4e5f","tid":"tenant-42","scope":"chat:write models:read"}}"#,
        NOW + 3600,
        NOW - 10
    );
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn apikey(c: &mut Criterion) {
    let (auth, keys) = authenticator();
    let table = auth.api_key_table().expect("keys configured");
    let key = keys[KEYS / 2].clone();
    let unknown = format!("sg-{}", "Q".repeat(43));
    assert!(table.lookup(key.as_bytes(), NOW).is_ok());
    assert!(table.lookup(unknown.as_bytes(), NOW).is_err());
    c.bench_function("apikey_lookup", |b| {
        b.iter(|| table.lookup(black_box(key.as_bytes()), NOW).is_ok())
    });
    c.bench_function("apikey_lookup_unknown", |b| {
        b.iter(|| table.lookup(black_box(unknown.as_bytes()), NOW).is_ok())
    });
    let d = shardgate::auth::apikey::digest(key.as_bytes());
    c.bench_function("apikey_lookup_digest_only", |b| {
        b.iter(|| table.lookup_digest(black_box(&d), NOW).is_ok())
    });
    let (small, small_keys) = authenticator_of(10);
    let small = small.api_key_table().expect("keys configured");
    let small_key = small_keys[5].clone();
    let small_d = shardgate::auth::apikey::digest(small_key.as_bytes());
    c.bench_function("apikey_lookup_10_keys", |b| {
        b.iter(|| small.lookup(black_box(small_key.as_bytes()), NOW).is_ok())
    });
    c.bench_function("apikey_lookup_digest_only_10_keys", |b| {
        b.iter(|| small.lookup_digest(black_box(&small_d), NOW).is_ok())
    });
    let value = format!("Bearer {key}");
    let rev = Revocations::new();
    let mut scratch = Scratch::default();
    let any = Accepts {
        jwt: true,
        key: true,
    };
    c.bench_function("apikey_authenticate", |b| {
        b.iter(|| {
            let cred = Credentials {
                header: Some(black_box(value.as_bytes())),
                key_header: None,
            };
            auth.authenticate(cred, any, NOW, &rev, &mut scratch)
                .map(|id| id.subject.len())
        })
    });
    c.bench_function("baseline_sha256_46_bytes", |b| {
        b.iter(|| shardgate::auth::apikey::digest(black_box(key.as_bytes())))
    });
    c.bench_function("baseline_sha256_46_bytes_ring", |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(key.as_bytes())))
    });
    let token = format!("Bearer {}", hs256_token());
    auth.verify(Some(token.as_bytes()), NOW, &rev, &mut scratch)
        .expect("bench token verifies");
    c.bench_function("baseline_verify_hs256", |b| {
        b.iter(|| auth.verify(black_box(Some(token.as_bytes())), NOW, &rev, &mut scratch))
    });
}

criterion_group!(benches, apikey);
criterion_main!(benches);
