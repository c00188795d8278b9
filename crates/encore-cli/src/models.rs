//! The model registry: which models exist, how each is fitted and loaded.

use std::path::Path;

use anyhow::{bail, Result};
use encore_models::{Pop, Recommender};

/// Every model the CLI can train, in the order the demo runs them.
pub const MODELS: &[&str] = &["pop"];

/// Check a model name, listing the known ones when it is unknown.
pub fn check_name(name: &str) -> Result<()> {
    if !MODELS.contains(&name) {
        bail!(
            "--model: unknown model `{name}`; expected one of {}",
            MODELS.join(", ")
        );
    }
    Ok(())
}

/// Load a saved model of the given kind from `dir`.
pub fn load(name: &str, dir: &Path) -> Result<Box<dyn Recommender>> {
    Ok(match name {
        "pop" => Box::new(Pop::load(dir)?),
        other => bail!("cannot load a model of unknown kind `{other}`"),
    })
}
