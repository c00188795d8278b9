//! `encore tune`: Bayesian optimisation (TPE) of a model's hyper-parameters on the validation
//! split (SPEC §6, the paper's §5.4). The search space, the proposals, the trial log and the
//! plot are `encore_tune`'s; this command checks the space against the model's configuration,
//! runs each trial as a normal training run in this process (`train::train`, into
//! `DIR/trials/NNN`) and reports.
//!
//! # One trial
//!
//! The trial's overrides are the fixed `--set` values, then the proposed values, then
//! `train.valid_metric = <--metric>` and `train.ks` with the metric's cut-off, so that the
//! trial's early stopping selects its best checkpoint by the metric being tuned. Its objective
//! is that best model's validation value of the metric (`RunResult::valid`). A trial whose
//! training returns an error is recorded with the error and the tune goes on.
//!
//! # Continuing a killed tune
//!
//! The same command on the same `--out` continues after the last trial in `trials.jsonl`
//! (and refuses when the settings in `tune.json` differ). A trial left half-done is continued
//! with `train`'s resume when its run directory holds a training checkpoint (the trainer
//! resumes to the same result as an uninterrupted run), and removed and started again
//! otherwise (a closed-form model, or a kill before the first epoch ended).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_core::config::parse_set;
use encore_core::registry::ModelEntry;
use encore_core::run;
use encore_tune::study::{BEST_FILE, PLOT_FILE, TRIALS_FILE};
use encore_tune::{Params, Sampler, SearchSpace, Study, TrialRecord, TuneSettings};

use crate::data::{dir_name, DataSource};
use crate::features::FeatureSources;
use crate::train::{self, TrainArgs};
use crate::{models, progress};

/// The built-in search spaces (configs/tune/), embedded in the binary, by model.
const DEFAULT_SPACES: &[(&str, &str)] = &[
    (
        "itemknn",
        include_str!("../../../configs/tune/itemknn.toml"),
    ),
    ("ease", include_str!("../../../configs/tune/ease.toml")),
    ("bpr", include_str!("../../../configs/tune/bpr.toml")),
    (
        "lightgcn",
        include_str!("../../../configs/tune/lightgcn.toml"),
    ),
    (
        "multivae",
        include_str!("../../../configs/tune/multivae.toml"),
    ),
    (
        "macridvae",
        include_str!("../../../configs/tune/macridvae.toml"),
    ),
    (
        "diffrec",
        include_str!("../../../configs/tune/diffrec.toml"),
    ),
];

/// The latent-diffusion keys added to a default space when the configuration's `diffusion`
/// names a schedule, by schedule.
const DIFFUSION_SPACES: &[(&str, &str)] = &[
    (
        "paper",
        include_str!("../../../configs/tune/diffusion-paper.toml"),
    ),
    (
        "diffrec",
        include_str!("../../../configs/tune/diffusion-diffrec.toml"),
    ),
];

/// Keys the tune sets itself.
const RESERVED_KEYS: &[&str] = &["model", "train.valid_metric", "train.ks"];

/// The cut-offs of each trial's final metrics (plus the tuned metric's).
const REPORT_KS: [usize; 3] = [5, 10, 20];

