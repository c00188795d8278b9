//! Dense kernels shared by PCA and fusion: `gemm` products, faer decompositions pinned to
//! sequential execution, and the blocked products of a *centred* matrix that is never held in
//! memory whole ([`CentredRows`]).
//!
//! # Determinism
//!
//! Every result is independent of the rayon thread count (a test checks 1 vs 3 threads bit
//! for bit): work is cut into blocks whose size depends only on the matrix shape, each block's
//! `gemm` runs sequentially inside its rayon task, partial sums are added in a fixed order,
//! and faer's decompositions run with `Par::Seq` (they are small: at most `s x s`, `d x d` or
//! `n x n` with `min(n, d) <= 2048`, or tall-thin QR/SVD of `n x s`). The top-level `gemm`
//! calls of the exact path use `gemm`'s own rayon split, which parallelises over output blocks
//! and never over the inner dimension (checked by the same test).

use std::ops::Range;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::householder::{
    apply_block_householder_sequence_on_the_left_in_place_scratch,
    apply_block_householder_sequence_on_the_left_in_place_with_conj,
};
use faer::linalg::qr::no_pivoting::factor::{
    qr_in_place, qr_in_place_scratch, recommended_blocksize,
};
use faer::{ColMut, Conj, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{FeatureError, Result};
pub(crate) use encore_nn::{matmul_on, Mat, Scalar, Threads};

/// A centred `n x d` matrix `X_c = X − 1 μᵀ` that can write any block of itself on demand.
/// Dense inputs and the implicit tensor-product matrix of the `tensor` fusion both implement
/// it, so every product below is written once and the tensor matrix is never held whole.
pub(crate) trait CentredRows: Sync {
    fn n_rows(&self) -> usize;
    fn n_cols(&self) -> usize;
    /// Write `X_c[rows, cols]` row-major (`rows.len() x cols.len()`) into `out`.
    fn fill<T: Scalar>(&self, rows: Range<usize>, cols: Range<usize>, out: &mut [T]);
    /// `Σ_ij X_c[i, j]²` (f64): `n` times the total variance.
    fn centred_sum_sq(&self) -> f64
    where
        Self: Sized,
    {
        centred_sum_sq_by_blocks(self)
    }
}

/// Rows per block in [`mul`]: about 4M floats (16 MB) per block, at most 1024 rows.
fn row_block(d: usize) -> usize {
    ((4 << 20) / d.max(1)).clamp(16, 1024)
}

/// Columns per task and rows per step in [`mul_t`].
const T_COLS: usize = 256;
const T_ROWS: usize = 256;

/// `X_c · W` (`n x s`, f32) for `W` of shape `d x s` (as used). Parallel over row blocks.
pub(crate) fn mul<O: CentredRows>(op: &O, w: Mat<'_, f32>) -> Vec<f32> {
    let (n, d) = (op.n_rows(), op.n_cols());
    let (wd, s) = w.shape();
    assert_eq!(wd, d, "operand rows");
    let mut out = vec![0f32; n * s];
    if n == 0 || s == 0 {
        return out;
    }
    let rb = row_block(d);
    out.par_chunks_mut(rb * s)
        .enumerate()
        .for_each_init(Vec::<f32>::new, |buf, (bi, chunk)| {
            let r0 = bi * rb;
            let rows = chunk.len() / s;
            buf.resize(rows * d, 0.0);
            op.fill(r0..r0 + rows, 0..d, &mut buf[..]);
            matmul_on(chunk, Mat::new(&buf[..], rows, d), w, false, Threads::One);
        });
    out
}

/// `X_cᵀ · Y` (`d x s`, accumulated in f64) for row-major `Y` of shape `n x s`. Parallel over
/// column blocks of `X_c`; each block sums its row steps in order (f32 products of 256 rows,
/// added into f64).
pub(crate) fn mul_t<O: CentredRows>(op: &O, y: &[f32], s: usize) -> Vec<f64> {
    let (n, d) = (op.n_rows(), op.n_cols());
    assert_eq!(y.len(), n * s, "operand size");
    let mut out = vec![0f64; d * s];
    if d == 0 || s == 0 {
        return out;
    }
    let cw = T_COLS.min(d);
    out.par_chunks_mut(cw * s)
        .enumerate()
        .for_each(|(ci, acc)| {
            let c0 = ci * cw;
            let cols = acc.len() / s;
            let mut slab = vec![0f32; T_ROWS.min(n) * cols];
            let mut part = vec![0f32; cols * s];
            let mut r0 = 0;
            while r0 < n {
                let rows = T_ROWS.min(n - r0);
                let slab = &mut slab[..rows * cols];
                op.fill(r0..r0 + rows, c0..c0 + cols, slab);
                matmul_on(
                    &mut part,
                    Mat::new(slab, rows, cols).t(),
                    Mat::new(&y[r0 * s..(r0 + rows) * s], rows, s),
                    false,
                    Threads::One,
                );
                for (a, p) in acc.iter_mut().zip(&part) {
                    *a += *p as f64;
                }
                r0 += rows;
            }
        });
    out
}

/// `Σ_ij X_c[i, j]²` in f64, summed per row block in parallel and over blocks in order.
pub(crate) fn centred_sum_sq_by_blocks<O: CentredRows>(op: &O) -> f64 {
    let (n, d) = (op.n_rows(), op.n_cols());
    let rb = row_block(d);
    let blocks: Vec<f64> = (0..n.div_ceil(rb))
        .into_par_iter()
        .map_init(Vec::<f64>::new, |buf, bi| {
            let r0 = bi * rb;
            let rows = rb.min(n - r0);
            buf.resize(rows * d, 0.0);
            op.fill(r0..r0 + rows, 0..d, &mut buf[..]);
            buf.iter().map(|x| x * x).sum::<f64>()
        })
        .collect();
    blocks.iter().sum()
}

/// `X_cᵀ X_c` (`d x d`, f64, row-major = column-major since symmetric), by row blocks of
/// 1024 converted to f64, each added by one `gemm` (split over output blocks).
pub(crate) fn covariance_f64<O: CentredRows>(op: &O) -> Vec<f64> {
    let (n, d) = (op.n_rows(), op.n_cols());
    let mut c = vec![0f64; d * d];
    let rb = 1024;
    let mut buf = vec![0f64; rb.min(n) * d];
    let mut r0 = 0;
    while r0 < n {
        let rows = rb.min(n - r0);
        let blk = &mut buf[..rows * d];
        op.fill(r0..r0 + rows, 0..d, blk);
        matmul_on(
            &mut c,
            Mat::new(blk, rows, d).t(),
            Mat::new(blk, rows, d),
            true,
            Threads::Pool,
        );
        r0 += rows;
    }
    c
}

/// `X_c X_cᵀ` (`n x n`, f64), by column blocks of 512 converted to f64.
pub(crate) fn gram_f64<O: CentredRows>(op: &O) -> Vec<f64> {
    let (n, d) = (op.n_rows(), op.n_cols());
    let mut g = vec![0f64; n * n];
    let cb = 512;
    let mut buf = vec![0f64; n * cb.min(d)];
    let mut c0 = 0;
    while c0 < d {
        let cols = cb.min(d - c0);
        let blk = &mut buf[..n * cols];
        op.fill(0..n, c0..c0 + cols, blk);
        matmul_on(
            &mut g,
            Mat::new(blk, n, cols),
            Mat::new(blk, n, cols).t(),
            true,
            Threads::Pool,
        );
        c0 += cols;
    }
    g
}

/// `Uᵀ X_c` (`k x d`, f64) for `U` given row-major `n x k` in f64, by column blocks of 512.
pub(crate) fn left_project_f64<O: CentredRows>(op: &O, u: &[f64], k: usize) -> Vec<f64> {
    let (n, d) = (op.n_rows(), op.n_cols());
    assert_eq!(u.len(), n * k);
    let cb = 512.min(d.max(1));
    let mut out = vec![0f64; k * d];
    let parts: Vec<(usize, Vec<f64>)> = (0..d.div_ceil(cb))
        .into_par_iter()
        .map(|ci| {
            let c0 = ci * cb;
            let cols = cb.min(d - c0);
            let mut blk = vec![0f64; n * cols];
            op.fill(0..n, c0..c0 + cols, &mut blk);
            let mut part = vec![0f64; k * cols];
            matmul_on(
                &mut part,
                Mat::new(u, n, k).t(),
                Mat::new(&blk, n, cols),
                false,
                Threads::One,
            );
            (c0, part)
        })
        .collect();
    for (c0, part) in parts {
        let cols = part.len() / k.max(1);
        for r in 0..k {
            out[r * d + c0..r * d + c0 + cols].copy_from_slice(&part[r * cols..(r + 1) * cols]);
        }
    }
    out
}

/// Eigen-decomposition of a symmetric `n x n` matrix (f64), eigenvalues in *decreasing*
/// order; `vectors` is column-major (`vectors[j * n + i]` is entry `i` of eigenvector `j`).
pub(crate) fn sym_eigen_desc(a: &[f64], n: usize, what: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    assert_eq!(a.len(), n * n);
    let par = Par::Seq;
    let mut vals = vec![0f64; n];
    let mut vecs = vec![0f64; n * n];
    {
        let am = MatRef::from_column_major_slice(a, n, n);
        let um = MatMut::from_column_major_slice_mut(&mut vecs, n, n);
        let s = ColMut::from_slice_mut(&mut vals).as_diagonal_mut();
        let mut mem = MemBuffer::new(faer::linalg::evd::self_adjoint_evd_scratch::<f64>(
            n,
            faer::linalg::evd::ComputeEigenvectors::Yes,
            par,
            Default::default(),
        ));
        faer::linalg::evd::self_adjoint_evd(
            am,
            s,
            Some(um),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .map_err(|e| FeatureError::numerical(what, format!("{e:?}")))?;
    }
    // faer returns nondecreasing order: reverse.
    let desc_vals: Vec<f64> = vals.iter().rev().copied().collect();
    let mut desc_vecs = vec![0f64; n * n];
    for j in 0..n {
        let src = n - 1 - j;
        desc_vecs[j * n..(j + 1) * n].copy_from_slice(&vecs[src * n..(src + 1) * n]);
    }
    Ok((desc_vals, desc_vecs))
}

/// Thin SVD of a row-major `m x s` matrix (`m >= s`): left singular vectors (column-major
/// `m x s`) and singular values (decreasing).
pub(crate) fn thin_svd_left(
    a: &[f64],
    m: usize,
    s: usize,
    what: &str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    assert_eq!(a.len(), m * s);
    assert!(m >= s);
    let par = Par::Seq;
    let mut cm = vec![0f64; m * s];
    for i in 0..m {
        for j in 0..s {
            cm[j * m + i] = a[i * s + j];
        }
    }
    let mut u = vec![0f64; m * s];
    let mut sv = vec![0f64; s];
    {
        let am = MatRef::from_column_major_slice(&cm, m, s);
        let um = MatMut::from_column_major_slice_mut(&mut u, m, s);
        let sd = ColMut::from_slice_mut(&mut sv).as_diagonal_mut();
        let mut mem = MemBuffer::new(faer::linalg::svd::svd_scratch::<f64>(
            m,
            s,
            faer::linalg::svd::ComputeSvdVectors::Thin,
            faer::linalg::svd::ComputeSvdVectors::No,
            par,
            Default::default(),
        ));
        faer::linalg::svd::svd(
            am,
            sd,
            Some(um),
            None,
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .map_err(|e| FeatureError::numerical(what, format!("{e:?}")))?;
    }
    Ok((u, sv))
}

/// An orthonormal basis (row-major `m x s`, f32) of the columns of `get` (`m x s`, `m >= s`),
/// by Householder QR in f64: stable even when the columns are nearly dependent, which they
/// become in power iterations (Halko et al. 2011, §4.5: re-orthonormalise after each product).
pub(crate) fn orthonormal_basis(m: usize, s: usize, get: impl Fn(usize, usize) -> f64) -> Vec<f32> {
    assert!(m >= s);
    let par = Par::Seq;
    let mut a = vec![0f64; m * s];
    for j in 0..s {
        for i in 0..m {
            a[j * m + i] = get(i, j);
        }
    }
    let bs = recommended_blocksize::<f64>(m, s);
    let mut coeff = vec![0f64; bs * s];
    {
        let am = MatMut::from_column_major_slice_mut(&mut a, m, s);
        let cm = MatMut::from_column_major_slice_mut(&mut coeff, bs, s);
        let mut mem = MemBuffer::new(qr_in_place_scratch::<f64>(
            m,
            s,
            bs,
            par,
            Default::default(),
        ));
        qr_in_place(am, cm, par, MemStack::new(&mut mem), Default::default());
    }
    // The Householder basis is the unit lower trapezoid of the factored matrix (as faer's
    // own `Qr` builds it).
    for j in 0..s {
        for i in 0..j {
            a[j * m + i] = 0.0;
        }
        a[j * m + j] = 1.0;
    }
    let mut q = vec![0f64; m * s];
    for j in 0..s {
        q[j * m + j] = 1.0;
    }
    {
        let basis = MatRef::from_column_major_slice(&a, m, s);
        let cm = MatRef::from_column_major_slice(&coeff, bs, s);
        let qm = MatMut::from_column_major_slice_mut(&mut q, m, s);
        let mut mem = MemBuffer::new(
            apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(m, bs, s),
        );
        apply_block_householder_sequence_on_the_left_in_place_with_conj(
            basis,
            cm,
            Conj::No,
            qm,
            par,
            MemStack::new(&mut mem),
        );
    }
    let mut out = vec![0f32; m * s];
    for i in 0..m {
        for j in 0..s {
            out[i * s + j] = q[j * m + i] as f32;
        }
    }
    out
}

/// Flip each row of a row-major `k x d` matrix so that its largest-magnitude entry (the first
/// one on ties) is positive: singular vectors are defined up to sign, and a fixed rule makes
/// fitted components, and therefore fused features, reproducible across methods and runs.
pub(crate) fn fix_signs(rows: &mut [f64], d: usize) {
    if d == 0 {
        return;
    }
    for row in rows.chunks_mut(d) {
        let mut best = 0usize;
        for (j, v) in row.iter().enumerate() {
            if v.abs() > row[best].abs() {
                best = j;
            }
        }
        if row[best] < 0.0 {
            for v in row.iter_mut() {
                *v = -*v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthonormal_basis_spans_and_is_orthonormal() {
        let (m, s) = (50, 4);
        let get = |i: usize, j: usize| ((i * 7 + j * 13) % 11) as f64 - 5.0 + (i == j) as u8 as f64;
        let q = orthonormal_basis(m, s, get);
        for a in 0..s {
            for b in 0..s {
                let dot: f64 = (0..m)
                    .map(|i| q[i * s + a] as f64 * q[i * s + b] as f64)
                    .sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-6, "{a} {b} {dot}");
            }
        }
        // Each input column lies in the span: residual after projection is ~0.
        for j in 0..s {
            let col: Vec<f64> = (0..m).map(|i| get(i, j)).collect();
            let mut res = col.clone();
            for a in 0..s {
                let c: f64 = (0..m).map(|i| col[i] * q[i * s + a] as f64).sum();
                for i in 0..m {
                    res[i] -= c * q[i * s + a] as f64;
                }
            }
            let norm: f64 = col.iter().map(|x| x * x).sum::<f64>().sqrt();
            let rn: f64 = res.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(rn < 1e-5 * norm, "column {j}: residual {rn}");
        }
    }

    #[test]
    fn sym_eigen_hand_case() {
        // [[2, 1], [1, 2]]: eigenvalues 3 (along (1,1)/√2) and 1.
        let (vals, vecs) = sym_eigen_desc(&[2.0, 1.0, 1.0, 2.0], 2, "test").unwrap();
        assert!((vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((vecs[0].abs() - h).abs() < 1e-12 && (vecs[1].abs() - h).abs() < 1e-12);
        assert!(vecs[0] * vecs[1] > 0.0);
    }

    #[test]
    fn fix_signs_makes_largest_entry_positive() {
        let mut r = vec![0.1, -0.9, 0.2, 0.5, 0.4, -0.3];
        fix_signs(&mut r, 3);
        assert_eq!(r, vec![-0.1, 0.9, -0.2, 0.5, 0.4, -0.3]);
    }
}
