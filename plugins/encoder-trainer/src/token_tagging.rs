//! Token classification's inputs and targets: a tagged sentence's words become
//! `[CLS] pieces.. [SEP]`, each word encoded on its own (Hugging Face's `is_split_into_words`),
//! and the tag of a word goes to its **first** sub-token; its other sub-tokens, `[CLS]`,
//! `[SEP]` and padding carry no target (HF's `-100`), so they count neither in the loss nor in
//! the metrics. A batch's targets are `(batch, seq)` with a 0/1 mask of the labelled positions.

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TaggedWords;

use crate::pair_encoding::{Encoded, Specials};

/// One encoded tagged sentence: its ids (one segment) and the tag at each position, `None`
/// where nothing is predicted.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedEncoding {
    pub encoded: Encoded,
    pub tags: Vec<Option<usize>>,
}

/// Encodes `tagged` within `ctx` tokens; `what` names the example in errors. With `truncate`,
/// the words that do not fit are left out (and so are their tags).
pub fn encode_words(
    tokenizer: &dyn Tokenizer,
    specials: Specials,
    tagged: &TaggedWords,
    ctx: usize,
    truncate: bool,
    what: &dyn Fn() -> String,
) -> Result<TaggedEncoding> {
    if tagged.words.len() != tagged.tags.len() {
        return Err(Error::Data(format!(
            "{}: {} words but {} tags (one tag per word)",
            what(),
            tagged.words.len(),
            tagged.tags.len()
        )));
    }
    let mut ids = vec![specials.cls];
    let mut tags = vec![None];
    let mut total = 2usize;
    for (word, &tag) in tagged.words.iter().zip(&tagged.tags) {
        let pieces = tokenizer.encode(word)?;
        if pieces.is_empty() {
            return Err(Error::Data(format!(
                "{}: the word {word:?} encodes to no tokens, so its tag has no position",
                what()
            )));
        }
        total += pieces.len();
        if total > ctx {
            if truncate {
                break;
            }
            let all: usize = 2 + tagged
                .words
                .iter()
                .map(|w| tokenizer.encode(w).map_or(0, |p| p.len()))
                .sum::<usize>();
            return Err(Error::Data(format!(
                "{} is {all} tokens with [CLS]/[SEP], over the model's ctx = {ctx}; use a model \
                 with a longer ctx, shorter sentences, or truncate: true",
                what()
            )));
        }
        tags.push(Some(tag));
        tags.extend(std::iter::repeat_n(None, pieces.len() - 1));
        ids.extend(pieces);
    }
    ids.push(specials.sep);
    tags.push(None);
    let types = vec![0; ids.len()];
    Ok(TaggedEncoding {
        encoded: Encoded { ids, types },
        tags,
    })
}

/// `(batch, seq)` targets (0 where unlabelled), the 0/1 mask of labelled positions, and their
/// count, for rows padded to `seq`.
pub fn targets(
    rows: &[&[Option<usize>]],
    seq: usize,
    device: &Device,
) -> Result<(Tensor, Tensor, usize)> {
    let mut ids = vec![0u32; rows.len() * seq];
    let mut mask = vec![0f32; rows.len() * seq];
    let mut kept = 0;
    for (r, tags) in rows.iter().enumerate() {
        for (t, tag) in tags.iter().enumerate() {
            if let Some(tag) = tag {
                ids[r * seq + t] = *tag as u32;
                mask[r * seq + t] = 1.0;
                kept += 1;
            }
        }
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), seq), device)?,
        Tensor::from_vec(mask, (rows.len(), seq), device)?,
        kept,
    ))
}

/// The predicted tag (argmax of `logits` `(seq, labels)`) and the gold tag at each labelled
/// position of one row, in order.
pub fn labelled_predictions(
    logits: &[Vec<f32>],
    tags: &[Option<usize>],
) -> (Vec<usize>, Vec<usize>) {
    tags.iter()
        .zip(logits)
        .filter_map(|(tag, scores)| {
            let gold = (*tag)?;
            let predicted = scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            Some((predicted, gold))
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_test_support::Chars;

    const S: Specials = Specials {
        cls: 20,
        sep: 21,
        pad: 22,
    };

    fn tagged(words: &[&str], tags: &[usize]) -> TaggedWords {
        TaggedWords {
            words: words.iter().map(|w| w.to_string()).collect(),
            tags: tags.to_vec(),
        }
    }

    #[test]
    fn the_first_piece_of_a_word_carries_its_tag() {
        let what = || "example 0".to_string();
        // Chars: one token per digit, so "45" is two pieces.
        let e = encode_words(
            &Chars,
            S,
            &tagged(&["45", "7", "123"], &[1, 2, 3]),
            16,
            false,
            &what,
        )
        .unwrap();
        assert_eq!(e.encoded.ids, vec![20, 4, 5, 7, 1, 2, 3, 21]);
        assert_eq!(
            e.tags,
            vec![None, Some(1), None, Some(2), Some(3), None, None, None]
        );
        assert_eq!(e.encoded.types, vec![0; 8]);
    }

    #[test]
    fn over_ctx_is_refused_or_words_are_left_out() {
        let what = || "train example 3".to_string();
        let words = tagged(&["45", "7", "123"], &[1, 2, 3]);
        let err = encode_words(&Chars, S, &words, 6, false, &what)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train example 3") && err.contains("8 tokens") && err.contains("ctx = 6"),
            "{err}"
        );
        let cut = encode_words(&Chars, S, &words, 6, true, &what).unwrap();
        assert_eq!(cut.encoded.ids, vec![20, 4, 5, 7, 21]);
        assert_eq!(cut.tags.iter().flatten().count(), 2);
        let err = encode_words(&Chars, S, &tagged(&["4", "5"], &[1]), 8, false, &what)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 words but 1 tags"), "{err}");
    }

    #[test]
    fn padding_and_continuations_have_no_target() {
        let a = [None, Some(1), None, Some(2), None];
        let b = [None, Some(3), None];
        let (ids, mask, kept) = targets(&[&a, &b], 5, &Device::Cpu).unwrap();
        assert_eq!(kept, 3);
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![0, 1, 0, 2, 0], vec![0, 3, 0, 0, 0]]
        );
        assert_eq!(
            mask.to_vec2::<f32>().unwrap(),
            vec![vec![0., 1., 0., 1., 0.], vec![0., 1., 0., 0., 0.]]
        );
        // Only labelled positions are scored; the argmax elsewhere does not matter.
        let logits = vec![
            vec![9.0, 0.0, 0.0, 0.0],
            vec![0.0, 5.0, 0.0, 0.0],
            vec![9.0, 0.0, 0.0, 0.0],
        ];
        let (p, g) = labelled_predictions(&logits, &b);
        assert_eq!((p, g), (vec![1], vec![3]));
    }
}
