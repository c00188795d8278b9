//! A prepared dataset (SPEC §2 "Dataset preparation"): id maps both ways, the binary CSR
//! matrix, optional timestamps and item names, built from any reader's record stream by
//! thresholding, de-duplication and an iterative k-core filter.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::readers::{read_interactions, read_item_names, InteractionFormat, Record};
use crate::{DataError, IdMap, InteractionMatrix, Result};

/// A prepared, binarised interaction dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// A short name (the input's file or folder name).
    pub name: String,
    /// External user ids <-> row indices.
    pub users: IdMap,
    /// External item ids <-> column indices.
    pub items: IdMap,
    /// The binary user x item matrix.
    pub matrix: InteractionMatrix,
    /// Seconds since the epoch for each stored interaction, aligned with `matrix.indices()`
    /// (the earliest time the pair was seen).
    pub timestamps: Option<Vec<i64>>,
    /// Human-readable item names (title, "artist - song"), by item index, where known.
    pub item_names: Option<Vec<String>>,
    /// For each stored interaction, aligned with `matrix.indices()`, its position (0..nnz) in
    /// the order the interactions were read (a merged duplicate counts at its kept row).
    /// RecBole shuffles interactions in file order, so reproducing its split needs this.
    pub source_order: Option<Vec<u32>>,
}

/// How raw interactions become a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PrepareOptions {
    /// Keep only rows whose value (rating, play count) is `>= threshold`.
    pub threshold: Option<f32>,
    /// Iterative k-core: users need at least this many interactions (0 or 1: no filter).
    pub min_user_interactions: usize,
    /// Iterative k-core: items need at least this many interactions (0 or 1: no filter).
    pub min_item_interactions: usize,
    /// Read only the first N data rows (the paper's `music4all_1M` subset is the first 1M).
    pub first_rows: Option<u64>,
}

/// What preparation did, for the import report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareReport {
    /// Data rows read from the input.
    pub rows_read: u64,
    /// Rows dropped by the value threshold.
    pub rows_below_threshold: u64,
    /// Rows that repeated an already-seen (user, item) pair.
    pub duplicates_merged: u64,
    /// Rounds of the k-core filter until nothing changed.
    pub kcore_rounds: usize,
    /// Users, items and interactions removed by the k-core filter.
    pub kcore_removed_users: usize,
    pub kcore_removed_items: usize,
    pub kcore_removed_interactions: usize,
}

/// Accumulates records into pairs; the building half of [`Dataset::from_records`].
#[derive(Debug, Default)]
pub struct DatasetBuilder {
    users: IdMap,
    items: IdMap,
    // Three flat columns rather than a vector of tuples: 16 bytes per row with timestamps,
    // 8 without, and no padding; at 50M rows that is what keeps the import under 2 GB.
    user_of: Vec<u32>,
    item_of: Vec<u32>,
    timestamps: Vec<i64>,
    has_timestamps: Option<bool>,
    threshold: Option<f32>,
    report: PrepareReport,
}

impl DatasetBuilder {
    /// A builder that drops rows below `threshold`.
    pub fn new(threshold: Option<f32>) -> Self {
        Self {
            threshold,
            ..Self::default()
        }
    }

    /// Add one record. All records must agree on whether they carry a timestamp.
    pub fn push(&mut self, r: Record<'_>) -> Result<()> {
        self.report.rows_read += 1;
        if let Some(t) = self.threshold {
            if r.value < t {
                self.report.rows_below_threshold += 1;
                return Ok(());
            }
        }
        match (self.has_timestamps, r.timestamp) {
            (None, ts) => self.has_timestamps = Some(ts.is_some()),
            (Some(true), None) | (Some(false), Some(_)) => {
                return Err(DataError::Other(format!(
                    "row {} has {} timestamp while earlier rows {}",
                    self.report.rows_read,
                    if r.timestamp.is_some() { "a" } else { "no" },
                    if r.timestamp.is_some() {
                        "had none"
                    } else {
                        "had one"
                    }
                )))
            }
            _ => {}
        }
        if self.user_of.len() >= u32::MAX as usize {
            return Err(DataError::Other(format!(
                "row {}: more than {} interactions are not supported",
                self.report.rows_read,
                u32::MAX
            )));
        }
        let u = self.users.intern(r.user);
        let i = self.items.intern(r.item);
        self.user_of.push(u);
        self.item_of.push(i);
        if let Some(ts) = r.timestamp {
            self.timestamps.push(ts);
        }
        Ok(())
    }

