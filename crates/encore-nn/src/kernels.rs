//! Element-wise and sparse kernels: fast `exp`/`tanh`, row and column reductions in a fixed
//! order, and the sparse first layers ([`Csr`], [`FacetCsr`]), with their instruction-set
//! dispatch.

use rayon::prelude::*;

/// `e^x` for `f32` in plain arithmetic (Cephes' `expf`: `x = n ln 2 + r`, a degree-6
/// polynomial for `e^r`, `2^n` built in the exponent bits), so loops over slices vectorise;
/// `f32::exp` is a libm call per element, and the decoders take 1.6 million (MultiVAE) and 16
/// million (MacridVAE) exponentials per ml-100k step. Relative error below 3e-7 (tested
/// against `f64::exp`); inputs are clamped to `[-87, 88]` (results `~1.6e-38 .. 1.7e38`,
/// never 0 or infinite).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without `round()`
    // (a libm call below SSE4.1).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from the bits of t = 1.5·2^23 + n (exact, as |n| <= 127): its low bits are n, so
    // the biased exponent n + 127 is an integer subtraction. (`n as i32` gives the same
    // number, but Rust's saturating float-to-int cast stays scalar in vectorised loops.)
    e * f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
}

/// `tanh(x) = 1 − 2 / (e^{2x} + 1)` over [`exp`] (absolute error below 3e-7; `f32::tanh` is a
/// libm call per element).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Rows per rayon task in row-wise passes (enough work per task to amortise the fork).
pub fn row_chunk(cols: usize) -> usize {
    (16_384 / cols.max(1)).max(1)
}

/// `y[r, :] += bias` for every row.
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    y.par_chunks_mut(n * row_chunk(n)).for_each(|rows| {
        for row in rows.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    });
}

/// `g *= 1 - a²` (the derivative of `tanh` at its output `a`).
pub fn tanh_backward(g: &mut [f32], a: &[f32]) {
    g.par_chunks_mut(16_384)
        .zip(a.par_chunks(16_384))
        .for_each(|(g, a)| {
            for (g, a) in g.iter_mut().zip(a) {
                *g *= 1.0 - a * a;
            }
        });
}

/// Each row's sum in order, `((r₀ + r₁) + r₂) + …` from `0.0` (the bits of a plain loop),
/// for the rows of a row-major `[rows, n]` block, into `out` (`rows` values). Four rows go
/// side by side: a row's sum is one chain of dependent adds (four cycles each), so a single
/// chain leaves the adders idle; four chains keep them busy without changing any row's order.
pub fn ordered_row_sums(y: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(y.len(), n * out.len(), "rows and sums");
    if n == 0 {
        out.fill(0.0);
        return;
    }
    let mut groups = y.chunks_exact(4 * n);
    let mut outs = out.chunks_exact_mut(4);
    for (g, o) in (&mut groups).zip(&mut outs) {
        let (r0, rest) = g.split_at(n);
        let (r1, rest) = rest.split_at(n);
        let (r2, r3) = rest.split_at(n);
        let mut s = [0f32; 4];
        for (((a, b), c), d) in r0.iter().zip(r1).zip(r2).zip(r3) {
            s[0] += a;
            s[1] += b;
            s[2] += c;
            s[3] += d;
        }
        o.copy_from_slice(&s);
    }
    for (row, o) in groups
        .remainder()
        .chunks_exact(n)
        .zip(outs.into_remainder())
    {
        let mut s = 0f32;
        for v in row {
            s += v;
        }
        *o = s;
    }
}

/// Column sums of a row-major `[rows, n]` matrix (rows summed in order).
/// Ranges of columns run in parallel, each summing all rows in order, so every column gets
/// the sequential sum whatever the number of threads.
pub fn col_sums(y: &[f32], n: usize) -> Vec<f32> {
    const COLS: usize = 64;
    let mut s = vec![0f32; n];
    if n == 0 {
        return s;
    }
    s.par_chunks_mut(COLS).enumerate().for_each(|(c, s)| {
        let cols = c * COLS..c * COLS + s.len();
        for row in y.chunks_exact(n) {
            for (a, b) in s.iter_mut().zip(&row[cols.clone()]) {
                *a += b;
            }
        }
    });
    s
}

/// `y += v · w` element by element (a multiply, then an add): the per-entry sums the
/// column-blocked gathers of [`Csr`] are tested against, bit for bit.
#[cfg(test)]
fn axpy(y: &mut [f32], v: f32, w: &[f32]) {
    for (y, w) in y.iter_mut().zip(w) {
        *y += v * w;
    }
}

/// `<a, b>` in 8 interleaved partial sums (a fixed order), AVX2+FMA when available.
#[cfg(test)]
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

#[cfg(test)]
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

#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

/// Panics unless `offsets` is a valid CSR offset array over `nnz` entries.
fn check_offsets(offsets: &[usize], nnz: usize) {
    assert!(
        offsets.first() == Some(&0)
            && offsets.last() == Some(&nnz)
            && offsets.windows(2).all(|w| w[0] <= w[1]),
        "CSR offsets must run from 0 to the entry count without decreasing"
    );
}

/// A batch of sparse rows in CSR form.
#[derive(Debug, Clone, Default)]
pub struct Csr {
    n_rows: usize,
    /// Row `r`'s entries are `offsets[r]..offsets[r + 1]`.
    offsets: Vec<usize>,
    cols: Vec<u32>,
    values: Vec<f32>,
}

impl Csr {
    /// Rows `0..offsets.len() - 1`; row `r`'s entries are `offsets[r]..offsets[r + 1]` of
    /// `cols` and `values`. Panics unless `offsets` starts at 0, never decreases and ends at
    /// the number of entries (a programming error: the callers build it from a matrix).
    pub fn new(offsets: Vec<usize>, cols: Vec<u32>, values: Vec<f32>) -> Self {
        check_offsets(&offsets, cols.len());
        assert_eq!(cols.len(), values.len(), "one value per entry");
        Csr {
            n_rows: offsets.len() - 1,
            offsets,
            cols,
            values,
        }
    }

    /// Rows in the batch.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Row `r`'s entries are `offsets()[r]..offsets()[r + 1]`.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// The column of each entry.
    pub fn cols(&self) -> &[u32] {
        &self.cols
    }

