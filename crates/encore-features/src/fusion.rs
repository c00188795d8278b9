//! Multi-modal fusion of audio and lyrics features (SPEC §3, paper §4.3; MODELS.md
//! "Conditioning": kinds audio, lyrics, concat, tensor).
//!
//! Two stages, both fitted on the rows given (the catalogue):
//! 1. each modality the method needs is PCA'd to `modality_dim` (default 128);
//! 2. the fusion:
//!    - `audio` / `lyrics`: that modality's PCA, truncated to `dim` components. A second PCA of
//!      the `modality_dim`-d outputs would give exactly this (their covariance is already
//!      diagonal with decreasing variances), so it is not fitted; with `dim == modality_dim`
//!      it is just the modality PCA.
//!    - `concat`: `[a ; l]` (`2 · modality_dim`), PCA to `dim`.
//!    - `tensor`: `a ⊗ l` (`modality_dim²` = 16,384-d), PCA to `dim`, computed without
//!      materialising the `n x 16,384` matrix ([`crate::tensor`]): exact (Gram) for
//!      `n <= 2048`, randomized SVD above (see [`crate::pca`]). [`TensorPath::Materialised`]
//!      builds the explicit matrix instead: the reference the implicit path is tested against.
//!
//! Rows used: those whose id is in every table the method needs, in the order of the first
//! needed table (audio before lyrics). The paper's code fused only tracks having both
//! modalities, and so do we; the caller lays the result out by its catalogue with
//! [`FeatureTable::align`], where tracks without fused features get zeros.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use encore_data::features::FeatureTable;
use indicatif::ProgressBar;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{FeatureError, Result};
use crate::pca::{check_k, fit_centred, DenseRows, FitMethod, Pca, PcaOptions};
use crate::tensor::{materialise, tensor_mean, TensorRows};

/// Which modalities condition the model, and how they are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    /// Audio descriptors only.
    Audio,
    /// Lyrics embeddings only.
    Lyrics,
    /// Concatenation of the two PCA'd modalities, then PCA.
    Concat,
    /// Outer product of the two PCA'd modalities, then PCA.
    Tensor,
}

impl FusionMethod {
    /// All methods, in the paper's order (Table 4).
    pub const ALL: [FusionMethod; 4] = [
        FusionMethod::Audio,
        FusionMethod::Lyrics,
        FusionMethod::Concat,
        FusionMethod::Tensor,
    ];

    /// Whether the method reads the audio table.
    pub fn needs_audio(self) -> bool {
        self != FusionMethod::Lyrics
    }

    /// Whether the method reads the lyrics table.
    pub fn needs_lyrics(self) -> bool {
        self != FusionMethod::Audio
    }

    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FusionMethod::Audio => "audio",
            FusionMethod::Lyrics => "lyrics",
            FusionMethod::Concat => "concat",
            FusionMethod::Tensor => "tensor",
        }
    }
}

impl fmt::Display for FusionMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FusionMethod {
    type Err = FeatureError;

    fn from_str(s: &str) -> Result<Self> {
        FusionMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                FeatureError::parameter(
                    "method",
                    format!(
                        "unknown fusion method {s:?}; expected audio, lyrics, concat or tensor"
                    ),
                )
            })
    }
}

/// How the `tensor` fusion's PCA sees the outer-product matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorPath {
    /// Blocks formed on demand; memory `O(n · modality_dim)` plus one 16 MB slab per thread.
    #[default]
    Implicit,
    /// The explicit `n x modality_dim²` matrix (`n · 64 KiB` at 128-d): reference only.
    Materialised,
}

/// Fusion parameters (SPEC §3 defaults: 128 and 128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// The fusion.
    pub method: FusionMethod,
    /// Dimension of the fused vectors.
    pub dim: usize,
    /// Dimension of each modality after its own PCA.
    pub modality_dim: usize,
    /// Seed of the randomized PCAs' test matrices.
    pub seed: u64,
    /// Method of the fusion-stage PCA (`concat`, `tensor`); the modality PCAs use the default.
    pub fusion_pca: PcaOptions,
    /// Implicit or materialised tensor matrix.
    pub tensor_path: TensorPath,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig {
            method: FusionMethod::Tensor,
            dim: 128,
            modality_dim: 128,
            seed: 2020,
            fusion_pca: PcaOptions::default(),
            tensor_path: TensorPath::Implicit,
        }
    }
}

impl FusionConfig {
    /// Check the dimensions, naming the bad parameter.
    pub fn check(&self) -> Result<()> {
        if self.modality_dim == 0 {
            return Err(FeatureError::parameter(
                "modality_dim",
                "must be at least 1 (SPEC default 128)",
            ));
        }
        if self.dim == 0 {
            return Err(FeatureError::parameter(
                "dim",
                "must be at least 1 (SPEC default 128)",
            ));
        }
        let max = self.fusion_input_dim();
        if self.dim > max {
            return Err(FeatureError::parameter(
                "dim",
                format!(
                    "{} exceeds the {} fusion's input dimension {max} (modality_dim = {})",
                    self.dim, self.method, self.modality_dim
                ),
            ));
        }
        if self.method == FusionMethod::Tensor && self.modality_dim > 1024 {
            return Err(FeatureError::parameter(
                "modality_dim",
                format!(
                    "{} is too large for the tensor fusion (modality_dim² columns); at most 1024",
                    self.modality_dim
                ),
            ));
        }
        Ok(())
    }

    /// Input dimension of the fusion stage.
    pub fn fusion_input_dim(&self) -> usize {
        match self.method {
            FusionMethod::Audio | FusionMethod::Lyrics => self.modality_dim,
            FusionMethod::Concat => 2 * self.modality_dim,
            FusionMethod::Tensor => self.modality_dim * self.modality_dim,
        }
    }
}

