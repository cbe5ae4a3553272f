//! Upstream host names, resolved again while the gateway runs.
//!
//! # Contract
//!
//! An endpoint written with a host name (`api.openai.com`, `https://models.internal:8443`) is
//! resolved when the config loads; the control thread resolves it again every
//! [`DNS_REFRESH`] (a blocking lookup there, never on a worker or the coordination thread).
//! [`refresh`] returns the snapshot in force with the new addresses when one changed, which
//! the control thread puts in force as the next generation: new connections go to the new
//! address, pooled connections to the old one idle out, breakers and balance state stay with
//! the endpoint (they are kept by endpoint index, not address).
//!
//! - An address still among those the name resolves to is kept, so DNS servers that rotate
//!   the order of their answers cause no churn; otherwise the first answer is taken (as when
//!   the config loads).
//! - A name that fails to resolve, or resolves to nothing, keeps its last address and is
//!   reported: a DNS outage never takes an upstream away.
//! - IP literals are never looked up.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::config::Snapshot;

/// How often upstream host names are resolved again.
pub const DNS_REFRESH: Duration = Duration::from_secs(30);

/// What one refresh found.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// The snapshot with the new addresses, when any changed.
    pub snapshot: Option<Snapshot>,
    /// One line per change and per failed lookup, for the log.
    pub report: Vec<String>,
}

/// Resolves every endpoint name of `snap` again with `lookup` (see the module docs).
pub fn refresh(
    snap: &Snapshot,
    mut lookup: impl FnMut(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> Refreshed {
    let mut out = Refreshed::default();
    let mut next: Option<Snapshot> = None;
    for (u, up) in snap.upstreams.iter().enumerate() {
        for (e, ep) in up.endpoints.iter().enumerate() {
            let Some(name) = ep.name.as_deref() else {
                continue;
            };
            let found = match lookup(name) {
                Ok(found) if !found.is_empty() => found,
                Ok(_) => {
                    out.report.push(format!(
                        "upstream `{}`: `{name}` resolves to no address; keeping {}",
                        up.name, ep.addr
                    ));
                    continue;
                }
                Err(err) => {
                    out.report.push(format!(
                        "upstream `{}`: cannot resolve `{name}` ({err}); keeping {}",
                        up.name, ep.addr
                    ));
                    continue;
                }
            };
            if found.contains(&ep.addr) {
                continue;
            }
            let addr = found[0];
            out.report.push(format!(
                "upstream `{}`: `{name}` now resolves to {addr} (was {})",
                up.name, ep.addr
            ));
            next.get_or_insert_with(|| snap.clone()).upstreams[u].endpoints[e].addr = addr;
        }
    }
    out.snapshot = next;
    out
}

/// The system resolver (`getaddrinfo`), as the config load uses it.
pub fn system_lookup(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(name.to_socket_addrs()?.collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[[upstreams]]
name = "named"
endpoints = ["localhost:9001", "127.0.0.1:9002", "https://localhost:9443"]
[[upstreams]]
name = "literal"
endpoints = ["127.0.0.1:9003", "[::1]:9004"]
[[routes]]
path = "/v1/*rest"
upstream = "named"
[[routes]]
path = "/other"
upstream = "literal"
"#;

    fn snap() -> Snapshot {
        crate::config::from_str(CONFIG, Path::new("/tmp"), 1).unwrap()
    }

    fn addrs(s: &Snapshot) -> Vec<Vec<SocketAddr>> {
        s.upstreams
            .iter()
            .map(|u| u.endpoints.iter().map(|e| e.addr).collect())
            .collect()
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Only names are looked up; IP literals (v4, v6, with or without TLS) never are.
    #[test]
    fn only_names_are_looked_up() {
        let s = snap();
        let mut asked = Vec::new();
        let r = refresh(&s, |n| {
            asked.push(n.to_string());
            Ok(vec![a("127.0.0.1:1")])
        });
        asked.sort();
        assert_eq!(asked, ["localhost:9001", "localhost:9443"]);
        assert!(r.snapshot.is_some());
    }

    /// Each answer shape: the same address, the address among others in any order, a new
    /// address, no address, a failed lookup.
    #[test]
    fn answers_decide_the_address() {
        let s = snap();
        let before = addrs(&s);
        let (plain, tls) = (before[0][0], before[0][2]);
        let other = a("10.1.2.3:9001");
        let cases: Vec<(Vec<SocketAddr>, bool, Option<SocketAddr>)> = vec![
            // (answer for both names, lookup fails, expected new address of the plain one)
            (vec![plain, tls], false, None),
            (vec![other, plain, tls], false, None),
            (vec![a("10.0.0.9:1"), tls, plain], false, None),
            (vec![other], false, Some(other)),
            (vec![], false, None),
            (vec![other], true, None),
        ];
        for (answer, fails, want) in cases {
            let r = refresh(&s, |_| {
                if fails {
                    Err(std::io::Error::other("SERVFAIL"))
                } else {
                    Ok(answer.clone())
                }
            });
            match want {
                None if answer.contains(&plain) || answer.is_empty() || fails => {
                    // The plain endpoint kept its address; the TLS one too when it was in
                    // the answer.
                    if let Some(n) = &r.snapshot {
                        assert_eq!(addrs(n)[0][0], plain, "{answer:?}");
                    }
                    if answer.contains(&tls) || answer.is_empty() || fails {
                        assert!(r.snapshot.is_none(), "{answer:?}");
                    }
                }
                _ => {
                    let n = r.snapshot.as_ref().expect("a change");
                    let mut want_addrs = before.clone();
                    want_addrs[0][0] = want.unwrap_or(plain);
                    want_addrs[0][2] = answer[0];
                    assert_eq!(addrs(n), want_addrs, "{answer:?}");
                }
            }
            if answer.is_empty() || fails {
                assert_eq!(r.report.len(), 2, "{:?}", r.report);
                assert!(
                    r.report.iter().all(|l| l.contains("keeping")),
                    "{:?}",
                    r.report
                );
            }
        }
    }

    /// A change touches the addresses only: names, TLS names, host headers, the rest of the
    /// snapshot stay as they were.
    #[test]
    fn a_change_keeps_everything_else() {
        let s = snap();
        let mut table = HashMap::new();
        table.insert("localhost:9001", vec![a("10.0.0.1:9001")]);
        table.insert("localhost:9443", vec![a("10.0.0.2:9443")]);
        let r = refresh(&s, |n| Ok(table[n].clone()));
        let n = r.snapshot.unwrap();
        assert_eq!(n.generation, s.generation);
        assert_eq!(r.report.len(), 2);
        for (x, y) in s.upstreams.iter().zip(&n.upstreams) {
            assert_eq!(x.name, y.name);
            for (p, q) in x.endpoints.iter().zip(&y.endpoints) {
                assert_eq!((&p.host, &p.tls, &p.name), (&q.host, &q.tls, &q.name));
            }
        }
        assert_eq!(
            addrs(&n)[0],
            [a("10.0.0.1:9001"), a("127.0.0.1:9002"), a("10.0.0.2:9443")]
        );
        assert_eq!(addrs(&n)[1], addrs(&s)[1]);
    }

    #[test]
    fn the_system_resolver_finds_localhost() {
        let found = system_lookup("localhost:80").unwrap();
        assert!(found.iter().any(|a| a.ip().is_loopback()), "{found:?}");
    }
}
