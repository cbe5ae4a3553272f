//! The control thread: config reload (file watch, SIGHUP, admin), distributing snapshots,
//! revocations.
//!
//! It is never on the data path. It owns the config generation counter, builds and validates
//! new snapshots, and sends each worker its own copy. A config that fails validation changes
//! nothing: the problems are logged and kept for the admin API, and a failure counter grows.
//!
//! - [`watch`]: has the config file changed, and has it settled (stable identity and content
//!   across a settle interval)?
//! - [`protection`]: what a new config would take away from the protection in force.
//! - [`revoke`]: revocations, persisted and confirmed by every worker before the reply.
//! - [`coord`]: the coordination thread (quota leases, breakers).
//!
//! # Reload
//!
//! - **Watched** (the file changed on disk): applied once the file has settled, and refused
//!   if it would lower protection ([`protection::lowered`]); a refusal keeps the generation,
//!   is logged naming each loss and is counted in [`ReloadStatus::refused`]. This is what
//!   keeps a half-written file (a prefix that happens to parse) from ever being served.
//! - **Explicit** (`SIGHUP`, `POST /reload`): the file is read and applied now; a lowering
//!   config is applied, logged loudly, and reported back ([`Reloaded::lowered`]).
//!
//! The baseline for the protection diff is the snapshot in the shared view (published at
//! start by [`Control::publish_initial`], then every applied reload).
// Control plane: the view shared with the admin thread is behind a Mutex (never touched by
// a worker).
#![allow(clippy::disallowed_types)]

pub mod coord;
pub mod protection;
pub mod revoke;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::auth::{RevocationLog, Revoked};
use crate::config::{self, ConfigError, ConfigProblem, Snapshot};
use crate::inbox::ToWorker;
use crate::time::unix_now;
pub use protection::Loss;
pub use revoke::RevokeError;
use watch::{FileWatch, Poll};
pub use watch::{WatchSettings, SETTLE_INTERVAL, WATCH_INTERVAL};

/// Requests to the control thread.
pub enum ToControl {
    /// Re-read the config file now (SIGHUP, admin reload). The reply says what happened.
    Reload(Option<Sender<Result<Reloaded, ConfigError>>>),
    /// Revoke a token id or subject: persist it, tell every worker, and answer once every
    /// worker has applied it.
    Revoke(Revoked, Sender<Result<(), RevokeError>>),
    Stop,
}

/// An applied reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    /// What the applied config lowered (only an explicit reload applies such a config).
    pub lowered: Vec<Loss>,
}

/// Result of the last reload attempt, for the admin API.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub generation: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// Watched changes refused because they would lower the protection in force.
    pub refused: u64,
    /// Why the last watched change was refused.
    pub last_refused: Option<String>,
    /// Explicit reloads applied although they lowered protection.
    pub lowering_applied: u64,
}

/// What the admin API reads about the control thread: the snapshot in force and the outcome
/// of the last reload. Control plane only (a `Mutex` is fine here).
#[derive(Debug, Default)]
pub struct ControlView {
    pub status: ReloadStatus,
    pub snapshot: Option<Snapshot>,
    /// The config file the control thread reloads from (the admin API edits it in place).
    pub config_path: Option<PathBuf>,
}

/// A [`ControlView`] shared between the control thread and the admin thread.
pub type SharedView = Arc<Mutex<ControlView>>;

/// Locks a view, taking it even if a panicking holder poisoned the lock (it is only data).
pub fn lock_view(view: &SharedView) -> std::sync::MutexGuard<'_, ControlView> {
    view.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Control {
    tx: Sender<ToControl>,
    thread: Option<JoinHandle<()>>,
    view: SharedView,
}

impl Control {
    /// Starts the control thread for a gateway loaded from `path` at `generation`.
    /// `revocation_file`: where revocations persist (loaded now and sent to every worker).
    pub fn spawn(
        path: PathBuf,
        generation: u64,
        workers: Vec<Sender<ToWorker>>,
        revocation_file: Option<PathBuf>,
    ) -> std::io::Result<Control> {
        Self::spawn_with(
            path,
            generation,
            workers,
            revocation_file,
            WatchSettings::default(),
        )
    }

