//! Streaming readers for interaction logs and item feature tables (SPEC §2).
//!
//! Every reader streams line by line and hands each record to a callback as borrowed `&str`
//! slices, so a 50M-row file is never held in memory as strings. Errors name the file, the
//! 1-based line and column, and the field.

use std::path::PathBuf;

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
}
