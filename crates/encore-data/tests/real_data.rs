//! Reads the real datasets beside the repository (`shared/data`, see its README) when they are
//! there, and skips with a message when they are not: the project's own tests never need them.
//! Set `ENCORE_SHARED_DATA` to point elsewhere.

use std::collections::HashSet;
use std::path::PathBuf;

use encore_data::readers::{
    read_hetrec_artist_tags, read_interactions, read_item_names, InteractionFormat,
};

fn shared_data(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("ENCORE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let dir = root.join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} not found (set ENCORE_SHARED_DATA)",
            dir.display()
        );
        None
    }
}

#[test]
fn ml_100k_recbole() {
    let Some(dir) = shared_data("ml-100k") else {
        return;
    };
    let mut users = HashSet::new();
    let mut items = HashSet::new();
    let mut first = None;
    let mut rating_sum = 0f64;
    let summary = read_interactions(&InteractionFormat::RecBole, &dir, None, &mut |r| {
        users.insert(r.user.to_owned());
        items.insert(r.item.to_owned());
        first.get_or_insert((r.user.to_owned(), r.item.to_owned(), r.value, r.timestamp));
        rating_sum += f64::from(r.value);
        assert!((1.0..=5.0).contains(&r.value));
        Ok(())
    })
    .unwrap();
    assert_eq!(summary.rows, 100_000);
    assert!(summary.timestamps);
    assert_eq!(summary.files, vec![dir.join("ml-100k.inter")]);
    assert_eq!((users.len(), items.len()), (943, 1682));
    // The first row of the file, and the well-known mean rating of ML-100k (3.52986).
    assert_eq!(
        first,
        Some(("196".into(), "242".into(), 3.0, Some(881_250_949)))
    );
    assert!((rating_sum / 1e5 - 3.52986).abs() < 1e-5);

    let names = read_item_names(&InteractionFormat::RecBole, &dir)
        .unwrap()
        .unwrap();
    assert_eq!(names.len(), 1682);
    assert_eq!(names["1"], "Toy Story (1995)");
    assert!(items.iter().all(|i| names.contains_key(i)));

    let mut n = 0;
    let limited = read_interactions(&InteractionFormat::RecBole, &dir, Some(1000), &mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!((limited.rows, n), (1000, 1000));
}

#[test]
fn hetrec_lastfm_2k() {
    let Some(dir) = shared_data("hetrec-lastfm-2k") else {
        return;
    };
    let mut users = HashSet::new();
    let mut items = HashSet::new();
    let summary = read_interactions(&InteractionFormat::HetrecLastfm, &dir, None, &mut |r| {
        users.insert(r.user.to_owned());
        items.insert(r.item.to_owned());
        assert!(r.value >= 1.0 && r.timestamp.is_none());
        Ok(())
    })
    .unwrap();
    assert_eq!(summary.rows, 92_834);
    assert_eq!(users.len(), 1892);
    assert_eq!(items.len(), 17_632);

    let names = read_item_names(&InteractionFormat::HetrecLastfm, &dir)
        .unwrap()
        .unwrap();
    assert_eq!(names.len(), 17_632);
    assert_eq!(names["1"], "MALICE MIZER");

    let tags = read_hetrec_artist_tags(&dir).unwrap();
    assert!(
        (10_000..=17_632).contains(&tags.len()),
        "{} tagged artists",
        tags.len()
    );
    // Every tag decodes to valid text with no replacement characters, and some carry
    // Latin-1 letters (tags.dat is ISO-8859-1).
    let all: HashSet<&str> = tags.values().flatten().map(String::as_str).collect();
    assert!(all.iter().all(|t| !t.contains('\u{fffd}')));
    assert!(all
        .iter()
        .any(|t| t.chars().any(|c| ('\u{a0}'..='\u{ff}').contains(&c))));
    for list in tags.values() {
        let distinct: HashSet<&String> = list.iter().collect();
        assert_eq!(distinct.len(), list.len());
    }
}

/// `ratio-recbole` is RecBole 1.2.1's own split. The digests are of RecBole's train / valid /
/// test parts for ml-100k (dumped from `data_preparation` after `init_seed(seed, True)`, eval
/// args `RS [0.8,0.1,0.1]`, `RO`, `group_by user`): blake3 of the sorted `user\titem\n` lines.
#[test]
fn ratio_recbole_split_is_recboles_split_of_ml_100k() {
    use encore_data::{Dataset, PrepareOptions, Split, SplitKind};
    let Some(dir) = shared_data("ml-100k") else {
        return;
    };
    let (ds, _) = Dataset::import(
        &InteractionFormat::RecBole,
        &dir,
        &PrepareOptions::default(),
    )
    .unwrap();
    let expected = [
        (
            2020,
            ["1ef2636f493a8159", "c07dc748ad761282", "5a9a25d0aa10eebe"],
        ),
        (
            2021,
            ["d632932e256a7cc2", "4e0009d12661167a", "82de0148bd3c4b20"],
        ),
        (
            2022,
            ["0c8ac1ffc9cc066c", "2759c1a0ffe9fe5a", "2049bbb8838dd977"],
        ),
    ];
    for (seed, digests) in expected {
        let split = Split::make(&ds, SplitKind::RatioRecbole, seed).unwrap();
        for (part, want) in [&split.train, &split.valid, &split.test]
            .into_iter()
            .zip(digests)
        {
            let mut lines = Vec::new();
            for u in 0..part.n_users() {
                for &i in part.row(u) {
                    let (user, item) = (ds.users.id(u as u32), ds.items.id(i));
                    lines.push(format!("{user}\t{item}\n"));
                }
            }
            lines.sort();
            let digest = blake3::hash(lines.concat().as_bytes()).to_hex();
            assert_eq!(&digest[..16], want, "seed {seed}");
        }
    }
}
