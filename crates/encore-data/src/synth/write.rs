//! Writing a world in the Music4All-Onion file layout, atomically.
//!
//! Everything is written into a fresh temporary directory beside the target, synced, and then
//! renamed into place: a failure at any point leaves no output (and no temporary directory).
//! Rows are formatted in parallel in fixed groups (256 users or 64 tracks), and written in
//! group order, so the bytes do not depend on the number of threads.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::fmt::{push_f32, push_timestamp, push_u64};
use super::{SynthConfig, SynthStats, SynthWorld};
use crate::error::{DataError, Result};

/// Listening counts: `user_id  track_id  count`.
pub const COUNT_FILE: &str = "userid_trackid_count.tsv";
/// First listens: `user_id  track_id  timestamp` (one row per pair, see the module docs).
pub const TIMESTAMP_FILE: &str = "userid_trackid_timestamp.tsv";
/// Lyrics-embedding stand-in: `id` then one column per dimension.
pub const LYRICS_EMBEDDING_FILE: &str = "id_lyrics_bert.tsv";
/// Lyric texts: `id  text`.
pub const LYRICS_FILE: &str = "lyrics.tsv";
/// Names: `id  artist  song  album_name`.
pub const INFORMATION_FILE: &str = "id_information.tsv";
/// Ground truth: `id  genre  theme`.
pub const TAGS_FILE: &str = "id_tags.tsv";
/// Preset, seed, configuration, statistics.
pub const MANIFEST_FILE: &str = "world.json";

/// The files of a world written with the default 512-d audio, in writing order.
pub const SYNTH_FILES: [&str; 8] = [
    COUNT_FILE,
    TIMESTAMP_FILE,
    "id_ivec512.tsv",
    LYRICS_EMBEDDING_FILE,
    LYRICS_FILE,
    INFORMATION_FILE,
    TAGS_FILE,
    MANIFEST_FILE,
];

/// The audio-descriptor file name for a width, as Onion names them (`id_ivec256.tsv`,
/// `id_ivec512.tsv`, `id_ivec1024.tsv`).
pub fn audio_file_name(dim: usize) -> String {
    format!("id_ivec{dim}.tsv")
}

/// Users formatted per parallel group.
const USERS_PER_GROUP: usize = 256;
/// Tracks formatted per parallel group.
const TRACKS_PER_GROUP: usize = 64;
/// Groups formatted at once: bounds the memory of formatted-but-unwritten text.
const WINDOW: usize = 16;
/// Significant digits of feature values (the generator's own noise is far coarser).
const FLOAT_DIGITS: u32 = 5;

/// One written file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    pub name: String,
    /// Data rows (without the header).
    pub rows: u64,
    pub bytes: u64,
}

/// What [`write_onion_layout`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthSummary {
    /// The output directory.
    pub dir: PathBuf,
    pub files: Vec<WrittenFile>,
    /// Wall-clock seconds of the write (formatting, I/O, sync, rename).
    pub seconds: f64,
    pub stats: SynthStats,
}

/// The contents of `world.json`.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    generator: String,
    preset: Option<String>,
    seed: u64,
    config: &'a SynthConfig,
    stats: &'a SynthStats,
    genres: &'a [String],
    themes: &'a [String],
    files: Vec<WrittenFile>,
    notes: Vec<&'static str>,
}

/// Write `world` into `dir` in the Music4All-Onion layout (plus `lyrics.tsv`, `id_tags.tsv`
/// and `world.json`), atomically.
///
/// `dir` may not exist yet (its parents are created), may be an empty directory, or may hold
/// an earlier synthetic world (recognised by its `world.json`), which is replaced. Anything
/// else at `dir` is refused, so user data is never overwritten.
///
/// Deviation from the real dataset: `userid_trackid_timestamp.tsv` has one row per (user,
/// track) pair, its first listen; Onion's has one row per listening event.
pub fn write_onion_layout(world: &SynthWorld, dir: &Path) -> Result<SynthSummary> {
    write_layout(world, dir, None)
}

/// What is at the target path now.
enum Target {
    Absent,
    EmptyDir,
    PreviousWorld,
}

