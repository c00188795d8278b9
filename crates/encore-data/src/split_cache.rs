//! A binary twin of a saved split directory (`split.bin` beside `train.tsv` ...), so that a
//! run at Music4All-Onion scale (50M lines of `user_id<TAB>item_id`, 1.1 GB of text) is read
//! as raw arrays instead of being parsed again by every `recommend`, `evaluate` and `serve`.
//!
//! The text files stay the split's record (other tools read them); the twin only answers for
//! them while they are unchanged. Its header names every source file with its length and
//! BLAKE3 hash (the text files and `split.json`) and the catalogue its indices refer to (a
//! hash of the user and item ids in index order). [`load`] returns `None`, and the text is
//! parsed as before, when anything differs: a file edited, added or removed, another
//! dataset's catalogue, another format version, or a damaged twin (the trailing hash).
//!
//! Layout (integers little-endian):
//! ```text
//! magic "ENCORESP" | version u32 | header length u64 | header (JSON)
//! | for train, input, valid, test: indptr u64 x (users+1) | indices u32 x nnz
//! | blake3 of all before (32 bytes)
//! ```
//! Written through a temporary file and renamed, so a crash never leaves a half-written twin.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cache::{read_le, write_framed, write_le, HashingReader};
use crate::{IdMap, InteractionMatrix, Result};

/// The twin's file name inside a split directory.
pub const FILE_NAME: &str = "split.bin";

/// The files of a split directory the twin stands for, when present.
const SOURCES: [&str; 5] = [
    "train.tsv",
    "foldin.tsv",
    "valid.tsv",
    "test.tsv",
    "split.json",
];

const MAGIC: &[u8; 8] = b"ENCORESP";
const VERSION: u32 = 1;

/// One source file as the twin saw it: name, length and BLAKE3 hash (hex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Source {
    name: String,
    len: u64,
    hash: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    sources: Vec<Source>,
    /// BLAKE3 of the user ids then the item ids, in index order.
    catalogue: String,
    n_users: usize,
    n_items: usize,
    /// Entries of train, input, valid and test.
    nnz: [u64; 4],
}

/// The four matrices of a split, in the twin's order.
pub struct Parts {
    pub train: InteractionMatrix,
    pub input: InteractionMatrix,
    pub valid: InteractionMatrix,
    pub test: InteractionMatrix,
}

/// The source files of `dir` as they are now (absent ones left out).
fn sources(dir: &Path) -> std::io::Result<Vec<Source>> {
    let mut out = Vec::new();
    for name in SOURCES {
        let path = dir.join(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut hasher = blake3::Hasher::new();
        let len = std::io::copy(
            &mut std::io::BufReader::with_capacity(1 << 20, file),
            &mut hasher,
        )?;
        out.push(Source {
            name: name.to_string(),
            len,
            hash: hasher.finalize().to_hex().to_string(),
        });
    }
    Ok(out)
}

/// The hash naming a catalogue: its user ids, then its item ids, in index order.
fn catalogue(users: &IdMap, items: &IdMap) -> String {
    let mut h = blake3::Hasher::new();
    for (tag, ids) in [(b'u', users), (b'i', items)] {
        h.update(&[tag]);
        h.update(&(ids.len() as u64).to_le_bytes());
        for id in ids.ids() {
            h.update(&(id.len() as u64).to_le_bytes());
            h.update(id.as_bytes());
        }
    }
    h.finalize().to_hex().to_string()
}

/// Write the twin of `dir`'s text files (as they are now) holding the split's train, input,
/// valid and test matrices, indexed by the catalogue `users` x `items`.
pub fn save(
    dir: &Path,
    users: &IdMap,
    items: &IdMap,
    parts: [&InteractionMatrix; 4],
) -> Result<()> {
    let header = Header {
        sources: sources(dir).map_err(|e| crate::DataError::io(dir, e))?,
        catalogue: catalogue(users, items),
        n_users: users.len(),
        n_items: items.len(),
        nnz: parts.map(|m| m.nnz() as u64),
    };
    let header = serde_json::to_vec(&header).expect("header serialises");
    write_framed(&dir.join(FILE_NAME), MAGIC, VERSION, &header, |hw| {
        for m in parts {
            write_le(hw, m.indptr())?;
            write_le(hw, m.indices())?;
        }
        Ok(())
    })
}

/// The split's matrices from `dir`'s twin, when it has one that answers for its text files as
/// they are now and for the catalogue `users` x `items`; `None` otherwise (parse the text).
pub fn load(dir: &Path, users: &IdMap, items: &IdMap) -> Option<Parts> {
    let path = dir.join(FILE_NAME);
    if !path.exists() {
        return None;
    }
    match read(&path, dir, users, items) {
        Ok(parts) => parts,
        Err(e) => {
            tracing::warn!("{}: not used ({e}); reading the text files", path.display());
            None
        }
    }
}

/// [`load`]'s reading: `Ok(None)` for a twin that no longer answers for the directory, an
/// error for a damaged one.
fn read(path: &Path, dir: &Path, users: &IdMap, items: &IdMap) -> std::io::Result<Option<Parts>> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let file_len = std::fs::metadata(path)?.len();
    let mut r = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?),
        hasher: blake3::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    let mut word = [0u8; 4];
    r.read_exact(&mut word)?;
    if &magic != MAGIC || u32::from_le_bytes(word) != VERSION {
        return Ok(None);
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > file_len {
        return Err(invalid("the header length is larger than the file".into()));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header)?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|e| invalid(format!("the header is not valid: {e}")))?;
    if header.n_users != users.len()
        || header.n_items != items.len()
        || header.catalogue != catalogue(users, items)
        || header.sources != sources(dir)?
    {
        return Ok(None);
    }
    let expected = 20
        + header_len
        + 4 * 8 * (header.n_users as u64 + 1)
        + 4 * header.nnz.iter().sum::<u64>()
        + 32;
    if expected != file_len {
        return Err(invalid(format!(
            "should be {expected} bytes for its header, but is {file_len}"
        )));
    }
    let mut matrices = Vec::with_capacity(4);
    for &nnz in &header.nnz {
        let indptr: Vec<u64> = read_le(&mut r, header.n_users + 1)?;
        let indices: Vec<u32> = read_le(&mut r, nnz as usize)?;
        matrices.push((indptr, indices));
    }
    let digest = r.hasher.finalize();
    let mut stored = [0u8; 32];
    r.inner.read_exact(&mut stored)?;
    if digest.as_bytes() != &stored {
        return Err(invalid("checksum mismatch (damaged)".into()));
    }
    let mut built = matrices.into_iter().map(|(indptr, indices)| {
        InteractionMatrix::from_csr(header.n_users, header.n_items, indptr, indices)
            .map_err(|m| invalid(format!("invalid matrix: {m}")))
    });
    let mut next = || built.next().expect("four matrices");
    Ok(Some(Parts {
        train: next()?,
        input: next()?,
        valid: next()?,
        test: next()?,
    }))
}
