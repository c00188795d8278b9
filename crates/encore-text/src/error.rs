//! The one error type of the text crate. Every message names the file (model folder, config,
//! tokenizer or weights file) or the parameter it is about, and says what was expected.

use std::path::PathBuf;

/// Errors raised while loading a text encoder or embedding texts.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// An I/O failure on a named file or folder (most often: it does not exist).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but is not what the encoder needs (malformed JSON, a missing field,
    /// weights of the wrong shape, a tokenizer that does not fit the model).
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// An invalid option (pooling name, batch size, maximum length).
    #[error("invalid parameter {name}: {message}")]
    Parameter { name: String, message: String },
    /// A failure while tokenizing or running the model on a batch, with the model folder and
    /// the texts involved.
    #[error("{path}: {message}")]
    Encode { path: PathBuf, message: String },
    /// Building the output feature table failed (e.g. duplicate ids).
    #[error(transparent)]
    Data(#[from] encore_data::DataError),
}

impl TextError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TextError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TextError::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn parameter(name: impl Into<String>, message: impl Into<String>) -> Self {
        TextError::Parameter {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// Result alias of the crate.
pub type Result<T, E = TextError> = std::result::Result<T, E>;
