//! The framework's error type, shared by every model crate.

use std::path::PathBuf;

/// Errors from configuring, training, saving or loading a model, and from a run directory's
/// lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A config key with a bad value: names the key and the allowed range.
    #[error("config key `{key}`: {message}")]
    Config { key: String, message: String },
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A saved model, checkpoint or run directory that cannot be read or used.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A dataset or split that cannot be read or saved (a run's `split/`, its dataset cache).
    #[error(transparent)]
    Data(#[from] encore_data::DataError),
    /// A new run asked for in a directory that already holds one.
    #[error("{dir}: already holds a run")]
    RunExists { dir: PathBuf },
    /// An input the model cannot handle (e.g. an item index outside the catalogue).
    #[error("{0}")]
    Input(String),
}

impl ModelError {
    /// A bad config value.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Wrap an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    /// A file that could not be understood.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<encore_io::IoError> for ModelError {
    fn from(e: encore_io::IoError) -> Self {
        match e {
            encore_io::IoError::Io { path, source } => ModelError::Io { path, source },
            encore_io::IoError::Format { path, message } => ModelError::Format { path, message },
        }
    }
}
