//! The Gaussian diffusion process shared by the latent-diffusion VAEs and DiffRec (MODELS.md
//! "Latent diffusion"): the noise schedule, the forward (noising) process and the posterior
//! of the reverse process, and the sinusoidal time embedding.
//!
//! Steps are indexed `0..T` as in DiffRec's code: step `t` here is Ho et al.'s `t + 1`, so
//! `ᾱ_0 = 1 − β_0` and the posterior at step `t` conditions on `ᾱ_{t−1}` with `ᾱ_{−1} = 1`.
//! The schedule is computed in `f64` (the products of a thousand factors stay exact to the
//! last `f32` bit) and applied to `f32` latents.

use crate::layers::{Activation, Dense, Mlp, MlpTrace, Side};
use crate::params::{Grads, ParamId, ParamStore};

/// A schedule's settings were out of range; `key` names the configuration key.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.key, self.message)
    }
}

impl std::error::Error for ScheduleError {}

/// A variance schedule `β_t = s · linspace(β_min, β_max, T)` and what the forward and reverse
/// processes need of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    betas: Vec<f64>,
    /// `ᾱ_t = Π_{s ≤ t} (1 − β_s)`.
    alpha_bar: Vec<f64>,
}

impl Schedule {
    /// The schedule of `steps` steps with `β_t = scale · linspace(beta_min, beta_max, steps)`.
    /// Errors name the key: `steps` must be at least 1 (at most 100,000), every `β_t` in
    /// `(0, 1)`, and `ᾱ_{T−1}` must stay a normal `f32` (a chain whose signal underflows to 0
    /// cannot be inverted).
    pub fn linear(
        steps: usize,
        scale: f64,
        beta_min: f64,
        beta_max: f64,
    ) -> Result<Self, ScheduleError> {
        let err = |key, message: String| Err(ScheduleError { key, message });
        if steps == 0 || steps > 100_000 {
            return err(
                "steps",
                format!("must be between 1 and 100000, got {steps}"),
            );
        }
        if !(scale.is_finite() && scale > 0.0) {
            return err(
                "noise_scale",
                format!("must be a positive number, got {scale}"),
            );
        }
        for (key, b) in [("beta_min", beta_min), ("beta_max", beta_max)] {
            let scaled = scale * b;
            if !(scaled > 0.0 && scaled < 1.0) {
                return err(
                    key,
                    format!("gives β = {scaled} (noise_scale {scale} x {b}); β must be in (0, 1)"),
                );
            }
        }
        if beta_max < beta_min {
            return err(
                "beta_max",
                format!("is {beta_max}, below beta_min {beta_min}"),
            );
        }
        let betas: Vec<f64> = (0..steps)
            .map(|i| {
                let f = if steps == 1 {
                    0.0
                } else {
                    i as f64 / (steps - 1) as f64
                };
                scale * (beta_min + f * (beta_max - beta_min))
            })
            .collect();
        Self::from_betas(betas)
    }

    /// The schedule with the given `β_t` (each in `(0, 1)`, at least one), for schedules
    /// defined otherwise than by a linear `β` (DiffRec's linear variance). Errors as
    /// [`Schedule::linear`]'s, naming `steps` for an underflowing `ᾱ_T` and `noise_scale` for
    /// a `β` out of range.
    pub fn from_betas(betas: Vec<f64>) -> Result<Self, ScheduleError> {
        let err = |key, message: String| Err(ScheduleError { key, message });
        let steps = betas.len();
        if steps == 0 {
            return err("steps", "must be at least 1, got 0".to_string());
        }
        if let Some((t, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            return err(
                "noise_scale",
                format!("gives β_{t} = {b}; β must be in (0, 1)"),
            );
        }
        let mut alpha_bar = Vec::with_capacity(steps);
        let mut prod = 1.0f64;
        for b in &betas {
            prod *= 1.0 - b;
            alpha_bar.push(prod);
        }
        let last = alpha_bar[steps - 1];
        if last.is_nan() || last < f32::MIN_POSITIVE as f64 {
            return err(
                "steps",
                format!(
                    "{steps} steps of this schedule leave ᾱ_T = {last:e}, which underflows \
                     single precision: use fewer steps or smaller β"
                ),
            );
        }
        Ok(Schedule { betas, alpha_bar })
    }

    /// The paper's schedule: `T = 1000`, `β` from 1e-4 to 0.02 (Ho et al.'s).
    pub fn paper() -> Self {
        Self::linear(1000, 1.0, 1e-4, 0.02).expect("the paper's schedule is valid")
    }

    /// DiffRec's tuned ML-1M schedule: `T = 40`, `s = 0.005`, `β` from 0.005 to 0.01.
    pub fn diffrec() -> Self {
        Self::linear(40, 0.005, 0.005, 0.01).expect("DiffRec's schedule is valid")
    }

    /// Number of steps `T`.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    /// `ᾱ_t`; `ᾱ_{−1} = 1` is `alpha_bar_prev(0)`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alpha_bar[t]
    }

