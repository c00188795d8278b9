//! A bounded load generator (`encore bench serve`): `clients` concurrent clients send a fixed
//! number of `POST /v1/recommend` requests to a service on a loopback address, a given
//! fraction of them malformed, and the report gives the throughput, latency percentiles,
//! statuses and the service's resident memory before and after.
//!
//! Valid requests fold in a history of `history_len` distinct catalogue items drawn from a
//! seeded stream; malformed ones cycle through six kinds of bad input, each with the 4xx it
//! must get. The plan is drawn before the first request, so a seed gives the same requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::client::Client;
use crate::metrics;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent clients (each with its own connection).
    pub clients: usize,
    /// Requests in all.
    pub requests: usize,
    /// Items per valid request's history.
    pub history_len: usize,
    /// Share of malformed requests, 0 to 1.
    pub malformed: f64,
    /// `k` of the valid requests.
    pub k: usize,
    /// The model to ask (`None`: the service's default).
    pub model: Option<String>,
    pub seed: u64,
    /// A bound on the whole run: clients stop sending after it.
    pub max_duration: Duration,
}

/// One kind of request and the status it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestKind {
    Valid,
    MalformedJson,
    ZeroK,
    WrongType,
    UnknownField,
    UnknownModel,
    NoKnownItem,
}

impl RequestKind {
    const MALFORMED: [RequestKind; 6] = [
        RequestKind::MalformedJson,
        RequestKind::ZeroK,
        RequestKind::WrongType,
        RequestKind::UnknownField,
        RequestKind::UnknownModel,
        RequestKind::NoKnownItem,
    ];

    /// The status the service must answer with.
    pub fn expected_status(self) -> u16 {
        match self {
            RequestKind::Valid => 200,
            RequestKind::UnknownModel => 404,
            RequestKind::NoKnownItem => 422,
            _ => 400,
        }
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Latency {
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least p% of the sample at or below it.
        let pct =
            |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Latency {
            count: ms.len(),
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            p50_ms: pct(50.0),
            p90_ms: pct(90.0),
            p99_ms: pct(99.0),
            max_ms: ms[ms.len() - 1],
        }
    }
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    /// Requests answered.
    pub requests: usize,
    /// Requests planned but not sent within `max_duration`.
    pub not_sent: usize,
    /// Requests that got no answer (connection errors).
    pub failed: usize,
    pub seconds: f64,
    pub requests_per_second: f64,
    /// Valid requests (fold-in of `history_len` items).
    pub valid: Latency,
    /// Malformed requests.
    pub malformed: Latency,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Answers with a 5xx status.
    pub server_errors: usize,
    /// Answers whose status is not the one their kind must get.
    pub unexpected: usize,
    /// The service's resident memory before and after (from `/metrics`), in MiB.
    pub rss_before_mib: Option<f64>,
    pub rss_after_mib: Option<f64>,
    /// Fold-ins the service scored per pass during the run (`/metrics`; `None` when it
    /// scored none).
    pub fold_ins_per_pass: Option<f64>,
}

/// Draw the requests: (kind, body).
pub fn plan(catalogue: &[String], opts: &LoadOptions) -> Vec<(RequestKind, Vec<u8>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let len = opts.history_len.min(catalogue.len()).max(1);
    let model = opts
        .model
        .as_ref()
        .map(|m| format!(",\"model\":{}", serde_json::Value::from(m.as_str())))
        .unwrap_or_default();
    let mut malformed_seen = 0usize;
    (0..opts.requests)
        .map(|_| {
            let kind = if rng.random::<f64>() < opts.malformed {
                malformed_seen += 1;
                RequestKind::MALFORMED[(malformed_seen - 1) % RequestKind::MALFORMED.len()]
            } else {
                RequestKind::Valid
            };
            let history: Vec<&str> = sample(&mut rng, catalogue.len(), len)
                .into_iter()
                .map(|i| catalogue[i].as_str())
                .collect();
            let ids = serde_json::to_string(&history).expect("strings serialise");
            let k = opts.k;
            let body = match kind {
                RequestKind::Valid => format!("{{\"history\":{ids},\"k\":{k}{model}}}"),
                RequestKind::MalformedJson => format!("{{\"history\":{ids},\"k\":{k}"),
                RequestKind::ZeroK => format!("{{\"history\":{ids},\"k\":0{model}}}"),
                RequestKind::WrongType => format!("{{\"history\":{ids},\"k\":\"ten\"{model}}}"),
                RequestKind::UnknownField => {
                    format!("{{\"history\":{ids},\"k\":{k},\"user\":\"x\"{model}}}")
                }
                RequestKind::UnknownModel => {
                    format!("{{\"history\":{ids},\"k\":{k},\"model\":\"no-such-model\"}}")
                }
                RequestKind::NoKnownItem => {
                    format!(
                        "{{\"history\":[\"no-such-item-1\",\"no-such-item-2\"],\"k\":{k}{model}}}"
                    )
                }
            };
            (kind, body.into_bytes())
        })
        .collect()
}

/// What the load generator reads from the service's `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    rss_mib: Option<f64>,
    fold_in_passes: f64,
    fold_ins: f64,
}

