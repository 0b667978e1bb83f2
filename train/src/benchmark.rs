//! The pieces every throughput benchmark shares, so `llmlab bench train` (host) and the gpt
//! plugin's `bench` example measure the same thing on the same shapes: the reference shapes of
//! the PyTorch peer (`shared/bench/torch_gpt.py`) and one timed forward pass.

use std::time::Instant;

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::{ForwardOptions, Model, Result};

/// A model and batch shape of the reference benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceShape {
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    pub ctx: usize,
    pub vocab: usize,
    pub batch: usize,
}

/// The shapes by name: `tiny`, `small`, `gpt2`.
pub fn reference_shape(name: &str) -> Option<ReferenceShape> {
    let [n_layer, n_head, d_model, ctx, vocab, batch] = match name {
        "tiny" => [4, 4, 256, 128, 2048, 16],
        "small" => [6, 6, 384, 256, 4096, 8],
        "gpt2" => [12, 12, 768, 1024, 50304, 8],
        _ => return None,
    };
    Some(ReferenceShape {
        n_layer,
        n_head,
        d_model,
        ctx,
        vocab,
        batch,
    })
}

/// Mean seconds of one inference forward pass over `ids`, after `warmup` untimed passes.
pub fn forward_seconds(
    model: &dyn Model,
    ids: &Tensor,
    warmup: usize,
    steps: usize,
) -> Result<f64> {
    let options = ForwardOptions::inference();
    for _ in 0..warmup {
        model.forward(ids, &options)?;
    }
    // On a GPU the calls only queue kernels: wait for them on both ends of the clock.
    ids.device().synchronize()?;
    let start = Instant::now();
    for _ in 0..steps.max(1) {
        model.forward(ids, &options)?;
    }
    ids.device().synchronize()?;
    Ok(start.elapsed().as_secs_f64() / steps.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_shapes_are_the_peers() {
        let tiny = reference_shape("tiny").unwrap();
        assert_eq!(
            (tiny.n_layer, tiny.d_model, tiny.ctx, tiny.batch),
            (4, 256, 128, 16)
        );
        assert_eq!(reference_shape("gpt2").unwrap().vocab, 50304);
        assert!(reference_shape("huge").is_none());
    }
}
