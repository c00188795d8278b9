//! Summary statistics of a generated world (SPEC §2: "print its statistics").

use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{fmt as tfmt, IntentKind, SynthWorld, BACKGROUND_SOURCE};

/// Order statistics of a distribution (nearest-rank quantiles).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Quantiles {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Quantiles {
    /// From values sorted ascending; all zero when empty.
    pub fn from_sorted(sorted: &[u64]) -> Self {
        if sorted.is_empty() {
            return Self::default();
        }
        let q = |p: f64| {
            let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1] as f64
        };
        Quantiles {
            min: sorted[0] as f64,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: sorted[sorted.len() - 1] as f64,
            mean: sorted.iter().map(|&v| v as f64).sum::<f64>() / sorted.len() as f64,
        }
    }

    /// From a histogram: `hist[v]` values equal to `v`.
    pub fn from_histogram(hist: &[u64]) -> Self {
        let n: u64 = hist.iter().sum();
        if n == 0 {
            return Self::default();
        }
        let at_rank = |rank: u64| {
            let mut acc = 0;
            for (v, &c) in hist.iter().enumerate() {
                acc += c;
                if acc >= rank {
                    return v as f64;
                }
            }
            (hist.len() - 1) as f64
        };
        let q = |p: f64| at_rank(((p * n as f64).ceil() as u64).clamp(1, n));
        let total: f64 = hist
            .iter()
            .enumerate()
            .map(|(v, &c)| v as f64 * c as f64)
            .sum();
        Quantiles {
            min: at_rank(1),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: at_rank(n),
            mean: total / n as f64,
        }
    }
}

/// Share of interactions by the kind of source that produced them (sums to 1).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct IntentShares {
    pub audio: f64,
    pub lyrics: f64,
    pub combination: f64,
    pub background: f64,
}

/// Statistics of a world: sizes, long tails, the intent mix and the time range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthStats {
    pub users: u64,
    pub tracks: u64,
    pub interactions: u64,
    /// `interactions / (users × tracks)`.
    pub density: f64,
    pub tracks_per_user: Quantiles,
    pub listeners_per_track: Quantiles,
    pub play_count: Quantiles,
    /// Share of interactions on the 1% most-played tracks.
    pub top_1pct_tracks_share: f64,
    /// Share of interactions on the 10% most-played tracks.
    pub top_10pct_tracks_share: f64,
    /// Gini coefficient of listeners per track (0: flat, 1: one track has everything).
    pub track_gini: f64,
    /// Tracks nobody played.
    pub cold_tracks: u64,
    /// Share of interactions explained by each intent kind.
    pub interaction_share: IntentShares,
    /// Share of users with at least one intent of each kind (`background` unused: 1).
    pub users_with_intent: IntentShares,
    /// First and last first-listen, `YYYY-MM-DD HH:MM:SS` UTC (empty without interactions).
    pub first_listen: String,
    pub last_listen: String,
}

impl SynthWorld {
    /// Compute the statistics (parallel over users; a second or two at Onion scale).
    pub fn stats(&self) -> SynthStats {
        let n_users = self.n_users();
        let n_tracks = self.n_tracks();
        let n = self.n_interactions();
        let mut per_user: Vec<u64> = (0..n_users)
            .map(|u| self.user_range(u).len() as u64)
            .collect();
        per_user.sort_unstable();
        let mut per_track = vec![0u64; n_tracks];
        for &i in &self.items {
            per_track[i as usize] += 1;
        }
        let cold_tracks = per_track.iter().filter(|&&c| c == 0).count() as u64;
        per_track.sort_unstable();
        let top_share = |frac: f64| -> f64 {
            let k = ((frac * n_tracks as f64).ceil() as usize).clamp(1, n_tracks);
            let top: u64 = per_track[n_tracks - k..].iter().sum();
            if n == 0 {
                0.0
            } else {
                top as f64 / n as f64
            }
        };
        // Gini over the ascending counts x_j (j = 1..n): 1 - 2 Σ (n - j + 0.5) x_j / (n Σ x).
        let total: f64 = per_track.iter().map(|&c| c as f64).sum();
        let track_gini = if total > 0.0 {
            let m = n_tracks as f64;
            let weighted: f64 = per_track
                .iter()
                .enumerate()
                .map(|(i, &c)| (m - i as f64 - 0.5) * c as f64)
                .sum();
            1.0 - 2.0 * weighted / (m * total)
        } else {
            0.0
        };
        let count_max = self.counts.iter().copied().max().unwrap_or(0) as usize;
        let count_hist = self
            .counts
            .par_chunks(1 << 20)
            .map(|chunk| {
                let mut h = vec![0u64; count_max + 1];
                for &c in chunk {
                    h[c as usize] += 1;
                }
                h
            })
            .reduce(
                || vec![0u64; count_max + 1],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let kind_counts = (0..n_users)
            .into_par_iter()
            .map(|u| {
                let mut c = [0u64; 4];
                for k in self.user_range(u) {
                    let slot = match self.source_kind(u, k) {
                        IntentKind::Audio => 0,
                        IntentKind::Lyrics => 1,
                        IntentKind::Combination => 2,
                        IntentKind::Background => 3,
                    };
                    c[slot] += 1;
                }
                c
            })
            .reduce(
                || [0u64; 4],
                |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]],
            );
        let share = |c: u64| if n == 0 { 0.0 } else { c as f64 / n as f64 };
        let mut with = [0u64; 3];
        for intents in &self.user_intents {
            for (slot, kind) in [
                IntentKind::Audio,
                IntentKind::Lyrics,
                IntentKind::Combination,
            ]
            .into_iter()
            .enumerate()
            {
                if intents.iter().any(|i| i.target.kind() == kind) {
                    with[slot] += 1;
                }
            }
        }
        let user_share = |c: u64| {
            if n_users == 0 {
                0.0
            } else {
                c as f64 / n_users as f64
            }
        };
        let stamp = |off: Option<u32>| {
            off.map(|o| {
                let mut b = Vec::new();
                tfmt::push_timestamp(&mut b, self.config.start_timestamp + i64::from(o));
                String::from_utf8(b).expect("ASCII")
            })
            .unwrap_or_default()
        };
        debug_assert!(self
            .sources
            .iter()
            .all(|&s| s == BACKGROUND_SOURCE || s < 8));
        SynthStats {
            users: n_users as u64,
            tracks: n_tracks as u64,
            interactions: n as u64,
            density: if n_users * n_tracks == 0 {
                0.0
            } else {
                n as f64 / (n_users as f64 * n_tracks as f64)
            },
            tracks_per_user: Quantiles::from_sorted(&per_user),
            listeners_per_track: Quantiles::from_sorted(&per_track),
            play_count: Quantiles::from_histogram(&count_hist),
            top_1pct_tracks_share: top_share(0.01),
            top_10pct_tracks_share: top_share(0.10),
            track_gini,
            cold_tracks,
            interaction_share: IntentShares {
                audio: share(kind_counts[0]),
                lyrics: share(kind_counts[1]),
                combination: share(kind_counts[2]),
                background: share(kind_counts[3]),
            },
            users_with_intent: IntentShares {
                audio: user_share(with[0]),
                lyrics: user_share(with[1]),
                combination: user_share(with[2]),
                background: if n_users == 0 { 0.0 } else { 1.0 },
            },
            first_listen: stamp(self.time_offsets.iter().copied().min()),
            last_listen: stamp(self.time_offsets.iter().copied().max()),
        }
    }
}