/// One stage of a fitted fusion, for reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// `audio`, `lyrics` (modality PCAs) or `audio->dim`, `concat`, `tensor` (fusion stage).
    pub stage: String,
    /// Input dimension.
    pub input_dim: usize,
    /// Output dimension.
    pub output_dim: usize,
    /// Fraction of the input's variance the output keeps.
    pub explained_ratio: f64,
    /// How it was computed.
    pub method: String,
}

/// What a fitted fusion did: dimensions and variance kept at each stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionReport {
    /// The fusion.
    pub method: FusionMethod,
    /// Items the model was fitted on.
    pub n_items: usize,
    /// Fused dimension.
    pub dim: usize,
    /// Per-modality PCA dimension.
    pub modality_dim: usize,
    /// The stages in order.
    pub stages: Vec<StageReport>,
}

impl fmt::Display for FusionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fusion {} on {} items: dim {}, modality_dim {}",
            self.method, self.n_items, self.dim, self.modality_dim
        )?;
        writeln!(
            f,
            "{:<14} {:>8} {:>8} {:>10}  method",
            "stage", "in", "out", "explained"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "{:<14} {:>8} {:>8} {:>9.2}%  {}",
                s.stage,
                s.input_dim,
                s.output_dim,
                100.0 * s.explained_ratio,
                s.method
            )?;
        }
        Ok(())
    }
}

/// A fitted fusion: the modality PCAs and the fusion-stage PCA, applicable to new items.
#[derive(Debug, Clone, PartialEq)]
pub struct FusionModel {
    /// The configuration it was fitted with.
    pub config: FusionConfig,
    /// Items it was fitted on.
    pub n_items: usize,
    /// Audio PCA (`audio_dim → modality_dim`), when the method uses audio.
    pub audio: Option<Pca>,
    /// Lyrics PCA (`lyrics_dim → modality_dim`), when the method uses lyrics.
    pub lyrics: Option<Pca>,
    /// Fusion-stage PCA (`concat`, `tensor`).
    pub fused: Option<Pca>,
}

/// A modality's rows gathered for the common ids.
struct Gathered {
    ids: Vec<String>,
    audio: Option<Vec<f32>>,
    lyrics: Option<Vec<f32>>,
}

/// Check that every value of `t` is finite, naming the file, row (line) and column.
fn check_table(t: &FeatureTable, what: &str) -> Result<()> {
    let d = t.dim();
    if d == 0 {
        return Err(FeatureError::data(
            &t.source,
            format!("the {what} table has no feature columns"),
        ));
    }
    if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
        let (r, c) = (i / d, i % d);
        let at = match t.line(r) {
            Some(line) => format!("line {line}"),
            None => format!("row {}", r + 1),
        };
        return Err(FeatureError::data(
            &t.source,
            format!(
                "{at} (id {:?}), column {:?}: value {} is not finite",
                t.ids[r], t.columns[c], t.values[i]
            ),
        ));
    }
    Ok(())
}

/// Rows of the needed tables for the ids present in all of them (first table's order).
fn gather(
    method: FusionMethod,
    audio: Option<&FeatureTable>,
    lyrics: Option<&FeatureTable>,
) -> Result<Gathered> {
    let audio = if method.needs_audio() {
        let t = audio.ok_or_else(|| {
            FeatureError::parameter("audio", format!("the {method} fusion needs an audio table"))
        })?;
        check_table(t, "audio")?;
        Some(t)
    } else {
        None
    };
    let lyrics = if method.needs_lyrics() {
        let t = lyrics.ok_or_else(|| {
            FeatureError::parameter(
                "lyrics",
                format!("the {method} fusion needs a lyrics table"),
            )
        })?;
        check_table(t, "lyrics")?;
        Some(t)
    } else {
        None
    };
    let (ids, rows_a, rows_l): (Vec<String>, Vec<usize>, Vec<usize>) = match (audio, lyrics) {
        (Some(a), Some(l)) => {
            let index: HashMap<&str, usize> = l
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            let mut ids = Vec::new();
            let (mut ra, mut rl) = (Vec::new(), Vec::new());
            for (i, id) in a.ids.iter().enumerate() {
                if let Some(&j) = index.get(id.as_str()) {
                    ids.push(id.clone());
                    ra.push(i);
                    rl.push(j);
                }
            }
            if ids.is_empty() {
                return Err(FeatureError::data(
                    &a.source,
                    format!(
                        "no item id is in both the audio table ({} rows) and the lyrics table {} \
                         ({} rows): nothing to fuse",
                        a.len(),
                        l.source.display(),
                        l.len()
                    ),
                ));
            }
            (ids, ra, rl)
        }
        (Some(a), None) => (a.ids.clone(), (0..a.len()).collect(), Vec::new()),
        (None, Some(l)) => (l.ids.clone(), Vec::new(), (0..l.len()).collect()),
        (None, None) => unreachable!("every method needs a modality"),
    };
    let pick = |t: &FeatureTable, rows: &[usize]| {
        let d = t.dim();
        let mut v = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            v.extend_from_slice(t.row(r));
        }
        v
    };
    Ok(Gathered {
        audio: audio.map(|t| pick(t, &rows_a)),
        lyrics: lyrics.map(|t| pick(t, &rows_l)),
        ids,
    })
}

