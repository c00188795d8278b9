//! MultiVAE-C and MacridVAE-C through the public API (MODELS.md "Conditioning", SPEC §3):
//! held-out items never reach a user's conditioning vector, the weights or the scores; the
//! input row does; save/load, fold-in and thread count leave scores unchanged; they train.

use std::collections::BTreeMap;

use encore_core::config::TrainerConfig;
use encore_core::trainer::{train, TrainData};
use encore_core::{EpochContext, ModelError, Recommender, Trainable};
use encore_data::InteractionMatrix;
use encore_vae::{Conditioning, MacridVae, MacridVaeConfig, MultiVae, MultiVaeConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N_ITEMS: usize = 40;
const DIM: usize = 8;

/// 60 users, 40 items: train, and two different held-out (validation/test) matrices, disjoint
/// from train.
fn data() -> (InteractionMatrix, InteractionMatrix, InteractionMatrix) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (mut train, mut va, mut vb) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..60u32 {
        let (mut t, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..N_ITEMS as u32 {
            let p = if (i < 20) == (u % 2 == 0) { 0.3 } else { 0.05 };
            let r: f64 = rng.random();
            if r < p * 0.7 {
                t.push(i);
            } else if r < p {
                a.push(i);
            } else if r < p + 0.1 {
                b.push(i);
            }
        }
        train.push(t);
        va.push(a);
        vb.push(b);
    }
    let m = |rows: &[Vec<u32>]| InteractionMatrix::from_rows(N_ITEMS, rows);
    (m(&train), m(&va), m(&vb))
}

/// Fused features: every fifth item has none.
fn features() -> Conditioning {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let values = (0..N_ITEMS * DIM)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let present = (0..N_ITEMS).map(|i| i % 5 != 0).collect();
    Conditioning::new(N_ITEMS, DIM, values, present).unwrap()
}

/// Training speed for the tests that only check that loss drops: no dropout, lr 1e-2.
fn fast(lr: &mut f64, dropout: &mut f64) {
    *lr = 1e-2;
    *dropout = 0.0;
}

fn multivae() -> MultiVae {
    let cfg = MultiVaeConfig {
        hidden_dims: vec![16],
        latent_dim: 4,
        batch_size: 16,
        conditioning: encore_vae::ConditioningKind::Concat,
        cond_dim: DIM,
        ..MultiVaeConfig::original()
    };
    MultiVae::with_conditioning(cfg, N_ITEMS, Some(features())).unwrap()
}

fn macridvae(preset: MacridVaeConfig) -> MacridVae {
    let cfg = MacridVaeConfig {
        n_facets: 3,
        hidden_dims: vec![16],
        latent_dim: 4,
        batch_size: 16,
        conditioning: encore_vae::ConditioningKind::Tensor,
        cond_dim: DIM,
        ..preset
    };
    MacridVae::with_conditioning(cfg, N_ITEMS, Some(features())).unwrap()
}

/// Every conditioned model under test, freshly built.
type Maker = Box<dyn Fn() -> Box<dyn Model> + Sync>;

fn models() -> Vec<(&'static str, Maker)> {
    vec![
        (
            "multivae",
            Box::new(|| Box::new(multivae()) as Box<dyn Model>),
        ),
        (
            "macridvae-original",
            Box::new(|| Box::new(macridvae(MacridVaeConfig::original())) as Box<dyn Model>),
        ),
        (
            "macridvae-recbole",
            Box::new(|| Box::new(macridvae(MacridVaeConfig::recbole())) as Box<dyn Model>),
        ),
    ]
}

trait Model: Trainable {
    fn load_same(&self, dir: &std::path::Path) -> Result<Box<dyn Model>, ModelError>;
}
impl Model for MultiVae {
    fn load_same(&self, dir: &std::path::Path) -> Result<Box<dyn Model>, ModelError> {
        Ok(Box::new(MultiVae::load(dir)?))
    }
}
impl Model for MacridVae {
    fn load_same(&self, dir: &std::path::Path) -> Result<Box<dyn Model>, ModelError> {
        Ok(Box::new(MacridVae::load(dir)?))
    }
}

fn epochs(m: &mut dyn Model, train: &InteractionMatrix, n: usize) -> Vec<BTreeMap<String, f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    (0..n)
        .map(|epoch| {
            m.train_epoch(EpochContext {
                train,
                epoch,
                rng: &mut rng,
                progress: &|_| {},
            })
            .unwrap()
        })
        .collect()
}

fn scores(m: &dyn Model, users: &[u32], input: &InteractionMatrix) -> Vec<f32> {
    let mut out = vec![0f32; users.len() * N_ITEMS];
    m.score_users(users, input, &mut out);
    out
}

