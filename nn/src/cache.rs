//! The KV cache of a decoder-only transformer for incremental decoding, and the token positions
//! and padding mask it implies. A model makes one with its layer count and uses it from its
//! attention layers; the generation engine (`generate.rs`) only passes it along.
//!
//! Per layer the keys and values of every token decoded so far, `(batch, n_kv_head, seq,
//! head_dim)`, before grouped-query heads are repeated. Batched generation left-pads prompts:
//! the first `pad[row]` entries of a row are padding that attention masks out, and that row's
//! positions count from its first real token.
//!
//! Generation (`generate.rs`) knows how long its rows will get, so its cache is *preallocated*
//! ([`DecoderCache::with_room`]): per layer one storage `(batch, n_kv_head, columns, head_dim)`
//! sized once for prompt + new tokens; each pass writes its new keys and values at column
//! `seq_len` in place and attention reads the columns in use as a strided view. Without room
//! ([`DecoderCache::new`]) each append concatenates, copying the whole cache: per step that is
//! a copy of everything cached so far into freshly mapped pages.
//!
//! Continuous batching (`Model::decode_step`) decodes sequences that each own a one-row cache of
//! its own length: [`DecoderCache::stack`] left-pads them into one batch for a single forward
//! pass and [`DecoderCache::unstack_new`] hands each row's new keys and values back.
//!
//! Or, without copying any cache per step, a [`BatchCache`] (`Model::new_batch_cache`): a
//! `DecoderCache` in *batch mode* ([`DecoderCache::new_batch`]) whose keys and values live in
//! preallocated storage `(slots, n_kv_head, capacity, head_dim)` across steps, grown
//! geometrically. Row `i` is slot `i`, its tokens left-aligned in columns `0..len[i]`; a step
//! writes each row's new entry at its own column `len[i]` in place and attention reads the
//! storage where it is (the first `rows` slots are one contiguous block), every column past a
//! row's length masked out. A sequence's prefilled cache is copied into a slot once when it
//! joins; when one leaves, the last row moves into its slot.

use std::any::Any;

use llmlab_plugin_api::candle::backend::BackendStorage;
use llmlab_plugin_api::candle::{bail, CpuStorage, Device, InplaceOp2, Layout, Result, Tensor};
use llmlab_plugin_api::model::BatchKvCache;
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
    /// Batch mode ([`DecoderCache::new_batch`]): each row's own length; `layers` then hold the
    /// preallocated storage and `seq_len` is the longest row.
    rows: Option<BatchRows>,
    /// Outside batch mode, columns to preallocate ([`DecoderCache::with_room`]); `layers` then
    /// hold storage of at least this many columns, the first `seq_len` in use. 0: appends
    /// concatenate.
    room: usize,
}

#[derive(Debug, Clone)]
struct BatchRows {
    /// Tokens of each row, left-aligned in its slot.
    lens: Vec<usize>,
    /// The longest a row may get (the model's context): capacity stops growing there.
    max_len: usize,
}

impl DecoderCache {
    pub fn new(n_layer: usize, batch: usize) -> DecoderCache {
        DecoderCache {
            batch,
            layers: vec![None; n_layer],
            seq_len: 0,
            pad: vec![0; batch],
            rows: None,
            room: 0,
        }
    }

    /// An empty cache whose layers preallocate `columns` tokens per row on their first append
    /// (the module doc): appends up to that length write in place, with no copy of what is
    /// cached. Past it the storage doubles (one copy), so a wrong guess costs time, not
    /// correctness.
    pub fn with_room(n_layer: usize, batch: usize, columns: usize) -> DecoderCache {
        DecoderCache {
            room: columns.max(1),
            ..DecoderCache::new(n_layer, batch)
        }
    }

    /// Whether appends write into preallocated storage ([`DecoderCache::with_room`]).
    pub fn is_preallocated(&self) -> bool {
        self.room > 0
    }

