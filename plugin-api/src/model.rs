//! The [`Model`] component: a causal LM with everything training, alignment, decoding and
//! quantization need from it.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use crate::{Error, GenerateOptions, Quantizer, Result, Tokenizer};

/// The `config.json` key a saved model directory names its component with
/// (`"llmlab_model": "gpt"`): `model_load(dir)` hands the directory to that component's
/// factory. `Model::save` implementations write it.
pub const MODEL_MARKER_KEY: &str = "llmlab_model";

/// What a forward pass should return besides logits.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Training mode: dropout on.
    pub train: bool,
    /// Also return the final hidden states (value heads, reward heads).
    pub hidden_states: bool,
    /// Nothing will backpropagate through this pass (evaluation, scoring, a frozen teacher or
    /// reference): an implementation may skip building the autograd graph and return detached
    /// tensors. Without it a forward pass stays differentiable even with `train` off — `train`
    /// only switches dropout — because trainers build losses on such passes (GRPO's and PPO's
    /// policy terms).
    pub no_grad: bool,
}

impl ForwardOptions {
    /// A pass nothing backpropagates through: no dropout, no graph needed.
    pub fn inference() -> ForwardOptions {
        ForwardOptions {
            no_grad: true,
            ..ForwardOptions::default()
        }
    }
}

/// Inputs of a forward pass besides the token ids, for encoders and padded batches
/// ([`Model::forward_with`]). The default (all empty) is a plain [`Model::forward`].
#[derive(Debug, Clone, Default)]
pub struct ForwardInputs {
    /// `(batch, seq)`, 1 for a real token and 0 for padding: no position attends to padding
    /// keys. Batches are padded on the right. `None`: every position is a real token.
    pub attention_mask: Option<Tensor>,
    /// `(batch, seq)` u32 segment ids (BERT: 0 for the first sentence, 1 for the second).
    /// `None`: all 0.
    pub token_type_ids: Option<Tensor>,
    /// Return the task head's output (set by [`Model::set_head`]) as `logits` instead of the
    /// LM logits: `(batch, labels)` for a sequence head (classification, regression),
    /// `(batch, seq, labels)` for a token head.
    pub head: bool,
}

impl ForwardInputs {
    /// Whether these ask for nothing beyond a plain forward pass.
    pub fn is_plain(&self) -> bool {
        self.attention_mask.is_none() && self.token_type_ids.is_none() && !self.head
    }

    /// Names what a model without support for these inputs cannot honour, for its refusal.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.attention_mask.is_some() {
            parts.push("an attention (padding) mask");
        }
        if self.token_type_ids.is_some() {
            parts.push("token type (segment) ids");
        }
        if self.head {
            parts.push("a task head");
        }
        parts.join(", ")
    }
}

pub struct ForwardOutput {
    /// `(batch, seq, vocab)`.
    pub logits: Tensor,
    /// Auxiliary loss to add to the LM loss (MoE load balancing); `None` for dense models.
    pub aux_loss: Option<Tensor>,
    /// `(batch, seq, d_model)` after the final norm, when asked for.
    pub hidden: Option<Tensor>,
}

/// Per-layer keys and values of the tokens decoded so far. Made by the model that uses it.
pub trait KvCache: Send {
    /// Tokens already in the cache.
    fn seq_len(&self) -> usize;
    fn reset(&mut self);
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Bytes the cached keys and values occupy (serving reports it); 0 when unknown.
    fn memory_bytes(&self) -> usize {
        0
    }
}

