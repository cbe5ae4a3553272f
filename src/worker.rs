//! Everything one worker owns, in one place: its snapshot, upstream pools, metrics, quota
//! shard, breaker view, revocations, scratch buffers and the drain signal. A worker thread
//! builds one [`Worker`] and keeps it in an `Rc`; every stage of the data path borrows what it
//! needs from it. Nothing here is shared with another thread: messages from the control plane
//! arrive over the inbox ([`crate::inbox::ToWorker`]) and are applied by [`Worker::apply`].

pub mod drain;
pub mod lease;
pub mod nudge;
pub mod spin;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::auth::Revocations;
use crate::config::Snapshot;
use crate::inbox::{ToCoord, ToWorker, UnknownKid};
use crate::metrics::{Driver, WorkerMetrics};
use crate::pool::Pools;
use crate::quota::QuotaShard;

pub use drain::{Drain, EXPIRE_EVERY, HANDOVER_GRACE};
pub use lease::LeaseDesk;
pub use nudge::Nudge;

/// What a worker is connected to, handed over by the engine that starts it.
pub struct Links {
    pub inbox: Receiver<ToWorker>,
    pub coord: Sender<ToCoord>,
    /// Process-wide zero of quota time.
    pub epoch: Instant,
    /// That zero in UNIX milliseconds (on a slot boundary; see `quota::shared_epoch`).
    pub epoch_unix_ms: u64,
    /// Per-process random prefix of request ids.
    pub prefix: u32,
    pub log: Option<crate::access_log::WorkerLog>,
    /// This worker's tracer, when `[tracing]` is configured.
    pub tracer: Option<crate::trace::WorkerTracer>,
    /// Lease answers from the coordination thread (see [`lease`]).
    pub quota_answers: Receiver<crate::quota::FromCoordinator>,
    /// Revocations in force at start (the revocation file's entries).
    pub revoked: Revocations,
    /// The spend thread, when spend or budgets are configured.
    pub spend: Option<Sender<crate::inbox::ToSpend>>,
    /// Where to say that a token named an unknown key id (see [`UnknownKid`]).
    pub key_hints: Option<Sender<UnknownKid>>,
    /// What the control plane rings after sending to this worker (see `inbox::bell`); taken
    /// by the worker's thread, which listens on it.
    pub chime: Option<crate::inbox::Chime>,
}

/// Everything one worker owns. Lives in an `Rc` on the worker thread; never shared.
pub struct Worker {
    pub id: usize,
    pub snapshot: RefCell<Rc<Snapshot>>,
    pub pools: RefCell<Pools>,
    pub metrics: RefCell<WorkerMetrics>,
    pub drain: Drain,
    /// Open client connections.
    pub conns: Cell<usize>,
    /// Request id generation: a per-process random prefix, the worker id and a counter.
    req_prefix: u32,
    req_seq: Cell<u64>,
    /// What the busy poll watches (`server.busy_poll_us`; see [`spin`]).
    pub activity: spin::Activity,
    /// This worker's access log buffer, when `[access_log]` is configured.
    pub access_log: RefCell<Option<crate::access_log::WorkerLog>>,
    /// This worker's tracer, when `[tracing]` was configured at start.
    pub tracer: RefCell<Option<crate::trace::WorkerTracer>>,
    /// Request heads and buffers for reuse (see `server`).
    pub slots: RefCell<Vec<Box<crate::slot::RequestSlot>>>,
    /// This worker's inbox from the control plane.
    inbox: Receiver<ToWorker>,
    /// The coordination thread.
    coord: Sender<ToCoord>,
    /// Process-wide zero of quota time.
    epoch: Instant,
    /// That zero in UNIX milliseconds.
    epoch_unix_ms: u64,
    /// This core's quota leases.
    pub quota: RefCell<QuotaShard>,
    quota_out: RefCell<Vec<crate::quota::ToCoordinator>>,
    /// Lease answers from the coordinator, and the requests waiting for one.
    pub lease: LeaseDesk,
    /// Wakes the inbox loop (see [`nudge`]).
    pub nudge: Rc<Nudge>,
    /// This core's copy of the revocation list.
    pub revocations: RefCell<Revocations>,
    /// Reused JWT decode buffers.
    pub auth_scratch: RefCell<crate::auth::Scratch>,
    /// This core's random source for weighted splits.
    pub rng: RefCell<crate::route::WorkerRng>,
    /// This core's circuit breakers and retry budgets.
    pub resilience: RefCell<crate::breaker::local::WorkerResilience>,
    /// This core's own TLS configs, rebuilt from each snapshot (see [`crate::tls`]).
    pub tls: RefCell<crate::tls::WorkerTls>,
    /// This core's spend since its last batch to the spend thread.
    pub spend: RefCell<crate::spend::SpendShard>,
    spend_tx: Option<Sender<crate::inbox::ToSpend>>,
    /// This core's endpoint load view and round-robin positions (see `balance`).
    pub balance: RefCell<crate::balance::WorkerBalance>,
    key_hints: Option<Sender<UnknownKid>>,
}

