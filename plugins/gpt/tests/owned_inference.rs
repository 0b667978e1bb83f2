//! The owned inference pass (`Model::forward` without gradients, `src/owned_pass/inference.rs`)
//! against candle's graph (`Gpt::run`, what `pass: "autograd"` keeps): the same logits to float
//! noise at every covered option set, the same bits on every threading and on reused buffers,
//! other shapes, hidden states, and candle's path wherever the owned pass does not apply.

mod common;

use common::{owned_pass_sets, tiny};
use llmlab_gpt::owned_pass::inference::{self, Threading};
use llmlab_gpt::Gpt;
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::rayon::ThreadPoolBuilder;
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{ForwardOptions, Model};

/// 40 positions: the attention's second query block (32 rows) is partial.
const SEQ: usize = 40;

/// Logits agree within this fraction of their largest magnitude (f32 sums in another order;
/// seen: 0, the same kernels in the same order, printed with --nocapture).
const TOL: f32 = 1e-5;

fn ids(vocab: usize, rows: usize, seq: usize, seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let tokens: Vec<u32> = (0..rows * seq).map(|_| rng.below(vocab) as u32).collect();
    Tensor::from_vec(tokens, (rows, seq), &Device::Cpu).unwrap()
}

fn model(extra: &Value, pass: &str) -> Gpt {
    let mut config = json!({ "ctx": 48, "pass": pass });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    tiny(config)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `a` within `TOL` of `b` relative to `b`'s largest entry; returns the worst difference.
fn assert_close(what: &str, a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let (a, b) = (values(a), values(b));
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite");
    let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0f32, f32::max);
    assert!(worst < TOL, "{what}: differs by {worst:e} (relative)");
    worst
}

/// The owned pass's option sets plus dropout, which inference ignores.
fn covered_sets() -> Vec<Value> {
    let mut sets = owned_pass_sets();
    sets.push(json!({ "dropout": 0.1 }));
    sets
}

fn candle_forward(m: &Gpt, x: &Tensor, hidden: bool) -> llmlab_plugin_api::ForwardOutput {
    let options = ForwardOptions {
        hidden_states: hidden,
        ..ForwardOptions::default()
    };
    m.run(x, None, &options).unwrap()
}

#[test]
fn owned_inference_matches_candle_at_every_covered_option_set() {
    let mut worst = 0f32;
    for extra in covered_sets() {
        let m = model(&extra, "auto");
        let x = ids(m.vocab_size(), 3, SEQ, 5);
        let owned = m.forward(&x, &ForwardOptions::inference()).unwrap();
        // `forward` took the owned pass: its bits are the inference pass's.
        assert!(
            !m.inference_arenas().is_empty(),
            "{extra}: owned pass not taken"
        );
        let direct = inference::forward(&m, &x, false, Threading::WholeBatch).unwrap();
        assert!(values(&owned.logits) == values(&direct.logits), "{extra}");
        let reference = candle_forward(&m, &x, false);
        worst = worst.max(assert_close(
            &extra.to_string(),
            &owned.logits,
            &reference.logits,
        ));
        assert!(owned.hidden.is_none() && owned.aux_loss.is_none());
    }
    eprintln!("worst relative logit difference: {worst:e}");
}

#[test]
fn hidden_states_match_candle() {
    for extra in [
        json!({}),
        json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu" }),
    ] {
        let m = model(&extra, "auto");
        let x = ids(m.vocab_size(), 2, SEQ, 7);
        let options = ForwardOptions {
            hidden_states: true,
            ..ForwardOptions::inference()
        };
        let owned = m.forward(&x, &options).unwrap();
        let reference = candle_forward(&m, &x, true);
        let (h, r) = (owned.hidden.unwrap(), reference.hidden.unwrap());
        assert_eq!(h.dims(), &[2, SEQ, 32]);
        assert_close(&format!("{extra} hidden"), &h, &r);
        assert_close(&format!("{extra} logits"), &owned.logits, &reference.logits);
    }
}

