//! llmlab's own CUDA kernels (`plugin-api/cuda/*.cu`: the fused training ops, issue 27), compiled
//! by build.rs into the runtime as candle's kernels are, so every plugin loads one copy: a
//! compressed fatbin (SASS for the build's GPU, PTX for newer ones). The launch code lives with the
//! ops (`llmlab_nn::ops::gpu`). Cuda build only.

/// Every kernel of `cuda/ops.cu`, one module. A `static`, not a `const`: a const would be copied
/// into each plugin that names it.
pub static LLMLAB_OPS_FATBIN: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/llmlab_ops.fatbin"));
