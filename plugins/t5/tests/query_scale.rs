//! T5's `1/sqrt(d_kv)` lives in the forward pass, not in the stored `q` weights
//! (`attention.rs`): AdamW moves every element by about `lr`, so weights initialised
//! `sqrt(d_kv)` times smaller than the keys (Hugging Face's folded layout) trained that much
//! faster and span-corruption pretraining left T5 worse to fine-tune than random weights
//! (docs/t5.md, 2026-12-02). Directories saved in the folded layout still load to the same
//! function.

use llmlab_nn::weights::save_safetensors;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::{self, json, Value};
use llmlab_plugin_api::{Context, ForwardOptions, Model};
use llmlab_t5::save_load::{QUERY_LAYOUT_KEY, WEIGHTS_FILE, WEIGHTS_KEY};
use llmlab_t5::{new_t5, T5};

fn model() -> T5 {
    new_t5(
        &json!({
            "vocab_size": 40, "d_model": 64, "d_kv": 16, "d_ff": 96, "n_head": 4, "n_layer": 2,
            "ctx": 24, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
            "feed_forward": "gated-gelu", "seed": 3
        }),
        &Context::cpu(),
    )
    .unwrap()
}

fn rms(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn logits(m: &dyn Model) -> Vec<f32> {
    let ids = Tensor::new(&[[5u32, 9, 3, 1, 4, 6, 7]], &Device::Cpu).unwrap();
    m.forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn query_weights_start_at_the_key_scale_so_adamw_moves_them_alike() {
    let params = model().parameters();
    let mut checked = 0;
    for (name, q) in &params {
        let Some(prefix) = name.strip_suffix(".q.weight") else {
            continue;
        };
        let k = &params
            .iter()
            .find(|(n, _)| *n == format!("{prefix}.k.weight"))
            .unwrap()
            .1;
        let ratio = rms(q.as_tensor()) / rms(k.as_tensor());
        // Folded into the weights (Hugging Face's layout) this ratio is 1/sqrt(16) = 0.25.
        assert!(
            (0.8..1.25).contains(&ratio),
            "{name}: rms(q)/rms(k) = {ratio}"
        );
        checked += 1;
    }
    // 2 encoder self-attentions, 2 decoder self- and 2 cross-attentions.
    assert_eq!(checked, 6);
}

#[test]
fn a_directory_saved_with_folded_query_weights_loads_to_the_same_function() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    // Rewrite the directory as saved before the layout key: q weights times 1/sqrt(d_kv).
    let tensors: Vec<(String, Tensor)> = m
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let t = if n.ends_with("Attention.q.weight") {
                (t * 0.25).unwrap()
            } else {
                t
            };
            (n, t)
        })
        .collect();
    let entry = save_safetensors(&dir.path().join(WEIGHTS_FILE), &tensors, None).unwrap();
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let keys = config.as_object_mut().unwrap();
    assert!(keys.remove(QUERY_LAYOUT_KEY).is_some());
    keys.insert(
        WEIGHTS_KEY.into(),
        json!({ WEIGHTS_FILE: serde_json::to_value(&entry).unwrap() }),
    );
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();

    let old = llmlab_t5::save_load::load(dir.path(), &Context::cpu()).unwrap();
    for (a, b) in logits(&m).iter().zip(logits(&old)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    // An unknown layout is refused, naming the key.
    let keys = config.as_object_mut().unwrap();
    keys.insert(QUERY_LAYOUT_KEY.into(), json!("sideways"));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let err = llmlab_t5::save_load::load(dir.path(), &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(QUERY_LAYOUT_KEY), "{err}");
}
