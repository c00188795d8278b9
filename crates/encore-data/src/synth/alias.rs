//! Random-number plumbing of the generator: per-entity seed derivation (so results do not
//! depend on how rayon schedules work) and Walker/Vose alias tables for O(1) weighted draws.

use rand::Rng;

/// Independent random streams of the generator. Each entity (user, track, artist) of each
/// stream gets its own ChaCha8 generator seeded from `(seed, stream, index)`, so a user's
/// listening history is the same whichever thread builds it, and changing, say, the audio width
/// does not change the lyrics.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub(crate) enum Stream {
    Global = 1,
    Artist = 2,
    TrackTags = 3,
    Audio = 4,
    LyricsEmbedding = 5,
    LyricsText = 6,
    User = 7,
}

/// SplitMix64's finaliser: a bijective 64-bit mixer.
#[inline]
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit seed of entity `index` in `stream` under the world seed `seed`.
#[inline]
pub(crate) fn entity_seed(seed: u64, stream: Stream, index: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ (stream as u64)) ^ index)
}

/// A ChaCha8 generator for entity `index` of `stream`.
#[inline]
pub(crate) fn entity_rng(seed: u64, stream: Stream, index: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    rand_chacha::ChaCha8Rng::seed_from_u64(entity_seed(seed, stream, index))
}

/// Walker's alias method (Vose's stable construction): draws `items[j]` with probability
/// proportional to `weights[j]` in O(1).
#[derive(Debug, Clone)]
pub(crate) struct AliasTable {
    prob: Vec<f64>,
    alias: Vec<u32>,
    items: Vec<u32>,
}

impl AliasTable {
    /// `None` when there is nothing to draw (no items, or all weights zero or not finite).
    pub(crate) fn new(items: Vec<u32>, weights: &[f64]) -> Option<Self> {
        debug_assert_eq!(items.len(), weights.len());
        // Items that can never be drawn are dropped, so rounding in the construction can never
        // give them probability.
        let (items, weights): (Vec<u32>, Vec<f64>) = items
            .into_iter()
            .zip(weights.iter().copied())
            .filter(|(_, w)| w.is_finite() && *w > 0.0)
            .unzip();
        let n = items.len();
        let total: f64 = weights.iter().sum();
        if n == 0 || !total.is_finite() {
            return None;
        }
        let mut scaled: Vec<f64> = weights.iter().map(|&w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let mut small = Vec::new();
        let mut large = Vec::new();
        for (j, &s) in scaled.iter().enumerate() {
            if s < 1.0 {
                small.push(j);
            } else {
                large.push(j);
            }
        }
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers (rounding) keep probability 1 of themselves.
        Some(Self { prob, alias, items })
    }

    /// One weighted draw.
    #[inline]
    pub(crate) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let j = rng.random_range(0..self.items.len());
        if rng.random::<f64>() < self.prob[j] {
            self.items[j]
        } else {
            self.items[self.alias[j] as usize]
        }
    }
}

/// Inverse-CDF draw from cumulative weights `cdf` (non-decreasing, last entry the total).
#[inline]
pub(crate) fn sample_cdf<R: Rng + ?Sized>(cdf: &[f64], rng: &mut R) -> usize {
    let total = cdf.last().copied().unwrap_or(0.0);
    let u = rng.random::<f64>() * total;
    cdf.partition_point(|&c| c <= u)
        .min(cdf.len().saturating_sub(1))
}

/// Cumulative sums of `weights`.
pub(crate) fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .into_iter()
        .map(|w| {
            acc += w.max(0.0);
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_stream_index_and_seed() {
        let a = entity_seed(1, Stream::User, 0);
        assert_ne!(a, entity_seed(1, Stream::User, 1));
        assert_ne!(a, entity_seed(1, Stream::Audio, 0));
        assert_ne!(a, entity_seed(2, Stream::User, 0));
        assert_eq!(a, entity_seed(1, Stream::User, 0));
    }

    #[test]
    fn alias_table_matches_weights() {
        let table = AliasTable::new(vec![10, 20, 30, 40], &[1.0, 2.0, 0.0, 5.0]).unwrap();
        let mut rng = entity_rng(3, Stream::Global, 0);
        let mut hits = [0usize; 4];
        let n = 200_000;
        for _ in 0..n {
            let item = table.sample(&mut rng);
            hits[(item / 10 - 1) as usize] += 1;
        }
        let expect = [1.0 / 8.0, 2.0 / 8.0, 0.0, 5.0 / 8.0];
        for j in 0..4 {
            let p = hits[j] as f64 / n as f64;
            assert!(
                (p - expect[j]).abs() < 0.005,
                "item {j}: {p} vs {}",
                expect[j]
            );
        }
        assert_eq!(hits[2], 0, "zero-weight item drawn");
        assert!(AliasTable::new(vec![], &[]).is_none());
        assert!(AliasTable::new(vec![1], &[0.0]).is_none());
        assert!(AliasTable::new(vec![1], &[f64::NAN]).is_none());
    }

    #[test]
    fn cdf_sampling() {
        let cdf = cumulative([0.0, 1.0, 0.0, 3.0]);
        assert_eq!(cdf, vec![0.0, 1.0, 1.0, 4.0]);
        let mut rng = entity_rng(4, Stream::Global, 0);
        let mut hits = [0usize; 4];
        for _ in 0..40_000 {
            hits[sample_cdf(&cdf, &mut rng)] += 1;
        }
        assert_eq!(hits[0] + hits[2], 0);
        assert!((hits[1] as f64 / 40_000.0 - 0.25).abs() < 0.01);
    }
}
