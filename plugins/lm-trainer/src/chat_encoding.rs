//! Chat examples for the `sft` trainer: an example whose source gives rendered segments
//! (`ExampleSource::segments`, a chat template's output cut at the assistant turns) becomes the
//! segments' tokens in order, a target wherever its segment is `trainable` (every assistant
//! reply, with the template's end-of-turn marker), so the loss counts what the assistant says
//! and nothing of the system or user turns. Each segment is tokenized on its own, so a mask
//! boundary is always a token boundary. The end-of-text token closes the conversation (a target
//! when the last segment is), and over-long conversations lose their first tokens.

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TextSegment;

use crate::sft::{encode, Encoded};

/// Example `index` of `examples` as [`Encoded`] tokens: its segments when it has them, else
/// `prompt + answer + eot` ([`encode`]).
pub fn encode_example(
    examples: &dyn ExampleSource,
    index: usize,
    tokenizer: &dyn Tokenizer,
    ctx: usize,
) -> Result<Encoded> {
    match examples.segments(index) {
        Some(segments) => encode_segments(&segments, tokenizer, ctx),
        None => encode(&examples.get(index), tokenizer, ctx),
    }
}

/// Tokenizes `segments` for a context of `ctx` tokens (see the module docs).
pub fn encode_segments(
    segments: &[TextSegment],
    tokenizer: &dyn Tokenizer,
    ctx: usize,
) -> Result<Encoded> {
    let (mut ids, mut trainable) = (Vec::new(), Vec::new());
    for segment in segments {
        let piece = tokenizer.encode(&segment.text)?;
        trainable.extend(std::iter::repeat_n(segment.trainable, piece.len()));
        ids.extend(piece);
    }
    ids.push(tokenizer.end_of_text()?);
    trainable.push(segments.last().is_some_and(|s| s.trainable));
    if ids.len() > ctx + 1 {
        let cut = ids.len() - (ctx + 1);
        ids.drain(..cut);
        trainable.drain(..cut);
    }
    let answer_start = trainable.iter().position(|&t| t).unwrap_or(ids.len());
    Ok(Encoded {
        ids,
        answer_start,
        trainable: Some(trainable),
    })
}

impl Encoded {
    /// Whether predicting `ids[i]` counts in the loss.
    pub fn is_target(&self, i: usize) -> bool {
        match &self.trainable {
            Some(mask) => mask[i],
            None => i >= self.answer_start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sft::batch;
    use llmlab_plugin_api::candle::Device;

    /// One token per character; end-of-text is 0.
    #[derive(Clone)]
    struct Chars;

    impl Tokenizer for Chars {
        fn name(&self) -> &str {
            "chars"
        }
        fn config(&self) -> Value {
            Value::Null
        }
        fn train(&mut self, _: &dyn llmlab_plugin_api::TextSource, _: &Context) -> Result<()> {
            Ok(())
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            Ok(ids.iter().map(|&i| i as u8 as char).collect())
        }
        fn vocab_size(&self) -> usize {
            256
        }
        fn token_to_id(&self, _: &str) -> Option<u32> {
            None
        }
        fn id_to_token(&self, _: u32) -> Option<String> {
            None
        }
        fn special_token(&self, role: SpecialToken) -> Option<u32> {
            (role == SpecialToken::EndOfText).then_some(0)
        }
        fn to_json(&self) -> Result<String> {
            Err(Error::unsupported("chars", "saving"))
        }
        fn clone_box(&self) -> Box<dyn Tokenizer> {
            Box::new(self.clone())
        }
    }

    fn seg(text: &str, trainable: bool) -> TextSegment {
        TextSegment {
            text: text.into(),
            trainable,
        }
    }

    #[test]
    fn only_assistant_segments_are_targets_across_turns() {
        // u: "ab" | a: "c" | u: "d" | a: "ef" → the masks follow the segments; eot is a target
        // after a final assistant turn.
        let segments = [
            seg("ab", false),
            seg("c", true),
            seg("d", false),
            seg("ef", true),
        ];
        let e = encode_segments(&segments, &Chars, 64).unwrap();
        assert_eq!(e.ids, vec![97, 98, 99, 100, 101, 102, 0]);
        let targets: Vec<bool> = (0..e.ids.len()).map(|i| e.is_target(i)).collect();
        assert_eq!(targets, [false, false, true, false, true, true, true]);
        // In a batch, position j predicts ids[j + 1]: masked where ids[j + 1] is a target.
        let b = batch(&[e], 0, &Device::Cpu).unwrap();
        let mask: Vec<Vec<f32>> = b.mask.unwrap().to_vec2().unwrap();
        assert_eq!(mask, vec![vec![0., 1., 0., 1., 1., 1.]]);
        assert_eq!(b.loss_tokens, 4);
    }

    #[test]
    fn long_conversations_lose_their_first_tokens() {
        let e = encode_segments(&[seg("abcd", false), seg("e", true)], &Chars, 3).unwrap();
        assert_eq!(e.ids, vec![99, 100, 101, 0]);
        assert_eq!(e.trainable, Some(vec![false, false, true, true]));
    }
}
