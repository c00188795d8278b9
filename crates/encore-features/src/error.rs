//! The crate's one error type (STYLE.md: one enum per crate, messages that name the file,
//! field or parameter and what was expected).

use std::path::PathBuf;

use encore_data::DataError;

/// Everything that can go wrong in PCA, fusion, and saving or loading a fusion model.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// A configuration or call parameter is out of range.
    #[error("invalid parameter `{name}`: {message}")]
    Parameter {
        /// The parameter's name as the caller knows it (`dim`, `modality_dim`, `k`, ...).
        name: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Input data (a feature table, a matrix) does not have the expected shape or content.
    #[error("{}: {message}", path.display())]
    Data {
        /// The table's source file, or a name standing for an in-memory input.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A saved model file is malformed or does not match what it is applied to.
    #[error("{}: {message}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A decomposition did not converge (faer's eigen/SVD solvers report this).
    #[error("numerical failure in {what}: {message}")]
    Numerical {
        /// Which computation failed.
        what: String,
        /// The solver's message.
        message: String,
    },
    /// An error from the data layer (reading feature tables).
    #[error(transparent)]
    DataLayer(#[from] DataError),
}

impl FeatureError {
    pub(crate) fn parameter(name: impl Into<String>, message: impl Into<String>) -> Self {
        FeatureError::Parameter {
            name: name.into(),
            message: message.into(),
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        FeatureError::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        FeatureError::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn numerical(what: impl Into<String>, message: impl Into<String>) -> Self {
        FeatureError::Numerical {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = FeatureError> = std::result::Result<T, E>;
