//! Next-sentence prediction, BERT's second pretraining objective (`mlm`'s `next_sentence`): a
//! row is `[CLS] A [SEP] B [SEP]` with segment ids, A a span of the token stream and B either
//! the tokens that follow it (`is_next`) or a span drawn elsewhere (`not_next`), half each. The
//! model's sequence head — the pooler (over `[CLS]`, or mean/max with `pooling`) and a 2-way
//! classifier — learns to tell them apart, which needs the two segments compared: the skill the
//! pair tasks (entailment, paraphrase, similarity) fine-tune, and the one thing MLM alone does not
//! train the pooler for.

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_train::batches::Batch;
use llmlab_train::loss;

use crate::pair_encoding::{self, Encoded, Specials};

/// The head's class names, in index order.
pub const LABELS: [&str; 2] = ["not_next", "is_next"];

/// The head `Model::set_head` gets (as `bert` reports its heads: `pooling` only when not `cls`,
/// so an existing matching head compares equal and is kept).
pub fn head(pooling: &str) -> Value {
    let mut head = json!({ "kind": "sequence", "num_labels": 2, "labels": LABELS, "pair": true });
    if pooling != "cls" {
        head["pooling"] = json!(pooling);
    }
    head
}

/// Where a row's two segments come from in a split of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairSpans {
    pub a_start: usize,
    pub a_len: usize,
    pub b_start: usize,
    pub b_len: usize,
    pub is_next: bool,
}

/// A negative's B is redrawn this many times at most while it overlaps A or A's true
/// continuation (only a stream a few rows long runs out of tries; its negatives stay noisy).
const NEGATIVE_TRIES: usize = 16;

/// Draws the spans of one row holding `content` stream tokens (`ctx − 3`) from a split of `len`
/// tokens (`len ≥ content`): A takes a quarter to three quarters of them, B the rest.
pub fn draw(len: usize, content: usize, rng: &mut SplitMix64) -> PairSpans {
    debug_assert!(content >= 2 && len >= content);
    let a_start = rng.below(len - content + 1);
    let quarter = (content / 4).max(1);
    let a_len = (quarter + rng.below(content - 2 * quarter + 1)).clamp(1, content - 1);
    let b_len = content - a_len;
    let next = a_start + a_len;
    if rng.next_unit() < 0.5 {
        return PairSpans {
            a_start,
            a_len,
            b_start: next,
            b_len,
            is_next: true,
        };
    }
    let overlaps = |b: usize| b < a_start + content && a_start < b + b_len;
    let mut b_start = rng.below(len - b_len + 1);
    for _ in 1..NEGATIVE_TRIES {
        if !overlaps(b_start) {
            break;
        }
        b_start = rng.below(len - b_len + 1);
    }
    PairSpans {
        a_start,
        a_len,
        b_start,
        b_len,
        is_next: false,
    }
}

/// Reads the spans' tokens from `split` and lays them out as a pair row.
pub fn encode(
    tokens: &dyn TokenData,
    split: Split,
    spans: PairSpans,
    specials: Specials,
) -> Result<Encoded> {
    let mut a = vec![0u32; spans.a_len];
    tokens.read(split, spans.a_start, &mut a)?;
    let mut b = vec![0u32; spans.b_len];
    tokens.read(split, spans.b_start, &mut b)?;
    Ok(pair_encoding::layout(&a, Some(&b), specials))
}

/// A batch of pair rows with their labels (1 = `is_next`); the head's output is what it trains.
pub fn batch(rows: &[(Encoded, bool)], specials: Specials, device: &Device) -> Result<Batch> {
    let encoded: Vec<&Encoded> = rows.iter().map(|(e, _)| e).collect();
    let (inputs, forward_inputs) = pair_encoding::pad(&encoded, specials.pad, device)?;
    let labels: Vec<u32> = rows.iter().map(|(_, next)| u32::from(*next)).collect();
    let seq = inputs.dim(1)?;
    Ok(Batch {
        inputs,
        targets: Tensor::from_vec(labels, rows.len(), device)?,
        mask: None,
        loss_tokens: rows.len(),
        tokens: rows.len() * seq,
        forward_inputs,
    })
}

/// Each row's cross-entropy of the head's `(rows, 2)` logits on its label.
pub fn row_nll(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (rows, classes) = logits.dims2()?;
    Ok(loss::token_nll(
        &logits.reshape((rows, 1, classes))?,
        &labels.reshape((rows, 1))?,
    )?
    .flatten_all()?)
}

/// Whether `batch` is a next-sentence batch (it reads the head) rather than a masked-LM one.
pub fn is_pair_batch(batch: &Batch) -> bool {
    batch.forward_inputs.head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positives_continue_a_and_negatives_come_from_elsewhere() {
        let mut rng = SplitMix64::new(11);
        let (len, content) = (10_000, 125);
        let mut positives = 0;
        for _ in 0..2000 {
            let s = draw(len, content, &mut rng);
            assert_eq!(s.a_len + s.b_len, content);
            assert!(
                s.a_len >= content / 4 && s.a_len <= content - content / 4,
                "{s:?}"
            );
            assert!(
                s.a_start + s.a_len <= len && s.b_start + s.b_len <= len,
                "{s:?}"
            );
            if s.is_next {
                positives += 1;
                assert_eq!(s.b_start, s.a_start + s.a_len);
            } else {
                // Not A, and not where A's continuation would be.
                let a_region = s.a_start..s.a_start + content;
                assert!(
                    s.b_start + s.b_len <= a_region.start || s.b_start >= a_region.end,
                    "{s:?}"
                );
            }
        }
        assert!((900..1100).contains(&positives), "{positives}");
    }

    #[test]
    fn a_stream_one_row_long_still_gives_rows() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..100 {
            let s = draw(10, 10, &mut rng);
            assert_eq!(s.a_start, 0);
            assert!(s.b_start + s.b_len <= 10);
        }
    }

    #[test]
    fn rows_have_separators_segments_and_labels() {
        let specials = Specials {
            cls: 1,
            sep: 2,
            pad: 0,
        };
        let rows = vec![
            (
                Encoded {
                    ids: vec![1, 5, 2, 6, 2],
                    types: vec![0, 0, 0, 1, 1],
                },
                true,
            ),
            (
                Encoded {
                    ids: vec![1, 7, 2, 8, 2],
                    types: vec![0, 0, 0, 1, 1],
                },
                false,
            ),
        ];
        let b = batch(&rows, specials, &Device::Cpu).unwrap();
        assert!(is_pair_batch(&b));
        assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![1, 0]);
        let types = b.forward_inputs.token_type_ids.unwrap();
        assert_eq!(types.to_vec2::<u32>().unwrap()[0], vec![0, 0, 0, 1, 1]);
        assert_eq!(head("cls").get("pooling"), None);
        assert_eq!(head("max")["pooling"], "max");
    }
}
