//! MoE models end to end: config errors, which blocks get experts, the aux loss and router
//! statistics, KV-cache generation and beam search, expert choice refused for generation, save
//! and load (state included), frozen copies, quantization and GGUF, activation checkpointing,
//! mixed precision, the aux-free bias, and bit-exact resume through the trainer's checkpoints.

mod common;

use common::training::{train_steps, Windows};
use common::{ids, max_abs_diff, tiny};
use llmlab_gpt::decoder::generate_uncached;
use llmlab_gpt::model::cross_entropy;
use llmlab_plugin_api::candle::quantized::{GgmlDType, QTensor};
use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Context, ForwardOptions, GenerateOptions, Model, Quantizer};
use llmlab_train::TrainLoop;

const TRAIN: ForwardOptions = ForwardOptions {
    train: true,
    hidden_states: false,
    no_grad: false,
};

fn moe(extra: Value) -> Value {
    let mut m = json!({ "experts": 4, "top_k": 2, "expert_ffn_mult": 2.0 });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        m[k] = v;
    }
    m
}

fn moe_model(moe_extra: Value, extra: Value) -> llmlab_gpt::Gpt {
    let mut c = json!({ "moe": moe(moe_extra) });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        c[k] = v;
    }
    tiny(c)
}

/// The routers that decode causally, with the other options they are tested with.
fn causal_variants() -> Vec<(Value, Value)> {
    vec![
        (json!({}), json!({})),
        (
            json!({ "router": "switch", "top_k": 1, "shared_experts": 1, "every": 2 }),
            json!({ "pos": "rope", "norm": "rms", "mlp": "swiglu" }),
        ),
        (
            json!({ "balance": "aux_free", "z_loss_coef": 0.001 }),
            json!({}),
        ),
    ]
}

fn batch() -> (Tensor, Tensor) {
    let rows: Vec<Vec<u32>> = (0..3)
        .map(|r| (0..17).map(|i| ((i * 7 + r * 5) % 48) as u32).collect())
        .collect();
    let x: Vec<&[u32]> = rows.iter().map(|r| &r[..16]).collect();
    let y: Vec<&[u32]> = rows.iter().map(|r| &r[1..]).collect();
    (ids(&x), ids(&y))
}

/// The state by name, widened to f64 (the bias and load are f32, the jitter count f64).
fn state_values(model: &dyn Model) -> Vec<(String, Vec<f64>)> {
    model
        .state()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F64).unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn bad_moe_configs_name_the_key() {
    let err = |moe: Value| {
        llmlab_gpt::new_gpt(&json!({ "moe": moe }), &Context::cpu())
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(json!({ "router": "switch", "top_k": 2 }));
    assert!(e.contains("moe.top_k") && e.contains("switch"), "{e}");
    let e = err(json!({ "experts": 2, "top_k": 3 }));
    assert!(
        e.contains("moe.top_k (3)") && e.contains("moe.experts (2)"),
        "{e}"
    );
    let e = err(json!({ "router": "hash" }));
    assert!(e.contains("hash") && e.contains("expert_choice"), "{e}");
    let e = err(json!({ "capacity_factor": 0 }));
    assert!(e.contains("moe.capacity_factor"), "{e}");
    let e = err(json!({ "expert": 8 }));
    assert!(e.contains("expert"), "{e}");
    let e = llmlab_gpt::new_gpt(
        &json!({ "moe": { "jitter": 0.1 }, "checkpoint_activations": true }),
        &Context::cpu(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("moe.jitter"), "{e}");
}

#[test]
fn every_two_puts_experts_in_every_second_block_and_counts_parameters() {
    let model = moe_model(json!({ "every": 2, "shared_experts": 1 }), json!({}));
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n == "transformer.h.0.mlp.c_fc.weight"));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("transformer.h.0.mlp.experts")));
    for e in 0..4 {
        let name = format!("transformer.h.1.mlp.experts.{e}.c_fc.weight");
        assert!(names.contains(&name), "{name}");
    }
    assert!(names.contains(&"transformer.h.1.mlp.shared.0.c_proj.weight".to_string()));
    assert!(names.contains(&"transformer.h.1.mlp.router.weight".to_string()));
    // State is not a parameter.
    assert!(!names.iter().any(|n| n.contains("selection_bias")));
    let state: Vec<String> = model.state().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        state,
        vec![
            "transformer.h.1.mlp.router.pending_load",
            "transformer.h.1.mlp.router.selection_bias"
        ]
    );
    // Each expert: c_fc 32x64 + 64, c_proj 64x32 + 32; five of them (4 routed + 1 shared).
    let dense = tiny(json!({}));
    let expert = 32 * 64 + 64 + 64 * 32 + 32;
    let dense_mlp = 32 * 128 + 128 + 128 * 32 + 32;
    assert_eq!(
        model.num_params(),
        dense.num_params() - dense_mlp + 5 * expert + 4 * 32
    );
}

