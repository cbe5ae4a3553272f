//! Message bodies: the incremental `Transfer-Encoding: chunked` decoder (RFC 9112 §7.1), and
//! [`BodyDecoder`], which frames a whole body whatever delimits it.
//!
//! Fed whatever bytes have arrived, it returns how many framing bytes it consumed and at most
//! one range of payload data per call, so a relay can forward each piece the moment it
//! arrives. It is strict where leniency enables request smuggling: chunk lines must end in
//! CRLF, sizes are hex without sign or whitespace and may not overflow, and chunk data must be
//! followed by CRLF. Chunk extensions are skipped; trailer fields are read and dropped.

use crate::parse::{BodyFraming, ParseError};
use crate::response::ResponseFraming;

/// Longest chunk-size line (size + extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
pub const MAX_TRAILER_BYTES: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data,
    DataEnd,
    Trailer,
    Done,
}

/// Result of one [`ChunkedDecoder::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed (framing and data).
    pub consumed: usize,
    /// Payload bytes found, as a range of the input.
    pub data: Option<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    remaining: u64,
    total: u64,
    max_total: u64,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    /// A decoder that rejects bodies whose decoded size exceeds `max_total` (→ 413).
    pub fn new(max_total: u64) -> Self {
        Self {
            state: State::Size,
            remaining: 0,
            total: 0,
            max_total,
            trailer_bytes: 0,
        }
    }

    /// The terminating chunk and trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`. A step that consumes nothing and yields no data needs more input.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ParseError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => {
                    return Ok(Step {
                        consumed: pos,
                        data: None,
                    })
                }
                State::Size => {
                    let Some(line_len) = find_crlf(rest, MAX_CHUNK_LINE)? else {
                        return Ok(Step {
                            consumed: pos,
                            data: None,
                        });
                    };
                    let size = parse_chunk_size(&rest[..line_len])?;
                    pos += line_len + 2;
                    self.total = self.total.checked_add(size).ok_or(ParseError::BadChunk)?;
                    if self.total > self.max_total {
                        return Err(ParseError::BodyTooLarge);
                    }
                    if size == 0 {
                        self.state = State::Trailer;
                    } else {
                        self.remaining = size;
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    if rest.is_empty() {
                        return Ok(Step {
                            consumed: pos,
                            data: None,
                        });
                    }
                    let n = rest
                        .len()
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataEnd;
                    }
                    return Ok(Step {
                        consumed: pos + n,
                        data: Some((pos, pos + n)),
                    });
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(Step {
                            consumed: pos,
                            data: None,
                        });
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ParseError::BadChunk);
                    }
                    pos += 2;
                    self.state = State::Size;
                }
                State::Trailer => {
                    let budget = MAX_TRAILER_BYTES.saturating_sub(self.trailer_bytes);
                    let Some(line_len) = find_crlf(rest, budget)? else {
                        return Ok(Step {
                            consumed: pos,
                            data: None,
                        });
                    };
                    pos += line_len + 2;
                    self.trailer_bytes += line_len + 2;
                    if line_len == 0 {
                        self.state = State::Done;
                    } else if rest[..line_len].contains(&b'\r') || !rest[..line_len].contains(&b':')
                    {
                        return Err(ParseError::BadChunk);
                    }
                }
            }
        }
    }
}

/// A body's decoder whatever delimits it: a `Content-Length` count, the chunked coding
/// ([`ChunkedDecoder`]), or (a response) everything until the connection closes. Fed the bytes
/// after the head, it says where the body ends; bytes past the end belong to the next message.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    kind: Kind,
    max_total: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose(u64),
}

impl BodyDecoder {
    /// The body of a request whose head said `framing`; longer than `max_total` → 413.
    pub fn request(framing: BodyFraming, max_total: u64) -> Self {
        let kind = match framing {
            BodyFraming::None => Kind::Length(0),
            BodyFraming::Length(n) => Kind::Length(n),
            BodyFraming::Chunked => Kind::Chunked(ChunkedDecoder::new(max_total)),
        };
        Self { kind, max_total }
    }

    /// The body of a response framed as `framing` (see
    /// [`ResponseHead::body_framing`](crate::response::ResponseHead::body_framing)); longer
    /// than `max_total` is [`ParseError::BodyTooLarge`].
    pub fn response(framing: ResponseFraming, max_total: u64) -> Self {
        let kind = match framing {
            ResponseFraming::None => Kind::Length(0),
            ResponseFraming::Length(n) => Kind::Length(n),
            ResponseFraming::Chunked => Kind::Chunked(ChunkedDecoder::new(max_total)),
            ResponseFraming::Close => Kind::UntilClose(0),
        };
        Self { kind, max_total }
    }

