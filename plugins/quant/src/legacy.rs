//! GGML's original block schemes: 32 weights per block with one f16 scale (and for `q4_1` one
//! f16 minimum). Bits per weight: q8_0 8.5, q4_0 4.5, q4_1 5.0.

use llmlab_plugin_api::candle::quantized::GgmlDType;

use crate::scheme::Scheme;

/// 8-bit symmetric: `w ≈ d · q`, `q ∈ [-127, 127]`, `d = max|w| / 127` per block of 32.
pub const Q8_0: Scheme = Scheme {
    name: "q8_0",
    dtype: GgmlDType::Q8_0,
    about: "8-bit weights, blocks of 32 with an f16 scale (8.5 bits/weight); near-lossless",
};

/// 4-bit symmetric: `w ≈ d · (q - 8)`, `q ∈ [0, 15]` per block of 32.
pub const Q4_0: Scheme = Scheme {
    name: "q4_0",
    dtype: GgmlDType::Q4_0,
    about: "4-bit weights, blocks of 32 with an f16 scale (4.5 bits/weight)",
};

/// 4-bit affine: `w ≈ d · q + m`, `q ∈ [0, 15]` per block of 32.
pub const Q4_1: Scheme = Scheme {
    name: "q4_1",
    dtype: GgmlDType::Q4_1,
    about: "4-bit weights, blocks of 32 with an f16 scale and minimum (5.0 bits/weight)",
};
