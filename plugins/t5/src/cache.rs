//! The decoding state of an encoder–decoder batch: per decoder layer the self-attention keys
//! and values of the tokens decoded so far, and the cross-attention keys and values projected
//! once from the encoder output, with the encoder's padding mask. Beam search reorders all of
//! them together (`select_rows`).

use std::any::Any;

use llmlab_plugin_api::candle::{Result, Tensor};
use llmlab_plugin_api::KvCache;

#[derive(Debug, Clone)]
pub struct T5Cache {
    batch: usize,
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Empty until the encoder has run.
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Additive `(batch, 1, 1, encoder_len)`: 0 on real encoder tokens, a large negative on
    /// padding.
    encoder_mask: Option<Tensor>,
    /// Decoder tokens so far.
    len: usize,
}

impl T5Cache {
    pub fn new(decoder_layers: usize, batch: usize) -> T5Cache {
        T5Cache {
            batch,
            self_kv: vec![None; decoder_layers],
            cross_kv: Vec::new(),
            encoder_mask: None,
            len: 0,
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn has_encoder(&self) -> bool {
        self.encoder_mask.is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the encoder side: each layer's cross keys and values and the padding mask.
    pub fn set_encoder(&mut self, cross_kv: Vec<(Tensor, Tensor)>, mask: Tensor) {
        self.cross_kv = cross_kv;
        self.encoder_mask = Some(mask);
    }

    pub fn cross(&self, layer: usize) -> Option<&(Tensor, Tensor)> {
        self.cross_kv.get(layer)
    }

    pub fn encoder_mask(&self) -> Option<&Tensor> {
        self.encoder_mask.as_ref()
    }

    /// Appends layer `layer`'s new self-attention keys and values; returns all of them.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match &self.self_kv[layer] {
            None => (k.clone(), v.clone()),
            Some((k0, v0)) => (Tensor::cat(&[k0, k], 2)?, Tensor::cat(&[v0, v], 2)?),
        };
        self.self_kv[layer] = Some(kv.clone());
        Ok(kv)
    }

    /// Called once per decoder pass, after every layer appended `new` tokens.
    pub fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Keeps rows `rows` (in that order, repeats allowed) of every tensor: beam reordering.
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        let Some(mask) = &self.encoder_mask else {
            self.batch = rows.len();
            return Ok(());
        };
        let index = Tensor::new(rows, mask.device())?;
        let pick = |t: &Tensor| t.index_select(&index, 0);
        for (k, v) in self.self_kv.iter_mut().flatten() {
            (*k, *v) = (pick(k)?, pick(v)?);
        }
        for (k, v) in self.cross_kv.iter_mut() {
            (*k, *v) = (pick(k)?, pick(v)?);
        }
        self.encoder_mask = Some(pick(mask)?);
        self.batch = rows.len();
        Ok(())
    }
}

impl KvCache for T5Cache {
    fn seq_len(&self) -> usize {
        self.len
    }

    fn reset(&mut self) {
        self.self_kv.iter_mut().for_each(|l| *l = None);
        self.cross_kv.clear();
        self.encoder_mask = None;
        self.len = 0;
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn memory_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.self_kv
            .iter()
            .flatten()
            .chain(self.cross_kv.iter())
            .map(|(k, v)| bytes(k) + bytes(v))
            .sum()
    }
}
