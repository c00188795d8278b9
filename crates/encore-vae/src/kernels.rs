//! Dense and sparse kernels for the hand-written forward and backward passes.
//!
//! # Why by hand
//!
//! On ml-100k the `recbole` preset is one step of 943 users per epoch, about 2 GFLOP of matrix
//! products. Built as a burn autodiff graph the step took 0.33-0.41 s on one core, five times
//! the matrix-multiply bound: graph construction, per-op allocation, un-fused element-wise
//! passes over `B x I` tensors (log-softmax alone is several), and a gather/scatter first
//! layer with an `i64` index tensor. No crate offers a fused VAE step, so the layers are written
//! here over `gemm` (the matrix-multiply crate burn-flex itself uses, already in the tree): the
//! products go to `gemm`, everything else is one fused, row-parallel pass. Each hand-written
//! backward is checked against burn's autodiff in the models' tests.
//!
//! # Determinism
//!
//! Every reduction has a fixed order that does not depend on the thread count: `gemm`
//! parallelises over output blocks, never over the inner dimension (a test checks 1 vs 4
//! threads bit for bit); row-wise passes are parallel over rows; the scatter-add of the
//! first layer's weight gradient is parallel over items, each item summing its entries in
//! batch order; bias gradients sum rows sequentially.

use rayon::prelude::*;

/// `gemm`'s parallelism for the current rayon pool (sequential on one thread).
fn parallelism(flops: usize) -> gemm::Parallelism {
    let t = rayon::current_num_threads();
    // Below ~1 MFLOP the fork costs more than it saves.
    if t > 1 && flops > 1 << 20 {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    }
}

/// A row-major matrix operand: `rows x cols` stored in `data`, optionally used transposed.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub trans: bool,
}

impl<'a> Mat<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Mat {
            data,
            rows,
            cols,
            trans: false,
        }
    }

    pub fn t(self) -> Self {
        Mat {
            trans: !self.trans,
            ..self
        }
    }

    /// Shape as used (after the optional transpose).
    fn shape(&self) -> (usize, usize) {
        if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// (column stride, row stride) as used.
    fn strides(&self) -> (isize, isize) {
        if self.trans {
            (self.cols as isize, 1)
        } else {
            (1, self.cols as isize)
        }
    }
}

/// `out = (accumulate ? out : 0) + a · b`, `out` row-major `[m, n]`.
pub(crate) fn matmul(out: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "inner dimensions differ");
    assert_eq!(out.len(), m * n, "output size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    // SAFETY: the pointers cover `m x k`, `k x n` and `m x n` elements with the given
    // strides (checked by the shape assertions and `Mat::new`), and `out` does not alias the
    // inputs (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(2 * m * n * k),
        );
    }
}

/// `e^x` for `f32` in plain arithmetic (Cephes' `expf`: `x = n ln 2 + r`, a degree-6
/// polynomial for `e^r`, `2^n` built in the exponent bits), so loops over slices vectorise;
/// `f32::exp` is a libm call per element, and the decoders take 1.6 million (MultiVAE) and 16
/// million (MacridVAE) exponentials per ml-100k step. Relative error below 3e-7 (tested
/// against `f64::exp`); inputs are clamped to `[-87, 88]` (results `~1.6e-38 .. 1.7e38`,
/// never 0 or infinite).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without `round()`
    // (a libm call below SSE4.1).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `tanh(x) = 1 − 2 / (e^{2x} + 1)` over [`exp`] (absolute error below 3e-7; `f32::tanh` is a
/// libm call per element).
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Rows per rayon task in row-wise passes (enough work per task to amortise the fork).
pub(crate) fn row_chunk(cols: usize) -> usize {
    (16_384 / cols.max(1)).max(1)
}

/// `y[r, :] += bias` for every row.
pub(crate) fn add_bias(y: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    y.par_chunks_mut(n * row_chunk(n)).for_each(|rows| {
        for row in rows.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    });
}

