//! The thread-per-core engine: one pinned worker thread per configured core, each with its
//! own monoio runtime, SO_REUSEPORT listener (and one for TLS when `[server.tls]` is set),
//! snapshot copy, upstream pools and metrics.
//!
//! The engine owns the worker threads; the control plane talks to each worker only through
//! its crossbeam inbox ([`ToWorker`]), to all of them through [`Workers`]. A worker drains its
//! inbox on a short timer tick, never inside the request path.
//!
//! # Driver
//!
//! Each worker tries io_uring first (unless `server.driver = "legacy"`); when the ring cannot
//! be set up (old kernel, seccomp, `kernel.io_uring_disabled`) it logs one line with the reason
//! and runs monoio's legacy epoll driver instead (unless `driver = "io_uring"` forces it, in
//! which case the worker fails to start). The driver in use is part of the worker's metrics.
//!
//! # Shutdown
//!
//! [`Engine::shutdown`] tells every worker to drain: it stops accepting, closes idle
//! keep-alive connections, lets requests in flight finish (their responses carry
//! `Connection: close`), and exits when none are left or the drain timeout passes.
//! [`Engine::hand_over`] is that drain after a binary upgrade gave the listening sockets to a
//! new process (`upgrade`): idle keep-alive connections stay open for
//! [`HANDOVER_GRACE`](crate::worker::HANDOVER_GRACE) so their next request is answered (with
//! `Connection: close`) instead of meeting a close.

mod inbox_loop;
pub mod listen;
mod spin;
mod trim;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::auth::{Revocations, Revoked};
use crate::config::{DriverChoice, Snapshot};
use crate::control::coord::CoordThread;
use crate::inbox::{ToCoord, Unconfirmed, UnknownKid, Workers, COLLECT_TIMEOUT};
use crate::metrics::{Driver, WorkerMetrics};
use crate::worker::Links;

pub use crate::inbox::ToWorker;
pub use crate::time::unix_now;
pub use crate::worker::Worker;
pub use inbox_loop::{BREAKER_SUCCESS_FLUSH, QUOTA_TICK, REVOCATION_PURGE};
pub use listen::Sockets;

/// How often a worker's inbox loop runs when nothing wakes it. Messages from the control
/// plane ring the worker's bell and requests nudge the loop (see `inbox::bell`,
/// `worker::nudge`), so what the tick itself runs is periodic work with intervals of 100 ms
/// or more: the quota tick, spend flushes, keep-alive expiry, success-only breaker reports,
/// access log and span batches. A long tick is what keeps a request's sleep free of a near
/// timer (see the README, "io_uring").
pub const INBOX_TICK: Duration = Duration::from_millis(100);
/// How often it runs while something wants it sooner: a balance policy that reads load (the
/// fleet view merges reports every `balance::FLEET_INTERVAL`), a request waiting for a lease
/// (in case a ring is lost: [`crate::worker::lease::LEASE_POLL`]), or a drain (the last
/// connection's close ends the worker).
pub const INBOX_SHORT_TICK: Duration = Duration::from_millis(5);
/// io_uring submission queue entries per worker, unless `[server.io_uring] entries` says.
pub const URING_ENTRIES: u32 = crate::ring_config::DEFAULT_ENTRIES;
/// Listen backlog per worker socket.
pub const LISTEN_BACKLOG: i32 = 4096;

/// A running engine: the worker threads and their inboxes.
pub struct Engine {
    inboxes: Workers,
    threads: Vec<JoinHandle<()>>,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    coord: Option<CoordThread>,
    /// The access log writer; dropped (flushed) after the workers exit.
    access_log: Option<crate::access_log::Writer>,
    /// The span exporter; dropped (flushed) after the workers exit.
    exporter: Option<crate::trace::Exporter>,
    /// The spend thread; dropped (persisting) after the workers exit.
    spend: Option<crate::control::spend::SpendThread>,
    /// Workers' unknown-kid hints, for the control plane's JWKS thread.
    key_hints: Receiver<UnknownKid>,
    /// Duplicates of the workers' listening sockets, until taken for a binary upgrade.
    sockets: Option<Sockets>,
    /// The workers were told to hand over (see [`Engine::hand_over`]).
    handed_over: bool,
}

impl Engine {
    /// Binds the listeners and starts one worker per configured core. Returns once every
    /// worker runs, or the first worker's start error.
    pub fn start(snapshot: Snapshot) -> io::Result<Engine> {
        Self::start_with_revocations(snapshot, &[])
    }

