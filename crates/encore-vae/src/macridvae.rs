//! MacridVAE (Ma et al. 2019, "Learning Disentangled Representations for Recommendation"; the
//! reference is the official code), MODELS.md "MacridVAE".
//!
//! - Item embeddings `H ∈ R^{I×d}` and prototypes `M ∈ R^{K×d}`, both L2-normalised before use.
//! - Facet assignments `C = softmax(cos(h_i, m_k) / τ)` over `k`; in training a soft
//!   Gumbel-softmax sample (temperature 1) unless `nogb`.
//! - Encoder input of facet `k`: `x_u ⊙ C_{·k}`, then (original) L2-normalised per facet and a
//!   fresh dropout mask per facet; (recbole) the row is normalised and dropped out once, then
//!   multiplied by `C_{·k}`. Both go through the sparse first layer, so the gradient reaches
//!   `C` (and `H`, `M`) through the values.
//! - Shared encoder `I → hidden (tanh) → 2d`; `μ_k` L2-normalised; the second half `h` is the
//!   negative log-variance, `σ_k = exp(−h / 2) · std0`; `z_k = μ_k + σ_k ⊙ ε` in training,
//!   `μ_k` when scoring.
//! - Decoder `p_ui = Σ_k exp(cos(z_k, h_i) / τ) · C_ik`, logits `ln p_ui`.
//! - Loss `−Σ_i x_ui log_softmax(logits)_i + β Σ_k KL_k`, `KL_k = ½ Σ_j (h + e^{−h} − 1)` (no
//!   `μ²` term: `μ_k` is unit-norm), averaged over the batch; `β` annealed as in MultiVAE.
//!
//! Presets: `original` (`K = 7`, `d = 100`, hidden 100, `std0 = 0.075`, per-facet
//! normalisation and dropout, batch 500, Xavier-uniform) and `recbole` (RecBole 1.2: `K = 10`,
//! `d = 64`, hidden 600, `std0 = 0.01`, whole-row normalisation and dropout, batch 2048,
//! Xavier-normal, zero biases).
//!
//! Checked against RecBole 1.2's `macridvae.py` for the `recbole` preset: cosine assignments
//! with `gumbel_softmax(tau = 1, hard = False)` in training and `softmax` when scoring; the row
//! normalised and dropped out once, then `x ⊙ C_{·k}` per facet; `μ_k` normalised; `z_k`
//! normalised again after the noise; `p = Σ_k exp(cos / τ) C_{·k}`, logits `ln p`; KL summed
//! over facets, each a mean over users; `reg_weights = [0, 0]` (no L2 term); Xavier-normal on
//! the embeddings (fan-in `d`, fan-out the row count) and the linear weights, zero biases.
//! β's one-step offset is as in MultiVAE.
//!
//! Implementation: the forward and backward passes are written by hand (`hand.rs`); the
//! burn graph (`MacridVae::forward`, tests only) is the reference they are checked against.
//!
//! Deviations: RecBole names the second half `log σ²` rather than `−log σ²`; with a linear layer
//! and a sign-symmetric initialisation the two parameterisations are the same model (negate the
//! layer's second half), so both presets use the official form. MODELS.md gives no batch size
//! for the official code; the `original` preset uses MultiVAE's 500.
//!
//! MacridVAE-C (MODELS.md "Conditioning", built with [`MacridVae::with_conditioning`]):
//! `[μ_k, −log σ²_k] = W₂ [h_k ; c_u]`, `z̃_k = normalise([z_k ; c_u])`, and the item
//! embeddings (and, a resolution where MODELS.md is silent, the prototypes, which the
//! assignment cosine pairs with them) are `d + cond_dim` wide, so the decoder cosine is taken
//! in `d + cond_dim` dimensions; the KL term stays on the `d`-dimensional `μ_k, σ_k`. `c_u`
//! comes only from the rows the model is given (see `MultiVae`). The decoder's products grow
//! with the width: scoring costs about `(d + cond_dim) / d` times the plain model's decoder.
//! Note: a one-row batch (fold-in) and the same row in a larger batch agree to rounding, not
//! bit for bit (measured at `d = 12`: `gemm` evidently sums a one-row product in another
//! order); this holds for the plain model too, whose own test passes bit for bit only at
//! `d = 3`.
//!
//! Diff-MacridVAE (MODELS.md "Latent diffusion", the paper's "Ours (MacridVAE)"; config
//! `diffusion` other than `none`, keys shared with Diff-MultiVAE in [`crate::latent_diffusion`]):
//! the diffusion runs per facet on `z_k`, the `K x B` facet rows going through one shared
//! denoiser `f(z_t, t, k, c_u)` (`encore_nn::diffusion::Denoiser`) whose time features get a
//! learned facet embedding added (`denoiser.facet_emb` `[K, time_dim]`).
//! - Training: `z_0 = z_k` (the normalised sample), a step `t` and `ε` per (user, facet) row,
//!   `z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε`, the denoiser's `ẑ_0` L2-normalised again (as MacridVAE
//!   normalises `z_k`) and decoded (MacridVAE-C: `normalise([ẑ_0 ; c_u])`); loss `recon + β Σ_k
//!   KL_k + λ_diff Σ_k ‖target − prediction‖²`, averaged over users.
//! - Scoring: `μ_k` taken as `z_{t_s}`, the reverse chain with posterior means on all users x
//!   facets at once, `ẑ_0` normalised, decoded; `t_s = 0` decodes `μ_k` itself (no chain, no
//!   second normalisation: bit for bit the plain model's scores).
//!
//! Resolutions where MODELS.md is silent: the facet embedding is added after the time layer
//! (where class-conditional diffusion adds its class embedding, Dhariwal & Nichol 2021) and
//! starts at `N(0, 0.02²)` (DiT's class embedding, Peebles & Xie 2023: small beside the time
//! features, so the denoiser starts nearly facet-blind); the denoising loss is summed over
//! facets like the KL term (the diffusion loss of the joint `K d` latent), so `λ_diff`
//! weighs it against the reconstruction as the KL's `β` does; the denoiser's `c_u` is
//! repeated per facet, as the encoder's; every draw comes after the plain model's (a step's
//! `t` and `ε` after its `ε`, the denoiser and the facet embedding after the VAE's weights),
//! so `diffusion = none` leaves every number as it was.
//!
//! Weights (safetensors, `[d_input, d_output]` matrices): `item_embedding` `[I, d]`,
//! `k_embedding` `[K, d]`, `encoder.<l>.weight`, `encoder.<l>.bias` (MacridVAE-C:
//! `[I, d + c]`, `[K, d + c]`, and the last encoder weight has `c` more rows); with diffusion
//! `denoiser.time.*`, `denoiser.mlp.<l>.*` and `denoiser.facet_emb` after them.

use std::collections::BTreeMap;
use std::path::Path;

#[cfg(test)]
use burn::tensor::{
    activation::{log_softmax, softmax},
    Device, IndexingUpdateOp, Tensor,
};
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
    SparseBatch,
};
#[cfg(test)]
use crate::common::{
    cpu, float_tensor, int_tensor, l2_normalise_rows, linear, param_tensor, to_vec,
};
use crate::conditioning::{self, Conditioning, ConditioningKind};
use crate::latent_diffusion::{self, DiffusionKind, LatentDiffusion, MeanTypeKey};
use crate::multivae::{check_dropout, check_lr, StepLoss};
use encore_nn::{Activation, Dense, Mlp, ParamId, ParamStore};

