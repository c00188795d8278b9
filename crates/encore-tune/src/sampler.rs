//! Proposals: the first trials drawn at random from the space, the later ones by TPE
//! (Bergstra et al. 2011) fitted on the results so far.
//!
//! # A proposal is a function of (seed, trial number, earlier results)
//!
//! [`Sampler::propose`] keeps no state between calls: for trial `i` it builds one TPE
//! optimiser per key, tells each the results of the trials before `i` in trial order, and asks
//! with a random stream keyed by `(seed, i)` alone. A tune that was stopped and started again
//! therefore proposes, for every later trial, exactly what the uninterrupted tune would have
//! proposed, as long as it is given the same results, which the caller reads back from its
//! trial log (the tuning directory's `trials.jsonl`, [`crate::study`]). Nothing depends on how
//! many proposals were made in this process, or on the order of earlier calls.
//!
//! # What TPE is told
//!
//! Each key's coordinate is its internal one ([`Distribution`]: the value, its logarithm for
//! log scales, the category index) and the loss is the objective negated, since TPE
//! minimises and every metric Encore tunes for is maximised. A failed trial is told with an
//! infinite loss: it joins the "bad" side of TPE's split, so the proposals move away from where
//! trials fail, rather than forgetting it (Optuna drops failed trials instead). The optimisers
//! use the `tpe` crate's defaults: the best `ceil(0.1 n)` trials form the "good" density, 24
//! candidates are drawn from it and the one with the highest good/bad density ratio is taken.
//! Each key is modelled on its own (the independent TPE of Bergstra et al. and Optuna's
//! default), so the draws for one trial are made key by key, in key order, from one stream.

use tpe_rand::rngs::ChaCha8Rng;
use tpe_rand::{RngExt, SeedableRng};

use crate::space::{Distribution, Params, SearchSpace};
use crate::TuneError;

/// One finished trial as the sampler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub params: &'a Params,
    /// The objective (maximised); `None` for a failed trial.
    pub value: Option<f64>,
}

/// Proposes the parameters of each trial of a tune.
#[derive(Debug, Clone)]
pub struct Sampler<'a> {
    space: &'a SearchSpace,
    seed: u64,
    startup_trials: usize,
}

impl<'a> Sampler<'a> {
    /// A sampler over `space`; trials `0..startup_trials` are drawn at random (uniformly in
    /// each key's internal coordinate), the rest by TPE.
    pub fn new(space: &'a SearchSpace, seed: u64, startup_trials: usize) -> Self {
        Sampler {
            space,
            seed,
            startup_trials,
        }
    }

