//! The remote thread: the quota coordinator's Redis I/O, off the coordination thread.
//!
//! With `[quota] backend = "redis"` every lease, release and charge is a Redis round trip
//! that may take up to [`RedisSettings::io_timeout`](crate::quota::RedisSettings) (longer
//! while a stalled Redis holds the connection). The coordination thread also decides
//! breakers, which must not wait on that, so the [`QuotaCoordinator`] runs here instead: the
//! coordination thread forwards each worker's quota message ([`RemoteThread::send`]) and gets
//! the answers back in its own inbox, one batch at a time in the order they were decided
//! ([`Answers`]), and sends them on to the workers.
//!
//! # Error Handling
//!
//! Redis failures never reach this thread's loop: the coordinator answers per `fail_mode`
//! while Redis is down (see [`crate::quota::remote`]). A lease request that arrives while a
//! command is stalled waits here behind it; the request that asked for it gives up after its
//! own lease wait.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::quota::{FromCoordinator, QuotaCoordinator, ToCoordinator, WorkerId};

/// Takes one batch of answers to the coordination thread; `false` once it is gone.
pub type Answers = Box<dyn FnMut(Vec<(WorkerId, FromCoordinator)>) -> bool + Send>;

/// How often the coordinator's periodic work (reconnects, health PINGs, sweeps) runs when
/// no message arrives.
pub const REMOTE_TICK: Duration = Duration::from_millis(10);

enum ToRemote {
    Quota(ToCoordinator),
    Stop,
}

/// The running remote thread. Dropping it stops the thread (after the command in flight).
pub struct RemoteThread {
    tx: Sender<ToRemote>,
    thread: Option<JoinHandle<()>>,
}

impl RemoteThread {
    /// Runs `coordinator` on its own thread; answers go to `answers` (into the coordination
    /// thread's inbox). `epoch` is the process-wide zero of quota time.
    pub fn spawn(
        coordinator: QuotaCoordinator,
        epoch: Instant,
        answers: Answers,
    ) -> std::io::Result<RemoteThread> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("shardgate-remote".into())
            .spawn(move || run(coordinator, epoch, &rx, answers))?;
        Ok(RemoteThread {
            tx,
            thread: Some(thread),
        })
    }

    /// Hands one worker's quota message to the coordinator (never blocks).
    pub fn send(&self, m: ToCoordinator) {
        let _ = self.tx.send(ToRemote::Quota(m));
    }
}

impl Drop for RemoteThread {
    fn drop(&mut self) {
        let _ = self.tx.send(ToRemote::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut coordinator: QuotaCoordinator,
    epoch: Instant,
    rx: &Receiver<ToRemote>,
    mut answers: Answers,
) {
    let now_ms = || epoch.elapsed().as_millis() as u64;
    let mut out = Vec::new();
    loop {
        let first = match rx.recv_timeout(REMOTE_TICK) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Everything already queued is answered as one batch.
        for m in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match m {
                ToRemote::Quota(m) => coordinator.handle(m, now_ms(), &mut out),
                ToRemote::Stop => return,
            }
        }
        if !out.is_empty() && !answers(std::mem::take(&mut out)) {
            return;
        }
        coordinator.tick(now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{
        FailMode, LeaseRequest, Limits, QuotaBackend, QuotaKey, QuotaSettings, RedisSettings,
        RuleId,
    };

    /// A Redis that accepts connections and never answers: the remote thread's commands time
    /// out, and the coordinator answers per `fail_mode`.
    #[test]
    fn a_stalled_redis_is_answered_by_fail_mode_on_this_thread() {
        let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}/0", stall.local_addr().unwrap());
        let settings = QuotaSettings {
            backend: QuotaBackend::Redis,
            fail_mode: FailMode::FailClosed,
            redis: Some(RedisSettings {
                url,
                key_prefix: "sg".into(),
                io_timeout: Duration::from_millis(50),
            }),
            rules: Vec::new(),
        };
        let coordinator = QuotaCoordinator::from_settings(1, &settings, 0).unwrap();
        assert!(coordinator.does_io());
        let (tx, rx) = crossbeam_channel::unbounded();
        let answers: Answers = Box::new(move |a| tx.send(a).is_ok());
        let remote = RemoteThread::spawn(coordinator, Instant::now(), answers).unwrap();
        remote.send(ToCoordinator::Lease(LeaseRequest {
            worker: 0,
            key: QuotaKey(7),
            rule: RuleId(0),
            limits: Limits {
                requests: 10,
                tokens: None,
                burst: None,
                window: crate::quota::Window::Minute,
            },
            at_ms: 0,
            tokens_needed: 1,
        }));
        let answers = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            matches!(answers.as_slice(), [(0, FromCoordinator::Deny(d))] if d.key == QuotaKey(7)),
            "{answers:?}"
        );
        drop(remote);
        drop(stall);
    }
}
