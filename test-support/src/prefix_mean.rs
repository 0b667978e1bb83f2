//! [`PrefixMean`]: a tiny causal model (token embeddings averaged over the prefix, then a linear
//! head) that returns hidden states, copies itself, saves its weights and samples (uncached,
//! seeded per row like gpt's generator, `row_seeds` included): enough of a policy for aligner
//! tests.

use std::collections::BTreeMap;
use std::path::Path;

use llmlab_plugin_api::candle::{DType, Device, Tensor, Var};
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::rng::SplitMix64;

use crate::VOCAB;

/// `h_t = mean(wte[ids[0..=t]])`, `logits_t = W h_t + b`.
pub struct PrefixMean {
    wte: Var,
    head_weight: Var,
    head_bias: Var,
    device: Device,
}

impl PrefixMean {
    pub fn new(dim: usize) -> PrefixMean {
        let device = Device::Cpu;
        let init = |rows: usize, cols: usize, salt: f32| {
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| ((i as f32 + 1.0) * (0.618 + salt)).sin() * 0.3)
                .collect();
            Var::from_tensor(&Tensor::from_vec(values, (rows, cols), &device).unwrap()).unwrap()
        };
        PrefixMean {
            wte: init(VOCAB, dim, 0.0),
            head_weight: init(VOCAB, dim, 0.1),
            head_bias: Var::zeros(VOCAB, DType::F32, &device).unwrap(),
            device,
        }
    }

    pub fn snapshot(model: &dyn Model) -> BTreeMap<String, Vec<f32>> {
        crate::snapshot(model)
    }
}

impl Model for PrefixMean {
    fn name(&self) -> &str {
        "prefix-mean"
    }
    fn config(&self) -> Value {
        json!({ "vocab_size": VOCAB })
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn ctx_len(&self) -> usize {
        32
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn forward(&self, ids: &Tensor, options: &ForwardOptions) -> Result<ForwardOutput> {
        let (b, s) = ids.dims2()?;
        let d = self.wte.dim(1)?;
        let e = self
            .wte
            .as_tensor()
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, d))?;
        let avg: Vec<f32> = (0..s * s)
            .map(|k| {
                let (t, i) = (k / s, k % s);
                if i <= t {
                    1.0 / (t + 1) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let avg = Tensor::from_vec(avg, (1, s, s), &self.device)?.broadcast_as((b, s, s))?;
        let hidden = avg.matmul(&e)?;
        let logits = hidden
            .reshape((b * s, d))?
            .matmul(&self.head_weight.as_tensor().t()?)?
            .broadcast_add(self.head_bias.as_tensor())?
            .reshape((b, s, VOCAB))?;
        Ok(ForwardOutput {
            logits,
            aux_loss: None,
            hidden: options.hidden_states.then_some(hidden),
        })
    }
    fn new_cache(&self, _: usize) -> Result<Box<dyn KvCache>> {
        Err(Error::unsupported("prefix-mean", "kv cache"))
    }
    fn forward_cached(&self, _: &Tensor, _: &mut dyn KvCache) -> Result<ForwardOutput> {
        Err(Error::unsupported("prefix-mean", "kv cache"))
    }
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        prompts
            .iter()
            .enumerate()
            .map(|(r, prompt)| {
                let mut rng =
                    SplitMix64::new(options.row_seeds.get(r).copied().unwrap_or(options.seed));
                let mut seq = prompt.clone();
                let mut out = Vec::new();
                while out.len() < options.max_tokens {
                    let ids = Tensor::new(seq.as_slice(), &self.device)?.unsqueeze(0)?;
                    let logits = self.forward(&ids, &ForwardOptions::default())?.logits;
                    let row: Vec<f32> = logits.get(0)?.get(seq.len() - 1)?.to_vec1()?;
                    let token = draw(&row, options.temperature, &mut rng);
                    if options.stop_tokens.contains(&token) {
                        break;
                    }
                    out.push(token);
                    seq.push(token);
                    if !on_token(r, token) {
                        break;
                    }
                }
                Ok(out)
            })
            .collect()
    }
    fn parameters(&self) -> Vec<(String, Var)> {
        vec![
            ("lm_head.bias".into(), self.head_bias.clone()),
            ("lm_head.weight".into(), self.head_weight.clone()),
            ("wte.weight".into(), self.wte.clone()),
        ]
    }
    /// Its parameters as `model.safetensors` (enough for a reward model's `reward_model/`).
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors: std::collections::HashMap<String, Tensor> = self
            .parameters()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        llmlab_plugin_api::candle::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        Ok(())
    }
    fn frozen_copy(&self) -> Result<Box<dyn Model>> {
        let copy = |v: &Var| Var::from_tensor(&v.as_tensor().copy()?).map_err(Error::from);
        Ok(Box::new(PrefixMean {
            wte: copy(&self.wte)?,
            head_weight: copy(&self.head_weight)?,
            head_bias: copy(&self.head_bias)?,
            device: self.device.clone(),
        }))
    }
}

/// A token drawn from softmax(`logits` / `temperature`); temperature 0 = argmax.
fn draw(logits: &[f32], temperature: f64, rng: &mut SplitMix64) -> u32 {
    let best = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap_or(0);
    if temperature == 0.0 {
        return best as u32;
    }
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((l - logits[best]) as f64 / temperature).exp())
        .collect();
    let mut u = rng.next_unit() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    best as u32
}