#[test]
fn forward_returns_the_aux_loss_and_training_records_router_statistics() {
    let model = moe_model(json!({ "z_loss_coef": 0.001 }), json!({}));
    let (x, _) = batch();
    let out = model.forward(&x, &TRAIN).unwrap();
    let aux = out.aux_loss.expect("an MoE model returns an aux loss");
    let aux = aux.to_scalar::<f32>().unwrap();
    // Two blocks, each ≈ 0.01 · (≥ 1) + a small z term.
    assert!(aux > 0.015 && aux < 0.2, "{aux}");
    model.forward(&x, &TRAIN).unwrap();
    let metrics = model.take_train_metrics();
    let get = |k: &str| {
        metrics
            .iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("no metric {k}: {metrics:?}"))
            .1
    };
    for layer in 0..2 {
        let load: f64 = (0..4).map(|e| get(&format!("moe.h{layer}.load.{e}"))).sum();
        assert!((load - 1.0).abs() < 1e-9, "loads sum to {load}");
        let entropy = get(&format!("moe.h{layer}.entropy"));
        assert!(entropy > 0.0 && entropy <= (4f64).ln() + 1e-9, "{entropy}");
        assert!(get(&format!("moe.h{layer}.aux_loss")) > 0.0);
        assert!(get(&format!("moe.h{layer}.z_loss")) > 0.0);
        assert_eq!(get(&format!("moe.h{layer}.dropped")), 0.0);
    }
    assert!(get("moe.max_load") >= 1.0);
    // Taken: the next read is empty; evaluation passes record nothing.
    assert!(model.take_train_metrics().is_empty());
    model.forward(&x, &ForwardOptions::default()).unwrap();
    assert!(model.take_train_metrics().is_empty());

    let stats = model.router_stats(&x).unwrap();
    let layers = stats["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1]["load"].as_array().unwrap().len(), 4);
    assert!(stats["max_load"].as_f64().unwrap() >= 1.0);
    let err = tiny(json!({})).router_stats(&x).unwrap_err().to_string();
    assert!(err.contains("moe"), "{err}");
}

#[test]
fn switch_drops_over_capacity_in_training_only() {
    let model = moe_model(
        json!({ "router": "switch", "top_k": 1, "capacity_factor": 0.5, "experts": 4 }),
        json!({}),
    );
    let (x, _) = batch();
    model.forward(&x, &TRAIN).unwrap();
    let m = model.take_train_metrics();
    let dropped = m.iter().find(|(n, _)| n == "moe.dropped").unwrap().1;
    // Capacity 0.5 · 48 / 4 = 6 per expert: at least half the 48 tokens are dropped.
    assert!(dropped >= 0.5, "{dropped}");
    let eval = model.router_stats(&x).unwrap();
    assert_eq!(eval["dropped"].as_f64().unwrap(), 0.0);
}

