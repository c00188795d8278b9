//! What the two autoencoders share: the optimiser step and checkpoint extras, parameter
//! loading with errors naming the file, the sparse batch, initialisers and the random draws.
//!
//! # Why parameters are plain buffers
//!
//! The forward and backward passes are written by hand over `encore_nn`'s layers, whose
//! parameters live in one flat [`ParamStore`] buffer named as the safetensors files are; Adam
//! (`encore_core::Adam`) runs over that buffer, so saving, loading, resuming and hashing the
//! weights, moments and counters is trivial and exact. The burn helpers below
//! (`#[cfg(test)]`) build the same models as burn autodiff graphs, the reference the
//! hand-written gradients are checked against.
//!
//! # Randomness
//!
//! Every random draw (initial weights, dropout masks, reparameterisation noise, Gumbel noise,
//! batch order) is made here from a `ChaCha8Rng` (the trainer's stream during training), never
//! by a tensor backend: burn's device seed is process-global, so a run would depend on what
//! else ran before it. Draws are generated single-threaded in a fixed order, so results do not
//! depend on the number of threads.

use std::collections::BTreeMap;
use std::path::Path;

#[cfg(test)]
use burn::tensor::{Device, Int, Tensor, TensorData};
use encore_core::ModelError;
use encore_data::InteractionMatrix;
#[cfg(test)]
use encore_nn::ParamId;
use encore_nn::{Grads, ParamStore};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

#[cfg(test)]
/// The CPU device used for training (with autodiff) and scoring (without).
pub(crate) fn cpu() -> Device {
    Device::flex()
}

#[cfg(test)]
/// Tensor `id` of `store` on `device` (tracked when `device` has autodiff): the burn
/// reference's view of a parameter.
pub(crate) fn param_tensor<const D: usize>(
    store: &ParamStore,
    id: ParamId,
    device: &Device,
) -> Tensor<D> {
    let t = Tensor::<D>::from_data(
        TensorData::new(store.get(id).to_vec(), store.shape(id).to_vec()),
        device,
    );
    if device.is_autodiff() {
        t.require_grad()
    } else {
        t
    }
}

/// Fill `values` (laid out as `store`) from the tensors of the safetensors file at `path`
/// (`prefix` + name), naming the file and tensor on a missing tensor or a shape mismatch.
pub(crate) fn fill_from(
    store: &ParamStore,
    values: &mut [f32],
    tensors: &NamedTensors,
    prefix: &str,
    path: &Path,
) -> Result<(), ModelError> {
    store
        .fill(values, tensors, prefix)
        .map_err(|e| ModelError::format(path, e))
}

/// Named tensors read from a safetensors file: name -> (shape, values).
pub(crate) type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The optimiser of both VAEs: `encore_core::Adam`, torch's arithmetic step for step (Liang
/// et al. use TensorFlow's Adam, whose epsilon placement differs by a negligible amount),
/// over the flat buffer of the model's [`ParamStore`].
pub(crate) use encore_core::Adam;

/// A fresh optimiser for `params`.
pub(crate) fn new_adam(params: &ParamStore, lr: f64) -> Adam {
    Adam::new(params.n_values(), lr)
}

/// One Adam step of `params` with `grads` (laid out as `params`; zeroed on the way).
pub(crate) fn adam_step(adam: &mut Adam, params: &mut ParamStore, grads: &mut Grads) {
    adam.step(params.values_mut(), grads.values_mut());
}

/// The counters saved next to the weights in a training checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainCounters {
    /// Adam steps taken.
    pub adam_steps: u64,
    /// Gradient updates made, which drive the KL annealing (MODELS.md: part of the checkpoint;
    /// a known bug elsewhere resets it each epoch).
    pub updates: u64,
}

/// The KL weight `β = min(cap, update / total)` (Liang et al. §2.2.2), with `total = 0`
/// meaning "no annealing, always the cap" (RecBole's convention).
pub(crate) fn kl_weight(updates: u64, cap: f64, total: u64) -> f64 {
    if total == 0 {
        cap
    } else {
        cap.min(updates as f64 / total as f64)
    }
}

