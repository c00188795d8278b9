//! Item-item similarity from a model's own item representations (SPEC §7: the service's
//! "similar tracks"). A model exposes what it represents items by, borrowed, through
//! [`Recommender::item_representation`](crate::Recommender::item_representation); this module
//! turns that into one similarity per catalogue item, the same way for every model:
//!
//! - item vectors (factorisation embeddings, a decoder's output weights) compare by cosine;
//! - learned item-item weights (EASE's `B`, item-kNN's neighbourhood similarities) are read as
//!   they are: the similarity of `j` to `i` is the weight `w_ij` the model scores with.
//!
//! Pop has no item representation: it ranks every listener's items the same way.

/// How a model represents its items, borrowed from the model.
#[derive(Clone, Copy, Debug)]
pub enum ItemVectors<'a> {
    /// Item `i` is row `i` of a row-major `n_items x dim` matrix (embedding tables).
    Rows { values: &'a [f32], dim: usize },
    /// Item `i` is column `i` of a row-major `dim x n_items` matrix (a dense layer's
    /// `[inputs, outputs]` weight whose outputs are the items: a decoder's last layer).
    Columns { values: &'a [f32], dim: usize },
    /// Learned item-item weights, row-major `n_items x n_items`: row `i` holds `w_ij`.
    Dense { values: &'a [f32] },
    /// Sparse learned item-item weights: row `i` is `targets[offsets[i]..offsets[i + 1]]`
    /// with `weights` alongside; items absent from a row have weight 0.
    Sparse {
        offsets: &'a [usize],
        targets: &'a [u32],
        weights: &'a [f32],
    },
}

/// A model's item representation and a one-line account of what it is, for the service's
/// `/v1/models` and its similar-items answers (e.g. "decoder output weights (600-d), cosine").
#[derive(Clone, Copy, Debug)]
pub struct ItemRepresentation<'a> {
    pub source: &'static str,
    pub vectors: ItemVectors<'a>,
}

impl ItemRepresentation<'_> {
    /// The similarity of every item to `item`, written into `out` (`n_items` entries). For
    /// vectors, the cosine (0 when either vector is zero); for weights, `w_item,j`. The entry
    /// of `item` itself is written like any other; callers exclude it.
    pub fn similarities(&self, item: u32, out: &mut [f32]) {
        let i = item as usize;
        match self.vectors {
            ItemVectors::Rows { values, dim } => {
                let q = &values[i * dim..(i + 1) * dim];
                let qn = norm(q.iter().copied());
                for (j, o) in out.iter_mut().enumerate() {
                    let v = &values[j * dim..(j + 1) * dim];
                    let d: f32 = q.iter().zip(v).map(|(a, b)| a * b).sum();
                    *o = cosine(d, qn, norm(v.iter().copied()));
                }
            }
            ItemVectors::Columns { values, dim } => {
                let n = out.len();
                let qn = norm((0..dim).map(|r| values[r * n + i]));
                let mut dots = vec![0f32; n];
                let mut norms = vec![0f32; n];
                // Row by row, so that the matrix is read in memory order.
                for r in 0..dim {
                    let row = &values[r * n..(r + 1) * n];
                    let q = row[i];
                    for ((d, s), &v) in dots.iter_mut().zip(&mut norms).zip(row) {
                        *d += q * v;
                        *s += v * v;
                    }
                }
                for ((o, d), s) in out.iter_mut().zip(dots).zip(norms) {
                    *o = cosine(d, qn, s.sqrt());
                }
            }
            ItemVectors::Dense { values } => {
                let n = out.len();
                out.copy_from_slice(&values[i * n..(i + 1) * n]);
            }
            ItemVectors::Sparse {
                offsets,
                targets,
                weights,
            } => {
                out.fill(0.0);
                let range = offsets[i]..offsets[i + 1];
                for (&j, &w) in targets[range.clone()].iter().zip(&weights[range]) {
                    out[j as usize] = w;
                }
            }
        }
    }
}

fn norm(v: impl Iterator<Item = f32>) -> f32 {
    v.map(|x| x * x).sum::<f32>().sqrt()
}

fn cosine(dot: f32, a: f32, b: f32) -> f32 {
    if a > 0.0 && b > 0.0 {
        dot / (a * b)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows and columns of the same vectors give the same cosines, which match the definition.
    #[test]
    fn rows_and_columns_give_the_cosine() {
        // Three 2-d item vectors: (1, 0), (1, 1), (0, 0).
        let rows = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let cols = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        let mut a = [0f32; 3];
        let mut b = [0f32; 3];
        ItemRepresentation {
            source: "rows",
            vectors: ItemVectors::Rows {
                values: &rows,
                dim: 2,
            },
        }
        .similarities(1, &mut a);
        ItemRepresentation {
            source: "columns",
            vectors: ItemVectors::Columns {
                values: &cols,
                dim: 2,
            },
        }
        .similarities(1, &mut b);
        let expected = [std::f32::consts::FRAC_1_SQRT_2, 1.0, 0.0];
        for (x, e) in a.iter().zip(&expected) {
            assert!((x - e).abs() < 1e-6, "{a:?}");
        }
        for (x, e) in b.iter().zip(&expected) {
            assert!((x - e).abs() < 1e-6, "{b:?}");
        }
    }

    /// Weight rows are read as they are, dense or sparse.
    #[test]
    fn weights_are_read_by_row() {
        let dense = [0.0, 0.5, -1.0, 0.2, 0.0, 0.3, 0.0, 0.0, 0.0];
        let mut out = [9f32; 3];
        ItemRepresentation {
            source: "dense",
            vectors: ItemVectors::Dense { values: &dense },
        }
        .similarities(1, &mut out);
        assert_eq!(out, [0.2, 0.0, 0.3]);
        let sparse = ItemRepresentation {
            source: "sparse",
            vectors: ItemVectors::Sparse {
                offsets: &[0, 1, 3, 3],
                targets: &[2, 0, 2],
                weights: &[0.4, 0.7, 0.1],
            },
        };
        sparse.similarities(1, &mut out);
        assert_eq!(out, [0.7, 0.0, 0.1]);
        sparse.similarities(2, &mut out);
        assert_eq!(out, [0.0, 0.0, 0.0]);
    }
}
