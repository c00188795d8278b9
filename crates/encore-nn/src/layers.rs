//! Layers over a [`ParamStore`]: [`Dense`] (with activation and optional side-input rows),
//! [`SparseDense`] (the first layer on a sparse batch), [`Mlp`] (a stack of dense layers) and
//! [`Dropout`]. Each has a `forward` that returns what the backward pass needs and a
//! `backward` that writes the gradients of its parameters into [`Grads`] under their names
//! and returns the gradient with respect to its input.
//!
//! Conventions: batches are row-major `[rows, width]`; a weight is `[inputs, outputs]`
//! (`y = a W + b`, the layout the safetensors files have always had); the gradient passed to
//! `backward` is with respect to the layer's output *after* its activation, and it is
//! overwritten (the activation's derivative is applied to it in place).
//!
//! Every product goes to [`matmul`](fn@crate::matmul) and every sum has a fixed order, so results
//! do not depend on the thread count; the tests check each layer's gradients against burn's
//! autodiff.

use rayon::prelude::*;

use crate::kernels::{add_bias, col_sums, tanh_backward, tanh_inplace};
use crate::params::{Grads, ParamId, ParamStore};
use crate::{matmul, matmul_rows_alone, transpose_into, Csr, Mat, PackedColumns};

/// The element-wise function after a layer's affine map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Tanh,
}

impl Activation {
    fn forward(self, y: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::Tanh => tanh_inplace(y),
        }
    }

    /// `dy ← dy ⊙ f'(x)` given the output `y = f(x)`.
    fn backward(self, dy: &mut [f32], y: &[f32]) {
        match self {
            Activation::Identity => {}
            Activation::Tanh => {
                assert_eq!(
                    dy.len(),
                    y.len(),
                    "the tanh backward needs the layer's output"
                );
                tanh_backward(dy, y)
            }
        }
    }
}

/// Side input of a [`Dense`] layer: rows `[rows / repeats, side]` shared by `repeats`
/// consecutive blocks of the batch (block-major: batch row `k * b + r` uses side row `r`).
/// MultiVAE-C feeds the user's conditioning vector `c_u` this way (`repeats = 1`), MacridVAE-C
/// once per facet (`repeats = K`), so `[h ; c_u]` is never built as one matrix.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    pub values: &'a [f32],
    pub repeats: usize,
}

impl<'a> Side<'a> {
    /// The same side rows for every block of the batch.
    pub fn new(values: &'a [f32], repeats: usize) -> Self {
        Side { values, repeats }
    }
}

/// `y = f(a W[..inputs] + s W[inputs..] + b)`: a dense layer whose weight `[inputs + side,
/// outputs]` has its side-input rows last. The side input is data (no gradient flows to it),
/// so its product is one `[b, side] x [side, outputs]` product per batch whatever `repeats`,
/// made into its own buffer and added: accumulated by `gemm` into the main product it would
/// round differently for one row than for many, and scoring one user (fold-in) must equal
/// scoring a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub weight: ParamId,
    pub bias: ParamId,
    inputs: usize,
    side: usize,
    outputs: usize,
    activation: Activation,
    /// Compute `dW` as `(dYᵀ A)ᵀ` (see [`Dense::with_weight_grad_via_transpose`]).
    via_transpose: bool,
}

