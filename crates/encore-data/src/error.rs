//! The one error type of the data crate. Every message names the file (and line, column or
//! field where there is one) and says what was expected.

use std::path::PathBuf;

/// Errors raised while reading, preparing, splitting or caching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
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
        /// 1-based column number.
        column: usize,
        /// The field name from the header (or the format's definition).
        field: String,
        message: String,
    },
    /// A problem with a file as a whole (missing column in the header, empty file, bad magic).
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// An invalid parameter given by the user.
    #[error("invalid parameter {name}: {message}")]
    Parameter { name: String, message: String },
    /// Anything else, with a message that says what went wrong.
    #[error("{0}")]
    Other(String),
}

impl DataError {
    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// An error about a whole file.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An invalid user-supplied parameter.
    pub fn parameter(name: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Parameter {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// Result alias for the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl From<encore_io::IoError> for DataError {
    fn from(e: encore_io::IoError) -> Self {
        match e {
            encore_io::IoError::Io { path, source } => DataError::Io { path, source },
            encore_io::IoError::Format { path, message } => DataError::Format { path, message },
        }
    }
}
