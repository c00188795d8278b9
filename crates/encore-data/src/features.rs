//! Item feature tables (SPEC §2 "Item feature matrices", §3): Onion-style `id_<name>.tsv`,
//! NumPy `.npy`, alignment of a table to a dataset's item catalogue, and the text inputs of the
//! lyrics path (an `id<TAB>text` table or a folder of `<id>.txt` files).
//!
//! Widths are always read from the file (SPEC §2: "read the width from the header, never
//! assume it"). Every value must be a finite number: a NaN in a feature file would silently
//! poison a PCA downstream, so it is an error naming the line and column here.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::readers::fields::{self, parse_error};
use crate::readers::lines::{open_lines, LineReader};
use crate::IdMap;

/// A dense table of item features: one row per external id, one named column per dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTable {
    /// External item ids, one per row, distinct.
    pub ids: Vec<String>,
    /// Column names (the header after `id`); their count is the dimension.
    pub columns: Vec<String>,
    /// Row-major values, `ids.len() * columns.len()`.
    pub values: Vec<f32>,
    /// Source line of each row, for error messages (empty for tables not read from text).
    lines: Vec<u64>,
    /// The file the table came from (or stands for).
    pub source: PathBuf,
}

/// What [`FeatureTable::align`] does with an id that is not in the item catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownIds {
    /// Fail, naming the file, line and id: the feature file and the dataset disagree.
    Error,
    /// Skip the row and count it (feature files often cover tracks without interactions,
    /// e.g. Onion's features cover all of Music4All while k-core filtering drops tracks).
    Skip,
}

/// Features laid out by the catalogue's item index.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignedFeatures {
    /// Columns per item.
    pub dim: usize,
    /// Row-major `n_items x dim`; zeros for items without a row in the table.
    pub values: Vec<f32>,
    /// Whether item `i` had a row in the table.
    pub present: Vec<bool>,
    /// Rows skipped because their id is not in the catalogue (with [`UnknownIds::Skip`]).
    pub unknown_skipped: usize,
}

impl AlignedFeatures {
    /// Number of catalogue items without features.
    pub fn missing(&self) -> usize {
        self.present.iter().filter(|&&p| !p).count()
    }