/// Trials shown in the final table.
const TOP_TRIALS: usize = 10;

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Examples:\n  encore tune --model multivae --data data/ml-100k --split ratio --seed 2020 --out tunes/multivae\n  encore tune --model multivae --data data/ml-100k --out tunes/multivae --trials 100   # continue, up to 100 trials\n  encore tune --model ease --split-dir splits/ml-100k-2020 --metric recall@20 --trials 30\n  encore tune --model macridvae --data data/small --space my-space.toml --set train.epochs=50\n  encore tune --model multivae --data data/small --set diffusion=diffrec   # adds the latent-diffusion keys\n  encore train --model multivae --config tunes/multivae/best.toml --data data/ml-100k   # retrain the best\n\nA search-space file has one table per tuned key (keys as --set takes them):\n  [lr]\n  kind = \"log_uniform\"     # or \"uniform\"\n  low = 1e-4\n  high = 1e-2\n  [batch_size]\n  kind = \"int\"\n  low = 64\n  high = 1024\n  log = true\n  [diffusion]\n  kind = \"categorical\"\n  values = [\"none\", \"diffrec\"]\nWithout --space each model has a default space (configs/tune/<model>.toml, built in).\n\nWrites DIR/tune.json (the settings), DIR/trials.jsonl (one line per trial), DIR/trials/NNN/\n(each trial's run directory), DIR/best.toml (the best trial's config, for `encore train --config`)\nand DIR/trials.png. Re-running the command on the same --out continues the tune."
)]
pub struct TuneArgs {
    /// The model to tune: itemknn, ease, bpr, lightgcn, multivae, macridvae or diffrec.
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub source: DataSource,
    /// Seeds the proposals, and each trial's split, trainer and initialisation.
    #[arg(long, default_value_t = 2020)]
    pub seed: u64,
    /// Trials in all (a continued tune counts the ones already done).
    #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
    pub trials: u64,
    /// The validation metric to maximise, `name@k` (ndcg, recall, recall_liang, mrr, hit,
    /// precision); each trial also stops early on it.
    #[arg(long, default_value = "ndcg@10")]
    pub metric: String,
    /// The search space (TOML); default: the model's built-in space.
    #[arg(long)]
    pub space: Option<PathBuf>,
    /// A fixed config override for every trial, e.g. `--set train.epochs=50` (repeatable); a
    /// key it fixes leaves the built-in space.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Trials drawn at random before TPE takes over.
    #[arg(long, default_value_t = 10)]
    pub startup_trials: usize,
    /// Tuning directory (default runs/tune-<model>-<dataset>-<split>-<seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Item feature tables for a conditioned VAE (`--set conditioning=tensor` etc.).
    #[command(flatten)]
    pub features: FeatureSources,
}

/// Everything a trial needs besides its proposed values.
struct Tuning {
    entry: ModelEntry,
    args: TuneArgs,
    /// `train.valid_metric` and `train.ks`, after the proposed values.
    metric_sets: Vec<String>,
    /// The cut-offs of each trial's final metrics.
    ks: Vec<usize>,
}

pub fn run(args: TuneArgs) -> Result<()> {
    // Trials train models: the same allocator policy as `encore train`.
    encore_core::alloc::retain_freed_memory();
    let entry = models::find(&args.model)?;
    let (tuning, space) = prepare(args, entry)?;
    let settings = settings(&tuning.args, &space)?;
    let out = tuning
        .args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&tuning.args));
    let mut study = Study::open(&out, settings)?;
    run_trials(&tuning, &space, &mut study)?;
    report(&tuning, &study)
}

