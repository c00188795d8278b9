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
    after_help = "Examples:\n  encore report runs/demo/runs/*\n  encore report runs/lastfm-* --k 10 --markdown\n  encore report runs/a runs/b --csv results.csv\n  encore report runs/mv-* runs/macrid-* --curves plots/\n  encore report runs/rq3/* --group --markdown          # mean ± std over seeds\n  encore report runs/init/* --group --valid-at 1,5     # valid NDCG@10 after epochs 1 and 5\n  encore report --experiment runs/paper                 # rebuild an experiment's report"
)]
pub struct ReportArgs {
    /// Run directories (each with run.json, config.toml and metrics.json).
    #[arg(required_unless_present = "experiment")]
    pub runs: Vec<PathBuf>,
    /// Rebuild an experiment's report (`encore experiment`'s folder, with plan.json) from
    /// the runs that have finished: report/report.md, results.csv and the plots.
    #[arg(long, value_name = "DIR", conflicts_with = "runs")]
    pub experiment: Option<PathBuf>,
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
    /// The validation metric of the curves and of --valid-at, as logged (e.g. ndcg@10,
    /// recall@20).
    #[arg(long, default_value = "ndcg@10")]
    pub metric: String,
    /// One row per configuration: runs that differ only in their seeds (config keys `seed`
    /// and `*_seed`, the split's seed) are pooled, each metric shown as mean ± sample
    /// standard deviation over them.
    #[arg(long)]
    pub group: bool,
    /// Also show the validation metric (--metric) after these epochs (1-based, e.g. `1,5`:
    /// the "strong initialisation" check), from each run's log.
    #[arg(long, value_delimiter = ',', value_name = "EPOCHS")]
    pub valid_at: Vec<usize>,
}

/// One run's row: its label (directory name, model, conditioning) and test metrics.
struct Row {
    label: String,
    /// The run directory's name and its model (for the curves).
    name: String,
    model: String,
    report: MetricReport,
    best_epoch: Option<usize>,
    /// What identifies the configuration apart from its seeds (`--group`).
    group_key: String,
    /// The configuration's description: model, preset, conditioning, diffusion, dataset.
    group_label: String,
}

