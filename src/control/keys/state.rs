//! The control thread's side of API keys: the key store in force ([`KeysState`]), laying its
//! table over every snapshot the control thread builds, carrying out admin API commands, and
//! putting in force what changed outside (the keys file's watch, another process's change to
//! the registry). See the parent module's docs.

use std::time::Instant;

use super::{store_error, FileStore, KeyCommand, KeyError, KeyReply, KeyService};
use crate::auth::{ApiKeySettings, KeyRecord, KeySource};
use crate::config::{ConfigError, Snapshot};
use crate::control::watch::{self, FileWatch, Poll};
use crate::inbox::Barrier;
use crate::time::unix_now;

/// The control thread's API keys: the service, the settings it was opened for, and the watch
/// on its file.
pub(in crate::control) struct KeysState {
    service: KeyService,
    settings: ApiKeySettings,
    watch: Option<FileWatch>,
}

impl KeysState {
    /// The key records in force.
    pub(in crate::control) fn records(&self) -> &[KeyRecord] {
        self.service.records()
    }

    pub(in crate::control) fn new(
        service: KeyService,
        settings: ApiKeySettings,
        watch: crate::control::WatchSettings,
    ) -> Self {
        let watch = service
            .watched()
            .map(|p| FileWatch::new(p.to_path_buf(), watch));
        KeysState {
            service,
            settings,
            watch,
        }
    }
}

impl crate::control::State {
    /// Puts the key table in force in `snap`, a config just validated: the service in use
    /// when `[auth.api_keys]` names the same file, else the store it names now (opened here;
    /// failing it fails the reload). Without `[auth.api_keys]` the service is dropped.
    pub(in crate::control) fn overlay_keys(
        &mut self,
        snap: &mut Snapshot,
    ) -> Result<(), ConfigError> {
        let Some(auth) = snap.auth.as_mut() else {
            self.keys = None;
            return Ok(());
        };
        let Some(settings) = auth.api_key_settings().cloned() else {
            self.keys = None;
            return Ok(());
        };
        let reopen = self.keys.as_ref().is_none_or(|k| k.settings != settings);
        let fresh = if reopen {
            Some(KeyService::for_settings(&settings).map_err(|e| store_error(&settings, e))?)
        } else {
            None
        };
        let records = match (&fresh, &self.keys) {
            (Some(s), _) => s.records(),
            (None, Some(k)) => k.service.records(),
            (None, None) => &[],
        };
        auth.set_api_keys(records).map_err(|problems| ConfigError {
            file: settings.source.path().to_path_buf(),
            problems,
        })?;
        if let Some(service) = fresh {
            self.keys = Some(KeysState::new(service, settings, self.watch_settings));
        }
        Ok(())
    }

    /// Carries out one key command of `who` (the admin token's name; module docs, "A
    /// change"): the reply, and the barrier to wait on before answering (`None`: nothing
    /// changed).
    pub(in crate::control) fn key_command(
        &mut self,
        cmd: KeyCommand,
        who: String,
    ) -> Result<(KeyReply, Option<Barrier>), KeyError> {
        let keys = self.keys.as_mut().ok_or(KeyError::NotConfigured)?;
        let mut plan = keys.service.plan(cmd, "admin-api", unix_now())?;
        if let Some(e) = plan.entry.as_mut() {
            e.by = Some(who);
        }
        if plan.entry.is_none() {
            return Ok((plan.reply, None));
        }
        let mut snap = self.current_snapshot().ok_or(KeyError::NotConfigured)?;
        let auth = snap.auth.as_mut().ok_or(KeyError::NotConfigured)?;
        auth.set_api_keys(&plan.records)
            .map_err(KeyError::Invalid)?;
        let keys = self.keys.as_mut().ok_or(KeyError::NotConfigured)?;
        keys.service.commit(&plan)?;
        // The watch must not offer the version just written as an outside edit.
        if let (Some(w), Some(path)) = (&mut keys.watch, keys.service.watched()) {
            if let Ok(c) = watch::read(path) {
                w.dealt_with(c.observation);
            }
        }
        let barrier = self.publish(snap);
        Ok((plan.reply, Some(barrier)))
    }

    /// One look at the keys file; a settled outside edit is checked and put in force. A store
    /// without a file (the registry) is asked whether another process changed it.
    pub(in crate::control) fn poll_keys_file(&mut self) {
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let KeySource::File { file, audit_file } = keys.settings.source.clone() else {
            self.poll_keys_store();
            return;
        };
        let Some(watch) = keys.watch.as_mut() else {
            return;
        };
        let store = FileStore::new(file.clone(), audit_file);
        let file = file.display().to_string();
        let content = match watch.poll(Instant::now()) {
            Poll::Ready(c) => c,
            Poll::Unreadable(e) => {
                eprintln!(
                    "shardgate: keys file {file} cannot be read ({e}); keeping the keys in force"
                );
                return;
            }
            Poll::Empty(_) => {
                eprintln!(
                    "shardgate: keys file {file} is empty; not applied, keeping the keys in force"
                );
                return;
            }
            Poll::Unchanged | Poll::Settling => return,
        };
        watch.dealt_with(content.observation);
        let result = store
            .parse(&content.bytes)
            .map_err(|e| e.to_string())
            .and_then(|records| {
                let mut snap = self.current_snapshot().ok_or("no snapshot in force")?;
                let auth = snap.auth.as_mut().ok_or("no [auth] in force")?;
                auth.set_api_keys(&records).map_err(|p| {
                    ConfigError {
                        file: file.clone().into(),
                        problems: p,
                    }
                    .to_string()
                })?;
                Ok((records, snap))
            });
        match result {
            Ok((records, snap)) => {
                let n = records.len();
                if let Some(k) = self.keys.as_mut() {
                    if let Err(e) = k.service.reload(records) {
                        eprintln!("shardgate: keys file {file} changed but cannot be audited ({e}); not applied");
                        return;
                    }
                }
                // Nobody waits on a watched change.
                drop(self.publish(snap));
                eprintln!("shardgate: applied keys file {file} ({n} keys)");
            }
            Err(e) => eprintln!("shardgate: keys file {file} changed but was NOT applied, keeping the keys in force:\n{e}"),
        }
    }

    /// Puts in force what another process (`shardgate keys --registry`) changed in the key
    /// store; that process audited it. Keys that fail the check are logged and not applied.
    fn poll_keys_store(&mut self) {
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let name = keys.settings.source.path().display().to_string();
        match keys.service.refresh() {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                eprintln!("shardgate: API keys in {name} cannot be read again ({e}); keeping the keys in force");
                return;
            }
        }
        let records = keys.service.records().to_vec();
        let Some(mut snap) = self.current_snapshot() else {
            return;
        };
        let Some(auth) = snap.auth.as_mut() else {
            return;
        };
        if let Err(p) = auth.set_api_keys(&records) {
            let e = ConfigError {
                file: name.clone().into(),
                problems: p,
            };
            eprintln!("shardgate: API keys in {name} changed but were NOT applied:\n{e}");
            return;
        }
        // Nobody waits on a change another process made.
        drop(self.publish(snap));
        eprintln!(
            "shardgate: applied API keys changed in {name} by another process ({} keys)",
            records.len()
        );
    }
}