    /// The value of each entry.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The values, to rescale in place (the pattern stays).
    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }

    /// Inverted dropout on the entries: each is kept with probability `1 − p` and scaled by
    /// `1 / (1 − p)`; dropped entries are removed (they would contribute zero, so this is
    /// dropout on the dense rows). One draw per entry in entry order (`rng.random::<f64>() >=
    /// p` keeps it); `p <= 0` copies the batch without drawing.
    pub fn dropped_out(&self, p: f64, rng: &mut impl rand::Rng) -> Csr {
        if p <= 0.0 {
            return self.clone();
        }
        let scale = (1.0 / (1.0 - p)) as f32;
        let mut offsets = Vec::with_capacity(self.n_rows + 1);
        offsets.push(0);
        let (mut cols, mut values) = (Vec::new(), Vec::new());
        for r in 0..self.n_rows {
            for e in self.offsets[r]..self.offsets[r + 1] {
                if rng.random::<f64>() >= p {
                    cols.push(self.cols[e]);
                    values.push(self.values[e] * scale);
                }
            }
            offsets.push(cols.len());
        }
        Csr::new(offsets, cols, values)
    }

    /// Row `r`'s entries as `(column, value)` pairs.
    pub fn row(&self, r: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let e = self.offsets[r]..self.offsets[r + 1];
        self.cols[e.clone()]
            .iter()
            .copied()
            .zip(self.values[e].iter().copied())
    }

    pub fn nnz(&self) -> usize {
        self.cols.len()
    }

    /// `y = X W + b` with `W` row-major `[n_cols, out]`: each output row is the bias plus the
    /// value-weighted sum of the weight rows of its entries (a gather, not a dense product),
    /// summed in entry order.
    ///
    /// Column-blocked: a pass handles `COL_BLOCK` output columns for all rows of a task, so
    /// the `[n_cols, COL_BLOCK]` slab of `W` it reads (1,682 items x 256 B on ml-100k) stays in
    /// L2, where gathering whole rows streamed `W` (4 MB) from L3 once per entry. Rows are
    /// split into one task per thread; the per-element sums are the same for any split.
    pub fn times_dense(&self, w: &[f32], b: &[f32]) -> Vec<f32> {
        let out = b.len();
        let mut y = vec![0f32; self.n_rows * out];
        if y.is_empty() {
            return y;
        }
        let per_task = self.n_rows.div_ceil(rayon::current_num_threads()).max(1);
        let isa = Isa::detect();
        y.par_chunks_mut(per_task * out)
            .enumerate()
            .for_each(|(t, ys)| {
                for c0 in (0..out).step_by(COL_BLOCK) {
                    let cw = COL_BLOCK.min(out - c0);
                    for (i, row) in ys.chunks_mut(out).enumerate() {
                        let r = t * per_task + i;
                        let ents = self.offsets[r]..self.offsets[r + 1];
                        gather_block(
                            isa,
                            &mut row[c0..c0 + cw],
                            &b[c0..c0 + cw],
                            &self.cols[ents.clone()],
                            &self.values[ents],
                            &w[c0..],
                            out,
                        );
                    }
                }
            });
        y
    }

    /// `X^T G` into a dense `[n_cols, out]` buffer (the weight gradient of
    /// [`Csr::times_dense`]): each column (item) row sums `v · G[r, :]` over its entries in
    /// batch order. Items are split into one range per thread with about equal entry counts;
    /// within a range, passes of `COL_BLOCK` columns keep the `[rows, COL_BLOCK]` slab of
    /// `G` in L2 (as [`Csr::times_dense`]). The sums do not depend on the split.
    pub fn transpose_times(&self, g: &[f32], out: usize, n_cols: usize) -> Vec<f32> {
        let mut dw = vec![0f32; n_cols * out];
        self.transpose_times_into(g, out, &mut dw);
        dw
    }

    /// [`Csr::transpose_times`] into `dw` (`[n_cols, out]`, any contents; overwritten), so a
    /// gradient buffer kept between steps is written in place.
    pub fn transpose_times_into(&self, g: &[f32], out: usize, dw: &mut [f32]) {
        let n_cols = dw.len() / out.max(1);
        // Entries grouped by column, stable (batch order within a column).
        let mut starts = vec![0usize; n_cols + 1];
        for &c in &self.cols {
            starts[c as usize + 1] += 1;
        }
        for c in 0..n_cols {
            starts[c + 1] += starts[c];
        }
        let mut fill = starts.clone();
        let mut rows = vec![0u32; self.nnz()];
        let mut vals = vec![0f32; self.nnz()];
        for r in 0..self.n_rows {
            for e in self.offsets[r]..self.offsets[r + 1] {
                let c = self.cols[e] as usize;
                rows[fill[c]] = r as u32;
                vals[fill[c]] = self.values[e];
                fill[c] += 1;
            }
        }
        if dw.is_empty() {
            return;
        }
        let isa = Isa::detect();
        balanced_column_ranges(dw, &starts, out)
            .into_par_iter()
            .for_each(|(lo, ds)| {
                let zero = [0f32; COL_BLOCK];
                for c0 in (0..out).step_by(COL_BLOCK) {
                    let cw = COL_BLOCK.min(out - c0);
                    for (i, row) in ds.chunks_mut(out).enumerate() {
                        let ents = starts[lo + i]..starts[lo + i + 1];
                        gather_block(
                            isa,
                            &mut row[c0..c0 + cw],
                            &zero[..cw],
                            &rows[ents.clone()],
                            &vals[ents],
                            &g[c0..],
                            out,
                        );
                    }
                }
            });
    }

    /// `X^T G` restricted to the value gradient: `dv_e = <W[col_e, :], G[row_e, :]>` (the
    /// reference [`FacetCsr::value_grads`] is tested against).
    #[cfg(test)]
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

/// The rows of a weight gradient `dw` (`[n_cols, out]`, one row per column of the sparse
/// input) split into one range per thread with about the same number of entries, as (first
/// column, rows): `starts` holds the prefix counts of the entries per column (`n_cols + 1`).
/// Item popularity is skewed, so equal column counts left one thread with most of the work.
fn balanced_column_ranges<'a>(
    dw: &'a mut [f32],
    starts: &[usize],
    out: usize,
) -> Vec<(usize, &'a mut [f32])> {
    let n_cols = starts.len() - 1;
    let (threads, nnz) = (rayon::current_num_threads().max(1), starts[n_cols]);
    let mut bounds = vec![0usize];
    for t in 1..threads {
        let c = starts
            .partition_point(|&v| v < nnz * t / threads)
            .min(n_cols);
        if c > *bounds.last().expect("starts at 0") {
            bounds.push(c);
        }
    }
    if n_cols > *bounds.last().expect("starts at 0") {
        bounds.push(n_cols);
    }
    let mut rest = dw;
    bounds
        .windows(2)
        .map(|w| {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * out);
            rest = tail;
            (w[0], mine)
        })
        .collect()
}

/// Output columns per pass of the column-blocked gathers of [`Csr`]: 64 floats (256 B, four
/// AVX-512 registers) per row of the source slab.
const COL_BLOCK: usize = 64;

/// Columns per register block in the facet-grouped kernels (one AVX-512 register, two AVX2).
const LANES: usize = 16;

/// The instruction set the facet-grouped kernels run on, detected once per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Generic,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    }

    /// Most facets kept in registers at once: `G` accumulators of `LANES` floats, plus a
    /// weight block and a broadcast, must fit the register file (32 zmm, 16 ymm, 16 xmm).
    fn max_group(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 8,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 4,
            Isa::Generic => 2,
        }
    }
}

