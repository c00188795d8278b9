//! Generation and write time and peak memory of one synthetic-world preset (one preset per
//! process, so the peak is its own):
//!
//! `cargo run --release -p encore-data --example synth_measure -- onion [OUT_DIR]`
//!
//! The world is written under `OUT_DIR` (default: the system temp dir) and deleted.

use encore_data::synth::{generate, write_onion_layout, Preset, SynthConfig};

/// Peak resident memory of this process so far (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let preset: Preset = args.next().unwrap_or_else(|| "small".into()).parse()?;
    let base = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(base)?;
    let t = std::time::Instant::now();
    let w = generate(&SynthConfig::preset(preset), 2020)?;
    let gen_s = t.elapsed().as_secs_f64();
    let summary = write_onion_layout(&w, &root.path().join(preset.name()))?;
    let bytes: u64 = summary.files.iter().map(|f| f.bytes).sum();
    println!("{}", summary.stats);
    println!(
        "preset {preset}: generate {gen_s:.2} s, write {:.2} s ({:.2} GB), peak RSS {:.0} MiB, threads {}",
        summary.seconds,
        bytes as f64 / 1e9,
        peak_rss_mib().unwrap_or(f64::NAN),
        rayon::current_num_threads()
    );
    Ok(())
}
