//! The implicit tensor-product matrix of the `tensor` fusion (SPEC §3): row `i` is
//! `vec(a_i ⊗ l_i)` (`p·q` = 16,384 columns for two 128-d modalities; column `j·q + k` holds
//! `a_ij · l_ik`), centred by `m = (1/n) Σ a_i ⊗ l_i`.
//!
//! The matrix is never held whole (57k tracks would take 3.7 GB in f32): the products of
//! [`crate::linalg`] ask for one block at a time and compute each entry as
//! `a_ij · l_ik − m_jk` (in f64, rounded once). This is the same quantity as the brief's
//! bilinear form — `(a_i ⊗ l_i − m) · vec(W) = a_iᵀ W l_i − mᵀ vec(W)` — evaluated for a whole
//! block of test vectors by one `gemm` over a 256-row (16 MB) slab; centring entry by entry
//! instead of subtracting `mᵀ vec(W)` afterwards avoids cancellation when the mean is large.

use std::ops::Range;

use rayon::prelude::*;

use crate::linalg::{matmul_on, CentredRows, Mat, Scalar, Threads};

/// `n` rows of `a_i ⊗ l_i − m`.
pub(crate) struct TensorRows<'a> {
    pub a: &'a [f32],
    pub l: &'a [f32],
    pub n: usize,
    pub p: usize,
    pub q: usize,
    /// `p x q` row-major.
    pub mean: &'a [f32],
}

