//! EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"; MODELS.md "EASE"): a closed-form
//! item-item model, the honest bar for every neural model here (PEERS.md).
//!
//! ```text
//! G = XᵀX,   P = (G + λI)⁻¹,   B = I − P · diag(1 / diag(P))   (so diag(B) = 0),
//! scores(u) = x_u B
//! ```
//!
//! with `λ = 250` (RecBole's default; Steck tuned it per dataset in 200-1000, so it belongs in
//! the tuner's search space). Both presets are the same model; the key exists for uniformity.
//!
//! How it is computed:
//! - `G` is built sparsely from the item x user transpose of `X` (`G[:, j] = Σ_{u ∋ j} x_u`),
//!   parallel over columns, never densifying `X`; counts are exact integers.
//! - `G + λI = LLᵀ` by faer's in-place Cholesky (f64), then `P` by solving `LLᵀ P = I` in place:
//!   two `I x I` f64 matrices at the peak, 16·I² bytes. RecBole inverts in f32 with
//!   `np.linalg.inv`; we factor in f64 for accuracy and keep `B` in f32.
//! - `B[i, j] = −P[i, j] / P[j, j]`: row `i` of `B` is read from column `i` of `P` (contiguous),
//!   using the symmetry of `P` (exact in exact arithmetic; the f64 solve is symmetric to
//!   ~1e-13 relative, far below f32).
//! - `x_u B` is a sparse row times a dense matrix: the sum of `B`'s rows for the user's items.
//!
//! Memory is quadratic in the catalogue: `fit` refuses, before allocating anything large, when
//! 16·I² bytes exceed `max_memory_mb`, naming the limit, the catalogue size and the need.
//! EASE folds in natively: any history is just another `x_u`.

use std::path::Path;

use encore_data::InteractionMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use encore_core::config::{check_nonnegative_finite, check_range, ModelConfig, Preset};
use encore_core::registry::{ClosedForm, ModelEntry};
use encore_core::{ItemRepresentation, ItemVectors, ModelError, Recommender};

/// EASE hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EaseConfig {
    /// The preset (both give the same values).
    pub preset: Preset,
    /// λ, added to the diagonal of the Gram matrix (default 250; Steck: 200-1000). Must be > 0
    /// unless `XᵀX` itself is positive definite.
    pub reg_weight: f64,
    /// Refuse to fit when the item x item matrices would need more than this many MiB
    /// (default 8192; the need is 16·I² bytes at the peak).
    pub max_memory_mb: u64,
}

impl Default for EaseConfig {
    fn default() -> Self {
        Self::preset(Preset::Original)
    }
}

impl EaseConfig {
    /// The defaults of a preset (identical for both).
    pub fn preset(preset: Preset) -> Self {
        Self {
            preset,
            reg_weight: 250.0,
            max_memory_mb: 8192,
        }
    }

    /// Parse a TOML config (`configs/ease.toml`) through [`crate::config::resolve_table`]: keys not
    /// given take the preset's value, unknown keys are an error naming the key, the result is
    /// checked.
    pub fn from_toml_str(text: &str) -> Result<Self, ModelError> {
        crate::bpr::parse_model_config(text)
    }

    /// Validate every value, naming the first bad key and its allowed range.
    pub fn check(&self) -> Result<(), ModelError> {
        check_nonnegative_finite("reg_weight", self.reg_weight)?;
        check_range("max_memory_mb", self.max_memory_mb as f64, 1.0, 1e9)?;
        Ok(())
    }

    /// Bytes needed at the peak of [`Ease::fit`] for a catalogue of `n_items`.
    pub fn bytes_needed(n_items: usize) -> u128 {
        16 * (n_items as u128) * (n_items as u128)
    }
}

impl ModelConfig for EaseConfig {
    const MODEL: &'static str = "ease";

    fn preset(preset: Preset) -> Self {
        EaseConfig::preset(preset)
    }

