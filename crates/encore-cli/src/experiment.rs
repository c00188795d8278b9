//! `encore experiment FILE.toml`: the paper's evaluation (SPEC §6) as one command. The file
//! names datasets, tables (one per research question) with their rows (a model and its
//! overrides), presets and seeds; every run is a normal run directory under the experiment's
//! folder, made by `encore train` in a child process (so that runs can go in parallel, each
//! with its share of the cores, and a failed or killed run cannot take the others down).
//!
//! ```text
//! OUT/
//!   plan.json        every run and table section, written before the first run
//!   data/<dataset>/  prepared datasets (`encore data import`), features/ (tag embeddings)
//!   tune/<..>/       `encore tune` folders of the rows marked `tuned`
//!   runs/<dataset>/<label>-s<seed>-<hash>/   run directories
//!   logs/<hash>.log  each child's output
//!   report/          report.md, results.csv, PNGs (`experiment_report`)
//! ```
//!
//! Resumable: a run whose `metrics.json` exists is reused (its folder name carries a hash of
//! everything that determines it: model, resolved configuration, dataset, split, feature
//! tables, seed), a run folder without one is continued with `train --resume`, and a failed
//! run is reported while the rest go on. Everything in the file (models, keys, values,
//! datasets, presets) is checked before anything runs; errors name the file, the line and the
//! key.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use encore_core::conditioning::ConditioningKind;
use encore_core::config::Preset;
use encore_core::run;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{models, progress};

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Examples:\n  encore experiment experiments/paper.toml --out runs/paper\n  encore experiment experiments/paper.toml --out runs/paper --only ml-100k --parallel 2\n  encore experiment experiments/paper.toml --out runs/paper --dry-run      # check the file, list the runs\n  encore experiment experiments/paper.toml --out runs/paper --report-only  # rebuild report/ from finished runs\n\nRe-running the same command continues a killed experiment: finished runs are reused, a\nhalf-done run is resumed, failed runs are tried again. Paths in the file are relative to it."
)]
pub struct ExperimentArgs {
    /// The experiment file (see experiments/paper.toml).
    pub file: PathBuf,
    /// The experiment's folder (default runs/experiment-<file stem>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs at once; the threads (--threads, default all cores) are divided evenly among
    /// them. Overrides the file's `parallel`.
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Only these datasets (comma-separated names from the file).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Check the file and list the runs; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the report from the runs that have finished; run nothing.
    #[arg(long, conflicts_with = "dry_run")]
    pub report_only: bool,
}

// ---------------------------------------------------------------------------------------------
// The file

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default = "default_seeds")]
    seeds: Spanned<Vec<u64>>,
    #[serde(default = "default_ks")]
    ks: Spanned<Vec<usize>>,
    /// The metric of the paired tests and the cold-start table.
    #[serde(default = "default_metric")]
    metric: Spanned<String>,
    #[serde(default)]
    parallel: Option<Spanned<usize>>,
    /// Trials of each `tuned` row's tuning.
    #[serde(default = "default_trials")]
    tune_trials: Spanned<usize>,
    /// `--set` overrides for every run.
    set: Option<Spanned<toml::Table>>,
    datasets: BTreeMap<String, Spanned<DatasetSpec>>,
    tables: Vec<Spanned<TableSpec>>,
}

