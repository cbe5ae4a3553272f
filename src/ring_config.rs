//! The io_uring settings an operator chooses: the `[server.io_uring]` table and
//! `server.busy_poll_us` (issue #13). [`crate::runtime`] builds each worker's ring from
//! [`IoUringSettings`] and, when a spin budget is set, runs the worker's busy poll
//! ([`crate::runtime`]'s `spin` module). Every setting needs a restart (`config::snapshot`).
//!
//! What is exposed is what `monoio::RuntimeBuilder::uring_builder` passes to the kernel and an
//! operator has a reason to change per host: the submission queue size, a kernel submission
//! thread (`IORING_SETUP_SQPOLL` and its idle time) and the task-run modes
//! (`IORING_SETUP_COOP_TASKRUN`, `IORING_SETUP_SINGLE_ISSUER`, `IORING_SETUP_DEFER_TASKRUN`).
//! Each worker thread creates its own ring and is the only thread that submits to it, so
//! `single_issuer` holds by construction. Combinations the kernel refuses are refused here
//! with the key that makes them invalid; a kernel too old for a chosen flag fails the worker's
//! start with the ring's error (a chosen setting never falls back to epoll silently).
//!
//! `coop_taskrun` is on unless written `false` (or `sqpoll` is on, which the kernel does not
//! combine with it): without it, a completion that arrives while the worker runs interrupts
//! it (an inter-processor interrupt, then the task work on the way back to user space); with
//! it, the completion waits for the worker's next entry into the kernel, which comes within
//! the same loop round. At 5,000 req/s open loop it cut the gateway's CPU per request by ~19 %
//! (README, "io_uring settings"). A kernel older than 5.19 refuses the flag: when it was not
//! written, the worker then builds its ring without it.

use std::time::Duration;

use serde::Deserialize;

use crate::config_types::ConfigProblem;

/// Submission queue entries per worker when `entries` is not set.
pub const DEFAULT_ENTRIES: u32 = 4096;
/// Fewest entries monoio builds a ring with.
pub const MIN_ENTRIES: u32 = 256;
/// Most entries the kernel accepts (`IORING_MAX_ENTRIES`).
pub const MAX_ENTRIES: u32 = 32_768;
/// The kernel submission thread's idle time before it sleeps, when `sqpoll_idle_ms` is unset.
pub const DEFAULT_SQPOLL_IDLE: Duration = Duration::from_millis(1000);
/// Longest `sqpoll_idle_ms` accepted.
pub const MAX_SQPOLL_IDLE_MS: u64 = 60_000;
/// Longest `server.busy_poll_us` accepted (a spin budget past this is a misconfiguration: the
/// worker would never sleep between requests a second apart on a quiet host anyway).
pub const MAX_BUSY_POLL_US: u64 = 100_000;

/// `[server.io_uring]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawIoUring {
    pub entries: Option<u32>,
    pub sqpoll: Option<bool>,
    pub sqpoll_idle_ms: Option<u64>,
    pub coop_taskrun: Option<bool>,
    pub single_issuer: Option<bool>,
    pub defer_taskrun: Option<bool>,
}

/// Validated `[server.io_uring]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoUringSettings {
    /// Submission queue entries (a power of two).
    pub entries: u32,
    /// The kernel submission thread's idle time; `None`: no submission thread.
    pub sqpoll: Option<Duration>,
    /// `IORING_SETUP_COOP_TASKRUN`: on by default (off with `sqpoll`).
    pub coop_taskrun: bool,
    /// Whether `coop_taskrun` was written: a chosen flag the kernel refuses fails the start,
    /// the default is dropped instead ([`Self::without_default_coop`]).
    pub coop_taskrun_set: bool,
    pub single_issuer: bool,
    pub defer_taskrun: bool,
}

impl Default for IoUringSettings {
    fn default() -> Self {
        Self {
            entries: DEFAULT_ENTRIES,
            sqpoll: None,
            coop_taskrun: true,
            coop_taskrun_set: false,
            single_issuer: false,
            defer_taskrun: false,
        }
    }
}

impl IoUringSettings {
    /// Whether any setup flag is chosen (then a ring the kernel refuses fails the start).
    pub fn has_flags(&self) -> bool {
        self.sqpoll.is_some()
            || (self.coop_taskrun && self.coop_taskrun_set)
            || self.single_issuer
            || self.defer_taskrun
    }