/// MacridVAE's configuration (see the module documentation for the two presets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacridVaeConfig {
    /// `"original"` (Ma et al.'s code) or `"recbole"` (RecBole 1.2's defaults).
    pub preset: Preset,
    /// Number of facets (prototypes) `K`, >= 1. original 7; recbole 10.
    pub n_facets: usize,
    /// Latent size `d` per facet (also the item-embedding size). original 100; recbole 64.
    pub latent_dim: usize,
    /// Hidden layer sizes of the shared encoder. original `[100]`; recbole `[600]`.
    pub hidden_dims: Vec<usize>,
    /// Temperature `τ` of the cosine similarities, > 0. Both: 0.1.
    pub tau: f64,
    /// Input dropout probability, in `[0, 1)`. Both: 0.5.
    pub dropout: f64,
    /// Prior standard deviation `std0` scaling `σ`. original 0.075; recbole 0.01.
    pub std0: f64,
    /// Use the assignment softmax in training too, instead of a Gumbel-softmax sample.
    pub nogb: bool,
    /// Normalise and drop out the whole row once before splitting into facets (RecBole)
    /// instead of per facet (the official code). original false; recbole true.
    pub whole_row_input: bool,
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
    /// Standard deviation of the truncated-normal bias initialisation (0: zeros).
    /// original 0.001; recbole 0.
    pub bias_init_std: f64,
    /// Seed of the initial weights.
    pub init_seed: u64,
    /// Conditioning (MODELS.md "Conditioning"): `"none"` (plain MacridVAE) or the fusion the
    /// features come from, `"audio"`, `"lyrics"`, `"concat"`, `"tensor"` (MacridVAE-C, built
    /// with [`MacridVae::with_conditioning`]). Default `"none"`.
    #[serde(default)]
    pub conditioning: ConditioningKind,
    /// Dimensions of the fused features `dim(c_u)`, >= 1 (the CLI fuses to this size); only
    /// used when conditioned. Default 128 (SPEC §3).
    #[serde(default = "conditioning::default_dim")]
    pub cond_dim: usize,
    /// Latent diffusion on every facet's latent (MODELS.md, the paper's "Ours (MacridVAE)"):
    /// `"none"` (default), `"paper"` (`T = 1000`) or `"diffrec"` (`T = 40`).
    #[serde(default)]
    pub diffusion: DiffusionKind,
    /// What the denoiser predicts: `"eps"` (default, Ho et al.) or `"x0"` (DiffRec).
    #[serde(default)]
    pub mean_type: MeanTypeKey,
    /// Weight `λ_diff` of the denoising loss (summed over facets, averaged over users), in
    /// `[0, 1e6]`. Default 1.
    #[serde(default = "latent_diffusion::default_lambda")]
    pub lambda_diff: f64,
    /// The denoiser's hidden layers (tanh). Default `[600, 600]`.
    #[serde(default = "latent_diffusion::default_hidden")]
    pub denoiser_hidden: Vec<usize>,
    /// Width of the sinusoidal time embedding (then a linear layer of the same width, plus
    /// the facet's embedding). Default 64.
    #[serde(default = "latent_diffusion::default_time_dim")]
    pub time_dim: usize,
    /// Where the reverse chain starts when scoring, `t_s` in `0..=T` (0: decode `μ_k`
    /// directly). Default: `T`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_steps: Option<usize>,
}

impl MacridVaeConfig {
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
        MacridVaeConfig {
            preset: Preset::Original,
            n_facets: 7,
            latent_dim: 100,
            hidden_dims: vec![100],
            tau: 0.1,
            dropout: 0.5,
            std0: 0.075,
            nogb: false,
            whole_row_input: false,
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
        MacridVaeConfig {
            preset: Preset::Recbole,
            n_facets: 10,
            latent_dim: 64,
            hidden_dims: vec![600],
            std0: 0.01,
            whole_row_input: true,
            batch_size: 2048,
            init: Init::XavierNormal,
            bias_init_std: 0.0,
            ..Self::original()
        }
    }
}

impl ModelConfig for MacridVaeConfig {
    const MODEL: &'static str = "macridvae";

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
        check_range("n_facets", self.n_facets, 1, 1024)?;
        check_range("latent_dim", self.latent_dim, 1, 1 << 20)?;
        if self.hidden_dims.is_empty() {
            return Err(ModelError::config(
                "hidden_dims",
                "must list at least one hidden layer size",
            ));
        }
        for &h in &self.hidden_dims {
            check_range("hidden_dims", h, 1, 1 << 20)?;
        }
        if !(self.tau > 0.0 && self.tau <= 100.0) {
            return Err(ModelError::config(
                "tau",
                format!("must be in (0, 100], got {}", self.tau),
            ));
        }
        check_dropout(self.dropout)?;
        check_range("std0", self.std0, 0.0, 1e3)?;
        check_range("anneal_cap", self.anneal_cap, 0.0, 1e6)?;
        check_lr(self.lr)?;
        check_range("batch_size", self.batch_size, 1, 1 << 24)?;
        check_range("bias_init_std", self.bias_init_std, 0.0, 1.0)?;
        self.diffusion_keys().check()?;
        conditioning::check_config(self.cond_dim)
    }

    fn trainer_defaults(&self) -> TrainerConfig {
        TrainerConfig {
            epochs: if self.preset == Preset::Recbole {
                300
            } else {
                200
            },
            ..TrainerConfig::default()
        }
    }
}

/// Users scored per forward pass (bounds memory at two buffers of this many rows x items).
const SCORE_CHUNK: usize = 1024;

/// Standard deviation of the facet embedding's initial values (Diff-MacridVAE): DiT's
/// class embedding (Peebles & Xie 2023), small beside the time features (about 0.7 at
/// `time_dim = 64`), so the denoiser starts nearly facet-blind and learns the facets apart.
const FACET_EMBEDDING_STD: f32 = 0.02;

mod hand;

/// A MacridVAE model: configuration, weights, and training state.
#[derive(Debug, Clone)]
pub struct MacridVae {
    config: MacridVaeConfig,
    n_items: usize,
    params: ParamStore,
    net: Net,
    adam: Adam,
    updates: u64,
    /// The item features `c_u` is computed from (MacridVAE-C); `None` for `none`.
    cond: Option<Conditioning>,
    /// The training step's large buffers, kept between steps.
    scratch: Scratch,
    /// The latent diffusion part (`diffusion` not `"none"`), on the facet latents.
    diffusion: Option<LatentDiffusion>,
}

/// Reusable buffers of the training step, so that it neither allocates nor zeroes them
/// each time (with glibc keeping freed memory, each fresh `K x B x hidden` block was a
/// single-threaded 23 MB `memset` on ml-100k). Their contents are never read before being
/// written, so they are neither saved, cloned (a clone starts empty) nor printed in full.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The decoder's `Q_k` of every facet, `[K, B, I]`.
    q: Vec<f32>,
    /// The first layer's output `[K * B, hidden]`.
    first_out: Vec<f32>,
    /// The gradient at the first layer's output `[K * B, hidden]`.
    first_grad: Vec<f32>,
    /// The parameters' gradients (zeroed by Adam after each step; empty until the first).
    grads: encore_nn::Grads,
    /// Users per block of the training decoder; `None`: from the sizes (tests set it to
    /// check that blocking keeps the loss and gradients).
    block_users: Option<usize>,
}

impl Clone for Scratch {
    fn clone(&self) -> Self {
        Scratch {
            block_users: self.block_users,
            ..Scratch::default()
        }
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.q.len() + self.first_out.len() + self.first_grad.len();
        write!(f, "Scratch({n} floats)")
    }
}

/// MacridVAE's parameters by role: the item and prototype embeddings, the facet-grouped first
/// layer `encoder.0` (model-specific: its input values depend on the assignments, see
/// `hand.rs`) and the shared encoder's remaining layers.
#[derive(Debug, Clone, PartialEq)]
struct Net {
    items: ParamId,
    cores: ParamId,
    first_w: ParamId,
    first_b: ParamId,
    /// The first layer's width.
    hidden: usize,
    /// `encoder.1` ... (`tanh` between layers, linear `[μ | log σ²]` output; MacridVAE-C's
    /// last layer has `cond_dim` side-input rows).
    encoder: Mlp,
}

/// Parameter tensors of one forward pass on burn (the reference in the tests).
#[cfg(test)]
struct Weights {
    items: Tensor<2>,
    cores: Tensor<2>,
    /// The encoder's layers, `encoder.0` first.
    ws: Vec<Tensor<2>>,
    bs: Vec<Tensor<1>>,
    /// Diff-MacridVAE: the denoiser's layers (`denoiser.time`, then `denoiser.mlp.*`) and the
    /// facet embedding.
    den_ws: Vec<Tensor<2>>,
    den_bs: Vec<Tensor<1>>,
    facet_emb: Option<Tensor<2>>,
    /// Every tensor's gradient, in registration order.
    all: Vec<GradOf>,
}

/// Reads one parameter tensor's gradient (tests only).
#[cfg(test)]
type GradOf = Box<dyn Fn(&burn::tensor::Gradients) -> Option<Vec<f32>>>;

