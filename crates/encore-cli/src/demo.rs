//! `encore demo`: the main job on a fresh machine. Generates the synthetic `small` music world,
//! imports it, splits it, trains every model that exists (and the tensor-conditioned
//! MultiVAE-C and MacridVAE-C, and MultiVAE and MacridVAE with latent diffusion), prints a
//! results table, and leaves everything in one directory.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use encore_data::synth::Preset;

use crate::data::{self, DataSource, FormatName, ImportArgs};
use crate::features::FeatureSources;
use crate::models;
use crate::train::{self, table, TrainArgs};

#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  encore demo\n  encore demo --out runs/my-demo --seed 11")]
pub struct DemoArgs {
    /// Where to put the world, the prepared dataset and the runs (replaced if it holds an
    /// earlier demo).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Seed of the synthetic world.
    #[arg(long, default_value_t = 7)]
    pub world_seed: u64,
    /// Seed of the split and the models.
    #[arg(long, default_value_t = 2020)]
    pub seed: u64,
}

const MARKER: &str = "demo.json";

pub fn run(args: DemoArgs) -> Result<()> {
    let start = std::time::Instant::now();
    if args.out.exists() {
        if !args.out.join(MARKER).exists() {
            bail!(
                "--out {}: exists and does not hold an earlier demo; choose another directory",
                args.out.display()
            );
        }
        std::fs::remove_dir_all(&args.out)?;
    }
    std::fs::create_dir_all(&args.out)?;
    encore_io::write_json(
        &args.out.join(MARKER),
        &serde_json::json!({"world_seed": args.world_seed, "seed": args.seed}),
    )?;

    let world = args.out.join("world");
    println!(
        "[1/3] generating the synthetic `small` music world (seed {})",
        args.world_seed
    );
    let summary = data::synthesise(Preset::Small, args.world_seed, &world)?;
    println!("{summary}");

    println!("[2/3] importing it (Onion layout, 5-core filter)");
    let prepared = args.out.join("data");
    let (ds, _) = data::import(&ImportArgs {
        format: FormatName::Onion,
        input: world.clone(),
        out: prepared.clone(),
        min_user_interactions: 5,
        min_item_interactions: 5,
        first_rows: None,
        threshold: None,
        delimiter: ",".into(),
        user_col: String::new(),
        item_col: String::new(),
        value_col: None,
        timestamp_col: None,
    })?;
    println!("{}", ds.stats());

    println!(
        "[3/3] training every model on the ratio split (seed {})",
        args.seed
    );
    let ks = vec![5, 10, 20];
    let mut results = Vec::new();
    // Every model, then the conditioned MultiVAE and MacridVAE (tensor fusion of the world's
    // audio descriptors and its 768-d lyrics-embedding stand-in; SPEC §3), then the two with
    // latent diffusion (MODELS.md "Latent diffusion", the `diffrec` schedule; within the
    // demo's budget a 256-wide denoiser and validation every 5 epochs: scoring runs the
    // 40-step chain, for MacridVAE once per facet).
    let plain = FeatureSources::default();
    let mut entries: Vec<(String, &str, FeatureSources, Vec<String>)> = models::registry()
        .iter()
        .map(|e| (e.name.to_string(), e.name, plain.clone(), Vec::new()))
        .collect();
    let world_features = FeatureSources {
        audio: Some(world.join("id_ivec512.tsv")),
        lyrics: Some(world.join("id_lyrics_bert.tsv")),
    };
    for model in ["multivae", "macridvae"] {
        entries.push((
            format!("{model}-c"),
            model,
            world_features.clone(),
            vec!["conditioning=\"tensor\"".into()],
        ));
    }
    for model in ["multivae", "macridvae"] {
        entries.push((
            format!("{model}-diff"),
            model,
            plain.clone(),
            vec![
                "diffusion=\"diffrec\"".into(),
                "denoiser_hidden=[256, 256]".into(),
                "train.eval_every=5".into(),
            ],
        ));
    }
    for (label, model, features, extra) in entries {
        let t = std::time::Instant::now();
        let mut sets = demo_sets(model);
        sets.extend(extra);
        let r = train::train(&TrainArgs {
            model: model.to_string(),
            config: None,
            sets,
            resume: false,
            source: DataSource {
                data: Some(prepared.clone()),
                split: Some("ratio".into()),
                split_dir: None,
            },
            seed: Some(args.seed),
            k: ks.clone(),
            out: Some(args.out.join("runs").join(&label)),
            features,
        })?;
        println!("  {label:<14} done in {:.1} s", t.elapsed().as_secs_f64());
        results.push((label, r));
    }
    let rows: Vec<(String, &encore_eval::MetricReport)> =
        results.iter().map(|(m, r)| (m.clone(), &r.test)).collect();
    let text = table(&rows, &ks);
    println!("\nTest metrics (full ranking, train and valid items excluded):\n{text}");
    let json: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(m, r)| {
            (
                m.clone(),
                serde_json::to_value(&r.metrics).expect("metrics serialise"),
            )
        })
        .collect();
    encore_io::write_json(&args.out.join("results.json"), &json)?;
    println!(
        "everything is in {} (world/, data/, runs/<model>/, results.json); {:.1} s in all",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The demo's budget: a bounded number of epochs per model so the whole demo stays within
/// two minutes on two cores (every other setting is the model's default preset). The
/// diffusion models made the demo shorten every trained model's epochs (README "Results").
fn demo_sets(model: &str) -> Vec<String> {
    match model {
        "bpr" => vec!["train.epochs=40".into()],
        "lightgcn" => vec!["train.epochs=15".into()],
        "multivae" => vec!["train.epochs=25".into()],
        "macridvae" => vec!["train.epochs=15".into()],
        // Validation every 5 epochs (DiffRec's protocol): 3 evaluations.
        "diffrec" => vec!["train.epochs=15".into()],
        _ => Vec::new(),
    }
}
