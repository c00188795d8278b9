//! The built-in synthetic music world (SPEC §2): a generator, deterministic by seed, of
//! listeners, tracks, listening counts, first-listen timestamps, 512-d audio descriptors,
//! lyrics (real English-like text) and 768-d lyrics embeddings, written in the
//! Music4All-Onion file layout so every other part of Encore runs on it unchanged.
//!
//! It exists so that everything runs on a fresh machine with no downloads, and so that the
//! machinery (features, conditioning, models, evaluation) can be checked against structure
//! that is known to be there. Quality claims are made on real data; this world shows that the
//! pipeline works and how fast it is.
//!
//! # The generative story
//!
//! Every random draw comes from a ChaCha8 generator seeded from `(seed, stream, index)` (one
//! stream per kind of entity: artists, track tags, audio, lyric embeddings, lyric texts,
//! users), so the world is byte-identical for a seed whatever the number of threads.
//!
//! 1. **Genres and themes.** There are `G` genres (audio clusters: pop, rock, electronic, ...)
//!    and `H` lyrical themes (love, heartbreak, party, road, ...). Genre `g` has size weight
//!    `(g+1)^-0.7`, theme `h` weight `(h+1)^-0.5`: a few big genres and themes, a tail of small
//!    ones.
//! 2. **Artists and tracks.** There are `A = round(I / tracks_per_artist)` artists; artist `a`
//!    plays one genre `g_a` (drawn by genre weight) and has 1-3 albums. Track `i` is by a
//!    uniformly drawn artist and inherits its genre; its theme `h_i` is drawn by theme weight
//!    **independently of the genre**, so audio and lyrics carry separate information. Track
//!    ids are 16-character base62 strings (a BLAKE3 hash of seed and index), like Onion's.
//!    Artist, album and song names are invented words (songs mix in words of their theme).
//! 3. **Popularity.** A random permutation ranks the tracks; track `i` with rank `r_i`
//!    (0-based) has popularity `π_i = (r_i + 1)^-α` (Zipf, `α = popularity_exponent`). Every
//!    draw of a track below is proportional to `π` within the pool it is drawn from.
//! 4. **Audio descriptors** (i-vector-like, `audio_dim = 512`). Each genre has a centre
//!    `c_g ~ N(0, I_d)` in a latent space of `d = latent_dim` dimensions; a fixed random
//!    projection `P_a ∈ R^{512×d}`, entries `N(0, 1/d)`, maps it out:
//!    `audio_i = P_a (s_a · c_{g_i} + ε_i) + σ · η_i` with `ε_i ~ N(0, I_d)`,
//!    `η_i ~ N(0, I_512)`, separation `s_a = audio_separation`, noise `σ = feature_noise`.
//!    Audio knows the genre and nothing about the theme.
//! 5. **Lyrics.** A lyric has `U{words_min..words_max}` words (40-120) in lines of 4-9 words,
//!    each word from the track's theme vocabulary with probability `theme_word_share` (Zipf
//!    within the vocabulary), from another theme's vocabulary with probability
//!    `other_theme_word_share`, otherwise a common English filler word ("the", "you", "don't",
//!    ...); the second line comes back at the end as a chorus when the length allows. The
//!    768-d **lyrics-embedding stand-in** is built like the audio from theme centres:
//!    `lyr_i = P_l (s_l · c_{h_i} + ε_i) + σ · η_i`. Lyrics know the theme and nothing about
//!    the genre.
//! 6. **Listeners and intents.** User `u` has `K_u ~ U{intents_min..intents_max}` intents,
//!    each of one kind, drawn with probabilities `intent_kind_weights`:
//!    - *audio-only*: likes genre `g` (any theme) - only the audio can see it;
//!    - *lyrics-only*: likes theme `h` (any genre) - only the lyrics can see it;
//!    - *combination*: likes tracks of genre `g` **and** theme `h` - and neither alone: the
//!      user's other `g` tracks and other `h` tracks come only from the background. A model
//!      conditioned on audio alone or lyrics alone (or their sum, as `concat` + a linear
//!      layer sees it) cannot separate the cell from its row and column; their outer product
//!      (`tensor` fusion, SPEC §3) can.
//!
//!    Targets are drawn with weight `(pool popularity)^0.5` among pools with at least 3
//!    tracks, and one user's intents never share a genre or a theme (so each intent's signal
//!    is unambiguous). Intent `k` has a base weight `w_k ~ Gamma(intent_concentration)` and a
//!    drift slope `δ_k ~ U(-drift, drift)`.
//! 7. **Activity.** The number of distinct tracks user `u` plays is
//!    `n_u = clamp(round(LogNormal(μ, activity_sigma)), min_tracks_per_user, max_tracks_per_user)`
//!    with `μ = ln(mean_tracks_per_user) - activity_sigma²/2` (so the unclamped mean is
//!    `mean_tracks_per_user`); `max_tracks_per_user = max_user_fraction · I`.
//! 8. **Listening over time.** Time runs over `span_days` days from `start_timestamp`
//!    (2018-01-01 to 2019-12-31 by default). A share `late_joiner_share` of users join at
//!    `τ0 ~ U(0, 0.75)` of the span, the others at 0. Each first listen happens at
//!    `τ ~ U(τ0, 1)`; at that moment intent `k` has weight
//!    `w_k(τ) ∝ w_k · exp(δ_k (τ - 1/2))`, renormalised to `1 - background_share`, and the
//!    background (plain popularity over the whole catalogue) has weight `background_share`.
//!    A source is drawn by these weights, then a track from its pool by popularity; a track
//!    already played is redrawn from the same pool up to 16 times before the source is drawn
//!    again (at most `8 n_u + 100` source draws, so a user whose pools run dry ends with
//!    fewer tracks). Because intents drift, a temporal split is meaningful: the
//!    future favours other intents than the past.
//! 9. **Play counts.** Each (user, track) pair is played `1 + Geometric` times with mean
//!    extra plays `f_u · m`, `m = count_mean_intent` for intent draws and
//!    `count_mean_background` for background draws, and a per-user factor
//!    `f_u ~ LogNormal(0, count_user_sigma)`; capped at `count_max`.
//!
//! # Presets
//!
//! | knob | `tiny` | `small` | `onion` |
//! |---|---|---|---|
//! | users × tracks | 200 × 150 | 3,000 × 2,000 | 119,140 × 56,512 |
//! | genres `G` / themes `H` | 6 / 5 | 10 / 8 | 20 / 16 |
//! | mean tracks per user (σ, min, max share) | 15 (0.5, 5, 0.4) | 50 (0.8, 5, 0.25) | 420 (0.9, 10, 0.1) |
//! | interactions (about) | 3,000 | 150,000 | 50,000,000 |
//! | tracks per artist | 5 | 8 | 8 |
//! | popularity exponent `α` | 0.8 | 1.1 | 1.0 |
//! | intents per user | 2-3 | 2-4 | 2-4 |
//! | intent kinds audio / lyrics / combination | 1/3 each | 1/3 each | 1/3 each |
//! | background share | 0.25 | 0.25 | 0.25 |
//! | drift `δ` range | ±3 | ±3 | ±3 |
//! | latent `d`, separations `s_a`, `s_l`, noise `σ` | 16, 0.8, 0.8, 0.5 | 32, 0.7, 0.7, 0.5 | 32, 0.6, 0.6, 0.5 |
//! | audio / lyrics-embedding width | 512 / 768 | 512 / 768 | 512 / 768 |
//!
//! All presets share: intent concentration 2, late-joiner share 0.3, time span 730 days from
//! 2018-01-01, play-count means 2.0 (intent) and 0.5 (background) with user factor σ 0.5,
//! count cap 10,000, lyrics of 40-120 words with theme-word share 0.3 and other-theme share
//! 0.05.
//!
//! # Deviations from the real Music4All-Onion files
//!
//! `userid_trackid_timestamp.tsv` has **one row per (user, track) pair: its first listen**.
//! The real file has one row per listening event (253M rows); a reader that keeps the first
//! (or any) timestamp per pair sees the same thing in both. User ids are `0..n_users`.