    fn check(&self) -> Result<(), ModelError> {
        EaseConfig::check(self)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EaseMeta {
    config: EaseConfig,
    n_items: usize,
}

/// A fitted EASE model: the `I x I` item-item weights `B` (row-major, zero diagonal).
#[derive(Debug, Clone, PartialEq)]
pub struct Ease {
    config: EaseConfig,
    n_items: usize,
    weights: Vec<f32>,
}

impl Ease {
    /// Fit the closed form on `train` (module docs). Refuses catalogues whose matrices exceed
    /// `config.max_memory_mb`.
    pub fn fit(train: &InteractionMatrix, config: &EaseConfig) -> Result<Ease, ModelError> {
        config.check()?;
        let n = train.n_items();
        let need = EaseConfig::bytes_needed(n);
        let limit = config.max_memory_mb as u128 * 1024 * 1024;
        if need > limit {
            return Err(ModelError::config(
                "max_memory_mb",
                format!(
                    "EASE needs two {n} x {n} f64 matrices for a catalogue of {n} items: \
                     {} MiB, above the limit of {} MiB; raise `max_memory_mb` if the machine \
                     has the memory, or filter the catalogue (k-core)",
                    need.div_ceil(1024 * 1024),
                    config.max_memory_mb
                ),
            ));
        }
        if n == 0 {
            return Ok(Ease {
                config: config.clone(),
                n_items: 0,
                weights: Vec::new(),
            });
        }
        // G + λI, column-major (symmetric, so also row-major).
        let items = train.transpose();
        let mut g = vec![0.0f64; n * n];
        g.par_chunks_mut(n).enumerate().for_each(|(j, col)| {
            for &u in items.row(j) {
                for &i in train.row(u as usize) {
                    col[i as usize] += 1.0;
                }
            }
            col[j] += config.reg_weight;
        });
        let par = faer::Par::rayon(0);
        {
            let l = faer::MatMut::from_column_major_slice_mut(&mut g, n, n);
            let mut mem = faer::dyn_stack::MemBuffer::new(
                faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f64>(
                    n,
                    par,
                    Default::default(),
                ),
            );
            let stack = faer::dyn_stack::MemStack::new(&mut mem);
            faer::linalg::cholesky::llt::factor::cholesky_in_place(
                l,
                Default::default(),
                par,
                stack,
                Default::default(),
            )
            .map_err(|e| {
                ModelError::config(
                    "reg_weight",
                    format!(
                        "XᵀX + {}·I is not positive definite ({e:?}); use reg_weight > 0",
                        config.reg_weight
                    ),
                )
            })?;
        }
        let mut p = vec![0.0f64; n * n];
        for j in 0..n {
            p[j * n + j] = 1.0;
        }
        {
            let l = faer::MatRef::from_column_major_slice(&g, n, n);
            let rhs = faer::MatMut::from_column_major_slice_mut(&mut p, n, n);
            let mut mem = faer::dyn_stack::MemBuffer::new(
                faer::linalg::cholesky::llt::solve::solve_in_place_scratch::<f64>(n, n, par),
            );
            let stack = faer::dyn_stack::MemStack::new(&mut mem);
            faer::linalg::cholesky::llt::solve::solve_in_place(l, rhs, par, stack);
        }
        drop(g);
        let diag: Vec<f64> = (0..n).map(|j| p[j * n + j]).collect();
        let mut weights = vec![0.0f32; n * n];
        // Row i of B = column i of P (symmetric) scaled by −1/P[j, j], zero on the diagonal.
        weights
            .par_chunks_mut(n)
            .zip(p.par_chunks(n))
            .enumerate()
            .for_each(|(i, (row, pcol))| {
                for j in 0..n {
                    row[j] = if i == j {
                        0.0
                    } else {
                        (-pcol[j] / diag[j]) as f32
                    };
                }
            });
        Ok(Ease {
            config: config.clone(),
            n_items: n,
            weights,
        })
    }

    /// Load what [`Recommender::save`] wrote.
    pub fn load(dir: &Path) -> Result<Ease, ModelError> {
        let meta: EaseMeta = encore_io::read_json(&dir.join("ease.json"))?;
        meta.config.check()?;
        let path = dir.join("ease.safetensors");
        let mut t = encore_io::read_f32_tensors(&path)?;
        let n = meta.n_items;
        let weights = t.take("item_item", &[n, n])?;
        Ok(Ease {
            config: meta.config,
            n_items: n,
            weights,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EaseConfig {
        &self.config
    }

    /// `B`, row-major `n_items x n_items`.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    fn score_row(&self, history: &[u32], out: &mut [f32]) {
        let n = self.n_items;
        out.fill(0.0);
        for &i in history {
            let i = i as usize;
            if i < n {
                for (o, b) in out.iter_mut().zip(&self.weights[i * n..(i + 1) * n]) {
                    *o += b;
                }
            }
        }
    }
}

impl Recommender for Ease {
    fn name(&self) -> &'static str {
        "ease"
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_users(&self, users: &[u32], input: &InteractionMatrix, out: &mut [f32]) {
        crate::score_input_rows(self.n_items, users, input, out, |h, row| {
            self.score_row(h, row)
        });
    }

    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
        crate::check_items(history, self.n_items)?;
        self.score_row(history, out);
        Ok(())
    }

    fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        Some(ItemRepresentation {
            source: "the item-item weights B (row i: the weight of each item for a listener of i)",
            vectors: ItemVectors::Dense {
                values: &self.weights,
            },
        })
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let n = self.n_items;
        encore_io::write_f32_tensors(
            &dir.join("ease.safetensors"),
            &[("item_item", vec![n, n], &self.weights)],
            None,
        )?;
        Ok(encore_io::write_json(
            &dir.join("ease.json"),
            &EaseMeta {
                config: self.config.clone(),
                n_items: n,
            },
        )?)
    }
}

/// EASE's registry entry.
pub fn entry() -> ModelEntry {
    ModelEntry::closed_form::<Ease>("EASE (Steck 2019): closed-form item-item regression")
}

impl ClosedForm for Ease {
    type Config = EaseConfig;
    fn fit(config: &EaseConfig, train: &InteractionMatrix) -> Result<Self, ModelError> {
        Ease::fit(train, config)
    }
    fn load(dir: &Path) -> Result<Self, ModelError> {
        Ease::load(dir)
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index-heavy reference code reads clearer
mod tests {
    use super::*;
    use crate::bpr::tests::random_matrix;

    /// Dense reference: Gauss-Jordan inverse of G + λI in f64.
    fn dense_b(train: &InteractionMatrix, lambda: f64) -> Vec<Vec<f64>> {
        let n = train.n_items();
        let mut a = vec![vec![0.0; 2 * n]; n];
        for u in 0..train.n_users() {
            for &i in train.row(u) {
                for &j in train.row(u) {
                    a[i as usize][j as usize] += 1.0;
                }
            }
        }
        for (i, row) in a.iter_mut().enumerate() {
            row[i] += lambda;
            row[n + i] = 1.0;
        }
        for c in 0..n {
            let piv = (c..n)
                .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
                .unwrap();
            a.swap(c, piv);
            let d = a[c][c];
            a[c].iter_mut().for_each(|x| *x /= d);
            for r in 0..n {
                if r != c {
                    let f = a[r][c];
                    let pivot_row = a[c].clone();
                    a[r].iter_mut()
                        .zip(&pivot_row)
                        .for_each(|(x, p)| *x -= f * p);
                }
            }
        }
        let p: Vec<Vec<f64>> = a.iter().map(|r| r[n..].to_vec()).collect();
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| if i == j { 0.0 } else { -p[i][j] / p[j][j] })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_a_dense_reference_and_has_zero_diagonal() {
        let train = random_matrix(30, 12, 5, 21);
        let cfg = EaseConfig {
            reg_weight: 3.0,
            ..Default::default()
        };
        let ease = Ease::fit(&train, &cfg).unwrap();
        let b = dense_b(&train, 3.0);
        let n = 12;
        for i in 0..n {
            assert_eq!(ease.weights[i * n + i], 0.0);
            for j in 0..n {
                assert!(
                    (ease.weights[i * n + j] as f64 - b[i][j]).abs() < 1e-5,
                    "B[{i}][{j}]"
                );
            }
        }
        let users: Vec<u32> = (0..30).collect();
        let mut out = vec![0.0; 30 * n];
        ease.score_users(&users, &train, &mut out);
        for u in 0..30 {
            for j in 0..n {
                let expect: f64 = train.row(u).iter().map(|&i| b[i as usize][j]).sum();
                assert!((out[u * n + j] as f64 - expect).abs() < 1e-5);
            }
        }
        // Fold-in is the same computation on any history.
        let mut h = vec![0.0; n];
        ease.score_history(train.row(3), &mut h).unwrap();
        assert_eq!(&h[..], &out[3 * n..4 * n]);
        assert!(ease.score_history(&[12], &mut h).is_err());
    }

    #[test]
    fn hand_computed_two_item_case() {
        // Users {0,1}, {0}: G = [[2,1],[1,1]], λ = 1 -> G+λI = [[3,1],[1,2]], det 5,
        // P = [[2,-1],[-1,3]]/5, B[0][1] = -P01/P11 = 1/3, B[1][0] = -P10/P00 = 1/2.
        let train = InteractionMatrix::from_rows(2, &[vec![0, 1], vec![0]]);
        let ease = Ease::fit(
            &train,
            &EaseConfig {
                reg_weight: 1.0,
                ..Default::default()
            },
        )
        .unwrap();
        let w = ease.weights();
        assert!(
            (w[1] - 1.0 / 3.0).abs() < 1e-6 && (w[2] - 0.5).abs() < 1e-6,
            "{w:?}"
        );
        assert_eq!((w[0], w[3]), (0.0, 0.0));
    }

    #[test]
    fn refuses_catalogues_above_the_memory_limit() {
        let train = InteractionMatrix::empty(3, 2000);
        let cfg = EaseConfig {
            max_memory_mb: 16,
            ..Default::default()
        };
        let err = Ease::fit(&train, &cfg).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("max_memory_mb"), "{msg}");
        assert!(msg.contains("2000 items"), "{msg}");
        assert!(msg.contains("62 MiB") && msg.contains("16 MiB"), "{msg}");
        // Zero regularisation on a singular Gram matrix is a config error, not a panic.
        let singular = InteractionMatrix::from_rows(3, &[vec![0, 1]]);
        let err = Ease::fit(
            &singular,
            &EaseConfig {
                reg_weight: 0.0,
                ..Default::default()
            },
        );
        assert!(err.unwrap_err().to_string().contains("reg_weight"));
    }

    #[test]
    fn save_load_round_trip_and_thread_independence() {
        let train = random_matrix(50, 40, 6, 2);
        let cfg = EaseConfig::default();
        let fit = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| Ease::fit(&train, &cfg).unwrap())
        };
        let a = fit(1);
        assert_eq!(a, fit(2));
        let dir = tempfile::tempdir().unwrap();
        a.save(dir.path()).unwrap();
        assert_eq!(Ease::load(dir.path()).unwrap(), a);
        std::fs::write(dir.path().join("ease.json"), "{\"config\": 1}").unwrap();
        let err = Ease::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ease.json"), "{err}");
    }

    #[test]
    fn config_from_toml() {
        let c = EaseConfig::from_toml_str("preset = \"recbole\"\nreg_weight = 500.0\n").unwrap();
        assert_eq!(
            (c.preset, c.reg_weight, c.max_memory_mb),
            (Preset::Recbole, 500.0, 8192)
        );
        let e = EaseConfig::from_toml_str("lambda = 3.0").unwrap_err();
        assert!(
            matches!(&e, ModelError::Config { key, .. } if key == "lambda"),
            "{e}"
        );
        let e = EaseConfig::from_toml_str("reg_weight = -1.0").unwrap_err();
        assert!(e.to_string().contains("reg_weight"), "{e}");
    }

    #[test]
    fn shipped_configs_parse_to_the_documented_defaults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(
            EaseConfig::from_toml_str(&read("ease.toml")).unwrap(),
            EaseConfig::default()
        );
        assert_eq!(
            crate::bpr::BprConfig::from_toml_str(&read("bpr.toml")).unwrap(),
            crate::bpr::BprConfig::default()
        );
        assert_eq!(
            crate::lightgcn::LightGcnConfig::from_toml_str(&read("lightgcn.toml")).unwrap(),
            crate::lightgcn::LightGcnConfig::default()
        );
        let knn = encore_core::config::resolve::<crate::knn::KnnConfig>(
            Some(&dir.join("itemknn.toml")),
            &[],
        )
        .unwrap();
        assert_eq!(knn.model, crate::knn::KnnConfig::preset(Preset::Original));
    }
}

