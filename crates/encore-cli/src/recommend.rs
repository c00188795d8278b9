//! `encore recommend`: top-k for a known user, for a history the model never saw (fold-in),
//! or for every user at once (the batch export `encore evaluate --recommendations` reads).
//! Each goes through `encore_serve::ServedRun`, the code the HTTP service answers with, so the
//! command line and the service give the same items, order and scores.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_serve::{ExportPart, Scored, ServedRun};

use crate::evaluate::Part;
use crate::{models, progress};

#[derive(Args, Clone, Debug)]
#[command(
    after_help = "Examples:\n  encore recommend --run runs/pop-ml-100k-ratio-2020 --user 196 -k 10\n  encore recommend --run runs/pop-ml-100k-ratio-2020 --history 50,172,181 -k 5\n  encore recommend --run runs/mvae --all-users --on test -k 100 --out recs.tsv\n  encore evaluate --split runs/mvae/split --recommendations recs.tsv --k 10,20\n\nA known user never gets what they heard (model input, validation and test items); a history\nnever gets its own items. Ids of a history that are not in the catalogue are skipped and\nreported; it is an error only when none is known. --all-users writes\n`user_id<TAB>item_id<TAB>rank<TAB>score` for every user, excluding what the evaluation\nprotocol excludes for --on (test: model input and validation items; valid: model input)."
)]
pub struct RecommendArgs {
    /// A run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// A user id of the dataset (original id).
    #[arg(long, conflicts_with_all = ["history", "all_users"])]
    pub user: Option<String>,
    /// A listening history as comma-separated item ids (original ids): a new listener.
    #[arg(long, value_delimiter = ',', conflicts_with = "all_users")]
    pub history: Option<Vec<String>>,
    /// Every user's top-k, written to --out.
    #[arg(long, requires = "out")]
    pub all_users: bool,
    /// With --all-users: the part of the split the lists are for (what is excluded).
    #[arg(long, value_enum, default_value = "test", requires = "all_users")]
    pub on: Part,
    /// With --all-users: the file to write (atomically).
    #[arg(long, requires = "all_users")]
    pub out: Option<PathBuf>,
    /// How many recommendations.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
}

pub fn run(args: RecommendArgs) -> Result<()> {
    if args.k == 0 {
        bail!("-k: expected a positive number of recommendations, got 0");
    }
    if args.user.is_none() && args.history.is_none() && !args.all_users {
        bail!("give --user ID, --history ID,ID,... or --all-users --out FILE");
    }
    let run = ServedRun::load("run", &args.run, &models::registry())
        .with_context(|| format!("--run {}", args.run.display()))?;
    if args.all_users {
        let out = args.out.as_deref().expect("clap requires --out");
        return export(&run, args.on, args.k, out);
    }
    let items = match (&args.user, &args.history) {
        (Some(id), _) => {
            let u = run.dataset.users.get(id.trim()).with_context(|| {
                format!(
                    "--user: `{id}` is not a user of {} ({} users)",
                    run.dataset.name,
                    run.dataset.users.len()
                )
            })?;
            run.recommend_user(u, &[], args.k)
        }
        (None, Some(ids)) => {
            let history = run.resolve_history(ids);
            if history.items.is_empty() {
                bail!(
                    "--history: none of the {} ids is in the catalogue of {} ({} items): {}",
                    history.ignored.len(),
                    run.dataset.name,
                    run.n_items(),
                    history.ignored.join(", ")
                );
            }
            if !history.ignored.is_empty() {
                eprintln!(
                    "warning: --history: skipped {} id(s) not in the catalogue of {}: {}",
                    history.ignored.len(),
                    run.dataset.name,
                    history.ignored.join(", ")
                );
            }
            run.recommend_history(&history.items, &[], args.k)?
        }
        (None, None) => unreachable!("checked above"),
    };
    print_list(&run, &items);
    Ok(())
}

fn print_list(run: &ServedRun, items: &[Scored]) {
    println!("{:>4}  {:<20} {:>10}  name", "rank", "item_id", "score");
    for (r, s) in items.iter().enumerate() {
        println!(
            "{:>4}  {:<20} {:>10.4}  {}",
            r + 1,
            run.item_id(s.item),
            s.score,
            run.item_name(s.item).unwrap_or("")
        );
    }
}

fn export(run: &ServedRun, on: Part, k: usize, out: &std::path::Path) -> Result<()> {
    let part = match on {
        Part::Test => ExportPart::Test,
        Part::Valid => ExportPart::Valid,
    };
    let bar = progress::bar(run.dataset.users.len() as u64, "users");
    let mut summary = None;
    encore_io::write_atomic(out, |w| {
        summary = Some(run.export_all_users(part, k, w, &|n| bar.inc(n))?);
        Ok(())
    })?;
    bar.finish_and_clear();
    let summary = summary.expect("written");
    let excluded = match part {
        ExportPart::Test => "model input and validation items excluded",
        ExportPart::Valid => "model input excluded",
    };
    println!(
        "wrote the top {k} of {} users ({} lines; {excluded}) to {}",
        summary.users,
        summary.lines,
        out.display()
    );
    Ok(())
}
