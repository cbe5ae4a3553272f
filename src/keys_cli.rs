//! `shardgate keys ...`: API key management from the command line, through a running
//! gateway's admin API (`--admin`, the default), directly in a keys file (`--file`, for
//! GitOps or a gateway that is not running; a running gateway's file watch puts the change
//! in force) or directly in the model registry's database (`--registry`; a running gateway
//! sees the change on its next tick and puts it in force). Prints the answer as JSON on
//! stdout; a new key (create, rotate) is in its `key` field, shown this once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use shardgate::admin::{self, keys::view};
use shardgate::auth::{ApiKeySettings, KeySource};
use shardgate::control::keys::{
    FileStore, KeyCommand, KeyError, KeyReply, KeyService, KeyStore, NewKey,
};

#[derive(Args)]
pub struct KeysArgs {
    /// Admin address of the running gateway (`[admin] listen`).
    #[arg(long, default_value = admin::DEMO_ADMIN, conflicts_with_all = ["file", "registry"])]
    admin: std::net::SocketAddr,
    /// Admin bearer token (or env SHARDGATE_ADMIN_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Work on this keys file instead of a running gateway.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The audit file with `--file` (default: the keys file's name + `.audit.jsonl`).
    #[arg(long, requires = "file")]
    audit_file: Option<PathBuf>,
    /// Work on the keys in this model registry database (`[registry] path`) instead.
    #[arg(long, conflicts_with = "file")]
    registry: Option<PathBuf>,
    #[command(subcommand)]
    op: KeysOp,
}

#[derive(Subcommand)]
enum KeysOp {
    /// List every key (never a secret or a digest).
    List,
    /// Show one key.
    Show { id: String },
    /// Create a key; prints it once.
    Create {
        #[arg(long)]
        name: String,
        /// The caller's subject (default: the name).
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Routing label (canary).
        #[arg(long)]
        label: Option<String>,
        /// A model pattern the key may use (`gpt-4o*`); repeat for more. None: every model.
        #[arg(long = "model")]
        models: Vec<String>,
        /// A scope the key grants; repeat for more.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A budget the key draws from; repeat for more.
        #[arg(long = "budget")]
        budgets: Vec<String>,
        /// `name=value`: a claim for claim headers; repeat for more.
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Expiry, unix seconds.
        #[arg(long, conflicts_with = "expires_in")]
        expires_at: Option<u64>,
        /// Expiry from now: `3600`, `90s`, `15m`, `12h`, `30d`.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Refuse the key from now on (it can be enabled again).
    Disable { id: String },
    /// Accept a disabled key again.
    Enable { id: String },
    /// Give the key a new secret (printed once); the old one works until the grace ends.
    Rotate {
        id: String,
        /// How long the old secret keeps working: `0`, `90s`, `15m`, `1h` (default), `7d`.
        #[arg(long, default_value = "1h")]
        grace: String,
    },
    /// Delete the key.
    Delete { id: String },
    /// Copy every key of a keys file into the registry (`--registry` only), each audited.
    Import { file: PathBuf },
}

/// `3600`, `90s`, `15m`, `12h`, `30d` as seconds.
fn duration_secs(s: &str) -> Result<u64, String> {
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (3600, 90s, 15m, 12h, 30d)"))?;
    let mul = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// The command `op` asks for, and the id `show` wants.
fn command(op: KeysOp) -> Result<(KeyCommand, Option<String>), String> {
    Ok(match op {
        KeysOp::List => (KeyCommand::List, None),
        KeysOp::Show { id } => (KeyCommand::List, Some(id)),
        KeysOp::Create {
            name,
            owner,
            tenant,
            label,
            models,
            scopes,
            budgets,
            claims,
            expires_at,
            expires_in,
        } => {
            let mut map = BTreeMap::new();
            for c in claims {
                let (k, v) = c
                    .split_once('=')
                    .ok_or_else(|| format!("--claim `{c}`: expected name=value"))?;
                map.insert(k.to_owned(), v.to_owned());
            }
            let new = NewKey {
                name,
                owner,
                tenant,
                label,
                models,
                scopes,
                budgets,
                claims: map,
                expires_at,
                expires_in_secs: expires_in.as_deref().map(duration_secs).transpose()?,
            };
            (KeyCommand::Create(new), None)
        }
        KeysOp::Disable { id } => (KeyCommand::Disable(id), None),
        KeysOp::Enable { id } => (KeyCommand::Enable(id), None),
        KeysOp::Rotate { id, grace } => (
            KeyCommand::Rotate {
                id,
                grace_secs: duration_secs(&grace)?,
            },
            None,
        ),
        KeysOp::Delete { id } => (KeyCommand::Delete(id), None),
        KeysOp::Import { .. } => return Err("import is not a key command".into()),
    })
}

pub fn run(args: KeysArgs) -> ExitCode {
    if let KeysOp::Import { file } = &args.op {
        let answer = match &args.registry {
            Some(db) => import(db, file),
            None => Err("import needs --registry DB (the database the keys go to)".into()),
        };
        return print(answer);
    }
    let (cmd, show) = match command(args.op) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardgate keys: {e}");
            return ExitCode::from(2);
        }
    };
    let answer = match (&args.file, &args.registry) {
        (Some(file), _) => {
            let audit_file = args.audit_file.unwrap_or_else(|| {
                let mut name = file.file_name().unwrap_or_default().to_os_string();
                name.push(".audit.jsonl");
                file.with_file_name(name)
            });
            let source = KeySource::File {
                file: file.clone(),
                audit_file,
            };
            in_store(source, cmd, show.as_deref())
        }
        (None, Some(db)) => in_store(KeySource::Registry(db.clone()), cmd, show.as_deref()),
        (None, None) => {
            let token = args
                .token
                .or_else(|| std::env::var("SHARDGATE_ADMIN_TOKEN").ok());
            through_admin(args.admin, token.as_deref(), &cmd, show.as_deref())
        }
    };
    print(answer)
}

