//! Compression and adaptation from scripts (issue 22):
//!
//! ```rhai
//! lora(m, #{ rank: 8, alpha: 16, dropout: 0.05, targets: ["c_attn", "c_fc"] }); // in place
//! lora(m, #{ rank: 4, modules_to_save: ["ln_1", "ln_2", "ln_f"] }); // + norms trained whole (PEFT)
//! lora(m, #{ targets: [], modules_to_save: ["c_fc"] });  // only those modules train
//! lora_merge(m); lora_unmerge(m);          // fold the adapters into the weights and back
//! lora_save(m, "adapters/");               // PEFT layout: adapter_config.json + adapter_model.safetensors
//! lora_load(base, "adapters/");            // onto a base model (adapters made if it has none)
//! lora(m, ());                             // adapters off: the base model again
//! prune(m, #{ method: "wanda", sparsity: 0.5, pattern: "2:4", calibration: ds, skip: ["lm_head"] });
//! prune(m, #{ pattern: "structured", method: "wanda", sparsity: 0.25, calibration: ds });
//!                                          // heads + FFN channels removed: m becomes a smaller model
//! prune(m, #{ pattern: "experts", sparsity: 0.5, calibration: ds }); // least-used MoE experts
//! let small = pruned(m, #{ pattern: "structured", sparsity: 0.5 });  // m left as it is
//! sparsity_report(m);                      // per layer: zeros, total, sparsity
//! ```
//!
//! The model does the work (`Model::set_lora`, `prune`, ...); the host turns script values into
//! JSON and a calibration dataset into token batches.

use std::path::PathBuf;
use std::sync::Arc;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{Model, Split, TokenData};
use rhai::{Dynamic, Engine, Map};

use super::data::DatasetHandle;
use super::model::ModelHandle;
use super::{dynamic_to_json, json_to_dynamic, plugin_call, script_error, Host, ScriptResult};

/// Calibration batches for `prune`: this many rows of `ctx` tokens from the training split.
const DEFAULT_CALIBRATION_ROWS: usize = 16;

fn set_lora(model: &ModelHandle, config: Map) -> ScriptResult<Dynamic> {
    let config = dynamic_to_json(config.into())?;
    let summary = plugin_call(model.0.name(), || model.0.set_lora(Some(&config)))?;
    Ok(json_to_dynamic(&summary))
}

/// `(rows, ctx)` token windows from the start of `data`'s training split, `batch` rows apiece.
fn calibration_batches(
    data: &dyn TokenData,
    model: &dyn Model,
    rows: usize,
) -> ScriptResult<Vec<Tensor>> {
    let ctx = model.ctx_len();
    let available = data.len(Split::Train) / ctx;
    if available == 0 {
        return Err(script_error(format!(
            "prune: the calibration dataset has {} training tokens, fewer than one window of ctx = {ctx}",
            data.len(Split::Train)
        )));
    }
    let rows = rows.min(available);
    let mut batches = Vec::new();
    for start in (0..rows).step_by(4) {
        let n = 4.min(rows - start);
        let mut tokens = vec![0u32; n * ctx];
        for r in 0..n {
            data.read(
                Split::Train,
                (start + r) * ctx,
                &mut tokens[r * ctx..(r + 1) * ctx],
            )
            .map_err(script_error)?;
        }
        batches.push(Tensor::from_vec(tokens, (n, ctx), model.device()).map_err(script_error)?);
    }
    Ok(batches)
}

