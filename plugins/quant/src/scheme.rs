//! What every scheme shares: the factory ([`Scheme`]), its config ([`QuantConfig`]) and the
//! quantizer it makes ([`BlockQuantizer`]).
//!
//! **Padding.** GGML blocks run along a weight's rows (`(out, in)`: along `in`), so a row's
//! length must be a multiple of the block size (32, or 256 for k-quants). With `pad: true`
//! (the default) a ragged row is zero-padded to the next multiple; the quantized tensor is then
//! `(out, in_padded)` and the model pads its input with zeros to match, which leaves the product
//! unchanged (`x·0 = 0`). With `pad: false` such a weight is refused with an error naming the
//! tensor, its shape and the block size.
//!
//! **Fake quantization** (QAT): `w + (deq(q(w)) - w).detach()`: the forward pass sees the
//! quantized values, the backward pass the identity (straight-through estimator; Bengio et al.
//! 2013), because rounding has zero gradient almost everywhere.

use llmlab_plugin_api::candle::quantized::{GgmlDType, QTensor};
use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct QuantConfig {
    pub pad: bool,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig { pad: true }
    }
}

impl TypedConfig for QuantConfig {
    const DOCS: &'static [(&'static str, &'static str)] = &[(
        "pad",
        "zero-pad rows whose length is not a multiple of the block size (false: refuse them)",
    )];
}

/// A quantization scheme: the factory registered under the scheme's name.
pub struct Scheme {
    pub name: &'static str,
    pub dtype: GgmlDType,
    pub about: &'static str,
}

impl Scheme {
    /// The quantizer with `config`.
    pub fn quantizer(&self, config: QuantConfig) -> BlockQuantizer {
        BlockQuantizer {
            name: self.name,
            dtype: self.dtype,
            config,
        }
    }
}

impl Factory for Scheme {
    fn name(&self) -> &'static str {
        self.name
    }
    fn kind(&self) -> Kind {
        Kind::Quantizer
    }
    fn about(&self) -> &'static str {
        self.about
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        QuantConfig::keys()
    }
    fn create(&self, config: &Value, _ctx: &Context) -> Result<Instance> {
        let config = QuantConfig::from_json(self.name, config)?;
        Ok(Instance::Quantizer(Box::new(self.quantizer(config))))
    }
}

/// Quantizes weight matrices to one GGML block type.
#[derive(Debug, Clone)]
pub struct BlockQuantizer {
    name: &'static str,
    dtype: GgmlDType,
    config: QuantConfig,
}

impl BlockQuantizer {
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// `weight` as f32 `(out, in)`, zero-padded along `in` to a multiple of the block size.
    fn padded(&self, name: &str, weight: &Tensor) -> Result<Tensor> {
        let (out_dim, in_dim) = weight.dims2().map_err(|_| {
            Error::msg(format!(
                "{}: `{name}` has shape {:?}; only weight matrices (rank 2) can be quantized \
                 (add it to `skip`)",
                self.name,
                weight.dims()
            ))
        })?;
        let block = self.dtype.block_size();
        let weight = weight.detach().to_dtype(DType::F32)?;
        let pad = in_dim.next_multiple_of(block) - in_dim;
        if pad == 0 {
            return Ok(weight);
        }
        if !self.config.pad {
            return Err(Error::msg(format!(
                "{}: `{name}` has shape [{out_dim}, {in_dim}]: rows of {in_dim} are not a multiple \
                 of the block size {block}; add it to `skip`, or allow zero-padding with pad: true",
                self.name
            )));
        }
        llmlab_plugin_api::tracing::debug!(
            "{}: zero-padding rows of `{name}` from {in_dim} to {}",
            self.name,
            in_dim + pad
        );
        Ok(weight.pad_with_zeros(1, 0, pad)?)
    }
}

impl Quantizer for BlockQuantizer {
    fn name(&self) -> &str {
        self.name
    }

