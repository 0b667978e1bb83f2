//! Bidirectional multi-head self-attention: every position attends to every real (non-padding)
//! position, with separate query/key/value projections (`attention.self.{query,key,value}`) and
//! the output projection (`attention.output.dense`), Hugging Face BERT's layout.

use llmlab_nn::attention::attention_weights;
use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::{linear, Linear, INIT_STD};
use llmlab_plugin_api::candle::{Module, Result, Tensor};
use llmlab_plugin_api::candle_nn::VarBuilder;

use crate::config::BertConfig;

#[derive(Debug, Clone)]
pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    n_head: usize,
    /// On the attention weights.
    dropout: Dropout,
}

impl SelfAttention {
    /// `vb` is the layer's `attention` prefix.
    pub fn new(config: &BertConfig, seed: u64, site: &str, vb: VarBuilder) -> Result<Self> {
        let d = config.d_model;
        let s = vb.pp("self");
        Ok(SelfAttention {
            query: linear(d, d, true, INIT_STD, s.pp("query"))?,
            key: linear(d, d, true, INIT_STD, s.pp("key"))?,
            value: linear(d, d, true, INIT_STD, s.pp("value"))?,
            output: linear(d, d, true, INIT_STD, vb.pp("output").pp("dense"))?,
            n_head: config.n_head,
            dropout: Dropout::new(config.dropout, seed, &format!("{site}.attention")),
        })
    }

    /// `x` `(batch, seq, d)`; `mask` additive, broadcastable to `(batch, heads, seq, seq)`
    /// (0 for real keys, a large negative number for padding). Returns the output projection.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.n_head;
        let heads = |l: &Linear| -> Result<Tensor> {
            l.forward(x)?
                .reshape((b, t, self.n_head, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(&self.query)?, heads(&self.key)?, heads(&self.value)?);
        let mut weights = attention_weights(&q, &k, mask, true)?;
        if train && self.dropout.is_active() {
            weights = self.dropout.forward(&weights)?;
        }
        let y = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?;
        self.output.forward(&y)
    }
}

/// The additive mask `(batch, 1, 1, seq)` of a 0/1 padding mask `(batch, seq)`: 0 where the key
/// is a real token, -1e9 where it is padding (a finite number: no NaN when a row is all padding).
pub fn additive_padding_mask(
    mask: &Tensor,
    dtype: llmlab_plugin_api::candle::DType,
) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let keep = mask.to_dtype(llmlab_plugin_api::candle::DType::F32)?;
    keep.affine(1e9, -1e9)?
        .reshape((b, 1, 1, t))?
        .to_dtype(dtype)
}
