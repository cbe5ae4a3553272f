//! Feeds arbitrary bytes to `Authenticator::verify` as the `Authorization` value, both raw and
//! behind `Bearer `, reusing one scratch as a worker does. Verify must never panic, and since
//! the fuzzer cannot forge an HMAC-SHA256 tag, it must never return `Ok` either.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardgate::auth::{AuthConfig, Authenticator, Revocations, Scratch};

const CONFIG: &str = r#"
tenant_claim = "tid"
label_claim = "canary"
audience = ["api"]
[[claim_headers]]
claim = "sub"
header = "x-user-id"
[[keys]]
kid = "hs"
alg = "HS256"
secret = { value = "fuzz-secret-fuzz-secret-fuzz-secret-fuzz" }
"#;

fn auth() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let raw: AuthConfig = toml::from_str(CONFIG).expect("config");
        Authenticator::from_config(&raw, Path::new(".")).expect("valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let a = auth();
    let rev = Revocations::new();
    let mut scratch = Scratch::default();
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(data);
    for v in [data, value.as_slice()] {
        let res = a.verify(Some(v), 1_800_000_000, &rev, &mut scratch);
        assert!(res.is_err(), "forged token accepted");
        let e = res.unwrap_err();
        assert!(matches!(e.status(), 401 | 403));
    }
});
