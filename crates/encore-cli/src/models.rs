//! The model registry: which models exist, how each one's config is resolved, how it is
//! fitted (closed form, or epoch by epoch through the generic trainer) and loaded.
//! Adding a model touches its own crate, this file and a config in `configs/`.

use std::path::Path;

use anyhow::{bail, Result};
use encore_data::Split;
use encore_models::bpr::{Bpr, BprConfig};
use encore_models::config::{self, ModelConfig, RunConfig, TrainerConfig};
use encore_models::ease::{Ease, EaseConfig};
use encore_models::lightgcn::{LightGcn, LightGcnConfig};
use encore_models::trainer::{self, TrainData, TrainOutcome};
use encore_models::{Pop, Recommender, Trainable};
use encore_vae::conditioning::Conditioning;
use encore_vae::macridvae::{MacridVae, MacridVaeConfig};
use encore_vae::multivae::{MultiVae, MultiVaeConfig};

/// Every model the CLI can train, in the order the demo runs them.
pub const MODELS: &[&str] = &["pop", "ease", "bpr", "lightgcn", "multivae", "macridvae"];

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

/// A model's resolved configuration, ready to fit.
pub enum Resolved {
    Pop,
    Ease(RunConfig<EaseConfig>),
    Bpr(RunConfig<BprConfig>),
    LightGcn(RunConfig<LightGcnConfig>),
    MultiVae(RunConfig<MultiVaeConfig>),
    MacridVae(RunConfig<MacridVaeConfig>),
}

impl Resolved {
    /// The resolved configuration as the TOML document written into the run directory.
    pub fn to_toml(&self) -> Result<String> {
        Ok(match self {
            Resolved::Pop => "model = \"pop\"\n".to_string(),
            Resolved::Ease(c) => c.to_toml()?,
            Resolved::Bpr(c) => c.to_toml()?,
            Resolved::LightGcn(c) => c.to_toml()?,
            Resolved::MultiVae(c) => c.to_toml()?,
            Resolved::MacridVae(c) => c.to_toml()?,
        })
    }
}

impl Resolved {
    /// The conditioning kind and fused dimension of a conditioned VAE (MODELS.md
    /// "Conditioning"); `None` for every other model and for `conditioning = "none"`.
    pub fn conditioning(&self) -> Option<(&str, usize)> {
        let (kind, dim) = match self {
            Resolved::MultiVae(c) => (c.model.conditioning.as_str(), c.model.cond_dim),
            Resolved::MacridVae(c) => (c.model.conditioning.as_str(), c.model.cond_dim),
            _ => return None,
        };
        (kind != "none").then_some((kind, dim))
    }
}

/// Resolve `name`'s configuration from an optional TOML file and `--set` overrides.
/// `seed` (the run's `--seed`, when given) becomes `train.seed` (and the VAEs' `init_seed`)
/// unless an override sets them.
pub fn resolve(
    name: &str,
    file: Option<&Path>,
    sets: &[String],
    seed: Option<u64>,
) -> Result<Resolved> {
    check_name(name)?;
    let mut all = Vec::new();
    if let Some(seed) = seed {
        all.push(format!("train.seed={seed}"));
        if matches!(name, "multivae" | "macridvae") {
            all.push(format!("init_seed={seed}"));
        }
    }
    all.extend(sets.iter().cloned());
    fn go<T: ModelConfig>(file: Option<&Path>, sets: &[String]) -> Result<RunConfig<T>> {
        Ok(config::resolve::<T>(file, sets)?)
    }
    Ok(match name {
        "pop" => {
            if file.is_some() || !sets.is_empty() {
                bail!("pop has no configuration: drop --config and --set");
            }
            Resolved::Pop
        }
        "ease" => Resolved::Ease(go(file, &all)?),
        "bpr" => Resolved::Bpr(go(file, &all)?),
        "lightgcn" => Resolved::LightGcn(go(file, &all)?),
        "multivae" => Resolved::MultiVae(go(file, &all)?),
        "macridvae" => Resolved::MacridVae(go(file, &all)?),
        other => bail!("unknown model `{other}`"),
    })
}

/// Fit a model on `split`: closed-form models at once, the others through the trainer, which
/// writes `model/`, `checkpoint/`, `log.jsonl` and the plots into `run_dir` (and continues a
/// killed run with `resume`). `cond` is the item conditioning of a conditioned VAE (see
/// [`Resolved::conditioning`]). Returns the best model and, for trained models, the outcome.
pub fn fit(
    resolved: &Resolved,
    split: &Split,
    run_dir: &Path,
    resume: bool,
    cond: Option<Conditioning>,
) -> Result<(Box<dyn Recommender>, Option<TrainOutcome>)> {
    let data = TrainData {
        train: &split.train,
        input: &split.input,
        valid: &split.valid,
    };
    let model_dir = run_dir.join("model");
    let closed_form = |model: Box<dyn Recommender>| -> Result<_> {
        std::fs::create_dir_all(&model_dir)?;
        model.save(&model_dir)?;
        Ok((model, None))
    };
    fn epochs<M: Trainable + 'static>(
        mut model: M,
        data: &TrainData,
        cfg: &TrainerConfig,
        run_dir: &Path,
        resume: bool,
        load: impl Fn(&Path) -> Result<M, encore_models::ModelError>,
    ) -> Result<(Box<dyn Recommender>, Option<TrainOutcome>)> {
        let outcome = trainer::train(&mut model, data, cfg, run_dir, resume)?;
        // The trainer keeps the best model in model/; the in-memory one is the last epoch's.
        let best = load(&run_dir.join("model"))?;
        drop(model);
        Ok((Box::new(best), Some(outcome)))
    }
    let n_items = split.train.n_items();
    match resolved {
        Resolved::Pop => closed_form(Box::new(Pop::fit(&split.train))),
        Resolved::Ease(c) => closed_form(Box::new(Ease::fit(&split.train, &c.model)?)),
        Resolved::Bpr(c) => {
            let m = Bpr::new(&c.model, &split.train, c.train.seed)?;
            epochs(m, &data, &c.train, run_dir, resume, Bpr::load)
        }
        Resolved::LightGcn(c) => {
            let m = LightGcn::new(&c.model, &split.train, c.train.seed)?;
            epochs(m, &data, &c.train, run_dir, resume, LightGcn::load)
        }
        Resolved::MultiVae(c) => {
            let m = MultiVae::with_conditioning(c.model.clone(), n_items, cond)?;
            epochs(m, &data, &c.train, run_dir, resume, MultiVae::load)
        }
        Resolved::MacridVae(c) => {
            let m = MacridVae::with_conditioning(c.model.clone(), n_items, cond)?;
            epochs(m, &data, &c.train, run_dir, resume, MacridVae::load)
        }
    }
}

/// Load a saved model of the given kind from `dir`.
pub fn load(name: &str, dir: &Path) -> Result<Box<dyn Recommender>> {
    Ok(match name {
        "pop" => Box::new(Pop::load(dir)?),
        "ease" => Box::new(Ease::load(dir)?),
        "bpr" => Box::new(Bpr::load(dir)?),
        "lightgcn" => Box::new(LightGcn::load(dir)?),
        "multivae" => Box::new(MultiVae::load(dir)?),
        "macridvae" => Box::new(MacridVae::load(dir)?),
        other => bail!("cannot load a model of unknown kind `{other}`"),
    })
}
