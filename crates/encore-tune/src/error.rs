//! The one error type of the tuning crate. Every message names the file (and the line and key
//! where there is one) and says what was expected.

use std::path::PathBuf;

/// Errors raised while reading a search space, proposing trials or keeping a tuning directory.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A bad entry in a search-space file: the file, the 1-based line of the key, the key.
    #[error("{file}:{line}: `{key}`: {message}")]
    Space {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    /// A search-space file that is not a valid TOML document.
    #[error("{file}:{line}: column {column}: not a valid TOML document: {message}")]
    SpaceSyntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A malformed line of the trial log.
    #[error("{path}:{line}: {message}")]
    Journal {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A tuning directory recorded under other settings than the ones given.
    #[error(
        "{dir}: holds a tune made with other settings; {}; continue it with the same \
         settings, or choose another --out",
        differences.join("; ")
    )]
    SettingsDiffer {
        dir: PathBuf,
        differences: Vec<String>,
    },
    /// A directory that holds something other than a tune.
    #[error("{dir}: {message}")]
    NotATune { dir: PathBuf, message: String },
    /// An I/O failure on a named file, or a file that is not what it should be.
    #[error(transparent)]
    Io(#[from] encore_io::IoError),
    /// The plot of the trials could not be drawn.
    #[error("{path}: cannot draw the plot: {message}")]
    Plot { path: PathBuf, message: String },
}

impl TuneError {
    /// An I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TuneError::Io(encore_io::IoError::io(path, source))
    }
}