#[cfg(test)]
impl Weights {
    /// The tensors by name: embeddings, then weight and bias per layer.
    fn new(params: &ParamStore, device: &Device) -> Self {
        let mut w = Weights {
            items: param_tensor::<2>(params, params.id("item_embedding").unwrap(), device),
            cores: param_tensor::<2>(params, params.id("k_embedding").unwrap(), device),
            ws: Vec::new(),
            bs: Vec::new(),
            den_ws: Vec::new(),
            den_bs: Vec::new(),
            facet_emb: None,
            all: Vec::new(),
        };
        fn of<const D: usize>(t: &Tensor<D>) -> GradOf {
            let t = t.clone();
            Box::new(move |g| t.grad(g).map(to_vec))
        }
        for id in params.ids() {
            let name = params.name(id);
            let den = name.starts_with("denoiser.");
            let grad = match name {
                "item_embedding" => of(&w.items),
                "k_embedding" => of(&w.cores),
                "denoiser.facet_emb" => {
                    let t = param_tensor::<2>(params, id, device);
                    w.facet_emb = Some(t.clone());
                    of(&t)
                }
                _ if name.ends_with(".weight") => {
                    let t = param_tensor::<2>(params, id, device);
                    if den { &mut w.den_ws } else { &mut w.ws }.push(t.clone());
                    of(&t)
                }
                _ => {
                    assert!(name.ends_with(".bias"), "{name}");
                    let t = param_tensor::<1>(params, id, device);
                    if den { &mut w.den_bs } else { &mut w.bs }.push(t.clone());
                    of(&t)
                }
            };
            w.all.push(grad);
        }
        w
    }

    fn grads(&self, grads: &burn::tensor::Gradients) -> Vec<Option<Vec<f32>>> {
        self.all.iter().map(|g| g(grads)).collect()
    }
}

/// The random draws of one training step (`None` when scoring).
struct Noise {
    /// Gumbel noise `[I, K]` (absent with `nogb`).
    gumbel: Option<Vec<f32>>,
    /// Per facet, the kept entries' positions (original) or, once, the kept entries of the
    /// whole row (recbole), with the dropout scale.
    keep: Vec<Vec<i64>>,
    scale: f32,
    /// `ε ~ N(0, 1)`, `[K * B, d]`.
    eps: Vec<f32>,
    /// The diffusion term's draws, one per facet row (`[K * B]` steps, `[K * B, d]` noise),
    /// drawn after `eps`; `None` without diffusion.
    diff: Option<latent_diffusion::Draws>,
}

impl MacridVae {
    /// A freshly initialised plain MacridVAE (`conditioning = "none"`) for a catalogue of
    /// `n_items`; a conditioned configuration needs [`MacridVae::with_conditioning`].
    pub fn new(config: MacridVaeConfig, n_items: usize) -> Result<Self, ModelError> {
        Self::with_conditioning(config, n_items, None)
    }

    /// A freshly initialised MacridVAE, conditioned (MacridVAE-C, MODELS.md "Conditioning")
    /// when `config.conditioning` is not `"none"`: `cond` must then hold the catalogue's fused
    /// item features of `c = config.cond_dim` dimensions, and
    /// - the last encoder layer takes `[h_k ; c_u]` (its weight gains `c` rows, appended);
    /// - each facet latent is extended, `z̃_k = normalise([z_k ; c_u])`;
    /// - `item_embedding` is `[I, d + c]`, so the decoder cosine is taken in `d + c` dimensions.
    ///
    /// MODELS.md is silent on the prototypes; since `cos(h_i, m_k)` needs them as wide as the
    /// item embeddings, `k_embedding` is `[K, d + c]` too (the natural reading of "the
    /// embedding size grows"). The KL term stays on the `d`-dimensional `μ_k, σ_k`. Errors as
    /// `MultiVae::with_conditioning`.
    pub fn with_conditioning(
        config: MacridVaeConfig,
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
        let (k, d) = (config.n_facets, config.latent_dim);
        let de = d + cd;
        let mut params = ParamStore::new();
        // Registered (and drawn from `rng`) in file order, weight before bias.
        let items = params.add(
            "item_embedding",
            vec![n_items, de],
            xavier(&mut rng, de, n_items, config.init),
        );
        let cores = params.add(
            "k_embedding",
            vec![k, de],
            xavier(&mut rng, de, k, config.init),
        );
        let mut dims = vec![n_items];
        dims.extend(&config.hidden_dims);
        dims.push(2 * d);
        // `check` guarantees a hidden layer, so the first layer is never the conditioned one.
        let n_enc = dims.len() - 1;
        debug_assert!(n_enc >= 2);
        let hidden = dims[1];
        let first_w = params.add(
            "encoder.0.weight",
            vec![n_items, hidden],
            xavier(&mut rng, n_items, hidden, config.init),
        );
        let first_b = params.add(
            "encoder.0.bias",
            vec![hidden],
            bias(&mut rng, hidden, config.bias_init_std),
        );
        let encoder = Mlp::new(
            (1..n_enc)
                .map(|l| {
                    let last = l == n_enc - 1;
                    let side = if last { cd } else { 0 };
                    let (i, o) = (dims[l] + side, dims[l + 1]);
                    let w = xavier(&mut rng, i, o, config.init);
                    let b = bias(&mut rng, o, config.bias_init_std);
                    let f = if last {
                        Activation::Identity
                    } else {
                        Activation::Tanh
                    };
                    // `K x B` facet rows: gemm's faster shape for the weight gradient.
                    Dense::new(
                        &mut params,
                        &format!("encoder.{l}"),
                        (dims[l], side, o),
                        f,
                        w,
                        b,
                    )
                    .with_weight_grad_via_transpose()
                })
                .collect(),
        );
        let net = Net {
            items,
            cores,
            first_w,
            first_b,
            hidden,
            encoder,
        };
        // Registered (and drawn) after the VAE's tensors, so a plain model's are unchanged:
        // the denoiser's layers like the VAE's, then the facet embedding N(0, 0.02²).
        let diffusion =
            LatentDiffusion::new(config.diffusion_keys(), &mut params, d, cd, |i, o| {
                let w = xavier(&mut rng, i, o, config.init);
                (w, bias(&mut rng, o, config.bias_init_std))
            })
            .map(|ld| {
                let emb = normals(&mut rng, k * config.time_dim, FACET_EMBEDDING_STD);
                ld.with_facet_embedding(&mut params, k, emb)
            });
        let adam = new_adam(&params, config.lr);
        Ok(MacridVae {
            config,
            n_items,
            params,
            net,
            adam,
            updates: 0,
            cond,
            scratch: Scratch::default(),
            diffusion,
        })
    }