fn default_seeds() -> Spanned<Vec<u64>> {
    Spanned::new(0..0, vec![2020, 2021, 2022])
}
fn default_ks() -> Spanned<Vec<usize>> {
    Spanned::new(0..0, vec![5, 10, 20])
}
fn default_metric() -> Spanned<String> {
    Spanned::new(0..0, "ndcg@10".into())
}
fn default_trials() -> Spanned<usize> {
    Spanned::new(0..0, 75)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetSpec {
    /// `encore data import` options: `format`, `input` and any of its flags
    /// (`min_user_interactions = 5` for `--min-user-interactions 5`).
    import: Option<ImportSpec>,
    /// An already prepared dataset folder (instead of `import`).
    data: Option<PathBuf>,
    /// The built-in synthetic world (`encore data synth`), imported 5-core; its audio and
    /// lyrics tables are the dataset's features unless `audio`/`lyrics` say otherwise.
    synth: Option<SynthSpec>,
    #[serde(default = "default_split")]
    split: Spanned<String>,
    lyrics: Option<FeatureSpec>,
    audio: Option<FeatureSpec>,
}

fn default_split() -> Spanned<String> {
    Spanned::new(0..0, "ratio".into())
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct ImportSpec {
    format: String,
    input: PathBuf,
    min_user_interactions: Option<usize>,
    min_item_interactions: Option<usize>,
    first_rows: Option<u64>,
    threshold: Option<f32>,
    delimiter: Option<String>,
    user_col: Option<String>,
    item_col: Option<String>,
    value_col: Option<String>,
    timestamp_col: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct SynthSpec {
    preset: String,
    seed: u64,
}

/// The synthetic world's presets (`encore data synth --preset`).
const SYNTH_PRESETS: [&str; 3] = ["tiny", "small", "onion"];

/// An item feature table: a file, or HetRec Last.fm tags embedded by a text encoder
/// (`encore features tags-text` then `embed-text`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum FeatureSpec {
    File(PathBuf),
    Tags { tags: PathBuf, encoder: PathBuf },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    id: String,
    title: String,
    /// Datasets the table runs on (default: all).
    #[serde(default)]
    datasets: Vec<Spanned<String>>,
    /// One section per preset (default: the models' own default preset).
    #[serde(default)]
    presets: Vec<Spanned<String>>,
    /// The row every other row is tested against.
    baseline: Option<Spanned<String>>,
    /// Columns (default ndcg, recall, mrr and hit at 10).
    #[serde(default)]
    metrics: Vec<Spanned<String>>,
    /// Learning curves of the rows (seed = the first seed), the paper's Figures 7-8.
    #[serde(default)]
    curves: bool,
    /// Metrics by the listeners' input size (and fold-in size on the `users` split).
    #[serde(default)]
    cold_start: bool,
    /// Also show the validation metric after these epochs (the "strong start" check).
    #[serde(default)]
    valid_at: Vec<usize>,
    rows: Vec<Spanned<RowSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RowSpec {
    label: String,
    model: String,
    #[serde(default)]
    set: toml::Table,
    /// Tune on the validation split (seed = the first seed), then run every seed with the
    /// best configuration.
    #[serde(default)]
    tuned: bool,
    /// Trials of this row's tuning (default: the file's `tune_trials`).
    trials: Option<usize>,
    /// The row this one is tested against, instead of the table's baseline (RQ3: each
    /// diffusion variant against its own VAE).
    baseline: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The plan

/// A prepared dataset, as the runs use it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PlanDataset {
    pub name: String,
    /// The prepared dataset folder.
    pub data: PathBuf,
    pub split: String,
    pub lyrics: Option<PathBuf>,
    pub audio: Option<PathBuf>,
}

/// One run of the experiment.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PlannedRun {
    /// The hash of everything that determines the run (16 hex digits).
    pub key: String,
    /// The run directory, relative to the experiment folder.
    pub dir: PathBuf,
    pub dataset: String,
    pub label: String,
    pub model: String,
    pub preset: Option<String>,
    pub seed: u64,
    /// `--set` overrides, in order (file, preset, row).
    pub sets: Vec<String>,
    /// The tuning folder (relative) whose `best.toml` the run trains with.
    pub tune: Option<PathBuf>,
    /// The feature tables the run needs (`--audio`, `--lyrics`).
    pub audio: Option<PathBuf>,
    pub lyrics: Option<PathBuf>,
}

/// One `encore tune` of a `tuned` row on one dataset.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PlannedTune {
    pub dir: PathBuf,
    pub dataset: String,
    pub label: String,
    pub model: String,
    pub seed: u64,
    pub sets: Vec<String>,
    pub trials: usize,
    pub audio: Option<PathBuf>,
    pub lyrics: Option<PathBuf>,
}

/// One table of the report: a table of the file on one dataset (and preset).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Section {
    pub table: String,
    pub title: String,
    pub dataset: String,
    pub split: String,
    pub preset: Option<String>,
    pub baseline: Option<String>,
    pub metrics: Vec<String>,
    pub curves: bool,
    pub cold_start: bool,
    pub valid_at: Vec<usize>,
    /// `(label, run keys, one per seed)`; rows the dataset cannot run are absent and listed
    /// in `notes`.
    pub rows: Vec<(String, Vec<String>)>,
    /// Rows tested against another row than the table's baseline: label -> that row's label.
    #[serde(default)]
    pub row_baselines: BTreeMap<String, String>,
    pub notes: Vec<String>,
}

/// The expanded experiment, written as `OUT/plan.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Plan {
    pub file: PathBuf,
    pub seeds: Vec<u64>,
    pub ks: Vec<usize>,
    pub metric: String,
    pub parallel: usize,
    pub datasets: BTreeMap<String, PlanDataset>,
    pub tunes: Vec<PlannedTune>,
    pub runs: Vec<PlannedRun>,
    pub sections: Vec<Section>,
}

pub const PLAN_FILE: &str = "plan.json";

/// A position in the file, for errors: `FILE line N`.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        msg: impl std::fmt::Display,
    ) -> Result<T> {
        if span.is_empty() && span.start == 0 {
            bail!("{}: `{key}`: {msg}", self.path.display());
        }
        bail!(
            "{} line {}: `{key}`: {msg}",
            self.path.display(),
            self.line(span)
        )
    }
}

/// A TOML table of overrides as `--set key=value` strings (nested tables become dotted keys).
fn set_strings(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => set_strings(t, &key, out),
            other => out.push(format!("{key}={other}")),
        }
    }
}

/// A lowercase file-name-safe form of a label.
fn slug(label: &str) -> String {
    let mut s = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').to_string()
}

