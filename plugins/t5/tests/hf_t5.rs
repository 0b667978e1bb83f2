//! Hugging Face interop: tiny random `T5ForConditionalGeneration`s saved by `transformers`
//! (`tests/fixtures/make_tiny_t5.py`; v1.1 gated-GELU and the original ReLU/tied-scaled T5)
//! load through `model_load`, give PyTorch's logits within 1e-4 and `generate`'s greedy text.

use std::path::PathBuf;

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Context, ForwardOptions, GenerateOptions, Model};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("tiny-t5-expected.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all[name].clone()
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

/// The encoder rows without their padding.
fn encoder_rows(e: &Value) -> Vec<Vec<u32>> {
    let lens: Vec<usize> = e["input_lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    u32_rows(&e["input_ids"])
        .into_iter()
        .zip(lens)
        .map(|(r, n)| r[..n].to_vec())
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn check(name: &str, scaled: bool) {
    let model = llmlab_t5::save_load::load(&fixtures().join(name), &Context::cpu()).unwrap();
    assert_eq!(model.t5_config().scales_decoder_output(), scaled);
    let e = expected(name);
    let encoder = encoder_rows(&e);
    let decoder = u32_rows(&e["decoder_input_ids"]);
    let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(e["logits"].clone()).unwrap();
    let want = Tensor::new(want, &Device::Cpu).unwrap();
    let got = model.seq2seq_logits(&encoder, &decoder).unwrap();
    let diff = max_abs_diff(&got, &want);
    assert!(
        diff < 1e-4,
        "{name}: logits differ from PyTorch's by {diff}"
    );

    // The same through the Model contract, a row packed as `input </s> target`: the logits at
    // the input's </s> and after are the decoder's.
    let packed: Vec<u32> = encoder[0].iter().chain(&decoder[0][1..]).copied().collect();
    let ids = Tensor::new(packed.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits;
    let e0 = encoder[0].len() - 1;
    let tail = logits
        .get(0)
        .unwrap()
        .narrow(0, e0, decoder[0].len())
        .unwrap();
    let diff = max_abs_diff(&tail, &want.get(0).unwrap());
    assert!(diff < 1e-4, "{name}: packed logits differ by {diff}");

    let options = GenerateOptions {
        max_tokens: 10,
        temperature: 0.0,
        stop_tokens: vec![1],
        ..GenerateOptions::default()
    };
    let greedy = model
        .generate(&encoder, &options, &mut |_, _| true)
        .unwrap();
    assert_eq!(greedy, u32_rows(&e["greedy"]), "{name}: greedy generation");
}

#[test]
fn t5_v1_1_gated_gelu_matches_pytorch_logits_and_greedy_generate() {
    check("tiny-t5-v1_1", false);
}

#[test]
fn original_t5_relu_tied_scaled_matches_pytorch_logits_and_greedy_generate() {
    check("tiny-t5", true);
}

#[test]
fn a_config_json_of_another_model_type_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let err = llmlab_t5::save_load::load(dir.path(), &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a t5 model"), "{err}");
}
