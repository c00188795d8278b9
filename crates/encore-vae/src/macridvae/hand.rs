//! MacridVAE's forward and backward passes written by hand over `encore_nn` (why: see
//! that module; on ml-100k the burn graph took 4 s per `recbole` step, most of it in
//! materialised `K x B x I` tensors and a gathered `K x nnz x hidden` first layer). The burn
//! version (`MacridVae::loss`) stays as the reference the tests check this one against.
//!
//! Layout: facet-major stacks, row `k * B + r` is user `r`'s facet `k`. The decoder
//! accumulates `p = Σ_k Q_k ⊙ C_{·k}` with `Q_k = exp(z_k Ĥᵀ / τ)` (`B x I`); scoring makes one
//! facet's `Q_k` at a time in one buffer, training keeps every facet's for the backward pass,
//! for one block of users at a time ([`MacridVae::decoder_train`]). With `logits = ln p`, the multinomial loss's gradient with respect to `p` is
//! `(n_u / Σ_i p_ui − x_ui / p_ui) / B`, so no logarithm is needed in the backward pass.

use rayon::prelude::*;

use super::{MacridVae, Noise, Scratch, StepLoss};
use crate::common::SparseBatch;
use encore_nn::diffusion::DiffusionPass;
use encore_nn::kernels::{col_sums, exp_scaled_accumulate, tanh_backward, tanh_inplace};
use encore_nn::{matmul, transpose_into, Csr, FacetCsr, Grads, Mat, MlpTrace, Side};

/// Rows divided by `sqrt(‖row‖² + 1e-24)` (as the burn reference); returns the norms.
fn normalise_rows(x: &mut [f32], d: usize) -> Vec<f32> {
    x.par_chunks_exact_mut(d)
        .map(|row| {
            let n = (row.iter().map(|v| v * v).sum::<f32>() + 1e-24).sqrt();
            row.iter_mut().for_each(|v| *v /= n);
            n
        })
        .collect()
}

/// The gradient through [`normalise_rows`]: `dx = (dy − y (y · dy)) / n`.
fn normalise_rows_backward(dy: &mut [f32], y: &[f32], norms: &[f32], d: usize) {
    dy.par_chunks_exact_mut(d)
        .zip(y.par_chunks_exact(d))
        .zip(norms)
        .for_each(|((g, y), n)| {
            let dot: f32 = g.iter().zip(y).map(|(a, b)| a * b).sum();
            for (g, y) in g.iter_mut().zip(y) {
                *g = (*g - y * dot) / n;
            }
        });
}

/// Rows per partial sum in column reductions over the batch (fixed, so the summation order
/// does not depend on the thread count).
const REDUCE_ROWS: usize = 64;

/// The training decoder's budget for one block's `Q` (all facets): 256 MiB, 64 users of a
/// 57,000-item catalogue with 10 facets (the whole batch's would be 4.7 GB). Measured at that
/// size (`examples/scale`, figures in docs/PERFORMANCE.md): 64 to 512 users per block run
/// alike, 16 users slower (the item gradient's accumulator is read and written once per
/// block); blocks small enough to stay in the last-level cache gained nothing.
const DECODER_BLOCK_BYTES: usize = 256 << 20;

/// Users per block of [`MacridVae::decoder_train`]: the whole batch when its `Q` fits
/// [`DECODER_BLOCK_BYTES`], else the largest multiple of [`REDUCE_ROWS`] that does (at least
/// one multiple). Depends only on the sizes, never on the thread count.
fn decoder_block_users(k: usize, b: usize, n: usize) -> usize {
    let fit = DECODER_BLOCK_BYTES / (k * n * std::mem::size_of::<f32>()).max(1);
    if fit >= b {
        b.max(1)
    } else {
        (fit / REDUCE_ROWS).max(1) * REDUCE_ROWS
    }
}

/// `C` `[I, K]` transposed to facet-major `[K, I]`.
fn facet_major(c: &[f32], n: usize, k: usize) -> Vec<f32> {
    (0..k)
        .flat_map(|f| (0..n).map(move |i| (f, i)))
        .map(|(f, i)| c[i * k + f])
        .collect()
}