    /// The features of item `i` (zeros if it had none).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

impl FeatureTable {
    /// Build a table from parts, checking the shape and that ids are distinct.
    pub fn new(
        source: impl Into<PathBuf>,
        ids: Vec<String>,
        columns: Vec<String>,
        values: Vec<f32>,
    ) -> Result<Self> {
        let source = source.into();
        if values.len() != ids.len() * columns.len() {
            return Err(DataError::format(
                &source,
                format!(
                    "feature table shape mismatch: {} ids x {} columns needs {} values, found {}",
                    ids.len(),
                    columns.len(),
                    ids.len() * columns.len(),
                    values.len()
                ),
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if let Some(first) = seen.insert(id, i) {
                return Err(DataError::format(
                    &source,
                    format!("duplicate id {id:?} in rows {} and {}", first + 1, i + 1),
                ));
            }
        }
        Ok(Self {
            ids,
            columns,
            values,
            lines: Vec::new(),
            source,
        })
    }

    /// Number of columns.
    pub fn dim(&self) -> usize {
        self.columns.len()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The values of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.dim();
        &self.values[i * d..(i + 1) * d]
    }

    /// The source line of row `i`, when the table was read from a text file.
    pub fn line(&self, i: usize) -> Option<u64> {
        self.lines.get(i).copied()
    }

    /// Lay the rows out by `items`' indices. Items without a row get zeros and
    /// `present[i] == false`; ids not in the catalogue are an error or skipped per `unknown`.
    pub fn align(&self, items: &IdMap, unknown: UnknownIds) -> Result<AlignedFeatures> {
        let dim = self.dim();
        let mut values = vec![0.0f32; items.len() * dim];
        let mut present = vec![false; items.len()];
        let mut unknown_skipped = 0;
        for (r, id) in self.ids.iter().enumerate() {
            match items.get(id) {
                Some(i) => {
                    let i = i as usize;
                    values[i * dim..(i + 1) * dim].copy_from_slice(self.row(r));
                    present[i] = true;
                }
                None if unknown == UnknownIds::Skip => unknown_skipped += 1,
                None => {
                    let message = format!(
                        "id {id:?} is not in the dataset's item catalogue ({} items); \
                         skip unknown ids to ignore feature rows of items without interactions",
                        items.len()
                    );
                    return Err(match self.line(r) {
                        Some(line) => parse_error(&self.source, line, 1, "id", message),
                        None => {
                            DataError::format(&self.source, format!("row {}: {message}", r + 1))
                        }
                    });
                }
            }
        }
        Ok(AlignedFeatures {
            dim,
            values,
            present,
            unknown_skipped,
        })
    }
}

/// Rows parsed together on the thread pool.
const PARSE_CHUNK_ROWS: usize = 2048;

/// Read an Onion-style feature table: a header `id` then one named column per dimension
/// (tab-separated, or comma-separated when the header has no tab), then one row per item.
/// `.bz2` is decompressed on the fly. Values are parsed in parallel chunks; errors are
/// reported for the first bad line in file order, independent of the thread count.
///
/// Errors: an empty file or a header without value columns, duplicate column names, a row
/// with the wrong number of fields, a value that is not a finite number (NaN and infinities
/// included), invalid UTF-8 in an id, a duplicate id (naming both lines).
pub fn read_feature_tsv(path: &Path) -> Result<FeatureTable> {
    let mut lines = open_lines(path)?;
    read_feature_lines(&mut lines)
}

/// [`read_feature_tsv`] over any byte source; `name` stands for the file in messages.
pub fn read_feature_tsv_from<R: Read>(src: R, name: &Path) -> Result<FeatureTable> {
    let mut lines = LineReader::new(src, name);
    read_feature_lines(&mut lines)
}

fn read_feature_lines<R: Read>(lines: &mut LineReader<R>) -> Result<FeatureTable> {
    let path = lines.path().to_path_buf();
    let header_line = loop {
        match lines.next_line()? {
            None => {
                return Err(DataError::format(
                    &path,
                    "empty file (expected a header: id, then one column per dimension)",
                ))
            }
            Some((_, [])) => {}
            Some((_, l)) => break l.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(l).to_vec(),
        }
    };
    let delim = if memchr::memchr(b'\t', &header_line).is_some() {
        b'\t'
    } else {
        b','
    };
    let mut ranges = Vec::new();
    fields::split_byte(&header_line, delim, &mut ranges);
    let mut header: Vec<String> = Vec::with_capacity(ranges.len());
    for (i, r) in ranges.iter().enumerate() {
        let name = fields::text(&header_line[r.clone()])
            .map_err(|m| parse_error(&path, 1, i + 1, "header", m))?
            .trim()
            .to_owned();
        if let Some(j) = header.iter().position(|h| *h == name) {
            return Err(parse_error(
                &path,
                1,
                i + 1,
                &name,
                format!(
                    "duplicate column name {name:?} (columns {} and {})",
                    j + 1,
                    i + 1
                ),
            ));
        }
        header.push(name);
    }
    if header.len() < 2 {
        return Err(DataError::format(
            &path,
            format!(
                "the header has no value columns (expected id, then one column per dimension, \
                 separated by tabs or commas); found {:?}",
                header.join(",")
            ),
        ));
    }
    let dim = header.len() - 1;
    let mut ids: Vec<String> = Vec::new();
    let mut row_lines: Vec<u64> = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let mut first_line: HashMap<String, u64> = HashMap::new();

    let mut chunk = Vec::<u8>::new();
    let mut chunk_rows: Vec<(u64, Range<usize>)> = Vec::with_capacity(PARSE_CHUNK_ROWS);
    let mut flush = |chunk: &mut Vec<u8>, rows: &mut Vec<(u64, Range<usize>)>| -> Result<()> {
        let start = values.len();
        values.resize(start + rows.len() * dim, 0.0);
        let parsed: Vec<std::result::Result<Range<usize>, DataError>> = values[start..]
            .par_chunks_mut(dim)
            .zip(rows.par_iter())
            .map(|(out, (line_no, r))| {
                parse_feature_row(&path, *line_no, &chunk[r.clone()], delim, &header, out)
            })
            .collect();
        for (res, (line_no, r)) in parsed.into_iter().zip(rows.iter()) {
            let id_range = res?;
            let id = fields::id(&chunk[r.clone()][id_range])
                .map_err(|m| parse_error(&path, *line_no, 1, &header[0], m))?;
            if let Some(first) = first_line.get(id) {
                return Err(parse_error(
                    &path,
                    *line_no,
                    1,
                    &header[0],
                    format!("duplicate id {id:?} (first on line {first})"),
                ));
            }
            first_line.insert(id.to_owned(), *line_no);
            ids.push(id.to_owned());
            row_lines.push(*line_no);
        }
        chunk.clear();
        rows.clear();
        Ok(())
    };
    while let Some((line_no, line)) = lines.next_line()? {
        if line.is_empty() {
            continue;
        }
        let start = chunk.len();
        chunk.extend_from_slice(line);
        chunk_rows.push((line_no, start..chunk.len()));
        if chunk_rows.len() == PARSE_CHUNK_ROWS {
            flush(&mut chunk, &mut chunk_rows)?;
        }
    }
    flush(&mut chunk, &mut chunk_rows)?;
    Ok(FeatureTable {
        ids,
        columns: header[1..].to_vec(),
        values,
        lines: row_lines,
        source: path,
    })
}

/// Parse one feature row into `out`, returning the id's byte range within `line`.
fn parse_feature_row(
    path: &Path,
    line_no: u64,
    line: &[u8],
    delim: u8,
    header: &[String],
    out: &mut [f32],
) -> Result<Range<usize>> {
    let n_fields = memchr::memchr_iter(delim, line).count() + 1;
    if n_fields != header.len() {
        let (column, field) = if n_fields < header.len() {
            (n_fields + 1, header[n_fields].as_str())
        } else {
            (header.len() + 1, "(extra)")
        };
        return Err(parse_error(
            path,
            line_no,
            column,
            field,
            format!(
                "expected {} fields (id and {} values), found {n_fields}",
                header.len(),
                header.len() - 1
            ),
        ));
    }
    let mut it = memchr::memchr_iter(delim, line);
    let id_end = it.next().unwrap_or(line.len());
    let mut start = id_end + 1;
    for (k, slot) in out.iter_mut().enumerate() {
        let end = it.next().unwrap_or(line.len());
        *slot = fields::number_f32(&line[start..end])
            .map_err(|m| parse_error(path, line_no, k + 2, &header[k + 1], m))?;
        start = end + 1;
    }
    Ok(0..id_end)
}

/// Write a feature table as TSV (`id` then the column names), atomically: the file appears
/// complete or not at all (SPEC §8), via a temporary file in the same folder and a rename.
/// Values are written in the shortest form that reads back to the same `f32`.
pub fn write_feature_tsv(path: &Path, table: &FeatureTable) -> Result<()> {
    let bad = |s: &str| s.bytes().any(|b| matches!(b, b'\t' | b'\n' | b'\r'));
    if let Some(id) = table.ids.iter().find(|s| bad(s) || s.is_empty()) {
        return Err(DataError::format(
            path,
            format!(
                "cannot write id {id:?}: ids must be non-empty and free of tabs and line breaks"
            ),
        ));
    }
    if let Some(c) = table.columns.iter().find(|s| bad(s)) {
        return Err(DataError::format(
            path,
            format!("cannot write column name {c:?}: it contains a tab or line break"),
        ));
    }
    if table.values.len() != table.len() * table.dim() {
        return Err(DataError::format(
            path,
            format!(
                "feature table shape mismatch: {} ids x {} columns needs {} values, found {}",
                table.len(),
                table.dim(),
                table.len() * table.dim(),
                table.values.len()
            ),
        ));
    }
    encore_io::write_atomic(path, |w| {
        w.write_all(b"id")?;
        for c in &table.columns {
            write!(w, "\t{c}")?;
        }
        w.write_all(b"\n")?;
        for (i, id) in table.ids.iter().enumerate() {
            w.write_all(id.as_bytes())?;
            for v in table.row(i) {
                write!(w, "\t{v}")?;
            }
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Read a 2-D little-endian `float32`/`float64` C-order `.npy` array (format versions 1, 2 and
/// 3) as `(rows, cols, row-major f32 values)`. `float64` is narrowed to `f32`.
///
/// Errors: bad magic or header, a dtype other than `<f4`/`<f8` (big-endian included),
/// `fortran_order: True` (re-save with `np.ascontiguousarray`), a shape that is not 2-D, a
/// data section shorter or longer than the shape says, a non-finite value.
pub fn read_npy(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    read_npy_from(std::io::BufReader::with_capacity(1 << 20, file), path)
}

/// [`read_npy`] over any byte source; `name` stands for the file in messages.
pub fn read_npy_from<R: Read>(mut src: R, name: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let fail = |m: String| DataError::format(name, m);
    let read_exact = |src: &mut R, buf: &mut [u8], what: &str| -> Result<()> {
        src.read_exact(buf).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                fail(format!(
                    "file ends inside the {what}; not a complete .npy file"
                ))
            } else {
                DataError::io(name, e)
            }
        })
    };
    let mut pre = [0u8; 8];
    read_exact(&mut src, &mut pre, "magic")?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(fail(
            "not a .npy file (the magic \\x93NUMPY is missing)".into(),
        ));
    }
    let header_len = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            read_exact(&mut src, &mut b, "header length")?;
            usize::from(u16::from_le_bytes(b))
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact(&mut src, &mut b, "header length")?;
            u32::from_le_bytes(b) as usize
        }
        v => {
            return Err(fail(format!(
                ".npy format version {v} is not supported (1, 2 or 3)"
            )))
        }
    };
    if header_len > 1 << 20 {
        return Err(fail(format!(
            ".npy header of {header_len} bytes is implausibly large"
        )));
    }
    let mut header = vec![0u8; header_len];
    read_exact(&mut src, &mut header, "header")?;
    let header =
        std::str::from_utf8(&header).map_err(|_| fail("the .npy header is not text".into()))?;
    let dict =
        parse_npy_header(header).map_err(|m| fail(format!("bad .npy header {header:?}: {m}")))?;
    let descr = match dict.get("descr") {
        Some(PyValue::Str(s)) => s.clone(),
        _ => return Err(fail("the .npy header has no 'descr' string".into())),
    };
    let width = match descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        ">f4" | ">f8" => {
            return Err(fail(format!(
                "dtype {descr} is big-endian; save as little-endian (arr.astype('<f4'))"
            )))
        }
        other => {
            return Err(fail(format!(
                "dtype {other:?} is not supported (expected float32 '<f4' or float64 '<f8')"
            )))
        }
    };
    match dict.get("fortran_order") {
        Some(PyValue::Bool(false)) => {}
        Some(PyValue::Bool(true)) => {
            return Err(fail(
                "the array is Fortran-ordered (fortran_order: True); save it C-ordered with \
                 np.save(path, np.ascontiguousarray(arr))"
                    .into(),
            ))
        }
        _ => {
            return Err(fail(
                "the .npy header has no 'fortran_order' True/False".into(),
            ))
        }
    }
    let (rows, cols) = match dict.get("shape") {
        Some(PyValue::Tuple(s)) if s.len() == 2 => (s[0], s[1]),
        Some(PyValue::Tuple(s)) => {
            return Err(fail(format!(
                "the array has {} dimensions, expected 2 (items x features)",
                s.len()
            )))
        }
        _ => return Err(fail("the .npy header has no 'shape' tuple".into())),
    };
    let count = rows
        .checked_mul(cols)
        .filter(|c| c.checked_mul(width).is_some())
        .ok_or_else(|| fail(format!("shape ({rows}, {cols}) is too large")))?;
    // Never trust the header for an allocation size: grow as data actually arrives.
    let mut values: Vec<f32> = Vec::with_capacity(count.min(1 << 24));
    let mut buf = vec![0u8; (1 << 16) * width];
    let mut carry = 0usize;
    loop {
        let n = match src.read(&mut buf[carry..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(DataError::io(name, e)),
        };
        if n == 0 {
            break;
        }
        let have = carry + n;
        let whole = have / width * width;
        for c in buf[..whole].chunks_exact(width) {
            if values.len() == count {
                return Err(fail(format!(
                    "more data than the shape ({rows}, {cols}) of {descr} holds"
                )));
            }
            let v = if width == 4 {
                f32::from_le_bytes([c[0], c[1], c[2], c[3]])
            } else {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            };
            if !v.is_finite() {
                let i = values.len();
                return Err(fail(format!(
                    "value at row {}, column {} is {v} (expected a finite number)",
                    i / cols.max(1) + 1,
                    i % cols.max(1) + 1
                )));
            }
            values.push(v);
        }
        buf.copy_within(whole..have, 0);
        carry = have - whole;
    }
    if values.len() != count || carry != 0 {
        return Err(fail(format!(
            "data ends early: shape ({rows}, {cols}) of {descr} needs {count} values, found {}",
            values.len()
        )));
    }
    Ok((rows, cols, values))
}

/// A value in a `.npy` header dictionary.
#[derive(Debug, Clone, PartialEq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parse the Python dict literal of a `.npy` header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_npy_header(s: &str) -> std::result::Result<HashMap<String, PyValue>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let expect = |i: &mut usize, c: u8| -> std::result::Result<(), String> {
        skip_ws(i);
        if b.get(*i) == Some(&c) {
            *i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, *i))
        }
    };
    let string = |i: &mut usize| -> std::result::Result<String, String> {
        skip_ws(i);
        let q = *b.get(*i).ok_or("unexpected end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a quoted string at byte {}", *i));
        }
        let start = *i + 1;
        let len = b[start..]
            .iter()
            .position(|&c| c == q)
            .ok_or("unterminated string")?;
        *i = start + len + 1;
        Ok(s[start..start + len].to_owned())
    };
    let mut out = HashMap::new();
    expect(&mut i, b'{')?;
    loop {
        skip_ws(&mut i);
        if b.get(i) == Some(&b'}') {
            break;
        }
        let key = string(&mut i)?;
        expect(&mut i, b':')?;
        skip_ws(&mut i);
        let value = match b.get(i) {
            Some(b'\'' | b'"') => PyValue::Str(string(&mut i)?),
            Some(b'T') if b[i..].starts_with(b"True") => {
                i += 4;
                PyValue::Bool(true)
            }
            Some(b'F') if b[i..].starts_with(b"False") => {
                i += 5;
                PyValue::Bool(false)
            }
            Some(b'(') => {
                i += 1;
                let mut dims = Vec::new();
                loop {
                    skip_ws(&mut i);
                    if b.get(i) == Some(&b')') {
                        i += 1;
                        break;
                    }
                    let start = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    let n: usize = s[start..i]
                        .parse()
                        .map_err(|_| format!("expected a dimension at byte {start}"))?;
                    dims.push(n);
                    skip_ws(&mut i);
                    match b.get(i) {
                        Some(b',') => i += 1,
                        Some(b')') => {}
                        _ => return Err(format!("expected ',' or ')' at byte {i}")),
                    }
                }
                PyValue::Tuple(dims)
            }
            _ => return Err(format!("unexpected value at byte {i}")),
        };
        out.insert(key, value);
        skip_ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected ',' or '}}' at byte {i}")),
        }
    }
    Ok(out)
}