impl CentredRows for TensorRows<'_> {
    fn n_rows(&self) -> usize {
        self.n
    }

    fn n_cols(&self) -> usize {
        self.p * self.q
    }

    fn fill<T: Scalar>(&self, rows: Range<usize>, cols: Range<usize>, out: &mut [T]) {
        let (p, q) = (self.p, self.q);
        let w = cols.len();
        if w == 0 {
            return;
        }
        for (o, r) in out.chunks_exact_mut(w).zip(rows) {
            let a = &self.a[r * p..(r + 1) * p];
            let l = &self.l[r * q..(r + 1) * q];
            let mut c = cols.start;
            let mut o = &mut o[..];
            while c < cols.end {
                let (j, k0) = (c / q, c % q);
                let k1 = q.min(k0 + (cols.end - c));
                let aj = a[j] as f64;
                let m = &self.mean[j * q + k0..j * q + k1];
                let (seg, rest) = o.split_at_mut(k1 - k0);
                for ((dst, &lk), &mk) in seg.iter_mut().zip(&l[k0..k1]).zip(m) {
                    *dst = T::from_f64(aj * lk as f64 - mk as f64);
                }
                o = rest;
                c += k1 - k0;
            }
        }
    }

    /// In closed form, `O(n (p + q) + p q)` instead of a pass over the `n x p q` entries:
    /// with `μ` the exact (f64) mean and `m` the stored one,
    /// `Σ_i ‖t_i − m‖² = Σ_i ‖a_i‖² ‖l_i‖² − n ‖μ‖² + n ‖m − μ‖²` (as `‖t_i‖ = ‖a_i‖ ‖l_i‖`).
    /// All in f64; the cancellation in the difference costs about `1e-16 · ‖t‖²/‖t − μ‖²`
    /// relative, negligible unless the mean outweighs the spread by many orders.
    fn centred_sum_sq(&self) -> f64 {
        let (n, p, q) = (self.n, self.p, self.q);
        let raw: f64 = (0..n)
            .into_par_iter()
            .with_min_len(1024)
            .map(|i| {
                let na: f64 = self.a[i * p..(i + 1) * p]
                    .iter()
                    .map(|&v| (v as f64) * (v as f64))
                    .sum();
                let nl: f64 = self.l[i * q..(i + 1) * q]
                    .iter()
                    .map(|&v| (v as f64) * (v as f64))
                    .sum();
                na * nl
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum();
        let mu = tensor_mean_f64(self.a, self.l, n, p, q);
        let mu2: f64 = mu.iter().map(|v| v * v).sum();
        let off: f64 = mu
            .iter()
            .zip(self.mean)
            .map(|(u, &m)| (m as f64 - u) * (m as f64 - u))
            .sum();
        (raw - n as f64 * mu2 + n as f64 * off).max(0.0)
    }
}

/// `m = (1/n) Σ_i a_i ⊗ l_i` (`p x q` row-major), accumulated in f64 per row of `m`.
pub(crate) fn tensor_mean(a: &[f32], l: &[f32], n: usize, p: usize, q: usize) -> Vec<f32> {
    tensor_mean_f64(a, l, n, p, q)
        .iter()
        .map(|&v| v as f32)
        .collect()
}

fn tensor_mean_f64(a: &[f32], l: &[f32], n: usize, p: usize, q: usize) -> Vec<f64> {
    // Σ_i a_i l_iᵀ = Aᵀ L by f64 `gemm` over fixed blocks of rows, partial sums added in
    // block order (independent of the thread count).
    const ROWS: usize = 2048;
    let partials: Vec<Vec<f64>> = (0..n.div_ceil(ROWS))
        .into_par_iter()
        .map(|b| {
            let (r0, r1) = (b * ROWS, n.min((b + 1) * ROWS));
            let ab: Vec<f64> = a[r0 * p..r1 * p].iter().map(|&v| v as f64).collect();
            let lb: Vec<f64> = l[r0 * q..r1 * q].iter().map(|&v| v as f64).collect();
            let mut part = vec![0f64; p * q];
            matmul_on(
                &mut part,
                Mat::new(&ab, r1 - r0, p).t(),
                Mat::new(&lb, r1 - r0, q),
                false,
                Threads::One,
            );
            part
        })
        .collect();
    let mut m = vec![0f64; p * q];
    for part in partials {
        for (s, v) in m.iter_mut().zip(part) {
            *s += v;
        }
    }
    if n > 0 {
        for s in m.iter_mut() {
            *s /= n as f64;
        }
    }
    m
}

/// The explicit `n x p·q` matrix of the rows `a_i ⊗ l_i` (uncentred): the reference path,
/// for tests and small catalogues only (it is what the implicit path exists to avoid).
pub(crate) fn materialise(a: &[f32], l: &[f32], n: usize, p: usize, q: usize) -> Vec<f32> {
    let mut t = vec![0f32; n * p * q];
    if p * q == 0 {
        return t;
    }
    t.par_chunks_mut(p * q).enumerate().for_each(|(i, row)| {
        for j in 0..p {
            let aj = a[i * p + j];
            for k in 0..q {
                row[j * q + k] = aj * l[i * q + k];
            }
        }
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_the_explicit_outer_product() {
        let (n, p, q) = (3, 2, 3);
        let a = [1.0f32, 2.0, -1.0, 0.5, 3.0, 0.0];
        let l = [1.0f32, 0.0, 2.0, 4.0, -2.0, 1.0, 0.5, 0.5, 0.5];
        let mean = tensor_mean(&a, &l, n, p, q);
        let t = materialise(&a, &l, n, p, q);
        // Row 1: a = (-1, 0.5), l = (4, -2, 1): a⊗l = (-4, 2, -1, 2, -1, 0.5).
        assert_eq!(&t[6..12], &[-4.0, 2.0, -1.0, 2.0, -1.0, 0.5]);
        for c in 0..6 {
            let want = (t[c] + t[6 + c] + t[12 + c]) / 3.0;
            assert!((mean[c] - want).abs() < 1e-6);
        }
        let op = TensorRows {
            a: &a,
            l: &l,
            n,
            p,
            q,
            mean: &mean,
        };
        // The closed-form sum of squares equals the one by blocks.
        let by_blocks = crate::linalg::centred_sum_sq_by_blocks(&op);
        assert!(
            (op.centred_sum_sq() - by_blocks).abs() < 1e-9 * by_blocks,
            "{by_blocks}"
        );
        // An unaligned block: rows 1..3, columns 2..5 (crossing the j boundary at 3).
        let mut out = vec![0f64; 2 * 3];
        op.fill(1..3, 2..5, &mut out);
        for (r, i) in (1..3).enumerate() {
            for (cc, c) in (2..5).enumerate() {
                let want = t[i * 6 + c] as f64 - mean[c] as f64;
                assert!((out[r * 3 + cc] - want).abs() < 1e-6);
            }
        }
    }
}
