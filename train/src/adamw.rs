//! AdamW (Loshchilov & Hutter) with decoupled weight decay on matrices only (rank >= 2:
//! embeddings and linear weights; biases and norm gains are not decayed), as PyTorch's `AdamW`:
//!
//! ```text
//! m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g²
//! p = p (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! Moments are kept per parameter name, so they survive in checkpoints and follow the model's
//! names. On CPU with f32 parameters the whole update is one fused pass over each parameter, in
//! place, with no allocation ([`AdamWKernel`]); on CUDA (f32) one kernel per parameter
//! (`adamw_cuda.rs`, cuda build); elsewhere it is a handful of tensor ops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::candle::{self, CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use crate::rayon::prelude::*;
use crate::{Error, Result};
use llmlab_nn::ops::gpu::launches::AdamWStep;
use llmlab_plugin_api::error::candle_message;

/// The optimiser's hyperparameters (the learning rate comes per step from the schedule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter.
enum Moments {
    /// CPU f32: plain buffers the fused kernel updates in place.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Any other device or dtype: tensors replaced each step.
    Device { m: Tensor, v: Tensor },
}

pub struct AdamW {
    settings: AdamWSettings,
    /// Updates taken so far: `t` of the bias corrections.
    steps: u64,
    moments: BTreeMap<String, Moments>,
    fused: bool,
}

/// Checkpoint names of a parameter's moments.
pub fn moment_names(param: &str) -> (String, String) {
    (format!("exp_avg.{param}"), format!("exp_avg_sq.{param}"))
}

impl AdamW {
    pub fn new(settings: AdamWSettings) -> Self {
        AdamW {
            settings,
            steps: 0,
            moments: BTreeMap::new(),
            fused: true,
        }
    }

    /// Off: always the tensor-op update (for comparing the two paths).
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether `var` is decayed: matrices yes, vectors and scalars no.
    pub fn decays(var: &Var) -> bool {
        var.rank() >= 2
    }

    fn uses_host_moments(&self, var: &Var) -> bool {
        self.fused && matches!(var.device(), Device::Cpu) && var.dtype() == DType::F32
    }

