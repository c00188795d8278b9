//! Embedding options: pooling, normalisation, batch size and maximum length (SPEC §3, "Text
//! (lyrics) embedding ... mean-pooled (and CLS, selectable), batched").

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Result, TextError};

/// How the token states of a text become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Mean over the text's real tokens (special tokens included, padding excluded), as
    /// sentence-transformers' `pooling_mode_mean_tokens` does. The SPEC's default.
    #[default]
    Mean,
    /// The final hidden state of the first token (`[CLS]`), without BERT's pooler layer
    /// (sentence-transformers' `pooling_mode_cls_token`).
    Cls,
}

impl FromStr for Pooling {
    type Err = TextError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            _ => Err(TextError::parameter(
                "pooling",
                format!("expected \"mean\" or \"cls\", found {s:?}"),
            )),
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        })
    }
}

/// Options of [`crate::TextEncoder`].
///
/// The default is mean pooling followed by L2 normalisation, batches of
/// [`DEFAULT_BATCH_SIZE`] texts, and the model's own maximum length: exactly what
/// sentence-transformers computes for `all-MiniLM-L6-v2`, whose `modules.json` is
/// Transformer → Pooling (mean) → Normalize. A plain BERT folder (e.g. `bert-base-uncased`, the
/// paper's encoder) has no `modules.json`; [`EmbedOptions::from_model_dir`] reads the folder and
/// gives mean pooling *without* normalisation there, which is what "mean-pooled BERT" means in
/// the paper. Downstream PCA (SPEC §3) centres the columns either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Mean or CLS pooling.
    pub pooling: Pooling,
    /// Divide each embedding by its L2 norm (as sentence-transformers' `Normalize` module).
    pub normalize: bool,
    /// Texts per forward pass. Texts are sorted by token length first, so a batch holds texts
    /// of similar length and little padding.
    pub batch_size: usize,
    /// Tokens per text, special tokens included; longer texts are truncated (and counted).
    /// `None`: the model's own maximum, i.e. sentence-transformers' `max_seq_length` from
    /// `sentence_bert_config.json` when the folder has one, else `max_position_embeddings`
    /// from `config.json`.
    pub max_length: Option<usize>,
}

/// Default texts per batch: at or near the best CPU efficiency for short and long texts with
/// all-MiniLM-L6-v2 on a 2-core CPU (measurements in the crate docs; `examples/throughput.rs`).
pub const DEFAULT_BATCH_SIZE: usize = 32;

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            pooling: Pooling::Mean,
            normalize: true,
            batch_size: DEFAULT_BATCH_SIZE,
            max_length: None,
        }
    }
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

impl EmbedOptions {
    /// Options that reproduce what sentence-transformers would compute for the model folder
    /// `dir`: pooling from the `sentence_transformers.models.Pooling` module's `config.json`
    /// and normalisation iff `modules.json` lists a `Normalize` module. A folder without
    /// `modules.json` (a plain Hugging Face BERT) gets mean pooling without normalisation.
    /// The batch size is [`DEFAULT_BATCH_SIZE`] and the maximum length the model's own.
    ///
    /// Errors: a malformed `modules.json` or pooling config, or a pooling mode this crate does
    /// not implement (max, mean-sqrt-len), naming the file.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let mut opts = EmbedOptions {
            normalize: false,
            ..EmbedOptions::default()
        };
        let modules_path = dir.join("modules.json");
        let text = match std::fs::read_to_string(&modules_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(opts),
            Err(e) => return Err(TextError::io(&modules_path, e)),
        };
        let modules: Vec<ModuleEntry> = serde_json::from_str(&text).map_err(|e| {
            TextError::format(
                &modules_path,
                format!("expected a JSON list of {{\"type\", \"path\"}} modules: {e}"),
            )
        })?;
        for m in &modules {
            if m.kind.ends_with(".Normalize") {
                opts.normalize = true;
            } else if m.kind.ends_with(".Pooling") {
                let cfg_path = dir.join(&m.path).join("config.json");
                let text =
                    std::fs::read_to_string(&cfg_path).map_err(|e| TextError::io(&cfg_path, e))?;
                let cfg: PoolingConfig = serde_json::from_str(&text).map_err(|e| {
                    TextError::format(&cfg_path, format!("malformed pooling config: {e}"))
                })?;
                opts.pooling =
                    match (
                        cfg.pooling_mode_mean_tokens,
                        cfg.pooling_mode_cls_token,
                        cfg.pooling_mode_max_tokens || cfg.pooling_mode_mean_sqrt_len_tokens,
                    ) {
                        (true, false, false) => Pooling::Mean,
                        (false, true, false) => Pooling::Cls,
                        _ => return Err(TextError::format(
                            &cfg_path,
                            "pooling mode not supported: exactly one of pooling_mode_mean_tokens \
                             and pooling_mode_cls_token must be true (max and mean-sqrt-len \
                             pooling are not implemented); choose --pooling mean|cls instead",
                        )),
                    };
            }
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_parses_and_prints() {
        assert_eq!("mean".parse::<Pooling>().unwrap(), Pooling::Mean);
        assert_eq!(" CLS ".parse::<Pooling>().unwrap(), Pooling::Cls);
        assert_eq!(Pooling::Cls.to_string(), "cls");
        assert_eq!(
            Pooling::Mean.to_string().parse::<Pooling>().unwrap(),
            Pooling::Mean
        );
        let err = "max".parse::<Pooling>().unwrap_err().to_string();
        assert!(err.contains("pooling") && err.contains("\"max\""), "{err}");
    }

    #[test]
    fn options_from_model_dir() {
        let dir = tempfile::tempdir().unwrap();
        // No modules.json: plain BERT, mean pooling, no normalisation.
        let o = EmbedOptions::from_model_dir(dir.path()).unwrap();
        assert_eq!((o.pooling, o.normalize), (Pooling::Mean, false));

        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(
            dir.path().join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true,
                "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        let o = EmbedOptions::from_model_dir(dir.path()).unwrap();
        assert_eq!((o.pooling, o.normalize), (Pooling::Cls, true));

        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"pooling_mode_max_tokens": true}"#,
        )
        .unwrap();
        let err = EmbedOptions::from_model_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1_Pooling") && err.contains("not supported"),
            "{err}"
        );

        std::fs::write(dir.path().join("modules.json"), "{").unwrap();
        let err = EmbedOptions::from_model_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("modules.json"), "{err}");
    }
}
