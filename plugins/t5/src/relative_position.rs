//! T5's relative position bias: each (query, key) distance falls in one of
//! `num_buckets` buckets — exact for short distances, logarithmically wider up to
//! `max_distance`, one bucket beyond — and each bucket has a learned scalar per head, added to
//! the attention scores. The encoder's buckets are bidirectional (half for keys after the
//! query); the decoder's are causal (only distances to earlier keys). Only the first block of a
//! stack owns the table (`block.0.layer.0.SelfAttention.relative_attention_bias`); every block
//! adds the same bias, as in the paper and Hugging Face's `T5Attention`.

use llmlab_plugin_api::candle::{Result, Tensor};

/// The bucket of `relative = key - query`, exactly as HF's `_relative_position_bucket`
/// (which truncates the float logarithm towards zero).
pub fn bucket(relative: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> u32 {
    let mut buckets = num_buckets as i64;
    let mut base = 0i64;
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            base = buckets;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = buckets / 2;
    let offset = if distance < max_exact {
        distance
    } else {
        let scaled = ((distance as f32 / max_exact as f32).ln()
            / (max_distance as f32 / max_exact as f32).ln()
            * (buckets - max_exact) as f32) as i64;
        (max_exact + scaled).min(buckets - 1)
    };
    (base + offset) as u32
}

/// A stack's learned bias table and how it buckets distances.
#[derive(Debug, Clone)]
pub struct RelativeBias {
    /// `(num_buckets, n_head)`.
    pub table: Tensor,
    pub bidirectional: bool,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl RelativeBias {
    /// The bias `(1, n_head, queries, keys)` for queries at positions `query_offset..` and
    /// keys at `0..keys`.
    pub fn bias(&self, queries: usize, keys: usize, query_offset: usize) -> Result<Tensor> {
        let ids: Vec<u32> = (0..queries)
            .flat_map(|q| {
                (0..keys).map(move |k| {
                    let relative = k as i64 - (q + query_offset) as i64;
                    bucket(
                        relative,
                        self.bidirectional,
                        self.num_buckets,
                        self.max_distance,
                    )
                })
            })
            .collect();
        let ids = Tensor::from_vec(ids, queries * keys, self.table.device())?;
        let heads = self.table.dim(1)?;
        self.table
            .index_select(&ids, 0)?
            .reshape((queries, keys, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by transformers' `T5Attention._relative_position_bucket` (32 buckets,
    /// max distance 128) for these distances.
    #[test]
    fn buckets_match_hugging_face() {
        let rel = [
            -200, -128, -64, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 64, 128, 200,
        ];
        let bi: Vec<u32> = rel.iter().map(|&r| bucket(r, true, 32, 128)).collect();
        let causal: Vec<u32> = rel.iter().map(|&r| bucket(r, false, 32, 128)).collect();
        assert_eq!(
            bi,
            [15, 15, 14, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 30, 31, 31]
        );
        assert_eq!(
            causal,
            [31, 31, 26, 17, 9, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
