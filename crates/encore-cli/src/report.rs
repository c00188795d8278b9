//! `encore report`: one table of the test metrics of several runs (e.g. each conditioning
//! kind against none), as text, Markdown or CSV; with `--curves`, the runs' learning curves
//! (validation metric against epochs and against minutes), one pair of PNGs per model.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_core::run::{self, RunInfo, RunMetrics};
use encore_eval::MetricReport;

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Examples:\n  encore report runs/demo/runs/*\n  encore report runs/lastfm-* --k 10 --markdown\n  encore report runs/a runs/b --csv results.csv\n  encore report runs/mv-* runs/macrid-* --curves plots/"
)]
pub struct ReportArgs {
    /// Run directories (each with run.json, config.toml and metrics.json).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The cut-off of the metric columns.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Print a Markdown table instead of aligned text.
    #[arg(long)]
    pub markdown: bool,
    /// Also write the rows as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Also draw learning curves into this folder: for each model among the runs,
    /// `<model>-epochs.png` and `<model>-minutes.png`, one line per run (runs without
    /// validated epochs, e.g. closed-form models, are left out).
    #[arg(long, value_name = "DIR")]
    pub curves: Option<PathBuf>,
    /// The validation metric of the curves, as logged (e.g. ndcg@10, recall@20).
    #[arg(long, default_value = "ndcg@10")]
    pub metric: String,
}

/// One run's row: its label (directory name, model, conditioning) and test metrics.
struct Row {
    label: String,
    /// The run directory's name and its model (for the curves).
    name: String,
    model: String,
    report: MetricReport,
    best_epoch: Option<usize>,
}

fn read_row(dir: &std::path::Path) -> Result<Row> {
    let info: RunInfo = encore_io::read_json(&dir.join(run::RUN_FILE))
        .with_context(|| format!("{} is not a run directory", dir.display()))?;
    let metrics: RunMetrics =
        encore_io::read_json(&dir.join(run::METRICS_FILE)).with_context(|| {
            format!(
                "{}: no metrics.json (is the run finished? `encore train --resume` continues it)",
                dir.display()
            )
        })?;
    let config = std::fs::read_to_string(dir.join(run::CONFIG_FILE)).unwrap_or_default();
    let table = toml::from_str::<toml::Table>(&config).ok();
    let key = |k: &str| {
        table
            .as_ref()
            .and_then(|t| t.get(k).and_then(|v| v.as_str()).map(String::from))
    };
    let mut conditioning = key("conditioning").unwrap_or_else(|| "none".into());
    // Latent diffusion, when on: its schedule and what the denoiser predicts.
    if let Some(kind) = key("diffusion").filter(|k| k != "none") {
        let mean_type = key("mean_type").unwrap_or_else(|| "eps".into());
        conditioning = format!("{conditioning}, diffusion {kind}/{mean_type}");
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Row {
        label: format!("{name} ({}, {conditioning})", info.model),
        name,
        model: info.model.clone(),
        report: MetricReport {
            n_evaluated: metrics.test_users,
            n_skipped: metrics.skipped_users_test,
            metrics: metrics.test,
            per_user: None,
            seconds: metrics.eval_seconds,
        },
        best_epoch: metrics.best_epoch,
    })
}

pub fn run(args: ReportArgs) -> Result<()> {
    if args.k == 0 {
        bail!("--k: expected a positive cut-off");
    }
    let rows: Vec<Row> = args
        .runs
        .iter()
        .map(|d| read_row(d))
        .collect::<Result<_>>()?;
    let names: Vec<String> = ["ndcg", "mrr", "recall", "hit", "precision"]
        .iter()
        .map(|m| format!("{m}@{}", args.k))
        .collect();
    for r in &rows {
        if !r.report.metrics.contains_key(&names[0]) {
            bail!(
                "{}: no {} in its metrics (evaluate it with --k {})",
                r.label,
                names[0],
                args.k
            );
        }
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let table_rows: Vec<(String, &MetricReport)> =
        rows.iter().map(|r| (r.label.clone(), &r.report)).collect();
    if args.markdown {
        println!("{}", encore_eval::format_markdown_table(&table_rows, &refs));
    } else {
        println!("{}", encore_eval::format_table(&table_rows, &refs));
    }
    if let Some(path) = &args.csv {
        encore_io::write_atomic(path, |w| {
            use std::io::Write;
            writeln!(w, "run,{},best_epoch", names.join(","))?;
            for r in &rows {
                let vals: Vec<String> = names
                    .iter()
                    .map(|n| format!("{}", r.report.metrics.get(n).copied().unwrap_or(f64::NAN)))
                    .collect();
                let epoch = r.best_epoch.map(|e| e.to_string()).unwrap_or_default();
                writeln!(
                    w,
                    "\"{}\",{},{epoch}",
                    r.label.replace('"', "'"),
                    vals.join(",")
                )?;
            }
            Ok(())
        })?;
        println!("wrote {}", path.display());
    }
    if let Some(out) = &args.curves {
        curves(&args, &rows, out)?;
    }
    Ok(())
}

/// The learning curves of `rows`' runs, grouped by model, into `out`.
fn curves(args: &ReportArgs, rows: &[Row], out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    let mut written = 0;
    for model in models {
        let mut runs = Vec::new();
        for (row, dir) in rows.iter().zip(&args.runs) {
            if row.model != model {
                continue;
            }
            let log = encore_core::trainer::read_log(&dir.join("log.jsonl"))?;
            runs.push((row.name.clone(), log));
        }
        let files = encore_core::trainer::plot_curves(out, model, &runs, &args.metric)
            .map_err(|e| anyhow::anyhow!("drawing the {model} curves: {e}"))?;
        if files.is_empty() {
            println!("{model}: no run has validated epochs with {}", args.metric);
        }
        for f in &files {
            println!("wrote {}", f.display());
        }
        written += files.len();
    }
    if written == 0 {
        bail!(
            "--curves: none of the runs logged a validation {} (closed-form models have no \
             epochs; trained runs log the metrics of --k)",
            args.metric
        );
    }
    Ok(())
}
