//! The `streams` client (loadtest/streams.sh) against an in-process mock on loopback: it
//! counts whole streams, reports the gaps, and fails when a stream is cut.
use std::process::Command;

use shardgate_mock::{self as mock, MockConfig, MockHandle};

fn mock(cfg: MockConfig) -> MockHandle {
    mock::spawn(cfg, "127.0.0.1:0".parse().unwrap(), 1).expect("mock starts")
}

fn streams(m: &MockHandle, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streams"))
        .args(["--addr", &m.addr().to_string()])
        .args(["--streams", "40", "--events", "6", "--gap-ms", "10"])
        .args(extra)
        .output()
        .expect("streams runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The p50 gap printed, ms.
fn p50(text: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with("inter-event gap"))
        .unwrap_or_else(|| panic!("no gap line in {text}"));
    let at = line.find("p50 ").unwrap() + 4;
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn whole_streams_are_counted_and_their_gaps_reported() {
    let m = mock(MockConfig {
        stream_chunks: 6,
        stream_gap_ms: 10,
        ..MockConfig::default()
    });
    for extra in [&[][..], &["--close-each", "--stagger-ms", "0"][..]] {
        let (ok, text) = streams(&m, extra);
        assert!(ok, "{extra:?}: {text}");
        assert!(
            text.contains("streams: 40 (40 whole with >= 6 events)"),
            "{text}"
        );
        // Gaps are timed between events the mock spaced out (not all zero: a count check,
        // not a benchmark).
        let p50 = p50(&text);
        assert!(p50 > 1.0, "p50 {p50} in {text}");
    }
}

#[test]
fn a_stream_with_fewer_events_than_asked_is_not_whole() {
    // One content event short of the six asked for.
    let m = mock(MockConfig {
        stream_chunks: 5,
        stream_gap_ms: 5,
        ..MockConfig::default()
    });
    let (ok, text) = streams(&m, &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("40 streams incomplete"), "{text}");
}

#[test]
fn a_cut_stream_fails_the_run() {
    let m = mock(MockConfig {
        stream_chunks: 6,
        stream_gap_ms: 10,
        close_after_chunks: Some(3),
        ..MockConfig::default()
    });
    let (ok, text) = streams(&m, &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("40 streams incomplete"), "{text}");
}
