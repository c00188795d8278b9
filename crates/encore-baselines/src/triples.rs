//! (user, positive, negative) triples for the pairwise BPR loss (BPR-MF, LightGCN): every
//! training interaction once per epoch in a shuffled order, uniform negatives the user does not
//! have, mini-batches, and the loss's scalar functions.

use encore_core::ModelError;
use encore_data::InteractionMatrix;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The sorted, unique node rows (`users`, then items at `n_users + i`) a batch of triples
/// gathers: what a lazy Adam step updates.
pub(crate) fn batch_rows(batch: &[(u32, u32, u32)], n_users: usize) -> Vec<u32> {
    let nu = n_users as u32;
    let mut rows: Vec<u32> = batch
        .iter()
        .flat_map(|&(u, i, j)| [u, nu + i, nu + j])
        .collect();
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// The user owning each stored interaction of `train` (index into `indices()`).
pub(crate) fn interaction_owners(train: &InteractionMatrix) -> Vec<u32> {
    let mut owners = Vec::with_capacity(train.nnz());
    for u in 0..train.n_users() {
        owners.extend(std::iter::repeat_n(u as u32, train.row_len(u)));
    }
    owners
}

/// A uniform negative item for user `u`: resampled while the user has it when `check` is
/// set (binary search in the sorted CSR row). `None` when the user has every item (no
/// negative exists); such triples are skipped.
pub(crate) fn sample_negative(
    train: &InteractionMatrix,
    u: usize,
    rng: &mut ChaCha8Rng,
    check: bool,
) -> Option<u32> {
    let n_items = train.n_items() as u32;
    if check && train.row_len(u) >= n_items as usize {
        return None;
    }
    loop {
        let j = rng.random_range(0..n_items);
        if !check || !train.contains(u, j) {
            return Some(j);
        }
    }
}

/// One epoch of (user, positive, negative) triples: every training interaction once, in an
/// order shuffled by `rng`, cut into batches of `batch_size`; `step` is called on each batch,
/// at most `max_batches` times (`usize::MAX` for the epoch; fewer for timing a few steps at
/// scale). Negatives are drawn batch by batch from the same stream (so memory stays O(batch)).
pub(crate) fn for_each_triple_batch(
    train: &InteractionMatrix,
    rng: &mut ChaCha8Rng,
    batch_size: usize,
    check_negatives: bool,
    max_batches: usize,
    mut step: impl FnMut(&[(u32, u32, u32)]) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let owners = interaction_owners(train);
    let mut order: Vec<u32> = (0..train.nnz() as u32).collect();
    order.shuffle(rng);
    let indices = train.indices();
    let mut batch = Vec::with_capacity(batch_size);
    for chunk in order.chunks(batch_size).take(max_batches) {
        batch.clear();
        for &k in chunk {
            let u = owners[k as usize];
            if let Some(j) = sample_negative(train, u as usize, rng, check_negatives) {
                batch.push((u, indices[k as usize], j));
            }
        }
        if !batch.is_empty() {
            step(&batch)?;
        }
    }
    Ok(())
}

/// `ln(1 + e^x)` without overflow.
#[inline]
pub(crate) fn softplus(x: f32) -> f32 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// `σ(x)`.
#[inline]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rows_are_the_sorted_unique_users_and_offset_items() {
        assert_eq!(
            batch_rows(&[(2, 0, 1), (0, 1, 0), (2, 3, 0)], 3),
            vec![0, 2, 3, 4, 6]
        );
    }
}
