//! The optimisation pieces every trainer and aligner shares, so no plugin keeps its own copy:
//! AdamW with decoupled weight decay ([`adamw`]), warmup + cosine learning rate ([`schedule`]),
//! global-norm clipping ([`clip`]), gradient accumulation across backward passes
//! ([`gradients`]), losses and sequence log-probabilities built from differentiable ops
//! ([`loss`]), a seeded RNG whose state fits in a checkpoint ([`rng`]), and atomic, checksummed
//! checkpoint directories ([`checkpoint`]).
//!
//! What a checkpoint *contains* (manifest fields, data cursors) and the loop that calls these
//! pieces belong to the plugin that trains: `lm-trainer` for `lm`/`sft`, `rl` for alignment.

pub mod adamw;
pub mod checkpoint;
pub mod clip;
pub mod gradients;
pub mod loss;
pub mod schedule;

pub use crate::rng::{self, SplitMix64};
pub use adamw::{AdamW, AdamWSettings};
pub use schedule::Schedule;
