//! How a labelled sentence or sentence pair becomes an encoder's input, as BERT and Hugging
//! Face tokenizers do it: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, segment ids 0 up to the
//! first `[SEP]` and 1 after it; padded batches with the attention mask. An input longer than
//! `ctx` is refused naming the example (or, with `truncate`, the longer side loses tokens
//! first).

use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::prelude::*;

/// One encoded example.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
}

/// The special ids an encoding uses.
#[derive(Debug, Clone, Copy)]
pub struct Specials {
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
}

impl Specials {
    pub fn of(tokenizer: &dyn Tokenizer) -> Result<Specials> {
        let role = |role: SpecialToken, name: &str| {
            tokenizer.special_token(role).ok_or_else(|| {
                Error::Data(format!(
                    "the tokenizer ({}) has no {name} token, which sentence classification needs \
                     (a wordpiece tokenizer has [CLS], [SEP] and [PAD])",
                    tokenizer.name()
                ))
            })
        };
        Ok(Specials {
            cls: role(SpecialToken::Cls, "[CLS]")?,
            sep: role(SpecialToken::Sep, "[SEP]")?,
            pad: role(SpecialToken::Pad, "[PAD]")?,
        })
    }
}

/// Encodes `text` (and `pair`) within `ctx` tokens; `what` names the example in errors.
pub fn encode(
    tokenizer: &dyn Tokenizer,
    specials: Specials,
    text: &str,
    pair: Option<&str>,
    ctx: usize,
    truncate: bool,
    what: &dyn Fn() -> String,
) -> Result<Encoded> {
    let mut a = tokenizer.encode(text)?;
    let mut b = match pair {
        Some(p) => Some(tokenizer.encode(p)?),
        None => None,
    };
    let specials_len = if b.is_some() { 3 } else { 2 };
    let len = |a: &Vec<u32>, b: &Option<Vec<u32>>| {
        a.len() + b.as_ref().map_or(0, Vec::len) + specials_len
    };
    if len(&a, &b) > ctx {
        if !truncate {
            return Err(Error::Data(format!(
                "{} is {} tokens with [CLS]/[SEP], over the model's ctx = {ctx}; use a model \
                 with a longer ctx, shorter texts, or truncate: true",
                what(),
                len(&a, &b)
            )));
        }
        while len(&a, &b) > ctx {
            match &mut b {
                Some(b) if b.len() > a.len() => {
                    b.pop();
                }
                _ if !a.is_empty() => {
                    a.pop();
                }
                Some(b) => {
                    b.pop();
                }
                None => break,
            }
        }
    }
    Ok(layout(&a, b.as_deref(), specials))
}

/// `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, segment 1 from the first token of `b` on.
pub fn layout(a: &[u32], b: Option<&[u32]>, specials: Specials) -> Encoded {
    let mut ids = Vec::with_capacity(a.len() + b.map_or(0, <[u32]>::len) + 3);
    ids.push(specials.cls);
    ids.extend(a);
    ids.push(specials.sep);
    let first = ids.len();
    if let Some(b) = b {
        ids.extend(b);
        ids.push(specials.sep);
    }
    let types = (0..ids.len()).map(|i| u32::from(i >= first)).collect();
    Encoded { ids, types }
}

/// Padded `(batch, seq)` ids, the 0/1 attention mask and the segment ids of `rows`.
pub fn pad(rows: &[&Encoded], pad: u32, device: &Device) -> Result<(Tensor, ForwardInputs)> {
    let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1);
    let n = rows.len() * seq;
    let (mut ids, mut mask, mut types) = (vec![pad; n], vec![0u32; n], vec![0u32; n]);
    for (r, row) in rows.iter().enumerate() {
        let base = r * seq;
        ids[base..base + row.ids.len()].copy_from_slice(&row.ids);
        types[base..base + row.ids.len()].copy_from_slice(&row.types);
        mask[base..base + row.ids.len()]
            .iter_mut()
            .for_each(|m| *m = 1);
    }
    let shape = (rows.len(), seq);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        ForwardInputs {
            attention_mask: Some(Tensor::from_vec(mask, shape, device)?),
            token_type_ids: Some(Tensor::from_vec(types, shape, device)?),
            head: true,
        },
    ))
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

    #[test]
    fn pairs_get_separators_and_segments() {
        let what = || "example 0".to_string();
        let e = encode(&Chars, S, "45", Some("7"), 10, false, &what).unwrap();
        assert_eq!(e.ids, vec![20, 4, 5, 21, 7, 21]);
        assert_eq!(e.types, vec![0, 0, 0, 0, 1, 1]);
        let single = encode(&Chars, S, "45", None, 10, false, &what).unwrap();
        assert_eq!(single.types, vec![0; 4]);
    }

    #[test]
    fn too_long_is_refused_naming_the_example_or_truncated() {
        let what = || "train example 7".to_string();
        let err = encode(&Chars, S, "123456", Some("78"), 8, false, &what)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train example 7") && err.contains("11 tokens") && err.contains("ctx = 8"),
            "{err}"
        );
        let e = encode(&Chars, S, "123456", Some("78"), 8, true, &what).unwrap();
        assert_eq!(e.ids.len(), 8);
        assert_eq!(
            e.types.iter().filter(|t| **t == 1).count(),
            3,
            "the pair keeps its 2 tokens and [SEP]"
        );
    }

    #[test]
    fn padding_is_masked() {
        let a = Encoded {
            ids: vec![1, 5, 2],
            types: vec![0; 3],
        };
        let b = Encoded {
            ids: vec![1, 2],
            types: vec![0; 2],
        };
        let (ids, inputs) = pad(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![1, 5, 2], vec![1, 2, 0]]
        );
        let mask = inputs.attention_mask.unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(mask, vec![vec![1, 1, 1], vec![1, 1, 0]]);
        assert!(inputs.head);
    }
}