/// `table` without the keys that only seed a run (`seed`, `*_seed`, at any depth).
fn without_seeds(table: &toml::Table) -> toml::Table {
    table
        .iter()
        .filter(|(k, _)| *k != "seed" && !k.ends_with("_seed"))
        .map(|(k, v)| {
            let v = match v {
                toml::Value::Table(t) => toml::Value::Table(without_seeds(t)),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
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
    let preset = key("preset").unwrap_or_else(|| "-".into());
    let split = serde_json::to_string(&info.split.kind).unwrap_or_default();
    let group_key = format!(
        "{}|{}|{split}|{}",
        info.model,
        info.dataset_fingerprint,
        table.as_ref().map(without_seeds).unwrap_or_default()
    );
    let group_label = format!(
        "{} ({preset}, {conditioning}) on {}",
        info.model, info.dataset_name
    );
    Ok(Row {
        group_key,
        group_label,
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
    if let Some(dir) = &args.experiment {
        let plan_file = dir.join(crate::experiment::PLAN_FILE);
        let plan: crate::experiment::Plan =
            encore_io::read_json(&plan_file).with_context(|| {
                format!(
                    "{} is not an experiment folder (no readable plan.json)",
                    dir.display()
                )
            })?;
        let summary = crate::experiment_report::write(dir, &plan)?;
        println!("{}", summary.text);
        println!("report written to {}", dir.join("report").display());
        return Ok(());
    }
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
    if args.group || !args.valid_at.is_empty() {
        return grouped(&args, &rows, &names[..4]);
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

/// `mean ± std` of `values` (sample standard deviation; the mean alone for one value).
fn mean_std(values: &[f64]) -> String {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return format!("{mean:.4}");
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    format!("{mean:.4} ± {:.4}", var.sqrt())
}

/// The validation `metric` logged at 1-based `epoch`, if that epoch was validated.
fn valid_at(dir: &std::path::Path, metric: &str, epoch: usize) -> Result<Option<f64>> {
    let log = encore_core::trainer::read_log(&dir.join("log.jsonl"))?;
    Ok(log
        .iter()
        .find(|l| l.epoch + 1 == epoch)
        .and_then(|l| l.valid.as_ref())
        .and_then(|v| v.get(metric).copied()))
}

/// The `--group` / `--valid-at` table: one row per configuration (or per run without
/// `--group`), test `metrics` and the validation metric at the asked epochs as mean ± std.
fn grouped(args: &ReportArgs, rows: &[Row], metrics: &[String]) -> Result<()> {
    // Groups in the order their first run was given.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let key = if args.group {
            r.group_key.clone()
        } else {
            i.to_string()
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    let mut header = vec!["configuration".to_string(), "runs".to_string()];
    header.extend(metrics.iter().map(|m| format!("test {m}")));
    header.extend(
        args.valid_at
            .iter()
            .map(|e| format!("valid {} after {e}", args.metric)),
    );
    let mut table = Vec::new();
    let mut csv = Vec::new();
    for (_, members) in &groups {
        let first = &rows[members[0]];
        let label = if args.group {
            first.group_label.clone()
        } else {
            first.label.clone()
        };
        let mut cells = vec![label.clone(), members.len().to_string()];
        let mut csv_row = vec![
            format!("\"{}\"", label.replace('"', "'")),
            members.len().to_string(),
        ];
        for m in metrics {
            let v: Vec<f64> = members
                .iter()
                .map(|&i| rows[i].report.metrics.get(m).copied().unwrap_or(f64::NAN))
                .collect();
            cells.push(mean_std(&v));
            csv_row.push(mean_std(&v).replace(" ± ", ","));
        }
        for &e in &args.valid_at {
            let mut v = Vec::new();
            for &i in members {
                match valid_at(&args.runs[i], &args.metric, e)? {
                    Some(x) => v.push(x),
                    None => bail!(
                        "--valid-at {e}: {} has no validation {} after epoch {e} (was it \
                         validated every epoch, with --k including the cut-off?)",
                        args.runs[i].display(),
                        args.metric
                    ),
                }
            }
            cells.push(mean_std(&v));
            csv_row.push(mean_std(&v).replace(" ± ", ","));
        }
        table.push(cells);
        csv.push(csv_row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    if args.markdown {
        println!("| {} |", header.join(" | "));
        println!("|{}", "---|".repeat(header.len()));
        for r in &table {
            println!("| {} |", r.join(" | "));
        }
    } else {
        let line = |r: &[String]| {
            r.iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (v, w))| {
                    let pad = w - v.chars().count();
                    if c == 0 {
                        format!("{v}{}", " ".repeat(pad))
                    } else {
                        format!("{}{v}", " ".repeat(pad))
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!("{}", line(&header));
        for r in &table {
            println!("{}", line(r));
        }
    }
    if let Some(path) = &args.csv {
        encore_io::write_atomic(path, |w| {
            use std::io::Write;
            let mut cols = vec!["configuration".to_string(), "runs".to_string()];
            for h in &header[2..] {
                cols.push(format!("{h} mean"));
                cols.push(format!("{h} std"));
            }
            writeln!(w, "{}", cols.join(","))?;
            for r in &csv {
                // A single run has no standard deviation: an empty cell.
                let cells: Vec<String> = r
                    .iter()
                    .enumerate()
                    .map(|(c, v)| {
                        if c >= 2 && !v.contains(',') {
                            format!("{v},")
                        } else {
                            v.clone()
                        }
                    })
                    .collect();
                writeln!(w, "{}", cells.join(","))?;
            }
            Ok(())
        })?;
        println!("wrote {}", path.display());
    }
    if let Some(out) = &args.curves {
        curves(args, rows, out)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample standard deviation (n − 1), as scipy's `std(ddof=1)`: for 0.30, 0.31,
    /// 0.35 the mean is 0.32 and the std 0.026458; one value shows the mean alone.
    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[0.30, 0.31, 0.35]), "0.3200 ± 0.0265");
        assert_eq!(mean_std(&[0.3]), "0.3000");
    }

    /// Runs differing only in seeds share a key; any other key separates them.
    #[test]
    fn seeds_do_not_separate_configurations() {
        let a: toml::Table = toml::from_str(
            "model = \"multivae\"\ninit_seed = 1\nlr = 0.001\n[train]\nseed = 1\nepochs = 5\n",
        )
        .unwrap();
        let b: toml::Table = toml::from_str(
            "model = \"multivae\"\ninit_seed = 2\nlr = 0.001\n[train]\nseed = 2\nepochs = 5\n",
        )
        .unwrap();
        let c: toml::Table = toml::from_str(
            "model = \"multivae\"\ninit_seed = 2\nlr = 0.01\n[train]\nseed = 2\nepochs = 5\n",
        )
        .unwrap();
        assert_eq!(without_seeds(&a), without_seeds(&b));
        assert_ne!(without_seeds(&b), without_seeds(&c));
        assert!(without_seeds(&a)["train"]
            .as_table()
            .unwrap()
            .contains_key("epochs"));
    }
}
