//! Reader tests on small files written into temporary folders. Expected values are written out
//! by hand from the file contents.

use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::error::DataError;

type Row = (String, String, f32, Option<i64>);

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn bz2(bytes: &[u8]) -> Vec<u8> {
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn read_all(
    format: &InteractionFormat,
    input: &Path,
    limit: Option<u64>,
) -> Result<(Vec<Row>, ReadSummary)> {
    let mut rows = Vec::new();
    let summary = read_interactions(format, input, limit, &mut |r| {
        rows.push((r.user.to_owned(), r.item.to_owned(), r.value, r.timestamp));
        Ok(())
    })?;
    Ok((rows, summary))
}

fn row(u: &str, i: &str, v: f32, t: Option<i64>) -> Row {
    (u.to_owned(), i.to_owned(), v, t)
}

/// The error's message, checked to name the file and (when given) the line.
fn message(err: DataError, file: &str, line: Option<u64>) -> String {
    let msg = err.to_string();
    assert!(msg.contains(file), "{msg:?} does not name {file}");
    if let Some(line) = line {
        assert!(
            msg.contains(&format!(":{line}:")) || msg.contains(&format!("line {line}")),
            "{msg:?} does not name line {line}"
        );
    }
    msg
}

const ONION_COUNT: &[u8] = b"user_id\ttrack_id\tcount\r\n1\t0009fFIM1eYThaPg\t3\r\n\r\n1\t000xQL6tZNLJzIrr\t12\r\n27\t0009fFIM1eYThaPg\t1";
const ONION_TS: &[u8] = b"user_id\ttrack_id\ttimestamp\n1\t0009fFIM1eYThaPg\t2019-02-20 12:34:56\n2\t000xQL6tZNLJzIrr\t1970-01-02 00:00:01\n";

#[test]
fn onion_count_file_values_crlf_blank_lines_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "plays.tsv", ONION_COUNT);
    let (rows, summary) = read_all(&InteractionFormat::Onion, &p, None).unwrap();
    assert_eq!(
        rows,
        vec![
            row("1", "0009fFIM1eYThaPg", 3.0, None),
            row("1", "000xQL6tZNLJzIrr", 12.0, None),
            row("27", "0009fFIM1eYThaPg", 1.0, None),
        ]
    );
    assert_eq!(summary.rows, 3);
    assert!(!summary.timestamps);
    assert_eq!(summary.files, vec![p.clone()]);
    let (rows, summary) = read_all(&InteractionFormat::Onion, &p, Some(2)).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(summary.rows, 2);
    let (rows, _) = read_all(&InteractionFormat::Onion, &p, Some(0)).unwrap();
    assert!(rows.is_empty());
}

#[test]
fn onion_folder_prefers_the_timestamp_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "userid_trackid_count.tsv", ONION_COUNT);
    let ts = write(dir.path(), "userid_trackid_timestamp.tsv", ONION_TS);
    let (rows, summary) = read_all(&InteractionFormat::Onion, dir.path(), None).unwrap();
    assert_eq!(summary.files, vec![ts]);
    assert!(summary.timestamps);
    assert_eq!(
        rows,
        vec![
            row("1", "0009fFIM1eYThaPg", 1.0, Some(1_550_666_096)),
            row("2", "000xQL6tZNLJzIrr", 1.0, Some(86_401)),
        ]
    );
    let empty = tempfile::tempdir().unwrap();
    let msg = message(
        read_all(&InteractionFormat::Onion, empty.path(), None).unwrap_err(),
        &empty.path().display().to_string(),
        None,
    );
    assert!(msg.contains("userid_trackid_count.tsv"), "{msg}");
}

#[test]
fn onion_bz2_single_and_multi_stream() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "userid_trackid_count.tsv.bz2",
        &bz2(ONION_COUNT),
    );
    let (rows, _) = read_all(&InteractionFormat::Onion, dir.path(), None).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1], row("1", "000xQL6tZNLJzIrr", 12.0, None));
    // Two concatenated streams (pbzip2 style), detected by magic bytes without the extension.
    let (a, b) = ONION_TS.split_at(40);
    let mut multi = bz2(a);
    multi.extend(bz2(b));
    let p = write(dir.path(), "multi.tsv", &multi);
    let (rows, _) = read_all(&InteractionFormat::Onion, &p, None).unwrap();
    assert_eq!(rows[1], row("2", "000xQL6tZNLJzIrr", 1.0, Some(86_401)));
}

