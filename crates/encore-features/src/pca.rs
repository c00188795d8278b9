//! Principal component analysis, exact or randomized (SPEC §3: "PCA each modality to 128
//! dimensions (configurable), fitted on the catalogue").
//!
//! # Which method
//!
//! [`PcaMethod::Auto`] (the default) is exact whenever `min(n, d) <= EXACT_MAX` (2048):
//! - `d <= n`: eigen-decomposition of the `d x d` covariance (f64, accumulated over row
//!   blocks) — every per-modality PCA of the pipeline (Onion's 512-d i-vectors, 768-d BERT, the
//!   256-d concatenation) takes this route, in about `n d²` flops;
//! - `n < d`: eigen-decomposition of the `n x n` Gram matrix, components `X_cᵀ u / √λ` — the
//!   route of the materialised tensor reference on a few thousand items.
//!
//! Otherwise (both sides wide, e.g. the 16,384-d tensor matrix of 57k tracks) it is the
//! randomized SVD of Halko, Martinsson and Tropp (2011, Algorithms 4.3/4.4 and 5.1): a Gaussian
//! test matrix with `k + oversample` columns (default 10), `power_iters` power iterations
//! (default 2) with QR re-orthonormalisation after every product, then the exact thin SVD of the
//! small projected matrix. Its error falls with the spectral gap `(σ_{k+p+1}/σ_k)^(2q+1)`; the
//! tests check it against the exact route on low-rank-plus-noise data.
//!
//! # Conventions
//!
//! Variances use the sample denominator `n − 1`, so `explained_variance[j]` equals the
//! variance of the `j`-th column of [`Pca::transform`] on the fitting data. Components are
//! unit rows, sorted by decreasing variance, and signed so that each one's largest-magnitude
//! entry is positive (singular vectors are defined only up to sign).

use std::ops::Range;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{FeatureError, Result};
use crate::linalg::{
    covariance_f64, fix_signs, gram_f64, left_project_f64, mul, mul_t, orthonormal_basis,
    sym_eigen_desc, thin_svd_left, CentredRows, Mat, Scalar,
};

/// Above this `min(n, d)` the automatic choice is the randomized SVD.
pub const EXACT_MAX: usize = 2048;

/// How to compute the decomposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcaMethod {
    /// Exact when `min(n, d) <= EXACT_MAX`, randomized otherwise.
    #[default]
    Auto,
    /// Covariance (`d <= n`) or Gram (`n < d`) eigen-decomposition.
    Exact,
    /// Randomized range finder with power iterations.
    Randomized,
}

/// Parameters of the randomized SVD (Halko et al. 2011).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomizedOptions {
    /// Extra test vectors beyond `k` (Halko et al. recommend 5-10).
    pub oversample: usize,
    /// Power iterations `(X_c X_cᵀ)^q X_c Ω`, each followed by re-orthonormalisation.
    pub power_iters: usize,
}

impl Default for RandomizedOptions {
    fn default() -> Self {
        RandomizedOptions {
            oversample: 10,
            power_iters: 2,
        }
    }
}

/// How [`Pca::fit_with`] computes the decomposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PcaOptions {
    /// Exact, randomized, or chosen by size.
    pub method: PcaMethod,
    /// Used when the method is randomized.
    pub randomized: RandomizedOptions,
}

/// The route a fitted PCA took (recorded in saved models and reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FitMethod {
    /// Eigen-decomposition of the `d x d` covariance.
    Covariance,
    /// Eigen-decomposition of the `n x n` Gram matrix.
    Gram,
    /// Randomized SVD.
    Randomized {
        /// Test vectors beyond `k`.
        oversample: usize,
        /// Power iterations.
        power_iters: usize,
    },
}

impl std::fmt::Display for FitMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitMethod::Covariance => write!(f, "exact (covariance)"),
            FitMethod::Gram => write!(f, "exact (Gram)"),
            FitMethod::Randomized {
                oversample,
                power_iters,
            } => write!(f, "randomized (p={oversample}, q={power_iters})"),
        }
    }
}