    /// [`Engine::start`] with the revocations in force (the revocation file's entries): every
    /// worker refuses them from its first request.
    pub fn start_with_revocations(snapshot: Snapshot, revoked: &[Revoked]) -> io::Result<Engine> {
        Self::start_adopting(snapshot, revoked, Sockets::default())
    }

    /// [`Engine::start_with_revocations`] on the listening sockets an older process handed
    /// over (see [`listen`]): those still on the configured addresses are accepted from, and
    /// the rest are closed here (the older process closes them last).
    pub fn start_adopting(
        snapshot: Snapshot,
        revoked: &[Revoked],
        adopted: Sockets,
    ) -> io::Result<Engine> {
        let n = snapshot.server.cores.len();
        let listeners =
            listen::per_worker(snapshot.server.listen, n, adopted.plain, "server.listen")?;
        let addr = listeners[0][0].local_addr()?;
        let mut tls_listeners: Vec<Vec<std::net::TcpListener>> = match &snapshot.server.tls {
            Some(t) => listen::per_worker(t.listen, n, adopted.tls, "server.tls.listen")?,
            None => listeners.iter().map(|_| Vec::new()).collect(),
        };
        let tls_addr = match tls_listeners.first().and_then(|t| t.first()) {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let sockets = Sockets {
            plain: listeners
                .iter()
                .flatten()
                .map(|l| l.try_clone())
                .collect::<io::Result<_>>()?,
            tls: tls_listeners
                .iter()
                .flatten()
                .map(|l| l.try_clone())
                .collect::<io::Result<_>>()?,
        };
        let prefix = random_u32();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(listeners.len());
        let inboxes: Vec<_> = listeners
            .iter()
            .map(|_| crossbeam_channel::unbounded())
            .collect();
        let (bells, chimes): (Vec<_>, Vec<_>) = listeners
            .iter()
            .map(|_| crate::inbox::bell::pair())
            .collect::<io::Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let (answer_txs, answer_rxs): (Vec<_>, Vec<_>) = listeners
            .iter()
            .map(|_| crossbeam_channel::unbounded())
            .unzip();
        // Slot-aligned to Unix time, so gateways sharing a Redis quota agree on slots.
        let (epoch, epoch_unix_ms) = crate::quota::shared_epoch();
        let workers = Workers::new(
            inboxes
                .iter()
                .map(|(tx, _)| tx.clone())
                .zip(bells)
                .collect(),
        );
        let (spend, seeds) = start_spend(&snapshot)?;
        let tz = snapshot.budgets.as_ref().map(|b| b.tz.clone());
        let calendar =
            crate::quota::Calendar::new(tz.unwrap_or(jiff::tz::TimeZone::UTC), epoch_unix_ms);
        let coord = CoordThread::spawn(
            workers.clone(),
            answer_txs,
            (epoch, calendar),
            (
                &snapshot.resilience,
                &snapshot.balance.fleet_plan(&snapshot.upstreams),
            ),
            snapshot.quota.as_ref(),
            seeds,
        )?;
        let access_log = match &snapshot.access_log {
            Some(a) => Some(crate::access_log::Writer::start(a)?),
            None => None,
        };
        let exporter = match &snapshot.tracing {
            Some(t) => Some(crate::trace::Exporter::start(t)?),
            None => None,
        };
        let (hint_tx, key_hints) = crossbeam_channel::bounded(crate::inbox::KEY_HINT_CAPACITY);
        let mut threads = Vec::new();
        let channels = inboxes.into_iter().zip(answer_rxs).zip(chimes);
        for (id, (listener, (((_, rx), answers), chime))) in
            listeners.into_iter().zip(channels).enumerate()
        {
            let snap = snapshot.clone();
            let ready = ready_tx.clone();
            let links = Links {
                inbox: rx,
                coord: coord.sender(),
                epoch,
                epoch_unix_ms,
                prefix,
                log: access_log
                    .as_ref()
                    .zip(snapshot.access_log.as_ref())
                    .and_then(|(w, s)| w.worker_log(id, s)),
                tracer: exporter.as_ref().and_then(|e| e.worker_tracer(id)),
                revoked: revoked.iter().cloned().collect::<Revocations>(),
                quota_answers: answers,
                spend: spend
                    .as_ref()
                    .map(crate::control::spend::SpendThread::sender),
                key_hints: Some(hint_tx.clone()),
                chime: Some(chime),
            };
            let listeners = Listeners {
                plain: listener,
                tls: std::mem::take(&mut tls_listeners[id]),
            };
            let thread = std::thread::Builder::new()
                .name(format!("shardgate-w{id}"))
                .spawn(move || worker_thread(id, snap, listeners, links, ready))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut engine = Engine {
            inboxes: workers,
            threads,
            addr,
            tls_addr,
            coord: Some(coord),
            access_log,
            exporter,
            spend,
            key_hints,
            sockets: Some(sockets),
            handed_over: false,
        };
        for _ in 0..engine.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    engine.shutdown();
                    return Err(e);
                }
                Err(_) => {
                    engine.shutdown();
                    return Err(io::Error::other("a worker exited during start"));
                }
            }
        }
        Ok(engine)
    }

    /// The address the workers listen on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the TLS listener, when `[server.tls]` is set (useful with port 0).
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn worker_count(&self) -> usize {
        self.inboxes.len()
    }

    /// Every worker's inbox, for the control plane.
    pub fn inboxes(&self) -> Workers {
        self.inboxes.clone()
    }

    /// The access log writer's handle for a new target on reload (`None`: no access log).
    pub fn access_log(&self) -> Option<crate::access_log::Retarget> {
        self.access_log
            .as_ref()
            .map(crate::access_log::Writer::retarget_handle)
    }

    /// The workers' unknown-kid hints (see [`UnknownKid`]), for the control plane.
    pub fn key_hints(&self) -> Receiver<UnknownKid> {
        self.key_hints.clone()
    }

    /// Sends a new snapshot to every worker.
    pub fn apply(&self, snapshot: &Snapshot) {
        self.inboxes
            .broadcast(|| ToWorker::Snapshot(Box::new(snapshot.clone())));
    }

    /// Tells every worker to refuse a revoked token from now on (persisting it is the control
    /// plane's job) and waits until each has applied it (at most
    /// [`REVOKE_APPLY_TIMEOUT`](crate::control::REVOKE_APPLY_TIMEOUT)).
    pub fn revoke(&self, r: &Revoked) -> Result<(), Unconfirmed> {
        self.inboxes.broadcast(|| ToWorker::Revoke(r.clone()));
        self.inboxes.barrier(crate::control::REVOKE_APPLY_TIMEOUT)
    }

    /// Collects a copy of every worker's metrics (waits up to [`COLLECT_TIMEOUT`]).
    pub fn collect(&self) -> Vec<WorkerMetrics> {
        self.inboxes.collect(COLLECT_TIMEOUT)
    }

    /// The coordination thread's inbox (breaker snapshots for the admin API).
    pub fn coord_sender(&self) -> Option<Sender<ToCoord>> {
        self.coord.as_ref().map(CoordThread::sender)
    }

    /// The spend thread, for `/stats` and `/metrics` (`None`: no spend or budgets configured).
    pub fn spend_sender(&self) -> Option<Sender<crate::inbox::ToSpend>> {
        self.spend
            .as_ref()
            .map(crate::control::spend::SpendThread::sender)
    }

    /// Every endpoint's circuit breaker as the coordination thread decided it (waits up to one
    /// second). Endpoint ids: `snapshot.resilience.locate`.
    pub fn breakers(&self) -> Option<crate::breaker::BreakerSnapshot> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let coord = self.coord.as_ref()?;
        coord.sender().send(ToCoord::BreakerSnapshot(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(1)).ok()
    }

    /// Duplicates of the workers' listening sockets, for a binary upgrade (see `upgrade`);
    /// `None` after the first call. Nothing else keeps the sockets open once the workers have
    /// closed theirs.
    pub fn take_sockets(&mut self) -> Option<Sockets> {
        self.sockets.take()
    }

    /// Another process accepts on the workers' sockets now: every worker stops accepting
    /// (taking the connection an accept in flight got), answers the requests on its
    /// connections with `Connection: close` for [`HANDOVER_GRACE`](crate::worker::HANDOVER_GRACE),
    /// then drains. [`Engine::shutdown`] then only waits for that drain.
    pub fn hand_over(&mut self) {
        self.sockets = None;
        self.handed_over = true;
        self.inboxes.broadcast(|| ToWorker::HandOver);
    }

    /// Drains every worker and waits for the threads to exit.
    pub fn shutdown(&mut self) {
        self.sockets = None;
        if !self.handed_over {
            self.inboxes.broadcast(|| ToWorker::Shutdown);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.coord.take();
        self.access_log = None;
        self.exporter = None;
        // After the workers: their last batches are in the final write.
        self.spend = None;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The spend thread `[spend]`/`[budgets]` ask for, on the store the config names (Redis
/// with the Redis quota backend, else the registry database with `[registry]`, else
/// `spend.file`, else memory), and the budget use it
/// loaded (to seed the local coordinator's calendar windows).
#[allow(clippy::type_complexity)]
fn start_spend(
    snap: &Snapshot,
) -> io::Result<(
    Option<crate::control::spend::SpendThread>,
    Vec<(crate::quota::QuotaKey, u64, u64)>,
)> {
    use crate::spend::store::{FileStore, MemoryStore, RedisStore};
    use crate::spend::SpendStore;
    if snap.spend.is_none() && snap.budgets.is_none() {
        return Ok((None, Vec::new()));
    }
    let interval = snap
        .spend
        .as_ref()
        .map_or(crate::spend::DEFAULT_FLUSH_INTERVAL, |s| s.flush_interval);
    let redis = snap.quota.as_ref().and_then(|q| match q.backend {
        crate::quota::QuotaBackend::Redis => q.redis.as_ref(),
        crate::quota::QuotaBackend::Local => None,
    });
    let file = snap
        .spend
        .as_ref()
        .and_then(|s| Some((s.file.clone()?, &s.currency)));
    let registry = snap.registry.as_ref().map(|r| r.path.as_path());
    let (mut store, shared): (Box<dyn SpendStore>, bool) = match (redis, registry, file) {
        (Some(r), _, _) => (
            Box::new(RedisStore::new(r).map_err(io::Error::other)?),
            true,
        ),
        (None, Some(db), _) => (
            Box::new(
                crate::spend::sqlite::SqliteStore::open(db)
                    .map_err(|e| io::Error::other(format!("spend: {e}")))?,
            ),
            false,
        ),
        (None, None, Some((path, currency))) => (Box::new(FileStore::new(path, currency)), false),
        (None, None, None) => (Box::new(MemoryStore), false),
    };
    let ledger = match store.load() {
        Ok(l) => l,
        // Redis only adds: starting without its totals loses nothing (they show again once
        // persisted deltas come back with them).
        Err(e) if shared => {
            eprintln!(
                "shardgate: spend: cannot read {} ({e}); starting from zero",
                store.describe()
            );
            crate::spend::Ledger::default()
        }
        Err(e) => {
            return Err(io::Error::other(format!(
                "spend: cannot read {}: {e}",
                store.describe()
            )))
        }
    };
    let seeds = ledger
        .budgets
        .iter()
        .map(|(&key, &(period, used))| (key, period, used))
        .collect();
    let currency = snap.spend.as_ref().map_or("USD", |s| s.currency.as_str());
    let thread = crate::control::spend::SpendThread::spawn(store, ledger, interval, currency)?;
    Ok((Some(thread), seeds))
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // The prefix only needs to differ between processes; fall back to the clock.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_le_bytes(b)
}

type Ready = Sender<io::Result<()>>;

/// One worker's listening sockets (more than one each when it adopted them from a process
/// with more workers, see [`listen`]).
struct Listeners {
    plain: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
}

fn worker_thread(id: usize, snapshot: Snapshot, listener: Listeners, links: Links, ready: Ready) {
    if let Some(core) = snapshot.server.cores.get(id).copied().flatten() {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            eprintln!("shardgate-w{id}: could not pin to core {core}; running unpinned");
        }
    }
    let choice = snapshot.server.driver;
    let ring = snapshot.server.io_uring;
    if choice != DriverChoice::Legacy {
        match build_uring_or_plain(id, &ring) {
            Ok(mut rt) => {
                rt.block_on(worker_main(
                    id,
                    snapshot,
                    listener,
                    links,
                    ready,
                    Driver::IoUring,
                ));
                return;
            }
            Err(e) if choice == DriverChoice::IoUring => {
                let _ = ready.send(Err(io::Error::other(format!(
                    "worker {id}: io_uring is required by server.driver but unavailable: {e}"
                ))));
                return;
            }
            // Flags an operator chose never fall back to epoll silently.
            Err(e) if ring.has_flags() => {
                let _ = ready.send(Err(io::Error::other(format!(
                    "worker {id}: the kernel refused the ring server.io_uring asks for: {e}"
                ))));
                return;
            }
            Err(e) => eprintln!(
                "shardgate-w{id}: io_uring unavailable ({e}); using the legacy epoll driver"
            ),
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(worker_main(
            id,
            snapshot,
            listener,
            links,
            ready,
            Driver::Legacy,
        )),
        Err(e) => {
            let _ = ready.send(Err(io::Error::other(format!(
                "worker {id}: cannot start runtime: {e}"
            ))));
        }
    }
}

/// A worker's io_uring runtime with the ring `ring` describes; when the kernel refuses it and
/// `coop_taskrun` is on by default only (a kernel before 5.19), the same ring without it.
fn build_uring_or_plain(
    id: usize,
    ring: &crate::ring_config::IoUringSettings,
) -> io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    build_uring(ring).or_else(|e| match ring.without_default_coop() {
        Some(plain) => build_uring(&plain).inspect(|_| {
            eprintln!(
                "shardgate-w{id}: the kernel refused IORING_SETUP_COOP_TASKRUN ({e}); \
                 running without it"
            )
        }),
        None => Err(e),
    })
}

/// A worker's io_uring runtime with the ring `ring` describes.
fn build_uring(
    ring: &crate::ring_config::IoUringSettings,
) -> io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(ring.entries)
        .uring_builder(uring_builder(ring))
        .enable_timer()
        .build()
}

/// The kernel-side ring setup `[server.io_uring]` chooses (entries go to monoio directly).
fn uring_builder(ring: &crate::ring_config::IoUringSettings) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if let Some(idle) = ring.sqpoll {
        b.setup_sqpoll(u32::try_from(idle.as_millis()).unwrap_or(u32::MAX));
    }
    if ring.coop_taskrun {
        b.setup_coop_taskrun();
    }
    if ring.single_issuer {
        b.setup_single_issuer();
    }
    if ring.defer_taskrun {
        b.setup_defer_taskrun();
    }
    b
}

