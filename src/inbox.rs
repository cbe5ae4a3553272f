//! The one boundary between the control plane and the workers: the messages a worker's
//! inbox carries ([`ToWorker`]), the messages workers send the coordination thread
//! ([`ToCoord`]), and [`Workers`], the handle every control-plane thread (control,
//! coordination, admin) sends to workers through. Both sides send owned values; a worker
//! applies its messages between requests ([`crate::worker::Worker::apply`]). Nothing on a
//! worker imports the control plane; the control plane reaches workers only through this.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::breaker::table::Resilience;
use crate::breaker::{BreakerReport, BreakerSnapshot};
use crate::config::Snapshot;
use crate::metrics::{DeploymentCounts, WorkerMetrics};
use crate::quota::{FromCoordinator, ToCoordinator, WorkerId};

pub mod bell;
pub use bell::{Bell, Chime};

/// How long a worker may take to answer a metrics collection.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Messages from the control plane to one worker.
pub enum ToWorker {
    /// Swap to this snapshot between requests.
    Snapshot(Box<Snapshot>),
    /// Send a copy of the metrics back.
    Collect(Sender<WorkerMetrics>),
    /// Send back the outcomes of the deployments with these labels (`model@version`): what
    /// a canary rollout's guards watch, without copying every histogram.
    CollectDeployments(Arc<[Box<str>]>, Sender<Vec<DeploymentCounts>>),
    /// A revoked token id (or subject) to refuse from now on.
    Revoke(crate::auth::Revoked),
    /// A circuit breaker decision from the coordination thread.
    Breaker(crate::breaker::BreakerUpdate),
    /// An endpoint's active health changed.
    Health(crate::breaker::HealthUpdate),
    /// The fleet's merged endpoint load, for endpoint choice (see `balance::fleet`).
    Fleet(Arc<crate::balance::FleetView>),
    /// Answer with this worker's id once every message sent before this one is applied (the
    /// inbox is FIFO), so the control plane can tell when a change is in force everywhere.
    Barrier(Sender<usize>),
    /// Drain and stop.
    Shutdown,
    /// Another process accepts on the listening sockets now (a binary upgrade): stop
    /// accepting, let idle keep-alive connections make one more request, drain and stop (see
    /// `worker::drain`).
    HandOver,
}

/// Messages to the coordination thread (`control::coord`), from workers, the engine, the
/// admin API and the remote thread.
pub enum ToCoord {
    /// A worker's lease request, release or token charge.
    Quota(ToCoordinator),
    /// Answers of the quota coordinator on the remote thread, in the order it decided them.
    QuotaAnswers(Vec<(WorkerId, FromCoordinator)>),
    /// One worker's breaker outcomes for one endpoint.
    Breaker(BreakerReport),
    /// A reloaded snapshot's endpoint table and policies.
    Resilience(Box<Resilience>),
    /// One worker's endpoint load changes since its last report (see `balance::view`).
    Load(crate::balance::LoadReport),
    /// A reloaded snapshot's endpoint count and load-metric targets.
    Balance(Box<crate::balance::FleetPlan>),
    /// Asks for every endpoint's breaker state (metrics, admin API).
    BreakerSnapshot(Sender<BreakerSnapshot>),
    Stop,
}

/// Messages to the spend thread (`control::spend`), from workers and the admin API.
pub enum ToSpend {
    /// One worker's spend and budget use since its last batch.
    Batch(crate::spend::SpendBatch),
    /// Asks for a copy of the ledger and the currency the process counts in (`/stats`,
    /// `/metrics`); answered after the batches already queued are applied.
    Ledger(Sender<(crate::spend::Ledger, std::sync::Arc<str>)>),
    /// Persist now and stop.
    Stop,
}

/// From a worker to the control plane: a token named a key id (`kid`) that no key has, so
/// the remote key sets may have rotated. Sent with `try_send` on a channel of
/// [`KEY_HINT_CAPACITY`]: a hint already waiting says the same, so a flood of unknown kids is
/// one hint; the JWKS thread (`control::jwks`) decides whether its interval allows a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownKid;

/// Capacity of the unknown-kid channel.
pub const KEY_HINT_CAPACITY: usize = 1;

/// Every worker's inbox, in worker order: the fan-out handle of the control plane. Cloning
/// it is cheap (one shared list).
///
/// A worker whose inbox is closed has exited: it serves nothing, so a send to it is dropped
/// and it is not waited for.
#[derive(Clone, Default)]
pub struct Workers {
    inboxes: Arc<[Inbox]>,
}

/// One worker's inbox and the bell that wakes it ([`bell`]).
struct Inbox {
    tx: Sender<ToWorker>,
    bell: Option<Bell>,
}

impl Inbox {
    fn send(&self, msg: ToWorker) -> bool {
        let sent = self.tx.send(msg).is_ok();
        if sent {
            self.ring();
        }
        sent
    }

    fn ring(&self) {
        if let Some(b) = &self.bell {
            b.ring();
        }
    }
}