    /// Layer `layer`'s keys and values of the tokens cached so far, `(batch, kv_heads,
    /// seq_len, head_dim)` (outside batch mode; a view of the storage when preallocated).
    pub fn layer(&self, layer: usize) -> Result<Option<(Tensor, Tensor)>> {
        self.refuse_batch_mode("layer")?;
        match self.layers.get(layer) {
            Some(Some((k, v))) if self.room > 0 => Ok(Some((
                k.narrow(2, 0, self.seq_len)?,
                v.narrow(2, 0, self.seq_len)?,
            ))),
            Some(kv) => Ok(kv.clone()),
            None => bail!("cache: no layer {layer} in {}", self.layers.len()),
        }
    }

    /// An empty cache in batch mode for continuous batching (the module doc): rows join with
    /// [`DecoderCache::push_row`] and leave with [`DecoderCache::swap_remove_row`], each of
    /// its own length, no row longer than `max_len`.
    pub fn new_batch(n_layer: usize, max_len: usize) -> DecoderCache {
        DecoderCache {
            batch: 0,
            layers: vec![None; n_layer],
            seq_len: 0,
            pad: Vec::new(),
            rows: Some(BatchRows {
                lens: Vec::new(),
                max_len,
            }),
            room: 0,
        }
    }

    /// Whether this is a batch-mode cache ([`DecoderCache::new_batch`]).
    pub fn is_batch(&self) -> bool {
        self.rows.is_some()
    }

    fn refuse_batch_mode(&self, op: &str) -> Result<()> {
        if self.rows.is_some() {
            bail!("{op}: not for a batch-mode cache (continuous batching's persistent batch)")
        }
        Ok(())
    }

    /// Tokens of row `row` (outside batch mode: `seq_len` less the row's left padding).
    pub fn row_len(&self, row: usize) -> usize {
        match &self.rows {
            Some(r) => r.lens.get(row).copied().unwrap_or(0),
            None => self.seq_len - self.pad.get(row).copied().unwrap_or(0),
        }
    }

    /// Slots and columns the storage has room for (batch mode or preallocated; `(0, 0)` before
    /// any append; when appends concatenate, the rows and tokens cached).
    pub fn capacity(&self) -> (usize, usize) {
        match self.layers.iter().flatten().next() {
            Some((k, _)) => (k.dim(0).unwrap_or(0), k.dim(2).unwrap_or(0)),
            None => (0, 0),
        }
    }

    /// Batch mode: a sequence joins as the last row with the keys and values of `row` (a one-row
    /// cache, any left padding dropped), copied into a free slot once.
    pub fn push_row(&mut self, row: &DecoderCache) -> Result<()> {
        if self.rows.is_none() {
            bail!("push_row: only a batch-mode cache (DecoderCache::new_batch) takes rows")
        }
        if row.batch != 1 || row.rows.is_some() || row.layers.len() != self.layers.len() {
            bail!(
                "push_row: the row's cache has {} rows and {} layers; one row and {} layers \
                 (a sequence's own cache)",
                row.batch,
                row.layers.len(),
                self.layers.len()
            );
        }
        let (pad, len) = (row.pad[0], row.seq_len - row.pad[0]);
        if len == 0 {
            bail!("push_row: the row's cache is empty (prefill it first)");
        }
        let n = self.batch;
        self.grow(n + 1, len, Some(row))?;
        for (layer, kv) in row.layers.iter().enumerate() {
            let Some((k, v)) = kv else {
                bail!("push_row: layer {layer} of the row's cache is empty")
            };
            let Some((bk, bv)) = &self.layers[layer] else {
                bail!("push_row: layer {layer} has no storage")
            };
            for (buf, x) in [(bk, k), (bv, v)] {
                let x = x.narrow(2, pad, len)?.contiguous()?.to_dtype(buf.dtype())?;
                buf.narrow(0, n, 1)?.slice_set(&x, 2, 0)?;
            }
        }
        let rows = self.rows.as_mut().expect("batch mode");
        rows.lens.push(len);
        self.batch = n + 1;
        self.pad.push(0);
        self.seq_len = self.seq_len.max(len);
        Ok(())
    }