impl Dense {
    /// Register `{prefix}.weight` `[inputs + side, outputs]` and `{prefix}.bias` `[outputs]`
    /// in `store` with the given initial values.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        (inputs, side, outputs): (usize, usize, usize),
        activation: Activation,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        let weight = store.add(
            &format!("{prefix}.weight"),
            vec![inputs + side, outputs],
            weight,
        );
        let bias = store.add(&format!("{prefix}.bias"), vec![outputs], bias);
        Dense {
            weight,
            bias,
            inputs,
            side,
            outputs,
            activation,
            via_transpose: false,
        }
    }

    /// Compute the weight gradient as `(dYᵀ A)ᵀ` (into a temporary, then transposed) instead
    /// of `Aᵀ dY` written in place. The sums are the same, bit for bit (`gemm` adds along the
    /// inner dimension in the same order for either shape; a test checks it); the choice is
    /// speed only: on tall batches (MacridVAE's `K x B` facet rows) `gemm` runs the
    /// transposed shape faster, on ml-100k's MultiVAE batches the in-place form is faster.
    pub fn with_weight_grad_via_transpose(mut self) -> Self {
        self.via_transpose = true;
        self
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Width of the side input (0: none).
    pub fn side(&self) -> usize {
        self.side
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn activation(&self) -> Activation {
        self.activation
    }

    fn side_of<'a>(&self, side: Option<Side<'a>>, rows: usize) -> Option<Side<'a>> {
        if self.side == 0 {
            return None;
        }
        let s = side.expect("a layer with side-input rows needs the side input");
        assert!(
            s.repeats > 0 && rows.is_multiple_of(s.repeats),
            "side repeats"
        );
        assert_eq!(
            s.values.len(),
            rows / s.repeats * self.side,
            "side input size"
        );
        Some(s)
    }

    /// The output `[rows, outputs]` for input `a` `[rows, inputs]`.
    pub fn forward(
        &self,
        store: &ParamStore,
        a: &[f32],
        side: Option<Side<'_>>,
        rows: usize,
    ) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.outputs];
        self.forward_into(store, a, side, rows, &mut y);
        y
    }

    /// [`Dense::forward`] into `y` `[rows, outputs]` (any contents; overwritten).
    pub fn forward_into(
        &self,
        store: &ParamStore,
        a: &[f32],
        side: Option<Side<'_>>,
        rows: usize,
        y: &mut [f32],
    ) {
        let (ih, o) = (self.inputs, self.outputs);
        let w = store.get(self.weight);
        matmul(
            y,
            Mat::new(a, rows, ih),
            Mat::new(&w[..ih * o], ih, o),
            false,
        );
        if let Some(s) = self.side_of(side, rows) {
            let b = rows / s.repeats;
            let mut ys = vec![0f32; b * o];
            matmul(
                &mut ys,
                Mat::new(s.values, b, self.side),
                Mat::new(&w[ih * o..], self.side, o),
                false,
            );
            y.par_chunks_mut(b * o).for_each(|yb| {
                yb.iter_mut().zip(&ys).for_each(|(a, c)| *a += c);
            });
        }
        add_bias(y, store.get(self.bias));
        self.activation.forward(y);
    }

    /// [`Dense::forward_into`] for a layer without side input, with every row computed as if
    /// it were alone (`rows = 1`), bit for bit, while the weight is read once for all rows:
    /// several listeners folded in together get exactly their scores alone. `packed` is this
    /// layer's weight as [`PackedColumns`] (faster), else [`matmul_rows_alone`] is used.
    pub fn forward_rows_alone(
        &self,
        store: &ParamStore,
        a: &[f32],
        rows: usize,
        y: &mut [f32],
        packed: Option<&PackedColumns>,
    ) {
        assert_eq!(self.side, 0, "rows alone: a layer without side input");
        let (ih, o) = (self.inputs, self.outputs);
        match packed {
            Some(p) => p.rows_alone(y, a, rows),
            None => {
                let w = store.get(self.weight);
                matmul_rows_alone(y, a, rows, Mat::new(&w[..ih * o], ih, o));
            }
        }
        add_bias(y, store.get(self.bias));
        self.activation.forward(y);
    }

    /// Gradients of the weight and bias into `grads`, the input gradient `[rows, inputs]`
    /// into `da` (resized; contents overwritten). `a` is the forward input, `y` the forward
    /// output (read only behind an activation), `dy` the gradient with respect to `y`
    /// (overwritten by the gradient before the activation).
    ///
    /// `dW = Aᵀ dY` (or `(dYᵀ A)ᵀ`, [`Dense::with_weight_grad_via_transpose`]) runs beside
    /// `dA = dY Wᵀ`. The side rows get `Sᵀ Σ_k dY_k`, blocks summed in order. The gradients
    /// are written over whatever `grads` held for this layer.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        store: &ParamStore,
        a: &[f32],
        y: &[f32],
        dy: &mut [f32],
        side: Option<Side<'_>>,
        rows: usize,
        grads: &mut Grads,
        da: &mut Vec<f32>,
    ) {
        let (ih, o) = (self.inputs, self.outputs);
        assert_eq!(a.len(), rows * ih, "layer input size");
        assert_eq!(dy.len(), rows * o, "output gradient size");
        self.activation.backward(dy, y);
        let side = self.side_of(side, rows);
        let w = store.get(self.weight);
        let dy: &[f32] = dy;
        let (gw, gb) = grads.get2_mut(self.weight, self.bias);
        da.resize(rows * ih, 0.0);
        rayon::join(
            || {
                if self.via_transpose {
                    let mut dwt = vec![0f32; o * ih];
                    matmul(
                        &mut dwt,
                        Mat::new(dy, rows, o).t(),
                        Mat::new(a, rows, ih),
                        false,
                    );
                    transpose_into(&dwt, o, ih, &mut gw[..ih * o]);
                } else {
                    matmul(
                        &mut gw[..ih * o],
                        Mat::new(a, rows, ih).t(),
                        Mat::new(dy, rows, o),
                        false,
                    );
                }
                if let Some(s) = side {
                    let b = rows / s.repeats;
                    let mut dsum = dy[..b * o].to_vec();
                    for f in 1..s.repeats {
                        dsum.iter_mut()
                            .zip(&dy[f * b * o..][..b * o])
                            .for_each(|(s, g)| *s += g);
                    }
                    matmul(
                        &mut gw[ih * o..],
                        Mat::new(s.values, b, self.side).t(),
                        Mat::new(&dsum, b, o),
                        false,
                    );
                }
                gb.copy_from_slice(&col_sums(dy, o));
            },
            || {
                matmul(
                    da,
                    Mat::new(dy, rows, o),
                    Mat::new(&w[..ih * o], ih, o).t(),
                    false,
                );
            },
        );
    }
}