/// Weight initialisers: Xavier/Glorot with uniform (Liang et al.'s TensorFlow
/// `xavier_initializer`, Ma et al.'s as well) or normal (RecBole's `xavier_normal_`) draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    XavierUniform,
    XavierNormal,
}

pub(crate) fn xavier(rng: &mut ChaCha8Rng, fan_in: usize, fan_out: usize, init: Init) -> Vec<f32> {
    let n = fan_in * fan_out;
    let denom = (fan_in + fan_out) as f64;
    match init {
        Init::XavierUniform => {
            let a = (6.0 / denom).sqrt() as f32;
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        }
        Init::XavierNormal => {
            let s = (2.0 / denom).sqrt() as f32;
            (0..n).map(|_| s * normal(rng)).collect()
        }
    }
}

/// Biases drawn from N(0, std²) truncated at two standard deviations (Liang et al. use
/// `truncated_normal(stddev=0.001)`); `std = 0` gives zeros (RecBole).
pub(crate) fn bias(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    if std == 0.0 {
        return vec![0.0; n];
    }
    (0..n)
        .map(|_| loop {
            let x = normal(rng);
            if x.abs() <= 2.0 {
                break x * std as f32;
            }
        })
        .collect()
}

pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f32 {
    StandardNormal.sample(rng)
}

/// `n` draws of N(0, std²).
pub(crate) fn normals(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| std * normal(rng)).collect()
}

/// A batch of users' rows as coordinate lists, ready for the sparse first layer.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseBatch {
    /// Rows in the batch.
    pub n_rows: usize,
    /// Batch row of each entry.
    pub rows: Vec<i64>,
    /// Item of each entry.
    pub items: Vec<i64>,
    /// Value of each entry.
    pub values: Vec<f32>,
}

impl SparseBatch {
    /// The rows of `users` in `m`, all values 1 (the binary interaction row `x_u`).
    pub fn from_users(m: &InteractionMatrix, users: &[u32]) -> Self {
        let mut b = SparseBatch {
            n_rows: users.len(),
            ..Default::default()
        };
        for (r, &u) in users.iter().enumerate() {
            for &i in m.row(u as usize) {
                b.rows.push(r as i64);
                b.items.push(i as i64);
                b.values.push(1.0);
            }
        }
        b
    }

    pub fn nnz(&self) -> usize {
        self.rows.len()
    }

    /// Divide each row by its L2 norm (PyTorch's `F.normalize`: rows of norm 0 stay 0).
    pub fn l2_normalised(&self) -> Self {
        let mut norms = vec![0f32; self.n_rows];
        for (&r, &v) in self.rows.iter().zip(&self.values) {
            norms[r as usize] += v * v;
        }
        let mut out = self.clone();
        for (v, &r) in out.values.iter_mut().zip(&self.rows) {
            *v /= norms[r as usize].sqrt().max(1e-12);
        }
        out
    }

    /// Inverted dropout on the entries (tests: the reference of [`SparseBatch::training_csr`]
    /// and of the burn graphs): each is kept with probability `1 - p` and scaled by
    /// `1 / (1 - p)`; dropped entries are removed (they would contribute zero). Entries that
    /// were zero anyway are unaffected, so this equals dropout on the dense row.
    #[cfg(test)]
    pub fn dropout(&self, p: f64, rng: &mut ChaCha8Rng) -> Self {
        if p <= 0.0 {
            return self.clone();
        }
        let scale = (1.0 / (1.0 - p)) as f32;
        let mut out = SparseBatch {
            n_rows: self.n_rows,
            ..Default::default()
        };
        for e in 0..self.nnz() {
            let keep = rng.random::<f64>() >= p;
            if keep {
                out.rows.push(self.rows[e]);
                out.items.push(self.items[e]);
                out.values.push(self.values[e] * scale);
            }
        }
        out
    }

    /// The batch in CSR form (entries are in row order by construction: [`SparseBatch::from_users`]
    /// emits them so, and normalising and dropout keep the order).
    pub fn to_csr(&self) -> encore_nn::Csr {
        debug_assert!(self.rows.windows(2).all(|w| w[0] <= w[1]));
        let mut offsets = vec![0usize; self.n_rows + 1];
        for &r in &self.rows {
            offsets[r as usize + 1] += 1;
        }
        for r in 0..self.n_rows {
            offsets[r + 1] += offsets[r];
        }
        encore_nn::Csr::new(
            offsets,
            self.items.iter().map(|&i| i as u32).collect(),
            self.values.clone(),
        )
    }

