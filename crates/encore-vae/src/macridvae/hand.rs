//! MacridVAE's forward and backward passes written by hand over [`crate::kernels`] (why: see
//! that module; on ml-100k the burn graph took 4 s per `recbole` step, most of it in
//! materialised `K x B x I` tensors and a gathered `K x nnz x hidden` first layer). The burn
//! version (`MacridVae::loss`) stays as the reference the tests check this one against.
//!
//! Layout: facet-major stacks, row `k * B + r` is user `r`'s facet `k`. The decoder is
//! evaluated one facet at a time (`Q_k = exp(z_k Ĥᵀ / τ)`, `B x I`), accumulating
//! `p = Σ_k Q_k ⊙ C_{·k}`; training keeps the `Q_k` for the backward pass, scoring reuses one
//! buffer. With `logits = ln p`, the multinomial loss's gradient with respect to `p` is
//! `(n_u / Σ_i p_ui − x_ui / p_ui) / B`, so no logarithm is needed in the backward pass.

use rayon::prelude::*;

use super::{MacridVae, Noise, Scratch, StepLoss};
use crate::common::SparseBatch;
use crate::conditioning;
use crate::kernels::{
    add_bias, col_sums, exp_scaled_accumulate, matmul, tanh_backward, tanh_inplace, transpose_into,
    FacetCsr, Mat,
};

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
    /// [`MacridVae::front_hand`]'s output, its `h` moved to `inputs[1]` (after the `tanh`).
    front: Front,
    inputs: Vec<Vec<f32>>,
    enc_out: Vec<f32>,
    mu: Vec<f32>,
    mu_norms: Vec<f32>,
    sigma: Vec<f32>,
    z: Vec<f32>,
    z_norms: Vec<f32>,
    /// MacridVAE-C: `z̃ = normalise([z ; c_u])` `[K * B, d + c]` and its pre-normalisation
    /// norms (empty for the plain model, whose decoder uses `z`).
    zt: Vec<f32>,
    zt_norms: Vec<f32>,
    /// `Q_k` for every facet, `[K, B, I]`.
    q: Vec<f32>,
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

    fn enc_shape(&self, l: usize) -> (usize, usize) {
        let s = &self.params.list[2 + 2 * l].shape;
        (s[0], s[1])
    }

    /// The forward pass on raw batch `x`: `p` `[B, I]` (logits are `ln p`) and the trace.
    /// `noise = None` scores: softmax assignments, no dropout, `z = μ`. `cond`: the batch's
    /// conditioning vectors `[B, c]` (MacridVAE-C; item embeddings and prototypes are then
    /// `d + c` wide). `q`: a buffer for the decoder's `Q_k` (any contents; it comes back in
    /// the trace, so training reuses it from step to step instead of allocating and zeroing
    /// `K x B x I` floats each time).
    pub(super) fn forward_hand(
        &self,
        x: &SparseBatch,
        cond: Option<&[f32]>,
        noise: Option<&Noise>,
        q: Vec<f32>,
    ) -> (Vec<f32>, Trace) {
        self.forward_from(self.front_hand(x, noise, Vec::new()), x, cond, noise, q)
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
        let p = &self.params.list;
        let Dims {
            k, b, n, tau, de, ..
        } = self.dims(x.n_rows);
        let mut items_n = p[0].data.clone();
        let item_norms = normalise_rows(&mut items_n, de);
        let mut cores_n = p[1].data.clone();
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
        let first = FacetCsr {
            n_users: b,
            n_facets: k,
            offsets,
            cols,
            values: vals,
        };
        first.times_dense_into(&p[2].data, &p[3].data, &mut h);
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

    /// The rest of the forward pass from [`MacridVae::front_hand`]'s output (see
    /// [`MacridVae::forward_hand`]).
    pub(super) fn forward_from(
        &self,
        mut front: Front,
        x: &SparseBatch,
        cond: Option<&[f32]>,
        noise: Option<&Noise>,
        mut q: Vec<f32>,
    ) -> (Vec<f32>, Trace) {
        let p = &self.params.list;
        let Dims {
            k,
            d,
            b,
            n,
            tau,
            cd,
            de,
        } = self.dims(x.n_rows);
        let training = noise.is_some();
        let mut h = std::mem::take(&mut front.h);
        let (items_n, c) = (&front.items_n, &front.c);

        // Shared encoder on the K * B rows.
        let n_enc = (p.len() - 2) / 2;
        let mut inputs = vec![Vec::new(); n_enc];
        for (l, slot) in inputs.iter_mut().enumerate().skip(1) {
            tanh_inplace(&mut h);
            let (i, o) = self.enc_shape(l);
            // The last layer of MacridVAE-C takes [h_k ; c_u]: its weight's last `cd` rows
            // multiply c_u, the same for every facet, so that product is made once per user
            // and added to each facet's rows.
            let cr = if l == n_enc - 1 { cd } else { 0 };
            let ih = i - cr;
            let w = &p[2 + 2 * l].data;
            let mut y = vec![0f32; k * b * o];
            matmul(
                &mut y,
                Mat::new(&h, k * b, ih),
                Mat::new(&w[..ih * o], ih, o),
                false,
            );
            if cr > 0 {
                let cv = cond.expect("a conditioned model runs with conditioning vectors");
                let yc = conditioning::cond_product(cv, &w[ih * o..], b, cr, o);
                y.par_chunks_mut(b * o).for_each(|yf| {
                    yf.iter_mut().zip(&yc).for_each(|(a, c)| *a += c);
                });
            }
            add_bias(&mut y, &p[3 + 2 * l].data);
            *slot = std::mem::replace(&mut h, y);
        }
        let enc_out = h;
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
        // MacridVAE-C: z̃_k = normalise([z_k ; c_u]), the decoder's latent.
        let (mut zt, mut zt_norms) = (Vec::new(), Vec::new());
        if cd > 0 {
            let cv = cond.expect("a conditioned model runs with conditioning vectors");
            zt = vec![0f32; k * b * de];
            for (r, row) in zt.chunks_exact_mut(de).enumerate() {
                row[..d].copy_from_slice(&z[r * d..][..d]);
                row[d..].copy_from_slice(&cv[(r % b) * cd..][..cd]);
            }
            zt_norms = normalise_rows(&mut zt, de);
        }
        let dec_z: &[f32] = if cd > 0 { &zt } else { &z };

        // Decoder, one facet at a time: p += exp(z_k Ĥᵀ / τ) ⊙ C_{·k}.
        let ct: Vec<f32> = (0..k)
            .flat_map(|f| (0..n).map(move |i| (f, i)))
            .map(|(f, i)| c[i * k + f])
            .collect();
        let mut probs = vec![0f32; b * n];
        // Every `Q_k` is written in full (`matmul` without accumulation) before it is read.
        q.resize(if training { k * b * n } else { b * n }, 0.0);
        let inv_tau = 1.0 / tau;
        for f in 0..k {
            let qk = if training {
                &mut q[f * b * n..][..b * n]
            } else {
                &mut q[..]
            };
            matmul(
                qk,
                Mat::new(&dec_z[f * b * de..][..b * de], b, de),
                Mat::new(items_n, n, de).t(),
                false,
            );
            exp_scaled_accumulate(qk, &mut probs, &ct[f * n..][..n], inv_tau);
        }
        if !training {
            q = Vec::new();
        }
        (
            probs,
            Trace {
                front,
                inputs,
                enc_out,
                mu,
                mu_norms,
                sigma,
                z,
                z_norms,
                zt,
                zt_norms,
                q,
            },
        )
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
    ) -> (StepLoss, Vec<Option<Vec<f32>>>) {
        let p = &self.params.list;
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
        let (mut probs, mut t) =
            self.forward_from(front, x, cond, Some(noise), std::mem::take(&mut scratch.q));
        let xc = x.to_csr();
        let inv_b = 1.0 / b.max(1) as f32;
        // Loss, and dL/dp in place of p: n_u / (B Σp) − x / (B p).
        let recon_rows: Vec<f64> = probs
            .par_chunks_mut(n)
            .enumerate()
            .map(|(r, row)| {
                let sum: f64 = row.iter().map(|&v| v as f64).sum();
                let mut n_u = 0f32;
                let mut picked = 0f64;
                let ents = xc.offsets[r]..xc.offsets[r + 1];
                for e in ents.clone() {
                    n_u += xc.values[e];
                    picked += xc.values[e] as f64 * (row[xc.cols[e] as usize] as f64).ln();
                }
                let a = (n_u as f64 / sum) as f32 * inv_b;
                let grads: Vec<(usize, f32)> = ents
                    .map(|e| {
                        let i = xc.cols[e] as usize;
                        (i, xc.values[e] * inv_b / row[i])
                    })
                    .collect();
                row.iter_mut().for_each(|v| *v = a);
                for (i, g) in grads {
                    row[i] -= g;
                }
                n_u as f64 * sum.ln() - picked
            })
            .collect();
        let dprobs = probs;
        let recon = recon_rows.iter().sum::<f64>() / b.max(1) as f64;
        // The terms in parallel (into their places), summed in order.
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

        // Decoder backward, per facet.
        let mut dc = vec![0f32; n * k];
        // The decoder's latent is z (plain) or z̃ (conditioned), `de` wide.
        let mut dz = vec![0f32; kb * de];
        let mut d_items_t = vec![0f32; de * n];
        let dec_z: &[f32] = if cd > 0 { &t.zt } else { &t.z };
        // One pass over Q_k in fixed row blocks: dC_ik += Σ_r dp_ri Q_kri (block partial sums,
        // added in block order), then dS_k = dp ⊙ C_{·k} ⊙ Q_k / τ in place of Q_k.
        let c_all = &t.front.c;
        let dprobs = &dprobs;
        let colsum_pass = |f: usize, qk: &mut [f32]| -> Vec<f32> {
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
        // Pipelined: facet f's item-embedding product runs beside facet f + 1's pass (the
        // product alone keeps a second thread only partly busy), the last one beside the dz
        // product. Each still runs in facet order, so the sums are those of the sequential
        // loop.
        // The item embeddings' gradient, transposed (`[de, I]`: zᵀ dS is the faster product
        // shape for gemm); transposed back after the last facet.
        let d_items_product = |out: &mut [f32], f: usize, qk: &[f32]| {
            let z_f = &dec_z[f * b * de..][..b * de];
            matmul(out, Mat::new(z_f, b, de).t(), Mat::new(qk, b, n), true);
        };
        let mut qs: Vec<&mut [f32]> = t.q.chunks_mut(b * n).collect();
        let mut colsum = if k > 0 {
            colsum_pass(0, qs[0])
        } else {
            Vec::new()
        };
        for f in 0..k {
            for (i, v) in colsum.iter().enumerate() {
                dc[i * k + f] += v;
            }
            if f + 1 == k {
                break;
            }
            let (done, next) = qs.split_at_mut(f + 1);
            let qk: &[f32] = done[f];
            let d_items_t = &mut d_items_t;
            colsum = rayon::join(
                || d_items_product(d_items_t, f, qk),
                || colsum_pass(f + 1, next[0]),
            )
            .1;
        }
        drop(qs);
        // The last facet's product beside dz_k = dS_k Ĥ for all facets, in one product (each
        // row's sum is the same as in a per-facet product; the K * B rows give gemm more to
        // split across threads).
        let q_all = &t.q;
        let items_n = &t.front.items_n;
        rayon::join(
            || {
                if k > 0 {
                    d_items_product(&mut d_items_t, k - 1, &q_all[(k - 1) * b * n..][..b * n]);
                }
            },
            || {
                matmul(
                    &mut dz,
                    Mat::new(q_all, kb, n),
                    Mat::new(items_n, n, de),
                    false,
                )
            },
        );
        let mut d_items_n = vec![0f32; n * de];
        transpose_into(&d_items_t, de, n, &mut d_items_n);
        if cd > 0 {
            // z̃ = normalise([z ; c_u]); c_u is data, so only the z columns carry on.
            normalise_rows_backward(&mut dz, &t.zt, &t.zt_norms, de);
            dz = dz
                .chunks_exact(de)
                .flat_map(|row| row[..d].iter().copied())
                .collect();
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
        // Shared encoder backward.
        let n_enc = (p.len() - 2) / 2;
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; p.len()];
        for l in (1..n_enc).rev() {
            let (i, o) = self.enc_shape(l);
            let cr = if l == n_enc - 1 { cd } else { 0 };
            let ih = i - cr;
            let a = &t.inputs[l];
            // Written in full by the product (`accumulate` false).
            let mut da = if l == 1 {
                let mut buf = std::mem::take(&mut scratch.first_grad);
                buf.resize(kb * ih, 0.0);
                buf
            } else {
                vec![0f32; kb * ih]
            };
            let w = &p[2 + 2 * l].data;
            let dy_ref = &dy;
            // The weight gradient (a product with long sums that gemm splits unevenly over
            // threads) runs beside the input gradient.
            let ((dw, db), ()) = rayon::join(
                || {
                    // dWᵀ = dYᵀ A is the faster product shape for gemm here (`[o, ih]` over
                    // the `K * B` rows); the sums are the same bits as Aᵀ dY's.
                    let mut dwt = vec![0f32; o * ih];
                    matmul(
                        &mut dwt,
                        Mat::new(dy_ref, kb, o).t(),
                        Mat::new(a, kb, ih),
                        false,
                    );
                    let mut dw = vec![0f32; i * o];
                    transpose_into(&dwt, o, ih, &mut dw[..ih * o]);
                    if cr > 0 {
                        // The c_u rows: Σ_k c_uᵀ dY_k = c_uᵀ (Σ_k dY_k), facets summed in
                        // order.
                        let cv = cond.expect("conditioning vectors of a conditioned model");
                        let mut dsum = dy_ref[..b * o].to_vec();
                        for f in 1..k {
                            dsum.iter_mut()
                                .zip(&dy_ref[f * b * o..][..b * o])
                                .for_each(|(s, g)| *s += g);
                        }
                        matmul(
                            &mut dw[ih * o..],
                            Mat::new(cv, b, cr).t(),
                            Mat::new(&dsum, b, o),
                            false,
                        );
                    }
                    (dw, col_sums(dy_ref, o))
                },
                || {
                    matmul(
                        &mut da,
                        Mat::new(dy_ref, kb, o),
                        Mat::new(&w[..ih * o], ih, o).t(),
                        false,
                    );
                    tanh_backward(&mut da, a);
                },
            );
            grads[2 + 2 * l] = Some(dw);
            grads[3 + 2 * l] = Some(db);
            dy = da;
        }
        let hidden = self.enc_shape(0).1;
        grads[2] = Some(t.front.first.transpose_times(&dy, hidden, n));
        grads[3] = Some(col_sums(&dy, hidden));
        // The first layer's values carry gradient to C.
        let dv = t.front.first.value_grads(&p[2].data, &dy, hidden);
        let scale = noise.scale;
        // Facet by facet, each user's kept entries in batch order.
        let (first, kept) = (&t.front.first, &t.front.kept);
        let entries = |r: usize| {
            let (f, u) = (r / b, r % b);
            (first.offsets[u]..first.offsets[u + 1]).filter(move |&j| kept[j * k + f])
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
                for e in xc.offsets[u]..xc.offsets[u + 1] {
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
        grads[0] = Some(d_items_n);
        grads[1] = Some(d_cores_n);
        scratch.q = std::mem::take(&mut t.q);
        scratch.first_out = std::mem::take(&mut t.inputs[1]);
        scratch.first_grad = dy;
        let loss = StepLoss {
            loss: recon + beta * kl,
            recon,
            kl,
            beta,
        };
        (loss, grads)
    }
}
