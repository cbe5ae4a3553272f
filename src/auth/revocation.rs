//! Token revocation: a per-worker set checked on every request (no locks), and the control
//! thread's persistent log it is built from.
//!
//! # File format
//!
//! UTF-8 text, one entry per line: `<kind> <expires_at> <id>`, where `kind` is `jti` or `sub`,
//! `expires_at` is unix seconds after which the entry no longer matters (for a `jti`, the
//! token's own `exp`), and `id` is the rest of the line (it may contain spaces, not control
//! characters). Blank lines and lines starting with `#` are ignored. Example:
//!
//! ```text
//! # shardgate revocations
//! jti 1767225600 7f3c9a52-1d1e-4c55-b1a0-5e0f3c2d9a10
//! sub 1767312000 user-42
//! ```

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Longest revoked id accepted, in bytes: the longest identity a token is accepted with.
pub const MAX_REVOKED_ID_BYTES: usize = super::claims::MAX_IDENTITY_BYTES;

/// What a revocation matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokedKind {
    /// One token, by its `jti` claim.
    Jti,
    /// Every token of a subject, by the configured subject claim.
    Sub,
}

impl RevokedKind {
    fn as_str(self) -> &'static str {
        match self {
            RevokedKind::Jti => "jti",
            RevokedKind::Sub => "sub",
        }
    }
}

/// One revocation, as the control thread sends it to every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub kind: RevokedKind,
    pub id: String,
    /// Unix seconds; at or after this instant the entry is dropped.
    pub expires_at: u64,
}

impl Revoked {
    /// Validates the id so it round-trips through the file format. The rule is the one a
    /// token's subject and `jti` must meet to be accepted
    /// ([`identity_problem`](super::claims::identity_problem)), so every id a token can be
    /// accepted with can be revoked, and no id is accepted here that no token could carry.
    pub fn new(kind: RevokedKind, id: impl Into<String>, expires_at: u64) -> Result<Self, String> {
        let id = id.into();
        if let Some(why) = super::claims::identity_problem(&id) {
            return Err(format!("revoked id {why}"));
        }
        Ok(Self {
            kind,
            id,
            expires_at,
        })
    }
}

/// The per-worker revocation set. Owned by one worker; the engine calls [`insert`] for each
/// addition the control thread sends and [`purge`] on its timer tick.
///
/// [`insert`]: Revocations::insert
/// [`purge`]: Revocations::purge
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    jti: HashMap<Box<str>, u64>,
    sub: HashMap<Box<str>, u64>,
}

impl Revocations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; a repeated id keeps the later expiry.
    pub fn insert(&mut self, r: Revoked) {
        let map = match r.kind {
            RevokedKind::Jti => &mut self.jti,
            RevokedKind::Sub => &mut self.sub,
        };
        let e = map.entry(r.id.into_boxed_str()).or_insert(r.expires_at);
        *e = (*e).max(r.expires_at);
    }

    /// True when the token's `jti` or subject is revoked at `now`. No allocation.
    pub fn is_revoked(&self, jti: Option<&str>, subject: &str, now: u64) -> bool {
        let live = |m: &HashMap<Box<str>, u64>, k: &str| m.get(k).is_some_and(|&exp| now < exp);
        jti.is_some_and(|j| live(&self.jti, j)) || live(&self.sub, subject)
    }

    /// Drops entries that expired at or before `now`; returns how many were dropped.
    pub fn purge(&mut self, now: u64) -> usize {
        let before = self.len();
        self.jti.retain(|_, exp| now < *exp);
        self.sub.retain(|_, exp| now < *exp);
        before - self.len()
    }

    pub fn len(&self) -> usize {
        self.jti.len() + self.sub.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jti.is_empty() && self.sub.is_empty()
    }
}

impl FromIterator<Revoked> for Revocations {
    fn from_iter<I: IntoIterator<Item = Revoked>>(iter: I) -> Self {
        let mut r = Revocations::new();
        iter.into_iter().for_each(|e| r.insert(e));
        r
    }
}

/// Parses the revocation file format (see the module docs). Errors name the line.
pub fn parse_revocations(text: &str) -> Result<Vec<Revoked>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}", i + 1);
        let mut parts = line.splitn(3, ' ');
        let kind = match parts.next() {
            Some("jti") => RevokedKind::Jti,
            Some("sub") => RevokedKind::Sub,
            _ => return Err(bad("kind must be `jti` or `sub`")),
        };
        let expires_at = parts
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("expires_at must be unix seconds"))?;
        let id = parts.next().ok_or_else(|| bad("missing id"))?;
        out.push(Revoked::new(kind, id, expires_at).map_err(|e| bad(&e))?);
    }
    Ok(out)
}

/// Renders entries in the revocation file format.
pub fn format_revocations(entries: &[Revoked]) -> String {
    let mut s = String::from("# shardgate revocations: <jti|sub> <expires_at unix s> <id>\n");
    for r in entries {
        s.push_str(&format!("{} {} {}\n", r.kind.as_str(), r.expires_at, r.id));
    }
    s
}