fn inspect_target(dir: &Path) -> Result<Target> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Target::Absent),
        Err(e) => return Err(DataError::io(dir, e)),
    };
    if !meta.is_dir() {
        return Err(DataError::format(
            dir,
            "exists and is not a directory; choose another output directory",
        ));
    }
    let mut entries = fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    if entries.next().is_none() {
        return Ok(Target::EmptyDir);
    }
    if dir.join(MANIFEST_FILE).is_file() {
        return Ok(Target::PreviousWorld);
    }
    Err(DataError::format(
        dir,
        "exists, is not empty and holds no world.json (it is not a synthetic world written by \
         Encore); refusing to overwrite it, choose another output directory",
    ))
}

/// The implementation, with a failure injected after `fail_after` files (tests only).
pub(crate) fn write_layout(
    world: &SynthWorld,
    dir: &Path,
    fail_after: Option<usize>,
) -> Result<SynthSummary> {
    let started = Instant::now();
    if dir.file_name().is_none() {
        return Err(DataError::parameter(
            "output directory",
            format!("{}: needs a final directory name", dir.display()),
        ));
    }
    // Refuses anything that is not absent, empty or an earlier world; the replacement itself
    // is encore-io's (fresh sibling folder, rename, old one removed; nothing left on error).
    inspect_target(dir)?;
    let stats = world.stats();
    let mut files = Default::default();
    encore_io::replace_dir(dir, |staged| -> Result<()> {
        files = write_files(world, &stats, staged, fail_after)?;
        Ok(())
    })?;
    Ok(SynthSummary {
        dir: dir.to_path_buf(),
        files,
        seconds: started.elapsed().as_secs_f64(),
        stats,
    })
}

fn write_files(
    world: &SynthWorld,
    stats: &SynthStats,
    dir: &Path,
    fail_after: Option<usize>,
) -> Result<Vec<WrittenFile>> {
    let mut files = Vec::new();
    let check = |files: &Vec<WrittenFile>| -> Result<()> {
        match fail_after {
            Some(n) if files.len() >= n => Err(DataError::Other(format!(
                "injected failure after writing {n} files"
            ))),
            _ => Ok(()),
        }
    };
    let n_users = world.n_users();
    let n_tracks = world.n_tracks();
    let user_groups = n_users.div_ceil(USERS_PER_GROUP);
    let track_groups = n_tracks.div_ceil(TRACKS_PER_GROUP);
    let users_of = |g: usize| g * USERS_PER_GROUP..((g + 1) * USERS_PER_GROUP).min(n_users);
    let tracks_of = |g: usize| g * TRACKS_PER_GROUP..((g + 1) * TRACKS_PER_GROUP).min(n_tracks);
    let n_inter = world.n_interactions() as u64;

    files.push(write_table(
        dir,
        COUNT_FILE,
        b"user_id\ttrack_id\tcount\n",
        n_inter,
        user_groups,
        |g, buf| {
            for u in users_of(g) {
                for k in world.user_range(u) {
                    push_u64(buf, world.user_ids[u]);
                    buf.push(b'\t');
                    buf.extend_from_slice(world.track_ids[world.items[k] as usize].as_bytes());
                    buf.push(b'\t');
                    push_u64(buf, u64::from(world.counts[k]));
                    buf.push(b'\n');
                }
            }
        },
    )?);
    check(&files)?;
    files.push(write_table(
        dir,
        TIMESTAMP_FILE,
        b"user_id\ttrack_id\ttimestamp\n",
        n_inter,
        user_groups,
        |g, buf| {
            for u in users_of(g) {
                for k in world.user_range(u) {
                    push_u64(buf, world.user_ids[u]);
                    buf.push(b'\t');
                    buf.extend_from_slice(world.track_ids[world.items[k] as usize].as_bytes());
                    buf.push(b'\t');
                    push_timestamp(buf, world.timestamp(k));
                    buf.push(b'\n');
                }
            }
        },
    )?);
    check(&files)?;
    for (name, prefix, width, values) in [
        (
            audio_file_name(world.config.audio_dim),
            "ivec",
            world.config.audio_dim,
            &world.audio,
        ),
        (
            LYRICS_EMBEDDING_FILE.to_string(),
            "lyrics_bert",
            world.config.lyrics_dim,
            &world.lyrics_embedding,
        ),
    ] {
        let mut header = b"id".to_vec();
        for j in 0..width {
            header.push(b'\t');
            header.extend_from_slice(prefix.as_bytes());
            header.push(b'_');
            push_u64(&mut header, j as u64);
        }
        header.push(b'\n');
        files.push(write_table(
            dir,
            &name,
            &header,
            n_tracks as u64,
            track_groups,
            |g, buf| {
                for i in tracks_of(g) {
                    buf.extend_from_slice(world.track_ids[i].as_bytes());
                    for &v in &values[i * width..(i + 1) * width] {
                        buf.push(b'\t');
                        push_f32(buf, v, FLOAT_DIGITS);
                    }
                    buf.push(b'\n');
                }
            },
        )?);
        check(&files)?;
    }
    files.push(write_table(
        dir,
        LYRICS_FILE,
        b"id\ttext\n",
        n_tracks as u64,
        track_groups,
        |g, buf| {
            for i in tracks_of(g) {
                push_fields(buf, &[&world.track_ids[i], &world.lyrics[i]]);
            }
        },
    )?);
    check(&files)?;
    files.push(write_table(
        dir,
        INFORMATION_FILE,
        b"id\tartist\tsong\talbum_name\n",
        n_tracks as u64,
        track_groups,
        |g, buf| {
            for i in tracks_of(g) {
                let info = &world.track_info[i];
                push_fields(
                    buf,
                    &[
                        &world.track_ids[i],
                        &info.artist,
                        &info.song,
                        &info.album_name,
                    ],
                );
            }
        },
    )?);
    check(&files)?;
    files.push(write_table(
        dir,
        TAGS_FILE,
        b"id\tgenre\ttheme\n",
        n_tracks as u64,
        track_groups,
        |g, buf| {
            for i in tracks_of(g) {
                push_fields(
                    buf,
                    &[
                        &world.track_ids[i],
                        &world.genre_names[world.track_genre[i] as usize],
                        &world.theme_names[world.track_theme[i] as usize],
                    ],
                );
            }
        },
    )?);
    check(&files)?;

    let manifest = Manifest {
        generator: format!("encore-data {} synth", env!("CARGO_PKG_VERSION")),
        preset: world.config.base_preset.map(|p| p.name().to_string()),
        seed: world.seed,
        config: &world.config,
        stats,
        genres: &world.genre_names,
        themes: &world.theme_names,
        files: files.clone(),
        notes: vec![
            "userid_trackid_timestamp.tsv has one row per (user, track) pair: its first listen; \
             the real Music4All-Onion file has one row per listening event",
            "id_tags.tsv is the planted ground truth (genre = audio cluster, theme = lyrics \
             topic); it is not part of the real dataset",
            "user ids are 0..n_users; track ids are 16-character base62 strings",
        ],
    };
    let path = dir.join(MANIFEST_FILE);
    let mut json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| DataError::Other(format!("{}: {e}", path.display())))?;
    json.push(b'\n');
    write_bytes(&path, &json)?;
    files.push(WrittenFile {
        name: MANIFEST_FILE.to_string(),
        rows: 1,
        bytes: json.len() as u64,
    });
    check(&files)?;
    Ok(files)
}

