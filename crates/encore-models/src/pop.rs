//! Pop: every user gets the items ranked by training popularity (MODELS.md "Pop"). The floor
//! every model must beat.

use std::path::Path;

use encore_data::InteractionMatrix;

use crate::{ModelError, Recommender};

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
        std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
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