/// The first layer on a sparse batch: `y = f(X W + b)`, `X` a [`Csr`] `[rows, n_cols]`,
/// `W` `[n_cols, outputs]`. The product is a gather of weight rows (never a dense `X`).
#[derive(Clone, Debug, PartialEq)]
pub struct SparseDense {
    pub weight: ParamId,
    pub bias: ParamId,
    n_cols: usize,
    outputs: usize,
    activation: Activation,
}

impl SparseDense {
    /// Register `{prefix}.weight` `[n_cols, outputs]` and `{prefix}.bias` `[outputs]`.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        (n_cols, outputs): (usize, usize),
        activation: Activation,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        let weight = store.add(&format!("{prefix}.weight"), vec![n_cols, outputs], weight);
        let bias = store.add(&format!("{prefix}.bias"), vec![outputs], bias);
        SparseDense {
            weight,
            bias,
            n_cols,
            outputs,
            activation,
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The output `[x.n_rows(), outputs]`.
    pub fn forward(&self, store: &ParamStore, x: &Csr) -> Vec<f32> {
        let mut y = x.times_dense(store.get(self.weight), store.get(self.bias));
        self.activation.forward(&mut y);
        y
    }

    /// Gradients of the weight (`Xᵀ dY`, a scatter-add in batch order) and bias; no input
    /// gradient (the input is data). `y` and `dy` as in [`Dense::backward`].
    pub fn backward(&self, x: &Csr, y: &[f32], dy: &mut [f32], grads: &mut Grads) {
        assert_eq!(dy.len(), x.n_rows() * self.outputs, "output gradient size");
        self.activation.backward(dy, y);
        x.transpose_times_into(dy, self.outputs, grads.get_mut(self.weight));
        grads.set(self.bias, &col_sums(dy, self.outputs));
    }
}

/// A stack of [`Dense`] layers, each feeding the next.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    layers: Vec<Dense>,
}

