//! The model registry: one [`ModelEntry`] per model, built from the model's own module, so that
//! adding a model is that module plus one line in the list the binary collects
//! (ARCHITECTURE.md "Adding a model").
//!
//! An entry knows how to resolve the model's configuration (file, `--set` overrides, seed),
//! how to fit it — at once ([`ClosedForm`]) or epoch by epoch through the [trainer](crate::trainer)
//! ([`TrainedModel`]) — and how to load a saved one. The command line, the experiment runner
//! and the HTTP service look models up by name here and never match on model names.

use std::marker::PhantomData;
use std::path::Path;

use encore_data::InteractionMatrix;

use crate::conditioning::{Conditioning, ConditioningKind};
use crate::config::{self, ModelConfig, RunConfig};
use crate::trainer::{self, TrainData, TrainOutcome};
use crate::{ModelError, Recommender, Trainable};

/// What a model is fitted on, and where its run directory is.
pub struct FitInput<'a> {
    /// What the model learns from (users x items).
    pub train: &'a InteractionMatrix,
    /// The model's input rows when scoring (training items, or fold-in items of held-out
    /// users).
    pub input: &'a InteractionMatrix,
    /// Validation targets (model selection and early stopping).
    pub valid: &'a InteractionMatrix,
    /// The run directory: `model/` (the best model), and for trained models `checkpoint/`,
    /// `log.jsonl` and the plots.
    pub run_dir: &'a Path,
    /// Continue from the run directory's checkpoint instead of starting afresh.
    pub resume: bool,
    /// The item features of a conditioned model (MODELS.md "Conditioning").
    pub conditioning: Option<Conditioning>,
}

/// A fitted model, and the training outcome for a model trained epoch by epoch.
pub struct Fitted {
    /// The best model (by the validation metric, for trained models).
    pub model: Box<dyn Recommender>,
    pub outcome: Option<TrainOutcome>,
}

/// A model's fully resolved configuration, ready to fit.
pub trait ResolvedModel {
    /// The complete configuration as the TOML document written into the run directory
    /// (`config.toml`), from which [`ModelEntry::resolve`] gives the same configuration back.
    fn to_toml(&self) -> Result<String, ModelError>;

    /// The conditioning kind and fused dimension of a conditioned model; `None` for a model
    /// without conditioning.
    fn conditioning(&self) -> Option<(ConditioningKind, usize)> {
        None
    }

    /// Fit the model: closed-form models at once (saving into `run_dir/model`), trained
    /// models through the trainer.
    fn fit(&self, input: FitInput<'_>) -> Result<Fitted, ModelError>;
}

/// How a [`ModelEntry`] resolves its model's configuration.
pub type ResolveFn = fn(
    file: Option<&Path>,
    sets: &[String],
    seed: Option<u64>,
) -> Result<Box<dyn ResolvedModel>, ModelError>;

/// One registered model.
#[derive(Clone, Copy)]
pub struct ModelEntry {
    /// The registry name (`--model NAME`, `model = "NAME"` in configs, `run.json`).
    pub name: &'static str,
    /// One line for `--help` listings.
    pub summary: &'static str,
    /// Resolve the configuration from an optional TOML file and `--set` overrides; `seed`
    /// (a run's `--seed`) sets the trainer's seed and the model's own seed keys, unless an
    /// override sets them.
    pub resolve: ResolveFn,
    /// Load a saved model from a `model/` folder.
    pub load: fn(dir: &Path) -> Result<Box<dyn Recommender>, ModelError>,
}

/// A model fitted in one go (counting, closed form, neighbourhoods).
pub trait ClosedForm: Recommender + Sized + 'static {
    type Config: ModelConfig;
    /// Fit on `train` (no validation-driven selection).
    fn fit(config: &Self::Config, train: &InteractionMatrix) -> Result<Self, ModelError>;
    /// Load what [`Recommender::save`] wrote.
    fn load(dir: &Path) -> Result<Self, ModelError>;
}

/// A model trained epoch by epoch by the generic trainer.
pub trait TrainedModel: Trainable + Sized + 'static {
    type Config: ModelConfig;
    /// A fresh, untrained model for `input`'s catalogue; `seed` is the trainer's seed.
    fn init(config: &RunConfig<Self::Config>, input: &FitInput<'_>) -> Result<Self, ModelError>;
    /// Load what [`Recommender::save`] wrote.
    fn load(dir: &Path) -> Result<Self, ModelError>;
}

