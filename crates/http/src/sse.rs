//! Server-sent events on the wire (the WHATWG event-stream grammar): the line ends an event's
//! lines may have. The gateway's SSE readers (the usage scanner, the provider adapters) all
//! split lines here, so a lone `\r`, which the grammar allows, ends a line for every one of
//! them alike.

/// The lines of an event, without their line ends (`\r\n`, `\n` or `\r`).
pub fn lines(ev: &[u8]) -> Lines<'_> {
    Lines { rest: Some(ev) }
}

/// See [`lines`]. A final line end does not start another line.
pub struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let Some(at) = memchr::memchr2(b'\n', b'\r', rest) else {
            self.rest = None;
            return (!rest.is_empty()).then_some(rest);
        };
        let mut next = at + 1;
        if rest[at] == b'\r' && rest.get(next) == Some(&b'\n') {
            next += 1;
        }
        self.rest = Some(&rest[next..]);
        Some(&rest[..at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_in_any_line_end() {
        let got: Vec<&[u8]> = lines(b"a\r\nb\nc\rd\r\r\ne").collect();
        assert_eq!(got, [&b"a"[..], b"b", b"c", b"d", b"", b"e"]);
        assert_eq!(lines(b"a\n").collect::<Vec<_>>(), [&b"a"[..]]);
        assert_eq!(lines(b"\r").collect::<Vec<_>>(), [&b""[..]]);
        assert_eq!(lines(b"").count(), 0);
    }
}