    /// Batch mode: row `row` leaves; the last row moves into its slot ([`Vec::swap_remove`]).
    pub fn swap_remove_row(&mut self, row: usize) -> Result<()> {
        let Some(rows) = self.rows.as_mut() else {
            bail!("swap_remove_row: only for a batch-mode cache")
        };
        if row >= rows.lens.len() {
            bail!("swap_remove_row: no row {row} in {} rows", rows.lens.len())
        }
        let last = rows.lens.len() - 1;
        if row != last {
            let len = rows.lens[last];
            for (k, v) in self.layers.iter().flatten() {
                for buf in [k, v] {
                    // A copy of its own first: slice_set refuses a source sharing the storage.
                    let moving = buf
                        .narrow(0, last, 1)?
                        .narrow(2, 0, len)?
                        .force_contiguous()?;
                    buf.narrow(0, row, 1)?.slice_set(&moving, 2, 0)?;
                }
            }
        }
        rows.lens.swap_remove(row);
        self.batch = rows.lens.len();
        self.pad.truncate(self.batch);
        self.seq_len = rows.lens.iter().copied().max().unwrap_or(0);
        if self.batch == 0 {
            // An idle server holds no keys and values; the next row allocates afresh.
            self.layers.iter_mut().for_each(|l| *l = None);
        }
        Ok(())
    }

    /// Batch mode: room for `new` more tokens in every row, growing the storage if needed.
    pub fn reserve(&mut self, new: usize) -> Result<()> {
        self.grow(self.batch, self.seq_len + new, None)
    }

