//! The one error type of the evaluation crate. Every message names the file (and line and
//! column where there is one) and says what was expected.

use std::path::PathBuf;

/// Errors raised while reading ranked lists or checking evaluation inputs.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A malformed value or line in a text file.
    #[error("{path}:{line}: column {column} ({field}): {message}")]
    Parse {
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// 1-based column (field) number.
        column: usize,
        /// The field name from the header.
        field: String,
        message: String,
    },
    /// A line that repeats a key (user and rank, or user and item) given on an earlier line.
    #[error("{path}:{line}: {message} (first given on line {first_line})")]
    Duplicate {
        path: PathBuf,
        /// 1-based line number of the repeat.
        line: u64,
        /// 1-based line number of the first occurrence.
        first_line: u64,
        message: String,
    },
    /// A problem with a file as a whole (empty file, missing header).
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// Inputs that do not fit together (shapes of matrices, lists and scorer).
    #[error("evaluation inputs do not fit together: {0}")]
    Shape(String),
}

impl EvalError {
    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}
