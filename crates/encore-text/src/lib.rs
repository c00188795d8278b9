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
//!
//! Throughput (`cargo run --release -p encore-text --example throughput -- MODEL_DIR N TOKENS
//! BATCHES`), all-MiniLM-L6-v2 on a 2-core Xeon (AVX-512) that was shared with other builds
//! (load average 3 to 8), so wall-clock numbers are noisy and CPU time is the steadier measure:
//!
//! | texts per CPU-second | batch 1 | batch 16 | batch 32 | batch 64 |
//! |----------------------|--------:|---------:|---------:|---------:|
//! | 16 tokens per text   | 71      | 106      | 111      | 130      |
//! | 128 tokens per text  | 14.1    | 14.1     | 14.8     | 13.5     |
//! | 256 tokens per text  | 4.7     | 5.7      | 5.6      | –        |
//!
//! i.e. about 1,900 tokens per CPU-second; best wall clock seen: 20.8 texts/s (2,660 tokens/s)
//! at 128 tokens; 512 texts of 128 tokens at the default batch size took 36.0 s wall, 33.3 s
//! CPU (14.2 texts/s, 1,821 tokens/s, load average 7). Batching pays for short texts, while very large batches lose cache locality
//! on long ones (the 12 x seq x seq attention scores): [`DEFAULT_BATCH_SIZE`] = 32 is at or
//! near the best for every length. Running two batches at once on rayon (instead of one batch
//! over both cores) was measured no faster and was dropped. At 256 tokens (lyrics are usually
//! cut there) a 57k-track catalogue takes about 10,000 CPU-seconds.

mod encoder;
mod error;
mod options;

pub use encoder::{embed_table, Embeddings, TextEncoder};
pub use error::{Result, TextError};
pub use options::{EmbedOptions, Pooling, DEFAULT_BATCH_SIZE};
