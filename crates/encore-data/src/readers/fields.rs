//! Field splitting and value parsing shared by all readers, with error construction that names
//! the file, line, column and field.

use std::ops::Range;
use std::path::Path;

use crate::error::DataError;

/// How a line is cut into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Splitter {
    /// A single-byte delimiter, no quoting (TSV, `u.data`).
    Byte(u8),
    /// MovieLens `::`.
    DoubleColon,
    /// A single-byte delimiter with RFC 4180 double-quote quoting.
    Quoted(u8),
}

/// Cut `line` at every `delim` into `out` (cleared first).
#[inline]
pub(crate) fn split_byte(line: &[u8], delim: u8, out: &mut Vec<Range<usize>>) {
    out.clear();
    let mut start = 0;
    for pos in memchr::memchr_iter(delim, line) {
        out.push(start..pos);
        start = pos + 1;
    }
    out.push(start..line.len());
}

/// Cut `line` at every `::` into `out` (cleared first).
pub(crate) fn split_double_colon(line: &[u8], out: &mut Vec<Range<usize>>) {
    out.clear();
    let mut start = 0;
    let finder = memchr::memmem::find_iter(line, b"::");
    let mut last_end = 0;
    for pos in finder {
        // `:::` -> take the first `::`; memmem's iterator does not overlap matches.
        if pos < last_end {
            continue;
        }
        out.push(start..pos);
        start = pos + 2;
        last_end = start;
    }
    out.push(start..line.len());
}

/// Outcome of splitting a record that may contain quoted fields.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QuotedSplit {
    /// Fields are in the scratch buffer at the given ranges.
    Complete,
    /// The record ends inside a quoted field: append the next line and try again.
    OpenQuote,
    /// Malformed quoting: (1-based column, message).
    Bad(usize, String),
}

/// Split an RFC 4180 record into unescaped fields stored in `scratch`, with `out` holding
/// ranges into `scratch`. A field that starts with `"` is quoted: `""` inside is one quote and
/// the closing quote must be followed by the delimiter or the end of the record. A quote inside
/// an unquoted field is kept literally (as Python's `csv` module does).
pub(crate) fn split_quoted(
    record: &[u8],
    delim: u8,
    scratch: &mut Vec<u8>,
    out: &mut Vec<Range<usize>>,
) -> QuotedSplit {
    scratch.clear();
    out.clear();
    let mut i = 0;
    loop {
        let field_start = scratch.len();
        if record.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match memchr::memchr(b'"', &record[i..]) {
                    None => return QuotedSplit::OpenQuote,
                    Some(p) => {
                        scratch.extend_from_slice(&record[i..i + p]);
                        i += p + 1;
                        if record.get(i) == Some(&b'"') {
                            scratch.push(b'"');
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            out.push(field_start..scratch.len());
            match record.get(i) {
                None => return QuotedSplit::Complete,
                Some(&c) if c == delim => i += 1,
                Some(&c) => {
                    return QuotedSplit::Bad(
                        out.len(),
                        format!(
                            "unexpected {:?} after a closing quote (expected the delimiter {:?} or the end of the line)",
                            c as char, delim as char
                        ),
                    )
                }
            }
        } else {
            let end = memchr::memchr(delim, &record[i..]).map_or(record.len(), |p| i + p);
            scratch.extend_from_slice(&record[i..end]);
            out.push(field_start..scratch.len());
            if end == record.len() {
                return QuotedSplit::Complete;
            }
            i = end + 1;
        }
    }
}

/// A short, printable rendering of a field's bytes for error messages.
pub(crate) fn show(bytes: &[u8]) -> String {
    const MAX: usize = 60;
    let s = String::from_utf8_lossy(bytes);
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}...")
    } else {
        format!("{s:?}")
    }
}

/// Build a [`DataError::Parse`].
pub(crate) fn parse_error(
    path: &Path,
    line: u64,
    column: usize,
    field: &str,
    message: impl Into<String>,
) -> DataError {
    DataError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The field as UTF-8 text, or a description of the problem.
#[inline]
pub(crate) fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "invalid UTF-8 at byte {} in {} (expected UTF-8 text)",
            e.valid_up_to(),
            show(bytes)
        )
    })
}

/// An id field: non-empty UTF-8.
#[inline]
pub(crate) fn id(bytes: &[u8]) -> Result<&str, String> {
    if bytes.is_empty() {
        return Err("empty id (expected a non-empty id)".to_owned());
    }
    text(bytes)
}

