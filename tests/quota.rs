//! Quotas through the running gateway: two workers share one limit exactly.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;

fn quota_config(up: std::net::SocketAddr, rpm: u32) -> String {
    format!(
        "{}\n[quota]\n[[quota.rules]]\nname = \"per-ip\"\nkey = \"client_ip\"\nrequests_per_minute = {rpm}\n",
        route_all(up, "")
    )
}

#[test]
fn two_workers_admit_exactly_the_limit() {
    let up = Upstream::echo();
    let gw = gateway(&quota_config(up.addr, 100));
    let addr = gw.local_addr();
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    // Many connections, spread over both workers by SO_REUSEPORT, hammer one key.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (ok, limited) = (ok.clone(), limited.clone());
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..40 {
                    c.send(b"GET /q HTTP/1.1\r\nHost: gw\r\n\r\n");
                    let r = c.read_response().unwrap();
                    match r.status {
                        200 => {
                            assert!(r.header("x-ratelimit-limit") == Some("100"));
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {
                            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                            assert!((1..=61).contains(&retry), "retry-after {retry}");
                            assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
                            assert!(r.text().contains("rate_limit_exceeded"));
                            limited.fetch_add(1, Ordering::Relaxed);
                        }
                        s => panic!("unexpected status {s}: {}", r.text()),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        ok.load(Ordering::Relaxed),
        100,
        "exactly the limit is admitted"
    );
    assert_eq!(limited.load(Ordering::Relaxed), 220);
    let m = gw.collect();
    assert!(
        m.iter().all(|w| w.requests() > 0),
        "both workers served requests"
    );
}