impl Workers {
    /// Workers that are woken by their bells when a message is sent.
    pub fn new(inboxes: Vec<(Sender<ToWorker>, Bell)>) -> Workers {
        Workers {
            inboxes: inboxes
                .into_iter()
                .map(|(tx, bell)| Inbox {
                    tx,
                    bell: Some(bell),
                })
                .collect(),
        }
    }

    /// Workers without bells (control-plane tests with threads standing in for workers).
    #[cfg(test)]
    pub(crate) fn unrung(inboxes: Vec<Sender<ToWorker>>) -> Workers {
        Workers {
            inboxes: inboxes
                .into_iter()
                .map(|tx| Inbox { tx, bell: None })
                .collect(),
        }
    }

    /// Wakes worker `worker` (after something was sent to it on another channel, its lease
    /// answers).
    pub fn ring(&self, worker: usize) {
        if let Some(i) = self.inboxes.get(worker) {
            i.ring();
        }
    }

    /// How many workers there are (running or not).
    pub fn len(&self) -> usize {
        self.inboxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inboxes.is_empty()
    }

    /// Sends `msg()` to every worker; returns how many inboxes took it.
    pub fn broadcast(&self, mut msg: impl FnMut() -> ToWorker) -> usize {
        self.inboxes.iter().filter(|w| w.send(msg())).count()
    }

    /// Like [`Self::broadcast`], without ringing: for messages a worker needs no sooner than
    /// its next tick (the fleet's load view, which exists only while some balance policy reads
    /// load, and then every worker runs the short tick: `runtime::INBOX_SHORT_TICK`).
    pub fn broadcast_quietly(&self, mut msg: impl FnMut() -> ToWorker) -> usize {
        self.inboxes
            .iter()
            .filter(|w| w.tx.send(msg()).is_ok())
            .count()
    }

    /// Sends `msg` to worker `worker`; false if there is no such worker or it has exited.
    pub fn send(&self, worker: usize, msg: ToWorker) -> bool {
        self.inboxes.get(worker).is_some_and(|w| w.send(msg))
    }

    /// Sends every worker a [`ToWorker::Barrier`] and waits up to `timeout` for every answer:
    /// `Ok` once every worker has applied every message sent to it before this call.
    pub fn barrier(&self, timeout: Duration) -> Result<(), Unconfirmed> {
        self.start_barrier().wait(timeout)
    }

    /// Sends the barrier without waiting: the caller (or any thread it hands the
    /// [`Barrier`] to) waits, so the sender's loop is not held up.
    pub fn start_barrier(&self) -> Barrier {
        let (tx, rx) = crossbeam_channel::bounded(self.inboxes.len());
        let asked = self.broadcast(|| ToWorker::Barrier(tx.clone()));
        Barrier {
            answers: rx,
            asked,
            workers: self.inboxes.len(),
        }
    }

    /// A copy of every running worker's metrics, as many as answer within `timeout`.
    pub fn collect(&self, timeout: Duration) -> Vec<WorkerMetrics> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let asked = self.broadcast(|| ToWorker::Collect(tx.clone()));
        let deadline = Instant::now() + timeout;
        (0..asked)
            .map_while(|_| rx.recv_deadline(deadline).ok())
            .collect()
    }
}

impl Workers {
    /// Every running worker's [`DeploymentCounts`] for `labels`, added up per label, from
    /// as many workers as answer within `timeout`; `None` when some worker did not answer
    /// (a partial sum would look like a change in traffic).
    pub fn collect_deployments(
        &self,
        labels: &[Box<str>],
        timeout: Duration,
    ) -> Option<Vec<DeploymentCounts>> {
        let labels: Arc<[Box<str>]> = labels.into();
        let (tx, rx) = crossbeam_channel::unbounded();
        let asked = self.broadcast(|| ToWorker::CollectDeployments(labels.clone(), tx.clone()));
        let deadline = Instant::now() + timeout;
        let mut sum: Vec<DeploymentCounts> = Vec::new();
        for _ in 0..asked {
            for d in rx.recv_deadline(deadline).ok()? {
                match sum.iter_mut().find(|s| s.label == d.label) {
                    Some(s) => s.add(&d),
                    None => sum.push(d),
                }
            }
        }
        Some(sum)
    }
}

/// A barrier sent to every worker, waiting to be confirmed ([`Workers::start_barrier`]).
#[must_use = "a barrier says nothing until it is waited for"]
pub struct Barrier {
    answers: Receiver<usize>,
    asked: usize,
    workers: usize,
}

impl Barrier {
    /// Waits up to `timeout` for every running worker's answer.
    pub fn wait(self, timeout: Duration) -> Result<(), Unconfirmed> {
        let deadline = Instant::now() + timeout;
        let confirmed = (0..self.asked)
            .map_while(|_| self.answers.recv_deadline(deadline).ok())
            .count();
        if confirmed == self.asked {
            Ok(())
        } else {
            Err(Unconfirmed {
                confirmed,
                workers: self.workers,
            })
        }
    }
}

/// Only `confirmed` of `workers` answered a barrier in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unconfirmed {
    pub confirmed: usize,
    pub workers: usize,
}

impl fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "only {} of {} workers confirmed",
            self.confirmed, self.workers
        )
    }
}

impl std::error::Error for Unconfirmed {}