    /// [`Control::spawn`] with the file watch's poll and settle intervals (tests shorten
    /// them).
    pub fn spawn_with(
        path: PathBuf,
        generation: u64,
        workers: Vec<Sender<ToWorker>>,
        revocation_file: Option<PathBuf>,
        watch: WatchSettings,
    ) -> std::io::Result<Control> {
        let log = match revocation_file {
            Some(f) => Some(RevocationLog::open(&f, unix_now()).map_err(|e| {
                std::io::Error::other(format!("revocation file {}: {e}", f.display()))
            })?),
            None => None,
        };
        if let Some(log) = &log {
            for r in log.entries() {
                for w in &workers {
                    let _ = w.send(ToWorker::Revoke(r.clone()));
                }
            }
            if let Err(e) = revoke::barrier(&workers, revoke::REVOKE_APPLY_TIMEOUT) {
                eprintln!("shardgate: loading the revocation file: {e}");
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let view = SharedView::default();
        {
            let mut v = lock_view(&view);
            v.status.generation = generation;
            v.config_path = Some(path.clone());
        }
        let state = State {
            watch: FileWatch::new(path.clone(), watch),
            path,
            generation,
            workers,
            log,
            view: view.clone(),
            status: ReloadStatus {
                generation,
                ..Default::default()
            },
        };
        let thread = std::thread::Builder::new()
            .name("shardgate-control".into())
            .spawn(move || run(state, rx, watch.interval))?;
        Ok(Control {
            tx,
            thread: Some(thread),
            view,
        })
    }

    pub fn sender(&self) -> Sender<ToControl> {
        self.tx.clone()
    }

    /// Revokes `r` on every worker, persisting it first when a revocation file is configured;
    /// returns once every worker has applied it.
    pub fn revoke(&self, r: Revoked) -> Result<(), RevokeError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = self.tx.send(ToControl::Revoke(r, tx));
        rx.recv().unwrap_or(Err(RevokeError::Stopped))
    }

    /// The view the admin API reads.
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// Records the snapshot the engine started with (unless a reload already replaced it).
    /// It is the baseline the first reload's protection diff compares against.
    pub fn publish_initial(&self, snap: &Snapshot) {
        let mut v = lock_view(&self.view);
        if v.snapshot.is_none() && v.status.generation == snap.generation {
            v.snapshot = Some(snap.clone());
        }
    }

    /// Asks for a reload and waits for its outcome.
    pub fn reload(&self) -> Result<u64, ConfigError> {
        reload_via(&self.tx).map(|r| r.generation)
    }

    /// Asks for a reload and waits for its outcome, with what it lowered.
    pub fn reload_report(&self) -> Result<Reloaded, ConfigError> {
        reload_via(&self.tx)
    }
}

/// Asks the control thread behind `tx` for a reload and waits for its outcome.
pub fn reload_via(tx: &Sender<ToControl>) -> Result<Reloaded, ConfigError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send(ToControl::Reload(Some(reply)));
    rx.recv().unwrap_or_else(|_| {
        Err(ConfigError {
            file: PathBuf::new(),
            problems: vec![],
        })
    })
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.tx.send(ToControl::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Who asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The file watch saw a settled change.
    Watch,
    /// SIGHUP or `POST /reload`.
    Explicit,
}

/// What the control thread owns.
struct State {
    path: PathBuf,
    generation: u64,
    workers: Vec<Sender<ToWorker>>,
    log: Option<RevocationLog>,
    view: SharedView,
    status: ReloadStatus,
    watch: FileWatch,
}

fn run(mut st: State, rx: Receiver<ToControl>, interval: Duration) {
    let mut next_poll = Instant::now() + interval;
    loop {
        match rx.recv_deadline(next_poll) {
            Ok(ToControl::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(ToControl::Reload(reply)) => {
                let result = st.reload_now();
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Ok(ToControl::Revoke(r, reply)) => {
                let _ = reply.send(revoke::revoke(&st.workers, st.log.as_mut(), r));
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Polled on time even while messages keep arriving.
        if Instant::now() >= next_poll {
            st.poll_file();
            next_poll = Instant::now() + interval;
        }
    }
}

/// Attempts at reading a file that keeps changing under an explicit reload.
const EXPLICIT_READ_ATTEMPTS: usize = 5;

impl State {
    /// An explicit reload: the file as it is now.
    fn reload_now(&mut self) -> Result<Reloaded, ConfigError> {
        let mut content = watch::read(&self.path);
        for _ in 1..EXPLICIT_READ_ATTEMPTS {
            match &content {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    std::thread::sleep(Duration::from_millis(20));
                    content = watch::read(&self.path);
                }
                _ => break,
            }
        }
        match content {
            Ok(c) => {
                // The watch must not offer this version again.
                self.watch.dealt_with(c.observation);
                self.apply(&c.bytes, Trigger::Explicit)
            }
            Err(e) => {
                let e = ConfigError {
                    file: self.path.clone(),
                    problems: vec![ConfigProblem::new("(file)", format!("cannot read: {e}"))],
                };
                self.reject(&e);
                Err(e)
            }
        }
    }

    /// One look at the file; applies a settled change.
    fn poll_file(&mut self) {
        let g = self.generation;
        let file = self.path.display();
        match self.watch.poll(Instant::now()) {
            Poll::Unchanged | Poll::Settling => {}
            Poll::Unreadable(e) => {
                eprintln!(
                    "shardgate: config file {file} cannot be read ({e}); keeping generation {g}"
                )
            }
            Poll::Empty(_) => {
                eprintln!(
                    "shardgate: config file {file} is empty; not applied, keeping generation {g}"
                )
            }
            Poll::Ready(c) => {
                self.watch.dealt_with(c.observation);
                let _ = self.apply(&c.bytes, Trigger::Watch);
            }
        }
    }

    /// Validates `bytes` and applies them, unless the file watch brought a config that
    /// lowers protection.
    fn apply(&mut self, bytes: &[u8], trigger: Trigger) -> Result<Reloaded, ConfigError> {
        let snap = match config::load_bytes(&self.path, bytes, self.generation + 1) {
            Ok(s) => s,
            Err(e) => {
                self.reject(&e);
                return Err(e);
            }
        };
        let lowered = lock_view(&self.view)
            .snapshot
            .as_ref()
            .map(|old| protection::lowered(old, &snap))
            .unwrap_or_default();
        if trigger == Trigger::Watch && !lowered.is_empty() {
            return Err(self.refuse(&lowered));
        }
        self.generation = snap.generation;
        broadcast(&self.workers, &snap);
        self.status.generation = self.generation;
        self.status.last_error = None;
        let file = self.path.display();
        if lowered.is_empty() {
            eprintln!(
                "shardgate: applied config generation {} from {file}",
                self.generation
            );
        } else {
            self.status.lowering_applied += 1;
            eprintln!(
                "shardgate: WARNING: applied config generation {} from {file} by explicit \
                 reload; it LOWERS the protection in force:\n{}",
                self.generation,
                bullets(&lowered)
            );
        }
        let mut v = lock_view(&self.view);
        v.snapshot = Some(snap);
        v.status = self.status.clone();
        Ok(Reloaded {
            generation: self.generation,
            lowered,
        })
    }

    /// A config that failed to load: counted, logged, kept for the admin API.
    fn reject(&mut self, e: &ConfigError) {
        self.status.failures += 1;
        self.status.last_error = Some(e.to_string());
        eprintln!(
            "shardgate: config reload rejected, keeping generation {}:\n{e}",
            self.generation
        );
        lock_view(&self.view).status = self.status.clone();
    }

    /// A watched change that lowers protection: refused, counted, logged loudly.
    fn refuse(&mut self, lowered: &[Loss]) -> ConfigError {
        let file = self.path.display();
        let why = bullets(lowered);
        self.status.refused += 1;
        self.status.last_refused = Some(why.clone());
        eprintln!(
            "shardgate: WARNING: config file {file} changed but was NOT applied (keeping \
             generation {}): it would lower the protection in force, as a half-written file \
             does:\n{why}\nIf this change is intended, apply it with SIGHUP or POST /reload. \
             Update the file by writing a temporary file and renaming it over {file}.",
            self.generation
        );
        lock_view(&self.view).status = self.status.clone();
        ConfigError {
            file: self.path.clone(),
            problems: lowered
                .iter()
                .map(|l| ConfigProblem::new(l.key(), l.to_string()))
                .collect(),
        }
    }
}

/// One `  - loss` line per loss.
fn bullets(lowered: &[Loss]) -> String {
    lowered
        .iter()
        .map(|l| format!("  - {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn broadcast(workers: &[Sender<ToWorker>], snap: &Snapshot) {
    for w in workers {
        let _ = w.send(ToWorker::Snapshot(Box::new(snap.clone())));
    }
}

/// Set by the signal thread; read by main.
pub fn signal_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Whether a flag from [`signal_flag`] is set.
pub fn is_set(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}
