//! The element-wise kernels' ISA dispatch: `encore_nn`'s own (`per_isa!`: the same body
//! compiled for AVX-512F, AVX2+FMA and the baseline, picked at run time) against `pulp`'s
//! `Arch::dispatch` of the same body (x86-v3, and x86-v4 where the CPU has it). The body is
//! the softmax pass of MultiVAE's loss, `v = e^(v − max)` over rows of the ml-100k catalogue
//! (943 x 1,682), on one thread.
//!
//! `cargo bench -p encore-nn --bench isa`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use encore_nn::kernels::{exp, exp_shifted};

const ROWS: usize = 943;
const ITEMS: usize = 1682;
/// As in `encore_nn::kernels` (a fixed-size inner loop the compiler interleaves).
const ILP_CHUNK: usize = 128;

fn data() -> Vec<f32> {
    (0..ROWS * ITEMS)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
        .collect()
}

/// The kernel body, inlined into whichever target-feature function calls it.
#[inline(always)]
fn body(y: &mut [f32], shift: f32) {
    let mut chunks = y.chunks_exact_mut(ILP_CHUNK);
    for c in &mut chunks {
        for v in c {
            *v = exp(*v - shift);
        }
    }
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
    }
}

/// The same body through pulp's `WithSimd` (its documented way to get the body compiled
/// inside the target-feature function).
struct ExpShifted<'a> {
    y: &'a mut [f32],
    shift: f32,
}

impl pulp::WithSimd for ExpShifted<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        body(self.y, self.shift)
    }
}

fn isa(c: &mut Criterion) {
    let src = data();
    let mut y = src.clone();
    let mut g = c.benchmark_group("exp_shifted 943x1682, 1 thread");
    g.bench_function("per_isa (encore_nn)", |b| {
        b.iter(|| {
            y.copy_from_slice(&src);
            for row in y.chunks_exact_mut(ITEMS) {
                exp_shifted(row, black_box(1.5));
            }
        })
    });
    let arch = pulp::Arch::new();
    g.bench_function("pulp Arch::dispatch", |b| {
        b.iter(|| {
            y.copy_from_slice(&src);
            for row in y.chunks_exact_mut(ITEMS) {
                arch.dispatch(
                    #[inline(always)]
                    || body(row, black_box(1.5)),
                );
            }
        })
    });
    g.bench_function("pulp WithSimd", |b| {
        b.iter(|| {
            y.copy_from_slice(&src);
            for row in y.chunks_exact_mut(ITEMS) {
                arch.dispatch(ExpShifted {
                    y: row,
                    shift: black_box(1.5),
                });
            }
        })
    });
    g.bench_function("baseline target (no dispatch)", |b| {
        b.iter(|| {
            y.copy_from_slice(&src);
            for row in y.chunks_exact_mut(ITEMS) {
                body(row, black_box(1.5));
            }
        })
    });
    g.finish();
    // They give the same bits (plain multiplies and adds, never fused).
    let mut a = src.clone();
    let mut p = src.clone();
    for (ra, rp) in a.chunks_exact_mut(ITEMS).zip(p.chunks_exact_mut(ITEMS)) {
        exp_shifted(ra, 1.5);
        arch.dispatch(
            #[inline(always)]
            || body(rp, 1.5),
        );
    }
    assert!(a.iter().zip(&p).all(|(x, y)| x.to_bits() == y.to_bits()));
}

criterion_group!(benches, isa);
criterion_main!(benches);
