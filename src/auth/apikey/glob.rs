//! Model allow-list patterns: `*` matches any run of characters (also none), `?` exactly one
//! character, everything else itself, case-sensitively. `gpt-4o*` allows `gpt-4o` and
//! `gpt-4o-mini`; `*` allows every model.
//!
//! # Performance
//!
//! No allocation; linear in the text for patterns with one `*`, at worst pattern × text (both
//! are bounded: patterns by [`super::record::MAX_PATTERN_BYTES`], models by the body limit).

/// Whether `text` matches `pattern` (module docs). Works on characters, so `?` is one
/// character of a multi-byte model name, not one byte.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: &[u8] = pattern.as_bytes();
    let t: &[u8] = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen, and the text position it is currently assumed to stop at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => {
                pi += 1;
                ti += char_len(t[ti]);
                continue;
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        // Mismatch: let the last `*` swallow one more character, or fail.
        match star {
            Some((sp, st)) => {
                let next = st + char_len(t[st]);
                star = Some((sp, next));
                pi = sp + 1;
                ti = next;
            }
            None => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// Bytes in the UTF-8 character starting with `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns_by_shape() {
        let cases: &[(&str, &str, bool)] = &[
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("gpt-4o", "GPT-4o", false),
            ("gpt-4o", "gpt-4", false),
            ("gpt-4o", "", false),
            ("gpt-4o*", "gpt-4o", true),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4", false),
            ("*", "", true),
            ("*", "anything at all", true),
            ("**", "x", true),
            ("*-mini", "gpt-4o-mini", true),
            ("*-mini", "gpt-4o-mini-2", false),
            ("llama-*-instruct", "llama-3-70b-instruct", true),
            ("llama-*-instruct", "llama--instruct", true),
            ("llama-*-instruct", "llama-instruct", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("a*b*c", "acb", false),
            ("a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("?", "x", true),
            ("?", "", false),
            ("?", "xy", false),
            ("m-?", "m-é", true),
            ("m-??", "m-é", false),
            ("é*", "ék", true),
            ("*é", "aé", true),
            ("", "", true),
            ("", "x", false),
            ("x", "", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(matches(p, t), *want, "{p:?} vs {t:?}");
        }
    }
}
