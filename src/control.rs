//! The control thread: config reload (file watch, SIGHUP, admin), distributing snapshots,
//! revocations, route weight edits. It owns the config file and the revocation file.
//!
//! It is never on the data path. It owns the config generation counter, builds and validates
//! new snapshots, and sends each worker its own copy through [`Workers`]. A config that fails
//! validation changes nothing: the problems are logged and kept for the admin API, and a
//! failure counter grows.
//!
//! - [`watch`]: has the config file changed, and has it settled (stable identity and content
//!   across a settle interval)?
//! - [`cert_watch`]: the same for the TLS listener's PEM files; a settled change reloads.
//! - [`protection`]: what a new config would take away from the protection in force.
//! - [`revoke`]: revocations, persisted and confirmed by every worker before the reply.
//! - [`weights`]: `PUT /routes/weights`, rewriting the config file and reloading it.
//! - [`registry`]: the model registry's requests and rollouts (the control thread owns its
//!   database; a committed change is applied like an explicit reload).
//! - [`keys`]: API keys: the key store, the admin API's key operations, the keys file watch.
//! - [`jwks`]: the thread that fetches remote key sets (`[[auth.jwks]]`).
//! - [`coord`]: the coordination thread (quota leases, breakers).
//! - [`dns`]: upstream host names resolved again every 30 s; a changed address is put in force
//!   like a reload.
//! - [`remote`]: the thread that does the quota's Redis I/O for the coordination thread.
//! - [`spend`]: the spend thread: the spend ledger and its store (file or Redis).
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
//! The baseline for the protection diff is the snapshot in force: the one the engine started
//! with ([`Start::snapshot`]), then every applied reload.
//!
//! Every snapshot the control thread publishes carries the key material it owns: the API key
//! table ([`keys`]) and the keys last fetched for each remote key set ([`jwks`]). A change to
//! either (a key created or disabled, a key set rotated at the identity provider) is
//! published as the next generation of the snapshot in force, without reading the config.
//! A reload builds the file's config combined with the model registry and then lays that key
//! material over it ([`keys`]'s `overlay_keys`, [`jwks`]'s `overlay_remote`); a registry
//! change, applied like an explicit reload, carries the same key material into the snapshot it
//! builds, so neither kind of change drops keys the other put in force.
//!
//! What a reload applies and what needs a restart is listed in
//! [`config::snapshot::RELOAD_APPLIES`] and [`config::snapshot::RESTART_ONLY`]. A reload that
//! changes a restart-only setting still applies everything else; the settings it could not
//! apply are logged, kept in [`ReloadStatus::pending_restart`] and named in
//! [`Reloaded::needs_restart`]. The admin token is read by the admin thread from the snapshot
//! in force on every request; a new access log path reaches the writer thread, a new sample
//! rate every worker.
// Control plane: the view shared with the admin thread is behind a Mutex (never touched by
// a worker).
#![allow(clippy::disallowed_types)]

pub mod cert_watch;
pub mod coord;
pub mod dns;
pub mod jwks;
pub mod keys;
pub mod protection;
pub mod registry;
pub mod remote;
pub mod revoke;
pub mod spend;
pub mod watch;
pub mod weights;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::access_log::Retarget;
use crate::auth::{Key, SourceSettings};
use crate::auth::{RevocationLog, Revoked};
use crate::config::{self, AccessLogTarget, ConfigError, ConfigProblem, RawConfig, Snapshot};
use crate::inbox::{Barrier, ToWorker, UnknownKid, Workers};
use crate::time::unix_now;
pub use keys::{open_api_keys, KeyCommand, KeyError, KeyReply, KeyService};
pub use protection::Loss;
pub use registry::{Applied, RegistryReply, RegistryRequest};
pub use revoke::{revoke_via, RevokeError, REVOKE_APPLY_TIMEOUT};
use watch::{FileWatch, Poll};
pub use watch::{WatchSettings, SETTLE_INTERVAL, WATCH_INTERVAL};
pub use weights::{WeightsBody, WeightsError};

