//! The GPT: token (+ learned position) embeddings, `n_layer` blocks, a final norm and the
//! output head, with GPT-2's parameter names so checkpoints load by name (`transformer.wte`,
//! `transformer.h.{i}.attn.c_attn`, ..., `lm_head`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use llmlab_plugin_api::candle::quantized::QTensor;
use llmlab_plugin_api::candle::{DType, Device, Module, Tensor, Var, D};
use llmlab_plugin_api::candle_nn::{Embedding, Init};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{
    CancelFlag, Error, ForwardOptions, ForwardOutput, GenerateOptions, KvCache, Model, Quantizer,
    Result,
};

use crate::block::Block;
use crate::config::{GptConfig, PosKind};
use llmlab_nn::cache::{DecoderCache, Positions};
use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::{DenseLinear, Linear, INIT_STD};
use llmlab_nn::norm::Norm;
use llmlab_nn::params::{ParamStore, Source};
use llmlab_nn::rope::Rope;

pub struct Gpt {
    config: GptConfig,
    params: Vec<(String, Var)>,
    /// Non-trainable state by name (MoE selection biases, `moe/balance.rs`), sorted by name.
    state: Vec<(String, Var)>,
    wte: Embedding,
    /// Learned positions `(ctx, d_model)`; `None` with RoPE.
    wpe: Option<Tensor>,
    rope: Option<Rope>,
    blocks: Vec<Block>,
    ln_f: Norm,
    lm_head: Linear,
    /// `(ctx, ctx)`: 0 on and below the diagonal, -inf above.
    causal_mask: Tensor,
    /// On the embeddings in training (`dropout.rs`: seeded masks).
    emb_dropout: Dropout,
    device: Device,
    dtype: DType,
    cancel: CancelFlag,
    /// Quantized linear weights by parameter name (`lm_head.weight`); they are not in `params`.
    quantized: BTreeMap<String, Arc<QTensor>>,
    /// The scheme that quantized them (`"q4_0"`), `None` for a dense model.
    scheme: Option<String>,
    /// Weights in quantized layers (unpadded; a tied head counts with the embedding).
    quantized_params: usize,
    /// The dense linear layers by parameter prefix, sharing their fake-quant switch (QAT) with
    /// the layers inside the blocks.
    dense_layers: Vec<(String, DenseLinear)>,
    /// LoRA adapters and the frozen twin they sit in (`lora.rs`); passes go through it.
    lora: crate::lora::LoraSlot,
    /// Buffers of the owned training pass by batch shape (`owned_pass/`).
    owned_arenas: crate::owned_pass::ArenaPool,
    /// Buffers of the owned inference pass by batch shape (`owned_pass/inference.rs`).
    inference_arenas: crate::owned_pass::inference::InferencePool,
}

