//! The experiment's report (`OUT/report/`): `report.md` with one table per research question
//! and dataset (mean ± sample standard deviation over seeds, the best mean per column in bold,
//! each row against the table's baseline by paired tests over users), `results.csv` (one row
//! per run, every metric), a bar chart with error bars per table, the learning curves of the
//! tables that ask for them, and the cold-start tables.
//!
//! The paired tests pool the seeds: the pairs are `(seed, user)`, each user's test value of
//! the experiment's metric in the row's run and in the baseline's run of the same seed (so
//! the same split and the same users). Reported: the relative difference of the means with a
//! 95% confidence interval (the Student-t interval of the mean paired difference, divided by
//! the baseline's mean), the paired t-test's and the Wilcoxon signed-rank test's two-sided
//! p-values (`encore_eval::stats`). A difference counts as significant when both p < 0.05.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use encore_core::run::{self, RunMetrics};
use encore_core::trainer;

use crate::experiment::{finished, Plan, PlannedRun, Section};

/// What [`write`] tells the caller.
pub struct Summary {
    /// The report's tables, for the terminal.
    pub text: String,
}

/// The cold-start table's input-size buckets (inclusive bounds).
const BUCKETS: [(usize, usize, &str); 4] = [
    (0, 5, "≤ 5"),
    (6, 20, "6-20"),
    (21, 100, "21-100"),
    (101, usize::MAX, "> 100"),
];

/// One user's row of `per_user_test.tsv` (or `foldin_test.tsv`).
struct UserValue {
    given: usize,
    user: String,
    n_input: usize,
    value: f64,
}

/// Read `metric` per user from a per-user TSV written by `encore_core::run::write_per_user`.
fn read_per_user(path: &Path, metric: &str) -> Result<Vec<UserValue>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(user), Some(n_input), Some(value)) = (col("user_id"), col("n_input"), col(metric))
    else {
        anyhow::bail!(
            "{}: line 1: expected the columns user_id, n_input and {metric}",
            path.display()
        );
    };
    let given = col("given");
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let field = |c: usize| {
            f.get(c)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("{} line {}: too few fields", path.display(), i + 2))
        };
        let num = |c: usize| -> Result<f64> {
            field(c)?.parse::<f64>().map_err(|_| {
                anyhow::anyhow!(
                    "{} line {}: column {}: expected a number",
                    path.display(),
                    i + 2,
                    header[c]
                )
            })
        };
        out.push(UserValue {
            given: given
                .map(|c| num(c).map(|v| v as usize))
                .transpose()?
                .unwrap_or(0),
            user: field(user)?.to_string(),
            n_input: num(n_input)? as usize,
            value: num(value)?,
        });
    }
    Ok(out)
}

/// Mean and sample standard deviation (0 for one value; NaN for none).
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}

fn metric_title(m: &str) -> String {
    let (name, k) = m.split_once('@').unwrap_or((m, ""));
    let name = match name {
        "ndcg" => "NDCG",
        "mrr" => "MRR",
        "hit" => "Hit",
        "recall" => "Recall",
        "precision" => "Precision",
        "recall_liang" => "Recall (Liang)",
        other => other,
    };
    format!("{name}@{k}")
}

