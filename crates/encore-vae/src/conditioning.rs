//! Multi-modal user conditioning for MultiVAE-C and MacridVAE-C (MODELS.md "Conditioning",
//! SPEC §3, paper §3.2.1 and §4.3.3).
//!
//! A [`Conditioning`] holds one fused feature vector per catalogue item (in item-index order,
//! as `encore_data::FeatureTable::align` gives them) and whether the item has features at all.
//! A user's conditioning vector `c_u` is the **L2-normalised element-wise maximum** over the
//! fused vectors of the items in the user's *model input* (SPEC §3: training items, or the
//! fold-in history of a held-out user; never validation or test items, which would leak the
//! answer). The models compute `c_u` themselves from the very rows they encode, so the rows
//! handed to `score_users`/`score_history` are the only thing `c_u` can depend on.
//!
//! Rules where the spec is silent, chosen here and tested:
//! - items without features (`present[i] == false`) are skipped, as are item indices outside
//!   the catalogue (the models never pass any: they check their inputs);
//! - a user none of whose input items has features (or with an empty input) gets the all-zero
//!   vector, as does a user whose maximum is exactly zero (no direction to normalise); the
//!   models then behave as if the conditioning input were absent for that user, which is
//!   what the zero block of `[h ; c_u]` means.
//!
//! Saved beside the weights as `conditioning.safetensors`: `values` `[I, dim]` (f32) and
//! `present` `[I]` (f32, 0 or 1), written atomically.

use std::path::Path;

use encore_data::InteractionMatrix;
use encore_models::ModelError;
use rayon::prelude::*;

use crate::common::{read_safetensors, write_safetensors};

/// The conditioning kinds of MODELS.md: `none` (the plain model) and the four fusions of
/// SPEC §3 (`audio`, `lyrics`, `concat`, `tensor`). The kind only labels where the features
/// came from (the CLI fuses them); every kind but `none` conditions the model the same way.
pub const CONDITIONING_KINDS: &[&str] = &["none", "audio", "lyrics", "concat", "tensor"];

/// File name of the saved conditioning features inside a model folder.
pub const CONDITIONING_FILE: &str = "conditioning.safetensors";

/// Serde default of the `conditioning` config key (configs saved before it existed load).
pub(crate) fn default_kind() -> String {
    "none".into()
}

/// Serde default of the `cond_dim` config key: the 128 dimensions SPEC §3 fuses to.
pub(crate) fn default_dim() -> usize {
    128
}

/// Check a `conditioning` config value and `cond_dim` (errors name the key).
pub(crate) fn check_config(kind: &str, cond_dim: usize) -> Result<(), ModelError> {
    if !CONDITIONING_KINDS.contains(&kind) {
        return Err(ModelError::config(
            "conditioning",
            format!("expected one of {CONDITIONING_KINDS:?}, got `{kind}`"),
        ));
    }
    encore_models::config::check_range("cond_dim", cond_dim, 1, 1 << 16)
}

/// The width the conditioning adds to the model's layers: `cond_dim`, or 0 for `none`.
pub(crate) fn width(kind: &str, cond_dim: usize) -> usize {
    if kind == "none" {
        0
    } else {
        cond_dim
    }
}

/// Check the features given to a model against its configuration (see
/// `MultiVae::with_conditioning`).
pub(crate) fn check_for_model(
    kind: &str,
    cond_dim: usize,
    n_items: usize,
    cond: Option<&Conditioning>,
) -> Result<(), ModelError> {
    match (kind, cond) {
        ("none", None) => Ok(()),
        ("none", Some(_)) => Err(ModelError::config(
            "conditioning",
            "is `none`, but conditioning features were given (set it to the fusion kind they \
             come from)",
        )),
        (kind, None) => Err(ModelError::config(
            "conditioning",
            format!("is `{kind}`: the model needs conditioning features, none were given"),
        )),
        (_, Some(c)) => {
            if c.dim() != cond_dim {
                return Err(ModelError::config(
                    "cond_dim",
                    format!(
                        "is {cond_dim}, but the conditioning features have {} dimensions",
                        c.dim()
                    ),
                ));
            }
            if c.n_items() != n_items {
                return Err(ModelError::Input(format!(
                    "the conditioning features cover {} items, the catalogue has {n_items}",
                    c.n_items()
                )));
            }
            Ok(())
        }
    }
}

