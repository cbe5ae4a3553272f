//! Compact JWS parsing: the `Authorization` value → three strictly decoded segments, a JOSE
//! header with `alg`/`kid`, and a claims tape. Nothing here trusts the token; the caller
//! verifies the signature before it reads a single claim.
//!
//! # Performance
//!
//! Decoding goes into the caller's [`Scratch`] (reused `Vec`s, simd-json buffers and tape), so a
//! warm worker parses a token without allocating.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
// By name, not the prelude glob (see `disallowed-methods` in clippy.toml).
use simd_json::prelude::ValueAsScalar;
use simd_json::tape::Value;
use simd_json::{Buffers, Tape};

use super::AuthError;

/// Largest decoded signature: RSA-8192 (ring's upper bound) is 1024 bytes.
pub const MAX_SIGNATURE_BYTES: usize = 1024;
/// Largest encoded JOSE header segment; real headers are under 200 bytes.
pub const MAX_HEADER_SEGMENT: usize = 1024;
/// Most members one JSON object (header, claims or nested) may have. Bounds the quadratic
/// duplicate-key check on attacker-controlled input.
pub const MAX_OBJECT_MEMBERS: usize = 64;

/// base64url exactly as RFC 7515 §2 requires: URL-safe alphabet, no padding, and no
/// non-canonical trailing bits (two encodings of one value would let a tampered token pass
/// byte-level replay or revocation checks keyed on the raw string).
pub const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Per-worker decode buffers, reused across requests. Not shared; create one per worker.
#[derive(Default)]
pub struct Scratch {
    /// Tokens that verified, with their identities ([`super::cache`]).
    pub cache: super::cache::TokenCache,
    header: Vec<u8>,
    claims: Vec<u8>,
    buffers: Option<Buffers>,
    tape: Option<Tape<'static>>,
}

impl Clone for Scratch {
    /// Scratch holds no state worth copying; a clone is a fresh, empty scratch.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").finish_non_exhaustive()
    }
}

/// The three segments of a compact JWS, still encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments<'a> {
    /// `header.payload`, exactly as received: the JWS signing input.
    pub signing_input: &'a [u8],
    pub header: &'a [u8],
    pub payload: &'a [u8],
    pub signature: &'a [u8],
}

/// Splits a compact JWS into exactly three non-empty segments. Characters are not checked
/// here: every segment goes through the strict [`B64`] decoder (header and signature before
/// the signature check, payload after), which rejects anything outside base64url.
pub fn split(token: &[u8]) -> Result<Segments<'_>, AuthError> {
    let dot = |from: usize| memchr::memchr(b'.', &token[from..]).map(|i| from + i);
    let first = dot(0).ok_or(AuthError::Malformed)?;
    let second = dot(first + 1).ok_or(AuthError::Malformed)?;
    if dot(second + 1).is_some() {
        return Err(AuthError::Malformed);
    }
    let signature = &token[second + 1..];
    let header = &token[..first];
    let payload = &token[first + 1..second];
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Segments {
        signing_input: &token[..second],
        header,
        payload,
        signature,
    })
}

/// Decodes the signature segment into `out`, returning the signature length.
pub fn decode_signature(
    seg: &[u8],
    out: &mut [u8; MAX_SIGNATURE_BYTES],
) -> Result<usize, AuthError> {
    // 4 chars → 3 bytes; reject before decoding so `decode_slice` can never run out of room.
    if seg.len() > (MAX_SIGNATURE_BYTES * 4).div_ceil(3) {
        return Err(AuthError::Malformed);
    }
    B64.decode_slice(seg, out).map_err(|_| AuthError::Malformed)
}

/// What verification needs from the JOSE header, copied to the stack.
#[derive(Clone, Copy)]
pub struct JoseHeader {
    pub alg: ShortStr,
    pub kid: Option<ShortStr>,
}

impl Scratch {
    /// Decodes and parses the JOSE header. `jku`, `x5u`, `jwk`, `x5c` are deliberately ignored
    /// (keys come only from config); any `crit` is rejected because no extension is understood
    /// (RFC 7515 §4.1.11).
    pub fn header(&mut self, seg: &[u8]) -> Result<JoseHeader, AuthError> {
        if seg.len() > MAX_HEADER_SEGMENT {
            return Err(AuthError::Malformed);
        }
        self.header.clear();
        B64.decode_vec(seg, &mut self.header)
            .map_err(|_| AuthError::Malformed)?;
        let buffers = self
            .buffers
            .get_or_insert_with(|| Buffers::new(MAX_HEADER_SEGMENT));
        let mut tape = self.tape.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let res = parse_header(&mut self.header, buffers, &mut tape);
        self.tape = Some(tape.reset());
        res
    }

