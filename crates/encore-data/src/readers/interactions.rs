//! Interaction-log readers for every format of SPEC §2, sharing one streaming row engine.
//!
//! Each format is reduced to a [`Layout`] (how to split a line, which field is the user, the
//! item, the value and the timestamp, and the field names for messages); the engine then reads
//! line by line from a reused buffer and hands each row to the caller's sink as `&str` slices.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::fields::{self, parse_error, QuotedSplit, Splitter};
use super::lines::{open_lines, LineReader, MAX_LINE_BYTES};
use super::{CsvColumns, InteractionFormat, ReadSummary, Record};
use crate::error::{DataError, Result};

/// How a timestamp field is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeKind {
    /// `YYYY-MM-DD HH:MM:SS` (Onion).
    DateTime,
    /// Unix seconds, integer or decimal (RecBole, MovieLens).
    Seconds,
    /// Either (generic CSV).
    Any,
}

/// Where the parts of a record sit in a line.
#[derive(Debug, Clone)]
struct Layout {
    splitter: Splitter,
    /// One name per field, used in error messages; its length is the required field count.
    names: Vec<String>,
    user: usize,
    item: usize,
    value: Option<usize>,
    timestamp: Option<(usize, TimeKind)>,
}

/// Resolve a directory input to the one file the format reads there (SPEC §2 and the reader
/// brief): Onion prefers the timestamp log over the count log, RecBole takes the single
/// `*.inter`, MovieLens `u.data` or `ratings.dat`, HetRec `user_artists.dat`. Each may carry a
/// `.bz2` suffix.
pub(crate) fn resolve_input(format: &InteractionFormat, input: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(input).map_err(|e| DataError::io(input, e))?;
    if !meta.is_dir() {
        return Ok(input.to_path_buf());
    }
    let first_of = |names: &[&str]| -> Option<PathBuf> {
        names.iter().find_map(|n| {
            [n.to_string(), format!("{n}.bz2")]
                .into_iter()
                .map(|c| input.join(c))
                .find(|p| p.is_file())
        })
    };
    match format {
        InteractionFormat::Onion => first_of(&["userid_trackid_timestamp.tsv"])
            .or_else(|| first_of(&["userid_trackid_count.tsv"]))
            .ok_or_else(|| {
                DataError::format(
                    input,
                    "no Onion interaction file in this folder (looked for \
                     userid_trackid_timestamp.tsv[.bz2] and userid_trackid_count.tsv[.bz2])",
                )
            }),
        InteractionFormat::RecBole => {
            let found = files_with_suffix(input, &[".inter", ".inter.bz2"])?;
            match found.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(DataError::format(
                    input,
                    "no RecBole .inter file in this folder",
                )),
                many => Err(DataError::format(
                    input,
                    format!(
                        "{} .inter files in this folder ({}); name the one to read",
                        many.len(),
                        list_names(many)
                    ),
                )),
            }
        }
        InteractionFormat::MovieLens => {
            let found: Vec<PathBuf> = ["u.data", "ratings.dat"]
                .iter()
                .filter_map(|n| first_of(&[n]))
                .collect();
            match found.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(DataError::format(
                    input,
                    "no MovieLens ratings in this folder (looked for u.data and ratings.dat)",
                )),
                many => Err(DataError::format(
                    input,
                    format!(
                        "both {} are in this folder; name the one to read",
                        list_names(many)
                    ),
                )),
            }
        }
        InteractionFormat::HetrecLastfm => first_of(&["user_artists.dat"]).ok_or_else(|| {
            DataError::format(input, "no HetRec user_artists.dat[.bz2] in this folder")
        }),
        InteractionFormat::Csv(_) => Err(DataError::format(
            input,
            "is a directory; the CSV reader needs the file itself",
        )),
    }
}

