//! T5 attention: `q`, `k`, `v`, `o` projections without biases, `n_head` heads of `d_kv`.
//! T5 has no `1/sqrt(d_kv)` on the scores: it folds that factor into the initialisation of
//! `q` (std `(d_model·d_kv)^-0.5`, Hugging Face's weights carry it). That is only harmless
//! under an optimizer whose steps scale with each weight's size (T5's Adafactor); AdamW moves
//! every element by about `lr` whatever its size, so folded `q` weights change `sqrt(d_kv)`
//! times faster, relative to themselves, than the `k` weights and than an explicitly scaled
//! query would. Span-corruption pretraining at lr 3e-3 then grew the attention logits so far
//! that fine-tuning from it was slower than from random weights (docs/t5.md, 2026-12-02).
//! So the stored `q` weights are **unscaled** (initialised like `k`, std `d_model^-0.5`) and
//! the queries are multiplied by `1/sqrt(d_kv)`: the same function as Hugging Face's T5, whose
//! `q` weights are converted on import (`hf.rs`) and for directories saved before this
//! layout (`save_load.rs`). The same layer serves self-attention (keys from the same sequence,
//! with the relative position bias and a mask) and cross-attention (keys and values projected
//! once from the encoder output and kept in the cache, `cache.rs`; only the encoder's padding
//! mask).

use llmlab_nn::attention::softmax_last_dim;
use llmlab_nn::linear::{linear, Linear};
use llmlab_plugin_api::candle::{Module, Result, Tensor};
use llmlab_plugin_api::candle_nn::VarBuilder;

use crate::config::T5Config;

/// The factor between the stored `q` weights and Hugging Face's: `1/sqrt(d_kv)`.
pub fn query_scale(d_kv: usize) -> f64 {
    (d_kv as f64).powf(-0.5)
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    n_head: usize,
    d_kv: usize,
    /// `1/sqrt(d_kv)`, applied to the queries (see the module doc).
    query_scale: f64,
}

impl Attention {
    /// The projections under `vb`, initialised as Hugging Face's `T5PreTrainedModel` does but
    /// for `q`, whose `1/sqrt(d_kv)` is applied in [`Attention::query`] instead.
    pub fn new(config: &T5Config, vb: VarBuilder) -> Result<Attention> {
        let (d, inner) = (config.d_model, config.inner_dim());
        let std = |fan: usize| (fan as f64).powf(-0.5);
        Ok(Attention {
            q: linear(d, inner, false, std(d), vb.pp("q"))?,
            k: linear(d, inner, false, std(d), vb.pp("k"))?,
            v: linear(d, inner, false, std(d), vb.pp("v"))?,
            o: linear(inner, d, false, std(inner), vb.pp("o"))?,
            n_head: config.n_head,
            d_kv: config.d_kv,
            query_scale: query_scale(config.d_kv),
        })
    }

    /// `(batch, seq, inner)` → `(batch, n_head, seq, d_kv)`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.n_head, self.d_kv))?
            .transpose(1, 2)?
            .contiguous()
    }

    pub fn query(&self, x: &Tensor) -> Result<Tensor> {
        self.heads(&self.q.forward(x)?)? * self.query_scale
    }

    /// Keys and values of `x` `(batch, seq, d_model)`, by head.
    pub fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.heads(&self.k.forward(x)?)?,
            self.heads(&self.v.forward(x)?)?,
        ))
    }

    /// `softmax(q·kᵀ + bias)·v` through `o`; `bias` broadcasts to `(batch, n_head, q, k)` and
    /// carries the position bias and the masks.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let weights = softmax_last_dim(&scores)?;
        let out = weights
            .matmul(v)?
            .transpose(1, 2)?
            .reshape((b, t, self.n_head * self.d_kv))?;
        self.o.forward(&out)
    }

    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("q", &mut self.q),
            ("k", &mut self.k),
            ("v", &mut self.v),
            ("o", &mut self.o),
        ]
    }
}
