//! Encore's autoencoder recommenders (MODELS.md): [`MultiVae`] (Liang et al. 2018) and
//! [`MacridVae`] (Ma et al. 2019), each with an `original` and a `recbole` preset; and the
//! peer model [`DiffRec`] (Wang et al. 2023), diffusion on the interaction row.
//!
//! Both have a conditioned variant (MultiVAE-C, MacridVAE-C; MODELS.md "Conditioning"):
//! config key `conditioning` other than `none` and a [`Conditioning`] of fused item features
//! given to `with_conditioning`.
//!
//! Both implement [`encore_core::Recommender`] (scoring without autodiff, batched, fold-in of
//! any history) and [`encore_core::Trainable`] (one epoch of Adam steps, and a training state
//! that resumes exactly), so the generic trainer in `encore_core::trainer` drives them.
//!
//! The forward and backward passes are written by hand over `encore-nn`'s `gemm` wrapper and
//! kernels (its crate documentation says why: burn's graph overhead made a ml-100k step 2-5x slower than the
//! matrix-multiply bound); burn 0.22 (Flex CPU device, autodiff) remains a dev-dependency: the
//! tests build each model as a burn graph and check the hand-written loss, gradients and
//! scores against it.

mod common;
pub mod conditioning;
pub mod diffrec;
pub mod latent_diffusion;
pub mod macridvae;
pub mod multivae;

pub use common::Init;
pub use conditioning::{Conditioning, ConditioningKind};
pub use diffrec::{DiffRec, DiffRecConfig};
pub use macridvae::{MacridVae, MacridVaeConfig};
pub use multivae::{MultiVae, MultiVaeConfig};
