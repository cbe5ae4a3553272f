//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): `traceparent` read and
//! written, `tracestate` checked. Nothing here allocates.
//!
//! # Contract
//!
//! [`parse_traceparent`] accepts exactly what the Recommendation's parsing rules accept:
//! version `00` with exactly 55 characters, or a later version (not `ff`) whose first 55
//! characters have the `00` layout and, when longer, a `-` after them; lowercase hex only; a
//! trace id or parent id of all zeros is invalid. Anything else is `None`: the gateway then
//! starts a new trace and the header is replaced, never forwarded as received.
//! [`tracestate_is_valid`] checks the list grammar (keys, values, at most 32 members, no key
//! twice, at most [`MAX_TRACESTATE`] bytes); an invalid `tracestate` is dropped.

/// A trace id: 16 bytes, never all zero when valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span id: 8 bytes, never all zero when valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }

    /// The 32 lowercase hex digits.
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        out
    }

    /// The 64 bits ratio sampling compares (the id's last 8 bytes, big-endian, as the
    /// OpenTelemetry `TraceIdRatioBased` sampler does).
    pub fn sampling_value(&self) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(b)
    }
}

impl SpanId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }

    /// The 16 lowercase hex digits.
    pub fn hex(&self) -> [u8; 16] {
        let mut out = [0; 16];
        hex_into(&self.0, &mut out);
        out
    }
}

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;
/// The `sampled` bit of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;
/// Longest `tracestate` forwarded; a longer one is dropped whole.
pub const MAX_TRACESTATE: usize = 512;
/// Most list members a `tracestate` may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A caller's valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// Parses a `traceparent` value (see the module docs).
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    match version {
        0xff => return None,
        0 if v.len() != TRACEPARENT_LEN => return None,
        // A later version may append fields, after a dash.
        _ if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = TraceId::default();
    unhex_into(&v[3..35], &mut trace_id.0)?;
    let mut span_id = SpanId::default();
    unhex_into(&v[36..52], &mut span_id.0)?;
    let flags = hex_byte(&v[53..55])?;
    (trace_id.is_valid() && span_id.is_valid()).then_some(Parent {
        trace_id,
        span_id,
        sampled: flags & FLAG_SAMPLED != 0,
    })
}

/// Appends `traceparent: 00-<trace>-<span>-<flags>\r\n` to `out` and returns the offset of
/// the span id's 16 hex digits in `out` (see [`patch_span_id`]).
pub fn write_traceparent(out: &mut Vec<u8>, trace: TraceId, span: SpanId, sampled: bool) -> usize {
    out.extend_from_slice(b"traceparent: 00-");
    out.extend_from_slice(&trace.hex());
    out.push(b'-');
    let at = out.len();
    out.extend_from_slice(&span.hex());
    out.extend_from_slice(if sampled { b"-01\r\n" } else { b"-00\r\n" });
    at
}

/// Overwrites the span id written by [`write_traceparent`] at `at`, so each attempt of a
/// request names its own span as the upstream's parent without rewriting the head.
pub fn patch_span_id(out: &mut [u8], at: usize, span: SpanId) {
    if let Some(dst) = out.get_mut(at..at + 16) {
        dst.copy_from_slice(&span.hex());
    }
}

/// Whether `v` is a `tracestate` value to forward (see the module docs).
pub fn tracestate_is_valid(v: &[u8]) -> bool {
    if v.len() > MAX_TRACESTATE {
        return false;
    }
    // Keys seen so far, as ranges of `v` (no allocation).
    let mut keys = [(0usize, 0usize); MAX_TRACESTATE_MEMBERS];
    let mut n = 0;
    let mut start = 0;
    for member in v.split(|&b| b == b',') {
        let at = start;
        start += member.len() + 1;
        let (lead, m) = trim_ows(member);
        if m.is_empty() {
            // Empty list members are allowed (and ignored).
            continue;
        }
        let Some(eq) = m.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, value) = (&m[..eq], &m[eq + 1..]);
        if !key_is_valid(key) || !value_is_valid(value) || n == MAX_TRACESTATE_MEMBERS {
            return false;
        }
        if keys[..n].iter().any(|&(s, l)| &v[s..s + l] == key) {
            return false;
        }
        keys[n] = (at + lead, key.len());
        n += 1;
    }
    true
}

/// `member` without optional whitespace at either end, and how much was cut at the front.
fn trim_ows(member: &[u8]) -> (usize, &[u8]) {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let lead = member.iter().take_while(|b| ows(b)).count();
    let rest = &member[lead..];
    let trail = rest.iter().rev().take_while(|b| ows(b)).count();
    (lead, &rest[..rest.len() - trail])
}

