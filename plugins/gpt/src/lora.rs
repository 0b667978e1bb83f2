//! LoRA and QLoRA (issue 22): low-rank adapters `W + (α/r)·B·A` on chosen linear layers, with
//! the base frozen.
//!
//! A model with adapters keeps its own weights and gains a *frozen twin*: the same GPT rebuilt
//! over detached views of those weights (`Source::Cast`: no `Var`s, so autograd tracks none of
//! them), whose targeted linear layers carry an [`Adapter`]. Every pass of the model goes
//! through the twin while the adapters are on; `parameters()` are the adapters alone, so the
//! trainers (sft, dpo, grpo, ppo: they all optimise `parameters()` over `forward_backward`)
//! train only them. The base linears multiply through `frozen_linear.rs`, whose backward makes
//! the input's gradient only, so no gradient of a base weight is ever allocated. The views share
//! storage with the model's weights, so merging (writing `W + ΔW` into them) reaches the twin.
//!
//! Over a quantized base (QLoRA: `quantize(m, "q4_0")` first) the twin shares the GGML blocks;
//! the product dequantizes on the fly in forward and backward (`frozen_linear.rs`).
//!
//! PEFT's `modules_to_save`: whole modules (norms, the embedding, a linear layer) trained beside
//! the adapters. Each gets a trainable copy of its tensors that the twin uses in place of the
//! frozen view; the base keeps the original (PEFT's `ModulesToSaveWrapper`).
//!
//! Adapters save alone in PEFT's layout: `adapter_config.json` (`peft_type: "LORA"`, `r`,
//! `lora_alpha`, `lora_dropout`, `target_modules`, `modules_to_save`) and
//! `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight` `(r, in)` and
//! `...lora_B.weight` `(out, r)`, and a saved module's tensors under their own names
//! (`base_model.model.<module>.weight`, as PEFT writes them), the module names being this
//! model's (GPT-2's for the GPT-2 layout).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use llmlab_plugin_api::candle::backprop::GradStore;
use llmlab_plugin_api::candle::{DType, Tensor, Var};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Error, ForwardOptions, ForwardOutput, Model, Result};

use crate::frozen_linear::{self, FrozenWeight};
use crate::model::Gpt;
use llmlab_nn::cache::DecoderCache;
use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::Linear;
use llmlab_nn::params::Source;
use llmlab_nn::rng::Rng;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's prefix of every adapter tensor name (`PeftModel` → `LoraModel` → the base model).
pub const PEFT_PREFIX: &str = "base_model.model.";
/// Without `targets`: every linear layer of the blocks (not the head).
pub const DEFAULT_TARGETS: [&str; 4] = ["c_attn", "c_proj", "c_fc", "c_gate"];

/// What `lora(model, #{ rank, alpha, dropout, targets, modules_to_save })` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names or name suffixes (PEFT's `target_modules`): `"c_attn"`, `"h.0.mlp.c_fc"`.
    /// Empty only with `modules_to_save`: then those modules alone train.
    pub targets: Vec<String>,
    /// Modules trained whole beside the adapters (PEFT's `modules_to_save`), by name or name
    /// suffix: `"ln_1"`, `"ln_f"`, `"wte"`.
    pub modules_to_save: Vec<String>,
    /// PEFT's `bias`: which biases train beside the adapters.
    pub bias: BiasMode,
}

/// PEFT's `bias`: `"none"`, `"all"` (every bias of the model) or `"lora_only"` (the targeted
/// layers' biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasMode {
    None,
    All,
    LoraOnly,
}

