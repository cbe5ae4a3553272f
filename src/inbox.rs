//! The one boundary between the control plane and the workers: the messages a worker's
//! inbox carries. Control-plane threads (control, coordination, health, admin) send owned
//! values; a worker applies them between requests ([`crate::worker::Worker::apply`]). Nothing
//! on a worker imports the control plane; the control plane imports only this.

use crossbeam_channel::Sender;

use crate::config::Snapshot;
use crate::metrics::WorkerMetrics;

/// Messages from the control plane to one worker.
pub enum ToWorker {
    /// Swap to this snapshot between requests.
    Snapshot(Box<Snapshot>),
    /// Send a copy of the metrics back.
    Collect(Sender<WorkerMetrics>),
    /// A revoked token id (or subject) to refuse from now on.
    Revoke(crate::auth::Revoked),
    /// A circuit breaker decision from the coordination thread.
    Breaker(crate::breaker::BreakerUpdate),
    /// An endpoint's active health changed.
    Health(crate::breaker::HealthUpdate),
    /// Answer with this worker's id once every message sent before this one is applied (the
    /// inbox is FIFO), so the control plane can tell when a change is in force everywhere.
    Barrier(Sender<usize>),
    /// Drain and stop.
    Shutdown,
}
