//! A model directory as `model_load` reads it: `config.json` (the model's config, the
//! `llmlab_model` marker that picks the one loader, the weights file's size and checksum) and
//! `model.safetensors` (the parameters by name). What a model plugin's `save`,
//! `Factory::load` and `frozen_copy` would otherwise each write out again.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use llmlab_plugin_api::candle::{safetensors as candle_safetensors, Device, Tensor, Var};
use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::model::MODEL_MARKER_KEY;
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Error, Result};

use crate::weights::{model_dir, read_checked, read_json, save_safetensors, FileEntry};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The key of `config.json` recording the weights file's size and checksum.
pub const FILES_KEY: &str = "llmlab_files";

/// Writes `dir/model.safetensors` (`params`) and `dir/config.json`: `config` (a JSON object)
/// with `"llmlab_model": model`, so `model_load` asks the factory `model`, and the weights'
/// checksum, so a truncated or altered file is refused by name.
pub fn save(dir: &Path, model: &str, config: Value, params: &[(String, Var)]) -> Result<()> {
    let Value::Object(mut config) = config else {
        return Err(Error::msg(format!(
            "{model}: a model's config must be a JSON object to be saved, got {config}"
        )));
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: Vec<(String, Tensor)> = params
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    let entry = save_safetensors(&dir.join(WEIGHTS_FILE), &tensors, None)?;
    config.insert(MODEL_MARKER_KEY.into(), Value::from(model));
    config.insert(
        FILES_KEY.into(),
        serde_json::json!({ WEIGHTS_FILE: serde_json::to_value(entry)? }),
    );
    let text = serde_json::to_string_pretty(&Value::Object(config))?;
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Reads a directory written by [`save`] (or a file in it): the model's config (without the
/// marker and checksum keys, ready for its typed config) and the parameters on `device`.
pub fn load(path: &Path, device: &Device) -> Result<(Value, HashMap<String, Tensor>)> {
    let dir = model_dir(path);
    let mut config = read_json(&dir.join(CONFIG_FILE))?;
    let object = config.as_object_mut().ok_or_else(|| {
        Error::Data(format!(
            "{}: not a JSON object",
            dir.join(CONFIG_FILE).display()
        ))
    })?;
    object.remove(MODEL_MARKER_KEY);
    let files: BTreeMap<String, FileEntry> = match object.remove(FILES_KEY) {
        Some(files) => serde_json::from_value(files).map_err(|e| {
            Error::Data(format!(
                "{}: `{FILES_KEY}`: {e}",
                dir.join(CONFIG_FILE).display()
            ))
        })?,
        None => {
            return Err(Error::Data(format!(
                "{}: no `{FILES_KEY}` record of the weights (not written by \
                 llmlab_nn::saved_model::save)",
                dir.join(CONFIG_FILE).display()
            )))
        }
    };
    let bytes = read_checked(&dir, WEIGHTS_FILE, &files, CONFIG_FILE)?;
    let tensors = candle_safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::Data(format!("{}: {e}", dir.join(WEIGHTS_FILE).display())))?;
    Ok((config, tensors))
}

/// Detached copies of `params` by name: the weights of a frozen copy of the model
/// (`params::Source::Tensors`), untouched by later training of the original.
pub fn copies(params: &[(String, Var)]) -> Result<HashMap<String, Tensor>> {
    params
        .iter()
        .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    fn params() -> Vec<(String, Var)> {
        let w = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap();
        vec![(
            "w".into(),
            Var::from_tensor(&w.reshape((2, 3)).unwrap()).unwrap(),
        )]
    }

    #[test]
    fn a_saved_model_round_trips_with_its_marker_and_refuses_an_altered_file() {
        let dir = tempfile::tempdir().unwrap();
        let params = params();
        save(dir.path(), "mlp", json!({ "d_model": 3 }), &params).unwrap();
        let written = read_json(&dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(written[MODEL_MARKER_KEY], "mlp");

        let (config, tensors) = load(&dir.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        assert_eq!(
            config,
            json!({ "d_model": 3 }),
            "marker and checksum are taken out"
        );
        let back: Vec<f32> = tensors["w"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(back, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);

        let copies = copies(&params).unwrap();
        params[0]
            .1
            .set(&params[0].1.as_tensor().zeros_like().unwrap())
            .unwrap();
        let kept: Vec<f32> = copies["w"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(kept[5], 5.0, "a copy does not follow the original");

        let weights = dir.path().join(WEIGHTS_FILE);
        let mut bytes = std::fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&weights, bytes).unwrap();
        let error = load(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(
            error.contains("model.safetensors") && error.contains("checksum"),
            "{error}"
        );
        assert!(save(dir.path(), "mlp", json!([1]), &params).is_err());
    }
}
