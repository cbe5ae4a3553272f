//! `shardgate models ...`: the model registry from the command line, over the admin API
//! ([`super::models`]) with the admin client ([`super::http::call_with_body`]).
//!
//! Each command prints the API's JSON answer (`list` prints a table) and exits 0; a refused
//! request prints its status and what was wrong (every problem, one per line) and exits 1.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

/// `shardgate models` options.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Admin address (`[admin] listen`).
    #[arg(long, default_value = super::DEMO_ADMIN, global = true)]
    pub admin: SocketAddr,
    /// Admin bearer token (or env SHARDGATE_ADMIN_TOKEN); its name is recorded in the audit log.
    #[arg(long, global = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Every model and version, as a table.
    List,
    /// One model and its versions.
    Show {
        model: String,
    },
    /// One version and its latest rollout.
    Get {
        model: String,
        version: String,
    },
    /// Register a version (status `canary` unless --status says otherwise).
    Register {
        model: String,
        version: String,
        /// `host:port`; repeat for several.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        #[arg(long)]
        served_name: Option<String>,
        /// Repeat for several.
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        status: Option<String>,
        /// More `[[deployments]]` settings as a JSON object (`{"first_byte_timeout_ms": 500}`).
        #[arg(long)]
        settings: Option<String>,
    },
    /// Set a version's status: active, canary, draining or retired.
    Status {
        model: String,
        version: String,
        status: String,
    },
    /// The routes whose targets the registry holds.
    Splits,
    /// Set a route's targets: `model@version=weight` ...
    Split {
        #[arg(long)]
        path: String,
        /// The route's `models`, comma-separated (none: the path's default route).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Give a route's targets back to the config file.
    Unsplit {
        #[arg(long)]
        path: String,
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// Start a progressive rollout of a canary version.
    Rollout {
        model: String,
        version: String,
        /// Percent steps, comma-separated (default 1,5,25,50,100).
        #[arg(long, value_delimiter = ',')]
        steps: Vec<u8>,
        /// Hold per step: `500ms`, `30s`, `5m` (default 5m).
        #[arg(long)]
        hold: Option<String>,
        /// The route (default: the one route serving the model).
        #[arg(long)]
        path: Option<String>,
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// The version replaced (default: the one serving the model on the route).
        #[arg(long)]
        stable: Option<String>,
        #[arg(long)]
        max_error_rate_increase: Option<f64>,
        #[arg(long)]
        max_p99_ratio: Option<f64>,
        #[arg(long)]
        p99_slack_ms: Option<u64>,
        #[arg(long)]
        min_requests: Option<u64>,
    },
    /// A version's latest rollout, with the guards' last look.
    RolloutStatus {
        model: String,
        version: String,
    },
    Pause {
        model: String,
        version: String,
    },
    Resume {
        model: String,
        version: String,
    },
    Abort {
        model: String,
        version: String,
    },
    /// Every rollout.
    Rollouts,
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only subjects starting with this (`llama@`).
        #[arg(long)]
        subject: Option<String>,
    },
}

/// `500ms`, `30s`, `5m`, or plain milliseconds.
pub fn parse_hold(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("`{s}`: use ms, s, m or h")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// `model@version=weight`.
fn parse_target(s: &str) -> Result<Value, String> {
    let (mv, w) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("`{s}`: write model@version=weight"))?;
    let (m, v) = mv
        .split_once('@')
        .ok_or_else(|| format!("`{s}`: write model@version=weight"))?;
    let weight: u32 = w
        .parse()
        .map_err(|_| format!("`{s}`: the weight is not a whole number"))?;
    Ok(json!({"model": m, "version": v, "weight": weight}))
}

