//! Streaming readers for interaction logs and item feature tables (SPEC §2).
//!
//! Every reader streams line by line and hands each record to a callback as borrowed `&str`
//! slices, so a 50M-row file is never held in memory as strings. Errors name the file, the
//! 1-based line and column, and the field.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Result;

pub(crate) mod fields;
mod interactions;
pub(crate) mod lines;
mod names;
#[cfg(test)]
mod tests;

pub use names::read_hetrec_artist_tags;

/// One interaction as read from a file, borrowing from the reader's line buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    /// External user id.
    pub user: &'a str,
    /// External item id.
    pub item: &'a str,
    /// Rating, play count or weight; 1.0 where the format has none.
    pub value: f32,
    /// Seconds since the Unix epoch (UTC), where the format has a timestamp.
    pub timestamp: Option<i64>,
}

/// The interaction file formats Encore reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InteractionFormat {
    /// Music4All-Onion `userid_trackid_count.tsv` or `userid_trackid_timestamp.tsv`.
    Onion,
    /// RecBole atomic `.inter` file with a typed header.
    RecBole,
    /// MovieLens `u.data` (tab) or `ratings.dat` (`::`).
    MovieLens,
    /// HetRec 2011 Last.fm `user_artists.dat`.
    HetrecLastfm,
    /// Generic delimited text with a header and named columns.
    Csv(CsvColumns),
}

/// Column names (and delimiter) for the generic CSV/TSV reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvColumns {
    pub delimiter: u8,
    pub user: String,
    pub item: String,
    pub value: Option<String>,
    pub timestamp: Option<String>,
}

/// Counts reported by a reader after a full pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadSummary {
    /// The files actually read (a directory input resolves to one or more files).
    pub files: Vec<PathBuf>,
    /// Data rows handed to the callback.
    pub rows: u64,
    /// Whether the records carried timestamps (the file has a timestamp column).
    pub timestamps: bool,
}

/// Stream the interactions of `input` (a file, or a folder the format knows how to search;
/// see below) to `sink`, one [`Record`] per data row, stopping after `limit` rows.
///
/// The ids in each record borrow from a line buffer that is reused for the next row: copy or
/// intern them inside the sink. The sink's own error stops the read and is returned as is.
/// Fully empty lines are skipped and `\r\n` line ends accepted. Plain and `.bz2` files are read
/// (by extension or magic bytes), in a single pass with constant memory.
///
/// Folder inputs (SPEC §2):
/// * Onion: `userid_trackid_timestamp.tsv` if present (value 1.0 and a timestamp per row),
///   else `userid_trackid_count.tsv` (value = count). Which file it is, is decided by the
///   header, so a renamed file reads the same.
/// * RecBole: the single `*.inter` file. `user_id`/`item_id` (token) are required; the value
///   is `rating` and the timestamp `timestamp` (both `float`) when present.
/// * MovieLens: `u.data` (tab) or `ratings.dat` (`::`), no header; the delimiter is sniffed
///   from the first line.
/// * HetRec Last.fm: `user_artists.dat` (`userID artistID weight`, value = weight).
/// * CSV: a file only; columns located by the names in [`CsvColumns`], RFC 4180 quoting
///   (including quoted line breaks). Timestamps may be Unix seconds or
///   `YYYY-MM-DD HH:MM:SS`.
///
/// Errors: a missing column, duplicate header names, a wrong field count, a value that is
/// not a finite number, a bad timestamp, invalid UTF-8 in an id, an empty file, a truncated
/// or corrupt `.bz2`: each a [`crate::DataError::Parse`] (file, line, column, field) or
/// [`crate::DataError::Format`] (file). Never a panic.
pub fn read_interactions(
    format: &InteractionFormat,
    input: &Path,
    limit: Option<u64>,
    sink: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<ReadSummary> {
    let path = interactions::resolve_input(format, input)?;
    interactions::read_file(format, &path, limit, sink)
}

/// [`read_interactions`] over any byte source (already decompressed); `name` stands for the
/// file in error messages and in the summary. For tests, fuzzing and piped input.
pub fn read_interactions_from<R: Read>(
    format: &InteractionFormat,
    src: R,
    name: &Path,
    limit: Option<u64>,
    sink: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<ReadSummary> {
    interactions::read_source(format, src, name, limit, sink)
}

/// The file [`read_interactions`] would read for `input` (resolving a folder input).
pub fn resolve_interactions(format: &InteractionFormat, input: &Path) -> Result<PathBuf> {
    interactions::resolve_input(format, input)
}

/// Human-readable item names, by external item id, where the dataset ships them; `Ok(None)`
/// when it does not. `input` is the same file or folder given to [`read_interactions`]; the
/// names file is looked for beside it:
/// * RecBole: `<name>.item` beside `<name>.inter`; the name is `movie_title` (or `title`,
///   `name`), with ` (year)` appended from `release_year`/`year` when present and non-empty.
/// * MovieLens: `u.item` (`|`-separated) or `movies.dat` (`::`), UTF-8 or ISO-8859-1 per line.
/// * HetRec Last.fm: `artists.dat` (`name`).
/// * Onion: `id_information.tsv[.bz2]` (`id artist song album_name`), as "artist - song".
/// * CSV: none.
///
/// A duplicate id in a names file is an error naming both lines.
pub fn read_item_names(
    format: &InteractionFormat,
    input: &Path,
) -> Result<Option<HashMap<String, String>>> {
    names::read_item_names(format, input)
}
