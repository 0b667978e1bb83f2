//! The T5 model: the shared embedding, the encoder and decoder stacks (`stack.rs`) and the
//! output head (tied to the embedding, scaled by `d_model^-0.5` as T5 does, or v1.1's own
//! `lm_head`), behind the `Model` contract. Sequences cross that contract packed as
//! `input </s> target` (`packing.rs`); generation drives `llmlab_nn`'s engine (`decoder.rs`).

use std::sync::Arc;

use llmlab_nn::linear::{DenseLinear, Linear, QuantizedLinear};
use llmlab_nn::params::{ParamStore, Source};
use llmlab_plugin_api::candle::{DType, Device, Module, Tensor, Var};
use llmlab_plugin_api::candle_nn::Init;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{
    CancelFlag, Error, ForwardOptions, ForwardOutput, GenerateOptions, KvCache, Model, Quantizer,
    Result,
};

use crate::cache::T5Cache;
use crate::config::T5Config;
use crate::packing::{pad_rows, split, unpack, Split};
use crate::stack::{Decoder, Encoder};

/// Added to attention scores of padding keys.
const MASKED: f32 = -1e9;

#[derive(Clone)]
pub struct T5 {
    config: T5Config,
    params: Vec<(String, Var)>,
    /// `(vocab, d_model)`: the input embedding of both stacks.
    shared: Tensor,
    encoder: Encoder,
    decoder: Decoder,
    lm_head: Linear,
    device: Device,
    dtype: DType,
    cancel: CancelFlag,
    /// The scheme of the quantized linear weights, `None` for a dense model.
    scheme: Option<String>,
}