/// EASE on ml-100k against RecBole 1.2.1 (PEERS.md). Needs the shared data folder and is
/// skipped without it. The baselines' quality and speed on Encore's own draw are the example
/// `baselines_ml100k`.
#[cfg(test)]
mod ml100k {
    use super::*;
    use encore_data::readers::InteractionFormat;
    use encore_data::{Dataset, PrepareOptions, Split, SplitKind};
    use encore_eval::{evaluate, EvalOptions};

    const DATA: &str = "/work/shared/data/ml-100k/ml-100k.inter";

    /// EASE is a closed form, so on RecBole's own split (`ratio-recbole`) it must give
    /// RecBole 1.2.1's test metrics (PEERS.md, seed 2020) to the digits RecBole prints: this
    /// checks the split, the exclusions and all four metric definitions at once.
    #[test]
    fn ease_on_recboles_own_split_gives_recboles_metrics() {
        let path = Path::new(DATA);
        if !path.exists() {
            eprintln!("{DATA} is absent: skipping");
            return;
        }
        let (ds, _) = Dataset::import(
            &InteractionFormat::RecBole,
            path,
            &PrepareOptions::default(),
        )
        .unwrap();
        let split = Split::make(&ds, SplitKind::RatioRecbole, 2020).unwrap();
        let ease = Ease::fit(&split.train, &EaseConfig::preset(Preset::Recbole)).unwrap();
        let scorer = encore_core::ModelScorer {
            model: &ease,
            input: &split.input,
        };
        let m = evaluate(
            &scorer,
            &[&split.input, &split.valid],
            &split.test,
            &EvalOptions::default(),
        )
        .metrics;
        let r4 = |k: &str| (m[k] * 1e4).round() / 1e4;
        assert_eq!(
            [r4("ndcg@10"), r4("mrr@10"), r4("recall@10"), r4("hit@10")],
            [0.3295, 0.5277, 0.2805, 0.8197]
        );
    }
}