/// What [`Mlp::forward`] keeps for the backward pass: each layer's input (the output of
/// layer `l` is the input of `l + 1`; the last output is returned, not kept).
#[derive(Clone, Debug, Default)]
pub struct MlpTrace {
    inputs: Vec<Vec<f32>>,
}

impl MlpTrace {
    /// The input of layer `l`.
    pub fn input(&self, l: usize) -> &[f32] {
        &self.inputs[l]
    }

    /// Take the input of layer `l` out of the trace (to reuse its buffer once the backward
    /// pass is done).
    pub fn take_input(&mut self, l: usize) -> Vec<f32> {
        std::mem::take(&mut self.inputs[l])
    }
}

impl Mlp {
    /// Layers in order; each layer's `inputs` must equal the previous one's `outputs`.
    pub fn new(layers: Vec<Dense>) -> Self {
        assert!(!layers.is_empty(), "an MLP has at least one layer");
        for w in layers.windows(2) {
            assert_eq!(w[0].outputs, w[1].inputs, "consecutive layer widths");
        }
        Mlp { layers }
    }

    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    pub fn outputs(&self) -> usize {
        self.layers[self.layers.len() - 1].outputs
    }

    /// The output `[rows, outputs]` for `x` `[rows, inputs]`; `side` goes to every layer with
    /// side-input rows.
    pub fn forward(
        &self,
        store: &ParamStore,
        x: Vec<f32>,
        side: Option<Side<'_>>,
        rows: usize,
    ) -> (Vec<f32>, MlpTrace) {
        let mut out = vec![0f32; rows * self.outputs()];
        let trace = self.forward_into(store, x, side, rows, &mut out);
        (out, trace)
    }

    /// The input of the last layer `[rows, last.inputs()]` for `x` `[rows, inputs]`: every
    /// layer but the last, computed as [`Mlp::forward_into`] computes them (no trace kept).
    pub fn forward_front(
        &self,
        store: &ParamStore,
        x: Vec<f32>,
        side: Option<Side<'_>>,
        rows: usize,
    ) -> Vec<f32> {
        let (_, front) = self.layers.split_last().expect("at least one layer");
        let mut h = x;
        for layer in front {
            h = layer.forward(store, &h, side, rows);
        }
        h
    }

    /// [`Mlp::forward`] with the last layer's output written into `out` `[rows, outputs]`.
    pub fn forward_into(
        &self,
        store: &ParamStore,
        x: Vec<f32>,
        side: Option<Side<'_>>,
        rows: usize,
        out: &mut [f32],
    ) -> MlpTrace {
        let (last, front) = self.layers.split_last().expect("at least one layer");
        let mut trace = MlpTrace::default();
        let mut h = x;
        for layer in front {
            let y = layer.forward(store, &h, side, rows);
            trace.inputs.push(std::mem::replace(&mut h, y));
        }
        last.forward_into(store, &h, side, rows, out);
        trace.inputs.push(h);
        trace
    }