    /// `ᾱ_{t−1}` (1 at `t = 0`).
    pub fn alpha_bar_prev(&self, t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            self.alpha_bar[t - 1]
        }
    }

    /// `z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε`, element-wise into `out`.
    pub fn q_sample(&self, z0: &[f32], eps: &[f32], t: usize, out: &mut [f32]) {
        assert!(z0.len() == eps.len() && z0.len() == out.len(), "sizes");
        let (a, s) = (
            self.alpha_bar[t].sqrt() as f32,
            (1.0 - self.alpha_bar[t]).sqrt() as f32,
        );
        for ((o, z), e) in out.iter_mut().zip(z0).zip(eps) {
            *o = a * z + s * e;
        }
    }

    /// `ẑ_0 = (z_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t`: the clean latent an `ε` prediction implies.
    pub fn x0_from_eps(&self, zt: &[f32], eps: &[f32], t: usize, out: &mut [f32]) {
        assert!(zt.len() == eps.len() && zt.len() == out.len(), "sizes");
        let (a, s) = (
            (1.0 / self.alpha_bar[t].sqrt()) as f32,
            ((1.0 - self.alpha_bar[t]) / self.alpha_bar[t]).sqrt() as f32,
        );
        for ((o, z), e) in out.iter_mut().zip(zt).zip(eps) {
            *o = a * z - s * e;
        }
    }

    /// The coefficients of the posterior mean `μ̃_t = c₀ z_0 + c_t z_t` of `q(z_{t−1} | z_t,
    /// z_0)`: `c₀ = β_t √ᾱ_{t−1} / (1 − ᾱ_t)`, `c_t = (1 − ᾱ_{t−1}) √(1 − β_t) / (1 − ᾱ_t)`.
    pub fn posterior_mean_coefs(&self, t: usize) -> (f64, f64) {
        let (b, ab, prev) = (self.betas[t], self.alpha_bar[t], self.alpha_bar_prev(t));
        (
            b * prev.sqrt() / (1.0 - ab),
            (1.0 - prev) * (1.0 - b).sqrt() / (1.0 - ab),
        )
    }

    /// The posterior variance `β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)` (0 at `t = 0`).
    pub fn posterior_variance(&self, t: usize) -> f64 {
        self.betas[t] * (1.0 - self.alpha_bar_prev(t)) / (1.0 - self.alpha_bar[t])
    }

    /// `μ̃_t` for a batch: `out = c₀ ẑ_0 + c_t z_t`.
    pub fn posterior_mean(&self, z0: &[f32], zt: &[f32], t: usize, out: &mut [f32]) {
        assert!(z0.len() == zt.len() && z0.len() == out.len(), "sizes");
        let (c0, ct) = self.posterior_mean_coefs(t);
        let (c0, ct) = (c0 as f32, ct as f32);
        for ((o, a), b) in out.iter_mut().zip(z0).zip(zt) {
            *o = c0 * a + ct * b;
        }
    }
}

/// The sinusoidal embedding of step `t` (`dim` values), as DiffRec's code writes it:
/// `[cos(t f_0) … cos(t f_{h−1}) ; sin(t f_0) … sin(t f_{h−1})]` with `h = dim / 2` and
/// `f_j = 10000^(−j / h)`, a trailing 0 when `dim` is odd.
pub fn time_embedding(t: f64, dim: usize, out: &mut [f32]) {
    assert_eq!(out.len(), dim, "embedding size");
    let half = dim / 2;
    for j in 0..half {
        let f = (-(10000f64.ln()) * j as f64 / half as f64).exp();
        out[j] = (t * f).cos() as f32;
        out[half + j] = (t * f).sin() as f32;
    }
    if dim % 2 == 1 {
        out[dim - 1] = 0.0;
    }
}

/// [`time_embedding`] of every step of `steps`, one row of `dim` values each, into `out`
/// (`steps.len() x dim`). The rows come from a table of `time_embedding(t)` for `t` up to the
/// largest step seen, built once per `dim` and shared by the process, so the values are
/// exactly [`time_embedding`]'s: a training step otherwise spends more time on the f64
/// `exp`/`sin`/`cos` of thousands of rows than on the denoiser's first layer.
pub fn time_embeddings(steps: &[usize], dim: usize, out: &mut [f32]) {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    assert_eq!(out.len(), steps.len() * dim, "embedding batch size");
    if dim == 0 || steps.is_empty() {
        return;
    }
    static TABLES: OnceLock<Mutex<HashMap<usize, Arc<Vec<f32>>>>> = OnceLock::new();
    let needed = steps.iter().max().copied().unwrap_or(0) + 1;
    let table = {
        let mut tables = TABLES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match tables.get(&dim) {
            Some(t) if t.len() >= needed * dim => Arc::clone(t),
            _ => {
                // Grown to the next power of two (at least 64 steps) so that a few large
                // steps do not rebuild it each time.
                let rows = needed.next_power_of_two().max(64);
                let mut t = vec![0f32; rows * dim];
                for (step, row) in t.chunks_exact_mut(dim).enumerate() {
                    time_embedding(step as f64, dim, row);
                }
                let t = Arc::new(t);
                tables.insert(dim, Arc::clone(&t));
                t
            }
        }
    };
    for (row, &t) in out.chunks_exact_mut(dim).zip(steps) {
        row.copy_from_slice(&table[t * dim..][..dim]);
    }
}

/// The denoiser `f_θ(z_t, t, c_u)` of latent diffusion (MODELS.md): the sinusoidal embedding of
/// `t` through a linear layer, then an MLP on `[z_t ; temb(t) ; c_u]` (tanh between layers, a
/// linear output of the latent's width). `c_u`, when the model is conditioned, is a side input
/// of the first layer (data: no gradient); `z_t` and the time features get gradients.
///
/// Optionally ([`Denoiser::with_block_embedding`]) a learned embedding per block of the batch
/// is added to the time features, as class-conditional diffusion models add a class
/// embedding to the time embedding (Dhariwal & Nichol 2021; Peebles & Xie 2023): MacridVAE's
/// facets share one denoiser this way.
#[derive(Clone, Debug, PartialEq)]
pub struct Denoiser {
    time: Dense,
    mlp: Mlp,
    latent: usize,
    temb: usize,
    blocks: Option<BlockEmbedding>,
}

/// A learned `[blocks, temb]` table whose row `g` is added to the time features of block `g`
/// of a block-major batch (the layout of a [`Side`] input: with `rows = blocks x b`, row
/// `g * b + r` is block `g`'s).
#[derive(Clone, Debug, PartialEq)]
struct BlockEmbedding {
    id: ParamId,
    blocks: usize,
}

