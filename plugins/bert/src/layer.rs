//! One encoder layer (`bert.encoder.layer.{i}`): self-attention and the feed-forward block
//! (`intermediate.dense` → GELU → `output.dense`), each a residual branch with its LayerNorm
//! after the sum (post-LN, BERT) or before the branch (pre-LN).

use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::{linear, Linear, INIT_STD};
use llmlab_nn::norm::{Norm, NormKind};
use llmlab_nn::ops;
use llmlab_plugin_api::candle::{Module, Result, Tensor};
use llmlab_plugin_api::candle_nn::VarBuilder;

use crate::attention::SelfAttention;
use crate::config::{Activation, BertConfig, NormPosition};

/// The activation of the feed-forward block and the MLM transform.
pub fn activate(activation: Activation, x: &Tensor) -> Result<Tensor> {
    match activation {
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluNew => ops::gelu(x),
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    attention: SelfAttention,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
    position: NormPosition,
    activation: Activation,
    attention_dropout: Dropout,
    output_dropout: Dropout,
}

impl Layer {
    pub fn new(config: &BertConfig, index: usize, seed: u64, vb: VarBuilder) -> Result<Layer> {
        let (d, ff) = (config.d_model, config.d_ff());
        let site = format!("bert.encoder.layer.{index}");
        let norm = |vb: VarBuilder| Norm::new(NormKind::Layer, d, true, config.norm_eps, vb);
        Ok(Layer {
            attention: SelfAttention::new(config, seed, &site, vb.pp("attention"))?,
            attention_norm: norm(vb.pp("attention").pp("output").pp("LayerNorm"))?,
            intermediate: linear(d, ff, true, INIT_STD, vb.pp("intermediate").pp("dense"))?,
            output: linear(ff, d, true, INIT_STD, vb.pp("output").pp("dense"))?,
            output_norm: norm(vb.pp("output").pp("LayerNorm"))?,
            position: config.norm_position,
            activation: config.activation,
            attention_dropout: Dropout::new(
                config.dropout,
                seed,
                &format!("{site}.attention.output"),
            ),
            output_dropout: Dropout::new(config.dropout, seed, &format!("{site}.output")),
        })
    }

    fn feed_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.output
            .forward(&activate(self.activation, &self.intermediate.forward(x)?)?)
    }

    fn drop(dropout: &Dropout, x: Tensor, train: bool) -> Result<Tensor> {
        if train && dropout.is_active() {
            dropout.forward(&x)
        } else {
            Ok(x)
        }
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        match self.position {
            NormPosition::Post => {
                let a = self.attention.forward(x, mask, train)?;
                let x = self
                    .attention_norm
                    .forward(&(x + Self::drop(&self.attention_dropout, a, train)?)?)?;
                let f = self.feed_forward(&x)?;
                self.output_norm
                    .forward(&(&x + Self::drop(&self.output_dropout, f, train)?)?)
            }
            NormPosition::Pre => {
                let a = self
                    .attention
                    .forward(&self.attention_norm.forward(x)?, mask, train)?;
                let x = (x + Self::drop(&self.attention_dropout, a, train)?)?;
                let f = self.feed_forward(&self.output_norm.forward(&x)?)?;
                &x + Self::drop(&self.output_dropout, f, train)?
            }
        }
    }
}
