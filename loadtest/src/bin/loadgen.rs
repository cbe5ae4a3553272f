//! `loadgen`: open-loop (wrk2-style, coordinated-omission corrected) or closed-loop HTTP/1.1
//! load generator. See the `loadtest` crate docs for the modes.
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use loadtest::LoadConfig;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Open-loop HTTP/1.1 load generator with hdrhistogram latencies"
)]
struct Args {
    /// Target URL, e.g. http://127.0.0.1:8080/v1/chat/completions
    #[arg(long)]
    url: String,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Extra header 'Name: value' (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// File with one bearer token per line, rotated per request.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// File whose bytes are the request body.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Worker threads (each pinned to one CPU of the allowed set).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keep-alive connections in total.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Total requests per second (open loop); omit for closed-loop max throughput.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds (after warmup).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds whose results are discarded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Do not pin threads to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Also write the results (with serialized histograms) to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rest = args
        .url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .context("no address")?;
    let mut cfg = LoadConfig::new(addr, path);
    cfg.host = authority.to_string();
    cfg.method = args.method;
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            bail!("header {h:?} is not 'Name: value'")
        };
        cfg.headers
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(f) = &args.token_file {
        cfg.tokens = loadtest::read_tokens(f)?;
    }
    if let Some(f) = &args.body {
        cfg.body = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
    }
    cfg.threads = args.threads;
    cfg.connections = args.connections;
    cfg.rate = args.rate;
    cfg.duration = Duration::from_secs_f64(args.duration);
    cfg.warmup = Duration::from_secs_f64(args.warmup);
    cfg.timeout = Duration::from_secs_f64(args.timeout);
    cfg.pin = !args.no_pin;
    let report = loadtest::run(&cfg)?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
