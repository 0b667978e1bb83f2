//! Dropout whose masks come from the model's own seeded generator, so two training runs with the
//! same seed draw the same masks and end with the same weights. candle's `ops::dropout` draws
//! from candle's CPU RNG, which cannot be seeded (`set_seed` is a no-op on CPU): with it, any
//! `dropout > 0` made runs irreproducible.
//!
//! Each dropout site (embeddings, each block's attention weights and residual branches) has its
//! own stream, `Rng::for_name(seed, "dropout/<site>")`, where `seed` is the model's init seed (the
//! session's `--seed` unless the config sets one). A mask is drawn per training forward pass, so
//! the masks depend only on the seed and on how many passes the model has made. A resumed run
//! restarts the streams (their state is not checkpointed): it is reproducible, but its masks
//! differ from those of the uninterrupted run.

use std::sync::{Arc, Mutex};

use llmlab_plugin_api::candle::{Result, Tensor};

use crate::rng::Rng;

#[derive(Clone)]
pub struct Dropout {
    p: f32,
    rng: Arc<Mutex<Rng>>,
}

impl std::fmt::Debug for Dropout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dropout({})", self.p)
    }
}

impl Dropout {
    /// Dropout with probability `p` at site `site`, masks from `seed`'s stream for that site.
    pub fn new(p: f64, seed: u64, site: &str) -> Dropout {
        Dropout {
            p: p as f32,
            rng: Arc::new(Mutex::new(Rng::for_name(seed, &format!("dropout/{site}")))),
        }
    }

    /// Whether this site drops anything (`p > 0`).
    pub fn is_active(&self) -> bool {
        self.p > 0.0
    }

    /// `x` with each entry zeroed with probability `p` and the rest scaled by `1 / (1 - p)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.is_active() {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p as f64;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            (0..x.elem_count())
                .map(|_| if rng.uniform() < keep { scale } else { 0.0 })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x.mul(&mask)
    }

    /// Draws from `other`'s stream from now on (a model rebuilt for one pass, as mixed precision
    /// does, must continue its parent's masks, not restart them).
    pub fn share(&mut self, other: &Dropout) {
        self.rng = other.rng.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::Device;

    #[test]
    fn same_seed_same_masks_and_scale_keeps_the_mean() {
        let x = Tensor::ones(
            (64, 64),
            llmlab_plugin_api::candle::DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let values = |d: &Dropout| -> Vec<f32> {
            d.forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (a, b) = (Dropout::new(0.25, 7, "h.0"), Dropout::new(0.25, 7, "h.0"));
        let first = values(&a);
        assert_eq!(first, values(&b));
        // The next pass draws a new mask.
        assert_ne!(first, values(&a));
        assert_ne!(first, values(&Dropout::new(0.25, 8, "h.0")));
        assert_ne!(first, values(&Dropout::new(0.25, 7, "h.1")));
        let dropped = first.iter().filter(|v| **v == 0.0).count() as f64 / first.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "{dropped}");
        let mean = first.iter().sum::<f32>() / first.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        assert!(first
            .iter()
            .all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
    }
}