    /// The users' binary rows of `m`, each divided by its L2 norm, straight into CSR: the
    /// bits of `from_users(m, users).l2_normalised().to_csr()` (a row of `n` ones has the norm
    /// `sqrt(n)` exactly as that sum computes it), without the coordinate lists. Scoring
    /// builds its input this way; it took a tenth of a MultiVAE evaluation on ml-100k.
    pub fn normalised_csr(m: &InteractionMatrix, users: &[u32]) -> encore_nn::Csr {
        let mut offsets = Vec::with_capacity(users.len() + 1);
        offsets.push(0);
        let mut cols = Vec::new();
        let mut values = Vec::new();
        for &u in users {
            let row = m.row(u as usize);
            let value = 1.0 / (row.len() as f32).sqrt().max(1e-12);
            cols.extend_from_slice(row);
            values.extend(std::iter::repeat_n(value, row.len()));
            offsets.push(cols.len());
        }
        encore_nn::Csr::new(offsets, cols, values)
    }

    /// A training batch straight into CSR: the users' binary rows `x` and the encoder's
    /// input, the rows divided by their L2 norms with inverted dropout `p` (the bits and the
    /// random draws of `from_users(m, users)`, `.l2_normalised().dropout(p, rng)` and
    /// `.to_csr()` of both, without their coordinate lists and copies).
    pub fn training_csr(
        m: &InteractionMatrix,
        users: &[u32],
        p: f64,
        rng: &mut ChaCha8Rng,
    ) -> (encore_nn::Csr, encore_nn::Csr) {
        let mut x = Self::normalised_csr(m, users);
        let input = x.dropped_out(p, rng);
        x.values_mut().fill(1.0);
        (x, input)
    }

    #[cfg(test)]
    /// Row-major flat positions `row * n_items + item` of the entries (to gather a row's
    /// log-probabilities from a `[rows, items]` tensor).
    pub fn flat_positions(&self, n_items: usize) -> Vec<i64> {
        self.rows
            .iter()
            .zip(&self.items)
            .map(|(&r, &i)| r * n_items as i64 + i)
            .collect()
    }
}

#[cfg(test)]
pub(crate) fn int_tensor(v: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
}

#[cfg(test)]
pub(crate) fn float_tensor<const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(v, shape), device)
}

#[cfg(test)]
/// The sparse first layer `x W + b` for a batch of sparse rows (MODELS.md: "a sparse gather of
/// weight rows and a scatter-add of their gradients, not a dense product"): gather the weight
/// rows of the entries' items (`select`), scale each by its value, and add them into their
/// batch rows (`select_assign` with `Add`). Autodiff turns the gather into a scatter-add of
/// the gradients into `W`'s rows, and the value scaling into a gradient for `values` (which
/// MacridVAE needs: its values depend on the facet assignments).
///
/// `w` is `[items, out]` (burn's `[d_input, d_output]` convention), `values` is `[nnz, 1]`.
pub(crate) fn sparse_linear(
    w: &Tensor<2>,
    b: &Tensor<1>,
    rows: &Tensor<1, Int>,
    items: &Tensor<1, Int>,
    values: Tensor<2>,
    n_rows: usize,
) -> Tensor<2> {
    let out_dim = w.dims()[1];
    let device = w.device();
    let bias = b.clone().unsqueeze_dim::<2>(0);
    if items.dims()[0] == 0 {
        return Tensor::<2>::zeros([n_rows, out_dim], &device) + bias;
    }
    let gathered = w.clone().select(0, items.clone()) * values;
    Tensor::<2>::zeros([n_rows, out_dim], &device).select_assign(
        0,
        rows.clone(),
        gathered,
        burn::tensor::IndexingUpdateOp::Add,
    ) + bias
}

