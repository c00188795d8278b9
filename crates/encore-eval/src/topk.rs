//! Top-k selection over a row of scores by one streaming pass (no sort of the catalogue).
//!
//! The ranking order (EVALUATION.md "Ranking") is: higher score first; equal scores by the
//! lower item index; NaN scores after every number (including −∞), NaNs among themselves by
//! the lower index. `-0.0` and `+0.0` are equal scores. Excluded items are not ranked at all:
//! they never enter the list, so a list is shorter than `k` only when fewer than `k` items are
//! left. (RecBole sets them to −∞ and could therefore rank them when `k` exceeds the number of
//! candidates; with targets disjoint from the exclusions, as in every split, the metrics agree.)
//!
//! The pass keeps a small buffer of the best `k` entries so far, sorted best-first. Because
//! items are visited in increasing index order, a new item that only ties the current k-th
//! entry has the higher index and loses, so admission is a strict "better than the threshold".
//! The scan checks 32 scores at a time against the threshold with a branch-free comparison that
//! the compiler vectorises into a bit mask, and looks only at the items whose bit is set.

/// A total-order key of a score: larger key = better rank. NaN is 0, below −∞; `-0.0` is
/// mapped to `+0.0` so that the two tie.
#[inline]
pub fn score_key(score: f32) -> u32 {
    if score.is_nan() {
        return 0;
    }
    // -0.0 + 0.0 == +0.0 under round-to-nearest; every other value is unchanged.
    let bits = (score + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Scores checked per block in the fast path.
const BLOCK: usize = 32;

/// The best `k` items seen so far, best first. Reused across users to avoid allocation.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    keys: Vec<u32>,
    items: Vec<u32>,
    /// The score of the k-th entry while the buffer is full and that score is not NaN (the
    /// threshold of the fast path); NaN otherwise (which disables the fast path).
    threshold: f32,
    /// The excluded items of the current row as a bit set, one word per block of scores;
    /// all zeros between calls of [`TopK::select`].
    excluded: Vec<u32>,
}

impl TopK {
    /// An empty selection of the best `k`.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            keys: Vec::with_capacity(k + 1),
            items: Vec::with_capacity(k + 1),
            threshold: f32::NAN,
            excluded: Vec::new(),
        }
    }

    /// Forget every entry (keeping `k`).
    pub fn clear(&mut self) {
        self.keys.clear();
        self.items.clear();
        self.threshold = f32::NAN;
    }

    /// The selected items, best first (at most `k`).
    pub fn items(&self) -> &[u32] {
        &self.items
    }

    /// Offer one item. Items must be offered in increasing index order for the tie rule.
    #[inline]
    fn offer(&mut self, key: u32, item: u32, score: f32) {
        let len = self.keys.len();
        if len == self.k {
            if self.k == 0 || key <= self.keys[len - 1] {
                return;
            }
            self.keys.pop();
            self.items.pop();
        }
        // Insert after every entry with a key >= this one (equal keys have lower indices).
        let mut pos = self.keys.len();
        while pos > 0 && self.keys[pos - 1] < key {
            pos -= 1;
        }
        self.keys.insert(pos, key);
        self.items.insert(pos, item);
        if self.keys.len() == self.k {
            let last = self.keys[self.k - 1];
            // Entry `k - 1` is this item or an older one; recover its score from the key.
            self.threshold = if last == 0 {
                f32::NAN
            } else if pos == self.k - 1 {
                score + 0.0
            } else {
                key_to_score(last)
            };
        }
    }

    /// Offer item `item` (not excluded) with score `s` unless it cannot enter. Items must
    /// come in increasing index order (for the tie rule).
    #[inline]
    fn consider(&mut self, s: f32, item: u32) {
        let t = self.threshold;
        // A numeric threshold means the buffer is full and `s > t` is exactly "better than the
        // k-th entry" (NaN compares false; -0.0 and +0.0 compare equal).
        if t.is_nan() || s > t {
            self.offer(score_key(s), item, s);
        }
    }

    /// Select the best `k` items of `scores` (item `i` has score `scores[i]`), skipping the
    /// items in `excluded` (sorted ascending, unique).
    ///
    /// One sweep over the row: blocks of 32 scores are compared with the threshold (the
    /// k-th best score so far, which only rises) without branches, and only the items with a
    /// score above it are looked at one by one. The excluded items are a bit set with one
    /// word per block, cleared from the block's mask before that: a user's training items
    /// often score highest (they are the model's input) and each one cost a look.
    pub fn select(&mut self, scores: &[f32], excluded: &[u32]) {
        self.clear();
        if self.k == 0 {
            return;
        }
        let n = scores.len();
        if self.excluded.len() < n.div_ceil(BLOCK) {
            self.excluded.resize(n.div_ceil(BLOCK), 0);
        }
        for &i in excluded.iter().filter(|&&i| (i as usize) < n) {
            self.excluded[i as usize / BLOCK] |= 1 << (i as usize % BLOCK);
        }
        let mut blocks = scores.chunks_exact(BLOCK);
        let mut base = 0u32;
        for (w, block) in (&mut blocks).enumerate() {
            let block: &[f32; BLOCK] = block.try_into().expect("chunks_exact gives BLOCK");
            let t = self.threshold;
            let ex = self.excluded[w];
            if t.is_nan() {
                // Buffer not full yet, or its k-th entry is NaN: every item is considered.
                for (j, &s) in block.iter().enumerate() {
                    if ex & (1 << j) == 0 {
                        self.consider(s, base + j as u32);
                    }
                }
            } else {
                // The items above the threshold, as a bit mask; only those are considered
                // (in index order). The threshold can only rise within the block, and
                // `consider` checks each against the current one, so this skips only items
                // that could not enter. Blocks holding an excluded item that scores high
                // (a user's training items often do) no longer cost 32 checks.
                let mut mask = block
                    .iter()
                    .enumerate()
                    .fold(0u32, |m, (j, &s)| m | (u32::from(s > t) << j))
                    & !ex;
                while mask != 0 {
                    let j = mask.trailing_zeros();
                    self.consider(block[j as usize], base + j);
                    mask &= mask - 1;
                }
            }
            base += BLOCK as u32;
        }
        let ex = self.excluded.get(n / BLOCK).copied().unwrap_or(0);
        for (j, &s) in blocks.remainder().iter().enumerate() {
            if ex & (1 << j) == 0 {
                self.consider(s, base + j as u32);
            }
        }
        // Back to all zeros for the next row.
        for &i in excluded.iter().filter(|&&i| (i as usize) < n) {
            self.excluded[i as usize / BLOCK] = 0;
        }
    }
}

