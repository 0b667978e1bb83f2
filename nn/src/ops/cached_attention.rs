//! Attention of new queries over a KV cache, for cached decoding (inference only):
//!
//! ```text
//! y[b, i, head] = Σ_j softmax_j(q[b, head, i] · k[b, g(head), j] / √hd + mask[b, i, j]) v[b, g(head), j]
//! ```
//!
//! where `g(head) = head / (n_head / n_kv_head)` (grouped-query heads share a key/value head,
//! read in place instead of repeated) and the `t` queries are the last `t` of the `T` cached
//! positions, so query `i` sees keys `0 ..= T - t + i` (causal) and the mask hides padding.
//!
//! Composed from candle ops the same step is two batched matmuls per layer whose batch is
//! `batch × heads` products of one query row each — at batch 16 and 4 heads, 128 tiny gemm
//! calls per layer and step, each packing its operands — plus the repeated kv heads and a
//! transpose copy. Here each output row is one pass over its keys and values, rows in
//! parallel, written straight into the `(batch, t, heads · hd)` layout the output projection
//! reads.
//!
//! Keys and values are read where they are when each position's `hd` values are contiguous
//! (any batch and head strides): continuous batching hands the persistent cache's storage
//! narrowed to the columns in use, a strided view, and gathering it would copy the whole cache
//! every layer and step. A row whose mask hides every column from some point on (its own
//! length in a batch of rows of different lengths) stops there: those columns would get
//! weight exactly 0.
//!
//! It has no backward: a pass through a KV cache is never trained, and a backward through it
//! is refused rather than silently giving no gradient.

use std::borrow::Cow;