#[test]
fn truncated_bz2_is_a_clean_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = b"user_id\ttrack_id\tcount\n".to_vec();
    for i in 0..20_000u32 {
        text.extend(
            format!(
                "{}\ttrack{:011}\t{}\n",
                i % 97,
                i.wrapping_mul(2_654_435_761),
                i % 13
            )
            .bytes(),
        );
    }
    let full = bz2(&text);
    let p = write(dir.path(), "cut.tsv.bz2", &full[..full.len() / 2]);
    let mut seen = 0u64;
    let err = read_interactions(&InteractionFormat::Onion, &p, None, &mut |_| {
        seen += 1;
        Ok(())
    })
    .unwrap_err();
    let msg = message(err, "cut.tsv.bz2", None);
    assert!(msg.contains("truncated"), "{msg}");
    assert!(msg.contains("after line"), "{msg}");
    assert!(seen < 20_000);
}

#[test]
fn onion_bad_timestamp_names_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "ts.tsv",
        b"user_id\ttrack_id\ttimestamp\n1\tA\t2019-02-20 12:34:56\n1\tB\t2019-02-30 12:34:56\n",
    );
    let err = read_all(&InteractionFormat::Onion, &p, None).unwrap_err();
    assert!(matches!(
        &err,
        DataError::Parse { line: 3, column: 3, field, .. } if field == "timestamp"
    ));
    let msg = message(err, "ts.tsv", Some(3));
    assert!(msg.contains("day out of range 1-28"), "{msg}");
}

#[test]
fn onion_unknown_header_and_wrong_value_type() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "x.tsv", b"user\ttrack\tplays\n1\t2\t3\n");
    let msg = message(
        read_all(&InteractionFormat::Onion, &p, None).unwrap_err(),
        "x.tsv",
        None,
    );
    assert!(msg.contains("user_id, track_id, count"), "{msg}");
    let p = write(
        dir.path(),
        "y.tsv",
        b"user_id\ttrack_id\tcount\n1\tA\t3\n1\tB\tmany\n",
    );
    let err = read_all(&InteractionFormat::Onion, &p, None).unwrap_err();
    assert!(matches!(
        &err,
        DataError::Parse {
            line: 3,
            column: 3,
            ..
        }
    ));
    let msg = message(err, "y.tsv", Some(3));
    assert!(msg.contains("count") && msg.contains("\"many\""), "{msg}");
}

#[test]
fn wrong_field_count_empty_file_and_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "short.tsv", b"user_id\ttrack_id\tcount\n1\tA\n");
    let err = read_all(&InteractionFormat::Onion, &p, None).unwrap_err();
    assert!(matches!(&err, DataError::Parse { line: 2, column: 3, field, .. } if field == "count"));
    message(err, "short.tsv", Some(2));
    let p = write(
        dir.path(),
        "long.tsv",
        b"user_id\ttrack_id\tcount\n1\tA\t2\t9\n",
    );
    let msg = message(
        read_all(&InteractionFormat::Onion, &p, None).unwrap_err(),
        "long.tsv",
        Some(2),
    );
    assert!(msg.contains("expected 3 fields, found 4"), "{msg}");
    for (name, bytes) in [("empty.tsv", &b""[..]), ("blank.tsv", b"\n\r\n\n")] {
        let p = write(dir.path(), name, bytes);
        let msg = message(
            read_all(&InteractionFormat::Onion, &p, None).unwrap_err(),
            name,
            None,
        );
        assert!(msg.contains("empty file"), "{msg}");
    }
    let p = write(
        dir.path(),
        "bad8.tsv",
        b"user_id\ttrack_id\tcount\n1\t\xff\xfe\t2\n",
    );
    let err = read_all(&InteractionFormat::Onion, &p, None).unwrap_err();
    assert!(matches!(
        &err,
        DataError::Parse {
            line: 2,
            column: 2,
            ..
        }
    ));
    let msg = message(err, "bad8.tsv", Some(2));
    assert!(msg.contains("UTF-8"), "{msg}");
}

#[test]
fn sink_errors_stop_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "c.tsv", ONION_COUNT);
    let mut n = 0;
    let err = read_interactions(&InteractionFormat::Onion, &p, None, &mut |_| {
        n += 1;
        Err(DataError::Other("stop".into()))
    })
    .unwrap_err();
    assert_eq!(n, 1);
    assert_eq!(err.to_string(), "stop");
}

const RECBOLE_INTER: &[u8] = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\ttags:token_seq\n196\t242\t3\t881250949\ta b\n186\t302\t4.5\t891717742.9\t\n";
const RECBOLE_ITEM: &[u8] = b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t\tCrime Film-Noir\n";

