//! `encore data ...`: synthesise, import, inspect and split datasets.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use encore_data::readers::{CsvColumns, InteractionFormat};
use encore_data::synth::{self, Preset, SynthConfig};
use encore_data::{cache, Dataset, PrepareOptions, Split, SplitKind};
use serde::{Deserialize, Serialize};

/// The file inside a prepared dataset directory describing it.
pub const INFO_FILE: &str = "dataset.json";

#[derive(Subcommand)]
pub enum DataCommand {
    /// Import interactions into a prepared dataset directory (binary cache + description).
    #[command(
        after_help = "Examples:\n  encore data import --format recbole --input ../shared/data/ml-100k --out data/ml-100k\n  encore data import --format hetrec-lastfm --input ../shared/data/hetrec-lastfm-2k --out data/lastfm\n  encore data import --format onion --input onion/userid_trackid_count.tsv.bz2 --first-rows 1000000 --out data/onion-1m\n  encore data import --format csv --input plays.csv --user-col listener --item-col track --value-col plays --threshold 2 --out data/plays"
    )]
    Import(ImportArgs),
    /// Print users, items, interactions, density and count quantiles of a prepared dataset.
    #[command(after_help = "Example:\n  encore data stats data/ml-100k")]
    Stats {
        /// A prepared dataset directory (from `encore data import`).
        dir: PathBuf,
    },
    /// Generate the built-in synthetic music world in the Music4All-Onion file layout.
    #[command(
        after_help = "Examples:\n  encore data synth --preset small --seed 7 --out data/small\n  encore data synth --preset onion --seed 1 --out /tmp/onion"
    )]
    Synth {
        /// World size: tiny (tests), small (the demo), onion (Music4All-Onion scale).
        #[arg(long, default_value = "small")]
        preset: String,
        /// Random seed; the same seed gives byte-identical files.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Output directory (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Split a prepared dataset and save the split directory (for use by other tools).
    #[command(
        after_help = "Example:\n  encore data split --data data/ml-100k --split ratio --seed 2020 --out splits/ml-100k-2020"
    )]
    Split {
        /// A prepared dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// ratio, ratio-recbole (RecBole 1.2.1's exact split for the seed), users, temporal or
        /// temporal-global.
        #[arg(long, default_value = "ratio")]
        split: String,
        #[arg(long, default_value_t = 2020)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FormatName {
    Onion,
    Recbole,
    Movielens,
    HetrecLastfm,
    Csv,
}

#[derive(Args, Clone, Debug)]
pub struct ImportArgs {
    /// Input format.
    #[arg(long, value_enum)]
    pub format: FormatName,
    /// Input file or directory.
    #[arg(long)]
    pub input: PathBuf,
    /// Output directory (must not exist; nothing is left behind if the import fails).
    #[arg(long)]
    pub out: PathBuf,
    /// k-core: minimum interactions per user (the paper: 5).
    #[arg(long, default_value_t = 0)]
    pub min_user_interactions: usize,
    /// k-core: minimum interactions per item (the paper: 5).
    #[arg(long, default_value_t = 0)]
    pub min_item_interactions: usize,
    /// Read only the first N data rows.
    #[arg(long)]
    pub first_rows: Option<u64>,
    /// Keep only rows whose rating / count is at least this value.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// CSV: field delimiter (`,` or `tab`).
    #[arg(long, default_value = ",")]
    pub delimiter: String,
    /// CSV: the user column's name.
    #[arg(long, default_value = "user_id")]
    pub user_col: String,
    /// CSV: the item column's name.
    #[arg(long, default_value = "item_id")]
    pub item_col: String,
    /// CSV: the rating / count column's name, if any.
    #[arg(long)]
    pub value_col: Option<String>,
    /// CSV: the Unix-seconds timestamp column's name, if any.
    #[arg(long)]
    pub timestamp_col: Option<String>,
}