mod alias;
mod fmt;
mod stats;
mod words;
mod write;

pub use stats::{IntentShares, Quantiles, SynthStats};
pub use write::{
    audio_file_name, write_onion_layout, SynthSummary, WrittenFile, COUNT_FILE, INFORMATION_FILE,
    LYRICS_EMBEDDING_FILE, LYRICS_FILE, MANIFEST_FILE, SYNTH_FILES, TAGS_FILE, TIMESTAMP_FILE,
};

use std::fmt as stdfmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Gamma, LogNormal, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::matrix::InteractionMatrix;
use alias::{cumulative, entity_rng, sample_cdf, AliasTable, Stream};

/// A named bundle of generator settings (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// For unit tests: 200 users, 150 tracks, about 3,000 interactions, generated in
    /// milliseconds.
    Tiny,
    /// The demo: 3,000 users, 2,000 tracks, about 150,000 interactions.
    Small,
    /// Music4All-Onion scale for benchmarks: 119,140 users, 56,512 tracks, about 50M
    /// interactions (density about 0.7%).
    Onion,
}

impl Preset {
    /// All presets, smallest first.
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Small, Preset::Onion];

    /// The preset's name as written on the command line and in `world.json`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Onion => "onion",
        }
    }
}

impl stdfmt::Display for Preset {
    fn fmt(&self, f: &mut stdfmt::Formatter<'_>) -> stdfmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                DataError::parameter(
                    "preset",
                    format!("unknown synthetic-world preset {s:?}: expected tiny, small or onion"),
                )
            })
    }
}

/// Every knob of the generator. Start from [`SynthConfig::preset`] and change fields; the
/// module documentation says what each one does in the generative story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// The preset this configuration started from (recorded in `world.json`; informational).
    pub base_preset: Option<Preset>,
    /// Number of users.
    pub n_users: usize,
    /// Number of tracks (the catalogue).
    pub n_tracks: usize,
    /// Number of genres `G` (audio clusters), 1..=65535.
    pub n_genres: usize,
    /// Number of lyrical themes `H`, 1..=65535; themes beyond the 16 built-in vocabularies get
    /// invented vocabularies.
    pub n_themes: usize,
    /// Mean number of tracks per artist (sets the number of artists).
    pub tracks_per_artist: f64,
    /// Zipf exponent `α` of track popularity.
    pub popularity_exponent: f64,
    /// Mean of the (unclamped) log-normal number of distinct tracks per user.
    pub mean_tracks_per_user: f64,
    /// Log-normal σ of the number of tracks per user (the long tail of activity).
    pub activity_sigma: f64,
    /// Fewest distinct tracks a user asks for.
    pub min_tracks_per_user: usize,
    /// Most distinct tracks a user asks for, as a share of the catalogue.
    pub max_user_fraction: f64,
    /// Fewest intents per user.
    pub intents_min: usize,
    /// Most intents per user (at most 8).
    pub intents_max: usize,
    /// Relative probabilities of the intent kinds `[audio-only, lyrics-only, combination]`.
    pub intent_kind_weights: [f64; 3],
    /// Gamma shape of the intents' base weights (small: one dominant intent; large: even).
    pub intent_concentration: f64,
    /// Share of first listens drawn from plain popularity rather than an intent, in `[0, 1)`.
    pub background_share: f64,
    /// Intents drift: slope `δ_k ~ U(-drift, drift)` of the log-weight over the whole span.
    pub drift: f64,
    /// Share of users who join after the start, at `U(0, 0.75)` of the span.
    pub late_joiner_share: f64,
    /// Start of the time range, Unix seconds (UTC).
    pub start_timestamp: i64,
    /// Length of the time range in days.
    pub span_days: u32,
    /// Mean extra plays of a pair drawn from an intent.
    pub count_mean_intent: f64,
    /// Mean extra plays of a pair drawn from the background.
    pub count_mean_background: f64,
    /// Log-normal σ of the per-user play-count factor.
    pub count_user_sigma: f64,
    /// Largest play count.
    pub count_max: u32,
    /// Width of the audio-descriptor vectors (Onion's i-vectors: 512).
    pub audio_dim: usize,
    /// Width of the lyrics-embedding stand-in (BERT-base: 768).
    pub lyrics_dim: usize,
    /// Dimension `d` of the latent space the genre/theme centres live in.
    pub latent_dim: usize,
    /// Distance scale `s_a` of genre centres relative to per-track latent noise.
    pub audio_separation: f64,
    /// Distance scale `s_l` of theme centres relative to per-track latent noise.
    pub lyrics_separation: f64,
    /// Isotropic noise σ added after projection.
    pub feature_noise: f64,
    /// Fewest words in a lyric.
    pub lyric_words_min: usize,
    /// Most words in a lyric.
    pub lyric_words_max: usize,
    /// Probability that a lyric word comes from the track's theme vocabulary.
    pub theme_word_share: f64,
    /// Probability that a lyric word comes from another theme's vocabulary.
    pub other_theme_word_share: f64,
}

