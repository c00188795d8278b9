//! Tests of the synthetic world: determinism, thread independence, the planted structure,
//! long tails, drift, the written files, and atomic writing.

use std::collections::HashMap;
use std::path::Path;

use super::*;

fn tiny(seed: u64) -> SynthWorld {
    generate(&SynthConfig::preset(Preset::Tiny), seed).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn preset_names_round_trip() {
    for p in Preset::ALL {
        assert_eq!(p.to_string().parse::<Preset>().unwrap(), p);
    }
    assert_eq!(" Small ".parse::<Preset>().unwrap(), Preset::Small);
    let err = "huge".parse::<Preset>().unwrap_err().to_string();
    assert!(
        err.contains("preset") && err.contains("tiny, small or onion"),
        "{err}"
    );
    for p in Preset::ALL {
        SynthConfig::preset(p).validate().unwrap();
    }
}

#[test]
fn bad_knobs_are_named() {
    let base = SynthConfig::preset(Preset::Tiny);
    let cases: Vec<(SynthConfig, &str)> = vec![
        (
            SynthConfig {
                n_users: 0,
                ..base.clone()
            },
            "n_users",
        ),
        (
            SynthConfig {
                n_tracks: 0,
                ..base.clone()
            },
            "n_tracks",
        ),
        (
            SynthConfig {
                n_genres: 0,
                ..base.clone()
            },
            "n_genres",
        ),
        (
            SynthConfig {
                background_share: 1.0,
                ..base.clone()
            },
            "background_share",
        ),
        (
            SynthConfig {
                activity_sigma: f64::NAN,
                ..base.clone()
            },
            "activity_sigma",
        ),
        (
            SynthConfig {
                intents_min: 3,
                intents_max: 2,
                ..base.clone()
            },
            "intents_min",
        ),
        (
            SynthConfig {
                intents_max: 9,
                ..base.clone()
            },
            "intents_max",
        ),
        (
            SynthConfig {
                intent_kind_weights: [0.0; 3],
                ..base.clone()
            },
            "intent_kind_weights",
        ),
        (
            SynthConfig {
                lyric_words_min: 0,
                ..base.clone()
            },
            "lyric_words_min",
        ),
        (
            SynthConfig {
                span_days: 0,
                ..base.clone()
            },
            "span_days",
        ),
        (
            SynthConfig {
                audio_dim: 0,
                ..base.clone()
            },
            "audio_dim",
        ),
        (
            SynthConfig {
                mean_tracks_per_user: -1.0,
                ..base.clone()
            },
            "mean_tracks_per_user",
        ),
        (
            SynthConfig {
                start_timestamp: -5,
                ..base.clone()
            },
            "start_timestamp",
        ),
        (
            SynthConfig {
                theme_word_share: 0.9,
                other_theme_word_share: 0.2,
                ..base.clone()
            },
            "theme_word_share",
        ),
    ];
    for (cfg, field) in cases {
        let err = generate(&cfg, 1).unwrap_err();
        assert!(matches!(err, DataError::Parameter { .. }), "{err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}

#[test]
fn tiny_is_fast_and_well_formed() {
    let t = std::time::Instant::now();
    let w = tiny(11);
    let elapsed = t.elapsed();
    assert!(elapsed.as_secs_f64() < 1.0, "tiny took {elapsed:?}");
    let cfg = &w.config;
    assert_eq!(w.n_users(), 200);
    assert_eq!(w.n_tracks(), 150);
    assert_eq!(w.user_ptr.len(), 201);
    assert_eq!(*w.user_ptr.last().unwrap() as usize, w.n_interactions());
    for v in [w.counts.len(), w.time_offsets.len(), w.sources.len()] {
        assert_eq!(v, w.n_interactions());
    }
    assert_eq!(w.audio.len(), 150 * 512);
    assert_eq!(w.lyrics_embedding.len(), 150 * 768);
    assert!(w
        .audio
        .iter()
        .chain(&w.lyrics_embedding)
        .all(|v| v.is_finite()));
    for u in 0..w.n_users() {
        let r = w.user_range(u);
        assert!(r.len() >= cfg.min_tracks_per_user && r.len() <= cfg.max_tracks_per_user());
        let mut items: Vec<u32> = w.items[r.clone()].to_vec();
        items.sort_unstable();
        items.dedup();
        assert_eq!(items.len(), r.len(), "user {u} has a repeated track");
        assert!(w.time_offsets[r.clone()].windows(2).all(|p| p[0] <= p[1]));
        let n_intents = w.user_intents[u].len();
        assert!(n_intents >= 1 && n_intents <= cfg.intents_max);
        assert!(w.sources[r]
            .iter()
            .all(|&s| s == BACKGROUND_SOURCE || (s as usize) < n_intents));
    }
    assert!(w.counts.iter().all(|&c| c >= 1 && c <= cfg.count_max));
    assert!(w.counts.iter().any(|&c| c > 1));
    assert!(w.time_offsets.iter().all(|&o| o < cfg.span_days * 86_400));
    let mut ids = w.track_ids.clone();
    assert!(ids
        .iter()
        .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_alphanumeric())));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 150);
    for text in &w.lyrics {
        let n = text.split(' ').count();
        assert!((40..=120).contains(&n), "{n} words: {text}");
        assert!(text.is_ascii() && !text.contains(['\t', '\n', '\r']));
        assert!(text.ends_with('.'));
    }
    for info in &w.track_info {
        for s in [&info.artist, &info.song, &info.album_name] {
            assert!(
                !s.is_empty() && s.is_ascii() && !s.contains(['\t', '\n']),
                "{s:?}"
            );
        }
    }
    // Genre follows the artist.
    let mut artist_genre = HashMap::new();
    for i in 0..w.n_tracks() {
        let g = *artist_genre
            .entry(w.track_artist[i])
            .or_insert(w.track_genre[i]);
        assert_eq!(g, w.track_genre[i]);
    }
    let m = w.interaction_matrix();
    assert_eq!(m.nnz(), w.n_interactions());
    assert_eq!(m.n_users(), 200);
}

#[test]
fn intents_of_a_user_never_share_genre_or_theme() {
    let w = generate(&SynthConfig::preset(Preset::Small), 5).unwrap();
    for intents in &w.user_intents {
        let (mut genres, mut themes) = (Vec::new(), Vec::new());
        for i in intents {
            match i.target {
                IntentTarget::Audio { genre } => genres.push(genre),
                IntentTarget::Lyrics { theme } => themes.push(theme),
                IntentTarget::Combination { genre, theme } => {
                    genres.push(genre);
                    themes.push(theme);
                }
            }
        }
        let (ng, nt) = (genres.len(), themes.len());
        genres.sort_unstable();
        genres.dedup();
        themes.sort_unstable();
        themes.dedup();
        assert_eq!((genres.len(), themes.len()), (ng, nt));
        let share: f32 = intents.iter().map(|i| i.weight).sum();
        assert!((share - 0.75).abs() < 1e-4, "intent weights sum to {share}");
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("c"),
    );
    write_onion_layout(&tiny(3), &a).unwrap();
    write_onion_layout(&tiny(3), &b).unwrap();
    write_onion_layout(&tiny(4), &c).unwrap();
    let (fa, fb, fc) = (dir_bytes(&a), dir_bytes(&b), dir_bytes(&c));
    assert_eq!(fa.len(), 8);
    assert_eq!(fa, fb);
    for ((name, x), (_, y)) in fa.iter().zip(&fc) {
        assert_ne!(x, y, "{name} does not depend on the seed");
    }
}

#[test]
fn thread_count_does_not_change_the_world() {
    // More users than one generation batch, so batching and scheduling are exercised.
    let cfg = SynthConfig {
        n_users: USER_BATCH + 300,
        ..SynthConfig::preset(Preset::Tiny)
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let w = generate(&cfg, 99).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("w");
            write_onion_layout(&w, &out).unwrap();
            (w, dir_bytes(&out))
        })
    };
    let (w1, f1) = run(1);
    let (w2, f2) = run(2);
    assert!(w1 == w2, "worlds differ between 1 and 2 threads");
    assert_eq!(f1, f2);
}