/// `k` facets split into consecutive groups of at most `max`, as even as possible (`10` with
/// `max = 8` is `5, 5`; with `max = 4`, `4, 3, 3`): `(first facet, size)`.
fn facet_groups(k: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = k.div_ceil(max.max(1));
    let (base, extra) = (k / n.max(1), k % n.max(1));
    (0..n).scan(0, move |start, g| {
        let size = base + usize::from(g < extra);
        let first = *start;
        *start += size;
        Some((first, size))
    })
}

/// Calls `$f::<G>(args)` for a run-time group size `G` in `1..=8`.
macro_rules! with_group {
    ($g:expr, $f:ident($($args:expr),* $(,)?)) => {
        match $g {
            1 => $f::<1>($($args),*),
            2 => $f::<2>($($args),*),
            3 => $f::<3>($($args),*),
            4 => $f::<4>($($args),*),
            5 => $f::<5>($($args),*),
            6 => $f::<6>($($args),*),
            7 => $f::<7>($($args),*),
            8 => $f::<8>($($args),*),
            g => unreachable!("facet group of {g}"),
        }
    };
}

/// Defines `fn $name(isa: Isa, args)`: `$body` compiled for AVX-512, for AVX2+FMA and for
/// the baseline target, the build `isa` names run. The bodies are plain arrays of
/// multiplies and adds (never fused, whatever the width), so every build gives the same bits;
/// everything they call must be `#[inline(always)]` to get the wider instructions.
/// Elements per inner loop of the element-wise kernels ([`exp`], [`tanh`]): a fixed-size
/// loop of eight AVX-512 vectors, which the compiler interleaves, where one long polynomial
/// chain at a time left the vector units idle. Each element gets the same operations, so the
/// same bits.
const ILP_CHUNK: usize = 128;

macro_rules! per_isa {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name(isa: Isa, $($a: $t),*) {
            #[inline(always)]
            fn inner($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($a: $t),*) {
                inner($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($a: $t),*) {
                inner($($a),*)
            }
            match isa {
                // SAFETY: `Isa::detect` returns `Avx512` only after detecting AVX-512F.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512($($a),*) },
                // SAFETY: `Isa::detect` returns `Avx2` only after detecting AVX2 and FMA.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2($($a),*) },
                Isa::Generic => inner($($a),*),
            }
        }
    };
}

/// Rows per register group of [`gemv_order_blocks`].
pub(crate) const GEMV_ROWS: usize = 4;

per_isa! {
    /// One block of [`LANES`] columns of a packed matrix (`block`: `k` rows of `LANES`
    /// values) times groups of [`GEMV_ROWS`] rows (`ht`: per group `k x GEMV_ROWS`, the rows
    /// transposed), into `out` (per group `GEMV_ROWS x LANES`). Each output element is summed
    /// exactly as `gemm`'s one-row product (its `gemv`) sums it on AVX2 or AVX-512: the first
    /// term a product, then one fused multiply-add per term down the inner dimension, in
    /// order. The accumulators stay in registers (the `gemv` keeps its output row in memory:
    /// a load and a store per multiply-add), and the block is read from the cache by every
    /// group after the first.
    fn gemv_order_block(block: &[f32], ht: &[f32], k: usize, out: &mut [f32]) {
        for (hg, out) in ht.chunks_exact(k * GEMV_ROWS).zip(out.chunks_exact_mut(GEMV_ROWS * LANES)) {
            let mut acc = [[0f32; LANES]; GEMV_ROWS];
            let w: &[f32; LANES] = block[..LANES].try_into().expect("a block row");
            let h: &[f32; GEMV_ROWS] = hg[..GEMV_ROWS].try_into().expect("a row group");
            for r in 0..GEMV_ROWS {
                for l in 0..LANES {
                    acc[r][l] = w[l] * h[r];
                }
            }
            for j in 1..k {
                let w: &[f32; LANES] = block[j * LANES..][..LANES].try_into().expect("a block row");
                let h: &[f32; GEMV_ROWS] =
                    hg[j * GEMV_ROWS..][..GEMV_ROWS].try_into().expect("a row group");
                for r in 0..GEMV_ROWS {
                    for l in 0..LANES {
                        acc[r][l] = w[l].mul_add(h[r], acc[r][l]);
                    }
                }
            }
            for (o, a) in out.chunks_exact_mut(LANES).zip(&acc) {
                o.copy_from_slice(a);
            }
        }
    }
}

/// [`gemv_order_block`] on the build for this CPU.
pub(crate) fn gemv_order_block_here(block: &[f32], ht: &[f32], k: usize, out: &mut [f32]) {
    gemv_order_block(Isa::detect(), block, ht, k, out)
}

/// Whether this CPU has FMA, without which `gemm`'s one-row product multiplies and adds
/// separately and [`gemv_order_block`] cannot match it.
pub(crate) fn gemv_order_available() -> bool {
    !matches!(Isa::detect(), Isa::Generic)
}

/// Columns per block of [`gemv_order_block`]'s packed layout.
pub(crate) const GEMV_LANES: usize = LANES;

/// `tanh` in place.
pub fn tanh_inplace(y: &mut [f32]) {
    let isa = Isa::detect();
    y.par_chunks_mut(16_384).for_each(|c| tanh_slice(isa, c));
}

per_isa! {
    /// `v = tanh(v)` over a slice, in chunks of [`ILP_CHUNK`].
    fn tanh_slice(y: &mut [f32]) {
        let mut chunks = y.chunks_exact_mut(ILP_CHUNK);
        for c in &mut chunks {
            for v in c {
                *v = tanh(*v);
            }
        }
        for v in chunks.into_remainder() {
            *v = tanh(*v);
        }
    }
}

per_isa! {
    /// `v = e^(v − shift)` over a slice, in chunks of [`ILP_CHUNK`].
    fn exp_shifted_slice(y: &mut [f32], shift: f32) {
        let mut chunks = y.chunks_exact_mut(ILP_CHUNK);
        for c in &mut chunks {
            for v in c {
                *v = exp(*v - shift);
            }
        }
        for v in chunks.into_remainder() {
            *v = exp(*v - shift);
        }
    }
}

per_isa! {
    /// `q = e^(q · s)` in place, then `p += q ⊙ c`, in chunks of [`ILP_CHUNK`] (the chunk is
    /// still in L1 for the accumulate).
    fn exp_scaled_accumulate_slice(q: &mut [f32], p: &mut [f32], c: &[f32], s: f32) {
        let mut qs = q.chunks_exact_mut(ILP_CHUNK);
        let mut ps = p.chunks_exact_mut(ILP_CHUNK);
        let mut cs = c.chunks_exact(ILP_CHUNK);
        for ((q, p), c) in (&mut qs).zip(&mut ps).zip(&mut cs) {
            for q in q.iter_mut() {
                *q = exp(*q * s);
            }
            for ((p, q), c) in p.iter_mut().zip(q.iter()).zip(c) {
                *p += q * c;
            }
        }
        let (q, p, c) = (qs.into_remainder(), ps.into_remainder(), cs.remainder());
        for ((p, q), c) in p.iter_mut().zip(q.iter_mut()).zip(c) {
            *q = exp(*q * s);
            *p += *q * c;
        }
    }
}