use crate::attention::{attention_weights, repeat_kv};
use crate::candle::{self, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use crate::ops::layout::f32_data;
use crate::ops::math::{self, simd_kernel};
use crate::rayon::prelude::*;

/// `q` `(b, h, t, hd)`, `k`/`v` `(b, kv, T, hd)` with `h` a multiple of `kv` and `t ≤ T`,
/// `mask` additive `(t, T)` or `(b, 1, t, T)`; returns `(b, t, h · hd)`. Fused on CPU f32,
/// composed otherwise.
pub fn cached_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> candle::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let (kb, kv, total, khd) = k.dims4()?;
    if kb != b || khd != hd || v.dims() != k.dims() || kv == 0 || h % kv != 0 || t > total {
        candle::bail!(
            "cached attention: q {:?}, k {:?}, v {:?} do not fit (b, h, t, hd) / (b, kv, T, hd)",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if !(super::fused_path(q) && super::fused_path(k) && super::fused_path(v)) {
        return cached_attention_reference(q, k, v, mask);
    }
    let mask = match mask {
        None => None,
        Some(m) => {
            let per_row = match m.dims() {
                [mt, mk] if (*mt, *mk) == (t, total) => false,
                [mb, 1, mt, mk] if (*mb, *mt, *mk) == (b, t, total) => true,
                other => candle::bail!(
                    "cached attention: mask {other:?} is neither ({t}, {total}) nor ({b}, 1, {t}, {total})"
                ),
            };
            Some((m.to_dtype(candle::DType::F32)?.flatten_all()?, per_row))
        }
    };
    // With candle's backprop op recorded, a backward through it fails (no `bwd`) instead of
    // silently giving no gradient.
    q.apply_op3(k, v, CachedAttention { mask })
}

/// The composed path: kv heads repeated, `softmax(q kᵀ / √hd + mask) v` as batched matmuls,
/// heads merged. Without a mask, `t > 1` queries get the causal mask of the last `t` positions.
pub fn cached_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> candle::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let total = k.dim(2)?;
    let group = h / k.dim(1)?;
    let k = repeat_kv(k.clone(), group)?;
    let v = repeat_kv(v.clone(), group)?;
    let causal;
    let mask = match mask {
        None if t > 1 => {
            let hidden: Vec<f32> = (0..t * total)
                .map(|i| {
                    if i % total > total - t + i / total {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            causal = Tensor::from_vec(hidden, (t, total), q.device())?.to_dtype(q.dtype())?;
            Some(&causal)
        }
        mask => mask,
    };
    attention_weights(q, &k, mask, false)?
        .matmul(&v.contiguous()?)?
        .transpose(1, 2)?
        .reshape((b, t, h * hd))
}

/// Keys or values `(b, kv, T, hd)` as the kernel reads them: in place when each position's `hd`
/// values are contiguous and positions follow each other (batch and head strides free, e.g. a
/// narrowed batch cache), gathered into a contiguous copy otherwise.
struct KvData<'a> {
    data: Cow<'a, [f32]>,
    /// Where `(0, 0, 0, 0)` is in `data`.
    start: usize,
    /// Elements between batch rows and between kv heads.
    strides: [usize; 2],
}

impl<'a> KvData<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> candle::Result<Self> {
        let (_, kv, total, hd) = layout.shape().dims4()?;
        let stride = layout.stride();
        let rows_in_place = (stride[3] == 1 || hd <= 1) && (stride[2] == hd || total <= 1);
        match storage {
            CpuStorage::F32(data) if rows_in_place => Ok(KvData {
                data: Cow::Borrowed(data),
                start: layout.start_offset(),
                strides: [stride[0], stride[1]],
            }),
            _ => Ok(KvData {
                data: f32_data(storage, layout, op)?,
                start: 0,
                strides: [kv * total * hd, total * hd],
            }),
        }
    }

    /// The first `len` positions of batch row `bi`, kv head `kvh`: `len · hd` values.
    #[inline(always)]
    fn head(&self, bi: usize, kvh: usize, len: usize, hd: usize) -> &[f32] {
        let base = self.start + bi * self.strides[0] + kvh * self.strides[1];
        &self.data[base..base + len * hd]
    }
}

struct CachedAttention {
    /// The flattened additive mask and whether it has a row per batch row.
    mask: Option<(Tensor, bool)>,
}

simd_kernel! {
    /// One output row `(h · hd)` of batch row `bi`, query `ti`: every head over its keys.
    fn attend_row(
        out: &mut [f32],
        q: &[f32],
        k: &KvData<'_>,
        v: &KvData<'_>,
        mask: Option<&[f32]>,
        dims: [usize; 5],
        bi: usize,
        ti: usize,
        scores: &mut [f32],
    ) {
        let [h, t, total, hd, group] = dims;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut visible = total - t + ti + 1;
        if let Some(m) = mask {
            // Columns hidden to the end of the row get weight 0 (`exp` of -inf): skip them.
            while visible > 1 && m[visible - 1] == f32::NEG_INFINITY {
                visible -= 1;
            }
        }
        let scores = &mut scores[..visible];
        for head in 0..h {
            let kvh = head / group;
            let qv = &q[((bi * h + head) * t + ti) * hd..][..hd];
            let (keys, values) = (k.head(bi, kvh, visible, hd), v.head(bi, kvh, visible, hd));
            for (j, s) in scores.iter_mut().enumerate() {
                *s = math::dot(qv, &keys[j * hd..(j + 1) * hd]) * scale;
            }
            if let Some(m) = mask {
                for (s, m) in scores.iter_mut().zip(m) {
                    *s += m;
                }
            }
            let m = math::max(scores);
            for s in scores.iter_mut() {
                *s = math::exp(*s - m);
            }
            let inv = 1.0 / math::sum(scores);
            let y = &mut out[head * hd..(head + 1) * hd];
            y.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let p = p * inv;
                for (y, &x) in y.iter_mut().zip(&values[j * hd..(j + 1) * hd]) {
                    *y += p * x;
                }
            }
        }
    }
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "cached-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let (b, h, t, hd) = ql.shape().dims4()?;
        let (_, kv, total, _) = kl.shape().dims4()?;
        let q = f32_data(qs, ql, self.name())?;
        let k = KvData::new(ks, kl, self.name())?;
        let v = KvData::new(vs, vl, self.name())?;
        let mask_storage = self.mask.as_ref().map(|(m, _)| m.storage_and_layout());
        let mask: Option<Cow<'_, [f32]>> = match &mask_storage {
            None => None,
            Some((storage, layout)) => match &**storage {
                candle::Storage::Cpu(s) => Some(f32_data(s, layout, self.name())?),
                _ => candle::bail!("cached attention: the mask must be on the CPU"),
            },
        };
        let per_row = self.mask.as_ref().is_some_and(|(_, p)| *p);
        let dims = [h, t, total, hd, h / kv];
        let row_len = h * hd;
        let mut out = vec![0f32; b * t * row_len];
        out.par_chunks_mut(row_len).enumerate().for_each_init(
            || vec![0f32; total],
            |scores, (row, out)| {
                let (bi, ti) = (row / t, row % t);
                let mask_row = mask.as_deref().map(|m| {
                    let r = if per_row { bi * t + ti } else { ti };
                    &m[r * total..(r + 1) * total]
                });
                attend_row(out, &q, &k, &v, mask_row, dims, bi, ti, scores);
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((b, t, row_len))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::{Device, D};

    fn random(dims: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
    }

    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        cached_attention_reference(q, k, v, mask).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn matches_the_composed_path_with_grouped_heads_causal_queries_and_padding() {
        let (b, h, kv, total, hd) = (3, 4, 2, 9, 8);
        for t in [1, 3] {
            let q = random(&[b, h, t, hd], 1);
            let k = random(&[b, kv, total, hd], 2);
            let v = random(&[b, kv, total, hd], 3);
            // The causal mask of the last t positions, as gpt slices it for t > 1.
            let causal: Vec<f32> = (0..t * total)
                .map(|i| {
                    let (qi, kj) = (i / total, i % total);
                    if kj > total - t + qi {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let causal = Tensor::from_vec(causal, (t, total), &Device::Cpu).unwrap();
            // Row 1 left-padded by 2, as DecoderCache::padding_mask builds it.
            let mut padded = vec![0f32; b * t * total];
            for qi in 0..t {
                for kj in 0..total {
                    let hidden = kj > total - t + qi || (kj < 2 && kj != total - t + qi);
                    if hidden {
                        padded[(t + qi) * total + kj] = f32::NEG_INFINITY;
                    }
                }
            }
            let padded = Tensor::from_vec(padded, (b, 1, t, total), &Device::Cpu)
                .unwrap()
                .broadcast_add(&causal)
                .unwrap();
            let masks: Vec<Option<&Tensor>> = if t == 1 {
                vec![None, Some(&padded)]
            } else {
                vec![Some(&causal), Some(&padded)]
            };
            for mask in masks {
                let fused = cached_attention(&q, &k, &v, mask).unwrap();
                let reference = composed(&q, &k, &v, mask);
                assert_eq!(fused.dims(), [b, t, h * hd]);
                let diff = max_diff(&fused, &reference);
                assert!(
                    diff < 1e-5,
                    "t {t}, mask {:?}: {diff}",
                    mask.map(|m| m.dims())
                );
            }
        }
    }

    /// Keys and values as continuous batching hands them: the first rows of a larger storage
    /// narrowed to the columns in use (strided, read in place), each row masked past its own
    /// length. The columns past a row's length hold NaN in the storage: the kernel must not
    /// read them (the composed path multiplies them by 0, which keeps the NaN; it gets a
    /// finite copy of the same data).
    #[test]
    fn reads_a_narrowed_batch_storage_in_place_and_stops_at_each_rows_length() {
        let (slots, cap, b, used, h, kv, hd) = (4, 12, 3, 7, 4, 2, 8);
        let lens = [7, 3, 5];
        let mut data = random(&[slots, kv, cap, hd], 7)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut finite = data.clone();
        for (row, &len) in lens.iter().enumerate() {
            for head in 0..kv {
                let at = (row * kv + head) * cap * hd;
                data[at + len * hd..at + cap * hd].fill(f32::NAN);
                finite[at + len * hd..at + cap * hd].fill(1e3);
            }
        }
        let narrowed = |d: Vec<f32>| {
            Tensor::from_vec(d, (slots, kv, cap, hd), &Device::Cpu)
                .unwrap()
                .narrow(0, 0, b)
                .unwrap()
                .narrow(2, 0, used)
                .unwrap()
        };
        let (k, k_finite) = (narrowed(data.clone()), narrowed(finite.clone()));
        assert!(!k.is_contiguous());
        let v = narrowed(data.iter().map(|x| x * 0.5).collect());
        let v_finite = narrowed(finite.iter().map(|x| x * 0.5).collect());
        let q = random(&[b, h, 1, hd], 8);
        let mut mask = vec![f32::NEG_INFINITY; b * used];
        for (row, &len) in lens.iter().enumerate() {
            mask[row * used..row * used + len].fill(0.0);
        }
        let mask = Tensor::from_vec(mask, (b, 1, 1, used), &Device::Cpu).unwrap();
        let fused = cached_attention(&q, &k, &v, Some(&mask)).unwrap();
        let reference = composed(
            &q,
            &k_finite.contiguous().unwrap(),
            &v_finite.contiguous().unwrap(),
            Some(&mask),
        );
        let diff = max_diff(&fused, &reference);
        assert!(diff < 1e-5, "max diff {diff}");
        // Each row alone, over only its own columns, gives the same bits.
        for (row, &len) in lens.iter().enumerate() {
            let own = |t: &Tensor| t.narrow(0, row, 1).unwrap().narrow(2, 0, len).unwrap();
            let alone =
                cached_attention(&q.narrow(0, row, 1).unwrap(), &own(&k), &own(&v), None).unwrap();
            let batched = fused.narrow(0, row, 1).unwrap();
            assert_eq!(
                alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                batched.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "row {row}"
            );
        }
    }

    #[test]
    fn the_causal_limit_holds_without_a_mask() {
        // t > 1 and no mask: query i still sees only keys up to its own position.
        let (q, k, v) = (
            random(&[1, 2, 2, 4], 4),
            random(&[1, 2, 5, 4], 5),
            random(&[1, 2, 5, 4], 6),
        );
        let mut hidden = vec![0f32; 2 * 5];
        hidden[4] = f32::NEG_INFINITY; // query 0 sits at position 3 and must not see key 4
        let causal = Tensor::from_vec(hidden, (2, 5), &Device::Cpu).unwrap();
        let fused = cached_attention(&q, &k, &v, None).unwrap();
        assert!(max_diff(&fused, &composed(&q, &k, &v, Some(&causal))) < 1e-5);
        assert!(max_diff(&fused, &composed(&q, &k, &v, None)) < 1e-5);
    }

    #[test]
    fn mismatched_shapes_are_refused_with_the_shapes() {
        let q = random(&[1, 3, 1, 4], 1);
        let k = random(&[1, 2, 5, 4], 2);
        let err = cached_attention(&q, &k, &k, None).unwrap_err().to_string();
        assert!(err.contains("[1, 3, 1, 4]"), "{err}");
        let q = random(&[1, 2, 1, 4], 1);
        let bad_mask = random(&[2, 5], 3);
        let err = cached_attention(&q, &k, &k, Some(&bad_mask))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mask [2, 5]"), "{err}");
    }
}