/// What [`Denoiser::forward`] keeps for the backward pass.
#[derive(Clone, Debug, Default)]
pub struct DenoiserTrace {
    /// The sinusoidal embeddings `[rows, temb]` (the time layer's input).
    sinusoids: Vec<f32>,
    mlp: MlpTrace,
}

impl Denoiser {
    /// Register `{prefix}.time.*` (`[temb, temb]`) and `{prefix}.mlp.{l}.*` (widths `latent +
    /// temb (+ cond rows)`, `hidden...`, `latent`) in `store`. `init(fan_in, fan_out)` draws
    /// each layer's weight and bias, in registration order.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        (latent, temb, cond): (usize, usize, usize),
        hidden: &[usize],
        mut init: impl FnMut(usize, usize) -> (Vec<f32>, Vec<f32>),
    ) -> Self {
        let (w, b) = init(temb, temb);
        let time = Dense::new(
            store,
            &format!("{prefix}.time"),
            (temb, 0, temb),
            Activation::Identity,
            w,
            b,
        );
        let mut widths = vec![latent + temb];
        widths.extend(hidden);
        widths.push(latent);
        let n = widths.len() - 1;
        let layers = (0..n)
            .map(|l| {
                let side = if l == 0 { cond } else { 0 };
                let (w, b) = init(widths[l] + side, widths[l + 1]);
                let f = if l + 1 < n {
                    Activation::Tanh
                } else {
                    Activation::Identity
                };
                Dense::new(
                    store,
                    &format!("{prefix}.mlp.{l}"),
                    (widths[l], side, widths[l + 1]),
                    f,
                    w,
                    b,
                )
            })
            .collect();
        Denoiser {
            time,
            mlp: Mlp::new(layers),
            latent,
            temb,
            blocks: None,
        }
    }

    /// The same denoiser with a learned block embedding: `name` `[blocks, temb]` registered in
    /// `store` (after the denoiser's layers) with initial values `values`. Every batch it is
    /// given must then be `blocks` blocks of equal size, block-major, and block `g`'s rows get
    /// row `g` added to their time features (after the time layer). Without one, the denoiser
    /// is exactly as before.
    pub fn with_block_embedding(
        mut self,
        store: &mut ParamStore,
        name: &str,
        blocks: usize,
        values: Vec<f32>,
    ) -> Self {
        assert!(blocks >= 1, "at least one block");
        let id = store.add(name, vec![blocks, self.temb], values);
        self.blocks = Some(BlockEmbedding { id, blocks });
        self
    }

    /// The block embedding's tensor, if the denoiser has one.
    pub fn block_embedding(&self) -> Option<ParamId> {
        self.blocks.as_ref().map(|b| b.id)
    }

    /// Rows per block of a `rows`-row batch (checked to divide evenly).
    fn block_rows(blocks: &BlockEmbedding, rows: usize) -> usize {
        assert_eq!(
            rows % blocks.blocks,
            0,
            "a batch of {rows} rows is not {} equal blocks",
            blocks.blocks
        );
        rows / blocks.blocks
    }

    /// The prediction (`ε̂` or `ẑ_0`) `[rows, latent]` for `z_t` `[rows, latent]` at steps
    /// `steps` (one per row), with the conditioning rows `cond` where the model has them.
    pub fn forward(
        &self,
        store: &ParamStore,
        zt: &[f32],
        steps: &[usize],
        cond: Option<Side<'_>>,
    ) -> (Vec<f32>, DenoiserTrace) {
        let (rows, d, e) = (steps.len(), self.latent, self.temb);
        assert_eq!(zt.len(), rows * d, "latent batch size");
        let mut sinusoids = vec![0f32; rows * e];
        time_embeddings(steps, e, &mut sinusoids);
        let mut tfeat = self.time.forward(store, &sinusoids, None, rows);
        if let Some(be) = &self.blocks {
            let per = Self::block_rows(be, rows);
            let table = store.get(be.id);
            for (r, row) in tfeat.chunks_exact_mut(e.max(1)).enumerate() {
                let g = &table[(r / per) * e..][..e];
                row.iter_mut().zip(g).for_each(|(v, g)| *v += g);
            }
        }
        let mut x = vec![0f32; rows * (d + e)];
        for (r, row) in x.chunks_exact_mut(d + e).enumerate() {
            row[..d].copy_from_slice(&zt[r * d..][..d]);
            row[d..].copy_from_slice(&tfeat[r * e..][..e]);
        }
        let (out, mlp) = self.mlp.forward(store, x, cond, rows);
        (out, DenoiserTrace { sinusoids, mlp })
    }

    /// Gradients of every parameter into `grads` for the output gradient `dy` (overwritten);
    /// returns `dL/dz_t` `[rows, latent]`. `out` is the forward output.
    pub fn backward(
        &self,
        store: &ParamStore,
        trace: &DenoiserTrace,
        out: &[f32],
        dy: Vec<f32>,
        cond: Option<Side<'_>>,
        grads: &mut Grads,
    ) -> Vec<f32> {
        let (d, e) = (self.latent, self.temb);
        let rows = trace.sinusoids.len() / e.max(1);
        let dx = self
            .mlp
            .backward(store, &trace.mlp, out, dy, cond, rows, grads);
        let mut dz = vec![0f32; rows * d];
        let mut dt = vec![0f32; rows * e];
        for (r, row) in dx.chunks_exact(d + e).enumerate() {
            dz[r * d..][..d].copy_from_slice(&row[..d]);
            dt[r * e..][..e].copy_from_slice(&row[d..]);
        }
        if let Some(be) = &self.blocks {
            // Each block's rows summed in row order.
            let per = Self::block_rows(be, rows);
            let mut g = vec![0f32; be.blocks * e];
            for (r, row) in dt.chunks_exact(e.max(1)).enumerate() {
                let gb = &mut g[(r / per) * e..][..e];
                gb.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
            grads.set(be.id, &g);
        }
        let mut unused = Vec::new();
        self.time.backward(
            store,
            &trace.sinusoids,
            &[],
            &mut dt,
            None,
            rows,
            grads,
            &mut unused,
        );
        dz
    }
}

