//! The ranking metrics of EVALUATION.md, as pure functions of a ranked hit vector.
//!
//! Every function takes `hits`, where `hits[i]` says whether the item at rank `i + 1` is one
//! of the user's target items R, `n_relevant` = |R|, and the cut-off `k`. `hits` may be
//! shorter than `k` (a list with fewer than `k` candidates, or a ranked list cut short): the
//! missing ranks count as misses. Entries beyond `k` are ignored.
//!
//! The definitions are RecBole's (`recbole/evaluator/metrics.py`), computed in f64 and summed
//! in rank order 1..k as RecBole's `np.cumsum` does, so per-user values agree to the last
//! digit up to the platform's `log2`. Degenerate cases RecBole never reaches (it skips users
//! without targets, and `k >= 1`) are defined as 0 here rather than NaN: `n_relevant == 0`
//! gives 0 for the metrics divided by |R|, and `k == 0` gives 0 everywhere.

/// The metric families, in the order the evaluator stores them per cut-off.
pub const METRIC_FAMILIES: [&str; 6] =
    ["hit", "mrr", "ndcg", "precision", "recall", "recall_liang"];

/// The report key of a metric at a cut-off, e.g. `metric_key("ndcg", 10) == "ndcg@10"`.
pub fn metric_key(family: &str, k: usize) -> String {
    format!("{family}@{k}")
}

/// Number of hits among the first `k` ranks.
#[inline]
fn hits_within(hits: &[bool], k: usize) -> usize {
    hits.iter().take(k).filter(|&&h| h).count()
}

/// Discount of rank `rank` (1-based): 1 / log2(rank + 1).
#[inline]
fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 1) as f64).log2()
}

/// `hit@k`: 1 if any of the top `k` items is a target, else 0.
pub fn hit_at(hits: &[bool], k: usize) -> f64 {
    if hits.iter().take(k).any(|&h| h) {
        1.0
    } else {
        0.0
    }
}

/// `mrr@k`: 1 / rank of the first hit if that rank is within `k`, else 0.
pub fn mrr_at(hits: &[bool], k: usize) -> f64 {
    match hits.iter().take(k).position(|&h| h) {
        Some(i) => 1.0 / (i + 1) as f64,
        None => 0.0,
    }
}

/// `recall@k`: hits within the top `k` divided by |R| (RecBole, DiffRec, Cornac).
pub fn recall_at(hits: &[bool], n_relevant: usize, k: usize) -> f64 {
    if n_relevant == 0 {
        return 0.0;
    }
    hits_within(hits, k) as f64 / n_relevant as f64
}

/// `recall_liang@k`: hits within the top `k` divided by min(k, |R|) (Liang et al.'s
/// Mult-VAE code, where it is called Recall). Equals `recall@k` when |R| <= k.
pub fn recall_liang_at(hits: &[bool], n_relevant: usize, k: usize) -> f64 {
    let denominator = k.min(n_relevant);
    if denominator == 0 {
        return 0.0;
    }
    hits_within(hits, k) as f64 / denominator as f64
}

/// `precision@k`: hits within the top `k` divided by `k` (also when fewer than `k` items
/// were ranked, as in RecBole).
pub fn precision_at(hits: &[bool], k: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    hits_within(hits, k) as f64 / k as f64
}

/// `ndcg@k`: DCG / IDCG with DCG = Σ_{i≤k} hits_i / log2(i + 1) and
/// IDCG = Σ_{i≤min(k,|R|)} 1 / log2(i + 1) (RecBole's NDCG: the ideal list is cut at |R|).
pub fn ndcg_at(hits: &[bool], n_relevant: usize, k: usize) -> f64 {
    let ideal = k.min(n_relevant);
    if ideal == 0 {
        return 0.0;
    }
    let mut dcg = 0.0f64;
    for (i, &h) in hits.iter().take(k).enumerate() {
        if h {
            dcg += discount(i + 1);
        }
    }
    let mut idcg = 0.0f64;
    for rank in 1..=ideal {
        idcg += discount(rank);
    }
    dcg / idcg
}

