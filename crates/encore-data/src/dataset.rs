//! A prepared dataset: id maps both ways, the binary CSR matrix, optional timestamps and item
//! names (being written).

use serde::{Deserialize, Serialize};

use crate::{IdMap, InteractionMatrix};

/// A prepared, binarised interaction dataset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dataset {
    /// A short name (the input's file or folder name).
    pub name: String,
    /// External user ids <-> row indices.
    pub users: IdMap,
    /// External item ids <-> column indices.
    pub items: IdMap,
    /// The binary user x item matrix.
    pub matrix: InteractionMatrix,
    /// Seconds since the epoch for each stored interaction, aligned with `matrix.indices()`.
    pub timestamps: Option<Vec<i64>>,
    /// Human-readable item names (title, "artist - song"), by item index, where known.
    pub item_names: Option<Vec<String>>,
}

/// How raw interactions become a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareOptions {
    /// Keep only interactions whose value is `>= threshold`.
    pub threshold: Option<f32>,
    /// Iterative k-core: users need at least this many interactions.
    pub min_user_interactions: usize,
    /// Iterative k-core: items need at least this many interactions.
    pub min_item_interactions: usize,
    /// Read only the first N data rows.
    pub first_rows: Option<u64>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            threshold: None,
            min_user_interactions: 0,
            min_item_interactions: 0,
            first_rows: None,
        }
    }
}