/// Check everything that can be checked before the first trial: the metric, the fixed
/// overrides, the space (each key and bound resolved through the model's configuration), the
/// data and split arguments. Nothing is written.
fn prepare(args: TuneArgs, entry: ModelEntry) -> Result<(Tuning, SearchSpace)> {
    let k = metric_cutoff(&args.metric)?;
    let base = resolved_table(&entry, &[], args.seed)?;
    let own_keys = base
        .keys()
        .filter(|key| !["model", "preset", "train"].contains(&key.as_str()))
        .count();
    if own_keys == 0 {
        bail!(
            "--model {}: nothing to tune, the model has no hyper-parameters",
            entry.name
        );
    }
    for set in &args.sets {
        let (path, _) = parse_set(set)?;
        let key = path.join(".");
        if RESERVED_KEYS.contains(&key.as_str()) {
            bail!("--set {set}: `{key}` is set by the tune itself (from --model and --metric)");
        }
    }
    let fixed = resolved_table(&entry, &args.sets, args.seed).context("the fixed --set values")?;
    let mut train_ks: Vec<usize> = fixed
        .get("train")
        .and_then(|t| t.get("ks"))
        .and_then(|ks| ks.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_integer())
                .map(|v| v as usize)
                .collect()
        })
        .unwrap_or_default();
    train_ks.push(k);
    train_ks.sort_unstable();
    train_ks.dedup();
    let metric_sets = vec![
        format!(
            "train.valid_metric={}",
            toml::Value::String(args.metric.clone())
        ),
        format!("train.ks={train_ks:?}"),
    ];
    let fixed_sets: Vec<String> = args.sets.iter().chain(&metric_sets).cloned().collect();
    (entry.resolve)(None, &fixed_sets, Some(args.seed))
        .with_context(|| format!("--metric {}", args.metric))?;

    let space = load_space(&args, &entry, &fixed)?;
    if space.params.is_empty() {
        bail!("the search space has no key left to tune");
    }
    for p in &space.params {
        if RESERVED_KEYS.contains(&p.key.as_str()) {
            return Err(p
                .error("is set by the tune itself (from --model and --metric)")
                .into());
        }
        if let Some(set) = args
            .sets
            .iter()
            .find(|s| parse_set(s).is_ok_and(|(path, _)| path.join(".") == p.key))
        {
            return Err(p
                .error(format!("also fixed by --set {set}; drop one of them"))
                .into());
        }
    }
    space.check_values(|key, value| {
        let mut sets = args.sets.clone();
        sets.push(format!("{key}={value}"));
        sets.extend(metric_sets.iter().cloned());
        (entry.resolve)(None, &sets, Some(args.seed))
            .map(|_| ())
            .map_err(|e| format!("the model's configuration refuses it: {e}"))
    })?;

    args.source.check()?;
    let mut ks = REPORT_KS.to_vec();
    ks.push(k);
    ks.sort_unstable();
    ks.dedup();
    Ok((
        Tuning {
            entry,
            args,
            metric_sets,
            ks,
        },
        space,
    ))
}

/// The cut-off of a metric `name@k`.
fn metric_cutoff(metric: &str) -> Result<usize> {
    metric
        .split_once('@')
        .and_then(|(_, k)| k.parse::<usize>().ok())
        .filter(|&k| k > 0)
        .with_context(|| format!("--metric {metric}: expected `name@k`, e.g. ndcg@10 or recall@20"))
}

/// The model's configuration resolved with `sets`, as a TOML table.
fn resolved_table(entry: &ModelEntry, sets: &[String], seed: u64) -> Result<toml::Table> {
    let config = (entry.resolve)(None, sets, Some(seed))?;
    Ok(config.to_toml()?.parse::<toml::Table>()?)
}

/// The space of `--space`, or the model's built-in one (plus the latent-diffusion keys when
/// the fixed configuration sets `diffusion`) without the keys `--set` fixes. A key of a
/// `--space` file that `--set` also fixes is an error instead ([`prepare`]).
fn load_space(args: &TuneArgs, entry: &ModelEntry, fixed: &toml::Table) -> Result<SearchSpace> {
    if let Some(path) = &args.space {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--space {}", path.display()))?;
        return Ok(SearchSpace::parse(&text, &path.display().to_string())?);
    }
    let Some((_, text)) = DEFAULT_SPACES.iter().find(|(m, _)| *m == entry.name) else {
        let known: Vec<&str> = DEFAULT_SPACES.iter().map(|(m, _)| *m).collect();
        bail!(
            "--model {}: no built-in search space (there is one for {}); give --space FILE",
            entry.name,
            known.join(", ")
        );
    };
    let name = format!("configs/tune/{}.toml (built in)", entry.name);
    let mut space = SearchSpace::parse(text, &name)?;
    let diffusion = fixed.get("diffusion").and_then(|v| v.as_str());
    if let Some(kind) = diffusion.filter(|k| *k != "none") {
        if let Some((_, text)) = DIFFUSION_SPACES.iter().find(|(k, _)| *k == kind) {
            let name = format!("configs/tune/diffusion-{kind}.toml (built in)");
            space = space.merge(SearchSpace::parse(text, &name)?)?;
        }
    }
    let fixed_keys: Vec<String> = args
        .sets
        .iter()
        .filter_map(|set| parse_set(set).ok().map(|(path, _)| path.join(".")))
        .collect();
    space.params.retain(|p| !fixed_keys.contains(&p.key));
    Ok(space)
}