/// What `dataset.json` records about a prepared dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub source: PathBuf,
    pub format: FormatName,
    pub options: PrepareOptions,
    pub report: encore_data::dataset::PrepareReport,
    pub fingerprint: String,
    pub stats: encore_data::dataset::DatasetStats,
    pub import_seconds: f64,
}

impl ImportArgs {
    fn format(&self) -> Result<InteractionFormat> {
        Ok(match self.format {
            FormatName::Onion => InteractionFormat::Onion,
            FormatName::Recbole => InteractionFormat::RecBole,
            FormatName::Movielens => InteractionFormat::MovieLens,
            FormatName::HetrecLastfm => InteractionFormat::HetrecLastfm,
            FormatName::Csv => {
                let delimiter = match self.delimiter.as_str() {
                    "tab" | "\\t" | "\t" => b'\t',
                    d if d.len() == 1 => d.as_bytes()[0],
                    d => bail!("--delimiter: expected one character or `tab`, got `{d}`"),
                };
                InteractionFormat::Csv(CsvColumns {
                    delimiter,
                    user: self.user_col.clone(),
                    item: self.item_col.clone(),
                    value: self.value_col.clone(),
                    timestamp: self.timestamp_col.clone(),
                })
            }
        })
    }

    fn options(&self) -> PrepareOptions {
        PrepareOptions {
            threshold: self.threshold,
            min_user_interactions: self.min_user_interactions,
            min_item_interactions: self.min_item_interactions,
            first_rows: self.first_rows,
        }
    }
}

/// Where `train` and `tune` take their interactions and split from: a prepared dataset cut by
/// a split protocol, or a saved split directory (with or without the dataset).
#[derive(Args, Clone, Debug, Default)]
pub struct DataSource {
    /// A prepared dataset directory (`encore data import`). Optional with --split-dir.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Split protocol (default ratio): ratio, ratio-recbole (RecBole 1.2.1's exact split for
    /// the seed), users, temporal or temporal-global.
    #[arg(long, conflicts_with = "split_dir")]
    pub split: Option<String>,
    /// A saved split directory (train.tsv, valid.tsv, test.tsv, split.json) to train and
    /// evaluate on.
    #[arg(long)]
    pub split_dir: Option<PathBuf>,
}

impl DataSource {
    /// The split protocol's name (`ratio` unless --split says otherwise); `None` with
    /// --split-dir.
    pub fn protocol(&self) -> Option<String> {
        match &self.split_dir {
            Some(_) => None,
            None => Some(self.split.clone().unwrap_or_else(|| "ratio".into())),
        }
    }

    /// Refuse, before any work, what cannot name a split: neither --data nor --split-dir,
    /// or an unknown protocol.
    pub fn check(&self) -> Result<()> {
        if self.data.is_none() && self.split_dir.is_none() {
            bail!("--data is required unless --split-dir is given");
        }
        if let Some(split) = &self.split {
            split.parse::<SplitKind>().context("--split")?;
        }
        Ok(())
    }

    /// The dataset and the split: the protocol applied to the dataset with `seed`, or the
    /// saved split directory (its dataset rebuilt from the split's files when --data is
    /// not given).
    pub fn load(&self, seed: u64) -> Result<(Dataset, Split)> {
        let dataset = self.data.as_deref().map(load).transpose()?;
        match (&self.split, &self.split_dir) {
            (Some(_), Some(_)) => bail!("give either --split or --split-dir, not both"),
            (_, Some(dir)) => {
                let loaded = Split::load_dir(dir, dataset.as_ref())
                    .with_context(|| format!("loading the split in {}", dir.display()))?;
                let ds = match dataset {
                    Some(ds) => ds,
                    None => loaded.dataset(&dir_name(dir)),
                };
                Ok((ds, loaded.split))
            }
            (split, None) => {
                let Some(ds) = dataset else {
                    bail!("--data is required unless --split-dir is given");
                };
                let kind: SplitKind = split.as_deref().unwrap_or("ratio").parse()?;
                let s = Split::make(&ds, kind, seed)?;
                Ok((ds, s))
            }
        }
    }
}

