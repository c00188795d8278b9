//! The BERT sentence encoder (SPEC §3, "Text (lyrics) embedding"): a local Hugging Face model
//! folder (`config.json`, `tokenizer.json`, `model.safetensors`), candle's `models::bert` on the
//! CPU, dynamic padding with an attention mask, and mean or CLS pooling.
//!
//! What sentence-transformers does, and what this module reproduces (checked against its output
//! for `all-MiniLM-L6-v2` to cosine ≥ 0.99999 in the tests): tokenize with special tokens,
//! truncate to `max_seq_length` tokens (special tokens included), pad a batch to its longest
//! text, run the transformer with the padding masked out of attention, average the final
//! hidden states over the attention mask (or take the first token's), and, if the folder's
//! `modules.json` says so, L2-normalise.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use encore_data::features::FeatureTable;
use indicatif::ProgressBar;
use serde::Deserialize;
use tokenizers::{Encoding, PaddingParams, PostProcessor, Tokenizer, TruncationDirection};

use crate::error::{Result, TextError};
use crate::options::{EmbedOptions, Pooling};

/// Embeddings of a list of texts, in the order the texts were given.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Width of each embedding (the model's hidden size).
    pub dim: usize,
    /// Row-major `texts x dim`.
    pub values: Vec<f32>,
    /// How many texts were longer than the maximum length and were cut.
    pub truncated: usize,
}

impl Embeddings {
    /// Number of embedded texts.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether no text was embedded.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The embedding of text `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// A BERT-family sentence encoder loaded from a local folder. Cheap to share across threads
/// (`&self` everywhere); the weights are held in memory.
pub struct TextEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    dir: PathBuf,
    dim: usize,
    max_length: usize,
    /// Special tokens the tokenizer adds to a single text ([CLS] and [SEP] for BERT).
    special: usize,
    pad_id: u32,
    opts: EmbedOptions,
    device: Device,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .field("max_length", &self.max_length)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The part of sentence-transformers' `sentence_bert_config.json` the encoder uses.
#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

impl TextEncoder {
    /// Load the encoder from `dir`, which must hold `config.json` (a BERT config),
    /// `tokenizer.json` (a Hugging Face fast-tokenizer file) and `model.safetensors`; an
    /// optional `sentence_bert_config.json` sets the default maximum length. Nothing is
    /// fetched from a hub.
    ///
    /// The tokenizer's own truncation and padding settings are replaced: truncation at
    /// [`TextEncoder::max_length`] (sentence-transformers ignores the 128 stored in MiniLM's
    /// `tokenizer.json` too) and padding per batch by [`TextEncoder::embed`].
    ///
    /// Errors name the missing or malformed file, or the bad option.
    pub fn load(dir: &Path, opts: EmbedOptions) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(TextError::parameter(
                "batch_size",
                "must be at least 1, found 0",
            ));
        }
        let meta = std::fs::metadata(dir).map_err(|e| TextError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(TextError::format(
                dir,
                "expected a model folder holding config.json, tokenizer.json and \
                 model.safetensors, found a file",
            ));
        }

        let cfg_path = dir.join("config.json");
        let config = read_bert_config(&cfg_path)?;