/// `tanh` in place.
pub(crate) fn tanh_inplace(y: &mut [f32]) {
    y.par_chunks_mut(16_384).for_each(|c| {
        for v in c {
            *v = tanh(*v);
        }
    });
}

/// `g *= 1 - a²` (the derivative of `tanh` at its output `a`).
pub(crate) fn tanh_backward(g: &mut [f32], a: &[f32]) {
    g.par_chunks_mut(16_384)
        .zip(a.par_chunks(16_384))
        .for_each(|(g, a)| {
            for (g, a) in g.iter_mut().zip(a) {
                *g *= 1.0 - a * a;
            }
        });
}

/// Column sums of a row-major `[rows, n]` matrix (rows summed in order).
pub(crate) fn col_sums(y: &[f32], n: usize) -> Vec<f32> {
    let mut s = vec![0f32; n];
    for row in y.chunks_exact(n) {
        for (a, b) in s.iter_mut().zip(row) {
            *a += b;
        }
    }
    s
}

/// `y += v · w`, compiled for AVX-512 or AVX2 when the CPU has it (the crate is built for
/// baseline x86-64, where these loops get 4-wide SSE2; the sparse layers spend most of their
/// time here). Each element is one multiply and one add whatever the width, so every path
/// gives the same bits.
#[inline]
fn axpy(y: &mut [f32], v: f32, w: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { axpy_avx512(y, v, w) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { axpy_avx2(y, v, w) };
    }
    for (y, w) in y.iter_mut().zip(w) {
        *y += v * w;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_avx512(y: &mut [f32], v: f32, w: &[f32]) {
    for (y, w) in y.iter_mut().zip(w) {
        *y += v * w;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], v: f32, w: &[f32]) {
    for (y, w) in y.iter_mut().zip(w) {
        *y += v * w;
    }
}

/// `<a, b>` in 8 interleaved partial sums (a fixed order), AVX2+FMA when available.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

/// A batch of sparse rows in CSR form.
#[derive(Debug, Clone, Default)]
pub(crate) struct Csr {
    pub n_rows: usize,
    /// Row `r`'s entries are `offsets[r]..offsets[r + 1]`.
    pub offsets: Vec<usize>,
    pub cols: Vec<u32>,
    pub values: Vec<f32>,
}

impl Csr {
    pub fn nnz(&self) -> usize {
        self.cols.len()
    }

    /// `y = X W + b` with `W` row-major `[n_cols, out]`: each output row is the bias plus the
    /// value-weighted sum of the weight rows of its entries (a gather, not a dense product).
    pub fn times_dense(&self, w: &[f32], b: &[f32]) -> Vec<f32> {
        let out = b.len();
        let mut y = vec![0f32; self.n_rows * out];
        y.par_chunks_mut(out).enumerate().for_each(|(r, row)| {
            row.copy_from_slice(b);
            for e in self.offsets[r]..self.offsets[r + 1] {
                axpy(
                    row,
                    self.values[e],
                    &w[self.cols[e] as usize * out..][..out],
                );
            }
        });
        y
    }

    /// `X^T G` into a dense `[n_cols, out]` buffer (the weight gradient of
    /// [`Csr::times_dense`]): each column (item) row sums `v · G[r, :]` over its entries in
    /// batch order, items in parallel.
    pub fn transpose_times(&self, g: &[f32], out: usize, n_cols: usize) -> Vec<f32> {
        // Entries grouped by column, stable (batch order within a column).
        let mut starts = vec![0usize; n_cols + 1];
        for &c in &self.cols {
            starts[c as usize + 1] += 1;
        }
        for c in 0..n_cols {
            starts[c + 1] += starts[c];
        }
        let mut fill = starts.clone();
        let mut order = vec![(0u32, 0f32); self.nnz()];
        for r in 0..self.n_rows {
            for e in self.offsets[r]..self.offsets[r + 1] {
                let c = self.cols[e] as usize;
                order[fill[c]] = (r as u32, self.values[e]);
                fill[c] += 1;
            }
        }
        let mut dw = vec![0f32; n_cols * out];
        dw.par_chunks_mut(out).enumerate().for_each(|(c, row)| {
            for &(r, v) in &order[starts[c]..starts[c + 1]] {
                axpy(row, v, &g[r as usize * out..][..out]);
            }
        });
        dw
    }

    /// `X^T G` restricted to the value gradient: `dv_e = <W[col_e, :], G[row_e, :]>`.
    pub fn value_grads(&self, w: &[f32], g: &[f32], out: usize) -> Vec<f32> {
        let mut dv = vec![0f32; self.nnz()];
        dv.par_chunks_mut(4096).enumerate().for_each(|(c, dv)| {
            let base = c * 4096;
            let mut r = self.offsets.partition_point(|&o| o <= base) - 1;
            for (j, d) in dv.iter_mut().enumerate() {
                let e = base + j;
                while self.offsets[r + 1] <= e {
                    r += 1;
                }
                let wr = &w[self.cols[e] as usize * out..][..out];
                let gr = &g[r * out..][..out];
                *d = dot(wr, gr);
            }
        });
        dv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f32], r: usize, c: usize) -> Vec<f32> {
        let mut t = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = a[i * c + j];
            }
        }
        t
    }

    #[test]
    fn matmul_with_transposes_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        for (am, bm) in [
            (Mat::new(&a, m, k), Mat::new(&b, k, n)),
            (Mat::new(&at, k, m).t(), Mat::new(&b, k, n)),
            (Mat::new(&a, m, k), Mat::new(&bt, n, k).t()),
            (Mat::new(&at, k, m).t(), Mat::new(&bt, n, k).t()),
        ] {
            let mut c = vec![9f32; m * n];
            matmul(&mut c, am, bm, false);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5);
            }
            matmul(&mut c, am, bm, true);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 2.0 * y).abs() < 1e-5);
            }
        }
    }

    /// `gemm` must not split the inner dimension across threads: the same product on 1 and 4
    /// threads is identical bit for bit (at a size where it does go parallel).
    #[test]
    fn matmul_is_thread_count_independent() {
        let (m, k, n) = (300, 700, 500);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 1000) as f32 / 991.0 - 0.5)
            .collect();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let mut c = vec![0f32; m * n];
                    matmul(
                        &mut c,
                        Mat::new(&a, m, k),
                        Mat::new(&b, k, n).t().t(),
                        false,
                    );
                    let mut d = vec![0f32; k * n];
                    matmul(&mut d, Mat::new(&a, m, k).t(), Mat::new(&c, m, n), false);
                    (c, d)
                })
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    fn fast_exp_and_tanh_are_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
            let t = (tanh(x) as f64 - (x as f64).tanh()).abs();
            assert!(t < 3e-7, "tanh({x}): {t}");
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "{worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) > 0.0 && exp(1e4).is_finite());
        assert_eq!(tanh(30.0), 1.0);
        assert_eq!(tanh(-30.0), -1.0);
    }

    #[test]
    fn sparse_products_match_dense() {
        // X = [[0, 2, 0], [1, 0, 3]] (3 columns), W [3, 2].
        let x = Csr {
            n_rows: 2,
            offsets: vec![0, 1, 3],
            cols: vec![1, 0, 2],
            values: vec![2.0, 1.0, 3.0],
        };
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = x.times_dense(&w, &[0.5, -0.5]);
        assert_eq!(y, vec![6.5, 7.5, 16.5, 19.5]);
        let g = [1.0, 0.0, 0.0, 1.0];
        // X^T G = [[0, 1], [2, 0], [0, 3]].
        assert_eq!(
            x.transpose_times(&g, 2, 3),
            vec![0.0, 1.0, 2.0, 0.0, 0.0, 3.0]
        );
        // dv_e = W[col_e] · G[row_e]: (3,4)·(1,0) = 3, (1,2)·(0,1) = 2, (5,6)·(0,1) = 6.
        assert_eq!(x.value_grads(&w, &g, 2), vec![3.0, 2.0, 6.0]);
        assert_eq!(col_sums(&g, 2), vec![1.0, 1.0]);
    }
}
