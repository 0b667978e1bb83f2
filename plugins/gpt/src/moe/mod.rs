//! Mixture of Experts: routed feed-forward layers (`moe` config key, docs/moe.md).
//!
//! `config` (the `moe` keys), `router` (which tokens each expert takes: top-k, Switch with
//! capacity, expert choice), `experts` (grouped dispatch and combine, and the dense reference),
//! `balance` (Switch aux loss, router z-loss, the aux-loss-free selection bias), `stats` (load,
//! dropped tokens, entropy per block), `layer` (the MoE layer itself). [`FeedForward`] is a
//! block's feed-forward: the dense MLP or an MoE layer.

pub mod balance;
pub mod config;
pub mod experts;
pub mod layer;
pub mod model_stats;
pub mod router;
pub mod stats;

use llmlab_plugin_api::candle::{Result, Tensor};
use llmlab_plugin_api::candle_nn::VarBuilder;

pub use config::{Balance, MoeConfig, RouterKind};
pub use layer::{is_state, Moe};
pub use stats::LayerStats;

use crate::config::GptConfig;
use crate::mlp::Mlp;
use llmlab_nn::linear::Linear;

/// The kind of forward pass a block runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Inference: no dropout, no capacity for `switch`, no bookkeeping.
    Eval,
    /// Training: dropout, jitter, capacity; statistics recorded and the aux-free bias updated.
    Train,
    /// Training again over the same input (activation checkpointing's recomputation): as
    /// `Train`, but the bias and statistics are left alone so the pass repeats the first.
    Recompute,
}

impl Pass {
    pub fn from_train(train: bool) -> Pass {
        if train {
            Pass::Train
        } else {
            Pass::Eval
        }
    }

    pub fn train(self) -> bool {
        self != Pass::Eval
    }
}

/// An MoE block's contribution to the aux loss, and what its router did.
#[derive(Debug, Clone)]
pub struct MoeAux {
    /// The weighted balance and z-loss terms (scalar, f32); `None` when both are off.
    pub loss: Option<Tensor>,
    pub stats: LayerStats,
}

/// `total + term`, either possibly absent (summing the blocks' aux losses).
pub fn add_loss(total: Option<Tensor>, term: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (total, term) {
        (Some(a), Some(b)) => Some((a + b)?),
        (a, b) => a.or(b),
    })
}

/// A block's feed-forward layer.
// The dense case is the common one and is read on every forward: kept inline rather than
// boxed like the (rarer, larger) MoE layer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(Box<Moe>),
}

impl FeedForward {
    /// Block `index`'s feed-forward: MoE when the config's `moe` selects that block.
    pub fn new(config: &GptConfig, index: usize, vb: VarBuilder) -> Result<FeedForward> {
        match &config.moe {
            Some(moe) if moe.is_moe_block(index) => {
                Ok(FeedForward::Moe(Box::new(Moe::new(config, moe, vb)?)))
            }
            _ => Ok(FeedForward::Dense(Mlp::new(config, vb)?)),
        }
    }

    pub fn share_dropout_with(&mut self, other: &FeedForward) {
        match (self, other) {
            (FeedForward::Dense(mine), FeedForward::Dense(theirs)) => {
                mine.share_dropout_with(theirs)
            }
            (FeedForward::Moe(mine), FeedForward::Moe(theirs)) => mine.share_with(theirs),
            _ => {}
        }
    }

    /// The linear layers by name relative to `mlp.`.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match self {
            FeedForward::Dense(mlp) => mlp
                .linears_mut()
                .into_iter()
                .map(|(n, l)| (n.to_string(), l))
                .collect(),
            FeedForward::Moe(moe) => moe.linears_mut(),
        }
    }

    pub fn moe(&self) -> Option<&Moe> {
        match self {
            FeedForward::Moe(moe) => Some(moe),
            FeedForward::Dense(_) => None,
        }
    }

    pub fn forward(&self, x: &Tensor, pass: Pass) -> Result<(Tensor, Option<MoeAux>)> {
        match self {
            FeedForward::Dense(mlp) => Ok((mlp.forward(x, pass.train())?, None)),
            FeedForward::Moe(moe) => {
                let (y, aux) = moe.forward(x, pass)?;
                Ok((y, Some(aux)))
            }
        }
    }
}
