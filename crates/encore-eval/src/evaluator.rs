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
            return Err(EvalError::Shape(
                "no cut-off k given (expected e.g. [10])".into(),
            ));
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
            .flat_map(|&k| {
                METRIC_FAMILIES
                    .iter()
                    .map(move |f| metrics::metric_key(f, k))
            })
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
                .map(|(j, name)| {
                    (
                        name.clone(),
                        (0..n).map(|u| values[u * width + j]).collect(),
                    )
                })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topk::rank_by_sort;
    use proptest::prelude::*;

    /// A scorer holding a dense users x items score table.
    struct TableScorer {
        n_items: usize,
        scores: Vec<f32>,
    }

    impl Scorer for TableScorer {
        fn n_items(&self) -> usize {
            self.n_items
        }
        fn score_batch(&self, users: &[u32], out: &mut [f32]) {
            for (row, &u) in out.chunks_exact_mut(self.n_items).zip(users) {
                let u = u as usize;
                row.copy_from_slice(&self.scores[u * self.n_items..(u + 1) * self.n_items]);
            }
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    /// Four users, six items; see the comments for the hand-ranked lists.
    fn toy() -> (
        TableScorer,
        InteractionMatrix,
        InteractionMatrix,
        InteractionMatrix,
    ) {
        let nan = f32::NAN;
        let ninf = f32::NEG_INFINITY;
        #[rustfmt::skip]
        let scores = vec![
            0.9, 0.8, 0.7, 0.6, 0.5, 0.4,   // user 0: plain descending
            0.5, 0.5, 0.5, 0.5, 0.5, 0.5,   // user 1: all tied
            1.0, 1.0, 1.0, 0.2, 0.1, 0.3,   // user 2: best items are in its input
            nan, 1.0, 2.0, ninf, 0.0, 3.0,  // user 3: NaN and -inf
        ];
        let input = InteractionMatrix::from_rows(6, &[vec![0u32], vec![], vec![0, 1, 2], vec![5]]);
        let valid = InteractionMatrix::from_rows(6, &[vec![1u32, 3], vec![1], vec![], vec![4]]);
        let test = InteractionMatrix::from_rows(6, &[vec![2u32], vec![], vec![5], vec![0]]);
        (TableScorer { n_items: 6, scores }, input, valid, test)
    }

    #[test]
    fn validation_excludes_input_and_skips_users_without_targets() {
        let (scorer, input, valid, _) = toy();
        let opts = EvalOptions {
            ks: vec![2],
            batch_size: 3,
            keep_per_user: true,
        };
        let r = evaluate(&scorer, &[&input], &valid, &opts);
        // Lists at k = 2: user 0 [1, 2] (item 0 excluded) hits [1, 0], |R| = 2;
        // user 1 [0, 1] (ties: lower index first) hits [0, 1], |R| = 1;
        // user 3 [2, 1] (item 5 excluded) no hit, |R| = 1; user 2 has no target.
        assert_eq!((r.n_evaluated, r.n_skipped), (3, 1));
        let l3 = 1.0 / 3f64.log2();
        close(
            r.get("ndcg@2").unwrap(),
            (1.0 / (1.0 + l3) + l3 + 0.0) / 3.0,
        );
        close(r.get("hit@2").unwrap(), 2.0 / 3.0);
        close(r.get("mrr@2").unwrap(), 0.5);
        close(r.get("precision@2").unwrap(), 1.0 / 3.0);
        close(r.get("recall@2").unwrap(), 0.5);
        close(r.get("recall_liang@2").unwrap(), 0.5);
        assert_eq!(r.metrics.len(), 6);
        let pu = r.per_user.as_ref().unwrap();
        assert_eq!(pu.users, vec![0, 1, 3]);
        assert_eq!(pu.get("mrr@2").unwrap(), &[1.0, 0.5, 0.0]);
        assert_eq!(pu.get("recall@2").unwrap(), &[0.5, 1.0, 0.0]);
    }

    #[test]
    fn test_excludes_input_and_validation() {
        let (scorer, input, valid, test) = toy();
        let opts = EvalOptions {
            ks: vec![4, 2, 4],
            batch_size: 512,
            keep_per_user: false,
        };
        let r = evaluate(&scorer, &[&input, &valid], &test, &opts);
        // Full lists: user 0 [2, 4, 5] (0, 1, 3 excluded), |R| = 1, hit at 1;
        // user 2 [5, 3, 4] (0, 1, 2 excluded), hit at 1;
        // user 3 [2, 1, 3, 0] (5, 4 excluded; -inf before NaN), hit at 4. User 1 skipped.
        assert_eq!((r.n_evaluated, r.n_skipped), (3, 1));
        assert!(r.per_user.is_none());
        assert_eq!(r.metrics.len(), 12);
        close(r.get("hit@2").unwrap(), 2.0 / 3.0);
        close(r.get("mrr@2").unwrap(), 2.0 / 3.0);
        close(r.get("ndcg@2").unwrap(), 2.0 / 3.0);
        close(r.get("precision@2").unwrap(), 1.0 / 3.0);
        close(r.get("recall@2").unwrap(), 2.0 / 3.0);
        close(r.get("recall_liang@2").unwrap(), 2.0 / 3.0);
        close(r.get("hit@4").unwrap(), 1.0);
        close(r.get("mrr@4").unwrap(), 0.75);
        close(r.get("ndcg@4").unwrap(), (2.0 + 1.0 / 5f64.log2()) / 3.0);
        // Fewer than k items left: precision still divides by k.
        close(r.get("precision@4").unwrap(), 0.25);
        close(r.get("recall@4").unwrap(), 1.0);
        close(r.get("recall_liang@4").unwrap(), 1.0);
    }

    #[test]
    fn report_round_trips_through_json() {
        let (scorer, input, valid, _) = toy();
        let opts = EvalOptions {
            ks: vec![1, 5],
            batch_size: 2,
            keep_per_user: true,
        };
        let r = evaluate(&scorer, &[&input], &valid, &opts);
        let back: MetricReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let o: EvalOptions = serde_json::from_str(&serde_json::to_string(&opts).unwrap()).unwrap();
        assert_eq!(o, opts);
    }

    #[test]
    fn no_evaluated_users_gives_zero_means() {
        let (scorer, input, _, _) = toy();
        let empty = InteractionMatrix::empty(4, 6);
        let r = evaluate(&scorer, &[&input], &empty, &EvalOptions::default());
        assert_eq!((r.n_evaluated, r.n_skipped), (0, 4));
        assert_eq!(r.get("ndcg@10"), Some(0.0));
    }

    #[test]
    fn shapes_are_checked() {
        let (_, input, valid, _) = toy();
        let wide = InteractionMatrix::empty(4, 7);
        assert!(check_shapes(6, &[&input], &valid).is_ok());
        let e = check_shapes(6, &[&wide], &valid).unwrap_err().to_string();
        assert!(e.contains("exclusion matrix 0 is 4 users x 7 items"), "{e}");
        assert!(check_shapes(5, &[&input], &valid).is_err());
        assert!(EvalOptions::default().validate().is_ok());
        let bad = EvalOptions {
            ks: vec![0],
            ..EvalOptions::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn ranked_lists_unknown_items_missing_lists_and_exclusions() {
        let targets = InteractionMatrix::from_rows(4, &[vec![1u32], vec![2], vec![3]]);
        let input = InteractionMatrix::from_rows(4, &[vec![0u32], vec![], vec![]]);
        // User 0: item 0 is excluded, so item 1 moves to rank 1. User 1: an unknown item takes
        // rank 1, the hit is at rank 2. User 2 has no list (only two list slots).
        let lists =
            RankedLists::from_rows(4, &[vec![0u32, 1], vec![RankedLists::UNKNOWN, 2]]).unwrap();
        let opts = EvalOptions {
            ks: vec![1, 2],
            batch_size: 1,
            keep_per_user: true,
        };
        let r = evaluate_ranked_lists(&lists, &[&input], &targets, &opts);
        assert_eq!((r.n_evaluated, r.n_skipped), (3, 0));
        let pu = r.per_user.unwrap();
        assert_eq!(pu.get("mrr@2").unwrap(), &[1.0, 0.5, 0.0]);
        assert_eq!(pu.get("hit@1").unwrap(), &[1.0, 0.0, 0.0]);
        assert_eq!(pu.get("precision@2").unwrap(), &[0.5, 0.5, 0.0]);
    }

    /// A random instance: scores with many ties, NaN and infinities; disjoint input / valid /
    /// test rows.
    #[derive(Debug, Clone)]
    struct Instance {
        n_users: usize,
        n_items: usize,
        scores: Vec<f32>,
        input: InteractionMatrix,
        valid: InteractionMatrix,
        test: InteractionMatrix,
    }

    fn instance() -> impl Strategy<Value = Instance> {
        (1usize..25, 1usize..50).prop_flat_map(|(n_users, n_items)| {
            let cells = n_users * n_items;
            let score = prop_oneof![
                10 => (0i32..5).prop_map(|v| v as f32),
                6 => -10.0f32..10.0,
                1 => Just(f32::NAN),
                1 => Just(f32::NEG_INFINITY),
            ];
            (
                prop::collection::vec(score, cells),
                prop::collection::vec(0u8..8, cells),
            )
                .prop_map(move |(scores, part)| {
                    let mut rows = vec![vec![Vec::new(); n_users]; 3];
                    for (c, &p) in part.iter().enumerate() {
                        let (u, i) = (c / n_items, (c % n_items) as u32);
                        match p {
                            0 | 1 => rows[0][u].push(i),
                            2 => rows[1][u].push(i),
                            3 => rows[2][u].push(i),
                            _ => {}
                        }
                    }
                    Instance {
                        n_users,
                        n_items,
                        scores,
                        input: InteractionMatrix::from_rows(n_items, &rows[0]),
                        valid: InteractionMatrix::from_rows(n_items, &rows[1]),
                        test: InteractionMatrix::from_rows(n_items, &rows[2]),
                    }
                })
        })
    }

    fn opts(batch_size: usize) -> EvalOptions {
        EvalOptions {
            ks: vec![1, 3, 10],
            batch_size,
            keep_per_user: true,
        }
    }

    fn run(inst: &Instance, batch_size: usize) -> MetricReport {
        let scorer = TableScorer {
            n_items: inst.n_items,
            scores: inst.scores.clone(),
        };
        evaluate(
            &scorer,
            &[&inst.input, &inst.valid],
            &inst.test,
            &opts(batch_size),
        )
    }

    fn same(a: &MetricReport, b: &MetricReport) -> bool {
        let bits =
            |r: &MetricReport| -> Vec<u64> { r.metrics.values().map(|v| v.to_bits()).collect() };
        a.n_evaluated == b.n_evaluated
            && a.n_skipped == b.n_skipped
            && bits(a) == bits(b)
            && a.per_user == b.per_user
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn independent_of_batch_size_order_and_threads(inst in instance(), seed in any::<u64>()) {
            let all = run(&inst, inst.n_users);
            prop_assert!(same(&all, &run(&inst, 1)));
            prop_assert!(same(&all, &run(&inst, 97)));
            prop_assert!(same(&all, &run(&inst, 2)));
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                prop_assert!(same(&all, &pool.install(|| run(&inst, 3))));
            }
            // Processing order: a seeded shuffle of the evaluated users.
            let mut order = evaluated_users(&inst.test);
            let mut state = seed | 1;
            for i in (1..order.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let scorer = TableScorer { n_items: inst.n_items, scores: inst.scores.clone() };
            let shuffled =
                evaluate_in_order(&scorer, &[&inst.input, &inst.valid], &inst.test, &opts(4), &order);
            prop_assert!(same(&all, &shuffled));
        }

        #[test]
        fn agrees_with_a_full_sort_reference(inst in instance()) {
            let r = run(&inst, 5);
            let pu = r.per_user.as_ref().unwrap();
            for (j, &u) in pu.users.iter().enumerate() {
                let u = u as usize;
                let mut excluded = Vec::new();
                merge_sorted_into(&[inst.input.row(u), inst.valid.row(u)], &mut excluded);
                let row = &inst.scores[u * inst.n_items..(u + 1) * inst.n_items];
                let ranked = rank_by_sort(row, &excluded, 10);
                let target = inst.test.row(u);
                let hits: Vec<bool> = ranked.iter().map(|i| target.contains(i)).collect();
                for k in [1, 3, 10] {
                    let get = |m: &str| pu.get(&format!("{m}@{k}")).unwrap()[j];
                    prop_assert_eq!(get("ndcg"), metrics::ndcg_at(&hits, target.len(), k));
                    prop_assert_eq!(get("recall"), metrics::recall_at(&hits, target.len(), k));
                    prop_assert_eq!(get("mrr"), metrics::mrr_at(&hits, k));
                    prop_assert_eq!(get("precision"), metrics::precision_at(&hits, k));
                }
            }
        }

        #[test]
        fn user_relabelling_permutes_per_user_values(inst in instance()) {
            // Reverse the user order of every matrix and of the score table.
            let n = inst.n_users;
            let rev = |m: &InteractionMatrix| {
                let rows: Vec<&[u32]> = (0..n).rev().map(|u| m.row(u)).collect();
                InteractionMatrix::from_rows(inst.n_items, &rows)
            };
            let scores: Vec<f32> = (0..n)
                .rev()
                .flat_map(|u| inst.scores[u * inst.n_items..(u + 1) * inst.n_items].to_vec())
                .collect();
            let flipped = Instance {
                scores,
                input: rev(&inst.input),
                valid: rev(&inst.valid),
                test: rev(&inst.test),
                ..inst.clone()
            };
            let a = run(&inst, 7);
            let b = run(&flipped, 7);
            let (pa, pb) = (a.per_user.as_ref().unwrap(), b.per_user.as_ref().unwrap());
            for (name, va) in &pa.values {
                let mut vb = pb.values[name].clone();
                vb.reverse();
                prop_assert_eq!(va, &vb);
                let (ma, mb) = (a.metrics[name], b.metrics[name]);
                prop_assert!((ma - mb).abs() <= 1e-12, "{} {} {}", name, ma, mb);
            }
        }

        #[test]
        fn ranked_lists_of_the_full_ranking_agree_with_evaluate(inst in instance()) {
            let rows: Vec<Vec<u32>> = (0..inst.n_users)
                .map(|u| {
                    let row = &inst.scores[u * inst.n_items..(u + 1) * inst.n_items];
                    rank_by_sort(row, &[], inst.n_items)
                })
                .collect();
            let lists = RankedLists::from_rows(inst.n_items, &rows).unwrap();
            for (exclude, targets) in [
                (vec![&inst.input], &inst.valid),
                (vec![&inst.input, &inst.valid], &inst.test),
            ] {
                let scorer = TableScorer { n_items: inst.n_items, scores: inst.scores.clone() };
                let a = evaluate(&scorer, &exclude, targets, &opts(6));
                let b = evaluate_ranked_lists(&lists, &exclude, targets, &opts(6));
                prop_assert!(same(&a, &b));
            }
        }
    }
}