fn p_text(p: f64) -> String {
    if p.is_nan() {
        "—".into()
    } else if p < 1e-300 {
        // Below what f64 resolves near zero (the t-test's tail underflows).
        "< 1e-300".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A section's heading and file stem.
fn section_names(s: &Section) -> (String, String) {
    let preset = s
        .preset
        .as_deref()
        .map(|p| format!(", `{p}` preset"))
        .unwrap_or_default();
    let heading = format!("{} — {} ({} split{preset})", s.title, s.dataset, s.split);
    let stem = match &s.preset {
        Some(p) => format!("{}-{}-{p}", s.table, s.dataset),
        None => format!("{}-{}", s.table, s.dataset),
    };
    (heading, stem)
}

struct Loaded<'a> {
    out: &'a Path,
    runs: HashMap<&'a str, &'a PlannedRun>,
    metrics: HashMap<&'a str, RunMetrics>,
}

impl<'a> Loaded<'a> {
    fn new(out: &'a Path, plan: &'a Plan) -> Result<Self> {
        let mut metrics = HashMap::new();
        for r in &plan.runs {
            if finished(out, r) {
                let m: RunMetrics =
                    encore_io::read_json(&out.join(&r.dir).join(run::METRICS_FILE))?;
                metrics.insert(r.key.as_str(), m);
            }
        }
        Ok(Self {
            out,
            runs: plan.runs.iter().map(|r| (r.key.as_str(), r)).collect(),
            metrics,
        })
    }

    fn dir(&self, key: &str) -> PathBuf {
        self.out.join(&self.runs[key].dir)
    }

    /// The finished runs of a row: `(seed, metrics)`.
    fn finished(&self, keys: &[String]) -> Vec<(u64, &RunMetrics)> {
        keys.iter()
            .filter_map(|k| Some((self.runs[k.as_str()].seed, self.metrics.get(k.as_str())?)))
            .collect()
    }
}

/// Write `OUT/report/` for `plan`; runs that have not finished are shown as missing.
pub fn write(out: &Path, plan: &Plan) -> Result<Summary> {
    let dir = out.join("report");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let loaded = Loaded::new(out, plan)?;
    let mut md = String::new();
    let _ = writeln!(md, "# Experiment report: {}\n", plan.file.display());
    let _ = writeln!(
        md,
        "Seeds {:?}; each cell is the mean ± sample standard deviation of the test metric over the seeds' runs (the best mean of each column in **bold**). \
         The paired tests compare each row with the table's baseline on per-user test {} pooled over the seeds (pairs: seed × user, the same split and users for both): \
         the relative difference of the means with a 95% confidence interval (the t interval of the mean paired difference over the baseline's mean), \
         and two-sided p-values of the paired t-test and the Wilcoxon signed-rank test. ✓ marks p < 0.05 in both tests.\n",
        plan.seeds,
        metric_title(&plan.metric)
    );
    let mut text = String::new();
    for s in &plan.sections {
        let (heading, stem) = section_names(s);
        let table = section_table(&loaded, plan, s)?;
        let _ = writeln!(md, "## {heading}\n\n{table}");
        let _ = writeln!(text, "{heading}\n{table}");
        for n in &s.notes {
            let _ = writeln!(md, "- {n}");
        }
        if !s.notes.is_empty() {
            md.push('\n');
        }
        let bars: Vec<(String, f64, f64)> = s
            .rows
            .iter()
            .map(|(label, keys)| {
                let values: Vec<f64> = loaded
                    .finished(keys)
                    .iter()
                    .filter_map(|(_, m)| m.test.get(&s.metrics[0]).copied())
                    .collect();
                let (m, sd) = mean_std(&values);
                (label.clone(), m, sd)
            })
            .collect();
        let png = format!("{stem}.png");
        trainer::plot_bars(
            &dir.join(&png),
            &format!(
                "{}: {}{}",
                s.table,
                s.dataset,
                s.preset
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            ),
            &format!("test {} (mean ± std over seeds)", s.metrics[0]),
            &bars,
        )
        .map_err(|e| anyhow::anyhow!("drawing {png}: {e}"))?;
        let _ = writeln!(md, "![{heading}]({png})\n");
        if s.curves {
            let first = plan.seeds[0];
            let mut curves = Vec::new();
            for (label, keys) in &s.rows {
                if let Some(k) = keys.iter().find(|k| loaded.runs[k.as_str()].seed == first) {
                    let log = trainer::read_log(&loaded.dir(k).join("log.jsonl"))?;
                    curves.push((label.clone(), log));
                }
            }
            // The curves show the experiment's metric, as the runs logged it.
            let curve_metric = &plan.metric;
            let files =
                trainer::plot_curves(&dir, &format!("{stem}-curves"), &curves, curve_metric)
                    .map_err(|e| anyhow::anyhow!("drawing the curves of {stem}: {e}"))?;
            if !files.is_empty() {
                let _ = writeln!(md, "Learning curves (seed {first}): validation {curve_metric} by epoch and by wall-clock minutes.\n");
                for f in files {
                    let name = f.file_name().unwrap().to_string_lossy().into_owned();
                    let _ = writeln!(md, "![{name}]({name})");
                }
                md.push('\n');
            }
        }
        if s.cold_start {
            let cold = cold_start_table(&loaded, plan, s)?;
            let _ = writeln!(md, "### Cold start: {heading}\n\n{cold}");
            let _ = writeln!(text, "Cold start: {heading}\n{cold}");
        }
    }
    encore_io::write_bytes(&dir.join("report.md"), md.as_bytes())?;
    write_csv(&dir.join("results.csv"), &loaded, plan)?;
    Ok(Summary { text })
}

/// The paired values of `a` and `b` over seeds × users: `(a values, b values)`.
fn paired(
    loaded: &Loaded<'_>,
    plan: &Plan,
    a: &[String],
    b: &[String],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for ka in a {
        let seed = loaded.runs[ka.as_str()].seed;
        let Some(kb) = b.iter().find(|k| loaded.runs[k.as_str()].seed == seed) else {
            continue;
        };
        if !loaded.metrics.contains_key(ka.as_str()) || !loaded.metrics.contains_key(kb.as_str()) {
            continue;
        }
        let (pa, pb) = (
            loaded.dir(ka).join(run::PER_USER_FILE),
            loaded.dir(kb).join(run::PER_USER_FILE),
        );
        if !pa.exists() || !pb.exists() {
            continue;
        }
        let va = read_per_user(&pa, &plan.metric)?;
        let vb: HashMap<String, f64> = read_per_user(&pb, &plan.metric)?
            .into_iter()
            .map(|u| (u.user, u.value))
            .collect();
        for u in va {
            if let Some(&v) = vb.get(&u.user) {
                xa.push(u.value);
                xb.push(v);
            }
        }
    }
    Ok((xa, xb))
}

fn section_table(loaded: &Loaded<'_>, plan: &Plan, s: &Section) -> Result<String> {
    let mut header = vec!["Model".to_string(), "Seeds".to_string()];
    header.extend(s.metrics.iter().map(|m| metric_title(m)));
    for e in &s.valid_at {
        header.push(format!("valid {} @ epoch {e}", metric_title(&plan.metric)));
    }
    let find = |label: &str| s.rows.iter().find(|(l, _)| l == label);
    let baseline = s.baseline.as_deref().and_then(find);
    // A row's own baseline (`baseline = "..."` in the row), else the table's.
    let baseline_of = |label: &str| {
        s.row_baselines
            .get(label)
            .and_then(|b| find(b))
            .or(baseline)
    };
    let tested = baseline.is_some() || !s.row_baselines.is_empty();
    if tested {
        let against = match baseline {
            Some((b, _)) if s.row_baselines.is_empty() => format!("vs {b}"),
            _ => "vs its baseline".to_string(),
        };
        header.push(format!(
            "{against}: Δ{} [95% CI]",
            metric_title(&plan.metric)
        ));
        header.push("p (t)".into());
        header.push("p (Wilcoxon)".into());
        header.push("sig.".into());
    }
    // Means per row and column, to bold the best.
    let mut cells: Vec<Vec<(f64, f64)>> = Vec::new();
    for (_, keys) in &s.rows {
        let runs = loaded.finished(keys);
        let mut row = Vec::new();
        for m in &s.metrics {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|(_, r)| r.test.get(m).copied())
                .collect();
            row.push(mean_std(&v));
        }
        for &e in &s.valid_at {
            let mut v = Vec::new();
            for k in keys {
                if !loaded.metrics.contains_key(k.as_str()) {
                    continue;
                }
                let log = trainer::read_log(&loaded.dir(k).join("log.jsonl"))?;
                if let Some(x) = log
                    .iter()
                    .find(|l| l.epoch + 1 == e)
                    .and_then(|l| l.valid.as_ref()?.get(&plan.metric).copied())
                {
                    v.push(x);
                }
            }
            row.push(mean_std(&v));
        }
        cells.push(row);
    }
    let n_cols = s.metrics.len() + s.valid_at.len();
    let best: Vec<f64> = (0..n_cols)
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].0)
                .filter(|v| v.is_finite())
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let mut lines = vec![
        format!("| {} |", header.join(" | ")),
        format!(
            "|{}",
            header
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        ),
    ];
    for ((label, keys), row) in s.rows.iter().zip(&cells) {
        let n = loaded.finished(keys).len();
        let mut out = vec![label.clone(), format!("{n}/{}", keys.len())];
        for (c, (m, sd)) in row.iter().enumerate() {
            out.push(if m.is_nan() {
                "—".into()
            } else if *m == best[c] {
                format!("**{m:.4}** ± {sd:.4}")
            } else {
                format!("{m:.4} ± {sd:.4}")
            });
        }
        if tested {
            let own = s.row_baselines.contains_key(label);
            let Some((b, bkeys)) = baseline_of(label).filter(|(b, _)| b != label) else {
                let text = if baseline.is_some_and(|(b, _)| b == label) {
                    "(baseline)"
                } else {
                    ""
                };
                out.extend([text.into(), String::new(), String::new(), String::new()]);
                lines.push(format!("| {} |", out.join(" | ")));
                continue;
            };
            let prefix = if own || !s.row_baselines.is_empty() {
                format!("vs {b}: ")
            } else {
                String::new()
            };
            {
                let (xa, xb) = paired(loaded, plan, keys, bkeys)?;
                match encore_eval::stats::compare_paired(&xa, &xb) {
                    Ok(c) if xa.len() >= 2 => {
                        let sig = c.t_p_value < 0.05 && c.wilcoxon.p_value < 0.05;
                        out.push(format!(
                            "{prefix}{:+.1}% [{:+.1}, {:+.1}] (n = {})",
                            100.0 * c.rel_diff,
                            100.0 * c.rel_ci.0,
                            100.0 * c.rel_ci.1,
                            c.n
                        ));
                        out.push(p_text(c.t_p_value));
                        out.push(p_text(c.wilcoxon.p_value));
                        out.push(if sig { "✓".into() } else { String::new() });
                    }
                    _ => out.extend([
                        "no per-user pairs".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]),
                }
            }
        }
        lines.push(format!("| {} |", out.join(" | ")));
    }
    Ok(lines.join("\n") + "\n")
}