impl SynthConfig {
    /// The settings of a preset (see the table in the module documentation).
    pub fn preset(p: Preset) -> Self {
        let base = SynthConfig {
            base_preset: Some(p),
            n_users: 200,
            n_tracks: 150,
            n_genres: 6,
            n_themes: 5,
            tracks_per_artist: 5.0,
            popularity_exponent: 0.8,
            mean_tracks_per_user: 15.0,
            activity_sigma: 0.5,
            min_tracks_per_user: 5,
            max_user_fraction: 0.4,
            intents_min: 2,
            intents_max: 3,
            intent_kind_weights: [1.0, 1.0, 1.0],
            intent_concentration: 2.0,
            background_share: 0.25,
            drift: 3.0,
            late_joiner_share: 0.3,
            start_timestamp: 1_514_764_800, // 2018-01-01 00:00:00 UTC
            span_days: 730,
            count_mean_intent: 2.0,
            count_mean_background: 0.5,
            count_user_sigma: 0.5,
            count_max: 10_000,
            audio_dim: 512,
            lyrics_dim: 768,
            latent_dim: 16,
            audio_separation: 0.8,
            lyrics_separation: 0.8,
            feature_noise: 0.5,
            lyric_words_min: 40,
            lyric_words_max: 120,
            theme_word_share: 0.3,
            other_theme_word_share: 0.05,
        };
        match p {
            Preset::Tiny => base,
            Preset::Small => SynthConfig {
                n_users: 3_000,
                n_tracks: 2_000,
                n_genres: 10,
                n_themes: 8,
                tracks_per_artist: 8.0,
                popularity_exponent: 1.1,
                mean_tracks_per_user: 50.0,
                activity_sigma: 0.8,
                max_user_fraction: 0.25,
                intents_max: 4,
                latent_dim: 32,
                audio_separation: 0.7,
                lyrics_separation: 0.7,
                ..base
            },
            Preset::Onion => SynthConfig {
                n_users: 119_140,
                n_tracks: 56_512,
                n_genres: 20,
                n_themes: 16,
                tracks_per_artist: 8.0,
                popularity_exponent: 1.0,
                mean_tracks_per_user: 420.0,
                activity_sigma: 0.9,
                min_tracks_per_user: 10,
                max_user_fraction: 0.1,
                intents_max: 4,
                latent_dim: 32,
                audio_separation: 0.6,
                lyrics_separation: 0.6,
                ..base
            },
        }
    }

    /// Check every knob; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        fn bad(name: &str, message: impl Into<String>) -> Result<()> {
            Err(DataError::parameter(format!("synth.{name}"), message))
        }
        let finite_nonneg = |name: &str, v: f64| -> Result<()> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                bad(name, format!("{v} must be a finite number >= 0"))
            }
        };
        let unit = |name: &str, v: f64| -> Result<()> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                bad(name, format!("{v} must lie in [0, 1]"))
            }
        };
        if self.n_users == 0 || self.n_users > u32::MAX as usize {
            return bad(
                "n_users",
                format!("{} must be in 1..=4294967295", self.n_users),
            );
        }
        if self.n_tracks == 0 || self.n_tracks > u32::MAX as usize {
            return bad(
                "n_tracks",
                format!("{} must be in 1..=4294967295", self.n_tracks),
            );
        }
        if self.n_genres == 0 || self.n_genres > u16::MAX as usize {
            return bad(
                "n_genres",
                format!("{} must be in 1..=65535", self.n_genres),
            );
        }
        if self.n_themes == 0 || self.n_themes > u16::MAX as usize {
            return bad(
                "n_themes",
                format!("{} must be in 1..=65535", self.n_themes),
            );
        }
        if !(self.tracks_per_artist.is_finite() && self.tracks_per_artist >= 1.0) {
            return bad(
                "tracks_per_artist",
                format!("{} must be a finite number >= 1", self.tracks_per_artist),
            );
        }
        finite_nonneg("popularity_exponent", self.popularity_exponent)?;
        if !(self.mean_tracks_per_user.is_finite() && self.mean_tracks_per_user > 0.0) {
            return bad(
                "mean_tracks_per_user",
                format!("{} must be a finite number > 0", self.mean_tracks_per_user),
            );
        }
        finite_nonneg("activity_sigma", self.activity_sigma)?;
        if self.activity_sigma > 5.0 {
            return bad(
                "activity_sigma",
                format!("{} must be <= 5", self.activity_sigma),
            );
        }
        if self.min_tracks_per_user == 0 {
            return bad("min_tracks_per_user", "must be at least 1");
        }
        if !(self.max_user_fraction > 0.0 && self.max_user_fraction <= 1.0) {
            return bad(
                "max_user_fraction",
                format!("{} must lie in (0, 1]", self.max_user_fraction),
            );
        }
        if self.intents_min > self.intents_max || self.intents_max > 8 {
            return bad(
                "intents_min/intents_max",
                format!(
                    "{}..={} must satisfy intents_min <= intents_max <= 8",
                    self.intents_min, self.intents_max
                ),
            );
        }
        for (k, w) in self.intent_kind_weights.iter().enumerate() {
            finite_nonneg(&format!("intent_kind_weights[{k}]"), *w)?;
        }
        if self.intents_max > 0 && self.intent_kind_weights.iter().sum::<f64>() <= 0.0 {
            return bad("intent_kind_weights", "at least one weight must be > 0");
        }
        if !(self.intent_concentration.is_finite() && self.intent_concentration > 0.0) {
            return bad(
                "intent_concentration",
                format!("{} must be a finite number > 0", self.intent_concentration),
            );
        }
        if !(0.0..1.0).contains(&self.background_share) {
            return bad(
                "background_share",
                format!("{} must lie in [0, 1)", self.background_share),
            );
        }
        finite_nonneg("drift", self.drift)?;
        if self.drift > 20.0 {
            return bad("drift", format!("{} must be <= 20", self.drift));
        }
        unit("late_joiner_share", self.late_joiner_share)?;
        let end = self.start_timestamp as i128 + self.span_days as i128 * 86_400;
        if self.start_timestamp < 0 || end > 253_402_300_799 {
            return bad(
                "start_timestamp",
                "the time range must lie between 1970-01-01 and 9999-12-31",
            );
        }
        if self.span_days == 0 || self.span_days > 49_000 {
            return bad(
                "span_days",
                format!("{} must be in 1..=49000", self.span_days),
            );
        }
        finite_nonneg("count_mean_intent", self.count_mean_intent)?;
        finite_nonneg("count_mean_background", self.count_mean_background)?;
        finite_nonneg("count_user_sigma", self.count_user_sigma)?;
        if self.count_user_sigma > 5.0 {
            return bad(
                "count_user_sigma",
                format!("{} must be <= 5", self.count_user_sigma),
            );
        }
        if self.count_max == 0 || self.count_max > 10_000_000 {
            return bad(
                "count_max",
                format!("{} must be in 1..=10000000", self.count_max),
            );
        }
        for (name, v) in [
            ("audio_dim", self.audio_dim),
            ("lyrics_dim", self.lyrics_dim),
            ("latent_dim", self.latent_dim),
        ] {
            if v == 0 || v > 65_536 {
                return bad(name, format!("{v} must be in 1..=65536"));
            }
        }
        finite_nonneg("audio_separation", self.audio_separation)?;
        finite_nonneg("lyrics_separation", self.lyrics_separation)?;
        finite_nonneg("feature_noise", self.feature_noise)?;
        if self.lyric_words_min == 0
            || self.lyric_words_min > self.lyric_words_max
            || self.lyric_words_max > 10_000
        {
            return bad(
                "lyric_words_min/lyric_words_max",
                format!(
                    "{}..={} must satisfy 1 <= min <= max <= 10000",
                    self.lyric_words_min, self.lyric_words_max
                ),
            );
        }
        unit("theme_word_share", self.theme_word_share)?;
        unit("other_theme_word_share", self.other_theme_word_share)?;
        if self.theme_word_share + self.other_theme_word_share > 1.0 {
            return bad(
                "theme_word_share",
                "theme_word_share + other_theme_word_share must be <= 1",
            );
        }
        Ok(())
    }

    /// The largest number of distinct tracks one user asks for.
    pub fn max_tracks_per_user(&self) -> usize {
        let cap = (self.max_user_fraction * self.n_tracks as f64).floor() as usize;
        cap.max(self.min_tracks_per_user).min(self.n_tracks)
    }

    /// The end of the time range (exclusive), Unix seconds.
    pub fn end_timestamp(&self) -> i64 {
        self.start_timestamp + self.span_seconds() as i64
    }

    fn span_seconds(&self) -> u32 {
        self.span_days * 86_400
    }
}

