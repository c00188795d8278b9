//! MultiVAE (Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering"; the
//! reference is their released notebook), MODELS.md "MultiVAE".
//!
//! - Encoder input `x̃ = dropout(x_u / ‖x_u‖₂, p)` in training, `x_u / ‖x_u‖₂` when scoring.
//! - Encoder `I → hidden (tanh) → 2d`, split into `μ` and `log σ²`.
//! - `z = μ + σ ⊙ ε`, `ε ~ N(0, noise_std²)` in training; `z = μ` when scoring.
//! - Decoder `d → hidden (tanh) → I` logits (the hidden sizes reversed).
//! - Loss per user `−Σ_i x_ui log_softmax(logits)_i + β · KL(N(μ, σ²) ‖ N(0, 1))`, averaged over
//!   the batch, `β = min(anneal_cap, updates / total_anneal_steps)`; the update counter is saved
//!   with the training state, so annealing continues across epochs and resumes.
//! - Adam, no weight decay.
//!
//! Presets: `original` (the notebook: `d = 200`, unit noise, batch 500, Xavier-uniform weights,
//! biases from a truncated N(0, 0.001²)) and `recbole` (RecBole 1.2: `latent_dimension = 128`
//! split into `μ | log σ²`, so the real `d = 64`; noise std 0.01; batch 2048 users;
//! Xavier-normal weights, zero biases).
//!
//! Deviations, all negligible: β uses the update count before the step (the notebook's order;
//! RecBole increments first, so its β is one step ahead: `1/200000` on its first step, where
//! ours is 0); Adam's epsilon is PyTorch's placement for both presets.
//!
//! Checked against RecBole 1.2's `multivae.py` for the `recbole` preset, with no other
//! difference found: input `F.normalize` then dropout; encoder `I → 600 → 128` with `tanh`
//! between layers, `μ | log σ²` its two halves; `z = μ + 0.01 ε ⊙ exp(½ log σ²)`; decoder
//! `64 → 600 → I`; `ce = −(log_softmax(z) · x).sum(1).mean()` (a mean over users, as here);
//! `kl = −½ mean_u Σ_j (1 + log σ² − μ² − σ²)` (the same); Xavier-normal weights, zero biases.
//!
//! Implementation: the forward and backward passes are written by hand (`encore_nn` says why);
//! `tests::hand_written_backward_matches_burn_autodiff` checks loss and gradients against the
//! same model built as a burn autodiff graph.
//!
//! MultiVAE-C (MODELS.md "Conditioning", config `conditioning` other than `none`, built with
//! [`MultiVae::with_conditioning`]): `h = tanh(W₁ x̃)` as above, `[μ, log σ²] = W₂ [h ; c_u]`
//! (the last encoder layer's input is extended), decoder first layer `tanh(W₃ [z ; c_u])`.
//! `c_u` is computed from the rows the model is given (the training row in a step, the input
//! row when scoring, the history in fold-in), never from anything else, so held-out items
//! cannot leak into it (SPEC §3; [`crate::Conditioning`]). The two extended weights gain
//! `cond_dim` rows appended after the usual ones, so `W [h ; c] = h W[..h] + c W[h..]` is two
//! products into the layer's output and no concatenated copy is made. With `none` the model is
//! bit-identical to the plain one. The item features are saved beside the weights as
//! `conditioning.safetensors`.
//!
//! Weights are saved as safetensors with `[d_input, d_output]` matrices (burn's convention, the
//! transpose of PyTorch's `nn.Linear.weight`): `encoder.0.weight` `[I, hidden]`,
//! `encoder.0.bias`, ..., `decoder.<n>.weight` `[hidden, I]`, `decoder.<n>.bias`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

#[cfg(test)]
use burn::tensor::{activation::log_softmax, Device, Tensor};
use encore_core::config::RunConfig;
use encore_core::config::{check_range, ModelConfig, Preset, TrainerConfig};
use encore_core::registry::{FitInput, ModelEntry, TrainedModel};
use encore_core::{
    EpochContext, ItemRepresentation, ItemVectors, ModelError, Recommender, Trainable,
};
use encore_data::InteractionMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::common::{
    self, adam_step, bias, check_out, kl_weight, new_adam, normals, read_meta, xavier, Adam, Init,
    LossParts, SparseBatch,
};
#[cfg(test)]
use crate::common::{cpu, float_tensor, int_tensor, linear, param_tensor, sparse_linear, to_vec};
use crate::conditioning::{self, Conditioning, ConditioningKind};
use crate::latent_diffusion::{self, DiffusionKind, LatentDiffusion, MeanTypeKey};
use encore_nn::{
    Activation, Csr, Dense, Grads, Mat, Mlp, MlpTrace, PackedColumns, ParamStore, Side, SparseDense,
};

/// MultiVAE's configuration (see the module documentation for the two presets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiVaeConfig {
    /// `"original"` (Liang et al.'s notebook) or `"recbole"` (RecBole 1.2's defaults).
    pub preset: Preset,
    /// Hidden layer sizes of the encoder (the decoder uses them reversed). Each >= 1.
    /// Both presets: `[600]`.
    pub hidden_dims: Vec<usize>,
    /// Latent size `d` (the encoder outputs `2d`). original 200; recbole 64 (its
    /// `latent_dimension = 128` is split into `μ | log σ²`).
    pub latent_dim: usize,
    /// Input dropout probability, in `[0, 1)`. Both: 0.5.
    pub dropout: f64,
    /// Standard deviation of the reparameterisation noise `ε`. original 1.0; recbole 0.01.
    pub noise_std: f64,
    /// The largest KL weight `β`. Both: 0.2.
    pub anneal_cap: f64,
    /// Updates over which `β` grows linearly to the cap (0: always the cap). Both: 200,000.
    pub total_anneal_steps: u64,
    /// Adam learning rate, in `(0, 1]`. Both: 1e-3.
    pub lr: f64,
    /// Users per gradient step. original 500; recbole 2048.
    pub batch_size: usize,
    /// Weight initialiser: original `xavier_uniform`; recbole `xavier_normal`.
    pub init: Init,
    /// Standard deviation of the (truncated normal) bias initialisation; 0 gives zeros.
    /// original 0.001; recbole 0.
    pub bias_init_std: f64,
    /// Seed of the initial weights.
    pub init_seed: u64,
    /// Conditioning (MODELS.md "Conditioning"): `"none"` (plain MultiVAE) or the fusion the
    /// features come from, `"audio"`, `"lyrics"`, `"concat"`, `"tensor"` (MultiVAE-C, built
    /// with [`MultiVae::with_conditioning`]). Default `"none"`.
    #[serde(default)]
    pub conditioning: ConditioningKind,
    /// Dimensions of the fused features `dim(c_u)`, >= 1 (the CLI fuses to this size); only
    /// used when conditioned. Default 128 (SPEC §3).
    #[serde(default = "conditioning::default_dim")]
    pub cond_dim: usize,
    /// Latent diffusion (MODELS.md, the paper's "Ours (MultiVAE)"): `"none"` (default),
    /// `"paper"` (`T = 1000`) or `"diffrec"` (`T = 40`).
    #[serde(default)]
    pub diffusion: DiffusionKind,
    /// What the denoiser predicts: `"eps"` (default, Ho et al.) or `"x0"` (DiffRec).
    #[serde(default)]
    pub mean_type: MeanTypeKey,
    /// Weight `λ_diff` of the denoising loss, in `[0, 1e6]`. Default 1.
    #[serde(default = "latent_diffusion::default_lambda")]
    pub lambda_diff: f64,
    /// The denoiser's hidden layers (tanh). Default `[600, 600]`.
    #[serde(default = "latent_diffusion::default_hidden")]
    pub denoiser_hidden: Vec<usize>,
    /// Width of the sinusoidal time embedding (then a linear layer of the same width).
    /// Default 64.
    #[serde(default = "latent_diffusion::default_time_dim")]
    pub time_dim: usize,
    /// Where the reverse chain starts when scoring, `t_s` in `0..=T` (0: decode `μ`
    /// directly). Default: `T`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_steps: Option<usize>,
}

