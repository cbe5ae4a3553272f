//! Chunked body decoder: `ChunkedDecoder` fed the same bytes in different pieces.
//!
//! Input: one byte picking `max_total` (small ones reach the 413 path), one seed byte for the
//! random piece sizes, then the body bytes. The body is decoded in one piece, byte by byte,
//! and in random pieces, each driven as the gateway's relays drive it (step over what is
//! buffered, drop what was consumed, read more when a step makes no progress). Every way must
//! give the same payload and the same verdict (done at the same input offset, an error, or
//! still incomplete at the end), the payload never exceeds `max_total`, and every step
//! consumes and points at bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::http::body::ChunkedDecoder;
use shardgate::http::ParseError;

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The last chunk and trailers ended this many bytes into the input.
    Done(usize),
    Incomplete,
    Failed(ParseError),
}

/// Decodes `input` delivered in pieces of the sizes `next_piece` yields (at least 1).
fn decode(
    input: &[u8],
    max_total: u64,
    mut next_piece: impl FnMut() -> usize,
) -> (Vec<u8>, Verdict) {
    let mut dec = ChunkedDecoder::new(max_total);
    let mut payload = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        let step = match dec.step(&buf) {
            Ok(s) => s,
            Err(e) => return (payload, Verdict::Failed(e)),
        };
        assert!(step.consumed <= buf.len(), "consumed past the input");
        if let Some((a, b)) = step.data {
            assert!(
                a < b && b <= step.consumed,
                "data range {a}..{b} of {}",
                step.consumed
            );
            payload.extend_from_slice(&buf[a..b]);
        }
        assert!(payload.len() as u64 <= max_total, "payload over max_total");
        buf.drain(..step.consumed);
        if dec.is_done() {
            return (payload, Verdict::Done(fed - buf.len()));
        }
        if step.consumed == 0 && step.data.is_none() {
            if fed == input.len() {
                return (payload, Verdict::Incomplete);
            }
            let end = (fed + next_piece().max(1)).min(input.len());
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, body @ ..] = data else {
        return;
    };
    let max_total = [0, 1, 7, 64, 1000, u64::MAX][usize::from(*limit) % 6];
    let whole = decode(body, max_total, || body.len());
    let bytewise = decode(body, max_total, || 1);
    assert_eq!(bytewise, whole, "byte-by-byte differs from one piece");
    // xorshift, seeded from the input so a crash reproduces.
    let mut x = u32::from(*seed) | 0x9e37_7900;
    let pieces = decode(body, max_total, || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        [1, 2, 3, 5, 8, 64, 4096][x as usize % 7]
    });
    assert_eq!(pieces, whole, "random pieces differ from one piece");
});