    fn quantize(&self, name: &str, weight: &Tensor) -> Result<QTensor> {
        let padded = self.padded(name, weight)?;
        QTensor::quantize(&padded, self.dtype)
            .map_err(|e| Error::msg(format!("{}: quantizing `{name}`: {e}", self.name)))
    }

    fn fake_quantize(&self, weight: &Tensor) -> Result<Tensor> {
        let in_dim = weight.dims2().map(|(_, i)| i).unwrap_or(0);
        let q = self.quantize("weight", weight)?;
        let dequantized = q
            .dequantize(weight.device())?
            .narrow(1, 0, in_dim)?
            .to_dtype(weight.dtype())?;
        let error = (dequantized - weight.detach())?;
        Ok(weight.add(&error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::{Device, Var};

    fn ramp(rows: usize, cols: usize) -> Tensor {
        Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
            .affine(0.013, -1.0)
            .unwrap()
            .sin()
            .unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn ragged_rows_are_padded_with_zeros() {
        let q = crate::legacy::Q4_0.quantizer(QuantConfig::default());
        let w = ramp(4, 40);
        let qt = q.quantize("w", &w).unwrap();
        assert_eq!(qt.shape().dims(), &[4, 64]);
        let back = qt.dequantize(&Device::Cpu).unwrap();
        assert_eq!(max_abs(&back.narrow(1, 40, 24).unwrap()), 0.0);
    }

    #[test]
    fn ragged_rows_are_refused_without_padding_naming_tensor_and_shape() {
        let q = crate::kquants::Q4K.quantizer(QuantConfig { pad: false });
        let err = q
            .quantize("h.0.mlp.c_proj.weight", &ramp(4, 344))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("h.0.mlp.c_proj.weight"), "{text}");
        assert!(text.contains("[4, 344]"), "{text}");
        assert!(text.contains("256"), "{text}");
    }

    #[test]
    fn vectors_are_refused_naming_the_tensor() {
        let q = crate::legacy::Q8_0.quantizer(QuantConfig::default());
        let v = Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap();
        let text = q.quantize("ln_f.weight", &v).unwrap_err().to_string();
        assert!(
            text.contains("ln_f.weight") && text.contains("rank 2"),
            "{text}"
        );
    }

    #[test]
    fn error_shrinks_with_more_bits() {
        let w = ramp(8, 256);
        let err = |s: &Scheme| {
            let q = s.quantizer(QuantConfig::default());
            let back = q
                .quantize("w", &w)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            max_abs(&(back - &w).unwrap())
        };
        let (q8, q6, q4) = (
            err(&crate::legacy::Q8_0),
            err(&crate::kquants::Q6K),
            err(&crate::legacy::Q4_0),
        );
        // |w| <= 1: a q8_0 step is 1/127, q4_0's 1/8; rounding errs by half a step.
        assert!(q8 < 0.5 / 127.0 + 1e-3, "q8_0 error {q8}");
        assert!(q8 < q6 && q6 < q4, "q8 {q8} q6k {q6} q4_0 {q4}");
        assert!(q4 < 0.5 / 7.0 + 1e-2, "q4_0 error {q4}");
    }

    #[test]
    fn fake_quantize_forwards_quantized_values_and_passes_gradients_straight_through() {
        let q = crate::legacy::Q4_0.quantizer(QuantConfig::default());
        let w = Var::from_tensor(&ramp(4, 40)).unwrap();
        let fq = q.fake_quantize(w.as_tensor()).unwrap();
        let expected = q
            .quantize("w", w.as_tensor())
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .narrow(1, 0, 40)
            .unwrap();
        assert!(max_abs(&(&fq - &expected).unwrap()) < 1e-6);
        let coeff = ramp(4, 40);
        let grads = (fq * &coeff)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = grads
            .get(w.as_tensor())
            .expect("gradient reaches the weight");
        assert!(max_abs(&(g - coeff).unwrap()) < 1e-6);
    }
}