/// What a user's intent likes (SPEC §2: signal only in audio, only in lyrics, or only in
/// their combination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IntentTarget {
    /// Any track of this genre: visible in the audio only.
    Audio { genre: u16 },
    /// Any track of this theme: visible in the lyrics only.
    Lyrics { theme: u16 },
    /// Tracks of this genre **and** this theme, and neither alone.
    Combination { genre: u16, theme: u16 },
}

impl IntentTarget {
    /// The kind of this target.
    pub fn kind(&self) -> IntentKind {
        match self {
            IntentTarget::Audio { .. } => IntentKind::Audio,
            IntentTarget::Lyrics { .. } => IntentKind::Lyrics,
            IntentTarget::Combination { .. } => IntentKind::Combination,
        }
    }

    /// Whether a track with this genre and theme belongs to the target's pool.
    pub fn matches(&self, genre: u16, theme: u16) -> bool {
        match *self {
            IntentTarget::Audio { genre: g } => g == genre,
            IntentTarget::Lyrics { theme: h } => h == theme,
            IntentTarget::Combination { genre: g, theme: h } => g == genre && h == theme,
        }
    }
}

/// The source a first listen was drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentKind {
    Audio,
    Lyrics,
    Combination,
    /// Plain popularity over the whole catalogue.
    Background,
}

/// One listening intent of a user.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub target: IntentTarget,
    /// Base share of the user's intent-driven listens at mid-span (the user's intent weights
    /// sum to `1 - background_share`).
    pub weight: f32,
    /// Drift slope `δ` of the log-weight over the whole span.
    pub drift: f32,
}

/// Names of one track (invented words), as in Onion's `id_information.tsv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub artist: String,
    pub song: String,
    pub album_name: String,
}

/// `sources` value of an interaction drawn from the background.
pub const BACKGROUND_SOURCE: u8 = u8::MAX;

/// A generated world, in memory. Interactions are stored per user (CSR-like: user `u` owns
/// positions `user_ptr[u]..user_ptr[u+1]` of the parallel arrays `items`, `counts`,
/// `time_offsets`, `sources`), sorted by first-listen time within a user.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthWorld {
    /// The configuration it was generated from.
    pub config: SynthConfig,
    /// The seed it was generated from.
    pub seed: u64,
    /// External user ids (`0..n_users`).
    pub user_ids: Vec<u64>,
    /// External track ids: 16-character base62 strings, unique.
    pub track_ids: Vec<String>,
    /// Genre names (`pop`, `rock`, ...).
    pub genre_names: Vec<String>,
    /// Theme names (`love`, `heartbreak`, ...).
    pub theme_names: Vec<String>,
    /// Each theme's vocabulary.
    pub theme_vocabularies: Vec<Vec<String>>,
    /// Genre of each track (index into `genre_names`).
    pub track_genre: Vec<u16>,
    /// Theme of each track (index into `theme_names`).
    pub track_theme: Vec<u16>,
    /// Artist index of each track.
    pub track_artist: Vec<u32>,
    /// Names of each track.
    pub track_info: Vec<TrackInfo>,
    /// Popularity weight `π_i` of each track (story step 3).
    pub popularity: Vec<f64>,
    /// Each user's intents.
    pub user_intents: Vec<Vec<Intent>>,
    /// Offsets of each user's interactions (`n_users + 1` entries).
    pub user_ptr: Vec<u64>,
    /// Track index of each interaction.
    pub items: Vec<u32>,
    /// Play count of each interaction (>= 1).
    pub counts: Vec<u32>,
    /// First-listen time of each interaction, seconds after `config.start_timestamp`.
    pub time_offsets: Vec<u32>,
    /// Which of the user's intents produced each interaction (index into
    /// `user_intents[u]`), or [`BACKGROUND_SOURCE`].
    pub sources: Vec<u8>,
    /// Audio descriptors, row-major `n_tracks × config.audio_dim`.
    pub audio: Vec<f32>,
    /// Lyrics-embedding stand-in, row-major `n_tracks × config.lyrics_dim`.
    pub lyrics_embedding: Vec<f32>,
    /// Lyric text of each track: one line of ASCII words and punctuation, no tabs.
    pub lyrics: Vec<String>,
}