impl Gpt {
    /// Builds the model with parameters from `source` (new seeded weights, or a checkpoint's).
    pub fn new(
        config: GptConfig,
        source: Source,
        device: &Device,
        dtype: DType,
        cancel: CancelFlag,
    ) -> Result<Gpt> {
        config
            .validate()
            .map_err(|m| Error::invalid_config("gpt", m))?;
        crate::memory::ensure_model_fits(&config, dtype, device)?;
        let store = ParamStore::new(source);
        let vb = store.builder(dtype, device);
        let t = vb.pp("transformer");
        let (d, v) = (config.d_model, config.vocab_size);
        let randn = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let wte_weight = t.pp("wte").get_with_hints((v, d), "weight", randn)?;
        let wpe = match config.pos {
            PosKind::Learned => Some(t.pp("wpe").get_with_hints(
                (config.ctx, d),
                "weight",
                randn,
            )?),
            PosKind::Rope => None,
        };
        let rope = match config.pos {
            PosKind::Rope => Some(Rope::scaled(
                config.head_dim(),
                config.ctx,
                config.rope_theta,
                config.rope_scaling.as_ref(),
                dtype,
                device,
            )?),
            PosKind::Learned => None,
        };
        let blocks = (0..config.n_layer)
            .map(|i| Block::new(&config, i, t.pp("h").pp(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let ln_f = Norm::new(config.norm, d, config.bias, config.norm_eps, t.pp("ln_f"))?
            .with_kernels(config.kernels);
        let lm_head = Linear::Dense(if config.tie_embeddings {
            DenseLinear::new(wte_weight.clone(), None)
        } else {
            DenseLinear::new(
                vb.pp("lm_head").get_with_hints((v, d), "weight", randn)?,
                None,
            )
        });
        let (state, params): (Vec<_>, Vec<_>) = store
            .vars()?
            .into_iter()
            .partition(|(name, _)| crate::moe::is_state(name));
        let mask: Vec<f32> = (0..config.ctx)
            .flat_map(|i| (0..config.ctx).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let causal_mask =
            Tensor::from_vec(mask, (config.ctx, config.ctx), device)?.to_dtype(dtype)?;
        let emb_dropout = Dropout::new(config.dropout, config.seed.unwrap_or(0), "transformer.wte");
        let mut gpt = Gpt {
            emb_dropout,
            wte: Embedding::new(wte_weight, d),
            wpe,
            rope,
            blocks,
            ln_f,
            lm_head,
            causal_mask,
            device: device.clone(),
            dtype,
            cancel,
            params,
            state,
            config,
            quantized: BTreeMap::new(),
            scheme: None,
            quantized_params: 0,
            dense_layers: Vec::new(),
            lora: Default::default(),
            owned_arenas: Default::default(),
            inference_arenas: Default::default(),
        };
        let kernels = gpt.config.kernels;
        for (_, layer) in gpt.linears_mut() {
            layer.set_kernels(kernels);
        }
        gpt.refresh_dense_layers();
        Ok(gpt)
    }

    /// Draws dropout masks from `parent`'s streams: a model rebuilt from `parent` for one pass
    /// (mixed precision, `autocast.rs`) continues its masks instead of restarting them.
    pub fn share_dropout_with(&mut self, parent: &Gpt) {
        self.emb_dropout.share(&parent.emb_dropout);
        for (mine, theirs) in self.blocks.iter_mut().zip(&parent.blocks) {
            mine.share_dropout_with(theirs);
        }
    }

    fn refresh_dense_layers(&mut self) {
        self.dense_layers = self
            .linears_mut()
            .into_iter()
            .filter_map(|(name, layer)| match layer {
                Linear::Dense(dense) => Some((name, dense.clone())),
                Linear::Quantized(_) => None,
            })
            .collect();
    }

    /// The dense linear layers by parameter prefix (`transformer.h.0.mlp.c_fc`).
    pub fn dense_layers(&self) -> &[(String, DenseLinear)] {
        &self.dense_layers
    }

    /// Every linear layer with its parameter prefix (`transformer.h.0.attn.c_attn`, `lm_head`).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut layers = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            layers.extend(
                block
                    .linears_mut()
                    .into_iter()
                    .map(|(n, l)| (format!("transformer.h.{i}.{n}"), l)),
            );
        }
        layers.push(("lm_head".to_string(), &mut self.lm_head));
        layers
    }

    /// Quantized weights by parameter name, as a GGUF file stores them.
    pub fn quantized_weights(&self) -> &BTreeMap<String, Arc<QTensor>> {
        &self.quantized
    }

    /// The scheme of the quantized weights, `None` for a dense model.
    pub fn scheme(&self) -> Option<&str> {
        self.scheme.as_deref()
    }

    /// Replaces the linear layers named in `weights` (`<prefix>.weight`) by quantized ones made
    /// by `scheme`; their dense weights leave `parameters()`. Every weight must name a layer.
    pub fn install_quantized(
        &mut self,
        weights: BTreeMap<String, Arc<QTensor>>,
        scheme: &str,
    ) -> Result<()> {
        let (mut used, mut elems) = (0, 0);
        let tied_head = self.config.tie_embeddings.then_some("lm_head.weight");
        for (prefix, layer) in self.linears_mut() {
            let key = format!("{prefix}.weight");
            let Some(weight) = weights.get(&key) else {
                continue;
            };
            let (out_dim, in_dim) = layer.dims()?;
            let (q_out, q_in) = weight.shape().dims2()?;
            if q_out != out_dim || q_in < in_dim {
                return Err(Error::msg(format!(
                    "gpt: quantized `{key}` has shape [{q_out}, {q_in}], the layer needs [{out_dim}, {in_dim}]"
                )));
            }
            let bias = layer.bias().cloned();
            *layer = Linear::Quantized(llmlab_nn::linear::QuantizedLinear::new(
                weight.clone(),
                bias,
                in_dim,
            )?);
            used += 1;
            if Some(key.as_str()) != tied_head {
                elems += out_dim * in_dim;
            }
        }
        if used != weights.len() {
            let layers: Vec<String> = self.linears_mut().into_iter().map(|(n, _)| n).collect();
            let unknown: Vec<&String> = weights
                .keys()
                .filter(|k| !layers.iter().any(|l| **k == format!("{l}.weight")))
                .collect();
            return Err(Error::msg(format!(
                "gpt: quantized weights name no linear layer of this config: {unknown:?}"
            )));
        }
        self.params.retain(|(n, _)| !weights.contains_key(n));
        self.quantized.extend(weights);
        self.quantized_params += elems;
        self.scheme = Some(scheme.to_string());
        self.refresh_dense_layers();
        Ok(())
    }

    pub fn gpt_config(&self) -> &GptConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn cancel_flag(&self) -> &CancelFlag {
        &self.cancel
    }

    /// A fresh cache for `batch` rows.
    pub fn cache(&self, batch: usize) -> DecoderCache {
        DecoderCache::new(self.config.n_layer, batch)
    }

    /// The forward pass over `ids` `(batch, seq)`: the full sequence, or with `cache` the next
    /// tokens after those already cached.
    pub fn run(
        &self,
        ids: &Tensor,
        cache: Option<&mut DecoderCache>,
        options: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        Ok(self.run_routed(ids, cache, options)?.0)
    }

    /// [`Gpt::run`], also returning each MoE block's router statistics by block index.
    pub fn run_routed(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut DecoderCache>,
        options: &ForwardOptions,
    ) -> Result<(ForwardOutput, Vec<(usize, crate::moe::LayerStats)>)> {
        if cache.is_some() {
            crate::moe::layer::refuse_incremental(&self.config)?;
        }
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.seq_len());
        if t == 0 {
            return Err(Error::msg("gpt: forward over an empty sequence"));
        }
        if offset + t > self.config.ctx {
            return Err(Error::msg(format!(
                "gpt: sequence of {} tokens exceeds the context length ctx = {}",
                offset + t,
                self.config.ctx
            )));
        }
        if let Some(c) = &cache {
            if c.batch() != b {
                return Err(Error::msg(format!(
                    "gpt: cache holds {} rows, ids have {b}",
                    c.batch()
                )));
            }
        }
        let (positions, mask) = match cache.as_deref() {
            Some(c) => (
                c.positions(t, &self.device)?,
                c.padding_mask(t, &self.device)?,
            ),
            None => (Positions::Offset(0), None),
        };
        let mask = match mask {
            Some(m) => Some(m.to_dtype(self.dtype)?),
            None if t > 1 => Some(self.causal_mask.narrow(0, offset, t)?.narrow(
                1,
                0,
                offset + t,
            )?),
            None => None,
        };

        let mut x = self.wte.forward(ids)?;
        if let Some(wpe) = &self.wpe {
            let pos = match &positions {
                Positions::Offset(o) => wpe.narrow(0, *o, t)?.unsqueeze(0)?,
                Positions::PerRow(p) => {
                    wpe.index_select(&p.flatten_all()?, 0)?
                        .reshape((b, t, self.config.d_model))?
                }
            };
            x = x.broadcast_add(&pos)?;
        }
        if options.train && self.emb_dropout.is_active() {
            x = self.emb_dropout.forward(&x)?;
        }
        let pass = crate::moe::Pass::from_train(options.train);
        let (mut aux_loss, mut router_stats) = (None, Vec::new());
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            let (y, aux) = block.forward_routed(
                &x,
                self.rope.as_ref(),
                &positions,
                mask.as_ref(),
                layer_cache,
                pass,
            )?;
            x = y;
            if let Some(aux) = aux {
                aux_loss = crate::moe::add_loss(aux_loss, aux.loss)?;
                router_stats.push((i, aux.stats));
            }
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let hidden = self.ln_f.forward(&x)?;
        let logits = self.lm_head.forward(&hidden)?;
        let out = ForwardOutput {
            logits,
            aux_loss,
            hidden: options.hidden_states.then_some(hidden),
        };
        Ok((out, router_stats))
    }