/// The overrides a run's `--seed` adds before the user's own.
fn seeded_sets<C: ModelConfig>(sets: &[String], seed: Option<u64>) -> Vec<String> {
    let mut all = Vec::new();
    if let Some(seed) = seed {
        all.push(format!("train.seed={seed}"));
        all.extend(C::SEED_KEYS.iter().map(|k| format!("{k}={seed}")));
    }
    all.extend(sets.iter().cloned());
    all
}

/// How a kind of model is fitted from its resolved configuration; implemented by the two
/// zero-sized selectors below, so that one generic [`Resolved`] serves both kinds.
trait FitKind: 'static {
    type Config: ModelConfig;
    fn fit(config: &RunConfig<Self::Config>, input: FitInput<'_>) -> Result<Fitted, ModelError>;
}

struct ClosedFormKind<M>(PhantomData<M>);
struct TrainedKind<M>(PhantomData<M>);

impl<M: ClosedForm> FitKind for ClosedFormKind<M> {
    type Config = M::Config;
    fn fit(c: &RunConfig<M::Config>, input: FitInput<'_>) -> Result<Fitted, ModelError> {
        saved(M::fit(&c.model, input.train)?, input.run_dir)
    }
}

impl<M: TrainedModel> FitKind for TrainedKind<M> {
    type Config = M::Config;
    fn fit(c: &RunConfig<M::Config>, input: FitInput<'_>) -> Result<Fitted, ModelError> {
        let mut model = M::init(c, &input)?;
        let data = TrainData {
            train: input.train,
            input: input.input,
            valid: input.valid,
        };
        let outcome = trainer::train(&mut model, &data, &c.train, input.run_dir, input.resume)?;
        // The trainer keeps the best model in model/; the one in memory is the last epoch's.
        drop(model);
        let best = M::load(&input.run_dir.join("model"))?;
        Ok(Fitted {
            model: Box::new(best),
            outcome: Some(outcome),
        })
    }
}

struct Resolved<K: FitKind>(RunConfig<K::Config>);

impl<K: FitKind> ResolvedModel for Resolved<K> {
    fn to_toml(&self) -> Result<String, ModelError> {
        self.0.to_toml()
    }

    fn conditioning(&self) -> Option<(ConditioningKind, usize)> {
        self.0.model.conditioning()
    }

    fn fit(&self, input: FitInput<'_>) -> Result<Fitted, ModelError> {
        K::fit(&self.0, input)
    }
}

fn resolve_as<K: FitKind>(
    file: Option<&Path>,
    sets: &[String],
    seed: Option<u64>,
) -> Result<Box<dyn ResolvedModel>, ModelError> {
    let all = seeded_sets::<K::Config>(sets, seed);
    Ok(Box::new(Resolved::<K>(config::resolve(file, &all)?)))
}

impl ModelEntry {
    /// The entry of a closed-form model.
    pub fn closed_form<M: ClosedForm>(summary: &'static str) -> ModelEntry {
        ModelEntry {
            name: M::Config::MODEL,
            summary,
            resolve: resolve_as::<ClosedFormKind<M>>,
            load: |dir| Ok(Box::new(M::load(dir)?)),
        }
    }

    /// The entry of a model trained epoch by epoch.
    pub fn trained<M: TrainedModel>(summary: &'static str) -> ModelEntry {
        ModelEntry {
            name: M::Config::MODEL,
            summary,
            resolve: resolve_as::<TrainedKind<M>>,
            load: |dir| Ok(Box::new(M::load(dir)?)),
        }
    }
}

/// A model fitted in one go, saved as the run's best model (`run_dir/model`).
pub fn saved(model: impl Recommender + 'static, run_dir: &Path) -> Result<Fitted, ModelError> {
    let dir = run_dir.join("model");
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
    model.save(&dir)?;
    Ok(Fitted {
        model: Box::new(model),
        outcome: None,
    })
}

/// The entry named `name` in `registry`, or an error listing the known names.
pub fn find<'a>(registry: &'a [ModelEntry], name: &str) -> Result<&'a ModelEntry, ModelError> {
    registry.iter().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<&str> = registry.iter().map(|e| e.name).collect();
        ModelError::config(
            "model",
            format!(
                "unknown model `{name}`; expected one of {}",
                names.join(", ")
            ),
        )
    })
}
