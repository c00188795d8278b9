//! The run directory (SPEC §1): the unit of record of one training run, and its lifecycle.
//! The command line, the experiment runner and the HTTP service share it; each loads its data
//! and resolves its model its own way, then hands plain values to this module.
//!
//! ```text
//! RUN/
//!   run.json       model, dataset (path, fingerprint), split record, seed, threads, version,
//!                  and the feature tables of a conditioned model
//!   config.toml    the fully resolved model + trainer configuration
//!   split/         train.tsv valid.tsv test.tsv [foldin.tsv] split.json
//!   conditioning/  a conditioned model's item vectors (written by the caller)
//!   model/         the best model
//!   checkpoint/    the latest training state (resume), for trained models
//!   log.jsonl      one line per epoch, and the validation plots, for trained models
//!   metrics.json   {"valid": {"ndcg@10": ..}, "test": {..}, ...}
//!   per_user_test.tsv  each evaluated test user's metrics and input size (paired tests,
//!                  the cold-start table)
//!   foldin_test.tsv    `users` split only: the held-out test listeners folded in from only
//!                  their first 1, 3 and 5 items
//! ```
//!
//! # Lifecycle
//!
//! 1. [`create`] a new run from a [`NewRun`]: `run.json`, `split/` and `config.toml`, each
//!    written atomically. A directory that already holds a run is refused.
//! 2. A conditioned model's caller writes `conditioning/` (its fitted item vectors, through
//!    [`Conditioning::save`], plus whatever produced them).
//! 3. [`fit_and_evaluate`]: fit the model through the registry ([`ResolvedModel::fit`]: at
//!    once, or epoch by epoch through the [trainer](crate::trainer)), score the best model on
//!    validation and test ([`evaluate_split`]) and write `metrics.json`.
//!
//! A killed run is continued by [`load`]ing it, taking its recorded configuration
//! ([`LoadedRun::config`]) and calling [`fit_and_evaluate`] with `resume` set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use encore_data::split::SplitInfo;
use encore_data::{Dataset, IdMap, InteractionMatrix, Split, SplitKind};
use encore_eval::{evaluate, EvalOptions, MetricReport};
use serde::{Deserialize, Serialize};

use crate::conditioning::Conditioning;
use crate::registry::{FitInput, ModelEntry, ResolvedModel};
use crate::{ModelError, ModelScorer, Recommender};

/// The run's record.
pub const RUN_FILE: &str = "run.json";
/// The resolved configuration, from which [`LoadedRun::config`] resolves it again.
pub const CONFIG_FILE: &str = "config.toml";
/// The split, with original ids.
pub const SPLIT_DIR: &str = "split";
/// A conditioned model's item vectors ([`Conditioning::save`]).
pub const CONDITIONING_DIR: &str = "conditioning";
/// The best model ([`Recommender::save`]), loaded by [`ModelEntry::load`].
pub const MODEL_DIR: &str = "model";
/// The final metrics.
pub const METRICS_FILE: &str = "metrics.json";
/// Each evaluated test user's metrics ([`write_per_user`]).
pub const PER_USER_FILE: &str = "per_user_test.tsv";
/// The `users` split's held-out test listeners folded in from a few items ([`foldin_reports`]).
pub const FOLDIN_FILE: &str = "foldin_test.tsv";
/// How many of their fold-in items the held-out listeners are given in [`foldin_reports`].
pub const FOLDIN_GIVEN: [usize; 3] = [1, 3, 5];

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// The registry name of the model.
    pub model: String,
    /// The prepared dataset directory, when the run used one.
    pub data: Option<PathBuf>,
    pub dataset_name: String,
    pub dataset_fingerprint: String,
    pub split: SplitInfo,
    pub seed: u64,
    /// The threads of the rayon pool the run was created in.
    pub threads: usize,
    pub encore_version: String,
    /// Where a conditioned model's item features came from, as the caller records it (the
    /// command line: `{"audio": PATH, "lyrics": PATH}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<serde_json::Value>,
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMetrics {
    pub valid: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub valid_users: usize,
    pub test_users: usize,
    pub skipped_users_valid: usize,
    pub skipped_users_test: usize,
    /// 0-based epoch of the best model, for trained models.
    pub best_epoch: Option<usize>,
    /// Epochs trained in total (across resumes), for trained models.
    pub epochs: Option<usize>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

impl RunMetrics {
    /// The metrics of a validation and a test report, without training figures.
    pub fn new(valid: &MetricReport, test: &MetricReport) -> Self {
        Self {
            valid: valid.metrics.clone(),
            test: test.metrics.clone(),
            valid_users: valid.n_evaluated,
            test_users: test.n_evaluated,
            skipped_users_valid: valid.n_skipped,
            skipped_users_test: test.n_skipped,
            best_epoch: None,
            epochs: None,
            train_seconds: 0.0,
            eval_seconds: valid.seconds + test.seconds,
        }
    }
}

/// A new run: everything it is made of, loaded and resolved by the caller.
pub struct NewRun<'a> {
    /// The run directory; it may exist, but not hold a run.
    pub dir: &'a Path,
    /// The model's registry name ([`ModelEntry::name`]).
    pub model: &'a str,
    /// The model's resolved configuration (written as `config.toml`).
    pub config: &'a dyn ResolvedModel,
    pub dataset: &'a Dataset,
    /// The prepared dataset directory `dataset` was loaded from, recorded (made absolute) so
    /// that [`load`] reads the dataset from there again; `None` rebuilds it from the saved
    /// split.
    pub data: Option<&'a Path>,
    pub split: &'a Split,
    /// The run's seed (recorded; the split and the configuration already carry it).
    pub seed: u64,
    /// Where a conditioned model's features came from (`run.json`'s `features`).
    pub features: Option<serde_json::Value>,
}

