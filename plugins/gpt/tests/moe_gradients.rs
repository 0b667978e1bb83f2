//! MoE gradient checks: the grouped dispatch (gather per expert, one product chain per expert,
//! scatter-add) gives the same outputs and the same gradients as the dense reference (every
//! expert on every token, weights zeroed off the chosen ones), for every router, in f64 and f32;
//! and in f64 the router's analytic gradient matches central finite differences.

use std::collections::HashMap;

use llmlab_gpt::config::GptConfig;
use llmlab_gpt::moe::{Moe, Pass};
use llmlab_nn::params::{ParamStore, Source};
use llmlab_plugin_api::candle::{DType, Device, Tensor, Var};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde_json::{json, Value};

const D: usize = 16;

fn gpt_config(moe: Value, extra: Value) -> GptConfig {
    let mut c = json!({ "d_model": D, "n_head": 2, "vocab_size": 8, "ctx": 16, "seed": 1,
                        "kernels": "reference", "moe": moe });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        c[k] = v;
    }
    GptConfig::from_json("gpt", &c).unwrap()
}

struct Layer {
    moe: Moe,
    vars: Vec<(String, Var)>,
}

fn layer(config: &GptConfig, dtype: DType) -> Layer {
    let store = ParamStore::new(Source::Init { seed: 7 });
    let vb = store.builder(dtype, &Device::Cpu);
    let moe = Moe::new(config, config.moe.as_ref().unwrap(), vb.pp("mlp")).unwrap();
    // Larger router weights than the init's, so the routing is far from uniform.
    let vars = store.vars().unwrap();
    for (name, var) in &vars {
        if name.ends_with("router.weight") {
            var.set(&var.as_tensor().affine(40.0, 0.0).unwrap())
                .unwrap();
        }
    }
    Layer { moe, vars }
}

