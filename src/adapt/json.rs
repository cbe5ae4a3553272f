//! A JSON reader that never allocates: it validates a value's grammar and hands out the raw
//! bytes of object members and array items, so a translator can copy a provider's strings,
//! numbers and nested objects verbatim instead of decoding and re-encoding them.
//!
//! # Contract
//!
//! Every function takes the bytes of one JSON value (leading and trailing whitespace allowed
//! where noted) and either yields raw sub-slices of it or [`Malformed`]. Raw values are
//! always grammatical JSON once [`check`] (or the iterator that produced them) accepted them,
//! so they can be written out as they are. Strings are compared in their escaped form: a key
//! or a `type` that a provider escaped needlessly (`"t\u0065xt"`) reads as a different name
//! (and so is ignored), never as a wrong value. Nesting deeper than [`MAX_DEPTH`] is
//! malformed, so a hostile document cannot exhaust the stack.
//!
//! # Performance
//!
//! One pass per read (plus the UTF-8 check of [`check`]). Nothing is allocated.

/// The bytes are not the JSON that was expected (grammar, or the kind of a value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: u32 = 128;

/// The kind of a raw value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

/// The kind of the raw value `v` (which [`check`] accepted).
pub fn kind(v: &[u8]) -> Kind {
    match v.first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        _ => Kind::Number,
    }
}