/// Create the run directory of `run`: `run.json`, `split/` and `config.toml`. Refuses a
/// directory that already holds a run ([`ModelError::RunExists`]). Returns the record written.
pub fn create(run: &NewRun<'_>) -> Result<RunInfo, ModelError> {
    let dir = run.dir;
    if dir.join(RUN_FILE).exists() {
        return Err(ModelError::RunExists {
            dir: dir.to_path_buf(),
        });
    }
    let fingerprint = run.dataset.fingerprint();
    let info = RunInfo {
        model: run.model.to_string(),
        // Absolute, so that the run finds its dataset (and the item names only it has) from
        // any working directory: `encore serve` is rarely started where training was.
        data: run
            .data
            .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf())),
        dataset_name: run.dataset.name.clone(),
        split: run.split.info(&fingerprint),
        dataset_fingerprint: fingerprint,
        seed: run.seed,
        threads: rayon::current_num_threads(),
        encore_version: env!("CARGO_PKG_VERSION").to_string(),
        features: run.features.clone(),
    };
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    run.split
        .save_dir(&dir.join(SPLIT_DIR), run.dataset, &info.split)?;
    encore_io::write_json(&dir.join(RUN_FILE), &info)?;
    encore_io::write_bytes(&dir.join(CONFIG_FILE), run.config.to_toml()?.as_bytes())?;
    Ok(info)
}

/// The stages of [`fit_and_evaluate`], reported to the caller as each begins (a trained
/// model's epochs report their own progress, through the trainer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStage {
    /// Fitting the model, or continuing its training.
    Fitting,
    /// Scoring the best model on validation and test.
    Evaluating,
}

/// A run directory to fit a model in: one just [`create`]d, or one [`load`]ed to resume.
pub struct RunFit<'a> {
    pub dir: &'a Path,
    pub split: &'a Split,
    pub config: &'a dyn ResolvedModel,
    /// A conditioned model's item vectors, as fitted for a new run. `None` reads them from the
    /// run's `conditioning/` folder (a resumed run continues with exactly the same vectors);
    /// ignored for a model without conditioning.
    pub conditioning: Option<Conditioning>,
    /// Continue from the run's checkpoint instead of starting afresh.
    pub resume: bool,
    /// The cut-offs of the final metrics.
    pub ks: &'a [usize],
    /// The dataset's user ids, for `per_user_test.tsv` (`None` writes dense user indices).
    pub user_ids: Option<&'a IdMap>,
}

