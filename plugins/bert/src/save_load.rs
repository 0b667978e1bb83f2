//! Saving and loading: a directory with `model.safetensors` (Hugging Face `BertForMaskedLM`
//! names, plus `classifier.*` with a task head) and `config.json` (the resolved config plus
//! `"llmlab_model": "bert"`, the marker `model_load(dir)` follows, and the weights file's size
//! and FNV-1a checksum, so a truncated or replaced file is refused naming it). A Hugging Face
//! BERT directory (`"model_type": "bert"`) loads through `hf.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use llmlab_nn::params::Source;
use llmlab_nn::weights::{model_dir, read_checked, read_json, save_safetensors, FileEntry};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Context, Error, Result};

use crate::config::BertConfig;
use crate::model::Bert;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const MARKER_KEY: &str = llmlab_plugin_api::model::MODEL_MARKER_KEY;
pub const MARKER: &str = "bert";
/// The `config.json` key with the weights file's size and checksum.
pub const WEIGHTS_KEY: &str = "llmlab_weights";

pub fn save(model: &Bert, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let entry = save_safetensors(&dir.join(WEIGHTS_FILE), &model.tensors(), Some(metadata))?;
    let mut config = serde_json::Map::new();
    config.insert(MARKER_KEY.into(), Value::from(MARKER));
    if let Value::Object(keys) = model.bert_config().to_json() {
        config.extend(keys);
    }
    config.insert(
        WEIGHTS_KEY.into(),
        serde_json::json!({ WEIGHTS_FILE: serde_json::to_value(&entry)? }),
    );
    let text = serde_json::to_string_pretty(&Value::Object(config))?;
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Loads a directory saved by [`save`] or a Hugging Face BERT directory.
pub fn load(path: &Path, ctx: &Context) -> Result<Bert> {
    let dir = model_dir(path);
    let config_path = dir.join(CONFIG_FILE);
    let json = read_json(&config_path)?;
    if json.get(MARKER_KEY).and_then(Value::as_str) == Some(MARKER) {
        let mut keys = json.as_object().cloned().unwrap_or_default();
        keys.remove(MARKER_KEY);
        let files = keys.remove(WEIGHTS_KEY).ok_or_else(|| {
            Error::Data(format!(
                "{}: no \"{WEIGHTS_KEY}\" record of the weights file",
                config_path.display()
            ))
        })?;
        let config = BertConfig::from_json("bert", &Value::Object(keys))
            .map_err(|e| Error::msg(format!("{}: {e}", config_path.display())))?;
        let files: BTreeMap<String, FileEntry> = serde_json::from_value(files)
            .map_err(|e| Error::msg(format!("{}: `{WEIGHTS_KEY}`: {e}", config_path.display())))?;
        let bytes = read_checked(&dir, WEIGHTS_FILE, &files, CONFIG_FILE)?;
        let tensors = llmlab_plugin_api::candle::safetensors::load_buffer(&bytes, &ctx.device)
            .map_err(|e| Error::msg(format!("{}: {e}", dir.join(WEIGHTS_FILE).display())))?;
        return Bert::new(config, Source::Tensors(tensors), &ctx.device, ctx.dtype)
            .map_err(|e| Error::msg(format!("{}: {e}", dir.display())));
    }
    if json.get("model_type").and_then(Value::as_str) == Some("bert") {
        return crate::hf::load(&dir, &json, ctx);
    }
    Err(Error::msg(format!(
        "{}: not a bert model (config.json has neither \"{MARKER_KEY}\": \"{MARKER}\" nor \"model_type\": \"bert\")",
        dir.display()
    )))
}
