//! BPR-MF (Rendle et al. 2009; MODELS.md "BPR-MF"): matrix factorisation trained with the
//! Bayesian personalised ranking loss on (user, positive, negative) triples.
//!
//! `s_ui = p_u · q_i`. One epoch visits every training interaction once, in an order shuffled
//! by the trainer's random stream, pairs it with one uniform negative item the user does not
//! have (resampled while the user has it, unless `check_negatives = false`), and takes one
//! Adam step per mini-batch of `batch_size` triples on
//!
//! ```text
//! L = (1/B) Σ_t [ −ln σ(s_ui⁺ − s_uj⁻) + λ (‖p_u‖² + ‖q_i‖² + ‖q_j‖²) ]
//! ```
//!
//! that is, the mean over the batch of Rendle's per-triple BPR-Opt objective with the squared
//! L2 of the batch's embeddings.
//!
//! Presets (both reachable by config, the original is the default):
//!
//! | key | `original` | `recbole` |
//! |---|---|---|
//! | `reg_weight` (λ) | 1e-5 | 0 (RecBole's BPR has no L2 term) |
//! | `init` | `normal`, std 0.1 (MyMediaLite's BPRMF, Rendle's own library) | `xavier_normal` (RecBole) |
//!
//! Everything else is shared: `d = 64`, Adam with lr 1e-3, batch 2048 triples. RecBole's loss
//! is `−ln(1e-10 + σ(x))`; we use the numerically stable `softplus(−x)`, which differs only
//! when `σ(x) < 1e-10` (x < −23). RecBole's embedding tables carry an extra padding row (id 0),
//! so its Xavier fan-out is one larger than ours: a 0.05% difference in the init scale.
//!
//! **Why no tensor framework.** The model is two embedding tables with closed-form gradients
//! (`∂L/∂x = −σ(−x)/B`, then three rank-one scatters per triple); LightGCN adds a sparse
//! propagation whose backward is the transposed product (the same kernel, Â being
//! symmetric). A framework would add a dependency, a graph and dispatch overhead, and nothing
//! else. The optimiser (`Adam`) reproduces `torch.optim.Adam` exactly, including its dense
//! update of every parameter at every step (rows without gradient still decay their moments
//! and move), so that the `recbole` preset follows RecBole's training dynamics.
//!
//! **Scale: `sparse_adam`.** The dense step costs O(parameters) per batch: at
//! Music4All-Onion scale (119k users + 57k items, d = 64: 11M parameters, 24k batches of
//! 2048 per epoch over 50M interactions) it streams 180 MB of parameters, gradient and
//! moments per step: measured 17.6 ms a step, about 7 minutes an epoch on two loaded cores,
//! most of it the optimiser. `sparse_adam = true` (off by default, so the presets stay
//! torch-exact) switches to a lazy Adam that updates only the rows the batch gathered
//! (`torch.optim.SparseAdam`, TensorFlow's `LazyAdam`): an untouched row's moments do not
//! decay and it does not drift by its momentum (`Adam::step_rows` spells out the
//! difference). The gradient, sampling and loss are unchanged; a measured Onion-scale epoch
//! then takes 100 s. The example `baselines_scale` measures both.
//!
//! **Fold-in.** A factorisation has no parameters for a user it never trained on. For such
//! users (the `users` split, `recommend --history`) we score a history by the mean of the
//! history's item vectors: `p = mean_{i ∈ h} q_i`, `s_j = p · q_j`. In
//! [`Recommender::score_users`], users whose training row was empty when the model was built
//! (or whose index lies beyond the trained user table) are folded in from their `input` row.
//!
//! **Determinism.** Per-triple scores are computed in parallel (each independent), gradients
//! are accumulated sequentially in triple order, and Adam is element-wise: results do not
//! depend on the number of threads.

use std::collections::BTreeMap;
use std::path::Path;

use encore_data::InteractionMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use encore_core::config::RunConfig;
use encore_core::config::{
    check_nonnegative_finite, check_positive_finite, check_range, ModelConfig, Preset,
};
use encore_core::registry::{FitInput, ModelEntry, TrainedModel};
use encore_core::{
    Adam, EpochContext, ItemRepresentation, ItemVectors, ModelError, Recommender, Trainable,
};