/// What a finished run reports.
pub struct RunResult {
    pub dir: PathBuf,
    pub valid: MetricReport,
    pub test: MetricReport,
    /// What was written as `metrics.json`.
    pub metrics: RunMetrics,
}

/// Fit the model of `run`, evaluate the best model and write `metrics.json`.
pub fn fit_and_evaluate(
    run: RunFit<'_>,
    progress: &dyn Fn(RunStage),
) -> Result<RunResult, ModelError> {
    if run.ks.is_empty() || run.ks.contains(&0) {
        return Err(ModelError::Input(
            "expected at least one cut-off, each positive".into(),
        ));
    }
    let conditioning = match (run.config.conditioning(), run.conditioning) {
        (None, _) => None,
        (Some(_), Some(c)) => Some(c),
        (Some(_), None) => Some(Conditioning::load(&run.dir.join(CONDITIONING_DIR))?),
    };
    progress(RunStage::Fitting);
    let start = Instant::now();
    let split = run.split;
    let fitted = run.config.fit(FitInput {
        train: &split.train,
        input: &split.input,
        valid: &split.valid,
        run_dir: run.dir,
        resume: run.resume,
        conditioning,
    })?;
    let train_seconds = fitted
        .outcome
        .as_ref()
        .map_or(start.elapsed().as_secs_f64(), |o| o.seconds);

    progress(RunStage::Evaluating);
    let (valid, test) = evaluate_split(fitted.model.as_ref(), split, run.ks);
    let mut metrics = RunMetrics::new(&valid, &test);
    metrics.train_seconds = train_seconds;
    if let Some(o) = &fitted.outcome {
        metrics.best_epoch = o.best_epoch;
        metrics.epochs = Some(o.epochs_run);
    }
    write_per_user(
        &run.dir.join(PER_USER_FILE),
        &[(None, &split.input, &test)],
        run.user_ids,
    )?;
    if split.kind == SplitKind::Users {
        let given = foldin_reports(fitted.model.as_ref(), split, run.ks);
        let rows: Vec<_> = given.iter().map(|(n, r, m)| (Some(*n), m, r)).collect();
        write_per_user(&run.dir.join(FOLDIN_FILE), &rows, run.user_ids)?;
    }
    encore_io::write_json(&run.dir.join(METRICS_FILE), &metrics)?;
    Ok(RunResult {
        dir: run.dir.to_path_buf(),
        valid,
        test,
        metrics,
    })
}

/// Validation (the model input excluded) and test (input and validation items excluded)
/// metrics of `model` at the cut-offs `ks` (EVALUATION.md "Protocol").
pub fn evaluate_split(
    model: &dyn Recommender,
    split: &Split,
    ks: &[usize],
) -> (MetricReport, MetricReport) {
    let opts = EvalOptions {
        ks: ks.to_vec(),
        ..EvalOptions::default()
    };
    let scorer = ModelScorer {
        model,
        input: &split.input,
    };
    let valid = evaluate(&scorer, &[&split.input], &split.valid, &opts);
    let per_user = EvalOptions {
        keep_per_user: true,
        ..opts
    };
    let test = evaluate(
        &scorer,
        &[&split.input, &split.valid],
        &split.test,
        &per_user,
    );
    (valid, test)
}

/// The `users` split's held-out test listeners as new listeners: each is folded in from only
/// the first `n` of their fold-in items (for `n` in [`FOLDIN_GIVEN`]; all of them when they
/// have fewer), in an order drawn from the split's seed (a stream of its own, not the
/// split's), and ranked against their test items. Everything in their fold-in is still
/// excluded from the ranking (as in the full evaluation: they did hear those items), so the
/// only change from the full test is how much of their history the model sees. Returns
/// `(n, test report with per-user values, the input matrix used)`.
pub fn foldin_reports(
    model: &dyn Recommender,
    split: &Split,
    ks: &[usize],
) -> Vec<(usize, MetricReport, InteractionMatrix)> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    const STREAM: u64 = 0xF01D_1A5E;
    let opts = EvalOptions {
        ks: ks.to_vec(),
        keep_per_user: true,
        ..EvalOptions::default()
    };
    let n_users = split.input.n_users();
    let orders: Vec<Vec<u32>> = (0..n_users)
        .map(|u| {
            let mut row = split.input.row(u).to_vec();
            if split.test.row_len(u) > 0 && split.train.row_len(u) == 0 {
                let seed = encore_data::split::mix_seed(split.seed ^ STREAM, u as u64);
                row.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            }
            row
        })
        .collect();
    FOLDIN_GIVEN
        .iter()
        .map(|&n| {
            let rows: Vec<&[u32]> = (0..n_users)
                .map(|u| {
                    let row = orders[u].as_slice();
                    if split.test.row_len(u) > 0 && split.train.row_len(u) == 0 {
                        &row[..row.len().min(n)]
                    } else {
                        row
                    }
                })
                .collect();
            let input = InteractionMatrix::from_rows(split.input.n_items(), &rows);
            let scorer = ModelScorer {
                model,
                input: &input,
            };
            let report = evaluate(&scorer, &[&split.input, &split.valid], &split.test, &opts);
            (n, report, input)
        })
        .collect()
}

