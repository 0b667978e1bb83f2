//! Hugging Face Llama-family import: tiny random `LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM` and `Qwen3ForCausalLM` directories saved by transformers
//! (`tests/fixtures/hf/make_tiny_hf.py`) load through the plugin's `load` and give transformers'
//! logits (within 1e-4) and `generate`'s greedy continuation. The fixtures cover a sharded
//! checkpoint with its index, a bf16 one, llama3 RoPE scaling, q/k/v biases, q/k norms and a
//! head_dim independent of the width.

use std::path::{Path, PathBuf};

use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Context, ForwardOptions, GenerateOptions, Model};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

fn expected(name: &str) -> Value {
    let path = fixtures().join(format!("{name}-expected.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load(dir: &Path, ctx: &Context) -> llmlab_gpt::Gpt {
    llmlab_gpt::hf_llama::try_load(dir, ctx)
        .unwrap()
        .expect("a Llama-family config")
}

/// The largest |difference| between the model's logits on the fixture's ids and transformers'.
fn worst_logit_difference(model: &dyn Model, expected: &Value) -> f64 {
    let rows: Vec<Vec<u32>> = expected["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let (b, t) = (rows.len(), rows[0].len());
    let ids = Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap();
    let logits = model
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits
        .to_dtype(DType::F32)
        .unwrap();
    let ours: Vec<Vec<Vec<f32>>> = logits.to_vec3().unwrap();
    let mut worst = 0f64;
    let mut largest = 0f64;
    for (i, seq) in expected["logits"].as_array().unwrap().iter().enumerate() {
        for (j, row) in seq.as_array().unwrap().iter().enumerate() {
            for (k, v) in row.as_array().unwrap().iter().enumerate() {
                let theirs = v.as_f64().unwrap();
                largest = largest.max(theirs.abs());
                worst = worst.max((theirs - ours[i][j][k] as f64).abs());
            }
        }
    }
    assert!(
        largest > 1.0,
        "logits too small to mean anything: {largest}"
    );
    worst
}

fn check_family(name: &str, architecture_marker: &str) {
    let dir = fixtures().join(name);
    let model = load(&dir, &Context::cpu());
    let expected = expected(name);
    let worst = worst_logit_difference(&model, &expected);
    eprintln!("{name}: max |logit difference| vs transformers = {worst:e}");
    assert!(worst < 1e-4, "{name}: max |logit difference| = {worst}");

    let prompt = u32s(&expected["input_ids"][0]);
    let want = u32s(&expected["greedy_continuation_of_row_0"]);
    let options = GenerateOptions {
        max_tokens: want.len(),
        temperature: 0.0,
        ..GenerateOptions::default()
    };
    let got = model
        .generate(&[prompt], &options, &mut |_, _| true)
        .unwrap();
    assert_eq!(got[0], want, "{name}: greedy continuation");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(config.contains(architecture_marker));
}

#[test]
fn llama_sharded_with_llama3_rope_scaling_matches_transformers() {
    assert!(fixtures()
        .join("tiny-llama/model.safetensors.index.json")
        .exists());
    check_family("tiny-llama", "LlamaForCausalLM");
    let model = load(&fixtures().join("tiny-llama"), &Context::cpu());
    let config = model.config();
    assert_eq!(config["rope_scaling"]["type"], "llama3");
    assert_eq!(config["n_kv_head"], 2);
    assert_eq!(config["tie_embeddings"], false);
}

#[test]
fn mistral_matches_transformers() {
    check_family("tiny-mistral", "MistralForCausalLM");
}

#[test]
fn qwen2_bf16_with_qkv_biases_matches_transformers() {
    let weights = std::fs::read(fixtures().join("tiny-qwen2/model.safetensors")).unwrap();
    assert!(String::from_utf8_lossy(&weights[..4096.min(weights.len())]).contains("BF16"));
    check_family("tiny-qwen2", "Qwen2ForCausalLM");
    let model = load(&fixtures().join("tiny-qwen2"), &Context::cpu());
    assert_eq!(model.config()["qkv_bias"], true);
    assert_eq!(model.config()["tie_embeddings"], true);
}

#[test]
fn qwen3_with_qk_norm_and_wide_heads_matches_transformers() {
    check_family("tiny-qwen3", "Qwen3ForCausalLM");
    let model = load(&fixtures().join("tiny-qwen3"), &Context::cpu());
    assert_eq!(model.config()["qk_norm"], true);
    assert_eq!(model.config()["head_dim"], 16);
}

/// With a bf16 session the bf16 weights are kept as they are (for bf16 compute, where candle
/// has a bf16 matmul: CUDA); with f32 they are widened exactly.
#[test]
fn bf16_weights_are_kept_for_bf16_sessions_and_widened_exactly_for_f32() {
    let ctx = Context {
        dtype: DType::BF16,
        ..Context::cpu()
    };
    let dir = fixtures().join("tiny-qwen2");
    let bf16 = load(&dir, &ctx);
    let f32 = load(&dir, &Context::cpu());
    let (a, b) = (bf16.parameters(), f32.parameters());
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.dtype(), DType::BF16, "{name}");
        assert_eq!(y.dtype(), DType::F32, "{name}");
        let widened = x.as_tensor().to_dtype(DType::F32).unwrap();
        let diff = (widened - y.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
}

#[test]
fn a_missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-llama");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    std::fs::remove_file(tmp.path().join("model-00003-of-00005.safetensors")).unwrap();
    let err = llmlab_gpt::hf_llama::try_load(tmp.path(), &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model-00003-of-00005.safetensors"), "{err}");
}
