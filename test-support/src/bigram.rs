//! [`Bigram`]: an embedding and a linear head with a bias, the smallest model that learns a
//! bigram pattern; it implements mixed precision as the `Model` trait asks (weights cast for the
//! pass, f32 logits and gradients).

use std::collections::BTreeMap;
use std::path::Path;

use llmlab_plugin_api::candle::backprop::GradStore;
use llmlab_plugin_api::candle::{DType, Device, Tensor, Var};
use llmlab_plugin_api::prelude::*;

use crate::VOCAB;

/// `logits[t] = W · wte[ids[t]] + b`: the smallest model that learns a bigram pattern.
pub struct Bigram {
    wte: Var,
    head_weight: Var,
    head_bias: Var,
    ctx_len: usize,
    device: Device,
}

impl Bigram {
    /// Deterministic weights; `variant` changes them (a "different" fresh model).
    pub fn new(dim: usize, ctx_len: usize, variant: u32) -> Bigram {
        let device = Device::Cpu;
        let init = |rows: usize, cols: usize, salt: f32| {
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| ((i as f32 + 1.0) * (0.618 + salt + variant as f32 * 0.37)).sin() * 0.3)
                .collect();
            Var::from_tensor(&Tensor::from_vec(values, (rows, cols), &device).unwrap()).unwrap()
        };
        let bias = init(1, VOCAB, 0.2).as_tensor().reshape(VOCAB).unwrap();
        Bigram {
            wte: init(VOCAB, dim, 0.0),
            head_weight: init(VOCAB, dim, 0.1),
            head_bias: Var::from_tensor(&bias).unwrap(),
            ctx_len,
            device,
        }
    }

    /// The forward pass computing in `dtype` over casts of the (f32) weights.
    fn forward_in(&self, ids: &Tensor, dtype: DType) -> Result<ForwardOutput> {
        let (b, s) = ids.dims2()?;
        let cast = |v: &Var| v.as_tensor().to_dtype(dtype);
        let h = cast(&self.wte)?.index_select(&ids.flatten_all()?, 0)?;
        let logits = h
            .matmul(&cast(&self.head_weight)?.t()?)?
            .broadcast_add(&cast(&self.head_bias)?)?
            .reshape((b, s, VOCAB))?;
        Ok(ForwardOutput {
            logits,
            aux_loss: None,
            hidden: None,
        })
    }

    pub fn snapshot(&self) -> BTreeMap<String, Vec<f32>> {
        crate::snapshot(self)
    }
}

impl Model for Bigram {
    fn name(&self) -> &str {
        "bigram"
    }
    fn config(&self) -> Value {
        json!({ "vocab_size": VOCAB, "ctx": self.ctx_len })
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn ctx_len(&self) -> usize {
        self.ctx_len
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn forward(&self, ids: &Tensor, _: &ForwardOptions) -> Result<ForwardOutput> {
        self.forward_in(ids, DType::F32)
    }
    /// Mixed precision as the trait asks: weights cast for the pass, f32 logits, f32 gradients.
    fn forward_backward(
        &self,
        ids: &Tensor,
        _: &ForwardOptions,
        compute: DType,
        loss: &mut dyn FnMut(&ForwardOutput) -> Result<Tensor>,
    ) -> Result<GradStore> {
        let mut out = self.forward_in(ids, compute)?;
        out.logits = out.logits.to_dtype(DType::F32)?;
        Ok(loss(&out)?.backward()?)
    }
    fn new_cache(&self, _: usize) -> Result<Box<dyn KvCache>> {
        Err(Error::unsupported("bigram", "kv cache"))
    }
    fn forward_cached(&self, _: &Tensor, _: &mut dyn KvCache) -> Result<ForwardOutput> {
        Err(Error::unsupported("bigram", "kv cache"))
    }
    fn generate(
        &self,
        _: &[Vec<u32>],
        _: &GenerateOptions,
        _: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        Err(Error::unsupported("bigram", "generate"))
    }
    fn parameters(&self) -> Vec<(String, Var)> {
        vec![
            ("lm_head.bias".into(), self.head_bias.clone()),
            ("lm_head.weight".into(), self.head_weight.clone()),
            ("wte.weight".into(), self.wte.clone()),
        ]
    }
    fn save(&self, _: &Path) -> Result<()> {
        Err(Error::unsupported("bigram", "save"))
    }
    fn frozen_copy(&self) -> Result<Box<dyn Model>> {
        Err(Error::unsupported("bigram", "frozen_copy"))
    }
}
