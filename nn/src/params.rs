//! Where the weights come from and where they live: a [`ParamStore`] behind candle's
//! `VarBuilder`, so the modules ask for `vb.pp("h.0").pp("attn")...` and get trainable `Var`s
//! that are either freshly initialised (GPT-2 init, seeded) or taken from a checkpoint.
//!
//! Every parameter the model asks for is recorded by its full name; [`ParamStore::vars`]
//! hands them over sorted by name, which is what `Model::parameters()` returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use llmlab_plugin_api::candle::{DType, Device, Result, Shape, Tensor, Var};
use llmlab_plugin_api::candle_nn::var_builder::SimpleBackend;
use llmlab_plugin_api::candle_nn::{Init, VarBuilder};

use crate::rng::Rng;

/// The source of parameter values.
pub enum Source {
    /// New weights: each parameter from its own stream of `seed`, so order does not matter.
    Init { seed: u64 },
    /// Weights read from a checkpoint, by name; every one must be used.
    Tensors(HashMap<String, Tensor>),
    /// Checkpoint weights, except `placeholders`: names that get zeros of the shape the model
    /// asks for, because quantized weights replace them right after building (`quantize.rs`).
    Partial {
        tensors: HashMap<String, Tensor>,
        placeholders: HashSet<String>,
    },
    /// Mixed precision (`autocast.rs`): every parameter already cast to the compute dtype and
    /// still tracked back to its f32 `Var`, used as is (no `Var` made), so gradients of the
    /// model built from them land on the master weights.
    Cast(HashMap<String, Tensor>),
}

impl Source {
    /// The checkpoint's tensors, if the weights come from one.
    fn tensors(&self) -> Option<&HashMap<String, Tensor>> {
        match self {
            Source::Init { .. } | Source::Cast(_) => None,
            Source::Tensors(tensors) | Source::Partial { tensors, .. } => Some(tensors),
        }
    }
}

/// The parameter `name` of a model's `parameters()` list, or an error naming it: how a small
/// model reads its weights without keeping a field per tensor.
pub fn find<'a>(params: &'a [(String, Var)], name: &str) -> Result<&'a Tensor> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, var)| var.as_tensor())
        .ok_or_else(|| llmlab_plugin_api::candle::Error::Msg(format!("no parameter `{name}`")))
}

/// A handle on the parameters being made; clones share them (one goes into the `VarBuilder`).
#[derive(Clone)]
pub struct ParamStore {
    source: Arc<Source>,
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
}

impl ParamStore {
    pub fn new(source: Source) -> ParamStore {
        ParamStore {
            source: Arc::new(source),
            vars: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// A `VarBuilder` that makes its parameters in this store.
    pub fn builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The parameters made so far, sorted by name. Errors if a checkpoint had tensors the model
    /// never asked for (a config that does not match its weights).
    pub fn vars(&self) -> Result<Vec<(String, Var)>> {
        let vars = self.vars.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(tensors) = self.source.tensors() {
            let mut unused: Vec<&String> =
                tensors.keys().filter(|k| !vars.contains_key(*k)).collect();
            if !unused.is_empty() {
                unused.sort();
                llmlab_plugin_api::candle::bail!(
                    "checkpoint has tensors this config does not use: {}",
                    unused
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(vars.into_iter().collect())
    }

    fn make(
        &self,
        shape: &Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Var> {
        let tensor = match self.source.as_ref() {
            Source::Init { seed } => {
                let n = shape.elem_count();
                let values: Vec<f32> = match init {
                    Init::Const(c) => vec![c as f32; n],
                    Init::Randn { mean, stdev } => {
                        let mut rng = Rng::for_name(*seed, name);
                        (0..n)
                            .map(|_| (mean + stdev * rng.normal()) as f32)
                            .collect()
                    }
                    other => llmlab_plugin_api::candle::bail!(
                        "{name}: unsupported init {other:?} (use Const or Randn)"
                    ),
                };
                Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?
            }
            Source::Cast(_) => llmlab_plugin_api::candle::bail!(
                "{name}: a cast model makes no parameters of its own"
            ),
            Source::Partial {
                tensors,
                placeholders,
            } if placeholders.contains(name) && !tensors.contains_key(name) => {
                Tensor::zeros(shape, dtype, dev)?
            }
            Source::Tensors(tensors) | Source::Partial { tensors, .. } => {
                let t = tensors.get(name).ok_or_else(|| {
                    llmlab_plugin_api::candle::Error::Msg(format!(
                        "checkpoint has no tensor `{name}` (shape {shape:?})"
                    ))
                })?;
                if t.shape() != shape {
                    llmlab_plugin_api::candle::bail!(
                        "checkpoint tensor `{name}` has shape {:?}, the config needs {shape:?}",
                        t.dims()
                    );
                }
                t.to_device(dev)?.to_dtype(dtype)?
            }
        };
        Var::from_tensor(&tensor)
    }
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Source::Cast(tensors) = self.source.as_ref() {
            return match tensors.get(name) {
                Some(t) if t.shape() == &s => Ok(t.clone()),
                Some(t) => llmlab_plugin_api::candle::bail!(
                    "parameter `{name}` asked for with shape {s:?} and {:?}",
                    t.dims()
                ),
                None => llmlab_plugin_api::candle::bail!("no parameter `{name}` to cast"),
            };
        }
        let mut vars = self.vars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(var) = vars.get(name) {
            if var.shape() != &s {
                llmlab_plugin_api::candle::bail!(
                    "parameter `{name}` asked for with shape {s:?} and {:?}",
                    var.dims()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let var = self.make(&s, name, h, dtype, dev)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let vars = self.vars.lock().unwrap_or_else(|p| p.into_inner());
        match vars.get(name) {
            Some(var) => var.as_tensor().to_device(dev)?.to_dtype(dtype),
            None => llmlab_plugin_api::candle::bail!("no parameter `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let vars = self.vars.lock().unwrap_or_else(|p| p.into_inner());
        vars.contains_key(name) || self.source.tensors().is_some_and(|t| t.contains_key(name))
    }
}