#[cfg(test)]
/// `x W + b` for a dense batch.
pub(crate) fn linear(x: Tensor<2>, w: &Tensor<2>, b: &Tensor<1>) -> Tensor<2> {
    x.matmul(w.clone()) + b.clone().unsqueeze_dim::<2>(0)
}

#[cfg(test)]
/// Rows divided by their L2 norm. PyTorch's `F.normalize` divides by `max(‖x‖, 1e-12)`; here
/// the norm is `sqrt(‖x‖² + 1e-24)`, equal to within 1e-24 relative for any row that is not
/// ~0, and with a finite gradient at an all-zero row (burn's `sqrt` backward at 0 is infinite,
/// and `0 · ∞` would poison the step with NaN).
pub(crate) fn l2_normalise_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).add_scalar(1e-24).sqrt();
    x / norm
}

#[cfg(test)]
/// Read a tensor's values back to the host.
pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("float tensors hold f32 on the CPU backend")
}

/// The users of a training epoch in a random order drawn from `rng` (users with no training
/// items are skipped: they contribute neither reconstruction loss nor signal).
pub(crate) fn shuffled_users(train: &InteractionMatrix, rng: &mut ChaCha8Rng) -> Vec<u32> {
    use rand::seq::SliceRandom;
    let mut users = train.nonempty_users();
    users.shuffle(rng);
    users
}

/// Check that a history holds only items of the catalogue; return it sorted and deduplicated.
pub(crate) fn checked_history(history: &[u32], n_items: usize) -> Result<Vec<u32>, ModelError> {
    if let Some(&bad) = history.iter().find(|&&i| i as usize >= n_items) {
        return Err(ModelError::Input(format!(
            "item index {bad} is outside the catalogue of {n_items} items"
        )));
    }
    let mut h = history.to_vec();
    h.sort_unstable();
    h.dedup();
    Ok(h)
}

/// Check the `out` buffer size of a scoring call (a programming error if wrong).
pub(crate) fn check_out(out: &[f32], users: usize, n_items: usize) {
    assert_eq!(
        out.len(),
        users * n_items,
        "score buffer must be users x items"
    );
}

/// Write the model's `config.toml` and `meta.json` (`n_items`, model name) into `dir`.
pub(crate) fn write_meta(
    dir: &Path,
    name: &str,
    n_items: usize,
    config_toml: &str,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    encore_io::write_bytes(&dir.join("config.toml"), config_toml.as_bytes())?;
    let meta = serde_json::json!({ "model": name, "n_items": n_items, "format": 1 });
    Ok(encore_io::write_json(&dir.join("meta.json"), &meta)?)
}

/// Read `meta.json` and `config.toml` from a saved model folder, checking the model name.
pub(crate) fn read_meta(dir: &Path, name: &str) -> Result<(usize, toml::Table), ModelError> {
    let meta_path = dir.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| ModelError::io(&meta_path, e))?;
    let meta: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(&meta_path, format!("not valid JSON: {e}")))?;
    let got = meta.get("model").and_then(|v| v.as_str()).unwrap_or("");
    if got != name {
        return Err(ModelError::format(
            &meta_path,
            format!("field `model`: this folder holds `{got}`, expected `{name}`"),
        ));
    }
    let n_items = meta
        .get("n_items")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| {
            ModelError::format(
                &meta_path,
                "field `n_items`: expected a non-negative integer",
            )
        })? as usize;
    let cfg_path = dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let table = text
        .parse::<toml::Table>()
        .map_err(|e| ModelError::format(&cfg_path, format!("not a valid TOML document: {e}")))?;
    Ok((n_items, table))
}

/// The model's configuration alone as a TOML document (`model = ...` and its keys).
pub(crate) fn model_config_toml<T: encore_core::config::ModelConfig>(
    config: &T,
) -> Result<String, ModelError> {
    let mut table = toml::Table::new();
    table.insert("model".into(), toml::Value::String(T::MODEL.into()));
    table.extend(
        toml::Table::try_from(config)
            .map_err(|e| ModelError::config("model", format!("cannot serialise: {e}")))?,
    );
    toml::to_string_pretty(&table)
        .map_err(|e| ModelError::config("model", format!("cannot serialise: {e}")))
}

