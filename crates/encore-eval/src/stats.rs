//! Paired significance test between two runs over the same users (EVALUATION.md "Protocol":
//! a paired test of each model against a named baseline).

use crate::{EvalError, MetricReport};

/// Paired Student t-test of `a` against `b` (e.g. per-user NDCG@10 of a model and of the
/// baseline, in the same user order). Returns `(t, p)` with `t = mean(d) / (sd(d) / sqrt(n))`
/// over the differences `d = a - b` (sample standard deviation, n - 1 degrees of freedom) and
/// `p` the two-sided p-value `P(|T| >= |t|)` under Student's t with `n - 1` degrees of freedom,
/// computed as `I_{ν/(ν+t²)}(ν/2, 1/2)` (the regularised incomplete beta function; Abramowitz
/// and Stegun 26.7.1). This is what `scipy.stats.ttest_rel` returns.
///
/// Edge cases: fewer than 2 pairs gives `(NaN, NaN)`; identical differences (sd = 0) give
/// `(0, 1)` when the mean difference is 0 and `(±inf, 0)` otherwise; any NaN input gives NaN.
///
/// # Panics
/// If `a` and `b` differ in length (the values must be paired).
pub fn paired_t_test(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(
        a.len(),
        b.len(),
        "paired_t_test needs paired samples of equal length"
    );
    let n = a.len();
    if n < 2 {
        return (f64::NAN, f64::NAN);
    }
    let mean = a.iter().zip(b).map(|(x, y)| x - y).sum::<f64>() / n as f64;
    let ss: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = x - y - mean;
            d * d
        })
        .sum();
    if mean.is_nan() || ss.is_nan() {
        return (f64::NAN, f64::NAN);
    }
    let df = (n - 1) as f64;
    let sd = (ss / df).sqrt();
    if sd == 0.0 {
        return if mean == 0.0 {
            (0.0, 1.0)
        } else {
            (mean.signum() * f64::INFINITY, 0.0)
        };
    }
    let t = mean / (sd / (n as f64).sqrt());
    (t, student_t_two_sided(t, df))
}