#[test]
fn recbole_folder_values_timestamps_and_names() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ml.inter", RECBOLE_INTER);
    write(dir.path(), "ml.item", RECBOLE_ITEM);
    write(dir.path(), "ml.user", b"user_id:token\n196\n");
    let (rows, summary) = read_all(&InteractionFormat::RecBole, dir.path(), None).unwrap();
    assert_eq!(
        rows,
        vec![
            row("196", "242", 3.0, Some(881_250_949)),
            row("186", "302", 4.5, Some(891_717_742)),
        ]
    );
    assert_eq!(summary.files, vec![dir.path().join("ml.inter")]);
    let names = read_item_names(&InteractionFormat::RecBole, dir.path())
        .unwrap()
        .unwrap();
    assert_eq!(names["242"], "Kolya (1996)");
    assert_eq!(names["302"], "L.A. Confidential");
    let names = read_item_names(&InteractionFormat::RecBole, &dir.path().join("ml.inter")).unwrap();
    assert_eq!(names.map(|n| n.len()), Some(2));
}

#[test]
fn recbole_without_rating_or_item_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "d.inter",
        b"item_id:token\tuser_id:token\nI1\tU1\n",
    );
    let (rows, summary) = read_all(&InteractionFormat::RecBole, &p, None).unwrap();
    assert_eq!(rows, vec![row("U1", "I1", 1.0, None)]);
    assert!(!summary.timestamps);
    assert_eq!(
        read_item_names(&InteractionFormat::RecBole, &p).unwrap(),
        None
    );
}

#[test]
fn recbole_header_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "t1.inter",
            b"user_id:float\titem_id:token\n1\t2\n",
            "type float, expected token",
        ),
        (
            "t2.inter",
            b"user_id:token\titem_id:token\trating:token\n1\t2\t3\n",
            "type token, expected float",
        ),
        (
            "t3.inter",
            b"user_id:token\titem_id:tok\n1\t2\n",
            "unknown RecBole type",
        ),
        (
            "t4.inter",
            b"user_id:token\titem:token\n1\t2\n",
            "its fields are: user_id:token, item:token",
        ),
        (
            "t5.inter",
            b"user_id:token\titem_id:token\tuser_id:token\n1\t2\t3\n",
            "duplicate",
        ),
    ];
    for (name, bytes, expect) in cases {
        let p = write(dir.path(), name, bytes);
        let msg = message(
            read_all(&InteractionFormat::RecBole, &p, None).unwrap_err(),
            name,
            None,
        );
        assert!(msg.contains(expect), "{name}: {msg}");
    }
    let p = write(
        dir.path(),
        "t6.inter",
        b"user_id:token\titem_id:token\trating:float\n1\t2\tfive\n",
    );
    let err = read_all(&InteractionFormat::RecBole, &p, None).unwrap_err();
    assert!(
        matches!(&err, DataError::Parse { line: 2, column: 3, field, .. } if field == "rating")
    );
    message(err, "t6.inter", Some(2));
    let two = tempfile::tempdir().unwrap();
    write(two.path(), "a.inter", RECBOLE_INTER);
    write(two.path(), "b.inter", RECBOLE_INTER);
    let msg = read_all(&InteractionFormat::RecBole, two.path(), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("a.inter, b.inter"), "{msg}");
}

#[test]
fn movielens_u_data_and_ratings_dat_with_names() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "u.data",
        b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n",
    );
    write(
        dir.path(),
        "u.item",
        b"242|Kolya (1996)|24-Jan-1997||http://x|0|0\n302|L.A. Confidential (1997)|01-Jan-1997||x|0|0\n1|Cit\xe9 des enfants perdus, La (1995)|x\n",
    );
    let (rows, summary) = read_all(&InteractionFormat::MovieLens, dir.path(), None).unwrap();
    assert_eq!(rows[1], row("186", "302", 3.0, Some(891_717_742)));
    assert!(summary.timestamps);
    let names = read_item_names(&InteractionFormat::MovieLens, dir.path())
        .unwrap()
        .unwrap();
    assert_eq!(names["242"], "Kolya (1996)");
    assert_eq!(names["1"], "Cité des enfants perdus, La (1995)");

    let one_m = tempfile::tempdir().unwrap();
    let p = write(
        one_m.path(),
        "ratings.dat",
        b"1::1193::5::978300760\n1::661::3::978302109\n",
    );
    write(
        one_m.path(),
        "movies.dat",
        b"1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n",
    );
    let (rows, _) = read_all(&InteractionFormat::MovieLens, &p, Some(1)).unwrap();
    assert_eq!(rows, vec![row("1", "1193", 5.0, Some(978_300_760))]);
    let names = read_item_names(&InteractionFormat::MovieLens, &p)
        .unwrap()
        .unwrap();
    assert_eq!(names["1193"], "One Flew Over the Cuckoo's Nest (1975)");

    let p = write(
        one_m.path(),
        "bad.dat",
        b"1::1193::5::978300760\n1::661::3::soon\n",
    );
    let err = read_all(&InteractionFormat::MovieLens, &p, None).unwrap_err();
    assert!(matches!(
        &err,
        DataError::Parse {
            line: 2,
            column: 4,
            ..
        }
    ));
    message(err, "bad.dat", Some(2));
    let p = write(one_m.path(), "empty.dat", b"");
    message(
        read_all(&InteractionFormat::MovieLens, &p, None).unwrap_err(),
        "empty.dat",
        None,
    );
}