/// What the denoiser predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeanType {
    /// The noise `ε` (Ho et al.).
    Eps,
    /// The clean latent `z_0` (DiffRec).
    X0,
}

impl Denoiser {
    /// The clean-latent estimate `ẑ_0` at step `t` for every row of `zt` (all rows at the
    /// same step): the prediction itself for [`MeanType::X0`], or the `z_0` an `ε`
    /// prediction implies.
    pub fn predict_x0(
        &self,
        store: &ParamStore,
        schedule: &Schedule,
        mean_type: MeanType,
        zt: &[f32],
        t: usize,
        cond: Option<Side<'_>>,
    ) -> Vec<f32> {
        let rows = zt.len() / self.latent.max(1);
        let (pred, _) = self.forward(store, zt, &vec![t; rows], cond);
        match mean_type {
            MeanType::X0 => pred,
            MeanType::Eps => {
                let mut x0 = vec![0f32; zt.len()];
                schedule.x0_from_eps(zt, &pred, t, &mut x0);
                x0
            }
        }
    }

    /// The reverse chain on a batch: `z` is taken as `z_{start}` and replaced by `z_0`,
    /// stepping `t = start − 1, …, 0` with the posterior mean `μ̃_t(ẑ_0, z_t)` (DiffRec's
    /// `p_sample`). With `noise`, each step but the last adds `√β̃_t ε` with `ε` drawn from
    /// `noise` in row-major order. `start = 0` leaves `z` as it is. The whole batch moves
    /// together (one denoiser pass per step for all rows).
    #[allow(clippy::too_many_arguments)]
    pub fn reverse(
        &self,
        store: &ParamStore,
        schedule: &Schedule,
        mean_type: MeanType,
        z: &mut [f32],
        start: usize,
        cond: Option<Side<'_>>,
        mut noise: Option<&mut dyn FnMut() -> f32>,
    ) {
        assert!(start <= schedule.steps(), "start step beyond the schedule");
        for t in (0..start).rev() {
            let x0 = self.predict_x0(store, schedule, mean_type, z, t, cond);
            let mut mean = vec![0f32; z.len()];
            schedule.posterior_mean(&x0, z, t, &mut mean);
            match noise.as_deref_mut() {
                Some(draw) if t > 0 => {
                    let sd = schedule.posterior_variance(t).sqrt() as f32;
                    for (zi, m) in z.iter_mut().zip(&mean) {
                        *zi = m + sd * draw();
                    }
                }
                _ => z.copy_from_slice(&mean),
            }
        }
    }
}

/// One training pass of the diffusion term on a batch of clean latents (MODELS.md): `z_t =
/// √ᾱ_t z_0 + √(1 − ᾱ_t) ε` at each row's step, the denoiser's prediction, the denoised
/// estimate `ẑ_0` (the model decodes it) and the denoising loss `‖target − prediction‖²`
/// (`target` = `ε` or `z_0`), summed over the latent's dimensions and averaged over the
/// batch, as the reconstruction and KL terms are.
#[derive(Clone, Debug)]
pub struct DiffusionPass {
    /// `ẑ_0` `[rows, latent]`: what the decoder reconstructs from.
    pub x0_hat: Vec<f32>,
    /// The denoising loss (before `λ_diff`).
    pub loss: f64,
    z0: Vec<f32>,
    eps: Vec<f32>,
    steps: Vec<usize>,
    pred: Vec<f32>,
    trace: DenoiserTrace,
    mean_type: MeanType,
}

impl Denoiser {
    /// The forward part of [`DiffusionPass`]: `steps` (one per row) and `eps` are the
    /// caller's draws.
    #[allow(clippy::too_many_arguments)]
    pub fn diffusion_pass(
        &self,
        store: &ParamStore,
        schedule: &Schedule,
        mean_type: MeanType,
        z0: &[f32],
        steps: &[usize],
        eps: &[f32],
        cond: Option<Side<'_>>,
    ) -> DiffusionPass {
        let d = self.latent;
        assert!(
            z0.len() == steps.len() * d && eps.len() == z0.len(),
            "batch sizes"
        );
        let mut zt = vec![0f32; z0.len()];
        for (r, &t) in steps.iter().enumerate() {
            let rg = r * d..(r + 1) * d;
            schedule.q_sample(&z0[rg.clone()], &eps[rg.clone()], t, &mut zt[rg]);
        }
        let (pred, trace) = self.forward(store, &zt, steps, cond);
        let target = match mean_type {
            MeanType::Eps => eps,
            MeanType::X0 => z0,
        };
        let rows = steps.len().max(1) as f64;
        let loss = target
            .iter()
            .zip(&pred)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / rows;
        let x0_hat = match mean_type {
            MeanType::X0 => pred.clone(),
            MeanType::Eps => {
                let mut x0 = vec![0f32; zt.len()];
                for (r, &t) in steps.iter().enumerate() {
                    let rg = r * d..(r + 1) * d;
                    schedule.x0_from_eps(&zt[rg.clone()], &pred[rg.clone()], t, &mut x0[rg]);
                }
                x0
            }
        };
        DiffusionPass {
            x0_hat,
            loss,
            z0: z0.to_vec(),
            eps: eps.to_vec(),
            steps: steps.to_vec(),
            pred,
            trace,
            mean_type,
        }
    }

