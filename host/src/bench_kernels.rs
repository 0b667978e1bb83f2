//! `llmlab bench kernels`: every fused training op against its composed reference on the
//! session's device — on a GPU (`--device cuda`) the CUDA kernels of issue 27, on the CPU the
//! fused CPU kernels. For each op and dtype: the forward output and every input's gradient of
//! `Σ out ⊙ dy` compared with the reference computed in f32 from the same (rounded) inputs, and
//! the median time of forward + backward of both paths. One JSON line per op and dtype; the
//! command fails when any comparison is outside its tolerance, so it is the GPU-side kernel
//! check a GPU session runs first (docs/cuda.md).

use std::time::Instant;

use llmlab_nn::ops;
use llmlab_plugin_api::candle::{self, DType, Device, Tensor, Var};
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Map, Value};
use llmlab_plugin_api::{Error, Result};
use llmlab_train::{AdamW, AdamWSettings};

/// The shapes of one run.
#[derive(Debug, Clone, Copy)]
pub struct Shapes {
    /// Rows of the row ops (batch × sequence).
    pub rows: usize,
    pub d: usize,
    pub vocab: usize,
    /// Attention: batch, heads, sequence, head width.
    pub attention: [usize; 4],
}

impl Shapes {
    /// `small` (seconds on a CPU) or `gpt2` (GPT-2 small's training step: 8 × 1024 tokens).
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "small" => Ok(Shapes {
                rows: 512,
                d: 256,
                vocab: 4096,
                attention: [2, 4, 128, 64],
            }),
            "gpt2" => Ok(Shapes {
                rows: 8192,
                d: 768,
                vocab: 50257,
                attention: [8, 12, 1024, 64],
            }),
            other => Err(Error::msg(format!(
                "bench kernels: --size {other:?}: expected small or gpt2"
            ))),
        }
    }
}

type OpFn = fn(&[Tensor]) -> candle::Result<Tensor>;

/// One op: its inputs' shapes (the leading `differentiable` ones get gradients), and both paths.
struct Case {
    name: &'static str,
    shapes: Vec<Vec<usize>>,
    differentiable: usize,
    /// The input that holds token ids below the vocabulary (u32) rather than values.
    ids: Option<usize>,
    fused: OpFn,
    reference: OpFn,
}

fn cases(s: Shapes) -> Vec<Case> {
    let [b, h, t, hd] = s.attention;
    let row = vec![s.rows, s.d];
    let vec_d = vec![s.d];
    let wide = vec![s.rows, 4 * s.d];
    let head = vec![b, h, t, hd];
    let table = vec![t, hd / 2];
    vec![
        Case {
            name: "layer_norm",
            shapes: vec![row.clone(), vec_d.clone(), vec_d.clone()],
            differentiable: 3,
            ids: None,
            fused: |x| ops::layer_norm(&x[0], &x[1], Some(&x[2]), 1e-5),
            reference: |x| ops::layer_norm::layer_norm_reference(&x[0], &x[1], Some(&x[2]), 1e-5),
        },
        Case {
            name: "rms_norm",
            shapes: vec![row.clone(), vec_d],
            differentiable: 2,
            ids: None,
            fused: |x| ops::rms_norm(&x[0], &x[1], 1e-5),
            reference: |x| ops::rms_norm::rms_norm_reference(&x[0], &x[1], 1e-5),
        },
        Case {
            name: "softmax",
            shapes: vec![row],
            differentiable: 1,
            ids: None,
            fused: |x| ops::softmax_last_dim(&x[0]),
            reference: |x| ops::softmax::softmax_reference(&x[0]),
        },
        Case {
            name: "gelu",
            shapes: vec![wide.clone()],
            differentiable: 1,
            ids: None,
            fused: |x| ops::gelu(&x[0]),
            reference: |x| ops::gelu::gelu_reference(&x[0]),
        },
        Case {
            name: "swiglu",
            shapes: vec![wide.clone(), wide],
            differentiable: 2,
            ids: None,
            fused: |x| ops::swiglu(&x[0], &x[1]),
            reference: |x| ops::swiglu::swiglu_reference(&x[0], &x[1]),
        },
        Case {
            name: "rope",
            shapes: vec![head.clone(), table.clone(), table],
            differentiable: 1,
            ids: None,
            fused: |x| ops::rope(&x[0], &x[1], &x[2]),
            reference: |x| ops::rope::rope_reference(&x[0], &x[1], &x[2]),
        },
        Case {
            name: "causal_attention",
            shapes: vec![head.clone(), head.clone(), head],
            differentiable: 3,
            ids: None,
            fused: |x| ops::causal_attention(&x[0], &x[1], &x[2]),
            reference: |x| ops::attention::causal_attention_reference(&x[0], &x[1], &x[2]),
        },
        Case {
            name: "token_nll",
            shapes: vec![vec![s.rows, s.vocab], vec![s.rows]],
            differentiable: 1,
            ids: Some(1),
            fused: |x| ops::token_nll(&x[0], &x[1]),
            reference: |x| ops::token_nll_reference(&x[0], &x[1]),
        },
    ]
}

