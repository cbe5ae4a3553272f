//! The `shardgate` binary: run the gateway, check a config, run the demo, or manage API keys.

mod keys_cli;
mod upgrade_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardgate::admin::{self, Admin, AdminState};
use shardgate::control::{self, Control, Start};
use shardgate::demo::{self, Demo};
use shardgate::registry;
use shardgate::runtime::Engine;

/// shardgate: a thread-per-core io_uring AI inference gateway.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Config file to run the gateway with.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file (with the model registry it names): prints every problem
    /// (exit 2) or "ok" (exit 0).
    Check,
    /// Run the gateway on config/demo.toml in front of in-process mock model deployments
    /// (env SHARDGATE_DEMO_PORT_BASE moves every port of the demo).
    Demo,
    /// Exit 0 if a running gateway's admin API answers `/healthz` (or `/readyz`) with 200,
    /// else 1: for container HEALTHCHECKs and scripts (the image has no curl).
    Health {
        /// Admin address (`[admin] listen`).
        #[arg(long, default_value = admin::DEMO_ADMIN)]
        admin: std::net::SocketAddr,
        /// Ask `/readyz` (503 once draining starts) instead of `/healthz`.
        #[arg(long)]
        ready: bool,
    },
    /// Manage API keys: through a running gateway's admin API (`--admin`), or in a keys file
    /// with no gateway running (`--file`; a running gateway picks the change up).
    Keys(Box<keys_cli::KeysArgs>),
    /// Print latency percentiles from a running gateway's admin API.
    Stats {
        /// Admin address (`[admin] listen`).
        #[arg(long, default_value = admin::DEMO_ADMIN)]
        admin: std::net::SocketAddr,
        /// Refresh every second (each refresh shows the last second's interval).
        #[arg(long)]
        watch: bool,
        /// Admin bearer token (or env SHARDGATE_ADMIN_TOKEN).
        #[arg(long)]
        token: Option<String>,
    },
    /// The model registry of a running gateway: versions, splits, rollouts, the audit log.
    Models(Box<admin::models_cli::ModelsArgs>),
    /// Replace a running gateway by a new process of BINARY with no connection refused or
    /// reset: checks the config with the new binary, starts it on the old one's listening
    /// sockets, waits until it is ready and the old one has drained and exited. The same as
    /// `kill -USR2 PID`, with the outcome reported (exit 0 done, 1 failed, 2 refused; on 1 and
    /// 2 the old process keeps serving).
    Upgrade(upgrade_cli::UpgradeArgs),
}

fn main() -> ExitCode {
    if std::env::var_os(shardgate::upgrade::TAKEOVER_ENV).is_some() {
        // Started by an upgrade: nothing inherited from the old process stays open here.
        shardgate::upgrade::close_inherited();
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(cli.config),
        Some(Command::Demo) => demo(),
        Some(Command::Health { admin, ready }) => health(admin, ready),
        Some(Command::Keys(args)) => keys_cli::run(*args),
        Some(Command::Stats {
            admin,
            watch,
            token,
        }) => {
            let token = token.or_else(|| std::env::var("SHARDGATE_ADMIN_TOKEN").ok());
            stats(admin, watch, token.as_deref())
        }
        Some(Command::Models(args)) => admin::models_cli::run(&args),
        Some(Command::Upgrade(args)) => upgrade_cli::run(&args),
        None => match cli.config {
            Some(path) => run(path, None),
            None => {
                eprintln!("shardgate: --config PATH is required (or try `shardgate demo`)");
                ExitCode::from(2)
            }
        },
    }
}

