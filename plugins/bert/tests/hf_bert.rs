//! Hugging Face interop: tiny random `BertForMaskedLM` and `BertModel` directories saved by
//! `transformers` (`tests/fixtures/make_tiny_bert.py`) load and give PyTorch's final hidden
//! states, MLM logits and pooled output on a padded batch of sentence pairs.

use std::path::PathBuf;

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Context, ForwardInputs, ForwardOptions, Model};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("tiny-bert-expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u32_tensor(v: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(v.clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

/// Max |ours − theirs| over the positions `mask` keeps (`None`: all); padded positions of HF's
/// output are whatever its kernels leave there and mean nothing.
fn worst(ours: &Tensor, theirs: &Value, mask: Option<&[u32]>) -> f64 {
    let ours: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
    let theirs = flat(theirs);
    assert_eq!(ours.len(), theirs.len());
    let per_position = mask.map(|m| ours.len() / m.len());
    let mut worst = 0f64;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        if let (Some(m), Some(p)) = (mask, per_position) {
            if m[i / p] == 0 {
                continue;
            }
        }
        worst = worst.max((*a as f64 - b).abs());
    }
    worst
}

fn inputs(e: &Value) -> (Tensor, ForwardInputs, Vec<u32>) {
    let mask = u32_tensor(&e["attention_mask"]);
    let keep: Vec<u32> = mask.flatten_all().unwrap().to_vec1().unwrap();
    let inputs = ForwardInputs {
        attention_mask: Some(mask),
        token_type_ids: Some(u32_tensor(&e["token_type_ids"])),
        head: false,
    };
    (u32_tensor(&e["input_ids"]), inputs, keep)
}

#[test]
fn masked_lm_checkpoint_matches_pytorch_hidden_states_and_logits() {
    let model =
        llmlab_bert::save_load::load(&fixtures().join("tiny-bert-mlm"), &Context::cpu()).unwrap();
    assert_eq!(model.config()["n_layer"], 2);
    let e = expected();
    let (ids, inputs, keep) = inputs(&e);
    let options = ForwardOptions {
        train: false,
        hidden_states: true,
        no_grad: false,
    };
    let out = model.forward_with(&ids, &inputs, &options).unwrap();
    let hidden = worst(out.hidden.as_ref().unwrap(), &e["hidden"], Some(&keep));
    let logits = worst(&out.logits, &e["mlm_logits"], Some(&keep));
    eprintln!("max |difference| vs PyTorch: hidden {hidden:e}, MLM logits {logits:e}");
    assert!(hidden < 1e-4, "hidden states differ by {hidden}");
    assert!(logits < 1e-4, "MLM logits differ by {logits}");
    // The values are not trivially small: the comparison means something.
    let spread = flat(&e["mlm_logits"])
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()));
    assert!(spread > 1.0, "{spread}");
}

#[test]
fn base_model_checkpoint_matches_pytorch_hidden_states_and_pooler() {
    let model =
        llmlab_bert::save_load::load(&fixtures().join("tiny-bert-base"), &Context::cpu()).unwrap();
    let e = expected();
    let (ids, inputs, keep) = inputs(&e);
    let hidden = model.encode(&ids, &inputs, false).unwrap();
    let pooled = model.pool(&hidden).unwrap();
    let h = worst(&hidden, &e["base_hidden"], Some(&keep));
    let p = worst(&pooled, &e["pooled"], None);
    eprintln!("max |difference| vs PyTorch: hidden {h:e}, pooled {p:e}");
    assert!(h < 1e-4 && p < 1e-4, "hidden {h}, pooled {p}");
}

#[test]
fn padding_does_not_change_the_real_positions() {
    let model =
        llmlab_bert::save_load::load(&fixtures().join("tiny-bert-mlm"), &Context::cpu()).unwrap();
    let e = expected();
    let (ids, inputs, keep) = inputs(&e);
    let full = model.encode(&ids, &inputs, false).unwrap();
    // Row 1 alone, cut to its real length, with no mask at all.
    let real = keep[keep.len() / 2..].iter().filter(|&&k| k == 1).count();
    let row_ids = ids.narrow(0, 1, 1).unwrap().narrow(1, 0, real).unwrap();
    let row_types = inputs
        .token_type_ids
        .as_ref()
        .unwrap()
        .narrow(0, 1, 1)
        .unwrap()
        .narrow(1, 0, real)
        .unwrap();
    let alone = model
        .encode(
            &row_ids,
            &ForwardInputs {
                token_type_ids: Some(row_types),
                ..ForwardInputs::default()
            },
            false,
        )
        .unwrap();
    let padded = full.narrow(0, 1, 1).unwrap().narrow(1, 0, real).unwrap();
    let diff = (alone - padded)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
}