#[test]
fn kv_cache_generation_and_beam_search_work_with_moe() {
    let seq: [u32; 12] = [1, 7, 3, 22, 9, 41, 0, 5, 5, 17, 30, 2];
    for (moe_extra, extra) in causal_variants() {
        let model = moe_model(moe_extra.clone(), extra);
        let full = model
            .forward(&ids(&[&seq]), &ForwardOptions::default())
            .unwrap()
            .logits;
        let mut cache = model.new_cache(1).unwrap();
        let mut pieces = Vec::new();
        for (start, len) in [(0, 5), (5, 1), (6, 3), (9, 1), (10, 2)] {
            let out = model
                .forward_cached(&ids(&[&seq[start..start + len]]), cache.as_mut())
                .unwrap();
            pieces.push(out.logits);
        }
        let diff = max_abs_diff(&full, &Tensor::cat(&pieces, 1).unwrap());
        assert!(diff < 1e-5, "{moe_extra}: cached logits differ by {diff}");

        let greedy = GenerateOptions {
            max_tokens: 8,
            temperature: 0.0,
            ..GenerateOptions::default()
        };
        let prompt = vec![3u32, 14, 15, 9];
        let cached = model
            .generate(std::slice::from_ref(&prompt), &greedy, &mut |_, _| true)
            .unwrap();
        let uncached = generate_uncached(&model, &prompt, 8).unwrap();
        assert_eq!(cached[0], uncached, "{moe_extra}");
        let beams = GenerateOptions {
            num_beams: 3,
            ..greedy.clone()
        };
        let a = model
            .generate(std::slice::from_ref(&prompt), &beams, &mut |_, _| true)
            .unwrap();
        let b = model
            .generate(std::slice::from_ref(&prompt), &beams, &mut |_, _| true)
            .unwrap();
        assert_eq!(a, b, "{moe_extra}: beam search is deterministic");
        assert_eq!(a[0].len(), 8);
    }
}

