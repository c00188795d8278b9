//! One trained run, loaded to answer queries: top-k for a known user, top-k for a posted
//! history (fold-in), similar items, catalogue search and the batch export of every user's
//! list. The service and `encore recommend` both go through [`ServedRun`], so that the command
//! line and the HTTP API give the same items in the same order with the same scores.
//!
//! Policies (SPEC §7, issue #15):
//! - Recommendations never include what the listener already heard: a known user's input,
//!   validation and test items; a posted history's items; and any items the caller excludes.
//! - A posted history is a set: ids are looked up in the run's catalogue, unknown ids are
//!   skipped and reported ([`History::ignored`]), repeats count once. A history with no known
//!   item cannot be folded in (the caller answers with an error).
//! - Ranking: higher score first, equal scores by the lower item index (the evaluator's
//!   [`TopK`], so an exported list is the list the evaluator ranks).

use std::io::Write;
use std::path::{Path, PathBuf};

use encore_core::conditioning::ConditioningKind;
use encore_core::registry::{self, ModelEntry};
use encore_core::run::{self, LoadedRun, RunInfo, RunMetrics};
use encore_core::{ItemRepresentation, ModelError, Recommender};
use encore_data::{Dataset, Split};
use encore_eval::TopK;
use rayon::prelude::*;

/// One recommended (or similar) item: its index in the run's catalogue and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub item: u32,
    pub score: f32,
}

/// One fold-in to answer: a history's known items (ascending, unique), the items to leave
/// out besides them, and how many to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldIn {
    pub history: Vec<u32>,
    pub exclude: Vec<u32>,
    pub k: usize,
}

/// A posted history looked up in the catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The known items, ascending, each once.
    pub items: Vec<u32>,
    /// The ids that are not in the catalogue, in the order given, each once.
    pub ignored: Vec<String>,
}

/// Which part of the split a batch export ranks for, and so which items it excludes
/// (EVALUATION.md "Protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportPart {
    /// Test: the model input and the validation items are excluded.
    Test,
    /// Validation: the model input is excluded.
    Valid,
}

/// What a batch export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub users: usize,
    pub lines: u64,
}

/// A run directory loaded for answering queries.
pub struct ServedRun {
    /// The name the service knows the run by.
    pub name: String,
    pub dir: PathBuf,
    pub info: RunInfo,
    pub dataset: Dataset,
    pub split: Split,
    pub model: Box<dyn Recommender>,
    /// `metrics.json`, when the run has one.
    pub metrics: Option<RunMetrics>,
    /// The conditioning kind of a conditioned model.
    pub conditioning: Option<ConditioningKind>,
    /// Lower-cased item labels (name, or id when unnamed) and ids, for search.
    search_labels: Vec<String>,
    /// Training users per item: the order of search results.
    popularity: Vec<u64>,
}

impl ServedRun {
    /// Load the run in `dir` through the run lifecycle ([`run::load`]) and its model through
    /// the registry entry named in `run.json` ([`LoadedRun::model`]): the loading of
    /// `encore evaluate --run` and `encore recommend --run`.
    pub fn load(name: &str, dir: &Path, registry: &[ModelEntry]) -> Result<ServedRun, ModelError> {
        let loaded = run::load(dir)?;
        let entry = registry::find(registry, &loaded.info.model)?;
        let model = loaded.model(entry)?;
        let conditioning = loaded.config(entry)?.conditioning().map(|(kind, _)| kind);
        let metrics_path = dir.join(run::METRICS_FILE);
        let metrics = if metrics_path.exists() {
            Some(encore_io::read_json(&metrics_path)?)
        } else {
            None
        };
        Ok(ServedRun::new(name, loaded, model, metrics, conditioning))
    }

    /// A served run from a loaded run and its model.
    pub fn new(
        name: &str,
        loaded: LoadedRun,
        model: Box<dyn Recommender>,
        metrics: Option<RunMetrics>,
        conditioning: Option<ConditioningKind>,
    ) -> ServedRun {
        let LoadedRun {
            dir,
            info,
            dataset,
            split,
        } = loaded;
        let search_labels = (0..dataset.items.len() as u32)
            .map(|i| {
                let label = dataset.item_label(i);
                let id = dataset.items.id(i);
                if label == id {
                    id.to_lowercase()
                } else {
                    format!("{}\u{1f}{}", label.to_lowercase(), id.to_lowercase())
                }
            })
            .collect();
        let popularity = split.train.item_counts();
        ServedRun {
            name: name.to_string(),
            dir,
            info,
            dataset,
            split,
            model,
            metrics,
            conditioning,
            search_labels,
            popularity,
        }
    }