impl MultiVaeConfig {
    fn diffusion_keys(&self) -> latent_diffusion::Keys<'_> {
        latent_diffusion::Keys {
            kind: self.diffusion,
            mean_type: self.mean_type,
            lambda: self.lambda_diff,
            hidden: &self.denoiser_hidden,
            time_dim: self.time_dim,
            reverse_steps: self.reverse_steps,
        }
    }

    /// The `original` preset.
    pub fn original() -> Self {
        MultiVaeConfig {
            preset: Preset::Original,
            hidden_dims: vec![600],
            latent_dim: 200,
            dropout: 0.5,
            noise_std: 1.0,
            anneal_cap: 0.2,
            total_anneal_steps: 200_000,
            lr: 1e-3,
            batch_size: 500,
            init: Init::XavierUniform,
            bias_init_std: 0.001,
            init_seed: 2020,
            conditioning: ConditioningKind::None,
            cond_dim: conditioning::default_dim(),
            diffusion: DiffusionKind::None,
            mean_type: MeanTypeKey::Eps,
            lambda_diff: latent_diffusion::default_lambda(),
            denoiser_hidden: latent_diffusion::default_hidden(),
            time_dim: latent_diffusion::default_time_dim(),
            reverse_steps: None,
        }
    }

    /// The `recbole` preset.
    pub fn recbole() -> Self {
        MultiVaeConfig {
            preset: Preset::Recbole,
            latent_dim: 64,
            noise_std: 0.01,
            batch_size: 2048,
            init: Init::XavierNormal,
            bias_init_std: 0.0,
            ..Self::original()
        }
    }
}

impl ModelConfig for MultiVaeConfig {
    const MODEL: &'static str = "multivae";

    const SEED_KEYS: &'static [&'static str] = &["init_seed"];

    fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Original => Self::original(),
            Preset::Recbole => Self::recbole(),
        }
    }

    fn conditioning(&self) -> Option<(ConditioningKind, usize)> {
        conditioning::reported(self.conditioning, self.cond_dim)
    }

    fn check(&self) -> Result<(), ModelError> {
        if self.hidden_dims.is_empty() {
            return Err(ModelError::config(
                "hidden_dims",
                "must list at least one hidden layer size",
            ));
        }
        for &h in &self.hidden_dims {
            check_range("hidden_dims", h, 1, 1 << 20)?;
        }
        check_range("latent_dim", self.latent_dim, 1, 1 << 20)?;
        check_dropout(self.dropout)?;
        check_range("noise_std", self.noise_std, 0.0, 1e3)?;
        check_range("anneal_cap", self.anneal_cap, 0.0, 1e6)?;
        check_lr(self.lr)?;
        check_range("batch_size", self.batch_size, 1, 1 << 24)?;
        check_range("bias_init_std", self.bias_init_std, 0.0, 1.0)?;
        self.diffusion_keys().check()?;
        conditioning::check_config(self.cond_dim)
    }

    fn trainer_defaults(&self) -> TrainerConfig {
        TrainerConfig {
            // Liang et al.'s notebook trains 200 epochs; RecBole's default is 300.
            epochs: if self.preset == Preset::Recbole {
                300
            } else {
                200
            },
            ..TrainerConfig::default()
        }
    }
}

pub(crate) fn check_dropout(p: f64) -> Result<(), ModelError> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(ModelError::config(
            "dropout",
            format!("must be in [0, 1), got {p}"),
        ))
    }
}

pub(crate) fn check_lr(lr: f64) -> Result<(), ModelError> {
    if lr > 0.0 && lr <= 1.0 {
        Ok(())
    } else {
        Err(ModelError::config(
            "lr",
            format!("must be in (0, 1], got {lr}"),
        ))
    }
}

/// Users scored per forward pass when scoring (bounds memory at this many rows x items).
const SCORE_CHUNK: usize = 1024;

/// A MultiVAE model: its configuration, weights, and training state.
#[derive(Debug, Clone)]
pub struct MultiVae {
    config: MultiVaeConfig,
    n_items: usize,
    params: ParamStore,
    net: Net,
    adam: Adam,
    /// The gradient buffer, kept between steps (Adam zeroes it on the way): fresh pages for
    /// every step's few megabytes of gradients cost more than the products that fill them.
    grads: Grads,
    updates: u64,
    /// The item features `c_u` is computed from (MultiVAE-C); `None` for `conditioning = none`.
    cond: Option<Conditioning>,
    /// The latent diffusion part (`diffusion` not `"none"`).
    diffusion: Option<LatentDiffusion>,
    /// The decoder's output weight packed for scoring several fold-ins at once
    /// ([`Recommender::score_histories`]), made at the first such call (`None` inside: this
    /// CPU cannot give the one-row sums that way); emptied when the weights change.
    packed_logits: OnceLock<Option<PackedColumns>>,
}

/// One training step's draws for the diffusion term: a step per user and `ε` `[B, d]`.
pub(crate) struct DiffDraws {
    steps: Vec<usize>,
    eps: Vec<f32>,
}

/// MultiVAE's layers: the sparse first layer `encoder.0` (`tanh`), the rest of the encoder
/// (`tanh` between layers, linear output `[μ | log σ²]`) and the decoder (`tanh` between
/// layers, linear logits). MultiVAE-C's last encoder layer and first decoder layer have
/// `cond_dim` side-input rows (`[h ; c_u]`, `[z ; c_u]`).
#[derive(Debug, Clone, PartialEq)]
struct Net {
    first: SparseDense,
    encoder: Mlp,
    decoder: Mlp,
}

/// The layer tensors of one forward pass on burn: the reference implementation the
/// hand-written pass is checked against in the tests.
#[cfg(test)]
struct Layers {
    ws: Vec<Tensor<2>>,
    bs: Vec<Tensor<1>>,
}

#[cfg(test)]
impl Layers {
    /// Weights and biases in registration order (`encoder.0` ... `decoder.L`).
    fn new(params: &ParamStore, device: &Device) -> Self {
        let ids: Vec<_> = params.ids().collect();
        Layers {
            ws: ids
                .chunks(2)
                .map(|wb| param_tensor::<2>(params, wb[0], device))
                .collect(),
            bs: ids
                .chunks(2)
                .map(|wb| param_tensor::<1>(params, wb[1], device))
                .collect(),
        }
    }

    /// The gradients in parameter order (weight, bias per layer).
    fn grads(&self, grads: &burn::tensor::Gradients) -> Vec<Option<Vec<f32>>> {
        self.ws
            .iter()
            .zip(&self.bs)
            .flat_map(|(w, b)| [w.grad(grads).map(to_vec), b.grad(grads).map(to_vec)])
            .collect()
    }
}

/// One training step's loss parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepLoss {
    pub loss: f64,
    pub recon: f64,
    pub kl: f64,
    pub beta: f64,
    /// The denoising loss (before `λ_diff`); `None` without diffusion.
    pub diff: Option<f64>,
}

impl StepLoss {
    /// The parts under their log names.
    pub fn parts(&self) -> LossParts {
        let mut parts = vec![
            ("loss", self.loss),
            ("recon", self.recon),
            ("kl", self.kl),
            ("beta", self.beta),
        ];
        if let Some(d) = self.diff {
            parts.push(("diff", d));
        }
        parts
    }
}

/// What the forward pass keeps for the backward pass.
struct Trace {
    /// The encoder MLP's trace; its input is the first layer's output.
    enc: MlpTrace,
    /// The encoder's output `[B, 2d]` (`μ | log σ²`).
    enc_out: Vec<f32>,
    /// `σ = exp(½ log σ²)` `[B, d]` (training only).
    sigma: Vec<f32>,
    /// The decoder's trace; its input is `z`.
    dec: MlpTrace,
}