impl SynthWorld {
    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }

    /// Number of tracks.
    pub fn n_tracks(&self) -> usize {
        self.track_ids.len()
    }

    /// Number of (user, track) pairs.
    pub fn n_interactions(&self) -> usize {
        self.items.len()
    }

    /// Positions of user `u`'s interactions in the parallel arrays.
    pub fn user_range(&self, u: usize) -> std::ops::Range<usize> {
        self.user_ptr[u] as usize..self.user_ptr[u + 1] as usize
    }

    /// Unix time (seconds, UTC) of interaction `k`'s first listen.
    pub fn timestamp(&self, k: usize) -> i64 {
        self.config.start_timestamp + i64::from(self.time_offsets[k])
    }

    /// The kind of source of interaction `k` of user `u`.
    pub fn source_kind(&self, u: usize, k: usize) -> IntentKind {
        match self.sources[k] {
            BACKGROUND_SOURCE => IntentKind::Background,
            j => self.user_intents[u][j as usize].target.kind(),
        }
    }

    /// Audio descriptor of track `i`.
    pub fn audio_row(&self, i: usize) -> &[f32] {
        let d = self.config.audio_dim;
        &self.audio[i * d..(i + 1) * d]
    }

    /// Lyrics embedding of track `i`.
    pub fn lyrics_row(&self, i: usize) -> &[f32] {
        let d = self.config.lyrics_dim;
        &self.lyrics_embedding[i * d..(i + 1) * d]
    }

    /// The binary user × track matrix (every pair is an interaction).
    pub fn interaction_matrix(&self) -> InteractionMatrix {
        let mut indices = self.items.clone();
        for u in 0..self.n_users() {
            indices[self.user_range(u)].sort_unstable();
        }
        InteractionMatrix::from_csr(
            self.n_users(),
            self.n_tracks(),
            self.user_ptr.clone(),
            indices,
        )
        .expect("generator produces unique in-range items per user")
    }
}

/// Users generated per parallel batch: bounds the temporary memory of the per-user buffers.
const USER_BATCH: usize = 4_096;
/// Fewest tracks a pool needs before an intent may target it.
const MIN_POOL: usize = 3;
/// Draws from the chosen pool before a first listen gives up on it (story step 8).
const POOL_RETRIES: usize = 16;

/// Everything the per-user generation reads: pools and their alias tables.
struct Catalogue {
    genre_tables: Vec<Option<AliasTable>>,
    theme_tables: Vec<Option<AliasTable>>,
    /// Indexed `g * n_themes + h`.
    cell_tables: Vec<Option<AliasTable>>,
    global: AliasTable,
    /// Target-choice cumulative weights: `(pool popularity)^0.5` for pools >= MIN_POOL.
    genre_cdf: Vec<f64>,
    theme_cdf: Vec<f64>,
    cell_cdf: Vec<f64>,
}