/// [`paired_t_test`] of one metric between two evaluations of the same users, e.g. a model
/// against the baseline on the same split. Both reports need per-user values
/// ([`crate::EvalOptions::keep_per_user`]) over the same evaluated users.
pub fn paired_t_test_reports(
    a: &MetricReport,
    b: &MetricReport,
    metric: &str,
) -> Result<(f64, f64), EvalError> {
    let per_user = |r: &'_ MetricReport, which: &str| -> Result<(), EvalError> {
        if r.per_user.is_none() {
            return Err(EvalError::Shape(format!(
                "report {which} has no per-user values (evaluate with keep_per_user = true)"
            )));
        }
        Ok(())
    };
    per_user(a, "a")?;
    per_user(b, "b")?;
    let (pa, pb) = (a.per_user.as_ref().unwrap(), b.per_user.as_ref().unwrap());
    if pa.users != pb.users {
        return Err(EvalError::Shape(format!(
            "the reports evaluated different users ({} and {} users); a paired test needs the same",
            pa.users.len(),
            pb.users.len()
        )));
    }
    match (pa.get(metric), pb.get(metric)) {
        (Some(x), Some(y)) => Ok(paired_t_test(x, y)),
        _ => Err(EvalError::Shape(format!(
            "metric '{metric}' is missing from a report (available: {})",
            pa.values.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Two-sided tail probability `P(|T| >= |t|)` of Student's t with `df` degrees of freedom.
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    let x = df / (df + t * t);
    regularized_incomplete_beta(x, df / 2.0, 0.5).clamp(0.0, 1.0)
}

/// The regularised incomplete beta function `I_x(a, b)` for `a, b > 0`, `0 <= x <= 1`, by the
/// continued fraction of Numerical Recipes (3rd ed., §6.4, modified Lentz), using the symmetry
/// `I_x(a, b) = 1 - I_{1-x}(b, a)` where the fraction converges slowly.
pub fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x.is_nan() || a.is_nan() || b.is_nan() || a <= 0.0 || b <= 0.0 || !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    if x == 0.0 || x == 1.0 {
        return x;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// Continued fraction for the incomplete beta function (Numerical Recipes `betacf`).
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// `ln Γ(x)` for `x > 0` by the Lanczos approximation (g = 7, n = 9; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEF[0];
    for (i, &c) in COEF.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} != {b}");
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        close(ln_gamma(1.0), 0.0, 1e-14);
        close(ln_gamma(5.0), 24f64.ln(), 1e-13);
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-14);
        close(ln_gamma(10.5), 1_133_278.388_948_441_3f64.ln(), 1e-12);
    }

    #[test]
    fn incomplete_beta_closed_forms() {
        // I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1 - x)^b.
        close(regularized_incomplete_beta(0.3, 1.0, 1.0), 0.3, 1e-14);
        close(regularized_incomplete_beta(0.6, 3.0, 1.0), 0.216, 1e-14);
        close(
            regularized_incomplete_beta(0.2, 1.0, 4.0),
            1.0 - 0.8f64.powi(4),
            1e-14,
        );
        assert!(regularized_incomplete_beta(1.5, 1.0, 1.0).is_nan());
    }

    #[test]
    fn student_t_known_values() {
        // df = 1 is Cauchy: P(|T| >= 1) = 1/2.
        close(student_t_two_sided(1.0, 1.0), 0.5, 1e-13);
        // df = 2: P(|T| >= t) = 1 - t / sqrt(t² + 2).
        close(
            student_t_two_sided(1.5, 2.0),
            1.0 - 1.5 / (4.25f64).sqrt(),
            1e-13,
        );
        // Table quantiles: t_{0.975, 10} = 2.2281388519649385, t_{0.995, 5} = 4.032142983557536.
        close(
            student_t_two_sided(2.228_138_851_964_938_5, 10.0),
            0.05,
            1e-10,
        );
        close(student_t_two_sided(4.032_142_983_557_536, 5.0), 0.01, 1e-10);
        close(student_t_two_sided(0.0, 7.0), 1.0, 1e-14);
        // Large df approaches the normal: P(|Z| >= 1.959963984540054) = 0.05.
        close(student_t_two_sided(1.959_963_984_540_054, 1e7), 0.05, 1e-6);
    }

    #[test]
    fn paired_test_hand_computed() {
        // d = [1, 2, 3, 4] - [0, 0, 0, 0]: mean 2.5, sd = sqrt(5/3), t = 2.5 / (sd / 2).
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [0.0; 4];
        let (t, p) = paired_t_test(&a, &b);
        let t_expected = 2.5 / ((5.0f64 / 3.0).sqrt() / 2.0);
        close(t, t_expected, 1e-12);
        // df = 3 has a closed form: P(|T| >= t) = 1 - (2/π)(θ + x / (1 + x²)), x = t/√3,
        // θ = atan x; here 0.030466291662170963.
        let x = t_expected / 3f64.sqrt();
        let p_expected = 1.0 - 2.0 / std::f64::consts::PI * (x.atan() + x / (1.0 + x * x));
        close(p, p_expected, 1e-12);
        close(p, 0.030_466_291_662_170_963, 1e-12);
        let (t2, p2) = paired_t_test(&b, &a);
        close(t2, -t, 1e-15);
        close(p2, p, 1e-15);
    }

    #[test]
    fn paired_test_of_reports_checks_users_and_metric() {
        use crate::PerUserMetrics;
        let report = |users: Vec<u32>, v: Vec<f64>| MetricReport {
            n_evaluated: users.len(),
            n_skipped: 0,
            metrics: Default::default(),
            per_user: Some(PerUserMetrics {
                users,
                values: [("ndcg@10".to_owned(), v)].into_iter().collect(),
            }),
            seconds: 0.0,
        };
        let a = report(vec![0, 2, 5, 7], vec![1.0, 2.0, 3.0, 4.0]);
        let b = report(vec![0, 2, 5, 7], vec![0.0; 4]);
        let (t, p) = paired_t_test_reports(&a, &b, "ndcg@10").unwrap();
        assert_eq!((t, p), paired_t_test(&[1.0, 2.0, 3.0, 4.0], &[0.0; 4]));
        assert!(paired_t_test_reports(&a, &b, "mrr@10").is_err());
        let c = report(vec![0, 2, 5, 8], vec![0.0; 4]);
        assert!(paired_t_test_reports(&a, &c, "ndcg@10").is_err());
        let mut d = b.clone();
        d.per_user = None;
        assert!(paired_t_test_reports(&a, &d, "ndcg@10").is_err());
    }

    #[test]
    fn paired_test_edge_cases() {
        assert!(paired_t_test(&[1.0], &[0.0]).0.is_nan());
        assert_eq!(paired_t_test(&[1.0, 2.0], &[1.0, 2.0]), (0.0, 1.0));
        assert_eq!(
            paired_t_test(&[2.0, 3.0], &[1.0, 2.0]),
            (f64::INFINITY, 0.0)
        );
        assert!(paired_t_test(&[f64::NAN, 1.0], &[0.0, 0.0]).1.is_nan());
    }
}
