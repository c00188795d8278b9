//! Arbitrary bytes through the feature-table and `.npy` readers: no panics, no unbounded
//! allocation from a lying header, and every table that reads is well-formed.
#![no_main]

use std::path::Path;

use encore_data::features::{read_feature_tsv_from, read_npy_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = read_feature_tsv_from(data, Path::new("fuzz.tsv")) {
        assert!(t.dim() >= 1);
        assert_eq!(t.values.len(), t.len() * t.dim());
        assert!(t.values.iter().all(|v| v.is_finite()));
    }
    if let Ok((rows, cols, values)) = read_npy_from(data, Path::new("fuzz.npy")) {
        assert_eq!(values.len(), rows * cols);
        assert!(values.iter().all(|v| v.is_finite()));
    }
});
