//! The quota coordinator: grants every lease, from this process's own windows
//! (`backend = "local"`) or from Redis, shared with other gateway processes
//! (`backend = "redis"`).
//!
//! Each [`LeaseRequest`](super::LeaseRequest) is answered with one [`FromCoordinator`] to the
//! asking worker: a [`Grant`](super::Grant) counted in its slot at once, or a
//! [`Deny`](super::Deny) saying when a retry will succeed. Releases take never-used quota
//! back; charges count token overruns. No locks: its thread calls
//! [`QuotaCoordinator::handle`] for each worker message and [`QuotaCoordinator::tick`]
//! every few ms.
//!
//! # Threads
//!
//! The local backend runs on the coordination thread (`control::coord`). The Redis backend
//! does blocking I/O ([`QuotaCoordinator::does_io`]), so it runs on a thread of its own
//! (`control::remote`) that exchanges owned messages with the coordination thread: a slow
//! Redis never delays a breaker decision.
//!
//! # Performance
//!
//! Local: a few array operations per message. Redis: one round trip per lease, release and
//! charge, on the remote thread (workers never wait on Redis; they wait for a lease only
//! when they hold none). While Redis is down, no command is tried between reconnect
//! attempts, so an outage costs at most one [`RedisSettings::io_timeout`](super::RedisSettings::io_timeout) per attempt.

use super::calendar::Calendar;
use super::local::LocalCoordinator;
use super::remote::RemoteCoordinator;
use super::{FromCoordinator, QuotaBackend, QuotaKey, QuotaSettings, ToCoordinator, WorkerId};
use crate::config_types::ConfigProblem;

/// Counters for metrics. The local backend is always up and has no errors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaCoordinatorStats {
    /// The backend answered its last command (Redis), or is local.
    pub backend_up: bool,
    /// Failed Redis connects and commands.
    pub redis_errors: u64,
    /// Leases granted from this process's own window while Redis was down (`fail_open`).
    pub fail_open_grants: u64,
    /// Leases denied because Redis was down (`fail_closed`).
    pub fail_closed_denies: u64,
}

#[derive(Debug)]
enum Backend {
    Local(LocalCoordinator),
    Redis(Box<RemoteCoordinator>),
}

#[derive(Debug)]
pub struct QuotaCoordinator {
    backend: Backend,
}

impl QuotaCoordinator {
    /// A local coordinator for `workers` cores (lease sizes are split over them).
    pub fn new(workers: usize) -> Self {
        QuotaCoordinator {
            backend: Backend::Local(LocalCoordinator::new(workers)),
        }
    }

    /// The coordinator `settings` ask for. `epoch_unix_ms` is the UNIX time of this process's
    /// quota epoch (time 0 of every `now_ms`); the Redis backend needs it on a slot boundary
    /// so that processes agree on slots (see [`shared_epoch`](super::shared_epoch)). Does not
    /// connect: the first message or `tick` does.
    pub fn from_settings(
        workers: usize,
        settings: &QuotaSettings,
        epoch_unix_ms: u64,
    ) -> Result<Self, ConfigProblem> {
        let utc = Calendar::new(jiff::tz::TimeZone::UTC, epoch_unix_ms);
        Self::with_calendar(workers, Some(settings), utc)
    }

    /// The coordinator `settings` ask for (`None`: local), whose calendar windows (budgets)
    /// follow `calendar`; its epoch is the quota epoch (see [`Self::from_settings`]).
    pub fn with_calendar(
        workers: usize,
        settings: Option<&QuotaSettings>,
        calendar: Calendar,
    ) -> Result<Self, ConfigProblem> {
        let Some(settings) = settings else {
            return Ok(QuotaCoordinator {
                backend: Backend::Local(LocalCoordinator::with_calendar(workers, calendar)),
            });
        };
        let backend = match (settings.backend, &settings.redis) {
            (QuotaBackend::Local, _) => {
                Backend::Local(LocalCoordinator::with_calendar(workers, calendar))
            }
            (QuotaBackend::Redis, Some(redis)) => {
                let remote =
                    RemoteCoordinator::with_calendar(workers, redis, settings.fail_mode, calendar)
                        .map_err(|e| ConfigProblem::new("quota.redis_url", e.to_string()))?;
                Backend::Redis(Box::new(remote))
            }
            (QuotaBackend::Redis, None) => {
                return Err(ConfigProblem::new(
                    "quota.redis_url",
                    "required when backend = \"redis\"",
                ))
            }
        };
        Ok(QuotaCoordinator { backend })
    }

