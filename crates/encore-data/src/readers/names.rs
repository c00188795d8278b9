//! Item names and HetRec artist tags: the human-readable side files of each dataset.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::fields::{self, parse_error, Splitter};
use super::interactions::{find_column, read_header, recbole_header, resolve_input};
use super::lines::{open_lines, LineReader};
use super::InteractionFormat;
use crate::error::{DataError, Result};

/// The folder an input lives in (the input itself when it is a folder).
fn folder_of(input: &Path) -> PathBuf {
    if input.is_dir() {
        input.to_path_buf()
    } else {
        match input.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// `dir/name` or `dir/name.bz2`, whichever exists.
fn existing(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.bz2"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Call `f` with every non-empty line of `lines`, split.
fn for_each_row<R: Read>(
    lines: &mut LineReader<R>,
    splitter: Splitter,
    mut f: impl FnMut(u64, &[u8], &[Range<usize>]) -> Result<()>,
) -> Result<()> {
    let mut ranges = Vec::new();
    while let Some((line_no, line)) = lines.next_line()? {
        if line.is_empty() {
            continue;
        }
        match splitter {
            Splitter::DoubleColon => fields::split_double_colon(line, &mut ranges),
            Splitter::Byte(d) | Splitter::Quoted(d) => fields::split_byte(line, d, &mut ranges),
        }
        f(line_no, line, &ranges)?;
    }
    Ok(())
}

/// Check a row has `want` fields (exactly, or at least when `at_least`).
fn check_count(
    path: &Path,
    line: u64,
    got: usize,
    want: usize,
    at_least: bool,
    names: &[&str],
) -> Result<()> {
    if got == want || (at_least && got > want) {
        return Ok(());
    }
    let (column, field) = if got < want {
        (got + 1, names.get(got).copied().unwrap_or("(missing)"))
    } else {
        (want + 1, "(extra)")
    };
    let expected = if at_least { "at least " } else { "" };
    Err(parse_error(
        path,
        line,
        column,
        field,
        format!("expected {expected}{want} fields, found {got}"),
    ))
}

/// Names keyed by id, remembering the line of each id to report duplicates.
struct NameTable<'p> {
    path: &'p Path,
    names: HashMap<String, (String, u64)>,
}

impl<'p> NameTable<'p> {
    fn new(path: &'p Path) -> Self {
        Self {
            path,
            names: HashMap::new(),
        }
    }

    fn insert(&mut self, line: u64, column: usize, id: &[u8], name: String) -> Result<()> {
        let id = fields::id(id).map_err(|m| parse_error(self.path, line, column, "id", m))?;
        if let Some((_, first)) = self.names.get(id) {
            return Err(parse_error(
                self.path,
                line,
                column,
                "id",
                format!("duplicate id {id:?} (first on line {first})"),
            ));
        }
        self.names.insert(id.to_owned(), (name, line));
        Ok(())
    }

    fn finish(self) -> HashMap<String, String> {
        self.names.into_iter().map(|(k, (v, _))| (k, v)).collect()
    }
}

pub(crate) fn read_item_names(
    format: &InteractionFormat,
    input: &Path,
) -> Result<Option<HashMap<String, String>>> {
    let dir = folder_of(input);
    match format {
        InteractionFormat::RecBole => {
            let inter = resolve_input(format, input)?;
            let file = inter
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = file
                .strip_suffix(".inter.bz2")
                .or_else(|| file.strip_suffix(".inter"))
                .unwrap_or(&file);
            match existing(&folder_of(&inter), &format!("{stem}.item")) {
                Some(p) => recbole_names(&p),
                None => Ok(None),
            }
        }
        InteractionFormat::MovieLens => {
            let prefer_1m = input
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ratings.dat"));
            let order: [(&str, Splitter); 2] = if prefer_1m {
                [
                    ("movies.dat", Splitter::DoubleColon),
                    ("u.item", Splitter::Byte(b'|')),
                ]
            } else {
                [
                    ("u.item", Splitter::Byte(b'|')),
                    ("movies.dat", Splitter::DoubleColon),
                ]
            };
            for (name, splitter) in order {
                if let Some(p) = existing(&dir, name) {
                    return movielens_names(&p, splitter).map(Some);
                }
            }
            Ok(None)
        }
        InteractionFormat::HetrecLastfm => match existing(&dir, "artists.dat") {
            Some(p) => header_names(&p, "id", &["name"], |parts| parts[0].clone()).map(Some),
            None => Ok(None),
        },
        InteractionFormat::Onion => match existing(&dir, "id_information.tsv") {
            Some(p) => header_names(&p, "id", &["artist", "song"], |parts| {
                format!("{} - {}", parts[0], parts[1])
            })
            .map(Some),
            None => Ok(None),
        },
        InteractionFormat::Csv(_) => Ok(None),
    }
}

/// A tab-separated names file with a plain header: `id_col` and the `name_cols` composed by
/// `compose`. Text is UTF-8, or ISO-8859-1 where a line is not valid UTF-8.
fn header_names(
    path: &Path,
    id_col: &str,
    name_cols: &[&str],
    compose: impl Fn(&[String]) -> String,
) -> Result<HashMap<String, String>> {
    let mut lines = open_lines(path)?;
    let (_, header) = read_header(&mut lines, Splitter::Byte(b'\t'))?;
    let id = find_column(path, &header, id_col)?;
    let cols: Vec<usize> = name_cols
        .iter()
        .map(|c| find_column(path, &header, c))
        .collect::<Result<_>>()?;
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = NameTable::new(path);
    let mut parts = Vec::with_capacity(cols.len());
    for_each_row(&mut lines, Splitter::Byte(b'\t'), |line, bytes, ranges| {
        check_count(path, line, ranges.len(), header.len(), false, &header_refs)?;
        parts.clear();
        parts.extend(cols.iter().map(|&c| {
            fields::utf8_or_latin1(&bytes[ranges[c].clone()])
                .trim()
                .to_owned()
        }));
        table.insert(line, id + 1, &bytes[ranges[id].clone()], compose(&parts))
    })?;
    Ok(table.finish())
}

/// RecBole `.item`: typed header; `item_id` plus a title field, with the year appended.
fn recbole_names(path: &Path) -> Result<Option<HashMap<String, String>>> {
    let mut lines = open_lines(path)?;
    let (header_line, header) = read_header(&mut lines, Splitter::Byte(b'\t'))?;
    let (names, _) = recbole_header(path, header_line, &header)?;
    let id = find_column(path, &names, "item_id")?;
    let Some(title) = ["movie_title", "title", "name"]
        .iter()
        .find_map(|n| names.iter().position(|h| h == n))
    else {
        return Ok(None);
    };
    let year = ["release_year", "year"]
        .iter()
        .find_map(|n| names.iter().position(|h| h == n));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut table = NameTable::new(path);
    for_each_row(&mut lines, Splitter::Byte(b'\t'), |line, bytes, ranges| {
        check_count(path, line, ranges.len(), names.len(), false, &refs)?;
        let mut name = fields::utf8_or_latin1(&bytes[ranges[title].clone()])
            .trim()
            .to_owned();
        if let Some(y) = year {
            let y = fields::utf8_or_latin1(&bytes[ranges[y].clone()]);
            let y = y.trim();
            if !y.is_empty() {
                name = format!("{name} ({y})");
            }
        }
        table.insert(line, id + 1, &bytes[ranges[id].clone()], name)
    })?;
    Ok(Some(table.finish()))
}

/// MovieLens `u.item` (`id|title|date|...`) or `movies.dat` (`id::title::genres`): no header,
/// the title (which already carries the year) is the second field.
fn movielens_names(path: &Path, splitter: Splitter) -> Result<HashMap<String, String>> {
    let mut lines = open_lines(path)?;
    let mut table = NameTable::new(path);
    for_each_row(&mut lines, splitter, |line, bytes, ranges| {
        check_count(path, line, ranges.len(), 2, true, &["movie_id", "title"])?;
        let name = fields::utf8_or_latin1(&bytes[ranges[1].clone()])
            .trim()
            .to_owned();
        table.insert(line, 1, &bytes[ranges[0].clone()], name)
    })?;
    Ok(table.finish())
}

/// The tags users attached to each HetRec Last.fm artist, from `user_taggedartists.dat`
/// (`userID artistID tagID day month year`) and `tags.dat` (`tagID tagValue`, ISO-8859-1 as
/// the dataset's readme says: decoded byte by byte to Unicode, never as UTF-8).
///
/// One entry per tagged artist (keyed by the artist id as written), each distinct tag value
/// once, ordered by the number of distinct users who applied it (most first), ties
/// alphabetically. A tag id missing from `tags.dat` is an error naming the line.
pub fn read_hetrec_artist_tags(dir: &Path) -> Result<HashMap<String, Vec<String>>> {
    let tags_path = existing(dir, "tags.dat")
        .ok_or_else(|| DataError::format(dir, "no HetRec tags.dat[.bz2] in this folder"))?;
    let tagged_path = existing(dir, "user_taggedartists.dat").ok_or_else(|| {
        DataError::format(dir, "no HetRec user_taggedartists.dat[.bz2] in this folder")
    })?;

    // Tag id -> index of its (deduplicated) value.
    let mut values: Vec<String> = Vec::new();
    let mut value_index: HashMap<String, u32> = HashMap::new();
    let mut tag_of: HashMap<String, (u32, u64)> = HashMap::new();
    {
        let mut lines = open_lines(&tags_path)?;
        let (_, header) = read_header(&mut lines, Splitter::Byte(b'\t'))?;
        let id_col = find_column(&tags_path, &header, "tagID")?;
        let value_col = find_column(&tags_path, &header, "tagValue")?;
        let refs: Vec<&str> = header.iter().map(String::as_str).collect();
        let path = tags_path.as_path();
        for_each_row(&mut lines, Splitter::Byte(b'\t'), |line, bytes, ranges| {
            check_count(path, line, ranges.len(), header.len(), false, &refs)?;
            let id = fields::id(&bytes[ranges[id_col].clone()])
                .map_err(|m| parse_error(path, line, id_col + 1, "tagID", m))?;
            let value = fields::latin1(&bytes[ranges[value_col].clone()])
                .trim()
                .to_owned();
            let next = values.len() as u32;
            let vi = *value_index.entry(value.clone()).or_insert_with(|| {
                values.push(value);
                next
            });
            if let Some((_, first)) = tag_of.insert(id.to_owned(), (vi, line)) {
                return Err(parse_error(
                    path,
                    line,
                    id_col + 1,
                    "tagID",
                    format!("duplicate tag id {id:?} (first on line {first})"),
                ));
            }
            Ok(())
        })?;
    }

    let mut users: HashMap<String, u32> = HashMap::new();
    let mut applied: HashMap<String, HashMap<u32, HashSet<u32>>> = HashMap::new();
    {
        let mut lines = open_lines(&tagged_path)?;
        let (_, header) = read_header(&mut lines, Splitter::Byte(b'\t'))?;
        let user_col = find_column(&tagged_path, &header, "userID")?;
        let artist_col = find_column(&tagged_path, &header, "artistID")?;
        let tag_col = find_column(&tagged_path, &header, "tagID")?;
        let refs: Vec<&str> = header.iter().map(String::as_str).collect();
        let path = tagged_path.as_path();
        for_each_row(&mut lines, Splitter::Byte(b'\t'), |line, bytes, ranges| {
            check_count(path, line, ranges.len(), header.len(), false, &refs)?;
            let get = |col: usize, name: &str| {
                fields::id(&bytes[ranges[col].clone()])
                    .map_err(|m| parse_error(path, line, col + 1, name, m))
            };
            let user = get(user_col, "userID")?;
            let artist = get(artist_col, "artistID")?;
            let tag = get(tag_col, "tagID")?;
            let Some(&(vi, _)) = tag_of.get(tag) else {
                return Err(parse_error(
                    path,
                    line,
                    tag_col + 1,
                    "tagID",
                    format!("tag id {tag:?} is not in {}", tags_path.display()),
                ));
            };
            let next = users.len() as u32;
            let u = *users.entry(user.to_owned()).or_insert(next);
            applied
                .entry(artist.to_owned())
                .or_default()
                .entry(vi)
                .or_default()
                .insert(u);
            Ok(())
        })?;
    }

    Ok(applied
        .into_iter()
        .map(|(artist, tags)| {
            let mut counted: Vec<(usize, &str)> = tags
                .iter()
                .map(|(&vi, who)| (who.len(), values[vi as usize].as_str()))
                .collect();
            counted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            (
                artist,
                counted.into_iter().map(|(_, v)| v.to_owned()).collect(),
            )
        })
        .collect())
}
