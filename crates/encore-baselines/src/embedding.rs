//! Embedding tables of the factorisation models (BPR-MF, LightGCN): their initialisation, the
//! dot products that score with them, and the fold-in of a listener the model never trained
//! on (the mean of the history's item vectors; see [BPR-MF](crate::bpr) "Fold-in").

use encore_core::ModelError;
use encore_data::InteractionMatrix;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How the embedding tables are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingInit {
    /// `N(0, init_std²)`.
    Normal,
    /// Glorot normal, `std = sqrt(2 / (fan_in + fan_out))` with torch's fans for an embedding
    /// table of shape `(rows, d)`: fan_in = d, fan_out = rows (RecBole's BPR).
    XavierNormal,
    /// Glorot uniform, `U(±sqrt(6 / (fan_in + fan_out)))` (RecBole's LightGCN).
    XavierUniform,
}

/// A `rows x d` table initialised as configured, drawn row-major from `rng`.
pub(crate) fn init_table(
    rng: &mut ChaCha8Rng,
    rows: usize,
    d: usize,
    init: EmbeddingInit,
    std: f64,
) -> Vec<f32> {
    let fans = (d + rows) as f64;
    match init {
        EmbeddingInit::Normal => {
            let dist = Normal::new(0.0f32, std as f32).expect("std was checked > 0");
            (0..rows * d).map(|_| dist.sample(rng)).collect()
        }
        EmbeddingInit::XavierNormal => {
            let dist = Normal::new(0.0f32, (2.0 / fans).sqrt() as f32).expect("positive std");
            (0..rows * d).map(|_| dist.sample(rng)).collect()
        }
        EmbeddingInit::XavierUniform => {
            let a = (6.0 / fans).sqrt() as f32;
            let dist = Uniform::new_inclusive(-a, a).expect("a > 0");
            (0..rows * d).map(|_| dist.sample(rng)).collect()
        }
    }
}

#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// `a += w * b`.
#[inline]
pub(crate) fn axpy(w: f32, b: &[f32], a: &mut [f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += w * y;
    }
}

/// Check a history's item indices against the catalogue.
pub(crate) fn check_history(history: &[u32], n_items: usize) -> Result<(), ModelError> {
    crate::check_items(history, n_items)?;
    if history.is_empty() {
        return Err(ModelError::Input(
            "the history is empty: a factorisation model folds a listener in from the mean of \
             their items' vectors, so at least one item is needed"
                .into(),
        ));
    }
    Ok(())
}

/// Mean of the history's item vectors (`d` entries); zeros for an empty history.
pub(crate) fn fold_in_vector(items: &[f32], d: usize, history: &[u32], out: &mut [f32]) {
    out.fill(0.0);
    if history.is_empty() {
        return;
    }
    for &i in history {
        axpy(1.0, &items[i as usize * d..(i as usize + 1) * d], out);
    }
    let w = 1.0 / history.len() as f32;
    out.iter_mut().for_each(|x| *x *= w);
}

/// Score every item for each user: `out[u, j] = user_vec(u) · q_j`, where the user vector is
/// the trained row for trained users and the fold-in mean of the `input` row otherwise.
/// Parallel over users; each row computed independently.
pub(crate) fn score_factorised(
    users: &[u32],
    input: &InteractionMatrix,
    user_table: &[f32],
    trained: &[bool],
    item_table: &[f32],
    d: usize,
    out: &mut [f32],
) {
    let n_items = item_table.len() / d;
    out.par_chunks_mut(n_items)
        .zip(users.par_iter())
        .for_each_init(
            || vec![0.0f32; d],
            |buf, (row, &u)| {
                let u = u as usize;
                let p: &[f32] = if trained.get(u).copied().unwrap_or(false) {
                    &user_table[u * d..(u + 1) * d]
                } else {
                    let history: &[u32] = if u < input.n_users() {
                        input.row(u)
                    } else {
                        &[]
                    };
                    let history: Vec<u32> = history
                        .iter()
                        .copied()
                        .filter(|&i| (i as usize) < n_items)
                        .collect();
                    fold_in_vector(item_table, d, &history, buf);
                    buf
                };
                for (j, s) in row.iter_mut().enumerate() {
                    *s = dot(p, &item_table[j * d..(j + 1) * d]);
                }
            },
        );
}
