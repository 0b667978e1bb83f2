//! Hugging Face export (`save_hf`) and llama.cpp GGUF export.
//!
//! - Each imported fixture family exports and re-imports with the same logits.
//! - Two models born in llmlab (a Llama-layout and a GPT-2-layout gpt, seeded, their weights
//!   scaled up so the logits are large) were exported and loaded in transformers by
//!   `tests/fixtures/hf/make_tiny_hf.py check-export`, which recorded transformers' logits in
//!   `llmlab-export-{llama,gpt2}-expected.json`: CI checks the same export against them without
//!   Python (the export must be byte-identical to the one transformers checked, and our logits
//!   must equal transformers'). `LLMLAB_WRITE_EXPORTS=dir cargo test ... write_exports` writes
//!   the exports to check.

use std::path::{Path, PathBuf};

use llmlab_gpt::Gpt;
use llmlab_nn::params::Source;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::{self, json, Value};
use llmlab_plugin_api::{Context, ForwardOptions, Model, Tokenizer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const IDS: [[u32; 12]; 2] = [
    [5, 17, 2, 63, 40, 8, 8, 31, 0, 12, 200, 250],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
];

fn logits(model: &dyn Model) -> Vec<Vec<Vec<f32>>> {
    let ids = Tensor::new(&IDS, &Device::Cpu).unwrap();
    model
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits
        .to_vec3()
        .unwrap()
}

fn worst(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f64 {
    let mut worst = 0f64;
    for (x, y) in a
        .iter()
        .flatten()
        .flatten()
        .zip(b.iter().flatten().flatten())
    {
        worst = worst.max((*x as f64 - *y as f64).abs());
    }
    worst
}

fn expected_logits(v: &Value) -> Vec<Vec<Vec<f32>>> {
    serde_json::from_value(v["logits"].clone()).unwrap()
}

/// The fixtures' `tokenizer.json` + `tokenizer_config.json` as a [`Tokenizer`] that knows its
/// vocabulary (all export reads); the gpt plugin's tests do not link the tokenizers plugin.
#[derive(Clone)]
struct FileTokenizer {
    json: String,
    vocab: Vec<String>,
    config: Value,
}

impl FileTokenizer {
    fn load(dir: &Path) -> FileTokenizer {
        let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
        let parsed: Value = serde_json::from_str(&json).unwrap();
        let mut pairs: Vec<(u64, String)> = parsed["model"]["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(t, id)| (id.as_u64().unwrap(), t.clone()))
            .collect();
        for added in parsed["added_tokens"].as_array().unwrap() {
            let id = added["id"].as_u64().unwrap();
            if !pairs.iter().any(|(i, _)| *i == id) {
                pairs.push((id, added["content"].as_str().unwrap().to_string()));
            }
        }
        pairs.sort();
        FileTokenizer {
            json,
            vocab: pairs.into_iter().map(|(_, t)| t).collect(),
            config: read_json(&dir.join("tokenizer_config.json")),
        }
    }
}

impl Tokenizer for FileTokenizer {
    fn name(&self) -> &str {
        "file"
    }
    fn config(&self) -> Value {
        Value::Null
    }
    fn train(
        &mut self,
        _: &dyn llmlab_plugin_api::TextSource,
        _: &Context,
    ) -> llmlab_plugin_api::Result<()> {
        unreachable!()
    }
    fn encode(&self, _: &str) -> llmlab_plugin_api::Result<Vec<u32>> {
        unreachable!()
    }
    fn decode(&self, _: &[u32]) -> llmlab_plugin_api::Result<String> {
        unreachable!()
    }
    fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.iter().position(|t| t == token).map(|i| i as u32)
    }
    fn id_to_token(&self, id: u32) -> Option<String> {
        self.vocab.get(id as usize).cloned()
    }
    fn special_token(&self, role: llmlab_plugin_api::SpecialToken) -> Option<u32> {
        let key = match role {
            llmlab_plugin_api::SpecialToken::EndOfText => "eos_token",
            llmlab_plugin_api::SpecialToken::Pad => "pad_token",
            _ => return None,
        };
        self.token_to_id(self.config[key].as_str()?)
    }
    fn to_json(&self) -> llmlab_plugin_api::Result<String> {
        Ok(self.json.clone())
    }
    fn chat_template(&self) -> Option<String> {
        self.config["chat_template"].as_str().map(str::to_string)
    }
    fn tokenizer_config(&self) -> Option<Value> {
        Some(self.config.clone())
    }
    fn clone_box(&self) -> Box<dyn Tokenizer> {
        Box::new(self.clone())
    }
}

/// A deterministic gpt from `config` whose weights are scaled and shifted away from the init
/// (norm gains near 1 but not equal, matrices large enough for logits of several units).
fn llmlab_model(config: Value) -> Gpt {
    let ctx = Context::cpu();
    let base = llmlab_gpt::new_gpt(&config, &ctx).unwrap();
    let tensors = base
        .tensors()
        .into_iter()
        .enumerate()
        .map(|(k, (name, t))| {
            let n = t.elem_count();
            let wave = Tensor::arange(0f32, n as f32, &Device::Cpu)
                .unwrap()
                .affine(1.7, k as f64)
                .unwrap()
                .sin()
                .unwrap()
                .reshape(t.shape())
                .unwrap();
            let t = ((t * 8.0).unwrap() + (wave * 0.1).unwrap()).unwrap();
            (name, t)
        })
        .collect();
    Gpt::new(
        base.gpt_config().clone(),
        Source::Tensors(tensors),
        &Device::Cpu,
        ctx.dtype,
        ctx.cancel.clone(),
    )
    .unwrap()
}

fn llama_layout() -> Value {
    json!({
        "vocab_size": 320, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 32, "ctx": 64,
        "norm": "rms", "pos": "rope", "mlp": "swiglu", "bias": false, "tie_embeddings": false,
        "rope_theta": 10000.0, "norm_eps": 1e-5, "seed": 7,
        "rope_scaling": { "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16 }
    })
}

fn gpt2_layout() -> Value {
    json!({ "vocab_size": 320, "n_layer": 2, "n_head": 4, "d_model": 32, "ctx": 64, "seed": 7 })
}

fn import(dir: &Path) -> Gpt {
    llmlab_gpt::hf_llama::try_load(dir, &Context::cpu())
        .unwrap()
        .unwrap_or_else(|| llmlab_gpt::save_load::load(dir, &Context::cpu()).unwrap())
}

#[test]
fn every_imported_family_exports_and_reimports_with_the_same_logits() {
    for (family, architecture) in [
        ("tiny-llama", "LlamaForCausalLM"),
        // Mistral without a binding window is Llama's computation: exported as Llama.
        ("tiny-mistral", "LlamaForCausalLM"),
        ("tiny-qwen2", "Qwen2ForCausalLM"),
        ("tiny-qwen3", "Qwen3ForCausalLM"),
    ] {
        let model = import(&fixtures().join(family));
        let tok = FileTokenizer::load(&fixtures().join(family));
        let out = tempfile::tempdir().unwrap();
        model.save_hf(out.path(), Some(&tok)).unwrap();
        let config = read_json(&out.path().join("config.json"));
        assert_eq!(config["architectures"][0], architecture, "{family}");
        assert_eq!(
            std::fs::read_to_string(out.path().join("tokenizer.json")).unwrap(),
            tok.json
        );
        assert_eq!(
            read_json(&out.path().join("tokenizer_config.json")),
            tok.config
        );
        let again = import(out.path());
        let diff = worst(&logits(&model), &logits(&again));
        assert!(diff < 1e-6, "{family}: {diff}");
    }
}

/// The exports transformers checked: the same model exports the same bytes, and its logits are
/// the ones transformers computed from them.
#[test]
fn llmlab_models_match_transformers_on_their_recorded_exports() {
    for (name, config) in [("llama", llama_layout()), ("gpt2", gpt2_layout())] {
        let model = llmlab_model(config);
        let recorded = fixtures().join(format!("llmlab-export-{name}"));
        let out = tempfile::tempdir().unwrap();
        model.save_hf(out.path(), None).unwrap();
        for file in ["config.json", "model.safetensors"] {
            assert!(
                std::fs::read(out.path().join(file)).unwrap()
                    == std::fs::read(recorded.join(file)).unwrap(),
                "{name}: {file} differs from the export transformers checked; rerun \
                 LLMLAB_WRITE_EXPORTS and make_tiny_hf.py check-export"
            );
        }
        let expected = read_json(&fixtures().join(format!("llmlab-export-{name}-expected.json")));
        let theirs = expected_logits(&expected);
        let ours = logits(&model);
        let diff = worst(&ours, &theirs);
        let largest = theirs
            .iter()
            .flatten()
            .flatten()
            .fold(0f64, |m, v| m.max(v.abs() as f64));
        eprintln!(
            "llmlab {name} export: max |logit difference| vs transformers = {diff:e} (logits up to {largest:.1})"
        );
        assert!(largest > 1.0, "{name}: logits too small to mean anything");
        // The scaled-up weights give logits up to ~30: f32 sums of that size differ in the
        // sixth digit between two correct implementations.
        assert!(diff < 1e-5 * largest.max(10.0), "{name}: {diff}");
    }
}

/// Writes the exports `make_tiny_hf.py check-export` checks (run by hand, see the module doc).
#[test]
fn write_exports() {
    let Ok(dir) = std::env::var("LLMLAB_WRITE_EXPORTS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    for (name, config) in [("llama", llama_layout()), ("gpt2", gpt2_layout())] {
        let model = llmlab_model(config);
        model
            .save_hf(&dir.join(format!("llmlab-export-{name}")), None)
            .unwrap();
        model
            .save_llama_cpp_gguf(&dir.join(format!("llmlab-export-{name}.gguf")), None)
            .unwrap();
    }
    for family in ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"] {
        let model = import(&fixtures().join(family));
        let tok = FileTokenizer::load(&fixtures().join(family));
        model
            .save_hf(&dir.join(format!("{family}-export")), Some(&tok))
            .unwrap();
        model
            .save_llama_cpp_gguf(&dir.join(format!("{family}.gguf")), Some(&tok))
            .unwrap();
    }
}

#[test]
fn models_without_an_hf_architecture_are_refused_naming_the_option() {
    let mut mixed = gpt2_layout();
    mixed["pos"] = json!("rope");
    let model = llmlab_gpt::new_gpt(&mixed, &Context::cpu()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = model.save_hf(out.path(), None).unwrap_err().to_string();
    assert!(err.contains("pos") && err.contains("Rope"), "{err}");
    let mut gqa = gpt2_layout();
    gqa["n_kv_head"] = json!(2);
    let model = llmlab_gpt::new_gpt(&gqa, &Context::cpu()).unwrap();
    let err = model.save_hf(out.path(), None).unwrap_err().to_string();
    assert!(err.contains("n_kv_head"), "{err}");
}

/// The llama.cpp file: architecture and keys, names, the q/k permutation undone gives the HF
/// rows back, and the tokenizer's vocabulary and template travel along.
#[test]
fn llama_cpp_gguf_has_llama_cpp_names_keys_and_permuted_rows() {
    use llmlab_plugin_api::candle::quantized::gguf_file;
    let model = import(&fixtures().join("tiny-llama"));
    let tok = FileTokenizer::load(&fixtures().join("tiny-llama"));
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("m.gguf");
    model.save_llama_cpp_gguf(&path, Some(&tok)).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let text = |k: &str| content.metadata[k].to_string().unwrap().clone();
    let int = |k: &str| content.metadata[k].to_u32().unwrap();
    assert_eq!(text("general.architecture"), "llama");
    assert_eq!(int("llama.block_count"), 2);
    assert_eq!(int("llama.attention.head_count_kv"), 2);
    assert_eq!(int("llama.feed_forward_length"), 72);
    assert_eq!(text("tokenizer.ggml.model"), "gpt2");
    assert_eq!(text("tokenizer.ggml.pre"), "llama-bpe");
    assert_eq!(
        text("tokenizer.chat_template"),
        tok.chat_template().unwrap()
    );
    assert_eq!(
        int("tokenizer.ggml.eos_token_id"),
        tok.token_to_id("<|eot_id|>").unwrap()
    );
    let tokens = content.metadata["tokenizer.ggml.tokens"].to_vec().unwrap();
    assert_eq!(tokens.len(), 320);
    for name in [
        "token_embd.weight",
        "output.weight",
        "output_norm.weight",
        "rope_freqs.weight",
        "blk.1.attn_q.weight",
        "blk.1.attn_k.weight",
        "blk.1.ffn_gate.weight",
        "blk.1.ffn_down.weight",
    ] {
        assert!(content.tensor_infos.contains_key(name), "{name}");
    }
    // ggml order: the embedding is (n_embd, n_vocab).
    assert_eq!(
        content.tensor_infos["token_embd.weight"].shape.dims(),
        &[320, 32]
    );
    let q = content
        .tensor(&mut file, "blk.0.attn_k.weight", &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    let hf = llmlab_gpt::hf_export::hf_tensors(
        &model,
        llmlab_gpt::hf_export::target(model.gpt_config()).unwrap(),
    )
    .unwrap()
    .into_iter()
    .find(|(n, _)| n == "model.layers.0.self_attn.k_proj.weight")
    .unwrap()
    .1;
    let permuted = llmlab_gpt::gguf_llama::permute_for_interleaved_rope(&hf, 2).unwrap();
    let diff = (q - &permuted)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    assert!(
        (permuted - hf)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
}