/// Requests to the control thread.
pub enum ToControl {
    /// Re-read the config file now (SIGHUP, admin reload). The reply says what happened.
    Reload(Option<Sender<Result<Reloaded, ConfigError>>>),
    /// Revoke a token id or subject: persist it and tell every worker. The reply is the
    /// barrier to wait on until every worker has applied it ([`revoke_via`] waits).
    Revoke(Revoked, Sender<Result<Barrier, RevokeError>>),
    /// Rewrite route weights in the config file, then reload it.
    SetWeights(WeightsBody, Sender<Result<Reloaded, WeightsError>>),
    /// A model registry request (see [`registry`]).
    Registry(
        RegistryRequest,
        Sender<Result<RegistryReply, crate::registry::store::ChangeError>>,
    ),
    /// An API key operation. The reply carries the barrier to wait on before answering
    /// ([`key_command_via`] waits).
    Keys(
        KeyCommand,
        /// Who asks: the admin token's name (the audit log records it).
        String,
        Sender<Result<(KeyReply, Option<Barrier>), KeyError>>,
    ),
    /// The JWKS thread fetched a changed key set for this source.
    RemoteKeys(SourceSettings, Vec<Key>),
    Stop,
}

/// An applied reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    /// What the applied config lowered (only an explicit reload applies such a config).
    pub lowered: Vec<Loss>,
    /// Settings of the new config that differ from what the process runs with and that only
    /// a restart applies (see [`config::snapshot::RESTART_ONLY`]).
    pub needs_restart: Vec<&'static str>,
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
    /// Settings of the config in force that the process does not run with until a restart.
    pub pending_restart: Vec<&'static str>,
}

/// What the admin API reads about the control thread: the snapshot in force and the outcome
/// of the last reload. Control plane only (a `Mutex` is fine here).
#[derive(Debug, Default)]
pub struct ControlView {
    pub status: ReloadStatus,
    pub snapshot: Option<Snapshot>,
    /// Every rollout the model registry holds (for `/metrics`; empty without a registry).
    pub rollouts: Vec<crate::registry::Rollout>,
    /// Each remote key set's fetch status (the JWKS thread writes it).
    pub jwks: Vec<jwks::SourceStatus>,
}

/// A [`ControlView`] shared between the control thread and the admin thread.
pub type SharedView = Arc<Mutex<ControlView>>;

/// Locks a view, taking it even if a panicking holder poisoned the lock (it is only data).
pub fn lock_view(view: &SharedView) -> std::sync::MutexGuard<'_, ControlView> {
    view.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the control thread starts with ([`Start::new`] for the usual case).
pub struct Start {
    /// The config file it reloads from (and rewrites for `PUT /routes/weights`).
    pub path: PathBuf,
    /// The snapshot the engine started on: the baseline of the first reload's protection
    /// diff, and of the settings that need a restart.
    pub snapshot: Snapshot,
    /// Every worker's inbox.
    pub workers: Workers,
    /// The revocation file, opened before the engine started ([`open_revocations`]); its
    /// entries are part of every worker's initial state.
    pub revocations: Option<RevocationLog>,
    /// The access log writer, pointed at a new file when a reload changes the path.
    pub access_log: Option<Retarget>,
    /// The file watch's poll and settle intervals (tests shorten them).
    pub watch: WatchSettings,
    /// The config file's content as parsed, before the registry was combined in (what
    /// registry changes are validated with until the next reload).
    pub raw: Option<RawConfig>,
    /// The model registry, opened before the engine started ([`crate::registry::load`]).
    pub registry: Option<crate::registry::Opened>,
    /// The API key store, opened before the engine started ([`open_api_keys`]); opened by
    /// the control thread when `None` and the snapshot configures API keys.
    pub keys: Option<KeyService>,
    /// The workers' unknown-kid hints ([`crate::runtime::Engine::key_hints`]), for the JWKS
    /// thread.
    pub key_hints: Option<Receiver<UnknownKid>>,
}

impl Start {
    /// No revocation file, no access log, the default file watch.
    pub fn new(path: PathBuf, snapshot: Snapshot, workers: Workers) -> Start {
        Start {
            path,
            snapshot,
            workers,
            revocations: None,
            access_log: None,
            watch: WatchSettings::default(),
            raw: None,
            registry: None,
            keys: None,
            key_hints: None,
        }
    }

    /// What [`crate::registry::load`] loaded: its snapshot, the parsed file and the registry.
    pub fn loaded(path: PathBuf, loaded: crate::registry::Loaded, workers: Workers) -> Start {
        Start {
            raw: Some(loaded.raw),
            registry: loaded.registry,
            ..Start::new(path, loaded.snapshot, workers)
        }
    }
}

