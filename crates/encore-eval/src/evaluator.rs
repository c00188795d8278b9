//! Full-ranking evaluation (EVALUATION.md): every item scored for every evaluated user, the
//! user's excluded items removed, top-k by partial selection, metrics at every requested k.
//!
//! Memory is bounded by `batch_size x n_items` scores (one buffer, reused batch after batch)
//! plus `n_evaluated x n_metrics` per-user values. Users inside a batch are ranked in parallel
//! (rayon); each user's metric values are written to that user's own slot, and the means are
//! summed sequentially in user-index order in f64. The report is therefore bit-identical for
//! any batch size, processing order, or number of threads.
//!
//! Deviation from RecBole: numpy's `mean` sums pairwise, we sum sequentially; the means can
//! differ in the last bits (relative ~1e-16 per user), never in any printed digit.

use std::collections::BTreeMap;
use std::time::Instant;

use encore_data::InteractionMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::metrics::{self, METRIC_FAMILIES};
use crate::ranked::RankedLists;
use crate::topk::{merge_sorted_into, TopK};
use crate::{EvalError, Scorer};

/// How to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Cut-offs; every metric is reported at each (duplicates are reported once).
    pub ks: Vec<usize>,
    /// Users scored per call of [`Scorer::score_batch`]; bounds memory at
    /// `batch_size x n_items` f32. 0 is treated as 1.
    pub batch_size: usize,
    /// Keep every user's metric values in [`MetricReport::per_user`] (for paired tests).
    pub keep_per_user: bool,
}

impl Default for EvalOptions {
    /// `ks = [10]`, `batch_size = 512`, `keep_per_user = false`.
    fn default() -> Self {
        Self {
            ks: vec![10],
            batch_size: 512,
            keep_per_user: false,
        }
    }
}

impl EvalOptions {
    /// Check the options a user gave: at least one cut-off, every cut-off >= 1,
    /// `batch_size >= 1`. [`evaluate`] itself accepts anything (see the field docs).
    pub fn validate(&self) -> Result<(), EvalError> {
        if self.ks.is_empty() {
            return Err(EvalError::Shape("no cut-off k given (expected e.g. [10])".into()));
        }
        if self.ks.contains(&0) {
            return Err(EvalError::Shape("cut-off k = 0 (expected k >= 1)".into()));
        }
        if self.batch_size == 0 {
            return Err(EvalError::Shape("batch_size = 0 (expected >= 1)".into()));
        }
        Ok(())
    }

    /// The cut-offs sorted ascending without duplicates.
    fn sorted_ks(&self) -> Vec<usize> {
        let mut ks = self.ks.clone();
        ks.sort_unstable();
        ks.dedup();
        ks
    }
}

/// Every evaluated user's metric values, for paired tests between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerUserMetrics {
    /// The evaluated users (row indices of the target matrix), ascending.
    pub users: Vec<u32>,
    /// Metric name (`"ndcg@10"`) -> one value per entry of `users`, in the same order.
    pub values: BTreeMap<String, Vec<f64>>,
}