impl Worker {
    /// The snapshot to run one request on; it stays valid even if a new one arrives.
    #[inline]
    pub fn current(&self) -> Rc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Milliseconds since the process-wide quota epoch.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The UNIX time (ms) of quota time `quota_ms`: exact for the instants the calendar of
    /// budgets names (period starts), which the quota clock counts from the same epoch.
    pub fn unix_ms_of(&self, quota_ms: u64) -> u64 {
        self.epoch_unix_ms.saturating_add(quota_ms)
    }

    /// Sends the quota shard's queued lease requests and returns to the coordinator.
    pub fn flush_quota(&self) {
        let mut out = self.quota_out.borrow_mut();
        self.quota.borrow_mut().drain_requests(&mut out);
        for m in out.drain(..) {
            let _ = self.coord.send(ToCoord::Quota(m));
        }
    }

    /// Applies the coordinator's lease answers that have arrived (grants, denials, recalls)
    /// and wakes the requests waiting for one.
    pub fn take_quota_answers(&self) {
        self.lease.apply(&self.quota, self.now_ms());
    }

    /// Sends what this core's spend shard accumulated to the spend thread (nothing when
    /// nothing accumulated). Without a spend thread (a reload added `[spend]` or `[budgets]`
    /// to a process that started with neither: restart-only) what accumulated is dropped, so
    /// the shard stays bounded until the restart.
    pub fn flush_spend(&self) {
        let mut batch = crate::spend::SpendBatch::default();
        self.spend.borrow_mut().take_batch(&mut batch);
        if let (Some(tx), false) = (&self.spend_tx, batch.is_empty()) {
            let _ = tx.send(crate::inbox::ToSpend::Batch(batch));
        }
    }

    /// Sends the breakers' pending outcome reports to the coordination thread when one holds
    /// a failure or a probe, or when `successes_due`. Reports of
    /// successes alone are held back (up to [`crate::runtime::BREAKER_SUCCESS_FLUSH`]): each
    /// send wakes the coordination thread, and on a healthy fleet that was every tick of every
    /// worker.
    pub fn flush_breakers(&self, successes_due: bool) {
        let mut resilience = self.resilience.borrow_mut();
        if !successes_due && !resilience.has_urgent_reports() {
            return;
        }
        let coord = &self.coord;
        resilience.drain_reports(|r| {
            let _ = coord.send(ToCoord::Breaker(r));
        });
    }

    /// Records how an upstream attempt under `permit` ended; a failure or a probe's outcome
    /// nudges the inbox loop, so the decider hears it now, not at the next tick. The clock is
    /// read only when there is a permit (see [`Self::record_outcome_at`]).
    #[inline]
    pub fn record_outcome(
        &self,
        permit: Option<crate::breaker::Permit>,
        outcome: crate::breaker::Outcome,
    ) {
        let mut r = self.resilience.borrow_mut();
        r.record(permit, outcome);
        self.nudge_if_urgent(&r);
    }

    /// [`Self::record_outcome`] at `now` (a clock read the caller already made).
    #[inline]
    pub fn record_outcome_at(
        &self,
        permit: Option<crate::breaker::Permit>,
        outcome: crate::breaker::Outcome,
        now: Instant,
    ) {
        let mut r = self.resilience.borrow_mut();
        r.record_at(permit, outcome, now);
        self.nudge_if_urgent(&r);
    }

    #[inline]
    fn nudge_if_urgent(&self, r: &crate::breaker::local::WorkerResilience) {
        if r.has_urgent_reports() {
            self.nudge.nudge();
        }
    }

    /// Nudges the inbox loop when the quota shard has messages for the coordinator (a lease
    /// prefetch, a return): they should not wait for the loop's long tick.
    #[inline]
    pub fn nudge_if_quota_outgoing(&self) {
        if self.quota.borrow().has_outgoing() {
            self.nudge.nudge();
        }
    }