/// `pass: "autograd"`, training-mode calls and configs the owned pass does not cover take
/// candle's graph: `forward` gives `Gpt::run`'s bits. So does a pass without `no_grad` (it must
/// stay differentiable), below the table.
#[test]
fn candle_path_where_the_owned_pass_does_not_apply() {
    let cases = [
        (json!({}), "autograd", false),
        (json!({}), "auto", true),
        (json!({ "kernels": "reference" }), "auto", false),
        (
            json!({ "moe": { "experts": 4, "top_k": 2 } }),
            "auto",
            false,
        ),
        (json!({ "kernels": "reference" }), "owned", false),
    ];
    for (extra, pass, train) in cases {
        let m = model(&extra, pass);
        let x = ids(m.vocab_size(), 2, 9, 1);
        let options = ForwardOptions {
            train,
            ..ForwardOptions::inference()
        };
        let got = m.forward(&x, &options).unwrap();
        let reference = m.run(&x, None, &options).unwrap();
        assert!(
            values(&got.logits) == values(&reference.logits),
            "{extra} {pass} train={train}: not candle's bits"
        );
        // The owned pass never ran: it took no buffers.
        assert!(
            m.inference_arenas().is_empty(),
            "{extra} {pass} train={train}"
        );
    }
    let m = model(&json!({}), "auto");
    let x = ids(m.vocab_size(), 2, 9, 1);
    let got = m.forward(&x, &ForwardOptions::default()).unwrap();
    assert!(
        got.logits.track_op(),
        "a pass without no_grad is differentiable"
    );
    assert!(
        m.inference_arenas().is_empty(),
        "owned pass taken without no_grad"
    );
}

/// Row split (several part counts), whole batch and inline give the same bits; a second call
/// on the reused arenas (after another shape in between) repeats them; other shapes match
/// candle.
#[test]
fn threadings_and_reused_buffers_give_the_same_bits() {
    for extra in [
        json!({}),
        json!({ "norm": "rms", "pos": "rope", "mlp": "swiglu", "qk_norm": true, "tie_embeddings": false }),
    ] {
        let m = model(&extra, "auto");
        let x = ids(48, 5, SEQ, 2);
        let first = values(
            &inference::forward(&m, &x, true, Threading::Inline)
                .unwrap()
                .logits,
        );
        for threads in [2, 3, 8] {
            let pool = ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for threading in [Threading::RowSplit, Threading::WholeBatch] {
                let out = pool.install(|| inference::forward(&m, &x, true, threading).unwrap());
                assert!(
                    values(&out.logits) == first,
                    "{extra} {threads} {threading:?}"
                );
            }
            // From inside the pool `forward` runs inline: the same bits again.
            let out = pool.install(|| m.forward(&x, &ForwardOptions::inference()).unwrap());
            assert!(values(&out.logits) == first, "{extra} {threads} in pool");
        }
        assert!(!m.inference_arenas().is_empty());
        let y = ids(48, 2, 17, 3);
        let other = m.forward(&y, &ForwardOptions::inference()).unwrap();
        assert_close(
            &format!("{extra} 2×17"),
            &other.logits,
            &candle_forward(&m, &y, false).logits,
        );
        let one = ids(48, 1, 1, 4);
        let single = m.forward(&one, &ForwardOptions::inference()).unwrap();
        assert_eq!(single.logits.dims(), &[1, 1, 48]);
        assert_close(
            &format!("{extra} 1×1"),
            &single.logits,
            &candle_forward(&m, &one, false).logits,
        );
        let again = m.forward(&x, &ForwardOptions::inference()).unwrap();
        assert!(values(&again.logits) == first, "{extra}: reused arena");
        let fresh = model(&extra, "auto")
            .forward(&x, &ForwardOptions::inference())
            .unwrap();
        assert!(values(&fresh.logits) == first, "{extra}: fresh model");
    }
}

#[test]
fn out_of_vocabulary_ids_and_long_sequences_are_refused() {
    let m = model(&json!({}), "auto");
    let bad = Tensor::from_vec(vec![0u32, 48], (1, 2), &Device::Cpu).unwrap();
    let err = m
        .forward(&bad, &ForwardOptions::inference())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("48"), "{err}");
    let long = ids(48, 1, 49, 1);
    let err = m
        .forward(&long, &ForwardOptions::inference())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ctx"), "{err}");
}
