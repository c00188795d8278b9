//! DiffRec (Wang et al., SIGIR 2023, "Diffusion Recommender Model"), MODELS.md "DiffRec": a
//! peer model, Gaussian diffusion directly on the user's interaction row, no encoder.
//!
//! What the official code (commit d35a6c6, `DiffRec/main.py`, `models/DNN.py`,
//! `models/gaussian_diffusion.py`) does, and this module follows:
//! - Denoiser: `dims = [200, 600]` builds `out_dims = dims + [I]` and `in_dims` its reverse, so
//!   the network is `[x̃_t ; temb] → 600 → 200 → 600 → I` (`tanh` after every layer but the
//!   last), where `temb = Linear(sinusoids(t, emb_size))` and `x̃_t = dropout(x_t, 0.5)` (the
//!   DNN's default dropout; no input normalisation, `norm = False`). MODELS.md's
//!   "`[x_t ; temb] → 200 → 600 → I`" names the output half; the layer names here are the
//!   code's (`in.0`, `in.1`, `out.0`, `out.1`, `emb`).
//! - Initialisation: weights `N(0, 2 / (fan_in + fan_out))`, biases `N(0, 0.001²)`.
//! - Schedule (`noise_schedule = "linear-var"`, the code's default): the variances
//!   `1 − ᾱ_t = linspace(s · β_min, s · β_max, T)`, `β_t = 1 − ᾱ_t / ᾱ_{t−1}` (at most 0.999),
//!   then `β_0` fixed to 1e-5 (`beta_fixed = True`, for every schedule). `"linear"` takes
//!   `β_t = linspace(s · β_min, s · β_max, T)` instead.
//! - Training (`mean_type = x0`): `t` by importance sampling, `ε ~ N(0, 1)`,
//!   `x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`, loss per user `w_t · mean_i (x_0 − f(x_t, t))² / p_t`,
//!   `w_t = SNR(t − 1) − SNR(t)` (`w_0 = 1`), averaged over the batch. The code always
//!   reweights: its `--reweight` is parsed with `type=bool`, so any value given (`0`
//!   included) is true, and its unweighted branch would not run (it leaves `loss` unset).
//!   There is therefore no `reweight` key here.
//! - Importance sampling: the last 10 values of each step's weighted loss are kept; until
//!   every step has 10, `t` is uniform and `p_t = 1`; then `p ∝ √(mean of the squared
//!   history)`, mixed with 0.001 of uniform, `p_t = p(t) · T`. The history is part of the
//!   training state (saved with the checkpoint).
//! - Inference (`sampling_steps = 0`, `sampling_noise = False`): start from the user's
//!   training row `x_T := x_u` (no noise added) and run all `T` reverse steps with posterior
//!   means `x_{t−1} = c₁(t) x̂_0 + c₂(t) x_t`, dropout off; the scores are the result.
//! - Adam (the code's AdamW with weight decay 0 is Adam), lr 1e-3, batch 400 users, all
//!   users shuffled each epoch; validation every 5 epochs, best by valid Recall@20, stop 20
//!   epochs after the best (our trainer: `eval_every = 5`, `patience = 2`, the same stopping
//!   epoch for model selection).
//!
//! Deviations: `mean_type = eps`, `sampling_steps > 0` and `sampling_noise` (options the
//! reported ML-1M setting does not use) are not offered. The best-checkpoint comparison is
//! the trainer's `>=` (a tie moves the best forward) where the code uses `>`, with
//! `metric_decimals = 15` (no rounding, as the code). Random draws are ours (ChaCha8,
//! per-row streams), not torch's. Users without training items are left out of the epochs
//! (as in the VAEs; the code feeds their all-zero rows too).
//!
//! Scoring computes the same chain in a cheaper order (a deviation in the last bits only):
//! the denoiser's output layer is linear and so is the posterior mean, so the first layer's
//! product with `x_t` follows `u_{t−1} = c₁(t) (h_t W_out W_in + b_out W_in) + c₂(t) u_t`,
//! starting from `u_T = x_u W_in` (a sparse gather). With `M = W_out W_in` (`[600, 600]`,
//! computed once per set of weights) a step costs one `600 x 600` product per user instead
//! of two `600 x I` ones, and the `I`-wide output is formed only at `t = 0`, where
//! `c₂(0) = 0` exactly (`ᾱ_{−1} = 1`). `tests::fast_chain_equals_the_direct_chain` checks it
//! against the step-by-step chain.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use encore_core::config::{check_range, ModelConfig, Preset, RunConfig, TrainerConfig};
use encore_core::registry::{FitInput, ModelEntry, TrainedModel};
use encore_core::{
    EpochContext, ItemRepresentation, ItemVectors, ModelError, Recommender, Trainable,
};
use encore_data::InteractionMatrix;
use encore_nn::diffusion::{time_embeddings, Schedule};
use encore_nn::kernels::{col_sums, tanh_backward, tanh_inplace};
use encore_nn::{matmul, Activation, Csr, Dense, Grads, Mat, Mlp, ParamStore, Side};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::common::{
    self, adam_step, check_out, new_adam, normals, read_meta, xavier, Adam, Init, LossParts,
    SparseBatch,
};
use crate::multivae::{check_dropout, check_lr};

/// How the noise schedule is built from `noise_scale`, `noise_min`, `noise_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NoiseSchedule {
    /// The variances `1 − ᾱ_t` are linear (the official code's default).
    #[default]
    #[serde(rename = "linear-var")]
    LinearVar,
    /// The `β_t` are linear.
    #[serde(rename = "linear")]
    Linear,
}