    /// Logits of the last position of each row, `(batch, vocab)`.
    pub fn last_logits(&self, ids: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let out = self.run(ids, Some(cache), &ForwardOptions::default())?;
        let t = out.logits.dim(1)?;
        Ok(out
            .logits
            .narrow(1, t - 1, 1)?
            .squeeze(1)?
            .to_dtype(DType::F32)?)
    }

    /// The parameters' and the state's current values by name (checkpoints, copies).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .chain(&self.state)
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// The state variables (MoE selection biases and pending loads), by name.
    pub fn state_vars(&self) -> &[(String, Var)] {
        &self.state
    }
}

impl Model for Gpt {
    fn name(&self) -> &str {
        "gpt"
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

    fn forward(&self, ids: &Tensor, options: &ForwardOptions) -> Result<ForwardOutput> {
        if let Some(lora) = self.lora.get() {
            return lora.forward(ids, options);
        }
        if options.train {
            self.refuse_training_if_quantized()?;
        }
        // Without gradients the owned pass runs where it covers the model (`pass` key).
        if let Some(out) = crate::owned_pass::inference::try_forward(self, ids, options)? {
            return Ok(out);
        }
        self.run(ids, None, options)
    }

    fn new_cache(&self, batch: usize) -> Result<Box<dyn KvCache>> {
        Ok(Box::new(self.cache(batch)))
    }

    fn forward_cached(&self, ids: &Tensor, cache: &mut dyn KvCache) -> Result<ForwardOutput> {
        let cache = cache
            .as_any_mut()
            .downcast_mut::<DecoderCache>()
            .ok_or_else(|| {
                Error::msg("gpt: forward_cached needs a cache made by this model's new_cache")
            })?;
        if let Some(lora) = self.lora.get() {
            return lora.forward_cached(ids, cache);
        }
        self.run(ids, Some(cache), &ForwardOptions::default())
    }

    /// All sequences in one forward pass over their stacked caches (`decoder.rs`).
    fn decode_step(&self, tokens: &[u32], caches: &mut [&mut dyn KvCache]) -> Result<Tensor> {
        crate::decoder::decode_step(self, tokens, caches)
    }

    /// One batch of keys and values that lives across decoding steps (`nn/src/cache.rs`).
    fn new_batch_cache(&self) -> Box<dyn llmlab_plugin_api::model::BatchKvCache> {
        Box::new(llmlab_nn::cache::BatchCache::new(
            self.config.n_layer,
            self.config.ctx,
        ))
    }

    /// Every row of the persistent batch in one forward pass, no cache copied (`decoder.rs`).
    fn decode_batch(
        &self,
        tokens: &[u32],
        batch: &mut dyn llmlab_plugin_api::model::BatchKvCache,
    ) -> Result<Tensor> {
        crate::decoder::decode_batch(self, tokens, batch)
    }

    /// The prompts as one padded batch, split into per-sequence caches (`decoder.rs`).
    fn prefill_sequences(&self, prompts: &[Vec<u32>]) -> Result<(Vec<Box<dyn KvCache>>, Tensor)> {
        crate::decoder::prefill_sequences(self, prompts)
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        if let Some(lora) = self.lora.get() {
            return llmlab_nn::generate(&lora.twin, prompts, options, on_token);
        }
        llmlab_nn::generate(self, prompts, options, on_token)
    }

    /// The dense parameters; a quantized model's quantized weights are not trainable.
    fn parameters(&self) -> Vec<(String, Var)> {
        match self.lora.get() {
            Some(lora) => lora.params.clone(),
            None => self.params.clone(),
        }
    }

    /// Counts quantized weights too (unpadded), so a model and its quantized copy agree.
    fn num_params(&self) -> usize {
        self.base_params_count() + self.lora.get().map_or(0, |l| l.trainable())
    }

    /// A directory of safetensors + config.json, or with a path ending in `.gguf` one GGUF file
    /// (`gguf.rs`); a quantized model saves only as GGUF.
    fn save(&self, dir: &Path) -> Result<()> {
        if crate::gguf::is_gguf_path(dir) {
            return crate::gguf::save(self, dir);
        }
        if let Some(scheme) = &self.scheme {
            return Err(Error::msg(format!(
                "gpt: a {scheme}-quantized model saves as GGUF: give a path ending in .gguf \
                 (in scripts: qmodel.save_gguf(path)), not {}",
                dir.display()
            )));
        }
        crate::save_load::save(self, dir)
    }

    /// `hf_export.rs`: GPT-2 or Llama-family layout, by the options.
    fn save_hf(
        &self,
        dir: &Path,
        tokenizer: Option<&dyn llmlab_plugin_api::Tokenizer>,
    ) -> Result<()> {
        crate::hf_export::save_hf(self, dir, tokenizer)
    }

    /// `gguf_llama.rs`: llama.cpp's names and keys.
    fn save_llama_cpp_gguf(
        &self,
        path: &Path,
        tokenizer: Option<&dyn llmlab_plugin_api::Tokenizer>,
    ) -> Result<()> {
        crate::gguf_llama::save(self, path, tokenizer)
    }

    fn frozen_copy(&self) -> Result<Box<dyn Model>> {
        let copy = self.copy()?;
        if let Some(lora) = self.lora.get() {
            crate::lora::copy_onto(&lora, &copy, &copy.lora)?;
        }
        Ok(Box::new(copy))
    }

    fn quantized(&self, quantizer: &dyn Quantizer, skip: &[String]) -> Result<Box<dyn Model>> {
        if self.lora.get().is_some() {
            return Err(Error::msg(
                "gpt: quantize the base before adding LoRA adapters (QLoRA), not a model with them",
            ));
        }
        Ok(Box::new(crate::quantize::quantized(self, quantizer, skip)?))
    }

    /// Mixed precision and activation checkpointing: `training_pass.rs`.
    fn forward_backward(
        &self,
        ids: &Tensor,
        options: &ForwardOptions,
        compute: DType,
        loss: &mut dyn FnMut(&ForwardOutput) -> Result<Tensor>,
    ) -> Result<llmlab_plugin_api::candle::backprop::GradStore> {
        if let Some(lora) = self.lora.get() {
            crate::training_pass::refuse_owned_pass(self, "LoRA adapters take their own pass")?;
            return lora.forward_backward(ids, options, compute, loss);
        }
        self.refuse_training_if_quantized()?;
        crate::training_pass::forward_backward(self, ids, options, compute, loss)
    }

    /// Dropout draws from shared streams and MoE passes update routing state and statistics;
    /// LoRA adapters run their own pass (with adapter dropout). Without them a pass is a pure
    /// function of the weights and its rows.
    fn row_parallel_training(&self) -> bool {
        let config = self.gpt_config();
        config.dropout == 0.0 && config.moe.is_none() && self.lora.get().is_none()
    }

    /// MoE selection biases and their pending loads (`moe/balance.rs`).
    fn state(&self) -> Vec<(String, Tensor)> {
        self.state
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    fn set_state(&self, name: &str, value: &Tensor) -> Result<()> {
        crate::moe::model_stats::set_state(&self.state, name, value)
    }

    fn take_train_metrics(&self) -> Vec<(String, f64)> {
        crate::moe::model_stats::take_train_metrics(&self.blocks)
    }

    fn router_stats(&self, ids: &Tensor) -> Result<Value> {
        crate::moe::model_stats::router_stats(self, ids)
    }

    fn set_fake_quant(&self, quantizer: Option<Arc<dyn Quantizer>>, skip: &[String]) -> Result<()> {
        crate::quantize::set_fake_quant(self, quantizer, skip)
    }

    fn set_lora(&self, config: Option<&Value>) -> Result<Value> {
        crate::lora::set_lora(self, &self.lora, config)
    }

    fn lora_merge(&self, merged: bool) -> Result<()> {
        crate::lora::merge(self, &self.lora, merged)
    }

    fn save_lora(&self, dir: &Path) -> Result<()> {
        crate::lora::save(&self.lora, dir)
    }

    fn load_lora(&self, dir: &Path) -> Result<Value> {
        crate::lora::load(self, &self.lora, dir)
    }

    fn prune(&self, config: &Value, calibration: &[Tensor]) -> Result<Value> {
        crate::prune::prune(self, config, calibration)
    }

    fn sparsity_report(&self) -> Result<Value> {
        crate::prune::sparsity_report(self)
    }

    /// Heads and feed-forward channels (`prune/structured.rs`) or MoE experts
    /// (`prune/experts.rs`) removed: a new, smaller model.
    fn pruned(&self, config: &Value, calibration: &[Tensor]) -> Result<(Box<dyn Model>, Value)> {
        let (model, report) = crate::prune::pruned(self, config, calibration)?;
        Ok((Box::new(model), report))
    }

    fn fake_quant(&self) -> Option<String> {
        self.dense_layers
            .iter()
            .find_map(|(_, layer)| layer.fake_quantizer())
            .map(|q| q.name().to_string())
    }
}

impl Gpt {
    /// Weights of the model itself, dense and quantized (unpadded), without adapters.
    pub fn base_params_count(&self) -> usize {
        let dense: usize = self.params.iter().map(|(_, v)| v.elem_count()).sum();
        dense + self.quantized_params
    }

    /// The model's own weights by name (with adapters on too; `parameters()` then lists those).
    pub fn parameters_by_name(&self) -> std::collections::HashMap<String, Var> {
        self.params.iter().cloned().collect()
    }

    /// The model's own parameters in order, without cloning the list (the owned pass).
    pub(crate) fn parameters_owned(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The owned training pass's buffers (`owned_pass/arena.rs`).
    pub(crate) fn owned_arenas(&self) -> &crate::owned_pass::ArenaPool {
        &self.owned_arenas
    }

    /// The owned inference pass's buffers (`owned_pass/inference.rs`).
    pub fn inference_arenas(&self) -> &crate::owned_pass::inference::InferencePool {
        &self.inference_arenas
    }

    /// The adapters, if any (`lora.rs`).
    pub fn lora(&self) -> Option<Arc<crate::lora::LoraModel>> {
        self.lora.get()
    }

    /// Training a quantized model would "succeed" with a flat loss: its quantized weights have no
    /// gradient (candle's quantized matmul has no backward), so only norms and embeddings could
    /// move. Every training pass (forward in training mode, forward_backward) asks this first.
    pub fn refuse_training_if_quantized(&self) -> Result<()> {
        match &self.scheme {
            None => Ok(()),
            Some(scheme) => Err(Error::msg(format!(
                "gpt: cannot train a {scheme}-quantized model: its {n} quantized linear weights \
                 have no gradient (quantized matmuls have no backward pass), so training would \
                 leave them unchanged. Train the dense model it was quantized from instead — \
                 with the trainer's `qat: \"{scheme}\"` key to adapt it to {scheme} rounding \
                 (quantization-aware training) — and quantize it afterwards",
                n = self.quantized.len()
            ))),
        }
    }

    /// An independent copy: dense weights copied, quantized ones shared (they never change).
    pub fn copy(&self) -> Result<Gpt> {
        let tensors = self
            .tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.copy()?)))
            .collect::<Result<_>>()?;
        let source = Source::Partial {
            tensors,
            placeholders: self.quantized.keys().cloned().collect(),
        };
        let mut copy = Gpt::new(
            self.config.clone(),
            source,
            &self.device,
            self.dtype,
            self.cancel.clone(),
        )?;
        if let Some(scheme) = &self.scheme {
            copy.install_quantized(self.quantized.clone(), scheme)?;
        }
        Ok(copy)
    }
}