/// Opens the revocation file `snapshot` names (`auth.revocation_file`), if any, dropping
/// expired entries. Done before the engine starts, so its entries are in force on every
/// worker from the first request.
pub fn open_revocations(snapshot: &Snapshot) -> std::io::Result<Option<RevocationLog>> {
    let Some(file) = snapshot.auth.as_ref().and_then(|a| a.revocation_file()) else {
        return Ok(None);
    };
    RevocationLog::open(file, unix_now())
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("revocation file {}: {e}", file.display())))
}

pub struct Control {
    tx: Sender<ToControl>,
    thread: Option<JoinHandle<()>>,
    view: SharedView,
}

impl Control {
    /// Starts the control thread. The view holds `start.snapshot` from the start.
    pub fn spawn(start: Start) -> std::io::Result<Control> {
        let generation = start.snapshot.generation;
        let status = ReloadStatus {
            generation,
            ..Default::default()
        };
        let view = SharedView::new(Mutex::new(ControlView {
            status: status.clone(),
            snapshot: Some(start.snapshot.clone()),
            rollouts: Vec::new(),
            jwks: Vec::new(),
        }));
        let (tx, rx) = crossbeam_channel::unbounded();
        let interval = start.watch.interval;
        let keys_settings = start
            .snapshot
            .auth
            .as_ref()
            .and_then(|a| a.api_key_settings().cloned());
        let mut state = State {
            watch: FileWatch::new(start.path.clone(), start.watch),
            certs: cert_watch::CertWatch::new(&start.snapshot, start.watch),
            path: start.path,
            generation,
            log_target: start.snapshot.access_log.as_ref().map(|a| a.target.clone()),
            started: start.snapshot.clone(),
            workers: start.workers,
            log: start.revocations,
            access_log: start.access_log,
            view: view.clone(),
            status,
            raw: start.raw,
            registry: start.registry.map(registry::RegistryCtl::new),
            watch_settings: start.watch,
            keys: None,
            remote: Vec::new(),
            jwks: None,
            key_hints: start.key_hints,
            tx: tx.clone(),
        };
        state.publish_rollouts();
        match (start.keys, keys_settings) {
            (Some(service), Some(settings)) => {
                state.keys = Some(keys::KeysState::new(service, settings, start.watch));
            }
            // Not opened before the engine started: open it now and publish its table.
            (None, Some(_)) => {
                let mut snap = start.snapshot;
                state
                    .overlay_keys(&mut snap)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                drop(state.publish(snap));
            }
            (_, None) => {}
        }
        state.sync_jwks();
        let thread = std::thread::Builder::new()
            .name("shardgate-control".into())
            .spawn(move || run(state, rx, interval))?;
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
        revoke_via(&self.tx, r)
    }

    /// The view the admin API reads.
    pub fn view(&self) -> SharedView {
        self.view.clone()
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

/// Asks the control thread behind `tx` for a key operation and waits until every worker has
/// applied the change it made (at most [`REVOKE_APPLY_TIMEOUT`]).
pub fn key_command_via(
    tx: &Sender<ToControl>,
    cmd: KeyCommand,
    who: &str,
) -> Result<KeyReply, KeyError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    tx.send(ToControl::Keys(cmd, who.to_owned(), reply))
        .map_err(|_| KeyError::Stopped)?;
    let (answer, barrier) = rx.recv().map_err(|_| KeyError::Stopped)??;
    if let Some(b) = barrier {
        b.wait(REVOKE_APPLY_TIMEOUT)
            .map_err(|u| KeyError::Unconfirmed {
                confirmed: u.confirmed,
                workers: u.workers,
            })?;
    }
    Ok(answer)
}

/// Asks the control thread behind `tx` to set route weights (rewriting the config file) and
/// waits up to `timeout` for the reload that follows.
pub fn set_weights_via(
    tx: &Sender<ToControl>,
    body: WeightsBody,
    timeout: Duration,
) -> Result<Reloaded, WeightsError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    tx.send(ToControl::SetWeights(body, reply))
        .map_err(|_| WeightsError::Stopped)?;
    rx.recv_timeout(timeout)
        .unwrap_or(Err(WeightsError::Stopped))
}

/// Sends a registry request to the control thread behind `tx` and waits up to `timeout` for
/// the answer; `None` when the control thread has stopped or did not answer.
pub fn registry_via(
    tx: &Sender<ToControl>,
    req: RegistryRequest,
    timeout: Duration,
) -> Option<Result<RegistryReply, crate::registry::store::ChangeError>> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    tx.send(ToControl::Registry(req, reply)).ok()?;
    rx.recv_timeout(timeout).ok()
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
    /// SIGHUP or `POST /reload` (or a weight edit).
    Explicit,
}