/// The control thread's durable revocation list. Not for the data path: it does file I/O.
#[derive(Debug)]
pub struct RevocationLog {
    path: PathBuf,
    entries: Vec<Revoked>,
}

impl RevocationLog {
    /// Loads `path` (a missing file is an empty list), dropping entries expired at `now`.
    pub fn open(path: &Path, now: u64) -> io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut entries = parse_revocations(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        entries.retain(|r| now < r.expires_at);
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Live entries, to seed each worker's [`Revocations`].
    pub fn entries(&self) -> &[Revoked] {
        &self.entries
    }

    /// Records `r` (merging with an existing entry for the same id), drops expired entries and
    /// persists atomically. On error nothing in memory changes, so the caller can report it
    /// and must not broadcast the addition as durable.
    pub fn add(&mut self, r: Revoked, now: u64) -> io::Result<()> {
        let mut next: Vec<Revoked> = self
            .entries
            .iter()
            .filter(|e| now < e.expires_at)
            .cloned()
            .collect();
        match next.iter_mut().find(|e| e.kind == r.kind && e.id == r.id) {
            Some(e) => e.expires_at = e.expires_at.max(r.expires_at),
            None => next.push(r),
        }
        persist_atomically(&self.path, format_revocations(&next).as_bytes())?;
        self.entries = next;
        Ok(())
    }
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it, renames it over `path` and
/// fsyncs the directory, so a crash leaves either the old or the new file, never a torn one.
pub fn persist_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "revocation path has no file name",
        )
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rv(kind: RevokedKind, id: &str, exp: u64) -> Revoked {
        Revoked::new(kind, id, exp).unwrap()
    }

    #[test]
    fn set_matches_jti_and_sub_until_expiry() {
        let mut set: Revocations = [
            rv(RevokedKind::Jti, "t1", 100),
            rv(RevokedKind::Sub, "alice", 200),
        ]
        .into_iter()
        .collect();
        assert!(set.is_revoked(Some("t1"), "bob", 99));
        assert!(
            !set.is_revoked(Some("t1"), "bob", 100),
            "expired entry no longer matches"
        );
        assert!(set.is_revoked(None, "alice", 150));
        assert!(set.is_revoked(Some("other"), "alice", 150));
        assert!(
            !set.is_revoked(Some("alice"), "bob", 150),
            "a jti never matches a sub entry"
        );
        assert_eq!(set.purge(150), 1);
        assert_eq!(set.len(), 1);
        set.insert(rv(RevokedKind::Sub, "alice", 100));
        assert!(
            set.is_revoked(None, "alice", 199),
            "re-insert keeps the later expiry"
        );
        assert_eq!(set.purge(200), 1);
        assert!(set.is_empty());
    }

    #[test]
    fn ids_are_validated() {
        for bad in [
            "",
            " x",
            "x ",
            "a\nb",
            "a\u{7f}",
            "a\u{2028}b",
            "\u{a0}x",
            "x\u{3000}",
        ] {
            assert!(Revoked::new(RevokedKind::Jti, bad, 1).is_err(), "{bad:?}");
        }
        assert!(Revoked::new(RevokedKind::Jti, "x".repeat(MAX_REVOKED_ID_BYTES + 1), 1).is_err());
        assert!(Revoked::new(RevokedKind::Sub, "has inner space", 1).is_ok());
    }

    #[test]
    fn file_format_round_trips_and_reports_lines() {
        let entries = vec![rv(RevokedKind::Jti, "a b", 5), rv(RevokedKind::Sub, "u", 7)];
        assert_eq!(
            parse_revocations(&format_revocations(&entries)).unwrap(),
            entries
        );
        let cases = [
            ("jti 5", "line 1: missing id"),
            ("\nxyz 5 a", "line 2: kind must be `jti` or `sub`"),
            ("sub -1 a", "line 1: expires_at must be unix seconds"),
        ];
        for (text, want) in cases {
            assert_eq!(parse_revocations(text).unwrap_err(), want);
        }
    }

    #[test]
    fn log_persists_atomically_and_drops_expired() {
        let dir = std::env::temp_dir().join(format!("shardgate-revoke-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("revoked.txt");
        let _ = std::fs::remove_file(&path);
        let mut log = RevocationLog::open(&path, 0).unwrap();
        assert!(log.entries().is_empty());
        log.add(rv(RevokedKind::Jti, "old", 10), 0).unwrap();
        log.add(rv(RevokedKind::Jti, "new", 100), 20).unwrap();
        assert_eq!(log.entries(), &[rv(RevokedKind::Jti, "new", 100)]);
        let reopened = RevocationLog::open(&path, 20).unwrap();
        assert_eq!(reopened.entries(), log.entries());
        assert!(RevocationLog::open(&path, 100)
            .unwrap()
            .entries()
            .is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