fn hash16(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

/// Read, check and expand the experiment file. Every model, key and value is resolved here,
/// before anything runs. `out` is the experiment folder (the plan's paths are relative to it;
/// the file's own paths are made absolute).
pub fn plan(file: &Path, only: &[String]) -> Result<Plan> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the experiment file {}", file.display()))?;
    let spec: FileSpec = toml::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: {}",
            file.display(),
            e.to_string().trim_end().replace('\n', "\n  ")
        )
    })?;
    let src = Source {
        path: file,
        text: &text,
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let abs = |p: &Path| -> PathBuf {
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        std::fs::canonicalize(&joined).unwrap_or(joined)
    };
    if spec.seeds.get_ref().is_empty() {
        return src.err(spec.seeds.span(), "seeds", "expected at least one seed");
    }
    if spec.ks.get_ref().is_empty() || spec.ks.get_ref().contains(&0) {
        return src.err(spec.ks.span(), "ks", "expected a list of positive cut-offs");
    }
    let metric = spec.metric.get_ref().clone();
    match metric.split_once('@').map(|(_, k)| k.parse::<usize>()) {
        Some(Ok(k)) if spec.ks.get_ref().contains(&k) => {}
        _ => {
            return src.err(
                spec.metric.span(),
                "metric",
                format!(
                    "expected `name@k` with k among ks {:?}, got `{metric}`",
                    spec.ks.get_ref()
                ),
            )
        }
    }
    if let Some(p) = &spec.parallel {
        if *p.get_ref() == 0 {
            return src.err(p.span(), "parallel", "expected at least 1");
        }
    }
    if *spec.tune_trials.get_ref() == 0 {
        return src.err(
            spec.tune_trials.span(),
            "tune_trials",
            "expected at least 1",
        );
    }
    for name in only {
        if !spec.datasets.contains_key(name) {
            bail!(
                "--only: no dataset `{name}` in {} (it has {:?})",
                file.display(),
                spec.datasets.keys().collect::<Vec<_>>()
            );
        }
    }
    let mut global_sets = Vec::new();
    if let Some(set) = &spec.set {
        set_strings(set.get_ref(), "", &mut global_sets);
    }
    let set_span = spec.set.as_ref().map_or(0..0, |s| s.span());

    let mut datasets = BTreeMap::new();
    for (name, d) in &spec.datasets {
        let span = d.span();
        let d = d.get_ref();
        let key = format!("datasets.{name}");
        let sources = [d.import.is_some(), d.data.is_some(), d.synth.is_some()];
        if sources.iter().filter(|&&x| x).count() != 1 {
            return src.err(
                span,
                &key,
                "expected exactly one of `import = { format, input }`, `data = \"prepared folder\"` \
                 and `synth = { preset, seed }`",
            );
        }
        if let Some(synth) = &d.synth {
            if !SYNTH_PRESETS.contains(&synth.preset.as_str()) {
                return src.err(
                    span,
                    &format!("{key}.synth.preset"),
                    format!(
                        "unknown preset `{}`, expected one of {SYNTH_PRESETS:?}",
                        synth.preset
                    ),
                );
            }
        }
        let data = match (&d.import, &d.data) {
            (None, None) | (Some(_), Some(_)) => PathBuf::from("data").join(name),
            (Some(imp), None) => {
                if !abs(&imp.input).exists() && (only.is_empty() || only.contains(name)) {
                    return src.err(
                        span,
                        &format!("{key}.import.input"),
                        format!("{} does not exist", abs(&imp.input).display()),
                    );
                }
                PathBuf::from("data").join(name)
            }
            (None, Some(p)) => abs(p),
        };
        d.split
            .get_ref()
            .parse::<encore_data::SplitKind>()
            .or_else(|e| src.err(d.split.span(), &format!("{key}.split"), e))?;
        let feature = |f: &Option<FeatureSpec>, kind: &str| -> Option<PathBuf> {
            match f {
                Some(FeatureSpec::File(p)) => Some(abs(p)),
                Some(FeatureSpec::Tags { .. }) => {
                    Some(PathBuf::from("features").join(format!("{name}-{kind}.tsv")))
                }
                // The synthetic world's own tables (relative to the experiment folder).
                None if d.synth.is_some() => {
                    Some(PathBuf::from("world").join(name).join(if kind == "audio" {
                        "id_ivec512.tsv"
                    } else {
                        "id_lyrics_bert.tsv"
                    }))
                }
                None => None,
            }
        };
        datasets.insert(
            name.clone(),
            PlanDataset {
                name: name.clone(),
                data,
                split: d.split.get_ref().clone(),
                lyrics: feature(&d.lyrics, "lyrics"),
                audio: feature(&d.audio, "audio"),
            },
        );
    }

    let seeds = spec.seeds.get_ref().clone();
    let mut runs: BTreeMap<String, PlannedRun> = BTreeMap::new();
    let mut tunes: BTreeMap<PathBuf, PlannedTune> = BTreeMap::new();
    let mut sections = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    let mut global_used = std::collections::BTreeSet::new();
    for (ti, table) in spec.tables.iter().enumerate() {
        let tspan = table.span();
        let t = table.get_ref();
        let tkey = format!("tables[{ti}]");
        if !ids.insert(t.id.clone()) {
            return src.err(
                tspan,
                &format!("{tkey}.id"),
                format!("`{}` is used by another table", t.id),
            );
        }
        if t.rows.is_empty() {
            return src.err(tspan, &format!("{tkey}.rows"), "expected at least one row");
        }
        let mut labels = std::collections::BTreeSet::new();
        for r in &t.rows {
            if !labels.insert(r.get_ref().label.clone()) {
                return src.err(
                    r.span(),
                    &format!("{tkey}.rows.label"),
                    format!("`{}` appears twice in the table", r.get_ref().label),
                );
            }
        }
        for r in &t.rows {
            if let Some(b) = &r.get_ref().baseline {
                if !labels.contains(b) || b == &r.get_ref().label {
                    return src.err(
                        r.span(),
                        &format!("{tkey}.rows[{}].baseline", r.get_ref().label),
                        format!("`{b}` is not another row label of the table ({labels:?})"),
                    );
                }
            }
        }
        if let Some(b) = &t.baseline {
            if !labels.contains(b.get_ref()) {
                return src.err(
                    b.span(),
                    &format!("{tkey}.baseline"),
                    format!(
                        "`{}` is not a row label of the table ({labels:?})",
                        b.get_ref()
                    ),
                );
            }
        }
        let mut metrics = Vec::new();
        for m in &t.metrics {
            let ok = m
                .get_ref()
                .split_once('@')
                .and_then(|(_, k)| k.parse::<usize>().ok())
                .is_some_and(|k| spec.ks.get_ref().contains(&k));
            if !ok {
                return src.err(
                    m.span(),
                    &format!("{tkey}.metrics"),
                    format!(
                        "expected `name@k` with k among ks {:?}, got `{}`",
                        spec.ks.get_ref(),
                        m.get_ref()
                    ),
                );
            }
            metrics.push(m.get_ref().clone());
        }
        if metrics.is_empty() {
            let k = if spec.ks.get_ref().contains(&10) {
                10
            } else {
                spec.ks.get_ref()[0]
            };
            metrics = ["ndcg", "recall", "mrr", "hit"]
                .iter()
                .map(|m| format!("{m}@{k}"))
                .collect();
        }
        let mut table_datasets = Vec::new();
        for d in &t.datasets {
            if !spec.datasets.contains_key(d.get_ref()) {
                return src.err(
                    d.span(),
                    &format!("{tkey}.datasets"),
                    format!(
                        "no dataset `{}` in [datasets] ({:?})",
                        d.get_ref(),
                        spec.datasets.keys().collect::<Vec<_>>()
                    ),
                );
            }
            table_datasets.push(d.get_ref().clone());
        }
        if table_datasets.is_empty() {
            table_datasets = spec.datasets.keys().cloned().collect();
        }
        let mut presets: Vec<Option<String>> = Vec::new();
        for p in &t.presets {
            if Preset::from_name(p.get_ref()).is_none() {
                let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
                return src.err(
                    p.span(),
                    &format!("{tkey}.presets"),
                    format!(
                        "unknown preset `{}`, expected one of {names:?}",
                        p.get_ref()
                    ),
                );
            }
            presets.push(Some(p.get_ref().clone()));
        }
        if presets.is_empty() {
            presets.push(None);
        }
        for dname in &table_datasets {
            let ds = &datasets[dname];
            for preset in &presets {
                let mut section = Section {
                    table: t.id.clone(),
                    title: t.title.clone(),
                    dataset: dname.clone(),
                    split: ds.split.clone(),
                    preset: preset.clone(),
                    baseline: t.baseline.as_ref().map(|b| b.get_ref().clone()),
                    metrics: metrics.clone(),
                    curves: t.curves,
                    cold_start: t.cold_start,
                    valid_at: t.valid_at.clone(),
                    rows: Vec::new(),
                    row_baselines: t
                        .rows
                        .iter()
                        .filter_map(|r| {
                            let r = r.get_ref();
                            Some((r.label.clone(), r.baseline.clone()?))
                        })
                        .collect(),
                    notes: Vec::new(),
                };
                for row in &t.rows {
                    let rspan = row.span();
                    let r = row.get_ref();
                    let rkey = format!("{tkey}.rows[{}]", r.label);
                    let entry = models::find(&r.model)
                        .or_else(|e| src.err(rspan.clone(), &format!("{rkey}.model"), e))?;
                    // The file's `set` and the preset apply to the models that have those
                    // keys (Pop has no configuration; closed-form models no `train.*`).
                    let accepts =
                        |set: &str| (entry.resolve)(None, &[set.to_string()], None).is_ok();
                    let mut sets: Vec<String> =
                        global_sets.iter().filter(|s| accepts(s)).cloned().collect();
                    for s in &global_sets {
                        if accepts(s) {
                            global_used.insert(s.clone());
                        }
                    }
                    if let Some(p) = preset {
                        let set = format!("preset=\"{p}\"");
                        if accepts(&set) {
                            sets.push(set);
                        }
                    }
                    set_strings(&r.set, "", &mut sets);
                    let mut keys = Vec::new();
                    let mut needs = None;
                    for &seed in &seeds {
                        let config = (entry.resolve)(None, &sets, Some(seed))
                            .or_else(|e| src.err(rspan.clone(), &format!("{rkey}.set"), e))?;
                        let resolved = config
                            .to_toml()
                            .or_else(|e| src.err(rspan.clone(), &rkey, e))?;
                        needs = config.conditioning().map(|(kind, _)| kind);
                        let (audio, lyrics) = match needs {
                            None | Some(ConditioningKind::None) => (None, None),
                            Some(ConditioningKind::Audio) => (ds.audio.clone(), None),
                            Some(ConditioningKind::Lyrics) => (None, ds.lyrics.clone()),
                            Some(_) => (ds.audio.clone(), ds.lyrics.clone()),
                        };
                        let missing = match needs {
                            Some(ConditioningKind::Audio) => audio.is_none(),
                            Some(ConditioningKind::Lyrics) => lyrics.is_none(),
                            Some(ConditioningKind::Concat | ConditioningKind::Tensor) => {
                                audio.is_none() || lyrics.is_none()
                            }
                            _ => false,
                        };
                        if missing {
                            keys.clear();
                            break;
                        }
                        let trials = r.trials.unwrap_or(*spec.tune_trials.get_ref());
                        if trials == 0 {
                            return src.err(
                                rspan.clone(),
                                &format!("{rkey}.trials"),
                                "expected at least 1",
                            );
                        }
                        let tune = r.tuned.then(|| {
                            let id = hash16(&format!(
                                "tune|{}|{}|{}|{:?}|{}|{trials}|{:?}|{:?}",
                                r.model, dname, ds.split, sets, seeds[0], audio, lyrics
                            ));
                            PathBuf::from("tune").join(format!(
                                "{dname}-{}-{}",
                                slug(&r.label),
                                &id[..8]
                            ))
                        });
                        let identity = match &tune {
                            // A tuned run is determined by its tuning and its seed.
                            Some(dir) => format!("tuned|{}|{}|{seed}", r.model, dir.display()),
                            None => format!("{}|{resolved}", r.model),
                        };
                        let key = hash16(&format!(
                            "{identity}|{dname}|{:?}|{}|{seed}|{:?}|{:?}|{:?}",
                            ds.data,
                            ds.split,
                            spec.ks.get_ref(),
                            audio,
                            lyrics
                        ));
                        if let Some(dir) = &tune {
                            tunes.entry(dir.clone()).or_insert_with(|| PlannedTune {
                                dir: dir.clone(),
                                dataset: dname.clone(),
                                label: r.label.clone(),
                                model: r.model.clone(),
                                seed: seeds[0],
                                sets: sets.clone(),
                                trials,
                                audio: audio.clone(),
                                lyrics: lyrics.clone(),
                            });
                        }
                        runs.entry(key.clone()).or_insert_with(|| PlannedRun {
                            key: key.clone(),
                            dir: PathBuf::from("runs").join(dname).join(format!(
                                "{}-s{seed}-{}",
                                slug(&r.label),
                                &key[..8]
                            )),
                            dataset: dname.clone(),
                            label: r.label.clone(),
                            model: r.model.clone(),
                            preset: preset.clone(),
                            seed,
                            sets: sets.clone(),
                            tune,
                            audio,
                            lyrics,
                        });
                        keys.push(key);
                    }
                    if keys.is_empty() {
                        let kind = needs.unwrap_or_default();
                        let lacks = match kind {
                            ConditioningKind::Audio => "audio features",
                            ConditioningKind::Lyrics => "lyrics (text) features",
                            _ if ds.audio.is_none() && ds.lyrics.is_none() => {
                                "audio or lyrics features"
                            }
                            _ if ds.audio.is_none() => "audio features",
                            _ => "lyrics (text) features",
                        };
                        section.notes.push(format!(
                            "{}: {dname} has no {lacks}, which `{}` conditioning needs: not run",
                            r.label,
                            kind.name(),
                        ));
                    } else {
                        section.rows.push((r.label.clone(), keys));
                    }
                }
                if !only.is_empty() && !only.contains(dname) {
                    continue;
                }
                sections.push(section);
            }
        }
    }
    for set in &global_sets {
        if !global_used.contains(set) {
            let model = spec
                .tables
                .iter()
                .flat_map(|t| &t.get_ref().rows)
                .map(|r| r.get_ref().model.clone())
                .find(|m| m != "pop")
                .unwrap_or_else(|| "multivae".into());
            let e = models::find(&model).and_then(|entry| {
                (entry.resolve)(None, std::slice::from_ref(set), None)
                    .map(|_| ())
                    .map_err(Into::into)
            });
            let why = e.err().map(|e| format!(": {e}")).unwrap_or_default();
            return src.err(
                set_span,
                &format!("set.{}", set.split('=').next().unwrap_or(set)),
                format!("no model of the file accepts `{set}`{why}"),
            );
        }
    }
    let used: std::collections::BTreeSet<&String> = sections.iter().map(|s| &s.dataset).collect();
    let runs: Vec<PlannedRun> = runs
        .into_values()
        .filter(|r| used.contains(&r.dataset))
        .collect();
    let tunes: Vec<PlannedTune> = tunes
        .into_values()
        .filter(|t| used.contains(&t.dataset))
        .collect();
    Ok(Plan {
        file: abs(file.file_name().map(Path::new).unwrap_or(file)),
        seeds,
        ks: spec.ks.get_ref().clone(),
        metric,
        parallel: spec.parallel.as_ref().map_or(1, |p| *p.get_ref()),
        datasets: datasets
            .into_iter()
            .filter(|(n, _)| used.contains(n))
            .collect(),
        tunes,
        runs,
        sections,
    })
}

