//! The two stacks. Every sublayer is pre-norm with a residual: `x + dropout(f(rms_norm(x)))`.
//! An encoder block is self-attention (bidirectional buckets) then feed-forward; a decoder
//! block is causal self-attention, cross-attention over the encoder output, then feed-forward.
//! Each stack ends with its own RMSNorm (`final_layer_norm`). Parameter names are Hugging
//! Face's (`encoder.block.{i}.layer.{j}.SelfAttention.q`, `...EncDecAttention...`,
//! `...DenseReluDense.wi`, `...layer_norm`), so its checkpoints load by name.

use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::Linear;
use llmlab_nn::norm::{Norm, NormKind};
use llmlab_plugin_api::candle::{Result, Tensor};
use llmlab_plugin_api::candle_nn::{Init, VarBuilder};

use crate::attention::Attention;
use crate::cache::T5Cache;
use crate::config::T5Config;
use crate::feed_forward::FeedForward;
use crate::relative_position::RelativeBias;

fn rms_norm(config: &T5Config, vb: VarBuilder) -> Result<Norm> {
    Norm::new(NormKind::Rms, config.d_model, false, config.norm_eps, vb)
}

/// The relative position table of a stack's first block.
fn relative_bias(config: &T5Config, bidirectional: bool, vb: VarBuilder) -> Result<RelativeBias> {
    let table = vb.get_with_hints(
        (config.relative_attention_num_buckets, config.n_head),
        "relative_attention_bias.weight",
        Init::Randn {
            mean: 0.0,
            stdev: (config.d_model as f64).powf(-0.5),
        },
    )?;
    Ok(RelativeBias {
        table,
        bidirectional,
        num_buckets: config.relative_attention_num_buckets,
        max_distance: config.relative_attention_max_distance,
    })
}

/// Applies `dropout` in training only.
fn drop(dropout: &Dropout, x: Tensor, train: bool) -> Result<Tensor> {
    if train && dropout.is_active() {
        dropout.forward(&x)
    } else {
        Ok(x)
    }
}

#[derive(Debug, Clone)]
struct EncoderBlock {
    attn_norm: Norm,
    attn: Attention,
    ff_norm: Norm,
    ff: FeedForward,
}

#[derive(Clone)]
pub struct Encoder {
    blocks: Vec<EncoderBlock>,
    bias: RelativeBias,
    final_norm: Norm,
    dropout: Dropout,
}

