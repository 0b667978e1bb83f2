//! llmlab plugin `tokenizers`: trainable tokenizers on Hugging Face's `tokenizers` crate, saved
//! and loaded as the standard `tokenizer.json`.
//!
//! Components: `bpe` (byte-level, GPT-2), `wordpiece` (BERT), `unigram` (SentencePiece).
//! The shared wrapper is in [`tokenizer`], training from a corpus in [`training`].
//! This crate owns text ↔ ids; token datasets on disk belong to the host.

pub mod bpe;
pub mod fast_bpe;
pub mod hf_config;
pub mod pretokenize;
pub mod special;
pub mod tokenizer;
pub mod training;
pub mod unigram;
pub mod wordpiece;

llmlab_plugin_api::submit_component!(bpe::Bpe);
llmlab_plugin_api::submit_component!(wordpiece::WordPiece);
llmlab_plugin_api::submit_component!(unigram::Unigram);

llmlab_plugin_api::declare_plugin!("tokenizers");
