//! Pop: every user gets the items ranked by training popularity (MODELS.md "Pop"). The floor
//! every model must beat.

use std::path::Path;

use encore_data::InteractionMatrix;

use encore_core::registry::{self, FitInput, Fitted, ModelEntry, ResolvedModel};
use encore_core::{ModelError, Recommender};

/// Pop's registry entry. Pop has no configuration: `--set` is refused, and a config file may
/// only name the model (`model = "pop"`, what a Pop run records in `config.toml`).
pub fn entry() -> ModelEntry {
    ModelEntry {
        name: "pop",
        summary: "item popularity: the floor every model must beat",
        resolve: |file, sets, _seed| {
            if !sets.is_empty() {
                return Err(ModelError::config(
                    sets[0].split('=').next().unwrap_or("").trim(),
                    "pop has no configuration: drop --set",
                ));
            }
            if let Some(file) = file {
                let text = std::fs::read_to_string(file).map_err(|e| ModelError::io(file, e))?;
                let table: toml::Table = text.parse().map_err(|e| {
                    ModelError::format(file, format!("not a valid TOML document: {e}"))
                })?;
                if let Some(key) = table.keys().find(|k| *k != "model") {
                    return Err(ModelError::config(
                        key.as_str(),
                        "pop has no configuration: only `model = \"pop\"` may be given",
                    ));
                }
                if table
                    .get("model")
                    .and_then(|v| v.as_str())
                    .is_some_and(|m| m != "pop")
                {
                    return Err(ModelError::config(
                        "model",
                        "this configuration is not for `pop`",
                    ));
                }
            }
            Ok(Box::new(PopConfig))
        },
        load: |dir| Ok(Box::new(Pop::load(dir)?)),
    }
}

/// Pop's (empty) resolved configuration.
struct PopConfig;

impl ResolvedModel for PopConfig {
    fn to_toml(&self) -> Result<String, ModelError> {
        Ok("model = \"pop\"\n".to_string())
    }

    fn fit(&self, input: FitInput<'_>) -> Result<Fitted, ModelError> {
        registry::saved(Pop::fit(input.train), input.run_dir)
    }
}

/// Item popularity (number of training users per item) as the score for everyone.
#[derive(Debug, Clone, PartialEq)]
pub struct Pop {
    scores: Vec<f32>,
}

impl Pop {
    /// Count each item's training users.
    pub fn fit(train: &InteractionMatrix) -> Self {
        Self {
            scores: train.item_counts().into_iter().map(|c| c as f32).collect(),
        }
    }

    /// Load what [`Recommender::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("pop.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let scores: Vec<f32> = serde_json::from_str(&text).map_err(|e| {
            ModelError::format(&path, format!("expected a JSON array of counts: {e}"))
        })?;
        Ok(Self { scores })
    }

    /// The popularity of each item.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }
}

impl Recommender for Pop {
    fn name(&self) -> &'static str {
        "pop"
    }

    fn n_items(&self) -> usize {
        self.scores.len()
    }

    fn score_users(&self, users: &[u32], _input: &InteractionMatrix, out: &mut [f32]) {
        for row in out.chunks_exact_mut(self.scores.len()).take(users.len()) {
            row.copy_from_slice(&self.scores);
        }
    }

    fn score_history(&self, history: &[u32], out: &mut [f32]) -> Result<(), ModelError> {
        if let Some(&bad) = history.iter().find(|&&i| i as usize >= self.scores.len()) {
            return Err(ModelError::Input(format!(
                "item index {bad} is outside the catalogue of {} items",
                self.scores.len()
            )));
        }
        out.copy_from_slice(&self.scores);
        Ok(())
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join("pop.json");
        let text = serde_json::to_string(&self.scores).expect("f32 vector serialises");
        Ok(encore_io::write_bytes(&path, text.as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_training_counts() {
        let train = InteractionMatrix::from_rows(3, &[vec![0, 2], vec![2], vec![1, 2]]);
        let pop = Pop::fit(&train);
        assert_eq!(pop.scores(), &[1.0, 1.0, 3.0]);
        let mut out = vec![0.0; 6];
        pop.score_users(&[0, 1], &train, &mut out);
        assert_eq!(out, vec![1.0, 1.0, 3.0, 1.0, 1.0, 3.0]);
        assert!(pop.score_history(&[7], &mut [0.0; 3]).is_err());
    }
}
