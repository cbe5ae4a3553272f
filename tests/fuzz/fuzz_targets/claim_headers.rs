//! Feeds arbitrary bytes as the claims of a correctly signed HS256 token through
//! `Authenticator::verify`, then renders the claim headers exactly as the gateway does
//! (`Authenticator::write_upstream_headers`). The first input byte picks the separator set.
//!
//! Invariants: nothing panics; a refusal is a 401/403; for an accepted token the rendered
//! block parses back (httparse) into exactly the headers `upstream_headers` lists, each name a
//! configured one and at most once, every value free of CR, LF, NUL and every other control
//! byte, without surrounding whitespace or U+2028/U+2029; and the subject and `jti` are ids
//! the revocation API accepts (anything accepted can be revoked).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use shardgate::auth::{AuthConfig, Authenticator, Revocations, Revoked, RevokedKind, Scratch};

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret-fuzz";
const NOW: u64 = 1_800_000_000;

fn config(seps: [&str; 3]) -> String {
    format!(
        r#"
require_exp = false
tenant_claim = "tid"
label_claim = "canary"
[[claim_headers]]
claim = "sub"
header = "x-user-id"
[[claim_headers]]
claim = "tid"
header = "x-tenant-id"
[[claim_headers]]
claim = "scp"
header = "x-scopes"
separator = {:?}
[[claim_headers]]
claim = "grp"
header = "x-groups"
separator = {:?}
[[claim_headers]]
claim = "n"
header = "X-N"
separator = {:?}
[[claim_headers]]
claim = "b"
header = "x-b"
[[keys]]
kid = "hs"
alg = "HS256"
secret = {{ value = "{SECRET}" }}
"#,
        seps[0], seps[1], seps[2]
    )
}

fn auths() -> &'static [Authenticator; 3] {
    static AUTHS: OnceLock<[Authenticator; 3]> = OnceLock::new();
    AUTHS.get_or_init(|| {
        [[" ", ",", ", "], [",", " ", "|"], ["; ", "::", " , "]].map(|seps| {
            let raw: AuthConfig = toml::from_str(&config(seps)).expect("config");
            Authenticator::from_config(&raw, Path::new(".")).expect("valid")
        })
    })
}

fn sign(claims: &[u8]) -> Vec<u8> {
    let input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"HS256","kid":"hs"}"#),
        B64.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("Bearer {input}.{}", B64.encode(tag.as_ref())).into_bytes()
}

fn clean(v: &str) -> bool {
    v.bytes().all(|b| b >= 0x20 && b != 0x7f)
        && !v
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
        && !v.starts_with(char::is_whitespace)
        && !v.ends_with(char::is_whitespace)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, claims)) = data.split_first() else {
        return;
    };
    let a = &auths()[usize::from(pick) % 3];
    let token = sign(claims);
    let mut scratch = Scratch::default();
    let id = match a.verify(Some(&token), NOW, &Revocations::new(), &mut scratch) {
        Ok(id) => id,
        Err(e) => {
            assert!(matches!(e.status(), 401 | 403));
            return;
        }
    };
    // Anything accepted can be revoked by the same string.
    Revoked::new(RevokedKind::Sub, id.subject.clone(), NOW + 1).expect("subject revocable");
    if let Some(jti) = &id.jti {
        Revoked::new(RevokedKind::Jti, jti.clone(), NOW + 1).expect("jti revocable");
    }
    let listed: Vec<(&str, &str)> = a.upstream_headers(&id).collect();
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    a.write_upstream_headers(&id, &mut head);
    head.extend_from_slice(b"\r\n");
    let mut hs = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut hs);
    let status = req.parse(&head).expect("rendered head parses");
    assert!(
        status.is_complete() && status.unwrap() == head.len(),
        "one head, nothing after"
    );
    assert_eq!(req.headers.len(), listed.len(), "no header split into two");
    for (i, (h, (name, value))) in req.headers.iter().zip(&listed).enumerate() {
        assert_eq!(h.name, *name);
        assert_eq!(h.value, value.as_bytes(), "value reads back unchanged");
        assert!(
            a.mapped_headers().iter().any(|m| &**m == *name),
            "configured name"
        );
        assert!(
            !listed[..i].iter().any(|(n, _)| n == name),
            "each name once"
        );
        assert!(clean(value), "clean value {value:?}");
        assert!(value.len() <= shardgate::auth::claims::MAX_CLAIM_HEADER_BYTES);
    }
});
