//! Encore's model framework (SPEC §4, ARCHITECTURE.md): what every model implements and what
//! runs every model.
//!
//! - [`Recommender`]: a fitted model scores users from their input rows, scores a history it
//!   never saw (fold-in), and saves itself; [`Trainable`]: a model trained epoch by epoch.
//! - [`config`]: one TOML document per run, presets, `--set` overrides, checked values.
//! - [`trainer`]: epochs, validation, the best model, early stopping, atomic checkpoints,
//!   resume, the per-epoch log and its plots.
//! - [`optim`]: Adam exactly as PyTorch computes it.
//! - [`registry`]: the table of models (name, config, construct, train, load) the command
//!   line, the experiment runner and the service look models up in.
//! - [`run`]: the run directory and its lifecycle: create it, fit the model, evaluate the best
//!   model, record the metrics; load it back to evaluate, recommend or resume.
//! - [`similarity`]: item-item similarity from a model's item representations.
//! - [`alloc`]: the allocator policy for training processes.
//!
//! Durable file output (atomic writes, safetensors) lives one level lower, in `encore-io`,
//! so that the data crates use the same policy.

pub mod alloc;
pub mod conditioning;
pub mod config;
pub mod error;
pub mod optim;
pub mod registry;
pub mod run;
pub mod similarity;
pub mod trainer;

pub use error::ModelError;
pub use optim::Adam;
pub use similarity::{ItemRepresentation, ItemVectors};

use std::collections::BTreeMap;
use std::path::Path;

use encore_data::InteractionMatrix;
use rand_chacha::ChaCha8Rng;

/// What every model can do once fitted: score users from their input rows, score a history it
/// never saw (fold-in), and save itself.
pub trait Recommender: Send + Sync {
    /// The registry name (`"pop"`, `"multivae"`, ...).
    fn name(&self) -> &'static str;

    /// Catalogue size.
    fn n_items(&self) -> usize;

    /// Scores of every item for each user in `users`, computed from the users' rows of `input`
    /// (their model input: training items, or fold-in items for held-out users). `out` is
    /// `users.len() * n_items()`, row-major. Models that keep per-user parameters (BPR,
    /// LightGCN) use them for users they were trained on and fold the others in.
    fn score_users(&self, users: &[u32], input: &InteractionMatrix, out: &mut [f32]);

    /// Scores of every item for a listener described only by `history` (item indices): the
    /// fold-in path used by `recommend --history` and the HTTP service. `out` has `n_items()`
    /// entries.
    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError>;

    /// [`Recommender::score_history`] for several listeners at once: row `r` of `out`
    /// (`histories.len() * n_items()`, row-major) is exactly, bit for bit, what
    /// `score_history(histories[r])` gives alone. The service folds in the listeners waiting
    /// together this way; a model may share work between them (MultiVAE reads its output
    /// layer once for all), by default each is scored alone.
    fn score_histories(&self, histories: &[&[u32]], out: &mut [f32]) -> Result<(), ModelError> {
        let n = self.n_items();
        check_histories_out(out, histories.len(), n)?;
        for (h, row) in histories.iter().zip(out.chunks_mut(n.max(1))) {
            self.score_history(h, row)?;
        }
        Ok(())
    }

    /// Write the model's weights (safetensors) and whatever else it needs into `dir`.
    fn save(&self, dir: &Path) -> Result<(), ModelError>;

    /// The item representations item-item similarity is computed from ([`similarity`]):
    /// embeddings, decoder weights or learned item-item weights; `None` for a model without
    /// any (Pop).
    fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        None
    }
}

/// [`Recommender::score_histories`]'s buffer check: `out` must hold `histories x n_items`
/// scores.
pub fn check_histories_out(
    out: &[f32],
    histories: usize,
    n_items: usize,
) -> Result<(), ModelError> {
    if out.len() == histories * n_items {
        return Ok(());
    }
    Err(ModelError::Input(format!(
        "score buffer has {} entries, {histories} histories x {n_items} items need {}",
        out.len(),
        histories * n_items
    )))
}

/// The data a model is trained on for one epoch.
pub struct EpochContext<'a> {
    /// The training matrix (users x items).
    pub train: &'a InteractionMatrix,
    /// 0-based epoch number.
    pub epoch: usize,
    /// The trainer's random stream (its state is checkpointed with the trainer).
    pub rng: &'a mut ChaCha8Rng,
    /// Called with the number of training examples (users or triples) just processed, to
    /// advance the progress bar.
    pub progress: &'a (dyn Fn(u64) + Sync),
}

/// A model trained epoch by epoch by the generic trainer.
pub trait Trainable: Recommender {
    /// One pass over the training data; returns the named loss parts (means over batches),
    /// e.g. `{"loss": .., "recon": .., "kl": ..}`.
    fn train_epoch(&mut self, ctx: EpochContext<'_>) -> Result<BTreeMap<String, f64>, ModelError>;

    /// Save the full training state (weights, optimizer moments, internal counters such as
    /// the KL-annealing update count) into `dir`, so that [`Trainable::load_state`] resumes
    /// exactly.
    fn save_state(&self, dir: &Path) -> Result<(), ModelError>;

    /// Restore what [`Trainable::save_state`] wrote.
    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError>;
}

/// A thin adapter that lets the evaluator call a model on a fixed input matrix.
pub struct ModelScorer<'a> {
    pub model: &'a dyn Recommender,
    pub input: &'a InteractionMatrix,
}

impl encore_eval::Scorer for ModelScorer<'_> {
    fn n_items(&self) -> usize {
        self.model.n_items()
    }

    fn score_batch(&self, users: &[u32], out: &mut [f32]) {
        self.model.score_users(users, self.input, out)
    }
}
