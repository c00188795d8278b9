//! Criterion benchmarks of the synthetic music world: generating the `small` preset and
//! writing it in the Onion layout. The `onion` preset (50M interactions) is measured by the
//! example `synth_measure` instead, which reports time and peak memory once:
//! `cargo run --release -p encore-data --example synth_measure -- onion`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use encore_data::synth::{generate, write_onion_layout, Preset, SynthConfig};

fn bench_synth(c: &mut Criterion) {
    let cfg = SynthConfig::preset(Preset::Small);
    let world = generate(&cfg, 2020).expect("small preset is valid");
    let mut group = c.benchmark_group("synth");
    group.sample_size(10);
    group.throughput(Throughput::Elements(world.n_interactions() as u64));
    group.bench_function("generate_small", |b| {
        b.iter(|| generate(&cfg, 2020).expect("small preset is valid"))
    });
    let root = tempfile::tempdir().expect("temp dir");
    let out = root.path().join("small");
    group.bench_function("write_small", |b| {
        b.iter(|| write_onion_layout(&world, &out).expect("write succeeds"))
    });
    group.finish();
}

criterion_group!(benches, bench_synth);
criterion_main!(benches);