/// Parse a finite number as `f32`. Plain non-negative integers of up to 7 digits (counts,
/// ratings, the common case) take a fast exact path; everything else goes through the standard
/// library's correctly rounded parser.
#[inline]
pub(crate) fn number_f32(bytes: &[u8]) -> Result<f32, String> {
    if !bytes.is_empty() && bytes.len() <= 7 && bytes.iter().all(u8::is_ascii_digit) {
        let mut v: u32 = 0;
        for &b in bytes {
            v = v * 10 + u32::from(b - b'0');
        }
        return Ok(v as f32);
    }
    let parsed = std::str::from_utf8(bytes)
        .ok()
        .map(str::trim)
        .and_then(|s| s.parse::<f32>().ok());
    match parsed {
        Some(v) if v.is_finite() => Ok(v),
        Some(_) => Err(format!("expected a finite number, found {}", show(bytes))),
        None => Err(format!("expected a number, found {}", show(bytes))),
    }
}

/// Parse an interaction's value (play count, weight, rating): a finite number >= 0. A negative
/// count (HetRec's `user_artists.dat` has one, `2<TAB>51<TAB>-5` in some copies) is an error:
/// it has no meaning as implicit feedback, and binarising it silently would turn it into a
/// listen or drop it depending on the threshold.
pub(crate) fn interaction_value(bytes: &[u8]) -> Result<f32, String> {
    let v = number_f32(bytes)?;
    if v < 0.0 {
        return Err(format!(
            "expected a count or weight >= 0, found {}",
            show(bytes)
        ));
    }
    Ok(v)
}

/// Parse a finite number as `f64`.
pub(crate) fn number_f64(bytes: &[u8]) -> Result<f64, String> {
    let parsed = std::str::from_utf8(bytes)
        .ok()
        .map(str::trim)
        .and_then(|s| s.parse::<f64>().ok());
    match parsed {
        Some(v) if v.is_finite() => Ok(v),
        Some(_) => Err(format!("expected a finite number, found {}", show(bytes))),
        None => Err(format!("expected a number, found {}", show(bytes))),
    }
}

/// The largest |timestamp| accepted: year ±200,000 or so; anything beyond is surely an error
/// (milliseconds would be ~1.7e12, which is accepted as the caller's business).
const MAX_ABS_SECONDS: f64 = 1e13;

/// Unix seconds from an integer or decimal number of seconds (RecBole `timestamp:float`,
/// MovieLens). Fractions are floored.
pub(crate) fn epoch_seconds(bytes: &[u8]) -> Result<i64, String> {
    if !bytes.is_empty() && bytes.len() <= 18 && bytes.iter().all(u8::is_ascii_digit) {
        let mut v: i64 = 0;
        for &b in bytes {
            v = v * 10 + i64::from(b - b'0');
        }
        return Ok(v);
    }
    let v = number_f64(bytes)
        .map_err(|_| format!("expected Unix seconds (a number), found {}", show(bytes)))?;
    if v.abs() > MAX_ABS_SECONDS {
        return Err(format!(
            "timestamp {} is out of range (expected Unix seconds)",
            show(bytes)
        ));
    }
    Ok(v.floor() as i64)
}

#[inline]
fn digits<const N: usize>(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in &b[..N] {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        _ => 28,
    }
}

/// Parse `YYYY-MM-DD HH:MM:SS` (or with `T` between date and time), read as UTC, to Unix
/// seconds. Fixed-format and allocation-free: Onion's 253M-row timestamp file goes through
/// here. Every component is range-checked (month 1-12, day within the month, leap years,
/// hour 0-23, minute and second 0-59).
pub(crate) fn datetime(bytes: &[u8]) -> Result<i64, String> {
    let expected = || {
        format!(
            "expected a timestamp YYYY-MM-DD HH:MM:SS, found {}",
            show(bytes)
        )
    };
    if bytes.len() != 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !(bytes[10] == b' ' || bytes[10] == b'T')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return Err(expected());
    }
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(s)) = (
        digits::<4>(bytes),
        digits::<2>(&bytes[5..]),
        digits::<2>(&bytes[8..]),
        digits::<2>(&bytes[11..]),
        digits::<2>(&bytes[14..]),
        digits::<2>(&bytes[17..]),
    ) else {
        return Err(expected());
    };
    let out_of_range = |what: &str, range: &str| {
        format!("{what} out of range {range} in timestamp {}", show(bytes))
    };
    if !(1..=12).contains(&mo) {
        return Err(out_of_range("month", "1-12"));
    }
    if d < 1 || d > days_in_month(y, mo) {
        return Err(out_of_range("day", &format!("1-{}", days_in_month(y, mo))));
    }
    if h > 23 {
        return Err(out_of_range("hour", "0-23"));
    }
    if mi > 59 {
        return Err(out_of_range("minute", "0-59"));
    }
    if s > 59 {
        return Err(out_of_range("second", "0-59"));
    }
    let days = days_from_civil(i64::from(y), mo, d);
    Ok(days * 86_400 + i64::from(h * 3600 + mi * 60 + s))
}