        let st_path = dir.join("sentence_bert_config.json");
        let st_max = match std::fs::read_to_string(&st_path) {
            Ok(text) => {
                serde_json::from_str::<SentenceBertConfig>(&text)
                    .map_err(|e| {
                        TextError::format(
                            &st_path,
                            format!("malformed sentence-transformers config: {e}"),
                        )
                    })?
                    .max_seq_length
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(TextError::io(&st_path, e)),
        };
        let positions = config.max_position_embeddings;
        let max_length = match opts.max_length {
            Some(n) if n > positions => {
                return Err(TextError::parameter(
                    "max_length",
                    format!(
                        "{n} exceeds the model's {positions} positions \
                         (max_position_embeddings in {})",
                        cfg_path.display()
                    ),
                ))
            }
            Some(n) => n,
            None => st_max.map_or(positions, |m| m.min(positions)),
        };

        let tok_path = dir.join("tokenizer.json");
        let tok_bytes = std::fs::read(&tok_path).map_err(|e| TextError::io(&tok_path, e))?;
        let mut tokenizer = Tokenizer::from_bytes(&tok_bytes).map_err(|e| {
            TextError::format(&tok_path, format!("not a Hugging Face tokenizer file: {e}"))
        })?;
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_length <= special {
            return Err(TextError::parameter(
                "max_length",
                format!(
                    "{max_length} leaves no room for text: the tokenizer adds {special} special \
                     tokens to every text"
                ),
            ));
        }
        // Truncation is done by `encode` (so that it can be counted exactly) and padding by
        // `forward`; the settings stored in tokenizer.json (MiniLM's: 128 tokens, fixed
        // padding) are not sentence-transformers' and are dropped.
        tokenizer.with_padding(None::<PaddingParams>);
        tokenizer
            .with_truncation(None)
            .map_err(|e| TextError::format(&tok_path, e.to_string()))?;
        let tok_vocab = tokenizer.get_vocab_size(true);
        if tok_vocab > config.vocab_size {
            return Err(TextError::format(
                &tok_path,
                format!(
                    "the tokenizer has {tok_vocab} tokens but the model's vocab_size in {} is \
                     {}: tokenizer and model do not belong together",
                    cfg_path.display(),
                    config.vocab_size
                ),
            ));
        }

        let w_path = dir.join("model.safetensors");
        let device = Device::Cpu;
        let bytes = std::fs::read(&w_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TextError::format(
                    &w_path,
                    "not found (weights must be in safetensors format; \
                     pytorch_model.bin is not read)",
                )
            } else {
                TextError::io(&w_path, e)
            }
        })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device).map_err(|e| {
            TextError::format(
                &w_path,
                format!("not a safetensors file: {}", candle_message(&e)),
            )
        })?;
        drop(bytes);
        let vb = VarBuilder::from_tensors(rename_legacy_layer_norm(tensors), DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| {
            TextError::format(
                &w_path,
                format!(
                    "weights do not match {}: {}",
                    cfg_path.display(),
                    candle_message(&e)
                ),
            )
        })?;

        Ok(Self {
            model,
            tokenizer,
            dir: dir.to_path_buf(),
            dim: config.hidden_size,
            max_length,
            special,
            pad_id: config.pad_token_id as u32,
            opts,
            device,
        })
    }

    /// Width of the embeddings (`hidden_size`): 384 for MiniLM-L6, 768 for bert-base.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens per text, special tokens included, after which a text is truncated.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The options the encoder was loaded with.
    pub fn options(&self) -> &EmbedOptions {
        &self.opts
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Embed texts in batches: texts are tokenized (truncated at [`Self::max_length`], and
    /// counted when they are), sorted by token count so that each batch pads little, run
    /// through the model with an attention mask, pooled, optionally normalised, and put back
    /// in the given order. An empty text is `[CLS] [SEP]`.
    ///
    /// The result does not depend on the batch size beyond float rounding (a text's tokens
    /// never attend to padding, and pooling skips it), and is deterministic.
    /// `progress`, if given, advances by one per text.
    pub fn embed(&self, texts: &[&str], progress: Option<&ProgressBar>) -> Result<Embeddings> {
        let (encodings, truncated) = self.encode(texts)?;
        let tokens: Vec<(&[u32], &[u32])> = encodings
            .iter()
            .map(|e| (e.get_ids(), e.get_type_ids()))
            .collect();
        // A BERT tokenizer always adds [CLS] and [SEP]; one without a post-processor turns an
        // empty text into no tokens at all, which has no mean and no first token.
        if let Some(i) = tokens.iter().position(|t| t.0.is_empty()) {
            return Err(self.encode_error(format!(
                "text {i} (0-based) {:?} has no tokens, and tokenizer.json adds no special \
                 tokens to stand in for it",
                texts[i].chars().take(80).collect::<String>()
            )));
        }

        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (tokens[i].0.len(), i));

        // Batches run one after another; candle spreads each batch's matrix products over
        // rayon's pool. Running batches in parallel instead was measured no faster on 2 cores
        // (see `examples/throughput.rs` and the crate docs).
        let d = self.dim;
        let mut values = vec![0f32; texts.len() * d];
        for batch in order.chunks(self.opts.batch_size) {
            let pooled = self.embed_batch(batch, &tokens)?;
            for (&i, row) in batch.iter().zip(pooled.chunks_exact(d)) {
                values[i * d..(i + 1) * d].copy_from_slice(row);
            }
            if let Some(pb) = progress {
                pb.inc(batch.len() as u64);
            }
        }
        Ok(Embeddings {
            dim: d,
            values,
            truncated,
        })
    }

    /// Embed the texts `batch` (indices into `tokens`) in one forward pass; row-major
    /// `batch.len() x dim`, pooled and, if asked, normalised.
    fn embed_batch(&self, batch: &[usize], tokens: &[(&[u32], &[u32])]) -> Result<Vec<f32>> {
        let d = self.dim;
        let rows: Vec<(&[u32], &[u32])> = batch.iter().map(|&i| tokens[i]).collect();
        let (states, seq) = self.forward(&rows).map_err(|e| {
            self.encode_error(format!(
                "model forward pass on texts {batch:?} (0-based): {}",
                candle_message(&e)
            ))
        })?;
        let mut pooled = vec![0f32; batch.len() * d];
        for (r, out) in pooled.chunks_exact_mut(d).enumerate() {
            let len = rows[r].0.len();
            let first = &states[r * seq * d..];
            match self.opts.pooling {
                Pooling::Cls => out.copy_from_slice(&first[..d]),
                Pooling::Mean => {
                    for t in 0..len {
                        for (o, &x) in out.iter_mut().zip(&first[t * d..(t + 1) * d]) {
                            *o += x;
                        }
                    }
                    let inv = 1.0 / len.max(1) as f32;
                    out.iter_mut().for_each(|o| *o *= inv);
                }
            }
            if self.opts.normalize {
                normalize(out);
            }
        }
        Ok(pooled)
    }

    /// Run the model on one batch of tokenized texts, right-padded to the longest with the
    /// config's `pad_token_id` and masked. Returns the final hidden states, row-major
    /// `rows x seq x dim`, and `seq`.
    pub(crate) fn forward(
        &self,
        rows: &[(&[u32], &[u32])],
    ) -> candle_core::Result<(Vec<f32>, usize)> {
        let b = rows.len();
        let seq = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut ids = vec![self.pad_id; b * seq];
        let mut types = vec![0u32; b * seq];
        let mut mask = vec![0u32; b * seq];
        for (r, (row_ids, row_types)) in rows.iter().enumerate() {
            ids[r * seq..r * seq + row_ids.len()].copy_from_slice(row_ids);
            types[r * seq..r * seq + row_types.len()].copy_from_slice(row_types);
            mask[r * seq..r * seq + row_ids.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (b, seq), &self.device)?;
        let types = Tensor::from_vec(types, (b, seq), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, seq), &self.device)?;
        let states = self.model.forward(&ids, &types, Some(&mask))?;
        Ok((states.flatten_all()?.to_vec1::<f32>()?, seq))
    }

    /// Tokenize texts as sentence-transformers does (Hugging Face `truncation=True`): the
    /// text's own tokens are cut to `max_length` minus the special tokens, then the special
    /// tokens are added. Returns the encodings and how many texts were cut.
    ///
    /// The truncation is done here rather than by the tokenizer because tokenizers 0.23
    /// stops tokenizing at the limit and then no longer records that anything was cut.
    fn encode(&self, texts: &[&str]) -> Result<(Vec<Encoding>, usize)> {
        let content_max = self.max_length - self.special;
        let raw = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| self.encode_error(format!("tokenizing: {e}")))?;
        let mut truncated = 0;
        let mut out = Vec::with_capacity(raw.len());
        for (i, mut e) in raw.into_iter().enumerate() {
            if e.len() > content_max {
                truncated += 1;
                e.truncate(content_max, 0, TruncationDirection::Right);
                // The cut-off rest is not embedded; drop it before post-processing copies it.
                e.take_overflowing();
            }
            let e = self.tokenizer.post_process(e, None, true).map_err(|err| {
                self.encode_error(format!(
                    "adding special tokens to text {i} (0-based): {err}"
                ))
            })?;
            out.push(e);
        }
        Ok((out, truncated))
    }

    /// Token ids and type ids of one text, as [`Self::embed`] feeds them to the model.
    #[cfg(test)]
    pub(crate) fn tokenize(&self, text: &str) -> (Vec<u32>, Vec<u32>) {
        let (e, _) = self.encode(&[text]).unwrap();
        (e[0].get_ids().to_vec(), e[0].get_type_ids().to_vec())
    }

    fn encode_error(&self, message: String) -> TextError {
        TextError::Encode {
            path: self.dir.clone(),
            message,
        }
    }
}

