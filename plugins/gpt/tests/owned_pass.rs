//! The owned training pass (`pass: "owned"`, `src/owned_pass/`) against candle's autograd
//! (`pass: "autograd"`, the reference): the same loss and every parameter's gradient to float
//! noise at every covered option set, clean buffer reuse, other batch shapes, the same bits
//! from any thread, and a clear refusal where it does not apply.

mod common;

use std::collections::HashMap;

use common::{option_sets, owned_pass_sets, tiny};
use llmlab_gpt::Gpt;
use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{ForwardOptions, Model};
use llmlab_train::loss;

/// 40 positions: the attention's second query block (32 rows) is partial.
const SEQ: usize = 40;

fn batch(vocab: usize, rows: usize, seq: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = SplitMix64::new(seed);
    let tokens: Vec<u32> = (0..rows * (seq + 1))
        .map(|_| rng.below(vocab) as u32)
        .collect();
    let windows: Vec<&[u32]> = tokens.chunks(seq + 1).collect();
    let x: Vec<u32> = windows.iter().flat_map(|r| r[..seq].to_vec()).collect();
    let y: Vec<u32> = windows.iter().flat_map(|r| r[1..].to_vec()).collect();
    (
        Tensor::from_vec(x, (rows, seq), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (rows, seq), &Device::Cpu).unwrap(),
    )
}

fn model(extra: &Value, pass: &str) -> Gpt {
    let mut config = json!({ "ctx": 48, "pass": pass });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    tiny(config)
}

type Grads = HashMap<String, Vec<f32>>;

/// One `forward_backward` with the `lm` loss: the loss and every parameter's gradient.
fn step(model: &Gpt, x: &Tensor, y: &Tensor) -> llmlab_plugin_api::Result<(f32, Grads)> {
    step_with(model, x, false, &|out| loss::cross_entropy(&out.logits, y))
}

type Objective<'a> =
    dyn Fn(&llmlab_plugin_api::ForwardOutput) -> llmlab_plugin_api::Result<Tensor> + 'a;

/// One `forward_backward` with `objective` (asking for hidden states when `hidden`).
fn step_with(
    model: &Gpt,
    x: &Tensor,
    hidden: bool,
    objective: &Objective<'_>,
) -> llmlab_plugin_api::Result<(f32, Grads)> {
    let options = ForwardOptions {
        train: true,
        hidden_states: hidden,
        no_grad: false,
    };
    let mut value = 0f32;
    let grads = model.forward_backward(x, &options, DType::F32, &mut |out| {
        let l = objective(out)?;
        value = l.to_scalar::<f32>()?;
        Ok(l)
    })?;
    let mut by_name = HashMap::new();
    for (name, var) in model.parameters() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), var.dims(), "{name}");
        by_name.insert(name, g.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok((value, by_name))
}

/// Every gradient of `a` within `tol` of `b`'s, relative to the largest entry of `b`'s.
fn assert_close(what: &str, (la, a): &(f32, Grads), (lb, b): &(f32, Grads), tol: f32) {
    assert!(
        (la - lb).abs() <= 1e-5 * lb.abs(),
        "{what}: loss {la} vs {lb}"
    );
    assert_eq!(a.len(), b.len(), "{what}: parameter count");
    let mut worst_of_all = 0f32;
    for (name, g) in a {
        let r = &b[name];
        assert!(g.iter().all(|v| v.is_finite()), "{what}: {name} non-finite");
        assert!(r.iter().any(|v| *v != 0.0), "{what}: {name} all zero");
        let scale = r.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let worst = g
            .iter()
            .zip(r)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0f32, f32::max);
        assert!(
            worst < tol,
            "{what}: {name} differs by {worst:e} (relative)"
        );
        worst_of_all = worst_of_all.max(worst);
    }
    // Seen with --nocapture: how far inside the tolerance the paths agree.
    eprintln!("{what}: loss {la} vs {lb}, worst relative gradient difference {worst_of_all:e}");
}

/// Gradients agree to a few ulp of the largest entry (f32 sums in another order).
const TOL: f32 = 1e-4;

#[test]
fn owned_pass_matches_autograd_at_every_covered_option_set() {
    for extra in owned_pass_sets() {
        let owned = model(&extra, "owned");
        let reference = model(&extra, "autograd");
        let (x, y) = batch(owned.vocab_size(), 3, SEQ, 5);
        let a = step(&owned, &x, &y).unwrap_or_else(|e| panic!("{extra}: {e}"));
        let b = step(&reference, &x, &y).unwrap();
        assert_close(&extra.to_string(), &a, &b, TOL);
    }
}

/// The default `pass` ("auto") takes the owned pass for a covered config: its gradients are
/// the owned pass's bit for bit.
#[test]
fn auto_takes_the_owned_pass_where_it_applies() {
    let extra = json!({});
    let (x, y) = batch(48, 2, SEQ, 9);
    let owned = step(&model(&extra, "owned"), &x, &y).unwrap();
    let auto = step(&model(&extra, "auto"), &x, &y).unwrap();
    assert_eq!(owned.0.to_bits(), auto.0.to_bits());
    assert_eq!(owned.1, auto.1);
}

