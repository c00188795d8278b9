//! The run directory (SPEC §1): the unit of record of one training run.
//!
//! ```text
//! RUN/
//!   run.json       model, dataset (path, fingerprint), split info, seed, threads, versions
//!   config.toml    the fully resolved model + trainer config
//!   split/         train.tsv valid.tsv test.tsv [foldin.tsv] split.json
//!   model/         the best model's weights
//!   checkpoint/    the latest training state (resume), for trained models
//!   log.jsonl      one line per epoch, for trained models
//!   metrics.json   {"valid": {"ndcg@10": ..}, "test": {..}, ...}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use encore_data::split::SplitInfo;
use encore_data::{Dataset, Split};
use encore_eval::MetricReport;
use serde::{Deserialize, Serialize};

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub model: String,
    /// The prepared dataset directory, when the run used one.
    pub data: Option<PathBuf>,
    pub dataset_name: String,
    pub dataset_fingerprint: String,
    pub split: SplitInfo,
    pub seed: u64,
    pub threads: usize,
    pub encore_version: String,
    /// The feature tables a conditioned model's conditioning was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<crate::features::FeatureSources>,
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
    pub best_epoch: Option<usize>,
    pub epochs: Option<usize>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

impl RunMetrics {
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

/// Read a JSON file with an error naming it.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not the expected JSON", path.display()))
}

/// Create a fresh run directory with its record and split; refuses to overwrite a run.
pub fn create(dir: &Path, info: &RunInfo, dataset: &Dataset, split: &Split) -> Result<()> {
    if dir.join("run.json").exists() {
        bail!(
            "{}: already holds a run; choose another --out (or --resume to continue it)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    split.save_dir(&dir.join("split"), dataset, &info.split)?;
    Ok(encore_io::write_json(&dir.join("run.json"), info)?)
}

/// A run directory read back.
pub struct LoadedRun {
    pub info: RunInfo,
    pub dataset: Dataset,
    pub split: Split,
}

/// Load a run's record, its dataset (from the recorded data directory when it still exists,
/// else rebuilt from the saved split) and its split.
pub fn load(dir: &Path) -> Result<LoadedRun> {
    let info: RunInfo = read_json(&dir.join("run.json"))
        .with_context(|| format!("{} is not a run directory", dir.display()))?;
    let split_dir = dir.join("split");
    let from_data = match &info.data {
        Some(data) if data.join(crate::data::CACHE_FILE).exists() => {
            let ds = crate::data::load(data)?;
            if ds.fingerprint() != info.dataset_fingerprint {
                bail!(
                    "{}: the dataset changed since the run (fingerprint {} != {})",
                    data.display(),
                    ds.fingerprint(),
                    info.dataset_fingerprint
                );
            }
            Some(ds)
        }
        _ => None,
    };
    let loaded = Split::load_dir(&split_dir, from_data.as_ref())?;
    let dataset = match from_data {
        Some(ds) => ds,
        None => loaded.dataset(&info.dataset_name),
    };
    Ok(LoadedRun {
        info,
        dataset,
        split: loaded.split,
    })
}
