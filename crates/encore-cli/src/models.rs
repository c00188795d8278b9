//! The models this binary knows: one registry entry each, in the order the demo runs them.
//! Adding a model is its module (with its `entry()`), one line here and a config in
//! `configs/` (ARCHITECTURE.md "Adding a model").

use anyhow::Result;
use encore_core::registry::{self, ModelEntry};

/// Every model the CLI can train, in the order the demo runs them.
pub fn registry() -> Vec<ModelEntry> {
    vec![
        encore_baselines::pop::entry(),
        encore_baselines::knn::entry(),
        encore_baselines::ease::entry(),
        encore_baselines::bpr::entry(),
        encore_baselines::lightgcn::entry(),
        encore_vae::multivae::entry(),
        encore_vae::macridvae::entry(),
        encore_vae::diffrec::entry(),
    ]
}

/// The registered model `name`; an unknown name is an error listing the known ones.
pub fn find(name: &str) -> Result<ModelEntry> {
    let all = registry();
    registry::find(&all, name)
        .copied()
        .map_err(|e| anyhow::anyhow!("--model: {e}"))
}