/// A fitted PCA: `y = components · (x − mean)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// Column means of the fitting data (`d`).
    pub mean: Vec<f32>,
    /// `k x d` row-major, unit rows, decreasing variance.
    pub components: Vec<f32>,
    /// Variance of the data along each component (`k`, denominator `n − 1`).
    pub explained_variance: Vec<f64>,
    /// Total variance of the data (trace of the covariance, denominator `n − 1`).
    pub total_variance: f64,
    /// Rows the PCA was fitted on.
    pub n_samples: usize,
    /// The route taken.
    pub method: FitMethod,
}

/// A dense row-major matrix centred by a given mean.
pub(crate) struct DenseRows<'a> {
    pub x: &'a [f32],
    pub n: usize,
    pub d: usize,
    pub mean: &'a [f32],
}

impl CentredRows for DenseRows<'_> {
    fn n_rows(&self) -> usize {
        self.n
    }

    fn n_cols(&self) -> usize {
        self.d
    }

    fn fill<T: Scalar>(&self, rows: Range<usize>, cols: Range<usize>, out: &mut [T]) {
        let w = cols.len();
        let mean = &self.mean[cols.clone()];
        for (o, r) in out.chunks_exact_mut(w).zip(rows) {
            let x = &self.x[r * self.d + cols.start..r * self.d + cols.end];
            for ((o, &x), &m) in o.iter_mut().zip(x).zip(mean) {
                *o = T::from_f64(x as f64 - m as f64);
            }
        }
    }
}

/// The first non-finite value of a row-major `n x d` matrix, as (row, column, value).
pub(crate) fn first_non_finite(x: &[f32], d: usize) -> Option<(usize, usize, f32)> {
    let i = x.iter().position(|v| !v.is_finite())?;
    Some((i / d.max(1), i % d.max(1), x[i]))
}

/// Column means in f64, rounded to f32.
pub(crate) fn column_means(x: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut acc = vec![0f64; d];
    for row in x.chunks_exact(d.max(1)).take(n) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    acc.iter().map(|&s| (s / n as f64) as f32).collect()
}

/// Check `k` against the data shape; the error names `dim` (the output dimension).
pub(crate) fn check_k(n: usize, d: usize, k: usize) -> Result<()> {
    if k == 0 || k > n.min(d) {
        return Err(FeatureError::parameter(
            "dim",
            format!(
                "{k} output dimensions requested; must be between 1 and min(rows, columns) = \
                 min({n}, {d}) = {}",
                n.min(d)
            ),
        ));
    }
    Ok(())
}

impl Pca {
    /// Fit `k` components to the row-major `n x d` matrix `x` with the default options
    /// ([`PcaMethod::Auto`]); `seed` drives the randomized route's test matrix.
    pub fn fit(x: &[f32], n: usize, d: usize, k: usize, seed: u64) -> Result<Pca> {
        Pca::fit_with(x, n, d, k, seed, &PcaOptions::default())
    }

    /// [`Pca::fit`] with an explicit method.
    pub fn fit_with(
        x: &[f32],
        n: usize,
        d: usize,
        k: usize,
        seed: u64,
        opts: &PcaOptions,
    ) -> Result<Pca> {
        if x.len() != n * d {
            return Err(FeatureError::parameter(
                "x",
                format!(
                    "{} values for {n} rows x {d} columns (need {})",
                    x.len(),
                    n * d
                ),
            ));
        }
        if n < 2 {
            return Err(FeatureError::parameter(
                "n",
                format!("PCA needs at least 2 rows to estimate a variance, got {n}"),
            ));
        }
        check_k(n, d, k)?;
        if let Some((r, c, v)) = first_non_finite(x, d) {
            return Err(FeatureError::parameter(
                "x",
                format!("row {r}, column {c}: value {v} is not finite"),
            ));
        }
        let mean = column_means(x, n, d);
        let op = DenseRows {
            x,
            n,
            d,
            mean: &mean,
        };
        let (method, components, explained_variance, total_variance) =
            fit_centred(&op, k, opts, seed, &|| {})?;
        Ok(Pca {
            mean,
            components,
            explained_variance,
            total_variance,
            n_samples: n,
            method,
        })
    }

    /// Input dimension `d`.
    pub fn input_dim(&self) -> usize {
        self.mean.len()
    }

    /// Number of components `k`.
    pub fn k(&self) -> usize {
        self.explained_variance.len()
    }

    /// Fraction of the total variance the components explain.
    pub fn explained_ratio(&self) -> f64 {
        if self.total_variance > 0.0 {
            self.explained_variance.iter().sum::<f64>() / self.total_variance
        } else {
            0.0
        }
    }

