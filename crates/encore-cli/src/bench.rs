//! `encore bench`: time the data hot paths at Music4All-Onion scale and print a table.
//!
//! Measures, on the synthetic world of the chosen preset: import + CSR build (time, peak
//! memory), cache write, cache reload (time, peak memory), and full-ranking evaluation of Pop
//! (users per second). Peak memory is the process's resident high-water mark, reset between
//! phases through `/proc/self/clear_refs` (Linux).
//!
//! `encore bench serve` load-tests the HTTP service instead (`crate::serve::bench`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use encore_baselines::Pop;
use encore_core::ModelScorer;
use encore_data::readers::InteractionFormat;
use encore_data::synth::{self, Preset, SynthConfig};
use encore_data::{cache, Dataset, PrepareOptions};
use encore_eval::{evaluate, EvalOptions};

#[derive(Args, Clone, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  encore bench --preset onion --work-dir /tmp/encore-bench\n  encore bench --preset small\n  encore bench serve --run runs/onion-multivae --clients 2 --requests 5000\n\nThe work directory holds the generated world (about 4 GB for onion) and is removed at the end\nunless --keep is given; an existing world there is reused."
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Synthetic world size.
    #[arg(long, default_value = "onion")]
    pub preset: String,
    /// Seed of the world.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Scratch directory for the generated files.
    #[arg(long, default_value = "/tmp/encore-bench")]
    pub work_dir: PathBuf,
    /// Keep the work directory afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Evaluate at most this many users (all when absent).
    #[arg(long)]
    pub eval_users: Option<usize>,
}

#[derive(Subcommand, Clone, Debug)]
pub enum BenchCommand {
    /// Load-test the HTTP service on loopback: concurrent clients, a fixed request count, a
    /// share of malformed requests; throughput, latency percentiles, statuses, memory.
    Serve(crate::serve::BenchServeArgs),
}

/// Resident-set high-water mark in MiB, and reset it (Linux; `None` elsewhere).
fn peak_rss_mib_and_reset() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    Some(kb / 1024.0)
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(BenchCommand::Serve(serve)) = args.command {
        return crate::serve::bench(serve);
    }
    let preset: Preset = args
        .preset
        .parse()
        .map_err(|e| anyhow::anyhow!("--preset: {e}"))?;
    let world = args.work_dir.join(format!("world-{preset}-{}", args.seed));
    let mut rows: Vec<(String, String, String)> = Vec::new();
    if !world.exists() {
        let t = Instant::now();
        let w = synth::generate(&SynthConfig::preset(preset), args.seed)?;
        synth::write_onion_layout(&w, &world)?;
        rows.push((
            "generate + write world".into(),
            format!("{:.1} s", t.elapsed().as_secs_f64()),
            String::new(),
        ));
    }
    peak_rss_mib_and_reset();

    let t = Instant::now();
    let (ds, _) = Dataset::import(
        &InteractionFormat::Onion,
        &world,
        &PrepareOptions::default(),
    )?;
    let import_s = t.elapsed().as_secs_f64();
    let mem = peak_rss_mib_and_reset()
        .map(|m| format!("{m:.0} MiB peak"))
        .unwrap_or_default();
    rows.push((
        format!("import + CSR ({} interactions)", ds.matrix.nnz()),
        format!("{import_s:.1} s"),
        mem,
    ));

    let cache_path = args.work_dir.join("dataset.bin");
    let t = Instant::now();
    cache::save(&ds, &cache_path)?;
    rows.push((
        "cache write".into(),
        format!("{:.2} s", t.elapsed().as_secs_f64()),
        String::new(),
    ));
    let split_src = ds.matrix.clone();
    drop(ds);
    peak_rss_mib_and_reset();
    let t = Instant::now();
    let ds = cache::load(&cache_path).context("reloading the cache")?;
    let reload_s = t.elapsed().as_secs_f64();
    let mem = peak_rss_mib_and_reset()
        .map(|m| format!("{m:.0} MiB peak"))
        .unwrap_or_default();
    rows.push(("cache reload".into(), format!("{reload_s:.2} s"), mem));
    assert_eq!(ds.matrix, split_src, "the cache reloads the same matrix");
    drop(split_src);

    let split = encore_data::Split::make(&ds, encore_data::SplitKind::Ratio, 2020)?;
    let pop = Pop::fit(&split.train);
    let targets = match args.eval_users {
        Some(n) => {
            let rows: Vec<&[u32]> = (0..split.test.n_users())
                .map(|u| if u < n { split.test.row(u) } else { &[] })
                .collect();
            encore_data::InteractionMatrix::from_rows(split.test.n_items(), &rows)
        }
        None => split.test.clone(),
    };
    let opts = EvalOptions {
        ks: vec![10, 20],
        ..EvalOptions::default()
    };
    let scorer = ModelScorer {
        model: &pop,
        input: &split.input,
    };
    let t = Instant::now();
    let report = evaluate(&scorer, &[&split.input, &split.valid], &targets, &opts);
    let eval_s = t.elapsed().as_secs_f64();
    rows.push((
        format!(
            "Pop full-ranking eval ({} users x {} items, {} threads)",
            report.n_evaluated,
            ds.matrix.n_items(),
            rayon::current_num_threads()
        ),
        format!("{eval_s:.2} s"),
        format!("{:.0} users/s", report.n_evaluated as f64 / eval_s),
    ));

    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    println!("{:<w$}  {:>10}  result", "phase", "time");
    for (a, b, c) in &rows {
        println!("{a:<w$}  {b:>10}  {c}");
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&args.work_dir);
    }
    Ok(())
}