use crate::embedding::{
    axpy, check_history, dot, fold_in_vector, init_table, score_factorised, EmbeddingInit,
};
use crate::triples::{batch_rows, for_each_triple_batch, sigmoid, softplus};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// BPR-MF hyperparameters. Construct with [`BprConfig::preset`] or parse a TOML file with
/// [`BprConfig::from_toml_str`]; [`BprConfig::check`] validates every value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BprConfig {
    /// The preset the unspecified keys came from.
    pub preset: Preset,
    /// Latent size `d` (default 64).
    pub embedding_size: usize,
    /// Adam learning rate (default 1e-3).
    pub lr: f64,
    /// Triples per Adam step (default 2048).
    pub batch_size: usize,
    /// λ of the squared L2 term (original 1e-5, recbole 0).
    pub reg_weight: f64,
    /// Initialisation of both tables (original `normal`, recbole `xavier_normal`).
    pub init: EmbeddingInit,
    /// Standard deviation for `init = "normal"` (default 0.1).
    pub init_std: f64,
    /// Resample a negative while the user has it (default true). `false` skips the check for
    /// speed: on sparse data a sampled item is almost never a positive.
    pub check_negatives: bool,
    /// Lazy ("sparse") Adam: update only the embedding rows the batch gathered (its users,
    /// positives and negatives) instead of every parameter (default false, torch-exact).
    /// Needed at Music4All-Onion scale, where the dense step touches 11M parameters per
    /// batch; the module docs ("Scale") say how the dynamics differ.
    #[serde(default)]
    pub sparse_adam: bool,
}

impl Default for BprConfig {
    fn default() -> Self {
        Self::preset(Preset::Original)
    }
}

impl BprConfig {
    /// The defaults of a preset (module docs list the differences).
    pub fn preset(preset: Preset) -> Self {
        let (reg_weight, init) = match preset {
            Preset::Original => (1e-5, EmbeddingInit::Normal),
            Preset::Recbole => (0.0, EmbeddingInit::XavierNormal),
        };
        Self {
            preset,
            embedding_size: 64,
            lr: 1e-3,
            batch_size: 2048,
            reg_weight,
            init,
            init_std: 0.1,
            check_negatives: true,
            sparse_adam: false,
        }
    }

    /// Parse a TOML config (`configs/bpr.toml`) through [`encore_core::config::resolve_table`]:
    /// keys not given take the preset's value, unknown keys are an error naming the key, the
    /// result is checked. A `[train]` table is validated too but not returned.
    pub fn from_toml_str(text: &str) -> Result<Self, ModelError> {
        parse_model_config(text)
    }

    /// Validate every value, naming the first bad key and its allowed range.
    pub fn check(&self) -> Result<(), ModelError> {
        check_range("embedding_size", self.embedding_size as f64, 1.0, 4096.0)?;
        check_positive_finite("lr", self.lr)?;
        check_range("batch_size", self.batch_size as f64, 1.0, 1e8)?;
        check_nonnegative_finite("reg_weight", self.reg_weight)?;
        check_positive_finite("init_std", self.init_std)?;
        Ok(())
    }
}

/// Resolve a model's TOML document (model keys at the top, optional `[train]` table) with
/// the shared config mechanism and return the model's part.
pub(crate) fn parse_model_config<T: ModelConfig>(text: &str) -> Result<T, ModelError> {
    let table: toml::Table = toml::from_str(text)
        .map_err(|e| ModelError::config("<config>", format!("not a TOML document: {e}")))?;
    Ok(encore_core::config::resolve_table::<T>(table)?.model)
}

impl ModelConfig for BprConfig {
    const MODEL: &'static str = "bpr";

    fn preset(preset: Preset) -> Self {
        BprConfig::preset(preset)
    }

