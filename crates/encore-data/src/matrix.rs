//! The user x item interaction matrix in compressed sparse row form.
//!
//! Rows are users, columns are items, every stored entry is a 1 (interactions are binarised
//! during preparation). Column indices within a row are sorted ascending and unique. The matrix
//! is never densified: a 119k x 57k matrix would take 27 GB as f32.

use serde::{Deserialize, Serialize};

/// A binary user x item matrix in CSR layout with `u32` column indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InteractionMatrix {
    n_users: usize,
    n_items: usize,
    /// `indptr[u]..indptr[u + 1]` is the range of user `u`'s items in `indices`.
    indptr: Vec<u64>,
    indices: Vec<u32>,
}

impl InteractionMatrix {
    /// An empty matrix (no interactions) of the given shape.
    pub fn empty(n_users: usize, n_items: usize) -> Self {
        Self {
            n_users,
            n_items,
            indptr: vec![0; n_users + 1],
            indices: Vec::new(),
        }
    }

    /// Build from raw CSR arrays, checking every invariant (monotone `indptr`, sorted unique
    /// in-range indices). Returns a message naming the first violation.
    pub fn from_csr(
        n_users: usize,
        n_items: usize,
        indptr: Vec<u64>,
        indices: Vec<u32>,
    ) -> Result<Self, String> {
        if indptr.len() != n_users + 1 {
            return Err(format!(
                "indptr has {} entries, expected n_users + 1 = {}",
                indptr.len(),
                n_users + 1
            ));
        }
        if indptr[0] != 0 || indptr[n_users] as usize != indices.len() {
            return Err("indptr must start at 0 and end at the number of indices".into());
        }
        for u in 0..n_users {
            let (a, b) = (indptr[u] as usize, indptr[u + 1] as usize);
            if a > b || b > indices.len() {
                return Err(format!("indptr is not monotone at row {u}"));
            }
            let row = &indices[a..b];
            for w in row.windows(2) {
                if w[0] >= w[1] {
                    return Err(format!("row {u} is not sorted and unique"));
                }
            }
            if let Some(&last) = row.last() {
                if last as usize >= n_items {
                    return Err(format!("row {u} has item {last} >= n_items {n_items}"));
                }
            }
        }
        Ok(Self {
            n_users,
            n_items,
            indptr,
            indices,
        })
    }

    /// Build from per-user item lists. Each list is sorted and deduplicated here.
    ///
    /// # Panics
    /// If an item index is `>= n_items` (a programming error, not an input error).
    pub fn from_rows<R: AsRef<[u32]>>(n_items: usize, rows: &[R]) -> Self {
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        indptr.push(0u64);
        let mut indices = Vec::new();
        for row in rows {
            let start = indices.len();
            indices.extend_from_slice(row.as_ref());
            let slice = &mut indices[start..];
            slice.sort_unstable();
            let mut w = 0;
            for r in 0..slice.len() {
                if r == 0 || slice[r] != slice[w - 1] {
                    slice[w] = slice[r];
                    w += 1;
                }
            }
            indices.truncate(start + w);
            if let Some(&m) = indices[start..].iter().max() {
                assert!(
                    (m as usize) < n_items,
                    "item index {m} out of range {n_items}"
                );
            }
            indptr.push(indices.len() as u64);
        }
        Self {
            n_users: rows.len(),
            n_items,
            indptr,
            indices,
        }
    }

    /// Build from (user, item) pairs in any order; duplicates are merged.
    pub fn from_pairs(n_users: usize, n_items: usize, pairs: &[(u32, u32)]) -> Self {
        let mut counts = vec![0u64; n_users + 1];
        for &(u, _) in pairs {
            counts[u as usize + 1] += 1;
        }
        for u in 0..n_users {
            counts[u + 1] += counts[u];
        }
        let mut fill = counts.clone();
        let mut indices = vec![0u32; pairs.len()];
        for &(u, i) in pairs {
            let p = &mut fill[u as usize];
            indices[*p as usize] = i;
            *p += 1;
        }
        let rows: Vec<&[u32]> = (0..n_users)
            .map(|u| &indices[counts[u] as usize..counts[u + 1] as usize])
            .collect();
        Self::from_rows(n_items, &rows)
    }

    /// Number of users (rows).
    pub fn n_users(&self) -> usize {
        self.n_users
    }

    /// Number of items (columns).
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// Number of stored interactions.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// The sorted item indices of user `u`.
    #[inline]
    pub fn row(&self, u: usize) -> &[u32] {
        &self.indices[self.indptr[u] as usize..self.indptr[u + 1] as usize]
    }

    /// Number of items of user `u`.
    #[inline]
    pub fn row_len(&self, u: usize) -> usize {
        (self.indptr[u + 1] - self.indptr[u]) as usize
    }