impl PerUserMetrics {
    /// The per-user values of one metric.
    pub fn get(&self, name: &str) -> Option<&[f64]> {
        self.values.get(name).map(Vec::as_slice)
    }
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricReport {
    /// Users with at least one target item (the users averaged over).
    pub n_evaluated: usize,
    /// Users (rows of the target matrix) without any target item, not averaged over.
    pub n_skipped: usize,
    /// Mean over evaluated users of every metric at every k: keys `"hit@10"`, `"mrr@10"`,
    /// `"ndcg@10"`, `"precision@10"`, `"recall@10"`, `"recall_liang@10"`. With no evaluated
    /// user every mean is 0.
    pub metrics: BTreeMap<String, f64>,
    /// Per-user values, when [`EvalOptions::keep_per_user`] was set.
    pub per_user: Option<PerUserMetrics>,
    /// Wall-clock seconds the evaluation took (scoring included).
    pub seconds: f64,
}

impl MetricReport {
    /// The mean of one metric, e.g. `report.get("ndcg@10")`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }
}

/// Check that the exclusion matrices, the targets and the catalogue size agree.
pub fn check_shapes(
    n_items: usize,
    exclude: &[&InteractionMatrix],
    targets: &InteractionMatrix,
) -> Result<(), EvalError> {
    if targets.n_items() != n_items {
        return Err(EvalError::Shape(format!(
            "the scorer/lists rank {n_items} items but the target matrix has {} items",
            targets.n_items()
        )));
    }
    for (i, m) in exclude.iter().enumerate() {
        if m.n_items() != targets.n_items() || m.n_users() != targets.n_users() {
            return Err(EvalError::Shape(format!(
                "exclusion matrix {i} is {} users x {} items but the target matrix is {} x {}",
                m.n_users(),
                m.n_items(),
                targets.n_users(),
                targets.n_items()
            )));
        }
    }
    Ok(())
}

/// Evaluate a scorer by full ranking (EVALUATION.md).
///
/// The evaluated users are those with at least one item in `targets`; every other row of
/// `targets` is counted in [`MetricReport::n_skipped`]. For each evaluated user every item is
/// scored, the items in that user's rows of the `exclude` matrices are removed (validation:
/// `[input]`; test: `[input, valid]`), and the best `max(ks)` items are selected with ties
/// broken by the lower item index and NaN scores ranked after every number (see
/// [`crate::topk`]).
///
/// # Panics
/// If the shapes do not fit together ([`check_shapes`] says how): a programming error, as the
/// matrices come from one split. Call [`check_shapes`] first to get an error instead.
pub fn evaluate(
    scorer: &dyn Scorer,
    exclude: &[&InteractionMatrix],
    targets: &InteractionMatrix,
    opts: &EvalOptions,
) -> MetricReport {
    let users = evaluated_users(targets);
    evaluate_in_order(scorer, exclude, targets, opts, &users)
}

/// The users with at least one target item, ascending.
fn evaluated_users(targets: &InteractionMatrix) -> Vec<u32> {
    (0..targets.n_users())
        .filter(|&u| targets.row_len(u) > 0)
        .map(|u| u as u32)
        .collect()
}

/// Layout of the per-user value rows: for each k (ascending), the metric families in
/// [`METRIC_FAMILIES`] order.
struct Layout {
    ks: Vec<usize>,
    k_max: usize,
}

impl Layout {
    fn new(opts: &EvalOptions) -> Self {
        let ks = opts.sorted_ks();
        let k_max = ks.last().copied().unwrap_or(0);
        Self { ks, k_max }
    }

    fn width(&self) -> usize {
        self.ks.len() * METRIC_FAMILIES.len()
    }

    fn names(&self) -> Vec<String> {
        self.ks
            .iter()
            .flat_map(|&k| METRIC_FAMILIES.iter().map(move |f| metrics::metric_key(f, k)))
            .collect()
    }

    /// Fill one user's value row from the ranked list (`ranked` holds at most `k_max` items;
    /// `u32::MAX` marks an item that can never hit).
    fn fill(&self, ranked: &[u32], target_row: &[u32], hits: &mut Vec<bool>, out: &mut [f64]) {
        hits.clear();
        hits.extend(ranked.iter().map(|i| target_row.binary_search(i).is_ok()));
        let n = METRIC_FAMILIES.len();
        for (j, &k) in self.ks.iter().enumerate() {
            metrics::all_at(hits, target_row.len(), k, &mut out[j * n..(j + 1) * n]);
        }
    }

