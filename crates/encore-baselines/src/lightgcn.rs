//! LightGCN (He et al. 2020; MODELS.md "LightGCN"): collaborative filtering by linear
//! propagation of embeddings over the user-item graph.
//!
//! Every user and item has a layer-0 embedding `E⁽⁰⁾` (`d = 64`). With `A` the adjacency of
//! the bipartite graph over `n_users + n_items` nodes and `D` its degrees,
//! `Â = D^{-1/2} A D^{-1/2}` (kept as CSR, never dense), `E⁽ˡ⁺¹⁾ = Â E⁽ˡ⁾`, and the final
//! embedding is the mean of layers `0..=L` (`L = 2`). Scores are dot products of final
//! embeddings; training minimises the BPR loss on (user, positive, negative) triples, sampled
//! exactly as for [BPR-MF](crate::bpr), plus an L2 term on the batch's layer-0 embeddings.
//!
//! **Propagation as a custom op.** Forward is `L` sparse x dense products, parallel over
//! rows with rayon ([`NormAdj::spmm`]). Backward of `F = (1/(L+1)) Σ_l Âˡ E⁽⁰⁾` is
//! `∂E⁽⁰⁾ = (1/(L+1)) Σ_l (Âᵀ)ˡ ∂F`; `Â` is symmetric, so the transposed product is the same
//! kernel, applied by Horner's rule (`t ← ∂F + Â t`, `L` times). Every row is written by one
//! task and summed in a fixed order, so results do not depend on the number of threads.
//!
//! Presets (both reachable by config; the original is the default):
//!
//! | key | `original` (official PyTorch/TF code) | `recbole` |
//! |---|---|---|
//! | `reg_weight` | 1e-4 | 1e-5 |
//! | `reg_norm` | `squared`: `λ · ½ Σ_b (‖e_u‖² + ‖e_i‖² + ‖e_j‖²) / B` | `frobenius`: `λ (‖E_u‖_F + ‖E_i‖_F + ‖E_j‖_F) / B` |
//! | `init` | `normal`, std 0.1 | `xavier_uniform` |
//!
//! Deviation from MODELS.md's wording: MODELS.md says "λ = 1e-4 squared L2 ... divided by
//! batch size"; both official implementations compute it with the `½` of `tf.nn.l2_loss`
//! (`reg_loss = ½(‖u⁰‖² + ‖i⁰‖² + ‖j⁰‖²)/B` in gusye1234/LightGCN-PyTorch, `l2_loss(..)/B` in
//! kuandeng/LightGCN), which we follow so that λ means what it means there. RecBole's
//! `EmbLoss(require_pow=False)` takes the Frobenius norm of each gathered `B x d` batch matrix
//! (unsquared), sums the three and divides by `B`. RecBole adds `1e-7` to every degree before
//! `D^{-1/2}`; the difference is below f32 resolution for any node with an edge.
//!
//! Like RecBole, training propagates the graph for every mini-batch (the loss needs final
//! embeddings, which depend on every neighbour `L` hops away); Adam is the dense, torch-exact
//! Adam shared with [BPR](crate::bpr). Scoring propagates once and caches the final embeddings
//! (refreshed after every epoch and on load).
//!
//! **Scale.** Two exact savings make a step cost `2(L−1) + 2·(cheap)` full sparse products
//! instead of `2L` (half, for `L = 2`), with results equal to the plain forward/backward (same
//! sums in the same order; tested): the last forward layer is evaluated only at the batch's
//! rows ([`NormAdj::propagate_rows`]), and the first backward step `g + Âg` skips the rows where
//! `∂F` is zero, which is all but the batch's ([`NormAdj::propagate_backward_sparse`]). At
//! Music4All-Onion scale (100M stored entries) a full product takes over 3 s on two cores, so
//! a step takes about 7 s and an epoch of 24k batches about two days (the example
//! `baselines_scale` measures steps and extrapolates). `sparse_adam = true` (default
//! off) applies the lazy Adam of BPR-MF's module docs to the rows with a non-zero gradient;
//! with `L ≥ 1` that is the batch's `L`-hop neighbourhood, nearly every row on a dense graph,
//! so it saves nothing measurable there (docs/PERFORMANCE.md).
//!
//! **Fold-in.** A user the model never trained on is scored by the mean of the final
//! embeddings of their history's items: `p = mean_{i ∈ h} F_i`, `s_j = p · F_j`. In
//! [`Recommender::score_users`], users whose training row was empty when the model was built
//! are folded in from their `input` row.

use std::collections::BTreeMap;
use std::path::Path;

use encore_data::InteractionMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bpr::check_shape;
use crate::embedding::{
    axpy, check_history, dot, fold_in_vector, init_table, score_factorised, EmbeddingInit,
};
use crate::triples::{batch_rows, for_each_triple_batch, sigmoid, softplus};
use encore_core::config::RunConfig;
use encore_core::config::{
    check_nonnegative_finite, check_positive_finite, check_range, ModelConfig, Preset,
};
use encore_core::registry::{FitInput, ModelEntry, TrainedModel};
use encore_core::{
    Adam, EpochContext, ItemRepresentation, ItemVectors, ModelError, Recommender, Trainable,
};

// ---------------------------------------------------------------------------------------------
// The normalised adjacency and its product
// ---------------------------------------------------------------------------------------------

/// `Â = D^{-1/2} A D^{-1/2}` of the user-item bipartite graph, CSR over `n_users + n_items`
/// nodes (users first, then items at `n_users + i`). Symmetric by construction.
#[derive(Debug, Clone, PartialEq)]
pub struct NormAdj {
    n_nodes: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f32>,
}

/// Neighbours whose embedding rows are prefetched ahead of their use in [`gather_axpy`].
const PREFETCH_AHEAD: usize = 8;

