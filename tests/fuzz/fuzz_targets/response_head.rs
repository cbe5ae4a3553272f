//! Upstream response head: `relay::parse_head`, and `write_client_head` on what it accepts.
//!
//! Input: one byte picking the client side (HEAD or not, HTTP/1.0 or 1.1, keep-alive or not)
//! and the relay (body rewritten by an adapter or not, status mapped or not), then the bytes the
//! upstream sent. Checks:
//! - an accepted head lies inside the buffer, ends with its blank line, has a status in
//!   100..=599 (RFC 9110 §15), and its framing and reusability agree with its own fields
//!   (never both Content-Length and chunked; a length every Content-Length element states;
//!   204/304 have no body; close-delimited and HTTP/1.0 responses are not reusable);
//! - fed byte by byte, every prefix before the first verdict is `Ok(None)`, and the first
//!   verdict is the whole buffer's (the same head, or an error for both);
//! - for a final (non-1xx) head, the client-facing head written from it parses again as one
//!   complete head with the same status, carries no hop-by-hop field of the upstream, and
//!   frames the body as the relay plan says (its length, chunked, or close-delimited; a
//!   rewritten body never keeps the upstream's length, and one with a `Content-Encoding` other
//!   than `identity` is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::http::parse::{parse_content_length, tokens, trim};
use shardgate::proxy::relay::{
    parse_head, write_client_head, RelayCtx, ResponseHead, UpFraming, MAX_RESPONSE_HEADERS,
};

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

/// The status line's version digit and the header fields of an accepted head (httparse has
/// already checked the syntax, so splitting lines is enough).
fn fields(head: &[u8]) -> (u8, Vec<(&[u8], &[u8])>) {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let status_line = lines.next().expect("status line");
    let minor = status_line[7] - b'0';
    let fields = lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let colon = l
                .iter()
                .position(|&b| b == b':')
                .expect("field without colon");
            (&l[..colon], trim(&l[colon + 1..]))
        })
        .collect();
    (minor, fields)
}

fn named<'a>(fields: &[(&'a [u8], &'a [u8])], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| *v)
        .collect()
}

fn check_head(buf: &[u8], h: &ResponseHead) {
    assert!(h.head_len <= buf.len());
    let head = &buf[..h.head_len];
    assert!(head.ends_with(b"\n"));
    assert!((100..=599).contains(&h.status));
    let (minor, fields) = fields(head);
    let lengths: Vec<u64> = named(&fields, "content-length")
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|p| parse_content_length(trim(p)).expect("accepted a bad Content-Length"))
        .collect();
    let te = named(&fields, "transfer-encoding");
    assert!(
        lengths.is_empty() || te.is_empty(),
        "both Content-Length and Transfer-Encoding"
    );
    let close = named(&fields, "connection")
        .iter()
        .flat_map(|v| tokens(v))
        .any(|t| t.eq_ignore_ascii_case(b"close"));
    match h.framing {
        UpFraming::None => assert!(h.status == 204 || h.status == 304),
        UpFraming::Length(n) => assert!(!lengths.is_empty() && lengths.iter().all(|&l| l == n)),
        UpFraming::Chunked => {
            let codings: Vec<&[u8]> = te.iter().flat_map(|v| tokens(v)).collect();
            assert!(codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked"));
        }
        UpFraming::Close => assert!(lengths.is_empty() && te.is_empty()),
    }
    if h.status != 204 && h.status != 304 {
        assert_ne!(h.framing, UpFraming::None);
    }
    assert_eq!(
        h.keep_alive,
        minor == 1 && !close && h.framing != UpFraming::Close
    );
}

fn same(a: &ResponseHead, b: &ResponseHead) -> bool {
    (a.status, a.head_len, a.framing, a.keep_alive)
        == (b.status, b.head_len, b.framing, b.keep_alive)
}

/// The length a held, rewritten body is given when the check completes its head.
const HELD_BODY: u64 = 7;

