//! Ranked lists made by another system (a Python baseline, a production ranker), read from a
//! TSV file and evaluated with the same metrics as a [`crate::Scorer`].
//!
//! File format: a header line `user_id<TAB>item_id<TAB>rank`, then one line per list entry.
//! The header may add a fourth column `score` (what `encore recommend --all-users` writes):
//! every line then has a score, a number, which is checked and otherwise ignored (the ranks
//! decide). `rank` is an integer >= 1, 1 being the best; a user's entries are ordered by rank and their
//! positions in that order are the ranks used by the metrics (gaps such as 1, 2, 5 are allowed
//! and close up). Lines may end in `\r\n`; entirely empty lines are skipped; a UTF-8 byte-order
//! mark before the header is accepted.
//!
//! Ids are the external ids of the dataset ([`IdMap`]). Lines of users the dataset does not
//! know are skipped and counted; items the dataset does not know are kept as misses (they take
//! a rank position, as they did in the other system's list, but can never be a target) and
//! counted. A user giving the same rank twice, or the same item twice, is an error naming both
//! lines.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use encore_data::IdMap;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// Per-user ranked item lists, best first, in CSR layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankedLists {
    n_items: usize,
    /// `indptr[u]..indptr[u + 1]` is user `u`'s list in `items`.
    indptr: Vec<u64>,
    items: Vec<u32>,
}

impl RankedLists {
    /// Marks a list entry whose item is not in the catalogue: it occupies its rank but never
    /// hits.
    pub const UNKNOWN: u32 = u32::MAX;

    /// Build from one list per user (best first) over a catalogue of `n_items`. Entries are
    /// item indices `< n_items` or [`Self::UNKNOWN`]; a known item may appear once per list.
    pub fn from_rows<R: AsRef<[u32]>>(n_items: usize, rows: &[R]) -> Result<Self, EvalError> {
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        indptr.push(0u64);
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        for (u, row) in rows.iter().enumerate() {
            seen.clear();
            for &i in row.as_ref() {
                if i != Self::UNKNOWN {
                    if i as usize >= n_items {
                        return Err(EvalError::Shape(format!(
                            "list of user {u} has item {i}, outside the catalogue of {n_items}"
                        )));
                    }
                    if !seen.insert(i) {
                        return Err(EvalError::Shape(format!(
                            "list of user {u} has item {i} twice"
                        )));
                    }
                }
                items.push(i);
            }
            indptr.push(items.len() as u64);
        }
        Ok(Self {
            n_items,
            indptr,
            items,
        })
    }

    /// Number of users with a list slot (lists may be empty).
    pub fn n_users(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Catalogue size the item indices refer to.
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// User `u`'s list, best first; empty for users without one (also for `u >= n_users`).
    pub fn list(&self, u: usize) -> &[u32] {
        if u + 1 >= self.indptr.len() {
            return &[];
        }
        &self.items[self.indptr[u] as usize..self.indptr[u + 1] as usize]
    }
}

/// What [`read_ranked_lists`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankedListStats {
    /// Data lines read (header and empty lines not counted).
    pub lines: u64,
    /// Entries kept (lines of known users).
    pub entries: u64,
    /// Known users with at least one entry.
    pub users_with_list: usize,
    /// Lines skipped because their user id is not in the dataset.
    pub unknown_user_lines: u64,
    /// Distinct unknown user ids.
    pub unknown_users: usize,
    /// Kept entries whose item id is not in the dataset (ranked, never a hit).
    pub unknown_item_lines: u64,
    /// Distinct unknown item ids among kept entries.
    pub unknown_items: usize,
}

const COLUMNS: [&str; 4] = ["user_id", "item_id", "rank", "score"];
/// The columns every file has; `score` is optional.
const REQUIRED: usize = 3;

/// One entry while reading: item code `>= n_items` is an unknown item (`n_items + k`, the k-th
/// distinct unknown id).
#[derive(Clone, Copy)]
struct Entry {
    user: u32,
    rank: u64,
    code: u64,
    line: u64,
}

