//! External id <-> dense index maps.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// A two-way map (FxHash: ids are short and trusted-length, and lookups sit on the import hot
/// path of 50M rows) between external ids (strings as they appear in the files) and dense
/// indices `0..len`, in order of first appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    ids: Vec<String>,
    #[serde(skip)]
    index: FxHashMap<String, u32>,
}

impl IdMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Build from ids in index order. Duplicates are an error (returns the duplicate).
    pub fn from_ids(ids: Vec<String>) -> Result<Self, String> {
        let mut index = FxHashMap::default();
        index.reserve(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if index.insert(id.clone(), i as u32).is_some() {
                return Err(id.clone());
            }
        }
        Ok(Self { ids, index })
    }

    /// The index of `id`, inserting it if new.
    #[inline]
    pub fn intern(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(id.to_owned());
        self.index.insert(id.to_owned(), i);
        i
    }

    /// The index of `id`, if known.
    #[inline]
    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The external id of index `i`.
    #[inline]
    pub fn id(&self, i: u32) -> &str {
        &self.ids[i as usize]
    }

    /// All external ids in index order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Rebuild the lookup table after deserialisation (the table is not serialised).
    pub fn rebuild_index(&mut self) {
        self.index = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
    }

    /// Keep only the indices for which `keep` is true, renumbering densely in order.
    /// Returns the old -> new index map (`u32::MAX` for dropped ids).
    pub fn retain(&mut self, keep: &[bool]) -> Vec<u32> {
        let mut remap = vec![u32::MAX; self.ids.len()];
        let mut ids = Vec::new();
        for (old, id) in std::mem::take(&mut self.ids).into_iter().enumerate() {
            if keep[old] {
                remap[old] = ids.len() as u32;
                ids.push(id);
            }
        }
        self.ids = ids;
        self.rebuild_index();
        remap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_and_lookup_both_ways() {
        let mut m = IdMap::new();
        assert_eq!(m.intern("b"), 0);
        assert_eq!(m.intern("a"), 1);
        assert_eq!(m.intern("b"), 0);
        assert_eq!(m.get("a"), Some(1));
        assert_eq!(m.id(1), "a");
        let remap = m.retain(&[false, true]);
        assert_eq!(remap, vec![u32::MAX, 0]);
        assert_eq!(m.get("a"), Some(0));
        assert_eq!(m.get("b"), None);
    }
}
