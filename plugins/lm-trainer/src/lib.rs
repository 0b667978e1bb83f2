//! llmlab plugin `lm-trainer`: the `lm` trainer (pretraining on token streams), the `sft`
//! trainer (prompt/answer pairs, loss on answer tokens only) and the `distill` trainer
//! (knowledge distillation from a teacher model, [`distill`]). They share one loop
//! ([`train_loop`]) with evaluation ([`evaluate`]) and checkpoints that resume bit-exactly
//! ([`checkpoint`]: what a trainer checkpoint holds). The optimisation pieces (AdamW, schedule,
//! clipping, losses, the seeded RNG, atomic checkpoint files) live in the shared runtime,
//! `llmlab_plugin_api::train`, and are re-exported here under their old paths; batches come
//! from [`batches`]; mixed precision (bf16, f16 with loss scaling) is [`precision`].

pub mod batches;
pub mod chat_encoding;
pub mod checkpoint;
pub mod config;
pub mod data_identity;
pub mod distill;
pub mod evaluate;
pub mod lm;
pub mod memory;
pub mod precision;
pub mod sft;
pub mod train_loop;

pub use llmlab_plugin_api::train::{adamw, clip, loss, rng, schedule};

pub use config::TrainConfig;
pub use lm::{new_lm_trainer, LmTrainer};
pub use sft::{new_sft_trainer, SftTrainer};

llmlab_plugin_api::submit_component!(lm::LmFactory);
llmlab_plugin_api::submit_component!(sft::SftFactory);
llmlab_plugin_api::submit_component!(distill::DistillFactory);
llmlab_plugin_api::declare_plugin!("lm-trainer");