async fn worker_main(
    id: usize,
    snapshot: Snapshot,
    listeners: Listeners,
    mut links: Links,
    ready: Ready,
    driver: Driver,
) {
    let all = (listeners.plain.into_iter().map(|l| (l, false)))
        .chain(listeners.tls.into_iter().map(|l| (l, true)))
        .map(|(l, tls)| monoio::net::TcpListener::from_std(l).map(|l| (l, tls)))
        .collect::<io::Result<Vec<_>>>();
    let all = match all {
        Ok(all) => all,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let drain_timeout = snapshot.server.drain_timeout;
    let chime = links.chime.take();
    let worker = Rc::new(Worker::new(id, snapshot, driver, links));
    monoio::spawn(inbox_loop::run(worker.clone()));
    let bell = chime.map(|c| monoio::spawn(inbox_loop::listen_for_bell(worker.clone(), c)));
    if !worker.activity.budget().is_zero() {
        monoio::spawn(spin::run(worker.clone()));
    }
    let _ = ready.send(Ok(()));
    let accepting: Vec<_> = all
        .into_iter()
        .map(|(l, tls)| monoio::spawn(crate::server::accept_loop(worker.clone(), l, tls)))
        .collect();
    for a in accepting {
        a.await;
    }
    // The bell stops with the accept loops; during the drain the inbox loop runs on its short
    // tick. Its read is cancelled and reaped here, so nothing is left in flight on the ring.
    if let Some(b) = bell {
        b.await;
    }
    // Stop accepting, then give requests in flight the drain window.
    let deadline = Instant::now() + drain_timeout;
    while worker.conns.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.pools.borrow_mut().clear();
    // A sleeping busy poll holds its waker in the worker: wake it so it sees the drain.
    worker.activity.note();
    worker.flush_spend();
    // Dropping the buffer sends what is left to the writer.
    worker.access_log.borrow_mut().take();
    worker.tracer.borrow_mut().take();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ring_config::IoUringSettings;

    /// A ring the kernel refuses because of the default `coop_taskrun` is built without it; a
    /// written `coop_taskrun = true` is never dropped. The kernel refuses `COOP_TASKRUN` with
    /// `SQPOLL` (`EINVAL`), a pair the config never produces, so it stands in here for an old
    /// kernel's refusal of the flag.
    #[test]
    fn only_the_default_coop_taskrun_is_dropped_when_the_kernel_refuses_it() {
        if !monoio::utils::detect_uring() {
            eprintln!("io_uring unavailable here: nothing to check");
            return;
        }
        let refused = IoUringSettings {
            sqpoll: Some(Duration::from_millis(10)),
            coop_taskrun: true,
            coop_taskrun_set: false,
            ..IoUringSettings::default()
        };
        assert!(
            build_uring(&refused).is_err(),
            "the kernel refuses sqpoll with coop_taskrun"
        );
        let mut rt = build_uring_or_plain(0, &refused).expect("the same ring without the flag");
        assert_eq!(rt.block_on(async { 7 }), 7);
        let chosen = IoUringSettings {
            coop_taskrun_set: true,
            ..refused
        };
        assert!(
            build_uring_or_plain(0, &chosen).is_err(),
            "a written flag is never dropped"
        );
        let mut rt = build_uring_or_plain(0, &IoUringSettings::default()).expect("the default");
        assert_eq!(rt.block_on(async { 8 }), 8);
    }
}
