//! `encore train`: fit a model on a dataset and split, evaluate it, write a run directory.
//! The command parses its arguments, loads the data and builds a conditioned model's item
//! vectors; the run directory's lifecycle is `encore_core::run`'s.

use std::cell::RefCell;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_core::registry::ModelEntry;
use encore_core::run::{self, NewRun, RunFit, RunResult, RunStage};
use encore_core::ModelError;
use encore_eval::MetricReport;

use crate::data::DataSource;
use crate::{models, progress};

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Models: pop, itemknn, ease, bpr, lightgcn, multivae, macridvae.\n\nExamples:\n  encore train --model multivae --data data/ml-100k --split ratio --seed 2020\n  encore train --model macridvae --data data/ml-100k --set preset=recbole --set lr=0.005\n  encore train --model lightgcn --config configs/lightgcn.toml --data data/ml-100k --out runs/lgcn\n  encore train --model bpr --data data/ml-100k --split-dir splits/ml-100k-2020 --out runs/bpr-external\n  encore train --model lightgcn --out runs/lgcn --resume     # continue a killed run\n  encore train --model multivae --data data/small --set conditioning=tensor --audio world/id_ivec512.tsv --lyrics world/id_lyrics_bert.tsv\n  encore train --model multivae --data data/lastfm --set conditioning=lyrics --lyrics id_tags_emb.tsv\n\nConditioning (MultiVAE-C, MacridVAE-C): `--set conditioning=audio|lyrics|concat|tensor` with the\nfeature tables it needs; the fused vectors (PCA to `cond_dim`, default 128) are fitted on the\ndataset's catalogue and kept in <run>/conditioning/."
)]
pub struct TrainArgs {
    /// The model to train: pop, itemknn, ease, bpr, lightgcn, multivae or macridvae.
    #[arg(long)]
    pub model: String,
    /// A TOML config (see configs/); keys not in it take the preset's defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set preset=recbole`, `--set lr=0.005`,
    /// `--set train.epochs=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Continue the run in --out from its last checkpoint (dataset, split and config are
    /// taken from the run directory).
    #[arg(long, requires = "out")]
    pub resume: bool,
    #[command(flatten)]
    pub source: DataSource,
    /// Seed for the split, the trainer and the model's initialisation (default 2020).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Cut-offs to report.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    pub k: Vec<usize>,
    /// Run directory (default runs/<model>-<dataset>-<split>-<seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Item feature tables for a conditioned VAE (`--set conditioning=tensor` etc.).
    #[command(flatten)]
    pub features: crate::features::FeatureSources,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let result = train(&args)?;
    println!("run directory: {}", result.dir.display());
    let rows = vec![
        ("valid".to_string(), &result.valid),
        ("test".to_string(), &result.test),
    ];
    println!("{}", table(&rows, &args.k));
    Ok(())
}

/// A results table with the main metrics at k = 10 (or the first k).
pub fn table(rows: &[(String, &MetricReport)], ks: &[usize]) -> String {
    let names = metric_names(ks);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    encore_eval::format_table(rows, &refs)
}

/// Metric columns for a results table.
pub fn metric_names(ks: &[usize]) -> Vec<String> {
    let k = if ks.contains(&10) { 10 } else { ks[0] };
    ["ndcg", "mrr", "recall", "hit", "precision"]
        .iter()
        .map(|m| format!("{m}@{k}"))
        .collect()
}

/// Train, evaluate and record one run (a new one, or the run in `--out` with `--resume`).
pub fn train(args: &TrainArgs) -> Result<RunResult> {
    let entry = models::find(&args.model)?;
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k: expected a comma-separated list of positive cut-offs, e.g. 5,10,20");
    }
    let resuming = args.resume
        && args
            .out
            .as_deref()
            .is_some_and(|d| d.join(run::RUN_FILE).exists());
    let evaluating = RefCell::new(None);
    let progress = |stage: RunStage| {
        if stage == RunStage::Evaluating {
            *evaluating.borrow_mut() = Some(progress::spinner("evaluating the best model"));
        }
    };
    let result = if resuming {
        resume_run(args, &entry, &progress)
    } else {
        new_run(args, &entry, &progress)
    };
    if let Some(spinner) = evaluating.take() {
        spinner.finish_and_clear();
    }
    result
}

/// A new run in `--out` (or the default folder).
fn new_run(args: &TrainArgs, entry: &ModelEntry, progress: &dyn Fn(RunStage)) -> Result<RunResult> {
    let seed = args.seed.unwrap_or(2020);
    let config = (entry.resolve)(args.config.as_deref(), &args.sets, args.seed)?;
    let (dataset, split) = args.source.load(seed)?;
    let run_dir = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "{}-{}-{}-{}",
            args.model, dataset.name, split.kind, seed
        ))
    });
    if config.conditioning().is_none()
        && (args.features.audio.is_some() || args.features.lyrics.is_some())
    {
        bail!(
            "--audio/--lyrics are only used by a conditioned model: add e.g. \
             --set conditioning=tensor (multivae, macridvae)"
        );
    }
    // A conditioned model's item vectors are fitted before the run directory exists, so that
    // bad feature files leave nothing behind.
    let built = config
        .conditioning()
        .map(|(kind, dim)| {
            crate::features::build_conditioning(kind, dim, &dataset.items, &args.features, seed)
        })
        .transpose()?;
    let features = built
        .as_ref()
        .map(|_| serde_json::to_value(&args.features))
        .transpose()?;
    let created = run::create(&NewRun {
        dir: &run_dir,
        model: entry.name,
        config: config.as_ref(),
        dataset: &dataset,
        data: args.source.data.as_deref(),
        split: &split,
        seed,
        features,
    });
    if let Err(ModelError::RunExists { dir }) = &created {
        bail!(
            "{}: already holds a run; choose another --out (or --resume to continue it)",
            dir.display()
        );
    }
    created?;
    if let Some(b) = &built {
        b.save(&run_dir.join(run::CONDITIONING_DIR))?;
    }
    let fit = RunFit {
        dir: &run_dir,
        split: &split,
        config: config.as_ref(),
        conditioning: built.map(|b| b.cond),
        resume: false,
        ks: &args.k,
        user_ids: Some(&dataset.users),
    };
    Ok(run::fit_and_evaluate(fit, progress)?)
}

/// Continue the run in `--out` with the configuration, split and conditioning it recorded.
fn resume_run(
    args: &TrainArgs,
    entry: &ModelEntry,
    progress: &dyn Fn(RunStage),
) -> Result<RunResult> {
    let run_dir = args.out.as_deref().expect("--resume requires --out");
    let loaded = run::load(run_dir)?;
    let config = loaded.config(entry).context("--resume")?;
    // Re-running the original command with --resume is fine; a different config is not.
    if args.config.is_some() || !args.sets.is_empty() || args.seed.is_some() {
        let given = (entry.resolve)(args.config.as_deref(), &args.sets, args.seed)?;
        if given.to_toml()? != config.to_toml()? {
            bail!(
                "--resume: the given --config/--set/--seed differ from the config recorded in {}; \
                 resume without them (or with the original ones)",
                run_dir.join(run::CONFIG_FILE).display()
            );
        }
    }
    let fit = RunFit {
        dir: run_dir,
        split: &loaded.split,
        config: config.as_ref(),
        conditioning: None,
        resume: true,
        ks: &args.k,
        user_ids: Some(&loaded.dataset.users),
    };
    Ok(run::fit_and_evaluate(fit, progress)?)
}
