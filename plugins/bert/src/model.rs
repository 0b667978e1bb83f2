//! The BERT encoder: embeddings, `n_layer` bidirectional layers (a final LayerNorm with
//! pre-LN), the pooler, the masked-LM head and an optional task head, with Hugging Face
//! `BertForMaskedLM` parameter names (`bert.embeddings.word_embeddings.weight`,
//! `bert.encoder.layer.{i}.attention.self.query.weight`, `cls.predictions.bias`, `classifier.weight`).
//!
//! A plain `forward` gives MLM logits; `forward_with` takes a padding mask and segment ids and,
//! with `head`, returns the task head's output instead. An encoder has no cache and does not
//! generate: those calls are refused.

use std::path::Path;
use std::sync::RwLock;

use llmlab_nn::norm::{Norm, NormKind};
use llmlab_nn::params::{ParamStore, Source};
use llmlab_plugin_api::candle::{DType, Device, Tensor, Var};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{
    Error, ForwardInputs, ForwardOptions, ForwardOutput, GenerateOptions, KvCache, Model, Result,
};

use crate::attention::additive_padding_mask;
use crate::config::{BertConfig, HeadConfig, NormPosition, Pooling};
use crate::embeddings::Embeddings;
use crate::heads::{MlmHead, Pooler, TaskHead};
use crate::layer::Layer;

/// The task head's parameters start with this prefix.
pub const HEAD_PREFIX: &str = "classifier.";

struct Head {
    head: TaskHead,
    params: Vec<(String, Var)>,
}

pub struct Bert {
    /// The architecture; its `head` is kept in step with `head` below.
    config: RwLock<BertConfig>,
    seed: u64,
    /// Everything but the task head, sorted by name.
    params: Vec<(String, Var)>,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// Pre-LN only: the LayerNorm after the last layer.
    final_norm: Option<Norm>,
    pooler: Pooler,
    mlm: MlmHead,
    head: RwLock<Option<Head>>,
    device: Device,
    dtype: DType,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Bert {
    /// Builds the model with parameters from `source` (new seeded weights, or a checkpoint's,
    /// which must then hold the task head's too when `config.head` is set).
    pub fn new(config: BertConfig, source: Source, device: &Device, dtype: DType) -> Result<Bert> {
        config
            .validate()
            .map_err(|m| Error::invalid_config("bert", m))?;
        let params = crate::memory::parameter_count(&config);
        llmlab_plugin_api::memory::ensure_fits(
            "bert",
            "the parameters",
            params * dtype.size_in_bytes() as f64,
            "lower d_model, n_layer or vocab_size",
        )?;
        let seed = config.seed.unwrap_or(0);
        let store = ParamStore::new(source);
        let vb = store.builder(dtype, device);
        let bert = vb.pp("bert");
        let embeddings = Embeddings::new(&config, seed, bert.pp("embeddings"))?;
        let layers = (0..config.n_layer)
            .map(|i| Layer::new(&config, i, seed, bert.pp("encoder").pp("layer").pp(i)))
            .collect::<llmlab_plugin_api::candle::Result<Vec<_>>>()?;
        let final_norm = match config.norm_position {
            NormPosition::Pre => Some(Norm::new(
                NormKind::Layer,
                config.d_model,
                true,
                config.norm_eps,
                bert.pp("encoder").pp("final_layer_norm"),
            )?),
            NormPosition::Post => None,
        };
        let pooler = Pooler::new(&config, bert.pp("pooler"))?;
        let mlm = MlmHead::new(&config, vb.pp("cls").pp("predictions"))?;
        let head = match &config.head {
            Some(h) => Some(TaskHead::new(h.clone(), &config, seed, vb.clone())?),
            None => None,
        };
        let (head_params, params): (Vec<_>, Vec<_>) = store
            .vars()?
            .into_iter()
            .partition(|(name, _)| name.starts_with(HEAD_PREFIX));
        Ok(Bert {
            config: RwLock::new(config),
            seed,
            params,
            embeddings,
            layers,
            final_norm,
            pooler,
            mlm,
            head: RwLock::new(head.map(|head| Head {
                head,
                params: head_params,
            })),
            device: device.clone(),
            dtype,
        })
    }

    pub fn bert_config(&self) -> BertConfig {
        read(&self.config).clone()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every parameter's current value by name (saving, copies).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.parameters()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    }

    /// Checks `ids` and the inputs against the config; names the offending input.
    fn check_inputs(&self, ids: &Tensor, inputs: &ForwardInputs) -> Result<()> {
        let config = read(&self.config);
        let (b, t) = ids.dims2()?;
        if t == 0 {
            return Err(Error::msg("bert: forward over an empty sequence"));
        }
        if t > config.ctx {
            return Err(Error::msg(format!(
                "bert: sequence of {t} tokens exceeds the context length ctx = {}",
                config.ctx
            )));
        }
        let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= config.vocab_size {
            return Err(Error::msg(format!(
                "bert: token id {max_id} is outside the vocabulary (vocab_size = {}); the \
                 tokenizer and the model disagree",
                config.vocab_size
            )));
        }
        for (name, input) in [
            ("attention_mask", &inputs.attention_mask),
            ("token_type_ids", &inputs.token_type_ids),
        ] {
            if let Some(input) = input {
                if input.dims() != [b, t] {
                    return Err(Error::msg(format!(
                        "bert: {name} has shape {:?}, the ids have [{b}, {t}]",
                        input.dims()
                    )));
                }
            }
        }
        if let Some(types) = &inputs.token_type_ids {
            let max = types.flatten_all()?.max(0)?.to_scalar::<u32>()?;
            if max as usize >= config.type_vocab_size {
                return Err(Error::msg(format!(
                    "bert: token type id {max} is outside type_vocab_size = {}",
                    config.type_vocab_size
                )));
            }
        }
        Ok(())
    }

    /// The final hidden states `(batch, seq, d_model)`.
    pub fn encode(&self, ids: &Tensor, inputs: &ForwardInputs, train: bool) -> Result<Tensor> {
        self.check_inputs(ids, inputs)?;
        let types = match &inputs.token_type_ids {
            Some(t) => Some(t.to_dtype(DType::U32)?),
            None => None,
        };
        let mask = match &inputs.attention_mask {
            Some(m) => Some(additive_padding_mask(m, self.dtype)?),
            None => None,
        };
        let mut x = self.embeddings.forward(ids, types.as_ref(), train)?;
        for layer in &self.layers {
            x = layer.forward(&x, mask.as_ref(), train)?;
        }
        Ok(match &self.final_norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        })
    }

    /// The pooled [CLS] state `(batch, d_model)`.
    pub fn pool(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.pooler.forward(hidden)?)
    }