/// Largest difference relative to the reference's largest magnitude.
fn relative_error(got: &Tensor, want: &Tensor) -> Result<f32> {
    let got: Vec<f32> = got
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    let want: Vec<f32> = want
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| {
        if a.is_nan() || b.is_nan() {
            f32::INFINITY
        } else {
            m.max((a - b).abs())
        }
    });
    Ok(diff / scale)
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 3e-2,
        DType::F16 => 5e-3,
        _ => 1e-3,
    }
}

/// Deterministic inputs in f32 on the CPU: values in [-2, 2], targets below the vocabulary.
fn inputs(case: &Case, vocab: usize, rng: &mut SplitMix64) -> Result<Vec<Tensor>> {
    case.shapes
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: usize = shape.iter().product();
            if case.ids == Some(i) {
                let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
                return Ok(Tensor::from_vec(ids, shape.as_slice(), &Device::Cpu)?);
            }
            let v: Vec<f32> = (0..n)
                .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                .map(|v| 2.0 * v)
                .collect();
            Ok(Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?)
        })
        .collect()
}

/// The op's output and the gradients of its differentiable inputs for `Σ out ⊙ dy` (`dy` f32).
fn forward_backward(
    f: OpFn,
    xs: &[Tensor],
    differentiable: usize,
    dy: &Tensor,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = xs[..differentiable]
        .iter()
        .map(Var::from_tensor)
        .collect::<candle::Result<_>>()?;
    let mut all: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    all.extend(xs[differentiable..].iter().cloned());
    let out = f(&all)?;
    let loss = (out.to_dtype(DType::F32)? * dy)?.sum_all()?;
    let grads = loss.backward()?;
    let gs = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .cloned()
                .ok_or_else(|| Error::msg("an input got no gradient"))
        })
        .collect::<Result<_>>()?;
    Ok((out, gs))
}

