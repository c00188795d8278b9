//! Item features that condition a model on its user's listening (MODELS.md "Conditioning",
//! SPEC §3, paper §3.2.1 and §4.3.3).
//!
//! A [`Conditioning`] holds one fused feature vector per catalogue item (in item-index order,
//! as `encore_data::FeatureTable::align` gives them) and whether the item has features at all.
//! A user's conditioning vector `c_u` is the **L2-normalised element-wise maximum** over the
//! fused vectors of the items in the user's *model input* (SPEC §3: training items, or the
//! fold-in history of a held-out user; never validation or test items, which would leak the
//! answer). Models compute `c_u` themselves from the very rows they encode, so the rows
//! handed to `score_users`/`score_history` are the only thing `c_u` can depend on.
//!
//! Rules where the spec is silent, chosen here and tested:
//! - items without features (`present[i] == false`) are skipped, as are item indices outside
//!   the catalogue;
//! - a user none of whose input items has features (or with an empty input) gets the all-zero
//!   vector, as does a user whose maximum is exactly zero (no direction to normalise).
//!
//! Saved beside the weights as `conditioning.safetensors`: `values` `[I, dim]` (f32) and
//! `present` `[I]` (f32, 0 or 1), written atomically.

use std::path::Path;

use encore_data::InteractionMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Where a model's conditioning features come from (the `conditioning` config key): `none`
/// (the plain model) or one of the four fusions of SPEC §3. The kind only labels the source
/// (the command line fuses the features); every kind but `none` conditions a model the same
/// way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConditioningKind {
    #[default]
    None,
    Audio,
    Lyrics,
    Concat,
    Tensor,
}

impl ConditioningKind {
    /// Every kind, `none` first.
    pub const ALL: [ConditioningKind; 5] = [
        ConditioningKind::None,
        ConditioningKind::Audio,
        ConditioningKind::Lyrics,
        ConditioningKind::Concat,
        ConditioningKind::Tensor,
    ];

    /// The kind's name in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ConditioningKind::None => "none",
            ConditioningKind::Audio => "audio",
            ConditioningKind::Lyrics => "lyrics",
            ConditioningKind::Concat => "concat",
            ConditioningKind::Tensor => "tensor",
        }
    }

    /// Whether the kind needs an audio feature table.
    pub fn needs_audio(self) -> bool {
        matches!(
            self,
            ConditioningKind::Audio | ConditioningKind::Concat | ConditioningKind::Tensor
        )
    }

    /// Whether the kind needs a lyrics (text) feature table.
    pub fn needs_lyrics(self) -> bool {
        matches!(
            self,
            ConditioningKind::Lyrics | ConditioningKind::Concat | ConditioningKind::Tensor
        )
    }
}

impl std::fmt::Display for ConditioningKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// File name of the saved conditioning features inside a model folder.
pub const CONDITIONING_FILE: &str = "conditioning.safetensors";

/// Fused per-item features, the source of every user's conditioning vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioning {
    dim: usize,
    /// `n_items x dim`, row-major, item index order.
    values: Vec<f32>,
    present: Vec<bool>,
}