    /// The whole body has been read.
    pub fn is_done(&self) -> bool {
        match &self.kind {
            Kind::Length(left) => *left == 0,
            Kind::Chunked(d) => d.is_done(),
            Kind::UntilClose(_) => false,
        }
    }

    /// The connection closing ends this body (a close-delimited response): at EOF the body
    /// is complete rather than cut short.
    pub fn ends_at_close(&self) -> bool {
        matches!(self.kind, Kind::UntilClose(_))
    }

    /// Decodes from `input` like [`ChunkedDecoder::step`]: at most one range of payload per
    /// call; a step that consumes nothing and yields no data needs more input.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ParseError> {
        let n = match &mut self.kind {
            Kind::Chunked(d) => return d.step(input),
            Kind::Length(left) if *left > self.max_total => return Err(ParseError::BodyTooLarge),
            Kind::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                n
            }
            Kind::UntilClose(total) => {
                *total += input.len() as u64;
                if *total > self.max_total {
                    return Err(ParseError::BodyTooLarge);
                }
                input.len()
            }
        };
        Ok(Step {
            consumed: n,
            data: (n > 0).then_some((0, n)),
        })
    }

    /// Decodes as much of `input` as it can, handing each piece of payload to `data`; returns
    /// the bytes consumed (the rest is more body to come, or the next message once done).
    pub fn decode_with(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ParseError> {
        let mut at = 0;
        while !self.is_done() {
            let step = self.step(&input[at..])?;
            if let Some((a, b)) = step.data {
                data(&input[at + a..at + b]);
            }
            at += step.consumed;
            if step.consumed == 0 {
                break;
            }
        }
        Ok(at)
    }

    /// [`Self::decode_with`], appending the payload to `out`.
    pub fn decode_into(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ParseError> {
        self.decode_with(input, |d| out.extend_from_slice(d))
    }
}

/// Length of the line before CRLF; `None` if no complete line yet. A bare LF, or no line end
/// within `max`, is an error. Without an LF yet, `max` bytes and the CR of the line end may
/// be buffered: how the bytes arrived must not decide whether a line is too long.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, ParseError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' && i - 1 <= max => Ok(Some(i - 1)),
        Some(_) => Err(ParseError::BadChunk),
        None if buf.len() > max + 1 => Err(ParseError::BadChunk),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`; extension content is skipped but may not hold a CR.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ParseError::BadChunk);
    }
    let rest = &line[digits..];
    let ext_ok = rest.is_empty()
        || (rest.iter().find(|b| !matches!(b, b' ' | b'\t')) == Some(&b';')
            && !rest.contains(&b'\r'));
    if !ext_ok {
        return Err(ParseError::BadChunk);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| ParseError::BadChunk)?;
    u64::from_str_radix(text, 16).map_err(|_| ParseError::BadChunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes, as a socket might deliver it.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ParseError> {
        let mut d = ChunkedDecoder::new(1 << 20);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut fed = 0;
        while !d.is_done() {
            let step = d.step(&buf)?;
            if let Some((a, b)) = step.data {
                out.extend_from_slice(&buf[a..b]);
            }
            buf.drain(..step.consumed);
            if step.consumed == 0 && step.data.is_none() {
                if fed == input.len() {
                    break;
                }
                let end = (fed + piece).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
        assert!(d.is_done(), "incomplete body");
        Ok((out, buf.len()))
    }

    #[test]
    fn decodes_at_every_split() {
        let body =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (out, left) = decode(body, piece).unwrap();
            assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
            assert!(left <= 4);
        }
    }

    #[test]
    fn rejects_malformed_chunks() {
        let cases: &[&[u8]] = &[
            b"x\r\n",
            b"-1\r\n",
            b"+1\r\na\r\n",
            b" 1\r\na\r\n0\r\n\r\n",
            b"1\na\r\n0\r\n\r\n",
            b"1\r\nab\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"ffffffffffffffff\r\n",
            b"1;a\rb\r\nx\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ];
        for c in cases {
            assert!(decode(c, 64).is_err(), "{:?}", String::from_utf8_lossy(c));
        }
    }

    /// The longest accepted chunk-size line, trailer line and trailer section, and one byte
    /// more, fed as two pieces split around each line end: a piece that ends on a line's CR
    /// must wait for the LF, not count the CR as line content.
    #[test]
    fn longest_lines_decode_at_every_split() {
        let line = |len: usize| format!("1;{}", "x".repeat(len - 2));
        let field = |len: usize| format!("X-T: {}", "y".repeat(len - 5));
        // (chunk-size line, trailer line, accepted); the long one is the line tested.
        let cases = [
            (line(MAX_CHUNK_LINE), None, true),
            (line(MAX_CHUNK_LINE + 1), None, false),
            ("1".into(), Some(field(MAX_TRAILER_BYTES)), true),
            ("1".into(), Some(field(MAX_TRAILER_BYTES + 1)), false),
            // Its CRLF fills the trailer budget: the final empty line has none left.
            ("1".into(), Some(field(MAX_TRAILER_BYTES - 2)), true),
        ];
        for (size_line, trailer, ok) in &cases {
            let body = match trailer {
                Some(t) => format!("{size_line}\r\na\r\n0\r\n{t}\r\n\r\n"),
                None => format!("{size_line}\r\na\r\n0\r\n\r\n"),
            };
            let long = trailer.as_ref().unwrap_or(size_line);
            let cr = body.find(long.as_str()).unwrap() + long.len();
            let n = body.len();
            for cut in [1, cr - 1, cr, cr + 1, cr + 2, n - 2, n - 1, n] {
                let got = split_decode(body.as_bytes(), cut);
                assert_eq!(got.is_ok(), *ok, "cut {cut} of {n} bytes: {got:?}");
                if *ok {
                    assert_eq!(got.unwrap(), b"a");
                }
            }
        }
    }

    /// Decodes `input` delivered as two pieces split at `cut`.
    fn split_decode(input: &[u8], cut: usize) -> Result<Vec<u8>, ParseError> {
        let mut d = ChunkedDecoder::new(1 << 20);
        let mut out = Vec::new();
        let mut buf = input[..cut].to_vec();
        let mut rest = &input[cut..];
        while !d.is_done() {
            let step = d.step(&buf)?;
            if let Some((a, b)) = step.data {
                out.extend_from_slice(&buf[a..b]);
            }
            buf.drain(..step.consumed);
            if step.consumed == 0 && step.data.is_none() {
                assert!(!rest.is_empty(), "incomplete body");
                buf.extend_from_slice(rest);
                rest = &[];
            }
        }
        Ok(out)
    }

    #[test]
    fn enforces_body_limit() {
        let mut d = ChunkedDecoder::new(3);
        assert_eq!(d.step(b"4\r\nabcd\r\n"), Err(ParseError::BodyTooLarge));
    }

    /// Every framing, fed in pieces of every size: the payload, and where the body ends.
    #[test]
    fn body_decoder_frames_every_kind_at_every_split() {
        let chunked = &b"4\r\nWiki\r\n5;x\r\npedia\r\n0\r\nT: 1\r\n\r\nNEXT"[..];
        let cases = [
            (
                BodyDecoder::request(BodyFraming::None, 100),
                &b"NEXT"[..],
                &b""[..],
            ),
            (
                BodyDecoder::request(BodyFraming::Length(9), 100),
                b"WikipediaNEXT",
                b"Wikipedia",
            ),
            (
                BodyDecoder::request(BodyFraming::Chunked, 100),
                chunked,
                b"Wikipedia",
            ),
            (
                BodyDecoder::response(ResponseFraming::None, 100),
                b"NEXT",
                b"",
            ),
            (
                BodyDecoder::response(ResponseFraming::Length(9), 100),
                b"WikipediaNEXT",
                b"Wikipedia",
            ),
            (
                BodyDecoder::response(ResponseFraming::Chunked, 100),
                chunked,
                b"Wikipedia",
            ),
        ];
        for (decoder, input, want) in cases {
            for piece in 1..=input.len() {
                let mut d = decoder.clone();
                let (mut buf, mut body, mut fed) = (Vec::new(), Vec::new(), 0);
                while !d.is_done() {
                    let used = d.decode_into(&buf, &mut body).unwrap();
                    buf.drain(..used);
                    let end = (fed + piece).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
                buf.extend_from_slice(&input[fed..]);
                assert_eq!(
                    (&body[..], &buf[..]),
                    (want, &b"NEXT"[..]),
                    "{decoder:?} {piece}"
                );
                assert!(!d.ends_at_close());
            }
        }
    }

    #[test]
    fn body_decoder_until_close_and_limits() {
        let mut d = BodyDecoder::response(ResponseFraming::Close, 6);
        let mut body = Vec::new();
        assert_eq!(d.decode_into(b"abc", &mut body), Ok(3));
        assert_eq!(d.decode_into(b"def", &mut body), Ok(3));
        assert!(!d.is_done() && d.ends_at_close());
        assert_eq!(body, b"abcdef");
        assert_eq!(
            d.decode_into(b"g", &mut body),
            Err(ParseError::BodyTooLarge)
        );
        let mut d = BodyDecoder::response(ResponseFraming::Length(7), 6);
        assert_eq!(
            d.decode_into(b"abc", &mut body),
            Err(ParseError::BodyTooLarge)
        );
        let mut d = BodyDecoder::request(BodyFraming::Chunked, 3);
        assert_eq!(
            d.decode_into(b"4\r\nabcd\r\n", &mut body),
            Err(ParseError::BodyTooLarge)
        );
    }
}