/// The model only ever sees its input rows: training with either set of held-out items gives
/// the same weights (so the same scores), and a user's conditioning vector and scores do not
/// move when held-out items are added to the input of every *other* user.
#[test]
fn held_out_items_never_reach_conditioning_weights_or_scores() {
    let (tr, va, vb) = data();
    let users: Vec<u32> = (0..60).collect();
    for (name, make) in models() {
        let cfg = TrainerConfig {
            epochs: 3,
            ..TrainerConfig::default()
        };
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (valid, dir) in [(&va, &da), (&vb, &db)] {
            let d = TrainData {
                train: &tr,
                input: &tr,
                valid,
            };
            train(&mut *make(), &d, &cfg, dir.path(), false).unwrap();
        }
        let weights = |d: &tempfile::TempDir| {
            std::fs::read(d.path().join("checkpoint/model/model.safetensors")).unwrap()
        };
        assert_eq!(weights(&da), weights(&db), "{name}");

        let mut m = make();
        epochs(&mut *m, &tr, 3);
        let base = scores(&*m, &users, &tr);
        // User 0 keeps their row; everyone else gains their held-out items.
        let mut rows: Vec<Vec<u32>> = (0..60).map(|u| tr.row(u).to_vec()).collect();
        for (u, row) in rows.iter_mut().enumerate().skip(1) {
            row.extend(va.row(u));
            row.extend(vb.row(u));
            row.sort_unstable();
            row.dedup();
        }
        let leaked = InteractionMatrix::from_rows(N_ITEMS, &rows);
        let c = features();
        assert_eq!(
            c.user_vectors(&tr, &[0]),
            c.user_vectors(&leaked, &[0]),
            "{name}"
        );
        let other = scores(&*m, &users, &leaked);
        assert_eq!(&base[..N_ITEMS], &other[..N_ITEMS], "{name}");
        // Fold-in of the same row gives the same scores as batch scoring.
        // (Equal up to rounding: `gemm` sums a one-row product against a transposed operand,
        // MacridVAE's decoder, in another order than a many-row one; the plain model too.)
        let mut h = vec![0f32; N_ITEMS];
        m.score_history(tr.row(0), &mut h).unwrap();
        for (a, b) in h.iter().zip(&base[..N_ITEMS]) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{name}: {a} vs {b}"
            );
        }
        // And the other users' scores did move (their rows changed).
        assert_ne!(&base[N_ITEMS..], &other[N_ITEMS..], "{name}");
    }
}

/// A user whose input row gains a featured item gets a different conditioning vector and
/// different scores.
#[test]
fn a_changed_input_row_changes_conditioning_and_scores() {
    let (tr, _, _) = data();
    let c = features();
    let row = tr.row(3).to_vec();
    // A featured item the user does not have, that changes the maximum.
    let mut base = vec![0f32; DIM];
    c.user_vector(&row, &mut base);
    let extra = (0..N_ITEMS as u32)
        .filter(|i| i % 5 != 0 && !row.contains(i))
        .find(|&i| {
            let mut r = row.clone();
            r.push(i);
            let mut v = vec![0f32; DIM];
            c.user_vector(&r, &mut v);
            v != base
        })
        .unwrap();
    let mut grown = row.clone();
    grown.push(extra);
    let mut v = vec![0f32; DIM];
    c.user_vector(&grown, &mut v);
    assert_ne!(v, base);
    for (name, make) in models() {
        let mut m = make();
        epochs(&mut *m, &tr, 2);
        let (mut a, mut b) = (vec![0f32; N_ITEMS], vec![0f32; N_ITEMS]);
        m.score_history(&row, &mut a).unwrap();
        m.score_history(&grown, &mut b).unwrap();
        assert_ne!(a, b, "{name}");
    }
}

/// Conditioning changes the model: the same weights scored with the features zeroed (every
/// `c_u = 0`) give different scores than with them.
#[test]
fn conditioning_vectors_reach_the_scores() {
    let (tr, _, _) = data();
    let users: Vec<u32> = (0..60).collect();
    let mut m = multivae();
    epochs(&mut m, &tr, 2);
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let zero =
        Conditioning::new(N_ITEMS, DIM, vec![0.0; N_ITEMS * DIM], vec![true; N_ITEMS]).unwrap();
    zero.save(dir.path()).unwrap();
    let z = MultiVae::load(dir.path()).unwrap();
    assert_ne!(scores(&m, &users, &tr), scores(&z, &users, &tr));
}

#[test]
fn save_load_round_trip_gives_identical_scores() {
    let (tr, _, _) = data();
    let users: Vec<u32> = (0..60).collect();
    for (name, make) in models() {
        let mut m = make();
        epochs(&mut *m, &tr, 2);
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        assert!(
            dir.path().join("conditioning.safetensors").exists(),
            "{name}"
        );
        let back = m.load_same(dir.path()).unwrap();
        assert_eq!(
            scores(&*m, &users, &tr),
            scores(&*back, &users, &tr),
            "{name}"
        );
        // Without its features file, a conditioned model does not load.
        std::fs::remove_file(dir.path().join("conditioning.safetensors")).unwrap();
        let e = m.load_same(dir.path()).err().unwrap().to_string();
        assert!(e.contains("conditioning.safetensors"), "{name}: {e}");
    }
}

