//! Token revocation on the control thread: persist, tell every worker, and let the caller
//! wait until each has applied it, so `POST /revoke` never answers before the token is
//! refused everywhere.
//!
//! The control thread only persists and sends; the wait for every worker's confirmation (a
//! [`Barrier`]) happens on the caller's thread ([`revoke_via`]), so a slow or stuck worker
//! never holds up a reload queued behind a revocation.
//!
//! # Error Handling
//!
//! A revocation that cannot be persisted is not applied at all ([`RevokeError::Persist`]),
//! so a restart cannot un-revoke. One that is persisted and sent, but not confirmed by every
//! worker within [`REVOKE_APPLY_TIMEOUT`], is [`RevokeError::Unconfirmed`]: it will still
//! apply (it sits in the worker's inbox and in the file), but the caller is not told that
//! it is in force.

use std::fmt;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::ToControl;
use crate::auth::{RevocationLog, Revoked};
use crate::inbox::{Barrier, ToWorker, Unconfirmed, Workers};
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

impl From<Unconfirmed> for RevokeError {
    fn from(u: Unconfirmed) -> Self {
        RevokeError::Unconfirmed {
            confirmed: u.confirmed,
            workers: u.workers,
        }
    }
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

/// Persists `r` (when a log is configured) and sends it to every worker, then a barrier: the
/// caller waits on the returned [`Barrier`] to know it is in force everywhere.
pub fn revoke(
    workers: &Workers,
    log: Option<&mut RevocationLog>,
    r: Revoked,
) -> Result<Barrier, RevokeError> {
    if let Some(log) = log {
        log.add(r.clone(), unix_now())
            .map_err(|e| RevokeError::Persist(e.to_string()))?;
    }
    workers.broadcast(|| ToWorker::Revoke(r.clone()));
    Ok(workers.start_barrier())
}

/// Asks the control thread behind `tx` to revoke `r` and waits (on this thread) until every
/// worker has applied it, at most [`REVOKE_APPLY_TIMEOUT`] after the control thread sent it.
pub fn revoke_via(tx: &Sender<ToControl>, r: Revoked) -> Result<(), RevokeError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    tx.send(ToControl::Revoke(r, reply))
        .map_err(|_| RevokeError::Stopped)?;
    let barrier = rx.recv().map_err(|_| RevokeError::Stopped)??;
    Ok(barrier.wait(REVOKE_APPLY_TIMEOUT)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RevokedKind;

    use crate::inbox::test_support::fake_worker as worker;

    fn token(id: &str) -> Revoked {
        Revoked::new(RevokedKind::Jti, id, unix_now() + 60).unwrap()
    }

    #[test]
    fn revoke_is_confirmed_once_every_worker_applied_it() {
        let (inboxes, threads): (Vec<_>, Vec<_>) = (0..3).map(worker).unzip();
        let workers = Workers::unrung(inboxes);
        revoke(&workers, None, token("t-1"))
            .unwrap()
            .wait(REVOKE_APPLY_TIMEOUT)
            .unwrap();
        workers.broadcast(|| ToWorker::Shutdown);
        for t in threads {
            assert_eq!(t.join().unwrap(), ["t-1", "barrier"]);
        }
    }

    #[test]
    fn an_unconfirmed_revocation_is_an_error_not_a_success() {
        let (live, t0) = worker(0);
        // Its thread keeps the inbox open but never reads it.
        let (stuck, _stuck_rx) = crossbeam_channel::unbounded::<ToWorker>();
        let workers = Workers::unrung(vec![live, stuck]);
        let barrier = revoke(&workers, None, token("t-3")).unwrap();
        let err = RevokeError::from(barrier.wait(Duration::from_millis(50)).unwrap_err());
        assert_eq!(
            err,
            RevokeError::Unconfirmed {
                confirmed: 1,
                workers: 2
            }
        );
        assert!(err.to_string().contains("1 of 2 workers"), "{err}");
        workers.send(0, ToWorker::Shutdown);
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
        let workers = Workers::unrung(vec![w]);
        let err = revoke(&workers, Some(&mut log), token("t-2"))
            .err()
            .unwrap();
        assert!(matches!(err, RevokeError::Persist(_)), "{err:?}");
        workers.broadcast(|| ToWorker::Shutdown);
        assert!(t.join().unwrap().is_empty(), "nothing reached the worker");
    }
}