/// `v = e^(v − shift)` for every element of `y`, in the widest instructions this CPU has
/// (the same bits on all: [`exp`] is plain multiplies and adds). Sequential: callers run it
/// on one row inside their own parallel loop.
pub fn exp_shifted(y: &mut [f32], shift: f32) {
    exp_shifted_slice(Isa::detect(), y, shift);
}

/// MacridVAE's decoder pass over rows of `n`: `q = e^(q · s)` in place and `p += q ⊙ c`,
/// with `c` one value per column; rows in parallel, the widest instructions this CPU has.
pub fn exp_scaled_accumulate(q: &mut [f32], p: &mut [f32], c: &[f32], s: f32) {
    let n = c.len();
    assert_eq!(q.len(), p.len(), "q and p sizes");
    if n == 0 {
        return;
    }
    let isa = Isa::detect();
    p.par_chunks_mut(n * row_chunk(n))
        .zip(q.par_chunks_mut(n * row_chunk(n)))
        .for_each(|(pr, qr)| {
            for (pr, qr) in pr.chunks_exact_mut(n).zip(qr.chunks_exact_mut(n)) {
                exp_scaled_accumulate_slice(isa, qr, pr, c, s);
            }
        });
}

per_isa! {
    /// One row's part of a column-blocked gather of [`Csr`]: `y = init + Σ_e vals[e] ·
    /// src[cols[e] * stride..][..y.len()]` (`src`: a row-major matrix with `stride` columns,
    /// starting at the block's first column), over the entries in order, a multiply then an add per element: the same bits as adding the
    /// entries' whole rows one after the other.
    fn gather_block(
        y: &mut [f32],
        init: &[f32],
        cols: &[u32],
        vals: &[f32],
        src: &[f32],
        stride: usize,
    ) {
        if let Ok(y) = <&mut [f32; COL_BLOCK]>::try_from(&mut *y) {
            // A full block: the accumulator lives in registers.
            let mut acc: [f32; COL_BLOCK] = init.try_into().expect("init matches the block");
            for (&c, &v) in cols.iter().zip(vals) {
                let s: &[f32; COL_BLOCK] = src[c as usize * stride..][..COL_BLOCK]
                    .try_into()
                    .expect("a full block");
                for j in 0..COL_BLOCK {
                    acc[j] += v * s[j];
                }
            }
            *y = acc;
        } else {
            y.copy_from_slice(init);
            let n = y.len();
            for (&c, &v) in cols.iter().zip(vals) {
                for (y, s) in y.iter_mut().zip(&src[c as usize * stride..][..n]) {
                    *y += v * s;
                }
            }
        }
    }
}

/// The sparse input of MacridVAE's first layer for all `K` facets of a batch, grouped by user.
///
/// MacridVAE feeds every user to the shared encoder `K` times, once per facet; the facets'
/// rows share the user's item list and differ only in the values (`x_ui · C_ik`, normalised;
/// in the `original` preset each facet has its own dropout mask). As `K · B` separate CSR rows
/// ([`Csr`]) every first-layer weight row (600 floats) is streamed from memory `K` times per
/// user, and the first layer's three products were a third of a training step. Here a
/// user's entries are stored once with `K` values each (entry-major, `values[e * K + f]`; an
/// entry dropped from facet `f` has value 0), and the kernels load each weight row once per
/// user and apply it to a group of facets held in registers. No crate offers such a
/// facet-grouped sparse gather (a per-user `gemm` would need the rows gathered first), so the
/// kernels are written here as portable array code, built for AVX-512/AVX2 at run time.
///
/// Dense operands keep the facet-major layout of the rest of the model: row `f * B + u` is
/// user `u`'s facet `f`. Every output element is summed in a fixed order that does not
/// depend on the thread count (nor on the instruction set).
#[derive(Debug, Clone, Default)]
pub struct FacetCsr {
    n_users: usize,
    n_facets: usize,
    /// User `u`'s entries are `offsets[u]..offsets[u + 1]`.
    offsets: Vec<usize>,
    cols: Vec<u32>,
    /// `[nnz, K]`: entry `e`'s value in facet `f` is `values[e * K + f]`.
    values: Vec<f32>,
}

impl FacetCsr {
    /// Users `0..offsets.len() - 1` with `n_facets` values per entry (`values[e * K + f]`).
    /// Panics on inconsistent sizes (a programming error), as [`Csr::new`].
    pub fn new(n_facets: usize, offsets: Vec<usize>, cols: Vec<u32>, values: Vec<f32>) -> Self {
        check_offsets(&offsets, cols.len());
        assert_eq!(cols.len() * n_facets, values.len(), "K values per entry");
        FacetCsr {
            n_users: offsets.len() - 1,
            n_facets,
            offsets,
            cols,
            values,
        }
    }

    /// Users in the batch.
    pub fn n_users(&self) -> usize {
        self.n_users
    }

    /// Facets (values per entry).
    pub fn n_facets(&self) -> usize {
        self.n_facets
    }

    /// User `u`'s entries are `offsets()[u]..offsets()[u + 1]`.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// The column of each entry.
    pub fn cols(&self) -> &[u32] {
        &self.cols
    }