/// Generate a world (the module documentation tells the story). Deterministic in
/// `(cfg, seed)` and independent of the number of rayon threads.
pub fn generate(cfg: &SynthConfig, seed: u64) -> Result<SynthWorld> {
    cfg.validate()?;
    let started = std::time::Instant::now();
    let n_tracks = cfg.n_tracks;
    let (n_genres, n_themes) = (cfg.n_genres, cfg.n_themes);

    // --- Step 1 and the fixed random objects (one global stream, drawn serially). ---
    let mut grng = entity_rng(seed, Stream::Global, 0);
    let genre_weights = cumulative((0..n_genres).map(|g| ((g + 1) as f64).powf(-0.7)));
    let theme_weights = cumulative((0..n_themes).map(|h| ((h + 1) as f64).powf(-0.5)));
    let genre_names: Vec<String> = (0..n_genres).map(words::genre_name).collect();
    let (theme_names, theme_vocabularies): (Vec<String>, Vec<Vec<String>>) = (0..n_themes)
        .map(|h| words::theme_vocabulary(h, &mut grng))
        .unzip();
    let d = cfg.latent_dim;
    let normal = |rng: &mut rand_chacha::ChaCha8Rng, n: usize, scale: f64| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.sample::<f64, _>(StandardNormal) * scale) as f32)
            .collect()
    };
    let genre_centres = normal(&mut grng, n_genres * d, cfg.audio_separation);
    let theme_centres = normal(&mut grng, n_themes * d, cfg.lyrics_separation);
    let proj_scale = 1.0 / (d as f64).sqrt();
    let audio_proj = normal(&mut grng, cfg.audio_dim * d, proj_scale);
    let lyrics_proj = normal(&mut grng, cfg.lyrics_dim * d, proj_scale);
    // Step 3: a random popularity ranking (Fisher-Yates).
    let mut rank: Vec<u32> = (0..n_tracks as u32).collect();
    for i in (1..n_tracks).rev() {
        let j = grng.random_range(0..=i);
        rank.swap(i, j);
    }
    let popularity: Vec<f64> = rank
        .iter()
        .map(|&r| (f64::from(r) + 1.0).powf(-cfg.popularity_exponent))
        .collect();

    // --- Step 2: artists and tracks. ---
    let n_artists = ((n_tracks as f64 / cfg.tracks_per_artist).round() as usize).max(1);
    let artists: Vec<Artist> = (0..n_artists)
        .into_par_iter()
        .map(|a| make_artist(seed, a, &genre_weights, &theme_vocabularies))
        .collect();
    let tags: Vec<(u32, u16, TrackInfo)> = (0..n_tracks)
        .into_par_iter()
        .map(|i| make_track_tags(seed, i, &artists, &theme_weights, &theme_vocabularies))
        .collect();
    let mut track_artist = Vec::with_capacity(n_tracks);
    let mut track_genre = Vec::with_capacity(n_tracks);
    let mut track_theme = Vec::with_capacity(n_tracks);
    let mut track_info = Vec::with_capacity(n_tracks);
    for (a, h, info) in tags {
        track_artist.push(a);
        track_genre.push(artists[a as usize].genre);
        track_theme.push(h);
        track_info.push(info);
    }
    let track_ids = make_track_ids(seed, n_tracks);

    // --- Steps 4 and 5: features and lyrics, one independent stream per track. ---
    let mut audio = vec![0f32; n_tracks * cfg.audio_dim];
    audio
        .par_chunks_mut(cfg.audio_dim)
        .enumerate()
        .for_each(|(i, row)| {
            let g = track_genre[i] as usize;
            let mut rng = entity_rng(seed, Stream::Audio, i as u64);
            embed(
                &mut rng,
                &genre_centres[g * d..(g + 1) * d],
                &audio_proj,
                cfg.feature_noise,
                row,
            );
        });
    let mut lyrics_embedding = vec![0f32; n_tracks * cfg.lyrics_dim];
    lyrics_embedding
        .par_chunks_mut(cfg.lyrics_dim)
        .enumerate()
        .for_each(|(i, row)| {
            let h = track_theme[i] as usize;
            let mut rng = entity_rng(seed, Stream::LyricsEmbedding, i as u64);
            embed(
                &mut rng,
                &theme_centres[h * d..(h + 1) * d],
                &lyrics_proj,
                cfg.feature_noise,
                row,
            );
        });
    let word_cdfs: Vec<Vec<f64>> = theme_vocabularies
        .iter()
        .map(|v| cumulative((0..v.len()).map(|j| ((j + 1) as f64).powf(-0.7))))
        .collect();
    let filler_cdf = cumulative((0..words::FILLER.len()).map(|j| ((j + 1) as f64).powf(-0.8)));
    let lyrics: Vec<String> = (0..n_tracks)
        .into_par_iter()
        .map(|i| {
            let mut rng = entity_rng(seed, Stream::LyricsText, i as u64);
            lyric_text(
                &mut rng,
                cfg,
                track_theme[i] as usize,
                &theme_vocabularies,
                &word_cdfs,
                &filler_cdf,
            )
        })
        .collect();

    // --- Pools for steps 6-8. ---
    let catalogue = build_catalogue(cfg, &track_genre, &track_theme, &popularity);

    // --- Steps 6-9: users, in parallel batches, appended in user order. ---
    let expected = (cfg.n_users as f64 * cfg.mean_tracks_per_user * 1.05) as usize;
    let mut user_ptr = Vec::with_capacity(cfg.n_users + 1);
    user_ptr.push(0u64);
    let mut items = Vec::with_capacity(expected);
    let mut counts = Vec::with_capacity(expected);
    let mut time_offsets = Vec::with_capacity(expected);
    let mut sources = Vec::with_capacity(expected);
    let mut user_intents = Vec::with_capacity(cfg.n_users);
    let words_per_bitset = n_tracks.div_ceil(64);
    for start in (0..cfg.n_users).step_by(USER_BATCH) {
        let end = (start + USER_BATCH).min(cfg.n_users);
        let batch: Vec<UserRows> = (start..end)
            .into_par_iter()
            .map_init(
                || vec![0u64; words_per_bitset],
                |seen, u| make_user(seed, u, cfg, &catalogue, seen),
            )
            .collect();
        for rows in batch {
            items.extend(rows.events.iter().map(|e| e.item));
            counts.extend(rows.events.iter().map(|e| e.count));
            time_offsets.extend(rows.events.iter().map(|e| e.offset));
            sources.extend(rows.events.iter().map(|e| e.source));
            user_ptr.push(items.len() as u64);
            user_intents.push(rows.intents);
        }
    }
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        interactions = items.len(),
        "synthetic world generated"
    );

    Ok(SynthWorld {
        config: cfg.clone(),
        seed,
        user_ids: (0..cfg.n_users as u64).collect(),
        track_ids,
        genre_names,
        theme_names,
        theme_vocabularies,
        track_genre,
        track_theme,
        track_artist,
        track_info,
        popularity,
        user_intents,
        user_ptr,
        items,
        counts,
        time_offsets,
        sources,
        audio,
        lyrics_embedding,
        lyrics,
    })
}

struct Artist {
    genre: u16,
    name: String,
    albums: Vec<String>,
}

fn make_artist(seed: u64, a: usize, genre_cdf: &[f64], vocabularies: &[Vec<String>]) -> Artist {
    let mut rng = entity_rng(seed, Stream::Artist, a as u64);
    let genre = sample_cdf(genre_cdf, &mut rng) as u16;
    let word = |rng: &mut rand_chacha::ChaCha8Rng| {
        let syl = rng.random_range(1..=3);
        words::capitalise(&words::invented_word(rng, syl))
    };
    let name = match rng.random_range(0..4) {
        0 => word(&mut rng),
        1 => format!("{} {}", word(&mut rng), word(&mut rng)),
        2 => format!("The {}s", word(&mut rng)),
        _ => format!("{} & the {}s", word(&mut rng), word(&mut rng)),
    };
    let n_albums = rng.random_range(1..=3);
    let albums = (0..n_albums)
        .map(|_| {
            if rng.random::<f64>() < 0.5 {
                word(&mut rng)
            } else {
                let v = &vocabularies[rng.random_range(0..vocabularies.len())];
                let w = words::capitalise(&v[rng.random_range(0..v.len())]);
                format!("{} {}", word(&mut rng), w)
            }
        })
        .collect();
    Artist {
        genre,
        name,
        albums,
    }
}

fn make_track_tags(
    seed: u64,
    i: usize,
    artists: &[Artist],
    theme_cdf: &[f64],
    vocabularies: &[Vec<String>],
) -> (u32, u16, TrackInfo) {
    let mut rng = entity_rng(seed, Stream::TrackTags, i as u64);
    let a = rng.random_range(0..artists.len());
    let artist = &artists[a];
    let theme = sample_cdf(theme_cdf, &mut rng);
    let album_name = artist.albums[rng.random_range(0..artist.albums.len())].clone();
    let vocab = &vocabularies[theme];
    let mut tw = || words::capitalise(&vocab[rng.random_range(0..vocab.len())]);
    let (w1, w2) = (tw(), tw());
    let song = match rng.random_range(0..5) {
        0 => w1,
        1 => format!("{w1} {w2}"),
        2 => format!("The {w1}"),
        3 => format!("{w1} of {w2}"),
        _ => {
            let syl = rng.random_range(2..=3);
            format!(
                "{} {w1}",
                words::capitalise(&words::invented_word(&mut rng, syl))
            )
        }
    };
    (
        a as u32,
        theme as u16,
        TrackInfo {
            artist: artist.name.clone(),
            song,
            album_name,
        },
    )
}

