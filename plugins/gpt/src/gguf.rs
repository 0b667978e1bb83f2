//! A model in one GGUF file (candle's `gguf_file` writer and reader): quantized linear weights
//! in their GGML block type, every other parameter as F32, GPT-2/HF parameter names, and the
//! config in metadata:
//!
//! - `general.architecture` = `"llmlab-gpt"`, `llmlab.model` = `"gpt"` (the marker `model_load`
//!   checks),
//! - `llmlab.config` = the resolved config as JSON (the same keys as `config.json`),
//! - `llmlab.quantization` = the scheme (`"q4_0"`) or `"none"`,
//! - with an `moe` config, llama.cpp's MoE keys under the architecture:
//!   `llmlab-gpt.expert_count`, `llmlab-gpt.expert_used_count`, `llmlab-gpt.expert_shared_count`
//!   (expert linears are quantized like any linear; the router stays F32).
//!
//! A quantized weight keeps its padded shape `(out, in_padded)` (see `linear.rs`), so the file is
//! for llmlab, not for llama.cpp, whose architectures name their tensors differently anyway.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use llmlab_plugin_api::candle::quantized::{gguf_file, GgmlDType, QTensor};
use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Context, Error, Result};

use crate::config::GptConfig;
use crate::model::Gpt;
use llmlab_nn::params::Source;

pub const ARCHITECTURE: &str = "llmlab-gpt";
pub const MODEL_KEY: &str = "llmlab.model";
pub const CONFIG_KEY: &str = "llmlab.config";
pub const QUANTIZATION_KEY: &str = "llmlab.quantization";
/// MoE metadata, named as llama.cpp names them (`{arch}.expert_count`, ...).
pub const EXPERT_COUNT_KEY: &str = "llmlab-gpt.expert_count";
pub const EXPERT_USED_KEY: &str = "llmlab-gpt.expert_used_count";
pub const EXPERT_SHARED_KEY: &str = "llmlab-gpt.expert_shared_count";

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Writes `model` to `path` (atomically).
pub fn save(model: &Gpt, path: &Path) -> Result<()> {
    let context = |e: llmlab_plugin_api::candle::Error| {
        Error::msg(format!("{}: writing GGUF: {e}", path.display()))
    };
    let mut tensors: Vec<(String, Arc<QTensor>)> = Vec::new();
    for (name, tensor) in model.tensors() {
        let f32 = QTensor::quantize(&tensor.contiguous().map_err(context)?, GgmlDType::F32)
            .map_err(context)?;
        tensors.push((name, Arc::new(f32)));
    }
    tensors.extend(
        model
            .quantized_weights()
            .iter()
            .map(|(n, q)| (n.clone(), q.clone())),
    );
    let config = serde_json::to_string(&model.gpt_config().to_json())?;
    let metadata = [
        (
            "general.architecture",
            gguf_file::Value::String(ARCHITECTURE.to_string()),
        ),
        (MODEL_KEY, gguf_file::Value::String("gpt".to_string())),
        (CONFIG_KEY, gguf_file::Value::String(config)),
        (
            QUANTIZATION_KEY,
            gguf_file::Value::String(model.scheme().unwrap_or("none").to_string()),
        ),
    ];
    let moe_keys: Vec<(String, gguf_file::Value)> = match &model.gpt_config().moe {
        Some(moe) => vec![
            (
                EXPERT_COUNT_KEY.to_string(),
                gguf_file::Value::U32(moe.experts as u32),
            ),
            (
                EXPERT_USED_KEY.to_string(),
                gguf_file::Value::U32(moe.top_k as u32),
            ),
            (
                EXPERT_SHARED_KEY.to_string(),
                gguf_file::Value::U32(moe.shared_experts as u32),
            ),
        ],
        None => Vec::new(),
    };
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata
        .iter()
        .map(|(k, v)| (*k, v))
        .chain(moe_keys.iter().map(|(k, v)| (k.as_str(), v)))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors
        .iter()
        .map(|(n, q)| (n.as_str(), q.as_ref()))
        .collect();
    let mut bytes = Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensor_refs).map_err(context)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    write_atomic(path, bytes.get_ref())
}

/// Reads a model written by [`save`].
pub fn load(path: &Path, ctx: &Context) -> Result<Gpt> {
    let fail = |what: String| Error::msg(format!("{}: {what}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| fail(format!("not a readable GGUF file: {e}")))?;
    let text = |key: &str| -> Result<String> {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| {
                fail(format!(
                    "no `{key}` string in the GGUF metadata; not saved by llmlab's gpt"
                ))
            })
    };
    if text(MODEL_KEY)? != "gpt" {
        return Err(fail(format!("`{MODEL_KEY}` is not \"gpt\"")));
    }
    let json: Value = serde_json::from_str(&text(CONFIG_KEY)?)
        .map_err(|e| fail(format!("`{CONFIG_KEY}`: {e}")))?;
    let config = GptConfig::from_json("gpt", &json).map_err(|e| fail(e.to_string()))?;
    let scheme = text(QUANTIZATION_KEY)?;
    check_tensor_extents(&content, &file, &fail)?;

    let mut dense: HashMap<String, Tensor> = HashMap::new();
    let mut quantized: BTreeMap<String, Arc<QTensor>> = BTreeMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let q = content
            .tensor(&mut file, name, &ctx.device)
            .map_err(|e| fail(format!("tensor `{name}`: {e}")))?;
        match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                dense.insert(name.clone(), q.dequantize(&ctx.device)?);
            }
            _ => {
                quantized.insert(name.clone(), Arc::new(q));
            }
        }
    }
    let placeholders: HashSet<String> = quantized.keys().cloned().collect();
    let source = Source::Partial {
        tensors: dense,
        placeholders,
    };
    let mut model = Gpt::new(config, source, &ctx.device, ctx.dtype, ctx.cancel.clone())
        .map_err(|e| fail(e.to_string()))?;
    if !quantized.is_empty() {
        model
            .install_quantized(quantized, &scheme)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(model)
}

/// Every tensor's data must lie inside the file: a shape read from the file whose element count
/// overflows, or needs more bytes than the file holds, is refused before anything is allocated
/// for it (found by fuzzing: candle's dequantize allocated `elements x 4` bytes and panicked on
/// capacity overflow; docs/reliability.md).
fn check_tensor_extents(
    content: &gguf_file::Content,
    file: &std::fs::File,
    fail: &dyn Fn(String) -> Error,
) -> Result<()> {
    let file_len = file
        .metadata()
        .map_err(|e| fail(format!("cannot read its size: {e}")))?
        .len();
    for (name, info) in &content.tensor_infos {
        let elements = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = elements
            .filter(|n| n % block == 0)
            .and_then(|n| (n / block).checked_mul(info.ggml_dtype.type_size() as u64));
        let end = bytes.and_then(|b| {
            content
                .tensor_data_offset
                .checked_add(info.offset)?
                .checked_add(b)
        });
        if end.is_none_or(|end| end > file_len) {
            return Err(fail(format!(
                "tensor `{name}` of shape {:?} ({:?}) does not fit in the file's {file_len} bytes; \
                 the file is truncated or corrupt",
                info.shape.dims(),
                info.ggml_dtype
            )));
        }
    }
    Ok(())
}