fn check_client_head(buf: &[u8], h: &ResponseHead, sel: u8) {
    // As the proxy sets them: an adapter rewrites (and may map the status of) only a
    // response that has a body.
    let is_head = sel & 1 != 0;
    let has_body = !is_head && h.framing != UpFraming::None;
    let rewrite = sel & 8 != 0 && has_body;
    let ctx = RelayCtx {
        extra: b"x-extra: 1\r\n",
        is_head,
        client_minor: (sel >> 1) & 1,
        keep_client: sel & 4 != 0,
        request_id: "fuzz",
        rewrite,
        status: if rewrite && sel & 16 != 0 { 502 } else { h.status },
    };
    let mut out = Vec::new();
    let (_, up_fields) = fields(&buf[..h.head_len]);
    let encoded = named(&up_fields, "content-encoding")
        .iter()
        .any(|v| !v.eq_ignore_ascii_case(b"identity"));
    let written = write_client_head(&mut out, buf, h, &ctx);
    if ctx.rewrite && encoded {
        assert!(written.is_err(), "an encoded body accepted for rewriting");
        return;
    }
    let plan = written.expect("accepted head not written");
    if let Some(at) = plan.length_at {
        // A rewritten body held whole: its length goes into the head once it is complete.
        assert!(ctx.rewrite && !plan.chunk_to_client, "only a held rewrite waits for its length");
        assert_eq!(at + 2, out.len(), "the length goes before the head's closing CRLF");
        assert_eq!(plan.keep_client, ctx.keep_client);
        shardgate::http::write::insert_content_length(&mut out, at, HELD_BODY);
    }
    let again = parse_head(&out)
        .expect("client head does not parse")
        .expect("client head incomplete");
    assert_eq!(
        again.head_len,
        out.len(),
        "client head has bytes after its end"
    );
    assert_eq!(again.status, ctx.status);
    let (_, fields) = fields(&out);
    let listed: Vec<&[u8]> = named(&up_fields, "connection")
        .iter()
        .flat_map(|v| tokens(v))
        .collect();
    // Fields the gateway writes itself are checked below by value.
    let ours = [
        "connection",
        "transfer-encoding",
        "content-length",
        "x-request-id",
        "x-extra",
    ];
    for (n, _) in &up_fields {
        let dropped = HOP_BY_HOP
            .iter()
            .any(|d| n.eq_ignore_ascii_case(d.as_bytes()))
            || listed.iter().any(|l| l.eq_ignore_ascii_case(n));
        let own = ours.iter().any(|o| n.eq_ignore_ascii_case(o.as_bytes()));
        if dropped && !own {
            assert!(
                named(&fields, &String::from_utf8_lossy(n)).is_empty(),
                "hop-by-hop field {:?} relayed",
                String::from_utf8_lossy(n)
            );
        }
    }
    for v in named(&fields, "connection") {
        assert!(
            v == b"close" || v == b"keep-alive",
            "relayed Connection: {v:?}"
        );
    }
    assert_eq!(named(&fields, "x-request-id"), [b"fuzz"]);
    let te = named(&fields, "transfer-encoding");
    let cl = named(&fields, "content-length");
    assert_eq!(te.len(), usize::from(plan.chunk_to_client));
    assert!(!plan.keep_client || ctx.keep_client);
    if !plan.keep_client {
        assert!(named(&fields, "connection").contains(&&b"close"[..]));
    }
    if ctx.is_head || h.status == 304 {
        return;
    }
    match (plan.up, again.framing) {
        (UpFraming::None, UpFraming::None) => assert!(cl.is_empty() && te.is_empty()),
        (UpFraming::Length(n), UpFraming::Length(m)) if plan.length_at.is_none() => {
            assert!(!ctx.rewrite, "a rewritten body kept the upstream's length");
            assert_eq!((n, cl.len()), (m, 1))
        }
        (_, UpFraming::Length(m)) => {
            assert!(plan.length_at.is_some() && ctx.rewrite, "a length the gateway did not count");
            assert_eq!((m, cl.len()), (HELD_BODY, 1))
        }
        (UpFraming::Length(_), UpFraming::Chunked) => {
            assert!(ctx.rewrite && plan.chunk_to_client && ctx.client_minor == 1)
        }
        (UpFraming::Length(_), UpFraming::Close) => {
            assert!(ctx.rewrite && !plan.chunk_to_client && !plan.keep_client)
        }
        (UpFraming::Chunked | UpFraming::Close, UpFraming::Chunked) => {
            assert!(plan.chunk_to_client && ctx.client_minor == 1)
        }
        (UpFraming::Chunked | UpFraming::Close, UpFraming::Close) => {
            assert!(!plan.chunk_to_client && !plan.keep_client)
        }
        (up, client) => panic!("relayed {up:?} body framed as {client:?} toward the client"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let full = parse_head(buf);
    if let Ok(Some(h)) = &full {
        check_head(buf, h);
        // The gateway adds up to four fields (x-request-id, the route's extra, framing,
        // connection), and the re-parse below allows MAX_RESPONSE_HEADERS.
        let (_, up_fields) = fields(&buf[..h.head_len]);
        if h.status >= 200 && up_fields.len() + 4 <= MAX_RESPONSE_HEADERS {
            check_client_head(buf, h, sel);
        }
    }
    let first = (0..=buf.len())
        .map(|k| (k, parse_head(&buf[..k])))
        .find(|(_, r)| !matches!(r, Ok(None)));
    match (first, &full) {
        (None, Ok(None)) => {}
        (Some((_, Ok(Some(a)))), Ok(Some(b))) => {
            assert!(same(&a, b), "prefix parsed {a:?}, whole {b:?}")
        }
        (Some((_, Err(a))), Err(b)) => assert_eq!(&a, b),
        (first, full) => panic!("first verdict byte by byte {first:?}, whole buffer {full:?}"),
    }
});