    /// Room for `slots` rows of `len` tokens: a new storage at least twice the old in the
    /// dimension that is short (columns no further than `max_len` unless `len` needs it), the
    /// rows copied over. Doubling keeps the copies to a constant per token over a server's life.
    /// A layer without storage yet takes its heads, width, dtype and device from `like`'s.
    fn grow(&mut self, slots: usize, len: usize, like: Option<&DecoderCache>) -> Result<()> {
        let max_len = match &self.rows {
            Some(r) => r.max_len,
            None => bail!("grow: only for a batch-mode cache"),
        };
        let (have_slots, have_cols) = self.capacity();
        if have_slots >= slots && have_cols >= len && self.layers.iter().all(Option::is_some) {
            return Ok(());
        }
        let new_slots = if have_slots >= slots {
            have_slots
        } else {
            slots.max(2 * have_slots).max(4)
        };
        let new_cols = if have_cols >= len {
            have_cols
        } else {
            len.max((2 * have_cols).clamp(16, max_len.max(16)))
        };
        let n = self.batch;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let template = match (layer.as_ref(), like) {
                (Some((k, _)), _) => k.clone(),
                (None, Some(like)) => match &like.layers[i] {
                    Some((k, _)) => k.clone(),
                    None => bail!("batch cache: layer {i} of the row's cache is empty"),
                },
                (None, None) => bail!("batch cache: no storage before the first row"),
            };
            let (_, kv, _, hd) = template.dims4()?;
            let grown = |old: Option<&Tensor>| -> Result<Tensor> {
                // Zeros, not uninitialised memory: masked columns are still multiplied by 0,
                // and a NaN there would survive that.
                let new = Tensor::zeros(
                    (new_slots, kv, new_cols, hd),
                    template.dtype(),
                    template.device(),
                )?;
                if let Some(old) = old.filter(|_| n > 0) {
                    new.narrow(0, 0, n)?
                        .slice_set(&old.narrow(0, 0, n)?, 2, 0)?;
                }
                Ok(new)
            };
            let (k, v) = match layer.as_ref() {
                Some((k, v)) => (grown(Some(k))?, grown(Some(v))?),
                None => (grown(None)?, grown(None)?),
            };
            *layer = Some((k, v));
        }
        Ok(())
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Declares the left padding of each row; only on an empty cache.
    pub fn set_padding(&mut self, pad: Vec<usize>) -> Result<()> {
        self.refuse_batch_mode("set_padding")?;
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
        if let Some(rows) = &self.rows {
            let ids: Vec<u32> = rows
                .lens
                .iter()
                .flat_map(|&len| (len..len + new).map(|i| i as u32))
                .collect();
            return Ok(Positions::PerRow(Tensor::from_vec(
                ids,
                (self.batch, new),
                device,
            )?));
        }
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
    /// is no padding. A padding query sees only itself, so no row is fully masked. In batch mode
    /// the same width (`seq_len` is the longest row), hiding each row's columns past its own
    /// tokens (and the causal future of the `new` ones).
    pub fn padding_mask(&self, new: usize, device: &Device) -> Result<Option<Tensor>> {
        if let Some(rows) = &self.rows {
            let total = self.seq_len + new;
            let mut mask = vec![f32::NEG_INFINITY; self.batch * new * total];
            for (row, &len) in rows.lens.iter().enumerate() {
                for q in 0..new {
                    let visible = (len + q + 1).min(total);
                    let at = (row * new + q) * total;
                    mask[at..at + visible].fill(0.0);
                }
            }
            return Ok(Some(Tensor::from_vec(
                mask,
                (self.batch, 1, new, total),
                device,
            )?));
        }
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

    /// Appends layer `layer`'s new keys and values; returns all of them. In batch mode each
    /// row's are written in place at its own length, and the storage of the rows is returned as
    /// a view narrowed to the columns any row uses, `(rows, kv_heads, seq_len + new, head_dim)`
    /// (strided: the fused attention reads it in place), for [`DecoderCache::padding_mask`] to
    /// cut per row. Attention over the whole capacity would read up to twice the columns in
    /// use (the storage doubles).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some(rows) = &self.rows {
            let Some((bk, bv)) = &self.layers[layer] else {
                bail!("batch cache: layer {layer} has no storage (no row pushed)")
            };
            let (b, _, new, _) = k.dims4()?;
            let (_, cap) = self.capacity();
            if b != self.batch || rows.lens.iter().any(|&len| len + new > cap) {
                bail!(
                    "batch cache: {b} rows of {new} new tokens for {} rows with room for {cap} \
                     (reserve first)",
                    self.batch
                );
            }
            let at: Vec<(usize, usize)> = rows.lens.iter().copied().enumerate().collect();
            write_rows(bk, k, &at)?;
            write_rows(bv, v, &at)?;
            let used = self.seq_len + new;
            return Ok((
                bk.narrow(0, 0, b)?.narrow(2, 0, used)?,
                bv.narrow(0, 0, b)?.narrow(2, 0, used)?,
            ));
        }
        if self.room > 0 {
            return self.append_in_place(layer, k, v);
        }
        let kv = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((k0, v0)) => (Tensor::cat(&[k0, k], 2)?, Tensor::cat(&[v0, v], 2)?),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }

