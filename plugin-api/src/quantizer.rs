//! The [`Quantizer`] component: a weight quantization scheme (q8_0, q4_0, ...). Models call it
//! when rebuilding themselves with quantized linear layers.

use candle_core::quantized::QTensor;
use candle_core::Tensor;

use crate::Result;

pub trait Quantizer: Send + Sync {
    /// The scheme name (`"q4_0"`).
    fn name(&self) -> &str;
    /// Quantizes one weight matrix named `name`.
    fn quantize(&self, name: &str, weight: &Tensor) -> Result<QTensor>;
    /// Quantize-then-dequantize in f32, differentiable by straight-through: for QAT.
    fn fake_quantize(&self, weight: &Tensor) -> Result<Tensor>;
}
