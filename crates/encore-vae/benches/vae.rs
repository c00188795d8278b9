//! Criterion benches of one training step and one full scoring pass of MultiVAE and MacridVAE
//! (`recbole` presets) on an ml-100k-shaped random matrix (943 users, 1,682 items, ~80,000
//! training interactions: one step of the `recbole` preset is one epoch there), and the raw
//! throughput of the matrix product the decoder is bound by; and the conditioned variants
//! (MultiVAE-C, MacridVAE-C, 128 conditioning dimensions, random features on 90% of the items)
//! next to them, to see what the conditioning costs; and both with latent diffusion
//! (Diff-MultiVAE, Diff-MacridVAE): an epoch, and scoring through the reverse chain. Then
//! DiffRec (the official ML-1M setting): an epoch (3 steps of 400 users), a full scoring pass
//! (40 reverse steps for every user), and the matrix products an epoch is made of, alone, to
//! see how close the epoch is to its `gemm` bound (`cargo bench -p encore-vae --bench vae --
//! diffrec`).
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo bench -p encore-vae --bench vae
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use encore_core::{EpochContext, Recommender, Trainable};
use encore_data::InteractionMatrix;
use encore_nn::{matmul, Mat};
use encore_vae::latent_diffusion::DiffusionKind;
use encore_vae::{
    Conditioning, DiffRec, DiffRecConfig, MacridVae, MacridVaeConfig, MultiVae, MultiVaeConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ml100k_shaped() -> InteractionMatrix {
    let (users, items) = (943usize, 1682u32);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let rows: Vec<Vec<u32>> = (0..users)
        .map(|_| {
            let n = rng.random_range(16..154);
            let mut r: Vec<u32> = (0..n)
                // Skewed towards popular items, like ratings.
                .map(|_| (rng.random::<f64>().powi(2) * items as f64) as u32)
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect();
    InteractionMatrix::from_rows(items as usize, &rows)
}

fn epoch(model: &mut dyn Trainable, train: &InteractionMatrix, rng: &mut ChaCha8Rng) {
    let mut progress = |_: u64| {};
    model
        .train_epoch(EpochContext {
            train,
            epoch: 0,
            rng,
            progress: &mut progress,
        })
        .unwrap();
}

fn bench(c: &mut Criterion) {
    let train = ml100k_shaped();
    let n = train.n_items();
    let users: Vec<u32> = (0..train.n_users() as u32).collect();
    let mut out = vec![0f32; users.len() * n];
    eprintln!(
        "{} users, {} items, {} nnz, {} rayon threads",
        train.n_users(),
        n,
        train.nnz(),
        rayon::current_num_threads()
    );
    let mut g = c.benchmark_group("ml100k-shaped");
    g.sample_size(10);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut m = MultiVae::new(MultiVaeConfig::recbole(), n).unwrap();
    g.bench_function("multivae epoch", |b| {
        b.iter(|| epoch(&mut m, &train, &mut rng))
    });
    g.bench_function("multivae score all users", |b| {
        b.iter(|| m.score_users(&users, &train, &mut out))
    });
    let mut m = MacridVae::new(MacridVaeConfig::recbole(), n).unwrap();
    g.bench_function("macridvae epoch", |b| {
        b.iter(|| epoch(&mut m, &train, &mut rng))
    });
    g.bench_function("macridvae score all users", |b| {
        b.iter(|| m.score_users(&users, &train, &mut out))
    });
    // Latent diffusion (MODELS.md): the cost targets of issue #14 are a Diff-MultiVAE epoch
    // against a MultiVAE epoch, and scoring through the reverse chain (40 steps for `diffrec`,
    // 1000 for `paper`, batched over all users) against MultiVAE's scoring.
    for (kind, label) in [
        (DiffusionKind::Diffrec, "diffrec"),
        (DiffusionKind::Paper, "paper"),
    ] {
        let cfg = MultiVaeConfig {
            diffusion: kind,
            ..MultiVaeConfig::recbole()
        };
        let mut m = MultiVae::new(cfg, n).unwrap();
        if kind == DiffusionKind::Diffrec {
            g.bench_function("diff-multivae epoch", |b| {
                b.iter(|| epoch(&mut m, &train, &mut rng))
            });
        }
        g.bench_function(format!("diff-multivae ({label}) score all users"), |b| {
            b.iter(|| m.score_users(&users, &train, &mut out))
        });
    }
    let cfg = MacridVaeConfig {
        diffusion: DiffusionKind::Diffrec,
        ..MacridVaeConfig::recbole()
    };
    let mut m = MacridVae::new(cfg, n).unwrap();
    g.bench_function("diff-macridvae epoch", |b| {
        b.iter(|| epoch(&mut m, &train, &mut rng))
    });
    g.bench_function("diff-macridvae (diffrec) score all users", |b| {
        b.iter(|| m.score_users(&users, &train, &mut out))
    });
    let mut frng = ChaCha8Rng::seed_from_u64(3);
    let cond = Conditioning::new(
        n,
        128,
        (0..n * 128).map(|_| frng.random::<f32>() - 0.5).collect(),
        (0..n).map(|i| i % 10 != 0).collect(),
    )
    .unwrap();
    let cfg = MultiVaeConfig {
        conditioning: encore_vae::ConditioningKind::Tensor,
        ..MultiVaeConfig::recbole()
    };
    let mut m = MultiVae::with_conditioning(cfg, n, Some(cond.clone())).unwrap();
    g.bench_function("multivae-c epoch", |b| {
        b.iter(|| epoch(&mut m, &train, &mut rng))
    });
    g.bench_function("multivae-c score all users", |b| {
        b.iter(|| m.score_users(&users, &train, &mut out))
    });
    let cfg = MacridVaeConfig {
        conditioning: encore_vae::ConditioningKind::Tensor,
        ..MacridVaeConfig::recbole()
    };
    let mut m = MacridVae::with_conditioning(cfg, n, Some(cond)).unwrap();
    g.bench_function("macridvae-c epoch", |b| {
        b.iter(|| epoch(&mut m, &train, &mut rng))
    });
    g.bench_function("macridvae-c score all users", |b| {
        b.iter(|| m.score_users(&users, &train, &mut out))
    });
    g.finish();
    let mut g = c.benchmark_group("diffrec-ml100k-shaped");
    g.sample_size(10);
    let mut m = DiffRec::new(DiffRecConfig::ml1m(), n).unwrap();
    g.bench_function("epoch", |b| b.iter(|| epoch(&mut m, &train, &mut rng)));
    g.bench_function("score all users", |b| {
        b.iter(|| m.score_users(&users, &train, &mut out))
    });
    // The epoch's products for one batch of 400 (an epoch: 2 of 400 and one of 143).
    let (bsz, h) = (400usize, 600usize);
    let a = vec![0.5f32; bsz * n];
    let w = vec![0.25f32; n * h];
    let hh = vec![0.5f32; bsz * h];
    let mut y = vec![0f32; bsz * h];
    let mut dw = vec![0f32; n * h];
    let mut wide = vec![0f32; bsz * n];
    g.bench_function("gemm [400,1682]x[1682,600]", |b| {
        b.iter(|| matmul(&mut y, Mat::new(&a, bsz, n), Mat::new(&w, n, h), false))
    });
    g.bench_function("gemm [400,1682]^T x[400,600]", |b| {
        b.iter(|| {
            matmul(
                &mut dw,
                Mat::new(&a, bsz, n).t(),
                Mat::new(&hh, bsz, h),
                false,
            )
        })
    });
    g.bench_function("gemm [400,600]x[600,1682]", |b| {
        b.iter(|| matmul(&mut wide, Mat::new(&hh, bsz, h), Mat::new(&w, h, n), false))
    });
    g.bench_function("gemm [400,600]^T x[400,1682]", |b| {
        b.iter(|| {
            matmul(
                &mut dw,
                Mat::new(&hh, bsz, h).t(),
                Mat::new(&a, bsz, n),
                false,
            )
        })
    });
    g.bench_function("gemm [400,1682]x[600,1682]^T", |b| {
        b.iter(|| matmul(&mut y, Mat::new(&a, bsz, n), Mat::new(&w, h, n).t(), false))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