impl T5 {
    pub fn new(
        config: T5Config,
        source: Source,
        device: &Device,
        dtype: DType,
        cancel: CancelFlag,
    ) -> Result<T5> {
        config
            .validate()
            .map_err(|m| Error::invalid_config("t5", m))?;
        let store = ParamStore::new(source);
        let vb = store.builder(dtype, device);
        let (v, d) = (config.vocab_size, config.d_model);
        let shared = vb.pp("shared").get_with_hints(
            (v, d),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let encoder = Encoder::new(&config, vb.pp("encoder"))?;
        let decoder = Decoder::new(&config, vb.pp("decoder"))?;
        let lm_head = if config.tie_embeddings {
            DenseLinear::new(shared.clone(), None)
        } else {
            DenseLinear::new(
                vb.pp("lm_head").get_with_hints(
                    (v, d),
                    "weight",
                    Init::Randn {
                        mean: 0.0,
                        stdev: (d as f64).powf(-0.5),
                    },
                )?,
                None,
            )
        };
        let params = store.vars()?;
        Ok(T5 {
            config,
            params,
            shared,
            encoder,
            decoder,
            lm_head: Linear::Dense(lm_head),
            device: device.clone(),
            dtype,
            cancel,
            scheme: None,
        })
    }

    pub fn t5_config(&self) -> &T5Config {
        &self.config
    }

    pub fn cancel_flag(&self) -> &CancelFlag {
        &self.cancel
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self.shared.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            t,
            self.config.d_model,
        ))?)
    }

    /// Runs the encoder over `inputs` (each ending with its `</s>`) and stores what the decoder
    /// needs in a new cache.
    pub fn encode(&self, inputs: &[Vec<u32>], train: bool) -> Result<T5Cache> {
        let ids = pad_rows(inputs, self.config.pad_token_id, &self.device)?;
        let (b, s) = ids.dims2()?;
        let mask: Vec<f32> = inputs
            .iter()
            .flat_map(|r| (0..s).map(move |j| if j < r.len() { 0.0 } else { MASKED }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, 1, s), &self.device)?.to_dtype(self.dtype)?;
        let encoded = self.encoder.forward(&self.embed(&ids)?, &mask, train)?;
        let mut cache = T5Cache::new(self.decoder.layers(), b);
        self.decoder.start(&encoded, mask, &mut cache)?;
        Ok(cache)
    }

    /// Decoder hidden states `(batch, new, d_model)` of `ids` appended to `cache`.
    pub fn decode_hidden(&self, ids: &Tensor, cache: &mut T5Cache, train: bool) -> Result<Tensor> {
        Ok(self.decoder.forward(&self.embed(ids)?, cache, train)?)
    }

    /// The head over decoder hidden states.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = if self.config.scales_decoder_output() {
            (hidden * (self.config.d_model as f64).powf(-0.5))?
        } else {
            hidden.clone()
        };
        Ok(self.lm_head.forward(&hidden)?)
    }

    /// Logits `(batch, longest decoder row, vocab)` of decoder inputs `decoder` (each starting
    /// with the decoder start token) given encoder inputs `encoder`: Hugging Face's
    /// `model(input_ids, attention_mask, decoder_input_ids).logits`, with rows right-padded.
    pub fn seq2seq_logits(&self, encoder: &[Vec<u32>], decoder: &[Vec<u32>]) -> Result<Tensor> {
        let mut cache = self.encode(encoder, false)?;
        let ids = pad_rows(decoder, self.config.pad_token_id, &self.device)?;
        let hidden = self.decode_hidden(&ids, &mut cache, false)?;
        self.head(&hidden)
    }

    fn splits(&self, ids: &Tensor) -> Result<(Vec<Split>, usize)> {
        let rows: Vec<Vec<u32>> = ids.to_vec2()?;
        let len = rows.first().map_or(0, Vec::len);
        let splits = rows
            .iter()
            .map(|r| {
                split(
                    r,
                    self.config.eos_token_id,
                    self.config.decoder_start_token_id,
                )
            })
            .collect::<Vec<_>>();
        if let Some((i, s)) = splits
            .iter()
            .enumerate()
            .find(|(_, s)| s.encoder.len() > self.config.ctx)
        {
            return Err(Error::msg(format!(
                "t5: row {i}'s encoder input has {} tokens (through its </s>, id {}), but the encoder takes at most ctx = {}",
                s.encoder.len(),
                self.config.eos_token_id,
                self.config.ctx
            )));
        }
        Ok((splits, len))
    }

    /// Every linear layer with its parameter prefix (`encoder.block.0.layer.0.SelfAttention.q`).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut layers = self.encoder.linears_mut();
        layers.extend(self.decoder.linears_mut());
        layers.push(("lm_head".into(), &mut self.lm_head));
        layers
    }

    /// The tensors `save` writes, by Hugging Face name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    pub fn scheme(&self) -> Option<&str> {
        self.scheme.as_deref()
    }

    /// A copy whose linear weights not matched by `skip` (substrings of weight names) are
    /// quantized by `quantizer`; embeddings and norms stay dense.
    pub fn quantize(&self, quantizer: &dyn Quantizer, skip: &[String]) -> Result<T5> {
        let mut copy = self.clone();
        let mut quantized = Vec::new();
        for (prefix, layer) in copy.linears_mut() {
            let name = format!("{prefix}.weight");
            if skip.iter().any(|s| name.contains(s.as_str())) {
                continue;
            }
            if let Linear::Dense(dense) = layer {
                let (_, in_dim) = dense.weight().dims2()?;
                let weight = Arc::new(quantizer.quantize(&name, dense.weight())?);
                *layer = Linear::Quantized(QuantizedLinear::new(weight, None, in_dim)?);
                quantized.push(name);
            }
        }
        copy.params.retain(|(n, _)| !quantized.contains(n));
        copy.scheme = Some(quantizer.name().to_string());
        Ok(copy)
    }
}

impl Model for T5 {
    fn name(&self) -> &str {
        "t5"
    }