    /// Load a model saved by [`Recommender::save`] (with `conditioning.safetensors` for
    /// MacridVAE-C).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let (n_items, table) = read_meta(dir, MacridVaeConfig::MODEL)?;
        let config = encore_core::config::resolve_table::<MacridVaeConfig>(table)
            .map_err(|e| ModelError::format(dir.join("config.toml"), e.to_string()))?
            .model;
        let cond = if config.conditioning == ConditioningKind::None {
            None
        } else {
            Some(Conditioning::load(dir)?)
        };
        let mut model = MacridVae::with_conditioning(config, n_items, cond)
            .map_err(|e| ModelError::format(dir.join("config.toml"), e.to_string()))?;
        common::load_weights(dir, &mut model.params)?;
        Ok(model)
    }

    /// The conditioning features (MacridVAE-C), if any.
    pub fn conditioning(&self) -> Option<&Conditioning> {
        self.cond.as_ref()
    }

    /// Width of the conditioning (`cond_dim`, or 0 for the plain model).
    fn cd(&self) -> usize {
        self.cond.as_ref().map_or(0, |c| c.dim())
    }

    /// The conditioning vectors of `users`' rows of `m` (`None` for the plain model).
    fn cond_vectors(&self, m: &InteractionMatrix, users: &[u32]) -> Option<Vec<f32>> {
        self.cond.as_ref().map(|c| c.user_vectors(m, users))
    }

    /// The configuration.
    pub fn config(&self) -> &MacridVaeConfig {
        &self.config
    }

    /// Gradient updates made so far (drives the KL annealing).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Draw the random inputs of one training step for batch `x`, in a fixed order (as
    /// [`MacridVae::step`] draws them).
    #[cfg(test)]
    fn draw_noise(&self, x: &SparseBatch, rng: &mut ChaCha8Rng) -> Noise {
        let mut noise = self.draw_masks(x, rng);
        noise.eps = self.draw_eps(x, rng);
        noise.diff = self.draw_diffusion(x, rng);
        noise
    }

    /// The diffusion term's draws for the `K * B` facet rows (facet-major), drawn after
    /// [`MacridVae::draw_eps`] so that a plain model's stream is unchanged.
    fn draw_diffusion(
        &self,
        x: &SparseBatch,
        rng: &mut ChaCha8Rng,
    ) -> Option<latent_diffusion::Draws> {
        let (k, d) = (self.config.n_facets, self.config.latent_dim);
        self.diffusion
            .as_ref()
            .map(|ld| ld.draw(rng, k * x.n_rows, d))
    }

    /// `ε ~ N(0, 1)` `[K * B, d]`, drawn after [`MacridVae::draw_masks`].
    fn draw_eps(&self, x: &SparseBatch, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let n = self.config.n_facets * x.n_rows * self.config.latent_dim;
        normals(rng, n, 1.0)
    }

    /// The Gumbel noise and dropout masks of one training step (`eps` left empty).
    fn draw_masks(&self, x: &SparseBatch, rng: &mut ChaCha8Rng) -> Noise {
        let k = self.config.n_facets;
        let gumbel = (!self.config.nogb).then(|| {
            (0..self.n_items * k)
                .map(|_| {
                    let u: f64 = rng.random::<f64>().max(1e-20);
                    (-(-u.ln()).ln()) as f32
                })
                .collect()
        });
        let p = self.config.dropout;
        let masks = if self.config.whole_row_input { 1 } else { k };
        let keep = (0..masks)
            .map(|_| {
                (0..x.nnz() as i64)
                    .filter(|_| p <= 0.0 || rng.random::<f64>() >= p)
                    .collect()
            })
            .collect();
        Noise {
            gumbel,
            keep,
            scale: (1.0 / (1.0 - p)) as f32,
            eps: Vec::new(),
            diff: None,
        }
    }

    /// One gradient step on the users `users` of `train`.
    pub(crate) fn step(
        &mut self,
        train: &InteractionMatrix,
        users: &[u32],
        rng: &mut ChaCha8Rng,
    ) -> StepLoss {
        let x = SparseBatch::from_users(train, users);
        let mut noise = self.draw_masks(&x, rng);
        let mut scratch = std::mem::take(&mut self.scratch);
        let first_out = std::mem::take(&mut scratch.first_out);
        // The normals are one sequential stream (about 3 ms on ml-100k): they are drawn
        // while the other threads build the first layer, which does not read them.
        let (eps, front) = rayon::join(
            || self.draw_eps(&x, rng),
            || self.front_hand(&x, Some(&noise), first_out),
        );
        noise.eps = eps;
        noise.diff = self.draw_diffusion(&x, rng);
        let beta = kl_weight(
            self.updates,
            self.config.anneal_cap,
            self.config.total_anneal_steps,
        );
        // c_u from the user's training row (the model input).
        let cond = self.cond_vectors(train, users);
        let (parts, mut grads) =
            self.loss_and_grads(front, &x, cond.as_deref(), &noise, beta, &mut scratch);
        adam_step(&mut self.adam, &mut self.params, &mut grads);
        scratch.grads = grads;
        self.scratch = scratch;
        self.updates += 1;
        parts
    }
}

/// The burn reference of the forward pass and loss (tests only).
#[cfg(test)]
impl MacridVae {
    /// The facet assignments `C` `[I, K]` and the normalised item embeddings `[I, d]`.
    fn assignments(
        &self,
        w: &Weights,
        gumbel: Option<Vec<f32>>,
        device: &Device,
    ) -> (Tensor<2>, Tensor<2>) {
        let items = l2_normalise_rows(w.items.clone());
        let cores = l2_normalise_rows(w.cores.clone());
        let mut a = items
            .clone()
            .matmul(cores.transpose())
            .div_scalar(self.config.tau);
        if let Some(g) = gumbel {
            a = a + float_tensor(g, [self.n_items, self.config.n_facets], device);
        }
        (softmax(a, 1), items)
    }

    /// Encoder pre-activations of facet `k` for the batch (first layer, sparse).
    #[allow(clippy::too_many_arguments)]
    fn first_layer(
        &self,
        w: &Weights,
        rows: &[i64],
        items: &[i64],
        values: Tensor<2>,
        n_rows: usize,
        device: &Device,
    ) -> Tensor<2> {
        common::sparse_linear(
            &w.ws[0],
            &w.bs[0],
            &int_tensor(rows.to_vec(), device),
            &int_tensor(items.to_vec(), device),
            values,
            n_rows,
        )
    }

    /// The denoiser's prediction for the facet rows `zt` `[K * B, d]` at `steps` (one per
    /// row): `[z_t ; linear(sinusoids(t)) + facet_emb[k] ; c_u]` through the tanh MLP.
    fn denoise(
        &self,
        w: &Weights,
        zt: Tensor<2>,
        steps: &[usize],
        crep: Option<&Tensor<2>>,
        device: &Device,
    ) -> Tensor<2> {
        let (rows, e) = (steps.len(), self.config.time_dim);
        let per = (rows / self.config.n_facets).max(1);
        let mut sin = vec![0f32; rows * e];
        for (row, &t) in sin.chunks_exact_mut(e).zip(steps) {
            encore_nn::diffusion::time_embedding(t as f64, e, row);
        }
        let facet = (0..rows).map(|r| (r / per) as i64).collect();
        let emb = w.facet_emb.clone().expect("a facet embedding");
        let tfeat = linear(
            float_tensor(sin, [rows, e], device),
            &w.den_ws[0],
            &w.den_bs[0],
        ) + emb.select(0, int_tensor(facet, device));
        let mut h = match crep {
            Some(c) => Tensor::cat(vec![zt, tfeat, c.clone()], 1),
            None => Tensor::cat(vec![zt, tfeat], 1),
        };
        let nl = w.den_ws.len() - 1;
        for l in 0..nl {
            h = linear(h, &w.den_ws[1 + l], &w.den_bs[1 + l]);
            if l + 1 < nl {
                h = h.tanh();
            }
        }
        h
    }

    /// Diff-MacridVAE on the facet latents `z` `[K * B, d]`: with `draws` (training) the
    /// normalised `ẑ_0` and `λ Σ ‖target − prediction‖² / B`; without (scoring) the reverse
    /// chain's `ẑ_0` from `z = μ`, normalised (no chain for `t_s = 0`).
    fn diffuse(
        &self,
        w: &Weights,
        z: Tensor<2>,
        draws: Option<&latent_diffusion::Draws>,
        crep: Option<&Tensor<2>>,
        device: &Device,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        use encore_nn::diffusion::MeanType;
        let Some(ld) = &self.diffusion else {
            return (z, None);
        };
        let s = &ld.schedule;
        let Some(dr) = draws else {
            if ld.start == 0 {
                return (z, None);
            }
            let rows = z.dims()[0];
            let mut z = z;
            for t in (0..ld.start).rev() {
                let pred = self.denoise(w, z.clone(), &vec![t; rows], crep, device);
                let x0 = match ld.mean_type {
                    MeanType::Eps => (z.clone() - pred.mul_scalar((1.0 - s.alpha_bar(t)).sqrt()))
                        .div_scalar(s.alpha_bar(t).sqrt()),
                    MeanType::X0 => pred,
                };
                let (c0, ct) = s.posterior_mean_coefs(t);
                z = x0.mul_scalar(c0) + z.mul_scalar(ct);
            }
            return (l2_normalise_rows(z), None);
        };
        let rows = dr.steps.len();
        let col = |f: &dyn Fn(usize) -> f64| {
            let v = dr.steps.iter().map(|&t| f(t) as f32).collect();
            float_tensor(v, [rows, 1], device)
        };
        let a = col(&|t| s.alpha_bar(t).sqrt());
        let sd = col(&|t| (1.0 - s.alpha_bar(t)).sqrt());
        let d = self.config.latent_dim;
        let eps = float_tensor(dr.eps.clone(), [rows, d], device);
        let zt = z.clone() * a.clone() + eps.clone() * sd.clone();
        let pred = self.denoise(w, zt.clone(), &dr.steps, crep, device);
        let (x0, target) = match ld.mean_type {
            MeanType::Eps => ((zt - pred.clone() * sd) / a, eps),
            MeanType::X0 => (pred.clone(), z),
        };
        let b = rows / self.config.n_facets;
        let diff = (target - pred)
            .powf_scalar(2.0)
            .sum()
            .mul_scalar(ld.lambda / b as f64);
        (l2_normalise_rows(x0), Some(diff))
    }

