//! Time and memory of the implicit `tensor` fusion at Music4All-Onion scale (SPEC §3: 57k
//! tracks, 128-d audio and lyrics, 16,384-d outer products, PCA to 128, never materialised).
//!
//! ```text
//! cargo run --release -p encore-features --example tensor_bench -- --items 57000
//! ```
//!
//! Options: `--items N` (57000), `--dim D` (128), `--modality-dim M` (128), `--oversample P`
//! (10), `--power-iters Q` (2), `--seed S` (2020), `--check` (fit again with two more power
//! iterations and print the largest principal angle between the two 128-d subspaces: a
//! convergence check at full scale, where the exact reference cannot run). The inputs are random but structured: audio
//! of rank 16 and lyrics of rank 8 plus noise, so the tensor spectrum has the gap after 128
//! that the accuracy tests rely on. Prints one table row: items, seconds, peak resident memory
//! (`VmHWM`), and what the materialised matrix would take.

use std::time::Instant;

use encore_data::features::FeatureTable;
use encore_features::{fuse, FusionConfig, FusionMethod, PcaMethod, PcaOptions, RandomizedOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn low_rank_rows(n: usize, d: usize, scales: &[f32], noise: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let r = scales.len();
    let u: Vec<f32> = (0..r * d)
        .map(|_| {
            let v: f32 = StandardNormal.sample(rng);
            v / (d as f32).sqrt()
        })
        .collect();
    let mut x = vec![0f32; n * d];
    let mut z = vec![0f32; r];
    for row in x.chunks_mut(d) {
        for (zj, s) in z.iter_mut().zip(scales) {
            let v: f32 = StandardNormal.sample(rng);
            *zj = s * v;
        }
        for (c, v) in row.iter_mut().enumerate() {
            let e: f32 = StandardNormal.sample(rng);
            *v = 0.3 + noise * e + (0..r).map(|j| z[j] * u[j * d + c]).sum::<f32>();
        }
    }
    x
}

/// `asin ‖(I − C2ᵀC2) C1ᵀ‖₂` for `k x d` orthonormal-row `C1`, `C2` (power iteration for
/// the largest eigenvalue of `RᵀR`).
fn largest_angle(c1: &[f32], c2: &[f32], k: usize, d: usize) -> f64 {
    let mut m = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            m[i * k + j] = (0..d)
                .map(|c| c2[i * d + c] as f64 * c1[j * d + c] as f64)
                .sum();
        }
    }
    let mut rtr = vec![0f64; k * k];
    let mut r = vec![0f64; k];
    for c in 0..d {
        for (j, rj) in r.iter_mut().enumerate() {
            let proj: f64 = (0..k).map(|i| c2[i * d + c] as f64 * m[i * k + j]).sum();
            *rj = c1[j * d + c] as f64 - proj;
        }
        for i in 0..k {
            for j in 0..k {
                rtr[i * k + j] += r[i] * r[j];
            }
        }
    }
    let mut v = vec![1.0f64; k];
    let mut lambda = 0.0;
    for _ in 0..500 {
        let w: Vec<f64> = (0..k)
            .map(|i| (0..k).map(|j| rtr[i * k + j] * v[j]).sum())
            .collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            break;
        }
        lambda = norm;
        v = w.iter().map(|x| x / norm).collect();
    }
    lambda.clamp(0.0, 1.0).sqrt().asin()
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let mut items = 57_000usize;
    let mut dim = 128usize;
    let mut modality_dim = 128usize;
    let mut ro = RandomizedOptions::default();
    let mut seed = 2020u64;
    let mut check = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| -> u64 {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    eprintln!("{} needs a non-negative integer value", args[i]);
                    std::process::exit(2)
                })
        };
        if args[i] == "--check" {
            check = true;
            i += 1;
            continue;
        }
        match args[i].as_str() {
            "--items" => items = value(i) as usize,
            "--dim" => dim = value(i) as usize,
            "--modality-dim" => modality_dim = value(i) as usize,
            "--oversample" => ro.oversample = value(i) as usize,
            "--power-iters" => ro.power_iters = value(i) as usize,
            "--seed" => seed = value(i),
            other => {
                eprintln!("unknown option {other}; see the example's doc comment");
                std::process::exit(2)
            }
        }
        i += 2;
    }

    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sa: Vec<f32> = (0..16).map(|j| 3.0 * 0.93f32.powi(j)).collect();
    let sl: Vec<f32> = (0..8).map(|j| 2.0 * 0.77f32.powi(j)).collect();
    let a = low_rank_rows(items, modality_dim, &sa, 0.01, &mut rng);
    let l = low_rank_rows(items, modality_dim, &sl, 0.01, &mut rng);
    let ids: Vec<String> = (0..items).map(|i| format!("track{i:06}")).collect();
    let cols = |p: &str| (0..modality_dim).map(|j| format!("{p}{j}")).collect();
    let audio = FeatureTable::new("synthetic-audio", ids.clone(), cols("a"), a).expect("shape");
    let lyrics = FeatureTable::new("synthetic-lyrics", ids, cols("l"), l).expect("shape");
    let gen_s = t0.elapsed().as_secs_f64();

    let cfg = FusionConfig {
        method: FusionMethod::Tensor,
        dim,
        modality_dim,
        seed,
        fusion_pca: PcaOptions {
            method: PcaMethod::Randomized,
            randomized: ro,
        },
        ..Default::default()
    };
    let threads = rayon::current_num_threads();
    let t1 = Instant::now();
    let (model, table) = match fuse(Some(&audio), Some(&lyrics), &cfg, None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    let secs = t1.elapsed().as_secs_f64();
    let rss = peak_rss_mib().map_or("n/a".to_string(), |m| format!("{m:.0} MiB"));
    let materialised = items as f64 * (modality_dim * modality_dim) as f64 * 4.0 / (1 << 30) as f64;
    print!("{}", model.report());
    println!(
        "(inputs generated in {gen_s:.1} s; {threads} rayon threads; oversample {}, power iterations {})",
        ro.oversample, ro.power_iters
    );
    println!();
    println!(
        "| {:>7} | {:>9} | {:>13} | {:>22} | {:>10} |",
        "items", "seconds", "peak RSS", "materialised would need", "fused rows"
    );
    println!(
        "|{:-<9}|{:-<11}|{:-<15}|{:-<24}|{:-<12}|",
        "", "", "", "", ""
    );
    println!(
        "| {:>7} | {:>9.1} | {:>13} | {:>18.2} GiB | {:>10} |",
        items,
        secs,
        rss,
        materialised,
        table.len()
    );
    if check {
        let more = FusionConfig {
            fusion_pca: PcaOptions {
                method: PcaMethod::Randomized,
                randomized: RandomizedOptions {
                    power_iters: ro.power_iters + 2,
                    ..ro
                },
            },
            ..cfg
        };
        let t2 = Instant::now();
        let (model2, _) = fuse(Some(&audio), Some(&lyrics), &more, None).expect("second fit");
        let (c1, c2) = (
            &model.fused.as_ref().expect("tensor stage").components,
            &model2.fused.as_ref().expect("tensor stage").components,
        );
        let angle = largest_angle(c1, c2, dim, modality_dim * modality_dim);
        println!(
            "check: {} power iterations vs {} ({:.1} s): largest principal angle {angle:.2e}",
            ro.power_iters,
            ro.power_iters + 2,
            t2.elapsed().as_secs_f64()
        );
    }
}
