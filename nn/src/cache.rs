//! The KV cache of a decoder-only transformer for incremental decoding, and the token positions
//! and padding mask it implies. A model makes one with its layer count and uses it from its
//! attention layers; the generation engine (`generate.rs`) only passes it along.
//!
//! Per layer the keys and values of every token decoded so far, `(batch, n_kv_head, seq,
//! head_dim)`, before grouped-query heads are repeated. Batched generation left-pads prompts:
//! the first `pad[row]` entries of a row are padding that attention masks out, and that row's
//! positions count from its first real token.
//!
//! Continuous batching (`Model::decode_step`) decodes sequences that each own a one-row cache of
//! its own length: [`DecoderCache::stack`] left-pads them into one batch for a single forward
//! pass and [`DecoderCache::unstack_new`] hands each row's new keys and values back.

use std::any::Any;

use llmlab_plugin_api::candle::{bail, Device, Result, Tensor};
use llmlab_plugin_api::KvCache;

/// Position ids of the tokens in one forward pass.
#[derive(Debug, Clone)]
pub enum Positions {
    /// Every row at `offset, offset + 1, ...` (no padding).
    Offset(usize),
    /// `(batch, seq)` u32 position of each token (left-padded rows).
    PerRow(Tensor),
}

#[derive(Debug)]
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

    /// One-row caches of different lengths as one batch, each row left-padded to the longest
    /// (its padding masked out, its positions still counted from its own first token). The
    /// rows are copied; after the pass, [`DecoderCache::unstack_new`] appends the new tokens to
    /// each row's own cache.
    pub fn stack(rows: &[&DecoderCache]) -> Result<DecoderCache> {
        let Some(first) = rows.first() else {
            bail!("stack: no caches")
        };
        let longest = rows.iter().map(|r| r.seq_len).max().unwrap_or(0);
        let mut pad = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            if r.batch != 1 || r.layers.len() != first.layers.len() {
                bail!(
                    "stack: cache {i} has {} rows and {} layers; one row each, {} layers",
                    r.batch,
                    r.layers.len(),
                    first.layers.len()
                );
            }
            pad.push(longest - r.seq_len + r.pad[0]);
        }
        let mut layers = Vec::with_capacity(first.layers.len());
        for layer in 0..first.layers.len() {
            let (mut ks, mut vs) = (Vec::with_capacity(rows.len()), Vec::new());
            for (i, r) in rows.iter().enumerate() {
                let Some((k, v)) = &r.layers[layer] else {
                    bail!("stack: cache {i} is empty (prefill it first)")
                };
                ks.push(pad_left(k, longest - r.seq_len)?);
                vs.push(pad_left(v, longest - r.seq_len)?);
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)));
        }
        Ok(DecoderCache {
            batch: rows.len(),
            layers,
            seq_len: longest,
            pad,
        })
    }

    /// After a pass of `new` tokens over `stacked` (made by [`DecoderCache::stack`] from
    /// `rows`, in that order), each row's cache holds its old and new keys and values.
    pub fn unstack_new(
        stacked: &DecoderCache,
        rows: &mut [&mut DecoderCache],
        new: usize,
    ) -> Result<()> {
        if rows.len() != stacked.batch {
            bail!(
                "unstack: {} caches for a batch of {}",
                rows.len(),
                stacked.batch
            );
        }
        // Each row becomes its own span of the stacked tensors (a view: the stack already copied
        // the row's old entries, so appending by concatenation would copy them a second time
        // every step). The next `stack` or `append` makes a fresh contiguous tensor from it.
        for (layer, kv) in stacked.layers.iter().enumerate() {
            let Some((k, v)) = kv else {
                bail!("unstack: layer {layer} is empty")
            };
            let total = k.dim(2)?;
            for (i, row) in rows.iter_mut().enumerate() {
                let len = row.seq_len + new;
                if len > total {
                    bail!("unstack: cache {i} holds more tokens than the batch");
                }
                row.layers[layer] = Some((
                    k.narrow(0, i, 1)?.narrow(2, total - len, len)?,
                    v.narrow(0, i, 1)?.narrow(2, total - len, len)?,
                ));
            }
        }
        rows.iter_mut().for_each(|r| r.advance(new));
        Ok(())
    }

    /// Each row as a one-row cache of its own, its left padding dropped: a batch of left-padded
    /// prompts prefilled together becomes the caches each prompt alone would have left (the
    /// positions were already counted from each row's first real token). Continuous batching's
    /// batched prefill.
    pub fn split_rows(&self) -> Result<Vec<DecoderCache>> {
        let mut rows: Vec<DecoderCache> = self
            .pad
            .iter()
            .map(|&pad| DecoderCache {
                batch: 1,
                layers: Vec::with_capacity(self.layers.len()),
                seq_len: self.seq_len - pad,
                pad: vec![0],
            })
            .collect();
        for layer in &self.layers {
            for (i, row) in rows.iter_mut().enumerate() {
                let kv = match layer {
                    None => None,
                    Some((k, v)) => {
                        let (start, len) = (self.pad[i], row.seq_len);
                        Some((
                            k.narrow(0, i, 1)?.narrow(2, start, len)?.contiguous()?,
                            v.narrow(0, i, 1)?.narrow(2, start, len)?.contiguous()?,
                        ))
                    }
                };
                row.layers.push(kv);
            }
        }
        Ok(rows)
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

/// `x` `(batch, heads, seq, head_dim)` with `n` zero entries before its first on the sequence
/// axis.
fn pad_left(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 0 {
        return Ok(x.clone());
    }
    let (b, h, _, d) = x.dims4()?;
    let zeros = Tensor::zeros((b, h, n, d), x.dtype(), x.device())?;
    Tensor::cat(&[&zeros, x], 2)
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

    fn memory_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer, one-row cache holding `len` tokens whose keys are `first, first + 1, ...`.
    fn row(len: usize, first: f32) -> DecoderCache {
        let mut cache = DecoderCache::new(1, 1);
        let k = Tensor::arange(first, first + len as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, len, 1))
            .unwrap();
        cache.append(0, &k, &(&k * 10.0).unwrap()).unwrap();
        cache.advance(len);
        cache
    }

    fn keys(cache: &DecoderCache) -> Vec<Vec<f32>> {
        let (k, _) = cache.layers[0].as_ref().unwrap();
        k.squeeze(3).unwrap().squeeze(1).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn stack_left_pads_masks_and_positions_each_row_from_its_own_start() {
        let (a, b) = (row(3, 1.0), row(1, 7.0));
        let stacked = DecoderCache::stack(&[&a, &b]).unwrap();
        assert_eq!(stacked.padding(), &[0, 2]);
        assert_eq!(
            keys(&stacked),
            vec![vec![1.0, 2.0, 3.0], vec![0.0, 0.0, 7.0]]
        );
        let Positions::PerRow(p) = stacked.positions(1, &Device::Cpu).unwrap() else {
            panic!("padded rows have their own positions")
        };
        assert_eq!(p.to_vec2::<u32>().unwrap(), vec![vec![3], vec![1]]);
        let mask = stacked.padding_mask(1, &Device::Cpu).unwrap().unwrap();
        let mask: Vec<f32> = mask.flatten_all().unwrap().to_vec1().unwrap();
        let hidden: Vec<bool> = mask.iter().map(|m| m.is_infinite()).collect();
        assert_eq!(
            hidden,
            [false, false, false, false, true, true, false, false]
        );
    }

    #[test]
    fn unstack_appends_each_rows_new_entries_to_its_own_cache() {
        let (mut a, mut b) = (row(3, 1.0), row(1, 7.0));
        let mut stacked = DecoderCache::stack(&[&a, &b]).unwrap();
        let new = Tensor::new(&[20f32, 30.0], &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 1, 1))
            .unwrap();
        stacked.append(0, &new, &new).unwrap();
        stacked.advance(1);
        DecoderCache::unstack_new(&stacked, &mut [&mut a, &mut b], 1).unwrap();
        assert_eq!((a.seq_len(), b.seq_len()), (4, 2));
        assert_eq!(keys(&a), vec![vec![1.0, 2.0, 3.0, 20.0]]);
        assert_eq!(keys(&b), vec![vec![7.0, 30.0]]);
        assert_eq!(b.memory_bytes(), 2 * 2 * 4);
    }

    #[test]
    fn split_rows_drops_each_rows_padding_and_restacks_the_same() {
        let (a, b) = (row(3, 1.0), row(1, 7.0));
        let stacked = DecoderCache::stack(&[&a, &b]).unwrap();
        let rows = stacked.split_rows().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].seq_len(), rows[1].seq_len()), (3, 1));
        assert_eq!((rows[0].padding(), rows[1].padding()), (&[0][..], &[0][..]));
        assert_eq!(keys(&rows[0]), vec![vec![1.0, 2.0, 3.0]]);
        assert_eq!(keys(&rows[1]), vec![vec![7.0]]);
        let (_, v) = rows[1].layers[0].as_ref().unwrap();
        assert_eq!(v.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [70.0]);
        let again = DecoderCache::stack(&[&rows[0], &rows[1]]).unwrap();
        assert_eq!(keys(&again), keys(&stacked));
        assert_eq!(again.padding(), stacked.padding());
    }

    #[test]
    fn stack_refuses_empty_and_multi_row_caches() {
        let empty = DecoderCache::new(1, 1);
        let err = DecoderCache::stack(&[&row(2, 0.0), &empty]).unwrap_err();
        assert!(err.to_string().contains("cache 1 is empty"), "{err}");
        let wide = DecoderCache::new(1, 2);
        let err = DecoderCache::stack(&[&wide]).unwrap_err();
        assert!(err.to_string().contains("one row each"), "{err}");
        assert!(DecoderCache::stack(&[]).is_err());
    }
}
