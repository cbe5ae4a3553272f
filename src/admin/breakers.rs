//! Circuit breaker state for the admin API: `GET /breakers` (JSON) and the breaker families
//! of `/metrics`. The coordination thread owns the decisions; this asks it for a snapshot.

use std::fmt::Write;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use crate::breaker::{BreakerSnapshot, Transition};
use crate::config::Snapshot;
use crate::inbox::ToCoord;

/// How long the admin thread waits for the coordination thread's answer.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(1);

/// One endpoint's breaker, with names from the config in force.
pub struct Row {
    pub upstream: String,
    pub endpoint: String,
    pub state: &'static str,
    pub open_for_ms: Option<u64>,
    pub transitions: [(&'static str, u64); 4],
}

/// Asks the coordination thread for every breaker and names each from `snap`.
pub fn rows(coord: &Sender<ToCoord>, snap: Option<&Snapshot>) -> Option<Vec<Row>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    coord.send(ToCoord::BreakerSnapshot(tx)).ok()?;
    let b: BreakerSnapshot = rx.recv_timeout(SNAPSHOT_WAIT).ok()?;
    let now = Instant::now();
    Some(
        b.endpoints
            .iter()
            .map(|e| {
                let (upstream, endpoint) = snap
                    .and_then(|s| {
                        let (u, i) = s.resilience.locate(e.endpoint)?;
                        let up = s.upstreams.get(u)?;
                        Some((up.name.clone(), up.endpoints.get(i)?.addr.to_string()))
                    })
                    .unwrap_or_else(|| ("?".into(), format!("#{}", e.endpoint.0)));
                let mut transitions = [("", 0); 4];
                for (slot, (t, n)) in transitions
                    .iter_mut()
                    .zip(Transition::ALL.iter().zip(e.transitions))
                {
                    *slot = (t.as_str(), n);
                }
                Row {
                    upstream,
                    endpoint,
                    state: e.state.as_str(),
                    open_for_ms: e
                        .open_until
                        .map(|u| u.saturating_duration_since(now).as_millis() as u64),
                    transitions,
                }
            })
            .collect(),
    )
}

/// `GET /breakers`.
pub fn json(rows: &[Row]) -> Value {
    json!({
        "breakers": rows.iter().map(|r| json!({
            "upstream": r.upstream,
            "endpoint": r.endpoint,
            "state": r.state,
            "open_for_ms": r.open_for_ms,
            "transitions": r.transitions.iter().map(|(t, n)| (t.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>()
    })
}

/// The breaker families in Prometheus text format.
pub fn prometheus(rows: &[Row], out: &mut String) {
    out.push_str("# HELP shardgate_breaker_state Circuit breaker state per upstream endpoint (1 for the current state).\n");
    out.push_str("# TYPE shardgate_breaker_state gauge\n");
    for r in rows {
        for state in ["closed", "open", "half_open"] {
            let _ = writeln!(
                out,
                "shardgate_breaker_state{{upstream=\"{}\",endpoint=\"{}\",state=\"{state}\"}} {}",
                escape(&r.upstream),
                escape(&r.endpoint),
                u8::from(r.state == state)
            );
        }
    }
    out.push_str("# HELP shardgate_breaker_transitions_total Circuit breaker transitions decided, per upstream endpoint.\n");
    out.push_str("# TYPE shardgate_breaker_transitions_total counter\n");
    for r in rows {
        for (t, n) in r.transitions {
            let _ = writeln!(
                out,
                "shardgate_breaker_transitions_total{{upstream=\"{}\",endpoint=\"{}\",transition=\"{t}\"}} {n}",
                escape(&r.upstream),
                escape(&r.endpoint)
            );
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