fn input(dtype: DType) -> (Var, Tensor) {
    let n = 2 * 9 * D;
    let x: Vec<f64> = (0..n).map(|i| ((i as f64) * 0.7311).sin()).collect();
    let r: Vec<f64> = (0..n).map(|i| ((i as f64) * 1.917).cos()).collect();
    let x = Tensor::from_vec(x, (2, 9, D), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let r = Tensor::from_vec(r, (2, 9, D), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (Var::from_tensor(&x).unwrap(), r)
}

/// `sum(y · r) + aux` and the gradients of it by name (and `"x"`), absent ones as zeros.
fn loss_and_grads(l: &Layer, x: &Var, r: &Tensor, dense: bool) -> (f64, HashMap<String, Vec<f64>>) {
    let (y, aux) = if dense {
        l.moe
            .forward_dense_reference(x.as_tensor(), Pass::Train)
            .unwrap()
    } else {
        l.moe.forward(x.as_tensor(), Pass::Train).unwrap()
    };
    let mut loss = (y * r)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    if let Some(a) = aux.loss {
        loss = (loss + a.to_dtype(DType::F64).unwrap()).unwrap();
    }
    let grads = loss.backward().unwrap();
    let mut out = HashMap::new();
    let mut all: Vec<(String, Tensor)> = l
        .vars
        .iter()
        .filter(|(n, _)| !llmlab_gpt::moe::is_state(n))
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    all.push(("x".into(), x.as_tensor().clone()));
    for (name, t) in all {
        let g = match grads.get(&t) {
            Some(g) => g.to_dtype(DType::F64).unwrap(),
            None => t.zeros_like().unwrap().to_dtype(DType::F64).unwrap(),
        };
        out.insert(name, g.flatten_all().unwrap().to_vec1().unwrap());
    }
    (loss.to_scalar::<f64>().unwrap(), out)
}

fn routers() -> Vec<Value> {
    vec![
        json!({ "experts": 4, "top_k": 2, "expert_ffn_mult": 2.0, "z_loss_coef": 0.01 }),
        json!({ "experts": 4, "top_k": 2, "normalize_top_k": false, "shared_experts": 1,
                "expert_ffn_mult": 2.0 }),
        json!({ "experts": 4, "top_k": 1, "router": "switch", "capacity_factor": 0.75,
                "expert_ffn_mult": 2.0 }),
        json!({ "experts": 4, "top_k": 1, "router": "expert_choice", "expert_ffn_mult": 2.0,
                "balance": "none" }),
        json!({ "experts": 3, "top_k": 2, "balance": "aux_free", "expert_ffn_mult": 2.0 }),
    ]
}

fn check(dtype: DType, tolerance: f64, extra: Value) {
    for moe in routers() {
        let config = gpt_config(moe.clone(), extra.clone());
        let l = layer(&config, dtype);
        let (x, r) = input(dtype);
        let (loss_g, grouped) = loss_and_grads(&l, &x, &r, false);
        let (loss_d, dense) = loss_and_grads(&l, &x, &r, true);
        assert!(
            (loss_g - loss_d).abs() <= tolerance * loss_d.abs().max(1.0),
            "{moe}: loss {loss_g} vs dense {loss_d}"
        );
        let router = &grouped["mlp.router.weight"];
        assert!(
            router.iter().any(|g| *g != 0.0),
            "{moe}: router has no gradient"
        );
        for (name, g) in &grouped {
            let d = &dense[name];
            let scale = d.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            let worst = g
                .iter()
                .zip(d)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= tolerance * scale,
                "{moe} {dtype:?}: gradient of {name} differs from the dense reference by {worst} (scale {scale})"
            );
        }
    }
}

#[test]
fn grouped_gradients_equal_the_dense_reference_in_f64() {
    check(DType::F64, 1e-10, json!({}));
    check(DType::F64, 1e-10, json!({ "mlp": "swiglu", "bias": false }));
}

#[test]
fn grouped_gradients_equal_the_dense_reference_in_f32() {
    check(DType::F32, 1e-4, json!({}));
    check(
        DType::F32,
        1e-4,
        json!({ "mlp": "swiglu", "kernels": "fused" }),
    );
}

#[test]
fn router_gradient_matches_finite_differences_in_f64() {
    for moe in routers() {
        let config = gpt_config(moe.clone(), json!({}));
        let l = layer(&config, DType::F64);
        let (x, r) = input(DType::F64);
        let (_, grads) = loss_and_grads(&l, &x, &r, false);
        let (_, router) = l
            .vars
            .iter()
            .find(|(n, _)| n.ends_with("router.weight"))
            .unwrap();
        let base: Vec<f64> = router.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        // Eval passes: no bias update, no statistics; selection unchanged for a tiny step.
        let eval_loss = |w: &[f64]| -> f64 {
            router
                .set(&Tensor::from_vec(w.to_vec(), router.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let (y, aux) = l.moe.forward(x.as_tensor(), Pass::Recompute).unwrap();
            let mut loss = (y * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            if let Some(a) = aux.loss {
                loss += a.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            }
            loss
        };
        for i in [0, 5, 17, 2 * D + 3] {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let numeric = (eval_loss(&plus) - eval_loss(&minus)) / (2.0 * h);
            let analytic = grads["mlp.router.weight"][i];
            assert!(
                (numeric - analytic).abs() <= 1e-5 * analytic.abs().max(1e-2),
                "{moe}: router weight {i}: analytic {analytic} vs numeric {numeric}"
            );
        }
        eval_loss(&base);
    }
}

#[test]
fn grouped_dispatch_runs_only_the_chosen_experts() {
    // One expert chosen for no token is not in the graph at all: no gradient, no compute.
    let config = gpt_config(
        json!({ "experts": 4, "top_k": 1, "router": "switch", "capacity_factor": 4.0,
                "expert_ffn_mult": 2.0 }),
        json!({}),
    );
    let l = layer(&config, DType::F64);
    let x = Var::from_tensor(&Tensor::ones((1, 3, D), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let (y, aux) = l.moe.forward(x.as_tensor(), Pass::Train).unwrap();
    // Identical tokens all pick the same expert.
    assert_eq!(aux.stats.load.iter().filter(|l| **l > 0.0).count(), 1);
    let grads = y.sum_all().unwrap().backward().unwrap();
    let with_grad = l
        .vars
        .iter()
        .filter(|(n, _)| n.contains(".experts.") && n.ends_with("c_fc.weight"))
        .filter(|(_, v)| grads.get(v.as_tensor()).is_some())
        .count();
    assert_eq!(with_grad, 1, "only the chosen expert is computed");
}