/// 16-character base62 ids from a BLAKE3 hash of (seed, index); a (never yet seen) collision
/// is resolved by rehashing with an attempt counter, in index order, so ids stay deterministic.
fn make_track_ids(seed: u64, n_tracks: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let id_of = |i: usize, attempt: u32| -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"encore-synth-track-id");
        h.update(&seed.to_le_bytes());
        h.update(&(i as u64).to_le_bytes());
        h.update(&attempt.to_le_bytes());
        let bytes = h.finalize();
        let mut v = u128::from_le_bytes(bytes.as_bytes()[..16].try_into().expect("16 bytes"));
        let mut out = [0u8; 16];
        for c in out.iter_mut().rev() {
            *c = ALPHABET[(v % 62) as usize];
            v /= 62;
        }
        String::from_utf8(out.to_vec()).expect("ASCII")
    };
    let mut ids: Vec<String> = (0..n_tracks).into_par_iter().map(|i| id_of(i, 0)).collect();
    let mut seen = std::collections::HashSet::with_capacity(n_tracks);
    for (i, id) in ids.iter_mut().enumerate() {
        let mut attempt = 0;
        while !seen.insert(id.clone()) {
            attempt += 1;
            *id = id_of(i, attempt);
        }
    }
    ids
}

/// `row = P (centre + ε) + σ η` (story steps 4 and 5); `centre` is already scaled.
fn embed(
    rng: &mut rand_chacha::ChaCha8Rng,
    centre: &[f32],
    proj: &[f32],
    noise: f64,
    row: &mut [f32],
) {
    let d = centre.len();
    let z: Vec<f32> = centre
        .iter()
        .map(|&c| c + rng.sample::<f64, _>(StandardNormal) as f32)
        .collect();
    for (j, out) in row.iter_mut().enumerate() {
        let p = &proj[j * d..(j + 1) * d];
        let dot: f32 = p.iter().zip(&z).map(|(a, b)| a * b).sum();
        *out = dot + (rng.sample::<f64, _>(StandardNormal) * noise) as f32;
    }
}

fn lyric_text(
    rng: &mut rand_chacha::ChaCha8Rng,
    cfg: &SynthConfig,
    theme: usize,
    vocabularies: &[Vec<String>],
    word_cdfs: &[Vec<f64>],
    filler_cdf: &[f64],
) -> String {
    let n_words = rng.random_range(cfg.lyric_words_min..=cfg.lyric_words_max);
    let mut lines: Vec<Vec<&str>> = Vec::new();
    let mut total = 0;
    while total < n_words {
        let len = rng.random_range(4..=9).min(n_words - total);
        let line = (0..len)
            .map(|_| {
                let u = rng.random::<f64>();
                if u < cfg.theme_word_share {
                    vocabularies[theme][sample_cdf(&word_cdfs[theme], rng)].as_str()
                } else if u < cfg.theme_word_share + cfg.other_theme_word_share
                    && vocabularies.len() > 1
                {
                    let mut other = rng.random_range(0..vocabularies.len() - 1);
                    if other >= theme {
                        other += 1;
                    }
                    let v = &vocabularies[other];
                    v[rng.random_range(0..v.len())].as_str()
                } else {
                    words::FILLER[sample_cdf(filler_cdf, rng)]
                }
            })
            .collect();
        total += len;
        lines.push(line);
    }
    if lines.len() >= 3 && total + lines[1].len() <= cfg.lyric_words_max {
        let chorus = lines[1].clone();
        lines.push(chorus);
    }
    let mut text = String::with_capacity(total * 7);
    let last = lines.len() - 1;
    for (l, line) in lines.iter().enumerate() {
        for (k, w) in line.iter().enumerate() {
            if !text.is_empty() {
                text.push(' ');
            }
            match *w {
                "i" => text.push('I'),
                "i'm" => text.push_str("I'm"),
                w if k == 0 => text.push_str(&words::capitalise(w)),
                w => text.push_str(w),
            }
        }
        text.push(if l == last || rng.random::<f64>() < 0.3 {
            '.'
        } else {
            ','
        });
    }
    text
}

fn build_catalogue(
    cfg: &SynthConfig,
    track_genre: &[u16],
    track_theme: &[u16],
    popularity: &[f64],
) -> Catalogue {
    let (n_genres, n_themes) = (cfg.n_genres, cfg.n_themes);
    let mut genre_pools = vec![Vec::new(); n_genres];
    let mut theme_pools = vec![Vec::new(); n_themes];
    let mut cell_pools = vec![Vec::new(); n_genres * n_themes];
    for i in 0..track_genre.len() {
        let (g, h) = (track_genre[i] as usize, track_theme[i] as usize);
        genre_pools[g].push(i as u32);
        theme_pools[h].push(i as u32);
        cell_pools[g * n_themes + h].push(i as u32);
    }
    let table = |pool: Vec<u32>| -> Option<AliasTable> {
        let w: Vec<f64> = pool.iter().map(|&i| popularity[i as usize]).collect();
        AliasTable::new(pool, &w)
    };
    let choice_cdf = |pools: &[Vec<u32>]| -> Vec<f64> {
        cumulative(pools.iter().map(|p| {
            if p.len() >= MIN_POOL {
                p.iter()
                    .map(|&i| popularity[i as usize])
                    .sum::<f64>()
                    .sqrt()
            } else {
                0.0
            }
        }))
    };
    let genre_cdf = choice_cdf(&genre_pools);
    let theme_cdf = choice_cdf(&theme_pools);
    let cell_cdf = choice_cdf(&cell_pools);
    let all: Vec<u32> = (0..track_genre.len() as u32).collect();
    Catalogue {
        genre_tables: genre_pools.into_iter().map(table).collect(),
        theme_tables: theme_pools.into_iter().map(table).collect(),
        cell_tables: cell_pools.into_iter().map(table).collect(),
        global: AliasTable::new(all, popularity).expect("popularity weights are positive"),
        genre_cdf,
        theme_cdf,
        cell_cdf,
    }
}

struct Event {
    offset: u32,
    item: u32,
    count: u32,
    source: u8,
}

struct UserRows {
    intents: Vec<Intent>,
    events: Vec<Event>,
}