    /// The forward pass: logits `[B, I]`, the encoder's second half `h` `[K * B, d]` and,
    /// for Diff-MacridVAE in training, `λ_diff` times the denoising loss. `noise = None`
    /// scores (softmax assignments, no dropout, `z = μ`, the reverse chain with diffusion).
    /// `cond`: the batch's conditioning vectors `[B, cond_dim]` (MacridVAE-C).
    fn forward(
        &self,
        w: &Weights,
        x: &SparseBatch,
        cond: Option<&[f32]>,
        noise: Option<Noise>,
        device: &Device,
    ) -> (Tensor<2>, Tensor<2>, Option<Tensor<1>>) {
        let (k, d, b, n) = (
            self.config.n_facets,
            self.config.latent_dim,
            x.n_rows,
            self.n_items,
        );
        let training = noise.is_some();
        let (gumbel, keep, scale, eps, draws) = match noise {
            Some(nz) => (nz.gumbel, Some(nz.keep), nz.scale, Some(nz.eps), nz.diff),
            None => (None, None, 1.0, None, None),
        };
        let (c, items_n) = self.assignments(w, gumbel, device);
        let sel =
            |idx: &[i64], v: &[i64]| -> Vec<i64> { idx.iter().map(|&e| v[e as usize]).collect() };
        let mut pre = Vec::with_capacity(k);
        if x.nnz() == 0 {
            // No input at all: every facet's first layer is its bias.
            let none = Tensor::<2>::zeros([0, 1], device);
            for _ in 0..k {
                pre.push(self.first_layer(w, &[], &[], none.clone(), b, device));
            }
        } else if self.config.whole_row_input {
            // RecBole: normalise (and drop out) the whole row once, then weight by C_{·k}.
            let base = x.l2_normalised();
            let kept: Vec<i64> = match &keep {
                Some(kp) => kp[0].clone(),
                None => (0..base.nnz() as i64).collect(),
            };
            let rows = sel(&kept, &base.rows);
            let items = sel(&kept, &base.items);
            let vals: Vec<f32> = kept
                .iter()
                .map(|&e| base.values[e as usize] * scale)
                .collect();
            let m = kept.len();
            let none = Tensor::<2>::zeros([0, 1], device);
            let cg = (m > 0).then(|| c.clone().select(0, int_tensor(items.clone(), device)));
            let v = float_tensor(vals, [m, 1], device);
            for f in 0..k {
                let values = match &cg {
                    Some(cg) => cg.clone().narrow(1, f, 1) * v.clone(),
                    None => none.clone(),
                };
                pre.push(self.first_layer(w, &rows, &items, values, b, device));
            }
        } else {
            // Official code: per facet, x ⊙ C_{·k}, normalised per row, then dropout.
            let all_rows = int_tensor(x.rows.clone(), device);
            let cg = c.clone().select(0, int_tensor(x.items.clone(), device));
            for f in 0..k {
                let cf = cg.clone().narrow(1, f, 1)
                    * float_tensor(x.values.clone(), [x.nnz(), 1], device);
                let norm = Tensor::<2>::zeros([b, 1], device)
                    .select_assign(
                        0,
                        all_rows.clone(),
                        cf.clone().square(),
                        IndexingUpdateOp::Add,
                    )
                    .add_scalar(1e-24)
                    .sqrt();
                let normalised = cf / norm.select(0, all_rows.clone());
                let kept: Vec<i64> = match &keep {
                    Some(kp) => kp[f].clone(),
                    None => (0..x.nnz() as i64).collect(),
                };
                let rows = sel(&kept, &x.rows);
                let items = sel(&kept, &x.items);
                let values = if kept.is_empty() {
                    Tensor::<2>::zeros([0, 1], device)
                } else {
                    normalised
                        .select(0, int_tensor(kept.clone(), device))
                        .mul_scalar(scale)
                };
                pre.push(self.first_layer(w, &rows, &items, values, b, device));
            }
        }
        let mut h = Tensor::cat(pre, 0);
        // c_u repeated for every facet: rows `k * B + r` are user r's.
        let crep = cond.map(|c| {
            let ct = float_tensor(c.to_vec(), [b, c.len() / b.max(1)], device);
            Tensor::cat(vec![ct; k], 0)
        });
        let last = w.ws.len() - 1;
        for l in 1..w.ws.len() {
            let a = match &crep {
                Some(c) if l == last => Tensor::cat(vec![h.tanh(), c.clone()], 1),
                _ => h.tanh(),
            };
            h = linear(a, &w.ws[l], &w.bs[l]);
        }
        let mu = l2_normalise_rows(h.clone().narrow(1, 0, d));
        let neg_logvar = h.narrow(1, d, d);
        let z = match eps {
            Some(eps) if training => {
                let sigma = neg_logvar
                    .clone()
                    .mul_scalar(-0.5)
                    .exp()
                    .mul_scalar(self.config.std0);
                l2_normalise_rows(mu + sigma * float_tensor(eps, [k * b, d], device))
            }
            _ => mu,
        };
        let (z, diff) = self.diffuse(w, z, draws.as_ref(), crep.as_ref(), device);
        // MacridVAE-C: z̃_k = normalise([z_k ; c_u]).
        let z = match crep {
            Some(c) => l2_normalise_rows(Tensor::cat(vec![z, c], 1)),
            None => z,
        };
        // p_ui = Σ_k exp(cos(z_k, h_i) / τ) C_ik.
        let sims = z
            .matmul(items_n.transpose())
            .div_scalar(self.config.tau)
            .exp()
            .reshape([k, b, n]);
        let ct = c.transpose().reshape([k, 1, n]);
        let probs = (sims * ct).sum_dim(0).reshape([b, n]);
        (probs.log(), neg_logvar, diff)
    }

    fn loss(
        &self,
        w: &Weights,
        x: &SparseBatch,
        cond: Option<&[f32]>,
        noise: Noise,
        beta: f64,
        device: &Device,
    ) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
        let b = x.n_rows;
        let (logits, h, diff) = self.forward(w, x, cond, Some(noise), device);
        let logp = log_softmax(logits, 1).reshape([b * self.n_items]);
        let picked = logp.select(0, int_tensor(x.flat_positions(self.n_items), device));
        let recon = picked.sum().neg().div_scalar(b as f64);
        // KL_k = ½ Σ_j (h + e^{−h} − 1), summed over facets, averaged over users.
        let kl = (h.clone() + h.neg().exp())
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

impl Recommender for MacridVae {
    fn name(&self) -> &'static str {
        MacridVaeConfig::MODEL
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_users(&self, users: &[u32], input: &InteractionMatrix, out: &mut [f32]) {
        check_out(out, users.len(), self.n_items);
        for (us, out) in users
            .chunks(SCORE_CHUNK)
            .zip(out.chunks_mut(SCORE_CHUNK * self.n_items))
        {
            let x = SparseBatch::from_users(input, us);
            // c_u from these input rows only: held-out items cannot reach the scores.
            let cond = self.cond_vectors(input, us);
            let probs = self.forward_hand(&x, cond.as_deref());
            out.par_iter_mut()
                .zip(&probs)
                .for_each(|(o, p)| *o = p.ln());
        }
    }

    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
        common::score_history(self, history, out)
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        common::save_model(dir, &self.config, self.n_items, &self.params)?;
        match &self.cond {
            Some(c) => c.save(dir),
            None => Ok(()),
        }
    }

    fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        let values = self.params.get(self.net.items);
        Some(ItemRepresentation {
            source: "item embeddings (the decoder's cosine against the facets), cosine",
            vectors: ItemVectors::Rows {
                dim: values.len() / self.n_items.max(1),
                values,
            },
        })
    }
}

impl Trainable for MacridVae {
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
        let loaded = MacridVae::load(dir)?;
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
        self.updates = common::load_training_extras(dir, &self.params, &mut self.adam)?;
        Ok(())
    }
}

/// MacridVae's registry entry.
pub fn entry() -> ModelEntry {
    ModelEntry::trained::<MacridVae>(
        "MacridVAE (Ma et al. 2019): disentangled facets, optionally conditioned (MacridVAE-C)",
    )
}