fn check(path: Option<PathBuf>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("shardgate check: --config PATH is required");
        return ExitCode::from(2);
    };
    // The keys file is checked too: the gateway would refuse to start on it.
    match registry::load(&path, 1)
        .map_err(|e| e.to_string())
        .and_then(|mut l| control::open_api_keys(&mut l.snapshot).map_err(|e| e.to_string()))
    {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn demo() -> ExitCode {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"));
    let started = demo::port_base_from_env()
        .map_err(|e| e.to_string())
        .and_then(|base| Demo::start(&path, base));
    let demo = match started {
        Ok(d) => d,
        Err(e) => {
            eprintln!("shardgate demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    for line in demo.describe_mocks() {
        eprintln!("shardgate demo: {line}");
    }
    run(demo.config().to_path_buf(), Some(demo))
}

/// Runs the gateway until SIGTERM/SIGINT or a binary upgrade hands its sockets to a new
/// process; SIGHUP reloads the config, SIGUSR2 starts an upgrade (see `upgrade_cli`).
fn run(path: PathBuf, demo: Option<Demo>) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    // A registry that cannot be used stops the start (never an empty registry instead).
    let mut loaded = match registry::load(&path, 1) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Loaded before the engine starts, so an API key works from the first request.
    let keys = match control::open_api_keys(&mut loaded.snapshot) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let snapshot = loaded.snapshot.clone();
    let signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardgate: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = snapshot.server.listen;
    let workers = snapshot.server.cores.len();
    // Loaded before the engine starts, so a revoked token is refused from the first request.
    let revocations = match control::open_revocations(&snapshot) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shardgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let revoked = revocations.as_ref().map_or(&[][..], |r| r.entries());
    // A binary upgrade's sockets, and the admin listener bound before the workers accept.
    let (taken, adopted, admin_listener) = match upgrade_cli::listeners(&snapshot, demo.is_some()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shardgate: {e}");
            demo_port_hint(demo.is_some());
            return ExitCode::FAILURE;
        }
    };
    let mut engine = match Engine::start_adopting(snapshot.clone(), revoked, adopted) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("shardgate: cannot start on {listen}: {e}");
            demo_port_hint(demo.is_some());
            return ExitCode::FAILURE;
        }
    };
    let start = Start {
        revocations,
        access_log: engine.access_log(),
        keys,
        key_hints: Some(engine.key_hints()),
        ..Start::loaded(path.clone(), loaded, engine.inboxes())
    };
    let control = match Control::spawn(start) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardgate: cannot start the control thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut admin = match start_admin(admin_listener, &engine, &control) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shardgate: cannot start the admin listener: {e}");
            demo_port_hint(demo.is_some());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "shardgate: listening on http://{} with {workers} worker(s), config {}",
        engine.local_addr(),
        path.display()
    );
    if let Some(tls) = engine.tls_local_addr() {
        eprintln!("shardgate: listening on https://{tls}");
    }
    shardgate::tls::client::warn_insecure(&snapshot.upstreams, &snapshot.upstream_tls);
    if let Some(d) = &demo {
        let exe = std::env::current_exe().unwrap_or_else(|_| "shardgate".into());
        let admin_addr = admin.as_ref().map(Admin::local_addr);
        print!(
            "{}",
            d.instructions(engine.local_addr(), admin_addr, &demo::invocation(&exe))
        );
    }
    if let Some(t) = taken {
        upgrade_cli::ready(t);
    }
    shardgate::upgrade::notify_systemd();
    let (handed_tx, handed_rx) = crossbeam_channel::bounded(1);
    // Held here, so the channel stays open when no upgrade thread runs.
    let _handed_tx = handed_tx.clone();
    let upgrades = match demo {
        // The demo's mock deployments live in this process: no upgrade.
        Some(_) => None,
        None => upgrade_cli::serve(&path, &snapshot, &mut engine, admin.as_ref(), handed_tx),
    };
    let successor = until_stop(signals, &control, upgrades.is_some(), &handed_rx);
    drop(upgrades);
    if let Some(a) = &mut admin {
        a.set_draining();
        if successor.is_some() {
            // The successor answers the admin API (and `/readyz`) from now on.
            a.stop_accepting();
        }
    }
    match successor {
        Some(pid) => {
            eprintln!("shardgate: pid {pid} serves now; this process stops accepting and drains");
            engine.hand_over();
        }
        None => eprintln!("shardgate: draining"),
    }
    drop(control);
    engine.shutdown();
    drop(admin);
    drop(demo);
    eprintln!("shardgate: stopped");
    ExitCode::SUCCESS
}

/// Serves signals until SIGTERM/SIGINT (`None`) or until a successor has taken the sockets
/// over (its pid). SIGHUP reloads, SIGUSR2 starts an upgrade.
fn until_stop(
    mut signals: signal_hook::iterator::Signals,
    control: &Control,
    upgrades: bool,
    handed_over: &crossbeam_channel::Receiver<u32>,
) -> Option<u32> {
    use signal_hook::consts::{SIGHUP, SIGUSR2};
    let (sig_tx, sig_rx) = crossbeam_channel::unbounded();
    let handle = signals.handle();
    let thread = std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig_tx.send(sig).is_err() {
                return;
            }
        }
    });
    let successor = loop {
        crossbeam_channel::select! {
            recv(sig_rx) -> sig => match sig {
                Ok(SIGHUP) => {
                    let _ = control.reload();
                }
                Ok(SIGUSR2) => upgrade_cli::upgrade_self(upgrades),
                _ => break None,
            },
            recv(handed_over) -> pid => break pid.ok(),
        }
    };
    handle.close();
    let _ = thread.join();
    successor
}

fn demo_port_hint(demo: bool) {
    if demo {
        eprintln!(
            "shardgate demo: set {}=N to move the demo to ports N, N+1, ...",
            demo::PORT_BASE_ENV
        );
    }
}

/// Starts the admin API on its listener (see `upgrade_cli::admin_listener`), if the config
/// has one.
fn start_admin(
    listener: Option<std::net::TcpListener>,
    engine: &Engine,
    control: &Control,
) -> std::io::Result<Option<Admin>> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let state = AdminState {
        workers: engine.inboxes(),
        control: Some(control.sender()),
        view: control.view(),
        breakers: engine.coord_sender(),
        spend: engine.spend_sender(),
    };
    let a = Admin::start_on(listener, state, admin::AdminLimits::default())?;
    eprintln!("shardgate: admin API on http://{}", a.local_addr());
    Ok(Some(a))
}

/// `shardgate health`: the probe's status decides the exit code.
fn health(addr: std::net::SocketAddr, ready: bool) -> ExitCode {
    let path = if ready { "/readyz" } else { "/healthz" };
    match admin::http::call(addr, "GET", path, None) {
        Ok((200, _)) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "shardgate health: {addr}{path} answered {status}: {}",
                body.trim()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("shardgate health: cannot reach {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `shardgate stats`: one table, or a refreshing one with `--watch`.
fn stats(addr: std::net::SocketAddr, watch: bool, token: Option<&str>) -> ExitCode {
    // With --watch every call starts a new interval, so each refresh shows the last second.
    let path = if watch { "/stats?reset=true" } else { "/stats" };
    let mut first = true;
    loop {
        let body = match admin::http::call(addr, "GET", path, token) {
            Ok((200, body)) => body,
            Ok((status, body)) => {
                eprintln!("shardgate stats: {addr} answered {status}: {}", body.trim());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("shardgate stats: cannot reach {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let v: serde_json::Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("shardgate stats: unreadable answer from {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if !watch {
            print!("{}", admin::stats::table(&v, "since_start"));
            return ExitCode::SUCCESS;
        }
        // Clear the screen, then show the last interval and the totals.
        print!("\x1b[2J\x1b[H");
        if !first {
            print!("{}", admin::stats::table(&v, "interval"));
            println!();
        }
        print!("{}", admin::stats::table(&v, "since_start"));
        first = false;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