#[test]
fn expert_choice_trains_but_refuses_to_generate_saying_why() {
    let model = moe_model(json!({ "router": "expert_choice", "top_k": 1 }), json!({}));
    let (x, y) = batch();
    let out = model.forward(&x, &TRAIN).unwrap();
    let loss = cross_entropy(&out.logits, &y).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let err = model
        .generate(
            &[vec![1, 2, 3]],
            &GenerateOptions {
                max_tokens: 4,
                ..GenerateOptions::default()
            },
            &mut |_, _| true,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expert_choice") && err.contains("not causal"),
        "{err}"
    );
    let mut cache = model.new_cache(1).unwrap();
    let err = match model.forward_cached(&ids(&[&[1, 2]]), cache.as_mut()) {
        Ok(_) => panic!("expert choice decoded with a cache"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not causal"), "{err}");
}

#[test]
fn aux_free_bias_moves_against_the_load_and_is_saved_and_copied() {
    let model = moe_model(
        json!({ "balance": "aux_free", "bias_update_rate": 0.01 }),
        json!({}),
    );
    let (x, _) = batch();
    for _ in 0..4 {
        model.forward(&x, &TRAIN).unwrap();
    }
    let state = state_values(&model);
    let bias = &state
        .iter()
        .find(|(n, _)| n == "transformer.h.0.mlp.router.selection_bias")
        .unwrap()
        .1;
    assert!(bias.iter().any(|b| *b != 0.0), "bias moved: {bias:?}");
    // The most loaded expert's bias went down.
    let m = model.take_train_metrics();
    let load: Vec<f64> = (0..4)
        .map(|e| {
            m.iter()
                .find(|(n, _)| *n == format!("moe.h0.load.{e}"))
                .unwrap()
                .1
        })
        .collect();
    let busiest = (0..4).max_by(|&a, &b| load[a].total_cmp(&load[b])).unwrap();
    assert!(bias[busiest] < 0.0, "load {load:?}, bias {bias:?}");

    // Save and load keep weights and state.
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = llmlab_gpt::save_load::load(dir.path(), &Context::cpu()).unwrap();
    assert_eq!(state_values(&loaded), state);
    let a = model
        .forward(&x, &ForwardOptions::default())
        .unwrap()
        .logits;
    let b = loaded
        .forward(&x, &ForwardOptions::default())
        .unwrap()
        .logits;
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    // A frozen copy has its own state: training the original leaves it alone.
    let copy = model.frozen_copy().unwrap();
    assert_eq!(state_values(copy.as_ref()), state);
    for _ in 0..3 {
        model.forward(&x, &TRAIN).unwrap();
    }
    assert_ne!(state_values(&model), state);
    assert_eq!(state_values(copy.as_ref()), state);

    // set_state restores a saved value; a wrong name or shape is refused by name.
    let (name, value) = loaded.state().into_iter().next().unwrap();
    model.set_state(&name, &value).unwrap();
    let err = model.set_state("nope", &value).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

/// q8_0 through candle, as the quant plugin's schemes do.
struct Q8;
impl Quantizer for Q8 {
    fn name(&self) -> &str {
        "q8_0"
    }
    fn quantize(&self, _: &str, weight: &Tensor) -> llmlab_plugin_api::Result<QTensor> {
        Ok(QTensor::quantize(weight, GgmlDType::Q8_0)?)
    }
    fn fake_quantize(&self, weight: &Tensor) -> llmlab_plugin_api::Result<Tensor> {
        Ok(weight.clone())
    }
}

#[test]
fn experts_quantize_like_any_linear_and_round_trip_through_gguf() {
    let model = moe_model(json!({ "shared_experts": 1 }), json!({ "d_model": 64 }));
    let q = model.quantized(&Q8, &[]).unwrap();
    let gguf = tempfile::tempdir().unwrap();
    let path = gguf.path().join("moe.gguf");
    q.save(&path).unwrap();
    let names: Vec<String> = q.parameters().into_iter().map(|(n, _)| n).collect();
    // Expert linears left the dense parameters; the router stayed.
    assert!(!names
        .iter()
        .any(|n| n.contains(".experts.") && n.ends_with(".weight")));
    assert!(names.contains(&"transformer.h.0.mlp.router.weight".to_string()));
    let (x, _) = batch();
    let dense = model
        .forward(&x, &ForwardOptions::default())
        .unwrap()
        .logits;
    let quant = q.forward(&x, &ForwardOptions::default()).unwrap().logits;
    let diff = max_abs_diff(&dense, &quant);
    assert!(diff > 0.0 && diff < 0.05, "q8_0 logits differ by {diff}");

    let loaded = llmlab_gpt::gguf::load(&path, &Context::cpu()).unwrap();
    let again = loaded
        .forward(&x, &ForwardOptions::default())
        .unwrap()
        .logits;
    assert_eq!(max_abs_diff(&quant, &again), 0.0);
    let mut file = std::fs::File::open(&path).unwrap();
    let content =
        llmlab_plugin_api::candle::quantized::gguf_file::Content::read(&mut file).unwrap();
    let count = content.metadata[llmlab_gpt::gguf::EXPERT_COUNT_KEY]
        .to_u32()
        .unwrap();
    let used = content.metadata[llmlab_gpt::gguf::EXPERT_USED_KEY]
        .to_u32()
        .unwrap();
    assert_eq!((count, used), (4, 2));
    assert!(content
        .tensor_infos
        .contains_key("transformer.h.1.mlp.experts.3.c_fc.weight"));
}

/// Every parameter's gradient of `lm loss + aux` through `forward_backward`.
fn grads(model: &llmlab_gpt::Gpt, compute: DType) -> Vec<(String, Vec<f32>)> {
    let (x, y) = batch();
    let mut loss = |out: &llmlab_plugin_api::ForwardOutput| {
        let ce = cross_entropy(&out.logits.to_dtype(DType::F32)?, &y)?;
        Ok(match &out.aux_loss {
            Some(aux) => (ce + aux.to_dtype(DType::F32)?.affine(3.0, 0.0)?)?,
            None => ce,
        })
    };
    let store = model
        .forward_backward(&x, &TRAIN, compute, &mut loss)
        .unwrap();
    model
        .parameters()
        .into_iter()
        .map(|(n, v)| {
            let g = store
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {n}"));
            (n, g.flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect()
}

#[test]
fn activation_checkpointing_gives_the_same_gradients_aux_loss_included() {
    for (moe_extra, extra) in causal_variants() {
        let plain = moe_model(moe_extra.clone(), extra.clone());
        let mut with = extra.clone();
        with["checkpoint_activations"] = json!(true);
        let ckpt = moe_model(moe_extra.clone(), with);
        let (a, b) = (grads(&plain, DType::F32), grads(&ckpt, DType::F32));
        for ((name, ga), (_, gb)) in a.iter().zip(&b) {
            let scale = ga.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let worst = ga
                .iter()
                .zip(gb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                worst <= 1e-4 * scale,
                "{moe_extra}: {name} differs by {worst} (scale {scale})"
            );
        }
        // The router's gradient includes the aux loss: it is non-zero in both.
        let router = a
            .iter()
            .find(|(n, _)| n.ends_with("router.weight"))
            .unwrap();
        assert!(router.1.iter().any(|g| *g != 0.0));
        // The recomputation did not move the aux-free bias a second time.
        assert_eq!(state_values(&plain), state_values(&ckpt), "{moe_extra}");
    }
}

#[test]
fn mixed_precision_trains_moe_and_updates_the_master_state() {
    let model = moe_model(
        json!({ "balance": "aux_free", "bias_update_rate": 0.01 }),
        json!({}),
    );
    let before = state_values(&model);
    let g = grads(&model, DType::BF16);
    assert!(g.iter().all(|(_, v)| v.iter().all(|x| x.is_finite())));
    grads(&model, DType::BF16);
    assert_ne!(
        state_values(&model),
        before,
        "the bf16 pass updated the f32 state"
    );
}

#[test]
fn loss_falls_when_training_an_moe_model() {
    let model = moe_model(json!({ "shared_experts": 1 }), json!({}));
    let (x, y) = batch();
    let params = model.parameters();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let mut ce_value = 0.0;
        let mut loss = |out: &llmlab_plugin_api::ForwardOutput| {
            let ce = cross_entropy(&out.logits, &y)?;
            ce_value = ce.to_scalar::<f32>()?;
            Ok((ce + out.aux_loss.clone().unwrap())?)
        };
        let store = model
            .forward_backward(&x, &TRAIN, DType::F32, &mut loss)
            .unwrap();
        losses.push(ce_value);
        for (_, var) in &params {
            if let Some(g) = store.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - g.affine(0.5, 0.0).unwrap()).unwrap())
                    .unwrap();
            }
        }
    }
    assert!(
        losses[29] < 0.6 * losses[0],
        "loss {} -> {}",
        losses[0],
        losses[29]
    );
}

fn trainer(resume: Option<&std::path::Path>) -> TrainLoop<Windows> {
    common::training::trainer(resume, json!({}))
}

fn snapshot(model: &dyn Model) -> Vec<(String, Vec<f64>)> {
    model
        .parameters()
        .into_iter()
        .map(|(n, v)| {
            let t = v.as_tensor().flatten_all().unwrap();
            (n, t.to_dtype(DType::F64).unwrap().to_vec1().unwrap())
        })
        .chain(state_values(model))
        .collect()
}

/// Every router and balancing method: 8 steps straight, or 4 steps, a checkpoint, and 4 more
/// in a fresh trainer with a fresh model (as a script rebuilds it) resumed from it, give the same
/// losses, weights and routing state bit for bit: the aux-free bias, its pending load (the last
/// pass's load, applied at the next pass) and the router jitter's position are checkpointed.
#[test]
fn training_resumed_from_a_checkpoint_is_bit_exact_for_every_router() {
    for (moe_extra, extra) in [
        (
            json!({ "balance": "aux_free", "bias_update_rate": 0.05 }),
            json!({}),
        ),
        (
            json!({ "balance": "aux_free", "bias_update_rate": 0.05 }),
            json!({ "checkpoint_activations": true }),
        ),
        (
            json!({ "balance": "aux_free", "bias_update_rate": 0.05, "jitter": 0.1 }),
            json!({}),
        ),
        (
            json!({ "aux_loss_coef": 0.01, "z_loss_coef": 0.001, "jitter": 0.1 }),
            json!({}),
        ),
        (
            json!({ "router": "switch", "top_k": 1, "capacity_factor": 1.0, "shared_experts": 1 }),
            json!({}),
        ),
        (
            json!({ "router": "expert_choice", "balance": "none" }),
            json!({}),
        ),
    ] {
        let straight_dir = tempfile::tempdir().unwrap();
        let straight = moe_model(moe_extra.clone(), extra.clone());
        let expected = train_steps(&mut trainer(None), &straight, straight_dir.path(), 8);

        let dir = tempfile::tempdir().unwrap();
        let first = moe_model(moe_extra.clone(), extra.clone());
        let mut losses = train_steps(&mut trainer(None), &first, dir.path(), 4);
        let resumed = moe_model(moe_extra.clone(), extra.clone());
        if moe_extra["balance"] == "aux_free" || moe_extra.get("jitter").is_some() {
            // The state the checkpoint must carry is not the fresh model's.
            assert_ne!(state_values(&first), state_values(&resumed), "{moe_extra}");
        }
        losses.extend(train_steps(
            &mut trainer(Some(dir.path())),
            &resumed,
            dir.path(),
            4,
        ));
        assert_eq!(losses, expected, "{moe_extra} {extra}: losses differ");
        assert_eq!(
            snapshot(&resumed),
            snapshot(&straight),
            "{moe_extra} {extra}: weights or routing state differ"
        );
    }
}