/// Read a ranked-list TSV (format in the module docs) against the dataset's id maps.
pub fn read_ranked_lists(
    path: &Path,
    users: &IdMap,
    items: &IdMap,
) -> Result<(RankedLists, RankedListStats), EvalError> {
    let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let parse_err = |line: u64, column: usize, message: String| EvalError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        field: COLUMNS
            .get(column - 1)
            .map_or_else(|| "(extra)".to_owned(), |s| (*s).to_owned()),
        message,
    };

    let mut stats = RankedListStats::default();
    let mut entries = Vec::new();
    let mut unknown_items: HashMap<String, u64> = HashMap::new();
    let mut unknown_item_ids: Vec<String> = Vec::new();
    let mut unknown_users: HashSet<String> = HashSet::new();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut header_seen = false;
    // The header's column count: 3, or 4 with `score`.
    let mut width = REQUIRED;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| EvalError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let mut bytes = buf.as_slice();
        if let Some(b) = bytes.strip_suffix(b"\n") {
            bytes = b;
        }
        if let Some(b) = bytes.strip_suffix(b"\r") {
            bytes = b;
        }
        if !header_seen {
            if let Some(b) = bytes.strip_prefix("\u{feff}".as_bytes()) {
                bytes = b;
            }
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let column = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&c| c == b'\t')
                .count()
                + 1;
            parse_err(line_no, column, "not valid UTF-8".into())
        })?;
        if !header_seen {
            header_seen = true;
            width = check_header(text, line_no, &parse_err)?;
            continue;
        }
        if text.is_empty() {
            continue;
        }
        stats.lines += 1;
        let mut fields = text.split('\t');
        let expected = || {
            format!(
                "expected {width} tab-separated fields: {}",
                COLUMNS[..width].join(", ")
            )
        };
        let mut field = |column: usize| -> Result<&str, EvalError> {
            match fields.next() {
                Some(f) => Ok(f),
                None => Err(parse_err(
                    line_no,
                    column,
                    format!("missing field ({})", expected()),
                )),
            }
        };
        let (user_id, item_id, rank_text) = (field(1)?, field(2)?, field(3)?);
        if width > REQUIRED {
            let score = field(4)?;
            if score.trim().parse::<f64>().is_err() {
                return Err(parse_err(
                    line_no,
                    4,
                    format!("'{score}' is not a number (expected the item's score)"),
                ));
            }
        }
        if fields.next().is_some() {
            return Err(parse_err(
                line_no,
                width + 1,
                format!("unexpected extra field ({})", expected()),
            ));
        }
        for (column, value) in [(1, user_id), (2, item_id)] {
            if value.is_empty() {
                return Err(parse_err(line_no, column, "empty id".into()));
            }
        }
        let rank = match rank_text.trim().parse::<u64>() {
            Ok(0) => {
                return Err(parse_err(
                    line_no,
                    3,
                    "rank 0 (expected an integer >= 1, 1 = best)".into(),
                ))
            }
            Ok(r) => r,
            Err(_) => {
                return Err(parse_err(
                    line_no,
                    3,
                    format!("'{rank_text}' is not an integer rank (expected an integer >= 1)"),
                ))
            }
        };
        let Some(user) = users.get(user_id) else {
            stats.unknown_user_lines += 1;
            if !unknown_users.contains(user_id) {
                unknown_users.insert(user_id.to_owned());
            }
            continue;
        };
        let code = match items.get(item_id) {
            Some(i) => i as u64,
            None => {
                stats.unknown_item_lines += 1;
                let next = unknown_item_ids.len() as u64;
                let k = *unknown_items.entry(item_id.to_owned()).or_insert_with(|| {
                    unknown_item_ids.push(item_id.to_owned());
                    next
                });
                items.len() as u64 + k
            }
        };
        entries.push(Entry {
            user,
            rank,
            code,
            line: line_no,
        });
    }
    if !header_seen {
        return Err(EvalError::Format {
            path: path.to_path_buf(),
            message: format!(
                "empty file (expected the header line {})",
                COLUMNS.join("<TAB>")
            ),
        });
    }
    stats.entries = entries.len() as u64;
    stats.unknown_users = unknown_users.len();
    stats.unknown_items = unknown_item_ids.len();

    let item_name = |code: u64| -> &str {
        if (code as usize) < items.len() {
            items.id(code as u32)
        } else {
            &unknown_item_ids[(code - items.len() as u64) as usize]
        }
    };
    entries.sort_unstable_by_key(|e| (e.user, e.rank, e.line));
    // The first repeat in file order, over both kinds of duplicates.
    let mut first_dup: Option<(u64, u64, String)> = None;
    let mut note = |line: u64, first_line: u64, message: String| {
        if first_dup.as_ref().is_none_or(|(l, _, _)| line < *l) {
            first_dup = Some((line, first_line, message));
        }
    };
    let mut by_item = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let user = entries[start].user;
        let mut end = start;
        while end < entries.len() && entries[end].user == user {
            end += 1;
        }
        let group = &entries[start..end];
        for w in group.windows(2) {
            if w[0].rank == w[1].rank {
                note(
                    w[1].line,
                    w[0].line,
                    format!("user '{}' has rank {} twice", users.id(user), w[1].rank),
                );
            }
        }
        by_item.clear();
        by_item.extend(group.iter().map(|e| (e.code, e.line)));
        by_item.sort_unstable();
        for w in by_item.windows(2) {
            if w[0].0 == w[1].0 {
                note(
                    w[1].1,
                    w[0].1,
                    format!(
                        "user '{}' lists item '{}' twice",
                        users.id(user),
                        item_name(w[1].0)
                    ),
                );
            }
        }
        stats.users_with_list += 1;
        start = end;
    }
    if let Some((line, first_line, message)) = first_dup {
        return Err(EvalError::Duplicate {
            path: path.to_path_buf(),
            line,
            first_line,
            message,
        });
    }

    let mut indptr = vec![0u64; users.len() + 1];
    for e in &entries {
        indptr[e.user as usize + 1] += 1;
    }
    for u in 0..users.len() {
        indptr[u + 1] += indptr[u];
    }
    let n_items = items.len() as u64;
    let list_items = entries
        .iter()
        .map(|e| {
            if e.code < n_items {
                e.code as u32
            } else {
                RankedLists::UNKNOWN
            }
        })
        .collect();
    Ok((
        RankedLists {
            n_items: items.len(),
            indptr,
            items: list_items,
        },
        stats,
    ))
}

