//! Deterministic train / validation / test splits (SPEC §2 "Splits", EVALUATION.md "Protocol").
//!
//! Every split is a function of the dataset and a seed only: each user's random stream is
//! derived from `(seed, user index)`, so the result does not depend on thread count or
//! iteration order. A split saves to a directory of TSV files with original ids (so other
//! tools can train on exactly the same data) plus `split.json` with fingerprints.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::hash_matrix;
use crate::split_cache;
use crate::{DataError, Dataset, IdMap, InteractionMatrix, Result};

/// The split protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitKind {
    /// Per-user random 80/10/10 (RecBole `RS [0.8,0.1,0.1]`, `group_by user`, random order):
    /// what the paper's numbers were produced with. Each user's items are shuffled by
    /// Encore's own per-user stream.
    Ratio,
    /// The same 80/10/10 cut, drawn exactly as RecBole 1.2.1 draws it: `torch.manual_seed(seed)`,
    /// `torch.randperm` over all interactions in the order they were read, then each user's
    /// interactions in that shuffled order. With the same seed and the same interaction file
    /// (no duplicates, the same filtering) this is RecBole's split, so one seed can be compared
    /// with one RecBole run.
    RatioRecbole,
    /// Strong generalisation (Liang et al. 2018): 80/10/10 of the users; each held-out user's
    /// items are cut into fold-in (model input) and targets (20%).
    Users,
    /// Per user in time order: the earliest 80% train, next 10% valid, latest 10% test.
    Temporal,
    /// One global time cut: interactions before the 80% time quantile train, up to the 90%
    /// quantile valid, the rest test. No interaction after a cut reaches the model input.
    TemporalGlobal,
    /// Made by another tool (RecBole, DiffRec, LensKit, ...): a split directory without
    /// `split.json`, read as given. Never made by [`Split::make`].
    External,
}

impl SplitKind {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            SplitKind::Ratio => "ratio",
            SplitKind::RatioRecbole => "ratio-recbole",
            SplitKind::Users => "users",
            SplitKind::Temporal => "temporal",
            SplitKind::TemporalGlobal => "temporal-global",
            SplitKind::External => "external",
        }
    }
}

impl fmt::Display for SplitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SplitKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ratio" => Ok(SplitKind::Ratio),
            "ratio-recbole" => Ok(SplitKind::RatioRecbole),
            "users" => Ok(SplitKind::Users),
            "temporal" => Ok(SplitKind::Temporal),
            "temporal-global" => Ok(SplitKind::TemporalGlobal),
            other => Err(DataError::parameter(
                "split",
                format!(
                    "unknown split `{other}`; expected ratio, ratio-recbole, users, temporal \
                     or temporal-global"
                ),
            )),
        }
    }
}

/// A split of a dataset's matrix. All matrices have the dataset's full shape.
///
/// * `train`: what the model is fitted on (for `users`, only the training users' rows).
/// * `input`: each user's model input at evaluation time (`train` plus, for `users`, the
///   held-out users' fold-in items). Validation excludes `input`; test excludes
///   `input ∪ valid`.
/// * `valid`, `test`: target items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub kind: SplitKind,
    pub seed: u64,
    pub train: InteractionMatrix,
    pub input: InteractionMatrix,
    pub valid: InteractionMatrix,
    pub test: InteractionMatrix,
}

/// The record of a split written as `split.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub kind: SplitKind,
    pub seed: u64,
    /// Fingerprint of the dataset the split was made from.
    pub dataset_fingerprint: String,
    /// Fingerprints of `train`, `input`, `valid` and `test`.
    pub fingerprints: std::collections::BTreeMap<String, String>,
    /// Interactions in each part.
    pub counts: std::collections::BTreeMap<String, usize>,
}

/// A 64-bit mix (SplitMix64's finaliser) so that nearby seeds give unrelated streams.
pub fn mix_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The largest `n` for which PyTorch's CPU `randperm` uses the algorithm [`torch_randperm`]
/// reproduces (`n < u32::MAX / 20`); above it PyTorch switches to another one.
pub const TORCH_RANDPERM_MAX: usize = (u32::MAX / 20) as usize - 1;

/// `torch.randperm(n)` on the CPU right after `torch.manual_seed(seed)` (PyTorch 1.x-2.x):
/// MT19937 seeded with the seed's low 32 bits, then for `i` in `0..n-1` swap `i` with
/// `i + random() % (n - i)`, `random()` being the generator's next 32-bit output.
///
/// Written here on top of `rand_mt` (the reference Mersenne Twister) because no crate
/// reproduces PyTorch's permutation, and RecBole draws its split with it. The tests hold
/// values printed by torch 2.5.1.
pub fn torch_randperm(n: usize, seed: u64) -> Result<Vec<u32>> {
    if n > TORCH_RANDPERM_MAX {
        return Err(DataError::parameter(
            "split",
            format!(
                "ratio-recbole supports up to {TORCH_RANDPERM_MAX} interactions (PyTorch \
                 shuffles larger tensors another way); this dataset has {n}"
            ),
        ));
    }
    let mut rng = rand_mt::Mt::new(seed as u32);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    for i in 0..n.saturating_sub(1) {
        let z = rng.next_u32() as usize % (n - i);
        perm.swap(i, i + z);
    }
    Ok(perm)
}

