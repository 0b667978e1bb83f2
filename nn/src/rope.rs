//! Rotary position embeddings (RoFormer, Su et al. 2021), "rotate half" layout as in
//! GPT-NeoX and Llama: the first and second half of each head are the pair rotated together.
//!
//! Precomputed cos/sin tables. Training applies them with the fused kernel of
//! `crate::ops::rope` to the packed q/k/v projection ([`Rope::apply_packed`]);
//! cached decoding and `kernels: "reference"` use `narrow`/`cat`/`mul` ([`Rope::apply`]). Both
//! have a backward (candle's `rotary_emb::rope*` kernels do not, DESIGN.md §7).

use llmlab_plugin_api::candle::{DType, Device, Result, Tensor, D};
use llmlab_plugin_api::serde::{Deserialize, Serialize};

use crate::cache::Positions;

/// How RoPE frequencies are stretched for contexts beyond pretraining (HF `rope_scaling`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(
    crate = "llmlab_plugin_api::serde",
    tag = "type",
    rename_all = "lowercase",
    deny_unknown_fields
)]
pub enum RopeScaling {
    /// Position interpolation (Chen et al. 2023): every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's: long wavelengths divided by `factor`, short ones kept, a smooth ramp
    /// between (`low_freq_factor`, `high_freq_factor`, over `original_max_position_embeddings`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

#[derive(Debug, Clone)]
pub struct Rope {
    /// `(ctx, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
}

/// Llama 3.1's frequency scaling, as transformers' `_compute_llama3_parameters` does it.
fn llama3_scaled(
    inv_freq: f64,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_ctx: usize,
) -> f64 {
    let original_ctx = original_ctx as f64;
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    let low_freq_wavelen = original_ctx / low_freq_factor;
    let high_freq_wavelen = original_ctx / high_freq_factor;
    if wavelen > low_freq_wavelen {
        inv_freq / factor
    } else if wavelen < high_freq_wavelen {
        inv_freq
    } else {
        let smooth =
            (original_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

impl Rope {
    pub fn new(
        head_dim: usize,
        ctx: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Rope> {
        Rope::scaled(head_dim, ctx, theta, None, dtype, device)
    }

    pub fn scaled(
        head_dim: usize,
        ctx: usize,
        theta: f64,
        scaling: Option<&RopeScaling>,
        dtype: DType,
        device: &Device,
    ) -> Result<Rope> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                // transformers computes the base frequencies in f32; so do we, to match it.
                let f = 1.0 / (theta as f32).powf(2.0 * i as f32 / head_dim as f32);
                let f = f as f64;
                let scaled = match scaling {
                    None => f,
                    Some(RopeScaling::Linear { factor }) => f / factor,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => llama3_scaled(
                        f,
                        *factor,
                        *low_freq_factor,
                        *high_freq_factor,
                        *original_max_position_embeddings,
                    ),
                };
                scaled as f32
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, ctx as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((ctx, 1))?;
        let freqs = t.broadcast_mul(&inv_freq)?;
        Ok(Rope {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// Rotates the first `rotated` heads of the packed `qkv` `(batch, seq, heads, head_dim)` by
    /// the angles of positions `0..seq` (the fused kernel; falls back off CPU f32).
    pub fn apply_packed(&self, qkv: &Tensor, rotated: usize) -> Result<Tensor> {
        let t = qkv.dim(1)?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        crate::ops::rope_packed(qkv, &cos, &sin, rotated)
    }

    /// Rotates `x` `(batch, heads, seq, head_dim)` by the angles of `positions`.
    pub fn apply(&self, x: &Tensor, positions: &Positions) -> Result<Tensor> {
        let (b, _, t, hd) = x.dims4()?;
        let half = hd / 2;
        let (cos, sin) = match positions {
            Positions::Offset(offset) => (
                self.cos.narrow(0, *offset, t)?.reshape((1, 1, t, half))?,
                self.sin.narrow(0, *offset, t)?.reshape((1, 1, t, half))?,
            ),
            Positions::PerRow(ids) => {
                let flat = ids.flatten_all()?;
                (
                    self.cos.index_select(&flat, 0)?.reshape((b, 1, t, half))?,
                    self.sin.index_select(&flat, 0)?.reshape((b, 1, t, half))?,
                )
            }
        };
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[r1, r2], D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candle_rope_kernel_and_keeps_norms() {
        let dev = Device::Cpu;
        let rope = Rope::new(8, 16, 10_000.0, DType::F32, &dev).unwrap();
        let x = Tensor::randn(0f32, 1f32, (2, 3, 5, 8), &dev).unwrap();
        let ours = rope.apply(&x, &Positions::Offset(4)).unwrap();
        let cos = rope.cos.narrow(0, 4, 5).unwrap();
        let sin = rope.sin.narrow(0, 4, 5).unwrap();
        let fused = llmlab_plugin_api::candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
        let diff = (&ours - fused).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // A rotation keeps each head vector's length.
        let n0 = x
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let n1 = ours
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((n0 - n1).abs() / n0 < 1e-5);
    }

    #[test]
    fn per_row_positions_equal_offsets() {
        let dev = Device::Cpu;
        let rope = Rope::new(4, 8, 10_000.0, DType::F32, &dev).unwrap();
        let x = Tensor::randn(0f32, 1f32, (2, 1, 3, 4), &dev).unwrap();
        let ids = Tensor::new(&[[2u32, 3, 4], [2, 3, 4]], &dev).unwrap();
        let a = rope.apply(&x, &Positions::PerRow(ids)).unwrap();
        let b = rope.apply(&x, &Positions::Offset(2)).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
