//! Encore's evaluator (SPEC §5, EVALUATION.md): exact full-ranking metrics with RecBole's
//! definitions, top-k by partial selection, streaming over user batches, evaluation of ranked
//! lists produced by other systems, paired significance tests, and result tables.
//!
//! The crate depends on no tensor framework: anything that can fill a row of scores per user
//! (the [`Scorer`] trait) can be evaluated, and so can a ranked-list file from another tool.
//!
//! ```text
//! valid = evaluate(&scorer, &[&split.input], &split.valid, &EvalOptions::default());
//! test  = evaluate(&scorer, &[&split.input, &split.valid], &split.test, &opts);
//! ```

pub mod error;
pub mod evaluator;
pub mod metrics;
pub mod ranked;
pub mod stats;
pub mod table;
pub mod topk;

pub use error::EvalError;
pub use evaluator::{
    check_shapes, evaluate, evaluate_ranked_lists, EvalOptions, MetricReport, PerUserMetrics,
};
pub use metrics::{hit_at, mrr_at, ndcg_at, precision_at, recall_at, recall_liang_at};
pub use ranked::{read_ranked_lists, RankedListStats, RankedLists};
pub use stats::{
    compare_paired, paired_t_test, paired_t_test_reports, wilcoxon_signed_rank, PairedComparison,
    Wilcoxon,
};
pub use table::{format_markdown_table, format_table};
pub use topk::TopK;

/// Anything that can score every item of the catalogue for a batch of users.
///
/// `out` has `users.len() * n_items()` entries, row-major (one row per user, in the order of
/// `users`). Higher is better. The evaluator excludes items itself; a scorer need not.
pub trait Scorer: Sync {
    /// Catalogue size.
    fn n_items(&self) -> usize;
    /// Fill `out` with the scores of every item for each user in `users`.
    fn score_batch(&self, users: &[u32], out: &mut [f32]);
}