    /// Fraction of the total variance the first `j` components explain.
    pub fn explained_ratio_first(&self, j: usize) -> f64 {
        if self.total_variance > 0.0 {
            self.explained_variance.iter().take(j).sum::<f64>() / self.total_variance
        } else {
            0.0
        }
    }

    /// Project the row-major `n x d` matrix `x`: `(x − mean) · componentsᵀ`, `n x k`.
    pub fn transform(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let d = self.input_dim();
        if x.len() != n * d {
            return Err(FeatureError::parameter(
                "x",
                format!(
                    "{} values for {n} rows of the PCA's {d} input columns (need {})",
                    x.len(),
                    n * d
                ),
            ));
        }
        let op = DenseRows {
            x,
            n,
            d,
            mean: &self.mean,
        };
        Ok(self.project(&op))
    }

    /// Project the rows of a centred operator (its centring must use `self.mean`).
    pub(crate) fn project<O: CentredRows>(&self, op: &O) -> Vec<f32> {
        mul(
            op,
            Mat::new(&self.components, self.k(), self.input_dim()).t(),
        )
    }
}

/// Fit `k` components of a centred operator: (method, components `k x d` f32, explained
/// variances, total variance). `tick` is called after each pass over the data.
pub(crate) fn fit_centred<O: CentredRows>(
    op: &O,
    k: usize,
    opts: &PcaOptions,
    seed: u64,
    tick: &(dyn Fn() + Sync),
) -> Result<(FitMethod, Vec<f32>, Vec<f64>, f64)> {
    let (n, d) = (op.n_rows(), op.n_cols());
    check_k(n, d, k)?;
    if n < 2 {
        return Err(FeatureError::parameter(
            "n",
            format!("PCA needs at least 2 rows to estimate a variance, got {n}"),
        ));
    }
    let denom = (n - 1) as f64;
    let exact = match opts.method {
        PcaMethod::Exact => true,
        PcaMethod::Randomized => false,
        PcaMethod::Auto => n.min(d) <= EXACT_MAX,
    };
    let total_variance = op.centred_sum_sq() / denom;
    let (method, mut comps, sq) = if exact {
        if d <= n {
            let c = covariance_f64(op);
            tick();
            let (vals, vecs) = sym_eigen_desc(&c, d, "PCA covariance eigen-decomposition")?;
            let comps = vecs[..k * d].to_vec();
            (FitMethod::Covariance, comps, vals[..k].to_vec())
        } else {
            let g = gram_f64(op);
            tick();
            let (vals, vecs) = sym_eigen_desc(&g, n, "PCA Gram eigen-decomposition")?;
            // Components v_j = X_cᵀ u_j / √λ_j for the numerically nonzero λ_j; the rest
            // (k can reach the rank n − 1 of centred data, or beyond) are completed below.
            let tol = vals[0].max(0.0) * 1e-10;
            let mut u = vec![0f64; n * k];
            for j in 0..k {
                if vals[j] > tol && vals[j] > 0.0 {
                    let s = vals[j].sqrt();
                    for i in 0..n {
                        u[i * k + j] = vecs[j * n + i] / s;
                    }
                }
            }
            let mut comps = left_project_f64(op, &u, k);
            tick();
            complete_orthonormal(&mut comps, k, d, |j| vals[j] > tol && vals[j] > 0.0);
            (FitMethod::Gram, comps, vals[..k].to_vec())
        }
    } else {
        let RandomizedOptions {
            oversample,
            power_iters,
        } = opts.randomized;
        let (comps, sv) = randomized_svd(op, k, oversample, power_iters, seed, tick)?;
        let sq = sv.iter().map(|s| s * s).collect();
        (
            FitMethod::Randomized {
                oversample,
                power_iters,
            },
            comps,
            sq,
        )
    };
    fix_signs(&mut comps, d);
    let explained = sq.iter().map(|&l| l.max(0.0) / denom).collect();
    let comps = comps.iter().map(|&v| v as f32).collect();
    Ok((method, comps, explained, total_variance))
}

