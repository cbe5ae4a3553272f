//! Where key records live: the [`KeyStore`] boundary, and the file store behind it (the
//! registry's is [`super::sqlite`]). A store keeps records (digests, never secrets) and an
//! append-only audit trail of every change; the control thread is its only user.
//!
//! # The file store
//!
//! The keys file is one JSON document ([`KeysFile`]): a truncated JSON document never parses,
//! so a half-written file is refused rather than read short, and the control thread's file
//! watch only offers a version that stayed the same across its settle interval. The store
//! rewrites the file whole on every change: a temporary file in the same directory (mode
//! 0600), synced, renamed over the file. The audit trail is a JSON-lines file next to it,
//! appended to and synced ([`AuditEntry`]).
//!
//! A change is stored with its audit entry ([`KeyStore::commit`]): the file store writes the
//! file, then appends the entry, and writes the previous records back if the entry cannot be
//! written; the registry store does both in one transaction.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::auth::apikey::record::FILE_VERSION;
use crate::auth::apikey::{KeyRecord, KeysFile};
use crate::config::{ConfigError, ConfigProblem};

/// One change to the keys, as the audit trail records it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    /// `create`, `disable`, `enable`, `rotate`, `delete`, or `reload` (an outside edit of the
    /// keys file was put in force).
    pub action: &'static str,
    /// The key's id (`-` for a reload).
    pub id: String,
    /// The key's name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The display prefix of a new secret (create, rotate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Who asked: `admin-api`, `cli`, `file-watch`.
    pub actor: &'static str,
    /// The admin token's name, for a change through the admin API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Anything else worth keeping (a rotation's grace end, a reload's key count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a store could not do what was asked.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The stored records are not valid: every problem, with the store's name.
    Invalid(ConfigError),
    /// Reading or writing failed.
    Io(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Invalid(e) => write!(f, "{e}"),
            StoreError::Io(e) => f.write_str(e),
        }
    }
}

