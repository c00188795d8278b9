//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4): requests by route
//! and status, a latency histogram per route, the models loaded, and the process's resident
//! memory.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

/// The upper bounds of the latency histogram's buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] (not cumulative; summed on output).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Counts {
    /// (route, status) -> requests.
    requests: BTreeMap<(String, u16), u64>,
    /// route -> latency.
    latency: BTreeMap<String, Histogram>,
    /// Passes that scored waiting fold-ins together, and the fold-ins they scored.
    fold_in_passes: u64,
    fold_ins: u64,
}

/// The service's counters.
pub struct Metrics {
    counts: Mutex<Counts>,
    started: Instant,
    models: usize,
}

impl Metrics {
    pub fn new(models: usize) -> Self {
        Metrics {
            counts: Mutex::default(),
            started: Instant::now(),
            models,
        }
    }

    /// Count one answered request: its route (the matched pattern, such as
    /// `/v1/items/{id}/similar`, or `unmatched`), its status and how long it took.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.requests.entry((route.to_string(), status)).or_default() += 1;
        let h = c.latency.entry(route.to_string()).or_default();
        if let Some(b) = BUCKETS.iter().position(|&le| seconds <= le) {
            h.buckets[b] += 1;
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Count one pass over `n` waiting fold-ins ([`crate::batch`]).
    pub fn observe_fold_in_pass(&self, n: usize) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.fold_in_passes += 1;
        c.fold_ins += n as u64;
    }

    /// Seconds since the service started.
    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out.push_str("# HELP encore_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE encore_requests_total counter\n");
        for ((route, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "encore_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str(
            "# HELP encore_request_duration_seconds Time from a request's arrival to its answer, by route.\n",
        );
        out.push_str("# TYPE encore_request_duration_seconds histogram\n");
        for (route, h) in &c.latency {
            let route = escape(route);
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "encore_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "encore_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "encore_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "encore_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out.push_str(
            "# HELP encore_fold_in_passes_total Passes that scored the fold-ins waiting for a run together.\n",
        );
        out.push_str("# TYPE encore_fold_in_passes_total counter\n");
        let _ = writeln!(out, "encore_fold_in_passes_total {}", c.fold_in_passes);
        out.push_str(
            "# HELP encore_fold_ins_total Fold-ins scored by those passes (over the passes: the mean batch).\n",
        );
        out.push_str("# TYPE encore_fold_ins_total counter\n");
        let _ = writeln!(out, "encore_fold_ins_total {}", c.fold_ins);
        out.push_str("# HELP encore_models_loaded Trained runs this process serves.\n");
        out.push_str("# TYPE encore_models_loaded gauge\n");
        let _ = writeln!(out, "encore_models_loaded {}", self.models);
        out.push_str("# HELP encore_uptime_seconds Seconds since the service started.\n");
        out.push_str("# TYPE encore_uptime_seconds gauge\n");
        let _ = writeln!(out, "encore_uptime_seconds {:.3}", self.uptime_seconds());
        if let Some(rss) = resident_memory_bytes() {
            out.push_str("# HELP process_resident_memory_bytes Resident memory of the process.\n");
            out.push_str("# TYPE process_resident_memory_bytes gauge\n");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process's resident memory (Linux: `/proc/self/statm`), `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A sample's value in a text exposition: the first line starting with `name` followed by a
/// space (for example `encore_requests_total{route="/v1/recommend",status="200"}`).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_histograms_render_in_the_text_format() {
        let m = Metrics::new(2);
        m.observe("/v1/recommend", 200, 0.003);
        m.observe("/v1/recommend", 200, 0.02);
        m.observe("/v1/recommend", 400, 0.0001);
        let text = m.render();
        let r = "route=\"/v1/recommend\"";
        assert_eq!(
            sample(
                &text,
                &format!("encore_requests_total{{{r},status=\"200\"}}")
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("encore_requests_total{{{r},status=\"400\"}}")
            ),
            Some(1.0)
        );
        // Cumulative buckets: 1 at 0.5 ms, 2 at 5 ms, 3 at 25 ms and above.
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("encore_request_duration_seconds_bucket{{{r},le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.0005"), Some(1.0));
        assert_eq!(bucket("0.005"), Some(2.0));
        assert_eq!(bucket("0.025"), Some(3.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
        assert_eq!(sample(&text, "encore_models_loaded"), Some(2.0));
        assert!(text.contains("# TYPE encore_request_duration_seconds histogram"));
    }
}
