//! A model's parameters: one flat `f32` buffer cut into named tensors ([`ParamStore`]), and
//! gradients in the same layout ([`Grads`]).
//!
//! Names are the safetensors names (`encoder.0.weight`), so a checkpoint is the store written
//! tensor by tensor and read back by name. One flat buffer lets the optimiser (Adam over
//! `encore_core::Adam`'s flat state) update every parameter in one element-wise pass.

use std::collections::BTreeMap;
use std::ops::Range;

/// A handle to one tensor of a [`ParamStore`] (and of its [`Grads`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

impl ParamId {
    /// Position in registration order.
    pub fn index(self) -> usize {
        self.0
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// Named tensors over one flat buffer, in registration order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ParamStore {
    entries: Vec<Entry>,
    data: Vec<f32>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register tensor `name` of `shape` with initial values `data` (row-major). Panics on a
    /// duplicate name or a size that does not match the shape (programming errors).
    pub fn add(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> ParamId {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor `{name}`: values do not fill the shape"
        );
        assert!(
            self.entries.iter().all(|e| e.name != name),
            "tensor `{name}` registered twice"
        );
        let start = self.data.len();
        self.data.extend_from_slice(&data);
        self.entries.push(Entry {
            name: name.to_string(),
            shape,
            range: start..self.data.len(),
        });
        ParamId(self.entries.len() - 1)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of scalars in all tensors.
    pub fn n_values(&self) -> usize {
        self.data.len()
    }

    /// Handles in registration order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> {
        (0..self.entries.len()).map(ParamId)
    }

    /// The handle of tensor `name`.
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .map(ParamId)
    }

    pub fn name(&self, id: ParamId) -> &str {
        &self.entries[id.0].name
    }

    pub fn shape(&self, id: ParamId) -> &[usize] {
        &self.entries[id.0].shape
    }

    /// The values of one tensor.
    pub fn get(&self, id: ParamId) -> &[f32] {
        &self.data[self.entries[id.0].range.clone()]
    }

    pub fn get_mut(&mut self, id: ParamId) -> &mut [f32] {
        let r = self.entries[id.0].range.clone();
        &mut self.data[r]
    }

    /// Every value, tensors in registration order (the optimiser's view).
    pub fn values(&self) -> &[f32] {
        &self.data
    }

    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// `(prefix + name, shape, values)` of every tensor of a buffer laid out as this store
    /// (the store's own values, or optimiser state of the same layout), for a safetensors
    /// writer.
    pub fn named<'a>(
        &'a self,
        prefix: &str,
        values: &'a [f32],
    ) -> Vec<(String, Vec<usize>, &'a [f32])> {
        assert_eq!(
            values.len(),
            self.data.len(),
            "buffer laid out as the store"
        );
        self.entries
            .iter()
            .map(|e| {
                (
                    format!("{prefix}{}", e.name),
                    e.shape.clone(),
                    &values[e.range.clone()],
                )
            })
            .collect()
    }

    /// Fill `values` (laid out as this store) from `tensors` by name (`prefix` + name),
    /// checking shapes; the error names the tensor and the shapes.
    pub fn fill(
        &self,
        values: &mut [f32],
        tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        prefix: &str,
    ) -> Result<(), String> {
        assert_eq!(
            values.len(),
            self.data.len(),
            "buffer laid out as the store"
        );
        for e in &self.entries {
            let key = format!("{prefix}{}", e.name);
            let (shape, data) = tensors
                .get(&key)
                .ok_or_else(|| format!("missing tensor `{key}`"))?;
            if *shape != e.shape {
                return Err(format!(
                    "tensor `{key}` has shape {shape:?}, the configuration needs {:?}",
                    e.shape
                ));
            }
            values[e.range.clone()].copy_from_slice(data);
        }
        Ok(())
    }

    /// Zero gradients laid out as this store.
    pub fn zero_grads(&self) -> Grads {
        Grads {
            data: vec![0.0; self.data.len()],
            ranges: self.entries.iter().map(|e| e.range.clone()).collect(),
        }
    }
}

/// Gradients laid out as a [`ParamStore`]: one flat buffer, zero where a pass wrote nothing.
/// (The default is empty: a placeholder while a model's buffer is lent out.)
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Grads {
    data: Vec<f32>,
    ranges: Vec<Range<usize>>,
}

impl Grads {
    pub fn get(&self, id: ParamId) -> &[f32] {
        &self.data[self.ranges[id.0].clone()]
    }

    /// The gradient slot of one tensor (to write into or add to).
    pub fn get_mut(&mut self, id: ParamId) -> &mut [f32] {
        let r = self.ranges[id.0].clone();
        &mut self.data[r]
    }

    /// Set the gradient of one tensor.
    pub fn set(&mut self, id: ParamId, g: &[f32]) {
        self.get_mut(id).copy_from_slice(g);
    }

    /// The gradient of tensors `a` and `b` at once (`a != b`).
    pub fn get2_mut(&mut self, a: ParamId, b: ParamId) -> (&mut [f32], &mut [f32]) {
        let (ra, rb) = (self.ranges[a.0].clone(), self.ranges[b.0].clone());
        assert!(ra.end <= rb.start || rb.end <= ra.start, "distinct tensors");
        if ra.start < rb.start {
            let (lo, hi) = self.data.split_at_mut(rb.start);
            (&mut lo[ra], &mut hi[..rb.end - rb.start])
        } else {
            let (lo, hi) = self.data.split_at_mut(ra.start);
            (&mut hi[..ra.end - ra.start], &mut lo[rb])
        }
    }

    /// Every value, in the store's layout.
    pub fn values(&self) -> &[f32] {
        &self.data
    }

    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_tensors_round_trip_and_shape_errors_name_the_tensor() {
        let mut s = ParamStore::new();
        let w = s.add("enc.weight", vec![2, 3], (0..6).map(|v| v as f32).collect());
        let b = s.add("enc.bias", vec![3], vec![7.0, 8.0, 9.0]);
        assert_eq!(s.get(b), &[7.0, 8.0, 9.0]);
        assert_eq!(s.id("enc.weight"), Some(w));
        let map: BTreeMap<_, _> = s
            .named("p.", s.values())
            .into_iter()
            .map(|(n, sh, v)| (n, (sh, v.to_vec())))
            .collect();
        let mut back = vec![0.0; s.n_values()];
        s.fill(&mut back, &map, "p.").unwrap();
        assert_eq!(back, s.values());
        assert!(s
            .fill(&mut back, &map, "q.")
            .unwrap_err()
            .contains("q.enc.weight"));
        let mut bad = map.clone();
        bad.get_mut("p.enc.bias").unwrap().0 = vec![4];
        let err = s.fill(&mut back, &bad, "p.").unwrap_err();
        assert!(err.contains("p.enc.bias") && err.contains("[4]"), "{err}");
        let mut g = s.zero_grads();
        let (gw, gb) = g.get2_mut(b, w);
        gw[0] = 1.0;
        gb[5] = 2.0;
        assert_eq!(g.values(), &[0., 0., 0., 0., 0., 2., 1., 0., 0.]);
    }
}
