//! The feed-forward sublayer (HF's `DenseReluDense`): `wo(relu(wi x))` in T5, or
//! `wo(gelu(wi_0 x) * wi_1 x)` with the tanh-approximated GELU in T5 v1.1; no biases.

use llmlab_nn::linear::{linear, Linear};
use llmlab_plugin_api::candle::{Module, Result, Tensor};
use llmlab_plugin_api::candle_nn::VarBuilder;

use crate::config::{FeedForwardKind, T5Config};

#[derive(Debug, Clone)]
pub enum FeedForward {
    Relu {
        wi: Linear,
        wo: Linear,
    },
    GatedGelu {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl FeedForward {
    pub fn new(config: &T5Config, vb: VarBuilder) -> Result<FeedForward> {
        let (d, ff) = (config.d_model, config.d_ff);
        let std = |fan: usize| (fan as f64).powf(-0.5);
        let wo = linear(ff, d, false, std(ff), vb.pp("wo"))?;
        Ok(match config.feed_forward {
            FeedForwardKind::Relu => FeedForward::Relu {
                wi: linear(d, ff, false, std(d), vb.pp("wi"))?,
                wo,
            },
            FeedForwardKind::GatedGelu => FeedForward::GatedGelu {
                wi_0: linear(d, ff, false, std(d), vb.pp("wi_0"))?,
                wi_1: linear(d, ff, false, std(d), vb.pp("wi_1"))?,
                wo,
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Relu { wi, wo } => wo.forward(&wi.forward(x)?.relu()?),
            FeedForward::GatedGelu { wi_0, wi_1, wo } => {
                wo.forward(&(wi_0.forward(x)?.gelu()? * wi_1.forward(x)?)?)
            }
        }
    }

    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        match self {
            FeedForward::Relu { wi, wo } => vec![("wi", wi), ("wo", wo)],
            FeedForward::GatedGelu { wi_0, wi_1, wo } => {
                vec![("wi_0", wi_0), ("wi_1", wi_1), ("wo", wo)]
            }
        }
    }
}
