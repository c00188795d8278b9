//! A compact binary cache of a prepared [`Dataset`], so that a 50M-interaction dataset
//! reloads in seconds instead of being parsed again (SPEC §2).
//!
//! Layout (all integers little-endian):
//! ```text
//! magic "ENCOREDS" | version u32 | header length u64 | header (JSON: name, ids, names, shape)
//! | indptr u64 x (users+1) | indices u32 x nnz | [timestamps i64 x nnz]
//! | [source order u32 x nnz] | blake3 of all before (32 bytes)
//! ```
//! Version 1 files (no source order) still load, without a source order.
//! The arrays are raw so that loading is a `read_exact` per array; the trailing hash catches
//! truncated or corrupted files with a clear error instead of a wrong dataset. Written through a
//! temporary file and renamed, so a crash never leaves a half-written cache.

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{DataError, Dataset, IdMap, InteractionMatrix, Result};

/// The cache's file name inside a prepared dataset directory (`encore data import --out DIR`
/// writes `DIR/dataset.bin`), where a run directory's recorded dataset is looked up.
pub const FILE_NAME: &str = "dataset.bin";

const MAGIC: &[u8; 8] = b"ENCOREDS";
const VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct Header {
    name: String,
    users: Vec<String>,
    items: Vec<String>,
    item_names: Option<Vec<String>>,
    nnz: u64,
    has_timestamps: bool,
    #[serde(default)]
    has_source_order: bool,
}

/// Write `dataset` to `path` atomically.
pub fn save(dataset: &Dataset, path: &Path) -> Result<()> {
    let header = Header {
        name: dataset.name.clone(),
        users: dataset.users.ids().to_vec(),
        items: dataset.items.ids().to_vec(),
        item_names: dataset.item_names.clone(),
        nnz: dataset.matrix.nnz() as u64,
        has_timestamps: dataset.timestamps.is_some(),
        has_source_order: dataset.source_order.is_some(),
    };
    let header = serde_json::to_vec(&header).expect("header serialises");
    write_framed(path, MAGIC, VERSION, &header, |hw| {
        write_le(hw, dataset.matrix.indptr())?;
        write_le(hw, dataset.matrix.indices())?;
        if let Some(ts) = &dataset.timestamps {
            write_le(hw, ts)?;
        }
        if let Some(order) = &dataset.source_order {
            write_le(hw, order)?;
        }
        Ok(())
    })
}

/// Write a binary file the way Encore's caches are laid out, atomically: `magic`, `version`
/// (u32), the header's length (u64) and the header, then what `body` writes, then the BLAKE3
/// hash of everything before it.
pub(crate) fn write_framed(
    path: &Path,
    magic: &[u8; 8],
    version: u32,
    header: &[u8],
    body: impl FnOnce(&mut HashingWriter<&mut dyn Write>) -> std::io::Result<()>,
) -> Result<()> {
    Ok(encore_io::write_atomic(path, |w| {
        let mut hw = HashingWriter {
            inner: w as &mut dyn Write,
            hasher: blake3::Hasher::new(),
        };
        hw.write_all(magic)?;
        hw.write_all(&version.to_le_bytes())?;
        hw.write_all(&(header.len() as u64).to_le_bytes())?;
        hw.write_all(header)?;
        body(&mut hw)?;
        let digest = hw.hasher.finalize();
        hw.inner.write_all(digest.as_bytes())
    })?)
}

