//! The config file watch: when has the file on disk changed, and is it done changing?
//!
//! Editors and config-management tools often rewrite a file in place: truncate it, then
//! write it in pieces. A reader that applies whatever parses can catch a prefix that happens
//! to be valid TOML (everything before `[auth]`, say). So a change is applied only once the
//! file is *stable*: two observations at least [`WatchSettings::settle`] apart that agree on
//! the file's identity (device, inode, size, mtime) and on a SHA-256 of its content. An empty
//! (or whitespace-only) file is never applied, however long it stays.
//!
//! Stability is no proof of completeness (a writer may pause longer than the settle
//! interval), which is why the control thread also refuses a watched change that would lower
//! the protection in force (see [`super::protection`]).
//!
//! [`Settle`] is the decision, free of I/O (unit-tested); [`FileWatch`] feeds it from disk.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How often the config file's metadata is looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long the file must stay the same (identity and content) before a change applies.
pub const SETTLE_INTERVAL: Duration = Duration::from_millis(500);

/// How the watch polls; tests shorten both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// Time between two looks at the file.
    pub interval: Duration,
    /// Time a changed file must stay unchanged before it is applied.
    pub settle: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            interval: WATCH_INTERVAL,
            settle: SETTLE_INTERVAL,
        }
    }
}

impl WatchSettings {
    /// The longest a completed write waits before the watch applies it: the settle interval
    /// plus up to two polls (one to see the change, one to see it settled).
    pub fn max_apply_delay(&self) -> Duration {
        self.settle + self.interval * 2
    }
}

/// The file's identity as `stat` reports it; any difference means "changed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub modified: SystemTime,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// The stamp of `path` (following symlinks).
    pub fn of_path(path: &Path) -> io::Result<Stamp> {
        std::fs::metadata(path).map(|m| Stamp::of(&m))
    }
}

/// One version of the file: its identity and a digest of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub stamp: Stamp,
    pub digest: [u8; 32],
    /// Empty or whitespace only.
    pub blank: bool,
}

/// The file's bytes with the observation they were read under.
#[derive(Debug, Clone)]
pub struct FileContent {
    pub observation: Observation,
    pub bytes: Vec<u8>,
}

/// Reads `path` whole. The identity is taken from the open file before and after the read;
/// if it moved in between (a writer was busy), the read is reported as
/// [`io::ErrorKind::Interrupted`] so the caller looks again later.
pub fn read(path: &Path) -> io::Result<FileContent> {
    let mut f = std::fs::File::open(path)?;
    let before = Stamp::of(&f.metadata()?);
    let mut bytes = Vec::with_capacity(before.len as usize);
    f.read_to_end(&mut bytes)?;
    let after = Stamp::of(&f.metadata()?);
    if before != after || after.len != bytes.len() as u64 {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the file changed while it was read",
        ));
    }
    Ok(FileContent {
        observation: Observation::new(after, &bytes),
        bytes,
    })
}

impl Observation {
    pub fn new(stamp: Stamp, bytes: &[u8]) -> Observation {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.as_ref());
        Observation {
            stamp,
            digest,
            blank: bytes.iter().all(u8::is_ascii_whitespace),
        }
    }
}

/// What one look at the file concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The file is the version last dealt with.
    Unchanged,
    /// It changed and has not yet stayed the same for the settle interval.
    Settling,
    /// It settled empty (or blank): never applied. Reported once per such version.
    Empty,
    /// It settled on a new version: load it (then call [`Settle::dealt_with`]).
    Ready,
}

/// The stability decision over a sequence of observations (no I/O).
#[derive(Debug, Clone)]
pub struct Settle {
    settle: Duration,
    /// The version last loaded, refused or reported (not to be looked at again).
    dealt_with: Option<Observation>,
    /// A changed version and when it was first seen as it is.
    pending: Option<(Observation, Instant)>,
}

impl Settle {
    pub fn new(settle: Duration) -> Settle {
        Settle {
            settle,
            dealt_with: None,
            pending: None,
        }
    }

    /// The version last dealt with, if any.
    pub fn current(&self) -> Option<&Observation> {
        self.dealt_with.as_ref()
    }

    /// Whether a version is waiting to settle (the caller must keep reading the content).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Records that `obs` was loaded, refused or reported, so it is not offered again.
    pub fn dealt_with(&mut self, obs: Observation) {
        if self.pending.as_ref().is_some_and(|(p, _)| *p == obs) {
            self.pending = None;
        }
        self.dealt_with = Some(obs);
    }

    /// The file could not be read (missing, or busy): whatever was settling starts over.
    pub fn unreadable(&mut self) {
        self.pending = None;
    }

