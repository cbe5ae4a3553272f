//! Request path normalisation: the one place that decides which path a request is routed on
//! and forwarded with.
//!
//! # Contract
//!
//! [`normalise`] takes the path part of an origin-form request target (the bytes before the
//! first `?` or `#`), rewrites it in place into its normal form and returns the normal form's
//! length, which is never more than the input's. The router matches the normal form and the
//! upstream receives exactly it (plus the original query), so no upstream can read a path the
//! route table did not see. `Err` is a [`PathError`]: the request is answered 400 and never
//! routed.
//!
//! The normal form:
//!
//! - starts with `/`;
//! - has every percent-encoded *unreserved* character (RFC 3986 §2.3: `ALPHA / DIGIT / - . _
//!   ~`) decoded (`%41` → `A`, `%2e` → `.`, `%7E` → `~`) and every other percent-encoding
//!   kept, with its hex upper-cased (`%3a` → `%3A`, RFC 3986 §6.2.2.1), so equivalent
//!   spellings route and forward alike;
//! - has runs of `/` merged into one (`//v1///models` → `/v1/models`), as nginx's
//!   `merge_slashes` does: clients that join a base URL ending in `/` with a path starting
//!   with `/` send these, the route table has no empty segments, and an upstream that merges
//!   slashes itself would otherwise read a path other than the routed one.
//!
//! # Error handling
//!
//! Everything upstreams are known to read differently from one another is refused, all with
//! 400, rather than guessed at:
//!
//! | input | why it is refused |
//! | --- | --- |
//! | a `.` or `..` segment in any spelling (`..`, `%2e%2E`, `.%2e`, `%2E.`) | resolving would make the gateway guess each upstream's resolution; `/open/%2e%2e/v1/models` reaches a protected route on an upstream that decodes first. Clients resolve dot segments before sending (RFC 3986 §5.2.4), so only probes carry them |
//! | an encoded `/` (`%2f`, `%2F`) | decoded before or after splitting, depending on the upstream (Tomcat, Apache, Go's `RawPath`) |
//! | a backslash, raw or `%5C` | a path separator to IIS, Windows file servers and some frameworks |
//! | a raw `;` | path parameters: Tomcat, Jetty and Spring drop `;…` from a segment, so `/open/..;/v1/models` is `/v1/models` to them (`%3B` is data and stays encoded) |
//! | a control byte, raw or encoded (`%00`–`%1F`, `%7F`), or a raw space | truncation (`%00`) and header injection (`%0d%0a`) downstream (`%20` is data and stays encoded) |
//! | a raw byte ≥ 0x80 | must be percent-encoded (RFC 3986 §2.1); upstreams disagree on its charset |
//! | encoded bytes ≥ 0x80 that are not well-formed UTF-8 (`%C0%AE`, `%E0%80%AF`, surrogates, cut sequences) | lenient decoders turn overlong forms into `.` and `/` |
//! | `%25` followed by two hex digits in the normal form (`%252e`, `%25%32%65`) | double encoding: `.` to an upstream that decodes twice |
//! | `%` not followed by two hex digits (`%`, `%2`, `%g1`) | an invalid escape each decoder repairs its own way |
//! | not starting with `/` (absolute-form `http://h/p`, authority-form, empty) | only origin-form targets are routed (`OPTIONS *` is handled by the parser) |
//!
//! # Performance
//!
//! One forward scan, no allocation. Bytes move only once the output has fallen behind the
//! input (after a decoded escape or a merged slash), so an already-normal path is scanned
//! once and never copied.

/// Why a path was refused. Every variant is answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    DotSegment,
    EncodedSlash,
    Backslash,
    PathParameter,
    ControlByte,
    NonAscii,
    BadUtf8,
    DoubleEncoding,
    BadEscape,
}

