//! Attention pieces every model's attention layer is assembled from: grouped-query key/value
//! repetition ([`repeat_kv`]), the attention weights of queries over (cached) keys with an
//! additive mask ([`attention_weights`]), and a composed softmax with a backward
//! ([`softmax_last_dim`]). The whole-sequence causal path is the fused kernel
//! [`crate::ops::causal_attention_packed`]; the keys and values of earlier tokens live in
//! [`crate::cache::DecoderCache`].

use llmlab_plugin_api::candle::{Result, Tensor, D};

use crate::ops;

/// Softmax over the last dimension from `max`/`exp`/`sum`, so gradients flow (candle's fused
/// softmax has none); the reference the fused [`ops::softmax_last_dim`] is checked against.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `(b, n_kv, t, hd)` → `(b, n_kv * n_rep, t, hd)`, each kv head repeated for its query group.
pub fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, n_kv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, n_kv, n_rep, t, hd))?
        .reshape((b, n_kv * n_rep, t, hd))
}

/// `softmax(q·kᵀ / sqrt(head_dim) + mask)`: `q` `(b, h, t, hd)`, `k` `(b, h, keys, hd)` (kv
/// heads already repeated), `mask` additive and broadcastable to `(b, h, t, keys)`. `fused`
/// takes the fused softmax kernel, otherwise the composed one.
pub fn attention_weights(
    q: &Tensor,
    k: &Tensor,
    mask: Option<&Tensor>,
    fused: bool,
) -> Result<Tensor> {
    let hd = q.dim(D::Minus1)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut att = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        att = att.broadcast_add(mask)?;
    }
    if fused {
        ops::softmax_last_dim(&att)
    } else {
        softmax_last_dim(&att)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::Device;

    #[test]
    fn composed_softmax_matches_candle_kernel() {
        let x = Tensor::new(
            &[[1f32, -2., 3., 0.5], [100., 101., 99., 100.]],
            &Device::Cpu,
        )
        .unwrap();
        let ours = softmax_last_dim(&x).unwrap();
        let fused = llmlab_plugin_api::candle_nn::ops::softmax_last_dim(&x).unwrap();
        let diff = (ours - fused).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn repeat_kv_repeats_each_head_for_its_group() {
        let x = Tensor::arange(0f32, 4., &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 2))
            .unwrap();
        let r = repeat_kv(x, 2).unwrap();
        assert_eq!(r.dims(), &[1, 4, 1, 2]);
        let v: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0., 1., 0., 1., 2., 3., 2., 3.]);
    }

    #[test]
    fn masked_keys_get_no_weight_and_rows_sum_to_one() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1f32, (1, 2, 3, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1f32, (1, 2, 3, 4), &dev).unwrap();
        let mask = Tensor::new(&[0f32, f32::NEG_INFINITY, 0.], &dev).unwrap();
        for fused in [true, false] {
            let w = attention_weights(&q, &k, Some(&mask), fused).unwrap();
            let masked: Vec<f32> = w
                .narrow(3, 1, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(masked.iter().all(|&x| x == 0.0), "{masked:?}");
            let sums: Vec<f32> = w.sum(3).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
        }
    }
}