/// Index of the first non-whitespace byte at or after `i`.
#[inline]
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `b` without leading and trailing JSON whitespace.
pub fn trim(b: &[u8]) -> &[u8] {
    let start = skip_ws(b, 0);
    let mut end = b.len();
    while end > start && matches!(b[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    &b[start..end]
}

/// Checks that `b` is exactly one JSON value (whitespace around it allowed) in valid UTF-8,
/// and returns the value without the whitespace.
pub fn check(b: &[u8]) -> Result<&[u8], Malformed> {
    std::str::from_utf8(b).map_err(|_| Malformed)?;
    let start = skip_ws(b, 0);
    let end = skip_value(b, start, 0)?;
    if skip_ws(b, end) != b.len() {
        return Err(Malformed);
    }
    Ok(&b[start..end])
}

/// The end of the value starting exactly at `i`.
pub fn skip_value(b: &[u8], i: usize, depth: u32) -> Result<usize, Malformed> {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{') => container_end(b, i, depth, b'}'),
        Some(b'[') => container_end(b, i, depth, b']'),
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        Some(b'-' | b'0'..=b'9') => number_end(b, i),
        _ => Err(Malformed),
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, Malformed> {
    match b.get(i..i + word.len()) {
        Some(w) if w == word => Ok(i + word.len()),
        _ => Err(Malformed),
    }
}

/// The index after the closing quote of the string whose opening quote is at `i`.
fn string_end(b: &[u8], i: usize) -> Result<usize, Malformed> {
    let mut at = i + 1;
    loop {
        let rest = b.get(at..).ok_or(Malformed)?;
        let off = stop_at(rest).ok_or(Malformed)?;
        // A raw control character is not allowed inside a JSON string.
        if rest[off] < 0x20 {
            return Err(Malformed);
        }
        at += off;
        if b[at] == b'"' {
            return Ok(at + 1);
        }
        match b.get(at + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => at += 2,
            Some(b'u') => {
                let hex = b.get(at + 2..at + 6).ok_or(Malformed)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Malformed);
                }
                at += 6;
            }
            _ => return Err(Malformed),
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` (little-endian) that stops a plain run of a string: `"`,
/// `\`, or a control character. Bytes above the lowest flagged one may be flagged wrongly
/// (a borrow), the lowest is always right.
#[inline]
fn stops(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS)
}

/// The index of the first `"`, `\` or control character of `s`: eight bytes a step (strings
/// are mostly plain text, and one pass checks all three).
fn stop_at(s: &[u8]) -> Option<usize> {
    let mut words = s.chunks_exact(8);
    let mut base = 0;
    for w in &mut words {
        let flags = stops(u64::from_le_bytes(w.try_into().expect("eight bytes")));
        if flags != 0 {
            return Some(base + (flags.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| base + p)
}

/// The end of the number starting at `i` (`-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?`).
fn number_end(b: &[u8], i: usize) -> Result<usize, Malformed> {
    let digits = |at: usize| {
        b.get(at..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let mut at = i + usize::from(b[i] == b'-');
    match (b.get(at), digits(at)) {
        (Some(b'0'), _) => at += 1,
        (_, 0) => return Err(Malformed),
        (_, n) => at += n,
    }
    if b.get(at) == Some(&b'.') {
        let n = digits(at + 1);
        if n == 0 {
            return Err(Malformed);
        }
        at += 1 + n;
    }
    if matches!(b.get(at), Some(b'e' | b'E')) {
        at += 1 + usize::from(matches!(b.get(at + 1), Some(b'+' | b'-')));
        let n = digits(at);
        if n == 0 {
            return Err(Malformed);
        }
        at += n;
    }
    Ok(at)
}

fn container_end(b: &[u8], i: usize, depth: u32, close: u8) -> Result<usize, Malformed> {
    if depth >= MAX_DEPTH {
        return Err(Malformed);
    }
    let mut at = skip_ws(b, i + 1);
    if b.get(at) == Some(&close) {
        return Ok(at + 1);
    }
    loop {
        if close == b'}' {
            at = member_key(b, at)?.1;
        }
        match after_value(b, skip_value(b, at, depth + 1)?, close)? {
            Next::More(next) => at = next,
            Next::Closed(end) => return Ok(end),
        }
    }
}

/// The key of the member whose opening quote is at `b[at]` (as written between its quotes)
/// and the index of its value (past the colon and whitespace).
fn member_key(b: &[u8], at: usize) -> Result<(&[u8], usize), Malformed> {
    if b.get(at) != Some(&b'"') {
        return Err(Malformed);
    }
    let key_end = string_end(b, at)?;
    let colon = skip_ws(b, key_end);
    if b.get(colon) != Some(&b':') {
        return Err(Malformed);
    }
    Ok((&b[at + 1..key_end - 1], skip_ws(b, colon + 1)))
}

/// What follows a value that ends at `end` inside a container closed by `close`.
enum Next {
    /// A comma: the next member or item starts here.
    More(usize),
    /// The closing byte: the container ends before this index.
    Closed(usize),
}

fn after_value(b: &[u8], end: usize, close: u8) -> Result<Next, Malformed> {
    let at = skip_ws(b, end);
    match b.get(at) {
        Some(b',') => Ok(Next::More(skip_ws(b, at + 1))),
        Some(&c) if c == close => Ok(Next::Closed(at + 1)),
        _ => Err(Malformed),
    }
}

/// The members of an object, in order: `(key, value)`, the key as written between its quotes
/// (escapes not decoded), the value raw. The iterator validates as it goes; a grammar error
/// ends it with one `Err`.
pub struct Members<'a> {
    b: &'a [u8],
    at: usize,
    done: bool,
}

/// The members of the raw object `obj` (see [`Members`]); `Err` when `obj` is not an object.
pub fn members(obj: &[u8]) -> Result<Members<'_>, Malformed> {
    let obj = trim(obj);
    if obj.first() != Some(&b'{') {
        return Err(Malformed);
    }
    let at = skip_ws(obj, 1);
    let done = obj.get(at) == Some(&b'}');
    if done && at + 1 != obj.len() {
        return Err(Malformed);
    }
    Ok(Members { b: obj, at, done })
}

impl<'a> Iterator for Members<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

impl<'a> Members<'a> {
    fn step(&mut self) -> Result<(&'a [u8], &'a [u8]), Malformed> {
        let b = self.b;
        let (key, at) = member_key(b, self.at)?;
        let end = skip_value(b, at, 1)?;
        match after_value(b, end, b'}')? {
            Next::More(next) => self.at = next,
            Next::Closed(after) if after == b.len() => self.done = true,
            Next::Closed(_) => return Err(Malformed),
        }
        Ok((key, &b[at..end]))
    }
}

/// An object read member by member in place, for a caller that reads some values itself
/// (one walk instead of a skip and a second walk): [`Object::key`], then exactly one of
/// [`Object::value`] or [`Object::read_value`], until `key` says `None`; then
/// [`Object::end`]. Validates the grammar between the values as [`Members`] does; a value
/// read by the caller is validated by the caller.
pub struct Object<'a> {
    b: &'a [u8],
    at: usize,
    depth: u32,
    state: ObjectState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ObjectState {
    Open,
    Value,
    AfterValue,
    Done,
}

/// The object whose `{` is at `b[at]`, nested `depth` deep (the top level is 0).
pub fn object_at(b: &[u8], at: usize, depth: u32) -> Result<Object<'_>, Malformed> {
    if depth >= MAX_DEPTH || b.get(at) != Some(&b'{') {
        return Err(Malformed);
    }
    Ok(Object {
        b,
        at,
        depth,
        state: ObjectState::Open,
    })
}

impl<'a> Object<'a> {
    /// The next member's key (as written between its quotes), or `None` after the last.
    pub fn key(&mut self) -> Result<Option<&'a [u8]>, Malformed> {
        let b = self.b;
        match self.state {
            ObjectState::Done => return Ok(None),
            ObjectState::Value => return Err(Malformed),
            ObjectState::Open => {
                self.at = skip_ws(b, self.at + 1);
                if b.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    self.state = ObjectState::Done;
                    return Ok(None);
                }
            }
            ObjectState::AfterValue => match after_value(b, self.at, b'}')? {
                Next::More(next) => self.at = next,
                Next::Closed(end) => {
                    self.at = end;
                    self.state = ObjectState::Done;
                    return Ok(None);
                }
            },
        }
        let (key, value) = member_key(b, self.at)?;
        self.at = value;
        self.state = ObjectState::Value;
        Ok(Some(key))
    }

    /// The raw value of the member whose key was just read.
    pub fn value(&mut self) -> Result<&'a [u8], Malformed> {
        self.read_value(skip_value)
    }

    /// Reads the value of the member whose key was just read with `read(bytes, start,
    /// depth)`, which returns the index after the value and must validate what it reads (as
    /// [`skip_value`] does); returns the value's raw bytes.
    pub fn read_value(
        &mut self,
        read: impl FnOnce(&'a [u8], usize, u32) -> Result<usize, Malformed>,
    ) -> Result<&'a [u8], Malformed> {
        if self.state != ObjectState::Value {
            return Err(Malformed);
        }
        let start = self.at;
        let end = read(self.b, start, self.depth + 1)?;
        if end <= start || end > self.b.len() {
            return Err(Malformed);
        }
        self.at = end;
        self.state = ObjectState::AfterValue;
        Ok(&self.b[start..end])
    }

    /// The index after the closing `}`, once [`Self::key`] said `None`.
    pub fn end(&self) -> Result<usize, Malformed> {
        (self.state == ObjectState::Done)
            .then_some(self.at)
            .ok_or(Malformed)
    }
}

/// Walks the array whose `[` is at `b[at]` (nested `depth` deep), handing each item's start
/// to `item(bytes, start, depth)`, which returns the index after the item and validates it
/// (as [`skip_value`] does); returns the index after the `]`.
pub fn each_item<'a>(
    b: &'a [u8],
    at: usize,
    depth: u32,
    mut item: impl FnMut(&'a [u8], usize, u32) -> Result<usize, Malformed>,
) -> Result<usize, Malformed> {
    if depth >= MAX_DEPTH || b.get(at) != Some(&b'[') {
        return Err(Malformed);
    }
    let mut at = skip_ws(b, at + 1);
    if b.get(at) == Some(&b']') {
        return Ok(at + 1);
    }
    loop {
        let end = item(b, at, depth + 1)?;
        if end <= at || end > b.len() {
            return Err(Malformed);
        }
        match after_value(b, end, b']')? {
            Next::More(next) => at = next,
            Next::Closed(end) => return Ok(end),
        }
    }
}

/// The items of an array, raw, in order; validates like [`Members`].
pub struct Items<'a> {
    b: &'a [u8],
    at: usize,
    done: bool,
}

/// The items of the raw array `arr`; `Err` when `arr` is not an array.
pub fn items(arr: &[u8]) -> Result<Items<'_>, Malformed> {
    let arr = trim(arr);
    if arr.first() != Some(&b'[') {
        return Err(Malformed);
    }
    let at = skip_ws(arr, 1);
    let done = arr.get(at) == Some(&b']');
    if done && at + 1 != arr.len() {
        return Err(Malformed);
    }
    Ok(Items { b: arr, at, done })
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<&'a [u8], Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let b = self.b;
        let r = skip_value(b, self.at, 1).and_then(|end| {
            let item = &b[self.at..end];
            match after_value(b, end, b']')? {
                Next::More(next) => self.at = next,
                Next::Closed(after) if after == b.len() => self.done = true,
                Next::Closed(_) => return Err(Malformed),
            }
            Ok(item)
        });
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// The value of the first member of `obj` named `key` (as written, see the module docs).
pub fn get<'a>(obj: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, Malformed> {
    for m in members(obj)? {
        let (k, v) = m?;
        if k == key {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The contents of the raw string `v` between its quotes (escapes kept), if it is a string.
pub fn str_inner(v: &[u8]) -> Option<&[u8]> {
    (v.len() >= 2 && v[0] == b'"').then(|| &v[1..v.len() - 1])
}

/// `v` if it is a string value.
pub fn string(v: Option<&[u8]>) -> Option<&[u8]> {
    v.filter(|v| kind(v) == Kind::String)
}

/// Whether the raw value `v` is the string `s` (written without escapes).
pub fn is_str(v: &[u8], s: &str) -> bool {
    str_inner(v) == Some(s.as_bytes())
}

/// The raw value `v` as an unsigned integer, if it is one that fits.
pub fn as_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Writes `n` in decimal (what `write!` does, without the formatting machinery).
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    crate::http::write::json_escape_into(out, s);
    out.push(b'"');
}

/// Writes the raw (valid) JSON value `raw` as a JSON string whose content is that JSON text,
/// as OpenAI carries tool arguments (`{"a":1}` becomes `"{\"a\":1}"`). Raw JSON holds no
/// control characters outside whitespace, so only quotes, backslashes and whitespace need
/// escaping.
pub fn write_as_string(out: &mut Vec<u8>, raw: &[u8]) {
    out.push(b'"');
    let mut plain = 0;
    for (i, &c) in raw.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&raw[plain..i]);
        out.extend_from_slice(esc);
        plain = i + 1;
    }
    out.extend_from_slice(&raw[plain..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_json_and_refuses_the_rest() {
        for good in [
            r#"{}"#,
            r#" { "a" : [1, -2.5e+3, true, false, null, "x\"\\\u00e9\n"], "b": {} } "#,
            r#"[]"#,
            r#""s""#,
            "0",
            "-0.1E9",
        ] {
            assert!(check(good.as_bytes()).is_ok(), "{good}");
        }
        for bad in [
            "",
            "{",
            r#"{"a"}"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"{"a":1}x"#,
            r#""\x""#,
            r#""\u12g4""#,
            "\"a\nb\"",
            "01",
            "1.",
            "-",
            "tru",
            "nul",
            r#"{a:1}"#,
            r#"[1 2]"#,
        ] {
            assert_eq!(check(bad.as_bytes()), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        assert_eq!(check(b"\"\x80\""), Err(Malformed));
        assert_eq!(check(b"{\"a\":\"\xc3\"}"), Err(Malformed));
        assert!(check("\"é\"".as_bytes()).is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH as usize + 1) + &"]".repeat(MAX_DEPTH as usize + 1);
        assert_eq!(check(deep.as_bytes()), Err(Malformed));
        let ok = "[".repeat(MAX_DEPTH as usize) + &"]".repeat(MAX_DEPTH as usize);
        assert!(check(ok.as_bytes()).is_ok());
    }

    #[test]
    fn members_and_items_are_raw() {
        let obj = br#"{"a": {"x": [1, 2]}, "b\"c" :"s", "n": 12}"#;
        let got: Vec<_> = members(obj).unwrap().map(Result::unwrap).collect();
        assert_eq!(
            got,
            [
                (&b"a"[..], &br#"{"x": [1, 2]}"#[..]),
                (br#"b\"c"#, br#""s""#),
                (b"n", b"12")
            ]
        );
        assert_eq!(get(obj, b"n").unwrap(), Some(&b"12"[..]));
        assert_eq!(as_u64(b"12"), Some(12));
        assert_eq!(as_u64(b"-1"), None);
        let arr = br#"[ {"a":1} , "b" ]"#;
        let got: Vec<_> = items(arr).unwrap().map(Result::unwrap).collect();
        assert_eq!(got, [&br#"{"a":1}"#[..], br#""b""#]);
        assert!(members(b"{}").unwrap().next().is_none());
        assert!(items(b"[ ]").unwrap().next().is_none());
        assert!(members(b"[]").is_err());
        assert!(members(br#"{"a":1} x"#).unwrap().any(|m| m.is_err()));
        assert!(items(br#"[1,"#).unwrap().any(|m| m.is_err()));
    }

    /// The in-place object reader and the item walker accept and refuse what `skip_value`
    /// does, and hand out the same members and items as the iterators.
    #[test]
    fn object_reader_agrees_with_the_iterators() {
        fn walk(
            b: &[u8],
            at: usize,
            depth: u32,
            seen: &mut Vec<Vec<u8>>,
        ) -> Result<usize, Malformed> {
            match b.get(at) {
                Some(b'{') => {
                    let mut o = object_at(b, at, depth)?;
                    while let Some(k) = o.key()? {
                        seen.push(k.to_vec());
                        let v = o.read_value(|b, at, d| walk(b, at, d, seen))?;
                        seen.push(v.to_vec());
                    }
                    o.end()
                }
                Some(b'[') => each_item(b, at, depth, |b, at, d| walk(b, at, d, seen)),
                _ => skip_value(b, at, depth),
            }
        }
        let docs = [
            r#"{}"#,
            r#"[]"#,
            r#" { "a" : [1, {"x": -2.5e+3}, true, false, null, "x\"\\\u00e9\n"], "b": {}, "c":[[]] } "#,
            r#"{"a":1,"a":2}"#,
            r#"[{"k":"v"}, [1, 2], "s"]"#,
            r#"{"a"}"#,
            r#"{"a":1,}"#,
            r#"{"a":1 "b":2}"#,
            r#"[1,]"#,
            r#"[1 2]"#,
            r#"{a:1}"#,
            r#"{"a":[1,{"b":}]}"#,
            r#"{"a":01}"#,
        ];
        for doc in docs {
            let b = trim(doc.as_bytes());
            for cut in 0..=b.len() {
                let b = &b[..cut];
                let mut seen = Vec::new();
                let ours = walk(b, 0, 0, &mut seen);
                assert_eq!(
                    ours.ok(),
                    skip_value(b, 0, 0).ok(),
                    "{:?}",
                    String::from_utf8_lossy(b)
                );
                if ours.is_ok() && b.first() == Some(&b'{') {
                    let mut o = object_at(b, 0, 0).unwrap();
                    let mut ours = Vec::new();
                    while let Some(k) = o.key().unwrap() {
                        ours.push((k, o.value().unwrap()));
                    }
                    assert_eq!(o.end(), Ok(b.len()));
                    let theirs: Vec<_> = members(b).unwrap().map(Result::unwrap).collect();
                    assert_eq!(ours, theirs, "{doc}");
                }
            }
        }
        let deep = "[".repeat(MAX_DEPTH as usize + 1) + &"]".repeat(MAX_DEPTH as usize + 1);
        assert_eq!(walk(deep.as_bytes(), 0, 0, &mut Vec::new()), Err(Malformed));
        let deep =
            "{\"a\":".repeat(MAX_DEPTH as usize + 1) + "1" + &"}".repeat(MAX_DEPTH as usize + 1);
        assert_eq!(walk(deep.as_bytes(), 0, 0, &mut Vec::new()), Err(Malformed));
        // A value must be read after each key, and only then.
        let mut o = object_at(br#"{"a":1}"#, 0, 0).unwrap();
        assert_eq!(o.value(), Err(Malformed));
        let mut o = object_at(br#"{"a":1}"#, 0, 0).unwrap();
        assert_eq!(o.key(), Ok(Some(&b"a"[..])));
        assert_eq!(o.key(), Err(Malformed));
        assert_eq!(o.end(), Err(Malformed));
    }

    /// The word-at-a-time scan finds what a byte loop finds: every stop byte at every position
    /// of strings of every length around a word, after plain ASCII or UTF-8.
    #[test]
    fn the_word_scan_stops_where_a_byte_scan_does() {
        let naive = |s: &[u8]| s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        let fills: [&[u8]; 3] = [b"a", "é".as_bytes(), b"\x7f"];
        let stoppers = [b'"', b'\\', 0x00, 0x1f, b'\n', b'\t'];
        for fill in fills {
            for len in 0..40 {
                let plain: Vec<u8> = fill.iter().copied().cycle().take(len).collect();
                assert_eq!(stop_at(&plain), None, "{plain:?}");
                for at in 0..len {
                    for &stop in &stoppers {
                        for &after in &[b'x', b'"', 0x01] {
                            let mut s = plain.clone();
                            s[at] = stop;
                            if at + 1 < len {
                                s[at + 1] = after;
                            }
                            assert_eq!(stop_at(&s), naive(&s), "{s:?}");
                        }
                    }
                }
            }
        }
        for b in 0..=255u8 {
            let s = [b'a', b'a', b'a', b, b'a', b'a', b'a', b'a', b'a'];
            assert_eq!(stop_at(&s), naive(&s), "{b:#x}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn raw_json_becomes_a_string() {
        let mut out = Vec::new();
        write_as_string(&mut out, b"{\"a\": \"q\\\"x\",\n\t\"b\": 1}");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "{\"a\": \"q\\\"x\",\n\t\"b\": 1}");
    }
}