/// Write per-user values as TSV: `given` (only when some entry has one: the fold-in size of
/// [`foldin_reports`]), `user_id`, `n_input` (the user's row length in the input matrix the
/// report was scored from: the cold-start table's input size) and one column per metric
/// (`hit@10`, ..., sorted by name). Each entry is `(given, input, report)`; reports without
/// per-user values add no rows.
pub fn write_per_user(
    path: &Path,
    reports: &[(Option<usize>, &InteractionMatrix, &MetricReport)],
    user_ids: Option<&IdMap>,
) -> Result<(), ModelError> {
    use std::fmt::Write;
    let with_given = reports.iter().any(|(g, _, _)| g.is_some());
    let names: Vec<&String> = reports
        .iter()
        .find_map(|(_, _, r)| r.per_user.as_ref())
        .map(|p| p.values.keys().collect())
        .unwrap_or_default();
    let mut out = String::new();
    if with_given {
        out.push_str("given\t");
    }
    out.push_str("user_id\tn_input");
    for name in &names {
        let _ = write!(out, "\t{name}");
    }
    out.push('\n');
    for (given, input, report) in reports {
        let Some(per_user) = &report.per_user else {
            continue;
        };
        let columns: Vec<&[f64]> = names
            .iter()
            .map(|n| per_user.get(n).unwrap_or(&[]))
            .collect();
        for (j, &u) in per_user.users.iter().enumerate() {
            if with_given {
                let _ = write!(out, "{}\t", given.unwrap_or(0));
            }
            match user_ids {
                Some(ids) => out.push_str(ids.id(u)),
                None => {
                    let _ = write!(out, "{u}");
                }
            }
            let _ = write!(out, "\t{}", input.row_len(u as usize));
            for c in &columns {
                let _ = write!(out, "\t{}", c.get(j).copied().unwrap_or(f64::NAN));
            }
            out.push('\n');
        }
    }
    encore_io::write_bytes(path, out.as_bytes())?;
    Ok(())
}

/// A run directory read back.
pub struct LoadedRun {
    pub dir: PathBuf,
    pub info: RunInfo,
    pub dataset: Dataset,
    pub split: Split,
}

impl LoadedRun {
    /// The run's recorded configuration (`config.toml`) resolved by `entry`, which must be the
    /// run's model.
    pub fn config(&self, entry: &ModelEntry) -> Result<Box<dyn ResolvedModel>, ModelError> {
        if self.info.model != entry.name {
            return Err(ModelError::format(
                &self.dir,
                format!("holds a `{}` run, not `{}`", self.info.model, entry.name),
            ));
        }
        (entry.resolve)(Some(&self.dir.join(CONFIG_FILE)), &[], None)
    }

    /// The run's best model, loaded by `entry`.
    pub fn model(&self, entry: &ModelEntry) -> Result<Box<dyn Recommender>, ModelError> {
        (entry.load)(&self.dir.join(MODEL_DIR))
    }
}