/// What both conditioned models check before building their weights: a non-empty catalogue
/// and features that fit the configuration ([`check_for_model`]). Returns the width the
/// conditioning adds to the conditioned layers ([`width`]).
pub(crate) fn prepare_model(
    kind: &str,
    cond_dim: usize,
    n_items: usize,
    cond: Option<&Conditioning>,
) -> Result<usize, ModelError> {
    if n_items == 0 {
        return Err(ModelError::Input("the catalogue is empty".into()));
    }
    check_for_model(kind, cond_dim, n_items, cond)?;
    Ok(width(kind, cond_dim))
}

/// `c · W_c` for a batch of conditioning vectors `c` (`[b, cr]`) and the conditioning rows
/// `W_c` (`[cr, o]`) of a layer's weight, into its own buffer (`[b, o]`): the caller adds it
/// to the layer's `h · W_h`. Kept separate rather than accumulated by `gemm` into the main
/// product, which rounds differently for one row than for many; fold-in (one row) must equal
/// batch scoring.
pub(crate) fn cond_product(c: &[f32], w_c: &[f32], b: usize, cr: usize, o: usize) -> Vec<f32> {
    let mut yc = vec![0f32; b * o];
    crate::kernels::matmul(
        &mut yc,
        crate::kernels::Mat::new(c, b, cr),
        crate::kernels::Mat::new(w_c, cr, o),
        false,
    );
    yc
}

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
        write_safetensors(
            &dir.join(CONDITIONING_FILE),
            &[
                (
                    "values".to_string(),
                    vec![self.n_items(), self.dim],
                    &self.values,
                ),
                ("present".to_string(), vec![self.n_items()], &present),
            ],
        )
    }

    /// Read what [`Conditioning::save`] wrote; errors name the file and the tensor at fault.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(CONDITIONING_FILE);
        let mut t = read_safetensors(&path)?;
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
        write_safetensors(
            &path,
            &[
                ("values".into(), vec![1, 2], &[1.0, 2.0][..]),
                ("present".into(), vec![1], &[0.5][..]),
            ],
        )
        .unwrap();
        let e = Conditioning::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("conditioning.safetensors") && e.contains("present"),
            "{e}"
        );
        write_safetensors(
            &path,
            &[
                ("values".into(), vec![2], &[1.0, 2.0][..]),
                ("present".into(), vec![2], &[1.0, 0.0][..]),
            ],
        )
        .unwrap();
        let e = Conditioning::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("values") && e.contains("shape"), "{e}");
        write_safetensors(&path, &[("values".into(), vec![1, 2], &[1.0, 2.0][..])]).unwrap();
        let e = Conditioning::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing tensor `present`"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(Conditioning::load(dir.path()).is_err());
    }

    #[test]
    fn config_and_model_checks_name_the_key() {
        assert!(check_config("tensor", 128).is_ok());
        for (kind, dim, key) in [("bert", 128, "conditioning"), ("audio", 0, "cond_dim")] {
            match check_config(kind, dim).unwrap_err() {
                ModelError::Config { key: k, .. } => assert_eq!(k, key),
                other => panic!("{other}"),
            }
        }
        let c = sample();
        assert!(check_for_model("none", 2, 4, None).is_ok());
        assert!(check_for_model("audio", 2, 4, Some(&c)).is_ok());
        assert!(check_for_model("none", 2, 4, Some(&c)).is_err());
        assert!(check_for_model("audio", 2, 4, None).is_err());
        assert!(check_for_model("audio", 3, 4, Some(&c)).is_err());
        assert!(check_for_model("audio", 2, 5, Some(&c)).is_err());
    }
}