/// What the control thread owns.
struct State {
    path: PathBuf,
    generation: u64,
    /// The snapshot the engine started on: what restart-only settings are compared with.
    started: Snapshot,
    workers: Workers,
    log: Option<RevocationLog>,
    access_log: Option<Retarget>,
    /// Where the access log writer writes now.
    log_target: Option<AccessLogTarget>,
    view: SharedView,
    status: ReloadStatus,
    watch: FileWatch,
    /// The TLS listener's PEM files.
    certs: cert_watch::CertWatch,
    /// The config file in force as parsed (`None` until known: a control thread started
    /// without it learns it from its first reload).
    raw: Option<RawConfig>,
    registry: Option<registry::RegistryCtl>,
    /// The file watch's settings (the keys file is watched the same way).
    watch_settings: WatchSettings,
    /// API keys, when configured.
    keys: Option<keys::KeysState>,
    /// The keys fetched for each remote key set, put into every snapshot published.
    remote: Vec<(SourceSettings, Vec<Key>)>,
    /// The JWKS thread, once a config has a remote key set.
    jwks: Option<jwks::JwksThread>,
    /// Unknown-kid hints, until the JWKS thread takes them.
    key_hints: Option<Receiver<UnknownKid>>,
    /// This thread's own inbox (for the JWKS thread to answer to).
    tx: Sender<ToControl>,
}

