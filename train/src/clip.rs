//! Gradient clipping by global L2 norm. [`global_norm`] measures the norm of all gradients
//! together; [`clip_scale`] is the factor to multiply them by, which AdamW folds into its update
//! instead of rescaling every gradient tensor.

use crate::candle::{CpuStorage, DType, Storage, Tensor};
use crate::Result;

/// `sqrt(sum of g²)` over every gradient, accumulated in f64. CPU f32 gradients are read in
/// place; others go through tensor ops.
pub fn global_norm<'a>(grads: impl IntoIterator<Item = &'a Tensor>) -> Result<f64> {
    let mut sum_sq = 0f64;
    for grad in grads {
        sum_sq += sum_of_squares(grad)?;
    }
    Ok(sum_sq.sqrt())
}

fn sum_of_squares(grad: &Tensor) -> Result<f64> {
    {
        let (storage, layout) = grad.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(values[start..end]
                .iter()
                .map(|&g| (g as f64) * (g as f64))
                .sum());
        }
    }
    Ok(grad
        .to_dtype(DType::F32)?
        .sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when it is already
/// within it, or when clipping is off: `max_norm == 0`).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::Device;

    #[test]
    fn norm_covers_all_tensors_and_clipping_caps_it() {
        let a = Tensor::new(&[3f32, 0.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0f32, 4.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let norm = global_norm([&a, &b]).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);

        let scale = clip_scale(norm, 1.0);
        let clipped = [(&a * scale).unwrap(), (&b * scale).unwrap()];
        let after = global_norm(clipped.iter()).unwrap();
        assert!(after <= 1.0 && after > 0.999, "{after}");

        assert_eq!(clip_scale(norm, 10.0), 1.0);
        assert_eq!(clip_scale(norm, 0.0), 1.0);
    }

    #[test]
    fn strided_and_f64_gradients_use_the_generic_path() {
        let t = Tensor::new(&[[1f64, 2.0], [3.0, 4.0]], &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        assert!((global_norm([&t]).unwrap() - 30f64.sqrt()).abs() < 1e-6);
    }
}