/// The settings a continued tune must repeat (paths made absolute).
fn settings(args: &TuneArgs, space: &SearchSpace) -> Result<TuneSettings> {
    let absolute = |flag: &str, p: &Path| -> Result<PathBuf> {
        std::fs::canonicalize(p).with_context(|| format!("{flag} {}", p.display()))
    };
    let mut features = BTreeMap::new();
    if let Some(p) = &args.features.audio {
        features.insert("audio".to_string(), absolute("--audio", p)?);
    }
    if let Some(p) = &args.features.lyrics {
        features.insert("lyrics".to_string(), absolute("--lyrics", p)?);
    }
    Ok(TuneSettings {
        model: args.model.clone(),
        metric: args.metric.clone(),
        seed: args.seed,
        startup_trials: args.startup_trials,
        data: args
            .source
            .data
            .as_deref()
            .map(|p| absolute("--data", p))
            .transpose()?,
        split: args.source.protocol(),
        split_dir: args
            .source
            .split_dir
            .as_deref()
            .map(|p| absolute("--split-dir", p))
            .transpose()?,
        sets: args.sets.clone(),
        features,
        space: space.clone(),
    })
}

fn default_out(args: &TuneArgs) -> PathBuf {
    let source = &args.source;
    let dataset = source
        .data
        .as_deref()
        .or(source.split_dir.as_deref())
        .map(dir_name)
        .unwrap_or_default();
    let split = match &source.split_dir {
        Some(dir) => dir_name(dir),
        None => source.protocol().unwrap_or_default(),
    };
    PathBuf::from("runs").join(format!(
        "tune-{}-{dataset}-{split}-{}",
        args.model, args.seed
    ))
}

/// Run the trials from the next one up to `--trials`, recording each as it ends.
fn run_trials(tuning: &Tuning, space: &SearchSpace, study: &mut Study) -> Result<()> {
    let args = &tuning.args;
    let total = args.trials as usize;
    let sampler = Sampler::new(space, args.seed, args.startup_trials);
    let bar = progress::bar(total as u64, "trials");
    bar.set_position(study.next_trial().min(total) as u64);
    while study.next_trial() < total {
        let trial = study.next_trial();
        let params = sampler.propose(trial, &study.observations())?;
        let run_dir = Study::trial_run_dir(trial);
        let started = Instant::now();
        let outcome = bar.suspend(|| run_trial(tuning, &params, &study.dir().join(&run_dir)));
        let record = TrialRecord {
            trial,
            params,
            value: outcome.as_ref().ok().copied(),
            error: outcome.as_ref().err().map(crate::error_chain),
            seconds: started.elapsed().as_secs_f64(),
            run_dir,
        };
        let record = study.record(&record)?.clone();
        let line = match (&record.value, &record.error) {
            (Some(v), _) => {
                let best = study.best().expect("a finished trial");
                format!(
                    "trial {trial}/{total}: {} = {v:.4} in {:.1} s (best {:.4}, trial {})",
                    args.metric,
                    record.seconds,
                    best.value.unwrap_or_default(),
                    best.trial
                )
            }
            (None, error) => format!(
                "trial {trial}/{total} failed: {}",
                error.as_deref().unwrap_or("no value")
            ),
        };
        bar.suspend(|| eprintln!("{line}"));
        write_outputs(tuning, study)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    write_outputs(tuning, study)
}

/// Run one trial into `dir` and return its objective.
fn run_trial(tuning: &Tuning, params: &Params, dir: &Path) -> Result<f64> {
    let args = &tuning.args;
    let mut sets = args.sets.clone();
    sets.extend(params.iter().map(|(key, value)| format!("{key}={value}")));
    sets.extend(tuning.metric_sets.iter().cloned());
    // Feature tables only for a trial whose configuration is conditioned (`train` refuses
    // them otherwise, and a space may vary `conditioning`).
    let config = (tuning.entry.resolve)(None, &sets, Some(args.seed))?;
    let features = if config.conditioning().is_some() {
        args.features.clone()
    } else {
        FeatureSources::default()
    };
    // A half-done trial: continue it from its training checkpoint, or start it again.
    let resume =
        dir.join(run::RUN_FILE).exists() && encore_io::find_dir(&dir.join("checkpoint")).is_some();
    if !resume && dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the unfinished trial {}", dir.display()))?;
    }
    let result = train::train(&TrainArgs {
        model: args.model.clone(),
        config: None,
        sets,
        resume,
        source: args.source.clone(),
        seed: Some(args.seed),
        k: tuning.ks.clone(),
        out: Some(dir.to_path_buf()),
        features,
    })?;
    let value = result
        .valid
        .get(&args.metric)
        .with_context(|| format!("the run's validation metrics have no {}", args.metric))?;
    if !value.is_finite() {
        bail!("validation {} is {value}", args.metric);
    }
    Ok(value)
}