/// `1234567` as `1,234,567`.
fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (k, ch) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for SynthStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<22}{:>14}", "users", thousands(self.users))?;
        writeln!(f, "{:<22}{:>14}", "tracks", thousands(self.tracks))?;
        writeln!(
            f,
            "{:<22}{:>14}",
            "interactions",
            thousands(self.interactions)
        )?;
        writeln!(f, "{:<22}{:>13.3}%", "density", 100.0 * self.density)?;
        writeln!(
            f,
            "{:<22}{:>8}{:>8}{:>8}{:>8}{:>9}{:>9}",
            "", "min", "p50", "p90", "p99", "max", "mean"
        )?;
        for (name, q) in [
            ("tracks per user", &self.tracks_per_user),
            ("listeners per track", &self.listeners_per_track),
            ("play count", &self.play_count),
        ] {
            writeln!(
                f,
                "{:<22}{:>8}{:>8}{:>8}{:>8}{:>9}{:>9.1}",
                name, q.min, q.p50, q.p90, q.p99, q.max, q.mean
            )?;
        }
        writeln!(
            f,
            "popularity            top 1% of tracks: {:.1}% of interactions, top 10%: {:.1}%, Gini {:.3}, never played: {}",
            100.0 * self.top_1pct_tracks_share,
            100.0 * self.top_10pct_tracks_share,
            self.track_gini,
            thousands(self.cold_tracks)
        )?;
        writeln!(
            f,
            "{:<22}{:>12}{:>12}{:>13}{:>12}",
            "intent kind", "audio-only", "lyrics-only", "combination", "background"
        )?;
        let s = &self.interaction_share;
        writeln!(
            f,
            "{:<22}{:>11.1}%{:>11.1}%{:>12.1}%{:>11.1}%",
            "  interactions",
            100.0 * s.audio,
            100.0 * s.lyrics,
            100.0 * s.combination,
            100.0 * s.background
        )?;
        let w = &self.users_with_intent;
        writeln!(
            f,
            "{:<22}{:>11.1}%{:>11.1}%{:>12.1}%{:>12}",
            "  users having one",
            100.0 * w.audio,
            100.0 * w.lyrics,
            100.0 * w.combination,
            "-"
        )?;
        write!(
            f,
            "{:<22}{} .. {}",
            "first listens", self.first_listen, self.last_listen
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_hand() {
        let q = Quantiles::from_sorted(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(
            (q.min, q.p50, q.p90, q.p99, q.max),
            (1.0, 5.0, 9.0, 10.0, 10.0)
        );
        assert!((q.mean - 5.5).abs() < 1e-12);
        // Same distribution as a histogram: one each of 1..=10.
        let mut hist = vec![0u64; 11];
        hist[1..].iter_mut().for_each(|h| *h = 1);
        assert_eq!(Quantiles::from_histogram(&hist), q);
        assert_eq!(Quantiles::from_sorted(&[]), Quantiles::default());
        assert_eq!(Quantiles::from_histogram(&[0, 0]), Quantiles::default());
        let h = Quantiles::from_histogram(&[0, 98, 0, 2]);
        assert_eq!((h.min, h.p50, h.p99, h.max), (1.0, 1.0, 3.0, 3.0));
    }

    #[test]
    fn thousands_separator() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(50_123_456), "50,123,456");
    }
}
