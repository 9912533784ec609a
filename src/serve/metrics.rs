//! The server's counters and histograms, written out in the Prometheus text exposition format
//! (version 0.0.4) by `GET /metrics`. Hand-written: a few counters, three histograms and two
//! gauges do not need a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the request latency buckets: from a cached tiny image to a
/// large batch on a slow CPU.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch size buckets (images per backbone pass).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A cumulative histogram (Prometheus semantics: bucket `le` counts observations <= le).
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; made cumulative when written).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines; `labels` is `k="v",` or empty.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let braces = |l: &str| {
            let l = l.trim_end_matches(',');
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// Everything `/metrics` reports that is counted as it happens (the queue gauges are read at
/// render time from the batcher).
pub struct Metrics {
    /// Requests answered, by route template and HTTP status.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Request latency (first byte in to response ready), by route template.
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Images per `inspect_batch` call.
    batch_size: Mutex<Histogram>,
    /// Images scored, by verdict.
    normal: AtomicU64,
    anomalous: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(BTreeMap::new()),
            batch_size: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            normal: AtomicU64::new(0),
            anomalous: AtomicU64::new(0),
        }
    }
}

/// Locks a metrics mutex: a panic elsewhere while it was held leaves at worst one count
/// missing, never an inconsistent map, so a poisoned lock is still used.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A label value as Prometheus text wants it (backslash, quote and newline escaped).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_insert(0) += 1;
        lock(&self.latency)
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// Counts one backbone pass of `images` images.
    pub fn batch(&self, images: usize) {
        lock(&self.batch_size).observe(images as f64);
    }

    /// Counts one verdict.
    pub fn verdict(&self, anomalous: bool) {
        let c = if anomalous {
            &self.anomalous
        } else {
            &self.normal
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The whole exposition text. `queue_depth`: images admitted and not yet answered.
    pub fn render(&self, queue_depth: usize, queue_capacity: usize, ready: bool) -> String {
        let mut o = String::new();
        o.push_str("# HELP pmad_requests_total HTTP requests answered, by route and status.\n");
        o.push_str("# TYPE pmad_requests_total counter\n");
        for ((route, code), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "pmad_requests_total{{route=\"{}\",code=\"{code}\"}} {n}",
                escape(route)
            );
        }
        o.push_str(
            "# HELP pmad_request_duration_seconds Time from request to response, by route.\n",
        );
        o.push_str("# TYPE pmad_request_duration_seconds histogram\n");
        for (route, h) in lock(&self.latency).iter() {
            h.write(
                &mut o,
                "pmad_request_duration_seconds",
                &format!("route=\"{}\",", escape(route)),
            );
        }
        o.push_str("# HELP pmad_batch_size Images scored per backbone pass.\n");
        o.push_str("# TYPE pmad_batch_size histogram\n");
        lock(&self.batch_size).write(&mut o, "pmad_batch_size", "");
        o.push_str("# HELP pmad_images_total Images scored, by verdict.\n");
        o.push_str("# TYPE pmad_images_total counter\n");
        let _ = writeln!(
            o,
            "pmad_images_total{{verdict=\"normal\"}} {}",
            self.normal.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "pmad_images_total{{verdict=\"anomalous\"}} {}",
            self.anomalous.load(Ordering::Relaxed)
        );
        o.push_str("# HELP pmad_queue_depth Images admitted and not yet answered.\n");
        o.push_str("# TYPE pmad_queue_depth gauge\n");
        let _ = writeln!(o, "pmad_queue_depth {queue_depth}");
        o.push_str("# HELP pmad_queue_capacity Most images admitted at once (--queue).\n");
        o.push_str("# TYPE pmad_queue_capacity gauge\n");
        let _ = writeln!(o, "pmad_queue_capacity {queue_capacity}");
        o.push_str("# HELP pmad_ready 1 while the server accepts inspections.\n");
        o.push_str("# TYPE pmad_ready gauge\n");
        let _ = writeln!(o, "pmad_ready {}", u8::from(ready));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_by_label() {
        let m = Metrics::default();
        m.batch(1);
        m.batch(3);
        m.batch(3);
        m.batch(2000);
        m.request("/healthz", 200, Duration::from_millis(2));
        m.request("/healthz", 200, Duration::from_millis(2));
        m.request("/v1/classes/{class}/inspect", 404, Duration::from_millis(1));
        let t = m.render(3, 64, true);
        assert!(t.contains("pmad_batch_size_bucket{le=\"1\"} 1\n"), "{t}");
        assert!(t.contains("pmad_batch_size_bucket{le=\"2\"} 1\n"));
        assert!(t.contains("pmad_batch_size_bucket{le=\"4\"} 3\n"));
        assert!(t.contains("pmad_batch_size_bucket{le=\"1024\"} 3\n"));
        assert!(t.contains("pmad_batch_size_bucket{le=\"+Inf\"} 4\n"));
        assert!(t.contains("pmad_batch_size_sum 2007\n"));
        assert!(t.contains("pmad_batch_size_count 4\n"));
        assert!(t.contains("pmad_requests_total{route=\"/healthz\",code=\"200\"} 2\n"));
        assert!(t.contains(
            "pmad_requests_total{route=\"/v1/classes/{class}/inspect\",code=\"404\"} 1\n"
        ));
        assert!(t.contains(
            "pmad_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.0025\"} 2\n"
        ));
        assert!(t.contains("pmad_request_duration_seconds_count{route=\"/healthz\"} 2\n"));
        assert!(t.contains("pmad_queue_depth 3\n"));
        assert!(t.contains("pmad_ready 1\n"));
    }
}
