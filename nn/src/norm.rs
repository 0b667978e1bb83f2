//! LayerNorm and RMSNorm over the last dimension: the fused kernels of [`crate::ops`] (own
//! backward), or with [`Kernels::Reference`] composed from stock differentiable ops.
//!
//! candle's fused `layer_norm`/`rms_norm` (and `candle_nn::RmsNorm` on contiguous input) have no
//! backward pass and silently cut gradients (DESIGN.md §7), so they are never used.

use llmlab_plugin_api::candle::{Result, Tensor};
use llmlab_plugin_api::candle_nn::{Init, VarBuilder};
use llmlab_plugin_api::serde::{Deserialize, Serialize};

use crate::ops::{self, Kernels};

/// Which normalisation a layer applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum NormKind {
    /// LayerNorm (GPT-2): mean and variance, weight and (with `bias`) bias.
    Layer,
    /// RMSNorm (Llama): root mean square, weight only.
    Rms,
}

#[derive(Debug, Clone)]
pub struct Norm {
    kind: NormKind,
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
    kernels: Kernels,
}

impl Norm {
    /// `weight` (ones) and, for LayerNorm with `bias`, `bias` (zeros), under `vb`.
    pub fn new(kind: NormKind, dim: usize, bias: bool, eps: f64, vb: VarBuilder) -> Result<Norm> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = match (kind, bias) {
            (NormKind::Layer, true) => Some(vb.get_with_hints(dim, "bias", Init::Const(0.0))?),
            _ => None,
        };
        Ok(Norm {
            kind,
            weight,
            bias,
            eps,
            kernels: Kernels::Fused,
        })
    }

    /// The same norm on the given kernels.
    pub fn with_kernels(self, kernels: Kernels) -> Norm {
        Norm { kernels, ..self }
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b, eps) = (&self.weight, self.bias.as_ref(), self.eps);
        match (self.kind, self.kernels) {
            (NormKind::Layer, Kernels::Fused) => ops::layer_norm(x, w, b, eps),
            (NormKind::Layer, Kernels::Reference) => {
                ops::layer_norm::layer_norm_reference(x, w, b, eps)
            }
            (NormKind::Rms, Kernels::Fused) => ops::rms_norm(x, w, eps),
            (NormKind::Rms, Kernels::Reference) => ops::rms_norm::rms_norm_reference(x, w, eps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::{DType, Device};
    use llmlab_plugin_api::candle_nn::VarMap;

    fn norm(kind: NormKind) -> Norm {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Norm::new(kind, 4, true, 1e-5, vb).unwrap()
    }

    #[test]
    fn fused_and_reference_kernels_agree() {
        let x = Tensor::new(&[[1f32, 2., 3., 7.], [0.5, -1., 2., 0.]], &Device::Cpu).unwrap();
        for kind in [NormKind::Layer, NormKind::Rms] {
            let fused = norm(kind).forward(&x).unwrap();
            let reference = norm(kind)
                .with_kernels(Kernels::Reference)
                .forward(&x)
                .unwrap();
            let diff = (fused - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "{kind:?}");
        }
    }

    #[test]
    fn layer_norm_matches_candle_fused_kernel() {
        let x = Tensor::new(&[[1f32, 2., 3., 7.], [0.5, -1., 2., 0.]], &Device::Cpu).unwrap();
        let ours = norm(NormKind::Layer).forward(&x).unwrap();
        let ones = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        let zeros = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let fused = llmlab_plugin_api::candle_nn::ops::layer_norm(&x, &ones, &zeros, 1e-5).unwrap();
        let diff = (ours - fused).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn rms_norm_matches_candle_fused_kernel() {
        let x = Tensor::new(&[[1f32, 2., 3., 7.], [0.5, -1., 2., 0.]], &Device::Cpu).unwrap();
        let ours = norm(NormKind::Rms).forward(&x).unwrap();
        let ones = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        let fused = llmlab_plugin_api::candle_nn::ops::rms_norm(&x, &ones, 1e-5).unwrap();
        let diff = (ours - fused).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