    /// Means in user order, and optionally the per-user table.
    fn report(
        &self,
        users: Vec<u32>,
        values: Vec<f64>,
        n_skipped: usize,
        keep_per_user: bool,
        started: Instant,
    ) -> MetricReport {
        let width = self.width();
        let names = self.names();
        let n = users.len();
        let mut sums = vec![0.0f64; width];
        for row in values.chunks_exact(width.max(1)).take(n) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v;
            }
        }
        let metrics = names
            .iter()
            .zip(&sums)
            .map(|(name, &s)| (name.clone(), if n == 0 { 0.0 } else { s / n as f64 }))
            .collect();
        let per_user = keep_per_user.then(|| PerUserMetrics {
            values: names
                .iter()
                .enumerate()
                .map(|(j, name)| (name.clone(), (0..n).map(|u| values[u * width + j]).collect()))
                .collect(),
            users,
        });
        MetricReport {
            n_evaluated: n,
            n_skipped,
            metrics,
            per_user,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// Per-thread scratch space of the ranking loop.
struct Scratch<'a> {
    topk: TopK,
    excluded: Vec<u32>,
    rows: Vec<&'a [u32]>,
    hits: Vec<bool>,
}

/// [`evaluate`] with the evaluated users processed in the order `order` (a permutation of the
/// evaluated users). Values are still stored and summed by user index, so the order does not
/// change the report; the tests use this to prove it.
pub(crate) fn evaluate_in_order(
    scorer: &dyn Scorer,
    exclude: &[&InteractionMatrix],
    targets: &InteractionMatrix,
    opts: &EvalOptions,
    order: &[u32],
) -> MetricReport {
    let started = Instant::now();
    let n_items = scorer.n_items();
    if let Err(e) = check_shapes(n_items, exclude, targets) {
        panic!("{e}");
    }
    let layout = Layout::new(opts);
    let width = layout.width();
    let users = evaluated_users(targets);
    let n_skipped = targets.n_users() - users.len();
    let mut values = vec![0.0f64; users.len() * width];
    if !users.is_empty() && n_items > 0 && width > 0 {
        // Where each user's values go: its position among the evaluated users.
        let mut position = vec![u32::MAX; targets.n_users()];
        for (p, &u) in users.iter().enumerate() {
            position[u as usize] = p as u32;
        }
        let batch = opts.batch_size.max(1).min(order.len());
        let mut scores = vec![0.0f32; batch * n_items];
        let mut batch_values = vec![0.0f64; batch * width];
        for chunk in order.chunks(batch) {
            let buf = &mut scores[..chunk.len() * n_items];
            scorer.score_batch(chunk, buf);
            let vals = &mut batch_values[..chunk.len() * width];
            buf.par_chunks(n_items)
                .zip(vals.par_chunks_mut(width))
                .zip(chunk.par_iter())
                .for_each_init(
                    || Scratch {
                        topk: TopK::new(layout.k_max),
                        excluded: Vec::new(),
                        rows: Vec::new(),
                        hits: Vec::new(),
                    },
                    |s, ((row_scores, out), &u)| {
                        let u = u as usize;
                        s.rows.clear();
                        s.rows.extend(exclude.iter().map(|m| m.row(u)));
                        merge_sorted_into(&s.rows, &mut s.excluded);
                        s.topk.select(row_scores, &s.excluded);
                        layout.fill(s.topk.items(), targets.row(u), &mut s.hits, out);
                    },
                );
            for (&u, vals) in chunk.iter().zip(vals.chunks_exact(width)) {
                let p = position[u as usize] as usize;
                values[p * width..(p + 1) * width].copy_from_slice(vals);
            }
        }
    }
    layout.report(users, values, n_skipped, opts.keep_per_user, started)
}

/// Evaluate ranked lists made by another system against `targets`.
///
/// For each user with targets, the user's list has the items of the user's `exclude` rows
/// removed, is cut at `max(ks)`, and is scored; unknown items (see
/// [`crate::read_ranked_lists`]) take a rank but never hit. A user with targets but no list (or
/// an empty one) scores 0 on every metric and is still evaluated.
///
/// # Panics
/// If the shapes do not fit together ([`check_shapes`] with `lists.n_items()`).
pub fn evaluate_ranked_lists(
    lists: &RankedLists,
    exclude: &[&InteractionMatrix],
    targets: &InteractionMatrix,
    opts: &EvalOptions,
) -> MetricReport {
    let started = Instant::now();
    if let Err(e) = check_shapes(lists.n_items(), exclude, targets) {
        panic!("{e}");
    }
    let layout = Layout::new(opts);
    let width = layout.width();
    let users = evaluated_users(targets);
    let n_skipped = targets.n_users() - users.len();
    let mut values = vec![0.0f64; users.len() * width];
    if width > 0 {
        values
            .par_chunks_mut(width)
            .zip(users.par_iter())
            .for_each_init(
                || (Vec::<u32>::new(), Vec::<bool>::new()),
                |(ranked, hits), (out, &u)| {
                    let u = u as usize;
                    ranked.clear();
                    let excluded = |i: u32| exclude.iter().any(|m| m.contains(u, i));
                    ranked.extend(
                        lists
                            .list(u)
                            .iter()
                            .copied()
                            .filter(|&i| i == RankedLists::UNKNOWN || !excluded(i))
                            .take(layout.k_max),
                    );
                    layout.fill(ranked, targets.row(u), hits, out);
                },
            );
    }
    layout.report(users, values, n_skipped, opts.keep_per_user, started)
}