    /// One observation of the file at `now`.
    pub fn observe(&mut self, obs: Observation, now: Instant) -> Verdict {
        if self.dealt_with.as_ref() == Some(&obs) {
            self.pending = None;
            return Verdict::Unchanged;
        }
        match &self.pending {
            Some((p, since)) if *p == obs => {
                if now.saturating_duration_since(*since) < self.settle {
                    return Verdict::Settling;
                }
                if obs.blank {
                    self.dealt_with(obs);
                    return Verdict::Empty;
                }
                Verdict::Ready
            }
            _ => {
                // New, or changed again while settling: the clock starts over.
                self.pending = Some((obs, now));
                Verdict::Settling
            }
        }
    }
}

/// What [`FileWatch::poll`] found.
#[derive(Debug)]
pub enum Poll {
    Unchanged,
    Settling,
    /// Settled empty or blank; not applied.
    Empty(Observation),
    /// Settled on a new version.
    Ready(FileContent),
    /// The file cannot be read (first time only; settling starts over).
    Unreadable(io::Error),
}

/// [`Settle`] fed from a file on disk.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    settle: Settle,
    /// The last read error reported, so a missing file is logged once, not every poll.
    reported_error: bool,
}

impl FileWatch {
    /// Watches `path`, taking the version on disk now as already dealt with (it is the one
    /// the gateway started from).
    pub fn new(path: PathBuf, settings: WatchSettings) -> FileWatch {
        let mut settle = Settle::new(settings.settle);
        if let Ok(c) = read(&path) {
            settle.dealt_with(c.observation);
        }
        FileWatch {
            path,
            settle,
            reported_error: false,
        }
    }

    /// Records that `obs` was loaded or refused (also by an explicit reload).
    pub fn dealt_with(&mut self, obs: Observation) {
        self.settle.dealt_with(obs);
    }