    fn check(&self) -> Result<(), ModelError> {
        BprConfig::check(self)
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// What `bpr.json` holds beside the weights.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BprMeta {
    config: BprConfig,
    n_users: usize,
    n_items: usize,
    /// Users whose training row was empty when the model was built (folded in when scored).
    untrained_users: Vec<u32>,
}

/// A fitted (or in-training) BPR-MF model.
#[derive(Debug, Clone, PartialEq)]
pub struct Bpr {
    config: BprConfig,
    n_users: usize,
    n_items: usize,
    /// `[users x d | items x d]`, row-major: one buffer so that Adam is one pass.
    params: Vec<f32>,
    grad: Vec<f32>,
    adam: Adam,
    trained: Vec<bool>,
}

impl Bpr {
    /// A fresh model for `train`'s shape, initialised from `seed` (its own stream, so the
    /// trainer's stream only drives shuffling and negatives).
    pub fn new(
        config: &BprConfig,
        train: &InteractionMatrix,
        seed: u64,
    ) -> Result<Self, ModelError> {
        config.check()?;
        if train.n_items() < 2 {
            return Err(ModelError::Input(format!(
                "BPR needs at least 2 items to sample negatives, the catalogue has {}",
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
        Ok(Self {
            config: config.clone(),
            n_users: train.n_users(),
            n_items: train.n_items(),
            grad: vec![0.0; n],
            adam: Adam::new(n, config.lr),
            params,
            trained: (0..train.n_users()).map(|u| train.row_len(u) > 0).collect(),
        })
    }

    /// Load a model written by [`Recommender::save`] (or [`Trainable::save_state`]).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let meta: BprMeta = encore_io::read_json(&dir.join("bpr.json"))?;
        meta.config.check()?;
        let d = meta.config.embedding_size;
        let path = dir.join("bpr.safetensors");
        let mut t = encore_io::read_f32_tensors(&path)?;
        let mut params = t.take("user_embedding", &[meta.n_users, d])?;
        params.extend(t.take("item_embedding", &[meta.n_items, d])?);
        let mut trained = vec![true; meta.n_users];
        for &u in &meta.untrained_users {
            let slot = trained.get_mut(u as usize).ok_or_else(|| {
                ModelError::format(
                    dir.join("bpr.json"),
                    format!("untrained user {u} >= n_users"),
                )
            })?;
            *slot = false;
        }
        let n = params.len();
        Ok(Self {
            adam: Adam::new(n, meta.config.lr),
            config: meta.config,
            n_users: meta.n_users,
            n_items: meta.n_items,
            grad: vec![0.0; n],
            params,
            trained,
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &BprConfig {
        &self.config
    }

    /// User embeddings, `n_users x d` row-major.
    pub fn user_embedding(&self) -> &[f32] {
        &self.params[..self.n_users * self.config.embedding_size]
    }

    /// Item embeddings, `n_items x d` row-major.
    pub fn item_embedding(&self) -> &[f32] {
        &self.params[self.n_users * self.config.embedding_size..]
    }

    /// Loss of one batch and its gradient, accumulated into `self.grad`. Returns the mean BPR
    /// term and the regulariser. Per-triple coefficients are computed in parallel; the
    /// scatter into the gradient is sequential in triple order (thread-count independent).
    fn batch_loss_grad(&mut self, batch: &[(u32, u32, u32)]) -> (f64, f64) {
        let d = self.config.embedding_size;
        let item0 = self.n_users * d;
        let b = batch.len() as f32;
        let lambda = self.config.reg_weight as f32;
        let params = &self.params;
        // (x, -σ(-x)): the score margin and ∂(−ln σ(x))/∂x.
        let coef: Vec<(f32, f32)> = batch
            .par_iter()
            .with_min_len(256)
            .map(|&(u, i, j)| {
                let p = &params[u as usize * d..(u as usize + 1) * d];
                let qi = &params[item0 + i as usize * d..item0 + (i as usize + 1) * d];
                let qj = &params[item0 + j as usize * d..item0 + (j as usize + 1) * d];
                let x = dot(p, qi) - dot(p, qj);
                (x, -sigmoid(-x))
            })
            .collect();
        let mut bpr = 0.0f64;
        let mut reg = 0.0f64;
        let (users, items) = self.params.split_at(item0);
        let (gu, gi) = self.grad.split_at_mut(item0);
        for (&(u, i, j), &(x, dx)) in batch.iter().zip(&coef) {
            bpr += softplus(-x) as f64;
            let (u, i, j) = (u as usize, i as usize, j as usize);
            let p = &users[u * d..(u + 1) * d];
            let qi = &items[i * d..(i + 1) * d];
            let qj = &items[j * d..(j + 1) * d];
            let w = dx / b;
            let gp = &mut gu[u * d..(u + 1) * d];
            for k in 0..d {
                gp[k] += w * (qi[k] - qj[k]);
            }
            axpy(w, p, &mut gi[i * d..(i + 1) * d]);
            axpy(-w, p, &mut gi[j * d..(j + 1) * d]);
            if lambda > 0.0 {
                let r = 2.0 * lambda / b;
                axpy(r, p, &mut gu[u * d..(u + 1) * d]);
                axpy(r, qi, &mut gi[i * d..(i + 1) * d]);
                axpy(r, qj, &mut gi[j * d..(j + 1) * d]);
                reg += (dot(p, p) + dot(qi, qi) + dot(qj, qj)) as f64;
            }
        }
        let n = batch.len() as f64;
        (bpr / n, self.config.reg_weight * reg / n)
    }

    fn write_weights(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let d = self.config.embedding_size;
        encore_io::write_f32_tensors(
            &dir.join("bpr.safetensors"),
            &[
                (
                    "user_embedding",
                    vec![self.n_users, d],
                    self.user_embedding(),
                ),
                (
                    "item_embedding",
                    vec![self.n_items, d],
                    self.item_embedding(),
                ),
            ],
            None,
        )?;
        let meta = BprMeta {
            config: self.config.clone(),
            n_users: self.n_users,
            n_items: self.n_items,
            untrained_users: (0..self.n_users as u32)
                .filter(|&u| !self.trained[u as usize])
                .collect(),
        };
        Ok(encore_io::write_json(&dir.join("bpr.json"), &meta)?)
    }
}

/// The training matrix of an epoch must have the model's shape.
pub(crate) fn check_shape(
    train: &InteractionMatrix,
    n_users: usize,
    n_items: usize,
) -> Result<(), ModelError> {
    if train.n_users() != n_users || train.n_items() != n_items {
        return Err(ModelError::Input(format!(
            "training matrix is {} x {}, the model was built for {n_users} users x {n_items} items",
            train.n_users(),
            train.n_items()
        )));
    }
    Ok(())
}

impl Recommender for Bpr {
    fn name(&self) -> &'static str {
        "bpr"
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_users(&self, users: &[u32], input: &InteractionMatrix, out: &mut [f32]) {
        score_factorised(
            users,
            input,
            self.user_embedding(),
            &self.trained,
            self.item_embedding(),
            self.config.embedding_size,
            out,
        );
    }

    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
        check_history(history, self.n_items)?;
        let d = self.config.embedding_size;
        let mut p = vec![0.0; d];
        fold_in_vector(self.item_embedding(), d, history, &mut p);
        let items = self.item_embedding();
        out.par_iter_mut()
            .enumerate()
            .for_each(|(j, s)| *s = dot(&p, &items[j * d..(j + 1) * d]));
        Ok(())
    }

    fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        Some(ItemRepresentation {
            source: "item embeddings, cosine",
            vectors: ItemVectors::Rows {
                values: self.item_embedding(),
                dim: self.config.embedding_size,
            },
        })
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.write_weights(dir)
    }
}

impl Bpr {
    /// The first `max_batches` batches of an epoch ([`Trainable::train_epoch`] runs them all);
    /// used to time steps at a scale where a full epoch is long (the `baselines_scale`
    /// example).
    pub fn train_batches(
        &mut self,
        ctx: EpochContext<'_>,
        max_batches: usize,
    ) -> Result<BTreeMap<String, f64>, ModelError> {
        check_shape(ctx.train, self.n_users, self.n_items)?;
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
                    let rows = batch_rows(batch, self.n_users);
                    let d = self.config.embedding_size;
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

impl Trainable for Bpr {
    fn train_epoch(&mut self, ctx: EpochContext<'_>) -> Result<BTreeMap<String, f64>, ModelError> {
        self.train_batches(ctx, usize::MAX)
    }

    fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
        self.write_weights(dir)?;
        self.adam.save(dir)
    }

    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
        let loaded = Bpr::load(dir)?;
        if loaded.n_users != self.n_users
            || loaded.n_items != self.n_items
            || loaded.config.embedding_size != self.config.embedding_size
        {
            return Err(ModelError::format(
                dir.join("bpr.json"),
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
        *self = Self { adam, ..loaded };
        Ok(())
    }
}

/// Bpr's registry entry.
pub fn entry() -> ModelEntry {
    ModelEntry::trained::<Bpr>(
        "BPR-MF (Rendle et al. 2009): matrix factorisation, pairwise ranking loss",
    )
}

impl TrainedModel for Bpr {
    type Config = BprConfig;
    fn init(c: &RunConfig<BprConfig>, input: &FitInput<'_>) -> Result<Self, ModelError> {
        Bpr::new(&c.model, input.train, c.train.seed)
    }
    fn load(dir: &Path) -> Result<Self, ModelError> {
        Bpr::load(dir)
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index-heavy reference code reads clearer
pub(crate) mod tests {
    use super::*;
    use crate::triples::sample_negative;
    use rand::Rng;

    /// A small random training matrix.
    pub(crate) fn random_matrix(
        n_users: usize,
        n_items: usize,
        per_user: usize,
        seed: u64,
    ) -> InteractionMatrix {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rows: Vec<Vec<u32>> = (0..n_users)
            .map(|_| {
                (0..per_user)
                    .map(|_| rng.random_range(0..n_items as u32))
                    .collect()
            })
            .collect();
        InteractionMatrix::from_rows(n_items, &rows)
    }

    /// Run `epochs` epochs with a local loop (what the trainer does).
    pub(crate) fn run_epochs(
        model: &mut dyn Trainable,
        train: &InteractionMatrix,
        epochs: usize,
        seed: u64,
    ) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let progress = |_: u64| {};
        (0..epochs)
            .map(|epoch| {
                let ctx = EpochContext {
                    train,
                    epoch,
                    rng: &mut rng,
                    progress: &progress,
                };
                model.train_epoch(ctx).unwrap()["loss"]
            })
            .collect()
    }

    #[test]
    fn sparse_adam_trains_deterministically_and_differs_from_dense() {
        let train = random_matrix(40, 30, 6, 11);
        let cfg = BprConfig {
            batch_size: 16,
            lr: 0.01,
            sparse_adam: true,
            ..BprConfig::default()
        };
        let run = |cfg: &BprConfig, threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = Bpr::new(cfg, &train, 1).unwrap();
                let losses = run_epochs(&mut m, &train, 5, 2);
                (m, losses)
            })
        };
        let (a, la) = run(&cfg, 1);
        let (b, lb) = run(&cfg, 2);
        assert_eq!((&a, &la), (&b, &lb));
        assert!(la[4] < la[0], "loss goes down: {la:?}");
        let dense = BprConfig {
            sparse_adam: false,
            ..cfg.clone()
        };
        let (c, _) = run(&dense, 1);
        assert_ne!(a.params, c.params);
        // The key parses, and a model saved by a build without it still loads (default off).
        let parsed = BprConfig::from_toml_str("sparse_adam = true").unwrap();
        assert!(parsed.sparse_adam);
        let mut json = serde_json::to_value(BprConfig::default()).unwrap();
        json.as_object_mut().unwrap().remove("sparse_adam");
        let old: BprConfig = serde_json::from_value(json).unwrap();
        assert!(!old.sparse_adam);
    }

    #[test]
    fn negatives_are_never_the_users_items() {
        let train = InteractionMatrix::from_rows(6, &[vec![0, 1, 2, 3, 4], vec![5], vec![]]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            assert_eq!(sample_negative(&train, 0, &mut rng, true), Some(5));
            assert_ne!(sample_negative(&train, 1, &mut rng, true), Some(5));
        }
        let full = InteractionMatrix::from_rows(3, &[vec![0, 1, 2]]);
        assert_eq!(sample_negative(&full, 0, &mut rng, true), None);
        // Without the check the user's own items do come up.
        let hits = (0..200)
            .filter(|_| sample_negative(&train, 0, &mut rng, false) != Some(5))
            .count();
        assert!(hits > 0);
        // Whole epochs: every triple's negative is outside the user's row, every positive once.
        let train = random_matrix(30, 20, 8, 3);
        let mut seen = Vec::new();
        for_each_triple_batch(&train, &mut rng, 7, true, usize::MAX, |batch| {
            for &(u, i, j) in batch {
                assert!(train.contains(u as usize, i));
                assert!(!train.contains(u as usize, j));
                seen.push((u, i));
            }
            Ok(())
        })
        .unwrap();
        seen.sort_unstable();
        let mut all: Vec<(u32, u32)> = (0..30)
            .flat_map(|u| train.row(u).iter().map(move |&i| (u as u32, i)))
            .collect();
        all.sort_unstable();
        assert_eq!(seen, all);
    }

    fn total_loss(model: &mut Bpr, batch: &[(u32, u32, u32)]) -> f64 {
        let (a, b) = model.batch_loss_grad(batch);
        model.grad.fill(0.0);
        a + b
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let train = random_matrix(4, 6, 3, 5);
        let cfg = BprConfig {
            embedding_size: 3,
            reg_weight: 0.05,
            init_std: 0.5,
            ..BprConfig::default()
        };
        let mut model = Bpr::new(&cfg, &train, 9).unwrap();
        // A repeated user and a repeated item exercise accumulation.
        let batch = [(0, 1, 2), (0, 3, 1), (2, 4, 5), (3, 1, 0)];
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
                (numeric - analytic[k] as f64).abs() < 2e-4,
                "param {k}: numeric {numeric} analytic {}",
                analytic[k]
            );
        }
    }

    #[test]
    fn trains_deterministically_regardless_of_threads() {
        let train = random_matrix(40, 30, 6, 11);
        let cfg = BprConfig {
            batch_size: 16,
            lr: 0.01,
            ..BprConfig::default()
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = Bpr::new(&cfg, &train, 1).unwrap();
                let losses = run_epochs(&mut m, &train, 5, 2);
                (m, losses)
            })
        };
        let (a, la) = run(1);
        let (b, lb) = run(2);
        assert_eq!(la, lb);
        assert_eq!(a, b);
        assert!(la[4] < la[0], "loss goes down: {la:?}");
    }

    #[test]
    fn save_load_and_state_round_trip() {
        let train = InteractionMatrix::from_rows(8, &[vec![0, 1], vec![], vec![2, 3, 7]]);
        let cfg = BprConfig {
            embedding_size: 4,
            batch_size: 2,
            ..BprConfig::preset(Preset::Recbole)
        };
        let mut model = Bpr::new(&cfg, &train, 3).unwrap();
        run_epochs(&mut model, &train, 2, 4);
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let loaded = Bpr::load(dir.path()).unwrap();
        assert_eq!(loaded.params, model.params);
        assert_eq!(loaded.trained, vec![true, false, true]);
        let input = train.clone();
        let (mut s1, mut s2) = (vec![0.0; 24], vec![0.0; 24]);
        model.score_users(&[0, 1, 2], &input, &mut s1);
        loaded.score_users(&[0, 1, 2], &input, &mut s2);
        assert_eq!(s1, s2);

        // Resuming from a state checkpoint continues exactly like an uninterrupted run.
        model.save_state(dir.path()).unwrap();
        let mut resumed = Bpr::new(&cfg, &train, 99).unwrap();
        resumed.load_state(dir.path()).unwrap();
        assert_eq!(resumed, model);
        let la = run_epochs(&mut model, &train, 1, 8);
        let lb = run_epochs(&mut resumed, &train, 1, 8);
        assert_eq!(la, lb);
        assert_eq!(resumed.params, model.params);

        // Loading a corrupted file names it.
        std::fs::write(dir.path().join("bpr.safetensors"), b"junk").unwrap();
        let err = Bpr::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bpr.safetensors"), "{err}");
    }

    #[test]
    fn fold_in_is_the_mean_item_vector() {
        let train = InteractionMatrix::from_rows(5, &[vec![0, 1], vec![]]);
        let cfg = BprConfig {
            embedding_size: 3,
            ..BprConfig::default()
        };
        let model = Bpr::new(&cfg, &train, 3).unwrap();
        let q = model.item_embedding();
        let mut out = vec![0.0; 5];
        model.score_history(&[2, 4], &mut out).unwrap();
        for j in 0..5 {
            let expect: f32 = (0..3)
                .map(|k| 0.5 * (q[6 + k] + q[12 + k]) * q[j * 3 + k])
                .sum();
            assert!((out[j] - expect).abs() < 1e-6);
        }
        // User 1 was untrained: score_users folds in from the input row.
        let input = InteractionMatrix::from_rows(5, &[vec![0, 1], vec![2, 4]]);
        let mut rows = vec![0.0; 10];
        model.score_users(&[1, 0], &input, &mut rows);
        assert_eq!(&rows[..5], &out[..]);
        let p = model.user_embedding();
        assert!((rows[5] - dot(&p[..3], &q[..3])).abs() < 1e-6);
        assert!(model
            .score_history(&[5], &mut out)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(model.score_history(&[], &mut out).is_err());
    }

    #[test]
    fn config_presets_and_errors() {
        let cfg = BprConfig::from_toml_str("preset = \"recbole\"\nbatch_size = 512\n").unwrap();
        assert_eq!(cfg.reg_weight, 0.0);
        assert_eq!(cfg.init, EmbeddingInit::XavierNormal);
        assert_eq!(cfg.batch_size, 512);
        assert_eq!(BprConfig::from_toml_str("").unwrap(), BprConfig::default());
        assert_eq!(BprConfig::default().reg_weight, 1e-5);
        let err = BprConfig::from_toml_str("learning_rat = 0.1").unwrap_err();
        assert!(
            matches!(&err, ModelError::Config { key, .. } if key == "learning_rat"),
            "{err}"
        );
        let err = BprConfig::from_toml_str("lr = -1.0").unwrap_err();
        assert!(
            matches!(&err, ModelError::Config { key, .. } if key == "lr"),
            "{err}"
        );
        let err = BprConfig::from_toml_str("batch_size = 0").unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
    }
}
