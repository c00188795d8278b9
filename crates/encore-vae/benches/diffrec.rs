//! Criterion benches of DiffRec (the official ML-1M setting) on an ml-100k-shaped random
//! matrix (943 users, 1,682 items): one training epoch (3 steps of 400 users), one full
//! scoring pass (40 reverse steps for every user), and the matrix products an epoch is made
//! of, alone, to see how close the epoch is to its `gemm` bound.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo bench -p encore-vae --bench diffrec
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use encore_core::{EpochContext, Recommender, Trainable};
use encore_data::InteractionMatrix;
use encore_nn::{matmul, Mat};
use encore_vae::{DiffRec, DiffRecConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ml100k_shaped() -> InteractionMatrix {
    let (users, items) = (943usize, 1682u32);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let rows: Vec<Vec<u32>> = (0..users)
        .map(|_| {
            let n = rng.random_range(16..154);
            let mut r: Vec<u32> = (0..n)
                .map(|_| (rng.random::<f64>().powi(2) * items as f64) as u32)
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect();
    InteractionMatrix::from_rows(items as usize, &rows)
}

fn bench(c: &mut Criterion) {
    let train = ml100k_shaped();
    let n = train.n_items();
    let users: Vec<u32> = (0..train.n_users() as u32).collect();
    let mut out = vec![0f32; users.len() * n];
    eprintln!(
        "{} users, {} items, {} rayon threads",
        train.n_users(),
        n,
        rayon::current_num_threads()
    );
    let mut g = c.benchmark_group("diffrec-ml100k-shaped");
    g.sample_size(10);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut m = DiffRec::new(DiffRecConfig::ml1m(), n).unwrap();
    g.bench_function("epoch", |b| {
        b.iter(|| {
            let mut progress = |_: u64| {};
            m.train_epoch(EpochContext {
                train: &train,
                epoch: 0,
                rng: &mut rng,
                progress: &mut progress,
            })
            .unwrap()
        })
    });
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