    /// The backward pass: `out` is the last layer's output (read only when it has an
    /// activation), `dy` the gradient with respect to it (overwritten). Returns the gradient
    /// with respect to the MLP's input.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        store: &ParamStore,
        trace: &MlpTrace,
        out: &[f32],
        dy: Vec<f32>,
        side: Option<Side<'_>>,
        rows: usize,
        grads: &mut Grads,
    ) -> Vec<f32> {
        let mut dx = Vec::new();
        self.backward_into(store, trace, out, dy, side, rows, grads, &mut dx);
        dx
    }

    /// [`Mlp::backward`] with the input gradient written into `dx` (resized; a buffer kept
    /// between steps saves faulting in fresh pages for a large batch).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into(
        &self,
        store: &ParamStore,
        trace: &MlpTrace,
        out: &[f32],
        dy: Vec<f32>,
        side: Option<Side<'_>>,
        rows: usize,
        grads: &mut Grads,
        dx: &mut Vec<f32>,
    ) {
        let mut dy = dy;
        let n = self.layers.len();
        for l in (0..n).rev() {
            let y: &[f32] = if l + 1 < n { &trace.inputs[l + 1] } else { out };
            let a = &trace.inputs[l];
            if l == 0 {
                self.layers[l].backward(store, a, y, &mut dy, side, rows, grads, dx);
            } else {
                let mut da = Vec::new();
                self.layers[l].backward(store, a, y, &mut dy, side, rows, grads, &mut da);
                dy = da;
            }
        }
    }
}