    /// Decodes and parses the claims, then runs `f` over the claims object. The tape lives
    /// only for the call, so `f` must copy out what it keeps.
    pub fn with_claims<T>(
        &mut self,
        seg: &[u8],
        f: impl FnOnce(Value<'_, '_>) -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        self.claims.clear();
        B64.decode_vec(seg, &mut self.claims)
            .map_err(|_| AuthError::MalformedClaims)?;
        let buffers = self
            .buffers
            .get_or_insert_with(|| Buffers::new(MAX_HEADER_SEGMENT));
        let mut tape = self.tape.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let res = match simd_json::fill_tape(&mut self.claims, buffers, &mut tape) {
            Ok(()) => {
                let root = tape.as_value();
                if root.as_object().is_some() && !has_duplicate_keys(root, 0) {
                    f(root)
                } else {
                    Err(AuthError::MalformedClaims)
                }
            }
            Err(_) => Err(AuthError::MalformedClaims),
        };
        self.tape = Some(tape.reset());
        res
    }
}

fn parse_header<'i>(
    input: &'i mut [u8],
    buffers: &mut Buffers,
    tape: &mut Tape<'i>,
) -> Result<JoseHeader, AuthError> {
    simd_json::fill_tape(input, buffers, tape).map_err(|_| AuthError::Malformed)?;
    let root = tape.as_value();
    let obj = root.as_object().ok_or(AuthError::Malformed)?;
    if has_duplicate_keys(root, 0) {
        return Err(AuthError::Malformed);
    }
    if obj.get("crit").is_some() {
        return Err(AuthError::UnsupportedCrit);
    }
    let alg = match obj.get("alg") {
        Some(v) => ShortStr::new(v.as_str().ok_or(AuthError::Malformed)?)
            .ok_or(AuthError::UnsupportedAlg)?,
        None => return Err(AuthError::Malformed),
    };
    let kid = match obj.get("kid") {
        None => None,
        Some(v) => Some(
            ShortStr::new(v.as_str().ok_or(AuthError::Malformed)?).ok_or(AuthError::UnknownKey)?,
        ),
    };
    Ok(JoseHeader { alg, kid })
}

/// Longest `kid` (and `alg`) accepted, in bytes; config rejects longer kids.
pub const MAX_KID_BYTES: usize = 128;

/// A short header string (alg, kid) copied to the stack so it outlives the reused buffers.
#[derive(Clone, Copy)]
pub struct ShortStr {
    len: u8,
    buf: [u8; MAX_KID_BYTES],
}