/// The first part of the forward pass ([`MacridVae::front_hand`]), kept in the [`Trace`].
pub(super) struct Front {
    items_n: Vec<f32>,
    item_norms: Vec<f32>,
    cores_n: Vec<f32>,
    core_norms: Vec<f32>,
    /// Assignments `C` `[I, K]`.
    c: Vec<f32>,
    /// The first layer's input, all facets of a user together.
    first: FacetCsr,
    /// Per entry of `first`: the entry of the raw batch it comes from.
    src: Vec<usize>,
    /// Per entry and facet of `first` (`[nnz, K]`): whether the entry is in that facet's
    /// input (not dropped out); dropped ones are zeros in `first` and get no gradient.
    kept: Vec<bool>,
    /// Per-facet row norms `[K * B]` (per-facet normalisation only).
    facet_norms: Vec<f32>,
    /// Whole-row input: per raw entry, its normalised (not dropped-out) value.
    base: Vec<f32>,
    /// The first layer's output `[K * B, hidden]`, before the `tanh`.
    h: Vec<f32>,
}

/// What the training forward pass keeps for the backward pass.
pub(super) struct Trace {
    /// [`MacridVae::front_hand`]'s output, its `h` moved into `enc` (after the `tanh`).
    front: Front,
    /// The shared encoder's trace (its input: the first layer's output after the `tanh`).
    enc: MlpTrace,
    enc_out: Vec<f32>,
    mu: Vec<f32>,
    mu_norms: Vec<f32>,
    sigma: Vec<f32>,
    /// The facet latents `[K * B, d]`: in training the normalised sample (`z_0` of the
    /// diffusion term), when scoring `μ` or, with diffusion, the reverse chain's `ẑ_0`
    /// normalised.
    z: Vec<f32>,
    z_norms: Vec<f32>,
    /// Diff-MacridVAE in training: the diffusion term's pass on `z` and its `ẑ_0`,
    /// normalised (`[K * B, d]`, the latent the decoder sees), with its norms.
    diff: Option<(DiffusionPass, Vec<f32>, Vec<f32>)>,
    /// MacridVAE-C: `z̃ = normalise([z ; c_u])` `[K * B, d + c]` and its pre-normalisation
    /// norms (empty for the plain model, whose decoder uses `z`).
    zt: Vec<f32>,
    zt_norms: Vec<f32>,
}

impl Trace {
    /// The decoder's latents: `z̃` (MacridVAE-C), the normalised `ẑ_0` (Diff-MacridVAE in
    /// training) or `z`.
    fn decoder_latents(&self) -> &[f32] {
        match (&self.diff, self.zt.is_empty()) {
            (_, false) => &self.zt,
            (Some((_, z_hat, _)), true) => z_hat,
            (None, true) => &self.z,
        }
    }
}

/// The sizes of a pass over a batch of `b` users: facets, latent width, catalogue,
/// temperature, conditioning width and the decoder's latent width `de = d + cd`.
#[derive(Clone, Copy)]
struct Dims {
    k: usize,
    d: usize,
    b: usize,
    n: usize,
    tau: f32,
    cd: usize,
    de: usize,
}

impl MacridVae {
    fn dims(&self, b: usize) -> Dims {
        let (d, cd) = (self.config.latent_dim, self.cd());
        Dims {
            k: self.config.n_facets,
            d,
            b,
            n: self.n_items,
            tau: self.config.tau as f32,
            cd,
            de: d + cd,
        }
    }

    /// The scoring pass on raw batch `x` (softmax assignments, no dropout, `z = μ`): `p`
    /// `[B, I]` (logits are `ln p`). `cond`: the batch's conditioning vectors `[B, c]`
    /// (MacridVAE-C; item embeddings and prototypes are then `d + c` wide).
    pub(super) fn forward_hand(&self, x: &SparseBatch, cond: Option<&[f32]>) -> Vec<f32> {
        let t = self.forward_from(self.front_hand(x, None, Vec::new()), x, cond, None);
        let Dims {
            k, b, n, tau, de, ..
        } = self.dims(x.n_rows);
        let dec_z = t.decoder_latents();
        // Decoder, one facet at a time into one buffer: p += exp(z_k Ĥᵀ / τ) ⊙ C_{·k}.
        let ct = facet_major(&t.front.c, n, k);
        let mut probs = vec![0f32; b * n];
        // Written in full (`matmul` without accumulation) before it is read.
        let mut q = vec![0f32; b * n];
        for f in 0..k {
            matmul(
                &mut q,
                Mat::new(&dec_z[f * b * de..][..b * de], b, de),
                Mat::new(&t.front.items_n, n, de).t(),
                false,
            );
            exp_scaled_accumulate(&mut q, &mut probs, &ct[f * n..][..n], 1.0 / tau);
        }
        probs
    }