impl TrainedModel for MacridVae {
    type Config = MacridVaeConfig;
    fn init(c: &RunConfig<MacridVaeConfig>, input: &FitInput<'_>) -> Result<Self, ModelError> {
        MacridVae::with_conditioning(
            c.model.clone(),
            input.train.n_items(),
            input.conditioning.clone(),
        )
    }
    fn load(dir: &Path) -> Result<Self, ModelError> {
        MacridVae::load(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(preset: MacridVaeConfig) -> MacridVaeConfig {
        MacridVaeConfig {
            n_facets: 2,
            latent_dim: 3,
            hidden_dims: vec![4],
            batch_size: 4,
            ..preset
        }
    }

    fn tiny_matrix() -> InteractionMatrix {
        InteractionMatrix::from_rows(
            6,
            &[
                vec![0u32, 1, 2],
                vec![2, 3],
                vec![3, 4, 5],
                vec![0, 5],
                vec![],
            ],
        )
    }

    /// Hand-made case: with all item embeddings equal, every cosine `cos(z_k, h_i)` and every
    /// assignment `C_ik` is the same for all items, so the logits are constant over items and the reconstruction term
    /// is `n_u · ln I` per user whatever the encoder does.
    #[test]
    fn equal_item_embeddings_give_uniform_reconstruction() {
        for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
            // Without Gumbel noise (which differs per item) the assignments are equal too.
            let cfg = MacridVaeConfig {
                nogb: true,
                ..tiny(preset)
            };
            let mut m = MacridVae::new(cfg, 6).unwrap();
            let items = m.net.items;
            let first = m.params.get(items)[..3].to_vec();
            for row in m.params.get_mut(items).chunks_mut(3) {
                row.copy_from_slice(&first);
            }
            let x = SparseBatch::from_users(&tiny_matrix(), &[0, 1, 4]);
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            let noise = m.draw_noise(&x, &mut rng);
            let device = cpu();
            let w = Weights::new(&m.params, &device);
            let (_, recon, kl) = m.loss(&w, &x, None, noise, 0.0, &device);
            let expect = (3.0 + 2.0) / 3.0 * 6f64.ln();
            assert!((to_vec(recon)[0] as f64 - expect).abs() < 1e-4);
            assert!(to_vec(kl)[0] >= 0.0);
        }
    }

    /// KL with a zero second half (`h = 0`, σ = std0) is 0; with `h = ln 2` per dimension it
    /// is `½ (ln 2 + ½ − 1)` per dimension and facet.
    #[test]
    fn kl_on_a_hand_made_case() {
        let mut m = MacridVae::new(tiny(MacridVaeConfig::original()), 6).unwrap();
        // Last layer: zero weights, bias [μ part = 1, h part = ln 2].
        let last = m.net.encoder.layers().last().unwrap().clone();
        m.params.get_mut(last.weight).fill(0.0);
        m.params.get_mut(last.bias).copy_from_slice(&[
            1.0,
            1.0,
            1.0,
            2f32.ln(),
            2f32.ln(),
            2f32.ln(),
        ]);
        let x = SparseBatch::from_users(&tiny_matrix(), &[0]);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let noise = m.draw_noise(&x, &mut rng);
        let device = cpu();
        let w = Weights::new(&m.params, &device);
        let (_, _, kl) = m.loss(&w, &x, None, noise, 0.0, &device);
        let expect = 2.0 * 3.0 * 0.5 * (2f64.ln() + 0.5 - 1.0);
        let kl = to_vec(kl)[0];
        assert!((kl as f64 - expect).abs() < 1e-5, "{}", kl);
    }

    #[test]
    fn training_lowers_the_loss() {
        for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
            let cfg = MacridVaeConfig {
                dropout: 0.0,
                lr: 1e-2,
                ..tiny(preset)
            };
            let mut m = MacridVae::new(cfg, 6).unwrap();
            let train = tiny_matrix();
            let users = train.nonempty_users();
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let first = m.step(&train, &users, &mut rng).recon;
            let mut last = first;
            for _ in 0..150 {
                last = m.step(&train, &users, &mut rng).recon;
            }
            assert!(last < first * 0.9, "{first} -> {last}");
            assert_eq!(m.updates(), 151);
        }
    }

    /// Check `m`'s hand-written loss and gradients against burn's autodiff of the reference
    /// graph on `tiny_matrix` (dropout, Gumbel noise, an empty user), and its scores against
    /// the reference's logits. With latent diffusion the first two facet rows are set to the
    /// schedule's first and last steps (the others are drawn uniformly).
    fn check_backward_against_burn(m: &MacridVae) {
        let train = tiny_matrix();
        let batch = [3u32, 0, 4, 1, 2];
        let x = SparseBatch::from_users(&train, &batch);
        let cond = m.cond_vectors(&train, &batch);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut noise = m.draw_noise(&x, &mut rng);
        if let (Some(ld), Some(dr)) = (&m.diffusion, noise.diff.as_mut()) {
            dr.steps[0] = 0;
            dr.steps[1] = ld.schedule.steps() - 1;
        }
        let noise2 = Noise {
            gumbel: noise.gumbel.clone(),
            keep: noise.keep.clone(),
            scale: noise.scale,
            eps: noise.eps.clone(),
            diff: noise.diff.clone(),
        };
        let beta = 0.4;
        let device = cpu().autodiff();
        let w = Weights::new(&m.params, &device);
        let (loss, recon, kl) = m.loss(&w, &x, cond.as_deref(), noise2, beta, &device);
        let want = w.grads(&loss.backward());
        // The decoder on the whole batch, and in blocks of 2 and 3 of its 5 users.
        for block_users in [None, Some(2), Some(3)] {
            let front = m.front_hand(&x, Some(&noise), Vec::new());
            let mut scratch = Scratch {
                block_users,
                ..Scratch::default()
            };
            let (parts, grads) =
                m.loss_and_grads(front, &x, cond.as_deref(), &noise, beta, &mut scratch);
            assert!((parts.recon - to_vec(recon.clone())[0] as f64).abs() < 1e-4);
            assert!((parts.kl - to_vec(kl.clone())[0] as f64).abs() < 1e-4);
            assert!((parts.loss - to_vec(loss.clone())[0] as f64).abs() < 1e-4);
            for (id, w) in m.params.ids().zip(&want) {
                let (g, w, name) = (grads.get(id), w.as_ref().unwrap(), m.params.name(id));
                assert_eq!(g.len(), w.len(), "{name}");
                for (a, b) in g.iter().zip(w) {
                    assert!(
                        (a - b).abs() < 2e-5 + 1e-3 * b.abs(),
                        "{name} (blocks of {block_users:?}): {a} vs {b}"
                    );
                }
                assert!(g.iter().any(|&v| v != 0.0), "{name}");
            }
        }
        // Scores: the hand-written logits against the reference's.
        let users: Vec<u32> = (0..5).collect();
        let mut out = vec![0f32; 5 * 6];
        m.score_users(&users, &train, &mut out);
        let device = cpu();
        let w = Weights::new(&m.params, &device);
        let xs = SparseBatch::from_users(&train, &users);
        let cs = m.cond_vectors(&train, &users);
        let (logits, _, _) = m.forward(&w, &xs, cs.as_deref(), None, &device);
        for (a, b) in out.iter().zip(to_vec(logits)) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    fn backward_config(preset: MacridVaeConfig) -> MacridVaeConfig {
        MacridVaeConfig {
            n_facets: 3,
            latent_dim: 4,
            hidden_dims: vec![5, 6],
            dropout: 0.3,
            std0: 0.5,
            bias_init_std: 0.3,
            ..preset
        }
    }

    /// The hand-written loss and gradients against burn's autodiff of the reference graph,
    /// for both input modes (whole-row and per-facet normalisation, with dropout, Gumbel noise
    /// and an empty user), two hidden layers, and the scores against the reference's logits.
    #[test]
    fn hand_written_backward_matches_burn_autodiff() {
        for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
            check_backward_against_burn(&MacridVae::new(backward_config(preset), 6).unwrap());
        }
    }

    /// Features for `tiny_matrix`'s 6 items, `dim` wide; items 3, 4, 5 have none, so user 2
    /// (items 3, 4, 5) and user 4 (no items) get `c_u = 0`.
    fn tiny_conditioning(dim: usize) -> Conditioning {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let values = normals(&mut rng, 6 * dim, 1.0);
        let present = (0..6).map(|i| i < 3).collect();
        Conditioning::new(6, dim, values, present).unwrap()
    }

    fn conditioned(cfg: MacridVaeConfig, dim: usize) -> MacridVae {
        let cfg = MacridVaeConfig {
            conditioning: ConditioningKind::Tensor,
            cond_dim: dim,
            ..cfg
        };
        MacridVae::with_conditioning(cfg, 6, Some(tiny_conditioning(dim))).unwrap()
    }

