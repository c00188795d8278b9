//! `encore features ...`: the multi-modal feature path of SPEC §3: text embedding with a local
//! BERT-family model, the texts of Last.fm-2k (artist tags), and PCA + fusion of the audio and
//! lyrics modalities. Also builds a model's item conditioning table for `encore train`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use encore_core::conditioning::{Conditioning, ConditioningKind};
use encore_data::features::{read_feature_tsv, read_text_folder, read_text_table, FeatureTable};
use encore_data::IdMap;
use encore_features::{fuse, FusionConfig, FusionMethod, FusionModel};
use encore_io::write_atomic;
use encore_text::{embed_table, EmbedOptions, Pooling, TextEncoder};
use serde::{Deserialize, Serialize};

#[derive(Subcommand)]
pub enum FeaturesCommand {
    /// Embed texts (lyrics, tags) with a local BERT-family model into an Onion-layout table.
    #[command(
        after_help = "Examples:\n  encore features embed-text --model ../shared/models/all-MiniLM-L6-v2 --texts runs/demo/world/lyrics.tsv --out id_lyrics_emb.tsv\n  encore features embed-text --model models/bert-base --texts onion/lyrics/ --pooling cls --out id_lyrics_cls.tsv\n\nTexts: a TSV with header `id<TAB>text`, or a folder of `<id>.txt` files (Onion's lyrics layout).\nThe model folder needs config.json, tokenizer.json and model.safetensors; nothing is downloaded."
    )]
    EmbedText(EmbedTextArgs),
    /// Write each HetRec Last.fm artist's tags as one text (`id<TAB>text`), for embed-text.
    #[command(
        after_help = "Example:\n  encore features tags-text --input ../shared/data/hetrec-lastfm-2k --out lastfm_tags.tsv\n  encore features tags-text --input ../shared/data/hetrec-lastfm-2k --data data/lastfm --out lastfm_tags.tsv\n\nThe text of an artist is its tags, most-applied first, joined by \", \" (tags.dat is read as ISO-8859-1)."
    )]
    TagsText(TagsTextArgs),
    /// PCA each modality and fuse them (tensor, concat) or keep one (audio, lyrics).
    #[command(
        after_help = "Examples:\n  encore features fuse --audio world/id_ivec512.tsv --lyrics world/id_lyrics_bert.tsv --method tensor --dim 128 --out fused_tensor.tsv\n  encore features fuse --lyrics id_tags_emb.tsv --method lyrics --dim 64 --data data/lastfm --out fused_tags.tsv\n\nWrites the fused table and, beside it, <out>.fusion.safetensors: the fitted projection,\nwhich `--apply` reuses for new items."
    )]
    Fuse(FuseArgs),
}

#[derive(Args, Clone, Debug)]
pub struct EmbedTextArgs {
    /// A model folder with config.json, tokenizer.json and model.safetensors.
    #[arg(long)]
    pub model: PathBuf,
    /// An `id<TAB>text` TSV (header optional) or a folder of `<id>.txt` files.
    #[arg(long)]
    pub texts: PathBuf,
    /// Output feature table (header `id` then one column per dimension).
    #[arg(long)]
    pub out: PathBuf,
    /// Pooling of the token states: mean (sentence-transformers' default) or cls.
    #[arg(long, default_value = "mean")]
    pub pooling: String,
    /// L2-normalise each embedding (default: what the model folder's modules.json says).
    #[arg(long)]
    pub normalize: Option<bool>,
    /// Texts per forward pass.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Truncate texts to this many tokens (default: the model's maximum).
    #[arg(long)]
    pub max_length: Option<usize>,
}

#[derive(Args, Clone, Debug)]
pub struct TagsTextArgs {
    /// The HetRec Last.fm folder (tags.dat, user_taggedartists.dat).
    #[arg(long)]
    pub input: PathBuf,
    /// Output `id<TAB>text` table.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep at most this many tags per artist (the most applied).
    #[arg(long, default_value_t = 30)]
    pub max_tags: usize,
    /// Only the artists in this prepared dataset's catalogue (e.g. after the 5-core filter).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct FuseArgs {
    /// Audio feature table (e.g. Onion's id_ivec512.tsv).
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Lyrics feature table (e.g. id_lyrics_bert.tsv, or the output of embed-text).
    #[arg(long)]
    pub lyrics: Option<PathBuf>,
    /// tensor, concat, audio or lyrics.
    #[arg(long, default_value = "tensor")]
    pub method: String,
    /// Dimension of the fused vectors.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Dimension each modality is reduced to before fusion (capped at the table's width).
    #[arg(long, default_value_t = 128)]
    pub modality_dim: usize,
    /// Fit on the items of this prepared dataset only (the catalogue); default: every row.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Seed of the randomized range finder.
    #[arg(long, default_value_t = 2020)]
    pub seed: u64,
    /// Apply a fitted projection (<x>.fusion.safetensors) instead of fitting one.
    #[arg(long)]
    pub apply: Option<PathBuf>,
    /// Output feature table.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(cmd: FeaturesCommand) -> Result<()> {
    match cmd {
        FeaturesCommand::EmbedText(a) => embed_text(&a),
        FeaturesCommand::TagsText(a) => tags_text(&a),
        FeaturesCommand::Fuse(a) => fuse_cmd(&a),
    }
}

