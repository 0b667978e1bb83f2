//! How a text-to-text pair travels through the one-sequence `Model` contract: a row is
//! **`input </s> target`**, packed. The encoder reads the input through its first `</s>`
//! (`eos_token_id`); the decoder reads the decoder start token followed by the rest of the row.
//! The logits come back in the row's own layout, as a decoder-only model's would: position `t`
//! predicts token `t + 1`, so the logits at the input's `</s>` predict the first target token
//! and every trainer that masks its loss to the answer (sft-style batches) trains a T5 as it
//! trains a GPT. Positions inside the input predict nothing and get zero logits. A row without
//! `</s>` is all input (the `</s>` is implied) and its last position predicts the first output
//! token, which is also what generation does with a prompt.

use llmlab_plugin_api::candle::{Result, Tensor};

/// One row split into its encoder input and decoder input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The input through its `</s>` (appended when the row had none).
    pub encoder: Vec<u32>,
    /// The decoder start token, then the row after the input's `</s>`.
    pub decoder: Vec<u32>,
    /// The row position whose logits are the decoder's first: the input's `</s>`, or the last
    /// position of a row without one.
    pub first_output: usize,
}

pub fn split(row: &[u32], eos: u32, start: u32) -> Split {
    match row.iter().position(|&t| t == eos) {
        Some(e) => Split {
            encoder: row[..=e].to_vec(),
            decoder: std::iter::once(start)
                .chain(row[e + 1..].iter().copied())
                .collect(),
            first_output: e,
        },
        None => Split {
            encoder: row.iter().copied().chain(std::iter::once(eos)).collect(),
            decoder: vec![start],
            first_output: row.len().saturating_sub(1),
        },
    }
}

/// Right-pads `rows` with `pad` into a `(batch, longest)` tensor.
pub fn pad_rows(
    rows: &[Vec<u32>],
    pad: u32,
    device: &llmlab_plugin_api::candle::Device,
) -> Result<Tensor> {
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|r| {
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, longest - r.len()))
        })
        .collect();
    Tensor::from_vec(flat, (rows.len(), longest), device)
}

/// Back into the rows' layout: decoder outputs `(batch, dec_len, dim)` placed so row `r`'s
/// decoder position `j` lands at `first_output[r] + j`, zeros before, cut at `row_len`.
pub fn unpack(decoded: &Tensor, splits: &[Split], row_len: usize) -> Result<Tensor> {
    let (_, _, dim) = decoded.dims3()?;
    let rows = splits
        .iter()
        .enumerate()
        .map(|(r, s)| {
            let take = row_len - s.first_output;
            let out = decoded.get(r)?.narrow(0, 0, take)?;
            if s.first_output == 0 {
                return Ok(out);
            }
            let zeros = Tensor::zeros((s.first_output, dim), out.dtype(), out.device())?;
            Tensor::cat(&[&zeros, &out], 0)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_splits_at_its_first_eos_and_a_row_without_one_is_all_input() {
        let s = split(&[5, 6, 1, 7, 8, 1, 0], 1, 0);
        assert_eq!(s.encoder, vec![5, 6, 1]);
        assert_eq!(s.decoder, vec![0, 7, 8, 1, 0]);
        assert_eq!(s.first_output, 2);
        let s = split(&[5, 6, 7], 1, 0);
        assert_eq!(s.encoder, vec![5, 6, 7, 1]);
        assert_eq!(s.decoder, vec![0]);
        assert_eq!(s.first_output, 2);
    }
}
