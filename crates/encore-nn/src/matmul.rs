//! Dense matrix products over `gemm`: the one wrapper the VAEs, the diffusion denoiser and
//! PCA (`encore-features`) share, in `f32` and `f64`.
//!
//! `gemm` splits the output into blocks over threads and never splits the inner dimension,
//! so every output element is summed in the same order on any number of threads (a test
//! checks 1 vs 4 threads bit for bit).

use rayon::prelude::*;

/// The two float types the products run in.
pub trait Scalar: Copy + Send + Sync + 'static + std::ops::AddAssign {
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
}

impl Scalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Scalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// A row-major matrix operand: `rows x cols` stored in `data`, optionally used transposed.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, T = f32> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    trans: bool,
}

impl<'a, T> Mat<'a, T> {
    /// `data` holds `rows x cols` values, row-major (panics otherwise: a programming error).
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "operand size");
        Mat {
            data,
            rows,
            cols,
            trans: false,
        }
    }

    /// The same storage used transposed.
    pub fn t(self) -> Self {
        Mat {
            trans: !self.trans,
            ..self
        }
    }

    /// Shape as used (after the optional transpose).
    pub fn shape(&self) -> (usize, usize) {
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

/// Whether a product may use `gemm`'s own rayon split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// Sequential (the caller is already inside a parallel task).
    One,
    /// `gemm` splits output blocks over the current rayon pool (above ~1 MFLOP, where the
    /// fork costs less than it saves).
    Pool,
}

/// `out = (accumulate ? out : 0) + a · b`, `out` row-major `[m, n]`, on the current rayon
/// pool ([`Threads::Pool`]).
pub fn matmul<T: Scalar>(out: &mut [T], a: Mat<'_, T>, b: Mat<'_, T>, accumulate: bool) {
    matmul_on(out, a, b, accumulate, Threads::Pool)
}

/// [`matmul`] with an explicit [`Threads`] choice.
pub fn matmul_on<T: Scalar>(
    out: &mut [T],
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    accumulate: bool,
    threads: Threads,
) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "inner dimensions differ");
    assert_eq!(out.len(), m * n, "output size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.fill(T::ZERO);
        }
        return;
    }
    let t = rayon::current_num_threads();
    let parallelism = if threads == Threads::Pool && t > 1 && 2 * m * n * k > 1 << 20 {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    };
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    if let gemm::Parallelism::Rayon(t) = parallelism {
        if m == 1 && b_cs == 1 && n >= 2 * GEMV_COLUMNS && k * n >= GEMV_SPLIT_ELEMENTS {
            return gemv_split(out, a, b, accumulate, t);
        }
    }
    // SAFETY: the pointers cover `m x k`, `k x n` and `m x n` elements with the given strides
    // (checked by the assertions above and in `Mat::new`); `out` is a unique borrow, so it
    // does not alias the inputs.
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
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The multiple of columns every piece of a split one-row product starts at.
const GEMV_COLUMNS: usize = 64;

/// Matrix elements below which a one-row product stays on one thread: a small matrix is read
/// from the cache, and forking costs more than the split saves.
const GEMV_SPLIT_ELEMENTS: usize = 1 << 21;

/// A one-row product against a row-major `b` (`m = 1`, `b`'s column stride 1) with its
/// columns split over `t` threads.
///
/// `gemm` answers that shape with its `gemv`, which runs on one thread whatever
/// `Parallelism` says; a fold-in's output layer (one listener against every item: 135 MB of
/// weights on a 56,512-item catalogue) is then bound by one core's share of the memory
/// bandwidth. In that `gemv` every output element is its own chain of multiply-adds down the
/// inner dimension, independent of every other column, and the pieces start at multiples of
/// 64 columns so the same columns fall in its SIMD lanes and its scalar tail as in one call:
/// the split changes no bit (a test checks it against the single call).
fn gemv_split<T: Scalar>(out: &mut [T], a: Mat<'_, T>, b: Mat<'_, T>, accumulate: bool, t: usize) {
    let (_, k) = a.shape();
    let n = out.len();
    let (a_cs, a_rs) = a.strides();
    let (_, b_rs) = b.strides();
    let piece = n.div_ceil(t).next_multiple_of(GEMV_COLUMNS);
    out.par_chunks_mut(piece).enumerate().for_each(|(c, dst)| {
        // SAFETY: `a` covers `1 x k` and `b` `k x n` elements with the given strides (checked
        // by the caller); this piece reads `b`'s columns `c * piece ..` for `dst.len()`
        // columns, inside every row of `b`, and writes its own chunk of `out`.
        unsafe {
            one_row_columns(
                dst.as_mut_ptr(),
                dst.len(),
                accumulate,
                (a.data.as_ptr(), a_cs, a_rs),
                b.data.as_ptr().add(c * piece),
                b_rs,
                k,
            )
        }
    });
}

