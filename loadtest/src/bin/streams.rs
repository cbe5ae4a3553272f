//! Streams at scale (issue #13): N concurrent SSE streams through the gateway, each read as
//! it arrives. Reports whether every stream arrived whole, the client-side gaps between
//! consecutive events (largest, p50/p99/p99.9, and how far the largest is over the nominal
//! gap), and the gateway's RSS (sampled every 50 ms while the streams run, when its pid is
//! given). `loadtest/streams.sh` starts the mock and the gateway (JWT + split + quota) and
//! runs it.
//!
//! All streams run as tasks of one monoio thread (a thread per stream spent the shared core on
//! context switches and made gaps of its own), reading with the loadtest's exchange (the
//! tree's response codec; an event ends at a blank line). Every connection is open before
//! the first request goes; stream `i` then starts `i * stagger / N` after the first, so by
//! default the streams' events are spread over the gap as independent clients' would be
//! (`--stagger-ms 0`: every stream at once, each gap a burst of N events). Connections stay
//! open until every stream has ended (`--close-each`: each closes as its stream ends; on a
//! shared core the client's and the mock's teardown of one stream then delays the others').

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use loadtest::exchange::Conn;

#[derive(Parser)]
struct Args {
    /// The gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Concurrent streams.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Content events each stream should carry (the mock's `--stream-chunks`).
    #[arg(long, default_value_t = 64)]
    events: usize,
    /// The mock's gap between events, ms (the nominal gap).
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
    /// Stream starts spread over this many ms (default: the gap); 0 starts all at once.
    #[arg(long)]
    stagger_ms: Option<u64>,
    /// Close each connection as its stream ends (default: all stay open, as a client's
    /// keep-alive pool would keep them, and close together once every stream has ended).
    #[arg(long)]
    close_each: bool,
    /// A file of bearer tokens, one a line; stream i uses line i mod their count.
    #[arg(long)]
    tokens: Option<std::path::PathBuf>,
    /// The request path.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// The gateway's pid, for its RSS.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Also print the gaps by their position in the stream (p50, p99, max of the k-th gap of
    /// every stream): where in a stream's life the large gaps fall.
    #[arg(long)]
    by_position: bool,
    /// Also print when the late events arrived: per 10 ms since the first request, how many
    /// events came more than 3 ms after their nominal gap (one stall shows as one cluster,
    /// spread over many stream positions when the starts are spread).
    #[arg(long)]
    late_timeline: bool,
    /// Give up on a stream after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

/// What one stream saw.
struct Seen {
    /// Status 200 and the body complete with at least the events asked for.
    whole: bool,
    /// Gaps between consecutive reads that completed events, µs.
    gaps: Vec<u64>,
    /// The connection, when it stays open until every stream has ended.
    conn: Option<Conn>,
    /// When the first event arrived (the others follow by `gaps`).
    first_event: Option<Instant>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tokens: Vec<String> = match &args.tokens {
        Some(p) => std::fs::read_to_string(p)?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => vec![],
    };
    let body = r#"{"model":"chat","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Stream to the benchmark."}]}"#;
    let requests: Vec<Vec<u8>> = (0..args.streams)
        .map(|i| {
            let auth = tokens
                .get(i % tokens.len().max(1))
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            format!(
                "POST {} HTTP/1.1\r\nHost: bench\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                args.path,
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let running = Arc::new(AtomicBool::new(true));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = args.gateway_pid.map(|pid| {
        let (running, peak) = (running.clone(), peak_rss.clone());
        thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                if let Some(kb) = rss_kb(pid) {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    });
    let rss_before = args.gateway_pid.and_then(rss_kb);
    let stagger = Duration::from_millis(args.stagger_ms.unwrap_or(args.gap_ms));
    let (seen, took) = run(&args, requests, stagger)?;
    running.store(false, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let mut gaps = Histogram::<u64>::new(3)?;
    for g in seen.iter().flat_map(|s| s.gaps.iter()) {
        gaps.record(*g)?;
    }
    let whole = seen.iter().filter(|s| s.whole).count();
    if args.by_position {
        let longest = seen.iter().map(|s| s.gaps.len()).max().unwrap_or(0);
        for k in 0..longest {
            let mut h = Histogram::<u64>::new(3)?;
            for g in seen.iter().filter_map(|s| s.gaps.get(k)) {
                h.record(*g)?;
            }
            println!(
                "gap {k}: {} streams, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                h.len(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max())
            );
        }
    }
    let nominal = args.gap_ms * 1000;
    println!(
        "streams: {} ({} whole with >= {} events) in {:.2} s, starts spread over {} ms",
        args.streams,
        whole,
        args.events,
        took.as_secs_f64(),
        stagger.as_millis()
    );
    println!(
        "inter-event gap (nominal {} ms): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        args.gap_ms,
        ms(gaps.value_at_quantile(0.5)),
        ms(gaps.value_at_quantile(0.99)),
        ms(gaps.value_at_quantile(0.999)),
        ms(gaps.max()),
    );
    println!(
        "added over nominal: p99 {:.2} ms, max {:.2} ms (no-stall target: max <= gap + 5 ms; added p99 <= 1 ms)",
        ms(gaps.value_at_quantile(0.99).saturating_sub(nominal)),
        ms(gaps.max().saturating_sub(nominal)),
    );
    if let Some(before) = rss_before {
        println!(
            "gateway RSS: {} MiB before, {} MiB peak while streaming",
            before / 1024,
            peak_rss.load(Ordering::Relaxed) / 1024
        );
    }
    if whole < args.streams {
        anyhow::bail!("{} streams incomplete", args.streams - whole);
    }
    Ok(())
}

/// Opens every connection, then runs the streams, stream `i` starting `i * stagger / N`
/// after the first. Returns what each saw and how long the streaming took.
fn run(
    args: &Args,
    requests: Vec<Vec<u8>>,
    stagger: Duration,
) -> anyhow::Result<(Vec<Seen>, Duration)> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(4096)
        .enable_timer()
        .build()?;
    let (addr, events, n, hold) = (args.addr, args.events, requests.len(), !args.close_each);
    let (late_timeline, nominal_us) = (args.late_timeline, args.gap_ms * 1000);
    let timeout = Duration::from_secs(args.timeout_s);
    rt.block_on(async move {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(Conn::connect(addr).await.ok());
        }
        let began = Instant::now();
        let seen = Rc::new(std::cell::RefCell::new(Vec::with_capacity(n)));
        let tasks: Vec<_> = conns
            .into_iter()
            .zip(requests)
            .enumerate()
            .map(|(i, (conn, req))| {
                let at = began + stagger.mul_f64(i as f64 / n.max(1) as f64);
                let seen = seen.clone();
                monoio::spawn(async move {
                    let s = match conn {
                        Some(c) => one_stream(c, req, at, events, timeout, hold).await,
                        None => Seen {
                            whole: false,
                            gaps: vec![],
                            conn: None,
                            first_event: None,
                        },
                    };
                    seen.borrow_mut().push(s);
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let took = began.elapsed();
        let mut seen = std::mem::take(&mut *seen.borrow_mut());
        if late_timeline {
            print_late_timeline(&seen, began, nominal_us);
        }
        for s in &mut seen {
            s.conn = None;
        }
        Ok((seen, took))
    })
}

/// Per 10 ms since `began`: how many events arrived more than 3 ms after their nominal gap.
fn print_late_timeline(seen: &[Seen], began: Instant, nominal_us: u64) {
    let mut late = std::collections::BTreeMap::<u64, u32>::new();
    for s in seen {
        let Some(first) = s.first_event else { continue };
        let mut at = first.duration_since(began).as_micros() as u64;
        for &g in &s.gaps {
            at += g;
            if g > nominal_us + 3_000 {
                *late.entry(at / 10_000).or_default() += 1;
            }
        }
    }
    for (bucket, n) in late {
        println!("late events at {} ms: {n}", bucket * 10);
    }
}

/// Sends `req` at `at` and reads the response as it arrives, timing each event; `hold`: hand
/// the connection back rather than close it.
async fn one_stream(
    mut conn: Conn,
    req: Vec<u8>,
    at: Instant,
    events: usize,
    timeout: Duration,
    hold: bool,
) -> Seen {
    let mut gaps = Vec::with_capacity(events + 8);
    monoio::time::sleep_until(at.into()).await;
    let mut first_event = None;
    let whole = match monoio::time::timeout(timeout, conn.exchange(req, false, &mut gaps)).await {
        Ok((Ok(o), _)) => {
            first_event = o.first_event;
            // Whole: the body ended as framed, with the content events asked for and the three
            // around them in an OpenAI stream: the opening (role) chunk, the closing
            // (`finish_reason`) chunk and `[DONE]`.
            o.status == 200 && o.events as usize >= events + 3
        }
        _ => false,
    };
    let conn = hold.then_some(conn);
    Seen {
        whole,
        gaps,
        conn,
        first_event,
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The resident set of `pid`, KiB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