    /// The part of the forward pass that needs no `ε` (noise: only the Gumbel draws and
    /// the dropout masks are read): normalised embeddings, assignments, the first layer's
    /// sparse input and its output (before the `tanh`), written into `h` (any contents).
    pub(super) fn front_hand(
        &self,
        x: &SparseBatch,
        noise: Option<&Noise>,
        mut h: Vec<f32>,
    ) -> Front {
        let (net, p) = (&self.net, &self.params);
        let Dims {
            k, b, n, tau, de, ..
        } = self.dims(x.n_rows);
        let mut items_n = p.get(net.items).to_vec();
        let item_norms = normalise_rows(&mut items_n, de);
        let mut cores_n = p.get(net.cores).to_vec();
        let core_norms = normalise_rows(&mut cores_n, de);
        // Assignments C = softmax(Ĥ M̂ᵀ / τ (+ Gumbel)).
        let mut c = vec![0f32; n * k];
        matmul(
            &mut c,
            Mat::new(&items_n, n, de),
            Mat::new(&cores_n, k, de).t(),
            false,
        );
        let gumbel = noise.and_then(|nz| nz.gumbel.as_deref());
        c.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v /= tau;
                if let Some(g) = gumbel {
                    *v += g[i * k + j];
                }
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let mut s = 0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                s += *v;
            }
            row.iter_mut().for_each(|v| *v /= s);
        });

        // First-layer input of every facet, grouped by user: the raw entries kept in at least
        // one facet, in batch order, with one value per facet (0 where dropped).
        let scale = noise.map_or(1.0, |nz| nz.scale);
        let mut vals_all = vec![0f32; x.nnz() * k];
        let mut kept_all = vec![false; x.nnz() * k];
        let mut facet_norms = Vec::new();
        let mut base = Vec::new();
        if self.config.whole_row_input {
            base = x.l2_normalised().values;
            let mut put = |e: usize| {
                let i = x.items[e] as usize;
                for f in 0..k {
                    vals_all[e * k + f] = base[e] * scale * c[i * k + f];
                    kept_all[e * k + f] = true;
                }
            };
            match noise {
                Some(nz) => nz.keep[0].iter().for_each(|&e| put(e as usize)),
                None => (0..x.nnz()).for_each(put),
            }
        } else {
            facet_norms = vec![0f32; k * b];
            for f in 0..k {
                for e in 0..x.nnz() {
                    let cv = x.values[e] * c[x.items[e] as usize * k + f];
                    facet_norms[f * b + x.rows[e] as usize] += cv * cv;
                }
            }
            facet_norms
                .iter_mut()
                .for_each(|v| *v = (*v + 1e-24).sqrt());
            for f in 0..k {
                let mut put = |e: usize| {
                    let i = x.items[e] as usize;
                    let row = f * b + x.rows[e] as usize;
                    vals_all[e * k + f] = x.values[e] * c[i * k + f] / facet_norms[row] * scale;
                    kept_all[e * k + f] = true;
                };
                match noise {
                    Some(nz) => nz.keep[f].iter().for_each(|&e| put(e as usize)),
                    None => (0..x.nnz()).for_each(&mut put),
                }
            }
        }
        let mut offsets = vec![0usize; b + 1];
        let (mut cols, mut vals, mut kept, mut src) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in 0..x.nnz() {
            let ke = &kept_all[e * k..][..k];
            if ke.iter().any(|&v| v) {
                offsets[x.rows[e] as usize + 1] += 1;
                cols.push(x.items[e] as u32);
                vals.extend_from_slice(&vals_all[e * k..][..k]);
                kept.extend_from_slice(ke);
                src.push(e);
            }
        }
        for r in 0..b {
            offsets[r + 1] += offsets[r];
        }
        let first = FacetCsr::new(k, offsets, cols, vals);
        first.times_dense_into(p.get(net.first_w), p.get(net.first_b), &mut h);
        Front {
            items_n,
            item_norms,
            cores_n,
            core_norms,
            c,
            first,
            src,
            kept,
            facet_norms,
            base,
            h,
        }
    }

    /// The encoder part of the forward pass from [`MacridVae::front_hand`]'s output, up to
    /// the decoder's latents (`noise = None`: `z = μ`, for scoring). The decoder runs in
    /// [`MacridVae::forward_hand`] (scoring) or [`MacridVae::decoder_train`] (training).
    pub(super) fn forward_from(
        &self,
        mut front: Front,
        x: &SparseBatch,
        cond: Option<&[f32]>,
        noise: Option<&Noise>,
    ) -> Trace {
        let Dims {
            k, d, b, cd, de, ..
        } = self.dims(x.n_rows);
        let mut h = std::mem::take(&mut front.h);
        tanh_inplace(&mut h);
        // Shared encoder on the K * B rows. The last layer of MacridVAE-C takes [h_k ; c_u]:
        // c_u is the same for every facet, so its product is made once per user and added to
        // each facet's rows (a side input repeated K times).
        let side = cond.map(|c| Side::new(c, k));
        let (enc_out, enc) = self.net.encoder.forward(&self.params, h, side, k * b);
        let mut mu = vec![0f32; k * b * d];
        mu.par_chunks_exact_mut(d)
            .zip(enc_out.par_chunks_exact(2 * d))
            .for_each(|(m, o)| m.copy_from_slice(&o[..d]));
        let mu_norms = normalise_rows(&mut mu, d);
        let (mut sigma, mut z, mut z_norms) = (Vec::new(), mu.clone(), Vec::new());
        if let Some(nz) = noise {
            let std0 = self.config.std0 as f32;
            sigma = vec![0f32; k * b * d];
            sigma
                .par_chunks_exact_mut(d)
                .zip(z.par_chunks_exact_mut(d))
                .zip(enc_out.par_chunks_exact(2 * d))
                .zip(nz.eps.par_chunks_exact(d))
                .for_each(|(((s, z), o), e)| {
                    for ((s, z), (h, e)) in s.iter_mut().zip(z).zip(o[d..].iter().zip(e)) {
                        *s = (-0.5 * h).exp() * std0;
                        *z += *s * e;
                    }
                });
            z_norms = normalise_rows(&mut z, d);
        }
        // Latent diffusion on the K * B facet rows (one shared denoiser, the facet embedding
        // added to the time features, c_u repeated per facet like the encoder's).
        let mut diff = None;
        match (&self.diffusion, noise) {
            (None, _) => {}
            (Some(ld), Some(nz)) => {
                // Training: z_t from the sample z_0 = z; the decoder sees normalise(ẑ_0).
                let dr = nz
                    .diff
                    .as_ref()
                    .expect("a diffusion model's step draws its terms");
                let pass = ld.denoiser.diffusion_pass(
                    &self.params,
                    &ld.schedule,
                    ld.mean_type,
                    &z,
                    &dr.steps,
                    &dr.eps,
                    side,
                );
                let mut z_hat = pass.x0_hat.clone();
                let norms = normalise_rows(&mut z_hat, d);
                diff = Some((pass, z_hat, norms));
            }
            (Some(ld), None) if ld.start > 0 => {
                // Scoring: μ taken as z_{t_s}, the reverse chain's ẑ_0 normalised (a chain of
                // no steps leaves μ, already unit-norm, as it is).
                ld.denoiser.reverse(
                    &self.params,
                    &ld.schedule,
                    ld.mean_type,
                    &mut z,
                    ld.start,
                    side,
                    None,
                );
                normalise_rows(&mut z, d);
            }
            (Some(_), None) => {}
        }
        // MacridVAE-C: z̃_k = normalise([z_k ; c_u]), the decoder's latent.
        let (mut zt, mut zt_norms) = (Vec::new(), Vec::new());
        if cd > 0 {
            let cv = cond.expect("a conditioned model runs with conditioning vectors");
            let latent: &[f32] = match &diff {
                Some((_, z_hat, _)) => z_hat,
                None => &z,
            };
            zt = vec![0f32; k * b * de];
            for (r, row) in zt.chunks_exact_mut(de).enumerate() {
                row[..d].copy_from_slice(&latent[r * d..][..d]);
                row[d..].copy_from_slice(&cv[(r % b) * cd..][..cd]);
            }
            zt_norms = normalise_rows(&mut zt, de);
        }
        Trace {
            front,
            enc,
            enc_out,
            mu,
            mu_norms,
            sigma,
            z,
            z_norms,
            diff,
            zt,
            zt_norms,
        }
    }

    /// The training decoder, its loss and its backward pass down to the decoder's latents:
    /// the reconstruction loss (mean over the batch), `dL/dC` `[I, K]`, `dL/dz` `[K * B, de]`
    /// (facet-major rows) and the item embeddings' gradient `[I, de]`.
    ///
    /// The batch is taken in blocks of users ([`decoder_block_users`]), so that the step
    /// holds one block's `Q` (`K x b x I`) instead of the batch's: at Onion scale 146 MB
    /// instead of 4.7 GB, which also spares the first step faulting in gigabytes of fresh
    /// pages. The loss of a user needs all its facets, so each block runs
    /// the decoder, the loss and the decoder's backward pass before the next one. When the
    /// batch fits in one block (ml-100k) the sums are the unblocked ones, bit for bit; with
    /// several blocks `dC` and the item gradient add up block by block (the same terms in
    /// another order).
    fn decoder_train(
        &self,
        t: &Trace,
        xc: &Csr,
        scratch: &mut Scratch,
    ) -> (f64, Vec<f32>, Vec<f32>, Vec<f32>) {
        let Dims {
            k, b, n, tau, de, ..
        } = self.dims(xc.n_rows());
        let inv_tau = 1.0 / tau;
        let inv_b = 1.0 / b.max(1) as f32;
        let (c_all, items_n) = (&t.front.c, &t.front.items_n);
        let dec_z = t.decoder_latents();
        let ct = facet_major(c_all, n, k);
        let bu = scratch
            .block_users
            .unwrap_or_else(|| decoder_block_users(k, b, n))
            .clamp(1, b.max(1));
        let single = bu >= b;
        let mut recon_rows = vec![0f64; b];
        let mut dc = vec![0f32; n * k];
        let mut dz = vec![0f32; k * b * de];
        // The item embeddings' gradient `[I, de]`; the single-block path keeps it transposed.
        let mut d_items = vec![0f32; n * de];
        let mut d_items_t = Vec::new();
        // Every `Q` entry of a block is written (`matmul` without accumulation) before it is
        // read; `probs` is zeroed per block.
        let mut q = std::mem::take(&mut scratch.q);
        q.resize(k * bu * n, 0.0);
        let mut probs = vec![0f32; bu * n];
        let (mut zb, mut dzb) = (Vec::new(), Vec::new());
        // One pass over Q_k in fixed row blocks: dC_ik += Σ_r dp_ri Q_kri (block partial sums,
        // added in block order), then dS_k = dp ⊙ C_{·k} ⊙ Q_k / τ in place of Q_k.
        let colsum_pass = |f: usize, qk: &mut [f32], dprobs: &[f32]| -> Vec<f32> {
            let cf: Vec<f32> = (0..n).map(|i| c_all[i * k + f] * inv_tau).collect();
            let partial: Vec<Vec<f32>> = dprobs
                .par_chunks(n * REDUCE_ROWS)
                .zip(qk.par_chunks_mut(n * REDUCE_ROWS))
                .map(|(g, q)| {
                    let mut s = vec![0f32; n];
                    for (g, q) in g.chunks_exact(n).zip(q.chunks_exact_mut(n)) {
                        for (((s, g), q), c) in s.iter_mut().zip(g).zip(q).zip(&cf) {
                            *s += g * *q;
                            *q *= g * c;
                        }
                    }
                    s
                })
                .collect();
            let mut colsum = vec![0f32; n];
            for s in partial {
                colsum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
            }
            colsum
        };
        // dz_k = dS_k Ĥ for all facets of `dS` (`[rows, I]`) in one product.
        let dz_product = |out: &mut [f32], ds: &[f32]| {
            let rows = ds.len() / n.max(1);
            matmul(out, Mat::new(ds, rows, n), Mat::new(items_n, n, de), false)
        };
        let add_colsum = |dc: &mut [f32], f: usize, colsum: &[f32]| {
            for (i, v) in colsum.iter().enumerate() {
                dc[i * k + f] += v;
            }
        };
        for u0 in (0..b).step_by(bu) {
            let (u1, bb) = ((u0 + bu).min(b), (u0 + bu).min(b) - u0);
            let qb = &mut q[..k * bb * n];
            let pb = &mut probs[..bb * n];
            if u0 > 0 {
                pb.fill(0.0);
            }
            // The block's latents, facet-major (the batch's own rows for a single block).
            let zb: &[f32] = if single {
                dec_z
            } else {
                zb.clear();
                for f in 0..k {
                    zb.extend_from_slice(&dec_z[(f * b + u0) * de..(f * b + u1) * de]);
                }
                &zb
            };
            // Q_k = z_k Ĥᵀ for all facets in one product (the rows' sums are those of one
            // product per facet), then p += exp(Q_k / τ) ⊙ C_{·k} facet by facet.
            matmul(
                qb,
                Mat::new(zb, k * bb, de),
                Mat::new(items_n, n, de).t(),
                false,
            );
            for f in 0..k {
                exp_scaled_accumulate(
                    &mut qb[f * bb * n..][..bb * n],
                    pb,
                    &ct[f * n..][..n],
                    inv_tau,
                );
            }
            // Loss, and dL/dp in place of p: n_u / (B Σp) − x / (B p).
            pb.par_chunks_mut(n)
                .zip(recon_rows[u0..u1].par_iter_mut())
                .enumerate()
                .for_each(|(r, (row, out))| {
                    let sum: f64 = row.iter().map(|&v| v as f64).sum();
                    let mut n_u = 0f32;
                    let mut picked = 0f64;
                    let ents = xc.offsets()[u0 + r]..xc.offsets()[u0 + r + 1];
                    for e in ents.clone() {
                        n_u += xc.values()[e];
                        picked += xc.values()[e] as f64 * (row[xc.cols()[e] as usize] as f64).ln();
                    }
                    let a = (n_u as f64 / sum) as f32 * inv_b;
                    let grads: Vec<(usize, f32)> = ents
                        .map(|e| {
                            let i = xc.cols()[e] as usize;
                            (i, xc.values()[e] * inv_b / row[i])
                        })
                        .collect();
                    row.iter_mut().for_each(|v| *v = a);
                    for (i, g) in grads {
                        row[i] -= g;
                    }
                    *out = n_u as f64 * sum.ln() - picked;
                });
            let dprobs: &[f32] = pb;
            if single {
                // Pipelined: facet f's item-embedding product runs beside facet f + 1's pass
                // (the product alone keeps a second thread only partly busy), the last one
                // beside the dz product. Each still runs in facet order, so the sums are those
                // of the sequential loop. The item embeddings' gradient is kept transposed
                // (`[de, I]`: zᵀ dS is the faster product shape for gemm).
                let d_items_product = |out: &mut [f32], f: usize, qk: &[f32]| {
                    let z_f = &dec_z[f * b * de..][..b * de];
                    matmul(out, Mat::new(z_f, b, de).t(), Mat::new(qk, b, n), true);
                };
                d_items_t = vec![0f32; de * n];
                let mut qs: Vec<&mut [f32]> = qb.chunks_mut(b * n).collect();
                let mut colsum = if k > 0 {
                    colsum_pass(0, qs[0], dprobs)
                } else {
                    Vec::new()
                };
                for f in 0..k {
                    add_colsum(&mut dc, f, &colsum);
                    if f + 1 == k {
                        break;
                    }
                    let (done, next) = qs.split_at_mut(f + 1);
                    let qk: &[f32] = done[f];
                    let d_items_t = &mut d_items_t;
                    colsum = rayon::join(
                        || d_items_product(d_items_t, f, qk),
                        || colsum_pass(f + 1, next[0], dprobs),
                    )
                    .1;
                }
                drop(qs);
                // The last facet's product beside dz_k = dS_k Ĥ for all facets, in one
                // product (each row's sum is the same as in a per-facet product; the K * B
                // rows give gemm more to split across threads).
                let q_all: &[f32] = qb;
                rayon::join(
                    || {
                        if k > 0 {
                            d_items_product(&mut d_items_t, k - 1, &q_all[(k - 1) * b * n..]);
                        }
                    },
                    || dz_product(&mut dz, q_all),
                );
            } else {
                // The facets' passes side by side (a block may have a single row block).
                let colsums: Vec<Vec<f32>> = qb
                    .par_chunks_mut(bb * n)
                    .enumerate()
                    .map(|(f, qk)| colsum_pass(f, qk, dprobs))
                    .collect();
                for (f, colsum) in colsums.iter().enumerate() {
                    add_colsum(&mut dc, f, colsum);
                }
                // All facets of the block in one product each: the item gradient (its
                // `[I, de]` accumulator is read and written once per block, not per facet)
                // beside dz.
                let q_all: &[f32] = qb;
                dzb.resize(k * bb * de, 0.0);
                rayon::join(
                    || {
                        // dĤ += dSᵀ z over the block's K * b rows: at Onion scale this shape
                        // (`[I, de]` out) ran 1.5x faster than zᵀ dS.
                        matmul(
                            &mut d_items,
                            Mat::new(q_all, k * bb, n).t(),
                            Mat::new(zb, k * bb, de),
                            true,
                        )
                    },
                    || dz_product(&mut dzb, q_all),
                );
                for f in 0..k {
                    dz[(f * b + u0) * de..(f * b + u1) * de]
                        .copy_from_slice(&dzb[f * bb * de..][..bb * de]);
                }
            }
        }
        scratch.q = q;
        if single {
            transpose_into(&d_items_t, de, n, &mut d_items);
        }
        let recon = recon_rows.iter().sum::<f64>() / b.max(1) as f64;
        (recon, dc, dz, d_items)
    }

    /// Loss parts and gradients (parameter order) of one training batch from the output of
    /// [`MacridVae::front_hand`]; `scratch` holds the step's large buffers between steps.
    #[allow(clippy::needless_range_loop)] // entries index three parallel arrays
    pub(super) fn loss_and_grads(
        &self,
        front: Front,
        x: &SparseBatch,
        cond: Option<&[f32]>,
        noise: &Noise,
        beta: f64,
        scratch: &mut Scratch,
    ) -> (StepLoss, Grads) {
        let (net, p) = (&self.net, &self.params);
        let Dims {
            k,
            d,
            b,
            n,
            tau,
            cd,
            de,
        } = self.dims(x.n_rows);
        let kb = k * b;
        let inv_tau = 1.0 / tau;
        let mut t = self.forward_from(front, x, cond, Some(noise));
        let xc = x.to_csr();
        let (recon, mut dc, mut dz, mut d_items_n) = self.decoder_train(&t, &xc, scratch);
        // The KL terms in parallel (into their places), summed in order.
        let mut kl_terms = vec![0f64; kb * d];
        kl_terms
            .par_chunks_exact_mut(d)
            .zip(t.enc_out.par_chunks_exact(2 * d))
            .for_each(|(kt, o)| {
                for (kt, &h) in kt.iter_mut().zip(&o[d..]) {
                    *kt = 0.5 * (h as f64 + (-h as f64).exp() - 1.0);
                }
            });
        let kl = kl_terms.iter().sum::<f64>() / b.max(1) as f64;
        if cd > 0 {
            // z̃ = normalise([z ; c_u]); c_u is data, so only the z columns carry on.
            normalise_rows_backward(&mut dz, &t.zt, &t.zt_norms, de);
            dz = dz
                .chunks_exact(de)
                .flat_map(|row| row[..d].iter().copied())
                .collect();
        }
        let mut grads = std::mem::take(&mut scratch.grads);
        if grads.values().len() != p.n_values() {
            grads = p.zero_grads();
        }
        let side = cond.map(|c| Side::new(c, k));
        // Diff-MacridVAE: back through normalise(ẑ_0) and the diffusion term to z_0 = z. The
        // denoising loss is summed over facets (as the KL is), so its weight on the pass's
        // mean over the K * B rows is K λ.
        let mut diff_loss = None;
        if let (Some(ld), Some((pass, z_hat, norms))) = (&self.diffusion, &t.diff) {
            normalise_rows_backward(&mut dz, z_hat, norms, d);
            let lambda = ld.lambda * k as f64;
            dz = ld.denoiser.diffusion_backward(
                p,
                &ld.schedule,
                pass,
                &dz,
                lambda,
                side,
                &mut grads,
            );
            diff_loss = Some((ld.lambda, pass.loss * k as f64));
        }
        // z = normalise(μ + σ ⊙ ε); μ = normalise(μ_raw); σ = exp(−h/2) std0.
        normalise_rows_backward(&mut dz, &t.z, &t.z_norms, d);
        let c_kl = (beta / b.max(1) as f64) as f32;
        let mut dmu = dz.clone();
        normalise_rows_backward(&mut dmu, &t.mu, &t.mu_norms, d);
        let mut dy = vec![0f32; kb * 2 * d];
        dy.par_chunks_exact_mut(2 * d)
            .enumerate()
            .for_each(|(r, g)| {
                let o = &t.enc_out[r * 2 * d..][..2 * d];
                g[..d].copy_from_slice(&dmu[r * d..][..d]);
                for j in 0..d {
                    let s = t.sigma[r * d + j];
                    let ds = dz[r * d + j] * noise.eps[r * d + j];
                    g[d + j] = -0.5 * ds * s + c_kl * 0.5 * (1.0 - (-o[d + j]).exp());
                }
            });
        // Shared encoder backward, then the first layer's tanh and weights.
        let mut dh = std::mem::take(&mut scratch.first_grad);
        net.encoder
            .backward_into(p, &t.enc, &t.enc_out, dy, side, kb, &mut grads, &mut dh);
        let mut dy = dh;
        tanh_backward(&mut dy, t.enc.input(0));
        let hidden = net.hidden;
        t.front
            .first
            .transpose_times_into(&dy, hidden, grads.get_mut(net.first_w));
        grads.set(net.first_b, &col_sums(&dy, hidden));
        // The first layer's values carry gradient to C.
        let dv = t.front.first.value_grads(p.get(net.first_w), &dy, hidden);
        let scale = noise.scale;
        // Facet by facet, each user's kept entries in batch order.
        let (first, kept) = (&t.front.first, &t.front.kept);
        let entries = |r: usize| {
            let (f, u) = (r / b, r % b);
            (first.offsets()[u]..first.offsets()[u + 1]).filter(move |&j| kept[j * k + f])
        };
        if self.config.whole_row_input {
            for r in 0..kb {
                let f = r / b;
                for j in entries(r) {
                    let e = t.front.src[j];
                    dc[x.items[e] as usize * k + f] += dv[j * k + f] * t.front.base[e] * scale;
                }
            }
        } else {
            // u_e = c_e / ‖c‖ · m_e with c_e = x_e C_{i_e k}: dc_e = q_e / ‖c‖ − c_e (Σ q c) / ‖c‖³.
            for r in 0..kb {
                let (f, u) = (r / b, r % b);
                let norm = t.front.facet_norms[r];
                let cval = |e: usize| x.values[e] * t.front.c[x.items[e] as usize * k + f];
                let mut s = 0f32;
                for j in entries(r) {
                    let e = t.front.src[j];
                    let q = dv[j * k + f] * scale;
                    s += q * cval(e);
                    dc[x.items[e] as usize * k + f] += x.values[e] * q / norm;
                }
                let s3 = s / (norm * norm * norm);
                for e in xc.offsets()[u]..xc.offsets()[u + 1] {
                    dc[x.items[e] as usize * k + f] -= x.values[e] * cval(e) * s3;
                }
            }
        }
        // C = softmax(A), A = Ĥ M̂ᵀ / τ (+ Gumbel).
        let mut da = dc;
        for (g, c) in da.chunks_exact_mut(k).zip(t.front.c.chunks_exact(k)) {
            let dot: f32 = g.iter().zip(c).map(|(a, b)| a * b).sum();
            for (g, c) in g.iter_mut().zip(c) {
                *g = c * (*g - dot) * inv_tau;
            }
        }
        matmul(
            &mut d_items_n,
            Mat::new(&da, n, k),
            Mat::new(&t.front.cores_n, k, de),
            true,
        );
        let mut d_cores_n = vec![0f32; k * de];
        matmul(
            &mut d_cores_n,
            Mat::new(&da, n, k).t(),
            Mat::new(&t.front.items_n, n, de),
            false,
        );
        normalise_rows_backward(&mut d_items_n, &t.front.items_n, &t.front.item_norms, de);
        normalise_rows_backward(&mut d_cores_n, &t.front.cores_n, &t.front.core_norms, de);
        grads.set(net.items, &d_items_n);
        grads.set(net.cores, &d_cores_n);
        scratch.first_out = t.enc.take_input(0);
        scratch.first_grad = dy;
        let loss = StepLoss {
            loss: recon + beta * kl + diff_loss.map_or(0.0, |(l, v)| l * v),
            recon,
            kl,
            beta,
            diff: diff_loss.map(|(_, v)| v),
        };
        (loss, grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole batch when its `Q` fits the budget (ml-100k: 10 facets x 943 users x 1,682
    /// items, 63 MB); else whole row blocks within it (Onion: 57,000 items, 2.3 MB a user),
    /// never fewer than one row block or zero users.
    #[test]
    fn decoder_blocks_fit_the_budget() {
        assert_eq!(decoder_block_users(10, 943, 1682), 943);
        let onion = decoder_block_users(10, 2048, 57_000);
        assert_eq!(onion % REDUCE_ROWS, 0);
        assert!(onion * 10 * 57_000 * 4 <= DECODER_BLOCK_BYTES, "{onion}");
        assert!((onion + REDUCE_ROWS) * 10 * 57_000 * 4 > DECODER_BLOCK_BYTES);
        assert_eq!(decoder_block_users(10, 2048, 50_000_000), REDUCE_ROWS);
        assert_eq!(decoder_block_users(10, 0, 1682), 1);
        assert_eq!(decoder_block_users(0, 5, 0), 5);
    }
}
