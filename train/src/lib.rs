//! `llmlab-train`: the building blocks of llmlab trainers, so a new trainer (distillation, MLM,
//! classification) is one [`Objective`] file, as `lm-trainer`'s `lm.rs` and `sft.rs` are:
//!
//! * the step loop ([`train_loop`]: [`TrainLoop`] implements the `Trainer` component around an
//!   [`Objective`], which says where batches come from) with its settings ([`config`]),
//!   batches ([`batches`]), validation loss ([`evaluate`]), the memory estimate ([`memory`]),
//!   and resumable checkpoints ([`trainer_checkpoint`]: what they hold; [`data_identity`]: the
//!   data they were trained on);
//! * data-parallel training over the ranks of a job, with ZeRO 1/2 ([`data_parallel`]);
//! * the optimisation pieces every trainer and aligner shares: AdamW with decoupled weight decay
//!   ([`adamw`]), warmup + cosine learning rate ([`schedule`]), global-norm clipping ([`clip`]),
//!   gradient accumulation ([`gradients`]), the row-parallel pass over the cores ([`row_split`]), losses and sequence log-probabilities ([`loss`]),
//!   mixed precision with loss scaling ([`precision`]), and atomic, checksummed checkpoint
//!   directories ([`checkpoint`]);
//! * the shapes and the timed forward pass every throughput benchmark shares ([`benchmark`]).
//!
//! Like `llmlab-nn`, it is an rlib linked statically into each plugin that uses it, holds no
//! process-global state and is not part of the plugin fingerprint (docs/architecture.md).

pub mod adamw;
#[cfg(feature = "cuda")]
pub mod adamw_cuda;
pub mod batches;
pub mod benchmark;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod data_identity;
pub mod data_parallel;
pub mod evaluate;
pub mod gradients;
pub mod loss;
pub mod memory;
pub mod precision;
pub mod row_split;
pub mod schedule;
pub mod train_loop;
pub mod trainer_checkpoint;

// The optimisation pieces were written inside the runtime crate and name its re-exports (and the
// kernels) from the crate root.
use llmlab_nn::ops;
use llmlab_plugin_api::{candle, rayon, Error, Result};

pub use adamw::{AdamW, AdamWSettings};
pub use config::TrainConfig;
pub use llmlab_plugin_api::rng::{self, SplitMix64};
pub use schedule::Schedule;
pub use train_loop::{Objective, Setup, TrainLoop};