/// Prints an answer (JSON on stdout) or the error; the exit code.
fn print(answer: Result<Value, String>) -> ExitCode {
    match answer {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            if v.get("key").is_some() {
                eprintln!("shardgate keys: store this key now: it is not shown again");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shardgate keys: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin API call for `cmd`.
fn through_admin(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    cmd: &KeyCommand,
    show: Option<&str>,
) -> Result<Value, String> {
    let (method, path, body) = match (cmd, show) {
        (KeyCommand::List, Some(id)) => ("GET", format!("/keys/{id}"), Value::Null),
        (KeyCommand::List, None) => ("GET", "/keys".into(), Value::Null),
        (KeyCommand::Create(new), _) => ("POST", "/keys".into(), new_body(new)),
        (KeyCommand::Disable(id), _) => ("POST", format!("/keys/{id}/disable"), Value::Null),
        (KeyCommand::Enable(id), _) => ("POST", format!("/keys/{id}/enable"), Value::Null),
        (KeyCommand::Rotate { id, grace_secs }, _) => (
            "POST",
            format!("/keys/{id}/rotate"),
            json!({"grace_secs": grace_secs}),
        ),
        (KeyCommand::Delete(id), _) => ("DELETE", format!("/keys/{id}"), Value::Null),
    };
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, text) = admin::http::call_with_body(addr, method, &path, token, &body)
        .map_err(|e| format!("cannot reach {addr}: {e}"))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("unreadable answer from {addr} ({status}): {e}"))?;
    if (200..300).contains(&status) {
        Ok(v)
    } else {
        Err(format!("{addr}{path} answered {status}: {v}"))
    }
}

fn new_body(n: &NewKey) -> Value {
    json!({
        "name": n.name, "owner": n.owner, "tenant": n.tenant, "label": n.label,
        "models": n.models, "scopes": n.scopes, "budgets": n.budgets, "claims": n.claims,
        "expires_at": n.expires_at, "expires_in_secs": n.expires_in_secs,
    })
}

/// Every key of the keys file `file` copied into the registry at `db`.
fn import(db: &Path, file: &Path) -> Result<Value, String> {
    let records = FileStore::new(file.to_path_buf(), PathBuf::new())
        .load()
        .map_err(|e| e.to_string())?;
    let settings = ApiKeySettings {
        source: KeySource::Registry(db.to_path_buf()),
        header: None,
    };
    let mut service = KeyService::for_settings(&settings).map_err(|e| e.to_string())?;
    let ids = service
        .import(records, "cli")
        .map_err(|e: KeyError| e.to_string())?;
    Ok(json!({"imported": ids}))
}

/// `cmd` carried out on the key store itself (a keys file or the registry).
fn in_store(source: KeySource, cmd: KeyCommand, show: Option<&str>) -> Result<Value, String> {
    let settings = ApiKeySettings {
        source,
        header: None,
    };
    let mut service = KeyService::for_settings(&settings).map_err(|e| e.to_string())?;
    let reply = service
        .apply(cmd, "cli")
        .map_err(|e: KeyError| e.to_string())?;
    Ok(match (reply, show) {
        (KeyReply::List(records), Some(id)) => match records.iter().find(|r| r.id == id) {
            Some(r) => json!({"record": view(r)}),
            None => return Err(format!("no key with id `{id}`")),
        },
        (KeyReply::List(records), None) => {
            json!({"keys": records.iter().map(view).collect::<Vec<_>>()})
        }
        (KeyReply::Secret { record, key }, _) => json!({"key": key, "record": view(&record)}),
        (KeyReply::Changed(record), _) => json!({"record": view(&record)}),
        (KeyReply::Deleted(id), _) => json!({"deleted": id}),
    })
}

#[cfg(test)]
mod tests {
    use super::duration_secs;

    #[test]
    fn durations() {
        for (s, want) in [
            ("0", Ok(0)),
            ("3600", Ok(3600)),
            ("90s", Ok(90)),
            ("15m", Ok(900)),
            ("12h", Ok(43_200)),
            ("30d", Ok(2_592_000)),
        ] {
            assert_eq!(duration_secs(s), want, "{s}");
        }
        for bad in ["", "h", "1x", "-1", "1.5h", "99999999999999999999d"] {
            assert!(duration_secs(bad).is_err(), "{bad}");
        }
    }
}