/// The running sequences of a continuous batch, one row each, kept from one decoding step to the
/// next ([`Model::new_batch_cache`], [`Model::decode_batch`]). Sequences join as the last row
/// ([`BatchKvCache::push`]) and leave from anywhere ([`BatchKvCache::swap_remove`]); the rows are
/// in the order of the tokens `decode_batch` takes and the logits it returns.
pub trait BatchKvCache: Send {
    /// Sequences in the batch.
    fn rows(&self) -> usize;
    /// Tokens cached for row `row`.
    fn seq_len(&self, row: usize) -> usize;
    /// A sequence joins as the last row, with the keys and values of `cache` (one row, made by
    /// the same model: [`Model::prefill_sequences`], or `new_cache(1)` + `forward_cached`).
    fn push(&mut self, cache: Box<dyn KvCache>) -> Result<()>;
    /// Row `row` leaves; the last row takes its place, as [`Vec::swap_remove`] does.
    fn swap_remove(&mut self, row: usize) -> Result<()>;
    /// Bytes the batch's keys and values occupy, preallocated room included (serving reports
    /// it); 0 when unknown.
    fn memory_bytes(&self) -> usize {
        0
    }
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The batch cache of a model without one of its own ([`Model::new_batch_cache`]'s default):
/// each sequence keeps its own one-row [`KvCache`], and [`Model::decode_batch`] hands them to
/// [`Model::decode_step`].
#[derive(Default)]
pub struct SequenceCaches {
    pub caches: Vec<Box<dyn KvCache>>,
}

impl BatchKvCache for SequenceCaches {
    fn rows(&self) -> usize {
        self.caches.len()
    }
    fn seq_len(&self, row: usize) -> usize {
        self.caches.get(row).map_or(0, |c| c.seq_len())
    }
    fn push(&mut self, cache: Box<dyn KvCache>) -> Result<()> {
        self.caches.push(cache);
        Ok(())
    }
    fn swap_remove(&mut self, row: usize) -> Result<()> {
        if row >= self.caches.len() {
            return Err(Error::msg(format!(
                "batch cache: no row {row} in {} rows",
                self.caches.len()
            )));
        }
        self.caches.swap_remove(row);
        Ok(())
    }
    fn memory_bytes(&self) -> usize {
        self.caches.iter().map(|c| c.memory_bytes()).sum()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

pub trait Model: Send + Sync {
    /// The component name (`"gpt"`).
    fn name(&self) -> &str;
    /// The resolved config (`config.json` when saved).
    fn config(&self) -> Value;
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model accepts.
    fn ctx_len(&self) -> usize;
    fn device(&self) -> &Device;

    /// Full-sequence forward over `ids` `(batch, seq)` of u32.
    fn forward(&self, ids: &Tensor, options: &ForwardOptions) -> Result<ForwardOutput>;
    fn new_cache(&self, batch: usize) -> Result<Box<dyn KvCache>>;
    /// Forward over the next `ids` `(batch, new)`, appending to `cache`; logits for the new tokens.
    fn forward_cached(&self, ids: &Tensor, cache: &mut dyn KvCache) -> Result<ForwardOutput>;
    /// One decoding step over independent sequences, each with its own cache (made by
    /// `new_cache(1)`) holding any number of tokens: continuous batching, where sequences join
    /// and leave the batch between steps. `tokens[i]` is appended to `caches[i]`; returns
    /// `(n, vocab)` logits of each sequence's next token. The default runs the sequences one at
    /// a time; a model that can, batches them into one forward pass.
    fn decode_step(&self, tokens: &[u32], caches: &mut [&mut dyn KvCache]) -> Result<Tensor> {
        if tokens.len() != caches.len() || tokens.is_empty() {
            return Err(Error::msg(format!(
                "decode_step: {} tokens for {} caches (one token per cache, at least one)",
                tokens.len(),
                caches.len()
            )));
        }
        let mut rows = Vec::with_capacity(tokens.len());
        for (&token, cache) in tokens.iter().zip(caches.iter_mut()) {
            let ids = Tensor::new(&[[token]], self.device())?;
            let logits = self.forward_cached(&ids, &mut **cache)?.logits;
            rows.push(logits.flatten_all()?.unsqueeze(0)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
    /// Prefill for continuous batching: each prompt (non-empty) into its own fresh one-row
    /// cache, as `new_cache(1)` + `forward_cached` would leave it, ready for
    /// [`Model::decode_step`]. Returns the caches and `(n, vocab)` logits of the token after each
    /// prompt. The default runs the prompts one at a time; a model that can, runs them as one
    /// padded batch.
    fn prefill_sequences(&self, prompts: &[Vec<u32>]) -> Result<(Vec<Box<dyn KvCache>>, Tensor)> {
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(Error::msg(
                "prefill_sequences: at least one prompt, none of them empty",
            ));
        }
        let mut caches = Vec::with_capacity(prompts.len());
        let mut rows = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let mut cache = self.new_cache(1)?;
            let ids = Tensor::new(prompt.as_slice(), self.device())?.unsqueeze(0)?;
            let logits = self.forward_cached(&ids, cache.as_mut())?.logits;
            rows.push(logits.get(0)?.get(prompt.len() - 1)?.unsqueeze(0)?);
            caches.push(cache);
        }
        Ok((caches, Tensor::cat(&rows, 0)?))
    }
    /// An empty cache for continuous batching ([`BatchKvCache`]), kept across decoding steps and
    /// decoded by [`Model::decode_batch`]. The default keeps one cache per sequence
    /// ([`SequenceCaches`]) and decodes through [`Model::decode_step`]; a model that overrides
    /// this (one batch of keys and values that lives across steps, so a step writes only the
    /// new token's) overrides `decode_batch` too.
    fn new_batch_cache(&self) -> Box<dyn BatchKvCache> {
        Box::<SequenceCaches>::default()
    }
    /// One decoding step over every row of `batch` (from [`Model::new_batch_cache`]):
    /// `tokens[i]` is appended to row `i`; returns `(rows, vocab)` logits of each row's next
    /// token. The default decodes a [`SequenceCaches`] through [`Model::decode_step`].
    fn decode_batch(&self, tokens: &[u32], batch: &mut dyn BatchKvCache) -> Result<Tensor> {
        let Some(batch) = batch.as_any_mut().downcast_mut::<SequenceCaches>() else {
            return Err(Error::msg(format!(
                "{}: decode_batch got a batch cache that is not the default SequenceCaches (a \
                 model with its own new_batch_cache must override decode_batch too)",
                self.name()
            )));
        };
        let mut caches: Vec<&mut dyn KvCache> = Vec::with_capacity(batch.caches.len());
        for cache in batch.caches.iter_mut() {
            caches.push(cache.as_mut());
        }
        self.decode_step(tokens, &mut caches)
    }
    /// Continues each prompt; `on_token(sequence, token)` sees tokens as they come and returns
    /// `false` to stop that sequence. Returns the new tokens of each sequence.
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>>;

    /// Trainable parameters by name (GPT-2/HF names), sorted by name.
    fn parameters(&self) -> Vec<(String, Var)>;
    fn num_params(&self) -> usize {
        self.parameters().iter().map(|(_, v)| v.elem_count()).sum()
    }
    /// Writes `model.safetensors` + `config.json` into `dir`, atomically.
    fn save(&self, dir: &Path) -> Result<()>;
    /// Writes a Hugging Face transformers directory: `config.json` with its `architectures`,
    /// `model.safetensors` with HF tensor names; with `tokenizer`, its `tokenizer.json` and
    /// `tokenizer_config.json` too. Models whose options map to no HF architecture refuse.
    fn save_hf(&self, dir: &Path, tokenizer: Option<&dyn Tokenizer>) -> Result<()> {
        let _ = (dir, tokenizer);
        Err(Error::unsupported(self.name(), "Hugging Face export"))
    }
    /// Writes one GGUF file for llama.cpp: its architecture name, tensor names and metadata
    /// keys, with `tokenizer`'s vocabulary, merges and special tokens (`tokenizer.ggml.*`).
    fn save_llama_cpp_gguf(&self, path: &Path, tokenizer: Option<&dyn Tokenizer>) -> Result<()> {
        let _ = (path, tokenizer);
        Err(Error::unsupported(self.name(), "llama.cpp GGUF export"))
    }
    /// An independent copy with its own weights (reference models for DPO/PPO).
    fn frozen_copy(&self) -> Result<Box<dyn Model>>;
    /// The same model with linear weights quantized by `quantizer`, except names matching `skip`.
    fn quantized(&self, quantizer: &dyn Quantizer, skip: &[String]) -> Result<Box<dyn Model>> {
        let _ = (quantizer, skip);
        Err(Error::unsupported(self.name(), "quantization"))
    }
    /// Quantization-aware training: with `Some(quantizer)`, every dense linear weight whose name
    /// matches no entry of `skip` is fake-quantized in forward passes (quantized and dequantized,
    /// gradient passed straight through, [`Quantizer::fake_quantize`]), so training adapts the
    /// weights to the rounding they will get from [`Model::quantized`]. `None` turns it off.
    fn set_fake_quant(&self, quantizer: Option<Arc<dyn Quantizer>>, skip: &[String]) -> Result<()> {
        let _ = (quantizer, skip);
        Err(Error::unsupported(
            self.name(),
            "quantization-aware training",
        ))
    }
    /// The scheme linear weights are fake-quantized with (`"q4_0"`), `None` when off.
    fn fake_quant(&self) -> Option<String> {
        None
    }
    /// Non-trainable state that training changes and that checkpoints must keep for a resumed
    /// run to continue bit-exactly (MoE: each router's load-balancing selection bias), by name.
    /// Default: none.
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Sets the state tensor `name` (one of [`Model::state`]) from a checkpoint.
    fn set_state(&self, name: &str, value: &Tensor) -> Result<()> {
        let _ = value;
        Err(Error::msg(format!(
            "{}: the model has no state tensor `{name}`",
            self.name()
        )))
    }
    /// Statistics gathered by training forward passes since the last call, as metrics for
    /// `metrics.jsonl` (MoE: per-layer expert load, dropped tokens, router entropy, aux and
    /// z losses); the call empties them. Default: none.
    fn take_train_metrics(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// Router statistics of one forward pass over `ids` `(batch, seq)` (mixture-of-experts
    /// models): per MoE layer the expert loads, dropped fraction, router entropy and losses.
    fn router_stats(&self, ids: &Tensor) -> Result<Value> {
        let _ = ids;
        Err(Error::unsupported(
            self.name(),
            "router statistics (the model has no mixture-of-experts layers)",
        ))
    }
    /// One training forward and backward: `loss` turns the forward output into the scalar to
    /// minimise; the gradients of the parameters come back in the parameters' own dtype.
    /// `compute` is the forward pass's dtype: the parameters' dtype for plain training, or
    /// bf16/f16 for mixed precision, where the parameters stay the (f32) master weights and the
    /// model casts them for the pass. A model may also trade compute for memory here
    /// (activation checkpointing). The default: plain forward + backward, parameters' dtype only.
    fn forward_backward(
        &self,
        ids: &Tensor,
        options: &ForwardOptions,
        compute: DType,
        loss: &mut dyn FnMut(&ForwardOutput) -> Result<Tensor>,
    ) -> Result<GradStore> {
        if let Some((_, var)) = self.parameters().first() {
            if var.dtype() != compute {
                return Err(Error::unsupported(
                    self.name(),
                    format!(
                        "mixed precision ({compute:?} compute over {:?} parameters)",
                        var.dtype()
                    ),
                ));
            }
        }
        let out = self.forward(ids, options)?;
        Ok(loss(&out)?.backward()?)
    }
    /// Whether training passes over disjoint rows of one batch may run at the same time on
    /// several threads and give what they would one after another: no dropout stream to draw
    /// from, no state a training pass changes (MoE routing biases and their statistics). The
    /// trainers then split a micro-batch's rows over the CPU cores (`row_parallel`, issue 25).
    /// Default: `false`.
    fn row_parallel_training(&self) -> bool {
        false
    }
    /// Forward with a padding mask, segment ids or the task head ([`ForwardInputs`]). The
    /// default runs [`Model::forward`] for plain inputs and refuses the rest, naming them.
    fn forward_with(
        &self,
        ids: &Tensor,
        inputs: &ForwardInputs,
        options: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        if inputs.is_plain() {
            return self.forward(ids, options);
        }
        Err(Error::unsupported(self.name(), inputs.describe()))
    }
    /// [`Model::forward_backward`] with [`ForwardInputs`]: plain inputs go to
    /// `forward_backward`; otherwise (parameters' dtype only) `forward_with` and backward.
    fn forward_backward_with(
        &self,
        ids: &Tensor,
        inputs: &ForwardInputs,
        options: &ForwardOptions,
        compute: DType,
        loss: &mut dyn FnMut(&ForwardOutput) -> Result<Tensor>,
    ) -> Result<GradStore> {
        if inputs.is_plain() {
            return self.forward_backward(ids, options, compute, loss);
        }
        if let Some((_, var)) = self.parameters().first() {
            if var.dtype() != compute {
                return Err(Error::unsupported(
                    self.name(),
                    format!("mixed precision with {}", inputs.describe()),
                ));
            }
        }
        let out = self.forward_with(ids, inputs, options)?;
        Ok(loss(&out)?.backward()?)
    }
    /// Puts a task head on the model (issue 18), replacing any: `config` names `kind`
    /// (`"sequence"`: n-way classification of the whole sequence, `"regression"`: one score,
    /// `"token"`: a label per token) and `num_labels`; its parameters join
    /// [`Model::parameters`] and are saved with the model. `None` removes it. Returns the
    /// head's description, as [`Model::head`].
    fn set_head(&self, config: Option<&Value>) -> Result<Value> {
        let _ = config;
        Err(Error::unsupported(self.name(), "task heads"))
    }
    /// The task head's description (`kind`, `num_labels`, ...), `None` without one.
    fn head(&self) -> Option<Value> {
        None
    }
    /// LoRA (issue 22): with `Some(config)` (`rank`, `alpha`, `dropout`, `targets`) wraps the
    /// chosen linear layers with low-rank adapters, from then on the only trainable parameters
    /// (the base is frozen); `None` removes them. Returns a summary (trainable and total
    /// parameters, the wrapped layers).
    fn set_lora(&self, config: Option<&Value>) -> Result<Value> {
        let _ = config;
        Err(Error::unsupported(self.name(), "LoRA adapters"))
    }
    /// Adds the adapters' product into the base weights (`true`) or takes it out again (`false`).
    fn lora_merge(&self, merged: bool) -> Result<()> {
        let _ = merged;
        Err(Error::unsupported(self.name(), "LoRA adapters"))
    }
    /// Writes the adapters alone in PEFT's layout: `adapter_config.json` and
    /// `adapter_model.safetensors` with PEFT's tensor names.
    fn save_lora(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Err(Error::unsupported(self.name(), "LoRA adapters"))
    }
    /// Loads PEFT-layout adapters from `dir` onto this (base) model; returns as `set_lora`.
    fn load_lora(&self, dir: &Path) -> Result<Value> {
        let _ = dir;
        Err(Error::unsupported(self.name(), "LoRA adapters"))
    }
    /// Pruning (issue 22), in place: `config` names `method`, `sparsity`, `pattern` and `skip`;
    /// `calibration` holds `(batch, seq)` token batches for activation-aware methods (Wanda).
    /// Returns the per-layer report.
    fn prune(&self, config: &Value, calibration: &[Tensor]) -> Result<Value> {
        let _ = (config, calibration);
        Err(Error::unsupported(self.name(), "pruning"))
    }
    /// Structured pruning (issue 22): a new, smaller model with whole units removed (attention
    /// heads and feed-forward channels for `pattern: "structured"`, the least-used experts of
    /// mixture-of-experts layers for `pattern: "experts"`) and the report. Shapes change, so
    /// unlike [`Model::prune`] this cannot work in place; `self` is left as it is.
    fn pruned(&self, config: &Value, calibration: &[Tensor]) -> Result<(Box<dyn Model>, Value)> {
        let _ = (config, calibration);
        Err(Error::unsupported(self.name(), "structured pruning"))
    }
    /// Per prunable layer: its zero weights, total weights and sparsity.
    fn sparsity_report(&self) -> Result<Value> {
        Err(Error::unsupported(self.name(), "sparsity reports"))
    }
}
