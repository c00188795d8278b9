//! Encore's lyrics embedding (SPEC §3, "Text (lyrics) embedding"; paper section 4.3): a
//! BERT-family sentence encoder run in Rust with candle on the CPU, loaded from a local
//! Hugging Face model folder (`config.json`, `tokenizer.json`, `model.safetensors`, plus the
//! optional sentence-transformers files `sentence_bert_config.json`, `modules.json` and
//! `1_Pooling/config.json`). No hub, no network.
//!
//! ```no_run
//! use encore_text::{EmbedOptions, TextEncoder};
//! let dir = std::path::Path::new("/work/shared/models/all-MiniLM-L6-v2");
//! let enc = TextEncoder::load(dir, EmbedOptions::from_model_dir(dir)?)?;
//! let emb = enc.embed(&["we were young and wild and free"], None)?;
//! assert_eq!(emb.dim, 384);
//! # Ok::<(), encore_text::TextError>(())
//! ```
//!
//! Output matches sentence-transformers for `all-MiniLM-L6-v2` to cosine ≥ 0.99999 (tested
//! against `reference_embeddings.tsv`). The paper used `bert-base-uncased` (768-d): any BERT
//! folder of this layout loads (old `gamma`/`beta` LayerNorm names are accepted); RoBERTa-style
//! models are refused because they offset positions.
//!
//! Threading: candle runs each batch's matrix products on rayon's pool (as many threads as
//! physical cores, or `RAYON_NUM_THREADS`); batches run one after another. Results do not
//! depend on the thread count or the batch size beyond float rounding.

mod encoder;
mod error;
mod options;

pub use encoder::{embed_table, Embeddings, TextEncoder};
pub use error::{Result, TextError};
pub use options::{EmbedOptions, Pooling, DEFAULT_BATCH_SIZE};
