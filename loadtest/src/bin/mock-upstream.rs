//! `mock-upstream`: the OpenAI-compatible mock backend ([`shardgate_mock`]) as a process.
//! Runs until killed (or for `--run-for` seconds).
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shardgate_mock::{self as mock, MockConfig};

#[derive(Debug, Parser)]
#[command(name = "mock-upstream", about = "OpenAI-compatible mock model backend")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Server threads (SO_REUSEPORT listeners).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Model name reported (and echoed when a request names none).
    #[arg(long, default_value = "mock-gpt")]
    model: String,
    /// Model version reported in x-mock-version and /v1/models.
    #[arg(long, default_value = "1.0.0")]
    model_version: String,
    /// Delay before each response head, ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Extra uniform random delay 0..=N ms.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Content chunks per streamed response.
    #[arg(long, default_value_t = 8)]
    chunks: u32,
    /// Gap between stream events, ms.
    #[arg(long, default_value_t = 10)]
    gap_ms: u64,
    /// Padding bytes added to non-streamed completions.
    #[arg(long, default_value_t = 0)]
    pad_bytes: usize,
    /// completion_tokens when a request has no max_tokens.
    #[arg(long, default_value_t = 16)]
    completion_tokens: u64,
    /// Probability (0..1) of answering fail-status.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Status of drawn failures.
    #[arg(long, default_value_t = 503)]
    fail_status: u16,
    /// Accept and read requests, never answer.
    #[arg(long)]
    hang: bool,
    /// Close the connection after K stream chunks without finishing.
    #[arg(long)]
    close_after_chunks: Option<u32>,
    /// `vllm:num_requests_waiting` reported by GET /metrics.
    #[arg(long, default_value_t = 0)]
    waiting: u64,
    /// Exit after this many seconds (default: run until signalled).
    #[arg(long)]
    run_for: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = MockConfig {
        model: a.model,
        version: a.model_version,
        latency_ms: a.latency_ms,
        jitter_ms: a.jitter_ms,
        stream_chunks: a.chunks,
        stream_gap_ms: a.gap_ms,
        pad_bytes: a.pad_bytes,
        default_completion_tokens: a.completion_tokens,
        fail_rate: a.fail_rate,
        fail_status: a.fail_status,
        hang: a.hang,
        close_after_chunks: a.close_after_chunks,
        waiting: a.waiting,
        ..MockConfig::default()
    };
    let mut handle = mock::spawn(cfg, a.listen, a.threads)?;
    let driver = if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "legacy (epoll)"
    };
    println!(
        "mock-upstream listening on {} ({driver} driver)",
        handle.addr()
    );
    let deadline = a
        .run_for
        .map(|s| std::time::Instant::now() + Duration::from_secs_f64(s));
    // SIGINT/SIGTERM end the process (and its sockets) directly; nothing to flush.
    match deadline {
        Some(d) => std::thread::sleep(d.saturating_duration_since(std::time::Instant::now())),
        None => loop {
            std::thread::park();
        },
    }
    handle.stop();
    println!("mock-upstream served {} requests", handle.requests());
    Ok(())
}