    /// Deduplicate, k-core filter and build the CSR matrix.
    pub fn finish(self, name: &str, opts: &PrepareOptions) -> (Dataset, PrepareReport) {
        let DatasetBuilder {
            mut users,
            mut items,
            mut user_of,
            mut item_of,
            mut timestamps,
            has_timestamps,
            mut report,
            ..
        } = self;
        let with_ts = has_timestamps == Some(true);
        let (n_users, n_items) = (users.len(), items.len());
        user_of.shrink_to_fit();
        item_of.shrink_to_fit();
        timestamps.shrink_to_fit();

        // Counting sort by user into the final arrays, then sort each row by (item, time) and
        // keep the first of each item, compacting in place: duplicates merge into one
        // interaction at its earliest time.
        let mut indptr = vec![0u64; n_users + 1];
        for &u in &user_of {
            indptr[u as usize + 1] += 1;
        }
        for u in 0..n_users {
            indptr[u + 1] += indptr[u];
        }
        let mut fill = indptr.clone();
        let mut indices = vec![0u32; user_of.len()];
        let mut times = vec![0i64; if with_ts { user_of.len() } else { 0 }];
        // Read position of each kept row (4 bytes per row; u32 is enough: see `push`).
        let mut read_at = vec![0u32; user_of.len()];
        for (k, &u) in user_of.iter().enumerate() {
            let p = &mut fill[u as usize];
            indices[*p as usize] = item_of[k];
            read_at[*p as usize] = k as u32;
            if with_ts {
                times[*p as usize] = timestamps[k];
            }
            *p += 1;
        }
        drop((user_of, item_of, timestamps, fill));
        let mut row_ptr = vec![0u64; n_users + 1];
        let mut write = 0usize;
        let mut scratch: Vec<(u32, i64, u32)> = Vec::new();
        for u in 0..n_users {
            let (a, b) = (indptr[u] as usize, indptr[u + 1] as usize);
            scratch.clear();
            scratch.extend(
                (a..b).map(|k| (indices[k], if with_ts { times[k] } else { 0 }, read_at[k])),
            );
            scratch.sort_unstable();
            let mut last = None;
            for &(i, t, r) in &scratch {
                if last == Some(i) {
                    report.duplicates_merged += 1;
                    continue;
                }
                last = Some(i);
                // `write <= a + (position in row)`: compaction never overtakes the reads,
                // and this row was copied into `scratch` before any write to it.
                indices[write] = i;
                read_at[write] = r;
                if with_ts {
                    times[write] = t;
                }
                write += 1;
            }
            row_ptr[u + 1] = write as u64;
        }
        drop(scratch);
        indices.truncate(write);
        indices.shrink_to_fit();
        read_at.truncate(write);
        read_at.shrink_to_fit();
        if with_ts {
            times.truncate(write);
            times.shrink_to_fit();
        }
        let mut matrix = InteractionMatrix::from_csr(n_users, n_items, row_ptr, indices)
            .expect("rows built sorted and unique");
        let mut timestamps = with_ts.then_some(times);
        let mut read_at = Some(read_at);

        // Iterative k-core: drop users and items below their minimum until stable.
        let (ku, ki) = (opts.min_user_interactions, opts.min_item_interactions);
        if ku > 1 || ki > 1 {
            let before = (matrix.n_users(), matrix.n_items(), matrix.nnz());
            let mut keep_user = vec![true; n_users];
            let mut keep_item = vec![true; n_items];
            loop {
                report.kcore_rounds += 1;
                let mut user_deg = vec![0usize; n_users];
                let mut item_deg = vec![0usize; n_items];
                for (u, deg) in user_deg.iter_mut().enumerate() {
                    if !keep_user[u] {
                        continue;
                    }
                    for &i in matrix.row(u) {
                        if keep_item[i as usize] {
                            *deg += 1;
                            item_deg[i as usize] += 1;
                        }
                    }
                }
                let mut changed = false;
                for u in 0..n_users {
                    if keep_user[u] && user_deg[u] < ku {
                        keep_user[u] = false;
                        changed = true;
                    }
                }
                for i in 0..n_items {
                    if keep_item[i] && item_deg[i] < ki {
                        keep_item[i] = false;
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
            let user_map = users.retain(&keep_user);
            let item_map = items.retain(&keep_item);
            let (m, kept) = filter_matrix(&matrix, &user_map, &item_map);
            matrix = m;
            timestamps = retain_kept(timestamps, &kept);
            read_at = retain_kept(read_at, &kept);
            report.kcore_removed_users = before.0 - matrix.n_users();
            report.kcore_removed_items = before.1 - matrix.n_items();
            report.kcore_removed_interactions = before.2 - matrix.nnz();
        }

        let dataset = Dataset {
            name: name.to_owned(),
            users,
            items,
            matrix,
            timestamps,
            item_names: None,
            source_order: read_at.map(|r| dense_ranks(&r)),
        };
        (dataset, report)
    }
}

/// Replace each value by its rank among `values` (all distinct): positions 0..n in the same
/// order. A counting pass over the value range, not a sort: the values are read positions.
fn dense_ranks(values: &[u32]) -> Vec<u32> {
    let top = values.iter().max().map_or(0, |&m| m as usize + 1);
    let mut rank = vec![0u32; top];
    for &v in values {
        rank[v as usize] = 1;
    }
    let mut next = 0u32;
    for r in rank.iter_mut() {
        let present = *r;
        *r = next;
        next += present;
    }
    values.iter().map(|&v| rank[v as usize]).collect()
}

/// Keep the rows and columns whose new index is not `u32::MAX`, renumbered; also returns,
/// per stored interaction of `m`, whether it was kept (to filter arrays aligned with it).
fn filter_matrix(
    m: &InteractionMatrix,
    user_map: &[u32],
    item_map: &[u32],
) -> (InteractionMatrix, Vec<bool>) {
    let n_users = user_map.iter().filter(|&&x| x != u32::MAX).count();
    let n_items = item_map.iter().filter(|&&x| x != u32::MAX).count();
    let mut indptr = Vec::with_capacity(n_users + 1);
    indptr.push(0u64);
    let mut indices = Vec::new();
    let mut kept = vec![false; m.nnz()];
    for (u, &new_u) in user_map.iter().enumerate() {
        if new_u == u32::MAX {
            continue;
        }
        let start = m.indptr()[u] as usize;
        for (k, &i) in m.row(u).iter().enumerate() {
            let ni = item_map[i as usize];
            if ni != u32::MAX {
                indices.push(ni);
                kept[start + k] = true;
            }
        }
        indptr.push(indices.len() as u64);
    }
    // Item renumbering keeps order, so rows stay sorted.
    let matrix = InteractionMatrix::from_csr(n_users, n_items, indptr, indices)
        .expect("order-preserving renumbering keeps rows sorted");
    (matrix, kept)
}

/// The entries of `values` whose flag in `kept` is set.
fn retain_kept<T: Copy>(values: Option<Vec<T>>, kept: &[bool]) -> Option<Vec<T>> {
    values.map(|v| {
        v.iter()
            .zip(kept)
            .filter(|(_, &k)| k)
            .map(|(&x, _)| x)
            .collect()
    })
}

impl Dataset {
    /// Read `input` in `format` and prepare it with `opts`; item names are attached when the
    /// format has a names file beside the input.
    pub fn import(
        format: &InteractionFormat,
        input: &Path,
        opts: &PrepareOptions,
    ) -> Result<(Dataset, PrepareReport)> {
        if opts.first_rows == Some(0) {
            return Err(DataError::parameter(
                "first-rows",
                "must be at least 1 (or left out to read every row)",
            ));
        }
        let mut builder = DatasetBuilder::new(opts.threshold);
        read_interactions(format, input, opts.first_rows, &mut |r| builder.push(r))?;
        let name = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dataset".into());
        let (mut dataset, report) = builder.finish(&name, opts);
        if dataset.matrix.nnz() == 0 {
            return Err(DataError::format(
                input,
                "no interactions left after reading and filtering (check --threshold and the k-core minimums)",
            ));
        }
        if let Some(names) = read_item_names(format, input)? {
            dataset.item_names = Some(
                dataset
                    .items
                    .ids()
                    .iter()
                    .map(|id| names.get(id).cloned().unwrap_or_default())
                    .collect(),
            );
        }
        Ok((dataset, report))
    }

    /// Build a dataset directly from records (tests, synthetic data, external callers).
    pub fn from_records<'a>(
        name: &str,
        records: impl IntoIterator<Item = Record<'a>>,
        opts: &PrepareOptions,
    ) -> Result<(Dataset, PrepareReport)> {
        let mut builder = DatasetBuilder::new(opts.threshold);
        for (n, r) in records.into_iter().enumerate() {
            if opts.first_rows.is_some_and(|limit| n as u64 >= limit) {
                break;
            }
            builder.push(r)?;
        }
        Ok(builder.finish(name, opts))
    }

    /// The item's display name: its name when known, else its external id.
    pub fn item_label(&self, item: u32) -> &str {
        match &self.item_names {
            Some(names) if !names[item as usize].is_empty() => &names[item as usize],
            _ => self.items.id(item),
        }
    }

    /// A content hash of the ids and the matrix (hex), recorded with every split and result.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        for id in self.users.ids() {
            h.update(id.as_bytes());
            h.update(b"\n");
        }
        h.update(b"\x00items\x00");
        for id in self.items.ids() {
            h.update(id.as_bytes());
            h.update(b"\n");
        }
        hash_matrix(&mut h, &self.matrix);
        h.finalize().to_hex()[..16].to_string()
    }