impl BiasMode {
    fn parse(value: Option<&Value>, bad: &dyn Fn(String) -> Error) -> Result<BiasMode> {
        match value.map(|v| (v, v.as_str())) {
            None | Some((_, Some("none"))) => Ok(BiasMode::None),
            Some((_, Some("all"))) => Ok(BiasMode::All),
            Some((_, Some("lora_only"))) => Ok(BiasMode::LoraOnly),
            Some((v, _)) => Err(bad(format!(
                "`bias` must be \"none\", \"all\" or \"lora_only\", got {v}"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            BiasMode::None => "none",
            BiasMode::All => "all",
            BiasMode::LoraOnly => "lora_only",
        }
    }
}

const KEYS: [&str; 6] = [
    "rank",
    "alpha",
    "dropout",
    "targets",
    "modules_to_save",
    "bias",
];

/// A list of module names: one string or a list of strings (empty allowed).
fn names(value: &Value, key: &str, bad: &dyn Fn(String) -> Error) -> Result<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("`{key}` entries must be strings, got {t}")))
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        v => Err(bad(format!(
            "`{key}` must be a module name or a list of them, got {v}"
        ))),
    }
}

/// PEFT's rule: a module is chosen when its name is a pattern or ends in `.<pattern>`.
fn matches(patterns: &[String], module: &str) -> bool {
    patterns
        .iter()
        .any(|t| module == t || module.ends_with(&format!(".{t}")))
}

impl LoraConfig {
    pub fn from_json(value: &Value) -> Result<LoraConfig> {
        let bad = |m: String| Error::invalid_config("lora", m);
        let fields = value.as_object().ok_or_else(|| {
            bad(format!(
                "expected a map #{{ rank, alpha, dropout, targets, modules_to_save }}, got {value}"
            ))
        })?;
        for key in fields.keys() {
            if !KEYS.contains(&key.as_str()) {
                return Err(bad(format!(
                    "unknown key `{key}` (accepted: {})",
                    KEYS.join(", ")
                )));
            }
        }
        let rank = match fields.get("rank") {
            None => 8,
            Some(v) => v
                .as_u64()
                .filter(|&r| r > 0)
                .ok_or_else(|| bad(format!("`rank` must be a positive integer, got {v}")))?
                as usize,
        };
        let alpha = match fields.get("alpha") {
            None => 2.0 * rank as f64,
            Some(v) => v
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| bad(format!("`alpha` must be a number, got {v}")))?,
        };
        let dropout = match fields.get("dropout") {
            None => 0.0,
            Some(v) => v
                .as_f64()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| bad(format!("`dropout` must be in [0, 1), got {v}")))?,
        };
        let modules_to_save = match fields.get("modules_to_save") {
            None => Vec::new(),
            Some(v) => names(v, "modules_to_save", &bad)?,
        };
        let targets = match fields.get("targets") {
            None => DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
            Some(v @ (Value::String(_) | Value::Array(_))) => names(v, "targets", &bad)?,
            Some(v) => {
                return Err(bad(format!(
                    "`targets` must be a layer name or a list of them, got {v}"
                )))
            }
        };
        if targets.is_empty() && modules_to_save.is_empty() {
            return Err(bad(
                "`targets` is empty and there are no `modules_to_save`: nothing would train".into(),
            ));
        }
        let bias = BiasMode::parse(fields.get("bias"), &bad)?;
        Ok(LoraConfig {
            rank,
            alpha,
            dropout,
            targets,
            modules_to_save,
            bias,
        })
    }

    /// `adapter_config.json` as PEFT writes it.
    pub fn to_peft(&self) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.targets,
            "bias": self.bias.name(),
            "fan_in_fan_out": false,
            "inference_mode": true,
            "modules_to_save": if self.modules_to_save.is_empty() {
                Value::Null
            } else {
                json!(self.modules_to_save)
            },
            "base_model_name_or_path": null,
        })
    }

    /// Reads PEFT's `adapter_config.json` fields (`file` names it in errors).
    pub fn from_peft(value: &Value, file: &Path) -> Result<LoraConfig> {
        let bad = |m: String| Error::msg(format!("lora: {}: {m}", file.display()));
        match value.get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => return Err(bad(format!("peft_type must be \"LORA\", got {other:?}"))),
        }
        let rank = value
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("`r` must be a positive integer".into()))?
            as usize;
        let alpha = value
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("`lora_alpha` must be a number".into()))?;
        let dropout = value
            .get("lora_dropout")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let targets = match value.get("target_modules") {
            Some(v @ (Value::String(_) | Value::Array(_))) => names(v, "target_modules", &bad)?,
            _ => return Err(bad("`target_modules` must be a list of module names".into())),
        };
        let modules_to_save = names(
            value.get("modules_to_save").unwrap_or(&Value::Null),
            "modules_to_save",
            &bad,
        )?;
        let bias = BiasMode::parse(value.get("bias"), &bad)?;
        Ok(LoraConfig {
            rank,
            alpha,
            dropout,
            targets,
            modules_to_save,
            bias,
        })
    }

    fn targets(&self, module: &str) -> bool {
        matches(&self.targets, module)
    }

    fn saves(&self, module: &str) -> bool {
        matches(&self.modules_to_save, module)
    }

    /// Whether the bias of `module` trains (`bias: "all"` or `"lora_only"`).
    fn trains_bias(&self, module: &str) -> bool {
        match self.bias {
            BiasMode::None => false,
            BiasMode::All => true,
            BiasMode::LoraOnly => self.targets(module),
        }
    }
}

