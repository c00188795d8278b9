//! `encore recommend`: top-k for a known user, or for a history the model never saw (fold-in).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_core::run;

use crate::models;

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Examples:\n  encore recommend --run runs/pop-ml-100k-ratio-2020 --user 196 -k 10\n  encore recommend --run runs/pop-ml-100k-ratio-2020 --history 50,172,181 -k 5"
)]
pub struct RecommendArgs {
    /// A run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// A user id of the dataset (original id).
    #[arg(long, conflicts_with = "history")]
    pub user: Option<String>,
    /// A listening history as comma-separated item ids (original ids): a new listener.
    #[arg(long, value_delimiter = ',')]
    pub history: Option<Vec<String>>,
    /// How many recommendations.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
}

pub fn run(args: RecommendArgs) -> Result<()> {
    let loaded = run::load(&args.run)?;
    let model = loaded.model(&models::find(&loaded.info.model)?)?;
    let ds = &loaded.dataset;
    let s = &loaded.split;
    let n_items = model.n_items();
    let mut scores = vec![0f32; n_items];
    // Items the listener already heard are never recommended.
    let heard: Vec<u32> = match (&args.user, &args.history) {
        (Some(id), None) => {
            let u = ds
                .users
                .get(id)
                .with_context(|| format!("--user: `{id}` is not a user of {}", ds.name))?;
            model.score_users(&[u], &s.input, &mut scores);
            let known = s.input.union(&s.valid).union(&s.test);
            known.row(u as usize).to_vec()
        }
        (None, Some(history)) => {
            let mut items = Vec::with_capacity(history.len());
            for id in history {
                let id = id.trim();
                let i = ds
                    .items
                    .get(id)
                    .with_context(|| format!("--history: `{id}` is not an item of {}", ds.name))?;
                items.push(i);
            }
            items.sort_unstable();
            items.dedup();
            model.score_history(&items, &mut scores)?;
            items
        }
        _ => bail!("give --user ID or --history ID,ID,..."),
    };
    for &i in &heard {
        scores[i as usize] = f32::NEG_INFINITY;
    }
    let mut order: Vec<u32> = (0..n_items as u32)
        .filter(|&i| scores[i as usize] > f32::NEG_INFINITY)
        .collect();
    let k = args.k.min(order.len());
    let cmp = |a: &u32, b: &u32| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    };
    if k < order.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, cmp);
    }
    order.truncate(k);
    order.sort_unstable_by(cmp);
    println!("{:>4}  {:<20} {:>10}  name", "rank", "item_id", "score");
    for (r, &i) in order.iter().enumerate() {
        println!(
            "{:>4}  {:<20} {:>10.4}  {}",
            r + 1,
            ds.items.id(i),
            scores[i as usize],
            ds.item_names
                .as_ref()
                .map(|n| n[i as usize].as_str())
                .unwrap_or("")
        );
    }
    Ok(())
}