    /// Starts calendar windows (budgets) from their persisted use: (key, period start UNIX
    /// ms, count). The Redis backend keeps its counts in Redis and needs none.
    pub fn seed(&mut self, seeds: impl IntoIterator<Item = (QuotaKey, u64, u64)>) {
        if let Backend::Local(c) = &mut self.backend {
            c.seed(seeds);
        }
    }

    /// Whether this coordinator does network I/O (the Redis backend): its thread may block
    /// for up to [`RedisSettings::io_timeout`](super::RedisSettings::io_timeout) per command.
    pub fn does_io(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Keys this process holds windows for (Redis: those of the fail-open fallback).
    pub fn len(&self) -> usize {
        match &self.backend {
            Backend::Local(c) => c.len(),
            Backend::Redis(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters for metrics.
    pub fn stats(&self) -> QuotaCoordinatorStats {
        match &self.backend {
            Backend::Local(_) => QuotaCoordinatorStats {
                backend_up: true,
                ..QuotaCoordinatorStats::default()
            },
            Backend::Redis(c) => c.stats(),
        }
    }

    /// Applies one worker message at `now_ms`; replies are pushed to `out`.
    pub fn handle(
        &mut self,
        msg: ToCoordinator,
        now_ms: u64,
        out: &mut Vec<(WorkerId, FromCoordinator)>,
    ) {
        match &mut self.backend {
            Backend::Local(c) => c.handle(msg, now_ms, out),
            Backend::Redis(c) => c.handle(msg, now_ms, out),
        }
    }

    /// Forgets keys whose counts have left the window; the Redis backend also reconnects and
    /// checks its connection here. Call it every few hundred ms.
    pub fn tick(&mut self, now_ms: u64) {
        match &mut self.backend {
            Backend::Local(c) => c.tick(now_ms),
            Backend::Redis(c) => c.tick(now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{FailMode, RedisSettings};

    fn settings(backend: QuotaBackend, redis: Option<RedisSettings>) -> QuotaSettings {
        QuotaSettings {
            backend,
            fail_mode: FailMode::FailClosed,
            redis,
            rules: Vec::new(),
        }
    }

    #[test]
    fn local_backend_is_always_up() {
        let c =
            QuotaCoordinator::from_settings(2, &settings(QuotaBackend::Local, None), 0).unwrap();
        assert_eq!(
            c.stats(),
            QuotaCoordinatorStats {
                backend_up: true,
                ..QuotaCoordinatorStats::default()
            }
        );
        assert!(c.is_empty());
    }

    #[test]
    fn redis_backend_needs_a_valid_url() {
        let err = QuotaCoordinator::from_settings(2, &settings(QuotaBackend::Redis, None), 0);
        assert_eq!(err.unwrap_err().key, "quota.redis_url");
        let bad = RedisSettings {
            url: "http://x".into(),
            key_prefix: "p".into(),
            io_timeout: crate::quota::REDIS_IO_TIMEOUT,
        };
        let err = QuotaCoordinator::from_settings(2, &settings(QuotaBackend::Redis, Some(bad)), 0);
        assert_eq!(err.unwrap_err().key, "quota.redis_url");
        let ok = RedisSettings {
            url: "redis://127.0.0.1:1/0".into(),
            key_prefix: "p".into(),
            io_timeout: crate::quota::REDIS_IO_TIMEOUT,
        };
        let c = QuotaCoordinator::from_settings(2, &settings(QuotaBackend::Redis, Some(ok)), 0)
            .unwrap();
        assert!(!c.stats().backend_up, "not connected before the first use");
    }
}
