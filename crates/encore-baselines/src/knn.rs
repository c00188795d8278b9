//! Item-based k-nearest neighbours (Sarwar et al. 2001; Deshpande & Karypis 2004), the classic
//! neighbourhood baseline, in RecBole 1.2.1's `ItemKNN` form.
//!
//! On the binary training matrix `X` (users x items), the cosine similarity of items `i` and `j`
//! is
//!
//! ```text
//! s_ij = c_ij / (√n_i · √n_j + shrink + 1e-6),     c_ij = |users of i ∩ users of j|,
//! ```
//!
//! `n_i` being item `i`'s number of training users (RecBole's `ComputeSimilarity`, shrinkage and
//! its `1e-6` included). For each item `j` only its `k` most similar other items are kept
//! (self-similarity is zero, zero similarities are dropped; ties go to the lower item index,
//! where RecBole's `argpartition` leaves them unspecified), and a listener with history `h` gets
//!
//! ```text
//! score_j = Σ_{i ∈ h, i ∈ N_k(j)} s_ij .
//! ```
//!
//! Any history can be scored, so new listeners fold in natively. Defaults: `k = 100`,
//! `shrink = 0` (RecBole's; both presets give the same values).
//!
//! **Cost.** Fitting counts co-occurrences item by item (for each item, every user of it and
//! every item of those users: `Σ_u |row_u|²` in all, parallel over items, exact integer counts
//! so the result does not depend on the thread count) and keeps `I · k` similarities; scoring a
//! user adds `k`-bounded neighbour lists of the history's items. The whole `I x I` similarity is
//! never formed.

use std::path::Path;

use encore_core::config::{check_nonnegative_finite, check_range, ModelConfig, Preset};
use encore_core::registry::{ClosedForm, ModelEntry};
use encore_core::{ItemRepresentation, ItemVectors, ModelError, Recommender};
use encore_data::InteractionMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Item-kNN's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnnConfig {
    /// The preset (both give the same values).
    pub preset: Preset,
    /// Neighbours kept per item (default 100, RecBole's), >= 1.
    pub k: usize,
    /// Shrinkage added to the cosine's denominator (default 0), >= 0: damps similarities
    /// resting on few co-listeners.
    pub shrink: f64,
}

impl ModelConfig for KnnConfig {
    const MODEL: &'static str = "itemknn";

    fn preset(preset: Preset) -> Self {
        KnnConfig {
            preset,
            k: 100,
            shrink: 0.0,
        }
    }

    fn check(&self) -> Result<(), ModelError> {
        check_range("k", self.k, 1, 1 << 20)?;
        check_nonnegative_finite("shrink", self.shrink)
    }
}

/// Item-kNN's registry entry.
pub fn entry() -> ModelEntry {
    ModelEntry::closed_form::<ItemKnn>("item-based k-nearest neighbours, cosine similarity")
}

/// A fitted item-kNN model: for each item `i`, the items `j` that keep `i` among their `k`
/// neighbours, with `s_ij` (the lists a history's items contribute to when scoring).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemKnn {
    config: KnnConfig,
    n_items: usize,
    /// `targets[offsets[i]..offsets[i + 1]]`: the items whose neighbourhood contains `i`,
    /// ascending.
    offsets: Vec<usize>,
    targets: Vec<u32>,
    /// `s_ij` for each entry of `targets`.
    weights: Vec<f32>,
}

/// The largest catalogue whose item indices the saved file holds exactly (they are stored as
/// f32, the one tensor type Encore's model files use).
const MAX_SAVED_ITEMS: usize = 1 << 24;

