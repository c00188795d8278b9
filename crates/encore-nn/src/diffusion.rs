//! The Gaussian diffusion process shared by the latent-diffusion VAEs and DiffRec (MODELS.md
//! "Latent diffusion"): the noise schedule, the forward (noising) process and the posterior
//! of the reverse process, and the sinusoidal time embedding.
//!
//! Steps are indexed `0..T` as in DiffRec's code: step `t` here is Ho et al.'s `t + 1`, so
//! `ᾱ_0 = 1 − β_0` and the posterior at step `t` conditions on `ᾱ_{t−1}` with `ᾱ_{−1} = 1`.
//! The schedule is computed in `f64` (the products of a thousand factors stay exact to the
//! last `f32` bit) and applied to `f32` latents.

/// A schedule's settings were out of range; `key` names the configuration key.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.key, self.message)
    }
}

impl std::error::Error for ScheduleError {}

/// A variance schedule `β_t = s · linspace(β_min, β_max, T)` and what the forward and reverse
/// processes need of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    betas: Vec<f64>,
    /// `ᾱ_t = Π_{s ≤ t} (1 − β_s)`.
    alpha_bar: Vec<f64>,
}

impl Schedule {
    /// The schedule of `steps` steps with `β_t = scale · linspace(beta_min, beta_max, steps)`.
    /// Errors name the key: `steps` must be at least 1 (at most 100,000), every `β_t` in
    /// `(0, 1)`, and `ᾱ_{T−1}` must stay a normal `f32` (a chain whose signal underflows to 0
    /// cannot be inverted).
    pub fn linear(
        steps: usize,
        scale: f64,
        beta_min: f64,
        beta_max: f64,
    ) -> Result<Self, ScheduleError> {
        let err = |key, message: String| Err(ScheduleError { key, message });
        if steps == 0 || steps > 100_000 {
            return err(
                "steps",
                format!("must be between 1 and 100000, got {steps}"),
            );
        }
        if !(scale.is_finite() && scale > 0.0) {
            return err(
                "noise_scale",
                format!("must be a positive number, got {scale}"),
            );
        }
        for (key, b) in [("beta_min", beta_min), ("beta_max", beta_max)] {
            let scaled = scale * b;
            if !(scaled > 0.0 && scaled < 1.0) {
                return err(
                    key,
                    format!("gives β = {scaled} (noise_scale {scale} x {b}); β must be in (0, 1)"),
                );
            }
        }
        if beta_max < beta_min {
            return err(
                "beta_max",
                format!("is {beta_max}, below beta_min {beta_min}"),
            );
        }
        let betas: Vec<f64> = (0..steps)
            .map(|i| {
                let f = if steps == 1 {
                    0.0
                } else {
                    i as f64 / (steps - 1) as f64
                };
                scale * (beta_min + f * (beta_max - beta_min))
            })
            .collect();
        let mut alpha_bar = Vec::with_capacity(steps);
        let mut prod = 1.0f64;
        for b in &betas {
            prod *= 1.0 - b;
            alpha_bar.push(prod);
        }
        let last = alpha_bar[steps - 1];
        if !(last >= f32::MIN_POSITIVE as f64) {
            return err(
                "steps",
                format!(
                    "{steps} steps of this schedule leave ᾱ_T = {last:e}, which underflows \
                     single precision: use fewer steps or smaller β"
                ),
            );
        }
        Ok(Schedule { betas, alpha_bar })
    }

    /// The paper's schedule: `T = 1000`, `β` from 1e-4 to 0.02 (Ho et al.'s).
    pub fn paper() -> Self {
        Self::linear(1000, 1.0, 1e-4, 0.02).expect("the paper's schedule is valid")
    }

    /// DiffRec's tuned ML-1M schedule: `T = 40`, `s = 0.005`, `β` from 0.005 to 0.01.
    pub fn diffrec() -> Self {
        Self::linear(40, 0.005, 0.005, 0.01).expect("DiffRec's schedule is valid")
    }