    /// Sends the endpoint load changes since the last call to the coordination thread (nothing
    /// when every upstream is on round-robin).
    pub fn flush_balance(&self) {
        if let Some(report) = self.balance.borrow_mut().drain() {
            let _ = self.coord.send(ToCoord::Load(report));
        }
    }

    /// Asks the control plane to fetch the remote key sets again: a token named a key id no
    /// key has. Never blocks; a hint already waiting is enough.
    pub fn ask_for_remote_keys(&self) {
        if let Some(tx) = &self.key_hints {
            let _ = tx.try_send(UnknownKid);
        }
    }

    /// Handles every message waiting in the inbox (the inbox loop calls it between requests).
    pub fn poll_inbox(&self) {
        while let Ok(msg) = self.inbox.try_recv() {
            self.apply(msg);
        }
    }

    /// Applies one message from the control plane to this worker's state.
    pub fn apply(&self, msg: ToWorker) {
        match msg {
            ToWorker::Snapshot(s) => {
                self.metrics.borrow_mut().config_generation = s.generation;
                self.metrics.borrow_mut().set_routes(
                    s.generation,
                    s.metrics.per_route,
                    s.metrics.label_series,
                    &s.router,
                );
                self.pools.borrow_mut().retain_endpoints(&s);
                self.resilience
                    .borrow_mut()
                    .set_policies(&s.resilience, Instant::now());
                self.balance.borrow_mut().set_table(&s.balance);
                // Adding or removing `[access_log]` needs a restart; its rate reloads.
                if let (Some(log), Some(a)) = (self.access_log.borrow_mut().as_mut(), &s.access_log)
                {
                    log.set_sample_rate(a.sample_rate);
                }
                // Likewise `[tracing]`: its exporter is set up at start; its ratio reloads.
                if let (Some(t), Some(tr)) = (self.tracer.borrow_mut().as_mut(), &s.tracing) {
                    t.set_sample_ratio(tr.sample_ratio);
                }
                if self.id == 0 {
                    // One worker tells the decider; every worker got the same snapshot.
                    let table = Box::new(s.resilience.clone());
                    let _ = self.coord.send(ToCoord::Resilience(table));
                    let plan = Box::new(s.balance.fleet_plan(&s.upstreams));
                    let _ = self.coord.send(ToCoord::Balance(plan));
                }
                *self.tls.borrow_mut() = worker_tls(&s);
                *self.snapshot.borrow_mut() = Rc::new(*s);
            }
            ToWorker::Collect(reply) => {
                let mut m = self.metrics.borrow().clone();
                m.connections_open = self.conns.get() as u64;
                m.access_log_dropped = self.access_log.borrow().as_ref().map_or(0, |l| l.dropped);
                let (hits, misses) = self.auth_scratch.borrow().cache.counts();
                if hits + misses > 0 {
                    let family = &crate::metrics::counters::AUTH_TOKEN_CACHE;
                    m.counters.add(family, &["hit"], hits);
                    m.counters.add(family, &["miss"], misses);
                }
                if let Some(t) = self.tracer.borrow().as_ref() {
                    let (exporter, handover) = t.counters();
                    (m.trace, m.trace_handover_dropped) = (Some(exporter), handover);
                }
                let _ = reply.send(m);
            }
            ToWorker::CollectDeployments(labels, reply) => {
                let _ = reply.send(self.metrics.borrow().deployment_counts(&labels));
            }
            ToWorker::Revoke(r) => self.revocations.borrow_mut().insert(r),
            ToWorker::Breaker(u) => self.resilience.borrow_mut().apply(&u),
            ToWorker::Health(u) => self.resilience.borrow_mut().apply_health(&u),
            ToWorker::Fleet(v) => self.balance.borrow_mut().set_fleet(v),
            ToWorker::Barrier(reply) => {
                let _ = reply.send(self.id);
            }
            ToWorker::Shutdown => self.drain.start(),
            ToWorker::HandOver => self.drain.start_handover(Instant::now()),
        }
    }

    /// The trace of a request whose head is `head` (its bytes in `buf`; `None`: the head could
    /// not be read). Inactive (all-zero ids) when tracing is off.
    #[inline]
    pub fn begin_trace(
        &self,
        head: Option<(&crate::http::RequestHead, &[u8])>,
    ) -> crate::trace::TraceCtx {
        let mut tracer = self.tracer.borrow_mut();
        let Some(t) = tracer.as_mut() else {
            return crate::trace::TraceCtx::default();
        };
        let parent = head.and_then(|(h, b)| crate::trace::parent_of(h, b));
        let mut ctx = t.begin(parent);
        (ctx.method, ctx.minor_version) = match head {
            Some((h, _)) => (crate::trace::method_name(&h.method), h.minor_version),
            None => ("_OTHER", 1),
        };
        ctx
    }

