//! Deterministic train / validation / test splits (SPEC §2) (being written).

use serde::{Deserialize, Serialize};

use crate::InteractionMatrix;

/// The split protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    /// Per-user random 80/10/10 (RecBole `RS`).
    Ratio,
    /// Held-out users with an 80% fold-in (strong generalisation).
    Users,
    /// Per-user time order, 80/10/10 by time.
    Temporal,
}

/// A split of a dataset's matrix. All matrices have the dataset's full shape.
///
/// * `train`: what the model is fitted on (for `users`, only the training users' rows).
/// * `input`: each user's model input at evaluation time (`train` plus, for `users`, the
///   held-out users' fold-in items). Validation excludes `input`; test excludes
///   `input ∪ valid`.
/// * `valid`, `test`: target items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub kind: SplitKind,
    pub seed: u64,
    pub train: InteractionMatrix,
    pub input: InteractionMatrix,
    pub valid: InteractionMatrix,
    pub test: InteractionMatrix,
}