/// `gemm`'s one-row product (`m = 1`, its `gemv`) on `cols` columns, single-threaded: `dst`
/// (`cols` contiguous values) `= (accumulate ? dst : 0) + a · b`, `a` a `1 x k` row given as
/// (pointer, column stride, row stride), `b` the `k x cols` columns starting at `b` with
/// column stride 1 and row stride `b_rs`.
///
/// # Safety
/// The pointers must cover those elements, and `dst` must not alias `a` or `b`.
unsafe fn one_row_columns<T: Scalar>(
    dst: *mut T,
    cols: usize,
    accumulate: bool,
    (a, a_cs, a_rs): (*const T, isize, isize),
    b: *const T,
    b_rs: isize,
    k: usize,
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            1,
            cols,
            k,
            dst,
            1,
            cols as isize,
            accumulate,
            a,
            a_cs,
            a_rs,
            b,
            1,
            b_rs,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Columns of `b` per piece of [`matmul_rows_alone`]: a multiple of [`GEMV_COLUMNS`], and a
/// piece of a 600-row `b` (2.4 MB) stays in the last-level cache while every row reads it.
const ROWS_ALONE_COLUMNS: usize = 1024;

/// `out = a · b` (`a` `[m, k]` and `out` `[m, n]` row-major) with every row of `out` equal, bit for bit, to the
/// product of that row of `a` alone (`m = 1`, as [`matmul`] computes it): several listeners
/// folded in together get exactly the scores each would get alone, while `b` is read from
/// memory once for all of them instead of once per listener.
///
/// `b` is cut into pieces of 1,024 columns, run in parallel; within a piece each row is one
/// `gemm` call with `m = 1`, the `gemv` a row alone gets (the piece is then read from the cache
/// by the other rows). As in [`gemv_split`], every output element is its own chain of
/// multiply-adds down the inner dimension and the pieces start at multiples of 64 columns, so
/// the cut changes no bit. A transposed `b` (a row alone is then not a `gemv` over columns)
/// falls back to one product per row.
pub fn matmul_rows_alone(out: &mut [f32], a: &[f32], m: usize, b: Mat<'_, f32>) {
    let (k, n) = b.shape();
    assert_eq!(a.len(), m * k, "input size");
    assert_eq!(out.len(), m * n, "output size");
    let (b_cs, b_rs) = b.strides();
    if m <= 1 || n == 0 || k <= 2 || b_cs != 1 {
        // One row, nothing to compute, `gemm`'s k <= 2 path, or a transposed `b`.
        for (r, row) in out.chunks_mut(n.max(1)).enumerate().take(m) {
            matmul(row, Mat::new(&a[r * k..][..k], 1, k), b, false);
        }
        return;
    }
    let (a_ptr, b_ptr, out_ptr) = (
        a.as_ptr() as usize,
        b.data.as_ptr() as usize,
        out.as_mut_ptr() as usize,
    );
    let pieces = n.div_ceil(ROWS_ALONE_COLUMNS);
    (0..pieces).into_par_iter().for_each(|p| {
        let c0 = p * ROWS_ALONE_COLUMNS;
        let cols = ROWS_ALONE_COLUMNS.min(n - c0);
        for r in 0..m {
            // SAFETY: `a` covers `m x k` and `b` `k x n` elements (checked above and in
            // `Mat::new`); this call reads row `r` of `a` and columns `c0 .. c0 + cols` of
            // every row of `b`, and writes those columns of row `r` of `out`, which no other
            // piece writes.
            unsafe {
                one_row_columns(
                    (out_ptr as *mut f32).add(r * n + c0),
                    cols,
                    false,
                    ((a_ptr as *const f32).add(r * k), 1, k as isize),
                    (b_ptr as *const f32).add(c0),
                    b_rs,
                    k,
                )
            }
        }
    });
}

/// A `k x n` matrix packed for [`PackedColumns::rows_alone`]: blocks of 16 columns, each
/// block's `k` rows contiguous, so that a block is read in one sequential sweep and then from
/// the cache for every further group of rows.
#[derive(Clone)]
pub struct PackedColumns {
    k: usize,
    n: usize,
    blocks: Vec<f32>,
}

impl std::fmt::Debug for PackedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedColumns({} x {})", self.k, self.n)
    }
}

/// Blocks of 16 columns per parallel task of [`PackedColumns::rows_alone`] (1,024 columns).
const PACKED_TASK_BLOCKS: usize = 64;

impl PackedColumns {
    /// `b` (`k x n`, not transposed) packed, or `None` where [`PackedColumns::rows_alone`]
    /// cannot give `gemm`'s one-row sums on this CPU (no FMA, or a product on a ragged width
    /// that does not come out equal, checked once per process); use
    /// [`matmul_rows_alone`] then.
    pub fn new(b: Mat<'_, f32>) -> Option<Self> {
        if b.trans || !packed_kernel_matches_gemm() {
            return None;
        }
        Some(Self::pack(b))
    }

