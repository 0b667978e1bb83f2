//! The model's script surface: `model("gpt", #{..})`, `m.forward(ids)` (logits as a Tensor),
//! `m.num_params()`, `m.params()`, `m.config()`, `m.save(dir)`, `model_load(dir)`,
//! `m.frozen_copy()`.

use std::path::Path;
use std::sync::Arc;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::{ForwardOptions, Instance, Kind, Model};
use rhai::{Array, Dynamic, Engine, Map, INT};

use super::tensor::TensorHandle;
use super::tokenizer::ids_from_array;
use super::{json_to_dynamic, plugin_call, script_error, Host, ScriptResult};

/// A model in scripts; clones share weights.
#[derive(Clone)]
pub struct ModelHandle(pub Arc<dyn Model>);

impl ModelHandle {
    pub fn new(model: Box<dyn Model>) -> Self {
        ModelHandle(Arc::from(model))
    }
}

/// `(1, seq)` or `(batch, seq)` u32 ids from a flat or nested script array.
fn ids_tensor(model: &dyn Model, ids: &Array) -> ScriptResult<Tensor> {
    let rows: Vec<Vec<u32>> = if ids.first().is_some_and(|d| d.is_array()) {
        ids.iter()
            .map(|row| ids_from_array(&row.clone().cast::<Array>()))
            .collect::<ScriptResult<_>>()?
    } else {
        vec![ids_from_array(ids)?]
    };
    let seq = rows.first().map_or(0, Vec::len);
    if seq == 0 || rows.iter().any(|r| r.len() != seq) {
        return Err(script_error(
            "forward(): ids must be a non-empty array, or rows of equal length",
        ));
    }
    let flat: Vec<u32> = rows.concat();
    Tensor::from_vec(flat, (rows.len(), seq), model.device()).map_err(script_error)
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    engine.register_type_with_name::<ModelHandle>("Model");
    engine.register_fn("to_string", |m: &mut ModelHandle| {
        format!("model {} ({} parameters)", m.0.name(), m.0.num_params())
    });
    engine.register_fn("num_params", |m: &mut ModelHandle| m.0.num_params() as INT);
    engine.register_fn("config", |m: &mut ModelHandle| {
        json_to_dynamic(&m.0.config())
    });
    engine.register_fn("params", |m: &mut ModelHandle| -> Map {
        m.0.parameters()
            .into_iter()
            .map(|(name, var)| {
                (
                    name.into(),
                    Dynamic::from(TensorHandle(var.as_tensor().clone())),
                )
            })
            .collect()
    });
    engine.register_fn(
        "forward",
        |m: &mut ModelHandle, ids: Array| -> ScriptResult<TensorHandle> {
            let input = ids_tensor(m.0.as_ref(), &ids)?;
            plugin_call(m.0.name(), || {
                m.0.forward(&input, &ForwardOptions::default())
            })
            .map(|out| TensorHandle(out.logits))
        },
    );
    engine.register_fn("save", |m: &mut ModelHandle, dir: &str| {
        plugin_call(m.0.name(), || m.0.save(Path::new(dir)))
    });
    engine.register_fn("frozen_copy", |m: &mut ModelHandle| {
        plugin_call(m.0.name(), || m.0.frozen_copy()).map(ModelHandle::new)
    });
    let h = host.clone();
    engine.register_fn(
        "model_load",
        move |dir: &str| -> ScriptResult<ModelHandle> {
            match h.load(Kind::Model, dir)? {
                Instance::Model(m) => Ok(ModelHandle::new(m)),
                other => Err(script_error(format!(
                    "{dir} loaded as a {}, not a model",
                    other.kind()
                ))),
            }
        },
    );
}