    /// Number of steps `T`.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    /// `ᾱ_t`; `ᾱ_{−1} = 1` is `alpha_bar_prev(0)`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alpha_bar[t]
    }

    /// `ᾱ_{t−1}` (1 at `t = 0`).
    pub fn alpha_bar_prev(&self, t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            self.alpha_bar[t - 1]
        }
    }

    /// `z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε`, element-wise into `out`.
    pub fn q_sample(&self, z0: &[f32], eps: &[f32], t: usize, out: &mut [f32]) {
        assert!(z0.len() == eps.len() && z0.len() == out.len(), "sizes");
        let (a, s) = (
            self.alpha_bar[t].sqrt() as f32,
            (1.0 - self.alpha_bar[t]).sqrt() as f32,
        );
        for ((o, z), e) in out.iter_mut().zip(z0).zip(eps) {
            *o = a * z + s * e;
        }
    }

    /// `ẑ_0 = (z_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t`: the clean latent an `ε` prediction implies.
    pub fn x0_from_eps(&self, zt: &[f32], eps: &[f32], t: usize, out: &mut [f32]) {
        assert!(zt.len() == eps.len() && zt.len() == out.len(), "sizes");
        let (a, s) = (
            (1.0 / self.alpha_bar[t].sqrt()) as f32,
            ((1.0 - self.alpha_bar[t]) / self.alpha_bar[t]).sqrt() as f32,
        );
        for ((o, z), e) in out.iter_mut().zip(zt).zip(eps) {
            *o = a * z - s * e;
        }
    }

    /// The coefficients of the posterior mean `μ̃_t = c₀ z_0 + c_t z_t` of `q(z_{t−1} | z_t,
    /// z_0)`: `c₀ = β_t √ᾱ_{t−1} / (1 − ᾱ_t)`, `c_t = (1 − ᾱ_{t−1}) √(1 − β_t) / (1 − ᾱ_t)`.
    pub fn posterior_mean_coefs(&self, t: usize) -> (f64, f64) {
        let (b, ab, prev) = (self.betas[t], self.alpha_bar[t], self.alpha_bar_prev(t));
        (
            b * prev.sqrt() / (1.0 - ab),
            (1.0 - prev) * (1.0 - b).sqrt() / (1.0 - ab),
        )
    }

    /// The posterior variance `β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)` (0 at `t = 0`).
    pub fn posterior_variance(&self, t: usize) -> f64 {
        self.betas[t] * (1.0 - self.alpha_bar_prev(t)) / (1.0 - self.alpha_bar[t])
    }

    /// `μ̃_t` for a batch: `out = c₀ ẑ_0 + c_t z_t`.
    pub fn posterior_mean(&self, z0: &[f32], zt: &[f32], t: usize, out: &mut [f32]) {
        assert!(z0.len() == zt.len() && z0.len() == out.len(), "sizes");
        let (c0, ct) = self.posterior_mean_coefs(t);
        let (c0, ct) = (c0 as f32, ct as f32);
        for ((o, a), b) in out.iter_mut().zip(z0).zip(zt) {
            *o = c0 * a + ct * b;
        }
    }
}