/// DiffRec's configuration; both presets are the official per-dataset ML-1M setting (the
/// model has no RecBole implementation to take other defaults from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffRecConfig {
    /// `"original"` or `"recbole"`: the same values.
    pub preset: Preset,
    /// The code's `--dims`: the denoiser is `[x_t ; temb] → reversed(dims) → dims[1..] → I`.
    /// Default `[200, 600]`.
    pub dims: Vec<usize>,
    /// Width of the sinusoidal time embedding and of its linear layer. Default 10.
    pub emb_size: usize,
    /// Dropout on the denoiser's input in training, in `[0, 1)`. Default 0.5.
    pub dropout: f64,
    /// Diffusion steps `T`, 1..=10,000. Default 40.
    pub steps: usize,
    /// `"linear-var"` (default) or `"linear"`.
    pub noise_schedule: NoiseSchedule,
    /// Scale `s` of the noise bounds, > 0. Default 0.005.
    pub noise_scale: f64,
    /// Lower noise bound (times `noise_scale`). Default 0.005.
    pub noise_min: f64,
    /// Upper noise bound (times `noise_scale`), >= `noise_min`. Default 0.01.
    pub noise_max: f64,
    /// Adam learning rate, in `(0, 1]`. Default 1e-3.
    pub lr: f64,
    /// Users per gradient step. Default 400.
    pub batch_size: usize,
    /// Seed of the initial weights.
    pub init_seed: u64,
}

impl DiffRecConfig {
    /// The official ML-1M setting (PEERS.md).
    pub fn ml1m() -> Self {
        DiffRecConfig {
            preset: Preset::Original,
            dims: vec![200, 600],
            emb_size: 10,
            dropout: 0.5,
            steps: 40,
            noise_schedule: NoiseSchedule::LinearVar,
            noise_scale: 0.005,
            noise_min: 0.005,
            noise_max: 0.01,
            lr: 1e-3,
            batch_size: 400,
            init_seed: 2020,
        }
    }

    /// The schedule these settings give (errors name the key).
    pub fn schedule(&self) -> Result<Schedule, ModelError> {
        check_range("steps", self.steps, 1, 10_000)?;
        if !(self.noise_scale.is_finite() && self.noise_scale > 0.0) {
            return Err(ModelError::config(
                "noise_scale",
                format!("must be a positive number, got {}", self.noise_scale),
            ));
        }
        let (start, end) = (
            self.noise_scale * self.noise_min,
            self.noise_scale * self.noise_max,
        );
        for (key, v) in [("noise_min", start), ("noise_max", end)] {
            if !(v > 0.0 && v < 1.0) {
                return Err(ModelError::config(
                    key,
                    format!("times noise_scale gives {v}; it must be in (0, 1)"),
                ));
            }
        }
        if self.noise_max < self.noise_min {
            return Err(ModelError::config(
                "noise_max",
                format!("is {}, below noise_min {}", self.noise_max, self.noise_min),
            ));
        }
        let t = self.steps;
        // numpy's linspace: start + i · step, the last value exactly `end`.
        let step = if t > 1 {
            (end - start) / (t - 1) as f64
        } else {
            0.0
        };
        let lin: Vec<f64> = (0..t)
            .map(|i| {
                if i + 1 == t && t > 1 {
                    end
                } else {
                    start + i as f64 * step
                }
            })
            .collect();
        let mut betas = match self.noise_schedule {
            NoiseSchedule::Linear => lin,
            NoiseSchedule::LinearVar => {
                let ab: Vec<f64> = lin.iter().map(|v| 1.0 - v).collect();
                let mut b = vec![1.0 - ab[0]];
                b.extend((1..t).map(|i| (1.0 - ab[i] / ab[i - 1]).min(0.999)));
                b
            }
        };
        betas[0] = FIRST_BETA;
        Schedule::from_betas(betas).map_err(|e| {
            let key = if self.noise_max == self.noise_min && e.key == "noise_scale" {
                "noise_max"
            } else {
                e.key
            };
            ModelError::config(key, e.message)
        })
    }
}

/// `β_0` of every schedule (the code's `beta_fixed`, after Sohl-Dickstein et al. §2.4.1).
const FIRST_BETA: f64 = 1e-5;
/// Losses kept per step for importance sampling (`history_num_per_term`).
const HISTORY: usize = 10;
/// The uniform share mixed into the importance distribution (`uniform_prob`).
const UNIFORM_SHARE: f64 = 0.001;
/// Users per chain pass when scoring.
const SCORE_CHUNK: usize = 1024;

impl ModelConfig for DiffRecConfig {
    const MODEL: &'static str = "diffrec";

    const SEED_KEYS: &'static [&'static str] = &["init_seed"];

    fn preset(preset: Preset) -> Self {
        DiffRecConfig {
            preset,
            ..Self::ml1m()
        }
    }

    fn check(&self) -> Result<(), ModelError> {
        if self.dims.is_empty() {
            return Err(ModelError::config(
                "dims",
                "must list at least one hidden layer size",
            ));
        }
        for &h in &self.dims {
            check_range("dims", h, 1, 1 << 20)?;
        }
        check_range("emb_size", self.emb_size, 1, 4096)?;
        check_dropout(self.dropout)?;
        check_lr(self.lr)?;
        check_range("batch_size", self.batch_size, 1, 1 << 24)?;
        self.schedule().map(|_| ())
    }

    fn trainer_defaults(&self) -> TrainerConfig {
        TrainerConfig {
            epochs: 1000,
            patience: 2,
            eval_every: 5,
            valid_metric: "recall@20".to_string(),
            metric_decimals: 15,
            ks: vec![20],
            ..TrainerConfig::default()
        }
    }
}

/// The importance sampler of `t`: the last [`HISTORY`] weighted losses of each step.
#[derive(Debug, Clone, PartialEq)]
struct StepSampler {
    /// `[T, HISTORY]`, oldest first.
    history: Vec<f64>,
    /// Losses recorded per step (at most [`HISTORY`]).
    count: Vec<usize>,
}

impl StepSampler {
    fn new(steps: usize) -> Self {
        StepSampler {
            history: vec![0.0; steps * HISTORY],
            count: vec![0; steps],
        }
    }

