//! MultiVAE or MacridVAE (`recbole` presets) at Music4All-Onion scale: seconds per batch of
//! 2048 users on a random 57,000-item matrix with ~420 interactions per user (50M interactions
//! over 119,000 users), extrapolated to an epoch, next to this machine's measured GEMM
//! throughput (the decoder's `2048 x 600 x 57000` product) and the matrix-multiply bound of an
//! epoch (MacridVAE: its K-facet cosine decoder, `2 · B · d · I` per facet and pass).
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p encore-vae --example scale [-- <batches> [multivae|macridvae]]
//! ```

use std::time::Instant;

use encore_core::{EpochContext, Trainable};
use encore_data::InteractionMatrix;
use encore_vae::{MacridVae, MacridVaeConfig, MultiVae, MultiVaeConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the `encore` binary does: reuse large buffers across steps (no fresh page faults).
    encore_core::alloc::retain_freed_memory();
    let batches: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let which = std::env::args().nth(2).unwrap_or_else(|| "multivae".into());
    if which != "multivae" && which != "macridvae" {
        return Err(format!("model: expected multivae or macridvae, got {which}").into());
    }
    let (all_users, items, per_user, batch, hidden) = (119_000usize, 57_000u32, 420, 2048, 600);
    let users = batch * batches;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let rows: Vec<Vec<u32>> = (0..users)
        .map(|_| {
            let mut r: Vec<u32> = (0..per_user)
                .map(|_| (rng.random::<f64>().powi(2) * items as f64) as u32)
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect();
    let train = InteractionMatrix::from_rows(items as usize, &rows);
    let threads = rayon::current_num_threads();
    eprintln!(
        "{users} users x {items} items, {} nnz, {threads} rayon threads",
        train.nnz()
    );

    // GEMM throughput on the decoder's product shape.
    let (m, k, n) = (batch, hidden, items as usize);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        encore_nn::matmul(
            &mut c,
            encore_nn::Mat::new(&a, m, k),
            encore_nn::Mat::new(&b, k, n),
            false,
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * (m * n * k) as f64 / best / 1e9;
    println!("gemm {m}x{k}x{n}: {best:.3} s, {gflops:.1} GFLOP/s");

    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut progress = |_: u64| {};
    // One untimed batch first: it touches the step's buffers (gigabytes for MacridVAE) for
    // the first time, a cost an epoch of 59 steps pays once.
    let warm = InteractionMatrix::from_rows(items as usize, &rows[..batch]);
    let mut epoch = |model: &mut dyn Trainable, data: &InteractionMatrix| {
        let ctx = EpochContext {
            train: data,
            epoch: 0,
            rng: &mut rng,
            progress: &mut progress,
        };
        let t = Instant::now();
        model.train_epoch(ctx).map(|_| t.elapsed().as_secs_f64())
    };
    let steps = all_users.div_ceil(batch);
    // Dense products per step (x3: forward, weight gradient, input gradient).
    let (first, seconds, flop_step) = if which == "multivae" {
        let mut model = MultiVae::new(MultiVaeConfig::recbole(), items as usize)?;
        let first = epoch(&mut model, &warm)?;
        let seconds = epoch(&mut model, &train)?;
        // Decoder 600 -> I, encoder 600 -> 128, decoder 64 -> 600.
        let flop = 3.0 * 2.0 * (batch * hidden * items as usize) as f64
            + 3.0 * 2.0 * (batch * hidden * 128) as f64
            + 3.0 * 2.0 * (batch * 64 * hidden) as f64;
        (first, seconds, flop)
    } else {
        let cfg = MacridVaeConfig::recbole();
        let (kf, d) = (cfg.n_facets, cfg.latent_dim);
        let mut model = MacridVae::new(cfg, items as usize)?;
        let first = epoch(&mut model, &warm)?;
        let seconds = epoch(&mut model, &train)?;
        // Per facet: the cosine decoder B x d x I, and the encoder's 600 -> 2d layer.
        let flop = kf as f64
            * (3.0 * 2.0 * (batch * d * items as usize) as f64
                + 3.0 * 2.0 * (batch * hidden * 2 * d) as f64);
        (first, seconds, flop)
    };
    println!("first (untimed) batch: {first:.2} s");
    let per_batch = seconds / batches as f64;
    let bound = flop_step * steps as f64 / (gflops * 1e9);
    println!(
        "{which} recbole: {per_batch:.2} s per batch of {batch}; epoch of {all_users} users = {steps} steps ~ {:.0} s; \
         matmul bound at the measured GEMM rate {:.0} s ({:.1} TFLOP/epoch), ratio {:.2}",
        per_batch * steps as f64,
        bound,
        flop_step * steps as f64 / 1e12,
        per_batch * steps as f64 / bound
    );
    Ok(())
}