/// Check the header line, naming the first column that differs; returns its column count
/// (3, or 4 with the optional `score`).
fn check_header(
    text: &str,
    line: u64,
    parse_err: &dyn Fn(u64, usize, String) -> EvalError,
) -> Result<usize, EvalError> {
    let found: Vec<&str> = text.split('\t').collect();
    let width = if found.len() > REQUIRED {
        COLUMNS.len()
    } else {
        REQUIRED
    };
    let header = format!(
        "{} (optionally with <TAB>{})",
        COLUMNS[..REQUIRED].join("<TAB>"),
        COLUMNS[REQUIRED]
    );
    for (c, expected) in COLUMNS[..width].iter().enumerate() {
        match found.get(c) {
            Some(f) if f == expected => {}
            Some(f) => {
                return Err(parse_err(
                    line,
                    c + 1,
                    format!(
                        "header column is '{f}', expected '{expected}' (header must be {header})"
                    ),
                ))
            }
            None => {
                return Err(parse_err(
                    line,
                    c + 1,
                    format!("header column '{expected}' missing (header must be {header})"),
                ))
            }
        }
    }
    if found.len() > width {
        return Err(parse_err(
            line,
            width + 1,
            format!(
                "unexpected extra header column '{}' (header must be {header})",
                found[width],
            ),
        ));
    }
    Ok(width)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn maps() -> (IdMap, IdMap) {
        let users = IdMap::from_ids(vec!["u0".into(), "u1".into(), "u2".into()]).unwrap();
        let items = IdMap::from_ids(vec!["a".into(), "b".into(), "c".into(), "d".into()]).unwrap();
        (users, items)
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let path = dir.path().join("lists.tsv");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    fn read(text: &str) -> Result<(RankedLists, RankedListStats), EvalError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, text);
        let (users, items) = maps();
        read_ranked_lists(&path, &users, &items)
    }

    #[test]
    fn reads_sorts_and_counts() {
        let text = "\u{feff}user_id\titem_id\trank\r\n\
                    u1\tc\t5\r\n\
                    u1\ta\t2\r\n\
                    \r\n\
                    ghost\ta\t1\n\
                    u0\tzzz\t1\n\
                    u0\td\t2\n\
                    u1\tzzz\t9\n\
                    ghost\tb\t2\n\
                    other\tb\t 1 \n";
        let (lists, stats) = read(text).unwrap();
        assert_eq!(lists.n_users(), 3);
        assert_eq!(lists.n_items(), 4);
        assert_eq!(lists.list(0), &[RankedLists::UNKNOWN, 3]);
        // Ranks 2, 5, 9 close up to positions 1, 2, 3.
        assert_eq!(lists.list(1), &[0, 2, RankedLists::UNKNOWN]);
        assert!(lists.list(2).is_empty());
        assert!(lists.list(99).is_empty());
        assert_eq!(
            stats,
            RankedListStats {
                lines: 8,
                entries: 5,
                users_with_list: 2,
                unknown_user_lines: 3,
                unknown_users: 2,
                unknown_item_lines: 2,
                unknown_items: 1,
            }
        );
    }

    fn parse_position(e: EvalError) -> (u64, usize, String) {
        match e {
            EvalError::Parse {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("expected a parse error, got {other}"),
        }
    }

    /// The optional `score` column (the format `encore recommend --all-users` writes) gives
    /// the lists of the same file without it: the ranks decide, not the scores.
    #[test]
    fn a_score_column_is_read_and_ignored() {
        let plain = "user_id\titem_id\trank\nu0\tb\t2\nu0\td\t1\nu2\ta\t1\n";
        let scored = "user_id\titem_id\trank\tscore\nu0\tb\t2\t0.5\nu0\td\t1\t-1e3\nu2\ta\t1\t3\n";
        let (a, sa) = read(plain).unwrap();
        let (b, sb) = read(scored).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.list(0), &[3, 1]);
        assert_eq!((sa.entries, sb.entries), (3, 3));
    }

    #[test]
    fn bad_headers_name_the_column() {
        let (l, c, m) = parse_position(read("user\titem_id\trank\n").unwrap_err());
        assert_eq!((l, c), (1, 1));
        assert!(m.contains("expected 'user_id'"), "{m}");
        let (l, c, _) = parse_position(read("user_id\titem_id\n").unwrap_err());
        assert_eq!((l, c), (1, 3));
        let (l, c, m) = parse_position(read("user_id\titem_id\trank\tscores\n").unwrap_err());
        assert_eq!((l, c), (1, 4));
        assert!(m.contains("expected 'score'"), "{m}");
        let (l, c, _) = parse_position(read("user_id\titem_id\trank\tscore\tx\n").unwrap_err());
        assert_eq!((l, c), (1, 5));
        let (l, c, _) = parse_position(read("user_id,item_id,rank\n").unwrap_err());
        assert_eq!((l, c), (1, 1));
    }

    #[test]
    fn bad_lines_name_line_and_column() {
        let head = "user_id\titem_id\trank\n";
        let cases = [
            ("u0\ta\t1\nu0\tb\tx\n", 3, 3, "not an integer"),
            ("u0\ta\t1.5\n", 2, 3, "not an integer"),
            ("u0\ta\t-1\n", 2, 3, "not an integer"),
            ("u0\ta\t0\n", 2, 3, ">= 1"),
            ("u0\ta\n", 2, 3, "missing field"),
            ("u0\n", 2, 2, "missing field"),
            ("u0\ta\t1\t7\n", 2, 4, "extra field"),
            ("\ta\t1\n", 2, 1, "empty id"),
            ("u0\t\t1\n", 2, 2, "empty id"),
        ];
        let scored = "user_id\titem_id\trank\tscore\n";
        let scored_cases = [
            ("u0\ta\t1\n", 2, 4, "missing field"),
            ("u0\ta\t1\thigh\n", 2, 4, "not a number"),
            ("u0\ta\t1\t0.5\t1\n", 2, 5, "extra field"),
        ];
        let cases = cases
            .iter()
            .map(|&(body, l, c, n)| (head, body, l, c, n))
            .chain(
                scored_cases
                    .iter()
                    .map(|&(b, l, c, n)| (scored, b, l, c, n)),
            );
        for (head, body, line, column, needle) in cases {
            let err = read(&format!("{head}{body}")).unwrap_err();
            let shown = err.to_string();
            assert!(shown.contains("lists.tsv"), "{shown}");
            let (l, c, m) = parse_position(err);
            assert_eq!((l, c), (line, column), "{body:?}: {m}");
            assert!(m.contains(needle), "{body:?}: {m}");
        }
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lists.tsv");
        std::fs::write(&path, b"user_id\titem_id\trank\nu0\t\xff\t1\n").unwrap();
        let (users, items) = maps();
        let (l, c, m) = parse_position(read_ranked_lists(&path, &users, &items).unwrap_err());
        assert_eq!((l, c), (2, 2));
        assert!(m.contains("UTF-8"));
    }

    #[test]
    fn duplicates_name_both_lines() {
        let head = "user_id\titem_id\trank\n";
        let err = read(&format!("{head}u0\ta\t1\nu1\ta\t1\nu0\tb\t1\n")).unwrap_err();
        match &err {
            EvalError::Duplicate {
                line,
                first_line,
                message,
                ..
            } => {
                assert_eq!((*line, *first_line), (4, 2));
                assert!(message.contains("rank 1 twice"), "{message}");
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("lists.tsv:4"), "{err}");
        let err = read(&format!("{head}u0\ta\t1\nu0\tb\t2\nu0\ta\t3\n")).unwrap_err();
        match err {
            EvalError::Duplicate {
                line,
                first_line,
                message,
                ..
            } => {
                assert_eq!((line, first_line), (4, 2));
                assert!(message.contains("item 'a' twice"), "{message}");
            }
            other => panic!("{other}"),
        }
        // An unknown item repeated is a duplicate too; the earliest repeat in the file wins.
        let err = read(&format!("{head}u1\tq\t1\nu1\tq\t2\nu0\tb\t1\nu0\tc\t1\n")).unwrap_err();
        match err {
            EvalError::Duplicate { line, message, .. } => {
                assert_eq!(line, 3);
                assert!(message.contains("item 'q' twice"), "{message}");
            }
            other => panic!("{other}"),
        }
        // Duplicates among unknown users are not checked: those lines are skipped.
        assert!(read(&format!("{head}x\ta\t1\nx\ta\t1\n")).is_ok());
    }

    #[test]
    fn empty_and_missing_files() {
        assert!(matches!(read("").unwrap_err(), EvalError::Format { .. }));
        let (lists, stats) = read("user_id\titem_id\trank\n").unwrap();
        assert_eq!(stats.lines, 0);
        assert!(lists.list(0).is_empty());
        let (users, items) = maps();
        let err = read_ranked_lists(Path::new("/nonexistent/lists.tsv"), &users, &items);
        assert!(matches!(err.unwrap_err(), EvalError::Io { .. }));
    }

    #[test]
    fn from_rows_checks_items() {
        assert!(RankedLists::from_rows(3, &[vec![0u32, 3]]).is_err());
        assert!(RankedLists::from_rows(3, &[vec![1u32, 1]]).is_err());
        let ok =
            RankedLists::from_rows(3, &[vec![1u32, RankedLists::UNKNOWN, RankedLists::UNKNOWN]])
                .unwrap();
        assert_eq!(ok.list(0).len(), 3);
    }
}
