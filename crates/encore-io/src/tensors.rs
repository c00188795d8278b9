//! Named f32 tensors in safetensors files: the format of every model's weights, checkpoint
//! and fitted projection, so that they open in PyTorch (`safetensors.torch.load_file`) too.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::IoError;

/// The little-endian bytes of `values` (the layout safetensors stores): their own memory on a
/// little-endian machine, a converted copy elsewhere (checkpoints are written every epoch, so
/// the common case must not copy).
pub fn f32_le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        Cow::Owned(values.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// Write named f32 tensors (`name`, `shape`, row-major values) as one safetensors file,
/// atomically ([`crate::write_atomic`]), with optional string metadata in its header.
pub fn write_f32_tensors<N: AsRef<str>>(
    path: &Path,
    tensors: &[(N, Vec<usize>, &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), IoError> {
    let bytes: Vec<_> = tensors.iter().map(|(_, _, d)| f32_le_bytes(d)).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let name = name.as_ref();
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| IoError::format(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let data = safetensors::serialize(views, &metadata)
        .map_err(|e| IoError::format(path, format!("cannot serialise tensors: {e}")))?;
    crate::write_bytes(path, &data)
}

/// Every tensor of a safetensors file, read as f32 with its shape; any other dtype is an
/// error naming the tensor.
pub fn read_f32_tensors(path: &Path) -> Result<Tensors, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| IoError::format(path, format!("not a safetensors file: {e}")))?;
    let mut map = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(IoError::format(
                path,
                format!("tensor `{name}` has dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        map.insert(name, (view.shape().to_vec(), data));
    }
    Ok(Tensors {
        path: path.to_path_buf(),
        map,
    })
}

/// The tensors of one file, by name, remembering the file for error messages.
#[derive(Debug, Clone)]
pub struct Tensors {
    path: std::path::PathBuf,
    /// name -> (shape, values).
    pub map: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Tensors {
    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A tensor's shape and values, if present.
    pub fn get(&self, name: &str) -> Option<&(Vec<usize>, Vec<f32>)> {
        self.map.get(name)
    }

    /// Take the tensor `name`, which must have `shape`; errors name the file and the tensor.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, IoError> {
        let (got, data) = self
            .map
            .remove(name)
            .ok_or_else(|| IoError::format(&self.path, format!("missing tensor `{name}`")))?;
        if got != shape {
            return Err(IoError::format(
                &self.path,
                format!("tensor `{name}` has shape {got:?}, expected {shape:?}"),
            ));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_names_shapes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = [1.0f32, -2.5, 3.25, f32::MIN_POSITIVE, 0.0, 7.0];
        let b = [0.5f32];
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        write_f32_tensors(
            &path,
            &[("a.weight", vec![2, 3], &a[..]), ("b", vec![1], &b[..])],
            Some(meta),
        )
        .unwrap();
        let mut t = read_f32_tensors(&path).unwrap();
        assert_eq!(t.take("a.weight", &[2, 3]).unwrap(), a);
        let err = t.take("b", &[2]).unwrap_err().to_string();
        assert!(err.contains("`b` has shape [1], expected [2]"), "{err}");
        let err = t.take("c", &[1]).unwrap_err().to_string();
        assert!(err.contains("missing tensor `c`"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"not a tensor file").unwrap();
        let err = read_f32_tensors(&path).unwrap_err().to_string();
        assert!(err.contains("bad.safetensors"), "{err}");
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