    fn pack(b: Mat<'_, f32>) -> Self {
        let (k, n) = b.shape();
        let l = crate::kernels::GEMV_LANES;
        let mut blocks = vec![0f32; n.div_ceil(l) * k * l];
        if k > 0 {
            blocks
                .par_chunks_mut(k * l)
                .enumerate()
                .for_each(|(bi, block)| {
                    let c0 = bi * l;
                    let w = l.min(n - c0);
                    for j in 0..k {
                        block[j * l..][..w].copy_from_slice(&b.data[j * n + c0..][..w]);
                    }
                });
        }
        PackedColumns { k, n, blocks }
    }

    /// `out = a · b` (`a` `[m, k]`, `out` `[m, n]`, row-major), every row of `out` bit for bit
    /// the product of that row of `a` alone ([`matmul`] with `m = 1`), as
    /// [`matmul_rows_alone`] gives it, with the multiply-adds in registers. Rows go in groups
    /// of four (the last padded with zeros); tasks of 1,024 columns run in parallel.
    pub fn rows_alone(&self, out: &mut [f32], a: &[f32], m: usize) {
        let (k, n) = (self.k, self.n);
        assert_eq!(a.len(), m * k, "input size");
        assert_eq!(out.len(), m * n, "output size");
        if m == 0 || n == 0 {
            return;
        }
        let (l, g) = (crate::kernels::GEMV_LANES, crate::kernels::GEMV_ROWS);
        if k == 0 {
            out.fill(0.0);
            return;
        }
        let groups = m.div_ceil(g);
        // The rows in groups of `g`, each transposed (`k x g`), the last padded with zeros.
        let mut ht = vec![0f32; groups * k * g];
        for r in 0..m {
            for j in 0..k {
                ht[(r / g) * k * g + j * g + r % g] = a[r * k + j];
            }
        }
        let out_ptr = out.as_mut_ptr() as usize;
        let task = |(t, task): (usize, &[f32])| {
            let mut tmp = vec![0f32; groups * g * l];
            for (b, block) in task.chunks_exact(k * l).enumerate() {
                crate::kernels::gemv_order_block_here(block, &ht, k, &mut tmp);
                let c0 = (t * PACKED_TASK_BLOCKS + b) * l;
                let w = l.min(n - c0);
                for r in 0..m {
                    let src = &tmp[r * l..][..w];
                    // SAFETY: `out` holds `m x n` values; this writes columns `c0 .. c0 + w`
                    // of row `r`, inside the row, and no other task or block writes them.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            (out_ptr as *mut f32).add(r * n + c0),
                            w,
                        );
                    }
                }
            }
        };
        let size = PACKED_TASK_BLOCKS * k * l;
        // A small matrix is read from the cache: forking would cost more than it saves.
        if k * n < GEMV_SPLIT_ELEMENTS {
            self.blocks.chunks(size).enumerate().for_each(task);
        } else {
            self.blocks.par_chunks(size).enumerate().for_each(task);
        }
    }
}

/// Whether [`PackedColumns::rows_alone`] gives `gemm`'s one-row sums on this CPU: checked once
/// on five rows against a `37 x 40` matrix (two full SIMD widths and a scalar tail in `gemm`,
/// a ragged last block here).
fn packed_kernel_matches_gemm() -> bool {
    static MATCHES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MATCHES.get_or_init(|| {
        if !crate::kernels::gemv_order_available() {
            return false;
        }
        let (m, k, n) = (5, 37, 40);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 997) as f32 / 331.0 - 1.3)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 991) as f32 / 457.0 - 1.1)
            .collect();
        let mut alone = vec![0f32; m * n];
        for (r, row) in alone.chunks_mut(n).enumerate() {
            matmul_on(
                row,
                Mat::new(&a[r * k..][..k], 1, k),
                Mat::new(&b, k, n),
                false,
                Threads::One,
            );
        }
        let mut packed = vec![0f32; m * n];
        PackedColumns::pack(Mat::new(&b, k, n)).rows_alone(&mut packed, &a, m);
        packed
            .iter()
            .zip(&alone)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    })
}