impl Encoder {
    pub fn new(config: &T5Config, vb: VarBuilder) -> Result<Encoder> {
        let bias = relative_bias(config, true, vb.pp("block.0.layer.0.SelfAttention"))?;
        let blocks = (0..config.n_layer)
            .map(|i| {
                let b = vb.pp("block").pp(i).pp("layer");
                Ok(EncoderBlock {
                    attn_norm: rms_norm(config, b.pp(0).pp("layer_norm"))?,
                    attn: Attention::new(config, b.pp(0).pp("SelfAttention"))?,
                    ff_norm: rms_norm(config, b.pp(1).pp("layer_norm"))?,
                    ff: FeedForward::new(config, b.pp(1).pp("DenseReluDense"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            blocks,
            bias,
            final_norm: rms_norm(config, vb.pp("final_layer_norm"))?,
            dropout: Dropout::new(config.dropout, config.seed.unwrap_or(0), "encoder"),
        })
    }

    /// The encoder output `(batch, seq, d_model)` of embedded tokens `x`; `mask` is the
    /// additive padding mask `(batch, 1, 1, seq)`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let seq = x.dim(1)?;
        let bias = self
            .bias
            .bias(seq, seq, 0)?
            .to_dtype(x.dtype())?
            .broadcast_add(mask)?;
        let mut x = drop(&self.dropout, x.clone(), train)?;
        for block in &self.blocks {
            let h = block.attn_norm.forward(&x)?;
            let q = block.attn.query(&h)?;
            let (k, v) = block.attn.keys_values(&h)?;
            x = (x + drop(&self.dropout, block.attn.attend(&q, &k, &v, &bias)?, train)?)?;
            let h = block.ff_norm.forward(&x)?;
            x = (x + drop(&self.dropout, block.ff.forward(&h)?, train)?)?;
        }
        drop(&self.dropout, self.final_norm.forward(&x)?, train)
    }

    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let base = format!("encoder.block.{i}.layer");
            for (n, l) in block.attn.linears_mut() {
                out.push((format!("{base}.0.SelfAttention.{n}"), l));
            }
            for (n, l) in block.ff.linears_mut() {
                out.push((format!("{base}.1.DenseReluDense.{n}"), l));
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct DecoderBlock {
    self_norm: Norm,
    self_attn: Attention,
    cross_norm: Norm,
    cross_attn: Attention,
    ff_norm: Norm,
    ff: FeedForward,
}

#[derive(Clone)]
pub struct Decoder {
    blocks: Vec<DecoderBlock>,
    bias: RelativeBias,
    final_norm: Norm,
    dropout: Dropout,
}

impl Decoder {
    pub fn new(config: &T5Config, vb: VarBuilder) -> Result<Decoder> {
        let bias = relative_bias(config, false, vb.pp("block.0.layer.0.SelfAttention"))?;
        let blocks = (0..config.decoder_layers())
            .map(|i| {
                let b = vb.pp("block").pp(i).pp("layer");
                Ok(DecoderBlock {
                    self_norm: rms_norm(config, b.pp(0).pp("layer_norm"))?,
                    self_attn: Attention::new(config, b.pp(0).pp("SelfAttention"))?,
                    cross_norm: rms_norm(config, b.pp(1).pp("layer_norm"))?,
                    cross_attn: Attention::new(config, b.pp(1).pp("EncDecAttention"))?,
                    ff_norm: rms_norm(config, b.pp(2).pp("layer_norm"))?,
                    ff: FeedForward::new(config, b.pp(2).pp("DenseReluDense"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            blocks,
            bias,
            final_norm: rms_norm(config, vb.pp("final_layer_norm"))?,
            dropout: Dropout::new(config.dropout, config.seed.unwrap_or(0), "decoder"),
        })
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// Projects the encoder output into every layer's cross-attention keys and values and
    /// stores them, with the encoder's padding `mask`, in `cache`.
    pub fn start(&self, encoded: &Tensor, mask: Tensor, cache: &mut T5Cache) -> Result<()> {
        let cross = self
            .blocks
            .iter()
            .map(|b| b.cross_attn.keys_values(encoded))
            .collect::<Result<Vec<_>>>()?;
        cache.set_encoder(cross, mask);
        Ok(())
    }

    /// The decoder output `(batch, new, d_model)` of embedded tokens `x` appended to `cache`
    /// (which holds the encoder side, [`Decoder::start`]).
    pub fn forward(&self, x: &Tensor, cache: &mut T5Cache, train: bool) -> Result<Tensor> {
        let (new, offset) = (x.dim(1)?, cache.len());
        let keys = offset + new;
        let mut self_bias = self.bias.bias(new, keys, offset)?.to_dtype(x.dtype())?;
        if new > 1 {
            let causal: Vec<f32> = (0..new)
                .flat_map(|q| {
                    (0..keys).map(move |k| {
                        if k > offset + q {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let causal = Tensor::from_vec(causal, (1, 1, new, keys), x.device())?;
            self_bias = self_bias.broadcast_add(&causal.to_dtype(x.dtype())?)?;
        }
        let cross_mask = cache.encoder_mask().cloned().ok_or_else(|| {
            llmlab_plugin_api::candle::Error::Msg(
                "t5: the decoder ran before the encoder (no encoder output in the cache)".into(),
            )
        })?;
        let mut x = drop(&self.dropout, x.clone(), train)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block.self_norm.forward(&x)?;
            let q = block.self_attn.query(&h)?;
            let (k, v) = block.self_attn.keys_values(&h)?;
            let (k, v) = cache.append(i, &k, &v)?;
            let a = block.self_attn.attend(&q, &k, &v, &self_bias)?;
            x = (x + drop(&self.dropout, a, train)?)?;
            let h = block.cross_norm.forward(&x)?;
            let q = block.cross_attn.query(&h)?;
            let (ck, cv) = cache.cross(i).cloned().ok_or_else(|| {
                llmlab_plugin_api::candle::Error::Msg(format!(
                    "t5: no cross-attention keys for decoder layer {i} in the cache"
                ))
            })?;
            let a = block.cross_attn.attend(&q, &ck, &cv, &cross_mask)?;
            x = (x + drop(&self.dropout, a, train)?)?;
            let h = block.ff_norm.forward(&x)?;
            x = (x + drop(&self.dropout, block.ff.forward(&h)?, train)?)?;
        }
        cache.advance(new);
        drop(&self.dropout, self.final_norm.forward(&x)?, train)
    }

    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let base = format!("decoder.block.{i}.layer");
            for (n, l) in block.self_attn.linears_mut() {
                out.push((format!("{base}.0.SelfAttention.{n}"), l));
            }
            for (n, l) in block.cross_attn.linears_mut() {
                out.push((format!("{base}.1.EncDecAttention.{n}"), l));
            }
            for (n, l) in block.ff.linears_mut() {
                out.push((format!("{base}.2.DenseReluDense.{n}"), l));
            }
        }
        out
    }
}