/// A fake worker for control-plane tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::ToWorker;
    use crossbeam_channel::Sender;

    /// A fake worker: applies messages in order and answers barriers.
    pub(crate) fn fake_worker(
        id: usize,
    ) -> (Sender<ToWorker>, std::thread::JoinHandle<Vec<String>>) {
        let (tx, rx) = crossbeam_channel::unbounded::<ToWorker>();
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok(m) = rx.recv() {
                match m {
                    ToWorker::Revoke(r) => seen.push(r.id.clone()),
                    ToWorker::Barrier(reply) => {
                        seen.push("barrier".into());
                        let _ = reply.send(id);
                    }
                    ToWorker::Shutdown => break,
                    _ => {}
                }
            }
            seen
        });
        (tx, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Revoked, RevokedKind};
    use crate::time::unix_now;

    use super::test_support::fake_worker as worker;

    #[test]
    fn broadcast_then_barrier_reaches_every_worker_in_order() {
        let (inboxes, threads): (Vec<_>, Vec<_>) = (0..3).map(worker).unzip();
        let workers = Workers::unrung(inboxes);
        let r = Revoked::new(RevokedKind::Jti, "t-1", unix_now() + 60).unwrap();
        assert_eq!(workers.broadcast(|| ToWorker::Revoke(r.clone())), 3);
        workers.barrier(Duration::from_secs(10)).unwrap();
        assert_eq!(workers.broadcast(|| ToWorker::Shutdown), 3);
        for t in threads {
            assert_eq!(t.join().unwrap(), ["t-1", "barrier"]);
        }
    }

    #[test]
    fn a_worker_that_does_not_answer_leaves_the_barrier_unconfirmed() {
        let (live, t0) = worker(0);
        // Its thread keeps the inbox open but never reads it.
        let (stuck_tx, stuck_rx) = crossbeam_channel::unbounded::<ToWorker>();
        let workers = Workers::unrung(vec![live.clone(), stuck_tx]);
        let err = workers.barrier(Duration::from_millis(50)).unwrap_err();
        assert_eq!(
            err,
            Unconfirmed {
                confirmed: 1,
                workers: 2
            }
        );
        assert!(err.to_string().contains("1 of 2 workers"), "{err}");
        // A worker that has exited (inbox closed) is not waited for, and takes no message.
        drop(stuck_rx);
        workers.barrier(Duration::from_millis(50)).unwrap();
        assert!(!workers.send(1, ToWorker::Shutdown));
        assert!(!workers.send(2, ToWorker::Shutdown), "no such worker");
        assert!(workers.send(0, ToWorker::Shutdown));
        t0.join().unwrap();
    }

    #[test]
    fn collect_answers_for_the_running_workers_only() {
        let (tx, rx) = crossbeam_channel::unbounded::<ToWorker>();
        let answering = std::thread::spawn(move || {
            while let Ok(m) = rx.recv() {
                match m {
                    ToWorker::Collect(reply) => {
                        let m = WorkerMetrics::new(0, crate::metrics::Driver::Legacy);
                        let _ = reply.send(m);
                    }
                    ToWorker::Shutdown => break,
                    _ => {}
                }
            }
        });
        let (gone, gone_rx) = crossbeam_channel::unbounded::<ToWorker>();
        drop(gone_rx);
        let workers = Workers::unrung(vec![tx, gone]);
        assert_eq!(workers.collect(Duration::from_secs(10)).len(), 1);
        workers.broadcast(|| ToWorker::Shutdown);
        answering.join().unwrap();
    }

    /// Every way a message reaches a worker rings its bell (a send, a broadcast, a barrier,
    /// the lease channel's explicit ring) except a quiet broadcast; a send to a gone worker
    /// does not.
    #[test]
    fn every_send_rings_the_workers_bell() {
        use std::io::Read;

        let (tx, rx) = crossbeam_channel::unbounded();
        let (bell, chime) = bell::pair().unwrap();
        let (socket, heard) = chime.into_parts();
        let workers = Workers::new(vec![(tx, bell)]);
        let heard_one = || {
            let mut buf = [0u8; 8];
            let got = matches!((&socket).read(&mut buf), Ok(1));
            heard.clear();
            got
        };
        assert!(!heard_one(), "nothing sent yet");
        assert!(workers.send(0, ToWorker::Shutdown));
        assert!(heard_one());
        assert_eq!(workers.broadcast(|| ToWorker::HandOver), 1);
        assert!(heard_one());
        let _ = workers.start_barrier();
        assert!(heard_one());
        workers.ring(0);
        assert!(heard_one());
        assert!(!workers.send(1, ToWorker::Shutdown), "no such worker");
        workers.ring(1);
        assert!(!heard_one());
        assert_eq!(workers.broadcast_quietly(|| ToWorker::HandOver), 1);
        assert!(!heard_one(), "a quiet broadcast waits for the tick");
        assert_eq!(rx.try_iter().count(), 4);
        drop(rx);
        assert!(!workers.send(0, ToWorker::Shutdown), "the worker is gone");
        assert!(!heard_one(), "a send that failed rings nothing");
    }
}