/// Inverted dropout: each value kept with probability `1 − p` and scaled by `1 / (1 − p)`,
/// one draw per value in order (`rng.random::<f64>() >= p` keeps it), no draw when `p <= 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// `p` in `[0, 1)` (panics otherwise: configurations are checked before a model is built).
    pub fn new(p: f64) -> Self {
        assert!((0.0..1.0).contains(&p), "dropout probability in [0, 1)");
        Dropout { p }
    }

    /// Dropout on a sparse batch's entries (dropped entries are removed: they would
    /// contribute zero).
    pub fn forward_csr(&self, x: &Csr, rng: &mut impl rand::Rng) -> Csr {
        x.dropped_out(self.p, rng)
    }

    /// Dropout on dense values in place; returns the per-value scale (`0` or `1 / (1 − p)`)
    /// the backward pass multiplies by (empty when `p <= 0`: the identity).
    pub fn forward(&self, x: &mut [f32], rng: &mut impl rand::Rng) -> Vec<f32> {
        if self.p <= 0.0 {
            return Vec::new();
        }
        let scale = (1.0 / (1.0 - self.p)) as f32;
        let mask: Vec<f32> = (0..x.len())
            .map(|_| {
                if rng.random::<f64>() >= self.p {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        x.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
        mask
    }

    /// `dy ← dy ⊙ mask`.
    pub fn backward(&self, mask: &[f32], dy: &mut [f32]) {
        if mask.is_empty() {
            return;
        }
        dy.iter_mut().zip(mask).for_each(|(g, m)| *g *= m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    fn tensor<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::<D>::from_data(TensorData::new(v.to_vec(), shape), device).require_grad()
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-5 + 1e-4 * b.abs(), "{what}: {a} vs {b}");
        }
        assert!(got.iter().any(|&v| v != 0.0), "{what} is all zero");
    }

    fn act(t: Tensor<2>, a: Activation) -> Tensor<2> {
        match a {
            Activation::Identity => t,
            Activation::Tanh => t.tanh(),
        }
    }

    /// The burn graph of one dense layer: `f([a ; s_rep] W + b)` with the side rows repeated
    /// per block and concatenated as columns.
    fn burn_dense(
        a: Tensor<2>,
        side: Option<(&[f32], usize, usize)>,
        w: &Tensor<2>,
        b: &Tensor<1>,
        f: Activation,
        device: &Device,
    ) -> Tensor<2> {
        let input = match side {
            None => a,
            Some((s, rows_per_block, width)) => {
                let st = Tensor::<2>::from_data(
                    TensorData::new(s.to_vec(), [rows_per_block, width]),
                    device,
                );
                let repeats = a.dims()[0] / rows_per_block;
                let rep = Tensor::cat(vec![st; repeats], 0);
                Tensor::cat(vec![a, rep], 1)
            }
        };
        act(input.matmul(w.clone()) + b.clone().unsqueeze_dim::<2>(0), f)
    }

    /// One dense layer, with and without side rows (repeated over 1 and 3 blocks) and each
    /// activation: output, weight, bias and input gradients against burn's autodiff of
    /// `Σ y ⊙ r` (so `dL/dy = r`).
    #[test]
    fn dense_matches_burn_autodiff() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (side, repeats, f, via_t) in [
            (0, 1, Activation::Tanh, false),
            (0, 1, Activation::Identity, true),
            (3, 1, Activation::Tanh, true),
            (2, 3, Activation::Identity, false),
        ] {
            let (b, ih, o) = (4, 5, 6);
            let rows = b * repeats;
            let mut store = ParamStore::new();
            let wv = values(&mut rng, (ih + side) * o);
            let bv = values(&mut rng, o);
            let mut layer = Dense::new(&mut store, "l", (ih, side, o), f, wv.clone(), bv.clone());
            if via_t {
                layer = layer.with_weight_grad_via_transpose();
            }
            let a = values(&mut rng, rows * ih);
            let s = values(&mut rng, b * side);
            let r = values(&mut rng, rows * o);
            let side_in = (side > 0).then(|| Side::new(&s, repeats));
            let y = layer.forward(&store, &a, side_in, rows);
            let mut grads = store.zero_grads();
            let mut dy = r.clone();
            let mut da = Vec::new();
            layer.backward(&store, &a, &y, &mut dy, side_in, rows, &mut grads, &mut da);

            let device = Device::flex().autodiff();
            let (at, wt, bt) = (
                tensor(&a, [rows, ih], &device),
                tensor(&wv, [ih + side, o], &device),
                tensor(&bv, [o], &device),
            );
            let yt = burn_dense(
                at.clone(),
                (side > 0).then_some((&s[..], b, side)),
                &wt,
                &bt,
                f,
                &device,
            );
            close(&y, &host(yt.clone()), "output");
            let loss = (yt * Tensor::<2>::from_data(TensorData::new(r, [rows, o]), &device)).sum();
            let g = loss.backward();
            let what = format!("side {side} x{repeats} {f:?}");
            close(grads.get(layer.weight), &host(wt.grad(&g).unwrap()), &what);
            close(grads.get(layer.bias), &host(bt.grad(&g).unwrap()), &what);
            close(&da, &host(at.grad(&g).unwrap()), &what);
        }
    }

    /// The sparse first layer (with an empty row) against burn on the densified batch.
    #[test]
    fn sparse_dense_matches_burn_autodiff() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (n_cols, o) = (7, 4);
        let rows: Vec<Vec<(u32, f32)>> = vec![
            vec![(0, 0.5), (3, 1.0), (6, 0.25)],
            vec![],
            vec![(3, 2.0), (4, 1.5)],
        ];
        let mut offsets = vec![0];
        let (mut cols, mut vals) = (Vec::new(), Vec::new());
        for row in &rows {
            for &(c, v) in row {
                cols.push(c);
                vals.push(v);
            }
            offsets.push(cols.len());
        }
        let x = Csr::new(offsets, cols, vals);
        let mut dense = vec![0f32; rows.len() * n_cols];
        for (r, row) in rows.iter().enumerate() {
            for &(c, v) in row {
                dense[r * n_cols + c as usize] = v;
            }
        }
        let mut store = ParamStore::new();
        let (wv, bv) = (values(&mut rng, n_cols * o), values(&mut rng, o));
        let layer = SparseDense::new(
            &mut store,
            "enc.0",
            (n_cols, o),
            Activation::Tanh,
            wv.clone(),
            bv.clone(),
        );
        let r = values(&mut rng, rows.len() * o);
        let y = layer.forward(&store, &x);
        let mut grads = store.zero_grads();
        let mut dy = r.clone();
        layer.backward(&x, &y, &mut dy, &mut grads);

        let device = Device::flex().autodiff();
        let (wt, bt) = (tensor(&wv, [n_cols, o], &device), tensor(&bv, [o], &device));
        let xt = Tensor::<2>::from_data(TensorData::new(dense, [rows.len(), n_cols]), &device);
        let yt = burn_dense(xt, None, &wt, &bt, Activation::Tanh, &device);
        close(&y, &host(yt.clone()), "output");
        let rt = Tensor::<2>::from_data(TensorData::new(r, [rows.len(), o]), &device);
        let g = (yt * rt).sum().backward();
        // Rows of W for columns no entry touches get zero gradient; compare all of it.
        let want = host(wt.grad(&g).unwrap());
        for (a, b) in grads.get(layer.weight).iter().zip(&want) {
            assert!((a - b).abs() < 1e-5 + 1e-4 * b.abs(), "{a} vs {b}");
        }
        close(grads.get(layer.bias), &host(bt.grad(&g).unwrap()), "bias");
    }

    fn tiny_mlp(store: &mut ParamStore, rng: &mut ChaCha8Rng, side: usize) -> Mlp {
        let widths = [5, 8, 6, 3];
        let n = widths.len() - 1;
        Mlp::new(
            (0..n)
                .map(|l| {
                    let s = if l == 1 { side } else { 0 };
                    let (i, o) = (widths[l], widths[l + 1]);
                    let f = if l + 1 < n {
                        Activation::Tanh
                    } else {
                        Activation::Identity
                    };
                    let (w, b) = (values(rng, (i + s) * o), values(rng, o));
                    Dense::new(store, &format!("mlp.{l}"), (i, s, o), f, w, b)
                })
                .collect(),
        )
    }

    /// A three-layer MLP with side rows on its middle layer: every parameter's gradient and
    /// the input gradient against burn.
    #[test]
    fn mlp_matches_burn_autodiff() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut store = ParamStore::new();
        let mlp = tiny_mlp(&mut store, &mut rng, 2);
        let rows = 4;
        let x = values(&mut rng, rows * mlp.inputs());
        let s = values(&mut rng, rows * 2);
        let r = values(&mut rng, rows * mlp.outputs());
        let side = Some(Side::new(&s, 1));
        let (y, trace) = mlp.forward(&store, x.clone(), side, rows);
        let mut out = vec![7f32; y.len()];
        mlp.forward_into(&store, x.clone(), side, rows, &mut out);
        assert_eq!(out, y, "forward_into writes the same output");
        let mut grads = store.zero_grads();
        let dx = mlp.backward(&store, &trace, &y, r.clone(), side, rows, &mut grads);

        let device = Device::flex().autodiff();
        let xt = tensor(&x, [rows, mlp.inputs()], &device);
        let mut h = xt.clone();
        let mut params = Vec::new();
        for layer in mlp.layers() {
            let shape = store.shape(layer.weight).to_vec();
            let wt = tensor(store.get(layer.weight), [shape[0], shape[1]], &device);
            let bt = tensor(store.get(layer.bias), [layer.outputs()], &device);
            let sd = (layer.side() > 0).then_some((&s[..], rows, 2));
            h = burn_dense(h, sd, &wt, &bt, layer.activation(), &device);
            params.push((layer.clone(), wt, bt));
        }
        close(&y, &host(h.clone()), "output");
        let rt = Tensor::<2>::from_data(TensorData::new(r, [rows, mlp.outputs()]), &device);
        let g = (h * rt).sum().backward();
        for (layer, wt, bt) in params {
            let name = store.name(layer.weight).to_string();
            close(grads.get(layer.weight), &host(wt.grad(&g).unwrap()), &name);
            close(grads.get(layer.bias), &host(bt.grad(&g).unwrap()), &name);
        }
        close(&dx, &host(xt.grad(&g).unwrap()), "input gradient");
    }

    /// Dropout: the kept fraction, the scale, and the gradient against burn's autodiff of the
    /// same masked product.
    #[test]
    fn dropout_scales_kept_values_and_matches_burn() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let drop = Dropout::new(0.4);
        let x0 = values(&mut rng, 2000);
        let mut x = x0.clone();
        let mask = drop.forward(&mut x, &mut rng);
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / 2000.0;
        assert!((kept - 0.6).abs() < 0.05, "kept {kept}");
        for ((a, b), m) in x.iter().zip(&x0).zip(&mask) {
            assert!(*m == 0.0 || (*m - 1.0 / 0.6).abs() < 1e-6);
            assert_eq!(*a, b * m);
        }
        let r = values(&mut rng, 2000);
        let mut dy = r.clone();
        drop.backward(&mask, &mut dy);
        let device = Device::flex().autodiff();
        let xt = tensor(&x0, [2000], &device);
        let mt = Tensor::<1>::from_data(TensorData::new(mask.clone(), [2000]), &device);
        let rt = Tensor::<1>::from_data(TensorData::new(r, [2000]), &device);
        let g = (xt.clone() * mt * rt).sum().backward();
        close(&dy, &host(xt.grad(&g).unwrap()), "dropout gradient");
        // p = 0 is the identity and draws nothing.
        let mut y = x0.clone();
        let mut r1 = ChaCha8Rng::seed_from_u64(9);
        assert!(Dropout::new(0.0).forward(&mut y, &mut r1).is_empty());
        assert_eq!(y, x0);
        assert_eq!(
            r1.random::<u64>(),
            ChaCha8Rng::seed_from_u64(9).random::<u64>()
        );
    }

    /// Both weight-gradient forms give the same bits, on the shapes of the ml-100k models
    /// (MultiVAE's decoder and encoder layers, MacridVAE's facet rows) and an odd one.
    #[test]
    fn weight_gradient_forms_are_bit_identical() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for (rows, ih, o) in [
            (500, 600, 1682),
            (943, 200, 600),
            (3500, 600, 200),
            (37, 5, 11),
        ] {
            let mut store = ParamStore::new();
            let w = values(&mut rng, ih * o);
            let b = values(&mut rng, o);
            let plain = Dense::new(&mut store, "p", (ih, 0, o), Activation::Identity, w, b);
            let via = plain.clone().with_weight_grad_via_transpose();
            let a = values(&mut rng, rows * ih);
            let r = values(&mut rng, rows * o);
            let run = |layer: &Dense| {
                let mut grads = store.zero_grads();
                let (mut dy, mut da) = (r.clone(), Vec::new());
                layer.backward(&store, &a, &[], &mut dy, None, rows, &mut grads, &mut da);
                grads
                    .get(layer.weight)
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<u32>>()
            };
            assert_eq!(run(&plain), run(&via), "{rows}x{ih}x{o}");
        }
    }

    /// Forward and backward give the same bits on 1 and 3 threads.
    #[test]
    fn mlp_is_thread_count_independent() {
        let run = |threads: usize| {
            crate::on_threads(threads, || {
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let mut store = ParamStore::new();
                let widths = [300, 200, 700];
                let mlp = Mlp::new(vec![
                    Dense::new(
                        &mut store,
                        "a",
                        (widths[0], 16, widths[1]),
                        Activation::Tanh,
                        values(&mut rng, (widths[0] + 16) * widths[1]),
                        values(&mut rng, widths[1]),
                    ),
                    Dense::new(
                        &mut store,
                        "b",
                        (widths[1], 0, widths[2]),
                        Activation::Identity,
                        values(&mut rng, widths[1] * widths[2]),
                        values(&mut rng, widths[2]),
                    ),
                ]);
                let rows = 600;
                let x = values(&mut rng, rows * widths[0]);
                let s = values(&mut rng, rows / 2 * 16);
                let r = values(&mut rng, rows * widths[2]);
                let side = Some(Side::new(&s, 2));
                let (y, trace) = mlp.forward(&store, x, side, rows);
                let mut grads = store.zero_grads();
                let dx = mlp.backward(&store, &trace, &y, r, side, rows, &mut grads);
                (y, dx, grads.values().to_vec())
            })
        };
        assert_eq!(run(1), run(3));
    }
}
