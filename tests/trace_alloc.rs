//! Tracing's per-request work allocates nothing: counted with a counting allocator over the
//! calls the data path makes (a worker's tracer on its own thread, as on a worker). Unsampled
//! requests never allocate; sampled ones reuse the batches the exporter hands back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use shardgate::http::parse::{parse_request, RequestHead};
use shardgate::http::Limits;
use shardgate::trace::{self, ServerFacts, SpanBatch, WorkerTracer};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; counting touches a const-initialised
// thread-local `Cell` (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: rojo=1\r\ncontent-length: 2\r\n\r\n";

/// One request's tracing work, as the pipeline, the proxy and the connection loop do it.
fn request(
    t: &mut WorkerTracer,
    head: &RequestHead,
    buf: &[u8],
    up_out: &mut Vec<u8>,
    caller: bool,
) {
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
    up_out.extend_from_slice(b"POST /v1/chat/completions HTTP/1.1\r\n");
    if let Some(p) = trace::write_upstream(up_out, &ctx, head, buf) {
        let mut span = trace::AttemptSpan::begin(t, &p, 1, up_out);
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
}

#[test]
fn tracing_a_request_allocates_nothing_once_warm() {
    let mut buf = HEAD.to_vec();
    let mut head = RequestHead::default();
    parse_request(&mut buf, &Limits::default(), &mut head)
        .unwrap()
        .unwrap();
    let (tx, rx) = crossbeam_channel::bounded::<SpanBatch>(4);
    let (spare_tx, spare) = crossbeam_channel::bounded(4);
    let mut up_out = Vec::with_capacity(4096);

    // Unsampled (ratio 0, no caller): nothing at all, from the first request on.
    let mut t = WorkerTracer::new(tx.clone(), spare.clone(), 0.0, 7, Default::default());
    let before = allocs();
    for _ in 0..10_000 {
        request(&mut t, &head, &buf, &mut up_out, false);
    }
    assert_eq!(allocs() - before, 0, "unsampled requests allocated");
    assert!(rx.try_recv().is_err(), "nothing recorded");

    // Sampled: spans go into the batch; full batches go out and come back emptied (the
    // exporter's part, played here), so a warm tracer allocates nothing per span.
    let mut t = WorkerTracer::new(tx, spare, 1.0, 7, Default::default());
    let exporter = |rx: &crossbeam_channel::Receiver<SpanBatch>| {
        while let Ok(mut b) = rx.try_recv() {
            b.clear();
            spare_tx.try_send(b).unwrap();
        }
    };
    for _ in 0..2_000 {
        request(&mut t, &head, &buf, &mut up_out, true);
        exporter(&rx);
    }
    let before = allocs();
    for _ in 0..10_000 {
        request(&mut t, &head, &buf, &mut up_out, true);
        exporter(&rx);
    }
    assert_eq!(allocs() - before, 0, "sampled requests allocated once warm");
    assert_eq!(t.dropped, 0);
}