/// The specs of the datasets to prepare, re-read from the file (the plan keeps only where
/// each ends up).
fn dataset_specs(file: &Path) -> Result<BTreeMap<String, DatasetSpec>> {
    let text = std::fs::read_to_string(file)?;
    let spec: FileSpec = toml::from_str(&text)?;
    Ok(spec
        .datasets
        .into_iter()
        .map(|(k, v)| (k, v.into_inner()))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Running

/// Run `encore ARGS` as a child with its output in `log`; an error names the log.
fn child(args: &[String], log: &Path) -> Result<()> {
    // On Linux the children run this very binary through /proc/self/exe, even when the file
    // on disk has been replaced by a new build since the experiment started.
    let proc_exe = Path::new("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe().context("locating the encore binary")?
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(exe);
    #[cfg(unix)]
    {
        // `ps` shows `encore train ...`, not `/proc/self/exe train ...`.
        use std::os::unix::process::CommandExt;
        command.arg0("encore");
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    die_with_parent(&mut command);
    let status = command.status().context("starting encore")?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{} (log: {})", tail.join(" | "), log.display());
    }
    Ok(())
}

/// Make the child die with the experiment (Linux: `PR_SET_PDEATHSIG`): a killed experiment
/// must not leave a run going on in the background, which its next invocation would race
/// (the run would be continued twice at once).
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Import the datasets and build the feature tables the plan needs (each once; kept).
fn prepare_datasets(plan: &Plan, file: &Path, out: &Path) -> Result<()> {
    let specs = dataset_specs(file)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    for (name, ds) in &plan.datasets {
        let spec = &specs[name];
        let data = out.join(&ds.data);
        if let Some(synth) = &spec.synth {
            if !data.join(encore_data::cache::FILE_NAME).exists() {
                eprintln!("generating the synthetic world {name} ...");
                let world = out.join("world").join(name);
                if world.exists() {
                    // A generation cut short: `data synth` wants a new folder.
                    std::fs::remove_dir_all(&world)
                        .with_context(|| format!("removing {}", world.display()))?;
                }
                let log = out.join("logs").join(format!("synth-{name}.log"));
                child(
                    &[
                        "data".into(),
                        "synth".into(),
                        "--preset".into(),
                        synth.preset.clone(),
                        "--seed".into(),
                        synth.seed.to_string(),
                        "--out".into(),
                        path_arg(&world),
                    ],
                    &log,
                )?;
                child(
                    &[
                        "data".into(),
                        "import".into(),
                        "--format".into(),
                        "onion".into(),
                        "--input".into(),
                        path_arg(&world),
                        "--min-user-interactions".into(),
                        "5".into(),
                        "--min-item-interactions".into(),
                        "5".into(),
                        "--out".into(),
                        path_arg(&data),
                    ],
                    &log,
                )?;
            }
        }
        if let Some(imp) = &spec.import {
            if !data.join(encore_data::cache::FILE_NAME).exists() {
                eprintln!("importing {name} ...");
                let mut args = vec![
                    "data".into(),
                    "import".into(),
                    "--format".into(),
                    imp.format.clone(),
                    "--input".into(),
                    path_arg(&abs(&imp.input)),
                    "--out".into(),
                    path_arg(&data),
                ];
                let table = toml::Table::try_from(imp)?;
                for (k, v) in &table {
                    if k == "format" || k == "input" {
                        continue;
                    }
                    args.push(format!("--{}", k.replace('_', "-")));
                    args.push(match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                }
                child(&args, &out.join("logs").join(format!("import-{name}.log")))
                    .with_context(|| format!("importing dataset `{name}`"))?;
            }
        }
        for (kind, f) in [("lyrics", &spec.lyrics), ("audio", &spec.audio)] {
            let Some(FeatureSpec::Tags { tags, encoder }) = f else {
                continue;
            };
            let target = out.join("features").join(format!("{name}-{kind}.tsv"));
            if target.exists() {
                continue;
            }
            eprintln!("embedding the tags of {name} ({kind}) ...");
            std::fs::create_dir_all(out.join("features"))
                .with_context(|| format!("creating {}", out.join("features").display()))?;
            let texts = out
                .join("features")
                .join(format!("{name}-{kind}-texts.tsv"));
            let log = out.join("logs").join(format!("features-{name}-{kind}.log"));
            child(
                &[
                    "features".into(),
                    "tags-text".into(),
                    "--input".into(),
                    path_arg(&abs(tags)),
                    "--data".into(),
                    path_arg(&data),
                    "--out".into(),
                    path_arg(&texts),
                ],
                &log,
            )?;
            child(
                &[
                    "features".into(),
                    "embed-text".into(),
                    "--model".into(),
                    path_arg(&abs(encoder)),
                    "--texts".into(),
                    path_arg(&texts),
                    "--out".into(),
                    path_arg(&target),
                ],
                &log,
            )?;
        }
    }
    Ok(())
}

/// The train (or tune) arguments shared by a run and a tuning: data, split, features, sets.
fn common_args(
    plan: &Plan,
    out: &Path,
    dataset: &str,
    sets: &[String],
    audio: &Option<PathBuf>,
    lyrics: &Option<PathBuf>,
) -> Vec<String> {
    let ds = &plan.datasets[dataset];
    let mut args = vec![
        "--data".into(),
        path_arg(&out.join(&ds.data)),
        "--split".into(),
        ds.split.clone(),
    ];
    for (flag, p) in [("--audio", audio), ("--lyrics", lyrics)] {
        if let Some(p) = p {
            args.push(flag.into());
            args.push(path_arg(&out.join(p)));
        }
    }
    args.into_iter()
        .chain(sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]))
        .collect()
}

fn run_args(plan: &Plan, out: &Path, r: &PlannedRun, threads: usize) -> Vec<String> {
    let dir = out.join(&r.dir);
    let mut args = vec![
        "--threads".into(),
        threads.to_string(),
        "train".into(),
        "--model".into(),
        r.model.clone(),
        "--seed".into(),
        r.seed.to_string(),
        "--k".into(),
        plan.ks
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(","),
        "--out".into(),
        path_arg(&dir),
    ];
    let sets: &[String] = match &r.tune {
        // The tuned configuration already holds the row's overrides.
        Some(t) => {
            args.push("--config".into());
            args.push(path_arg(&out.join(t).join("best.toml")));
            &[]
        }
        None => &r.sets,
    };
    args.extend(common_args(
        plan, out, &r.dataset, sets, &r.audio, &r.lyrics,
    ));
    if dir.join(run::RUN_FILE).exists() && dir.join(run::CONFIG_FILE).exists() {
        args.push("--resume".into());
    } else if dir.exists() {
        // Killed while the run directory was being created: nothing in it to continue.
        let _ = std::fs::remove_dir_all(&dir);
    }
    args
}

fn tune_args(plan: &Plan, out: &Path, t: &PlannedTune, threads: usize) -> Vec<String> {
    let mut args = vec![
        "--threads".into(),
        threads.to_string(),
        "tune".into(),
        "--model".into(),
        t.model.clone(),
        "--seed".into(),
        t.seed.to_string(),
        "--trials".into(),
        t.trials.to_string(),
        "--metric".into(),
        plan.metric.clone(),
        "--out".into(),
        path_arg(&out.join(&t.dir)),
    ];
    args.extend(common_args(
        plan, out, &t.dataset, &t.sets, &t.audio, &t.lyrics,
    ));
    args
}

/// The trials' seconds in a tuning's `trials.jsonl` (0 when unreadable).
fn tune_seconds(path: &Path) -> f64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seconds"].as_f64())
        .sum()
}

/// Point each planned run whose folder does not exist at a folder of the same dataset that
/// ends with the same hash (`<label>-s<seed>-<hash8>`), when there is one.
fn adopt_existing_dirs(plan: &mut Plan, out: &Path) {
    for r in &mut plan.runs {
        if out.join(&r.dir).exists() {
            continue;
        }
        let parent = r.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let suffix = format!("-s{}-{}", r.seed, &r.key[..8]);
        let Ok(entries) = std::fs::read_dir(out.join(&parent)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(&suffix))
            .map(|n| parent.join(n))
            .filter(|d| out.join(d).join(run::RUN_FILE).exists())
            .collect();
        found.sort();
        if let Some(d) = found.into_iter().next() {
            r.dir = d;
        }
    }
}

/// Whether a run has finished.
pub fn finished(out: &Path, r: &PlannedRun) -> bool {
    out.join(&r.dir).join(run::METRICS_FILE).exists()
}

/// One job of the experiment's pool.
enum Job<'a> {
    Tune(&'a PlannedTune),
    Run(&'a PlannedRun),
}

impl Job<'_> {
    fn name(&self) -> String {
        match self {
            Job::Tune(t) => format!("tune {} on {}", t.label, t.dataset),
            Job::Run(r) => format!("{} on {} seed {}", r.label, r.dataset, r.seed),
        }
    }
}

/// Run `jobs` on `parallel` workers, in order, except that a run of a tuned row waits for its
/// tuning (the other workers go on with what is ready meanwhile); each job's error is
/// collected and the rest go on.
fn run_pool(
    jobs: Vec<Job<'_>>,
    parallel: usize,
    bar: &indicatif::ProgressBar,
    work: impl Fn(&Job<'_>) -> Result<()> + Sync,
) -> Vec<(String, String)> {
    let n_workers = parallel.max(1).min(jobs.len().max(1));
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<_>>());
    // Tunings not finished yet (their runs wait).
    let pending_tunes = Mutex::new(
        queue
            .lock()
            .unwrap()
            .iter()
            .filter_map(|j| match j {
                Job::Tune(t) => Some(t.dir.clone()),
                Job::Run(_) => None,
            })
            .collect::<std::collections::BTreeSet<PathBuf>>(),
    );
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n_workers {
            s.spawn(|| loop {
                let job = {
                    let mut q = queue.lock().unwrap();
                    if q.is_empty() {
                        break;
                    }
                    let waiting = pending_tunes.lock().unwrap();
                    let ready = q.iter().position(|j| match j {
                        Job::Tune(_) => true,
                        Job::Run(r) => r.tune.as_ref().is_none_or(|t| !waiting.contains(t)),
                    });
                    ready.and_then(|i| q.remove(i))
                };
                let Some(job) = job else {
                    // Everything left waits for a tuning another worker is doing.
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    continue;
                };
                let name = job.name();
                bar.set_message(name.clone());
                let started = Instant::now();
                let result = work(&job);
                if let Job::Tune(t) = &job {
                    pending_tunes.lock().unwrap().remove(&t.dir);
                }
                bar.inc(1);
                if let Err(e) = &result {
                    bar.println(format!("failed: {name}: {e:#}"));
                    failures.lock().unwrap().push((name, format!("{e:#}")));
                } else if bar.is_hidden() {
                    // No bar (output to a file or pipe): one line per job instead.
                    println!(
                        "[{}/{}] {name} done in {:.1} s",
                        bar.position(),
                        bar.length().unwrap_or(0),
                        started.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    let plan_started = Instant::now();
    let mut plan = plan(&args.file, &args.only)?;
    if let Some(p) = args.parallel {
        if p == 0 {
            bail!("--parallel: expected at least 1");
        }
        plan.parallel = p;
    }
    let stem = args
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "experiment".into());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("experiment-{stem}")));
    // A run is found by its hash: the same run made under another row's label (the first
    // table that names a run gives its folder its label) is reused where it is.
    adopt_existing_dirs(&mut plan, &out);
    // Runs go in the order of the tables and their rows (the first tables fill first).
    let mut order: Vec<&str> = Vec::new();
    for s in &plan.sections {
        for (_, keys) in &s.rows {
            for k in keys {
                if !order.contains(&k.as_str()) {
                    order.push(k);
                }
            }
        }
    }
    let by_key: BTreeMap<&str, &PlannedRun> =
        plan.runs.iter().map(|r| (r.key.as_str(), r)).collect();
    let pending: Vec<&PlannedRun> = order
        .iter()
        .map(|k| by_key[k])
        .filter(|r| !finished(&out, r))
        .collect();
    println!(
        "{}: {} tables on {} datasets, {} seeds: {} runs ({} finished), {} tunings",
        args.file.display(),
        plan.sections.len(),
        plan.datasets.len(),
        plan.seeds.len(),
        plan.runs.len(),
        plan.runs.len() - pending.len(),
        plan.tunes.len()
    );
    if args.dry_run {
        for r in &plan.runs {
            let state = if finished(&out, r) {
                "finished"
            } else {
                "to run"
            };
            println!(
                "  {:<10} {:<24} seed {}  {}  ({state})",
                r.dataset,
                r.label,
                r.seed,
                r.dir.display()
            );
        }
        for s in &plan.sections {
            for n in &s.notes {
                println!("  note: {} on {}: {n}", s.table, s.dataset);
            }
        }
        return Ok(());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    encore_io::write_json(&out.join(PLAN_FILE), &plan)?;
    let mut failures = Vec::new();
    let mut bookkeeping = plan_started.elapsed().as_secs_f64();
    let mut ran_tunes: Vec<&PlannedTune> = Vec::new();
    if !args.report_only {
        prepare_datasets(&plan, &args.file, &out)?;
        let total = rayon::current_num_threads().max(1);
        let parallel = plan.parallel.min(total);
        let threads = (total / parallel).max(1);
        println!("{parallel} run(s) at once, {threads} thread(s) each");
        let tunes: Vec<&PlannedTune> = plan
            .tunes
            .iter()
            .filter(|t| {
                !out.join(&t.dir).join("best.toml").exists()
                    || plan
                        .runs
                        .iter()
                        .any(|r| r.tune.as_ref() == Some(&t.dir) && !finished(&out, r))
            })
            .collect();
        ran_tunes = tunes.clone();
        let bar = progress::bar((tunes.len() + pending.len()) as u64, "experiment");
        let jobs: Vec<Job<'_>> = tunes
            .iter()
            .map(|t| Job::Tune(t))
            .chain(pending.iter().map(|r| Job::Run(r)))
            .collect();
        failures.extend(run_pool(jobs, parallel, &bar, |job| match job {
            Job::Tune(t) => child(
                &tune_args(&plan, &out, t, threads),
                &out.join("logs")
                    .join(format!("tune-{}.log", slug(&t.dir.to_string_lossy()))),
            ),
            Job::Run(r) => {
                if let Some(t) = &r.tune {
                    if !out.join(t).join("best.toml").exists() {
                        bail!("its tuning ({}) has no best.toml", t.display());
                    }
                }
                child(
                    &run_args(&plan, &out, r, threads),
                    &out.join("logs").join(format!("{}.log", r.key)),
                )
            }
        }));
        bar.finish_and_clear();
    }
    let report_started = Instant::now();
    let summary = crate::experiment_report::write(&out, &plan)?;
    bookkeeping += report_started.elapsed().as_secs_f64();
    println!("{}", summary.text);
    let done = plan.runs.iter().filter(|r| finished(&out, r)).count();
    println!(
        "{done} of {} runs finished; report in {}",
        plan.runs.len(),
        out.join("report").display()
    );
    // What this invocation ran, against what it spent around the runs.
    let wall = plan_started.elapsed().as_secs_f64();
    let mut ran = 0.0;
    let mut n_ran = 0;
    if !args.report_only {
        for r in pending.iter().filter(|r| finished(&out, r)) {
            let m: run::RunMetrics =
                encore_io::read_json(&out.join(&r.dir).join(run::METRICS_FILE))?;
            ran += m.train_seconds + m.eval_seconds;
            n_ran += 1;
        }
        for t in &ran_tunes {
            ran += tune_seconds(&out.join(&t.dir).join("trials.jsonl"));
        }
    }
    let rest = if plan.parallel > 1 {
        // Several runs at once: their own times overlap in the wall time.
        format!("{} runs at a time", plan.parallel)
    } else {
        format!(
            "the rest, {:.1} s, is each child's start-up, data loading and split writing",
            (wall - ran - bookkeeping).max(0.0)
        )
    };
    if n_ran == 0 && ran == 0.0 {
        println!("nothing left to run; plan and report written in {bookkeeping:.2} s");
    } else {
        println!(
        "this invocation: {wall:.1} s wall; {n_ran} runs and {} tunings made: {ran:.1} s of training and evaluation; \
         bookkeeping (plan, report, plots) {bookkeeping:.2} s ({:.2}% of that); {rest}",
        ran_tunes.len(),
        100.0 * bookkeeping / ran.max(1e-9),
    );
    }
    if !failures.is_empty() {
        for (what, e) in &failures {
            eprintln!("failed: {what}: {e}");
        }
        bail!(
            "{} of the experiment's jobs failed (the others finished; re-run to retry)",
            failures.len()
        );
    }
    Ok(())
}
