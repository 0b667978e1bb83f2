//! Linear layers with GPT-2 initialisation: weight `(out, in)` from N(0, std), bias zeros.
//!
//! Stored as `torch.nn.Linear` stores them (nanoGPT); Hugging Face GPT-2 keeps its `Conv1D`
//! weights transposed, `(in, out)`, and `hf.rs` transposes them on import.

use llmlab_plugin_api::candle::Result;
use llmlab_plugin_api::candle_nn::{Init, Linear, VarBuilder};

/// GPT-2's init for every weight matrix and embedding.
pub const INIT_STD: f64 = 0.02;

/// `weight` `(out, in)` ~ N(0, std²) and, with `bias`, `bias` zeros, under `vb`.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
    vb: VarBuilder,
) -> Result<Linear> {
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )?;
    let bias = if bias {
        Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}
