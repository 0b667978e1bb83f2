//! LayerNorm and RMSNorm, written out with differentiable tensor ops.
//!
//! candle's fused `layer_norm`/`rms_norm` (and `candle_nn::RmsNorm` on contiguous input) have no
//! backward pass and silently cut gradients (DESIGN.md §7), so the training path composes them.

use llmlab_plugin_api::candle::{Result, Tensor, D};
use llmlab_plugin_api::candle_nn::{Init, VarBuilder};

use crate::config::NormKind;

#[derive(Debug, Clone)]
pub struct Norm {
    kind: NormKind,
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
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
        })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let normed = match self.kind {
            NormKind::Layer => {
                let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
                let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
                centered.broadcast_div(&(var + self.eps)?.sqrt()?)?
            }
            NormKind::Rms => {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
            }
        };
        let scaled = normed.broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(b) => scaled.broadcast_add(b),
            None => Ok(scaled),
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