/// The request a command makes: method, path, body.
fn request(cmd: &ModelsCommand) -> Result<(&'static str, String, Option<Value>), String> {
    use ModelsCommand as C;
    let version_path = |m: &str, v: &str| format!("/models/{m}/versions/{v}");
    Ok(match cmd {
        C::List => ("GET", "/models".into(), None),
        C::Show { model } => ("GET", format!("/models/{model}"), None),
        C::Get { model, version } => ("GET", version_path(model, version), None),
        C::Register {
            model,
            version,
            endpoints,
            served_name,
            labels,
            status,
            settings,
        } => {
            let mut body: Map<String, Value> = match settings {
                Some(s) => serde_json::from_str(s).map_err(|e| format!("--settings: {e}"))?,
                None => Map::new(),
            };
            body.insert("version".into(), version.clone().into());
            body.insert("endpoints".into(), endpoints.clone().into());
            if !labels.is_empty() {
                body.insert("labels".into(), labels.clone().into());
            }
            if let Some(n) = served_name {
                body.insert("served_name".into(), n.clone().into());
            }
            if let Some(s) = status {
                body.insert("status".into(), s.clone().into());
            }
            (
                "POST",
                format!("/models/{model}/versions"),
                Some(Value::Object(body)),
            )
        }
        C::Status {
            model,
            version,
            status,
        } => (
            "PUT",
            format!("{}/status", version_path(model, version)),
            Some(json!({"status": status})),
        ),
        C::Splits => ("GET", "/splits".into(), None),
        C::Split {
            path,
            models,
            targets,
        } => {
            let targets = targets
                .iter()
                .map(|t| parse_target(t))
                .collect::<Result<Vec<_>, _>>()?;
            (
                "PUT",
                "/splits".into(),
                Some(json!({"path": path, "models": models, "targets": targets})),
            )
        }
        C::Unsplit { path, models } => (
            "DELETE",
            "/splits".into(),
            Some(json!({"path": path, "models": models})),
        ),
        C::Rollout {
            model,
            version,
            steps,
            hold,
            path,
            models,
            stable,
            max_error_rate_increase,
            max_p99_ratio,
            p99_slack_ms,
            min_requests,
        } => {
            let mut body = Map::new();
            if !steps.is_empty() {
                body.insert("steps".into(), steps.clone().into());
            }
            if let Some(h) = hold {
                body.insert("hold_ms".into(), parse_hold(h)?.into());
            }
            if let Some(p) = path {
                body.insert("route".into(), json!({"path": p, "models": models}));
            }
            if let Some(s) = stable {
                body.insert("stable".into(), s.clone().into());
            }
            let mut guards = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    guards.insert(k.into(), v);
                }
            };
            put(
                "max_error_rate_increase",
                max_error_rate_increase.map(Into::into),
            );
            put("max_p99_ratio", max_p99_ratio.map(Into::into));
            put("p99_slack_ms", p99_slack_ms.map(Into::into));
            put("min_requests", min_requests.map(Into::into));
            if !guards.is_empty() {
                body.insert("guards".into(), Value::Object(guards));
            }
            (
                "POST",
                format!("{}/rollout", version_path(model, version)),
                Some(Value::Object(body)),
            )
        }
        C::RolloutStatus { model, version } => (
            "GET",
            format!("{}/rollout", version_path(model, version)),
            None,
        ),
        C::Pause { model, version } => (
            "POST",
            format!("{}/rollout/pause", version_path(model, version)),
            Some(json!({})),
        ),
        C::Resume { model, version } => (
            "POST",
            format!("{}/rollout/resume", version_path(model, version)),
            Some(json!({})),
        ),
        C::Abort { model, version } => (
            "POST",
            format!("{}/rollout/abort", version_path(model, version)),
            Some(json!({})),
        ),
        C::Rollouts => ("GET", "/rollouts".into(), None),
        C::Audit { limit, subject } => {
            let mut q = format!("/audit?limit={limit}");
            if let Some(s) = subject {
                q.push_str("&subject=");
                for b in s.bytes() {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        q.push(b as char);
                    } else {
                        q.push_str(&format!("%{b:02X}"));
                    }
                }
            }
            ("GET", q, None)
        }
    })
}

/// The `list` table: one line per version.
pub fn table(v: &Value) -> String {
    let mut rows = vec![[
        "MODEL".to_owned(),
        "VERSION".to_owned(),
        "STATUS".to_owned(),
        "ENDPOINTS".to_owned(),
        "NOTE".to_owned(),
    ]];
    for m in v["models"].as_array().into_iter().flatten() {
        for ver in m["versions"].as_array().into_iter().flatten() {
            let s = |k: &str| ver[k].as_str().unwrap_or("").to_owned();
            let endpoints: Vec<&str> = ver["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            rows.push([
                s("model"),
                s("version"),
                s("status"),
                endpoints.join(","),
                s("mark"),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Runs a `shardgate models` command.
pub fn run(args: &ModelsArgs) -> ExitCode {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("SHARDGATE_ADMIN_TOKEN").ok());
    let (method, path, body) = match request(&args.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shardgate models: {e}");
            return ExitCode::from(2);
        }
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let answer =
        super::http::call_with_body(args.admin, method, &path, token.as_deref(), body.as_bytes());
    let (status, text) = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shardgate models: cannot reach {}: {e}", args.admin);
            return ExitCode::FAILURE;
        }
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if status != 200 {
        eprintln!(
            "shardgate models: {method} {path}: {status} {}",
            v["error"].as_str().unwrap_or("")
        );
        if let Some(m) = v["message"].as_str() {
            let field = v["field"]
                .as_str()
                .map_or(String::new(), |f| format!("{f}: "));
            eprintln!("  {field}{m}");
        }
        for p in v["problems"].as_array().into_iter().flatten() {
            eprintln!(
                "  {}: {}",
                p["key"].as_str().unwrap_or(""),
                p["message"].as_str().unwrap_or("")
            );
        }
        return ExitCode::FAILURE;
    }
    match args.command {
        ModelsCommand::List => print!("{}", table(&v)),
        _ => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text)),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_and_targets_parse() {
        assert_eq!(parse_hold("500ms"), Ok(500));
        assert_eq!(parse_hold("30s"), Ok(30_000));
        assert_eq!(parse_hold("5m"), Ok(300_000));
        assert_eq!(parse_hold("250"), Ok(250));
        for bad in ["", "5x", "s", "1.5s", "99999999999999999999h"] {
            assert!(parse_hold(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_target("llama@1.2.0=25").unwrap(),
            json!({"model": "llama", "version": "1.2.0", "weight": 25})
        );
        for bad in ["llama=1", "llama@1.0.0", "llama@1.0.0=x", "llama@1.0.0=-1"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_lists_every_version() {
        let v = json!({"models": [{"name": "m", "versions": [
            {"model": "m", "version": "1.0.0", "status": "active", "endpoints": ["a:1", "b:2"], "mark": null},
            {"model": "m", "version": "1.1.0", "status": "canary", "endpoints": ["c:3"], "mark": "rolled back"},
        ]}]});
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("MODEL"), "{t}");
        assert!(
            lines[1].contains("1.0.0") && lines[1].contains("a:1,b:2"),
            "{t}"
        );
        assert!(lines[2].ends_with("rolled back"), "{t}");
    }
}