impl PathError {
    pub fn message(self) -> &'static str {
        use PathError::*;
        match self {
            NotAbsolute => "request target must be an absolute path",
            DotSegment => {
                "request path must not contain dot segments ('.' or '..', encoded or not)"
            }
            EncodedSlash => "request path must not contain an encoded '/' (%2F)",
            Backslash => "request path must not contain a backslash (raw or %5C)",
            PathParameter => "request path must not contain ';' path parameters",
            ControlByte => "request path must not contain control characters (raw or encoded)",
            NonAscii => "request path must percent-encode non-ASCII bytes",
            BadUtf8 => "percent-encoded bytes in the request path are not valid UTF-8",
            DoubleEncoding => "request path must not be percent-encoded twice (%25XX)",
            BadEscape => "request path has an invalid percent escape",
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Rewrites `path` in place into its normal form and returns its length (see the module docs).
pub fn normalise(path: &mut [u8]) -> Result<usize, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let n = path.len();
    // `path[..w]` is the output so far; `w <= r` always, since no input unit grows.
    let (mut r, mut w) = (0, 0);
    // Where the segment being written starts in the output.
    let mut seg = 0;
    let mut utf8 = Utf8::default();
    while r < n {
        let b = path[r];
        match b {
            b'/' => {
                utf8.boundary()?;
                dot_check(&path[seg..w])?;
                r += 1;
                if w > 0 && path[w - 1] == b'/' {
                    continue;
                }
                put(path, &mut w, r - 1, b'/');
                seg = w;
            }
            b'%' => {
                let v = escape(path, r)?;
                if v >= 0x80 {
                    utf8.byte(v)?;
                } else {
                    utf8.boundary()?;
                }
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0..=0x1F | 0x7F => return Err(PathError::ControlByte),
                    v if is_unreserved(v) => {
                        put(path, &mut w, usize::MAX, v);
                        double_check(&path[..w])?;
                    }
                    v => {
                        path[w] = b'%';
                        path[w + 1] = HEX[usize::from(v >> 4)];
                        path[w + 2] = HEX[usize::from(v & 0xF)];
                        w += 3;
                    }
                }
                r += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            0..=0x20 | 0x7F => return Err(PathError::ControlByte),
            0x80.. => return Err(PathError::NonAscii),
            _ => {
                utf8.boundary()?;
                put(path, &mut w, r, b);
                double_check(&path[..w])?;
                r += 1;
            }
        }
    }
    utf8.boundary()?;
    dot_check(&path[seg..w])?;
    Ok(w)
}

/// Writes `b` at the output position, skipping the store when it is the byte already there
/// (`r`: where `b` was read, or `usize::MAX` when it was decoded).
#[inline]
fn put(path: &mut [u8], w: &mut usize, r: usize, b: u8) {
    if *w != r {
        path[*w] = b;
    }
    *w += 1;
}

/// The byte a `%XX` escape at `at` stands for.
#[inline]
fn escape(path: &[u8], at: usize) -> Result<u8, PathError> {
    match (path.get(at), path.get(at + 1), path.get(at + 2)) {
        (Some(b'%'), Some(&h), Some(&l)) => match (hex(h), hex(l)) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(PathError::BadEscape),
        },
        _ => Err(PathError::BadEscape),
    }
}

#[inline]
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[inline]
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Refuses an output that ends in `%25` and two hex digits, whether they were sent as
/// `%252e` or decoded into place (`%25%32%65`, `%252%65`): every `%` in the output starts a
/// three-byte escape, so a `%` five bytes back is the escape just before the last two bytes.
#[inline]
fn double_check(out: &[u8]) -> Result<(), PathError> {
    match out {
        [.., b'%', b'2', b'5', h, l] if hex(*h).is_some() && hex(*l).is_some() => {
            Err(PathError::DoubleEncoding)
        }
        _ => Ok(()),
    }
}

#[inline]
fn dot_check(segment: &[u8]) -> Result<(), PathError> {
    match segment {
        b"." | b".." => Err(PathError::DotSegment),
        _ => Ok(()),
    }
}

/// Well-formedness of the UTF-8 that percent-encoded bytes ≥ 0x80 spell (Unicode table 3-7):
/// no overlong forms, no surrogates, nothing above U+10FFFF, no cut sequences.
#[derive(Default)]
struct Utf8 {
    /// Continuation bytes still expected.
    need: u8,
    /// The range the next continuation byte must fall in.
    lo: u8,
    hi: u8,
}

