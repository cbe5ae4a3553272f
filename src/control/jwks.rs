//! The JWKS thread: fetches the remote key sets of `[[auth.jwks]]` (see `auth::remote` for
//! what is taken and when) on a thread of its own, so a slow identity provider never holds
//! up the data path, the control thread (reloads, revocations, key changes) or the
//! coordination thread. A set whose keys changed goes to the control thread
//! ([`ToControl::RemoteKeys`]), which puts it in force on every worker as a new snapshot.
//!
//! # Schedule
//!
//! Each source is fetched at start, then when its refresh time comes (the answer's `max-age`,
//! else `refresh_secs`), or as soon as its interval allows when a worker saw a token with an
//! unknown `kid` ([`UnknownKid`]). Whatever asks, two fetches of one source are at least
//! `min_refresh_secs` apart: a flood of unknown kids is at most one fetch per interval.
//!
//! # Error Handling
//!
//! A failed fetch (connection, status other than 200, timeout, a body over
//! [`MAX_DOCUMENT_BYTES`](crate::auth::remote::MAX_DOCUMENT_BYTES), a document with no usable
//! key, a discovery document naming another issuer) keeps the keys in force, is logged and
//! counted ([`SourceStatus::failures`], `shardgate_jwks_fetch_failures_total`), and is
//! retried after `min_refresh_secs`. Redirects are not followed (a key set must be where the
//! config or the discovery document says). HTTPS uses rustls (ring) with the webpki roots;
//! `HTTPS_PROXY`/`NO_PROXY` are honoured.
// Control plane: the status the admin thread reads is behind the view's Mutex (never touched
// by a worker).
#![allow(clippy::disallowed_types)]

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{lock_view, SharedView, ToControl};
use crate::auth::remote::{
    self, next_refresh, parse_discovery, parse_jwks, Discovered, SourceSettings, MAX_DOCUMENT_BYTES,
};
use crate::auth::Key;
use crate::config::Snapshot;
use crate::inbox::UnknownKid;
use crate::time::unix_now;

/// How long the thread sleeps with nothing to fetch.
const IDLE: Duration = Duration::from_secs(3600);

/// Messages to the JWKS thread.
pub enum ToJwks {
    /// The sources of the config now in force (a reload changed them, or the first).
    Sources(Vec<SourceSettings>),
    Stop,
}

/// What `/metrics` shows of one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// The source's JWKS URL, or its issuer.
    pub source: String,
    /// Keys in force from it.
    pub keys: usize,
    /// Keys of the last document passed over.
    pub skipped: usize,
    pub fetches: u64,
    pub failures: u64,
    /// Unix seconds of the last good fetch.
    pub last_success: Option<u64>,
    pub last_error: Option<String>,
}

/// The running JWKS thread. Dropping it stops the thread (after a fetch in progress, which
/// its timeout bounds).
pub struct JwksThread {
    tx: Sender<ToJwks>,
    thread: Option<JoinHandle<()>>,
}

impl JwksThread {
    /// Starts the thread: key sets go to `control`, unknown-kid hints come from `hints`,
    /// statuses go to `view`.
    pub fn spawn(
        control: Sender<ToControl>,
        hints: Option<Receiver<UnknownKid>>,
        view: SharedView,
    ) -> std::io::Result<JwksThread> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("shardgate-jwks".into())
            .spawn(move || run(&rx, hints, &control, &view))?;
        Ok(JwksThread {
            tx,
            thread: Some(thread),
        })
    }

    /// Fetches for these sources from now on (keeping the state of those already known).
    pub fn set_sources(&self, sources: Vec<SourceSettings>) {
        let _ = self.tx.send(ToJwks::Sources(sources));
    }
}

