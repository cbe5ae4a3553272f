//! The load feed (control plane, off the data path): `load_metric = { path, gauge,
//! interval_ms }` makes one thread scrape each endpoint's Prometheus text endpoint every
//! interval with a blocking `GET` bounded by the timeout (the health probe's request, see
//! [`crate::breaker::health::http_get`]) and read one gauge, e.g. vLLM's
//! `vllm:num_requests_waiting` (the values of all its series added up). A changed value goes
//! to the coordination thread ([`super::fleet::Fleet`]), which folds it into the fleet view:
//! the load-aware policies add it to the endpoint's requests in flight.
//!
//! A scrape that fails (refused, silent, not 200, no such gauge) reports no value: the
//! endpoint's gauge counts as 0, so a broken metrics endpoint never makes a model server look
//! busier than the gateway itself sees it (its health is the breaker's business).

use std::io;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::config::LoadTarget;
use crate::breaker::EndpointId;

/// The largest metrics body read (vLLM's is a few tens of KiB).
const MAX_METRICS_BODY: u64 = 4 << 20;
/// How long the thread sleeps when it has nothing to scrape.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// An endpoint's gauge changed (`None`: it could not be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaugeUpdate {
    pub endpoint: EndpointId,
    pub value: Option<u32>,
}

/// Reads one target's gauge; the seam that lets the schedule be tested without sockets.
pub trait Scrape {
    fn scrape(&mut self, target: &LoadTarget) -> Option<f64>;
}

/// The real scrape: `GET path`, status 200, the gauge from the Prometheus text body.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpScrape;

impl Scrape for HttpScrape {
    fn scrape(&mut self, t: &LoadTarget) -> Option<f64> {
        let m = &t.metric;
        let (status, body) =
            crate::breaker::health::http_get(t.addr, &t.host, &m.path, m.timeout, MAX_METRICS_BODY)
                .ok()?;
        (status == 200).then(|| gauge(&String::from_utf8_lossy(&body), &m.gauge))?
    }
}

impl<F: FnMut(&LoadTarget) -> Option<f64>> Scrape for F {
    fn scrape(&mut self, target: &LoadTarget) -> Option<f64> {
        self(target)
    }
}

/// The sum of every sample of metric `name` in Prometheus text exposition `text`
/// (`name 3`, `name{model="a"} 2 1700000000000`); `None` when it has none.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix(name) else {
            continue;
        };
        let rest = match rest.as_bytes().first() {
            // Label values may hold `}` inside quotes; a gauge's labels here are simple, and a
            // line that does not parse is skipped rather than misread.
            Some(b'{') => match rest.find('}') {
                Some(end) => &rest[end + 1..],
                None => continue,
            },
            Some(b' ' | b'\t') => rest,
            _ => continue,
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value.filter(|v| v.is_finite()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// A gauge value as a load: rounded, at least 0.
fn as_load(v: f64) -> u32 {
    v.round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The scrape schedule of every target.
pub struct Feed<S> {
    /// Each target with its last reported value and next due time.
    targets: Vec<(LoadTarget, Option<u32>, Instant)>,
    scraper: S,
}

impl<S: Scrape> Feed<S> {
    /// First scrapes are spread over one interval so that N endpoints are not hit in a burst.
    pub fn new(targets: Vec<LoadTarget>, scraper: S, now: Instant) -> Self {
        let n = targets.len().max(1) as u32;
        let targets = targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let first = now + t.metric.interval * i as u32 / n;
                (t, None, first)
            })
            .collect();
        Feed { targets, scraper }
    }

    /// Scrapes every target due at `now` (blocking, one at a time) and pushes changed values.
    pub fn run_due(&mut self, now: Instant, out: &mut Vec<GaugeUpdate>) {
        for (target, last, next) in &mut self.targets {
            if *next > now {
                continue;
            }
            let value = self.scraper.scrape(target).map(as_load);
            *next = now + target.metric.interval;
            if value != *last {
                *last = value;
                out.push(GaugeUpdate {
                    endpoint: target.endpoint,
                    value,
                });
            }
        }
    }

    /// When the next scrape is due, if there are targets.
    pub fn next_due(&self) -> Option<Instant> {
        self.targets.iter().map(|(_, _, next)| *next).min()
    }
}

/// The running feed thread; dropping it stops the thread and waits for it.
pub struct FeedThread {
    stop: Sender<()>,
    pub updates: Receiver<GaugeUpdate>,
    thread: Option<JoinHandle<()>>,
}

impl FeedThread {
    /// Starts a thread named `shardgate-load` scraping `targets`; `None` when there are none
    /// or the thread cannot start (logged: the choice then runs without gauges).
    pub fn start(targets: &[LoadTarget]) -> Option<FeedThread> {
        if targets.is_empty() {
            return None;
        }
        let feed = Feed::new(targets.to_vec(), HttpScrape, Instant::now());
        match feed.spawn() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("shardgate: cannot start the load-metric thread ({e}); no gauges");
                None
            }
        }
    }
}