/// A folder's last component, for names made from a path (`dataset` when it has none).
pub fn dir_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Import(args) => {
            let (ds, info) = import(&args)?;
            println!(
                "imported {} into {}",
                args.input.display(),
                args.out.display()
            );
            print_report(&info);
            println!("{}", ds.stats());
            Ok(())
        }
        DataCommand::Stats { dir } => {
            let ds = load(&dir)?;
            println!("{}", ds.stats());
            println!("fingerprint    {}", ds.fingerprint());
            Ok(())
        }
        DataCommand::Synth { preset, seed, out } => {
            let preset: Preset = preset
                .parse()
                .map_err(|e| anyhow::anyhow!("--preset: {e}"))?;
            let summary = synthesise(preset, seed, &out)?;
            println!(
                "wrote the synthetic `{preset}` world (seed {seed}) to {}",
                out.display()
            );
            println!("{summary}");
            Ok(())
        }
        DataCommand::Split {
            data,
            split,
            seed,
            out,
        } => {
            let ds = load(&data)?;
            let kind: SplitKind = split.parse()?;
            let s = Split::make(&ds, kind, seed)?;
            let info = s.info(&ds.fingerprint());
            s.save_dir(&out, &ds, &info)?;
            println!(
                "{kind} split (seed {seed}) of {}: train {} / valid {} / test {} interactions, written to {}",
                ds.name,
                s.train.nnz(),
                s.valid.nnz(),
                s.test.nnz(),
                out.display()
            );
            Ok(())
        }
    }
}

/// Generate a synthetic world into `out` and return its printable statistics.
pub fn synthesise(preset: Preset, seed: u64, out: &Path) -> Result<String> {
    if out.exists() {
        bail!(
            "--out {}: already exists; choose a new directory",
            out.display()
        );
    }
    let world = synth::generate(&SynthConfig::preset(preset), seed)?;
    synth::write_onion_layout(&world, out)
        .with_context(|| format!("writing the synthetic world to {}", out.display()))?;
    Ok(world.stats().to_string())
}

/// Import into a new directory, atomically: everything is written into a temporary directory
/// beside `out` and renamed at the end, so a failed import leaves nothing behind.
pub fn import(args: &ImportArgs) -> Result<(Dataset, DatasetInfo)> {
    if args.out.exists() {
        bail!(
            "--out {}: already exists; choose a new directory",
            args.out.display()
        );
    }
    let format = args.format()?;
    let opts = args.options();
    let start = std::time::Instant::now();
    let (ds, report) = Dataset::import(&format, &args.input, &opts)?;
    let info = DatasetInfo {
        source: args.input.clone(),
        format: args.format,
        options: opts,
        report,
        fingerprint: ds.fingerprint(),
        stats: ds.stats(),
        import_seconds: start.elapsed().as_secs_f64(),
    };
    encore_io::create_dir(&args.out, |tmp| -> Result<()> {
        cache::save(&ds, &tmp.join(cache::FILE_NAME))?;
        encore_io::write_json(&tmp.join(INFO_FILE), &info)?;
        Ok(())
    })?;
    Ok((ds, info))
}

/// Load a prepared dataset directory.
pub fn load(dir: &Path) -> Result<Dataset> {
    let path = dir.join(cache::FILE_NAME);
    if !path.exists() {
        bail!(
            "{}: not a prepared dataset directory (no {}); create one with `encore data import`",
            dir.display(),
            cache::FILE_NAME
        );
    }
    Ok(cache::load(&path)?)
}

fn print_report(info: &DatasetInfo) {
    let r = &info.report;
    println!(
        "rows read {}, below threshold {}, duplicates merged {}, k-core removed {} users / {} items / {} interactions in {} rounds, {:.2} s",
        r.rows_read,
        r.rows_below_threshold,
        r.duplicates_merged,
        r.kcore_removed_users,
        r.kcore_removed_items,
        r.kcore_removed_interactions,
        r.kcore_rounds,
        info.import_seconds
    );
}