/// Replace the rows `j` of `comps` (`k x d`, row-major) for which `keep(j)` is false by unit
/// vectors orthogonal to all other rows (Gram-Schmidt over the standard basis, twice).
fn complete_orthonormal(comps: &mut [f64], k: usize, d: usize, keep: impl Fn(usize) -> bool) {
    let mut next_basis = 0usize;
    for j in 0..k {
        if keep(j) {
            continue;
        }
        loop {
            let mut v = vec![0f64; d];
            v[next_basis % d] = 1.0;
            next_basis += 1;
            for _ in 0..2 {
                for r in 0..k {
                    if r == j || (!keep(r) && r > j) {
                        continue;
                    }
                    let row = &comps[r * d..(r + 1) * d];
                    let c: f64 = row.iter().zip(&v).map(|(a, b)| a * b).sum();
                    for (x, a) in v.iter_mut().zip(row) {
                        *x -= c * a;
                    }
                }
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.5 || next_basis > 2 * d {
                for (dst, x) in comps[j * d..(j + 1) * d].iter_mut().zip(&v) {
                    *dst = x / norm.max(f64::MIN_POSITIVE);
                }
                break;
            }
        }
    }
}

/// Randomized SVD of a centred operator (Halko et al. 2011): the top `k` right singular
/// vectors (`k x d` row-major, f64) and singular values.
///
/// `Y = X_c Ω`, `Q = qr(Y)`; `power_iters` times: `Z = qr(X_cᵀ Q)`, `Q = qr(X_c Z)`; finally
/// `Bᵀ = X_cᵀ Q` (`d x s`) and its thin SVD `Bᵀ = U Σ Wᵀ`, so `X_c ≈ Q W Σ Uᵀ` and the columns
/// of `U` are the approximate principal axes. `2 · power_iters + 2` passes over the data.
pub(crate) fn randomized_svd<O: CentredRows>(
    op: &O,
    k: usize,
    oversample: usize,
    power_iters: usize,
    seed: u64,
    tick: &(dyn Fn() + Sync),
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, d) = (op.n_rows(), op.n_cols());
    let s = (k + oversample).min(n.min(d));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let omega: Vec<f32> = (0..d * s)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let y = mul(op, Mat::new(&omega, d, s));
    tick();
    let mut q = orthonormal_basis(n, s, |i, j| y[i * s + j] as f64);
    drop(y);
    for _ in 0..power_iters {
        let z = mul_t(op, &q, s);
        tick();
        let zq = orthonormal_basis(d, s, |i, j| z[i * s + j]);
        let y = mul(op, Mat::new(&zq, d, s));
        tick();
        q = orthonormal_basis(n, s, |i, j| y[i * s + j] as f64);
    }
    let bt = mul_t(op, &q, s);
    tick();
    let (u, sv) = thin_svd_left(&bt, d, s, "randomized PCA: SVD of the projected matrix")?;
    let mut comps = vec![0f64; k * d];
    for j in 0..k {
        comps[j * d..(j + 1) * d].copy_from_slice(&u[j * d..(j + 1) * d]);
    }
    Ok((comps, sv[..k].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Points on the line through (1, 2, 3) with direction (1, 2, 2)/3, at offsets
    /// -2, -1, 0, 1, 2: the one component is ±(1, 2, 2)/3 (signed so 2/3 is positive, the
    /// first largest entry), variance (4+1+0+1+4)/4 = 2.5, all of the total.
    #[test]
    fn line_hand_case() {
        let dir = [1.0f32 / 3.0, 2.0 / 3.0, 2.0 / 3.0];
        let mut x = Vec::new();
        for t in [-2.0f32, -1.0, 0.0, 1.0, 2.0] {
            x.extend([1.0 + t * dir[0], 2.0 + t * dir[1], 3.0 + t * dir[2]]);
        }
        for method in [PcaMethod::Exact, PcaMethod::Randomized] {
            let opts = PcaOptions {
                method,
                ..Default::default()
            };
            let p = Pca::fit_with(&x, 5, 3, 1, 7, &opts).unwrap();
            for (a, b) in p.components.iter().zip(dir) {
                assert!((a - b).abs() < 1e-5, "{method:?}: {:?}", p.components);
            }
            assert!((p.explained_variance[0] - 2.5).abs() < 1e-5);
            assert!((p.total_variance - 2.5).abs() < 1e-5);
            assert!((p.explained_ratio() - 1.0).abs() < 1e-6);
            assert_eq!(p.mean, vec![1.0, 2.0, 3.0]);
            let y = p.transform(&x, 5).unwrap();
            for (got, t) in y.iter().zip([-2.0f32, -1.0, 0.0, 1.0, 2.0]) {
                assert!((got - t).abs() < 1e-5, "{y:?}");
            }
        }
    }

    /// A plane: x = (a, b, 0) with a ∈ {±3}, b ∈ {±1} (4 points). Covariance diag(12, 4/3, 0)
    /// ... with n − 1 = 3: var(a) = 4·9/3 = 12, var(b) = 4/3. Components e1, e2.
    #[test]
    fn plane_hand_case() {
        let x = [
            3.0, 1.0, 0.0, 3.0, -1.0, 0.0, -3.0, 1.0, 0.0, -3.0, -1.0, 0.0f32,
        ];
        let p = Pca::fit(&x, 4, 3, 2, 1).unwrap();
        assert_eq!(p.method, FitMethod::Covariance);
        assert!((p.explained_variance[0] - 12.0).abs() < 1e-9);
        assert!((p.explained_variance[1] - 4.0 / 3.0).abs() < 1e-9);
        assert!((p.components[0] - 1.0).abs() < 1e-6 && (p.components[4] - 1.0).abs() < 1e-6);
        assert!((p.total_variance - (12.0 + 4.0 / 3.0)).abs() < 1e-9);
        // The Gram route (n < d) agrees: transpose the shape by padding columns with zeros.
        let mut wide = Vec::new();
        for r in x.chunks(3) {
            wide.extend_from_slice(r);
            wide.extend([0.0f32; 5]);
        }
        let g = Pca::fit(&wide, 4, 8, 3, 1).unwrap();
        assert_eq!(g.method, FitMethod::Gram);
        assert!((g.explained_variance[0] - 12.0).abs() < 1e-9);
        assert!((g.explained_variance[1] - 4.0 / 3.0).abs() < 1e-9);
        assert!(g.explained_variance[2].abs() < 1e-9);
        // The completed third component is a unit vector orthogonal to the first two.
        let c = &g.components;
        for a in 0..3 {
            for b in 0..3 {
                let dot: f32 = (0..8).map(|j| c[a * 8 + j] * c[b * 8 + j]).sum();
                assert!((dot - (a == b) as u8 as f32).abs() < 1e-5, "{a} {b} {dot}");
            }
        }
    }

    /// Low rank (8) plus small noise, 600 x 300.
    fn low_rank(n: usize, d: usize, r: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let basis: Vec<f32> = (0..r * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let mut x = vec![0f32; n * d];
        for i in 0..n {
            let z: Vec<f32> = (0..r)
                .map(|j| {
                    let v: f32 = StandardNormal.sample(&mut rng);
                    v * (r - j) as f32
                })
                .collect();
            for c in 0..d {
                let mut v = 5.0 + 0.05 * rng.random::<f32>();
                for j in 0..r {
                    v += z[j] * basis[j * d + c];
                }
                x[i * d + c] = v;
            }
        }
        x
    }

    #[test]
    fn randomized_agrees_with_exact_on_low_rank_plus_noise() {
        let (n, d, k) = (600, 300, 8);
        let x = low_rank(n, d, k, 3);
        let exact = Pca::fit_with(
            &x,
            n,
            d,
            k,
            0,
            &PcaOptions {
                method: PcaMethod::Exact,
                ..Default::default()
            },
        )
        .unwrap();
        let rand = Pca::fit_with(
            &x,
            n,
            d,
            k,
            0,
            &PcaOptions {
                method: PcaMethod::Randomized,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(rand.method, FitMethod::Randomized { .. }));
        for j in 0..k {
            let (a, b) = (exact.explained_variance[j], rand.explained_variance[j]);
            assert!((a - b).abs() < 1e-6 * a, "variance {j}: {a} vs {b}");
            let dot: f32 = (0..d)
                .map(|c| exact.components[j * d + c] * rand.components[j * d + c])
                .sum();
            assert!(dot > 1.0 - 1e-5, "component {j}: cos {dot}");
        }
        assert!((exact.total_variance - rand.total_variance).abs() < 1e-9 * exact.total_variance);
    }

    #[test]
    fn transform_has_zero_mean_and_explained_variances() {
        let (n, d, k) = (400, 20, 5);
        let x = low_rank(n, d, 6, 9);
        let p = Pca::fit(&x, n, d, k, 0).unwrap();
        let y = p.transform(&x, n).unwrap();
        for j in 0..k {
            let col: Vec<f64> = (0..n).map(|i| y[i * k + j] as f64).collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
            assert!(mean.abs() < 1e-4 * var.sqrt(), "column {j}: mean {mean}");
            let want = p.explained_variance[j];
            assert!(
                (var - want).abs() < 1e-4 * want,
                "column {j}: {var} vs {want}"
            );
        }
        // Decreasing variances, ratio in (0, 1].
        assert!(p.explained_variance.windows(2).all(|w| w[0] >= w[1]));
        assert!(p.explained_ratio() > 0.9 && p.explained_ratio() <= 1.0 + 1e-9);
    }

    /// Constant data has no variance: every route returns orthonormal components, zero
    /// variances and a zero ratio instead of failing or dividing by zero.
    #[test]
    fn constant_data_is_handled_on_every_route() {
        for (n, d, method) in [
            (6, 3, PcaMethod::Exact),
            (3, 6, PcaMethod::Exact),
            (6, 4, PcaMethod::Randomized),
        ] {
            let x = vec![2.5f32; n * d];
            let opts = PcaOptions {
                method,
                ..Default::default()
            };
            let p = Pca::fit_with(&x, n, d, 2, 0, &opts).unwrap();
            assert_eq!(p.total_variance, 0.0);
            assert_eq!(p.explained_ratio(), 0.0);
            assert!(p.explained_variance.iter().all(|&v| v == 0.0), "{method:?}");
            for a in 0..2 {
                for b in 0..2 {
                    let dot: f32 = (0..d)
                        .map(|j| p.components[a * d + j] * p.components[b * d + j])
                        .sum();
                    assert!(
                        (dot - (a == b) as u8 as f32).abs() < 1e-5,
                        "{method:?} {n}x{d}"
                    );
                }
            }
            assert!(p.transform(&x, n).unwrap().iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn errors_name_the_parameter() {
        let x = vec![1.0f32; 12];
        let e = Pca::fit(&x, 4, 3, 4, 0).unwrap_err();
        assert!(
            matches!(&e, FeatureError::Parameter { name, .. } if name == "dim"),
            "{e}"
        );
        assert!(e.to_string().contains("min(4, 3)"), "{e}");
        let e = Pca::fit(&x, 4, 3, 0, 0).unwrap_err();
        assert!(e.to_string().contains("`dim`"), "{e}");
        let e = Pca::fit(&x, 5, 3, 1, 0).unwrap_err();
        assert!(e.to_string().contains("`x`"), "{e}");
        let e = Pca::fit(&x[..3], 1, 3, 1, 0).unwrap_err();
        assert!(e.to_string().contains("`n`"), "{e}");
        let mut bad = x.clone();
        bad[7] = f32::NAN;
        let e = Pca::fit(&bad, 4, 3, 1, 0).unwrap_err();
        assert!(e.to_string().contains("row 2, column 1"), "{e}");
        let p = Pca::fit(&low_rank(10, 3, 2, 1), 10, 3, 2, 0).unwrap();
        assert!(p.transform(&x[..5], 2).is_err());
    }

    #[test]
    fn thread_count_does_not_change_results() {
        // Covariance route, Gram route (n < d) and randomized route, each large enough that
        // the blocked products and gemm's own split go parallel.
        for (n, d, method) in [
            (1500, 700, PcaMethod::Exact),
            (300, 900, PcaMethod::Exact),
            (1500, 700, PcaMethod::Randomized),
        ] {
            let x = low_rank(n, d, 10, 5);
            let run = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| {
                        let opts = PcaOptions {
                            method,
                            ..Default::default()
                        };
                        let p = Pca::fit_with(&x, n, d, 6, 11, &opts).unwrap();
                        let y = p.transform(&x, n).unwrap();
                        (p, y)
                    })
            };
            let (p1, y1) = run(1);
            let (p3, y3) = run(3);
            assert_eq!(p1, p3, "{n}x{d} {method:?}");
            assert_eq!(y1, y3, "{n}x{d} {method:?}");
        }
    }
}