/// The transpose of row-major `a` `[r, c]` into `out` `[c, r]` (rows of `out` in parallel).
pub fn transpose_into<T: Scalar>(a: &[T], r: usize, c: usize, out: &mut [T]) {
    assert_eq!(a.len(), r * c, "input size");
    assert_eq!(out.len(), r * c, "output size");
    if r == 0 || c == 0 {
        return;
    }
    out.par_chunks_mut(r).enumerate().for_each(|(j, row)| {
        for (i, v) in row.iter_mut().enumerate() {
            *v = a[i * c + j];
        }
    });
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

    #[test]
    fn matmul_with_transposes_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut at = vec![0f32; m * k];
        transpose_into(&a, m, k, &mut at);
        let mut bt = vec![0f32; k * n];
        transpose_into(&b, k, n, &mut bt);
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
            crate::on_threads(threads, || {
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

    /// A one-row product split over threads (a fold-in's output layer) is the single `gemv`
    /// call bit for bit, with and without accumulation, on widths that leave ragged pieces
    /// and a scalar tail.
    #[test]
    fn one_row_split_over_threads_is_the_single_call() {
        let k = 600;
        for n in [4_099usize, 56_512, 10_007] {
            let a: Vec<f32> = (0..k)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 1000) as f32 / 991.0 - 0.5)
                .collect();
            let run = |threads: usize, pool: Threads| {
                crate::on_threads(threads, || {
                    let mut c: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.1).collect();
                    matmul_on(&mut c, Mat::new(&a, 1, k), Mat::new(&b, k, n), false, pool);
                    let first = c.clone();
                    matmul_on(&mut c, Mat::new(&a, 1, k), Mat::new(&b, k, n), true, pool);
                    (first, c)
                })
            };
            let single = run(1, Threads::One);
            assert_eq!(run(3, Threads::Pool), single, "n = {n}");
            assert_eq!(run(4, Threads::Pool), single, "n = {n}");
        }
    }

    /// `a` `[m, k]` and `b` `[k, n]` with values of both signs.
    fn operands(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (0..m * k)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let b = (0..k * n)
            .map(|i| ((i * 104_729) % 1000) as f32 / 991.0 - 0.5)
            .collect();
        (a, b)
    }

    /// Each row of `a` times `b` as a one-row product, stacked.
    fn each_row_alone(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m)
            .flat_map(|r| {
                let mut row = vec![0f32; n];
                matmul(
                    &mut row,
                    Mat::new(&a[r * k..][..k], 1, k),
                    Mat::new(b, k, n),
                    false,
                );
                row
            })
            .collect()
    }

    /// The packed, register-blocked product gives each row's product alone, bit for bit, for
    /// any number of rows (groups of four padded), ragged widths and any thread count; it is
    /// available wherever the CPU has FMA.
    #[test]
    fn packed_rows_are_each_row_alone() {
        #[cfg(target_arch = "x86_64")]
        let fma = std::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let fma = false;
        for (m, k, n) in [
            (9, 600, 2_049),
            (1, 600, 1_000),
            (4, 3, 17),
            (6, 128, 5_000),
        ] {
            let (a, b) = operands(m, k, n);
            let Some(packed) = PackedColumns::new(Mat::new(&b, k, n)) else {
                assert!(!fma, "a CPU with FMA gets the packed product");
                continue;
            };
            let alone = each_row_alone(&a, &b, m, k, n);
            for threads in [1, 3] {
                let together = crate::on_threads(threads, || {
                    let mut out = vec![7f32; m * n];
                    packed.rows_alone(&mut out, &a, m);
                    out
                });
                assert_eq!(together, alone, "m {m} k {k} n {n}, {threads} threads");
            }
        }
    }

    /// Rows computed together with `b` read once per piece are each row's product alone, bit
    /// for bit, on any number of threads (widths with ragged pieces and a scalar tail; `k`
    /// of 1-2 and a transposed `b` take the per-row fallback). With `k = 600` a plain
    /// many-row product differs from the rows alone in most elements (`gemm` then sums the
    /// inner dimension in blocks), so this checks the order, not just the values.
    #[test]
    fn rows_together_are_each_row_alone() {
        for (m, k, n) in [
            (5, 300, 5_000),
            (3, 257, 2_049),
            (4, 2, 1_500),
            (1, 64, 3_000),
        ] {
            let (a, b) = operands(m, k, n);
            let bt = {
                let mut t = vec![0f32; k * n];
                transpose_into(&b, k, n, &mut t);
                t
            };
            let alone = each_row_alone(&a, &b, m, k, n);
            for threads in [1, 3] {
                let together = crate::on_threads(threads, || {
                    let mut out = vec![7f32; m * n];
                    matmul_rows_alone(&mut out, &a, m, Mat::new(&b, k, n));
                    out
                });
                assert_eq!(together, alone, "m {m} k {k} n {n}, {threads} threads");
                let transposed = crate::on_threads(threads, || {
                    let mut out = vec![7f32; m * n];
                    matmul_rows_alone(&mut out, &a, m, Mat::new(&bt, n, k).t());
                    out
                });
                for (x, y) in transposed.iter().zip(&alone) {
                    assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()));
                }
            }
        }
    }
}