    /// Catalogue size.
    pub fn n_items(&self) -> usize {
        self.model.n_items()
    }

    /// The item's external id.
    pub fn item_id(&self, item: u32) -> &str {
        self.dataset.items.id(item)
    }

    /// The item's name, when the dataset has one.
    pub fn item_name(&self, item: u32) -> Option<&str> {
        self.dataset
            .item_names
            .as_ref()
            .map(|n| n[item as usize].as_str())
            .filter(|n| !n.is_empty())
    }

    /// Training users of the item.
    pub fn popularity(&self, item: u32) -> u64 {
        self.popularity[item as usize]
    }

    /// Look up a posted history (module docs: unknown ids skipped and reported, repeats once).
    pub fn resolve_history<S: AsRef<str>>(&self, ids: &[S]) -> History {
        let mut items = Vec::with_capacity(ids.len());
        let mut ignored: Vec<String> = Vec::new();
        for id in ids {
            let id = id.as_ref().trim();
            match self.dataset.items.get(id) {
                Some(i) => items.push(i),
                None => {
                    if !ignored.iter().any(|x| x == id) {
                        ignored.push(id.to_string());
                    }
                }
            }
        }
        items.sort_unstable();
        items.dedup();
        History { items, ignored }
    }

    /// Known item indices of `ids`, ascending and unique; unknown ids are dropped.
    pub fn known_items<S: AsRef<str>>(&self, ids: &[S]) -> Vec<u32> {
        self.resolve_history(ids).items
    }

    /// The top `k` items for a listener described by `history` (known items, ascending and
    /// unique, as [`ServedRun::resolve_history`] gives them), folded in by the model,
    /// excluding the history itself and `exclude`.
    pub fn recommend_history(
        &self,
        history: &[u32],
        exclude: &[u32],
        k: usize,
    ) -> Result<Vec<Scored>, ModelError> {
        let mut scores = vec![0f32; self.n_items()];
        self.model.score_history(history, &mut scores)?;
        Ok(top_k(&scores, &merged(&[history, exclude]), k))
    }

    /// [`ServedRun::recommend_history`] for several listeners at once (the service's waiting
    /// fold-ins): each answer is exactly the one its listener gets alone, while the model
    /// shares the work between them ([`Recommender::score_histories`]).
    pub fn recommend_histories(&self, jobs: &[FoldIn]) -> Result<Vec<Vec<Scored>>, ModelError> {
        let n = self.n_items();
        let histories: Vec<&[u32]> = jobs.iter().map(|j| j.history.as_slice()).collect();
        let mut scores = vec![0f32; jobs.len() * n];
        self.model.score_histories(&histories, &mut scores)?;
        Ok(jobs
            .iter()
            .zip(scores.chunks(n.max(1)))
            .map(|(j, row)| top_k(row, &merged(&[&j.history, &j.exclude]), j.k))
            .collect())
    }

    /// The top `k` items for the dataset's user `user` (an index), scored from the user's
    /// model input, excluding everything the user heard (input, validation and test items)
    /// and `exclude`.
    pub fn recommend_user(&self, user: u32, exclude: &[u32], k: usize) -> Vec<Scored> {
        let mut scores = vec![0f32; self.n_items()];
        self.model
            .score_users(&[user], &self.split.input, &mut scores);
        let s = &self.split;
        let u = user as usize;
        let heard = merged(&[row(&s.input, u), row(&s.valid, u), row(&s.test, u), exclude]);
        top_k(&scores, &heard, k)
    }

