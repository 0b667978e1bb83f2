//! The PTX of llmlab's own CUDA kernels (`plugin-api/cuda/*.cu`: the fused training ops, issue
//! 27), compiled by build.rs into the runtime as candle's kernels are, so every plugin loads one
//! copy. The launch code lives with the ops (`llmlab_nn::ops::gpu`). Cuda build only.

/// Every kernel of `cuda/ops.cu`, one module. A `static`, not a `const`: a const would be copied
/// into each plugin that names it.
pub static LLMLAB_OPS_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/llmlab_ops.ptx"));