impl MultiVae {
    /// The forward pass on a (normalised, possibly dropped-out) sparse batch: the item logits
    /// `[B, I]` and the trace. `cond` holds the batch's conditioning vectors `[B, cond_dim]`
    /// (MultiVAE-C; `None` for the plain model). `eps` (`[B, d]`, already scaled by
    /// `noise_std`) gives `z = μ + σ ⊙ ε`; `None` gives `z = μ` (scoring). With `out`
    /// (`[B, I]`) the logits are written there instead (and the returned vector is empty).
    fn forward(
        &self,
        input: &Csr,
        cond: Option<&[f32]>,
        eps: Option<&[f32]>,
        out: Option<&mut [f32]>,
    ) -> (Vec<f32>, Trace) {
        let b = input.n_rows();
        let side = cond.map(|c| Side::new(c, 1));
        let (enc, enc_out, sigma, mut z) = self.encode_hand(input, side, eps);
        if eps.is_none() {
            self.denoise_for_scoring(&mut z, side);
        }
        let (logits, dec) = match out {
            Some(out) => (
                Vec::new(),
                self.net.decoder.forward_into(&self.params, z, side, b, out),
            ),
            None => self.net.decoder.forward(&self.params, z, side, b),
        };
        (
            logits,
            Trace {
                enc,
                enc_out,
                sigma,
                dec,
            },
        )
    }

    /// Scoring with latent diffusion: `μ` (in `z`) taken as `z_{t_s}` and denoised by the
    /// reverse chain; nothing without diffusion.
    fn denoise_for_scoring(&self, z: &mut [f32], side: Option<Side<'_>>) {
        if let Some(ld) = &self.diffusion {
            ld.denoiser.reverse(
                &self.params,
                &ld.schedule,
                ld.mean_type,
                z,
                ld.start,
                side,
                None,
            );
        }
    }

    /// The encoder: its trace, its output `[B, 2d]`, `σ` (training) and `z = μ + σ ⊙ ε`
    /// (`z = μ` without `eps`).
    fn encode_hand(
        &self,
        input: &Csr,
        side: Option<Side<'_>>,
        eps: Option<&[f32]>,
    ) -> (MlpTrace, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (b, d) = (input.n_rows(), self.config.latent_dim);
        let h = self.net.first.forward(&self.params, input);
        let (enc_out, enc) = self.net.encoder.forward(&self.params, h, side, b);
        let mut z = vec![0f32; b * d];
        let mut sigma = Vec::new();
        match eps {
            Some(eps) => {
                sigma = vec![0f32; b * d];
                for r in 0..b {
                    let row = &enc_out[r * 2 * d..][..2 * d];
                    for j in 0..d {
                        let s = (0.5 * row[d + j]).exp();
                        sigma[r * d + j] = s;
                        z[r * d + j] = row[j] + s * eps[r * d + j];
                    }
                }
            }
            None => {
                for r in 0..b {
                    z[r * d..][..d].copy_from_slice(&enc_out[r * 2 * d..][..d]);
                }
            }
        }
        (enc, enc_out, sigma, z)
    }

    /// Loss and gradients of one batch: `x` the raw binary rows, `input` the encoder's input,
    /// `eps` the noise. The logits' gradient is `(softmax · n_u − x) / B` (the multinomial
    /// log-likelihood and its log-softmax fused in one pass over each row); the layers'
    /// backward passes carry it to `z`, through the reparameterisation and the KL term to
    /// the encoder's output, and down to the first layer.
    #[allow(clippy::too_many_arguments)]
    fn loss_and_grads(
        &self,
        x: &Csr,
        input: &Csr,
        cond: Option<&[f32]>,
        eps: &[f32],
        beta: f64,
        draws: Option<&DiffDraws>,
        mut grads: Grads,
    ) -> (StepLoss, Grads) {
        let (b, d, n) = (x.n_rows(), self.config.latent_dim, self.n_items);
        let side = cond.map(|c| Side::new(c, 1));
        let (enc, enc_out, sigma, z) = self.encode_hand(input, side, Some(eps));
        // With latent diffusion the decoder reconstructs from the denoised ẑ_0.
        let pass = match (&self.diffusion, draws) {
            (Some(ld), Some(dr)) => Some(ld.denoiser.diffusion_pass(
                &self.params,
                &ld.schedule,
                ld.mean_type,
                &z,
                &dr.steps,
                &dr.eps,
                side,
            )),
            (None, None) => None,
            _ => panic!("diffusion draws are given exactly when the model has diffusion"),
        };
        let z_dec = match &pass {
            Some(p) => p.x0_hat.clone(),
            None => z,
        };
        let (mut dy, dec) = self.net.decoder.forward(&self.params, z_dec, side, b);
        let trace = Trace {
            enc,
            enc_out,
            sigma,
            dec,
        };
        let inv_b = 1.0 / b.max(1) as f32;
        // Fused log-softmax, multinomial loss and its gradient, four rows at a time (their
        // exponential sums run side by side, each in the order of a plain loop).
        const G: usize = 4;
        let recon_rows: Vec<f64> = dy
            .par_chunks_mut(n * G)
            .enumerate()
            .map(|(g, rows)| {
                let nr = rows.len() / n;
                let mut head = [(0f32, 0f32, 0f64); G];
                for (i, row) in rows.chunks_exact_mut(n).enumerate() {
                    let mut n_u = 0f32;
                    let mut picked = 0f64;
                    let max = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                    for (c, v) in x.row(g * G + i) {
                        n_u += v;
                        picked += (v * row[c as usize]) as f64;
                    }
                    // One exponential per entry: the row becomes exp(v - max), then is scaled.
                    encore_nn::kernels::exp_shifted(row, max);
                    head[i] = (max, n_u, picked);
                }
                let mut sums = [0f32; G];
                encore_nn::kernels::ordered_row_sums(rows, n, &mut sums[..nr]);
                rows.chunks_exact_mut(n)
                    .enumerate()
                    .map(|(i, row)| {
                        let (r, (max, n_u, picked), sum) = (g * G + i, head[i], sums[i]);
                        let lse = max + sum.ln();
                        let scale = n_u * inv_b / sum;
                        for v in row.iter_mut() {
                            *v *= scale;
                        }
                        for (c, v) in x.row(r) {
                            row[c as usize] -= v * inv_b;
                        }
                        n_u as f64 * lse as f64 - picked
                    })
                    .collect::<Vec<f64>>()
            })
            .collect::<Vec<Vec<f64>>>()
            .concat();
        let recon = recon_rows.iter().sum::<f64>() / b.max(1) as f64;
        let mut kl = 0f64;
        for row in trace.enc_out.chunks_exact(2 * d) {
            let (mu, lv) = row.split_at(d);
            for (m, l) in mu.iter().zip(lv) {
                kl += 0.5 * ((*l as f64).exp() - *l as f64 + (*m as f64) * (*m as f64) - 1.0);
            }
        }
        kl /= b.max(1) as f64;

        // The logits layer is linear: its output is not needed for the backward pass.
        let mut dz =
            self.net
                .decoder
                .backward(&self.params, &trace.dec, &[], dy, side, b, &mut grads);
        if let (Some(ld), Some(p)) = (&self.diffusion, &pass) {
            dz = ld.denoiser.diffusion_backward(
                &self.params,
                &ld.schedule,
                p,
                &dz,
                ld.lambda,
                side,
                &mut grads,
            );
        }
        // dL/dz through the reparameterisation and the KL term.
        let c = (beta / b.max(1) as f64) as f32;
        let mut denc = vec![0f32; b * 2 * d];
        for r in 0..b {
            let out = &trace.enc_out[r * 2 * d..][..2 * d];
            let g = &mut denc[r * 2 * d..][..2 * d];
            for j in 0..d {
                let dz = dz[r * d + j];
                let (mu, lv) = (out[j], out[d + j]);
                g[j] = dz + c * mu;
                g[d + j] =
                    dz * eps[r * d + j] * 0.5 * trace.sigma[r * d + j] + c * 0.5 * (lv.exp() - 1.0);
            }
        }
        let mut dh = self.net.encoder.backward(
            &self.params,
            &trace.enc,
            &trace.enc_out,
            denc,
            side,
            b,
            &mut grads,
        );
        self.net
            .first
            .backward(input, trace.enc.input(0), &mut dh, &mut grads);
        let diff = match (&self.diffusion, &pass) {
            (Some(ld), Some(p)) => Some((ld.lambda, p.loss)),
            _ => None,
        };
        let loss = StepLoss {
            loss: recon + beta * kl + diff.map_or(0.0, |(l, v)| l * v),
            recon,
            kl,
            beta,
            diff: diff.map(|(_, v)| v),
        };
        (loss, grads)
    }