/// Every metric family at cut-off `k`, in [`METRIC_FAMILIES`] order, written to `out`.
pub(crate) fn all_at(hits: &[bool], n_relevant: usize, k: usize, out: &mut [f64]) {
    out[0] = hit_at(hits, k);
    out[1] = mrr_at(hits, k);
    out[2] = ndcg_at(hits, n_relevant, k);
    out[3] = precision_at(hits, k);
    out[4] = recall_at(hits, n_relevant, k);
    out[5] = recall_liang_at(hits, n_relevant, k);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(bits: &str) -> Vec<bool> {
        bits.chars().map(|c| c == '1').collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn more_targets_than_k() {
        // |R| = 5, k = 3, hits at ranks 1 and 3.
        let hits = h("101");
        assert_eq!(hit_at(&hits, 3), 1.0);
        assert_eq!(mrr_at(&hits, 3), 1.0);
        close(recall_at(&hits, 5, 3), 2.0 / 5.0);
        close(recall_liang_at(&hits, 5, 3), 2.0 / 3.0);
        close(precision_at(&hits, 3), 2.0 / 3.0);
        // DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5; IDCG over min(3, 5) = 3 ranks.
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        close(ndcg_at(&hits, 5, 3), 1.5 / idcg);
        close(ndcg_at(&hits, 5, 3), 0.703_918_089_034_134_7);
    }

    #[test]
    fn fewer_targets_than_k() {
        // |R| = 2, k = 5, hits at ranks 2 and 5.
        let hits = h("01001");
        assert_eq!(hit_at(&hits, 5), 1.0);
        close(mrr_at(&hits, 5), 0.5);
        close(recall_at(&hits, 2, 5), 1.0);
        close(recall_liang_at(&hits, 2, 5), 1.0);
        close(precision_at(&hits, 5), 0.4);
        // DCG = 1/log2(3) + 1/log2(6); IDCG over min(5, 2) = 2 ranks = 1 + 1/log2(3).
        let dcg = 1.0 / 3f64.log2() + 1.0 / 6f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        close(ndcg_at(&hits, 2, 5), dcg / idcg);
        close(ndcg_at(&hits, 2, 5), 0.624_050_520_003_837_9);
    }

    #[test]
    fn no_hit_scores_zero() {
        let hits = h("0000");
        for v in [
            hit_at(&hits, 4),
            mrr_at(&hits, 4),
            recall_at(&hits, 3, 4),
            recall_liang_at(&hits, 3, 4),
            precision_at(&hits, 4),
            ndcg_at(&hits, 3, 4),
        ] {
            assert_eq!(v, 0.0);
        }
    }

    #[test]
    fn hit_exactly_at_rank_k_counts_and_one_past_does_not() {
        let hits = h("00010");
        let k = 4;
        assert_eq!(hit_at(&hits, k), 1.0);
        close(mrr_at(&hits, k), 0.25);
        close(recall_at(&hits, 3, k), 1.0 / 3.0);
        close(recall_liang_at(&hits, 3, k), 1.0 / 3.0);
        close(precision_at(&hits, k), 0.25);
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        close(ndcg_at(&hits, 3, k), (1.0 / 5f64.log2()) / idcg);
        // Cut one earlier: the hit at rank 4 is outside.
        assert_eq!(hit_at(&hits, 3), 0.0);
        assert_eq!(mrr_at(&hits, 3), 0.0);
        assert_eq!(ndcg_at(&hits, 3, 3), 0.0);
    }

    #[test]
    fn perfect_list_has_ndcg_one() {
        assert_eq!(ndcg_at(&h("111"), 3, 3), 1.0);
        assert_eq!(ndcg_at(&h("111"), 7, 3), 1.0);
        assert_eq!(ndcg_at(&h("11000"), 2, 5), 1.0);
    }

    #[test]
    fn short_lists_count_missing_ranks_as_misses() {
        // Only two items ranked but k = 10: precision still divides by k.
        let hits = h("11");
        close(precision_at(&hits, 10), 0.2);
        close(recall_at(&hits, 4, 10), 0.5);
        close(recall_liang_at(&hits, 4, 10), 0.5);
        let idcg: f64 = (1..=4).map(|r| 1.0 / ((r + 1) as f64).log2()).sum();
        close(ndcg_at(&hits, 4, 10), (1.0 + 1.0 / 3f64.log2()) / idcg);
    }

    #[test]
    fn degenerate_inputs_are_zero_not_nan() {
        assert_eq!(recall_at(&h("1"), 0, 1), 0.0);
        assert_eq!(recall_liang_at(&h("1"), 0, 1), 0.0);
        assert_eq!(ndcg_at(&h("1"), 0, 1), 0.0);
        assert_eq!(precision_at(&h("1"), 0), 0.0);
        assert_eq!(hit_at(&h("1"), 0), 0.0);
        assert_eq!(mrr_at(&h("1"), 0), 0.0);
    }

    #[test]
    fn all_at_follows_family_order() {
        let hits = h("0101");
        let mut out = [0.0; 6];
        all_at(&hits, 3, 4, &mut out);
        assert_eq!(
            out,
            [
                hit_at(&hits, 4),
                mrr_at(&hits, 4),
                ndcg_at(&hits, 3, 4),
                precision_at(&hits, 4),
                recall_at(&hits, 3, 4),
                recall_liang_at(&hits, 3, 4)
            ]
        );
        assert_eq!(METRIC_FAMILIES[2], "ndcg");
        assert_eq!(metric_key("recall_liang", 20), "recall_liang@20");
    }
}