/// Popularity mass of the tracks matching `pred` (what plain popularity would give them).
fn mass(w: &SynthWorld, pred: impl Fn(usize) -> bool) -> f64 {
    let total: f64 = w.popularity.iter().sum();
    (0..w.n_tracks())
        .filter(|&i| pred(i))
        .map(|i| w.popularity[i])
        .sum::<f64>()
        / total
}

#[test]
fn audio_and_lyrics_only_intents_are_planted() {
    let w = generate(&SynthConfig::preset(Preset::Small), 21).unwrap();
    // For each audio-only (lyrics-only) intent: the user's share of listens in that genre
    // (theme), against the share plain popularity would give it.
    for kind in [IntentKind::Audio, IntentKind::Lyrics] {
        let (mut observed, mut chance, mut lifts) = (0.0, 0.0, Vec::new());
        for u in 0..w.n_users() {
            let r = w.user_range(u);
            for intent in w.user_intents[u].iter().filter(|i| i.target.kind() == kind) {
                let hits = w.items[r.clone()]
                    .iter()
                    .filter(|&&i| {
                        intent
                            .target
                            .matches(w.track_genre[i as usize], w.track_theme[i as usize])
                    })
                    .count();
                let share = hits as f64 / r.len() as f64;
                let m = mass(&w, |i| {
                    intent.target.matches(w.track_genre[i], w.track_theme[i])
                });
                observed += share;
                chance += m;
                lifts.push(share / m);
            }
        }
        assert!(lifts.len() > 300, "{kind:?}: only {} intents", lifts.len());
        lifts.sort_by(f64::total_cmp);
        let median = lifts[lifts.len() / 2];
        let pooled = observed / chance;
        let excess = (observed - chance) / lifts.len() as f64;
        // An intent holds about a quarter of a user's listens; its pool often a fifth of all
        // plays, so a lift of 2 is most of what it can show. The excess is the planted share.
        println!("{kind:?}: pooled lift {pooled:.2}, median {median:.2}, excess {excess:.3}");
        assert!(pooled > 1.8, "{kind:?}: pooled lift {pooled:.2}");
        assert!(median > 1.8, "{kind:?}: median lift {median:.2}");
        assert!(excess > 0.15, "{kind:?}: mean excess share {excess:.3}");
    }
}