fn key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` or `tenant-id@system-id`.
fn key_is_valid(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            (1..=256).contains(&key.len())
                && key[0].is_ascii_lowercase()
                && key.iter().all(|&b| key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant.iter().all(|&b| key_char(b))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system.iter().all(|&b| key_char(b))
        }
    }
}

/// 1..=256 printable characters but `,` and `=`, not ending in a space.
fn value_is_valid(value: &[u8]) -> bool {
    let chr = |b: u8| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=';
    (1..=256).contains(&value.len()) && value.iter().all(|&b| chr(b)) && value.last() != Some(&b' ')
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// A lowercase hex digit's value.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

fn unhex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_byte(&hex[2 * i..2 * i + 2])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read() {
        let p = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert_eq!(&p.trace_id.hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&p.span_id.hex(), b"00f067aa0ba902b7");
        assert!(p.sampled);
        let p = parse_traceparent(GOOD.replace("-01", "-00").as_bytes()).unwrap();
        assert!(!p.sampled);
        // Unknown flag bits are ignored; only `sampled` is read.
        let p = parse_traceparent(GOOD.replace("-01", "-fe").as_bytes()).unwrap();
        assert!(!p.sampled);
        // A later version may carry more fields after a dash.
        let future = format!("{}-what-comes-next", GOOD.replacen("00", "cc", 1));
        assert!(parse_traceparent(future.as_bytes()).is_some());
        assert!(parse_traceparent(GOOD.replacen("00", "cc", 1).as_bytes()).is_some());
    }

    /// Every way the Recommendation says a `traceparent` is invalid, by position.
    #[test]
    fn every_malformed_traceparent_is_refused() {
        let zeros_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zeros_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        let mut cases: Vec<String> = vec![
            String::new(),
            "00".into(),
            GOOD[..54].into(),
            format!("{GOOD}0"),
            format!("{GOOD}-00"),
            zeros_trace.into(),
            zeros_span.into(),
            GOOD.replacen("00", "ff", 1),
            // A later version whose extra bytes do not start with a dash.
            format!("{}x", GOOD.replacen("00", "cc", 1)),
            GOOD.to_uppercase(),
            GOOD.replace("4bf9", "4BF9"),
            GOOD.replace("0ba9", "0BA9"),
            GOOD.replace("-01", "-0A"),
            format!(" {}", &GOOD[..54]),
            GOOD.replace("0e0e", "0e0g"),
            GOOD.replace("4736-", "4736_"),
            GOOD.replacen("-", "_", 1),
            GOOD.replace("02b7-", "02b7+"),
            GOOD.replace("4bf9", "4bf\u{0}"),
        ];
        // A non-hex character at every hex position.
        for (i, c) in GOOD.char_indices() {
            if c != '-' {
                let mut s = GOOD.as_bytes().to_vec();
                s[i] = b'x';
                cases.push(String::from_utf8(s).unwrap());
            }
        }
        // A missing or moved separator at every dash.
        for (i, c) in GOOD.char_indices() {
            if c == '-' {
                let mut s = GOOD.as_bytes().to_vec();
                s[i] = b'0';
                cases.push(String::from_utf8(s).unwrap());
            }
        }
        for c in cases {
            assert_ne!(c, GOOD, "a case must change the valid value");
            assert_eq!(parse_traceparent(c.as_bytes()), None, "{c:?}");
        }
    }

    #[test]
    fn written_traceparents_parse_and_patch_in_place() {
        let trace = TraceId([0xab; 16]);
        let mut out = b"x-a: 1\r\n".to_vec();
        let at = write_traceparent(&mut out, trace, SpanId([1; 8]), true);
        let line = std::str::from_utf8(&out[8..]).unwrap();
        assert_eq!(
            line,
            "traceparent: 00-abababababababababababababababab-0101010101010101-01\r\n"
        );
        patch_span_id(&mut out, at, SpanId([0xcd; 8]));
        let value = &out[8 + "traceparent: ".len()..out.len() - 2];
        let p = parse_traceparent(value).unwrap();
        assert_eq!(
            (p.trace_id, p.span_id, p.sampled),
            (trace, SpanId([0xcd; 8]), true)
        );
        let mut out = Vec::new();
        write_traceparent(&mut out, trace, SpanId([1; 8]), false);
        assert!(out.ends_with(b"-00\r\n"));
    }

    #[test]
    fn tracestate_grammar() {
        let long_value = "v".repeat(256);
        let too_long_value = "v".repeat(257);
        let members_32: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        let members_33: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let good = [
            "rojo=00f067aa0ba902b7",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "rojo=1 , congo=2",
            "rojo=1,,congo=2",
            "tenant@vendor=x",
            "0tenant@v=x",
            "a_-*/b=x y",
            "k=!\"#$%&'()*+-./09:;<>?@AZ[\\]^_`az{|}~",
            "",
            " ",
        ];
        for s in good {
            assert!(tracestate_is_valid(s.as_bytes()), "{s:?}");
        }
        assert!(tracestate_is_valid(format!("k={long_value}").as_bytes()));
        assert!(tracestate_is_valid(members_32.join(",").as_bytes()));
        let bad = [
            "rojo",
            "=x",
            "Rojo=1",
            "1rojo=1",
            "rojo=1,rojo=2",
            "rojo=",
            "rojo=a=b",
            "ro jo=1",
            "rojo=\u{7f}",
            "rojo=\té",
            "@vendor=x",
            "tenant@=x",
            "tenant@Vendor=x",
            "tenant@1vendor=x",
            "tenant@vendorvendorvend=x",
            "a@b@c=x",
        ];
        for s in bad {
            assert!(!tracestate_is_valid(s.as_bytes()), "{s:?}");
        }
        assert!(!tracestate_is_valid(
            format!("k={too_long_value}").as_bytes()
        ));
        assert!(!tracestate_is_valid(members_33.join(",").as_bytes()));
        let over = format!("a={},b={}", "v".repeat(255), "v".repeat(255));
        assert!(
            !tracestate_is_valid(over.as_bytes()),
            "{} bytes",
            over.len()
        );
    }
}
