//! The TLS listener's PEM files, watched like the config file: when a certificate, key or
//! client CA file the snapshot in force was built from changes and settles (see
//! [`super::watch`]), the control thread reloads the config, which reads the files again.
//!
//! A new pair that does not load — unreadable, not PEM, a key that does not match its
//! certificate — is a config problem like any other (it names the key and the file): the
//! reload is rejected and the certificates in force stay. A correct pair reaches every worker
//! with the snapshot; new connections get it, open ones keep the one they started with.
//! Rotating a pair is best done by writing both files and renaming them into place; a pair
//! caught half-rotated (new certificate, old key) is rejected and the next change of the
//! other file applies both.

use std::path::PathBuf;
use std::time::Instant;

use super::watch::{FileWatch, Poll, WatchSettings};
use crate::config::Snapshot;

/// The watches on the files of `[server.tls]`.
#[derive(Debug)]
pub struct CertWatch {
    settings: WatchSettings,
    files: Vec<(PathBuf, FileWatch)>,
}

impl CertWatch {
    /// Watches the files `snap` was built from, as they are now.
    pub fn new(snap: &Snapshot, settings: WatchSettings) -> CertWatch {
        let mut w = CertWatch {
            settings,
            files: Vec::new(),
        };
        w.follow(snap);
        w
    }

    /// After a snapshot was applied: watches its files (a file watched already keeps its
    /// watch; one no longer used is dropped).
    pub fn follow(&mut self, snap: &Snapshot) {
        let wanted: Vec<PathBuf> = snap
            .server
            .tls
            .iter()
            .flat_map(|t| t.material.files.iter().cloned())
            .collect();
        let mut old = std::mem::take(&mut self.files);
        for path in wanted {
            if self.files.iter().any(|(p, _)| *p == path) {
                continue;
            }
            let watch = match old.iter().position(|(p, _)| *p == path) {
                Some(i) => old.swap_remove(i).1,
                None => FileWatch::new(path.clone(), self.settings),
            };
            self.files.push((path, watch));
        }
    }

    /// One look at every file. True when at least one settled on a new version (each is then
    /// dealt with: a version is offered once).
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for (path, watch) in &mut self.files {
            match watch.poll(now) {
                Poll::Ready(c) => {
                    eprintln!("shardgate: TLS file {} changed", path.display());
                    watch.dealt_with(c.observation);
                    changed = true;
                }
                Poll::Unreadable(e) => {
                    eprintln!(
                        "shardgate: TLS file {} cannot be read ({e})",
                        path.display()
                    )
                }
                Poll::Unchanged | Poll::Settling | Poll::Empty(_) => {}
            }
        }
        changed
    }
}
