//! The spend thread: owns the spend [`Ledger`] and its [`SpendStore`]; workers never write
//! either.
//!
//! Workers send their accumulated spend and budget use ([`ToSpend::Batch`]) on their inbox
//! tick; the thread adds each batch to the ledger and to the deltas not yet persisted, and
//! every `spend.flush_interval` hands both to the store (a file written atomically, or Redis
//! counters shared by every host). A failed persist keeps the deltas for the next attempt and
//! is logged (at most every [`LOG_INTERVAL`]) and counted. `/stats` and `/metrics` ask for a
//! copy of the ledger ([`ToSpend::Ledger`]), answered after the batches already queued.
//!
//! # Shutdown
//!
//! Dropping [`SpendThread`] persists once more and joins; the engine drops it after every
//! worker has exited, so the last batches are in the final write.
//!
//! # Error Handling
//!
//! A store that cannot be read at start is a start error (the engine refuses to run on a
//! ledger it would then overwrite); a store that fails later only delays persisting.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub use crate::inbox::ToSpend;
use crate::spend::{Ledger, SpendStore};

/// Failed persists are reported at most this often.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The running spend thread. Dropping it persists and stops it.
pub struct SpendThread {
    tx: Sender<ToSpend>,
    thread: Option<JoinHandle<()>>,
}

impl SpendThread {
    /// Runs the thread with `ledger` (what `store` loaded) and persists every `interval`.
    /// `currency` is the label the process counts in: `spend.currency` of the first
    /// snapshot (a restart-only setting, like the store).
    pub fn spawn(
        store: Box<dyn SpendStore>,
        ledger: Ledger,
        interval: Duration,
        currency: &str,
    ) -> std::io::Result<SpendThread> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let currency: Arc<str> = currency.into();
        let thread = std::thread::Builder::new()
            .name("shardgate-spend".into())
            .spawn(move || run(store, ledger, interval, currency, &rx))?;
        Ok(SpendThread {
            tx,
            thread: Some(thread),
        })
    }

    pub fn sender(&self) -> Sender<ToSpend> {
        self.tx.clone()
    }
}

impl Drop for SpendThread {
    fn drop(&mut self) {
        let _ = self.tx.send(ToSpend::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks the thread behind `tx` for a copy of its ledger, waiting at most `timeout`.
pub fn ledger(tx: &Sender<ToSpend>, timeout: Duration) -> Option<Ledger> {
    ledger_and_currency(tx, timeout).map(|(l, _)| l)
}

/// [`ledger`] and the currency the process counts in.
pub fn ledger_and_currency(tx: &Sender<ToSpend>, timeout: Duration) -> Option<(Ledger, Arc<str>)> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    tx.send(ToSpend::Ledger(reply)).ok()?;
    rx.recv_timeout(timeout).ok()
}

struct State {
    store: Box<dyn SpendStore>,
    ledger: Ledger,
    /// What changed since the last successful persist.
    pending: Ledger,
    failures: u64,
    last_log: Option<Instant>,
}

impl State {
    fn persist(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.store.persist(&mut self.ledger, &self.pending) {
            Ok(()) => self.pending = Ledger::default(),
            Err(e) => {
                self.failures += 1;
                if self.last_log.is_none_or(|t| t.elapsed() >= LOG_INTERVAL) {
                    self.last_log = Some(Instant::now());
                    eprintln!(
                        "shardgate: spend: cannot persist to {} ({e}); keeping it for the next try ({} failures)",
                        self.store.describe(),
                        self.failures
                    );
                }
            }
        }
    }
}

fn run(
    store: Box<dyn SpendStore>,
    ledger: Ledger,
    interval: Duration,
    currency: Arc<str>,
    rx: &Receiver<ToSpend>,
) {
    let mut st = State {
        store,
        ledger,
        pending: Ledger::default(),
        failures: 0,
        last_log: None,
    };
    let mut next = Instant::now() + interval;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(ToSpend::Batch(b)) => {
                st.ledger.apply(&b);
                st.pending.apply(&b);
            }
            Ok(ToSpend::Ledger(reply)) => {
                let _ = reply.send((st.ledger.clone(), currency.clone()));
            }
            Ok(ToSpend::Stop) | Err(RecvTimeoutError::Disconnected) => {
                // Batches sent before the stop are still queued behind nothing: take them.
                while let Ok(ToSpend::Batch(b)) = rx.try_recv() {
                    st.ledger.apply(&b);
                    st.pending.apply(&b);
                }
                st.persist();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next {
            st.persist();
            next = Instant::now() + interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::store::FileStore;
    use crate::spend::{Names, SpendBatch, SpendDelta, Totals};

    fn batch(pico: u128) -> SpendBatch {
        SpendBatch {
            spend: vec![SpendDelta {
                key: 7,
                names: Arc::new(Names {
                    subject: "s".into(),
                    tenant: "".into(),
                    model: "m".into(),
                }),
                totals: Totals {
                    requests: 1,
                    pico,
                    ..Totals::default()
                },
            }],
            budgets: Vec::new(),
        }
    }

    #[test]
    fn batches_are_persisted_on_the_interval_and_at_stop() {
        let dir = std::env::temp_dir().join(format!("sg-spend-thread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spend.json");
        let _ = std::fs::remove_file(&path);
        let t = SpendThread::spawn(
            Box::new(FileStore::new(path.clone(), "USD")),
            Ledger::default(),
            Duration::from_secs(3600),
            "USD",
        )
        .unwrap();
        let tx = t.sender();
        tx.send(ToSpend::Batch(batch(5))).unwrap();
        tx.send(ToSpend::Batch(batch(6))).unwrap();
        let l = ledger(&tx, Duration::from_secs(10)).unwrap();
        assert_eq!(l.total().pico, 11);
        assert!(!path.exists(), "not before the interval");
        drop(t);
        let stored = FileStore::new(path.clone(), "USD").load().unwrap();
        assert_eq!(stored.total().pico, 11);
        assert_eq!(stored.total().requests, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
