//! The coordination thread: decisions that span cores, taken off the data path.
//!
//! Workers send it owned messages ([`ToCoord`], defined with the workers' own inbox messages
//! in [`crate::inbox`]); it answers lease requests on each worker's lease channel (see
//! [`crate::worker::lease`]) and everything else through their inboxes ([`Workers`]). It
//! runs:
//!
//! - the quota coordinator ([`QuotaCoordinator`]: lease grants and returns). The local
//!   backend runs here; the Redis backend runs on the [remote thread](super::remote), which
//!   sends its answers back as [`ToCoord::QuotaAnswers`], so this thread never waits on I/O;
//! - the circuit breakers' [`BreakerCoordinator`] (the decider and the health-check thread):
//!   worker reports come in, and the [`EndpointUpdate`]s it returns go to every worker on the
//!   next tick;
//! - the endpoint load merge ([`Fleet`], with the load-metric thread): workers' load reports
//!   come in, and the merged view goes to every worker at most every few milliseconds, only
//!   when it changed.
//!
//! Every cross-core decision that must not take a lock on the data path belongs here.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender};

use super::remote::RemoteThread;
use crate::balance::fleet::Fleet;
use crate::balance::FleetPlan;
use crate::breaker::coordinator::{BreakerCoordinator, EndpointUpdate};
use crate::breaker::table::Resilience;
pub use crate::inbox::ToCoord;
use crate::inbox::{ToWorker, Workers};
use crate::quota::{
    Calendar, FromCoordinator, QuotaCoordinator, QuotaKey, QuotaSettings, WorkerId,
};

/// How often the coordination thread's periodic work (quota sweeps, breaker timers, health
/// updates, the fleet view) runs when no message arrives while a timer needs it (else
/// [`COORD_IDLE_TICK`]). Decisions a report causes go out right after the report.
pub const COORD_TICK: Duration = Duration::from_millis(10);

/// How long the thread sleeps when no breaker timer runs, no health check or load gauge is
/// collected and no fleet change waits: only a message can change anything then, and a
/// message wakes it at once. The quota sweeps it still runs are hundreds of ms apart.
pub const COORD_IDLE_TICK: Duration = Duration::from_millis(100);

/// The running coordination thread.
pub struct CoordThread {
    tx: Sender<ToCoord>,
    thread: Option<JoinHandle<()>>,
}

impl CoordThread {
    /// Starts the thread for `workers` (`quota_answers`: each worker's lease channel, in
    /// worker order); `epoch` is the process-wide zero of quota time.
    /// `table` is the first snapshot's endpoint table and its balance's fleet plan.
    ///
    /// `quota`: the first snapshot's `[quota]` (it picks the coordinator's backend, local or
    /// Redis); the calendar's epoch in Unix milliseconds lets several gateway processes
    /// sharing Redis agree on slot numbers.
    ///
    /// `calendar`: the budgets' time zone and the epoch as UNIX ms; `seeds`: the budgets' use
    /// in their current periods as persisted (key, period start UNIX ms, count).
    pub fn spawn(
        workers: Workers,
        quota_answers: Vec<Sender<FromCoordinator>>,
        (epoch, calendar): (Instant, Calendar),
        (table, plan): (&Resilience, &FleetPlan),
        quota: Option<&QuotaSettings>,
        seeds: Vec<(QuotaKey, u64, u64)>,
    ) -> std::io::Result<CoordThread> {
        let mut coordinator = QuotaCoordinator::with_calendar(workers.len(), quota, calendar)
            .map_err(|p| std::io::Error::other(p.to_string()))?;
        coordinator.seed(seeds);
        let (tx, rx) = crossbeam_channel::unbounded();
        let leases = if coordinator.does_io() {
            let inbox = tx.clone();
            let answers = Box::new(move |a| inbox.send(ToCoord::QuotaAnswers(a)).is_ok());
            Leases::Remote(RemoteThread::spawn(coordinator, epoch, answers)?)
        } else {
            Leases::Here(coordinator)
        };
        let table = table.clone();
        let fleet = Fleet::new(workers.len(), plan);
        let thread = std::thread::Builder::new()
            .name("shardgate-coord".into())
            .spawn(move || run(workers, quota_answers, epoch, (table, fleet), rx, leases))?;
        Ok(CoordThread {
            tx,
            thread: Some(thread),
        })
    }