/// RecBole's `_calcu_split_ids` for ratios `[0.8, 0.1, 0.1]`: valid and test get
/// `floor(0.1 n)` each, train the rest; when `0 < 0.1 n < 1` and train keeps more than one
/// interaction, test and then valid take one each from train.
pub fn ratio_counts(n: usize) -> (usize, usize, usize) {
    let ratios = [0.8f64, 0.1, 0.1];
    let mut cnt = [0usize; 3];
    cnt[1] = (ratios[1] * n as f64) as usize;
    cnt[2] = (ratios[2] * n as f64) as usize;
    cnt[0] = n - cnt[1] - cnt[2];
    for i in 1..3 {
        if cnt[0] <= 1 {
            break;
        }
        let part = ratios[3 - i] * n as f64;
        if 0.0 < part && part < 1.0 {
            cnt[3 - i] += 1;
            cnt[0] -= 1;
        }
    }
    (cnt[0], cnt[1], cnt[2])
}

impl Split {
    /// Make a split of `dataset` of the given kind.
    pub fn make(dataset: &Dataset, kind: SplitKind, seed: u64) -> Result<Split> {
        let m = &dataset.matrix;
        match kind {
            SplitKind::Ratio => Ok(Self::per_user(m, kind, seed, |u, row| {
                let mut items = row.to_vec();
                items.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(seed, u as u64)));
                items
            })),
            SplitKind::RatioRecbole => {
                let order = dataset.source_order.as_deref().ok_or_else(|| {
                    DataError::parameter(
                        "split",
                        "the ratio-recbole split needs the order the interactions were read in, \
                         and this dataset does not record it (re-run `encore data import`)",
                    )
                })?;
                let perm = torch_randperm(m.nnz(), seed)?;
                // `slot[p]`: where the interaction read at position p lands after the shuffle.
                let mut slot = vec![0u32; perm.len()];
                for (j, &p) in perm.iter().enumerate() {
                    slot[p as usize] = j as u32;
                }
                let indptr = m.indptr();
                Ok(Self::per_user(m, kind, seed, |u, row| {
                    let at = &order[indptr[u] as usize..indptr[u + 1] as usize];
                    let mut keyed: Vec<(u32, u32)> = at
                        .iter()
                        .zip(row)
                        .map(|(&p, &i)| (slot[p as usize], i))
                        .collect();
                    keyed.sort_unstable();
                    keyed.into_iter().map(|(_, i)| i).collect()
                }))
            }
            SplitKind::Temporal => {
                let ts = dataset.timestamps.as_deref().ok_or_else(|| {
                    DataError::parameter(
                        "split",
                        "the temporal split needs timestamps, and this dataset has none \
                         (import a file with a timestamp column)",
                    )
                })?;
                let indptr = m.indptr();
                Ok(Self::per_user(m, kind, seed, |u, row| {
                    let times = &ts[indptr[u] as usize..indptr[u + 1] as usize];
                    let mut order: Vec<(i64, u32)> =
                        times.iter().copied().zip(row.iter().copied()).collect();
                    order.sort_unstable();
                    order.into_iter().map(|(_, i)| i).collect()
                }))
            }
            SplitKind::TemporalGlobal => Self::temporal_global(dataset, seed),
            SplitKind::Users => Ok(Self::users(m, seed)),
            SplitKind::External => Err(DataError::parameter(
                "split",
                "an external split is read from its directory (--split-dir), not made",
            )),
        }
    }

    /// Cut each user's items, in the order `order` gives, by [`ratio_counts`].
    fn per_user(
        m: &InteractionMatrix,
        kind: SplitKind,
        seed: u64,
        order: impl Fn(usize, &[u32]) -> Vec<u32> + Sync,
    ) -> Split {
        use rayon::prelude::*;
        let parts: Vec<[Vec<u32>; 3]> = (0..m.n_users())
            .into_par_iter()
            .map(|u| {
                let items = order(u, m.row(u));
                let (a, b, _) = ratio_counts(items.len());
                [
                    items[..a].to_vec(),
                    items[a..a + b].to_vec(),
                    items[a + b..].to_vec(),
                ]
            })
            .collect();
        let part = |k: usize| {
            let rows: Vec<&[u32]> = parts.iter().map(|p| p[k].as_slice()).collect();
            InteractionMatrix::from_rows(m.n_items(), &rows)
        };
        let train = part(0);
        Split {
            kind,
            seed,
            input: train.clone(),
            train,
            valid: part(1),
            test: part(2),
        }
    }

    /// Liang et al.'s strong-generalisation split: users shuffled and cut 80/10/10; a held-out
    /// user with at least 5 items gives `floor(0.2 n)` random items as targets, the rest as
    /// fold-in; one with fewer keeps all as fold-in (as in their notebook).
    fn users(m: &InteractionMatrix, seed: u64) -> Split {
        let mut order: Vec<u32> = m.nonempty_users();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(seed, u64::MAX)));
        let n = order.len();
        let n_heldout = (n as f64 * 0.1) as usize;
        let n_train = n - 2 * n_heldout;
        let mut role = vec![0u8; m.n_users()]; // 0 train (or no items), 1 valid, 2 test
        for &u in &order[n_train..n_train + n_heldout] {
            role[u as usize] = 1;
        }
        for &u in &order[n_train + n_heldout..] {
            role[u as usize] = 2;
        }
        let empty: Vec<u32> = Vec::new();
        let mut train = vec![empty.clone(); m.n_users()];
        let mut input = vec![empty.clone(); m.n_users()];
        let mut valid = vec![empty.clone(); m.n_users()];
        let mut test = vec![empty; m.n_users()];
        for u in 0..m.n_users() {
            let row = m.row(u);
            if role[u] == 0 {
                train[u] = row.to_vec();
                input[u] = row.to_vec();
                continue;
            }
            let mut items = row.to_vec();
            items.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(seed, u as u64)));
            let n_target = if items.len() >= 5 {
                (items.len() as f64 * 0.2) as usize
            } else {
                0
            };
            let targets = items.split_off(items.len() - n_target);
            input[u] = items;
            if role[u] == 1 {
                valid[u] = targets;
            } else {
                test[u] = targets;
            }
        }
        let build = |rows: &[Vec<u32>]| InteractionMatrix::from_rows(m.n_items(), rows);
        Split {
            kind: SplitKind::Users,
            seed,
            train: build(&train),
            input: build(&input),
            valid: build(&valid),
            test: build(&test),
        }
    }

    /// One global cut at the 80% and 90% quantiles of all interaction times (ties go to the
    /// earlier part, so nothing after a cut is in an earlier part).
    fn temporal_global(dataset: &Dataset, seed: u64) -> Result<Split> {
        let m = &dataset.matrix;
        let ts = dataset.timestamps.as_deref().ok_or_else(|| {
            DataError::parameter(
                "split",
                "the temporal-global split needs timestamps, and this dataset has none",
            )
        })?;
        if ts.is_empty() {
            return Err(DataError::parameter(
                "split",
                "the dataset has no interactions to split",
            ));
        }
        let mut sorted = ts.to_vec();
        sorted.sort_unstable();
        let cut = |q: f64| sorted[((q * sorted.len() as f64) as usize).min(sorted.len() - 1)];
        let (t80, t90) = (cut(0.8), cut(0.9));
        let mut rows = [
            vec![Vec::new(); m.n_users()],
            vec![Vec::new(); m.n_users()],
            vec![Vec::new(); m.n_users()],
        ];
        let indptr = m.indptr();
        for (u, w) in indptr.windows(2).enumerate() {
            let (start, end) = (w[0] as usize, w[1] as usize);
            for (&i, &t) in m.indices()[start..end].iter().zip(&ts[start..end]) {
                let part = if t <= t80 {
                    0
                } else if t <= t90 {
                    1
                } else {
                    2
                };
                rows[part][u].push(i);
            }
        }
        let [train, valid, test] = rows.map(|r| InteractionMatrix::from_rows(m.n_items(), &r));
        Ok(Split {
            kind: SplitKind::TemporalGlobal,
            seed,
            input: train.clone(),
            train,
            valid,
            test,
        })
    }

    /// Fingerprints and counts of each part.
    pub fn info(&self, dataset_fingerprint: &str) -> SplitInfo {
        let mut fingerprints = std::collections::BTreeMap::new();
        let mut counts = std::collections::BTreeMap::new();
        for (name, m) in self.parts() {
            let mut h = blake3::Hasher::new();
            hash_matrix(&mut h, m);
            fingerprints.insert(name.to_string(), h.finalize().to_hex()[..16].to_string());
            counts.insert(name.to_string(), m.nnz());
        }
        SplitInfo {
            kind: self.kind,
            seed: self.seed,
            dataset_fingerprint: dataset_fingerprint.to_string(),
            fingerprints,
            counts,
        }
    }

    /// Train, input, valid and test under their names (also [`split_cache`]'s order).
    fn parts(&self) -> [(&'static str, &InteractionMatrix); 4] {
        [
            ("train", &self.train),
            ("input", &self.input),
            ("valid", &self.valid),
            ("test", &self.test),
        ]
    }

    /// The held-out users' fold-in items (`input` minus `train`), non-empty only for `users`.
    pub fn foldin(&self) -> InteractionMatrix {
        let rows: Vec<Vec<u32>> = (0..self.input.n_users())
            .map(|u| {
                let train = self.train.row(u);
                self.input
                    .row(u)
                    .iter()
                    .copied()
                    .filter(|i| train.binary_search(i).is_err())
                    .collect()
            })
            .collect();
        InteractionMatrix::from_rows(self.input.n_items(), &rows)
    }

    /// Write `train.tsv`, `valid.tsv`, `test.tsv` (and `foldin.tsv` for the users split),
    /// header `user_id<TAB>item_id` with original ids, plus `split.json`, into `dir`
    /// (created; files written to temporary names and renamed).
    pub fn save_dir(&self, dir: &Path, dataset: &Dataset, info: &SplitInfo) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let mut files = vec![
            ("train.tsv", self.train.clone()),
            ("valid.tsv", self.valid.clone()),
            ("test.tsv", self.test.clone()),
        ];
        if self.input != self.train {
            files.push(("foldin.tsv", self.foldin()));
        }
        for (name, m) in files {
            encore_io::write_atomic(&dir.join(name), |w| {
                writeln!(w, "user_id\titem_id")?;
                for u in 0..m.n_users() {
                    let uid = dataset.users.id(u as u32);
                    for &i in m.row(u) {
                        writeln!(w, "{uid}\t{}", dataset.items.id(i))?;
                    }
                }
                Ok(())
            })?;
        }
        // The catalogue in index order, so that reading the directory back without the
        // dataset gives every user and item its index again (first appearance in the
        // rewritten train.tsv is another order) and keeps items no part mentions.
        for (name, ids) in [(USERS_FILE, &dataset.users), (ITEMS_FILE, &dataset.items)] {
            encore_io::write_atomic(&dir.join(name), |w| {
                for i in 0..ids.len() {
                    writeln!(w, "{}", ids.id(i as u32))?;
                }
                Ok(())
            })?;
        }
        let json = serde_json::to_string_pretty(info).expect("split info serialises");
        encore_io::write_bytes(&dir.join("split.json"), json.as_bytes())?;
        // Last, once the files it answers for are final.
        split_cache::save(
            dir,
            &dataset.users,
            &dataset.items,
            self.parts().map(|p| p.1),
        )
    }

    /// Read a split directory written by [`Split::save_dir`], or made by another tool: only
    /// `train.tsv`, `valid.tsv` and `test.tsv` are required (`foldin.tsv` optional, adding
    /// held-out users' model input); without `split.json` the split is recorded as external
    /// with the fingerprints Encore computes. Each file holds a user id and an item id per
    /// line, tab-separated, further columns ignored; the first line is a header when its
    /// first two fields name them (see [`is_pair_header`]: Encore's `user_id<TAB>item_id`,
    /// RecBole's `user_id:token<TAB>item_id:token`), and data otherwise (DiffRec-style
    /// `uid<TAB>iid` dumps). Ids are mapped through `dataset` when given (an id it does not
    /// know is an error naming the file and line), else through the directory's `users.txt` and
    /// `items.txt` when it has them (a directory [`Split::save_dir`] wrote); otherwise the
    /// catalogue is built from the files, in order of first appearance in train, fold-in,
    /// valid, test.
    pub fn load_dir(dir: &Path, dataset: Option<&Dataset>) -> Result<LoadedSplit> {
        let info_path = dir.join("split.json");
        let info: Option<SplitInfo> = if info_path.exists() {
            let text =
                std::fs::read_to_string(&info_path).map_err(|e| DataError::io(&info_path, e))?;
            Some(serde_json::from_str(&text).map_err(|e| {
                DataError::format(&info_path, format!("not a valid split.json: {e}"))
            })?)
        } else {
            None
        };
        let catalogue = match dataset {
            Some(d) => Some((d.users.clone(), d.items.clone())),
            None if dir.join(USERS_FILE).exists() && dir.join(ITEMS_FILE).exists() => Some((
                read_ids(&dir.join(USERS_FILE))?,
                read_ids(&dir.join(ITEMS_FILE))?,
            )),
            None => None,
        };
        let fixed = catalogue.is_some();
        let (mut users, mut items) = catalogue.unwrap_or_default();
        // An Encore split directory read before: its binary twin, while the text is unchanged.
        if let (Some(info), true) = (&info, fixed) {
            if let Some(p) = split_cache::load(dir, &users, &items) {
                let split = Split {
                    kind: info.kind,
                    seed: info.seed,
                    train: p.train,
                    input: p.input,
                    valid: p.valid,
                    test: p.test,
                };
                return Ok(LoadedSplit {
                    split,
                    users,
                    items,
                    info: info.clone(),
                });
            }
        }
        let mut read = |name: &str, required: bool| -> Result<Vec<(u32, u32)>> {
            let path = dir.join(name);
            if !required && !path.exists() {
                return Ok(Vec::new());
            }
            read_pairs(&path, &mut users, &mut items, fixed)
        };
        let train = read("train.tsv", true)?;
        let foldin = read("foldin.tsv", false)?;
        let valid = read("valid.tsv", true)?;
        let test = read("test.tsv", true)?;
        let (nu, ni) = (users.len(), items.len());
        let train_m = InteractionMatrix::from_pairs(nu, ni, &train);
        let input = if foldin.is_empty() {
            train_m.clone()
        } else {
            train_m.union(&InteractionMatrix::from_pairs(nu, ni, &foldin))
        };
        let split = Split {
            kind: info.as_ref().map_or(SplitKind::External, |i| i.kind),
            seed: info.as_ref().map_or(0, |i| i.seed),
            train: train_m,
            input,
            valid: InteractionMatrix::from_pairs(nu, ni, &valid),
            test: InteractionMatrix::from_pairs(nu, ni, &test),
        };
        let mut loaded = LoadedSplit {
            split,
            users,
            items,
            info: SplitInfo {
                kind: SplitKind::External,
                seed: 0,
                dataset_fingerprint: String::new(),
                fingerprints: Default::default(),
                counts: Default::default(),
            },
        };
        if let (Some(_), true) = (&info, fixed) {
            // For the next load (a directory written before the twin existed, or whose twin
            // went stale). A read-only directory keeps being parsed.
            if let Err(e) = split_cache::save(
                dir,
                &loaded.users,
                &loaded.items,
                loaded.split.parts().map(|p| p.1),
            ) {
                tracing::debug!("{}: no binary twin written: {e}", dir.display());
            }
        }
        loaded.info = match info {
            Some(info) => info,
            // An external split: record it as such, with the fingerprints Encore computes.
            None => {
                let fingerprint = match dataset {
                    Some(d) => d.fingerprint(),
                    None => loaded.dataset("external").fingerprint(),
                };
                loaded.split.info(&fingerprint)
            }
        };
        Ok(loaded)
    }
}