#[test]
fn a_negative_play_count_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "user_artists.dat",
        b"userID\tartistID\tweight\n2\t51\t13883\n2\t51\t-5\n",
    );
    let err = read_all(&InteractionFormat::HetrecLastfm, dir.path(), None).unwrap_err();
    assert!(
        matches!(&err, DataError::Parse { line: 3, column: 3, field, .. } if field == "weight"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("user_artists.dat:3") && msg.contains("-5"),
        "{msg}"
    );
}

#[test]
fn hetrec_weights_names_and_latin1_tags() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "user_artists.dat",
        b"userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t5\n",
    );
    write(
        dir.path(),
        "artists.dat",
        "id\tname\turl\tpictureURL\n51\tDuran Duran\tu\tp\n52\tMötley Crüe\tu\tp\n".as_bytes(),
    );
    write(
        dir.path(),
        "tags.dat",
        b"tagID\ttagValue\n1\tmetal\n2\tnew wave\n3\tm\xf6tley\n4\t80s\n",
    );
    write(
        dir.path(),
        "user_taggedartists.dat",
        b"userID\tartistID\ttagID\tday\tmonth\tyear\n2\t51\t2\t1\t4\t2009\n3\t51\t2\t1\t4\t2009\n3\t51\t4\t1\t4\t2009\n2\t51\t1\t1\t4\t2009\n2\t52\t3\t1\t4\t2009\n2\t52\t3\t1\t4\t2009\n",
    );
    let (rows, _) = read_all(&InteractionFormat::HetrecLastfm, dir.path(), None).unwrap();
    assert_eq!(rows[0], row("2", "51", 13883.0, None));
    assert_eq!(rows.len(), 3);
    let names = read_item_names(&InteractionFormat::HetrecLastfm, dir.path())
        .unwrap()
        .unwrap();
    assert_eq!(names["52"], "Mötley Crüe");
    let tags = read_hetrec_artist_tags(dir.path()).unwrap();
    // Artist 51: "new wave" by users 2 and 3; "80s" and "metal" by one user each, alphabetical.
    assert_eq!(tags["51"], vec!["new wave", "80s", "metal"]);
    assert_eq!(tags["52"], vec!["mötley"]);
    assert_eq!(tags.len(), 2);

    write(
        dir.path(),
        "user_taggedartists.dat",
        b"userID\tartistID\ttagID\tday\tmonth\tyear\n2\t51\t2\t1\t4\t2009\n2\t51\t99\t1\t4\t2009\n",
    );
    let err = read_hetrec_artist_tags(dir.path()).unwrap_err();
    assert!(matches!(
        &err,
        DataError::Parse {
            line: 3,
            column: 3,
            ..
        }
    ));
    let msg = message(err, "user_taggedartists.dat", Some(3));
    assert!(msg.contains("\"99\""), "{msg}");
}

fn csv_cols(delimiter: u8) -> InteractionFormat {
    InteractionFormat::Csv(CsvColumns {
        delimiter,
        user: "listener".into(),
        item: "song".into(),
        value: Some("plays".into()),
        timestamp: Some("when".into()),
    })
}

#[test]
fn csv_quoted_fields_any_column_order_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "log.csv",
        b"\xEF\xBB\xBFwhen,song,\"listener\",plays,note\r\n2019-02-20 12:34:56,\"Hey, Jude\",u1,2,\"said \"\"hi\"\"\"\r\n86400,s2,u2,1.5,\"two\nlines\"\r\n86401,s3,u3,1,\n",
    );
    let (rows, summary) = read_all(&csv_cols(b','), &p, None).unwrap();
    assert_eq!(
        rows,
        vec![
            row("u1", "Hey, Jude", 2.0, Some(1_550_666_096)),
            row("u2", "s2", 1.5, Some(86_400)),
            row("u3", "s3", 1.0, Some(86_401)),
        ]
    );
    assert_eq!(summary.rows, 3);
    // The row after the quoted line break keeps counting physical lines.
    let p = write(
        dir.path(),
        "bad.csv",
        b"when,song,listener,plays\n1,\"a\nb\",u,1\n2,s,u,x\n",
    );
    let err = read_all(&csv_cols(b','), &p, None).unwrap_err();
    assert!(matches!(
        &err,
        DataError::Parse {
            line: 4,
            column: 4,
            ..
        }
    ));
    message(err, "bad.csv", Some(4));
}

