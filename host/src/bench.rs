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
//!
//! `--precision bf16|f16` is the `lm` trainer's `precision` (f32 master weights, the passes in
//! the narrow dtype: docs/cuda.md "Mixed precision"), the peer's `--precision` (autocast). On a
//! GPU every timer waits for the device first (`Device::synchronize`; CUDA runs asynchronously,
//! so a timer read without it measures kernel launches), and the line adds the step time and the
//! model FLOPs utilisation ([`mfu`]) against `--peak-tflops`.

use std::collections::BTreeMap;
use std::time::Instant;

use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{
    Context, Error, ForwardOptions, Instance, Kind, Result, Split, TokenData, TrainJob,
};
use llmlab_train::benchmark::{forward_seconds, reference_shape};
use llmlab_train::precision::Precision;
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

/// What one `bench train` run measures besides the config.
#[derive(Debug, Clone, Copy)]
pub struct TrainBench {
    /// Timed steps (after 3 warm-up steps).
    pub steps: u64,
    /// The `lm` trainer's `precision`: the dtype of the forward and backward passes.
    pub precision: Precision,
    /// The device's dense bf16 peak in TFLOP/s, the denominator of [`mfu`] (GPU only).
    pub peak_tflops: f64,
}

/// H100/H200 SXM dense bf16 peak (989.4 TFLOP/s; NVIDIA's "with sparsity" figure is twice it),
/// the default denominator of the MFU; the peer script uses the same.
pub const H100_BF16_PEAK_TFLOPS: f64 = 989.0;

/// `f32`, `bf16` or `f16` (the `lm` trainer's names); anything else names the option.
pub fn parse_precision(name: &str) -> Result<Precision> {
    match name.trim() {
        "f32" => Ok(Precision::F32),
        "bf16" => Ok(Precision::Bf16),
        "f16" => Ok(Precision::F16),
        other => Err(Error::msg(format!(
            "bench train: --precision {other:?}: expected f32, bf16 or f16"
        ))),
    }
}

/// The name `parse_precision` reads (and the trainer's config takes).
pub fn precision_name(precision: Precision) -> &'static str {
    match precision {
        Precision::F32 => "f32",
        Precision::Bf16 => "bf16",
        Precision::F16 => "f16",
    }
}

/// Training FLOPs per token as the issue (and nanoGPT, and PaLM appendix B without its attention
/// term) count them: 6·N, N being every parameter the model has (tied embeddings once, position
/// embeddings and norms included: `Model::num_params`, the same count as the peer's
/// `sum(p.numel() for p in m.parameters())`). 2·N multiply-adds forward, twice that backward;
/// the lookup of the (tied) embedding is no matmul, but the logits' matmul uses the same matrix,
/// so counting it once is right; the position table (0.6% of GPT-2 small) is a slight overcount.
pub fn flops_per_token(params: usize) -> f64 {
    6.0 * params as f64
}

/// PaLM's attention term per token, 12·n_layer·d_model·ctx (QKᵀ and AV forward and backward over
/// the full square, though a causal kernel may skip half): added to [`flops_per_token`] in
/// `mfu_attn`.
pub fn attention_flops_per_token(n_layer: usize, d_model: usize, ctx: usize) -> f64 {
    12.0 * (n_layer * d_model * ctx) as f64
}

/// Model FLOPs utilisation: `flops_per_token` · tokens/s over the peak (a fraction, not %).
pub fn mfu(flops_per_token: f64, tokens_per_s: f64, peak_tflops: f64) -> f64 {
    flops_per_token * tokens_per_s / (peak_tflops * 1e12)
}

