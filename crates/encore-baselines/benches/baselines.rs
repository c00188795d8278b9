//! Hot paths of the baselines: LightGCN's sparse propagation at Music4All-Onion scale, and one
//! training epoch of BPR-MF and LightGCN on a scaled-down random graph.
//!
//! ```text
//! cargo bench -p encore-baselines --bench baselines
//! ENCORE_BENCH_EDGES=5000000 cargo bench -p encore-baselines --bench baselines   # smaller graph
//! ```
//!
//! The issue's table (seconds per epoch at full Onion scale, dense vs sparse Adam, peak
//! memory) is the example `baselines_scale`:
//! `cargo run --release -p encore-baselines --example baselines_scale`.
//!
//! The propagation graph is random bipartite, 119k users x 57k items with 50M interactions
//! (Onion's size; `ENCORE_BENCH_EDGES` overrides the edge count), `d = 64`. The reported
//! throughput counts the memory traffic one layer `E' = Â E` must move at least once: per
//! stored entry its column index and value (8 bytes) and the neighbour's embedding row
//! (`4d` bytes, a random gather), per node its row pointer (8 bytes) and output row (`4d`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use encore_baselines::bpr::{Bpr, BprConfig};
use encore_baselines::lightgcn::{LightGcn, LightGcnConfig, NormAdj};
use encore_core::{EpochContext, Trainable};
use encore_data::InteractionMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const D: usize = 64;

/// `n_users` rows of about `edges / n_users` uniform items each (duplicates merged).
fn random_graph(n_users: usize, n_items: usize, edges: usize, seed: u64) -> InteractionMatrix {
    let per_user = (edges / n_users).max(1);
    let rows: Vec<Vec<u32>> = (0..n_users)
        .into_par_iter()
        .map(|u| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ (u as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            (0..per_user)
                .map(|_| rng.random_range(0..n_items as u32))
                .collect()
        })
        .collect();
    InteractionMatrix::from_rows(n_items, &rows)
}

fn propagation(c: &mut Criterion) {
    let edges: usize = std::env::var("ENCORE_BENCH_EDGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000_000);
    let train = random_graph(119_000, 57_000, edges, 1);
    let adj = NormAdj::from_interactions(&train);
    drop(train);
    let n = adj.n_nodes();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x: Vec<f32> = (0..n * D).map(|_| rng.random_range(-0.1..0.1)).collect();
    let mut out = vec![0.0f32; n * D];
    let bytes = adj.nnz() as u64 * (8 + 4 * D as u64) + n as u64 * (8 + 4 * D as u64);
    let mut group = c.benchmark_group("lightgcn_propagation");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(
        BenchmarkId::new("one_layer_d64", format!("{}nnz", adj.nnz())),
        |b| b.iter(|| adj.spmm(black_box(&x), D, &mut out)),
    );
    group.finish();
}

fn epochs(c: &mut Criterion) {
    // 1/20 of Onion's users and items at Onion's density (~0.7%): 5.95k x 2.85k, ~120k edges.
    let train = random_graph(5_950, 2_850, 120_000, 3);
    let mut group = c.benchmark_group("epoch_onion_twentieth");
    group.sample_size(10);
    group.throughput(Throughput::Elements(train.nnz() as u64));
    let progress = |_: u64| {};
    let mut bpr = Bpr::new(&BprConfig::default(), &train, 1).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    group.bench_function("bpr", |b| {
        b.iter(|| {
            let ctx = EpochContext {
                train: &train,
                epoch: 0,
                rng: &mut rng,
                progress: &progress,
            };
            bpr.train_epoch(ctx).unwrap()
        })
    });
    let sparse = BprConfig {
        sparse_adam: true,
        ..BprConfig::default()
    };
    let mut bpr_sparse = Bpr::new(&sparse, &train, 1).unwrap();
    group.bench_function("bpr_sparse_adam", |b| {
        b.iter(|| {
            let ctx = EpochContext {
                train: &train,
                epoch: 0,
                rng: &mut rng,
                progress: &progress,
            };
            bpr_sparse.train_epoch(ctx).unwrap()
        })
    });
    let mut lgcn = LightGcn::new(&LightGcnConfig::default(), &train, 1).unwrap();
    group.bench_function("lightgcn", |b| {
        b.iter(|| {
            let ctx = EpochContext {
                train: &train,
                epoch: 0,
                rng: &mut rng,
                progress: &progress,
            };
            lgcn.train_epoch(ctx).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, propagation, epochs);
criterion_main!(benches);