    fn steps(&self) -> usize {
        self.count.len()
    }

    /// `b` steps and their `p_t` (uniform and 1 until every step has a full history).
    fn sample(&self, b: usize, rng: &mut ChaCha8Rng) -> (Vec<usize>, Vec<f64>) {
        let t_max = self.steps();
        if self.count.iter().any(|&c| c < HISTORY) {
            let t = (0..b).map(|_| rng.random_range(0..t_max)).collect();
            return (t, vec![1.0; b]);
        }
        let root: Vec<f64> = self
            .history
            .chunks_exact(HISTORY)
            .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / HISTORY as f64).sqrt())
            .collect();
        let total: f64 = root.iter().sum();
        let p: Vec<f64> = root
            .iter()
            .map(|r| r / total * (1.0 - UNIFORM_SHARE) + UNIFORM_SHARE / t_max as f64)
            .collect();
        let mut cdf = Vec::with_capacity(t_max);
        let mut acc = 0.0;
        for v in &p {
            acc += v;
            cdf.push(acc);
        }
        let mut steps = Vec::with_capacity(b);
        let mut pt = Vec::with_capacity(b);
        for _ in 0..b {
            let u = rng.random::<f64>() * acc;
            let t = cdf.partition_point(|&c| c <= u).min(t_max - 1);
            steps.push(t);
            pt.push(p[t] * t_max as f64);
        }
        (steps, pt)
    }

    fn record(&mut self, t: usize, loss: f64) {
        let h = &mut self.history[t * HISTORY..][..HISTORY];
        if self.count[t] == HISTORY {
            h.copy_within(1.., 0);
            h[HISTORY - 1] = loss;
        } else {
            h[self.count[t]] = loss;
            self.count[t] += 1;
        }
    }
}

/// The sampler as saved: the losses as their bit patterns, so that a resumed run samples
/// exactly as the uninterrupted one (a decimal round trip may move the last bit).
#[derive(Serialize, Deserialize)]
struct SamplerFile {
    count: Vec<usize>,
    history_bits: Vec<u64>,
}

impl From<&StepSampler> for SamplerFile {
    fn from(s: &StepSampler) -> Self {
        SamplerFile {
            count: s.count.clone(),
            history_bits: s.history.iter().map(|v| v.to_bits()).collect(),
        }
    }
}

impl From<SamplerFile> for StepSampler {
    fn from(f: SamplerFile) -> Self {
        StepSampler {
            count: f.count,
            history: f.history_bits.into_iter().map(f64::from_bits).collect(),
        }
    }
}

/// The denoiser: the time layer `emb`, the first layer `in.0` (its `emb_size` time-feature
/// rows are a side input after the `I` item rows) and the rest.
#[derive(Debug, Clone, PartialEq)]
struct Net {
    time: Dense,
    first: Dense,
    rest: Mlp,
}

/// What scoring precomputes per set of weights: `M = W_out W_in` `[h_last, h0]`,
/// `b_out W_in` `[h0]`, and each step's constant `temb_t W_side + b_in` `[T, h0]`.
#[derive(Debug, Clone)]
struct ChainCache {
    m: Vec<f32>,
    bm: Vec<f32>,
    step_bias: Vec<f32>,
}

/// A DiffRec model: configuration, weights, schedule and training state.
#[derive(Debug, Clone)]
pub struct DiffRec {
    config: DiffRecConfig,
    n_items: usize,
    schedule: Schedule,
    params: ParamStore,
    net: Net,
    adam: Adam,
    grads: Grads,
    sampler: StepSampler,
    updates: u64,
    chain: OnceLock<ChainCache>,
}

/// The sampler's file in a training checkpoint.
const SAMPLER_FILE: &str = "importance.json";