/// One training epoch gives the same weights and scores on one thread and on three.
#[test]
fn conditioned_training_is_thread_count_independent() {
    let (tr, _, _) = data();
    let users: Vec<u32> = (0..60).collect();
    for (name, make) in models() {
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let mut m = make();
                    epochs(&mut *m, &tr, 2);
                    let dir = tempfile::tempdir().unwrap();
                    m.save(dir.path()).unwrap();
                    (
                        scores(&*m, &users, &tr),
                        std::fs::read(dir.path().join("model.safetensors")).unwrap(),
                    )
                })
        };
        assert!(run(1) == run(3), "{name}");
    }
}

#[test]
fn conditioned_models_train() {
    let (tr, _, _) = data();
    let mut mv = multivae();
    let mut cfg = mv.config().clone();
    fast(&mut cfg.lr, &mut cfg.dropout);
    mv = MultiVae::with_conditioning(cfg, N_ITEMS, Some(features())).unwrap();
    let mut ms: Vec<(&str, Box<dyn Model>)> = vec![("multivae", Box::new(mv))];
    for preset in [MacridVaeConfig::original(), MacridVaeConfig::recbole()] {
        let mut cfg = macridvae(preset).config().clone();
        fast(&mut cfg.lr, &mut cfg.dropout);
        let m = MacridVae::with_conditioning(cfg, N_ITEMS, Some(features())).unwrap();
        ms.push(("macridvae", Box::new(m)));
    }
    for (name, mut m) in ms {
        let log = epochs(&mut *m, &tr, 40);
        let (first, last) = (log[0]["recon"], log[39]["recon"]);
        assert!(last < first * 0.9, "{name}: {first} -> {last}");
    }
}

#[test]
fn with_conditioning_checks_its_features() {
    let key = |e: ModelError| match e {
        ModelError::Config { key, .. } => key,
        other => panic!("{other}"),
    };
    let plain = MultiVaeConfig::original();
    let cond = MultiVaeConfig {
        conditioning: encore_vae::ConditioningKind::Audio,
        cond_dim: DIM,
        ..plain.clone()
    };
    assert_eq!(
        key(MultiVae::with_conditioning(plain, N_ITEMS, Some(features())).unwrap_err()),
        "conditioning"
    );
    assert_eq!(
        key(MultiVae::new(cond.clone(), N_ITEMS).unwrap_err()),
        "conditioning"
    );
    let wide = MultiVaeConfig {
        cond_dim: DIM + 1,
        ..cond.clone()
    };
    assert_eq!(
        key(MultiVae::with_conditioning(wide, N_ITEMS, Some(features())).unwrap_err()),
        "cond_dim"
    );
    assert!(MultiVae::with_conditioning(cond, N_ITEMS + 1, Some(features())).is_err());
    let mc = MacridVaeConfig {
        conditioning: encore_vae::ConditioningKind::Lyrics,
        cond_dim: DIM,
        ..MacridVaeConfig::original()
    };
    assert_eq!(
        key(MacridVae::new(mc.clone(), N_ITEMS).unwrap_err()),
        "conditioning"
    );
    assert!(MacridVae::with_conditioning(mc, N_ITEMS, Some(features())).is_ok());
    for set in ["conditioning=\"video\"", "cond_dim=0"] {
        let e =
            encore_core::config::resolve::<MacridVaeConfig>(None, &[set.to_string()]).unwrap_err();
        assert_eq!(key(e), set.split('=').next().unwrap());
    }
}

/// A model folder saved before the conditioning keys existed (no `conditioning`, `cond_dim`
/// in its `config.toml`) still loads, as a plain model.
#[test]
fn configs_without_conditioning_keys_still_load() {
    let (tr, _, _) = data();
    let cfg = MultiVaeConfig {
        hidden_dims: vec![16],
        latent_dim: 4,
        ..MultiVaeConfig::original()
    };
    let m = MultiVae::new(cfg, N_ITEMS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("conditioning"));
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with("conditioning") && !l.starts_with("cond_dim"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, old).unwrap();
    let back = MultiVae::load(dir.path()).unwrap();
    assert_eq!(
        back.config().conditioning,
        encore_vae::ConditioningKind::None
    );
    let users: Vec<u32> = (0..5).collect();
    assert_eq!(scores(&m, &users, &tr), scores(&back, &users, &tr));
    // Serde's own defaults too (a config deserialised directly, without a preset merge).
    let mut table: toml::Table = toml::Table::try_from(MacridVaeConfig::recbole()).unwrap();
    table.remove("conditioning");
    table.remove("cond_dim");
    let c: MacridVaeConfig = toml::Value::Table(table).try_into().unwrap();
    assert_eq!(c, MacridVaeConfig::recbole());
}