fn median_ms(reps: usize, device: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up: kernels load, buffers allocate
    device.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Checks and times every op in every dtype; returns the JSON lines and whether all passed.
pub fn run(
    device: &Device,
    shapes: Shapes,
    dtypes: &[DType],
    reps: usize,
) -> Result<(Vec<Value>, bool)> {
    let mut lines = Vec::new();
    let mut all_ok = true;
    for case in cases(shapes) {
        for &dtype in dtypes {
            let mut rng = SplitMix64::new(27);
            let host = inputs(&case, shapes.vocab, &mut rng)?;
            let on_device = |t: &Tensor, d: DType| -> Result<Tensor> {
                let t = t.to_device(device)?;
                Ok(if t.dtype() == DType::F32 {
                    t.to_dtype(d)?
                } else {
                    t
                })
            };
            let xs: Vec<Tensor> = host
                .iter()
                .map(|t| on_device(t, dtype))
                .collect::<Result<_>>()?;
            // The reference reads exactly the kernel's (rounded) inputs, in f32.
            let xs32: Vec<Tensor> = xs
                .iter()
                .map(|t| {
                    if t.dtype() == DType::U32 {
                        Ok(t.clone())
                    } else {
                        Ok(t.to_dtype(DType::F32)?)
                    }
                })
                .collect::<Result<_>>()?;
            let out_shape = (case.fused)(&xs)?.shape().clone();
            let dy = Tensor::rand(-1f32, 1f32, out_shape, device)?;
            let (out, grads) = forward_backward(case.fused, &xs, case.differentiable, &dy)?;
            let (ref_out, ref_grads) =
                forward_backward(case.reference, &xs32, case.differentiable, &dy)?;
            let mut errors = vec![("output".to_string(), relative_error(&out, &ref_out)?)];
            for (i, (g, r)) in grads.iter().zip(&ref_grads).enumerate() {
                errors.push((format!("grad{i}"), relative_error(g, r)?));
            }
            let tol = tolerance(dtype);
            let ok = errors.iter().all(|(_, e)| *e <= tol);
            // Without a kernel for this dtype here (bf16 on the CPU) both paths are the composed
            // one: the errors are the dtype's own, reported but not a kernel failure.
            let kernel = ops::kernel_path(case.name, &xs[0]);
            all_ok &= ok || !kernel;
            let fused_ms = median_ms(reps, device, || {
                forward_backward(case.fused, &xs, case.differentiable, &dy).map(drop)
            })?;
            let composed_ms = median_ms(reps, device, || {
                forward_backward(case.reference, &xs, case.differentiable, &dy).map(drop)
            })?;
            let errors: Map<String, Value> =
                errors.into_iter().map(|(k, e)| (k, json!(e))).collect();
            lines.push(json!({
                "op": case.name, "dtype": format!("{dtype:?}").to_lowercase(), "device": device_name(device),
                "kernel": kernel, "ok": ok, "tolerance": tol, "relative_error": errors,
                "fused_ms": fused_ms, "composed_ms": composed_ms, "speedup": composed_ms / fused_ms,
            }));
        }
    }
    let (line, ok) = adamw(device, shapes, reps)?;
    all_ok &= ok;
    lines.push(line);
    Ok((lines, all_ok))
}

fn device_name(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

/// AdamW's fused update (the CUDA kernel on a GPU, the CPU pass on the CPU) against the composed
/// tensor-op update over 3 steps on a (d, 4d) f32 parameter.
fn adamw(device: &Device, shapes: Shapes, reps: usize) -> Result<(Value, bool)> {
    let mut rng = SplitMix64::new(28);
    let shape = [shapes.d, 4 * shapes.d];
    let n = shape[0] * shape[1];
    let mut draw = || -> Result<Tensor> {
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        Ok(Tensor::from_vec(v, &shape[..], &Device::Cpu)?.to_device(device)?)
    };
    let start = draw()?;
    let grads: Vec<Tensor> = (0..3).map(|_| draw()).collect::<Result<_>>()?;
    let settings = AdamWSettings {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let run = |fused: bool| -> Result<Tensor> {
        let params = vec![("w".to_string(), Var::from_tensor(&start.copy()?)?)];
        let mut opt = AdamW::new(settings);
        opt.set_fused(fused);
        for g in &grads {
            opt.step(&params, &[Some(g.clone())], 1e-2, 0.5)?;
        }
        Ok(params[0].1.as_tensor().clone())
    };
    let error = relative_error(&run(true)?, &run(false)?)?;
    let ok = error <= 1e-5;
    let fused_ms = median_ms(reps, device, || run(true).map(drop))? / 3.0;
    let composed_ms = median_ms(reps, device, || run(false).map(drop))? / 3.0;
    Ok((
        json!({
            "op": "adamw", "dtype": "f32", "device": device_name(device), "kernel": true, "ok": ok, "tolerance": 1e-5,
            "relative_error": { "params": error }, "fused_ms": fused_ms, "composed_ms": composed_ms,
            "speedup": composed_ms / fused_ms,
        }),
        ok,
    ))
}