/// Draw one intent target of `kind`, avoiding genres and themes the user already has.
fn draw_target(
    rng: &mut rand_chacha::ChaCha8Rng,
    kind: usize,
    cat: &Catalogue,
    n_themes: usize,
    used_genres: &[u16],
    used_themes: &[u16],
) -> Option<IntentTarget> {
    let cdf = match kind {
        0 => &cat.genre_cdf,
        1 => &cat.theme_cdf,
        _ => &cat.cell_cdf,
    };
    if cdf.last().copied().unwrap_or(0.0) <= 0.0 {
        return None;
    }
    for _ in 0..32 {
        let j = sample_cdf(cdf, rng);
        let target = match kind {
            0 => IntentTarget::Audio { genre: j as u16 },
            1 => IntentTarget::Lyrics { theme: j as u16 },
            _ => IntentTarget::Combination {
                genre: (j / n_themes) as u16,
                theme: (j % n_themes) as u16,
            },
        };
        let clash = match target {
            IntentTarget::Audio { genre } => used_genres.contains(&genre),
            IntentTarget::Lyrics { theme } => used_themes.contains(&theme),
            IntentTarget::Combination { genre, theme } => {
                used_genres.contains(&genre) || used_themes.contains(&theme)
            }
        };
        if !clash {
            return Some(target);
        }
    }
    None
}

fn make_user(
    seed: u64,
    u: usize,
    cfg: &SynthConfig,
    cat: &Catalogue,
    seen: &mut [u64],
) -> UserRows {
    let mut rng = entity_rng(seed, Stream::User, u as u64);
    // Step 6: intents.
    let k_u = rng.random_range(cfg.intents_min..=cfg.intents_max);
    let kind_cdf = cumulative(cfg.intent_kind_weights);
    let gamma = Gamma::new(cfg.intent_concentration, 1.0).expect("validated shape > 0");
    let mut intents = Vec::with_capacity(k_u);
    let (mut used_genres, mut used_themes) = (Vec::new(), Vec::new());
    for _ in 0..k_u {
        let kind = sample_cdf(&kind_cdf, &mut rng);
        let Some(target) = draw_target(
            &mut rng,
            kind,
            cat,
            cfg.n_themes,
            &used_genres,
            &used_themes,
        ) else {
            continue;
        };
        match target {
            IntentTarget::Audio { genre } => used_genres.push(genre),
            IntentTarget::Lyrics { theme } => used_themes.push(theme),
            IntentTarget::Combination { genre, theme } => {
                used_genres.push(genre);
                used_themes.push(theme);
            }
        }
        let weight = gamma.sample(&mut rng).max(1e-6);
        let drift = rng.random_range(-1.0..=1.0) * cfg.drift;
        intents.push((target, weight, drift));
    }
    let total: f64 = intents.iter().map(|t| t.1).sum();
    let intent_share = 1.0 - cfg.background_share;
    let tables: Vec<&AliasTable> = intents
        .iter()
        .map(|(t, _, _)| match *t {
            IntentTarget::Audio { genre } => cat.genre_tables[genre as usize].as_ref(),
            IntentTarget::Lyrics { theme } => cat.theme_tables[theme as usize].as_ref(),
            IntentTarget::Combination { genre, theme } => {
                cat.cell_tables[genre as usize * cfg.n_themes + theme as usize].as_ref()
            }
        })
        .map(|t| t.expect("targets are drawn only among pools with tracks"))
        .collect();

    // Step 7: activity.
    let sigma = cfg.activity_sigma;
    let mu = cfg.mean_tracks_per_user.ln() - sigma * sigma / 2.0;
    let n_target = LogNormal::new(mu, sigma)
        .expect("validated sigma")
        .sample(&mut rng)
        .round()
        .clamp(
            cfg.min_tracks_per_user as f64,
            cfg.max_tracks_per_user() as f64,
        ) as usize;

    // Step 8: first listens over time.
    let tau0 = if rng.random::<f64>() < cfg.late_joiner_share {
        rng.random_range(0.0..0.75)
    } else {
        0.0
    };
    let span = f64::from(cfg.span_seconds());
    let count_factor = LogNormal::new(0.0, cfg.count_user_sigma)
        .expect("validated sigma")
        .sample(&mut rng);
    let mut events: Vec<Event> = Vec::with_capacity(n_target);
    let mut w_now = vec![0f64; intents.len()];
    let max_attempts = 8 * n_target + 100;
    let mut attempts = 0;
    while events.len() < n_target && attempts < max_attempts {
        attempts += 1;
        let tau = tau0 + (1.0 - tau0) * rng.random::<f64>();
        let r = rng.random::<f64>();
        let (table, source) = if intents.is_empty() || r < cfg.background_share {
            (&cat.global, BACKGROUND_SOURCE)
        } else {
            let mut acc = 0.0;
            for (w, (_, base, drift)) in w_now.iter_mut().zip(&intents) {
                acc += base / total * (drift * (tau - 0.5)).exp();
                *w = acc;
            }
            let pick = rng.random::<f64>() * acc;
            let k = w_now.partition_point(|&c| c <= pick).min(intents.len() - 1);
            (tables[k], k as u8)
        };
        // A track already played is redrawn from the same pool a few times, so small pools
        // keep their share until they are nearly exhausted.
        let Some(item) = (0..POOL_RETRIES)
            .map(|_| table.sample(&mut rng))
            .find(|&i| seen[i as usize / 64] >> (i % 64) & 1 == 0)
        else {
            continue;
        };
        let (word, bit) = (item as usize / 64, item % 64);
        seen[word] |= 1 << bit;
        // Step 9: play count.
        let mean = count_factor
            * if source == BACKGROUND_SOURCE {
                cfg.count_mean_background
            } else {
                cfg.count_mean_intent
            };
        let extra = if mean > 0.0 {
            let q = mean / (1.0 + mean); // failure probability of the geometric law
            let v: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]
            (v.ln() / q.ln()).floor().min(f64::from(cfg.count_max))
        } else {
            0.0
        };
        let count = (1.0 + extra).min(f64::from(cfg.count_max)) as u32;
        let offset = ((tau * span) as u32).min(cfg.span_seconds() - 1);
        events.push(Event {
            offset,
            item,
            count,
            source,
        });
    }
    for e in &events {
        seen[e.item as usize / 64] = 0;
    }
    events.sort_unstable_by_key(|e| (e.offset, e.item));
    let intents = intents
        .into_iter()
        .map(|(target, base, drift)| Intent {
            target,
            weight: (base / total * intent_share) as f32,
            drift: drift as f32,
        })
        .collect();
    UserRows { intents, events }
}

#[cfg(test)]
mod tests;
