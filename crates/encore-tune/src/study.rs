//! The tuning directory: what a tune was asked to do, and every trial it finished.
//!
//! ```text
//! DIR/
//!   tune.json      the settings ([`TuneSettings`]): model, metric, seed, data, split, fixed
//!                  overrides, the search space; a later run on DIR must give the same ones
//!   trials.jsonl   one line per finished or failed trial ([`TrialRecord`]), appended and
//!                  fsynced as each trial ends
//!   trials/NNN/    each trial's run directory (written by the caller)
//!   trials.png     the objective per trial and the best so far ([`crate::plot`])
//!   best.toml      the best trial's resolved configuration (written by the caller)
//! ```
//!
//! # Continuing a tune
//!
//! [`Study::open`] on a directory that already holds a tune compares the settings with
//! `tune.json` (and refuses, naming each difference, when they differ), then reads the trials
//! back from `trials.jsonl`. The next trial is the first one without a line; since the
//! [sampler](crate::sampler) proposes from the recorded results alone, it is the trial the
//! uninterrupted tune would have run. A line cut short by a crash while it was being written
//! (no final newline) is dropped and the file truncated to its last whole line.
//!
//! Values go through JSON before the sampler sees them: [`Study::record`] keeps the record as
//! parsed back from the line it wrote, so that a continued tune and an uninterrupted one tell
//! TPE the very same numbers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sampler::Observation;
use crate::space::{Params, SearchSpace};
use crate::TuneError;

/// The settings (`tune.json`).
pub const SETTINGS_FILE: &str = "tune.json";
/// The trial log, one JSON line per trial.
pub const TRIALS_FILE: &str = "trials.jsonl";
/// The folder of the trials' run directories.
pub const TRIALS_DIR: &str = "trials";
/// The plot of the trials.
pub const PLOT_FILE: &str = "trials.png";
/// The best trial's configuration.
pub const BEST_FILE: &str = "best.toml";

/// What a tune was asked to do; a tune continues only under the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneSettings {
    /// The registry name of the model.
    pub model: String,
    /// The validation metric maximised (`ndcg@10`).
    pub metric: String,
    /// Seeds the proposals, and each trial's split, trainer and initialisation.
    pub seed: u64,
    /// Trials drawn at random before TPE takes over.
    pub startup_trials: usize,
    /// The prepared dataset directory (absolute), if any.
    pub data: Option<PathBuf>,
    /// The split protocol, when the split is made from `data`.
    pub split: Option<String>,
    /// The saved split directory (absolute), if any.
    pub split_dir: Option<PathBuf>,
    /// The fixed `--set` overrides, in order.
    pub sets: Vec<String>,
    /// Item feature tables of a conditioned model (absolute paths by name: `audio`, `lyrics`).
    pub features: BTreeMap<String, PathBuf>,
    /// The search space.
    pub space: SearchSpace,
}

impl TuneSettings {
    /// Each setting that differs from `recorded`, as `name: recorded X, given Y`; for the
    /// space, each key that differs.
    pub fn differences(&self, recorded: &TuneSettings) -> Vec<String> {
        let given = serde_json::to_value(self).expect("settings serialise");
        let old = serde_json::to_value(recorded).expect("settings serialise");
        let (given, old) = (given.as_object().unwrap(), old.as_object().unwrap());
        let mut out = Vec::new();
        for (name, g) in given {
            let r = &old[name];
            if g == r {
                continue;
            }
            if name == "space" {
                out.extend(space_differences(&recorded.space, &self.space));
            } else {
                out.push(format!("{name}: recorded {r}, given {g}"));
            }
        }
        out
    }
}

fn space_differences(recorded: &SearchSpace, given: &SearchSpace) -> Vec<String> {
    let json = |p: &crate::space::Param| serde_json::to_string(p).expect("params serialise");
    let mut out = Vec::new();
    for p in &given.params {
        match recorded.get(&p.key) {
            None => out.push(format!("space key `{}`: not in the recorded space", p.key)),
            Some(r) if r != p => out.push(format!(
                "space key `{}`: recorded {}, given {}",
                p.key,
                json(r),
                json(p)
            )),
            Some(_) => {}
        }
    }
    for r in &recorded.params {
        if given.get(&r.key).is_none() {
            out.push(format!(
                "space key `{}`: recorded, not in the given space",
                r.key
            ));
        }
    }
    out
}

