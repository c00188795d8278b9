//! Text-encoder throughput on synthetic lyrics of a fixed token length.
//!
//! ```text
//! cargo run --release -p encore-text --example throughput -- /work/shared/models/all-MiniLM-L6-v2 [texts] [tokens] [batch sizes, comma-separated]
//! ```
//!
//! Texts are drawn (deterministically) from a small word list so that each one tokenizes to
//! exactly `tokens` tokens, special tokens included; every text therefore has the same
//! length and the numbers measure the model, not padding. Threads: candle uses rayon's pool
//! (set `RAYON_NUM_THREADS` to change it).
//!
//! Each setting runs three times and the fastest run is reported, with the process CPU time
//! of that run (user + system, from `/proc/self/stat`): on a machine shared with other jobs
//! the wall clock is noisy, and texts per CPU-second shows the efficiency of a setting even
//! when the cores are not all ours.

use std::path::PathBuf;
use std::time::Instant;

use encore_text::{EmbedOptions, TextEncoder};

/// Common English words that BERT's uncased WordPiece vocabulary keeps whole.
const WORDS: &[&str] = &[
    "love", "night", "city", "light", "dance", "summer", "rain", "young", "free", "heart", "fire",
    "sky", "blue", "road", "home", "dream", "time", "world", "song", "river", "day", "moon", "sun",
    "baby", "cold", "gold", "street", "lonely", "forever", "tonight",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().ok_or(
        "usage: throughput MODEL_DIR [texts=512] [tokens=128] [batch sizes=1,8,16,32,64]",
    )?);
    let n_texts: usize = args.get(1).map_or(Ok(512), |s| s.parse())?;
    let n_tokens: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let batch_sizes: Vec<usize> = args
        .get(3)
        .map_or("1,8,16,32,64", |s| s.as_str())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;

    // 64-bit LCG: deterministic texts without a dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let texts: Vec<String> = (0..n_texts)
        .map(|_| {
            (0..n_tokens - 2)
                .map(|_| WORDS[next() % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    // The thread count candle's CPU kernels use (RAYON_NUM_THREADS, else the physical cores).
    let threads = candle_core::utils::get_num_threads();
    println!(
        "model {} | {n_texts} texts x {n_tokens} tokens | rayon threads {threads}",
        dir.display()
    );
    println!(
        "{:>6} {:>8} {:>10} {:>12} {:>8} {:>9} {:>12}",
        "batch", "threads", "texts/s", "tokens/s", "secs", "cpu secs", "texts/cpu-s"
    );
    for &bs in &batch_sizes {
        let enc = TextEncoder::load(
            &dir,
            EmbedOptions {
                batch_size: bs,
                ..EmbedOptions::default()
            },
        )?;
        // Warm-up on a few texts (page in the weights, size the allocator).
        enc.embed(&refs[..bs.min(n_texts)], None)?;
        let (mut secs, mut cpu) = (f64::INFINITY, f64::NAN);
        for _ in 0..3 {
            let (t, c0) = (Instant::now(), cpu_seconds());
            let e = enc.embed(&refs, None)?;
            let s = t.elapsed().as_secs_f64();
            assert_eq!(e.truncated, 0, "texts were meant to fit the maximum length");
            if s < secs {
                (secs, cpu) = (s, cpu_seconds() - c0);
            }
        }
        println!(
            "{bs:>6} {threads:>8} {:>10.1} {:>12.0} {secs:>8.2} {cpu:>9.2} {:>12.1}",
            n_texts as f64 / secs,
            (n_texts * n_tokens) as f64 / secs,
            n_texts as f64 / cpu
        );
    }
    Ok(())
}

/// User + system CPU seconds of this process so far (Linux; NaN elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // Field 14 is the 12th after the name (the name is field 2, the state field 3).
    (ticks(11) + ticks(12)) / 100.0
}
