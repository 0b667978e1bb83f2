//! One transformer block, pre-norm as in GPT-2: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

use llmlab_plugin_api::candle::{Result, Tensor};
use llmlab_plugin_api::candle_nn::VarBuilder;

use crate::attention::Attention;
use crate::cache::{GptCache, Positions};
use crate::config::GptConfig;
use crate::linear::Linear;
use crate::moe::{FeedForward, MoeAux, Pass};
use crate::norm::Norm;
use crate::rope::Rope;

#[derive(Debug, Clone)]
pub struct Block {
    ln_1: Norm,
    attn: Attention,
    ln_2: Norm,
    mlp: FeedForward,
}

impl Block {
    /// Block `index` (from 0): its feed-forward is MoE when the config's `moe` selects it.
    pub fn new(config: &GptConfig, index: usize, vb: VarBuilder) -> Result<Block> {
        let norm = |name: &str| {
            Norm::new(
                config.norm,
                config.d_model,
                config.bias,
                config.norm_eps,
                vb.pp(name),
            )
            .map(|n| n.with_kernels(config.kernels))
        };
        Ok(Block {
            ln_1: norm("ln_1")?,
            attn: Attention::new(config, vb.pp("attn"))?,
            ln_2: norm("ln_2")?,
            mlp: FeedForward::new(config, index, vb.pp("mlp"))?,
        })
    }

    /// Draws dropout masks from `other`'s streams (a copy rebuilt per pass, `autocast.rs`).
    pub fn share_dropout_with(&mut self, other: &Block) {
        self.attn.share_dropout_with(&other.attn);
        self.mlp.share_dropout_with(&other.mlp);
    }

    /// The linear layers by name relative to the block (`attn.c_attn`), for quantization.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let attn = self
            .attn
            .linears_mut()
            .into_iter()
            .map(|(n, l)| (format!("attn.{n}"), l));
        let mlp = self
            .mlp
            .linears_mut()
            .into_iter()
            .map(|(n, l)| (format!("mlp.{n}"), l));
        attn.chain(mlp).collect()
    }

    /// The feed-forward layer (dense or MoE).
    pub fn feed_forward(&self) -> &FeedForward {
        &self.mlp
    }

    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        positions: &Positions,
        mask: Option<&Tensor>,
        cache: Option<(&mut GptCache, usize)>,
        train: bool,
    ) -> Result<Tensor> {
        let pass = Pass::from_train(train);
        Ok(self
            .forward_routed(x, rope, positions, mask, cache, pass)?
            .0)
    }

    /// [`Block::forward`] with the kind of pass spelled out, returning the MoE layer's aux loss
    /// terms and router statistics (`None` for a dense feed-forward).
    pub fn forward_routed(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        positions: &Positions,
        mask: Option<&Tensor>,
        cache: Option<(&mut GptCache, usize)>,
        pass: Pass,
    ) -> Result<(Tensor, Option<MoeAux>)> {
        let a = self.attn.forward(
            &self.ln_1.forward(x)?,
            rope,
            positions,
            mask,
            cache,
            pass.train(),
        )?;
        let x = (x + a)?;
        let (m, aux) = self.mlp.forward(&self.ln_2.forward(&x)?, pass)?;
        Ok(((x + m)?, aux))
    }
}
