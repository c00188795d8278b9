//! The issue's benchmark table: seconds per training epoch and peak memory of BPR-MF and
//! LightGCN on ml-100k and at Music4All-Onion scale (the synthetic `onion` preset of
//! `encore_data::synth`: 119,140 users x 56,512 items, about 50M interactions), with the
//! torch-exact dense Adam and with `sparse_adam`. Run by hand (a few minutes plus what the
//! knobs ask for; needs about 3 GB of memory):
//!
//! ```text
//! cargo run --release -p encore-baselines --example baselines_scale
//! ```
//!
//! Knobs (environment): `ENCORE_SCALE_BPR_EPOCHS` full sparse-Adam BPR epochs at Onion scale
//! (default 1), `ENCORE_SCALE_DENSE_STEPS` dense-Adam BPR steps (default 40),
//! `ENCORE_SCALE_LGCN_STEPS` LightGCN steps per optimiser (default 3),
//! `ENCORE_SCALE_ONION=0` to skip the Onion rows. The ml-100k rows need the shared data folder
//! (`/work/shared/data/ml-100k`) and are left out without it.
//!
//! Where a full epoch is impractical (dense BPR, LightGCN at Onion scale) the epoch time is
//! **extrapolated**: the time to the end of the first step (which includes the epoch's
//! set-up: the interaction-owner table and the shuffle of 50M positions) minus one step,
//! plus `batches per epoch x` the mean step interval; the range uses the fastest and slowest
//! measured interval. Peak memory is the process's VmHWM (`/proc/self/status`), reset
//! between rows through `/proc/self/clear_refs` (so each row's peak includes what the earlier
//! rows still hold: the training matrix, and the model being measured).

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use encore_baselines::bpr::{Bpr, BprConfig};
use encore_baselines::lightgcn::{LightGcn, LightGcnConfig};
use encore_core::config::Preset;
use encore_core::{EpochContext, Trainable};
use encore_data::InteractionMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Peak resident memory of the process since the last reset, in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Reset the peak to the current resident size (Linux >= 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Timings of the first `max_batches` batches of one epoch.
struct Steps {
    /// Seconds from the start to the end of each step.
    ends: Vec<f64>,
}

impl Steps {
    fn run(
        train: &InteractionMatrix,
        max_batches: usize,
        f: impl FnOnce(EpochContext<'_>, usize),
    ) -> Self {
        let ends = Mutex::new(Vec::new());
        let start = Instant::now();
        let progress = |_: u64| ends.lock().unwrap().push(start.elapsed().as_secs_f64());
        let mut rng = ChaCha8Rng::seed_from_u64(2020);
        f(
            EpochContext {
                train,
                epoch: 0,
                rng: &mut rng,
                progress: &progress,
            },
            max_batches,
        );
        Self {
            ends: ends.into_inner().unwrap(),
        }
    }

    /// (estimate, low, high) seconds for an epoch of `n_batches`, and the mean step.
    fn extrapolate(&self, n_batches: usize) -> (f64, f64, f64, f64) {
        let e = &self.ends;
        let intervals: Vec<f64> = e.windows(2).map(|w| w[1] - w[0]).collect();
        if intervals.is_empty() {
            return (e[0] * n_batches as f64, f64::NAN, f64::NAN, e[0]);
        }
        let mean = intervals.iter().sum::<f64>() / intervals.len() as f64;
        let lo = intervals.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = intervals.iter().cloned().fold(0.0, f64::max);
        let setup = (e[0] - mean).max(0.0);
        let n = n_batches as f64;
        (setup + n * mean, setup + n * lo, setup + n * hi, mean)
    }
}

fn row(model: &str, data: &str, opt: &str, how: &str, secs: &str, peak: f64) {
    println!("| {model} | {data} | {opt} | {how} | {secs} | {peak:.0} |");
}

/// Full epochs: min-max seconds per epoch.
fn full_epochs(model: &mut dyn Trainable, train: &InteractionMatrix, epochs: usize) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(2020);
    let progress = |_: u64| {};
    let secs: Vec<f64> = (0..epochs)
        .map(|epoch| {
            let t = Instant::now();
            model
                .train_epoch(EpochContext {
                    train,
                    epoch,
                    rng: &mut rng,
                    progress: &progress,
                })
                .unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let lo = secs.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = secs.iter().cloned().fold(0.0, f64::max);
    format!("{lo:.3}-{hi:.3}")
}

fn configs() -> [(&'static str, bool); 2] {
    [("dense Adam", false), ("sparse_adam", true)]
}

fn main() {
    let threads = rayon::current_num_threads();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{threads} rayon threads; load average at start: {}",
        load.trim()
    );
    println!("| model | data | optimiser | measured | s/epoch | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");

    // ml-100k (recbole preset, ratio split 2020): 5 full epochs each.
    let ml = Path::new("/work/shared/data/ml-100k/ml-100k.inter");
    if ml.exists() {
        use encore_data::readers::InteractionFormat;
        use encore_data::{Dataset, PrepareOptions, Split, SplitKind};
        let (ds, _) =
            Dataset::import(&InteractionFormat::RecBole, ml, &PrepareOptions::default()).unwrap();
        let split = Split::make(&ds, SplitKind::Ratio, 2020).unwrap();
        let train = &split.train;
        for (opt, sparse) in configs() {
            reset_peak();
            let cfg = BprConfig {
                sparse_adam: sparse,
                ..BprConfig::preset(Preset::Recbole)
            };
            let mut m = Bpr::new(&cfg, train, 2020).unwrap();
            let s = full_epochs(&mut m, train, 5);
            row("BPR-MF", "ml-100k", opt, "5 epochs", &s, peak_mib());
        }
        for (opt, sparse) in configs() {
            reset_peak();
            let cfg = LightGcnConfig {
                sparse_adam: sparse,
                ..LightGcnConfig::preset(Preset::Recbole)
            };
            let mut m = LightGcn::new(&cfg, train, 2020).unwrap();
            let s = full_epochs(&mut m, train, 5);
            row("LightGCN", "ml-100k", opt, "5 epochs", &s, peak_mib());
        }
    }
    if env_usize("ENCORE_SCALE_ONION", 1) == 0 {
        return;
    }

    // Onion scale.
    reset_peak();
    let t = Instant::now();
    let world = encore_data::synth::generate(
        &encore_data::synth::SynthConfig::preset(encore_data::synth::Preset::Onion),
        1,
    )
    .unwrap();
    let train = world.interaction_matrix();
    drop(world);
    println!(
        "onion synth: {} users x {} items, {} interactions, generated in {:.1} s, peak {:.0} MiB",
        train.n_users(),
        train.n_items(),
        train.nnz(),
        t.elapsed().as_secs_f64(),
        peak_mib()
    );
    let batches = train.nnz().div_ceil(2048);
    let data = "onion synth";

    // BPR-MF with sparse_adam: full epochs.
    reset_peak();
    let cfg = BprConfig {
        sparse_adam: true,
        ..BprConfig::preset(Preset::Recbole)
    };
    let mut m = Bpr::new(&cfg, &train, 2020).unwrap();
    let n = env_usize("ENCORE_SCALE_BPR_EPOCHS", 1);
    if n > 0 {
        let s = full_epochs(&mut m, &train, n);
        row(
            "BPR-MF",
            data,
            "sparse_adam",
            &format!("{n} full epoch(s)"),
            &s,
            peak_mib(),
        );
    }
    // BPR-MF, both optimisers, bounded steps (dense: extrapolated).
    for (opt, sparse) in configs() {
        reset_peak();
        let cfg = BprConfig {
            sparse_adam: sparse,
            ..BprConfig::preset(Preset::Recbole)
        };
        let mut m = Bpr::new(&cfg, &train, 2020).unwrap();
        let k = env_usize("ENCORE_SCALE_DENSE_STEPS", 40);
        let steps = Steps::run(&train, k, |ctx, k| {
            m.train_batches(ctx, k).unwrap();
        });
        let (est, lo, hi, step) = steps.extrapolate(batches);
        row(
            "BPR-MF",
            data,
            opt,
            &format!(
                "{k} steps of {batches}, {:.1} ms/step, extrapolated",
                step * 1e3
            ),
            &format!("{est:.0} ({lo:.0}-{hi:.0})"),
            peak_mib(),
        );
    }
    drop(m);

    // LightGCN: bounded steps, extrapolated.
    for (opt, sparse) in configs() {
        reset_peak();
        let cfg = LightGcnConfig {
            sparse_adam: sparse,
            ..LightGcnConfig::preset(Preset::Recbole)
        };
        let t = Instant::now();
        let mut m = LightGcn::new(&cfg, &train, 2020).unwrap();
        let build = t.elapsed().as_secs_f64();
        let k = env_usize("ENCORE_SCALE_LGCN_STEPS", 3);
        let steps = Steps::run(&train, k, |ctx, k| {
            m.train_batches(ctx, k).unwrap();
        });
        let (est, lo, hi, step) = steps.extrapolate(batches);
        row(
            "LightGCN",
            data,
            opt,
            &format!(
                "{k} steps of {batches}, {step:.2} s/step, extrapolated (graph build + one \
                 full propagation {build:.1} s)"
            ),
            &format!("{est:.0} ({lo:.0}-{hi:.0}) = {:.1} h", est / 3600.0),
            peak_mib(),
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
}
