//! `llmlab bench train`: training and forward throughput of the `gpt` model with the `lm`
//! trainer on exactly the shapes of the PyTorch reference (`shared/bench/torch_gpt.py`), printed as
//! one JSON line per config so the two can be compared side by side, with the median time of
//! each phase of a step (forward + loss, backward, AdamW) measured on the same model.
//!
//! A config is `tiny`, `small` or `gpt2`, optionally with the model's kernels after a colon:
//! `tiny:reference` runs the composed stock-op path instead of the fused kernels (issue 11), and
//! `tiny:moe` replaces every MLP by 8 experts, top-2, each half the MLP's width: the active
//! parameters per token of the dense model (issue 17; the peer is `bench/torch_gpt.py`'s
//! `tiny_moe`).
//!
//! The `lm` trainer splits each batch's rows over the cores (`row_parallel`, issue 25;
//! `llmlab_train::row_split`); `tiny:whole` turns that off, one pass over the whole batch with
//! multi-threaded kernels, for the A/B in one binary. The model trains through gpt's owned pass
//! (`pass: "auto"`, issue 25 item 2); `tiny:autograd` forces candle's autograd pass instead.
//! The phase timings below are always whole-batch passes through `Model::forward_backward` (the
//! configured pass).

use std::collections::BTreeMap;
use std::time::Instant;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{
    Context, Error, ForwardOptions, Instance, Kind, Result, Split, TokenData, TrainJob,
};
use llmlab_train::benchmark::{forward_seconds, reference_shape};
use llmlab_train::{loss, AdamW, AdamWSettings};

use crate::registry::Registry;

/// The reference shapes: n_layer, n_head, d_model, ctx, vocab, batch (`llmlab_train::benchmark`,
/// which the gpt plugin's `bench` example uses too).
pub fn shapes(config: &str) -> Option<[usize; 6]> {
    let s = reference_shape(config)?;
    Some([s.n_layer, s.n_head, s.d_model, s.ctx, s.vocab, s.batch])
}

/// Uniform random tokens, as the reference trains on.
struct RandomTokens {
    tokens: Vec<u32>,
    vocab_size: usize,
}