/// Parse and check a BERT `config.json`.
fn read_bert_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| TextError::io(path, e))?;
    let config: Config = serde_json::from_str(&text).map_err(|e| {
        TextError::format(
            path,
            format!(
                "not a BERT config (needs vocab_size, hidden_size, num_hidden_layers, \
                 num_attention_heads, intermediate_size, hidden_act gelu|relu, \
                 max_position_embeddings, type_vocab_size, layer_norm_eps, pad_token_id, ...): {e}"
            ),
        )
    })?;
    let bad = |field: &str, message: String| {
        Err(TextError::format(path, format!("field {field}: {message}")))
    };
    if let Some(kind) = config.model_type.as_deref() {
        // RoBERTa-style models (roberta, xlm-roberta, camembert) load with BERT's tensor names
        // but offset their position ids: running them as BERT would give wrong embeddings
        // without any error, so only BERT itself is accepted.
        if kind != "bert" {
            return bad(
                "model_type",
                format!("{kind:?} is not supported; only \"bert\" models are implemented"),
            );
        }
    }
    for (field, v) in [
        ("vocab_size", config.vocab_size),
        ("hidden_size", config.hidden_size),
        ("num_hidden_layers", config.num_hidden_layers),
        ("num_attention_heads", config.num_attention_heads),
        ("intermediate_size", config.intermediate_size),
        ("type_vocab_size", config.type_vocab_size),
    ] {
        if v == 0 {
            return bad(field, "must be at least 1, found 0".into());
        }
    }
    if !config
        .hidden_size
        .is_multiple_of(config.num_attention_heads)
    {
        return bad(
            "num_attention_heads",
            format!(
                "{} does not divide hidden_size {}",
                config.num_attention_heads, config.hidden_size
            ),
        );
    }
    if config.max_position_embeddings < 2 {
        return bad(
            "max_position_embeddings",
            format!(
                "must be at least 2, found {}",
                config.max_position_embeddings
            ),
        );
    }
    if config.pad_token_id >= config.vocab_size {
        return bad(
            "pad_token_id",
            format!(
                "{} is outside the vocabulary of {} tokens",
                config.pad_token_id, config.vocab_size
            ),
        );
    }
    Ok(config)
}

