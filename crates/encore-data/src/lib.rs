//! Encore's data layer (SPEC §2): streaming readers for listening logs and item features,
//! id maps, binarisation and k-core filtering, the CSR interaction matrix, deterministic
//! splits, a compact binary cache, and the built-in synthetic music world.
//!
//! This crate has no tensor-framework dependency: it builds and tests fast, and everything
//! downstream (features, models, evaluator) stands on its types.

pub mod cache;
pub mod dataset;
pub mod error;
pub mod features;
pub mod ids;
pub mod matrix;
pub mod readers;
pub mod split;
pub mod split_cache;
pub mod synth;

pub use dataset::{Dataset, PrepareOptions};
pub use error::{DataError, Result};
pub use ids::IdMap;
pub use matrix::InteractionMatrix;
pub use split::{Split, SplitKind};
