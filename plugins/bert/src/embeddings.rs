//! BERT's input embeddings: word + learned position + token type (segment), summed, then
//! LayerNorm and dropout (`bert.embeddings.*`, Hugging Face's names).

use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::INIT_STD;
use llmlab_nn::norm::{Norm, NormKind};
use llmlab_plugin_api::candle::{Result, Tensor};
use llmlab_plugin_api::candle_nn::{Init, VarBuilder};

use crate::config::BertConfig;

#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `(vocab, d_model)`; the MLM head's output layer shares it.
    pub word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: Norm,
    dropout: Dropout,
}

impl Embeddings {
    pub fn new(config: &BertConfig, seed: u64, vb: VarBuilder) -> Result<Embeddings> {
        let d = config.d_model;
        let randn = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        Ok(Embeddings {
            word: vb.pp("word_embeddings").get_with_hints(
                (config.vocab_size, d),
                "weight",
                randn,
            )?,
            position: vb.pp("position_embeddings").get_with_hints(
                (config.ctx, d),
                "weight",
                randn,
            )?,
            token_type: vb.pp("token_type_embeddings").get_with_hints(
                (config.type_vocab_size, d),
                "weight",
                randn,
            )?,
            norm: Norm::new(
                NormKind::Layer,
                d,
                true,
                config.norm_eps,
                vb.pp("LayerNorm"),
            )?,
            dropout: Dropout::new(config.dropout, seed, "bert.embeddings"),
        })
    }

    /// `ids` and `token_types` `(batch, seq)` u32 → `(batch, seq, d_model)`.
    pub fn forward(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.word.dim(1)?;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let positions = self.position.narrow(0, 0, t)?.unsqueeze(0)?;
        let types = match token_types {
            Some(types) => self
                .token_type
                .index_select(&types.flatten_all()?, 0)?
                .reshape((b, t, d))?,
            None => self
                .token_type
                .narrow(0, 0, 1)?
                .unsqueeze(0)?
                .broadcast_as((b, t, d))?,
        };
        let x = (words.broadcast_add(&positions)? + types)?;
        let x = self.norm.forward(&x)?;
        if train && self.dropout.is_active() {
            self.dropout.forward(&x)
        } else {
            Ok(x)
        }
    }
}
