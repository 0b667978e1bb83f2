//! Hugging Face interop: a tiny random `GPT2LMHeadModel` saved by `transformers`
//! (`tests/fixtures/make_tiny_gpt2.py`) loads through `model_load` and gives PyTorch's logits.

use std::path::PathBuf;

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Context, ForwardOptions, GenerateOptions, Model};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("tiny-gpt2-expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u32_rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

#[test]
fn gpt2_checkpoint_logits_match_pytorch() {
    let model =
        llmlab_gpt::save_load::load(&fixtures().join("tiny-gpt2"), &Context::cpu()).unwrap();
    let config = model.config();
    assert_eq!(config["n_layer"], 2);
    assert_eq!(config["tie_embeddings"], true);
    let expected = expected();
    let rows = u32_rows(&expected["input_ids"]);
    let (b, t) = (rows.len(), rows[0].len());
    let ids = Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap();
    let logits = model
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits;
    let ours: Vec<Vec<Vec<f32>>> = logits.to_vec3().unwrap();
    let theirs = expected["logits"].as_array().unwrap();
    let mut worst = 0f64;
    for (i, seq) in theirs.iter().enumerate() {
        for (j, row) in seq.as_array().unwrap().iter().enumerate() {
            for (k, v) in row.as_array().unwrap().iter().enumerate() {
                worst = worst.max((v.as_f64().unwrap() - ours[i][j][k] as f64).abs());
            }
        }
    }
    eprintln!("max |logit difference| vs PyTorch = {worst:e}");
    assert!(worst < 1e-4, "max |logit difference| = {worst}");
    // The logits are not trivially small: the comparison means something.
    let spread = logits
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(spread > 1.0, "{spread}");
}

#[test]
fn gpt2_checkpoint_greedy_continuation_matches_transformers_generate() {
    let model =
        llmlab_gpt::save_load::load(&fixtures().join("tiny-gpt2"), &Context::cpu()).unwrap();
    let expected = expected();
    let prompt = u32_rows(&expected["input_ids"])[0].clone();
    let want: Vec<u32> = expected["greedy_continuation_of_row_0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let options = GenerateOptions {
        max_tokens: want.len(),
        temperature: 0.0,
        ..GenerateOptions::default()
    };
    let got = model
        .generate(&[prompt], &options, &mut |_, _| true)
        .unwrap();
    assert_eq!(got[0], want);
}

#[test]
fn imported_gpt2_saves_and_reloads_in_llmlab_format() {
    let model =
        llmlab_gpt::save_load::load(&fixtures().join("tiny-gpt2"), &Context::cpu()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let again = llmlab_gpt::save_load::load(dir.path(), &Context::cpu()).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let a = model
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits;
    let b = again
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits;
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

#[test]
fn unsupported_gpt2_variants_are_refused_by_name() {
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-gpt2/config.json")).unwrap(),
    )
    .unwrap();
    config["activation_function"] = "relu".into();
    let e = llmlab_gpt::hf::config_from_hf(&config)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("activation_function") && e.contains("relu"),
        "{e}"
    );
    config["activation_function"] = "gelu_new".into();
    config["scale_attn_by_inverse_layer_idx"] = true.into();
    let e = llmlab_gpt::hf::config_from_hf(&config)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("scale_attn_by_inverse_layer_idx"), "{e}");
}