    /// The pooled state `(batch, d_model)` by `pooling`, over the positions `attention_mask`
    /// marks real (unset: all).
    pub fn pool_with(
        &self,
        hidden: &Tensor,
        attention_mask: Option<&Tensor>,
        pooling: Pooling,
    ) -> Result<Tensor> {
        Ok(self
            .pooler
            .forward_pooled(hidden, attention_mask, pooling)?)
    }

    /// MLM logits `(batch, seq, vocab)` of final states.
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.mlm.forward(hidden, &self.embeddings.word)?)
    }

    /// The same architecture and weights, new variables (copies, reloads).
    pub fn copy(&self) -> Result<Bert> {
        let tensors = self
            .tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.copy()?)))
            .collect::<Result<_>>()?;
        Bert::new(
            self.bert_config(),
            Source::Tensors(tensors),
            &self.device,
            self.dtype,
        )
    }
}

impl Model for Bert {
    fn name(&self) -> &str {
        "bert"
    }

    fn config(&self) -> Value {
        read(&self.config).to_json()
    }

    fn vocab_size(&self) -> usize {
        read(&self.config).vocab_size
    }

    fn ctx_len(&self) -> usize {
        read(&self.config).ctx
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// MLM logits over the whole sequence, no padding, segment 0.
    fn forward(&self, ids: &Tensor, options: &ForwardOptions) -> Result<ForwardOutput> {
        self.forward_with(ids, &ForwardInputs::default(), options)
    }

    fn forward_with(
        &self,
        ids: &Tensor,
        inputs: &ForwardInputs,
        options: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        let hidden = self.encode(ids, inputs, options.train)?;
        let logits = if inputs.head {
            let head = read(&self.head);
            let Some(head) = head.as_ref() else {
                return Err(Error::msg(
                    "bert: the model has no task head: give it one with model(\"bert\", #{ head: \
                     #{ kind: \"sequence\", num_labels: n } }) or train it with trainer(\"classify\")",
                ));
            };
            let pooled = self.pool_with(
                &hidden,
                inputs.attention_mask.as_ref(),
                head.head.config.pooling,
            )?;
            head.head.forward(&hidden, &pooled, options.train)?
        } else {
            self.mlm_logits(&hidden)?
        };
        Ok(ForwardOutput {
            logits,
            aux_loss: None,
            hidden: options.hidden_states.then_some(hidden),
        })
    }

    fn new_cache(&self, _batch: usize) -> Result<Box<dyn KvCache>> {
        Err(Error::unsupported(
            "bert",
            "a KV cache (an encoder sees the whole sequence at once)",
        ))
    }

    fn forward_cached(&self, _ids: &Tensor, _cache: &mut dyn KvCache) -> Result<ForwardOutput> {
        Err(Error::unsupported(
            "bert",
            "cached decoding (an encoder sees the whole sequence at once)",
        ))
    }

    fn generate(
        &self,
        _prompts: &[Vec<u32>],
        _options: &GenerateOptions,
        _on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        Err(Error::unsupported(
            "bert",
            "generation (an encoder fills masks: use forward and its MLM logits)",
        ))
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        let mut params = self.params.clone();
        if let Some(head) = read(&self.head).as_ref() {
            params.extend(head.params.iter().cloned());
        }
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    }

    fn save(&self, dir: &Path) -> Result<()> {
        crate::save_load::save(self, dir)
    }

    fn frozen_copy(&self) -> Result<Box<dyn Model>> {
        Ok(Box::new(self.copy()?))
    }

    fn set_head(&self, config: Option<&Value>) -> Result<Value> {
        let mut model_config = write(&self.config);
        let mut slot = write(&self.head);
        let Some(config) = config else {
            *slot = None;
            model_config.head = None;
            return Ok(Value::Null);
        };
        let head: HeadConfig = serde_json::from_value(config.clone())
            .map_err(|e| Error::invalid_config("bert", format!("head: {e}")))?;
        head.validate()
            .map_err(|m| Error::invalid_config("bert", m))?;
        let store = ParamStore::new(Source::Init { seed: self.seed });
        let task = TaskHead::new(
            head.clone(),
            &model_config,
            self.seed,
            store.builder(self.dtype, &self.device),
        )?;
        *slot = Some(Head {
            head: task,
            params: store.vars()?,
        });
        let description = serde_json::to_value(&head)?;
        model_config.head = Some(head);
        Ok(description)
    }

    fn head(&self) -> Option<Value> {
        read(&self.config)
            .head
            .as_ref()
            .and_then(|h| serde_json::to_value(h).ok())
    }
}