/// Waits for the device's queued work, so a timer read after it covers that work (CPU: no-op).
fn sync(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// Runs one config: `warmup` untimed steps, then `steps` timed training steps and forward passes.
pub fn train(
    registry: &Registry,
    config: &str,
    bench: &TrainBench,
    ctx: &Context,
) -> Result<Value> {
    let steps = bench.steps.max(1);
    if !(bench.peak_tflops.is_finite() && bench.peak_tflops > 0.0) {
        return Err(Error::msg(format!(
            "bench train: --peak-tflops {}: expected a positive number of TFLOP/s",
            bench.peak_tflops
        )));
    }
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
    let (mut model_config, [n_layer, _, d_model, ctx_len, vocab, batch]) =
        reference_gpt_config(shape_name)?;
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
        "precision": precision_name(bench.precision),
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
    let device = model.device().clone();
    for _ in 0..warmup {
        trainer.step(model.as_ref(), &TrainJob::tokens(&data), &quiet)?;
    }
    sync(&device)?;
    let start = Instant::now();
    let mut last = BTreeMap::new();
    for _ in 0..steps {
        last = trainer.step(model.as_ref(), &TrainJob::tokens(&data), &quiet)?;
    }
    sync(&device)?;
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
    let [forward_ms, backward_ms, optimizer_ms] = phases(
        model.as_ref(),
        &ids,
        &targets,
        bench.precision,
        steps.max(3),
    )?;
    let tokens = (batch * ctx_len) as f64;
    let params = model.num_params();
    let mut report = json!({
        "peer": "llmlab",
        "device": format!("{:?}", ctx.device),
        "threads": llmlab_plugin_api::rayon::current_num_threads(),
        "config": config,
        "params": params,
        "precision": precision_name(bench.precision),
        "train_tok_s": (tokens / train_s * 10.0).round() / 10.0,
        "fwd_tok_s": (tokens / fwd_s * 10.0).round() / 10.0,
        "final_loss": last.get("loss").copied().unwrap_or(f64::NAN),
        "step_forward_ms": forward_ms,
        "step_backward_ms": backward_ms,
        "step_optimizer_ms": optimizer_ms,
    });
    if device.is_cuda() {
        let tok_s = tokens / train_s;
        let flops = flops_per_token(params);
        let attention = attention_flops_per_token(n_layer, d_model, ctx_len);
        let round4 = |x: f64| (x * 1e4).round() / 1e4;
        report["step_ms"] = json!((train_s * 1e5).round() / 100.0);
        report["peak_tflops"] = json!(bench.peak_tflops);
        report["mfu"] = json!(round4(mfu(flops, tok_s, bench.peak_tflops)));
        report["mfu_attn"] = json!(round4(mfu(flops + attention, tok_s, bench.peak_tflops)));
    }
    Ok(report)
}

/// Median milliseconds of the three phases of a training step, timed separately over `steps`
/// steps after one warm-up: forward with the loss, backward (both through
/// `Model::forward_backward` in `precision`'s dtype, so the model's configured pass), and the
/// fused AdamW update (the same pieces the `lm` trainer calls, without its batching,
/// bookkeeping and f16 loss scale). On a GPU the device is synchronised at each boundary.
fn phases(
    model: &dyn llmlab_plugin_api::Model,
    ids: &Tensor,
    targets: &Tensor,
    precision: Precision,
    steps: u64,
) -> Result<[f64; 3]> {
    let device = ids.device();
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
        sync(device)?;
        let t0 = Instant::now();
        // The forward phase ends when the loss is computed (inside the pass's loss callback),
        // the backward phase when the pass returns.
        let mut t1 = t0;
        // As the trainer does: the loss in f32 whatever the pass's dtype.
        let grads = model.forward_backward(
            ids,
            &options,
            precision.compute_dtype(),
            &mut |out: &llmlab_plugin_api::ForwardOutput| {
                let loss = loss::cross_entropy(&out.logits.to_dtype(DType::F32)?, targets)?;
                sync(device)?;
                t1 = Instant::now();
                Ok(loss)
            },
        )?;
        sync(device)?;
        let t2 = Instant::now();
        let grads: Vec<Option<Tensor>> = params
            .iter()
            .map(|(_, var)| grads.get(var.as_tensor()).cloned())
            .collect();
        optimizer.step(&params, &grads, 3e-4, 1.0)?;
        sync(device)?;
        let t3 = Instant::now();
        if step > 0 {
            for (i, (a, b)) in [(t0, t1), (t1, t2), (t2, t3)].into_iter().enumerate() {
                times[i].push((b - a).as_secs_f64() * 1e3);
            }
        }
    }
    Ok(times.map(|t| (median(t) * 10.0).round() / 10.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names_round_trip_and_others_name_the_option() {
        for name in ["f32", "bf16", "f16"] {
            assert_eq!(precision_name(parse_precision(name).unwrap()), name);
        }
        let err = parse_precision("fp8").unwrap_err().to_string();
        assert!(err.contains("--precision \"fp8\""), "{err}");
    }

    #[test]
    fn mfu_is_six_n_tokens_over_the_peak() {
        // GPT-2 small as both peers count it (vocab 50304, tied): 124,475,904 parameters.
        let n = 50304 * 768 + 1024 * 768 + 12 * (12 * 768 * 768 + 13 * 768) + 2 * 768;
        assert_eq!(n, 124_475_904);
        // 6·N ≈ 0.75 GFLOP per token: 159,000 tokens/s fill a 989 TFLOP/s peak to 12 %.
        let flops = flops_per_token(n);
        assert!((flops - 746_855_424.0).abs() < 1.0);
        let u = mfu(flops, 159_000.0, H100_BF16_PEAK_TFLOPS);
        assert!((u - 0.1200).abs() < 1e-3, "{u}");
        // The attention term at ctx 1024 adds 15 %.
        let attn = attention_flops_per_token(12, 768, 1024);
        assert!((attn / flops - 0.1516).abs() < 1e-3, "{}", attn / flops);
    }
}
