//! `shardgate upgrade`, and the running gateway's part of a binary upgrade (see
//! `shardgate::upgrade`): taking the sockets over at start, answering upgrade requests,
//! `SIGUSR2`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use crossbeam_channel::Sender;
use shardgate::config::Snapshot;
use shardgate::runtime::listen::adopts;
use shardgate::runtime::{Engine, Sockets};
use shardgate::upgrade::{self, Handover, Outcome, Plan, Taken, TAKEOVER_ENV};

/// How long `shardgate upgrade` waits for the old process to exit past its drain timeout.
const EXIT_MARGIN: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct UpgradeArgs {
    /// The running gateway's pid (under systemd: `systemctl show -p MainPID --value
    /// shardgate`).
    #[arg(
        long,
        required_unless_present = "pid_file",
        conflicts_with = "pid_file"
    )]
    pid: Option<u32>,
    /// A file holding the running gateway's pid.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// The new binary (default: the running gateway's own path, where a package manager puts
    /// the new version).
    #[arg(long)]
    binary: Option<PathBuf>,
}

/// `shardgate upgrade`: exit 0 once the new process serves and the old one has exited, 1 when
/// the upgrade failed, 2 when the new binary refused the config (the old one keeps serving
/// in both cases).
pub fn run(args: &UpgradeArgs) -> ExitCode {
    let pid = match old_pid(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shardgate upgrade: {e}");
            return ExitCode::FAILURE;
        }
    };
    let binary = args.binary.as_deref().map(absolute);
    let mut print = |l: &str| match l.split_once(' ') {
        Some(("info", rest)) => println!("{rest}"),
        Some(("ready", _)) => {}
        Some(("refused" | "failed", rest)) => eprintln!("{rest}"),
        _ => eprintln!("{l}"),
    };
    let outcome = match upgrade::request(pid, binary.as_deref(), &mut print) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "shardgate upgrade: pid {pid} does not take upgrade requests on @{} ({e}): \
                 not a shardgate gateway, or one from before `shardgate upgrade`",
                upgrade::socket_name(pid)
            );
            return ExitCode::FAILURE;
        }
    };
    match outcome {
        Outcome::Ready { pid: new, drain } => {
            println!("pid {new} is ready and serves; pid {pid} stops accepting and drains");
            if wait_exit(pid, drain + EXIT_MARGIN) {
                println!("pid {pid} drained and exited; upgrade done");
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "shardgate upgrade: pid {pid} still runs {} s after the hand-over; pid {new} \
                     serves",
                    (drain + EXIT_MARGIN).as_secs()
                );
                ExitCode::FAILURE
            }
        }
        Outcome::Refused => {
            eprintln!("shardgate upgrade: refused; pid {pid} keeps serving, unchanged");
            ExitCode::from(2)
        }
        Outcome::Failed => {
            eprintln!("shardgate upgrade: failed; pid {pid} keeps serving");
            ExitCode::FAILURE
        }
    }
}

fn old_pid(args: &UpgradeArgs) -> Result<u32, String> {
    let pid = match (&args.pid, &args.pid_file) {
        (Some(p), _) => *p,
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read {}: {e}", f.display()))?
            .trim()
            .parse()
            .map_err(|_| format!("{} does not hold a pid", f.display()))?,
        (None, None) => return Err("--pid or --pid-file is required".into()),
    };
    if !alive(pid) {
        return Err(format!("no process with pid {pid}"));
    }
    Ok(pid)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether `pid` runs (a zombie has exited: it only waits for its parent).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn wait_exit(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// What this process listens on before its workers start: the sockets taken over when an
/// upgrade started it (still to be told `ready`), the workers' adopted sockets, and the admin
/// listener (bound first, so a busy admin address fails the start before this process takes
/// a single connection).
pub fn listeners(
    snap: &Snapshot,
    demo: bool,
) -> Result<(Option<Taken>, Sockets, Option<TcpListener>), String> {
    let mut taken = take_over_if_asked(demo)?;
    let (adopted, admin) = match &mut taken {
        Some(t) => (std::mem::take(&mut t.sockets), t.admin.take()),
        None => Default::default(),
    };
    let admin =
        admin_listener(snap, admin).map_err(|e| format!("cannot start the admin listener: {e}"))?;
    Ok((taken, adopted, admin))
}

/// The old process's sockets when this process was started by an upgrade
/// ([`TAKEOVER_ENV`]).
fn take_over_if_asked(demo: bool) -> Result<Option<Taken>, String> {
    let Some(old) = std::env::var_os(TAKEOVER_ENV) else {
        return Ok(None);
    };
    let old: u32 = old
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{TAKEOVER_ENV} must be a pid"))?;
    if demo {
        return Err("the demo cannot take over a gateway".into());
    }
    upgrade::take_over(old)
        .map(Some)
        .map_err(|e| format!("cannot take the sockets over from pid {old}: {e}"))
}

/// The admin API's listener: the one handed over while `[admin] listen` still names its
/// address, else bound anew.
fn admin_listener(
    snap: &Snapshot,
    adopted: Option<TcpListener>,
) -> std::io::Result<Option<TcpListener>> {
    let Some(settings) = &snap.admin else {
        return Ok(None);
    };
    let listen = settings.listen;
    if let Some(l) = adopted {
        if adopts(listen, l.local_addr()?) {
            return Ok(Some(l));
        }
    }
    TcpListener::bind(listen)
        .map(Some)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{listen}: {e}")))
}

/// Tells the old process this one serves.
pub fn ready(t: Taken) {
    if let Err(e) = t.ready() {
        // It keeps accepting on the shared sockets too, and drains on SIGTERM.
        eprintln!("shardgate: cannot tell the old process this one is ready: {e}");
    }
}

/// Answers upgrade requests for this process (see `shardgate::upgrade`); `None` when the
/// socket cannot be set up (logged: upgrades are then unavailable, nothing else changes).
pub fn serve(
    config: &Path,
    snap: &Snapshot,
    engine: &mut Engine,
    admin: Option<&shardgate::admin::Admin>,
    done: Sender<u32>,
) -> Option<upgrade::Server> {
    let started = (|| {
        let exe = std::env::current_exe()?;
        let plan = Plan {
            exe,
            config: absolute(config),
            drain_timeout: snap.server.drain_timeout,
        };
        let sockets = engine
            .take_sockets()
            .ok_or_else(|| std::io::Error::other("sockets taken already"))?;
        let admin = admin.map(shardgate::admin::Admin::socket).transpose()?;
        upgrade::Server::start(plan, Handover { sockets, admin }, done)
    })();
    match started {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("shardgate: binary upgrades unavailable: {e}");
            None
        }
    }
}

/// SIGUSR2: an upgrade to this process's own path, reported in the log.
pub fn upgrade_self(enabled: bool) {
    if !enabled {
        eprintln!("shardgate: SIGUSR2 ignored: binary upgrades are unavailable here");
        return;
    }
    let _ = std::thread::Builder::new()
        .name("shardgate-usr2".into())
        .spawn(|| {
            // The upgrade thread logs every step itself.
            if let Err(e) = upgrade::request(std::process::id(), None, &mut |_| {}) {
                eprintln!("shardgate: upgrade: {e}");
            }
        });
}