    /// Summary statistics for `encore data stats`.
    pub fn stats(&self) -> DatasetStats {
        let m = &self.matrix;
        let user_counts: Vec<u64> = (0..m.n_users()).map(|u| m.row_len(u) as u64).collect();
        let item_counts = m.item_counts();
        let cells = m.n_users() as f64 * m.n_items() as f64;
        DatasetStats {
            name: self.name.clone(),
            users: m.n_users(),
            items: m.n_items(),
            interactions: m.nnz(),
            density: if cells > 0.0 {
                m.nnz() as f64 / cells
            } else {
                0.0
            },
            has_timestamps: self.timestamps.is_some(),
            has_item_names: self.item_names.is_some(),
            per_user: Quantiles::of(user_counts),
            per_item: Quantiles::of(item_counts),
        }
    }
}

/// Feed a matrix's shape and arrays into a hasher.
pub(crate) fn hash_matrix(h: &mut blake3::Hasher, m: &InteractionMatrix) {
    h.update(&(m.n_users() as u64).to_le_bytes());
    h.update(&(m.n_items() as u64).to_le_bytes());
    h.update(bytemuck::cast_slice(m.indptr()));
    h.update(bytemuck::cast_slice(m.indices()));
}

/// Dataset statistics (`encore data stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    pub name: String,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    pub density: f64,
    pub has_timestamps: bool,
    pub has_item_names: bool,
    /// Interactions per user.
    pub per_user: Quantiles,
    /// Interactions per item.
    pub per_item: Quantiles,
}

