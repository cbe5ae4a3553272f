//! The `shardgate` binary: run the gateway, check a config, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(cli.config),
        Some(Command::Demo) => demo(),
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
    drop(control);
    engine.shutdown();
    drop(keep_alive);
    eprintln!("shardgate: stopped");
    ExitCode::SUCCESS
}

/// The demo config's HMAC key (kid `demo`), used to sign the printed token.
const DEMO_SECRET: &[u8] = b"shardgate-demo-secret-not-for-production-use-0123456789";

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