/// Metrics by the listeners' input size, pooled over seeds; on the `users` split also the
/// held-out listeners folded in from only their first 1, 3 and 5 items.
fn cold_start_table(loaded: &Loaded<'_>, plan: &Plan, s: &Section) -> Result<String> {
    let mut header = vec!["Model".to_string()];
    let mut counts = [0usize; 4];
    let mut rows = Vec::new();
    let mut foldin_given: BTreeSet<usize> = BTreeSet::new();
    for (label, keys) in &s.rows {
        let mut sums = [(0.0f64, 0usize); 4];
        let mut given: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
        for k in keys {
            if !loaded.metrics.contains_key(k.as_str()) {
                continue;
            }
            let path = loaded.dir(k).join(run::PER_USER_FILE);
            if !path.exists() {
                continue;
            }
            for u in read_per_user(&path, &plan.metric)? {
                let b = BUCKETS
                    .iter()
                    .position(|&(lo, hi, _)| u.n_input >= lo && u.n_input <= hi)
                    .unwrap_or(3);
                sums[b].0 += u.value;
                sums[b].1 += 1;
            }
            let foldin = loaded.dir(k).join(run::FOLDIN_FILE);
            if foldin.exists() {
                for u in read_per_user(&foldin, &plan.metric)? {
                    let e = given.entry(u.given).or_default();
                    e.0 += u.value;
                    e.1 += 1;
                    foldin_given.insert(u.given);
                }
            }
        }
        if rows.is_empty() {
            for (c, s) in counts.iter_mut().zip(&sums) {
                *c = s.1;
            }
        }
        rows.push((label.clone(), sums, given));
    }
    let metric = metric_title(&plan.metric);
    for (i, (_, _, name)) in BUCKETS.iter().enumerate() {
        header.push(format!("{metric}, {name} items (n = {})", counts[i]));
    }
    for g in &foldin_given {
        header.push(format!(
            "{metric}, new listener, {g} item{}",
            if *g == 1 { "" } else { "s" }
        ));
    }
    let mut lines = vec![
        format!("| {} |", header.join(" | ")),
        format!("|---|{}", "---:|".repeat(header.len() - 1)),
    ];
    for (label, sums, given) in rows {
        let mut out = vec![label];
        for (sum, n) in sums {
            out.push(if n == 0 {
                "—".into()
            } else {
                format!("{:.4}", sum / n as f64)
            });
        }
        for g in &foldin_given {
            out.push(match given.get(g) {
                Some(&(sum, n)) if n > 0 => format!("{:.4}", sum / n as f64),
                _ => "—".into(),
            });
        }
        lines.push(format!("| {} |", out.join(" | ")));
    }
    let mut text = lines.join("\n") + "\n";
    let _ = write!(
        text,
        "\nInput size: the listener's items in the model input at test time; n counts listener × seed pairs. Pooled over the seeds' runs.{}\n",
        if foldin_given.is_empty() {
            ""
        } else {
            " New listener: the held-out test listeners of the `users` split folded in from only their first n fold-in items (a seeded order), all their fold-in items still excluded from the ranking."
        }
    );
    Ok(text)
}