impl ShortStr {
    fn new(s: &str) -> Option<Self> {
        if s.len() > MAX_KID_BYTES {
            return None;
        }
        let mut buf = [0u8; MAX_KID_BYTES];
        buf[..s.len()].copy_from_slice(s.as_bytes());
        Some(Self {
            len: s.len() as u8,
            buf,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// String equality without a libc `memcmp` call: claim names are a few bytes long.
fn eq_short(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// Deepest JSON nesting accepted in a header or claims set.
pub const MAX_JSON_DEPTH: usize = 16;

/// True when any object in the document has two members with the same name (after
/// unescaping), or has more than [`MAX_OBJECT_MEMBERS`] members. simd-json keeps both on the
/// tape; RFC 7515 §5.2 says such a header MUST be rejected, and silently picking one is how
/// parser-differential attacks (`"alg"` twice) work.
///
/// Nesting deeper than [`MAX_JSON_DEPTH`] counts as a failure too, which bounds recursion.
pub fn has_duplicate_keys(v: Value<'_, '_>, depth: usize) -> bool {
    if depth > MAX_JSON_DEPTH {
        return true;
    }
    if let Some(obj) = v.as_object() {
        if obj.len() > MAX_OBJECT_MEMBERS {
            return true;
        }
        let mut seen: [&str; MAX_OBJECT_MEMBERS] = [""; MAX_OBJECT_MEMBERS];
        for (i, (k, val)) in obj.iter().enumerate() {
            if seen[..i].iter().any(|s| eq_short(s, k)) || has_duplicate_keys(val, depth + 1) {
                return true;
            }
            seen[i] = k;
        }
        false
    } else if let Some(arr) = v.as_array() {
        arr.iter().any(|e| has_duplicate_keys(e, depth + 1))
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_accepts_only_three_nonempty_segments() {
        let ok = split(b"aa.bb.cc").unwrap();
        assert_eq!(
            (ok.signing_input, ok.header, ok.payload, ok.signature),
            (&b"aa.bb"[..], &b"aa"[..], &b"bb"[..], &b"cc"[..])
        );
        for bad in [
            &b""[..],
            b"a.b",
            b"a.b.c.d",
            b".b.c",
            b"a..c",
            b"a.b.",
            b"..",
            b"abc",
        ] {
            assert_eq!(split(bad), Err(AuthError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn signature_length_is_bounded_before_decoding() {
        let mut out = [0u8; MAX_SIGNATURE_BYTES];
        let max = B64.encode([7u8; MAX_SIGNATURE_BYTES]);
        assert_eq!(
            decode_signature(max.as_bytes(), &mut out),
            Ok(MAX_SIGNATURE_BYTES)
        );
        let over = B64.encode([7u8; MAX_SIGNATURE_BYTES + 1]);
        assert_eq!(
            decode_signature(over.as_bytes(), &mut out),
            Err(AuthError::Malformed)
        );
        // One leftover character can never be valid base64.
        assert_eq!(
            decode_signature(b"AAAAA", &mut out),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn duplicate_and_depth_detection() {
        let cases = [
            (r#"{"a":1,"b":{"a":2}}"#, false),
            (r#"{"a":1,"a":1}"#, true),
            (r#"{"a":{"x":1,"x":2}}"#, true),
            (r#"{"a":[{"x":1},{"x":2}]}"#, false),
            (r#"{"\u0061":1,"a":2}"#, true),
            (r#"[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]"#, true),
            (r#"[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]"#, false),
        ];
        for (json, want) in cases {
            let mut bytes = json.as_bytes().to_vec();
            let tape = simd_json::to_tape(&mut bytes).unwrap();
            assert_eq!(has_duplicate_keys(tape.as_value(), 0), want, "{json}");
        }
        let wide: String = (0..=MAX_OBJECT_MEMBERS)
            .map(|i| format!("\"k{i}\":0"))
            .collect::<Vec<_>>()
            .join(",");
        let mut bytes = format!("{{{wide}}}").into_bytes();
        let tape = simd_json::to_tape(&mut bytes).unwrap();
        assert!(has_duplicate_keys(tape.as_value(), 0), "too many members");
    }

    #[test]
    fn header_fields() {
        let mut s = Scratch::default();
        let h = s
            .header(
                B64.encode(r#"{"alg":"ES256","kid":"k-1","typ":"JWT"}"#)
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(
            (h.alg.as_bytes(), h.kid.map(|k| k.as_bytes().to_vec())),
            (&b"ES256"[..], Some(b"k-1".to_vec()))
        );
        let long_kid = format!(
            r#"{{"alg":"ES256","kid":"{}"}}"#,
            "k".repeat(MAX_KID_BYTES + 1)
        );
        assert_eq!(
            s.header(B64.encode(long_kid).as_bytes()).err(),
            Some(AuthError::UnknownKey)
        );
        let huge = B64.encode(format!(
            r#"{{"alg":"ES256","x":"{}"}}"#,
            "x".repeat(MAX_HEADER_SEGMENT)
        ));
        assert_eq!(s.header(huge.as_bytes()).err(), Some(AuthError::Malformed));
    }

    /// Stable stand-in for the cargo-fuzz target (tests/fuzz): deterministic byte mutations of
    /// a valid token must never panic and never verify.
    #[test]
    fn mutation_smoke_loop() {
        use crate::auth::{AuthConfig, Authenticator, Revocations};
        let raw: AuthConfig = toml::from_str(
            "[[keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = { value = \"smoke-secret-smoke-secret-smoke-secret\" }\n",
        )
        .unwrap();
        let a = Authenticator::from_config(&raw, std::path::Path::new(".")).unwrap();
        let input = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"HS256","kid":"hs"}"#),
            B64.encode(r#"{"sub":"u","exp":1900000000,"aud":["a"]}"#)
        );
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            b"smoke-secret-smoke-secret-smoke-secret",
        );
        let good = format!(
            "Bearer {input}.{}",
            B64.encode(ring::hmac::sign(&key, input.as_bytes()))
        );
        let (rev, mut scratch) = (Revocations::new(), Scratch::default());
        assert!(a
            .verify(Some(good.as_bytes()), 1_800_000_000, &rev, &mut scratch)
            .is_ok());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let charset =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.= +/\"{}\\\x00\xff";
        for _ in 0..20_000 {
            let mut t = good.clone().into_bytes();
            for _ in 0..=(next() % 4) {
                let pos = 7 + (next() as usize) % (t.len() - 7);
                match next() % 3 {
                    0 => t[pos] = charset[(next() as usize) % charset.len()],
                    1 => {
                        t.remove(pos);
                    }
                    _ => t.insert(pos, charset[(next() as usize) % charset.len()]),
                }
            }
            if t != good.as_bytes() {
                let res = a.verify(Some(&t), 1_800_000_000, &rev, &mut scratch);
                assert!(
                    res.is_err(),
                    "mutated token verified: {}",
                    String::from_utf8_lossy(&t)
                );
            }
        }
    }
}