impl Conditioning {
    /// Features for a catalogue of `n_items`: `values` row-major `n_items x dim` (rows of
    /// items without features are ignored; zeros by convention), `present[i]` whether item `i`
    /// has features. Errors on a shape mismatch, `dim = 0`, or a non-finite value (naming the
    /// item and column).
    pub fn new(
        n_items: usize,
        dim: usize,
        values: Vec<f32>,
        present: Vec<bool>,
    ) -> Result<Self, ModelError> {
        if dim == 0 {
            return Err(ModelError::Input(
                "conditioning features need at least one dimension".into(),
            ));
        }
        if present.len() != n_items {
            return Err(ModelError::Input(format!(
                "the conditioning `present` mask has {} entries, expected {n_items} (one per item)",
                present.len()
            )));
        }
        if values.len() != n_items * dim {
            return Err(ModelError::Input(format!(
                "the conditioning values have {} entries, expected {n_items} items x {dim} \
                 dimensions = {}",
                values.len(),
                n_items * dim
            )));
        }
        if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Input(format!(
                "conditioning value of item {} column {} is {}, expected a finite number",
                pos / dim,
                pos % dim,
                values[pos]
            )));
        }
        Ok(Conditioning {
            dim,
            values,
            present,
        })
    }

    /// From features aligned to the catalogue (`FeatureTable::align`).
    pub fn from_aligned(
        aligned: encore_data::features::AlignedFeatures,
    ) -> Result<Self, ModelError> {
        let n = aligned.present.len();
        Conditioning::new(n, aligned.dim, aligned.values, aligned.present)
    }

    /// Dimensions per item (`cond_dim` of the model).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Catalogue size.
    pub fn n_items(&self) -> usize {
        self.present.len()
    }

    /// Items that have features.
    pub fn n_present(&self) -> usize {
        self.present.iter().filter(|&&p| p).count()
    }

    /// The fused vector of item `i`, if it has one.
    pub fn item(&self, i: usize) -> Option<&[f32]> {
        (self.present.get(i) == Some(&true)).then(|| &self.values[i * self.dim..][..self.dim])
    }

    /// The user's conditioning vector from the items of their model input: the L2-normalised
    /// element-wise maximum over the fused vectors of those items (see the module doc for
    /// items without features and the all-zero case). `out` must hold `dim` values.
    pub fn user_vector(&self, items: &[u32], out: &mut [f32]) {
        assert_eq!(out.len(), self.dim, "conditioning vector buffer size");
        let mut any = false;
        for &i in items {
            let Some(v) = self.item(i as usize) else {
                continue;
            };
            if any {
                for (o, x) in out.iter_mut().zip(v) {
                    *o = o.max(*x);
                }
            } else {
                out.copy_from_slice(v);
                any = true;
            }
        }
        if !any {
            out.fill(0.0);
            return;
        }
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            out.iter_mut().for_each(|v| *v /= norm);
        } else {
            out.fill(0.0);
        }
    }

    /// The conditioning vectors of `users`' rows of `input` (a CSR matrix), row-major
    /// `[users.len(), dim]`; parallel over users, each row independent of the thread count.
    pub fn user_vectors(&self, input: &InteractionMatrix, users: &[u32]) -> Vec<f32> {
        let mut out = vec![0f32; users.len() * self.dim];
        out.par_chunks_mut(self.dim)
            .zip(users)
            .for_each(|(o, &u)| self.user_vector(input.row(u as usize), o));
        out
    }

    /// Write `dir/conditioning.safetensors` (atomically; `dir` must exist).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let present: Vec<f32> = self
            .present
            .iter()
            .map(|&p| if p { 1.0 } else { 0.0 })
            .collect();
        Ok(encore_io::write_f32_tensors(
            &dir.join(CONDITIONING_FILE),
            &[
                ("values", vec![self.n_items(), self.dim], &self.values[..]),
                ("present", vec![self.n_items()], &present[..]),
            ],
            None,
        )?)
    }

    /// Read what [`Conditioning::save`] wrote; errors name the file and the tensor at fault.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(CONDITIONING_FILE);
        let mut t = encore_io::read_f32_tensors(&path)?.map;
        let mut take = |name: &str| {
            t.remove(name)
                .ok_or_else(|| ModelError::format(&path, format!("missing tensor `{name}`")))
        };
        let (vshape, values) = take("values")?;
        let (pshape, present) = take("present")?;
        let [n, dim] = vshape[..] else {
            return Err(ModelError::format(
                &path,
                format!("tensor `values` has shape {vshape:?}, expected [items, dim]"),
            ));
        };
        if pshape != [n] {
            return Err(ModelError::format(
                &path,
                format!("tensor `present` has shape {pshape:?}, expected [{n}]"),
            ));
        }
        let present = present
            .iter()
            .enumerate()
            .map(|(i, &p)| match p {
                0.0 => Ok(false),
                1.0 => Ok(true),
                other => Err(ModelError::format(
                    &path,
                    format!("tensor `present`, item {i}: {other}, expected 0 or 1"),
                )),
            })
            .collect::<Result<Vec<bool>, _>>()?;
        Conditioning::new(n, dim, values, present)
            .map_err(|e| ModelError::format(&path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Conditioning {
        // 4 items, dim 2; item 2 has no features.
        Conditioning::new(
            4,
            2,
            vec![3.0, -1.0, 0.0, 4.0, 9.0, 9.0, -2.0, -5.0],
            vec![true, true, false, true],
        )
        .unwrap()
    }

    /// Hand-computed: items {0, 1}: max = (3, 4), norm 5 -> (0.6, 0.8). Item 2 (no features)
    /// is skipped, so {0, 1, 2} gives the same. Item 3 alone: (-2, -5) / sqrt(29).
    #[test]
    fn user_vector_is_the_normalised_max_over_featured_items() {
        let c = sample();
        let mut out = [0f32; 2];
        c.user_vector(&[0, 1], &mut out);
        assert_eq!(out, [0.6, 0.8]);
        c.user_vector(&[1, 2, 0, 0], &mut out);
        assert_eq!(out, [0.6, 0.8]);
        c.user_vector(&[3], &mut out);
        let n = 29f32.sqrt();
        assert!((out[0] + 2.0 / n).abs() < 1e-7 && (out[1] + 5.0 / n).abs() < 1e-7);
        // Max with a negative item: (3, -1) vs (-2, -5) -> (3, -1).
        c.user_vector(&[3, 0], &mut out);
        let n = 10f32.sqrt();
        assert!((out[0] - 3.0 / n).abs() < 1e-7 && (out[1] + 1.0 / n).abs() < 1e-7);
    }

    #[test]
    fn no_featured_items_gives_zeros() {
        let c = sample();
        let mut out = [7f32; 2];
        c.user_vector(&[], &mut out);
        assert_eq!(out, [0.0, 0.0]);
        out = [7.0; 2];
        c.user_vector(&[2], &mut out);
        assert_eq!(out, [0.0, 0.0]);
        out = [7.0; 2];
        c.user_vector(&[2, 99], &mut out);
        assert_eq!(out, [0.0, 0.0]);
        // A maximum of exactly zero has no direction: zeros, not NaN.
        let z = Conditioning::new(1, 2, vec![0.0, 0.0], vec![true]).unwrap();
        z.user_vector(&[0], &mut out);
        assert_eq!(out, [0.0, 0.0]);
    }

    #[test]
    fn batch_vectors_follow_the_rows() {
        let c = sample();
        let m = InteractionMatrix::from_rows(4, &[vec![0u32, 1], vec![], vec![2], vec![3]]);
        let v = c.user_vectors(&m, &[2, 0, 1]);
        assert_eq!(&v[..4], &[0.0, 0.0, 0.6, 0.8]);
        assert_eq!(&v[4..], &[0.0, 0.0]);
    }

    #[test]
    fn new_checks_shapes_and_finiteness() {
        assert!(Conditioning::new(2, 2, vec![0.0; 3], vec![true; 2]).is_err());
        assert!(Conditioning::new(2, 2, vec![0.0; 4], vec![true; 3]).is_err());
        assert!(Conditioning::new(2, 0, vec![], vec![true; 2]).is_err());
        let e = Conditioning::new(2, 2, vec![0.0, 0.0, 0.0, f32::NAN], vec![true; 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("item 1 column 1"), "{e}");
    }

    #[test]
    fn save_load_round_trip_and_bad_files() {
        let c = sample();
        let dir = tempfile::tempdir().unwrap();
        c.save(dir.path()).unwrap();
        assert_eq!(Conditioning::load(dir.path()).unwrap(), c);
        // A mask value that is not 0/1.
        let path = dir.path().join(CONDITIONING_FILE);
        encore_io::write_f32_tensors(
            &path,
            &[
                ("values", vec![1, 2], &[1.0, 2.0][..]),
                ("present", vec![1], &[0.5][..]),
            ],
            None,
        )
        .unwrap();
        let e = Conditioning::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("conditioning.safetensors") && e.contains("present"),
            "{e}"
        );
        encore_io::write_f32_tensors(
            &path,
            &[
                ("values", vec![2], &[1.0, 2.0][..]),
                ("present", vec![2], &[1.0, 0.0][..]),
            ],
            None,
        )
        .unwrap();
        let e = Conditioning::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("values") && e.contains("shape"), "{e}");
        encore_io::write_f32_tensors(&path, &[("values", vec![1, 2], &[1.0, 2.0][..])], None)
            .unwrap();
        let e = Conditioning::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing tensor `present`"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(Conditioning::load(dir.path()).is_err());
    }
}