fn run(mut st: State, rx: Receiver<ToControl>, interval: Duration) {
    let mut next_poll = Instant::now() + interval;
    let mut next_dns = Instant::now() + dns::DNS_REFRESH;
    loop {
        let deadline = st
            .next_rollout_look()
            .map_or(next_poll, |t| t.min(next_poll));
        match rx.recv_deadline(deadline) {
            Ok(ToControl::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(ToControl::Reload(reply)) => {
                let result = st.reload_now();
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Ok(ToControl::Revoke(r, reply)) => {
                // The caller waits for the workers' confirmations, not this thread.
                let _ = reply.send(revoke::revoke(&st.workers, st.log.as_mut(), r));
            }
            Ok(ToControl::SetWeights(body, reply)) => {
                let _ = reply.send(st.set_weights(&body));
            }
            Ok(ToControl::Registry(req, reply)) => {
                let _ = reply.send(st.registry(req));
            }
            Ok(ToControl::Keys(cmd, who, reply)) => {
                let _ = reply.send(st.key_command(cmd, who));
            }
            Ok(ToControl::RemoteKeys(source, keys)) => st.remote_keys(source, keys),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if st.next_rollout_look().is_some_and(|t| Instant::now() >= t) {
            st.look_at_rollouts();
        }
        // Polled on time even while messages keep arriving.
        if Instant::now() >= next_poll {
            st.poll_file();
            st.poll_keys_file();
            next_poll = Instant::now() + interval;
        }
        if Instant::now() >= next_dns {
            st.refresh_dns(dns::system_lookup);
            next_dns = Instant::now() + dns::DNS_REFRESH;
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

    /// `PUT /routes/weights`: the file is rewritten here, where nothing else writes it, and
    /// then reloaded explicitly.
    fn set_weights(&mut self, body: &WeightsBody) -> Result<Reloaded, WeightsError> {
        if let Some(r) = self.registry.as_ref() {
            if r.holds_split(&body.path, &body.models) {
                return Err(WeightsError::Bad(format!(
                    "the targets of route `{}` {:?} are held by the model registry; set them                      with PUT /splits",
                    body.path, body.models
                )));
            }
        }
        weights::rewrite(&self.path, body, self.generation + 1)?;
        self.reload_now().map_err(WeightsError::Invalid)
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
        if self.certs.poll(Instant::now()) {
            // The config as it is, with the files as they are now.
            match watch::read(&self.path) {
                Ok(c) => {
                    self.watch.dealt_with(c.observation);
                    let _ = self.apply(&c.bytes, Trigger::Watch);
                }
                Err(e) => eprintln!(
                    "shardgate: config file {} cannot be read ({e}); TLS files not reloaded",
                    self.path.display()
                ),
            }
        }
    }

    /// Validates `bytes` and applies them, unless the file watch brought a config that
    /// lowers protection.
    fn apply(&mut self, bytes: &[u8], trigger: Trigger) -> Result<Reloaded, ConfigError> {
        let built = match config::parse_bytes(&self.path, bytes) {
            Ok(raw) => self
                .build_overlaid(&raw, self.generation + 1)
                .map(|s| (s, raw)),
            Err(e) => Err(e),
        };
        let (snap, raw) = match built {
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
        self.raw = Some(raw);
        let source = self.path.display().to_string();
        Ok(self.install(snap, lowered, &source))
    }

    /// The snapshot of the config file's `raw` content, combined with the model registry
    /// when there is one.
    fn build(&self, raw: &RawConfig, generation: u64) -> Result<Snapshot, ConfigError> {
        let base = config::base_dir(&self.path);
        let built = match &self.registry {
            None => raw.validate(base, generation),
            Some(r) => r.build(raw, base, generation),
        };
        built.map_err(|problems| ConfigError {
            file: self.path.clone(),
            problems,
        })
    }

    /// [`State::build`], then the key material this thread holds: the API key table (the
    /// store opened anew when the config names another keys file) and the keys fetched for
    /// each remote key set the config still has.
    fn build_overlaid(
        &mut self,
        raw: &RawConfig,
        generation: u64,
    ) -> Result<Snapshot, ConfigError> {
        let mut snap = self.build(raw, generation)?;
        self.overlay_keys(&mut snap)?;
        self.overlay_remote(&mut snap);
        Ok(snap)
    }

    /// Sends every worker `snap` and makes it the config in force; `lowered` is what it
    /// takes away (logged loudly), `source` where it came from (for the log).
    fn install(&mut self, snap: Snapshot, lowered: Vec<Loss>, source: &str) -> Reloaded {
        self.generation = snap.generation;
        self.workers
            .broadcast(|| ToWorker::Snapshot(Box::new(snap.clone())));
        self.certs.follow(&snap);
        crate::tls::client::warn_insecure(&snap.upstreams, &snap.upstream_tls);
        self.retarget_access_log(&snap);
        let needs_restart = config::snapshot::needs_restart(&self.started, &snap);
        self.status.generation = self.generation;
        self.status.last_error = None;
        self.status.pending_restart = needs_restart.clone();
        if lowered.is_empty() {
            eprintln!(
                "shardgate: applied config generation {} from {source}",
                self.generation
            );
        } else {
            self.status.lowering_applied += 1;
            eprintln!(
                "shardgate: WARNING: applied config generation {} from {source} by explicit \
                 request; it LOWERS the protection in force:\n{}",
                self.generation,
                bullets(&lowered)
            );
        }
        if !needs_restart.is_empty() {
            eprintln!(
                "shardgate: config generation {} changes settings a reload does not apply; \
                 they keep the values the process started with until a restart: {}",
                self.generation,
                needs_restart.join(", ")
            );
        }
        let mut v = lock_view(&self.view);
        v.snapshot = Some(snap);
        v.status = self.status.clone();
        drop(v);
        self.sync_jwks();
        Reloaded {
            generation: self.generation,
            lowered,
            needs_restart,
        }
    }

    /// Resolves the upstream host names again and puts new addresses in force (see [`dns`]).
    fn refresh_dns(
        &mut self,
        lookup: impl FnMut(&str) -> std::io::Result<Vec<std::net::SocketAddr>>,
    ) {
        let Some(snap) = self.current_snapshot() else {
            return;
        };
        let found = dns::refresh(&snap, lookup);
        for line in &found.report {
            eprintln!("shardgate: dns: {line}");
        }
        if let Some(next) = found.snapshot {
            drop(self.publish(next));
            eprintln!(
                "shardgate: applied config generation {} (upstream addresses re-resolved)",
                self.generation
            );
        }
    }

    /// The snapshot in force.
    fn current_snapshot(&self) -> Option<Snapshot> {
        lock_view(&self.view).snapshot.clone()
    }

    /// Puts `snap` (the snapshot in force with new key material) in force as the next
    /// generation on every worker; the barrier says when every worker has it.
    fn publish(&mut self, mut snap: Snapshot) -> Barrier {
        self.generation += 1;
        snap.generation = self.generation;
        self.workers
            .broadcast(|| ToWorker::Snapshot(Box::new(snap.clone())));
        let barrier = self.workers.start_barrier();
        self.status.generation = self.generation;
        let mut v = lock_view(&self.view);
        v.snapshot = Some(snap);
        v.status = self.status.clone();
        barrier
    }

    /// Points the access log writer at the applied config's path when it moved. (Adding or
    /// removing `[access_log]` needs a restart: no writer runs, or workers keep theirs.)
    fn retarget_access_log(&mut self, snap: &Snapshot) {
        let (Some(writer), Some(new)) = (&self.access_log, &snap.access_log) else {
            return;
        };
        if self.log_target.as_ref() != Some(&new.target) {
            writer.retarget(new.target.clone());
            self.log_target = Some(new.target.clone());
        }
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

/// Puts the key material held (`keys`: the API key store; `remote`: the keys fetched for each
/// remote key set) into `snap`, built from the config file in force: a model registry change
/// keeps `[auth]` as it is, so no store is opened and the overlays of the last reload stay.
fn carry_key_material(
    keys: Option<&keys::KeysState>,
    remote: &[(SourceSettings, Vec<Key>)],
    snap: &mut Snapshot,
) -> Result<(), Vec<ConfigProblem>> {
    let Some(auth) = snap.auth.as_mut() else {
        return Ok(());
    };
    if let (Some(k), true) = (keys, auth.api_key_settings().is_some()) {
        auth.set_api_keys(k.records())?;
    }
    for (source, set) in remote {
        auth.set_remote_keys(source, set.clone());
    }
    Ok(())
}

/// One `  - loss` line per loss.
fn bullets(lowered: &[Loss]) -> String {
    lowered
        .iter()
        .map(|l| format!("  - {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RevokedKind;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "up"
endpoints = ["127.0.0.1:9000"]
[[routes]]
path = "/v1/*rest"
upstream = "up"
"#;
    const AUTH: &str = r#"
[auth]
[[auth.keys]]
kid = "k"
alg = "HS256"
secret = { value = "0123456789abcdef0123456789abcdef" }
"#;

    /// A config file in a fresh temp dir.
    fn config_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-control-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A fake worker that says when a barrier arrives (`held`) and answers it only once
    /// `release` says so.
    fn held_worker(held: Sender<()>, release: Receiver<()>) -> (Sender<ToWorker>, JoinHandle<()>) {
        let (tx, rx) = crossbeam_channel::unbounded::<ToWorker>();
        let t = std::thread::spawn(move || {
            while let Ok(m) = rx.recv() {
                match m {
                    ToWorker::Barrier(reply) => {
                        let _ = held.send(());
                        let _ = release.recv();
                        let _ = reply.send(0);
                    }
                    ToWorker::Shutdown => return,
                    _ => {}
                }
            }
        });
        (tx, t)
    }

    #[test]
    fn the_starting_snapshot_is_the_first_reloads_baseline() {
        let path = config_file("baseline", &format!("{BASE}{AUTH}"));
        let snap = config::load(&path, 1).unwrap();
        let control = Control::spawn(Start::new(path.clone(), snap, Workers::default())).unwrap();
        assert!(lock_view(&control.view()).snapshot.is_some());
        std::fs::write(&path, BASE).unwrap();
        let r = control.reload_report().unwrap();
        assert_eq!(r.generation, 2);
        assert_eq!(r.lowered, [Loss::AuthRemoved]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_revocation_waiting_for_a_worker_does_not_hold_up_a_reload() {
        let path = config_file("revoke-reload", BASE);
        let snap = config::load(&path, 1).unwrap();
        let (release, released) = crossbeam_channel::unbounded();
        let (held, holding) = crossbeam_channel::unbounded();
        let (inbox, worker) = held_worker(held, released);
        let workers = Workers::unrung(vec![inbox]);
        let control = Control::spawn(Start::new(path.clone(), snap, workers.clone())).unwrap();
        let tx = control.sender();
        let r = Revoked::new(RevokedKind::Jti, "t-1", unix_now() + 60).unwrap();
        let revoking = std::thread::spawn(move || revoke_via(&tx, r));
        // The control thread has sent the revocation and its barrier, which the worker holds;
        // it serves a reload anyway.
        holding.recv().unwrap();
        assert_eq!(control.reload().unwrap(), 2);
        assert!(
            !revoking.is_finished(),
            "the revocation waits for the worker"
        );
        release.send(()).unwrap();
        assert_eq!(revoking.join().unwrap(), Ok(()));
        drop(control);
        workers.broadcast(|| ToWorker::Shutdown);
        worker.join().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