    /// A freshly initialised plain MultiVAE (`conditioning = "none"`) for a catalogue of
    /// `n_items` (weights drawn from `config.init_seed`). The configuration must pass
    /// [`ModelConfig::check`]; a conditioned configuration needs
    /// [`MultiVae::with_conditioning`].
    pub fn new(config: MultiVaeConfig, n_items: usize) -> Result<Self, ModelError> {
        Self::with_conditioning(config, n_items, None)
    }

    /// A freshly initialised MultiVAE, conditioned (MultiVAE-C) when `config.conditioning` is
    /// not `"none"`: then `cond` must hold the catalogue's fused item features of
    /// `config.cond_dim` dimensions, and the last encoder layer takes `[h ; c_u]` and the
    /// first decoder layer `[z ; c_u]` (their weights gain `cond_dim` rows, appended after the
    /// usual ones; parameter names unchanged). Errors (naming the config key) when `cond` is
    /// missing for a conditioned kind, given for `"none"`, or of the wrong width or catalogue.
    pub fn with_conditioning(
        config: MultiVaeConfig,
        n_items: usize,
        cond: Option<Conditioning>,
    ) -> Result<Self, ModelError> {
        config.check()?;
        let cd = conditioning::prepare_model(
            config.conditioning,
            config.cond_dim,
            n_items,
            cond.as_ref(),
        )?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.init_seed);
        let d = config.latent_dim;
        let mut enc = vec![n_items];
        enc.extend(&config.hidden_dims);
        enc.push(2 * d);
        let mut dec = vec![d];
        dec.extend(config.hidden_dims.iter().rev());
        dec.push(n_items);
        let mut params = ParamStore::new();
        let (ne, nd) = (enc.len() - 1, dec.len() - 1);
        let act = |last: bool| {
            if last {
                Activation::Identity
            } else {
                Activation::Tanh
            }
        };
        // Registered (and drawn from `rng`) in file order: encoder.0, encoder.1, ...,
        // decoder.0, ...; weight before bias.
        let mut init = |i: usize, o: usize| {
            let w = xavier(&mut rng, i, o, config.init);
            (w, bias(&mut rng, o, config.bias_init_std))
        };
        let first = {
            let (w, b) = init(enc[0], enc[1]);
            SparseDense::new(
                &mut params,
                "encoder.0",
                (enc[0], enc[1]),
                act(ne == 1),
                w,
                b,
            )
        };
        let mut dense = |params: &mut ParamStore, name: String, dims: (usize, usize, usize), f| {
            let (w, b) = init(dims.0 + dims.1, dims.2);
            Dense::new(params, &name, dims, f, w, b)
        };
        let encoder = Mlp::new(
            (1..ne)
                .map(|l| {
                    // The conditioned input of the encoder: its last layer.
                    let side = if l == ne - 1 { cd } else { 0 };
                    let dims = (enc[l], side, enc[l + 1]);
                    dense(&mut params, format!("encoder.{l}"), dims, act(l == ne - 1))
                })
                .collect(),
        );
        let decoder = Mlp::new(
            (0..nd)
                .map(|l| {
                    // The conditioned input of the decoder: its first layer.
                    let side = if l == 0 { cd } else { 0 };
                    let dims = (dec[l], side, dec[l + 1]);
                    dense(&mut params, format!("decoder.{l}"), dims, act(l == nd - 1))
                })
                .collect(),
        );
        let net = Net {
            first,
            encoder,
            decoder,
        };
        // Registered after the VAE's tensors: a plain model's draws are unchanged.
        let diffusion =
            LatentDiffusion::new(config.diffusion_keys(), &mut params, d, cd, |i, o| {
                let w = xavier(&mut rng, i, o, config.init);
                (w, bias(&mut rng, o, config.bias_init_std))
            });
        let adam = new_adam(&params, config.lr);
        Ok(MultiVae {
            config,
            n_items,
            grads: params.zero_grads(),
            params,
            net,
            adam,
            updates: 0,
            cond,
            diffusion,
            packed_logits: OnceLock::new(),
        })
    }

    /// Load a model saved by [`Recommender::save`] (weights, configuration and, for
    /// MultiVAE-C, `conditioning.safetensors`; no optimiser state: use
    /// [`Trainable::load_state`] to resume training).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let (n_items, table) = read_meta(dir, MultiVaeConfig::MODEL)?;
        let config = encore_core::config::resolve_table::<MultiVaeConfig>(table)
            .map_err(|e| ModelError::format(dir.join("config.toml"), e.to_string()))?
            .model;
        let cond = if config.conditioning == ConditioningKind::None {
            None
        } else {
            Some(Conditioning::load(dir)?)
        };
        let mut model = MultiVae::with_conditioning(config, n_items, cond)
            .map_err(|e| ModelError::format(dir.join("config.toml"), e.to_string()))?;
        common::load_weights(dir, &mut model.params)?;
        Ok(model)
    }

    /// The conditioning features (MultiVAE-C), if any.
    pub fn conditioning(&self) -> Option<&Conditioning> {
        self.cond.as_ref()
    }

    /// The conditioning vectors of `users`' rows of `m` (`None` for the plain model).
    fn cond_vectors(&self, m: &InteractionMatrix, users: &[u32]) -> Option<Vec<f32>> {
        self.cond.as_ref().map(|c| c.user_vectors(m, users))
    }

    /// The configuration.
    pub fn config(&self) -> &MultiVaeConfig {
        &self.config
    }

    /// Gradient updates made so far (drives the KL annealing).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    #[cfg(test)]
    fn n_encoder_layers(&self) -> usize {
        self.config.hidden_dims.len() + 1
    }

    /// One gradient step on the users `users` of `train`.
    pub(crate) fn step(
        &mut self,
        train: &InteractionMatrix,
        users: &[u32],
        rng: &mut ChaCha8Rng,
    ) -> StepLoss {
        let (x, input) = SparseBatch::training_csr(train, users, self.config.dropout, rng);
        let eps = normals(
            rng,
            users.len() * self.config.latent_dim,
            self.config.noise_std as f32,
        );
        let beta = kl_weight(
            self.updates,
            self.config.anneal_cap,
            self.config.total_anneal_steps,
        );
        // The diffusion term's draws come after the VAE's, so a plain model's are unchanged.
        let draws = self.diffusion.as_ref().map(|ld| DiffDraws {
            steps: (0..users.len())
                .map(|_| rng.random_range(0..ld.schedule.steps()))
                .collect(),
            eps: normals(rng, users.len() * self.config.latent_dim, 1.0),
        });
        // c_u from the user's training row (the model input), not the dropped-out copy.
        let cond = self.cond_vectors(train, users);
        let grads = std::mem::take(&mut self.grads);
        let (parts, mut grads) = self.loss_and_grads(
            &x,
            &input,
            cond.as_deref(),
            &eps,
            beta,
            draws.as_ref(),
            grads,
        );
        adam_step(&mut self.adam, &mut self.params, &mut grads);
        self.grads = grads;
        self.updates += 1;
        self.packed_logits = OnceLock::new();
        parts
    }
}