/// Mean cross-entropy of `logits` `(batch, seq, vocab)` against `targets` `(batch, seq)`,
/// from differentiable ops (for tests and examples; trainers bring their own loss).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let logits = logits.reshape((b * t, v))?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&lse)?;
    let picked = log_probs.gather(&targets.reshape((b * t, 1))?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// The pieces of the full-sequence forward pass, for a pass that drives the blocks itself
/// (activation checkpointing, `training_pass.rs`).
pub(crate) struct Stages<'a> {
    pub wte: &'a Embedding,
    pub wpe: Option<&'a Tensor>,
    pub rope: Option<&'a Rope>,
    pub blocks: &'a [Block],
    pub ln_f: &'a Norm,
    pub lm_head: &'a Linear,
    pub causal_mask: &'a Tensor,
}

impl Gpt {
    pub(crate) fn stages(&self) -> Stages<'_> {
        Stages {
            wte: &self.wte,
            wpe: self.wpe.as_ref(),
            rope: self.rope.as_ref(),
            blocks: &self.blocks,
            ln_f: &self.ln_f,
            lm_head: &self.lm_head,
            causal_mask: &self.causal_mask,
        }
    }
}

impl Stages<'_> {
    /// Token (+ learned position) embeddings of `ids` from position 0, as `Gpt::run` without
    /// a cache computes them (no dropout: checkpointing needs dropout 0).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let x = self.wte.forward(ids)?;
        Ok(match self.wpe {
            Some(wpe) => x.broadcast_add(&wpe.narrow(0, 0, t)?.unsqueeze(0)?)?,
            None => x,
        })
    }
}