impl Drop for JwksThread {
    fn drop(&mut self) {
        let _ = self.tx.send(ToJwks::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One source's fetch state.
struct Source {
    settings: SourceSettings,
    last_attempt: Option<Instant>,
    /// When the keys in force should be fetched again.
    refresh_at: Instant,
    /// A worker saw an unknown `kid` since the last fetch.
    wanted: bool,
    /// Where discovery said the keys are (re-discovered after a failure).
    discovered: Option<Discovered>,
    fingerprint: Option<Vec<(String, &'static str, Vec<u8>)>>,
    status: SourceStatus,
}

impl Source {
    fn new(settings: SourceSettings) -> Source {
        Source {
            status: SourceStatus {
                source: settings.label().to_owned(),
                ..SourceStatus::default()
            },
            settings,
            last_attempt: None,
            refresh_at: Instant::now(),
            wanted: false,
            discovered: None,
            fingerprint: None,
        }
    }

    /// The earliest instant the next fetch may happen (module docs, "Schedule").
    fn next_fetch(&self) -> Instant {
        match self.last_attempt {
            None => self.refresh_at,
            Some(t) => {
                let floor = t + self.settings.min_refresh;
                if self.wanted {
                    floor
                } else {
                    floor.max(self.refresh_at)
                }
            }
        }
    }

    /// Fetches now. `Some(keys)`: the set changed (or is the first).
    fn fetch(&mut self) -> Option<Vec<Key>> {
        let now = Instant::now();
        self.last_attempt = Some(now);
        self.wanted = false;
        self.status.fetches += 1;
        match self.fetch_set() {
            Ok((set, max_age)) => {
                self.refresh_at = now + next_refresh(&self.settings, max_age);
                self.status.last_success = Some(unix_now());
                self.status.last_error = None;
                self.status.keys = set.keys.len();
                self.status.skipped = set.skipped.len();
                let fingerprint = set.fingerprint();
                if self.fingerprint.as_ref() == Some(&fingerprint) {
                    return None;
                }
                for (kid, why) in &set.skipped {
                    eprintln!(
                        "shardgate: key set {}: key `{kid}` passed over: {why}",
                        self.status.source
                    );
                }
                self.fingerprint = Some(fingerprint);
                Some(set.keys)
            }
            Err(e) => {
                self.refresh_at = now + self.settings.min_refresh;
                self.discovered = None;
                self.status.failures += 1;
                eprintln!(
                    "shardgate: key set {} not fetched ({e}); keeping the {} keys in force",
                    self.status.source, self.status.keys
                );
                self.status.last_error = Some(e);
                None
            }
        }
    }

    /// Discovery (when needed), then the set; with the answer's `max-age`.
    fn fetch_set(&mut self) -> Result<(remote::ParsedSet, Option<u64>), String> {
        let agent = agent(self.settings.timeout);
        let (uri, rsa_alg) = match (&self.settings.jwks_uri, &self.discovered) {
            (Some(u), _) => (u.clone(), self.settings.rsa_alg),
            (None, Some(d)) => (d.jwks_uri.clone(), self.settings.rsa_alg.or(d.rsa_alg)),
            (None, None) => {
                let issuer = self.settings.issuer.as_deref().unwrap_or_default();
                let at = self.settings.discovery_uri().unwrap_or_default();
                let (body, _) = get(&agent, &at)?;
                let d = parse_discovery(&body, issuer).map_err(|e| format!("{at}: {e}"))?;
                let found = (d.jwks_uri.clone(), self.settings.rsa_alg.or(d.rsa_alg));
                self.discovered = Some(d);
                found
            }
        };
        let (body, cache_control) = get(&agent, &uri)?;
        let set = parse_jwks(&body, rsa_alg, self.settings.issuer.as_deref())
            .map_err(|e| format!("{uri}: {e}"))?;
        Ok((set, cache_control.as_deref().and_then(remote::max_age)))
    }
}

/// A client for one fetch: bounded by `timeout` as a whole, no redirects, every status an
/// answer.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("shardgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// `GET uri`: the body (at most [`MAX_DOCUMENT_BYTES`]) of a 200 and its `Cache-Control`.
fn get(agent: &ureq::Agent, uri: &str) -> Result<(Vec<u8>, Option<String>), String> {
    let mut resp = agent
        .get(uri)
        .header("accept", "application/json")
        .call()
        .map_err(|e| format!("GET {uri}: {e}"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("GET {uri}: status {status}"));
    }
    let cache_control = resp
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT_BYTES)
        .read_to_vec()
        .map_err(|e| format!("GET {uri}: {e}"))?;
    Ok((body, cache_control))
}

fn run(
    rx: &Receiver<ToJwks>,
    hints: Option<Receiver<UnknownKid>>,
    control: &Sender<ToControl>,
    view: &SharedView,
) {
    let mut hints = hints.unwrap_or_else(crossbeam_channel::never);
    let mut sources: Vec<Source> = Vec::new();
    loop {
        let mut fetched = false;
        for s in &mut sources {
            if Instant::now() >= s.next_fetch() {
                fetched = true;
                if let Some(keys) = s.fetch() {
                    let _ = control.send(ToControl::RemoteKeys(s.settings.clone(), keys));
                }
            }
        }
        if fetched {
            publish_status(view, &sources);
        }
        let now = Instant::now();
        let wake = sources
            .iter()
            .map(Source::next_fetch)
            .min()
            .unwrap_or(now + IDLE);
        crossbeam_channel::select! {
            recv(rx) -> m => match m {
                Ok(ToJwks::Sources(list)) => {
                    reconcile(&mut sources, list);
                    publish_status(view, &sources);
                }
                Ok(ToJwks::Stop) | Err(_) => return,
            },
            recv(hints) -> h => match h {
                Ok(UnknownKid) => sources.iter_mut().for_each(|s| s.wanted = true),
                Err(_) => hints = crossbeam_channel::never(),
            },
            default(wake.saturating_duration_since(now)) => {}
        }
    }
}

/// Keeps the state of sources still configured, adds new ones (fetched at once), drops the
/// rest.
fn reconcile(sources: &mut Vec<Source>, list: Vec<SourceSettings>) {
    let mut old = std::mem::take(sources);
    for settings in list {
        match old.iter().position(|s| s.settings == settings) {
            Some(i) => sources.push(old.swap_remove(i)),
            None => sources.push(Source::new(settings)),
        }
    }
}

fn publish_status(view: &SharedView, sources: &[Source]) {
    lock_view(view).jwks = sources.iter().map(|s| s.status.clone()).collect();
}

impl super::State {
    /// Keys the JWKS thread fetched for `source`: kept for later reloads, and put in force
    /// (the next generation) when the config in force has that source.
    pub(super) fn remote_keys(&mut self, source: SourceSettings, keys: Vec<Key>) {
        match self.remote.iter_mut().find(|(s, _)| *s == source) {
            Some(entry) => entry.1 = keys.clone(),
            None => self.remote.push((source.clone(), keys.clone())),
        }
        let Some(mut snap) = self.current_snapshot() else {
            return;
        };
        let n = keys.len();
        if snap
            .auth
            .as_mut()
            .is_some_and(|a| a.set_remote_keys(&source, keys))
        {
            // Nobody waits on a fetched set.
            drop(self.publish(snap));
            eprintln!(
                "shardgate: key set {} in force ({n} keys), generation {}",
                source.label(),
                self.generation
            );
        }
    }

    /// Puts the keys fetched so far into `snap`, a config just validated, for each of its
    /// sources; forgets the keys of sources it no longer has.
    pub(super) fn overlay_remote(&mut self, snap: &mut Snapshot) {
        let Some(auth) = snap.auth.as_mut() else {
            self.remote.clear();
            return;
        };
        let configured: Vec<SourceSettings> = auth
            .remote_sources()
            .iter()
            .map(|s| s.settings.clone())
            .collect();
        self.remote.retain(|(s, _)| configured.contains(s));
        for (s, keys) in &self.remote {
            auth.set_remote_keys(s, keys.clone());
        }
    }

    /// Tells the JWKS thread the sources of the snapshot in force, starting it for the first.
    pub(super) fn sync_jwks(&mut self) {
        let sources: Vec<SourceSettings> = lock_view(&self.view)
            .snapshot
            .as_ref()
            .and_then(|s| s.auth.as_ref())
            .map(|a| {
                a.remote_sources()
                    .iter()
                    .map(|s| s.settings.clone())
                    .collect()
            })
            .unwrap_or_default();
        if self.jwks.is_none() && !sources.is_empty() {
            match JwksThread::spawn(self.tx.clone(), self.key_hints.take(), self.view.clone()) {
                Ok(t) => self.jwks = Some(t),
                Err(e) => eprintln!("shardgate: cannot start the JWKS thread: {e}"),
            }
        }
        if let Some(t) = &self.jwks {
            t.set_sources(sources);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min_refresh_s: u64, refresh_s: u64) -> SourceSettings {
        SourceSettings {
            jwks_uri: Some("http://127.0.0.1:9/jwks".into()),
            issuer: None,
            refresh: Duration::from_secs(refresh_s),
            min_refresh: Duration::from_secs(min_refresh_s),
            timeout: Duration::from_millis(100),
            rsa_alg: None,
        }
    }

    #[test]
    fn fetches_are_at_least_the_minimum_interval_apart_whatever_asks() {
        let mut s = Source::new(settings(10, 300));
        let start = s.next_fetch();
        assert!(start <= Instant::now(), "the first fetch is at once");
        let t = Instant::now();
        s.last_attempt = Some(t);
        s.refresh_at = t + Duration::from_secs(300);
        assert_eq!(s.next_fetch(), t + Duration::from_secs(300));
        // An unknown kid brings the fetch forward, but not before the interval.
        s.wanted = true;
        assert_eq!(s.next_fetch(), t + Duration::from_secs(10));
        // A short max-age does not beat the interval either.
        s.wanted = false;
        s.refresh_at = t + Duration::from_secs(1);
        assert_eq!(s.next_fetch(), t + Duration::from_secs(10));
    }

    #[test]
    fn a_failed_fetch_keeps_nothing_new_and_retries_after_the_interval() {
        // Port 9 (discard) on loopback: refused.
        let mut s = Source::new(settings(10, 300));
        assert!(s.fetch().is_none());
        assert_eq!((s.status.fetches, s.status.failures), (1, 1));
        assert!(s.status.last_error.is_some());
        let t = s.last_attempt.unwrap();
        assert_eq!(s.next_fetch(), t + Duration::from_secs(10));
    }

    #[test]
    fn reconcile_keeps_known_sources() {
        let mut sources = vec![
            Source::new(settings(10, 300)),
            Source::new(settings(20, 300)),
        ];
        sources[0].status.fetches = 7;
        reconcile(&mut sources, vec![settings(10, 300), settings(30, 300)]);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].status.fetches, 7);
        assert_eq!(sources[1].settings.min_refresh, Duration::from_secs(30));
        assert_eq!(sources[1].status.fetches, 0);
    }
}
