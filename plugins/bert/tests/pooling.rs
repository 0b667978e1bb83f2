//! The sequence head's `pooling` (docs/bert.md, "Pooling"): mean and max read only the real
//! positions (a sequence gives the same logits alone and padded in a batch), the choice is
//! saved with the model and predicts identically after a reload, a bad value is refused naming
//! the key and the allowed values, and a mean-pooled head learns.

use llmlab_bert::new_bert;
use llmlab_plugin_api::candle::{DType, Device, Tensor, Var};
use llmlab_plugin_api::candle_nn::{loss, AdamW, Optimizer, ParamsAdamW};
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Context, ForwardInputs, ForwardOptions, Model};

fn tiny(head: Value) -> llmlab_bert::Bert {
    let config = json!({ "vocab_size": 40, "n_layer": 2, "n_head": 2, "d_model": 16,
                         "ctx": 12, "dropout": 0.0, "seed": 3, "head": head });
    new_bert(&config, &Context::cpu()).unwrap()
}

fn tensor(rows: &[Vec<u32>]) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), &Device::Cpu).unwrap()
}

/// Pads `rows` with id 0 to the longest and returns `(ids, attention_mask)`.
fn padded(rows: &[&[u32]]) -> (Tensor, Tensor) {
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(t)
                .collect()
        })
        .collect();
    let mask: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| (0..t).map(|i| u32::from(i < r.len())).collect())
        .collect();
    (tensor(&ids), tensor(&mask))
}

fn head_logits(model: &dyn Model, ids: &Tensor, mask: Option<&Tensor>) -> Vec<Vec<f32>> {
    model
        .forward_with(
            ids,
            &ForwardInputs {
                attention_mask: mask.cloned(),
                head: true,
                ..Default::default()
            },
            &ForwardOptions::default(),
        )
        .unwrap()
        .logits
        .to_vec2()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mean_and_max_pooling_ignore_padding() {
    let short: &[u32] = &[2, 5, 6, 7, 3];
    let long: &[u32] = &[2, 9, 8, 11, 12, 13, 14, 15, 3];
    let mut per_pooling = Vec::new();
    for pooling in ["cls", "mean", "max"] {
        let model = tiny(json!({ "kind": "sequence", "num_labels": 3, "pooling": pooling }));
        let alone = head_logits(&model, &tensor(&[short.to_vec()]), None);
        // The short row padded to 9 next to a longer one (and listed second, so its padding
        // is not at the batch's first row).
        let (ids, mask) = padded(&[long, short]);
        let batched = head_logits(&model, &ids, Some(&mask));
        let d = max_diff(&alone[0], &batched[1]);
        assert!(
            d < 1e-5,
            "{pooling}: alone {:?} vs padded {:?} ({d})",
            alone[0],
            batched[1]
        );
        // Without the mask, mean and max would read the padding: the check above can fail.
        // ([CLS] reads it only through attention, faintly at init.)
        if pooling != "cls" {
            let unmasked = head_logits(&model, &ids, None);
            let d = max_diff(&alone[0], &unmasked[1]);
            assert!(
                d > 1e-3,
                "{pooling}: padding read or not, the same logits ({d})"
            );
        }
        per_pooling.push(alone[0].clone());
    }
    // The three poolings are different heads on the same weights.
    assert!(max_diff(&per_pooling[0], &per_pooling[1]) > 1e-4);
    assert!(max_diff(&per_pooling[0], &per_pooling[2]) > 1e-4);
    assert!(max_diff(&per_pooling[1], &per_pooling[2]) > 1e-4);

    // The summaries themselves: mean and max over the real positions only.
    let model = tiny(Value::Null);
    let (ids, mask) = padded(&[long, short]);
    let hidden = model
        .encode(
            &ids,
            &ForwardInputs {
                attention_mask: Some(mask.clone()),
                ..Default::default()
            },
            false,
        )
        .unwrap();
    let states: Vec<Vec<Vec<f32>>> = hidden.to_vec3().unwrap();
    let real = &states[1][..short.len()];
    let d_model = real[0].len();
    let mean: Vec<f32> = (0..d_model)
        .map(|j| real.iter().map(|s| s[j]).sum::<f32>() / real.len() as f32)
        .collect();
    let max: Vec<f32> = (0..d_model)
        .map(|j| real.iter().map(|s| s[j]).fold(f32::MIN, f32::max))
        .collect();
    use llmlab_bert::config::Pooling;
    use llmlab_bert::heads::summarise;
    let got_mean: Vec<Vec<f32>> = summarise(&hidden, Some(&mask), Pooling::Mean)
        .unwrap()
        .to_vec2()
        .unwrap();
    let got_max: Vec<Vec<f32>> = summarise(&hidden, Some(&mask), Pooling::Max)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert!(
        max_diff(&got_mean[1], &mean) < 1e-6,
        "{:?} vs {mean:?}",
        got_mean[1]
    );
    assert!(
        max_diff(&got_max[1], &max) < 1e-6,
        "{:?} vs {max:?}",
        got_max[1]
    );
}

#[test]
fn pooling_is_saved_and_a_reloaded_classifier_predicts_identically() {
    let (ids, mask) = padded(&[&[2, 9, 8, 11, 12, 3], &[2, 5, 6, 3]]);
    for pooling in ["mean", "max"] {
        let model = tiny(Value::Null);
        let described = model
            .set_head(Some(
                &json!({ "kind": "sequence", "num_labels": 2, "pooling": pooling }),
            ))
            .unwrap();
        assert_eq!(described["pooling"], pooling);
        assert_eq!(model.head().unwrap()["pooling"], pooling);
        let before = head_logits(&model, &ids, Some(&mask));
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let config: Value = llmlab_plugin_api::serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["head"]["pooling"], pooling, "{config}");
        let back = llmlab_bert::save_load::load(dir.path(), &Context::cpu()).unwrap();
        assert_eq!(back.head(), model.head());
        let after = head_logits(&back, &ids, Some(&mask));
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(a, b, "{pooling}: reloaded logits differ");
        }
    }
    // The default is not written, so [CLS] heads' configs read as before (and as HF's).
    let model = tiny(json!({ "kind": "sequence", "num_labels": 2 }));
    assert!(model.head().unwrap().get("pooling").is_none());
    let explicit = tiny(json!({ "kind": "sequence", "num_labels": 2, "pooling": "cls" }));
    assert_eq!(explicit.head(), model.head());
}

