//! The KV cache of a decoder-only transformer for incremental decoding, and the token positions
//! and padding mask it implies. A model makes one with its layer count and uses it from its
//! attention layers; the generation engine (`generate.rs`) only passes it along.
//!
//! Per layer the keys and values of every token decoded so far, `(batch, n_kv_head, seq,
//! head_dim)`, before grouped-query heads are repeated. Batched generation left-pads prompts:
//! the first `pad[row]` entries of a row are padding that attention masks out, and that row's
//! positions count from its first real token.

use std::any::Any;

use llmlab_plugin_api::candle::{Device, Result, Tensor};
use llmlab_plugin_api::KvCache;

/// Position ids of the tokens in one forward pass.
#[derive(Debug, Clone)]
pub enum Positions {
    /// Every row at `offset, offset + 1, ...` (no padding).
    Offset(usize),
    /// `(batch, seq)` u32 position of each token (left-padded rows).
    PerRow(Tensor),
}

pub struct DecoderCache {
    batch: usize,
    layers: Vec<Option<(Tensor, Tensor)>>,
    seq_len: usize,
    /// Left padding of each row, in tokens.
    pad: Vec<usize>,
}

impl DecoderCache {
    pub fn new(n_layer: usize, batch: usize) -> DecoderCache {
        DecoderCache {
            batch,
            layers: vec![None; n_layer],
            seq_len: 0,
            pad: vec![0; batch],
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Declares the left padding of each row; only on an empty cache.
    pub fn set_padding(&mut self, pad: Vec<usize>) -> Result<()> {
        if self.seq_len != 0 || pad.len() != self.batch {
            llmlab_plugin_api::candle::bail!(
                "padding is set once, on an empty cache, one entry per row"
            );
        }
        self.pad = pad;
        Ok(())
    }

    pub fn padding(&self) -> &[usize] {
        &self.pad
    }

    fn padded(&self) -> bool {
        self.pad.iter().any(|&p| p > 0)
    }

    /// The positions of `new` tokens appended next.
    pub fn positions(&self, new: usize, device: &Device) -> Result<Positions> {
        if !self.padded() {
            return Ok(Positions::Offset(self.seq_len));
        }
        let ids: Vec<u32> = self
            .pad
            .iter()
            .flat_map(|&p| {
                (self.seq_len..self.seq_len + new).map(move |i| i.saturating_sub(p) as u32)
            })
            .collect();
        Ok(Positions::PerRow(Tensor::from_vec(
            ids,
            (self.batch, new),
            device,
        )?))
    }

    /// Additive mask `(batch, 1, new, seq_len + new)` hiding padding keys, or `None` when there
    /// is no padding. A padding query sees only itself, so no row is fully masked.
    pub fn padding_mask(&self, new: usize, device: &Device) -> Result<Option<Tensor>> {
        if !self.padded() {
            return Ok(None);
        }
        let total = self.seq_len + new;
        let mut mask = vec![0f32; self.batch * new * total];
        for (row, &pad) in self.pad.iter().enumerate() {
            for q in 0..new {
                let query = self.seq_len + q;
                for key in 0..total {
                    let hidden = key > query || (key < pad && key != query);
                    if hidden {
                        mask[(row * new + q) * total + key] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(
            mask,
            (self.batch, 1, new, total),
            device,
        )?))
    }

    /// Appends layer `layer`'s new keys and values; returns all of them.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((k0, v0)) => (Tensor::cat(&[k0, k], 2)?, Tensor::cat(&[v0, v], 2)?),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }

    /// Called once per forward pass, after every layer appended `new` tokens.
    pub fn advance(&mut self, new: usize) {
        self.seq_len += new;
    }

    /// Keeps rows `rows` (in that order, repeats allowed): beam search reordering.
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        let device = match self.layers.iter().flatten().next() {
            Some((k, _)) => k.device().clone(),
            None => Device::Cpu,
        };
        let index = Tensor::new(rows, &device)?;
        for layer in self.layers.iter_mut().flatten() {
            *layer = (
                layer.0.index_select(&index, 0)?,
                layer.1.index_select(&index, 0)?,
            );
        }
        self.pad = rows.iter().map(|&r| self.pad[r as usize]).collect();
        self.batch = rows.len();
        Ok(())
    }
}

impl KvCache for DecoderCache {
    fn seq_len(&self) -> usize {
        self.seq_len
    }

    fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.seq_len = 0;
        self.pad = vec![0; self.batch];
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