    /// One look at the file. Cheap when nothing changed: only a `stat`.
    pub fn poll(&mut self, now: Instant) -> Poll {
        let unchanged = match (Stamp::of_path(&self.path), self.settle.current()) {
            (Ok(stamp), Some(cur)) => stamp == cur.stamp && !self.settle.is_pending(),
            _ => false,
        };
        if unchanged {
            return Poll::Unchanged;
        }
        let content = match read(&self.path) {
            Ok(c) => c,
            Err(e) => {
                self.settle.unreadable();
                if e.kind() == io::ErrorKind::Interrupted || self.reported_error {
                    return Poll::Settling;
                }
                self.reported_error = true;
                return Poll::Unreadable(e);
            }
        };
        self.reported_error = false;
        match self.settle.observe(content.observation.clone(), now) {
            Verdict::Unchanged => Poll::Unchanged,
            Verdict::Settling => Poll::Settling,
            Verdict::Empty => Poll::Empty(content.observation),
            Verdict::Ready => Poll::Ready(content),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_millis(400);

    fn stamp(ino: u64, len: u64, mtime_s: u64) -> Stamp {
        Stamp {
            dev: 1,
            ino,
            len,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_s),
        }
    }

    fn obs(ino: u64, mtime_s: u64, text: &str) -> Observation {
        Observation::new(stamp(ino, text.len() as u64, mtime_s), text.as_bytes())
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// A settle machine that has dealt with `base`.
    fn settled_on(base: &Observation) -> Settle {
        let mut s = Settle::new(SETTLE);
        s.dealt_with(base.clone());
        s
    }

    #[test]
    fn a_change_applies_only_after_it_stays_the_same_for_the_settle_interval() {
        let t0 = Instant::now();
        let base = obs(1, 100, "[server]\nold = 1\n");
        let mut s = settled_on(&base);
        assert_eq!(s.observe(base.clone(), t0), Verdict::Unchanged);
        let new = obs(1, 101, "[server]\nnew = 1\n");
        assert_eq!(s.observe(new.clone(), at(t0, 0)), Verdict::Settling);
        assert_eq!(s.observe(new.clone(), at(t0, 399)), Verdict::Settling);
        assert_eq!(s.observe(new.clone(), at(t0, 400)), Verdict::Ready);
        // Still offered until the caller deals with it.
        assert_eq!(s.observe(new.clone(), at(t0, 500)), Verdict::Ready);
        s.dealt_with(new.clone());
        assert_eq!(s.observe(new, at(t0, 600)), Verdict::Unchanged);
    }

    #[test]
    fn any_difference_between_observations_restarts_the_clock() {
        let t0 = Instant::now();
        let base = obs(1, 100, "a = 1\n");
        let text = "[server]\nlisten = 1\n";
        // Each variant differs from `first` in one part of the observation only.
        let first = obs(1, 101, text);
        let mut other_content = first.clone();
        other_content.digest[0] ^= 1;
        let variants = [
            ("content", other_content),
            (
                "size",
                Observation::new(stamp(1, 999, 101), text.as_bytes()),
            ),
            ("mtime", obs(1, 102, text)),
            ("inode", obs(2, 101, text)),
            (
                "device",
                Observation {
                    stamp: Stamp {
                        dev: 9,
                        ..first.stamp
                    },
                    ..first.clone()
                },
            ),
        ];
        for (what, changed) in variants {
            let mut s = settled_on(&base);
            assert_eq!(s.observe(first.clone(), at(t0, 0)), Verdict::Settling);
            assert_eq!(
                s.observe(changed.clone(), at(t0, 450)),
                Verdict::Settling,
                "{what}: a different {what} is a new version"
            );
            assert_eq!(
                s.observe(changed.clone(), at(t0, 800)),
                Verdict::Settling,
                "{what}: the clock restarted at 450 ms"
            );
            assert_eq!(s.observe(changed, at(t0, 850)), Verdict::Ready, "{what}");
        }
    }

    #[test]
    fn a_file_written_in_pieces_is_applied_only_once_complete_and_still() {
        let t0 = Instant::now();
        let full = "[server]\nlisten = \"x\"\n[auth]\nkeys = []\n";
        let mut s = settled_on(&obs(1, 10, full));
        // Truncated, then written in pieces 100 ms apart (each piece a new mtime and size).
        let pieces = [0, 9, 22, full.len()];
        let mut t = 0;
        for (i, &n) in pieces.iter().enumerate() {
            let o = obs(1, 20 + i as u64, &full[..n]);
            assert_eq!(
                s.observe(o.clone(), at(t0, t)),
                Verdict::Settling,
                "piece {i}"
            );
            assert_eq!(
                s.observe(o, at(t0, t + 100)),
                Verdict::Settling,
                "piece {i}"
            );
            t += 100;
        }
        let done = obs(1, 23, full);
        assert_eq!(s.observe(done.clone(), at(t0, t + 300)), Verdict::Ready);
        // Identical content under a new mtime (a touch, or the same text rewritten) is a
        // new version too: the gateway reloads it, as it always did.
        s.dealt_with(done);
        assert_eq!(
            s.observe(obs(1, 24, full), at(t0, t + 400)),
            Verdict::Settling
        );
    }

    #[test]
    fn an_empty_or_blank_file_is_never_ready() {
        let t0 = Instant::now();
        for text in ["", "\n", "  \n\t\n"] {
            let mut s = settled_on(&obs(1, 10, "a = 1\n"));
            let empty = obs(1, 11, text);
            assert_eq!(s.observe(empty.clone(), at(t0, 0)), Verdict::Settling);
            assert_eq!(
                s.observe(empty.clone(), at(t0, 10_000)),
                Verdict::Empty,
                "{text:?}"
            );
            // Reported once, then it is the version dealt with.
            assert_eq!(
                s.observe(empty, at(t0, 20_000)),
                Verdict::Unchanged,
                "{text:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_file_restarts_settling() {
        let t0 = Instant::now();
        let mut s = settled_on(&obs(1, 10, "a = 1\n"));
        let new = obs(2, 11, "b = 2\n");
        assert_eq!(s.observe(new.clone(), at(t0, 0)), Verdict::Settling);
        s.unreadable();
        assert_eq!(s.observe(new.clone(), at(t0, 450)), Verdict::Settling);
        assert_eq!(s.observe(new, at(t0, 850)), Verdict::Ready);
    }

    #[test]
    fn the_file_watch_reads_the_disk() {
        let dir = std::env::temp_dir().join(format!("sg-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let settings = WatchSettings {
            interval: Duration::from_millis(10),
            settle: Duration::from_millis(100),
        };
        let mut w = FileWatch::new(path.clone(), settings);
        let t0 = Instant::now();
        assert!(matches!(w.poll(t0), Poll::Unchanged));
        // Rewritten in place to a different size.
        std::fs::write(&path, "a = 22\n").unwrap();
        assert!(matches!(w.poll(at(t0, 0)), Poll::Settling));
        match w.poll(at(t0, 100)) {
            Poll::Ready(c) => {
                assert_eq!(c.bytes, b"a = 22\n");
                w.dealt_with(c.observation);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(w.poll(at(t0, 200)), Poll::Unchanged));
        // Missing: reported once, then quiet.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(w.poll(at(t0, 300)), Poll::Unreadable(_)));
        assert!(matches!(w.poll(at(t0, 400)), Poll::Settling));
        std::fs::write(&path, "").unwrap();
        assert!(matches!(w.poll(at(t0, 500)), Poll::Settling));
        assert!(matches!(w.poll(at(t0, 600)), Poll::Empty(_)));
        assert!(matches!(w.poll(at(t0, 700)), Poll::Unchanged));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