/// Read texts from an `id<TAB>text` table or a folder of `<id>.txt` files.
fn read_texts(path: &Path) -> Result<Vec<(String, String)>> {
    Ok(if path.is_dir() {
        read_text_folder(path)?
    } else {
        read_text_table(path)?
    })
}

fn embed_text(a: &EmbedTextArgs) -> Result<()> {
    let pooling: Pooling = a
        .pooling
        .parse()
        .map_err(|e| anyhow::anyhow!("--pooling: {e}"))?;
    let mut opts = EmbedOptions::from_model_dir(&a.model)?;
    opts.pooling = pooling;
    if let Some(n) = a.normalize {
        opts.normalize = n;
    }
    if let Some(b) = a.batch_size {
        if b == 0 {
            bail!("--batch-size: expected at least 1");
        }
        opts.batch_size = b;
    }
    opts.max_length = a.max_length.or(opts.max_length);
    let texts = read_texts(&a.texts)?;
    if texts.is_empty() {
        bail!("{}: no texts found", a.texts.display());
    }
    let encoder = TextEncoder::load(&a.model, opts)?;
    let bar = crate::progress::bar(texts.len() as u64, "embedding");
    let start = std::time::Instant::now();
    let (table, truncated) = embed_table(&encoder, &texts, &a.out, Some(&bar))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    encore_data::features::write_feature_tsv(&a.out, &table)?;
    println!(
        "embedded {} texts into {} dimensions in {:.1} s ({:.1} texts/s); {} truncated at {} tokens; wrote {}",
        texts.len(),
        encoder.dim(),
        secs,
        texts.len() as f64 / secs.max(1e-9),
        truncated,
        encoder.max_length(),
        a.out.display()
    );
    Ok(())
}

fn tags_text(a: &TagsTextArgs) -> Result<()> {
    if a.max_tags == 0 {
        bail!("--max-tags: expected at least 1");
    }
    let tags = encore_data::readers::read_hetrec_artist_tags(&a.input)?;
    let catalogue = a.data.as_deref().map(crate::data::load).transpose()?;
    let mut rows: Vec<(&String, &Vec<String>)> = tags
        .iter()
        .filter(|(id, _)| {
            catalogue
                .as_ref()
                .is_none_or(|ds| ds.items.get(id).is_some())
        })
        .collect();
    rows.sort_by(|x, y| natural_key(x.0).cmp(&natural_key(y.0)));
    write_atomic(&a.out, |w| {
        use std::io::Write;
        writeln!(w, "id\ttext")?;
        for (id, t) in &rows {
            let text: Vec<&str> = t
                .iter()
                .take(a.max_tags)
                .map(|s| s.as_str())
                .filter(|s| !s.contains(['\t', '\n', '\r']))
                .collect();
            writeln!(w, "{id}\t{}", text.join(", "))?;
        }
        Ok(())
    })?;
    println!(
        "wrote the tags of {} artists to {}",
        rows.len(),
        a.out.display()
    );
    Ok(())
}

/// Numeric ids sort numerically, others after them as text.
fn natural_key(id: &str) -> (u64, &str) {
    (id.parse::<u64>().unwrap_or(u64::MAX), id)
}

/// The path of the projection saved beside a fused table.
pub fn fusion_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".fusion.safetensors");
    out.with_file_name(name)
}