impl Drop for FeedThread {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<S: Scrape + Send + 'static> Feed<S> {
    /// Runs the schedule on its own thread until the returned handle is dropped.
    pub fn spawn(mut self) -> io::Result<FeedThread> {
        let (stop_tx, stop) = crossbeam_channel::bounded(1);
        let (tx, updates) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("shardgate-load".into())
            .spawn(move || {
                let mut out = Vec::new();
                loop {
                    self.run_due(Instant::now(), &mut out);
                    for u in out.drain(..) {
                        if tx.send(u).is_err() {
                            return;
                        }
                    }
                    let wait = self
                        .next_due()
                        .map_or(IDLE_WAIT, |t| t.saturating_duration_since(Instant::now()));
                    match stop.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(FeedThread {
            stop: stop_tx,
            updates,
            thread: Some(thread),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::config::LoadMetric;

    #[test]
    fn reads_and_adds_up_a_gauge_in_any_shape() {
        let text = "# HELP vllm:num_requests_waiting Requests waiting.\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{model_name=\"a\",engine=\"0\"} 3.0\n\
            vllm:num_requests_waiting{model_name=\"b\"} 2 1700000000000\n\
            vllm:num_requests_waiting_total 99\n\
            vllm:num_requests_running{model_name=\"a\"} 7\n";
        assert_eq!(gauge(text, "vllm:num_requests_waiting"), Some(5.0));
        assert_eq!(gauge(text, "vllm:num_requests_running"), Some(7.0));
        assert_eq!(gauge("queue 4\n", "queue"), Some(4.0));
        assert_eq!(gauge("queue\t4e0\r\n", "queue"), Some(4.0));
        for missing in [
            "",
            "# queue 4\n",
            "queued 4\n",
            "queue NaN\n",
            "queue{a=\"1\" 4\n",
        ] {
            assert_eq!(gauge(missing, "queue"), None, "{missing:?}");
        }
        assert_eq!(as_load(-3.0), 0);
        assert_eq!(as_load(2.6), 3);
        assert_eq!(as_load(1e12), u32::MAX);
    }

    fn target(endpoint: u32, interval_ms: u64) -> LoadTarget {
        LoadTarget {
            endpoint: EndpointId(endpoint),
            addr: "127.0.0.1:9".parse().unwrap(),
            host: "b".into(),
            metric: LoadMetric {
                path: "/metrics".into(),
                gauge: "q".into(),
                interval: Duration::from_millis(interval_ms),
                timeout: Duration::from_millis(interval_ms),
            },
        }
    }

    #[test]
    fn schedule_reports_changes_only() {
        let t0 = Instant::now();
        let mut values = vec![Some(2.0), Some(2.0), None, Some(4.4)].into_iter();
        let scrape = move |_: &LoadTarget| values.next().flatten();
        let mut feed = Feed::new(vec![target(3, 100)], scrape, t0);
        let mut out = Vec::new();
        for i in 0..4 {
            feed.run_due(t0 + Duration::from_millis(100 * i), &mut out);
        }
        let got: Vec<Option<u32>> = out.iter().map(|u| u.value).collect();
        assert_eq!(got, [Some(2), None, Some(4)]);
        assert!(out.iter().all(|u| u.endpoint == EndpointId(3)));
        assert_eq!(feed.next_due(), Some(t0 + Duration::from_millis(400)));
    }

    #[test]
    fn scrapes_a_live_endpoint() {
        let mock = shardgate_mock::spawn(
            shardgate_mock::MockConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
            1,
        )
        .unwrap();
        mock.set_waiting(6);
        let mut t = target(0, 500);
        t.addr = mock.addr();
        t.metric.gauge = "vllm:num_requests_waiting".into();
        assert_eq!(HttpScrape.scrape(&t), Some(6.0));
        t.metric.gauge = "no_such_gauge".into();
        assert_eq!(HttpScrape.scrape(&t), None);
        t.metric.path = "/nope".into();
        t.metric.gauge = "vllm:num_requests_waiting".into();
        assert_eq!(HttpScrape.scrape(&t), None, "a 404 is no value");
    }
}