/// The burn reference of the forward pass and loss (tests only).
#[cfg(test)]
impl MultiVae {
    /// Encoder: `(μ, log σ²)` from a (normalised, possibly dropped-out) sparse batch; with
    /// conditioning `c` (`[B, cond_dim]`) the last layer's input is `[h ; c]`.
    fn encode(
        &self,
        layers: &Layers,
        x: &SparseBatch,
        c: Option<&Tensor<2>>,
        device: &Device,
    ) -> (Tensor<2>, Tensor<2>) {
        let nnz = x.nnz();
        let mut h = sparse_linear(
            &layers.ws[0],
            &layers.bs[0],
            &int_tensor(x.rows.clone(), device),
            &int_tensor(x.items.clone(), device),
            float_tensor(x.values.clone(), [nnz, 1], device),
            x.n_rows,
        );
        let ne = self.n_encoder_layers();
        for l in 1..ne {
            let a = match c {
                Some(c) if l == ne - 1 => Tensor::cat(vec![h.tanh(), c.clone()], 1),
                _ => h.tanh(),
            };
            h = linear(a, &layers.ws[l], &layers.bs[l]);
        }
        let d = self.config.latent_dim;
        (h.clone().narrow(1, 0, d), h.narrow(1, d, d))
    }

    /// Decoder: item logits from latents (the first layer takes `[z ; c]` when conditioned).
    fn decode(&self, layers: &Layers, z: Tensor<2>, c: Option<&Tensor<2>>) -> Tensor<2> {
        let first = self.n_encoder_layers();
        // The decoder's layers; the denoiser's, if any, come after them.
        let last = first + self.config.hidden_dims.len();
        let mut g = match c {
            Some(c) => Tensor::cat(vec![z, c.clone()], 1),
            None => z,
        };
        for l in first..=last {
            g = linear(g, &layers.ws[l], &layers.bs[l]);
            if l != last {
                g = g.tanh();
            }
        }
        g
    }

    /// The loss of one batch on `device` (autodiff or not) with the given noise; returns the
    /// loss tensor and its parts. `x` is the raw binary batch, `input` the encoder's input,
    /// `cond` the batch's conditioning vectors (`[B, cond_dim]`, MultiVAE-C).
    #[allow(clippy::too_many_arguments)]
    fn loss(
        &self,
        layers: &Layers,
        x: &SparseBatch,
        input: &SparseBatch,
        cond: Option<&[f32]>,
        eps: Vec<f32>,
        beta: f64,
        draws: Option<&DiffDraws>,
        device: &Device,
    ) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
        let b = x.n_rows;
        let d = self.config.latent_dim;
        let c = cond.map(|c| float_tensor(c.to_vec(), [b, c.len() / b.max(1)], device));
        let (mu, logvar) = self.encode(layers, input, c.as_ref(), device);
        let eps = float_tensor(eps, [b, d], device);
        let z = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
        // Latent diffusion: z_t from z, the denoiser on [z_t ; linear(sinusoids) ; c], the
        // decoder on ẑ_0, plus λ ‖target − prediction‖² / B.
        let (z, diff) = match (draws, &self.diffusion) {
            (Some(dr), Some(ld)) => {
                let at = self.n_encoder_layers() + self.config.hidden_dims.len() + 1;
                let col = |f: &dyn Fn(usize) -> f64| {
                    let v = dr.steps.iter().map(|&t| f(t) as f32).collect();
                    float_tensor(v, [b, 1], device)
                };
                let a = col(&|t| ld.schedule.alpha_bar(t).sqrt());
                let sd = col(&|t| (1.0 - ld.schedule.alpha_bar(t)).sqrt());
                let epsd = float_tensor(dr.eps.clone(), [b, d], device);
                let zt = z.clone() * a.clone() + epsd.clone() * sd.clone();
                let e = self.config.time_dim;
                let mut sin = vec![0f32; b * e];
                for (row, &t) in sin.chunks_exact_mut(e).zip(&dr.steps) {
                    encore_nn::diffusion::time_embedding(t as f64, e, row);
                }
                let tfeat = linear(
                    float_tensor(sin, [b, e], device),
                    &layers.ws[at],
                    &layers.bs[at],
                );
                let mut h = match &c {
                    Some(c) => Tensor::cat(vec![zt.clone(), tfeat, c.clone()], 1),
                    None => Tensor::cat(vec![zt.clone(), tfeat], 1),
                };
                let nl = self.config.denoiser_hidden.len() + 1;
                for l in 0..nl {
                    h = linear(h, &layers.ws[at + 1 + l], &layers.bs[at + 1 + l]);
                    if l + 1 < nl {
                        h = h.tanh();
                    }
                }
                let pred = h;
                let (x0, target) = match ld.mean_type {
                    encore_nn::diffusion::MeanType::Eps => ((zt - pred.clone() * sd) / a, epsd),
                    encore_nn::diffusion::MeanType::X0 => (pred.clone(), z.clone()),
                };
                let diff = (target - pred).powf_scalar(2.0).sum().div_scalar(b as f64);
                (x0, Some(diff.mul_scalar(ld.lambda)))
            }
            _ => (z, None),
        };
        let logits = self.decode(layers, z, c.as_ref());
        let logp = log_softmax(logits, 1).reshape([b * self.n_items]);
        let picked = logp.select(0, int_tensor(x.flat_positions(self.n_items), device));
        let recon = picked.sum().neg().div_scalar(b as f64);
        let kl = (logvar.clone().exp() - logvar + mu.square())
            .sub_scalar(1.0)
            .sum()
            .mul_scalar(0.5 / b as f64);
        let mut loss = recon.clone() + kl.clone().mul_scalar(beta);
        if let Some(diff) = diff {
            loss = loss + diff;
        }
        (loss, recon, kl)
    }
}

impl Recommender for MultiVae {
    fn name(&self) -> &'static str {
        MultiVaeConfig::MODEL
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
            let x = SparseBatch::normalised_csr(input, chunk);
            // c_u from these input rows only: held-out items cannot reach the scores.
            let cond = self.cond_vectors(input, chunk);
            self.forward(&x, cond.as_deref(), None, Some(out));
        }
    }

    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
        common::score_history(self, history, out)
    }

    /// Each history's forward pass alone, as [`common::score_history`] runs it, up to the
    /// decoder's last layer; that layer (at catalogue scale nearly all of the pass: its weight
    /// is `hidden x items`) for all histories at once, each row as if alone
    /// ([`Dense::forward_rows_alone`], on the weight packed at the first call: 135 MB more
    /// memory on a 56,512-item catalogue).
    fn score_histories(&self, histories: &[&[u32]], out: &mut [f32]) -> Result<(), ModelError> {
        let n = self.n_items;
        encore_core::check_histories_out(out, histories.len(), n)?;
        // Never a side input here: `c_u` goes to the first decoder layer, and the
        // configuration check requires a hidden one before the last.
        let last = self.net.decoder.layers().last().expect("a decoder layer");
        let mut hidden = Vec::with_capacity(histories.len() * last.inputs());
        for h in histories {
            let m = InteractionMatrix::from_rows(n, &[common::checked_history(h, n)?]);
            let x = SparseBatch::normalised_csr(&m, &[0]);
            let cond = self.cond_vectors(&m, &[0]);
            let side = cond.as_deref().map(|c| Side::new(c, 1));
            let (_, _, _, mut z) = self.encode_hand(&x, side, None);
            self.denoise_for_scoring(&mut z, side);
            hidden.extend(self.net.decoder.forward_front(&self.params, z, side, 1));
        }
        let packed = self.packed_logits.get_or_init(|| {
            let w = self.params.get(last.weight);
            PackedColumns::new(Mat::new(w, last.inputs(), last.outputs()))
        });
        last.forward_rows_alone(&self.params, &hidden, histories.len(), out, packed.as_ref());
        Ok(())
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        common::save_model(dir, &self.config, self.n_items, &self.params)?;
        match &self.cond {
            Some(c) => c.save(dir),
            None => Ok(()),
        }
    }

    fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        let last = self.net.decoder.layers().last()?;
        Some(ItemRepresentation {
            source: "the decoder's output weights (one column per item), cosine",
            vectors: ItemVectors::Columns {
                values: self.params.get(last.weight),
                dim: last.inputs() + last.side(),
            },
        })
    }
}

