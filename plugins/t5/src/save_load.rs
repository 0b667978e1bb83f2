//! Saving and loading: a directory with `model.safetensors` (Hugging Face T5 parameter names)
//! and `config.json` (the resolved config, `"llmlab_model": "t5"`, and the weights file's size
//! and checksum, so a truncated or overwritten file is refused naming it). A Hugging Face
//! `T5ForConditionalGeneration` directory (`"model_type": "t5"`) loads through `hf.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use llmlab_nn::params::Source;
use llmlab_nn::weights::{model_dir, read_checked, read_json, save_safetensors, FileEntry};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::model::MODEL_MARKER_KEY;
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Context, Error, Result};

use crate::config::T5Config;
use crate::model::T5;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const MARKER: &str = "t5";
/// The `config.json` key with the weights file's size and checksum.
pub const WEIGHTS_KEY: &str = "llmlab_weights";
/// The `config.json` key saying the `q` weights are stored without T5's folded
/// `1/sqrt(d_kv)` (`attention.rs`). Directories saved before it (no key) hold Hugging Face's
/// layout and are converted on load.
pub const QUERY_LAYOUT_KEY: &str = "llmlab_query_weights";
pub const QUERY_LAYOUT: &str = "unscaled";

pub fn save(model: &T5, dir: &Path) -> Result<()> {
    if let Some(scheme) = model.scheme() {
        return Err(Error::msg(format!(
            "t5: saving a {scheme}-quantized model is not supported; save the dense model and quantize it after loading"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let entry = save_safetensors(&dir.join(WEIGHTS_FILE), &model.tensors(), None)?;
    let mut config = serde_json::Map::new();
    config.insert(MODEL_MARKER_KEY.into(), Value::from(MARKER));
    if let Value::Object(keys) = model.t5_config().to_json() {
        config.extend(keys);
    }
    config.insert(
        WEIGHTS_KEY.into(),
        serde_json::json!({ WEIGHTS_FILE: serde_json::to_value(&entry)? }),
    );
    config.insert(QUERY_LAYOUT_KEY.into(), Value::from(QUERY_LAYOUT));
    let text = serde_json::to_string_pretty(&Value::Object(config))?;
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Loads a directory saved by [`save`] or a Hugging Face T5 directory.
pub fn load(path: &Path, ctx: &Context) -> Result<T5> {
    let dir = model_dir(path);
    let config_path = dir.join(CONFIG_FILE);
    let json = read_json(&config_path)?;
    if json.get(MODEL_MARKER_KEY).and_then(Value::as_str) == Some(MARKER) {
        let mut keys = json.as_object().cloned().unwrap_or_default();
        keys.remove(MODEL_MARKER_KEY);
        let files = keys.remove(WEIGHTS_KEY).ok_or_else(|| {
            Error::msg(format!(
                "{}: no `{WEIGHTS_KEY}` record of model.safetensors",
                config_path.display()
            ))
        })?;
        let layout = keys.remove(QUERY_LAYOUT_KEY);
        let config = T5Config::from_json("t5", &Value::Object(keys))
            .map_err(|e| Error::msg(format!("{}: {e}", config_path.display())))?;
        let files: BTreeMap<String, FileEntry> = serde_json::from_value(files)
            .map_err(|e| Error::msg(format!("{}: `{WEIGHTS_KEY}`: {e}", config_path.display())))?;
        let bytes = read_checked(&dir, WEIGHTS_FILE, &files, CONFIG_FILE)?;
        let mut tensors = llmlab_plugin_api::candle::safetensors::load_buffer(&bytes, &ctx.device)
            .map_err(|e| Error::msg(format!("{}: {e}", dir.join(WEIGHTS_FILE).display())))?;
        match layout.as_ref().and_then(Value::as_str) {
            Some(QUERY_LAYOUT) => {}
            None => crate::hf::queries_from_hf(&mut tensors, config.d_kv)?,
            Some(_) => {
                return Err(Error::msg(format!(
                    "{}: `{QUERY_LAYOUT_KEY}` is {}, this build reads \"{QUERY_LAYOUT}\" (or no key: the Hugging Face layout)",
                    config_path.display(),
                    layout.unwrap_or_default()
                )))
            }
        }
        return T5::new(
            config,
            Source::Tensors(tensors),
            &ctx.device,
            ctx.dtype,
            ctx.cancel.clone(),
        )
        .map_err(|e| Error::msg(format!("{}: {e}", dir.display())));
    }
    if json.get("model_type").and_then(Value::as_str) == Some("t5") {
        return crate::hf::load(&dir, &json, ctx);
    }
    Err(Error::msg(format!(
        "{}: not a t5 model (config.json has neither \"{MODEL_MARKER_KEY}\": \"{MARKER}\" nor \"model_type\": \"t5\")",
        dir.display()
    )))
}
