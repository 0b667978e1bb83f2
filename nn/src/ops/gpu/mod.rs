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

/// The kernels' module, by name in errors (one module holds them all).
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

/// The ops with CUDA kernels, by the names `LLMLAB_CUDA_KERNELS` takes.
pub const OPS: [&str; 9] = [
    "layer_norm",
    "rms_norm",
    "softmax",
    "gelu",
    "swiglu",
    "rope",
    "causal_attention",
    "token_nll",
    "adamw",
];

/// Whether `t` takes the CUDA kernel of `op`: a cuda build, a CUDA tensor of a kernel element
/// type, and `op` enabled by `LLMLAB_CUDA_KERNELS` ([`enabled`]).
pub fn takes(op: &str, t: &crate::candle::Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && ElemType::of(t.dtype()).is_some()
        && enabled(op)
}

/// `LLMLAB_CUDA_KERNELS`: unset, `1` or `all` runs every CUDA kernel; `0` none (the composed ops:
/// the A/B, and the way out should a kernel misbehave on some GPU); a comma list (`gelu,softmax`)
/// only those, and `all,-causal_attention` all but those — so a GPU session can keep each kernel
/// only where it beats the composed op. Unknown names are reported on stderr and ignored.
pub fn enabled(op: &str) -> bool {
    static CHOICE: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let chosen =
        CHOICE.get_or_init(|| parse_choice(std::env::var("LLMLAB_CUDA_KERNELS").ok().as_deref()));
    chosen.contains(&op)
}

/// The ops a `LLMLAB_CUDA_KERNELS` value enables.
pub fn parse_choice(value: Option<&str>) -> Vec<&'static str> {
    let value = value.map(str::trim).unwrap_or("all");
    let mut on: Vec<&'static str> = match value {
        "" | "0" | "none" => return Vec::new(),
        "1" => return OPS.to_vec(),
        _ => Vec::new(),
    };
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (remove, name) = match item.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, item),
        };
        let names: Vec<&'static str> = if name == "all" {
            OPS.to_vec()
        } else if let Some(&op) = OPS.iter().find(|&&op| op == name) {
            vec![op]
        } else {
            eprintln!(
                "LLMLAB_CUDA_KERNELS: unknown op {name:?} ignored (ops: all, {})",
                OPS.join(", ")
            );
            continue;
        };
        if remove {
            on.retain(|op| !names.contains(op));
        } else {
            on.extend(
                names
                    .into_iter()
                    .filter(|n| !on.contains(n))
                    .collect::<Vec<_>>(),
            );
        }
    }
    on
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_choice_reads_all_none_lists_and_exclusions() {
        assert_eq!(parse_choice(None), OPS.to_vec());
        assert_eq!(parse_choice(Some("1")), OPS.to_vec());
        assert!(parse_choice(Some("0")).is_empty());
        assert_eq!(parse_choice(Some("gelu, softmax")), vec!["gelu", "softmax"]);
        let all_but = parse_choice(Some("all,-causal_attention,-adamw"));
        assert_eq!(all_but.len(), OPS.len() - 2);
        assert!(!all_but.contains(&"causal_attention") && all_but.contains(&"rope"));
        assert_eq!(parse_choice(Some("gelu,nonsense")), vec!["gelu"]);
    }
}
