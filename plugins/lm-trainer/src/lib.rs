//! llmlab plugin `lm-trainer`: the `lm` trainer (pretraining on token streams, [`lm`]), the
//! `sft` trainer (prompt/answer pairs, loss on answer tokens only, [`sft`]; chat examples
//! through [`chat_encoding`]) and the `distill` trainer (knowledge distillation from a teacher
//! model, [`distill`]); for encoder–decoders, the `span` trainer (T5 span corruption, [`span`])
//! and the `seq2seq` trainer (text-to-text rows `prompt </s> answer </s>`, [`seq2seq`]). Each is one [`llmlab_train::Objective`] (where batches come from, and
//! for `distill` its loss) on `llmlab-train`'s step loop, which owns everything else: AdamW,
//! schedule, clipping, losses, evaluation, mixed precision and checkpoints that resume
//! bit-exactly. Those modules are re-exported here under the paths they had when they lived in
//! this crate.

pub mod chat_encoding;
pub mod distill;
pub mod lm;
pub mod seq2seq;
pub mod sft;
pub mod span;

pub use llmlab_train::trainer_checkpoint as checkpoint;
pub use llmlab_train::{
    adamw, batches, clip, config, data_identity, evaluate, loss, memory, precision, rng, schedule,
    train_loop,
};

pub use config::TrainConfig;
pub use lm::{new_lm_trainer, LmTrainer};
pub use sft::{new_sft_trainer, SftTrainer};

llmlab_plugin_api::submit_component!(lm::LmFactory);
llmlab_plugin_api::submit_component!(sft::SftFactory);
llmlab_plugin_api::submit_component!(distill::DistillFactory);
llmlab_plugin_api::submit_component!(span::SpanFactory);
llmlab_plugin_api::submit_component!(seq2seq::Seq2SeqFactory);
llmlab_plugin_api::declare_plugin!("lm-trainer");