#[test]
fn combination_intents_hit_the_cell_and_neither_side_alone() {
    let w = generate(&SynthConfig::preset(Preset::Small), 22).unwrap();
    let (mut theme_given_genre, mut theme_given_genre_chance) = (0.0, 0.0);
    let (mut genre_given_theme, mut genre_given_theme_chance) = (0.0, 0.0);
    let (mut row_only, mut row_only_chance) = (0.0, 0.0);
    let (mut col_only, mut col_only_chance) = (0.0, 0.0);
    let mut n = 0;
    for u in 0..w.n_users() {
        let r = w.user_range(u);
        for intent in &w.user_intents[u] {
            let IntentTarget::Combination { genre, theme } = intent.target else {
                continue;
            };
            let items = &w.items[r.clone()];
            let g_of = |i: u32| w.track_genre[i as usize];
            let h_of = |i: u32| w.track_theme[i as usize];
            let in_g = items.iter().filter(|&&i| g_of(i) == genre).count();
            let in_h = items.iter().filter(|&&i| h_of(i) == theme).count();
            let in_cell = items
                .iter()
                .filter(|&&i| g_of(i) == genre && h_of(i) == theme)
                .count();
            if in_g == 0 || in_h == 0 {
                continue;
            }
            let len = items.len() as f64;
            let m_g = mass(&w, |i| w.track_genre[i] == genre);
            let m_h = mass(&w, |i| w.track_theme[i] == theme);
            let m_cell = mass(&w, |i| {
                w.track_genre[i] == genre && w.track_theme[i] == theme
            });
            // What knowing the genre alone predicts for the theme, and vice versa.
            theme_given_genre += in_cell as f64 / in_g as f64;
            theme_given_genre_chance += m_cell / m_g;
            genre_given_theme += in_cell as f64 / in_h as f64;
            genre_given_theme_chance += m_cell / m_h;
            // The rest of the genre row and of the theme column: only background level.
            row_only += (in_g - in_cell) as f64 / len;
            row_only_chance += m_g - m_cell;
            col_only += (in_h - in_cell) as f64 / len;
            col_only_chance += m_h - m_cell;
            n += 1;
        }
    }
    assert!(n > 300, "only {n} combination intents");
    let lift_t = theme_given_genre / theme_given_genre_chance;
    let lift_g = genre_given_theme / genre_given_theme_chance;
    assert!(lift_t > 3.0, "P(theme | genre) lift {lift_t:.2}");
    assert!(lift_g > 3.0, "P(genre | theme) lift {lift_g:.2}");
    let row = row_only / row_only_chance;
    let col = col_only / col_only_chance;
    println!("cell lifts: theme|genre {lift_t:.2}, genre|theme {lift_g:.2}; rest of row {row:.2}, column {col:.2}");
    assert!(
        row < 1.5 && col < 1.5,
        "genre alone {row:.2}, theme alone {col:.2}"
    );
}

