//! Saving and loading: a directory with `model.safetensors` (GPT-2/HF parameter names) and
//! `config.json` (the resolved config plus `"llmlab_model": "gpt"`, the marker by which
//! `model_load(dir)` recognises its own directories). A Hugging Face GPT-2 directory
//! (`"model_type": "gpt2"`) loads through `hf.rs`.
//!
//! `config.json` is also the directory's manifest: `"llmlab_weights"` records the weights file's
//! size and FNV-1a checksum (as trainer checkpoints do), so a truncated or overwritten
//! `model.safetensors` is refused naming the file instead of loading into NaN logits. The
//! weights carry the head layout they were saved with in their safetensors metadata: a
//! `config.json` edited to another `n_head` has tensors of the same shapes, so only this check
//! catches it. Directories saved before these records existed still load, unchecked.

use std::collections::HashMap;
use std::path::Path;

use llmlab_nn::weights::{model_dir, read_checked, save_safetensors, FileEntry};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Context, Error, Result};

pub use llmlab_nn::weights::{read_json, read_weights};

use crate::config::GptConfig;
use crate::model::Gpt;
use llmlab_nn::params::Source;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
/// The `config.json` key (and value) that marks a directory saved by this plugin.
pub const MARKER_KEY: &str = "llmlab_model";
pub const MARKER: &str = "gpt";
/// The `config.json` key with the weights file's size and checksum.
pub const WEIGHTS_KEY: &str = "llmlab_weights";
/// The safetensors metadata key with the head layout the weights were saved with.
const HEADS_METADATA: &str = "llmlab_heads";

pub fn save(model: &Gpt, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = model.tensors();
    let config = model.gpt_config();
    let heads = serde_json::json!({ "n_head": config.n_head, "n_kv_head": config.kv_heads() });
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (HEADS_METADATA.to_string(), heads.to_string()),
    ]);
    let entry = save_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(metadata))?;
    let mut config = serde_json::Map::new();
    config.insert(MARKER_KEY.into(), Value::from(MARKER));
    if let Value::Object(keys) = model.gpt_config().to_json() {
        config.extend(keys);
    }
    config.insert(
        WEIGHTS_KEY.into(),
        serde_json::json!({ WEIGHTS_FILE: serde_json::to_value(&entry)? }),
    );
    let text = serde_json::to_string_pretty(&Value::Object(config))?;
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// The weights of a directory whose `config.json` records their checksum (`files`): the bytes
/// verified against it, and the head layout they were saved with checked against `config`.
fn read_checked_weights(
    dir: &Path,
    config_path: &Path,
    files: Value,
    config: &GptConfig,
    ctx: &Context,
) -> Result<HashMap<String, llmlab_plugin_api::candle::Tensor>> {
    let files: std::collections::BTreeMap<String, FileEntry> = serde_json::from_value(files)
        .map_err(|e| Error::msg(format!("{}: `{WEIGHTS_KEY}`: {e}", config_path.display())))?;
    let bytes = read_checked(dir, WEIGHTS_FILE, &files, CONFIG_FILE)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let (_, metadata) = llmlab_plugin_api::safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::msg(format!("{}: {e}", weights_path.display())))?;
    let heads = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(HEADS_METADATA))
        .and_then(|text| serde_json::from_str::<Value>(text).ok());
    if let Some(heads) = heads {
        let now = [("n_head", config.n_head), ("n_kv_head", config.kv_heads())];
        for (key, value) in now {
            let saved = heads.get(key).and_then(Value::as_u64);
            if let Some(saved) = saved.filter(|s| *s != value as u64) {
                return Err(Error::msg(format!(
                    "{}: {key} is {value}, but {} was saved with {key} = {saved}: tensor \
                     `transformer.h.0.attn.c_attn.weight` holds the query/key/value heads of that \
                     layout (same shape, different split), so the model would compute nonsense; \
                     set {key} back to {saved}",
                    config_path.display(),
                    weights_path.display()
                )));
            }
        }
    }
    llmlab_plugin_api::candle::safetensors::load_buffer(&bytes, &ctx.device)
        .map_err(|e| Error::msg(format!("{}: {e}", weights_path.display())))
}

/// Loads a directory saved by [`save`] or a Hugging Face GPT-2 directory.
pub fn load(path: &Path, ctx: &Context) -> Result<Gpt> {
    let dir = model_dir(path);
    let config_path = dir.join(CONFIG_FILE);
    let json = read_json(&config_path)?;
    if json.get(MARKER_KEY).and_then(Value::as_str) == Some(MARKER) {
        let mut keys = json.as_object().cloned().unwrap_or_default();
        keys.remove(MARKER_KEY);
        let files = keys.remove(WEIGHTS_KEY);
        let config = GptConfig::from_json("gpt", &Value::Object(keys))
            .map_err(|e| Error::msg(format!("{}: {e}", config_path.display())))?;
        let tensors = match files {
            Some(files) => read_checked_weights(&dir, &config_path, files, &config, ctx)?,
            None => read_weights(&dir.join(WEIGHTS_FILE), &ctx.device)?,
        };
        return Gpt::new(
            config,
            Source::Tensors(tensors),
            &ctx.device,
            ctx.dtype,
            ctx.cancel.clone(),
        )
        .map_err(|e| Error::msg(format!("{}: {e}", dir.display())));
    }
    if json.get("model_type").and_then(Value::as_str) == Some("gpt2") {
        return crate::hf::load(&dir, &json, ctx);
    }
    Err(Error::msg(format!(
        "{}: not a gpt model (config.json has neither \"{MARKER_KEY}\": \"{MARKER}\" nor \"model_type\": \"gpt2\")",
        dir.display()
    )))
}
