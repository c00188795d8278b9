//! Durable output for every Encore crate (SPEC §8: "nothing half-written"), and f32
//! safetensors, in one place so that every file the system writes follows one policy.
//!
//! # The atomic-write policy
//!
//! - **A file** ([`write_atomic`], [`write_bytes`]) is written to a temporary file in the same
//!   folder, flushed, `fsync`ed, renamed over the target, and the folder is `fsync`ed so that
//!   the rename itself survives a power cut. A crash at any moment leaves the old file or the
//!   new one, never a mixture; a failed write removes the temporary file.
//! - **A new folder** ([`create_dir`]) is filled under a hidden temporary sibling and renamed
//!   into place when complete: on error nothing is left behind.
//! - **A folder replaced in place** ([`replace_dir`]), such as a training checkpoint: the new
//!   contents go to `DIR.tmp`; then `DIR` is renamed to `DIR.old`, `DIR.tmp` to `DIR`, and
//!   `DIR.old` is removed. A crash between the two renames leaves `DIR.old` and `DIR.tmp`;
//!   [`find_dir`] then returns `DIR.old`, the last complete state.
//!
//! The temporary files live next to their targets because a rename is atomic only within one
//! file system.

pub mod tensors;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use tensors::{f32_le_bytes, read_f32_tensors, write_f32_tensors, Tensors};

/// An I/O failure on a named path, or a file that is not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused an operation on `path`.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that was read but could not be understood.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

impl IoError {
    /// Wrap an operating-system error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.into(),
            source,
        }
    }

    /// A file that could not be understood.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        IoError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Write `path` atomically (see the module documentation): `body` writes the contents into a
/// 1 MiB buffered writer over a temporary file in the same folder.
pub fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
) -> Result<(), IoError> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".encore-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| IoError::io(dir, e))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        body(&mut w).map_err(|e| IoError::io(path, e))?;
        w.flush().map_err(|e| IoError::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| IoError::io(path, e))?;
    tmp.persist(path).map_err(|e| IoError::io(path, e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Write `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Move a finished file `tmp` (written by another library, e.g. a plotting backend) to
/// `path` under the same policy as [`write_atomic`]: synced, renamed, the rename synced. `tmp`
/// must be in `path`'s folder.
pub fn install_file(tmp: &Path, path: &Path) -> Result<(), IoError> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| IoError::io(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| IoError::io(path, e))?;
    sync_dir(parent_dir(path));
    Ok(())
}

/// Write `value` as pretty-printed JSON to `path`, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), IoError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| IoError::format(path, format!("cannot serialise: {e}")))?;
    write_bytes(path, text.as_bytes())
}

/// Read and parse a JSON file; errors name the file, line and column.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, IoError> {
    let text = std::fs::read_to_string(path).map_err(|e| IoError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        IoError::format(
            path,
            format!("line {}, column {}: {e}", e.line(), e.column()),
        )
    })
}

/// Make a rename in `dir` durable. Best effort: some platforms and file systems cannot sync a
/// folder, and the data itself was already synced.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Create the new folder `out` by filling a hidden temporary sibling with `fill` and renaming
/// it into place; on any error the partial folder is removed and `out` is untouched. `out` may
/// exist only as an empty folder (it is replaced).
pub fn create_dir<E: From<IoError>>(
    out: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = parent_dir(out);
    std::fs::create_dir_all(parent).map_err(|e| IoError::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".encore-tmp-")
        .tempdir_in(parent)
        .map_err(|e| IoError::io(parent, e))?;
    fill(tmp.path())?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, out) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(IoError::io(out, e).into());
    }
    sync_dir(parent);
    Ok(())
}

/// `dir` with `suffix` appended to its last component (`run/checkpoint` + `.old`).
pub fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The folder to read a [`replace_dir`] folder from: `dir`, or `dir.old` when a process died
/// between its two renames; `None` when neither exists.
pub fn find_dir(dir: &Path) -> Option<PathBuf> {
    if dir.is_dir() {
        return Some(dir.to_path_buf());
    }
    let old = with_suffix(dir, ".old");
    old.is_dir().then_some(old)
}

/// Replace the folder `dir` with what `fill` writes into a fresh folder, atomically (see the
/// module documentation). The files `fill` writes should themselves be written with
/// [`write_atomic`] or be synced, so that the renamed folder is complete on disk.
pub fn replace_dir<E: From<IoError>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = with_suffix(dir, ".tmp");
    let old = with_suffix(dir, ".old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| IoError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| IoError::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        // Nothing half-written stays behind; `dir` is untouched.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| IoError::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| IoError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| IoError::io(&tmp, e))?;
    sync_dir(parent_dir(dir));
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| IoError::io(&old, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_bytes(&path, b"one").unwrap();
        write_bytes(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the target is left");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_bytes(&path, b"old").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("a.txt"), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_dir_leaves_nothing_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new");
        let r: Result<(), IoError> = create_dir(&out, |tmp| {
            write_bytes(&tmp.join("x"), b"1")?;
            Err(IoError::format(tmp, "injected"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        create_dir::<IoError>(&out, |tmp| write_bytes(&tmp.join("x"), b"1")).unwrap();
        assert_eq!(std::fs::read(out.join("x")).unwrap(), b"1");
    }

    #[test]
    fn replace_dir_swaps_contents_and_find_dir_recovers_a_crash_between_renames() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint");
        replace_dir::<IoError>(&ck, |d| write_bytes(&d.join("v"), b"1")).unwrap();
        replace_dir::<IoError>(&ck, |d| write_bytes(&d.join("v"), b"2")).unwrap();
        assert_eq!(std::fs::read(ck.join("v")).unwrap(), b"2");
        assert!(!with_suffix(&ck, ".old").exists());
        assert!(!with_suffix(&ck, ".tmp").exists());
        // A crash after the first rename: only checkpoint.old (and a stale .tmp) remain.
        std::fs::rename(&ck, with_suffix(&ck, ".old")).unwrap();
        assert_eq!(find_dir(&ck), Some(with_suffix(&ck, ".old")));
        // A failed fill leaves the previous state readable.
        let r = replace_dir::<IoError>(&ck, |d| Err(IoError::format(d, "injected")));
        assert!(r.is_err());
        assert_eq!(
            std::fs::read(find_dir(&ck).unwrap().join("v")).unwrap(),
            b"2"
        );
    }
}