/// Min, quartiles, 90th/99th percentile, max and mean of a count distribution
/// (nearest-rank percentiles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub min: u64,
    pub p25: u64,
    pub median: u64,
    pub p75: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Quantiles {
    /// Quantiles of `values` (all zeros when empty).
    pub fn of(mut values: Vec<u64>) -> Self {
        if values.is_empty() {
            return Self {
                min: 0,
                p25: 0,
                median: 0,
                p75: 0,
                p90: 0,
                p99: 0,
                max: 0,
                mean: 0.0,
            };
        }
        values.sort_unstable();
        let n = values.len();
        let at = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            min: values[0],
            p25: at(0.25),
            median: at(0.5),
            p75: at(0.75),
            p90: at(0.9),
            p99: at(0.99),
            max: values[n - 1],
            mean: values.iter().sum::<u64>() as f64 / n as f64,
        }
    }
}

impl fmt::Display for DatasetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dataset        {}", self.name)?;
        writeln!(f, "users          {}", self.users)?;
        writeln!(f, "items          {}", self.items)?;
        writeln!(f, "interactions   {}", self.interactions)?;
        writeln!(f, "density        {:.4}%", self.density * 100.0)?;
        writeln!(
            f,
            "timestamps     {}",
            if self.has_timestamps { "yes" } else { "no" }
        )?;
        writeln!(
            f,
            "item names     {}",
            if self.has_item_names { "yes" } else { "no" }
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<10} {:>6} {:>6} {:>7} {:>6} {:>6} {:>6} {:>8} {:>9}",
            "count", "min", "p25", "median", "p75", "p90", "p99", "max", "mean"
        )?;
        for (label, q) in [("per user", &self.per_user), ("per item", &self.per_item)] {
            writeln!(
                f,
                "{:<10} {:>6} {:>6} {:>7} {:>6} {:>6} {:>6} {:>8} {:>9.2}",
                label, q.min, q.p25, q.median, q.p75, q.p90, q.p99, q.max, q.mean
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(user: &'a str, item: &'a str, value: f32) -> Record<'a> {
        Record {
            user,
            item,
            value,
            timestamp: None,
        }
    }

    #[test]
    fn duplicates_merge_and_threshold_drops_rows() {
        let rows = [
            rec("u1", "a", 5.0),
            rec("u1", "a", 4.0),
            rec("u1", "b", 1.0),
            rec("u2", "b", 3.0),
        ];
        let opts = PrepareOptions {
            threshold: Some(3.0),
            ..Default::default()
        };
        let (ds, report) = Dataset::from_records("t", rows, &opts).unwrap();
        assert_eq!(report.rows_read, 4);
        assert_eq!(report.rows_below_threshold, 1);
        assert_eq!(report.duplicates_merged, 1);
        assert_eq!(ds.matrix.nnz(), 2);
        assert_eq!(ds.items.ids(), &["a", "b"]);
        let u2 = ds.users.get("u2").unwrap() as usize;
        assert_eq!(ds.matrix.row(u2), &[ds.items.get("b").unwrap()]);
    }

    #[test]
    fn source_order_follows_the_rows_read_through_duplicates_and_kcore() {
        // Rows: (u1,a) (u2,b) (u1,b) (u1,a dup) (u3,a) (u2,a)
        let rows = [
            ("u1", "a"),
            ("u2", "b"),
            ("u1", "b"),
            ("u1", "a"),
            ("u3", "a"),
            ("u2", "a"),
        ];
        let (ds, _) = Dataset::from_records(
            "t",
            rows.iter().map(|&(u, i)| rec(u, i, 1.0)),
            &Default::default(),
        )
        .unwrap();
        let read_order = |ds: &Dataset| {
            let order = ds.source_order.as_ref().unwrap();
            let mut pairs = vec![(String::new(), String::new()); order.len()];
            for u in 0..ds.matrix.n_users() {
                let start = ds.matrix.indptr()[u] as usize;
                for (k, &i) in ds.matrix.row(u).iter().enumerate() {
                    pairs[order[start + k] as usize] =
                        (ds.users.id(u as u32).to_owned(), ds.items.id(i).to_owned());
                }
            }
            pairs
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|&(u, i)| (u.to_owned(), i.to_owned()))
                .collect()
        };
        // The duplicate merges into its first row; the positions stay 0..nnz.
        assert_eq!(
            read_order(&ds),
            pairs(&[
                ("u1", "a"),
                ("u2", "b"),
                ("u1", "b"),
                ("u3", "a"),
                ("u2", "a")
            ])
        );
        // A 2-core drops u3; the rest keep their relative order, renumbered.
        let opts = PrepareOptions {
            min_user_interactions: 2,
            ..Default::default()
        };
        let (ds, _) =
            Dataset::from_records("t", rows.iter().map(|&(u, i)| rec(u, i, 1.0)), &opts).unwrap();
        assert_eq!(
            read_order(&ds),
            pairs(&[("u1", "a"), ("u2", "b"), ("u1", "b"), ("u2", "a")])
        );
    }

    #[test]
    fn duplicate_pairs_keep_the_earliest_time() {
        let rows = [
            Record {
                user: "u",
                item: "x",
                value: 1.0,
                timestamp: Some(50),
            },
            Record {
                user: "u",
                item: "y",
                value: 1.0,
                timestamp: Some(70),
            },
            Record {
                user: "u",
                item: "x",
                value: 1.0,
                timestamp: Some(10),
            },
        ];
        let (ds, _) = Dataset::from_records("t", rows, &PrepareOptions::default()).unwrap();
        assert_eq!(ds.timestamps.as_deref(), Some(&[10, 70][..]));
    }

    #[test]
    fn mixed_timestamps_are_an_error() {
        let rows = [
            Record {
                user: "u",
                item: "x",
                value: 1.0,
                timestamp: Some(5),
            },
            Record {
                user: "u",
                item: "y",
                value: 1.0,
                timestamp: None,
            },
        ];
        assert!(Dataset::from_records("t", rows, &PrepareOptions::default()).is_err());
    }

    #[test]
    fn kcore_is_iterative() {
        // Items: a has 3 users, b has 2, c has 1. With 2-core on both sides: c goes, then
        // user u3 (who only had c and b) drops to 1 item and goes, then b drops to 1 user...
        let rows = [
            rec("u1", "a", 1.0),
            rec("u1", "b", 1.0),
            rec("u2", "a", 1.0),
            rec("u2", "d", 1.0),
            rec("u3", "b", 1.0),
            rec("u3", "c", 1.0),
            rec("u4", "a", 1.0),
            rec("u4", "d", 1.0),
        ];
        let opts = PrepareOptions {
            min_user_interactions: 2,
            min_item_interactions: 2,
            ..Default::default()
        };
        let (ds, report) = Dataset::from_records("t", rows, &opts).unwrap();
        // Round 1 removes c; u3 then has only b (1) -> removed in round 2; b then has only u1
        // -> removed in round 3; u1 then has only a -> removed in round 4.
        assert_eq!(ds.users.ids(), &["u2", "u4"]);
        assert_eq!(ds.items.ids(), &["a", "d"]);
        assert_eq!(ds.matrix.nnz(), 4);
        assert_eq!(report.kcore_removed_users, 2);
        assert_eq!(report.kcore_removed_items, 2);
        assert!(report.kcore_rounds >= 4);
        for u in 0..ds.matrix.n_users() {
            assert!(ds.matrix.row_len(u) >= 2);
        }
        assert!(ds.matrix.item_counts().iter().all(|&c| c >= 2));
    }

    #[test]
    fn first_rows_limits_the_input() {
        let rows = [
            rec("u1", "a", 1.0),
            rec("u1", "b", 1.0),
            rec("u2", "c", 1.0),
        ];
        let opts = PrepareOptions {
            first_rows: Some(2),
            ..Default::default()
        };
        let (ds, _) = Dataset::from_records("t", rows, &opts).unwrap();
        assert_eq!(ds.matrix.nnz(), 2);
        assert_eq!(ds.users.len(), 1);
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let q = Quantiles::of((1..=100).collect());
        assert_eq!((q.min, q.p25, q.median, q.p90, q.max), (1, 25, 50, 90, 100));
        assert!((q.mean - 50.5).abs() < 1e-12);
    }

    proptest::proptest! {
        /// Whatever the input order and duplicates: one stored interaction per distinct pair,
        /// at its earliest time, and after a k-core filter every user and item meets its minimum.
        #[test]
        fn preparation_keeps_each_distinct_pair_once(
            rows in proptest::collection::vec((0u8..12, 0u8..9, 0i64..100), 0..200),
            k in 0usize..4,
        ) {
            let ids: Vec<(String, String, i64)> = rows
                .iter()
                .map(|&(u, i, t)| (format!("u{u}"), format!("i{i}"), t))
                .collect();
            let records = ids.iter().map(|(u, i, t)| Record { user: u, item: i, value: 1.0, timestamp: Some(*t) });
            let (ds, _) = Dataset::from_records("p", records.clone(), &PrepareOptions::default()).unwrap();
            let mut expected = std::collections::BTreeMap::new();
            for (u, i, t) in &ids {
                let e = expected.entry((u.clone(), i.clone())).or_insert(*t);
                *e = (*e).min(*t);
            }
            proptest::prop_assert_eq!(ds.matrix.nnz(), expected.len());
            let ts = ds.timestamps.as_deref().unwrap_or(&[]);
            for ((u, i), t) in &expected {
                let uu = ds.users.get(u).unwrap() as usize;
                let ii = ds.items.get(i).unwrap();
                let pos = ds.matrix.row(uu).binary_search(&ii).unwrap();
                proptest::prop_assert_eq!(ts[ds.matrix.indptr()[uu] as usize + pos], *t);
            }
            let opts = PrepareOptions { min_user_interactions: k, min_item_interactions: k, ..Default::default() };
            let (core, _) = Dataset::from_records("p", records, &opts).unwrap();
            for u in 0..core.matrix.n_users() {
                proptest::prop_assert!(core.matrix.row_len(u) >= k);
            }
            proptest::prop_assert!(core.matrix.item_counts().iter().all(|&c| c as usize >= k));
        }
    }
}
