//! Encore's numeric core: dense products ([`matmul`](fn@matmul)), element-wise and sparse kernels
//! ([`kernels`]) and the
//! sparse batch types ([`Csr`], [`FacetCsr`]): the pieces the VAEs and PCA are built from.
//!
//! # Why by hand
//!
//! On ml-100k the `recbole` preset is one step of 943 users per epoch, about 2 GFLOP of matrix
//! products. Built as a burn autodiff graph the step ran at several times the matrix-multiply
//! bound (docs/PERFORMANCE.md has the figures): graph construction, per-op allocation, un-fused element-wise
//! passes over `B x I` tensors (log-softmax alone is several), and a gather/scatter first
//! layer with an `i64` index tensor. No crate offers a fused VAE step, so the layers are written
//! here over `gemm` (the matrix-multiply crate burn-flex itself uses, already in the tree): the
//! products go to `gemm`, everything else is one fused, row-parallel pass. Each hand-written
//! backward is checked against burn's autodiff, each layer in its own test and each model's
//! whole loss in the model's.
//!
//! # Determinism
//!
//! Every reduction has a fixed order that does not depend on the thread count: `gemm`
//! parallelises over output blocks, never over the inner dimension (a test checks 1 vs 4
//! threads bit for bit); row-wise passes are parallel over rows; the scatter-add of the
//! first layer's weight gradient is parallel over items, each item summing its entries in
//! batch order; bias gradients sum rows sequentially. MacridVAE's facet-grouped first layer
//! ([`FacetCsr`]) is parallel over users (forward, value gradients) and over item ranges
//! that each walk the users in batch order (weight gradient).

pub mod diffusion;
pub mod kernels;
pub mod layers;
pub mod matmul;
pub mod params;

pub use kernels::{Csr, FacetCsr};
pub use layers::{Activation, Dense, Dropout, Mlp, MlpTrace, Side, SparseDense};
pub use matmul::{
    matmul, matmul_on, matmul_rows_alone, transpose_into, Mat, PackedColumns, Scalar, Threads,
};
pub use params::{Grads, ParamId, ParamStore};

/// `f` on a fresh pool of `threads` rayon threads (the tests' check that results do not
/// depend on the thread count).
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}