/// Append tab-separated fields and a newline. Generated names and lyrics contain neither tabs
/// nor newlines; any that did would be replaced by spaces, so the table can never break.
fn push_fields(buf: &mut Vec<u8>, fields: &[&str]) {
    for (k, f) in fields.iter().enumerate() {
        if k > 0 {
            buf.push(b'\t');
        }
        buf.extend(f.bytes().map(|b| match b {
            b'\t' | b'\n' | b'\r' => b' ',
            b => b,
        }));
    }
    buf.push(b'\n');
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(encore_io::write_bytes(path, bytes)?)
}

/// Write a header and `n_groups` groups of rows formatted by `fill`, in group order, a window
/// of groups formatted in parallel at a time, written through `encore_io` (synced).
fn write_table<F>(
    dir: &Path,
    name: &str,
    header: &[u8],
    rows: u64,
    n_groups: usize,
    fill: F,
) -> Result<WrittenFile>
where
    F: Fn(usize, &mut Vec<u8>) + Sync,
{
    let path = dir.join(name);
    let mut bytes = header.len() as u64;
    encore_io::write_atomic(&path, |file| {
        file.write_all(header)?;
        let mut start = 0;
        while start < n_groups {
            let end = (start + WINDOW).min(n_groups);
            let buffers: Vec<Vec<u8>> = (start..end)
                .into_par_iter()
                .map(|g| {
                    let mut buf = Vec::with_capacity(1 << 16);
                    fill(g, &mut buf);
                    buf
                })
                .collect();
            for buf in &buffers {
                file.write_all(buf)?;
                bytes += buf.len() as u64;
            }
            start = end;
        }
        Ok(())
    })?;
    Ok(WrittenFile {
        name: name.to_string(),
        rows,
        bytes,
    })
}