impl Trainable for MultiVae {
    fn train_epoch(&mut self, ctx: EpochContext<'_>) -> Result<BTreeMap<String, f64>, ModelError> {
        let (n_items, batch_size) = (self.n_items, self.config.batch_size);
        common::run_epoch(ctx, n_items, batch_size, |train, batch, rng| {
            self.step(train, batch, rng).parts()
        })
    }

    fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
        self.save(dir)?;
        common::save_training_extras(dir, &self.params, &self.adam, self.updates)
    }

    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
        let loaded = MultiVae::load(dir)?;
        if loaded.n_items != self.n_items || loaded.config != self.config {
            return Err(ModelError::format(
                dir.join("config.toml"),
                "the checkpoint's configuration or catalogue differs from this run's",
            ));
        }
        if loaded.cond != self.cond {
            return Err(ModelError::format(
                dir.join(conditioning::CONDITIONING_FILE),
                "the checkpoint's conditioning features differ from this run's",
            ));
        }
        self.params = loaded.params;
        self.packed_logits = OnceLock::new();
        self.updates = common::load_training_extras(dir, &self.params, &mut self.adam)?;
        Ok(())
    }
}

/// MultiVae's registry entry.
pub fn entry() -> ModelEntry {
    ModelEntry::trained::<MultiVae>(
        "MultiVAE (Liang et al. 2018), optionally conditioned on item features (MultiVAE-C)",
    )
}