/// `o += Σ_k w_k · x[c_k]` over one CSR row (`cols`, `weights`), in CSR order (so the sum is
/// the same whatever the thread count), with the embedding row `PREFETCH_AHEAD` neighbours
/// ahead prefetched into L1: the gathers are random, so without it each row waits for a
/// cache miss; with it the misses overlap. The arithmetic and its order are unchanged.
#[inline]
fn gather_axpy(cols: &[u32], weights: &[f32], x: &[f32], d: usize, o: &mut [f32]) {
    for (k, (&c, &w)) in cols.iter().zip(weights).enumerate() {
        if let Some(&ahead) = cols.get(k + PREFETCH_AHEAD) {
            prefetch_row(x, ahead as usize * d, d);
        }
        let c = c as usize;
        axpy(w, &x[c * d..(c + 1) * d], o);
    }
}

/// Hint the CPU to fetch `x[start..start + d]` (a hint only: no effect on results; a no-op on
/// targets without a prefetch instruction). Written by hand because no crate offers a
/// portable prefetch hint for slices.
#[inline(always)]
fn prefetch_row(x: &[f32], start: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        if start + d <= x.len() {
            let p = x[start..start + d].as_ptr() as *const i8;
            let mut off = 0;
            while off < d * 4 {
                // SAFETY: prefetching is a hint that never faults; `p + off` lies inside the
                // row (checked above), SSE is part of the x86_64 baseline.
                #[allow(unused_unsafe)]
                unsafe {
                    _mm_prefetch(p.wrapping_add(off), _MM_HINT_T0)
                };
                off += 64;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, start, d);
}

impl NormAdj {
    /// Build from a user x item matrix. Isolated nodes get empty rows.
    pub fn from_interactions(train: &InteractionMatrix) -> Self {
        let (nu, ni) = (train.n_users(), train.n_items());
        let n_nodes = nu + ni;
        assert!(
            n_nodes <= u32::MAX as usize,
            "graph of {n_nodes} nodes exceeds u32 node indices"
        );
        let items = train.transpose();
        let inv_sqrt_deg: Vec<f64> = (0..nu)
            .map(|u| train.row_len(u))
            .chain((0..ni).map(|i| items.row_len(i)))
            .map(|d| if d == 0 { 0.0 } else { 1.0 / (d as f64).sqrt() })
            .collect();
        let mut indptr = Vec::with_capacity(n_nodes + 1);
        indptr.push(0usize);
        let mut indices = Vec::with_capacity(2 * train.nnz());
        let mut values = Vec::with_capacity(2 * train.nnz());
        for u in 0..nu {
            for &i in train.row(u) {
                let c = nu + i as usize;
                indices.push(c as u32);
                values.push((inv_sqrt_deg[u] * inv_sqrt_deg[c]) as f32);
            }
            indptr.push(indices.len());
        }
        for i in 0..ni {
            let r = nu + i;
            for &u in items.row(i) {
                indices.push(u);
                values.push((inv_sqrt_deg[r] * inv_sqrt_deg[u as usize]) as f32);
            }
            indptr.push(indices.len());
        }
        Self {
            n_nodes,
            indptr,
            indices,
            values,
        }
    }

    /// Build from raw CSR arrays (benchmarks and tests); no validation beyond lengths.
    pub fn from_raw(
        n_nodes: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        values: Vec<f32>,
    ) -> Self {
        assert_eq!(indptr.len(), n_nodes + 1);
        assert_eq!(indices.len(), values.len());
        Self {
            n_nodes,
            indptr,
            indices,
            values,
        }
    }

    /// Number of nodes (users + items).
    pub fn n_nodes(&self) -> usize {
        self.n_nodes
    }

    /// Number of stored entries (twice the number of interactions).
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// `out = Â x` for a row-major `n_nodes x d` matrix `x`. Parallel over output rows; each
    /// row sums its neighbours in CSR order, so the result is independent of thread count.
    /// Since `Â` is symmetric this is also the backward (transposed) product.
    pub fn spmm(&self, x: &[f32], d: usize, out: &mut [f32]) {
        assert_eq!(x.len(), self.n_nodes * d);
        assert_eq!(out.len(), self.n_nodes * d);
        out.par_chunks_mut(d)
            .enumerate()
            .with_min_len(64)
            .for_each(|(r, o)| {
                o.fill(0.0);
                let (a, b) = (self.indptr[r], self.indptr[r + 1]);
                gather_axpy(&self.indices[a..b], &self.values[a..b], x, d, o);
            });
    }

    /// `out = g + Â t` (one Horner step of the backward pass), fused.
    fn spmm_add(&self, t: &[f32], g: &[f32], d: usize, out: &mut [f32]) {
        out.par_chunks_mut(d)
            .enumerate()
            .with_min_len(64)
            .for_each(|(r, o)| {
                o.copy_from_slice(&g[r * d..(r + 1) * d]);
                let (a, b) = (self.indptr[r], self.indptr[r + 1]);
                gather_axpy(&self.indices[a..b], &self.values[a..b], t, d, o);
            });
    }

    /// `out = g + Â g` where `g` is zero outside the rows flagged in `support`: the same
    /// per-row sums as [`NormAdj::spmm`] in the same order, skipping the zero rows, so the
    /// result equals the dense product (up to the sign of zeros) while reading only the
    /// column indices of the rows that have no supported neighbour (no 4d-byte gathers).
    fn spmm_add_sparse(&self, g: &[f32], support: &[bool], d: usize, out: &mut [f32]) {
        out.par_chunks_mut(d)
            .enumerate()
            .with_min_len(64)
            .for_each(|(r, o)| {
                o.copy_from_slice(&g[r * d..(r + 1) * d]);
                let (a, b) = (self.indptr[r], self.indptr[r + 1]);
                for (&c, &w) in self.indices[a..b].iter().zip(&self.values[a..b]) {
                    let c = c as usize;
                    if support[c] {
                        axpy(w, &g[c * d..(c + 1) * d], o);
                    }
                }
            });
    }

    /// `(Â x)` at the listed rows only, row `k` of `out` (`rows.len() x d`) for `rows[k]`.
    fn spmm_rows(&self, x: &[f32], d: usize, rows: &[u32], out: &mut [f32]) {
        out.par_chunks_mut(d)
            .zip(rows.par_iter())
            .with_min_len(16)
            .for_each(|(o, &r)| {
                o.fill(0.0);
                let r = r as usize;
                let (a, b) = (self.indptr[r], self.indptr[r + 1]);
                gather_axpy(&self.indices[a..b], &self.values[a..b], x, d, o);
            });
    }

    /// Final embeddings `F = (1/(L+1)) Σ_{l=0..L} Âˡ E⁽⁰⁾` into `out`, using `scratch`
    /// (two `n_nodes x d` buffers) for the layers.
    pub fn propagate(
        &self,
        e0: &[f32],
        d: usize,
        n_layers: usize,
        scratch: &mut [Vec<f32>; 2],
        out: &mut [f32],
    ) {
        out.copy_from_slice(e0);
        let [a, b] = scratch;
        let (mut a, mut b) = (a, b);
        a.resize(e0.len(), 0.0);
        b.resize(e0.len(), 0.0);
        for l in 0..n_layers {
            // a holds layer l (l >= 1); b receives layer l + 1.
            if l == 0 {
                self.spmm(e0, d, b);
            } else {
                self.spmm(a, d, b);
            }
            std::mem::swap(&mut a, &mut b);
            out.par_chunks_mut(1 << 14)
                .zip(a.par_chunks(1 << 14))
                .for_each(|(o, c)| o.iter_mut().zip(c).for_each(|(o, c)| *o += c));
        }
        let w = 1.0 / (n_layers + 1) as f32;
        out.par_chunks_mut(1 << 14)
            .for_each(|o| o.iter_mut().for_each(|x| *x *= w));
    }

    /// [`NormAdj::propagate`] evaluated at the listed rows only (sorted or not, unique):
    /// `out`'s rows in `rows` receive exactly what `propagate` would write there (the same
    /// sums in the same order), other rows are left untouched. Layers `1..L−1` are still
    /// full products (a row's layer `L` needs its whole `L−1`-hop neighbourhood), the last
    /// layer is computed at the listed rows only: one full product fewer than `propagate`.
    #[allow(clippy::too_many_arguments)] // buffers are the caller's, reused across steps
    pub fn propagate_rows(
        &self,
        e0: &[f32],
        d: usize,
        n_layers: usize,
        rows: &[u32],
        scratch: &mut [Vec<f32>; 2],
        last: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let row = |r: u32| r as usize * d..(r as usize + 1) * d;
        for &r in rows {
            out[row(r)].copy_from_slice(&e0[row(r)]);
        }
        let [a, b] = scratch;
        let (mut a, mut b) = (a, b);
        a.resize(e0.len(), 0.0);
        b.resize(e0.len(), 0.0);
        for l in 0..n_layers.saturating_sub(1) {
            if l == 0 {
                self.spmm(e0, d, b);
            } else {
                self.spmm(a, d, b);
            }
            std::mem::swap(&mut a, &mut b);
            for &r in rows {
                axpy(1.0, &a[row(r)], &mut out[row(r)]);
            }
        }
        if n_layers >= 1 {
            let prev: &[f32] = if n_layers == 1 { e0 } else { a };
            last.resize(rows.len() * d, 0.0);
            self.spmm_rows(prev, d, rows, last);
            for (&r, l) in rows.iter().zip(last.chunks(d)) {
                axpy(1.0, l, &mut out[row(r)]);
            }
        }
        let w = 1.0 / (n_layers + 1) as f32;
        for &r in rows {
            out[row(r)].iter_mut().for_each(|x| *x *= w);
        }
    }

    /// [`NormAdj::propagate_backward`] for a `g` that is zero outside the rows flagged in
    /// `support`: the first Horner step `g + Â g` skips the zero rows
    /// (`spmm_add_sparse`), the others are full products. Equal to the dense
    /// backward up to the sign of zeros (tested), one full product cheaper.
    pub fn propagate_backward_sparse(
        &self,
        g: &[f32],
        support: &[bool],
        d: usize,
        n_layers: usize,
        scratch: &mut [Vec<f32>; 2],
        out: &mut [f32],
    ) {
        assert_eq!(support.len(), self.n_nodes);
        let [a, b] = scratch;
        let (mut a, mut b) = (a, b);
        a.resize(g.len(), 0.0);
        b.resize(g.len(), 0.0);
        for l in 0..n_layers {
            if l == 0 {
                self.spmm_add_sparse(g, support, d, b);
            } else {
                self.spmm_add(a, g, d, b);
            }
            std::mem::swap(&mut a, &mut b);
        }
        let t: &[f32] = if n_layers == 0 { g } else { a };
        let w = 1.0 / (n_layers + 1) as f32;
        out.par_chunks_mut(1 << 14)
            .zip(t.par_chunks(1 << 14))
            .for_each(|(o, t)| o.iter_mut().zip(t).for_each(|(o, t)| *o = w * t));
    }

    /// The backward of [`NormAdj::propagate`]: given `∂F` (`g`), the gradient with respect to
    /// `E⁽⁰⁾`, `(1/(L+1)) Σ_l (Âᵀ)ˡ g`, written into `out` (`scratch` as in `propagate`).
    pub fn propagate_backward(
        &self,
        g: &[f32],
        d: usize,
        n_layers: usize,
        scratch: &mut [Vec<f32>; 2],
        out: &mut [f32],
    ) {
        let [a, b] = scratch;
        let (mut a, mut b) = (a, b);
        a.resize(g.len(), 0.0);
        b.resize(g.len(), 0.0);
        // Horner: t_0 = g, t_{k+1} = g + Â t_k; after L steps t = Σ_l Âˡ g.
        for l in 0..n_layers {
            if l == 0 {
                self.spmm_add(g, g, d, b);
            } else {
                self.spmm_add(a, g, d, b);
            }
            std::mem::swap(&mut a, &mut b);
        }
        let t: &[f32] = if n_layers == 0 { g } else { a };
        let w = 1.0 / (n_layers + 1) as f32;
        out.par_chunks_mut(1 << 14)
            .zip(t.par_chunks(1 << 14))
            .for_each(|(o, t)| o.iter_mut().zip(t).for_each(|(o, t)| *o = w * t));
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The form of LightGCN's L2 term (module docs give both formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegNorm {
    /// `λ · ½ Σ ‖e‖² / B` over the batch's layer-0 rows (official LightGCN code).
    Squared,
    /// `λ · (‖E_u‖_F + ‖E_i‖_F + ‖E_j‖_F) / B` (RecBole's `EmbLoss`, unsquared).
    Frobenius,
}

/// LightGCN hyperparameters ([`LightGcnConfig::preset`], [`crate::config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LightGcnConfig {
    /// The preset the unspecified keys came from.
    pub preset: Preset,
    /// Latent size `d` (default 64).
    pub embedding_size: usize,
    /// Propagation layers `L` (default 2).
    pub n_layers: usize,
    /// Adam learning rate (default 1e-3).
    pub lr: f64,
    /// Triples per Adam step (default 2048).
    pub batch_size: usize,
    /// λ (original 1e-4, recbole 1e-5).
    pub reg_weight: f64,
    /// Form of the L2 term (original `squared`, recbole `frobenius`).
    pub reg_norm: RegNorm,
    /// Layer-0 initialisation (original `normal` with std 0.1, recbole `xavier_uniform`).
    pub init: EmbeddingInit,
    /// Standard deviation for `init = "normal"` (default 0.1).
    pub init_std: f64,
    /// Resample a negative while the user has it (default true).
    pub check_negatives: bool,
    /// Lazy ("sparse") Adam over the rows with a non-zero gradient (default false,
    /// torch-exact dense Adam). See the module docs ("Scale").
    #[serde(default)]
    pub sparse_adam: bool,
}

impl Default for LightGcnConfig {
    fn default() -> Self {
        Self::preset(Preset::Original)
    }
}

impl LightGcnConfig {
    /// The defaults of a preset.
    pub fn preset(preset: Preset) -> Self {
        let (reg_weight, reg_norm, init) = match preset {
            Preset::Original => (1e-4, RegNorm::Squared, EmbeddingInit::Normal),
            Preset::Recbole => (1e-5, RegNorm::Frobenius, EmbeddingInit::XavierUniform),
        };
        Self {
            preset,
            embedding_size: 64,
            n_layers: 2,
            lr: 1e-3,
            batch_size: 2048,
            reg_weight,
            reg_norm,
            init,
            init_std: 0.1,
            check_negatives: true,
            sparse_adam: false,
        }
    }

    /// Parse a TOML config (`configs/lightgcn.toml`) through [`crate::config::resolve_table`]: keys not
    /// given take the preset's value, unknown keys are an error naming the key, the result is
    /// checked.
    pub fn from_toml_str(text: &str) -> Result<Self, ModelError> {
        crate::bpr::parse_model_config(text)
    }

    /// Validate every value, naming the first bad key and its allowed range.
    pub fn check(&self) -> Result<(), ModelError> {
        check_range("embedding_size", self.embedding_size as f64, 1.0, 4096.0)?;
        check_range("n_layers", self.n_layers as f64, 0.0, 16.0)?;
        check_positive_finite("lr", self.lr)?;
        check_range("batch_size", self.batch_size as f64, 1.0, 1e8)?;
        check_nonnegative_finite("reg_weight", self.reg_weight)?;
        check_positive_finite("init_std", self.init_std)?;
        Ok(())
    }
}

impl ModelConfig for LightGcnConfig {
    const MODEL: &'static str = "lightgcn";

    fn preset(preset: Preset) -> Self {
        LightGcnConfig::preset(preset)
    }

    fn check(&self) -> Result<(), ModelError> {
        LightGcnConfig::check(self)
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LightGcnMeta {
    config: LightGcnConfig,
    n_users: usize,
    n_items: usize,
    untrained_users: Vec<u32>,
}

/// Work buffers reused across steps (`n_nodes x d` each), not part of the model's state.
#[derive(Debug, Clone, Default)]
struct Workspace {
    layers: [Vec<f32>; 2],
    fin: Vec<f32>,
    gfin: Vec<f32>,
    /// The batch's rows of the last layer (`rows x d`).
    last: Vec<f32>,
    /// `n_nodes` flags: the batch's rows (all false between batches).
    support: Vec<bool>,
}

/// A LightGCN model.
#[derive(Debug, Clone)]
pub struct LightGcn {
    config: LightGcnConfig,
    n_users: usize,
    n_items: usize,
    /// The graph; `None` for a model loaded for scoring only (rebuilt from the first
    /// training matrix it sees).
    adj: Option<NormAdj>,
    /// Layer-0 embeddings `[users | items] x d`.
    params: Vec<f32>,
    grad: Vec<f32>,
    adam: Adam,
    trained: Vec<bool>,
    /// Cached final embeddings `[users | items] x d` for scoring.
    final_emb: Vec<f32>,
    work: Workspace,
}

impl LightGcn {
    /// A fresh model for `train`, initialised from `seed`.
    pub fn new(
        config: &LightGcnConfig,
        train: &InteractionMatrix,
        seed: u64,
    ) -> Result<Self, ModelError> {
        config.check()?;
        if train.n_items() < 2 {
            return Err(ModelError::Input(format!(
                "LightGCN needs at least 2 items to sample negatives, the catalogue has {}",
                train.n_items()
            )));
        }
        let d = config.embedding_size;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = init_table(&mut rng, train.n_users(), d, config.init, config.init_std);
        params.extend(init_table(
            &mut rng,
            train.n_items(),
            d,
            config.init,
            config.init_std,
        ));
        let n = params.len();
        let mut model = Self {
            config: config.clone(),
            n_users: train.n_users(),
            n_items: train.n_items(),
            adj: Some(NormAdj::from_interactions(train)),
            grad: vec![0.0; n],
            adam: Adam::new(n, config.lr),
            params,
            trained: (0..train.n_users()).map(|u| train.row_len(u) > 0).collect(),
            final_emb: vec![0.0; n],
            work: Workspace::default(),
        };
        model.refresh_final();
        Ok(model)
    }

    /// Load a model written by [`Recommender::save`] or [`Trainable::save_state`]. The final
    /// embeddings are read from the file, so scoring needs no graph.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let meta_path = dir.join("lightgcn.json");
        let meta: LightGcnMeta = encore_io::read_json(&meta_path)?;
        meta.config.check()?;
        let d = meta.config.embedding_size;
        let path = dir.join("lightgcn.safetensors");
        let mut t = encore_io::read_f32_tensors(&path)?;
        let (nu, ni) = (meta.n_users, meta.n_items);
        let mut params = t.take("user_embedding", &[nu, d])?;
        params.extend(t.take("item_embedding", &[ni, d])?);
        let mut final_emb = t.take("user_final", &[nu, d])?;
        final_emb.extend(t.take("item_final", &[ni, d])?);
        let mut trained = vec![true; nu];
        for &u in &meta.untrained_users {
            let slot = trained.get_mut(u as usize).ok_or_else(|| {
                ModelError::format(&meta_path, format!("untrained user {u} >= n_users"))
            })?;
            *slot = false;
        }
        let n = params.len();
        Ok(Self {
            adam: Adam::new(n, meta.config.lr),
            config: meta.config,
            n_users: nu,
            n_items: ni,
            adj: None,
            grad: vec![0.0; n],
            params,
            trained,
            final_emb,
            work: Workspace::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LightGcnConfig {
        &self.config
    }

    /// Layer-0 embeddings, `(n_users + n_items) x d`.
    pub fn layer0(&self) -> &[f32] {
        &self.params
    }

    /// Cached final embeddings, `(n_users + n_items) x d` (users first).
    pub fn final_embedding(&self) -> &[f32] {
        &self.final_emb
    }

    fn refresh_final(&mut self) {
        let Some(adj) = &self.adj else { return };
        adj.propagate(
            &self.params,
            self.config.embedding_size,
            self.config.n_layers,
            &mut self.work.layers,
            &mut self.final_emb,
        );
    }

    /// Forward, loss and backward of one batch; the gradient of the layer-0 embeddings is
    /// written into `self.grad`. Returns (mean BPR term, regulariser).
    fn batch_loss_grad(&mut self, batch: &[(u32, u32, u32)]) -> (f64, f64) {
        let d = self.config.embedding_size;
        let nl = self.config.n_layers;
        let n = self.params.len();
        let adj = self.adj.as_ref().expect("graph is built before training");
        let work = &mut self.work;
        work.fin.resize(n, 0.0);
        work.gfin.resize(n, 0.0);
        work.support.resize(adj.n_nodes(), false);
        // The loss reads final embeddings of the batch's rows only (`fin` is stale elsewhere).
        let rows = batch_rows(batch, self.n_users);
        adj.propagate_rows(
            &self.params,
            d,
            nl,
            &rows,
            &mut work.layers,
            &mut work.last,
            &mut work.fin,
        );
        let nu = self.n_users;
        let row = |node: usize| node * d..(node + 1) * d;
        let fin = &work.fin;
        let coef: Vec<(f32, f32)> = batch
            .par_iter()
            .with_min_len(256)
            .map(|&(u, i, j)| {
                let p = &fin[row(u as usize)];
                let x = dot(p, &fin[row(nu + i as usize)]) - dot(p, &fin[row(nu + j as usize)]);
                (x, -sigmoid(-x))
            })
            .collect();
        let b = batch.len() as f32;
        let mut bpr = 0.0f64;
        let gfin = &mut work.gfin;
        for (&(u, i, j), &(x, dx)) in batch.iter().zip(&coef) {
            bpr += softplus(-x) as f64;
            let (u, i, j) = (u as usize, nu + i as usize, nu + j as usize);
            let w = dx / b;
            for k in 0..d {
                gfin[u * d + k] += w * (fin[i * d + k] - fin[j * d + k]);
            }
            for k in 0..d {
                let pk = fin[u * d + k];
                gfin[i * d + k] += w * pk;
                gfin[j * d + k] -= w * pk;
            }
        }
        for &r in &rows {
            work.support[r as usize] = true;
        }
        adj.propagate_backward_sparse(
            &work.gfin,
            &work.support,
            d,
            nl,
            &mut work.layers,
            &mut self.grad,
        );
        // Reset the sparse gradient of the final embeddings and the flags for the next batch.
        for &r in &rows {
            work.gfin[row(r as usize)].fill(0.0);
            work.support[r as usize] = false;
        }
        // L2 on the batch's layer-0 rows (with repeats, as a gather would have them).
        let lambda = self.config.reg_weight as f32;
        let mut reg = 0.0f64;
        if lambda > 0.0 {
            let params = &self.params;
            let grad = &mut self.grad;
            match self.config.reg_norm {
                RegNorm::Squared => {
                    for &(u, i, j) in batch {
                        for node in [u as usize, nu + i as usize, nu + j as usize] {
                            let e = &params[row(node)];
                            reg += dot(e, e) as f64;
                            axpy(lambda / b, e, &mut grad[row(node)]);
                        }
                    }
                    reg *= 0.5 * self.config.reg_weight / batch.len() as f64;
                }
                RegNorm::Frobenius => {
                    // The three gathered batch matrices: users, positives, negatives.
                    let node_of = |col: usize, t: &(u32, u32, u32)| match col {
                        0 => t.0 as usize,
                        1 => nu + t.1 as usize,
                        _ => nu + t.2 as usize,
                    };
                    for col in 0..3 {
                        let sq: f64 = batch
                            .iter()
                            .map(|t| {
                                let e = &params[row(node_of(col, t))];
                                dot(e, e) as f64
                            })
                            .sum();
                        let norm = sq.sqrt();
                        reg += norm;
                        if norm > 0.0 {
                            let w = (self.config.reg_weight / (batch.len() as f64 * norm)) as f32;
                            for t in batch {
                                let node = node_of(col, t);
                                axpy(w, &params[row(node)], &mut grad[row(node)]);
                            }
                        }
                    }
                    reg *= self.config.reg_weight / batch.len() as f64;
                }
            }
        }
        (bpr / batch.len() as f64, reg)
    }

    fn write_weights(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let d = self.config.embedding_size;
        let split = self.n_users * d;
        let (nu, ni) = (self.n_users, self.n_items);
        encore_io::write_f32_tensors(
            &dir.join("lightgcn.safetensors"),
            &[
                ("user_embedding", vec![nu, d], &self.params[..split]),
                ("item_embedding", vec![ni, d], &self.params[split..]),
                ("user_final", vec![nu, d], &self.final_emb[..split]),
                ("item_final", vec![ni, d], &self.final_emb[split..]),
            ],
            None,
        )?;
        Ok(encore_io::write_json(
            &dir.join("lightgcn.json"),
            &LightGcnMeta {
                config: self.config.clone(),
                n_users: nu,
                n_items: ni,
                untrained_users: (0..nu as u32)
                    .filter(|&u| !self.trained[u as usize])
                    .collect(),
            },
        )?)
    }
}

impl Recommender for LightGcn {
    fn name(&self) -> &'static str {
        "lightgcn"
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_users(&self, users: &[u32], input: &InteractionMatrix, out: &mut [f32]) {
        let split = self.n_users * self.config.embedding_size;
        score_factorised(
            users,
            input,
            &self.final_emb[..split],
            &self.trained,
            &self.final_emb[split..],
            self.config.embedding_size,
            out,
        );
    }

    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
        check_history(history, self.n_items)?;
        let d = self.config.embedding_size;
        let items = &self.final_emb[self.n_users * d..];
        let mut p = vec![0.0; d];
        fold_in_vector(items, d, history, &mut p);
        out.par_iter_mut()
            .enumerate()
            .for_each(|(j, s)| *s = dot(&p, &items[j * d..(j + 1) * d]));
        Ok(())
    }

    fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        let d = self.config.embedding_size;
        Some(ItemRepresentation {
            source: "final (propagated) item embeddings, cosine",
            vectors: ItemVectors::Rows {
                values: &self.final_emb[self.n_users * d..],
                dim: d,
            },
        })
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.write_weights(dir)
    }
}

impl LightGcn {
    /// The first `max_batches` batches of an epoch, without the end-of-epoch refresh of the
    /// cached final embeddings; used to time steps at a scale where an epoch takes days (the
    /// `baselines_scale` example).
    pub fn train_batches(
        &mut self,
        ctx: EpochContext<'_>,
        max_batches: usize,
    ) -> Result<BTreeMap<String, f64>, ModelError> {
        check_shape(ctx.train, self.n_users, self.n_items)?;
        if self
            .adj
            .as_ref()
            .is_none_or(|a| a.nnz() != 2 * ctx.train.nnz())
        {
            self.adj = Some(NormAdj::from_interactions(ctx.train));
        }
        let (mut bpr_sum, mut reg_sum, mut batches) = (0.0, 0.0, 0usize);
        let batch_size = self.config.batch_size;
        let check = self.config.check_negatives;
        let progress = ctx.progress;
        for_each_triple_batch(
            ctx.train,
            ctx.rng,
            batch_size,
            check,
            max_batches,
            |batch| {
                let (bpr, reg) = self.batch_loss_grad(batch);
                if self.config.sparse_adam {
                    let d = self.config.embedding_size;
                    let rows: Vec<u32> = self
                        .grad
                        .par_chunks(d)
                        .enumerate()
                        .filter(|(_, g)| g.iter().any(|&x| x != 0.0))
                        .map(|(r, _)| r as u32)
                        .collect();
                    self.adam
                        .step_rows(&mut self.params, &mut self.grad, d, &rows);
                } else {
                    self.adam.step(&mut self.params, &mut self.grad);
                }
                bpr_sum += bpr;
                reg_sum += reg;
                batches += 1;
                progress(batch.len() as u64);
                Ok(())
            },
        )?;
        let n = batches.max(1) as f64;
        Ok(BTreeMap::from([
            ("loss".to_string(), (bpr_sum + reg_sum) / n),
            ("bpr".to_string(), bpr_sum / n),
            ("reg".to_string(), reg_sum / n),
        ]))
    }
}

impl Trainable for LightGcn {
    fn train_epoch(&mut self, ctx: EpochContext<'_>) -> Result<BTreeMap<String, f64>, ModelError> {
        let losses = self.train_batches(ctx, usize::MAX)?;
        self.refresh_final();
        Ok(losses)
    }

    fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
        self.write_weights(dir)?;
        self.adam.save(dir)
    }

    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
        let loaded = LightGcn::load(dir)?;
        if loaded.n_users != self.n_users
            || loaded.n_items != self.n_items
            || loaded.config.embedding_size != self.config.embedding_size
        {
            return Err(ModelError::format(
                dir.join("lightgcn.json"),
                format!(
                    "checkpoint is {} users x {} items x d={}, the model is {} x {} x d={}",
                    loaded.n_users,
                    loaded.n_items,
                    loaded.config.embedding_size,
                    self.n_users,
                    self.n_items,
                    self.config.embedding_size
                ),
            ));
        }
        let mut adam = Adam::new(loaded.params.len(), loaded.config.lr);
        adam.load(dir)?;
        let adj = self.adj.take();
        *self = Self {
            adam,
            adj,
            ..loaded
        };
        self.refresh_final();
        Ok(())
    }
}

/// LightGcn's registry entry.
pub fn entry() -> ModelEntry {
    ModelEntry::trained::<LightGcn>(
        "LightGCN (He et al. 2020): graph propagation of embeddings, BPR loss",
    )
}

impl TrainedModel for LightGcn {
    type Config = LightGcnConfig;
    fn init(c: &RunConfig<LightGcnConfig>, input: &FitInput<'_>) -> Result<Self, ModelError> {
        LightGcn::new(&c.model, input.train, c.train.seed)
    }
    fn load(dir: &Path) -> Result<Self, ModelError> {
        LightGcn::load(dir)
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index-heavy reference code reads clearer
mod tests {
    use super::*;
    use crate::bpr::tests::{random_matrix, run_epochs};
    use rand::Rng;

    /// The dense `Â` of a matrix, straight from the definition.
    fn dense_adj(train: &InteractionMatrix) -> Vec<Vec<f64>> {
        let (nu, ni) = (train.n_users(), train.n_items());
        let n = nu + ni;
        let mut a = vec![vec![0.0; n]; n];
        for u in 0..nu {
            for &i in train.row(u) {
                a[u][nu + i as usize] = 1.0;
                a[nu + i as usize][u] = 1.0;
            }
        }
        let deg: Vec<f64> = a.iter().map(|r| r.iter().sum()).collect();
        for r in 0..n {
            for c in 0..n {
                if a[r][c] != 0.0 {
                    a[r][c] /= (deg[r] * deg[c]).sqrt();
                }
            }
        }
        a
    }

    fn dense_mul(a: &[Vec<f64>], x: &[f64], d: usize) -> Vec<f64> {
        let n = a.len();
        let mut out = vec![0.0; n * d];
        for r in 0..n {
            for c in 0..n {
                for k in 0..d {
                    out[r * d + k] += a[r][c] * x[c * d + k];
                }
            }
        }
        out
    }

    #[test]
    fn propagation_and_its_backward_match_a_dense_reference() {
        // 3 users, 4 items, one isolated item (3) and one isolated user (2).
        let train = InteractionMatrix::from_rows(4, &[vec![0, 1, 2], vec![1], vec![]]);
        let adj = NormAdj::from_interactions(&train);
        let dense = dense_adj(&train);
        // Hand-computed entries: deg(u0) = 3, deg(i1) = 2 -> 1/sqrt(6); deg(u1) = 1 -> 1/sqrt(2).
        assert!((dense[0][3 + 1] - 1.0 / 6f64.sqrt()).abs() < 1e-12);
        assert!((dense[1][3 + 1] - 1.0 / 2f64.sqrt()).abs() < 1e-12);
        let d = 3;
        let n = adj.n_nodes();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        // One product.
        let mut y = vec![0.0; n * d];
        adj.spmm(&x, d, &mut y);
        let yd = dense_mul(&dense, &xd, d);
        for k in 0..n * d {
            assert!((y[k] as f64 - yd[k]).abs() < 1e-6);
        }
        // Full propagation with L = 2: (X + ÂX + Â²X) / 3.
        let mut scratch = Default::default();
        let mut fin = vec![0.0; n * d];
        adj.propagate(&x, d, 2, &mut scratch, &mut fin);
        let a2 = dense_mul(&dense, &yd, d);
        for k in 0..n * d {
            let expect = (xd[k] + yd[k] + a2[k]) / 3.0;
            assert!((fin[k] as f64 - expect).abs() < 1e-6);
        }
        // Backward: gradient of <W, F(X)> with respect to X is (W + ÂᵀW + (Âᵀ)²W) / 3.
        let w: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let mut transposed = dense.clone();
        for r in 0..n {
            for c in 0..n {
                transposed[r][c] = dense[c][r];
            }
        }
        let t1 = dense_mul(&transposed, &wd, d);
        let t2 = dense_mul(&transposed, &t1, d);
        let mut g = vec![0.0; n * d];
        adj.propagate_backward(&w, d, 2, &mut scratch, &mut g);
        for k in 0..n * d {
            let expect = (wd[k] + t1[k] + t2[k]) / 3.0;
            assert!(
                (g[k] as f64 - expect).abs() < 1e-6,
                "{k}: {} vs {expect}",
                g[k]
            );
        }
    }

    #[test]
    fn row_restricted_and_sparse_products_equal_the_full_ones() {
        let train = random_matrix(30, 25, 4, 5);
        let adj = NormAdj::from_interactions(&train);
        let (n, d) = (adj.n_nodes(), 5);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let rows: Vec<u32> = vec![0, 3, 17, 30, 41, 54];
        let mut support = vec![false; n];
        let mut g = vec![0.0f32; n * d];
        for &r in &rows {
            support[r as usize] = true;
            for k in 0..d {
                g[r as usize * d + k] = rng.random_range(-1.0..1.0);
            }
        }
        for layers in 0..4 {
            let mut scratch = Default::default();
            let mut full = vec![0.0; n * d];
            adj.propagate(&x, d, layers, &mut scratch, &mut full);
            let mut part = vec![f32::NAN; n * d];
            let mut last = Vec::new();
            adj.propagate_rows(&x, d, layers, &rows, &mut scratch, &mut last, &mut part);
            for r in 0..n {
                let got = &part[r * d..(r + 1) * d];
                if support[r] {
                    assert_eq!(got, &full[r * d..(r + 1) * d], "L = {layers}, row {r}");
                } else {
                    assert!(got.iter().all(|v| v.is_nan()), "row {r} left untouched");
                }
            }
            let (mut dense, mut sparse) = (vec![0.0; n * d], vec![1.0; n * d]);
            adj.propagate_backward(&g, d, layers, &mut scratch, &mut dense);
            adj.propagate_backward_sparse(&g, &support, d, layers, &mut scratch, &mut sparse);
            assert_eq!(dense, sparse, "L = {layers}");
        }
    }

    #[test]
    fn sparse_adam_trains_deterministically() {
        let train = random_matrix(50, 40, 6, 13);
        let cfg = LightGcnConfig {
            batch_size: 32,
            lr: 0.01,
            sparse_adam: true,
            ..LightGcnConfig::preset(Preset::Recbole)
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = LightGcn::new(&cfg, &train, 1).unwrap();
                let losses = run_epochs(&mut m, &train, 4, 2);
                (m, losses)
            })
        };
        let (a, la) = run(1);
        let (b, lb) = run(2);
        assert_eq!(la, lb);
        assert_eq!(a.params, b.params);
        assert!(la[3] < la[0], "loss goes down: {la:?}");
        assert!(
            LightGcnConfig::from_toml_str("sparse_adam = true")
                .unwrap()
                .sparse_adam
        );
    }

    fn total_loss(model: &mut LightGcn, batch: &[(u32, u32, u32)]) -> f64 {
        let (a, b) = model.batch_loss_grad(batch);
        model.grad.fill(0.0);
        a + b
    }

    fn check_gradient(cfg: &LightGcnConfig) {
        let train = random_matrix(4, 5, 3, 7);
        let mut model = LightGcn::new(cfg, &train, 2).unwrap();
        let batch = [(0, 1, 2), (0, 3, 1), (2, 4, 0), (3, 1, 2)];
        model.batch_loss_grad(&batch);
        let analytic = std::mem::replace(&mut model.grad, vec![0.0; model.params.len()]);
        let h = 1e-2f32;
        for k in 0..model.params.len() {
            let x = model.params[k];
            model.params[k] = x + h;
            let up = total_loss(&mut model, &batch);
            model.params[k] = x - h;
            let down = total_loss(&mut model, &batch);
            model.params[k] = x;
            let numeric = (up - down) / (2.0 * h as f64);
            assert!(
                (numeric - analytic[k] as f64).abs() < 3e-4,
                "{:?} param {k}: numeric {numeric} analytic {}",
                cfg.reg_norm,
                analytic[k]
            );
        }
    }

    #[test]
    fn gradient_matches_finite_differences_for_both_regularisers() {
        let base = LightGcnConfig {
            embedding_size: 3,
            init_std: 0.5,
            reg_weight: 0.05,
            ..Default::default()
        };
        check_gradient(&base);
        check_gradient(&LightGcnConfig {
            reg_norm: RegNorm::Frobenius,
            ..base.clone()
        });
        check_gradient(&LightGcnConfig {
            n_layers: 3,
            reg_weight: 0.0,
            ..base
        });
    }

    #[test]
    fn trains_deterministically_regardless_of_threads() {
        let train = random_matrix(50, 40, 6, 13);
        let cfg = LightGcnConfig {
            batch_size: 32,
            lr: 0.01,
            ..LightGcnConfig::preset(Preset::Recbole)
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = LightGcn::new(&cfg, &train, 1).unwrap();
                let losses = run_epochs(&mut m, &train, 4, 2);
                (m, losses)
            })
        };
        let (a, la) = run(1);
        let (b, lb) = run(2);
        assert_eq!(la, lb);
        assert_eq!(a.params, b.params);
        assert_eq!(a.final_emb, b.final_emb);
        assert!(la[3] < la[0], "loss goes down: {la:?}");
    }

    #[test]
    fn save_load_resume_and_fold_in() {
        let train =
            InteractionMatrix::from_rows(6, &[vec![0, 1], vec![], vec![2, 3, 5], vec![1, 4]]);
        let cfg = LightGcnConfig {
            embedding_size: 4,
            batch_size: 3,
            ..Default::default()
        };
        let mut model = LightGcn::new(&cfg, &train, 3).unwrap();
        run_epochs(&mut model, &train, 2, 4);
        let dir = tempfile::tempdir().unwrap();
        model.save_state(dir.path()).unwrap();
        let loaded = LightGcn::load(dir.path()).unwrap();
        assert_eq!(loaded.final_emb, model.final_emb);
        let input =
            InteractionMatrix::from_rows(6, &[vec![0, 1], vec![2, 5], vec![2, 3, 5], vec![1, 4]]);
        let (mut s1, mut s2) = (vec![0.0; 24], vec![0.0; 24]);
        model.score_users(&[0, 1, 2, 3], &input, &mut s1);
        loaded.score_users(&[0, 1, 2, 3], &input, &mut s2);
        assert_eq!(s1, s2);
        // User 1 had no training items: scored from the mean final item vector of {2, 5}.
        let mut h = vec![0.0; 6];
        model.score_history(&[2, 5], &mut h).unwrap();
        assert_eq!(&s1[6..12], &h[..]);
        // A trained user uses its own final embedding.
        let f = model.final_embedding();
        let item0 = 4 * 4;
        assert!((s1[3] - dot(&f[..4], &f[item0 + 12..item0 + 16])).abs() < 1e-6);

        let mut resumed = LightGcn::new(&cfg, &train, 77).unwrap();
        resumed.load_state(dir.path()).unwrap();
        let la = run_epochs(&mut model, &train, 1, 9);
        let lb = run_epochs(&mut resumed, &train, 1, 9);
        assert_eq!(la, lb);
        assert_eq!(model.params, resumed.params);
        assert_eq!(model.adam, resumed.adam);
        // A model loaded for scoring can go on training (the graph is rebuilt).
        let mut reloaded = LightGcn::load(dir.path()).unwrap();
        run_epochs(&mut reloaded, &train, 1, 9);
        assert!(reloaded.adj.is_some());
    }

    #[test]
    fn config_presets_and_check() {
        let r = LightGcnConfig::preset(Preset::Recbole);
        assert_eq!(
            (r.reg_weight, r.reg_norm, r.init),
            (1e-5, RegNorm::Frobenius, EmbeddingInit::XavierUniform)
        );
        let o = LightGcnConfig::default();
        assert_eq!(
            (o.reg_weight, o.reg_norm, o.n_layers, o.embedding_size),
            (1e-4, RegNorm::Squared, 2, 64)
        );
        let bad = LightGcnConfig {
            reg_weight: f64::NAN,
            ..o
        };
        assert!(bad.check().unwrap_err().to_string().contains("reg_weight"));
    }
}
