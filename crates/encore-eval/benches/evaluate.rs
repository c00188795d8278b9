//! Full-ranking evaluation speed at the scale of the paper's largest catalogue: a Pop-like
//! scorer (one fixed popularity vector copied into every row) over 57,000 items, 10,000 users
//! with ~400 training items (excluded) and ~40 targets each, ks [10, 20]. Throughput is in
//! users per second ("elem/s"). Also the scorer alone (the floor) and the top-k selection
//! alone (one thread, rows already in cache).
//!
//! With 57,000 items a batch of 512 users is a 117 MB score buffer: it leaves the CPU caches, so
//! the scorer writes and the ranking reads go to main memory. Batch 64 (15 MB) is much faster
//! for cheap scorers; the evaluation result is identical for any batch size.
//!
//! Run with `cargo bench -p encore-eval`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use encore_data::InteractionMatrix;
use encore_eval::{evaluate, EvalOptions, Scorer, TopK};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N_ITEMS: usize = 57_000;
const N_USERS: usize = 10_000;

struct PopLike {
    scores: Vec<f32>,
}

impl Scorer for PopLike {
    fn n_items(&self) -> usize {
        self.scores.len()
    }
    fn score_batch(&self, users: &[u32], out: &mut [f32]) {
        for row in out.chunks_exact_mut(self.scores.len()).take(users.len()) {
            row.copy_from_slice(&self.scores);
        }
    }
}

/// Seeded random train / target rows and the popularity of each item in train.
fn world() -> (PopLike, InteractionMatrix, InteractionMatrix) {
    let mut rng = ChaCha8Rng::seed_from_u64(2020);
    let mut train = Vec::with_capacity(N_USERS);
    let mut targets = Vec::with_capacity(N_USERS);
    for _ in 0..N_USERS {
        let n_train = rng.random_range(360..=440);
        let n_target = rng.random_range(30..=50);
        let items = rand::seq::index::sample(&mut rng, N_ITEMS, n_train + n_target).into_vec();
        let items: Vec<u32> = items.into_iter().map(|i| i as u32).collect();
        train.push(items[..n_train].to_vec());
        targets.push(items[n_train..].to_vec());
    }
    let train = InteractionMatrix::from_rows(N_ITEMS, &train);
    let targets = InteractionMatrix::from_rows(N_ITEMS, &targets);
    let scores = train.item_counts().into_iter().map(|c| c as f32).collect();
    (PopLike { scores }, train, targets)
}

fn bench_evaluate(c: &mut Criterion) {
    let (scorer, train, targets) = world();
    let mut group = c.benchmark_group("evaluate");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N_USERS as u64));
    for batch_size in [512, 64] {
        let opts = EvalOptions {
            ks: vec![10, 20],
            batch_size,
            keep_per_user: false,
        };
        group.bench_function(
            format!("full_ranking_pop_57k_items_10k_users_batch{batch_size}"),
            |b| b.iter(|| black_box(evaluate(&scorer, &[&train], &targets, &opts))),
        );
    }
    // The scorer alone (same batches, same buffer size): the floor under the evaluation.
    let users: Vec<u32> = (0..N_USERS as u32).collect();
    group.bench_function("score_only_batch512", |b| {
        let mut buf = vec![0.0f32; 512 * N_ITEMS];
        b.iter(|| {
            for chunk in users.chunks(512) {
                scorer.score_batch(chunk, &mut buf[..chunk.len() * N_ITEMS]);
                black_box(&buf);
            }
        })
    });
    group.finish();

    // Top-k alone on pre-filled rows (no scoring, no metrics), one thread.
    let rows = 64;
    let mut group = c.benchmark_group("topk");
    group.throughput(Throughput::Elements(rows as u64));
    let mut topk = TopK::new(20);
    group.bench_function("k20_57k_items_400_excluded_per_row", |b| {
        b.iter(|| {
            for u in 0..rows {
                topk.select(black_box(&scorer.scores), train.row(u));
                black_box(topk.items());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_evaluate);
criterion_main!(benches);