/// The weights file of a saved model folder.
pub(crate) const WEIGHTS_FILE: &str = "model.safetensors";

/// Write a model folder: `config.toml` (the model's configuration alone), `meta.json` and
/// the weights (`model.safetensors`, tensors under their parameter names).
pub(crate) fn save_model<C: encore_core::config::ModelConfig>(
    dir: &Path,
    config: &C,
    n_items: usize,
    params: &ParamStore,
) -> Result<(), ModelError> {
    let cfg = model_config_toml(config)?;
    write_meta(dir, C::MODEL, n_items, &cfg)?;
    encore_io::write_f32_tensors(
        &dir.join(WEIGHTS_FILE),
        &params.named("", params.values()),
        None,
    )?;
    Ok(())
}

/// Fill `params` from a model folder's weights, naming the file and tensor on a missing
/// tensor or a shape mismatch.
pub(crate) fn load_weights(dir: &Path, params: &mut ParamStore) -> Result<(), ModelError> {
    let path = dir.join(WEIGHTS_FILE);
    let tensors = encore_io::read_f32_tensors(&path)?.map;
    let mut values = vec![0f32; params.n_values()];
    fill_from(params, &mut values, &tensors, "", &path)?;
    params.values_mut().copy_from_slice(&values);
    Ok(())
}

/// [`encore_core::Recommender::score_history`] for a model that scores rows: the history
/// (checked, sorted, deduplicated) as a one-row matrix through `score_users`.
pub(crate) fn score_history(
    model: &dyn encore_core::Recommender,
    history: &[u32],
    out: &mut [f32],
) -> Result<(), ModelError> {
    let n_items = model.n_items();
    let h = checked_history(history, n_items)?;
    if out.len() != n_items {
        return Err(ModelError::Input(format!(
            "score buffer has {} entries, the catalogue {}",
            out.len(),
            n_items
        )));
    }
    let m = InteractionMatrix::from_rows(n_items, &[h]);
    model.score_users(&[0], &m, out);
    Ok(())
}

