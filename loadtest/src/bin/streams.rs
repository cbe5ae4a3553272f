//! Streams at scale (issue #13): N concurrent SSE streams through the gateway, each read as
//! it arrives. Reports whether every stream arrived whole, the client-side gaps between
//! consecutive events (largest, p50/p99/p99.9, and how far the largest is over the nominal
//! gap), and the gateway's RSS (sampled every 50 ms while the streams run, when its pid is
//! given). `loadtest/streams.sh` starts the mock and the gateway (JWT + split + quota) and
//! runs it. The response head is parsed with the tree's codec; events are counted on the raw
//! body bytes as they arrive (chunk framing never contains `data: `).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

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
    /// A file of bearer tokens, one a line; stream i uses line i mod their count.
    #[arg(long)]
    tokens: Option<std::path::PathBuf>,
    /// The request path.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// The gateway's pid, for its RSS.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Give up on a stream after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

/// What one stream saw.
struct Seen {
    ok: bool,
    events: usize,
    /// Gaps between consecutive events, µs.
    gaps: Vec<u64>,
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
    let start = Arc::new(Barrier::new(args.streams + 1));
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
    let mut handles = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let auth = tokens
            .get(i % tokens.len().max(1))
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: bench\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            args.path,
            body.len()
        );
        let (start, addr) = (start.clone(), args.addr);
        let timeout = Duration::from_secs(args.timeout_s);
        handles.push(
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let stream = TcpStream::connect(addr);
                    start.wait();
                    match stream {
                        Ok(s) => one_stream(s, req.as_bytes(), timeout),
                        Err(_) => Seen {
                            ok: false,
                            events: 0,
                            gaps: vec![],
                        },
                    }
                })?,
        );
    }
    start.wait();
    let began = Instant::now();
    let seen: Vec<Seen> = handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or(Seen {
                ok: false,
                events: 0,
                gaps: vec![],
            })
        })
        .collect();
    let took = began.elapsed();
    running.store(false, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let mut gaps = Histogram::<u64>::new(3)?;
    for g in seen.iter().flat_map(|s| s.gaps.iter()) {
        gaps.record(*g)?;
    }
    let whole = seen
        .iter()
        .filter(|s| s.ok && s.events >= args.events)
        .count();
    let nominal = args.gap_ms * 1000;
    println!(
        "streams: {} ({} whole with >= {} events) in {:.2} s",
        args.streams,
        whole,
        args.events,
        took.as_secs_f64()
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

/// Sends `req` and reads the response as it arrives, timing each event.
fn one_stream(mut s: TcpStream, req: &[u8], timeout: Duration) -> Seen {
    let mut seen = Seen {
        ok: false,
        events: 0,
        gaps: Vec::with_capacity(128),
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(req).is_err() {
        return seen;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let mut body_at: Option<usize> = None;
    let mut scanned = 0;
    let mut last: Option<Instant> = None;
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return seen,
            Ok(n) => n,
        };
        let now = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        if body_at.is_none() {
            match shardgate_http::response::parse_response_head(&buf) {
                Ok(Some(h)) if h.status == 200 => {
                    body_at = Some(h.head_len);
                    scanned = h.head_len;
                }
                Ok(Some(_)) | Err(_) => return seen,
                Ok(None) => continue,
            }
        }
        while let Some(i) = memfind(&buf[scanned..], b"data: ") {
            let at = scanned + i;
            scanned = at + 6;
            if buf[scanned..].starts_with(b"[DONE]") {
                seen.ok = true;
                return seen;
            }
            seen.events += 1;
            if let Some(prev) = last {
                seen.gaps.push(now.duration_since(prev).as_micros() as u64);
            }
            last = Some(now);
        }
        // Keep a tail that may hold the start of a split `data: `.
        scanned = scanned.max(buf.len().saturating_sub(5));
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
