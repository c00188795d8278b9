//! Latent diffusion on a VAE's latent (MODELS.md "Latent diffusion", the paper's "Ours"): the
//! configuration keys the VAEs share and the state a diffusion-enabled VAE carries (schedule,
//! denoiser, settings). The mathematics (schedule, noising, reverse posterior, denoiser and
//! its gradients) is `encore_nn::diffusion`'s.

use encore_core::config::check_range;
use encore_core::ModelError;
use encore_nn::diffusion::{Denoiser, MeanType, Schedule};
use encore_nn::ParamStore;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::common::normals;

/// Which schedule, if any (`diffusion` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffusionKind {
    /// The plain VAE.
    #[default]
    None,
    /// `T = 1000`, `β` from 1e-4 to 0.02 (the paper's code, Ho et al.).
    Paper,
    /// `T = 40`, scale 0.005, `β` from 0.005 to 0.01 (DiffRec's ML-1M setting).
    Diffrec,
}

/// What the denoiser predicts (`mean_type` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeanTypeKey {
    /// The noise `ε` (Ho et al.).
    #[default]
    Eps,
    /// The clean latent `z_0` (DiffRec).
    X0,
}

impl From<MeanTypeKey> for MeanType {
    fn from(k: MeanTypeKey) -> Self {
        match k {
            MeanTypeKey::Eps => MeanType::Eps,
            MeanTypeKey::X0 => MeanType::X0,
        }
    }
}

pub(crate) fn default_lambda() -> f64 {
    1.0
}

pub(crate) fn default_hidden() -> Vec<usize> {
    vec![600, 600]
}

pub(crate) fn default_time_dim() -> usize {
    64
}

/// The diffusion keys of a VAE configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keys<'a> {
    pub kind: DiffusionKind,
    pub mean_type: MeanTypeKey,
    pub lambda: f64,
    pub hidden: &'a [usize],
    pub time_dim: usize,
    pub reverse_steps: Option<usize>,
}

impl Keys<'_> {
    fn schedule(&self) -> Option<Schedule> {
        match self.kind {
            DiffusionKind::None => None,
            DiffusionKind::Paper => Some(Schedule::paper()),
            DiffusionKind::Diffrec => Some(Schedule::diffrec()),
        }
    }

    /// Range checks naming the key.
    pub fn check(&self) -> Result<(), ModelError> {
        check_range("lambda_diff", self.lambda, 0.0, 1e6)?;
        if self.hidden.is_empty() {
            return Err(ModelError::config(
                "denoiser_hidden",
                "must list at least one hidden layer size",
            ));
        }
        for &h in self.hidden {
            check_range("denoiser_hidden", h, 1, 1 << 16)?;
        }
        check_range("time_dim", self.time_dim, 2, 4096)?;
        if let (Some(s), Some(t)) = (self.schedule(), self.reverse_steps) {
            if t > s.steps() {
                return Err(ModelError::config(
                    "reverse_steps",
                    format!(
                        "is {t}, beyond the schedule's {} steps (0 scores from μ directly)",
                        s.steps()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A VAE's diffusion part: the schedule, the denoiser (its parameters in the model's store,
/// `denoiser.*`) and its settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LatentDiffusion {
    pub schedule: Schedule,
    pub denoiser: Denoiser,
    pub mean_type: MeanType,
    pub lambda: f64,
    /// The reverse chain's start `t_s` when scoring (`T` by default).
    pub start: usize,
}

impl LatentDiffusion {
    /// `None` for `diffusion = "none"`; otherwise the denoiser registered in `params` (after
    /// the VAE's own tensors, so a plain model's draws are unchanged), `latent` wide, with
    /// `cond` side-input rows for a conditioned model; `init(fan_in, fan_out)` draws each
    /// layer's weight and bias.
    pub fn new(
        keys: Keys<'_>,
        params: &mut ParamStore,
        latent: usize,
        cond: usize,
        init: impl FnMut(usize, usize) -> (Vec<f32>, Vec<f32>),
    ) -> Option<Self> {
        let schedule = keys.schedule()?;
        let denoiser = Denoiser::new(
            params,
            "denoiser",
            (latent, keys.time_dim, cond),
            keys.hidden,
            init,
        );
        Some(LatentDiffusion {
            start: keys.reverse_steps.unwrap_or(schedule.steps()),
            schedule,
            denoiser,
            mean_type: keys.mean_type.into(),
            lambda: keys.lambda,
        })
    }
}

/// One training step's draws for the diffusion term: a step `t` per latent row, uniform over
/// the schedule, and `ε ~ N(0, 1)` `[rows, d]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Draws {
    pub steps: Vec<usize>,
    pub eps: Vec<f32>,
}

impl LatentDiffusion {
    /// The same diffusion part with a learned facet embedding added to the time features
    /// (MODELS.md, "Ours (MacridVAE)"): `denoiser.facet_emb` `[facets, time_dim]` with initial
    /// values `values`, registered after the denoiser's layers. Batches are then facet-major
    /// (row `k * B + r` is user `r`'s facet `k`), as MacridVAE's latents are.
    pub fn with_facet_embedding(
        mut self,
        params: &mut ParamStore,
        facets: usize,
        values: Vec<f32>,
    ) -> Self {
        self.denoiser =
            self.denoiser
                .with_block_embedding(params, "denoiser.facet_emb", facets, values);
        self
    }

    /// The draws of one training step for `rows` latents of width `d`, from `rng`: every
    /// row's step first, then `ε` row by row (Diff-MultiVAE's order).
    pub fn draw(&self, rng: &mut ChaCha8Rng, rows: usize, d: usize) -> Draws {
        Draws {
            steps: (0..rows)
                .map(|_| rng.random_range(0..self.schedule.steps()))
                .collect(),
            eps: normals(rng, rows * d, 1.0),
        }
    }
}
