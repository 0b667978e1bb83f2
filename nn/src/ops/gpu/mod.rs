//! The fused ops on GPUs: the host code that sizes and launches the CUDA kernels
//! (`plugin-api/cuda/*.cu`, compiled into the runtime as PTX by `plugin-api/build.rs` in the
//! cuda build).
//!
//! The launch code is written once against [`Launcher`] and runs two ways: on a real GPU through
//! [`cuda::CudaLauncher`] (cuda build), and on the CPU through the test suite's emulator, which
//! compiles the same kernel sources with a host compiler (`plugin-api/cuda/emulation.h`,
//! `nn/tests/cuda_kernels_emulated.rs`). So every grid, block, scratch buffer and argument order
//! a GPU sees is exercised by CI, which has no GPU. Design: docs/cuda.md, "Fused kernels".

pub mod launches;

#[cfg(feature = "cuda")]
pub mod cuda;

use crate::candle::{self, DType};

/// The module name the kernels load under (one PTX module holds them all).
pub const MODULE: &str = "llmlab_ops";

/// Widest attention head the kernels take (`ATT_MAX_HD` in attention.cu); wider heads use the
/// composed path.
pub const ATTENTION_MAX_HEAD: usize = 128;

/// One kernel argument, as the kernel declares it: pointers are device addresses (0 = null).
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Where kernels run: a CUDA device, or the CPU emulator of the tests.
pub trait Launcher {
    /// What keeps a scratch buffer alive; dropping it frees the buffer (after the launches that
    /// use it, on a GPU: frees are ordered on the stream).
    type Scratch;
    /// `bytes` of zeroed memory and its address.
    fn scratch(&self, bytes: usize) -> candle::Result<(Self::Scratch, u64)>;
    /// Runs `kernel` (its exported name, dtype suffix included) on a `grid` of `block`s.
    fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[Arg],
    ) -> candle::Result<()>;
}

/// The element types the kernels are instantiated for, with their name suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32,
    Bf16,
    F16,
}

impl ElemType {
    /// The kernel element type of a candle dtype, if it has one.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Self::F32),
            DType::BF16 => Some(Self::Bf16),
            DType::F16 => Some(Self::F16),
            _ => None,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// `name_suffix`, the exported kernel of this element type.
    pub fn kernel(self, name: &str) -> String {
        format!("{name}_{}", self.suffix())
    }
}

/// Whether `t` takes the CUDA kernels: a cuda build, a CUDA tensor of a kernel element type,
/// and `LLMLAB_CUDA_KERNELS` not `0` (the switch back to the composed ops, for A/B and as a
/// way out should a kernel misbehave on some GPU).
pub fn takes(t: &crate::candle::Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && ElemType::of(t.dtype()).is_some() && enabled()
}

fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("LLMLAB_CUDA_KERNELS").map_or(true, |v| v != "0"))
}