impl ItemKnn {
    /// Fit on the training matrix (module docs).
    pub fn fit(train: &InteractionMatrix, config: &KnnConfig) -> Result<ItemKnn, ModelError> {
        config.check()?;
        let n_items = train.n_items();
        let by_item = train.transpose();
        let norms: Vec<f64> = train
            .item_counts()
            .iter()
            .map(|&c| (c as f64).sqrt())
            .collect();
        // Each item's neighbourhood: its `k` most similar other items.
        let neighbourhoods: Vec<Vec<(u32, f32)>> = (0..n_items)
            .into_par_iter()
            .map_init(
                || (vec![0u32; n_items], Vec::new()),
                |(counts, touched), j| {
                    for &u in by_item.row(j) {
                        for &i in train.row(u as usize) {
                            if counts[i as usize] == 0 {
                                touched.push(i);
                            }
                            counts[i as usize] += 1;
                        }
                    }
                    let mut sims: Vec<(u32, f32)> = touched
                        .iter()
                        .filter(|&&i| i as usize != j)
                        .map(|&i| {
                            let c = counts[i as usize] as f64;
                            let s = c / (norms[i as usize] * norms[j] + config.shrink + 1e-6);
                            (i, s as f32)
                        })
                        .filter(|&(_, s)| s != 0.0)
                        .collect();
                    for i in touched.drain(..) {
                        counts[i as usize] = 0;
                    }
                    let by_similarity =
                        |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
                    if sims.len() > config.k {
                        sims.select_nth_unstable_by(config.k - 1, by_similarity);
                        sims.truncate(config.k);
                    }
                    sims
                },
            )
            .collect();
        // Transpose to source -> targets, so that scoring walks the history's lists.
        let mut offsets = vec![0usize; n_items + 1];
        for hood in &neighbourhoods {
            for &(i, _) in hood {
                offsets[i as usize + 1] += 1;
            }
        }
        for i in 0..n_items {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut targets = vec![0u32; offsets[n_items]];
        let mut weights = vec![0f32; offsets[n_items]];
        for (j, hood) in neighbourhoods.iter().enumerate() {
            for &(i, s) in hood {
                let at = &mut fill[i as usize];
                targets[*at] = j as u32;
                weights[*at] = s;
                *at += 1;
            }
        }
        Ok(ItemKnn {
            config: config.clone(),
            n_items,
            offsets,
            targets,
            weights,
        })
    }

    /// The configuration it was fitted with.
    pub fn config(&self) -> &KnnConfig {
        &self.config
    }

    /// The `k` (or fewer) most similar items of `j` with their similarity, most similar first.
    pub fn neighbours(&self, j: u32) -> Vec<(u32, f32)> {
        let mut out: Vec<(u32, f32)> = (0..self.n_items)
            .filter_map(|i| {
                let range = self.offsets[i]..self.offsets[i + 1];
                let at = self.targets[range.clone()].binary_search(&j).ok()?;
                Some((i as u32, self.weights[range.start + at]))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Scores of every item for a history of distinct, in-catalogue items, summed in history
    /// order.
    fn score_row(&self, history: &[u32], out: &mut [f32]) {
        out.fill(0.0);
        for &i in history {
            let range = self.offsets[i as usize]..self.offsets[i as usize + 1];
            for (&j, &s) in self.targets[range.clone()].iter().zip(&self.weights[range]) {
                out[j as usize] += s;
            }
        }
    }

    /// Load what [`Recommender::save`] wrote.
    pub fn load(dir: &Path) -> Result<ItemKnn, ModelError> {
        let meta: KnnMeta = encore_io::read_json(&dir.join("itemknn.json"))?;
        meta.config.check()?;
        let path = dir.join("itemknn.safetensors");
        let mut t = encore_io::read_f32_tensors(&path)?;
        let n = meta.n_items;
        let counts = t.take("neighbour_counts", &[n])?;
        let nnz = counts.iter().map(|&c| c as usize).sum::<usize>();
        let targets_f = t.take("targets", &[nnz])?;
        let weights = t.take("weights", &[nnz])?;
        let bad = |what: &str| ModelError::format(&path, format!("tensor `{what}` is corrupt"));
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0usize);
        for &c in &counts {
            if c < 0.0 || c.fract() != 0.0 {
                return Err(bad("neighbour_counts"));
            }
            offsets.push(offsets.last().copied().unwrap_or(0) + c as usize);
        }
        let mut targets = Vec::with_capacity(nnz);
        for &v in &targets_f {
            if !(v >= 0.0 && (v as usize) < n && v.fract() == 0.0) {
                return Err(bad("targets"));
            }
            targets.push(v as u32);
        }
        if (0..n).any(|i| {
            !targets[offsets[i]..offsets[i + 1]]
                .windows(2)
                .all(|w| w[0] < w[1])
        }) {
            return Err(bad("targets"));
        }
        Ok(ItemKnn {
            config: meta.config,
            n_items: n,
            offsets,
            targets,
            weights,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnnMeta {
    config: KnnConfig,
    n_items: usize,
}

impl Recommender for ItemKnn {
    fn name(&self) -> &'static str {
        "itemknn"
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
        // A history is a set of items, as a row of the interaction matrix is.
        let mut items = history.to_vec();
        items.sort_unstable();
        items.dedup();
        self.score_row(&items, out);
        Ok(())
    }

    fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        Some(ItemRepresentation {
            source: "the cosine similarities s_ij the model scores with (row i: the items whose k nearest neighbours include i)",
            vectors: ItemVectors::Sparse {
                offsets: &self.offsets,
                targets: &self.targets,
                weights: &self.weights,
            },
        })
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        if self.n_items > MAX_SAVED_ITEMS {
            return Err(ModelError::Input(format!(
                "item-kNN saves catalogues of at most {MAX_SAVED_ITEMS} items, this one has {}",
                self.n_items
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let counts: Vec<f32> = self
            .offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as f32)
            .collect();
        let targets: Vec<f32> = self.targets.iter().map(|&j| j as f32).collect();
        let nnz = self.targets.len();
        encore_io::write_f32_tensors(
            &dir.join("itemknn.safetensors"),
            &[
                ("neighbour_counts", vec![self.n_items], &counts[..]),
                ("targets", vec![nnz], &targets[..]),
                ("weights", vec![nnz], &self.weights[..]),
            ],
            None,
        )?;
        encore_io::write_json(
            &dir.join("itemknn.json"),
            &KnnMeta {
                config: self.config.clone(),
                n_items: self.n_items,
            },
        )?;
        Ok(())
    }
}

impl ClosedForm for ItemKnn {
    type Config = KnnConfig;
    fn fit(config: &KnnConfig, train: &InteractionMatrix) -> Result<Self, ModelError> {
        ItemKnn::fit(train, config)
    }
    fn load(dir: &Path) -> Result<Self, ModelError> {
        ItemKnn::load(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpr::tests::random_matrix;

    /// Cosine similarities straight from the dense definition.
    fn dense_similarity(m: &InteractionMatrix, shrink: f64) -> Vec<Vec<f64>> {
        let n = m.n_items();
        let mut x = vec![vec![0f64; n]; m.n_users()];
        for (u, row) in x.iter_mut().enumerate() {
            for &i in m.row(u) {
                row[i as usize] = 1.0;
            }
        }
        let count = |i: usize| x.iter().filter(|r| r[i] > 0.0).count() as f64;
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        if i == j {
                            return 0.0;
                        }
                        let c: f64 = x.iter().map(|r| r[i] * r[j]).sum();
                        c / (count(i).sqrt() * count(j).sqrt() + shrink + 1e-6)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn scores_match_the_dense_definition() {
        let m = random_matrix(40, 25, 5, 3);
        for (k, shrink) in [(5, 0.0), (3, 2.5), (100, 0.0)] {
            let cfg = KnnConfig {
                k,
                shrink,
                ..KnnConfig::preset(Preset::Original)
            };
            let model = ItemKnn::fit(&m, &cfg).unwrap();
            let sim = dense_similarity(&m, shrink);
            let n = m.n_items();
            // Each item keeps its k most similar (non-zero, other) items.
            let mut keep = vec![vec![false; n]; n];
            for j in 0..n {
                let mut order: Vec<usize> = (0..n).filter(|&i| i != j && sim[i][j] > 0.0).collect();
                order.sort_by(|&a, &b| sim[b][j].total_cmp(&sim[a][j]).then(a.cmp(&b)));
                for &i in order.iter().take(k) {
                    keep[i][j] = true;
                }
            }
            let users: Vec<u32> = (0..m.n_users() as u32).collect();
            let mut out = vec![0f32; users.len() * n];
            model.score_users(&users, &m, &mut out);
            for u in 0..m.n_users() {
                for j in 0..n {
                    let want: f64 = m
                        .row(u)
                        .iter()
                        .filter(|&&i| keep[i as usize][j])
                        .map(|&i| sim[i as usize][j])
                        .sum();
                    let got = out[u * n + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "k {k} u {u} j {j}: {got} vs {want}"
                    );
                }
            }
            for j in 0..n as u32 {
                assert!(model.neighbours(j).len() <= k);
            }
        }
    }

    #[test]
    fn history_scoring_equals_matrix_rows_and_is_thread_count_independent() {
        let m = random_matrix(60, 30, 5, 9);
        let cfg = KnnConfig::preset(Preset::Recbole);
        let fit_on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| ItemKnn::fit(&m, &cfg).unwrap())
        };
        let model = fit_on(1);
        assert_eq!(model, fit_on(3));
        let n = m.n_items();
        let mut row = vec![0f32; n];
        let mut hist = vec![0f32; n];
        for u in 0..m.n_users() {
            model.score_users(&[u as u32], &m, &mut row);
            // Duplicates and order in a posted history do not matter.
            let mut h: Vec<u32> = m.row(u).iter().rev().copied().collect();
            h.extend(m.row(u).first());
            model.score_history(&h, &mut hist).unwrap();
            assert_eq!(row, hist, "user {u}");
        }
        assert!(model.score_history(&[n as u32], &mut hist).is_err());
    }

    #[test]
    fn save_load_round_trip_and_corrupt_files() {
        let m = random_matrix(30, 20, 4, 5);
        let model = ItemKnn::fit(&m, &KnnConfig::preset(Preset::Original)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        assert_eq!(ItemKnn::load(dir.path()).unwrap(), model);
        std::fs::write(dir.path().join("itemknn.safetensors"), b"junk").unwrap();
        let err = ItemKnn::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("itemknn.safetensors"), "{err}");
    }

    #[test]
    fn bad_config_names_the_key() {
        let cfg = KnnConfig {
            k: 0,
            ..KnnConfig::preset(Preset::Original)
        };
        match cfg.check().unwrap_err() {
            ModelError::Config { key, .. } => assert_eq!(key, "k"),
            other => panic!("{other}"),
        }
    }
}