    /// `[nnz, K]`: entry `e`'s value in facet `f` is `values()[e * K + f]`.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    pub fn nnz(&self) -> usize {
        self.cols.len()
    }

    /// Each user's slice of `data` (`per` elements per entry), in user order.
    fn split_per_user<'a>(&self, mut data: &'a mut [f32], per: usize) -> Vec<&'a mut [f32]> {
        (0..self.n_users)
            .map(|u| {
                let (mine, rest) = std::mem::take(&mut data)
                    .split_at_mut((self.offsets[u + 1] - self.offsets[u]) * per);
                data = rest;
                mine
            })
            .collect()
    }

    /// `Y = X W + b` for every facet: `Y` facet-major `[K * B, out]`, `W` row-major
    /// `[n_cols, out]`, row `f * B + u` is `b + Σ_e values[e, f] · W[col_e, :]` over user
    /// `u`'s entries in order (as [`Csr::times_dense`] on the `K * B` rows). Users in
    /// parallel; per user, `LANES`-column blocks of a group of facets are accumulated in
    /// registers while the user's entries are walked, so each weight block is loaded once per
    /// facet group instead of once per facet. `y` is resized to `[K * B, out]` and every
    /// element is written, so it may come with any contents (a buffer kept from an earlier
    /// step).
    pub fn times_dense_into(&self, w: &[f32], bias: &[f32], y: &mut Vec<f32>) {
        let (k, b, out) = (self.n_facets, self.n_users, bias.len());
        y.resize(k * b * out, 0.0);
        if y.is_empty() {
            return;
        }
        // Each user's K output rows (disjoint: one in each facet's block).
        let mut rows: Vec<Vec<&mut [f32]>> = (0..b).map(|_| Vec::with_capacity(k)).collect();
        for facet in y.chunks_mut(b * out) {
            for (u, row) in facet.chunks_mut(out).enumerate() {
                rows[u].push(row);
            }
        }
        let isa = Isa::detect();
        rows.par_iter_mut().enumerate().for_each(|(u, rows)| {
            let ents = self.offsets[u]..self.offsets[u + 1];
            let cols = &self.cols[ents.clone()];
            let vals = &self.values[ents.start * k..ents.end * k];
            times_dense_user(isa, rows, w, bias, cols, vals, isa.max_group());
        });
    }

    /// [`FacetCsr::times_dense_into`] a new vector.
    #[cfg(test)]
    pub fn times_dense(&self, w: &[f32], bias: &[f32]) -> Vec<f32> {
        let mut y = Vec::new();
        self.times_dense_into(w, bias, &mut y);
        y
    }

    /// `Xᵀ G` summed over the facets, the weight gradient of [`FacetCsr::times_dense_into`]:
    /// `dW[c, :] = Σ_u Σ_{e of u, col_e = c} Σ_f values[e, f] · G[f * B + u, :]`, dense
    /// `[n_cols, out]`, `G` facet-major `[K * B, out]`. Walked user by user, so a user's `K`
    /// gradient rows are loaded once and each entry's weight-gradient row is read and written
    /// once (not `K` times); in parallel over fixed ranges of items, each range walking all
    /// users in batch order, so every item sums its contributions in batch order, facets in
    /// order, whatever the number of threads.
    pub fn transpose_times(&self, g: &[f32], out: usize, n_cols: usize) -> Vec<f32> {
        let mut dw = vec![0f32; n_cols * out];
        self.transpose_times_into(g, out, &mut dw);
        dw
    }

    /// [`FacetCsr::transpose_times`] into `dw` (`[n_cols, out]`, any contents; overwritten),
    /// so a gradient buffer kept between steps is written in place.
    pub fn transpose_times_into(&self, g: &[f32], out: usize, dw: &mut [f32]) {
        let n_cols = dw.len() / out.max(1);
        let (k, b) = (self.n_facets, self.n_users);
        assert_eq!(g.len(), k * b * out, "gradient size");
        if dw.is_empty() {
            return;
        }
        // The range passes add into their rows.
        dw.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
        // The ranges only split the work: any split gives the same sums. Every range walks
        // all users and reloads the gradient rows of each user it touches, so more ranges
        // than threads would cost memory traffic.
        let mut starts = vec![0usize; n_cols + 1];
        self.cols.iter().for_each(|&c| starts[c as usize + 1] += 1);
        for c in 0..n_cols {
            starts[c + 1] += starts[c];
        }
        let isa = Isa::detect();
        let ranges = balanced_column_ranges(dw, &starts, out);
        ranges.into_par_iter().for_each(|(lo, dw)| {
            transpose_times_range(isa, dw, lo, self, g, out);
        });
    }

    /// The value gradient of [`FacetCsr::times_dense_into`]: `dv[e, f] = <W[col_e, :], G[f * B +
    /// u, :]>` for every entry `e` of user `u`, `[nnz, K]` like `values` (dropped entries
    /// get their gradient too; the caller ignores it). Users in parallel; per entry the weight
    /// row is loaded from memory once and dotted with the user's `K` gradient rows (which
    /// stay in cache for all the user's entries).
    pub fn value_grads(&self, w: &[f32], g: &[f32], out: usize) -> Vec<f32> {
        let (k, b) = (self.n_facets, self.n_users);
        assert_eq!(g.len(), k * b * out, "gradient size");
        let mut dv = vec![0f32; self.nnz() * k];
        if dv.is_empty() {
            return dv;
        }
        let isa = Isa::detect();
        self.split_per_user(&mut dv, k)
            .into_par_iter()
            .enumerate()
            .for_each(|(u, dv)| {
                let cols = &self.cols[self.offsets[u]..self.offsets[u + 1]];
                let grows: Vec<&[f32]> = (0..k).map(|f| &g[(f * b + u) * out..][..out]).collect();
                value_grads_user(isa, dv, w, &grows, cols);
            });
        dv
    }
}

per_isa! {
    /// One user's rows of [`FacetCsr::times_dense`]: `rows[f] = bias + Σ_e vals[e, f] W[col_e]`.
    fn times_dense_user(
        rows: &mut [&mut [f32]],
        w: &[f32],
        bias: &[f32],
        cols: &[u32],
        vals: &[f32],
        max_group: usize,
    ) {
        // Two column blocks per pass where the registers hold them (AVX-512: up to 16
        // accumulators): twice the independent add chains. Any width gives the same sums.
        let wide = max_group >= 8;
        for (g0, g) in facet_groups(rows.len(), max_group) {
            with_group!(g, times_dense_group(&mut rows[g0..], g0, w, bias, cols, vals, wide));
        }
    }
}

/// [`times_dense_user`] for facets `g0..g0 + G` (`rows` starts at facet `g0`).
#[inline(always)]
fn times_dense_group<const G: usize>(
    rows: &mut [&mut [f32]],
    g0: usize,
    w: &[f32],
    bias: &[f32],
    cols: &[u32],
    vals: &[f32],
    wide: bool,
) {
    let out = bias.len();
    let mut j = 0;
    while wide && j + 2 * LANES <= out {
        times_dense_block::<G, { 2 * LANES }>(rows, g0, w, bias, cols, vals, j);
        j += 2 * LANES;
    }
    while j + LANES <= out {
        times_dense_block::<G, LANES>(rows, g0, w, bias, cols, vals, j);
        j += LANES;
    }
    // The tail: one block ending at `out` if the row is that wide (it recomputes some columns,
    // with the same operations, so the same values), else column by column.
    if j < out {
        if out >= LANES {
            times_dense_block::<G, LANES>(rows, g0, w, bias, cols, vals, out - LANES);
        } else {
            for j in j..out {
                times_dense_block::<G, 1>(rows, g0, w, bias, cols, vals, j);
            }
        }
    }
}

/// Columns `j..j + C` of facets `g0..g0 + G`, accumulated in registers over the entries.
#[inline(always)]
fn times_dense_block<const G: usize, const C: usize>(
    rows: &mut [&mut [f32]],
    g0: usize,
    w: &[f32],
    bias: &[f32],
    cols: &[u32],
    vals: &[f32],
    j: usize,
) {
    let out = bias.len();
    let k = vals.len() / cols.len().max(1);
    let b: &[f32; C] = bias[j..j + C].try_into().expect("C columns");
    let mut acc = [*b; G];
    for (e, &c) in cols.iter().enumerate() {
        let wr: &[f32; C] = w[c as usize * out + j..][..C]
            .try_into()
            .expect("C columns");
        let v: &[f32; G] = vals[e * k + g0..][..G].try_into().expect("G facets");
        for g in 0..G {
            for l in 0..C {
                acc[g][l] += v[g] * wr[l];
            }
        }
    }
    for (row, acc) in rows.iter_mut().zip(&acc) {
        row[j..j + C].copy_from_slice(acc);
    }
}

