//! The CUDA side of the fused ops (cuda build only): a [`Launcher`] over candle's CUDA device
//! that loads the runtime's kernel module (`llmlab_plugin_api::cuda_kernels`, a fatbin: candle's
//! custom-module cache takes PTX text only, so the module and its functions are cached here, per
//! device), and the step from candle's CUDA storage to kernel addresses and back, so each op's
//! `cuda_fwd` is one call.
//!
//! Every launch goes on candle's stream for the device, so kernels are ordered with candle's own
//! work and scratch buffers are freed behind them.

use super::{Arg, ElemType, Launcher, MODULE};
use crate::candle::backend::{BackendDevice, BackendStorage};
use crate::candle::cuda_backend::cudarc::driver::{CudaFunction, CudaModule};
use crate::candle::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
};
use crate::candle::cuda_backend::cudarc::nvrtc::Ptx;
use crate::candle::cuda_backend::{CudaStorageSlice, WrapErr};
use crate::candle::{self, CudaDevice, CudaStorage, DType, Layout, Shape};
use llmlab_plugin_api::cuda_kernels::LLMLAB_OPS_FATBIN;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Launches on one CUDA device's stream.
pub struct CudaLauncher<'a> {
    dev: &'a CudaDevice,
}

impl<'a> CudaLauncher<'a> {
    pub fn new(dev: &'a CudaDevice) -> Self {
        CudaLauncher { dev }
    }
}

impl Launcher for CudaLauncher<'_> {
    type Scratch = CudaSlice<u8>;

    fn scratch(&self, bytes: usize) -> candle::Result<(CudaSlice<u8>, u64)> {
        let buf = self.dev.alloc_zeros::<u8>(bytes.max(1))?;
        let stream = self.dev.cuda_stream();
        let addr = buf.device_ptr(&stream).0;
        Ok((buf, addr))
    }

    fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[Arg],
    ) -> candle::Result<()> {
        let func = function(self.dev, kernel)?;
        let stream = self.dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        for arg in args {
            match arg {
                Arg::Ptr(p) => builder.arg(p),
                Arg::I32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid[0], grid[1], grid[2]),
            block_dim: (block[0], block[1], block[2]),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list matches the kernel's declaration (launches.rs, checked
        // against the same sources by the emulated tests); buffers are sized by the callers.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(())
    }
}

/// The module loaded on one device and the functions looked up in it so far.
struct Loaded {
    ordinal: usize,
    module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
}

/// `kernel` of the runtime's module on `dev`, loading the module there on first use.
fn function(dev: &CudaDevice, kernel: &str) -> candle::Result<CudaFunction> {
    static LOADED: Mutex<Vec<Loaded>> = Mutex::new(Vec::new());
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let mut loaded = LOADED
        .lock()
        .map_err(|_| candle::Error::Msg(format!("{MODULE}: module cache poisoned")))?;
    let at = match loaded.iter().position(|l| l.ordinal == ctx.ordinal()) {
        Some(at) => at,
        None => {
            let module = ctx
                .load_module(Ptx::from_binary(LLMLAB_OPS_FATBIN.to_vec()))
                .w()?;
            loaded.push(Loaded {
                ordinal: ctx.ordinal(),
                module,
                functions: HashMap::new(),
            });
            loaded.len() - 1
        }
    };
    let entry = &mut loaded[at];
    if let Some(f) = entry.functions.get(kernel) {
        return Ok(f.clone());
    }
    let f = entry.module.load_function(kernel).w()?;
    entry.functions.insert(kernel.to_string(), f.clone());
    Ok(f)
}

/// The device address of a storage's first element.
fn base_address(s: &CudaStorage) -> candle::Result<u64> {
    let stream = s.device.cuda_stream();
    Ok(match &s.slice {
        CudaStorageSlice::F32(x) => x.device_ptr(&stream).0,
        CudaStorageSlice::BF16(x) => x.device_ptr(&stream).0,
        CudaStorageSlice::F16(x) => x.device_ptr(&stream).0,
        CudaStorageSlice::U32(x) => x.device_ptr(&stream).0,
        _ => candle::bail!("fused CUDA kernels: unsupported dtype {:?}", s.dtype()),
    })
}

/// A kernel input: the address of a tensor's elements in order, through a contiguous copy when
/// its layout is strided (the copy lives as long as this value).
pub struct Operand {
    pub addr: u64,
    _copy: Option<CudaStorage>,
}

pub fn operand(s: &CudaStorage, l: &Layout) -> candle::Result<Operand> {
    if let Some((start, _)) = l.contiguous_offsets() {
        let addr = base_address(s)? + (start * s.dtype().size_in_bytes()) as u64;
        return Ok(Operand { addr, _copy: None });
    }
    let mut copy = output(s.device(), s.dtype(), l.shape().elem_count())?;
    s.copy_strided_src(&mut copy, 0, l)?;
    Ok(Operand {
        addr: base_address(&copy)?,
        _copy: Some(copy),
    })
}

/// Uninitialised storage for `n` elements (every kernel writes all of its output).
pub fn output(dev: &CudaDevice, dtype: DType, n: usize) -> candle::Result<CudaStorage> {
    // SAFETY: the kernel that receives it writes every element before anything reads it.
    unsafe { dev.alloc_uninit(&Shape::from(n.max(1)), dtype) }
}

/// The address of element `index` of a storage of `dtype`.
pub fn address_at(s: &CudaStorage, index: usize) -> candle::Result<u64> {
    Ok(base_address(s)? + (index * s.dtype().size_in_bytes()) as u64)
}

/// The kernel element type of `s`, or an error naming the op.
pub fn elem_type(op: &str, s: &CudaStorage) -> candle::Result<ElemType> {
    ElemType::of(s.dtype())
        .ok_or_else(|| candle::Error::Msg(format!("{op}: no CUDA kernel for {:?}", s.dtype())))
}

/// Runs `f` with `N` inputs as addresses and one fresh output of `out_len` elements of
/// `out_dtype` (the inputs' dtype when `None`); the common shape of every fused op's `cuda_fwd`.
pub fn with_output<const N: usize>(
    op: &str,
    inputs: [(&CudaStorage, &Layout); N],
    out_len: usize,
    out_dtype: Option<DType>,
    f: impl FnOnce(&CudaLauncher, ElemType, [u64; N], &CudaStorage) -> candle::Result<()>,
) -> candle::Result<CudaStorage> {
    let first = inputs[0].0;
    let ty = elem_type(op, first)?;
    let dev = first.device();
    let operands = inputs
        .iter()
        .map(|(s, l)| operand(s, l))
        .collect::<candle::Result<Vec<_>>>()?;
    let addrs: [u64; N] = std::array::from_fn(|i| operands[i].addr);
    let out = output(dev, out_dtype.unwrap_or(first.dtype()), out_len)?;
    f(&CudaLauncher::new(dev), ty, addrs, &out)?;
    Ok(out)
}