    /// The backward part: given `dL/dẑ_0` from the decoder and the weight `lambda` of the
    /// denoising loss in the total, writes the denoiser's gradients into `grads` and returns
    /// `dL/dz_0` (through `z_t`, through `ẑ_0`, and for `x0` through the target).
    #[allow(clippy::too_many_arguments)]
    pub fn diffusion_backward(
        &self,
        store: &ParamStore,
        schedule: &Schedule,
        pass: &DiffusionPass,
        d_x0_hat: &[f32],
        lambda: f64,
        cond: Option<Side<'_>>,
        grads: &mut Grads,
    ) -> Vec<f32> {
        let d = self.latent;
        let n = pass.z0.len();
        assert_eq!(d_x0_hat.len(), n, "gradient size");
        let rows = pass.steps.len().max(1) as f32;
        let c = (2.0 * lambda) as f32 / rows;
        let target = match pass.mean_type {
            MeanType::Eps => &pass.eps,
            MeanType::X0 => &pass.z0,
        };
        // dL/dprediction: the denoising loss, plus the decoder's gradient through ẑ_0.
        let mut dpred = vec![0f32; n];
        // dL/dz_t outside the denoiser (ẑ_0 = (z_t − s ε̂) / a for eps).
        let mut dzt_direct = vec![0f32; n];
        for (r, &t) in pass.steps.iter().enumerate() {
            let (a, s) = (
                schedule.alpha_bar(t).sqrt() as f32,
                (1.0 - schedule.alpha_bar(t)).sqrt() as f32,
            );
            for j in r * d..(r + 1) * d {
                let ddiff = -c * (target[j] - pass.pred[j]);
                match pass.mean_type {
                    MeanType::X0 => dpred[j] = ddiff + d_x0_hat[j],
                    MeanType::Eps => {
                        dpred[j] = ddiff - d_x0_hat[j] * s / a;
                        dzt_direct[j] = d_x0_hat[j] / a;
                    }
                }
            }
        }
        let dzt = self.backward(store, &pass.trace, &pass.pred, dpred, cond, grads);
        let mut dz0 = vec![0f32; n];
        for (r, &t) in pass.steps.iter().enumerate() {
            let a = schedule.alpha_bar(t).sqrt() as f32;
            for j in r * d..(r + 1) * d {
                dz0[j] = a * (dzt[j] + dzt_direct[j]);
                if pass.mean_type == MeanType::X0 {
                    // The target z_0 is the latent itself.
                    dz0[j] += c * (pass.z0[j] - pass.pred[j]);
                }
            }
        }
        dz0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_bar_is_the_product_of_one_minus_beta() {
        for s in [Schedule::paper(), Schedule::diffrec()] {
            let mut prod = 1.0;
            for t in 0..s.steps() {
                prod *= 1.0 - s.beta(t);
                assert!((s.alpha_bar(t) - prod).abs() <= 1e-15 * prod);
            }
        }
        let p = Schedule::paper();
        assert_eq!(p.steps(), 1000);
        assert!((p.beta(0) - 1e-4).abs() < 1e-18 && (p.beta(999) - 0.02).abs() < 1e-15);
        // Ho et al.'s ᾱ_T for this schedule is about 4.0e-5.
        assert!(
            (p.alpha_bar(999) - 4.04e-5).abs() < 0.05e-5,
            "{}",
            p.alpha_bar(999)
        );
        let d = Schedule::diffrec();
        assert_eq!(d.steps(), 40);
        assert!((d.beta(0) - 2.5e-5).abs() < 1e-18 && (d.beta(39) - 5e-5).abs() < 1e-18);
    }

    /// The posterior `q(z_{t−1} | z_t, z_0)` against its derivation as the product of the
    /// two Gaussians `q(z_t | z_{t−1}) = N(√α_t z_{t−1}, β_t)` and `q(z_{t−1} | z_0) =
    /// N(√ᾱ_{t−1} z_0, 1 − ᾱ_{t−1})`: precision `α_t / β_t + 1 / (1 − ᾱ_{t−1})`, mean
    /// `(√α_t z_t / β_t + √ᾱ_{t−1} z_0 / (1 − ᾱ_{t−1})) / precision`.
    #[test]
    fn posterior_matches_the_gaussian_product() {
        let s = Schedule::paper();
        let (z0, zt) = (0.7f64, -1.3f64);
        for t in [1, 2, 10, 500, 999] {
            let (b, prev) = (s.beta(t), s.alpha_bar_prev(t));
            let alpha = 1.0 - b;
            let precision = alpha / b + 1.0 / (1.0 - prev);
            let mean = (alpha.sqrt() * zt / b + prev.sqrt() * z0 / (1.0 - prev)) / precision;
            let (c0, ct) = s.posterior_mean_coefs(t);
            assert!((c0 * z0 + ct * zt - mean).abs() < 1e-12, "t {t}");
            assert!((s.posterior_variance(t) - 1.0 / precision).abs() < 1e-12 * precision);
        }
        // At the first step the posterior is the clean latent itself, with no variance.
        assert_eq!(s.posterior_variance(0), 0.0);
        let (c0, ct) = s.posterior_mean_coefs(0);
        assert!((c0 - 1.0).abs() < 1e-12 && ct.abs() < 1e-12);
    }

    #[test]
    fn noising_and_its_inverse() {
        let s = Schedule::diffrec();
        let z0 = [0.5f32, -1.0, 2.0];
        let eps = [0.3f32, 0.1, -0.7];
        let mut zt = [0f32; 3];
        s.q_sample(&z0, &eps, 17, &mut zt);
        let a = s.alpha_bar(17);
        for i in 0..3 {
            let want = a.sqrt() * z0[i] as f64 + (1.0 - a).sqrt() * eps[i] as f64;
            assert!((zt[i] as f64 - want).abs() < 1e-6);
        }
        let mut back = [0f32; 3];
        s.x0_from_eps(&zt, &eps, 17, &mut back);
        for i in 0..3 {
            assert!((back[i] - z0[i]).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_schedules_name_the_key() {
        let key = |r: Result<Schedule, ScheduleError>| r.unwrap_err().key;
        assert_eq!(key(Schedule::linear(0, 1.0, 1e-4, 0.02)), "steps");
        assert_eq!(key(Schedule::linear(10, 1.0, 0.0, 0.02)), "beta_min");
        assert_eq!(key(Schedule::linear(10, 1.0, 1e-4, 1.0)), "beta_max");
        assert_eq!(key(Schedule::linear(10, 1.0, -1.0, 0.02)), "beta_min");
        assert_eq!(
            key(Schedule::linear(10, f64::NAN, 1e-4, 0.02)),
            "noise_scale"
        );
        assert_eq!(key(Schedule::linear(10, 1.0, 0.02, 1e-4)), "beta_max");
        // 100,000 steps of β = 0.02 leave ᾱ_T ≈ e^-2020: underflow.
        let e = Schedule::linear(100_000, 1.0, 0.02, 0.02).unwrap_err();
        assert_eq!(e.key, "steps");
        assert!(e.to_string().contains("underflows"), "{e}");
        assert!(Schedule::linear(1, 1.0, 0.5, 0.5).is_ok());
    }

    #[test]
    fn tabulated_time_embeddings_equal_the_direct_ones() {
        for dim in [1, 7, 64] {
            let steps = [0usize, 3, 999, 40, 3, 1500, 0];
            let mut batch = vec![0f32; steps.len() * dim];
            time_embeddings(&steps, dim, &mut batch);
            for (row, &t) in batch.chunks_exact(dim).zip(&steps) {
                let mut direct = vec![0f32; dim];
                time_embedding(t as f64, dim, &mut direct);
                assert_eq!(row, &direct[..], "dim {dim}, t {t}");
            }
        }
    }

    #[test]
    fn time_embedding_is_cos_then_sin() {
        let mut e = [0f32; 7];
        time_embedding(3.0, 7, &mut e);
        assert!((e[0] - 3f32.cos()).abs() < 1e-6 && (e[3] - 3f32.sin()).abs() < 1e-6);
        let f = (-(10000f64.ln()) * 2.0 / 3.0).exp();
        assert!((e[2] as f64 - (3.0 * f).cos()).abs() < 1e-6);
        assert!((e[5] as f64 - (3.0 * f).sin()).abs() < 1e-6);
        assert_eq!(e[6], 0.0);
        let mut z = [9f32; 4];
        time_embedding(0.0, 4, &mut z);
        assert_eq!(z, [1.0, 1.0, 0.0, 0.0]);
    }

    /// The denoiser's parameter and input gradients against burn's autodiff of the same graph
    /// (sinusoids -> linear -> [z_t ; t] ++ c_u -> tanh MLP -> linear), loss `Σ out ⊙ r`.
    #[test]
    fn denoiser_matches_burn_autodiff() {
        use burn::tensor::{Device, Tensor, TensorData};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let (d, e, c, rows) = (3, 6, 2, 4);
        let mut store = ParamStore::new();
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() - 0.5).collect() };
        let den = Denoiser::new(&mut store, "den", (d, e, c), &[5, 4], |i, o| {
            (draw(i * o), draw(o))
        });
        let zt = draw(rows * d);
        let cu = draw(rows * c);
        let r = draw(rows * d);
        let steps = [0usize, 7, 39, 12];
        let side = Some(Side::new(&cu, 1));
        let (out, trace) = den.forward(&store, &zt, &steps, side);
        let mut grads = store.zero_grads();
        let dz = den.backward(&store, &trace, &out, r.clone(), side, &mut grads);

        let dev = Device::flex().autodiff();
        let t2 = |v: &[f32], s: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), s), &dev).require_grad()
        };
        let host = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
        let params = burn_params(&store, &dev);
        let p = |i: usize| params[i].1.clone();
        let mut sin = vec![0f32; rows * e];
        for (row, &t) in sin.chunks_exact_mut(e).zip(&steps) {
            time_embedding(t as f64, e, row);
        }
        let sin = Tensor::<2>::from_data(TensorData::new(sin, [rows, e]), &dev);
        let tfeat = sin.matmul(p(0)) + p(1);
        let zt_t = t2(&zt, [rows, d]);
        let cu_t = Tensor::<2>::from_data(TensorData::new(cu.clone(), [rows, c]), &dev);
        let x = Tensor::cat(vec![zt_t.clone(), tfeat, cu_t], 1);
        let h1 = (x.matmul(p(2)) + p(3)).tanh();
        let h2 = (h1.matmul(p(4)) + p(5)).tanh();
        let y = h2.matmul(p(6)) + p(7);
        for (a, b) in out.iter().zip(host(y.clone())) {
            assert!((a - b).abs() < 1e-5, "output {a} vs {b}");
        }
        let rt = Tensor::<2>::from_data(TensorData::new(r, [rows, d]), &dev);
        let g = (y * rt).sum().backward();
        let close = |got: &[f32], want: Vec<f32>, what: &str| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5 + 1e-4 * b.abs(), "{what}: {a} vs {b}");
            }
            assert!(got.iter().any(|&v| v != 0.0), "{what} all zero");
        };
        for (id, t) in &params {
            close(grads.get(*id), host(t.grad(&g).unwrap()), store.name(*id));
        }
        close(&dz, host(zt_t.grad(&g).unwrap()), "dz_t");
    }

    /// The block embedding (MacridVAE's facets): a denoiser over 3 blocks of 2 rows, with the
    /// conditioning repeated per block, against burn's autodiff of the same graph (the time
    /// features plus the block's embedding row); the embedding's gradient is each block's
    /// sum. A zero table gives the plain denoiser's output, and a batch that is not whole
    /// blocks is refused.
    #[test]
    fn block_embedding_matches_burn_autodiff() {
        use burn::tensor::{Device, Int, Tensor, TensorData};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
        let (d, e, c, blocks, per) = (3, 6, 2, 3, 2);
        let rows = blocks * per;
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() - 0.5).collect() };
        let layers: Vec<(Vec<f32>, Vec<f32>)> = [(e, e), (d + e + c, 5), (5, 4), (4, d)]
            .iter()
            .map(|&(i, o)| (draw(i * o), draw(o)))
            .collect();
        let build = |store: &mut ParamStore| {
            let mut it = layers.clone().into_iter();
            Denoiser::new(store, "den", (d, e, c), &[5, 4], |_, _| it.next().unwrap())
        };
        let table = draw(blocks * e);
        let zt = draw(rows * d);
        let cu = draw(per * c);
        let r = draw(rows * d);
        let steps = [0usize, 7, 39, 12, 3, 3];
        let side = Some(Side::new(&cu, blocks));

        let mut plain_store = ParamStore::new();
        let plain = build(&mut plain_store);
        let (plain_out, _) = plain.forward(&plain_store, &zt, &steps, side);
        let mut zero_store = ParamStore::new();
        let zero = build(&mut zero_store).with_block_embedding(
            &mut zero_store,
            "den.block",
            blocks,
            vec![0.0; blocks * e],
        );
        assert_eq!(zero.forward(&zero_store, &zt, &steps, side).0, plain_out);

        let mut store = ParamStore::new();
        let den = build(&mut store).with_block_embedding(&mut store, "den.block", blocks, table);
        assert_eq!(den.block_embedding(), store.id("den.block"));
        assert_eq!(plain.block_embedding(), None);
        let (out, trace) = den.forward(&store, &zt, &steps, side);
        assert_ne!(out, plain_out);
        let mut grads = store.zero_grads();
        let dz = den.backward(&store, &trace, &out, r.clone(), side, &mut grads);

        let dev = Device::flex().autodiff();
        let host = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
        let params = burn_params(&store, &dev);
        let p = |i: usize| params[i].1.clone();
        let mut sin = vec![0f32; rows * e];
        for (row, &t) in sin.chunks_exact_mut(e).zip(&steps) {
            time_embedding(t as f64, e, row);
        }
        let sin = Tensor::<2>::from_data(TensorData::new(sin, [rows, e]), &dev);
        let block_of: Vec<i64> = (0..rows as i64).map(|r| r / per as i64).collect();
        let block_of = Tensor::<1, Int>::from_data(TensorData::new(block_of, [rows]), &dev);
        let tfeat = sin.matmul(p(0)) + p(1) + p(8).select(0, block_of);
        let zt_t =
            Tensor::<2>::from_data(TensorData::new(zt.clone(), [rows, d]), &dev).require_grad();
        let cu_t = Tensor::<2>::from_data(TensorData::new(cu.clone(), [per, c]), &dev);
        let x = Tensor::cat(
            vec![zt_t.clone(), tfeat, Tensor::cat(vec![cu_t; blocks], 0)],
            1,
        );
        let h1 = (x.matmul(p(2)) + p(3)).tanh();
        let h2 = (h1.matmul(p(4)) + p(5)).tanh();
        let y = h2.matmul(p(6)) + p(7);
        for (a, b) in out.iter().zip(host(y.clone())) {
            assert!((a - b).abs() < 1e-5, "output {a} vs {b}");
        }
        let rt = Tensor::<2>::from_data(TensorData::new(r, [rows, d]), &dev);
        let g = (y * rt).sum().backward();
        let close = |got: &[f32], want: Vec<f32>, what: &str| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5 + 1e-4 * b.abs(), "{what}: {a} vs {b}");
            }
            assert!(got.iter().any(|&v| v != 0.0), "{what} all zero");
        };
        assert_eq!(params.len(), 9);
        for (id, t) in &params {
            close(grads.get(*id), host(t.grad(&g).unwrap()), store.name(*id));
        }
        close(&dz, host(zt_t.grad(&g).unwrap()), "dz_t");

        let five =
            std::panic::catch_unwind(|| den.forward(&store, &zt[..5 * d], &steps[..5], None));
        assert!(five.is_err(), "5 rows are not 3 equal blocks");
    }

    /// Every tensor of `store` as a tracked 2-d burn tensor (a bias as one row), in
    /// registration order.
    fn burn_params(
        store: &ParamStore,
        dev: &burn::tensor::Device,
    ) -> Vec<(crate::ParamId, burn::tensor::Tensor<2>)> {
        use burn::tensor::{Tensor, TensorData};
        store
            .ids()
            .map(|id| {
                let sh = store.shape(id);
                let shape = if sh.len() == 1 {
                    [1, sh[0]]
                } else {
                    [sh[0], sh[1]]
                };
                let data = TensorData::new(store.get(id).to_vec(), shape);
                (id, Tensor::<2>::from_data(data, dev).require_grad())
            })
            .collect()
    }

    fn tiny_denoiser(store: &mut ParamStore, cond: usize) -> Denoiser {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        Denoiser::new(store, "den", (4, 8, cond), &[16, 16], |i, o| {
            let w = (0..i * o).map(|_| rng.random::<f32>() - 0.5).collect();
            let b = (0..o).map(|_| rng.random::<f32>() * 0.1).collect();
            (w, b)
        })
    }

    /// The reverse chain: no steps leave `μ` as it is; its last step (`t = 0`) returns the
    /// denoiser's `ẑ_0` exactly (the posterior at the first step is the clean latent); the
    /// chain is the same on 1 and 3 threads and, with seeded noise, reproducible.
    #[test]
    fn reverse_chain_endpoints_and_determinism() {
        let mut store = ParamStore::new();
        let den = tiny_denoiser(&mut store, 2);
        let s = Schedule::diffrec();
        let mu: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let cu: Vec<f32> = (0..6).map(|i| (i as f32 * 0.11).cos()).collect();
        let side = Some(Side::new(&cu, 1));
        for mt in [MeanType::Eps, MeanType::X0] {
            let mut z = mu.clone();
            den.reverse(&store, &s, mt, &mut z, 0, side, None);
            assert_eq!(z, mu, "t_s = 0 returns μ unchanged");
            let mut z = mu.clone();
            den.reverse(&store, &s, mt, &mut z, 1, side, None);
            let x0 = den.predict_x0(&store, &s, mt, &mu, 0, side);
            for (a, b) in z.iter().zip(&x0) {
                assert!((a - b).abs() < 1e-6, "{mt:?}: {a} vs {b}");
            }
        }
        let run = |threads: usize, seeded: bool| {
            crate::on_threads(threads, || {
                let mut z = mu.clone();
                let mut state = 12345u64;
                let mut draw = move || {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                };
                let noise: Option<&mut dyn FnMut() -> f32> =
                    if seeded { Some(&mut draw) } else { None };
                den.reverse(&store, &s, MeanType::Eps, &mut z, 40, side, noise);
                z
            })
        };
        assert_eq!(run(1, false), run(3, false));
        assert_eq!(run(1, true), run(3, true));
        assert_ne!(run(1, true), run(1, false));
    }

    /// The whole diffusion term against burn: `L = Σ ẑ_0 ⊙ r + λ ‖target − f(z_t)‖² / B` with
    /// `z_t` built from a tracked `z_0`, for both mean types: every denoiser parameter and
    /// `dL/dz_0`.
    #[test]
    fn diffusion_pass_matches_burn_autodiff() {
        use burn::tensor::{Device, Tensor, TensorData};
        let s = Schedule::paper();
        let (d, rows, lambda) = (4usize, 3usize, 0.7f64);
        let z0: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.53).sin()).collect();
        let eps: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.29).cos()).collect();
        let r: Vec<f32> = (0..rows * d)
            .map(|i| (i as f32 * 0.71).sin() * 0.5)
            .collect();
        let cu: Vec<f32> = (0..rows * 2).map(|i| i as f32 * 0.1 - 0.2).collect();
        let steps = [3usize, 250, 998];
        for mt in [MeanType::Eps, MeanType::X0] {
            let mut store = ParamStore::new();
            let den = tiny_denoiser(&mut store, 2);
            let side = Some(Side::new(&cu, 1));
            let pass = den.diffusion_pass(&store, &s, mt, &z0, &steps, &eps, side);
            let mut grads = store.zero_grads();
            let dz0 = den.diffusion_backward(&store, &s, &pass, &r, lambda, side, &mut grads);

            let dev = Device::flex().autodiff();
            let t2 = |v: &[f32], sh: [usize; 2], track: bool| {
                let t = Tensor::<2>::from_data(TensorData::new(v.to_vec(), sh), &dev);
                if track {
                    t.require_grad()
                } else {
                    t
                }
            };
            let host = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
            let params = burn_params(&store, &dev);
            let p = |i: usize| params[i].1.clone();
            let col = |f: &dyn Fn(usize) -> f64| {
                let v: Vec<f32> = steps.iter().map(|&t| f(t) as f32).collect();
                t2(&v, [rows, 1], false)
            };
            let a = col(&|t| s.alpha_bar(t).sqrt());
            let sd = col(&|t| (1.0 - s.alpha_bar(t)).sqrt());
            let z0t = t2(&z0, [rows, d], true);
            let epst = t2(&eps, [rows, d], false);
            let zt = z0t.clone() * a.clone() + epst.clone() * sd.clone();
            let mut sin = vec![0f32; rows * 8];
            for (row, &t) in sin.chunks_exact_mut(8).zip(&steps) {
                time_embedding(t as f64, 8, row);
            }
            let tfeat = t2(&sin, [rows, 8], false).matmul(p(0)) + p(1);
            let x = Tensor::cat(vec![zt.clone(), tfeat, t2(&cu, [rows, 2], false)], 1);
            let h1 = (x.matmul(p(2)) + p(3)).tanh();
            let h2 = (h1.matmul(p(4)) + p(5)).tanh();
            let pred = h2.matmul(p(6)) + p(7);
            let (x0_hat, target) = match mt {
                MeanType::Eps => ((zt - pred.clone() * sd) / a, epst),
                MeanType::X0 => (pred.clone(), z0t.clone()),
            };
            for (u, v) in pass.x0_hat.iter().zip(host(x0_hat.clone())) {
                assert!(
                    (u - v).abs() < 1e-4 * (1.0 + v.abs()),
                    "{mt:?} x0_hat {u} vs {v}"
                );
            }
            let diff = (target - pred).powf_scalar(2.0).sum() * (lambda / rows as f64);
            let loss = (x0_hat * t2(&r, [rows, d], false)).sum() + diff;
            let g = loss.backward();
            let close = |got: &[f32], want: Vec<f32>, what: &str| {
                for (u, v) in got.iter().zip(&want) {
                    assert!(
                        (u - v).abs() < 1e-4 + 1e-3 * v.abs(),
                        "{mt:?} {what}: {u} vs {v}"
                    );
                }
                assert!(got.iter().any(|&v| v != 0.0), "{mt:?} {what} all zero");
            };
            for (id, t) in &params {
                close(grads.get(*id), host(t.grad(&g).unwrap()), store.name(*id));
            }
            close(&dz0, host(z0t.grad(&g).unwrap()), "dz_0");
        }
    }
}
