//! The coordination thread's side of the resilience stage: the [`BreakerDecider`] over every
//! worker's reports, and the active health-check thread. It sends nothing itself: what every
//! worker must apply comes back as [`EndpointUpdate`]s, which the coordination thread fans
//! out to every inbox.
//!
//! # Health checks
//!
//! The health thread is started for every endpoint whose upstream (or `[defaults]`)
//! configures `health_check`. On reload it is restarted when the targets change, and every
//! endpoint is first announced healthy again: a restarted checker knows nothing, and an
//! endpoint that is still down is taken out after `unhealthy_threshold` probes.

use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::table::Resilience;
use super::{
    BreakerDecider, BreakerReport, BreakerSnapshot, BreakerUpdate, EndpointId, HealthChecker,
    HealthTarget, HealthUpdate, HttpProber,
};

/// What every worker must apply about one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointUpdate {
    /// A breaker transition the decider took.
    Breaker(BreakerUpdate),
    /// The endpoint's active health changed.
    Health(HealthUpdate),
}

/// The breakers' authority on the coordination thread: the decider and the health thread.
pub struct BreakerCoordinator {
    decider: BreakerDecider,
    /// Decisions taken since the last [`BreakerCoordinator::tick`].
    decided: Vec<BreakerUpdate>,
    health: Option<HealthThread>,
    targets: Vec<HealthTarget>,
    endpoints: usize,
}

struct HealthThread {
    stop: Sender<()>,
    updates: Receiver<HealthUpdate>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_health(targets: &[HealthTarget]) -> Option<HealthThread> {
    if targets.is_empty() {
        return None;
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let checker = HealthChecker::new(targets.to_vec(), HttpProber, Instant::now());
    match checker.spawn(tx, stop_rx) {
        Ok(thread) => Some(HealthThread {
            stop: stop_tx,
            updates: rx,
            thread: Some(thread),
        }),
        Err(e) => {
            eprintln!("shardgate: cannot start the health-check thread ({e}); no active checks");
            None
        }
    }
}

impl BreakerCoordinator {
    pub fn new(table: &Resilience, now: Instant) -> Self {
        // The seed only decorrelates jitter between processes.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = clock.as_nanos() as u64 ^ u64::from(std::process::id());
        BreakerCoordinator {
            decider: BreakerDecider::new(&table.breakers, seed, now),
            decided: Vec::new(),
            health: start_health(&table.health),
            targets: table.health.clone(),
            endpoints: table.breakers.len(),
        }
    }

    /// Folds in one worker's report (what it decides goes out on the next [`Self::tick`]).
    pub fn ingest(&mut self, report: &BreakerReport, now: Instant) {
        self.decider.ingest(report, now, &mut self.decided);
    }

    /// A reloaded snapshot's table (see the module docs for what carries over); what every
    /// worker must apply now is pushed to `out`.
    pub fn reload(&mut self, table: &Resilience, now: Instant, out: &mut Vec<EndpointUpdate>) {
        self.decider.set_policies(&table.breakers, now);
        self.endpoints = table.breakers.len();
        if table.health != self.targets {
            self.health = None;
            out.extend((0..self.endpoints).map(|i| {
                EndpointUpdate::Health(HealthUpdate {
                    endpoint: EndpointId(i as u32),
                    healthy: true,
                })
            }));
            self.targets = table.health.clone();
            self.health = start_health(&self.targets);
        }
    }

    /// Health changes, the decider's timers, and every decision since the last tick: pushed
    /// to `out`, in that order, for every worker.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<EndpointUpdate>) {
        if let Some(h) = &self.health {
            out.extend(h.updates.try_iter().map(EndpointUpdate::Health));
        }
        self.decider.tick(now, &mut self.decided);
        out.extend(self.decided.drain(..).map(EndpointUpdate::Breaker));
    }

    /// Whether [`Self::tick`] must run on the short tick: a breaker timer is running, or
    /// health checks are on (their changes are collected on the tick).
    pub fn needs_tick(&self) -> bool {
        self.health.is_some() || self.decider.has_timers()
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        self.decider.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerPolicy, BroadcastState};

    #[test]
    fn decisions_come_back_as_updates_for_every_worker() {
        let policy = BreakerPolicy {
            consecutive_failures: 2,
            ..BreakerPolicy::default()
        };
        let table = Resilience {
            breakers: vec![policy],
            ..Resilience::default()
        };
        let now = Instant::now();
        let mut c = BreakerCoordinator::new(&table, now);
        let mut out = Vec::new();
        c.tick(now, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let report = BreakerReport {
            endpoint: EndpointId(0),
            failures: 2,
            trailing_failures: 2,
            ..BreakerReport::default()
        };
        c.ingest(&report, now);
        c.tick(now, &mut out);
        assert!(
            matches!(
                out.as_slice(),
                [EndpointUpdate::Breaker(BreakerUpdate {
                    endpoint: EndpointId(0),
                    state: BroadcastState::Open { .. },
                    ..
                })]
            ),
            "{out:?}"
        );
        // A reload with other health targets announces every endpoint healthy again.
        out.clear();
        let checked = Resilience {
            health: vec![HealthTarget {
                endpoint: EndpointId(0),
                addr: "127.0.0.1:1".parse().unwrap(),
                host: "127.0.0.1:1".into(),
                policy: crate::breaker::HealthCheckPolicy::default(),
            }],
            ..table.clone()
        };
        c.reload(&checked, now, &mut out);
        assert_eq!(
            out,
            [EndpointUpdate::Health(HealthUpdate {
                endpoint: EndpointId(0),
                healthy: true
            })]
        );
    }
}
