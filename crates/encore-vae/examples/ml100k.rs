//! Train MultiVAE or MacridVAE on ml-100k with PEERS.md's protocol and report test metrics of
//! the best-validation checkpoint, to compare with RecBole 1.2.1's numbers.
//!
//! ```text
//! cargo run --release -p encore-vae --example ml100k -- \
//!     <multivae|macridvae> <original|recbole> <seed>[,<seed>...] [--split ratio|ratio-recbole]
//!     [--set key=value ...]
//! ```
//!
//! Data: `$ENCORE_ML100K` or `/work/shared/data/ml-100k/ml-100k.inter` (RecBole atomic file;
//! every rating is an interaction). Split: per-user random 80/10/10 with the seed; by default
//! `ratio-recbole`, the very split RecBole draws for that seed, so each seed compares with
//! RecBole's run of it (`--split ratio`: Encore's own draw). Validation excludes the training
//! items, test excludes training and validation items. The run folders go to
//! `$TMPDIR/encore-ml100k/<model>-<preset>-<seed>/`.

use std::path::PathBuf;

use encore_core::config::{resolve, ModelConfig, RunConfig};
use encore_core::trainer::{read_log, train, TrainData};
use encore_core::{ModelScorer, Recommender, Trainable};
use encore_data::readers::InteractionFormat;
use encore_data::split::{Split, SplitKind};
use encore_data::{Dataset, PrepareOptions};
use encore_eval::{evaluate, EvalOptions};
use encore_vae::{MacridVae, MacridVaeConfig, MultiVae, MultiVaeConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err(
            "usage: ml100k <multivae|macridvae> <original|recbole> <seeds> [--split S] [--set k=v ...]"
                .into(),
        );
    }
    let (model, preset) = (args[0].as_str(), args[1].as_str());
    let seeds: Vec<u64> = args[2]
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let mut sets = vec![format!("preset={preset}")];
    let mut split_kind = SplitKind::RatioRecbole;
    let mut rest = args[3..].iter();
    while let Some(a) = rest.next() {
        if a == "--set" {
            sets.push(rest.next().ok_or("--set needs key=value")?.clone());
        } else if a == "--split" {
            split_kind = rest.next().ok_or("--split needs a split name")?.parse()?;
        } else {
            return Err(format!("unexpected argument `{a}`").into());
        }
    }
    let path = std::env::var_os("ENCORE_ML100K")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/work/shared/data/ml-100k/ml-100k.inter".into());
    let (dataset, _) = Dataset::import(
        &InteractionFormat::RecBole,
        &path,
        &PrepareOptions::default(),
    )?;
    eprintln!(
        "{}: {} users, {} items, {} interactions; {} rayon threads",
        path.display(),
        dataset.matrix.n_users(),
        dataset.matrix.n_items(),
        dataset.matrix.nnz(),
        rayon::current_num_threads()
    );
    let mut ndcgs = Vec::new();
    for &seed in &seeds {
        let split = Split::make(&dataset, split_kind, seed)?;
        // The seed draws the split, the initial weights and the training stream, unless
        // `--set init_seed=..` / `--set train.seed=..` fix the latter two (to tell the split's
        // share of the variance from the training randomness's).
        let mut seed_sets = vec![
            sets[0].clone(),
            format!("train.seed={seed}"),
            format!("init_seed={seed}"),
        ];
        seed_sets.extend(sets[1..].iter().cloned());
        let run_dir = std::env::temp_dir()
            .join("encore-ml100k")
            .join(format!("{model}-{preset}-{seed}-{}", std::process::id()));
        let n_items = dataset.matrix.n_items();
        let ndcg = match model {
            "multivae" => {
                let cfg: RunConfig<MultiVaeConfig> = resolve(None, &seed_sets)?;
                let mut m = MultiVae::new(cfg.model.clone(), n_items)?;
                run(&mut m, &cfg, &split, &run_dir, seed, |d| {
                    Ok(Box::new(MultiVae::load(d)?))
                })?
            }
            "macridvae" => {
                let cfg: RunConfig<MacridVaeConfig> = resolve(None, &seed_sets)?;
                let mut m = MacridVae::new(cfg.model.clone(), n_items)?;
                run(&mut m, &cfg, &split, &run_dir, seed, |d| {
                    Ok(Box::new(MacridVae::load(d)?))
                })?
            }
            other => return Err(format!("unknown model `{other}`").into()),
        };
        ndcgs.push(ndcg);
    }
    let mean = ndcgs.iter().sum::<f64>() / ndcgs.len() as f64;
    let sd = (ndcgs.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
        / (ndcgs.len().max(2) - 1) as f64)
        .sqrt();
    println!("{model} {preset}: test ndcg@10 mean {mean:.4} sd {sd:.4} over seeds {seeds:?}");
    Ok(())
}

fn run<T: ModelConfig>(
    model: &mut dyn Trainable,
    cfg: &RunConfig<T>,
    split: &Split,
    run_dir: &std::path::Path,
    seed: u64,
    load: impl Fn(&std::path::Path) -> Result<Box<dyn Recommender>, Box<dyn std::error::Error>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(run_dir)?;
    cfg.write(&run_dir.join("config.toml"))?;
    let data = TrainData {
        train: &split.train,
        input: &split.input,
        valid: &split.valid,
    };
    let outcome = train(model, &data, &cfg.train, run_dir, false)?;
    let best = load(&run_dir.join("model"))?;
    let opts = EvalOptions {
        ks: vec![10],
        batch_size: 1024,
        keep_per_user: false,
    };
    let scorer = ModelScorer {
        model: best.as_ref(),
        input: &split.input,
    };
    let test = evaluate(&scorer, &[&split.input, &split.valid], &split.test, &opts);
    let log = read_log(&run_dir.join("log.jsonl"))?;
    let train_s: Vec<f64> = log.iter().map(|l| l.epoch_seconds).collect();
    let eval_s: Vec<f64> = log
        .iter()
        .filter(|l| l.valid.is_some())
        .map(|l| l.eval_seconds)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let g = |k: &str| test.get(k).unwrap_or(f64::NAN);
    println!(
        "seed {seed}: best epoch {} of {} (stopped early: {}), valid ndcg@10 {:.4}; test ndcg@10 {:.4} mrr@10 {:.4} recall@10 {:.4} hit@10 {:.4}; train {:.3} s/epoch, eval {:.3} s, total {:.1} s",
        outcome.best_epoch.map(|e| e + 1).unwrap_or(0),
        outcome.epochs_run,
        outcome.stopped_early,
        outcome.best_valid.as_ref().and_then(|r| r.get("ndcg@10")).unwrap_or(f64::NAN),
        g("ndcg@10"),
        g("mrr@10"),
        g("recall@10"),
        g("hit@10"),
        mean(&train_s),
        mean(&eval_s),
        outcome.seconds,
    );
    Ok(g("ndcg@10"))
}