/// Accuracy of nearest-centroid classification of `rows` into `labels`, centroids fitted on
/// even tracks and evaluated on odd ones.
fn centroid_accuracy(rows: &[f32], dim: usize, labels: &[u16], n_labels: usize) -> f64 {
    let n = labels.len();
    let mut centroids = vec![0f64; n_labels * dim];
    let mut sizes = vec![0usize; n_labels];
    for i in (0..n).step_by(2) {
        let l = labels[i] as usize;
        sizes[l] += 1;
        for j in 0..dim {
            centroids[l * dim + j] += f64::from(rows[i * dim + j]);
        }
    }
    for l in 0..n_labels {
        for j in 0..dim {
            centroids[l * dim + j] /= sizes[l].max(1) as f64;
        }
    }
    let (mut right, mut total) = (0, 0);
    for i in (1..n).step_by(2) {
        let best = (0..n_labels)
            .filter(|&l| sizes[l] > 0)
            .map(|l| {
                let d: f64 = (0..dim)
                    .map(|j| (f64::from(rows[i * dim + j]) - centroids[l * dim + j]).powi(2))
                    .sum();
                (d, l)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap()
            .1;
        right += usize::from(best == labels[i] as usize);
        total += 1;
    }
    right as f64 / total as f64
}

#[test]
fn audio_knows_genre_only_and_lyrics_know_theme_only() {
    let w = generate(&SynthConfig::preset(Preset::Small), 23).unwrap();
    let (g, h) = (w.config.n_genres, w.config.n_themes);
    let (a, l) = (w.config.audio_dim, w.config.lyrics_dim);
    let majority = |labels: &[u16], k: usize| {
        let mut c = vec![0usize; k];
        labels.iter().for_each(|&x| c[x as usize] += 1);
        *c.iter().max().unwrap() as f64 / labels.len() as f64
    };
    let audio_genre = centroid_accuracy(&w.audio, a, &w.track_genre, g);
    let lyrics_theme = centroid_accuracy(&w.lyrics_embedding, l, &w.track_theme, h);
    assert!(audio_genre > 0.9, "audio -> genre {audio_genre}");
    assert!(lyrics_theme > 0.9, "lyrics -> theme {lyrics_theme}");
    // The other modality is no better than guessing the most common class.
    let audio_theme = centroid_accuracy(&w.audio, a, &w.track_theme, h);
    let lyrics_genre = centroid_accuracy(&w.lyrics_embedding, l, &w.track_genre, g);
    assert!(
        audio_theme < majority(&w.track_theme, h) + 0.05,
        "audio -> theme {audio_theme}"
    );
    assert!(
        lyrics_genre < majority(&w.track_genre, g) + 0.05,
        "lyrics -> genre {lyrics_genre}"
    );
}

#[test]
fn lyric_texts_reveal_their_theme() {
    let w = generate(&SynthConfig::preset(Preset::Small), 24).unwrap();
    let mut right = 0;
    for (i, text) in w.lyrics.iter().enumerate() {
        let words: Vec<String> = text
            .split(' ')
            .map(|t| t.trim_end_matches([',', '.']).to_ascii_lowercase())
            .collect();
        let best = (0..w.config.n_themes)
            .max_by_key(|&h| {
                words
                    .iter()
                    .filter(|x| w.theme_vocabularies[h].contains(x))
                    .count()
            })
            .unwrap();
        right += usize::from(best == w.track_theme[i] as usize);
    }
    let acc = right as f64 / w.n_tracks() as f64;
    assert!(acc > 0.95, "theme recovered from lyric words for {acc}");
}

#[test]
fn popularity_and_activity_are_long_tailed() {
    let w = generate(&SynthConfig::preset(Preset::Small), 25).unwrap();
    let s = w.stats();
    assert!(s.top_10pct_tracks_share > 0.35, "{s}");
    assert!(s.track_gini > 0.5, "{s}");
    assert!(s.tracks_per_user.p99 > 3.0 * s.tracks_per_user.p50, "{s}");
    assert!(
        s.listeners_per_track.max > 10.0 * s.listeners_per_track.p50,
        "{s}"
    );
    // Sizes near the preset's targets.
    assert!((120_000..=180_000).contains(&s.interactions), "{s}");
    let sum = s.interaction_share.audio
        + s.interaction_share.lyrics
        + s.interaction_share.combination
        + s.interaction_share.background;
    assert!((sum - 1.0).abs() < 1e-9);
    for share in [
        s.interaction_share.audio,
        s.interaction_share.lyrics,
        s.interaction_share.combination,
    ] {
        assert!(share > 0.1, "{s}");
    }
    assert!((s.interaction_share.background - 0.25).abs() < 0.08, "{s}");
    let table = s.to_string();
    for needle in [
        "interactions",
        "density",
        "tracks per user",
        "combination",
        "Gini",
    ] {
        assert!(table.contains(needle), "{table}");
    }
}

#[test]
fn intents_drift_over_time() {
    let w = generate(&SynthConfig::preset(Preset::Small), 26).unwrap();
    let half = w.config.span_days * 86_400 / 2;
    let (mut rising, mut falling) = ([0u64; 2], [0u64; 2]);
    for u in 0..w.n_users() {
        for k in w.user_range(u) {
            if w.sources[k] == BACKGROUND_SOURCE {
                continue;
            }
            let drift = w.user_intents[u][w.sources[k] as usize].drift;
            let late = usize::from(w.time_offsets[k] >= half);
            if drift > 1.0 {
                rising[late] += 1;
            } else if drift < -1.0 {
                falling[late] += 1;
            }
        }
    }
    let late_share = |c: [u64; 2]| c[1] as f64 / (c[0] + c[1]) as f64;
    let (r, f) = (late_share(rising), late_share(falling));
    assert!(
        r - f > 0.2,
        "late share of rising intents {r:.2}, of falling {f:.2}"
    );
}

#[test]
fn written_files_parse_back() {
    let w = tiny(31);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nested").join("world");
    let summary = write_onion_layout(&w, &dir).unwrap();
    assert_eq!(summary.files.len(), 8);
    let names: Vec<&str> = summary.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, SYNTH_FILES);
    let n = w.n_interactions();
    let id_index: HashMap<&str, usize> = w
        .track_ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();

    let counts = read(&dir.join("userid_trackid_count.tsv"));
    let mut lines = counts.lines();
    assert_eq!(lines.next(), Some("user_id\ttrack_id\tcount"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), n);
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 3);
        let u: usize = row[0].parse().unwrap();
        assert!(w.user_range(u).contains(&k));
        assert_eq!(id_index[row[1]], w.items[k] as usize);
        assert_eq!(row[2].parse::<u32>().unwrap(), w.counts[k]);
    }

    let stamps = read(&dir.join("userid_trackid_timestamp.tsv"));
    let mut lines = stamps.lines();
    assert_eq!(lines.next(), Some("user_id\ttrack_id\ttimestamp"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), n);
    for row in &rows {
        let ts = row[2];
        assert_eq!(ts.len(), 19, "{ts}");
        let b = ts.as_bytes();
        assert!(b[4] == b'-' && b[7] == b'-' && b[10] == b' ' && b[13] == b':' && b[16] == b':');
        assert!(
            ("2018-01-01 00:00:00"..="2019-12-31 23:59:59").contains(&ts),
            "{ts}"
        );
    }

    for (file, width, values, prefix) in [
        ("id_ivec512.tsv", 512, &w.audio, "ivec_"),
        (
            "id_lyrics_bert.tsv",
            768,
            &w.lyrics_embedding,
            "lyrics_bert_",
        ),
    ] {
        let text = read(&dir.join(file));
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
        assert_eq!(header.len(), width + 1);
        assert_eq!(header[0], "id");
        assert_eq!(header[1], format!("{prefix}0"));
        assert_eq!(header[width], format!("{prefix}{}", width - 1));
        let mut rows = 0;
        for (i, line) in lines.enumerate() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), width + 1);
            assert_eq!(fields[0], w.track_ids[i]);
            for (j, f) in fields[1..].iter().enumerate() {
                let v: f32 = f.parse().unwrap();
                let truth = values[i * width + j];
                assert!(
                    (v - truth).abs() <= 1e-4 * truth.abs().max(0.01),
                    "{v} vs {truth}"
                );
            }
            rows += 1;
        }
        assert_eq!(rows, w.n_tracks());
    }

    for (file, header, width) in [
        ("lyrics.tsv", "id\ttext", 2),
        ("id_information.tsv", "id\tartist\tsong\talbum_name", 4),
        ("id_tags.tsv", "id\tgenre\ttheme", 3),
    ] {
        let text = read(&dir.join(file));
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(header));
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows.len(), w.n_tracks());
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.len(), width);
            assert_eq!(row[0], w.track_ids[i]);
            match file {
                "lyrics.tsv" => assert_eq!(row[1], w.lyrics[i]),
                "id_tags.tsv" => {
                    assert_eq!(row[1], w.genre_names[w.track_genre[i] as usize]);
                    assert_eq!(row[2], w.theme_names[w.track_theme[i] as usize]);
                }
                _ => assert_eq!(row[2], w.track_info[i].song),
            }
        }
    }

    let manifest: serde_json::Value = serde_json::from_str(&read(&dir.join("world.json"))).unwrap();
    assert_eq!(manifest["preset"], "tiny");
    assert_eq!(manifest["seed"], 31);
    assert_eq!(manifest["stats"]["interactions"], n as u64);
    assert_eq!(manifest["config"]["n_users"], 200);
    let cfg: SynthConfig = serde_json::from_value(manifest["config"].clone()).unwrap();
    assert_eq!(cfg, w.config);
    for f in &summary.files {
        let on_disk = std::fs::metadata(dir.join(&f.name)).unwrap().len();
        assert_eq!(on_disk, f.bytes, "{}", f.name);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn failed_writes_leave_nothing() {
    let w = tiny(41);
    let root = tempfile::tempdir().unwrap();
    // A parent that is a regular file: not writable even for root.
    let blocker = root.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = write_onion_layout(&w, &blocker.join("out")).unwrap_err();
    assert!(err.to_string().contains("file"), "{err}");
    assert_eq!(entries(root.path()), ["file"]);
    // A failure after some files were written: neither the output nor the staging remains.
    let out = root.path().join("out");
    for after in [0, 3, 7, 8] {
        let err = write::write_layout(&w, &out, Some(after)).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(entries(root.path()), ["file"], "after {after} files");
    }
}

#[test]
fn existing_targets_are_replaced_only_when_they_are_worlds() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    // An empty directory is fine.
    std::fs::create_dir(&out).unwrap();
    write_onion_layout(&tiny(1), &out).unwrap();
    let first = dir_bytes(&out);
    // A previous world is replaced.
    write_onion_layout(&tiny(2), &out).unwrap();
    let second = dir_bytes(&out);
    assert_ne!(first, second);
    assert_eq!(second, {
        let other = root.path().join("other");
        write_onion_layout(&tiny(2), &other).unwrap();
        dir_bytes(&other)
    });
    assert_eq!(entries(root.path()), ["other", "out"]);
    // Anything else is refused and left alone.
    let foreign = root.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let err = write_onion_layout(&tiny(3), &foreign).unwrap_err();
    assert!(err.to_string().contains("refusing"), "{err}");
    assert_eq!(entries(&foreign), ["notes.txt"]);
    let file = root.path().join("plain");
    std::fs::write(&file, b"data").unwrap();
    assert!(write_onion_layout(&tiny(3), &file).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    assert_eq!(entries(root.path()), ["foreign", "other", "out", "plain"]);
}

#[test]
fn the_project_onion_readers_read_the_written_world() {
    use crate::readers::{read_interactions, read_item_names, InteractionFormat};
    let w = tiny(51);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("world");
    write_onion_layout(&w, &dir).unwrap();
    for file in [COUNT_FILE, TIMESTAMP_FILE] {
        let mut k = 0usize;
        let summary =
            read_interactions(&InteractionFormat::Onion, &dir.join(file), None, &mut |r| {
                let u: usize = r.user.parse().unwrap();
                assert!(w.user_range(u).contains(&k), "{file} row {k}");
                assert_eq!(r.item, w.track_ids[w.items[k] as usize]);
                if file == COUNT_FILE {
                    assert_eq!(r.value, w.counts[k] as f32);
                } else {
                    assert_eq!(r.timestamp, Some(w.timestamp(k)));
                }
                k += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(summary.rows, w.n_interactions() as u64, "{file}");
    }
    let names = read_item_names(&InteractionFormat::Onion, &dir)
        .unwrap()
        .unwrap();
    assert_eq!(names.len(), w.n_tracks());
    let info = &w.track_info[0];
    let name = &names[&w.track_ids[0]];
    assert!(
        name.contains(&info.artist) && name.contains(&info.song),
        "{name}"
    );
}
