//! llmlab plugin `encoder-trainer`: the encoder trainers (issue 18), each one
//! [`llmlab_train::Objective`] on `llmlab-train`'s step loop: `mlm` (masked-LM pretraining,
//! [`mlm`], with BERT's next-sentence prediction as an option, [`next_sentence`]) and
//! `classify` (fine-tuning with a task head on labelled sentences or pairs,
//! [`classify`]; decoders get a last-token head, [`last_token`]; token classification aligns
//! words to sub-tokens, [`token_tagging`]), with the input layout of sentence pairs
//! ([`pair_encoding`]) and the GLUE measures ([`task_metrics`]).

pub mod classify;
pub mod last_token;
pub mod mlm;
pub mod next_sentence;
pub mod pair_encoding;
pub mod task_metrics;
pub mod token_tagging;

pub use classify::{new_classify_trainer, ClassifyTrainer};
pub use mlm::{new_mlm_trainer, MlmTrainer};

llmlab_plugin_api::submit_component!(mlm::MlmFactory);
llmlab_plugin_api::submit_component!(classify::ClassifyFactory);
llmlab_plugin_api::declare_plugin!("encoder-trainer");