per_isa! {
    /// The items `lo..lo + dw.len() / out` of [`FacetCsr::transpose_times`].
    fn transpose_times_range(dw: &mut [f32], lo: usize, x: &FacetCsr, g: &[f32], out: usize) {
        let (k, b) = (x.n_facets, x.n_users);
        let hi = lo + dw.len() / out;
        let mut grows: Vec<&[f32]> = Vec::with_capacity(k);
        for u in 0..b {
            let ents = x.offsets[u]..x.offsets[u + 1];
            if !x.cols[ents.clone()].iter().any(|&c| (lo..hi).contains(&(c as usize))) {
                continue;
            }
            grows.clear();
            grows.extend((0..k).map(|f| &g[(f * b + u) * out..][..out]));
            for e in ents {
                let c = x.cols[e] as usize;
                if !(lo..hi).contains(&c) {
                    continue;
                }
                let row = &mut dw[(c - lo) * out..][..out];
                let v = &x.values[e * k..][..k];
                // Wide blocks give independent add chains; then the tail in halving blocks.
                let mut j = 0;
                while j + 4 * LANES <= out {
                    weight_grad_block::<{ 4 * LANES }>(row, v, &grows, j);
                    j += 4 * LANES;
                }
                while j + LANES <= out {
                    weight_grad_block::<LANES>(row, v, &grows, j);
                    j += LANES;
                }
                if j + 8 <= out {
                    weight_grad_block::<8>(row, v, &grows, j);
                    j += 8;
                }
                if j + 4 <= out {
                    weight_grad_block::<4>(row, v, &grows, j);
                    j += 4;
                }
                for j in j..out {
                    weight_grad_block::<1>(row, v, &grows, j);
                }
            }
        }
    }
}

/// `row[j..j + C] += Σ_f v[f] · grows[f][j..j + C]`, facets in order, in registers.
#[inline(always)]
fn weight_grad_block<const C: usize>(row: &mut [f32], v: &[f32], grows: &[&[f32]], j: usize) {
    let acc: &mut [f32; C] = (&mut row[j..j + C]).try_into().expect("C columns");
    let mut a = *acc;
    for (&v, g) in v.iter().zip(grows) {
        let gb: &[f32; C] = g[j..j + C].try_into().expect("C columns");
        for l in 0..C {
            a[l] += v * gb[l];
        }
    }
    *acc = a;
}

per_isa! {
    /// One user's [`FacetCsr::value_grads`]: `dv[e, f] = <W[col_e], grows[f]>`. The weight
    /// row is read from memory once and stays in L1 for the `K` dots.
    fn value_grads_user(dv: &mut [f32], w: &[f32], grows: &[&[f32]], cols: &[u32]) {
        let k = grows.len();
        let out = grows.first().map_or(0, |r| r.len());
        // The `K` dots' partial sums of one entry. Reducing them in a separate pass keeps
        // LLVM from vectorising the accumulation to suit the reduction (two lanes at a time).
        let mut parts = vec![[[0f32; LANES]; 4]; k];
        for (&c, dv) in cols.iter().zip(dv.chunks_exact_mut(k.max(1))) {
            let wr = &w[c as usize * out..][..out];
            for (p, y) in parts.iter_mut().zip(grows) {
                *p = dot_lanes(wr, y);
            }
            for (d, p) in dv.iter_mut().zip(&parts) {
                *d = sum_lanes(p);
            }
        }
    }
}

/// `acc[l] += x[l] * y[l]` for the first `LANES` elements of `x` and `y`.
#[inline(always)]
fn madd(acc: &mut [f32; LANES], x: &[f32], y: &[f32]) {
    let x: &[f32; LANES] = x[..LANES].try_into().expect("LANES");
    let y: &[f32; LANES] = y[..LANES].try_into().expect("LANES");
    for l in 0..LANES {
        acc[l] += x[l] * y[l];
    }
}

/// The partial sums of `<a, b>` (equal lengths) in `4 x LANES` accumulators: element `j`
/// goes to sum `j % (4 * LANES)` while whole `4 * LANES` blocks last, then to `j % LANES`
/// while whole `LANES` blocks last; the rest (fewer than `LANES`) to the second accumulator,
/// element `n - LANES + l` to lane `l`; [`sum_lanes`] adds them up. A fixed order, whatever the instruction set. (Named accumulators, indexed
/// only by constants, so that they stay in registers.)
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> [[f32; LANES]; 4] {
    let n = a.len();
    let b = &b[..n];
    let (mut s0, mut s1, mut s2, mut s3) =
        ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let big = n / (4 * LANES) * (4 * LANES);
    let full = n / LANES * LANES;
    for (x, y) in a[..big]
        .chunks_exact(4 * LANES)
        .zip(b[..big].chunks_exact(4 * LANES))
    {
        madd(&mut s0, x, y);
        madd(&mut s1, &x[LANES..], &y[LANES..]);
        madd(&mut s2, &x[2 * LANES..], &y[2 * LANES..]);
        madd(&mut s3, &x[3 * LANES..], &y[3 * LANES..]);
    }
    for (x, y) in a[big..full]
        .chunks_exact(LANES)
        .zip(b[big..full].chunks_exact(LANES))
    {
        madd(&mut s0, x, y);
    }
    let rem = n - full;
    if rem > 0 && n >= LANES {
        // The last `LANES` elements, the ones already summed masked out (× 0), so that every
        // operation is a whole block (a partial one made LLVM vectorise two lanes at a time).
        let mask: [f32; LANES] = std::array::from_fn(|l| f32::from(u8::from(l >= LANES - rem)));
        let x: &[f32; LANES] = a[n - LANES..].try_into().expect("LANES");
        let y: &[f32; LANES] = b[n - LANES..].try_into().expect("LANES");
        for l in 0..LANES {
            s1[l] += (x[l] * mask[l]) * y[l];
        }
    } else if rem > 0 {
        let (mut xb, mut yb) = ([0f32; LANES], [0f32; LANES]);
        xb[..rem].copy_from_slice(&a[full..]);
        yb[..rem].copy_from_slice(&b[full..]);
        madd(&mut s1, &xb, &yb);
    }
    [s0, s1, s2, s3]
}