/// `results.csv`: one row per planned run (finished or not), every test and validation metric.
fn write_csv(path: &Path, loaded: &Loaded<'_>, plan: &Plan) -> Result<()> {
    let mut test_keys = BTreeSet::new();
    let mut valid_keys = BTreeSet::new();
    for m in loaded.metrics.values() {
        test_keys.extend(m.test.keys().cloned());
        valid_keys.extend(m.valid.keys().cloned());
    }
    let mut out = String::from("dataset,split,preset,label,model,seed,status,run,train_seconds,eval_seconds,epochs,best_epoch");
    for k in &test_keys {
        let _ = write!(out, ",test_{k}");
    }
    for k in &valid_keys {
        let _ = write!(out, ",valid_{k}");
    }
    out.push('\n');
    let csv = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    for r in &plan.runs {
        let m = loaded.metrics.get(r.key.as_str());
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{}",
            csv(&r.dataset),
            csv(&plan.datasets[&r.dataset].split),
            csv(r.preset.as_deref().unwrap_or("")),
            csv(&r.label),
            csv(&r.model),
            r.seed,
            if m.is_some() { "finished" } else { "missing" },
            csv(&r.dir.to_string_lossy())
        );
        match m {
            Some(m) => {
                let opt = |v: Option<usize>| v.map(|v| v.to_string()).unwrap_or_default();
                let _ = write!(
                    out,
                    ",{},{},{},{}",
                    m.train_seconds,
                    m.eval_seconds,
                    opt(m.epochs),
                    opt(m.best_epoch)
                );
                for k in &test_keys {
                    let _ = write!(
                        out,
                        ",{}",
                        m.test.get(k).map(|v| v.to_string()).unwrap_or_default()
                    );
                }
                for k in &valid_keys {
                    let _ = write!(
                        out,
                        ",{}",
                        m.valid.get(k).map(|v| v.to_string()).unwrap_or_default()
                    );
                }
            }
            None => out.push_str(&",".repeat(4 + test_keys.len() + valid_keys.len())),
        }
        out.push('\n');
    }
    encore_io::write_bytes(path, out.as_bytes())?;
    Ok(())
}