/// One layer of the twin: the frozen base and, on targeted layers, the trainable `A` `(r, in)`
/// and `B` `(out, r)`. Untargeted layers carry a base-only adapter, so that no linear of the
/// twin computes a weight gradient.
pub struct Adapter {
    pub module: String,
    frozen: FrozenWeight,
    bias: Option<Tensor>,
    low_rank: Option<(Var, Var)>,
    scale: f64,
    dropout: Dropout,
    /// Shared by the model's adapters: dropout only in training passes.
    training: Arc<AtomicBool>,
    merged: AtomicBool,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims = self.low_rank.as_ref().map(|(a, b)| (a.dims(), b.dims()));
        write!(f, "Adapter({}, {dims:?})", self.module)
    }
}

impl llmlab_nn::linear::LinearAdapter for Adapter {
    fn forward(&self, x: &Tensor) -> llmlab_plugin_api::candle::Result<Tensor> {
        Adapter::forward(self, x)
    }
}

impl Adapter {
    /// The base product plus, unless merged into the base, `scale·B·A·dropout(x)`.
    pub fn forward(&self, x: &Tensor) -> llmlab_plugin_api::candle::Result<Tensor> {
        let base = frozen_linear::forward(&self.frozen, self.bias.as_ref(), x)?;
        let Some((a, b)) = &self.low_rank else {
            return Ok(base);
        };
        if self.merged.load(Ordering::Relaxed) {
            return Ok(base);
        }
        let x = if self.training.load(Ordering::Relaxed) && self.dropout.is_active() {
            self.dropout.forward(x)?
        } else {
            x.clone()
        };
        let a = a.as_tensor().to_dtype(x.dtype())?;
        let b = b.as_tensor().to_dtype(x.dtype())?;
        let update = x
            .broadcast_matmul(&a.t()?)?
            .broadcast_matmul(&b.t()?)?
            .affine(self.scale, 0.0)?;
        let update = update.to_dtype(base.dtype())?;
        base + update
    }

    /// `scale·B·A`, `(out, in)`.
    fn delta(&self) -> Result<Tensor> {
        let (a, b) = self
            .low_rank
            .as_ref()
            .ok_or_else(|| Error::msg(format!("lora: `{}` has no adapter", self.module)))?;
        Ok(b.as_tensor()
            .matmul(a.as_tensor())?
            .affine(self.scale, 0.0)?)
    }
}

/// A tensor trained beside the adapters (a module in `modules_to_save`, or a bias with
/// `bias` on): the twin computes with `var`, a trainable copy; the base model's tensor `name`
/// keeps the original.
pub struct SavedTensor {
    pub name: String,
    /// Its name in `parameters()`.
    pub param: String,
    /// Its name in `adapter_model.safetensors`, less `base_model.model.`: a saved module's
    /// tensor under its own name (PEFT drops `modules_to_save.<adapter>` when saving), a
    /// targeted layer's bias as `<module>.base_layer.bias` (PEFT's LoRA layer wraps the
    /// original as `base_layer`), another bias under its own name.
    pub file: String,
    /// Part of a module in `modules_to_save` (else a bias trained by `bias`).
    pub whole_module: bool,
    pub var: Var,
}