#[test]
fn a_bad_pooling_is_refused_naming_the_key_and_the_values() {
    let model = tiny(Value::Null);
    let err = model
        .set_head(Some(
            &json!({ "kind": "sequence", "num_labels": 2, "pooling": "avg" }),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`pooling`") && err.contains("\"avg\"") && err.contains("\"mean\""),
        "{err}"
    );
    let config = json!({ "vocab_size": 40, "n_layer": 1, "n_head": 2, "d_model": 16, "ctx": 12,
                         "head": { "kind": "sequence", "num_labels": 2, "pooling": 3 } });
    let err = new_bert(&config, &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("head.pooling") && err.contains("string"),
        "{err}"
    );
    let err = model
        .set_head(Some(
            &json!({ "kind": "token", "num_labels": 2, "pooling": "mean" }),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`pooling`") && err.contains("token head"),
        "{err}"
    );
}

#[test]
fn a_mean_pooled_head_learns() {
    // Is token 7 in the sequence? Lengths 3..=8, padded per batch: a task every pooling can
    // learn, here to check that gradients flow through the masked mean into the encoder.
    let model = tiny(json!({ "kind": "sequence", "num_labels": 2, "pooling": "mean" }));
    let vars: Vec<Var> = model.parameters().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = SplitMix64::new(11);
    let batch = |rng: &mut SplitMix64| {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..16 {
            let len = 3 + rng.below(6);
            let mut row: Vec<u32> = vec![2];
            row.extend((0..len).map(|_| 8 + rng.below(30) as u32));
            let label = rng.below(2) as u32;
            if label == 1 {
                let at = 1 + rng.below(len);
                row[at] = 7;
            }
            row.push(3);
            rows.push(row);
            labels.push(label);
        }
        let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let (ids, mask) = padded(&refs);
        (ids, mask, Tensor::new(labels, &Device::Cpu).unwrap())
    };
    let mut losses = Vec::new();
    for _ in 0..150 {
        let (ids, mask, labels) = batch(&mut rng);
        let logits = model
            .forward_with(
                &ids,
                &ForwardInputs {
                    attention_mask: Some(mask),
                    head: true,
                    ..Default::default()
                },
                &ForwardOptions {
                    train: true,
                    ..Default::default()
                },
            )
            .unwrap()
            .logits;
        let l = loss::cross_entropy(&logits, &labels).unwrap();
        losses.push(l.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap());
        opt.backward_step(&l).unwrap();
    }
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&losses[..10]), mean(&losses[losses.len() - 10..]));
    eprintln!("mean pooling: loss {first:.3} over the first 10 steps, {last:.3} over the last 10");
    assert!(
        first > 0.5 && last < 0.25,
        "mean pooling did not learn: loss {first:.3} over the first 10 steps, {last:.3} over the last 10"
    );
}