/// `prune(m, #{..})`: `calibration` (a dataset) becomes token batches; `calibration_rows`
/// says how many windows.
fn prune(model: &mut ModelHandle, mut options: Map) -> ScriptResult<Dynamic> {
    let calibration = options.remove("calibration");
    let rows =
        match options.remove("calibration_rows") {
            None => DEFAULT_CALIBRATION_ROWS,
            Some(v) => v.as_int().ok().filter(|&n| n > 0).ok_or_else(|| {
                script_error("prune: `calibration_rows` must be a positive integer")
            })? as usize,
        };
    let batches = match calibration {
        None => Vec::new(),
        Some(value) if value.is_unit() => Vec::new(),
        Some(value) => match value.try_cast::<DatasetHandle>() {
            Some(ds) => calibration_batches(ds.dataset.as_ref(), model.0.as_ref(), rows)?,
            None => {
                return Err(script_error(
                    "prune: `calibration` must be a dataset (dataset(...) / corpus data)",
                ))
            }
        },
    };
    let config: Value = dynamic_to_json(options.into())?;
    let reshapes = matches!(
        config.get("pattern").and_then(Value::as_str),
        Some("structured" | "experts")
    );
    if reshapes {
        let (smaller, report) = plugin_call(model.0.name(), || model.0.pruned(&config, &batches))?;
        *model = ModelHandle::new(smaller);
        return Ok(json_to_dynamic(&report));
    }
    let report = plugin_call(model.0.name(), || model.0.prune(&config, &batches))?;
    Ok(json_to_dynamic(&report))
}

/// `pruned(m, #{..})`: as `prune`, but `m` is left as it is and the pruned model is returned
/// (structured and expert patterns only: in-place masks have no separate result).
fn pruned(model: &ModelHandle, options: Map) -> ScriptResult<ModelHandle> {
    let mut copy = model.clone();
    let pattern = options
        .get("pattern")
        .and_then(|p| p.clone().into_string().ok());
    if !matches!(pattern.as_deref(), Some("structured" | "experts")) {
        return Err(script_error(
            "pruned(m, ..) makes a new model for pattern \"structured\" or \"experts\"; \
             masks (unstructured, N:M) are applied in place by prune(m, ..)",
        ));
    }
    let _report = prune(&mut copy, options)?;
    Ok(copy)
}

/// The trainer key that holds a distillation teacher (a model object, not config data).
pub const TEACHER_KEY: &str = "teacher";

/// Takes the `teacher` model out of a trainer's config map (before it becomes JSON), as `qat`
/// and `trial` are taken; the trainer gets it through `Trainer::set_teacher`.
pub fn take_teacher(config: &mut Dynamic) -> ScriptResult<Option<ModelHandle>> {
    let Some(mut map) = config.write_lock::<Map>() else {
        return Ok(None);
    };
    match map.remove(TEACHER_KEY) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => {
            let type_name = v.type_name().to_string();
            v.try_cast::<ModelHandle>().map(Some).ok_or_else(|| {
                script_error(format!(
                    "trainer option `teacher` must be a model (model(..) or model_load(..)), got {type_name}"
                ))
            })
        }
    }
}

pub fn register(engine: &mut Engine, _host: &Arc<Host>) {
    engine.register_fn("lora", |model: ModelHandle, config: Map| {
        set_lora(&model, config)
    });
    engine.register_fn(
        "lora",
        |model: ModelHandle, _off: ()| -> ScriptResult<Dynamic> {
            let summary = plugin_call(model.0.name(), || model.0.set_lora(None))?;
            Ok(json_to_dynamic(&summary))
        },
    );
    engine.register_fn("lora_merge", |model: ModelHandle| {
        plugin_call(model.0.name(), || model.0.lora_merge(true))
    });
    engine.register_fn("lora_unmerge", |model: ModelHandle| {
        plugin_call(model.0.name(), || model.0.lora_merge(false))
    });
    engine.register_fn("lora_save", |model: ModelHandle, dir: &str| {
        let dir = PathBuf::from(dir);
        plugin_call(model.0.name(), || model.0.save_lora(&dir))
    });
    engine.register_fn(
        "lora_load",
        |model: ModelHandle, dir: &str| -> ScriptResult<Dynamic> {
            let dir = PathBuf::from(dir);
            let summary = plugin_call(model.0.name(), || model.0.load_lora(&dir))?;
            Ok(json_to_dynamic(&summary))
        },
    );
    // `&mut`: a structured pattern replaces the model in the script's variable.
    engine.register_fn("prune", |model: &mut ModelHandle, options: Map| {
        prune(model, options)
    });
    engine.register_fn("pruned", |model: ModelHandle, options: Map| {
        pruned(&model, options)
    });
    engine.register_fn(
        "sparsity_report",
        |model: ModelHandle| -> ScriptResult<Dynamic> {
            let report = plugin_call(model.0.name(), || model.0.sparsity_report())?;
            Ok(json_to_dynamic(&report))
        },
    );
}