/// The adapters of a model and the frozen twin they sit in.
pub struct LoraModel {
    pub config: LoraConfig,
    pub twin: Gpt,
    pub adapters: Vec<Arc<Adapter>>,
    /// `modules_to_save`'s tensors and trained biases, sorted by name.
    pub saved: Vec<SavedTensor>,
    /// `<module>.lora_A.weight`, `<module>.lora_B.weight` and the saved tensors' copies
    /// (`<module>.modules_to_save.weight`, `<module>.base_layer.bias`, ...), sorted by name.
    pub params: Vec<(String, Var)>,
    training: Arc<AtomicBool>,
    /// While merged: the base's own values of the saved tensors (unmerge puts them back).
    merged: Mutex<Option<Vec<Tensor>>>,
}

/// A model's adapters, if any; shared by reference so `&self` methods switch them.
#[derive(Default)]
pub struct LoraSlot(RwLock<Option<Arc<LoraModel>>>);

impl LoraSlot {
    pub fn get(&self) -> Option<Arc<LoraModel>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, lora: Option<Arc<LoraModel>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = lora;
    }
}

impl LoraModel {
    pub fn forward(&self, ids: &Tensor, options: &ForwardOptions) -> Result<ForwardOutput> {
        self.training.store(options.train, Ordering::Relaxed);
        self.twin.run(ids, None, options)
    }

    pub fn forward_cached(&self, ids: &Tensor, cache: &mut DecoderCache) -> Result<ForwardOutput> {
        self.training.store(false, Ordering::Relaxed);
        self.twin.run(ids, Some(cache), &ForwardOptions::default())
    }

    /// Forward and backward: gradients of the adapters only (plain pass, parameters' dtype).
    pub fn forward_backward(
        &self,
        ids: &Tensor,
        options: &ForwardOptions,
        compute: DType,
        loss: &mut dyn FnMut(&ForwardOutput) -> Result<Tensor>,
    ) -> Result<GradStore> {
        if compute != self.twin.dtype() {
            return Err(Error::unsupported(
                "gpt",
                format!(
                    "mixed precision ({compute:?} compute) with LoRA adapters: train them in the \
                     model's dtype ({:?})",
                    self.twin.dtype()
                ),
            ));
        }
        let out = self.forward(ids, options)?;
        Ok(loss(&out)?.backward()?)
    }

