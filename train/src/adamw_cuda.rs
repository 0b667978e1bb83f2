//! AdamW's update on CUDA in one kernel per parameter (cuda build): parameter, gradient and both
//! moments (device tensors owned by the optimiser) read once and written in place, instead of
//! the dozen tensor ops and temporaries of the composed update. Same arithmetic as the CPU's
//! fused pass (`adamw.rs`); the kernel is `adamw_step_f32` in plugin-api/cuda/adamw.cu.

use crate::candle::{self, CudaStorage, DType, InplaceOp2, Layout, Storage, Tensor, Var};
use llmlab_nn::ops::gpu::cuda::{self, CudaLauncher};
use llmlab_nn::ops::gpu::launches::{self, AdamWStep};

/// Whether the kernel takes this parameter: f32 on a CUDA device, and `adamw` enabled by
/// `LLMLAB_CUDA_KERNELS`.
pub fn applies(var: &Var) -> bool {
    var.dtype() == DType::F32 && llmlab_nn::ops::gpu::takes("adamw", var.as_tensor())
}

/// One AdamW step of `var` from `grad`, updating the moments `m` and `v` in place.
pub fn update(
    var: &Var,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: AdamWStep,
) -> candle::Result<()> {
    let grad = grad.contiguous()?;
    var.as_tensor().inplace_op2(&grad, &Kernel { m, v, step })
}

struct Kernel<'a> {
    m: &'a Tensor,
    v: &'a Tensor,
    step: AdamWStep,
}

/// The CUDA storage of a moment, which the optimiser created contiguous.
fn moment_address(t: &Tensor) -> candle::Result<(u64, impl Drop + '_)> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle::bail!("adamw: a moment is not on the CUDA device")
    };
    let Some((start, _)) = layout.contiguous_offsets() else {
        candle::bail!("adamw: a moment is not contiguous")
    };
    let addr = cuda::address_at(s, start)?;
    Ok((addr, storage))
}

impl InplaceOp2 for Kernel<'_> {
    fn name(&self) -> &'static str {
        "adamw-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle::CpuStorage,
        _: &Layout,
        _: &candle::CpuStorage,
        _: &Layout,
    ) -> candle::Result<()> {
        candle::bail!("adamw: the CUDA update was given CPU tensors")
    }

    fn cuda_fwd(
        &self,
        p: &mut CudaStorage,
        pl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> candle::Result<()> {
        let n = pl.shape().elem_count();
        if gl.shape().elem_count() != n || self.m.elem_count() != n || self.v.elem_count() != n {
            candle::bail!("adamw: parameter, gradient and moments differ in size")
        }
        let (Some((p0, _)), Some((g0, _))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle::bail!("adamw: the fused update needs contiguous tensors")
        };
        let (m, _m_guard) = moment_address(self.m)?;
        let (v, _v_guard) = moment_address(self.v)?;
        let addrs = [cuda::address_at(p, p0)?, cuda::address_at(g, g0)?, m, v];
        launches::adamw_step(&CudaLauncher::new(&p.device), addrs, n, self.step)
    }
}