/// The user ids of a saved split in index order, one per line (written by
/// [`Split::save_dir`]).
pub const USERS_FILE: &str = "users.txt";
/// The item ids of a saved split in index order, one per line.
pub const ITEMS_FILE: &str = "items.txt";

/// Read an id list ([`USERS_FILE`], [`ITEMS_FILE`]); a duplicate is an error naming the file.
fn read_ids(path: &Path) -> Result<IdMap> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    IdMap::from_ids(text.lines().map(str::to_string).collect())
        .map_err(|e| DataError::format(path, e))
}

/// A split read back from a directory, with the id maps its indices refer to.
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    pub split: Split,
    pub users: IdMap,
    pub items: IdMap,
    /// The recorded `split.json`, or for an external split (no `split.json`) the record
    /// Encore computes: kind `external`, seed 0, fingerprints of the parts as read.
    pub info: SplitInfo,
}

impl LoadedSplit {
    /// A dataset whose catalogue and matrix are those of the split (train ∪ input ∪ valid ∪
    /// test); used when a split has no prepared dataset beside it.
    pub fn dataset(&self, name: &str) -> Dataset {
        let s = &self.split;
        Dataset {
            name: name.to_string(),
            users: self.users.clone(),
            items: self.items.clone(),
            matrix: s.input.union(&s.valid).union(&s.test),
            timestamps: None,
            item_names: None,
            source_order: None,
        }
    }
}