impl TrainedModel for MultiVae {
    type Config = MultiVaeConfig;
    fn init(c: &RunConfig<MultiVaeConfig>, input: &FitInput<'_>) -> Result<Self, ModelError> {
        MultiVae::with_conditioning(
            c.model.clone(),
            input.train.n_items(),
            input.conditioning.clone(),
        )
    }
    fn load(dir: &Path) -> Result<Self, ModelError> {
        MultiVae::load(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> MultiVaeConfig {
        MultiVaeConfig {
            hidden_dims: vec![5],
            latent_dim: 3,
            batch_size: 4,
            ..MultiVaeConfig::original()
        }
    }

    fn tiny_matrix() -> InteractionMatrix {
        InteractionMatrix::from_rows(
            7,
            &[
                vec![0u32, 1, 2],
                vec![2, 3],
                vec![4, 5, 6],
                vec![0, 6],
                vec![1, 3, 5],
                vec![],
            ],
        )
    }

    /// The loss on a hand-made case: with all weights zero, the logits are 0, so the
    /// reconstruction term is `n_u · ln I` per user, and with `μ = 0, log σ² = 0` the KL is 0.
    #[test]
    fn loss_on_zero_weights_is_n_log_items() {
        let mut m = MultiVae::new(tiny_config(), 7).unwrap();
        m.params.values_mut().fill(0.0);
        let train = tiny_matrix();
        let x = SparseBatch::from_users(&train, &[0, 1]);
        let input = x.l2_normalised();
        let device = cpu();
        let layers = Layers::new(&m.params, &device);
        let (loss, recon, kl) = m.loss(&layers, &x, &input, None, vec![0.3; 6], 0.2, None, &device);
        let expect = (3.0 + 2.0) / 2.0 * (7f64).ln();
        assert!((to_vec(recon)[0] as f64 - expect).abs() < 1e-5);
        assert!(to_vec(kl)[0].abs() < 1e-7);
        assert!((to_vec(loss)[0] as f64 - expect).abs() < 1e-5);
    }

    /// KL of a hand-made `μ, log σ²`: one user, `d = 1`, `μ = 1`, `log σ² = ln 2` gives
    /// `0.5 (2 − ln 2 + 1 − 1) = 1 − ln 2 / 2`.
    #[test]
    fn kl_on_a_hand_made_case() {
        let cfg = MultiVaeConfig {
            hidden_dims: vec![1],
            latent_dim: 1,
            ..MultiVaeConfig::original()
        };
        let mut m = MultiVae::new(cfg, 2).unwrap();
        // encoder.0: [2,1] zero weights, bias 0 -> h = tanh(0) = 0; encoder.1: [1,2] weights
        // zero, bias [1, ln 2] -> μ = 1, log σ² = ln 2.
        m.params.values_mut().fill(0.0);
        let last = m.net.encoder.layers().last().unwrap().bias;
        m.params.get_mut(last).copy_from_slice(&[1.0, 2f32.ln()]);
        let train = InteractionMatrix::from_rows(2, &[vec![0u32]]);
        let x = SparseBatch::from_users(&train, &[0]);
        let device = cpu();
        let layers = Layers::new(&m.params, &device);
        let (_, _, kl) = m.loss(
            &layers,
            &x,
            &x.l2_normalised(),
            None,
            vec![0.0],
            0.0,
            None,
            &device,
        );
        let expect = 1.0 - 2f64.ln() / 2.0;
        assert!((to_vec(kl)[0] as f64 - expect).abs() < 1e-6);
    }

    /// Check the hand-written loss and gradients of `m` against burn's autodiff of the
    /// reference graph on `tiny_matrix` (dropped-out input, noise, a non-zero KL weight).
    /// The hand-written loss and gradients of `m` against burn's autodiff of the reference
    /// graph; with latent diffusion, at steps spread over the schedule (tolerances a little
    /// looser: the denoiser adds a few layers of f32 rounding).
    fn check_backward_against_burn(m: &MultiVae) {
        let train = tiny_matrix();
        let users = [4u32, 0, 5, 1, 2, 3];
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x = SparseBatch::from_users(&train, &users);
        let input = x.l2_normalised().dropout(0.3, &mut rng);
        let d = m.config.latent_dim;
        let eps = normals(&mut rng, users.len() * d, 0.7);
        let draws = m.diffusion.as_ref().map(|ld| {
            let t = ld.schedule.steps();
            DiffDraws {
                steps: vec![0, t - 1, t / 2, 3 % t, t / 4, 1 % t],
                eps: normals(&mut rng, users.len() * d, 1.0),
            }
        });
        let (tol_loss, tol_abs, tol_rel) = if draws.is_some() {
            (1e-3, 2e-5, 1e-3)
        } else {
            (1e-4, 1e-5, 1e-4)
        };
        let beta = 0.37;
        let cond = m.cond_vectors(&train, &users);
        let (parts, grads) = m.loss_and_grads(
            &x.to_csr(),
            &input.to_csr(),
            cond.as_deref(),
            &eps,
            beta,
            draws.as_ref(),
            m.params.zero_grads(),
        );
        let device = cpu().autodiff();
        let layers = Layers::new(&m.params, &device);
        let (loss, recon, kl) = m.loss(
            &layers,
            &x,
            &input,
            cond.as_deref(),
            eps,
            beta,
            draws.as_ref(),
            &device,
        );
        assert!((parts.recon - to_vec(recon)[0] as f64).abs() < tol_loss);
        assert!((parts.kl - to_vec(kl)[0] as f64).abs() < 1e-5);
        assert!((parts.loss - to_vec(loss.clone())[0] as f64).abs() < tol_loss);
        let want = layers.grads(&loss.backward());
        assert_eq!(m.params.len(), want.len());
        for (id, w) in m.params.ids().zip(&want) {
            let (g, w, name) = (grads.get(id), w.as_ref().unwrap(), m.params.name(id));
            assert_eq!(g.len(), w.len(), "{name}");
            for (a, b) in g.iter().zip(w) {
                assert!(
                    (a - b).abs() < tol_abs + tol_rel * b.abs(),
                    "{name}: {a} vs {b}"
                );
            }
            assert!(g.iter().any(|&v| v != 0.0), "{name}");
        }
    }

    /// The hand-written loss and gradients against burn's autodiff of the reference graph, on
    /// a model with two hidden layers (every kind of layer is crossed), an empty user,
    /// dropped-out input, noise and a non-zero KL weight.
    #[test]
    fn hand_written_backward_matches_burn_autodiff() {
        let cfg = MultiVaeConfig {
            hidden_dims: vec![5, 4],
            latent_dim: 3,
            bias_init_std: 0.3,
            ..MultiVaeConfig::original()
        };
        check_backward_against_burn(&MultiVae::new(cfg, 7).unwrap());
    }

    /// Features for `tiny_matrix`'s 7 items, `dim` wide; items 4, 5, 6 have none, so user 2
    /// (items 4, 5, 6) and user 5 (no items) get `c_u = 0`.
    fn tiny_conditioning(dim: usize) -> Conditioning {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let values = normals(&mut rng, 7 * dim, 1.0);
        let present = (0..7).map(|i| i < 4).collect();
        Conditioning::new(7, dim, values, present).unwrap()
    }

    fn tiny_conditioned(cfg: MultiVaeConfig, dim: usize) -> MultiVae {
        let cfg = MultiVaeConfig {
            conditioning: ConditioningKind::Concat,
            cond_dim: dim,
            ..cfg
        };
        MultiVae::with_conditioning(cfg, 7, Some(tiny_conditioning(dim))).unwrap()
    }

    /// MultiVAE-C: the same check, with users whose `c_u` is zero (no featured items) next to
    /// users whose `c_u` is not; one and two hidden layers (with one, the last encoder layer
    /// is also the first dense one).
    #[test]
    fn conditioned_backward_matches_burn_autodiff() {
        for hidden in [vec![5, 4], vec![5]] {
            let cfg = MultiVaeConfig {
                hidden_dims: hidden,
                latent_dim: 3,
                bias_init_std: 0.3,
                ..MultiVaeConfig::original()
            };
            let m = tiny_conditioned(cfg, 2);
            let c = m.cond_vectors(&tiny_matrix(), &[2, 5, 0]).unwrap();
            assert!(c[..4].iter().all(|&v| v == 0.0) && c[4..].iter().any(|&v| v != 0.0));
            check_backward_against_burn(&m);
        }
    }

    /// A training step gives the same weights on one thread and on three, bit for bit, at a
    /// size where the matrix products and row passes do go parallel.
    #[test]
    fn steps_are_thread_count_independent() {
        let n_items = 3000;
        let rows: Vec<Vec<u32>> = (0..300u32)
            .map(|u| {
                (0..40)
                    .map(|j| (u * 37 + j * 101) % n_items)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        let train = InteractionMatrix::from_rows(n_items as usize, &rows);
        let run = |threads: usize| {
            encore_nn::on_threads(threads, || {
                let mut m = MultiVae::new(MultiVaeConfig::recbole(), n_items as usize).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let users = train.nonempty_users();
                for _ in 0..2 {
                    m.step(&train, &users, &mut rng);
                }
                let mut out = vec![0f32; 4 * n_items as usize];
                m.score_users(&[0, 1, 2, 3], &train, &mut out);
                (m.params, out)
            })
        };
        assert!(run(1) == run(3));
    }

    /// The same for MultiVAE-C with the default 128 conditioning dimensions.
    #[test]
    fn conditioned_steps_are_thread_count_independent() {
        let n_items = 3000usize;
        let rows: Vec<Vec<u32>> = (0..300u32)
            .map(|u| {
                (0..40)
                    .map(|j| (u * 37 + j * 101) % n_items as u32)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        let train = InteractionMatrix::from_rows(n_items, &rows);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let cond = Conditioning::new(
            n_items,
            128,
            normals(&mut rng, n_items * 128, 1.0),
            (0..n_items).map(|i| i % 7 != 0).collect(),
        )
        .unwrap();
        let cfg = MultiVaeConfig {
            conditioning: ConditioningKind::Tensor,
            ..MultiVaeConfig::recbole()
        };
        let run = |threads: usize| {
            encore_nn::on_threads(threads, || {
                let mut m =
                    MultiVae::with_conditioning(cfg.clone(), n_items, Some(cond.clone())).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let users = train.nonempty_users();
                for _ in 0..2 {
                    m.step(&train, &users, &mut rng);
                }
                let mut out = vec![0f32; 4 * n_items];
                m.score_users(&[0, 1, 2, 3], &train, &mut out);
                (m.params, out)
            })
        };
        assert!(run(1) == run(3));
    }

    #[test]
    fn training_lowers_the_loss_and_counts_updates() {
        let cfg = MultiVaeConfig {
            dropout: 0.0,
            noise_std: 0.01,
            lr: 1e-2,
            ..tiny_config()
        };
        let mut m = MultiVae::new(cfg, 7).unwrap();
        let train = tiny_matrix();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let users = train.nonempty_users();
        let first = m.step(&train, &users, &mut rng).recon;
        let mut last = first;
        for _ in 0..200 {
            last = m.step(&train, &users, &mut rng).recon;
        }
        assert!(last < first * 0.8, "{first} -> {last}");
        assert_eq!(m.updates(), 201);
        assert_eq!(m.adam.step, 201);
    }

    #[test]
    fn save_load_round_trip_gives_identical_scores() {
        let mut m = MultiVae::new(tiny_config(), 7).unwrap();
        let train = tiny_matrix();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        m.step(&train, &train.nonempty_users(), &mut rng);
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        let back = MultiVae::load(dir.path()).unwrap();
        let users: Vec<u32> = (0..6).collect();
        let mut a = vec![0f32; 6 * 7];
        let mut b = vec![0f32; 6 * 7];
        m.score_users(&users, &train, &mut a);
        back.score_users(&users, &train, &mut b);
        assert_eq!(a, b);
        let mut h = vec![0f32; 7];
        back.score_history(&[2, 0, 1, 1], &mut h).unwrap();
        assert_eq!(&h[..], &a[..7], "fold-in of user 0's history");
        assert!(back.score_history(&[7], &mut h).is_err());
    }

    /// Listeners folded in together get exactly, bit for bit, their scores alone: plain,
    /// with latent diffusion and conditioned, on a catalogue wide enough for the output layer
    /// to be cut in several pieces, on one thread and three; a bad index in any history is an
    /// error.
    #[test]
    fn histories_scored_together_are_each_alone() {
        let n = 2_600;
        let histories: Vec<Vec<u32>> = vec![
            vec![3],
            (0..40u32)
                .map(|i| i * 61 % n as u32)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            vec![7, 1023, 1024, 2599],
            (100..400).collect(),
        ];
        let refs: Vec<&[u32]> = histories.iter().map(|h| h.as_slice()).collect();
        // 600 hidden units: with that many, a many-row product sums in another order than a
        // row alone, so equality here is the order, not luck.
        let cfg = MultiVaeConfig {
            hidden_dims: vec![600],
            latent_dim: 6,
            ..MultiVaeConfig::original()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let features = Conditioning::new(
            n,
            4,
            normals(&mut rng, n * 4, 1.0),
            (0..n).map(|i| i % 3 != 0).collect(),
        )
        .unwrap();
        let models = [
            MultiVae::new(cfg.clone(), n).unwrap(),
            MultiVae::new(
                MultiVaeConfig {
                    diffusion: DiffusionKind::Diffrec,
                    denoiser_hidden: vec![8],
                    time_dim: 6,
                    ..cfg.clone()
                },
                n,
            )
            .unwrap(),
            MultiVae::with_conditioning(
                MultiVaeConfig {
                    conditioning: ConditioningKind::Concat,
                    cond_dim: 4,
                    ..cfg.clone()
                },
                n,
                Some(features),
            )
            .unwrap(),
        ];
        for (i, m) in models.iter().enumerate() {
            let alone: Vec<f32> = refs
                .iter()
                .flat_map(|h| {
                    let mut o = vec![0f32; n];
                    m.score_history(h, &mut o).unwrap();
                    o
                })
                .collect();
            for threads in [1, 3] {
                let together = encore_nn::on_threads(threads, || {
                    let mut o = vec![0f32; refs.len() * n];
                    m.score_histories(&refs, &mut o).unwrap();
                    o
                });
                assert_eq!(together, alone, "model {i}, {threads} threads");
            }
        }
        let mut out = vec![0f32; 2 * n];
        assert!(models[0]
            .score_histories(&[&[1], &[n as u32]], &mut out)
            .is_err());
    }

    fn tiny_diffusion(kind: DiffusionKind, mean_type: MeanTypeKey) -> MultiVaeConfig {
        MultiVaeConfig {
            diffusion: kind,
            mean_type,
            denoiser_hidden: vec![8],
            time_dim: 6,
            dropout: 0.0,
            noise_std: 0.01,
            lr: 1e-2,
            ..tiny_config()
        }
    }

    /// Diff-MultiVAE: the denoiser is registered after the VAE's tensors (so the VAE's
    /// initial weights are the plain model's), training logs the denoising loss and lowers
    /// the reconstruction loss, a saved model scores as the trained one (the reverse chain
    /// included), and a chain of 0 steps scores from μ exactly as the plain VAE does.
    #[test]
    fn latent_diffusion_trains_saves_and_scores() {
        let train = tiny_matrix();
        let users: Vec<u32> = (0..6).collect();
        for mt in [MeanTypeKey::Eps, MeanTypeKey::X0] {
            let cfg = tiny_diffusion(DiffusionKind::Diffrec, mt);
            let plain = MultiVae::new(tiny_diffusion(DiffusionKind::None, mt), 7).unwrap();
            let mut m = MultiVae::new(cfg.clone(), 7).unwrap();
            for id in plain.params.ids() {
                let name = plain.params.name(id);
                assert_eq!(
                    m.params.get(m.params.id(name).unwrap()),
                    plain.params.get(id)
                );
            }
            assert!(m.params.id("denoiser.mlp.0.weight").is_some());
            // t_s = 0: decode μ, as the plain model does.
            let direct = MultiVae::new(
                MultiVaeConfig {
                    reverse_steps: Some(0),
                    ..cfg.clone()
                },
                7,
            )
            .unwrap();
            let (mut a, mut b) = (vec![0f32; 42], vec![0f32; 42]);
            plain.score_users(&users, &train, &mut a);
            direct.score_users(&users, &train, &mut b);
            assert_eq!(a, b, "{mt:?}");

            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let nonempty = train.nonempty_users();
            let first = m.step(&train, &nonempty, &mut rng);
            assert!(first.parts().iter().any(|(k, v)| *k == "diff" && *v > 0.0));
            let mut last = first;
            for _ in 0..150 {
                last = m.step(&train, &nonempty, &mut rng);
            }
            assert!(
                last.recon < first.recon * 0.9,
                "{mt:?}: {first:?} -> {last:?}"
            );
            // Predicting z_0 is learnable; predicting ε under DiffRec's tiny β is not (z_t is
            // nearly z_0), so its loss only has to stay finite.
            let (d0, d1) = (first.diff.unwrap(), last.diff.unwrap());
            assert!(d1.is_finite() && d1 > 0.0, "{mt:?}");
            if mt == MeanTypeKey::X0 {
                assert!(d1 < d0, "{mt:?}: {d0} -> {d1}");
            }
            let dir = tempfile::tempdir().unwrap();
            m.save(dir.path()).unwrap();
            let back = MultiVae::load(dir.path()).unwrap();
            m.score_users(&users, &train, &mut a);
            back.score_users(&users, &train, &mut b);
            assert_eq!(a, b, "{mt:?}");
            assert!(a.iter().all(|v| v.is_finite()));
        }
    }

    /// The whole Diff-MultiVAE loss (reconstruction from ẑ_0, KL, λ times the denoising loss)
    /// and every gradient, the VAE's and the denoiser's, against burn's autodiff of the same
    /// graph: both mean types, plain and conditioned.
    #[test]
    fn latent_diffusion_backward_matches_burn_autodiff() {
        for (mt, cond) in [
            (MeanTypeKey::Eps, 0),
            (MeanTypeKey::X0, 0),
            (MeanTypeKey::Eps, 3),
        ] {
            let cfg = MultiVaeConfig {
                hidden_dims: vec![5, 4],
                bias_init_std: 0.3,
                lambda_diff: 0.6,
                ..tiny_diffusion(DiffusionKind::Paper, mt)
            };
            let m = if cond == 0 {
                MultiVae::new(cfg, 7).unwrap()
            } else {
                tiny_conditioned(
                    MultiVaeConfig {
                        conditioning: ConditioningKind::Tensor,
                        cond_dim: cond,
                        ..cfg
                    },
                    cond,
                )
            };
            check_backward_against_burn(&m);
        }
    }

    /// A Diff-MultiVAE step and its scoring give the same bits on 1 and 3 threads.
    #[test]
    fn latent_diffusion_is_thread_count_independent() {
        let train = tiny_matrix();
        let run = |threads: usize| {
            encore_nn::on_threads(threads, || {
                let cfg = tiny_diffusion(DiffusionKind::Paper, MeanTypeKey::Eps);
                let mut m = MultiVae::new(cfg, 7).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(4);
                for _ in 0..3 {
                    m.step(&train, &train.nonempty_users(), &mut rng);
                }
                let mut out = vec![0f32; 6 * 7];
                m.score_users(&(0..6).collect::<Vec<u32>>(), &train, &mut out);
                (m.params.values().to_vec(), out)
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn diffusion_config_errors_name_the_key() {
        let key = |cfg: MultiVaeConfig| match cfg.check().unwrap_err() {
            ModelError::Config { key, .. } => key,
            other => panic!("{other}"),
        };
        let base = tiny_diffusion(DiffusionKind::Diffrec, MeanTypeKey::Eps);
        let bad = |f: &dyn Fn(&mut MultiVaeConfig)| {
            let mut c = base.clone();
            f(&mut c);
            key(c)
        };
        assert_eq!(bad(&|c| c.reverse_steps = Some(41)), "reverse_steps");
        assert_eq!(bad(&|c| c.time_dim = 1), "time_dim");
        assert_eq!(bad(&|c| c.denoiser_hidden = vec![]), "denoiser_hidden");
        assert_eq!(bad(&|c| c.lambda_diff = -1.0), "lambda_diff");
        let mut ok = base.clone();
        ok.reverse_steps = Some(40);
        assert!(ok.check().is_ok());
    }

    #[test]
    fn load_rejects_another_model_and_bad_shapes() {
        let m = MultiVae::new(tiny_config(), 7).unwrap();
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        // A catalogue size that disagrees with the weights.
        std::fs::write(
            dir.path().join("meta.json"),
            r#"{"model":"multivae","n_items":8,"format":1}"#,
        )
        .unwrap();
        let e = MultiVae::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("encoder.0.weight") && e.contains("model.safetensors"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("meta.json"),
            r#"{"model":"macridvae","n_items":7,"format":1}"#,
        )
        .unwrap();
        let e = MultiVae::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("meta.json") && e.contains("macridvae"), "{e}");
    }

    #[test]
    fn config_errors_name_the_key() {
        for (set, key) in [
            ("dropout=1.0", "dropout"),
            ("lr=0", "lr"),
            ("latent_dim=0", "latent_dim"),
            ("hidden_dims=[]", "hidden_dims"),
            ("batch_size=0", "batch_size"),
            ("init=\"he\"", "init"),
            ("latent=3", "latent"),
        ] {
            let e = encore_core::config::resolve::<MultiVaeConfig>(None, &[set.to_string()])
                .unwrap_err();
            match e {
                ModelError::Config { key: k, .. } => assert_eq!(k, key, "{set}"),
                other => panic!("{set}: {other}"),
            }
        }
        let c =
            encore_core::config::resolve::<MultiVaeConfig>(None, &["preset=recbole".to_string()])
                .unwrap();
        assert_eq!(c.model, MultiVaeConfig::recbole());
        assert_eq!(c.train.epochs, 300);
    }
}