impl DiffRec {
    /// A freshly initialised model for `n_items` items (weights from `config.init_seed`).
    pub fn new(config: DiffRecConfig, n_items: usize) -> Result<Self, ModelError> {
        config.check()?;
        let schedule = config.schedule()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.init_seed);
        let e = config.emb_size;
        // Widths: [I, reversed dims] in, [dims, I] out.
        let mut widths = vec![n_items];
        widths.extend(config.dims.iter().rev());
        widths.extend(config.dims.iter().skip(1));
        widths.push(n_items);
        let n_in = config.dims.len();
        let n_layers = widths.len() - 1;
        let mut params = ParamStore::new();
        // The code initialises in_layers, out_layers, then emb_layer.
        let mut init = |i: usize, o: usize| {
            (
                xavier(&mut rng, i, o, Init::XavierNormal),
                normals(&mut rng, o, 0.001),
            )
        };
        let (w, b) = init(widths[0] + e, widths[1]);
        let first = Dense::new(
            &mut params,
            "in.0",
            (widths[0], e, widths[1]),
            Activation::Tanh,
            w,
            b,
        );
        let rest = Mlp::new(
            (1..n_layers)
                .map(|l| {
                    let name = if l < n_in {
                        format!("in.{l}")
                    } else {
                        format!("out.{}", l - n_in)
                    };
                    let f = if l + 1 < n_layers {
                        Activation::Tanh
                    } else {
                        Activation::Identity
                    };
                    let (w, b) = init(widths[l], widths[l + 1]);
                    Dense::new(&mut params, &name, (widths[l], 0, widths[l + 1]), f, w, b)
                })
                .collect(),
        );
        let (w, b) = init(e, e);
        let time = Dense::new(&mut params, "emb", (e, 0, e), Activation::Identity, w, b);
        let adam = new_adam(&params, config.lr);
        Ok(DiffRec {
            sampler: StepSampler::new(config.steps),
            config,
            n_items,
            schedule,
            grads: params.zero_grads(),
            params,
            net: Net { time, first, rest },
            adam,
            updates: 0,
            chain: OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DiffRecConfig {
        &self.config
    }

    /// Load a model saved by [`Recommender::save`] (weights and configuration; resuming
    /// training also needs [`Trainable::load_state`]).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let (n_items, table) = read_meta(dir, DiffRecConfig::MODEL)?;
        let config = encore_core::config::resolve_table::<DiffRecConfig>(table)
            .map_err(|e| ModelError::format(dir.join("config.toml"), e.to_string()))?
            .model;
        let mut model = DiffRec::new(config, n_items)
            .map_err(|e| ModelError::format(dir.join("config.toml"), e.to_string()))?;
        common::load_weights(dir, &mut model.params)?;
        Ok(model)
    }

    /// The sinusoids of `steps` `[rows, emb_size]`.
    fn sinusoids(&self, steps: &[usize]) -> Vec<f32> {
        let e = self.config.emb_size;
        let mut s = vec![0f32; steps.len() * e];
        time_embeddings(steps, e, &mut s);
        s
    }

    /// The training batch: the binary rows `x_0` `[B, I]` and the denoiser's input
    /// `dropout(√ᾱ_t x_0 + √(1 − ᾱ_t) ε)`. Each row draws its mask and noise from its own
    /// stream, seeded in order from `rng`, so the draws do not depend on the thread count;
    /// the noise of a dropped value is never drawn (it would be multiplied by 0).
    fn noisy_batch(
        &self,
        train: &InteractionMatrix,
        users: &[u32],
        steps: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> (Vec<f32>, Vec<f32>) {
        let n = self.n_items;
        let seeds: Vec<u64> = users.iter().map(|_| rng.next_u64()).collect();
        let mut x0 = vec![0f32; users.len() * n];
        let mut xin = vec![0f32; users.len() * n];
        let p = self.config.dropout;
        // Keep a value when a u32 draw is at least p · 2³² (probability 1 − p).
        let threshold = (p * 4_294_967_296.0).ceil().min(4_294_967_295.0) as u32;
        let scale = (1.0 / (1.0 - p)) as f32;
        x0.par_chunks_mut(n)
            .zip(xin.par_chunks_mut(n))
            .enumerate()
            .for_each(|(r, (x0r, xr))| {
                for &i in train.row(users[r] as usize) {
                    x0r[i as usize] = 1.0;
                }
                let t = steps[r];
                let a = self.schedule.alpha_bar(t);
                let (ca, cb) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
                let mut rr = ChaCha8Rng::seed_from_u64(seeds[r]);
                // Per value: the dropout draw, then (only for a kept value: a dropped one is
                // 0 whatever its noise) the noise draw.
                for (x, &v) in xr.iter_mut().zip(x0r.iter()) {
                    *x = if p == 0.0 || rr.next_u32() >= threshold {
                        let e: f32 = StandardNormal.sample(&mut rr);
                        scale * (ca * v + cb * e)
                    } else {
                        0.0
                    };
                }
            });
        (x0, xin)
    }

    /// One gradient step on `users`; returns the batch's mean loss.
    fn step(&mut self, train: &InteractionMatrix, users: &[u32], rng: &mut ChaCha8Rng) -> f64 {
        let (steps, pt) = self.sampler.sample(users.len(), rng);
        let (x0, xin) = self.noisy_batch(train, users, &steps, rng);
        let grads = std::mem::take(&mut self.grads);
        let (total, row_losses, mut grads) = self.loss_and_grads(x0, &xin, &steps, &pt, grads);
        for (&t, &l) in steps.iter().zip(&row_losses) {
            self.sampler.record(t, l);
        }
        adam_step(&mut self.adam, &mut self.params, &mut grads);
        self.grads = grads;
        self.updates += 1;
        self.chain = OnceLock::new();
        total
    }

    /// The batch loss `mean_r w_t · mean_i (x_0 − x̂_0)² / p_t` for the binary rows `x0`
    /// `[B, I]` and the denoiser input `xin`, each row's weighted loss `w_t · mse` (what the
    /// sampler records), and every parameter's gradient (written over `grads`).
    fn loss_and_grads(
        &self,
        mut x0: Vec<f32>,
        xin: &[f32],
        steps: &[usize],
        pt: &[f64],
        mut grads: Grads,
    ) -> (f64, Vec<f64>, Grads) {
        let (b, n, e) = (steps.len(), self.n_items, self.config.emb_size);
        let store = &self.params;
        let Net { time, first, rest } = &self.net;
        // Forward.
        let sinus = self.sinusoids(steps);
        let temb = time.forward(store, &sinus, None, b);
        let h1 = first.forward(store, xin, Some(Side::new(&temb, 1)), b);
        let mut out = vec![0f32; b * n];
        let trace = rest.forward_into(store, h1, None, b, &mut out);
        // The loss, and its gradient with respect to the output into x0's buffer.
        let mut total = 0.0;
        let mut row_losses = Vec::with_capacity(b);
        for r in 0..b {
            let (x, o) = (&mut x0[r * n..][..n], &out[r * n..][..n]);
            let mse = x
                .iter()
                .zip(o)
                .map(|(&x, &o)| ((x - o) as f64).powi(2))
                .sum::<f64>()
                / n as f64;
            let w = self.loss_weight(steps[r]);
            row_losses.push(w * mse);
            total += w * mse / pt[r];
            let c = (2.0 * w / (pt[r] * n as f64 * b as f64)) as f32;
            x.iter_mut().zip(o).for_each(|(x, &o)| *x = c * (o - *x));
        }
        // Backward: the layers after the first, then the first by hand (no gradient for
        // its item input, the noisy row: it is data), then the time layer.
        let mut dh1 = Vec::new();
        rest.backward_into(store, &trace, &out, x0, None, b, &mut grads, &mut dh1);
        let h0 = first.outputs();
        tanh_backward(&mut dh1, trace.input(0));
        let w1 = store.get(first.weight);
        let mut dtemb = vec![0f32; b * e];
        {
            let (gw, gb) = grads.get2_mut(first.weight, first.bias);
            let (gw_items, gw_time) = gw.split_at_mut(n * h0);
            let dh1: &[f32] = &dh1;
            rayon::join(
                || {
                    matmul(
                        gw_items,
                        Mat::new(xin, b, n).t(),
                        Mat::new(dh1, b, h0),
                        false,
                    )
                },
                || {
                    matmul(
                        gw_time,
                        Mat::new(&temb, b, e).t(),
                        Mat::new(dh1, b, h0),
                        false,
                    );
                    gb.copy_from_slice(&col_sums(dh1, h0));
                    matmul(
                        &mut dtemb,
                        Mat::new(dh1, b, h0),
                        Mat::new(&w1[n * h0..], e, h0).t(),
                        false,
                    );
                },
            );
        }
        let mut unused = Vec::new();
        time.backward(
            store,
            &sinus,
            &[],
            &mut dtemb,
            None,
            b,
            &mut grads,
            &mut unused,
        );
        (total / b as f64, row_losses, grads)
    }

    /// `w_t = SNR(t − 1) − SNR(t)`, `w_0 = 1`.
    fn loss_weight(&self, t: usize) -> f64 {
        if t == 0 {
            return 1.0;
        }
        let snr = |t: usize| {
            let a = self.schedule.alpha_bar(t);
            a / (1.0 - a)
        };
        snr(t - 1) - snr(t)
    }

    fn chain_cache(&self) -> ChainCache {
        let store = &self.params;
        let Net { time, first, rest } = &self.net;
        let (n, h0, e, t_max) = (
            self.n_items,
            first.outputs(),
            self.config.emb_size,
            self.config.steps,
        );
        let last = rest.layers().last().expect("at least one layer");
        let hl = last.inputs();
        let w_in = &store.get(first.weight)[..n * h0];
        let mut m = vec![0f32; hl * h0];
        matmul(
            &mut m,
            Mat::new(store.get(last.weight), hl, n),
            Mat::new(w_in, n, h0),
            false,
        );
        let mut bm = vec![0f32; h0];
        matmul(
            &mut bm,
            Mat::new(store.get(last.bias), 1, n),
            Mat::new(w_in, n, h0),
            false,
        );
        let steps: Vec<usize> = (0..t_max).collect();
        let temb = time.forward(store, &self.sinusoids(&steps), None, t_max);
        let mut step_bias = vec![0f32; t_max * h0];
        matmul(
            &mut step_bias,
            Mat::new(&temb, t_max, e),
            Mat::new(&store.get(first.weight)[n * h0..], e, h0),
            false,
        );
        let b_in = store.get(first.bias);
        step_bias
            .chunks_exact_mut(h0)
            .for_each(|row| row.iter_mut().zip(b_in).for_each(|(v, b)| *v += b));
        ChainCache { m, bm, step_bias }
    }

    /// The reverse chain from the binary rows `x` (`sampling_steps = 0`), `T` steps of
    /// posterior means, into `out` `[rows, I]` (see the module documentation for the order
    /// of the products).
    fn denoise(&self, x: &Csr, out: &mut [f32]) {
        let cache = self.chain.get_or_init(|| self.chain_cache());
        let store = &self.params;
        let (b, n) = (x.n_rows(), self.n_items);
        let h0 = self.net.first.outputs();
        let w_in = &store.get(self.net.first.weight)[..n * h0];
        let mut u = x.times_dense(w_in, &vec![0f32; h0]);
        let (last, hidden) = self.net.rest.layers().split_last().expect("a layer");
        let mut h = vec![0f32; b * h0];
        let mut g = vec![0f32; b * h0];
        for t in (0..self.config.steps).rev() {
            let sb = &cache.step_bias[t * h0..][..h0];
            h.resize(b * h0, 0.0);
            h.par_chunks_mut(h0)
                .zip(u.par_chunks(h0))
                .for_each(|(h, u)| {
                    h.iter_mut()
                        .zip(u)
                        .zip(sb)
                        .for_each(|((h, u), s)| *h = u + s);
                });
            tanh_inplace(&mut h);
            for layer in hidden {
                h = layer.forward(store, &h, None, b);
            }
            let (c1, c2) = self.schedule.posterior_mean_coefs(t);
            let (c1, c2) = (c1 as f32, c2 as f32);
            if t > 0 {
                matmul(
                    &mut g,
                    Mat::new(&h, b, last.inputs()),
                    Mat::new(&cache.m, last.inputs(), h0),
                    false,
                );
                g.par_chunks_mut(h0)
                    .zip(u.par_chunks_mut(h0))
                    .for_each(|(g, u)| {
                        for ((u, g), bm) in u.iter_mut().zip(g.iter()).zip(&cache.bm) {
                            *u = c1 * (g + bm) + c2 * *u;
                        }
                    });
            } else {
                // c₂(0) = 0: the last mean is c₁(0) x̂_0.
                last.forward_into(store, &h, None, b, out);
                out.par_iter_mut().for_each(|v| *v *= c1);
            }
        }
    }

    /// Gradient updates made so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}

impl Recommender for DiffRec {
    fn name(&self) -> &'static str {
        DiffRecConfig::MODEL
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_users(&self, users: &[u32], input: &InteractionMatrix, out: &mut [f32]) {
        check_out(out, users.len(), self.n_items);
        for (chunk, out) in users
            .chunks(SCORE_CHUNK)
            .zip(out.chunks_mut(SCORE_CHUNK * self.n_items))
        {
            let x = SparseBatch::from_users(input, chunk).to_csr();
            self.denoise(&x, out);
        }
    }

    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
        common::score_history(self, history, out)
    }

    fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        let last = self.net.rest.layers().last()?;
        Some(ItemRepresentation {
            source: "the denoiser's output weights (one column per item), cosine",
            vectors: ItemVectors::Columns {
                values: self.params.get(last.weight),
                dim: last.inputs(),
            },
        })
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        common::save_model(dir, &self.config, self.n_items, &self.params)?;
        Ok(())
    }
}

impl Trainable for DiffRec {
    fn train_epoch(&mut self, ctx: EpochContext<'_>) -> Result<BTreeMap<String, f64>, ModelError> {
        let (n_items, batch_size) = (self.n_items, self.config.batch_size);
        common::run_epoch(ctx, n_items, batch_size, |train, batch, rng| -> LossParts {
            vec![("loss", self.step(train, batch, rng))]
        })
    }

    fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
        self.save(dir)?;
        common::save_training_extras(dir, &self.params, &self.adam, self.updates)?;
        Ok(encore_io::write_json(
            &dir.join(SAMPLER_FILE),
            &SamplerFile::from(&self.sampler),
        )?)
    }

    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
        let loaded = DiffRec::load(dir)?;
        if loaded.n_items != self.n_items || loaded.config != self.config {
            return Err(ModelError::format(
                dir.join("config.toml"),
                "the checkpoint's configuration or catalogue differs from this run's",
            ));
        }
        let path = dir.join(SAMPLER_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let sampler: StepSampler = serde_json::from_str::<SamplerFile>(&text)
            .map_err(|e| ModelError::format(&path, format!("not a valid sampler state: {e}")))?
            .into();
        if sampler.count.len() != self.config.steps
            || sampler.history.len() != self.config.steps * HISTORY
            || sampler.count.iter().any(|&c| c > HISTORY)
        {
            return Err(ModelError::format(
                &path,
                format!(
                    "expected {} steps of at most {HISTORY} losses",
                    self.config.steps
                ),
            ));
        }
        self.params = loaded.params;
        self.updates = common::load_training_extras(dir, &self.params, &mut self.adam)?;
        self.sampler = sampler;
        self.chain = OnceLock::new();
        Ok(())
    }
}