#[test]
fn explicit_owned_pass_refuses_what_it_does_not_cover_naming_why() {
    let cases = [
        (json!({ "dropout": 0.1 }), "dropout"),
        (json!({ "kernels": "reference" }), "reference"),
        (
            json!({ "checkpoint_activations": true }),
            "checkpoint_activations",
        ),
        (json!({ "moe": { "experts": 4, "top_k": 2 } }), "MoE"),
    ];
    for (extra, needle) in cases {
        let m = model(&extra, "owned");
        let (x, y) = batch(m.vocab_size(), 2, 8, 1);
        let err = match step(&m, &x, &y) {
            Ok(_) => panic!("{extra}: pass owned should refuse"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("pass \"owned\"") && err.contains(needle),
            "{extra}: {err}"
        );
        // The default falls back to autograd silently.
        let auto = model(&extra, "auto");
        step(&auto, &x, &y).unwrap_or_else(|e| panic!("{extra} auto: {e}"));
    }
}

/// A second step on the reused arena gives the bits of a fresh model's first step (nothing of
/// the first step leaks through the buffers), also after a step of another shape in between;
/// and the other shape matches autograd too.
#[test]
fn buffers_are_reused_cleanly_and_other_shapes_work() {
    for extra in [
        json!({}),
        json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu", "qk_norm": true, "tie_embeddings": false }),
    ] {
        let m = model(&extra, "owned");
        let (x1, y1) = batch(48, 3, SEQ, 2);
        let (x2, y2) = batch(48, 2, 17, 3);
        let first = step(&m, &x1, &y1).unwrap();
        let other = step(&m, &x2, &y2).unwrap();
        let again = step(&m, &x1, &y1).unwrap();
        assert_eq!(first.0.to_bits(), again.0.to_bits(), "{extra}");
        assert_eq!(first.1, again.1, "{extra}: reused arena");
        let fresh = step(&model(&extra, "owned"), &x1, &y1).unwrap();
        assert_eq!(first.1, fresh.1, "{extra}: fresh model");
        let reference = step(&model(&extra, "autograd"), &x2, &y2).unwrap();
        assert_close(&format!("{extra} 2×17"), &other, &reference, TOL);
    }
}

/// Inside the rayon pool (a row-parallel part) the kernels run single-threaded: the same rows
/// give the same bits on any thread, and agree with the whole-pool pass to float noise.
#[test]
fn passes_on_pool_threads_are_deterministic() {
    let extra = json!({ "pos": "rope" });
    let m = model(&extra, "owned");
    let (x, y) = batch(48, 2, SEQ, 4);
    let pool = llmlab_plugin_api::rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let runs: Vec<(f32, Grads)> = pool.install(|| {
        use llmlab_plugin_api::rayon::prelude::*;
        (0..4)
            .into_par_iter()
            .map(|_| step(&m, &x, &y).unwrap())
            .collect()
    });
    for run in &runs[1..] {
        assert_eq!(run.1, runs[0].1);
    }
    let outside = step(&m, &x, &y).unwrap();
    assert_close("pool vs outside", &runs[0], &outside, TOL);
}

/// A loss that also reads the hidden states (the final norm's output), and one that reads
/// only them: the same gradients as autograd.
#[test]
fn losses_on_hidden_states_match_autograd() {
    let extra = json!({ "pos": "rope", "norm": "rms" });
    let (x, y) = batch(48, 2, SEQ, 6);
    let both = |out: &llmlab_plugin_api::ForwardOutput| -> llmlab_plugin_api::Result<Tensor> {
        let h = out.hidden.as_ref().expect("hidden states asked for");
        let penalty = (h.sqr()?.mean_all()? * 0.5)?;
        Ok((loss::cross_entropy(&out.logits, &y)? + penalty)?)
    };
    let only = |out: &llmlab_plugin_api::ForwardOutput| -> llmlab_plugin_api::Result<Tensor> {
        let h = out.hidden.as_ref().expect("hidden states asked for");
        Ok(h.sqr()?.mean_all()?)
    };
    let objectives: [(&str, &Objective<'_>); 2] = [("logits + hidden", &both), ("hidden", &only)];
    for (what, objective) in objectives {
        let a = step_with(&model(&extra, "owned"), &x, true, objective).unwrap();
        let b = step_with(&model(&extra, "autograd"), &x, true, objective).unwrap();
        assert_close(what, &a, &b, TOL);
    }
}

/// The `lm` trainer's steps (row-parallel parts on a 3-thread pool) go through the owned pass:
/// an ineligible config with `pass: "owned"` stops the first step naming the pass, and 8 steps
/// of every option set give autograd's losses to float noise.
#[test]
fn the_lm_trainer_trains_through_the_owned_pass() {
    use common::training::{train_steps, trainer, Stream};
    use llmlab_plugin_api::{Context, TrainJob, Trainer};
    let in_three_threads = |f: &(dyn Fn() -> Vec<f64> + Sync)| {
        llmlab_plugin_api::rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(f)
    };
    let refused = tiny(json!({ "pass": "owned", "dropout": 0.1 }));
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context {
        run_dir: Some(dir.path().to_path_buf()),
        ..Context::cpu()
    };
    let err = trainer(None, json!({}))
        .step(&refused, &TrainJob::tokens(&Stream::new()), &ctx)
        .expect_err("pass owned with dropout is refused")
        .to_string();
    assert!(
        err.contains("pass \"owned\"") && err.contains("dropout"),
        "{err}"
    );
    for options in option_sets() {
        let losses = |pass: &str| {
            let mut config = options.clone();
            config["pass"] = json!(pass);
            let m = tiny(config);
            let dir = tempfile::tempdir().unwrap();
            in_three_threads(&|| train_steps(&mut trainer(None, json!({})), &m, dir.path(), 8))
        };
        let (owned, autograd) = (losses("owned"), losses("autograd"));
        for (a, b) in owned.iter().zip(&autograd) {
            assert!(
                (a - b).abs() < 1e-4 * b.abs(),
                "{options}: {owned:?} vs {autograd:?}"
            );
        }
    }
}