/// Inverse of [`score_key`] for keys other than 0 (NaN).
#[inline]
fn key_to_score(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 {
        key & 0x7FFF_FFFF
    } else {
        !key
    };
    f32::from_bits(bits)
}

/// Merge sorted unique lists into `out` (sorted, unique). Used for the union of a user's rows
/// in several exclusion matrices.
pub(crate) fn merge_sorted_into(lists: &[&[u32]], out: &mut Vec<u32>) {
    out.clear();
    match lists {
        [] => {}
        [one] => out.extend_from_slice(one),
        _ => {
            let mut scratch = Vec::new();
            out.extend_from_slice(lists[0]);
            for list in &lists[1..] {
                scratch.clear();
                let (mut a, mut b) = (0, 0);
                while a < out.len() && b < list.len() {
                    let (x, y) = (out[a], list[b]);
                    if x < y {
                        scratch.push(x);
                        a += 1;
                    } else if y < x {
                        scratch.push(y);
                        b += 1;
                    } else {
                        scratch.push(x);
                        a += 1;
                        b += 1;
                    }
                }
                scratch.extend_from_slice(&out[a..]);
                scratch.extend_from_slice(&list[b..]);
                std::mem::swap(out, &mut scratch);
            }
        }
    }
}

/// Reference ranking by a full stable sort (tests only): the same order as [`TopK`].
#[cfg(test)]
pub(crate) fn rank_by_sort(scores: &[f32], excluded: &[u32], k: usize) -> Vec<u32> {
    let mut items: Vec<u32> = (0..scores.len() as u32)
        .filter(|i| excluded.binary_search(i).is_err())
        .collect();
    // Stable sort by descending key keeps lower indices first among ties.
    items.sort_by(|&a, &b| score_key(scores[b as usize]).cmp(&score_key(scores[a as usize])));
    items.truncate(k);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn top(scores: &[f32], excluded: &[u32], k: usize) -> Vec<u32> {
        let mut t = TopK::new(k);
        t.select(scores, excluded);
        t.items().to_vec()
    }

    #[test]
    fn keys_order_numbers_and_put_nan_last() {
        let order = [
            f32::NAN,
            f32::NEG_INFINITY,
            -3.5,
            -f32::MIN_POSITIVE,
            0.0,
            f32::MIN_POSITIVE,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in order.windows(2) {
            assert!(score_key(w[0]) < score_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(score_key(-0.0), score_key(0.0));
        assert_eq!(score_key(-f32::NAN), 0);
        for s in order.iter().skip(1) {
            assert_eq!(key_to_score(score_key(*s)), *s);
        }
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let scores = [1.0, 3.0, 2.0, 3.0, 3.0, 2.0];
        assert_eq!(top(&scores, &[], 2), vec![1, 3]);
        assert_eq!(top(&scores, &[], 4), vec![1, 3, 4, 2]);
        // Long row so the block path is used: all equal scores -> first k indices.
        let flat = vec![0.5f32; 100];
        assert_eq!(top(&flat, &[], 3), vec![0, 1, 2]);
        assert_eq!(top(&flat, &[0, 2], 3), vec![1, 3, 4]);
    }

    #[test]
    fn signed_zeros_tie() {
        let scores = [-0.0, 0.0, -0.0];
        assert_eq!(top(&scores, &[], 3), vec![0, 1, 2]);
    }

    #[test]
    fn excluded_items_never_appear_and_nan_ranks_last() {
        let scores = [f32::NAN, 5.0, f32::NEG_INFINITY, 9.0, 1.0];
        assert_eq!(top(&scores, &[3], 10), vec![1, 4, 2, 0]);
        assert_eq!(top(&scores, &[], 2), vec![3, 1]);
        // Nothing left.
        assert!(top(&scores, &[0, 1, 2, 3, 4], 3).is_empty());
        assert!(top(&scores, &[], 0).is_empty());
    }

    #[test]
    fn nan_threshold_still_admits_numbers() {
        // The first k entries are NaN: later numbers (in the block path) must replace them.
        let mut scores = vec![f32::NAN; 40];
        scores[37] = -1.0;
        scores[20] = f32::NEG_INFINITY;
        assert_eq!(top(&scores, &[], 3), vec![37, 20, 0]);
    }

    #[test]
    fn merge_unions_sorted_lists() {
        let mut out = Vec::new();
        merge_sorted_into(&[&[1, 4, 9], &[0, 4, 10], &[2]], &mut out);
        assert_eq!(out, vec![0, 1, 2, 4, 9, 10]);
        merge_sorted_into(&[], &mut out);
        assert!(out.is_empty());
        merge_sorted_into(&[&[3]], &mut out);
        assert_eq!(out, vec![3]);
    }

    fn score_strategy() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => (0i32..6).prop_map(|v| v as f32 * 0.5),
            4 => -1e3f32..1e3f32,
            1 => Just(f32::NAN),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::INFINITY),
            1 => Just(-0.0f32),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_full_stable_sort(
            scores in prop::collection::vec(score_strategy(), 0..200),
            excl_mask in prop::collection::vec(any::<bool>(), 200),
            k in 0usize..40,
        ) {
            let excluded: Vec<u32> = (0..scores.len() as u32)
                .filter(|&i| excl_mask[i as usize] && i % 3 == 0)
                .collect();
            prop_assert_eq!(top(&scores, &excluded, k), rank_by_sort(&scores, &excluded, k));
        }

        /// One selector over several rows (its exclusion bit set must be empty again after
        /// each), with exclusions past the end of a row, which are ignored.
        #[test]
        fn a_reused_selector_matches_a_full_stable_sort(
            rows in prop::collection::vec(prop::collection::vec(score_strategy(), 0..120), 1..5),
            excl_mask in prop::collection::vec(any::<bool>(), 130),
            k in 1usize..20,
        ) {
            let mut t = TopK::new(k);
            for (r, scores) in rows.iter().enumerate() {
                let mut excluded: Vec<u32> = (0..130u32)
                    .filter(|&i| excl_mask[i as usize] && (i as usize + r).is_multiple_of(2))
                    .collect();
                excluded.dedup();
                t.select(scores, &excluded);
                let kept: Vec<u32> = excluded
                    .iter()
                    .copied()
                    .filter(|&i| (i as usize) < scores.len())
                    .collect();
                prop_assert_eq!(t.items().to_vec(), rank_by_sort(scores, &kept, k));
            }
        }
    }
}
