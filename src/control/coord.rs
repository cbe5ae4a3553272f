//! The coordination thread: decisions that span cores, taken off the data path.
//!
//! Workers send it owned messages ([`ToCoord`]); it answers through each worker's inbox.
//! It runs the quota [`Coordinator`] (lease grants and returns) and the circuit breakers'
//! [`BreakerDecider`](crate::breaker::BreakerDecider) with the health-check thread
//! ([`CoordResilience`]): worker reports come in, decisions go to every worker's inbox on the
//! next tick. Every cross-core decision that must not take a lock on the data path belongs
//! here.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::breaker::table::{CoordResilience, Resilience};
use crate::breaker::{BreakerReport, BreakerSnapshot};
use crate::inbox::ToWorker;
use crate::quota::{Coordinator, FromCoordinator, ToCoordinator};

/// How often the coordinator's periodic work (quota sweeps, breaker timers, health updates)
/// runs when no message arrives. Breaker decisions wait at most this long to go out.
pub const COORD_TICK: Duration = Duration::from_millis(10);

/// Messages from workers (and the engine) to the coordination thread.
pub enum ToCoord {
    Quota(ToCoordinator),
    /// One worker's breaker outcomes for one endpoint.
    Breaker(BreakerReport),
    /// A reloaded snapshot's endpoint table and policies.
    Resilience(Box<Resilience>),
    /// Asks for every endpoint's breaker state (metrics, admin API).
    BreakerSnapshot(Sender<BreakerSnapshot>),
    Stop,
}

/// The running coordination thread.
pub struct Coord {
    tx: Sender<ToCoord>,
    thread: Option<JoinHandle<()>>,
}

impl Coord {
    /// Starts the thread for `workers` (their inboxes, in worker order); `epoch` is the
    /// process-wide zero of quota time.
    /// `table` is the first snapshot's endpoint table.
    ///
    /// `quota`: the first snapshot's `[quota]` (it picks the coordinator's backend, local or
    /// Redis); `epoch_unix_ms`: the epoch as Unix milliseconds, so several gateway processes
    /// sharing Redis agree on slot numbers.
    pub fn spawn(
        workers: Vec<Sender<ToWorker>>,
        (epoch, epoch_unix_ms): (Instant, u64),
        table: &Resilience,
        quota: Option<&crate::quota::QuotaSettings>,
    ) -> std::io::Result<Coord> {
        let coordinator = match quota {
            Some(q) => Coordinator::from_settings(workers.len(), q, epoch_unix_ms)
                .map_err(|p| std::io::Error::other(p.to_string()))?,
            None => Coordinator::new(workers.len()),
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let table = table.clone();
        let thread = std::thread::Builder::new()
            .name("shardgate-coord".into())
            .spawn(move || run(workers, epoch, table, rx, coordinator))?;
        Ok(Coord {
            tx,
            thread: Some(thread),
        })
    }

    pub fn sender(&self) -> Sender<ToCoord> {
        self.tx.clone()
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.tx.send(ToCoord::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    workers: Vec<Sender<ToWorker>>,
    epoch: Instant,
    table: Resilience,
    rx: Receiver<ToCoord>,
    quota: Coordinator,
) {
    let mut st = State {
        quota,
        breakers: CoordResilience::new(&table, Instant::now()),
        out: Vec::new(),
        epoch,
    };
    drop(table);
    loop {
        match rx.recv_timeout(COORD_TICK) {
            Ok(msg) => {
                if !st.handle(msg, &workers) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Answer everything that is already queued before sleeping again.
        while let Ok(msg) = rx.try_recv() {
            if !st.handle(msg, &workers) {
                return;
            }
        }
        for (w, reply) in st.out.drain(..) {
            if let Some(inbox) = workers.get(usize::from(w)) {
                let _ = inbox.send(ToWorker::Quota(reply));
            }
        }
        st.quota.tick(st.now_ms());
        st.breakers.tick(Instant::now(), &workers);
    }
}

/// What the thread owns.
struct State {
    quota: Coordinator,
    breakers: CoordResilience,
    out: Vec<(u16, FromCoordinator)>,
    /// Process-wide zero of quota time.
    epoch: Instant,
}

impl State {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Handles one message; `false` means stop.
    fn handle(&mut self, msg: ToCoord, workers: &[Sender<ToWorker>]) -> bool {
        match msg {
            ToCoord::Quota(m) => {
                let now = self.now_ms();
                self.quota.handle(m, now, &mut self.out);
            }
            ToCoord::Breaker(r) => self.breakers.ingest(&r, Instant::now()),
            ToCoord::Resilience(t) => self.breakers.reload(&t, Instant::now(), workers),
            ToCoord::BreakerSnapshot(reply) => {
                let _ = reply.send(self.breakers.snapshot());
            }
            ToCoord::Stop => return false,
        }
        true
    }
}
