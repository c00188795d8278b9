//! Encore's item-feature stage (SPEC §3, paper §4.3): PCA of each modality, fitted on the
//! catalogue, and the four fusions of audio and lyrics features that condition the models
//! (`audio`, `lyrics`, `concat`, `tensor`; MODELS.md "Conditioning").
//!
//! - [`pca`]: exact (covariance or Gram eigen-decomposition) and randomized (Halko et al.)
//!   PCA with deterministic signs and thread-count-independent results.
//! - [`fusion`]: [`fuse`] fits the per-modality PCAs and the fusion stage on the catalogue and
//!   returns the fused table; [`FusionModel`] saves, loads and applies the same projection to
//!   new items. The `tensor` fusion's PCA runs on the 16,384-d outer products without ever
//!   holding the `n x 16,384` matrix.

pub mod error;
pub mod fusion;
mod linalg;
pub mod pca;
mod tensor;

pub use error::{FeatureError, Result};
pub use fusion::{
    fuse, FusionConfig, FusionMethod, FusionModel, FusionReport, StageReport, TensorPath,
};
pub use pca::{FitMethod, Pca, PcaMethod, PcaOptions, RandomizedOptions};