/// Seed of a stage, decorrelated from the others (SplitMix64 finaliser).
fn stage_seed(seed: u64, stage: u64) -> u64 {
    let mut z = seed.wrapping_add(stage.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fit a modality PCA; a too-large `modality_dim` is reported against the table.
fn fit_modality(
    x: &[f32],
    n: usize,
    table: &FeatureTable,
    cfg: &FusionConfig,
    stage: u64,
) -> Result<Pca> {
    let d = table.dim();
    if cfg.modality_dim > n.min(d) {
        return Err(FeatureError::parameter(
            "modality_dim",
            format!(
                "{} exceeds min(items, columns) = min({n}, {d}) of {}",
                cfg.modality_dim,
                table.source.display()
            ),
        ));
    }
    if n < 2 {
        return Err(FeatureError::data(
            &table.source,
            format!("{n} item(s) to fit on; PCA needs at least 2"),
        ));
    }
    Pca::fit(x, n, d, cfg.modality_dim, stage_seed(cfg.seed, stage))
}

/// Fit a PCA on a centred operator whose mean is already known.
fn fit_op<O: crate::linalg::CentredRows>(
    op: &O,
    mean: Vec<f32>,
    k: usize,
    opts: &PcaOptions,
    seed: u64,
    tick: &(dyn Fn() + Sync),
) -> Result<Pca> {
    let (method, components, explained_variance, total_variance) =
        fit_centred(op, k, opts, seed, tick)?;
    Ok(Pca {
        mean,
        components,
        explained_variance,
        total_variance,
        n_samples: op.n_rows(),
        method,
    })
}

/// Fit the fusion on the given tables (the catalogue) and return the model and the fused
/// vectors of the rows used (columns `f0`, `f1`, ...; source `fused-<method>`).
///
/// `progress`, when given, gets one step per pass over the data.
pub fn fuse(
    audio: Option<&FeatureTable>,
    lyrics: Option<&FeatureTable>,
    cfg: &FusionConfig,
    progress: Option<&ProgressBar>,
) -> Result<(FusionModel, FeatureTable)> {
    cfg.check()?;
    let g = gather(cfg.method, audio, lyrics)?;
    let n = g.ids.len();
    let md = cfg.modality_dim;
    if let Some(pb) = progress {
        pb.set_length(passes(cfg, n));
        pb.set_position(0);
        pb.set_message(format!("{} fusion", cfg.method));
    }
    let tick = || {
        if let Some(pb) = progress {
            pb.inc(1);
        }
    };
    let stage1 = |x: Option<&Vec<f32>>, t: Option<&FeatureTable>, stage: u64| -> Result<_> {
        match (x, t) {
            (Some(x), Some(t)) => {
                let pca = fit_modality(x, n, t, cfg, stage)?;
                let y = pca.transform(x, n)?;
                tick();
                Ok(Some((pca, y)))
            }
            _ => Ok(None),
        }
    };
    let a = stage1(g.audio.as_ref(), audio, 1)?;
    let l = stage1(g.lyrics.as_ref(), lyrics, 2)?;
    let fused_seed = stage_seed(cfg.seed, 3);
    let (fused, values) = match cfg.method {
        FusionMethod::Audio | FusionMethod::Lyrics => {
            let (_, y) = a.as_ref().or(l.as_ref()).expect("one modality");
            (None, truncate(y, n, md, cfg.dim))
        }
        FusionMethod::Concat => {
            let (ya, yl) = (
                &a.as_ref().expect("audio").1,
                &l.as_ref().expect("lyrics").1,
            );
            let z = concat(ya, yl, n, md);
            check_k(n, 2 * md, cfg.dim)?;
            let mean = crate::pca::column_means(&z, n, 2 * md);
            let op = DenseRows {
                x: &z,
                n,
                d: 2 * md,
                mean: &mean,
            };
            let pca = fit_op(
                &op,
                mean.clone(),
                cfg.dim,
                &cfg.fusion_pca,
                fused_seed,
                &tick,
            )?;
            let y = pca.project(&op);
            tick();
            (Some(pca), y)
        }
        FusionMethod::Tensor => {
            let (ya, yl) = (
                &a.as_ref().expect("audio").1,
                &l.as_ref().expect("lyrics").1,
            );
            check_k(n, md * md, cfg.dim)?;
            let pca = match cfg.tensor_path {
                TensorPath::Implicit => {
                    let mean = tensor_mean(ya, yl, n, md, md);
                    let op = TensorRows {
                        a: ya,
                        l: yl,
                        n,
                        p: md,
                        q: md,
                        mean: &mean,
                    };
                    fit_op(
                        &op,
                        mean.clone(),
                        cfg.dim,
                        &cfg.fusion_pca,
                        fused_seed,
                        &tick,
                    )?
                }
                TensorPath::Materialised => {
                    let t = materialise(ya, yl, n, md, md);
                    Pca::fit_with(&t, n, md * md, cfg.dim, fused_seed, &cfg.fusion_pca)?
                }
            };
            let y = tensor_project(&pca, ya, yl, n, md);
            tick();
            (Some(pca), y)
        }
    };
    let model = FusionModel {
        config: *cfg,
        n_items: n,
        audio: a.map(|(p, _)| p),
        lyrics: l.map(|(p, _)| p),
        fused,
    };
    let table = fused_table(cfg.method, g.ids, values, cfg.dim)?;
    if let Some(pb) = progress {
        pb.finish_with_message(format!("{} fusion done", cfg.method));
    }
    Ok((model, table))
}

/// Passes over the data `fuse` makes (for the progress bar's length).
fn passes(cfg: &FusionConfig, n: usize) -> u64 {
    let modalities = cfg.method.needs_audio() as u64 + cfg.method.needs_lyrics() as u64;
    let fusion = match cfg.method {
        FusionMethod::Audio | FusionMethod::Lyrics => 0,
        FusionMethod::Concat | FusionMethod::Tensor => {
            let d = cfg.fusion_input_dim();
            let exact = match cfg.fusion_pca.method {
                crate::PcaMethod::Exact => true,
                crate::PcaMethod::Randomized => false,
                crate::PcaMethod::Auto => n.min(d) <= crate::pca::EXACT_MAX,
            };
            let fit = if cfg.method == FusionMethod::Tensor
                && cfg.tensor_path == TensorPath::Materialised
            {
                0
            } else if exact {
                1 + (d > n) as u64
            } else {
                2 * cfg.fusion_pca.randomized.power_iters as u64 + 2
            };
            fit + 1
        }
    };
    modalities + fusion
}

fn truncate(y: &[f32], n: usize, from: usize, to: usize) -> Vec<f32> {
    if from == to {
        return y.to_vec();
    }
    let mut out = Vec::with_capacity(n * to);
    for row in y.chunks_exact(from) {
        out.extend_from_slice(&row[..to]);
    }
    out
}

fn concat(ya: &[f32], yl: &[f32], n: usize, md: usize) -> Vec<f32> {
    let mut z = Vec::with_capacity(n * 2 * md);
    for i in 0..n {
        z.extend_from_slice(&ya[i * md..(i + 1) * md]);
        z.extend_from_slice(&yl[i * md..(i + 1) * md]);
    }
    z
}

/// `(a_i ⊗ l_i − mean) · componentsᵀ` without materialising the tensor rows.
fn tensor_project(pca: &Pca, ya: &[f32], yl: &[f32], n: usize, md: usize) -> Vec<f32> {
    let op = TensorRows {
        a: ya,
        l: yl,
        n,
        p: md,
        q: md,
        mean: &pca.mean,
    };
    pca.project(&op)
}

fn fused_table(
    method: FusionMethod,
    ids: Vec<String>,
    values: Vec<f32>,
    dim: usize,
) -> Result<FeatureTable> {
    let columns = (0..dim).map(|j| format!("f{j}")).collect();
    Ok(FeatureTable::new(
        PathBuf::from(format!("fused-{method}")),
        ids,
        columns,
        values,
    )?)
}

/// Name of the JSON metadata entry in a saved model.
const META_KEY: &str = "encore_fusion";
const FORMAT: &str = "encore-fusion";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StageMeta {
    total_variance: f64,
    n_samples: usize,
    method: FitMethod,
}

#[derive(Serialize, Deserialize)]
struct SavedMeta {
    format: String,
    version: u32,
    config: FusionConfig,
    n_items: usize,
    stages: BTreeMap<String, StageMeta>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl FusionModel {
    /// The stages: dimensions and variance kept.
    pub fn report(&self) -> FusionReport {
        let cfg = &self.config;
        let mut stages = Vec::new();
        for (name, p) in [("audio", &self.audio), ("lyrics", &self.lyrics)] {
            if let Some(p) = p {
                stages.push(StageReport {
                    stage: name.to_string(),
                    input_dim: p.input_dim(),
                    output_dim: p.k(),
                    explained_ratio: p.explained_ratio(),
                    method: p.method.to_string(),
                });
                if cfg.dim < cfg.modality_dim && self.fused.is_none() {
                    stages.push(StageReport {
                        stage: format!("{name}->{}", cfg.dim),
                        input_dim: p.k(),
                        output_dim: cfg.dim,
                        explained_ratio: p.explained_variance[..cfg.dim].iter().sum::<f64>()
                            / p.explained_variance
                                .iter()
                                .sum::<f64>()
                                .max(f64::MIN_POSITIVE),
                        method: "truncation".to_string(),
                    });
                }
            }
        }
        if let Some(p) = &self.fused {
            stages.push(StageReport {
                stage: cfg.method.to_string(),
                input_dim: p.input_dim(),
                output_dim: p.k(),
                explained_ratio: p.explained_ratio(),
                method: p.method.to_string(),
            });
        }
        FusionReport {
            method: cfg.method,
            n_items: self.n_items,
            dim: cfg.dim,
            modality_dim: cfg.modality_dim,
            stages,
        }
    }

    /// The stages by name, in file order.
    fn stages(&self) -> Vec<(&'static str, &Pca)> {
        let mut s = Vec::new();
        if let Some(p) = &self.audio {
            s.push(("audio", p));
        }
        if let Some(p) = &self.lyrics {
            s.push(("lyrics", p));
        }
        if let Some(p) = &self.fused {
            s.push(("fused", p));
        }
        s
    }

    /// Write the model as safetensors (per stage `<stage>.mean` f32 `[d]`,
    /// `<stage>.components` f32 `[k, d]`, `<stage>.explained_variance` f64 `[k]`; stages
    /// `audio`, `lyrics`, `fused`) with the configuration and per-stage statistics as JSON in
    /// the header metadata (`encore_fusion`). Atomic: a temporary file in the same folder,
    /// renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| FeatureError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut stages = BTreeMap::new();
        for (name, p) in self.stages() {
            let (k, d) = (p.k(), p.input_dim());
            owned.push((
                format!("{name}.mean"),
                Dtype::F32,
                vec![d],
                f32_bytes(&p.mean),
            ));
            owned.push((
                format!("{name}.components"),
                Dtype::F32,
                vec![k, d],
                f32_bytes(&p.components),
            ));
            owned.push((
                format!("{name}.explained_variance"),
                Dtype::F64,
                vec![k],
                f64_bytes(&p.explained_variance),
            ));
            stages.insert(
                name.to_string(),
                StageMeta {
                    total_variance: p.total_variance,
                    n_samples: p.n_samples,
                    method: p.method,
                },
            );
        }
        let meta = SavedMeta {
            format: FORMAT.to_string(),
            version: VERSION,
            config: self.config,
            n_items: self.n_items,
            stages,
        };
        let json = serde_json::to_string(&meta).expect("metadata serialises");
        let mut views = Vec::new();
        for (name, dtype, shape, bytes) in &owned {
            let v = TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| FeatureError::model(path, format!("tensor {name}: {e}")))?;
            views.push((name.clone(), v));
        }
        let header = Some(HashMap::from([(META_KEY.to_string(), json)]));
        let bytes = safetensors::serialize(views, &header)
            .map_err(|e| FeatureError::model(path, format!("serialising: {e}")))?;
        encore_io::write_bytes(path, &bytes).map_err(|e| match e {
            encore_io::IoError::Io { source, .. } => io(source),
            encore_io::IoError::Format { message, .. } => FeatureError::model(path, message),
        })
    }

    /// Read a model written by [`FusionModel::save`], checking every shape against the
    /// recorded configuration; errors name the file and the tensor.
    pub fn load(path: &Path) -> Result<FusionModel> {
        let bytes = std::fs::read(path).map_err(|e| FeatureError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let bad = |m: String| FeatureError::model(path, m);
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| {
                bad(format!(
                    "no `{META_KEY}` metadata: not an Encore fusion model"
                ))
            })?;
        let meta: SavedMeta =
            serde_json::from_str(json).map_err(|e| bad(format!("metadata `{META_KEY}`: {e}")))?;
        if meta.format != FORMAT || meta.version != VERSION {
            return Err(bad(format!(
                "format {:?} version {}; expected {FORMAT:?} version {VERSION}",
                meta.format, meta.version
            )));
        }
        let cfg = meta.config;
        cfg.check()
            .map_err(|e| bad(format!("recorded config: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e}")))?;
        let read_stage = |name: &str, k: usize, d: Option<usize>| -> Result<Pca> {
            let sm = meta
                .stages
                .get(name)
                .ok_or_else(|| bad(format!("metadata has no stage `{name}`")))?;
            let get = |t: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
                let full = format!("{name}.{t}");
                let v = st
                    .tensor(&full)
                    .map_err(|e| bad(format!("tensor `{full}`: {e}")))?;
                if v.dtype() != dtype {
                    return Err(bad(format!(
                        "tensor `{full}` has dtype {:?}, expected {dtype:?}",
                        v.dtype()
                    )));
                }
                Ok((v.shape().to_vec(), v.data().to_vec()))
            };
            let (ms, mb) = get("mean", Dtype::F32)?;
            let (cs, cb) = get("components", Dtype::F32)?;
            let (es, eb) = get("explained_variance", Dtype::F64)?;
            let dd = ms.first().copied().unwrap_or(0);
            if ms.len() != 1 || dd == 0 || d.is_some_and(|d| d != dd) {
                return Err(bad(format!(
                    "tensor `{name}.mean` has shape {ms:?}, expected [{}]",
                    d.map_or("d".to_string(), |d| d.to_string())
                )));
            }
            if cs != [k, dd] {
                return Err(bad(format!(
                    "tensor `{name}.components` has shape {cs:?}, expected [{k}, {dd}]"
                )));
            }
            if es != [k] {
                return Err(bad(format!(
                    "tensor `{name}.explained_variance` has shape {es:?}, expected [{k}]"
                )));
            }
            let f32s = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect()
            };
            let mean = f32s(&mb);
            let components = f32s(&cb);
            let explained_variance: Vec<f64> = eb
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            if mean.iter().chain(&components).any(|v| !v.is_finite())
                || explained_variance.iter().any(|v| !v.is_finite())
            {
                return Err(bad(format!("stage `{name}` holds non-finite values")));
            }
            Ok(Pca {
                mean,
                components,
                explained_variance,
                total_variance: sm.total_variance,
                n_samples: sm.n_samples,
                method: sm.method,
            })
        };
        let md = cfg.modality_dim;
        let audio = if cfg.method.needs_audio() {
            Some(read_stage("audio", md, None)?)
        } else {
            None
        };
        let lyrics = if cfg.method.needs_lyrics() {
            Some(read_stage("lyrics", md, None)?)
        } else {
            None
        };
        let fused = match cfg.method {
            FusionMethod::Audio | FusionMethod::Lyrics => None,
            _ => Some(read_stage("fused", cfg.dim, Some(cfg.fusion_input_dim()))?),
        };
        Ok(FusionModel {
            config: cfg,
            n_items: meta.n_items,
            audio,
            lyrics,
            fused,
        })
    }

    /// The same projection on new items: the rows whose id is in every needed table (first
    /// table's order), fused with the fitted means and components. A table whose width
    /// differs from the one the model was fitted on is an error naming the table.
    ///
    /// On the fitting tables it reproduces [`fuse`]'s output bit for bit; an item fused in a
    /// different batch may differ in the last bits (`gemm` blocks products by their size).
    pub fn apply(
        &self,
        audio: Option<&FeatureTable>,
        lyrics: Option<&FeatureTable>,
    ) -> Result<FeatureTable> {
        let cfg = &self.config;
        for (t, p, name) in [
            (audio, &self.audio, "audio"),
            (lyrics, &self.lyrics, "lyrics"),
        ] {
            if let (Some(t), Some(p)) = (t, p) {
                if t.dim() != p.input_dim() {
                    return Err(FeatureError::data(
                        &t.source,
                        format!(
                            "the {name} table has {} columns; the fusion model was fitted on {}",
                            t.dim(),
                            p.input_dim()
                        ),
                    ));
                }
            }
        }
        let g = gather(cfg.method, audio, lyrics)?;
        let n = g.ids.len();
        let md = cfg.modality_dim;
        // A model built by hand (the fields are public) may lack a stage its method needs.
        let missing = |stage: &str| {
            FeatureError::parameter(
                "model",
                format!("the {} fusion model has no `{stage}` stage", cfg.method),
            )
        };
        let project =
            |p: &Option<Pca>, x: &Option<Vec<f32>>, stage: &str| -> Result<Option<Vec<f32>>> {
                match x {
                    None => Ok(None),
                    Some(x) => {
                        let p = p.as_ref().ok_or_else(|| missing(stage))?;
                        Ok(Some(p.transform(x, n)?))
                    }
                }
            };
        let ya = project(&self.audio, &g.audio, "audio")?;
        let yl = project(&self.lyrics, &g.lyrics, "lyrics")?;
        let values = match cfg.method {
            FusionMethod::Audio | FusionMethod::Lyrics => {
                let y = ya
                    .as_ref()
                    .or(yl.as_ref())
                    .ok_or_else(|| missing("modality"))?;
                if y.len() != n * md || cfg.dim > md {
                    return Err(missing("modality PCA with modality_dim components"));
                }
                truncate(y, n, md, cfg.dim)
            }
            FusionMethod::Concat | FusionMethod::Tensor => {
                let p = self.fused.as_ref().ok_or_else(|| missing("fused"))?;
                let (ya, yl) = match (&ya, &yl) {
                    (Some(a), Some(l)) if a.len() == n * md && l.len() == n * md => (a, l),
                    _ => return Err(missing("modality PCA with modality_dim components")),
                };
                if p.input_dim() != cfg.fusion_input_dim() || p.k() != cfg.dim {
                    return Err(missing("fused PCA of the configured dimensions"));
                }
                if cfg.method == FusionMethod::Concat {
                    p.transform(&concat(ya, yl, n, md), n)?
                } else {
                    tensor_project(p, ya, yl, n, md)
                }
            }
        };
        fused_table(cfg.method, g.ids, values, cfg.dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::sym_eigen_desc;
    use crate::PcaMethod;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// `n` rows of `d`-d features `U z + noise` with `z ∈ R^r`, scales `z_j ~ N(0, s_j²)`.
    fn low_rank_rows(
        n: usize,
        d: usize,
        scales: &[f32],
        noise: f32,
        rng: &mut ChaCha8Rng,
    ) -> Vec<f32> {
        let r = scales.len();
        let u: Vec<f32> = (0..r * d)
            .map(|_| {
                let v: f32 = StandardNormal.sample(rng);
                v / (d as f32).sqrt()
            })
            .collect();
        let mut x = vec![0f32; n * d];
        for row in x.chunks_mut(d) {
            let z: Vec<f32> = scales
                .iter()
                .map(|s| {
                    let v: f32 = StandardNormal.sample(rng);
                    s * v
                })
                .collect();
            for (c, v) in row.iter_mut().enumerate() {
                let e: f32 = StandardNormal.sample(rng);
                *v = 0.3 + noise * e + (0..r).map(|j| z[j] * u[j * d + c]).sum::<f32>();
            }
        }
        x
    }

    /// Audio and lyrics whose outer products have 128 strong directions: audio of rank 16,
    /// lyrics of rank 8, geometric scales (the 128 products are distinct), small noise. The
    /// tensor spectrum then has a clear gap after 128, as the subspace test needs.
    fn structured(n: usize, da: usize, dl: usize, seed: u64) -> (FeatureTable, FeatureTable) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sa: Vec<f32> = (0..16).map(|j| 3.0 * 0.93f32.powi(j)).collect();
        let sl: Vec<f32> = (0..8).map(|j| 2.0 * 0.77f32.powi(j)).collect();
        let a = low_rank_rows(n, da, &sa, 0.01, &mut rng);
        let l = low_rank_rows(n, dl, &sl, 0.01, &mut rng);
        let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let cols = |d: usize, p: &str| (0..d).map(|j| format!("{p}{j}")).collect();
        (
            FeatureTable::new("audio.tsv", ids.clone(), cols(da, "a"), a).unwrap(),
            FeatureTable::new("lyrics.tsv", ids, cols(dl, "l"), l).unwrap(),
        )
    }

    /// Largest principal angle between the row spaces of two `k x d` orthonormal-row
    /// matrices, as `asin ‖(I − C2ᵀC2) C1ᵀ‖₂`. (The cosine form, `arccos σ_min(C1 C2ᵀ)`,
    /// cannot resolve angles below √ε of f32 ≈ 3e-4: the f32 rows are orthonormal only to
    /// ~1e-7.)
    fn largest_angle(c1: &[f32], c2: &[f32], k: usize, d: usize) -> f64 {
        // M = C2 C1ᵀ, R = C1ᵀ − C2ᵀ M (d x k), sin² θ_max = λ_max(RᵀR).
        let mut m = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                m[i * k + j] = (0..d)
                    .map(|c| c2[i * d + c] as f64 * c1[j * d + c] as f64)
                    .sum();
            }
        }
        let mut r = vec![0f64; d * k];
        for c in 0..d {
            for j in 0..k {
                let proj: f64 = (0..k).map(|i| c2[i * d + c] as f64 * m[i * k + j]).sum();
                r[c * k + j] = c1[j * d + c] as f64 - proj;
            }
        }
        let mut rtr = vec![0f64; k * k];
        for row in r.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    rtr[i * k + j] += row[i] * row[j];
                }
            }
        }
        let (vals, _) = sym_eigen_desc(&rtr, k, "test").unwrap();
        vals[0].clamp(0.0, 1.0).sqrt().asin()
    }

    #[test]
    fn method_names_round_trip() {
        for m in FusionMethod::ALL {
            assert_eq!(m.to_string().parse::<FusionMethod>().unwrap(), m);
        }
        let e = "outer".parse::<FusionMethod>().unwrap_err().to_string();
        assert!(e.contains("`method`") && e.contains("\"outer\""), "{e}");
    }

    #[test]
    fn tensor_implicit_matches_materialised_on_2000_items() {
        let n = 2000;
        let (a, l) = structured(n, 128, 128, 42);
        let implicit = FusionConfig {
            method: FusionMethod::Tensor,
            fusion_pca: PcaOptions {
                method: PcaMethod::Randomized,
                ..Default::default()
            },
            ..Default::default()
        };
        let reference = FusionConfig {
            tensor_path: TensorPath::Materialised,
            fusion_pca: PcaOptions {
                method: PcaMethod::Exact,
                ..Default::default()
            },
            ..implicit
        };
        let (mi, ti) = fuse(Some(&a), Some(&l), &implicit, None).unwrap();
        let (mr, tr) = fuse(Some(&a), Some(&l), &reference, None).unwrap();
        let (pi, pr) = (mi.fused.as_ref().unwrap(), mr.fused.as_ref().unwrap());
        assert!(matches!(pi.method, FitMethod::Randomized { .. }));
        assert_eq!(pr.method, FitMethod::Gram);
        let (k, d) = (128, 128 * 128);
        let angle = largest_angle(&pi.components, &pr.components, k, d);
        assert!(angle < 1e-3, "largest principal angle {angle}");
        // Same means, variances and total variance.
        for (x, y) in pi.mean.iter().zip(&pr.mean) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} {y}");
        }
        for (j, (x, y)) in pi
            .explained_variance
            .iter()
            .zip(&pr.explained_variance)
            .enumerate()
        {
            assert!((x - y).abs() < 1e-4 * y, "variance {j}: {x} vs {y}");
        }
        assert!((pi.total_variance - pr.total_variance).abs() < 1e-6 * pr.total_variance);
        assert!(pi.explained_ratio() > 0.99, "{}", pi.explained_ratio());
        // Projected outputs agree column by column, up to sign.
        assert_eq!(ti.ids, tr.ids);
        let mut worst = 0f64;
        for j in 0..k {
            let col = |t: &FeatureTable| -> Vec<f64> {
                (0..n).map(|i| t.values[i * k + j] as f64).collect()
            };
            let (x, y) = (col(&ti), col(&tr));
            let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            let sign = dot.signum();
            let scale = (y.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - sign * b).abs())
                .fold(0.0, f64::max);
            worst = worst.max(err / scale);
        }
        eprintln!(
            "tensor 2000 items: largest angle {angle:.3e}, largest output difference {worst:.3e}"
        );
        assert!(
            worst < 1e-2,
            "largest output difference {worst} (relative to column RMS)"
        );
    }

    #[test]
    fn save_load_apply_round_trip_for_every_method() {
        let (a, l) = structured(300, 40, 30, 7);
        let dir = tempfile::tempdir().unwrap();
        for method in FusionMethod::ALL {
            let cfg = FusionConfig {
                method,
                dim: 8,
                modality_dim: 16,
                seed: 5,
                fusion_pca: PcaOptions {
                    method: PcaMethod::Randomized,
                    ..Default::default()
                },
                ..Default::default()
            };
            let pb = ProgressBar::hidden();
            let (model, table) = fuse(Some(&a), Some(&l), &cfg, Some(&pb)).unwrap();
            assert_eq!(
                pb.position(),
                pb.length().unwrap(),
                "{method}: one step per pass"
            );
            assert!(pb.position() >= 1);
            assert_eq!(table.dim(), 8);
            assert_eq!(table.len(), 300);
            assert_eq!(table.columns[7], "f7");
            let path = dir.path().join(format!("{method}.safetensors"));
            model.save(&path).unwrap();
            let loaded = FusionModel::load(&path).unwrap();
            assert_eq!(loaded, model, "{method}");
            let again = loaded.apply(Some(&a), Some(&l)).unwrap();
            assert_eq!(again.ids, table.ids);
            assert_eq!(again.values, table.values, "{method}");
            // New items (a reordered subset): each row fuses to the same vector, up to the
            // last bits (gemm blocks a 3-row product differently from a 300-row one).
            let pick = |t: &FeatureTable, rows: &[usize]| {
                let ids = rows.iter().map(|&r| t.ids[r].clone()).collect();
                let v = rows.iter().flat_map(|&r| t.row(r).to_vec()).collect();
                FeatureTable::new("new.tsv", ids, t.columns.clone(), v).unwrap()
            };
            let sub = [17usize, 3, 250];
            let new = loaded
                .apply(Some(&pick(&a, &sub)), Some(&pick(&l, &sub)))
                .unwrap();
            for (r, &i) in sub.iter().enumerate() {
                for (x, y) in new.row(r).iter().zip(table.row(i)) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{method} item {i}");
                }
            }
            let report = model.report();
            assert_eq!(report.n_items, 300);
            let last = report.stages.last().unwrap();
            assert_eq!(last.output_dim, 8);
            assert!(last.explained_ratio > 0.0 && last.explained_ratio <= 1.0 + 1e-9);
            assert!(report.to_string().contains(method.as_str()));
        }
    }

    #[test]
    fn audio_fusion_is_the_truncated_modality_pca() {
        let (a, _) = structured(200, 24, 10, 3);
        let cfg = FusionConfig {
            method: FusionMethod::Audio,
            dim: 4,
            modality_dim: 12,
            ..Default::default()
        };
        let (model, table) = fuse(Some(&a), None, &cfg, None).unwrap();
        let pca = Pca::fit(&a.values, 200, 24, 4, 0).unwrap();
        let want = pca.transform(&a.values, 200).unwrap();
        for (x, y) in table.values.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4, "{x} {y}");
        }
        let r = model.report();
        assert_eq!(r.stages.len(), 2);
        assert_eq!(r.stages[1].stage, "audio->4");
    }

    #[test]
    fn rows_are_the_id_intersection_in_audio_order() {
        let (a, l) = structured(50, 12, 10, 9);
        // Lyrics for a reversed subset of ids.
        let rows: Vec<usize> = (10..50).rev().collect();
        let ids = rows.iter().map(|&r| l.ids[r].clone()).collect();
        let v = rows.iter().flat_map(|&r| l.row(r).to_vec()).collect();
        let l2 = FeatureTable::new("l2.tsv", ids, l.columns.clone(), v).unwrap();
        let cfg = FusionConfig {
            method: FusionMethod::Concat,
            dim: 4,
            modality_dim: 6,
            ..Default::default()
        };
        let (m, t) = fuse(Some(&a), Some(&l2), &cfg, None).unwrap();
        assert_eq!(m.n_items, 40);
        let want: Vec<String> = (10..50).map(|i| format!("t{i}")).collect();
        assert_eq!(t.ids, want);
    }

    #[test]
    fn fusion_is_thread_count_independent() {
        let (a, l) = structured(700, 40, 30, 11);
        let cfg = FusionConfig {
            method: FusionMethod::Tensor,
            dim: 16,
            modality_dim: 30,
            fusion_pca: PcaOptions {
                method: PcaMethod::Randomized,
                ..Default::default()
            },
            ..Default::default()
        };
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| fuse(Some(&a), Some(&l), &cfg, None).unwrap())
        };
        let (m1, t1) = run(1);
        let (m3, t3) = run(3);
        assert_eq!(m1, m3);
        assert_eq!(t1.values, t3.values);
    }

    #[test]
    fn errors_name_the_parameter_or_file() {
        let (a, l) = structured(40, 12, 10, 1);
        let base = FusionConfig {
            dim: 4,
            modality_dim: 6,
            ..Default::default()
        };
        let err = |r: Result<(FusionModel, FeatureTable)>| r.unwrap_err().to_string();
        // A needed table is missing.
        let e = err(fuse(Some(&a), None, &base, None));
        assert!(e.contains("`lyrics`"), "{e}");
        let cfg = FusionConfig {
            method: FusionMethod::Lyrics,
            ..base
        };
        assert!(err(fuse(Some(&a), None, &cfg, None)).contains("`lyrics`"));
        // dim too large for the method; zero dims.
        let cfg = FusionConfig {
            method: FusionMethod::Audio,
            dim: 7,
            ..base
        };
        let e = err(fuse(Some(&a), Some(&l), &cfg, None));
        assert!(e.contains("`dim`") && e.contains("7"), "{e}");
        let e = err(fuse(
            Some(&a),
            Some(&l),
            &FusionConfig { dim: 0, ..base },
            None,
        ));
        assert!(e.contains("`dim`"), "{e}");
        let e = err(fuse(
            Some(&a),
            Some(&l),
            &FusionConfig {
                modality_dim: 0,
                ..base
            },
            None,
        ));
        assert!(e.contains("`modality_dim`"), "{e}");
        // modality_dim above a table's width names the table.
        let e = err(fuse(
            Some(&a),
            Some(&l),
            &FusionConfig {
                modality_dim: 11,
                ..base
            },
            None,
        ));
        assert!(
            e.contains("`modality_dim`") && e.contains("lyrics.tsv"),
            "{e}"
        );
        // Empty intersection.
        let ids = (0..40).map(|i| format!("other{i}")).collect();
        let l2 = FeatureTable::new("l2.tsv", ids, l.columns.clone(), l.values.clone()).unwrap();
        let e = err(fuse(Some(&a), Some(&l2), &base, None));
        assert!(
            e.contains("audio.tsv") && e.contains("l2.tsv") && e.contains("no item id"),
            "{e}"
        );
        // A non-finite value names file, row, id and column.
        let mut v = a.values.clone();
        v[3 * 12 + 5] = f32::INFINITY;
        let a2 = FeatureTable::new("bad.tsv", a.ids.clone(), a.columns.clone(), v).unwrap();
        let e = err(fuse(Some(&a2), Some(&l), &base, None));
        assert!(
            e.contains("bad.tsv")
                && e.contains("row 4")
                && e.contains("\"t3\"")
                && e.contains("\"a5\""),
            "{e}"
        );
        // Applying a model to a table of another width names the table.
        let (model, _) = fuse(Some(&a), Some(&l), &base, None).unwrap();
        let (a3, _) = structured(40, 13, 10, 1);
        let e = model.apply(Some(&a3), Some(&l)).unwrap_err().to_string();
        assert!(
            e.contains("audio.tsv") && e.contains("13 columns") && e.contains("12"),
            "{e}"
        );
        // Loading garbage or a missing file names the file.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.safetensors");
        std::fs::write(&p, b"not a model").unwrap();
        let e = FusionModel::load(&p).unwrap_err().to_string();
        assert!(e.contains("junk.safetensors"), "{e}");
        let e = FusionModel::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
        // A file whose tensors disagree with its recorded config.
        let mut broken = model.clone();
        broken.fused.as_mut().unwrap().components.truncate(4 * 5);
        broken.fused.as_mut().unwrap().mean.truncate(5);
        let p2 = dir.path().join("broken.safetensors");
        broken.save(&p2).unwrap();
        let e = FusionModel::load(&p2).unwrap_err().to_string();
        assert!(
            e.contains("broken.safetensors") && e.contains("fused.mean"),
            "{e}"
        );
        // A hand-built model lacking a stage is an error, not a panic.
        let mut partial = model.clone();
        partial.fused = None;
        assert!(partial.apply(Some(&a), Some(&l)).is_err());
    }
}
