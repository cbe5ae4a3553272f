//! Tracing's per-request cost on a worker, against the gateway's own head parse (the
//! baseline: work every request does anyway), measured in the same run:
//!
//! - `parse_head`: parsing a chat request head (baseline);
//! - `unsampled`: the trace decision, ids, the upstream `traceparent` and the (skipped) span
//!   record of a request not sampled, with a caller's `traceparent` and without;
//! - `sampled`: the same for a sampled request, with its server and client spans copied into
//!   the worker's batch (batches recycled as the exporter does).
//!
//! `cargo bench --bench trace -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::http::parse::{parse_request, RequestHead};
use shardgate::http::Limits;
use shardgate::trace::{self, AttemptSpan, ServerFacts, SpanBatch, WorkerTracer};

const HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw.example\r\nuser-agent: bench/1.0\r\naccept: application/json\r\ncontent-type: application/json\r\nauthorization: Bearer abc.def.ghi\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ncontent-length: 120\r\n\r\n";

fn one(t: &mut WorkerTracer, head: &RequestHead, buf: &[u8], up_out: &mut Vec<u8>, caller: bool) {
    let parent = if caller {
        trace::parent_of(head, buf)
    } else {
        None
    };
    let mut ctx = t.begin(parent);
    ctx.method = trace::method_name(&head.method);
    ctx.event(
        "shardgate.quota",
        Some(("shardgate.quota.outcome", "admitted")),
    );
    up_out.clear();
    if let Some(p) = trace::write_upstream(up_out, &ctx, head, buf) {
        let mut span = AttemptSpan::begin(t, &p, 1, up_out);
        span.event("first_byte");
        span.finish(t, "m@1.0.0", 200, None);
    }
    let facts = ServerFacts {
        start: Instant::now(),
        status: 200,
        error: None,
        route: Some("/v1/chat/completions"),
        path: b"/v1/chat/completions",
        request_model: "m",
        deployment: Some("m@1.0.0"),
        subject: "alice",
        client: None,
        usage: Some((3, 4)),
    };
    t.server_span(&ctx, &facts);
    black_box(&up_out);
}

/// The head, parsed; `sampled` sets the caller's flag.
fn parsed(sampled: bool) -> (RequestHead, Vec<u8>) {
    let mut buf = HEAD.to_vec();
    if !sampled {
        let at = buf.windows(4).position(|w| w == b"-01\r").unwrap();
        buf[at + 2] = b'0';
    }
    let mut head = RequestHead::default();
    parse_request(&mut buf, &Limits::default(), &mut head)
        .unwrap()
        .unwrap();
    (head, buf)
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("trace");
    g.bench_function("parse_head (baseline)", |b| {
        let mut scratch = HEAD.to_vec();
        let mut h = RequestHead::default();
        b.iter(|| {
            scratch.copy_from_slice(HEAD);
            black_box(parse_request(&mut scratch, &limits, &mut h).unwrap());
        })
    });
    let (tx, rx) = crossbeam_channel::bounded::<SpanBatch>(64);
    let (spare_tx, spare) = crossbeam_channel::bounded(64);
    let mut up_out = Vec::with_capacity(4096);
    for (name, ratio, caller, flag) in [
        ("unsampled, new trace", 0.0, false, true),
        ("unsampled, caller's trace", 0.0, true, false),
        ("sampled (server + client span)", 1.0, true, true),
    ] {
        let mut t = WorkerTracer::new(tx.clone(), spare.clone(), ratio, 1, Default::default());
        let (head, buf) = parsed(flag);
        g.bench_function(name, |b| {
            b.iter(|| {
                one(&mut t, &head, &buf, &mut up_out, caller);
                // The exporter's part: emptied batches come back.
                while let Ok(mut batch) = rx.try_recv() {
                    batch.clear();
                    let _ = spare_tx.try_send(batch);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
