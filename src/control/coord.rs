//! The coordination thread: decisions that span cores, taken off the data path.
//!
//! Workers send it owned messages ([`ToCoord`]); it answers through each worker's inbox.
//! Today it runs the quota [`Coordinator`] (lease grants and returns); every cross-core
//! decision that must not take a lock on the data path belongs here.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::quota::{Coordinator, FromCoordinator, ToCoordinator};
use crate::runtime::ToWorker;

/// How often the coordinator's periodic work (sweeps) runs when no message arrives.
pub const COORD_TICK: Duration = Duration::from_millis(50);

/// Messages from workers (and the engine) to the coordination thread.
pub enum ToCoord {
    Quota(ToCoordinator),
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
    pub fn spawn(workers: Vec<Sender<ToWorker>>, epoch: Instant) -> std::io::Result<Coord> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("shardgate-coord".into())
            .spawn(move || run(workers, epoch, rx))?;
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

fn run(workers: Vec<Sender<ToWorker>>, epoch: Instant, rx: Receiver<ToCoord>) {
    let mut quota = Coordinator::new(workers.len());
    let mut out: Vec<(u16, FromCoordinator)> = Vec::new();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    loop {
        match rx.recv_timeout(COORD_TICK) {
            Ok(ToCoord::Quota(msg)) => quota.handle(msg, now_ms(), &mut out),
            Ok(ToCoord::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Answer everything that is already queued before sleeping again.
        while let Ok(msg) = rx.try_recv() {
            match msg {
                ToCoord::Quota(m) => quota.handle(m, now_ms(), &mut out),
                ToCoord::Stop => return,
            }
        }
        for (w, reply) in out.drain(..) {
            if let Some(inbox) = workers.get(usize::from(w)) {
                let _ = inbox.send(ToWorker::Quota(reply));
            }
        }
        quota.tick(now_ms());
    }
}
