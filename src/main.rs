//! The `shardgate` binary: run the gateway, check a config, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardgate::admin::{self, Admin, AdminState};
use shardgate::config;
use shardgate::control::Control;
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
    /// Validate a config file: prints every problem (exit 2) or "ok" (exit 0).
    Check,
    /// Run the gateway on config/demo.toml with an in-process mock model backend.
    Demo,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(cli.config),
        Some(Command::Demo) => demo(),
        Some(Command::Stats {
            admin,
            watch,
            token,
        }) => {
            let token = token.or_else(|| std::env::var("SHARDGATE_ADMIN_TOKEN").ok());
            stats(admin, watch, token.as_deref())
        }
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
    match config::load(&path, 1) {
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

/// Where `config/demo.toml` expects the demo's mock backend.
const DEMO_BACKEND: &str = "127.0.0.1:18081";

fn demo() -> ExitCode {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"));
    let addr = DEMO_BACKEND.parse().expect("static address");
    let cfg = shardgate::mock::MockConfig {
        model: "llama3-70b".into(),
        ..Default::default()
    };
    let mock = match shardgate::mock::spawn(cfg, addr, 1) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("shardgate demo: cannot start the mock backend on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "shardgate demo: mock model backend on http://{}",
        mock.addr()
    );
    run(path, Some(Box::new(mock)))
}

/// Runs the gateway until SIGTERM/SIGINT; SIGHUP reloads the config.
fn run(path: PathBuf, keep_alive: Option<Box<dyn std::any::Any>>) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let snapshot = match config::load(&path, 1) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardgate: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = snapshot.server.listen;
    let revocation_file = snapshot
        .auth
        .as_ref()
        .and_then(|a| a.revocation_file())
        .map(PathBuf::from);
    let workers = snapshot.server.cores.len();
    let initial = snapshot.clone();
    let mut engine = match Engine::start(snapshot) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("shardgate: cannot start on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let control = match Control::spawn(path.clone(), 1, engine.inboxes(), revocation_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardgate: cannot start the control thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    control.publish_initial(&initial);
    let admin = match start_admin(&initial, &engine, &control, keep_alive.is_some()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shardgate: cannot start the admin listener: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "shardgate: listening on http://{} with {workers} worker(s), config {}",
        engine.local_addr(),
        path.display()
    );
    if keep_alive.is_some() {
        print_demo_hint(engine.local_addr());
    }
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                let _ = control.reload();
            }
            _ => break,
        }
    }
    eprintln!("shardgate: draining");
    if let Some(a) = &admin {
        a.set_draining();
    }
    drop(control);
    engine.shutdown();
    drop(admin);
    drop(keep_alive);
    eprintln!("shardgate: stopped");
    ExitCode::SUCCESS
}

/// The demo config's HMAC key (kid `demo`), used to sign the printed token.
const DEMO_SECRET: &[u8] = b"shardgate-demo-secret-not-for-production-use-0123456789";
/// Starts the admin listener from `[admin]`; without it, only the demo runs one (on
/// [`admin::DEMO_ADMIN`], and a busy port there is not fatal).
fn start_admin(
    snap: &config::Snapshot,
    engine: &Engine,
    control: &Control,
    demo: bool,
) -> std::io::Result<Option<Admin>> {
    let (listen, token) = match (&snap.admin, demo) {
        (Some(a), _) => (a.listen, a.token.clone()),
        (None, true) => (admin::DEMO_ADMIN.parse().expect("valid address"), None),
        (None, false) => return Ok(None),
    };
    let state = AdminState {
        workers: engine.inboxes(),
        control: Some(control.sender()),
        view: control.view(),
        token,
        breakers: engine.coord_sender(),
    };
    match Admin::start(listen, state) {
        Ok(a) => {
            eprintln!("shardgate: admin API on http://{}", a.local_addr());
            Ok(Some(a))
        }
        Err(e) if demo && snap.admin.is_none() => {
            eprintln!("shardgate: demo admin API not started on {listen}: {e}");
            Ok(None)
        }
        Err(e) => Err(std::io::Error::new(e.kind(), format!("{listen}: {e}"))),
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

fn print_demo_hint(addr: std::net::SocketAddr) {
    let token = demo_token();
    println!();
    println!("Try it (token valid for 24 h):");
    println!(
        "  curl -s http://{addr}/v1/chat/completions -H 'authorization: Bearer {token}' \\\n    -H 'content-type: application/json' \\\n    -d '{{\"model\":\"llama3-70b\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'"
    );
    println!();
}

/// An HS256 JWT for the demo user, signed with the demo key.
fn demo_token() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let now = shardgate::runtime::unix_now();
    let header = B64.encode(r#"{"alg":"HS256","typ":"JWT","kid":"demo"}"#);
    let claims = B64.encode(format!(
        r#"{{"sub":"demo-user","scope":"ai:inference","iat":{now},"exp":{}}}"#,
        now + 86_400
    ));
    let msg = format!("{header}.{claims}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, DEMO_SECRET);
    let sig = B64.encode(ring::hmac::sign(&key, msg.as_bytes()).as_ref());
    format!("{msg}.{sig}")
}