/// Old BERT checkpoints (Google's originals, e.g. `bert-base-uncased`) name the LayerNorm
/// parameters `gamma`/`beta`; transformers renames them to `weight`/`bias` on load, and so do we.
fn rename_legacy_layer_norm(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let name = if let Some(p) = name.strip_suffix("LayerNorm.gamma") {
                format!("{p}LayerNorm.weight")
            } else if let Some(p) = name.strip_suffix("LayerNorm.beta") {
                format!("{p}LayerNorm.bias")
            } else {
                name
            };
            (name, t)
        })
        .collect()
}

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set
/// (a user-facing message should say what is wrong, not where in candle it was noticed).
fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), candle_message(inner))
        }
        other => other.to_string(),
    }
}

/// Divide by the L2 norm, as `torch.nn.functional.normalize` (norm clamped at 1e-12).
fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Embed `(id, text)` pairs into a feature table in the Onion layout (one row per id, columns
/// `emb_0` .. `emb_{dim-1}`), ready for `write_feature_tsv` and the PCA/fusion stage
/// (SPEC §3). `source` is recorded as the table's path. Returns the table and the number of
/// truncated texts.
///
/// Errors: duplicate ids (checked before any text is embedded, naming `source`), or an
/// embedding failure.
pub fn embed_table(
    enc: &TextEncoder,
    texts: &[(String, String)],
    source: &Path,
    progress: Option<&ProgressBar>,
) -> Result<(FeatureTable, usize)> {
    let mut seen = HashSet::with_capacity(texts.len());
    for (row, (id, _)) in texts.iter().enumerate() {
        if !seen.insert(id.as_str()) {
            return Err(TextError::format(
                source,
                format!(
                    "duplicate id {id:?} (row {}): each text needs its own id",
                    row + 1
                ),
            ));
        }
    }
    let refs: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
    let emb = enc.embed(&refs, progress)?;
    let ids = texts.iter().map(|(id, _)| id.clone()).collect();
    let columns = (0..emb.dim).map(|j| format!("emb_{j}")).collect();
    let table = FeatureTable::new(source, ids, columns, emb.values)?;
    Ok((table, emb.truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::json;

    /// Vocabulary of the tiny test model: BERT's special tokens first, then words and two
    /// WordPiece continuations.
    const WORDS: &[&str] = &[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "love", "rain", "night", "city", "light",
        "dance", "summer", "we", "were", "young", "and", "free", "the", "a", "sky", "blue", "##s",
        "##ing", "bass", "drum", "guitar", "sing", "song", "heart", "fire",
    ];
    const H: usize = 8;
    const LAYERS: usize = 2;
    const INTER: usize = 16;
    const POS: usize = 16;

    fn tiny_config() -> serde_json::Value {
        json!({
            "architectures": ["BertModel"], "model_type": "bert",
            "vocab_size": WORDS.len(), "hidden_size": H, "num_hidden_layers": LAYERS,
            "num_attention_heads": 2, "intermediate_size": INTER, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": POS, "type_vocab_size": 2, "initializer_range": 0.02,
            "layer_norm_eps": 1e-12, "pad_token_id": 0
        })
    }

    /// A BERT tokenizer.json in the layout of MiniLM's, including its stored truncation (128)
    /// and fixed padding, which the encoder must override.
    fn tiny_tokenizer() -> serde_json::Value {
        let vocab: serde_json::Map<String, serde_json::Value> = WORDS
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), json!(i)))
            .collect();
        let added: Vec<_> = WORDS[..5]
            .iter()
            .enumerate()
            .map(|(i, w)| {
                json!({"id": i, "content": w, "single_word": false, "lstrip": false,
                                 "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        json!({
            "version": "1.0",
            "truncation": {"direction": "Right", "max_length": 128, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
            "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {
                    "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
                }
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        })
    }

    /// Random weights with BERT's tensor names, `prefix` in front (e.g. "bert.") and the
    /// LayerNorm parameters named `weight`/`bias` or, with `legacy`, `gamma`/`beta`.
    fn tiny_weights(seed: u64, prefix: &str, legacy: bool) -> HashMap<String, Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = HashMap::new();
        let mut add = |name: String, shape: &[usize], centre: f32, spread: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| centre + rng.random_range(-spread..spread))
                .collect();
            let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
            out.insert(format!("{prefix}{name}"), t);
        };
        let (w, b) = if legacy {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        let norm = |add: &mut AddTensor, at: &str| {
            add(format!("{at}.LayerNorm.{w}"), &[H], 1.0, 0.2);
            add(format!("{at}.LayerNorm.{b}"), &[H], 0.0, 0.2);
        };
        add(
            "embeddings.word_embeddings.weight".into(),
            &[WORDS.len(), H],
            0.0,
            1.0,
        );
        add(
            "embeddings.position_embeddings.weight".into(),
            &[POS, H],
            0.0,
            0.5,
        );
        add(
            "embeddings.token_type_embeddings.weight".into(),
            &[2, H],
            0.0,
            0.5,
        );
        norm(&mut add, "embeddings");
        for l in 0..LAYERS {
            let at = format!("encoder.layer.{l}");
            for m in ["query", "key", "value"] {
                add(format!("{at}.attention.self.{m}.weight"), &[H, H], 0.0, 0.6);
                add(format!("{at}.attention.self.{m}.bias"), &[H], 0.0, 0.1);
            }
            add(
                format!("{at}.attention.output.dense.weight"),
                &[H, H],
                0.0,
                0.5,
            );
            add(format!("{at}.attention.output.dense.bias"), &[H], 0.0, 0.1);
            norm(&mut add, &format!("{at}.attention.output"));
            add(
                format!("{at}.intermediate.dense.weight"),
                &[INTER, H],
                0.0,
                0.5,
            );
            add(format!("{at}.intermediate.dense.bias"), &[INTER], 0.0, 0.1);
            add(format!("{at}.output.dense.weight"), &[H, INTER], 0.0, 0.4);
            add(format!("{at}.output.dense.bias"), &[H], 0.0, 0.1);
            norm(&mut add, &format!("{at}.output"));
        }
        out
    }

    /// Adds a random tensor: name, shape, centre, half-width of the uniform spread.
    type AddTensor<'a> = dyn FnMut(String, &[usize], f32, f32) + 'a;
    /// Breaks a model folder for an error test.
    type Edit = Box<dyn FnOnce(&Path)>;

    fn write_json(path: &Path, v: &serde_json::Value) {
        std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
    }

    /// Write a complete tiny BERT folder.
    fn write_tiny_bert(dir: &Path, seed: u64) {
        write_json(&dir.join("config.json"), &tiny_config());
        write_json(&dir.join("tokenizer.json"), &tiny_tokenizer());
        candle_core::safetensors::save(
            &tiny_weights(seed, "", false),
            dir.join("model.safetensors"),
        )
        .unwrap();
    }

    fn tiny(opts: EmbedOptions) -> (tempfile::TempDir, TextEncoder) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 7);
        let enc = TextEncoder::load(dir.path(), opts).unwrap();
        (dir, enc)
    }

    fn raw() -> EmbedOptions {
        EmbedOptions {
            normalize: false,
            ..EmbedOptions::default()
        }
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    const TEXTS: &[&str] = &[
        "We were young and free",
        "",
        "love",
        "the city light and the summer rain night sky blue",
        "Guitars singing, bass drums!",
        "heart fire",
    ];

    #[test]
    fn shape_order_and_batch_size_independence() {
        let (_d, enc) = tiny(raw());
        assert_eq!((enc.dim(), enc.max_length()), (H, POS));
        let pb = ProgressBar::hidden();
        let all = enc.embed(TEXTS, Some(&pb)).unwrap();
        assert_eq!(pb.position(), TEXTS.len() as u64);
        assert_eq!((all.dim, all.len(), all.truncated), (H, TEXTS.len(), 0));
        // Each row equals the text embedded on its own (order restored, padding masked).
        for (i, t) in TEXTS.iter().enumerate() {
            let alone = enc.embed(&[t], None).unwrap();
            assert!(max_abs_diff(all.row(i), alone.row(0)) < 1e-5, "text {i}");
        }
        for bs in [1, 2, 4, 100] {
            let (_d2, enc2) = tiny(EmbedOptions {
                batch_size: bs,
                ..raw()
            });
            let other = enc2.embed(TEXTS, None).unwrap();
            assert!(
                max_abs_diff(&all.values, &other.values) < 1e-5,
                "batch size {bs}"
            );
        }
        // Deterministic: the same call gives the same bits.
        assert_eq!(all, enc.embed(TEXTS, None).unwrap());
        // Rows differ between texts (the model is not degenerate).
        assert!(max_abs_diff(all.row(0), all.row(2)) > 1e-2);
        assert!(enc.embed(&[], None).unwrap().is_empty());
    }

    #[test]
    fn mean_pooling_is_the_mean_over_real_tokens() {
        let (_d, enc) = tiny(raw());
        let short = "we were young";
        let long = "the city light and the summer rain night sky";
        let (ids, types) = enc.tokenize(short);
        assert_eq!(ids, vec![2, 12, 13, 14, 3], "[CLS] we were young [SEP]");
        let (states, seq) = enc.forward(&[(&ids, &types)]).unwrap();
        assert_eq!(seq, 5);
        let mut hand = vec![0f32; H];
        for t in 0..seq {
            for j in 0..H {
                hand[j] += states[t * H + j] / seq as f32;
            }
        }
        let emb = enc.embed(&[short], None).unwrap();
        assert!(max_abs_diff(emb.row(0), &hand) < 1e-6);

        // In a batch with a longer text the short one is padded; the mask keeps it unchanged.
        let batch = enc.embed(&[short, long], None).unwrap();
        assert!(max_abs_diff(batch.row(0), &hand) < 1e-5);

        // ... whereas averaging over the padded positions too would be visibly different, so
        // the comparison above can fail.
        let (lids, ltypes) = enc.tokenize(long);
        let (padded, pseq) = enc.forward(&[(&ids, &types), (&lids, &ltypes)]).unwrap();
        assert!(pseq > seq);
        let mut naive = vec![0f32; H];
        for t in 0..pseq {
            for j in 0..H {
                naive[j] += padded[t * H + j] / pseq as f32;
            }
        }
        assert!(max_abs_diff(&naive, &hand) > 1e-2);
    }

    #[test]
    fn cls_pooling_takes_the_first_token() {
        let (_d, mean) = tiny(raw());
        let (_d2, cls) = tiny(EmbedOptions {
            pooling: Pooling::Cls,
            ..raw()
        });
        let text = "summer rain and city light";
        let (ids, types) = cls.tokenize(text);
        let (states, _) = cls.forward(&[(&ids, &types)]).unwrap();
        let c = cls.embed(&[text, "a"], None).unwrap();
        assert!(max_abs_diff(c.row(0), &states[..H]) < 1e-5);
        let m = mean.embed(&[text], None).unwrap();
        assert!(max_abs_diff(c.row(0), m.row(0)) > 1e-2);
    }

    #[test]
    fn normalisation_gives_unit_vectors_in_the_mean_direction() {
        let (_d, plain) = tiny(raw());
        let (_d2, unit) = tiny(EmbedOptions::default());
        let p = plain.embed(TEXTS, None).unwrap();
        let u = unit.embed(TEXTS, None).unwrap();
        for i in 0..TEXTS.len() {
            let norm = p.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() > 1e-2,
                "raw row {i} should not be unit already"
            );
            let scaled: Vec<f32> = p.row(i).iter().map(|x| x / norm).collect();
            assert!(max_abs_diff(u.row(i), &scaled) < 1e-6);
            let unorm = u.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((unorm - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn truncation_cuts_and_counts() {
        let (_d, enc) = tiny(EmbedOptions {
            max_length: Some(4),
            ..raw()
        });
        assert_eq!(enc.max_length(), 4);
        let texts = [
            "love",
            "love rain",
            "love rain night",
            "",
            "we were young and free",
        ];
        let e = enc.embed(&texts, None).unwrap();
        assert_eq!(e.truncated, 2);
        // "[CLS] love rain [SEP]" is all the model sees of "love rain night".
        assert!(max_abs_diff(e.row(1), e.row(2)) < 1e-6);
        assert!(max_abs_diff(e.row(0), e.row(1)) > 1e-2);

        // The folder's sentence-transformers max_seq_length is the default maximum.
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 7);
        write_json(
            &dir.path().join("sentence_bert_config.json"),
            &json!({"max_seq_length": 6, "do_lower_case": false}),
        );
        let enc = TextEncoder::load(dir.path(), raw()).unwrap();
        assert_eq!(enc.max_length(), 6);
        let e = enc.embed(&["a a a a", "a a a a a"], None).unwrap();
        assert_eq!(e.truncated, 1);

        for (n, what) in [(POS + 1, "max_position_embeddings"), (2, "special tokens")] {
            let err = TextEncoder::load(
                dir.path(),
                EmbedOptions {
                    max_length: Some(n),
                    ..raw()
                },
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("max_length") && err.contains(what), "{err}");
        }
    }

    #[test]
    fn legacy_names_and_bert_prefix_load_the_same_model() {
        let (_d, enc) = tiny(raw());
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 7);
        candle_core::safetensors::save(
            &tiny_weights(7, "bert.", true),
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        let legacy = TextEncoder::load(dir.path(), raw()).unwrap();
        assert_eq!(
            enc.embed(TEXTS, None).unwrap(),
            legacy.embed(TEXTS, None).unwrap()
        );
    }

    #[test]
    fn tokenizer_without_special_tokens() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 7);
        let mut tok = tiny_tokenizer();
        tok["post_processor"] = serde_json::Value::Null;
        write_json(&dir.path().join("tokenizer.json"), &tok);
        let enc = TextEncoder::load(
            dir.path(),
            EmbedOptions {
                pooling: Pooling::Cls,
                max_length: Some(1),
                ..raw()
            },
        )
        .unwrap();
        assert_eq!(
            enc.tokenize("love rain").0,
            vec![5],
            "no [CLS], cut at 1 token"
        );
        // CLS pooling takes the first token, here the first word; max_length 1 keeps only it.
        let e = enc.embed(&["love rain", "love"], None).unwrap();
        assert_eq!(e.truncated, 1);
        assert!(max_abs_diff(e.row(0), e.row(1)) < 1e-6);
        let err = enc.embed(&["love", ""], None).unwrap_err().to_string();
        assert!(err.contains("text 1") && err.contains("no tokens"), "{err}");
    }

    #[test]
    fn embed_table_rows_ids_and_columns() {
        let (_d, enc) = tiny(EmbedOptions::default());
        let texts: Vec<(String, String)> = [("t1", "love song"), ("t2", ""), ("t3", "blue sky")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let src = Path::new("lyrics.tsv");
        let (table, truncated) = embed_table(&enc, &texts, src, None).unwrap();
        assert_eq!(truncated, 0);
        assert_eq!(table.ids, vec!["t1", "t2", "t3"]);
        assert_eq!(table.columns.len(), H);
        assert_eq!(
            (table.columns[0].as_str(), table.columns[H - 1].as_str()),
            ("emb_0", "emb_7")
        );
        assert_eq!(table.source, src);
        let e = enc.embed(&["blue sky"], None).unwrap();
        assert!(max_abs_diff(table.row(2), e.row(0)) < 1e-5);

        let dup = vec![texts[0].clone(), texts[0].clone()];
        let err = embed_table(&enc, &dup, src, None).unwrap_err().to_string();
        assert!(
            err.contains("lyrics.tsv") && err.contains("duplicate id \"t1\""),
            "{err}"
        );
    }

    /// Load a tiny folder after `edit` and return the error message.
    fn load_error(edit: impl FnOnce(&Path)) -> String {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 7);
        edit(dir.path());
        TextEncoder::load(dir.path(), EmbedOptions::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_folders_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-model");
        let err = TextEncoder::load(&missing, EmbedOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-model"), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = TextEncoder::load(&file, EmbedOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("file") && err.contains("model folder"),
            "{err}"
        );

        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "tokenizer.json",
                Box::new(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
                "",
            ),
            (
                "tokenizer.json",
                Box::new(|d| std::fs::write(d.join("tokenizer.json"), "{\"model\": 3}").unwrap()),
                "tokenizer",
            ),
            (
                "config.json",
                Box::new(|d| std::fs::remove_file(d.join("config.json")).unwrap()),
                "",
            ),
            (
                "config.json",
                Box::new(|d| std::fs::write(d.join("config.json"), "{").unwrap()),
                "not a BERT config",
            ),
            (
                "config.json",
                Box::new(|d| {
                    let mut c = tiny_config();
                    c.as_object_mut().unwrap().remove("hidden_size");
                    write_json(&d.join("config.json"), &c);
                }),
                "hidden_size",
            ),
            (
                "config.json",
                Box::new(|d| {
                    let mut c = tiny_config();
                    c["num_attention_heads"] = json!(3);
                    write_json(&d.join("config.json"), &c);
                }),
                "num_attention_heads",
            ),
            (
                "config.json",
                Box::new(|d| {
                    let mut c = tiny_config();
                    c["model_type"] = json!("roberta");
                    write_json(&d.join("config.json"), &c);
                }),
                "roberta",
            ),
            (
                "config.json",
                Box::new(|d| {
                    let mut c = tiny_config();
                    c["hidden_act"] = json!("swish");
                    write_json(&d.join("config.json"), &c);
                }),
                "hidden_act",
            ),
            (
                "tokenizer.json",
                Box::new(|d| {
                    let mut c = tiny_config();
                    c["vocab_size"] = json!(20);
                    write_json(&d.join("config.json"), &c);
                }),
                "vocab_size",
            ),
            (
                "model.safetensors",
                Box::new(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap()),
                "safetensors",
            ),
            (
                "model.safetensors",
                Box::new(|d| std::fs::write(d.join("model.safetensors"), b"garbage!").unwrap()),
                "not a safetensors file",
            ),
            (
                "model.safetensors",
                Box::new(|d| {
                    let mut c = tiny_config();
                    c["intermediate_size"] = json!(12);
                    write_json(&d.join("config.json"), &c);
                }),
                "intermediate.dense",
            ),
            (
                "model.safetensors",
                Box::new(|d| {
                    let mut w = tiny_weights(7, "", false);
                    w.remove("encoder.layer.1.output.dense.bias");
                    candle_core::safetensors::save(&w, d.join("model.safetensors")).unwrap();
                }),
                "encoder.layer.1.output.dense.bias",
            ),
            (
                "sentence_bert_config.json",
                Box::new(|d| std::fs::write(d.join("sentence_bert_config.json"), "[").unwrap()),
                "malformed",
            ),
        ];
        for (file, edit, what) in cases {
            let err = load_error(edit);
            eprintln!("{err}");
            assert!(
                err.contains(file) && err.contains(what),
                "expected {file} / {what}: {err}"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 7);
        let err = TextEncoder::load(
            dir.path(),
            EmbedOptions {
                batch_size: 0,
                ..EmbedOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    /// The real model against sentence-transformers' own output (SPEC §3; the reference file
    /// was made with `SentenceTransformer("all-MiniLM-L6-v2").encode(texts)`, which truncates
    /// at 256 tokens, mean-pools and normalises). Skipped when the shared model is absent.
    #[test]
    fn reference_embeddings_match_sentence_transformers() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models");
        let dir = models.join("all-MiniLM-L6-v2");
        let tsv = models.join("reference_embeddings.tsv");
        if !dir.is_dir() || !tsv.is_file() {
            eprintln!("skipped: {} not present", dir.display());
            return;
        }
        let opts = EmbedOptions::from_model_dir(&dir).unwrap();
        assert_eq!(opts, EmbedOptions::default());
        let enc = TextEncoder::load(
            &dir,
            EmbedOptions {
                batch_size: 4,
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!((enc.dim(), enc.max_length()), (384, 256));

        let text = std::fs::read_to_string(&tsv).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id\ttext\tembedding"));
        let mut texts = Vec::new();
        let mut refs = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 3, "{line}");
            texts.push(f[1]);
            refs.push(
                f[2].split(',')
                    .map(|x| x.parse::<f32>().unwrap())
                    .collect::<Vec<f32>>(),
            );
        }
        assert!(texts.len() >= 10);
        let emb = enc.embed(&texts, None).unwrap();
        // Only the 400-word line exceeds 256 tokens.
        assert_eq!(emb.truncated, 1);
        let mut worst = f64::INFINITY;
        for (i, r) in refs.iter().enumerate() {
            let e = emb.row(i);
            let dot: f64 = e
                .iter()
                .zip(r)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let ne: f64 = e.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nr: f64 = r.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let cos = dot / (ne * nr);
            assert!(cos >= 0.99999, "text {i} {:?}: cosine {cos}", texts[i]);
            worst = worst.min(cos);
        }
        eprintln!(
            "{} reference sentences, lowest cosine {worst:.8}",
            refs.len()
        );

        // One text per batch (no padding at all) agrees with padded batches of 4.
        let single = TextEncoder::load(
            &dir,
            EmbedOptions {
                batch_size: 1,
                ..opts
            },
        )
        .unwrap();
        let e1 = single.embed(&texts, None).unwrap();
        assert!(max_abs_diff(&e1.values, &emb.values) < 1e-5);
    }
}