/// One line of `trials.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// The trial number, from 0.
    pub trial: usize,
    /// The proposed values, by key.
    pub params: Params,
    /// The objective (the best model's validation metric); absent for a failed trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why the trial failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall-clock seconds of the trial in the process that finished it.
    pub seconds: f64,
    /// The trial's run directory, relative to the tuning directory.
    pub run_dir: PathBuf,
}

/// An open tuning directory.
#[derive(Debug)]
pub struct Study {
    dir: PathBuf,
    settings: TuneSettings,
    trials: Vec<TrialRecord>,
}

impl Study {
    /// Open the tune in `dir` under `settings`: a new one (the directory is created, or may
    /// exist empty) or the one recorded there, if its settings are the same.
    pub fn open(dir: &Path, settings: TuneSettings) -> Result<Study, TuneError> {
        let settings_path = dir.join(SETTINGS_FILE);
        if settings_path.exists() {
            let recorded: TuneSettings = encore_io::read_json(&settings_path)?;
            let differences = settings.differences(&recorded);
            if !differences.is_empty() {
                return Err(TuneError::SettingsDiffer {
                    dir: dir.to_path_buf(),
                    differences,
                });
            }
            let trials = read_trials(&dir.join(TRIALS_FILE))?;
            return Ok(Study {
                dir: dir.to_path_buf(),
                settings,
                trials,
            });
        }
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(|e| TuneError::io(dir, e))?;
            if entries.next().is_some() {
                return Err(TuneError::NotATune {
                    dir: dir.to_path_buf(),
                    message: format!(
                        "not empty and holds no {SETTINGS_FILE}, so it is not a tune to \
                         continue; choose another --out"
                    ),
                });
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| TuneError::io(dir, e))?;
        encore_io::write_json(&settings_path, &settings)?;
        Ok(Study {
            dir: dir.to_path_buf(),
            settings,
            trials: Vec::new(),
        })
    }

    /// The tuning directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn settings(&self) -> &TuneSettings {
        &self.settings
    }

    /// The finished trials, in order.
    pub fn trials(&self) -> &[TrialRecord] {
        &self.trials
    }

    /// The number of the next trial to run.
    pub fn next_trial(&self) -> usize {
        self.trials.len()
    }

    /// The finished trials as the sampler takes them.
    pub fn observations(&self) -> Vec<Observation<'_>> {
        self.trials
            .iter()
            .map(|t| Observation {
                params: &t.params,
                value: t.value,
            })
            .collect()
    }

    /// Trial `trial`'s run directory, relative to the tuning directory (`trials/007`).
    pub fn trial_run_dir(trial: usize) -> PathBuf {
        Path::new(TRIALS_DIR).join(format!("{trial:03}"))
    }

    /// Append `record` (the next trial) to `trials.jsonl` durably (one write, then fsync) and
    /// keep it as read back from the line.
    pub fn record(&mut self, record: &TrialRecord) -> Result<&TrialRecord, TuneError> {
        assert_eq!(
            record.trial,
            self.next_trial(),
            "trials are recorded in order"
        );
        let path = self.dir.join(TRIALS_FILE);
        let mut line = serde_json::to_string(record).map_err(|e| {
            TuneError::Io(encore_io::IoError::format(
                &path,
                format!("cannot write a trial: {e}"),
            ))
        })?;
        line.push('\n');
        let created = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TuneError::io(&path, e))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| TuneError::io(&path, e))?;
        if created {
            // The new file's name must survive a power cut too.
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| TuneError::io(&self.dir, e))?;
        }
        let parsed = parse_trial(&path, self.trials.len() + 1, line.trim_end())?;
        self.trials.push(parsed);
        Ok(self.trials.last().expect("just pushed"))
    }

    /// The best finished trial (the highest value; the earliest among equals).
    pub fn best(&self) -> Option<&TrialRecord> {
        self.ranked().into_iter().next()
    }

    /// The finished trials from best to worst (ties in trial order); failed ones left out.
    pub fn ranked(&self) -> Vec<&TrialRecord> {
        let mut done: Vec<&TrialRecord> = self
            .trials
            .iter()
            .filter(|t| t.value.is_some_and(f64::is_finite))
            .collect();
        done.sort_by(|a, b| b.value.unwrap().total_cmp(&a.value.unwrap()));
        done
    }
}

