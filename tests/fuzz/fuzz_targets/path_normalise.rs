//! Feeds arbitrary bytes to `http::path::normalise` and checks its contract:
//!
//! - it never panics and never grows the path;
//! - it agrees with a plain, allocating reference implementation of the same rules (accepted
//!   or refused alike, and the same normal form);
//! - a normal form starts with `/`, is visible ASCII, has no empty or dot segment (but a
//!   trailing `/`), no `\`, `;`, `%2F`, `%5C` or control escape, and only upper-case escapes
//!   of bytes that are not unreserved;
//! - it is a fixed point (a second pass accepts it unchanged);
//! - an upstream that percent-decodes it once, or twice, sees the same segments and no dot
//!   segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::http::path::normalise;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let got = normalise(&mut buf).map(|n| buf[..n].to_vec());
    let want = reference(data);
    assert_eq!(
        got.as_ref().ok(),
        want.as_ref(),
        "differs from the reference"
    );
    let Ok(out) = got else { return };
    assert!(out.len() <= data.len());
    check_normal_form(&out);
    let mut again = out.clone();
    let n = normalise(&mut again).expect("a normal form is accepted");
    assert_eq!(&again[..n], &out[..], "not idempotent");
    let once = decode(&out);
    let twice = decode(&once);
    for d in [&once, &twice] {
        assert_eq!(
            segments(d).count(),
            segments(&out).count(),
            "decoding adds a segment"
        );
        assert!(
            segments(d).all(|s| s != b"." && s != b".."),
            "decodes to a dot segment"
        );
    }
});

fn segments(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p[1..].split(|&b| b == b'/')
}

fn check_normal_form(out: &[u8]) {
    assert_eq!(out.first(), Some(&b'/'));
    assert!(out.iter().all(|b| b.is_ascii_graphic()));
    assert!(!out.contains(&b'\\') && !out.contains(&b';'));
    let segs: Vec<&[u8]> = segments(out).collect();
    for (i, s) in segs.iter().enumerate() {
        assert!(!s.is_empty() || i + 1 == segs.len(), "empty segment");
        assert!(*s != b"." && *s != b"..", "dot segment");
    }
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'%' {
            let (h, l) = (out[i + 1], out[i + 2]);
            assert!(
                is_upper_hex(h) && is_upper_hex(l),
                "escape not upper-case hex"
            );
            let v = hex(h).unwrap() << 4 | hex(l).unwrap();
            assert!(!is_unreserved(v), "escaped unreserved byte");
            assert!(
                !matches!(v, b'/' | b'\\' | 0..=0x1F | 0x7F),
                "escaped {v:#x}"
            );
            i += 3;
        } else {
            i += 1;
        }
    }
}

/// The rules, written the obvious way: collapse slashes, then check and rewrite each segment.
fn reference(p: &[u8]) -> Option<Vec<u8>> {
    if p.first() != Some(&b'/') {
        return None;
    }
    if p.iter()
        .any(|&b| matches!(b, b'\\' | b';' | 0..=0x20 | 0x7F..))
    {
        return None;
    }
    let mut out = vec![b'/'];
    let segs: Vec<&[u8]> = p[1..].split(|&b| b == b'/').collect();
    for (i, seg) in segs.iter().enumerate() {
        if seg.is_empty() {
            continue;
        }
        let mut decoded = Vec::new();
        let mut high_run = Vec::new();
        let mut j = 0;
        while j < seg.len() {
            if seg[j] != b'%' {
                if !high_run.is_empty() {
                    std::str::from_utf8(&high_run).ok()?;
                    high_run.clear();
                }
                out.push(seg[j]);
                decoded.push(seg[j]);
                j += 1;
                continue;
            }
            let v = hex(*seg.get(j + 1)?)? << 4 | hex(*seg.get(j + 2)?)?;
            if v < 0x80 && !high_run.is_empty() {
                std::str::from_utf8(&high_run).ok()?;
                high_run.clear();
            }
            match v {
                b'/' | b'\\' | 0..=0x1F | 0x7F => return None,
                0x80.. => high_run.push(v),
                _ => {}
            }
            if is_unreserved(v) {
                out.push(v);
            } else {
                out.extend_from_slice(format!("%{v:02X}").as_bytes());
            }
            decoded.push(v);
            j += 3;
        }
        if !high_run.is_empty() {
            std::str::from_utf8(&high_run).ok()?;
        }
        if decoded == b"." || decoded == b".." {
            return None;
        }
        let more = segs[i + 1..].iter().any(|s| !s.is_empty());
        if more || p.ends_with(b"/") {
            out.push(b'/');
        }
    }
    // Double encoding: `%25` and two hex digits in the result, however they got there.
    let double = out
        .windows(5)
        .any(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some());
    (!double).then_some(out)
}

/// Percent-decodes what decodes, leaving invalid escapes as they are.
fn decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let esc = (s[i] == b'%')
            .then(|| Some(hex(*s.get(i + 1)?)? << 4 | hex(*s.get(i + 2)?)?))
            .flatten();
        match esc {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}