/// Whether a split file's first line is a header: its first two fields, without a RecBole
/// `:type` suffix and compared case-insensitively, name a user and an item column
/// (`user_id`, `userid`, `user`, `uid` / `item_id`, `itemid`, `item`, `iid`, `track_id`).
pub fn is_pair_header(line: &str) -> bool {
    let mut fields = line.split('\t').map(|f| {
        f.split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let (Some(u), Some(i)) = (fields.next(), fields.next()) else {
        return false;
    };
    matches!(u.as_str(), "user_id" | "userid" | "user" | "uid")
        && matches!(
            i.as_str(),
            "item_id" | "itemid" | "item" | "iid" | "track_id" | "trackid"
        )
}

/// Read a split file (a user id and an item id per line, optional header) into index pairs.
fn read_pairs(
    path: &Path,
    users: &mut IdMap,
    items: &mut IdMap,
    fixed: bool,
) -> Result<Vec<(u32, u32)>> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut pairs = Vec::new();
    let mut line_no = 0u64;
    let parse_err = |line: u64, column: usize, field: &str, message: String| DataError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        field: field.to_string(),
        message,
    };
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        if line_no == 1 && is_pair_header(text) {
            continue;
        }
        if text.is_empty() {
            continue;
        }
        let mut fields = text.split('\t');
        let (Some(u), Some(i)) = (fields.next(), fields.next()) else {
            return Err(parse_err(
                line_no,
                2,
                "item_id",
                "missing field: expected `user_id<TAB>item_id`".into(),
            ));
        };
        let (uu, ii) = if fixed {
            let uu = users.get(u).ok_or_else(|| {
                parse_err(
                    line_no,
                    1,
                    "user_id",
                    format!("user `{u}` is not in the dataset"),
                )
            })?;
            let ii = items.get(i).ok_or_else(|| {
                parse_err(
                    line_no,
                    2,
                    "item_id",
                    format!("item `{i}` is not in the dataset"),
                )
            })?;
            (uu, ii)
        } else {
            (users.intern(u), items.intern(i))
        };
        pairs.push((uu, ii));
    }
    if line_no == 0 {
        return Err(DataError::format(
            path,
            "empty file: expected `user_id<TAB>item_id` lines (a header line is optional)",
        ));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readers::Record;
    use crate::PrepareOptions;

    fn dataset(n_users: usize, per_user: usize, with_ts: bool) -> Dataset {
        let ids: Vec<(String, String, i64)> = (0..n_users)
            .flat_map(|u| {
                (0..per_user + u % 7).map(move |k| {
                    (
                        format!("u{u}"),
                        format!("i{}", (u * 7 + k * 3) % 60),
                        (k * 100 + u) as i64,
                    )
                })
            })
            .collect();
        let records = ids.iter().map(|(u, i, t)| Record {
            user: u,
            item: i,
            value: 1.0,
            timestamp: with_ts.then_some(*t),
        });
        Dataset::from_records("t", records, &PrepareOptions::default())
            .unwrap()
            .0
    }

    #[test]
    fn torch_randperm_matches_pytorch() {
        // Printed by torch 2.5.1: `torch.manual_seed(s); torch.randperm(n).tolist()`.
        assert_eq!(
            torch_randperm(10, 2020).unwrap(),
            [0, 7, 5, 4, 2, 6, 1, 8, 9, 3]
        );
        assert_eq!(
            torch_randperm(10, 0).unwrap(),
            [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]
        );
        // torch keeps the low 32 bits of a larger seed.
        assert_eq!(
            torch_randperm(10, (1 << 32) + 5).unwrap(),
            [1, 4, 9, 6, 3, 5, 0, 2, 8, 7]
        );
        let p = torch_randperm(100_000, 2020).unwrap();
        assert_eq!(p[..8], [26720, 6370, 64853, 5713, 27935, 8431, 95557, 4967]);
        assert_eq!(p[p.len() - 4..], [27202, 54231, 30600, 10094]);
        // `int((p * torch.arange(100000)).sum())`: checks every position.
        let weighted: u64 = p
            .iter()
            .enumerate()
            .map(|(i, &v)| i as u64 * v as u64)
            .sum();
        assert_eq!(weighted, 249_799_424_245_343);
        assert_eq!(torch_randperm(1, 7).unwrap(), [0]);
        assert!(torch_randperm(0, 7).unwrap().is_empty());
        assert!(torch_randperm(TORCH_RANDPERM_MAX + 1, 7).is_err());
    }

    #[test]
    fn ratio_counts_follow_recbole() {
        assert_eq!(ratio_counts(100), (80, 10, 10));
        assert_eq!(ratio_counts(25), (21, 2, 2));
        assert_eq!(ratio_counts(9), (7, 1, 1));
        assert_eq!(ratio_counts(3), (1, 1, 1));
        assert_eq!(ratio_counts(2), (1, 0, 1));
        assert_eq!(ratio_counts(1), (1, 0, 0));
        assert_eq!(ratio_counts(0), (0, 0, 0));
    }

    #[test]
    fn ratio_recbole_cuts_each_user_in_torch_shuffle_order() {
        let ds = dataset(30, 12, false);
        let split = Split::make(&ds, SplitKind::RatioRecbole, 2020).unwrap();
        assert_eq!(
            split,
            Split::make(&ds, SplitKind::RatioRecbole, 2020).unwrap()
        );
        // By hand: the interactions in the order they were read, shuffled by torch's
        // permutation, grouped by user in that order and cut by `ratio_counts`.
        let order = ds.source_order.as_ref().unwrap();
        let mut read: Vec<(u32, u32)> = vec![(0, 0); ds.matrix.nnz()];
        for u in 0..ds.matrix.n_users() {
            let start = ds.matrix.indptr()[u] as usize;
            for (k, &i) in ds.matrix.row(u).iter().enumerate() {
                read[order[start + k] as usize] = (u as u32, i);
            }
        }
        let mut per_user: Vec<Vec<u32>> = vec![Vec::new(); ds.matrix.n_users()];
        for p in torch_randperm(read.len(), 2020).unwrap() {
            let (u, i) = read[p as usize];
            per_user[u as usize].push(i);
        }
        for (u, items) in per_user.iter().enumerate() {
            let (a, b, _) = ratio_counts(items.len());
            let sorted = |s: &[u32]| {
                let mut v = s.to_vec();
                v.sort_unstable();
                v
            };
            assert_eq!(split.train.row(u), sorted(&items[..a]));
            assert_eq!(split.valid.row(u), sorted(&items[a..a + b]));
            assert_eq!(split.test.row(u), sorted(&items[a + b..]));
        }
        assert_ne!(
            split.test,
            Split::make(&ds, SplitKind::RatioRecbole, 2021)
                .unwrap()
                .test
        );
        // A dataset that does not know its read order cannot be split this way.
        let mut no_order = ds.clone();
        no_order.source_order = None;
        let err = Split::make(&no_order, SplitKind::RatioRecbole, 2020).unwrap_err();
        assert!(err.to_string().contains("ratio-recbole"), "{err}");
    }

    #[test]
    fn ratio_split_partitions_each_user_and_is_deterministic() {
        let ds = dataset(50, 20, false);
        let a = Split::make(&ds, SplitKind::Ratio, 2020).unwrap();
        let b = Split::make(&ds, SplitKind::Ratio, 2020).unwrap();
        let c = Split::make(&ds, SplitKind::Ratio, 2021).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.train, c.train);
        for u in 0..ds.matrix.n_users() {
            let whole = a.train.union(&a.valid).union(&a.test);
            assert_eq!(whole.row(u), ds.matrix.row(u));
            let n = ds.matrix.row_len(u);
            let (t, v, s) = ratio_counts(n);
            assert_eq!(
                (a.train.row_len(u), a.valid.row_len(u), a.test.row_len(u)),
                (t, v, s)
            );
        }
        assert_eq!(a.input, a.train);
    }

    #[test]
    fn ratio_split_is_independent_of_thread_count() {
        let ds = dataset(80, 15, false);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| Split::make(&ds, SplitKind::Ratio, 7).unwrap())
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn users_split_never_puts_targets_in_the_input() {
        let ds = dataset(100, 12, false);
        let s = Split::make(&ds, SplitKind::Users, 3).unwrap();
        let mut heldout = 0;
        for u in 0..ds.matrix.n_users() {
            let targets = s.valid.union(&s.test);
            for &i in targets.row(u) {
                assert!(
                    !s.input.contains(u, i),
                    "target {i} of user {u} leaked into input"
                );
            }
            if s.train.row_len(u) == 0 {
                heldout += 1;
                let n = ds.matrix.row_len(u);
                assert_eq!(targets.row_len(u), (n as f64 * 0.2) as usize);
                assert_eq!(s.input.row_len(u) + targets.row_len(u), n);
            } else {
                assert_eq!(s.valid.row_len(u) + s.test.row_len(u), 0);
            }
        }
        assert_eq!(heldout, 20);
    }

    #[test]
    fn temporal_split_keeps_the_future_out_of_training() {
        let ds = dataset(30, 20, true);
        let s = Split::make(&ds, SplitKind::Temporal, 0).unwrap();
        let ts = ds.timestamps.as_ref().unwrap();
        let time = |u: usize, i: u32| {
            let k = ds.matrix.row(u).binary_search(&i).unwrap();
            ts[ds.matrix.indptr()[u] as usize + k]
        };
        for u in 0..ds.matrix.n_users() {
            let latest_train = s.train.row(u).iter().map(|&i| time(u, i)).max().unwrap();
            for &i in s.valid.row(u).iter().chain(s.test.row(u)) {
                assert!(time(u, i) >= latest_train);
            }
        }
        let g = Split::make(&ds, SplitKind::TemporalGlobal, 0).unwrap();
        let max_train = (0..30)
            .flat_map(|u| g.train.row(u).iter().map(move |&i| (u, i)))
            .map(|(u, i)| time(u, i))
            .max()
            .unwrap();
        let min_test = (0..30)
            .flat_map(|u| g.test.row(u).iter().map(move |&i| (u, i)))
            .map(|(u, i)| time(u, i))
            .min()
            .unwrap();
        assert!(min_test > max_train);
        assert!(Split::make(&dataset(5, 5, false), SplitKind::Temporal, 0).is_err());
    }

    #[test]
    fn split_directory_round_trips() {
        let ds = dataset(40, 10, false);
        let dir = tempfile::tempdir().unwrap();
        for kind in [SplitKind::Ratio, SplitKind::Users] {
            let s = Split::make(&ds, kind, 11).unwrap();
            let info = s.info(&ds.fingerprint());
            let path = dir.path().join(kind.name());
            s.save_dir(&path, &ds, &info).unwrap();
            let back = Split::load_dir(&path, Some(&ds)).unwrap();
            assert_eq!(back.split, s);
            assert_eq!(back.info, info);
            // Without the dataset, the saved catalogue order gives every index back.
            let free = Split::load_dir(&path, None).unwrap();
            assert_eq!(free.split, s);
            assert_eq!(free.items.len(), ds.items.len());
            // Without it too (another tool's directory), ids are interned from the files;
            // the parts still match by id.
            std::fs::remove_file(path.join(ITEMS_FILE)).unwrap();
            let rebuilt = Split::load_dir(&path, None).unwrap();
            assert_eq!(rebuilt.split.test.nnz(), s.test.nnz());
        }
        // A duplicated id in the catalogue list is an error naming the file.
        let path = dir.path().join(SplitKind::Ratio.name());
        std::fs::write(path.join(ITEMS_FILE), "a\nb\na\n").unwrap();
        std::fs::write(path.join(USERS_FILE), "u0\n").unwrap();
        let err = Split::load_dir(&path, None).unwrap_err().to_string();
        assert!(err.contains(ITEMS_FILE), "{err}");
    }

    /// The binary twin gives what the text gives, and only while the text, `split.json` and
    /// the catalogue are the ones it was made from; a damaged twin is passed over.
    #[test]
    fn binary_twin_answers_only_for_unchanged_text() {
        let ds = dataset(40, 10, false);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let s = Split::make(&ds, SplitKind::Users, 5).unwrap();
        let info = s.info(&ds.fingerprint());
        s.save_dir(path, &ds, &info).unwrap();
        let twin = path.join(split_cache::FILE_NAME);
        assert!(split_cache::load(path, &ds.users, &ds.items).is_some());
        let back = Split::load_dir(path, Some(&ds)).unwrap();
        assert_eq!((&back.split, &back.info), (&s, &info));
        // Parsed from the text alone: the same split.
        std::fs::remove_file(&twin).unwrap();
        let parsed = Split::load_dir(path, None).unwrap();
        assert_eq!(parsed.split, s);
        // ... and the twin is written again for the next load.
        assert!(split_cache::load(path, &ds.users, &ds.items).is_some());
        // Another catalogue order: the indices would mean other items.
        let mut ids = ds.items.ids().to_vec();
        ids.reverse();
        let reversed = IdMap::from_ids(ids).unwrap();
        assert!(split_cache::load(path, &ds.users, &reversed).is_none());
        // A line taken out of train.tsv: the twin stands down and the edit is seen.
        let train = path.join("train.tsv");
        let text = std::fs::read_to_string(&train).unwrap();
        let last = text.trim_end().rfind('\n').unwrap();
        std::fs::write(&train, &text[..=last]).unwrap();
        assert!(split_cache::load(path, &ds.users, &ds.items).is_none());
        let edited = Split::load_dir(path, Some(&ds)).unwrap();
        assert_eq!(edited.split.train.nnz(), s.train.nnz() - 1);
        assert_eq!(
            split_cache::load(path, &ds.users, &ds.items).unwrap().train,
            edited.split.train
        );
        // split.json is a source too.
        let json = path.join("split.json");
        let mut changed = info.clone();
        changed.seed = 6;
        std::fs::write(&json, serde_json::to_string(&changed).unwrap()).unwrap();
        assert!(split_cache::load(path, &ds.users, &ds.items).is_none());
        assert_eq!(Split::load_dir(path, Some(&ds)).unwrap().split.seed, 6);
        // A damaged twin (one byte flipped in the arrays): the text is read instead.
        let mut bytes = std::fs::read(&twin).unwrap();
        let at = bytes.len() - 40;
        bytes[at] ^= 0x5a;
        std::fs::write(&twin, &bytes).unwrap();
        assert!(split_cache::load(path, &ds.users, &ds.items).is_none());
        let again = Split::load_dir(path, Some(&ds)).unwrap().split;
        assert_eq!(
            again,
            Split {
                seed: 6,
                ..edited.split
            }
        );
    }

    #[test]
    fn split_directory_errors_name_file_and_line() {
        let ds = dataset(5, 6, false);
        let s = Split::make(&ds, SplitKind::Ratio, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        s.save_dir(dir.path(), &ds, &s.info("x")).unwrap();
        std::fs::write(dir.path().join("test.tsv"), "user_id\titem_id\nu1\tnope\n").unwrap();
        let err = Split::load_dir(dir.path(), Some(&ds))
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.tsv:2") && err.contains("nope"), "{err}");
        std::fs::write(dir.path().join("test.tsv"), "").unwrap();
        let err = Split::load_dir(dir.path(), Some(&ds))
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty file"), "{err}");
    }
}