/// Read a cache written by [`save`].
pub fn load(path: &Path) -> Result<Dataset> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut r = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
    };
    let bad = |msg: &str| DataError::format(path, msg.to_string());
    let truncated = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            DataError::format(
                path,
                "the cache file is truncated; re-run `encore data import`",
            )
        } else {
            DataError::io(path, e)
        }
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(truncated)?;
    if &magic != MAGIC {
        return Err(bad("not an Encore dataset cache (bad magic bytes)"));
    }
    let mut word = [0u8; 4];
    r.read_exact(&mut word).map_err(truncated)?;
    let version = u32::from_le_bytes(word);
    if version != VERSION && version != 1 {
        return Err(bad(&format!(
            "cache format version {version}, this build reads version {VERSION}; re-run `encore data import`"
        )));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(truncated)?;
    let header_len = u64::from_le_bytes(len);
    let file_len = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    if header_len > file_len {
        return Err(bad("the cache header length is larger than the file"));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header).map_err(truncated)?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|e| bad(&format!("the cache header is not valid: {e}")))?;
    let (n_users, n_items) = (header.users.len(), header.items.len());
    let expected = 20
        + header_len
        + 8 * (n_users as u64 + 1)
        + 4 * header.nnz
        + if header.has_timestamps {
            8 * header.nnz
        } else {
            0
        }
        + if header.has_source_order {
            4 * header.nnz
        } else {
            0
        }
        + 32;
    if expected != file_len {
        return Err(bad(&format!(
            "the cache should be {expected} bytes for its header, but is {file_len} (truncated or corrupted)"
        )));
    }
    let indptr: Vec<u64> = read_le(&mut r, n_users + 1).map_err(truncated)?;
    let indices: Vec<u32> = read_le(&mut r, header.nnz as usize).map_err(truncated)?;
    let timestamps = if header.has_timestamps {
        Some(read_le::<i64, _>(&mut r, header.nnz as usize).map_err(truncated)?)
    } else {
        None
    };
    let source_order = if header.has_source_order {
        Some(read_le::<u32, _>(&mut r, header.nnz as usize).map_err(truncated)?)
    } else {
        None
    };
    let digest = r.hasher.finalize();
    let mut stored = [0u8; 32];
    r.inner.read_exact(&mut stored).map_err(truncated)?;
    if digest.as_bytes() != &stored {
        return Err(bad(
            "checksum mismatch: the cache is corrupted; re-run `encore data import`",
        ));
    }
    if let Some(order) = &source_order {
        let mut seen = vec![false; order.len()];
        for &p in order {
            match seen.get_mut(p as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err(bad("the source order is not a permutation")),
            }
        }
    }
    let matrix = InteractionMatrix::from_csr(n_users, n_items, indptr, indices)
        .map_err(|m| bad(&format!("invalid matrix: {m}")))?;
    let users =
        IdMap::from_ids(header.users).map_err(|id| bad(&format!("duplicate user id `{id}`")))?;
    let items =
        IdMap::from_ids(header.items).map_err(|id| bad(&format!("duplicate item id `{id}`")))?;
    if header
        .item_names
        .as_ref()
        .is_some_and(|n| n.len() != n_items)
    {
        return Err(bad("item names do not match the number of items"));
    }
    Ok(Dataset {
        name: header.name,
        users,
        items,
        matrix,
        timestamps,
        item_names: header.item_names,
        source_order,
    })
}

pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) struct HashingReader<R> {
    pub(crate) inner: R,
    pub(crate) hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Write a slice of plain integers as little-endian bytes.
pub(crate) fn write_le<T: bytemuck::Pod, W: Write>(w: &mut W, values: &[T]) -> std::io::Result<()> {
    // x86-64 and aarch64 are little-endian; a big-endian host would need a byte swap here.
    const {
        assert!(
            cfg!(target_endian = "little"),
            "the cache assumes a little-endian host"
        )
    };
    for chunk in values.chunks(1 << 16) {
        w.write_all(bytemuck::cast_slice(chunk))?;
    }
    Ok(())
}

/// Read `n` little-endian integers.
pub(crate) fn read_le<T: bytemuck::Pod + bytemuck::Zeroable, R: Read>(
    r: &mut R,
    n: usize,
) -> std::io::Result<Vec<T>> {
    let mut out = vec![T::zeroed(); n];
    r.read_exact(bytemuck::cast_slice_mut(&mut out))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readers::Record;
    use crate::PrepareOptions;

    fn sample(with_ts: bool) -> Dataset {
        let rows = [
            ("u1", "a", 3),
            ("u1", "b", 1),
            ("u2", "a", 2),
            ("u3", "c", 9),
        ];
        let records = rows.iter().map(|&(user, item, t)| Record {
            user,
            item,
            value: 1.0,
            timestamp: with_ts.then_some(t),
        });
        let mut ds = Dataset::from_records("sample", records, &PrepareOptions::default())
            .unwrap()
            .0;
        ds.item_names = Some(vec!["A".into(), "B".into(), String::new()]);
        ds
    }

    #[test]
    fn round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        for with_ts in [false, true] {
            let ds = sample(with_ts);
            let path = dir.path().join(format!("d{with_ts}.bin"));
            save(&ds, &path).unwrap();
            let back = load(&path).unwrap();
            assert_eq!(back, ds);
            assert_eq!(back.users.get("u3"), ds.users.get("u3"));
            assert_eq!(back.fingerprint(), ds.fingerprint());
        }
    }

    #[test]
    fn version_1_caches_load_without_a_source_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.bin");
        let mut ds = sample(true);
        ds.source_order = None;
        save(&ds, &path).unwrap();
        // A version-1 file is this file with version 1 (its header lacks the new flag, which
        // defaults to false) and the checksum over it.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        let body = bytes.len() - 32;
        let digest = blake3::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(digest.as_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load(&path).unwrap(), ds);
    }

    #[test]
    fn damaged_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.bin");
        save(&sample(true), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("d.bin") && err.contains("truncated"), "{err}");

        let mut flipped = bytes.clone();
        let last = flipped.len() - 40;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");

        std::fs::write(&path, b"hello world, not a cache").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("magic"));
        std::fs::write(&path, b"").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("truncated"));
    }
}