/// The service's resident memory (MiB) and fold-in counters now.
async fn snapshot(client: &Client) -> Snapshot {
    let Ok(answer) = client.get("/metrics").await else {
        return Snapshot::default();
    };
    let text = answer.text();
    Snapshot {
        rss_mib: metrics::sample(&text, "process_resident_memory_bytes")
            .map(|b| b / (1 << 20) as f64),
        fold_in_passes: metrics::sample(&text, "encore_fold_in_passes_total").unwrap_or(0.0),
        fold_ins: metrics::sample(&text, "encore_fold_ins_total").unwrap_or(0.0),
    }
}

/// Send the planned requests from `opts.clients` concurrent clients (tokio tasks sharing a
/// connection pool, so that each keeps a connection busy); `progress` is called with each
/// answered request.
pub async fn run(
    client: &Client,
    catalogue: &[String],
    opts: &LoadOptions,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> LoadReport {
    let requests = Arc::new(plan(catalogue, opts));
    let before = snapshot(client).await;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.clients.max(1) {
        let (client, requests, next, progress) = (
            client.clone(),
            requests.clone(),
            next.clone(),
            progress.clone(),
        );
        let max_duration = opts.max_duration;
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests.len() || start.elapsed() > max_duration {
                    break;
                }
                let (kind, body) = &requests[i];
                let answer = client.post("/v1/recommend", body.clone()).await;
                let outcome = answer
                    .ok()
                    .map(|a| (a.status, a.elapsed.as_secs_f64() * 1e3));
                outcomes.push((*kind, outcome));
                progress(1);
            }
            outcomes
        });
    }
    let mut results: Vec<(RequestKind, Option<(u16, f64)>)> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.extend(done.expect("a load client does not panic"));
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = snapshot(client).await;
    let passes = after.fold_in_passes - before.fold_in_passes;

    let mut statuses = BTreeMap::new();
    let (mut valid, mut malformed) = (Vec::new(), Vec::new());
    let (mut failed, mut unexpected) = (0, 0);
    for (kind, outcome) in &results {
        match outcome {
            None => failed += 1,
            Some((status, ms)) => {
                *statuses.entry(*status).or_insert(0) += 1;
                if *status != kind.expected_status() {
                    unexpected += 1;
                }
                if *kind == RequestKind::Valid {
                    valid.push(*ms);
                } else {
                    malformed.push(*ms);
                }
            }
        }
    }
    let answered = results.len() - failed;
    LoadReport {
        clients: opts.clients.max(1),
        requests: answered,
        not_sent: requests.len() - results.len(),
        failed,
        seconds,
        requests_per_second: answered as f64 / seconds.max(1e-9),
        valid: Latency::of(valid),
        malformed: Latency::of(malformed),
        server_errors: statuses
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum(),
        statuses,
        unexpected,
        rss_before_mib: before.rss_mib,
        rss_after_mib: after.rss_mib,
        fold_ins_per_pass: (passes > 0.0).then(|| (after.fold_ins - before.fold_ins) / passes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(requests: usize, malformed: f64) -> LoadOptions {
        LoadOptions {
            clients: 2,
            requests,
            history_len: 3,
            malformed,
            k: 5,
            model: None,
            seed: 9,
            max_duration: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_plan_is_seeded_and_mixes_in_the_malformed_share() {
        let catalogue: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
        let a = plan(&catalogue, &options(2000, 0.1));
        assert_eq!(a, plan(&catalogue, &options(2000, 0.1)));
        let bad = a.iter().filter(|(k, _)| *k != RequestKind::Valid).count();
        assert!((150..250).contains(&bad), "{bad} malformed of 2000");
        // Every malformed kind occurs; valid bodies are JSON with 3 distinct known items.
        for kind in RequestKind::MALFORMED {
            assert!(a.iter().any(|(k, _)| *k == kind), "{kind:?}");
        }
        let (_, body) = a.iter().find(|(k, _)| *k == RequestKind::Valid).unwrap();
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let h = v["history"].as_array().unwrap();
        assert_eq!(h.len(), 3);
        assert!(h
            .iter()
            .all(|i| catalogue.contains(&i.as_str().unwrap().to_string())));
        assert!(plan(&catalogue, &options(100, 0.0))
            .iter()
            .all(|(k, _)| *k == RequestKind::Valid));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(vec![]).count, 0);
    }
}