    /// Whether user `u` has item `i` (binary search in the sorted row).
    #[inline]
    pub fn contains(&self, u: usize, i: u32) -> bool {
        self.row(u).binary_search(&i).is_ok()
    }

    /// The row pointer array (`n_users + 1` entries).
    pub fn indptr(&self) -> &[u64] {
        &self.indptr
    }

    /// The column index array.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Number of interactions of every item (column counts).
    pub fn item_counts(&self) -> Vec<u64> {
        let mut c = vec![0u64; self.n_items];
        for &i in &self.indices {
            c[i as usize] += 1;
        }
        c
    }

    /// The item x user transpose, also CSR with sorted rows.
    pub fn transpose(&self) -> InteractionMatrix {
        let mut indptr = vec![0u64; self.n_items + 1];
        for &i in &self.indices {
            indptr[i as usize + 1] += 1;
        }
        for i in 0..self.n_items {
            indptr[i + 1] += indptr[i];
        }
        let mut fill = indptr.clone();
        let mut indices = vec![0u32; self.indices.len()];
        for u in 0..self.n_users {
            for &i in self.row(u) {
                let p = &mut fill[i as usize];
                indices[*p as usize] = u as u32;
                *p += 1;
            }
        }
        InteractionMatrix {
            n_users: self.n_items,
            n_items: self.n_users,
            indptr,
            indices,
        }
    }

    /// Element-wise union of two matrices of the same shape (rows stay sorted and unique).
    pub fn union(&self, other: &InteractionMatrix) -> InteractionMatrix {
        assert_eq!(self.n_users, other.n_users, "union: user counts differ");
        assert_eq!(self.n_items, other.n_items, "union: item counts differ");
        let mut indptr = Vec::with_capacity(self.n_users + 1);
        indptr.push(0u64);
        let mut indices = Vec::with_capacity(self.nnz() + other.nnz());
        for u in 0..self.n_users {
            let (a, b) = (self.row(u), other.row(u));
            let (mut x, mut y) = (0, 0);
            while x < a.len() || y < b.len() {
                let next = match (a.get(x), b.get(y)) {
                    (Some(&p), Some(&q)) if p == q => {
                        x += 1;
                        y += 1;
                        p
                    }
                    (Some(&p), Some(&q)) if p < q => {
                        x += 1;
                        p
                    }
                    (Some(_), Some(&q)) => {
                        y += 1;
                        q
                    }
                    (Some(&p), None) => {
                        x += 1;
                        p
                    }
                    (None, Some(&q)) => {
                        y += 1;
                        q
                    }
                    (None, None) => unreachable!(),
                };
                indices.push(next);
            }
            indptr.push(indices.len() as u64);
        }
        InteractionMatrix {
            n_users: self.n_users,
            n_items: self.n_items,
            indptr,
            indices,
        }
    }

    /// Users that have at least one interaction.
    pub fn nonempty_users(&self) -> Vec<u32> {
        (0..self.n_users)
            .filter(|&u| self.row_len(u) > 0)
            .map(|u| u as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_sorted_and_deduplicated() {
        let m = InteractionMatrix::from_rows(5, &[vec![3, 1, 3], vec![], vec![4, 0]]);
        assert_eq!(m.row(0), &[1, 3]);
        assert_eq!(m.row(1), &[] as &[u32]);
        assert_eq!(m.row(2), &[0, 4]);
        assert_eq!(m.nnz(), 4);
        assert!(m.contains(2, 4));
        assert!(!m.contains(0, 2));
    }

    #[test]
    fn transpose_twice_is_identity() {
        let m = InteractionMatrix::from_pairs(3, 4, &[(0, 3), (2, 1), (0, 1), (1, 0), (2, 1)]);
        let t = m.transpose();
        assert_eq!(t.row(1), &[0, 2]);
        assert_eq!(t.transpose(), m);
    }

    #[test]
    fn union_merges_rows() {
        let a = InteractionMatrix::from_rows(6, &[vec![1, 4], vec![2]]);
        let b = InteractionMatrix::from_rows(6, &[vec![0, 4, 5], vec![]]);
        let u = a.union(&b);
        assert_eq!(u.row(0), &[0, 1, 4, 5]);
        assert_eq!(u.row(1), &[2]);
    }

    #[test]
    fn from_csr_rejects_unsorted_rows() {
        assert!(InteractionMatrix::from_csr(1, 3, vec![0, 2], vec![2, 1]).is_err());
        assert!(InteractionMatrix::from_csr(1, 3, vec![0, 2], vec![1, 3]).is_err());
        assert!(InteractionMatrix::from_csr(1, 3, vec![0, 2], vec![0, 2]).is_ok());
    }
}