fn read_optional(path: Option<&Path>) -> Result<Option<FeatureTable>> {
    path.map(|p| read_feature_tsv(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

fn fuse_cmd(a: &FuseArgs) -> Result<()> {
    let method: FusionMethod = a
        .method
        .parse()
        .map_err(|e| anyhow::anyhow!("--method: {e}"))?;
    let mut audio = read_optional(a.audio.as_deref())?;
    let mut lyrics = read_optional(a.lyrics.as_deref())?;
    if let Some(data) = &a.data {
        let ds = crate::data::load(data)?;
        audio = audio.map(|t| restrict(&t, &ds.items));
        lyrics = lyrics.map(|t| restrict(&t, &ds.items));
    }
    let (model, fused) = match &a.apply {
        Some(path) => {
            let model = FusionModel::load(path)?;
            let fused = model.apply(audio.as_ref(), lyrics.as_ref())?;
            (model, fused)
        }
        None => {
            let cfg = FusionConfig {
                method,
                dim: a.dim,
                modality_dim: a.modality_dim,
                seed: a.seed,
                ..FusionConfig::default()
            };
            let bar = crate::progress::spinner("fitting the fusion");
            let r = fuse(audio.as_ref(), lyrics.as_ref(), &cfg, Some(&bar))?;
            bar.finish_and_clear();
            r
        }
    };
    encore_data::features::write_feature_tsv(&a.out, &fused)?;
    if a.apply.is_none() {
        model.save(&fusion_path(&a.out))?;
    }
    println!("{}", model.report());
    if let Some(w) = concat_imbalance(&model) {
        eprintln!("{w}");
    }
    println!(
        "wrote {} fused vectors of {} dimensions to {}{}",
        fused.len(),
        fused.dim(),
        a.out.display(),
        if a.apply.is_none() {
            format!(" (projection: {})", fusion_path(&a.out).display())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Variance ratio between the two modalities above which `concat` is effectively one of them.
const CONCAT_IMBALANCE: f64 = 100.0;

/// For a `concat` fusion: a warning when one modality's PCA'd vectors carry far more variance
/// than the other's, so that the concatenation's PCA keeps that modality and drops the other
/// (SPEC §3's concat has no per-modality scaling; e.g. i-vectors against unit-norm sentence
/// embeddings differ by three orders of magnitude).
pub fn concat_imbalance(model: &FusionModel) -> Option<String> {
    if model.config.method != FusionMethod::Concat {
        return None;
    }
    let total = |p: &Option<encore_features::Pca>| -> f64 {
        p.as_ref()
            .map_or(0.0, |p| p.explained_variance.iter().sum())
    };
    let (a, l) = (total(&model.audio), total(&model.lyrics));
    let (big, small, ratio) = if a >= l {
        ("audio", "lyrics", a / l)
    } else {
        ("lyrics", "audio", l / a)
    };
    (ratio > CONCAT_IMBALANCE).then(|| {
        format!(
            "warning: concat: the {big} vectors carry {ratio:.0}x the variance of the {small} \
             vectors (total {:.4} vs {:.4}), so the fused vectors follow {big} almost alone; \
             `tensor` fusion is insensitive to this scale",
            a.max(l),
            a.min(l)
        )
    })
}

/// The rows of `table` whose id is in the catalogue `items` (the PCA is fitted on the
/// catalogue, SPEC §3).
pub fn restrict(table: &FeatureTable, items: &IdMap) -> FeatureTable {
    let d = table.dim();
    let mut ids = Vec::new();
    let mut values = Vec::new();
    for (r, id) in table.ids.iter().enumerate() {
        if items.get(id).is_some() {
            ids.push(id.clone());
            values.extend_from_slice(&table.values[r * d..(r + 1) * d]);
        }
    }
    FeatureTable::new(table.source.clone(), ids, table.columns.clone(), values)
        .expect("a subset of a valid table is valid")
}

/// Where a conditioned run's features came from (recorded in `run.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Args)]
pub struct FeatureSources {
    /// Audio feature table for conditioning = audio | concat | tensor (e.g. id_ivec512.tsv).
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Lyrics (or tags) feature table for conditioning = lyrics | concat | tensor.
    #[arg(long)]
    pub lyrics: Option<PathBuf>,
}

/// A conditioned model's item features, fitted and ready to save into the run directory.
pub struct BuiltConditioning {
    pub cond: Conditioning,
    fusion: FusionModel,
    report: serde_json::Value,
}

impl BuiltConditioning {
    /// Write the conditioning table, the fitted projection and a report into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.fusion.save(&dir.join("fusion.safetensors"))?;
        encore_io::write_json(&dir.join("report.json"), &self.report)?;
        self.cond.save(dir)?;
        Ok(())
    }
}

/// Build the item conditioning table of a conditioned model: read the modality tables,
/// restrict them to the catalogue, fit the fusion `kind` to `dim` dimensions, and lay the
/// fused vectors out by item index (items without features get none: the model skips them
/// when pooling). Nothing is written: the caller saves the result once the run exists.
pub fn build_conditioning(
    kind: ConditioningKind,
    dim: usize,
    items: &IdMap,
    sources: &FeatureSources,
    seed: u64,
) -> Result<BuiltConditioning> {
    let method: FusionMethod = kind
        .name()
        .parse()
        .map_err(|e| anyhow::anyhow!("conditioning: {e}"))?;
    let (need_audio, need_lyrics) = (method.needs_audio(), method.needs_lyrics());
    if need_audio && sources.audio.is_none() {
        bail!("conditioning = \"{kind}\" needs an audio feature table: pass --audio FILE (e.g. id_ivec512.tsv)");
    }
    if need_lyrics && sources.lyrics.is_none() {
        bail!("conditioning = \"{kind}\" needs a lyrics feature table: pass --lyrics FILE (e.g. id_lyrics_bert.tsv)");
    }
    let read = |path: Option<&Path>| -> Result<Option<FeatureTable>> {
        let Some(table) = read_optional(path)? else {
            return Ok(None);
        };
        let kept = restrict(&table, items);
        if kept.is_empty() {
            bail!(
                "{}: none of its {} rows has an id in the dataset's catalogue of {} items \
                 (e.g. {:?}); is it the feature table of this dataset?",
                table.source.display(),
                table.len(),
                items.len(),
                items.ids().first().map(String::as_str).unwrap_or("")
            );
        }
        Ok(Some(kept))
    };
    let audio = read(sources.audio.as_deref().filter(|_| need_audio))?;
    let lyrics = read(sources.lyrics.as_deref().filter(|_| need_lyrics))?;
    let cap = |t: &Option<FeatureTable>| t.as_ref().map_or(usize::MAX, |t| t.dim().min(t.len()));
    let cfg = FusionConfig {
        method,
        dim,
        modality_dim: 128.min(cap(&audio)).min(cap(&lyrics)),
        seed,
        ..FusionConfig::default()
    };
    let bar = crate::progress::spinner(&format!("fitting the {kind} fusion"));
    let (fusion, fused) = fuse(audio.as_ref(), lyrics.as_ref(), &cfg, Some(&bar))?;
    bar.finish_and_clear();
    let aligned = fused.align(items, encore_data::features::UnknownIds::Error)?;
    let n_items = items.len();
    let with = n_items - aligned.missing();
    let report = serde_json::json!({
        "conditioning": kind,
        "dim": dim,
        "modality_dim": cfg.modality_dim,
        "audio": sources.audio,
        "lyrics": sources.lyrics,
        "items": n_items,
        "items_with_features": with,
        "report": fusion.report().to_string(),
        "warning": concat_imbalance(&fusion),
    });
    if let Some(w) = concat_imbalance(&fusion) {
        eprintln!("{w}");
    }
    eprintln!(
        "conditioning `{kind}`: {with} of {n_items} items have features\n{}",
        fusion.report()
    );
    Ok(BuiltConditioning {
        cond: Conditioning::new(n_items, aligned.dim, aligned.values, aligned.present)?,
        fusion,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 60 items x 6 columns of deterministic, uncorrelated-looking values times `scale`.
    fn table(name: &str, scale: f32, salt: u32) -> FeatureTable {
        let ids: Vec<String> = (0..60).map(|i| format!("t{i}")).collect();
        let values: Vec<f32> = (0..60u32 * 6)
            .map(|k| {
                let h = (k.wrapping_mul(2_654_435_761) ^ salt).wrapping_mul(40_503) >> 8;
                scale * ((h % 1000) as f32 / 1000.0 - 0.5)
            })
            .collect();
        let cols = (0..6).map(|c| format!("c{c}")).collect();
        FeatureTable::new(name, ids, cols, values).unwrap()
    }

    fn concat(audio_scale: f32) -> FusionModel {
        let cfg = FusionConfig {
            method: FusionMethod::Concat,
            dim: 3,
            modality_dim: 4,
            ..FusionConfig::default()
        };
        let (a, l) = (table("a", audio_scale, 1), table("l", 1.0, 2));
        fuse(Some(&a), Some(&l), &cfg, None).unwrap().0
    }

    #[test]
    fn concat_warns_when_one_modality_dominates() {
        let w = concat_imbalance(&concat(1000.0)).expect("a warning");
        assert!(
            w.contains("the audio vectors carry") && w.contains("tensor"),
            "{w}"
        );
        assert_eq!(concat_imbalance(&concat(1.0)), None);
    }
}
