//! Data the host owns and hands to plugins through the `plugin-api` data traits: text sources
//! (user files, JSONL) and token datasets on disk. The generated corpora (stories, tasks) are
//! `corpus` components of the corpora plugin (`plugins/corpora`).
//!
//! - [`text_file`]: a UTF-8 text or JSONL file as a `TextSource`, streamed.
//! - [`token_dataset`]: `train.bin` / `val.bin` + `dataset.json`, read in windows, as `TokenData`.
//! - [`dataset_writer`]: encoding a corpus into a token dataset, in parallel and streaming.
//! - [`parquet_source`]: a column of Parquet files (HF datasets) as a `TextSource`, streamed.
//! - [`preferences`]: preference pairs (`prompt`, `chosen`, `rejected`) from a JSONL file.

pub mod dataset_writer;
pub mod parquet_source;
pub mod preferences;
pub mod text_file;
pub mod token_dataset;

pub use dataset_writer::{encode_to_dataset, EncodeOptions};
pub use text_file::{Format, TextFile};
pub use token_dataset::{tokenizer_hash, Dtype, Header, TokenDataset};
