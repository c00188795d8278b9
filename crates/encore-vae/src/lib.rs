//! Encore's autoencoder recommenders on burn (MODELS.md): [`MultiVae`] (Liang et al. 2018) and
//! [`MacridVae`] (Ma et al. 2019), each with an `original` and a `recbole` preset.
//!
//! Both implement [`encore_models::Recommender`] (scoring without autodiff, batched, fold-in of
//! any history) and [`encore_models::Trainable`] (one epoch of Adam steps, and a training state
//! that resumes exactly), so the generic trainer in `encore_models::trainer` drives them.
//!
//! burn 0.22 note: tensors carry their backend in their `Device` rather than in a type
//! parameter, so the model code is written once against `burn::tensor::Tensor` and runs on the
//! Flex CPU device, with autodiff (`Device::flex().autodiff()`) for training and without it for
//! scoring.

mod common;
mod kernels;
pub mod macridvae;
pub mod multivae;

pub use common::Init;
pub use macridvae::{MacridVae, MacridVaeConfig};
pub use multivae::{MultiVae, MultiVaeConfig};