/// A step's named loss parts (`("loss", ..)`, `("recon", ..)`, ...): a model adds a term
/// (a diffusion loss, say) by adding a name, and the epoch's log gains its mean.
pub(crate) type LossParts = Vec<(&'static str, f64)>;

/// One training epoch shared by both VAEs: users shuffled by the trainer's stream, cut into
/// batches of `batch_size`, one `step` per batch (returning its named loss parts), the
/// progress bar advanced per batch; each part is its mean over the batches.
pub(crate) fn run_epoch(
    ctx: encore_core::EpochContext<'_>,
    n_items: usize,
    batch_size: usize,
    mut step: impl FnMut(&InteractionMatrix, &[u32], &mut ChaCha8Rng) -> LossParts,
) -> Result<BTreeMap<String, f64>, ModelError> {
    if ctx.train.n_items() != n_items {
        return Err(ModelError::Input(format!(
            "the training matrix has {} items, the model {}",
            ctx.train.n_items(),
            n_items
        )));
    }
    let users = shuffled_users(ctx.train, ctx.rng);
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut n = 0usize;
    for batch in users.chunks(batch_size) {
        for (name, v) in step(ctx.train, batch, ctx.rng) {
            *sums.entry(name.to_string()).or_insert(0.0) += v;
        }
        n += 1;
        (ctx.progress)(batch.len() as u64);
    }
    let n = n.max(1) as f64;
    Ok(sums.into_iter().map(|(k, v)| (k, v / n)).collect())
}

/// Write the optimizer moments and the counters (Adam steps, KL-annealing updates) of a
/// training checkpoint beside the weights.
pub(crate) fn save_training_extras(
    dir: &Path,
    params: &ParamStore,
    adam: &Adam,
    updates: u64,
) -> Result<(), ModelError> {
    // Per tensor, under the parameters' names (`adam.m.<name>`, `adam.v.<name>`).
    let mut moments = params.named("adam.m.", &adam.m);
    moments.extend(params.named("adam.v.", &adam.v));
    encore_io::write_f32_tensors(&dir.join("adam.safetensors"), &moments, None)?;
    let counters = TrainCounters {
        adam_steps: adam.step,
        updates,
    };
    Ok(encore_io::write_bytes(
        &dir.join("counters.json"),
        serde_json::to_string(&counters).expect("json").as_bytes(),
    )?)
}

/// Read back what [`save_training_extras`] wrote into `adam`; returns the update counter.
pub(crate) fn load_training_extras(
    dir: &Path,
    params: &ParamStore,
    adam: &mut Adam,
) -> Result<u64, ModelError> {
    let path = dir.join("adam.safetensors");
    let tensors = encore_io::read_f32_tensors(&path)?.map;
    fill_from(params, &mut adam.m, &tensors, "adam.m.", &path)?;
    fill_from(params, &mut adam.v, &tensors, "adam.v.", &path)?;
    let cpath = dir.join("counters.json");
    let text = std::fs::read_to_string(&cpath).map_err(|e| ModelError::io(&cpath, e))?;
    let c: TrainCounters = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(&cpath, format!("not valid counters JSON: {e}")))?;
    adam.step = c.adam_steps;
    Ok(c.updates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Scoring's direct CSR build is the coordinate-list path bit for bit (rows of several
    /// lengths, an empty one, users out of order and repeated).
    #[test]
    fn normalised_csr_matches_the_coordinate_path() {
        let rows: Vec<Vec<u32>> = (0..9u32)
            .map(|u| {
                (0..u * 7 % 11)
                    .map(|j| (j * 3 + u) % 40)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        let m = InteractionMatrix::from_rows(40, &rows);
        let users = [3u32, 0, 8, 5, 3, 1];
        let want = SparseBatch::from_users(&m, &users).l2_normalised().to_csr();
        let got = SparseBatch::normalised_csr(&m, &users);
        assert_eq!(got.offsets(), want.offsets());
        assert_eq!(got.cols(), want.cols());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(got.values()), bits(want.values()));
        assert!(got.values().iter().all(|v| *v > 0.0 && *v <= 1.0));
        // The training batch: binary rows and the dropped-out input, the same random draws.
        for p in [0.0, 0.5] {
            let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
            let x = SparseBatch::from_users(&m, &users);
            let (want_x, want_in) = (x.to_csr(), x.l2_normalised().dropout(p, &mut r1).to_csr());
            let (got_x, got_in) = SparseBatch::training_csr(&m, &users, p, &mut r2);
            for (got, want) in [(&got_x, &want_x), (&got_in, &want_in)] {
                assert_eq!(got.offsets(), want.offsets(), "p {p}");
                assert_eq!(got.cols(), want.cols(), "p {p}");
                assert_eq!(bits(got.values()), bits(want.values()), "p {p}");
            }
            assert!(p == 0.0 || got_in.cols().len() < got_x.cols().len());
            assert_eq!(
                r1.random::<u64>(),
                r2.random::<u64>(),
                "the same draws, p {p}"
            );
        }
    }

    /// The sparse first layer against the dense product `X W + b`: same output, and autodiff
    /// gives the same gradients for `W`, `b` and the values (duplicated items across rows
    /// exercise the scatter-add of the weight gradient).
    #[test]
    fn sparse_linear_matches_dense_product_and_its_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (n_rows, n_items, out) = (3usize, 5usize, 4usize);
        let rows = vec![0i64, 0, 1, 1, 1, 2];
        let items = vec![1i64, 3, 0, 1, 4, 3];
        let vals: Vec<f32> = normals(&mut rng, rows.len(), 1.0);
        let w: Vec<f32> = normals(&mut rng, n_items * out, 1.0);
        let b: Vec<f32> = normals(&mut rng, out, 1.0);
        // A fixed upstream gradient: loss = sum(output * G).
        let g: Vec<f32> = normals(&mut rng, n_rows * out, 1.0);
        let device = cpu().autodiff();

        let ws = float_tensor(w.clone(), [n_items, out], &device).require_grad();
        let bs = float_tensor(b.clone(), [out], &device).require_grad();
        let vs = float_tensor(vals.clone(), [rows.len(), 1], &device).require_grad();
        let y = sparse_linear(
            &ws,
            &bs,
            &int_tensor(rows.clone(), &device),
            &int_tensor(items.clone(), &device),
            vs.clone(),
            n_rows,
        );
        let loss = (y.clone() * float_tensor(g.clone(), [n_rows, out], &device)).sum();
        let grads = loss.backward();
        let (gw, gb, gv) = (
            to_vec(ws.grad(&grads).unwrap()),
            to_vec(bs.grad(&grads).unwrap()),
            to_vec(vs.grad(&grads).unwrap()),
        );

        // Dense reference: X as a dense [rows, items] matrix built from the tracked values
        // (a scatter of the values via a one-hot product), then X W + b.
        let wd = float_tensor(w, [n_items, out], &device).require_grad();
        let bd = float_tensor(b, [out], &device).require_grad();
        let vd = float_tensor(vals.clone(), [rows.len(), 1], &device).require_grad();
        let mut pos = vec![0f32; n_rows * n_items * rows.len()];
        for e in 0..rows.len() {
            pos[(rows[e] as usize * n_items + items[e] as usize) * rows.len() + e] = 1.0;
        }
        let scatter = float_tensor(pos, [n_rows * n_items, rows.len()], &device);
        let x = scatter.matmul(vd.clone()).reshape([n_rows, n_items]);
        let yd = linear(x, &wd, &bd);
        let lossd = (yd.clone() * float_tensor(g, [n_rows, out], &device)).sum();
        let gradsd = lossd.backward();
        let close = |a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
            }
        };
        close(&to_vec(y), &to_vec(yd));
        close(&gw, &to_vec(wd.grad(&gradsd).unwrap()));
        close(&gb, &to_vec(bd.grad(&gradsd).unwrap()));
        close(&gv, &to_vec(vd.grad(&gradsd).unwrap()));
        // The weight rows of items 2 (absent) get no gradient; item 1 and 3 (twice) do.
        assert!(gw[2 * out..3 * out].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn sparse_linear_with_no_entries_is_the_bias() {
        let device = cpu();
        let w = float_tensor(vec![1.0; 6], [3, 2], &device);
        let b = float_tensor(vec![0.5, -1.0], [2], &device);
        let y = sparse_linear(
            &w,
            &b,
            &int_tensor(vec![], &device),
            &int_tensor(vec![], &device),
            float_tensor(vec![], [0, 1], &device),
            2,
        );
        assert_eq!(to_vec(y), vec![0.5, -1.0, 0.5, -1.0]);
    }

    #[test]
    fn normalise_and_dropout_on_sparse_values() {
        let m = InteractionMatrix::from_rows(4, &[vec![0u32, 1, 2, 3], vec![], vec![2]]);
        let x = SparseBatch::from_users(&m, &[0, 1, 2]);
        let n = x.l2_normalised();
        assert_eq!(n.values, vec![0.5, 0.5, 0.5, 0.5, 1.0]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let d = n.dropout(0.5, &mut rng);
        assert!(d.values.iter().all(|&v| v == 1.0 || v == 2.0));
        assert!(d.nnz() <= n.nnz());
        assert_eq!(x.flat_positions(4), vec![0, 1, 2, 3, 10]);
    }

    /// Adam's first step moves every parameter by `lr` against the gradient's sign
    /// (bias-corrected `m / sqrt(v) = g / |g|`) and zeroes the gradient.
    #[test]
    fn adam_first_step_is_lr_times_sign() {
        let mut p = ParamStore::new();
        let id = p.add("w", vec![3], vec![1.0, 1.0, 1.0]);
        let mut adam = new_adam(&p, 0.1);
        let mut g = p.zero_grads();
        g.set(id, &[2.0, -0.5, 0.0]);
        adam_step(&mut adam, &mut p, &mut g);
        let w = p.get(id);
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-6 && w[2] == 1.0);
        assert_eq!(adam.step, 1);
        assert!(g.values().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn kl_weight_anneals_to_the_cap() {
        assert_eq!(kl_weight(0, 0.2, 200_000), 0.0);
        assert_eq!(kl_weight(20_000, 0.2, 200_000), 0.1);
        assert_eq!(kl_weight(1_000_000, 0.2, 200_000), 0.2);
        assert_eq!(kl_weight(5, 0.2, 0), 0.2);
    }
}
