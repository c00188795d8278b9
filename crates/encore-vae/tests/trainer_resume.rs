//! The generic trainer driving the VAEs: a run killed mid-way and resumed from its checkpoint
//! ends exactly where an uninterrupted run ends (SPEC §8), and the shipped configs resolve.

use std::collections::BTreeMap;
use std::path::Path;

use encore_core::config::{resolve, TrainerConfig};
use encore_core::trainer::{read_log, train, TrainData};
use encore_core::{EpochContext, ModelError, Recommender, Trainable};
use encore_data::InteractionMatrix;
use encore_vae::{MacridVae, MacridVaeConfig, MultiVae, MultiVaeConfig};
use rand::{Rng, SeedableRng};

/// A random matrix: 60 users, 40 items, about 15% density, split 80/20 into train/valid.
fn data() -> (InteractionMatrix, InteractionMatrix) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for u in 0..60u32 {
        let (mut t, mut v) = (Vec::new(), Vec::new());
        for i in 0..40u32 {
            // Two user groups preferring different halves of the catalogue.
            let p = if (i < 20) == (u % 2 == 0) { 0.25 } else { 0.05 };
            if rng.random::<f64>() < p {
                if rng.random::<f64>() < 0.8 {
                    t.push(i)
                } else {
                    v.push(i)
                }
            }
        }
        train.push(t);
        valid.push(v);
    }
    (
        InteractionMatrix::from_rows(40, &train),
        InteractionMatrix::from_rows(40, &valid),
    )
}

/// Delegates to a model and fails at a given epoch, as a kill would.
struct Killed<M>(M, usize);

impl<M: Recommender> Recommender for Killed<M> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn n_items(&self) -> usize {
        self.0.n_items()
    }
    fn score_users(&self, u: &[u32], i: &InteractionMatrix, o: &mut [f32]) {
        self.0.score_users(u, i, o)
    }
    fn score_history(&self, h: &[u32], o: &mut [f32]) -> Result<(), ModelError> {
        self.0.score_history(h, o)
    }
    fn save(&self, d: &Path) -> Result<(), ModelError> {
        self.0.save(d)
    }
}

impl<M: Trainable> Trainable for Killed<M> {
    fn train_epoch(&mut self, ctx: EpochContext<'_>) -> Result<BTreeMap<String, f64>, ModelError> {
        if ctx.epoch == self.1 {
            return Err(ModelError::Input("killed".into()));
        }
        self.0.train_epoch(ctx)
    }
    fn save_state(&self, d: &Path) -> Result<(), ModelError> {
        self.0.save_state(d)
    }
    fn load_state(&mut self, d: &Path) -> Result<(), ModelError> {
        self.0.load_state(d)
    }
}

fn close(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) {
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        assert!((va - vb).abs() < 1e-12, "{ka}: {va} vs {vb}");
    }
}

fn check_resume<M: Trainable>(make: impl Fn() -> M) {
    let (tr, va) = data();
    let d = TrainData {
        train: &tr,
        input: &tr,
        valid: &va,
    };
    let cfg = TrainerConfig {
        epochs: 6,
        ..TrainerConfig::default()
    };
    let a = tempfile::tempdir().unwrap();
    let straight = train(&mut make(), &d, &cfg, a.path(), false).unwrap();
    let b = tempfile::tempdir().unwrap();
    assert!(train(&mut Killed(make(), 4), &d, &cfg, b.path(), false).is_err());
    let resumed = train(&mut make(), &d, &cfg, b.path(), true).unwrap();
    assert_eq!(resumed.epochs_run, 6);
    assert_eq!(resumed.best_epoch, straight.best_epoch);
    // Metric means may differ in the last bit: the evaluator sums users in parallel.
    close(
        &resumed.best_valid.unwrap().metrics,
        &straight.best_valid.unwrap().metrics,
    );
    let (la, lb) = (
        read_log(&a.path().join("log.jsonl")).unwrap(),
        read_log(&b.path().join("log.jsonl")).unwrap(),
    );
    assert_eq!(la.len(), 6);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x.train, y.train, "epoch {}", x.epoch);
        close(x.valid.as_ref().unwrap(), y.valid.as_ref().unwrap());
    }
    // The final weights agree too: the checkpoints hold identical safetensors.
    let wa = std::fs::read(a.path().join("checkpoint/model/model.safetensors")).unwrap();
    let wb = std::fs::read(b.path().join("checkpoint/model/model.safetensors")).unwrap();
    assert_eq!(wa, wb);
    let ca = std::fs::read(a.path().join("checkpoint/model/counters.json")).unwrap();
    assert_eq!(
        ca,
        std::fs::read(b.path().join("checkpoint/model/counters.json")).unwrap()
    );
}

#[test]
fn multivae_killed_and_resumed_equals_straight() {
    let cfg = MultiVaeConfig {
        hidden_dims: vec![16],
        latent_dim: 4,
        batch_size: 16,
        ..MultiVaeConfig::original()
    };
    check_resume(|| MultiVae::new(cfg.clone(), 40).unwrap());
}

#[test]
fn macridvae_killed_and_resumed_equals_straight() {
    for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
        let cfg = MacridVaeConfig {
            n_facets: 3,
            hidden_dims: vec![16],
            latent_dim: 4,
            batch_size: 16,
            ..preset
        };
        check_resume(|| MacridVae::new(cfg.clone(), 40).unwrap());
    }
}

/// Fused features for the 40 items of [`data`], every fifth item without any.
fn features() -> encore_vae::Conditioning {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let values = (0..40 * 6).map(|_| rng.random::<f32>() - 0.5).collect();
    let present = (0..40).map(|i| i % 5 != 0).collect();
    encore_vae::Conditioning::new(40, 6, values, present).unwrap()
}

/// MultiVAE-C and MacridVAE-C resume exactly too (the checkpoint carries the features).
#[test]
fn conditioned_killed_and_resumed_equals_straight() {
    let cfg = MultiVaeConfig {
        hidden_dims: vec![16],
        latent_dim: 4,
        batch_size: 16,
        conditioning: encore_vae::ConditioningKind::Audio,
        cond_dim: 6,
        ..MultiVaeConfig::original()
    };
    check_resume(|| MultiVae::with_conditioning(cfg.clone(), 40, Some(features())).unwrap());
    let cfg = MacridVaeConfig {
        n_facets: 3,
        hidden_dims: vec![16],
        latent_dim: 4,
        batch_size: 16,
        conditioning: encore_vae::ConditioningKind::Concat,
        cond_dim: 6,
        ..MacridVaeConfig::original()
    };
    check_resume(|| MacridVae::with_conditioning(cfg.clone(), 40, Some(features())).unwrap());
}

#[test]
fn shipped_configs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mv = resolve::<MultiVaeConfig>(Some(&root.join("multivae.toml")), &[]).unwrap();
    assert_eq!(mv.model, MultiVaeConfig::recbole());
    assert_eq!(mv.train.epochs, 300);
    let mc = resolve::<MacridVaeConfig>(Some(&root.join("macridvae.toml")), &[]).unwrap();
    assert_eq!(mc.model, MacridVaeConfig::recbole());
    let e = resolve::<MacridVaeConfig>(Some(&root.join("multivae.toml")), &[]).unwrap_err();
    assert!(
        matches!(e, ModelError::Config { ref key, .. } if key == "model"),
        "{e}"
    );
}