    /// The same settings without `coop_taskrun` when it is on by default only (not written):
    /// what to build when the kernel refuses the first ring. `None` when there is nothing
    /// to drop.
    pub fn without_default_coop(&self) -> Option<Self> {
        (self.coop_taskrun && !self.coop_taskrun_set).then_some(Self {
            coop_taskrun: false,
            ..*self
        })
    }
}

impl RawIoUring {
    /// The validated settings; `problems` gets one entry per bad value or combination.
    pub fn build(&self, problems: &mut Vec<ConfigProblem>) -> IoUringSettings {
        let key = |k: &str| format!("server.io_uring.{k}");
        let d = IoUringSettings::default();
        let entries = self.entries.unwrap_or(d.entries);
        if !(MIN_ENTRIES..=MAX_ENTRIES).contains(&entries) || !entries.is_power_of_two() {
            problems.push(ConfigProblem::new(
                key("entries"),
                format!("{entries} is not a power of two from {MIN_ENTRIES} to {MAX_ENTRIES}"),
            ));
        }
        let sqpoll_on = self.sqpoll.unwrap_or(false);
        let idle = match self.sqpoll_idle_ms {
            Some(ms) if !sqpoll_on => {
                problems.push(ConfigProblem::new(
                    key("sqpoll_idle_ms"),
                    format!("{ms} has no effect without sqpoll = true"),
                ));
                DEFAULT_SQPOLL_IDLE
            }
            Some(ms) if ms == 0 || ms > MAX_SQPOLL_IDLE_MS => {
                problems.push(ConfigProblem::new(
                    key("sqpoll_idle_ms"),
                    format!("{ms} is not from 1 to {MAX_SQPOLL_IDLE_MS}"),
                ));
                DEFAULT_SQPOLL_IDLE
            }
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_SQPOLL_IDLE,
        };
        let single_issuer = self.single_issuer.unwrap_or(false);
        let defer_taskrun = self.defer_taskrun.unwrap_or(false);
        if defer_taskrun && !single_issuer {
            problems.push(ConfigProblem::new(
                key("defer_taskrun"),
                "needs single_issuer = true (the kernel refuses it otherwise)",
            ));
        }
        if defer_taskrun && sqpoll_on {
            problems.push(ConfigProblem::new(
                key("defer_taskrun"),
                "cannot be combined with sqpoll = true (the kernel refuses it)",
            ));
        }
        if self.coop_taskrun == Some(true) && sqpoll_on {
            problems.push(ConfigProblem::new(
                key("coop_taskrun"),
                "cannot be combined with sqpoll = true (the kernel refuses it; the \
                 submission thread already runs completions without interrupting the worker)",
            ));
        }
        IoUringSettings {
            entries,
            sqpoll: sqpoll_on.then_some(idle),
            coop_taskrun: self.coop_taskrun.unwrap_or(!sqpoll_on),
            coop_taskrun_set: self.coop_taskrun.is_some(),
            single_issuer,
            defer_taskrun,
        }
    }
}