/// Files directly in `dir` whose names end with one of `suffixes`, sorted by name.
pub(crate) fn files_with_suffix(dir: &Path, suffixes: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if suffixes.iter().any(|s| name.ends_with(s)) && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn list_names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read a file (after directory resolution) in the given format.
pub(crate) fn read_file(
    format: &InteractionFormat,
    path: &Path,
    limit: Option<u64>,
    sink: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<ReadSummary> {
    let mut lines = open_lines(path)?;
    read_lines(format, &mut lines, limit, sink)
}

/// Read from any byte source; `name` stands for the file in messages.
pub(crate) fn read_source<R: Read>(
    format: &InteractionFormat,
    src: R,
    name: &Path,
    limit: Option<u64>,
    sink: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<ReadSummary> {
    let mut lines = LineReader::new(src, name);
    read_lines(format, &mut lines, limit, sink)
}

fn read_lines<R: Read>(
    format: &InteractionFormat,
    lines: &mut LineReader<R>,
    limit: Option<u64>,
    sink: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<ReadSummary> {
    let path = lines.path().to_path_buf();
    let mut pending = None;
    let layout = match format {
        InteractionFormat::Onion => {
            onion_layout(&path, &read_header(lines, Splitter::Byte(b'\t'))?.1)?
        }
        InteractionFormat::RecBole => {
            let (line, header) = read_header(lines, Splitter::Byte(b'\t'))?;
            recbole_layout(&path, line, &header)?
        }
        InteractionFormat::HetrecLastfm => {
            let (_, header) = read_header(lines, Splitter::Byte(b'\t'))?;
            Layout {
                splitter: Splitter::Byte(b'\t'),
                user: find_column(&path, &header, "userID")?,
                item: find_column(&path, &header, "artistID")?,
                value: Some(find_column(&path, &header, "weight")?),
                timestamp: None,
                names: header,
            }
        }
        InteractionFormat::Csv(cols) => csv_layout(&path, cols, lines)?,
        InteractionFormat::MovieLens => {
            // No header: the first non-empty line decides between `u.data` (tab) and
            // `ratings.dat` (`::`), and is then read as data.
            let Some((line_no, first)) = next_non_empty(lines)? else {
                return Err(DataError::format(
                    &path,
                    "empty file (expected MovieLens rows: user, item, rating, timestamp)",
                ));
            };
            let splitter = if memchr::memmem::find(first, b"::").is_some() {
                Splitter::DoubleColon
            } else {
                Splitter::Byte(b'\t')
            };
            pending = Some((line_no, first.to_vec()));
            Layout {
                splitter,
                names: ["user_id", "item_id", "rating", "timestamp"]
                    .map(String::from)
                    .to_vec(),
                user: 0,
                item: 1,
                value: Some(2),
                timestamp: Some((3, TimeKind::Seconds)),
            }
        }
    };
    let timestamps = layout.timestamp.is_some();
    let rows = stream_rows(lines, &layout, pending, limit, sink)?;
    Ok(ReadSummary {
        files: vec![path],
        rows,
        timestamps,
    })
}

/// The next line that is not empty, or `None` at the end.
fn next_non_empty<R: Read>(lines: &mut LineReader<R>) -> Result<Option<(u64, &[u8])>> {
    loop {
        // Polonius-free form of "loop until non-empty": re-borrow per iteration.
        let done = match lines.next_line()? {
            None => true,
            Some((_, l)) => !l.is_empty(),
        };
        if done {
            return Ok(lines.current());
        }
    }
}

/// Read and split the header: the first non-empty line, a UTF-8 byte-order mark removed, names
/// trimmed. Duplicate names are an error (a column could not be found unambiguously).
pub(crate) fn read_header<R: Read>(
    lines: &mut LineReader<R>,
    splitter: Splitter,
) -> Result<(u64, Vec<String>)> {
    let path = lines.path().to_path_buf();
    let Some((line_no, line)) = next_non_empty(lines)? else {
        return Err(DataError::format(
            &path,
            "empty file (expected a header line)",
        ));
    };
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let mut ranges = Vec::new();
    let mut scratch = Vec::new();
    let bytes: &[u8] = match splitter {
        Splitter::Byte(d) => {
            fields::split_byte(line, d, &mut ranges);
            line
        }
        Splitter::DoubleColon => {
            fields::split_double_colon(line, &mut ranges);
            line
        }
        Splitter::Quoted(d) => match fields::split_quoted(line, d, &mut scratch, &mut ranges) {
            QuotedSplit::Complete => &scratch,
            QuotedSplit::OpenQuote => {
                return Err(parse_error(
                    &path,
                    line_no,
                    ranges.len() + 1,
                    "header",
                    "unterminated quote in the header",
                ))
            }
            QuotedSplit::Bad(col, msg) => {
                return Err(parse_error(&path, line_no, col, "header", msg))
            }
        },
    };
    let mut names: Vec<String> = Vec::with_capacity(ranges.len());
    for (i, r) in ranges.iter().enumerate() {
        let name = fields::text(&bytes[r.clone()])
            .map_err(|m| parse_error(&path, line_no, i + 1, "header", m))?
            .trim()
            .to_owned();
        if let Some(j) = names.iter().position(|n| *n == name) {
            return Err(parse_error(
                &path,
                line_no,
                i + 1,
                &name,
                format!(
                    "duplicate column name {name:?} in the header (columns {} and {})",
                    j + 1,
                    i + 1
                ),
            ));
        }
        names.push(name);
    }
    Ok((line_no, names))
}

/// The index of the column called `name`, or an error listing the header's columns.
pub(crate) fn find_column(path: &Path, header: &[String], name: &str) -> Result<usize> {
    header.iter().position(|h| h == name).ok_or_else(|| {
        DataError::format(
            path,
            format!(
                "no column {name:?} in the header; its columns are: {}",
                header.join(", ")
            ),
        )
    })
}

/// Onion: `user_id track_id count` or `user_id track_id timestamp`, told apart by the header.
fn onion_layout(path: &Path, header: &[String]) -> Result<Layout> {
    let has = |n: &str| header.iter().any(|h| h == n);
    let (value, timestamp) = if has("timestamp") {
        (
            None,
            Some((find_column(path, header, "timestamp")?, TimeKind::DateTime)),
        )
    } else if has("count") {
        (Some(find_column(path, header, "count")?), None)
    } else {
        return Err(DataError::format(
            path,
            format!(
                "not an Onion interaction file: expected the header user_id, track_id, count \
                 or user_id, track_id, timestamp; found: {}",
                header.join(", ")
            ),
        ));
    };
    Ok(Layout {
        splitter: Splitter::Byte(b'\t'),
        user: find_column(path, header, "user_id")?,
        item: find_column(path, header, "track_id")?,
        value,
        timestamp,
        names: header.to_vec(),
    })
}

/// The RecBole field types.
const RECBOLE_TYPES: [&str; 4] = ["token", "float", "token_seq", "float_seq"];

/// Split a RecBole typed header into names and types, checking every type is known.
pub(crate) fn recbole_header(
    path: &Path,
    line: u64,
    header: &[String],
) -> Result<(Vec<String>, Vec<String>)> {
    let mut names = Vec::with_capacity(header.len());
    let mut types = Vec::with_capacity(header.len());
    for (i, h) in header.iter().enumerate() {
        let Some((name, ty)) = h.rsplit_once(':') else {
            return Err(parse_error(
                path,
                line,
                i + 1,
                h,
                format!("RecBole header field {h:?} has no type (expected name:token|float|token_seq|float_seq)"),
            ));
        };
        if !RECBOLE_TYPES.contains(&ty) {
            return Err(parse_error(
                path,
                line,
                i + 1,
                name,
                format!(
                    "unknown RecBole type {ty:?} (expected token, float, token_seq or float_seq)"
                ),
            ));
        }
        if names.contains(&name.to_owned()) {
            return Err(parse_error(
                path,
                line,
                i + 1,
                name,
                format!("duplicate field name {name:?} in the header"),
            ));
        }
        names.push(name.to_owned());
        types.push(ty.to_owned());
    }
    Ok((names, types))
}

/// RecBole `.inter`: `user_id` and `item_id` (token), optional `rating` and `timestamp`
/// (float). Other fields are allowed and ignored.
fn recbole_layout(path: &Path, line: u64, header: &[String]) -> Result<Layout> {
    let (names, types) = recbole_header(path, line, header)?;
    let typed = |name: &str, want: &str| -> Result<Option<usize>> {
        match names.iter().position(|n| n == name) {
            None => Ok(None),
            Some(i) if types[i] == want => Ok(Some(i)),
            Some(i) => Err(parse_error(
                path,
                line,
                i + 1,
                name,
                format!("field {name} has type {}, expected {want}", types[i]),
            )),
        }
    };
    let required = |name: &str| -> Result<usize> {
        typed(name, "token")?.ok_or_else(|| {
            DataError::format(
                path,
                format!(
                    "no field {name:?} in the RecBole header; its fields are: {}",
                    header.join(", ")
                ),
            )
        })
    };
    Ok(Layout {
        splitter: Splitter::Byte(b'\t'),
        user: required("user_id")?,
        item: required("item_id")?,
        value: typed("rating", "float")?,
        timestamp: typed("timestamp", "float")?.map(|i| (i, TimeKind::Seconds)),
        names,
    })
}

fn csv_layout<R: Read>(
    path: &Path,
    cols: &CsvColumns,
    lines: &mut LineReader<R>,
) -> Result<Layout> {
    let d = cols.delimiter;
    if d == b'"' || d == b'\n' || d == b'\r' || !d.is_ascii() {
        return Err(DataError::parameter(
            "delimiter",
            format!(
                "{:?} cannot separate fields (use an ASCII character other than a quote or line end)",
                d as char
            ),
        ));
    }
    let (_, header) = read_header(lines, Splitter::Quoted(d))?;
    Ok(Layout {
        splitter: Splitter::Quoted(d),
        user: find_column(path, &header, &cols.user)?,
        item: find_column(path, &header, &cols.item)?,
        value: cols
            .value
            .as_deref()
            .map(|n| find_column(path, &header, n))
            .transpose()?,
        timestamp: cols
            .timestamp
            .as_deref()
            .map(|n| find_column(path, &header, n).map(|i| (i, TimeKind::Any)))
            .transpose()?,
        names: header,
    })
}

/// The row engine: split each non-empty line, check the field count, parse and hand out.
fn stream_rows<R: Read>(
    lines: &mut LineReader<R>,
    layout: &Layout,
    pending: Option<(u64, Vec<u8>)>,
    limit: Option<u64>,
    sink: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<u64> {
    let path = lines.path().to_path_buf();
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(layout.names.len() + 1);
    let mut record: Vec<u8> = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    let limit = limit.unwrap_or(u64::MAX);
    let mut rows = 0u64;
    if let Some((line_no, line)) = pending {
        if rows < limit && !line.is_empty() {
            split_plain(layout.splitter, &line, &mut ranges);
            emit(&path, line_no, &line, &ranges, layout, sink)?;
            rows += 1;
        }
    }
    while rows < limit {
        let Some((line_no, line)) = lines.next_line()? else {
            break;
        };
        if line.is_empty() {
            continue;
        }
        match layout.splitter {
            Splitter::Quoted(d) if memchr::memchr(b'"', line).is_some() => {
                record.clear();
                record.extend_from_slice(line);
                loop {
                    match fields::split_quoted(&record, d, &mut scratch, &mut ranges) {
                        QuotedSplit::Complete => break,
                        QuotedSplit::Bad(col, msg) => {
                            let field = layout.names.get(col - 1).map_or("(extra)", |s| s);
                            return Err(parse_error(&path, line_no, col, field, msg));
                        }
                        QuotedSplit::OpenQuote => {
                            let more = match lines.next_line()? {
                                Some((_, next)) if record.len() + next.len() < MAX_LINE_BYTES => {
                                    record.push(b'\n');
                                    record.extend_from_slice(next);
                                    true
                                }
                                _ => false,
                            };
                            if !more {
                                let col = ranges.len() + 1;
                                let field = layout.names.get(col - 1).map_or("(extra)", |s| s);
                                return Err(parse_error(
                                    &path,
                                    line_no,
                                    col,
                                    field,
                                    "quoted field opened here is never closed",
                                ));
                            }
                        }
                    }
                }
                emit(&path, line_no, &scratch, &ranges, layout, sink)?;
            }
            splitter => {
                split_plain(splitter, line, &mut ranges);
                emit(&path, line_no, line, &ranges, layout, sink)?;
            }
        }
        rows += 1;
    }
    Ok(rows)
}

#[inline]
fn split_plain(splitter: Splitter, line: &[u8], ranges: &mut Vec<Range<usize>>) {
    match splitter {
        Splitter::Byte(d) | Splitter::Quoted(d) => fields::split_byte(line, d, ranges),
        Splitter::DoubleColon => fields::split_double_colon(line, ranges),
    }
}

/// Parse one split row and hand it to the sink.
#[inline]
fn emit(
    path: &Path,
    line_no: u64,
    bytes: &[u8],
    ranges: &[Range<usize>],
    layout: &Layout,
    sink: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<()> {
    let n = layout.names.len();
    if ranges.len() != n {
        let (column, field) = if ranges.len() < n {
            (ranges.len() + 1, layout.names[ranges.len()].as_str())
        } else {
            (n + 1, "(extra)")
        };
        return Err(parse_error(
            path,
            line_no,
            column,
            field,
            format!("expected {n} fields, found {}", ranges.len()),
        ));
    }
    let err = |i: usize, msg: String| parse_error(path, line_no, i + 1, &layout.names[i], msg);
    let user = fields::id(&bytes[ranges[layout.user].clone()]).map_err(|m| err(layout.user, m))?;
    let item = fields::id(&bytes[ranges[layout.item].clone()]).map_err(|m| err(layout.item, m))?;
    let value = match layout.value {
        Some(i) => fields::interaction_value(&bytes[ranges[i].clone()]).map_err(|m| err(i, m))?,
        None => 1.0,
    };
    let timestamp = match layout.timestamp {
        Some((i, kind)) => {
            let b = &bytes[ranges[i].clone()];
            Some(
                match kind {
                    TimeKind::DateTime => fields::datetime(b),
                    TimeKind::Seconds => fields::epoch_seconds(b),
                    TimeKind::Any => fields::any_timestamp(b),
                }
                .map_err(|m| err(i, m))?,
            )
        }
        None => None,
    };
    sink(Record {
        user,
        item,
        value,
        timestamp,
    })
}