/// A feature table from a `.npy` matrix and a text file of ids, one per line, in row order
/// (the usual companion of an `.npy` export). Columns are named `0..dim`.
pub fn read_npy_table(npy: &Path, ids_path: &Path) -> Result<FeatureTable> {
    let (rows, cols, values) = read_npy(npy)?;
    let mut lines = open_lines(ids_path)?;
    let mut ids = Vec::with_capacity(rows);
    while let Some((line_no, line)) = lines.next_line()? {
        if line.is_empty() {
            continue;
        }
        let id = fields::id(line).map_err(|m| parse_error(ids_path, line_no, 1, "id", m))?;
        ids.push(id.trim().to_owned());
    }
    if ids.len() != rows {
        return Err(DataError::format(
            ids_path,
            format!("{} ids for the {rows} rows of {}", ids.len(), npy.display()),
        ));
    }
    FeatureTable::new(npy, ids, (0..cols).map(|c| c.to_string()).collect(), values)
}

/// Read an `id<TAB>text` table (e.g. lyrics), in file order. The text is everything after the
/// first tab. A first line whose id field is `id` is taken as a header and skipped. `.bz2` is
/// accepted. Errors: a line without a tab, invalid UTF-8, an empty or duplicate id.
pub fn read_text_table(path: &Path) -> Result<Vec<(String, String)>> {
    let mut lines = open_lines(path)?;
    let mut out = Vec::new();
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut first = true;
    while let Some((line_no, line)) = lines.next_line()? {
        if line.is_empty() {
            continue;
        }
        let line = if first {
            line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
        } else {
            line
        };
        let Some(tab) = memchr::memchr(b'\t', line) else {
            return Err(parse_error(
                path,
                line_no,
                2,
                "text",
                "no tab on this line (expected id<TAB>text)",
            ));
        };
        let id = fields::id(&line[..tab]).map_err(|m| parse_error(path, line_no, 1, "id", m))?;
        if std::mem::take(&mut first) && id == "id" {
            continue;
        }
        let text =
            fields::text(&line[tab + 1..]).map_err(|m| parse_error(path, line_no, 2, "text", m))?;
        if let Some(f) = first_line.insert(id.to_owned(), line_no) {
            return Err(parse_error(
                path,
                line_no,
                1,
                "id",
                format!("duplicate id {id:?} (first on line {f})"),
            ));
        }
        out.push((id.to_owned(), text.to_owned()));
    }
    Ok(out)
}