/// Validates `server.busy_poll_us`: the spin budget (zero: none).
pub fn busy_poll(us: Option<u64>, problems: &mut Vec<ConfigProblem>) -> Duration {
    match us {
        Some(us) if us > MAX_BUSY_POLL_US => {
            problems.push(ConfigProblem::new(
                "server.busy_poll_us",
                format!("{us} is more than {MAX_BUSY_POLL_US} (0 turns busy polling off)"),
            ));
            Duration::ZERO
        }
        Some(us) => Duration::from_micros(us),
        None => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> (IoUringSettings, Vec<String>) {
        let raw: RawIoUring = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let s = raw.build(&mut problems);
        (s, problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn empty_table_is_the_default() {
        let (s, p) = build("");
        assert_eq!(s, IoUringSettings::default());
        assert!(p.is_empty(), "{p:?}");
        assert!(
            !s.has_flags(),
            "the default coop_taskrun is not a chosen flag"
        );
        assert!(s.coop_taskrun && !s.coop_taskrun_set);
    }

    /// `coop_taskrun`: on when unset (off when sqpoll is on), as written otherwise; only a
    /// written `true` is a flag the start insists on, and only the default is dropped when
    /// the kernel refuses it.
    #[test]
    fn coop_taskrun_defaults_on_and_only_the_default_is_dropped() {
        let cases = [
            ("", true, false, true),
            ("coop_taskrun = true", true, true, false),
            ("coop_taskrun = false", false, false, false),
            ("sqpoll = true", false, true, false),
            ("sqpoll = true\ncoop_taskrun = false", false, true, false),
            ("single_issuer = true", true, true, true),
        ];
        for (text, coop, flags, droppable) in cases {
            let (s, p) = build(text);
            assert!(p.is_empty(), "{text}: {p:?}");
            assert_eq!(s.coop_taskrun, coop, "{text}");
            assert_eq!(s.has_flags(), flags, "{text}");
            let dropped = s.without_default_coop();
            assert_eq!(dropped.is_some(), droppable, "{text}");
            if let Some(d) = dropped {
                assert_eq!(
                    d,
                    IoUringSettings {
                        coop_taskrun: false,
                        ..s
                    },
                    "{text}"
                );
                assert!(d.without_default_coop().is_none());
            }
        }
    }

    #[test]
    fn every_setting_is_read() {
        let (s, p) = build(
            "entries = 1024\nsqpoll = true\nsqpoll_idle_ms = 50\ncoop_taskrun = false\n\
             single_issuer = true",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.entries, 1024);
        assert_eq!(s.sqpoll, Some(Duration::from_millis(50)));
        assert!(!s.coop_taskrun && s.single_issuer && !s.defer_taskrun);
        assert!(s.has_flags());
        let (s, p) = build("coop_taskrun = true\nsingle_issuer = true");
        assert!(p.is_empty(), "{p:?}");
        assert!(s.coop_taskrun && s.coop_taskrun_set && s.single_issuer);
        let (s, p) = build("single_issuer = true\ndefer_taskrun = true");
        assert!(p.is_empty(), "{p:?}");
        assert!(s.defer_taskrun && s.sqpoll.is_none());
    }

    /// Each bad value or combination names its key.
    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str)] = &[
            (
                "entries = 100",
                "server.io_uring.entries: 100 is not a power of two",
            ),
            (
                "entries = 1000",
                "server.io_uring.entries: 1000 is not a power of two",
            ),
            ("entries = 65536", "server.io_uring.entries: 65536 is not"),
            ("entries = 0", "server.io_uring.entries: 0 is not"),
            (
                "sqpoll_idle_ms = 10",
                "server.io_uring.sqpoll_idle_ms: 10 has no effect",
            ),
            (
                "sqpoll = false\nsqpoll_idle_ms = 10",
                "server.io_uring.sqpoll_idle_ms: 10 has no effect",
            ),
            (
                "sqpoll = true\nsqpoll_idle_ms = 0",
                "server.io_uring.sqpoll_idle_ms: 0 is not",
            ),
            (
                "sqpoll = true\nsqpoll_idle_ms = 60001",
                "server.io_uring.sqpoll_idle_ms: 60001 is not",
            ),
            (
                "defer_taskrun = true",
                "server.io_uring.defer_taskrun: needs single_issuer",
            ),
            (
                "single_issuer = false\ndefer_taskrun = true",
                "server.io_uring.defer_taskrun: needs single_issuer",
            ),
            (
                "sqpoll = true\nsingle_issuer = true\ndefer_taskrun = true",
                "server.io_uring.defer_taskrun: cannot be combined with sqpoll",
            ),
            (
                "sqpoll = true\ncoop_taskrun = true",
                "server.io_uring.coop_taskrun: cannot be combined with sqpoll",
            ),
        ];
        for (text, want) in cases {
            let (_, p) = build(text);
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert!(p[0].starts_with(want), "{text}: {p:?}");
        }
    }

    #[test]
    fn every_problem_is_collected() {
        let (_, p) = build("entries = 3\nsqpoll_idle_ms = 5\ndefer_taskrun = true");
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawIoUring>("sq_poll = true").is_err());
        assert!(toml::from_str::<RawIoUring>("entries = -1").is_err());
    }

    #[test]
    fn busy_poll_budget() {
        let mut p = Vec::new();
        assert_eq!(busy_poll(None, &mut p), Duration::ZERO);
        assert_eq!(busy_poll(Some(0), &mut p), Duration::ZERO);
        assert_eq!(busy_poll(Some(50), &mut p), Duration::from_micros(50));
        assert_eq!(
            busy_poll(Some(MAX_BUSY_POLL_US), &mut p),
            Duration::from_micros(MAX_BUSY_POLL_US)
        );
        assert!(p.is_empty());
        busy_poll(Some(MAX_BUSY_POLL_US + 1), &mut p);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].to_string().starts_with("server.busy_poll_us: "),
            "{}",
            p[0]
        );
    }
}
