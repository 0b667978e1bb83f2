//! The position-wise feed-forward block: GPT-2's `c_fc` → GELU → `c_proj`, or SwiGLU
//! (Shazeer 2020): `c_proj(silu(c_gate(x)) * c_fc(x))`. The activation is a fused kernel of
//! `llmlab_nn::ops` (own backward), or composed with `kernels: "reference"`.

use llmlab_nn::ops;
use llmlab_plugin_api::candle::{Module, Result, Tensor};
use llmlab_plugin_api::candle_nn::VarBuilder;

use crate::config::{GptConfig, Kernels, MlpKind};
use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::{linear, Linear, INIT_STD};

#[derive(Debug, Clone)]
pub struct Mlp {
    c_fc: Linear,
    /// SwiGLU's gate; `None` for GELU.
    c_gate: Option<Linear>,
    c_proj: Linear,
    dropout: Dropout,
    kernels: Kernels,
}

impl Mlp {
    pub fn new(config: &GptConfig, vb: VarBuilder) -> Result<Mlp> {
        let (d, hidden, bias) = (config.d_model, config.ffn_hidden(), config.bias);
        let c_gate = match config.mlp {
            MlpKind::Gelu => None,
            MlpKind::Swiglu => Some(linear(d, hidden, bias, INIT_STD, vb.pp("c_gate"))?),
        };
        Ok(Mlp {
            c_fc: linear(d, hidden, bias, INIT_STD, vb.pp("c_fc"))?,
            c_gate,
            c_proj: linear(hidden, d, bias, config.residual_init_std(), vb.pp("c_proj"))?,
            dropout: Dropout::new(config.dropout, config.seed.unwrap_or(0), &vb.prefix()),
            kernels: config.kernels,
        })
    }

    /// Draws dropout masks from `other`'s streams (a copy rebuilt per pass, `autocast.rs`).
    pub fn share_dropout_with(&mut self, other: &Mlp) {
        self.dropout.share(&other.dropout);
    }

    /// The linear layers by name, for quantization.
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let mut layers = vec![("c_fc", &mut self.c_fc)];
        if let Some(gate) = &mut self.c_gate {
            layers.push(("c_gate", gate));
        }
        layers.push(("c_proj", &mut self.c_proj));
        layers
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let up = self.c_fc.forward(x)?;
        let fused = self.kernels == Kernels::Fused;
        let hidden = match &self.c_gate {
            // Both are the tanh approximation: GPT-2's `gelu_new`.
            None if fused => ops::gelu(&up)?,
            None => ops::gelu::gelu_reference(&up)?,
            Some(gate) if fused => ops::swiglu(&gate.forward(x)?, &up)?,
            Some(gate) => ops::swiglu::swiglu_reference(&gate.forward(x)?, &up)?,
        };
        let y = self.c_proj.forward(&hidden)?;
        if train && self.dropout.is_active() {
            self.dropout.forward(&y)
        } else {
            Ok(y)
        }
    }
}