impl Utf8 {
    fn byte(&mut self, v: u8) -> Result<(), PathError> {
        if self.need > 0 {
            if !(self.lo..=self.hi).contains(&v) {
                return Err(PathError::BadUtf8);
            }
            self.need -= 1;
            (self.lo, self.hi) = (0x80, 0xBF);
            return Ok(());
        }
        (self.need, self.lo, self.hi) = match v {
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return Err(PathError::BadUtf8),
        };
        Ok(())
    }

    /// Anything but a continuation byte: a sequence must not be open.
    #[inline]
    fn boundary(&self) -> Result<(), PathError> {
        if self.need > 0 {
            Err(PathError::BadUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PathError::*;
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        let mut b = p.as_bytes().to_vec();
        let n = normalise(&mut b)?;
        Ok(String::from_utf8(b[..n].to_vec()).unwrap())
    }

    /// Every spelling of `.` and `..` a decoder could produce.
    const DOTS: &[&str] = &[
        ".", "..", "%2e", "%2E", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2e", "%2E%2E", "%2e%2E",
        "%2E%2e",
    ];

    #[test]
    fn normal_paths_are_unchanged() {
        for p in [
            "/",
            "/v1/models",
            "/v1/models/",
            "/v1/chat/completions",
            "/a-b_c~d.e",
            "/a/...",
            "/a/.b/b./..c/c..",
            "/x%3A%20y",
            "/a%20b/%20",
            "/files/%E2%82%AC",
            "/%F0%9F%98%80",
            "/a%25zz",
            "/%3B",
            "/:!$&'()*+,=@",
            "/a?b",
            "/a#b",
        ] {
            assert_eq!(norm(p).as_deref(), Ok(p), "{p}");
        }
    }

    #[test]
    fn rewrites() {
        let cases = [
            ("/%41%62%7e%2D%5f%30", "/Ab~-_0"),
            ("/v1/%6d%6F%64%65%6c%73", "/v1/models"),
            ("/a%2eb", "/a.b"),
            ("/%2e%2e%2e", "/..."),
            ("/a/%2e.%2e", "/a/..."),
            ("/x%3a%2cy", "/x%3A%2Cy"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/%3b", "/%3B"),
            ("//", "/"),
            ("//v1///models", "/v1/models"),
            ("/v1/models//", "/v1/models/"),
            ("/a//%62//", "/a/b/"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    /// Each refused shape, with a prefix and suffix around it at the start, middle and end of
    /// the path, in lower- and upper-case hex.
    #[test]
    fn refused_variants_in_every_position() {
        let mut cases: Vec<(String, PathError)> = Vec::new();
        for d in DOTS {
            cases.push((d.to_string(), DotSegment));
        }
        for (s, e) in [
            ("%2f", EncodedSlash),
            ("a%2fb", EncodedSlash),
            ("..%2f", EncodedSlash),
            ("%2e%2e%2f", EncodedSlash),
            ("%5c", Backslash),
            ("..%5c", Backslash),
            ("\\", Backslash),
            ("..\\", Backslash),
            ("a\\b", Backslash),
            ("..;", PathParameter),
            ("a;b", PathParameter),
            (";", PathParameter),
            ("models;jsessionid=1", PathParameter),
            ("%00", ControlByte),
            ("a%00b", ControlByte),
            ("%0d%0a", ControlByte),
            ("%09", ControlByte),
            ("%1f", ControlByte),
            ("%7f", ControlByte),
            ("a b", ControlByte),
            ("a\tb", ControlByte),
            ("a\x7fb", ControlByte),
            ("%252e", DoubleEncoding),
            ("%252e%252e", DoubleEncoding),
            ("%252f", DoubleEncoding),
            ("%2541", DoubleEncoding),
            ("%25ab", DoubleEncoding),
            ("%25%32%65", DoubleEncoding),
            ("%252%65", DoubleEncoding),
            ("%25%32e", DoubleEncoding),
            ("%25%41%42", DoubleEncoding),
            ("x%25%3235", DoubleEncoding),
            ("%c0%ae", BadUtf8),
            ("%c0%ae%c0%ae", BadUtf8),
            ("%c1%9c", BadUtf8),
            ("%e0%80%ae", BadUtf8),
            ("%e0%80%af", BadUtf8),
            ("%f0%80%80%ae", BadUtf8),
            ("%ed%a0%80", BadUtf8),
            ("%f4%90%80%80", BadUtf8),
            ("%f5%80%80%80", BadUtf8),
            ("%ff", BadUtf8),
            ("%80", BadUtf8),
            ("%e2%82", BadUtf8),
            ("%e2%82a", BadUtf8),
            ("%e2%82%41", BadUtf8),
            ("%c3", BadUtf8),
        ] {
            cases.push((s.to_string(), e));
        }
        // Upper-case hex spells the same refusals.
        let upper: Vec<_> = cases
            .iter()
            .filter(|(s, _)| s.contains('%'))
            .map(|(s, e)| (upper_hex(s), *e))
            .collect();
        cases.extend(upper);
        for (s, e) in &cases {
            for p in [
                format!("/{s}"),
                format!("/{s}/v1/models"),
                format!("/open/{s}/v1/models"),
                format!("/open/{s}"),
                format!("/open/{s}/"),
                format!("//open//{s}//x"),
            ] {
                assert_eq!(norm(&p), Err(*e), "{p:?}");
            }
        }
    }

    /// Escapes that are not two hex digits, wherever they are.
    #[test]
    fn invalid_escapes() {
        for s in [
            "%", "%2", "%g1", "%1g", "%%41", "%-1", "%+1", "% 1", "%2%2e",
        ] {
            for p in [format!("/{s}"), format!("/a/{s}/b"), format!("/a{s}")] {
                assert_eq!(norm(&p), Err(BadEscape), "{p:?}");
            }
        }
    }

    /// Found by the fuzzer: `%35` decoded to `5` right after `%252` made `%2525`, which a
    /// second pass refused as double encoding (the first pass must refuse it too).
    #[test]
    fn fuzz_regression_decoded_digit_completes_a_double_encoding() {
        let input = "/////A/`]/////252%252Q%252%352Q%252%252%52%252Q%252%252Q%252%25%25";
        assert_eq!(norm(input), Err(DoubleEncoding));
        for p in ["/%252%35", "/%25%32%35", "/a/%25%35%35/b"] {
            assert_eq!(norm(p), Err(DoubleEncoding), "{p}");
        }
        // `%25` followed by anything but two hex digits is a literal percent sign.
        for p in ["/%25zz", "/%25%2F", "/%25-", "/%252", "/%252-"] {
            let r = norm(p);
            assert!(r.is_ok() || r == Err(EncodedSlash), "{p}: {r:?}");
        }
    }

    #[test]
    fn non_origin_forms_are_refused() {
        for p in [
            "",
            "*",
            "http://h/v1/models",
            "HTTP://h/",
            "h:443",
            "v1/models",
            "%2f",
        ] {
            assert_eq!(norm(p), Err(NotAbsolute), "{p:?}");
        }
    }

    #[test]
    fn raw_non_ascii_is_refused() {
        for p in [&b"/\xc3\xa9"[..], b"/a/\x80", b"/\xff/x", b"/\xc0\xae"] {
            assert_eq!(normalise(&mut p.to_vec()), Err(NonAscii), "{p:?}");
        }
    }

    /// A second pass changes nothing, and what an upstream that decodes once sees has the same
    /// segments, none of them a dot segment.
    #[test]
    fn output_is_a_fixed_point_and_decodes_to_the_same_segments() {
        let inputs = [
            "/%41//b/%2e%2e%2e/%3a",
            "/v1/%6d%6F%64%65%6c%73//",
            "/a%2eb/%7E%5F",
            "/files/%e2%82%ac/%25zz",
        ];
        for p in inputs {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).as_deref(), Ok(once.as_str()), "{p}");
            let decoded = decode(once.as_bytes());
            let a = once.split('/').count();
            let b = decoded.split(|&b| b == b'/').count();
            assert_eq!(a, b, "{p}");
            assert!(decoded
                .split(|&b| b == b'/')
                .all(|s| s != b"." && s != b".."));
        }
    }

    fn upper_hex(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '%' {
                out.extend(chars.by_ref().take(2).map(|c| c.to_ascii_uppercase()));
            }
        }
        out
    }

    fn decode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%' {
                out.push(hex(s[i + 1]).unwrap() << 4 | hex(s[i + 2]).unwrap());
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        out
    }
}
