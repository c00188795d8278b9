//! Encore's baseline models (SPEC §4, MODELS.md), each in its own module and registered in
//! a registry entry (`entry()`) that the command line collects: item popularity ([`pop`]),
//! item-based k-nearest neighbours ([`knn`]), BPR-MF ([`bpr`]), LightGCN ([`lightgcn`]) and
//! EASE ([`ease`]). The factorisation models share their embedding tables ([`embedding`]) and
//! their triple sampling ([`triples`]).

pub mod bpr;
pub mod ease;
pub mod embedding;
pub mod knn;
pub mod lightgcn;
pub mod pop;
pub mod triples;

pub use pop::Pop;

use encore_core::ModelError;
use encore_data::InteractionMatrix;
use rayon::prelude::*;

/// Score every item for each of `users` from their rows of `input` with `score_row` (which
/// fills one `n_items` row from a history), parallel over users; a user beyond `input`'s rows
/// has an empty history. The shared `score_users` of the item-item models (EASE, item-kNN).
pub(crate) fn score_input_rows(
    n_items: usize,
    users: &[u32],
    input: &InteractionMatrix,
    out: &mut [f32],
    score_row: impl Fn(&[u32], &mut [f32]) + Sync,
) {
    if n_items == 0 {
        return;
    }
    out.par_chunks_mut(n_items)
        .zip(users.par_iter())
        .for_each(|(row, &u)| {
            let history: &[u32] = if (u as usize) < input.n_users() {
                input.row(u as usize)
            } else {
                &[]
            };
            score_row(history, row);
        });
}

/// Check that every item of a posted history lies in the catalogue.
pub(crate) fn check_items(history: &[u32], n_items: usize) -> Result<(), ModelError> {
    match history.iter().find(|&&i| i as usize >= n_items) {
        Some(&bad) => Err(ModelError::Input(format!(
            "item index {bad} is outside the catalogue of {n_items} items"
        ))),
        None => Ok(()),
    }
}
