//! Classification with a decoder (`gpt`): a model without task heads of its own is wrapped for
//! the `classify` trainer with a linear head on the final hidden state of each row's **last
//! real token** — the only position that has seen the whole input in a causal model (right
//! padding leaves it untouched). The head's weights (`classifier.weight`, `classifier.bias`)
//! belong to the trainer: they are trained, checkpointed and resumed with the model's, but
//! `m.save(..)` saves the decoder alone.

use std::path::Path;

use llmlab_plugin_api::candle::{DType, Device, Tensor, Var};
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::{ForwardOutput, GenerateOptions, KvCache};

/// The trainer-owned head: `(labels, d_model)` weight and `(labels,)` bias.
#[derive(Clone)]
pub struct HeadWeights {
    pub description: Value,
    weight: Var,
    bias: Var,
}

impl HeadWeights {
    /// A head of `labels` outputs for `model`'s hidden width, N(0, 0.02) from `seed`.
    pub fn new(model: &dyn Model, description: Value, labels: usize, seed: u64) -> Result<Self> {
        let probe = Tensor::zeros((1, 1), DType::U32, model.device())?;
        let options = ForwardOptions {
            hidden_states: true,
            ..ForwardOptions::inference()
        };
        let hidden = model.forward(&probe, &options)?.hidden.ok_or_else(|| {
            Error::unsupported(
                model.name(),
                "hidden states (a last-token classification head reads them)",
            )
        })?;
        let d = hidden.dim(2)?;
        let mut rng = llmlab_plugin_api::rng::SplitMix64::new(seed ^ 0x4845_4144);
        let values: Vec<f32> = (0..labels * d)
            .map(|_| (0.02 * rng.normal()) as f32)
            .collect();
        let dtype = model
            .parameters()
            .first()
            .map_or(DType::F32, |(_, v)| v.dtype());
        let weight = Tensor::from_vec(values, (labels, d), model.device())?.to_dtype(dtype)?;
        let bias = Tensor::zeros(labels, dtype, model.device())?;
        Ok(HeadWeights {
            description,
            weight: Var::from_tensor(&weight)?,
            bias: Var::from_tensor(&bias)?,
        })
    }
}

/// `base` with the head on its last real token.
pub struct LastTokenHead<'m> {
    pub base: &'m dyn Model,
    pub head: HeadWeights,
}

impl LastTokenHead<'_> {
    fn classify(
        &self,
        ids: &Tensor,
        inputs: &ForwardInputs,
        options: &ForwardOptions,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let options = ForwardOptions {
            hidden_states: true,
            ..*options
        };
        let hidden = self
            .base
            .forward(ids, &options)?
            .hidden
            .ok_or_else(|| Error::msg(format!("{}: no hidden states", self.base.name())))?;
        let lengths: Vec<u32> = match &inputs.attention_mask {
            Some(mask) => mask.to_dtype(DType::U32)?.sum(1)?.to_vec1()?,
            None => vec![t as u32; b],
        };
        // A one-hot row per sequence selects its last real position (differentiable).
        let mut select = vec![0f32; b * t];
        for (row, &len) in lengths.iter().enumerate() {
            select[row * t + (len.max(1) as usize - 1)] = 1.0;
        }
        let select = Tensor::from_vec(select, (b, 1, t), ids.device())?.to_dtype(hidden.dtype())?;
        let last = select.matmul(&hidden)?.squeeze(1)?;
        Ok(last
            .matmul(&self.head.weight.as_tensor().t()?)?
            .broadcast_add(self.head.bias.as_tensor())?)
    }
}

impl Model for LastTokenHead<'_> {
    fn name(&self) -> &str {
        self.base.name()
    }
    fn config(&self) -> Value {
        self.base.config()
    }
    fn vocab_size(&self) -> usize {
        self.base.vocab_size()
    }
    fn ctx_len(&self) -> usize {
        self.base.ctx_len()
    }
    fn device(&self) -> &Device {
        self.base.device()
    }
    fn forward(&self, ids: &Tensor, options: &ForwardOptions) -> Result<ForwardOutput> {
        self.base.forward(ids, options)
    }
    /// With `head`: the head's `(batch, labels)` logits. Segment ids are not used: a decoder
    /// sees the pair's boundary as the [SEP] token.
    fn forward_with(
        &self,
        ids: &Tensor,
        inputs: &ForwardInputs,
        options: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        if !inputs.head {
            return self.base.forward_with(ids, inputs, options);
        }
        Ok(ForwardOutput {
            logits: self.classify(ids, inputs, options)?,
            aux_loss: None,
            hidden: None,
        })
    }
    fn new_cache(&self, batch: usize) -> Result<Box<dyn KvCache>> {
        self.base.new_cache(batch)
    }
    fn forward_cached(&self, ids: &Tensor, cache: &mut dyn KvCache) -> Result<ForwardOutput> {
        self.base.forward_cached(ids, cache)
    }
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        self.base.generate(prompts, options, on_token)
    }
    fn parameters(&self) -> Vec<(String, Var)> {
        let mut params = self.base.parameters();
        params.push(("classifier.bias".into(), self.head.bias.clone()));
        params.push(("classifier.weight".into(), self.head.weight.clone()));
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }
    fn save(&self, dir: &Path) -> Result<()> {
        self.base.save(dir)
    }
    fn frozen_copy(&self) -> Result<Box<dyn Model>> {
        self.base.frozen_copy()
    }
    fn head(&self) -> Option<Value> {
        Some(self.head.description.clone())
    }
}
