//! Gradients of a model's parameters across several backward passes (gradient accumulation,
//! or two forward passes feeding one loss): [`accumulate`] moves each parameter's gradient out
//! of a candle `GradStore` and adds it to the running sum.

use crate::candle::backprop::GradStore;
use crate::candle::{Tensor, Var};
use crate::Result;

/// Adds the gradient `store` holds for each of `params` to `sums` (same order as `params`).
/// Parameters without a gradient keep their slot as it was (`None` until one arrives).
pub fn accumulate(
    sums: &mut [Option<Tensor>],
    store: &mut GradStore,
    params: &[(String, Var)],
) -> Result<()> {
    for ((_, var), slot) in params.iter().zip(sums.iter_mut()) {
        if let Some(g) = store.remove(var.as_tensor()) {
            *slot = Some(match slot.take() {
                None => g,
                Some(sum) => (sum + g)?,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::Device;

    #[test]
    fn sums_gradients_of_two_backward_passes() {
        let w = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let mut sums = vec![None];
        for scale in [1.0, 3.0] {
            let loss = w.as_tensor().affine(scale, 0.0).unwrap().sum_all().unwrap();
            let mut store = loss.backward().unwrap();
            accumulate(&mut sums, &mut store, &params).unwrap();
        }
        let g: Vec<f32> = sums[0].as_ref().unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![4.0, 4.0]);
    }
}