    /// What the model compares items by, or `None` when it has no item representation.
    pub fn item_representation(&self) -> Option<ItemRepresentation<'_>> {
        self.model.item_representation()
    }

    /// The `k` items most similar to `item` by the model's item representation (the item
    /// itself left out); `None` when the model has none.
    pub fn similar_items(&self, item: u32, k: usize) -> Option<Vec<Scored>> {
        let repr = self.model.item_representation()?;
        let mut sims = vec![0f32; self.n_items()];
        repr.similarities(item, &mut sims);
        Some(top_k(&sims, &[item], k))
    }

    /// Catalogue search: items whose name or id contains `query` (case-insensitive), those
    /// whose name starts with it first, then by training popularity, then by index; an empty
    /// query lists the most popular items. Returns the first `limit` and the number of
    /// matches.
    pub fn search(&self, query: &str, limit: usize) -> (Vec<u32>, usize) {
        let q = query.trim().to_lowercase();
        let mut hits: Vec<(bool, u64, u32)> = self
            .search_labels
            .iter()
            .enumerate()
            .filter(|(_, label)| label.contains(&q))
            .map(|(i, label)| (!label.starts_with(&q), self.popularity[i], i as u32))
            .collect();
        let total = hits.len();
        let key = |h: &(bool, u64, u32)| (h.0, std::cmp::Reverse(h.1), h.2);
        if limit < hits.len() {
            hits.select_nth_unstable_by_key(limit, key);
            hits.truncate(limit);
        }
        hits.sort_unstable_by_key(key);
        (hits.into_iter().map(|h| h.2).collect(), total)
    }

    /// Write every user's top `k` for `part` (excluding what the protocol excludes there) as
    /// `user_id<TAB>item_id<TAB>rank<TAB>score` lines under that header, users in index
    /// order: the format `encore evaluate --recommendations` reads. `progress` is called with
    /// the number of users just written.
    pub fn export_all_users(
        &self,
        part: ExportPart,
        k: usize,
        out: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> std::io::Result<ExportSummary> {
        /// Users scored per batch: bounds the score buffer at this many rows x items.
        const BATCH: usize = 256;
        let s = &self.split;
        let n_items = self.n_items();
        let n_users = s.input.n_users();
        writeln!(out, "user_id\titem_id\trank\tscore")?;
        let mut lines = 0u64;
        let mut scores = vec![0f32; BATCH * n_items];
        let users: Vec<u32> = (0..n_users as u32).collect();
        for batch in users.chunks(BATCH) {
            let scores = &mut scores[..batch.len() * n_items];
            self.model.score_users(batch, &s.input, scores);
            let lists: Vec<Vec<Scored>> = batch
                .par_iter()
                .zip(scores.par_chunks(n_items))
                .map(|(&u, row_scores)| {
                    let u = u as usize;
                    let excluded = match part {
                        ExportPart::Test => merged(&[row(&s.input, u), row(&s.valid, u)]),
                        ExportPart::Valid => row(&s.input, u).to_vec(),
                    };
                    top_k(row_scores, &excluded, k)
                })
                .collect();
            for (&u, list) in batch.iter().zip(&lists) {
                let user_id = self.dataset.users.id(u);
                for (rank, r) in list.iter().enumerate() {
                    writeln!(
                        out,
                        "{user_id}\t{}\t{}\t{}",
                        self.item_id(r.item),
                        rank + 1,
                        r.score
                    )?;
                }
                lines += list.len() as u64;
            }
            progress(batch.len() as u64);
        }
        Ok(ExportSummary {
            users: n_users,
            lines,
        })
    }
}

/// A user's row of `m`, empty beyond its rows.
fn row(m: &encore_data::InteractionMatrix, u: usize) -> &[u32] {
    if u < m.n_users() {
        m.row(u)
    } else {
        &[]
    }
}

/// The union of several lists of item indices, ascending and unique.
fn merged(lists: &[&[u32]]) -> Vec<u32> {
    let mut all: Vec<u32> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The best `k` items of `scores` with their scores, `excluded` (ascending, unique) left out,
/// in the evaluator's ranking order.
pub fn top_k(scores: &[f32], excluded: &[u32], k: usize) -> Vec<Scored> {
    let mut top = TopK::new(k.min(scores.len()));
    top.select(scores, excluded);
    top.items()
        .iter()
        .map(|&item| Scored {
            item,
            score: scores[item as usize],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_breaks_ties_by_the_lower_index_and_skips_exclusions() {
        let scores = [0.5, 0.9, 0.5, 0.1, 0.9];
        let got: Vec<u32> = top_k(&scores, &[1], 3).iter().map(|s| s.item).collect();
        assert_eq!(got, [4, 0, 2]);
        assert_eq!(top_k(&scores, &[], 10).len(), 5);
        assert_eq!(top_k(&scores, &[0, 1, 2, 3, 4], 3), []);
    }

    #[test]
    fn merged_lists_are_sorted_and_unique() {
        assert_eq!(merged(&[&[5, 1], &[1, 3], &[]]), [1, 3, 5]);
    }
}