    pub fn sender(&self) -> Sender<ToCoord> {
        self.tx.clone()
    }
}

impl Drop for CoordThread {
    fn drop(&mut self) {
        let _ = self.tx.send(ToCoord::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where lease requests are decided.
enum Leases {
    /// The local backend, on this thread (no I/O).
    Here(QuotaCoordinator),
    /// The Redis backend, on the remote thread.
    Remote(RemoteThread),
}

/// What the thread owns.
struct State {
    workers: Workers,
    /// Each worker's lease channel.
    quota_answers: Vec<Sender<FromCoordinator>>,
    leases: Leases,
    breakers: BreakerCoordinator,
    /// Quota answers to send, in order.
    answers: Vec<(WorkerId, FromCoordinator)>,
    /// Which workers the answers being sent go to, by worker: each is rung once, after all of
    /// its answers are on its channel.
    answered: Vec<bool>,
    /// Endpoint updates to send to every worker.
    updates: Vec<EndpointUpdate>,
    /// The merged endpoint load.
    fleet: Fleet,
    /// Process-wide zero of quota time.
    epoch: Instant,
}

fn run(
    workers: Workers,
    quota_answers: Vec<Sender<FromCoordinator>>,
    epoch: Instant,
    (table, fleet): (Resilience, Fleet),
    rx: Receiver<ToCoord>,
    leases: Leases,
) {
    let n_workers = quota_answers.len();
    let mut st = State {
        workers,
        quota_answers,
        leases,
        breakers: BreakerCoordinator::new(&table, Instant::now()),
        answers: Vec::new(),
        answered: vec![false; n_workers],
        updates: Vec::new(),
        fleet,
        epoch,
    };
    drop(table);
    let mut wait = Select::new();
    wait.recv(&rx);
    loop {
        match wait_for(&mut wait, &rx, st.next_tick()) {
            Ok(msg) => {
                if !st.handle(msg) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Answer everything that is already queued before sleeping again.
        while let Ok(msg) = rx.try_recv() {
            if !st.handle(msg) {
                return;
            }
        }
        st.tick();
    }
}

/// The next message on `rx` (the one receiver `wait` watches), or the timeout. Unlike
/// `Receiver::recv_timeout`, which spins and then calls `sched_yield` four times before it
/// sleeps, this sleeps at once: the thread wakes for its tick and on every worker report, and
/// with a core per worker the spinning and yielding was pure cost (with the 10 ms tick and a
/// report per worker tick, ~1 µs of CPU per proxied request at 5k req/s on the 2-core VM).
fn wait_for<T>(
    wait: &mut Select<'_>,
    rx: &Receiver<T>,
    timeout: Duration,
) -> Result<T, RecvTimeoutError> {
    match wait.select_timeout(timeout) {
        Ok(op) => op.recv(rx).map_err(|_| RecvTimeoutError::Disconnected),
        Err(_) => Err(RecvTimeoutError::Timeout),
    }
}

/// Milliseconds of quota time (since `epoch`).
fn ms_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

impl State {
    /// Handles one message; `false` means stop.
    fn handle(&mut self, msg: ToCoord) -> bool {
        match msg {
            ToCoord::Quota(m) => match &mut self.leases {
                Leases::Here(c) => c.handle(m, ms_since(self.epoch), &mut self.answers),
                Leases::Remote(r) => r.send(m),
            },
            ToCoord::QuotaAnswers(a) => self.answers.extend(a),
            ToCoord::Breaker(r) => self.breakers.ingest(&r, Instant::now()),
            ToCoord::Resilience(t) => {
                self.breakers.reload(&t, Instant::now(), &mut self.updates);
                self.send_updates();
            }
            ToCoord::BreakerSnapshot(reply) => {
                let _ = reply.send(self.breakers.snapshot());
            }
            ToCoord::Load(r) => self.fleet.ingest(&r, Instant::now()),
            ToCoord::Balance(plan) => self.fleet.reload(&plan),
            ToCoord::Stop => return false,
        }
        true
    }

    /// How long to wait for a message before the next tick.
    fn next_tick(&self) -> Duration {
        if self.breakers.needs_tick() || self.fleet.needs_tick() {
            COORD_TICK
        } else {
            COORD_IDLE_TICK
        }
    }

    /// Sends the quota answers and the breakers' updates, then runs the timers.
    fn tick(&mut self) {
        for (w, answer) in self.answers.drain(..) {
            if let Some(lease) = self.quota_answers.get(usize::from(w)) {
                let _ = lease.send(answer);
                self.answered[usize::from(w)] = true;
            }
        }
        // Each worker applies its answers as soon as it hears its bell.
        for (w, answered) in self.answered.iter_mut().enumerate() {
            if std::mem::take(answered) {
                self.workers.ring(w);
            }
        }
        if let Leases::Here(c) = &mut self.leases {
            c.tick(ms_since(self.epoch));
        }
        self.breakers.tick(Instant::now(), &mut self.updates);
        self.send_updates();
        if let Some(view) = self.fleet.tick(Instant::now()) {
            // Read on each worker's short tick, which load-reading policies keep it on.
            self.workers
                .broadcast_quietly(|| ToWorker::Fleet(view.clone()));
        }
    }

    /// Every pending endpoint update, to every worker.
    fn send_updates(&mut self) {
        for u in self.updates.drain(..) {
            self.workers.broadcast(|| match u {
                EndpointUpdate::Breaker(b) => ToWorker::Breaker(b),
                EndpointUpdate::Health(h) => ToWorker::Health(h),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait answers a message sent before it and one sent while it sleeps, times out when
    /// nothing comes, keeps working across calls, and says when every sender has gone.
    #[test]
    fn wait_for_answers_messages_timeouts_and_disconnection() {
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let mut wait = Select::new();
        wait.recv(&rx);
        tx.send(1).unwrap();
        assert_eq!(wait_for(&mut wait, &rx, Duration::from_secs(5)), Ok(1));
        assert_eq!(
            wait_for(&mut wait, &rx, Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        );
        let late = std::thread::spawn({
            let tx = tx.clone();
            move || {
                std::thread::sleep(Duration::from_millis(30));
                tx.send(2).unwrap();
            }
        });
        assert_eq!(wait_for(&mut wait, &rx, Duration::from_secs(5)), Ok(2));
        late.join().unwrap();
        tx.send(3).unwrap();
        drop(tx);
        assert_eq!(wait_for(&mut wait, &rx, Duration::from_secs(5)), Ok(3));
        assert_eq!(
            wait_for(&mut wait, &rx, Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    /// A lease answer is followed by a ring of the worker's bell, so a worker that sleeps its
    /// long inbox tick applies it at once (`inbox::bell`).
    #[test]
    fn a_lease_answer_rings_the_workers_bell() {
        use crate::quota::{LeaseRequest, Limits, QuotaKey, RuleId, ToCoordinator, Window};
        use std::io::Read;

        let (inbox, _inbox_rx) = crossbeam_channel::unbounded();
        let (bell, chime) = crate::inbox::bell::pair().unwrap();
        let (socket, heard) = chime.into_parts();
        socket.set_nonblocking(false).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (answer_tx, answers) = crossbeam_channel::unbounded();
        let epoch = Instant::now();
        let coord = CoordThread::spawn(
            Workers::new(vec![(inbox, bell)]),
            vec![answer_tx],
            (epoch, Calendar::new(jiff::tz::TimeZone::UTC, 0)),
            (&Resilience::default(), &FleetPlan::default()),
            None,
            Vec::new(),
        )
        .unwrap();
        for round in 0..3 {
            let request = LeaseRequest {
                worker: 0,
                key: QuotaKey(round),
                rule: RuleId(0),
                limits: Limits {
                    requests: 10,
                    tokens: None,
                    burst: None,
                    window: Window::Minute,
                },
                at_ms: 0,
                tokens_needed: 1,
            };
            coord
                .sender()
                .send(ToCoord::Quota(ToCoordinator::Lease(request)))
                .unwrap();
            let mut byte = [0u8; 8];
            assert_eq!((&socket).read(&mut byte).unwrap(), 1, "round {round}: rung");
            heard.clear();
            assert!(
                matches!(answers.try_recv(), Ok(FromCoordinator::Grant(_))),
                "round {round}: the answer is there when the bell rings"
            );
        }
    }
}
