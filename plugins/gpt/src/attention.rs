//! Causal self-attention (Vaswani et al. 2017) with grouped-query heads (Ainslie et al. 2023).
//!
//! One fused projection `c_attn` gives queries (`n_head` heads) and keys and values
//! (`n_kv_head` heads each); each group of `n_head / n_kv_head` query heads shares one key/value
//! head. Scores are `q·kᵀ / sqrt(head_dim)` plus the causal mask, softmax, weighted sum of
//! values, `c_proj`. A head's width is `head_dim` (`d_model / n_head` unless set), the query/key/
//! value biases follow `qkv_bias` (Qwen2), and with `qk_norm` each query and key head is
//! RMS-normalised (weights `q_norm`, `k_norm` of `head_dim`) before RoPE (Qwen3).
//!
//! A full causal sequence without dropout (training, scoring, the first step of generation) runs
//! the fused kernel `llmlab_nn::ops::causal_attention_packed` on the `c_attn` output as
//! it is, rope included, with no head split or merge copies. Cached decoding runs the fused
//! `llmlab_nn::ops::cached_attention` (grouped kv heads read in place, one pass per output
//! row). Attention dropout and `kernels: "reference"` take the composed path (its softmax fused
//! unless "reference"; candle's own fused softmax has no backward and is never used).

use llmlab_nn::attention::{attention_weights, repeat_kv};
use llmlab_nn::ops;
use llmlab_plugin_api::candle::{Module, Result, Tensor, D};
use llmlab_plugin_api::candle_nn::VarBuilder;

use crate::config::{GptConfig, Kernels, NormKind};
use llmlab_nn::cache::{DecoderCache, Positions};
use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::{linear, Linear, INIT_STD};
use llmlab_nn::norm::Norm;
use llmlab_nn::rope::Rope;

#[derive(Debug, Clone)]
pub struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    /// Per-head RMSNorm of queries and keys (`qk_norm`).
    qk_norm: Option<(Norm, Norm)>,
    /// On the attention weights.
    attn_dropout: Dropout,
    /// On the output projection (the residual branch).
    resid_dropout: Dropout,
    kernels: Kernels,
}

impl Attention {
    pub fn new(config: &GptConfig, vb: VarBuilder) -> Result<Attention> {
        let (d, hd, q_dim) = (config.d_model, config.head_dim(), config.attn_dim());
        let kv_dim = config.kv_heads() * hd;
        let qk_norm = if config.qk_norm {
            let norm = |name: &str| {
                Norm::new(NormKind::Rms, hd, false, config.norm_eps, vb.pp(name))
                    .map(|n| n.with_kernels(config.kernels))
            };
            Some((norm("q_norm")?, norm("k_norm")?))
        } else {
            None
        };
        Ok(Attention {
            c_attn: linear(
                d,
                q_dim + 2 * kv_dim,
                config.qkv_bias(),
                INIT_STD,
                vb.pp("c_attn"),
            )?,
            c_proj: linear(
                q_dim,
                d,
                config.bias,
                config.residual_init_std(),
                vb.pp("c_proj"),
            )?,
            n_head: config.n_head,
            n_kv_head: config.kv_heads(),
            head_dim: hd,
            qk_norm,
            attn_dropout: Dropout::new(
                config.dropout,
                config.seed.unwrap_or(0),
                &format!("{}.weights", vb.prefix()),
            ),
            resid_dropout: Dropout::new(config.dropout, config.seed.unwrap_or(0), &vb.prefix()),
            kernels: config.kernels,
        })
    }

    /// Draws dropout masks from `other`'s streams (a copy rebuilt per pass, `autocast.rs`).
    pub fn share_dropout_with(&mut self, other: &Attention) {
        self.attn_dropout.share(&other.attn_dropout);
        self.resid_dropout.share(&other.resid_dropout);
    }

    /// The linear layers by name, for quantization.
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![("c_attn", &mut self.c_attn), ("c_proj", &mut self.c_proj)]
    }

    /// `x` `(batch, seq, d_model)`; `mask` additive, broadcastable to `(batch, heads, seq, keys)`.
    /// With `cache`, the new keys/values are appended to layer `layer` and attended with the old.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&Rope>,
        positions: &Positions,
        mask: Option<&Tensor>,
        cache: Option<(&mut DecoderCache, usize)>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let d = h * hd;
        let qkv = self.c_attn.forward(x)?;
        let fused = self.kernels == Kernels::Fused;
        // Without a cache the mask is the plain causal one (`Gpt::run`), which the kernel builds in.
        let whole_sequence = cache.is_none()
            && matches!(positions, Positions::Offset(0))
            && mask.is_none_or(|m| m.dims() == [t, t]);
        if fused && whole_sequence && !(train && self.attn_dropout.is_active()) {
            let mut qkv = qkv.reshape((b, t, h + 2 * kv, hd))?;
            if let Some((q_norm, k_norm)) = &self.qk_norm {
                let q = q_norm.forward(&qkv.narrow(2, 0, h)?)?;
                let k = k_norm.forward(&qkv.narrow(2, h, kv)?)?;
                qkv = Tensor::cat(&[q, k, qkv.narrow(2, h + kv, kv)?], 2)?;
            }
            if let Some(rope) = rope {
                qkv = rope.apply_packed(&qkv, h + kv)?;
            }
            let y = ops::causal_attention_packed(&qkv, h, kv)?.reshape((b, t, d))?;
            return self.project(&y, train);
        }
        let heads = |start: usize, n: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, start, n * hd)?
                .reshape((b, t, n, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (mut q, mut k, v) = (heads(0, h)?, heads(d, kv)?, heads(d + kv * hd, kv)?);
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
        if let Some(rope) = rope {
            q = rope.apply(&q, positions)?;
            k = rope.apply(&k, positions)?;
        }
        let cached = cache.is_some();
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        if fused && cached && !(train && self.attn_dropout.is_active()) {
            let y = ops::cached_attention(&q, &k, &v, mask)?;
            return self.project(&y, train);
        }
        let k = repeat_kv(k, h / kv)?;
        let v = repeat_kv(v, h / kv)?;

        let mut att = attention_weights(&q, &k, mask, fused)?;
        if train && self.attn_dropout.is_active() {
            att = self.attn_dropout.forward(&att)?;
        }
        let y = att
            .matmul(&v.contiguous()?)?
            .transpose(1, 2)?
            .reshape((b, t, d))?;
        self.project(&y, train)
    }

    /// `c_proj`, then residual dropout in training.
    fn project(&self, y: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.c_proj.forward(y)?;
        if train && self.resid_dropout.is_active() {
            self.resid_dropout.forward(&y)
        } else {
            Ok(y)
        }
    }
}