    pub fn trainable(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    pub fn is_merged(&self) -> bool {
        self.merged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The tensors as PEFT's `adapter_model.safetensors` names them: `base_model.model.` and
    /// the adapter's parameter name, or a saved tensor's [`SavedTensor::file`] name.
    fn file_tensors(&self) -> Vec<(String, Var)> {
        let saved: HashMap<&str, &str> = self
            .saved
            .iter()
            .map(|s| (s.param.as_str(), s.file.as_str()))
            .collect();
        self.params
            .iter()
            .map(|(n, v)| {
                let name = saved.get(n.as_str()).copied().unwrap_or(n);
                (format!("{PEFT_PREFIX}{name}"), v.clone())
            })
            .collect()
    }

    fn summary(&self, total_base: usize) -> Value {
        let trainable = self.trainable();
        // The adapted model's size: the base and A, B. A saved module's copy stands in for its
        // base tensor rather than adding to the model (PEFT's count, which adds the copies
        // too, would put training everything at 50%).
        let copies: usize = self.saved.iter().map(|s| s.var.elem_count()).sum();
        let total = total_base + trainable - copies;
        json!({
            "rank": self.config.rank,
            "alpha": self.config.alpha,
            "dropout": self.config.dropout,
            "targets": self.config.targets,
            "layers": self.adapters.iter().map(|a| a.module.clone()).collect::<Vec<_>>(),
            "bias": self.config.bias.name(),
            "modules_to_save": self
                .saved
                .iter()
                .filter(|s| s.whole_module)
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            "biases": self
                .saved
                .iter()
                .filter(|s| !s.whole_module)
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            "quantized_base": self.twin.scheme(),
            "trainable": trainable,
            "total": total,
            "trainable_fraction": trainable as f64 / total.max(1) as f64,
        })
    }
}

/// `lora(model, config)` / `lora(model, ())`.
pub fn set_lora(gpt: &Gpt, slot: &LoraSlot, config: Option<&Value>) -> Result<Value> {
    let Some(config) = config else {
        if let Some(lora) = slot.get() {
            if lora.is_merged() {
                return Err(Error::msg(
                    "lora: the adapters are merged into the base weights; lora_unmerge(model) \
                     before removing them (or save the merged model and reload it)",
                ));
            }
        }
        slot.set(None);
        return Ok(json!({ "trainable": gpt.base_params_count(), "layers": [] }));
    };
    let config = LoraConfig::from_json(config)?;
    install(gpt, slot, config)
}

fn install(gpt: &Gpt, slot: &LoraSlot, config: LoraConfig) -> Result<Value> {
    if slot.get().is_some() {
        return Err(Error::msg(
            "lora: the model already has adapters; remove them first with lora(model, ())",
        ));
    }
    let lora = build(gpt, config)?;
    let summary = lora.summary(gpt.base_params_count());
    slot.set(Some(Arc::new(lora)));
    Ok(summary)
}

/// The frozen twin of `gpt` with adapters on the layers `config` targets.
fn build(gpt: &Gpt, mut config: LoraConfig) -> Result<LoraModel> {
    let mut views: HashMap<String, Tensor> = gpt
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    // MoE state is the base model's own variables: the twin's passes update them in place, and
    // the base's `state()` (what checkpoints save) sees it.
    for (name, var) in gpt.state_vars() {
        views.insert(name.clone(), var.as_tensor().clone());
    }
    // modules_to_save: the twin computes with trainable copies (own storage, so training them
    // leaves the base's values for unmerge and removal).
    let mut saved = Vec::new();
    for (name, var) in gpt.parameters_by_name() {
        let (module, leaf) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
        let (param, file, whole_module) = if config.saves(module) {
            (
                format!("{module}.modules_to_save.{leaf}"),
                name.clone(),
                true,
            )
        } else if leaf == "bias" && config.trains_bias(module) {
            let file = if config.targets(module) {
                format!("{module}.base_layer.bias")
            } else {
                name.clone()
            };
            (file.clone(), file, false)
        } else {
            continue;
        };
        let copy = Var::from_tensor(&var.as_tensor().copy()?)?;
        views.insert(name.clone(), copy.as_tensor().clone());
        saved.push(SavedTensor {
            name,
            param,
            file,
            whole_module,
            var: copy,
        });
    }
    saved.sort_by(|x, y| x.name.cmp(&y.name));
    let dense_modules: Vec<String> = gpt
        .parameters_by_name()
        .keys()
        .map(|n| {
            n.rsplit_once('.')
                .map_or(n.as_str(), |(m, _)| m)
                .to_string()
        })
        .collect();
    for pattern in &config.modules_to_save {
        let chosen = |m: &String| m == pattern || m.ends_with(&format!(".{pattern}"));
        if dense_modules.iter().any(chosen) {
            continue;
        }
        let quantized = gpt
            .quantized_weights()
            .keys()
            .any(|n| chosen(&n.trim_end_matches(".weight").to_string()));
        let mut known: Vec<&String> = dense_modules.iter().collect();
        known.sort();
        known.dedup();
        return Err(Error::invalid_config(
            "lora",
            if quantized {
                format!(
                    "`modules_to_save` entry `{pattern}` is a quantized layer, which cannot \
                     train whole; quantize with it in `skip` to train it"
                )
            } else {
                format!(
                    "`modules_to_save` entry `{pattern}` names no module with weights of this \
                     model (modules: {})",
                    known
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        ));
    }
    let saved_ids: Vec<_> = saved.iter().map(|s| s.var.as_tensor().id()).collect();
    // Quantized layers ask for a dense weight that `install_quantized` replaces right after.
    let stages = gpt.stages();
    let mut blocks = stages.blocks.to_vec();
    let mut shapes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (i, block) in blocks.iter_mut().enumerate() {
        for (name, layer) in block.linears_mut() {
            shapes.insert(format!("transformer.h.{i}.{name}"), layer.dims()?);
        }
    }
    shapes.insert("lm_head".into(), stages.lm_head.dims()?);
    for name in gpt.quantized_weights().keys() {
        let prefix = name.trim_end_matches(".weight");
        if let Some(&dims) = shapes.get(prefix) {
            views
                .entry(name.clone())
                .or_insert(Tensor::zeros(dims, gpt.dtype(), gpt.device())?);
        }
    }
    let mut twin = Gpt::new(
        gpt.gpt_config().clone(),
        Source::Cast(views),
        gpt.device(),
        gpt.dtype(),
        gpt.cancel_flag().clone(),
    )?;
    if let Some(scheme) = gpt.scheme() {
        twin.install_quantized(gpt.quantized_weights().clone(), scheme)?;
    }
    twin.share_dropout_with(gpt);

    let seed = gpt.gpt_config().seed.unwrap_or(0);
    let training = Arc::new(AtomicBool::new(false));
    let tied = gpt.gpt_config().tie_embeddings;
    let mut adapters = Vec::new();
    let mut params = Vec::new();
    let mut names = Vec::new();
    for (module, layer) in twin.linears_mut() {
        names.push(module.clone());
        // A saved linear layer (or the head tied to a saved embedding) stays a plain layer:
        // its weight is the trainable copy, so it gets its gradient.
        if let Linear::Dense(d) = &*layer {
            if saved_ids.contains(&d.weight().id()) {
                if config.targets(&module) {
                    return Err(Error::invalid_config(
                        "lora",
                        format!(
                            "`{module}` is both a target and in `modules_to_save` (its weight \
                             would train twice); choose one"
                        ),
                    ));
                }
                continue;
            }
        }
        let (out_dim, in_dim) = layer.dims()?;
        let frozen = match &*layer {
            Linear::Dense(d) => FrozenWeight::Dense(d.weight().detach()),
            Linear::Quantized(q) => FrozenWeight::quantized(q.weight().clone(), q.in_dim())?,
        };
        let mut adapter = Adapter {
            module: module.clone(),
            frozen,
            // A trained bias is the tracked copy; any other is frozen.
            bias: layer.bias().map(|b| {
                if saved_ids.contains(&b.id()) {
                    b.clone()
                } else {
                    b.detach()
                }
            }),
            low_rank: None,
            scale: config.alpha / config.rank as f64,
            dropout: Dropout::new(config.dropout, seed, &format!("lora/{module}")),
            training: training.clone(),
            merged: AtomicBool::new(false),
        };
        if !config.targets(&module) {
            layer.set_adapter(Some(Arc::new(adapter)));
            continue;
        }
        if module == "lm_head" && tied {
            return Err(Error::msg(
                "lora: `lm_head` shares its weight with the embedding (tie_embeddings); \
                 target the block layers instead",
            ));
        }
        // PEFT's init: A ~ kaiming-uniform(a = √5) = U(±1/√in), B = 0, so ΔW starts at 0.
        let bound = 1.0 / (in_dim as f64).sqrt();
        let mut rng = Rng::for_name(seed, &format!("lora/{module}"));
        let a: Vec<f32> = (0..config.rank * in_dim)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Var::from_tensor(
            &Tensor::from_vec(a, (config.rank, in_dim), gpt.device())?.to_dtype(gpt.dtype())?,
        )?;
        let b = Var::zeros((out_dim, config.rank), gpt.dtype(), gpt.device())?;
        params.push((format!("{module}.lora_A.weight"), a.clone()));
        params.push((format!("{module}.lora_B.weight"), b.clone()));
        adapter.low_rank = Some((a, b));
        let adapter = Arc::new(adapter);
        layer.set_adapter(Some(adapter.clone()));
        adapters.push(adapter);
    }
    let matches = |target: &String| {
        names
            .iter()
            .any(|m| m == target || m.ends_with(&format!(".{target}")))
    };
    if config.targets == DEFAULT_TARGETS {
        // The defaults cover every option set (`c_gate` only with SwiGLU); keep the ones used.
        config.targets.retain(|t| matches(t));
    }
    for target in &config.targets {
        if !names
            .iter()
            .any(|m| m == target || m.ends_with(&format!(".{target}")))
        {
            return Err(Error::invalid_config(
                "lora",
                format!(
                    "target `{target}` names no linear layer of this model (layers: {})",
                    names.join(", ")
                ),
            ));
        }
    }
    params.extend(saved.iter().map(|s| (s.param.clone(), s.var.clone())));
    params.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(LoraModel {
        config,
        twin,
        adapters,
        saved,
        params,
        training,
        merged: Mutex::new(None),
    })
}

/// `merged = true`: `W += scale·B·A` for every adapter (the adapters then sit idle) and the
/// saved modules' trained values written into the base's tensors (PEFT's `merge_and_unload`
/// keeps the trained copy); `false`: takes both out again.
pub fn merge(gpt: &Gpt, slot: &LoraSlot, merged: bool) -> Result<()> {
    let lora = slot.get().ok_or_else(|| {
        Error::msg("lora: the model has no adapters to merge (lora(model, #{..}) first)")
    })?;
    if let Some(scheme) = gpt.scheme() {
        return Err(Error::unsupported(
            "gpt",
            format!(
                "merging adapters into a {scheme}-quantized base (save the adapters and apply \
                 them to the dense model)"
            ),
        ));
    }
    let weights: HashMap<String, Var> = gpt.parameters_by_name();
    let mut originals = lora.merged.lock().unwrap_or_else(|p| p.into_inner());
    if originals.is_some() == merged {
        return Err(Error::msg(format!(
            "lora: the adapters are already {}",
            if merged { "merged" } else { "unmerged" }
        )));
    }
    let base_var = |name: &str| {
        weights
            .get(name)
            .ok_or_else(|| Error::msg(format!("lora: no base weight `{name}` to merge into")))
    };
    if merged {
        let mut kept = Vec::with_capacity(lora.saved.len());
        for saved in &lora.saved {
            let var = base_var(&saved.name)?;
            kept.push(var.as_tensor().copy()?);
            var.set(saved.var.as_tensor())?;
        }
        *originals = Some(kept);
    } else {
        for (saved, original) in lora.saved.iter().zip(originals.take().unwrap_or_default()) {
            base_var(&saved.name)?.set(&original)?;
        }
    }
    for adapter in &lora.adapters {
        let var = base_var(&format!("{}.weight", adapter.module))?;
        let delta = adapter.delta()?.to_dtype(var.dtype())?;
        let w = var.as_tensor();
        let updated = if merged { (w + delta)? } else { (w - delta)? };
        var.set(&updated)?;
        adapter.merged.store(merged, Ordering::Relaxed);
    }
    Ok(())
}

/// Writes the adapters in PEFT's layout into `dir`.
pub fn save(slot: &LoraSlot, dir: &Path) -> Result<()> {
    let lora = slot
        .get()
        .ok_or_else(|| Error::msg("lora_save: the model has no adapters"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::msg(format!("lora_save: cannot create {}: {e}", dir.display())))?;
    let tensors: HashMap<String, Tensor> = lora
        .file_tensors()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let weights = dir.join(ADAPTER_WEIGHTS);
    let tmp = dir.join(format!("{ADAPTER_WEIGHTS}.tmp"));
    llmlab_plugin_api::candle::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, &weights)
        .map_err(|e| Error::msg(format!("lora_save: {}: {e}", weights.display())))?;
    let config = dir.join(ADAPTER_CONFIG);
    let text = llmlab_plugin_api::serde_json::to_string_pretty(&lora.config.to_peft())
        .map_err(|e| Error::msg(e.to_string()))?;
    std::fs::write(&config, text)
        .map_err(|e| Error::msg(format!("lora_save: {}: {e}", config.display())))?;
    Ok(())
}

/// Loads PEFT-layout adapters from `dir`: puts adapters with the file's config on the model
/// if it has none (or checks the ones it has match), then sets their values exactly.
pub fn load(gpt: &Gpt, slot: &LoraSlot, dir: &Path) -> Result<Value> {
    let config_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        Error::msg(format!(
            "lora_load: cannot read {}: {e}",
            config_path.display()
        ))
    })?;
    let value: Value = llmlab_plugin_api::serde_json::from_str(&text)
        .map_err(|e| Error::msg(format!("lora_load: {}: {e}", config_path.display())))?;
    let config = LoraConfig::from_peft(&value, &config_path)?;
    match slot.get() {
        None => {
            install(gpt, slot, config.clone())?;
        }
        Some(existing)
            if existing.config.rank == config.rank
                && existing.config.targets == config.targets
                && existing.config.modules_to_save == config.modules_to_save
                && existing.config.bias == config.bias => {}
        Some(existing) => {
            return Err(Error::msg(format!(
                "lora_load: {} has rank {} over {:?} (modules_to_save {:?}), the model's \
                 adapters rank {} over {:?} (modules_to_save {:?}); remove them first with \
                 lora(model, ())",
                config_path.display(),
                config.rank,
                config.targets,
                config.modules_to_save,
                existing.config.rank,
                existing.config.targets,
                existing.config.modules_to_save
            )))
        }
    }
    let lora = slot.get().expect("installed above");
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let tensors = llmlab_plugin_api::candle::safetensors::load(&weights_path, gpt.device())
        .map_err(|e| Error::msg(format!("lora_load: {}: {e}", weights_path.display())))?;
    let expected = lora.file_tensors();
    if let Some(extra) = tensors
        .keys()
        .find(|k| !expected.iter().any(|(n, _)| n == *k))
    {
        return Err(Error::msg(format!(
            "lora_load: {}: tensor `{extra}` names no adapter or saved module of this model",
            weights_path.display()
        )));
    }
    for (key, var) in &expected {
        let t = tensors.get(key).ok_or_else(|| {
            Error::msg(format!(
                "lora_load: {} has no tensor `{key}`",
                weights_path.display()
            ))
        })?;
        if t.dims() != var.dims() {
            return Err(Error::msg(format!(
                "lora_load: {}: `{key}` has shape {:?}, the model needs {:?}",
                weights_path.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(lora.summary(gpt.base_params_count()))
}

/// `frozen_copy` of a model with adapters: `copy` gets the same adapters with their values.
pub fn copy_onto(source: &LoraModel, copy: &Gpt, slot: &LoraSlot) -> Result<()> {
    install(copy, slot, source.config.clone())?;
    let lora = slot.get().expect("installed above");
    for ((_, from), (_, to)) in source.params.iter().zip(&lora.params) {
        to.set(&from.as_tensor().copy()?)?;
    }
    for (from, to) in source.adapters.iter().zip(&lora.adapters) {
        to.merged
            .store(from.merged.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    // Merged: the copy's base already holds the merged values; it needs the originals too.
    let originals = source
        .merged
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|kept| kept.iter().map(Tensor::copy).collect::<Result<Vec<_>, _>>())
        .transpose()?;
    *lora.merged.lock().unwrap_or_else(|p| p.into_inner()) = originals;
    Ok(())
}