/// Where the control thread keeps key records (module docs).
pub trait KeyStore: Send {
    /// Every stored record, checked.
    fn load(&mut self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Stores `records`, the whole set after the change `entry` describes (`before`: the set
    /// before it), and `entry` in the audit trail: both, or neither.
    fn commit(
        &mut self,
        before: &[KeyRecord],
        records: &[KeyRecord],
        entry: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Appends `entry` to the audit trail (durably: it returns once it is stored).
    fn audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The file an outside edit changes (the control thread watches it), if any.
    fn watched(&self) -> Option<&Path>;
    /// Whether another process changed the stored keys since this store last read or wrote
    /// them (a store without a watched file; the control thread asks on its tick).
    fn changed_elsewhere(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// The store's name in messages (`file /etc/sg/keys.json`).
    fn describe(&self) -> String;
}

/// The keys file and its audit file.
#[derive(Debug, Clone)]
pub struct FileStore {
    file: PathBuf,
    audit_file: PathBuf,
}

impl FileStore {
    pub fn new(file: PathBuf, audit_file: PathBuf) -> FileStore {
        FileStore { file, audit_file }
    }

    /// Parses and checks the keys file's bytes.
    pub fn parse(&self, bytes: &[u8]) -> Result<Vec<KeyRecord>, StoreError> {
        let invalid = |problems| {
            StoreError::Invalid(ConfigError {
                file: self.file.clone(),
                problems,
            })
        };
        let doc: KeysFile = serde_json::from_slice(bytes).map_err(|e| {
            invalid(vec![ConfigProblem::new(
                format!("(line {})", e.line()),
                format!("not a keys file: {e}"),
            )])
        })?;
        let problems = doc.problems();
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        Ok(doc.keys)
    }
}

impl KeyStore for FileStore {
    /// A missing file is an empty set (the first change creates it).
    fn load(&mut self) -> Result<Vec<KeyRecord>, StoreError> {
        match std::fs::read(&self.file) {
            Ok(bytes) => self.parse(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StoreError::Io(format!(
                "cannot read {}: {e}",
                self.file.display()
            ))),
        }
    }

    fn commit(
        &mut self,
        before: &[KeyRecord],
        records: &[KeyRecord],
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.save(records)?;
        if let Err(e) = self.audit(entry) {
            let _ = self.save(before);
            return Err(e);
        }
        Ok(())
    }

    fn audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.append_audit(entry)
    }

    fn watched(&self) -> Option<&Path> {
        Some(&self.file)
    }

    fn describe(&self) -> String {
        format!("file {}", self.file.display())
    }
}

impl FileStore {
    /// Writes `records` as the whole file.
    fn save(&mut self, records: &[KeyRecord]) -> Result<(), StoreError> {
        let doc = KeysFile {
            version: FILE_VERSION,
            keys: records.to_vec(),
        };
        let mut text = serde_json::to_vec_pretty(&doc)
            .map_err(|e| StoreError::Io(format!("cannot encode the keys: {e}")))?;
        text.push(b'\n');
        write_atomically(&self.file, &text)
            .map_err(|e| StoreError::Io(format!("cannot write {}: {e}", self.file.display())))
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        let fail = |e: std::io::Error| {
            StoreError::Io(format!(
                "cannot append to the audit file {}: {e}",
                self.audit_file.display()
            ))
        };
        let mut line = serde_json::to_vec(entry).map_err(|e| StoreError::Io(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.audit_file)
            .map_err(fail)?;
        f.write_all(&line).map_err(fail)?;
        f.sync_data().map_err(fail)
    }
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600), syncs it and renames it over
/// `path`, so a reader sees the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-keystore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entry(action: &'static str) -> AuditEntry {
        AuditEntry {
            at: 1,
            action,
            id: "key_1".into(),
            name: Some("n".into()),
            prefix: None,
            actor: "cli",
            by: None,
            detail: None,
        }
    }

    #[test]
    fn a_missing_file_is_empty_and_a_save_reads_back() {
        let d = dir("roundtrip");
        let mut s = FileStore::new(d.join("keys.json"), d.join("keys.json.audit.jsonl"));
        assert_eq!(s.load().unwrap(), vec![]);
        let rng = ring::rand::SystemRandom::new();
        let secret = crate::auth::apikey::record::generate_secret(&rng, 5).unwrap();
        let rec = KeyRecord {
            id: "key_1".into(),
            name: "n".into(),
            owner: "o".into(),
            tenant: None,
            label: None,
            models: vec!["m*".into()],
            scopes: vec![],
            budgets: vec![],
            claims: Default::default(),
            expires_at: None,
            enabled: true,
            created_at: 5,
            secrets: vec![secret.record],
        };
        s.commit(&[], std::slice::from_ref(&rec), &entry("create"))
            .unwrap();
        assert_eq!(s.load().unwrap(), vec![rec]);
        let text = std::fs::read_to_string(d.join("keys.json")).unwrap();
        assert!(!text.contains(&secret.key), "the secret is never stored");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn truncated_and_invalid_files_are_refused_naming_the_file() {
        let d = dir("invalid");
        let file = d.join("keys.json");
        let s = FileStore::new(file.clone(), d.join("a.jsonl"));
        let good = r#"{"version": 1, "keys": []}"#;
        assert!(s.parse(good.as_bytes()).is_ok());
        for cut in 1..good.len() {
            assert!(
                s.parse(&good.as_bytes()[..cut]).is_err(),
                "{}",
                &good[..cut]
            );
        }
        let Err(StoreError::Invalid(e)) = s.parse(br#"{"version": 1, "keys": [], "x": 1}"#) else {
            panic!("unknown field accepted")
        };
        assert_eq!(e.file, file);
        let Err(StoreError::Invalid(e)) = s.parse(br#"{"version": 2}"#) else {
            panic!("wrong version accepted")
        };
        assert_eq!(e.problems[0].key, "version");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_audit_trail_is_appended_one_json_line_per_change() {
        let d = dir("audit");
        let mut s = FileStore::new(d.join("keys.json"), d.join("audit.jsonl"));
        s.audit(&entry("create")).unwrap();
        s.audit(&entry("disable")).unwrap();
        let text = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["action"], "create");
        assert_eq!(lines[1]["action"], "disable");
        assert_eq!(lines[1]["id"], "key_1");
        let _ = std::fs::remove_dir_all(&d);
    }
}