#[test]
fn csv_missing_column_duplicate_header_and_open_quote() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "m.tsv", b"listener\tsong\twhen\n1\t2\t3\n");
    let msg = message(
        read_all(&csv_cols(b'\t'), &p, None).unwrap_err(),
        "m.tsv",
        None,
    );
    assert!(
        msg.contains("no column \"plays\"") && msg.contains("listener, song, when"),
        "{msg}"
    );
    let p = write(dir.path(), "d.csv", b"listener,song,plays,when,song\n");
    let err = read_all(&csv_cols(b','), &p, None).unwrap_err();
    assert!(matches!(
        &err,
        DataError::Parse {
            line: 1,
            column: 5,
            ..
        }
    ));
    let msg = message(err, "d.csv", Some(1));
    assert!(msg.contains("duplicate column name \"song\""), "{msg}");
    let p = write(
        dir.path(),
        "q.csv",
        b"listener,song,plays,when\nu,\"never closed,1,2\n",
    );
    let msg = message(
        read_all(&csv_cols(b','), &p, None).unwrap_err(),
        "q.csv",
        Some(2),
    );
    assert!(msg.contains("never closed"), "{msg}");
    let err = read_all(&csv_cols(b'"'), &p, None).unwrap_err();
    assert!(matches!(err, DataError::Parameter { .. }));
    let msg = read_all(&csv_cols(b','), dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("directory"), "{msg}");
}

#[test]
fn missing_input_is_an_io_error_naming_it() {
    let err = read_all(
        &InteractionFormat::Onion,
        Path::new("/no/such/plays.tsv"),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().contains("/no/such/plays.tsv"));
}

fn formats() -> Vec<InteractionFormat> {
    vec![
        InteractionFormat::Onion,
        InteractionFormat::RecBole,
        InteractionFormat::MovieLens,
        InteractionFormat::HetrecLastfm,
        csv_cols(b','),
        InteractionFormat::Csv(CsvColumns {
            delimiter: b'\t',
            user: "a".into(),
            item: "b".into(),
            value: None,
            timestamp: Some("c".into()),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and arbitrary bytes behind a valid header, never panic any reader.
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400), pick in 0usize..6) {
        let headers: [&[u8]; 6] = [
            b"user_id\ttrack_id\ttimestamp\n",
            b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n",
            b"",
            b"userID\tartistID\tweight\n",
            b"listener,song,plays,when\n",
            b"a\tb\tc\n",
        ];
        let mut bytes = headers[pick].to_vec();
        bytes.extend(&body);
        for format in formats() {
            for input in [&body[..], &bytes[..]] {
                let mut n = 0u64;
                let res = read_interactions_from(&format, input, Path::new("fuzz.txt"), None, &mut |r| {
                    assert!(!r.user.is_empty() && !r.item.is_empty());
                    assert!(r.value.is_finite());
                    n += 1;
                    Ok(())
                });
                if let Ok(s) = res {
                    prop_assert_eq!(s.rows, n);
                }
            }
        }
    }

    /// Valid Onion timestamp rows read back exactly (date arithmetic against a slow reference).
    #[test]
    fn generated_timestamps_round_trip(secs in 0i64..4_102_444_800) {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Slow civil-from-days reference: walk years and months.
        let mut y = 1970i64;
        let mut d = days;
        loop {
            let len = if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 { 366 } else { 365 };
            if d < len { break; }
            d -= len;
            y += 1;
        }
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let lens = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let mut m = 0;
        while d >= lens[m] { d -= lens[m]; m += 1; }
        let text = format!(
            "user_id\ttrack_id\ttimestamp\nu\tt\t{y:04}-{:02}-{:02} {:02}:{:02}:{:02}\n",
            m + 1, d + 1, rem / 3600, rem / 60 % 60, rem % 60
        );
        let mut got = None;
        read_interactions_from(&InteractionFormat::Onion, text.as_bytes(), Path::new("t"), None, &mut |r| {
            got = r.timestamp;
            Ok(())
        }).unwrap();
        prop_assert_eq!(got, Some(secs));
    }
}