/// Read a folder of `<id>.txt` files (e.g. one lyrics file per track), sorted by id. Other
/// files and sub-folders are ignored. Each file must be UTF-8 (a byte-order mark is dropped).
pub fn read_text_folder(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "txt") || !path.is_file() {
            continue;
        }
        let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
            return Err(DataError::format(
                &path,
                "file name is not valid UTF-8, so it cannot be an id",
            ));
        };
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| {
            DataError::format(
                &path,
                format!(
                    "invalid UTF-8 at byte {} (expected UTF-8 text)",
                    e.valid_up_to()
                ),
            )
        })?;
        out.push((id.to_owned(), text.to_owned()));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn err_msg(err: DataError, file: &str, line: u64) -> String {
        let msg = err.to_string();
        assert!(msg.contains(file), "{msg:?} does not name {file}");
        assert!(
            msg.contains(&format!(":{line}:")),
            "{msg:?} does not name line {line}"
        );
        msg
    }

    /// A `.npy` file: magic, version, header padded to 64 bytes as NumPy does, data.
    fn npy(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let len_bytes = if version == 1 { 2 } else { 4 };
        let mut h = header.to_owned();
        while !(10 + len_bytes - 2 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend((h.len() as u16).to_le_bytes());
        } else {
            out.extend((h.len() as u32).to_le_bytes());
        }
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    fn f4(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_width_from_header_tab_and_comma() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "id_ivec3.tsv",
            b"id\tv0\tv1\tv2\r\n0009fFIM1eYThaPg\t0.5\t-1\t2e-3\r\n\r\nB\t1\t2\t3\n",
        );
        let t = read_feature_tsv(&p).unwrap();
        assert_eq!(t.dim(), 3);
        assert_eq!(t.len(), 2);
        assert_eq!(t.columns, vec!["v0", "v1", "v2"]);
        assert_eq!(t.ids, vec!["0009fFIM1eYThaPg", "B"]);
        assert_eq!(t.row(0), &[0.5, -1.0, 0.002]);
        assert_eq!(t.row(1), &[1.0, 2.0, 3.0]);
        assert_eq!((t.line(0), t.line(1)), (Some(2), Some(4)));
        assert_eq!(t.source, p);
        let p = write(dir.path(), "f.csv", b"id,a\nx,1.25\ny,-2\n");
        let t = read_feature_tsv(&p).unwrap();
        assert_eq!((t.dim(), t.values.clone()), (1, vec![1.25, -2.0]));
    }

    #[test]
    fn reads_bz2_and_many_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("id\ta\tb\n");
        for i in 0..5000 {
            text.push_str(&format!("t{i}\t{i}\t{}\n", -(i as f32) / 4.0));
        }
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        let p = write(dir.path(), "id_x.tsv.bz2", &enc.finish().unwrap());
        let t = read_feature_tsv(&p).unwrap();
        assert_eq!(t.len(), 5000);
        assert_eq!(t.ids[4321], "t4321");
        assert_eq!(t.row(4321), &[4321.0, -1080.25]);
        assert_eq!(t.line(4321), Some(4323));
    }

    #[test]
    fn feature_errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8], u64, usize, &str); 5] = [
            (
                "short.tsv",
                b"id\ta\tb\nx\t1\t2\ny\t1\n",
                3,
                3,
                "expected 3 fields",
            ),
            ("long.tsv", b"id\ta\nx\t1\t2\n", 2, 3, "found 3"),
            (
                "word.tsv",
                b"id\ta\tb\nx\t1\tone\n",
                2,
                3,
                "expected a number",
            ),
            ("nan.tsv", b"id\ta\nx\tNaN\n", 2, 2, "finite"),
            (
                "dup.tsv",
                b"id\ta\nx\t1\ny\t2\nx\t3\n",
                4,
                1,
                "first on line 2",
            ),
        ];
        for (name, bytes, line, column, expect) in cases {
            let p = write(dir.path(), name, bytes);
            let err = read_feature_tsv(&p).unwrap_err();
            assert!(
                matches!(&err, DataError::Parse { line: l, column: c, .. } if *l == line && *c == column),
                "{name}: {err}"
            );
            let msg = err_msg(err, name, line);
            assert!(msg.contains(expect), "{name}: {msg}");
        }
        for (name, bytes, expect) in [
            ("empty.tsv", &b""[..], "empty file"),
            ("idonly.tsv", b"id\nx\n", "no value columns"),
        ] {
            let p = write(dir.path(), name, bytes);
            let msg = read_feature_tsv(&p).unwrap_err().to_string();
            assert!(msg.contains(name) && msg.contains(expect), "{msg}");
        }
        let p = write(dir.path(), "dupcol.tsv", b"id\ta\ta\n");
        err_msg(read_feature_tsv(&p).unwrap_err(), "dupcol.tsv", 1);
    }

    #[test]
    fn align_places_rows_by_catalogue_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "id_f.tsv",
            b"id\ta\tb\nB\t1\t2\nZ\t9\t9\nA\t3\t4\n",
        );
        let t = read_feature_tsv(&p).unwrap();
        let items = IdMap::from_ids(vec!["A".into(), "B".into(), "C".into()]).unwrap();
        let a = t.align(&items, UnknownIds::Skip).unwrap();
        assert_eq!(a.dim, 2);
        assert_eq!(a.values, vec![3.0, 4.0, 1.0, 2.0, 0.0, 0.0]);
        assert_eq!(a.present, vec![true, true, false]);
        assert_eq!((a.unknown_skipped, a.missing()), (1, 1));
        assert_eq!(a.row(1), &[1.0, 2.0]);
        let err = t.align(&items, UnknownIds::Error).unwrap_err();
        let msg = err_msg(err, "id_f.tsv", 3);
        assert!(msg.contains("\"Z\""), "{msg}");
        let built =
            FeatureTable::new("mem", vec!["Q".into()], vec!["a".into()], vec![1.0]).unwrap();
        let msg = built
            .align(&items, UnknownIds::Error)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("mem") && msg.contains("row 1") && msg.contains("\"Q\""),
            "{msg}"
        );
    }

    #[test]
    fn new_checks_shape_and_duplicates() {
        assert!(FeatureTable::new("m", vec!["a".into()], vec!["x".into()], vec![]).is_err());
        let msg = FeatureTable::new("m", vec!["a".into(), "a".into()], vec![], vec![])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("rows 1 and 2"), "{msg}");
    }

    #[test]
    fn write_round_trips_exactly_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let values = vec![
            0.1f32,
            -3.0e-7,
            1.0 / 3.0,
            123456.78,
            f32::MIN_POSITIVE,
            -0.0,
        ];
        let t = FeatureTable::new(
            "mem",
            vec!["a".into(), "b".into()],
            vec!["x".into(), "y".into(), "z".into()],
            values.clone(),
        )
        .unwrap();
        let out = dir.path().join("id_out.tsv");
        write_feature_tsv(&out, &t).unwrap();
        let back = read_feature_tsv(&out).unwrap();
        assert_eq!(back.ids, t.ids);
        assert_eq!(back.columns, t.columns);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.values), bits(&values));
        // Only the final file is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A bad id fails before anything is written; the old file is untouched.
        let bad =
            FeatureTable::new("mem", vec!["a\tb".into()], vec!["x".into()], vec![1.0]).unwrap();
        assert!(write_feature_tsv(&out, &bad).is_err());
        assert_eq!(read_feature_tsv(&out).unwrap().len(), 2);
    }

    #[test]
    fn npy_v1_f4_v2_f8_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let p = write(
            dir.path(),
            "a.npy",
            &npy(1, h, &f4(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.5])),
        );
        assert_eq!(
            read_npy(&p).unwrap(),
            (2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5])
        );
        let h = "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (1,2)}";
        let data: Vec<u8> = [0.25f64, -1e10]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let p8 = write(dir.path(), "b.npy", &npy(2, h, &data));
        assert_eq!(read_npy(&p8).unwrap(), (1, 2, vec![0.25, -1e10]));
        let ids = write(dir.path(), "ids.txt", b"x\ny\n");
        let t = read_npy_table(&p, &ids).unwrap();
        assert_eq!(
            (t.ids.clone(), t.row(1).to_vec()),
            (vec!["x".to_string(), "y".to_string()], vec![4.0, 5.0, 6.5])
        );
        let one = write(dir.path(), "one.txt", b"x\n");
        assert!(read_npy_table(&p, &one)
            .unwrap_err()
            .to_string()
            .contains("1 ids for the 2 rows"));
    }

    #[test]
    fn npy_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>, &str); 8] = [
            (
                "fortran.npy",
                npy(
                    1,
                    "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1), }",
                    &f4(&[1.0]),
                ),
                "Fortran",
            ),
            (
                "big.npy",
                npy(
                    1,
                    "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 1), }",
                    &f4(&[1.0]),
                ),
                "big-endian",
            ),
            (
                "int.npy",
                npy(
                    1,
                    "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 1), }",
                    &[0; 8],
                ),
                "not supported",
            ),
            (
                "one_d.npy",
                npy(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                    &f4(&[1.0, 2.0, 3.0]),
                ),
                "1 dimensions",
            ),
            (
                "short.npy",
                npy(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
                    &f4(&[1.0, 2.0, 3.0]),
                ),
                "ends early",
            ),
            (
                "long.npy",
                npy(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }",
                    &f4(&[1.0, 2.0]),
                ),
                "more data",
            ),
            (
                "nan.npy",
                npy(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
                    &f4(&[1.0, 2.0, 3.0, f32::NAN]),
                ),
                "row 2, column 2",
            ),
            ("magic.npy", b"PK\x03\x04 not numpy".to_vec(), "magic"),
        ];
        for (name, bytes, expect) in cases {
            let p = write(dir.path(), name, &bytes);
            let msg = read_npy(&p).unwrap_err().to_string();
            assert!(msg.contains(name) && msg.contains(expect), "{name}: {msg}");
        }
    }

    #[test]
    fn text_table_and_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "lyrics.tsv",
            b"id\tlyrics\nA\tla la\tla\n\nB\t\n",
        );
        assert_eq!(
            read_text_table(&p).unwrap(),
            vec![
                ("A".to_string(), "la la\tla".to_string()),
                ("B".to_string(), String::new())
            ]
        );
        let p = write(dir.path(), "notab.tsv", b"A\tx\nB only\n");
        err_msg(read_text_table(&p).unwrap_err(), "notab.tsv", 2);
        let p = write(dir.path(), "dup.tsv", b"A\tx\nA\ty\n");
        let msg = err_msg(read_text_table(&p).unwrap_err(), "dup.tsv", 2);
        assert!(msg.contains("first on line 1"), "{msg}");
        let p = write(dir.path(), "latin.tsv", b"A\tcaf\xe9\n");
        err_msg(read_text_table(&p).unwrap_err(), "latin.tsv", 1);

        let folder = dir.path().join("texts");
        std::fs::create_dir(&folder).unwrap();
        write(&folder, "t2.txt", "zwei Lieder\n".as_bytes());
        write(&folder, "t1.txt", b"\xEF\xBB\xBFone song");
        write(&folder, "notes.md", b"ignored");
        assert_eq!(
            read_text_folder(&folder).unwrap(),
            vec![
                ("t1".to_string(), "one song".to_string()),
                ("t2".to_string(), "zwei Lieder\n".to_string())
            ]
        );
        write(&folder, "t3.txt", b"\xff");
        let msg = read_text_folder(&folder).unwrap_err().to_string();
        assert!(msg.contains("t3.txt") && msg.contains("UTF-8"), "{msg}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes (alone, or behind a valid header) never panic the feature readers.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = read_feature_tsv_from(&body[..], Path::new("f.tsv"));
            let mut tsv = b"id\ta\tb\n".to_vec();
            tsv.extend(&body);
            if let Ok(t) = read_feature_tsv_from(&tsv[..], Path::new("f.tsv")) {
                prop_assert_eq!(t.values.len(), t.len() * 2);
                prop_assert!(t.values.iter().all(|v| v.is_finite()));
            }
            let _ = read_npy_from(&body[..], Path::new("f.npy"));
            let mut n = npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }", &[]);
            n.extend(&body);
            if let Ok((r, c, v)) = read_npy_from(&n[..], Path::new("f.npy")) {
                prop_assert_eq!((r, c, v.len()), (3, 5, 15));
            }
            let mut huge = npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4000000000, 4000000000), }", &[]);
            huge.extend(&body);
            prop_assert!(read_npy_from(&huge[..], Path::new("f.npy")).is_err());
        }

        /// Tables written and read back are identical, bit for bit.
        #[test]
        fn write_read_round_trip(rows in 1usize..20, dim in 1usize..6, seed in any::<u64>()) {
            let mut x = seed | 1;
            let values: Vec<f32> = (0..rows * dim)
                .map(|_| {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    f32::from_bits((x as u32) & 0xBF7F_FFFF) // clear the top exponent bit: finite
                })
                .collect();
            let t = FeatureTable::new(
                "mem",
                (0..rows).map(|i| format!("id{i}")).collect(),
                (0..dim).map(|i| format!("c{i}")).collect(),
                values,
            ).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("t.tsv");
            write_feature_tsv(&p, &t).unwrap();
            let back = read_feature_tsv(&p).unwrap();
            prop_assert_eq!(back.ids, t.ids);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&back.values), bits(&t.values));
        }
    }
}