/// A timestamp in any of the accepted spellings: Unix seconds (integer or decimal), or
/// `YYYY-MM-DD HH:MM:SS` / `YYYY-MM-DDTHH:MM:SS`, optionally ending in `Z`.
pub(crate) fn any_timestamp(bytes: &[u8]) -> Result<i64, String> {
    if bytes.len() >= 19 && bytes.get(4) == Some(&b'-') {
        let core = bytes.strip_suffix(b"Z").unwrap_or(bytes);
        return datetime(core);
    }
    epoch_seconds(bytes).map_err(|_| {
        format!(
            "expected a timestamp (Unix seconds or YYYY-MM-DD HH:MM:SS), found {}",
            show(bytes)
        )
    })
}

/// Decode ISO-8859-1 (Latin-1) bytes: each byte is the code point of the same value.
pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// UTF-8 when the bytes are valid UTF-8, else Latin-1. Older MovieLens and HetRec files mix
/// encodings; a valid UTF-8 multi-byte sequence is vanishingly unlikely in real Latin-1 text.
pub(crate) fn utf8_or_latin1(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => latin1(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_matches_hand_computed_epochs() {
        assert_eq!(datetime(b"1970-01-01 00:00:00"), Ok(0));
        // 2019-02-20 12:34:56 UTC: 17947 days * 86400 + 45296.
        assert_eq!(datetime(b"2019-02-20 12:34:56"), Ok(1_550_666_096));
        assert_eq!(datetime(b"2000-02-29T23:59:59"), Ok(951_868_799));
        assert_eq!(datetime(b"1969-12-31 23:59:59"), Ok(-1));
    }

    #[test]
    fn datetime_rejects_out_of_range_parts() {
        for bad in [
            &b"2019-13-01 00:00:00"[..],
            b"2019-00-01 00:00:00",
            b"2019-02-29 00:00:00",
            b"2019-04-31 00:00:00",
            b"2019-01-01 24:00:00",
            b"2019-01-01 00:60:00",
            b"2019-01-01 00:00:60",
            b"2019-01-01 00:00",
            b"2019/01/01 00:00:00",
            b"20x9-01-01 00:00:00",
        ] {
            assert!(datetime(bad).is_err(), "{}", show(bad));
        }
        assert!(datetime(b"1900-02-29 00:00:00").is_err());
        assert!(datetime(b"2019-13-01 00:00:00")
            .unwrap_err()
            .contains("month"));
    }

    #[test]
    fn any_timestamp_accepts_seconds_and_datetimes() {
        assert_eq!(any_timestamp(b"881250949"), Ok(881_250_949));
        assert_eq!(any_timestamp(b"881250949.7"), Ok(881_250_949));
        assert_eq!(any_timestamp(b"1970-01-02T00:00:00Z"), Ok(86_400));
        assert!(any_timestamp(b"yesterday").is_err());
        assert!(any_timestamp(b"1e300").is_err());
    }

    #[test]
    fn numbers_parse_and_reject() {
        assert_eq!(number_f32(b"42"), Ok(42.0));
        assert_eq!(number_f32(b"3.5"), Ok(3.5));
        assert_eq!(number_f32(b"-1e2"), Ok(-100.0));
        assert_eq!(number_f32(b"12345678901"), Ok(12_345_678_901.0));
        assert!(number_f32(b"NaN").is_err());
        assert!(number_f32(b"inf").is_err());
        assert!(number_f32(b"").is_err());
        assert!(number_f32(b"4x").is_err());
        assert_eq!(interaction_value(b"0"), Ok(0.0));
        assert_eq!(interaction_value(b"2.5"), Ok(2.5));
        let err = interaction_value(b"-5").unwrap_err();
        assert!(err.contains(">= 0") && err.contains("-5"), "{err}");
        assert!(interaction_value(b"NaN").is_err());
    }

    #[test]
    fn splits_quoted_records() {
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        let r = split_quoted(b"a,\"b,\"\"c\"\"\",,\"\"", b',', &mut scratch, &mut out);
        assert_eq!(r, QuotedSplit::Complete);
        let fields: Vec<&[u8]> = out.iter().map(|r| &scratch[r.clone()]).collect();
        assert_eq!(fields, vec![&b"a"[..], b"b,\"c\"", b"", b""]);
        assert_eq!(
            split_quoted(b"a,\"open", b',', &mut scratch, &mut out),
            QuotedSplit::OpenQuote
        );
        assert!(matches!(
            split_quoted(b"\"a\"x,b", b',', &mut scratch, &mut out),
            QuotedSplit::Bad(1, _)
        ));
    }

    #[test]
    fn splits_double_colon() {
        let mut out = Vec::new();
        let line = b"1::1193::5::978300760";
        split_double_colon(line, &mut out);
        let f: Vec<&[u8]> = out.iter().map(|r| &line[r.clone()]).collect();
        assert_eq!(f, vec![&b"1"[..], b"1193", b"5", b"978300760"]);
    }

    #[test]
    fn latin1_decodes_high_bytes() {
        assert_eq!(latin1(b"caf\xe9"), "café");
        assert_eq!(utf8_or_latin1("café".as_bytes()), "café");
        assert_eq!(utf8_or_latin1(b"M\xf6tley"), "Mötley");
    }
}
