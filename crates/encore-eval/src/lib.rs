//! (being written)
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
