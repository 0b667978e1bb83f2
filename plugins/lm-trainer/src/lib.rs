//! llmlab plugin `lm-trainer`: the `lm` trainer (pretraining on token streams) and the `sft`
//! trainer (prompt/answer pairs, loss on answer tokens only). They share one loop
//! ([`train_loop`]): AdamW with decoupled weight decay on matrices ([`adamw`]), warmup + cosine
//! learning rate ([`schedule`]), global-norm clipping ([`clip`]), gradient accumulation,
//! evaluation ([`evaluate`]) and atomic checkpoints that resume bit-exactly ([`checkpoint`]).
//! Batches come from the trainer's own seeded RNG ([`rng`], [`batches`]); the loss is built from
//! differentiable ops ([`loss`]).

pub mod adamw;
pub mod batches;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod evaluate;
pub mod lm;
pub mod loss;
pub mod rng;
pub mod schedule;
pub mod sft;
pub mod train_loop;

pub use config::TrainConfig;
pub use lm::{new_lm_trainer, LmTrainer};
pub use sft::{new_sft_trainer, SftTrainer};

llmlab_plugin_api::submit_component!(lm::LmFactory);
llmlab_plugin_api::submit_component!(sft::SftFactory);
llmlab_plugin_api::declare_plugin!("lm-trainer");