    /// The parameters of trial `trial`, given the results of trials `0..trial` in order
    /// (`history`, one entry per earlier trial).
    pub fn propose(&self, trial: usize, history: &[Observation<'_>]) -> Result<Params, TuneError> {
        let mut rng = trial_rng(self.seed, trial);
        let mut params = Params::new();
        for p in &self.space.params {
            let d = &p.distribution;
            let r = d.internal_range();
            let u = if trial < self.startup_trials {
                rng.random_range(r.start..r.end)
            } else {
                let estimator = match d {
                    Distribution::Categorical { .. } => tpe::histogram_estimator(),
                    _ => tpe::parzen_estimator(),
                };
                let range = tpe::range(r.start, r.end)
                    .map_err(|e| p.error(format!("cannot draw from {r:?}: {e}")))?;
                let mut optimizer = tpe::TpeOptimizer::new(estimator, range);
                for obs in history {
                    // A key missing from a trial (not possible within one tune) counts as
                    // unused there, as the tpe crate documents for conditional keys.
                    let x = obs
                        .params
                        .get(&p.key)
                        .and_then(|v| d.coordinate_of(v))
                        .unwrap_or(f64::NAN);
                    let loss = match obs.value {
                        Some(v) if v.is_finite() => -v,
                        _ => f64::INFINITY,
                    };
                    optimizer
                        .tell(x, loss)
                        .map_err(|e| p.error(format!("trial history: {e}")))?;
                }
                match optimizer.ask(&mut rng) {
                    Ok(u) => u,
                    Err(never) => match never {},
                }
            };
            params.insert(p.key.clone(), d.value_at(u));
        }
        Ok(params)
    }
}

/// The random stream of trial `trial`: ChaCha8 keyed by the seed and the trial number (a
/// generator named after its algorithm, so the stream does not change with rand's version).
fn trial_rng(seed: u64, trial: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(trial as u64).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Value;

    /// A shifted quadratic bowl over a uniform, a log-uniform, a log-int and a categorical
    /// key: 0 at x = 1.3, lr = 1e-3, n = 24, act = "tanh"; higher is better (it is maximised).
    const SPACE: &str = "[x]\nkind = \"uniform\"\nlow = -5.0\nhigh = 5.0\n\n\
        [lr]\nkind = \"log_uniform\"\nlow = 1e-5\nhigh = 1e-1\n\n\
        [n]\nkind = \"int\"\nlow = 1\nhigh = 512\nlog = true\n\n\
        [act]\nkind = \"categorical\"\nvalues = [\"relu\", \"tanh\", \"sigmoid\", \"gelu\"]\n";

    fn objective(p: &Params) -> f64 {
        let x = p["x"].as_float().unwrap();
        let lr = p["lr"].as_float().unwrap();
        let n = p["n"].as_integer().unwrap() as f64;
        let act = if p["act"].as_str() == Some("tanh") {
            0.0
        } else {
            1.0
        };
        -((x - 1.3).powi(2) + (lr / 1e-3).ln().powi(2) + (n / 24.0).ln().powi(2) + act)
    }

    /// The best objective of a tune of `trials` trials with `startup` random ones.
    fn best_of(space: &SearchSpace, seed: u64, trials: usize, startup: usize) -> f64 {
        let sampler = Sampler::new(space, seed, startup);
        let mut done: Vec<(Params, f64)> = Vec::new();
        for i in 0..trials {
            let history: Vec<Observation> = done
                .iter()
                .map(|(p, v)| Observation {
                    params: p,
                    value: Some(*v),
                })
                .collect();
            let p = sampler.propose(i, &history).unwrap();
            let v = objective(&p);
            done.push((p, v));
        }
        done.iter().map(|d| d.1).fold(f64::NEG_INFINITY, f64::max)
    }

    /// TPE finds the optimum's neighbourhood more often than random search with the same
    /// budget (printed with --nocapture; the figures are in the commit message).
    #[test]
    fn tpe_beats_random_search_on_a_shifted_quadratic() {
        let space = SearchSpace::parse(SPACE, "quadratic.toml").unwrap();
        let (trials, eps, seeds) = (60, 0.5, 20);
        let mut tpe_hits = 0;
        let mut random_hits = 0;
        let (mut tpe_sum, mut random_sum) = (0.0, 0.0);
        for seed in 0..seeds {
            let tpe = best_of(&space, seed, trials, 10);
            let random = best_of(&space, seed, trials, trials);
            tpe_hits += usize::from(tpe > -eps);
            random_hits += usize::from(random > -eps);
            tpe_sum += tpe;
            random_sum += random;
        }
        println!(
            "{trials} trials, {seeds} seeds: within {eps} of the optimum TPE {tpe_hits}, \
             random {random_hits}; mean best TPE {:.3}, random {:.3}",
            tpe_sum / seeds as f64,
            random_sum / seeds as f64
        );
        assert!(
            tpe_hits > random_hits,
            "TPE {tpe_hits} vs random {random_hits} successes"
        );
    }

    /// A tuner started afresh and told the first `i` results proposes the same trial `i` as
    /// one that ran without interruption.
    #[test]
    fn proposals_replay_from_the_recorded_results() {
        let space = SearchSpace::parse(SPACE, "quadratic.toml").unwrap();
        let straight = Sampler::new(&space, 7, 5);
        let mut done: Vec<(Params, Option<f64>)> = Vec::new();
        for i in 0..25 {
            let history: Vec<Observation> = done
                .iter()
                .map(|(p, v)| Observation {
                    params: p,
                    value: *v,
                })
                .collect();
            let p = straight.propose(i, &history).unwrap();
            // Every fifth trial "fails".
            let v = (i % 5 != 3).then(|| objective(&p));
            done.push((p, v));
        }
        for i in [0, 4, 5, 6, 13, 24] {
            // A fresh sampler, with the results read back through JSON as from trials.jsonl.
            let restarted = Sampler::new(&space, 7, 5);
            let recorded: Vec<(Params, Option<f64>)> =
                serde_json::from_str(&serde_json::to_string(&done[..i]).unwrap()).unwrap();
            let history: Vec<Observation> = recorded
                .iter()
                .map(|(p, v)| Observation {
                    params: p,
                    value: *v,
                })
                .collect();
            assert_eq!(
                restarted.propose(i, &history).unwrap(),
                done[i].0,
                "trial {i}"
            );
        }
        // The proposals do depend on the results and on the seed.
        let history: Vec<Observation> = done[..20]
            .iter()
            .map(|(p, _)| Observation {
                params: p,
                value: Some(0.0),
            })
            .collect();
        assert_ne!(straight.propose(20, &history).unwrap(), done[20].0);
        assert_ne!(
            Sampler::new(&space, 8, 5).propose(0, &[]).unwrap(),
            done[0].0
        );
    }

    #[test]
    fn proposals_stay_inside_the_space() {
        let space = SearchSpace::parse(SPACE, "quadratic.toml").unwrap();
        let sampler = Sampler::new(&space, 3, 4);
        let mut done: Vec<(Params, f64)> = Vec::new();
        for i in 0..40 {
            let history: Vec<Observation> = done
                .iter()
                .map(|(p, v)| Observation {
                    params: p,
                    value: Some(*v),
                })
                .collect();
            let p = sampler.propose(i, &history).unwrap();
            let x = p["x"].as_float().unwrap();
            assert!((-5.0..=5.0).contains(&x));
            let lr = p["lr"].as_float().unwrap();
            assert!((1e-5..=1e-1).contains(&lr));
            let n = p["n"].as_integer().unwrap();
            assert!((1..=512).contains(&n));
            assert!(matches!(&p["act"], Value::String(_)));
            let v = objective(&p);
            done.push((p, v));
        }
    }
}
