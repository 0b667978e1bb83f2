//! Next-token negative log-likelihood fused with its log-softmax: the forward reads each row of
//! logits twice (max, then `Σ exp`) and keeps only the row's log-sum-exp; the backward writes
//! the gradient in one pass, `dlogits = dnll · (exp(x - lse) - onehot(target))`, without the
//! `(n, vocab)` temporaries of the composed version (shifted logits, their exp, log-probs).

use std::sync::{Arc, Mutex};

use crate::candle::{self, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use crate::ops::layout::{f32_data, rows_per_task, u32_data};
use crate::ops::math::{self, simd_kernel};
use crate::rayon::prelude::*;

/// Per-position NLL `(n,)` of `targets` (u32, `n` elements in any shape) under `logits`
/// `(..., vocab)` with `n` rows; fused on CPU f32, composed otherwise.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> candle::Result<Tensor> {
    let vocab = logits.dim(candle::D::Minus1)?;
    let n = targets.elem_count();
    if logits.elem_count() != n * vocab {
        candle::bail!(
            "cross_entropy: logits {:?} do not hold one row per target of {:?}",
            logits.dims(),
            targets.dims()
        )
    }
    let logits = logits.reshape((n, vocab))?;
    let targets = targets.reshape(n)?;
    if super::kernel_path("token_nll", &logits) {
        logits.apply_op2(
            &targets,
            CrossEntropy {
                lse: Mutex::new(None),
            },
        )
    } else {
        token_nll_reference(&logits, &targets)
    }
}

/// The composed path on `(n, vocab)` logits (half precision is computed in f32).
pub fn token_nll_reference(logits: &Tensor, targets: &Tensor) -> candle::Result<Tensor> {
    let (n, _) = logits.dims2()?;
    let logits = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        _ => logits.clone(),
    };
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let picked = shifted.gather(&targets.reshape((n, 1))?, 1)?;
    (lse - picked)?.reshape(n)
}

simd_kernel! {
    /// Log-sum-exp of each `v`-row.
    fn lse_rows(x: &[f32], lse: &mut [f32], v: usize) {
        for (x, lse) in x.chunks_exact(v).zip(lse.iter_mut()) {
            let m = math::max(x);
            let mut acc = [0f32; math::LANES];
            let chunks = x.chunks_exact(math::LANES);
            let mut tail = 0f32;
            for &x in chunks.remainder() {
                tail += math::exp(x - m);
            }
            for c in chunks {
                for l in 0..math::LANES {
                    acc[l] += math::exp(c[l] - m);
                }
            }
            *lse = m + (acc.iter().sum::<f32>() + tail).ln();
        }
    }
}

simd_kernel! {
    /// `dx = g (exp(x - lse) - onehot)` for each `v`-row.
    fn grad_rows(x: &[f32], lse: &[f32], g: &[f32], targets: &[u32], dx: &mut [f32], v: usize) {
        for ((((x, dx), &lse), &g), &t) in x.chunks_exact(v).zip(dx.chunks_exact_mut(v)).zip(lse).zip(g).zip(targets) {
            for (dx, &x) in dx.iter_mut().zip(x) {
                *dx = g * math::exp(x - lse);
            }
            dx[t as usize] -= g;
        }
    }
}

struct CrossEntropy {
    /// Each row's log-sum-exp, saved by the forward for the backward.
    lse: Mutex<Option<SavedLse>>,
}

/// The forward's log-sum-exp per row (f32), where the forward ran.
#[derive(Clone)]
enum SavedLse {
    Host(Arc<Vec<f32>>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<candle::CudaStorage>),
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let targets = u32_data(ts, tl, self.name())?;
        let (n, v) = xl.shape().dims2()?;
        if let Some((row, &t)) = targets.iter().enumerate().find(|(_, &t)| t as usize >= v) {
            candle::bail!(
                "cross_entropy: target id {t} at position {row} is not below vocab size {v}"
            )
        }
        let mut lse = vec![0f32; n];
        if v > 0 {
            let per = rows_per_task(n, v);
            lse.par_chunks_mut(per)
                .zip(x.par_chunks(per * v))
                .for_each(|(lse, x)| lse_rows(x, lse, v));
        }
        let nll: Vec<f32> = lse
            .iter()
            .zip(targets.iter())
            .enumerate()
            .map(|(i, (&l, &t))| l - x[i * v + t as usize])
            .collect();
        if let Ok(mut saved) = self.lse.lock() {
            *saved = Some(SavedLse::Host(Arc::new(lse)));
        }
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle::CudaStorage,
        xl: &Layout,
        ts: &candle::CudaStorage,
        tl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let (n, v) = xl.shape().dims2()?;
        let lse = cuda::output(&xs.device, DType::F32, n)?;
        let lse_addr = cuda::address_at(&lse, 0)?;
        let inputs = [(xs, xl), (ts, tl)];
        let nll = cuda::with_output(
            self.name(),
            inputs,
            n,
            Some(DType::F32),
            |k, ty, [x, t], nll| {
                let nll = cuda::address_at(nll, 0)?;
                launches::nll_forward(k, ty, [x, t, lse_addr, nll], n, v)
            },
        )?;
        if let Ok(mut saved) = self.lse.lock() {
            *saved = Some(SavedLse::Cuda(Arc::new(lse)));
        }
        Ok((nll, Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _nll: &Tensor,
        dnll: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().ok().and_then(|l| l.clone());
        let Some(lse) = lse else {
            candle::bail!("cross_entropy backward before its forward")
        };
        let dx = logits.apply_op3_no_bwd(targets, dnll, &CrossEntropyBackward { lse })?;
        Ok((Some(dx), None))
    }
}

struct CrossEntropyBackward {
    lse: SavedLse,
}

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let targets = u32_data(ts, tl, self.name())?;
        let g = f32_data(gs, gl, self.name())?;
        let (n, v) = xl.shape().dims2()?;
        #[allow(irrefutable_let_patterns)] // refutable in the cuda build
        let SavedLse::Host(lse) = &self.lse
        else {
            candle::bail!("cross_entropy backward: the forward ran on another device")
        };
        let mut dx = vec![0f32; n * v];
        if v > 0 {
            let per = rows_per_task(n, v);
            dx.par_chunks_mut(per * v)
                .zip(x.par_chunks(per * v))
                .zip(lse.par_chunks(per))
                .zip(g.par_chunks(per).zip(targets.par_chunks(per)))
                .for_each(|(((dx, x), lse), (g, t))| grad_rows(x, lse, g, t, dx, v));
        }
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle::CudaStorage,
        xl: &Layout,
        ts: &candle::CudaStorage,
        tl: &Layout,
        gs: &candle::CudaStorage,
        gl: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        use crate::ops::gpu::{cuda, launches};
        let SavedLse::Cuda(lse) = &self.lse else {
            candle::bail!("cross_entropy backward: the forward ran on another device")
        };
        let lse = cuda::address_at(lse, 0)?;
        let (n, v) = xl.shape().dims2()?;
        let inputs = [(xs, xl), (ts, tl), (gs, gl)];
        let dx = cuda::with_output(self.name(), inputs, n * v, None, |k, ty, [x, t, g], dx| {
            let dx = cuda::address_at(dx, 0)?;
            launches::nll_backward(k, ty, [x, t, lse, g, dx], n, v)
        })?;
        Ok((dx, xl.shape().clone()))
    }
}
