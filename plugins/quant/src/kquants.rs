//! GGML's k-quants: super-blocks of 256 weights split into sub-blocks whose scales are
//! themselves quantized. Bits per weight: q4k 4.5, q6k 6.5625. Rows must be a multiple of 256
//! long; shorter or ragged rows are zero-padded (see [`crate::scheme`]), which costs file size
//! and speed on narrow layers.

use llmlab_plugin_api::candle::quantized::GgmlDType;

use crate::scheme::Scheme;

/// 4-bit k-quant: 8 sub-blocks of 32 with 6-bit scales and minimums.
pub const Q4K: Scheme = Scheme {
    name: "q4k",
    dtype: GgmlDType::Q4K,
    about: "4-bit k-quant, super-blocks of 256 with 6-bit sub-block scales (4.5 bits/weight)",
};

/// 6-bit k-quant: 16 sub-blocks of 16 with 8-bit scales.
pub const Q6K: Scheme = Scheme {
    name: "q6k",
    dtype: GgmlDType::Q6K,
    about: "6-bit k-quant, super-blocks of 256 with 8-bit sub-block scales (6.56 bits/weight)",
};
