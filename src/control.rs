//! The control thread: config reload (file watch, SIGHUP, admin), distributing snapshots.
//!
//! It is never on the data path. It owns the config generation counter, builds and validates
//! new snapshots, and sends each worker its own copy. A config that fails validation changes
//! nothing: the problems are logged and kept for the admin API, and a failure counter grows.
// Control plane: the view shared with the admin thread is behind a Mutex (never touched by
// a worker).
#![allow(clippy::disallowed_types)]

pub mod coord;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::auth::{RevocationLog, Revoked};
use crate::config::{self, ConfigError, Snapshot};
use crate::runtime::unix_now;
use crate::runtime::ToWorker;

/// How often the config file's mtime/size/inode is checked.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Requests to the control thread.
pub enum ToControl {
    /// Re-read the config file now (SIGHUP, admin reload). The reply says what happened.
    Reload(Option<Sender<Result<u64, ConfigError>>>),
    /// Revoke a token id or subject: persist it, then tell every worker.
    Revoke(Revoked, Sender<Result<(), String>>),
    Stop,
}

/// Result of the last reload attempt, for the admin API.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub generation: u64,
    pub failures: u64,
    pub last_error: Option<String>,
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
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let view = SharedView::default();
        {
            let mut v = lock_view(&view);
            v.status.generation = generation;
            v.config_path = Some(path.clone());
        }
        let shared = view.clone();
        let thread = std::thread::Builder::new()
            .name("shardgate-control".into())
            .spawn(move || run(path, generation, workers, rx, log, shared))?;
        Ok(Control {
            tx,
            thread: Some(thread),
            view,
        })
    }

    pub fn sender(&self) -> Sender<ToControl> {
        self.tx.clone()
    }

    /// Revokes `r` on every worker, persisting it first when a revocation file is configured.
    pub fn revoke(&self, r: Revoked) -> Result<(), String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = self.tx.send(ToControl::Revoke(r, tx));
        rx.recv()
            .unwrap_or_else(|_| Err("control thread stopped".into()))
    }

    /// The view the admin API reads.
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// Records the snapshot the engine started with (unless a reload already replaced it).
    pub fn publish_initial(&self, snap: &Snapshot) {
        let mut v = lock_view(&self.view);
        if v.snapshot.is_none() && v.status.generation == snap.generation {
            v.snapshot = Some(snap.clone());
        }
    }

    /// Asks for a reload and waits for its outcome.
    pub fn reload(&self) -> Result<u64, ConfigError> {
        reload_via(&self.tx)
    }
}

/// Asks the control thread behind `tx` for a reload and waits for its outcome.
pub fn reload_via(tx: &Sender<ToControl>) -> Result<u64, ConfigError> {
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

/// Identity of the file on disk; a change means "reload".
fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn run(
    path: PathBuf,
    mut generation: u64,
    workers: Vec<Sender<ToWorker>>,
    rx: Receiver<ToControl>,
    mut log: Option<RevocationLog>,
    view: SharedView,
) {
    let mut stamp = file_stamp(&path);
    let mut status = ReloadStatus {
        generation,
        ..Default::default()
    };
    loop {
        let msg = match rx.recv_timeout(WATCH_INTERVAL) {
            Ok(m) => Some(m),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let reply = match msg {
            Some(ToControl::Stop) => return,
            Some(ToControl::Reload(reply)) => {
                // This reload reads the file as it is now; the watcher must not load it again.
                stamp = file_stamp(&path);
                reply
            }
            Some(ToControl::Revoke(r, reply)) => {
                let persisted = match &mut log {
                    Some(log) => log
                        .add(r.clone(), unix_now())
                        .map_err(|e| format!("cannot persist revocation: {e}")),
                    None => Ok(()),
                };
                // Only what was persisted is applied, so a restart cannot un-revoke.
                if persisted.is_ok() {
                    for w in &workers {
                        let _ = w.send(ToWorker::Revoke(r.clone()));
                    }
                }
                let _ = reply.send(persisted);
                continue;
            }
            None => {
                let now = file_stamp(&path);
                if now == stamp {
                    continue;
                }
                stamp = now;
                None
            }
        };
        let result = config::load(&path, generation + 1);
        match &result {
            Ok(snap) => {
                generation = snap.generation;
                broadcast(&workers, snap);
                status.generation = generation;
                status.last_error = None;
                lock_view(&view).snapshot = Some(snap.clone());
                eprintln!(
                    "shardgate: applied config generation {generation} from {}",
                    path.display()
                );
            }
            Err(e) => {
                status.failures += 1;
                status.last_error = Some(e.to_string());
                eprintln!(
                    "shardgate: config reload rejected, keeping generation {generation}:\n{e}"
                );
            }
        }
        lock_view(&view).status = status.clone();
        if let Some(reply) = reply {
            let _ = reply.send(result.map(|s| s.generation));
        }
    }
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