    /// Requests started on this worker so far.
    pub fn requests_started(&self) -> u64 {
        self.req_seq.get()
    }

    /// Writes a fresh request id into `out`: `<prefix, 8 hex digits>-<worker>-<sequence>`, in
    /// lower-case hexadecimal (written without `core::fmt`, see [`request_id`]).
    pub fn next_request_id(&self, out: &mut String) {
        let n = self.req_seq.get() + 1;
        self.req_seq.set(n);
        self.activity.note();
        request_id(out, self.req_prefix, self.id as u64, n);
    }
}

/// Writes `{prefix:08x}-{worker:x}-{seq:x}` into `out` (replacing what was there).
fn request_id(out: &mut String, prefix: u32, worker: u64, seq: u64) {
    out.clear();
    push_hex(out, u64::from(prefix), 8);
    out.push('-');
    push_hex(out, worker, 1);
    out.push('-');
    push_hex(out, seq, 1);
}

/// Appends `n` in lower-case hexadecimal, zero-padded to at least `width` digits (≤ 16).
fn push_hex(out: &mut String, n: u64, width: usize) {
    let (digits, start) = crate::http::write::hex_digits(n, width);
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// This worker's TLS configs for `snap`: new certificates reach new connections; open ones
/// keep the config they started with.
fn worker_tls(snap: &Snapshot) -> crate::tls::WorkerTls {
    crate::tls::WorkerTls::build(
        snap.server.tls.as_ref(),
        snap.upstream_tls.iter().map(Option::as_ref),
    )
}

impl Worker {
    /// The state of worker `id` starting on `snapshot` with `driver`.
    pub fn new(id: usize, snapshot: Snapshot, driver: Driver, links: Links) -> Worker {
        let mut metrics = WorkerMetrics::new(id, driver);
        metrics.config_generation = snapshot.generation;
        metrics.set_routes(
            snapshot.generation,
            snapshot.metrics.per_route,
            snapshot.metrics.label_series,
            &snapshot.router,
        );
        let workers = snapshot.server.cores.len().max(1) as u32;
        let busy_poll = snapshot.server.busy_poll;
        let balance = crate::balance::WorkerBalance::new(id, &snapshot.balance);
        let resilience = crate::breaker::local::WorkerResilience::new(
            id as u32,
            workers,
            &snapshot.resilience,
            Instant::now(),
        );
        let nudge = Rc::new(Nudge::default());
        Worker {
            id,
            tls: RefCell::new(worker_tls(&snapshot)),
            snapshot: RefCell::new(Rc::new(snapshot)),
            pools: RefCell::new(Pools::default()),
            metrics: RefCell::new(metrics),
            drain: Drain::default(),
            conns: Cell::new(0),
            req_prefix: links.prefix,
            req_seq: Cell::new(0),
            activity: spin::Activity::new(busy_poll),
            access_log: RefCell::new(links.log),
            tracer: RefCell::new(links.tracer),
            slots: RefCell::new(Vec::new()),
            inbox: links.inbox,
            coord: links.coord,
            epoch: links.epoch,
            epoch_unix_ms: links.epoch_unix_ms,
            quota: RefCell::new(QuotaShard::new(id as u16)),
            lease: LeaseDesk::new(links.quota_answers, nudge.clone()),
            nudge,
            quota_out: RefCell::new(Vec::new()),
            revocations: RefCell::new(links.revoked),
            auth_scratch: RefCell::new(crate::auth::Scratch::default()),
            rng: RefCell::new(crate::route::WorkerRng::for_worker(id)),
            resilience: RefCell::new(resilience),
            spend: RefCell::new(crate::spend::SpendShard::default()),
            spend_tx: links.spend,
            balance: RefCell::new(balance),
            key_hints: links.key_hints,
        }
    }
}

#[cfg(test)]
mod request_id_tests {
    use super::request_id;

    #[test]
    fn request_ids_are_what_fmt_writes() {
        let mut out = String::from("old");
        for prefix in [0u32, 1, 0xabc, 0x1234_5678, u32::MAX] {
            for worker in [0u64, 1, 15, 16, 255] {
                for seq in [0u64, 1, 9, 10, 0xffff, 1 << 40, u64::MAX] {
                    request_id(&mut out, prefix, worker, seq);
                    assert_eq!(out, format!("{prefix:08x}-{worker:x}-{seq:x}"));
                }
            }
        }
    }
}