/// `best.toml` (the best trial's resolved configuration) and `trials.png`.
fn write_outputs(tuning: &Tuning, study: &Study) -> Result<()> {
    let dir = study.dir();
    encore_tune::plot::draw_trials(&dir.join(PLOT_FILE), study.trials(), &tuning.args.metric)?;
    let Some(best) = study.best() else {
        return Ok(());
    };
    let config_path = dir.join(&best.run_dir).join(run::CONFIG_FILE);
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading the best trial's {}", config_path.display()))?;
    let text = format!(
        "# encore tune: the best of {} trials by valid {} ({:.6}, trial {}, {})\n{config}",
        study.trials().len(),
        tuning.args.metric,
        best.value.unwrap_or_default(),
        best.trial,
        best.run_dir.display()
    );
    encore_io::write_bytes(&dir.join(BEST_FILE), text.as_bytes())?;
    Ok(())
}

/// Print the best trials, and where everything is.
fn report(tuning: &Tuning, study: &Study) -> Result<()> {
    let metric = &tuning.args.metric;
    let dir = study.dir();
    let ranked = study.ranked();
    let failed = study.trials().len() - ranked.len();
    println!("tune directory: {}", dir.display());
    println!(
        "{} trials ({failed} failed), by valid {metric}:",
        study.trials().len()
    );
    let mut rows = vec![[
        "rank".to_string(),
        "trial".to_string(),
        metric.clone(),
        "seconds".to_string(),
        "parameters".to_string(),
    ]];
    for (rank, t) in ranked.iter().take(TOP_TRIALS).enumerate() {
        let params: Vec<String> = t
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", short(v)))
            .collect();
        rows.push([
            (rank + 1).to_string(),
            t.trial.to_string(),
            format!("{:.4}", t.value.unwrap_or_default()),
            format!("{:.1}", t.seconds),
            params.join(" "),
        ]);
    }
    println!("{}", align(&rows));
    let Some(best) = study.best() else {
        bail!(
            "no trial finished; the errors are in {}",
            dir.join(TRIALS_FILE).display()
        );
    };
    println!(
        "best: trial {} ({}); its configuration: {} (encore train --model {} --config {})",
        best.trial,
        dir.join(&best.run_dir).display(),
        dir.join(BEST_FILE).display(),
        tuning.entry.name,
        dir.join(BEST_FILE).display()
    );
    println!("plot: {}", dir.join(PLOT_FILE).display());
    Ok(())
}

/// A proposed value for the table: reals to 4 significant digits.
fn short(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(x) => {
            let e = if *x == 0.0 {
                0
            } else {
                x.abs().log10().floor() as i32
            };
            if (-3..5).contains(&e) {
                format!("{x:.*}", (3 - e).max(0) as usize)
            } else {
                format!("{x:.3e}")
            }
        }
        other => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces, with a rule under the header.
fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; N]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(&rows[0])];
    out.push(line(&widths.map(|w| "-".repeat(w))));
    out.extend(rows[1..].iter().map(line));
    out.join("\n")
}