/// DiffRec's registry entry.
pub fn entry() -> ModelEntry {
    ModelEntry::trained::<DiffRec>(
        "DiffRec (Wang et al. 2023): diffusion on the interaction row, the official ML-1M setting",
    )
}

impl TrainedModel for DiffRec {
    type Config = DiffRecConfig;
    fn init(c: &RunConfig<DiffRecConfig>, input: &FitInput<'_>) -> Result<Self, ModelError> {
        if input.conditioning.is_some() {
            return Err(ModelError::config(
                "conditioning",
                "DiffRec takes no item features",
            ));
        }
        DiffRec::new(c.model.clone(), input.train.n_items())
    }
    fn load(dir: &Path) -> Result<Self, ModelError> {
        DiffRec::load(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{cpu, float_tensor, linear, param_tensor, to_vec};
    use burn::tensor::Tensor;

    fn tiny_config() -> DiffRecConfig {
        DiffRecConfig {
            dims: vec![6, 9],
            emb_size: 4,
            steps: 7,
            batch_size: 4,
            ..DiffRecConfig::ml1m()
        }
    }

    fn tiny_matrix(n_items: u32) -> InteractionMatrix {
        let rows: Vec<Vec<u32>> = (0..11u32)
            .map(|u| {
                (0..(u % 5 + 2))
                    .map(|j| (u * 7 + j * 5) % n_items)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        InteractionMatrix::from_rows(n_items as usize, &rows)
    }

    fn epoch(m: &mut DiffRec, train: &InteractionMatrix, rng: &mut ChaCha8Rng) -> f64 {
        let progress = |_: u64| {};
        m.train_epoch(EpochContext {
            train,
            epoch: 0,
            rng,
            progress: &progress,
        })
        .unwrap()["loss"]
    }

    /// The default schedule is the code's: variances `1 − ᾱ_t` linear from 2.5e-5 to 5e-5
    /// before `β_0` is fixed to 1e-5, so `ᾱ_t = (1 − 1e-5)(1 − v_t)/(1 − v_0)`; `"linear"`
    /// has linear `β` after `β_0`. The loss weights are `SNR(t − 1) − SNR(t)`, 1 at `t = 0`.
    #[test]
    fn schedule_is_the_official_linear_variance() {
        let c = DiffRecConfig::ml1m();
        let s = c.schedule().unwrap();
        assert_eq!(s.steps(), 40);
        let v = |t: usize| 2.5e-5 + (5e-5 - 2.5e-5) * t as f64 / 39.0;
        assert_eq!(s.beta(0), 1e-5);
        for t in 1..40 {
            let want = (1.0 - 1e-5) * (1.0 - v(t)) / (1.0 - v(0));
            assert!((s.alpha_bar(t) - want).abs() < 1e-15, "t = {t}");
        }
        let m = DiffRec::new(c.clone(), 5).unwrap();
        assert_eq!(m.loss_weight(0), 1.0);
        let snr = |t: usize| s.alpha_bar(t) / (1.0 - s.alpha_bar(t));
        for t in 1..40 {
            assert!((m.loss_weight(t) - (snr(t - 1) - snr(t))).abs() < 1e-6);
            assert!(m.loss_weight(t) > 0.0);
        }
        let lin = DiffRecConfig {
            noise_schedule: NoiseSchedule::Linear,
            ..c
        }
        .schedule()
        .unwrap();
        assert_eq!(lin.beta(0), 1e-5);
        assert!((lin.beta(39) - 5e-5).abs() < 1e-18 && (lin.beta(1) - v(1)).abs() < 1e-18);
    }

    /// The importance sampler: uniform with `p_t = 1` until every step holds 10 losses, then
    /// `p ∝ √(mean l²)` mixed with 0.1% uniform; the history keeps the 10 most recent.
    #[test]
    fn importance_sampler_follows_the_loss_history() {
        let mut s = StepSampler::new(3);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for i in 0..HISTORY {
            s.record(0, 1.0 + i as f64);
            s.record(1, 2.0);
        }
        let (t, p) = s.sample(500, &mut rng);
        assert!(p.iter().all(|&p| p == 1.0));
        assert!((0..3).all(|k| t.iter().filter(|&&x| x == k).count() > 100));
        for _ in 0..HISTORY {
            s.record(2, 6.0);
        }
        // Step 0's history is now 2..=11 after one more: the oldest (1) left.
        s.record(0, 11.0);
        assert_eq!(
            s.history[..HISTORY],
            (2..=11).map(f64::from).collect::<Vec<_>>()[..]
        );
        let rms0 = ((2..=11).map(|x| (x * x) as f64).sum::<f64>() / 10.0).sqrt();
        let total = rms0 + 2.0 + 6.0;
        let want = |r: f64| r / total * 0.999 + 0.001 / 3.0;
        let n = 200_000;
        let (t, p) = s.sample(n, &mut rng);
        for (k, r) in [(0usize, rms0), (1, 2.0), (2, 6.0)] {
            let share = t.iter().filter(|&&x| x == k).count() as f64 / n as f64;
            assert!(
                (share - want(r)).abs() < 0.005,
                "step {k}: {share} vs {}",
                want(r)
            );
            let pk = p[t.iter().position(|&x| x == k).unwrap()];
            assert!((pk - want(r) * 3.0).abs() < 1e-12);
        }
    }

    /// The hand-written loss and gradients against burn's autodiff of the same network and
    /// loss, at steps across the schedule, with importance weights `p_t` other than 1.
    #[test]
    fn backward_matches_burn_autodiff() {
        let n = 13u32;
        let m = DiffRec::new(tiny_config(), n as usize).unwrap();
        let train = tiny_matrix(n);
        let users = [3u32, 0, 7, 10, 5];
        let steps = vec![0usize, 6, 3, 1, 5];
        let pt = vec![1.0, 0.5, 2.0, 1.25, 0.8];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (x0, xin) = m.noisy_batch(&train, &users, &steps, &mut rng);
        let (loss, rows, grads) =
            m.loss_and_grads(x0.clone(), &xin, &steps, &pt, m.params.zero_grads());
        let b = users.len();
        let device = cpu().autodiff();
        let ps = &m.params;
        let ids: Vec<_> = ps.ids().collect();
        // Registration order: in.0, in.1, out.0, out.1 (weight, bias each), then emb.
        let ws: Vec<_> = ids
            .chunks(2)
            .map(|wb| param_tensor::<2>(ps, wb[0], &device))
            .collect();
        let bs: Vec<_> = ids
            .chunks(2)
            .map(|wb| param_tensor::<1>(ps, wb[1], &device))
            .collect();
        let w = |i: usize| ws[i].clone();
        let bias = |i: usize| bs[i].clone();
        let e = m.config.emb_size;
        let sinus = float_tensor(m.sinusoids(&steps), [b, e], &device);
        let temb = linear(sinus, &w(4), &bias(4));
        let x = float_tensor(xin.clone(), [b, n as usize], &device);
        let mut h = linear(Tensor::cat(vec![x, temb], 1), &w(0), &bias(0)).tanh();
        for l in 1..4 {
            h = linear(h, &w(l), &bias(l));
            if l < 3 {
                h = h.tanh();
            }
        }
        let target = float_tensor(x0, [b, n as usize], &device);
        let coef: Vec<f32> = (0..b)
            .map(|r| (m.loss_weight(steps[r]) / pt[r] / (n as f64 * b as f64)) as f32)
            .collect();
        let burn_loss = ((target - h).powf_scalar(2.0) * float_tensor(coef, [b, 1], &device)).sum();
        assert!((to_vec(burn_loss.clone())[0] as f64 - loss).abs() < 1e-4 * loss.abs());
        assert_eq!(rows.len(), b);
        let g = burn_loss.backward();
        for (k, &id) in ids.iter().enumerate() {
            let want = if k % 2 == 0 {
                to_vec(ws[k / 2].grad(&g).unwrap())
            } else {
                to_vec(bs[k / 2].grad(&g).unwrap())
            };
            let got = grads.get(id);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, w) in got.iter().zip(&want) {
                assert!(
                    (a - w).abs() <= 1e-4 * scale + 1e-7,
                    "{}: {a} vs {w}",
                    ps.name(id)
                );
            }
            assert!(got.iter().any(|&v| v != 0.0), "{}", ps.name(id));
        }
    }

    /// The reverse chain as the code runs it: `x̂_0 = f(x_t, t)` on the `I`-wide row, then
    /// `x_{t−1} = c₁ x̂_0 + c₂ x_t`, for every step from `T − 1` down to 0.
    fn direct_chain(m: &DiffRec, rows: &[Vec<u32>]) -> Vec<f32> {
        let (n, b) = (m.n_items, rows.len());
        let mut x = vec![0f32; b * n];
        for (r, row) in rows.iter().enumerate() {
            row.iter().for_each(|&i| x[r * n + i as usize] = 1.0);
        }
        for t in (0..m.config.steps).rev() {
            let temb = m
                .net
                .time
                .forward(&m.params, &m.sinusoids(&vec![t; b]), None, b);
            let h = m
                .net
                .first
                .forward(&m.params, &x, Some(Side::new(&temb, 1)), b);
            let (x0, _) = m.net.rest.forward(&m.params, h, None, b);
            let (c1, c2) = m.schedule.posterior_mean_coefs(t);
            x.iter_mut()
                .zip(&x0)
                .for_each(|(x, x0)| *x = c1 as f32 * x0 + c2 as f32 * *x);
        }
        x
    }

    /// Scoring's reordered chain (the first layer's product carried through the linear
    /// output layer and posterior mean) gives the code's step-by-step chain to f32 rounding,
    /// after some training (so the weights are not the initial ones), and the same ranking.
    #[test]
    fn fast_chain_equals_the_direct_chain() {
        let n = 40u32;
        let mut m = DiffRec::new(
            DiffRecConfig {
                dims: vec![16, 24],
                ..tiny_config()
            },
            n as usize,
        )
        .unwrap();
        let train = tiny_matrix(n);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..5 {
            epoch(&mut m, &train, &mut rng);
        }
        let users: Vec<u32> = (0..train.n_users() as u32).collect();
        let mut fast = vec![0f32; users.len() * n as usize];
        m.score_users(&users, &train, &mut fast);
        let rows: Vec<Vec<u32>> = users
            .iter()
            .map(|&u| train.row(u as usize).to_vec())
            .collect();
        let direct = direct_chain(&m, &rows);
        let scale = direct.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in fast.iter().zip(&direct) {
            assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
        }
        // The chain moved the scores away from the input row.
        assert!(fast.iter().any(|&v| v.abs() > 1e-3));
    }

    /// Training lowers the loss; a step gives the same weights on one thread and on two;
    /// fold-in of a history equals scoring that row; save + load scores identically; a run
    /// resumed from `save_state` continues exactly as the uninterrupted one (weights, Adam,
    /// sampler history).
    #[test]
    fn trains_resumes_and_scores_exactly() {
        let n = 300u32;
        let rows: Vec<Vec<u32>> = (0..120u32)
            .map(|u| {
                (0..25)
                    .map(|j| (u * 37 + j * 11) % n)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        let train = InteractionMatrix::from_rows(n as usize, &rows);
        let cfg = DiffRecConfig {
            dims: vec![32, 48],
            batch_size: 50,
            ..DiffRecConfig::ml1m()
        };
        let run = |threads: usize, epochs: usize| {
            encore_nn::on_threads(threads, || {
                let mut m = DiffRec::new(cfg.clone(), n as usize).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(9);
                let losses: Vec<f64> = (0..epochs)
                    .map(|_| epoch(&mut m, &train, &mut rng))
                    .collect();
                (m, rng, losses)
            })
        };
        // 10 epochs: 30 steps, enough for every step's history to fill (importance
        // sampling on).
        let (m1, _, losses) = run(1, 10);
        let (m2, _, _) = run(2, 10);
        assert_eq!(m1.params.values(), m2.params.values());
        assert_eq!(m1.sampler, m2.sampler);
        assert!(m1.sampler.count.iter().all(|&c| c == HISTORY));
        assert!(losses[9] < losses[0], "{losses:?}");

        let users: Vec<u32> = (0..train.n_users() as u32).collect();
        let mut scores = vec![0f32; users.len() * n as usize];
        m1.score_users(&users, &train, &mut scores);
        let mut one = vec![0f32; n as usize];
        m1.score_history(train.row(7), &mut one).unwrap();
        assert_eq!(one, scores[7 * n as usize..][..n as usize]);

        // Similar items come from the output layer's item columns: an item is its own
        // nearest neighbour.
        let rep = m1.item_representation().unwrap();
        let mut sims = vec![0f32; n as usize];
        rep.similarities(5, &mut sims);
        let best = (0..n as usize)
            .max_by(|&a, &b| sims[a].total_cmp(&sims[b]))
            .unwrap();
        assert_eq!(best, 5);

        let dir = tempfile::tempdir().unwrap();
        m1.save(dir.path()).unwrap();
        let loaded = DiffRec::load(dir.path()).unwrap();
        let mut again = vec![0f32; scores.len()];
        loaded.score_users(&users, &train, &mut again);
        assert_eq!(scores, again);

        // Resume: 6 epochs, checkpoint, 4 more == 10 straight.
        let (m6, mut rng, _) = run(1, 6);
        let ck = tempfile::tempdir().unwrap();
        m6.save_state(ck.path()).unwrap();
        let mut resumed = DiffRec::new(cfg.clone(), n as usize).unwrap();
        resumed.load_state(ck.path()).unwrap();
        for _ in 0..4 {
            epoch(&mut resumed, &train, &mut rng);
        }
        assert_eq!(resumed.params.values(), m1.params.values());
        assert_eq!(resumed.sampler, m1.sampler);
    }

    /// `configs/diffrec.toml` is the official setting with the official protocol.
    #[test]
    fn shipped_config_is_the_official_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/diffrec.toml");
        let c = encore_core::config::resolve::<DiffRecConfig>(Some(&path), &[]).unwrap();
        assert_eq!(c.model, DiffRecConfig::ml1m());
        assert_eq!((c.train.eval_every, c.train.patience), (5, 2));
        assert_eq!(c.train.valid_metric, "recall@20");
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = |f: &dyn Fn(&mut DiffRecConfig), key: &str| {
            let mut c = DiffRecConfig::ml1m();
            f(&mut c);
            let e = DiffRec::new(c, 10).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        };
        bad(&|c| c.steps = 0, "steps");
        bad(&|c| c.noise_min = 0.0, "noise_min");
        bad(&|c| c.noise_max = 300.0, "noise_max");
        bad(&|c| c.noise_max = 0.001, "noise_max");
        bad(&|c| c.noise_max = c.noise_min, "noise_max");
        bad(&|c| c.noise_scale = -1.0, "noise_scale");
        bad(&|c| c.dims.clear(), "dims");
        bad(&|c| c.dropout = 1.0, "dropout");
        bad(&|c| c.emb_size = 0, "emb_size");
        bad(&|c| c.lr = 0.0, "lr");
        // Many steps of large noise: ᾱ_T underflows.
        bad(
            &|c| {
                c.noise_schedule = NoiseSchedule::Linear;
                c.steps = 10_000;
                c.noise_scale = 1.0;
                c.noise_min = 0.5;
                c.noise_max = 0.9;
            },
            "steps",
        );
    }
}