    /// MacridVAE-C: the same checks, with users whose `c_u` is zero next to users whose `c_u`
    /// is not, both input modes, one and two hidden layers.
    #[test]
    fn conditioned_backward_matches_burn_autodiff() {
        for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
            for hidden in [vec![5, 6], vec![5]] {
                let cfg = MacridVaeConfig {
                    hidden_dims: hidden,
                    ..backward_config(preset.clone())
                };
                let m = conditioned(cfg, 2);
                assert_eq!(m.params.shape(m.net.items), &[6, 6]);
                assert_eq!(m.params.shape(m.net.cores), &[3, 6]);
                let c = m.cond_vectors(&tiny_matrix(), &[2, 4, 0]).unwrap();
                assert!(c[..4].iter().all(|&v| v == 0.0) && c[4..].iter().any(|&v| v != 0.0));
                check_backward_against_burn(&m);
            }
        }
    }

    /// Training steps give the same weights on one thread and on three, bit for bit, also
    /// with the training decoder in blocks of users; a step that reuses the buffers of the
    /// one before gives the bits of a step with fresh ones (a clone starts with empty
    /// buffers).
    #[test]
    fn steps_are_thread_count_independent() {
        let n_items = 700u32;
        let rows: Vec<Vec<u32>> = (0..200u32)
            .map(|u| {
                (0..30)
                    .map(|j| (u * 37 + j * 101) % n_items)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        let train = InteractionMatrix::from_rows(n_items as usize, &rows);
        for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
            // The training decoder on the whole batch, and in blocks of 64 users (200 users:
            // 64, 64, 64, 8).
            let run = |threads: usize, block_users: Option<usize>| {
                encore_nn::on_threads(threads, || {
                    let mut m = MacridVae::new(preset.clone(), n_items as usize).unwrap();
                    m.scratch.block_users = block_users;
                    let mut rng = ChaCha8Rng::seed_from_u64(5);
                    let users = train.nonempty_users();
                    m.step(&train, &users, &mut rng);
                    let (mut fresh, mut fresh_rng) = (m.clone(), rng.clone());
                    m.step(&train, &users, &mut rng);
                    fresh.step(&train, &users, &mut fresh_rng);
                    assert!(m.params == fresh.params, "reused buffers change a step");
                    let mut out = vec![0f32; 4 * n_items as usize];
                    m.score_users(&[0, 1, 2, 3], &train, &mut out);
                    (m.params, out)
                })
            };
            for block_users in [None, Some(64)] {
                assert!(
                    run(1, block_users) == run(3, block_users),
                    "{} {block_users:?}",
                    preset.preset
                );
            }
            // MacridVAE-C, default 128 conditioning dimensions.
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            let n = n_items as usize;
            let cond = Conditioning::new(
                n,
                128,
                normals(&mut rng, n * 128, 1.0),
                (0..n).map(|i| i % 7 != 0).collect(),
            )
            .unwrap();
            let cfg = MacridVaeConfig {
                conditioning: ConditioningKind::Audio,
                ..preset.clone()
            };
            let run = |threads: usize| {
                encore_nn::on_threads(threads, || {
                    let mut m =
                        MacridVae::with_conditioning(cfg.clone(), n, Some(cond.clone())).unwrap();
                    let mut rng = ChaCha8Rng::seed_from_u64(5);
                    let users = train.nonempty_users();
                    m.step(&train, &users, &mut rng);
                    let mut out = vec![0f32; 4 * n];
                    m.score_users(&[0, 1, 2, 3], &train, &mut out);
                    (m.params, out)
                })
            };
            assert!(run(1) == run(3), "conditioned {}", preset.preset);
        }
    }

    /// The gradient reaches the item embeddings and prototypes through the assignments.
    #[test]
    fn gradients_reach_embeddings_and_prototypes() {
        for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
            let m = MacridVae::new(tiny(preset), 6).unwrap();
            let x = SparseBatch::from_users(&tiny_matrix(), &[0, 1, 2, 3]);
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            let noise = m.draw_noise(&x, &mut rng);
            let device = cpu().autodiff();
            let w = Weights::new(&m.params, &device);
            let (loss, _, _) = m.loss(&w, &x, None, noise, 0.1, &device);
            let g = w.grads(&loss.backward());
            assert_eq!(g.len(), m.params.len());
            for (id, g) in m.params.ids().zip(&g) {
                let name = m.params.name(id);
                let g = g
                    .as_ref()
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                assert!(g.iter().any(|&v| v != 0.0), "zero gradient for {name}");
                assert!(g.iter().all(|v| v.is_finite()), "{name}");
            }
        }
    }

    #[test]
    fn save_load_round_trip_gives_identical_scores() {
        let mut m = MacridVae::new(tiny(MacridVaeConfig::recbole()), 6).unwrap();
        let train = tiny_matrix();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        m.step(&train, &train.nonempty_users(), &mut rng);
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        let back = MacridVae::load(dir.path()).unwrap();
        let users: Vec<u32> = (0..5).collect();
        let mut a = vec![0f32; 5 * 6];
        let mut b = vec![0f32; 5 * 6];
        m.score_users(&users, &train, &mut a);
        back.score_users(&users, &train, &mut b);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.is_finite()));
        let mut h = vec![0f32; 6];
        back.score_history(&[1, 0, 2], &mut h).unwrap();
        assert_eq!(&h[..], &a[..6]);
        assert!(back.score_history(&[6], &mut h).is_err());
        assert!(crate::MultiVae::load(dir.path()).is_err());
    }

    fn tiny_diffusion(
        preset: MacridVaeConfig,
        kind: DiffusionKind,
        mean_type: MeanTypeKey,
    ) -> MacridVaeConfig {
        MacridVaeConfig {
            diffusion: kind,
            mean_type,
            denoiser_hidden: vec![8],
            time_dim: 6,
            dropout: 0.0,
            lr: 1e-2,
            ..tiny(preset)
        }
    }

    /// Diff-MacridVAE's whole loss (reconstruction from the normalised ẑ_0, KL, λ times the
    /// denoising loss summed over facets) and every gradient, the VAE's, the denoiser's and
    /// the facet embedding's, against burn's autodiff of the same graph, and the scores (the
    /// reverse chain over users x facets, normalised, decoded) against the reference's: both
    /// input modes, both mean types, both schedules, plain and conditioned.
    #[test]
    fn latent_diffusion_backward_matches_burn_autodiff() {
        use DiffusionKind::{Diffrec, Paper};
        use MeanTypeKey::{Eps, X0};
        let cases = [
            (MacridVaeConfig::original(), Paper, Eps, 0),
            (MacridVaeConfig::recbole(), Diffrec, X0, 0),
            (MacridVaeConfig::recbole(), Paper, Eps, 2),
            (MacridVaeConfig::original(), Diffrec, Eps, 2),
            (MacridVaeConfig::original(), Paper, X0, 2),
        ];
        for (preset, kind, mt, cond) in cases {
            let cfg = MacridVaeConfig {
                diffusion: kind,
                mean_type: mt,
                denoiser_hidden: vec![7, 5],
                time_dim: 6,
                lambda_diff: 0.6,
                // The paper's 1,000-step chain is checked at 50 steps (the burn reference
                // runs it op by op); DiffRec's in full.
                reverse_steps: (kind == Paper).then_some(50),
                ..backward_config(preset)
            };
            let m = if cond == 0 {
                MacridVae::new(cfg, 6).unwrap()
            } else {
                conditioned(cfg, cond)
            };
            let emb = m.params.id("denoiser.facet_emb").unwrap();
            assert_eq!(m.params.shape(emb), &[3, 6]);
            check_backward_against_burn(&m);
        }
    }

    /// Diff-MacridVAE: the denoiser and the facet embedding are registered after the VAE's
    /// tensors (so the VAE's initial weights are the plain model's), a chain of 0 steps
    /// scores exactly as the plain model, training logs the denoising loss and lowers the
    /// reconstruction loss, and a saved model scores (and folds in) as the trained one.
    #[test]
    fn latent_diffusion_trains_saves_and_scores() {
        let train = tiny_matrix();
        let users: Vec<u32> = (0..5).collect();
        for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
            for mt in [MeanTypeKey::Eps, MeanTypeKey::X0] {
                let cfg = tiny_diffusion(preset.clone(), DiffusionKind::Diffrec, mt);
                let plain_cfg = MacridVaeConfig {
                    diffusion: DiffusionKind::None,
                    ..cfg.clone()
                };
                let plain = MacridVae::new(plain_cfg.clone(), 6).unwrap();
                let mut m = MacridVae::new(cfg.clone(), 6).unwrap();
                for id in plain.params.ids() {
                    let name = plain.params.name(id);
                    assert_eq!(
                        m.params.get(m.params.id(name).unwrap()),
                        plain.params.get(id),
                        "{name}"
                    );
                }
                let last = m.params.ids().last().unwrap();
                assert_eq!(m.params.name(last), "denoiser.facet_emb");
                let emb = m.params.get(last);
                assert!(emb.iter().all(|v| v.abs() < 0.1) && emb.iter().any(|&v| v != 0.0));
                // t_s = 0: decode μ, as the plain model does, bit for bit (also conditioned).
                let direct_cfg = MacridVaeConfig {
                    reverse_steps: Some(0),
                    ..cfg.clone()
                };
                let direct = MacridVae::new(direct_cfg.clone(), 6).unwrap();
                let (mut a, mut b) = (vec![0f32; 30], vec![0f32; 30]);
                plain.score_users(&users, &train, &mut a);
                direct.score_users(&users, &train, &mut b);
                assert_eq!(a, b, "{mt:?}");
                conditioned(plain_cfg, 2).score_users(&users, &train, &mut a);
                conditioned(direct_cfg, 2).score_users(&users, &train, &mut b);
                assert_eq!(a, b, "{mt:?}, conditioned");
                // The full chain moves the scores.
                m.score_users(&users, &train, &mut b);
                plain.score_users(&users, &train, &mut a);
                assert_ne!(a, b);

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
                let (d0, d1) = (first.diff.unwrap(), last.diff.unwrap());
                assert!(d1.is_finite() && d1 > 0.0, "{mt:?}");
                if mt == MeanTypeKey::X0 {
                    assert!(d1 < d0, "{mt:?}: {d0} -> {d1}");
                }
                let dir = tempfile::tempdir().unwrap();
                m.save(dir.path()).unwrap();
                let back = MacridVae::load(dir.path()).unwrap();
                assert_eq!(back.config(), m.config());
                m.score_users(&users, &train, &mut a);
                back.score_users(&users, &train, &mut b);
                assert_eq!(a, b, "{mt:?}");
                assert!(a.iter().all(|v| v.is_finite()));
                let mut h = vec![0f32; 6];
                back.score_history(&[1, 0, 2], &mut h).unwrap();
                for (x, y) in h.iter().zip(&a[..6]) {
                    assert!((x - y).abs() < 1e-5, "fold-in of user 0: {x} vs {y}");
                }
            }
        }
    }

    /// A Diff-MacridVAE checkpoint resumes exactly: the denoiser's weights and Adam moments
    /// are part of the training state, so two more steps after `load_state` give the bits of
    /// two straight ones.
    #[test]
    fn latent_diffusion_state_resumes_exactly() {
        let train = tiny_matrix();
        let users = train.nonempty_users();
        let cfg = tiny_diffusion(
            MacridVaeConfig::recbole(),
            DiffusionKind::Paper,
            MeanTypeKey::Eps,
        );
        let mut straight = MacridVae::new(cfg.clone(), 6).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for _ in 0..3 {
            straight.step(&train, &users, &mut rng);
        }
        let dir = tempfile::tempdir().unwrap();
        straight.save_state(dir.path()).unwrap();
        let mut resumed = MacridVae::new(cfg.clone(), 6).unwrap();
        resumed.load_state(dir.path()).unwrap();
        assert_eq!(resumed.updates(), 3);
        let mut rng2 = rng.clone();
        for _ in 0..2 {
            straight.step(&train, &users, &mut rng);
            resumed.step(&train, &users, &mut rng2);
        }
        assert!(straight.params == resumed.params);
        // A checkpoint of another schedule is refused.
        let mut other = MacridVae::new(
            MacridVaeConfig {
                diffusion: DiffusionKind::Diffrec,
                ..cfg
            },
            6,
        )
        .unwrap();
        assert!(other.load_state(dir.path()).is_err());
    }

    /// Diff-MacridVAE's steps and its scoring (the reverse chain over users x facets) give the
    /// same bits on 1 and 2 threads, plain and conditioned, at a size where the products and
    /// row passes go parallel.
    #[test]
    fn latent_diffusion_is_thread_count_independent() {
        let n_items = 700u32;
        let rows: Vec<Vec<u32>> = (0..200u32)
            .map(|u| {
                (0..30)
                    .map(|j| (u * 37 + j * 101) % n_items)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        let train = InteractionMatrix::from_rows(n_items as usize, &rows);
        let n = n_items as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let cond = Conditioning::new(
            n,
            16,
            normals(&mut rng, n * 16, 1.0),
            (0..n).map(|i| i % 7 != 0).collect(),
        )
        .unwrap();
        for (preset, conditioned) in [
            (MacridVaeConfig::recbole(), false),
            (MacridVaeConfig::original(), true),
        ] {
            let cfg = MacridVaeConfig {
                diffusion: DiffusionKind::Diffrec,
                denoiser_hidden: vec![48],
                conditioning: if conditioned {
                    ConditioningKind::Lyrics
                } else {
                    ConditioningKind::None
                },
                cond_dim: 16,
                ..preset
            };
            let run = |threads: usize| {
                encore_nn::on_threads(threads, || {
                    let c = conditioned.then(|| cond.clone());
                    let mut m = MacridVae::with_conditioning(cfg.clone(), n, c).unwrap();
                    let mut rng = ChaCha8Rng::seed_from_u64(5);
                    let users = train.nonempty_users();
                    let mut parts = Vec::new();
                    for _ in 0..2 {
                        parts.push(m.step(&train, &users, &mut rng));
                    }
                    let mut out = vec![0f32; 4 * n];
                    m.score_users(&[0, 1, 2, 3], &train, &mut out);
                    (m.params, out, parts)
                })
            };
            let (one, two) = (run(1), run(2));
            assert!(one.0 == two.0, "weights, conditioned {conditioned}");
            assert_eq!(one.1, two.1, "scores, conditioned {conditioned}");
            assert_eq!(one.2, two.2, "loss parts, conditioned {conditioned}");
            assert!(one.2[0].diff.is_some());
        }
    }

    /// The diffusion keys: an unknown schedule or mean type, a chain start beyond the
    /// schedule, and the denoiser's sizes are refused, naming the key.
    #[test]
    fn diffusion_config_errors_name_the_key() {
        for (sets, key) in [
            (&["diffusion=\"cosine\""][..], "diffusion"),
            (&["diffusion=\"paper\"", "mean_type=\"v\""][..], "mean_type"),
            (
                &["diffusion=\"diffrec\"", "reverse_steps=41"][..],
                "reverse_steps",
            ),
            (
                &["diffusion=\"paper\"", "reverse_steps=1001"][..],
                "reverse_steps",
            ),
            (
                &["diffusion=\"paper\"", "reverse_steps=-1"][..],
                "reverse_steps",
            ),
            (&["diffusion=\"paper\"", "time_dim=1"][..], "time_dim"),
            (
                &["diffusion=\"paper\"", "denoiser_hidden=[]"][..],
                "denoiser_hidden",
            ),
            (
                &["diffusion=\"paper\"", "lambda_diff=-1"][..],
                "lambda_diff",
            ),
            (&["diffusion=\"paper\"", "facet_dim=3"][..], "facet_dim"),
        ] {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            match encore_core::config::resolve::<MacridVaeConfig>(None, &sets).unwrap_err() {
                ModelError::Config { key: k, .. } => assert_eq!(k, key, "{sets:?}"),
                other => panic!("{sets:?}: {other}"),
            }
        }
        for sets in [
            &[
                "diffusion=\"paper\"",
                "reverse_steps=1000",
                "mean_type=\"x0\"",
            ][..],
            &["diffusion=\"diffrec\"", "reverse_steps=0"][..],
            &["preset=\"original\"", "diffusion=\"diffrec\""][..],
        ] {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let c = encore_core::config::resolve::<MacridVaeConfig>(None, &sets).unwrap();
            assert_ne!(c.model.diffusion, DiffusionKind::None);
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        for (set, key) in [
            ("n_facets=0", "n_facets"),
            ("tau=0", "tau"),
            ("dropout=-0.1", "dropout"),
            ("std0=-1", "std0"),
            ("nogb=3", "nogb"),
            ("kfac=3", "kfac"),
        ] {
            let e = encore_core::config::resolve::<MacridVaeConfig>(None, &[set.to_string()])
                .unwrap_err();
            match e {
                ModelError::Config { key: k, .. } => assert_eq!(k, key, "{set}"),
                other => panic!("{set}: {other}"),
            }
        }
    }
}
