//! The `bert` model's behaviour: bidirectional (a later token changes an earlier position),
//! pre-LN option, task heads (shapes, save/load with the head), gradients reach every
//! parameter, and bad inputs are refused naming the cause.

use llmlab_bert::new_bert;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{Context, ForwardInputs, ForwardOptions, Model};

fn tiny(extra: llmlab_plugin_api::serde_json::Value) -> llmlab_bert::Bert {
    let mut config = json!({ "vocab_size": 40, "n_layer": 2, "n_head": 2, "d_model": 16,
                             "ctx": 12, "dropout": 0.0, "seed": 3 });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    new_bert(&config, &Context::cpu()).unwrap()
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), &Device::Cpu).unwrap()
}

fn hidden(model: &llmlab_bert::Bert, ids: &Tensor) -> Vec<Vec<Vec<f32>>> {
    model
        .encode(ids, &ForwardInputs::default(), false)
        .unwrap()
        .to_vec3()
        .unwrap()
}

#[test]
fn attention_is_bidirectional_in_both_norm_positions() {
    for position in ["post", "pre"] {
        let model = tiny(json!({ "norm_position": position }));
        let a = hidden(&model, &ids(&[&[2, 5, 6, 7, 3]]));
        let b = hidden(&model, &ids(&[&[2, 5, 6, 9, 3]]));
        // Position 0 sees position 3: changing a later token changes it.
        let d: f32 = a[0][0]
            .iter()
            .zip(&b[0][0])
            .map(|(x, y)| (x - y).abs())
            .sum();
        assert!(d > 1e-4, "{position}: position 0 did not change ({d})");
        let out = model
            .forward(&ids(&[&[2, 5, 6, 7, 3]]), &ForwardOptions::default())
            .unwrap();
        assert_eq!(out.logits.dims(), &[1, 5, 40]);
    }
}

#[test]
fn heads_have_their_shapes_and_save_with_the_model() {
    let model = tiny(json!({}));
    let x = ids(&[&[2, 5, 6, 3], &[2, 7, 3, 0]]);
    let with_head = |model: &dyn Model| {
        model
            .forward_with(
                &x,
                &ForwardInputs {
                    attention_mask: Some(ids(&[&[1, 1, 1, 1], &[1, 1, 1, 0]])),
                    token_type_ids: Some(ids(&[&[0, 0, 1, 1], &[0, 0, 1, 0]])),
                    head: true,
                },
                &ForwardOptions::default(),
            )
            .map(|o| o.logits)
    };
    let err = with_head(&model).unwrap_err().to_string();
    assert!(err.contains("no task head"), "{err}");
    for (kind, n, shape) in [
        ("sequence", 3, vec![2, 3]),
        ("regression", 1, vec![2, 1]),
        ("token", 5, vec![2, 4, 5]),
    ] {
        model
            .set_head(Some(&json!({ "kind": kind, "num_labels": n })))
            .unwrap();
        let params = model.parameters();
        let weight = params
            .iter()
            .find(|(n, _)| n == "classifier.weight")
            .unwrap();
        assert_eq!(weight.1.dims(), &[n, 16]);
        assert_eq!(
            params
                .iter()
                .filter(|(n, _)| n.starts_with("classifier."))
                .count(),
            2
        );
        assert_eq!(model.head().unwrap()["kind"], kind);
        let logits = with_head(&model).unwrap();
        assert_eq!(logits.dims(), shape.as_slice(), "{kind}");
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let back = llmlab_bert::save_load::load(dir.path(), &Context::cpu()).unwrap();
        assert_eq!(back.head(), model.head());
        let again = with_head(&back).unwrap();
        let diff = (again - &logits).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{kind}");
    }
    model.set_head(None).unwrap();
    assert!(model.head().is_none());
    assert!(model
        .parameters()
        .iter()
        .all(|(n, _)| !n.starts_with("classifier")));
}

#[test]
fn gradients_reach_every_parameter() {
    let model = tiny(json!({ "head": { "kind": "sequence", "num_labels": 2 } }));
    let x = ids(&[&[2, 5, 6, 3], &[2, 7, 8, 3]]);
    let options = ForwardOptions {
        train: true,
        hidden_states: false,
        no_grad: false,
    };
    // MLM loss reaches everything but the pooler and the classifier; the head's loss the rest.
    let mlm = model
        .forward(&x, &options)
        .unwrap()
        .logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let head = model
        .forward_with(
            &x,
            &ForwardInputs {
                head: true,
                ..Default::default()
            },
            &options,
        )
        .unwrap()
        .logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = (mlm + head).unwrap().backward().unwrap();
    for (name, var) in model.parameters() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn bad_inputs_name_the_cause() {
    let model = tiny(json!({}));
    let too_long =
        Tensor::zeros((1, 13), llmlab_plugin_api::candle::DType::U32, &Device::Cpu).unwrap();
    let err = model
        .forward(&too_long, &ForwardOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("13 tokens exceeds the context length ctx = 12"),
        "{err}"
    );
    let err = model
        .forward(&ids(&[&[2, 40]]), &ForwardOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("token id 40") && err.contains("vocab_size = 40"),
        "{err}"
    );
    let err = model
        .forward_with(
            &ids(&[&[2, 5]]),
            &ForwardInputs {
                token_type_ids: Some(ids(&[&[0, 2]])),
                ..Default::default()
            },
            &ForwardOptions::default(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("token type id 2"), "{err}");
    let err = model.new_cache(1).err().unwrap().to_string();
    assert!(err.contains("encoder"), "{err}");
}
