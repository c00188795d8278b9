//! Arbitrary bytes through every interaction reader: errors are fine, panics and records that
//! break the reader's promises are not. The first byte picks the format.
#![no_main]

use std::path::Path;

use encore_data::readers::{read_interactions_from, CsvColumns, InteractionFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let format = match pick % 6 {
        0 => InteractionFormat::Onion,
        1 => InteractionFormat::RecBole,
        2 => InteractionFormat::MovieLens,
        3 => InteractionFormat::HetrecLastfm,
        4 => InteractionFormat::Csv(CsvColumns {
            delimiter: b',',
            user: "u".into(),
            item: "i".into(),
            value: Some("v".into()),
            timestamp: Some("t".into()),
        }),
        _ => InteractionFormat::Csv(CsvColumns {
            delimiter: b'\t',
            user: "u".into(),
            item: "i".into(),
            value: None,
            timestamp: None,
        }),
    };
    let limit = (pick >= 128).then_some(u64::from(pick % 7));
    let mut rows = 0u64;
    let result = read_interactions_from(&format, body, Path::new("fuzz"), limit, &mut |r| {
        assert!(!r.user.is_empty() && !r.item.is_empty());
        assert!(r.value.is_finite());
        rows += 1;
        Ok(())
    });
    if let Ok(summary) = result {
        assert_eq!(summary.rows, rows);
        if let Some(l) = limit {
            assert!(rows <= l);
        }
    }
});