/// The sum of [`dot_lanes`]' partial sums: `(s0 + s1) + (s2 + s3)` lane by lane, then lane
/// `l` plus lane `l + 8`, `l + 4`, `l + 2`, `l + 1` (halving).
#[inline(always)]
fn sum_lanes(s: &[[f32; LANES]; 4]) -> f32 {
    let t: [f32; 16] = std::array::from_fn(|l| (s[0][l] + s[1][l]) + (s[2][l] + s[3][l]));
    let t: [f32; 8] = std::array::from_fn(|l| t[l] + t[l + 8]);
    let t: [f32; 4] = std::array::from_fn(|l| t[l] + t[l + 4]);
    let t: [f32; 2] = std::array::from_fn(|l| t[l] + t[l + 2]);
    t[0] + t[1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_threads;

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

    /// The vectorised element-wise passes give, on every instruction set this CPU has, the
    /// bits of the scalar [`exp`] and [`tanh`] element by element.
    #[test]
    fn elementwise_kernels_match_scalar_bits_on_every_isa() {
        let mut rng = Rng(5);
        // 1,000 values over [-100, 100] (past the clamp at both ends), a length that is not
        // a multiple of any vector width.
        let x: Vec<f32> = rng.vec(1000).iter().map(|v| v * 200.0).collect();
        let c = rng.vec(1000);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        let want_exp: Vec<f32> = x.iter().map(|&v| exp(v - 1.5)).collect();
        let want_tanh: Vec<f32> = x.iter().map(|&v| tanh(v)).collect();
        let want_q: Vec<f32> = x.iter().map(|&v| exp(v * 0.1)).collect();
        let want_p: Vec<f32> = want_q.iter().zip(&c).map(|(q, c)| 0.25 + q * c).collect();
        let mut isas = vec![Isa::detect(), Isa::Generic];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            isas.push(Isa::Avx2);
        }
        for isa in isas {
            let mut y = x.clone();
            exp_shifted_slice(isa, &mut y, 1.5);
            assert_eq!(bits(&y), bits(&want_exp), "{isa:?} exp");
            let mut y = x.clone();
            tanh_slice(isa, &mut y);
            assert_eq!(bits(&y), bits(&want_tanh), "{isa:?} tanh");
            let (mut q, mut p) = (x.clone(), vec![0.25f32; x.len()]);
            exp_scaled_accumulate_slice(isa, &mut q, &mut p, &c, 0.1);
            assert_eq!(bits(&q), bits(&want_q), "{isa:?} q");
            assert_eq!(bits(&p), bits(&want_p), "{isa:?} p");
        }
        // The row-parallel wrapper: rows of 100 on 1 and 3 threads.
        let run = |threads: usize| {
            on_threads(threads, || {
                let (mut q, mut p) = (x.clone(), vec![0.25f32; x.len()]);
                exp_scaled_accumulate(&mut q, &mut p, &c[..100], 0.1);
                (bits(&q), bits(&p))
            })
        };
        assert_eq!(run(1), run(3));
    }

    /// Row sums four rows at a time are each row's plain sequential sum, bit for bit, for
    /// any number of rows (full groups of four and a remainder).
    #[test]
    fn ordered_row_sums_are_the_sequential_sums() {
        let mut rng = Rng(11);
        for (rows, n) in [(0, 5), (1, 7), (3, 1), (4, 9), (9, 33), (13, 100)] {
            let y: Vec<f32> = rng.vec(rows * n).iter().map(|v| v * 1e3).collect();
            let mut got = vec![f32::NAN; rows];
            ordered_row_sums(&y, n, &mut got);
            for (r, g) in got.iter().enumerate() {
                let mut want = 0f32;
                for v in &y[r * n..(r + 1) * n] {
                    want += v;
                }
                assert_eq!(g.to_bits(), want.to_bits(), "{rows} x {n}, row {r}");
            }
        }
    }

    #[test]
    fn column_sums_are_the_sequential_row_sums_on_any_thread_count() {
        let mut rng = Rng(6);
        let (rows, n) = (301, 600);
        let y = rng.vec(rows * n);
        let mut want = vec![0f32; n];
        for r in 0..rows {
            for j in 0..n {
                want[j] += y[r * n + j];
            }
        }
        for threads in [1, 2, 3] {
            let got = on_threads(threads, || col_sums(&y, n));
            assert!(got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        assert!(col_sums(&[], 0).is_empty());
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

    /// The column-blocked gathers give exactly the per-entry sums (entry order per output
    /// element), for widths below, at and across the block size, on 1 to 3 threads.
    #[test]
    fn column_blocked_gathers_are_the_per_entry_sums_bit_for_bit() {
        let mut rng = Rng(3);
        let (n_rows, n_cols) = (97, 41);
        let mut offsets = vec![0usize];
        let (mut cols, mut values) = (Vec::new(), Vec::new());
        for r in 0..n_rows {
            // Some empty rows; columns in increasing order, like the models' batches.
            for c in 0..n_cols {
                if r % 7 != 3 && rng.next().is_multiple_of(4) {
                    cols.push(c as u32);
                    values.push(rng.f32());
                }
            }
            offsets.push(cols.len());
        }
        let x = Csr {
            n_rows,
            offsets,
            cols,
            values,
        };
        for out in [1, 5, 64, 130, 600] {
            let w = rng.vec(n_cols * out);
            let bias = rng.vec(out);
            let g = rng.vec(n_rows * out);
            let mut want_y = vec![0f32; n_rows * out];
            for (r, row) in want_y.chunks_mut(out).enumerate() {
                row.copy_from_slice(&bias);
                for e in x.offsets[r]..x.offsets[r + 1] {
                    axpy(row, x.values[e], &w[x.cols[e] as usize * out..][..out]);
                }
            }
            let mut want_dw = vec![0f32; n_cols * out];
            for r in 0..n_rows {
                for e in x.offsets[r]..x.offsets[r + 1] {
                    let c = x.cols[e] as usize;
                    axpy(
                        &mut want_dw[c * out..][..out],
                        x.values[e],
                        &g[r * out..][..out],
                    );
                }
            }
            for threads in 1..=3 {
                let (y, dw) = crate::on_threads(threads, || {
                    (x.times_dense(&w, &bias), x.transpose_times(&g, out, n_cols))
                });
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&y),
                    bits(&want_y),
                    "times_dense, out {out}, {threads} threads"
                );
                assert_eq!(
                    bits(&dw),
                    bits(&want_dw),
                    "transpose_times, out {out}, {threads} threads"
                );
            }
        }
        // Generic path too (the one non-x86 machines run).
        let w = rng.vec(n_cols * 70);
        let ents = x.offsets[5]..x.offsets[6];
        let (cols, vals) = (&x.cols[ents.clone()], &x.values[ents]);
        let (mut a, mut b) = ([0f32; COL_BLOCK], [0f32; COL_BLOCK]);
        let init = [0.5; COL_BLOCK];
        gather_block(Isa::detect(), &mut a, &init, cols, vals, &w[3..], 70);
        gather_block(Isa::Generic, &mut b, &init, cols, vals, &w[3..], 70);
        assert_eq!(a, b);
    }

    /// Deterministic pseudo-random numbers in `[-1, 1)` (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }

        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f32()).collect()
        }
    }

    /// A random facet-grouped batch (some users empty, about 30% of the (entry, facet) values
    /// dropped to 0, no entry dropped from every facet) and the same batch as `K * B` per-facet
    /// CSR rows without the dropped values, with each CSR entry's `(entry, facet)`.
    fn random_facet_batch(
        rng: &mut Rng,
        b: usize,
        k: usize,
        n_cols: usize,
    ) -> (FacetCsr, Csr, Vec<(usize, usize)>) {
        let mut x = FacetCsr {
            n_users: b,
            n_facets: k,
            offsets: vec![0],
            ..FacetCsr::default()
        };
        for u in 0..b {
            let n = if u % 5 == 3 {
                0
            } else {
                (rng.next() % 40) as usize
            };
            let mut items: Vec<u32> = (0..n)
                .map(|_| (rng.next() % n_cols as u64) as u32)
                .collect();
            items.sort_unstable();
            items.dedup();
            for i in items {
                x.cols.push(i);
                let drop_all = rng.next() % 3;
                for f in 0..k {
                    let keep = rng.next() % 10 >= 3 || (drop_all == 0 && f == 0);
                    x.values.push(if keep { rng.f32() } else { 0.0 });
                }
            }
            x.offsets.push(x.cols.len());
        }
        let mut csr = Csr {
            n_rows: k * b,
            offsets: vec![0],
            ..Csr::default()
        };
        let mut which = Vec::new();
        for f in 0..k {
            for u in 0..b {
                for e in x.offsets[u]..x.offsets[u + 1] {
                    let v = x.values[e * k + f];
                    if v != 0.0 {
                        csr.cols.push(x.cols[e]);
                        csr.values.push(v);
                        which.push((e, f));
                    }
                }
                csr.offsets.push(csr.cols.len());
            }
        }
        (x, csr, which)
    }

    /// `got` within 1e-5 of `want`, relative to `scale` (the same sums over absolute values).
    fn assert_close(got: &[f32], want: &[f32], scale: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (j, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * s.max(1e-30),
                "{what}[{j}]: {g} vs {w} (scale {s})"
            );
        }
    }

    #[test]
    fn facet_groups_cover_the_facets() {
        assert_eq!(facet_groups(10, 8).collect::<Vec<_>>(), [(0, 5), (5, 5)]);
        assert_eq!(
            facet_groups(10, 4).collect::<Vec<_>>(),
            [(0, 4), (4, 3), (7, 3)]
        );
        assert_eq!(facet_groups(3, 8).collect::<Vec<_>>(), [(0, 3)]);
        assert_eq!(facet_groups(0, 8).count(), 0);
        for k in 1..30 {
            for max in 1..=8 {
                let g: Vec<_> = facet_groups(k, max).collect();
                assert!(g.iter().all(|&(_, s)| (1..=max).contains(&s)));
                assert_eq!(g.iter().map(|&(_, s)| s).sum::<usize>(), k);
                assert!(g.windows(2).all(|p| p[0].0 + p[0].1 == p[1].0));
            }
        }
    }

    /// The facet-grouped kernels compute what the per-entry kernels compute on the `K * B`
    /// per-facet rows (dropped values absent there), for row widths below, at and off the
    /// register block, and facet counts that split into uneven groups.
    #[test]
    fn facet_kernels_match_per_entry_kernels() {
        let mut rng = Rng(11);
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        for (k, out) in [(1, 5), (3, 16), (10, 37), (10, 600), (7, 600), (13, 40)] {
            let (b, n_cols) = (23, 60);
            let (x, csr, which) = random_facet_batch(&mut rng, b, k, n_cols);
            let w = rng.vec(n_cols * out);
            let bias = rng.vec(out);
            let g = rng.vec(k * b * out);
            let mut xa = csr.clone();
            xa.values = abs(&xa.values);
            let (wa, ga) = (abs(&w), abs(&g));

            let y = x.times_dense(&w, &bias);
            let want = csr.times_dense(&w, &bias);
            assert_close(&y, &want, &xa.times_dense(&wa, &abs(&bias)), "times_dense");
            // A reused buffer's old contents (here NaN, longer than needed) are overwritten.
            let mut reused = vec![f32::NAN; y.len() + 3];
            x.times_dense_into(&w, &bias, &mut reused);
            assert_eq!(reused.len(), y.len());
            assert!(reused
                .iter()
                .zip(&y)
                .all(|(a, b)| a.to_bits() == b.to_bits()));

            let dw = x.transpose_times(&g, out, n_cols);
            let want = csr.transpose_times(&g, out, n_cols);
            assert_close(
                &dw,
                &want,
                &xa.transpose_times(&ga, out, n_cols),
                "transpose_times",
            );

            let dv = x.value_grads(&w, &g, out);
            assert_eq!(dv.len(), x.nnz() * k);
            let want = csr.value_grads(&w, &g, out);
            let scale = csr.value_grads(&wa, &ga, out);
            let got: Vec<f32> = which.iter().map(|&(e, f)| dv[e * k + f]).collect();
            assert_close(&got, &want, &scale, "value_grads");
        }
    }

    /// The facet-grouped kernels give the same bits on 1, 2 and 3 threads, and on every
    /// instruction set this CPU has.
    #[test]
    fn facet_kernels_are_thread_count_and_isa_independent() {
        let mut rng = Rng(12);
        let (b, k, out, n_cols) = (300, 10, 600, 200);
        let (x, _, _) = random_facet_batch(&mut rng, b, k, n_cols);
        let w = rng.vec(n_cols * out);
        let bias = rng.vec(out);
        let g = rng.vec(k * b * out);
        let run = |threads: usize| {
            crate::on_threads(threads, || {
                (
                    x.times_dense(&w, &bias),
                    x.transpose_times(&g, out, n_cols),
                    x.value_grads(&w, &g, out),
                )
            })
        };
        let bits = |r: (Vec<f32>, Vec<f32>, Vec<f32>)| {
            [r.0, r.1, r.2].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
        };
        let one = bits(run(1));
        assert!(one == bits(run(2)));
        assert!(one == bits(run(3)));

        // One user through each instruction set this CPU has, with its widest grouping and
        // with single facets.
        let isas = [Some(Isa::detect()), Some(Isa::Generic)];
        #[cfg(target_arch = "x86_64")]
        let isas = [
            isas[0],
            isas[1],
            (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
                .then_some(Isa::Avx2),
        ];
        let u = (0..b)
            .max_by_key(|&u| x.offsets[u + 1] - x.offsets[u])
            .unwrap();
        let ents = x.offsets[u]..x.offsets[u + 1];
        let cols = &x.cols[ents.clone()];
        let vals = &x.values[ents.start * k..ents.end * k];
        let grows: Vec<&[f32]> = (0..k).map(|f| &g[(f * b + u) * out..][..out]).collect();
        let mut results = Vec::new();
        for isa in isas.into_iter().flatten() {
            for max_group in [1, isa.max_group()] {
                let mut y = vec![0f32; k * out];
                let mut rows: Vec<&mut [f32]> = y.chunks_mut(out).collect();
                times_dense_user(isa, &mut rows, &w, &bias, cols, vals, max_group);
                let mut dv = vec![0f32; cols.len() * k];
                value_grads_user(isa, &mut dv, &w, &grows, cols);
                let mut dw = vec![0f32; n_cols * out];
                transpose_times_range(isa, &mut dw, 0, &x, &g, out);
                results.push((y, dv, dw));
            }
        }
        let first = bits(results[0].clone());
        for r in results {
            assert!(first == bits(r));
        }
    }
}