fn parse_trial(path: &Path, line: usize, text: &str) -> Result<TrialRecord, TuneError> {
    serde_json::from_str(text).map_err(|e| TuneError::Journal {
        path: path.to_path_buf(),
        line,
        message: format!("not a trial record: {e}"),
    })
}

/// Read `trials.jsonl` (none yet: no trials), dropping and truncating away a last line cut
/// short by a crash. The trials must be numbered 0, 1, 2, ... in order.
fn read_trials(path: &Path) -> Result<Vec<TrialRecord>, TuneError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TuneError::io(path, e)),
    };
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    if whole < text.len() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| TuneError::io(path, e))?;
        file.set_len(whole as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| TuneError::io(path, e))?;
    }
    let mut trials = Vec::new();
    for (i, line) in text[..whole].lines().enumerate() {
        let record = parse_trial(path, i + 1, line)?;
        if record.trial != trials.len() {
            return Err(TuneError::Journal {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!(
                    "expected trial {}, found trial {}",
                    trials.len(),
                    record.trial
                ),
            });
        }
        trials.push(record);
    }
    Ok(trials)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Value;

    fn settings() -> TuneSettings {
        TuneSettings {
            model: "ease".into(),
            metric: "ndcg@10".into(),
            seed: 1,
            startup_trials: 10,
            data: Some("/data/x".into()),
            split: Some("ratio".into()),
            split_dir: None,
            sets: vec![],
            features: BTreeMap::new(),
            space: SearchSpace::parse(
                "[reg_weight]\nkind = \"log_uniform\"\nlow = 10\nhigh = 1e4\n",
                "ease.toml",
            )
            .unwrap(),
        }
    }

    fn record(trial: usize, value: Option<f64>) -> TrialRecord {
        TrialRecord {
            trial,
            params: [(
                "reg_weight".to_string(),
                Value::Float(123.456 + trial as f64),
            )]
            .into(),
            value,
            error: value.is_none().then(|| "it failed".to_string()),
            seconds: 0.5,
            run_dir: Study::trial_run_dir(trial),
        }
    }

    #[test]
    fn records_trials_and_reads_them_back_after_a_torn_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tune");
        let mut study = Study::open(&dir, settings()).unwrap();
        study.record(&record(0, Some(0.25))).unwrap();
        study.record(&record(1, None)).unwrap();
        study.record(&record(2, Some(0.5))).unwrap();
        assert_eq!(study.best().unwrap().trial, 2);
        assert_eq!(study.ranked().len(), 2);
        // A crash while the next line was being written.
        let log = dir.join(TRIALS_FILE);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"trial\": 3, \"par").unwrap();
        drop(f);
        let again = Study::open(&dir, settings()).unwrap();
        assert_eq!(again.trials(), study.trials());
        assert_eq!(again.next_trial(), 3);
        assert!(std::fs::read_to_string(&log).unwrap().ends_with("}\n"));
        assert_eq!(Study::trial_run_dir(7), Path::new("trials/007"));
    }

    #[test]
    fn refuses_other_settings_naming_each_difference() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tune");
        Study::open(&dir, settings()).unwrap();
        let mut other = settings();
        other.seed = 2;
        other.metric = "recall@20".into();
        other.space = SearchSpace::parse(
            "[reg_weight]\nkind = \"log_uniform\"\nlow = 1\nhigh = 1e4\n",
            "ease.toml",
        )
        .unwrap();
        let err = Study::open(&dir, other).unwrap_err().to_string();
        assert!(
            err.contains("metric: recorded \"ndcg@10\", given \"recall@20\";"),
            "{err}"
        );
        assert!(err.contains("seed: recorded 1, given 2;"), "{err}");
        assert!(err.contains("space key `reg_weight`: recorded {"), "{err}");
        // A folder holding something else is not taken over.
        let busy = tmp.path().join("busy");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("x"), "x").unwrap();
        let err = Study::open(&busy, settings()).unwrap_err().to_string();
        assert!(err.contains("holds no tune.json"), "{err}");
    }

    #[test]
    fn a_malformed_line_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tune");
        let mut study = Study::open(&dir, settings()).unwrap();
        study.record(&record(0, Some(0.25))).unwrap();
        let log = dir.join(TRIALS_FILE);
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::write(&log, format!("{text}{text}")).unwrap();
        let err = Study::open(&dir, settings()).unwrap_err().to_string();
        assert!(
            err.ends_with("trials.jsonl:2: expected trial 1, found trial 0"),
            "{err}"
        );
    }
}