impl TokenData for RandomTokens {
    fn len(&self, _: Split) -> usize {
        self.tokens.len()
    }
    fn read(&self, _: Split, start: usize, out: &mut [u32]) -> Result<()> {
        let end = start + out.len();
        let slice = self
            .tokens
            .get(start..end)
            .ok_or_else(|| Error::Data(format!("window {start}..{end} out of range")))?;
        out.copy_from_slice(slice);
        Ok(())
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

pub(crate) fn create(
    registry: &Registry,
    kind: Kind,
    name: &str,
    config: Value,
    ctx: &Context,
) -> Result<Instance> {
    let entry = registry.find(kind, name).map_err(Error::msg)?;
    entry.factory.create(&config, ctx)
}

/// The GPT-2-layout `gpt` config of a reference shape (LayerNorm, learned positions, GELU,
/// biases, tied embeddings, no dropout: the PyTorch and transformers peers' model), with the
/// shape; an unknown name lists the known ones.
pub(crate) fn reference_gpt_config(shape_name: &str) -> Result<(Value, [usize; 6])> {
    let shape = shapes(shape_name).ok_or_else(|| {
        Error::msg(format!(
            "unknown bench config {shape_name:?}; known: tiny, small, gpt2 (train: optionally :fused, :reference, :moe, :whole or :autograd)"
        ))
    })?;
    let [n_layer, n_head, d_model, ctx_len, vocab, _] = shape;
    let config = json!({
        "vocab_size": vocab, "n_layer": n_layer, "n_head": n_head, "d_model": d_model, "ctx": ctx_len,
        "norm": "layer", "pos": "learned", "mlp": "gelu", "bias": true, "tie_embeddings": true, "dropout": 0.0,
    });
    Ok((config, shape))
}

/// The middle value of `times` (the upper one of an even count).
pub(crate) fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs one config: `warmup` untimed steps, then `steps` timed training steps and forward passes.
pub fn train(registry: &Registry, config: &str, steps: u64, ctx: &Context) -> Result<Value> {
    let (shape_name, variant) = config.split_once(':').unwrap_or((config, "fused"));
    let whole = variant == "whole";
    let autograd = variant == "autograd";
    let variant = if whole || autograd { "fused" } else { variant };
    let (kernels, moe) = match variant {
        "moe" => (
            "fused",
            Some(json!({ "experts": 8, "top_k": 2, "expert_ffn_mult": 2.0 })),
        ),
        kernels => (kernels, None),
    };
    let (mut model_config, [_, _, _, ctx_len, vocab, batch]) = reference_gpt_config(shape_name)?;
    model_config["kernels"] = json!(kernels);
    if autograd {
        model_config["pass"] = json!("autograd");
    }
    if let Some(moe) = moe {
        model_config["moe"] = moe;
    }
    let Instance::Model(model) = create(registry, Kind::Model, "gpt", model_config, ctx)? else {
        return Err(Error::msg("gpt did not make a model"));
    };
    let warmup = 3;
    let trainer_config = json!({
        "steps": warmup + steps, "batch_size": batch, "lr": 3e-4, "warmup": 0, "weight_decay": 0.0,
        "grad_clip": 0.0, "eval_every": 0, "checkpoint_every": 0, "row_parallel": !whole,
    });
    let Instance::Trainer(mut trainer) =
        create(registry, Kind::Trainer, "lm", trainer_config, ctx)?
    else {
        return Err(Error::msg("lm did not make a trainer"));
    };
    let mut rng = SplitMix64::new(0);
    let data = RandomTokens {
        tokens: (0..1 << 20).map(|_| rng.below(vocab) as u32).collect(),
        vocab_size: vocab,
    };
    let quiet = Context {
        run_dir: None,
        ..ctx.clone()
    };
    for _ in 0..warmup {
        trainer.step(model.as_ref(), &TrainJob::tokens(&data), &quiet)?;
    }
    let start = Instant::now();
    let mut last = BTreeMap::new();
    for _ in 0..steps {
        last = trainer.step(model.as_ref(), &TrainJob::tokens(&data), &quiet)?;
    }
    let train_s = start.elapsed().as_secs_f64() / steps as f64;

    let ids = Tensor::from_vec(
        data.tokens[..batch * ctx_len].to_vec(),
        (batch, ctx_len),
        model.device(),
    )?;
    let fwd_s = forward_seconds(model.as_ref(), &ids, 2, steps as usize)?;
    let targets = Tensor::from_vec(
        data.tokens[1..batch * ctx_len + 1].to_vec(),
        (batch, ctx_len),
        model.device(),
    )?;
    let [forward_ms, backward_ms, optimizer_ms] =
        phases(model.as_ref(), &ids, &targets, steps.max(3))?;
    let tokens = (batch * ctx_len) as f64;
    let report = json!({
        "peer": "llmlab",
        "device": format!("{:?}", ctx.device),
        "threads": llmlab_plugin_api::rayon::current_num_threads(),
        "config": config,
        "params": model.num_params(),
        "train_tok_s": (tokens / train_s * 10.0).round() / 10.0,
        "fwd_tok_s": (tokens / fwd_s * 10.0).round() / 10.0,
        "final_loss": last.get("loss").copied().unwrap_or(f64::NAN),
        "step_forward_ms": forward_ms,
        "step_backward_ms": backward_ms,
        "step_optimizer_ms": optimizer_ms,
    });
    Ok(report)
}

/// Median milliseconds of the three phases of a training step, timed separately over `steps`
/// steps after one warm-up: forward with the loss, backward (both through
/// `Model::forward_backward`, so the model's configured pass), and the fused AdamW update (the
/// same pieces the `lm` trainer calls, without its batching and bookkeeping).
fn phases(
    model: &dyn llmlab_plugin_api::Model,
    ids: &Tensor,
    targets: &Tensor,
    steps: u64,
) -> Result<[f64; 3]> {
    let params = model.parameters();
    // The `lm` trainer's AdamW betas, no weight decay, training mode.
    let mut optimizer = AdamW::new(AdamWSettings {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    let options = ForwardOptions {
        train: true,
        ..ForwardOptions::default()
    };
    let mut times: [Vec<f64>; 3] = Default::default();
    for step in 0..=steps {
        let t0 = Instant::now();
        // The forward phase ends when the loss is computed (inside the pass's loss callback),
        // the backward phase when the pass returns.
        let mut t1 = t0;
        let grads = model.forward_backward(
            ids,
            &options,
            params[0].1.dtype(),
            &mut |out: &llmlab_plugin_api::ForwardOutput| {
                let loss = loss::cross_entropy(&out.logits, targets)?;
                t1 = Instant::now();
                Ok(loss)
            },
        )?;
        let t2 = Instant::now();
        let grads: Vec<Option<Tensor>> = params
            .iter()
            .map(|(_, var)| grads.get(var.as_tensor()).cloned())
            .collect();
        optimizer.step(&params, &grads, 3e-4, 1.0)?;
        let t3 = Instant::now();
        if step > 0 {
            for (i, (a, b)) in [(t0, t1), (t1, t2), (t2, t3)].into_iter().enumerate() {
                times[i].push((b - a).as_secs_f64() * 1e3);
            }
        }
    }
    Ok(times.map(|t| (median(t) * 10.0).round() / 10.0))
}