    /// [`DecoderCache::append`] of a preallocated cache: the new entries written at column
    /// `seq_len` of every row (left padding keeps the rows' columns aligned), the columns in use
    /// returned as a view (strided; the fused attention reads it in place).
    fn append_in_place(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, kv, new, hd) = k.dims4()?;
        if b != self.batch || v.dims() != k.dims() {
            bail!(
                "cache: keys {:?} and values {:?} for a cache of {} rows",
                k.dims(),
                v.dims(),
                self.batch
            );
        }
        let (start, used) = (self.seq_len, self.seq_len + new);
        let have = match &self.layers[layer] {
            Some((sk, _)) => sk.dim(2)?,
            None => 0,
        };
        if have < used {
            let cols = used.max(self.room).max(2 * have);
            let grown = |old: Option<&Tensor>| -> Result<Tensor> {
                // Attention reads only the columns in use, so zeros are for safety, and they
                // cost nothing up front: the allocator hands out untouched zero pages.
                let storage = Tensor::zeros((b, kv, cols, hd), k.dtype(), k.device())?;
                if let Some(old) = old.filter(|_| start > 0) {
                    storage.slice_set(&old.narrow(2, 0, start)?.contiguous()?, 2, 0)?;
                }
                Ok(storage)
            };
            let old = self.layers[layer].take();
            self.layers[layer] = Some((
                grown(old.as_ref().map(|(k, _)| k))?,
                grown(old.as_ref().map(|(_, v)| v))?,
            ));
        }
        let Some((sk, sv)) = &self.layers[layer] else {
            bail!("cache: layer {layer} has no storage")
        };
        for (storage, x) in [(sk, k), (sv, v)] {
            storage.slice_set(&x.contiguous()?.to_dtype(storage.dtype())?, 2, start)?;
        }
        Ok((sk.narrow(2, 0, used)?, sv.narrow(2, 0, used)?))
    }

    /// Called once per forward pass, after every layer appended `new` tokens.
    pub fn advance(&mut self, new: usize) {
        self.seq_len += new;
        if let Some(rows) = &mut self.rows {
            rows.lens.iter_mut().for_each(|len| *len += new);
        }
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
            r.refuse_batch_mode("stack")?;
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
                let Some((k, v)) = r.layer(layer)? else {
                    bail!("stack: cache {i} is empty (prefill it first)")
                };
                ks.push(pad_left(&k, longest - r.seq_len)?);
                vs.push(pad_left(&v, longest - r.seq_len)?);
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)));
        }
        Ok(DecoderCache {
            batch: rows.len(),
            layers,
            seq_len: longest,
            pad,
            rows: None,
            room: 0,
        })
    }

    /// After a pass of `new` tokens over `stacked` (made by [`DecoderCache::stack`] from
    /// `rows`, in that order), each row's cache holds its old and new keys and values.
    pub fn unstack_new(
        stacked: &DecoderCache,
        rows: &mut [&mut DecoderCache],
        new: usize,
    ) -> Result<()> {
        stacked.refuse_batch_mode("unstack_new")?;
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
        rows.iter_mut().for_each(|r| {
            // Its layers are now views of the stack, not its own storage.
            r.room = 0;
            r.advance(new);
        });
        Ok(())
    }

    /// Each row as a one-row cache of its own, its left padding dropped: a batch of left-padded
    /// prompts prefilled together becomes the caches each prompt alone would have left (the
    /// positions were already counted from each row's first real token). Continuous batching's
    /// batched prefill.
    pub fn split_rows(&self) -> Result<Vec<DecoderCache>> {
        self.refuse_batch_mode("split_rows")?;
        let mut rows: Vec<DecoderCache> = self
            .pad
            .iter()
            .map(|&pad| DecoderCache {
                batch: 1,
                layers: Vec::with_capacity(self.layers.len()),
                seq_len: self.seq_len - pad,
                pad: vec![0],
                rows: None,
                room: 0,
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
    /// A preallocated cache keeps its columns (the gather copies the whole storage, a size fixed
    /// for the decoding, not the cache's current length).
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        self.refuse_batch_mode("select_rows")?;
        if rows.len() == self.batch && rows.iter().enumerate().all(|(i, &r)| r as usize == i) {
            return Ok(());
        }
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

/// Writes `src` `(m, kv, new, hd)` into the storage `dst` `(slots, kv, capacity, hd)` in place:
/// its row `i` into slot `at[i].0` from column `at[i].1`. One pass on the CPU; elsewhere one
/// `slice_set` per row.
fn write_rows(dst: &Tensor, src: &Tensor, at: &[(usize, usize)]) -> Result<()> {
    let src = src.contiguous()?.to_dtype(dst.dtype())?;
    let ((slots, kv, cap, hd), (m, skv, new, shd)) = (dst.dims4()?, src.dims4()?);
    if m != at.len() || (skv, shd) != (kv, hd) {
        bail!(
            "batch cache: new entries {:?} do not fit storage {:?} for {} rows",
            src.dims(),
            dst.dims(),
            at.len()
        );
    }
    if let Some((i, _)) = at
        .iter()
        .enumerate()
        .find(|(_, &(slot, col))| slot >= slots || col + new > cap)
    {
        bail!(
            "batch cache: row {i} at {:?} is outside {:?}",
            at[i],
            dst.dims()
        );
    }
    if matches!(dst.device(), Device::Cpu) {
        return dst.inplace_op2(&src, &WriteRows { at: at.to_vec() });
    }
    for (i, &(slot, col)) in at.iter().enumerate() {
        dst.narrow(0, slot, 1)?
            .slice_set(&src.narrow(0, i, 1)?, 2, col)?;
    }
    Ok(())
}

/// [`write_rows`] on the CPU.
struct WriteRows {
    at: Vec<(usize, usize)>,
}

impl WriteRows {
    fn copy<T: Copy>(&self, dst: &mut [T], src: &[T], dims: [usize; 4]) {
        let [kv, cap, new, hd] = dims;
        let run = new * hd;
        for (i, &(slot, col)) in self.at.iter().enumerate() {
            for h in 0..kv {
                let from = (i * kv + h) * run;
                let to = ((slot * kv + h) * cap + col) * hd;
                dst[to..to + run].copy_from_slice(&src[from..from + run]);
            }
        }
    }
}

impl InplaceOp2 for WriteRows {
    fn name(&self) -> &'static str {
        "kv-cache-write-rows"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        let (Some((d0, d1)), Some((s0, s1))) = (dl.contiguous_offsets(), sl.contiguous_offsets())
        else {
            bail!("kv-cache-write-rows: storage and entries must be contiguous")
        };
        let (_, kv, cap, hd) = dl.shape().dims4()?;
        let (_, _, new, _) = sl.shape().dims4()?;
        let dims = [kv, cap, new, hd];
        match (dst, src) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => self.copy(&mut d[d0..d1], &s[s0..s1], dims),
            (CpuStorage::F16(d), CpuStorage::F16(s)) => self.copy(&mut d[d0..d1], &s[s0..s1], dims),
            (CpuStorage::BF16(d), CpuStorage::BF16(s)) => {
                self.copy(&mut d[d0..d1], &s[s0..s1], dims)
            }
            (CpuStorage::F64(d), CpuStorage::F64(s)) => self.copy(&mut d[d0..d1], &s[s0..s1], dims),
            (d, s) => bail!(
                "kv-cache-write-rows: storage {:?}, entries {:?}",
                d.dtype(),
                s.dtype()
            ),
        }
        Ok(())
    }
}

/// Continuous batching's persistent batch ([`BatchKvCache`], `Model::new_batch_cache`): a
/// [`DecoderCache`] in batch mode (the module doc) that the model's `decode_batch` runs its
/// forward pass on.
#[derive(Debug)]
pub struct BatchCache {
    cache: DecoderCache,
}

impl BatchCache {
    /// Empty; rows no longer than `max_len` (the model's context).
    pub fn new(n_layer: usize, max_len: usize) -> BatchCache {
        BatchCache {
            cache: DecoderCache::new_batch(n_layer, max_len),
        }
    }

    /// The batch-mode cache a forward pass appends to ([`DecoderCache::reserve`] first).
    pub fn cache_mut(&mut self) -> &mut DecoderCache {
        &mut self.cache
    }

    pub fn cache(&self) -> &DecoderCache {
        &self.cache
    }
}

impl BatchKvCache for BatchCache {
    fn rows(&self) -> usize {
        self.cache.batch
    }

    fn seq_len(&self, row: usize) -> usize {
        self.cache.row_len(row)
    }

    fn push(&mut self, mut cache: Box<dyn KvCache>) -> llmlab_plugin_api::Result<()> {
        let Some(row) = cache.as_any_mut().downcast_mut::<DecoderCache>() else {
            return Err(llmlab_plugin_api::Error::msg(
                "batch cache: the sequence's cache was not made by this model (a DecoderCache)",
            ));
        };
        Ok(self.cache.push_row(row)?)
    }

    fn swap_remove(&mut self, row: usize) -> llmlab_plugin_api::Result<()> {
        Ok(self.cache.swap_remove_row(row)?)
    }

    fn memory_bytes(&self) -> usize {
        KvCache::memory_bytes(&self.cache)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
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
        if let Some(rows) = &mut self.rows {
            rows.lens.clear();
            self.batch = 0;
        }
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

    /// Row `slot`'s keys in a batch-mode cache's storage, all columns.
    fn slot_keys(cache: &DecoderCache, slot: usize) -> Vec<f32> {
        let (k, _) = cache.layers[0].as_ref().unwrap();
        k.get(slot)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn batch_mode_writes_each_rows_entry_at_its_own_length_and_moves_the_last_row_on_removal() {
        let mut batch = DecoderCache::new_batch(1, 40);
        for (len, first) in [(3, 1.0), (1, 7.0), (2, 20.0)] {
            batch.push_row(&row(len, first)).unwrap();
        }
        assert_eq!((batch.batch(), batch.seq_len()), (3, 3));
        assert_eq!(batch.capacity(), (4, 16));
        batch.reserve(1).unwrap();
        let Positions::PerRow(p) = batch.positions(1, &Device::Cpu).unwrap() else {
            panic!("rows of their own lengths have their own positions")
        };
        assert_eq!(p.to_vec2::<u32>().unwrap(), vec![vec![3], vec![1], vec![2]]);
        let mask = batch.padding_mask(1, &Device::Cpu).unwrap().unwrap();
        // The columns in use (the longest row and its new token), not the capacity of 16.
        assert_eq!(mask.dims(), [3, 1, 1, 4]);
        let visible: Vec<usize> = mask
            .squeeze(1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| r.iter().filter(|m| m.is_finite()).count())
            .collect();
        assert_eq!(
            visible,
            [4, 2, 3],
            "each row sees its tokens and the new one"
        );
        let new = Tensor::new(&[50f32, 60.0, 70.0], &Device::Cpu)
            .unwrap()
            .reshape((3, 1, 1, 1))
            .unwrap();
        let (k, _) = batch.append(0, &new, &new).unwrap();
        assert_eq!(k.dims(), [3, 1, 4, 1]);
        assert_eq!(
            k.squeeze(1)
                .unwrap()
                .squeeze(2)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            [
                [1.0, 2.0, 3.0, 50.0],
                [7.0, 60.0, 0.0, 0.0],
                [20.0, 21.0, 70.0, 0.0]
            ]
        );
        batch.advance(1);
        assert_eq!(batch.row_len(1), 2);
        assert_eq!(&slot_keys(&batch, 0)[..5], [1.0, 2.0, 3.0, 50.0, 0.0]);
        assert_eq!(&slot_keys(&batch, 1)[..3], [7.0, 60.0, 0.0]);
        assert_eq!(&slot_keys(&batch, 2)[..4], [20.0, 21.0, 70.0, 0.0]);
        // Row 0 leaves: the last row moves into slot 0.
        batch.swap_remove_row(0).unwrap();
        assert_eq!((batch.batch(), batch.seq_len()), (2, 3));
        assert_eq!(&slot_keys(&batch, 0)[..3], [20.0, 21.0, 70.0]);
        // Past 16 columns and 4 slots the storage doubles, the rows kept.
        batch.push_row(&row(20, 100.0)).unwrap();
        for _ in 0..2 {
            batch.push_row(&row(1, 5.0)).unwrap();
        }
        assert_eq!(batch.capacity(), (8, 32));
        assert_eq!(&slot_keys(&batch, 0)[..3], [20.0, 21.0, 70.0]);
        assert_eq!(slot_keys(&batch, 2)[19], 119.0);
        assert_eq!(KvCache::memory_bytes(&batch), 2 * 8 * 32 * 4);
        // The context bounds the columns.
        batch.push_row(&row(33, 0.0)).unwrap();
        assert_eq!(batch.capacity(), (8, 40));
        assert!(batch.swap_remove_row(9).is_err());
        let err = batch.split_rows().unwrap_err();
        assert!(err.to_string().contains("batch-mode"), "{err}");
        // The last row gone, the storage is released.
        while batch.batch() > 0 {
            batch.swap_remove_row(0).unwrap();
        }
        assert_eq!(
            (KvCache::memory_bytes(&batch), batch.capacity()),
            (0, (0, 0))
        );
        batch.push_row(&row(2, 1.0)).unwrap();
        assert_eq!(batch.capacity(), (4, 16));
    }

    /// `(rows, 1, new, 1)` keys counting up from `first`, row after row.
    fn entries(rows: usize, new: usize, first: f32) -> Tensor {
        Tensor::arange(first, first + (rows * new) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, 1, new, 1))
            .unwrap()
    }

    fn rows_of(k: &Tensor) -> Vec<Vec<f32>> {
        k.squeeze(3).unwrap().squeeze(1).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn a_preallocated_cache_writes_each_step_into_the_storage_it_made_first() {
        let mut cache = DecoderCache::with_room(1, 2, 6);
        cache.set_padding(vec![0, 1]).unwrap();
        let (k, _) = cache
            .append(0, &entries(2, 3, 1.0), &entries(2, 3, 1.0))
            .unwrap();
        cache.advance(3);
        assert_eq!(k.dims(), [2, 1, 3, 1]);
        assert_eq!(cache.capacity(), (2, 6));
        let bytes = KvCache::memory_bytes(&cache);
        assert_eq!(bytes, 2 * 2 * 6 * 4);
        // The storage itself, held across the steps: each step's entries must land in it.
        let (storage, _) = cache.layers[0].clone().unwrap();
        for step in 0..3 {
            let first = 100.0 + 10.0 * step as f32;
            let (k, v) = cache
                .append(0, &entries(2, 1, first), &entries(2, 1, first))
                .unwrap();
            cache.advance(1);
            assert_eq!(k.dims(), [2, 1, 4 + step, 1]);
            assert_eq!(rows_of(&k), rows_of(&v.contiguous().unwrap()));
            assert_eq!(
                (cache.capacity(), KvCache::memory_bytes(&cache)),
                ((2, 6), bytes)
            );
        }
        assert_eq!(
            rows_of(&storage),
            [
                [1.0, 2.0, 3.0, 100.0, 110.0, 120.0],
                [4.0, 5.0, 6.0, 101.0, 111.0, 121.0]
            ]
        );
        let (k, _) = cache.layer(0).unwrap().unwrap();
        assert_eq!(rows_of(&k), rows_of(&storage));
        // Past its room the storage doubles once, the cached entries kept.
        let (k, _) = cache
            .append(0, &entries(2, 1, 200.0), &entries(2, 1, 200.0))
            .unwrap();
        cache.advance(1);
        assert_eq!(cache.capacity(), (2, 12));
        assert_eq!(rows_of(&k)[1], [4.0, 5.0, 6.0, 101.0, 111.0, 121.0, 201.0]);
        // Beams: rows gathered, room kept; the identity leaves the storage alone.
        cache.select_rows(&[1, 1, 0]).unwrap();
        assert_eq!(
            (cache.capacity(), cache.padding()),
            ((3, 12), &[1, 1, 0][..])
        );
        let (k, _) = cache.layer(0).unwrap().unwrap();
        assert_eq!(rows_of(&k)[2], [1.0, 2.0, 3.0, 100.0, 110.0, 120.0, 200.0]);
        cache.select_rows(&[0, 1, 2]).unwrap();
        assert_eq!(cache.capacity(), (3, 12));
        // Its rows split and restack like a concatenated cache's.
        let split = cache.split_rows().unwrap();
        assert_eq!(keys(&split[0]), [[5.0, 6.0, 101.0, 111.0, 121.0, 201.0]]);
        let stacked = DecoderCache::stack(&[&split[2], &split[0]]).unwrap();
        assert_eq!(stacked.padding(), &[0, 1]);
        assert!(cache
            .append(0, &entries(1, 1, 0.0), &entries(1, 1, 0.0))
            .is_err());
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
