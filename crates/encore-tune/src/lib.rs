//! Hyper-parameter search for Encore's models (`encore tune`, SPEC §6): Bayesian optimisation
//! of a model's configuration on the validation split, with the Tree-structured Parzen
//! Estimator (TPE, Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization").
//!
//! - [`space`] reads the search space from TOML (`uniform`, `log_uniform`, `int` with an
//!   optional log scale, `categorical`), with errors naming the file, line and key.
//! - [`sampler`] makes the proposals, random for the first trials and then TPE, each a
//!   function of the seed, the trial number and the earlier results only, so that a continued
//!   tune proposes what the uninterrupted one would have.
//! - [`study`] keeps the tuning directory (`tune.json`, the durable trial log `trials.jsonl`).
//! - [`plot`] draws `trials.png`.
//!
//! The crate knows nothing of models: the command line resolves each key through the model
//! registry and runs each trial as a normal training run.
//!
//! # Why TPE
//!
//! The paper tunes with "Bayesian optimisation with a maximum of 75 runs" (§5.4) without naming
//! the tool; its numbers came from RecBole, whose `HyperTuning` with `algo = "bayes"` is
//! hyperopt's TPE, and TPE is also Optuna's default sampler. It fits the problem better than
//! a Gaussian-process method with expected improvement (e.g. the `egobox` crate):
//! - the spaces mix real, log-scaled, integer and categorical keys (`lr`, `batch_size`,
//!   `n_facets`, `diffusion = "paper" | "diffrec"`); TPE models each as a density in its own
//!   coordinate (a Parzen window, or a histogram over categories), where a GP needs a kernel
//!   and a relaxation for integers and categories;
//! - it is cheap: a proposal costs O(trials x 24 candidates) per key, against a GP's cubic
//!   fit and its inner optimisation of the acquisition, so it adds nothing next to a trial
//!   that trains a model for minutes;
//! - it needs no scaling of the objective and is robust to failed trials and to noisy,
//!   flat metric surfaces, where a GP's length scales are hard to fit from 75 points.
//!
//! The `tpe` crate supplies the estimators and the good/bad density ratio; this crate adds
//! the mapping of each kind of key to TPE's coordinates, the random start-up trials, and the
//! deterministic replay ([`sampler`]).

mod error;
pub mod plot;
pub mod sampler;
pub mod space;
pub mod study;

pub use error::TuneError;
pub use sampler::{Observation, Sampler};
pub use space::{Distribution, Param, Params, SearchSpace};
pub use study::{Study, TrialRecord, TuneSettings};