/// Load a run's record, its dataset (from the recorded prepared dataset directory when it
/// still exists, else rebuilt from the saved split) and its split.
pub fn load(dir: &Path) -> Result<LoadedRun, ModelError> {
    let info: RunInfo = encore_io::read_json(&dir.join(RUN_FILE))
        .map_err(|e| ModelError::format(dir, format!("not a run directory ({e})")))?;
    let recorded = info
        .data
        .as_deref()
        .filter(|data| data.join(encore_data::cache::FILE_NAME).exists());
    let from_data = match recorded {
        Some(data) => {
            let ds = encore_data::cache::load(&data.join(encore_data::cache::FILE_NAME))?;
            if ds.fingerprint() != info.dataset_fingerprint {
                return Err(ModelError::format(
                    data,
                    format!(
                        "the dataset changed since the run (fingerprint {} != {})",
                        ds.fingerprint(),
                        info.dataset_fingerprint
                    ),
                ));
            }
            Some(ds)
        }
        None => None,
    };
    let loaded = Split::load_dir(&dir.join(SPLIT_DIR), from_data.as_ref())?;
    let dataset = match from_data {
        Some(ds) => ds,
        None => loaded.dataset(&info.dataset_name),
    };
    Ok(LoadedRun {
        dir: dir.to_path_buf(),
        info,
        dataset,
        split: loaded.split,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, Preset, RunConfig};
    use crate::registry::{ClosedForm, TrainedModel};
    use crate::{EpochContext, Trainable};
    use encore_data::{IdMap, InteractionMatrix, SplitKind};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// The closed-form test model's configuration: nothing but the preset.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PopConfig {
        preset: Preset,
    }

    impl ModelConfig for PopConfig {
        const MODEL: &'static str = "tiny-pop";
        fn preset(preset: Preset) -> Self {
            Self { preset }
        }
        fn check(&self) -> Result<(), ModelError> {
            Ok(())
        }
    }

    /// The trained test model's configuration: the preset, and six epochs.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoisyConfig {
        preset: Preset,
    }

    impl ModelConfig for NoisyConfig {
        const MODEL: &'static str = "tiny-noisy";
        fn preset(preset: Preset) -> Self {
            Self { preset }
        }
        fn check(&self) -> Result<(), ModelError> {
            Ok(())
        }
        fn trainer_defaults(&self) -> crate::config::TrainerConfig {
            crate::config::TrainerConfig {
                epochs: 6,
                ks: vec![5, 10],
                ..Default::default()
            }
        }
    }

    /// Item scores, saved as JSON: the state of both test models.
    #[derive(Clone)]
    struct Scores {
        name: &'static str,
        scores: Vec<f32>,
        epochs_seen: u32,
    }

    impl Scores {
        fn read(dir: &Path, name: &'static str) -> Result<Self, ModelError> {
            let (scores, epochs_seen) = encore_io::read_json(&dir.join("scores.json"))?;
            Ok(Self {
                name,
                scores,
                epochs_seen,
            })
        }
    }

    impl Recommender for Scores {
        fn name(&self) -> &'static str {
            self.name
        }
        fn n_items(&self) -> usize {
            self.scores.len()
        }
        fn score_users(&self, users: &[u32], _input: &InteractionMatrix, out: &mut [f32]) {
            for row in out.chunks_mut(self.scores.len()).take(users.len()) {
                row.copy_from_slice(&self.scores);
            }
        }
        fn score_history(&self, _history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
            out.copy_from_slice(&self.scores);
            Ok(())
        }
        fn save(&self, dir: &Path) -> Result<(), ModelError> {
            let value = (&self.scores, self.epochs_seen);
            Ok(encore_io::write_json(&dir.join("scores.json"), &value)?)
        }
    }

    /// Popularity, fitted at once.
    struct TinyPop(Scores);

    impl Recommender for TinyPop {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn n_items(&self) -> usize {
            self.0.n_items()
        }
        fn score_users(&self, users: &[u32], input: &InteractionMatrix, out: &mut [f32]) {
            self.0.score_users(users, input, out)
        }
        fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
            self.0.score_history(history, out)
        }
        fn save(&self, dir: &Path) -> Result<(), ModelError> {
            self.0.save(dir)
        }
    }

    impl ClosedForm for TinyPop {
        type Config = PopConfig;
        fn fit(_: &PopConfig, train: &InteractionMatrix) -> Result<Self, ModelError> {
            let scores = train.item_counts().iter().map(|&c| c as f32).collect();
            Ok(TinyPop(Scores {
                name: PopConfig::MODEL,
                scores,
                epochs_seen: 0,
            }))
        }
        fn load(dir: &Path) -> Result<Self, ModelError> {
            Ok(TinyPop(Scores::read(dir, PopConfig::MODEL)?))
        }
    }

    /// The epoch at which [`Noisy`] fails, to simulate a killed run (`usize::MAX`: never).
    static FAIL_AT: AtomicUsize = AtomicUsize::new(usize::MAX);

    /// Popularity plus noise that shrinks every epoch, drawn from the trainer's stream.
    struct Noisy(Scores);

    impl Recommender for Noisy {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn n_items(&self) -> usize {
            self.0.n_items()
        }
        fn score_users(&self, users: &[u32], input: &InteractionMatrix, out: &mut [f32]) {
            self.0.score_users(users, input, out)
        }
        fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
            self.0.score_history(history, out)
        }
        fn save(&self, dir: &Path) -> Result<(), ModelError> {
            self.0.save(dir)
        }
    }

    impl Trainable for Noisy {
        fn train_epoch(
            &mut self,
            ctx: EpochContext<'_>,
        ) -> Result<BTreeMap<String, f64>, ModelError> {
            if FAIL_AT.load(Ordering::SeqCst) == ctx.epoch {
                return Err(ModelError::Input("killed".into()));
            }
            self.0.epochs_seen += 1;
            let noise = 20.0 / self.0.epochs_seen as f32;
            let counts = ctx.train.item_counts();
            for (s, &c) in self.0.scores.iter_mut().zip(&counts) {
                *s = c as f32 + noise * ctx.rng.random::<f32>();
            }
            Ok(BTreeMap::from([("loss".to_string(), noise as f64)]))
        }
        fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
            self.save(dir)
        }
        fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
            self.0 = Scores::read(dir, NoisyConfig::MODEL)?;
            Ok(())
        }
    }

    impl TrainedModel for Noisy {
        type Config = NoisyConfig;
        fn init(_: &RunConfig<NoisyConfig>, input: &FitInput<'_>) -> Result<Self, ModelError> {
            Ok(Noisy(Scores {
                name: NoisyConfig::MODEL,
                scores: vec![0.0; input.train.n_items()],
                epochs_seen: 0,
            }))
        }
        fn load(dir: &Path) -> Result<Self, ModelError> {
            Ok(Noisy(Scores::read(dir, NoisyConfig::MODEL)?))
        }
    }

    /// 40 users x 25 items, popularity falling with the item index.
    fn dataset() -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let rows: Vec<Vec<u32>> = (0..40)
            .map(|_| {
                (0..25u32)
                    .filter(|&i| rng.random::<f64>() < 0.9 / (1.0 + i as f64 / 4.0))
                    .collect()
            })
            .collect();
        let ids = |prefix: &str, n: usize| {
            IdMap::from_ids((0..n).map(|i| format!("{prefix}{i}")).collect()).unwrap()
        };
        Dataset {
            name: "tiny".into(),
            users: ids("u", 40),
            items: ids("i", 25),
            matrix: InteractionMatrix::from_rows(25, &rows),
            ..Dataset::default()
        }
    }

    fn read_metrics(dir: &Path) -> RunMetrics {
        encore_io::read_json(&dir.join(METRICS_FILE)).unwrap()
    }

    /// Create, fit, evaluate and record a closed-form model's run; read it back.
    #[test]
    fn a_closed_form_run_is_created_fitted_evaluated_and_loaded() {
        let entry = ModelEntry::closed_form::<TinyPop>("popularity, for tests");
        let ds = dataset();
        let split = Split::make(&ds, SplitKind::Ratio, 7).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // The prepared dataset directory the run records.
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        encore_data::cache::save(&ds, &data.join(encore_data::cache::FILE_NAME)).unwrap();
        let dir = tmp.path().join("run");
        let config = (entry.resolve)(None, &[], Some(7)).unwrap();
        let new = NewRun {
            dir: &dir,
            model: entry.name,
            config: config.as_ref(),
            dataset: &ds,
            data: Some(&data),
            split: &split,
            seed: 7,
            features: None,
        };
        let info = create(&new).unwrap();
        for name in [RUN_FILE, CONFIG_FILE, "split/split.json", "split/train.tsv"] {
            assert!(dir.join(name).is_file(), "{name}");
        }
        assert_eq!(info.dataset_fingerprint, ds.fingerprint());
        // run.json has no `features` key for a model without conditioning.
        let text = std::fs::read_to_string(dir.join(RUN_FILE)).unwrap();
        assert!(!text.contains("features"), "{text}");
        assert!(matches!(create(&new), Err(ModelError::RunExists { .. })));

        let stages = Mutex::new(Vec::new());
        let result = fit_and_evaluate(
            RunFit {
                dir: &dir,
                split: &split,
                config: config.as_ref(),
                conditioning: None,
                resume: false,
                ks: &[5, 10],
                user_ids: None,
            },
            &|s| stages.lock().unwrap().push(s),
        )
        .unwrap();
        assert_eq!(
            *stages.lock().unwrap(),
            [RunStage::Fitting, RunStage::Evaluating]
        );
        let recorded = read_metrics(&dir);
        assert_eq!(recorded.test, result.test.metrics);
        assert_eq!(recorded.valid, result.valid.metrics);
        assert_eq!((recorded.best_epoch, recorded.epochs), (None, None));
        assert!(recorded.test["ndcg@10"] > 0.0);

        // Read back: the record, the dataset from its directory, the split and the model
        // give the same metrics again.
        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.dataset, ds);
        assert_eq!(loaded.split.test, split.test);
        assert_eq!(loaded.info.split, info.split);
        let model = loaded.model(&entry).unwrap();
        let (valid, test) = evaluate_split(model.as_ref(), &loaded.split, &[5, 10]);
        assert_eq!(
            (valid.metrics, test.metrics),
            (recorded.valid, recorded.test)
        );
        assert_eq!(
            loaded.config(&entry).unwrap().to_toml().unwrap(),
            config.to_toml().unwrap()
        );
        let other = ModelEntry::trained::<Noisy>("noisy");
        let e = loaded.config(&other).err().unwrap().to_string();
        assert!(e.contains("holds a `tiny-pop` run"), "{e}");

        // Without the dataset directory, the dataset is rebuilt from the split; a changed
        // dataset is refused.
        let mut changed = ds.clone();
        changed.name = "changed".into();
        changed.matrix = InteractionMatrix::from_rows(25, &vec![vec![0u32]; 40]);
        encore_data::cache::save(&changed, &data.join(encore_data::cache::FILE_NAME)).unwrap();
        let e = load(&dir).err().unwrap().to_string();
        assert!(e.contains("the dataset changed"), "{e}");
        std::fs::remove_dir_all(&data).unwrap();
        let rebuilt = load(&dir).unwrap();
        assert_eq!(rebuilt.dataset.name, "tiny");
        // (Its indices follow the order ids first appear in split/train.tsv.)
        assert_eq!(rebuilt.dataset.matrix.nnz(), ds.matrix.nnz());
        assert_eq!(rebuilt.split.train.nnz(), split.train.nnz());
        let e = load(tmp.path()).err().unwrap().to_string();
        assert!(e.contains("not a run directory"), "{e}");
    }

    /// `per_user_test.tsv` holds one row per evaluated test user whose values average to
    /// `metrics.json`'s; a `users` split also writes the held-out listeners folded in from
    /// 1, 3 and 5 items, each given at most that many items and the same users as the test.
    #[test]
    fn a_run_writes_per_user_metrics_and_the_foldin_table() {
        let entry = ModelEntry::closed_form::<TinyPop>("popularity, for tests");
        let ds = dataset();
        let split = Split::make(&ds, SplitKind::Users, 5).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let config = (entry.resolve)(None, &[], Some(5)).unwrap();
        create(&NewRun {
            dir: &dir,
            model: entry.name,
            config: config.as_ref(),
            dataset: &ds,
            data: None,
            split: &split,
            seed: 5,
            features: None,
        })
        .unwrap();
        let result = fit_and_evaluate(
            RunFit {
                dir: &dir,
                split: &split,
                config: config.as_ref(),
                conditioning: None,
                resume: false,
                ks: &[5, 10],
                user_ids: Some(&ds.users),
            },
            &|_| {},
        )
        .unwrap();
        let read = |name: &str| -> (Vec<String>, Vec<Vec<String>>) {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            let mut lines = text
                .lines()
                .map(|l| l.split('\t').map(String::from).collect());
            (lines.next().unwrap(), lines.collect())
        };
        let (header, rows) = read(PER_USER_FILE);
        assert_eq!(header[..2], ["user_id", "n_input"]);
        assert_eq!(rows.len(), result.test.n_evaluated);
        assert!(rows.len() >= 3, "{} test users", rows.len());
        let col = header.iter().position(|h| h == "ndcg@10").unwrap();
        let mean = rows
            .iter()
            .map(|r| r[col].parse::<f64>().unwrap())
            .sum::<f64>()
            / rows.len() as f64;
        assert!((mean - result.test.metrics["ndcg@10"]).abs() < 1e-12);
        let mut test_users = Vec::new();
        for r in &rows {
            let u = ds.users.get(&r[0]).unwrap() as usize;
            assert_eq!(r[1].parse::<usize>().unwrap(), split.input.row_len(u));
            test_users.push(r[0].clone());
        }

        let (header, rows) = read(FOLDIN_FILE);
        assert_eq!(header[..3], ["given", "user_id", "n_input"]);
        assert_eq!(rows.len(), FOLDIN_GIVEN.len() * test_users.len());
        for (block, &n) in rows.chunks(test_users.len()).zip(&FOLDIN_GIVEN) {
            for (r, user) in block.iter().zip(&test_users) {
                assert_eq!((r[0].parse::<usize>().unwrap(), &r[1]), (n, user));
                let u = ds.users.get(user).unwrap() as usize;
                let given = r[2].parse::<usize>().unwrap();
                assert_eq!(given, n.min(split.input.row_len(u)));
            }
        }
    }

    /// A trained model's run killed mid-training and resumed from its directory ends with
    /// the metrics of a run that was never interrupted.
    #[test]
    fn a_killed_run_resumes_from_its_directory_to_the_same_metrics() {
        let entry = ModelEntry::trained::<Noisy>("noisy popularity, for tests");
        let ds = dataset();
        let split = Split::make(&ds, SplitKind::Ratio, 7).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        encore_data::cache::save(&ds, &data.join(encore_data::cache::FILE_NAME)).unwrap();
        let config = (entry.resolve)(None, &[], Some(11)).unwrap();
        let run = |dir: &Path| {
            create(&NewRun {
                dir,
                model: entry.name,
                config: config.as_ref(),
                dataset: &ds,
                data: Some(&data),
                split: &split,
                seed: 11,
                features: None,
            })
            .unwrap();
            fit_and_evaluate(
                RunFit {
                    dir,
                    split: &split,
                    config: config.as_ref(),
                    conditioning: None,
                    resume: false,
                    ks: &[10],
                    user_ids: None,
                },
                &|_| {},
            )
        };
        let straight_dir = tmp.path().join("straight");
        let straight = run(&straight_dir).unwrap();
        assert_eq!(straight.metrics.epochs, Some(6));

        let killed_dir = tmp.path().join("killed");
        FAIL_AT.store(3, Ordering::SeqCst);
        let killed = run(&killed_dir);
        FAIL_AT.store(usize::MAX, Ordering::SeqCst);
        assert!(killed.is_err());
        assert!(!killed_dir.join(METRICS_FILE).exists());

        let loaded = load(&killed_dir).unwrap();
        let recorded = loaded.config(&entry).unwrap();
        let resumed = fit_and_evaluate(
            RunFit {
                dir: &killed_dir,
                split: &loaded.split,
                config: recorded.as_ref(),
                conditioning: None,
                resume: true,
                ks: &[10],
                user_ids: None,
            },
            &|_| {},
        )
        .unwrap();
        let (a, b) = (read_metrics(&straight_dir), read_metrics(&killed_dir));
        assert_eq!((a.valid, a.test), (b.valid, b.test));
        assert_eq!((a.best_epoch, a.epochs), (b.best_epoch, b.epochs));
        assert_eq!(resumed.test.metrics, straight.test.metrics);
    }
}