    /// One update of every parameter that has a gradient; `grad_scale` multiplies the gradients
    /// first (clipping). Parameters without a gradient are left alone, as PyTorch does.
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.steps += 1;
        let s = self.settings;
        let t = self.steps as i32;
        let step_size = lr / (1.0 - s.beta1.powi(t));
        let inv_sqrt_bc2 = 1.0 / (1.0 - s.beta2.powi(t)).sqrt();
        for ((name, var), grad) in params.iter().zip(grads) {
            let Some(grad) = grad else { continue };
            let decay = if Self::decays(var) {
                1.0 - lr * s.weight_decay
            } else {
                1.0
            };
            let host = self.uses_host_moments(var);
            let moments = self.moments.entry(name.clone()).or_insert(if host {
                Moments::Host {
                    m: vec![0.0; var.elem_count()],
                    v: vec![0.0; var.elem_count()],
                }
            } else {
                Moments::Device {
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                }
            });
            // The scalars of this parameter's update, for the fused passes (CPU and CUDA).
            let step = AdamWStep {
                beta1: s.beta1 as f32,
                beta2: s.beta2 as f32,
                eps: s.eps as f32,
                decay: decay as f32,
                step_size: step_size as f32,
                inv_sqrt_bc2: inv_sqrt_bc2 as f32,
                grad_scale: grad_scale as f32,
            };
            match moments {
                Moments::Host { m, v } => {
                    let grad = grad.contiguous()?;
                    let kernel = AdamWKernel {
                        m: Mutex::new(m),
                        v: Mutex::new(v),
                        step,
                    };
                    let mut result = var.as_tensor().inplace_op2(&grad, &kernel);
                    if result.is_err() {
                        // A gradient sharing the parameter's storage (candle can hand one back
                        // for `loss = p`): update from a copy.
                        result = var.as_tensor().inplace_op2(&grad.copy()?, &kernel);
                    }
                    result.map_err(|e| {
                        Error::msg(format!("AdamW update of `{name}`: {}", candle_message(&e)))
                    })?;
                }
                Moments::Device { m, v } => {
                    #[cfg(feature = "cuda")]
                    if self.fused && crate::adamw_cuda::applies(var) {
                        crate::adamw_cuda::update(var, grad, m, v, step).map_err(|e| {
                            Error::msg(format!("AdamW update of `{name}`: {}", candle_message(&e)))
                        })?;
                        continue;
                    }
                    let g = if grad_scale != 1.0 {
                        grad.affine(grad_scale, 0.0)?
                    } else {
                        grad.clone()
                    };
                    *m = (m.affine(s.beta1, 0.0)? + g.affine(1.0 - s.beta1, 0.0)?)?;
                    *v = (v.affine(s.beta2, 0.0)? + g.sqr()?.affine(1.0 - s.beta2, 0.0)?)?;
                    let denom = v.sqrt()?.affine(inv_sqrt_bc2, s.eps)?;
                    let update = (m.div(&denom)?).affine(step_size, 0.0)?;
                    let p = var.as_tensor();
                    let next = if decay != 1.0 {
                        (p.affine(decay, 0.0)? - update)?
                    } else {
                        (p - update)?
                    };
                    var.set(&next)?;
                }
            }
        }
        Ok(())
    }

    /// Every moment as a CPU tensor named as in [`moment_names`], for a checkpoint.
    pub fn moments_to_tensors(&self, params: &[(String, Var)]) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.moments.len());
        for (name, var) in params {
            let Some(moments) = self.moments.get(name) else {
                continue;
            };
            let (m_name, v_name) = moment_names(name);
            let (m, v) = match moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, var.shape(), &Device::Cpu)?,
                    Tensor::from_slice(v, var.shape(), &Device::Cpu)?,
                ),
                Moments::Device { m, v } => {
                    (m.to_device(&Device::Cpu)?, v.to_device(&Device::Cpu)?)
                }
            };
            out.push((m_name, m));
            out.push((v_name, v));
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::moments_to_tensors`] after `steps` updates. A parameter
    /// with no saved moments starts from zero (it had no gradient yet); a shape mismatch is an error.
    pub fn load(
        &mut self,
        steps: u64,
        tensors: &HashMap<String, Tensor>,
        params: &[(String, Var)],
    ) -> Result<()> {
        self.steps = steps;
        self.moments.clear();
        for (name, var) in params {
            let (m_name, v_name) = moment_names(name);
            let (Some(m), Some(v)) = (tensors.get(&m_name), tensors.get(&v_name)) else {
                continue;
            };
            for (key, t) in [(&m_name, m), (&v_name, v)] {
                if t.shape() != var.shape() {
                    return Err(Error::Data(format!(
                        "optimizer moment `{key}` has shape {:?} but parameter `{name}` has {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
            }
            let moments = if self.uses_host_moments(var) {
                Moments::Host {
                    m: m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                    v: v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                }
            } else {
                Moments::Device {
                    m: m.to_device(var.device())?.to_dtype(var.dtype())?,
                    v: v.to_device(var.device())?.to_dtype(var.dtype())?,
                }
            };
            self.moments.insert(name.clone(), moments);
        }
        Ok(())
    }
}

/// The fused CPU update of one f32 parameter (in place) from its gradient, moments alongside.
struct AdamWKernel<'a> {
    m: Mutex<&'a mut Vec<f32>>,
    v: Mutex<&'a mut Vec<f32>>,
    step: AdamWStep,
}

/// Elements per parallel chunk: below this a parameter is updated on one thread.
const CHUNK: usize = 1 << 15;

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (param, grad) else {
            candle::bail!("adamw: the fused update needs f32 parameters and gradients")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (
            param_layout.contiguous_offsets(),
            grad_layout.contiguous_offsets(),
        ) else {
            candle::bail!("adamw: the fused update needs contiguous tensors")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let (Ok(mut m), Ok(mut v)) = (self.m.lock(), self.v.lock()) else {
            candle::bail!("adamw: moments poisoned by an earlier panic")
        };
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle::bail!("adamw: parameter, gradient and moments differ in size")
        }
        let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            let (b1, b2) = (self.step.beta1, self.step.beta2);
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                let g = g * self.step.grad_scale;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p = *p * self.step.decay
                    - self.step.step_size * *m
                        / (v.sqrt() * self.step.inv_sqrt_bc2 + self.step.eps);
            }
        };
        if p.len() <= CHUNK {
            update(p, &mut m[..], &mut v[..], g);
        } else {
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| update(p, m, v, g));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(weight_decay: f64) -> AdamWSettings {
        AdamWSettings {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay,
        }
    }

    fn params() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        vec![
            (
                "bias".into(),
                Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0], &dev).unwrap()).unwrap(),
            ),
            (
                "weight".into(),
                Var::from_tensor(&Tensor::new(&[[1f32, 2.0], [-3.0, 4.0]], &dev).unwrap()).unwrap(),
            ),
        ]
    }

    fn values(var: &Var) -> Vec<f32> {
        var.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn weight_decay_skips_rank_one_parameters() {
        let params = params();
        let mut opt = AdamW::new(settings(0.5));
        // Zero gradients: only weight decay moves anything.
        let grads: Vec<Option<Tensor>> = params
            .iter()
            .map(|(_, v)| Some(v.zeros_like().unwrap()))
            .collect();
        opt.step(&params, &grads, 0.1, 1.0).unwrap();
        assert_eq!(values(&params[0].1), vec![1.0, -2.0, 3.0]);
        let w = values(&params[1].1);
        let expected = [1.0f32, 2.0, -3.0, 4.0].map(|x| x * (1.0 - 0.1 * 0.5));
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }

    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        let params = params();
        let mut opt = AdamW::new(settings(0.0));
        let grads = vec![
            Some(Tensor::new(&[0.5f32, -0.25, 0.0], &Device::Cpu).unwrap()),
            Some(Tensor::new(&[[2f32, -2.0], [1e-3, -7.0]], &Device::Cpu).unwrap()),
        ];
        opt.step(&params, &grads, 0.01, 1.0).unwrap();
        let b = values(&params[0].1);
        assert!(
            (b[0] - 0.99).abs() < 1e-5 && (b[1] + 1.99).abs() < 1e-5 && b[2] == 3.0,
            "{b:?}"
        );
        let w = values(&params[1].1);
        for (after, (before, sign)) in
            w.iter()
                .zip([(1.0f32, 1.0f32), (2.0, -1.0), (-3.0, 1.0), (4.0, -1.0)])
        {
            assert!((after - (before - 0.01 * sign)).abs() < 1e-4, "{w:?}");
        }
    }

    #[test]
    fn fused_and_tensor_paths_agree_over_several_steps() {
        let run = |fused: bool| {
            let params = params();
            let mut opt = AdamW::new(settings(0.1));
            opt.set_fused(fused);
            for k in 0..5 {
                let grads: Vec<Option<Tensor>> = params
                    .iter()
                    .map(|(_, v)| Some(v.as_tensor().affine(0.3, k as f64 * 0.1 - 0.2).unwrap()))
                    .collect();
                opt.step(&params, &grads, 0.05, 0.7).unwrap();
            }
            let moments = opt.moments_to_tensors(&params).unwrap();
            (
                params
                    .iter()
                    .flat_map(|(_, v)| values(v))
                    .collect::<Vec<_>>(),
                moments.len(),
            )
        };
        let (fused, n_fused) = run(true);
        let (plain, n_plain) = run(false);
        assert_eq!(n_fused, 4);
        assert_eq!(n_plain, 4);
        for (a, b) in fused.iter().zip(&plain) {
            assert!((a - b).abs() < 1e-5, "{fused:?} vs {plain:?}");
        }
    }

    #[test]
    fn moments_round_trip_through_tensors() {
        let params = params();
        let mut opt = AdamW::new(settings(0.1));
        let grads: Vec<Option<Tensor>> = params
            .iter()
            .map(|(_, v)| Some(v.as_tensor().clone()))
            .collect();
        opt.step(&params, &grads, 0.1, 1.0).unwrap();
        let saved: HashMap<String, Tensor> = opt
            .moments_to_tensors(&params)
            .unwrap()
            .into_iter()
            .collect();
        let mut restored = AdamW::new(settings(0.1));
        restored.load(opt.steps(), &saved, &params).unwrap();
        let again: HashMap<String, Tensor> = restored
            .moments_to_tensors(&params)
            .unwrap()
            .into_iter()
            .collect();
        for (k, t) in &saved {
            let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = again[k].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{k}");
        }
    }
}
