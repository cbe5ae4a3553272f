//! Token revocation on the control thread: persist, tell every worker, and wait until each
//! has applied it, so `POST /revoke` never answers before the token is refused everywhere.
//!
//! # Error Handling
//!
//! A revocation that cannot be persisted is not applied at all ([`RevokeError::Persist`]),
//! so a restart cannot un-revoke. One that is persisted and sent, but not confirmed by every
//! worker within [`REVOKE_APPLY_TIMEOUT`], is [`RevokeError::Unconfirmed`]: it will still
//! apply (it sits in the worker's inbox and in the file), but the caller is not told that
//! it is in force.

use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::auth::{RevocationLog, Revoked};
use crate::inbox::ToWorker;
use crate::time::unix_now;

/// How long a revocation waits for every worker to confirm it. A worker looks at its inbox
/// every few milliseconds, so only a stuck or exiting worker comes near this.
pub const REVOKE_APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a revocation is not known to be in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeError {
    /// The revocation file could not be written; nothing was applied.
    Persist(String),
    /// Persisted and sent, but only `confirmed` of `workers` answered in time.
    Unconfirmed { confirmed: usize, workers: usize },
    /// The control thread is gone.
    Stopped,
}

impl fmt::Display for RevokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevokeError::Persist(e) => write!(f, "cannot persist revocation: {e}"),
            RevokeError::Unconfirmed { confirmed, workers } => write!(
                f,
                "revocation persisted, but only {confirmed} of {workers} workers confirmed \
                 it within {} ms",
                REVOKE_APPLY_TIMEOUT.as_millis()
            ),
            RevokeError::Stopped => write!(f, "control thread stopped"),
        }
    }
}

/// Persists `r` (when a log is configured), sends it to every worker and waits until each
/// has applied it.
pub fn revoke(
    workers: &[Sender<ToWorker>],
    log: Option<&mut RevocationLog>,
    r: Revoked,
) -> Result<(), RevokeError> {
    if let Some(log) = log {
        log.add(r.clone(), unix_now())
            .map_err(|e| RevokeError::Persist(e.to_string()))?;
    }
    for w in workers {
        let _ = w.send(ToWorker::Revoke(r.clone()));
    }
    barrier(workers, REVOKE_APPLY_TIMEOUT)
}

/// Sends every worker a [`ToWorker::Barrier`] and waits up to `timeout` for all answers:
/// `Ok` once every worker has applied every message sent to it before this call.
///
/// A worker whose inbox is closed (its thread has exited) serves nothing, so it is not
/// waited for.
pub fn barrier(workers: &[Sender<ToWorker>], timeout: Duration) -> Result<(), RevokeError> {
    let (tx, rx) = crossbeam_channel::bounded(workers.len());
    let asked = workers
        .iter()
        .filter(|w| w.send(ToWorker::Barrier(tx.clone())).is_ok())
        .count();
    drop(tx);
    let deadline = Instant::now() + timeout;
    let confirmed = (0..asked)
        .map_while(|_| rx.recv_deadline(deadline).ok())
        .count();
    if confirmed == asked {
        Ok(())
    } else {
        Err(RevokeError::Unconfirmed {
            confirmed,
            workers: workers.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RevokedKind;

    /// A fake worker: applies messages in order and answers barriers.
    fn worker(id: usize) -> (Sender<ToWorker>, std::thread::JoinHandle<Vec<String>>) {
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

    fn token(id: &str) -> Revoked {
        Revoked::new(RevokedKind::Jti, id, unix_now() + 60).unwrap()
    }

    #[test]
    fn revoke_returns_after_every_worker_applied_it() {
        let (workers, threads): (Vec<_>, Vec<_>) = (0..3).map(worker).unzip();
        revoke(&workers, None, token("t-1")).unwrap();
        for w in &workers {
            w.send(ToWorker::Shutdown).unwrap();
        }
        for t in threads {
            assert_eq!(t.join().unwrap(), ["t-1", "barrier"]);
        }
    }

    #[test]
    fn a_worker_that_does_not_answer_is_an_error_not_a_success() {
        let (live, t0) = worker(0);
        // Its thread keeps the inbox open but never reads it.
        let (stuck_tx, stuck_rx) = crossbeam_channel::unbounded::<ToWorker>();
        let workers = vec![live.clone(), stuck_tx];
        let err = barrier(&workers, Duration::from_millis(50)).unwrap_err();
        assert_eq!(
            err,
            RevokeError::Unconfirmed {
                confirmed: 1,
                workers: 2
            }
        );
        assert!(err.to_string().contains("1 of 2 workers"), "{err}");
        // A worker that has exited (inbox closed) is not waited for.
        drop(stuck_rx);
        barrier(&workers, Duration::from_millis(50)).unwrap();
        live.send(ToWorker::Shutdown).unwrap();
        t0.join().unwrap();
    }

    #[test]
    fn an_unpersisted_revocation_is_not_applied() {
        let dir = std::env::temp_dir().join(format!("sg-revoke-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("revoked.txt");
        let mut log = RevocationLog::open(&path, unix_now()).unwrap();
        // The file cannot be replaced: its directory is gone.
        std::fs::remove_dir_all(&dir).unwrap();
        let (w, t) = worker(0);
        let err = revoke(std::slice::from_ref(&w), Some(&mut log), token("t-2")).unwrap_err();
        assert!(matches!(err, RevokeError::Persist(_)), "{err:?}");
        w.send(ToWorker::Shutdown).unwrap();
        assert!(t.join().unwrap().is_empty(), "nothing reached the worker");
    }
}