/// The sinusoidal embedding of step `t` (`dim` values), as DiffRec's code writes it:
/// `[cos(t f_0) … cos(t f_{h−1}) ; sin(t f_0) … sin(t f_{h−1})]` with `h = dim / 2` and
/// `f_j = 10000^(−j / h)`, a trailing 0 when `dim` is odd.
pub fn time_embedding(t: f64, dim: usize, out: &mut [f32]) {
    assert_eq!(out.len(), dim, "embedding size");
    let half = dim / 2;
    for j in 0..half {
        let f = (-(10000f64.ln()) * j as f64 / half as f64).exp();
        out[j] = (t * f).cos() as f32;
        out[half + j] = (t * f).sin() as f32;
    }
    if dim % 2 == 1 {
        out[dim - 1] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_bar_is_the_product_of_one_minus_beta() {
        for s in [Schedule::paper(), Schedule::diffrec()] {
            let mut prod = 1.0;
            for t in 0..s.steps() {
                prod *= 1.0 - s.beta(t);
                assert!((s.alpha_bar(t) - prod).abs() <= 1e-15 * prod);
            }
        }
        let p = Schedule::paper();
        assert_eq!(p.steps(), 1000);
        assert!((p.beta(0) - 1e-4).abs() < 1e-18 && (p.beta(999) - 0.02).abs() < 1e-15);
        // Ho et al.'s ᾱ_T for this schedule is about 4.0e-5.
        assert!(
            (p.alpha_bar(999) - 4.04e-5).abs() < 0.05e-5,
            "{}",
            p.alpha_bar(999)
        );
        let d = Schedule::diffrec();
        assert_eq!(d.steps(), 40);
        assert!((d.beta(0) - 2.5e-5).abs() < 1e-18 && (d.beta(39) - 5e-5).abs() < 1e-18);
    }

    /// The posterior `q(z_{t−1} | z_t, z_0)` against its derivation as the product of the
    /// two Gaussians `q(z_t | z_{t−1}) = N(√α_t z_{t−1}, β_t)` and `q(z_{t−1} | z_0) =
    /// N(√ᾱ_{t−1} z_0, 1 − ᾱ_{t−1})`: precision `α_t / β_t + 1 / (1 − ᾱ_{t−1})`, mean
    /// `(√α_t z_t / β_t + √ᾱ_{t−1} z_0 / (1 − ᾱ_{t−1})) / precision`.
    #[test]
    fn posterior_matches_the_gaussian_product() {
        let s = Schedule::paper();
        let (z0, zt) = (0.7f64, -1.3f64);
        for t in [1, 2, 10, 500, 999] {
            let (b, prev) = (s.beta(t), s.alpha_bar_prev(t));
            let alpha = 1.0 - b;
            let precision = alpha / b + 1.0 / (1.0 - prev);
            let mean = (alpha.sqrt() * zt / b + prev.sqrt() * z0 / (1.0 - prev)) / precision;
            let (c0, ct) = s.posterior_mean_coefs(t);
            assert!((c0 * z0 + ct * zt - mean).abs() < 1e-12, "t {t}");
            assert!((s.posterior_variance(t) - 1.0 / precision).abs() < 1e-12 * precision);
        }
        // At the first step the posterior is the clean latent itself, with no variance.
        assert_eq!(s.posterior_variance(0), 0.0);
        let (c0, ct) = s.posterior_mean_coefs(0);
        assert!((c0 - 1.0).abs() < 1e-12 && ct.abs() < 1e-12);
    }

    #[test]
    fn noising_and_its_inverse() {
        let s = Schedule::diffrec();
        let z0 = [0.5f32, -1.0, 2.0];
        let eps = [0.3f32, 0.1, -0.7];
        let mut zt = [0f32; 3];
        s.q_sample(&z0, &eps, 17, &mut zt);
        let a = s.alpha_bar(17);
        for i in 0..3 {
            let want = a.sqrt() * z0[i] as f64 + (1.0 - a).sqrt() * eps[i] as f64;
            assert!((zt[i] as f64 - want).abs() < 1e-6);
        }
        let mut back = [0f32; 3];
        s.x0_from_eps(&zt, &eps, 17, &mut back);
        for i in 0..3 {
            assert!((back[i] - z0[i]).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_schedules_name_the_key() {
        let key = |r: Result<Schedule, ScheduleError>| r.unwrap_err().key;
        assert_eq!(key(Schedule::linear(0, 1.0, 1e-4, 0.02)), "steps");
        assert_eq!(key(Schedule::linear(10, 1.0, 0.0, 0.02)), "beta_min");
        assert_eq!(key(Schedule::linear(10, 1.0, 1e-4, 1.0)), "beta_max");
        assert_eq!(key(Schedule::linear(10, 1.0, -1.0, 0.02)), "beta_min");
        assert_eq!(
            key(Schedule::linear(10, f64::NAN, 1e-4, 0.02)),
            "noise_scale"
        );
        assert_eq!(key(Schedule::linear(10, 1.0, 0.02, 1e-4)), "beta_max");
        // 100,000 steps of β = 0.02 leave ᾱ_T ≈ e^-2020: underflow.
        let e = Schedule::linear(100_000, 1.0, 0.02, 0.02).unwrap_err();
        assert_eq!(e.key, "steps");
        assert!(e.to_string().contains("underflows"), "{e}");
        assert!(Schedule::linear(1, 1.0, 0.5, 0.5).is_ok());
    }

    #[test]
    fn time_embedding_is_cos_then_sin() {
        let mut e = [0f32; 7];
        time_embedding(3.0, 7, &mut e);
        assert!((e[0] - 3f32.cos()).abs() < 1e-6 && (e[3] - 3f32.sin()).abs() < 1e-6);
        let f = (-(10000f64.ln()) * 2.0 / 3.0).exp();
        assert!((e[2] as f64 - (3.0 * f).cos()).abs() < 1e-6);
        assert!((e[5] as f64 - (3.0 * f).sin()).abs() < 1e-6);
        assert_eq!(e[6], 0.0);
        let mut z = [9f32; 4];
        time_embedding(0.0, 4, &mut z);
        assert_eq!(z, [1.0, 1.0, 0.0, 0.0]);
    }
}