    fn config(&self) -> Value {
        self.config.to_json()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn ctx_len(&self) -> usize {
        self.config.ctx
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// Over packed rows `input </s> target` (`packing.rs`): logits in the rows' layout.
    fn forward(&self, ids: &Tensor, options: &ForwardOptions) -> Result<ForwardOutput> {
        let (splits, len) = self.splits(ids)?;
        let encoder: Vec<Vec<u32>> = splits.iter().map(|s| s.encoder.clone()).collect();
        let decoder: Vec<Vec<u32>> = splits.iter().map(|s| s.decoder.clone()).collect();
        let mut cache = self.encode(&encoder, options.train)?;
        let dec_ids = pad_rows(&decoder, self.config.pad_token_id, &self.device)?;
        let hidden = self.decode_hidden(&dec_ids, &mut cache, options.train)?;
        let logits = unpack(&self.head(&hidden)?, &splits, len)?;
        let hidden = if options.hidden_states {
            Some(unpack(&hidden, &splits, len)?)
        } else {
            None
        };
        Ok(ForwardOutput {
            logits,
            aux_loss: None,
            hidden,
        })
    }

    fn new_cache(&self, batch: usize) -> Result<Box<dyn KvCache>> {
        Ok(Box::new(T5Cache::new(self.decoder.layers(), batch)))
    }

    /// The first call on an empty cache takes packed rows (`input </s> target...`, every row
    /// split at the same position) and runs the encoder; later calls append decoder tokens.
    fn forward_cached(&self, ids: &Tensor, cache: &mut dyn KvCache) -> Result<ForwardOutput> {
        let cache = cache
            .as_any_mut()
            .downcast_mut::<T5Cache>()
            .ok_or_else(|| Error::msg("t5: forward_cached needs a cache made by t5's new_cache"))?;
        if cache.has_encoder() {
            let hidden = self.decode_hidden(ids, cache, false)?;
            return Ok(ForwardOutput {
                logits: self.head(&hidden)?,
                aux_loss: None,
                hidden: None,
            });
        }
        let (splits, len) = self.splits(ids)?;
        if splits
            .iter()
            .any(|s| s.first_output != splits[0].first_output)
        {
            return Err(Error::msg(
                "t5: forward_cached on an empty cache needs every row's input to end (</s>) at the same position; run rows of different input lengths through separate caches",
            ));
        }
        let encoder: Vec<Vec<u32>> = splits.iter().map(|s| s.encoder.clone()).collect();
        let mut fresh = self.encode(&encoder, false)?;
        let decoder: Vec<Vec<u32>> = splits.iter().map(|s| s.decoder.clone()).collect();
        let dec_ids = pad_rows(&decoder, self.config.pad_token_id, &self.device)?;
        let hidden = self.decode_hidden(&dec_ids, &mut fresh, false)?;
        *cache = fresh;
        Ok(ForwardOutput {
            logits: unpack(&self.head(&hidden)?, &splits, len)?,
            aux_loss: None,
            hidden: None,
        })
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        let prompts = crate::decoder::fit_prompts(self, prompts, options)?;
        llmlab_nn::generate(self, &prompts, options, on_token)
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.params.clone()
    }

    fn save(&self, dir: &std::path::Path) -> Result<()> {
        crate::save_load::save(self, dir)
    }

    fn frozen_copy(&self) -> Result<Box<dyn Model>> {
        if let Some(scheme) = &self.scheme {
            return Err(Error::msg(format!(
                "t5: no frozen copy of a {scheme}-quantized model; copy the dense model, then quantize"
            )));
        }
        let tensors = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Box::new(T5::new(
            self.config.clone(),
            Source::Tensors(tensors),
            &self.device,
            self.dtype,
            self.cancel.clone(),
        )?))
    }

    fn quantized(&self, quantizer: &dyn Quantizer, skip: &[String]) -> Result<Box<dyn Model>> {
        Ok(Box::new(self.quantize(quantizer, skip)?))
    }
}
