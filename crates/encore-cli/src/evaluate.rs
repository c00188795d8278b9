//! `encore evaluate`: test metrics of a run's best model, or of ranked lists made by any other
//! system, under Encore's protocol (EVALUATION.md).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use encore_core::run::{self, evaluate_split};
use encore_data::Split;
use encore_eval::{evaluate_ranked_lists, read_ranked_lists, EvalOptions};

use crate::models;
use crate::train::table;

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum Part {
    Test,
    Valid,
}

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Examples:\n  encore evaluate --run runs/pop-ml-100k-ratio-2020\n  encore evaluate --split runs/pop-ml-100k-ratio-2020/split --recommendations recbole_top50.tsv --k 10,20 --out metrics.json\n  encore evaluate --split runs/pop-ml-100k-ratio-2020/split --recommendations recbole_top50.tsv --per-user recbole_per_user.tsv\n\nThe ranked-list file has the header `user_id<TAB>item_id<TAB>rank` (rank 1 best, original ids).\nEach user's excluded items (train; plus valid when evaluating test) are removed from their list\nbefore it is cut at k; a user with targets but no list scores zero."
)]
pub struct EvaluateArgs {
    /// A run directory: evaluate its best model on valid and test.
    #[arg(long, conflicts_with_all = ["split", "recommendations"])]
    pub run: Option<PathBuf>,
    /// A saved split directory (train.tsv, valid.tsv, test.tsv, split.json).
    #[arg(long, requires = "recommendations")]
    pub split: Option<PathBuf>,
    /// Ranked lists made by another system (user_id, item_id, rank).
    #[arg(long, requires = "split")]
    pub recommendations: Option<PathBuf>,
    /// Which targets to score the lists against.
    #[arg(long, value_enum, default_value = "test")]
    pub on: Part,
    /// Cut-offs.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    pub k: Vec<usize>,
    /// Also write the metrics as JSON (keys like `ndcg@10`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write each evaluated user's metrics as TSV (`user_id`, `n_input`, one column per
    /// metric; the test part for --run, the --on part for ranked lists): what paired tests
    /// between two systems need.
    #[arg(long, value_name = "FILE")]
    pub per_user: Option<PathBuf>,
}

pub fn run(args: EvaluateArgs) -> Result<()> {
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k: expected a comma-separated list of positive cut-offs, e.g. 5,10,20");
    }
    if let Some(dir) = &args.run {
        let loaded = run::load(dir)?;
        let model = loaded.model(&models::find(&loaded.info.model)?)?;
        let (valid, test) = evaluate_split(model.as_ref(), &loaded.split, &args.k);
        println!(
            "{} on {} ({} split, seed {})",
            loaded.info.model, loaded.info.dataset_name, loaded.split.kind, loaded.split.seed
        );
        let rows = vec![("valid".to_string(), &valid), ("test".to_string(), &test)];
        println!("{}", table(&rows, &args.k));
        if let Some(out) = &args.out {
            encore_io::write_json(
                out,
                &serde_json::json!({"valid": valid.metrics, "test": test.metrics}),
            )?;
        }
        if let Some(path) = &args.per_user {
            run::write_per_user(
                path,
                &[(None, &loaded.split.input, &test)],
                Some(&loaded.dataset.users),
            )?;
            println!("per-user test metrics written to {}", path.display());
        }
        return Ok(());
    }
    let (Some(split_dir), Some(recs)) = (&args.split, &args.recommendations) else {
        bail!("give --run RUN, or --split DIR with --recommendations FILE");
    };
    let loaded = Split::load_dir(split_dir, None)?;
    let (lists, stats) = read_ranked_lists(recs, &loaded.users, &loaded.items)?;
    let s = &loaded.split;
    let opts = EvalOptions {
        ks: args.k.clone(),
        keep_per_user: args.per_user.is_some(),
        ..EvalOptions::default()
    };
    let report = match args.on {
        Part::Test => evaluate_ranked_lists(&lists, &[&s.input, &s.valid], &s.test, &opts),
        Part::Valid => evaluate_ranked_lists(&lists, &[&s.input], &s.valid, &opts),
    };
    println!(
        "read {} lines: {} users with a list, {} lines of unknown users skipped, {} entries with unknown items kept as misses",
        stats.lines, stats.users_with_list, stats.unknown_user_lines, stats.unknown_item_lines
    );
    let label = format!("{:?}", args.on).to_lowercase();
    println!("{}", table(&[(label, &report)], &args.k));
    println!(
        "{} users evaluated, {} without targets skipped",
        report.n_evaluated, report.n_skipped
    );
    if let Some(out) = &args.out {
        encore_io::write_json(out, &report.metrics)?;
        println!("metrics written to {}", out.display());
    }
    if let Some(path) = &args.per_user {
        run::write_per_user(path, &[(None, &s.input, &report)], Some(&loaded.users))?;
        println!("per-user metrics written to {}", path.display());
    }
    Ok(())
}
